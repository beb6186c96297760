//! Whether the tests that need the real kernel can run on this machine.

use std::process::Command;
use std::sync::OnceLock;

/// Decides whether a namespace test may run here. Returns `true` if it can. Otherwise it
/// prints why and returns `false` (the test should return early) — unless the `CI`
/// environment variable is set, in which case a missing capability is a failure and this
/// panics with the reason: CI must never silently skip the end-to-end tests.
///
/// What it needs: Linux, root (`ip netns`, `tc` and `ip mptcp` need CAP_NET_ADMIN and
/// CAP_SYS_ADMIN), working `ip netns` and `tc` (iproute2), and a kernel with MPTCP
/// (`CONFIG_MPTCP`, Linux 5.6+). Checked once per test binary.
pub fn require_netns() -> bool {
    static MISSING: OnceLock<Option<String>> = OnceLock::new();
    match MISSING.get_or_init(missing_capability) {
        None => true,
        Some(reason) if std::env::var_os("CI").is_some() => {
            panic!(
                "network-namespace tests cannot run, and CI is set so they may not be skipped: {reason}"
            )
        }
        Some(reason) => {
            eprintln!(
                "skipping network-namespace test: {reason} (set CI=1 to make this a failure)"
            );
            false
        }
    }
}

/// For a test that cannot run on this machine for `reason`: prints why and returns
/// `false` (the test returns early), or, when the `CI` environment variable is set,
/// panics with the reason, since CI must never pass by skipping.
///
/// ```
/// # fn test() {
/// if !std::path::Path::new("/proc/sys/net/mptcp").exists() {
///     mptcp_test_support::skip("this kernel has no MPTCP");
///     return;
/// }
/// # }
/// ```
pub fn skip(reason: &str) -> bool {
    assert!(
        std::env::var_os("CI").is_none(),
        "this test cannot run here, and CI is set so it may not be skipped: {reason}"
    );
    eprintln!("skipping: {reason} (set CI=1 to make this a failure)");
    false
}

/// Whether this network namespace can open MPTCP sockets (upstream Linux MPTCP with
/// `net.mptcp.enabled=1`); otherwise [`skip`] with the reason.
pub fn require_mptcp() -> bool {
    let enabled =
        std::fs::read_to_string("/proc/sys/net/mptcp/enabled").is_ok_and(|s| s.trim() == "1");
    enabled || skip("this kernel has no upstream MPTCP enabled")
}

/// Whether the test runs as root; otherwise [`skip`] with `why` it needs root.
pub fn require_root(why: &str) -> bool {
    crate::sys::is_root() || skip(&format!("needs root {why}"))
}

/// The first thing [`require_netns`] needs that this machine lacks, if any.
fn missing_capability() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("network namespaces need Linux".into());
    }
    if !crate::sys::is_root() {
        return Some(
            "not running as root (ip netns, tc and ip mptcp need CAP_NET_ADMIN / CAP_SYS_ADMIN)"
                .into(),
        );
    }
    for (program, args) in [("ip", &["netns", "list"][..]), ("tc", &["-V"][..])] {
        match Command::new(program).args(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Some(format!(
                    "`{program} {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Err(e) => return Some(format!("cannot run `{program}` (iproute2): {e}")),
        }
    }
    if !std::path::Path::new("/proc/sys/net/mptcp/enabled").exists() {
        return Some(
            "the kernel has no MPTCP (/proc/sys/net/mptcp missing; needs CONFIG_MPTCP, Linux 5.6+)"
                .into(),
        );
    }
    None
}
