//! Load benchmark: what a relayed connection costs through `mptcp-socksd`, against no
//! proxy at all and against `microsocks`, all measured in the same run so the table's
//! ratios depend far less on the host than its absolute figures.
//!
//! `cargo bench -p mptcp-socks-benches --bench load` (root: it creates a network
//! namespace). It builds `mptcp-socksd` itself (`cargo build --release`), so the figures
//! are always those of the current source. Without `--bench` (e.g. `cargo test
//! --benches`) it runs a small smoke version of the same steps.
//!
//! Everything runs on 127.0.0.1 of a private network namespace, so the thousands of
//! TIME_WAIT sockets stay off the host's loopback and vanish with the namespace. The rule
//! file makes 127.0.0.1 plain TCP: the comparison is the proxy's overhead, not MPTCP's.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use mptcp_test_support::socks::{self, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How much work each measurement does; bounded in count and in time.
#[derive(Debug, Clone, Copy)]
struct Scale {
    /// Bytes streamed over one connection per bulk run.
    bulk_bytes: u64,
    /// A bulk run stops here even if the bytes are not all through.
    bulk_cap: Duration,
    /// Bulk runs per route; the table shows their median.
    bulk_runs: usize,
    /// Short connections (handshake, echo, close) per route and round.
    short_conns: usize,
    /// Rounds of short connections per route; the table shows the median rate and the
    /// latency percentiles of all rounds together.
    short_runs: usize,
    /// Short connections in flight at once.
    short_concurrency: usize,
    /// A round of short connections stops here even if not all are done.
    short_cap: Duration,
    /// Idle relayed connections held open for the memory figure.
    idle_conns: usize,
    /// The soak: rounds of `soak_round` short connections through mptcp-socksd, for this
    /// long, the daemon's descriptors and RSS sampled after each round.
    soak: Duration,
    soak_round: usize,
}

const FULL: Scale = Scale {
    bulk_bytes: 2 << 30,
    bulk_cap: Duration::from_secs(8),
    bulk_runs: 3,
    short_conns: 2000,
    short_runs: 3,
    short_concurrency: 32,
    short_cap: Duration::from_secs(10),
    idle_conns: 500,
    soak: Duration::from_secs(180),
    soak_round: 10_000,
};

const SMOKE: Scale = Scale {
    bulk_bytes: 16 << 20,
    bulk_cap: Duration::from_secs(5),
    bulk_runs: 1,
    short_conns: 64,
    short_runs: 1,
    short_concurrency: 8,
    short_cap: Duration::from_secs(10),
    idle_conns: 16,
    soak: Duration::from_secs(2),
    soak_round: 64,
};

/// Bytes each short connection sends and expects back.
const ECHO_BYTES: usize = 1024;
/// How long a proxy may take to accept connections after it is started.
const START_WAIT: Duration = Duration::from_secs(10);
/// Time for RSS to settle before it is read.
const SETTLE: Duration = Duration::from_millis(300);
/// Bound on any single network step of the client (connect, handshake, echo).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    // First, while this is the only thread: unshare(CLONE_NEWNET) moves only the calling
    // thread, so every thread and child started later must come after it.
    if let Err(why) = enter_private_netns() {
        println!("load benchmark skipped: {why}");
        return ExitCode::SUCCESS;
    }
    let scale = if std::env::args().any(|a| a == "--bench") {
        FULL
    } else {
        println!("load: no --bench argument, running the smoke version");
        SMOKE
    };
    match run(scale) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Moves this process into a fresh network namespace and brings its loopback up.
fn enter_private_netns() -> Result<(), String> {
    // Called before any other thread exists: the whole process moves.
    if let Err(e) = mptcp_test_support::sys::unshare_net() {
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) => format!(
                "it needs root (CAP_SYS_ADMIN) to create a private network namespace, so \
                 its load stays off the host's loopback: unshare(CLONE_NEWNET): {e}"
            ),
            _ => format!("cannot create a private network namespace: {e}"),
        });
    }
    match Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`ip link set lo up` failed ({s})")),
        Err(e) => Err(format!("it needs `ip` (iproute2) to bring lo up: {e}")),
    }
}

