//! Runs the real `mptcp-socksd` binary for a test and finds its addresses in its log.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::netns::NsChild;

/// How long the daemon may take to start listening.
const START_WAIT: Duration = Duration::from_secs(20);

/// A running daemon; killed on drop.
#[derive(Debug)]
pub struct Daemon {
    _child: NsChild,
    /// Where it accepts SOCKS5 clients.
    pub socks: SocketAddr,
    /// Where its REST API listens, if it has one.
    pub api: Option<SocketAddr>,
    log: Arc<(Mutex<String>, Condvar)>,
}

impl Daemon {
    /// Starts `cmd` (the daemon binary, possibly behind `ip netns exec`) and waits until it
    /// logs its SOCKS listener and, if `expect_api`, its REST API listener.
    pub fn start(mut cmd: Command, expect_api: bool) -> anyhow::Result<Daemon> {
        // The test's own RUST_LOG, if any, reaches the daemon (handy for debugging).
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = NsChild::spawn(&mut cmd).context("spawning mptcp-socksd")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let log = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[mptcp-socksd] {line}");
                let (text, changed) = &*sink;
                let mut text = text.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
                changed.notify_all();
            }
        });
        let mut daemon = Daemon {
            _child: child,
            socks: SocketAddr::from(([0, 0, 0, 0], 0)),
            api: None,
            log,
        };
        let deadline = Instant::now() + START_WAIT;
        loop {
            let text = daemon.log();
            let socks = find_addr(&text, "listen=");
            let api = find_addr(&text, "REST API listening on http://");
            if let Some(socks) = socks
                && (api.is_some() || !expect_api)
            {
                daemon.socks = socks;
                daemon.api = api;
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                bail!("mptcp-socksd did not start listening within {START_WAIT:?}; log:\n{text}");
            }
            daemon.wait_for_change(Duration::from_millis(200));
        }
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        self.log.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn wait_for_change(&self, timeout: Duration) {
        let (text, changed) = &*self.log;
        let guard = text.lock().unwrap_or_else(|e| e.into_inner());
        let _ = changed.wait_timeout(guard, timeout);
    }

    /// Waits until the log contains `needle` (true) or `timeout` passes (false).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            self.wait_for_change(Duration::from_millis(100));
        }
        self.log().contains(needle)
    }

    /// `http://<api>/<path>`.
    pub fn api_url(&self, path: &str) -> String {
        let api = self.api.expect("daemon started with its REST API");
        format!("http://{api}/{}", path.trim_start_matches('/'))
    }
}

fn find_addr(text: &str, marker: &str) -> Option<SocketAddr> {
    let start = text.find(marker)? + marker.len();
    let rest = &text[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Runs a prepared `curl` command (add `-s` options and the URL yourself) and returns
/// the HTTP status and the body.
pub fn curl(mut cmd: Command) -> anyhow::Result<(u16, String)> {
    let out = cmd
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = status.trim().parse().with_context(|| {
        format!(
            "curl printed no status: {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((status, body.to_owned()))
}

/// The SOCKS port the daemon listens on inside a test topology's proxy namespace.
pub const SOCKS_PORT: u16 = 1080;

/// Starts mptcp-socksd in `topo`'s proxy namespace on the proxy's client-side address
/// ([`SOCKS_PORT`]), with `rules` as its rule file and the REST API on 127.0.0.1:5000
/// there; `extra` flags are appended. The rule file lives in the returned directory.
pub fn start_in_proxy(
    topo: &super::netns::Topology,
    rules: &str,
    extra: &[&str],
) -> anyhow::Result<(Daemon, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("rules");
    std::fs::write(&policy, rules)?;
    let mut cmd = topo.command(super::netns::Ns::Proxy, env!("CARGO_BIN_EXE_mptcp-socksd"));
    cmd.arg("-i")
        .arg(topo.addrs().proxy_lan.to_string())
        .arg("-p")
        .arg(SOCKS_PORT.to_string())
        .arg("--policy")
        .arg(&policy)
        .args(["--api", "127.0.0.1:5000"])
        .args(extra);
    Ok((Daemon::start(cmd, true)?, dir))
}

/// Runs the `mptcpctl` binary with `args` (and `token` through the environment, never
/// from the caller's environment); its exit code, stdout and stderr.
pub fn ctl(args: &[&str], token: Option<&str>) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mptcpctl"));
    cmd.args(args)
        .env_remove("MPTCP_SOCKS_API")
        .env_remove("MPTCP_SOCKS_API_TOKEN");
    if let Some(token) = token {
        cmd.env("MPTCP_SOCKS_API_TOKEN", token);
    }
    let out = cmd.output().expect("run mptcpctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
