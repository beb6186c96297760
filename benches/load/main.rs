//! Load benchmark: what a relayed connection costs through `mptcp-socksd`, against no
//! proxy at all and against `microsocks`, all measured in the same run so the table's
//! ratios depend far less on the host than its absolute figures.
//!
//! The same run measures two chains, the daemon as box and as upstream: "chain" is
//! client -> box -> upstream (plain SOCKS5) -> target, "chain+tls" the same with the
//! upstream serving SOCKS5 inside TLS (`--tls`, its self-signed certificate pinned by the
//! box). A second table shows their traffic figures against the same baseline; the box's
//! `/health` must show that its upstream carried every connection, since a box whose
//! upstream fails serves the destination directly.
//!
//! `cargo bench -p mptcp-socks-benches --bench load` (root: it creates a network
//! namespace). It builds `mptcp-socksd` itself (`cargo build --release`), so the figures
//! are always those of the current source. Without `--bench` (e.g. `cargo test
//! --benches`) it runs a small smoke version of the same steps.
//!
//! Everything runs on 127.0.0.1 of a private network namespace, so the thousands of
//! TIME_WAIT sockets stay off the host's loopback and vanish with the namespace. The rule
//! files make 127.0.0.1 plain TCP: the comparison is the proxy's overhead, not MPTCP's.

mod peers;
mod traffic;

use peers::*;
use traffic::*;

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
    mptcp_policy::raise_fd_limit().context("raising the fd limit")?;
    let dir = tempfile::tempdir()?;
    let daemon = build_daemon()?;

    let echo = free_port()?;
    let source = free_port()?;
    let policy = dir.path().join("load.rules");
    std::fs::write(&policy, "127.0.0.1,0,default,default,access=allow,\n.\n")?;

    // Started from this (main) thread: their parent-death signal follows it.
    let socksd_port = free_port()?;
    let socksd_cmd = daemon_cmd(&daemon, socksd_port, &policy, "off");
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

    let chains = ChainKind::ALL
        .into_iter()
        .map(|kind| Chain::start(kind, &daemon, dir.path()))
        .collect::<anyhow::Result<Vec<_>>>()?;

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
        for chain in &chains {
            chain.wait_ready()?;
            ensure_chained(chain, &targets).await?;
            routes.push(Route::new(chain.via()));
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
        for chain in &chains {
            let route = routes
                .iter_mut()
                .find(|r| r.via.name() == chain.kind.route())
                .context("every chain has its route")?;
            route.upstream = Some(ensure_all_chained(chain, route).await?);
        }
        print_report(&routes, scale);
        soak(&socksd, &targets, scale).await?;
        anyhow::Ok(())
    })?;
    drop(rt);
    drop(chains);
    drop(microsocks);
    drop(socksd);
    Ok(())
}

/// Everything measured over one way of reaching the servers.
#[derive(Debug)]
struct Route {
    via: Via,
    bulk_gbps: Vec<f64>,
    short: Vec<ShortRound>,
    memory: Option<Memory>,
    /// A chain's upstream as its box saw it after the runs.
    upstream: Option<UpstreamHealth>,
}

