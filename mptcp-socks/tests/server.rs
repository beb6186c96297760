//! Behaviour of the SOCKS5 server through its public API, on loopback, with real sockets.
//!
//! The client side speaks SOCKS5 in raw bytes (`mptcp_test_support::socks`): fast-socks5's
//! client panics on reply codes it does not expect, and the error paths are what these
//! tests are about.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mptcp_policy::Policy;
use mptcp_socks::{Auth, PolicyHandle, ServerConfig};
use mptcp_test_support::socks::{
    self, CONNECT, NO_AUTH, addr_bytes, closed_within, greet, login, name_bytes, request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::*;

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

/// Greeting, request and the first data in one segment, as a client sends them that does
/// not wait for the answers: the server reads ahead, and what follows the request reaches
/// the destination first.
#[tokio::test]
async fn data_sent_with_the_request_reaches_the_destination() -> Result<()> {
    bounded(async {
        let echo = echo_server("127.0.0.1:0").await?;
        let proxy = Proxy::open(config()).await?;
        let mut stream = proxy.client().await?;
        let mut all = vec![0x05, 0x01, NO_AUTH, 0x05, CONNECT, 0x00];
        all.extend_from_slice(&addr_bytes(echo));
        all.extend_from_slice(b"early bytes");
        stream.write_all(&all).await?;
        let mut answers = [0u8; 2 + 10];
        stream.read_exact(&mut answers).await?;
        ensure!(answers[..2] == [0x05, NO_AUTH], "method answer {answers:?}");
        ensure!(answers[3] == 0x00, "reply {:#x}", answers[3]);
        let mut echoed = [0u8; 11];
        stream.read_exact(&mut echoed).await?;
        ensure!(&echoed == b"early bytes", "echoed {echoed:?}");
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
        let full = socks::wire::request(CONNECT, &addr_bytes(([127, 0, 0, 1], 80).into()));
        halfway.write_all(&full[..5]).await?;
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
        let policy = PolicyHandle::new(LOOPBACK_ALLOWED.parse()?);
        let proxy = Proxy::start(config(), policy.clone()).await?;
        let stats = proxy.server.stats().clone();

        // Built-in default: MPTCP.
        let (mut first, code) = connect_via(&proxy, &addr_bytes(server)).await?;
        ensure!(code == 0x00, "reply {code:#x}");
        assert_echo(&mut first, 4).await?;
        let seen = accepted.recv().await.context("server gone")?;
        ensure!(seen.mptcp, "default policy did not give MPTCP: {seen:?}");

        policy.store(
            format!("{},0,default,default,access=allow,\n.\n", server.ip()).parse::<Policy>()?,
        );

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
        let policy = PolicyHandle::new(
            format!("{},1,default,default,access=allow,\n.\n", server.ip()).parse()?,
        );
        let proxy = Proxy::start(config(), policy).await?;
        let connections = proxy.server.connections().clone();
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

// ---- safe defaults: destinations, clients, limits ----

/// Greets without auth and sends a CONNECT to a name; returns the reply code.
async fn connect_name_via(proxy: &Proxy, name: &str, port: u16) -> Result<u8> {
    Ok(connect_via(proxy, &name_bytes(name, port)).await?.1)
}

#[tokio::test]
async fn the_proxys_own_host_is_refused_by_default_in_every_address_form() -> Result<()> {
    bounded(async {
        let echo = echo_server("[::]:0").await?;
        let port = echo.port();
        let proxy = Proxy::start(config(), PolicyHandle::new(Policy::default())).await?;
        let forms: Vec<SocketAddr> = vec![
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([127, 1, 2, 3], port)),
            SocketAddr::from(([0, 0, 0, 0], port)),
            format!("[::]:{port}").parse()?,
            format!("[::1]:{port}").parse()?,
            format!("[::ffff:127.0.0.1]:{port}").parse()?,
            format!("[::ffff:0.0.0.0]:{port}").parse()?,
            SocketAddr::from(([169, 254, 169, 254], 80)),
        ];
        for addr in forms {
            let (_, code) = connect_via(&proxy, &addr_bytes(addr)).await?;
            ensure!(code == 0x02, "{addr}: reply {code:#x}");
        }
        for name in ["localhost", "127.0.0.1", "::1"] {
            let code = connect_name_via(&proxy, name, port).await?;
            ensure!(code == 0x02, "{name}: reply {code:#x}");
        }
        proxy.stop().await?;

        // An allow rule opens one address of the host, and only that one; a name rule or
        // `*` cannot open it, and the proxy's own port stays closed whatever the rules.
        let policy = "127.0.0.1,1,default,default,access=allow,\n\
                      localhost,1,default,default,access=allow,\n\
                      *,1,default,default,access=allow,\n";
        let proxy = Proxy::start(config(), PolicyHandle::new(policy.parse()?)).await?;
        let (mut open, code) = connect_via(
            &proxy,
            &addr_bytes(SocketAddr::from(([127, 0, 0, 1], port))),
        )
        .await?;
        ensure!(code == 0x00, "allowed address: reply {code:#x}");
        assert_echo(&mut open, 1024).await?;
        let (_, code) = connect_via(&proxy, &addr_bytes(format!("[::1]:{port}").parse()?)).await?;
        ensure!(
            code == 0x02,
            "::1 is not covered by the rule: reply {code:#x}"
        );
        let code = connect_name_via(&proxy, "localhost", port).await?;
        ensure!(
            code == 0x00,
            "localhost resolves to the allowed address: {code:#x}"
        );
        let (_, code) = connect_via(&proxy, &addr_bytes(proxy.addr)).await?;
        ensure!(
            code == 0x02,
            "nested CONNECT to the proxy itself: reply {code:#x}"
        );
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn a_deny_rule_blocks_a_network_under_any_name() -> Result<()> {
    bounded(async {
        let echo = echo_server("127.0.0.1:0").await?;
        let policy = "127.0.0.0/8,1,default,default,access=deny,\n\
                      localhost,1,default,default,access=allow,\n";
        let proxy = Proxy::start(config(), PolicyHandle::new(policy.parse()?)).await?;
        let (_, code) = connect_via(&proxy, &addr_bytes(echo)).await?;
        ensure!(code == 0x02, "reply {code:#x}");
        let code = connect_name_via(&proxy, "localhost", echo.port()).await?;
        ensure!(code == 0x02, "by name: reply {code:#x}");
        proxy.stop().await
    })
    .await
}

/// Serves one in-memory client as if it came from `client`, offering no-auth; the method
/// the server chose, or `None` if it closed without answering.
async fn greeting_answer(config: ServerConfig, client: &str) -> Result<Option<u8>> {
    let server = mptcp_socks::Server::new(config, PolicyHandle::default())?;
    let (mut near, far) = tokio::io::duplex(1024);
    let client: SocketAddr = client.parse()?;
    let serving = tokio::spawn(async move { server.serve_connection(far, client).await });
    near.write_all(&socks::wire::greeting(&[NO_AUTH])).await?;
    let mut answer = [0u8; 2];
    let answered = near.read_exact(&mut answer).await.is_ok();
    drop(near);
    serving.await?;
    Ok(answered.then_some(answer[1]))
}

async fn greeting_answered(config: ServerConfig, client: &str) -> Result<bool> {
    Ok(greeting_answer(config, client).await? == Some(0x00))
}

#[tokio::test]
async fn without_authentication_only_local_network_clients_are_served() -> Result<()> {
    bounded(async {
        for (client, served) in [
            ("192.168.1.20:40000", true),
            ("[fd00::20]:40000", true),
            ("127.0.0.1:40000", true),
            ("203.0.113.9:40000", false),
            ("[2001:db8::9]:40000", false),
        ] {
            ensure!(
                greeting_answered(config(), client).await? == served,
                "{client}: expected served={served}"
            );
        }
        let open = ServerConfig {
            allow_public_clients: true,
            ..config()
        };
        ensure!(greeting_answered(open, "203.0.113.9:40000").await?);
        // -w without a password: only the listed clients.
        let listed = ServerConfig {
            allow_list: HashSet::from(["203.0.113.9".parse::<IpAddr>()?]),
            ..config()
        };
        ensure!(greeting_answered(listed.clone(), "203.0.113.9:1").await?);
        ensure!(!greeting_answered(listed, "192.168.1.20:1").await?);
        // With a password everyone may try (and must authenticate).
        let password = ServerConfig {
            auth: Some(Auth::new("u", "p")),
            ..config()
        };
        ensure!(greeting_answer(password, "203.0.113.9:1").await? == Some(0xff));
        Ok(())
    })
    .await
}

/// A client socket bound to `source` (127.0.0.x), connected to the proxy.
async fn client_from(proxy: &Proxy, source: [u8; 4]) -> Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    Ok(socket.connect(proxy.addr).await?)
}

#[tokio::test]
async fn one_client_at_its_cap_does_not_starve_another() -> Result<()> {
    bounded(async {
        let echo = echo_server("127.0.0.1:0").await?;
        let config = ServerConfig {
            max_connections_per_client: 5,
            ..config()
        };
        let proxy = Proxy::open(config).await?;
        // The hog holds its five connections idle in the handshake ...
        let mut hog = Vec::new();
        for _ in 0..5 {
            let mut s = client_from(&proxy, [127, 0, 0, 2]).await?;
            ensure!(greet(&mut s, &[0x00]).await? == 0x00);
            hog.push(s);
        }
        // ... its sixth is closed at once, without an answer to its greeting ...
        let mut sixth = client_from(&proxy, [127, 0, 0, 2]).await?;
        sixth.write_all(&socks::wire::greeting(&[NO_AUTH])).await?;
        ensure!(
            closed_within(&mut sixth, Duration::from_secs(2)).await?,
            "the client over its cap was not closed"
        );
        // ... and another client is served within a second.
        let started = tokio::time::Instant::now();
        let mut other = client_from(&proxy, [127, 0, 0, 3]).await?;
        ensure!(greet(&mut other, &[0x00]).await? == 0x00);
        ensure!(request(&mut other, 0x01, &addr_bytes(echo)).await? == 0x00);
        assert_echo(&mut other, 1024).await?;
        ensure!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // A slot is free again once the hog lets one go.
        drop(hog.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut again = client_from(&proxy, [127, 0, 0, 2]).await?;
        ensure!(greet(&mut again, &[0x00]).await? == 0x00);
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn the_total_cap_closes_new_clients_at_once() -> Result<()> {
    bounded(async {
        let config = ServerConfig {
            max_connections: 3,
            ..config()
        };
        let proxy = Proxy::open(config).await?;
        let mut held = Vec::new();
        for i in 0..3u8 {
            let mut s = client_from(&proxy, [127, 0, 0, 10 + i]).await?;
            ensure!(greet(&mut s, &[0x00]).await? == 0x00);
            held.push(s);
        }
        let mut fourth = client_from(&proxy, [127, 0, 0, 20]).await?;
        fourth.write_all(&socks::wire::greeting(&[NO_AUTH])).await?;
        ensure!(closed_within(&mut fourth, Duration::from_secs(2)).await?);
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn an_idle_relay_is_closed_after_its_timeout() -> Result<()> {
    bounded(async {
        let echo = echo_server("127.0.0.1:0").await?;
        let config = ServerConfig {
            idle_timeout: Some(Duration::from_millis(600)),
            ..config()
        };
        let proxy = Proxy::open(config).await?;
        let (mut busy, code) = connect_via(&proxy, &addr_bytes(echo)).await?;
        ensure!(code == 0x00);
        let (mut idle, code) = connect_via(&proxy, &addr_bytes(echo)).await?;
        ensure!(code == 0x00);
        // Traffic keeps one open past the timeout; the other, silent, is closed.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_echo(&mut busy, 16).await?;
        }
        ensure!(
            closed_within(&mut idle, Duration::from_secs(2)).await?,
            "idle relay still open"
        );
        assert_echo(&mut busy, 16).await?;
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn a_relayed_connection_holds_one_descriptor_per_side() -> Result<()> {
    bounded(async {
        let echo = echo_server("127.0.0.1:0").await?;
        let proxy = Proxy::open(config()).await?;
        // Other tests run in this process at the same time: count only descriptors of
        // sockets on this test's two ports.
        let fds = || descriptors_on_ports(&[proxy.addr.port(), echo.port()]);
        let before = fds()?;
        let mut open = Vec::new();
        for _ in 0..20 {
            let (mut s, code) = connect_via(&proxy, &addr_bytes(echo)).await?;
            ensure!(code == 0x00);
            assert_echo(&mut s, 16).await?;
            open.push(s);
        }
        // Per connection, in this one process: the test's client socket, the proxy's
        // accepted socket, its outbound socket, the echo server's accepted socket.
        let per_connection = (fds()? - before) as f64 / 20.0;
        ensure!(
            per_connection == 4.0,
            "{per_connection} descriptors per connection"
        );
        proxy.stop().await
    })
    .await
}

/// How many of this process's descriptors are TCP sockets with either end on one of
/// `ports` (a duplicated descriptor counts twice, which is the point).
fn descriptors_on_ports(ports: &[u16]) -> Result<usize> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)?.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |field: &str| {
                field
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            let on_ours = [fields.get(1), fields.get(2)]
                .into_iter()
                .flatten()
                .any(|f| port(f).is_some_and(|p| ports.contains(&p)));
            if on_ours && let Some(inode) = fields.get(9) {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    let mut count = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        if let Ok(link) = std::fs::read_link(entry?.path())
            && inodes.contains(link.to_string_lossy().as_ref())
        {
            count += 1;
        }
    }
    Ok(count)
}

#[tokio::test]
async fn socks_details_non_utf8_names_and_the_rfc_1929_version() -> Result<()> {
    bounded(async {
        let proxy = Proxy::open(config()).await?;
        let mut stream = proxy.client().await?;
        ensure!(greet(&mut stream, &[0x00]).await? == 0x00);
        let code = request(&mut stream, 0x01, &[0x03, 2, 0xff, 0xfe, 0, 80]).await?;
        ensure!(code == 0x01, "non-UTF-8 name: reply {code:#x}");
        ensure!(closed_within(&mut stream, Duration::from_secs(2)).await?);
        proxy.stop().await?;

        let proxy = Proxy::open(password_config()).await?;
        let mut stream = proxy.client().await?;
        ensure!(greet(&mut stream, &[0x02]).await? == 0x02);
        // Right credentials, wrong sub-negotiation version (0x05 instead of 0x01).
        stream.write_all(b"\x05\x05alice\x06s3cret").await?;
        let mut answer = [0u8; 2];
        stream.read_exact(&mut answer).await?;
        ensure!(answer[1] != 0x00, "wrong version accepted: {answer:?}");
        ensure!(closed_within(&mut stream, Duration::from_secs(2)).await?);
        proxy.stop().await
    })
    .await
}

#[tokio::test]
async fn failed_passwords_slow_the_client_down() -> Result<()> {
    bounded(async {
        let proxy = Proxy::open(password_config()).await?;
        let attempt = |pass: &'static str| {
            let proxy_addr = proxy.addr;
            async move {
                let mut s = TcpStream::connect(proxy_addr).await?;
                ensure!(greet(&mut s, &[0x02]).await? == 0x02);
                let started = tokio::time::Instant::now();
                let status = login(&mut s, "alice", pass).await?;
                Ok::<_, anyhow::Error>((status, started.elapsed()))
            }
        };
        let (status, first) = attempt("guess1").await?;
        ensure!(
            status != 0 && first < Duration::from_millis(200),
            "{first:?}"
        );
        let mut last = first;
        for guess in ["guess2", "guess3", "guess4"] {
            let (status, took) = attempt(guess).await?;
            ensure!(status != 0);
            ensure!(
                took >= Duration::from_millis(200) && took > last / 2,
                "{took:?} after {last:?}"
            );
            last = took;
        }
        ensure!(
            last >= Duration::from_millis(900),
            "delays do not grow: {last:?}"
        );
        // The right password still works (after its wait) and clears the record.
        let (status, _) = attempt("s3cret").await?;
        ensure!(status == 0);
        let (status, took) = attempt("s3cret").await?;
        ensure!(status == 0 && took < Duration::from_millis(200), "{took:?}");
        proxy.stop().await
    })
    .await
}

// ---- PAC file ----

async fn http_get(proxy: &Proxy, path: &str) -> Result<String> {
    let mut stream = proxy.client().await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: proxy\r\n\r\n").as_bytes())
        .await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await??;
    Ok(answer)
}

#[tokio::test]
async fn the_socks_port_serves_a_pac_file_pointing_at_itself_when_asked_to() -> Result<()> {
    bounded(async {
        let proxy = Proxy::open(ServerConfig {
            pac: true,
            ..config()
        })
        .await?;
        let answer = http_get(&proxy, "/proxy.pac").await?;
        ensure!(answer.starts_with("HTTP/1.0 200 OK"), "{answer}");
        let socks = format!("SOCKS5 {}", proxy.addr);
        ensure!(answer.contains(&socks), "{answer}");
        ensure!(http_get(&proxy, "/x").await?.starts_with("HTTP/1.0 404"));
        // SOCKS clients are served as before.
        let echo = echo_server("127.0.0.1:0").await?;
        let (mut stream, code) = connect_via(&proxy, &addr_bytes(echo)).await?;
        ensure!(code == 0, "reply {code}");
        assert_echo(&mut stream, 1000).await?;

        let without = Proxy::open(config()).await?;
        // Closed unanswered (a reset, since the request was left unread).
        let answer = http_get(&without, "/proxy.pac").await;
        ensure!(
            answer.as_ref().map_or(true, String::is_empty),
            "no PAC unless asked: {answer:?}"
        );
        Ok(())
    })
    .await
}
