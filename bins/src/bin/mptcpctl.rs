//! `mptcpctl`: the operator's view of a running `mptcp-socksd`, over its REST API.
//!
//! Exit codes: 0 done, 1 the API refused (its message is printed), 2 usage error,
//! 3 the API cannot be reached.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use mptcp_policy::{PathManager, Scheduler};
use mptcp_socks_bins::{Health, RuleView, rule_path};
use serde_json::{Value, json};
use ureq::http::{Response, StatusCode};

/// Manage the per-destination MPTCP policy of a running mptcp-socksd.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Base URL of the daemon's REST API.
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
                print!("{}", table(&rules));
            }
            Ok(())
        }
        Command::Rules(RulesCommand::Show { destination }) => {
            let body = client.expect_ok(client.get(&rule_path(destination))?)?;
            if cli.json {
                return print_json(&body);
            }
            let rule: RuleView = from_value(body)?;
            print!("{}", table(std::slice::from_ref(&rule)));
            Ok(())
        }
        Command::Rules(RulesCommand::Add {
            destination,
            mptcp,
            scheduler,
            path_manager,
        }) => {
            let request = json!({
                "ip": destination,
                "enable": if *mptcp == OnOff::On { "1" } else { "0" },
                "scheduler": scheduler.as_str(),
                "path_manager": path_manager.as_str(),
            });
            let response = client.post("/rules", &request)?;
            let created = response.status() == StatusCode::CREATED;
            let body = client.expect_ok(response)?;
            if cli.json {
                return print_json(&body);
            }
            let rule: RuleView = from_value(body)?;
            println!(
                "{} rule for {}: MPTCP {}, scheduler {}, path manager {}",
                if created { "added" } else { "replaced" },
                rule.ip,
                on_off(rule.enable),
                rule.scheduler,
                rule.path_manager
            );
            Ok(())
        }
        Command::Rules(RulesCommand::Rm { destination }) => {
            client.expect_ok(client.delete(&rule_path(destination))?)?;
            if !cli.json {
                println!("removed rule for {destination}");
            }
            Ok(())
        }
    }
}

fn on_off(enabled: bool) -> &'static str {
    if enabled { "on" } else { "off" }
}

fn table(rules: &[RuleView]) -> String {
    let header = ["DESTINATION", "MPTCP", "SCHEDULER", "PATH MANAGER"];
    let rows: Vec<[&str; 4]> = rules
        .iter()
        .map(|r| {
            [
                r.ip.as_str(),
                on_off(r.enable),
                r.scheduler.as_str(),
                r.path_manager.as_str(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
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

struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(cli: &Cli) -> Self {
        let agent = ureq::Agent::config_builder()
            // Error statuses carry the server's message: read them, do not turn them into
            // a bare "status 422".
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(30)))
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
            agent,
            base,
            token: cli.token.clone().filter(|t| !t.is_empty()),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    fn get(&self, path: &str) -> Result<Response<ureq::Body>, Failure> {
        let mut request = self.agent.get(self.url(path));
        if let Some(auth) = self.auth() {
            request = request.header("Authorization", auth);
        }
        request.call().map_err(|err| self.transport(err))
    }

    fn delete(&self, path: &str) -> Result<Response<ureq::Body>, Failure> {
        let mut request = self.agent.delete(self.url(path));
        if let Some(auth) = self.auth() {
            request = request.header("Authorization", auth);
        }
        request.call().map_err(|err| self.transport(err))
    }

    fn post(&self, path: &str, body: &Value) -> Result<Response<ureq::Body>, Failure> {
        let mut request = self.agent.post(self.url(path));
        if let Some(auth) = self.auth() {
            request = request.header("Authorization", auth);
        }
        request.send_json(body).map_err(|err| self.transport(err))
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
    fn expect_ok(&self, mut response: Response<ureq::Body>) -> Result<Value, Failure> {
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|err| Failure::Api(format!("cannot read the answer: {err}")))?;
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
