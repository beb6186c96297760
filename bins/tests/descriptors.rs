//! What a relayed connection costs the real daemon in file descriptors: exactly two, the
//! client's connection and the outbound one. Counted in the spawned daemon's
//! /proc/PID/fd, which the threads of other tests cannot disturb. The pipes that plain
//! relays splice through are the process's, not a connection's: a few spare per worker
//! thread, however many connections are open. (How much memory and time a connection
//! costs is the load benchmark's to measure, never a test's.)

mod common;

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::daemon::Daemon;
use common::echo_bytes;
use mptcp_test_support::socks::blocking::{self as socks, Target};

/// Relayed connections held open at once: enough that one more descriptor each stands
/// out, well below the default per-client cap (256) and the default fd limit.
const CONNS: usize = 64;
/// How long the daemon may take to open or close its side of the connections.
const SETTLE_WAIT: Duration = Duration::from_secs(10);

#[test]
fn a_relayed_connection_costs_the_daemon_two_descriptors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules");
    std::fs::write(&rules, "127.0.0.1,0,default,default,access=allow,\n.\n")?;
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mptcp-socksd"));
    cmd.args(["-i", "127.0.0.1", "-p", &port.to_string(), "--api", "off"])
        .arg("--policy")
        .arg(&rules);
    let daemon = Daemon::spawn(
        None,
        cmd,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        None,
    )?;
    let pid = daemon.pid().context("a spawned daemon has a pid")?;
    let echo = concurrent_echo()?;
    let relay = || -> anyhow::Result<TcpStream> {
        let mut conn = socks::connect(daemon.socks, Target::Addr(echo), None)?;
        echo_bytes(&mut conn, 4);
        Ok(conn)
    };

    // One relay first: what the daemon sets up once is not per connection.
    drop(relay()?);
    let before = fds_once_at(pid, |_| true)?;
    let conns = (0..CONNS)
        .map(|_| relay())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let open = fds_once_at(pid, |fds| {
        count(fds, NOT_PIPE) == count(&before, NOT_PIPE) + 2 * CONNS
    })?;
    assert_eq!(
        count(&open, NOT_PIPE) - count(&before, NOT_PIPE),
        2 * CONNS,
        "{CONNS} relayed connections open took {} descriptors; those added: {:?}",
        count(&open, NOT_PIPE) - count(&before, NOT_PIPE),
        added(&before, &open)
    );
    // Each relay spliced its echo: the pipes it used went back to the spares.
    let spare = spare_pipe_fds();
    assert!(
        count(&open, PIPE) <= spare,
        "{} pipe descriptors with {CONNS} idle connections open, more than the spares ({spare})",
        count(&open, PIPE)
    );
    drop(conns);
    let after = fds_once_at(pid, |fds| count(fds, NOT_PIPE) <= count(&before, NOT_PIPE))?;
    assert_eq!(
        count(&after, NOT_PIPE),
        count(&before, NOT_PIPE),
        "descriptors left once the connections closed: {:?}",
        added(&before, &after)
    );
    assert!(count(&after, PIPE) <= spare);
    Ok(())
}

const PIPE: fn(&str) -> bool = |target| target.starts_with("pipe:");
const NOT_PIPE: fn(&str) -> bool = |target| !target.starts_with("pipe:");

/// How many of `fds` link to a target `kind` accepts.
fn count(fds: &BTreeMap<String, String>, kind: fn(&str) -> bool) -> usize {
    fds.values().filter(|target| kind(target)).count()
}

/// Descriptors of the spare pipes the daemon may keep: four pipes (two descriptors each)
/// per worker thread, one worker per core.
fn spare_pipe_fds() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    2 * 4 * cores
}

/// An echo server with a thread per connection (the shared one serves one connection at a
/// time), so that many relays to it can be open at once.
fn concurrent_echo() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = conn.try_clone()?;
                io::copy(&mut reader, &mut conn)
            });
        }
    });
    Ok(addr)
}

/// The process's open descriptors (number -> what `/proc/PID/fd/N` links to), once they
/// satisfy `wanted` and their count holds still, or as they are after [`SETTLE_WAIT`].
fn fds_once_at(
    pid: u32,
    wanted: impl Fn(&BTreeMap<String, String>) -> bool,
) -> io::Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + SETTLE_WAIT;
    let mut last = fds(pid)?;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = fds(pid)?;
        if (wanted(&now) && now.len() == last.len()) || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

fn fds(pid: u32) -> io::Result<BTreeMap<String, String>> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .map(|entry| {
            let entry = entry?;
            let target = std::fs::read_link(entry.path())
                .map_or_else(|e| format!("({e})"), |p| p.display().to_string());
            Ok((entry.file_name().to_string_lossy().into_owned(), target))
        })
        .collect()
}

/// What `now` has that `before` had not, counted by kind (`socket`, `pipe`, an anonymous
/// inode's name...).
fn added(
    before: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for (fd, target) in now {
        if before.get(fd) != Some(target) {
            let kind = target.split(':').next().unwrap_or(target).to_owned();
            *kinds.entry(kind).or_default() += 1;
        }
    }
    kinds
}
