//! Where a chain goes: an upstream SOCKS5 server (the aggregation server on a VPS) as
//! `mptcp-socksd --upstream NAME=URL` names it.
//!
//! ```text
//! socks5://[user:pass@]host:port
//! socks5+tls://[user:pass@]host:port[#sha256=HEX]
//! ```
//!
//! The user and password are percent-decoded (`%40` for `@`, `%3A` for `:`); the host is a
//! name, an IPv4 address or an IPv6 address in brackets; the port is required. A TLS
//! upstream may pin the SHA-256 of its certificate (64 hex digits, colons allowed as in
//! `openssl x509 -fingerprint`); without a pin the certificate is checked against the
//! system roots.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use mptcp_policy::UpstreamName;
use percent_encoding::percent_decode_str;

use super::tls::Fingerprint;
use crate::config::Auth;

/// The upstream's host as the URL names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamHost {
    /// An address literal.
    Ip(IpAddr),
    /// A name, resolved when connecting.
    Name(String),
}

impl fmt::Display for UpstreamHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            UpstreamHost::Ip(ip) => write!(f, "{ip}"),
            UpstreamHost::Name(name) => f.write_str(name),
        }
    }
}

/// One `--upstream NAME=URL`.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// What rules call it (`via=NAME`).
    pub name: UpstreamName,
    /// Where it listens.
    pub host: UpstreamHost,
    /// Its port.
    pub port: u16,
    /// `socks5+tls`: SOCKS5 inside TLS.
    pub tls: bool,
    /// With `tls`: the SHA-256 of its certificate (DER) that must match, instead of a
    /// check against the system roots.
    pub pin: Option<Fingerprint>,
    /// Credentials for its username/password method. A URL with `user@` and no
    /// password leaves the password empty: [`Upstream::password_missing`], to be given
    /// with [`Upstream::with_password`] (from a file or the environment).
    pub auth: Option<Auth>,
}

impl Upstream {
    /// Whether the URL named a user but no password.
    #[must_use]
    pub fn password_missing(&self) -> bool {
        self.auth
            .as_ref()
            .is_some_and(|auth| auth.password().is_empty())
    }

    /// The upstream with this password for its user.
    ///
    /// # Errors
    /// When the URL named no user, or the password is not 1 to 255 bytes (RFC 1929).
    pub fn with_password(mut self, password: &str) -> Result<Self, UpstreamError> {
        let Some(auth) = &self.auth else {
            return Err(UpstreamError::new(format!(
                "upstream {} names no user for the password (user@host:port)",
                self.name
            )));
        };
        if !(1..=255).contains(&password.len()) {
            return Err(UpstreamError::new(
                "the password must be 1 to 255 bytes (RFC 1929)",
            ));
        }
        self.auth = Some(Auth::new(auth.username(), password));
        Ok(self)
    }
}

// The password must never end up in a log line.
impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("pinned", &self.pin.is_some())
            .field("auth", &self.auth)
            .finish()
    }
}

/// The URL without its password: what logs and `/health` may show.
impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "socks5+tls" } else { "socks5" };
        write!(f, "{}={scheme}://", self.name)?;
        if let Some(auth) = &self.auth {
            let password = if auth.password().is_empty() {
                ""
            } else {
                ":***"
            };
            write!(f, "{}{password}@", auth.username().escape_debug())?;
        }
        write!(f, "{}:{}", self.host, self.port)?;
        if let Some(pin) = &self.pin {
            write!(f, "#sha256={pin}")?;
        }
        Ok(())
    }
}

/// Why an upstream URL was refused; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UpstreamError(String);

impl UpstreamError {
    fn new(message: impl Into<String>) -> Self {
        UpstreamError(message.into())
    }
}

impl FromStr for Upstream {
    type Err = UpstreamError;

