use std::fs::{self, Permissions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, lchown, symlink};

use super::file::{FileText, NEW_FILE_MODE};
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

/// Destinations for a long run of API changes: addresses (one with its IPv4-mapped
/// twin), prefixes, names, a wildcard and the catch-all.
const EDITED: [&str; 10] = [
    "192.0.2.1",
    "::ffff:192.0.2.1",
    "192.0.2.0/24",
    "198.51.100.7",
    "2001:db8::/32",
    "a.example",
    "*.example",
    "b.a.example",
    "*",
    "203.0.113.9",
];

#[tokio::test]
async fn api_changes_leave_the_file_a_full_read_would_give_without_reading_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules");
    fs::write(
        &path,
        "# kept until the first write\n203.0.113.9,0,default,default,\na.example,1,default,fullmesh,\n.\n",
    )
    .expect("write");
    let store = open(&path).expect("open");
    let mut expected: Vec<Rule> = store.policy().rules().to_vec();
    assert_eq!(store.reads(), 1);

    // A fixed pseudo-random run of upserts and removes (xorshift).
    let mut state: u32 = 0x9e37_79b9;
    for step in 0..300 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let destination = EDITED[state as usize % EDITED.len()];
        let settings = [
            "1,default,default,",
            "0,default,default,",
            "1,default,fullmesh,access=deny,",
        ][(state >> 8) as usize % 3];
        let rule = rule(&format!("{destination},{settings}"));
        let at = expected
            .iter()
            .position(|r| r.destination == rule.destination);
        if state.is_multiple_of(3) {
            let removed = store.remove(&rule.destination).await.expect("remove");
            assert_eq!(removed, at.map(|i| expected.remove(i)), "step {step}");
        } else {
            let replaced = store.upsert(rule.clone()).await.expect("upsert");
            match at {
                Some(i) => {
                    let old = std::mem::replace(&mut expected[i], rule.clone());
                    // An upsert that changes nothing answers with the rule itself.
                    assert_eq!(replaced, Some(if old == rule { rule } else { old }));
                }
                None => {
                    assert_eq!(replaced, None, "step {step}");
                    expected.push(rule);
                }
            }
        }
        let text = fs::read_to_string(&path).expect("read");
        let in_force = store.policy();
        assert_eq!(in_force.rules(), expected.as_slice(), "step {step}");
        assert_eq!(text, in_force.to_string(), "step {step}");
    }
    assert!(store.counts().writes > 100, "{:?}", store.counts());
    // Every change started from what the store wrote: the file was read once, on open.
    assert_eq!(store.reads(), 1);

    // What a full read of the file gives: the same rules in the same order, the same
    // answers.
    let reread = open(&path).expect("open again").policy();
    let in_force = store.policy();
    assert_eq!(*reread, *in_force);
    for addr in [
        "192.0.2.1",
        "::ffff:192.0.2.1",
        "192.0.2.8",
        "198.51.100.7",
        "2001:db8::5",
    ] {
        let addr = addr.parse().expect("address");
        for name in [None, Some("a.example"), Some("c.b.a.example")] {
            assert_eq!(reread.lookup(name, addr), in_force.lookup(name, addr));
        }
    }
}

/// A store on a file of [`RULES`] to which one API change has been written: the file
/// is the one the store last wrote.
async fn written_once() -> (tempfile::TempDir, PathBuf, RuleStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules");
    fs::write(&path, RULES).expect("write");
    let store = open(&path).expect("open");
    store
        .upsert(rule("198.51.100.1,0,default,default,"))
        .await
        .expect("first change");
    (dir, path, store)
}

