//! The rule model: a destination and the settings for connections to it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::error::{Error, Field};
use crate::keyword::{self, keyword_enum};
use crate::via::Via;

/// A DNS name: lowercase, without a trailing dot, each label 1 to 63 characters of
/// letters, digits, `-` or `_`, at most 253 characters in all.
///
/// Names are compared case-insensitively, as DNS does; a trailing dot (the fully
/// qualified form) is accepted and dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DomainName {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::invalid(Field::Destination, input, reason);
        let name = input.strip_suffix('.').unwrap_or(input);
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        if name.len() > 253 {
            return Err(bad("a DNS name has at most 253 characters"));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(bad("empty label (two dots in a row?)"));
            }
            if label.len() > 63 {
                return Err(bad("a DNS label has at most 63 characters"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a DNS label cannot start or end with '-'"));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                return Err(bad(&format!(
                    "character {c:?} is not allowed in a DNS name (letters, digits, '-', '_')"
                )));
            }
        }
        // "10.0.0" or "300.1.2.3" are mistyped addresses, not names: no top-level domain
        // is all digits.
        if name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad(
                "not a valid IP address, and not a DNS name (its last label is numeric)",
            ));
        }
        Ok(DomainName(name.to_ascii_lowercase()))
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IP network in CIDR notation, such as `10.0.0.0/8` or `2001:db8::/32`.
///
/// Host bits must be zero: `10.0.0.1/8` is refused rather than silently widened, since
/// it usually means a typo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// A prefix from its network address and length.
    ///
    /// # Errors
    /// When the length is longer than the address or host bits are set.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, Error> {
        let text = format!("{addr}/{len}");
        let max = max_len(addr);
        if len > max {
            return Err(Error::invalid(
                Field::Destination,
                &text,
                format!("prefix length must be 0 to {max}"),
            ));
        }
        let network = mask(addr, len);
        if network != addr {
            return Err(Error::invalid(
                Field::Destination,
                &text,
                format!("host bits are set; the network is {network}/{len}"),
            ));
        }
        Ok(IpPrefix { addr, len })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether the prefix has length 0 (it then contains every address of its family).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `ip` lies in this network (addresses of the other family never do).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// `addr` with all but the first `len` bits cleared.
pub(crate) fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

