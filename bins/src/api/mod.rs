//! The REST API that edits the policy and its rule file at runtime, and shows what takes
//! effect on this host.
//!
//! | Method and path             | Does                                                       |
//! |-----------------------------|------------------------------------------------------------|
//! | `GET /rules`                | all rules, in file order, each marked in effect or not     |
//! | `POST /rules`               | create (201) or replace (200) the rule for the body's `ip` |
//! | `GET /rules/{destination}`  | one rule (404 if none)                                     |
//! | `PUT /rules/{destination}`  | create (201) or replace (200); the body may omit `ip`      |
//! | `DELETE /rules/{destination}` | remove (204; 404 if none)                                |
//! | `GET /capabilities`         | kernel flavour, MPTCP on/off, path-manager mode, schedulers, local addresses |
//! | `GET /connections`          | the live relayed connections with their subflows           |
//! | `GET /health`               | status, rule count, rule file, last reload error, upstreams |
//! | `GET /learned`              | what `via=auto:NAME` rules learned: per address, MPTCP or not |
//! | `DELETE /learned`           | forget it (204), so the next connections check again       |
//! | `GET /metrics`              | counters in the Prometheus (OpenMetrics) text format       |
//! | `GET /doctor`               | the doctor's findings on this host (as `mptcpctl doctor --json`) |
//! | `GET /`                     | the web page (and its `/app.js`, `/app.css`; no token)     |
//!
//! `{destination}` is the rule's first field: an address, a CIDR prefix, a name, a wildcard
//! (`*.example.com`) or `*`. It is percent-decoded, and a `/` may be sent as is or as
//! `%2F`: `/rules/10.0.0.0/8` and `/rules/10.0.0.0%2F8` are the same rule.
//!
//! The request body is the seed's JSON, accepted verbatim:
//! `{"enable": "0|1", "ip": "...", "path_manager": "...", "scheduler": "..."}`.
//! `enable` may also be `true`/`false` or the numbers `0`/`1`; `scheduler` and
//! `path_manager` default to `"default"` when omitted (or `null`). Unknown fields are
//! refused (400), so that a misspelt `"schedular"` does not silently fall back to the
//! default. The values go through [`Rule::from_fields`], the rule file's own parser.
//! Responses use the same keys, with `enable` as a boolean, plus `in_effect` and, when it
//! is false, `not_in_effect`: the reasons, each naming the fix where there is one.
//!
//! A rule this host can never carry out is refused (422): a scheduler the kernel does not
//! offer (`net.mptcp.available_schedulers`; the message names those it does), `binder`
//! on upstream Linux, or a `via` naming an upstream the daemon was not started with. A rule that a flag or a sysctl would make work (say `fullmesh`
//! without `--path-manager userspace`) is stored and reported as not in effect. The rule
//! file is not held to this: a file written for another host still loads, with a warning.
//!
//! Every error is JSON, `{"error": "..."}` (plus `"field"` when one field is at fault); the
//! statuses are listed, in one place, on `ErrorKind` (`api/error.rs`).
//!
//! What a request must be, checked in this order (see the README's REST API section):
//! - `Host`: on a TCP listener, one of the addresses the API listens on (its IP literal
//!   with the port, IPv6 in brackets, and `localhost:PORT` for a loopback listener; any IP
//!   literal with the port for an unspecified one). A web page that got its name to
//!   resolve to the API's address (DNS rebinding) sends its own name and is refused. Not
//!   checked on a Unix socket.
//! - The token, when one is set: `Authorization: Bearer <token>` on every route. A wrong
//!   token is always refused; without any `Authorization`, `GET /health` answers only
//!   `{"status": "ok"}` (for liveness checks), everything else is refused.
//! - A body only on `POST` and `PUT`, and only `Content-Type: application/json`
//!   (parameters such as `; charset=utf-8` allowed): a browser cannot send that type
//!   across origins without asking first, so a page cannot forge a rule change (CSRF).
//!
//! [`Api::serve`] also bounds how long a client may take and how many connections it may
//! hold: see [`ApiLimits`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use mptcp_policy::UpstreamName;
use mptcp_policy::{Rule, limitations};
use mptcp_socks::Server;
use warp::Filter;
use warp::reply::Response;

use crate::host::Host;
use crate::store::RuleStore;

mod auth;
mod body;
mod error;
mod handlers;
mod metrics;
mod page;
mod server;
mod wire;

use auth::{AcceptedHosts, access, check_host, require_token};
use body::limited_body;
use handlers::{
    capabilities_handler, connections_handler, doctor_handler, health_handler, learned_handler,
    metrics_handler, rules_handler,
};
use page::page_handler;

