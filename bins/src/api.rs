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
//! | `GET /health`               | status, rule count, rule file, last reload error           |
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
//! offer (`net.mptcp.available_schedulers`; the message names those it does), or `binder`
//! on upstream Linux. A rule that a flag or a sysctl would make work (say `fullmesh`
//! without `--path-manager userspace`) is stored and reported as not in effect. The rule
//! file is not held to this: a file written for another host still loads, with a warning.
//!
//! Every error is JSON, `{"error": "..."}` (plus `"field"` when one field is at fault); the
//! statuses are listed, in one place, on [`ApiError`].
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
use std::future::{Future, poll_fn};
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::SystemTime;

use mptcp_policy::{Destination, Field, Flavour, Limitation, Rule, limitations};
use mptcp_socks::{Connection, Connections};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use warp::http::{HeaderValue, Method, StatusCode, header};
use warp::path::Tail;
use warp::reply::Response;
use warp::{Buf, Filter, Rejection, Reply, Stream};

use crate::host::{Host, LocalEndpoint};
use crate::store::{ReloadError, RuleStore, StoreError};

mod server;

pub use server::{ApiLimits, UnixApiSocket};

/// Largest request body accepted. A rule is well under 1 KiB.
pub const BODY_LIMIT: usize = 16 * 1024;

/// A rule as the API sends it, with the seed's keys, and whether it takes effect here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    /// The destination: address, prefix, name, wildcard or `*`.
    pub ip: String,
    /// Whether the outbound connection is opened as MPTCP.
    pub enable: bool,
    /// `default`, `roundrobin` or `redundant`.
    pub scheduler: String,
    /// `default`, `fullmesh`, `ndiffports[:N]` or `binder`.
    pub path_manager: String,
    /// `default` (the proxy's own host and link-local refused, all else allowed),
    /// `allow` or `deny`: the rule file's `access=` option.
    #[serde(default = "default_access")]
    pub access: String,
    /// Whether everything the rule asks for happens on this host.
    #[serde(default = "yes")]
    pub in_effect: bool,
    /// Why not, when `in_effect` is false: one reason per setting, with the fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_in_effect: Vec<String>,
}

fn yes() -> bool {
    true
}

fn default_access() -> String {
    "default".to_owned()
}

impl RuleView {
    /// `rule`, with what keeps it from taking effect (see [`mptcp_policy::limitations`]).
    pub fn new(rule: &Rule, limitations: &[Limitation]) -> Self {
        RuleView {
            ip: rule.destination.to_string(),
            enable: rule.settings.mptcp,
            scheduler: rule.settings.scheduler.as_str().to_owned(),
            path_manager: rule.settings.path_manager.to_string(),
            access: rule.access.as_str().to_owned(),
            in_effect: limitations.is_empty(),
            not_in_effect: limitations.iter().map(ToString::to_string).collect(),
        }
    }
}

/// The answer of `GET /health`. Without the token (when one is set) only `status` is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"` when the daemon answers.
    pub status: String,
    /// Number of rules in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<usize>,
    /// The rule file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_file: Option<String>,
    /// The last reload of the rule file failed with this (the previous rules are in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload_error: Option<ReloadError>,
}

/// The answer of `GET /capabilities`: what this host offers the rules, now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `upstream`, `legacy` (multipath-tcp.org) or `none`.
    pub kernel: String,
    /// Whether MPTCP sockets can be opened (`net.mptcp.enabled`).
    pub mptcp_enabled: bool,
    /// The daemon's mode: `in-kernel` or `userspace` (`mptcp-socksd --path-manager`).
    pub path_manager_mode: String,
    /// The namespace's path manager (`net.mptcp.path_manager`: `kernel`, `userspace`; on
    /// the legacy kernel its default one).
    pub kernel_path_manager: Option<String>,
    /// The namespace's scheduler (`net.mptcp.scheduler`).
    pub scheduler: Option<String>,
    /// `net.mptcp.available_schedulers`.
    pub available_schedulers: Vec<String>,
    /// The local addresses subflows may use (`ip mptcp endpoint`).
    pub local_addresses: Vec<LocalAddressView>,
    /// What an operator should know about this combination (e.g. a mode the namespace
    /// does not match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One address of the inventory, as `GET /capabilities` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalAddressView {
    /// The kernel's address id.
    pub id: u8,
    /// The address.
    pub addr: IpAddr,
    /// `subflow`, `signal`, `backup`, `fullmesh`, ...
    pub flags: Vec<String>,
    /// The interface name, if the endpoint is bound to one that exists.
    pub interface: Option<String>,
    /// The interface index, if the endpoint is bound to one.
    #[serde(default)]
    pub ifindex: Option<u32>,
}

