use std::fs::{self, Permissions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, lchown, symlink};

use super::file::NEW_FILE_MODE;
use super::*;

/// An owner nobody on a test host is.
const STRANGER: u32 = 4242;

const RULES: &str = "192.0.2.1,1,default,default,\n.\n";

fn euid() -> u32 {
    mptcp_policy::effective_uid()
}

/// Whether the test may chown (needs root): skipped with a reason otherwise, except
/// under CI, where a skip would hide a regression.
fn can_chown(test: &str) -> bool {
    mptcp_test_support::require_root(&format!("for {test} (to chown to uid {STRANGER})"))
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, Permissions::from_mode(mode)).expect("chmod");
}

fn open(path: &Path) -> Result<RuleStore, StoreError> {
    RuleStore::open(path, PolicyHandle::default())
}

fn open_limited(path: &Path, max_bytes: u64, max_rules: usize) -> Result<RuleStore, StoreError> {
    RuleStore::open_limited(
        path.to_owned(),
        PolicyHandle::default(),
        KernelProbe::live(),
        Limits {
            max_bytes,
            max_rules,
        },
    )
}

/// The reason StrictModes gives for `path`, which must be refused.
fn refused(path: &Path) -> String {
    match open(path) {
        Err(StoreError::Unsafe { reason, .. }) => reason,
        other => panic!("{} not refused as unsafe: {other:?}", path.display()),
    }
}

fn rule(line: &str) -> Rule {
    line.parse().expect("rule")
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn atomic_write_creates_with_default_mode_and_keeps_existing_mode() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("rules");
    let resolve = || strict::resolve(&path, euid()).expect("safe");
    write_atomically(&resolve(), b"a\n")?;
    assert_eq!(fs::read(&path)?, b"a\n");
    assert_eq!(
        fs::metadata(&path)?.permissions().mode() & 0o7777,
        NEW_FILE_MODE
    );

    chmod(&path, 0o600);
    write_atomically(&resolve(), b"b\n")?;
    assert_eq!(fs::read(&path)?, b"b\n");
    assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o7777, 0o600);

    // No temporary files left behind.
    assert_eq!(names(dir.path()), ["rules"]);
    Ok(())
}

#[test]
fn atomic_write_into_a_missing_directory_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nope").join("rules");
    let resolved = strict::resolve(&path, euid()).expect("missing is not unsafe");
    assert!(resolved.meta.is_none());
    assert!(write_atomically(&resolved, b"x").is_err());
}

