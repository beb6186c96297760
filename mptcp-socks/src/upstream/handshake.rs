//! The client side of SOCKS5 towards an upstream, pipelined: greeting, authentication and
//! request leave in one write, and the answers are read afterwards, so the chain costs
//! one round trip to the upstream instead of three.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::Auth;
use crate::socks5::{Reply, TargetAddr};

const VERSION: u8 = 0x05;
const NO_AUTH: u8 = 0x00;
const PASSWORD: u8 = 0x02;
const NO_ACCEPTABLE: u8 = 0xff;

/// How the exchange with an upstream went wrong.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// The upstream wants a method we did not offer (usually: it needs a password).
    #[error("the upstream accepts none of the offered methods ({offered}); {hint}")]
    NoAcceptableMethod {
        offered: &'static str,
        hint: &'static str,
    },
    /// The upstream refused the username and password.
    #[error("the upstream refused the username and password (status {0:#04x})")]
    AuthRefused(u8),
    /// The upstream answered something that is not SOCKS5.
    #[error("the upstream does not speak SOCKS5: {0}")]
    Protocol(String),
    /// The connection failed or closed before the answers were complete.
    #[error("the upstream closed or failed during the SOCKS handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// The bytes of greeting, authentication (when `auth`) and CONNECT request for `target`.
pub(crate) fn request(auth: Option<&Auth>, target: &TargetAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + 515 + 262);
    match auth {
        None => out.extend_from_slice(&[VERSION, 1, NO_AUTH]),
        Some(auth) => {
            out.extend_from_slice(&[VERSION, 1, PASSWORD, 0x01]);
            // Lengths were checked when the URL was parsed (1 to 255 bytes each).
            for field in [auth.username(), auth.password()] {
                out.push(u8::try_from(field.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(&field.as_bytes()[..field.len().min(255)]);
            }
        }
    }
    out.extend_from_slice(&[VERSION, 0x01, 0x00]);
    match target {
        TargetAddr::Ip(SocketAddr::V4(addr)) => {
            out.push(0x01);
            out.extend_from_slice(&addr.ip().octets());
        }
        TargetAddr::Ip(SocketAddr::V6(addr)) => {
            out.push(0x04);
            out.extend_from_slice(&addr.ip().octets());
        }
        TargetAddr::Domain(name, _) => {
            // The server side read it as 1 to 255 bytes.
            out.push(0x03);
            out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(&name.as_bytes()[..name.len().min(255)]);
        }
    }
    let port = match target {
        TargetAddr::Ip(addr) => addr.port(),
        TargetAddr::Domain(_, port) => *port,
    };
    out.extend_from_slice(&port.to_be_bytes());
    out
}

/// Sends [`request`] and reads the answers. `Ok(Ok(bound))`: the upstream connected and
/// relays from now on; `Ok(Err(reply))`: it is alive and well but could not connect to
/// the target (the reply is what the client gets); `Err`: the upstream failed.
#[cfg(test)]
pub(crate) async fn exchange<S>(
    stream: &mut S,
    auth: Option<&Auth>,
    target: &TargetAddr,
) -> Result<Result<SocketAddr, Reply>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    start(stream, auth, target).await?;
    connect_reply(stream).await
}

/// Sends [`request`] and reads the answers to the greeting and the authentication: once
/// this returns `Ok`, the upstream is alive and has accepted us; what remains is its own
/// connect to the target ([`connect_reply`]).
pub(crate) async fn start<S>(
    stream: &mut S,
    auth: Option<&Auth>,
    target: &TargetAddr,
) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&request(auth, target)).await?;
    stream.flush().await?;
    let [version, method] = read_array(stream).await?;
    if version != VERSION {
        return Err(HandshakeError::Protocol(format!(
            "greeting answered with version {version:#04x}"
        )));
    }
    match (method, auth) {
        (NO_ACCEPTABLE, None) => {
            return Err(HandshakeError::NoAcceptableMethod {
                offered: "no authentication",
                hint: "give its user and password in the URL (user:pass@)",
            });
        }
        (NO_ACCEPTABLE, Some(_)) => {
            return Err(HandshakeError::NoAcceptableMethod {
                offered: "username/password",
                hint: "it may not be set up for passwords",
            });
        }
        (NO_AUTH, None) | (PASSWORD, Some(_)) => {}
        (other, _) => {
            return Err(HandshakeError::Protocol(format!(
                "it chose method {other:#04x}, which was not offered"
            )));
        }
    }
    if auth.is_some() {
        let [version, status] = read_array(stream).await?;
        if version != 0x01 {
            return Err(HandshakeError::Protocol(format!(
                "authentication answered with version {version:#04x}"
            )));
        }
        if status != 0 {
            return Err(HandshakeError::AuthRefused(status));
        }
    }
    Ok(())
}