impl From<&LocalEndpoint> for LocalAddressView {
    fn from(endpoint: &LocalEndpoint) -> Self {
        LocalAddressView {
            id: endpoint.id,
            addr: endpoint.addr,
            flags: endpoint.flags.clone(),
            interface: endpoint.interface(),
            ifindex: endpoint.ifindex,
        }
    }
}

/// One live connection, as `GET /connections` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionView {
    /// Unique for the life of the daemon.
    pub id: u64,
    /// The SOCKS client.
    pub client: SocketAddr,
    /// The target as the client asked for it: `name:port` or `address:port`.
    pub target: String,
    /// The address the proxy connected to.
    pub remote: SocketAddr,
    /// The proxy's end of the first subflow.
    pub local: SocketAddr,
    /// The destination of the matching rule, or `"default"` when none matched.
    pub rule: String,
    /// `mptcp`, `fallback` (asked for MPTCP, got TCP) or `tcp`.
    pub transport: String,
    /// The MPTCP connection token.
    pub token: Option<u32>,
    /// Seconds since the outbound connection was established.
    pub age_s: u64,
    /// The subflows now; empty unless MPTCP.
    pub subflows: Vec<SubflowView>,
}

/// One subflow of a live MPTCP connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubflowView {
    /// This host's end: which address, so which link.
    pub local: SocketAddr,
    /// The server's end.
    pub remote: SocketAddr,
    /// Bytes sent on it and acknowledged by the server.
    pub bytes_acked: u64,
    /// Bytes received on it.
    pub bytes_received: u64,
    /// Smoothed round-trip time, in milliseconds.
    pub rtt_ms: f64,
}

impl From<&Connection> for ConnectionView {
    fn from(c: &Connection) -> Self {
        ConnectionView {
            id: c.id,
            client: c.client,
            target: c.target.clone(),
            remote: c.remote,
            local: c.local,
            rule: c
                .rule
                .as_ref()
                .map_or_else(|| "default".to_owned(), ToString::to_string),
            transport: c.transport.as_str().to_owned(),
            token: c.token,
            age_s: SystemTime::now()
                .duration_since(c.since)
                .map_or(0, |age| age.as_secs()),
            subflows: c
                .subflows
                .iter()
                .map(|s| SubflowView {
                    local: s.local,
                    remote: s.remote,
                    bytes_acked: s.bytes_acked,
                    bytes_received: s.bytes_received,
                    rtt_ms: f64::from(s.rtt_us) / 1000.0,
                })
                .collect(),
        }
    }
}

