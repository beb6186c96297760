//! Opening outbound sockets against the real kernel (loopback only).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use mptcp_policy::{
    Opened, PathManager, Scheduler, Settings, Transport, fallback_count, is_mptcp, mptcp_info,
    open_outbound, transport,
};
use socket2::{Domain, Protocol, Socket, Type};

const MPTCP_ON: Settings = Settings {
    mptcp: true,
    scheduler: Scheduler::Default,
    path_manager: PathManager::Default,
};
const MPTCP_OFF: Settings = Settings {
    mptcp: false,
    ..MPTCP_ON
};

fn upstream_mptcp_here() -> bool {
    let on = std::fs::read_to_string("/proc/sys/net/mptcp/enabled").is_ok_and(|s| s.trim() == "1");
    if !on {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs a kernel with net.mptcp.enabled=1"
        );
        eprintln!("skipping: this kernel has no upstream MPTCP enabled");
    }
    on
}

/// A listener on 127.0.0.1 that accepts one connection and echoes one message.
fn listener(protocol: Protocol) -> (SocketAddr, std::thread::JoinHandle<Option<u8>>) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(protocol)).expect("listener socket");
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(8).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let handle = std::thread::spawn(move || {
        let (conn, _) = socket.accept().ok()?;
        let mut conn: TcpStream = conn.into();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).ok()?;
        conn.write_all(&buf).ok()?;
        // What the server side sees: the subflow count if MPTCP.
        mptcp_info(&conn).ok().flatten().map(|i| i.subflow_count())
    });
    (addr, handle)
}

fn connect(addr: SocketAddr, settings: &Settings) -> (TcpStream, Opened) {
    let (socket, opened) = open_outbound(addr, settings).expect("open_outbound");
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .expect("connect");
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    (stream, opened)
}

#[test]
fn mptcp_rule_gives_an_mptcp_connection() {
    if !upstream_mptcp_here() {
        return;
    }
    let (addr, server) = listener(Protocol::MPTCP);
    let (stream, opened) = connect(addr, &MPTCP_ON);
    assert_eq!(opened, Opened::Mptcp);
    assert_eq!(transport(&stream, opened), Transport::Mptcp);
    assert_eq!(is_mptcp(&stream).unwrap(), Some(true));
    let info = mptcp_info(&stream)
        .unwrap()
        .expect("MPTCP_INFO on an MPTCP socket");
    assert_ne!(info.token, 0);
    assert!(info.subflow_count() >= 1);
    assert_eq!(server.join().unwrap(), Some(1));
}

#[test]
fn tcp_rule_gives_plain_tcp_even_to_an_mptcp_server() {
    if !upstream_mptcp_here() {
        return;
    }
    let (addr, server) = listener(Protocol::MPTCP);
    let (stream, opened) = connect(addr, &MPTCP_OFF);
    assert_eq!(opened, Opened::Tcp);
    assert_eq!(transport(&stream, opened), Transport::Tcp);
    assert_eq!(mptcp_info(&stream).unwrap(), None);
    assert_eq!(is_mptcp(&stream).unwrap(), Some(false));
    assert_eq!(
        server.join().unwrap(),
        None,
        "server saw MPTCP from a TCP rule"
    );
}

#[test]
fn a_tcp_only_server_makes_the_connection_fall_back() {
    if !upstream_mptcp_here() {
        return;
    }
    let (addr, server) = listener(Protocol::TCP);
    let (stream, opened) = connect(addr, &MPTCP_ON);
    assert_eq!(opened, Opened::Mptcp);
    assert_eq!(transport(&stream, opened), Transport::Fallback);
    assert_eq!(mptcp_info(&stream).unwrap(), None);
    assert_eq!(server.join().unwrap(), None);
}

#[test]
fn mptcp_disabled_in_the_namespace_falls_back_to_tcp_and_is_counted() {
    if !upstream_mptcp_here() {
        return;
    }
    // Needs CAP_SYS_ADMIN for a private network namespace (where net.mptcp.enabled=0
    // affects nobody else); run on its own thread, since unshare moves only the caller.
    let result = std::thread::spawn(|| {
        // SAFETY: plain syscall; only this thread changes namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // /proc/sys/net answers for the opening thread's namespace.
        std::fs::write("/proc/sys/net/mptcp/enabled", "0")?;
        let before = fallback_count();
        let (socket, opened) =
            open_outbound("127.0.0.1:9".parse().unwrap(), &MPTCP_ON).expect("fallback socket");
        assert_eq!(opened, Opened::TcpFallback);
        assert_eq!(transport(&socket, opened), Transport::Fallback);
        assert!(fallback_count() > before);
        Ok(())
    })
    .join()
    .unwrap();
    match result {
        Ok(()) => {}
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: cannot make a private network namespace here ({e})");
        }
        Err(e) => panic!("CI needs root for a private network namespace: {e}"),
    }
}
