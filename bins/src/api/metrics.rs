//! `GET /metrics`: the daemon's counters in the Prometheus/OpenMetrics text format,
//! read at scrape time from the SOCKS server, its upstreams and the rule store. No label
//! takes values from outside (no destinations, no clients): local addresses and
//! interfaces, transports, reply codes and upstream names are all bounded by the host's
//! own configuration.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use mptcp_socks::{Reply, Server};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::store::RuleStore;

/// The text `GET /metrics` answers with, and its content type.
pub(super) fn render(server: Option<&Server>, store: &RuleStore) -> Result<String, fmt::Error> {
    let mut registry = Registry::with_prefix("mptcp_socks");
    registry.register_collector(Box::new(Snapshot {
        server: server.cloned(),
        store: store.clone(),
    }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The content type of [`render`]'s text.
pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
struct Snapshot {
    server: Option<Server>,
    store: RuleStore,
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: its values by label set.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    values: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in values {
        if labels.is_empty() {
            value.encode(metric.encode_family(&Vec::<(&str, String)>::new())?)?;
        } else {
            value.encode(metric.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// Counters without labels: (name, help, value).
fn plain_counters(
    encoder: &mut DescriptorEncoder<'_>,
    counters: &[(&str, &str, u64)],
) -> Result<(), fmt::Error> {
    for &(name, help, value) in counters {
        family(
            encoder,
            name,
            help,
            MetricType::Counter,
            [(Labels::new(), counter(value))],
        )?;
    }
    Ok(())
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn reply_label(reply: Reply) -> &'static str {
    match reply {
        Reply::GeneralFailure => "general_failure",
        Reply::ConnectionNotAllowed => "not_allowed",
        Reply::NetworkUnreachable => "network_unreachable",
        Reply::HostUnreachable => "host_unreachable",
        Reply::ConnectionRefused => "connection_refused",
        Reply::TtlExpired => "timeout",
        Reply::CommandNotSupported => "command_not_supported",
        Reply::AddressTypeNotSupported => "address_type_not_supported",
        _ => "other",
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let counts = self.store.counts();
        let store = [
            (
                "rule_file_reloads",
                "Reloads that put a changed rule file in force.",
                counts.reloads,
            ),
            (
                "rule_file_reload_errors",
                "Reloads refused: the file is broken or not to be trusted.",
                counts.reload_errors,
            ),
            (
                "api_writes",
                "Rule changes written to the rule file through the API.",
                counts.writes,
            ),
        ];
        plain_counters(&mut encoder, &store)?;
        let Some(server) = &self.server else {
            return Ok(());
        };
        let stats = server.stats();
        let snapshot = stats.snapshot();
        family(
            &mut encoder,
            "connections_accepted",
            "Client connections accepted.",
            MetricType::Counter,
            [(Labels::new(), counter(snapshot.accepted))],
        )?;
        family(
            &mut encoder,
            "connections_open",
            "Client connections open now.",
            MetricType::Gauge,
            [(
                Labels::new(),
                ConstGauge::new(i64::try_from(snapshot.active).unwrap_or(i64::MAX)),
            )],
        )?;
        family(
            &mut encoder,
            "connections",
            "Outbound connections by transport: mptcp, fallback (MPTCP asked for, TCP got) or tcp.",
            MetricType::Counter,
            [
                ("mptcp", snapshot.mptcp),
                ("fallback", snapshot.fallback),
                ("tcp", snapshot.tcp),
            ]
            .map(|(transport, n)| (vec![("transport", transport.to_owned())], counter(n))),
        )?;
        family(
            &mut encoder,
            "connections_failed",
            "Requests that got no outbound connection, by the SOCKS reply they got.",
            MetricType::Counter,
            stats
                .failed_by_reply()
                .into_iter()
                .map(|(reply, n)| (vec![("reply", reply_label(reply).to_owned())], counter(n))),
        )?;
        family(
            &mut encoder,
            "connections_routed",
            "Outbound connections by route: direct, or the upstream they went through.",
            MetricType::Counter,
            stats
                .by_via()
                .into_iter()
                .map(|(via, n)| (vec![("via", via)], counter(n))),
        )?;
        family(
            &mut encoder,
            "relayed_bytes",
            "Bytes relayed: up (client to destination) and down.",
            MetricType::Counter,
            [("up", snapshot.bytes_up), ("down", snapshot.bytes_down)]
                .map(|(direction, n)| (vec![("direction", direction.to_owned())], counter(n))),
        )?;
        // Closed connections' subflows plus the live ones', by local address.
        let mut uplinks: BTreeMap<IpAddr, (u64, u64)> = BTreeMap::new();
        for (ip, sent, received) in stats.closed_uplink_bytes() {
            let entry = uplinks.entry(ip).or_default();
            entry.0 += sent;
            entry.1 += received;
        }
        for connection in server.connections().list() {
            for subflow in &connection.subflows {
                let entry = uplinks.entry(subflow.local.ip()).or_default();
                entry.0 += subflow.bytes_acked;
                entry.1 += subflow.bytes_received;
            }
        }
        let interfaces = mptcp_policy::address_interfaces().unwrap_or_default();
        let interface = |ip: IpAddr| {
            interfaces
                .iter()
                .find(|(addr, _)| *addr == ip)
                // Names may hold any byte but '/' and blanks: only plain ones go in a label.
                .map_or_else(
                    || "unknown".to_owned(),
                    |(_, name)| crate::doctor::printable_name(name),
                )
        };
        family(
            &mut encoder,
            "uplink_bytes",
            "Bytes the subflows of MPTCP connections carried, by local address (so by uplink): sent (and acknowledged) or received.",
            MetricType::Counter,
            uplinks.into_iter().flat_map(|(ip, (sent, received))| {
                let labels = |direction: &str| {
                    vec![
                        ("local_address", ip.to_string()),
                        ("interface", interface(ip)),
                        ("direction", direction.to_owned()),
                    ]
                };
                [
                    (labels("sent"), counter(sent)),
                    (labels("received"), counter(received)),
                ]
            }),
        )?;
        let subflows = [
            (
                "subflows_created",
                "Subflows MPTCP connections had beyond their first.",
                snapshot.subflows_created,
            ),
            (
                "subflows_lost",
                "Subflows that went away while their connection went on.",
                snapshot.subflows_lost,
            ),
            (
                "subflows_recreated",
                "Subflows that came back on a local address whose subflow was lost.",
                snapshot.subflows_recreated,
            ),
        ];
        plain_counters(&mut encoder, &subflows)?;
        let latency = stats.connect_latency();
        let mut metric = encoder.encode_descriptor(
            "connect_seconds",
            "Time from the request to the established outbound connection.",
            None,
            MetricType::Histogram,
        )?;
        // The encoder wants each bucket's own count (it adds them up) and f64::MAX for +Inf.
        let mut below = 0;
        let per_bucket: Vec<(f64, u64)> = latency
            .buckets
            .iter()
            .map(|&(bound, cumulative)| {
                let own = cumulative - below;
                below = cumulative;
                (if bound.is_finite() { bound } else { f64::MAX }, own)
            })
            .collect();
        metric.encode_histogram::<Vec<(String, String)>>(
            latency.sum_seconds,
            latency.count,
            &per_bucket,
            None,
        )?;
        let upstreams = server.upstreams();
        family(
            &mut encoder,
            "upstream_up",
            "1 while the upstream works (or has not been tried), 0 while it is down.",
            MetricType::Gauge,
            upstreams.iter().map(|u| {
                (
                    vec![("upstream", u.name.to_string())],
                    ConstGauge::new(i64::from(u.state() != "down")),
                )
            }),
        )?;
        family(
            &mut encoder,
            "upstream_connections",
            "Connections each upstream carried.",
            MetricType::Counter,
            upstreams.iter().map(|u| {
                (
                    vec![("upstream", u.name.to_string())],
                    counter(u.connections),
                )
            }),
        )?;
        Ok(())
    }
}
