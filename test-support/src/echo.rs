//! A loopback echo server, the simplest target to relay to.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// How many connections [`echo_server`] answers before it stops accepting: bounded, so a
/// test that goes wrong cannot keep its thread busy forever.
const ECHO_CONNECTIONS: usize = 16;

/// An echo server on a free port of 127.0.0.1, on a thread of its own, for up to 16
/// connections, one at a time; it lives until the test process ends.
///
/// # Panics
/// When no port of 127.0.0.1 can be bound.
pub fn echo_server() -> SocketAddr {
    serve_echo(TcpListener::bind("127.0.0.1:0").expect("bind echo"))
}

/// [`echo_server`] listening with `IPPROTO_MPTCP`: a relay opened as MPTCP to it stays
/// MPTCP, with a subflow that `/connections` and `/metrics` report.
///
/// # Panics
/// When the kernel has no MPTCP (or `net.mptcp.enabled=0`), or no port can be bound.
pub fn mptcp_echo_server() -> SocketAddr {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP))
        .expect("MPTCP socket (net.mptcp.enabled=1 needed)");
    socket
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .expect("bind echo");
    socket.listen(16).expect("listen");
    serve_echo(socket.into())
}

fn serve_echo(listener: TcpListener) -> SocketAddr {
    let addr = listener.local_addr().expect("echo addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().take(ECHO_CONNECTIONS) {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = conn.read(&mut buf) {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    addr
}
