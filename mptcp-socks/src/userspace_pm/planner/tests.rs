//! The planner's decisions, event by event and tick by tick, with a made-up world: two
//! local addresses (A, the initial subflow's, and B), the server's address S1 and a second
//! one, S2, that it may announce.

use super::*;

const TOKEN: u32 = 7;
const A: &str = "10.0.1.1";
const B: &str = "10.0.2.1";
const S1: &str = "10.0.0.2:8080";
const S2: &str = "10.0.3.2:8080";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn sock(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn pm(s: &str) -> PathManager {
    s.parse().expect("path manager")
}

/// The world as a table: which tokens are the proxy's (with their rule's path manager),
/// the endpoint list, and the addresses whose link is down.
struct Table {
    owners: HashMap<u32, PathManager>,
    endpoints: Arc<Vec<LocalEndpoint>>,
    down: HashSet<IpAddr>,
}

impl Table {
    /// Endpoints A (id 1) and B (id 2, on interface 3); no connection is the proxy's.
    fn new() -> Self {
        let endpoint = |id, addr, ifindex| LocalEndpoint {
            id,
            addr: ip(addr),
            flags: vec!["subflow".into()],
            ifindex,
        };
        Table {
            owners: HashMap::new(),
            endpoints: Arc::new(vec![endpoint(1, A, None), endpoint(2, B, Some(3))]),
            down: HashSet::new(),
        }
    }

    fn owned(mut self, path_manager: &str) -> Self {
        self.owners.insert(TOKEN, pm(path_manager));
        self
    }
}

impl Environment for Table {
    fn owner(&mut self, token: u32) -> Option<(u64, PathManager)> {
        self.owners.get(&token).map(|pm| (1, *pm))
    }

    fn live_tokens(&mut self) -> HashSet<u32> {
        self.owners.keys().copied().collect()
    }

    fn endpoints(&mut self) -> Arc<Vec<LocalEndpoint>> {
        Arc::clone(&self.endpoints)
    }

    fn link_up(&mut self, addr: IpAddr) -> bool {
        !self.down.contains(&addr)
    }
}

fn established(deny_join_id0: bool) -> PmEvent {
    PmEvent::Connection {
        token: TOKEN,
        local: SocketAddr::new(ip(A), 40000),
        remote: sock(S1),
        deny_join_id0,
        established: true,
    }
}

fn announced(remote_id: u8, addr: &str) -> PmEvent {
    let addr = sock(addr);
    PmEvent::Announced {
        token: TOKEN,
        remote_id,
        addr: addr.ip(),
        port: None,
    }
}

fn sub_closed(local: &str, remote: &str) -> PmEvent {
    PmEvent::SubClosed {
        token: TOKEN,
        local: sock(local),
        remote: sock(remote),
        error: Some(111),
    }
}

/// The `(local, remote)` pairs of the creates among `actions`, sorted.
fn creates(actions: &[Action]) -> Vec<(IpAddr, SocketAddr)> {
    let mut pairs: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Create { local, remote, .. } => Some((local.addr, *remote)),
            Action::Destroy { .. } => None,
        })
        .collect();
    pairs.sort();
    pairs
}

fn pairs(list: &[(&str, &str)]) -> Vec<(IpAddr, SocketAddr)> {
    let mut pairs: Vec<_> = list.iter().map(|(l, r)| (ip(l), sock(r))).collect();
    pairs.sort();
    pairs
}

