//! `mptcpctl doctor`: reads this host's MPTCP and routing state from the kernel itself
//! (sysctls; the `mptcp_pm` netlink family for endpoints and limits; routing netlink for
//! routes) and says, check by check, whether it can spread one connection over its
//! uplinks, and for each problem the command that fixes it. The daemon logs the same
//! findings at start.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use mptcp_netlink::{EndpointFlags, EndpointInfo, PmClient};
use mptcp_policy::{Flavour, KernelSupport};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader, RouteMessage};
use serde::{Deserialize, Serialize};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As it should be.
    Ok,
    /// Worth knowing; aggregation works.
    Note,
    /// Prevents or degrades aggregation.
    Problem,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Which check: `mptcp`, `path-manager`, `endpoints`, `endpoint`, `limits`,
    /// `routing`, `probe`, `daemon`.
    pub check: String,
    /// How it came out.
    pub verdict: Verdict,
    /// What was found.
    pub message: String,
    /// The command that fixes it, for a problem with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn new(check: &str, verdict: Verdict, message: impl Into<String>) -> Self {
        Finding {
            check: check.to_owned(),
            verdict,
            message: message.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.verdict {
            Verdict::Ok => "ok     ",
            Verdict::Note => "note   ",
            Verdict::Problem => "PROBLEM",
        };
        write!(f, "{mark} {:<12} {}", self.check, self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n        fix: {fix}")?;
        }
        Ok(())
    }
}

/// Everything the doctor found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Whether the host can spread a connection over its uplinks: no problem found.
    pub ok: bool,
    /// The checks, in order.
    pub findings: Vec<Finding>,
}

impl Report {
    fn new(findings: Vec<Finding>) -> Self {
        Report {
            ok: findings.iter().all(|f| f.verdict != Verdict::Problem),
            findings,
        }
    }
}

/// The state the checks judge, read from the kernel.
#[derive(Debug)]
struct HostState {
    kernel: KernelSupport,
    /// `Err`: the `mptcp_pm` family could not be asked (the reason).
    endpoints: Result<Vec<EndpointInfo>, String>,
    limits: Option<u32>,
    /// Address -> interface name, for every address of the host.
    addresses: Vec<(IpAddr, String)>,
    /// Interface name -> up with carrier.
    links_up: BTreeMap<String, bool>,
    /// Default routes: (table, interface, gateway).
    defaults: Vec<(u32, String, Option<IpAddr>)>,
    /// For each endpoint address: the interface a connection from it would leave
    /// through, or why none.
    leaves_through: BTreeMap<IpAddr, Result<String, String>>,
}

/// Examines this network namespace. `userspace_owned`: whether a live mptcp-socksd runs
/// the userspace path manager here (then that mode is intended).
pub async fn examine(userspace_owned: bool) -> Report {
    let state = read_state().await;
    Report::new(judge(&state, userspace_owned))
}

async fn read_state() -> HostState {
    let kernel = KernelSupport::probe();
    let mut state = HostState {
        kernel: kernel.clone(),
        endpoints: Err("not asked: no upstream MPTCP".to_owned()),
        limits: None,
        addresses: Vec::new(),
        links_up: BTreeMap::new(),
        defaults: Vec::new(),
        leaves_through: BTreeMap::new(),
    };
    state.addresses = mptcp_policy::address_interfaces()
        .unwrap_or_default()
        .into_iter()
        .map(|(ip, name)| (ip, printable_name(&name)))
        .collect();
    for (ip, name) in &state.addresses {
        if !state.links_up.contains_key(name) {
            let up = mptcp_policy::local_address_up(*ip)
                .ok()
                .flatten()
                .unwrap_or(false);
            state.links_up.insert(name.clone(), up);
        }
    }
    if kernel.flavour == Flavour::Upstream {
        match PmClient::connect().await {
            Ok(client) => {
                state.endpoints = client.endpoints().await.map_err(|e| e.to_string());
                state.limits = client.limits().await.ok().map(|l| l.subflows);
            }
            Err(e) => state.endpoints = Err(e.to_string()),
        }
    }
    if let Ok((connection, handle, _)) = rtnetlink::new_connection() {
        let task = tokio::spawn(connection);
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for route in crate::routes::default_routes(&handle, family)
                .await
                .unwrap_or_default()
            {
                if let Some(name) = mptcp_policy::interface_name(route.oif) {
                    state
                        .defaults
                        .push((route.table, printable_name(&name), route.gateway));
                }
            }
        }
        if let Ok(endpoints) = &state.endpoints {
            for endpoint in endpoints {
                let outcome = route_from(&handle, endpoint.addr).await;
                state.leaves_through.insert(endpoint.addr, outcome);
            }
        }
        task.abort();
    }
    state
}

