//! Proves the namespace topology used by the end-to-end tests, with plain sockets and no
//! proxy: MPTCP really uses both shaped paths, plain TCP gets one path's rate, and
//! everything is cleaned up. Needs root and MPTCP; skipped otherwise unless `CI` is set.
//! `cargo test --test topology -- --nocapture` prints the measured figures.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use mptcp_test_support::netns::{Ns, PathCounters, Proto, Topology, connect, list_namespaces};

/// ~3.5 s at the ~37 Mbit/s two 20 Mbit/s paths give together.
const MPTCP_BYTES: u64 = 16 << 20;
/// ~3.5 s at one path's ~19 Mbit/s.
const TCP_BYTES: u64 = 8 << 20;
/// One path's shaped rate (`Options::default().rate_mbit`).
const PATH_MBIT: f64 = 20.0;
const REPORT_WAIT: Duration = Duration::from_secs(10);

fn share(part: u64, whole: u64) -> f64 {
    part as f64 / whole as f64
}

fn show(label: &str, mbit: f64, bytes: u64, paths: &PathCounters) {
    eprintln!(
        "{label}: {mbit:.2} Mbit/s for {bytes} bytes; server sent {} bytes on path A ({:.0} %), {} on path B ({:.0} %)",
        paths.a_tx,
        100.0 * share(paths.a_tx, bytes),
        paths.b_tx,
        100.0 * share(paths.b_tx, bytes),
    );
}

#[test]
fn mptcp_client_gets_a_second_subflow_and_both_paths_rates() -> anyhow::Result<()> {
    let Some(topo) = Topology::new_or_skip() else {
        return Ok(());
    };
    let server = topo.start_pattern_server(Proto::Mptcp, 0)?;
    let target = SocketAddr::from((topo.addrs().server_a, server.port()));

    let before = topo.server_path_counters()?;
    let transfer = topo.fetch(Ns::Proxy, MPTCP_BYTES, || connect(Proto::Mptcp, target))?;
    let report = server.next_report(REPORT_WAIT)?;
    let paths = topo.server_path_counters()?.since(&before);
    show("mptcp", transfer.mbit_per_s(), transfer.bytes, &paths);
    eprintln!("mptcp: server saw {report:?}");

    assert_eq!(report.error, None);
    assert_eq!(report.sent, MPTCP_BYTES);
    assert_eq!(
        report.peer.ip(),
        IpAddr::from(topo.addrs().proxy_a),
        "initial subflow from path A"
    );
    assert!(report.mptcp, "the connection fell back to TCP");
    assert!(
        report.max_subflows >= 2,
        "only {} subflow(s)",
        report.max_subflows
    );
    for (path, tx) in [("A", paths.a_tx), ("B", paths.b_tx)] {
        assert!(
            share(tx, MPTCP_BYTES) > 0.3,
            "path {path} carried only {tx} of {MPTCP_BYTES} bytes"
        );
    }
    assert!(
        transfer.mbit_per_s() > 1.4 * PATH_MBIT,
        "{:.2} Mbit/s is not clearly more than one {PATH_MBIT} Mbit/s path",
        transfer.mbit_per_s()
    );
    Ok(())
}

#[test]
fn tcp_client_gets_one_paths_rate_over_path_a_only() -> anyhow::Result<()> {
    let Some(topo) = Topology::new_or_skip() else {
        return Ok(());
    };
    let server = topo.start_pattern_server(Proto::Mptcp, 0)?;
    let target = SocketAddr::from((topo.addrs().server_a, server.port()));

    let before = topo.server_path_counters()?;
    let transfer = topo.fetch(Ns::Proxy, TCP_BYTES, || connect(Proto::Tcp, target))?;
    let report = server.next_report(REPORT_WAIT)?;
    let paths = topo.server_path_counters()?.since(&before);
    show("tcp", transfer.mbit_per_s(), transfer.bytes, &paths);
    eprintln!("tcp: server saw {report:?}");

    assert_eq!(report.error, None);
    assert!(
        !report.mptcp,
        "a plain TCP client must make the MPTCP listener fall back"
    );
    assert!(
        paths.a_tx >= TCP_BYTES,
        "path A carried only {} bytes",
        paths.a_tx
    );
    assert!(
        paths.b_tx < 64 * 1024,
        "path B carried {} bytes",
        paths.b_tx
    );
    let mbit = transfer.mbit_per_s();
    assert!(
        mbit < 1.2 * PATH_MBIT && mbit > 0.5 * PATH_MBIT,
        "{mbit:.2} Mbit/s"
    );
    Ok(())
}

#[test]
fn client_reaches_only_the_proxy_and_names_resolve_in_the_proxy() -> anyhow::Result<()> {
    let Some(topo) = Topology::new_or_skip() else {
        return Ok(());
    };
    let addrs = topo.addrs();
    let server = topo.start_pattern_server(Proto::Mptcp, 0)?;

    // Without forwarding the server is unreachable from the client namespace.
    let direct = SocketAddr::from((addrs.server_a, server.port()));
    let err = topo
        .in_netns(Ns::Client, || connect(Proto::Tcp, direct))
        .expect_err("client reached the server without the proxy");
    eprintln!("client -> server directly: {err}");
    // ...but the proxy's client-side address is, where a SOCKS proxy would listen.
    let lan = SocketAddr::from((addrs.proxy_lan, 0));
    let listener = topo.in_netns(Ns::Proxy, || TcpListener::bind(lan))?;
    let at_proxy = listener.local_addr()?;
    topo.in_netns(Ns::Client, || connect(Proto::Tcp, at_proxy))?;
    let (_, from) = listener.accept()?;
    assert_eq!(from.ip(), IpAddr::from(addrs.client));

    topo.write_hosts(Ns::Proxy, &[("server.test", addrs.server_a.into())])?;
    let resolved = topo.exec_ok(Ns::Proxy, "getent", ["hosts", "server.test"])?;
    assert!(
        resolved.starts_with(&addrs.server_a.to_string()),
        "server.test resolved to {resolved:?}"
    );
    Ok(())
}

#[test]
fn namespaces_and_etc_netns_are_removed_on_drop_even_after_a_panic() -> anyhow::Result<()> {
    let Some(topo) = Topology::new_or_skip() else {
        return Ok(());
    };
    let names: Vec<String> = Ns::ALL.iter().map(|&ns| topo.name(ns).to_owned()).collect();
    topo.write_hosts(Ns::Proxy, &[("server.test", topo.addrs().server_a.into())])?;
    let listed = list_namespaces()?;
    assert!(
        names.iter().all(|n| listed.contains(n)),
        "{names:?} not in {listed:?}"
    );
    drop(topo);
    assert_removed(&names)?;

    let panicked_names = Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(|| {
        let topo = Topology::new().expect("building the topology");
        let mut names = panicked_names.lock().unwrap_or_else(|e| e.into_inner());
        names.extend(Ns::ALL.iter().map(|&ns| topo.name(ns).to_owned()));
        drop(names);
        topo.write_hosts(Ns::Proxy, &[]).expect("writing hosts");
        panic!("deliberate panic to test the cleanup");
    });
    assert!(outcome.is_err());
    let names = panicked_names
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    assert_eq!(names.len(), 3);
    assert_removed(&names)
}

fn assert_removed(names: &[String]) -> anyhow::Result<()> {
    let listed = list_namespaces()?;
    for name in names {
        assert!(!listed.contains(name), "{name} still listed: {listed:?}");
        let dir = format!("/etc/netns/{name}");
        assert!(!Path::new(&dir).exists(), "{dir} still exists");
    }
    Ok(())
}
