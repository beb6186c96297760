//! The SOCKS5 wire protocol, server side: RFC 1928 and its username/password method
//! (RFC 1929).
//!
//! Written here rather than taken from fast-socks5, whose server answers a malformed
//! address with its own reply (0x05 for a name that is not UTF-8) before the caller can
//! choose one, does not check the RFC 1929 version byte, and logs the password bytes at
//! debug level. Every read here is exact; the server reads through a small buffer (and
//! passes on what follows the request), so a client that pipelines greeting,
//! authentication, request and even its first data in one segment is served as one that
//! waits for each answer, in as few system calls as it took.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::Error;

const VERSION: u8 = 0x05;
/// The version byte of the RFC 1929 sub-negotiation (not the SOCKS version).
const AUTH_VERSION: u8 = 0x01;

/// Authentication methods (RFC 1928 section 3).
pub(crate) const NO_AUTH: u8 = 0x00;
pub(crate) const PASSWORD: u8 = 0x02;
pub(crate) const NO_ACCEPTABLE_METHOD: u8 = 0xff;

const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// A SOCKS5 reply code (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reply {
    /// 0x00 succeeded.
    Succeeded,
    /// 0x01 general SOCKS server failure.
    GeneralFailure,
    /// 0x02 connection not allowed by ruleset.
    ConnectionNotAllowed,
    /// 0x03 network unreachable.
    NetworkUnreachable,
    /// 0x04 host unreachable.
    HostUnreachable,
    /// 0x05 connection refused.
    ConnectionRefused,
    /// 0x06 TTL expired (used for timeouts).
    TtlExpired,
    /// 0x07 command not supported.
    CommandNotSupported,
    /// 0x08 address type not supported.
    AddressTypeNotSupported,
}

impl Reply {
    /// The code on the wire.
    #[must_use]
    pub fn as_u8(self) -> u8 {
        match self {
            Reply::Succeeded => 0x00,
            Reply::GeneralFailure => 0x01,
            Reply::ConnectionNotAllowed => 0x02,
            Reply::NetworkUnreachable => 0x03,
            Reply::HostUnreachable => 0x04,
            Reply::ConnectionRefused => 0x05,
            Reply::TtlExpired => 0x06,
            Reply::CommandNotSupported => 0x07,
            Reply::AddressTypeNotSupported => 0x08,
        }
    }

    /// The reply for a code on the wire; codes RFC 1928 does not define are general failures.
    pub(crate) fn from_u8(code: u8) -> Reply {
        match code {
            0x00 => Reply::Succeeded,
            0x02 => Reply::ConnectionNotAllowed,
            0x03 => Reply::NetworkUnreachable,
            0x04 => Reply::HostUnreachable,
            0x05 => Reply::ConnectionRefused,
            0x06 => Reply::TtlExpired,
            0x07 => Reply::CommandNotSupported,
            0x08 => Reply::AddressTypeNotSupported,
            _ => Reply::GeneralFailure,
        }
    }
}

/// The target of a request as the client named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetAddr {
    Ip(SocketAddr),
    /// A name (valid UTF-8, 1 to 255 bytes, otherwise unchecked) and a port.
    Domain(String, u16),
}

impl fmt::Display for TargetAddr {
    /// `address:port` or `name:port`; control characters of a name are escaped, since
    /// the name comes from the client and ends up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Ip(addr) => addr.fmt(f),
            TargetAddr::Domain(name, port) => {
                for c in name.chars() {
                    if c.is_control() {
                        write!(f, "{}", c.escape_default())?;
                    } else {
                        write!(f, "{c}")?;
                    }
                }
                write!(f, ":{port}")
            }
        }
    }
}

/// What the client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Connect,
    /// BIND, UDP ASSOCIATE or an unknown command, with its code.
    Unsupported(u8),
}

