//! The daemon's command line (microsocks-compatible flags plus ours), and how it becomes a
//! [`DaemonConfig`]: secrets read from their files, a warning for a secret typed on the
//! command line, the connection cap sized from the file-descriptor limit.
//!
//! `mptcp-socksd`'s `main` and the tests that run the daemon in-process both go through
//! here, so a flag means the same wherever it is given.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, parser::ValueSource};
use mptcp_policy::PmMode;
use mptcp_socks::{Auth, ServerConfig, Upstream, UpstreamError, tls_server_config};

use crate::config_file::{ConfigFile, Settings};
use crate::daemon::{ApiListen, DaemonConfig, DaemonError};
use crate::daemon_support::read_secret_file;
use crate::tls_identity;

/// A SOCKS5 proxy that opens outbound connections as Multipath TCP or plain TCP, per
/// destination, as the rule file says.
#[derive(Debug, Parser)]
#[command(name = "mptcp-socksd", version, after_long_help = FILES_AND_SIGNALS)]
pub struct Args {
    /// Read settings from this TOML file: its keys are the long flag names (`port = 1080`,
    /// `allow = ["192.168.1.20"]`, `quiet = true`). The command line and the environment
    /// override it, key by key. The package's is /etc/mptcp-socks/mptcp-socksd.toml.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the settings in force (command line, environment, config file, defaults) as
    /// TOML, secrets masked, and exit.
    #[arg(long)]
    print_config: bool,
    /// Address to listen on for SOCKS5 clients.
    #[arg(short = 'i', long = "listen", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    listen_ip: IpAddr,
    /// Port to listen on for SOCKS5 clients (0: any free port).
    #[arg(short = 'p', long, default_value_t = 1080)]
    port: u16,
    /// Username clients must authenticate with (needs a password: -P, --password-file or
    /// MPTCP_SOCKS_PASSWORD).
    #[arg(short = 'u', long, requires = "password_source")]
    user: Option<String>,
    /// Password clients must authenticate with (needs -u). On the command line every
    /// local user can read it in /proc/PID/cmdline: prefer --password-file or the
    /// environment.
    #[arg(
        short = 'P',
        long,
        requires = "user",
        group = "password_source",
        env = "MPTCP_SOCKS_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// File whose first line is the password (needs -u).
    #[arg(long, requires = "user", group = "password_source")]
    password_file: Option<PathBuf>,
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
    /// `text` (one line per event, for people) or `json` (one JSON object per line, for
    /// log shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The rule file (seed format; created on the first change through the API).
    #[arg(long, default_value = "mptcp-socks.rules", env = "MPTCP_SOCKS_POLICY")]
    policy: PathBuf,
    /// Address of the REST API: ADDRESS:PORT, unix:PATH (a socket only this user can
    /// reach), or "off".
    #[arg(long, default_value = "127.0.0.1:5000", value_parser = parse_api)]
    api: ApiListen,
    /// Bearer token the REST API requires; mandatory when it listens beyond loopback.
    /// On the command line every local user can read it: prefer --api-token-file or the
    /// environment.
    #[arg(
        long,
        env = "MPTCP_SOCKS_API_TOKEN",
        hide_env_values = true,
        conflicts_with = "api_token_file"
    )]
    api_token: Option<String>,
    /// File whose first line is the REST API's bearer token.
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// Seconds a client may take for greeting, authentication and request.
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// Seconds allowed for each outbound connect attempt.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    /// Who creates subflows: "kernel" (the in-kernel path manager, the same for every
    /// connection) or "userspace" (this daemon, per connection as its rule says; needs
    /// CAP_NET_ADMIN and switches the namespace to net.mptcp.path_manager=userspace
    /// while it runs).
    #[arg(long = "path-manager", default_value = "kernel", value_parser = str::parse::<PmMode>)]
    path_manager: PmMode,
    /// Without -u/-P or -w, serve clients from any address, not only from loopback and
    /// private, link-local and unique-local ranges.
    #[arg(long)]
    allow_public_clients: bool,
    /// Client connections open at once, at most (default: sized from the file-descriptor
    /// limit, two per relayed connection).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Connections open at once from one client address (IPv6: one /64), at most.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_client_connections: u64,
    /// Seconds a relayed connection may stay idle (nothing moving either way) before it
    /// is closed; 0 keeps idle connections open.
    #[arg(long, default_value_t = 3600)]
    idle_timeout: u64,
    /// An upstream SOCKS5 server that rules can send destinations through (via=NAME, or
    /// via=auto:NAME): NAME=socks5://[USER[:PASS]@]HOST:PORT, or socks5+tls://... with
    /// #sha256=HEX to pin its certificate (without a pin it is checked against the system
    /// roots). Repeatable. A password left out of the URL comes from
    /// MPTCP_SOCKS_UPSTREAM_<NAME>_PASSWORD (NAME in capitals, '-' as '_') or
    /// --upstream-password-file.
    #[arg(long = "upstream", value_name = "NAME=URL")]
    upstreams: Vec<String>,
    /// NAME=FILE: upstream NAME's password is the first line of FILE. Repeatable.
    #[arg(long = "upstream-password-file", value_name = "NAME=FILE")]
    upstream_password_files: Vec<String>,
    /// Seconds that what via=auto:NAME learned about a destination (whether it speaks
    /// MPTCP itself) holds before it is checked again.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    auto_ttl: u64,
    /// Do not answer `GET /proxy.pac` on the SOCKS port (the PAC file that points phones
    /// and laptops at this proxy; never answered with -u, whose clients must log in).
    #[arg(long)]
    no_pac: bool,
    /// Serve SOCKS5 inside TLS: for an aggregation server that boxes reach over the
    /// internet (they pin its certificate: socks5+tls://HOST:PORT#sha256=...). Without
    /// --tls-cert/--tls-key a self-signed certificate is made in the state directory on
    /// the first start and kept; its fingerprint is printed at every start.
    #[arg(long)]
    tls: bool,
    /// The certificate chain (PEM, leaf first) for --tls instead of the self-signed one.
    #[arg(long, requires_all = ["tls", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) for --tls-cert; owned by the daemon's user or root, mode 0600.
    #[arg(long, requires_all = ["tls", "tls_cert"])]
    tls_key: Option<PathBuf>,
    /// Where the daemon keeps its state (the self-signed certificate and its key);
    /// default: the rule file's directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// The end of `--help` and of the man page.
