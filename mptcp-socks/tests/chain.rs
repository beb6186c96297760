//! Chaining through an upstream (`via=NAME`, `via=auto:NAME`), on loopback: a "box" proxy
//! whose rules send destinations through a "VPS" proxy, both real servers of this crate.
//! The uplink figures need namespaces and live in the daemon's lab test; here: what goes
//! where, what is reported, and that every upstream failure still serves the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use mptcp_socks::{
    Auth, Connection, FailureKind, Fingerprint, PolicyHandle, ServerConfig, Transport, Upstream,
    UpstreamStatus, tls_server_config,
};
use mptcp_test_support::socks::{addr_bytes, name_bytes};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

mod common;
use common::*;

/// A proxy on loopback whose rules send loopback through `via` (and allow it, since
/// the box refuses its own host otherwise).
async fn box_proxy(via: &str, upstreams: &[String]) -> Result<Proxy> {
    box_proxy_with(
        &format!("1,default,default,access=allow,via={via}"),
        upstreams,
    )
    .await
}

/// [`box_proxy`] with the rule for 127.0.0.0/8 after its destination field.
async fn box_proxy_with(rule: &str, upstreams: &[String]) -> Result<Proxy> {
    let rules = format!("127.0.0.0/8,{rule}\n::1,1,default,default,access=allow\n");
    let upstreams = upstreams
        .iter()
        .map(|text| text.parse::<Upstream>())
        .collect::<Result<Vec<_>, _>>()?;
    let config = ServerConfig {
        upstreams,
        ..config()
    };
    Proxy::start(config, PolicyHandle::new(rules.parse()?)).await
}

/// A self-signed certificate and the TLS server configuration for it.
fn tls_identity() -> Result<(Arc<rustls::ServerConfig>, Fingerprint)> {
    let certified = rcgen::generate_simple_self_signed(vec!["mptcp-socksd".to_owned()])?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let fingerprint = Fingerprint::of(&cert);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    Ok((tls_server_config(vec![cert], key)?, fingerprint))
}

fn status(proxy: &Proxy, name: &str) -> Result<UpstreamStatus> {
    proxy
        .server
        .upstreams()
        .into_iter()
        .find(|s| s.name.as_str() == name)
        .context("upstream listed")
}

/// Connects through `proxy` to `target`, checks an echo, and returns what the box's
/// connection list says about it while open: (via, why_direct). Returns once the box
/// has closed it again.
async fn echo_through(proxy: &Proxy, target: &[u8]) -> Result<(Option<String>, Option<String>)> {
    let connection = echo_seen(proxy, target).await?;
    Ok((
        connection.via.as_ref().map(ToString::to_string),
        connection.why_direct,
    ))
}

