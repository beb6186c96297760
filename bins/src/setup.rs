//! `mptcpctl setup IFACE[=GATEWAY]...`: makes a host with several uplinks pass the
//! doctor, through netlink (no `ip` run): for each uplink's IPv4 address a routing table
//! with a default route out of that uplink and a source rule to it, a `subflow`
//! endpoint, and limits that allow a subflow per endpoint. Idempotent: what exists is
//! left alone. What it makes is recorded, so `--remove` undoes exactly that.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;

use futures_util::TryStreamExt;
use mptcp_netlink::{EndpointFlags, Limits, PmClient};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::{Handle, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

/// One uplink as given: `eth1` or `eth1=192.168.2.1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// The interface.
    pub interface: String,
    /// Its gateway; default: that of a default route already on the interface.
    pub gateway: Option<Ipv4Addr>,
}

impl FromStr for Uplink {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (interface, gateway) = match text.split_once('=') {
            Some((interface, gateway)) => (
                interface,
                Some(gateway.parse().map_err(|_| {
                    format!("{gateway:?} is not an IPv4 gateway address (IFACE=GATEWAY)")
                })?),
            ),
            None => (text, None),
        };
        let valid = (1..16).contains(&interface.len())
            && interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
        if !valid {
            return Err(format!("{interface:?} is not an interface name"));
        }
        Ok(Uplink {
            interface: interface.to_owned(),
            gateway,
        })
    }
}

/// One change to the host, and how to say it as an `ip` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "lowercase")]
pub enum Step {
    /// `ip rule add from ADDR table TABLE priority PRIORITY`.
    Rule {
        /// The uplink's address.
        from: Ipv4Addr,
        /// Its table.
        table: u32,
        /// The rule's priority.
        priority: u32,
    },
    /// `ip route add default via GATEWAY dev INTERFACE table TABLE`.
    Route {
        /// The table.
        table: u32,
        /// The uplink's gateway.
        gateway: Ipv4Addr,
        /// The uplink.
        interface: String,
    },
    /// `ip mptcp endpoint add ADDR dev INTERFACE subflow`.
    Endpoint {
        /// The uplink's address.
        addr: Ipv4Addr,
        /// The uplink.
        interface: String,
    },
    /// `ip mptcp limits set subflows N add_addr_accepted M`, and what they were.
    Limits {
        /// (subflows, add_addr_accepted) before.
        before: (u32, u32),
        /// (subflows, add_addr_accepted) after.
        after: (u32, u32),
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Rule {
                from,
                table,
                priority,
            } => write!(
                f,
                "ip rule add from {from} table {table} priority {priority}"
            ),
            Step::Route {
                table,
                gateway,
                interface,
            } => write!(
                f,
                "ip route add default via {gateway} dev {interface} table {table}"
            ),
            Step::Endpoint { addr, interface } => {
                write!(f, "ip mptcp endpoint add {addr} dev {interface} subflow")
            }
            Step::Limits { after, .. } => write!(
                f,
                "ip mptcp limits set subflows {} add_addr_accepted {}",
                after.0, after.1
            ),
        }
    }
}

/// Why setup could not go on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

fn err(message: impl Into<String>) -> SetupError {
    SetupError(message.into())
}

/// Tables and rule priorities are numbered from here plus the interface index, so a run
/// finds what an earlier one made (and the doctor suggests the same numbers).
pub(crate) const TABLE_BASE: u32 = 1000;

/// The kernel's most extra subflows and accepted addresses per connection.
const LIMIT_MAX: u32 = 8;

