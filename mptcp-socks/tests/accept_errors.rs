//! The accept loop survives running out of file descriptors (EMFILE).
//!
//! A test binary of its own: it lowers the process's descriptor limit, which would disturb
//! tests running in parallel threads of the same process.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mptcp_socks::policy::{fd_limit, set_fd_limit};
use mptcp_socks::{PolicyHandle, ServerConfig, serve};
use mptcp_test_support::socks::{self, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

fn open_fds() -> Result<u64> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count().try_into()?)
}

/// CONNECTs through the proxy and checks that the target echoes.
async fn socks_connect_ok(proxy: std::net::SocketAddr, target: std::net::SocketAddr) -> Result<()> {
    let mut stream = socks::connect(proxy, Target::Addr(target), None).await?;
    stream.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    stream.read_exact(&mut back).await?;
    ensure!(&back == b"ping");
    Ok(())
}

#[tokio::test]
async fn server_keeps_serving_after_running_out_of_descriptors() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::time::timeout(Duration::from_secs(20), async {
        let target = TcpListener::bind("127.0.0.1:0").await?;
        let target_addr = target.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = target.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ServerConfig {
            shutdown_grace: Duration::from_millis(200),
            ..ServerConfig::default()
        };
        // Loopback, where the target listens, is the proxy's own host: refused by default.
        let policy = PolicyHandle::new("127.0.0.1,1,default,default,access=allow,".parse()?);
        let server = tokio::spawn(serve(listener, config, policy, async {
            let _ = stopped.await;
        }));
        socks_connect_ok(proxy, target_addr).await?;

        // Leave room for a few client sockets but not for the server's accepted ones too.
        let (soft, hard) = fd_limit()?;
        set_fd_limit(open_fds()? + 4, hard)?;
        let mut clients = Vec::new();
        for _ in 0..8 {
            if let Ok(stream) = TcpStream::connect(proxy).await {
                clients.push(stream);
            }
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        drop(clients);
        set_fd_limit(soft, hard)?;

        ensure!(!server.is_finished(), "server stopped after EMFILE");
        socks_connect_ok(proxy, target_addr)
            .await
            .context("no service after EMFILE")?;
        let _ = stop.send(());
        server.await??;
        Ok(())
    })
    .await
    .context("test did not finish in time")?
}
