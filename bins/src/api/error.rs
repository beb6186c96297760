//! Error answers: every status the API refuses with is chosen by [`ErrorKind::status`],
//! and every domain error (a rule that does not parse, one this host refuses, a rule file
//! in the way) is given its kind here.

use std::convert::Infallible;

use mptcp_policy::{Field, Limitation, UpstreamName};
use serde_json::{Map, Value};
use warp::Rejection;
use warp::http::{HeaderValue, Method, StatusCode, header};
use warp::reply::Response;

use super::body::BODY_LIMIT;
use super::handlers::json_response;
use crate::store::StoreError;

/// Why a request is refused. The status follows from the kind and from nothing else:
///
/// | Kind | Status | When |
/// |------|--------|------|
/// | `Malformed` | 400 | malformed body or header, a body on a method that takes none, no `Host` |
/// | `Unauthorized` | 401 | missing or wrong bearer token (with `WWW-Authenticate: Bearer`) |
/// | `NotFound` | 404 | no such rule or route |
/// | `MethodNotAllowed` | 405 | wrong method (with `Allow` when the route knows its methods) |
/// | `BodyTimeout` | 408 | the body did not arrive within [`super::ApiLimits::body_timeout`] |
/// | `RuleFileInTheWay` | 409 | the rule file was broken by a hand edit, is unsafe, or would grow past its caps |
/// | `BodyTooLarge` | 413 | body over [`BODY_LIMIT`] |
/// | `NotJson` | 415 | a body whose type is not `application/json`, or has no type |
/// | `WrongHost` | 421 | a `Host` that is not an address the API listens on (the message lists those) |
/// | `InvalidRule` | 422 | a well-formed body with an invalid value, or one this host refuses |
/// | `WriteFailed` | 500 | the rule file could not be written (nothing changed) |
/// | `Internal` | 500 | an answer could not be made (the metrics text) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorKind {
    Malformed,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    BodyTimeout,
    RuleFileInTheWay,
    BodyTooLarge,
    NotJson,
    WrongHost,
    InvalidRule,
    WriteFailed,
    Internal,
}

impl ErrorKind {
    /// The status answered for this kind (see the table on [`ErrorKind`]).
    pub(super) const fn status(self) -> StatusCode {
        match self {
            ErrorKind::Malformed => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::RuleFileInTheWay => StatusCode::CONFLICT,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::WrongHost => StatusCode::MISDIRECTED_REQUEST,
            ErrorKind::InvalidRule => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::WriteFailed | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<&StoreError> for ErrorKind {
    fn from(err: &StoreError) -> Self {
        match err {
            // The file on disk is in the way (or the change would take it beyond the
            // caps); the operator has to fix it, and the message says how.
            StoreError::BrokenOnDisk { .. }
            | StoreError::EmptyOnDisk { .. }
            | StoreError::Unsafe { .. }
            | StoreError::TooLarge { .. }
            | StoreError::TooManyRules { .. }
            | StoreError::NotUtf8 { .. } => ErrorKind::RuleFileInTheWay,
            _ => ErrorKind::WriteFailed,
        }
    }
}

/// An error answer: its kind (so its status), a message for the operator, and the JSON
/// key at fault. Sent as `{"error": "...", "field": "..."}`.
#[derive(Debug, Clone)]
pub(super) struct ApiError {
    kind: ErrorKind,
    message: String,
    /// The JSON key at fault, if one is.
    field: Option<&'static str>,
    /// For 405: the methods the path allows.
    allow: Option<&'static str>,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub(super) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            field: None,
            allow: None,
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(ErrorKind::Malformed, message)
    }

    pub(super) fn unauthorized() -> Self {
        ApiError::new(
            ErrorKind::Unauthorized,
            "missing or wrong bearer token (send `Authorization: Bearer <token>`)",
        )
    }

    /// A body that is not labelled JSON; `None`: no `Content-Type` at all.
    pub(super) fn not_json(content_type: Option<&str>) -> Self {
        let given = match content_type {
            Some(content_type) => format!("content type {content_type:?} is not JSON"),
            None => "the body has no content type".to_owned(),
        };
        ApiError::new(
            ErrorKind::NotJson,
            format!("{given}; send `Content-Type: application/json` (curl: --json)"),
        )
    }

    pub(super) fn body_not_allowed(method: &Method) -> Self {
        ApiError::bad_request(format!("a {method} request takes no body"))
    }

    pub(super) fn body_too_slow(timeout: std::time::Duration) -> Self {
        ApiError::new(
            ErrorKind::BodyTimeout,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        )
    }

    pub(super) fn too_large() -> Self {
        ApiError::new(
            ErrorKind::BodyTooLarge,
            format!("request body is larger than {BODY_LIMIT} bytes"),
        )
    }

    /// The JSON key at fault.
    pub(super) fn field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    pub(super) fn method_not_allowed(method: &Method, allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                ErrorKind::MethodNotAllowed,
                format!("method {method} not allowed here; allowed: {allow}"),
            )
        }
    }

