//! The SOCKS5 client's bytes (RFC 1928, and RFC 1929 for the password), without I/O:
//! what to send, how to read the answers, and [`Handshake`], the order of the exchanges.
//! The async client and [`super::blocking`] both drive this, so they cannot differ on the
//! format.
//!
//! Lengths that do not fit their one-byte field (more than 255 methods, a name, user or
//! password longer than 255 bytes) are sent as 255 with all the bytes after it: a
//! malformed message, which is what a test that sends one wants.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;

use super::{Answer, Target};

/// The protocol version, first byte of every SOCKS5 message but the password's.
pub const VERSION: u8 = 0x05;
/// Method: no authentication.
pub const NO_AUTH: u8 = 0x00;
/// Method: username and password (RFC 1929).
pub const USERNAME_PASSWORD: u8 = 0x02;
/// The server's answer to a greeting when it accepts none of the offered methods.
pub const NO_ACCEPTABLE_METHOD: u8 = 0xFF;
/// Command: CONNECT.
pub const CONNECT: u8 = 0x01;
/// The version byte of the RFC 1929 sub-negotiation.
const AUTH_VERSION: u8 = 0x01;
/// Address types.
const ATYP_IPV4: u8 = 0x01;
const ATYP_NAME: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// How many bytes of a reply to read before its length is known: version, code,
/// reserved, address type, and the address's first byte (a name's length).
pub const REPLY_HEAD_LEN: usize = 5;

/// A one-byte length field for `field`, 255 for anything longer (see the module docs).
fn len_byte(field: &[u8]) -> u8 {
    u8::try_from(field.len()).unwrap_or(u8::MAX)
}

/// The greeting offering `methods`.
pub fn greeting(methods: &[u8]) -> Vec<u8> {
    let mut msg = vec![VERSION, len_byte(methods)];
    msg.extend_from_slice(methods);
    msg
}

/// The method the server chose from its 2-byte answer to the greeting
/// ([`NO_ACCEPTABLE_METHOD`]: none).
///
/// # Errors
/// The answer is not a SOCKS5 one (`InvalidData`).
pub fn method_choice(answer: &[u8]) -> io::Result<u8> {
    match answer {
        [VERSION, method] => Ok(*method),
        _ => Err(invalid(format!("greeting answer {answer:?}"))),
    }
}

/// The RFC 1929 username/password message.
pub fn login(user: &str, pass: &str) -> Vec<u8> {
    let mut msg = vec![AUTH_VERSION, len_byte(user.as_bytes())];
    msg.extend_from_slice(user.as_bytes());
    msg.push(len_byte(pass.as_bytes()));
    msg.extend_from_slice(pass.as_bytes());
    msg
}

/// The status from the server's 2-byte answer to [`login`] (0 = success).
///
/// # Errors
/// The answer does not carry the RFC 1929 version (`InvalidData`).
pub fn auth_status(answer: &[u8]) -> io::Result<u8> {
    match answer {
        [AUTH_VERSION, status] => Ok(*status),
        _ => Err(invalid(format!("auth answer {answer:?}"))),
    }
}

