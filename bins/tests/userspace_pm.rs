//! Per-destination path managers that really take effect: the daemon in
//! `--path-manager userspace` mode creates each connection's subflows as its rule says,
//! and re-creates a subflow lost with its link when the link comes back.
//!
//! Real kernel, real daemon, namespaces built by the test
//! (`mptcp_test_support::netns::Topology`): two 20 Mbit/s paths between proxy and server;
//! the server announces its path-B address.
//! Needs root; skipped without it unless `CI` is set.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use common::daemon::{Daemon, SOCKS_PORT, curl, start_in_proxy};
use mptcp_test_support::netns::{
    self, ConnReport, Ns, PATH_A_IF, PATH_B_IF, PatternServer, Proto, Topology,
};
use mptcp_test_support::socks::blocking::{self as socks, Target};

const REPORT_WAIT: Duration = Duration::from_secs(60);

struct Setup {
    daemon: Daemon,
    server: PatternServer,
    _dir: tempfile::TempDir,
    topo: Topology,
}

/// The topology, with what fullmesh needs on top: the server announces its path-B
/// address, the proxy's path-A address routes out of path A whatever the destination,
/// and both ends allow enough subflows.
fn setup(rules: &str) -> anyhow::Result<Option<Setup>> {
    let Some(topo) = Topology::new_or_skip() else {
        return Ok(None);
    };
    let a = topo.addrs();
    let net = |ip: std::net::Ipv4Addr| {
        let o = ip.octets();
        format!("{}.{}.{}.0/24", o[0], o[1], o[2])
    };
    let proxy = topo.name(Ns::Proxy).to_owned();
    let server_ns = topo.name(Ns::Server).to_owned();
    for cmd in [
        format!(
            "ip -n {proxy} rule add from {} table 101 priority 1001",
            a.proxy_a
        ),
        format!(
            "ip -n {proxy} route add {} dev {PATH_A_IF} src {} table 101",
            net(a.proxy_a),
            a.proxy_a
        ),
        format!(
            "ip -n {proxy} route add {} via {} dev {PATH_A_IF} table 101",
            net(a.proxy_b),
            a.server_a
        ),
        format!("ip -n {proxy} mptcp limits set subflows 8 add_addr_accepted 8"),
        format!("ip -n {server_ns} mptcp limits set subflows 8 add_addr_accepted 8"),
        format!(
            "ip -n {server_ns} mptcp endpoint add {} dev {PATH_B_IF} signal",
            a.server_b
        ),
    ] {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let names = ["default.test", "fullmesh.test", "ndiff.test", "off.test"];
    let hosts: Vec<(&str, std::net::IpAddr)> =
        names.iter().map(|n| (*n, a.server_a.into())).collect();
    topo.write_hosts(Ns::Proxy, &hosts)?;
    let server = topo.start_pattern_server(Proto::Mptcp, 0)?;
    let (daemon, dir) = start_in_proxy(&topo, rules, &["--path-manager", "userspace"])?;
    Ok(Some(Setup {
        daemon,
        server,
        _dir: dir,
        topo,
    }))
}

impl Setup {
    /// GETs `path` from the daemon's REST API, from inside the proxy namespace.
    fn api(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let mut cmd = self.topo.command(Ns::Proxy, "curl");
        cmd.arg(self.daemon.api_url(path));
        let (status, body) = curl(cmd)?;
        anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
        Ok(serde_json::from_str(&body)?)
    }

    fn fetch(&self, name: &str, bytes: u64) -> anyhow::Result<ConnReport> {
        let proxy = SocketAddr::from((self.topo.addrs().proxy_lan, SOCKS_PORT));
        let port = self.server.port();
        let transfer = self.topo.fetch(Ns::Client, bytes, || {
            socks::connect(proxy, Target::Name(name, port), None)
        })?;
        let report = self.server.next_report(REPORT_WAIT)?;
        eprintln!(
            "{name}: {:.2} Mbit/s, server saw mptcp={} max_subflows={}",
            transfer.mbit_per_s(),
            report.mptcp,
            report.max_subflows
        );
        anyhow::ensure!(report.sent == bytes && report.error.is_none(), "{report:?}");
        Ok(report)
    }

    /// Waits, bounded by `timeout`, until the one live connection has (`present`) or has
    /// no (`!present`) subflow from `local`, as `GET /connections` shows it.
    fn wait_for_subflows_from(
        &self,
        local: std::net::Ipv4Addr,
        present: bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let prefix = format!("{local}:");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let live = self.api("/connections")?;
            let has = live[0]["subflows"].as_array().is_some_and(|subflows| {
                subflows
                    .iter()
                    .any(|sf| sf["local"].as_str().is_some_and(|l| l.starts_with(&prefix)))
            });
            if has == present {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "after {timeout:?}: {live}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The subflows the daemon logged for connection `id` when it closed, as
    /// `local address -> remote address:port` pairs.
    fn logged_subflows(&self, id: u64) -> anyhow::Result<Vec<String>> {
        let needle = format!("closed id={id} ");
        anyhow::ensure!(
            self.daemon.wait_for_log(&needle, Duration::from_secs(10)),
            "no closing line for connection {id}"
        );
        let log = self.daemon.log();
        let line = log.lines().find(|l| l.contains(&needle)).context("line")?;
        let Some((_, list)) = line.split_once("subflows=\"") else {
            return Ok(Vec::new());
        };
        let list = list.split('"').next().unwrap_or_default();
        Ok(list
            .split(", ")
            .filter_map(|s| s.split(' ').next())
            .map(str::to_owned)
            .collect())
    }
}

#[test]
fn each_destination_gets_the_subflows_its_rule_names() -> anyhow::Result<()> {
    let Some(s) = setup(
        "default.test,1,default,default,\n\
         fullmesh.test,1,default,fullmesh,\n\
         ndiff.test,1,default,ndiffports:3,\n\
         off.test,0,default,default,\n.\n",
    )?
    else {
        return Ok(());
    };
    let a = s.topo.addrs();
    let port = s.server.port();
    let pair =
        |local: std::net::Ipv4Addr, remote: std::net::Ipv4Addr| format!("{local}->{remote}:{port}");
    let bytes = 6 << 20;

    // default: one subflow per local address (the initial one and the endpoint).
    let report = s.fetch("default.test", bytes)?;
    assert!(report.mptcp && report.max_subflows == 2, "{report:?}");
    let paths: BTreeSet<String> = s.logged_subflows(1)?.into_iter().collect();
    assert_eq!(
        paths,
        BTreeSet::from([pair(a.proxy_a, a.server_a), pair(a.proxy_b, a.server_a)])
    );

    // fullmesh: every local address to every remote one, the announced one included.
    let report = s.fetch("fullmesh.test", bytes)?;
    assert!(report.mptcp && report.max_subflows == 4, "{report:?}");
    let paths: BTreeSet<String> = s.logged_subflows(2)?.into_iter().collect();
    assert_eq!(
        paths,
        BTreeSet::from([
            pair(a.proxy_a, a.server_a),
            pair(a.proxy_a, a.server_b),
            pair(a.proxy_b, a.server_a),
            pair(a.proxy_b, a.server_b),
        ])
    );

    // ndiffports:3: three subflows over the one initial pair, so path A only.
    let report = s.fetch("ndiff.test", bytes)?;
    assert!(report.mptcp && report.max_subflows == 3, "{report:?}");
    let paths = s.logged_subflows(3)?;
    assert_eq!(paths.len(), 3, "{paths:?}");
    assert!(
        paths.iter().all(|p| *p == pair(a.proxy_a, a.server_a)),
        "{paths:?}"
    );

    // Another program's MPTCP connection in the proxy's namespace (not through the proxy)
    // gets what the in-kernel path manager would have given it: a subflow per endpoint.
    let direct = SocketAddr::from((a.server_a, port));
    s.topo
        .fetch(Ns::Proxy, bytes, || netns::connect(Proto::Mptcp, direct))?;
    let report = s.server.next_report(REPORT_WAIT)?;
    assert!(report.mptcp && report.max_subflows == 2, "{report:?}");

    // MPTCP off: plain TCP, no subflows at all.
    let report = s.fetch("off.test", 1 << 20)?;
    assert!(!report.mptcp, "{report:?}");
    assert!(s.logged_subflows(4)?.is_empty());
    Ok(())
}

#[test]
fn a_subflow_lost_with_its_link_is_recreated_when_the_link_returns() -> anyhow::Result<()> {
    let Some(s) = setup("default.test,1,default,default,\n.\n")? else {
        return Ok(());
    };
    let a = s.topo.addrs();
    let bytes: u64 = 48 << 20;
    let proxy = SocketAddr::from((a.proxy_lan, SOCKS_PORT));
    let port = s.server.port();
    let client_ns = s.topo.name(Ns::Client).to_owned();
    let transfer = std::thread::spawn(move || {
        netns::fetch_in_netns(&client_ns, bytes, || {
            socks::connect(proxy, Target::Name("default.test", port), None)
        })
    });
    // Both paths carry the transfer before path B fails.
    s.wait_for_subflows_from(a.proxy_b, true, Duration::from_secs(10))
        .context("no subflow over path B")?;
    std::thread::sleep(Duration::from_millis(1000));

    // What the operator sees meanwhile: the mode, the inventory, and the connection with
    // one subflow per path, each carrying a share of the bytes.
    let caps = s.api("/capabilities")?;
    assert_eq!(caps["path_manager_mode"], "userspace", "{caps}");
    assert_eq!(caps["kernel_path_manager"], "userspace", "{caps}");
    let inventory = caps["local_addresses"].to_string();
    assert!(inventory.contains(&a.proxy_b.to_string()), "{caps}");
    let live = s.api("/connections")?;
    let subflows = live[0]["subflows"].as_array().context("subflows")?.clone();
    assert_eq!(live[0]["transport"], "mptcp", "{live}");
    assert_eq!(live[0]["rule"], "default.test", "{live}");
    for local in [a.proxy_a, a.proxy_b] {
        let carried: u64 = subflows
            .iter()
            .filter(|sf| {
                sf["local"]
                    .as_str()
                    .is_some_and(|l| l.starts_with(&format!("{local}:")))
            })
            .map(|sf| sf["bytes_received"].as_u64().unwrap_or(0))
            .sum();
        assert!(
            carried > 1 << 20,
            "path of {local} carried {carried} bytes: {live}"
        );
    }

    s.topo.set_link(Ns::Proxy, PATH_B_IF, false)?;
    s.wait_for_subflows_from(a.proxy_b, false, Duration::from_secs(5))
        .context("the daemon did not close the subflow of path B when its link went down")?;
    std::thread::sleep(Duration::from_millis(3000));
    s.topo.set_link(Ns::Proxy, PATH_B_IF, true)?;
    // While the transfer still runs, a new subflow from path B's address comes up.
    s.wait_for_subflows_from(a.proxy_b, true, Duration::from_secs(10))
        .context("no subflow re-created over path B")?;

    let done =
        netns::join_transfer(transfer).context("the transfer did not survive losing path B")?;
    let report = s.server.next_report(REPORT_WAIT)?;
    eprintln!(
        "48 MiB with path B down for 3 s: {:.2} Mbit/s, {report:?}",
        done.mbit_per_s()
    );
    assert_eq!(done.bytes, bytes);
    assert_eq!(report.sent, bytes);

    Ok(())
}
