//! The crate's error type and the one mapping from failures to SOCKS5 reply codes.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::socks5::Reply;

/// Why a client connection failed.
///
/// [`Error::reply`] is the single place that decides which RFC 1928 reply code a client
/// sees for a failure, so the mapping cannot drift between call sites.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client did not finish greeting, authentication and request in time.
    #[error("client did not finish the SOCKS handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// The client spoke something other than SOCKS version 5.
    #[error("unsupported SOCKS version {0:#04x}")]
    Version(u8),
    /// None of the client's offered authentication methods is acceptable.
    #[error("no acceptable authentication method among {0:?}")]
    NoAcceptableAuth(Vec<u8>),
    /// Username/password authentication (RFC 1929) failed.
    #[error("authentication failed for user {user:?}")]
    AuthFailed {
        /// The username the client sent (never the password).
        user: String,
    },
    /// The request carried a command other than CONNECT (BIND, UDP ASSOCIATE or unknown).
    #[error("SOCKS command {0:#04x} is not supported")]
    UnsupportedCommand(u8),
    /// The request carried an unknown address type.
    #[error("address type not supported")]
    AddressType,
    /// The client broke the protocol in some other way, or its connection failed.
    #[error("SOCKS protocol error: {0}")]
    Protocol(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The name does not exist or has no A/AAAA records.
    #[error("unknown host name {name:?}")]
    UnknownName {
        /// The name as the client sent it.
        name: String,
    },
    /// The resolver could not answer (no reachable name server, timeout).
    #[error("cannot resolve {name:?}: {reason}")]
    Resolve {
        /// The name as the client sent it.
        name: String,
        /// What the resolver reported.
        reason: String,
    },
    /// The destination is refused by configuration: the address and why.
    #[error("connection to {0} not allowed")]
    NotAllowed(String),
    /// Opening, binding or connecting the outbound socket failed.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// The address that was tried.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// The outbound connect did not complete within the connect timeout.
    #[error("connect to {addr} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The address that was tried.
        addr: SocketAddr,
        /// The configured connect timeout.
        timeout: Duration,
    },
    /// The upstream a rule sends the destination through could not connect to it: its
    /// reply, which the client gets as it is.
    #[error("upstream {upstream} could not connect to the destination (reply {:#04x})", reply.as_u8())]
    Upstream {
        /// The upstream's name.
        upstream: mptcp_policy::UpstreamName,
        /// Its reply.
        reply: Reply,
    },
    /// Any other I/O failure.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    /// The SOCKS5 reply code a client gets for this failure.
    ///
    /// | failure | code |
    /// |---|---|
    /// | ECONNREFUSED | 0x05 connection refused |
    /// | ENETUNREACH, ENETDOWN, EAFNOSUPPORT | 0x03 network unreachable |
    /// | EHOSTUNREACH, EHOSTDOWN, unknown name, resolver failure | 0x04 host unreachable |
    /// | EPERM, EACCES (firewall), [`Error::NotAllowed`] | 0x02 not allowed by ruleset |
    /// | ETIMEDOUT, connect timeout | 0x06 TTL expired |
    /// | BIND, UDP ASSOCIATE, unknown command | 0x07 command not supported |
    /// | unknown address type | 0x08 address type not supported |
    /// | anything else | 0x01 general failure |
    ///
    /// Some failures happen before a reply can be sent (timeouts and errors in the greeting
    /// or authentication); for those the code is what a reply would have said, useful for logs.
    #[must_use]
    pub fn reply(&self) -> Reply {
        match self {
            Error::UnsupportedCommand(_) => Reply::CommandNotSupported,
            Error::AddressType => Reply::AddressTypeNotSupported,
            Error::UnknownName { .. } | Error::Resolve { .. } => Reply::HostUnreachable,
            Error::NotAllowed(_) | Error::AuthFailed { .. } | Error::NoAcceptableAuth(_) => {
                Reply::ConnectionNotAllowed
            }
            Error::ConnectTimeout { .. } | Error::HandshakeTimeout(_) => Reply::TtlExpired,
            Error::Connect { source, .. } | Error::Io(source) => io_reply(source),
            Error::Version(_) | Error::Protocol(_) => Reply::GeneralFailure,
            Error::Upstream { reply, .. } => *reply,
        }
    }

    /// Whether the failure is an everyday outcome (clients speaking garbage or going away,
    /// unreachable targets) rather than something an operator should see: local I/O
    /// failures. Decides the log level. Failed logins are reported apart, as a summary
    /// per client, so a guesser cannot write one line per guess.
    pub(crate) fn is_routine(&self) -> bool {
        !matches!(self, Error::Io(_))
    }
}