/// An address as a request carries it: type, address, port.
pub fn addr_bytes(addr: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(19);
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

/// A name for the server to resolve, as a request carries it: type, length, name, port.
pub fn name_bytes(name: &str, port: u16) -> Vec<u8> {
    let mut out = vec![ATYP_NAME, len_byte(name.as_bytes())];
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    out
}

/// [`addr_bytes`] or [`name_bytes`], whichever `target` is.
pub fn target_bytes(target: Target<'_>) -> Vec<u8> {
    match target {
        Target::Addr(addr) => addr_bytes(addr),
        Target::Name(name, port) => name_bytes(name, port),
    }
}

/// A request: `command` (e.g. [`CONNECT`]) for an encoded `address` (from
/// [`target_bytes`], or any bytes a test wants to send).
pub fn request(command: u8, address: &[u8]) -> Vec<u8> {
    let mut msg = vec![VERSION, command, 0x00];
    msg.extend_from_slice(address);
    msg
}

/// How many bytes of the reply follow its first [`REPLY_HEAD_LEN`] (the rest of the
/// bound address, which tests do not need, and the port).
///
/// # Errors
/// Not a SOCKS5 reply, or an unknown address type (`InvalidData`).
pub fn reply_rest_len(head: &[u8]) -> io::Result<usize> {
    match head {
        [VERSION, _, _, ATYP_IPV4, _] => Ok(4 - 1 + 2),
        [VERSION, _, _, ATYP_IPV6, _] => Ok(16 - 1 + 2),
        [VERSION, _, _, ATYP_NAME, len] => Ok(usize::from(*len) + 2),
        _ => Err(invalid(format!("reply header {head:?}"))),
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// One step of a handshake: send `send` (possibly nothing), then read exactly `receive`
/// bytes and pass them to [`Handshake::received`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The bytes to write.
    pub send: Vec<u8>,
    /// How many bytes to read after writing them.
    pub receive: usize,
}

/// What the handshake waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    MethodChoice,
    AuthStatus,
    ReplyHead,
    ReplyRest { code: u8 },
}

/// A client's handshake as a plan without I/O: a driver sends each [`Exchange`] and feeds
/// back the bytes read until the plan answers. Greets offering one method (password if
/// `auth` is given, else none), logs in if the server asks (with empty credentials when
/// none were given, so a test sees the server refuse them), then sends the request and
/// reads the reply.
#[derive(Debug, Clone)]
pub struct Handshake<'a> {
    address: Vec<u8>,
    auth: Option<(&'a str, &'a str)>,
    command: u8,
    awaiting: Awaiting,
}

impl<'a> Handshake<'a> {
    /// The whole handshake for `command` to `target`.
    pub fn new(target: Target<'_>, auth: Option<(&'a str, &'a str)>, command: u8) -> Self {
        Handshake {
            address: target_bytes(target),
            auth,
            command,
            awaiting: Awaiting::MethodChoice,
        }
    }

    /// Only the request and its reply, for a test that has greeted (and logged in)
    /// itself; `address` is sent as it is (from [`target_bytes`], or any bytes).
    pub fn request_only(command: u8, address: &[u8]) -> Self {
        Handshake {
            address: address.to_vec(),
            auth: None,
            command,
            awaiting: Awaiting::ReplyHead,
        }
    }

    /// The first exchange: the greeting (the request for [`Handshake::request_only`]).
    pub fn start(&self) -> Exchange {
        if self.awaiting == Awaiting::ReplyHead {
            return self.request_exchange();
        }
        let method = if self.auth.is_some() {
            USERNAME_PASSWORD
        } else {
            NO_AUTH
        };
        Exchange {
            send: greeting(&[method]),
            receive: 2,
        }
    }

    /// Takes the bytes read for the last exchange; the next exchange, or the answer.
    ///
    /// # Errors
    /// The bytes are not what a SOCKS5 server sends at this point (`InvalidData`).
    pub fn received(&mut self, bytes: &[u8]) -> io::Result<ControlFlow<Answer, Exchange>> {
        match self.awaiting {
            Awaiting::MethodChoice => match method_choice(bytes)? {
                NO_ACCEPTABLE_METHOD => Ok(ControlFlow::Break(Answer::AuthRefused(
                    NO_ACCEPTABLE_METHOD,
                ))),
                USERNAME_PASSWORD => {
                    let (user, pass) = self.auth.unwrap_or(("", ""));
                    self.awaiting = Awaiting::AuthStatus;
                    Ok(ControlFlow::Continue(Exchange {
                        send: login(user, pass),
                        receive: 2,
                    }))
                }
                _ => Ok(self.send_request()),
            },
            Awaiting::AuthStatus => match auth_status(bytes)? {
                0 => Ok(self.send_request()),
                refused => Ok(ControlFlow::Break(Answer::AuthRefused(refused))),
            },
            Awaiting::ReplyHead => {
                let rest = reply_rest_len(bytes)?;
                self.awaiting = Awaiting::ReplyRest { code: bytes[1] };
                Ok(ControlFlow::Continue(Exchange {
                    send: Vec::new(),
                    receive: rest,
                }))
            }
            Awaiting::ReplyRest { code } => Ok(ControlFlow::Break(Answer::Reply(code))),
        }
    }

    fn send_request(&mut self) -> ControlFlow<Answer, Exchange> {
        self.awaiting = Awaiting::ReplyHead;
        ControlFlow::Continue(self.request_exchange())
    }