/// The REST API: the rule store, the host it judges rules against, the live connections
/// it lists and the token it requires. Cheap to clone.
///
/// ```no_run
/// # async fn daemon(store: mptcp_socksd::RuleStore, listener: tokio::net::TcpListener) {
/// use mptcp_policy::PmMode;
/// use mptcp_socks::{Server, ServerConfig};
/// use mptcp_socksd::{Api, Host, LocalAddresses};
///
/// let server = Server::new(ServerConfig::default(), store.handle().clone()).unwrap();
/// let connections = server.connections().clone(); // those the SOCKS server relays
/// let inventory = LocalAddresses::default(); // refreshed from `ip mptcp endpoint`
/// Api::new(store)
///     .token(Some("secret".into()))
///     .host(Host::new(PmMode::InKernel).local_addresses(inventory))
///     .connections(connections)
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
    connections: Connections,
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
            .field("connections", &self.connections.len())
            .field("accepted_hosts", &self.accepted_hosts)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Api {
    /// The API over `store`, without a token, judging rules against this host probed live
    /// with the in-kernel path manager and an empty address inventory, listing no
    /// connections, with the default [`ApiLimits`].
    pub fn new(store: RuleStore) -> Self {
        Api {
            store,
            token: None,
            host: Host::default(),
            connections: Connections::default(),
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

    /// Lists these connections (the SOCKS server's [`mptcp_socks::ServerConfig::connections`]).
    #[must_use]
    pub fn connections(mut self, connections: Connections) -> Self {
        self.connections = connections;
        self
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
                    .or(health)
                    .unify(),
            )
            .recover(recover)
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

/// An error answer: a status and a message for the operator. Every status the API answers
/// with is chosen here, by the constructors:
///
/// | Status | When |
/// |--------|------|
/// | 400 | malformed body or header, a body on a method that takes none, no `Host` |
/// | 401 | missing or wrong bearer token |
/// | 404 | no such rule or route |
/// | 405 | wrong method (with `Allow`) |
/// | 408 | the body did not arrive within [`ApiLimits::body_timeout`] |
/// | 409 | the rule file was broken by a hand edit |
/// | 413 | body over [`BODY_LIMIT`] |
/// | 415 | a body whose type is not `application/json`, or has no type |
/// | 421 | a `Host` that is not an address the API listens on (the message lists those) |
/// | 422 | a well-formed body with an invalid value, or one this host refuses |
/// | 500 | the rule file could not be written (nothing changed) |
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    /// The JSON key at fault, if one is.
    field: Option<&'static str>,
    /// For 405: the methods the path allows.
    allow: Option<&'static str>,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
            allow: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (send `Authorization: Bearer <token>`)",
        )
    }

    /// A body that is not labelled JSON; `None`: no `Content-Type` at all.
    fn not_json(content_type: Option<&str>) -> Self {
        let given = match content_type {
            Some(content_type) => format!("content type {content_type:?} is not JSON"),
            None => "the body has no content type".to_owned(),
        };
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("{given}; send `Content-Type: application/json` (curl: --json)"),
        )
    }

    fn body_not_allowed(method: &Method) -> Self {
        ApiError::bad_request(format!("a {method} request takes no body"))
    }

    fn body_too_slow(timeout: std::time::Duration) -> Self {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        )
    }

    fn too_large() -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {BODY_LIMIT} bytes"),
        )
    }

    fn no_host() -> Self {
        ApiError::bad_request("the request has no `Host` header")
    }

    fn wrong_host(given: &str, accepted: &AcceptedHosts) -> Self {
        ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "Host {given:?} is not this API's address; use {}",
                accepted.describe()
            ),
        )
    }

    fn field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    fn method_not_allowed(method: &Method, allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed here; allowed: {allow}"),
            )
        }
    }

    /// A rule value that does not parse: 422, naming the JSON key.
    fn invalid(err: &mptcp_policy::Error) -> Self {
        let field = match err {
            mptcp_policy::Error::Invalid { field, .. } => json_key(*field),
            _ => None,
        };
        ApiError {
            field,
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, err.to_string())
        }
    }

    /// The 422 for the limitations this host refuses outright, if any: all their reasons,
    /// naming the field of the first.
    fn refusal(limitations: &[Limitation]) -> Option<Self> {
        let refused: Vec<&Limitation> = limitations.iter().filter(|l| l.is_refusal()).collect();
        let first = refused.first()?;
        let field = match first {
            Limitation::SchedulerUnavailable { .. } => Some("scheduler"),
            Limitation::BinderUnsupported => Some("path_manager"),
            _ => None,
        };
        let message = refused
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Some(ApiError {
            field,
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
        })
    }

    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("error".into(), Value::String(self.message));
        if let Some(field) = self.field {
            body.insert("field".into(), Value::String(field.into()));
        }
        let mut response = json_response(self.status, &Value::Object(body));
        let headers = response.headers_mut();
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let status = match err {
            // The file on disk is in the way (or the change would take it beyond the
            // caps); the operator has to fix it, and the message says how.
            StoreError::BrokenOnDisk { .. }
            | StoreError::Unsafe { .. }
            | StoreError::TooLarge { .. }
            | StoreError::TooManyRules { .. }
            | StoreError::NotUtf8 { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!("rule change failed: {err}");
        }
        ApiError::new(status, err.to_string())
    }
}

fn json_key(field: Field) -> Option<&'static str> {
    match field {
        Field::Destination => Some("ip"),
        Field::Enable => Some("enable"),
        Field::Scheduler => Some("scheduler"),
        Field::PathManager => Some("path_manager"),
        Field::Access => Some("access"),
        _ => None,
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// What the request's credentials allow, when they are not refused outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The right token, or no token is set.
    Authorized,
    /// A token is set and the request has no `Authorization` header.
    Anonymous,
}

