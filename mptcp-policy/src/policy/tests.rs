use super::*;
use crate::rule::{PathManager, Scheduler};

const SEED: &str = "93.184.216.34,1,default,fullmesh,\n10.0.0.5,0,default,default,\n.\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn the_seed_file_loads_and_is_written_back_byte_for_byte() {
    let policy = Policy::parse(SEED).unwrap();
    assert_eq!(policy.len(), 2);
    let first = policy.lookup(None, ip("93.184.216.34"));
    assert!(first.settings.mptcp);
    assert_eq!(first.settings.path_manager, PathManager::Fullmesh);
    assert!(!policy.lookup(None, ip("10.0.0.5")).settings.mptcp);
    assert_eq!(policy.to_string(), SEED);
}

#[test]
fn superset_syntax() {
    let text = "# uplinks\n\n2001:db8::1,1,redundant,default,  # v6 host\n10.0.0.0/8,0,default,default\n*.example.com,1,roundrobin,ndiffports,\n";
    let policy = Policy::parse(text).unwrap();
    assert_eq!(policy.len(), 3);
    assert_eq!(
        policy
            .lookup(Some("www.example.com"), ip("192.0.2.1"))
            .settings
            .scheduler,
        Scheduler::RoundRobin
    );
    assert_eq!(
        policy.to_string(),
        "2001:db8::1,1,redundant,default,\n10.0.0.0/8,0,default,default,\n*.example.com,1,roundrobin,ndiffports,\n.\n"
    );
}

#[test]
fn errors_carry_line_number_and_text() {
    let cases = [
        (
            "10.0.0.1,1,default,default,\n10.0.0.2,yes,default,default,\n",
            2,
            "enable",
        ),
        ("# c\n\nfoo bar,1,default,default,\n", 3, "not allowed"),
        (
            "10.0.0.1,1,default,default,\n.\n10.0.0.2,1,default,default,\n",
            3,
            "after the final",
        ),
        (
            "10.0.0.1,1,default,default,\n10.0.0.1,0,default,default,\n",
            2,
            "line 1",
        ),
        ("10.0.0.1,1,default\n", 1, "found 3"),
    ];
    for (text, line, what) in cases {
        let err = Policy::parse(text).expect_err(text);
        assert_eq!(err.line(), Some(line), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(what), "{msg}");
        assert!(msg.starts_with(&format!("line {line}:")), "{msg}");
    }
}

#[test]
fn most_specific_rule_wins() {
    let policy = Policy::parse(
        "*,0,default,default,\n\
         10.0.0.0/8,1,default,default,\n\
         10.1.0.0/16,1,roundrobin,default,\n\
         10.1.2.3,1,redundant,default,\n\
         example.com,1,default,fullmesh,\n\
         *.example.com,1,default,ndiffports,\n\
         *.b.example.com,1,default,binder,\n\
         ::/0,1,redundant,fullmesh,\n",
    )
    .unwrap();
    let dest = |name: Option<&str>, addr: &str| {
        policy
            .lookup(name, ip(addr))
            .rule
            .map(|r| r.destination.to_string())
    };
    assert_eq!(dest(None, "10.1.2.3").as_deref(), Some("10.1.2.3"));
    assert_eq!(dest(None, "10.1.2.4").as_deref(), Some("10.1.0.0/16"));
    assert_eq!(dest(None, "10.2.0.1").as_deref(), Some("10.0.0.0/8"));
    assert_eq!(dest(None, "192.0.2.1").as_deref(), Some("*"));
    assert_eq!(dest(None, "2001:db8::1").as_deref(), Some("::/0"));
    assert_eq!(dest(None, "::ffff:10.1.2.3").as_deref(), Some("10.1.2.3"));
    assert_eq!(
        dest(Some("example.com"), "192.0.2.1").as_deref(),
        Some("example.com")
    );
    assert_eq!(
        dest(Some("EXAMPLE.com."), "192.0.2.1").as_deref(),
        Some("example.com")
    );
    assert_eq!(
        dest(Some("www.example.com"), "10.1.2.3").as_deref(),
        Some("*.example.com")
    );
    assert_eq!(
        dest(Some("x.a.b.example.com"), "10.1.2.3").as_deref(),
        Some("*.b.example.com")
    );
    // A name without a name rule falls through to the resolved address's rules.
    assert_eq!(
        dest(Some("other.org"), "10.1.2.9").as_deref(),
        Some("10.1.0.0/16")
    );
    // *.example.com does not cover example.com's sibling domains.
    assert_eq!(
        dest(Some("notexample.com"), "192.0.2.1").as_deref(),
        Some("*")
    );
}

