//! The server end of a chain (the daemon on a VPS): its SOCKS listener takes MPTCP
//! connections, so that a client box's subflows over each uplink can join, and plain
//! TCP ones; where the kernel has no MPTCP it is a TCP listener and the log says so.

mod common;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;

use common::daemon::Daemon;
use mptcp_policy::{Opened, Transport};
use mptcp_test_support::netns::Namespace;
use mptcp_test_support::socks::blocking as socks;
use mptcp_test_support::socks::{CONNECT, Target};
use socket2::{Domain, Protocol, Socket, Type};

/// Loopback, where the echo server listens, is the proxy's own host: opened on purpose.
const RULES: &str = "127.0.0.1,1,default,default,access=allow,\n.\n";

#[test]
fn mptcp_clients_reach_the_socks_listener_over_mptcp_and_tcp_clients_still_do() {
    if !mptcp_test_support::require_mptcp() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::write(&rules, RULES).expect("rules");
    let daemon = Daemon::in_process(
        ["-i", "127.0.0.1", "-p", "0", "--api", "off", "--policy"]
            .map(OsString::from)
            .into_iter()
            .chain([rules.into()]),
    )
    .expect("daemon starts");
    let echo = mptcp_test_support::echo_server();

    // A client box opens its leg to the server as MPTCP.
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP)).expect("socket");
    socket.connect(&daemon.socks.into()).expect("connect");
    let mut mptcp: TcpStream = socket.into();
    relays(&mut mptcp, echo, "MPTCP client");
    assert_eq!(
        mptcp_policy::transport(&mptcp, Opened::Mptcp),
        Transport::Mptcp,
        "the SOCKS listener did not take the connection as MPTCP"
    );
    let info = mptcp_policy::mptcp_info(&mptcp)
        .expect("MPTCP_INFO")
        .expect("an MPTCP connection has MPTCP_INFO");
    assert!(info.token != 0, "{info:?}");
    // The echo server takes one connection at a time.
    drop(mptcp);

    // A phone or browser speaks plain TCP to the same listener.
    let mut tcp = TcpStream::connect(daemon.socks).expect("connect");
    relays(&mut tcp, echo, "TCP client");
    assert_eq!(mptcp_policy::mptcp_info(&tcp).expect("getsockopt"), None);
    drop(tcp);
    daemon.stop().expect("stop");
}

/// CONNECTs `stream` to `echo` through the daemon and checks that bytes come back.
fn relays(stream: &mut TcpStream, echo: std::net::SocketAddr, who: &str) {
    socks::handshake(stream, Target::Addr(echo), None, CONNECT)
        .and_then(|answer| answer.ensure_succeeded())
        .unwrap_or_else(|e| panic!("{who}: {e}"));
    stream.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    stream
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{who}: no echo: {e}"));
    assert_eq!(&buf, b"ping", "{who}");
}

#[test]
fn without_mptcp_the_listener_is_plain_tcp_and_says_so() {
    if !mptcp_test_support::require_netns() {
        return;
    }
    // A namespace of its own, where net.mptcp.enabled=0 affects nobody else.
    let ns = Namespace::new("nomptcp").expect("namespace");
    ns.set_sysctls(&[("net/mptcp/enabled", "0")])
        .expect("disable MPTCP");
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::write(&rules, RULES).expect("rules");
    let daemon = Daemon::in_process_in(
        Some(ns.name()),
        ["-i", "127.0.0.1", "-p", "0", "--api", "off", "--policy"]
            .map(OsString::from)
            .into_iter()
            .chain([rules.into()]),
    )
    .expect("the daemon starts without MPTCP");
    assert!(
        daemon.log().contains("cannot open an MPTCP listener"),
        "{}",
        daemon.log()
    );
    ns.in_netns(|| {
        let echo = mptcp_test_support::echo_server();
        let mut tcp = TcpStream::connect(daemon.socks).expect("connect");
        relays(&mut tcp, echo, "TCP client");
    });
    daemon.stop().expect("stop");
}

/// A daemon on loopback with `args` after the usual ones, serving [`RULES`] from `dir`.
fn daemon_in(dir: &std::path::Path, args: &[&str]) -> Daemon {
    let rules = dir.join("rules");
    if !rules.exists() {
        std::fs::write(&rules, RULES).expect("rules");
    }
    Daemon::in_process(
        ["-i", "127.0.0.1", "-p", "0", "--api", "off", "--policy"]
            .map(OsString::from)
            .into_iter()
            .chain([rules.into_os_string()])
            .chain(args.iter().map(OsString::from)),
    )
    .expect("daemon starts")
}

