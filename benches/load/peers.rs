//! The processes under test: the daemon built from this workspace (alone, and as the two
//! ends of a chain), and microsocks.

use super::*;

/// Builds the release daemon from this workspace and returns its path.
pub(crate) fn build_daemon() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("benches/ has a parent")?;
    println!("load: cargo build --release -p mptcp-socksd --bin mptcp-socksd");
    let mut cmd = Command::new(cargo);
    // What `cargo bench` set to describe this crate to it. A build script that reruns
    // when one changes (ring's, on CARGO_MANIFEST_DIR) would otherwise see a change
    // from a build in a shell, and rebuild the TLS stack on every run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&&*name)
        {
            cmd.env_remove(&*name);
        }
    }
    let out = cmd
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "-p",
            "mptcp-socksd",
            "--bin",
            "mptcp-socksd",
        ])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    ensure!(
        out.status.success(),
        "cargo build of mptcp-socksd failed ({})",
        out.status
    );
    // The executable's path, from cargo itself, so CARGO_TARGET_DIR and friends are honoured.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["target"]["name"] == "mptcp-socksd")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .context("cargo did not report the mptcp-socksd executable")
}

/// An `mptcp-socksd` listening on 127.0.0.1:`port` with the rules in `policy` and the
/// REST API at `api` (`off`, or an address).
pub(crate) fn daemon_cmd(daemon: &Path, port: u16, policy: &Path, api: &str) -> Command {
    let mut cmd = Command::new(daemon);
    cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["--api", api, "--policy"])
        .arg(policy)
        // Every client here is 127.0.0.1 (a chain's upstream sees only its box), and the
        // memory step (1000) and the concurrent step (10 000) hold far more than the
        // default per-client cap (256) open from it. The total cap (--max-connections)
        // is left to the daemon, which sizes it from the fd limit it raises for itself:
        // that is the limit the concurrent step is about.
        .args(["--max-client-connections", "1000000"]);
    cmd
}

/// Whether a chain's upstream serves SOCKS5 in the clear or inside TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChainKind {
    Plain,
    Tls,
}

impl ChainKind {
    pub(crate) const ALL: [ChainKind; 2] = [ChainKind::Plain, ChainKind::Tls];

    /// The route's name in the report.
    pub(crate) fn route(self) -> &'static str {
        match self {
            ChainKind::Plain => "chain",
            ChainKind::Tls => "chain+tls",
        }
    }

    fn upstream(self) -> &'static str {
        match self {
            ChainKind::Plain => "chain-upstream",
            ChainKind::Tls => "chain+tls-upstream",
        }
    }
}

/// Client -> box -> upstream -> target: two daemons built from this workspace, the box's
/// rule sending every destination through the upstream (`via=up`).
#[derive(Debug)]
pub(crate) struct Chain {
    pub(crate) kind: ChainKind,
    /// The box, where the client connects.
    pub(crate) entry: Proxy,
    /// The box's REST API: its `/health` counts the connections the upstream carried.
    /// A box whose upstream fails serves the destination directly, which would measure
    /// one proxy under the chain's name.
    pub(crate) api: SocketAddr,
    pub(crate) upstream: Proxy,
}

impl Chain {
    /// Starts the upstream, then (with its pin, for TLS) the box.
    pub(crate) fn start(kind: ChainKind, daemon: &Path, dir: &Path) -> anyhow::Result<Chain> {
        let allow = dir.join(format!("{}.rules", kind.upstream()));
        std::fs::write(&allow, "127.0.0.1,0,default,default,access=allow,\n.\n")?;
        let upstream_port = free_port()?;
        let mut cmd = daemon_cmd(daemon, upstream_port, &allow, "off");
        if kind == ChainKind::Tls {
            // A fresh directory: the self-signed certificate is made on this start.
            cmd.arg("--tls")
                .arg("--state-dir")
                .arg(dir.join(kind.upstream()));
        }
        let upstream = Proxy::start(kind.upstream(), cmd, upstream_port, dir)?;
        let url = match kind {
            ChainKind::Plain => format!("up=socks5://{}", upstream.addr),
            ChainKind::Tls => format!(
                "up=socks5+tls://{}#sha256={}",
                upstream.addr,
                upstream.tls_pin()?
            ),
        };

        let via_up = dir.join(format!("{}.rules", kind.route()));
        std::fs::write(
            &via_up,
            "127.0.0.1,0,default,default,access=allow,via=up,\n.\n",
        )?;
        let (port, api) = (free_port()?, loopback(free_port()?));
        let mut cmd = daemon_cmd(daemon, port, &via_up, &api.to_string());
        cmd.args(["--upstream", &url]);
        let entry = Proxy::start(kind.route(), cmd, port, dir)?;
        Ok(Chain {
            kind,
            entry,
            api: api.into(),
            upstream,
        })
    }