/// An interface name as findings may show it, in messages and in the commands users
/// copy: Linux allows nearly any byte in a name (`;`, `$(`, escape sequences), so a name
/// outside `[A-Za-z0-9_.@-]` is shown as `IFACE` with the name escaped beside it.
pub(crate) fn printable_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if plain {
        name.to_owned()
    } else {
        let escaped: String = name
            .chars()
            .flat_map(char::escape_default)
            .filter(|c| c.is_ascii_alphanumeric() || "\\{}".contains(*c))
            .collect();
        format!("IFACE(name:{escaped})")
    }
}

/// The interface a connection from `source` to the internet would leave through, as
/// the kernel decides it (`ip route get 192.0.2.1 from SOURCE`).
async fn route_from(handle: &rtnetlink::Handle, source: IpAddr) -> Result<String, String> {
    let mut query = RouteMessage::default();
    // Documentation addresses: never contacted, only routed.
    let (family, destination, length) = match source {
        IpAddr::V4(_) => (
            AddressFamily::Inet,
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            32,
        ),
        IpAddr::V6(_) => (
            AddressFamily::Inet6,
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            128,
        ),
    };
    query.header.address_family = family;
    query.header.destination_prefix_length = length;
    query.header.source_prefix_length = length;
    query.header.table = RouteHeader::RT_TABLE_UNSPEC;
    query
        .attributes
        .push(RouteAttribute::Destination(destination.into()));
    query.attributes.push(RouteAttribute::Source(source.into()));
    let answer: Vec<RouteMessage> = handle
        .route()
        .get(query)
        .execute()
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    answer
        .iter()
        .flat_map(|route| &route.attributes)
        .find_map(|a| match a {
            RouteAttribute::Oif(i) => mptcp_policy::interface_name(*i),
            _ => None,
        })
        .map(|name| printable_name(&name))
        .ok_or_else(|| "no route".to_owned())
}