#[tokio::test]
async fn a_hand_edit_between_two_api_changes_is_the_base_of_the_second() {
    let (dir, path, store) = written_once().await;
    let reads = store.reads();

    // Saved by rename, as editors do: a new file.
    let edited = "192.0.2.1,1,default,default,\n198.51.100.1,0,default,default,\n198.51.100.2,1,default,fullmesh,\n.\n";
    let tmp = dir.path().join("rules.swp");
    fs::write(&tmp, edited).expect("write");
    fs::rename(&tmp, &path).expect("rename");
    store
        .upsert(rule("198.51.100.3,0,default,default,"))
        .await
        .expect("second change");
    assert_eq!(store.reads(), reads + 1, "the edited file is read");
    assert_eq!(
        fs::read_to_string(&path).expect("read"),
        format!(
            "{}198.51.100.3,0,default,default,\n.\n",
            edited.trim_end_matches(".\n")
        )
    );

    // Written in place with the same length and the old modification time (as `cp -p`
    // over it leaves it): same inode, same size, and still seen.
    let before = fs::read_to_string(&path).expect("read");
    let edited = before.replace("198.51.100.1,0,", "198.51.100.1,1,");
    assert_eq!(edited.len(), before.len());
    let modified = fs::metadata(&path)
        .expect("stat")
        .modified()
        .expect("mtime");
    let ino = fs::metadata(&path).expect("stat").ino();
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open for writing");
    std::os::unix::fs::FileExt::write_all_at(&file, edited.as_bytes(), 0).expect("write");
    file.set_modified(modified).expect("set mtime");
    drop(file);
    assert_eq!(fs::metadata(&path).expect("stat").ino(), ino);
    store
        .remove(&"198.51.100.3".parse().expect("destination"))
        .await
        .expect("third change");
    assert_eq!(store.reads(), reads + 2, "the edit in place is read");
    let text = fs::read_to_string(&path).expect("read");
    assert!(text.contains("198.51.100.1,1,default,default,\n"), "{text}");
    assert!(!text.contains("198.51.100.3"), "{text}");
    assert_eq!(store.policy().to_string(), text);

    // Deleted: written back from what is in force.
    fs::remove_file(&path).expect("rm");
    store
        .upsert(rule("198.51.100.4,0,default,default,"))
        .await
        .expect("fourth change");
    assert_eq!(store.policy().len(), 4);
    assert_eq!(
        fs::read_to_string(&path).expect("read"),
        store.policy().to_string()
    );

    // And the next change reads nothing again.
    let reads = store.reads();
    store
        .upsert(rule("198.51.100.5,0,default,default,"))
        .await
        .expect("fifth change");
    assert_eq!(store.reads(), reads);
}

#[tokio::test]
async fn a_broken_hand_edit_after_api_changes_refuses_the_next_one_until_fixed() {
    let (_dir, path, store) = written_once().await;
    let in_force = store.policy();

    let broken = "192.0.2.1,1,default,default,\n198.51.100.1,0,fast,default,\n.\n";
    fs::write(&path, broken).expect("edit");
    let err = store
        .upsert(rule("198.51.100.2,0,default,default,"))
        .await
        .expect_err("a broken file is not written over");
    assert!(
        matches!(&err, StoreError::BrokenOnDisk { source, .. } if source.line() == Some(2)),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&path).expect("read"), broken);
    assert_eq!(*store.policy(), *in_force);
    // Refused again: the refusal does not make the store take the file as its own.
    store
        .remove(&"192.0.2.1".parse().expect("destination"))
        .await
        .expect_err("still broken");
    assert_eq!(fs::read_to_string(&path).expect("read"), broken);

    // Fixed by hand: the fix is the base of the next change.
    fs::write(
        &path,
        "192.0.2.1,1,default,default,\n198.51.100.9,0,default,default,\n.\n",
    )
    .expect("fix");
    store
        .upsert(rule("198.51.100.2,0,default,default,"))
        .await
        .expect("change on the fixed file");
    assert_eq!(
        fs::read_to_string(&path).expect("read"),
        "192.0.2.1,1,default,default,\n198.51.100.9,0,default,default,\n198.51.100.2,0,default,default,\n.\n"
    );
}

