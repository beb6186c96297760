//! mptcp-socksd's config file: every flag has a key (derived from the clap definition), a
//! key means what its flag means, the command line wins, `--print-config` reads back as
//! the same settings, every refusal names its line and key; mptcpctl's use of the file;
//! reloads (SIGHUP).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::CommandFactory;
use mptcp_socks::PolicyHandle;
use mptcp_socksd::ctl::CtlArgs;
use mptcp_socksd::{Args, Cli, ConfigFile, Reloader, RuleStore, Source, config_keys};

/// The config file the package ships.
fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/mptcp-socksd.toml")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("mptcp-socksd").chain(args.iter().copied()))
}

fn cli_with(file: &Path, args: &[&str]) -> Result<Cli, clap::Error> {
    let file = file.to_str().expect("utf-8 path");
    cli(&[&["--config", file][..], args].concat())
}

/// Every setting of both sides, which must agree key by key.
fn assert_same_values(a: &Cli, b: &Cli) {
    for key in config_keys(&Args::command()) {
        assert_eq!(
            a.settings().values(key),
            b.settings().values(key),
            "key {key}"
        );
    }
}

/// Two complete sets of non-default settings, as a file and as flags: between them they
/// set every key (the password and the API token once inline, once from a file, which
/// exclude each other).
fn settings_pair(dir: &Path) -> [(String, Vec<String>); 2] {
    let secret = write(dir, "secret", "s3cret\n");
    let secret = secret.display().to_string();
    let common = [
        ("listen", "\"127.0.0.1\"", "127.0.0.1"),
        ("port", "1081", "1081"),
        ("user", "\"alice\"", "alice"),
        ("auth-once", "true", ""),
        ("allow", "[\"10.0.0.1\", \"10.0.0.2\"]", "10.0.0.1,10.0.0.2"),
        ("bind", "\"192.0.2.1\"", "192.0.2.1"),
        ("quiet", "true", ""),
        ("log-format", "\"json\"", "json"),
        ("policy", "\"/var/lib/x/rules\"", "/var/lib/x/rules"),
        ("api", "\"unix:/run/x/api.sock\"", "unix:/run/x/api.sock"),
        ("handshake-timeout", "3", "3"),
        ("connect-timeout", "4", "4"),
        ("path-manager", "\"userspace\"", "userspace"),
        ("allow-public-clients", "true", ""),
        ("max-connections", "100", "100"),
        ("max-client-connections", "5", "5"),
        ("idle-timeout", "0", "0"),
        (
            "upstream",
            "[\"vps=socks5://box@192.0.2.9:1080\", \"open=socks5://192.0.2.10:1080\"]",
            "",
        ),
        ("auto-ttl", "60", "60"),
        ("no-pac", "true", ""),
        ("tls", "true", ""),
        ("tls-cert", "\"/etc/x/cert.pem\"", "/etc/x/cert.pem"),
        ("tls-key", "\"/etc/x/key.pem\"", "/etc/x/key.pem"),
        ("state-dir", "\"/var/lib/x\"", "/var/lib/x"),
    ];
    let upstream_pw = format!("vps={secret}");
    let variants = [
        vec![
            ("password", "\"s3cret\"".to_owned(), "s3cret".to_owned()),
            ("api-token", "\"t0ken\"".to_owned(), "t0ken".to_owned()),
            (
                "upstream-password-file",
                format!("[\"{upstream_pw}\"]"),
                upstream_pw.clone(),
            ),
        ],
        vec![
            ("password-file", format!("\"{secret}\""), secret.clone()),
            ("api-token-file", format!("\"{secret}\""), secret.clone()),
        ],
    ];
    variants.map(|variant| {
        let mut toml = String::new();
        let mut flags = Vec::new();
        let all = common
            .iter()
            .map(|(k, t, f)| (*k, (*t).to_owned(), (*f).to_owned()))
            .chain(variant);
        for (key, toml_value, flag_value) in all {
            toml.push_str(&format!("{key} = {toml_value}\n"));
            match key {
                "upstream" => {
                    for url in [
                        "vps=socks5://box@192.0.2.9:1080",
                        "open=socks5://192.0.2.10:1080",
                    ] {
                        flags.push(format!("--{key}={url}"));
                    }
                }
                _ if flag_value.is_empty() => flags.push(format!("--{key}")),
                _ => flags.push(format!("--{key}={flag_value}")),
            }
        }
        (toml, flags)
    })
}