/// What `uplinks` still need, in order; empty when the host is set up.
///
/// # Errors
/// An interface that does not exist, has no IPv4 address, or has no gateway (none given
/// and no default route on it); netlink refusing to answer.
pub async fn plan(uplinks: &[Uplink]) -> Result<Vec<Step>, SetupError> {
    if uplinks.is_empty() {
        return Err(err(
            "name the uplinks: mptcpctl setup IFACE[=GATEWAY] IFACE[=GATEWAY]...",
        ));
    }
    let (handle, task) = connect()?;
    let pm = PmClient::connect()
        .await
        .map_err(|e| err(format!("cannot reach the kernel's MPTCP path manager: {e}")))?;
    let defaults = default_routes(&handle).await?;
    let rules = rule_sources(&handle).await?;
    let endpoints = pm.endpoints().await.map_err(|e| err(e.to_string()))?;
    let addresses = mptcp_policy::address_interfaces().map_err(|e| err(e.to_string()))?;
    let mut steps = Vec::new();
    let mut subflow_endpoints = endpoints
        .iter()
        .filter(|e| e.flags.contains(EndpointFlags::SUBFLOW))
        .count();
    for uplink in uplinks {
        let name = &uplink.interface;
        let index = interface_index(&handle, name).await?;
        let addr = addresses
            .iter()
            .find_map(|(ip, dev)| match ip {
                IpAddr::V4(v4) if dev == name && !v4.is_link_local() && !v4.is_loopback() => {
                    Some(*v4)
                }
                _ => None,
            })
            .ok_or_else(|| err(format!("{name} has no IPv4 address")))?;
        let table = TABLE_BASE + index;
        let gateway = match uplink.gateway {
            Some(gateway) => gateway,
            None => defaults
                .iter()
                .find(|(_, oif, _)| *oif == index)
                .and_then(|(_, _, gateway)| *gateway)
                .ok_or_else(|| {
                    err(format!(
                        "{name} has no default route to take its gateway from: give it as {name}=GATEWAY"
                    ))
                })?,
        };
        if !rules.contains(&addr) {
            steps.push(Step::Rule {
                from: addr,
                table,
                priority: table,
            });
        }
        if !defaults
            .iter()
            .any(|(t, oif, _)| *t == table && *oif == index)
        {
            steps.push(Step::Route {
                table,
                gateway,
                interface: name.clone(),
            });
        }
        match endpoints.iter().find(|e| e.addr == IpAddr::V4(addr)) {
            None => {
                steps.push(Step::Endpoint {
                    addr,
                    interface: name.clone(),
                });
                subflow_endpoints += 1;
            }
            Some(e) if !e.flags.contains(EndpointFlags::SUBFLOW) => {
                return Err(err(format!(
                    "{addr} is endpoint {} already, without the subflow flag; remove it first \
                     (ip mptcp endpoint delete id {}) and run setup again",
                    e.id, e.id
                )));
            }
            Some(_) => {}
        }
    }
    let limits = pm.limits().await.map_err(|e| err(e.to_string()))?;
    let need = u32::try_from(subflow_endpoints)
        .unwrap_or(u32::MAX)
        .min(LIMIT_MAX);
    let before = (limits.subflows, limits.add_addr_accepted);
    let after = (before.0.max(need), before.1.max(need));
    if after != before {
        steps.push(Step::Limits { before, after });
    }
    task.abort();
    Ok(steps)
}

/// Carries out `steps` (from [`plan`]) and records them for [`remove`].
///
/// # Errors
/// The first step the kernel refuses; those before it are recorded.
pub async fn apply(steps: &[Step]) -> Result<(), SetupError> {
    let (handle, task) = connect()?;
    let pm = PmClient::connect().await.map_err(|e| err(e.to_string()))?;
    let mut done = recorded()?;
    let mut outcome = Ok(());
    for step in steps {
        if let Err(e) = execute(&handle, &pm, step).await {
            outcome = Err(err(format!("{step}: {e}")));
            break;
        }
        done.push(step.clone());
    }
    record(&done)?;
    task.abort();
    outcome
}

/// Undoes what earlier runs made, newest first, and forgets it. Returns the steps undone.
///
/// # Errors
/// The record cannot be read or removed; a step the kernel refuses to undo (the rest are
/// still undone; the error names each that failed).
pub async fn remove() -> Result<Vec<Step>, SetupError> {
    let done = recorded()?;
    if done.is_empty() {
        return Ok(done);
    }
    let (handle, task) = connect()?;
    let pm = PmClient::connect().await.map_err(|e| err(e.to_string()))?;
    let mut failures = Vec::new();
    for step in done.iter().rev() {
        if let Err(e) = undo(&handle, &pm, step).await {
            failures.push(format!("undoing {step}: {e}"));
        }
    }
    task.abort();
    let path = state_file()?;
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        failures.push(format!("{}: {e}", path.display()));
    }
    if failures.is_empty() {
        Ok(done)
    } else {
        Err(err(failures.join("; ")))
    }
}

