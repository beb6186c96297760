//! Copying both ways between client and outbound socket, with an idle timeout, and what
//! the subflows of a relayed MPTCP connection carried.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use mptcp_policy::{Pipe, SubflowInfo};

use crate::stats::Stats;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
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
            let unfilled = buf.initialize_unfilled();
            let room = unfilled.len();
            let mut read = 0;
            // try_io clears the readiness on WouldBlock, so the next poll registers. A
            // short read drained the socket: its readiness ends there too (as in tokio's
            // own TcpStream), rather than after one more read that finds nothing.
            let result = self.0.try_io(Interest::READABLE, || {
                read = io::Read::read(&mut &*socket2::SockRef::from(&*self.0), unfilled)?;
                if read > 0 && read < room {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match result {
                Ok(()) => {}
                // A short read, its readiness ended: the bytes are in the buffer.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock && read > 0 => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
            buf.advance(read);
            return Poll::Ready(Ok(()));
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

/// What one read moves at most: 64 KiB keeps a bulk transfer near the speed of larger
/// reads (measured: 8 KiB reads cost about a tenth of the throughput of 256 KiB).
const CHUNK: usize = 64 * 1024;

/// Pipes kept per thread for the next burst of a spliced relay.
const SPARE_PIPES: usize = 4;

/// Pipes open at most (in use and spare): splicing stays within the descriptors a daemon
/// keeps beside its connections' two each. A burst that finds none is copied.
const MAX_PIPES: usize = 64;

static OPEN_PIPES: AtomicUsize = AtomicUsize::new(0);

/// A pipe counted in [`OPEN_PIPES`] while it is open.
#[derive(Debug)]
struct CountedPipe(Pipe);

impl Drop for CountedPipe {
    fn drop(&mut self) {
        OPEN_PIPES.fetch_sub(1, Ordering::Relaxed);
    }
}

thread_local! {
    /// Where a relay reads a chunk and writes it on at once: one buffer per thread, not
    /// two per connection. A connection holds memory of its own only for bytes its
    /// receiver could not take yet ([`Direction::backlog`]).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; CHUNK].into_boxed_slice());
    /// Pipes for splicing, not in use: a connection holds one only while it moves data.
    static PIPES: RefCell<Vec<CountedPipe>> = const { RefCell::new(Vec::new()) };
}

/// A side of a relay that may be a plain TCP (or MPTCP) socket: between two of those the
/// kernel moves the bytes itself (`splice` through a pipe), without copying them through
/// the process.
pub(crate) trait TcpSide {
    /// The socket, when the side is one without a layer (TLS) above it.
    fn tcp(&self) -> Option<&TcpStream>;
}

impl TcpSide for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl TcpSide for Box<tokio_rustls::server::TlsStream<TcpStream>> {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl TcpSide for OutboundIo {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            OutboundIo::Plain(stream) => Some(&stream.0),
            OutboundIo::Tls(_) => None,
        }
    }
}

/// A stream of any kind (given to [`crate::Server::serve_connection`]): relayed by copying.
#[derive(Debug)]
pub(crate) struct Opaque<S>(pub(crate) S);

impl<S> TcpSide for Opaque<S> {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Opaque<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Opaque<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A spare pipe, or a new one if fewer than [`MAX_PIPES`] are open.
fn take_pipe() -> Option<CountedPipe> {
    if let Some(pipe) = PIPES.with(|pipes| pipes.try_borrow_mut().ok()?.pop()) {
        return Some(pipe);
    }
    if OPEN_PIPES.fetch_add(1, Ordering::Relaxed) >= MAX_PIPES {
        OPEN_PIPES.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    match Pipe::new() {
        Ok(pipe) => Some(CountedPipe(pipe)),
        Err(_) => {
            OPEN_PIPES.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

/// Keeps an empty pipe for the next burst, up to [`SPARE_PIPES`]; closes it otherwise.
fn put_pipe(pipe: CountedPipe) {
    PIPES.with(|pipes| {
        if let Ok(mut pipes) = pipes.try_borrow_mut()
            && pipes.len() < SPARE_PIPES
        {
            pipes.push(pipe);
        }
    });
}

/// Copies both ways between `a` and `b` until both sides have ended (each end is passed
/// on as a half-close) or one fails, noting in `activity` what moves. `early`: bytes
/// already read from `a`, written to `b` first.
///
/// Unlike [`tokio::io::copy_bidirectional`], which holds a buffer per direction for the
/// connection's whole life, an idle connection here holds no buffer at all, and a busy
/// one only what its receiver has not taken yet, freed as soon as it has. Between two
/// plain sockets the bytes go through a pipe in the kernel instead, held only while
/// data moves.
pub(crate) async fn relay<A, B>(
    a: &mut A,
    b: &mut B,
    activity: &Activity<'_>,
    early: Vec<u8>,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + TcpSide + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + TcpSide + Unpin + ?Sized,
{
    let mut up = Direction::new(true);
    if !early.is_empty() {
        activity.record(true, early.len());
        up.backlog = early;
    }
    let mut down = Direction::new(false);
    std::future::poll_fn(|cx| {
        let up_done = up.poll(cx, &mut *a, &mut *b, activity)?;
        let down_done = down.poll(cx, &mut *b, &mut *a, activity)?;
        ready!(up_done);
        ready!(down_done);
        Poll::Ready(Ok(()))
    })
    .await
}

/// One direction of a relay.
#[derive(Debug)]
struct Direction {
    /// Whether it reads from the client (up) or from the server (down).
    upstream: bool,
    /// Bytes read but not yet taken by the writer; empty (no allocation) otherwise.
    backlog: Vec<u8>,
    /// How much of `backlog` is written.
    written: usize,
    /// The writer took bytes since it was last flushed (a TLS writer may hold them).
    need_flush: bool,
    /// Whether to splice (until both sides turn out to be sockets that can).
    splice: bool,
    /// A read filled a whole chunk, so more is waiting: splice until the reader runs dry.
    /// Small messages are copied (as cheap, and a short read ends the reader's readiness
    /// without one more read that finds nothing).
    bursting: bool,
    /// The pipe being spliced through, while a burst lasts, and how much is in it.
    pipe: Option<CountedPipe>,
    in_pipe: usize,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Copying,
    /// The reader ended: pass the end on to the writer.
    ShuttingDown,
    Done,
}

/// What a spliced burst came to.
enum Burst {
    /// The reader has nothing more for now; the pipe is empty and given back.
    Idle,
    /// The reader ended.
    End,
    /// These sockets cannot be spliced: copy instead.
    Unsupported,
    /// No pipe to be had now: copy this burst.
    NoPipe,
}

/// What a read of one chunk came to.
enum Chunk {
    /// Read and written on, all of it.
    Moved,
    /// Read; the writer took part of it (or nothing), the rest is in the backlog.
    Backlogged,
    /// The reader ended.
    End,
}

impl Direction {
    fn new(upstream: bool) -> Self {
        Direction {
            upstream,
            backlog: Vec::new(),
            written: 0,
            need_flush: false,
            splice: true,
            bursting: false,
            pipe: None,
            in_pipe: 0,
            state: State::Copying,
        }
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        activity: &Activity<'_>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + TcpSide + Unpin + ?Sized,
        W: AsyncWrite + TcpSide + Unpin + ?Sized,
    {
        loop {
            match self.state {
                State::Done => return Poll::Ready(Ok(())),
                State::ShuttingDown => {
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                    self.state = State::Done;
                    continue;
                }
                State::Copying => {}
            }
            while self.written < self.backlog.len() {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.backlog[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.need_flush = true;
            }
            if !self.backlog.is_empty() {
                // Freed, not kept: a connection that pauses holds nothing.
                self.backlog = Vec::new();
                self.written = 0;
            }
            if self.splice && self.bursting {
                match (reader.tcp(), writer.tcp()) {
                    (Some(from), Some(to)) => {
                        match ready!(self.splice_burst(cx, from, to, activity))? {
                            Burst::Idle => {
                                self.bursting = false;
                                return Poll::Pending;
                            }
                            Burst::End => {
                                self.state = State::ShuttingDown;
                                continue;
                            }
                            Burst::Unsupported => self.splice = false,
                            Burst::NoPipe => self.bursting = false,
                        }
                    }
                    _ => self.splice = false,
                }
            }
            let chunk = SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
                Ok(mut scratch) => self.move_chunk(cx, &mut scratch, reader, writer, activity),
                // Only if a reader or writer polled another relay from inside its own poll.
                Err(_) => self.move_chunk(cx, &mut vec![0; CHUNK], reader, writer, activity),
            });
            match chunk {
                Poll::Ready(Ok(Chunk::Moved)) => {}
                Poll::Ready(Ok(Chunk::End)) => self.state = State::ShuttingDown,
                // The writer's waker is registered: it calls when it can take more.
                Poll::Ready(Ok(Chunk::Backlogged)) => return Poll::Pending,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {
                    // Nothing to read: what the writer took must not wait in it meanwhile.
                    if self.need_flush {
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Splices from `from` to `to` through a pipe until `from` has nothing for now (its
    /// waker registered) or ends. Pending: bytes wait in the pipe for `to`.
    fn splice_burst(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        activity: &Activity<'_>,
    ) -> Poll<io::Result<Burst>> {
        loop {
            let Some(pipe) = self.pipe.take().or_else(take_pipe) else {
                return Poll::Ready(Ok(Burst::NoPipe));
            };
            let pipe = &self.pipe.insert(pipe).0;
            if self.in_pipe > 0 {
                ready!(to.poll_write_ready(cx))?;
                match to.try_io(Interest::WRITABLE, || pipe.drain_to(to, self.in_pipe)) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => self.in_pipe -= n,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Poll::Ready(Err(err)),
                }
                continue;
            }
            let burst = match from.poll_read_ready(cx) {
                Poll::Pending => Burst::Idle,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Ready(Ok(())) => {
                    match from.try_io(Interest::READABLE, || pipe.fill_from(from, CHUNK)) {
                        Ok(0) => Burst::End,
                        Ok(n) => {
                            self.in_pipe = n;
                            activity.record(self.upstream, n);
                            continue;
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                        // Nothing moved: the kernel cannot splice from this socket.
                        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => Burst::Unsupported,
                        Err(err) => return Poll::Ready(Err(err)),
                    }
                }
            };
            if let Some(pipe) = self.pipe.take() {
                put_pipe(pipe);
            }
            return Poll::Ready(Ok(burst));
        }
    }

    /// Reads one chunk into `buf` and writes it on; whatever the writer does not take
    /// now goes to the backlog.
    fn move_chunk<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        reader: &mut R,
        writer: &mut W,
        activity: &Activity<'_>,
    ) -> Poll<io::Result<Chunk>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut read = ReadBuf::new(buf);
        ready!(Pin::new(&mut *reader).poll_read(cx, &mut read))?;
        let filled = read.filled().len();
        if filled == 0 {
            return Poll::Ready(Ok(Chunk::End));
        }
        activity.record(self.upstream, filled);
        self.bursting = filled == buf.len();
        let mut written = 0;
        while written < filled {
            match Pin::new(&mut *writer).poll_write(cx, &buf[written..filled]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    written += n;
                    self.need_flush = true;
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {
                    self.backlog = buf[written..filled].to_vec();
                    self.written = 0;
                    return Poll::Ready(Ok(Chunk::Backlogged));
                }
            }
        }
        Poll::Ready(Ok(Chunk::Moved))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Sends `data`, ends its side, and returns everything the other end sent.
    async fn talk(mut end: DuplexStream, data: Vec<u8>) -> Vec<u8> {
        let (mut read, mut write) = tokio::io::split(&mut end);
        let send = async {
            write.write_all(&data).await.unwrap();
            write.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let receive = read.read_to_end(&mut got);
        let ((), received) = tokio::join!(send, receive);
        received.unwrap();
        got
    }

    /// What each end sent is what the other got.
    fn assert_delivered(up: &[u8], at_server: &[u8], down: &[u8], at_client: &[u8]) {
        assert!(
            at_server == up,
            "the server got other bytes than the client sent"
        );
        assert!(
            at_client == down,
            "the client got other bytes than the server sent"
        );
    }

    /// Pipes far smaller than a chunk: nearly every chunk's write stops short, so the
    /// backlog carries most bytes, in both directions at once.
    #[tokio::test]
    async fn relays_both_ways_intact_through_writers_that_take_little_at_a_time() {
        let stats = Stats::default();
        let activity = Activity::new(&stats);
        let (client, a) = duplex(100);
        let mut a = Opaque(a);
        let (b, server) = duplex(1000);
        let mut b = Opaque(b);
        let up = pattern(300_000, 1);
        let down = pattern(200_000, 7);
        let (relayed, at_server, at_client) = tokio::join!(
            relay(&mut a, &mut b, &activity, Vec::new()),
            talk(server, down.clone()),
            talk(client, up.clone()),
        );
        relayed.unwrap();
        assert_delivered(&up, &at_server, &down, &at_client);
        assert_eq!(activity.bytes(), (300_000, 200_000));
    }

    /// One side ends while the other keeps sending: the end is passed on as a half-close,
    /// and the relay goes on until the other side ends too.
    #[tokio::test]
    async fn a_half_close_is_passed_on_and_the_other_way_keeps_flowing() {
        let stats = Stats::default();
        let (mut client, a) = duplex(4096);
        let mut a = Opaque(a);
        let (b, mut server) = duplex(4096);
        let mut b = Opaque(b);
        let relaying = tokio::spawn(async move {
            let activity = Activity::new(&stats);
            relay(
                &mut Opaque(&mut a),
                &mut Opaque(&mut b),
                &activity,
                Vec::new(),
            )
            .await
        });
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut request = Vec::new();
        server.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request");
        server
            .write_all(b"answer after the client's end")
            .await
            .unwrap();
        let mut answer = [0; 29];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer after the client's end");
        assert!(
            !relaying.is_finished(),
            "the relay ended with one side still open"
        );
        server.shutdown().await.unwrap();
        relaying.await.unwrap().unwrap();
    }

    /// Two TCP sockets: the bytes go through a pipe in the kernel, intact both ways with a
    /// receiver that holds back at first, and the pipe is given back when it is over.
    #[tokio::test]
    async fn plain_sockets_are_spliced_intact_and_the_pipe_given_back() {
        async fn pair() -> (TcpStream, TcpStream) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let near = TcpStream::connect(listener.local_addr().unwrap());
            let (near, far) = tokio::join!(near, listener.accept());
            (near.unwrap(), far.unwrap().0)
        }
        let (mut client, mut a) = pair().await;
        let (mut b, mut server) = pair().await;
        let stats = Stats::default();
        let activity = Activity::new(&stats);
        let up = pattern(8 << 20, 3);
        let down = pattern(3 << 20, 5);
        let spare_before = PIPES.with(|pipes| pipes.borrow().len());
        let ends = async {
            let (mut client_read, mut client_write) = client.split();
            let (mut server_read, mut server_write) = server.split();
            // Nothing is read for a while: the pipe fills and waits for the writer.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut at_server = Vec::new();
            let mut at_client = Vec::new();
            let (sent_up, sent_down, got_up, got_down) = tokio::join!(
                async {
                    client_write.write_all(&up).await?;
                    client_write.shutdown().await
                },
                async {
                    server_write.write_all(&down).await?;
                    server_write.shutdown().await
                },
                server_read.read_to_end(&mut at_server),
                client_read.read_to_end(&mut at_client),
            );
            (
                sent_up.and(sent_down).and(got_up).and(got_down),
                at_server,
                at_client,
            )
        };
        let (relayed, (io, at_server, at_client)) =
            tokio::join!(relay(&mut a, &mut b, &activity, Vec::new()), ends);
        relayed.unwrap();
        io.unwrap();
        assert_delivered(&up, &at_server, &down, &at_client);
        assert_eq!(activity.bytes(), (8 << 20, 3 << 20));
        let spare_after = PIPES.with(|pipes| pipes.borrow().len());
        assert!(
            spare_after > spare_before,
            "no pipe was given back ({spare_before} spare before, {spare_after} after)"
        );
    }

    /// A writer that fails ends the relay with its error.
    #[tokio::test]
    async fn a_failing_writer_ends_the_relay_with_its_error() {
        let stats = Stats::default();
        let activity = Activity::new(&stats);
        let (mut client, a) = duplex(4096);
        let mut a = Opaque(a);
        let (b, server) = duplex(4096);
        let mut b = Opaque(b);
        drop(server);
        client.write_all(b"to nobody").await.unwrap();
        let err = relay(
            &mut Opaque(&mut a),
            &mut Opaque(&mut b),
            &activity,
            Vec::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