fn run(scale: Scale) -> anyhow::Result<()> {
    // Every relayed connection costs the proxy two descriptors and us up to two.
    raise_fd_limit()?;
    let dir = tempfile::tempdir()?;
    let daemon = build_daemon()?;

    let echo = free_port()?;
    let source = free_port()?;
    let policy = dir.path().join("load.rules");
    std::fs::write(&policy, "127.0.0.1,0,default,default,access=allow,\n.\n")?;

    // Started from this (main) thread: their parent-death signal follows it.
    let socksd_port = free_port()?;
    let mut socksd_cmd = Command::new(&daemon);
    socksd_cmd
        .args(["-i", "127.0.0.1", "-p", &socksd_port.to_string()])
        .args(["--api", "off", "--policy"])
        .arg(&policy)
        // Every client here is 127.0.0.1, and the memory step holds more than the
        // default per-client cap open.
        .args(["--max-client-connections", "1000000"]);
    let socksd = Proxy::start("mptcp-socksd", socksd_cmd, socksd_port, dir.path())?;
    let microsocks = match which("microsocks") {
        Some(bin) => {
            let port = free_port()?;
            let mut cmd = Command::new(bin);
            cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
            Some(Proxy::start("microsocks", cmd, port, dir.path())?)
        }
        None => {
            println!(
                "microsocks is not installed (apt-get install microsocks): its columns are skipped"
            );
            None
        }
    };

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        tokio::spawn(serve(bind(echo).await?, echo_conn));
        tokio::spawn(serve(bind(source).await?, source_conn));
        let targets = Targets {
            echo: loopback(echo),
            source: loopback(source),
        };

        let mut routes = vec![Route::new(Via::Direct)];
        for proxy in std::iter::once(&socksd).chain(microsocks.as_ref()) {
            proxy.wait_ready()?;
            routes.push(Route::new(Via::Socks(proxy.name, proxy.addr)));
        }

        // Memory first, on fresh processes, before the other runs grow their heaps.
        for (route, proxy) in routes[1..]
            .iter_mut()
            .zip(std::iter::once(&socksd).chain(&microsocks))
        {
            route.memory = Some(measure_memory(route.via, proxy, &targets, scale).await?);
        }
        // Interleaved, so a drift of the host (another load, frequency) hits all alike.
        for _ in 0..scale.bulk_runs {
            for route in &mut routes {
                let gbps = bulk(route.via, &targets, scale).await?;
                route.bulk_gbps.push(gbps);
            }
        }
        for _ in 0..scale.short_runs {
            for route in &mut routes {
                let round = short_conns(route.via, &targets, scale).await?;
                route.short.push(round);
            }
        }
        print_report(&routes, scale);
        soak(&socksd, &targets, scale).await?;
        anyhow::Ok(())
    })?;
    drop(rt);
    drop(microsocks);
    drop(socksd);
    Ok(())
}

/// Builds the release daemon from this workspace and returns its path.
fn build_daemon() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("benches/ has a parent")?;
    println!("load: cargo build --release -p mptcp-socksd --bin mptcp-socksd");
    let out = Command::new(cargo)
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

fn raise_fd_limit() -> anyhow::Result<()> {
    let (_, hard) = mptcp_policy::fd_limit().context("getrlimit")?;
    mptcp_policy::set_fd_limit(hard, hard).context("setrlimit")?;
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// A port nobody listens on yet (the namespace is ours, so it stays free).
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn loopback(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

/// A proxy process; killed on drop.
#[derive(Debug)]
struct Proxy {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    /// Its stdout and stderr (both proxies log every connection; a file costs them alike).
    log: PathBuf,
}

impl Proxy {
    fn start(name: &'static str, mut cmd: Command, port: u16, dir: &Path) -> anyhow::Result<Proxy> {
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
    fn wait_ready(&self) -> anyhow::Result<()> {
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

    fn fd_count(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))?.count())
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
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

async fn bind(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind(loopback(port)).await
}

async fn serve<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    while let Ok((conn, _)) = listener.accept().await {
        let _ = conn.set_nodelay(true);
        tokio::spawn(handle(conn));
    }
}

/// Sends back whatever arrives, until EOF.
async fn echo_conn(mut conn: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n]).await?;
    }
}

