//! mptcp-socksd: a SOCKS5 proxy whose outbound connections are MPTCP or TCP per
//! destination, with a REST API that edits the policy at runtime.
//!
//! Parses the flags (microsocks-compatible) and the config file, starts tracing, binds,
//! and hands everything to [`mptcp_socksd::Daemon`] until SIGINT or SIGTERM; SIGHUP
//! reloads ([`mptcp_socksd::Reloader`]).

use std::ffi::OsString;
use std::io::IsTerminal;

use mptcp_socksd::{Cli, Daemon, Listeners, LogFormat, Reloader, SetQuiet};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // First: until a handler is installed, SIGHUP's default action ends the process.
    let mut hangups = signal(SignalKind::hangup())?;
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::try_parse_from(argv.clone()).unwrap_or_else(|e| e.exit());
    if cli.print_config() {
        print!("{}", cli.settings());
        return Ok(());
    }
    let level = |quiet: bool| EnvFilter::new(if quiet { "error" } else { "info" });
    // RUST_LOG, when set, decides the level for the whole run.
    let from_env = EnvFilter::try_from_default_env().ok();
    let fixed_level = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| level(cli.quiet()));
    // Two lines per connection: written by a background thread, so a slow terminal or
    // pipe never stalls a relay, in one write for all lines queued meanwhile (it flushes
    // whenever the queue is empty). The guard flushes what is queued when main returns.
    let (log_writer, _flush_on_exit) =
        tracing_appender::non_blocking(std::io::BufWriter::new(std::io::stderr()));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log_writer);
    let set_quiet: SetQuiet = match cli.log_format() {
        LogFormat::Text => {
            let log = log
                .with_ansi(std::io::stderr().is_terminal())
                .fmt_fields(mptcp_socksd::escaping_fields())
                .with_filter_reloading();
            let handle = log.reload_handle();
            log.init();
            Box::new(move |quiet| handle.reload(level(quiet)).map_err(|e| e.to_string()))
        }
        // serde_json escapes what a client sent (control characters included).
        LogFormat::Json => {
            let log = log.json().with_current_span(false).with_filter_reloading();
            let handle = log.reload_handle();
            log.init();
            Box::new(move |quiet| handle.reload(level(quiet)).map_err(|e| e.to_string()))
        }
    };

    let settings = cli.settings().clone();
    let config = cli.into_config(mptcp_socksd::raise_and_log_fd_limit())?;
    let listeners = Listeners::bind(&config).await?;
    if let Some(fingerprint) = &config.tls_fingerprint {
        // On stdout, alone on its line, for scripts: what a box pins.
        println!("sha256={fingerprint}");
    }
    let daemon = Daemon::start(config, listeners).await?;
    let mut reloader = Reloader::new(argv, settings, daemon.store().clone());
    if !fixed_level {
        reloader = reloader.with_log_level(set_quiet);
    }
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config file and the rule file");
            reloader.reload().await;
        }
    });
    daemon.serve(shutdown_signal()).await;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
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
