//! What the server tests and the chain tests share: a proxy on loopback, test servers,
//! and SOCKS5 in raw bytes.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mptcp_socks::{Auth, PolicyHandle, Server, ServerConfig};
use mptcp_test_support::socks::{CONNECT, NO_AUTH, greet, request};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Rules that open loopback, which the proxy refuses by default (it is the proxy's host).
pub const LOOPBACK_ALLOWED: &str =
    "127.0.0.0/8,1,default,default,access=allow,\n::1,1,default,default,access=allow,\n";

/// Upper bound for every test, so a hang fails instead of blocking the suite.
pub const TEST_LIMIT: Duration = Duration::from_secs(20);

pub async fn bounded(test: impl Future<Output = Result<()>>) -> Result<()> {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .context("test did not finish in time")?
}

/// A running proxy; dropping it (or calling `stop`) signals shutdown.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The running server, for its counters and connection list.
    pub server: Server,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(config: ServerConfig, policy: PolicyHandle) -> Result<Proxy> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let server = Server::new(config, policy)?;
        let task = tokio::spawn({
            let server = server.clone();
            async move {
                server
                    .serve(listener, async {
                        let _ = rx.await;
                    })
                    .await;
            }
        });
        Ok(Proxy {
            addr,
            server,
            shutdown: Some(tx),
            task,
        })
    }

    /// A proxy whose rules open loopback, where the tests' servers listen.
    pub async fn open(config: ServerConfig) -> Result<Proxy> {
        Proxy::start(config, PolicyHandle::new(LOOPBACK_ALLOWED.parse()?)).await
    }

    pub async fn client(&self) -> Result<TcpStream> {
        Ok(TcpStream::connect(self.addr).await?)
    }

    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await?;
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
pub async fn echo_server(bind: &str) -> Result<SocketAddr> {
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
pub async fn answer_after_eof_server() -> Result<SocketAddr> {
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
pub struct Accepted {
    pub peer: SocketAddr,
    pub mptcp: bool,
}

/// Listens with `IPPROTO_MPTCP`, so an MPTCP client shows up as MPTCP on the accepted
/// socket, and a plain TCP client as a fallen-back one.
pub fn mptcp_server() -> Result<(SocketAddr, mpsc::UnboundedReceiver<Accepted>)> {
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
pub async fn closed_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(addr)
}

// ---- SOCKS5 in raw bytes (mptcp_test_support::socks) ----

/// Greets without auth and sends a CONNECT; returns the stream and the reply code.
pub async fn connect_via(proxy: &Proxy, address: &[u8]) -> Result<(TcpStream, u8)> {
    let mut stream = proxy.client().await?;
    ensure!(
        greet(&mut stream, &[NO_AUTH]).await? == NO_AUTH,
        "no-auth refused"
    );
    let code = request(&mut stream, CONNECT, address).await?;
    Ok((stream, code))
}

/// Sends `len` patterned bytes and checks they come back intact.
pub async fn assert_echo(stream: &mut TcpStream, len: usize) -> Result<()> {
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

/// Defaults, except that shutdown does not wait long for connections a test left open.
pub fn config() -> ServerConfig {
    ServerConfig {
        shutdown_grace: Duration::from_millis(200),
        ..ServerConfig::default()
    }
}

pub fn password_config() -> ServerConfig {
    ServerConfig {
        auth: Some(Auth::new("alice", "s3cret")),
        ..config()
    }
}
