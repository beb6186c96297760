//! Per-connection path management on upstream Linux: with
//! `net.mptcp.path_manager=userspace` the kernel creates no subflows by itself, and this
//! module creates them for each outbound connection as the rule it matched says.
//!
//! - `default`: one subflow from each local address in the kernel's endpoint list
//!   (`ip mptcp endpoint`) to the server's address: what the in-kernel path manager does;
//! - `fullmesh`: every local address (the initial one and the endpoints) to every remote
//!   address (the initial one and those the server announces);
//! - `ndiffports:N`: N subflows in all over the initial pair of addresses;
//! - a subflow lost because its link went down is destroyed (so the kernel stops
//!   waiting on it) and created again when the link comes back.
//!
//! Connections this process did not open (other MPTCP programs in the namespace) get the
//! `default` treatment, which is what the in-kernel path manager would have given them;
//! connections accepted by a server in the namespace are left alone.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mptcp_netlink::{Endpoint, EndpointInfo, Event, PmClient, PmEvents};
use mptcp_policy::PathManager;

use crate::registry::Connections;

/// How often links are checked and failed subflows retried.
const TICK: Duration = Duration::from_millis(250);
/// How long a new connection may stay unknown to the registry before it is taken for
/// another program's: the kernel reports it established just before `connect` returns
/// here, and the proxy registers it right after.
const OWNER_WAIT: Duration = Duration::from_millis(500);
/// How long a connection taken for another program's is still looked for in the
/// registry, in case a loaded proxy registered it late: it then gets its own rule.
const OWNER_RECHECK: Duration = Duration::from_secs(5);
/// First and largest pause before retrying a subflow that failed while its link is up.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(4);
/// Failures in a row, link up all along, after which a pair is given up (the peer
/// refuses it); a link coming back resets the count.
const MAX_FAILURES: u32 = 5;
/// A create the kernel acknowledged but never reported on is forgotten after this.
const PENDING_TIMEOUT: Duration = Duration::from_secs(15);

/// A subflow's address pair as the path manager plans it: local address (any port),
/// remote address and port.
type Pair = (IpAddr, SocketAddr);

/// Runs the userspace path manager until `shutdown` completes.
///
/// Needs CAP_NET_ADMIN and `net.mptcp.path_manager=userspace` (`pm_type=1` before 6.15)
/// in the namespace; the caller sets that up.
///
/// # Errors
/// When the netlink family or its event group cannot be opened (no MPTCP, kernel older
/// than 5.19, no CAP_NET_ADMIN). Errors after that are logged, not returned.
pub async fn run_userspace_pm(
    connections: Connections,
    shutdown: impl Future<Output = ()>,
) -> Result<(), mptcp_netlink::Error> {
    let client = PmClient::connect().await?;
    let mut events = PmEvents::subscribe().await?;
    let mut pm = Manager {
        client,
        connections,
        managed: HashMap::new(),
        endpoints: Vec::new(),
        endpoints_read: None,
        links: HashMap::new(),
    };
    tracing::info!("userspace path manager running");
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            event = events.next() => match event {
                Ok(event) => pm.on_event(event).await,
                Err(e) => {
                    // ENOBUFS: events were lost under load. State is rebuilt from what
                    // follows; a missed SUB_ESTABLISHED at worst causes a spare subflow.
                    tracing::warn!(error = %e, "path-manager event stream");
                }
            },
            _ = tick.tick() => pm.on_tick().await,
        }
    }
}

/// One MPTCP connection the path manager looks after.
#[derive(Debug)]
struct Managed {
    local: SocketAddr,
    remote: SocketAddr,
    deny_join_id0: bool,
    /// Fully established: subflows may be created.
    established: bool,
    /// `None` until the owner is known.
    path_manager: Option<PathManager>,
    /// One of the proxy's connections (not another program's).
    ours: bool,
    first_seen: Instant,
    /// Remote addresses the server announced, with the server's ids for them.
    announced: Vec<(u8, SocketAddr)>,
    /// Live subflows with their exact ends, the initial one included.
    subflows: Vec<(SocketAddr, SocketAddr)>,
    /// Creates sent and not yet reported on.
    pending: Vec<(Pair, Instant)>,
    /// Per pair: failures in a row and when to try next.
    retry: HashMap<Pair, (u32, Instant)>,
    /// Local addresses whose link was down at the last tick.
    down: Vec<IpAddr>,
}