    pub(crate) fn via(&self) -> Via {
        Via::Socks(self.kind.route(), self.entry.addr)
    }

    pub(crate) fn wait_ready(&self) -> anyhow::Result<()> {
        self.upstream.wait_ready()?;
        self.entry.wait_ready()
    }
}

/// shadowsocks-libev, the baseline of "chain+tls": `ss-local` (SOCKS5 in) -> `ss-server`
/// (aes-256-gcm, a password) -> target, both on loopback as the chain's two daemons are.
#[derive(Debug)]
pub(crate) struct Shadowsocks {
    /// `ss-local`, where the client connects; the route is named after the pair.
    pub(crate) local: Proxy,
    pub(crate) server: Proxy,
}

impl Shadowsocks {
    pub(crate) const ROUTE: &str = "shadowsocks";

    /// Starts `ss-server`, then `ss-local` pointing at it; `None` (said why) when the
    /// package is not installed.
    pub(crate) fn start(dir: &Path) -> anyhow::Result<Option<Shadowsocks>> {
        let (Some(local), Some(server)) = (which("ss-local"), which("ss-server")) else {
            println!(
                "shadowsocks-libev is not installed (apt-get install shadowsocks-libev): \
                 its column is skipped"
            );
            return Ok(None);
        };
        // TCP only (no -u), no fast open; --no-delay as the daemon sets TCP_NODELAY, so
        // small round trips are not held back by Nagle on one side only.
        let common = ["-k", "load-bench", "-m", "aes-256-gcm", "--no-delay"];
        let server_port = free_port()?;
        let mut cmd = Command::new(server);
        cmd.args(["-s", "127.0.0.1", "-p", &server_port.to_string()])
            .args(common);
        let server = Proxy::start("ss-server", cmd, server_port, dir)?;
        let local_port = free_port()?;
        let mut cmd = Command::new(local);
        cmd.args(["-s", "127.0.0.1", "-p", &server_port.to_string()])
            .args(["-b", "127.0.0.1", "-l", &local_port.to_string()])
            .args(common);
        let local = Proxy::start(Self::ROUTE, cmd, local_port, dir)?;
        Ok(Some(Shadowsocks { local, server }))
    }

    pub(crate) fn via(&self) -> Via {
        Via::Socks(Self::ROUTE, self.local.addr)
    }

