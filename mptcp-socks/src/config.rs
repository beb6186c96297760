//! Server configuration, with microsocks-compatible authentication semantics.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;

use crate::upstream::Upstream;

/// Username and password a client must present (RFC 1929).
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    username: String,
    password: String,
}

impl Auth {
    /// Credentials clients must send with the username/password method.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The expected username.
    #[must_use]
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password, for the client side (an upstream's credentials).
    pub(crate) fn password(&self) -> &str {
        &self.password
    }

    /// Checks both fields in full (no early exit on the first differing byte), so the time
    /// taken tells a remote guesser little about how much of the password was right.
    pub(crate) fn matches(&self, username: &[u8], password: &[u8]) -> bool {
        let user_ok = self.username.as_bytes().ct_eq(username);
        let pass_ok = self.password.as_bytes().ct_eq(password);
        (user_ok & pass_ok).into()
    }
}

// The password must never end up in a log line.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How the server treats clients and opens outbound connections: settings only. The
/// [`Server`](crate::Server) built from them hands out what it shares at run time (its
/// counters and its live connections).
///
/// Build it from [`ServerConfig::default`] and set the fields you need:
///
/// ```
/// use std::time::Duration;
/// use mptcp_socks::{Auth, ServerConfig};
///
/// let config = ServerConfig {
///     auth: Some(Auth::new("user", "secret")),
///     auth_once: true,
///     connect_timeout: Duration::from_secs(5),
///     ..ServerConfig::default()
/// };
/// assert!(config.allow_list.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Credentials required from clients; `None` lets everyone in without authentication.
    pub auth: Option<Auth>,
    /// Once a client IP has authenticated with username/password, let it use the proxy
    /// without authentication from then on (microsocks `-1`), for clients that cannot be
    /// configured with credentials but can be made to authenticate once.
    pub auth_once: bool,
    /// With [`ServerConfig::auth`], client IPs that may skip authentication (microsocks
    /// `-w`); without it, the only client IPs let in.
    pub allow_list: HashSet<IpAddr>,
    /// Without `auth` and `allow_list`, only clients from loopback, private (RFC 1918),
    /// link-local and unique-local (fc00::/7) addresses are let in, so a box whose uplink
    /// has a public address is not an open proxy for the internet; `true` lets everyone
    /// in. With `auth` or `allow_list` set it has no effect.
    pub allow_public_clients: bool,
    /// Client connections open at once, at most (handshaking or relaying; each relayed
    /// one holds two file descriptors). Beyond it new clients are closed at once.
    pub max_connections: usize,
    /// Connections open at once from one client address (IPv6: one /64), at most, so one
    /// client cannot take the whole of [`ServerConfig::max_connections`].
    pub max_connections_per_client: usize,
    /// A relayed connection on which nothing moved either way for this long is closed;
    /// `None` keeps idle connections open forever.
    pub idle_timeout: Option<Duration>,
    /// Addresses the proxy never connects to, whatever the rules say: its own listeners
    /// (the SOCKS port itself is added by [`serve`](crate::serve)), so a client cannot
    /// nest CONNECTs to multiply its connections or reach the REST API through the
    /// proxy. An unspecified address (`0.0.0.0:5000`) stands for that port on every
    /// address of the host.
    pub never_connect: Vec<SocketAddr>,
    /// Local address to bind outbound sockets to before connecting (microsocks `-b`), to
    /// pick the uplink. Used only for destinations of the same address family.
    pub bind_addr: Option<IpAddr>,
    /// Time a client gets for greeting, authentication and request together; a client that
    /// stalls longer is dropped so it cannot hold a task and a socket forever.
    pub handshake_timeout: Duration,
    /// Time allowed for each outbound connect attempt and for resolving a name.
    pub connect_timeout: Duration,
    /// How many resolved addresses are tried, alternating address families, before the
    /// request fails; bounds the time a request to a dead host can take.
    pub max_connect_attempts: usize,
    /// How long in-flight connections may continue after shutdown was requested.
    pub shutdown_grace: Duration,
    /// Upstream SOCKS5 servers that rules send destinations through (`via=NAME`).
    pub upstreams: Vec<Upstream>,
    /// How long what `via=auto:NAME` learned about a destination holds.
    pub auto_ttl: Duration,
    /// Answer `GET /proxy.pac` (and `/wpad.dat`) on the SOCKS port with a PAC file that
    /// points clients at the address they reached, so a phone on the LAN can be set up
    /// with one URL. Only for clients the server admits; never on a TLS listener.
    pub pac: bool,
    /// Serve SOCKS5 inside TLS with this configuration ([`tls_server_config`]).
    ///
    /// [`tls_server_config`]: crate::tls_server_config
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            auth: None,
            auth_once: false,
            allow_list: HashSet::new(),
            allow_public_clients: false,
            // Two descriptors per relayed connection within the common default soft
            // limit of 1024, leaving room for the rest of the process.
            max_connections: 480,
            // A browser opens at most 256 sockets in all (Chromium's pool limit).
            max_connections_per_client: 256,
            // Long enough for IMAP IDLE (29 minutes) and an idle SSH session's hour.
            idle_timeout: Some(Duration::from_secs(3600)),
            never_connect: Vec::new(),
            bind_addr: None,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_connect_attempts: 4,
            shutdown_grace: Duration::from_secs(5),
            upstreams: Vec::new(),
            auto_ttl: Duration::from_secs(3600),
            pac: false,
            tls: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_must_match_exactly() {
        let auth = Auth::new("user", "secret");
        let table = [
            ("user", "secret", true),
            ("user", "secret2", false),
            ("user", "secre", false),
            ("user", "", false),
            ("User", "secret", false),
            ("", "secret", false),
        ];
        for (user, pass, ok) in table {
            assert_eq!(
                auth.matches(user.as_bytes(), pass.as_bytes()),
                ok,
                "{user:?} {pass:?}"
            );
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", Auth::new("user", "secret"));
        assert!(!shown.contains("secret"), "{shown}");
    }
}
