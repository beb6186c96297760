//! Serving the routes on a socket: one HTTP/1.1 connection per accepted stream, with the
//! limits that keep a slow or hostile client from holding the API.
//!
//! warp's own server has neither a header timeout nor a connection cap, so each accepted
//! stream is served here with hyper's HTTP/1 connection and `warp::service(routes)`.
//!
//! At the cap, a new connection is still accepted: the open connection that has waited
//! longest for a complete request (slowloris clients, idle keep-alives) is closed to make
//! room. Refusing to accept instead would let whoever holds the cap keep the API down;
//! this way a real request, which sends its header at once, is served. Only when every
//! open connection is in the middle of a request is the new one closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};
use warp::Filter;
use warp::reply::Response;

/// What one client may take of the API. The defaults are those of `mptcp-socksd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// From the connection's start, or from the end of its previous answer, until the
    /// request header is complete. Also the keep-alive idle timeout: an idle connection
    /// is closed when it passes.
    pub header_timeout: Duration,
    /// For the whole request body, once the header is in (408 after it).
    pub body_timeout: Duration,
    /// Connections open at once; see the module docs for what happens at the cap.
    pub max_connections: usize,
}

impl ApiLimits {
    /// 10 s for the header, 10 s for the body, 64 connections.
    pub const DEFAULT: ApiLimits = ApiLimits {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        max_connections: 64,
    };
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits::DEFAULT
    }
}

/// A listener the API can be served on.
pub(super) trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        tokio::net::TcpListener::poll_accept(self, cx).map_ok(|(stream, _)| stream)
    }
}

/// The Unix socket while it is served, with the file that is removed when it is dropped.
pub(super) struct UnixAccept {
    pub(super) listener: tokio::net::UnixListener,
    pub(super) _file: SocketFile,
}

impl Accept for UnixAccept {
    type Io = tokio::net::UnixStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        self.listener.poll_accept(cx).map_ok(|(stream, _)| stream)
    }
}

