//! The chain end to end, against the real kernel: a client namespace talks SOCKS5 to the
//! box (the daemon in the proxy namespace, two 20 Mbit/s uplinks), whose rules send some
//! destinations through an upstream daemon in the server namespace (the "VPS", reached
//! over both uplinks at one address) and on to an internet namespace behind it, where a
//! TCP-only site and an MPTCP site listen.
//!
//! Needs root, network namespaces and MPTCP: skipped with a message on a laptop without
//! them, a failure when `CI` is set. `cargo test --test chain_lab -- --nocapture` prints
//! the measured figures.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::daemon::Daemon;
use mptcp_socksd::{ApiClient, ConnectionView, Health, LearnedView};
use mptcp_test_support::netns::{
    Ns, Options, PATH_A_IF, PatternServer, Proto, Topology, Transfer, in_netns,
};
use mptcp_test_support::require_netns;
use mptcp_test_support::socks::blocking::{self as socks, Target};

/// ~2.5 s over one uplink.
const DIRECT_BYTES: u64 = 6 << 20;
/// ~2.5 s over both.
const VIA_BYTES: u64 = 12 << 20;
/// Long enough to be seen in `/connections` (polled every 50 ms).
const SMALL_BYTES: u64 = 2 << 20;
const SOCKS_PORT: u16 = 1080;

/// What the box's rules do with each internet address (`Addrs::internet_n`).
const DIRECT: u8 = 0;
const VIA_VPS: u8 = 1;
const AUTO_VPS: u8 = 2;
const VIA_TLS: u8 = 3;
const VIA_BAD_PIN: u8 = 4;
/// The TLS VPS listens here (the plain one on [`SOCKS_PORT`]).
const TLS_PORT: u16 = 1443;

struct Lab {
    // Field order is drop order: daemons and sites before their namespaces.
    boxed: Daemon,
    vps: Option<Daemon>,
    _vps_tls: Daemon,
    /// The sites in the internet namespace; kept (in a mutex only so that the lab can be
    /// shared with the threads of a test), known by their ports.
    _sites: std::sync::Mutex<[PatternServer; 2]>,
    tcp_port: u16,
    mptcp_port: u16,
    _dir: tempfile::TempDir,
    topo: Topology,
}

impl Lab {
    fn start() -> anyhow::Result<Option<Lab>> {
        if !require_netns() {
            return Ok(None);
        }
        let topo = Topology::with_options(Options {
            internet: true,
            ..Options::default()
        })?;
        let a = topo.addrs();
        let dir = tempfile::tempdir()?;
        let inet = topo.name(Ns::Internet);
        let tcp_site = PatternServer::start(inet, Proto::Tcp, 0)?;
        let mptcp_site = PatternServer::start(inet, Proto::Mptcp, 0)?;

        let vps_rules = dir.path().join("vps.rules");
        let vps = Daemon::in_process_in(
            Some(topo.name(Ns::Server)),
            [
                "-i",
                "0.0.0.0",
                "-p",
                &SOCKS_PORT.to_string(),
                "--api",
                "off",
                "--policy",
            ]
            .map(String::from)
            .into_iter()
            .chain([vps_rules.display().to_string()]),
        )?;

        // The same VPS host with SOCKS5 inside TLS and a password, as one facing the
        // internet would run.
        let password = dir.path().join("password");
        std::fs::write(&password, "s3cret\n")?;
        let state = dir.path().join("vps-state");
        let vps_tls = Daemon::in_process_in(
            Some(topo.name(Ns::Server)),
            [
                "-i".to_owned(),
                "0.0.0.0".to_owned(),
                "-p".to_owned(),
                TLS_PORT.to_string(),
                "--api".to_owned(),
                "off".to_owned(),
                "--policy".to_owned(),
                dir.path().join("vps-tls.rules").display().to_string(),
                "--tls".to_owned(),
                "--state-dir".to_owned(),
                state.display().to_string(),
                "-u".to_owned(),
                "box".to_owned(),
                "--password-file".to_owned(),
                password.display().to_string(),
            ],
        )?;
        let pin = mptcp_socksd::tls_identity::fingerprint_of(&state)?;

        let box_rules = dir.path().join("box.rules");
        let rule = |n: u8, via: &str| format!("{},1,default,default,via={via}\n", a.internet_n(n));
        std::fs::write(
            &box_rules,
            [
                rule(VIA_VPS, "vps"),
                rule(AUTO_VPS, "auto:vps"),
                rule(VIA_TLS, "vps-tls"),
                rule(VIA_BAD_PIN, "bad-pin"),
            ]
            .concat(),
        )?;
        let boxed = Daemon::in_process_in(
            Some(topo.name(Ns::Proxy)),
            [
                "-i".to_owned(),
                a.proxy_lan.to_string(),
                "-p".to_owned(),
                SOCKS_PORT.to_string(),
                "--api".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--policy".to_owned(),
                box_rules.display().to_string(),
                "--upstream".to_owned(),
                format!("vps=socks5://{}:{SOCKS_PORT}", a.server_a),
                "--upstream".to_owned(),
                format!(
                    "vps-tls=socks5+tls://box@{}:{TLS_PORT}#sha256={pin}",
                    a.server_a
                ),
                "--upstream-password-file".to_owned(),
                format!("vps-tls={}", password.display()),
                "--upstream".to_owned(),
                format!(
                    "bad-pin=socks5+tls://box:s3cret@{}:{TLS_PORT}#sha256={}",
                    a.server_a,
                    "00".repeat(32)
                ),
            ],
        )?;
        Ok(Some(Lab {
            boxed,
            vps: Some(vps),
            _vps_tls: vps_tls,
            tcp_port: tcp_site.port(),
            mptcp_port: mptcp_site.port(),
            _sites: std::sync::Mutex::new([tcp_site, mptcp_site]),
            _dir: dir,
            topo,
        }))
    }

