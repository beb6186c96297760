//! The daemon's TLS identity for `--tls`: a certificate and its private key, as PEM files.
//!
//! Without files given by the operator the daemon keeps a self-signed identity in its state
//! directory ([`CERT_FILE`], [`KEY_FILE`]), made on the first start and loaded on every
//! later one: boxes pin its fingerprint (`#sha256=`), so it is never replaced behind their
//! back. `mptcpctl tls-fingerprint` prints that fingerprint from the file, no daemon needed.
//!
//! The key file is trusted as sshd's `StrictModes` trusts one: owned by the daemon's user
//! (or root) and neither readable nor writable by anyone else, or it is refused. New files
//! are written with mode 0600 into a directory created with mode 0700, each under a
//! temporary name first and then renamed into place, so that a crash leaves no half-written
//! key and no existing file (or a symlink planted there) is ever written through.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mptcp_socks::rustls;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The SHA-256 of a certificate's DER, the same type a `#sha256=` pin parses to, so that
/// what the daemon prints is what a box pins.
pub use mptcp_socks::Fingerprint;

/// The certificate file inside the state directory.
pub const CERT_FILE: &str = "mptcp-socksd-cert.pem";
/// The private key file inside the state directory.
pub const KEY_FILE: &str = "mptcp-socksd-key.pem";

/// The name the self-signed certificate is made out to (its only SAN, and its CN). Boxes
/// pin the fingerprint, so the name is for people reading the certificate.
const CERT_NAME: &str = "mptcp-socksd";

/// How long a created certificate is valid: ten years (with their leap days). Pinning
/// clients do not look at the dates; anything else that does should not see it expire
/// while the box still runs.
const VALIDITY: Duration = Duration::from_secs(3653 * 24 * 60 * 60);

/// How far back a created certificate's validity starts, for peers whose clocks lag.
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);

/// Certificate chains and keys are a few KiB; a larger file is not one (and `/dev/zero`
/// given by mistake is not read forever).
const PEM_LIMIT: u64 = 1 << 20;

/// Mode bits for group and others: a key file with any of them is refused (as ssh does).
const GROUP_OR_OTHER: u32 = 0o077;

/// A certificate chain and its private key, ready for a TLS server configuration.
pub struct TlsIdentity {
    /// The certificate chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The private key of the leaf certificate. Never printed.
    pub key: PrivateKeyDer<'static>,
    /// The SHA-256 of `certs[0]`: what boxes pin.
    pub fingerprint: Fingerprint,
    /// Where the identity came from, to tell the operator.
    pub origin: Origin,
}

/// The key is left out: `{:?}` of an identity may end up in a log.
impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("certs", &self.certs.len())
            .field("key", &"[secret key elided]")
            .field("fingerprint", &self.fingerprint)
            .field("origin", &self.origin)
            .finish()
    }
}

/// Whether [`load_or_create`] made the identity just now or found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Both files were written by this call: a new fingerprint for boxes to pin.
    Created {
        /// The certificate file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
    },
    /// Both files existed and were read.
    Loaded {
        /// The certificate file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
    },
}

/// Why no identity (or fingerprint) could be had. Every message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsIdentityError {
    /// A file to read is not there.
    #[error("{} does not exist", path.display())]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// Of the two files in the state directory only one exists. A new identity is not
    /// made over the remaining one: boxes pinned the old fingerprint.
    #[error(
        "{} does not exist but {} does; refusing to create a new TLS identity over it \
         (boxes may have pinned its fingerprint): restore {}, or remove {} to create a new one",
        missing.display(),
        present.display(),
        missing.display(),
        present.display()
    )]
    Incomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that does not.
        missing: PathBuf,
    },
    /// Reading, writing or creating a file or directory failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: "read", "create", ...
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The path is a directory, device, FIFO, ... where a file was expected.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is larger than any certificate chain or key.
    #[error("{} is larger than {limit} bytes: not a PEM certificate or key", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The file is not PEM, or a PEM section in it is broken.
    #[error("{} is not a PEM file: {problem}", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's content).
        problem: String,
    },
    /// The file is PEM but holds no certificate.
    #[error("{} holds no certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file is PEM but holds no private key.
    #[error(
        "{} holds no private key (-----BEGIN PRIVATE KEY-----, or an EC or RSA one)",
        path.display()
    )]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The certificate does not parse as X.509.
    #[error("{} holds a certificate that does not parse: {problem}", path.display())]
    BadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// The parser's complaint.
        problem: String,
    },
    /// The private key is of no kind TLS can sign with (RSA, ECDSA, Ed25519), or broken.
    #[error("{} holds no usable private key (RSA, ECDSA or Ed25519)", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
    },
    /// The key is not the certificate's.
    #[error("the private key in {} is not the key of the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The key file can be read or written by group or others.
    #[error(
        "{} holds a private key and can be accessed by group or others (mode {mode:03o}): \
         chmod 600 {}",
        path.display(),
        path.display()
    )]
    LoosePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file belongs to another user, who could read or replace it.
    #[error(
        "{} holds a private key and is owned by uid {owner}, not by the daemon's uid {euid} \
         (or root): chown {euid} {}",
        path.display(),
        path.display()
    )]
    WrongOwner {
        /// The key file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The daemon's effective uid.
        euid: u32,
    },
    /// rcgen could not make a key or certificate (not expected to happen).
    #[error("cannot generate a TLS certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Loads [`CERT_FILE`] and [`KEY_FILE`] from the state directory `dir`, or, when neither
