//! The connect step: policy lookup, outbound socket, connect with timeout.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mptcp_policy::{
    Access, Destination, Match, Opened, Policy, Refusal, Settings, Transport, UpstreamName, Via,
};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::ServerConfig;
use crate::error::Error;
use crate::guard::HostAddresses;
use crate::learned::Learned;
use crate::relay::{OutboundIo, SharedStream};
use crate::resolve::{NameResolver, interleave};
use crate::socks5::{Reply, TargetAddr};
use crate::upstream::{Link, Upstreams, ViaError};

/// An established outbound connection and how it came about, for the log line.
#[derive(Debug)]
pub(crate) struct Outbound {
    /// What the relay reads and writes: the socket, or TLS over it.
    pub(crate) io: OutboundIo,
    /// The socket, shared with the registry (subflows).
    pub(crate) socket: Arc<TcpStream>,
    /// Where the socket is connected: the destination, or the upstream.
    pub(crate) addr: SocketAddr,
    /// Destination of the matched rule, `None` for the built-in default.
    pub(crate) rule: Option<Destination>,
    pub(crate) settings: Settings,
    pub(crate) transport: Transport,
    /// The MPTCP connection token, when MPTCP.
    pub(crate) token: Option<u32>,
    /// The upstream it goes through; `None`: direct.
    pub(crate) via: Option<UpstreamName>,
    /// Why it went direct although its rule names an upstream.
    pub(crate) why_direct: Option<String>,
}

/// The request's target as the client named it.
#[derive(Debug)]
pub(crate) struct Target {
    /// Lowercase, without trailing dot: the form the policy's name rules use.
    pub(crate) name: Option<String>,
    pub(crate) port: u16,
    pub(crate) ip: Option<IpAddr>,
}

impl From<&TargetAddr> for Target {
    fn from(target: &TargetAddr) -> Self {
        match target {
            TargetAddr::Ip(addr) => Target {
                name: None,
                port: addr.port(),
                ip: Some(addr.ip()),
            },
            // Some clients send address literals as names; a name rule could never match them.
            TargetAddr::Domain(name, port) => match name.parse::<IpAddr>() {
                Ok(ip) => Target {
                    name: None,
                    port: *port,
                    ip: Some(ip),
                },
                Err(_) => Target {
                    name: Some(name.trim_end_matches('.').to_ascii_lowercase()),
                    port: *port,
                    ip: None,
                },
            },
        }
    }
}

/// What the connect step needs from the server.
#[derive(Debug)]
pub(crate) struct Connector<'a> {
    pub(crate) policy: &'a Policy,
    pub(crate) resolver: &'a NameResolver,
    pub(crate) config: &'a ServerConfig,
    /// The proxy's own listeners, never connected to.
    pub(crate) never_connect: &'a [SocketAddr],
    pub(crate) host: &'a HostAddresses,
    pub(crate) upstreams: &'a Upstreams,
    pub(crate) learned: &'a Arc<Learned>,
}

/// Where the rule sends a connection.
enum Route<'a> {
    Direct(Option<String>),
    Via(&'a Arc<Link>),
}