/// Reads a big-endian u64 N, then sends N bytes.
async fn source_conn(mut conn: TcpStream) -> io::Result<()> {
    let mut left = conn.read_u64().await?;
    let buf = vec![0x5Au8; 256 << 10];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        conn.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    conn.shutdown().await
}

/// How the client reaches the servers.
#[derive(Debug, Clone, Copy)]
enum Via {
    Direct,
    Socks(&'static str, SocketAddr),
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Socks(name, _) => name,
        }
    }

    async fn connect(self, target: SocketAddrV4) -> io::Result<TcpStream> {
        tokio::time::timeout(STEP_TIMEOUT, self.connect_unbounded(target))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))
    }

    async fn connect_unbounded(self, target: SocketAddrV4) -> io::Result<TcpStream> {
        let Via::Socks(_, proxy) = self else {
            let conn = TcpStream::connect(target).await?;
            conn.set_nodelay(true)?;
            return Ok(conn);
        };
        let mut conn = TcpStream::connect(proxy).await?;
        conn.set_nodelay(true)?;
        // SOCKS5, no authentication, CONNECT to an IPv4 address, in raw bytes.
        socks::handshake(&mut conn, Target::Addr(target.into()), None, socks::CONNECT)
            .await?
            .ensure_succeeded()?;
        Ok(conn)
    }
}

struct Targets {
    echo: SocketAddrV4,
    source: SocketAddrV4,
}

