//! mptcp-socksd: a SOCKS5 proxy whose outbound connections are MPTCP or TCP per
//! destination, with a REST API that edits the policy at runtime.
//!
//! Parses the flags (microsocks-compatible), starts tracing, loads the rule file, binds,
//! and hands everything to the libraries until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use mptcp_policy::{Flavour, KernelSupport};
use mptcp_socks::{Auth, PolicyHandle, ServerConfig};
use mptcp_socks_bins::{RuleStore, serve_api, spawn_watcher};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// A SOCKS5 proxy that opens outbound connections as Multipath TCP or plain TCP, per
/// destination, as the rule file says.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on for SOCKS5 clients.
    #[arg(short = 'i', long = "listen", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    listen_ip: IpAddr,
    /// Port to listen on for SOCKS5 clients (0: any free port).
    #[arg(short = 'p', long, default_value_t = 1080)]
    port: u16,
    /// Username clients must authenticate with (needs -P).
    #[arg(short = 'u', long, requires = "password")]
    user: Option<String>,
    /// Password clients must authenticate with (needs -u).
    #[arg(
        short = 'P',
        long,
        requires = "user",
        env = "MPTCP_SOCKS_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// Auth once: a client IP that authenticated once may use the proxy without auth
    /// afterwards (for browsers that cannot send a SOCKS password).
    #[arg(short = '1', long = "auth-once", requires = "user")]
    auth_once: bool,
    /// Comma-separated client IPs that may use the proxy without authentication.
    #[arg(short = 'w', long = "allow", value_delimiter = ',')]
    allow: Vec<IpAddr>,
    /// Local address to bind outbound connections to.
    #[arg(short = 'b', long = "bind")]
    bind: Option<IpAddr>,
    /// Quiet: log errors only.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// The rule file (seed format; created on the first change through the API).
    #[arg(long, default_value = "mptcp-socks.rules", env = "MPTCP_SOCKS_POLICY")]
    policy: PathBuf,
    /// Address of the REST API, or "off".
    #[arg(long, default_value = "127.0.0.1:5000", value_parser = parse_api)]
    api: ApiAddr,
    /// Bearer token the REST API requires; mandatory when it listens beyond loopback.
    #[arg(long, env = "MPTCP_SOCKS_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Seconds a client may take for greeting, authentication and request.
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// Seconds allowed for each outbound connect attempt.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
}

#[derive(Debug, Clone, Copy)]
enum ApiAddr {
    Off,
    On(SocketAddr),
}

fn parse_api(s: &str) -> Result<ApiAddr, String> {
    match s {
        "off" | "none" | "" => Ok(ApiAddr::Off),
        _ => s
            .parse()
            .map(ApiAddr::On)
            .map_err(|_| format!("{s:?} is not ADDRESS:PORT (e.g. 127.0.0.1:5000) or \"off\"")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let default_level = if args.quiet { "error" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // An empty token (say, an unset variable expanded in a unit file) is no token.
    let api_token = args.api_token.filter(|t| !t.is_empty());
    let api = match args.api {
        ApiAddr::On(addr) if !addr.ip().is_loopback() && api_token.is_none() => bail!(
            "the REST API on {addr} would be reachable from the network: set a token with \
             --api-token or MPTCP_SOCKS_API_TOKEN, or listen on 127.0.0.1"
        ),
        ApiAddr::On(addr) => Some(addr),
        ApiAddr::Off => None,
    };

    log_kernel_support(&KernelSupport::probe());

    let policy = PolicyHandle::new(Default::default());
    let store = RuleStore::open(&args.policy, policy.clone())
        .with_context(|| format!("cannot load the rule file {}", args.policy.display()))?;
    let _watch = spawn_watcher(store.clone())
        .with_context(|| format!("cannot watch the rule file {}", args.policy.display()))?;

    let socks_addr = SocketAddr::new(args.listen_ip, args.port);
    let socks = TcpListener::bind(socks_addr)
        .await
        .with_context(|| format!("cannot listen for SOCKS5 clients on {socks_addr}"))?;
    if args.user.is_none() && !args.listen_ip.is_loopback() {
        tracing::warn!(
            "no authentication: anyone who can reach {socks_addr} may use this proxy \
             (set -u/-P, or listen with -i 127.0.0.1)"
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let api_task = match api {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for the REST API on {addr}"))?;
            tracing::info!("REST API listening on http://{}", listener.local_addr()?);
            Some(tokio::spawn(serve_api(
                listener,
                store.clone(),
                api_token,
                stopped(),
            )))
        }
        None => None,
    };

    let config = ServerConfig {
        auth: args
            .user
            .zip(args.password)
            .map(|(user, password)| Auth::new(user, password)),
        auth_once: args.auth_once,
        allow_list: args.allow.into_iter().collect(),
        bind_addr: args.bind,
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        connect_timeout: Duration::from_secs(args.connect_timeout),
        ..ServerConfig::default()
    };

    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });

    mptcp_socks::serve(socks, config, policy, stopped()).await?;
    if let Some(task) = api_task {
        let _ = task.await;
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn log_kernel_support(kernel: &KernelSupport) {
    match (kernel.flavour, kernel.enabled) {
        (Flavour::Upstream, true) => tracing::info!(
            path_manager = kernel.path_manager.as_deref().unwrap_or("?"),
            schedulers = %kernel.available_schedulers.join(" "),
            "kernel has upstream MPTCP"
        ),
        (Flavour::Legacy, true) => {
            tracing::info!("kernel has the legacy multipath-tcp.org MPTCP: per-socket options")
        }
        (Flavour::Upstream | Flavour::Legacy, false) => tracing::warn!(
            "MPTCP is disabled in this network namespace: every connection will be plain TCP \
             (enable it with: sysctl -w net.mptcp.enabled=1)"
        ),
        _ => tracing::warn!(
            "this kernel has no MPTCP: every connection will be plain TCP (Linux 5.6+ with \
             CONFIG_MPTCP has it)"
        ),
    }
}
