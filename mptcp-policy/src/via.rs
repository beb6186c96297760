//! Which way a rule's connections take: straight to the destination, or through an
//! upstream SOCKS5 server (a VPS running the same daemon) that the box reaches over MPTCP.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Field};

/// The longest upstream name: it appears in rule files (`via=NAME`) and log lines.
const NAME_MAX: usize = 32;

/// An upstream's name (`mptcp-socksd --upstream NAME=URL`): 1 to 32 ASCII letters,
/// digits, `-` or `_`, so it fits a rule file's `key=value` option and a log line as it
/// is. `direct` is taken by [`Via::Direct`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamName(String);

impl UpstreamName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UpstreamName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        let valid = (1..=NAME_MAX).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(Error::invalid(
                Field::Via,
                name,
                "an upstream name is 1 to 32 letters, digits, '-' or '_'",
            ));
        }
        if name.eq_ignore_ascii_case("direct") {
            return Err(Error::invalid(
                Field::Via,
                name,
                "`direct` means no upstream; an upstream needs another name",
            ));
        }
        Ok(UpstreamName(name.to_owned()))
    }
}

impl fmt::Display for UpstreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A rule's `via`: `direct` (the default), an upstream's name, or `auto:NAME` (through
/// NAME until the destination is found to speak MPTCP itself, then direct).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Via {
    /// Straight to the destination.
    #[default]
    Direct,
    /// Through this upstream.
    Upstream(UpstreamName),
    /// Through this upstream, or direct where the destination speaks MPTCP.
    Auto(UpstreamName),
}

impl Via {
    /// The upstream it names, if any.
    pub fn upstream(&self) -> Option<&UpstreamName> {
        match self {
            Via::Direct => None,
            Via::Upstream(name) | Via::Auto(name) => Some(name),
        }
    }
}

impl FromStr for Via {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("direct") {
            Ok(Via::Direct)
        } else if let Some(name) = text.strip_prefix("auto:") {
            Ok(Via::Auto(name.parse()?))
        } else {
            Ok(Via::Upstream(text.parse()?))
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Direct => f.write_str("direct"),
            Via::Upstream(name) => write!(f, "{name}"),
            Via::Auto(name) => write!(f, "auto:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_values_round_trip_and_bad_ones_name_the_field() {
        for text in ["direct", "vps", "vps-2_b", "auto:vps"] {
            let via: Via = text.parse().expect(text);
            assert_eq!(via.to_string(), text);
        }
        assert_eq!("DIRECT".parse::<Via>(), Ok(Via::Direct));
        assert_eq!(
            "auto:vps"
                .parse::<Via>()
                .expect("auto")
                .upstream()
                .map(UpstreamName::as_str),
            Some("vps")
        );
        for bad in [
            "",
            "auto:",
            "auto:direct",
            "a b",
            "vps,1",
            "x=y",
            "auto:auto:x",
            &"n".repeat(33),
        ] {
            let err = bad.parse::<Via>().expect_err(bad);
            assert!(
                matches!(
                    err,
                    Error::Invalid {
                        field: Field::Via,
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }
}
