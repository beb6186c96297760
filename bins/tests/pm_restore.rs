//! A daemon killed with SIGKILL in `--path-manager userspace` mode cannot restore
//! `net.mptcp.path_manager`; the next daemon in that namespace must (issue 7).
//!
//! Real kernel, real daemon binary, in a fresh network namespace of its own (always
//! removed). Needs root; skipped without it unless `CI` is set.

mod common;

use std::fs::{self, File};
use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use mptcp_test_support::netns::{Namespace, NsChild};
use mptcp_test_support::require_netns;

/// How long a daemon may take to switch or restore the sysctl (it does so at start).
const SYSCTL_WAIT: Duration = Duration::from_secs(10);

/// A namespace of this test's own (deleted on drop, with anything still running in it),
/// and what the test reads of it.
struct Netns(Namespace);

impl Netns {
    fn new() -> anyhow::Result<Self> {
        Ok(Netns(Namespace::new("pmtest")?))
    }

    fn path_manager(&self) -> anyhow::Result<String> {
        let out = self.0.exec_ok("sysctl", ["-n", "net.mptcp.path_manager"])?;
        Ok(out.trim().to_owned())
    }

    /// Waits, bounded, for the namespace's path manager to read `wanted`.
    fn wait_for(&self, wanted: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let now = self.path_manager()?;
            if now == wanted {
                return Ok(());
            }
            if start.elapsed() > SYSCTL_WAIT {
                bail!(
                    "net.mptcp.path_manager is still {now:?} after {SYSCTL_WAIT:?}, not {wanted:?}"
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The marker a userspace daemon keeps for this namespace.
    fn marker(&self) -> anyhow::Result<String> {
        let inode = self
            .0
            .exec_ok("stat", ["-L", "-c", "%i", "/proc/self/ns/net"])?;
        Ok(format!("/run/mptcp-socks/pm-{}", inode.trim()))
    }
}

/// Starts the daemon in `ns` with `--path-manager mode`, killed when the child is dropped
/// (`ip netns exec` execs it, so the child is the daemon).
fn start(ns: &Netns, mode: &str, rules: &Path, log: &Path) -> anyhow::Result<NsChild> {
    let mut cmd = ns.0.command(env!("CARGO_BIN_EXE_mptcp-socksd"));
    cmd.args(["--path-manager", mode, "-i", "127.0.0.1", "-p", "0"])
        .args(["--api", "off", "--policy"])
        .arg(rules)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(File::create(log)?)
        .stderr(File::create(log.with_extension("err"))?);
    NsChild::spawn(&mut cmd).context("starting mptcp-socksd")
}

fn logs(log: &Path) -> String {
    let out = fs::read_to_string(log).unwrap_or_default();
    let err = fs::read_to_string(log.with_extension("err")).unwrap_or_default();
    format!("{out}{err}")
}

#[test]
fn a_killed_userspace_daemon_is_cleaned_up_by_the_next_one() -> anyhow::Result<()> {
    if !require_netns() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules");
    fs::write(&rules, "")?;
    let ns = Netns::new()?;
    ensure!(
        ns.path_manager()? == "kernel",
        "a fresh namespace starts with the in-kernel path manager"
    );
    let marker = ns.marker()?;

    let first_log = dir.path().join("first.log");
    let mut first = start(&ns, "userspace", &rules, &first_log)?;
    ns.wait_for("userspace").with_context(|| logs(&first_log))?;
    // Checked last, so that on a daemon without markers the test fails on the sysctl.
    let had_marker = Path::new(&marker).exists();
    first.kill()?;
    first.wait()?;
    // Nobody ran the daemon's exit path: the namespace stays switched.
    ensure!(
        ns.path_manager()? == "userspace",
        "SIGKILL restored the sysctl?"
    );

    let second_log = dir.path().join("second.log");
    let second = start(&ns, "kernel", &rules, &second_log)?;
    ns.wait_for("kernel").with_context(|| logs(&second_log))?;
    ensure!(had_marker, "the userspace daemon kept no marker {marker}");
    ensure!(
        !Path::new(&marker).exists(),
        "marker {marker} left after recovery"
    );
    // Bounded: the warning comes right after the restore, at start.
    let start = Instant::now();
    while !logs(&second_log).contains("died without restoring") {
        ensure!(
            start.elapsed() < SYSCTL_WAIT,
            "no warning about the dead daemon: {}",
            logs(&second_log)
        );
        thread::sleep(Duration::from_millis(50));
    }
    drop(second);
    Ok(())
}

/// The daemon run in-process on threads inside a namespace: `Daemon::start` returns once
/// the namespace runs the userspace path manager (the switch is a guard of the running
/// daemon, keyed by the thread's namespace, not the process's), and stopping it puts the
/// sysctl back. The host's own namespace is never touched.
#[test]
fn an_in_process_daemon_switches_its_threads_namespace_and_restores_it_on_stop()
-> anyhow::Result<()> {
    if !require_netns() {
        return Ok(());
    }
    let host_before = fs::read_to_string("/proc/sys/net/mptcp/path_manager")?;
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules");
    fs::write(&rules, "")?;
    let ns = Netns::new()?;
    let daemon = common::daemon::Daemon::in_process_in(
        Some(ns.0.name()),
        [
            "--path-manager",
            "userspace",
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "--api",
            "off",
            "--policy",
        ]
        .map(std::ffi::OsString::from)
        .into_iter()
        .chain([rules.into_os_string()]),
    )?;
    // No waiting: start returned, so the switch has happened.
    ensure!(ns.path_manager()? == "userspace", "not switched at start");
    ensure!(
        Path::new(&ns.marker()?).exists(),
        "no marker for the namespace"
    );
    ensure!(
        fs::read_to_string("/proc/sys/net/mptcp/path_manager")? == host_before,
        "the host's namespace was switched"
    );
    daemon.stop()?;
    ensure!(ns.path_manager()? == "kernel", "not restored on stop");
    ensure!(!Path::new(&ns.marker()?).exists(), "marker left after stop");
    Ok(())
}