/// Rejects (401) unless the request carries the bearer token, when there is one.
fn require_token(token: Option<Arc<str>>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    access(token)
        .and_then(|access: Access| async move {
            match access {
                Access::Authorized => Ok(()),
                Access::Anonymous => Err(warp::reject::custom(ApiError::unauthorized())),
            }
        })
        .untuple_one()
}

/// The request's [`Access`]; rejects (401) an `Authorization` header that does not hold
/// the token, so a wrong token is refused the same way on every route.
fn access(token: Option<Arc<str>>) -> impl Filter<Extract = (Access,), Error = Rejection> + Clone {
    warp::header::headers_cloned().and_then(move |headers: warp::http::HeaderMap| {
        let token = token.clone();
        async move {
            let Some(expected) = token.as_deref() else {
                return Ok(Access::Authorized);
            };
            let mut given = headers.get_all(header::AUTHORIZATION).iter();
            let (Some(value), None) = (given.next(), given.next()) else {
                return if headers.contains_key(header::AUTHORIZATION) {
                    Err(warp::reject::custom(ApiError::unauthorized()))
                } else {
                    Ok(Access::Anonymous)
                };
            };
            if value
                .to_str()
                .ok()
                .and_then(bearer_token)
                .is_some_and(|given| constant_time_eq(given.as_bytes(), expected.as_bytes()))
            {
                Ok(Access::Authorized)
            } else {
                Err(warp::reject::custom(ApiError::unauthorized()))
            }
        }
    })
}

/// The `Host` values that name the address the API listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AcceptedHosts {
    listen: SocketAddr,
}

impl AcceptedHosts {
    /// Whether `authority` (a `Host` value, or the authority of an absolute request URI)
    /// names the listener: an IP literal is compared as an address, a missing port means
    /// 80; the only name accepted is `localhost`, and only for a loopback listener.
    fn accepts(&self, authority: &warp::host::Authority) -> bool {
        if authority.port_u16().unwrap_or(80) != self.listen.port() {
            return false;
        }
        let host = authority.host();
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let ip = self.listen.ip();
        match literal.parse::<IpAddr>() {
            // Any literal names an unspecified listener's port; a rebinding attack needs
            // a name.
            Ok(given) => ip.is_unspecified() || given == ip,
            Err(_) => ip.is_loopback() && host.eq_ignore_ascii_case("localhost"),
        }
    }

    /// The accepted values, for the refusal's message.
    fn describe(&self) -> String {
        let port = self.listen.port();
        let ip = self.listen.ip();
        if ip.is_unspecified() {
            format!("one of this host's IP addresses with port {port}, or localhost:{port}")
        } else if ip.is_loopback() {
            format!("{} or localhost:{port}", self.listen)
        } else {
            self.listen.to_string()
        }
    }
}

/// Rejects a request whose `Host` (or absolute URI) does not name the listener (421), or
/// that has no `Host` or more than one (400). Passes everything when `accepted` is `None`.
fn check_host(
    accepted: Option<Arc<AcceptedHosts>>,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and(warp::host::optional())
        .and_then(
            move |headers: warp::http::HeaderMap, authority: Option<warp::host::Authority>| {
                let accepted = accepted.clone();
                async move {
                    let Some(accepted) = accepted else {
                        return Ok(());
                    };
                    if headers.get_all(header::HOST).iter().count() > 1 {
                        return Err(warp::reject::custom(ApiError::bad_request(
                            "the request has more than one `Host` header",
                        )));
                    }
                    match authority {
                        None => Err(warp::reject::custom(ApiError::no_host())),
                        Some(authority) if accepted.accepts(&authority) => Ok(()),
                        Some(authority) => Err(warp::reject::custom(ApiError::wrong_host(
                            authority.as_str(),
                            &accepted,
                        ))),
                    }
                }
            },
        )
        .untuple_one()
}

/// The credentials of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

