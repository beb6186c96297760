//! Any bytes as a SOCKS5 client's side of a connection, through the server's own
//! connection handler ([`mptcp_socks::Server::serve_connection`]) over an in-memory
//! stream: greeting, username/password, request. The first input byte is not sent: odd,
//! the server requires a password (user `user`, password `secret`); even, it does not.
//!
//! Properties: the handler never panics, returns within its handshake timeout once the
//! client's side is closed, and writes only whole SOCKS5 messages: a method choice,
//! an RFC 1929 status, at most one reply, in that order.
//!
//! The target moves itself into a network namespace of its own at start (needs root),
//! so whatever the fuzzer makes the proxy resolve or connect to goes nowhere.

#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mptcp_socks::{Auth, PolicyHandle, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Harness {
    runtime: tokio::runtime::Runtime,
    open: Server,
    password: Server,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // SAFETY: unshare has no memory-safety preconditions; it is called before any
        // thread of this harness exists.
        let isolated = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0;
        assert!(
            isolated,
            "socks_handshake needs root to fuzz inside a network namespace of its own: {}",
            std::io::Error::last_os_error()
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = ServerConfig {
            handshake_timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_millis(50),
            ..ServerConfig::default()
        };
        let policy = PolicyHandle::new(
            "*,1,default,default,access=deny,\n10.0.0.0/8,1,default,default,\n"
                .parse()
                .expect("policy"),
        );
        let _guard = runtime.enter();
        let open = Server::new(config.clone(), policy.clone()).expect("server");
        let password = Server::new(
            ServerConfig {
                auth: Some(Auth::new("user", "secret")),
                ..config
            },
            policy,
        )
        .expect("server");
        Harness {
            runtime,
            open,
            password,
        }
    })
}

/// Checks that `out` is a method choice, then optionally an RFC 1929 status, then
/// optionally one reply, and nothing else.
fn well_formed(mut out: &[u8]) -> bool {
    match out {
        [] => return true,
        [0x05, _, rest @ ..] => out = rest,
        _ => return false,
    }
    if let [0x01, _, rest @ ..] = out {
        out = rest;
    }
    match out {
        [] => true,
        [0x05, _, 0x00, 0x01, rest @ ..] => rest.len() == 6,
        [0x05, _, 0x00, 0x04, rest @ ..] => rest.len() == 18,
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, data)) = data.split_first() else {
        return;
    };
    let harness = harness();
    let server = if selector & 1 == 1 {
        &harness.password
    } else {
        &harness.open
    };
    let client: SocketAddr = "192.168.1.20:40000".parse().expect("addr");
    let out = harness.runtime.block_on(async {
        let (mut near, far) = tokio::io::duplex(64 * 1024);
        let client_side = async {
            let _ = near.write_all(data).await;
            let _ = near.shutdown().await;
            let mut out = Vec::new();
            let _ = near.read_to_end(&mut out).await;
            out
        };
        let served = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(server.serve_connection(far, client), client_side).1
        });
        served.await.expect("the handler did not return within 5 s")
    });
    assert!(well_formed(&out), "malformed answer {out:02x?} to {data:02x?}");
});