/// exists, creates them: a self-signed certificate for "mptcp-socksd" with a new ECDSA
/// P-256 key, valid for ten years. `dir` is created (mode 0700) if missing; the files get
/// mode 0600.
///
/// # Errors
///
/// [`TlsIdentityError::Incomplete`] when only one of the files exists (nothing is
/// written); when loading, everything [`load`] refuses; when creating, I/O errors naming
/// the file or directory.
pub fn load_or_create(dir: &Path) -> Result<TlsIdentity, TlsIdentityError> {
    let dir = current_if_empty(dir);
    let cert = dir.join(CERT_FILE);
    let key = dir.join(KEY_FILE);
    // lstat: a dangling symlink is there too, and is not replaced.
    match (entry_exists(&cert)?, entry_exists(&key)?) {
        (true, true) => load(&cert, &key),
        (false, false) => create(dir, cert, key),
        (true, false) => Err(TlsIdentityError::Incomplete {
            present: cert,
            missing: key,
        }),
        (false, true) => Err(TlsIdentityError::Incomplete {
            present: key,
            missing: cert,
        }),
    }
}

/// Loads a certificate chain (leaf first) and its private key from PEM files, such as the
/// operator's `--tls-cert` and `--tls-key`. Symlinks are followed (as to certbot's
/// `live/` files); the key file must be owned by the daemon's user or root and have no
/// permissions for group or others.
///
/// # Errors
///
/// A [`TlsIdentityError`] naming the file: missing, unreadable, not PEM, no certificate or
/// key in it, key file too open or someone else's, or a key not matching the certificate.
pub fn load(cert: &Path, key: &Path) -> Result<TlsIdentity, TlsIdentityError> {
    let euid = mptcp_policy::effective_uid();
    let certs = read_certs(cert)?;
    let key_der = read_key(key, euid)?;
    check_pair(cert, &certs, key, &key_der)?;
    Ok(TlsIdentity {
        fingerprint: Fingerprint::of(&certs[0]),
        certs,
        key: key_der,
        origin: Origin::Loaded {
            cert: cert.to_owned(),
            key: key.to_owned(),
        },
    })
}

/// The fingerprint of the first certificate in `path`, a PEM file, or, if `path` is a
/// directory, of [`CERT_FILE`] in it (a state directory). The key is not read.
///
/// # Errors
///
/// A [`TlsIdentityError`] naming the file: missing, unreadable, not PEM, no certificate in
/// it.
pub fn fingerprint_of(path: &Path) -> Result<Fingerprint, TlsIdentityError> {
    let path = current_if_empty(path);
    let file = match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => path.join(CERT_FILE),
        _ => path.to_owned(),
    };
    let certs = read_certs(&file)?;
    Ok(Fingerprint::of(&certs[0]))
}

/// The parent of a bare file name is "", which names no directory.
fn current_if_empty(path: &Path) -> &Path {
    if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    }
}