/// Compares without an early exit, so the time taken does not tell how much of a guessed
/// token was right. (The length is not secret enough to hide.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The request body, refused with 413 beyond [`BODY_LIMIT`] without reading it all (and
/// without needing a `Content-Length`, so chunked bodies work too), with 408 if it takes
/// longer than `timeout`, and with 400 if the method takes no body (GET, HEAD, DELETE).
fn limited_body(
    timeout: std::time::Duration,
) -> impl Filter<Extract = (Vec<u8>,), Error = Rejection> + Clone {
    warp::method()
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(
            move |method: Method, length: Option<u64>, stream| async move {
                let body = tokio::time::timeout(timeout, collect_limited(length, stream))
                    .await
                    .map_err(|_| warp::reject::custom(ApiError::body_too_slow(timeout)))??;
                let takes_none = [Method::GET, Method::HEAD, Method::DELETE].contains(&method);
                if takes_none && !body.is_empty() {
                    return Err(warp::reject::custom(ApiError::body_not_allowed(&method)));
                }
                Ok(body)
            },
        )
}

async fn collect_limited<S, B>(length: Option<u64>, stream: S) -> Result<Vec<u8>, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if length.is_some_and(|length| length > BODY_LIMIT as u64) {
        return Err(warp::reject::custom(ApiError::too_large()));
    }
    let mut stream = pin!(stream);
    let mut body = Vec::new();
    while let Some(chunk) = poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
        let mut chunk = chunk.map_err(|err| {
            warp::reject::custom(ApiError::bad_request(format!(
                "cannot read the request body: {err}"
            )))
        })?;
        if body.len() + chunk.remaining() > BODY_LIMIT {
            return Err(warp::reject::custom(ApiError::too_large()));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(body)
}

async fn rules_handler(
    tail: Tail,
    method: Method,
    content_type: Option<String>,
    body: Vec<u8>,
    api: Api,
) -> Response {
    let result = if tail.as_str().trim_matches('/').is_empty() {
        match method {
            Method::GET => Ok(list_rules(&api)),
            Method::POST => post_rule(&api, content_type.as_deref(), &body).await,
            _ => Err(ApiError::method_not_allowed(&method, "GET, POST")),
        }
    } else {
        match decode_destination(tail.as_str()) {
            Err(err) => Err(err),
            Ok(destination) => match method {
                Method::GET => get_rule(&api, &destination),
                Method::PUT => put_rule(&api, &destination, content_type.as_deref(), &body).await,
                Method::DELETE => delete_rule(&api.store, &destination).await,
                _ => Err(ApiError::method_not_allowed(&method, "GET, PUT, DELETE")),
            },
        }
    };
    result.unwrap_or_else(ApiError::into_response)
}

fn health_handler(method: Method, access: Access, _body: Vec<u8>, api: Api) -> Response {
    if method != Method::GET {
        return ApiError::method_not_allowed(&method, "GET").into_response();
    }
    let store = &api.store;
    let health = if access == Access::Authorized {
        Health {
            status: "ok".into(),
            rules: Some(store.policy().rules().len()),
            rule_file: Some(store.path().display().to_string()),
            last_reload_error: store.last_reload_error(),
        }
    } else {
        Health {
            status: "ok".into(),
            rules: None,
            rule_file: None,
            last_reload_error: None,
        }
    };
    json_response(StatusCode::OK, &health)
}

fn capabilities_handler(method: Method, _body: Vec<u8>, api: Api) -> Response {
    if method != Method::GET {
        return ApiError::method_not_allowed(&method, "GET").into_response();
    }
    let kernel = api.host.kernel();
    let mode = api.host.mode();
    let mut notes = Vec::new();
    match (kernel.flavour, kernel.enabled) {
        (Flavour::Upstream | Flavour::Legacy, true) => {}
        (Flavour::Upstream | Flavour::Legacy, false) => notes.push(
            "MPTCP is disabled in this network namespace: every connection is plain TCP \
             (sysctl -w net.mptcp.enabled=1)"
                .to_owned(),
        ),
        _ => notes.push(
            "this kernel has no MPTCP: every connection is plain TCP (Linux 5.6+ with \
             CONFIG_MPTCP)"
                .to_owned(),
        ),
    }
    if kernel.flavour == Flavour::Upstream
        && mode == mptcp_policy::PmMode::Userspace
        && kernel.path_manager.as_deref() != Some("userspace")
    {
        notes.push(format!(
            "the daemon runs the userspace path manager but the namespace's is {} \
             (sysctl -w net.mptcp.path_manager=userspace)",
            kernel.path_manager.as_deref().unwrap_or("unknown")
        ));
    }
    let capabilities = Capabilities {
        kernel: kernel.flavour.as_str().to_owned(),
        mptcp_enabled: kernel.enabled,
        path_manager_mode: mode.as_str().to_owned(),
        kernel_path_manager: kernel.path_manager,
        scheduler: kernel.scheduler,
        available_schedulers: kernel.available_schedulers,
        local_addresses: api
            .host
            .inventory()
            .iter()
            .map(LocalAddressView::from)
            .collect(),
        notes,
    };
    json_response(StatusCode::OK, &capabilities)
}

