//! The daemon's TLS identity on disk: created once with private modes, loaded after that,
//! never replaced when half of it is missing, refused when the key is open to others; and
//! `mptcpctl tls-fingerprint` printing what boxes pin. Real files in temporary
//! directories.

use std::fs::{self, Permissions};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use mptcp_socksd::tls_identity::{
    self, CERT_FILE, Fingerprint, KEY_FILE, Origin, TlsIdentity, TlsIdentityError,
};

fn mode(path: &Path) -> Result<u32> {
    Ok(fs::symlink_metadata(path)?.mode() & 0o7777)
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    Ok(fs::set_permissions(path, Permissions::from_mode(mode))?)
}

/// A state directory with a fresh identity in it.
fn created() -> Result<(tempfile::TempDir, PathBuf, TlsIdentity)> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("state");
    let identity = tls_identity::load_or_create(&dir)?;
    Ok((tmp, dir, identity))
}

fn error_text<T: std::fmt::Debug>(result: Result<T, TlsIdentityError>) -> Result<String> {
    match result {
        Ok(value) => bail!("expected an error, got {value:?}"),
        Err(err) => Ok(err.to_string()),
    }
}

#[test]
fn the_first_call_creates_private_files_and_the_second_loads_them() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // Two missing levels: the state directory's own mode is 0700 whatever the umask.
    let dir = tmp.path().join("var").join("state");
    let first = tls_identity::load_or_create(&dir)?;
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    assert_eq!(
        first.origin,
        Origin::Created {
            cert: cert.clone(),
            key: key.clone()
        }
    );
    assert_eq!(mode(&dir)?, 0o700);
    assert_eq!(mode(&cert)?, 0o600);
    assert_eq!(mode(&key)?, 0o600);
    assert_eq!(first.certs.len(), 1);
    assert_eq!(first.fingerprint, Fingerprint::of(&first.certs[0]));
    // No temporary file left behind.
    let mut names: Vec<_> = fs::read_dir(&dir)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names, [CERT_FILE, KEY_FILE]);

    let second = tls_identity::load_or_create(&dir)?;
    assert_eq!(
        second.origin,
        Origin::Loaded {
            cert: cert.clone(),
            key: key.clone()
        }
    );
    assert_eq!(second.fingerprint, first.fingerprint);
    assert_eq!(second.certs, first.certs);
    assert_eq!(second.key.secret_der(), first.key.secret_der());
    // The identity is one the TLS server takes.
    mptcp_socks::tls_server_config(second.certs, second.key)?;
    Ok(())
}

#[test]
fn an_existing_state_directory_keeps_its_mode() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    chmod(tmp.path(), 0o755)?;
    tls_identity::load_or_create(tmp.path())?;
    assert_eq!(mode(tmp.path())?, 0o755);
    Ok(())
}

#[test]
fn the_created_pair_loads_as_operator_files() -> Result<()> {
    let (_tmp, dir, created) = created()?;
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let loaded = tls_identity::load(&cert, &key)?;
    assert_eq!(loaded.fingerprint, created.fingerprint);
    assert_eq!(loaded.origin, Origin::Loaded { cert, key });

    // Through symlinks, as certbot's live/ directory has them.
    let links = tempfile::tempdir()?;
    let (cert_link, key_link) = (
        links.path().join("fullchain.pem"),
        links.path().join("privkey.pem"),
    );
    symlink(dir.join(CERT_FILE), &cert_link)?;
    symlink(dir.join(KEY_FILE), &key_link)?;
    assert_eq!(
        tls_identity::load(&cert_link, &key_link)?.fingerprint,
        created.fingerprint
    );
    Ok(())
}

#[test]
fn a_key_open_to_group_or_others_is_refused() -> Result<()> {
    let (_tmp, dir, _) = created()?;
    let key = dir.join(KEY_FILE);
    for loose in [0o644, 0o640, 0o604, 0o660, 0o602] {
        chmod(&key, loose)?;
        for result in [
            tls_identity::load_or_create(&dir).map(|_| ()),
            tls_identity::load(&dir.join(CERT_FILE), &key).map(|_| ()),
        ] {
            let text = error_text(result)?;
            assert!(text.contains(&key.display().to_string()), "{text}");
            assert!(
                text.contains(&format!("chmod 600 {}", key.display())),
                "{text}"
            );
            assert!(text.contains(&format!("{loose:o}")), "{text}");
        }
    }
    chmod(&key, 0o400)?;
    tls_identity::load_or_create(&dir)?;
    Ok(())
}

