//! Opening outbound sockets against the real kernel (loopback only).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use mptcp_policy::{
    Opened, PathManager, Scheduler, Settings, Transport, fallback_count, is_mptcp,
    local_address_up, mptcp_info, open_outbound, subflows, transport,
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
    if !mptcp_test_support::require_mptcp() {
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
    if !mptcp_test_support::require_mptcp() {
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
    if !mptcp_test_support::require_mptcp() {
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
    if !mptcp_test_support::require_mptcp() {
        return;
    }
    // Needs CAP_SYS_ADMIN for a private network namespace (where net.mptcp.enabled=0
    // affects nobody else); run on its own thread, since unshare moves only the caller.
    let result = std::thread::spawn(|| {
        // Only this thread changes namespace.
        mptcp_test_support::sys::unshare_net()?;
        // /proc/sys/net answers for the opening thread's namespace.
        std::fs::write("/proc/sys/net/mptcp/enabled", "0")?;
        let before = fallback_count();
        let (socket, opened) =
            open_outbound("127.0.0.1:9".parse().unwrap(), &MPTCP_ON).expect("fallback socket");
        assert_eq!(opened, Opened::TcpFallback);
        assert_eq!(transport(&socket, opened), Transport::Fallback);
        assert!(fallback_count() > before);
        Ok::<(), std::io::Error>(())
    })
    .join()
    .unwrap();
    match result {
        Ok(()) => {}
        Err(e) => {
            mptcp_test_support::skip(&format!("cannot make a private network namespace ({e})"));
        }
    }
}

/// Runs `f` on a thread in a fresh network namespace (commands it spawns land there
/// too), or reports why that is impossible here.
fn in_private_netns<T: Send + 'static>(
    f: impl FnOnce() -> anyhow_free::Result<T> + Send + 'static,
) -> Option<T> {
    let outcome = std::thread::spawn(move || {
        // Only this thread changes namespace.
        mptcp_test_support::sys::unshare_net().map_err(|e| format!("unshare: {e}"))?;
        f()
    })
    .join()
    .expect("namespace thread panicked");
    match outcome {
        Ok(v) => Some(v),
        Err(e) if e.starts_with("unshare") => {
            mptcp_test_support::skip(&format!("cannot make a private network namespace ({e})"));
            None
        }
        Err(e) => panic!("{e}"),
    }
}

mod anyhow_free {
    pub(crate) type Result<T> = std::result::Result<T, String>;
}

fn run(cmd: &str) -> anyhow_free::Result<()> {
    let args: Vec<&str> = cmd.split_whitespace().collect();
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

#[test]
fn subflows_lists_each_subflow_with_its_addresses_and_bytes() {
    if !mptcp_test_support::require_mptcp() {
        return;
    }
    let result = in_private_netns(|| {
        for cmd in [
            "ip link set lo up",
            "ip addr add 10.77.0.1/32 dev lo",
            "ip addr add 10.77.0.2/32 dev lo",
            "ip mptcp limits set subflows 2 add_addr_accepted 2",
            "ip mptcp endpoint add 10.77.0.2 dev lo subflow",
        ] {
            run(cmd)?;
        }
        let (addr, server) = listener_on("10.77.0.1:0");
        let (socket, opened) = open_outbound(addr, &MPTCP_ON).map_err(|e| e.to_string())?;
        assert_eq!(opened, Opened::Mptcp);
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let mut stream: TcpStream = socket.into();
        // Extra subflows join once the connection is fully established: after data.
        let data = vec![7u8; 1 << 20];
        stream.write_all(&data).map_err(|e| e.to_string())?;
        let mut found = Vec::new();
        for _ in 0..100 {
            found = subflows(&stream)
                .map_err(|e| e.to_string())?
                .expect("MPTCP socket");
            if found.len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let data = vec![7u8; 1 << 20];
        stream.write_all(&data).map_err(|e| e.to_string())?;
        stream
            .shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        let received = server.join().expect("server thread");
        let after = subflows(&stream)
            .map_err(|e| e.to_string())?
            .expect("MPTCP socket");
        Ok((found, after, received))
    });
    let Some((found, after, received)) = result else {
        return;
    };
    assert_eq!(received, 2 << 20);
    let mut locals: Vec<String> = found.iter().map(|s| s.local.ip().to_string()).collect();
    locals.sort();
    assert_eq!(locals, ["10.77.0.1", "10.77.0.2"], "{found:?}");
    assert!(
        found
            .iter()
            .all(|s| s.remote.ip().to_string() == "10.77.0.1")
    );
    let acked: u64 = after.iter().map(|s| s.bytes_acked).sum();
    assert!(
        acked >= 1 << 20,
        "subflows acked {acked} bytes of 1 MiB: {after:?}"
    );
}

/// An MPTCP listener on `addr` that counts what one client sends until EOF.
fn listener_on(addr: &str) -> (SocketAddr, std::thread::JoinHandle<u64>) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP)).expect("socket");
    socket
        .bind(&addr.parse::<SocketAddr>().expect("addr").into())
        .expect("bind");
    socket.listen(8).expect("listen");
    let addr = socket
        .local_addr()
        .expect("local")
        .as_socket()
        .expect("inet");
    let handle = std::thread::spawn(move || {
        let (conn, _) = socket.accept().expect("accept");
        let mut conn: TcpStream = conn.into();
        let mut sink = Vec::new();
        conn.read_to_end(&mut sink).expect("read") as u64
    });
    (addr, handle)
}

#[test]
fn local_address_up_follows_the_link() {
    if !mptcp_test_support::require_mptcp() {
        return;
    }
    let states = in_private_netns(|| {
        let mut states = Vec::new();
        let addr: std::net::IpAddr = "10.78.0.1".parse().expect("ip");
        // The kernel updates a link's carrier asynchronously (linkwatch): each state is
        // read once it has settled, or after 2 s, whatever it is then.
        let settled = |want: bool| -> anyhow_free::Result<Option<bool>> {
            for _ in 0..100 {
                let now = local_address_up(addr).map_err(|e| e.to_string())?;
                if now == Some(want) {
                    return Ok(now);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            local_address_up(addr).map_err(|e| e.to_string())
        };
        states.push(local_address_up(addr).map_err(|e| e.to_string())?);
        for cmd in [
            "ip link add v0 type veth peer name v1",
            "ip addr add 10.78.0.1/24 dev v0",
            "ip link set v0 up",
            "ip link set v1 up",
        ] {
            run(cmd)?;
        }
        states.push(settled(true)?);
        // The peer going down takes the carrier away: the link is up but not running.
        run("ip link set v1 down")?;
        states.push(settled(false)?);
        run("ip link set v1 up")?;
        states.push(settled(true)?);
        run("ip link set v0 down")?;
        states.push(settled(false)?);
        Ok(states)
    });
    if let Some(states) = states {
        assert_eq!(
            states,
            [None, Some(true), Some(false), Some(true), Some(false)]
        );
    }
}

#[test]
fn local_addresses_include_loopback() {
    let addrs = mptcp_policy::local_addresses().expect("getifaddrs");
    assert!(
        addrs.contains(&std::net::IpAddr::from([127, 0, 0, 1])),
        "{addrs:?}"
    );
}