#[tokio::test]
async fn a_safe_symlink_is_followed_and_its_target_replaced_in_its_own_directory() {
    let links = tempfile::tempdir().expect("tempdir");
    let files = tempfile::tempdir().expect("tempdir");
    let real = files.path().join("real");
    fs::write(&real, RULES).expect("write");
    chmod(&real, 0o640);
    // Through a relative link and a second link, as /etc/alternatives does.
    let hop = links.path().join("hop");
    symlink(&real, &hop).expect("symlink");
    let link = links.path().join("rules");
    symlink("hop", &link).expect("symlink");

    let store = open(&link).expect("safe link");
    assert_eq!(store.policy().len(), 1);
    store
        .upsert(rule("198.51.100.1,0,default,default,"))
        .await
        .expect("write through a safe link");
    assert!(
        fs::symlink_metadata(&link)
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
    assert!(
        fs::symlink_metadata(&hop)
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
    let written = fs::read_to_string(&real).expect("read");
    assert!(written.contains("198.51.100.1,0,"), "{written}");
    assert_eq!(
        fs::metadata(&real).expect("stat").permissions().mode() & 0o7777,
        0o640
    );
    // The temporary file went to the target's directory, and is gone.
    assert_eq!(names(links.path()), ["hop", "rules"]);
    assert_eq!(names(files.path()), ["real"]);
}

#[tokio::test]
async fn a_link_in_a_directory_others_can_write_is_not_followed() {
    let links = tempfile::tempdir().expect("tempdir");
    let files = tempfile::tempdir().expect("tempdir");
    let shared = links.path().join("shared");
    fs::create_dir(&shared).expect("mkdir");
    let real = files.path().join("real");
    fs::write(&real, RULES).expect("write");
    let link = shared.join("rules");
    symlink(&real, &link).expect("symlink");
    let store = open(&link).expect("safe so far");

    // Now anyone may swap the link for one to, say, /etc/shadow.
    chmod(&shared, 0o777);
    let reason = refused(&link);
    assert!(reason.contains(&shared.display().to_string()), "{reason}");
    assert!(reason.contains("0777"), "{reason}");
    let err = store
        .upsert(rule("198.51.100.1,0,default,default,"))
        .await
        .expect_err("no write through an unsafe link");
    assert!(matches!(err, StoreError::Unsafe { .. }), "{err}");
    assert_eq!(fs::read_to_string(&real).expect("read"), RULES);
    assert!(
        fs::symlink_metadata(&link)
            .expect("lstat")
            .file_type()
            .is_symlink()
    );

    // Group-writable counts too, as for sshd.
    chmod(&shared, 0o775);
    refused(&link);
    // And the directory of the target: the link is fine, where it points is not.
    chmod(&shared, 0o755);
    open(&link).expect("safe again");
    chmod(files.path(), 0o777);
    let reason = refused(&link);
    assert!(
        reason.contains(&files.path().display().to_string()),
        "{reason}"
    );
    chmod(files.path(), 0o700);
}

#[test]
fn a_file_others_can_write_or_that_is_no_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules");
    fs::write(&path, "SECRET LINE,1,default,default,\n").expect("write");
    for mode in [0o666, 0o620, 0o602] {
        chmod(&path, mode);
        let reason = refused(&path);
        assert!(reason.contains(&format!("mode {mode:04o}")), "{reason}");
        assert!(reason.contains(&path.display().to_string()), "{reason}");
        assert!(!reason.contains("SECRET"), "{reason}");
    }
    chmod(&path, 0o644);
    let err = open(&path).expect_err("does not parse").to_string();
    assert!(
        err.contains("SECRET"),
        "a safe file's error shows its excerpt: {err}"
    );

    let reason = refused(dir.path());
    assert!(reason.contains("not a regular file"), "{reason}");
}

#[test]
fn a_directory_others_can_write_is_safe_only_if_sticky() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules");
    fs::write(&path, RULES).expect("write");
    chmod(dir.path(), 0o777);
    let reason = refused(&path);
    assert!(reason.contains("not sticky"), "{reason}");
    assert!(reason.contains("0777"), "{reason}");
    // Missing, the file would be created where anyone could replace it: refused too.
    fs::remove_file(&path).expect("rm");
    refused(&path);

    // Sticky, as /tmp: only an entry's owner may replace it, and that is us.
    chmod(dir.path(), 0o1777);
    assert!(
        open(&path)
            .expect("sticky dir, missing file")
            .policy()
            .is_empty()
    );
    fs::write(&path, RULES).expect("write");
    assert_eq!(open(&path).expect("sticky dir, our file").policy().len(), 1);
    chmod(dir.path(), 0o700);
}

