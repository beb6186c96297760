//! A destination as a client or operator writes it: a rule's first field, the path of
//! `GET/PUT/DELETE /rules/<destination>`, the `ip` of a REST body.
//!
//! Properties: the parser never panics; what it accepts prints as text that parses back to
//! the same destination and prints the same again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mptcp_policy::Destination;

fuzz_target!(|text: &str| {
    if let Ok(destination) = text.parse::<Destination>() {
        let printed = destination.to_string();
        let back = printed.parse::<Destination>();
        assert_eq!(
            back.as_ref(),
            Ok(&destination),
            "{text:?} parsed, printed as {printed:?}"
        );
        assert_eq!(back.map(|d| d.to_string()).unwrap_or_default(), printed);
    }
});