#[test]
fn every_flag_has_a_key_and_the_shipped_file_documents_it() {
    let cmd = Args::command();
    let keys = config_keys(&cmd);
    let not_keys = ["help", "version", "config", "print-config"];
    for arg in cmd.get_arguments() {
        let long = arg.get_long();
        assert!(
            long.is_some_and(|l| keys.contains(&l) || not_keys.contains(&l)),
            "flag {:?} has no config file key",
            arg.get_id()
        );
    }
    assert!(keys.len() >= 29, "{keys:?}");
    let shipped = std::fs::read_to_string(shipped_config()).expect("shipped config");
    for key in &keys {
        let documented = shipped.lines().any(|line| {
            let line = line.trim_start_matches('#').trim_start();
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        assert!(documented, "{key} is not in packaging/mptcp-socksd.toml");
    }
}

#[test]
fn every_key_means_what_its_flag_means() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut covered = BTreeSet::new();
    for (i, (toml, flags)) in settings_pair(dir.path()).into_iter().enumerate() {
        let file = write(dir.path(), &format!("{i}.toml"), &toml);
        let from_file = cli_with(&file, &[]).unwrap_or_else(|e| panic!("{toml}\n{e}"));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let from_flags = cli(&flags).unwrap_or_else(|e| panic!("{flags:?}\n{e}"));
        assert_same_values(&from_file, &from_flags);
        for key in config_keys(&Args::command()) {
            let source = from_file.settings().source(key);
            if toml.lines().any(|l| l.starts_with(&format!("{key} ="))) {
                assert_eq!(source, Some(Source::File), "{key}");
                assert_eq!(from_flags.settings().source(key), Some(Source::CommandLine));
                covered.insert(key.to_owned());
            }
        }
    }
    let all: BTreeSet<String> = config_keys(&Args::command())
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(covered, all, "keys no test sets");
}

#[test]
fn printed_settings_read_back_as_the_same_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The variant with secrets in files: nothing to mask, so all of it reads back.
    let [_, (toml, _)] = settings_pair(dir.path());
    let file = write(dir.path(), "a.toml", &toml);
    let first = cli_with(&file, &[]).expect("parses");
    let printed = first.settings().to_toml();
    let again = write(dir.path(), "printed.toml", &printed);
    let second = cli_with(&again, &[]).unwrap_or_else(|e| panic!("{printed}\n{e}"));
    assert_same_values(&first, &second);
    assert_eq!(
        second
            .settings()
            .to_toml()
            .lines()
            .skip(2)
            .collect::<Vec<_>>(),
        printed.lines().skip(2).collect::<Vec<_>>()
    );

    // Defaults alone read back too; unset keys are comments.
    let defaults = cli(&[]).expect("defaults");
    let printed = defaults.settings().to_toml();
    assert!(printed.contains("# user is not set"), "{printed}");
    assert!(printed.contains("port = 1080  # default"), "{printed}");
    let again = write(dir.path(), "defaults.toml", &printed);
    assert_same_values(&defaults, &cli_with(&again, &[]).expect("parses"));
}

#[test]
fn secrets_are_masked_when_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [(toml, _), _] = settings_pair(dir.path());
    let toml = toml.replace(
        "vps=socks5://box@192.0.2.9:1080",
        "vps=socks5://box:upw@192.0.2.9:1080",
    );
    let toml: String = toml
        .lines()
        .filter(|l| !l.starts_with("upstream-password-file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let file = write(dir.path(), "b.toml", &toml);
    let printed = cli_with(&file, &[]).expect("parses").settings().to_toml();
    for secret in ["s3cret", "t0ken", "upw"] {
        assert!(!printed.contains(secret), "{secret} shown:\n{printed}");
    }
    assert!(
        printed.contains("password = \"********\"  # config file"),
        "{printed}"
    );
    assert!(printed.contains("api-token = \"********\""), "{printed}");
    assert!(
        printed.contains("socks5://box:********@192.0.2.9:1080"),
        "{printed}"
    );
}

#[test]
fn the_command_line_wins_key_by_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = write(dir.path(), "secret", "pw\n");
    let file = write(
        dir.path(),
        "a.toml",
        &format!(
            "port = 1081\nupstream = [\"a=socks5://192.0.2.1:1\", \"b=socks5://192.0.2.2:1\"]\n\
             user = \"alice\"\npassword-file = \"{}\"\napi-token = \"from-file\"\nquiet = true\n",
            secret.display()
        ),
    );
    let c = cli_with(
        &file,
        &[
            "-p",
            "1082",
            "--upstream",
            "c=socks5://192.0.2.3:1",
            "-P",
            "typed",
        ],
    )
    .expect("the flags replace the keys they exclude");
    let s = c.settings();
    assert_eq!(s.values("port"), Some(&["1082".to_owned()][..]));
    assert_eq!(s.source("port"), Some(Source::CommandLine));
    // A list is replaced whole.
    assert_eq!(
        s.values("upstream"),
        Some(&["c=socks5://192.0.2.3:1".to_owned()][..])
    );
    // -P excludes the file's password-file; the file's user still counts.
    assert_eq!(s.source("password"), Some(Source::CommandLine));
    assert_eq!(s.source("password-file"), Some(Source::Unset));
    assert_eq!(s.values("user"), Some(&["alice".to_owned()][..]));
    assert_eq!(s.source("quiet"), Some(Source::File));
    assert!(c.quiet());

    let c = cli_with(&file, &["--api-token-file", "/nonexistent"]).expect("parses");
    assert_eq!(c.settings().source("api-token"), Some(Source::Unset));
    assert_eq!(
        c.settings().source("api-token-file"),
        Some(Source::CommandLine)
    );
}

