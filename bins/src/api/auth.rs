//! Who may use the API: the bearer token (compared in constant time) and the `Host` check
//! that keeps a web page from reaching the API through DNS rebinding.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use subtle::ConstantTimeEq;
use warp::http::header;
use warp::{Filter, Rejection};

use super::error::{ApiError, ErrorKind};

/// What the request's credentials allow, when they are not refused outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// The right token, or no token is set.
    Authorized,
    /// A token is set and the request has no `Authorization` header.
    Anonymous,
}

/// Rejects (401) unless the request carries the bearer token, when there is one.
pub(super) fn require_token(
    token: Option<Arc<str>>,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    access(token)
        .and_then(|access: Access| async move {
            match access {
                Access::Authorized => Ok(()),
                Access::Anonymous => Err(warp::reject::custom(ApiError::unauthorized())),
            }
        })
        .untuple_one()
}

/// The request's [`Access`]; rejects (401) an `Authorization` header that does not hold
/// the token, so a wrong token is refused the same way on every route.
pub(super) fn access(
    token: Option<Arc<str>>,
) -> impl Filter<Extract = (Access,), Error = Rejection> + Clone {
    warp::header::headers_cloned().and_then(move |headers: warp::http::HeaderMap| {
        let token = token.clone();
        async move {
            let Some(expected) = token.as_deref() else {
                return Ok(Access::Authorized);
            };
            let mut given = headers.get_all(header::AUTHORIZATION).iter();
            let (Some(value), None) = (given.next(), given.next()) else {
                return if headers.contains_key(header::AUTHORIZATION) {
                    Err(warp::reject::custom(ApiError::unauthorized()))
                } else {
                    Ok(Access::Anonymous)
                };
            };
            if value
                .to_str()
                .ok()
                .and_then(bearer_token)
                .is_some_and(|given| is_token(given, expected))
            {
                Ok(Access::Authorized)
            } else {
                Err(warp::reject::custom(ApiError::unauthorized()))
            }
        }
    })
}

/// The `Host` values that name the address the API listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AcceptedHosts {
    pub(super) listen: SocketAddr,
}

impl AcceptedHosts {
    /// Whether `authority` (a `Host` value, or the authority of an absolute request URI)
    /// names the listener: an IP literal is compared as an address, a missing port means
    /// 80; the only name accepted is `localhost`, and only for a loopback listener.
    fn accepts(&self, authority: &warp::host::Authority) -> bool {
        if authority.port_u16().unwrap_or(80) != self.listen.port() {
            return false;
        }
        let host = authority.host();
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let ip = self.listen.ip();
        match literal.parse::<IpAddr>() {
            // Any literal names an unspecified listener's port; a rebinding attack needs
            // a name.
            Ok(given) => ip.is_unspecified() || given == ip,
            Err(_) => ip.is_loopback() && host.eq_ignore_ascii_case("localhost"),
        }
    }

    /// The accepted values, for the refusal's message.
    fn describe(&self) -> String {
        let port = self.listen.port();
        let ip = self.listen.ip();
        if ip.is_unspecified() {
            format!("one of this host's IP addresses with port {port}, or localhost:{port}")
        } else if ip.is_loopback() {
            format!("{} or localhost:{port}", self.listen)
        } else {
            self.listen.to_string()
        }
    }
}

/// Rejects a request whose `Host` (or absolute URI) does not name the listener (421), or
/// that has no `Host` or more than one (400). Passes everything when `accepted` is `None`.
pub(super) fn check_host(
    accepted: Option<Arc<AcceptedHosts>>,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and(warp::host::optional())
        .and_then(
            move |headers: warp::http::HeaderMap, authority: Option<warp::host::Authority>| {
                let accepted = accepted.clone();
                async move {
                    let Some(accepted) = accepted else {
                        return Ok(());
                    };
                    if headers.get_all(header::HOST).iter().count() > 1 {
                        return Err(warp::reject::custom(ApiError::bad_request(
                            "the request has more than one `Host` header",
                        )));
                    }
                    match authority {
                        None => Err(warp::reject::custom(ApiError::bad_request(
                            "the request has no `Host` header",
                        ))),
                        Some(authority) if accepted.accepts(&authority) => Ok(()),
                        Some(authority) => Err(warp::reject::custom(ApiError::new(
                            ErrorKind::WrongHost,
                            format!(
                                "Host {:?} is not this API's address; use {}",
                                authority.as_str(),
                                accepted.describe()
                            ),
                        ))),
                    }
                }
            },
        )
        .untuple_one()
}

/// The credentials of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

/// Whether `given` is the token, compared without an early exit so that the time taken
/// does not tell how much of a guessed token was right. (Its length is not secret enough
/// to hide.)
fn is_token(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_name_the_listener() {
        let accepts = |listen: &str, host: &str| {
            AcceptedHosts {
                listen: listen.parse().expect("addr"),
            }
            .accepts(&host.parse().expect("authority"))
        };
        for (listen, host, accepted) in [
            ("127.0.0.1:5000", "127.0.0.1:5000", true),
            ("127.0.0.1:5000", "localhost:5000", true),
            ("127.0.0.1:5000", "LocalHost:5000", true),
            ("127.0.0.1:5000", "127.0.0.1:5001", false),
            ("127.0.0.1:5000", "127.0.0.1", false),
            ("127.0.0.1:5000", "localhost", false),
            ("127.0.0.1:5000", "rebind.attacker.example:5000", false),
            ("127.0.0.1:5000", "127.0.0.2:5000", false),
            ("127.0.0.1:5000", "[::1]:5000", false),
            ("127.0.0.1:80", "127.0.0.1", true),
            ("127.0.0.1:80", "localhost", true),
            ("[::1]:5000", "[::1]:5000", true),
            ("[::1]:5000", "[0:0::1]:5000", true),
            ("[::1]:5000", "localhost:5000", true),
            ("[::1]:5000", "127.0.0.1:5000", false),
            ("192.0.2.7:5000", "192.0.2.7:5000", true),
            ("192.0.2.7:5000", "localhost:5000", false),
            ("192.0.2.7:5000", "api.example:5000", false),
            ("0.0.0.0:5000", "192.0.2.7:5000", true),
            ("0.0.0.0:5000", "[2001:db8::1]:5000", true),
            ("0.0.0.0:5000", "localhost:5000", false),
            ("0.0.0.0:5000", "api.example:5000", false),
            ("0.0.0.0:5000", "192.0.2.7:5001", false),
        ] {
            assert_eq!(accepts(listen, host), accepted, "{host} for {listen}");
        }
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn constant_time_comparison() {
        assert!(is_token("secret", "secret"));
        assert!(!is_token("secret", "secreT"));
        assert!(!is_token("secret", "secret2"));
        assert!(!is_token("secre", "secret"));
        assert!(is_token("", ""));
    }
}