impl Managed {
    /// The subflows the rule asks for, as pairs with repetition (ndiffports).
    fn wanted(&self, endpoints: &[EndpointInfo]) -> Vec<Pair> {
        let family = |a: &IpAddr| a.is_ipv4() == self.remote.is_ipv4();
        let endpoint_addrs = endpoints.iter().map(|e| e.addr).filter(family);
        let initial = (self.local.ip(), self.remote);
        let mut wanted = vec![initial];
        match self.path_manager {
            None => {}
            Some(PathManager::Ndiffports(_)) => {
                let n = self
                    .path_manager
                    .and_then(PathManager::ndiffports)
                    .unwrap_or(1);
                wanted.extend(std::iter::repeat_n(
                    initial,
                    usize::from(n).saturating_sub(1),
                ));
            }
            Some(PathManager::Fullmesh) => {
                let mut locals = vec![self.local.ip()];
                locals.extend(endpoint_addrs.filter(|a| *a != self.local.ip()));
                let mut remotes = Vec::new();
                if !self.deny_join_id0 {
                    remotes.push(self.remote);
                }
                remotes.extend(
                    self.announced
                        .iter()
                        .map(|(_, r)| *r)
                        .filter(|r| family(&r.ip())),
                );
                for local in &locals {
                    for remote in &remotes {
                        if (*local, *remote) != initial {
                            wanted.push((*local, *remote));
                        }
                    }
                }
            }
            // default, and binder (refused by the API; treated as default if a file has it)
            Some(_) => {
                let remote = if self.deny_join_id0 {
                    self.announced.first().map(|(_, r)| *r)
                } else {
                    Some(self.remote)
                };
                if let Some(remote) = remote {
                    wanted.extend(
                        endpoint_addrs
                            .filter(|a| *a != self.local.ip())
                            .map(|a| (a, remote)),
                    );
                }
            }
        }
        wanted
    }

    fn count(&self, pair: Pair) -> usize {
        let live = self
            .subflows
            .iter()
            .filter(|(l, r)| (l.ip(), *r) == pair)
            .count();
        live + self.pending.iter().filter(|(p, _)| *p == pair).count()
    }

    fn forget_pending(&mut self, pair: Pair) {
        if let Some(i) = self.pending.iter().position(|(p, _)| *p == pair) {
            self.pending.swap_remove(i);
        }
    }
}

struct Manager {
    client: PmClient,
    connections: Connections,
    managed: HashMap<u32, Managed>,
    endpoints: Vec<EndpointInfo>,
    endpoints_read: Option<Instant>,
    /// Link state per local address, read at most once per tick.
    links: HashMap<IpAddr, bool>,
}

impl Manager {
    /// Whether the link of local address `addr` is down (unknown addresses are not).
    fn link_down(&mut self, addr: IpAddr) -> bool {
        !*self.links.entry(addr).or_insert_with(|| {
            let state = mptcp_policy::local_address_up(addr);
            tracing::trace!(%addr, ?state, "link state");
            state.ok().flatten() != Some(false)
        })
    }