#[test]
fn the_environment_wins_over_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "a.toml",
        "policy = \"/from/file\"\napi-token = \"f\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_mptcp-socksd"))
        .arg("--config")
        .arg(&file)
        .arg("--print-config")
        .env("MPTCP_SOCKS_POLICY", "/from/env")
        .env_remove("MPTCP_SOCKS_API_TOKEN")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("policy = \"/from/env\"  # environment"),
        "{stdout}"
    );
    assert!(
        stdout.contains("api-token = \"********\"  # config file"),
        "{stdout}"
    );
}

#[test]
fn refusals_name_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = Args::command();
    let table: &[(&str, Option<usize>, Option<&str>, &str)] = &[
        (
            "port = 1080\n\nprot = 1\n",
            Some(3),
            Some("prot"),
            "unknown key `prot`",
        ),
        (
            "api_token = \"x\"\n",
            Some(1),
            Some("api_token"),
            "did you mean `api-token`?",
        ),
        (
            "# c\nport = \"x\"\n",
            Some(2),
            Some("port"),
            "invalid value 'x'",
        ),
        ("port = 70000\n", Some(1), Some("port"), "70000"),
        (
            "port = 1.5\n",
            Some(1),
            Some("port"),
            "expected a string or a whole number",
        ),
        (
            "listen = \"not-an-ip\"\n",
            Some(1),
            Some("listen"),
            "not-an-ip",
        ),
        ("log-format = \"xml\"\n", Some(1), Some("log-format"), "xml"),
        (
            "path-manager = \"fullmesh\"\n",
            Some(1),
            Some("path-manager"),
            "fullmesh",
        ),
        (
            "max-connections = 0\n",
            Some(1),
            Some("max-connections"),
            "0",
        ),
        ("api = \"5000\"\n", Some(1), Some("api"), "ADDRESS:PORT"),
        (
            "quiet = \"yes\"\n",
            Some(1),
            Some("quiet"),
            "expected true or false",
        ),
        ("tls = 1\n", Some(1), Some("tls"), "expected true or false"),
        (
            "port = [1080]\n",
            Some(1),
            Some("port"),
            "expected a string or a whole number, not array",
        ),
        (
            "allow = [\"10.0.0.1\", \"x\"]\n",
            Some(1),
            Some("allow"),
            "invalid value 'x'",
        ),
        ("allow = [true]\n", Some(1), Some("allow"), "not boolean"),
        ("[api]\nport = 1\n", Some(1), Some("api"), "not table"),
        ("config = \"/x\"\n", Some(1), Some("config"), "unknown key"),
        (
            "print-config = true\n",
            Some(1),
            Some("print-config"),
            "unknown key",
        ),
        ("port = 1\nport = 2\n", Some(2), None, "duplicate key"),
        ("port = 1\nlisten = \n", Some(2), None, ""),
        ("port = \"1\n", Some(1), None, ""),
    ];
    for (text, line, key, needle) in table {
        let path = dir.path().join("bad.toml");
        let err = ConfigFile::parse(&path, text, &cmd).expect_err(text);
        assert_eq!(err.line(), *line, "{text:?}: {err}");
        assert_eq!(err.key(), *key, "{text:?}: {err}");
        let message = err.to_string();
        let at = format!("{}:{}: ", path.display(), line.expect("line"));
        assert!(message.starts_with(&at), "{text:?}: {message}");
        assert!(message.contains(needle), "{text:?}: {message}");
        // The daemon refuses to start with the same message.
        std::fs::write(&path, text).expect("write");
        let refused = cli_with(&path, &[]).expect_err(text).to_string();
        assert!(refused.contains(&at), "{text:?}: {refused}");
    }
}

