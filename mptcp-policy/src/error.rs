use std::fmt;

/// Everything that can go wrong in this crate.
///
/// Parse errors carry the offending input (and, from a rule file, the line number), so an
/// operator can find the mistake without guessing. The input is kept only as an
/// excerpt: at most 60 characters, `\` and `"` escaped, control and invisible formatting
/// characters written as escapes (`\n`, `\x1b`, `\u{202e}`), and `… (N more bytes)`
/// where it was cut. The errors end up in logs, in `GET /health` and in REST answers, so
/// a megabyte-long line must not travel along, nor a terminal escape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// One field of a rule is not valid.
    #[error("invalid {field} \"{input}\": {reason}")]
    Invalid {
        /// Which field: "destination", "enable", "scheduler", "path manager", "access" or
        /// "option".
        field: Field,
        /// An excerpt of the text that was given (see [`Error`]).
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// A line of a rule file could not be parsed.
    #[error("line {line}: {reason} (in \"{text}\")")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// An excerpt of the offending line (see [`Error`]).
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

/// What a value was given for, for error messages: a field of a rule, or another keyword
/// this crate parses.
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
    /// The `via=` option after the four fields.
    Via,
    /// An option after the four fields that is not known.
    Option,
    /// A path-manager mode ([`PmMode`](crate::PmMode)).
    PmMode,
    /// A kernel flavour ([`Flavour`](crate::Flavour)).
    Flavour,
    /// What a connection carries ([`Transport`](crate::Transport)).
    Transport,
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
            Field::Via => "via",
            Field::Option => "option",
            Field::PmMode => "path-manager mode",
            Field::Flavour => "kernel flavour",
            Field::Transport => "transport",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much of the offending text an [`Error`] keeps: enough to recognise a rule line
/// (an address or a name and its settings), little enough that a hostile line cannot
/// flood a log or a REST answer.
///
/// The excerpt holds the first `MAX_EXCERPT_CHARS` characters with `\` and `"` escaped
/// and control and invisible formatting characters written as escapes (`\n`, `\x1b`,
/// `\u{202e}`), so it prints on one line and cannot drive a terminal; a cut text ends in
/// `… (N more bytes)`.
pub(crate) const MAX_EXCERPT_CHARS: usize = 60;

/// `text` as an [`Error`] carries it: see [`MAX_EXCERPT_CHARS`].
pub(crate) fn excerpt(text: &str) -> String {
    use fmt::Write as _;
    let mut out = String::new();
    let mut kept = 0;
    for (n, c) in text.chars().enumerate() {
        if n == MAX_EXCERPT_CHARS {
            break;
        }
        kept += c.len_utf8();
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() || is_invisible_format(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    if kept < text.len() {
        let _ = write!(out, "\u{2026} ({} more bytes)", text.len() - kept);
    }
    out
}

/// Characters that change how the text around them is shown without showing themselves:
/// bidirectional overrides and isolates (which can make a line read backwards), zero-width
/// characters and the byte-order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
    )
}

impl Error {
    pub(crate) fn invalid(field: Field, input: &str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            input: excerpt(input),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_bounded_escaped_and_say_what_was_cut() {
        let cases = [
            ("10.0.0.1,1,default,default,", "10.0.0.1,1,default,default,"),
            ("a\nforged line", "a\\nforged line"),
            (
                "\x1b[31mred\x1b[0m\r\t\0",
                "\\x1b[31mred\\x1b[0m\\r\\t\\x00",
            ),
            ("q\"uote\\", "q\\\"uote\\\\"),
            ("\u{202e}evil\u{85}", "\\u{202e}evil\\u{85}"),
            ("caf\u{e9}", "caf\u{e9}"),
        ];
        for (text, shown) in cases {
            assert_eq!(excerpt(text), shown, "{text:?}");
        }
        let long = format!("{}{}", "x".repeat(MAX_EXCERPT_CHARS), "y".repeat(1_000_000));
        assert_eq!(
            excerpt(&long),
            format!(
                "{}\u{2026} (1000000 more bytes)",
                "x".repeat(MAX_EXCERPT_CHARS)
            )
        );
        // Cut by characters, counted in bytes: a multi-byte character is never split.
        let wide = "\u{e9}".repeat(MAX_EXCERPT_CHARS + 1);
        assert!(
            excerpt(&wide).ends_with("\u{2026} (2 more bytes)"),
            "{}",
            excerpt(&wide)
        );
        // Escaping can lengthen what is kept, never beyond a few bytes per character.
        assert!(excerpt(&"\x1b".repeat(10_000)).len() < MAX_EXCERPT_CHARS * 4 + 40);
    }

    #[test]
    fn a_huge_invalid_value_gives_a_short_message() {
        let err = Error::invalid(Field::Destination, &"\n".repeat(1 << 20), "too long");
        let message = err.to_string();
        assert!(message.len() < 400, "{} bytes", message.len());
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn a_huge_bad_line_in_a_rule_file_gives_a_short_message() {
        let text = format!(
            "10.0.0.1,1,default,default,\n{}\x1b[2J,1,default,default,\n",
            "a".repeat(1 << 20)
        );
        let err = crate::Policy::parse(&text).expect_err("bad line");
        assert_eq!(err.line(), Some(2));
        let message = err.to_string();
        assert!(message.len() < 600, "{} bytes: {message}", message.len());
        assert!(!message.contains('\x1b'), "{message}");
        assert!(message.contains("more bytes"), "{message}");
    }
}
