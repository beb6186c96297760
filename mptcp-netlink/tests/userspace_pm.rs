//! The client against a real kernel: two namespaces, the client one running the
//! userspace path manager, an MPTCP server in the other.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mptcp_netlink::{Endpoint, EndpointFlags, Error, Event, PmClient, PmEvents};
use mptcp_test_support::netns::mptcp_connection_info;
use mptcp_test_support::netns::path_pair::{CLIENT_ADDRS, PathPair, SERVER_ADDRS};
use mptcp_test_support::require_netns;
use socket2::{Domain, Protocol, Socket, Type};

const STEP: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Start an MPTCP server in the server namespace; it drains every connection until EOF.
fn start_server(topo: &PathPair) -> u16 {
    let listener = topo.server.in_netns(|| {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into()).unwrap();
        s.listen(64).unwrap();
        s
    });
    let port = listener.local_addr().unwrap().as_socket().unwrap().port();
    // The listener keeps its namespace; the thread needs none.
    std::thread::spawn(move || {
        while let Ok((mut conn, _)) = listener.accept() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    port
}

/// Connect from the client namespace (call on a thread inside it) and send a little, so
/// the server's ack makes the connection fully established.
fn connect(to: SocketAddr) -> Socket {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP)).unwrap();
    s.connect_timeout(&to.into(), STEP).unwrap();
    (&s).write_all(b"hello").unwrap();
    s
}