fn connections_handler(method: Method, _body: Vec<u8>, api: Api) -> Response {
    if method != Method::GET {
        return ApiError::method_not_allowed(&method, "GET").into_response();
    }
    let connections: Vec<ConnectionView> = api
        .connections
        .list()
        .iter()
        .map(ConnectionView::from)
        .collect();
    json_response(StatusCode::OK, &connections)
}

fn list_rules(api: &Api) -> Response {
    let policy = api.store.policy();
    let kernel = api.host.kernel();
    let rules: Vec<RuleView> = policy
        .rules()
        .iter()
        .map(|rule| RuleView::new(rule, &limitations(&rule.settings, &kernel, api.host.mode())))
        .collect();
    json_response(StatusCode::OK, &rules)
}

async fn post_rule(
    api: &Api,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let fields = RuleFields::parse(content_type, body)?;
    let Some(ip) = fields.ip.as_deref() else {
        return Err(
            ApiError::bad_request("missing field `ip` (the rule's destination)").field("ip"),
        );
    };
    let rule = fields.to_rule(ip)?;
    store_rule(api, rule).await
}

fn get_rule(api: &Api, destination: &str) -> Result<Response, ApiError> {
    let destination = parse_path_destination(destination)?;
    let policy = api.store.policy();
    let rule = policy
        .get(&destination)
        .ok_or_else(|| no_rule(&destination))?;
    Ok(json_response(StatusCode::OK, &api.view(rule)))
}

async fn put_rule(
    api: &Api,
    destination: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let fields = RuleFields::parse(content_type, body)?;
    let rule = fields.to_rule(destination)?;
    if let Some(ip) = fields.ip.as_deref() {
        let in_body: Destination = ip.trim().parse().map_err(|err| ApiError::invalid(&err))?;
        if in_body != rule.destination {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "field `ip` ({in_body}) does not match the destination in the path ({}); leave it out or make them equal",
                    rule.destination
                ),
            )
            .field("ip"));
        }
    }
    store_rule(api, rule).await
}

async fn delete_rule(store: &RuleStore, destination: &str) -> Result<Response, ApiError> {
    let destination = parse_path_destination(destination)?;
    match store.remove(&destination).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(no_rule(&destination)),
    }
}

/// Refuses (422) a rule this host can never carry out; otherwise creates (201, with
/// `Location`) or replaces (200) it and answers with the stored rule, marked in effect
/// or not.
async fn store_rule(api: &Api, rule: Rule) -> Result<Response, ApiError> {
    let found = limitations(&rule.settings, &api.host.kernel(), api.host.mode());
    if let Some(refusal) = ApiError::refusal(&found) {
        return Err(refusal);
    }
    let view = RuleView::new(&rule, &found);
    let location = rule_location(&rule.destination);
    let replaced = api.store.upsert(rule).await?;
    if replaced.is_some() {
        Ok(json_response(StatusCode::OK, &view))
    } else {
        let mut response = json_response(StatusCode::CREATED, &view);
        if let Ok(location) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Ok(response)
    }
}

fn no_rule(destination: &Destination) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no rule for {destination}"))
}

/// Characters escaped in a destination put in a path: everything that is not part of a
/// path segment, and `/` (so a prefix stays one segment), `%`.
pub const DESTINATION_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// The path of the rule for `destination`: `/rules/10.0.0.0%2F8`.
pub fn rule_location(destination: &Destination) -> String {
    rule_path(&destination.to_string())
}

/// The path of the rule for a destination as the operator typed it.
pub fn rule_path(destination: &str) -> String {
    format!(
        "/rules/{}",
        utf8_percent_encode(destination, DESTINATION_ESCAPES)
    )
}

/// The path tail after `/rules/`, percent-decoded. A trailing `/` is ignored.
fn decode_destination(tail: &str) -> Result<String, ApiError> {
    let tail = tail.strip_suffix('/').unwrap_or(tail);
    percent_decode_str(tail)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("the destination in the path is not valid UTF-8"))
}

