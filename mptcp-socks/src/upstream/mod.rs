//! Chaining through an upstream SOCKS5 server (the aggregation server on a VPS): the
//! parsed `--upstream NAME=URL` ([`url`]), the pipelined client handshake
//! ([`handshake`]), TLS ([`tls`]), and here each upstream's connection step and health.
//!
//! A rule's MPTCP settings apply to the box->upstream leg, which is where the uplinks
//! are. When an upstream fails (unreachable, TLS, authentication, not SOCKS5) the
//! connection goes direct, the failure is logged (once per interval) and kept for
//! `/health`, and the upstream is not tried again for a while (1 s, doubling up to a
//! minute), so an outage costs the user one connect timeout rather than one per
//! connection.

mod handshake;
mod tls;
mod url;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use mptcp_policy::{Settings, Transport, UpstreamName};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::ServerConfig;
use crate::connect::{attempt, token};
use crate::relay::{OutboundIo, SharedStream};
use crate::resolve::NameResolver;
use crate::socks5::{Reply, TargetAddr};
use crate::throttle::LogThrottle;

pub use tls::{Fingerprint, server_config as tls_server_config};
pub use url::{Upstream, UpstreamError, UpstreamHost};

/// Waits after the first failure; doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// At most one warning per upstream in this interval (with a count of the rest).
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// The upstream spends up to its own connect timeout on the target; its reply may take
/// this much longer than ours before the target counts as timed out.
const EXCHANGE_MARGIN: Duration = Duration::from_secs(5);

/// What went wrong with an upstream, by kind: what an operator does about it differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// Its name did not resolve, or the connect was refused, unreachable or timed out.
    Unreachable,
    /// The TLS handshake failed: a certificate that does not match the pin or the system
    /// roots, or no TLS at all on the other end.
    Tls,
    /// It refused the credentials, or wants credentials that were not given.
    Authentication,
    /// It answered something that is not SOCKS5, or closed during the handshake.
    Protocol,
}

impl FailureKind {
    /// `unreachable`, `tls`, `authentication` or `protocol`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Unreachable => "unreachable",
            FailureKind::Tls => "tls",
            FailureKind::Authentication => "authentication",
            FailureKind::Protocol => "protocol",
        }
    }
}

/// An upstream failure: its kind and the message for logs and `/health` (never a
/// password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFailure {
    /// The kind.
    pub kind: FailureKind,
    /// What happened.
    pub message: String,
}

/// One upstream's health as of now, for `/health`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpstreamStatus {
    /// Its name.
    pub name: UpstreamName,
    /// Its URL without the password.
    pub url: String,
    /// Connections it carried (that it accepted and connected).
    pub connections: u64,
    /// Of those over TLS, how many resumed an earlier session (no full handshake).
    pub resumed_sessions: u64,
    /// When it last accepted a connection.
    pub last_success: Option<SystemTime>,
    /// Its last failure, if it failed since it last worked.
    pub failure: Option<UpstreamFailure>,
    /// Failures in a row.
    pub failures_in_a_row: u32,
    /// While it is not being tried (after failures): how long until the next try.
    pub retry_in: Option<Duration>,
}

impl UpstreamStatus {
    /// `up` (it worked last), `down` (it failed last) or `unknown` (not tried yet).
    #[must_use]
    pub fn state(&self) -> &'static str {
        match (&self.failure, self.last_success) {
            (Some(_), _) => "down",
            (None, Some(_)) => "up",
            (None, None) => "unknown",
        }
    }
}

#[derive(Debug, Default)]
struct Health {
    connections: u64,
    resumed_sessions: u64,
    last_success: Option<SystemTime>,
    failure: Option<UpstreamFailure>,
    failures_in_a_row: u32,
    retry_at: Option<Instant>,
}