    fn api(&self) -> ApiClient {
        ApiClient::new(&self.boxed.api_url(""), None)
    }

    fn connections(&self) -> Vec<ConnectionView> {
        in_netns(self.topo.name(Ns::Proxy), || self.api().connections()).unwrap_or_default()
    }

    fn health(&self) -> anyhow::Result<Health> {
        Ok(in_netns(self.topo.name(Ns::Proxy), || self.api().health())?)
    }

    fn learned(&self) -> anyhow::Result<Vec<LearnedView>> {
        Ok(in_netns(self.topo.name(Ns::Proxy), || {
            self.api().learned()
        })?)
    }

    fn site(&self, n: u8, port: u16) -> SocketAddr {
        SocketAddr::new(self.topo.addrs().internet_n(n).into(), port)
    }

    /// Fetches `bytes` from `target` through the box, from the client namespace.
    fn fetch(&self, target: SocketAddr, bytes: u64) -> anyhow::Result<Transfer> {
        let proxy = SocketAddr::new(self.topo.addrs().proxy_lan.into(), SOCKS_PORT);
        self.topo.fetch(Ns::Client, bytes, || {
            socks::connect(proxy, Target::Addr(target), None)
        })
    }

    /// [`Lab::fetch`], watching the box's `/connections` meanwhile: the transfer and the
    /// connection as seen with the most subflows.
    fn fetch_seen(
        &self,
        target: SocketAddr,
        bytes: u64,
    ) -> anyhow::Result<(Transfer, ConnectionView)> {
        let mut seen: Option<ConnectionView> = None;
        let transfer = thread::scope(|scope| {
            let fetch = scope.spawn(|| self.fetch(target, bytes));
            while !fetch.is_finished() {
                let now = self.connections();
                if let Some(c) = now.into_iter().find(|c| c.target == target.to_string())
                    && seen
                        .as_ref()
                        .is_none_or(|s| c.subflows.len() >= s.subflows.len())
                {
                    seen = Some(c);
                }
                thread::sleep(Duration::from_millis(50));
            }
            fetch.join().expect("fetch thread")
        })?;
        let seen = seen.with_context(|| format!("{target} never showed in /connections"))?;
        Ok((transfer, seen))
    }

