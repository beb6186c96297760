//! `mptcpctl doctor` against the real kernel: a box namespace with two uplinks set up as
//! a client box should be, then broken one way at a time. For each breakage the doctor
//! exits 4 and names the problem and its fix; on the healthy box it exits 0.
//!
//! Needs root and network namespaces: skipped with a message on a laptop, a failure when
//! `CI` is set.

mod common;

use mptcp_test_support::netns::Namespace;
use mptcp_test_support::require_netns;
use serde_json::Value;

/// A box with uplinks `u1` (10.77.1.1, the main table's default route) and `u2`
/// (10.77.2.1, table 102 with its own default route and a source rule, a `subflow`
/// endpoint); the peer namespace stands for both gateways.
struct Lab {
    boxed: Namespace,
    _peer: Namespace,
}

impl Lab {
    fn healthy() -> anyhow::Result<Lab> {
        let boxed = Namespace::new("doctor")?;
        let peer = Namespace::new("gateways")?;
        boxed.set_sysctls(&[("net/mptcp/enabled", "1")])?;
        for (n, dev) in [(1, "u1"), (2, "u2")] {
            boxed.add_veth(dev, &peer, dev)?;
            boxed.add_address(dev, format!("10.77.{n}.1").parse()?, 24)?;
            peer.add_address(dev, format!("10.77.{n}.254").parse()?, 24)?;
        }
        boxed.ip("route add default via 10.77.1.254 dev u1")?;
        boxed.ip("route add default via 10.77.2.254 dev u2 table 102")?;
        boxed.ip("rule add from 10.77.2.1 table 102")?;
        boxed.add_mptcp_endpoint("10.77.2.1".parse()?, "u2", "subflow")?;
        boxed.set_mptcp_limits(2, 2)?;
        Ok(Lab { boxed, _peer: peer })
    }

    /// Runs `mptcpctl doctor --json` in the box: its exit code and report.
    fn doctor(&self) -> anyhow::Result<(Option<i32>, Value)> {
        let out = self
            .boxed
            .command(env!("CARGO_BIN_EXE_mptcpctl"))
            .args(["--api", "http://127.0.0.1:9", "doctor", "--json"])
            .output()?;
        let report: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            anyhow::anyhow!(
                "not JSON ({e}): {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((out.status.code(), report))
    }
}

/// The problems of a report: (check, message, fix).
fn problems(report: &Value) -> Vec<(String, String, String)> {
    report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["verdict"] == "problem")
        .map(|f| {
            let text = |key: &str| f[key].as_str().unwrap_or_default().to_owned();
            (text("check"), text("message"), text("fix"))
        })
        .collect()
}

#[test]
fn the_doctor_passes_a_healthy_box_and_names_each_breakage_and_its_fix() -> anyhow::Result<()> {
    if !require_netns() {
        return Ok(());
    }
    let lab = Lab::healthy()?;
    let (code, report) = lab.doctor()?;
    assert_eq!(code, Some(0), "healthy: {report:#}");
    assert_eq!(report["ok"], true);
    assert!(problems(&report).is_empty(), "{report:#}");
    drop(lab);

    // (what breaks it, the check that must say so, words of its message, words of its fix)
    let breakages: [(&str, &str, &str, &str); 8] = [
        (
            "netns exec NS sysctl -qw net.mptcp.enabled=0",
            "mptcp",
            "disabled",
            "sysctl -w net.mptcp.enabled=1",
        ),
        (
            "-n NS mptcp endpoint flush",
            "endpoints",
            "no MPTCP endpoints",
            "ip mptcp endpoint add 10.77.2.1 dev u2 subflow",
        ),
        (
            "-n NS mptcp limits set subflows 0 add_addr_accepted 0",
            "limits",
            "allows 0 extra subflow",
            "ip mptcp limits set subflows 1 add_addr_accepted 1",
        ),
        (
            "-n NS rule del from 10.77.2.1 table 102",
            "routing",
            "would leave through u1, not u2",
            "ip rule add from 10.77.2.1 table",
        ),
        (
            "-n NS link set u2 down",
            "endpoint",
            "on u2, which is down",
            "ip link set dev u2 up",
        ),
        (
            "-n NS mptcp endpoint add 10.77.9.9 subflow",
            "endpoint",
            "10.77.9.9) is an address no interface of this host has",
            "ip mptcp endpoint delete id",
        ),
        (
            "-n NS mptcp endpoint flush; ip -n NS mptcp endpoint add 10.77.2.1 dev u2 signal",
            "endpoint",
            "not 'subflow'",
            "ip mptcp endpoint add 10.77.2.1 dev u2 subflow",
        ),
        (
            "netns exec NS sysctl -qw net.mptcp.path_manager=userspace",
            "path-manager",
            "userspace path manager and no mptcp-socksd owns it",
            "sysctl -w net.mptcp.path_manager=kernel",
        ),
    ];
    for (breakage, check, message, fix) in breakages {
        let lab = Lab::healthy()?;
        let command = format!("ip {}", breakage.replace("NS", lab.boxed.name()));
        let status = std::process::Command::new("sh")
            .args(["-c", &command])
            .status()?;
        assert!(status.success(), "{command}");
        let (code, report) = lab.doctor()?;
        let found = problems(&report);
        assert_eq!(code, Some(4), "{breakage}: {report:#}");
        assert!(
            found
                .iter()
                .any(|(c, m, f)| c == check && m.contains(message) && f.contains(fix)),
            "{breakage}: expected a {check} problem saying {message:?} fixed by {fix:?}; got {found:#?}"
        );
    }
    Ok(())
}

#[test]
fn a_daemon_on_a_box_that_cannot_aggregate_says_so_in_its_health() -> anyhow::Result<()> {
    if !require_netns() {
        return Ok(());
    }
    let lab = Lab::healthy()?;
    lab.boxed.ip("mptcp endpoint flush")?;
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules");
    let daemon = common::daemon::Daemon::in_process_in(
        Some(lab.boxed.name()),
        common::daemon::loopback_args(&rules, &[]),
    )?;
    let url = daemon.api_url("");
    let health = lab
        .boxed
        .in_netns(|| mptcp_socksd::ApiClient::new(url.trim_end_matches('/'), None).health())?;
    assert_eq!(health.status, "degraded", "{health:?}");
    assert!(
        health
            .problems
            .iter()
            .any(|p| p.contains("the doctor finds") && p.contains("no MPTCP endpoints")),
        "{health:?}"
    );
    assert!(
        daemon.log().contains("no MPTCP endpoints"),
        "the daemon warns at start"
    );
    Ok(())
}
