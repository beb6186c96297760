//! mptcp-socksd: a SOCKS5 proxy whose outbound connections are MPTCP or TCP per
//! destination, with a REST API that edits the policy at runtime.
//!
//! Parses the flags (microsocks-compatible), starts tracing, binds, and hands everything
//! to [`mptcp_socksd::run`] until SIGINT or SIGTERM.

use std::io::IsTerminal;

use mptcp_socksd::{Cli, Listeners, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_level = if cli.quiet() { "error" } else { "info" };
    // Two lines per connection: written by a background thread, so a slow terminal or
    // pipe never stalls a relay, in one write for all lines queued meanwhile (it flushes
    // whenever the queue is empty). The guard flushes what is queued when main returns.
    let (log_writer, _flush_on_exit) =
        tracing_appender::non_blocking(std::io::BufWriter::new(std::io::stderr()));
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log_writer);
    match cli.log_format() {
        LogFormat::Text => log
            .with_ansi(std::io::stderr().is_terminal())
            .fmt_fields(mptcp_socksd::escaping_fields())
            .init(),
        // serde_json escapes what a client sent (control characters included).
        LogFormat::Json => log.json().with_current_span(false).init(),
    }

    let config = cli.into_config(mptcp_socksd::raise_and_log_fd_limit())?;
    let listeners = Listeners::bind(&config).await?;
    if let Some(fingerprint) = &config.tls_fingerprint {
        // On stdout, alone on its line, for scripts: what a box pins.
        println!("sha256={fingerprint}");
    }
    mptcp_socksd::run(config, listeners, shutdown_signal()).await?;
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