#[test]
fn no_rule_means_the_builtin_default() {
    let policy = Policy::default();
    let m = policy.lookup(Some("example.com"), ip("192.0.2.1"));
    assert_eq!(m.rule, None);
    assert_eq!(m.settings, Settings::default());
    assert!(m.settings.mptcp);
}

#[test]
fn upsert_replaces_in_place_and_remove_updates_the_index() {
    let mut policy = Policy::parse(SEED).unwrap();
    let rule: Rule = "93.184.216.34,0,default,default,".parse().unwrap();
    let old = policy.upsert(rule.clone()).unwrap();
    assert!(old.settings.mptcp);
    assert_eq!(policy.rules()[0], rule);
    assert!(!policy.lookup(None, ip("93.184.216.34")).settings.mptcp);
    assert!(
        policy
            .upsert("10.9.0.0/16,0,default,default,".parse().unwrap())
            .is_none()
    );
    assert!(!policy.lookup(None, ip("10.9.1.1")).settings.mptcp);
    let removed = policy.remove(&"10.9.0.0/16".parse().unwrap()).unwrap();
    assert_eq!(removed.destination.to_string(), "10.9.0.0/16");
    assert!(policy.lookup(None, ip("10.9.1.1")).rule.is_none());
    assert!(policy.remove(&"10.9.0.0/16".parse().unwrap()).is_none());
}

#[test]
fn access_deny_blocks_allow_opens_only_by_address() {
    let policy = Policy::parse(
        "127.0.0.1,0,default,default,access=allow,\n\
         10.0.0.0/8,1,default,default,access=deny,\n\
         10.1.0.0/16,1,default,default,access=allow,\n\
         blocked.example,1,default,default,access=deny,\n\
         open.example,1,default,default,access=allow,\n\
         *.example,1,default,default,\n\
         *,1,default,default,access=allow,\n",
    )
    .unwrap();
    let denied = |d: &str| Err(Refusal::Denied(d.parse().unwrap()));
    type Case<'a> = (Option<&'a str>, &'a str, bool, Result<(), Refusal>);
    let table: &[Case<'_>] = &[
        (None, "127.0.0.1", true, Ok(())),
        (None, "::ffff:127.0.0.1", true, Ok(())),
        (None, "127.0.0.2", true, Err(Refusal::Protected)),
        (None, "::1", true, Err(Refusal::Protected)),
        (None, "192.0.2.1", false, Ok(())),
        (None, "10.2.3.4", false, denied("10.0.0.0/8")),
        (None, "10.1.3.4", false, Ok(())),
        // A name rule does not lift the deny of the network the name resolves into...
        (Some("www.example"), "10.2.3.4", false, denied("10.0.0.0/8")),
        (
            Some("open.example"),
            "10.2.3.4",
            false,
            denied("10.0.0.0/8"),
        ),
        // ... nor open the host itself, and `*` opens nothing protected.
        (
            Some("open.example"),
            "127.0.0.2",
            true,
            Err(Refusal::Protected),
        ),
        (
            Some("other.org"),
            "192.168.1.1",
            true,
            Err(Refusal::Protected),
        ),
        // A name deny holds whatever the address.
        (
            Some("blocked.example"),
            "192.0.2.1",
            false,
            denied("blocked.example"),
        ),
        (
            Some("blocked.example"),
            "127.0.0.1",
            true,
            denied("blocked.example"),
        ),
        (Some("localhost"), "127.0.0.1", true, Ok(())),
    ];
    for (name, addr, protected, expected) in table {
        assert_eq!(
            &policy.check_access(*name, ip(addr), *protected),
            expected,
            "{name:?} {addr}"
        );
    }
    let deny_all =
        Policy::parse("*,1,default,default,access=deny,\nok.example,1,default,default,\n").unwrap();
    assert_eq!(
        deny_all.check_access(None, ip("192.0.2.1"), false),
        Err(Refusal::Denied(Destination::Any))
    );
    assert_eq!(
        deny_all.check_access(Some("ok.example"), ip("192.0.2.1"), false),
        Ok(())
    );
    assert_eq!(
        Policy::default().check_access(None, ip("192.0.2.1"), false),
        Ok(())
    );
    assert_eq!(
        Policy::default().check_access(None, ip("127.0.0.1"), true),
        Err(Refusal::Protected)
    );
}

