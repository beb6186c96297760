//! Bad input against the real daemon: each gets its clear error, and the daemon keeps
//! serving. Loopback only, a handful of connections.

mod common;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::daemon::{Daemon, curl};
use mptcp_test_support::socks::blocking::{self as socks, Answer, Target};

const USER: (&str, &str) = ("alice", "s3cret");

fn daemon_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mptcp-socksd"))
}

fn still_serves(daemon: &Daemon, echo: SocketAddr) {
    let mut stream = socks::connect(daemon.socks, Target::Addr(echo), Some(USER))
        .expect("a good client is still served");
    stream.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"ping");
}

fn fresh(daemon: &Daemon) -> TcpStream {
    TcpStream::connect(daemon.socks).expect("connect to the proxy")
}

#[test]
fn bad_clients_get_their_error_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::write(&rules, "127.0.0.1,0,default,default,access=allow,\n.\n").expect("write rules");
    let daemon = Daemon::in_process(
        ["-i", "127.0.0.1", "-p", "0", "--api", "127.0.0.1:0"]
            .map(OsString::from)
            .into_iter()
            .chain(["-u", USER.0, "-P", USER.1].map(OsString::from))
            .chain([OsString::from("--policy"), rules.clone().into()]),
    )
    .expect("daemon starts");
    let echo = mptcp_test_support::echo_server();
    still_serves(&daemon, echo);

    // A garbage greeting (an HTTP request) is dropped without a reply.
    let mut s = fresh(&daemon);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(socks::closed_within(&mut s, Duration::from_secs(5)));
    still_serves(&daemon, echo);

    // A wrong password gets the RFC 1929 failure status and a closed connection.
    let mut s = fresh(&daemon);
    let answer = socks::handshake(&mut s, Target::Addr(echo), Some((USER.0, "wrong")), 1);
    assert!(
        matches!(answer, Ok(Answer::AuthRefused(status)) if status != 0),
        "{answer:?}"
    );
    assert!(socks::closed_within(&mut s, Duration::from_secs(5)));

    // No password offered when one is required: no acceptable method (0xFF).
    let mut s = fresh(&daemon);
    let answer = socks::handshake(&mut s, Target::Addr(echo), None, 1);
    assert!(
        matches!(answer, Ok(Answer::AuthRefused(0xFF))),
        "{answer:?}"
    );

    // BIND and an undefined command: 0x07, command not supported.
    for command in [2u8, 9] {
        let mut s = fresh(&daemon);
        let answer = socks::handshake(&mut s, Target::Addr(echo), Some(USER), command);
        assert!(
            matches!(answer, Ok(Answer::Reply(7))),
            "command {command}: {answer:?}"
        );
        assert!(socks::closed_within(&mut s, Duration::from_secs(5)));
    }

    // A name that does not exist: 0x04, host unreachable.
    let mut s = fresh(&daemon);
    let answer = socks::handshake(
        &mut s,
        Target::Name("no-such-host.invalid", 80),
        Some(USER),
        1,
    );
    assert!(matches!(answer, Ok(Answer::Reply(4))), "{answer:?}");
    still_serves(&daemon, echo);

    // Malformed REST bodies: 400 for broken JSON, 422 for a bad value, a message each,
    // and the rule file untouched.
    let before = std::fs::read_to_string(&rules).expect("read rules");
    for (body, status, needle) in [
        (r#"{"enable": "1", "ip": "#, 400, "JSON"),
        (r#"{"enable": "1", "ip": "10.0.0.300"}"#, 422, "10.0.0.300"),
        (r#"{"enable": "yes", "ip": "10.0.0.3"}"#, 422, "yes"),
        (
            r#"{"enable": "1", "ip": "10.0.0.3", "scheduler": "fastest"}"#,
            422,
            "fastest",
        ),
    ] {
        let mut cmd = Command::new("curl");
        cmd.args(["-X", "POST", "--json", body])
            .arg(daemon.api_url("/rules"));
        let (got, answer) = curl(cmd).expect("curl");
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer.contains("\"error\"") && answer.contains(needle),
            "{body}: {answer}"
        );
    }
    assert_eq!(std::fs::read_to_string(&rules).expect("read rules"), before);

    // A hand edit with a bad line: reported with its line number, last good policy kept.
    std::fs::write(
        &rules,
        "127.0.0.1,1,default,default,\n127.0.0.2,1,default,fullmesh,sometimes,\n.\n",
    )
    .expect("write broken rules");
    assert!(
        daemon.wait_for_log("line 2", Duration::from_secs(10)),
        "no log line naming line 2 of the broken file"
    );
    let (status, health) = curl({
        let mut c = Command::new("curl");
        c.arg(daemon.api_url("/health"));
        c
    })
    .expect("curl health");
    assert_eq!(status, 200);
    assert!(
        health.contains("line 2") || health.contains("\"line\":2"),
        "{health}"
    );
    let (_, listed) = curl({
        let mut c = Command::new("curl");
        c.arg(daemon.api_url("/rules"));
        c
    })
    .expect("curl rules");
    assert!(
        listed.contains(r#""enable":false"#),
        "last good policy not kept: {listed}"
    );
    still_serves(&daemon, echo);
}

#[test]
fn the_daemon_refuses_to_start_on_a_broken_rule_file_naming_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::write(
        &rules,
        "# ok\n10.0.0.1,1,default,default,\n10.0.0.2,1,default\n.\n",
    )
    .expect("write rules");
    let out = daemon_bin()
        .args(["-i", "127.0.0.1", "-p", "0", "--api", "off", "--policy"])
        .arg(&rules)
        .output()
        .expect("run daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("line 3"), "{stderr}");
}

#[test]
fn a_malformed_upstream_stops_startup_with_a_message_that_keeps_the_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (upstream, needle) in [
        ("vps=socks5://box:s3cret@203.0.113.7", "needs a port"),
        (
            "vps=socks5+tls://box:s3cret@h:1080#sha256=abc",
            "64 hex digits",
        ),
        ("vps socks5://h:1080", "expected NAME="),
    ] {
        let out = daemon_bin()
            .args(["-i", "127.0.0.1", "-p", "0", "--api", "off", "--policy"])
            .arg(dir.path().join("rules"))
            .args(["--upstream", upstream])
            .output()
            .expect("run daemon");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{upstream}");
        assert!(stderr.contains(needle), "{upstream}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
}

#[test]
fn an_api_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = daemon_bin()
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "--api",
            "0.0.0.0:0",
            "--policy",
        ])
        .arg(dir.path().join("rules"))
        .env_remove("MPTCP_SOCKS_API_TOKEN")
        .output()
        .expect("run daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--api-token"), "{stderr}");
}

