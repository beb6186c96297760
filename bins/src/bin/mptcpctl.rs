//! `mptcpctl`: the operator's view of a running `mptcp-socksd`, over its REST API.
//!
//! Exit codes: 0 done, 1 the API refused (its message is printed), 2 usage error,
//! 3 the API cannot be reached.

use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use mptcp_policy::{Access, PathManager, Scheduler};
use mptcp_socksd::{Capabilities, ConnectionView, Health, RuleView, rule_path};
use serde_json::{Value, json};
use ureq::http::StatusCode;

/// Manage the per-destination MPTCP policy of a running mptcp-socksd.
#[derive(Debug, Parser)]
#[command(name = "mptcpctl", version)]
struct Cli {
    /// Base URL of the daemon's REST API, or unix:PATH for its Unix socket.
    #[arg(
        long,
        env = "MPTCP_SOCKS_API",
        default_value = "http://127.0.0.1:5000",
        global = true
    )]
    api: String,
    /// Bearer token, needed when the API listens on a non-loopback address.
    #[arg(
        long,
        env = "MPTCP_SOCKS_API_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// Print the API's JSON instead of a table or message.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List, show, add or remove rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Is the daemon up, how many rules, did the last reload of the rule file fail?
    Health,
    /// What this host offers: kernel MPTCP, path-manager mode, schedulers, local addresses.
    #[command(alias = "caps")]
    Capabilities,
    /// The live proxied connections, with their subflows and each one's share of traffic.
    #[command(alias = "conns")]
    Connections,
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// All rules, in rule file order.
    #[command(alias = "ls")]
    List,
    /// The rule for one destination.
    Show {
        /// Address, CIDR prefix, name, `*.domain` or `*`.
        destination: String,
    },
    /// Add a rule, or replace the rule for that destination.
    #[command(alias = "set")]
    Add {
        /// Address, CIDR prefix, name, `*.domain` or `*`.
        destination: String,
        /// Open connections to it as Multipath TCP (on) or plain TCP (off).
        #[arg(long, value_enum, default_value_t = OnOff::On)]
        mptcp: OnOff,
        /// default, roundrobin or redundant (the legacy kernel's schedulers).
        #[arg(long, default_value_t = Scheduler::Default, value_parser = parse_scheduler)]
        scheduler: Scheduler,
        /// default, fullmesh, ndiffports or binder.
        #[arg(long, default_value_t = PathManager::Default, value_parser = parse_path_manager)]
        path_manager: PathManager,
        /// default (the proxy's own host refused, all else allowed), allow (opens an
        /// address or prefix of the host on purpose) or deny (refused with reply 0x02).
        #[arg(long, default_value_t = Access::Default, value_parser = parse_access)]
        access: Access,
    },
    /// Remove the rule for a destination.
    #[command(alias = "remove", alias = "del")]
    Rm {
        /// The destination, as listed.
        destination: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

fn parse_scheduler(s: &str) -> Result<Scheduler, String> {
    s.parse()
        .map_err(|_| format!("expected one of {}", names(Scheduler::ALL)))
}

fn parse_path_manager(s: &str) -> Result<PathManager, String> {
    s.parse()
        .map_err(|_| format!("expected one of {}", names(PathManager::ALL)))
}

fn parse_access(s: &str) -> Result<Access, String> {
    s.parse()
        .map_err(|_| format!("expected one of {}", names(Access::ALL)))
}

fn names<T: std::fmt::Display>(all: &[T]) -> String {
    all.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a command failed, and so the exit code.
enum Failure {
    /// The API answered with an error (exit 1).
    Api(String),
    /// The API could not be reached (exit 3).
    Unreachable(String),
    /// The URL given is not usable (exit 2, like clap's usage errors).
    Usage(String),
}

impl Failure {
    fn report(self) -> ExitCode {
        let (message, code) = match self {
            Failure::Api(m) => (m, 1),
            Failure::Usage(m) => (m, 2),
            Failure::Unreachable(m) => (m, 3),
        };
        eprintln!("mptcpctl: {message}");
        ExitCode::from(code)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let client = Client::new(cli);
    match &cli.command {
        Command::Health => {
            let body = client.expect_ok(client.get("/health")?)?;
            if cli.json {
                return print_json(&body);
            }
            let health: Health = from_value(body)?;
            let mut line = format!("{} (API {})", health.status, client.base);
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
            Ok(())
        }
        Command::Rules(RulesCommand::List) => {
            let body = client.expect_ok(client.get("/rules")?)?;
            if cli.json {
                return print_json(&body);
            }
            let rules: Vec<RuleView> = from_value(body)?;
            if rules.is_empty() {
                println!("no rules: every destination gets the defaults (MPTCP on)");
            } else {
                print!("{}", rules_table(&rules));
            }
            Ok(())
        }
        Command::Rules(RulesCommand::Show { destination }) => {
            let body = client.expect_ok(client.get(&rule_path(destination))?)?;
            if cli.json {
                return print_json(&body);
            }
            let rule: RuleView = from_value(body)?;
            print!("{}", rules_table(std::slice::from_ref(&rule)));
            Ok(())
        }
        Command::Rules(RulesCommand::Add {
            destination,
            mptcp,
            scheduler,
            path_manager,
            access,
        }) => {
            let request = json!({
                "access": access.as_str(),
                "ip": destination,
                "enable": if *mptcp == OnOff::On { "1" } else { "0" },
                "scheduler": scheduler.as_str(),
                // Display, not `as_str`: `ndiffports:3` keeps its count.
                "path_manager": path_manager.to_string(),
            });
            let response = client.post("/rules", &request)?;
            let created = response.status == StatusCode::CREATED;
            let body = client.expect_ok(response)?;
            if cli.json {
                return print_json(&body);
            }
            let rule: RuleView = from_value(body)?;
            println!(
                "{} rule for {}: MPTCP {}, scheduler {}, path manager {}, access {}",
                if created { "added" } else { "replaced" },
                rule.ip,
                on_off(rule.enable),
                rule.scheduler,
                rule.path_manager,
                rule.access
            );
            for reason in &rule.not_in_effect {
                println!("not in effect here: {reason}");
            }
            Ok(())
        }
        Command::Rules(RulesCommand::Rm { destination }) => {
            client.expect_ok(client.delete(&rule_path(destination))?)?;
            if !cli.json {
                println!("removed rule for {destination}");
            }
            Ok(())
        }
        Command::Capabilities => {
            let body = client.expect_ok(client.get("/capabilities")?)?;
            if cli.json {
                return print_json(&body);
            }
            let capabilities: Capabilities = from_value(body)?;
            print!("{}", capabilities_text(&capabilities));
            Ok(())
        }
        Command::Connections => {
            let body = client.expect_ok(client.get("/connections")?)?;
            if cli.json {
                return print_json(&body);
            }
            let connections: Vec<ConnectionView> = from_value(body)?;
            if connections.is_empty() {
                println!("no live connections");
            } else {
                print!("{}", connections_table(&connections));
            }
            Ok(())
        }
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

/// One row per connection, then one line per subflow with its share of the connection's
/// traffic (what shows that every link carries some).
fn connections_table(connections: &[ConnectionView]) -> String {
    let header = [
        "ID",
        "CLIENT",
        "TARGET",
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

fn print_json(body: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(body)
        .map_err(|err| Failure::Api(format!("cannot print the answer: {err}")))?;
    println!("{text}");
    Ok(())
}

fn from_value<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, Failure> {
    serde_json::from_value(body)
        .map_err(|err| Failure::Api(format!("unexpected answer from the API: {err}")))
}

/// A status and body from the API.
struct Answer {
    status: StatusCode,
    text: String,
}

/// How the API is reached.
enum Endpoint {
    /// `http://HOST:PORT` (the default).
    Http { agent: ureq::Agent, base: String },
    /// The daemon's `--api unix:PATH`.
    Unix(PathBuf),
}

struct Client {
    endpoint: Endpoint,
    /// What the messages call the API: its URL or `unix:PATH`.
    base: String,
    token: Option<String>,
}

/// The longest answer read from a Unix socket (a long connection list is well below).
const ANSWER_LIMIT: u64 = 64 * 1024 * 1024;

impl Client {
    fn new(cli: &Cli) -> Self {
        let token = cli.token.clone().filter(|t| !t.is_empty());
        if let Some(path) = cli.api.strip_prefix("unix:") {
            return Client {
                endpoint: Endpoint::Unix(PathBuf::from(path)),
                base: cli.api.clone(),
                token,
            };
        }
        let agent = ureq::Agent::config_builder()
            // Error statuses carry the server's message: read them, do not turn them into
            // a bare "status 422".
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        let base = cli.api.trim_end_matches('/');
        // `--api 10.0.0.1:5000` is what an operator types; the seed's server was plain HTTP.
        let base = if base.contains("://") {
            base.to_owned()
        } else {
            format!("http://{base}")
        };
        Client {
            endpoint: Endpoint::Http {
                agent,
                base: base.clone(),
            },
            base,
            token,
        }
    }

    fn auth(&self) -> Result<Option<String>, Failure> {
        let Some(token) = &self.token else {
            return Ok(None);
        };
        // It goes into a header line: a line break would end it.
        if token.bytes().any(|b| b.is_ascii_control()) {
            return Err(Failure::Usage(
                "the token contains control characters".into(),
            ));
        }
        Ok(Some(format!("Bearer {token}")))
    }

    fn get(&self, path: &str) -> Result<Answer, Failure> {
        self.send("GET", path, None)
    }

    fn delete(&self, path: &str) -> Result<Answer, Failure> {
        self.send("DELETE", path, None)
    }

    fn post(&self, path: &str, body: &Value) -> Result<Answer, Failure> {
        self.send("POST", path, Some(body))
    }

    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer, Failure> {
        let auth = self.auth()?;
        match &self.endpoint {
            Endpoint::Http { agent, base } => {
                let url = format!("{base}{path}");
                let response = match (method, body) {
                    ("POST", Some(body)) => {
                        let mut request = agent.post(url);
                        if let Some(auth) = &auth {
                            request = request.header("Authorization", auth);
                        }
                        request.send_json(body)
                    }
                    _ => {
                        let mut request = if method == "DELETE" {
                            agent.delete(url)
                        } else {
                            agent.get(url)
                        };
                        if let Some(auth) = &auth {
                            request = request.header("Authorization", auth);
                        }
                        request.call()
                    }
                };
                let mut response = response.map_err(|err| self.transport(err))?;
                let text = response
                    .body_mut()
                    .read_to_string()
                    .map_err(|err| Failure::Api(format!("cannot read the answer: {err}")))?;
                Ok(Answer {
                    status: response.status(),
                    text,
                })
            }
            Endpoint::Unix(socket) => {
                let body = body.map(Value::to_string);
                let raw = unix_exchange(socket, method, path, auth.as_deref(), body.as_deref())
                    .map_err(|err| {
                        Failure::Unreachable(format!(
                            "cannot reach the API at {}: {err} (is mptcp-socksd running, with \
                             --api {}?)",
                            self.base, self.base
                        ))
                    })?;
                let (status, body) = parse_answer(&raw).map_err(|err| {
                    Failure::Api(format!("bad answer from the API at {}: {err}", self.base))
                })?;
                Ok(Answer {
                    status,
                    text: String::from_utf8_lossy(&body).into_owned(),
                })
            }
        }
    }

    fn transport(&self, err: ureq::Error) -> Failure {
        match err {
            ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
                Failure::Usage(format!("bad API address {:?}: {err}", self.base))
            }
            ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Timeout(_) => Failure::Unreachable(format!(
                "cannot reach the API at {}: {err} (is mptcp-socksd running, with its API on that address?)",
                self.base
            )),
            other => Failure::Api(format!("request to {} failed: {other}", self.base)),
        }
    }

    /// The JSON body of a successful answer (`null` for 204), or the server's message.
    fn expect_ok(&self, answer: Answer) -> Result<Value, Failure> {
        let Answer { status, text } = answer;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text)
                .map_err(|err| Failure::Api(format!("the API answered with bad JSON: {err}")));
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| text.trim().to_owned());
        let mut message = format!("{message} (HTTP {})", status.as_u16());
        if status == StatusCode::UNAUTHORIZED {
            message.push_str("; pass --token or set MPTCP_SOCKS_API_TOKEN");
        }
        Err(Failure::Api(message))
    }
}

/// How long one exchange with the API may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 request over the Unix socket at `socket`, and the raw answer (the server
/// closes after it: `Connection: close`).
fn unix_exchange(
    socket: &Path,
    method: &str,
    target: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<Vec<u8>> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    // The daemon does not check Host on its Unix socket, but HTTP/1.1 requires one.
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if let Some(auth) = auth {
        let _ = write!(request, "Authorization: {auth}\r\n");
    }
    if let Some(body) = body {
        let _ = write!(
            request,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or_default());
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream.take(ANSWER_LIMIT).read_to_end(&mut answer)?;
    Ok(answer)
}

/// The status and body of a raw HTTP/1.1 answer, with a chunked body decoded.
fn parse_answer(raw: &[u8]) -> Result<(StatusCode, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no complete header")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the header is not UTF-8")?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        }
    }
    if chunked {
        return dechunk(body).map(|body| (status, body));
    }
    match length {
        Some(length) if length > body.len() => Err("the answer was cut short".into()),
        Some(length) => Ok((status, body[..length].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk was cut short")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = raw.get(..size).ok_or("a chunk was cut short")?;
        body.extend_from_slice(chunk);
        raw = raw.get(size + 2..).ok_or("a chunk was cut short")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_answers_parse() {
        let plain = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(
            parse_answer(plain),
            Ok((StatusCode::CREATED, b"{}".to_vec()))
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2;x=y\r\n2]\r\n0\r\n\r\n";
        assert_eq!(
            parse_answer(chunked),
            Ok((StatusCode::OK, b"[1,2]".to_vec()))
        );
        let empty = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            parse_answer(empty),
            Ok((StatusCode::NO_CONTENT, Vec::new()))
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"SSH-2.0-x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nff\r\nab",
        ] {
            assert!(
                parse_answer(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

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
            lines[1].starts_with("7 ") && lines[1].contains("example.com:443"),
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
