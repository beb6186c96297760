//! Accept loop, per-connection SOCKS5 flow and relay.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use mptcp_policy::Transport;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::config::{Auth, ServerConfig};
use crate::connect::{Connector, Outbound, Target};
use crate::error::Error;
use crate::guard::{
    AuthFailures, ConnectionLimits, HostAddresses, LimitHit, Slot, is_local_network,
};
use crate::learned::Learned;
use crate::policy_handle::PolicyHandle;
use crate::registry::{Connection, Connections};
use crate::relay::{self, Activity, Opaque, SUBFLOW_SAMPLE, SubflowsSeen, TcpSide, idle_for};
use crate::resolve::NameResolver;
use crate::socks5::{self, Command, Reply, TargetAddr};
use crate::stats::Stats;
use crate::throttle::LogThrottle;
use crate::upstream::{UpstreamStatus, Upstreams};

/// Pause after an accept error such as EMFILE, so a full fd table does not turn the loop
/// into a busy spin while connections drain.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most one log line per kind of refusal in this interval (with a count of the rest).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Everything a connection task needs, shared by all of them.
#[derive(Debug)]
struct Shared {
    config: ServerConfig,
    policy: PolicyHandle,
    /// [`ServerConfig::never_connect`] and the listeners [`Server::serve`] was given.
    never_connect: ArcSwap<Vec<SocketAddr>>,
    stats: Stats,
    connections: Connections,
    resolver: NameResolver,
    /// The configured upstreams and their health.
    upstreams: Upstreams,
    /// What `auto:NAME` rules learned.
    learned: Arc<Learned>,
    /// Clients that authenticated once while `auth_once` is on (microsocks `-1`).
    authenticated: Mutex<HashSet<IpAddr>>,
    /// The host's own addresses, which destinations are checked against.
    host: HostAddresses,
    /// Open connections, in all and per client.
    limits: Arc<ConnectionLimits>,
    /// Failed password attempts per client, which slow that client down.
    auth_failures: AuthFailures,
    /// One line per interval for each thing an outsider can make happen at will.
    refused_client_log: LogThrottle,
    limit_log: LogThrottle,
    accept_error_log: LogThrottle,
}

impl Shared {
    fn may_skip_auth(&self, client: IpAddr) -> bool {
        self.config.allow_list.contains(&client)
            || self
                .authenticated
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&client)
    }

    fn remember_authenticated(&self, client: IpAddr) {
        if self.config.auth_once {
            self.authenticated
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(client);
        }
    }

    /// Whether `client` may use the proxy at all, as [`ServerConfig::allow_list`] and
    /// [`ServerConfig::allow_public_clients`] say; with `auth`, everyone may try.
    fn admits_client(&self, client: IpAddr) -> bool {
        let config = &self.config;
        if config.auth.is_some() {
            true
        } else if !config.allow_list.is_empty() {
            config.allow_list.contains(&client)
        } else {
            config.allow_public_clients || is_local_network(client)
        }
    }

    /// The client policy and the connection limits; a refusal is logged (throttled).
    fn admit(self: &Arc<Self>, client: SocketAddr) -> Option<Slot> {
        if !self.admits_client(client.ip()) {
            if let Some(held_back) = self.refused_client_log.allow() {
                tracing::warn!(
                    %client,
                    also_refused = held_back,
                    "refused a client from outside the local networks (no authentication is \
                     set: use -u/-P, -w, or allow public clients explicitly)"
                );
            }
            return None;
        }
        match self.limits.admit(client.ip()) {
            Ok(slot) => Some(slot),
            Err(hit) => {
                if let Some(held_back) = self.limit_log.allow() {
                    let (limit, what) = match hit {
                        LimitHit::Total(n) => (n, "connection limit reached"),
                        LimitHit::PerClient(n) => (n, "per-client connection limit reached"),
                    };
                    tracing::warn!(%client, limit, also_refused = held_back, "{what}; closing new connections");
                }
                None
            }
        }
    }
}

