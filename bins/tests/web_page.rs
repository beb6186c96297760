//! The web page in a real browser (Debian's headless Chromium, driven over the DevTools
//! protocol by `web_page/drive.py` with python3-websocket): it asks for the API token,
//! shows a live connection with its subflow per uplink, and a rule added through its
//! form lands in the rule file.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use mptcp_test_support::socks::blocking::{self as socks, Target};

const CHROMIUM: &str = "/usr/bin/chromium";
const PYTHON: &str = "/usr/bin/python3";
const TOKEN: &str = "page-test-token";

fn tools_available() -> bool {
    std::path::Path::new(CHROMIUM).exists()
        && Command::new(PYTHON)
            .args(["-c", "import websocket"])
            .status()
            .is_ok_and(|s| s.success())
}

/// Chromium, killed on drop.
struct Browser(std::process::Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_page_shows_a_live_connections_uplinks_and_adds_a_rule_to_the_file() {
    if !mptcp_test_support::require_mptcp() {
        return;
    }
    if !tools_available()
        && !mptcp_test_support::skip(
            "no headless browser: apt-get install chromium python3-websocket",
        )
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::write(&rules, "127.0.0.1,1,default,default,access=allow,\n.\n").expect("rules");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    let daemon = Daemon::in_process(common::daemon::loopback_args(
        &rules,
        &["--api-token-file".as_ref(), token_file.as_os_str()],
    ))
    .expect("daemon");
    let api = daemon.api.expect("api");

    // A live relayed MPTCP connection that has moved data.
    let echo = mptcp_test_support::mptcp_echo_server();
    let mut stream = socks::connect(daemon.socks, Target::Addr(echo), None).expect("through");
    common::echo_bytes(&mut stream, 256 * 1024);

    let profile = tempfile::tempdir().expect("profile");
    let browser = Browser(
        Command::new(CHROMIUM)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                // This machine's network is closed: no background lookups or updates.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("http://{api}/"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts"),
    );
    let port_file = profile.path().join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        if let Some(port) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|text| text.lines().next().map(str::to_owned))
            .filter(|line| !line.is_empty())
        {
            break port;
        }
        assert!(
            Instant::now() < deadline,
            "chromium did not open its DevTools port"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let driver = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web_page/drive.py");
    let out = Command::new(PYTHON)
        .args([driver, &port, TOKEN, "web.example"])
        .output()
        .expect("the driver runs");
    drop(browser);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "driver: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("driver JSON");
    eprintln!("the page showed: {shown:#}");
    let connections = shown["connections"].as_str().unwrap_or_default();
    assert!(
        connections.contains(&echo.to_string()) && connections.contains("127.0.0.1:"),
        "the page shows the connection and its subflow: {shown}"
    );
    assert_eq!(shown["rule_message"], "saved", "{shown}");
    let file = std::fs::read_to_string(&rules).expect("rule file");
    assert!(file.contains("web.example,0,default,default,"), "{file}");
    assert!(
        shown["legend"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.1 (lo)"),
        "the chart's legend names the uplink: {shown}"
    );
    drop(stream);
}