/// A configured upstream and what the server knows about it.
pub(crate) struct Link {
    upstream: Upstream,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    health: Mutex<Health>,
    failure_log: LogThrottle,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("upstream", &self.upstream)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

/// An established connection through an upstream.
#[derive(Debug)]
pub(crate) struct Chained {
    pub(crate) io: OutboundIo,
    pub(crate) socket: Arc<TcpStream>,
    /// The upstream's address.
    pub(crate) addr: SocketAddr,
    pub(crate) transport: Transport,
    pub(crate) token: Option<u32>,
    /// Whether the TLS session was resumed (no full handshake).
    pub(crate) resumed: bool,
}

/// Why a connection through an upstream did not come about.
#[derive(Debug)]
pub(crate) enum ViaError {
    /// The upstream works but could not reach the target: its reply.
    Target(Reply),
    /// The upstream failed (go direct).
    Upstream(UpstreamFailure),
}

impl Link {
    fn new(upstream: Upstream) -> Result<Link, String> {
        if upstream.password_missing() {
            return Err(format!(
                "upstream {} names a user but no password",
                upstream.name
            ));
        }
        let tls = if upstream.tls {
            let config = tls::client_config(upstream.pin)
                .map_err(|e| format!("upstream {}: {e}", upstream.name))?;
            let name = tls::server_name(&upstream.host)
                .map_err(|e| format!("upstream {}: {e}", upstream.name))?;
            Some((TlsConnector::from(config), name))
        } else {
            None
        };
        Ok(Link {
            upstream,
            tls,
            health: Mutex::new(Health::default()),
            failure_log: LogThrottle::new(FAILURE_LOG_INTERVAL),
        })
    }

    pub(crate) fn name(&self) -> &UpstreamName {
        &self.upstream.name
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether to try it now: not while it is backing off after failures.
    pub(crate) fn available(&self) -> bool {
        self.health().retry_at.is_none_or(|at| Instant::now() >= at)
    }

    fn succeeded(&self, resumed: bool) {
        let recovered = {
            let mut health = self.health();
            health.connections += 1;
            health.resumed_sessions += u64::from(resumed);
            health.last_success = Some(SystemTime::now());
            health.retry_at = None;
            health.failures_in_a_row = 0;
            health.failure.take()
        };
        if let Some(failure) = recovered {
            tracing::info!(
                upstream = %self.upstream.name,
                was = failure.kind.as_str(),
                "upstream works again"
            );
        }
    }

    fn failed(&self, failure: &UpstreamFailure) {
        let (in_a_row, backoff) = {
            let mut health = self.health();
            health.failures_in_a_row = health.failures_in_a_row.saturating_add(1);
            let doublings = (health.failures_in_a_row - 1).min(6);
            let backoff = (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF);
            health.retry_at = Some(Instant::now() + backoff);
            health.failure = Some(failure.clone());
            (health.failures_in_a_row, backoff)
        };
        if let Some(held_back) = self.failure_log.allow() {
            tracing::warn!(
                upstream = %self.upstream,
                kind = failure.kind.as_str(),
                error = %failure.message,
                failures_in_a_row = in_a_row,
                also_failed = held_back,
                retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                "upstream failed; connections go direct meanwhile"
            );
        }
    }

    fn status(&self) -> UpstreamStatus {
        let health = self.health();
        UpstreamStatus {
            name: self.upstream.name.clone(),
            url: self.upstream.to_string(),
            connections: health.connections,
            resumed_sessions: health.resumed_sessions,
            last_success: health.last_success,
            failure: health.failure.clone(),
            failures_in_a_row: health.failures_in_a_row,
            retry_in: health
                .retry_at
                .map(|at| at.saturating_duration_since(Instant::now()))
                .filter(|left| !left.is_zero()),
        }
    }

    /// Opens the box->upstream leg with `settings` (MPTCP over the uplinks), then TLS if
    /// configured, then the pipelined SOCKS exchange for `target`; records the outcome.
    pub(crate) async fn connect(
        &self,
        target: &TargetAddr,
        settings: &Settings,
        config: &ServerConfig,
        resolver: &NameResolver,
    ) -> Result<Chained, ViaError> {
        let outcome = self.try_connect(target, settings, config, resolver).await;
        match &outcome {
            Ok(chained) => self.succeeded(chained.resumed),
            Err(ViaError::Target(_)) => self.succeeded(false),
            Err(ViaError::Upstream(failure)) => self.failed(failure),
        }
        outcome
    }

    async fn try_connect(
        &self,
        target: &TargetAddr,
        settings: &Settings,
        config: &ServerConfig,
        resolver: &NameResolver,
    ) -> Result<Chained, ViaError> {
        let fail = |kind, message: String| ViaError::Upstream(UpstreamFailure { kind, message });
        let port = self.upstream.port;
        let addrs: Vec<IpAddr> = match &self.upstream.host {
            UpstreamHost::Ip(ip) => vec![*ip],
            UpstreamHost::Name(name) => resolver
                .lookup(name, config.connect_timeout)
                .await
                .map_err(|e| fail(FailureKind::Unreachable, e.to_string()))?,
        };
        let mut last = None;
        let mut connected = None;
        for ip in addrs.into_iter().take(config.max_connect_attempts.max(1)) {
            let addr = SocketAddr::new(ip, port);
            match attempt(addr, settings, config.bind_addr, config.connect_timeout).await {
                Ok((stream, opened)) => {
                    connected = Some((stream, opened, addr));
                    break;
                }
                Err(err) => last = Some(err.to_string()),
            }
        }
        let Some((stream, opened, addr)) = connected else {
            return Err(fail(
                FailureKind::Unreachable,
                last.unwrap_or_else(|| "no address".to_owned()),
            ));
        };
        let transport = mptcp_policy::transport(&stream, opened);
        let token = token(&stream, transport);
        let socket = Arc::new(stream);
        let plain = SharedStream(Arc::clone(&socket));
        // TLS and the answers to greeting and password: the upstream's own part.
        let budget = config.connect_timeout;
        let timed_out = || {
            fail(
                FailureKind::Protocol,
                format!("no answer to the SOCKS greeting within {budget:?}"),
            )
        };
        let accepted = async {
            let (mut io, resumed) = match &self.tls {
                None => (OutboundIo::Plain(plain), false),
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), plain)
                        .await
                        .map_err(|e| fail(FailureKind::Tls, tls_message(&e)))?;
                    let resumed =
                        tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                    (OutboundIo::Tls(Box::new(tls)), resumed)
                }
            };
            handshake::start(&mut io, self.upstream.auth.as_ref(), target)
                .await
                .map_err(|e| fail(handshake_failure_kind(&e), e.to_string()))?;
            Ok((io, resumed))
        };
        let (mut io, resumed) = tokio::time::timeout(budget, accepted)
            .await
            .map_err(|_| timed_out())??;
        // Then its connect to the target, which may take its own connect timeout or
        // longer: running out of time here is the target's failure, not the upstream's.
        let target_budget = config.connect_timeout + EXCHANGE_MARGIN;
        match tokio::time::timeout(target_budget, handshake::connect_reply(&mut io)).await {
            Err(_) => return Err(ViaError::Target(Reply::TtlExpired)),
            Ok(Err(e)) => return Err(fail(handshake_failure_kind(&e), e.to_string())),
            Ok(Ok(Err(reply))) => return Err(ViaError::Target(reply)),
            Ok(Ok(Ok(_bound))) => {}
        }
        Ok(Chained {
            io,
            socket,
            addr,
            transport,
            token,
            resumed,
        })
    }
}

