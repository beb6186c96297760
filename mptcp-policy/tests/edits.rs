//! Property: a policy edited one rule at a time (its index updated, not rebuilt) answers
//! every question as a policy built afresh from the same rules does.

use std::net::IpAddr;

use mptcp_policy::{Destination, Policy, Rule};
use proptest::prelude::*;

/// Few destinations, so that edits meet: an address and its IPv4-mapped twin (which
/// share an index entry), nested prefixes, names under a wildcard, the catch-all.
const DESTINATIONS: [&str; 12] = [
    "192.0.2.1",
    "::ffff:192.0.2.1",
    "192.0.2.2",
    "192.0.2.0/24",
    "192.0.0.0/16",
    "::ffff:192.0.2.0/120",
    "2001:db8::1",
    "2001:db8::/32",
    "a.example",
    "*.example",
    "b.a.example",
    "*",
];

const ADDRESSES: [&str; 8] = [
    "192.0.2.1",
    "::ffff:192.0.2.1",
    "192.0.2.2",
    "192.0.2.9",
    "192.0.9.9",
    "2001:db8::1",
    "2001:db8::2",
    "10.0.0.1",
];

const NAMES: [Option<&str>; 4] = [
    None,
    Some("a.example"),
    Some("x.b.a.example"),
    Some("other.test"),
];

fn rule(destination: usize, mptcp: bool) -> Rule {
    format!(
        "{},{},default,default,",
        DESTINATIONS[destination],
        u8::from(mptcp)
    )
    .parse()
    .expect("rule")
}

fn assert_same_answers(edited: &Policy, rebuilt: &Policy) {
    assert_eq!(edited.rules(), rebuilt.rules());
    for addr in ADDRESSES {
        let addr: IpAddr = addr.parse().expect("address");
        for name in NAMES {
            assert_eq!(
                edited.lookup(name, addr),
                rebuilt.lookup(name, addr),
                "{name:?} {addr}"
            );
            assert_eq!(
                edited.check_access(name, addr, true),
                rebuilt.check_access(name, addr, true)
            );
        }
    }
    for name in NAMES.into_iter().flatten() {
        assert_eq!(
            edited.lookup_name(name),
            rebuilt.lookup_name(name),
            "{name}"
        );
    }
    for destination in DESTINATIONS {
        let destination: Destination = destination.parse().expect("destination");
        let expected = rebuilt
            .rules()
            .iter()
            .position(|rule| rule.destination == destination);
        assert_eq!(edited.position(&destination), expected, "{destination}");
    }
}

proptest! {
    #[test]
    fn edits_answer_as_a_rebuilt_policy_does(
        start in proptest::collection::vec((0..DESTINATIONS.len(), any::<bool>()), 0..8),
        edits in proptest::collection::vec(
            (any::<bool>(), 0..DESTINATIONS.len(), any::<bool>()),
            1..40,
        ),
    ) {
        let mut rules: Vec<Rule> = Vec::new();
        for (destination, mptcp) in start {
            let rule = rule(destination, mptcp);
            if !rules.iter().any(|r| r.destination == rule.destination) {
                rules.push(rule);
            }
        }
        let mut policy = Policy::new(rules.clone()).expect("no duplicates");
        for (upsert, destination, mptcp) in edits {
            let rule = rule(destination, mptcp);
            let at = rules.iter().position(|r| r.destination == rule.destination);
            if upsert {
                let replaced = policy.upsert(rule.clone());
                match at {
                    Some(i) => prop_assert_eq!(replaced, Some(std::mem::replace(&mut rules[i], rule))),
                    None => {
                        prop_assert_eq!(replaced, None);
                        rules.push(rule);
                    }
                }
            } else {
                let removed = policy.remove(&rule.destination);
                prop_assert_eq!(removed, at.map(|i| rules.remove(i)));
            }
            assert_same_answers(&policy, &Policy::new(rules.clone()).expect("no duplicates"));
        }
    }
}