#[tokio::test]
async fn entries_owned_by_another_user_are_refused() {
    if !can_chown("entries_owned_by_another_user_are_refused") {
        return;
    }
    let top = tempfile::tempdir().expect("tempdir");
    let path = top.path().join("rules");
    fs::write(&path, "SECRET LINE,1,default,default,\n").expect("write");

    // The file itself.
    chown(&path, Some(STRANGER), None).expect("chown");
    let reason = refused(&path);
    assert!(reason.contains("uid 4242"), "{reason}");
    assert!(reason.contains("mode 0644"), "{reason}");
    assert!(!reason.contains("SECRET"), "{reason}");
    // Also in a sticky directory (where its owner may replace it).
    chmod(top.path(), 0o1777);
    assert!(refused(&path).contains("uid 4242"));
    chmod(top.path(), 0o700);
    chown(&path, Some(0), None).expect("chown");

    // A link owned by someone else.
    let real = top.path().join("real");
    fs::write(&real, RULES).expect("write");
    let link = top.path().join("link");
    symlink(&real, &link).expect("symlink");
    lchown(&link, Some(STRANGER), None).expect("lchown");
    let reason = refused(&link);
    assert!(
        reason.contains("symlink") && reason.contains("uid 4242"),
        "{reason}"
    );

    // A directory on the way owned by someone else.
    let theirs = top.path().join("theirs");
    fs::create_dir(&theirs).expect("mkdir");
    fs::write(theirs.join("rules"), RULES).expect("write");
    chown(&theirs, Some(STRANGER), None).expect("chown");
    let reason = refused(&theirs.join("rules"));
    assert!(
        reason.contains("directory") && reason.contains("uid 4242"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_rewritten_file_keeps_its_owner_and_mode() {
    if !can_chown("a_rewritten_file_keeps_its_owner_and_mode") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules");
    fs::write(&path, RULES).expect("write");
    // Readable by a group of the seed's tools, written only by us.
    chown(&path, Some(0), Some(STRANGER)).expect("chown");
    chmod(&path, 0o640);
    let store = open(&path).expect("open");
    store
        .upsert(rule("198.51.100.1,0,default,default,"))
        .await
        .expect("write");
    let meta = fs::metadata(&path).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (0, STRANGER));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(store.policy().len(), 2);
}

#[tokio::test]
async fn size_and_rule_count_are_capped_on_read_and_on_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules");
    let three = "192.0.2.1,1,default,default,\n192.0.2.2,1,default,default,\n192.0.2.3,1,default,default,\n.\n";
    fs::write(&path, three).expect("write");
    let size = three.len() as u64;

    let err = open_limited(&path, size - 1, 100).expect_err("too large");
    assert!(
        matches!(err, StoreError::TooLarge { limit, .. } if limit == size - 1),
        "{err}"
    );
    assert!(err.to_string().contains("larger than"), "{err}");
    let err = open_limited(&path, size, 2).expect_err("too many");
    assert!(
        err.to_string()
            .contains("3 rules, more than the limit of 2"),
        "{err}"
    );

    // At the caps: loads, and a change that would go beyond is refused, unwritten.
    let store = open_limited(&path, size + 40, 3).expect("at the limit");
    let err = store
        .upsert(rule("192.0.2.4,1,default,default,"))
        .await
        .expect_err("a fourth rule");
    assert!(
        matches!(
            err,
            StoreError::TooManyRules {
                rules: 4,
                limit: 3,
                ..
            }
        ),
        "{err}"
    );
    let store = open_limited(&path, size + 10, 4).expect("at the limit");
    let err = store
        .upsert(rule("192.0.2.4,1,default,default,"))
        .await
        .expect_err("a longer file");
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    assert_eq!(fs::read_to_string(&path).expect("read"), three);
    assert_eq!(store.policy().len(), 3);
}

#[test]
fn the_reader_never_reads_more_than_one_byte_beyond_the_cap() {
    /// Counts what is taken from an endless source.
    struct Endless(u64);
    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(b'x');
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
    }
    let mut source = Endless(0);
    let bytes = read_bounded(&mut source, 1000).expect("read");
    assert_eq!(bytes.len(), 1001);
    assert_eq!(source.0, 1001);
}

#[test]
fn a_byte_order_mark_and_crlf_line_ends_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules");
    fs::write(
        &path,
        "\u{feff}# written on Windows\r\n192.0.2.1,1,default,default,\r\n192.0.2.2,0,default,fullmesh,\r\n.\r\n",
    )
    .expect("write");
    let store = open(&path).expect("BOM and CRLF");
    let policy = store.policy();
    assert_eq!(policy.len(), 2);
    assert_eq!(policy.rules()[1], rule("192.0.2.2,0,default,fullmesh,"));
}