impl FromStr for IpPrefix {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::invalid(Field::Destination, input, reason);
        let (addr, len) = input
            .split_once('/')
            .ok_or_else(|| bad("missing '/length'"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("the part before '/' is not an IP address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| bad("the part after '/' is not a prefix length"))?;
        IpPrefix::new(addr, len).map_err(|e| match e {
            Error::Invalid { reason, .. } => bad(&reason),
            other => other,
        })
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Destination {
    /// One address, IPv4 or IPv6: `93.184.216.34`, `2001:db8::1`.
    Addr(IpAddr),
    /// A network: `10.0.0.0/8`, `2001:db8::/32`.
    Prefix(IpPrefix),
    /// One DNS name: `example.com` (not its subdomains).
    Name(DomainName),
    /// Every name below a domain: `*.example.com` matches `www.example.com` and
    /// `a.b.example.com`, but not `example.com` itself.
    Wildcard(DomainName),
    /// `*`: every destination no other rule matches.
    Any,
}

impl FromStr for Destination {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        if input == "*" {
            return Ok(Destination::Any);
        }
        if let Some(suffix) = input.strip_prefix("*.") {
            return suffix
                .parse()
                .map(Destination::Wildcard)
                .map_err(|e| match e {
                    Error::Invalid { reason, .. } => {
                        Error::invalid(Field::Destination, input, reason)
                    }
                    other => other,
                });
        }
        if input.contains('*') {
            return Err(Error::invalid(
                Field::Destination,
                input,
                "'*' is only allowed alone or as a leading '*.' label",
            ));
        }
        if input.contains('/') {
            return input.parse().map(Destination::Prefix);
        }
        if let Ok(addr) = input.parse::<IpAddr>() {
            return Ok(Destination::Addr(addr));
        }
        if input.contains(':') {
            return Err(Error::invalid(
                Field::Destination,
                input,
                "not a valid IPv6 address",
            ));
        }
        input.parse().map(Destination::Name)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Addr(a) => a.fmt(f),
            Destination::Prefix(p) => p.fmt(f),
            Destination::Name(n) => n.fmt(f),
            Destination::Wildcard(n) => write!(f, "*.{n}"),
            Destination::Any => f.write_str("*"),
        }
    }
}

keyword_enum! {
    /// The MPTCP packet scheduler a rule asks for.
    ///
    /// Upstream Linux selects schedulers per network namespace (`net.mptcp.scheduler`) and
    /// ships only `default`; the legacy multipath-tcp.org kernel sets them per socket.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
    #[non_exhaustive]
    pub enum Scheduler: Field::Scheduler {
        /// The kernel's default (lowest-RTT first).
        #[default]
        Default = "default",
        /// Round robin over the subflows.
        RoundRobin = "roundrobin",
        /// Every segment on every subflow.
        Redundant = "redundant",
    }
}

keyword_enum! {
    /// Whether connections to a rule's destination may go ahead: the `access=` option.
    ///
    /// Without it (`default`), a destination may be reached unless it is the proxy's own
    /// host (loopback, unspecified, the host's own addresses) or link-local; the proxy
    /// checks that on the address it is about to connect to. `allow` on an address or
    /// prefix rule opens such an address deliberately (a service on the box); `deny`
    /// refuses the destination, under any name that resolves into it when the rule is an
    /// address or prefix rule. See [`Policy::check_access`](crate::Policy::check_access).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
    #[non_exhaustive]
    pub enum Access: Field::Access {
        /// No access setting: the host itself and link-local are refused, all else allowed.
        #[default]
        Default = "default",
        /// Allowed, even when the address is the proxy's own host (address and prefix rules).
        Allow = "allow",
        /// Refused with SOCKS reply 0x02 (connection not allowed by ruleset).
        Deny = "deny",
    }
}

/// The MPTCP path manager a rule asks for: which subflows a connection gets.
///
/// Written as in the seed (`default`, `fullmesh`, `ndiffports`, `binder`), plus
/// `ndiffports:N` for N subflows over the same pair of addresses (`ndiffports` alone
/// means [`PathManager::DEFAULT_NDIFFPORTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[non_exhaustive]
pub enum PathManager {
    /// The kernel's default: one subflow from each local address the operator made
    /// available (`ip mptcp endpoint ... subflow`).
    #[default]
    Default,
    /// A subflow between every local and every remote address.
    Fullmesh,
    /// Several subflows over the same pair of addresses, from different ports: `None`
    /// when written without a count.
    Ndiffports(Option<u8>),
    /// Legacy kernel only: loose source routing over gateways.
    Binder,
}

impl PathManager {
    /// Every kind, in the order the seed lists them.
    pub const ALL: &'static [PathManager] = &[
        PathManager::Default,
        PathManager::Fullmesh,
        PathManager::Ndiffports(None),
        PathManager::Binder,
    ];

    /// Subflows `ndiffports` opens when the rule gives no count (the legacy kernel's
    /// `mptcp_ndiffports` default).
    pub const DEFAULT_NDIFFPORTS: u8 = 2;

    /// The most subflows `ndiffports:N` may ask for: the kernel caps subflows per
    /// connection at 8 (`ip mptcp limits`).
    pub const MAX_NDIFFPORTS: u8 = 8;

    /// The kind's name, without a count: `default`, `fullmesh`, `ndiffports`, `binder`.
    pub fn as_str(self) -> &'static str {
        match self {
            PathManager::Default => "default",
            PathManager::Fullmesh => "fullmesh",
            PathManager::Ndiffports(_) => "ndiffports",
            PathManager::Binder => "binder",
        }
    }

    /// For `ndiffports`, how many subflows over the same address pair.
    pub fn ndiffports(self) -> Option<u8> {
        match self {
            PathManager::Ndiffports(n) => Some(n.unwrap_or(Self::DEFAULT_NDIFFPORTS)),
            _ => None,
        }
    }
}

impl FromStr for PathManager {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let (kind, count) = match input.split_once(':') {
            Some((kind, count)) => (kind, Some(count)),
            None => (input, None),
        };
        let bad = |reason: String| Error::invalid(Field::PathManager, input, reason);
        let pm = keyword::find(kind, PathManager::ALL.iter().map(|v| (v.as_str(), *v)))
            .ok_or_else(|| {
                bad(keyword::expected(PathManager::ALL.iter().flat_map(|v| {
                    let counted = matches!(v, PathManager::Ndiffports(_)).then_some("ndiffports:N");
                    std::iter::once(v.as_str()).chain(counted)
                })))
            })?;
        match (pm, count) {
            (_, None) => Ok(pm),
            (PathManager::Ndiffports(_), Some(count)) => match count.parse::<u8>() {
                Ok(n @ 1..=Self::MAX_NDIFFPORTS) => Ok(PathManager::Ndiffports(Some(n))),
                _ => Err(bad(format!(
                    "the subflow count of ndiffports:N must be 1 to {}",
                    Self::MAX_NDIFFPORTS
                ))),
            },
            (_, Some(_)) => Err(bad(format!("only ndiffports takes a count, not {kind}"))),
        }
    }
}