impl Route {
    fn new(via: Via) -> Self {
        Route {
            via,
            bulk_gbps: Vec::new(),
            short: Vec::new(),
            memory: None,
            upstream: None,
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

/// Checks that `chain`'s upstream carried every connection `route` made through its box
/// (the one of [`ensure_chained`] too), so none was served directly by the box alone.
async fn ensure_all_chained(chain: &Chain, route: &Route) -> anyhow::Result<UpstreamHealth> {
    let relayed = 1
        + route.bulk_gbps.len()
        + route
            .short
            .iter()
            .map(|round| round.latencies.len())
            .sum::<usize>();
    // A connection that failed may or may not have got as far as the upstream.
    let failed: usize = route.short.iter().map(|round| round.failed).sum();
    let health = upstream_health(chain).await?;
    let carried = usize::try_from(health.connections).unwrap_or(usize::MAX);
    ensure!(
        health.state == "up" && (relayed..=relayed + failed).contains(&carried),
        "{}: {relayed} connections relayed and {failed} failed, but the upstream carried \
         {carried} ({health:?}): the box served some directly",
        route.via.name()
    );
    Ok(health)
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

type Metric = fn(&Route) -> Option<f64>;

fn print_report(routes: &[Route], scale: Scale) {
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
    // Memory is measured for the single proxies only: a chain is two of the same daemon.
    let traffic_rows = &rows[..4];
    let find = |name: &str| routes.iter().find(|r| r.via.name() == name);

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nload: {cores} cores, Linux {}; client, servers and proxies share them, on \
         127.0.0.1 in a private network namespace",
        kernel.trim()
    );
    table(
        &mut out,
        &rows,
        &[
            ("direct", find("direct")),
            ("mptcp-socksd", find("mptcp-socksd")),
            ("microsocks", find("microsocks")),
        ],
        &[
            ("socksd/direct", 1, 0),
            ("micro/direct", 2, 0),
            ("socksd/microsocks", 1, 2),
        ],
    );
    let _ = writeln!(
        out,
        "\nchain: client -> box mptcp-socksd -> upstream mptcp-socksd -> target; chain+tls: \
         the same, the upstream serving SOCKS5 inside TLS (pinned)"
    );
    table(
        &mut out,
        traffic_rows,
        &[
            ("direct", find("direct")),
            ("mptcp-socksd", find("mptcp-socksd")),
            ("chain", find("chain")),
            ("chain+tls", find("chain+tls")),
        ],
        &[
            ("chain/direct", 2, 0),
            ("chain+tls/direct", 3, 0),
            ("chain/socksd", 2, 1),
            ("chain+tls/chain", 3, 2),
        ],
    );
    for r in routes {
        let list = |v: Vec<f64>| {
            v.iter()
                .map(|x| fmt(Some(*x)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let failed: usize = r.short.iter().map(|round| round.failed).sum();
        let upstream = r.upstream.as_ref().map_or(String::new(), |u| {
            format!(
                "; its upstream carried {} ({} resumed a TLS session)",
                u.connections, u.resumed_sessions
            )
        });
        let _ = writeln!(
            out,
            "{}: bulk runs {} Gbit/s; conns/s per round {}; {failed} connections failed{upstream}",
            r.via.name(),
            list(r.bulk_gbps.clone()),
            list(r.short.iter().map(|round| round.per_sec).collect()),
        );
    }
    print!("{out}");
}

/// One table of `rows`: a column per route in `columns`, then a column per ratio (its
/// header, and the numerator's and denominator's indices in `columns`).
fn table(
    out: &mut String,
    rows: &[(String, Metric)],
    columns: &[(&str, Option<&Route>)],
    ratios: &[(&str, usize, usize)],
) {
    let width = |header: &str| (header.len() + 1).max(8);
    let mut line = format!("{:<31}", "");
    for header in columns
        .iter()
        .map(|c| c.0)
        .chain(ratios.iter().map(|r| r.0))
    {
        let _ = write!(line, " {header:>w$}", w = width(header));
    }
    let _ = writeln!(out, "{line}");
    for (label, metric) in rows {
        let values: Vec<Option<f64>> = columns
            .iter()
            .map(|(_, route)| route.and_then(metric))
            .collect();
        let mut line = format!("{label:<31}");
        for ((header, _), value) in columns.iter().zip(&values) {
            let _ = write!(line, " {:>w$}", fmt(*value), w = width(header));
        }
        for &(header, a, b) in ratios {
            let _ = write!(
                line,
                " {:>w$}",
                ratio(values[a], values[b]),
                w = width(header)
            );
        }
        let _ = writeln!(out, "{line}");
    }
}

fn fmt(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}