const FILES_AND_SIGNALS: &str = "\
Files: /etc/mptcp-socks/mptcp-socksd.toml is the config file of the package's service (a \
config file is read only when --config names it); /var/lib/mptcp-socks/rules is the \
service's rule file (the config file's `policy`).

Signals: SIGHUP re-reads the config file and the rule file: the rules and the log level \
(quiet) change at once, every other changed key is logged as needing a restart. SIGINT \
and SIGTERM stop the daemon; connections in flight get a grace period.";

/// How the daemon writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event, fields as `key=value` with control characters escaped.
    Text,
    /// One JSON object per line.
    Json,
}

pub(crate) fn parse_api(s: &str) -> Result<ApiListen, String> {
    match s {
        "off" | "none" | "" => Ok(ApiListen::Off),
        _ if s.starts_with("unix:") => match &s["unix:".len()..] {
            "" => Err("unix: needs a path, e.g. unix:/run/mptcp-socks/api.sock".to_owned()),
            path => Ok(ApiListen::Unix(PathBuf::from(path))),
        },
        _ => s.parse().map(ApiListen::Tcp).map_err(|_| {
            format!("{s:?} is not ADDRESS:PORT (e.g. 127.0.0.1:5000), unix:PATH or \"off\"")
        }),
    }
}

/// The parsed command line merged with the config file, with where each value came from
/// (to warn about secrets typed on the command line, to print the settings, and to tell
/// at a reload what changed).
#[derive(Debug)]
pub struct Cli {
    args: Args,
    /// The flags holding a secret that were given on the command line itself.
    secrets_on_command_line: Vec<&'static str>,
    /// Every setting in force and where it came from.
    settings: Settings,
    /// A warning about the config file (a secret in a file every user may read).
    config_warning: Option<String>,
}