/// Reads the reply to the CONNECT request, sent once the upstream has connected to the
/// target or failed to: `Ok(Ok(bound))` connected, `Ok(Err(reply))` its failure.
pub(crate) async fn connect_reply<S>(
    stream: &mut S,
) -> Result<Result<SocketAddr, Reply>, HandshakeError>
where
    S: AsyncRead + Unpin,
{
    let [version, code, _reserved, address_type] = read_array(stream).await?;
    if version != VERSION {
        return Err(HandshakeError::Protocol(format!(
            "request answered with version {version:#04x}"
        )));
    }
    // The bound address is read in full even for a failure, so nothing of the answer is
    // left for the relay.
    let ip: IpAddr = match address_type {
        0x01 => Ipv4Addr::from(read_array::<4, _>(stream).await?).into(),
        0x04 => Ipv6Addr::from(read_array::<16, _>(stream).await?).into(),
        0x03 => {
            let [len] = read_array(stream).await?;
            let mut name = vec![0; usize::from(len)];
            stream.read_exact(&mut name).await?;
            Ipv4Addr::UNSPECIFIED.into()
        }
        other => {
            return Err(HandshakeError::Protocol(format!(
                "reply with address type {other:#04x}"
            )));
        }
    };
    let port = u16::from_be_bytes(read_array(stream).await?);
    match code {
        0x00 => Ok(Ok(SocketAddr::new(ip, port))),
        0x01..=0x08 => Ok(Err(Reply::from_u8(code))),
        other => Err(HandshakeError::Protocol(format!(
            "reply code {other:#04x} is not defined"
        ))),
    }
}

async fn read_array<const N: usize, S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<[u8; N]> {
    let mut buf = [0; N];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(
        bytes: &[u8],
        auth: Option<&Auth>,
    ) -> Result<Result<SocketAddr, Reply>, HandshakeError> {
        // The upstream's answer, then end of stream; what we send goes nowhere.
        let mut ours = tokio::io::join(bytes, tokio::io::sink());
        let target = TargetAddr::Domain("example.org".into(), 443);
        exchange(&mut ours, auth, &target).await
    }

    #[test]
    fn the_request_is_one_pipelined_message() {
        let auth = Auth::new("al", "pw");
        let bytes = request(Some(&auth), &TargetAddr::Domain("ab.c".into(), 80));
        assert_eq!(
            bytes,
            [
                5, 1, 2, // greeting: username/password only
                1, 2, b'a', b'l', 2, b'p', b'w', // RFC 1929
                5, 1, 0, 3, 4, b'a', b'b', b'.', b'c', 0, 80 // CONNECT ab.c:80
            ]
        );
        let bytes = request(None, &TargetAddr::Ip("10.0.0.1:443".parse().expect("addr")));
        assert_eq!(bytes, [5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 1, 187]);
    }

    #[tokio::test]
    async fn answers_are_read_in_full_or_refused_with_a_reason() {
        let auth = Auth::new("al", "pw");
        let ok = answer(&[5, 0, 5, 0, 0, 1, 10, 0, 0, 2, 0, 80], None).await;
        assert_eq!(
            ok.expect("ok").expect("connected"),
            "10.0.0.2:80".parse().expect("addr")
        );
        let ok = answer(&[5, 2, 1, 0, 5, 0, 0, 3, 1, b'x', 0, 80], Some(&auth)).await;
        assert!(matches!(ok, Ok(Ok(_))), "{ok:?}");
        let refused = answer(&[5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0], None).await;
        assert_eq!(
            refused.expect("alive").expect_err("target refused"),
            Reply::ConnectionRefused
        );
        for (bytes, auth, needle) in [
            (&[5, 0xff][..], None, "user and password in the URL"),
            (&[5, 2, 1, 1][..], Some(&auth), "refused the username"),
            (&[5, 0][..], Some(&auth), "not offered"),
            (&b"HTTP/1.1 400 Bad Request\r\n"[..], None, "version 0x48"),
            (&[5, 0, 5, 0, 0, 9][..], None, "address type 0x09"),
            (
                &[5, 0, 5, 0x2a, 0, 1, 0, 0, 0, 0, 0, 0][..],
                None,
                "0x2a is not defined",
            ),
            (&[5, 0, 5][..], None, "closed or failed"),
        ] {
            let err = answer(bytes, auth).await.expect_err("upstream failure");
            assert!(err.to_string().contains(needle), "{bytes:?}: {err}");
        }
    }
}
