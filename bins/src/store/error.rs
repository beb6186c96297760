//! What the rule store reports: its errors, the last failed reload, what a reload found.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Why the rule store could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The rule file exists but could not be read.
    #[error("cannot read rule file {}: {source}", path.display())]
    Read {
        /// The rule file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The rule file does not parse (at startup, or on reload).
    #[error("rule file {}: {source}", path.display())]
    Parse {
        /// The rule file.
        path: PathBuf,
        /// The parse error, with line number and text.
        source: mptcp_policy::Error,
    },
    /// The rule file was edited by hand and the edit does not parse. Writing now would throw
    /// the operator's edit away, so the change is refused until the file is fixed.
    #[error(
        "rule file {} was edited by hand and does not parse ({source}); fix the file before changing rules through the API",
        path.display()
    )]
    BrokenOnDisk {
        /// The rule file.
        path: PathBuf,
        /// The parse error, with line number and text.
        source: mptcp_policy::Error,
    },
    /// The rule file is empty on disk: an editor writing it in place truncates it first.
    /// Writing now would put just this change in place of the operator's rules, so the
    /// change is refused until the file has its content (the store always ends it with
    /// its `.` line).
    #[error(
        "rule file {} is empty on disk, as while an editor writes it; try again once it is written (a file without rules holds just the line \".\")",
        path.display()
    )]
    EmptyOnDisk {
        /// The rule file.
        path: PathBuf,
    },
    /// Writing the new rule file failed; nothing was changed.
    #[error("cannot write rule file {}: {source}", path.display())]
    Write {
        /// The rule file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Someone other than root and the daemon's user could change the rule file, or
    /// redirect it (sshd's `StrictModes`): it is neither read nor written.
    #[error("refusing the rule file {}: {reason}", path.display())]
    Unsafe {
        /// The rule file, as given.
        path: PathBuf,
        /// Which step is unsafe, with its owner and mode.
        reason: String,
    },
    /// The rule file is larger than the daemon reads, or a change would make it so.
    #[error(
        "rule file {} is larger than the limit of {limit} bytes",
        path.display()
    )]
    TooLarge {
        /// The rule file.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The rule file holds more rules than the daemon keeps, or a change would make it so.
    #[error(
        "rule file {} would hold {rules} rules, more than the limit of {limit}",
        path.display()
    )]
    TooManyRules {
        /// The rule file.
        path: PathBuf,
        /// How many rules it holds (or would).
        rules: usize,
        /// The limit.
        limit: usize,
    },
    /// The rule file is not UTF-8 text.
    #[error(
        "rule file {}: line {line}, column {column}: not UTF-8 text",
        path.display()
    )]
    NotUtf8 {
        /// The rule file.
        path: PathBuf,
        /// 1-based line of the first invalid byte.
        line: usize,
        /// 1-based byte offset of that byte in its line.
        column: usize,
    },
}

/// The last failed reload of the rule file, kept for `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadError {
    /// What went wrong, including the line number and an excerpt of the line for a parse
    /// error (never more of the file: see [`mptcp_policy::Error`]).
    pub message: String,
    /// 1-based line number of the offending line, for parse errors.
    pub line: Option<usize>,
    /// When it happened, in seconds since the Unix epoch.
    pub at_unix: u64,
}

/// What a reload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reloaded {
    /// The file holds the policy already in force (e.g. our own write), or it is the very
    /// file last read (then a broken file stays reported, not reported again).
    Unchanged,
    /// The file changed; the new policy, with this many rules, is now in force.
    Changed {
        /// Number of rules now in force.
        rules: usize,
    },
    /// The file is gone; the policy in force is kept (and written back on the next change).
    Missing,
}