#[test]
fn settings_that_cannot_take_effect_are_refused_or_reported() {
    if !std::path::Path::new("/proc/sys/net/mptcp/enabled").exists() {
        mptcp_test_support::skip("no upstream MPTCP here");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    let daemon = Daemon::with_api(&rules).expect("daemon starts");
    let post = |body: &str| {
        let mut cmd = Command::new("curl");
        cmd.args(["-X", "POST", "--json", body])
            .arg(daemon.api_url("/rules"));
        curl(cmd).expect("curl")
    };
    // binder exists only on the legacy kernel; upstream ships only the default scheduler.
    let (status, body) = post(r#"{"enable": "1", "ip": "a.test", "path_manager": "binder"}"#);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("legacy"), "{body}");
    let (status, body) = post(r#"{"enable": "1", "ip": "a.test", "scheduler": "redundant"}"#);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("available: default"), "{body}");
    assert!(!rules.exists(), "a refused rule reached the file");
    // fullmesh is accepted, and reported as not in effect with the flag that fixes it.
    let (status, body) = post(r#"{"enable": "1", "ip": "a.test", "path_manager": "fullmesh"}"#);
    assert_eq!(status, 201, "{body}");
    assert!(body.contains(r#""in_effect":false"#), "{body}");
    assert!(body.contains("--path-manager userspace"), "{body}");
    let (status, caps) = curl({
        let mut c = Command::new("curl");
        c.arg(daemon.api_url("/capabilities"));
        c
    })
    .expect("curl");
    assert_eq!(status, 200);
    assert!(
        caps.contains(r#""path_manager_mode":"in-kernel""#),
        "{caps}"
    );
    assert!(caps.contains(r#""kernel":"upstream""#), "{caps}");
}

#[test]
fn password_from_a_file_and_a_forged_log_line_stays_one_escaped_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::write(&rules, "127.0.0.1,0,default,default,access=allow,\n.\n").expect("rules");
    let secret = dir.path().join("password");
    std::fs::write(&secret, format!("{}\n", USER.1)).expect("password file");
    // (MPTCP_SOCKS_PASSWORD, if set, conflicts with --password-file: clap refuses both.)
    let daemon = Daemon::in_process(
        ["-i", "127.0.0.1", "-p", "0", "--api", "off"]
            .map(OsString::from)
            .into_iter()
            .chain(["-u", USER.0, "--password-file"].map(OsString::from))
            .chain([
                secret.clone().into(),
                "--policy".into(),
                rules.clone().into(),
            ]),
    )
    .expect("daemon starts");
    let echo = mptcp_test_support::echo_server();
    still_serves(&daemon, echo);
    assert!(
        !daemon.log().contains("/proc/PID/cmdline"),
        "a password from a file needs no warning"
    );

    // A username carrying a newline, a forged log line and a terminal escape.
    let forged = "x\nINFO forged line\x1b[31m";
    let mut s = fresh(&daemon);
    let answer = socks::handshake(&mut s, Target::Addr(echo), Some((forged, "wrong")), 1);
    assert!(
        matches!(answer, Ok(socks::Answer::AuthRefused(_))),
        "{answer:?}"
    );
    assert!(daemon.wait_for_log("failed password attempts", Duration::from_secs(5)));
    let log = daemon.log();
    assert!(
        !log.lines().any(|l| l.starts_with("INFO forged")),
        "the forged line stands alone:\n{log}"
    );
    assert!(!log.contains('\x1b'), "a raw escape reached the log");
    assert!(
        log.contains("INFO forged line"),
        "the username is shown, escaped:\n{log}"
    );
}

#[test]
fn a_password_on_the_command_line_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::in_process(
        ["-i", "127.0.0.1", "-p", "0", "--api", "off"]
            .map(OsString::from)
            .into_iter()
            .chain(["-u", USER.0, "-P", USER.1].map(OsString::from))
            .chain([OsString::from("--policy"), dir.path().join("rules").into()]),
    )
    .expect("daemon starts");
    assert!(daemon.wait_for_log("/proc/PID/cmdline", Duration::from_secs(5)));
    assert!(daemon.log().contains("file-descriptor limit"));
}

#[test]
fn json_logs_are_one_object_per_line_whatever_a_client_sends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = daemon_bin()
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "--api", "off"])
        .args(["--log-format", "json", "--connect-timeout", "1", "--policy"])
        .arg(dir.path().join("rules"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run daemon");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(addr) {
            Ok(stream) => break stream,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("the daemon does not listen: {e}"),
        }
    };
    // A name with a line break, an escape and a quote, to an invalid TLD.
    let name = "a\nb\u{1b}c\".invalid";
    let mut request = vec![5, 1, 0, 5, 1, 0, 3, name.len() as u8];
    request.extend_from_slice(name.as_bytes());
    request.extend_from_slice(&80u16.to_be_bytes());
    stream.write_all(&request).expect("request");
    let mut answer = [0u8; 12];
    let _ = stream.read_exact(&mut answer);
    assert_eq!(answer[3], 4, "host unreachable: {answer:?}");
    drop(stream);
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let out = child.wait_with_output().expect("log");
    let log = String::from_utf8_lossy(&out.stderr);
    let mut saw_target = false;
    for line in log.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        if let Some(target) = event["fields"]["target"].as_str() {
            saw_target |= target.starts_with("a\\nb");
        }
    }
    assert!(
        saw_target,
        "the failed connect is logged with the escaped name:\n{log}"
    );
}