    async fn on_event(&mut self, event: Event) {
        tracing::trace!(?event, "path-manager event");
        match event {
            Event::Created(c) | Event::Established(c) if !c.server_side => {
                let fully = matches!(event, Event::Established(_));
                let entry = self.managed.entry(c.token).or_insert_with(|| Managed {
                    local: c.local,
                    remote: c.remote,
                    deny_join_id0: c.deny_join_id0(),
                    established: false,
                    path_manager: None,
                    ours: false,
                    first_seen: Instant::now(),
                    announced: Vec::new(),
                    subflows: vec![(c.local, c.remote)],
                    pending: Vec::new(),
                    retry: HashMap::new(),
                    down: Vec::new(),
                });
                entry.established |= fully;
                entry.deny_join_id0 |= c.deny_join_id0();
                if fully {
                    self.reconcile(c.token).await;
                }
            }
            Event::Closed { token } => {
                self.managed.remove(&token);
            }
            Event::Announced(a) => {
                if let Some(m) = self.managed.get_mut(&a.token) {
                    let addr = SocketAddr::new(a.addr, a.port.unwrap_or(m.remote.port()));
                    m.announced.retain(|(id, _)| *id != a.remote_id);
                    m.announced.push((a.remote_id, addr));
                    self.reconcile(a.token).await;
                }
            }
            Event::Removed { token, remote_id } => {
                // Its subflows close by themselves; only stop planning new ones.
                if let Some(m) = self.managed.get_mut(&token) {
                    m.announced.retain(|(id, _)| *id != remote_id);
                }
            }
            Event::SubEstablished(s) => {
                if let Some(m) = self.managed.get_mut(&s.token) {
                    let pair = (s.local.ip(), s.remote);
                    m.forget_pending(pair);
                    m.retry.remove(&pair);
                    m.subflows.push((s.local, s.remote));
                    tracing::info!(token = s.token, local = %s.local, remote = %s.remote, "subflow established");
                }
            }
            Event::SubClosed(s) => {
                if let Some(m) = self.managed.get_mut(&s.token) {
                    let pair = (s.local.ip(), s.remote);
                    let was_live = m.subflows.iter().position(|sf| *sf == (s.local, s.remote));
                    match was_live {
                        Some(i) => {
                            m.subflows.swap_remove(i);
                        }
                        None => m.forget_pending(pair),
                    }
                    let failures = m.retry.get(&pair).map_or(0, |(n, _)| *n) + 1;
                    let pause = RETRY_MIN
                        .saturating_mul(1 << (failures - 1).min(4))
                        .min(RETRY_MAX);
                    m.retry.insert(pair, (failures, Instant::now() + pause));
                    tracing::info!(
                        token = s.token,
                        local = %s.local,
                        remote = %s.remote,
                        error = s.error,
                        "subflow closed"
                    );
                }
            }
            _ => {}
        }
    }

    async fn on_tick(&mut self) {
        self.links.clear();
        // A CLOSED event lost to ENOBUFS would leave a proxy connection here for good.
        let live = self.connections.tokens();
        self.managed
            .retain(|token, m| !m.ours || live.contains(token));
        let tokens: Vec<u32> = self.managed.keys().copied().collect();
        for token in tokens {
            self.check_links(token).await;
            self.reconcile(token).await;
        }
    }

    /// Destroys subflows whose local link went down, so MPTCP moves their data to the
    /// other subflows at once and the pair can be created again later.
    async fn check_links(&mut self, token: u32) {
        let Some(m) = self.managed.get(&token) else {
            return;
        };
        let mut locals: Vec<IpAddr> = m.subflows.iter().map(|(l, _)| l.ip()).collect();
        locals.extend(m.down.iter().copied());
        locals.sort();
        locals.dedup();
        let now_down: Vec<IpAddr> = locals.into_iter().filter(|l| self.link_down(*l)).collect();
        let Some(m) = self.managed.get_mut(&token) else {
            return;
        };
        for local in &m.down {
            if !now_down.contains(local) {
                tracing::info!(token, %local, "link back up; re-creating its subflows");
            }
        }
        // Failures while a link was down do not count against it once it is back.
        let back: Vec<IpAddr> = m
            .down
            .iter()
            .filter(|l| !now_down.contains(l))
            .copied()
            .collect();
        m.retry.retain(|(l, _), _| !back.contains(l));
        let dead: Vec<(SocketAddr, SocketAddr)> = m
            .subflows
            .iter()
            .filter(|(l, _)| now_down.contains(&l.ip()))
            .copied()
            .collect();
        m.subflows.retain(|sf| !dead.contains(sf));
        m.down = now_down;
        for (local, remote) in dead {
            tracing::info!(token, %local, %remote, "link down; closing its subflow");
            if let Err(e) = self.client.subflow_destroy(token, local, remote).await {
                tracing::debug!(token, error = %e, "subflow_destroy");
            }
        }
    }

