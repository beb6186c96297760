//! Behaviour of the SOCKS5 server through its public API, on loopback, with real sockets.
//!
//! The client side speaks SOCKS5 in raw bytes: fast-socks5's client panics on reply codes
//! it does not expect, and the error paths are what these tests are about.

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mptcp_policy::Policy;
use mptcp_socks::{Auth, PolicyHandle, ServerConfig, serve};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Upper bound for every test, so a hang fails instead of blocking the suite.
const TEST_LIMIT: Duration = Duration::from_secs(20);

async fn bounded(test: impl Future<Output = Result<()>>) -> Result<()> {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .context("test did not finish in time")?
}

/// A running proxy; dropping it (or calling `stop`) signals shutdown.
struct Proxy {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Proxy {
    async fn start(config: ServerConfig, policy: PolicyHandle) -> Result<Proxy> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, config, policy, async {
            let _ = rx.await;
        }));
        Ok(Proxy {
            addr,
            shutdown: Some(tx),
            task,
        })
    }

    async fn open(config: ServerConfig) -> Result<Proxy> {
        Proxy::start(config, PolicyHandle::new(Policy::default())).await
    }

    async fn client(&self) -> Result<TcpStream> {
        Ok(TcpStream::connect(self.addr).await?)
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Echoes everything back, and closes its write side when the client closes its own.
async fn echo_server(bind: &str) -> Result<SocketAddr> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Reads until the client closes its write side, and only then answers with what it read:
/// works only if the proxy passes the half-close on and keeps the other direction open.
async fn answer_after_eof_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                if stream.read_to_end(&mut all).await.is_ok() {
                    let _ = stream.write_all(&all).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    Ok(addr)
}

/// What the test server saw of an accepted connection.
#[derive(Debug)]
struct Accepted {
    peer: SocketAddr,
    mptcp: bool,
}

/// Listens with `IPPROTO_MPTCP`, so an MPTCP client shows up as MPTCP on the accepted
/// socket, and a plain TCP client as a fallen-back one.
fn mptcp_server() -> Result<(SocketAddr, mpsc::UnboundedReceiver<Accepted>)> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP))
        .context("MPTCP socket (kernel with MPTCP and net.mptcp.enabled=1 needed)")?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
    socket.listen(64)?;
    socket.set_nonblocking(true)?;
    let listener = TcpListener::from_std(socket.into())?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            // Read first: MPTCP on the accepted side is settled once data has flowed.
            let mut buf = [0u8; 4];
            if stream.read_exact(&mut buf).await.is_err() {
                continue;
            }
            let mptcp = matches!(mptcp_policy::mptcp_info(&stream), Ok(Some(_)));
            let _ = tx.send(Accepted { peer, mptcp });
            tokio::spawn(async move {
                if stream.write_all(&buf).await.is_ok() {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    Ok((addr, rx))
}

/// A port on which nothing listens.
async fn closed_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(addr)
}

// ---- SOCKS5 in raw bytes ----

/// Sends the greeting and returns the method the server chose (0xFF: none acceptable).
async fn greet(stream: &mut TcpStream, methods: &[u8]) -> Result<u8> {
    let mut msg = vec![0x05, u8::try_from(methods.len())?];
    msg.extend_from_slice(methods);
    stream.write_all(&msg).await?;
    let mut answer = [0u8; 2];
    stream.read_exact(&mut answer).await?;
    ensure!(answer[0] == 0x05, "greeting answer {answer:?}");
    Ok(answer[1])
}

/// RFC 1929 sub-negotiation; returns the status (0 = success).
async fn login(stream: &mut TcpStream, user: &str, pass: &str) -> Result<u8> {
    let mut msg = vec![0x01, u8::try_from(user.len())?];
    msg.extend_from_slice(user.as_bytes());
    msg.push(u8::try_from(pass.len())?);
    msg.extend_from_slice(pass.as_bytes());
    stream.write_all(&msg).await?;
    let mut answer = [0u8; 2];
    stream.read_exact(&mut answer).await?;
    ensure!(answer[0] == 0x01, "auth answer {answer:?}");
    Ok(answer[1])
}

fn addr_bytes(addr: SocketAddr) -> Vec<u8> {
    let mut out = Vec::new();
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(0x01);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(0x04);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

fn name_bytes(name: &str, port: u16) -> Vec<u8> {
    let mut out = vec![0x03, u8::try_from(name.len()).unwrap_or(u8::MAX)];
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    out
}

/// Sends a request (command + encoded address) and returns the reply code.
async fn request(stream: &mut TcpStream, command: u8, address: &[u8]) -> Result<u8> {
    let mut msg = vec![0x05, command, 0x00];
    msg.extend_from_slice(address);
    stream.write_all(&msg).await?;
    read_reply(stream).await
}

async fn read_reply(stream: &mut TcpStream) -> Result<u8> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    ensure!(head[0] == 0x05, "reply header {head:?}");
    let rest = match head[3] {
        0x01 => 4 + 2,
        0x04 => 16 + 2,
        0x03 => usize::from(stream.read_u8().await?) + 2,
        other => bail!("reply with address type {other:#x}"),
    };
    let mut addr = vec![0u8; rest];
    stream.read_exact(&mut addr).await?;
    Ok(head[1])
}

/// Greets without auth and sends a CONNECT; returns the stream and the reply code.
async fn connect_via(proxy: &Proxy, address: &[u8]) -> Result<(TcpStream, u8)> {
    let mut stream = proxy.client().await?;
    ensure!(
        greet(&mut stream, &[0x00]).await? == 0x00,
        "no-auth refused"
    );
    let code = request(&mut stream, 0x01, address).await?;
    Ok((stream, code))
}

/// Sends `len` patterned bytes and checks they come back intact.
async fn assert_echo(stream: &mut TcpStream, len: usize) -> Result<()> {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = stream.split();
    let send = async {
        w.write_all(&data).await?;
        Ok::<_, std::io::Error>(())
    };
    let mut back = vec![0u8; len];
    let recv = r.read_exact(&mut back);
    let (sent, received) = tokio::join!(send, recv);
    sent?;
    received?;
    ensure!(back == data, "echoed data differs");
    Ok(())
}

/// True once the server has closed the connection (EOF or reset), within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Result<bool> {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(true),
        Ok(Ok(n)) => bail!("unexpected {n} bytes: {:?}", &buf[..n]),
        Err(_) => Ok(false),
    }
}