    /// Parses `NAME=URL`. The message of an error never repeats the password.
    fn from_str(text: &str) -> Result<Self, UpstreamError> {
        let form = "expected NAME=socks5://[user:pass@]host:port or \
                    NAME=socks5+tls://[user:pass@]host:port[#sha256=HEX]";
        let (name, url) = text
            .split_once('=')
            .ok_or_else(|| UpstreamError::new(form))?;
        let name: UpstreamName = name
            .trim()
            .parse()
            .map_err(|e: mptcp_policy::Error| UpstreamError::new(e.to_string()))?;
        let (tls, rest) = if let Some(rest) = url.strip_prefix("socks5://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("socks5+tls://") {
            (true, rest)
        } else {
            return Err(UpstreamError::new(form));
        };
        let (rest, fragment) = match rest.split_once('#') {
            Some((rest, fragment)) => (rest, Some(fragment)),
            None => (rest, None),
        };
        let pin = match fragment {
            None => None,
            Some(_) if !tls => {
                return Err(UpstreamError::new(
                    "a certificate pin (#sha256=...) needs socks5+tls://",
                ));
            }
            Some(fragment) => Some(parse_pin(fragment)?),
        };
        let (userinfo, authority) = match rest.rsplit_once('@') {
            Some((userinfo, authority)) => (Some(userinfo), authority),
            None => (None, rest),
        };
        let auth = userinfo.map(parse_userinfo).transpose()?;
        let (host, port) = parse_authority(authority.trim_end_matches('/'))?;
        Ok(Upstream {
            name,
            host,
            port,
            tls,
            pin,
            auth,
        })
    }
}

fn parse_userinfo(userinfo: &str) -> Result<Auth, UpstreamError> {
    // `user@` alone: the password comes from elsewhere (`Upstream::with_password`).
    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let decode = |part: &str, what: &str| {
        percent_decode_str(part)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| UpstreamError::new(format!("the {what} is not UTF-8 once decoded")))
    };
    let (user, pass) = (decode(user, "user")?, decode(pass, "password")?);
    // RFC 1929: each is 1 to 255 bytes.
    if !(1..=255).contains(&user.len()) || pass.len() > 255 || userinfo.ends_with(':') {
        return Err(UpstreamError::new(
            "the user and the password must be 1 to 255 bytes each (RFC 1929)",
        ));
    }
    Ok(Auth::new(user, pass))
}

fn parse_authority(authority: &str) -> Result<(UpstreamHost, u16), UpstreamError> {
    let missing_port = || UpstreamError::new("the URL needs a port: host:port");
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (ip, port) = rest
            .split_once(']')
            .ok_or_else(|| UpstreamError::new("an IPv6 address needs its closing ']'"))?;
        let ip: std::net::Ipv6Addr = ip
            .parse()
            .map_err(|_| UpstreamError::new("not an IPv6 address in [...]"))?;
        let port = port.strip_prefix(':').ok_or_else(missing_port)?;
        (UpstreamHost::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = authority.rsplit_once(':').ok_or_else(missing_port)?;
        let host = if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            UpstreamHost::Ip(IpAddr::V4(ip))
        } else if is_host_name(host) {
            UpstreamHost::Name(host.to_ascii_lowercase())
        } else {
            return Err(UpstreamError::new(
                "the host must be a name, an IPv4 address or an IPv6 address in [...]",
            ));
        };
        (host, port)
    };
    let port = match port.parse::<u16>() {
        Ok(port) if port != 0 => port,
        _ => return Err(UpstreamError::new("the port must be 1 to 65535")),
    };
    Ok((host, port))
}