pub use body::BODY_LIMIT;
pub use server::{ApiLimits, UnixApiSocket};
pub use wire::{
    Capabilities, ConnectionView, DESTINATION_ESCAPES, Health, LearnedView, LocalAddressView,
    RuleRequest, RuleView, SubflowView, UpstreamFailureView, UpstreamView, rule_location,
    rule_path,
};

/// A condition `GET /health` asks about: `Some(problem)` while it degrades the daemon.
pub type HealthCheck = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The REST API: the rule store, the host it judges rules against, the SOCKS server
/// whose connections, upstreams and learned answers it shows, and the token it requires.
/// Cheap to clone.
///
/// ```no_run
/// # async fn daemon(store: mptcp_socksd::RuleStore, listener: tokio::net::TcpListener) {
/// use mptcp_policy::PmMode;
/// use mptcp_socks::{Server, ServerConfig};
/// use mptcp_socksd::{Api, Host, LocalAddresses};
///
/// let server = Server::new(ServerConfig::default(), store.handle().clone()).unwrap();
/// let inventory = LocalAddresses::default(); // refreshed from `ip mptcp endpoint`
/// Api::new(store)
///     .token(Some("secret".into()))
///     .host(Host::new(PmMode::InKernel).local_addresses(inventory))
///     .server(server) // its connections, upstreams and what it learned
///     .serve(listener, std::future::pending())
///     .await;
/// # }
/// ```
#[derive(Clone)]
pub struct Api {
    store: RuleStore,
    /// `None`: every request is authorized.
    token: Option<Arc<str>>,
    host: Host,
    /// `None`: no connections, no upstreams, nothing learned.
    server: Option<Server>,
    /// What else degrades the daemon, asked at each `GET /health`.
    checks: Vec<HealthCheck>,
    /// The `Host` values accepted; `None`: not checked (a Unix socket, or routes used
    /// without a listener).
    accepted_hosts: Option<Arc<AcceptedHosts>>,
    limits: ApiLimits,
}

