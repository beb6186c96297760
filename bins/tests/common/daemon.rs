//! Runs the daemon for a test: in-process through the library's `run` (its addresses come
//! from the bound listeners), or as the real `mptcp-socksd` binary in a namespace (at
//! addresses the test chose). Either way the log is captured for the tests that check
//! what it says; nothing is learned from it.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mptcp_socksd::{Cli, Listeners};

use tokio::sync::oneshot;

use mptcp_test_support::netns::{Ns, NsChild, Topology, in_netns, spawn_in_netns};

/// How long the daemon may take to start listening.
const START_WAIT: Duration = Duration::from_secs(20);

/// How long an in-process daemon may take to stop once asked.
const STOP_WAIT: Duration = Duration::from_secs(15);

/// Flags for a daemon on 127.0.0.1 with its SOCKS port and API on free ports, serving
/// the rule file `policy`, then `extra`.
pub(crate) fn loopback_args(policy: &std::path::Path, extra: &[&std::ffi::OsStr]) -> Vec<OsString> {
    [
        "-i",
        "127.0.0.1",
        "-p",
        "0",
        "--api",
        "127.0.0.1:0",
        "--policy",
    ]
    .map(OsString::from)
    .into_iter()
    .chain([policy.into()])
    .chain(extra.iter().map(|a| (*a).to_owned()))
    .collect()
}

/// What the daemon has logged, and a signal for each new line.
type Log = Arc<(Mutex<String>, Condvar)>;

/// A running daemon; stopped (in-process) or killed (binary) on drop.
#[derive(Debug)]
pub(crate) struct Daemon {
    running: Running,
    /// Where it accepts SOCKS5 clients.
    pub socks: SocketAddr,
    /// Where its REST API listens, if it has one on TCP.
    pub api: Option<SocketAddr>,
    log: Log,
}

#[derive(Debug)]
enum Running {
    Child(NsChild),
    InProcess {
        stop: Option<oneshot::Sender<()>>,
        thread: Option<JoinHandle<anyhow::Result<()>>>,
    },
}