/// A destination from the path of a GET or DELETE: one that cannot be a rule has no rule.
fn parse_path_destination(text: &str) -> Result<Destination, ApiError> {
    text.trim().parse().map_err(|err: mptcp_policy::Error| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no rule for {text:?}: not a valid destination ({err})"),
        )
    })
}

/// The fields of a request body, checked for shape (400) but not yet for meaning (422).
#[derive(Debug)]
struct RuleFields {
    ip: Option<String>,
    enable: String,
    scheduler: String,
    path_manager: String,
    access: Option<String>,
}

impl RuleFields {
    const KEYS: &'static str = "ip, enable, scheduler, path_manager, access";

    fn parse(content_type: Option<&str>, body: &[u8]) -> Result<RuleFields, ApiError> {
        let is_json = content_type.is_some_and(|content_type| {
            content_type
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
        if !is_json {
            return Err(ApiError::not_json(content_type));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(format!(
                "request body is empty; expected a JSON object with {}",
                Self::KEYS
            )));
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|err| ApiError::bad_request(format!("malformed JSON: {err}")))?;
        let Value::Object(object) = value else {
            return Err(ApiError::bad_request(format!(
                "expected a JSON object with {}, got {}",
                Self::KEYS,
                type_name(&value)
            )));
        };
        if let Some(unknown) = object.keys().find(|key| {
            !["ip", "enable", "scheduler", "path_manager", "access"].contains(&key.as_str())
        }) {
            return Err(ApiError::bad_request(format!(
                "unknown field `{unknown}`; expected {}",
                Self::KEYS
            )));
        }
        Ok(RuleFields {
            ip: optional_string(&object, "ip")?,
            enable: enable_field(&object)?,
            scheduler: optional_string(&object, "scheduler")?.unwrap_or_else(|| "default".into()),
            path_manager: optional_string(&object, "path_manager")?
                .unwrap_or_else(|| "default".into()),
            access: optional_string(&object, "access")?,
        })
    }

    /// The rule for `destination` with these settings, through the rule file's parser.
    fn to_rule(&self, destination: &str) -> Result<Rule, ApiError> {
        let mut rule = Rule::from_fields(
            destination,
            &self.enable,
            &self.scheduler,
            &self.path_manager,
        )
        .map_err(|err| ApiError::invalid(&err))?;
        if let Some(access) = &self.access {
            // The value itself goes through the rule file's option parser.
            rule.access = access.parse().map_err(|err| ApiError::invalid(&err))?;
        }
        Ok(rule)
    }
}

/// A string field that may be left out (or `null`).
fn optional_string(
    object: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, ApiError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::bad_request(format!(
            "field `{key}` must be a string, got {}",
            type_name(other)
        ))
        .field(key)),
    }
}

/// `enable` as the rule file writes it: the seed's "0"/"1" strings pass through (and are
/// judged by the parser); booleans and the numbers 0/1 are accepted too.
fn enable_field(object: &Map<String, Value>) -> Result<String, ApiError> {
    match object.get("enable") {
        None | Some(Value::Null) => Err(ApiError::bad_request(
            "missing field `enable` (\"1\" for MPTCP, \"0\" for plain TCP)",
        )
        .field("enable")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Bool(b)) => Ok(if *b { "1" } else { "0" }.into()),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => Ok("0".into()),
            Some(1) => Ok("1".into()),
            _ => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("invalid enable {n}: must be 0 or 1 (or \"0\"/\"1\", false/true)"),
            )
            .field("enable")),
        },
        Some(other) => Err(ApiError::bad_request(format!(
            "field `enable` must be \"0\"/\"1\", a boolean or 0/1, got {}",
            type_name(other)
        ))
        .field("enable")),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Turns every rejection into a JSON error.