/// The `sha256=<hex>` the binary prints on stdout with `--tls`, once it runs.
fn printed_fingerprint(state: &std::path::Path, rules: &std::path::Path) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mptcp-socksd"))
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "--api",
            "off",
            "--tls",
            "--state-dir",
        ])
        .arg(state)
        .arg("--policy")
        .arg(rules)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mptcp-socksd runs");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("a line on stdout");
    let _ = child.kill();
    let _ = child.wait();
    line
}

#[test]
fn a_tls_server_prints_its_fingerprint_and_keeps_its_certificate_across_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let rules = dir.path().join("rules");
    let first = printed_fingerprint(&state, &rules);
    assert!(
        first.len() == "sha256=".len() + 64 + 1
            && first.starts_with("sha256=")
            && first[7..71].bytes().all(|b| b.is_ascii_hexdigit()),
        "{first:?}"
    );
    let again = printed_fingerprint(&state, &rules);
    assert_eq!(first, again, "a restart keeps the certificate");
    for file in ["mptcp-socksd-cert.pem", "mptcp-socksd-key.pem"] {
        let mode = std::fs::metadata(state.join(file))
            .expect(file)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let ctl = std::process::Command::new(env!("CARGO_BIN_EXE_mptcpctl"))
        .arg("tls-fingerprint")
        .arg(&state)
        .output()
        .expect("mptcpctl runs");
    assert_eq!(String::from_utf8_lossy(&ctl.stdout), first);
}

#[test]
fn a_box_reaches_a_tls_server_with_its_pin_and_password_and_refuses_a_wrong_pin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vps_dir = dir.path().join("vps");
    std::fs::create_dir(&vps_dir).expect("dir");
    let vps = daemon_in(&vps_dir, &["--tls", "-u", "box", "-P", "s3cret"]);
    let fingerprint = mptcp_socksd::tls_identity::fingerprint_of(&vps_dir).expect("created");
    // The far end of a chain needs no endpoints: the doctor does not warn it about them.
    assert!(
        !vps.log().contains("mptcpctl doctor checks again"),
        "{}",
        vps.log()
    );
    assert!(
        vps.wait_for_log(
            &format!("sha256={fingerprint}"),
            std::time::Duration::from_secs(5)
        ),
        "the start-up log names the fingerprint"
    );
    let echo = mptcp_test_support::echo_server();
    let wrong = "ab".repeat(32);
    let box_dir = dir.path().join("box");
    std::fs::create_dir(&box_dir).expect("dir");
    std::fs::write(
        box_dir.join("rules"),
        "127.0.0.1,1,default,default,access=allow,via=vps\nlocalhost,1,default,default,via=wrong\n.\n",
    )
    .expect("rules");
    let boxed = daemon_in(
        &box_dir,
        &[
            "--upstream",
            &format!(
                "vps=socks5+tls://box:s3cret@{}#sha256={fingerprint}",
                vps.socks
            ),
            "--upstream",
            &format!("wrong=socks5+tls://box:s3cret@{}#sha256={wrong}", vps.socks),
        ],
    );
    let mut through = TcpStream::connect(boxed.socks).expect("connect");
    relays(&mut through, echo, "through the pinned TLS upstream");
    assert!(
        vps.wait_for_log("connected", std::time::Duration::from_secs(5)),
        "the VPS relayed it"
    );
    drop(through);

    // The same echo server by name: its rule names the wrongly pinned upstream, so the
    // box goes direct (to 127.0.0.1, which its address rule opens).
    let mut direct = TcpStream::connect(boxed.socks).expect("connect");
    socks::handshake(
        &mut direct,
        Target::Name("localhost", echo.port()),
        None,
        CONNECT,
    )
    .and_then(|answer| answer.ensure_succeeded())
    .expect("served direct after the pin was refused");
    direct.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    direct.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"ping");
    assert!(
        boxed.wait_for_log(
            &format!("not the pinned sha256={wrong}"),
            std::time::Duration::from_secs(5)
        ),
        "the box logs the refused pin"
    );
}