impl fmt::Display for PathManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathManager::Ndiffports(Some(n)) => write!(f, "ndiffports:{n}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// How connections to a destination are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Settings {
    /// `true`: try MPTCP (falling back to TCP where the kernel cannot); `false`: plain TCP.
    pub mptcp: bool,
    /// The packet scheduler.
    pub scheduler: Scheduler,
    /// The path manager.
    pub path_manager: PathManager,
}

impl Default for Settings {
    /// The built-in default for destinations no rule matches: try MPTCP, fall back to TCP.
    fn default() -> Self {
        Settings {
            mptcp: true,
            scheduler: Scheduler::Default,
            path_manager: PathManager::Default,
        }
    }
}

/// Parses the second field of a rule: `1` (MPTCP) or `0` (plain TCP).
pub(crate) fn parse_enable(input: &str) -> Result<bool, Error> {
    match input {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(Error::invalid(
            Field::Enable,
            input,
            "expected 1 (MPTCP) or 0 (plain TCP)",
        )),
    }
}

/// A destination and its settings: one line of the rule file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// What the rule applies to.
    pub destination: Destination,
    /// How to connect there.
    pub settings: Settings,
    /// Whether connections there may go ahead at all.
    pub access: Access,
    /// Straight there, or through an upstream server.
    pub via: Via,
}

impl Rule {
    /// Builds a rule from the four text fields of the seed's format (the rule file and the
    /// REST API both come through here, so they cannot disagree). Surrounding white space
    /// is ignored.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first field that does not parse.
    pub fn from_fields(
        destination: &str,
        enable: &str,
        scheduler: &str,
        path_manager: &str,
    ) -> Result<Rule, Error> {
        Ok(Rule {
            destination: destination.trim().parse()?,
            settings: Settings {
                mptcp: parse_enable(enable.trim())?,
                scheduler: scheduler.trim().parse()?,
                path_manager: path_manager.trim().parse()?,
            },
            access: Access::Default,
            via: Via::Direct,
        })
    }

    /// Sets one option of the form `key=value` that may follow the four fields in the
    /// rule file: `access=default|allow|deny` or `via=direct|NAME|auto:NAME`. Surrounding
    /// white space is ignored.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an unknown key, a missing `=`, or a bad value.
    pub fn set_option(&mut self, option: &str) -> Result<(), Error> {
        let option = option.trim();
        let Some((key, value)) = option.split_once('=') else {
            return Err(Error::invalid(
                Field::Option,
                option,
                "expected key=value after the four fields (e.g. access=deny)",
            ));
        };
        match key.trim() {
            "access" => self.access = value.trim().parse()?,
            "via" => self.via = value.trim().parse()?,
            _ => {
                return Err(Error::invalid(
                    Field::Option,
                    option,
                    "unknown option; known: access=default|allow|deny, via=direct|NAME|auto:NAME",
                ));
            }
        }
        Ok(())
    }
}

impl FromStr for Rule {
    type Err = Error;

    /// Parses one line in the seed form: `destination,enable,scheduler,path_manager,`
    /// (the trailing comma may be left out), optionally followed by `key=value,` options
    /// (see [`Rule::set_option`]), each at most once.
    fn from_str(line: &str) -> Result<Self, Error> {
        let body = line.trim();
        let body = body.strip_suffix(',').unwrap_or(body);
        let fields: Vec<&str> = body.split(',').collect();
        let (four, options) = fields.split_at(fields.len().min(4));
        let [d, e, s, p] = four else {
            return Err(Error::invalid(
                Field::Destination,
                line,
                format!(
                    "expected 4 comma-separated values (destination,enable,scheduler,path_manager,), found {}",
                    fields.len()
                ),
            ));
        };
        let mut rule = Rule::from_fields(d, e, s, p)?;
        let mut keys: Vec<&str> = Vec::new();
        for option in options {
            let key = option.split_once('=').map_or(*option, |(k, _)| k).trim();
            if keys.contains(&key) {
                return Err(Error::invalid(
                    Field::Option,
                    option.trim(),
                    "this option is given twice",
                ));
            }
            keys.push(key);
            rule.set_option(option)?;
        }
        Ok(rule)
    }
}

impl fmt::Display for Rule {
    /// The seed's line form, trailing comma included; options only where they differ from
    /// the default, so a rule without them prints exactly as the seed wrote it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        write!(
            f,
            "{},{},{},{},",
            self.destination,
            u8::from(s.mptcp),
            s.scheduler,
            s.path_manager
        )?;
        if self.access != Access::Default {
            write!(f, "access={},", self.access)?;
        }
        if self.via != Via::Direct {
            write!(f, "via={},", self.via)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
