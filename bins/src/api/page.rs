//! The web page at `/`: the rules (list, add, edit, delete through the REST API), the
//! live connections with their bytes per uplink, a chart of throughput per uplink, and
//! the doctor's findings. Its files are in the binary (no CDN: the box may have no
//! working uplink when the page is needed). The page itself holds nothing secret; when
//! the API wants a token, the page asks for it and sends it with each request.

use warp::http::{HeaderValue, Method, StatusCode, header};
use warp::reply::Response;

use super::error::ApiError;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/app.css");

/// Only the page's own files and the API: no inline script, no other origin, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// `file` is `index.html`, `app.js` or `app.css`.
pub(super) fn page_handler(file: &'static str, method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return ApiError::method_not_allowed(&method, "GET").into_response();
    }
    let (body, content_type) = match file {
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => (INDEX, "text/html; charset=utf-8"),
    };
    let mut response = Response::new(body.into());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
