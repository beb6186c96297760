//! The request body: collected within its limits, refused unless labelled JSON, and read
//! into a [`RuleRequest`] and then a rule through the rule file's parser.

use std::future::poll_fn;
use std::pin::pin;

use mptcp_policy::Rule;
use serde_json::{Map, Value};
use warp::http::Method;
use warp::{Buf, Filter, Rejection, Stream};

use super::error::{ApiError, ErrorKind};
use super::wire::RuleRequest;

/// Largest request body accepted. A rule is well under 1 KiB.
pub const BODY_LIMIT: usize = 16 * 1024;

/// The request body, refused with 413 beyond [`BODY_LIMIT`] without reading it all (and
/// without needing a `Content-Length`, so chunked bodies work too), with 408 if it takes
/// longer than `timeout`, and with 400 if the method takes no body (GET, HEAD, DELETE).
pub(super) fn limited_body(
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

/// The body of a rule change, checked for its type (415) and shape (400) but not yet for
/// meaning (422): see [`rule`].
pub(super) fn parse_request(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<RuleRequest, ApiError> {
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
    let keys = RuleRequest::KEYS.join(", ");
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!(
            "request body is empty; expected a JSON object with {keys}"
        )));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("malformed JSON: {err}")))?;
    let Value::Object(object) = value else {
        return Err(ApiError::bad_request(format!(
            "expected a JSON object with {keys}, got {}",
            type_name(&value)
        )));
    };
    if let Some(unknown) = object
        .keys()
        .find(|key| !RuleRequest::KEYS.contains(&key.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "unknown field `{unknown}`; expected {keys}"
        )));
    }
    Ok(RuleRequest {
        ip: optional_string(&object, "ip")?,
        enable: enable_field(&object)?,
        scheduler: optional_string(&object, "scheduler")?.unwrap_or_else(|| "default".into()),
        path_manager: optional_string(&object, "path_manager")?.unwrap_or_else(|| "default".into()),
        access: optional_string(&object, "access")?,
        via: optional_string(&object, "via")?,
    })
}

/// The rule `request` asks for at `destination`, through the rule file's parser (422,
/// naming the key, for a value it refuses).
pub(super) fn requested_rule(request: &RuleRequest, destination: &str) -> Result<Rule, ApiError> {
    request
        .to_rule(destination)
        .map_err(|err| ApiError::invalid(&err))
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
                ErrorKind::InvalidRule,
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

#[cfg(test)]
mod tests {
    use warp::http::StatusCode;

    use super::*;

    #[test]
    fn body_shapes() {
        let parse = |body: &str| parse_request(Some("application/json"), body.as_bytes());
        let fields = parse(r#"{"enable": true, "ip": "a.example"}"#).expect("valid");
        assert_eq!(fields.enable, "1");
        assert_eq!(fields.scheduler, "default");
        assert_eq!(fields.path_manager, "default");
        assert_eq!(parse(r#"{"enable": 0}"#).expect("valid").enable, "0");
        let status = |body: &str| parse(body).err().map(|e| e.status());
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
            parse_request(Some("application/xml"), b"{}")
                .err()
                .map(|e| e.status()),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        for accepted in [
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/json;charset=UTF-8",
        ] {
            assert!(
                parse_request(Some(accepted), br#"{"enable":"1"}"#).is_ok(),
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
                parse_request(refused, br#"{"enable":"1"}"#)
                    .err()
                    .map(|e| e.status()),
                Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
                "{refused:?}"
            );
        }
    }
}
