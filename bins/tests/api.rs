//! The REST API, the rule store and the watcher, through the public API of the library:
//! routes driven with `warp::test` (no socket) against a store on a temporary rule file
//! and a host described by the test (kernel, path-manager mode, addresses), plus passes
//! over real sockets with the `mptcpctl` binary and a real SOCKS server.

mod common;

use common::daemon::ctl;
use mptcp_test_support::socks::blocking as socks;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mptcp_policy::{Destination, Flavour, KernelSupport, PmMode, Policy};
use mptcp_socks::{PolicyHandle, Server, ServerConfig};
use mptcp_socksd::{
    Api, Host, KernelProbe, LocalAddresses, LocalEndpoint, RuleStore, routes, serve_api,
    spawn_watcher,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use warp::http::StatusCode;

const SEED_BODY: &str =
    r#"{"enable": "0", "ip": "example.com", "path_manager": "fullmesh", "scheduler": "default"}"#;

/// Extra request headers: (name, value).
type Headers<'a> = &'a [(&'a str, &'a str)];

struct Fixture {
    _dir: TempDir,
    path: PathBuf,
    store: RuleStore,
}

fn fixture(contents: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mptcp-rules");
    if let Some(contents) = contents {
        fs::write(&path, contents).expect("write rule file");
    }
    let store = RuleStore::open(&path, PolicyHandle::default()).expect("open store");
    Fixture {
        _dir: dir,
        path,
        store,
    }
}

struct Answer {
    status: StatusCode,
    headers: warp::http::HeaderMap,
    body: Value,
}

/// A kernel as the probe would report it.
fn kernel(flavour: Flavour, schedulers: &[&str]) -> KernelSupport {
    // `KernelSupport` is non-exhaustive: start from this host's and set every field.
    let mut kernel = KernelSupport::probe();
    kernel.flavour = flavour;
    kernel.enabled = flavour != Flavour::None;
    kernel.scheduler = Some("default".into());
    kernel.available_schedulers = schedulers.iter().map(|s| s.to_string()).collect();
    kernel.path_manager = Some(
        if flavour == Flavour::Legacy {
            "fullmesh"
        } else {
            "kernel"
        }
        .into(),
    );
    kernel
}

/// Upstream Linux as shipped: only the `default` scheduler.
fn upstream(mode: PmMode) -> Host {
    Host::new(mode).kernel_probe(KernelProbe::fixed(kernel(Flavour::Upstream, &["default"])))
}

/// The multipath-tcp.org kernel, where every setting is a per-socket option.
fn legacy() -> Host {
    Host::new(PmMode::InKernel).kernel_probe(KernelProbe::fixed(kernel(
        Flavour::Legacy,
        &["default", "roundrobin", "redundant"],
    )))
}

/// The API the older tests talk to: on the legacy kernel every rule value is in effect,
/// so they see the rule store and nothing else.
async fn request(
    store: &RuleStore,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let api = Api::new(store.clone())
        .token(token.map(str::to_owned))
        .host(legacy());
    send(&api, method, path, body, headers).await
}

async fn send(
    api: &Api,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let filter = api.routes();
    let mut req = warp::test::request().method(method).path(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let response = req.reply(&filter).await;
    let body = if response.body().is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(response.body()).unwrap_or_else(|err| {
            panic!(
                "{method} {path}: response is not JSON ({err}): {:?}",
                response.body()
            )
        })
    };
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body,
    }
}

async fn call(store: &RuleStore, method: &str, path: &str, body: Option<&str>) -> Answer {
    let headers: &[(&str, &str)] = if body.is_some() {
        &[("content-type", "application/json")]
    } else {
        &[]
    };
    request(store, None, method, path, body, headers).await
}

fn error_of(answer: &Answer) -> &str {
    answer.body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {}", answer.body))
}

/// The file on disk is in the seed form and holds exactly the policy in force.
fn assert_file_in_sync(fixture: &Fixture) {
    let text = fs::read_to_string(&fixture.path).expect("read rule file");
    assert!(
        text.ends_with("\n.\n") || text == ".\n",
        "not in seed form: {text:?}"
    );
    let on_disk = Policy::parse(&text).expect("file parses");
    assert_eq!(on_disk.to_string(), text, "file is not the writer's output");
    assert_eq!(on_disk.to_string(), fixture.store.policy().to_string());
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn seed_body_creates_then_replaces() {
    let f = fixture(None);
    let answer = call(&f.store, "GET", "/rules", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, json!([]));
    assert!(!f.path.exists(), "a read must not create the file");

    let answer = call(&f.store, "POST", "/rules", Some(SEED_BODY)).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(
        answer.body,
        json!({"ip": "example.com", "enable": false, "scheduler": "default", "path_manager": "fullmesh", "access": "default", "in_effect": true})
    );
    assert_eq!(answer.headers["location"], "/rules/example.com");
    assert_eq!(
        fs::read_to_string(&f.path).expect("file created"),
        "example.com,0,default,fullmesh,\n.\n"
    );
    assert_file_in_sync(&f);

    let body = r#"{"enable": "1", "ip": "example.com", "path_manager": "ndiffports", "scheduler": "redundant"}"#;
    let answer = call(&f.store, "POST", "/rules", Some(body)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["enable"], true);
    assert_eq!(answer.body["path_manager"], "ndiffports");
    assert_file_in_sync(&f);

    let answer = call(&f.store, "GET", "/rules", None).await;
    assert_eq!(
        answer.body,
        json!([{"ip": "example.com", "enable": true, "scheduler": "redundant", "path_manager": "ndiffports", "access": "default", "in_effect": true}])
    );
}

/// What a page in a browser can send across origins without a CORS preflight (a form,
/// `fetch` with `no-cors`), or a client that labels nothing: refused, nothing written.
#[tokio::test]
async fn bodies_not_labelled_json_are_refused() {
    let f = fixture(None);
    for content_type in [
        None,
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("multipart/form-data; boundary=b"),
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|t| ("content-type", t))
            .into_iter()
            .collect();
        for (method, path) in [("POST", "/rules"), ("PUT", "/rules/example.com")] {
            let answer = request(&f.store, None, method, path, Some(SEED_BODY), &headers).await;
            assert_eq!(
                answer.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{method} {content_type:?}: {}",
                answer.body
            );
            assert!(
                error_of(&answer).contains("application/json"),
                "{}",
                answer.body
            );
        }
    }
    assert!(!f.path.exists(), "nothing was written");
    let headers = [("content-type", "application/json; charset=utf-8")];
    let answer = request(&f.store, None, "POST", "/rules", Some(SEED_BODY), &headers).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_file_in_sync(&f);
}