// The token must never end up in a log line.
impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("store", &self.store)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("host", &self.host)
            .field("server", &self.server.is_some())
            .field("checks", &self.checks.len())
            .field("accepted_hosts", &self.accepted_hosts)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Api {
    /// The API over `store`, without a token, judging rules against this host probed live
    /// with the in-kernel path manager and an empty address inventory, without a SOCKS
    /// server (no connections, no upstreams), with the default [`ApiLimits`].
    pub fn new(store: RuleStore) -> Self {
        Api {
            store,
            token: None,
            host: Host::default(),
            server: None,
            checks: Vec::new(),
            accepted_hosts: None,
            limits: ApiLimits::DEFAULT,
        }
    }

    /// Accepts only the `Host` values that name `addr` (see the module docs). [`Api::serve`]
    /// sets this from its listener; for [`Api::routes`] used on their own, it is off
    /// until set.
    #[must_use]
    pub fn listening_on(mut self, addr: SocketAddr) -> Self {
        self.accepted_hosts = Some(Arc::new(AcceptedHosts { listen: addr }));
        self
    }

    /// Times and connection count allowed to clients.
    #[must_use]
    pub fn limits(mut self, limits: ApiLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Requires `Authorization: Bearer <token>` when `token` is given.
    #[must_use]
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.map(Arc::from);
        self
    }

    /// Judges rules against `host` and shows it in `GET /capabilities`.
    #[must_use]
    pub fn host(mut self, host: Host) -> Self {
        self.host = host;
        self
    }

    /// Shows `server`'s connections, its upstreams' health and what it learned, and
    /// judges a rule's `via` against its upstreams.
    #[must_use]
    pub fn server(mut self, server: Server) -> Self {
        self.server = Some(server);
        self
    }

    /// Reports the daemon `degraded` in `GET /health` while `check` returns a problem.
    #[must_use]
    pub fn check(mut self, check: HealthCheck) -> Self {
        self.checks.push(check);
        self
    }

    /// The names of the upstreams rules may send destinations through.
    fn upstream_names(&self) -> Vec<UpstreamName> {
        self.server
            .as_ref()
            .map(|server| server.upstreams().into_iter().map(|u| u.name).collect())
            .unwrap_or_default()
    }

    /// The routes, as a warp filter that answers every request (errors become JSON
    /// responses).
    pub fn routes(
        &self,
    ) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + use<> {
        let token = self.token.clone();
        let api = self.clone();
        let with_api = warp::any().map(move || api.clone());
        let body = limited_body(self.limits.body_timeout);

        let rules = warp::path("rules")
            .and(warp::path::tail())
            .and(warp::method())
            .and(require_token(token.clone()))
            .and(warp::header::optional::<String>("content-type"))
            .and(body.clone())
            .and(with_api.clone())
            .then(rules_handler);

        let capabilities = warp::path("capabilities")
            .and(warp::path::end())
            .and(warp::method())
            .and(require_token(token.clone()))
            .and(body.clone())
            .and(with_api.clone())
            .map(capabilities_handler);

        let connections = warp::path("connections")
            .and(warp::path::end())
            .and(warp::method())
            .and(require_token(token.clone()))
            .and(body.clone())
            .and(with_api.clone())
            .map(connections_handler);

        let learned = warp::path("learned")
            .and(warp::path::end())
            .and(warp::method())
            .and(require_token(token.clone()))
            .and(body.clone())
            .and(with_api.clone())
            .map(learned_handler);

        let metrics = warp::path("metrics")
            .and(warp::path::end())
            .and(warp::method())
            .and(require_token(token.clone()))
            .and(body.clone())
            .and(with_api.clone())
            .map(metrics_handler);

        let doctor = warp::path("doctor")
            .and(warp::path::end())
            .and(warp::method())
            .and(require_token(token.clone()))
            .and(body.clone())
            .and(with_api.clone())
            .then(doctor_handler);

        // The page's own files: no token (they hold nothing secret), no body.
        let page_file =
            |file: &'static str| warp::method().map(move |method| page_handler(file, method));
        let page = warp::path::end()
            .and(page_file("index.html"))
            .or(warp::path("app.js")
                .and(warp::path::end())
                .and(page_file("app.js")))
            .unify()
            .or(warp::path("app.css")
                .and(warp::path::end())
                .and(page_file("app.css")))
            .unify();

        let health = warp::path("health")
            .and(warp::path::end())
            .and(warp::method())
            .and(access(token))
            .and(body)
            .and(with_api)
            .map(health_handler);

        // The Host check comes first: a request for another name is answered with nothing
        // but the refusal, whatever its path.
        check_host(self.accepted_hosts.clone())
            .and(
                rules
                    .or(capabilities)
                    .unify()
                    .or(connections)
                    .unify()
                    .or(learned)
                    .unify()
                    .or(metrics)
                    .unify()
                    .or(doctor)
                    .unify()
                    .or(page)
                    .unify()
                    .or(health)
                    .unify(),
            )
            .recover(error::recover)
            .unify()
    }

    /// Serves the routes on `listener` until `shutdown` completes, then finishes the
    /// requests in flight. Only `Host` values naming the listener's address are accepted
    /// (see [`Api::listening_on`]); the [`ApiLimits`] apply.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let api = match listener.local_addr() {
            Ok(addr) => self.listening_on(addr),
            Err(err) => {
                tracing::error!("REST API: cannot read the listening address: {err}");
                return;
            }
        };
        server::serve(listener, api.routes(), api.limits, shutdown).await;
    }

    /// Serves the routes on a Unix socket, like [`Api::serve`] but without the `Host`
    /// check (the socket's mode decides who may connect; the token still applies).
    /// Removes the socket file when done.
    pub async fn serve_unix(
        self,
        socket: UnixApiSocket,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let UnixApiSocket { listener, file } = socket;
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!("REST API: cannot use {}: {err}", file.path.display());
                return;
            }
        };
        let api = Api {
            accepted_hosts: None,
            ..self
        };
        let listener = server::UnixAccept {
            listener,
            _file: file,
        };
        server::serve(listener, api.routes(), api.limits, shutdown).await;
    }

    /// `rule` as the API shows it, judged against the host now.
    fn view(&self, rule: &Rule) -> RuleView {
        RuleView::new(
            rule,
            &limitations(&rule.settings, &self.host.kernel(), self.host.mode()),
            &self.upstream_names(),
        )
    }
}

/// The REST API over `store` (see [`Api::new`]), as a warp filter that answers every
/// request. `token`: if given, requests need `Authorization: Bearer <token>`.
pub fn routes(
    store: RuleStore,
    token: Option<String>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    Api::new(store).token(token).routes()
}

/// Serves `routes(store, token)` on `listener` until `shutdown` completes, then finishes
/// the requests in flight. [`Api::serve`] does the same with the host and connections.
pub async fn serve_api(
    listener: tokio::net::TcpListener,
    store: RuleStore,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    Api::new(store).token(token).serve(listener, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RuleStore::open(dir.path().join("rules"), Default::default()).expect("store");
        let api = Api::new(store).token(Some("s3cret".into()));
        let shown = format!("{api:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
