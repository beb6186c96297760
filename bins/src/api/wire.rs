//! What travels over the REST API: the JSON answers, the body of a rule change, and the
//! path of a rule. The server and [`crate::ApiClient`] both use these, so the schema exists
//! once.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use mptcp_policy::{Access, Destination, Limitation, Rule, Settings, UpstreamName, Via};
use mptcp_socks::{Connection, LearnedAddress, UpstreamStatus};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};

use crate::host::LocalEndpoint;
use crate::store::ReloadError;

/// A rule as the API sends it, with the seed's keys, and whether it takes effect here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    /// The destination: address, prefix, name, wildcard or `*`.
    pub ip: String,
    /// Whether the outbound connection is opened as MPTCP.
    pub enable: bool,
    /// `default`, `roundrobin` or `redundant`.
    pub scheduler: String,
    /// `default`, `fullmesh`, `ndiffports[:N]` or `binder`.
    pub path_manager: String,
    /// `default` (the proxy's own host and link-local refused, all else allowed),
    /// `allow` or `deny`: the rule file's `access=` option.
    #[serde(default = "default_access")]
    pub access: String,
    /// `direct`, an upstream's name or `auto:NAME`: the rule file's `via=` option. Left
    /// out of answers for `direct`, so that a seed client sees the seed's keys.
    #[serde(default = "default_via", skip_serializing_if = "is_direct")]
    pub via: String,
    /// Whether everything the rule asks for happens on this host.
    #[serde(default = "yes")]
    pub in_effect: bool,
    /// Why not, when `in_effect` is false: one reason per setting, with the fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_in_effect: Vec<String>,
}

fn yes() -> bool {
    true
}

fn default_access() -> String {
    "default".to_owned()
}

fn default_via() -> String {
    "direct".to_owned()
}

fn is_direct(via: &str) -> bool {
    via == "direct"
}

impl RuleView {
    /// `rule`, with what keeps it from taking effect (see [`mptcp_policy::limitations`]):
    /// also a `via` naming none of the `upstreams` the daemon has (its connections go
    /// direct).
    pub fn new(rule: &Rule, limitations: &[Limitation], upstreams: &[UpstreamName]) -> Self {
        let mut not_in_effect: Vec<String> = limitations.iter().map(ToString::to_string).collect();
        if let Some(name) = rule.via.upstream()
            && !upstreams.contains(name)
        {
            not_in_effect.push(format!(
                "via={}: no upstream named {name} is configured, so connections to this \
                 destination go direct; start mptcp-socksd with --upstream {name}=URL",
                rule.via
            ));
        }
        RuleView {
            ip: rule.destination.to_string(),
            enable: rule.settings.mptcp,
            scheduler: rule.settings.scheduler.as_str().to_owned(),
            path_manager: rule.settings.path_manager.to_string(),
            access: rule.access.as_str().to_owned(),
            via: rule.via.to_string(),
            in_effect: not_in_effect.is_empty(),
            not_in_effect,
        }
    }
}

/// The answer of `GET /health`. Without the token (when one is set) only `status` is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"`, or `"degraded"` while something keeps the daemon from doing its job fully:
    /// the rule file on disk is broken, an upstream is down, the userspace path manager
    /// has stopped (see `problems`).
    pub status: String,
    /// Number of rules in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<usize>,
    /// The rule file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_file: Option<String>,
    /// The last reload of the rule file failed with this (the previous rules are in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload_error: Option<ReloadError>,
    /// Each `--upstream`, with whether it works.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamView>,
    /// Why `status` is `degraded`: each problem with what it costs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// One upstream in `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamView {
    /// What rules call it.
    pub name: String,
    /// Its URL, without the password.
    pub url: String,
    /// `up` (it worked last), `down` (it failed last: its destinations go direct) or
    /// `unknown` (not used yet).
    pub state: String,
    /// Connections it carried.
    pub connections: u64,
    /// Of those, how many resumed a TLS session.
    pub resumed_sessions: u64,
    /// Seconds since it last carried a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_s_ago: Option<u64>,
    /// Its last failure, while it is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<UpstreamFailureView>,
    /// Failures in a row.
    pub failures_in_a_row: u32,
    /// Seconds until it is tried again (it is skipped meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_s: Option<u64>,
}

