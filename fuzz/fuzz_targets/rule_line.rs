//! The four fields of one rule, as the REST API hands them to the parser (the rule file
//! splits its lines into the same four fields).
//!
//! Properties: `Rule::from_fields` never panics; a rule it accepts prints as a line that
//! parses back to the same rule (alone and as a one-rule file) and prints the same again;
//! a refusal names the field at fault and carries that field's text.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mptcp_policy::{Error, Field, Policy, Rule};

/// The seeds in `fuzz/seeds/rule_line/` are in `arbitrary`'s encoding of this struct: the
/// four fields' bytes one after the other, then one byte each for the lengths of
/// `scheduler`, `enable` and `destination` (the last field takes the rest).
#[derive(Debug, Arbitrary)]
struct Fields {
    destination: String,
    enable: String,
    scheduler: String,
    path_manager: String,
}

fuzz_target!(|f: Fields| {
    match Rule::from_fields(&f.destination, &f.enable, &f.scheduler, &f.path_manager) {
        Ok(rule) => {
            let line = rule.to_string();
            let back = line.parse::<Rule>();
            assert_eq!(back.as_ref(), Ok(&rule), "the rule printed as {line:?}");
            assert_eq!(back.map(|r| r.to_string()).unwrap_or_default(), line);
            let file = Policy::parse(&line);
            assert_eq!(
                file.as_ref().map(|p| p.rules()),
                Ok(std::slice::from_ref(&rule)),
                "the line {line:?} as a rule file"
            );
        }
        Err(Error::Invalid { field, input, .. }) => {
            let given = match field {
                Field::Destination => &f.destination,
                Field::Enable => &f.enable,
                Field::Scheduler => &f.scheduler,
                Field::PathManager => &f.path_manager,
                other => panic!("from_fields blamed an unexpected field {other:?}"),
            };
            // The error keeps a bounded, escaped excerpt: the text itself when it is short
            // and plain.
            let given = given.trim();
            let plain = given.chars().count() <= 60
                && given
                    .chars()
                    .all(|c| c.is_ascii_graphic() && c != '\\' && c != '"' || c == ' ');
            if plain {
                assert_eq!(input, given, "the error for the {field} carries other text");
            }
            assert!(input.len() <= 60 * 10 + 32, "unbounded excerpt: {} bytes", input.len());
        }
        Err(other) => panic!("from_fields returned a non-field error: {other:?}"),
    }
});
