//! The path manager's decisions, without I/O: which subflows each connection's rule wants,
//! when a failed one is tried again, which connection is the proxy's, and which subflows
//! to close because their link went down.
//!
//! The [driver](super::driver) feeds it what the kernel reports ([`PmEvent`]), a tick now
//! and then, and failed commands; it answers with [`Action`]s for the driver to carry out.
//! What it needs to know about the world (the owner of a token, the endpoint list, whether
//! a link is up) it asks through [`Environment`], which tests answer from a table.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mptcp_policy::PathManager;

use crate::inventory::LocalEndpoint;

/// How long a new connection may stay unknown to the registry before it is taken for
/// another program's: the kernel reports it established just before `connect` returns
/// there, and the proxy registers it right after.
pub(super) const OWNER_WAIT: Duration = Duration::from_millis(500);
/// How long a connection taken for another program's is still looked for in the
/// registry, in case a loaded proxy registered it late: it then gets its own rule.
pub(super) const OWNER_RECHECK: Duration = Duration::from_secs(5);
/// First and largest pause before retrying a subflow that failed while its link is up.
pub(super) const RETRY_MIN: Duration = Duration::from_secs(1);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(4);
/// Failures in a row, link up all along, after which a pair is given up (the peer
/// refuses it); a link coming back resets the count.
pub(super) const MAX_FAILURES: u32 = 5;
/// A create the kernel acknowledged but never reported on is forgotten after this.
pub(super) const PENDING_TIMEOUT: Duration = Duration::from_secs(15);

/// A subflow's address pair as the planner plans it: local address (any port), remote
/// address and port.
type Pair = (IpAddr, SocketAddr);

/// What the kernel reported about a connection this host opened (connections accepted
/// here are left alone and never reach the planner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PmEvent {
    /// The connection was created (`established: false`; no subflows can be added yet) or
    /// is fully established.
    Connection {
        token: u32,
        /// The initial subflow's ends.
        local: SocketAddr,
        remote: SocketAddr,
        /// The peer refuses subflows to its initial address.
        deny_join_id0: bool,
        established: bool,
    },
    Closed {
        token: u32,
    },
    /// The peer announced an address; `port: None` means the connection's.
    Announced {
        token: u32,
        remote_id: u8,
        addr: IpAddr,
        port: Option<u16>,
    },
    /// The peer withdrew an address.
    Removed {
        token: u32,
        remote_id: u8,
    },
    SubEstablished {
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// A subflow closed or failed to establish (then `error` is usually set).
    SubClosed {
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
        error: Option<u8>,
    },
}

/// The local end of a subflow to create: the address, and the endpoint's id and interface
/// when the address is in the endpoint list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalEnd {
    pub(crate) addr: IpAddr,
    pub(crate) id: Option<u8>,
    pub(crate) ifindex: Option<u32>,
}

/// What the driver is to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Open a subflow of connection `token`; report a refusal with
    /// [`Planner::create_failed`].
    Create {
        token: u32,
        local: LocalEnd,
        remote: SocketAddr,
    },
    /// Close the subflow with these exact ends.
    Destroy {
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
    },
}

/// What the planner asks of the world.
pub(crate) trait Environment {
    /// The id of the proxy connection with `token` and the path manager its rule names;
    /// `None` when no proxy connection has that token (yet).
    fn owner(&mut self, token: u32) -> Option<(u64, PathManager)>;
    /// The tokens of the proxy's live connections.
    fn live_tokens(&mut self) -> HashSet<u32>;
    /// The local addresses available for subflows (the endpoint list).
    fn endpoints(&mut self) -> Arc<Vec<LocalEndpoint>>;
    /// Whether the link of local address `addr` is up; unknown addresses count as up.
    fn link_up(&mut self, addr: IpAddr) -> bool;
}