/// Why an upstream is down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamFailureView {
    /// `unreachable`, `tls`, `authentication` or `protocol`.
    pub kind: String,
    /// What happened.
    pub message: String,
}

impl From<&UpstreamStatus> for UpstreamView {
    fn from(status: &UpstreamStatus) -> Self {
        UpstreamView {
            name: status.name.to_string(),
            url: status.url.clone(),
            state: status.state().to_owned(),
            connections: status.connections,
            resumed_sessions: status.resumed_sessions,
            last_success_s_ago: status.last_success.map(seconds_since),
            failure: status.failure.as_ref().map(|f| UpstreamFailureView {
                kind: f.kind.as_str().to_owned(),
                message: f.message.clone(),
            }),
            failures_in_a_row: status.failures_in_a_row,
            // Rounded up: "0" would read as "now".
            retry_in_s: status
                .retry_in
                .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
        }
    }
}

/// One answer in `GET /learned`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedView {
    /// The destination address and port.
    pub address: SocketAddr,
    /// Whether it speaks MPTCP (then `auto:` rules send it direct).
    pub mptcp: bool,
    /// Seconds since it was learned.
    pub learned_s_ago: u64,
    /// Seconds it still holds.
    pub expires_in_s: u64,
}

impl From<&LearnedAddress> for LearnedView {
    fn from(learned: &LearnedAddress) -> Self {
        LearnedView {
            address: learned.addr,
            mptcp: learned.mptcp,
            learned_s_ago: seconds_since(learned.learned_at),
            expires_in_s: learned.expires_in.as_secs(),
        }
    }
}

fn seconds_since(when: SystemTime) -> u64 {
    SystemTime::now()
        .duration_since(when)
        .map_or(0, |age| age.as_secs())
}

/// The answer of `GET /capabilities`: what this host offers the rules, now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `upstream`, `legacy` (multipath-tcp.org) or `none`.
    pub kernel: String,
    /// Whether MPTCP sockets can be opened (`net.mptcp.enabled`).
    pub mptcp_enabled: bool,
    /// The daemon's mode: `in-kernel` or `userspace` (`mptcp-socksd --path-manager`).
    pub path_manager_mode: String,
    /// The namespace's path manager (`net.mptcp.path_manager`: `kernel`, `userspace`; on
    /// the legacy kernel its default one).
    pub kernel_path_manager: Option<String>,
    /// The namespace's scheduler (`net.mptcp.scheduler`).
    pub scheduler: Option<String>,
    /// `net.mptcp.available_schedulers`.
    pub available_schedulers: Vec<String>,
    /// The local addresses subflows may use (`ip mptcp endpoint`).
    pub local_addresses: Vec<LocalAddressView>,
    /// What an operator should know about this combination (e.g. a mode the namespace
    /// does not match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One address of the inventory, as `GET /capabilities` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalAddressView {
    /// The kernel's address id.
    pub id: u8,
    /// The address.
    pub addr: IpAddr,
    /// `subflow`, `signal`, `backup`, `fullmesh`, ...
    pub flags: Vec<String>,
    /// The interface name, if the endpoint is bound to one that exists.
    pub interface: Option<String>,
    /// The interface index, if the endpoint is bound to one.
    #[serde(default)]
    pub ifindex: Option<u32>,
}

impl From<&LocalEndpoint> for LocalAddressView {
    fn from(endpoint: &LocalEndpoint) -> Self {
        LocalAddressView {
            id: endpoint.id,
            addr: endpoint.addr,
            flags: endpoint.flags.clone(),
            interface: endpoint.interface(),
            ifindex: endpoint.ifindex,
        }
    }
}

/// One live connection, as `GET /connections` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionView {
    /// Unique for the life of the daemon.
    pub id: u64,
    /// The SOCKS client.
    pub client: SocketAddr,
    /// The target as the client asked for it: `name:port` or `address:port`.
    pub target: String,
    /// The address the proxy connected to: the destination, or the upstream.
    pub remote: SocketAddr,
    /// `direct`, or the upstream the connection goes through.
    #[serde(default = "default_via")]
    pub via: String,
    /// Why it went direct although its rule names an upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_direct: Option<String>,
    /// The proxy's end of the first subflow.
    pub local: SocketAddr,
    /// The destination of the matching rule, or `"default"` when none matched.
    pub rule: String,
    /// `mptcp`, `fallback` (asked for MPTCP, got TCP) or `tcp`.
    pub transport: String,
    /// The MPTCP connection token.
    pub token: Option<u32>,
    /// Seconds since the outbound connection was established.
    pub age_s: u64,
    /// The subflows now; empty unless MPTCP.
    pub subflows: Vec<SubflowView>,
}

