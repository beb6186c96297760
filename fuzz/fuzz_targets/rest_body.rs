//! The body of `POST /rules`, from anyone who can reach the REST API, through the public
//! routes (the body parser itself is private to the API module).
//!
//! Each input gets a fresh rule store on an empty file in a temporary directory, and the
//! API judges rules against a described multipath-tcp.org kernel, where every setting is
//! in effect, so that every well-formed body reaches the store.
//!
//! Properties: no panic; the status is one the API documents for a body (201 created,
//! 400, 413, 422; never 500, which would mean the file could not be written); the answer is
//! JSON, `{"error": ...}` on refusal; on 201 the answered rule is the one stored, reads back
//! through the file's parser (the REST JSON and the file agree), and the file on disk
//! parses to the policy in force.

#![no_main]

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mptcp_policy::{Flavour, KernelSupport, PmMode, Policy, Rule};
use mptcp_socks::PolicyHandle;
use mptcp_socksd::{Api, Host, KernelProbe, RuleStore, RuleView};
use serde_json::Value;
use warp::http::StatusCode;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    host: Host,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        // `KernelSupport` is non-exhaustive: start from this host's and set every field.
        let mut kernel = KernelSupport::probe();
        kernel.flavour = Flavour::Legacy;
        kernel.enabled = true;
        kernel.scheduler = Some("default".into());
        kernel.available_schedulers = ["default", "roundrobin", "redundant"]
            .map(String::from)
            .to_vec();
        kernel.path_manager = Some("fullmesh".into());
        let host = Host::new(PmMode::InKernel).kernel_probe(KernelProbe::fixed(kernel));
        Fixture { runtime, host }
    })
}

fuzz_target!(|body: &[u8]| {
    let fixture = fixture();
    // Every input starts from an empty policy and no file, in a directory of its own
    // (removed when the input is done) on tmpfs where there is one, since every accepted
    // body is written and synced to disk.
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("temporary directory");
    let path: PathBuf = dir.path().join("rules");
    let store = RuleStore::open(&path, PolicyHandle::default()).expect("open the rule store");
    let api = Api::new(store.clone()).host(fixture.host.clone());
    let filter = api.routes();
    let response = fixture.runtime.block_on(
        warp::test::request()
            .method("POST")
            .path("/rules")
            .body(body)
            .reply(&filter),
    );
    let status = response.status();
    let answer: Value = serde_json::from_slice(response.body()).unwrap_or_else(|err| {
        panic!(
            "{status}: the answer is not JSON ({err}): {:?}",
            String::from_utf8_lossy(response.body())
        )
    });
    match status {
        StatusCode::CREATED => {
            let view: RuleView = serde_json::from_value(answer.clone())
                .unwrap_or_else(|err| panic!("201 without a rule ({err}): {answer}"));
            let policy = store.policy();
            assert_eq!(policy.len(), 1, "201 but the store holds {policy:?}");
            let stored = &policy.rules()[0];
            // The answer, read back through the rule file's parser, is the stored rule.
            let enable = if view.enable { "1" } else { "0" };
            let reread = Rule::from_fields(&view.ip, enable, &view.scheduler, &view.path_manager);
            assert_eq!(reread.as_ref(), Ok(stored), "answered {answer}");
            // And the file on disk says the same.
            let text = fs::read_to_string(&path).expect("the rule file after a 201");
            let on_disk = Policy::parse(&text);
            assert_eq!(on_disk.as_ref(), Ok(&*policy), "the file reads:\n{text}");
            assert_eq!(text, policy.to_string());
        }
        StatusCode::BAD_REQUEST
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNPROCESSABLE_ENTITY => {
            assert!(
                answer.get("error").is_some_and(Value::is_string),
                "{status} without an error message: {answer}"
            );
            assert!(store.policy().is_empty(), "{status} but a rule was stored");
            assert!(!path.exists(), "{status} but the rule file was written");
        }
        other => panic!("POST /rules answered {other}: {answer}"),
    }
});