#[test]
fn a_key_of_another_user_is_refused() -> Result<()> {
    if !mptcp_test_support::require_root("to give the key file to another user") {
        return Ok(());
    }
    let (_tmp, dir, _) = created()?;
    let key = dir.join(KEY_FILE);
    std::os::unix::fs::chown(&key, Some(54321), None)?;
    let text = error_text(tls_identity::load_or_create(&dir))?;
    assert!(text.contains(&key.display().to_string()), "{text}");
    assert!(text.contains("owned by uid 54321"), "{text}");
    Ok(())
}

#[test]
fn half_an_identity_is_refused_and_nothing_is_written() -> Result<()> {
    for (remove, keep) in [(CERT_FILE, KEY_FILE), (KEY_FILE, CERT_FILE)] {
        let (_tmp, dir, _) = created()?;
        let kept = fs::read(dir.join(keep))?;
        fs::remove_file(dir.join(remove))?;
        let text = error_text(tls_identity::load_or_create(&dir))?;
        assert!(
            text.contains(&format!("{} does not exist", dir.join(remove).display())),
            "{text}"
        );
        assert!(text.contains("refusing"), "{text}");
        assert!(!dir.join(remove).exists(), "{remove} was created");
        assert_eq!(fs::read(dir.join(keep))?, kept, "{keep} was changed");
    }
    Ok(())
}

#[test]
fn a_symlink_in_place_of_a_file_is_neither_followed_nor_replaced() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let elsewhere = tmp.path().join("elsewhere.pem");
    symlink(&elsewhere, tmp.path().join(KEY_FILE))?;
    let text = error_text(tls_identity::load_or_create(tmp.path()))?;
    assert!(text.contains(CERT_FILE), "{text}");
    assert!(!elsewhere.exists(), "the link was written through");
    assert!(!tmp.path().join(CERT_FILE).exists());
    assert!(
        fs::symlink_metadata(tmp.path().join(KEY_FILE))?
            .file_type()
            .is_symlink()
    );
    Ok(())
}

#[test]
fn broken_files_are_named_in_the_error() -> Result<()> {
    let key_pem_of = |dir: &Path| fs::read_to_string(dir.join(KEY_FILE));
    let cases: &[(&str, &[u8], &str)] = &[
        (CERT_FILE, b"", "not a PEM file"),
        (CERT_FILE, b"\x00\xff garbage \x80\n", "not a PEM file"),
        (
            CERT_FILE,
            b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            "not valid base64",
        ),
        (
            CERT_FILE,
            b"-----BEGIN CERTIFICATE-----\nMIIB\n",
            "no -----END line",
        ),
        (
            CERT_FILE,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "does not parse",
        ),
        (KEY_FILE, b"garbage", "not a PEM file"),
        (
            KEY_FILE,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "no usable private key",
        ),
    ];
    for &(file, contents, problem) in cases {
        let (_tmp, dir, _) = created()?;
        let path = dir.join(file);
        fs::write(&path, contents)?;
        let text = error_text(tls_identity::load_or_create(&dir))?;
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(problem), "{file} {contents:?}: {text}");
    }

    // The key where the certificate should be, and the other way round.
    let (_tmp, dir, _) = created()?;
    let key_pem = key_pem_of(&dir)?;
    let cert_pem = fs::read_to_string(dir.join(CERT_FILE))?;
    fs::write(dir.join(CERT_FILE), &key_pem)?;
    let text = error_text(tls_identity::load_or_create(&dir))?;
    assert!(text.contains("holds no certificate"), "{text}");
    assert!(
        !text.contains(key_pem.lines().nth(1).context("key PEM")?),
        "{text}"
    );
    fs::write(dir.join(CERT_FILE), &cert_pem)?;
    fs::write(dir.join(KEY_FILE), &cert_pem)?;
    let text = error_text(tls_identity::load_or_create(&dir))?;
    assert!(text.contains("holds no private key"), "{text}");

    // A directory where the certificate file should be.
    let (_tmp, dir, _) = created()?;
    fs::remove_file(dir.join(CERT_FILE))?;
    fs::create_dir(dir.join(CERT_FILE))?;
    let text = error_text(tls_identity::load_or_create(&dir))?;
    assert!(text.contains("is not a regular file"), "{text}");
    Ok(())
}

#[test]
fn a_key_of_another_certificate_is_refused() -> Result<()> {
    let (_tmp1, one, _) = created()?;
    let (_tmp2, two, _) = created()?;
    let text = error_text(tls_identity::load(
        &one.join(CERT_FILE),
        &two.join(KEY_FILE),
    ))?;
    assert!(text.contains("is not the key of the certificate"), "{text}");
    assert!(
        text.contains(&one.join(CERT_FILE).display().to_string()),
        "{text}"
    );
    assert!(
        text.contains(&two.join(KEY_FILE).display().to_string()),
        "{text}"
    );
    Ok(())
}