/// One connection streaming `bulk_bytes` (or what arrives until `bulk_cap`): Gbit/s of
/// payload, timed from the request to the last byte, handshake excluded.
async fn bulk(via: Via, targets: &Targets, scale: Scale) -> anyhow::Result<f64> {
    let mut conn = via
        .connect(targets.source)
        .await
        .with_context(|| via.name())?;
    let mut buf = vec![0u8; 256 << 10];
    let start = Instant::now();
    let deadline = start + scale.bulk_cap;
    conn.write_u64(scale.bulk_bytes).await?;
    let mut got = 0u64;
    while got < scale.bulk_bytes {
        match tokio::time::timeout_at(deadline.into(), conn.read(&mut buf)).await {
            Ok(Ok(0)) => bail!("{}: bulk stream ended after {got} bytes", via.name()),
            Ok(Ok(n)) => got += n as u64,
            Ok(Err(e)) => return Err(e).context(via.name()),
            Err(_) => break,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if got < scale.bulk_bytes {
        println!(
            "load: {} bulk run hit its {:?} cap after {} MiB",
            via.name(),
            scale.bulk_cap,
            got >> 20
        );
    }
    Ok(got as f64 * 8.0 / secs / 1e9)
}

#[derive(Debug)]
struct ShortRound {
    failed: usize,
    per_sec: f64,
    /// One per successful connection.
    latencies: Vec<Duration>,
}

/// `short_conns` connections, `short_concurrency` at a time, each: connect, handshake,
/// echo `ECHO_BYTES`, close. Latency is per connection, from connect to the echo's last
/// byte.
async fn short_conns(via: Via, targets: &Targets, scale: Scale) -> anyhow::Result<ShortRound> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + scale.short_cap;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..scale.short_concurrency {
        let (next, failed, target) = (next.clone(), failed.clone(), targets.echo);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let payload = [0xA5u8; ECHO_BYTES];
            let mut back = [0u8; ECHO_BYTES];
            while next.fetch_add(1, Ordering::Relaxed) < scale.short_conns
                && Instant::now() < deadline
            {
                let t0 = Instant::now();
                let round = async {
                    let mut conn = via.connect(target).await?;
                    conn.write_all(&payload).await?;
                    conn.read_exact(&mut back).await?;
                    io::Result::Ok(back == payload)
                };
                match tokio::time::timeout(STEP_TIMEOUT, round).await {
                    Ok(Ok(true)) => latencies.push(t0.elapsed()),
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        });
    }
    let mut latencies = Vec::with_capacity(scale.short_conns);
    while let Some(part) = tasks.join_next().await {
        latencies.extend(part?);
    }
    let wall = start.elapsed().as_secs_f64();
    ensure!(
        !latencies.is_empty(),
        "{}: no short connection succeeded",
        via.name()
    );
    Ok(ShortRound {
        failed: failed.load(Ordering::Relaxed),
        per_sec: latencies.len() as f64 / wall,
        latencies,
    })
}

#[derive(Debug)]
struct Memory {
    idle_kib: u64,
    loaded_kib: u64,
    conns: usize,
}

impl Memory {
    fn per_conn_kib(&self) -> f64 {
        (self.loaded_kib as f64 - self.idle_kib as f64) / self.conns as f64
    }
}

/// RSS of a fresh proxy that has served one connection, then with `idle_conns` relayed connections open (each has
/// carried one small echo, so the relay is fully set up), which are then closed.
async fn measure_memory(
    via: Via,
    proxy: &Proxy,
    targets: &Targets,
    scale: Scale,
) -> anyhow::Result<Memory> {
    // One relayed connection first, so one-time setup does not count as per-connection.
    let mut warm = via.connect(targets.echo).await?;
    warm.write_all(b"ping").await?;
    warm.read_exact(&mut [0u8; 4]).await?;
    drop(warm);
    tokio::time::sleep(SETTLE).await;
    let idle_kib = proxy.rss_kib()?;
    let open = Arc::new(Mutex::new(Vec::with_capacity(scale.idle_conns)));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..scale.short_concurrency {
        let (open, next, target) = (open.clone(), next.clone(), targets.echo);
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < scale.idle_conns {
                let mut conn = via.connect(target).await?;
                conn.write_all(b"ping").await?;
                let mut back = [0u8; 4];
                conn.read_exact(&mut back).await?;
                open.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            }
            io::Result::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done?.with_context(|| format!("{}: opening idle connections", via.name()))?;
    }
    tokio::time::sleep(SETTLE).await;
    let loaded_kib = proxy.rss_kib()?;
    let conns = open
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .count();
    tokio::time::sleep(SETTLE).await;
    Ok(Memory {
        idle_kib,
        loaded_kib,
        conns,
    })
}

/// Opens and closes `soak_round` connections at a time through `proxy` until `soak` has
/// passed, and prints its descriptors and RSS after each round: both must stay flat
/// (a leak of one descriptor or a few bytes per connection shows as a climb).
async fn soak(proxy: &Proxy, targets: &Targets, scale: Scale) -> anyhow::Result<()> {
    // Tens of thousands of connections a minute would exhaust the ephemeral ports with
    // TIME_WAIT sockets; this namespace is ours, so reuse them.
    std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")?;
    std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")?;
    let via = Via::Socks(proxy.name, proxy.addr);
    let round_scale = Scale {
        short_conns: scale.soak_round,
        short_concurrency: 64,
        short_cap: Duration::from_secs(60),
        ..scale
    };
    let start = Instant::now();
    let mut samples: Vec<(usize, u64)> = Vec::new();
    let (mut done, mut failed) = (0, 0);
    println!(
        "\nsoak: rounds of {} connections through {} for {:?}",
        scale.soak_round, proxy.name, scale.soak
    );
    println!(
        "{:>8} {:>10} {:>8} {:>10} {:>8}",
        "seconds", "conns", "failed", "RSS KiB", "fds"
    );
    while start.elapsed() < scale.soak {
        let round = short_conns(via, targets, round_scale).await?;
        done += round.latencies.len();
        failed += round.failed;
        tokio::time::sleep(SETTLE).await;
        let sample = (proxy.fd_count()?, proxy.rss_kib()?);
        println!(
            "{:>8.0} {done:>10} {failed:>8} {:>10} {:>8}",
            start.elapsed().as_secs_f64(),
            sample.1,
            sample.0
        );
        samples.push(sample);
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let max_fds = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let max_rss = samples.iter().map(|s| s.1).max().unwrap_or(0);
    println!(
        "soak: {done} connections, {failed} failed; fds first {} last {} max {max_fds}; \
         RSS KiB first {} last {} max {max_rss}",
        first.0, last.0, first.1, last.1
    );
    ensure!(
        last.0 <= first.0 + 8,
        "descriptors climbed from {} to {} over the soak",
        first.0,
        last.0
    );
    Ok(())
}

/// Everything measured over one way of reaching the servers.
#[derive(Debug)]
struct Route {
    via: Via,
    bulk_gbps: Vec<f64>,
    short: Vec<ShortRound>,
    memory: Option<Memory>,
}

impl Route {
    fn new(via: Via) -> Self {
        Route {
            via,
            bulk_gbps: Vec::new(),
            short: Vec::new(),
            memory: None,
        }
    }

    fn bulk_median(&self) -> Option<f64> {
        median(&self.bulk_gbps)
    }

    fn short_rate_median(&self) -> Option<f64> {
        median(&self.short.iter().map(|r| r.per_sec).collect::<Vec<_>>())
    }

    /// Latency percentile over all rounds, in milliseconds.
    fn short_latency_ms(&self, percent: usize) -> Option<f64> {
        let mut all: Vec<Duration> = self
            .short
            .iter()
            .flat_map(|r| r.latencies.clone())
            .collect();
        all.sort_unstable();
        let at = (all.len() * percent / 100).min(all.len().checked_sub(1)?);
        Some(all[at].as_secs_f64() * 1e3)
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn print_report(routes: &[Route], scale: Scale) {
    type Metric = fn(&Route) -> Option<f64>;
    let rows: [(String, Metric); 7] = [
        (
            format!("bulk Gbit/s (median of {})", scale.bulk_runs),
            Route::bulk_median,
        ),
        (
            format!(
                "conns/s (c={}, median of {})",
                scale.short_concurrency, scale.short_runs
            ),
            Route::short_rate_median,
        ),
        ("conn p50 latency ms".into(), |r| r.short_latency_ms(50)),
        ("conn p99 latency ms".into(), |r| r.short_latency_ms(99)),
        ("RSS idle KiB".into(), |r| {
            r.memory.as_ref().map(|m| m.idle_kib as f64)
        }),
        (format!("RSS, {} conns open, KiB", scale.idle_conns), |r| {
            r.memory.as_ref().map(|m| m.loaded_kib as f64)
        }),
        ("KiB per open conn".into(), |r| {
            r.memory.as_ref().map(Memory::per_conn_kib)
        }),
    ];
    let find = |name: &str| routes.iter().find(|r| r.via.name() == name);
    let (direct, socksd, micro) = (find("direct"), find("mptcp-socksd"), find("microsocks"));
    let fmt = |v: Option<f64>| match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nload: {cores} cores, Linux {}; client, servers and proxies share them, on \
         127.0.0.1 in a private network namespace",
        kernel.trim()
    );
    let _ = writeln!(
        out,
        "{:<31} {:>8} {:>13} {:>11} {:>14} {:>13} {:>18}",
        "",
        "direct",
        "mptcp-socksd",
        "microsocks",
        "socksd/direct",
        "micro/direct",
        "socksd/microsocks"
    );
    for (label, metric) in &rows {
        let (d, s, m) = (
            direct.and_then(metric),
            socksd.and_then(metric),
            micro.and_then(metric),
        );
        let _ = writeln!(
            out,
            "{label:<31} {:>8} {:>13} {:>11} {:>14} {:>13} {:>18}",
            fmt(d),
            fmt(s),
            fmt(m),
            ratio(s, d),
            ratio(m, d),
            ratio(s, m)
        );
    }
    for r in routes {
        let list = |v: Vec<f64>| {
            v.iter()
                .map(|x| fmt(Some(*x)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let failed: usize = r.short.iter().map(|round| round.failed).sum();
        let _ = writeln!(
            out,
            "{}: bulk runs {} Gbit/s; conns/s per round {}; {failed} connections failed",
            r.via.name(),
            list(r.bulk_gbps.clone()),
            list(r.short.iter().map(|round| round.per_sec).collect()),
        );
    }
    print!("{out}");
}
