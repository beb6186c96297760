//! The rule file as the daemon trusts it (sshd's StrictModes), and the watcher settling
//! after a change: against the real daemon binary, and through the library's store and
//! watcher. Loopback only.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::daemon::{Daemon, curl};
use mptcp_policy::Destination;
use mptcp_socks::PolicyHandle;
use mptcp_socksd::{RuleStore, spawn_watcher};

/// An owner nobody on a test host is.
const STRANGER: u32 = 4242;

const RULES: &str = "192.0.2.1,1,default,default,\n.\n";

/// How long a daemon that refuses its rule file may take to say so and exit.
const EXIT_WAIT: Duration = Duration::from_secs(20);

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Whether the test may chown: skipped with a reason otherwise, except under CI.
fn can_chown(test: &str) -> bool {
    mptcp_test_support::require_root(&format!("for {test} (to chown to uid {STRANGER})"))
}

/// Runs the daemon on `policy` expecting it to exit, within [`EXIT_WAIT`].
fn run_to_exit(policy: &Path) -> anyhow::Result<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mptcp-socksd"))
        .args(["-i", "127.0.0.1", "-p", "0", "--api", "off", "--policy"])
        .arg(policy)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning mptcp-socksd")?;
    let deadline = Instant::now() + EXIT_WAIT;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            bail!("mptcp-socksd kept running on {}", policy.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

fn post_rule(daemon: &Daemon, ip: &str) -> anyhow::Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-X", "POST", "-H", "content-type: application/json", "-d"])
        .arg(format!(
            r#"{{"enable": "0", "ip": "{ip}", "path_manager": "default", "scheduler": "default"}}"#
        ))
        .arg(daemon.api_url("/rules"));
    curl(cmd)
}

#[test]
fn a_link_in_a_directory_others_can_write_is_not_written_through() -> anyhow::Result<()> {
    let links = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let shared = links.path().join("shared");
    fs::create_dir(&shared)?;
    let real = files.path().join("real");
    fs::write(&real, RULES)?;
    let link = shared.join("rules");
    symlink(&real, &link)?;
    let daemon = Daemon::with_api(&link)?;

    // Anyone may now point the link at, say, a root-owned file elsewhere.
    chmod(&shared, 0o777);
    let (status, body) = post_rule(&daemon, "198.51.100.1")?;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("refusing the rule file"), "{body}");
    assert!(body.contains(&shared.display().to_string()), "{body}");
    assert!(body.contains("0777"), "{body}");
    assert_eq!(fs::read_to_string(&real)?, RULES, "the target was written");
    assert!(fs::symlink_metadata(&link)?.file_type().is_symlink());

    // Safe again: the write replaces the target, in its own directory; the link stays.
    chmod(&shared, 0o755);
    let (status, body) = post_rule(&daemon, "198.51.100.1")?;
    assert_eq!(status, 201, "{body}");
    assert!(fs::read_to_string(&real)?.contains("198.51.100.1,0,"));
    assert!(fs::symlink_metadata(&link)?.file_type().is_symlink());
    let mut left: Vec<_> = fs::read_dir(files.path())?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    left.sort();
    assert_eq!(left, ["real"], "a temporary file was left behind");
    Ok(())
}

#[test]
fn a_rule_file_owned_by_another_user_in_a_shared_directory_is_refused_at_start()
-> anyhow::Result<()> {
    if !can_chown("a_rule_file_owned_by_another_user_in_a_shared_directory_is_refused_at_start") {
        return Ok(());
    }
    let top = tempfile::tempdir()?;
    let shared = top.path().join("shared");
    fs::create_dir(&shared)?;
    chmod(&shared, 0o777);
    let rules = shared.join("rules");
    // Its content must never show, not even as an excerpt of a parse error.
    fs::write(&rules, "SECRET LINE,1,default,default,\n")?;
    chown(&rules, Some(STRANGER), None)?;

    let out = run_to_exit(&rules)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on an unsafe file: {stderr}");
    assert!(stderr.contains("refusing the rule file"), "{stderr}");
    assert!(stderr.contains(&shared.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("mode 0777") && stderr.contains("not sticky"),
        "{stderr}"
    );
    assert!(!stderr.contains("SECRET"), "{stderr}");

    // Sticky, as /tmp: then the file's owner is what counts.
    chmod(&shared, 0o1777);
    let out = run_to_exit(&rules)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on an unsafe file: {stderr}");
    assert!(stderr.contains(&rules.display().to_string()), "{stderr}");
    assert!(stderr.contains("owned by uid 4242"), "{stderr}");
    assert!(!stderr.contains("SECRET"), "{stderr}");
    chmod(&shared, 0o700);
    Ok(())
}

/// Reads of the rule file during `window`, after `settle` for the watcher to finish the
/// reloads a change causes.
fn reads_during(store: &RuleStore, settle: Duration, window: Duration) -> u64 {
    std::thread::sleep(settle);
    let before = store.reads();
    std::thread::sleep(window);
    store.reads() - before
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_watcher_settles_after_a_change_and_reads_a_broken_file_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules");
    fs::write(&path, RULES).expect("write");
    let store = RuleStore::open(&path, PolicyHandle::default()).expect("open");
    let _watch = spawn_watcher(store.clone()).expect("watcher");
    let settle = Duration::from_millis(800);
    let window = Duration::from_secs(2);

    // One hand edit, by rename as editors save.
    let tmp = dir.path().join("rules.swp");
    fs::write(
        &tmp,
        "192.0.2.1,1,default,default,\n198.51.100.0/24,0,default,default,\n.\n",
    )
    .expect("write");
    fs::rename(&tmp, &path).expect("rename");
    let dest: Destination = "198.51.100.0/24".parse().expect("dest");
    wait_until("the edit", || store.policy().get(&dest).is_some());
    // Before: every reload read the file, which woke the watcher for the next one.
    let reads = reads_during(&store, settle, window);
    assert_eq!(
        reads, 0,
        "the file was read {reads} times in {window:?} after one edit"
    );

    // A broken edit in place: read, and reported, once.
    let before = store.reads();
    fs::write(&path, "192.0.2.1,1,default,sometimes,\n").expect("write");
    wait_until("the error", || store.last_reload_error().is_some());
    let reads = reads_during(&store, settle, window);
    assert_eq!(
        reads, 0,
        "a broken file was read {reads} times in {window:?}"
    );
    assert!(
        store.reads() - before <= 2,
        "{} reads",
        store.reads() - before
    );
    assert_eq!(store.policy().len(), 2, "the last good policy stays");
}

#[test]
fn an_edit_of_a_symlinked_rule_file_is_picked_up_in_the_target_directory() {
    let links = tempfile::tempdir().expect("tempdir");
    let files = tempfile::tempdir().expect("tempdir");
    let real = files.path().join("real");
    fs::write(&real, RULES).expect("write");
    let link = links.path().join("rules");
    symlink(&real, &link).expect("symlink");
    let store = RuleStore::open(&link, PolicyHandle::default()).expect("open");
    let _watch = spawn_watcher(store.clone()).expect("watcher");

    // Saved by rename in the target's directory: nothing happens in the link's.
    let tmp = files.path().join("real.swp");
    fs::write(&tmp, "203.0.113.7,0,default,default,\n.\n").expect("write");
    fs::rename(&tmp, &real).expect("rename");
    let dest: Destination = "203.0.113.7".parse().expect("dest");
    wait_until("the edit of the target", || {
        store.policy().get(&dest).is_some()
    });
    assert!(
        fs::symlink_metadata(&link)
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
}