/// A SOCKS5 server: its configuration, policy and the state its connections share.
/// [`Server::serve`] runs it on a listener; [`Server::serve_connection`] serves a single
/// client over any byte stream (an in-memory one in tests and fuzzing). Cloning gives
/// another handle to the same server.
///
/// What it shares at run time comes from it, apart from the settings it was built with:
/// [`Server::stats`] and [`Server::connections`].
///
/// ```no_run
/// use mptcp_socks::{Policy, PolicyHandle, Server, ServerConfig};
///
/// # async fn run() -> std::io::Result<()> {
/// let server = Server::new(ServerConfig::default(), PolicyHandle::new(Policy::default()))?;
/// let stats = server.stats().clone();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:1080").await?;
/// server.serve(listener, std::future::pending()).await;
/// println!("{:?}", stats.snapshot());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// A server with `config` that reads its rules from `policy`.
    ///
    /// # Errors
    ///
    /// When the name resolver cannot be set up, or an upstream cannot: a user without a
    /// password, two with one name, TLS without a pin on a host without root certificates.
    pub fn new(config: ServerConfig, policy: PolicyHandle) -> io::Result<Server> {
        let resolver = NameResolver::from_system()?;
        let upstreams = Upstreams::new(&config.upstreams).map_err(io::Error::other)?;
        let learned = Arc::new(Learned::new(config.auto_ttl));
        let limits = Arc::new(ConnectionLimits::new(
            config.max_connections,
            config.max_connections_per_client,
        ));
        Ok(Server {
            shared: Arc::new(Shared {
                never_connect: ArcSwap::from_pointee(config.never_connect.clone()),
                config,
                policy,
                stats: Stats::default(),
                connections: Connections::default(),
                resolver,
                upstreams,
                learned,
                authenticated: Mutex::new(HashSet::new()),
                host: HostAddresses::default(),
                limits,
                auth_failures: AuthFailures::default(),
                refused_client_log: LogThrottle::new(REFUSAL_LOG_INTERVAL),
                limit_log: LogThrottle::new(REFUSAL_LOG_INTERVAL),
                accept_error_log: LogThrottle::new(REFUSAL_LOG_INTERVAL),
            }),
        })
    }

    /// Serves one client that connected from `client` over `stream`: the client policy
    /// and limits, the handshake, the connect step and the relay, as for a client of
    /// [`serve`]. Returns when the connection is over.
    pub async fn serve_connection<S>(&self, stream: S, client: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let client = SocketAddr::new(client.ip().to_canonical(), client.port());
        if let Some(slot) = self.shared.admit(client) {
            handle_client(&self.shared, Opaque(stream), client, false, slot).await;
        }
    }
}

/// Runs a SOCKS5 server on `listener` until `shutdown` completes: [`Server::new`], then
/// [`Server::serve`].
///
/// # Errors
///
/// Only when the name resolver cannot be set up.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    policy: PolicyHandle,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    Server::new(config, policy)?.serve(listener, shutdown).await;
    Ok(())
}

impl Server {
    /// Serves clients on `listener` until `shutdown` completes.
    ///
    /// Each client may CONNECT to an IPv4, IPv6 or domain target; BIND and UDP ASSOCIATE
    /// are answered with "command not supported". The outbound connection is opened as
    /// MPTCP or TCP according to the policy at the moment the request arrives. The
    /// listener's own address is never connected to.
    ///
    /// Clients are admitted as [`ServerConfig`] says (authentication, allow-list, local
    /// networks only by default) within its connection limits; a client refused for either
    /// reason is closed at once, before the greeting is answered.
    ///
    /// When `shutdown` completes the listener is closed at once, connections in flight get
    /// [`ServerConfig::shutdown_grace`] to finish, and whatever is still open then is
    /// dropped. Errors on accepted connections are logged and never end the server;
    /// accept errors (such as EMFILE) are logged and retried.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let shared = &self.shared;
        let grace = shared.config.shutdown_grace;
        if let Ok(addr) = listener.local_addr() {
            // A CONNECT to the proxy itself would let one client multiply its connections.
            shared.never_connect.rcu(|never| {
                let mut never = Vec::clone(never);
                never.push(addr);
                never
            });
            tracing::info!(listen = %addr, "SOCKS5 server listening");
        }