#[test]
fn settings_that_only_fit_together_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "a.toml", "user = \"alice\"\n");
    let err = cli_with(&file, &[])
        .expect_err("a user needs a password")
        .to_string();
    assert!(
        err.contains(&format!("with the settings of {}", file.display())),
        "{err}"
    );
    assert!(err.contains("--password"), "{err}");
    // ...which the command line may give.
    cli_with(&file, &["-P", "pw"]).expect("completed by the command line");

    let err = cli_with(&dir.path().join("missing.toml"), &[])
        .expect_err("a missing file")
        .to_string();
    assert!(err.contains("missing.toml: cannot read it"), "{err}");
}

#[test]
fn the_shipped_config_loads_and_keeps_the_safe_defaults() {
    let c = cli_with(&shipped_config(), &[]).expect("the shipped config loads");
    let s = c.settings();
    let value = |key: &str| s.values(key).and_then(|v| v.first()).cloned();
    assert_eq!(
        value("policy").as_deref(),
        Some("/var/lib/mptcp-socks/rules")
    );
    assert_eq!(value("state-dir").as_deref(), Some("/var/lib/mptcp-socks"));
    assert_eq!(value("api").as_deref(), Some("127.0.0.1:5000"));
    assert_eq!(value("allow-public-clients").as_deref(), Some("false"));
    assert_eq!(s.source("user"), Some(Source::Unset));
    assert_eq!(s.source("api-token"), Some(Source::Unset));
}

#[test]
fn a_secret_in_a_file_every_user_may_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "a.toml", "api-token = \"t\"\n");
    let cmd = Args::command();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let warning = ConfigFile::load(&file, &cmd)
        .expect("loads")
        .exposed_secrets_warning();
    assert!(warning.is_some_and(|w| w.contains("api-token")));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    assert_eq!(
        ConfigFile::load(&file, &cmd)
            .expect("loads")
            .exposed_secrets_warning(),
        None
    );
    let paths_only = write(dir.path(), "b.toml", "api-token-file = \"/x\"\n");
    std::fs::set_permissions(&paths_only, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_eq!(
        ConfigFile::load(&paths_only, &cmd)
            .expect("loads")
            .exposed_secrets_warning(),
        None
    );
}

fn ctl(args: &[&str]) -> CtlArgs {
    use clap::Parser as _;
    CtlArgs::try_parse_from(std::iter::once("mptcpctl").chain(args.iter().copied()))
        .expect("mptcpctl flags")
}

#[test]
fn mptcpctl_takes_the_api_and_token_from_the_daemons_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = write(dir.path(), "token", "t0ken\n");
    let file = write(
        dir.path(),
        "a.toml",
        &format!(
            "api = \"0.0.0.0:5001\"\napi-token-file = \"{}\"\n",
            token.display()
        ),
    );
    let config = file.to_str().expect("utf-8");
    let target = ctl(&["--config", config, "health"])
        .api_target()
        .expect("target");
    assert_eq!(target.api, "http://127.0.0.1:5001");
    assert_eq!(target.token.as_deref(), Some("t0ken"));

    let target = ctl(&[
        "--config",
        config,
        "--api",
        "http://[::1]:6000",
        "--token",
        "x",
        "health",
    ])
    .api_target()
    .expect("target");
    assert_eq!(
        (target.api.as_str(), target.token.as_deref()),
        ("http://[::1]:6000", Some("x"))
    );

    let unix = write(
        dir.path(),
        "u.toml",
        "api = \"unix:/run/x.sock\"\napi-token = \"i\"\n",
    );
    let target = ctl(&["--config", unix.to_str().expect("utf-8"), "health"])
        .api_target()
        .expect("target");
    assert_eq!(
        (target.api.as_str(), target.token.as_deref()),
        ("unix:/run/x.sock", Some("i"))
    );

    for bad in ["api = 5\n", "nope = 1\n"] {
        let path = write(dir.path(), "bad.toml", bad);
        let err = ctl(&["--config", path.to_str().expect("utf-8"), "health"])
            .api_target()
            .expect_err(bad);
        assert!(err.contains("bad.toml:1"), "{err}");
    }
    std::fs::remove_file(&token).expect("rm");
    let err = ctl(&["--config", config, "health"])
        .api_target()
        .expect_err("no token file");
    assert!(err.contains("api-token-file"), "{err}");
}

