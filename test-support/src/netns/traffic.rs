//! Traffic that proves where bytes went: a pattern server in a namespace, and a client
//! that checks every byte and measures the throughput.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::mptcp::mptcp_subflows;
use super::namespace::in_netns;

/// Socket protocol for the traffic helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// `IPPROTO_MPTCP`; falls back to TCP transparently if the peer does not speak MPTCP.
    Mptcp,
    /// Plain `IPPROTO_TCP`.
    Tcp,
}

impl Proto {
    fn socket2(self) -> Protocol {
        match self {
            Proto::Mptcp => Protocol::MPTCP,
            Proto::Tcp => Protocol::TCP,
        }
    }
}

/// The byte stream the pattern server sends: byte `i` is `i % 251`. 251 is prime, so a
/// lost, duplicated or reordered chunk of any power-of-two size shows as a mismatch.
const PATTERN_PERIOD: usize = 251;
const CHUNK: usize = 64 * 1024;

fn pattern_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..CHUNK + PATTERN_PERIOD)
            .map(|i| (i % PATTERN_PERIOD) as u8)
            .collect()
    })
}

/// The pattern bytes at stream offsets `offset..offset + len` (`len <= CHUNK`).
fn pattern_at(offset: u64, len: usize) -> &'static [u8] {
    let start = (offset % PATTERN_PERIOD as u64) as usize;
    &pattern_table()[start..start + len]
}

/// Per-connection result of a [`PatternServer`].
#[derive(Debug, Clone)]
pub struct ConnReport {
    /// Where the connection came from (its initial subflow's source).
    pub peer: SocketAddr,
    /// MPTCP_INFO was readable, i.e. the connection did not fall back to TCP.
    pub mptcp: bool,
    /// Largest subflow count seen while sending (sampled every ~10 ms).
    pub max_subflows: u8,
    /// Bytes the client asked for.
    pub requested: u64,
    /// Bytes actually written.
    pub sent: u64,
    /// Why serving stopped early, if it did.
    pub error: Option<String>,
}

/// A listener in a namespace speaking a tiny protocol: the client sends the number of
/// bytes it wants as a big-endian `u64`; the server streams that many pattern bytes,
/// shuts down its sending side and waits for the client to close. Each connection is
/// served on its own thread and produces a [`ConnReport`]. Stops accepting on drop.
#[derive(Debug)]
pub struct PatternServer {
    port: u16,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    reports: mpsc::Receiver<ConnReport>,
}

impl PatternServer {
    /// Listens on `0.0.0.0:port` (0 = any free port) in namespace `ns`.
    ///
    /// # Errors
    /// Socket creation, bind or listen fails (e.g. MPTCP disabled in `ns`).
    pub fn start(ns: &str, proto: Proto, port: u16) -> anyhow::Result<Self> {
        let listener = in_netns(ns, || -> io::Result<Socket> {
            let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(proto.socket2()))?;
            sock.set_reuse_address(true)?;
            sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
            sock.listen(64)?;
            Ok(sock)
        })
        .with_context(|| format!("{proto:?} listener on port {port} in {ns}"))?;
        let port = listener
            .local_addr()?
            .as_socket()
            .context("listener address")?
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, reports) = mpsc::channel();
        let acceptor = {
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("pattern-accept".into())
                .spawn(move || accept_loop(&listener, &stop, &tx))?
        };
        Ok(PatternServer {
            port,
            stop,
            acceptor: Some(acceptor),
            reports,
        })
    }

    /// The port it listens on (the chosen one if it was started with 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the report of the next finished connection.
    ///
    /// # Errors
    /// None arrives within `timeout`.
    pub fn next_report(&self, timeout: Duration) -> anyhow::Result<ConnReport> {
        self.reports
            .recv_timeout(timeout)
            .map_err(|e| anyhow!("no connection report within {timeout:?}: {e}"))
    }
}

impl Drop for PatternServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &Socket, stop: &AtomicBool, reports: &mpsc::Sender<ConnReport>) {
    while !stop.load(Ordering::Relaxed) {
        // Poll with a timeout so the loop notices `stop` without a wake-up connection
        // (which would have to come from inside the namespace).
        if !crate::sys::wait_readable(listener.as_fd(), 100) {
            continue;
        }
        let Ok((conn, peer)) = listener.accept() else {
            continue;
        };
        let reports = reports.clone();
        let spawned = thread::Builder::new()
            .name("pattern-conn".into())
            .spawn(move || {
                let report = serve_pattern(conn, &peer);
                let _ = reports.send(report);
            });
        if let Err(e) = spawned {
            eprintln!("pattern server: cannot spawn a connection thread: {e}");
        }
    }
}

fn serve_pattern(conn: Socket, peer: &SockAddr) -> ConnReport {
    let mut report = ConnReport {
        peer: peer
            .as_socket()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        mptcp: false,
        max_subflows: 0,
        requested: 0,
        sent: 0,
        error: None,
    };
    if let Err(e) = stream_pattern(conn, &mut report) {
        report.error = Some(format!("{e:#}"));
    }
    report
}

