//! What keeps a slow or hostile client from holding the REST API (header and body
//! timeouts, the connection cap) and the Unix socket, over real sockets: the API served
//! in-process with small limits, and the real `mptcp-socksd` binary (the 2000-connection
//! flood inside a network namespace, so the sockets do not pile up on the host).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::daemon::{ctl, start_in_proxy};
use mptcp_socks::PolicyHandle;
use mptcp_socksd::{Api, ApiLimits, RuleStore};
use mptcp_test_support::netns::{Ns, Topology};
use serde_json::Value;

/// Small limits, so the tests see them act within a second or two.
const LIMITS: ApiLimits = ApiLimits {
    header_timeout: Duration::from_millis(800),
    body_timeout: Duration::from_millis(800),
    max_connections: 4,
};

/// The API on 127.0.0.1 with `limits`, served on a runtime of its own; stopped on drop.
struct Served {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start(limits: ApiLimits) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            RuleStore::open(dir.path().join("rules"), PolicyHandle::default()).expect("store");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                Api::new(store)
                    .limits(limits)
                    .serve(listener, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Served {
            addr,
            _dir: dir,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
}

/// A request line without its end: the header never completes.
fn half_sent(addr: SocketAddr) -> TcpStream {
    let mut stream = connect(addr);
    stream.write_all(b"GET /health HT").expect("write");
    stream
}

/// Reads until the server closes (or the 10 s read timeout): what it sent, and whether it
/// closed.
fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (answer, true),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // A reset is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (answer, true),
            Err(_) => return (answer, false),
        }
    }
}

/// Whether the server has closed `stream` (without waiting for it).
fn closed_now(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 1];
    let closed = match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).expect("blocking");
    closed
}

/// One `GET /health` on a fresh connection: the status line and how long it took.
fn get_health(addr: SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = connect(addr);
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let (answer, _) = read_until_closed(&mut stream);
    let text = String::from_utf8_lossy(&answer).into_owned();
    (
        text.lines().next().unwrap_or_default().to_owned(),
        started.elapsed(),
    )
}

#[test]
fn a_half_sent_request_is_closed_after_the_header_timeout() {
    let served = Served::start(LIMITS);
    let mut stream = half_sent(served.addr);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!closed_now(&mut stream), "closed before its timeout");
    let (answer, closed) = read_until_closed(&mut stream);
    assert!(closed, "still open after 10 s");
    // hyper answers 408 or just closes; either way no request was served.
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "{answer:?}"
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let served = Served::start(LIMITS);
    let mut stream = connect(served.addr);
    let request = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", served.addr);
    stream.write_all(request.as_bytes()).expect("write");
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).expect("answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let (_, closed) = read_until_closed(&mut stream);
    assert!(closed, "an idle keep-alive connection stayed open");
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_408() {
    let served = Served::start(LIMITS);
    let mut stream = connect(served.addr);
    let head = format!(
        "POST /rules HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"ip\":",
        served.addr
    );
    stream.write_all(head.as_bytes()).expect("write");
    let (answer, closed) = read_until_closed(&mut stream);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    assert!(closed);
}

#[test]
fn at_the_cap_the_longest_waiting_connection_makes_room() {
    let served = Served::start(ApiLimits {
        header_timeout: Duration::from_secs(30),
        ..LIMITS
    });
    let mut waiting: Vec<TcpStream> = Vec::new();
    for _ in 0..LIMITS.max_connections {
        waiting.push(half_sent(served.addr));
        // Distinct arrival times, so "longest waiting" is the first one.
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, took) = get_health(served.addr);
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let (_, closed) = read_until_closed(&mut waiting[0]);
    assert!(closed, "the longest-waiting connection was not closed");
    for stream in &mut waiting[1..] {
        assert!(!closed_now(stream), "a newer connection was closed");
    }
}

/// `unix:PATH` of the real daemon: mode 0600, no Host check, the token still required,
/// the `ndiffports:3` count kept by `mptcpctl rules add`, the file removed on exit; a
/// stale socket is replaced, a regular file refused.
#[test]
fn the_daemon_on_a_unix_socket() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("api.sock");
    let rules = dir.path().join("rules");

    // A regular file where the socket should go is not replaced.
    std::fs::write(&socket, "precious")?;
    let out = daemon_command(&socket, &rules).output()?;
    ensure!(!out.status.success(), "started over a regular file");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("is not a socket"), "{stderr}");
    ensure!(std::fs::read_to_string(&socket)? == "precious");
    std::fs::remove_file(&socket)?;

    // A leftover socket nobody listens on is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket)?);
    ensure!(std::fs::symlink_metadata(&socket)?.file_type().is_socket());

    let daemon = UnixDaemon::start(&socket, &rules)?;
    let meta = std::fs::symlink_metadata(&socket)?;
    ensure!(meta.file_type().is_socket());
    ensure!(
        meta.permissions().mode() & 0o777 == 0o600,
        "mode {:o}",
        meta.permissions().mode()
    );

    // Any Host is fine here; the token is not optional.
    let (status, _) = raw_unix(&socket, "GET /rules HTTP/1.1\r\nHost: evil.example\r\n")?;
    ensure!(status == 401, "no token: {status}");
    let (status, body) = raw_unix(
        &socket,
        "GET /rules HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer tok\r\n",
    )?;
    ensure!(status == 200, "{status} {body}");

    let api = format!("unix:{}", socket.display());
    let (code, out, err) = ctl(
        &[
            "--api",
            &api,
            "rules",
            "add",
            "n.example",
            "--path-manager",
            "ndiffports:3",
        ],
        Some("tok"),
    );
    ensure!(code == Some(0), "{err}");
    ensure!(out.contains("path manager ndiffports:3"), "{out}");
    let file = std::fs::read_to_string(&rules)?;
    ensure!(file.contains("n.example,1,default,ndiffports:3,"), "{file}");
    let (code, out, err) = ctl(
        &["--api", &api, "rules", "show", "n.example", "--json"],
        Some("tok"),
    );
    ensure!(code == Some(0), "{err}");
    let shown: Value = serde_json::from_str(&out)?;
    ensure!(shown["path_manager"] == "ndiffports:3", "{shown}");
    // Answered without the token: 0, or 4 where the host itself cannot aggregate (the
    // doctor's verdict, which /health carries: a test host often has one uplink).
    let (code, _, err) = ctl(&["--api", &api, "health"], None);
    ensure!(matches!(code, Some(0 | 4)), "{err}");
    let (code, _, err) = ctl(&["--api", &api, "rules", "list"], None);
    ensure!(code == Some(1) && err.contains("401"), "{err}");

    drop(daemon); // SIGKILL: the file stays, and the next start replaces it
    ensure!(socket.exists());
    let mut daemon = UnixDaemon::start(&socket, &rules)?;
    let (code, _, err) = ctl(&["--api", &api, "health"], Some("tok"));
    ensure!(matches!(code, Some(0 | 4)), "{err}");
    // A second daemon on the same path is refused while the first listens.
    let out = daemon_command(&socket, &rules).output()?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("another process is listening"), "{stderr}");

    // SIGTERM: a clean exit removes the socket.
    // Our child, not yet reaped.
    mptcp_test_support::sys::terminate(daemon.child.id())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.child.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(daemon.child.try_wait()?.is_some(), "no exit on SIGTERM");
    ensure!(!socket.exists(), "the socket file outlived the daemon");
    Ok(())
}

