//! Accept loop, per-connection SOCKS5 flow and relay.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use mptcp_policy::{SubflowInfo, Transport};

use fast_socks5::Socks5Command;
use fast_socks5::server::{
    AuthMethodSuccessState, NoAuthentication, PasswordAuthentication, Socks5ServerProtocol,
    StandardAuthentication, StandardAuthenticationStarted, states,
};
use fast_socks5::util::target_addr::TargetAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::config::{Auth, ServerConfig};
use crate::connect::{Target, connect};
use crate::error::Error;
use crate::policy_handle::PolicyHandle;
use crate::registry::Connection;
use crate::resolve::NameResolver;

/// Buffer per relay direction. Measured on this kind of host: 8 KiB buffers cost about a
/// tenth of the throughput of 256 KiB; 64 KiB gets most of the gain at a quarter of the memory.
const RELAY_BUFFER: usize = 64 * 1024;

/// Pause after an accept error such as EMFILE, so a full fd table does not turn the loop
/// into a busy spin while connections drain.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Everything a connection task needs, shared by all of them.
#[derive(Debug)]
struct Shared {
    config: ServerConfig,
    policy: PolicyHandle,
    resolver: NameResolver,
    /// Clients that authenticated once while `auth_once` is on (microsocks `-1`).
    authenticated: Mutex<HashSet<IpAddr>>,
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
}

/// Runs a SOCKS5 server on `listener` until `shutdown` completes.
///
/// Each client may CONNECT to an IPv4, IPv6 or domain target; BIND and UDP ASSOCIATE are
/// answered with "command not supported". The outbound connection is opened as MPTCP or
/// TCP according to the policy in `policy` at the moment the request arrives.
///
/// When `shutdown` completes the listener is closed at once, connections in flight get
/// [`ServerConfig::shutdown_grace`] to finish, and whatever is still open then is dropped.
///
/// # Errors
///
/// Only when the name resolver cannot be set up. Errors on accepted connections are logged
/// and never end the server; accept errors (such as EMFILE) are logged and retried.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    policy: PolicyHandle,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let resolver = NameResolver::from_system()?;
    let grace = config.shutdown_grace;
    let shared = Arc::new(Shared {
        config,
        policy,
        resolver,
        authenticated: Mutex::new(HashSet::new()),
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "SOCKS5 server listening");
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
                    let shared = Arc::clone(&shared);
                    connections.spawn(handle_client(shared, stream, client));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
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
    Ok(())
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

async fn handle_client(shared: Arc<Shared>, stream: TcpStream, client: SocketAddr) {
    let _active = shared.config.stats.accepted();
    // Clients on a dual-stack listener show up as ::ffff:a.b.c.d; the allow-list holds a.b.c.d.
    let client = SocketAddr::new(client.ip().to_canonical(), client.port());
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%client, error = %err, "cannot set TCP_NODELAY on the client socket");
    }
    if let Err(err) = serve_client(&shared, stream, client).await {
        shared.config.stats.failed();
        if err.is_routine() {
            tracing::debug!(%client, error = %err, "client connection ended");
        } else {
            tracing::info!(%client, error = %err, "client connection failed");
        }
    }
}

type Request = (
    Socks5ServerProtocol<TcpStream, states::CommandRead>,
    Socks5Command,
    TargetAddr,
);