/// Next event matching `pred`, logging and skipping the others; fails after `STEP`.
async fn wait_for(
    events: &mut PmEvents,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> anyhow::Result<Event> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => anyhow::bail!("timed out waiting for {what}"),
            Ok(Ok(e)) => {
                eprintln!("event: {e:?}");
                if pred(&e) {
                    return Ok(e);
                }
            }
            Ok(Err(Error::EventsLost)) => eprintln!("events lost"),
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn subflows_and_events_follow_one_connection() -> anyhow::Result<()> {
    if !require_netns() {
        return Ok(());
    }
    let topo = PathPair::new()?;
    let port = start_server(&topo);
    let server0 = SocketAddr::new(ip(SERVER_ADDRS[0]), port);
    let server1 = SocketAddr::new(ip(SERVER_ADDRS[1]), port);
    topo.client
        .in_netns(move || runtime().block_on(client_flow(server0, server1)))
}

async fn client_flow(server0: SocketAddr, server1: SocketAddr) -> anyhow::Result<()> {
    let client = PmClient::connect().await?;
    let mut events = PmEvents::subscribe().await?;

    // The endpoint list is readable in userspace mode and is the address inventory.
    let endpoints = client.endpoints().await?;
    eprintln!("endpoints: {endpoints:?}");
    let second = endpoints
        .iter()
        .find(|e| e.addr == ip(CLIENT_ADDRS[1]))
        .ok_or_else(|| anyhow::anyhow!("endpoint {} not listed", CLIENT_ADDRS[1]))?;
    assert!(second.flags.contains(EndpointFlags::SUBFLOW));
    assert!(second.ifindex.is_some_and(|i| i > 0), "{second:?}");
    let limits = client.limits().await?;
    assert_eq!((limits.subflows, limits.add_addr_accepted), (4, 4));

    let sock = connect(server0);
    let token = mptcp_connection_info(&sock)?.token;
    let local0 = sock.local_addr()?.as_socket().unwrap();
    let is_conn = |e: &Event| e.token() == Some(token);
    let created = wait_for(&mut events, "CREATED", |e| {
        matches!(e, Event::Created(_)) && is_conn(e)
    })
    .await?;
    let Event::Created(c) = created else {
        unreachable!()
    };
    assert_eq!((c.local, c.remote, c.server_side), (local0, server0, false));
    wait_for(&mut events, "ESTABLISHED", |e| {
        matches!(e, Event::Established(_)) && is_conn(e)
    })
    .await?;

    // A subflow from the second local address to the server's second address.
    client
        .subflow_create(token, Endpoint::from(second), server1)
        .await?;
    let Event::SubEstablished(sub) = wait_for(&mut events, "SUB_ESTABLISHED", |e| {
        matches!(e, Event::SubEstablished(_)) && is_conn(e)
    })
    .await?
    else {
        unreachable!()
    };
    assert_eq!((sub.local.ip(), sub.remote), (ip(CLIENT_ADDRS[1]), server1));
    assert_eq!(sub.local_id, second.id);
    assert_eq!(mptcp_connection_info(&sock)?.subflows, 1);

    // Same address pair again: record what the kernel does.
    match client
        .subflow_create(token, Endpoint::from(second), server1)
        .await
    {
        Ok(()) => {
            let e = wait_for(&mut events, "duplicate subflow outcome", |e| {
                matches!(e, Event::SubEstablished(_) | Event::SubClosed(_)) && is_conn(e)
            })
            .await?;
            eprintln!("duplicate pair accepted by the command, then: {e:?}");
        }
        Err(e) => eprintln!("duplicate pair refused: {e}"),
    }

    // Unreachable remotes fail cleanly: an error from the command or a SUB_CLOSED with
    // an error, never a hang or a panic.
    for bad in ["10.77.9.9", "10.77.2.99"] {
        let remote = SocketAddr::new(ip(bad), server0.port());
        match client
            .subflow_create(token, Endpoint::from(second), remote)
            .await
        {
            Err(e) => eprintln!("subflow to {remote} refused: {e} (errno {:?})", e.errno()),
            Ok(()) => {
                let Event::SubClosed(s) = wait_for(
                    &mut events,
                    "SUB_CLOSED of unreachable",
                    |e| matches!(e, Event::SubClosed(s) if s.remote == remote),
                )
                .await?
                else {
                    unreachable!()
                };
                eprintln!("subflow to {remote} closed with error {:?}", s.error);
                assert!(s.error.is_some(), "{s:?}");
            }
        }
    }

    client.subflow_destroy(token, sub.local, sub.remote).await?;
    wait_for(
        &mut events,
        "SUB_CLOSED",
        |e| matches!(e, Event::SubClosed(s) if s.local == sub.local && s.token == token),
    )
    .await?;

    // Without a local address id: record what the kernel does (no assertion, it varies
    // with whether the address is already known to the connection).
    for remote in [server1, SocketAddr::new(ip("10.77.9.9"), server0.port())] {
        let r = client
            .subflow_create(token, Endpoint::new(ip(CLIENT_ADDRS[1])), remote)
            .await;
        eprintln!("no local id, to {remote}: {r:?}");
    }

    // An unknown token is a kernel error with an errno, not a panic.
    let err = client
        .subflow_create(token.wrapping_add(1), Endpoint::from(second), server1)
        .await
        .expect_err("unknown token accepted");
    eprintln!("unknown token: {err}");
    assert!(matches!(err, Error::Kernel { .. }), "{err:?}");

    drop(sock);
    wait_for(&mut events, "CLOSED", |e| *e == Event::Closed { token }).await?;
    Ok(())
}

#[test]
fn event_loss_is_reported_and_recoverable() -> anyhow::Result<()> {
    if !require_netns() {
        return Ok(());
    }
    let topo = PathPair::new()?;
    let port = start_server(&topo);
    let server0 = SocketAddr::new(ip(SERVER_ADDRS[0]), port);
    topo.client.in_netns(move || {
        runtime().block_on(async move {
            let mut events = PmEvents::subscribe().await?;
            // The smallest buffer the kernel allows, then a burst nobody reads.
            events.set_recv_buffer_size(0)?;
            for _ in 0..40 {
                drop(connect(server0));
            }
            let mut lost = false;
            loop {
                match tokio::time::timeout(Duration::from_millis(500), events.next()).await {
                    Err(_) => break,
                    Ok(Err(Error::EventsLost)) => lost = true,
                    Ok(Err(e)) => return Err(e.into()),
                    Ok(Ok(_)) => {}
                }
            }
            assert!(lost, "no ENOBUFS reported for a 40-connection burst");
            // Still usable afterwards.
            let sock = connect(server0);
            let token = mptcp_connection_info(&sock)?.token;
            wait_for(
                &mut events,
                "CREATED after loss",
                |e| matches!(e, Event::Created(c) if c.token == token),
            )
            .await?;
            Ok(())
        })
    })
}