    pub(crate) fn wait_ready(&self) -> anyhow::Result<()> {
        self.server.wait_ready()?;
        self.local.wait_ready()
    }
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// A port nobody listens on yet (the namespace is ours, so it stays free).
pub(crate) fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

pub(crate) fn loopback(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

/// A proxy process; killed on drop.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) name: &'static str,
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    /// Its stdout and stderr (both proxies log every connection; a file costs them alike).
    pub(crate) log: PathBuf,
}

impl Proxy {
    pub(crate) fn start(
        name: &'static str,
        mut cmd: Command,
        port: u16,
        dir: &Path,
    ) -> anyhow::Result<Proxy> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // If this benchmark dies without unwinding (SIGKILL), its proxies die with it.
        mptcp_test_support::sys::die_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proxy {
            name,
            child,
            addr: SocketAddr::from(loopback(port)),
            log,
        })
    }

    /// Waits until it accepts connections.
    pub(crate) fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_WAIT;
        while Instant::now() < deadline {
            if StdTcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        bail!(
            "{} did not listen on {} within {START_WAIT:?}; its log:\n{log}",
            self.name,
            self.addr
        )
    }

    /// The certificate fingerprint a `--tls` daemon prints at start, alone on a line of
    /// its stdout (`sha256=HEX`), for the box to pin.
    pub(crate) fn tls_pin(&self) -> anyhow::Result<String> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let pin = log
                .lines()
                .filter_map(|line| line.strip_prefix("sha256="))
                // Not a line still being written.
                .find(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
            if let Some(pin) = pin {
                return Ok(pin.to_owned());
            }
            ensure!(
                Instant::now() < deadline,
                "{} printed no sha256= line within {START_WAIT:?}; its log:\n{log}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// That it exited, and its log, if it has.
    pub(crate) fn gone(&self) -> Option<String> {
        // Not reaped until dropped: an exited child is a zombie ("pid (comm) Z ...").
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()));
        let state = stat
            .ok()
            .and_then(|s| s.rsplit_once(") ")?.1.chars().next());
        if !matches!(state, None | Some('Z' | 'X')) {
            return None;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        Some(format!(
            "{} exited; the end of its log:\n{}",
            self.name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }

    /// The soft limit on open files the process runs with (a daemon raises its own).
    pub(crate) fn fd_limit(&self) -> anyhow::Result<u64> {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.child.id()))?;
        limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no open-files limit for {}", self.name))
    }

    /// The connection cap a daemon sized from its fd limit, as it logs it at start
    /// (`connection limits max_connections=N ...`).
    pub(crate) fn logged_connection_cap(&self) -> anyhow::Result<usize> {
        let log = std::fs::read_to_string(&self.log)?;
        log.lines()
            .filter(|line| line.contains("connection limits"))
            .flat_map(str::split_whitespace)
            .find_map(|field| field.strip_prefix("max_connections=")?.parse().ok())
            .with_context(|| format!("{} logged no max_connections=; its log:\n{log}", self.name))
    }

    pub(crate) fn fd_count(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))?.count())
    }

    /// Of its descriptors, the sockets: what a relayed connection costs. (mptcp-socksd
    /// also keeps a few spare pipes per thread for splicing, however many are open.)
    pub(crate) fn socket_count(&self) -> anyhow::Result<usize> {
        let mut sockets = 0;
        for entry in std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))? {
            let link = std::fs::read_link(entry?.path()).unwrap_or_default();
            sockets += usize::from(link.to_string_lossy().starts_with("socket:"));
        }
        Ok(sockets)
    }

    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS for {}", self.name))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proxy's descriptors and resident memory at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) fds: usize,
    pub(crate) sockets: usize,
    pub(crate) rss_kib: u64,
}

impl Sample {
    /// RSS grown since `before`, per connection of `conns` opened since.
    pub(crate) fn kib_per_conn_over(self, before: Sample, conns: usize) -> f64 {
        (self.rss_kib as f64 - before.rss_kib as f64) / conns as f64
    }
}

impl Proxy {
    fn sample(&self) -> anyhow::Result<Sample> {
        Ok(Sample {
            fds: self.fd_count()?,
            sockets: self.socket_count()?,
            rss_kib: self.rss_kib()?,
        })
    }

    /// A sample once the proxy has settled: its descriptors at most `fds_at_most` (it
    /// closes connections a moment after their clients do) and its RSS no longer moving
    /// (freed memory goes back to the kernel, or not, a little after the last free).
    pub(crate) async fn settled(&self, fds_at_most: usize) -> anyhow::Result<Sample> {
        tokio::time::sleep(SETTLE).await;
        let deadline = Instant::now() + SETTLE_MAX;
        let mut last = self.sample()?;
        loop {
            tokio::time::sleep(SETTLE_STEP).await;
            let now = self.sample()?;
            let still = now.fds == last.fds && now.rss_kib.abs_diff(last.rss_kib) <= RSS_JITTER_KIB;
            if (still && now.fds <= fds_at_most) || Instant::now() > deadline {
                return Ok(now);
            }
            last = now;
        }
    }
}