#[tokio::test]
async fn a_reloaded_hand_edit_is_the_base_of_the_next_api_change() {
    let (_dir, path, store) = written_once().await;
    fs::write(&path, "198.51.100.7,1,default,default,\n.\n").expect("edit");
    assert_eq!(
        store.reload().await.expect("reload"),
        Reloaded::Changed { rules: 1 }
    );
    let reads = store.reads();
    store
        .upsert(rule("198.51.100.8,0,default,default,"))
        .await
        .expect("change");
    assert_eq!(
        store.reads(),
        reads,
        "what the reload read is not read again"
    );
    assert_eq!(
        fs::read_to_string(&path).expect("read"),
        "198.51.100.7,1,default,default,\n198.51.100.8,0,default,default,\n.\n"
    );

    // Touched, not changed: the reload reads it, and the next change does not.
    let file = fs::File::options().append(true).open(&path).expect("open");
    file.set_modified(std::time::SystemTime::UNIX_EPOCH)
        .expect("touch");
    drop(file);
    assert_eq!(store.reload().await.expect("reload"), Reloaded::Unchanged);
    let reads = store.reads();
    store
        .remove(&"198.51.100.8".parse().expect("destination"))
        .await
        .expect("change");
    assert_eq!(store.reads(), reads);
    assert_eq!(
        fs::read_to_string(&path).expect("read"),
        "198.51.100.7,1,default,default,\n.\n"
    );
    store
        .upsert(rule("198.51.100.8,0,default,default,"))
        .await
        .expect("change");

    // A broken edit the reload refused still refuses the next change.
    let broken = "198.51.100.7,1,default,default,\n198.51.100.8,0,default,\n.\n";
    fs::write(&path, broken).expect("edit");
    store.reload().await.expect_err("broken");
    let err = store
        .remove(&"198.51.100.7".parse().expect("destination"))
        .await
        .expect_err("not written over");
    assert!(matches!(err, StoreError::BrokenOnDisk { .. }), "{err}");
    assert_eq!(fs::read_to_string(&path).expect("read"), broken);
    assert_eq!(store.policy().len(), 2);
}

#[test]
fn file_text_follows_the_policy_one_rule_at_a_time() {
    let mut policy = Policy::parse(
        "# a comment\n192.0.2.1,1,default,default,\n\n*.example,0,default,fullmesh,\n.\n",
    )
    .expect("parses");
    let mut text = FileText::of(&policy);
    assert_eq!(text.as_bytes(), policy.to_string().as_bytes());
    let edits = [
        "192.0.2.1,0,redundant,ndiffports:3,access=deny,",
        "2001:db8::/32,1,default,default,",
        "*.example,1,default,default,",
        "*,1,default,default,",
    ];
    for line in edits {
        let rule = rule(line);
        match policy.position(&rule.destination) {
            Some(i) => text.replace(i, &rule),
            None => text.push(&rule),
        }
        policy.upsert(rule);
        assert_eq!(text.as_bytes(), policy.to_string().as_bytes(), "{line}");
        assert_eq!(text.len(), policy.to_string().len());
    }
    for destination in ["*.example", "*", "192.0.2.1", "2001:db8::/32"] {
        let destination: Destination = destination.parse().expect("destination");
        let i = policy.position(&destination).expect("present");
        text.remove(i);
        policy.remove(&destination);
        assert_eq!(
            text.as_bytes(),
            policy.to_string().as_bytes(),
            "{destination}"
        );
    }
    assert_eq!(text.as_bytes(), b".\n");
}

#[tokio::test]
async fn a_file_emptied_by_an_editor_refuses_a_change_rather_than_lose_the_rules() {
    let (_dir, path, store) = written_once().await;
    let before = store.policy().len();
    // An editor writing in place truncates first; a change landing now must not take
    // the empty file for "no rules" and write back only itself.
    fs::write(&path, "").expect("truncate");
    let err = store
        .upsert(rule("198.51.100.8,0,default,default,"))
        .await
        .expect_err("refused while empty");
    assert!(matches!(err, StoreError::EmptyOnDisk { .. }), "{err}");
    assert_eq!(fs::read_to_string(&path).expect("read"), "");
    assert_eq!(store.policy().len(), before);
    // Once written, the edit is the base of the change.
    fs::write(&path, "192.0.2.1,1,default,default,\n.\n").expect("edit");
    store
        .upsert(rule("198.51.100.8,0,default,default,"))
        .await
        .expect("change on the written file");
    assert_eq!(
        fs::read_to_string(&path).expect("read"),
        "192.0.2.1,1,default,default,\n198.51.100.8,0,default,default,\n.\n"
    );
}