/// One subflow of a live MPTCP connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubflowView {
    /// This host's end: which address, so which link.
    pub local: SocketAddr,
    /// The server's end.
    pub remote: SocketAddr,
    /// Bytes sent on it and acknowledged by the server.
    pub bytes_acked: u64,
    /// Bytes received on it.
    pub bytes_received: u64,
    /// Smoothed round-trip time, in milliseconds.
    pub rtt_ms: f64,
}

impl From<&Connection> for ConnectionView {
    fn from(c: &Connection) -> Self {
        ConnectionView {
            id: c.id,
            client: c.client,
            target: c.target.clone(),
            remote: c.remote,
            via: c.via.as_ref().map_or_else(default_via, ToString::to_string),
            why_direct: c.why_direct.clone(),
            local: c.local,
            rule: c
                .rule
                .as_ref()
                .map_or_else(|| "default".to_owned(), ToString::to_string),
            transport: c.transport.as_str().to_owned(),
            token: c.token,
            age_s: seconds_since(c.since),
            subflows: c
                .subflows
                .iter()
                .map(|s| SubflowView {
                    local: s.local,
                    remote: s.remote,
                    bytes_acked: s.bytes_acked,
                    bytes_received: s.bytes_received,
                    rtt_ms: f64::from(s.rtt_us) / 1000.0,
                })
                .collect(),
        }
    }
}

/// The body of `POST /rules` and `PUT /rules/{destination}`, with the seed's keys. The
/// values are text, as in the rule file, and become a rule only through its parser
/// ([`RuleRequest::to_rule`]), so the REST API and the file cannot disagree.
///
/// The server reads a body more leniently than this type writes one (see the module docs
/// of the API: `enable` as a boolean or a number, `scheduler` and `path_manager` left
/// out); it refuses any key not in [`RuleRequest::KEYS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRequest {
    /// The destination: required by `POST /rules`; `PUT` takes it from the path, and
    /// refuses a different one here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// `"1"` for MPTCP, `"0"` for plain TCP (the seed's strings).
    pub enable: String,
    /// `default`, `roundrobin` or `redundant`.
    pub scheduler: String,
    /// `default`, `fullmesh`, `ndiffports[:N]` or `binder`.
    pub path_manager: String,
    /// `default`, `allow` or `deny`; left out, the rule gets `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    /// `direct`, an upstream's name or `auto:NAME`; left out, the rule goes direct.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl RuleRequest {
    /// Every key a body may have, in the order the API's messages list them.
    pub const KEYS: [&'static str; 6] =
        ["ip", "enable", "scheduler", "path_manager", "access", "via"];

    /// The body that asks for `settings` and `access` at `destination`, written as the rule
    /// file writes them (so `ndiffports:3` keeps its count). `destination` is sent as
    /// given: the server judges it.
    pub fn new(destination: impl Into<String>, settings: &Settings, access: Access) -> Self {
        RuleRequest {
            ip: Some(destination.into()),
            enable: if settings.mptcp { "1" } else { "0" }.to_owned(),
            scheduler: settings.scheduler.to_string(),
            path_manager: settings.path_manager.to_string(),
            access: Some(access.to_string()),
            via: None,
        }
    }

    /// The same body with `via` (left out for `direct`, so a seed-shaped body stays one).
    #[must_use]
    pub fn with_via(mut self, via: &Via) -> Self {
        self.via = (*via != Via::Direct).then(|| via.to_string());
        self
    }

    /// The rule this body asks for at `destination`, through the rule file's parser
    /// ([`Rule::from_fields`], and the `access=` and `via=` options').
    ///
    /// # Errors
    /// [`mptcp_policy::Error::Invalid`] naming the first value that does not parse.
    pub fn to_rule(&self, destination: &str) -> Result<Rule, mptcp_policy::Error> {
        let mut rule = Rule::from_fields(
            destination,
            &self.enable,
            &self.scheduler,
            &self.path_manager,
        )?;
        if let Some(access) = &self.access {
            rule.access = access.parse()?;
        }
        if let Some(via) = &self.via {
            rule.via = via.parse()?;
        }
        Ok(rule)
    }
}