    /// Creates the subflows the connection's rule asks for and it lacks.
    async fn reconcile(&mut self, token: u32) {
        self.resolve_owner(token);
        self.refresh_endpoints().await;
        let Some(m) = self.managed.get_mut(&token) else {
            return;
        };
        if !m.established || m.path_manager.is_none() {
            return;
        }
        let now = Instant::now();
        m.pending
            .retain(|(_, sent)| now.duration_since(*sent) < PENDING_TIMEOUT);
        let wanted = m.wanted(&self.endpoints);
        tracing::trace!(token, ?wanted, subflows = ?m.subflows, "reconcile");
        let mut to_create = Vec::new();
        let mut planned: HashMap<Pair, usize> = HashMap::new();
        for pair in wanted {
            let n = planned.entry(pair).or_default();
            *n += 1;
            if m.count(pair) >= *n || m.down.contains(&pair.0) {
                continue;
            }
            match m.retry.get(&pair) {
                Some((failures, _)) if *failures >= MAX_FAILURES => continue,
                Some((_, at)) if *at > now => continue,
                _ => {}
            }
            m.pending.push((pair, now));
            to_create.push(pair);
        }
        // Links are checked outside the borrow of `m`; a pair on a dead link waits.
        let mut dead = Vec::new();
        for pair in &to_create {
            if self.link_down(pair.0) {
                dead.push(*pair);
            }
        }
        if let Some(m) = self.managed.get_mut(&token) {
            for pair in &dead {
                m.forget_pending(*pair);
            }
        }
        to_create.retain(|p| !dead.contains(p));
        for (local, remote) in to_create {
            let endpoint = self
                .endpoints
                .iter()
                .find(|e| e.addr == local)
                .map_or_else(|| Endpoint::new(local), Endpoint::from);
            tracing::debug!(token, %local, %remote, "creating subflow");
            tracing::debug!(token, %local, %remote, "creating subflow");
            if let Err(e) = self.client.subflow_create(token, endpoint, remote).await {
                tracing::debug!(token, %local, %remote, error = %e, "subflow_create");
                if let Some(m) = self.managed.get_mut(&token) {
                    m.forget_pending((local, remote));
                    let failures = m.retry.get(&(local, remote)).map_or(0, |(n, _)| *n) + 1;
                    if failures == MAX_FAILURES {
                        tracing::warn!(token, %local, %remote, error = %e, "giving up on this subflow");
                    }
                    m.retry
                        .insert((local, remote), (failures, Instant::now() + RETRY_MAX));
                }
            }
        }
    }

    /// Ties a token to the rule of the proxy connection that has it, or, after
    /// [`OWNER_WAIT`], to the `default` treatment of another program's connection.
    fn resolve_owner(&mut self, token: u32) {
        let Some(m) = self.managed.get_mut(&token) else {
            return;
        };
        let age = m.first_seen.elapsed();
        if m.ours || (m.path_manager.is_some() && age > OWNER_RECHECK) {
            return;
        }
        if let Some(connection) = self.connections.by_token(token) {
            m.path_manager = Some(connection.settings.path_manager);
            m.ours = true;
            tracing::debug!(token, id = connection.id, pm = %connection.settings.path_manager, "managing connection");
        } else if m.path_manager.is_none() && age > OWNER_WAIT {
            m.path_manager = Some(PathManager::Default);
            tracing::debug!(
                token,
                "not a proxy connection; giving it the default path manager"
            );
        }
    }

    /// The endpoint list, read at most once per tick.
    async fn refresh_endpoints(&mut self) {
        if self.endpoints_read.is_some_and(|at| at.elapsed() < TICK) {
            return;
        }
        match self.client.endpoints().await {
            Ok(endpoints) => {
                tracing::trace!(?endpoints, "endpoint list");
                self.endpoints = endpoints;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the endpoint list"),
        }
        self.endpoints_read = Some(Instant::now());
    }
}
