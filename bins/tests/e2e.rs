//! The seed flow end to end, against the real kernel: a client namespace talks SOCKS5 to
//! the real `mptcp-socksd` in a proxy namespace, which has two 20 Mbit/s paths to a
//! server namespace listening with MPTCP. The rule file and the REST API decide per
//! destination whether the proxy's outbound connection is MPTCP or plain TCP.
//!
//! Needs root, network namespaces and MPTCP: skipped with a message on a laptop without
//! them, a failure when `CI` is set. `cargo test --test e2e -- --nocapture` prints the
//! measured figures.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, ensure};
use common::daemon::{Daemon, SOCKS_PORT, curl, start_in_proxy};
use mptcp_test_support::netns::{
    self, ConnReport, Ns, PathCounters, PatternServer, Proto, Topology,
};
use mptcp_test_support::socks::blocking::{self as socks, Target};

/// One path's shaped rate (`Options::default().rate_mbit`).
const PATH_MBIT: f64 = 20.0;
/// ~3.5 s over both paths.
const MPTCP_BYTES: u64 = 16 << 20;
/// ~3.5 s over one path.
const TCP_BYTES: u64 = 8 << 20;
const REPORT_WAIT: Duration = Duration::from_secs(30);

/// The seed's REST body, verbatim but for the address.
fn seed_body(enable: &str, ip: &str) -> String {
    format!(
        r#"{{"enable": "{enable}", "ip": "{ip}", "path_manager": "default", "scheduler": "default"}}"#
    )
}

struct Setup {
    // Field order is drop order: the daemon dies before its namespace goes.
    daemon: Daemon,
    server: PatternServer,
    _dir: tempfile::TempDir,
    topo: Topology,
}

impl Setup {
    fn start(rules: impl FnOnce(&Topology) -> String) -> anyhow::Result<Option<Setup>> {
        let Some(topo) = Topology::new_or_skip() else {
            return Ok(None);
        };
        let a = topo.addrs();
        topo.write_hosts(
            Ns::Proxy,
            &[
                ("server.test", a.server_a.into()),
                ("www.mp.test", a.server_a.into()),
                ("files.test", a.server_b.into()),
            ],
        )?;
        let server = topo.start_pattern_server(Proto::Mptcp, 0)?;
        let (daemon, dir) = start_in_proxy(&topo, &rules(&topo), &[])?;
        Ok(Some(Setup {
            daemon,
            server,
            _dir: dir,
            topo,
        }))
    }

    fn proxy(&self) -> SocketAddr {
        SocketAddr::from((self.topo.addrs().proxy_lan, SOCKS_PORT))
    }

    fn server_by_ip(&self) -> SocketAddr {
        SocketAddr::from((self.topo.addrs().server_a, self.server.port()))
    }

    /// Fetches `bytes` from the pattern server through the proxy, from the client
    /// namespace; returns Mbit/s, the server's report and the bytes per server path.
    fn fetch(
        &self,
        target: Target<'_>,
        bytes: u64,
    ) -> anyhow::Result<(f64, ConnReport, PathCounters)> {
        let before = self.topo.server_path_counters()?;
        let proxy = self.proxy();
        let transfer = self
            .topo
            .fetch(Ns::Client, bytes, || socks::connect(proxy, target, None))?;
        let report = self.server.next_report(REPORT_WAIT)?;
        let paths = self.topo.server_path_counters()?.since(&before);
        ensure!(report.error.is_none(), "server: {:?}", report.error);
        ensure!(
            report.sent == bytes,
            "server sent {} of {bytes}",
            report.sent
        );
        let mbit = transfer.mbit_per_s();
        eprintln!(
            "{target:?}: {mbit:.2} Mbit/s, mptcp={} subflows={}, server sent {} B on path A, {} B on path B",
            report.mptcp, report.max_subflows, paths.a_tx, paths.b_tx
        );
        Ok((mbit, report, paths))
    }

    /// POSTs `body` to the daemon's REST API from inside the proxy namespace.
    fn post_rule(&self, body: &str) -> anyhow::Result<(u16, String)> {
        let mut cmd = self.topo.command(Ns::Proxy, "curl");
        cmd.args([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ])
        .arg(self.daemon.api_url("/rules"));
        curl(cmd)
    }
}