impl Cli {
    /// Parses the process's arguments and the config file they name; prints the usage or
    /// the refusal and exits on a bad one (or on `--help`, `--version`).
    pub fn parse() -> Cli {
        Cli::try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the first is the program name), and the config file `--config`
    /// names, as the daemon would.
    ///
    /// # Errors
    /// A bad flag or value, with clap's message; a config file that cannot be read, or
    /// whose key or value is refused, with its name, line and key.
    pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut cmd = Args::command();
        // Groups declared on the arguments exist only once built.
        cmd.build();
        // A first look, to find the file and what the command line sets; what the flags
        // require of each other is only checked with the file's keys added.
        let given = cmd
            .clone()
            .ignore_errors(true)
            .try_get_matches_from(&argv)?;
        let Some(path) = given.get_one::<PathBuf>("config").cloned() else {
            let matches = cmd.clone().try_get_matches_from(&argv)?;
            return Cli::from_matches(&cmd, &matches, &BTreeSet::new(), None);
        };
        let file = ConfigFile::load(&path, &cmd)
            .map_err(|e| clap::Error::raw(ErrorKind::InvalidValue, format!("{e}\n")))?;
        let (from_file, ids) = file.args_not_given(&cmd, &given);
        let merged = cmd
            .clone()
            .try_get_matches_from(argv.into_iter().chain(from_file))
            .map_err(|e| {
                let text = e.to_string();
                let text = text.strip_prefix("error: ").unwrap_or(&text);
                clap::Error::raw(
                    e.kind(),
                    format!("with the settings of {}: {text}", path.display()),
                )
            })?;
        let mut cli = Cli::from_matches(&cmd, &merged, &ids, Some(path))?;
        cli.config_warning = file.exposed_secrets_warning();
        Ok(cli)
    }

    fn from_matches(
        cmd: &clap::Command,
        matches: &ArgMatches,
        from_file: &BTreeSet<String>,
        file: Option<PathBuf>,
    ) -> Result<Cli, clap::Error> {
        let secrets_on_command_line = [("-P/--password", "password"), ("--api-token", "api_token")]
            .into_iter()
            .filter(|(_, id)| {
                matches.value_source(id) == Some(ValueSource::CommandLine)
                    && !from_file.contains(*id)
            })
            .map(|(flag, _)| flag)
            .collect();
        Ok(Cli {
            args: Args::from_arg_matches(matches)?,
            secrets_on_command_line,
            settings: Settings::new(cmd, matches, from_file, file),
            config_warning: None,
        })
    }

    /// `--print-config`: print [`Cli::settings`] and exit.
    pub fn print_config(&self) -> bool {
        self.args.print_config
    }

    /// Every setting in force, where it came from; printed by `--print-config`.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// `-q`: log errors only.
    pub fn quiet(&self) -> bool {
        self.args.quiet
    }

    /// `--log-format`.
    pub fn log_format(&self) -> LogFormat {
        self.args.log_format
    }

    /// The daemon's configuration: secrets read from their files (a warning when a secret
    /// was typed on the command line or its file is readable by others), and the
    /// connection cap, unless given, sized from `fd_limit` descriptors.
    ///
    /// # Errors
    /// A secret file that cannot be read or is not one line.
    pub fn into_config(self, fd_limit: u64) -> Result<DaemonConfig, DaemonError> {
        if let Some(warning) = &self.config_warning {
            tracing::warn!("{warning}");
        }
        for flag in &self.secrets_on_command_line {
            tracing::warn!(
                "{flag} on the command line can be read by every local user in /proc/PID/cmdline; \
                 use a file (--password-file, --api-token-file) or the environment \
                 (MPTCP_SOCKS_PASSWORD, MPTCP_SOCKS_API_TOKEN)"
            );
        }
        let mut args = self.args;
        if let Some(path) = &args.password_file {
            args.password = Some(secret_from(path)?);
        }
        if let Some(path) = &args.api_token_file {
            args.api_token = Some(secret_from(path)?);
        }
        let auth = args
            .user
            .zip(args.password)
            .map(|(user, password)| Auth::new(user, password));
        let upstreams = upstreams(&args.upstreams, &args.upstream_password_files)?;
        // With a password everyone may connect; a PAC client could not send it anyway,
        // and scanners need not learn that this is a proxy.
        let pac = !args.no_pac && auth.is_none();
        let identity = if args.tls {
            let identity = match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => tls_identity::load(cert, key),
                _ => {
                    let dir =
                        args.state_dir
                            .clone()
                            .unwrap_or_else(|| match args.policy.parent() {
                                Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
                                _ => PathBuf::from("."),
                            });
                    tls_identity::load_or_create(&dir)
                }
            }
            .map_err(|e| DaemonError::Tls(e.to_string()))?;
            if let tls_identity::Origin::Created { cert, .. } = &identity.origin {
                tracing::info!(cert = %cert.display(), "created a self-signed TLS certificate");
            }
            Some(identity)
        } else {
            None
        };
        let tls_fingerprint = identity.as_ref().map(|identity| identity.fingerprint);
        let tls = identity
            .map(|identity| tls_server_config(identity.certs, identity.key))
            .transpose()
            .map_err(|e| DaemonError::Tls(format!("cannot use the TLS certificate: {e}")))?;
        let max_connections = args.max_connections.map_or_else(
            || connections_for_fd_limit(fd_limit),
            |n| usize::try_from(n).unwrap_or(usize::MAX),
        );
        Ok(DaemonConfig {
            socks_listen: SocketAddr::new(args.listen_ip, args.port),
            api: args.api,
            // An empty token (say, an unset variable expanded in a unit file) is no token.
            api_token: args.api_token.filter(|t| !t.is_empty()),
            rule_file: args.policy,
            path_manager: args.path_manager,
            tls_fingerprint,
            server: ServerConfig {
                auth,
                auth_once: args.auth_once,
                allow_list: args.allow.into_iter().collect(),
                allow_public_clients: args.allow_public_clients,
                max_connections,
                max_connections_per_client: usize::try_from(args.max_client_connections)
                    .unwrap_or(usize::MAX),
                idle_timeout: (args.idle_timeout > 0)
                    .then(|| Duration::from_secs(args.idle_timeout)),
                bind_addr: args.bind,
                handshake_timeout: Duration::from_secs(args.handshake_timeout),
                connect_timeout: Duration::from_secs(args.connect_timeout),
                upstreams,
                auto_ttl: Duration::from_secs(args.auto_ttl),
                pac,
                tls,
                ..ServerConfig::default()
            },
        })
    }
}