/// Characters escaped in a destination put in a path: everything that is not part of a
/// path segment, and `/` (so a prefix stays one segment), `%`.
pub const DESTINATION_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// The path of the rule for `destination`: `/rules/10.0.0.0%2F8`.
pub fn rule_location(destination: &Destination) -> String {
    rule_path(&destination.to_string())
}

/// The path of the rule for a destination as the operator typed it.
pub fn rule_path(destination: &str) -> String {
    format!(
        "/rules/{}",
        utf8_percent_encode(destination, DESTINATION_ESCAPES)
    )
}

/// The path tail after `/rules/`, percent-decoded; `None` if that is not UTF-8. A trailing
/// `/` is ignored.
pub(crate) fn decode_destination(tail: &str) -> Option<String> {
    let tail = tail.strip_suffix('/').unwrap_or(tail);
    percent_decode_str(tail)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use mptcp_policy::{PathManager, Scheduler};

    use super::*;

    #[test]
    fn rule_paths_escape_the_prefix_slash() {
        assert_eq!(rule_path("10.0.0.0/8"), "/rules/10.0.0.0%2F8");
        assert_eq!(rule_path("*.example.com"), "/rules/*.example.com");
        assert_eq!(rule_path("2001:db8::/32"), "/rules/2001:db8::%2F32");
        assert_eq!(
            decode_destination("10.0.0.0%2F8").as_deref(),
            Some("10.0.0.0/8")
        );
        assert_eq!(
            decode_destination("10.0.0.0/8/").as_deref(),
            Some("10.0.0.0/8")
        );
        assert_eq!(decode_destination("%FF"), None);
    }

    /// What the client writes, the server's parser reads back as the same rule: the
    /// request schema cannot lose a setting (as `ndiffports:3` once lost its count).
    #[test]
    fn requests_round_trip_through_the_rule_parser() {
        for (destination, mptcp, scheduler, path_manager, access, via) in [
            (
                "10.0.0.0/8",
                true,
                "default",
                "default",
                "default",
                "direct",
            ),
            (
                "n.example",
                true,
                "redundant",
                "ndiffports:3",
                "allow",
                "vps",
            ),
            (
                "*.example.com",
                false,
                "roundrobin",
                "fullmesh",
                "deny",
                "auto:vps-2",
            ),
            (
                "2001:db8::1",
                true,
                "default",
                "binder",
                "default",
                "direct",
            ),
        ] {
            let settings = Settings {
                mptcp,
                scheduler: scheduler.parse::<Scheduler>().expect("scheduler"),
                path_manager: path_manager.parse::<PathManager>().expect("path manager"),
            };
            let access: Access = access.parse().expect("access");
            let via: Via = via.parse().expect("via");
            let request = RuleRequest::new(destination, &settings, access).with_via(&via);
            // As the client sends it, as the server reads it.
            let body = serde_json::to_vec(&request).expect("serializes");
            let read = crate::api::body::parse_request(Some("application/json"), &body)
                .expect("the server reads the client's body");
            assert_eq!(read, request);
            let rule = read.to_rule(destination).expect("parses");
            assert_eq!(rule.destination.to_string(), destination);
            assert_eq!(rule.settings, settings, "{request:?}");
            assert_eq!(rule.access, access, "{request:?}");
            assert_eq!(rule.via, via, "{request:?}");
        }
    }

    /// The keys the server accepts are the keys the client writes.
    #[test]
    fn request_keys_are_the_serialized_keys() {
        let settings = Settings::default();
        let via: Via = "auto:vps".parse().expect("via");
        let request = RuleRequest::new("a.example", &settings, Access::Default).with_via(&via);
        let serde_json::Value::Object(object) = serde_json::to_value(&request).expect("serializes")
        else {
            panic!("not an object");
        };
        let mut written: Vec<&str> = object.keys().map(String::as_str).collect();
        let mut keys = RuleRequest::KEYS.to_vec();
        written.sort_unstable();
        keys.sort_unstable();
        assert_eq!(written, keys);
    }
}