fn share(part: u64, whole: u64) -> f64 {
    part as f64 / whole as f64
}

#[test]
fn rule_one_is_mptcp_over_both_paths_and_rest_switches_the_next_connection_to_tcp()
-> anyhow::Result<()> {
    let Some(s) = Setup::start(|t| format!("{},1,default,default,\n.\n", t.addrs().server_a))?
    else {
        return Ok(());
    };
    let by_ip = Target::Addr(s.server_by_ip());

    // Rule says 1: MPTCP with two subflows, well above one path's rate, both paths busy.
    let (mbit, report, paths) = s.fetch(by_ip, MPTCP_BYTES)?;
    assert!(
        report.mptcp,
        "rule 1 but the server saw plain TCP: {report:?}"
    );
    assert!(report.max_subflows >= 2, "{report:?}");
    assert!(
        mbit > 1.4 * PATH_MBIT,
        "MPTCP through the proxy ran at {mbit:.2} Mbit/s, not well above one path's {PATH_MBIT}"
    );
    assert!(share(paths.a_tx, MPTCP_BYTES) > 0.25, "{paths:?}");
    assert!(share(paths.b_tx, MPTCP_BYTES) > 0.25, "{paths:?}");
    // The proxy itself shows it: its log line for the closed connection lists one
    // subflow per path with what each carried.
    assert!(
        s.daemon
            .wait_for_log("closed id=1 ", Duration::from_secs(5))
    );
    let log = s.daemon.log();
    let closed = log
        .lines()
        .find(|l| l.contains("closed id=1 "))
        .unwrap_or_default();
    let a = s.topo.addrs();
    for local in [a.proxy_a, a.proxy_b] {
        assert!(
            closed.contains(&format!("{local}->")),
            "{local} missing: {closed}"
        );
    }

    // A connection opened before the change...
    let proxy = s.proxy();
    let client_ns = s.topo.name(Ns::Client).to_owned();
    let long = std::thread::spawn(move || {
        netns::fetch_in_netns(&client_ns, 2 * MPTCP_BYTES, || {
            socks::connect(proxy, by_ip, None)
        })
    });
    std::thread::sleep(Duration::from_millis(1500));

    // ...then the seed's POST sets this destination to "0"...
    let (status, body) = s.post_rule(&seed_body("0", &s.topo.addrs().server_a.to_string()))?;
    assert_eq!(status, 200, "replacing the rule: {body}");
    assert!(body.contains(r#""enable":false"#), "{body}");

    // ...and the next connection is plain TCP.
    let short = 1 << 20;
    let (_, report, _) = s.fetch(by_ip, short)?;
    assert_eq!(report.requested, short, "reports out of order: {report:?}");
    assert!(!report.mptcp, "rule 0 but the server saw MPTCP: {report:?}");

    // The old connection was not disturbed: intact, and MPTCP to the end.
    let old =
        netns::join_transfer(long).context("the connection opened before the change broke")?;
    let old_report = s.server.next_report(REPORT_WAIT)?;
    eprintln!(
        "connection opened before the change: {:.2} Mbit/s, {old_report:?}",
        old.mbit_per_s()
    );
    assert_eq!(old.bytes, 2 * MPTCP_BYTES);
    assert_eq!(old_report.requested, 2 * MPTCP_BYTES);
    assert!(
        old_report.mptcp && old_report.max_subflows >= 2,
        "{old_report:?}"
    );

    // Plain TCP now runs at one path's rate, over path A only.
    let (mbit, report, paths) = s.fetch(by_ip, TCP_BYTES)?;
    assert!(!report.mptcp, "{report:?}");
    assert!(
        mbit < 1.2 * PATH_MBIT && mbit > 0.5 * PATH_MBIT,
        "plain TCP ran at {mbit:.2} Mbit/s, not one path's {PATH_MBIT}"
    );
    assert!(share(paths.b_tx, TCP_BYTES) < 0.02, "{paths:?}");

    // The change is on disk in the seed form.
    let rules = std::fs::read_to_string(s._dir.path().join("rules"))?;
    assert_eq!(
        rules,
        format!("{},0,default,default,\n.\n", s.topo.addrs().server_a)
    );
    Ok(())
}

#[test]
fn name_rules_apply_to_requests_by_name_and_curl_fetches_intact() -> anyhow::Result<()> {
    // The server's address says plain TCP; the names say otherwise.
    let Some(s) = Setup::start(|t| format!("{},0,default,default,\n.\n", t.addrs().server_a))?
    else {
        return Ok(());
    };
    let port = s.server.port();

    for body in [seed_body("1", "server.test"), seed_body("1", "*.mp.test")] {
        let (status, answer) = s.post_rule(&body)?;
        assert_eq!(status, 201, "{body}: {answer}");
    }
    for name in ["server.test", "www.mp.test"] {
        let (_, report, _) = s.fetch(Target::Name(name, port), 2 << 20)?;
        assert!(
            report.mptcp && report.max_subflows >= 2,
            "{name}: name rule 1 not applied: {report:?}"
        );
    }
    // By address, the address rule (0) still applies.
    let (_, report, _) = s.fetch(Target::Addr(s.server_by_ip()), 1 << 20)?;
    assert!(!report.mptcp, "{report:?}");

    // curl, a real SOCKS5 client, through the proxy by name to a plain-TCP web server on
    // the server's second address: the proxy resolves files.test, tries MPTCP (no rule
    // matches name or address: the default) and the kernel falls back to TCP.
    let root = tempfile::tempdir()?;
    let blob: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root.path().join("blob.bin"), &blob)?;
    let a = s.topo.addrs();
    let _web = s.topo.spawn(
        Ns::Server,
        "python3",
        [
            "-m",
            "http.server",
            "8000",
            "--bind",
            "0.0.0.0",
            "--directory",
            &root.path().to_string_lossy(),
        ],
    )?;
    let up = (0..50).any(|_| {
        let ok = s
            .topo
            .exec(
                Ns::Server,
                "curl",
                [
                    "-sf",
                    "-o",
                    "/dev/null",
                    &format!("http://{}:8000/", a.server_a),
                ],
            )
            .is_ok_and(|o| o.status.success());
        if !ok {
            std::thread::sleep(Duration::from_millis(200));
        }
        ok
    });
    assert!(up, "the web server in the server namespace did not start");
    let out = root.path().join("fetched.bin");
    let mut cmd = s.topo.command(Ns::Client, "curl");
    cmd.arg("--fail")
        .arg("--socks5-hostname")
        .arg(s.proxy().to_string())
        .arg("-o")
        .arg(&out)
        .arg("http://files.test:8000/blob.bin");
    let (status, _) = curl(cmd)?;
    assert_eq!(status, 200);
    let fetched = std::fs::read(&out)?;
    assert!(
        fetched == blob,
        "curl fetched {} bytes, not the file",
        fetched.len()
    );
    assert!(
        s.daemon
            .wait_for_log("target=files.test:8000", Duration::from_secs(5)),
        "no log line for the curl connection"
    );
    let log = s.daemon.log();
    let line = log
        .lines()
        .rfind(|l| l.contains(" connected ") && l.contains("target=files.test:8000"))
        .unwrap_or_default();
    assert!(
        line.contains("fallback"),
        "expected an MPTCP fallback: {line}"
    );
    Ok(())
}

#[test]
fn a_phone_on_the_lan_fetches_the_pac_file_from_the_socks_port() -> anyhow::Result<()> {
    let Some(setup) = Setup::start(|_| ".\n".to_owned())? else {
        return Ok(());
    };
    let lan = setup.topo.addrs().proxy_lan;
    let mut cmd = setup.topo.command(Ns::Client, "curl");
    cmd.arg(format!("http://{lan}:{SOCKS_PORT}/proxy.pac"));
    let (status, body) = curl(cmd)?;
    ensure!(status == 200, "{status} {body}");
    ensure!(
        body.contains(&format!(
            "return \"SOCKS5 {lan}:{SOCKS_PORT}; SOCKS {lan}:{SOCKS_PORT}\";"
        )),
        "{body}"
    );
    Ok(())
}
