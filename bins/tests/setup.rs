//! `mptcpctl setup` against the real kernel: a box with two rate-limited uplinks that
//! only have their addresses and DHCP-style default routes. After setup the doctor
//! passes and one MPTCP connection runs at about the sum of both; `--remove` puts back
//! exactly the state before.
//!
//! Needs root and network namespaces: skipped with a message on a laptop, a failure when
//! `CI` is set. `--nocapture` prints the figures.

use std::net::SocketAddr;

use anyhow::ensure;
use mptcp_test_support::netns::{Namespace, PatternServer, Proto, connect, fetch_in_netns};
use mptcp_test_support::require_netns;

const RATE: &str = "tbf rate 20mbit burst 16kb latency 20ms";
const BYTES: u64 = 8 << 20;

struct Lab {
    boxed: Namespace,
    server: Namespace,
}

impl Lab {
    /// Box uplinks u1 (10.78.1.1) and u2 (10.78.2.1), each a 20 Mbit/s link to the
    /// server's gateway side; the server's own address 10.78.9.1 is reached through
    /// either. Two default routes in the main table, metrics 100 and 200, as DHCP
    /// clients leave them.
    fn new() -> anyhow::Result<Lab> {
        let boxed = Namespace::new("setup")?;
        let server = Namespace::new("setup-srv")?;
        for ns in [&boxed, &server] {
            ns.set_sysctls(&[
                ("net/mptcp/enabled", "1"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
            ])?;
        }
        for (n, dev) in [(1, "u1"), (2, "u2")] {
            boxed.add_veth(dev, &server, dev)?;
            boxed.add_address(dev, format!("10.78.{n}.1").parse()?, 24)?;
            server.add_address(dev, format!("10.78.{n}.254").parse()?, 24)?;
            for ns in [&boxed, &server] {
                ns.tc(&format!("qdisc add dev {dev} root {RATE}"))?;
            }
            boxed.ip(&format!(
                "route add default via 10.78.{n}.254 dev {dev} metric {n}00"
            ))?;
        }
        server.ip("addr add 10.78.9.1/32 dev lo")?;
        server.set_mptcp_limits(2, 2)?;
        Ok(Lab { boxed, server })
    }

    fn ctl(&self, args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
        let out = self
            .boxed
            .command(env!("CARGO_BIN_EXE_mptcpctl"))
            .args(["--api", "http://127.0.0.1:9"])
            .args(args)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.code(), text))
    }

    /// IPv4 rules, every table's IPv4 routes, endpoints and limits, as `ip` shows them.
    fn state(&self) -> anyhow::Result<String> {
        let mut all = String::new();
        // IPv4 only: IPv6 link-local routes come up on their own, in their own time.
        for args in [
            "-4 rule",
            "-4 route show table all",
            "mptcp endpoint",
            "mptcp limits",
        ] {
            all.push_str(&self.boxed.ip(args)?);
        }
        Ok(all)
    }

    fn fetch(&self, proto: Proto, server: &PatternServer) -> anyhow::Result<f64> {
        let target = SocketAddr::from(([10, 78, 9, 1], server.port()));
        Ok(fetch_in_netns(self.boxed.name(), BYTES, || connect(proto, target))?.mbit_per_s())
    }
}

#[test]
fn setup_makes_the_doctor_pass_aggregates_both_uplinks_and_is_undone_exactly() -> anyhow::Result<()>
{
    if !require_netns() {
        return Ok(());
    }
    let lab = Lab::new()?;
    let server = PatternServer::start(lab.server.name(), Proto::Mptcp, 0)?;
    let before = lab.state()?;
    let (code, _) = lab.ctl(&["doctor"])?;
    ensure!(code == Some(4), "the doctor passes an unset box");
    let single = lab.fetch(Proto::Mptcp, &server)?;

    let (code, dry) = lab.ctl(&["setup", "u1", "u2", "--dry-run"])?;
    ensure!(code == Some(0), "{dry}");
    ensure!(
        dry.contains("ip mptcp endpoint add 10.78.2.1 dev u2 subflow")
            && dry.contains("ip route add default via 10.78.2.254 dev u2 table"),
        "{dry}"
    );
    let now = lab.state()?;
    ensure!(
        now == before,
        "--dry-run changed something:\n{now}\nwas:\n{before}"
    );

    let (code, out) = lab.ctl(&["setup", "u1", "u2"])?;
    ensure!(code == Some(0), "{out}");
    let (code, doctor) = lab.ctl(&["doctor"])?;
    ensure!(code == Some(0), "the doctor after setup: {doctor}");
    let (code, again) = lab.ctl(&["setup", "u1", "u2"])?;
    ensure!(
        code == Some(0) && again.contains("nothing to do"),
        "{again}"
    );

    let both = lab.fetch(Proto::Mptcp, &server)?;
    eprintln!("one MPTCP connection: {single:.1} Mbit/s before setup, {both:.1} after");
    ensure!(
        both > 1.4 * single,
        "{both:.1} Mbit/s is not well above {single:.1}"
    );

    // The record decides what --remove deletes: one others may write is not trusted.
    let ino = lab
        .boxed
        .exec_ok("stat", ["-L", "-c", "%i", "/proc/self/ns/net"])?;
    let record = format!("/run/mptcp-socks/setup-{}.json", ino.trim());
    let mode =
        |m: u32| std::fs::set_permissions(&record, std::os::unix::fs::PermissionsExt::from_mode(m));
    mode(0o666)?;
    let (code, out) = lab.ctl(&["setup", "--remove"])?;
    ensure!(code == Some(1) && out.contains("not trusted"), "{out}");
    mode(0o600)?;
    let (code, out) = lab.ctl(&["setup", "--remove"])?;
    ensure!(code == Some(0), "{out}");
    ensure!(
        lab.state()? == before,
        "--remove left:\n{}\nwas:\n{before}",
        lab.state()?
    );
    Ok(())
}