    fn wait_learned(&self, target: SocketAddr) -> anyhow::Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(l) = self.learned()?.into_iter().find(|l| l.address == target) {
                return Ok(l.mptcp);
            }
            ensure!(Instant::now() < deadline, "nothing learned about {target}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The uplinks a connection's subflows left from, each with the bytes it received.
fn uplinks(c: &ConnectionView) -> Vec<(IpAddr, u64)> {
    c.subflows
        .iter()
        .map(|s| (s.local.ip(), s.bytes_received))
        .collect()
}

#[test]
fn the_box_bonds_both_uplinks_through_the_vps_and_learns_where_not_to() -> anyhow::Result<()> {
    let Some(mut lab) = Lab::start()? else {
        return Ok(());
    };
    let a = lab.topo.addrs();

    // Direct to a TCP-only site: one uplink's rate.
    let direct = lab.fetch(lab.site(DIRECT, lab.tcp_port), DIRECT_BYTES)?;
    eprintln!(
        "direct to the TCP-only site: {:.1} Mbit/s",
        direct.mbit_per_s()
    );
    ensure!(
        (12.0..23.0).contains(&direct.mbit_per_s()),
        "direct should be about one 20 Mbit/s uplink: {:.1}",
        direct.mbit_per_s()
    );

    // Through the VPS: both uplinks, a subflow on each.
    let target = lab.site(VIA_VPS, lab.tcp_port);
    let (via, seen) = lab.fetch_seen(target, VIA_BYTES)?;
    let links = uplinks(&seen);
    eprintln!(
        "via the VPS: {:.1} Mbit/s ({:.2}x direct); subflows {links:?}",
        via.mbit_per_s(),
        via.mbit_per_s() / direct.mbit_per_s()
    );
    ensure!(seen.via == "vps" && seen.transport == "mptcp", "{seen:?}");
    ensure!(
        seen.remote == SocketAddr::new(a.server_a.into(), SOCKS_PORT),
        "{seen:?}"
    );
    for uplink in [a.proxy_a, a.proxy_b] {
        ensure!(
            links
                .iter()
                .any(|(ip, bytes)| *ip == IpAddr::from(uplink) && *bytes > 1 << 20),
            "no subflow carried a MiB over {uplink}: {links:?}"
        );
    }
    ensure!(
        via.mbit_per_s() > 1.4 * direct.mbit_per_s(),
        "via the VPS {:.1} Mbit/s is not well above direct {:.1}",
        via.mbit_per_s(),
        direct.mbit_per_s()
    );

    // Through the VPS inside TLS, its certificate pinned: the same.
    let (tls, seen) = lab.fetch_seen(lab.site(VIA_TLS, lab.tcp_port), VIA_BYTES)?;
    eprintln!(
        "via the VPS inside TLS (pinned): {:.1} Mbit/s ({:.2}x direct, {:.2}x plain); subflows {:?}",
        tls.mbit_per_s(),
        tls.mbit_per_s() / direct.mbit_per_s(),
        tls.mbit_per_s() / via.mbit_per_s(),
        uplinks(&seen)
    );
    ensure!(
        seen.via == "vps-tls" && seen.subflows.len() >= 2,
        "{seen:?}"
    );
    ensure!(
        tls.mbit_per_s() > 1.4 * direct.mbit_per_s() && tls.mbit_per_s() > 0.8 * via.mbit_per_s(),
        "TLS {:.1} Mbit/s against plain {:.1} and direct {:.1}",
        tls.mbit_per_s(),
        via.mbit_per_s(),
        direct.mbit_per_s()
    );

    // A wrong pin: refused, said so, and the client is served direct.
    let (_, seen) = lab.fetch_seen(lab.site(VIA_BAD_PIN, lab.tcp_port), SMALL_BYTES)?;
    ensure!(seen.via == "direct", "{seen:?}");
    ensure!(
        lab.boxed.wait_for_log(
            &format!("not the pinned sha256={}", "00".repeat(32)),
            Duration::from_secs(5)
        ),
        "the box did not log the refused pin"
    );
    let health = lab.health()?;
    let bad = health.upstreams.iter().find(|u| u.name == "bad-pin");
    ensure!(
        bad.and_then(|u| u.failure.as_ref())
            .is_some_and(|f| f.kind == "tls"),
        "{health:?}"
    );

    // Uplink A cut for 3 s mid-transfer: every byte still arrives, in order.
    let started = Instant::now();
    let cut = thread::scope(|scope| {
        let fetch = scope.spawn(|| lab.fetch(target, VIA_BYTES));
        thread::sleep(Duration::from_millis(800));
        lab.topo.set_link(Ns::Server, PATH_A_IF, false)?;
        thread::sleep(Duration::from_secs(3));
        lab.topo.set_link(Ns::Server, PATH_A_IF, true)?;
        fetch.join().expect("fetch thread")
    })
    .context("the transfer with uplink A cut for 3 s")?;
    eprintln!(
        "via the VPS with uplink A down 3 s: {:.1} Mbit/s, all {} bytes verified ({:.1} s)",
        cut.mbit_per_s(),
        cut.bytes,
        started.elapsed().as_secs_f64()
    );
    // Let the uplink's routes settle before measuring on it again.
    thread::sleep(Duration::from_secs(1));

    // auto:vps learns: the MPTCP site goes direct after the first connection, the
    // TCP-only site keeps going through the VPS.
    for (site, speaks_mptcp) in [(lab.mptcp_port, true), (lab.tcp_port, false)] {
        let target = lab.site(AUTO_VPS, site);
        let (_, first) = lab.fetch_seen(target, SMALL_BYTES)?;
        ensure!(
            first.via == "vps",
            "the first connection goes via: {first:?}"
        );
        ensure!(
            lab.wait_learned(target)? == speaks_mptcp,
            "learned the wrong answer for {target}"
        );
        let (later, second) = lab.fetch_seen(target, SMALL_BYTES)?;
        let expected = if speaks_mptcp { "direct" } else { "vps" };
        ensure!(second.via == expected, "{target}: {second:?}");
        eprintln!(
            "auto:vps to the {} site: first via vps, then {expected} ({} {:.1} Mbit/s)",
            if speaks_mptcp { "MPTCP" } else { "TCP-only" },
            second.transport,
            later.mbit_per_s()
        );
        if speaks_mptcp {
            ensure!(second.transport == "mptcp", "{second:?}");
        }
    }

    // `mptcpctl doctor --probe` from the box: the MPTCP site gets a subflow per uplink,
    // the TCP-only one is named as a case for an upstream.
    for (port, needle) in [
        (lab.mptcp_port, "speaks MPTCP; 2 subflow(s) came up"),
        (lab.tcp_port, "does not speak MPTCP"),
    ] {
        let target = lab.site(AUTO_VPS, port).to_string();
        let out = lab
            .topo
            .command(Ns::Proxy, env!("CARGO_BIN_EXE_mptcpctl"))
            .args([
                "--api",
                "http://127.0.0.1:9",
                "doctor",
                "--json",
                "--probe",
                &target,
            ])
            .output()?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let probe = report["findings"]
            .as_array()
            .and_then(|all| all.iter().find(|f| f["check"] == "probe"))
            .context("a probe finding")?;
        let message = probe["message"].as_str().unwrap_or_default();
        eprintln!("doctor --probe {target}: {message}");
        ensure!(message.contains(needle), "{probe}");
    }

    // The VPS gone: connections still succeed, direct, and /health says why.
    lab.vps.take().context("vps")?.stop()?;
    let after = lab.fetch(lab.site(VIA_VPS, lab.tcp_port), SMALL_BYTES)?;
    let health = lab.health()?;
    let vps = health
        .upstreams
        .iter()
        .find(|u| u.name == "vps")
        .context("vps in /health")?;
    eprintln!(
        "VPS down: served direct at {:.1} Mbit/s; /health: {} {:?}",
        after.mbit_per_s(),
        health.status,
        vps.failure
    );
    ensure!(health.status == "degraded", "{health:?}");
    ensure!(
        vps.state == "down"
            && vps
                .failure
                .as_ref()
                .is_some_and(|f| f.kind == "unreachable"),
        "{vps:?}"
    );
    ensure!(
        lab.boxed.wait_for_log(
            "upstream failed; connections go direct meanwhile",
            Duration::from_secs(5)
        ),
        "the box did not log the failure"
    );
    // And `mptcpctl health` says so, with exit code 4.
    let api = format!("http://{}", lab.boxed.api.context("api")?);
    let out = lab
        .topo
        .command(Ns::Proxy, env!("CARGO_BIN_EXE_mptcpctl"))
        .args(["--api", &api, "health"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(4) && stdout.contains("problem: upstream vps is down"),
        "mptcpctl health: {:?} {stdout}",
        out.status
    );
    Ok(())
}