    /// A rule value that does not parse, naming the JSON key.
    pub(super) fn invalid(err: &mptcp_policy::Error) -> Self {
        let field = match err {
            mptcp_policy::Error::Invalid { field, .. } => json_key(*field),
            _ => None,
        };
        ApiError {
            field,
            ..ApiError::new(ErrorKind::InvalidRule, err.to_string())
        }
    }

    /// The refusal of the limitations this host refuses outright, if any: all their
    /// reasons, naming the field of the first.
    pub(super) fn refusal(limitations: &[Limitation]) -> Option<Self> {
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
            ..ApiError::new(ErrorKind::InvalidRule, message)
        })
    }

    /// A `via` naming an upstream the daemon was not started with.
    pub(super) fn unknown_upstream(name: &UpstreamName, configured: &[UpstreamName]) -> Self {
        let have = if configured.is_empty() {
            "it has none".to_owned()
        } else {
            let names: Vec<&str> = configured.iter().map(UpstreamName::as_str).collect();
            format!("it has {}", names.join(", "))
        };
        ApiError::new(
            ErrorKind::InvalidRule,
            format!(
                "no upstream named {name} is configured ({have}); start mptcp-socksd with \
                 --upstream {name}=URL"
            ),
        )
        .field("via")
    }

    /// The status this error is answered with.
    #[cfg(test)]
    pub(super) fn status(&self) -> StatusCode {
        self.kind.status()
    }

    pub(super) fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("error".into(), Value::String(self.message));
        if let Some(field) = self.field {
            body.insert("field".into(), Value::String(field.into()));
        }
        let mut response = json_response(self.kind.status(), &Value::Object(body));
        let headers = response.headers_mut();
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.kind == ErrorKind::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let kind = ErrorKind::from(&err);
        if kind == ErrorKind::WriteFailed {
            tracing::error!("rule change failed: {err}");
        }
        ApiError::new(kind, err.to_string())
    }
}

/// The key of the request body that holds a rule field.
fn json_key(field: Field) -> Option<&'static str> {
    match field {
        Field::Destination => Some("ip"),
        Field::Enable => Some("enable"),
        Field::Scheduler => Some("scheduler"),
        Field::PathManager => Some("path_manager"),
        Field::Access => Some("access"),
        Field::Via => Some("via"),
        _ => None,
    }
}

/// Turns every rejection into a JSON error.
pub(super) async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if let Some(err) = rejection.find::<ApiError>() {
        err.clone()
    } else if rejection.is_not_found() {
        ApiError::new(
            ErrorKind::NotFound,
            "no such route (the API has /rules, /rules/{destination}, /capabilities, /connections and /health)",
        )
    } else if let Some(err) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request(err.to_string())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(ErrorKind::MethodNotAllowed, "method not allowed")
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

    /// The table on [`ErrorKind`], row by row.
    #[test]
    fn statuses_by_kind() {
        for (kind, status) in [
            (ErrorKind::Malformed, 400),
            (ErrorKind::Unauthorized, 401),
            (ErrorKind::NotFound, 404),
            (ErrorKind::MethodNotAllowed, 405),
            (ErrorKind::BodyTimeout, 408),
            (ErrorKind::RuleFileInTheWay, 409),
            (ErrorKind::BodyTooLarge, 413),
            (ErrorKind::NotJson, 415),
            (ErrorKind::WrongHost, 421),
            (ErrorKind::InvalidRule, 422),
            (ErrorKind::WriteFailed, 500),
            (ErrorKind::Internal, 500),
        ] {
            assert_eq!(kind.status().as_u16(), status, "{kind:?}");
        }
    }

    #[test]
    fn answers_are_json_with_the_headers_their_status_needs() {
        let answer = ApiError::unauthorized().into_response();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(answer.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let answer = ApiError::method_not_allowed(&Method::PATCH, "GET, POST").into_response();
        assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer.headers()[header::ALLOW], "GET, POST");
        assert_eq!(
            answer.headers()[header::CONTENT_TYPE],
            "application/json",
            "{answer:?}"
        );
    }

    #[test]
    fn invalid_values_name_their_key() {
        let err = mptcp_policy::Rule::from_fields("a.example", "1", "fast", "default")
            .expect_err("no such scheduler");
        let answer = ApiError::invalid(&err);
        assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(answer.field, Some("scheduler"));
    }
}