#[test]
fn rules_keep_the_line_they_were_read_from() {
    let text =
        "# uplinks\n\n10.0.0.1,1,default,default,\n  # moved\n10.0.0.2,1,default,default, # x\n.\n";
    let mut policy = Policy::parse(text).unwrap();
    let lines = |p: &Policy| -> Vec<(String, Option<usize>)> {
        p.rules_with_lines()
            .map(|(r, line)| (r.destination.to_string(), line))
            .collect()
    };
    assert_eq!(
        lines(&policy),
        [("10.0.0.1".into(), Some(3)), ("10.0.0.2".into(), Some(5))]
    );
    // The same rules from other lines (the writer's form) are the same policy.
    let rewritten = Policy::parse(&policy.to_string()).unwrap();
    assert_eq!(rewritten.rules_with_lines().nth(1).unwrap().1, Some(2));
    assert_eq!(rewritten, policy);

    // Rules given at run time have no line; the others keep theirs.
    policy.upsert("10.0.0.1,0,default,default,".parse().unwrap());
    policy.upsert("10.0.0.3,0,default,default,".parse().unwrap());
    policy.remove(&"10.0.0.9".parse().unwrap());
    assert_eq!(
        lines(&policy),
        [
            ("10.0.0.1".into(), None),
            ("10.0.0.2".into(), Some(5)),
            ("10.0.0.3".into(), None)
        ]
    );
    policy.remove(&"10.0.0.1".parse().unwrap());
    assert_eq!(lines(&policy)[0], ("10.0.0.2".into(), Some(5)));
    let built = Policy::new(policy.rules().to_vec()).unwrap();
    assert!(built.rules_with_lines().all(|(_, line)| line.is_none()));
    assert_eq!(built, policy);
}

#[test]
fn new_refuses_duplicates() {
    let rule: Rule = "10.0.0.1,1,default,default,".parse().unwrap();
    let err = Policy::new(vec![rule.clone(), rule]).unwrap_err();
    assert!(matches!(err, Error::Duplicate { .. }));
}

#[test]
fn lookup_name_answers_only_when_no_address_can_change_it() {
    let names =
        Policy::parse("*.example.com,0,default,default\n*,1,default,default,via=vps\n").unwrap();
    let hit = names.lookup_name("www.Example.com.").expect("name rule");
    assert!(!hit.settings.mptcp);
    let any = names
        .lookup_name("other.org")
        .expect("no address rules: the catch-all");
    assert_eq!(any.rule.map(|r| r.via.to_string()), Some("vps".to_owned()));
    assert_eq!(
        Policy::default()
            .lookup_name("a.org")
            .map(|m| m.rule.is_none()),
        Some(true)
    );

    let mixed =
        Policy::parse("*.example.com,0,default,default\n10.0.0.0/8,0,default,default\n").unwrap();
    assert!(mixed.lookup_name("www.example.com").is_some());
    assert!(
        mixed.lookup_name("other.org").is_none(),
        "an address rule could match what the name resolves to"
    );
}