/// [`echo_through`], returning the whole entry of the connection list.
async fn echo_seen(proxy: &Proxy, target: &[u8]) -> Result<Connection> {
    let (mut stream, code) = connect_via(proxy, target).await?;
    ensure!(code == 0, "reply {code:#04x}");
    assert_echo(&mut stream, 100_000).await?;
    let listed = proxy.server.connections().list();
    ensure!(listed.len() == 1, "one live connection: {listed:?}");
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proxy.server.connections().is_empty() {
        ensure!(Instant::now() < deadline, "the relay did not close");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    listed.into_iter().next().context("listed")
}

#[tokio::test]
async fn through_an_upstream_the_bytes_arrive_and_the_box_says_via() -> Result<()> {
    bounded(async {
        let vps = Proxy::open(config()).await?;
        let boxed = box_proxy("vps", &[format!("vps=socks5://{}", vps.addr)]).await?;
        let echo = echo_server("127.0.0.1:0").await?;
        let (via, why) = echo_through(&boxed, &addr_bytes(echo)).await?;
        assert_eq!((via.as_deref(), why), (Some("vps"), None));
        assert_eq!(vps.server.stats().snapshot().accepted, 1);
        let listed = status(&boxed, "vps")?;
        assert_eq!((listed.state(), listed.connections), ("up", 1));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_name_goes_to_the_upstream_unresolved() -> Result<()> {
    bounded(async {
        let vps = Proxy::open(config()).await?;
        // No address rules: the box never needs the address, so it never resolves it;
        // had it resolved "localhost", its own host's protection would have refused it.
        let config = ServerConfig {
            upstreams: vec![format!("vps=socks5://{}", vps.addr).parse()?],
            ..config()
        };
        let boxed = Proxy::start(
            config,
            PolicyHandle::new("*,1,default,default,via=vps\n".parse()?),
        )
        .await?;
        let echo = echo_server("127.0.0.1:0").await?;
        let (via, _) = echo_through(&boxed, &name_bytes("localhost", echo.port())).await?;
        assert_eq!(via.as_deref(), Some("vps"));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_upstream_password_is_sent_pipelined_and_a_wrong_one_goes_direct() -> Result<()> {
    bounded(async {
        let vps = Proxy::open(ServerConfig {
            auth: Some(Auth::new("box", "s3cret")),
            ..config()
        })
        .await?;
        let echo = echo_server("127.0.0.1:0").await?;
        let good = box_proxy("vps", &[format!("vps=socks5://box:s3cret@{}", vps.addr)]).await?;
        assert_eq!(
            echo_through(&good, &addr_bytes(echo)).await?.0.as_deref(),
            Some("vps")
        );

        let bad = box_proxy("vps", &[format!("vps=socks5://box:wrong@{}", vps.addr)]).await?;
        let (via, why) = echo_through(&bad, &addr_bytes(echo)).await?;
        assert_eq!(via, None, "the client is served direct");
        let why = why.context("why direct")?;
        assert!(why.contains("refused the username and password"), "{why}");
        let failed = status(&bad, "vps")?;
        assert_eq!(failed.state(), "down");
        assert_eq!(
            failed.failure.clone().context("failure")?.kind,
            FailureKind::Authentication
        );
        assert!(!failed.url.contains("wrong"), "{}", failed.url);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn tls_with_the_pin_works_and_a_wrong_pin_goes_direct() -> Result<()> {
    bounded(async {
        let (tls, fingerprint) = tls_identity()?;
        let vps = Proxy::open(ServerConfig {
            tls: Some(tls),
            ..config()
        })
        .await?;
        let echo = echo_server("127.0.0.1:0").await?;
        let pinned = box_proxy(
            "vps",
            &[format!(
                "vps=socks5+tls://{}#sha256={fingerprint}",
                vps.addr
            )],
        )
        .await?;
        for _ in 0..2 {
            assert_eq!(
                echo_through(&pinned, &addr_bytes(echo)).await?.0.as_deref(),
                Some("vps")
            );
        }
        let used = status(&pinned, "vps")?;
        assert_eq!(
            (used.connections, used.resumed_sessions),
            (2, 1),
            "the second resumed"
        );

        let wrong = Fingerprint([7; 32]);
        let mispinned = box_proxy(
            "vps",
            &[format!("vps=socks5+tls://{}#sha256={wrong}", vps.addr)],
        )
        .await?;
        let (via, why) = echo_through(&mispinned, &addr_bytes(echo)).await?;
        assert_eq!(via, None);
        let why = why.context("why direct")?;
        assert!(
            why.contains(&format!(
                "sha256={fingerprint}, not the pinned sha256={wrong}"
            )),
            "{why}"
        );
        assert_eq!(
            status(&mispinned, "vps")?.failure.context("failure")?.kind,
            FailureKind::Tls
        );
        // Without a pin the certificate must chain to the system's roots: a self-signed
        // one does not.
        let unpinned = box_proxy("vps", &[format!("vps=socks5+tls://{}", vps.addr)]).await?;
        assert_eq!(echo_through(&unpinned, &addr_bytes(echo)).await?.0, None);
        let failure = status(&unpinned, "vps")?.failure.context("failure")?;
        assert_eq!(failure.kind, FailureKind::Tls);
        assert!(
            failure.message.contains("UnknownIssuer"),
            "{}",
            failure.message
        );
        // Plain SOCKS5 to a TLS server is no handshake at all.
        let plain = box_proxy("vps", &[format!("vps=socks5://{}", vps.addr)]).await?;
        assert_eq!(echo_through(&plain, &addr_bytes(echo)).await?.0, None);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_unreachable_upstream_sends_connections_direct_and_is_not_retried_at_once() -> Result<()>
{
    bounded(async {
        let gone = closed_port().await?;
        let boxed = box_proxy("vps", &[format!("vps=socks5://{gone}")]).await?;
        let echo = echo_server("127.0.0.1:0").await?;
        let (via, why) = echo_through(&boxed, &addr_bytes(echo)).await?;
        assert_eq!(via, None);
        assert!(why.context("why")?.contains("unreachable"));
        let failed = status(&boxed, "vps")?;
        assert_eq!(
            failed.failure.clone().context("failure")?.kind,
            FailureKind::Unreachable
        );
        assert!(failed.retry_in.is_some(), "{failed:?}");
        let (_, why) = echo_through(&boxed, &addr_bytes(echo)).await?;
        assert!(why.context("why")?.contains("failed recently"));
        assert_eq!(
            status(&boxed, "vps")?.failures_in_a_row,
            1,
            "not tried again"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn garbage_from_an_upstream_is_a_protocol_failure_and_the_client_is_served() -> Result<()> {
    bounded(async {
        let fake = TcpListener::bind("127.0.0.1:0").await?;
        let fake_addr = fake.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = fake.accept().await {
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let boxed = box_proxy("vps", &[format!("vps=socks5://{fake_addr}")]).await?;
        let echo = echo_server("127.0.0.1:0").await?;
        let (via, _) = echo_through(&boxed, &addr_bytes(echo)).await?;
        assert_eq!(via, None);
        let failure = status(&boxed, "vps")?.failure.context("failure")?;
        assert_eq!(failure.kind, FailureKind::Protocol);
        assert!(
            failure.message.contains("does not speak SOCKS5"),
            "{}",
            failure.message
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_upstreams_reply_for_the_target_reaches_the_client() -> Result<()> {
    bounded(async {
        let vps = Proxy::open(config()).await?;
        let boxed = box_proxy("vps", &[format!("vps=socks5://{}", vps.addr)]).await?;
        let closed = closed_port().await?;
        let (_stream, code) = connect_via(&boxed, &addr_bytes(closed)).await?;
        assert_eq!(code, 0x05, "connection refused, as the upstream said");
        assert_eq!(
            status(&boxed, "vps")?.state(),
            "up",
            "the upstream itself works"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_rule_naming_an_unknown_upstream_goes_direct_and_says_why() -> Result<()> {
    bounded(async {
        let boxed = box_proxy("nowhere", &[]).await?;
        let echo = echo_server("127.0.0.1:0").await?;
        let (via, why) = echo_through(&boxed, &addr_bytes(echo)).await?;
        assert_eq!(via, None);
        assert_eq!(
            why.as_deref(),
            Some("no upstream named nowhere is configured")
        );
        Ok(())
    })
    .await
}

async fn wait_learned(proxy: &Proxy, addr: SocketAddr) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = proxy
            .server
            .learned()
            .list()
            .iter()
            .find(|l| l.addr == addr)
        {
            return Ok(found.mptcp);
        }
        ensure!(Instant::now() < deadline, "nothing learned about {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn auto_learns_which_destinations_speak_mptcp() -> Result<()> {
    bounded(async {
        let vps = Proxy::open(config()).await?;
        // MPTCP off in the rule: auto: tries MPTCP on the direct path all the same.
        let boxed = box_proxy_with(
            "0,default,default,access=allow,via=auto:vps",
            &[format!("vps=socks5://{}", vps.addr)],
        )
        .await?;
        let (mptcp_site, _accepted) = mptcp_server()?;
        let tcp_site = echo_server("127.0.0.1:0").await?;
        for (site, speaks_mptcp) in [(mptcp_site, true), (tcp_site, false)] {
            let before = vps.server.stats().snapshot().accepted;
            let (via, _) = echo_through(&boxed, &addr_bytes(site)).await?;
            assert_eq!(via.as_deref(), Some("vps"), "the first connection goes via");
            assert_eq!(wait_learned(&boxed, site).await?, speaks_mptcp, "{site}");
            let second = echo_seen(&boxed, &addr_bytes(site)).await?;
            let expected = if speaks_mptcp { None } else { Some("vps") };
            assert_eq!(second.via.as_ref().map(|v| v.as_str()), expected, "{site}");
            if speaks_mptcp {
                assert_eq!(second.transport, Transport::Mptcp, "{site}");
            }
            let through_vps = vps.server.stats().snapshot().accepted - before;
            assert_eq!(through_vps, if speaks_mptcp { 1 } else { 2 }, "{site}");
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_target_the_upstream_cannot_reach_in_time_does_not_mark_the_upstream_down() -> Result<()>
{
    bounded(async {
        // Accepts the greeting, then never answers the CONNECT, as an upstream stuck on
        // a blackholed target.
        let slow = TcpListener::bind("127.0.0.1:0").await?;
        let slow_addr = slow.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = slow.accept().await {
                tokio::spawn(async move {
                    let _ = stream.write_all(&[5, 0]).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
            }
        });
        let rules = "127.0.0.0/8,1,default,default,access=allow,via=vps\n";
        let config = ServerConfig {
            upstreams: vec![format!("vps=socks5://{slow_addr}").parse()?],
            connect_timeout: Duration::from_secs(1),
            ..config()
        };
        let boxed = Proxy::start(config, PolicyHandle::new(rules.parse()?)).await?;
        let echo = echo_server("127.0.0.1:0").await?;
        let (_stream, code) = connect_via(&boxed, &addr_bytes(echo)).await?;
        assert_eq!(code, 0x06, "the target timed out");
        assert_eq!(
            status(&boxed, "vps")?.state(),
            "up",
            "the upstream answered"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_address_block_holds_for_names_going_through_an_upstream() -> Result<()> {
    bounded(async {
        let vps = Proxy::open(config()).await?;
        let config = ServerConfig {
            upstreams: vec![format!("vps=socks5://{}", vps.addr).parse()?],
            ..config()
        };
        let rules = "*,1,default,default,via=vps\n127.0.0.0/8,1,default,default,access=deny\n";
        let boxed = Proxy::start(config, PolicyHandle::new(rules.parse()?)).await?;
        let echo = echo_server("127.0.0.1:0").await?;
        let (_stream, code) = connect_via(&boxed, &name_bytes("localhost", echo.port())).await?;
        assert_eq!(code, 0x02, "refused on the box, not handed to the upstream");
        assert_eq!(vps.server.stats().snapshot().accepted, 0);
        Ok(())
    })
    .await
}
