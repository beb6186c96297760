//! Issue 7's attacks against the real daemon, each in namespaces of its own: the box
//! itself is not reachable through the proxy, one client cannot starve the others, idle
//! relays end, public clients are refused by default, the proxy cannot be nested, and
//! password guessing is slowed and summarised. Traffic stays in the test's namespaces.

mod common;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, curl, start_in_proxy};
use mptcp_test_support::netns::{Ns, Topology};
use mptcp_test_support::socks::blocking::{self as socks, Answer, Target};
use socket2::{Domain, Socket, Type};

/// An echo server on one listener in one namespace; stops accepting on drop. At most
/// [`Echo::MAX_CONNECTIONS`] connections, each ending after 30 s without data.
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Echo {
    const MAX_CONNECTIONS: usize = 64;

    fn start(topo: &Topology, ns: Ns, bind: SocketAddr) -> Echo {
        let listener = topo
            .in_netns(ns, || TcpListener::bind(bind))
            .unwrap_or_else(|e| panic!("echo listener on {bind}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("echo address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let acceptor = std::thread::spawn(move || {
            let mut served = 0;
            while !flag.load(Ordering::Relaxed) && served < Echo::MAX_CONNECTIONS {
                match listener.accept() {
                    Ok((conn, _)) => {
                        served += 1;
                        std::thread::spawn(move || echo(conn));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Echo {
            addr,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

fn echo(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        if conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// A TCP connection to `proxy` from the client namespace, from `source` if given.
fn dial(topo: &Topology, source: Option<IpAddr>, proxy: SocketAddr) -> io::Result<TcpStream> {
    topo.in_netns(Ns::Client, || {
        let sock = Socket::new(Domain::for_address(proxy), Type::STREAM, None)?;
        if let Some(ip) = source {
            sock.bind(&SocketAddr::new(ip, 0).into())?;
        }
        sock.connect_timeout(&proxy.into(), Duration::from_secs(5))?;
        Ok(sock.into())
    })
}

/// The proxy's answer to a CONNECT to `target` from the client namespace.
fn ask(
    topo: &Topology,
    daemon: &Daemon,
    source: Option<IpAddr>,
    target: Target<'_>,
    auth: Option<(&str, &str)>,
) -> io::Result<(Answer, TcpStream)> {
    let mut stream = dial(topo, source, daemon.socks)?;
    let answer = socks::handshake(&mut stream, target, auth, 1)?;
    Ok((answer, stream))
}

/// A relayed connection that echoes `ping` back.
fn relay(
    topo: &Topology,
    daemon: &Daemon,
    source: Option<IpAddr>,
    target: Target<'_>,
) -> anyhow::Result<TcpStream> {
    let (answer, mut stream) = ask(topo, daemon, source, target, None)?;
    anyhow::ensure!(answer == Answer::Reply(0), "{target:?}: {answer:?}");
    assert_echoes(&mut stream)?;
    Ok(stream)
}

fn assert_echoes(stream: &mut TcpStream) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf)?;
    anyhow::ensure!(&buf == b"ping", "echo returned {buf:?}");
    Ok(())
}

/// Replaces the rule file in one step (a rename), as an editor would.
fn write_rules(dir: &tempfile::TempDir, rules: &str) {
    let tmp = dir.path().join("rules.new");
    std::fs::write(&tmp, rules).expect("write the new rules");
    std::fs::rename(&tmp, dir.path().join("rules")).expect("replace the rule file");
}

/// Adds `addr` to `dev` in `ns`.
fn add_address(topo: &Topology, ns: Ns, addr: &str, dev: &str) {
    topo.exec_ok(ns, "ip", ["addr", "add", addr, "dev", dev])
        .unwrap_or_else(|e| panic!("adding {addr} to {dev}: {e:#}"));
}

#[test]
fn the_box_itself_is_refused_through_the_proxy_until_a_rule_allows_it() {
    let Some(topo) = Topology::new_or_skip() else {
        return;
    };
    let a = topo.addrs();
    topo.write_hosts(Ns::Proxy, &[("box.test", Ipv4Addr::LOCALHOST.into())])
        .expect("hosts file");
    let (daemon, dir) = start_in_proxy(&topo, ".\n", &[]).expect("daemon starts");
    // Dual-stack on `::`: every address form of the box below reaches this service.
    let service = Echo::start(&topo, Ns::Proxy, "[::]:0".parse().unwrap());
    let port = service.port();
    let v4 = |ip: Ipv4Addr, port| Target::Addr(SocketAddr::new(ip.into(), port));
    let v6 = |ip: Ipv6Addr, port| Target::Addr(SocketAddr::new(ip.into(), port));
    let forms = [
        v4(Ipv4Addr::LOCALHOST, 5000),
        v4(Ipv4Addr::LOCALHOST, port),
        v4(Ipv4Addr::new(127, 0, 0, 2), port),
        v4(Ipv4Addr::UNSPECIFIED, port),
        v4(Ipv4Addr::UNSPECIFIED, 5000),
        v6(Ipv6Addr::UNSPECIFIED, port),
        v6(Ipv6Addr::LOCALHOST, port),
        v6(Ipv4Addr::LOCALHOST.to_ipv6_mapped(), port),
        v6(Ipv4Addr::LOCALHOST.to_ipv6_mapped(), 5000),
        v4(a.proxy_lan, port),
        v4(a.proxy_a, port),
        v4(Ipv4Addr::new(169, 254, 1, 1), port),
        Target::Name("localhost", port),
        Target::Name("localhost", 5000),
        Target::Name("box.test", port),
        Target::Name("box.test", 5000),
        Target::Name("127.0.0.1", port),
    ];
    for target in forms {
        let answer = ask(&topo, &daemon, None, target, None).map(|(answer, _)| answer);
        assert!(
            matches!(answer, Ok(Answer::Reply(2))),
            "{target:?} through the proxy: {answer:?}, want reply 2 (not allowed)"
        );
    }

    // curl as a real client, the proxy resolving the name or curl doing it.
    let socks = daemon.socks.to_string();
    for (flag, url) in [
        ("--socks5-hostname", "http://127.0.0.1:5000/rules"),
        ("--socks5-hostname", "http://localhost:5000/rules"),
        ("--socks5", "http://127.0.0.1:5000/rules"),
    ] {
        let mut cmd = topo.command(Ns::Client, "curl");
        cmd.args([flag, &socks, url]);
        let (status, body) = curl(cmd).expect("curl runs");
        assert_eq!(status, 0, "curl {flag} {url} got HTTP {status}: {body}");
    }

    // The operator opens the box's loopback services (in the rule file: the REST JSON
    // has no `access` field yet).
    write_rules(&dir, "127.0.0.1,0,default,default,access=allow,\n.\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut opened = relay(&topo, &daemon, None, v4(Ipv4Addr::LOCALHOST, port));
    while opened.is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        opened = relay(&topo, &daemon, None, v4(Ipv4Addr::LOCALHOST, port));
    }
    opened.expect("the allowed loopback service is reachable after the rule change");
    // The API stays out of reach whatever the rules say, also by other forms and names;
    // loopback forms the rule does not name stay refused.
    for target in [
        v4(Ipv4Addr::LOCALHOST, 5000),
        v4(Ipv4Addr::UNSPECIFIED, 5000),
        v4(Ipv4Addr::UNSPECIFIED, port),
        v6(Ipv4Addr::LOCALHOST.to_ipv6_mapped(), 5000),
        Target::Name("box.test", 5000),
        Target::Name("localhost", 5000),
        v6(Ipv6Addr::LOCALHOST, port),
    ] {
        let answer = ask(&topo, &daemon, None, target, None).map(|(answer, _)| answer);
        assert!(
            matches!(answer, Ok(Answer::Reply(2))),
            "{target:?} after the allow rules: {answer:?}, want reply 2"
        );
    }
    let mut cmd = topo.command(Ns::Client, "curl");
    cmd.args(["--socks5-hostname", &socks, "http://127.0.0.1:5000/rules"]);
    let (status, body) = curl(cmd).expect("curl runs");
    assert_eq!(
        status, 0,
        "the API through the proxy: HTTP {status}: {body}"
    );
}

#[test]
fn a_client_at_its_cap_does_not_keep_another_client_out() {
    let Some(topo) = Topology::new_or_skip() else {
        return;
    };
    let a = topo.addrs();
    let second: Ipv4Addr = Ipv4Addr::from(u32::from(a.client) + 1);
    add_address(&topo, Ns::Client, &format!("{second}/24"), "veth-p");
    let (daemon, _dir) =
        start_in_proxy(&topo, ".\n", &["--max-client-connections", "4"]).expect("daemon starts");
    let service = Echo::start(&topo, Ns::Server, "0.0.0.0:0".parse().unwrap());
    let target = Target::Addr(SocketAddr::new(a.server_a.into(), service.port()));
    let first = Some(IpAddr::from(a.client));
    let mut held: Vec<TcpStream> = (0..4)
        .map(|i| {
            relay(&topo, &daemon, first, target).unwrap_or_else(|e| panic!("relay {i}: {e:#}"))
        })
        .collect();
    // Over its cap: closed at once, before the greeting is answered.
    let mut over = dial(&topo, first, daemon.socks).expect("TCP connect");
    let answer = socks::handshake(&mut over, target, None, 1);
    assert!(answer.is_err(), "the fifth connection got {answer:?}");

    let started = Instant::now();
    relay(&topo, &daemon, Some(second.into()), target).expect("the other client is served");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the other client waited {took:?}"
    );
    for (i, stream) in held.iter_mut().enumerate() {
        assert_echoes(stream).unwrap_or_else(|e| panic!("held relay {i}: {e:#}"));
    }
    // A slot freed is a slot the first client gets back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut again = relay(&topo, &daemon, first, target);
    while again.is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        again = relay(&topo, &daemon, first, target);
    }
    again.expect("served again once under its cap");
    assert!(daemon.log().contains("per-client connection limit reached"));
}

#[test]
fn an_idle_relay_is_closed_after_the_idle_timeout() {
    let Some(topo) = Topology::new_or_skip() else {
        return;
    };
    let a = topo.addrs();
    let (daemon, _dir) =
        start_in_proxy(&topo, ".\n", &["--idle-timeout", "1"]).expect("daemon starts");
    let service = Echo::start(&topo, Ns::Server, "0.0.0.0:0".parse().unwrap());
    let target = Target::Addr(SocketAddr::new(a.server_a.into(), service.port()));
    // A relay that keeps talking, every 300 ms for 2.4 s, is not idle.
    let mut busy = relay(&topo, &daemon, None, target).expect("busy relay");
    let mut idle = relay(&topo, &daemon, None, target).expect("idle relay");
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(300));
        assert_echoes(&mut busy).expect("a relay in use stays open");
    }
    assert!(
        socks::closed_within(&mut idle, Duration::from_secs(5)),
        "the idle relay is still open"
    );
    assert!(daemon.wait_for_log("closed: idle timeout", Duration::from_secs(5)));
}

#[test]
fn a_public_client_is_refused_without_auth_unless_the_flag_opens_it() {
    let Some(topo) = Topology::new_or_skip() else {
        return;
    };
    let a = topo.addrs();
    add_address(&topo, Ns::Client, "203.0.113.2/24", "veth-p");
    add_address(&topo, Ns::Proxy, "203.0.113.1/24", "veth-c");
    let public = Some(IpAddr::from(Ipv4Addr::new(203, 0, 113, 2)));
    let private = Some(IpAddr::from(a.client));
    let service = Echo::start(&topo, Ns::Server, "0.0.0.0:0".parse().unwrap());
    let target = Target::Addr(SocketAddr::new(a.server_a.into(), service.port()));
    {
        let (daemon, _dir) = start_in_proxy(&topo, ".\n", &[]).expect("daemon starts");
        let mut stream = dial(&topo, public, daemon.socks).expect("TCP connect");
        let answer = socks::handshake(&mut stream, target, None, 1);
        assert!(answer.is_err(), "the public client got {answer:?}");
        relay(&topo, &daemon, private, target).expect("a private client is served");
        assert!(
            daemon
                .log()
                .contains("refused a client from outside the local networks")
        );
    }
    {
        let (daemon, _dir) =
            start_in_proxy(&topo, ".\n", &["-w", &a.client.to_string()]).expect("daemon starts");
        let mut stream = dial(&topo, public, daemon.socks).expect("TCP connect");
        let answer = socks::handshake(&mut stream, target, None, 1);
        assert!(answer.is_err(), "with -w, the public client got {answer:?}");
        relay(&topo, &daemon, private, target).expect("the -w client is served");
    }
    {
        let (daemon, _dir) =
            start_in_proxy(&topo, ".\n", &["--allow-public-clients"]).expect("daemon starts");
        relay(&topo, &daemon, public, target).expect("--allow-public-clients serves it");
    }
}

#[test]
fn the_proxy_cannot_be_nested_through_itself() {
    let Some(topo) = Topology::new_or_skip() else {
        return;
    };
    let a = topo.addrs();
    topo.write_hosts(Ns::Proxy, &[("proxy.test", a.proxy_lan.into())])
        .expect("hosts file");
    // Even a rule that opens the proxy's own address does not open its listener.
    let rules = format!(
        "{},0,default,default,access=allow,\n127.0.0.1,0,default,default,access=allow,\n.\n",
        a.proxy_lan
    );
    let (daemon, _dir) = start_in_proxy(&topo, &rules, &[]).expect("daemon starts");
    let port = daemon.socks.port();
    let echo = Echo::start(&topo, Ns::Proxy, "127.0.0.1:0".parse().unwrap());
    let mapped = SocketAddr::new(a.proxy_lan.to_ipv6_mapped().into(), port);
    for round in 0..20 {
        for target in [
            Target::Addr(daemon.socks),
            Target::Addr(mapped),
            Target::Name("proxy.test", port),
        ] {
            let (answer, mut stream) = ask(&topo, &daemon, None, target, None)
                .unwrap_or_else(|e| panic!("round {round}, {target:?}: {e}"));
            assert_eq!(answer, Answer::Reply(2), "round {round}, {target:?}");
            // Nothing follows a refusal on that connection: no second request nests.
            assert!(socks::closed_within(&mut stream, Duration::from_secs(5)));
        }
    }
    relay(&topo, &daemon, None, Target::Addr(echo.addr)).expect("the daemon still serves");
}

#[test]
fn password_guessing_is_slowed_and_logged_as_a_summary() {
    let Some(topo) = Topology::new_or_skip() else {
        return;
    };
    let a = topo.addrs();
    let other: Ipv4Addr = Ipv4Addr::from(u32::from(a.client) + 1);
    add_address(&topo, Ns::Client, &format!("{other}/24"), "veth-p");
    let (daemon, _dir) =
        start_in_proxy(&topo, ".\n", &["-u", "alice", "-P", "s3cret"]).expect("daemon starts");
    let service = Echo::start(&topo, Ns::Server, "0.0.0.0:0".parse().unwrap());
    let target = Target::Addr(SocketAddr::new(a.server_a.into(), service.port()));
    let guesser = Some(IpAddr::from(a.client));
    let mut took = Vec::new();
    for i in 0..5 {
        let started = Instant::now();
        let answer = ask(
            &topo,
            &daemon,
            guesser,
            target,
            Some(("alice", &format!("guess{i}"))),
        )
        .map(|(answer, _)| answer);
        took.push(started.elapsed());
        assert!(
            matches!(answer, Ok(Answer::AuthRefused(status)) if status != 0),
            "guess {i}: {answer:?}"
        );
    }
    eprintln!("attempt durations: {took:?}");
    assert!(
        took[4] >= Duration::from_millis(500),
        "the fifth guess was answered after {took:?}"
    );
    // Another client is not slowed by the guesser.
    let (answer, _) = ask(
        &topo,
        &daemon,
        Some(other.into()),
        target,
        Some(("alice", "s3cret")),
    )
    .expect("the other client's request");
    assert_eq!(answer, Answer::Reply(0));
    let guesser_ip = a.client.to_string();
    let log = daemon.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("failed password"))
        .collect();
    assert!(
        (1..=2).contains(&warnings.len()),
        "want 1-2 summary lines, got {warnings:#?}"
    );
    let mentions = log
        .lines()
        .filter(|l| l.contains(&format!("{guesser_ip}:")))
        .count();
    assert!(
        mentions <= 2,
        "{mentions} log lines name the guesser:\n{log}"
    );
}

/// Linux connects 0.0.0.0 to 127.0.0.1, so a rule opening 0.0.0.0/8 must not open the
/// API listening on 127.0.0.1:5000 (found by this test: the own-listener check once
/// compared addresses literally).
#[test]
fn an_allow_rule_for_0_0_0_0_does_not_open_the_api() {
    let Some(topo) = Topology::new_or_skip() else {
        return;
    };
    let rules = "127.0.0.1,0,default,default,access=allow,\n\
                 0.0.0.0/8,0,default,default,access=allow,\n.\n";
    let (daemon, _dir) = start_in_proxy(&topo, rules, &[]).expect("daemon starts");
    let api = Target::Addr(SocketAddr::from(([0, 0, 0, 0], 5000)));
    let (answer, mut stream) = ask(&topo, &daemon, None, api, None).expect("the request");
    if answer == Answer::Reply(0) {
        // Show what got through: the rules, read by a client of the proxy.
        let _ = stream.write_all(b"GET /rules HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n\r\n");
        let mut head = [0u8; 64];
        let n = stream.read(&mut head).unwrap_or(0);
        panic!(
            "0.0.0.0:5000 reached the API: {:?}",
            String::from_utf8_lossy(&head[..n])
        );
    }
    assert_eq!(answer, Answer::Reply(2));
}