fn entry_exists(path: &Path) -> Result<bool, TlsIdentityError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(io_error("examine", path, source)),
    }
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> TlsIdentityError {
    TlsIdentityError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn create(dir: &Path, cert: PathBuf, key: PathBuf) -> Result<TlsIdentity, TlsIdentityError> {
    let (cert_pem, key_pem) = generate()?;
    ensure_private_dir(dir)?;
    // The key first: a crash between the two renames leaves a key without certificate,
    // which the next start refuses (Incomplete) rather than replaces.
    write_new_file(dir, &key, key_pem.as_bytes())?;
    if let Err(err) = write_new_file(dir, &cert, cert_pem.as_bytes()) {
        // The key is the one just written: removing it leaves the directory as it was.
        let _ = fs::remove_file(&key);
        return Err(err);
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io_error("sync", dir, source))?;
    // Read back what was written, through the same checks as every later start: what
    // this start uses is what the next one will.
    let identity = load(&cert, &key)?;
    Ok(TlsIdentity {
        origin: Origin::Created { cert, key },
        ..identity
    })
}

/// A new self-signed certificate and its key, as PEM.
fn generate() -> Result<(String, String), TlsIdentityError> {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![CERT_NAME.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CERT_NAME);
    // Whole seconds (X.509 has no fractions); a clock before 1970 counts as 1970.
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(since_epoch.as_secs());
    params.not_before = now - BACKDATE;
    params.not_after = now + VALIDITY;
    let cert = params.self_signed(&key_pair)?;
    Ok((cert.pem(), key_pair.serialize_pem()))
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist; the mode is
/// set explicitly, whatever the umask.
fn ensure_private_dir(dir: &Path) -> Result<(), TlsIdentityError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io_error(
                "use as directory",
                dir,
                io::Error::from(io::ErrorKind::NotADirectory),
            ));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(io_error("examine", dir, source)),
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| fs::set_permissions(dir, Permissions::from_mode(0o700)))
        .map_err(|source| io_error("create directory", dir, source))
}

/// Writes `contents` to `target`, which must not exist: a temporary file (mode 0600) in
/// `dir`, fsync, then a rename that fails rather than replaces anything at `target` (a
/// file or symlink that appeared meanwhile, from a second daemon say).
fn write_new_file(dir: &Path, target: &Path, contents: &[u8]) -> Result<(), TlsIdentityError> {
    let name = target
        .file_name()
        .map_or_else(|| "tls".into(), |n| n.to_string_lossy());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|source| io_error("create a temporary file in", dir, source))?;
    let tmp_path = tmp.path().to_owned();
    tmp.as_file()
        .set_permissions(Permissions::from_mode(0o600))
        .and_then(|()| tmp.write_all(contents))
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|source| io_error("write", &tmp_path, source))?;
    tmp.persist_noclobber(target)
        .map_err(|err| io_error("create", target, err.error))?;
    Ok(())
}

/// Reads a PEM file of at most [`PEM_LIMIT`] bytes; for a key file (`key_of` the daemon's
/// euid) the permissions are checked, on the file opened, before anything is read.
fn read_pem_file(path: &Path, key_of: Option<u32>) -> Result<Vec<u8>, TlsIdentityError> {
    let file = OpenOptions::new()
        .read(true)
        // A FIFO planted at the path would block the open until a writer comes.
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => TlsIdentityError::Missing {
                path: path.to_owned(),
            },
            _ => io_error("read", path, source),
        })?;
    let meta = file
        .metadata()
        .map_err(|source| io_error("read", path, source))?;
    if !meta.is_file() {
        return Err(TlsIdentityError::NotAFile {
            path: path.to_owned(),
        });
    }
    if let Some(euid) = key_of {
        check_key_file(path, meta.uid(), meta.mode(), euid)?;
    }
    let mut bytes = Vec::new();
    file.take(PEM_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| io_error("read", path, source))?;
    if bytes.len() as u64 > PEM_LIMIT {
        return Err(TlsIdentityError::TooLarge {
            path: path.to_owned(),
            limit: PEM_LIMIT,
        });
    }
    Ok(bytes)
}