/// The daemon with its API on a Unix socket, its log in a file; killed on drop.
struct UnixDaemon {
    child: std::process::Child,
    _log: tempfile::NamedTempFile,
}

impl UnixDaemon {
    /// Starts it and waits until its API socket accepts connections.
    fn start(socket: &Path, rules: &Path) -> anyhow::Result<UnixDaemon> {
        let log = tempfile::NamedTempFile::new()?;
        let child = daemon_command(socket, rules)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen()?)
            .spawn()?;
        let daemon = UnixDaemon { child, _log: log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Ok(daemon);
            }
            ensure!(
                Instant::now() < deadline,
                "mptcp-socksd did not start its API; log:\n{}",
                std::fs::read_to_string(daemon._log.path())?
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for UnixDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon_command(socket: &Path, rules: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mptcp-socksd"));
    cmd.args(["-i", "127.0.0.1", "-p", "0", "--api-token", "tok"])
        .arg("--api")
        .arg(format!("unix:{}", socket.display()))
        .arg("--policy")
        .arg(rules);
    cmd
}

/// Sends `head` (request line and headers, without the blank line) with
/// `Connection: close` over the socket: the status and the body.
fn raw_unix(socket: &Path, head: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Connections the flood opens: well past the default cap and the listen backlog.
const FLOOD: usize = 2000;

/// The slowloris attack against the real daemon: 2000 connections each holding a
/// half-sent request do not keep a real request from being answered, and a half-sent
/// request is closed after the header timeout.
#[test]
fn the_daemon_answers_while_2000_half_sent_requests_are_open() -> anyhow::Result<()> {
    let Some(topo) = Topology::new_or_skip() else {
        return Ok(());
    };
    raise_fd_limit(FLOOD as u64 + 256)?;
    let (daemon, _dir) = start_in_proxy(&topo, ".\n", &[])?;
    let api = daemon.api.context("API address")?;
    // The fd limit many systems give a service: with one fd per open connection, a
    // server without a cap runs out (EMFILE) long before 2000 and answers nobody.
    let pids = Command::new("ip")
        .args(["netns", "pids", topo.name(Ns::Proxy)])
        .output()?;
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let out = Command::new("prlimit")
            .args(["--pid", pid, "--nofile=1024:1024"])
            .output()?;
        ensure!(
            out.status.success(),
            "prlimit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (flood, status, took) = topo.in_netns(Ns::Proxy, || -> anyhow::Result<_> {
        let mut flood = Vec::with_capacity(FLOOD);
        for i in 0..FLOOD {
            let mut stream = TcpStream::connect_timeout(&api, Duration::from_secs(5))
                .with_context(|| format!("connection {i}"))?;
            // A closed connection (evicted) is fine: the write may fail then.
            let _ = stream.write_all(b"GET /rules HTTP/1.1\r\nHost: 127.0");
            flood.push(stream);
        }
        let (status, took) = get_health(api);
        Ok((flood, status, took))
    })?;
    ensure!(status.starts_with("HTTP/1.1 200"), "{status:?}");
    ensure!(took < Duration::from_secs(2), "answered after {took:?}");
    drop(flood);

    // The header timeout (10 s by default): not closed at once, closed after it.
    let mut stream = topo.in_netns(Ns::Proxy, || {
        TcpStream::connect_timeout(&api, Duration::from_secs(5))
    })?;
    stream.write_all(b"GET /rules HTTP/1.1\r\nHost: 127.0")?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(!closed_now(&mut stream), "closed before the header timeout");
    let mut buf = [0u8; 1024];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    ensure!(closed, "a half-sent request was still open after 20 s");
    Ok(())
}

/// Raises this process's soft fd limit to at least `wanted` (up to the hard limit).
fn raise_fd_limit(wanted: u64) -> anyhow::Result<()> {
    let raised = mptcp_policy::raise_fd_limit()?;
    ensure!(
        raised >= wanted,
        "the hard fd limit {raised} is below the {wanted} this test needs"
    );
    Ok(())
}