impl Connector<'_> {
    /// Connects to `target` (`request` as the client sent it), direct or through the
    /// upstream its rule names.
    ///
    /// A name whose rule does not depend on the address (a name rule, or a policy with
    /// no address rules) and that goes through an upstream is handed to the upstream
    /// unresolved, so the upstream resolves it near the site; not while an address or
    /// prefix rule says `access=deny`, which must see the address. Otherwise the name is
    /// resolved and its addresses tried in turn, each checked first as the socket would
    /// connect to it: the proxy's own listeners are never reached, and the policy's
    /// access rules decide the rest ([`Policy::check_access`], with the host's own and
    /// link-local addresses protected). An upstream that fails sends the connection
    /// direct.
    ///
    /// # Errors
    ///
    /// The resolver's error, the upstream's reply when it could not reach the target, or
    /// the most telling of the connect errors: a refusal or timeout from one family says
    /// more than "network unreachable" from a family the host lacks.
    /// [`Error::NotAllowed`] when access was refused.
    pub(crate) async fn connect(
        &self,
        target: &Target,
        request: &TargetAddr,
    ) -> Result<Outbound, Error> {
        let mut why_direct = None;
        // Not while an address rule blocks something: that block must see the address.
        if let (None, Some(name)) = (target.ip, &target.name)
            && !self.policy.denies_addresses()
            && let Some(matched) = self.policy.lookup_name(name)
            && let Some(Via::Upstream(upstream)) = matched.rule.map(|rule| &rule.via)
        {
            if let Some(rule) = matched.rule
                && rule.access == Access::Deny
            {
                let reason = Refusal::Denied(rule.destination.clone());
                return Err(Error::NotAllowed(format!("{name} ({reason})")));
            }
            match self.route_upstream(upstream) {
                Route::Via(link) => match self.via(link, &matched, request, None).await {
                    Ok(outbound) => return Ok(outbound),
                    Err(Ok(err)) => return Err(err),
                    Err(Err(reason)) => why_direct = Some(reason),
                },
                Route::Direct(reason) => why_direct = reason,
            }
        }
        let addrs = match (target.ip, &target.name) {
            (Some(ip), _) => vec![ip],
            (None, Some(name)) => interleave(
                self.resolver
                    .lookup(name, self.config.connect_timeout)
                    .await?,
                self.config.max_connect_attempts.max(1),
            ),
            (None, None) => return Err(Error::AddressType),
        };
        let mut best: Option<Error> = None;
        for ip in addrs {
            let addr = SocketAddr::new(ip, target.port);
            if let Err(reason) = self.check_access(target.name.as_deref(), addr) {
                tracing::debug!(%addr, reason, "destination refused");
                if best.is_none() {
                    best = Some(Error::NotAllowed(format!("{addr} ({reason})")));
                }
                continue;
            }
            let matched = self.policy.lookup(target.name.as_deref(), ip);
            // Once an upstream failed for this connection, the rest goes direct.
            let route = match why_direct {
                Some(_) => Route::Direct(why_direct.clone()),
                None => self.route(&matched, addr),
            };
            let why = match route {
                Route::Via(link) => match self.via(link, &matched, request, Some(addr)).await {
                    Ok(outbound) => return Ok(outbound),
                    Err(Ok(err)) => return Err(err),
                    Err(Err(reason)) => {
                        why_direct = Some(reason.clone());
                        Some(reason)
                    }
                },
                Route::Direct(why) => why,
            };
            let settings = direct_settings(&matched);
            match attempt(
                addr,
                &settings,
                self.config.bind_addr,
                self.config.connect_timeout,
            )
            .await
            {
                Ok((stream, opened)) => {
                    let transport = mptcp_policy::transport(&stream, opened);
                    let token = token(&stream, transport);
                    let socket = Arc::new(stream);
                    return Ok(Outbound {
                        io: OutboundIo::Plain(SharedStream(Arc::clone(&socket))),
                        socket,
                        addr,
                        rule: matched.rule.map(|rule| rule.destination.clone()),
                        settings,
                        transport,
                        token,
                        via: None,
                        why_direct: why,
                    });
                }
                Err(err) => {
                    tracing::debug!(%addr, error = %err, "outbound attempt failed");
                    let replace = match &best {
                        None => true,
                        Some(previous) => matches!(
                            previous.reply(),
                            Reply::NetworkUnreachable | Reply::ConnectionNotAllowed
                        ),
                    };
                    if replace {
                        best = Some(err);
                    }
                }
            }
        }
        Err(best.unwrap_or_else(|| Error::UnknownName {
            name: target.name.clone().unwrap_or_default(),
        }))
    }

    fn check_access(&self, name: Option<&str>, addr: SocketAddr) -> Result<(), String> {
        if is_own_listener(addr, self.never_connect, self.host) {
            return Err("it is one of the proxy's own listeners".to_owned());
        }
        self.policy
            .check_access(name, addr.ip(), self.host.is_protected(addr.ip()))
            .map_err(|refusal| refusal.to_string())
    }

    /// The route for a rule naming `upstream`: through it, or direct (and why) when it is
    /// not configured or is backing off after failures.
    fn route_upstream(&self, upstream: &UpstreamName) -> Route<'_> {
        match self.upstreams.get(upstream) {
            None => Route::Direct(Some(format!("no upstream named {upstream} is configured"))),
            Some(link) if !link.available() => {
                Route::Direct(Some(format!("upstream {upstream} failed recently")))
            }
            Some(link) => Route::Via(link),
        }
    }

    /// The route the matched rule gives `addr`; `auto:NAME` consults (and starts) what is
    /// learned about the address.
    fn route(&self, matched: &Match<'_>, addr: SocketAddr) -> Route<'_> {
        match matched.rule.map(|rule| &rule.via) {
            None | Some(Via::Direct) => Route::Direct(None),
            Some(Via::Upstream(upstream)) => self.route_upstream(upstream),
            Some(Via::Auto(upstream)) => match self.learned.verdict(addr) {
                Some(true) => Route::Direct(None),
                Some(false) => self.route_upstream(upstream),
                None => {
                    self.learned
                        .probe(addr, matched.settings, self.config.connect_timeout);
                    self.route_upstream(upstream)
                }
            },
        }
    }

    /// Through `link`. `Err(Ok(_))`: the upstream's reply for the target, final;
    /// `Err(Err(reason))`: the upstream failed, go direct.
    async fn via(
        &self,
        link: &Link,
        matched: &Match<'_>,
        request: &TargetAddr,
        addr: Option<SocketAddr>,
    ) -> Result<Outbound, Result<Error, String>> {
        // A name goes as the client sent it, so the upstream resolves it near the site.
        match link
            .connect(request, &matched.settings, self.config, self.resolver)
            .await
        {
            Ok(chained) => {
                tracing::debug!(upstream = %link.name(), resumed = chained.resumed, "through the upstream");
                Ok(Outbound {
                    io: chained.io,
                    socket: chained.socket,
                    addr: chained.addr,
                    rule: matched.rule.map(|rule| rule.destination.clone()),
                    settings: matched.settings,
                    transport: chained.transport,
                    token: chained.token,
                    via: Some(link.name().clone()),
                    why_direct: None,
                })
            }
            Err(ViaError::Target(reply)) => Err(Ok(Error::Upstream {
                upstream: link.name().clone(),
                reply,
            })),
            Err(ViaError::Upstream(failure)) => {
                tracing::debug!(upstream = %link.name(), ?addr, error = %failure.message, "upstream failed; going direct");
                Err(Err(format!(
                    "upstream {} failed ({}): {}",
                    link.name(),
                    failure.kind.as_str(),
                    failure.message
                )))
            }
        }
    }
}