/// sshd's rule for files it trusts: owned by root or the daemon's user; and for a secret,
/// nothing for group or others.
fn check_key_file(path: &Path, owner: u32, mode: u32, euid: u32) -> Result<(), TlsIdentityError> {
    if owner != euid && owner != 0 {
        return Err(TlsIdentityError::WrongOwner {
            path: path.to_owned(),
            owner,
            euid,
        });
    }
    if mode & GROUP_OR_OTHER != 0 {
        return Err(TlsIdentityError::LoosePermissions {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// The certificates in a PEM file, at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsIdentityError> {
    let bytes = read_pem_file(path, None)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| not_pem(path, &err))?;
    if certs.is_empty() {
        return Err(if has_pem_section(&bytes) {
            TlsIdentityError::NoCertificate {
                path: path.to_owned(),
            }
        } else {
            no_pem_section(path)
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file whose permissions pass [`check_key_file`].
fn read_key(path: &Path, euid: u32) -> Result<PrivateKeyDer<'static>, TlsIdentityError> {
    let bytes = read_pem_file(path, Some(euid))?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) if has_pem_section(&bytes) => {
            Err(TlsIdentityError::NoPrivateKey {
                path: path.to_owned(),
            })
        }
        Err(pem::Error::NoItemsFound) => Err(no_pem_section(path)),
        Err(err) => Err(not_pem(path, &err)),
    }
}

/// The key is one the TLS stack can sign with and is the leaf certificate's, and the leaf
/// parses: checked here so that the error names the files, not later in the handshake
/// setup.
fn check_pair(
    cert_path: &Path,
    certs: &[CertificateDer<'static>],
    key_path: &Path,
    key: &PrivateKeyDer<'static>,
) -> Result<(), TlsIdentityError> {
    let signing_key = rustls::crypto::ring::sign::any_supported_type(key).map_err(|_| {
        TlsIdentityError::BadKey {
            path: key_path.to_owned(),
        }
    })?;
    match rustls::sign::CertifiedKey::new(certs.to_vec(), signing_key).keys_match() {
        // A key whose public half the provider cannot give is not compared.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsIdentityError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        }),
        Err(err) => Err(TlsIdentityError::BadCertificate {
            path: cert_path.to_owned(),
            problem: err.to_string(),
        }),
    }
}

fn has_pem_section(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn no_pem_section(path: &Path) -> TlsIdentityError {
    TlsIdentityError::NotPem {
        path: path.to_owned(),
        problem: "no -----BEGIN line in it".to_owned(),
    }
}

/// What is wrong, in words that quote nothing from the file: it may be the key.
fn not_pem(path: &Path, err: &pem::Error) -> TlsIdentityError {
    let problem = match err {
        pem::Error::MissingSectionEnd { .. } => "a section has no -----END line",
        pem::Error::IllegalSectionStart { .. } => "a -----BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "it does not parse",
    };
    TlsIdentityError::NotPem {
        path: path.to_owned(),
        problem: problem.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_trusted_as_sshd_does() {
        let path = Path::new("/state/key.pem");
        let table: &[(u32, u32, u32, Option<&str>)] = &[
            // (owner, mode, euid, refusal)
            (1000, 0o100600, 1000, None),
            (1000, 0o100400, 1000, None),
            (0, 0o100600, 0, None),
            (0, 0o100600, 1000, None),
            (1000, 0o100640, 1000, Some("chmod 600 /state/key.pem")),
            (1000, 0o100604, 1000, Some("mode 604")),
            (1000, 0o100620, 1000, Some("group or others")),
            (1000, 0o100610, 1000, Some("chmod 600")),
            (1001, 0o100600, 1000, Some("owned by uid 1001")),
            (1001, 0o100600, 0, Some("chown 0 /state/key.pem")),
        ];
        for &(owner, mode, euid, refusal) in table {
            let result = check_key_file(path, owner, mode, euid);
            match (refusal, result) {
                (None, Ok(())) => {}
                (Some(want), Err(err)) => {
                    let text = err.to_string();
                    assert!(text.contains(want), "{owner} {mode:o} {euid}: {text}");
                    assert!(text.contains("/state/key.pem"), "{text}");
                }
                (want, got) => panic!("{owner} {mode:o} {euid}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn pem_errors_quote_nothing_from_the_file() {
        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0!!c2VjcmV0\n-----END PRIVATE KEY-----\n";
        let err = PrivateKeyDer::from_pem_slice(secret.as_bytes())
            .err()
            .map(|err| not_pem(Path::new("k.pem"), &err).to_string());
        let text = err.unwrap_or_default();
        assert!(text.starts_with("k.pem is not a PEM file"), "{text}");
        assert!(!text.contains("c2Vj"), "{text}");
    }

    #[test]
    fn the_effective_uid_is_the_owner_of_what_this_process_creates() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert_eq!(
            mptcp_policy::effective_uid(),
            fs::metadata(dir.path())?.uid()
        );
        Ok(())
    }
}