fn judge(state: &HostState, userspace_owned: bool) -> Vec<Finding> {
    let mut findings = Vec::new();
    let kernel = &state.kernel;
    match (kernel.flavour, kernel.enabled) {
        (Flavour::Upstream, true) => {
            findings.push(Finding::new(
                "mptcp",
                Verdict::Ok,
                "upstream MPTCP, enabled",
            ));
        }
        (Flavour::Upstream | Flavour::Legacy, false) => findings.push(
            Finding::new(
                "mptcp",
                Verdict::Problem,
                "MPTCP is disabled in this network namespace: every connection is plain TCP",
            )
            .fix("sysctl -w net.mptcp.enabled=1"),
        ),
        (Flavour::Legacy, true) => {
            findings.push(Finding::new(
                "mptcp",
                Verdict::Note,
                "legacy multipath-tcp.org kernel: its path manager is set per connection; endpoint checks do not apply",
            ));
            return findings;
        }
        _ => {
            findings.push(Finding::new(
                "mptcp",
                Verdict::Problem,
                "this kernel has no MPTCP (Linux 5.6 or newer with CONFIG_MPTCP needed): every connection is plain TCP",
            ));
            return findings;
        }
    }

    let userspace = kernel.path_manager.as_deref() == Some("userspace");
    if userspace && !userspace_owned {
        let fix = if std::path::Path::new("/proc/sys/net/mptcp/path_manager").exists() {
            "sysctl -w net.mptcp.path_manager=kernel"
        } else {
            "sysctl -w net.mptcp.pm_type=0"
        };
        findings.push(
            Finding::new(
                "path-manager",
                Verdict::Problem,
                "the namespace runs the userspace path manager and no mptcp-socksd owns it: the kernel creates no subflows, so connections stay on one uplink",
            )
            .fix(fix),
        );
    } else if userspace {
        findings.push(Finding::new(
            "path-manager",
            Verdict::Ok,
            "userspace, run by mptcp-socksd (--path-manager userspace)",
        ));
    } else {
        findings.push(Finding::new("path-manager", Verdict::Ok, "in-kernel"));
    }

    let endpoints = match &state.endpoints {
        Ok(endpoints) => endpoints,
        Err(e) => {
            findings.push(Finding::new(
                "endpoints",
                Verdict::Problem,
                format!(
                    "cannot read the MPTCP endpoints (run as root, or with CAP_NET_ADMIN): {e}"
                ),
            ));
            return findings;
        }
    };
    let interface_of = |ip: IpAddr| {
        state
            .addresses
            .iter()
            .find(|(a, _)| *a == ip)
            .map(|(_, name)| name.clone())
    };
    let subflow_endpoints: Vec<&EndpointInfo> = endpoints
        .iter()
        .filter(|e| e.flags.contains(EndpointFlags::SUBFLOW))
        .collect();
    if endpoints.is_empty() {
        let mut finding = Finding::new(
            "endpoints",
            Verdict::Problem,
            "no MPTCP endpoints: the kernel opens no second subflow, so every connection uses one uplink",
        );
        // Candidates: addresses of up, non-loopback interfaces with a default route
        // other than the main table's first.
        let uplinks: Vec<String> = uplink_addresses(state)
            .into_iter()
            .map(|(ip, dev)| format!("ip mptcp endpoint add {ip} dev {dev} subflow"))
            .collect();
        if !uplinks.is_empty() {
            finding = finding.fix(uplinks.join("; "));
        } else {
            finding = finding.fix("ip mptcp endpoint add ADDRESS dev INTERFACE subflow (for each uplink but the first)");
        }
        findings.push(finding);
    } else {
        findings.push(Finding::new(
            "endpoints",
            Verdict::Ok,
            format!(
                "{} endpoint(s), {} with the subflow flag",
                endpoints.len(),
                subflow_endpoints.len()
            ),
        ));
    }
    for endpoint in endpoints {
        let id = endpoint.id;
        let addr = endpoint.addr;
        let Some(dev) = interface_of(addr) else {
            findings.push(
                Finding::new(
                    "endpoint",
                    Verdict::Problem,
                    format!("endpoint {id} ({addr}) is an address no interface of this host has: subflows from it fail"),
                )
                .fix(format!("ip mptcp endpoint delete id {id}")),
            );
            continue;
        };
        if !state.links_up.get(&dev).copied().unwrap_or(false) {
            findings.push(
                Finding::new(
                    "endpoint",
                    Verdict::Problem,
                    format!("endpoint {id} ({addr}) is on {dev}, which is down or has no carrier: its subflows cannot come up"),
                )
                .fix(format!("ip link set dev {dev} up (or, if that uplink is gone: ip mptcp endpoint delete id {id})")),
            );
            continue;
        }
        if !endpoint.flags.contains(EndpointFlags::SUBFLOW) {
            findings.push(
                Finding::new(
                    "endpoint",
                    Verdict::Problem,
                    format!(
                        "endpoint {id} ({addr} on {dev}) has flags '{}' but not 'subflow': a client box opens no subflow from it",
                        endpoint.flags
                    ),
                )
                .fix(format!("ip mptcp endpoint delete id {id}; ip mptcp endpoint add {addr} dev {dev} subflow")),
            );
            continue;
        }
        findings.push(Finding::new(
            "endpoint",
            Verdict::Ok,
            format!("endpoint {id}: {addr} on {dev}, subflow"),
        ));
        match state.leaves_through.get(&addr) {
            Some(Ok(out)) if *out == dev => findings.push(Finding::new(
                "routing",
                Verdict::Ok,
                format!("connections from {addr} leave through {dev}"),
            )),
            other => {
                let leaves = match other {
                    Some(Ok(out)) => format!("leave through {out}, not {dev}"),
                    Some(Err(e)) => format!("have no route ({e})"),
                    None => "could not be checked".to_owned(),
                };
                let gateway = state
                    .defaults
                    .iter()
                    .find(|(_, d, g)| *d == dev && g.is_some())
                    .and_then(|(_, _, g)| *g)
                    .map_or_else(|| "GATEWAY".to_owned(), |g| g.to_string());
                // The numbers `mptcpctl setup` uses, so that its run finds these.
                let table = endpoint
                    .ifindex
                    .map_or(crate::setup::TABLE_BASE + u32::from(id), |index| {
                        crate::setup::TABLE_BASE + index.unsigned_abs()
                    });
                let family = if addr.is_ipv6() { "-6 " } else { "" };
                findings.push(
                    Finding::new(
                        "routing",
                        Verdict::Problem,
                        format!("subflows from {addr} would {leaves}: they need a source rule and a table of their own"),
                    )
                    .fix(format!(
                        "ip {family}rule add from {addr} table {table}; ip {family}route add default via {gateway} dev {dev} table {table}"
                    )),
                );
            }
        }
    }
    let needed = u32::try_from(subflow_endpoints.len()).unwrap_or(u32::MAX);
    match state.limits {
        Some(limit) if needed > 0 && limit < needed => findings.push(
            Finding::new(
                "limits",
                Verdict::Problem,
                format!("the kernel allows {limit} extra subflow(s) per connection, fewer than the {needed} subflow endpoint(s)"),
            )
            .fix(format!("ip mptcp limits set subflows {needed} add_addr_accepted {needed}")),
        ),
        Some(limit) => findings.push(Finding::new(
            "limits",
            Verdict::Ok,
            format!("{limit} extra subflow(s) per connection allowed"),
        )),
        None => {}
    }
    findings
}

