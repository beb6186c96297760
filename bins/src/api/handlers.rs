//! The route handlers: each turns a request that passed the checks of [`super::auth`] and
//! [`super::body`] into an answer.

use mptcp_policy::{Destination, Rule, limitations};
use serde::Serialize;
use warp::Reply;
use warp::http::{HeaderValue, Method, StatusCode, header};
use warp::path::Tail;
use warp::reply::Response;

use super::Api;
use super::auth::Access;
use super::body::{parse_request, requested_rule};
use super::error::{ApiError, ErrorKind};
use super::wire::{
    Capabilities, ConnectionView, Health, LearnedView, LocalAddressView, RuleView, UpstreamView,
    decode_destination, rule_location,
};
use crate::diagnosis::{Severity, kernel_notes};
use crate::store::RuleStore;

pub(super) async fn rules_handler(
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
            None => Err(ApiError::bad_request(
                "the destination in the path is not valid UTF-8",
            )),
            Some(destination) => match method {
                Method::GET => get_rule(&api, &destination),
                Method::PUT => put_rule(&api, &destination, content_type.as_deref(), &body).await,
                Method::DELETE => delete_rule(&api.store, &destination).await,
                _ => Err(ApiError::method_not_allowed(&method, "GET, PUT, DELETE")),
            },
        }
    };
    result.unwrap_or_else(ApiError::into_response)
}

pub(super) fn health_handler(method: Method, access: Access, _body: Vec<u8>, api: Api) -> Response {
    if method != Method::GET {
        return ApiError::method_not_allowed(&method, "GET").into_response();
    }
    let store = &api.store;
    let upstreams: Vec<UpstreamView> = api
        .server
        .as_ref()
        .map(|server| server.upstreams().iter().map(UpstreamView::from).collect())
        .unwrap_or_default();
    let last_reload_error = store.last_reload_error();
    // What keeps the daemon from doing its job fully, each with its consequence.
    let mut problems: Vec<String> = Vec::new();
    if let Some(err) = &last_reload_error {
        problems.push(format!(
            "the rule file on disk is broken, the previous rules are in force: {}",
            err.message
        ));
    }
    for upstream in upstreams.iter().filter(|u| u.state == "down") {
        let why = upstream
            .failure
            .as_ref()
            .map_or_else(String::new, |f| format!(" ({}: {})", f.kind, f.message));
        problems.push(format!(
            "upstream {} is down{why}: its destinations go direct",
            upstream.name
        ));
    }
    problems.extend(api.checks.iter().filter_map(|check| check()));
    let status = if problems.is_empty() {
        "ok"
    } else {
        "degraded"
    };
    let health = if access == Access::Authorized {
        Health {
            status: status.into(),
            rules: Some(store.policy().rules().len()),
            rule_file: Some(store.path().display().to_string()),
            last_reload_error,
            upstreams,
            problems,
        }
    } else {
        Health {
            status: status.into(),
            rules: None,
            rule_file: None,
            last_reload_error: None,
            upstreams: Vec::new(),
            problems: Vec::new(),
        }
    };
    json_response(StatusCode::OK, &health)
}

pub(super) fn capabilities_handler(method: Method, _body: Vec<u8>, api: Api) -> Response {
    if method != Method::GET {
        return ApiError::method_not_allowed(&method, "GET").into_response();
    }
    let kernel = api.host.kernel();
    let mode = api.host.mode();
    // Only what the operator has to act on: the rest is in the other fields.
    let notes = kernel_notes(&kernel, mode)
        .into_iter()
        .filter(|note| note.severity == Severity::Warning)
        .map(|note| note.message)
        .collect();
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

pub(super) fn connections_handler(method: Method, _body: Vec<u8>, api: Api) -> Response {
    if method != Method::GET {
        return ApiError::method_not_allowed(&method, "GET").into_response();
    }
    let connections: Vec<ConnectionView> = api
        .server
        .as_ref()
        .map(|server| {
            server
                .connections()
                .list()
                .iter()
                .map(ConnectionView::from)
                .collect()
        })
        .unwrap_or_default();
    json_response(StatusCode::OK, &connections)
}

pub(super) fn metrics_handler(method: Method, _body: Vec<u8>, api: Api) -> Response {
    if method != Method::GET {
        return ApiError::method_not_allowed(&method, "GET").into_response();
    }
    match super::metrics::render(api.server.as_ref(), &api.store) {
        Ok(text) => {
            let mut response = Response::new(text.into());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(super::metrics::CONTENT_TYPE),
            );
            response
        }
        Err(_) => ApiError::new(ErrorKind::Internal, "cannot encode the metrics").into_response(),
    }
}

pub(super) async fn doctor_handler(method: Method, _body: Vec<u8>, api: Api) -> Response {
    if method != Method::GET {
        return ApiError::method_not_allowed(&method, "GET").into_response();
    }
    let owned = api.host.mode() == mptcp_policy::PmMode::Userspace;
    json_response(StatusCode::OK, &crate::doctor::examine(owned).await)
}

pub(super) fn learned_handler(method: Method, _body: Vec<u8>, api: Api) -> Response {
    let learned = api.server.as_ref().map(|server| server.learned());
    match method {
        Method::GET => {
            let list: Vec<LearnedView> = learned
                .map(|learned| learned.list().iter().map(LearnedView::from).collect())
                .unwrap_or_default();
            json_response(StatusCode::OK, &list)
        }
        Method::DELETE => {
            if let Some(learned) = learned {
                learned.forget();
            }
            StatusCode::NO_CONTENT.into_response()
        }
        _ => ApiError::method_not_allowed(&method, "GET, DELETE").into_response(),
    }
}

fn list_rules(api: &Api) -> Response {
    let policy = api.store.policy();
    let kernel = api.host.kernel();
    let upstreams = api.upstream_names();
    let rules: Vec<RuleView> = policy
        .rules()
        .iter()
        .map(|rule| {
            RuleView::new(
                rule,
                &limitations(&rule.settings, &kernel, api.host.mode()),
                &upstreams,
            )
        })
        .collect();
    json_response(StatusCode::OK, &rules)
}

async fn post_rule(
    api: &Api,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let request = parse_request(content_type, body)?;
    let Some(ip) = request.ip.as_deref() else {
        return Err(
            ApiError::bad_request("missing field `ip` (the rule's destination)").field("ip"),
        );
    };
    let rule = requested_rule(&request, ip)?;
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
    let request = parse_request(content_type, body)?;
    let rule = requested_rule(&request, destination)?;
    if let Some(ip) = request.ip.as_deref() {
        let in_body: Destination = ip.trim().parse().map_err(|err| ApiError::invalid(&err))?;
        if in_body != rule.destination {
            return Err(ApiError::new(
                ErrorKind::InvalidRule,
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
    let upstreams = api.upstream_names();
    if let Some(name) = rule.via.upstream()
        && !upstreams.contains(name)
    {
        return Err(ApiError::unknown_upstream(name, &upstreams));
    }
    let view = RuleView::new(&rule, &found, &upstreams);
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
    ApiError::new(ErrorKind::NotFound, format!("no rule for {destination}"))
}
/// A destination from the path of a GET or DELETE: one that cannot be a rule has no rule.
fn parse_path_destination(text: &str) -> Result<Destination, ApiError> {
    text.trim().parse().map_err(|err: mptcp_policy::Error| {
        ApiError::new(
            ErrorKind::NotFound,
            format!("no rule for {text:?}: not a valid destination ({err})"),
        )
    })
}

/// A JSON answer.
pub(super) fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}