/// Defaults, except that shutdown does not wait long for connections a test left open.
fn config() -> ServerConfig {
    ServerConfig {
        shutdown_grace: Duration::from_millis(200),
        ..ServerConfig::default()
    }
}

fn password_config() -> ServerConfig {
    ServerConfig {
        auth: Some(Auth::new("alice", "s3cret")),
        ..config()
    }
}

// ---- CONNECT ----

#[tokio::test]
async fn connect_by_ipv4_relays_data_intact() -> Result<()> {
    bounded(async {
        let echo = echo_server("127.0.0.1:0").await?;
        let proxy = Proxy::open(config()).await?;
        let (mut stream, code) = connect_via(&proxy, &addr_bytes(echo)).await?;
        ensure!(code == 0x00, "reply {code:#x}");
        assert_echo(&mut stream, 1 << 20).await?;
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn connect_by_ipv6() -> Result<()> {
    bounded(async {
        let echo = echo_server("[::1]:0").await?;
        let proxy = Proxy::open(config()).await?;
        let (mut stream, code) = connect_via(&proxy, &addr_bytes(echo)).await?;
        ensure!(code == 0x00, "reply {code:#x}");
        assert_echo(&mut stream, 64 * 1024).await?;
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn connect_by_name_resolves_through_etc_hosts() -> Result<()> {
    bounded(async {
        // Listening on 127.0.0.1 only: should `localhost` also resolve to ::1, that attempt is
        // refused and the IPv4 one must still succeed.
        let echo = echo_server("127.0.0.1:0").await?;
        let proxy = Proxy::open(config()).await?;
        let (mut stream, code) = connect_via(&proxy, &name_bytes("localhost", echo.port())).await?;
        ensure!(code == 0x00, "reply {code:#x}");
        assert_echo(&mut stream, 64 * 1024).await?;
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn half_close_keeps_the_other_direction_open() -> Result<()> {
    bounded(async {
        let server = answer_after_eof_server().await?;
        let proxy = Proxy::open(config()).await?;
        let (mut stream, code) = connect_via(&proxy, &addr_bytes(server)).await?;
        ensure!(code == 0x00, "reply {code:#x}");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        stream.write_all(&data).await?;
        stream.shutdown().await?;
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await?;
        ensure!(
            back == data,
            "got {} of {} bytes back",
            back.len(),
            data.len()
        );
        proxy.stop().await
    })
    .await
}

// ---- authentication ----

#[tokio::test]
async fn password_auth_succeeds_with_the_right_credentials() -> Result<()> {
    bounded(async {
        let echo = echo_server("127.0.0.1:0").await?;
        let proxy = Proxy::open(password_config()).await?;
        let mut stream = proxy.client().await?;
        ensure!(greet(&mut stream, &[0x00, 0x02]).await? == 0x02);
        ensure!(login(&mut stream, "alice", "s3cret").await? == 0x00);
        let code = request(&mut stream, 0x01, &addr_bytes(echo)).await?;
        ensure!(code == 0x00, "reply {code:#x}");
        assert_echo(&mut stream, 4096).await?;
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn wrong_password_is_rejected_and_closed() -> Result<()> {
    bounded(async {
        let proxy = Proxy::open(password_config()).await?;
        let mut stream = proxy.client().await?;
        ensure!(greet(&mut stream, &[0x02]).await? == 0x02);
        let status = login(&mut stream, "alice", "wrong").await?;
        ensure!(status != 0x00, "wrong password accepted");
        ensure!(closed_within(&mut stream, Duration::from_secs(2)).await?);
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn no_auth_is_refused_when_a_password_is_set() -> Result<()> {
    bounded(async {
        let proxy = Proxy::open(password_config()).await?;
        let mut stream = proxy.client().await?;
        ensure!(greet(&mut stream, &[0x00]).await? == 0xFF);
        ensure!(closed_within(&mut stream, Duration::from_secs(2)).await?);
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn allow_listed_client_skips_auth() -> Result<()> {
    bounded(async {
        let echo = echo_server("127.0.0.1:0").await?;
        let config = ServerConfig {
            allow_list: HashSet::from([IpAddr::from(Ipv4Addr::LOCALHOST)]),
            ..password_config()
        };
        let proxy = Proxy::open(config).await?;
        // Offering both, an allowed client is not asked for a password.
        let mut stream = proxy.client().await?;
        ensure!(greet(&mut stream, &[0x02, 0x00]).await? == 0x00);
        ensure!(request(&mut stream, 0x01, &addr_bytes(echo)).await? == 0x00);
        assert_echo(&mut stream, 4096).await?;
        // It may still authenticate if it only offers that.
        let mut stream = proxy.client().await?;
        ensure!(greet(&mut stream, &[0x02]).await? == 0x02);
        ensure!(login(&mut stream, "alice", "s3cret").await? == 0x00);
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn allow_list_does_not_cover_other_clients() -> Result<()> {
    bounded(async {
        let config = ServerConfig {
            allow_list: HashSet::from(["192.0.2.1".parse::<IpAddr>()?]),
            ..password_config()
        };
        let proxy = Proxy::open(config).await?;
        let mut stream = proxy.client().await?;
        ensure!(greet(&mut stream, &[0x00]).await? == 0xFF);
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn auth_once_allow_lists_the_client_after_one_login() -> Result<()> {
    bounded(async {
        let echo = echo_server("127.0.0.1:0").await?;
        let config = ServerConfig {
            auth_once: true,
            ..password_config()
        };
        let proxy = Proxy::open(config).await?;

        let mut stream = proxy.client().await?;
        ensure!(
            greet(&mut stream, &[0x00]).await? == 0xFF,
            "let in before login"
        );

        let mut stream = proxy.client().await?;
        ensure!(greet(&mut stream, &[0x02]).await? == 0x02);
        ensure!(login(&mut stream, "alice", "wrong").await? != 0x00);

        let mut stream = proxy.client().await?;
        ensure!(
            greet(&mut stream, &[0x00]).await? == 0xFF,
            "failed login allow-listed"
        );

        let mut stream = proxy.client().await?;
        ensure!(greet(&mut stream, &[0x02]).await? == 0x02);
        ensure!(login(&mut stream, "alice", "s3cret").await? == 0x00);
        drop(stream);

        let (mut stream, code) = connect_via(&proxy, &addr_bytes(echo)).await?;
        ensure!(code == 0x00, "reply {code:#x}");
        assert_echo(&mut stream, 4096).await?;
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn auth_once_off_keeps_asking() -> Result<()> {
    bounded(async {
        let proxy = Proxy::open(password_config()).await?;
        let mut stream = proxy.client().await?;
        ensure!(greet(&mut stream, &[0x02]).await? == 0x02);
        ensure!(login(&mut stream, "alice", "s3cret").await? == 0x00);
        let mut stream = proxy.client().await?;
        ensure!(greet(&mut stream, &[0x00]).await? == 0xFF);
        proxy.stop().await
    })
    .await
}

// ---- malformed input and error replies ----

#[tokio::test]
async fn garbage_greeting_is_dropped_and_the_server_keeps_serving() -> Result<()> {
    bounded(async {
        let echo = echo_server("127.0.0.1:0").await?;
        let proxy = Proxy::open(config()).await?;
        let garbage: [&[u8]; 3] = [
            &[0x04, 0x01, 0x00, 0x50, 127, 0, 0, 1, 0],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[0x05, 0x00],
        ];
        for bytes in garbage {
            let mut stream = proxy.client().await?;
            stream.write_all(bytes).await?;
            let mut buf = [0u8; 64];
            // Either closed at once, or (empty method list) answered 0xFF and then closed.
            loop {
                match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => ensure!(buf[..n] == [0x05, 0xFF], "answered {:?}", &buf[..n]),
                    Err(_) => bail!("garbage {bytes:?} not dropped"),
                }
            }
        }
        let (mut stream, code) = connect_via(&proxy, &addr_bytes(echo)).await?;
        ensure!(code == 0x00, "reply {code:#x}");
        assert_echo(&mut stream, 1024).await?;
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn unsupported_commands_get_0x07() -> Result<()> {
    bounded(async {
        let echo = echo_server("127.0.0.1:0").await?;
        let proxy = Proxy::open(config()).await?;
        for command in [0x02, 0x03, 0x09] {
            let mut stream = proxy.client().await?;
            ensure!(greet(&mut stream, &[0x00]).await? == 0x00);
            let code = request(&mut stream, command, &addr_bytes(echo)).await?;
            ensure!(code == 0x07, "command {command:#x}: reply {code:#x}");
        }
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn unknown_address_type_gets_0x08() -> Result<()> {
    bounded(async {
        let proxy = Proxy::open(config()).await?;
        let (_stream, code) = connect_via(&proxy, &[0x05, 127, 0, 0, 1, 0, 80]).await?;
        ensure!(code == 0x08, "reply {code:#x}");
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn closed_port_gets_connection_refused() -> Result<()> {
    bounded(async {
        let target = closed_port().await?;
        let proxy = Proxy::open(config()).await?;
        let (mut stream, code) = connect_via(&proxy, &addr_bytes(target)).await?;
        ensure!(code == 0x05, "reply {code:#x}");
        ensure!(closed_within(&mut stream, Duration::from_secs(2)).await?);
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn unknown_name_gets_host_unreachable() -> Result<()> {
    bounded(async {
        let proxy = Proxy::open(config()).await?;
        let (_stream, code) = connect_via(&proxy, &name_bytes("nonexistent.invalid", 80)).await?;
        ensure!(code == 0x04, "reply {code:#x}");
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn stalled_handshake_is_dropped_after_the_timeout() -> Result<()> {
    bounded(async {
        let config = ServerConfig {
            handshake_timeout: Duration::from_millis(300),
            ..config()
        };
        let proxy = Proxy::open(config).await?;
        // Silent from the start.
        let mut silent = proxy.client().await?;
        // Stalls after the greeting, halfway through the request.
        let mut halfway = proxy.client().await?;
        ensure!(greet(&mut halfway, &[0x00]).await? == 0x00);
        halfway.write_all(&[0x05, 0x01, 0x00, 0x01, 127]).await?;
        for stream in [&mut silent, &mut halfway] {
            ensure!(
                closed_within(stream, Duration::from_secs(3)).await?,
                "stalled client kept open"
            );
        }
        proxy.stop().await
    })
    .await
}

// ---- policy, bind address, shutdown ----

#[tokio::test]
async fn policy_swap_applies_to_the_next_connection() -> Result<()> {
    bounded(async {
        let (server, mut accepted) = mptcp_server()?;
        let policy = PolicyHandle::new(Policy::default());
        let config = config();
        let stats = config.stats.clone();
        let proxy = Proxy::start(config, policy.clone()).await?;

        // Built-in default: MPTCP.
        let (mut first, code) = connect_via(&proxy, &addr_bytes(server)).await?;
        ensure!(code == 0x00, "reply {code:#x}");
        assert_echo(&mut first, 4).await?;
        let seen = accepted.recv().await.context("server gone")?;
        ensure!(seen.mptcp, "default policy did not give MPTCP: {seen:?}");

        policy.store(format!("{},0,default,default,\n.\n", server.ip()).parse::<Policy>()?);

        let (mut second, code) = connect_via(&proxy, &addr_bytes(server)).await?;
        ensure!(code == 0x00, "reply {code:#x}");
        assert_echo(&mut second, 4).await?;
        let seen = accepted.recv().await.context("server gone")?;
        ensure!(
            !seen.mptcp,
            "rule with MPTCP off still gave MPTCP: {seen:?}"
        );

        // The first connection, opened under the old policy, is still alive.
        assert_echo(&mut first, 1024).await?;

        let counts = stats.snapshot();
        ensure!(counts.mptcp == 1 && counts.tcp == 1, "{counts:?}");
        ensure!(counts.accepted == 2 && counts.active == 2, "{counts:?}");
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn outbound_socket_binds_to_the_configured_address() -> Result<()> {
    bounded(async {
        let (server, mut accepted) = mptcp_server()?;
        let echo6 = echo_server("[::1]:0").await?;
        let config = ServerConfig {
            bind_addr: Some("127.0.0.2".parse()?),
            ..config()
        };
        let proxy = Proxy::open(config).await?;
        let (mut stream, code) = connect_via(&proxy, &addr_bytes(server)).await?;
        ensure!(code == 0x00, "reply {code:#x}");
        assert_echo(&mut stream, 4).await?;
        let seen = accepted.recv().await.context("server gone")?;
        ensure!(seen.peer.ip() == "127.0.0.2".parse::<IpAddr>()?, "{seen:?}");
        // An IPv6 destination ignores the IPv4 bind address instead of failing.
        let (mut stream, code) = connect_via(&proxy, &addr_bytes(echo6)).await?;
        ensure!(code == 0x00, "reply {code:#x}");
        assert_echo(&mut stream, 1024).await?;
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drops_connections_after_the_grace_period() -> Result<()> {
    bounded(async {
        let echo = echo_server("127.0.0.1:0").await?;
        let config = ServerConfig {
            shutdown_grace: Duration::from_millis(300),
            ..config()
        };
        let proxy = Proxy::open(config).await?;
        let addr = proxy.addr;
        let (mut stream, code) = connect_via(&proxy, &addr_bytes(echo)).await?;
        ensure!(code == 0x00, "reply {code:#x}");
        assert_echo(&mut stream, 1024).await?;

        let started = tokio::time::Instant::now();
        proxy.stop().await?;
        ensure!(
            started.elapsed() < Duration::from_secs(3),
            "shutdown too slow"
        );
        ensure!(TcpStream::connect(addr).await.is_err(), "still accepting");
        ensure!(closed_within(&mut stream, Duration::from_secs(2)).await?);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn live_connections_are_listed_with_rule_token_and_subflows_until_closed() -> Result<()> {
    bounded(async {
        let (server, mut accepted) = mptcp_server()?;
        let policy = PolicyHandle::new(format!("{},1,default,default,\n.\n", server.ip()).parse()?);
        let config = config();
        let connections = config.connections.clone();
        let proxy = Proxy::start(config, policy).await?;
        ensure!(connections.is_empty());

        let (mut stream, code) = connect_via(&proxy, &addr_bytes(server)).await?;
        ensure!(code == 0x00, "reply {code:#x}");
        assert_echo(&mut stream, 4).await?;
        accepted.recv().await.context("server gone")?;

        let list = connections.list();
        ensure!(list.len() == 1, "{list:?}");
        let c = &list[0];
        ensure!(
            c.remote == server && c.target == server.to_string(),
            "{c:?}"
        );
        ensure!(c.rule.as_ref().map(ToString::to_string) == Some(server.ip().to_string()));
        ensure!(c.transport == mptcp_policy::Transport::Mptcp, "{c:?}");
        let token = c.token.context("an MPTCP connection has a token")?;
        ensure!(connections.by_token(token).map(|b| b.id) == Some(c.id));
        ensure!(
            c.subflows.len() == 1 && c.subflows[0].remote == server,
            "one subflow on loopback: {:?}",
            c.subflows
        );

        drop(stream);
        for _ in 0..100 {
            if connections.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ensure!(connections.is_empty(), "closed connection still listed");
        proxy.stop().await
    })
    .await
}