/// Reads the rest of the greeting (`NMETHODS METHODS...`) after its version byte, which
/// the caller read, and returns the offered methods.
///
/// # Errors
/// [`Error::Version`] for anything but SOCKS5 (nothing can be answered then), or I/O.
pub(crate) async fn read_greeting<S: AsyncRead + Unpin>(
    stream: &mut S,
    version: u8,
) -> Result<Vec<u8>, Error> {
    if version != VERSION {
        return Err(Error::Version(version));
    }
    let [count] = read_array(stream).await?;
    let mut methods = vec![0; usize::from(count)];
    stream.read_exact(&mut methods).await?;
    Ok(methods)
}

/// Answers the greeting with the chosen method (or [`NO_ACCEPTABLE_METHOD`]).
pub(crate) async fn write_method<S: AsyncWrite + Unpin>(
    stream: &mut S,
    method: u8,
) -> Result<(), Error> {
    stream.write_all(&[VERSION, method]).await?;
    Ok(())
}

/// Username and password as the client sent them (bytes: RFC 1929 does not say UTF-8).
pub(crate) struct Credentials {
    pub(crate) username: Vec<u8>,
    pub(crate) password: Vec<u8>,
}

// The password must never end up in a log line.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &String::from_utf8_lossy(&self.username))
            .finish_non_exhaustive()
    }
}

/// Reads the RFC 1929 request `VER ULEN UNAME PLEN PASSWD`.
///
/// # Errors
/// [`Error::Protocol`] when the version byte is not 0x01 (the caller answers with a
/// failure status), or I/O.
pub(crate) async fn read_credentials<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Credentials, Error> {
    let [version, user_len] = read_array(stream).await?;
    if version != AUTH_VERSION {
        return Err(Error::Protocol(
            format!("username/password version {version:#04x}, expected 0x01").into(),
        ));
    }
    let mut username = vec![0; usize::from(user_len)];
    stream.read_exact(&mut username).await?;
    let [pass_len] = read_array(stream).await?;
    let mut password = vec![0; usize::from(pass_len)];
    stream.read_exact(&mut password).await?;
    Ok(Credentials { username, password })
}

/// Answers the RFC 1929 request: status 0x00 for success, 0x01 for failure.
pub(crate) async fn write_auth_status<S: AsyncWrite + Unpin>(
    stream: &mut S,
    success: bool,
) -> Result<(), Error> {
    stream
        .write_all(&[AUTH_VERSION, u8::from(!success)])
        .await?;
    Ok(())
}

/// Reads the request `VER CMD RSV ATYP DST.ADDR DST.PORT`.
///
/// # Errors
/// Every error except [`Error::Io`] deserves a reply ([`Error::reply`]) before closing:
/// [`Error::AddressType`] for an unknown address type, [`Error::Protocol`] for a version
/// other than 5, an empty name or one that is not UTF-8.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Command, TargetAddr), Error> {
    let [version, command, _reserved, address_type] = read_array(stream).await?;
    if version != VERSION {
        return Err(Error::Version(version));
    }
    let target = match address_type {
        ATYP_IPV4 => {
            let [a, b, c, d, p1, p2] = read_array(stream).await?;
            TargetAddr::Ip(SocketAddr::new(
                Ipv4Addr::new(a, b, c, d).into(),
                u16::from_be_bytes([p1, p2]),
            ))
        }
        ATYP_IPV6 => {
            let bytes: [u8; 18] = read_array(stream).await?;
            let mut octets = [0; 16];
            octets.copy_from_slice(&bytes[..16]);
            TargetAddr::Ip(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                u16::from_be_bytes([bytes[16], bytes[17]]),
            ))
        }
        ATYP_DOMAIN => {
            let [len] = read_array(stream).await?;
            let mut name = vec![0; usize::from(len)];
            stream.read_exact(&mut name).await?;
            let port = u16::from_be_bytes(read_array(stream).await?);
            if name.is_empty() {
                return Err(Error::Protocol("empty destination name".into()));
            }
            let name = String::from_utf8(name)
                .map_err(|_| Error::Protocol("destination name is not UTF-8".into()))?;
            TargetAddr::Domain(name, port)
        }
        _ => return Err(Error::AddressType),
    };
    let command = match command {
        0x01 => Command::Connect,
        other => Command::Unsupported(other),
    };
    Ok((command, target))
}