#[tokio::test]
async fn a_reload_applies_the_log_level_and_the_rules_and_names_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    let base = format!(
        "listen = \"127.0.0.1\"\napi = \"off\"\npolicy = \"{}\"\n",
        rules.display()
    );
    let file = write(dir.path(), "a.toml", &base);
    let argv: Vec<std::ffi::OsString> = vec![
        "mptcp-socksd".into(),
        "--config".into(),
        file.clone().into(),
        "-p".into(),
        "0".into(),
    ];
    let started = Cli::try_parse_from(argv.clone()).expect("parses");
    let store = RuleStore::open(&rules, PolicyHandle::new(Default::default())).expect("store");
    let levels: Arc<Mutex<Vec<bool>>> = Arc::default();
    let seen = Arc::clone(&levels);
    let mut reloader = Reloader::new(argv, started.settings().clone(), store.clone())
        .with_log_level(Box::new(move |quiet| {
            seen.lock().expect("lock").push(quiet);
            Ok(())
        }));

    let outcome = reloader.reload().await;
    assert_eq!(
        (outcome.applied.len(), outcome.needs_restart.len()),
        (0, 0),
        "{outcome:?}"
    );

    std::fs::write(&rules, "10.0.0.5,0,default,default,\n").expect("rules");
    write(
        dir.path(),
        "a.toml",
        &format!("{base}quiet = true\nidle-timeout = 5\nport = 1090\nallow = [\"10.0.0.1\"]\n"),
    );
    let outcome = reloader.reload().await;
    assert_eq!(outcome.config_error, None);
    assert_eq!(outcome.applied, ["quiet"]);
    // The command line's -p 0 still wins over the file's port: not a change.
    assert_eq!(outcome.needs_restart, ["allow", "idle-timeout"]);
    assert_eq!(outcome.rules, Ok(Some(1)));
    assert_eq!(store.policy().rules().len(), 1);
    assert_eq!(*levels.lock().expect("lock"), [true]);

    // Asked again: the restart keys are still pending, the log level is not.
    let outcome = reloader.reload().await;
    assert!(outcome.applied.is_empty(), "{outcome:?}");
    assert_eq!(outcome.needs_restart, ["allow", "idle-timeout"]);
    assert_eq!(outcome.rules, Ok(None));

    // A broken file changes nothing and says where; a broken rule file keeps the rules.
    write(
        dir.path(),
        "a.toml",
        &format!("{base}quiet = false\nidle-timeout = \"soon\"\n"),
    );
    std::fs::write(&rules, "10.0.0.5,7,default,default,\n").expect("rules");
    let outcome = reloader.reload().await;
    let error = outcome.config_error.expect("refused");
    assert!(error.contains("a.toml:5"), "{error}");
    assert!(outcome.applied.is_empty());
    assert!(outcome.rules.is_err(), "{:?}", outcome.rules);
    assert_eq!(store.policy().rules().len(), 1);
    assert_eq!(*levels.lock().expect("lock"), [true]);
}

/// How long the daemon may take to start or to answer a signal.
const WAIT: Duration = Duration::from_secs(20);

#[test]
fn sighup_reloads_the_running_daemon_and_names_what_needs_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules");
    let base = format!(
        "listen = \"127.0.0.1\"\nport = 0\napi = \"off\"\npolicy = \"{}\"\n",
        rules.display()
    );
    let file = write(dir.path(), "a.toml", &base);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mptcp-socksd"))
        .arg("--config")
        .arg(&file)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = i32::try_from(child.id())?;
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().context("stderr")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let wait_for = |needle: &str| -> anyhow::Result<String> {
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        bail!("no log line with {needle:?}")
    };
    let result = (|| {
        wait_for("SOCKS5 listener")?;
        write(
            dir.path(),
            "a.toml",
            &format!("{base}idle-timeout = 7\nno-pac = true\n"),
        );
        send(pid, libc::SIGHUP)?;
        let line = wait_for("in force only after a restart")?;
        assert!(line.contains("idle-timeout, no-pac"), "{line}");
        assert!(child.try_wait()?.is_none(), "SIGHUP stopped the daemon");
        send(pid, libc::SIGTERM)?;
        let deadline = Instant::now() + WAIT;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("the daemon did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Sends `signal` to `pid` with kill(1), the tests' only way without unsafe code.
fn send(pid: i32, signal: i32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid}: {status}");
    Ok(())
}

/// The config decides who may use the proxy: a file that someone other than root and the
/// daemon's user could change is refused, as the rule file would be.
#[test]
fn a_config_file_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "open.toml", "port = 1081\n");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let refused = cli_with(&path, &[])
        .expect_err("group/other-writable")
        .to_string();
    assert!(refused.contains("not trusted"), "{refused}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    cli_with(&path, &[]).expect("trusted once only its owner can write it");
}