fn stream_pattern(mut conn: Socket, report: &mut ConnReport) -> anyhow::Result<()> {
    // Bounded: a stuck peer ends the thread instead of hanging the test binary.
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut request = [0u8; 8];
    conn.read_exact(&mut request)
        .context("reading the request")?;
    report.requested = u64::from_be_bytes(request);
    sample_subflows(&conn, report)?;
    let mut last_sample = Instant::now();
    while report.sent < report.requested {
        let len = (report.requested - report.sent).min(CHUNK as u64) as usize;
        let n = conn
            .write(pattern_at(report.sent, len))
            .context("sending")?;
        ensure!(n > 0, "peer stopped accepting data");
        report.sent += n as u64;
        // Subflows join shortly after the handshake, so keep looking during the transfer.
        if last_sample.elapsed() >= Duration::from_millis(10) {
            sample_subflows(&conn, report)?;
            last_sample = Instant::now();
        }
    }
    sample_subflows(&conn, report)?;
    conn.shutdown(std::net::Shutdown::Write)?;
    // Wait for the client's close so everything sent is delivered before we drop.
    let mut rest = [0u8; 64];
    while conn
        .read(&mut rest)
        .context("waiting for the client to close")?
        > 0
    {}
    Ok(())
}

fn sample_subflows(conn: &Socket, report: &mut ConnReport) -> io::Result<()> {
    if let Some(count) = mptcp_subflows(conn)? {
        report.mptcp = true;
        report.max_subflows = report.max_subflows.max(count.total);
    }
    Ok(())
}

/// One measured download.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Bytes received (all of them checked against the pattern).
    pub bytes: u64,
    /// From sending the request to receiving the last byte (connect time excluded).
    pub elapsed: Duration,
}

impl Transfer {
    /// The payload throughput in Mbit/s.
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Connects a `proto` socket to `addr` from the current thread's namespace (call it inside
/// [`in_netns`] or a `connect` closure). 30 s read/write timeouts bound a stuck transfer.
///
/// # Errors
/// Socket creation or connect fails.
pub fn connect(proto: Proto, addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(proto.socket2()),
    )?;
    sock.connect_timeout(&addr.into(), Duration::from_secs(10))?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    sock.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(sock.into())
}

/// Speaks the [`PatternServer`] protocol on an established `stream`: asks for `bytes`,
/// checks every byte against the pattern and that the server then closes, and measures
/// the throughput. The stream may be anything carrying the bytes to a pattern server,
/// e.g. a SOCKS5 connection after its handshake.
///
/// # Errors
/// I/O errors, a corrupted or short stream, or extra data.
pub fn fetch_pattern(stream: &mut (impl Read + Write), bytes: u64) -> anyhow::Result<Transfer> {
    let start = Instant::now();
    stream
        .write_all(&bytes.to_be_bytes())
        .context("sending the request")?;
    stream.flush()?;
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    while received < bytes {
        let want = (bytes - received).min(CHUNK as u64) as usize;
        let n = stream
            .read(&mut buf[..want])
            .with_context(|| format!("reading after {received} of {bytes} bytes"))?;
        ensure!(n > 0, "stream ended after {received} of {bytes} bytes");
        if buf[..n] != *pattern_at(received, n) {
            let at = buf[..n]
                .iter()
                .zip(pattern_at(received, n))
                .position(|(got, want)| got != want)
                .unwrap_or(0);
            bail!("pattern mismatch at byte {}", received + at as u64);
        }
        received += n as u64;
    }
    let elapsed = start.elapsed();
    let extra = stream
        .read(&mut buf[..1])
        .context("waiting for the server's close")?;
    ensure!(extra == 0, "server sent more than {bytes} bytes");
    Ok(Transfer { bytes, elapsed })
}

/// Runs `connect` and then [`fetch_pattern`] on a thread inside namespace `ns`. `connect`
/// returns the stream to use, e.g. `|| connect(Proto::Mptcp, addr)`, or a TCP connection
/// to a SOCKS proxy after its handshake; give custom streams read timeouts so a broken
/// transfer fails instead of hanging.
///
/// # Errors
/// `connect` fails, or as [`fetch_pattern`].
pub fn fetch_in_netns<S, E>(
    ns: &str,
    bytes: u64,
    connect: impl FnOnce() -> Result<S, E> + Send,
) -> anyhow::Result<Transfer>
where
    S: Read + Write,
    E: Into<anyhow::Error>,
{
    in_netns(ns, || {
        let mut stream = connect().map_err(Into::into).context("connecting")?;
        fetch_pattern(&mut stream, bytes)
    })
}

/// Waits for a transfer started on its own thread (e.g. with [`fetch_in_netns`]).
///
/// # Errors
/// The transfer failed or its thread panicked.
pub fn join_transfer(handle: JoinHandle<anyhow::Result<Transfer>>) -> anyhow::Result<Transfer> {
    handle
        .join()
        .map_err(|_| anyhow!("transfer thread panicked"))?
}
