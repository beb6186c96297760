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
    let enabled =
        std::fs::read_to_string("/proc/sys/net/mptcp/enabled").is_ok_and(|s| s.trim() == "1");
    if !enabled && !mptcp_test_support::skip("this kernel has no upstream MPTCP enabled") {
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
