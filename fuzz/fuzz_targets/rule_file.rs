//! A rule file, as an operator (or anyone who can write the file) hands it to the daemon.
//!
//! Properties: the parser never panics; what it accepts, the writer prints in a form the
//! parser reads back as the same policy, and printing that again gives the same text;
//! what it refuses, it refuses naming a line of the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mptcp_policy::Policy;

fuzz_target!(|data: &[u8]| {
    // The daemon reads the file with `read_to_string`: anything else never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::parse(text) {
        Ok(policy) => {
            let written = policy.to_string();
            let back = written.parse::<Policy>();
            assert_eq!(back.as_ref(), Ok(&policy), "the writer printed:\n{written}");
            let rewritten = back.map(|p| p.to_string()).unwrap_or_default();
            assert_eq!(
                rewritten, written,
                "printing the re-read policy changed the text"
            );
            assert_eq!(
                written.lines().count(),
                policy.len() + 1,
                "one line per rule and '.'"
            );
        }
        Err(err) => {
            let lines = text.lines().count();
            let line = err
                .line()
                .unwrap_or_else(|| panic!("a rule file error without a line number: {err:?}"));
            assert!(
                (1..=lines).contains(&line),
                "error on line {line} of a {lines}-line input: {err}"
            );
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("line {line}:")),
                "the message does not start with its line: {message}"
            );
        }
    }
});