/// Sends a reply with `bound` as BND.ADDR/BND.PORT (all zero for failures).
pub(crate) async fn write_reply<S: AsyncWrite + Unpin>(
    stream: &mut S,
    reply: Reply,
    bound: SocketAddr,
) -> Result<(), Error> {
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[VERSION, reply.as_u8(), 0x00]);
    match bound {
        SocketAddr::V4(a) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&a.ip().octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(())
}

/// The all-zero address failure replies carry.
pub(crate) const UNBOUND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

async fn read_array<const N: usize, S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<[u8; N], Error> {
    let mut buf = [0; N];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn request(bytes: &[u8]) -> Result<(Command, TargetAddr), Error> {
        read_request(&mut &bytes[..]).await
    }

    #[tokio::test]
    async fn requests_parse_by_address_type() {
        let ok: &[(&[u8], Command, &str)] = &[
            (
                &[5, 1, 0, 1, 10, 0, 0, 1, 0, 80],
                Command::Connect,
                "10.0.0.1:80",
            ),
            (
                &[
                    5, 1, 0, 4, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0xbb,
                ],
                Command::Connect,
                "[2001:db8::1]:443",
            ),
            (
                &[5, 2, 0, 3, 4, b'a', b'.', b'b', b'c', 0, 21],
                Command::Unsupported(2),
                "a.bc:21",
            ),
            (
                &[5, 1, 0, 3, 3, b'a', b'\n', b'b', 0, 1],
                Command::Connect,
                "a\\nb:1",
            ),
        ];
        for (bytes, command, target) in ok {
            let (c, t) = request(bytes).await.expect("parses");
            assert_eq!(
                (c, t.to_string().as_str()),
                (*command, *target),
                "{bytes:?}"
            );
        }
        let bad: &[(&[u8], u8)] = &[
            (&[5, 1, 0, 3, 2, 0xff, 0xfe, 0, 80], 0x01),
            (&[5, 1, 0, 3, 0, 0, 80], 0x01),
            (&[5, 1, 0, 9, 1, 2, 3, 4, 0, 80], 0x08),
            (&[4, 1, 0, 1, 1, 2, 3, 4, 0, 80], 0x01),
        ];
        for (bytes, code) in bad {
            let err = request(bytes).await.expect_err("refused");
            assert!(!matches!(err, Error::Io(_)), "{err}");
            assert_eq!(err.reply().as_u8(), *code, "{bytes:?}: {err}");
        }
        assert!(matches!(
            request(&[5, 1, 0, 1, 10, 0]).await,
            Err(Error::Io(_))
        ));
    }

    #[tokio::test]
    async fn credentials_check_the_rfc_1929_version() {
        let good = read_credentials(&mut &[1, 1, b'u', 2, b'p', b'w'][..])
            .await
            .expect("parses");
        assert_eq!(
            (good.username.as_slice(), good.password.as_slice()),
            (&b"u"[..], &b"pw"[..])
        );
        assert!(!format!("{good:?}").contains("pw"));
        let err = read_credentials(&mut &[5, 1, b'u', 1, b'p'][..])
            .await
            .expect_err("wrong version");
        assert!(err.to_string().contains("0x05"), "{err}");
    }

    #[tokio::test]
    async fn replies_carry_the_bound_address() {
        let mut out = Vec::new();
        write_reply(&mut out, Reply::Succeeded, "10.0.0.2:1080".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(out, [5, 0, 0, 1, 10, 0, 0, 2, 0x04, 0x38]);
        let mut out = Vec::new();
        write_reply(&mut out, Reply::ConnectionNotAllowed, UNBOUND)
            .await
            .unwrap();
        assert_eq!(out, [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
    }
}