async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if let Some(err) = rejection.find::<ApiError>() {
        ApiError {
            status: err.status,
            message: err.message.clone(),
            field: err.field,
            allow: err.allow,
        }
    } else if rejection.is_not_found() {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no such route (the API has /rules, /rules/{destination}, /capabilities, /connections and /health)",
        )
    } else if let Some(err) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request(err.to_string())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::too_large()
    } else {
        tracing::warn!(?rejection, "unexpected rejection");
        ApiError::bad_request(format!("bad request: {rejection:?}"))
    };
    Ok(error.into_response())
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

    #[test]
    fn hosts_that_name_the_listener() {
        let accepts = |listen: &str, host: &str| {
            AcceptedHosts {
                listen: listen.parse().expect("addr"),
            }
            .accepts(&host.parse().expect("authority"))
        };
        for (listen, host, accepted) in [
            ("127.0.0.1:5000", "127.0.0.1:5000", true),
            ("127.0.0.1:5000", "localhost:5000", true),
            ("127.0.0.1:5000", "LocalHost:5000", true),
            ("127.0.0.1:5000", "127.0.0.1:5001", false),
            ("127.0.0.1:5000", "127.0.0.1", false),
            ("127.0.0.1:5000", "localhost", false),
            ("127.0.0.1:5000", "rebind.attacker.example:5000", false),
            ("127.0.0.1:5000", "127.0.0.2:5000", false),
            ("127.0.0.1:5000", "[::1]:5000", false),
            ("127.0.0.1:80", "127.0.0.1", true),
            ("127.0.0.1:80", "localhost", true),
            ("[::1]:5000", "[::1]:5000", true),
            ("[::1]:5000", "[0:0::1]:5000", true),
            ("[::1]:5000", "localhost:5000", true),
            ("[::1]:5000", "127.0.0.1:5000", false),
            ("192.0.2.7:5000", "192.0.2.7:5000", true),
            ("192.0.2.7:5000", "localhost:5000", false),
            ("192.0.2.7:5000", "api.example:5000", false),
            ("0.0.0.0:5000", "192.0.2.7:5000", true),
            ("0.0.0.0:5000", "[2001:db8::1]:5000", true),
            ("0.0.0.0:5000", "localhost:5000", false),
            ("0.0.0.0:5000", "api.example:5000", false),
            ("0.0.0.0:5000", "192.0.2.7:5001", false),
        ] {
            assert_eq!(accepts(listen, host), accepted, "{host} for {listen}");
        }
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn rule_paths_escape_the_prefix_slash() {
        assert_eq!(rule_path("10.0.0.0/8"), "/rules/10.0.0.0%2F8");
        assert_eq!(rule_path("*.example.com"), "/rules/*.example.com");
        assert_eq!(rule_path("2001:db8::/32"), "/rules/2001:db8::%2F32");
        assert_eq!(
            decode_destination("10.0.0.0%2F8").ok().as_deref(),
            Some("10.0.0.0/8")
        );
        assert_eq!(
            decode_destination("10.0.0.0/8/").ok().as_deref(),
            Some("10.0.0.0/8")
        );
    }

    #[test]
    fn body_shapes() {
        let parse = |body: &str| RuleFields::parse(Some("application/json"), body.as_bytes());
        let fields = parse(r#"{"enable": true, "ip": "a.example"}"#).expect("valid");
        assert_eq!(fields.enable, "1");
        assert_eq!(fields.scheduler, "default");
        assert_eq!(fields.path_manager, "default");
        assert_eq!(parse(r#"{"enable": 0}"#).expect("valid").enable, "0");
        let status = |body: &str| parse(body).err().map(|e| e.status);
        assert_eq!(status("nope"), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status("[]"), Some(StatusCode::BAD_REQUEST));
        assert_eq!(
            status(r#"{"enable": "1", "schedular": "x"}"#),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(status(r#"{"enable": [1]}"#), Some(StatusCode::BAD_REQUEST));
        assert_eq!(
            status(r#"{"enable": 2}"#),
            Some(StatusCode::UNPROCESSABLE_ENTITY)
        );
        assert_eq!(
            status(r#"{"enable": "1", "ip": 5}"#),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            RuleFields::parse(Some("application/xml"), b"{}")
                .err()
                .map(|e| e.status),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        for accepted in [
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/json;charset=UTF-8",
        ] {
            assert!(
                RuleFields::parse(Some(accepted), br#"{"enable":"1"}"#).is_ok(),
                "{accepted}"
            );
        }
        // What a form or `fetch` without a preflight can send, and what is not JSON by name.
        for refused in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/merge-patch+json"),
            Some("application/jsonx"),
            Some(""),
        ] {
            assert_eq!(
                RuleFields::parse(refused, br#"{"enable":"1"}"#)
                    .err()
                    .map(|e| e.status),
                Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
                "{refused:?}"
            );
        }
    }
}
