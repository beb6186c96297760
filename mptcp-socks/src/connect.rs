//! The connect step: policy lookup, outbound socket, connect with timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mptcp_policy::{Destination, Opened, Policy, Settings, Transport};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::ServerConfig;
use crate::error::Error;
use crate::guard::HostAddresses;
use crate::resolve::{NameResolver, interleave};
use crate::socks5::{Reply, TargetAddr};

/// An established outbound connection and how it came about, for the log line.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) stream: TcpStream,
    pub(crate) addr: SocketAddr,
    /// Destination of the matched rule, `None` for the built-in default.
    pub(crate) rule: Option<Destination>,
    pub(crate) settings: Settings,
    pub(crate) transport: Transport,
    /// The MPTCP connection token, when MPTCP.
    pub(crate) token: Option<u32>,
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

/// Connects to `target`, trying its addresses in turn. Each address is checked first,
/// as the socket would connect to it: the proxy's own listeners (`never_connect`) are
/// never reached, and
/// the policy's access rules decide the rest ([`Policy::check_access`], with the host's
/// own and link-local addresses protected).
///
/// # Errors
///
/// The resolver's error, or the most telling of the connect errors: a refusal or timeout
/// from one family says more than "network unreachable" from a family the host lacks.
/// [`Error::NotAllowed`] when access was refused.
pub(crate) async fn connect(
    target: &Target,
    policy: &Policy,
    resolver: &NameResolver,
    config: &ServerConfig,
    never_connect: &[SocketAddr],
    host: &HostAddresses,
) -> Result<Outbound, Error> {
    let addrs = match (target.ip, &target.name) {
        (Some(ip), _) => vec![ip],
        (None, Some(name)) => interleave(
            resolver.lookup(name, config.connect_timeout).await?,
            config.max_connect_attempts.max(1),
        ),
        (None, None) => return Err(Error::AddressType),
    };
    let mut best: Option<Error> = None;
    for ip in addrs {
        let addr = SocketAddr::new(ip, target.port);
        let access = if is_own_listener(addr, never_connect, host) {
            Err("it is one of the proxy's own listeners".to_owned())
        } else {
            policy
                .check_access(target.name.as_deref(), ip, host.is_protected(ip))
                .map_err(|refusal| refusal.to_string())
        };
        if let Err(reason) = access {
            tracing::debug!(%addr, reason, "destination refused");
            if best.is_none() {
                best = Some(Error::NotAllowed(format!("{addr} ({reason})")));
            }
            continue;
        }
        let matched = policy.lookup(target.name.as_deref(), ip);
        match attempt(
            addr,
            &matched.settings,
            config.bind_addr,
            config.connect_timeout,
        )
        .await
        {
            Ok((stream, opened)) => {
                let transport = mptcp_policy::transport(&stream, opened);
                let token = token(&stream, transport);
                return Ok(Outbound {
                    stream,
                    addr,
                    rule: matched.rule.map(|rule| rule.destination.clone()),
                    settings: matched.settings,
                    transport,
                    token,
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

/// Whether `addr` may reach one of `listeners`: any address of this host (loopback,
/// unspecified, which Linux connects to loopback, or an interface address) on a
/// listener's port counts, so no rule can open a way to the proxy's own sockets.
fn is_own_listener(addr: SocketAddr, listeners: &[SocketAddr], host: &HostAddresses) -> bool {
    listeners
        .iter()
        .any(|listener| listener.port() == addr.port())
        && host.is_protected(addr.ip())
}

async fn attempt(
    addr: SocketAddr,
    settings: &Settings,
    bind_addr: Option<IpAddr>,
    timeout: Duration,
) -> Result<(TcpStream, Opened), Error> {
    let failed = |source| Error::Connect { addr, source };
    let (socket, opened) = mptcp_policy::open_outbound(addr, settings).map_err(failed)?;
    socket.set_nonblocking(true).map_err(failed)?;
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

fn token(stream: &TcpStream, transport: Transport) -> Option<u32> {
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