#[test]
fn a_file_that_is_not_utf8_names_the_line_of_the_first_bad_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules");
    fs::write(
        &path,
        b"192.0.2.1,1,default,default,\n# caf\xe9 in Latin-1\n192.0.2.2\xff,1,default,default,\n",
    )
    .expect("write");
    let err = open(&path).expect_err("not UTF-8");
    assert!(
        matches!(
            err,
            StoreError::NotUtf8 {
                line: 2,
                column: 6,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("line 2, column 6: not UTF-8"),
        "{err}"
    );
    assert_eq!(position(b"ab\ncd", 4), (2, 2));
    assert_eq!(position(b"", 0), (1, 1));
}

#[tokio::test]
async fn a_huge_bad_line_is_reported_in_a_few_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules");
    fs::write(&path, RULES).expect("write");
    let store = open(&path).expect("open");
    let line = format!("{}\x1b[2J,1,default,default,\n", "a".repeat(1 << 20));
    fs::write(&path, format!("192.0.2.1,1,default,default,\n{line}")).expect("write");
    store.reload().await.expect_err("broken");
    let recorded = store.last_reload_error().expect("recorded");
    assert_eq!(recorded.line, Some(2));
    assert!(
        recorded.message.len() < 600,
        "{} bytes",
        recorded.message.len()
    );
    assert!(!recorded.message.contains('\x1b'), "{}", recorded.message);
    assert_eq!(store.policy().len(), 1);
}

#[test]
fn refusals_name_the_line_the_operator_wrote() {
    let mut kernel = KernelSupport::probe();
    kernel.flavour = mptcp_policy::Flavour::Upstream;
    kernel.enabled = true;
    kernel.available_schedulers = vec!["default".into()];
    let mut policy = Policy::parse(
        "# for the legacy box\n\
         192.0.2.1,1,default,binder,\n\
         \n\
         192.0.2.2,1,default,default,\n\
         192.0.2.3,1,redundant,default, # a comment\n\
         .\n",
    )
    .expect("parses");
    let found = |policy: &Policy| -> Vec<(usize, String)> {
        refused_lines(policy, &kernel)
            .into_iter()
            .map(|(line, rule, _)| (line, rule.destination.to_string()))
            .collect()
    };
    assert_eq!(
        found(&policy),
        [(2, "192.0.2.1".into()), (5, "192.0.2.3".into())]
    );
    // A rule given at run time is in no file: no line to name.
    policy.upsert(rule("192.0.2.4,1,default,binder,"));
    assert_eq!(found(&policy).len(), 2);
}

#[tokio::test]
async fn a_reload_of_the_file_last_read_does_not_read_it_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules");
    fs::write(&path, RULES).expect("write");
    let store = open(&path).expect("open");
    assert_eq!(store.reads(), 1);
    assert_eq!(store.reload().await.expect("reload"), Reloaded::Unchanged);
    assert_eq!(store.reads(), 1);

    // Our own write is the file last read.
    store
        .upsert(rule("198.51.100.1,0,default,default,"))
        .await
        .expect("write");
    let after_write = store.reads();
    assert_eq!(store.reload().await.expect("reload"), Reloaded::Unchanged);
    assert_eq!(store.reads(), after_write);

    // A broken edit is read (and reported) once.
    fs::write(&path, "192.0.2.1,1,default,nope,\n").expect("write");
    store.reload().await.expect_err("broken");
    assert_eq!(store.reads(), after_write + 1);
    assert_eq!(
        store.reload().await.expect("same file"),
        Reloaded::Unchanged
    );
    assert_eq!(store.reads(), after_write + 1);
    assert!(store.last_reload_error().is_some(), "still reported");

    // A refusal forgets the file: once fixed, it is read again.
    fs::write(&path, RULES).expect("write");
    chmod(&path, 0o666);
    store.reload().await.expect_err("unsafe");
    assert_eq!(store.reads(), after_write + 1, "an unsafe file is not read");
    chmod(&path, 0o644);
    assert_eq!(
        store.reload().await.expect("fixed"),
        Reloaded::Changed { rules: 1 }
    );
    assert!(store.last_reload_error().is_none());
}