/// A secret from a file, with a warning when the file is readable by others.
fn secret_from(path: &Path) -> Result<String, DaemonError> {
    let (secret, warning) = read_secret_file(path).map_err(DaemonError::Secret)?;
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    Ok(secret)
}

/// The `--upstream` URLs parsed (a refusal never repeats the password), each password
/// the URL leaves out taken from its file or the environment.
fn upstreams(urls: &[String], password_files: &[String]) -> Result<Vec<Upstream>, DaemonError> {
    let bad = |message: String| DaemonError::Upstream(message);
    let mut files = Vec::new();
    for entry in password_files {
        let (name, path) = entry.split_once('=').ok_or_else(|| {
            bad(format!(
                "--upstream-password-file {entry:?}: expected NAME=FILE"
            ))
        })?;
        files.push((name.to_owned(), PathBuf::from(path)));
    }
    let mut upstreams = Vec::new();
    for url in urls {
        let mut upstream: Upstream = url
            .parse()
            .map_err(|e: UpstreamError| bad(format!("--upstream: {e}")))?;
        let name = upstream.name.as_str().to_owned();
        if upstream.password_missing() {
            let variable = format!(
                "MPTCP_SOCKS_UPSTREAM_{}_PASSWORD",
                name.to_ascii_uppercase().replace('-', "_")
            );
            let password = match files.iter().find(|(n, _)| *n == name) {
                Some((_, path)) => secret_from(path)?,
                None => std::env::var(&variable).map_err(|_| {
                    bad(format!(
                        "upstream {name} names a user but no password: add it to the URL \
                         (user:pass@), set {variable}, or use --upstream-password-file {name}=FILE"
                    ))
                })?,
            };
            upstream = upstream
                .with_password(&password)
                .map_err(|e| bad(e.to_string()))?;
        } else if upstream.auth.is_some() {
            tracing::warn!(
                upstream = %upstream,
                "the password in --upstream can be read by every local user in \
                 /proc/PID/cmdline; leave it out of the URL and use \
                 --upstream-password-file or the environment"
            );
        }
        upstreams.push(upstream);
    }
    if let Some((name, _)) = files
        .iter()
        .find(|(name, _)| !upstreams.iter().any(|u| u.name.as_str() == name))
    {
        return Err(bad(format!(
            "--upstream-password-file names {name:?}, which no --upstream has"
        )));
    }
    Ok(upstreams)
}