fn handshake_failure_kind(e: &handshake::HandshakeError) -> FailureKind {
    match e {
        handshake::HandshakeError::NoAcceptableMethod { .. }
        | handshake::HandshakeError::AuthRefused(_) => FailureKind::Authentication,
        _ => FailureKind::Protocol,
    }
}

/// A TLS error as an operator needs it: the pin mismatch or certificate problem itself.
fn tls_message(err: &std::io::Error) -> String {
    let rustls = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls {
        // rustls shows its `Other` errors with Debug; the pin mismatch reads better as is.
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            format!("TLS handshake failed: {}", other.0)
        }
        Some(inner) => format!("TLS handshake failed: {inner}"),
        None => format!("TLS handshake failed: {err}"),
    }
}

/// The configured upstreams by name.
#[derive(Debug, Default)]
pub(crate) struct Upstreams(HashMap<UpstreamName, Arc<Link>>);

impl Upstreams {
    /// # Errors
    /// An upstream without its password, two with one name, or a TLS one that cannot be
    /// set up (no system roots and no pin).
    pub(crate) fn new(upstreams: &[Upstream]) -> Result<Upstreams, String> {
        let mut links = HashMap::new();
        for upstream in upstreams {
            let name = upstream.name.clone();
            if links
                .insert(name.clone(), Arc::new(Link::new(upstream.clone())?))
                .is_some()
            {
                return Err(format!("two upstreams are named {name}"));
            }
        }
        Ok(Upstreams(links))
    }

    pub(crate) fn get(&self, name: &UpstreamName) -> Option<&Arc<Link>> {
        self.0.get(name)
    }

    /// Every upstream's status, by name.
    pub(crate) fn status(&self) -> Vec<UpstreamStatus> {
        let mut all: Vec<UpstreamStatus> = self.0.values().map(|link| link.status()).collect();
        all.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        all
    }
}
