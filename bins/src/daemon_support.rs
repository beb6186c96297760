//! Small pieces of the daemon's start-up that deserve tests of their own: the
//! file-descriptor limit, secrets read from files, and log formatting that escapes what
//! clients send.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub use mptcp_policy::raise_fd_limit;

/// [`raise_fd_limit`], logged: the limit the daemon sizes its connection cap from (1024,
/// the usual default, with a warning, when it cannot be raised).
pub fn raise_and_log_fd_limit() -> u64 {
    match raise_fd_limit() {
        Ok(limit) => {
            tracing::info!(limit, "file-descriptor limit");
            limit
        }
        Err(e) => {
            tracing::warn!("cannot raise the file-descriptor limit: {e}");
            1024
        }
    }
}

/// Secret files are one line; anything longer is not a password file.
const SECRET_MAX: u64 = 4096;

/// Reads a secret (password, token) from a file: one line, the trailing newline dropped.
/// Returns the secret and a warning when others than the owner may read the file.
///
/// # Errors
/// When the file cannot be read, is empty, longer than 4 KiB, or has more than one line.
pub fn read_secret_file(path: &Path) -> Result<(String, Option<String>), String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .permissions()
        .mode();
    let mut text = String::new();
    file.take(SECRET_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > SECRET_MAX {
        return Err(format!(
            "{}: longer than {SECRET_MAX} bytes",
            path.display()
        ));
    }
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    if secret.contains('\n') {
        return Err(format!(
            "{}: more than one line (the whole first line is the secret)",
            path.display()
        ));
    }
    let warning = (mode & 0o044 != 0).then(|| {
        format!(
            "{} can be read by other users (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        )
    });
    Ok((secret.to_owned(), warning))
}

/// `text` with every control character (C0, DEL, C1: newlines, escape sequences) written
/// as an escape, so a log line stays one line and a terminal shows, not obeys, it.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// The daemon's field formatter: `name=value` pairs separated by spaces, the message
/// first without a name, every value passed through [`escape_controls`]. At this depth
/// no call site can forget to escape a client's bytes.
pub fn escaping_fields()
-> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt as _;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        let text = escape_controls(&text);
        if field.name() == "message" {
            writer.write_str(&text)
        } else {
            write!(writer, "{field}={text}")
        }
    })
    .delimited(" ")
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        let table = [
            ("plain text: ü ok", "plain text: ü ok"),
            ("a\nINFO forged", "a\\nINFO forged"),
            ("\x1b[31mred", "\\u{1b}[31mred"),
            ("tab\tcr\r\u{7f}\u{85}", "tab\\tcr\\r\\u{7f}\\u{85}"),
        ];
        for (input, escaped) in table {
            assert_eq!(escape_controls(input), escaped, "{input:?}");
        }
    }

    #[test]
    fn secret_files_are_one_line() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secret");
        let write = |text: &str, mode: u32| -> io::Result<()> {
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        };
        write("s3cret\n", 0o600)?;
        assert_eq!(read_secret_file(&path)?, ("s3cret".to_owned(), None));
        write("s3cret", 0o644)?;
        let (secret, warning) = read_secret_file(&path)?;
        assert_eq!(secret, "s3cret");
        assert!(warning.is_some_and(|w| w.contains("644")));
        for bad in ["", "\n", "one\ntwo\n"] {
            write(bad, 0o600)?;
            assert!(read_secret_file(&path).is_err(), "{bad:?}");
        }
        write(&"x".repeat(5000), 0o600)?;
        assert!(read_secret_file(&path).is_err());
        assert!(read_secret_file(&dir.path().join("missing")).is_err());
        Ok(())
    }

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit() -> io::Result<()> {
        let raised = raise_fd_limit()?;
        let (soft, hard) = mptcp_policy::fd_limit()?;
        assert_eq!((soft, raised), (hard, hard));
        Ok(())
    }
}
