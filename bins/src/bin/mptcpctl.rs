//! `mptcpctl`: the operator's view of a running `mptcp-socksd`, over its REST API.
//!
//! Exit codes: 0 done, 1 the API refused (its message is printed), 2 usage error,
//! 3 the API cannot be reached, 4 `health` or `doctor`: something degrades aggregation.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Parser;
use mptcp_policy::Settings;
use mptcp_socksd::ctl::{CtlArgs, CtlCommand, OnOff, RulesCommand};
use mptcp_socksd::{
    ApiClient, Capabilities, ClientError, ConnectionView, LearnedView, RuleRequest, RuleView,
    UpstreamView,
};

/// Why a command failed, and so the exit code.
enum Failure {
    /// The API answered with an error (exit 1).
    Api(String),
    /// The API could not be reached (exit 3).
    Unreachable(String),
    /// The URL given is not usable (exit 2, like clap's usage errors).
    Usage(String),
    /// `health` found the daemon degraded (exit 4; the problems are printed).
    Degraded,
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        match err {
            ClientError::Unreachable(_) => Failure::Unreachable(err.to_string()),
            ClientError::Usage(_) => Failure::Usage(err.to_string()),
            _ => Failure::Api(err.to_string()),
        }
    }
}

impl Failure {
    fn report(self) -> ExitCode {
        let (message, code) = match self {
            Failure::Api(m) => (m, 1),
            Failure::Usage(m) => (m, 2),
            Failure::Unreachable(m) => (m, 3),
            Failure::Degraded => return ExitCode::from(4),
        };
        eprintln!("mptcpctl: {message}");
        ExitCode::from(code)
    }
}