        // Interactive traffic (SSH, TLS handshakes) suffers from Nagle on a relay. Accepted
        // sockets inherit TCP_NODELAY from their listener (on Linux, MPTCP ones too): set
        // once here rather than once per client.
        if let Err(err) = socket2::SockRef::from(&listener).set_tcp_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY on the listener");
        }
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                // Reap finished tasks so the set does not grow with every connection ever made.
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(err) = done
                        && err.is_panic()
                    {
                        tracing::error!(error = %err, "connection task panicked");
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, client)) => {
                        // Clients on a dual-stack listener show up as ::ffff:a.b.c.d.
                        let client = SocketAddr::new(client.ip().to_canonical(), client.port());
                        // Refused clients are dropped here, before a task or a buffer exists.
                        let Some(slot) = shared.admit(client) else { continue };
                        let pac = shared.config.pac;
                        let shared = Arc::clone(shared);
                        // Two kinds of task, so that a plain client's does not carry room
                        // for a TLS session.
                        match shared.config.tls.clone() {
                            None => connections.spawn(async move {
                                handle_client(&shared, stream, client, pac, slot).await;
                            }),
                            Some(tls) => connections.spawn(async move {
                                handle_tls_client(&shared, tls, stream, client, slot).await;
                            }),
                        };
                    }
                    Err(err) => {
                        if let Some(held_back) = shared.accept_error_log.allow() {
                            tracing::warn!(error = %err, also_failed = held_back, "accept failed");
                        }
                        if !is_per_connection(&err) {
                            tokio::select! {
                                () = &mut shutdown => break,
                                () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                            }
                        }
                    }
                },
            }
        }

        drop(listener);
        if !connections.is_empty() {
            tracing::info!(
                open = connections.len(),
                grace = ?grace,
                "shutting down; waiting for open connections"
            );
            let drained = tokio::time::timeout(grace, async {
                while connections.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::info!(
                    dropped = connections.len(),
                    "grace period over; dropping open connections"
                );
                connections.shutdown().await;
            }
        }
    }

    /// The server's counters; clones read the same ones.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The live relayed connections; clones list the same ones.
    pub fn connections(&self) -> &Connections {
        &self.shared.connections
    }

    /// Each configured upstream's health, by name.
    pub fn upstreams(&self) -> Vec<UpstreamStatus> {
        self.shared.upstreams.status()
    }

    /// What `via=auto:NAME` rules learned about destinations.
    pub fn learned(&self) -> &Learned {
        &self.shared.learned
    }
}

/// Errors that concern only the connection being accepted, not the listener: retry at once.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// One admitted client, until its connection ends; `_slot` counts it meanwhile.
/// `pac`: whether a PAC file may be served.
async fn handle_client<S>(shared: &Shared, stream: S, client: SocketAddr, pac: bool, _slot: Slot)
where
    S: AsyncRead + AsyncWrite + TcpSide + Unpin + Send,
{
    let _active = shared.stats.accepted();
    if let Err(err) = serve_client(shared, stream, client, pac).await {
        shared.stats.failed_with(err.reply());
        if err.is_routine() {
            tracing::debug!(%client, error = %err, "client connection ended");
        } else {
            tracing::info!(%client, error = %err, "client connection failed");
        }
    }
}

/// A client of a TLS listener: the TLS handshake, then as [`handle_client`].
async fn handle_tls_client(
    shared: &Shared,
    tls: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    client: SocketAddr,
    slot: Slot,
) {
    // The session's state is large: on the heap, so that the task is no larger than a
    // plain client's.
    let accept = Box::pin(tokio_rustls::TlsAcceptor::from(tls).accept(stream));
    match tokio::time::timeout(shared.config.handshake_timeout, accept).await {
        Ok(Ok(stream)) => handle_client(shared, Box::new(stream), client, false, slot).await,
        Ok(Err(err)) => tracing::debug!(%client, error = %err, "TLS handshake failed"),
        Err(_) => tracing::debug!(%client, "TLS handshake timed out"),
    }
}