fn connect() -> Result<(Handle, tokio::task::JoinHandle<()>), SetupError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| err(format!("routing netlink: {e}")))?;
    Ok((handle, tokio::spawn(connection)))
}

async fn interface_index(handle: &Handle, name: &str) -> Result<u32, SetupError> {
    let links: Vec<_> = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_collect()
        .await
        .map_err(|_| err(format!("there is no interface {name}")))?;
    links
        .first()
        .map(|link| link.header.index)
        .ok_or_else(|| err(format!("there is no interface {name}")))
}

/// IPv4 default routes of every table: (table, interface index, gateway).
async fn default_routes(handle: &Handle) -> Result<Vec<(u32, u32, Option<Ipv4Addr>)>, SetupError> {
    let routes = crate::routes::default_routes(handle, AddressFamily::Inet)
        .await
        .map_err(|e| err(format!("reading routes: {e}")))?;
    Ok(routes
        .into_iter()
        .map(|r| {
            let gateway = match r.gateway {
                Some(IpAddr::V4(v4)) => Some(v4),
                _ => None,
            };
            (r.table, r.oif, gateway)
        })
        .collect())
}

/// Source addresses of the IPv4 rules.
async fn rule_sources(handle: &Handle) -> Result<Vec<Ipv4Addr>, SetupError> {
    let rules: Vec<_> = handle
        .rule()
        .get(rtnetlink::IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .map_err(|e| err(format!("reading rules: {e}")))?;
    Ok(rules
        .iter()
        .flat_map(|r| &r.attributes)
        .filter_map(|a| match a {
            RuleAttribute::Source(IpAddr::V4(v4)) => Some(*v4),
            _ => None,
        })
        .collect())
}

async fn execute(handle: &Handle, pm: &PmClient, step: &Step) -> Result<(), String> {
    match step {
        Step::Rule {
            from,
            table,
            priority,
        } => handle
            .rule()
            .add()
            .v4()
            .source_prefix(*from, 32)
            .table_id(*table)
            .priority(*priority)
            .action(RuleAction::ToTable)
            .execute()
            .await
            .map_err(|e| e.to_string()),
        Step::Route {
            table,
            gateway,
            interface,
        } => {
            let index = interface_index(handle, interface)
                .await
                .map_err(|e| e.to_string())?;
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(*table)
                .output_interface(index)
                .gateway(*gateway)
                .build();
            handle
                .route()
                .add(route)
                .execute()
                .await
                .map_err(|e| e.to_string())
        }
        Step::Endpoint { addr, interface } => {
            let index = interface_index(handle, interface)
                .await
                .map_err(|e| e.to_string())?;
            pm.endpoint_add(
                IpAddr::V4(*addr),
                i32::try_from(index).ok(),
                EndpointFlags::SUBFLOW,
            )
            .await
            .map_err(|e| e.to_string())
        }
        Step::Limits { after, .. } => pm
            .set_limits(Limits::new(after.0, after.1))
            .await
            .map_err(|e| e.to_string()),
    }
}

async fn undo(handle: &Handle, pm: &PmClient, step: &Step) -> Result<(), String> {
    match step {
        Step::Rule {
            from,
            table,
            priority,
        } => {
            let mut rule = rtnetlink::packet_route::rule::RuleMessage::default();
            rule.header.family = AddressFamily::Inet;
            rule.header.src_len = 32;
            rule.header.action = RuleAction::ToTable;
            rule.attributes
                .push(RuleAttribute::Source(IpAddr::V4(*from)));
            rule.attributes.push(RuleAttribute::Table(*table));
            rule.attributes.push(RuleAttribute::Priority(*priority));
            handle
                .rule()
                .del(rule)
                .execute()
                .await
                .map_err(|e| e.to_string())
        }
        Step::Route { table, gateway, .. } => {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(*table)
                .gateway(*gateway)
                .build();
            handle
                .route()
                .del(route)
                .execute()
                .await
                .map_err(|e| e.to_string())
        }
        Step::Endpoint { addr, .. } => {
            let endpoints = pm.endpoints().await.map_err(|e| e.to_string())?;
            match endpoints.iter().find(|e| e.addr == IpAddr::V4(*addr)) {
                Some(e) => pm
                    .endpoint_delete(e.id, e.addr)
                    .await
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            }
        }
        Step::Limits { before, .. } => pm
            .set_limits(Limits::new(before.0, before.1))
            .await
            .map_err(|e| e.to_string()),
    }
}

/// Where the steps made in this network namespace are recorded.
fn state_file() -> Result<PathBuf, SetupError> {
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(|e| err(format!("network namespace: {e}")))?
        .ino();
    Ok(PathBuf::from(crate::pm_sysctl::MARKER_DIR).join(format!("setup-{ino}.json")))
}

/// What earlier runs recorded. The record decides what `--remove` deletes, so it is
/// trusted only when root or this user owns it and nobody else may write it, and only
/// for tables and priorities setup itself uses.
fn recorded() -> Result<Vec<Step>, SetupError> {
    use std::os::unix::fs::MetadataExt as _;
    let path = state_file()?;
    let untrusted = |why: &str| err(format!("{}: {why}; not trusted", path.display()));
    match std::fs::read(&path) {
        Ok(bytes) => {
            let meta = std::fs::metadata(&path).map_err(|e| untrusted(&e.to_string()))?;
            let owner_ok = meta.uid() == 0 || meta.uid() == mptcp_policy::effective_uid();
            if !owner_ok || meta.mode() & 0o022 != 0 {
                return Err(untrusted("owned by another user, or writable by others"));
            }
            let steps: Vec<Step> =
                serde_json::from_slice(&bytes).map_err(|e| untrusted(&e.to_string()))?;
            let ours = |number: &u32| *number >= TABLE_BASE;
            let all_ours = steps.iter().all(|step| match step {
                Step::Rule {
                    table, priority, ..
                } => ours(table) && ours(priority),
                Step::Route { table, .. } => ours(table),
                Step::Endpoint { .. } | Step::Limits { .. } => true,
            });
            if all_ours {
                Ok(steps)
            } else {
                Err(untrusted("it names tables setup does not make"))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(err(format!("{}: {e}", path.display()))),
    }
}

fn record(steps: &[Step]) -> Result<(), SetupError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let path = state_file()?;
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let text = serde_json::to_vec_pretty(steps).map_err(|e| err(e.to_string()))?;
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| err(e.to_string()))?;
    std::fs::write(tmp.path(), text).map_err(|e| err(e.to_string()))?;
    tmp.persist(&path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplinks_parse_or_say_why() {
        assert_eq!(
            "eth1=192.168.2.1".parse::<Uplink>(),
            Ok(Uplink {
                interface: "eth1".into(),
                gateway: Some(Ipv4Addr::new(192, 168, 2, 1))
            })
        );
        assert_eq!("wwan0".parse::<Uplink>().map(|u| u.gateway), Ok(None));
        for bad in ["", "eth1=gw", "eth 1", "a-very-long-interface-name", "x;rm"] {
            assert!(bad.parse::<Uplink>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn steps_read_as_the_ip_commands_they_stand_for() {
        let steps = [
            Step::Rule {
                from: Ipv4Addr::new(10, 0, 2, 1),
                table: 1003,
                priority: 1003,
            },
            Step::Route {
                table: 1003,
                gateway: Ipv4Addr::new(10, 0, 2, 254),
                interface: "eth1".into(),
            },
            Step::Endpoint {
                addr: Ipv4Addr::new(10, 0, 2, 1),
                interface: "eth1".into(),
            },
            Step::Limits {
                before: (0, 0),
                after: (2, 2),
            },
        ];
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "ip rule add from 10.0.2.1 table 1003 priority 1003",
                "ip route add default via 10.0.2.254 dev eth1 table 1003",
                "ip mptcp endpoint add 10.0.2.1 dev eth1 subflow",
                "ip mptcp limits set subflows 2 add_addr_accepted 2",
            ]
        );
        let json = serde_json::to_string(&steps).expect("json");
        assert_eq!(
            serde_json::from_str::<Vec<Step>>(&json).expect("back"),
            steps
        );
    }
}
