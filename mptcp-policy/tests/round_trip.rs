//! Property: whatever policy the writer prints, the parser reads back unchanged, and
//! the parser never panics on arbitrary input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mptcp_policy::{
    Access, Destination, IpPrefix, PathManager, Policy, Rule, Scheduler, Settings, Via,
};
use proptest::prelude::*;

fn destination() -> impl Strategy<Value = Destination> {
    let label = "[a-z0-9_]([a-z0-9_-]{0,8}[a-z0-9_])?";
    let name = (proptest::collection::vec(label, 1..4), "[a-z]{2,6}")
        .prop_map(|(labels, tld)| format!("{}.{tld}", labels.join(".")));
    prop_oneof![
        any::<u32>().prop_map(|a| Destination::Addr(IpAddr::V4(Ipv4Addr::from(a)))),
        any::<u128>().prop_map(|a| Destination::Addr(IpAddr::V6(Ipv6Addr::from(a)))),
        (any::<u32>(), 0u8..=32).prop_map(|(a, len)| {
            let net = if len == 0 {
                0
            } else {
                a & (u32::MAX << (32 - u32::from(len)))
            };
            Destination::Prefix(IpPrefix::new(IpAddr::V4(net.into()), len).unwrap())
        }),
        (any::<u128>(), 0u8..=128).prop_map(|(a, len)| {
            let net = if len == 0 {
                0
            } else {
                a & (u128::MAX << (128 - u32::from(len)))
            };
            Destination::Prefix(IpPrefix::new(IpAddr::V6(net.into()), len).unwrap())
        }),
        name.clone()
            .prop_map(|n| Destination::Name(n.parse().unwrap())),
        name.prop_map(|n| Destination::Wildcard(n.parse().unwrap())),
        Just(Destination::Any),
    ]
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        destination(),
        any::<bool>(),
        proptest::sample::select(Scheduler::ALL),
        prop_oneof![
            proptest::sample::select(PathManager::ALL),
            (1..=PathManager::MAX_NDIFFPORTS).prop_map(|n| PathManager::Ndiffports(Some(n))),
        ],
        proptest::sample::select(Access::ALL),
        prop_oneof![
            Just("direct".to_owned()),
            "[a-zA-Z0-9_-]{1,32}",
            "auto:[a-zA-Z0-9_-]{1,32}",
        ]
        .prop_filter_map("not an upstream name", |v| v.parse::<Via>().ok()),
    )
        .prop_map(
            |(destination, mptcp, scheduler, path_manager, access, via)| Rule {
                destination,
                settings: Settings {
                    mptcp,
                    scheduler,
                    path_manager,
                },
                access,
                via,
            },
        )
}

proptest! {
    #[test]
    fn writer_then_parser_is_the_identity(rules in proptest::collection::vec(rule(), 0..40)) {
        let mut unique = Vec::new();
        for r in rules {
            if !unique.iter().any(|u: &Rule| u.destination == r.destination) {
                unique.push(r);
            }
        }
        let policy = Policy::new(unique).unwrap();
        let text = policy.to_string();
        prop_assert!(text.ends_with("\n.\n") || text == ".\n");
        let back: Policy = text.parse().unwrap();
        prop_assert_eq!(&back, &policy);
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn every_rule_line_round_trips(rule in rule()) {
        let line = rule.to_string();
        prop_assert!(line.ends_with(','));
        prop_assert_eq!(line.parse::<Rule>().unwrap(), rule);
    }

    #[test]
    fn the_parser_never_panics(text in "[ -~\n\t]{0,200}") {
        let _ = Policy::parse(&text);
    }

    #[test]
    fn the_parser_never_panics_on_near_miss_lines(
        line in "[0-9a-f.:/*,#]{0,24},[01x]?,[a-z]{0,10},[a-z]{0,10},?"
    ) {
        if let Err(e) = Policy::parse(&line) {
            prop_assert_eq!(e.line(), Some(1));
        }
    }
}