async fn serve_client<S>(
    shared: &Shared,
    mut stream: S,
    client: SocketAddr,
    pac: bool,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + TcpSide + Unpin + Send,
{
    // The handshake and the connect step (names resolved, TLS to an upstream) hold several
    // KiB of state: on the heap only while they run, so that a relaying connection's task
    // keeps just what the relay needs.
    let Some(request) = Box::pin(open(shared, &mut stream, client, pac)).await? else {
        tracing::debug!(%client, "served the PAC file");
        return Ok(());
    };
    relay(shared, stream, client, request).await
}

/// A request whose outbound connection is open.
struct Connected {
    /// The target as the client named it.
    target: TargetAddr,
    outbound: Outbound,
    /// What the client sent after its request without waiting for the answer: the first
    /// bytes for the destination.
    early: Vec<u8>,
}

/// Room for what a client sends before it waits for an answer (greeting, credentials and
/// request together are at most 1032 bytes), so the handshake takes as few reads as the
/// client took writes.
const HANDSHAKE_READ: usize = 1024;

/// The handshake and the connect step, answered with a failure reply where they fail.
/// `Ok(None)`: it was a request for the PAC file, answered.
async fn open<S>(
    shared: &Shared,
    stream: &mut S,
    client: SocketAddr,
    pac: bool,
) -> Result<Option<Connected>, Error>
where
    S: AsyncRead + AsyncWrite + TcpSide + Unpin + Send,
{
    let timeout = shared.config.handshake_timeout;
    let mut reader = BufReader::with_capacity(HANDSHAKE_READ, &mut *stream);
    let request = tokio::time::timeout(timeout, handshake(shared, &mut reader, client.ip(), pac))
        .await
        .map_err(|_| Error::HandshakeTimeout(timeout))??;
    let early = reader.buffer().to_vec();
    let Some((command, target_addr)) = request else {
        return Ok(None);
    };

    if let Command::Unsupported(code) = command {
        let err = Error::UnsupportedCommand(code);
        socks5::write_reply(stream, err.reply(), socks5::UNBOUND).await?;
        return Err(err);
    }

    let target = Target::from(&target_addr);
    // Loaded once per connection: a policy stored meanwhile applies to the next one.
    let policy = shared.policy.load();
    let never_connect = shared.never_connect.load();
    let connector = Connector {
        policy: &policy,
        resolver: &shared.resolver,
        config: &shared.config,
        never_connect: &never_connect,
        host: &shared.host,
        upstreams: &shared.upstreams,
        learned: &shared.learned,
    };
    let connecting = Instant::now();
    let connected = connector.connect(&target, &target_addr).await;
    drop(policy);
    match connected {
        Ok(outbound) => {
            shared.stats.connected(outbound.transport);
            shared.stats.connect_took(connecting.elapsed());
            Ok(Some(Connected {
                target: target_addr,
                outbound,
                early,
            }))
        }
        Err(err) => {
            tracing::info!(
                %client,
                target = %target_addr,
                error = %err,
                reply = err.reply().as_u8(),
                "connect failed"
            );
            socks5::write_reply(stream, err.reply(), socks5::UNBOUND).await?;
            Err(err)
        }
    }
}

/// A connected request: registered, answered, relayed until it ends, and logged.
async fn relay<S>(
    shared: &Shared,
    mut stream: S,
    client: SocketAddr,
    request: Connected,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + TcpSide + Unpin + Send,
{
    let Connected {
        target: target_addr,
        outbound,
        early,
    } = request;
    let bound = outbound.socket.local_addr()?;
    let outbound_socket = Arc::clone(&outbound.socket);
    let via = outbound.via.clone();
    let registration = shared.connections.register(
        Connection {
            id: 0,
            client,
            target: target_addr.to_string(),
            remote: outbound.addr,
            local: bound,
            rule: outbound.rule.clone(),
            settings: outbound.settings,
            transport: outbound.transport,
            token: outbound.token,
            via: outbound.via.clone(),
            why_direct: outbound.why_direct.clone(),
            since: SystemTime::now(),
            subflows: Vec::new(),
        },
        Arc::clone(&outbound.socket),
    );
    let rule = outbound
        .rule
        .as_ref()
        .map_or_else(|| "default".to_owned(), ToString::to_string);
    let via_name = via.as_ref().map_or("direct", |name| name.as_str());
    shared.stats.routed(via_name);
    tracing::info!(
        id = registration.id(),
        %client,
        target = %target_addr,
        addr = %outbound.addr,
        rule,
        via = via_name,
        why_direct = outbound.why_direct.as_deref(),
        transport = %outbound.transport,
        "connected"
    );
    let started = Instant::now();
    socks5::write_reply(&mut stream, Reply::Succeeded, bound).await?;
    let mptcp = outbound.transport == Transport::Mptcp;
    let mut seen = SubflowsSeen::default();
    let activity = Activity::new(&shared.stats);
    let ended = {
        let mut outbound_io = outbound.io;
        let relay = relay::relay(&mut stream, &mut outbound_io, &activity, early);
        tokio::pin!(relay);
        let idle = idle_for(&activity, shared.config.idle_timeout);
        tokio::pin!(idle);
        // Only MPTCP connections have subflows to sample (and a timer for it).
        let mut sample = mptcp.then(|| tokio::time::interval(SUBFLOW_SAMPLE));
        loop {
            tokio::select! {
                done = &mut relay => break done.map(|()| None),
                idle = &mut idle => break Ok(Some(idle)),
                () = next_tick(&mut sample) => seen.sample(registration.socket(), false),
            }
        }
    };
    // Subflows come and go (a link fails, another joins), and at the end they are being
    // torn down: the closing line reports every one seen, with the most it carried.
    if mptcp {
        seen.sample(&*outbound_socket, true);
        shared
            .stats
            .subflows_closed(seen.all(), seen.lost, seen.recreated);
    }
    let paths = mptcp.then(|| seen.describe());
    let id = registration.id();
    drop(registration);
    let seconds = format!("{:.2}", started.elapsed().as_secs_f64());
    let (up, down) = activity.bytes();
    let (outcome, idle_seconds, error) = match &ended {
        Ok(None) => ("closed", None, None),
        Ok(Some(idle)) => ("closed: idle timeout", Some(idle.as_secs()), None),
        Err(err) => ("relay ended with an error", None, Some(err)),
    };
    tracing::info!(
        id,
        %client,
        target = %target_addr,
        via = via_name,
        up,
        down,
        %seconds,
        subflows = paths.as_deref(),
        idle_seconds,
        error = error.map(tracing::field::display),
        "{outcome}"
    );
    Ok(())
}

/// Completes at the interval's next tick; never without one.
async fn next_tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Greeting, authentication and request, up to the point where the connect step begins.
/// Failures that the protocol can answer are answered here before the error returns.
/// `Ok(None)`: it was an HTTP request for the PAC file (with `pac`), answered.
async fn handshake<S>(
    shared: &Shared,
    stream: &mut BufReader<&mut S>,
    client: IpAddr,
    pac: bool,
) -> Result<Option<(Command, TargetAddr)>, Error>
where
    S: AsyncRead + AsyncWrite + TcpSide + Unpin,
{
    let mut version = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(stream, &mut version).await?;
    // The PAC file points at the address this client reached (asked only now: most
    // connections are SOCKS).
    let proxy = || {
        let addr = stream.get_ref().tcp()?.local_addr().ok()?;
        Some(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
    };
    if version[0] == b'G'
        && pac
        && let Some(proxy) = proxy()
    {
        crate::pac::answer(stream, proxy).await?;
        return Ok(None);
    }
    let methods = socks5::read_greeting(stream, version[0]).await?;
    let offers = |method| methods.contains(&method);
    let method = match &shared.config.auth {
        None => offers(socks5::NO_AUTH).then_some(socks5::NO_AUTH),
        // No-auth first: an allowed client offering both should not be asked for a
        // password it may not have.
        Some(_) if shared.may_skip_auth(client) && offers(socks5::NO_AUTH) => Some(socks5::NO_AUTH),
        Some(_) => offers(socks5::PASSWORD).then_some(socks5::PASSWORD),
    };
    let Some(method) = method else {
        socks5::write_method(stream, socks5::NO_ACCEPTABLE_METHOD).await?;
        return Err(Error::NoAcceptableAuth(methods));
    };
    socks5::write_method(stream, method).await?;
    if let (socks5::PASSWORD, Some(auth)) = (method, &shared.config.auth) {
        password_auth(shared, auth, stream, client).await?;
    }
    match socks5::read_request(stream).await {
        Ok(request) => Ok(Some(request)),
        Err(Error::Io(err)) => Err(Error::Io(err)),
        Err(err) => {
            socks5::write_reply(stream, err.reply(), socks5::UNBOUND).await?;
            Err(err)
        }
    }
}

/// RFC 1929. A client that failed before waits, longer with each failure, before its
/// attempt is even checked; failures are logged as a summary per client.
async fn password_auth<S>(
    shared: &Shared,
    auth: &Auth,
    stream: &mut S,
    client: IpAddr,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let credentials = match socks5::read_credentials(stream).await {
        Ok(credentials) => credentials,
        Err(Error::Io(err)) => return Err(Error::Io(err)),
        Err(err) => {
            socks5::write_auth_status(stream, false).await?;
            return Err(err);
        }
    };
    let wait = shared.auth_failures.wait_before_attempt(client);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    if auth.matches(&credentials.username, &credentials.password) {
        shared.auth_failures.succeeded(client);
        shared.remember_authenticated(client);
        return socks5::write_auth_status(stream, true).await;
    }
    let user = String::from_utf8_lossy(&credentials.username).into_owned();
    if let Some(summary) = shared.auth_failures.failed(client) {
        tracing::warn!(
            %client,
            ?user,
            failed = summary.new,
            in_a_row = summary.in_a_row,
            next_delay_ms = u64::try_from(summary.next_delay.as_millis()).unwrap_or(u64::MAX),
            "failed password attempts; this client's next attempts are delayed"
        );
    }
    // A non-zero RFC 1929 status; the connection is closed after it.
    socks5::write_auth_status(stream, false).await?;
    Err(Error::AuthFailed { user })
}
