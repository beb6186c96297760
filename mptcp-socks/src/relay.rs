//! Copying both ways between client and outbound socket, with an idle timeout, and what
//! the subflows of a relayed MPTCP connection carried.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use mptcp_policy::SubflowInfo;

use crate::stats::Stats;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream shared with the connection registry, which reads its subflows while the
/// relay moves data: one file descriptor for both (a `dup` would cost a second one per
/// connection).
#[derive(Debug, Clone)]
pub(crate) struct SharedStream(pub(crate) Arc<TcpStream>);

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // try_read clears the readiness on WouldBlock, so the next poll registers.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// The outbound side of a relay: the socket itself, or TLS over it (towards a TLS
/// upstream). Both keep the socket shared with the registry.
#[derive(Debug)]
pub(crate) enum OutboundIo {
    Plain(SharedStream),
    Tls(Box<tokio_rustls::client::TlsStream<SharedStream>>),
}

impl AsyncRead for OutboundIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OutboundIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            OutboundIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for OutboundIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            OutboundIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            OutboundIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OutboundIo::Plain(s) => Pin::new(s).poll_flush(cx),
            OutboundIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OutboundIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            OutboundIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What a relay moved: bytes each way, and when data last moved (milliseconds since the
/// relay began), for the idle timeout.
#[derive(Debug)]
pub(crate) struct Activity<'a> {
    start: Instant,
    last_ms: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    /// The server's counters, which get every byte too.
    stats: &'a Stats,
}

impl<'a> Activity<'a> {
    pub(crate) fn new(stats: &'a Stats) -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            stats,
        }
    }

    /// Bytes read from the client (up) and from the server (down).
    pub(crate) fn bytes(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }

    fn record(&self, upstream: bool, bytes: usize) {
        let counter = if upstream { &self.up } else { &self.down };
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
        self.stats.relayed(upstream, bytes as u64);
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long nothing has moved.
    pub(crate) fn idle(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A stream that notes in an [`Activity`] every read that brought data.
#[derive(Debug)]
pub(crate) struct Watched<'a, S> {
    pub(crate) inner: S,
    pub(crate) activity: &'a Activity<'a>,
    /// Whether this is the client's side (what it reads goes up to the server).
    pub(crate) upstream: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        let read = buf.filled().len() - before;
        if read > 0 {
            self.activity.record(self.upstream, read);
        }
        Poll::Ready(result)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Completes when nothing has moved for `limit` (returning how long), never without one.
/// One timer per connection, re-armed only when it fires: no cost per byte.
pub(crate) async fn idle_for(activity: &Activity<'_>, limit: Option<Duration>) -> Duration {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        let idle = activity.idle();
        if idle >= limit {
            return idle;
        }
        tokio::time::sleep(limit - idle).await;
    }
}

/// How often a relayed MPTCP connection's subflows are read for its closing log line.
pub(crate) const SUBFLOW_SAMPLE: Duration = Duration::from_secs(1);

/// Every subflow a connection had, with the most bytes each was seen to carry, and how
/// many went away (and came back from the same local address) while it lived.
#[derive(Debug, Default)]
pub(crate) struct SubflowsSeen {
    all: Vec<SubflowInfo>,
    /// Per entry of `all`: whether it was missing from a later sample.
    gone: Vec<bool>,
    pub(crate) lost: u64,
    pub(crate) recreated: u64,
}

impl SubflowsSeen {
    /// Reads the subflows now. `last`: the connection is ending, its subflows are being
    /// torn down, so missing ones do not count as lost.
    pub(crate) fn sample(&mut self, socket: &impl std::os::fd::AsFd, last: bool) {
        let Ok(Some(now)) = mptcp_policy::subflows(socket) else {
            return;
        };
        let same = |a: &SubflowInfo, b: &SubflowInfo| a.local == b.local && a.remote == b.remote;
        if !last {
            for (known, gone) in self.all.iter().zip(self.gone.iter_mut()) {
                if !*gone && !now.iter().any(|s| same(s, known)) {
                    *gone = true;
                    self.lost += 1;
                }
            }
        }
        for subflow in now {
            match self.all.iter_mut().position(|s| same(s, &subflow)) {
                Some(i) => {
                    let known = &mut self.all[i];
                    known.bytes_acked = known.bytes_acked.max(subflow.bytes_acked);
                    known.bytes_received = known.bytes_received.max(subflow.bytes_received);
                }
                None => {
                    let ip = subflow.local.ip();
                    if self
                        .all
                        .iter()
                        .zip(&self.gone)
                        .any(|(s, gone)| *gone && s.local.ip() == ip)
                    {
                        self.recreated += 1;
                    }
                    self.all.push(subflow);
                    self.gone.push(false);
                }
            }
        }
    }

    /// Every subflow seen.
    pub(crate) fn all(&self) -> &[SubflowInfo] {
        &self.all
    }

    /// `10.0.1.1->10.0.1.2:80 8.1 MB, 10.0.2.1->10.0.1.2:80 8.4 MB`: what each subflow
    /// carried, both directions together.
    pub(crate) fn describe(&self) -> String {
        self.all
            .iter()
            .map(|s| {
                let bytes = s.bytes_acked + s.bytes_received;
                format!(
                    "{}->{} {:.1} MB",
                    s.local.ip(),
                    s.remote,
                    bytes as f64 / 1e6
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