#[test]
fn missing_files_are_named() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (cert, key) = (tmp.path().join("c.pem"), tmp.path().join("k.pem"));
    let text = error_text(tls_identity::load(&cert, &key))?;
    assert_eq!(text, format!("{} does not exist", cert.display()));
    let text = error_text(tls_identity::fingerprint_of(tmp.path()))?;
    assert_eq!(
        text,
        format!("{} does not exist", tmp.path().join(CERT_FILE).display())
    );
    Ok(())
}

#[test]
fn debug_output_holds_no_key() -> Result<()> {
    let (_tmp, dir, identity) = created()?;
    let debug = format!("{identity:?}");
    let key_pem = fs::read_to_string(dir.join(KEY_FILE))?;
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!debug.contains(line), "{debug}");
    }
    let der = identity.key.secret_der();
    assert!(
        !debug.contains(&format!("{:?}", &der[der.len() - 8..])[1..20]),
        "{debug}"
    );
    assert!(debug.contains(&identity.fingerprint.to_string()), "{debug}");
    Ok(())
}

#[test]
fn the_fingerprint_is_what_openssl_prints() -> Result<()> {
    let (_tmp, dir, identity) = created()?;
    let cert = dir.join(CERT_FILE);
    let out = match Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert)
        .output()
    {
        Ok(out) => out,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            mptcp_test_support::skip("the openssl CLI is not installed (apt-get install openssl)");
            return Ok(());
        }
        Err(err) => return Err(err.into()),
    };
    ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "sha256 Fingerprint=AB:CD:..." (the label's case varies between versions).
    let printed = String::from_utf8(out.stdout)?;
    let hex = printed
        .trim()
        .split_once('=')
        .context("no = in openssl's output")?
        .1
        .replace(':', "")
        .to_lowercase();
    assert_eq!(hex, identity.fingerprint.to_string());
    assert_eq!(hex.len(), 64);

    // Made out to mptcp-socksd, with an ECDSA P-256 key.
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DNS:mptcp-socksd"), "{text}");
    assert!(text.contains("prime256v1"), "{text}");
    Ok(())
}

#[test]
fn fingerprint_of_reads_a_state_directory_or_a_certificate() -> Result<()> {
    let (_tmp, dir, identity) = created()?;
    assert_eq!(tls_identity::fingerprint_of(&dir)?, identity.fingerprint);
    assert_eq!(
        tls_identity::fingerprint_of(&dir.join(CERT_FILE))?,
        identity.fingerprint
    );
    // The key is not needed, nor are its permissions looked at.
    chmod(&dir.join(KEY_FILE), 0o644)?;
    fs::remove_file(dir.join(KEY_FILE))?;
    assert_eq!(tls_identity::fingerprint_of(&dir)?, identity.fingerprint);
    Ok(())
}

fn mptcpctl(args: &[&Path], cwd: &Path) -> Result<(i32, String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_mptcpctl"))
        .arg("tls-fingerprint")
        .args(args)
        .current_dir(cwd)
        // Not to be reached: this command needs no daemon.
        .env("MPTCP_SOCKS_API", "http://127.0.0.1:9")
        .output()?;
    Ok((
        out.status.code().context("mptcpctl killed by a signal")?,
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

#[test]
fn mptcpctl_prints_the_fingerprint_without_a_daemon() -> Result<()> {
    let (tmp, dir, identity) = created()?;
    let want = format!("sha256={}\n", identity.fingerprint);
    let cert = dir.join(CERT_FILE);
    for args in [&[dir.as_path()][..], &[cert.as_path()], &[]] {
        // Without a path: the current directory, the default state directory.
        let (code, stdout, stderr) = mptcpctl(args, &dir)?;
        assert_eq!(
            (code, stdout.as_str()),
            (0, want.as_str()),
            "{args:?}: {stderr}"
        );
    }

    let missing = tmp.path().join("nowhere");
    let (code, stdout, stderr) = mptcpctl(&[&missing], tmp.path())?;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!("{} does not exist", missing.display())),
        "{stderr}"
    );
    // The current directory without an identity in it.
    let (code, _, stderr) = mptcpctl(&[], tmp.path())?;
    assert_eq!(code, 1);
    assert!(stderr.contains(CERT_FILE), "{stderr}");
    Ok(())
}
