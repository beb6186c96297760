//! `mptcpctl`'s command line, in the library so that its man page and shell completions
//! are generated from the same definition (`packaging/build-deb`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use mptcp_policy::{Access, PathManager, Scheduler, Via};

use crate::config_file::{ConfigFile, DEFAULT_CONFIG};
use crate::daemon_support::read_secret_file;
use crate::{ApiListen, Args};

/// Where `mptcpctl` reaches the API when neither a flag nor the config file says.
pub const DEFAULT_API: &str = "http://127.0.0.1:5000";

/// The end of `mptcpctl --help` and of its man page.
const CTL_FILES: &str = "\
Files: /etc/mptcp-socks/mptcp-socksd.toml, the daemon's config file: when it exists (or \
--config names another), its `api` and `api-token` (or `api-token-file`) are used unless \
--api or --token (or their environment variables) are given.";

/// Manage the per-destination MPTCP policy of a running mptcp-socksd.
#[derive(Debug, Parser)]
#[command(name = "mptcpctl", version, after_long_help = CTL_FILES)]
pub struct CtlArgs {
    /// Base URL of the daemon's REST API, or unix:PATH for its Unix socket [default: the
    /// config file's `api`, else http://127.0.0.1:5000].
    #[arg(long, env = "MPTCP_SOCKS_API", global = true)]
    pub api: Option<String>,
    /// Bearer token, needed when the API listens on a non-loopback address [default: the
    /// config file's `api-token` or `api-token-file`].
    #[arg(
        long,
        env = "MPTCP_SOCKS_API_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table or message.
    #[arg(long, global = true)]
    pub json: bool,
    /// The daemon's config file, to take the API's address and token from [default:
    /// /etc/mptcp-socks/mptcp-socksd.toml when it exists].
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `mptcpctl`'s commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// List, show, add or remove rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Is the daemon up, how many rules, did the last reload of the rule file fail, are
    /// the upstreams up? Exits 4 while the daemon is degraded.
    Health,
    /// What this host offers: kernel MPTCP, path-manager mode, schedulers, local addresses.
    #[command(alias = "caps")]
    Capabilities,
    /// The SHA-256 fingerprint of the daemon's TLS certificate, what boxes pin as
    /// #sha256=; read from the file, no daemon needed.
    TlsFingerprint {
        /// The certificate (PEM), or the daemon's state directory (that of its rule file).
        #[arg(default_value = ".")]
        path: std::path::PathBuf,
    },
    /// The live proxied connections, with their subflows and each one's share of traffic.
    #[command(alias = "conns")]
    Connections,
    /// Checks this host (MPTCP, path manager, endpoints, limits, routing per uplink) and
    /// the daemon if one answers; prints each finding and the command that fixes it.
    /// Exits 4 when a finding prevents or degrades aggregation. Run it as root.
    Doctor {
        /// Also open an MPTCP connection to HOST:PORT (it sends an HTTP HEAD request, so
        /// that data flows) and report its subflows per uplink.
        #[arg(long, value_name = "HOST:PORT")]
        probe: Option<String>,
    },
    /// Makes this host pass the doctor for these uplinks (IFACE or IFACE=GATEWAY): a
    /// routing table and source rule per uplink with its default route, a subflow
    /// endpoint each, and limits. Idempotent; run it as root.
    Setup {
        /// The uplinks, e.g. `eth0 wwan0=10.64.0.1` (gateway: from the interface's
        /// default route unless given).
        #[arg(value_name = "IFACE[=GATEWAY]", required_unless_present = "remove")]
        uplinks: Vec<String>,
        /// Print the equivalent `ip` commands and change nothing.
        #[arg(long, conflicts_with = "remove")]
        dry_run: bool,
        /// Undo exactly what earlier setup runs made.
        #[arg(long)]
        remove: bool,
    },
    /// What via=auto:NAME rules learned: which destinations speak MPTCP (they go direct).
    Learned {
        /// Forget it all, so the next connections check again.
        #[arg(long)]
        forget: bool,
    },
}

/// `mptcpctl rules ...`.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
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
        /// direct, the NAME of an upstream, or auto:NAME (through NAME until the
        /// destination is found to speak MPTCP).
        #[arg(long, default_value_t = Via::Direct, value_parser = parse_via)]
        via: Via,
    },
    /// Remove the rule for a destination.
    #[command(alias = "remove", alias = "del")]
    Rm {
        /// The destination, as listed.
        destination: String,
    },
}

/// `--mptcp on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Multipath TCP.
    On,
    /// Plain TCP.
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

fn parse_via(s: &str) -> Result<Via, String> {
    s.parse().map_err(|e: mptcp_policy::Error| e.to_string())
}

fn names<T: std::fmt::Display>(all: &[T]) -> String {
    all.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where `mptcpctl` reaches the API, and with which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTarget {
    /// `http://HOST:PORT` or `unix:PATH`.
    pub api: String,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// What the user should know (a default config file that could not be used).
    pub notes: Vec<String>,
}

impl CtlArgs {
    /// The API's address and token: from the flags or the environment, else from the
    /// daemon's config file (`--config`, or [`DEFAULT_CONFIG`] when it exists), else the
    /// defaults.
    ///
    /// # Errors
    /// The file named by `--config` cannot be read or is refused, or the token file it
    /// names cannot be read. Problems with the default file only become notes.
    pub fn api_target(&self) -> Result<ApiTarget, String> {
        let explicit = self.config.is_some();
        let path = self.config.clone().or_else(|| {
            Path::new(DEFAULT_CONFIG)
                .exists()
                .then(|| DEFAULT_CONFIG.into())
        });
        let mut target = ApiTarget {
            api: self.api.clone().unwrap_or_else(|| DEFAULT_API.to_owned()),
            token: self.token.clone(),
            notes: Vec::new(),
        };
        let Some(path) = path.filter(|_| self.api.is_none() || self.token.is_none()) else {
            return Ok(target);
        };
        match from_config_file(&path) {
            Ok((api, token)) => {
                if self.api.is_none()
                    && let Some(api) = api
                {
                    target.api = api;
                }
                if self.token.is_none() {
                    target.token = token;
                }
            }
            Err(e) if explicit => return Err(e),
            Err(e) => target
                .notes
                .push(format!("{e} (ignored; --config names another)")),
        }
        Ok(target)
    }
}

/// The API address (as `mptcpctl` reaches it) and the token in the daemon's config file.
fn from_config_file(path: &Path) -> Result<(Option<String>, Option<String>), String> {
    let file = ConfigFile::load(path, &Args::command()).map_err(|e| e.to_string())?;
    let api = match file.values("api").and_then(<[String]>::first) {
        None => None,
        Some(api) => match crate::cli::parse_api(api)? {
            ApiListen::Off => None,
            ApiListen::Unix(socket) => Some(format!("unix:{}", socket.display())),
            ApiListen::Tcp(addr) => Some(format!("http://{}", reachable(addr))),
        },
    };
    let token = match (
        file.values("api-token").and_then(<[String]>::first),
        file.values("api-token-file").and_then(<[String]>::first),
    ) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(token_file)) => Some(
            read_secret_file(Path::new(token_file))
                .map_err(|e| format!("the api-token-file of {}: {e}", path.display()))?
                .0,
        ),
        (None, None) => None,
    };
    Ok((api, token.filter(|t| !t.is_empty())))
}

/// Where a client on this host reaches a listener bound to `addr`: the loopback address
/// of its family for a wildcard.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}