/// Maps an OS error to a reply code. The raw errno is checked first because several errno
/// values (EHOSTDOWN, ENETDOWN) have no dedicated `io::ErrorKind`.
fn io_reply(err: &io::Error) -> Reply {
    if let Some(code) = err.raw_os_error() {
        match code {
            libc::ECONNREFUSED => return Reply::ConnectionRefused,
            libc::ENETUNREACH | libc::ENETDOWN | libc::EAFNOSUPPORT => {
                return Reply::NetworkUnreachable;
            }
            libc::EHOSTUNREACH | libc::EHOSTDOWN => return Reply::HostUnreachable,
            libc::ETIMEDOUT => return Reply::TtlExpired,
            // A local firewall rejecting the connect shows up as EPERM/EACCES.
            libc::EPERM | libc::EACCES => return Reply::ConnectionNotAllowed,
            _ => {}
        }
    }
    match err.kind() {
        io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
        io::ErrorKind::NetworkUnreachable | io::ErrorKind::NetworkDown => Reply::NetworkUnreachable,
        io::ErrorKind::HostUnreachable => Reply::HostUnreachable,
        io::ErrorKind::TimedOut => Reply::TtlExpired,
        io::ErrorKind::PermissionDenied => Reply::ConnectionNotAllowed,
        _ => Reply::GeneralFailure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    fn connect(source: io::Error) -> Error {
        Error::Connect {
            addr: SocketAddr::from(([192, 0, 2, 1], 80)),
            source,
        }
    }

    #[test]
    fn every_failure_maps_to_its_rfc_1928_code() {
        let addr = SocketAddr::from(([192, 0, 2, 1], 80));
        let table: Vec<(Error, u8)> = vec![
            (connect(os(libc::ECONNREFUSED)), 0x05),
            (connect(os(libc::ENETUNREACH)), 0x03),
            (connect(os(libc::ENETDOWN)), 0x03),
            (connect(os(libc::EAFNOSUPPORT)), 0x03),
            (connect(os(libc::EHOSTUNREACH)), 0x04),
            (connect(os(libc::EHOSTDOWN)), 0x04),
            (connect(os(libc::ETIMEDOUT)), 0x06),
            (connect(os(libc::EPERM)), 0x02),
            (connect(os(libc::EADDRNOTAVAIL)), 0x01),
            (connect(io::ErrorKind::ConnectionRefused.into()), 0x05),
            (connect(io::ErrorKind::NetworkUnreachable.into()), 0x03),
            (connect(io::ErrorKind::HostUnreachable.into()), 0x04),
            (connect(io::ErrorKind::TimedOut.into()), 0x06),
            (connect(io::ErrorKind::Other.into()), 0x01),
            (Error::Io(os(libc::ECONNREFUSED)), 0x05),
            (Error::Io(io::ErrorKind::UnexpectedEof.into()), 0x01),
            (
                Error::ConnectTimeout {
                    addr,
                    timeout: Duration::from_secs(1),
                },
                0x06,
            ),
            (Error::HandshakeTimeout(Duration::from_secs(1)), 0x06),
            (
                Error::UnknownName {
                    name: "nonexistent.invalid".into(),
                },
                0x04,
            ),
            (
                Error::Resolve {
                    name: "example.com".into(),
                    reason: "timed out".into(),
                },
                0x04,
            ),
            (Error::NotAllowed("example.com".into()), 0x02),
            (Error::AuthFailed { user: "u".into() }, 0x02),
            (Error::UnsupportedCommand(0x02), 0x07),
            (Error::UnsupportedCommand(0x09), 0x07),
            (Error::AddressType, 0x08),
            (Error::Version(4), 0x01),
            (Error::Protocol("garbage".into()), 0x01),
        ];
        for (err, code) in table {
            assert_eq!(err.reply().as_u8(), code, "{err}");
        }
    }
}