fn main() -> ExitCode {
    let cli = CtlArgs::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn run(cli: &CtlArgs) -> Result<(), Failure> {
    let target = cli.api_target().map_err(Failure::Usage)?;
    for note in &target.notes {
        eprintln!("mptcpctl: {note}");
    }
    let client = ApiClient::new(&target.api, target.token);
    match &cli.command {
        CtlCommand::Health => {
            let health = client.health()?;
            let degraded = health.status != "ok";
            if cli.json {
                print_json(&health)?;
                return if degraded {
                    Err(Failure::Degraded)
                } else {
                    Ok(())
                };
            }
            let mut line = format!("{} (API {})", health.status, client.base());
            if let Some(rules) = health.rules {
                let _ = write!(line, ": {rules} rule(s)");
            }
            if let Some(file) = &health.rule_file {
                let _ = write!(line, " from {file}");
            }
            println!("{line}");
            if let Some(err) = &health.last_reload_error {
                println!(
                    "last reload of the rule file failed, the previous rules are in force: {}",
                    err.message
                );
            }
            for upstream in &health.upstreams {
                println!("{}", upstream_line(upstream));
            }
            for problem in &health.problems {
                println!("problem: {problem}");
            }
            if degraded {
                return Err(Failure::Degraded);
            }
        }
        CtlCommand::Learned { forget: true } => {
            client.forget_learned()?;
            if !cli.json {
                println!("forgot what auto: rules learned");
            }
        }
        CtlCommand::Learned { forget: false } => {
            let learned = client.learned()?;
            if cli.json {
                return print_json(&learned);
            }
            if learned.is_empty() {
                println!("nothing learned (yet): no via=auto:NAME rule has been used");
            } else {
                print!("{}", learned_table(&learned));
            }
        }
        CtlCommand::Rules(RulesCommand::List) => {
            let rules = client.rules()?;
            if cli.json {
                return print_json(&rules);
            }
            if rules.is_empty() {
                println!("no rules: every destination gets the defaults (MPTCP on)");
            } else {
                print!("{}", rules_table(&rules));
            }
        }
        CtlCommand::Rules(RulesCommand::Show { destination }) => {
            let rule = client.rule(destination)?;
            if cli.json {
                return print_json(&rule);
            }
            print!("{}", rules_table(std::slice::from_ref(&rule)));
        }
        CtlCommand::Rules(RulesCommand::Add {
            destination,
            mptcp,
            scheduler,
            path_manager,
            access,
            via,
        }) => {
            let settings = Settings {
                mptcp: *mptcp == OnOff::On,
                scheduler: *scheduler,
                path_manager: *path_manager,
            };
            let request = RuleRequest::new(destination.as_str(), &settings, *access).with_via(via);
            let (rule, created) = client.add_rule(&request)?;
            if cli.json {
                return print_json(&rule);
            }
            println!(
                "{} rule for {}: MPTCP {}, scheduler {}, path manager {}, access {}, via {}",
                if created { "added" } else { "replaced" },
                rule.ip,
                on_off(rule.enable),
                rule.scheduler,
                rule.path_manager,
                rule.access,
                rule.via
            );
            for reason in &rule.not_in_effect {
                println!("not in effect here: {reason}");
            }
        }
        CtlCommand::Rules(RulesCommand::Rm { destination }) => {
            client.delete_rule(destination)?;
            if !cli.json {
                println!("removed rule for {destination}");
            }
        }
        CtlCommand::Capabilities => {
            let capabilities = client.capabilities()?;
            if cli.json {
                return print_json(&capabilities);
            }
            print!("{}", capabilities_text(&capabilities));
        }
        CtlCommand::Connections => {
            let connections = client.connections()?;
            if cli.json {
                return print_json(&connections);
            }
            if connections.is_empty() {
                println!("no live connections");
            } else {
                print!("{}", connections_table(&connections));
            }
        }
        CtlCommand::TlsFingerprint { path } => tls_fingerprint(path)?,
        CtlCommand::Doctor { probe } => return doctor(&client, probe.as_deref(), cli.json),
        CtlCommand::Setup {
            uplinks,
            dry_run,
            remove,
        } => return setup(uplinks, *dry_run, *remove),
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Api(format!("cannot start a runtime: {e}")))
}

fn setup(uplinks: &[String], dry_run: bool, remove: bool) -> Result<(), Failure> {
    use mptcp_socksd::setup::{self, Uplink};
    let runtime = runtime()?;
    let failed = |e: setup::SetupError| Failure::Api(e.to_string());
    if remove {
        let undone = runtime.block_on(setup::remove()).map_err(failed)?;
        if undone.is_empty() {
            println!("nothing to undo: setup made no changes here");
        }
        for step in undone.iter().rev() {
            println!("undone: {step}");
        }
        return Ok(());
    }
    let uplinks = uplinks
        .iter()
        .map(|u| u.parse::<Uplink>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::Usage)?;
    let steps = runtime.block_on(setup::plan(&uplinks)).map_err(failed)?;
    if steps.is_empty() {
        println!("nothing to do: these uplinks are set up");
        return Ok(());
    }
    if !dry_run {
        runtime.block_on(setup::apply(&steps)).map_err(failed)?;
    }
    for step in &steps {
        println!("{}{step}", if dry_run { "" } else { "done: " });
    }
    Ok(())
}

fn doctor(client: &ApiClient, probe: Option<&str>, json: bool) -> Result<(), Failure> {
    use mptcp_socksd::doctor;
    let runtime = runtime()?;
    let owned = mptcp_socksd::pm_sysctl::owned_by_live_daemon();
    let mut report = runtime.block_on(doctor::examine(owned));
    if let Some(target) = probe {
        let found = runtime.block_on(doctor::probe(target, std::time::Duration::from_secs(5)));
        report = report.with([found]);
    }
    let report = report.with(doctor::daemon_findings(client));
    if json {
        print_json(&report)?;
    } else {
        for finding in &report.findings {
            println!("{finding}");
        }
        println!(
            "{}",
            if report.ok {
                "this host can spread connections over its uplinks"
            } else {
                "problems found: fix them with the commands above"
            }
        );
    }
    if report.ok {
        Ok(())
    } else {
        Err(Failure::Degraded)
    }
}

fn on_off(enabled: bool) -> &'static str {
    if enabled { "on" } else { "off" }
}