/// Accepts on `listener` until `shutdown` completes, then stops accepting (for a Unix
/// socket, removes its file), lets the requests in flight finish and closes idle
/// connections.
pub(super) async fn serve<L, F>(
    listener: L,
    routes: F,
    limits: ApiLimits,
    shutdown: impl Future<Output = ()> + Send,
) where
    L: Accept,
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let slots = Slots::new(limits.max_connections);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    let mut accept_errors = Throttle::new(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = poll_fn(|cx| listener.poll_accept(cx)) => accepted,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(err) => {
                // EMFILE and the like: the condition lasts, so back off instead of
                // spinning, and log it once in a while rather than per attempt.
                if let Some(suppressed) = accept_errors.allow() {
                    tracing::warn!(suppressed, "REST API cannot accept a connection: {err}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = slots.admit() else {
            // Every slot is busy with a request: this one is closed unanswered.
            continue;
        };
        tokio::spawn(serve_connection(
            stream,
            slot,
            routes.clone(),
            limits.header_timeout,
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let mut live = slots.live.subscribe();
    let _ = live.wait_for(|n| *n == 0).await;
}

async fn serve_connection<I, F>(
    io: I,
    slot: Slot,
    routes: F,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let slot = Arc::new(slot);
    let close = Arc::clone(&slot.close);
    let inner = TowerToHyperService::new(warp::service(routes));
    let service = {
        let slot = Arc::clone(&slot);
        hyper::service::service_fn(move |request| {
            // The header is complete: this connection is not idle until it has answered.
            slot.set_waiting(false);
            let answer = inner.call(request);
            let slot = Arc::clone(&slot);
            async move {
                let answer = answer.await;
                slot.set_waiting(true);
                answer
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let mut connection = pin!(builder.serve_connection(TokioIo::new(io), service));
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                tracing::debug!("REST API connection closed: {err}");
            }
            return;
        }
        // Evicted at the cap: dropping the connection closes the socket.
        () = close.notified() => return,
        _ = stop.wait_for(|stop| *stop) => {}
    }
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        _ = connection => {}
        () = close.notified() => {}
    }
}

/// The open connections, and whether each waits for a request (and since when).
struct Slots {
    max: usize,
    inner: Mutex<SlotsInner>,
    /// Connection tasks still running, evicted ones included: shutdown waits for zero.
    live: watch::Sender<usize>,
}

struct SlotsInner {
    next_id: u64,
    open: HashMap<u64, SlotState>,
    /// Log the cap at most once a minute: a slowloris client hits it per connection.
    at_cap: Throttle,
}

struct SlotState {
    /// `Some` while the connection waits for a complete request header: since when.
    waiting_since: Option<Instant>,
    close: Arc<Notify>,
}

/// One connection's place among the open ones; given up when dropped.
struct Slot {
    id: u64,
    slots: Arc<Slots>,
    close: Arc<Notify>,
}

impl Slots {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Slots {
            max: max.max(1),
            inner: Mutex::new(SlotsInner {
                next_id: 0,
                open: HashMap::new(),
                at_cap: Throttle::new(Duration::from_secs(60)),
            }),
            live: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection; at the cap, made by closing the connection that has
    /// waited longest for a request. `None` if every open connection is busy answering.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut inner = self.lock();
        if inner.open.len() >= self.max {
            let oldest = inner
                .open
                .iter()
                .filter_map(|(id, state)| state.waiting_since.map(|since| (since, *id)))
                .min();
            let log = inner.at_cap.allow();
            if let Some(suppressed) = log {
                tracing::warn!(
                    max = self.max,
                    suppressed,
                    "REST API connection cap reached: closing the connection that has waited \
                     longest for a request"
                );
            }
            let (_, id) = oldest?;
            if let Some(evicted) = inner.open.remove(&id) {
                evicted.close.notify_one();
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let close = Arc::new(Notify::new());
        inner.open.insert(
            id,
            SlotState {
                waiting_since: Some(Instant::now()),
                close: Arc::clone(&close),
            },
        );
        drop(inner);
        self.live.send_modify(|n| *n += 1);
        Some(Slot {
            id,
            slots: Arc::clone(self),
            close,
        })
    }
}

impl Slot {
    fn set_waiting(&self, waiting: bool) {
        if let Some(state) = self.slots.lock().open.get_mut(&self.id) {
            state.waiting_since = waiting.then(Instant::now);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().open.remove(&self.id);
        self.slots.live.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Lets an event be logged at most once per interval.
struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Throttle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(events not logged since the last line)` if this one may be logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// A Unix socket for the API, bound by [`UnixApiSocket::bind`]; serve it with
/// [`super::Api::serve_unix`]. Its file is removed when the API stops (or this is dropped).
#[derive(Debug)]
pub struct UnixApiSocket {
    pub(super) listener: std::os::unix::net::UnixListener,
    pub(super) file: SocketFile,
}

impl UnixApiSocket {
    /// Creates the socket at `path`, readable and writable by this user only (mode
    /// 0600): the file's mode is what keeps other local users out. A stale socket (no
    /// process listening on it) is replaced.
    ///
    /// The socket is bound in a private directory next to `path`, given its mode there
    /// and then renamed into place, so it is never reachable with a wider mode.
    ///
    /// # Errors
    /// `path` exists and is not a socket (it is not touched), another process listens
    /// on it, or the socket cannot be created there.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixApiSocket> {
        let path = path.as_ref();
        let failed =
            |err: io::Error, what: &str| io::Error::new(err.kind(), format!("{what}: {err}"));
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("another process is listening on {}", path.display()),
                        ));
                    }
                    // Nobody listens: a leftover of a daemon that did not exit cleanly.
                    Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(err) => {
                        return Err(failed(err, &format!("cannot probe {}", path.display())));
                    }
                }
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; refusing to replace it",
                        path.display()
                    ),
                ));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(failed(err, &format!("cannot inspect {}", path.display()))),
        }
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        // Short names: a socket path is limited to 107 bytes.
        let private = tempfile::Builder::new()
            .prefix(".api")
            .tempdir_in(parent)
            .map_err(|err| {
                failed(
                    err,
                    &format!("cannot create a socket in {}", parent.display()),
                )
            })?;
        let staged = private.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&staged).map_err(|err| {
            failed(
                err,
                &format!("cannot create a socket in {}", parent.display()),
            )
        })?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(|err| failed(err, "cannot set the socket's mode"))?;
        std::fs::rename(&staged, path)
            .map_err(|err| failed(err, &format!("cannot create {}", path.display())))?;
        let meta = std::fs::symlink_metadata(path)
            .map_err(|err| failed(err, &format!("cannot inspect {}", path.display())))?;
        listener.set_nonblocking(true)?;
        Ok(UnixApiSocket {
            listener,
            file: SocketFile {
                path: path.to_owned(),
                identity: (meta.dev(), meta.ino()),
            },
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

/// The socket's file, removed on drop if it is still the one created (not a socket that
/// a later daemon put in its place).
#[derive(Debug)]
pub(super) struct SocketFile {
    pub(super) path: PathBuf,
    /// Device and inode.
    identity: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_line_through_per_interval() {
        let mut throttle = Throttle::new(Duration::from_secs(3600));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        throttle.last = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(throttle.allow(), Some(2));
    }

    #[test]
    fn at_the_cap_the_longest_waiting_connection_makes_room() {
        let slots = Slots::new(2);
        let first = slots.admit().expect("room");
        let second = slots.admit().expect("room");
        // `first` is answering a request; `second` waits for one.
        first.set_waiting(false);
        let third = slots.admit().expect("room made");
        assert!(slots.lock().open.contains_key(&first.id));
        assert!(!slots.lock().open.contains_key(&second.id), "evicted");
        // Both open ones busy: no room.
        third.set_waiting(false);
        assert!(slots.admit().is_none());
        assert_eq!(*slots.live.borrow(), 3, "the evicted task still runs");
        drop(second);
        drop(first);
        drop(third);
        assert_eq!(*slots.live.borrow(), 0);
        assert!(slots.lock().open.is_empty());
    }
}