/// Addresses of interfaces that are up, carry a default route in some table, and are
/// not the main table's first default route: the uplinks that want an endpoint.
fn uplink_addresses(state: &HostState) -> Vec<(IpAddr, String)> {
    let primary = state
        .defaults
        .iter()
        .find(|(table, _, _)| *table == u32::from(RouteHeader::RT_TABLE_MAIN))
        .map(|(_, dev, _)| dev.clone());
    let mut seen = Vec::new();
    for (ip, dev) in &state.addresses {
        let global = match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
        };
        if global
            && Some(dev) != primary.as_ref()
            && state.links_up.get(dev).copied().unwrap_or(false)
            && state.defaults.iter().any(|(_, d, _)| d == dev)
        {
            seen.push((*ip, dev.clone()));
        }
    }
    seen
}

/// How long the probe waits for subflows after the connection is up.
const PROBE_SETTLE: std::time::Duration = std::time::Duration::from_millis(1500);

/// `--probe HOST:PORT`: opens an MPTCP connection, sends an HTTP `HEAD` request (the
/// kernel adds subflows only once data has flowed), and reports which uplinks its
/// subflows came up on, and whether the server speaks MPTCP at all.
pub async fn probe(target: &str, timeout: std::time::Duration) -> Finding {
    let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host(target).await {
        Ok(addrs) => addrs.collect(),
        Err(e) => {
            return Finding::new(
                "probe",
                Verdict::Problem,
                format!("cannot resolve {target}: {e}"),
            );
        }
    };
    let Some(addr) = addrs.first().copied() else {
        return Finding::new(
            "probe",
            Verdict::Problem,
            format!("{target} has no address"),
        );
    };
    let settings = mptcp_policy::Settings::default();
    let (socket, opened) = match mptcp_policy::open_outbound(addr, &settings) {
        Ok(pair) => pair,
        Err(e) => {
            return Finding::new(
                "probe",
                Verdict::Problem,
                format!("cannot open a socket: {e}"),
            );
        }
    };
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    let stream = match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Finding::new(
                "probe",
                Verdict::Problem,
                format!("cannot connect to {addr}: {e}"),
            );
        }
        Err(_) => {
            return Finding::new(
                "probe",
                Verdict::Problem,
                format!("no answer from {addr} within {timeout:?}"),
            );
        }
    };
    // The kernel adds subflows once data has flowed (the connection is then fully
    // established): a request line any HTTP server answers, harmless bytes to others.
    let host = target.rsplit_once(':').map_or(target, |(host, _)| host);
    let request = format!("HEAD / HTTP/1.0\r\nHost: {host}\r\n\r\n");
    let mut stream = stream;
    let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await;
    tokio::time::sleep(PROBE_SETTLE).await;
    let target = if target == addr.to_string() {
        target.to_owned()
    } else {
        format!("{target} ({addr})")
    };
    if mptcp_policy::transport(&stream, opened) != mptcp_policy::Transport::Mptcp {
        return Finding::new(
            "probe",
            Verdict::Note,
            format!(
                "{target} does not speak MPTCP: connections to it use one uplink; \
                 a rule with via=NAME through an upstream of yours aggregates for it"
            ),
        );
    }
    let subflows = mptcp_policy::subflows(&stream)
        .ok()
        .flatten()
        .unwrap_or_default();
    let interfaces = mptcp_policy::address_interfaces().unwrap_or_default();
    let mut uplinks: Vec<String> = subflows
        .iter()
        .map(|s| {
            let ip = s.local.ip();
            let dev = interfaces
                .iter()
                .find(|(a, _)| *a == ip)
                .map_or_else(|| "?".to_owned(), |(_, d)| printable_name(d));
            format!("{ip} ({dev})")
        })
        .collect();
    uplinks.dedup();
    let message = format!(
        "{target} speaks MPTCP; {} subflow(s) came up, from {}",
        subflows.len(),
        uplinks.join(", ")
    );
    if uplinks.len() >= 2 {
        Finding::new("probe", Verdict::Ok, message)
    } else {
        Finding::new(
            "probe",
            Verdict::Problem,
            format!(
                "{message}: only one uplink carries it (see the endpoint, limits and routing checks)"
            ),
        )
    }
}