    fn request_exchange(&self) -> Exchange {
        Exchange {
            send: request(self.command, &self.address),
            receive: REPLY_HEAD_LEN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(send: &[u8], receive: usize) -> ControlFlow<Answer, Exchange> {
        ControlFlow::Continue(Exchange {
            send: send.to_vec(),
            receive,
        })
    }

    #[test]
    fn addresses_encode_as_rfc_1928_says() {
        let v4: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[::1]:443".parse().unwrap();
        assert_eq!(addr_bytes(v4), [1, 10, 0, 0, 1, 0, 80]);
        let mut want = vec![4];
        want.extend_from_slice(&[0; 15]);
        want.extend_from_slice(&[1, 1, 187]);
        assert_eq!(addr_bytes(v6), want);
        assert_eq!(
            name_bytes("a.bc", 21),
            [3, 4, b'a', b'.', b'b', b'c', 0, 21]
        );
        assert_eq!(name_bytes(&"x".repeat(300), 1)[1], 255);
    }

    #[test]
    fn reply_lengths_by_address_type() {
        for (head, rest) in [
            ([5, 0, 0, 1, 0], 5),
            ([5, 2, 0, 4, 0], 17),
            ([5, 0, 0, 3, 7], 9),
        ] {
            assert_eq!(reply_rest_len(&head).unwrap(), rest, "{head:?}");
        }
        for bad in [[5, 0, 0, 9, 0], [4, 0, 0, 1, 0]] {
            assert!(reply_rest_len(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn without_auth_greets_requests_and_reads_the_reply() {
        let target = Target::Addr("10.0.0.1:80".parse().unwrap());
        let mut plan = Handshake::new(target, None, CONNECT);
        assert_eq!(plan.start().send, [5, 1, 0]);
        let request = plan.received(&[5, 0]).unwrap();
        assert_eq!(request, exchange(&[5, 1, 0, 1, 10, 0, 0, 1, 0, 80], 5));
        let rest = plan.received(&[5, 4, 0, 1, 0]).unwrap();
        assert_eq!(rest, exchange(&[], 5));
        assert_eq!(
            plan.received(&[0; 5]).unwrap(),
            ControlFlow::Break(Answer::Reply(4))
        );
    }

    #[test]
    fn with_auth_logs_in_and_reports_refusals() {
        let target = Target::Name("a.b", 1);
        let plan = Handshake::new(target, Some(("u", "pw")), 2);
        assert_eq!(plan.start().send, [5, 1, 2]);
        let mut ok = plan.clone();
        assert_eq!(
            ok.received(&[5, 2]).unwrap(),
            exchange(&[1, 1, b'u', 2, b'p', b'w'], 2)
        );
        let request = ok.received(&[1, 0]).unwrap();
        assert_eq!(
            request,
            exchange(&[5, 2, 0, 3, 3, b'a', b'.', b'b', 0, 1], 5)
        );

        let mut wrong = plan.clone();
        assert!(wrong.received(&[5, 2]).unwrap().is_continue());
        let refused = wrong.received(&[1, 1]).unwrap();
        assert_eq!(refused, ControlFlow::Break(Answer::AuthRefused(1)));
        let mut none = plan.clone();
        let refused = none.received(&[5, 0xFF]).unwrap();
        assert_eq!(refused, ControlFlow::Break(Answer::AuthRefused(0xFF)));
        assert!(plan.clone().received(&[4, 0]).is_err());
    }

    #[test]
    fn request_only_starts_with_the_request_as_given() {
        let mut plan = Handshake::request_only(9, &[0x05, 127, 0, 0, 1, 0, 80]);
        assert_eq!(plan.start().send, [5, 9, 0, 5, 127, 0, 0, 1, 0, 80]);
        assert_eq!(plan.received(&[5, 8, 0, 1, 0]).unwrap(), exchange(&[], 5));
        let answer = plan.received(&[0; 5]).unwrap();
        assert_eq!(answer, ControlFlow::Break(Answer::Reply(8)));
    }

    #[test]
    fn the_server_asking_for_a_password_gets_empty_credentials() {
        let mut plan = Handshake::new(Target::Name("x", 1), None, CONNECT);
        assert_eq!(plan.received(&[5, 2]).unwrap(), exchange(&[1, 0, 0], 2));
    }
}