async fn serve_client(shared: &Shared, stream: TcpStream, client: SocketAddr) -> Result<(), Error> {
    let timeout = shared.config.handshake_timeout;
    let (proto, command, target_addr) =
        tokio::time::timeout(timeout, handshake(shared, stream, client.ip()))
            .await
            .map_err(|_| Error::HandshakeTimeout(timeout))??;

    if command != Socks5Command::TCPConnect {
        let err = Error::UnsupportedCommand(match command {
            Socks5Command::TCPBind => 0x02,
            _ => 0x03,
        });
        proto.reply_error(&err.reply()).await?;
        return Err(err);
    }

    let target = Target::from(&target_addr);
    // Loaded once per connection: a policy stored meanwhile applies to the next one.
    let policy = shared.policy.load();
    let outbound = match connect(&target, &policy, &shared.resolver, &shared.config).await {
        Ok(outbound) => outbound,
        Err(err) => {
            tracing::info!(
                %client,
                target = %target_addr,
                error = %err,
                reply = err.reply().as_u8(),
                "connect failed"
            );
            proto.reply_error(&err.reply()).await?;
            return Err(err);
        }
    };
    drop(policy);

    shared.config.stats.connected(outbound.transport);
    let bound = outbound.stream.local_addr()?;
    let registration = shared.config.connections.register(
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
            since: SystemTime::now(),
            subflows: Vec::new(),
        },
        &outbound.stream,
    )?;
    let rule = outbound
        .rule
        .as_ref()
        .map_or_else(|| "default".to_owned(), ToString::to_string);
    tracing::info!(
        id = registration.id(),
        %client,
        target = %target_addr,
        addr = %outbound.addr,
        rule,
        transport = %outbound.transport,
        "connected"
    );
    let started = Instant::now();
    let mut inbound = proto.reply_success(bound).await?;
    let mut outbound_stream = outbound.stream;
    let mptcp = outbound.transport == Transport::Mptcp;
    let mut seen = SubflowsSeen::default();
    let relayed = {
        let relay = tokio::io::copy_bidirectional_with_sizes(
            &mut inbound,
            &mut outbound_stream,
            RELAY_BUFFER,
            RELAY_BUFFER,
        );
        tokio::pin!(relay);
        let mut sample = tokio::time::interval(SUBFLOW_SAMPLE);
        loop {
            tokio::select! {
                done = &mut relay => break done,
                _ = sample.tick(), if mptcp => seen.sample(registration.socket()),
            }
        }
    };
    // Subflows come and go (a link fails, another joins), and at the end they are being
    // torn down: the closing line reports every one seen, with the most it carried.
    if mptcp {
        seen.sample(&outbound_stream);
    }
    let paths = mptcp.then(|| seen.describe());
    let id = registration.id();
    drop(registration);
    let seconds = format!("{:.2}", started.elapsed().as_secs_f64());
    match relayed {
        Ok((up, down)) => tracing::info!(
            id,
            %client,
            target = %target_addr,
            up,
            down,
            %seconds,
            subflows = paths.as_deref(),
            "closed"
        ),
        Err(err) => tracing::info!(
            id,
            %client,
            target = %target_addr,
            %seconds,
            subflows = paths.as_deref(),
            error = %err,
            "relay ended with an error"
        ),
    }
    Ok(())
}

/// How often a relayed MPTCP connection's subflows are read for its closing log line.
const SUBFLOW_SAMPLE: Duration = Duration::from_secs(1);

/// Every subflow a connection had, with the most bytes each was seen to carry.
#[derive(Debug, Default)]
struct SubflowsSeen(Vec<SubflowInfo>);

impl SubflowsSeen {
    fn sample(&mut self, socket: &impl std::os::fd::AsFd) {
        let Ok(Some(now)) = mptcp_policy::subflows(socket) else {
            return;
        };
        for subflow in now {
            let same =
                |s: &&mut SubflowInfo| s.local == subflow.local && s.remote == subflow.remote;
            match self.0.iter_mut().find(same) {
                Some(known) => {
                    known.bytes_acked = known.bytes_acked.max(subflow.bytes_acked);
                    known.bytes_received = known.bytes_received.max(subflow.bytes_received);
                }
                None => self.0.push(subflow),
            }
        }
    }

    /// `10.0.1.1->10.0.1.2:80 8.1 MB, 10.0.2.1->10.0.1.2:80 8.4 MB`: what each subflow
    /// carried, both directions together.
    fn describe(&self) -> String {
        self.0
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

/// Greeting, authentication and request, up to the point where the connect step begins.
async fn handshake(shared: &Shared, stream: TcpStream, client: IpAddr) -> Result<Request, Error> {
    let proto = Socks5ServerProtocol::start(stream);
    let authenticated = match &shared.config.auth {
        None => proto
            .negotiate_auth(&[NoAuthentication])
            .await?
            .finish_auth(),
        Some(auth) => {
            let methods = if shared.may_skip_auth(client) {
                // No-auth first: an allowed client offering both should not be asked for a
                // password it may not have.
                ALLOWED_METHODS
            } else {
                PASSWORD_ONLY
            };
            match proto.negotiate_auth(methods).await? {
                StandardAuthenticationStarted::NoAuthentication(started) => started.finish_auth(),
                StandardAuthenticationStarted::PasswordAuthentication(started) => {
                    password_auth(shared, auth, started, client).await?
                }
            }
        }
    };
    Ok(authenticated.read_command().await?)
}

const ALLOWED_METHODS: &[StandardAuthentication] = &[
    StandardAuthentication::NoAuthentication(NoAuthentication),
    StandardAuthentication::PasswordAuthentication(PasswordAuthentication),
];

const PASSWORD_ONLY: &[StandardAuthentication] = &[StandardAuthentication::PasswordAuthentication(
    PasswordAuthentication,
)];

async fn password_auth(
    shared: &Shared,
    auth: &Auth,
    started: fast_socks5::server::PasswordAuthenticationStarted<TcpStream>,
    client: IpAddr,
) -> Result<Socks5ServerProtocol<TcpStream, states::Authenticated>, Error> {
    let (user, password, received) = started.read_username_password().await?;
    if auth.matches(&user, &password) {
        shared.remember_authenticated(client);
        Ok(received.accept().await?.finish_auth())
    } else {
        // reject() answers with a non-zero RFC 1929 status; dropping the stream closes it.
        received.reject().await?;
        Err(Error::AuthFailed { user })
    }
}