/// One MPTCP connection the planner looks after.
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
    fn wanted(&self, endpoints: &[LocalEndpoint]) -> Vec<Pair> {
        let family = |a: &IpAddr| a.is_ipv4() == self.remote.is_ipv4();
        let endpoint_addrs = endpoints.iter().map(|e| e.addr).filter(family);
        let initial = (self.local.ip(), self.remote);
        let mut wanted = vec![initial];
        match self.path_manager {
            None => {}
            Some(pm @ PathManager::Ndiffports(_)) => {
                let n = pm.ndiffports().unwrap_or(1);
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

    /// Live and pending subflows over `pair`.
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

    /// Counts one more failure of `pair` and returns the count.
    fn record_failure(
        &mut self,
        pair: Pair,
        pause: impl FnOnce(u32) -> Duration,
        now: Instant,
    ) -> u32 {
        let failures = self.retry.get(&pair).map_or(0, |(n, _)| *n) + 1;
        self.retry.insert(pair, (failures, now + pause(failures)));
        failures
    }
}

/// The pause after the `failures`th failure in a row of a subflow the kernel opened and
/// lost: doubling from [`RETRY_MIN`] up to [`RETRY_MAX`].
fn backoff(failures: u32) -> Duration {
    RETRY_MIN
        .saturating_mul(1 << failures.saturating_sub(1).min(4))
        .min(RETRY_MAX)
}

/// The path manager's state: every client-side MPTCP connection of the namespace, by token.
#[derive(Debug, Default)]
pub(crate) struct Planner {
    managed: HashMap<u32, Managed>,
}

impl Planner {
    /// Takes in what the kernel reported at `now`.
    pub(crate) fn on_event(
        &mut self,
        event: PmEvent,
        now: Instant,
        env: &mut impl Environment,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            PmEvent::Connection {
                token,
                local,
                remote,
                deny_join_id0,
                established,
            } => {
                let entry = self.managed.entry(token).or_insert_with(|| Managed {
                    local,
                    remote,
                    deny_join_id0,
                    established: false,
                    path_manager: None,
                    ours: false,
                    first_seen: now,
                    announced: Vec::new(),
                    subflows: vec![(local, remote)],
                    pending: Vec::new(),
                    retry: HashMap::new(),
                    down: Vec::new(),
                });
                entry.established |= established;
                entry.deny_join_id0 |= deny_join_id0;
                if established {
                    self.reconcile(token, now, env, &mut actions);
                }
            }
            PmEvent::Closed { token } => {
                self.managed.remove(&token);
            }
            PmEvent::Announced {
                token,
                remote_id,
                addr,
                port,
            } => {
                if let Some(m) = self.managed.get_mut(&token) {
                    let addr = SocketAddr::new(addr, port.unwrap_or(m.remote.port()));
                    m.announced.retain(|(id, _)| *id != remote_id);
                    m.announced.push((remote_id, addr));
                    self.reconcile(token, now, env, &mut actions);
                }
            }
            PmEvent::Removed { token, remote_id } => {
                // Its subflows close by themselves; only stop planning new ones.
                if let Some(m) = self.managed.get_mut(&token) {
                    m.announced.retain(|(id, _)| *id != remote_id);
                }
            }
            PmEvent::SubEstablished {
                token,
                local,
                remote,
            } => {
                if let Some(m) = self.managed.get_mut(&token) {
                    let pair = (local.ip(), remote);
                    m.forget_pending(pair);
                    m.retry.remove(&pair);
                    m.subflows.push((local, remote));
                    tracing::info!(token, %local, %remote, "subflow established");
                }
            }
            PmEvent::SubClosed {
                token,
                local,
                remote,
                error,
            } => {
                if let Some(m) = self.managed.get_mut(&token) {
                    let pair = (local.ip(), remote);
                    match m.subflows.iter().position(|sf| *sf == (local, remote)) {
                        Some(i) => {
                            m.subflows.swap_remove(i);
                        }
                        None => m.forget_pending(pair),
                    }
                    m.record_failure(pair, backoff, now);
                    tracing::info!(token, %local, %remote, error, "subflow closed");
                }
            }
        }
        actions
    }

    /// The periodic pass at `now`: forgets connections the proxy no longer has, closes
    /// subflows whose link went down, and creates what each connection lacks (retries
    /// that are due, subflows over links that came back, new endpoints).
    pub(crate) fn on_tick(&mut self, now: Instant, env: &mut impl Environment) -> Vec<Action> {
        // A CLOSED event lost to ENOBUFS would leave a proxy connection here for good.
        let live = env.live_tokens();
        self.managed
            .retain(|token, m| !m.ours || live.contains(token));
        let mut actions = Vec::new();
        let mut tokens: Vec<u32> = self.managed.keys().copied().collect();
        tokens.sort_unstable();
        for token in tokens {
            self.check_links(token, env, &mut actions);
            self.reconcile(token, now, env, &mut actions);
        }
        actions
    }

    /// Takes in that the kernel refused an [`Action::Create`] at `now`: tried again after
    /// [`RETRY_MAX`], given up after [`MAX_FAILURES`] in a row.
    pub(crate) fn create_failed(
        &mut self,
        token: u32,
        local: IpAddr,
        remote: SocketAddr,
        error: &dyn fmt::Display,
        now: Instant,
    ) {
        let Some(m) = self.managed.get_mut(&token) else {
            return;
        };
        let pair = (local, remote);
        m.forget_pending(pair);
        if m.record_failure(pair, |_| RETRY_MAX, now) == MAX_FAILURES {
            tracing::warn!(token, %local, %remote, %error, "giving up on this subflow");
        }
    }

    /// Closes subflows whose local link went down, so MPTCP moves their data to the
    /// other subflows at once and the pair can be created again later.
    fn check_links(&mut self, token: u32, env: &mut impl Environment, actions: &mut Vec<Action>) {
        let Some(m) = self.managed.get_mut(&token) else {
            return;
        };
        // Locals of failed pairs too: a link that went down and came back under a pair
        // given up on resets it.
        let mut locals: Vec<IpAddr> = m.subflows.iter().map(|(l, _)| l.ip()).collect();
        locals.extend(m.down.iter().copied());
        locals.extend(m.retry.keys().map(|(l, _)| *l));
        locals.sort();
        locals.dedup();
        let now_down: Vec<IpAddr> = locals.into_iter().filter(|l| !env.link_up(*l)).collect();
        // Failures while a link was down do not count against it once it is back.
        let back: Vec<IpAddr> = m
            .down
            .iter()
            .filter(|l| !now_down.contains(l))
            .copied()
            .collect();
        for local in &back {
            tracing::info!(token, %local, "link back up; re-creating its subflows");
        }
        m.retry.retain(|(l, _), _| !back.contains(l));
        let (dead, alive): (Vec<_>, Vec<_>) = std::mem::take(&mut m.subflows)
            .into_iter()
            .partition(|(l, _)| now_down.contains(&l.ip()));
        m.subflows = alive;
        m.down = now_down;
        for (local, remote) in dead {
            tracing::info!(token, %local, %remote, "link down; closing its subflow");
            actions.push(Action::Destroy {
                token,
                local,
                remote,
            });
        }
    }

    /// Creates the subflows the connection's rule asks for and it lacks.
    fn reconcile(
        &mut self,
        token: u32,
        now: Instant,
        env: &mut impl Environment,
        actions: &mut Vec<Action>,
    ) {
        self.resolve_owner(token, now, env);
        let Some(m) = self.managed.get_mut(&token) else {
            return;
        };
        if !m.established || m.path_manager.is_none() {
            return;
        }
        m.pending
            .retain(|(_, sent)| now.duration_since(*sent) < PENDING_TIMEOUT);
        let endpoints = env.endpoints();
        let wanted = m.wanted(&endpoints);
        tracing::trace!(token, ?wanted, subflows = ?m.subflows, "reconcile");
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
            // A pair on a dead link waits for the tick that sees it come back.
            if !env.link_up(pair.0) {
                continue;
            }
            m.pending.push((pair, now));
            let (local, remote) = pair;
            let endpoint = endpoints.iter().find(|e| e.addr == local);
            tracing::debug!(token, %local, %remote, "creating subflow");
            actions.push(Action::Create {
                token,
                local: LocalEnd {
                    addr: local,
                    id: endpoint.map(|e| e.id),
                    ifindex: endpoint.and_then(|e| e.ifindex),
                },
                remote,
            });
        }
    }

    /// Ties a token to the rule of the proxy connection that has it, or, after
    /// [`OWNER_WAIT`], to the `default` treatment of another program's connection.
    fn resolve_owner(&mut self, token: u32, now: Instant, env: &mut impl Environment) {
        let Some(m) = self.managed.get_mut(&token) else {
            return;
        };
        let age = now.saturating_duration_since(m.first_seen);
        if m.ours || (m.path_manager.is_some() && age > OWNER_RECHECK) {
            return;
        }
        if let Some((id, path_manager)) = env.owner(token) {
            m.path_manager = Some(path_manager);
            m.ours = true;
            tracing::debug!(token, id, pm = %path_manager, "managing connection");
        } else if m.path_manager.is_none() && age > OWNER_WAIT {
            m.path_manager = Some(PathManager::Default);
            tracing::debug!(
                token,
                "not a proxy connection; giving it the default path manager"
            );
        }
    }
}

#[cfg(test)]
mod tests;