/// The rules, a `!` before each one not (fully) in effect on the daemon's host, and why
/// below the table.
fn rules_table(rules: &[RuleView]) -> String {
    let header = [
        "",
        "DESTINATION",
        "MPTCP",
        "SCHEDULER",
        "PATH MANAGER",
        "ACCESS",
        "VIA",
    ]
    .map(str::to_owned);
    let rows = rules.iter().map(|r| {
        [
            if r.in_effect { "" } else { "!" }.to_owned(),
            r.ip.clone(),
            on_off(r.enable).to_owned(),
            r.scheduler.clone(),
            r.path_manager.clone(),
            r.access.clone(),
            r.via.clone(),
        ]
    });
    let mut out = table(header, rows);
    let not_in_effect: Vec<&RuleView> = rules.iter().filter(|r| !r.in_effect).collect();
    if !not_in_effect.is_empty() {
        out.push_str("\n! not (fully) in effect on this host:\n");
        for rule in not_in_effect {
            for reason in &rule.not_in_effect {
                let _ = writeln!(out, "  {}: {reason}", rule.ip);
            }
        }
    }
    out
}

fn capabilities_text(c: &Capabilities) -> String {
    let mut out = String::new();
    let mptcp = match (c.kernel.as_str(), c.mptcp_enabled) {
        ("none", _) => "no MPTCP".to_owned(),
        ("legacy", true) => "legacy multipath-tcp.org MPTCP, enabled".to_owned(),
        (flavour, true) => format!("{flavour} MPTCP, enabled"),
        (flavour, false) => format!("{flavour} MPTCP, disabled (net.mptcp.enabled=0)"),
    };
    let _ = writeln!(out, "kernel:          {mptcp}");
    let _ = writeln!(
        out,
        "path manager:    {} (daemon); namespace: {}",
        c.path_manager_mode,
        c.kernel_path_manager.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "scheduler:       {} (available: {})",
        c.scheduler.as_deref().unwrap_or("-"),
        if c.available_schedulers.is_empty() {
            "-".to_owned()
        } else {
            c.available_schedulers.join(", ")
        }
    );
    if c.local_addresses.is_empty() {
        let _ = writeln!(
            out,
            "local addresses: none (add them with: ip mptcp endpoint add ADDRESS dev IF subflow)"
        );
    } else {
        let _ = writeln!(out, "local addresses:");
        let header = ["  ID", "ADDRESS", "INTERFACE", "FLAGS"].map(str::to_owned);
        let rows = c.local_addresses.iter().map(|a| {
            [
                format!("  {}", a.id),
                a.addr.to_string(),
                a.interface
                    .clone()
                    .or_else(|| a.ifindex.map(|i| format!("#{i}")))
                    .unwrap_or_else(|| "-".into()),
                if a.flags.is_empty() {
                    "-".to_owned()
                } else {
                    a.flags.join(",")
                },
            ]
        });
        out.push_str(&table(header, rows));
    }
    for note in &c.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

/// `upstream vps=socks5+tls://...: down, 0 connection(s); 2 failure(s) in a row, last:
/// tls: ...; its destinations go direct, retried in 4s`.
fn upstream_line(u: &UpstreamView) -> String {
    let mut line = format!(
        "upstream {}: {}, {} connection(s)",
        u.url, u.state, u.connections
    );
    if u.resumed_sessions > 0 {
        let _ = write!(line, " ({} resumed TLS)", u.resumed_sessions);
    }
    if let Some(failure) = &u.failure {
        let _ = write!(
            line,
            "; {} failure(s) in a row, last: {}: {}",
            u.failures_in_a_row, failure.kind, failure.message
        );
    }
    if let Some(retry) = u.retry_in_s {
        let _ = write!(line, "; its destinations go direct, retried in {retry}s");
    }
    line
}

fn learned_table(learned: &[LearnedView]) -> String {
    let header = ["DESTINATION", "MPTCP", "ROUTE", "LEARNED", "EXPIRES IN"].map(str::to_owned);
    let rows = learned.iter().map(|l| {
        [
            l.address.to_string(),
            if l.mptcp { "yes" } else { "no" }.to_owned(),
            if l.mptcp { "direct" } else { "upstream" }.to_owned(),
            format!("{}s ago", l.learned_s_ago),
            format!("{}s", l.expires_in_s),
        ]
    });
    table(header, rows)
}

/// One row per connection, then one line per subflow with its share of the connection's
/// traffic (what shows that every link carries some).
/// One row per connection, then one line per subflow with its share of the connection's
/// traffic (what shows that every link carries some).
fn connections_table(connections: &[ConnectionView]) -> String {
    let header = [
        "ID",
        "CLIENT",
        "TARGET",
        "VIA",
        "TRANSPORT",
        "RULE",
        "AGE",
        "SUBFLOWS",
    ]
    .map(str::to_owned);
    let rows = connections.iter().map(|c| {
        [
            c.id.to_string(),
            c.client.to_string(),
            c.target.clone(),
            c.via.clone(),
            c.transport.clone(),
            c.rule.clone(),
            format!("{}s", c.age_s),
            c.subflows.len().to_string(),
        ]
    });
    let rendered = table(header, rows);
    let mut lines = rendered.lines();
    let mut out = String::new();
    let _ = writeln!(out, "{}", lines.next().unwrap_or_default());
    // Each connection's subflows right under it.
    for (line, c) in lines.zip(connections) {
        let _ = writeln!(out, "{line}");
        out.push_str(&subflow_lines(c));
    }
    out
}

fn subflow_lines(c: &ConnectionView) -> String {
    let total: u64 = c
        .subflows
        .iter()
        .map(|s| s.bytes_acked + s.bytes_received)
        .sum();
    let rows = c.subflows.iter().map(|s| {
        let bytes = s.bytes_acked + s.bytes_received;
        let share = if total == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}%", bytes as f64 * 100.0 / total as f64)
        };
        [
            format!("    {} -> {}", s.local, s.remote),
            format!("sent {}", human_bytes(s.bytes_acked)),
            format!("received {}", human_bytes(s.bytes_received)),
            share,
            // Loopback and LAN round trips are well under a millisecond.
            if s.rtt_ms < 10.0 {
                format!("rtt {:.2} ms", s.rtt_ms)
            } else {
                format!("rtt {:.0} ms", s.rtt_ms)
            },
        ]
    });
    let rendered = table([(); 5].map(|()| String::new()), rows);
    // Drop the empty header line.
    rendered
        .lines()
        .skip(1)
        .fold(String::new(), |mut out, line| {
            let _ = writeln!(out, "{line}");
            out
        })
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Left-aligned columns two spaces apart, the header first.
fn table<const N: usize>(
    header: [String; N],
    rows: impl IntoIterator<Item = [String; N]>,
) -> String {
    let rows: Vec<[String; N]> = rows.into_iter().collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The API's answer as JSON, as it sent it (the same wire type, written back).
fn print_json(answer: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(answer)
        .map_err(|err| Failure::Api(format!("cannot print the answer: {err}")))?;
    println!("{text}");
    Ok(())
}

/// `sha256=HEX`, as a `#sha256=` pin is written. Exit 1 (with the file named) when there
/// is no certificate to read.
fn tls_fingerprint(path: &std::path::Path) -> Result<(), Failure> {
    let fingerprint = mptcp_socksd::tls_identity::fingerprint_of(path)
        .map_err(|err| Failure::Api(err.to_string()))?;
    println!("sha256={fingerprint}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_as_operators_expect() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn subflow_shares_add_up_per_connection() {
        let subflow = |local: &str, sent: u64, received: u64| mptcp_socksd::SubflowView {
            local: local.parse().expect("addr"),
            remote: "192.0.2.1:443".parse().expect("addr"),
            bytes_acked: sent,
            bytes_received: received,
            rtt_ms: 12.5,
        };
        let connection = ConnectionView {
            id: 7,
            client: "127.0.0.1:5000".parse().expect("addr"),
            target: "example.com:443".into(),
            remote: "192.0.2.1:443".parse().expect("addr"),
            via: "vps".into(),
            why_direct: None,
            local: "10.0.1.1:40000".parse().expect("addr"),
            rule: "default".into(),
            transport: "mptcp".into(),
            token: Some(1),
            age_s: 3,
            subflows: vec![
                subflow("10.0.1.1:40000", 600, 150),
                subflow("10.0.2.1:40001", 200, 50),
            ],
        };
        let out = connections_table(std::slice::from_ref(&connection));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("ID"), "{out}");
        assert!(
            lines[1].starts_with("7 ")
                && lines[1].contains("example.com:443")
                && lines[1].contains(" vps "),
            "{out}"
        );
        assert!(
            lines[2].contains("10.0.1.1:40000 -> 192.0.2.1:443") && lines[2].contains("75%"),
            "{out}"
        );
        assert!(
            lines[3].contains("10.0.2.1:40001")
                && lines[3].contains("25%")
                && lines[3].contains("rtt 12 ms"),
            "{out}"
        );
    }
}
