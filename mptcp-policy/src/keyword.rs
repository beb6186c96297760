//! Keyword types: enums whose values are written as fixed words, in the rule file
//! (`roundrobin`), the REST API (`"in-kernel"`) or on the command line (`kernel`).
//!
//! Every such type is declared with [`keyword_enum!`], so they all print and parse
//! alike: `as_str` and `Display` give the one spelling, `FromStr` takes it back (in any
//! case, and any alias the type declares), and a word it does not know gets
//! [`Error::Invalid`] naming every word it would have taken.

use crate::error::{Error, Field};

/// Declares a keyword enum: the enum as written (attributes and derives included; it must
/// be `Copy`), plus `ALL`, `as_str`, `Display` and a case-insensitive `FromStr` whose
/// errors name `$field` and list the accepted words. After the spelling of a variant,
/// `| "alias"` adds words `FromStr` accepts too; `Display` never prints them.
///
/// ```ignore
/// keyword_enum! {
///     /// How the daemon manages subflows.
///     #[derive(Debug, Clone, Copy, PartialEq, Eq)]
///     pub enum PmMode: Field::PmMode {
///         /// The kernel's own path manager.
///         InKernel = "in-kernel" | "kernel",
///         /// Per connection, over netlink.
///         Userspace = "userspace",
///     }
/// }
/// ```
macro_rules! keyword_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $field:path {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $text:literal $(| $alias:literal)*
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in the order of the declaration (error messages list them so).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Every word `FromStr` accepts, spellings and aliases, and what it means.
            const WORDS: &'static [(&'static str, $name)] =
                &[$(($text, $name::$variant), $(($alias, $name::$variant),)*)+];

            /// The spelling written in files, shown by the REST API and in logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::Error;

            fn from_str(input: &str) -> ::std::result::Result<Self, $crate::Error> {
                $crate::keyword::parse(input, $field, $name::WORDS)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use keyword_enum;

/// The value `input` names among `words` (compared case-insensitively), if any.
pub(crate) fn find<T>(
    input: &str,
    words: impl IntoIterator<Item = (&'static str, T)>,
) -> Option<T> {
    words
        .into_iter()
        .find_map(|(word, value)| word.eq_ignore_ascii_case(input).then_some(value))
}

/// The reason a keyword parse gives: `expected one of a, b, c`.
pub(crate) fn expected<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    let words: Vec<&str> = words.into_iter().collect();
    format!("expected one of {}", words.join(", "))
}

/// `FromStr` of every [`keyword_enum!`] type.
pub(crate) fn parse<T: Copy>(
    input: &str,
    field: Field,
    words: &[(&'static str, T)],
) -> Result<T, Error> {
    find(input, words.iter().copied())
        .ok_or_else(|| Error::invalid(field, input, expected(words.iter().map(|(word, _)| *word))))
}

#[cfg(test)]
mod tests {
    use std::fmt::{Debug, Display};
    use std::str::FromStr;

    use crate::{Access, Flavour, PathManager, PmMode, Scheduler, Transport};

    use super::*;

    /// Every value prints as its `as_str`, parses back from it (in any case), and a word
    /// the type does not know is refused naming the field and `expected`.
    fn check<T>(all: &[T], as_str: fn(T) -> &'static str, field: Field, expected: &str)
    where
        T: Copy + Debug + Display + PartialEq + FromStr<Err = Error>,
    {
        for &value in all {
            let word = value.to_string();
            assert_eq!(word, as_str(value), "{value:?}");
            assert_eq!(word.parse::<T>(), Ok(value), "{word}");
            assert_eq!(word.to_ascii_uppercase().parse::<T>(), Ok(value), "{word}");
        }
        let err = "nonsense".parse::<T>().expect_err("unknown word");
        assert_eq!(
            err,
            Error::Invalid {
                field,
                input: "nonsense".into(),
                reason: expected.into(),
            }
        );
    }

    #[test]
    fn every_keyword_type_parses_what_it_prints() {
        check(
            Scheduler::ALL,
            Scheduler::as_str,
            Field::Scheduler,
            "expected one of default, roundrobin, redundant",
        );
        check(
            Access::ALL,
            Access::as_str,
            Field::Access,
            "expected one of default, allow, deny",
        );
        check(
            PmMode::ALL,
            PmMode::as_str,
            Field::PmMode,
            "expected one of in-kernel, kernel, userspace",
        );
        check(
            Flavour::ALL,
            Flavour::as_str,
            Field::Flavour,
            "expected one of upstream, legacy, none",
        );
        check(
            Transport::ALL,
            Transport::as_str,
            Field::Transport,
            "expected one of mptcp, fallback, tcp",
        );
    }

    #[test]
    fn the_table_of_words() {
        let cases: &[(&str, PmMode)] = &[
            ("in-kernel", PmMode::InKernel),
            // `mptcp-socksd --path-manager kernel`, and what the sysctl says.
            ("kernel", PmMode::InKernel),
            ("Kernel", PmMode::InKernel),
            ("userspace", PmMode::Userspace),
        ];
        for (word, mode) in cases {
            assert_eq!(word.parse::<PmMode>(), Ok(*mode), "{word}");
        }
        // The alias is accepted, never printed: the REST API shows `in-kernel`.
        assert_eq!(PmMode::InKernel.to_string(), "in-kernel");
        assert_eq!(PmMode::ALL, [PmMode::InKernel, PmMode::Userspace]);

        // The path manager is a keyword with an optional count: the same helpers, and
        // the same words it always listed.
        let err = "mesh".parse::<PathManager>().expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "invalid path manager \"mesh\": expected one of default, fullmesh, ndiffports, ndiffports:N, binder"
        );
        for pm in PathManager::ALL {
            assert_eq!(pm.to_string().parse::<PathManager>(), Ok(*pm));
        }

        assert_eq!(find("B", [("a", 1), ("b", 2)]), Some(2));
        assert_eq!(find("c", [("a", 1), ("b", 2)]), None);
        assert_eq!(expected(["a", "b:N"]), "expected one of a, b:N");
    }
}