/// What a running daemon adds: its rules that are not in effect and why, and its path
/// manager. `None` when no daemon answers there.
pub fn daemon_findings(client: &crate::ApiClient) -> Vec<Finding> {
    let Ok(health) = client.health() else {
        return vec![Finding::new(
            "daemon",
            Verdict::Note,
            format!(
                "no mptcp-socksd answers at {} (its view is left out)",
                client.base()
            ),
        )];
    };
    let mut findings = vec![Finding::new(
        "daemon",
        if health.status == "ok" {
            Verdict::Ok
        } else {
            Verdict::Problem
        },
        format!("mptcp-socksd at {}: {}", client.base(), health.status),
    )];
    for problem in &health.problems {
        findings.push(Finding::new("daemon", Verdict::Problem, problem.clone()));
    }
    if let Ok(capabilities) = client.capabilities() {
        findings.push(Finding::new(
            "daemon",
            Verdict::Ok,
            format!("its path manager: {}", capabilities.path_manager_mode),
        ));
    }
    if let Ok(rules) = client.rules() {
        for rule in rules.iter().filter(|r| !r.in_effect) {
            for reason in &rule.not_in_effect {
                findings.push(Finding::new(
                    "rule",
                    Verdict::Note,
                    format!("{} not in effect: {reason}", rule.ip),
                ));
            }
        }
    }
    findings
}

impl Report {
    /// Adds findings (the probe's, the daemon's) and judges again.
    pub fn with(mut self, more: impl IntoIterator<Item = Finding>) -> Self {
        self.findings.extend(more);
        Report::new(self.findings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusual_interface_names_never_reach_a_printed_command_as_they_are() {
        assert_eq!(printable_name("eth0"), "eth0");
        assert_eq!(printable_name("wwan0.1@x"), "wwan0.1@x");
        for hostile in [
            "a;reboot",
            "$(id)",
            "`id`",
            "x\u{1b}[2Jy",
            "a b",
            "x|y&z",
            "",
        ] {
            let shown = printable_name(hostile);
            assert!(shown.starts_with("IFACE("), "{hostile:?}: {shown}");
            assert!(
                shown
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "()\\{}:".contains(c)),
                "{hostile:?}: {shown}"
            );
        }
    }
}