impl Daemon {
    /// Runs the daemon in this process with the command-line `args` (without the program
    /// name), in this network namespace.
    pub(crate) fn in_process<I, T>(args: I) -> anyhow::Result<Daemon>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Daemon::in_process_in(None, args)
    }

    /// [`Daemon::in_process`] on loopback with the SOCKS port and the API on ports of
    /// their own, serving the rule file `policy`.
    pub(crate) fn with_api(policy: &std::path::Path) -> anyhow::Result<Daemon> {
        Daemon::in_process(loopback_args(policy, &[]))
    }

    /// [`Daemon::in_process`] on threads that entered network namespace `ns`, so that its
    /// sockets, sysctls and netlink requests are that namespace's. (Files stay the
    /// host's: `/etc/netns/<ns>/hosts` is not seen; use [`start_in_proxy`] for names.)
    pub(crate) fn in_process_in<I, T>(ns: Option<&str>, args: I) -> anyhow::Result<Daemon>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = std::iter::once(OsString::from("mptcp-socksd"))
            .chain(args.into_iter().map(Into::into))
            .collect();
        let log: Log = Arc::default();
        let dispatch = capturing_dispatch(Arc::clone(&log));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let body = move || -> anyhow::Result<()> {
            let _default = tracing::dispatcher::set_default(&dispatch);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .on_thread_start({
                    let dispatch = dispatch.clone();
                    // Worker threads log to this daemon's capture, for their lifetime.
                    move || std::mem::forget(tracing::dispatcher::set_default(&dispatch))
                })
                .build()?;
            runtime.block_on(async move {
                // Addresses once everything but the SOCKS loop runs, as the binary is
                // ready when its listeners answer.
                let started = async {
                    let config = Cli::try_parse_from(args)?
                        .into_config(mptcp_socksd::raise_and_log_fd_limit())?;
                    let listeners = Listeners::bind(&config).await?;
                    let addrs = (listeners.socks_addr(), listeners.api_addr());
                    let daemon = mptcp_socksd::Daemon::start(config, listeners).await?;
                    anyhow::Ok((addrs, daemon))
                };
                let daemon = match started.await {
                    Ok((addrs, daemon)) => {
                        let _ = bound_tx.send(Ok(addrs));
                        daemon
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(format!("{e:#}")));
                        return Err(e);
                    }
                };
                let stopped = async {
                    let _ = stop_rx.await;
                };
                daemon.serve(stopped).await;
                Ok(())
            })
        };
        let thread = match ns {
            Some(ns) => spawn_in_netns(ns, body),
            None => std::thread::spawn(body),
        };
        let (socks, api) = match bound_rx.recv_timeout(START_WAIT) {
            Ok(Ok(addrs)) => addrs,
            Ok(Err(e)) => bail!("the daemon did not start: {e}"),
            Err(_) => bail!("the daemon did not bind within {START_WAIT:?}"),
        };
        Ok(Daemon {
            running: Running::InProcess {
                stop: Some(stop_tx),
                thread: Some(thread),
            },
            socks,
            api,
            log,
        })
    }

    /// Starts `cmd` (the daemon binary, behind `ip netns exec ns` if `ns` is given) and
    /// waits until it accepts connections on `socks` and, if given, `api` (addresses the
    /// test passed it).
    pub(crate) fn spawn(
        ns: Option<&str>,
        mut cmd: Command,
        socks: SocketAddr,
        api: Option<SocketAddr>,
    ) -> anyhow::Result<Daemon> {
        // The test's own RUST_LOG, if any, reaches the daemon (handy for debugging).
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = NsChild::spawn(&mut cmd).context("spawning mptcp-socksd")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let log: Log = Arc::default();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                append(&sink, &format!("{line}\n"));
            }
        });
        let deadline = Instant::now() + START_WAIT;
        let accepts = |addr: SocketAddr| {
            let connect = || TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok();
            match ns {
                Some(ns) => in_netns(ns, connect),
                None => connect(),
            }
        };
        while !(accepts(socks) && api.is_none_or(accepts)) {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "mptcp-socksd exited ({status}); log:\n{}",
                    log.0.lock().unwrap_or_else(|e| e.into_inner())
                );
            }
            if Instant::now() > deadline {
                bail!("mptcp-socksd did not accept connections within {START_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Daemon {
            running: Running::Child(child),
            socks,
            api,
            log,
        })
    }

    /// The process of a daemon started with [`Daemon::spawn`]; `None` in process.
    pub(crate) fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::Child(child) => Some(child.id()),
            Running::InProcess { .. } => None,
        }
    }

    /// Everything it has logged so far.
    pub(crate) fn log(&self) -> String {
        self.log.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn wait_for_change(&self, timeout: Duration) {
        let (text, changed) = &*self.log;
        let guard = text.lock().unwrap_or_else(|e| e.into_inner());
        let _ = changed.wait_timeout(guard, timeout);
    }

    /// Waits until the log contains `needle` (true) or `timeout` passes (false).
    pub(crate) fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
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
    pub(crate) fn api_url(&self, path: &str) -> String {
        let api = self.api.expect("daemon started with its REST API");
        format!("http://{api}/{}", path.trim_start_matches('/'))
    }

    /// Stops an in-process daemon as SIGTERM stops the binary, and returns what `run`
    /// returned. (A binary is killed when the `Daemon` is dropped.)
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        self.stop_in_process()
    }

    fn stop_in_process(&mut self) -> anyhow::Result<()> {
        let Running::InProcess { stop, thread } = &mut self.running else {
            return Ok(());
        };
        if let Some(stop) = stop.take() {
            let _ = stop.send(());
        }
        let Some(thread) = thread.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + STOP_WAIT;
        while !thread.is_finished() {
            if Instant::now() > deadline {
                bail!("the daemon did not stop within {STOP_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop_in_process() {
            eprintln!("stopping the in-process daemon: {e:#}");
        }
    }
}

fn append(log: &Log, text: &str) {
    eprint!("[mptcp-socksd] {text}");
    let (buffer, changed) = &**log;
    buffer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push_str(text);
    changed.notify_all();
}

/// A subscriber formatting as the binary does (escaped fields, no colours) into `log`.
fn capturing_dispatch(log: Log) -> tracing::Dispatch {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .fmt_fields(mptcp_socksd::escaping_fields())
        .with_writer(move || LogWriter(Arc::clone(&log)))
        .finish();
    tracing::Dispatch::new(subscriber)
}

struct LogWriter(Log);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        append(&self.0, &String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs a prepared `curl` command (add `-s` options and the URL yourself) and returns
/// the HTTP status and the body.
pub(crate) fn curl(mut cmd: Command) -> anyhow::Result<(u16, String)> {
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
pub(crate) const SOCKS_PORT: u16 = 1080;

/// Starts mptcp-socksd in `topo`'s proxy namespace on the proxy's client-side address
/// ([`SOCKS_PORT`]), with `rules` as its rule file and the REST API on 127.0.0.1:5000
/// there; `extra` flags are appended. The rule file lives in the returned directory.
pub(crate) fn start_in_proxy(
    topo: &Topology,
    rules: &str,
    extra: &[&str],
) -> anyhow::Result<(Daemon, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("rules");
    std::fs::write(&policy, rules)?;
    let mut cmd = topo.command(Ns::Proxy, env!("CARGO_BIN_EXE_mptcp-socksd"));
    let socks = SocketAddr::from((topo.addrs().proxy_lan, SOCKS_PORT));
    let api = SocketAddr::from(([127, 0, 0, 1], 5000));
    cmd.arg("-i")
        .arg(socks.ip().to_string())
        .arg("-p")
        .arg(SOCKS_PORT.to_string())
        .arg("--policy")
        .arg(&policy)
        .arg("--api")
        .arg(api.to_string())
        .args(extra);
    let ns = topo.name(Ns::Proxy);
    Ok((Daemon::spawn(Some(ns), cmd, socks, Some(api))?, dir))
}

/// Runs the `mptcpctl` binary with `args` (and `token` through the environment, never
/// from the caller's environment); its exit code, stdout and stderr.
pub(crate) fn ctl(args: &[&str], token: Option<&str>) -> (Option<i32>, String, String) {
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