/// The settings of a direct connection: the rule's, with MPTCP on for an `auto:` rule,
/// whose point is MPTCP straight to a site that speaks it.
fn direct_settings(matched: &Match<'_>) -> Settings {
    match matched.rule.map(|rule| &rule.via) {
        Some(Via::Auto(_)) => Settings {
            mptcp: true,
            ..matched.settings
        },
        _ => matched.settings,
    }
}

/// Whether `addr` may reach one of `listeners`: any address of this host (loopback,
/// unspecified, which Linux connects to loopback, or an interface address) on a
/// listener's port counts, so no rule can open a way to the proxy's own sockets.
fn is_own_listener(addr: SocketAddr, listeners: &[SocketAddr], host: &HostAddresses) -> bool {
    listeners
        .iter()
        .any(|listener| listener.port() == addr.port())
        && host.is_protected(addr.ip())
}

/// Opens a socket with `settings` and connects it to `addr` within `timeout`.
pub(crate) async fn attempt(
    addr: SocketAddr,
    settings: &Settings,
    bind_addr: Option<IpAddr>,
    timeout: Duration,
) -> Result<(TcpStream, Opened), Error> {
    let failed = |source| Error::Connect { addr, source };
    let (socket, opened) = mptcp_policy::open_outbound(addr, settings).map_err(failed)?;
    if let Some(ip) = bind_addr
        && ip.is_ipv4() == addr.is_ipv4()
    {
        socket
            .bind(&SocketAddr::new(ip, 0).into())
            .map_err(failed)?;
    }
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    let stream = match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(Error::Connect { addr, source }),
        Err(_) => return Err(Error::ConnectTimeout { addr, timeout }),
    };
    // Interactive traffic (SSH, TLS handshakes) suffers from Nagle on a relay. Some older
    // kernels reject TCP_NODELAY on MPTCP sockets; the connection still works without it.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%addr, error = %err, "cannot set TCP_NODELAY on the outbound socket");
    }
    Ok((stream, opened))
}

/// The MPTCP connection token of an MPTCP socket.
pub(crate) fn token(stream: &TcpStream, transport: Transport) -> Option<u32> {
    if !matches!(transport, Transport::Mptcp) {
        return None;
    }
    match mptcp_policy::mptcp_info(stream) {
        Ok(Some(info)) => Some(info.token),
        Ok(None) => None,
        Err(err) => {
            tracing::debug!(error = %err, "cannot read MPTCP_INFO");
            None
        }
    }
}