/// File descriptors kept back from client connections: the listeners, the API's
/// connections, the rule file and its watcher, netlink sockets, the log.
const FD_RESERVE: u64 = 256;

/// Client connections that fit in `fd_limit` descriptors: two per relayed connection.
fn connections_for_fd_limit(fd_limit: u64) -> usize {
    usize::try_from((fd_limit.saturating_sub(FD_RESERVE) / 2).max(16)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> DaemonConfig {
        let args = std::iter::once("mptcp-socksd").chain(args.iter().copied());
        Cli::try_parse_from(args)
            .expect("valid flags")
            .into_config(4096)
            .expect("config")
    }

    #[test]
    fn flags_become_the_config() {
        let c = config(&["-i", "127.0.0.1", "-p", "0", "--api", "unix:/tmp/x.sock"]);
        assert_eq!(c.socks_listen, "127.0.0.1:0".parse().expect("addr"));
        assert!(matches!(c.api, ApiListen::Unix(ref p) if p == Path::new("/tmp/x.sock")));
        assert_eq!(c.server.max_connections, (4096 - 256) / 2);
        let c = config(&[
            "--max-connections",
            "7",
            "--idle-timeout",
            "0",
            "--api",
            "off",
        ]);
        assert_eq!(c.server.max_connections, 7);
        assert_eq!(c.server.idle_timeout, None);
        assert!(matches!(c.api, ApiListen::Off));
        for (flag, mode) in [
            ("kernel", PmMode::InKernel),
            ("in-kernel", PmMode::InKernel),
            ("userspace", PmMode::Userspace),
        ] {
            assert_eq!(config(&["--path-manager", flag]).path_manager, mode);
        }
    }

    #[test]
    fn an_empty_token_is_no_token() {
        assert_eq!(config(&["--api-token", ""]).api_token, None);
        assert_eq!(
            config(&["--api-token", "t"]).api_token.as_deref(),
            Some("t")
        );
    }

    #[test]
    fn bad_values_are_refused_by_the_parser() {
        for bad in [
            &["--api", "5000"][..],
            &["--api", "unix:"],
            &["--path-manager", "fullmesh"],
            &["--max-connections", "0"],
            &["-P", "secret"],
        ] {
            let args = std::iter::once("mptcp-socksd").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn upstreams_take_their_password_from_a_file_or_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").expect("write");
        let c = config(&[
            "--upstream",
            "vps=socks5://box@10.0.0.1:1080",
            "--upstream-password-file",
            &format!("vps={}", file.display()),
            "--upstream",
            "open=socks5://10.0.0.2:1080",
        ]);
        let upstreams = &c.server.upstreams;
        assert_eq!(upstreams.len(), 2);
        let auth = upstreams[0].auth.as_ref().expect("auth");
        assert_eq!(*auth, Auth::new("box", "from-file"));
        assert!(upstreams[1].auth.is_none());
    }

    #[test]
    fn bad_upstreams_stop_startup_without_repeating_the_password() {
        for (args, needle) in [
            (
                &["--upstream", "vps=socks5://u:s3cret@h"][..],
                "needs a port",
            ),
            (&["--upstream", "vps=http://h:1"], "expected NAME="),
            (
                &["--upstream", "no-pw-set=socks5://u@h:1"],
                "MPTCP_SOCKS_UPSTREAM_NO_PW_SET_PASSWORD",
            ),
            (
                &["--upstream-password-file", "x=/nonexistent"],
                "which no --upstream has",
            ),
            (&["--upstream-password-file", "x"], "expected NAME=FILE"),
        ] {
            let all = std::iter::once("mptcp-socksd").chain(args.iter().copied());
            let err = Cli::try_parse_from(all)
                .expect("flags parse")
                .into_config(4096)
                .expect_err("refused")
                .to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn the_cap_leaves_room_below_the_fd_limit() {
        assert_eq!(connections_for_fd_limit(1024), 384);
        assert_eq!(connections_for_fd_limit(100), 16);
    }
}