/// GET, HEAD and DELETE take no body: one is refused, and a DELETE with one deletes nothing.
#[tokio::test]
async fn a_body_on_a_method_that_takes_none_is_refused() {
    let f = fixture(Some("example.com,1,default,default,\n.\n"));
    for (method, path) in [
        ("GET", "/rules"),
        ("GET", "/rules/example.com"),
        ("DELETE", "/rules/example.com"),
        ("GET", "/health"),
        ("GET", "/capabilities"),
        ("GET", "/connections"),
    ] {
        let answer = call(&f.store, method, path, Some(SEED_BODY)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{method} {path}");
        assert!(
            error_of(&answer).contains("takes no body"),
            "{}",
            answer.body
        );
    }
    assert_eq!(f.store.policy().rules().len(), 1);
    let answer = call(&f.store, "DELETE", "/rules/example.com", None).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn enable_as_bool_and_number_and_defaults() {
    let f = fixture(None);
    for (body, ip, enable) in [
        (r#"{"ip": "10.0.0.1", "enable": true}"#, "10.0.0.1", true),
        (r#"{"ip": "10.0.0.2", "enable": false}"#, "10.0.0.2", false),
        (r#"{"ip": "10.0.0.3", "enable": 1}"#, "10.0.0.3", true),
        (r#"{"ip": "10.0.0.4", "enable": 0}"#, "10.0.0.4", false),
        (
            r#"{"ip": "10.0.0.5", "enable": "1", "scheduler": null}"#,
            "10.0.0.5",
            true,
        ),
    ] {
        let answer = call(&f.store, "POST", "/rules", Some(body)).await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{body}: {}",
            answer.body
        );
        assert_eq!(
            answer.body,
            json!({"ip": ip, "enable": enable, "scheduler": "default", "path_manager": "default", "access": "default", "in_effect": true})
        );
    }
    assert_file_in_sync(&f);
    let answer = call(&f.store, "GET", "/rules", None).await;
    let ips: Vec<_> = answer
        .body
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["ip"].clone())
        .collect();
    assert_eq!(
        ips,
        ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"],
        "file order"
    );
}

#[tokio::test]
async fn rules_by_destination_path() {
    let f = fixture(Some("# hand-written\n93.184.216.34,1,default,fullmesh,\n"));
    assert_eq!(f.store.policy().rules().len(), 1);

    // A prefix, with the slash encoded and plain.
    let answer = call(
        &f.store,
        "PUT",
        "/rules/10.0.0.0%2F8",
        Some(r#"{"enable": "0"}"#),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.body["ip"], "10.0.0.0/8");
    assert_eq!(answer.headers["location"], "/rules/10.0.0.0%2F8");
    assert_file_in_sync(&f);
    let answer = call(&f.store, "GET", "/rules/10.0.0.0/8", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["enable"], false);
    let body = r#"{"ip": "10.0.0.0/8", "enable": "1", "scheduler": "roundrobin"}"#;
    let answer = call(&f.store, "PUT", "/rules/10.0.0.0/8", Some(body)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["scheduler"], "roundrobin");

    // The body's ip must name the same rule as the path.
    let before = fs::read(&f.path).expect("read");
    let answer = call(
        &f.store,
        "PUT",
        "/rules/10.0.0.0/8",
        Some(r#"{"ip": "10.0.0.1", "enable": "1"}"#),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.body["field"], "ip");
    assert!(error_of(&answer).contains("10.0.0.1"), "{}", answer.body);
    assert_eq!(fs::read(&f.path).expect("read"), before);

    // Wildcards and the catch-all.
    for (path, ip) in [
        ("/rules/*.example.com", "*.example.com"),
        ("/rules/*", "*"),
        ("/rules/%2A", "*"),
    ] {
        let answer = call(&f.store, "PUT", path, Some(r#"{"enable": false}"#)).await;
        assert!(answer.status.is_success(), "{path}: {}", answer.body);
        assert_eq!(answer.body["ip"], ip);
        let answer = call(&f.store, "GET", path, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.body["ip"], ip);
    }
    assert_file_in_sync(&f);

    // Names are case-insensitive.
    call(
        &f.store,
        "PUT",
        "/rules/Example.ORG",
        Some(r#"{"enable": "1"}"#),
    )
    .await;
    assert_eq!(
        call(&f.store, "GET", "/rules/example.org", None)
            .await
            .status,
        StatusCode::OK
    );

    // Delete, then it is gone.
    let answer = call(&f.store, "DELETE", "/rules/10.0.0.0%2F8", None).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(answer.body, Value::Null);
    assert_file_in_sync(&f);
    let answer = call(&f.store, "DELETE", "/rules/10.0.0.0/8", None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(error_of(&answer).contains("10.0.0.0/8"));
    let answer = call(&f.store, "GET", "/rules/10.0.0.0/8", None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let answer = call(&f.store, "GET", "/rules/not%20a%20destination!", None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(error_of(&answer).contains("not a valid destination"));
    assert!(
        f.store
            .policy()
            .get(&"93.184.216.34".parse::<Destination>().expect("dest"))
            .is_some()
    );
}

#[tokio::test]
async fn malformed_bodies_are_refused_and_change_nothing() {
    let f = fixture(Some("192.0.2.1,1,default,default,\n.\n"));
    let before = fs::read(&f.path).expect("read");
    let cases: &[(&str, Headers<'_>, StatusCode, &str)] = &[
        (
            "not json",
            &[("content-type", "application/json")],
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            "",
            &[("content-type", "application/json")],
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        ("[1, 2]", JSON, StatusCode::BAD_REQUEST, "got an array"),
        (
            r#"{"ip": "example.com", "enable": [1]}"#,
            JSON,
            StatusCode::BAD_REQUEST,
            "`enable`",
        ),
        (
            r#"{"ip": 17, "enable": "1"}"#,
            JSON,
            StatusCode::BAD_REQUEST,
            "`ip` must be a string",
        ),
        (
            r#"{"ip": "example.com", "enable": "1", "scheduler": 3}"#,
            JSON,
            StatusCode::BAD_REQUEST,
            "`scheduler`",
        ),
        (
            r#"{"enable": "1"}"#,
            JSON,
            StatusCode::BAD_REQUEST,
            "missing field `ip`",
        ),
        (
            r#"{"ip": "example.com"}"#,
            JSON,
            StatusCode::BAD_REQUEST,
            "missing field `enable`",
        ),
        (
            r#"{"ip": "example.com", "enable": "1", "schedular": "redundant"}"#,
            JSON,
            StatusCode::BAD_REQUEST,
            "unknown field `schedular`",
        ),
        (
            r#"{"ip": "10.1.2.3/40", "enable": "1"}"#,
            JSON,
            StatusCode::UNPROCESSABLE_ENTITY,
            "10.1.2.3/40",
        ),
        (
            r#"{"ip": "2001:db8::zz", "enable": "1"}"#,
            JSON,
            StatusCode::UNPROCESSABLE_ENTITY,
            "2001:db8::zz",
        ),
        (
            r#"{"ip": "not a host!", "enable": "1"}"#,
            JSON,
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a host!",
        ),
        (
            r#"{"ip": "example.com", "enable": "1", "scheduler": "fast"}"#,
            JSON,
            StatusCode::UNPROCESSABLE_ENTITY,
            "fast",
        ),
        (
            r#"{"ip": "example.com", "enable": "1", "path_manager": "mesh"}"#,
            JSON,
            StatusCode::UNPROCESSABLE_ENTITY,
            "mesh",
        ),
        (
            r#"{"ip": "example.com", "enable": "yes"}"#,
            JSON,
            StatusCode::UNPROCESSABLE_ENTITY,
            "yes",
        ),
        (
            r#"{"ip": "example.com", "enable": 7}"#,
            JSON,
            StatusCode::UNPROCESSABLE_ENTITY,
            "7",
        ),
        (
            SEED_BODY,
            &[("content-type", "application/xml")],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not JSON",
        ),
        (
            "enable=1&ip=example.com",
            &[("content-type", "application/x-www-form-urlencoded")],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not JSON",
        ),
    ];
    for (body, headers, status, needle) in cases {
        let answer = request(&f.store, None, "POST", "/rules", Some(body), headers).await;
        assert_eq!(answer.status, *status, "{body}: {}", answer.body);
        let message = error_of(&answer);
        assert!(
            message.contains(needle),
            "{body}: message {message:?} lacks {needle:?}"
        );
        assert_eq!(
            fs::read(&f.path).expect("read"),
            before,
            "{body} touched the file"
        );
    }
    // Field names for the 422s.
    let answer = call(
        &f.store,
        "POST",
        "/rules",
        Some(r#"{"ip": "example.com", "enable": "1", "scheduler": "fast"}"#),
    )
    .await;
    assert_eq!(answer.body["field"], "scheduler");
    let answer = call(
        &f.store,
        "POST",
        "/rules",
        Some(r#"{"ip": "10.1.2.3/40", "enable": "1"}"#),
    )
    .await;
    assert_eq!(answer.body["field"], "ip");

    // Too large, with and without a usable content-length.
    let big = format!(
        r#"{{"ip": "example.com", "enable": "1", "pad": "{}"}}"#,
        "x".repeat(20_000)
    );
    let answer = call(&f.store, "POST", "/rules", Some(&big)).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_of(&answer).contains("16384"));
    assert_eq!(fs::read(&f.path).expect("read"), before);
    assert_eq!(f.store.policy().rules().len(), 1);
}

#[tokio::test]
async fn wrong_methods_and_routes() {
    let f = fixture(None);
    for (method, path, allow) in [
        ("PATCH", "/rules", "GET, POST"),
        ("DELETE", "/rules", "GET, POST"),
        ("POST", "/rules/example.com", "GET, PUT, DELETE"),
        ("POST", "/health", "GET"),
        ("POST", "/capabilities", "GET"),
        ("DELETE", "/connections", "GET"),
    ] {
        let answer = call(&f.store, method, path, None).await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(answer.headers["allow"], allow);
        assert!(error_of(&answer).contains(method));
    }
    for path in [
        "/nope",
        "/rulesx",
        "/health/x",
        "/connections/1",
        "/app.js/x",
    ] {
        let answer = call(&f.store, "GET", path, None).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert!(error_of(&answer).contains("no such route"));
    }
}

#[tokio::test]
async fn health_reports_rules_and_file() {
    let f = fixture(Some(
        "a.example,1,default,default,\nb.example,0,default,default,\n.\n",
    ));
    let answer = call(&f.store, "GET", "/health", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["status"], "ok");
    assert_eq!(answer.body["rules"], 2);
    assert_eq!(answer.body["rule_file"], f.path.display().to_string());
    assert!(answer.body.get("last_reload_error").is_none());
}

#[tokio::test]
async fn bearer_token() {
    let f = fixture(None);
    let token = Some("s3cret");
    let answer = request(&f.store, token, "GET", "/rules", None, &[]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.headers["www-authenticate"], "Bearer");
    assert!(error_of(&answer).contains("bearer token"));
    for wrong in ["Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret"] {
        let answer = request(
            &f.store,
            token,
            "GET",
            "/rules",
            None,
            &[("authorization", wrong)],
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    // Refused before the body is looked at: no file is written.
    let answer = request(&f.store, token, "POST", "/rules", Some(SEED_BODY), &[]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(!f.path.exists());

    let ok = [("authorization", "Bearer s3cret")];
    let ok_json = [
        ("authorization", "Bearer s3cret"),
        ("content-type", "application/json"),
    ];
    let answer = request(&f.store, token, "POST", "/rules", Some(SEED_BODY), &ok_json).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let answer = request(
        &f.store,
        token,
        "GET",
        "/rules",
        None,
        &[("authorization", "bearer s3cret")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);

    for path in ["/capabilities", "/connections"] {
        let answer = request(&f.store, token, "GET", path, None, &[]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
        let answer = request(&f.store, token, "GET", path, None, &ok).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
    }

    // Health answers without the token, but says no more than "ok".
    let answer = request(&f.store, token, "GET", "/health", None, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, json!({"status": "ok"}));
    let answer = request(&f.store, token, "GET", "/health", None, &ok).await;
    assert_eq!(answer.body["rules"], 1);
    // A wrong token is refused there too, not answered as if none were sent.
    for wrong in ["Bearer s3cre", "Basic s3cret", ""] {
        let headers = [("authorization", wrong)];
        let answer = request(&f.store, token, "GET", "/health", None, &headers).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{wrong:?}");
    }
    let answer = request(
        &f.store,
        token,
        "GET",
        "/health",
        None,
        &[
            ("authorization", "Bearer s3cret"),
            ("authorization", "Bearer x"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "two tokens");
}

/// DNS rebinding: a page whose name now resolves to the API's address sends that name as
/// `Host`. Only the listener's own address (and `localhost` for loopback) gets through,
/// before the token or the body are looked at.
#[tokio::test]
async fn only_hosts_naming_the_listener_are_served() {
    let f = fixture(None);
    let api = Api::new(f.store.clone())
        .host(legacy())
        .listening_on("127.0.0.1:5000".parse().expect("addr"));
    for host in ["127.0.0.1:5000", "localhost:5000"] {
        let answer = send(&api, "GET", "/rules", None, &[("host", host)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{host}");
    }
    let post_headers = |host| [("host", host), ("content-type", "application/json")];
    for host in [
        "rebind.attacker.example:5000",
        "127.0.0.1:8080",
        "127.0.0.1",
        "[::1]:5000",
        "localhost.:5000",
    ] {
        let answer = send(&api, "POST", "/rules", Some(SEED_BODY), &post_headers(host)).await;
        assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        let message = error_of(&answer);
        assert!(
            message.contains("127.0.0.1:5000") && message.contains("localhost:5000"),
            "{message}"
        );
        let answer = send(&api, "GET", "/nope", None, &[("host", host)]).await;
        assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
    }
    assert!(!f.path.exists(), "nothing was written");
    let answer = send(&api, "GET", "/health", None, &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(error_of(&answer).contains("no `Host`"));
    // An absolute request URI names the host too; it must agree with the header.
    let answer = send(
        &api,
        "GET",
        "http://evil.example:5000/health",
        None,
        &[("host", "evil.example:5000")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_nothing() {
    let f = fixture(None);
    let filter = routes(f.store.clone(), None);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let filter = filter.clone();
            tokio::spawn(async move {
                let body =
                    json!({"ip": format!("host{i}.example"), "enable": i % 2 == 0}).to_string();
                warp::test::request()
                    .method("POST")
                    .path("/rules")
                    .header("content-type", "application/json")
                    .body(body)
                    .reply(&filter)
                    .await
                    .status()
            })
        })
        .collect();
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        for task in tasks {
            assert_eq!(task.await.expect("task"), StatusCode::CREATED);
        }
    })
    .await;
    assert!(result.is_ok(), "concurrent POSTs took too long");
    let on_disk = Policy::parse(&fs::read_to_string(&f.path).expect("read")).expect("parses");
    assert_eq!(on_disk.rules().len(), 50);
    for i in 0..50 {
        let dest: Destination = format!("host{i}.example").parse().expect("dest");
        assert!(on_disk.get(&dest).is_some(), "host{i} lost");
    }
    assert_file_in_sync(&f);
}

#[tokio::test]
async fn failed_write_is_500_and_changes_nothing() {
    let f = fixture(Some("192.0.2.1,1,default,default,\n.\n"));
    // Take the directory away: the temporary file cannot be created.
    fs::remove_dir_all(f.path.parent().expect("dir")).expect("remove dir");
    let answer = call(&f.store, "POST", "/rules", Some(SEED_BODY)).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        error_of(&answer).contains("cannot write rule file"),
        "{}",
        answer.body
    );
    let answer = call(&f.store, "GET", "/rules", None).await;
    assert_eq!(
        answer.body,
        json!([{"ip": "192.0.2.1", "enable": true, "scheduler": "default", "path_manager": "default", "access": "default", "in_effect": true}])
    );
    let answer = call(&f.store, "DELETE", "/rules/192.0.2.1", None).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(f.store.policy().rules().len(), 1);
}

#[tokio::test]
async fn writes_keep_mode_and_a_pending_hand_edit() {
    let f = fixture(Some("192.0.2.1,1,default,default,\n.\n"));
    fs::set_permissions(&f.path, fs::Permissions::from_mode(0o640)).expect("chmod");
    // A hand edit the store has not reloaded yet (no watcher here) ...
    fs::write(
        &f.path,
        "192.0.2.1,1,default,default,\n192.0.2.2,0,default,default,\n.\n",
    )
    .expect("edit");
    // ... is the base of the next API change, not overwritten by it.
    let answer = call(&f.store, "POST", "/rules", Some(SEED_BODY)).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(f.store.policy().rules().len(), 3);
    assert_file_in_sync(&f);
    assert_eq!(
        fs::metadata(&f.path).expect("stat").permissions().mode() & 0o777,
        0o640
    );

    // A broken hand edit blocks API changes (409) rather than being thrown away.
    let broken = "192.0.2.1,1,default,default,\n192.0.2.3,1,fast,default,\n.\n";
    fs::write(&f.path, broken).expect("edit");
    let answer = call(&f.store, "DELETE", "/rules/192.0.2.1", None).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert!(error_of(&answer).contains("line 2"), "{}", answer.body);
    assert_eq!(fs::read_to_string(&f.path).expect("read"), broken);
    assert_eq!(f.store.policy().rules().len(), 3);
}

#[test]
fn broken_file_at_startup_is_an_error_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules");
    fs::write(
        &path,
        "192.0.2.1,1,default,default,\n192.0.2.2,7,default,default,\n.\n",
    )
    .expect("write");
    let err = RuleStore::open(&path, PolicyHandle::default()).expect_err("broken file");
    let message = err.to_string();
    assert!(message.contains("line 2"), "{message}");
    assert!(message.contains("192.0.2.2,7"), "{message}");
}

fn replace_by_rename(path: &Path, contents: &str) {
    let tmp = path.with_extension("swp");
    fs::write(&tmp, contents).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

#[tokio::test]
async fn a_file_truncated_mid_write_does_not_empty_the_policy() {
    let f = fixture(Some("192.0.2.1,1,default,default,\n.\n"));
    // What an editor writing in place leaves for an instant.
    fs::write(&f.path, "").expect("truncate");
    f.store.reload().await.expect("reload");
    assert_eq!(
        f.store.policy().rules().len(),
        1,
        "rules dropped on an empty read"
    );
    // An empty rule set written on purpose ('.') is honoured.
    fs::write(&f.path, ".\n").expect("write");
    f.store.reload().await.expect("reload");
    assert!(f.store.policy().is_empty());
}

#[tokio::test]
async fn watcher_picks_up_hand_edits_and_keeps_the_last_good_policy() {
    let f = fixture(Some("192.0.2.1,1,default,default,\n.\n"));
    let _guard = spawn_watcher(f.store.clone()).expect("watcher");
    let dest = |s: &str| s.parse::<Destination>().expect("dest");

    // An editor that replaces the file by rename.
    replace_by_rename(
        &f.path,
        "192.0.2.1,1,default,default,\n# added\n198.51.100.0/24,0,default,default,\n",
    );
    wait_for("rename edit", || {
        f.store.policy().get(&dest("198.51.100.0/24")).is_some()
    })
    .await;

    // An editor that writes in place.
    fs::write(&f.path, "203.0.113.7,0,redundant,binder,\n.\n").expect("write");
    wait_for("in-place edit", || {
        f.store.policy().get(&dest("203.0.113.7")).is_some()
    })
    .await;
    assert_eq!(f.store.policy().rules().len(), 1);

    // A broken edit: reported with its line, last good policy stays.
    fs::write(
        &f.path,
        "203.0.113.7,0,redundant,binder,\n203.0.113.8,1,sometimes,default,\n.\n",
    )
    .expect("write");
    wait_for("reload error", || f.store.last_reload_error().is_some()).await;
    let err = f.store.last_reload_error().expect("error");
    assert_eq!(err.line, Some(2));
    assert!(err.message.contains("sometimes"), "{}", err.message);
    assert_eq!(f.store.policy().rules().len(), 1);
    let answer = call(&f.store, "GET", "/health", None).await;
    assert_eq!(answer.body["last_reload_error"]["line"], 2);
    assert_eq!(answer.body["status"], "degraded", "{}", answer.body);
    let problem = answer.body["problems"][0].as_str().expect("a problem");
    assert!(problem.contains("rule file on disk is broken"), "{problem}");

    // Fixed: picked up, error cleared.
    fs::write(&f.path, "203.0.113.8,1,default,default,\n.\n").expect("write");
    wait_for("fix", || {
        f.store.policy().get(&dest("203.0.113.8")).is_some()
    })
    .await;
    wait_for("error cleared", || f.store.last_reload_error().is_none()).await;
    let answer = call(&f.store, "GET", "/health", None).await;
    assert_eq!(answer.body["status"], "ok", "{}", answer.body);

    // Our own writes do not produce reload errors and are not undone.
    for i in 0..5 {
        let body = json!({"ip": format!("198.51.100.{i}"), "enable": "1"}).to_string();
        assert_eq!(
            call(&f.store, "POST", "/rules", Some(&body)).await.status,
            StatusCode::CREATED
        );
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(f.store.last_reload_error().is_none());
    assert_eq!(f.store.policy().rules().len(), 6);
    assert_file_in_sync(&f);
}

/// The daemon's way in: `serve_api` on a real socket, driven by the `mptcpctl` binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mptcpctl_against_a_served_api() {
    let f = fixture(None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let api = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let inventory = LocalAddresses::new(vec![LocalEndpoint {
        id: 1,
        addr: "10.9.8.7".parse().expect("addr"),
        flags: vec!["subflow".into(), "signal".into()],
        ifindex: Some(1), // `lo` in every namespace
    }]);
    let server = tokio::spawn(
        Api::new(f.store.clone())
            .token(Some("tok".into()))
            .host(upstream(PmMode::InKernel).local_addresses(inventory))
            .serve(listener, async {
                let _ = stopped.await;
            }),
    );

    let api2 = api.clone();
    let results = tokio::task::spawn_blocking(move || {
        let api = api2.as_str();
        vec![
            ctl(
                &[
                    "--api",
                    api,
                    "rules",
                    "add",
                    "10.0.0.0/8",
                    "--mptcp",
                    "off",
                    "--path-manager",
                    "fullmesh",
                ],
                Some("tok"),
            ),
            ctl(&["--api", api, "rules", "add", "10.0.0.0/8"], Some("tok")),
            ctl(&["--api", api, "rules", "list"], Some("tok")),
            ctl(
                &["--api", api, "rules", "show", "10.0.0.0/8", "--json"],
                Some("tok"),
            ),
            ctl(&["--api", api, "rules", "list"], None),
            ctl(&["--api", api, "rules", "rm", "192.0.2.99"], Some("tok")),
            ctl(&["--api", api, "rules", "rm", "10.0.0.0/8"], Some("tok")),
            ctl(
                &["--api", api, "rules", "add", "x", "--scheduler", "fast"],
                Some("tok"),
            ),
            ctl(&["--api", api, "health"], Some("tok")),
            ctl(
                &[
                    "--api",
                    api,
                    "rules",
                    "add",
                    "mesh.example",
                    "--path-manager",
                    "fullmesh",
                ],
                Some("tok"),
            ),
            ctl(&["--api", api, "rules", "list"], Some("tok")),
            ctl(&["--api", api, "capabilities"], Some("tok")),
            ctl(&["--api", api, "capabilities", "--json"], Some("tok")),
            ctl(&["--api", api, "connections"], Some("tok")),
            ctl(&["--api", api, "connections", "--json"], Some("tok")),
            ctl(
                &[
                    "--api",
                    api,
                    "rules",
                    "add",
                    "b.example",
                    "--path-manager",
                    "binder",
                ],
                Some("tok"),
            ),
            ctl(
                &["--api", api, "rules", "add", "v.example", "--via", "vps"],
                Some("tok"),
            ),
            ctl(
                &["--api", api, "rules", "add", "w.example", "--via", "a b"],
                Some("tok"),
            ),
        ]
    })
    .await
    .expect("mptcpctl runs");

    let (code, _, err) = &results[results.len() - 2];
    assert_eq!(*code, Some(1), "the daemon has no upstream vps: {err}");
    assert!(err.contains("no upstream named vps is configured"), "{err}");
    let (code, _, err) = &results[results.len() - 1];
    assert_eq!(*code, Some(2), "a bad --via is a usage error: {err}");
    assert!(err.contains("upstream name"), "{err}");

    let (code, out, err) = &results[0];
    assert_eq!(*code, Some(0), "{err}");
    assert!(
        out.contains("added rule for 10.0.0.0/8: MPTCP off"),
        "{out}"
    );
    let (code, out, _) = &results[1];
    assert_eq!(*code, Some(0));
    assert!(
        out.contains("replaced rule for 10.0.0.0/8: MPTCP on"),
        "{out}"
    );
    let (code, out, _) = &results[2];
    assert_eq!(*code, Some(0));
    assert!(out.trim_start().starts_with("DESTINATION"), "{out}");
    assert!(!out.contains('!'), "every rule is in effect: {out}");
    assert!(out.contains("10.0.0.0/8") && out.contains(" on "), "{out}");
    let (code, out, _) = &results[3];
    assert_eq!(*code, Some(0));
    let shown: Value = serde_json::from_str(out).expect("json output");
    assert_eq!(shown["ip"], "10.0.0.0/8");
    let (code, _, err) = &results[4];
    assert_eq!(*code, Some(1), "no token");
    assert!(err.contains("bearer token") && err.contains("401"), "{err}");
    let (code, _, err) = &results[5];
    assert_eq!(*code, Some(1));
    assert!(err.contains("no rule for 192.0.2.99"), "{err}");
    let (code, out, _) = &results[6];
    assert_eq!(*code, Some(0));
    assert!(out.contains("removed rule for 10.0.0.0/8"), "{out}");
    let (code, _, err) = &results[7];
    assert_eq!(*code, Some(2), "usage error: {err}");
    let (code, out, _) = &results[8];
    assert_eq!(*code, Some(0));
    assert!(out.starts_with("ok") && out.contains("0 rule(s)"), "{out}");

    // A rule accepted but not in effect in the in-kernel mode, and why.
    let (code, out, err) = &results[9];
    assert_eq!(*code, Some(0), "{err}");
    assert!(out.contains("added rule for mesh.example"), "{out}");
    assert!(
        out.contains("not in effect here") && out.contains("--path-manager userspace"),
        "{out}"
    );
    let (code, out, _) = &results[10];
    assert_eq!(*code, Some(0));
    let marked = out
        .lines()
        .find(|l| l.contains("mesh.example"))
        .expect("listed");
    assert!(marked.starts_with('!'), "{out}");
    assert!(
        out.contains("not (fully) in effect")
            && out.contains("mesh.example: path manager fullmesh"),
        "{out}"
    );

    // The host, readably and as JSON.
    let (code, out, err) = &results[11];
    assert_eq!(*code, Some(0), "{err}");
    for needle in [
        "upstream MPTCP, enabled",
        "in-kernel (daemon); namespace: kernel",
        "default (available: default)",
        "10.9.8.7",
        "lo",
        "subflow,signal",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from {out}");
    }
    let (code, out, _) = &results[12];
    assert_eq!(*code, Some(0));
    let caps: Value = serde_json::from_str(out).expect("json output");
    assert_eq!(caps["path_manager_mode"], "in-kernel");
    assert_eq!(caps["local_addresses"][0]["interface"], "lo");

    let (code, out, err) = &results[13];
    assert_eq!(*code, Some(0), "{err}");
    assert_eq!(out.trim(), "no live connections");
    let (code, out, _) = &results[14];
    assert_eq!(*code, Some(0));
    assert_eq!(serde_json::from_str::<Value>(out).expect("json"), json!([]));

    // Refused on upstream Linux, with the API's reason.
    let (code, _, err) = &results[15];
    assert_eq!(*code, Some(1));
    assert!(err.contains("binder") && err.contains("422"), "{err}");
    assert_file_in_sync(&f);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops on shutdown")
        .expect("server task");

    // Nobody listening any more: exit code 3, naming the address.
    let (code, _, err) = tokio::task::spawn_blocking(move || ctl(&["--api", &api, "health"], None))
        .await
        .expect("mptcpctl runs");
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("127.0.0.1") && err.contains("running"),
        "{err}"
    );
}

/// A chunked body (no Content-Length) over the limit is cut off with 413, not read whole.
#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let f = fixture(None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_api(listener, f.store.clone(), None, async {
        let _ = stopped.await;
    }));

    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST /rules HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let chunk = "x".repeat(4096);
        for _ in 0..5 {
            let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
            if stream.write_all(framed.as_bytes()).await.is_err() {
                break; // the server may hang up once it has answered
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("answer in time");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than 16384 bytes"), "{answer}");
    assert!(!f.path.exists());

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
}

fn api_on(f: &Fixture, host: Host) -> Api {
    Api::new(f.store.clone()).host(host)
}

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

#[tokio::test]
async fn rules_this_kernel_cannot_carry_out_are_422_and_change_nothing() {
    let f = fixture(Some("192.0.2.1,1,default,default,\n.\n"));
    let api = api_on(&f, upstream(PmMode::Userspace));
    let before = fs::read(&f.path).expect("read");
    for (method, path, body, field, needles) in [
        (
            "POST",
            "/rules",
            r#"{"ip": "b.example", "enable": "1", "path_manager": "binder"}"#,
            "path_manager",
            &["binder", "legacy"][..],
        ),
        (
            "POST",
            "/rules",
            r#"{"ip": "r.example", "enable": "1", "scheduler": "roundrobin"}"#,
            "scheduler",
            &["roundrobin", "available: default"][..],
        ),
        (
            "PUT",
            "/rules/192.0.2.1",
            r#"{"enable": "1", "scheduler": "redundant"}"#,
            "scheduler",
            &["redundant", "available: default"][..],
        ),
        (
            "PUT",
            "/rules/192.0.2.1",
            r#"{"enable": "1", "scheduler": "redundant", "path_manager": "binder"}"#,
            "scheduler",
            &["available: default", "binder"][..],
        ),
    ] {
        let answer = send(&api, method, path, Some(body), JSON).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            answer.body
        );
        assert_eq!(answer.body["field"], field, "{body}");
        for needle in needles {
            assert!(
                error_of(&answer).contains(needle),
                "{needle}: {}",
                answer.body
            );
        }
        assert_eq!(
            fs::read(&f.path).expect("read"),
            before,
            "{body} touched the file"
        );
    }
    assert_eq!(f.store.policy().rules().len(), 1);

    // With MPTCP off neither scheduler nor path manager applies: nothing to refuse.
    let body = r#"{"ip": "off.example", "enable": "0", "scheduler": "redundant", "path_manager": "binder"}"#;
    let answer = send(&api, "POST", "/rules", Some(body), JSON).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.body["in_effect"], true);
    assert_file_in_sync(&f);
}

#[tokio::test]
async fn per_connection_path_managers_need_the_userspace_mode() {
    let f = fixture(None);
    let in_kernel = api_on(&f, upstream(PmMode::InKernel));
    for (dest, pm) in [
        ("mesh.example", "fullmesh"),
        ("ports.example", "ndiffports:3"),
    ] {
        let body = json!({"ip": dest, "enable": "1", "path_manager": pm}).to_string();
        let answer = send(&in_kernel, "POST", "/rules", Some(&body), JSON).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        assert_eq!(answer.body["path_manager"], pm);
        assert_eq!(answer.body["in_effect"], false, "{}", answer.body);
        let reasons = answer.body["not_in_effect"].as_array().expect("reasons");
        assert_eq!(reasons.len(), 1, "{}", answer.body);
        assert!(
            reasons[0]
                .as_str()
                .expect("text")
                .contains("--path-manager userspace"),
            "{}",
            answer.body
        );
    }
    let answer = send(&in_kernel, "GET", "/rules", None, &[]).await;
    for rule in answer.body.as_array().expect("array") {
        assert_eq!(rule["in_effect"], false, "{rule}");
        assert!(
            rule["not_in_effect"][0].as_str().expect("reason").contains(
                rule["path_manager"]
                    .as_str()
                    .expect("pm")
                    .split(':')
                    .next()
                    .expect("kind")
            )
        );
    }
    let answer = send(&in_kernel, "GET", "/rules/mesh.example", None, &[]).await;
    assert_eq!(answer.body["in_effect"], false);

    // The same rules, the daemon running the userspace path manager: in effect.
    let userspace = api_on(&f, upstream(PmMode::Userspace));
    let answer = send(&userspace, "GET", "/rules", None, &[]).await;
    for rule in answer.body.as_array().expect("array") {
        assert_eq!(rule["in_effect"], true, "{rule}");
        assert!(rule.get("not_in_effect").is_none(), "{rule}");
    }
    let answer = send(&userspace, "GET", "/rules/ports.example", None, &[]).await;
    assert_eq!(answer.body["in_effect"], true);
    assert_file_in_sync(&f);
}

#[tokio::test]
async fn on_the_legacy_kernel_everything_is_in_effect() {
    let f = fixture(None);
    let api = api_on(&f, legacy());
    for (i, (scheduler, pm)) in [
        ("roundrobin", "binder"),
        ("redundant", "fullmesh"),
        ("default", "ndiffports:4"),
    ]
    .into_iter()
    .enumerate()
    {
        let body = json!({"ip": format!("h{i}.example"), "enable": "1", "scheduler": scheduler, "path_manager": pm}).to_string();
        let answer = send(&api, "POST", "/rules", Some(&body), JSON).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        assert_eq!(answer.body["in_effect"], true, "{}", answer.body);
    }
    let answer = send(&api, "GET", "/rules", None, &[]).await;
    assert_eq!(answer.body.as_array().expect("array").len(), 3);
    assert!(
        answer
            .body
            .as_array()
            .expect("array")
            .iter()
            .all(|r| r["in_effect"] == true),
        "{}",
        answer.body
    );

    // Without MPTCP, rules are accepted and reported: connections are plain TCP.
    let none =
        Host::new(PmMode::InKernel).kernel_probe(KernelProbe::fixed(kernel(Flavour::None, &[])));
    let answer = send(&api_on(&f, none), "GET", "/rules/h0.example", None, &[]).await;
    assert_eq!(answer.body["in_effect"], false);
    assert!(
        answer.body["not_in_effect"][0]
            .as_str()
            .expect("reason")
            .contains("plain TCP"),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn capabilities_describe_the_host_and_follow_the_inventory() {
    let f = fixture(None);
    let inventory = LocalAddresses::default();
    let api = api_on(
        &f,
        upstream(PmMode::Userspace).local_addresses(inventory.clone()),
    );
    let answer = send(&api, "GET", "/capabilities", None, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.body,
        json!({
            "kernel": "upstream",
            "mptcp_enabled": true,
            "path_manager_mode": "userspace",
            "kernel_path_manager": "kernel",
            "scheduler": "default",
            "available_schedulers": ["default"],
            "local_addresses": [],
            "notes": ["the daemon runs the userspace path manager but the namespace's is kernel (sysctl -w net.mptcp.path_manager=userspace)"],
        })
    );

    // The daemon refreshes the inventory; the next answer shows it.
    inventory.set(vec![
        LocalEndpoint {
            id: 1,
            addr: "10.0.1.1".parse().expect("addr"),
            flags: vec!["subflow".into()],
            ifindex: Some(1),
        },
        LocalEndpoint {
            id: 2,
            addr: "2001:db8::2".parse().expect("addr"),
            flags: vec!["signal".into(), "backup".into()],
            ifindex: None,
        },
    ]);
    let answer = send(&api, "GET", "/capabilities", None, &[]).await;
    assert_eq!(
        answer.body["local_addresses"],
        json!([
            {"id": 1, "addr": "10.0.1.1", "flags": ["subflow"], "interface": "lo", "ifindex": 1},
            {"id": 2, "addr": "2001:db8::2", "flags": ["signal", "backup"], "interface": null, "ifindex": null},
        ])
    );

    // Probed live: this machine.
    let live = Api::new(f.store.clone());
    let answer = send(&live, "GET", "/capabilities", None, &[]).await;
    let probed = KernelSupport::probe();
    assert_eq!(answer.body["kernel"], probed.flavour.as_str());
    assert_eq!(answer.body["mptcp_enabled"], probed.enabled);
    assert_eq!(answer.body["path_manager_mode"], "in-kernel");
    assert_eq!(
        answer.body["available_schedulers"],
        json!(probed.available_schedulers)
    );
}

#[tokio::test]
async fn no_connections_is_an_empty_list() {
    let f = fixture(None);
    let answer = send(&Api::new(f.store.clone()), "GET", "/connections", None, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, json!([]));
}

/// Everything logged at WARN and above by any test of this binary, for the tests that
/// check a warning (the store logs from blocking threads, so a thread-local subscriber
/// would not see it).
fn logs() -> String {
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let buffer = LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        buffer
    });
    String::from_utf8_lossy(&buffer.lock().expect("log buffer")).into_owned()
}

#[tokio::test]
async fn a_rule_file_for_another_host_loads_with_a_warning_per_line() {
    logs(); // install the capturing subscriber first
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules-from-elsewhere");
    fs::write(
        &path,
        "# written on a legacy kernel\n198.51.100.1,1,roundrobin,default,\n198.51.100.2,1,default,binder,\n198.51.100.3,1,default,default,\n.\n",
    )
    .expect("write");
    let probe = KernelProbe::fixed(kernel(Flavour::Upstream, &["default"]));
    let store = RuleStore::open_with(&path, PolicyHandle::default(), probe.clone()).expect("loads");
    assert_eq!(store.policy().rules().len(), 3, "every rule is loaded");

    let ours = |logs: &str| -> Vec<String> {
        logs.lines()
            .filter(|l| l.contains(&*path.to_string_lossy()))
            .map(str::to_owned)
            .collect()
    };
    let warned = ours(&logs());
    assert_eq!(warned.len(), 2, "{warned:#?}");
    assert!(warned[0].contains("WARN"), "{}", warned[0]);
    assert!(
        warned[0].contains("line 2")
            && warned[0].contains("roundrobin")
            && warned[0].contains("available: default"),
        "{}",
        warned[0]
    );
    assert!(
        warned[1].contains("line 3") && warned[1].contains("binder"),
        "{}",
        warned[1]
    );

    // The API shows those rules as not in effect (connections use the namespace's
    // scheduler), and refuses to add such a rule itself.
    let api = Api::new(store.clone()).host(Host::new(PmMode::InKernel).kernel_probe(probe));
    let answer = send(&api, "GET", "/rules", None, &[]).await;
    let in_effect: Vec<_> = answer
        .body
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["in_effect"].clone())
        .collect();
    assert_eq!(in_effect, [json!(false), json!(false), json!(true)]);
    assert!(
        answer.body[0]["not_in_effect"][0]
            .as_str()
            .expect("reason")
            .contains("connections use default"),
        "{}",
        answer.body
    );

    // A hand edit picked up by a reload warns about its own lines.
    fs::write(
        &path,
        "198.51.100.3,1,default,default,\n198.51.100.4,1,redundant,default,\n.\n",
    )
    .expect("write");
    store.reload().await.expect("reloads");
    assert_eq!(store.policy().rules().len(), 2);
    let warned = ours(&logs());
    assert_eq!(warned.len(), 3, "{warned:#?}");
    assert!(
        warned[2].contains("line 2") && warned[2].contains("redundant"),
        "{}",
        warned[2]
    );
}

/// A real SOCKS server on loopback relays one connection; the API lists it with its
/// subflow and traffic, and so does `mptcpctl connections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_connections_through_a_real_socks_server() {
    let f = fixture(Some("127.0.0.1,1,default,default,access=allow,\n.\n"));

    // An echo server that speaks MPTCP (a plain TCP one would make the connection fall
    // back), on a thread of its own.
    let echo = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::MPTCP),
    )
    .or_else(|_| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None))
    .expect("echo socket");
    echo.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .expect("addr")
            .into(),
    )
    .expect("bind");
    echo.listen(4).expect("listen");
    let echo: std::net::TcpListener = echo.into();
    let echo_addr = echo.local_addr().expect("addr");
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = echo.accept() {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });

    let socks_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxy = socks_listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let socks_server =
        Server::new(ServerConfig::default(), f.store.handle().clone()).expect("server");
    let api = Api::new(f.store.clone()).server(socks_server.clone());
    let connections = socks_server.connections().clone();
    let server = tokio::spawn(async move {
        socks_server
            .serve(socks_listener, async {
                let _ = stopped.await;
            })
            .await;
    });

    // Relay 256 KiB each way and keep the connection open.
    const SIZE: usize = 256 * 1024;
    let client = tokio::task::spawn_blocking(move || {
        let mut stream =
            socks::connect(proxy, socks::Target::Addr(echo_addr), None).expect("socks connect");
        let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        let mut writer = stream.try_clone().expect("clone");
        let sender = std::thread::spawn(move || writer.write_all(&data));
        let mut back = vec![0u8; SIZE];
        stream.read_exact(&mut back).expect("echoed");
        sender.join().expect("sender").expect("sent");
        assert!(back.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        stream
    })
    .await
    .expect("client");
    let client_addr = client.local_addr().expect("addr");

    let answer = send(&api, "GET", "/connections", None, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let list = answer.body.as_array().expect("array");
    assert_eq!(list.len(), 1, "{}", answer.body);
    let c = &list[0];
    assert_eq!(c["client"], client_addr.to_string());
    assert_eq!(c["target"], echo_addr.to_string());
    assert_eq!(c["remote"], echo_addr.to_string());
    assert_eq!(c["rule"], "127.0.0.1");
    assert!(c["age_s"].as_u64().is_some(), "{c}");
    let kernel = KernelSupport::probe();
    let mptcp_here = kernel.flavour == Flavour::Upstream && kernel.enabled;
    if mptcp_here {
        assert_eq!(c["transport"], "mptcp", "{c}");
        assert!(c["token"].as_u64().is_some(), "{c}");
        let subflows = c["subflows"].as_array().expect("subflows");
        assert_eq!(subflows.len(), 1, "{c}");
        assert_eq!(subflows[0]["remote"], echo_addr.to_string());
        assert!(
            subflows[0]["bytes_acked"].as_u64().expect("acked") >= SIZE as u64,
            "{c}"
        );
        assert!(
            subflows[0]["bytes_received"].as_u64().expect("received") >= SIZE as u64,
            "{c}"
        );
        assert!(subflows[0]["rtt_ms"].as_f64().is_some(), "{c}");
    } else {
        assert_ne!(c["transport"], "mptcp", "{c}");
    }

    // The same through the CLI.
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let api_url = format!("http://{}", api_listener.local_addr().expect("addr"));
    let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api_server = tokio::spawn(api.clone().serve(api_listener, async {
        let _ = api_stopped.await;
    }));
    let (code, out, err) =
        tokio::task::spawn_blocking(move || ctl(&["--api", &api_url, "connections"], None))
            .await
            .expect("mptcpctl runs");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("ID"), "{out}");
    assert!(out.contains(&echo_addr.to_string()), "{out}");
    assert!(out.contains("127.0.0.1"), "{out}");
    if mptcp_here {
        let subflow = out
            .lines()
            .find(|l| l.contains(" -> "))
            .unwrap_or_else(|| panic!("no subflow line in {out}"));
        assert!(subflow.contains("100%") && subflow.contains("KiB"), "{out}");
    }
    let _ = api_stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), api_server).await;

    // Closed: gone from the list.
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connections.is_empty() {
        assert!(
            Instant::now() < deadline,
            "connection still listed after close"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let answer = send(&api, "GET", "/connections", None, &[]).await;
    assert_eq!(answer.body, json!([]));

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
}

#[tokio::test]
async fn access_is_set_through_the_rule_files_parser() {
    let f = fixture(None);
    let body = r#"{"ip": "127.0.0.1", "enable": "0", "access": "allow"}"#;
    let answer = call(&f.store, "POST", "/rules", Some(body)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.body["access"], "allow");
    let body = r#"{"ip": "10.0.0.0/8", "enable": "1", "access": "deny"}"#;
    assert_eq!(
        call(&f.store, "POST", "/rules", Some(body)).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        fs::read_to_string(&f.path).expect("file"),
        "127.0.0.1,0,default,default,access=allow,\n10.0.0.0/8,1,default,default,access=deny,\n.\n"
    );
    assert_file_in_sync(&f);
    // Left out: the default, and the seed's form on disk.
    let body = r#"{"ip": "10.0.0.0/8", "enable": "1"}"#;
    let answer = call(&f.store, "POST", "/rules", Some(body)).await;
    assert_eq!(answer.body["access"], "default");
    assert!(
        !fs::read_to_string(&f.path)
            .expect("file")
            .contains("10.0.0.0/8,1,default,default,access")
    );
    for bad in [
        r#"{"ip": "10.0.0.1", "enable": "1", "access": "maybe"}"#,
        r#"{"ip": "10.0.0.1", "enable": "1", "access": 1}"#,
    ] {
        let answer = call(&f.store, "POST", "/rules", Some(bad)).await;
        assert!(answer.status.is_client_error(), "{bad}: {}", answer.status);
        assert!(
            error_of(&answer).contains("access"),
            "{bad}: {}",
            answer.body
        );
    }
    assert!(
        f.store
            .policy()
            .get(&"10.0.0.1".parse().expect("dest"))
            .is_none()
    );
}

/// `via` goes through the API into the rule file and back, a seed-shaped body leaves it
/// out, and until chaining is built a rule with an upstream says it is not in effect.
#[tokio::test]
async fn via_must_name_a_configured_upstream_and_is_written_to_the_file() {
    let f = fixture(None);
    let config = ServerConfig {
        upstreams: vec!["vps=socks5://192.0.2.1:1080".parse().expect("upstream")],
        ..ServerConfig::default()
    };
    let server = Server::new(config, f.store.handle().clone()).expect("server");
    let api = Api::new(f.store.clone()).server(server);
    let json = [("content-type", "application/json")];
    let body = r#"{"ip": "10.0.0.0/8", "enable": "1", "via": "auto:vps"}"#;
    let answer = send(&api, "POST", "/rules", Some(body), &json).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.body["via"], "auto:vps");
    assert_eq!(answer.body["in_effect"], true, "{}", answer.body);
    assert_eq!(
        fs::read_to_string(&f.path).expect("file"),
        "10.0.0.0/8,1,default,default,via=auto:vps,\n.\n"
    );
    assert_file_in_sync(&f);

    // `direct` is the default: not written, not answered.
    let body = r#"{"ip": "10.0.0.0/8", "enable": "1", "via": "direct"}"#;
    let answer = send(&api, "POST", "/rules", Some(body), &json).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.get("via").is_none(), "{}", answer.body);
    assert_eq!(
        fs::read_to_string(&f.path).expect("file"),
        "10.0.0.0/8,1,default,default,\n.\n"
    );

    for bad in [
        "",
        "auto:",
        "a,b",
        "x=y",
        "direct2 x",
        "other",
        "auto:other",
    ] {
        let body = json!({"ip": "10.0.0.0/8", "enable": "1", "via": bad}).to_string();
        let answer = send(&api, "POST", "/rules", Some(&body), &json).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
        assert_eq!(answer.body["field"], "via", "{bad:?}: {}", answer.body);
    }
    let answer = send(
        &api,
        "POST",
        "/rules",
        Some(r#"{"ip": "a.org", "enable": "1", "via": "other"}"#),
        &json,
    )
    .await;
    assert_eq!(
        error_of(&answer),
        "no upstream named other is configured (it has vps); start mptcp-socksd with --upstream other=URL"
    );
    assert_eq!(
        fs::read_to_string(&f.path).expect("file"),
        "10.0.0.0/8,1,default,default,\n.\n",
        "a refused via changed the file"
    );

    // A rule file may name an upstream the daemon lacks (written for another start):
    // it loads, and the rule is shown not in effect, its connections going direct.
    fs::write(&f.path, "10.0.0.0/8,1,default,default,via=gone\n").expect("write");
    f.store.reload().await.expect("reload");
    let answer = send(&api, "GET", "/rules", None, &[]).await;
    let rule = &answer.body[0];
    assert_eq!(rule["in_effect"], false, "{rule}");
    assert!(
        rule["not_in_effect"][0].as_str().expect("reason").contains(
            "no upstream named gone is configured, so connections to this destination go direct"
        ),
        "{rule}"
    );
}

#[tokio::test]
async fn the_page_is_served_without_a_token_with_a_strict_content_policy() {
    let f = fixture(None);
    let api = Api::new(f.store.clone()).token(Some("tok".into()));
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
    ] {
        let answer = warp::test::request()
            .method("GET")
            .path(path)
            .reply(&api.routes())
            .await;
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        let header = |name: &str| answer.headers()[name].to_str().unwrap().to_owned();
        assert!(header("content-type").starts_with(kind), "{path}");
        let csp = header("content-security-policy");
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
    }
    // What the page shows still needs the token.
    for path in ["/rules", "/connections", "/metrics", "/doctor"] {
        let answer = send(&api, "GET", path, None, &[]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
    }
}
