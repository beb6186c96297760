use super::*;

#[test]
fn destinations_parse_and_print_symmetrically() {
    let cases = [
        ("93.184.216.34", "93.184.216.34"),
        ("2001:DB8::1", "2001:db8::1"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("*.example.com", "*.example.com"),
        ("_sip._tcp.example.com", "_sip._tcp.example.com"),
        ("*", "*"),
    ];
    for (input, printed) in cases {
        let d: Destination = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(d.to_string(), printed, "{input}");
        assert_eq!(printed.parse::<Destination>().ok(), Some(d), "{printed}");
    }
}

#[test]
fn bad_destinations_are_refused_with_a_reason() {
    let cases = [
        ("", "empty"),
        ("10.0.0.1/8", "host bits"),
        ("10.0.0.0/33", "0 to 32"),
        ("10.0.0.0/x", "prefix length"),
        ("300.1.2.3", "numeric"),
        ("10.0.0", "numeric"),
        ("2001:db8:::1", "IPv6"),
        ("exa mple.com", "not allowed"),
        ("a..b", "empty label"),
        ("-a.com", "start or end"),
        ("www.*.com", "'*'"),
        ("*.", "empty"),
        ("**.com", "'*'"),
    ];
    for (input, reason) in cases {
        let err = input.parse::<Destination>().expect_err(input).to_string();
        assert!(err.contains(reason), "{input:?}: {err}");
        assert!(
            err.contains(&format!("{input:?}")) || input.is_empty(),
            "{err}"
        );
    }
}

#[test]
fn prefix_contains() {
    let p: IpPrefix = "10.1.0.0/16".parse().unwrap();
    assert!(p.contains("10.1.255.3".parse().unwrap()));
    assert!(!p.contains("10.2.0.1".parse().unwrap()));
    assert!(!p.contains("::ffff:10.1.0.1".parse().unwrap()));
    let all: IpPrefix = "::/0".parse().unwrap();
    assert!(all.contains("2001:db8::1".parse().unwrap()));
    assert!(!all.contains("10.0.0.1".parse().unwrap()));
}

#[test]
fn keywords_are_case_insensitive_and_print_lowercase() {
    assert_eq!(
        "RoundRobin".parse::<Scheduler>().unwrap(),
        Scheduler::RoundRobin
    );
    assert_eq!(
        "fullmesh".parse::<PathManager>().unwrap().to_string(),
        "fullmesh"
    );
    let err = "roundrobn".parse::<Scheduler>().unwrap_err().to_string();
    assert!(err.contains("default, roundrobin, redundant"), "{err}");
}

#[test]
fn rule_lines_round_trip() {
    for line in [
        "93.184.216.34,1,default,fullmesh,",
        "10.0.0.5,0,default,default,",
        "*.example.com,1,redundant,ndiffports,",
        "127.0.0.1,0,default,default,access=allow,",
        "10.0.0.0/8,1,default,default,access=deny,",
    ] {
        let rule: Rule = line.parse().unwrap();
        assert_eq!(rule.to_string(), line);
    }
    let rule: Rule = " 10.0.0.5 , 0 , default , binder ".parse().unwrap();
    assert_eq!(rule.to_string(), "10.0.0.5,0,default,binder,");
    // The default access is not written, so seed-form lines stay byte for byte.
    let rule: Rule = "10.0.0.5,0,default,default, access = DEFAULT ,"
        .parse()
        .unwrap();
    assert_eq!(rule.access, Access::Default);
    assert_eq!(rule.to_string(), "10.0.0.5,0,default,default,");
    let rule: Rule = "10.0.0.5,0,default,default,access=Deny".parse().unwrap();
    assert_eq!(rule.access, Access::Deny);
}

#[test]
fn bad_rule_lines_name_the_field() {
    let cases = [
        ("10.0.0.5,2,default,default,", "enable"),
        ("10.0.0.5,1,fast,default,", "scheduler"),
        ("10.0.0.5,1,default,mesh,", "path manager"),
        ("10.0.0.5,1,default,", "found 3"),
        ("10.0.0.5,1,default,default,extra,", "key=value"),
        ("10.0.0.5,1,default,default,color=red,", "unknown option"),
        ("10.0.0.5,1,default,default,access=maybe,", "allow, deny"),
        (
            "10.0.0.5,1,default,default,access=deny,access=allow,",
            "twice",
        ),
    ];
    for (line, what) in cases {
        let err = line.parse::<Rule>().expect_err(line).to_string();
        assert!(err.contains(what), "{line}: {err}");
    }
}