/// A rule, whether the peer denies joins to its initial address, the addresses it
/// announces, and the subflows the planner should create.
type Case = (
    &'static str,
    bool,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

#[test]
fn each_rule_gets_its_subflows() {
    let table: [Case; 8] = [
        ("default", false, &[], &[(B, S1)]),
        // Announced addresses are fullmesh's business, not default's.
        ("default", false, &[S2], &[(B, S1)]),
        ("default", true, &[], &[]),
        ("default", true, &[S2], &[(B, S2)]),
        ("fullmesh", false, &[], &[(B, S1)]),
        ("fullmesh", false, &[S2], &[(A, S2), (B, S1), (B, S2)]),
        ("fullmesh", true, &[S2], &[(A, S2), (B, S2)]),
        ("ndiffports:3", false, &[S2], &[(A, S1), (A, S1)]),
    ];
    for (rule, deny_join_id0, announcements, expected) in table {
        let mut world = Table::new().owned(rule);
        let mut planner = Planner::default();
        let now = Instant::now();
        let mut actions = planner.on_event(established(deny_join_id0), now, &mut world);
        for (id, addr) in (1..).zip(announcements) {
            actions.extend(planner.on_event(announced(id, addr), now, &mut world));
        }
        // Nothing more on the next tick: the creates are pending.
        actions.extend(planner.on_tick(now, &mut world));
        assert_eq!(
            creates(&actions),
            pairs(expected),
            "{rule} deny_join_id0={deny_join_id0} announced={announcements:?}"
        );
    }
}

#[test]
fn a_create_names_the_endpoint_it_comes_from() {
    let mut world = Table::new().owned("fullmesh");
    let mut planner = Planner::default();
    let now = Instant::now();
    planner.on_event(established(false), now, &mut world);
    let actions = planner.on_event(announced(1, S2), now, &mut world);
    assert!(actions.contains(&Action::Create {
        token: TOKEN,
        local: LocalEnd {
            addr: ip(B),
            id: Some(2),
            ifindex: Some(3),
        },
        remote: sock(S2),
    }));
    assert!(actions.contains(&Action::Create {
        token: TOKEN,
        local: LocalEnd {
            addr: ip(A),
            id: Some(1),
            ifindex: None,
        },
        remote: sock(S2),
    }));
}

#[test]
fn nothing_is_created_before_the_connection_is_established() {
    let mut world = Table::new().owned("fullmesh");
    let mut planner = Planner::default();
    let now = Instant::now();
    let created = PmEvent::Connection {
        token: TOKEN,
        local: SocketAddr::new(ip(A), 40000),
        remote: sock(S1),
        deny_join_id0: false,
        established: false,
    };
    assert!(planner.on_event(created, now, &mut world).is_empty());
    assert!(planner.on_tick(now, &mut world).is_empty());
    assert_eq!(
        creates(&planner.on_event(established(false), now, &mut world)),
        pairs(&[(B, S1)])
    );
}

#[test]
fn a_lost_subflow_is_retried_with_backoff_then_given_up_until_its_link_returns() {
    let mut world = Table::new().owned("default");
    let mut planner = Planner::default();
    let mut now = Instant::now();
    let first = planner.on_event(established(false), now, &mut world);
    assert_eq!(creates(&first), pairs(&[(B, S1)]));
    let ms = Duration::from_millis;
    // Pause after the 1st, 2nd, ... failure in a row; none after the last.
    let pauses = [ms(1000), ms(2000), ms(4000), ms(4000)];
    for failure in 1..=MAX_FAILURES {
        planner.on_event(sub_closed("10.0.2.1:0", S1), now, &mut world);
        match pauses.get(failure as usize - 1) {
            Some(pause) => {
                let early = planner.on_tick(now + *pause - ms(1), &mut world);
                assert!(creates(&early).is_empty(), "failure {failure}: too early");
                now += *pause;
                let due = planner.on_tick(now, &mut world);
                assert_eq!(creates(&due), pairs(&[(B, S1)]), "failure {failure}");
            }
            None => {
                let later = planner.on_tick(now + Duration::from_secs(3600), &mut world);
                assert!(creates(&later).is_empty(), "given up after {failure}");
            }
        }
    }
    // The link goes down and comes back: the count starts again.
    now += Duration::from_secs(3600);
    world.down.insert(ip(B));
    assert!(planner.on_tick(now, &mut world).is_empty());
    world.down.clear();
    now += ms(250);
    assert_eq!(
        creates(&planner.on_tick(now, &mut world)),
        pairs(&[(B, S1)])
    );
}

#[test]
fn a_refused_create_is_retried_after_the_longest_pause_then_given_up() {
    let mut world = Table::new().owned("default");
    let mut planner = Planner::default();
    let mut now = Instant::now();
    planner.on_event(established(false), now, &mut world);
    for failure in 1..=MAX_FAILURES {
        planner.create_failed(TOKEN, ip(B), sock(S1), &"EINVAL", now);
        let early = planner.on_tick(now + RETRY_MAX - Duration::from_millis(1), &mut world);
        assert!(creates(&early).is_empty(), "failure {failure}: too early");
        now += RETRY_MAX;
        let due = planner.on_tick(now, &mut world);
        let expected = if failure < MAX_FAILURES {
            pairs(&[(B, S1)])
        } else {
            Vec::new()
        };
        assert_eq!(creates(&due), expected, "failure {failure}");
    }
}

#[test]
fn a_subflow_whose_link_goes_down_is_destroyed_and_recreated_when_it_returns() {
    let mut world = Table::new().owned("default");
    let mut planner = Planner::default();
    let mut now = Instant::now();
    planner.on_event(established(false), now, &mut world);
    let on_b = sock("10.0.2.1:45000");
    let up = PmEvent::SubEstablished {
        token: TOKEN,
        local: on_b,
        remote: sock(S1),
    };
    assert!(planner.on_event(up, now, &mut world).is_empty());

    world.down.insert(ip(B));
    now += Duration::from_millis(250);
    assert_eq!(
        planner.on_tick(now, &mut world),
        [Action::Destroy {
            token: TOKEN,
            local: on_b,
            remote: sock(S1),
        }]
    );
    // The subflow closing afterwards does not count as a failure of the pair.
    planner.on_event(sub_closed("10.0.2.1:45000", S1), now, &mut world);
    for _ in 0..3 {
        now += Duration::from_secs(2);
        assert!(
            planner.on_tick(now, &mut world).is_empty(),
            "link still down"
        );
    }

    world.down.clear();
    now += Duration::from_millis(250);
    assert_eq!(
        creates(&planner.on_tick(now, &mut world)),
        pairs(&[(B, S1)])
    );
}

#[test]
fn another_programs_connection_gets_default_after_the_owner_wait() {
    let mut world = Table::new();
    let mut planner = Planner::default();
    let start = Instant::now();
    assert!(
        planner
            .on_event(established(false), start, &mut world)
            .is_empty()
    );
    let waiting = planner.on_tick(start + OWNER_WAIT, &mut world);
    assert!(
        waiting.is_empty(),
        "still waiting for the proxy to register it"
    );
    let default = planner.on_tick(start + OWNER_WAIT + Duration::from_millis(1), &mut world);
    assert_eq!(creates(&default), pairs(&[(B, S1)]));

    // Registered late, within the recheck window: it gets its own rule after all.
    world.owners.insert(TOKEN, pm("ndiffports:2"));
    let late = planner.on_tick(start + Duration::from_secs(1), &mut world);
    assert_eq!(creates(&late), pairs(&[(A, S1)]));
}

#[test]
fn a_registration_after_the_recheck_window_changes_nothing() {
    let mut world = Table::new();
    let mut planner = Planner::default();
    let start = Instant::now();
    planner.on_event(established(false), start, &mut world);
    planner.on_tick(start + Duration::from_secs(1), &mut world);
    world.owners.insert(TOKEN, pm("ndiffports:2"));
    let after = planner.on_tick(start + OWNER_RECHECK + Duration::from_secs(1), &mut world);
    assert!(creates(&after).is_empty(), "{after:?}");
}

#[test]
fn a_create_never_reported_on_is_sent_again_after_the_pending_timeout() {
    let mut world = Table::new().owned("default");
    let mut planner = Planner::default();
    let start = Instant::now();
    planner.on_event(established(false), start, &mut world);
    let before = planner.on_tick(
        start + PENDING_TIMEOUT - Duration::from_millis(1),
        &mut world,
    );
    assert!(before.is_empty());
    let after = planner.on_tick(start + PENDING_TIMEOUT, &mut world);
    assert_eq!(creates(&after), pairs(&[(B, S1)]));
}

#[test]
fn a_withdrawn_address_gets_no_new_subflows() {
    let mut world = Table::new().owned("fullmesh");
    let mut planner = Planner::default();
    let now = Instant::now();
    planner.on_event(established(false), now, &mut world);
    planner.on_event(announced(1, S2), now, &mut world);
    let removed = PmEvent::Removed {
        token: TOKEN,
        remote_id: 1,
    };
    planner.on_event(removed, now, &mut world);
    planner.on_event(sub_closed("10.0.1.1:0", S2), now, &mut world);
    let later = planner.on_tick(now + Duration::from_secs(60), &mut world);
    assert!(
        !creates(&later).iter().any(|(_, r)| *r == sock(S2)),
        "{later:?}"
    );
}

#[test]
fn connections_the_proxy_no_longer_has_are_forgotten() {
    let mut world = Table::new().owned("default");
    let mut planner = Planner::default();
    let now = Instant::now();
    planner.on_event(established(false), now, &mut world);
    // The CLOSED event was lost; the registry no longer has the connection.
    world.owners.clear();
    planner.on_tick(now, &mut world);
    assert!(planner.managed.is_empty());

    // Another program's connection stays until its CLOSED event.
    planner.on_event(established(false), now, &mut world);
    planner.on_tick(now + Duration::from_secs(1), &mut world);
    assert_eq!(planner.managed.len(), 1);
    planner.on_event(PmEvent::Closed { token: TOKEN }, now, &mut world);
    assert!(planner.managed.is_empty());
}