/// A DNS name: dot-separated labels of 1 to 63 letters, digits or `-`, 253 bytes at most.
fn is_host_name(host: &str) -> bool {
    (1..=253).contains(&host.len())
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn parse_pin(fragment: &str) -> Result<Fingerprint, UpstreamError> {
    let bad = || UpstreamError::new("the pin must be #sha256= and 64 hex digits (colons allowed)");
    let hex: Vec<u8> = fragment
        .strip_prefix("sha256=")
        .ok_or_else(bad)?
        .bytes()
        .filter(|b| *b != b':')
        .collect();
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut pin = [0u8; 32];
    for (byte, pair) in pin.iter_mut().zip(hex.chunks(2)) {
        let digits = std::str::from_utf8(pair).map_err(|_| bad())?;
        *byte = u8::from_str_radix(digits, 16).map_err(|_| bad())?;
    }
    Ok(Fingerprint(pin))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn urls_that_parse() {
        let vps: Upstream = "vps=socks5://10.0.0.1:1080".parse().expect("plain");
        assert_eq!(
            (
                vps.name.as_str(),
                &vps.host,
                vps.port,
                vps.tls,
                vps.pin,
                vps.auth.is_none()
            ),
            (
                "vps",
                &UpstreamHost::Ip("10.0.0.1".parse().expect("ip")),
                1080,
                false,
                None,
                true
            )
        );
        let tls: Upstream =
            format!("vps-2=socks5+tls://al%40ice:p%3Ass@VPS.Example.org:443#sha256={PIN}")
                .parse()
                .expect("tls");
        assert!(tls.tls);
        assert_eq!(tls.host, UpstreamHost::Name("vps.example.org".into()));
        assert_eq!(tls.pin.expect("pin").0[..2], [0x00, 0x11]);
        let auth = tls.auth.as_ref().expect("auth");
        assert_eq!(auth.username(), "al@ice");
        assert!(auth.matches(b"al@ice", b"p:ss"));
        let v6: Upstream = "v6=socks5://[2001:db8::1]:1080/".parse().expect("v6");
        assert_eq!(
            v6.host,
            UpstreamHost::Ip("2001:db8::1".parse().expect("ip"))
        );
        // A pin as `openssl x509 -fingerprint -sha256` prints it, with colons.
        let colons: String = PIN
            .as_bytes()
            .chunks(2)
            .map(|p| std::str::from_utf8(p).expect("hex"))
            .collect::<Vec<_>>()
            .join(":");
        let pinned: Upstream = format!("p=socks5+tls://h:1#sha256={colons}")
            .parse()
            .expect("colons");
        assert_eq!(pinned.pin, tls.pin);
    }

    #[test]
    fn urls_that_are_refused_say_why() {
        for (text, needle) in [
            ("socks5://10.0.0.1:1080", "expected NAME="),
            ("vps=http://10.0.0.1:1080", "expected NAME="),
            ("=socks5://10.0.0.1:1080", "1 to 32"),
            ("direct=socks5://10.0.0.1:1080", "`direct`"),
            ("a:b=socks5://10.0.0.1:1080", "1 to 32"),
            ("vps=socks5://10.0.0.1", "needs a port"),
            ("vps=socks5://10.0.0.1:0", "1 to 65535"),
            ("vps=socks5://10.0.0.1:70000", "1 to 65535"),
            ("vps=socks5://[2001:db8::1:1080", "closing ']'"),
            ("vps=socks5://bad_host!:1080", "the host must be"),
            ("vps=socks5://user:@h:1080", "1 to 255"),
            ("vps=socks5://:pw@h:1080", "1 to 255"),
            ("vps=socks5://h:1080#sha256=00", "needs socks5+tls"),
            ("vps=socks5+tls://h:1080#sha256=xyz", "64 hex digits"),
            ("vps=socks5+tls://h:1080#md5=00", "64 hex digits"),
        ] {
            let err = text.parse::<Upstream>().expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn a_user_without_password_waits_for_one() {
        let upstream: Upstream = "vps=socks5://alice@h:1080".parse().expect("parses");
        assert!(upstream.password_missing());
        assert_eq!(upstream.to_string(), "vps=socks5://alice@h:1080");
        let upstream = upstream.with_password("pw").expect("password");
        assert!(!upstream.password_missing());
        assert!(
            upstream
                .auth
                .as_ref()
                .expect("auth")
                .matches(b"alice", b"pw")
        );
        let anonymous: Upstream = "vps=socks5://h:1080".parse().expect("parses");
        assert!(!anonymous.password_missing());
        let err = anonymous.with_password("pw").expect_err("no user");
        assert!(err.to_string().contains("names no user"), "{err}");
    }

    #[test]
    fn the_password_is_never_shown() {
        let text = format!("vps=socks5+tls://alice:s3cret@h:1080#sha256={PIN}");
        let upstream: Upstream = text.parse().expect("parses");
        for shown in [format!("{upstream}"), format!("{upstream:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        assert_eq!(
            upstream.to_string(),
            format!("vps=socks5+tls://alice:***@h:1080#sha256={PIN}")
        );
        let err = "vps=socks5://alice:s3cret@h:0"
            .parse::<Upstream>()
            .expect_err("port 0")
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
