//! `GET /metrics` read by a real OpenMetrics parser (the Prometheus project's Python
//! client, Debian's python3-prometheus-client): after a relayed MPTCP transfer its bytes
//! per uplink are those `/connections` showed, and its counters follow what happened.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, curl};
use mptcp_test_support::socks::blocking::{self as socks, Target};

/// Loopback opened on purpose (the echo server listens there), MPTCP on.
const RULES: &str = "127.0.0.1,1,default,default,access=allow,\n.\n";
const BYTES: usize = 256 * 1024;
/// Debian's interpreter, which has the python3-prometheus-client package (a pyenv
/// `python3` first in PATH may not).
const PYTHON: &str = "/usr/bin/python3";

/// Every sample: (name, sorted labels) -> value.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// Parses OpenMetrics text with `prometheus_client.openmetrics.parser` and returns every
/// sample as (name, labels) -> value.
fn parse(text: &str) -> Samples {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(json.dumps([s.name, sorted(s.labels.items()), s.value]))
"#;
    let mut child = Command::new(PYTHON)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let (name, labels, value): (String, Vec<(String, String)>, f64) =
                serde_json::from_str(line).expect("a sample");
            ((name, labels), value)
        })
        .collect()
}

fn parser_available() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .status()
        .is_ok_and(|s| s.success())
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    *samples
        .get(&(name.to_owned(), labels.clone()))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {samples:?}"))
}

fn metrics(daemon: &Daemon) -> Samples {
    let mut cmd = Command::new("curl");
    cmd.arg(daemon.api_url("/metrics"));
    let (status, body) = curl(cmd).expect("curl");
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    let samples = parse(&body);
    // Only labels whose values the host's configuration bounds: nothing per destination
    // or per client.
    let bounded = [
        "transport",
        "reply",
        "via",
        "direction",
        "local_address",
        "interface",
        "upstream",
        "le",
    ];
    for (name, labels) in samples.keys() {
        for (key, _) in labels {
            assert!(bounded.contains(&key.as_str()), "{name} has label {key}");
        }
    }
    samples
}

#[test]
fn metrics_parse_and_count_what_happened_bytes_per_uplink_as_connections_showed() {
    if !mptcp_test_support::require_mptcp() {
        return;
    }
    if !parser_available()
        && !mptcp_test_support::skip(
            "no OpenMetrics parser: apt-get install python3-prometheus-client",
        )
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::write(&rules, RULES).expect("rules");
    let daemon = Daemon::with_api(&rules).expect("daemon");
    let echo = mptcp_test_support::mptcp_echo_server();

    // One refused connect and one API write, to be counted.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let refused = socks::connect(daemon.socks, Target::Addr(closed), None);
    assert!(refused.is_err());
    let mut post = Command::new("curl");
    post.args([
        "-X",
        "POST",
        "--json",
        r#"{"ip": "192.0.2.9", "enable": "0"}"#,
    ])
    .arg(daemon.api_url("/rules"));
    assert_eq!(curl(post).expect("curl").0, 201);

    let mut stream = socks::connect(daemon.socks, Target::Addr(echo), None).expect("through");
    common::echo_bytes(&mut stream, BYTES);

    // Settled: the subflow's counters no longer move.
    std::thread::sleep(Duration::from_millis(300));
    let connections: serde_json::Value = {
        let mut cmd = Command::new("curl");
        cmd.arg(daemon.api_url("/connections"));
        serde_json::from_str(&curl(cmd).expect("curl").1).expect("json")
    };
    let subflow = &connections[0]["subflows"][0];
    let (acked, received) = (
        subflow["bytes_acked"].as_f64().expect("acked"),
        subflow["bytes_received"].as_f64().expect("received"),
    );
    assert!(
        acked >= BYTES as f64 && received >= BYTES as f64,
        "{connections}"
    );

    let m = metrics(&daemon);
    let uplink = |direction| {
        value(
            &m,
            "mptcp_socks_uplink_bytes_total",
            &[
                ("local_address", "127.0.0.1"),
                ("interface", "lo"),
                ("direction", direction),
            ],
        )
    };
    assert_eq!(
        uplink("sent"),
        acked,
        "sent on the uplink as /connections showed"
    );
    assert_eq!(uplink("received"), received);
    assert_eq!(
        value(
            &m,
            "mptcp_socks_connections_total",
            &[("transport", "mptcp")]
        ),
        1.0
    );
    assert_eq!(
        value(&m, "mptcp_socks_connections_accepted_total", &[]),
        2.0
    );
    assert_eq!(value(&m, "mptcp_socks_connections_open", &[]), 1.0);
    assert_eq!(
        value(
            &m,
            "mptcp_socks_connections_failed_total",
            &[("reply", "connection_refused")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "mptcp_socks_connections_routed_total",
            &[("via", "direct")]
        ),
        1.0
    );
    assert!(
        value(
            &m,
            "mptcp_socks_relayed_bytes_total",
            &[("direction", "up")]
        ) >= BYTES as f64
    );
    assert!(
        value(
            &m,
            "mptcp_socks_relayed_bytes_total",
            &[("direction", "down")]
        ) >= BYTES as f64
    );
    assert_eq!(value(&m, "mptcp_socks_connect_seconds_count", &[]), 1.0);
    assert_eq!(
        value(&m, "mptcp_socks_connect_seconds_bucket", &[("le", "+Inf")]),
        1.0
    );
    assert_eq!(value(&m, "mptcp_socks_api_writes_total", &[]), 1.0);
    assert_eq!(
        value(&m, "mptcp_socks_rule_file_reload_errors_total", &[]),
        0.0
    );

    // Closed, the connection's subflow bytes stay counted.
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(&daemon);
        if value(&m, "mptcp_socks_connections_open", &[]) == 0.0 {
            let sent = value(
                &m,
                "mptcp_socks_uplink_bytes_total",
                &[
                    ("local_address", "127.0.0.1"),
                    ("interface", "lo"),
                    ("direction", "sent"),
                ],
            );
            assert!(sent >= acked, "{sent} < {acked}");
            break;
        }
        assert!(Instant::now() < deadline, "the connection did not close");
        std::thread::sleep(Duration::from_millis(50));
    }
}
