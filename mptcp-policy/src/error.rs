use std::fmt;

/// Everything that can go wrong in this crate.
///
/// Parse errors carry the offending input (and, from a rule file, the line number), so an
/// operator can find the mistake without guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// One field of a rule is not valid.
    #[error("invalid {field} {input:?}: {reason}")]
    Invalid {
        /// Which field: "destination", "enable", "scheduler", "path manager", "access" or
        /// "option".
        field: Field,
        /// The text that was given.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// A line of a rule file could not be parsed.
    #[error("line {line}: {reason} (in {text:?})")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// The whole offending line.
        text: String,
        /// Why it was refused.
        reason: String,
    },
    /// The same destination appears twice.
    #[error("line {line}: duplicate rule for {destination} (first given on line {first_line})")]
    Duplicate {
        /// The destination, as written in the file.
        destination: String,
        /// Line of the second occurrence (0 when not from a file).
        line: usize,
        /// Line of the first occurrence (0 when not from a file).
        first_line: usize,
    },
}

/// The fields of a rule, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// The first field: address, prefix, name, wildcard or `*`.
    Destination,
    /// The second field: `1` or `0`.
    Enable,
    /// The third field.
    Scheduler,
    /// The fourth field.
    PathManager,
    /// The `access=` option after the four fields.
    Access,
    /// An option after the four fields that is not known.
    Option,
}

impl Field {
    /// The name used in messages and in the REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Destination => "destination",
            Field::Enable => "enable",
            Field::Scheduler => "scheduler",
            Field::PathManager => "path manager",
            Field::Access => "access",
            Field::Option => "option",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    pub(crate) fn invalid(field: Field, input: &str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            input: input.to_owned(),
            reason: reason.into(),
        }
    }

    /// The 1-based line number, for errors that come from a rule file.
    pub fn line(&self) -> Option<usize> {
        match self {
            Error::Parse { line, .. } | Error::Duplicate { line, .. } if *line > 0 => Some(*line),
            _ => None,
        }
    }
}
