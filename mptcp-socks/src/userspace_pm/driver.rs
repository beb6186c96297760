//! The path manager's I/O: the `mptcp_pm` netlink client and event stream, the link-state
//! probe and the tick, around the [planner](super::planner) that decides.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mptcp_netlink::{Endpoint, Event, PmClient, PmEvents};
use mptcp_policy::PathManager;
use tokio::task::JoinHandle;

use super::planner::{Action, Environment, LocalEnd, Planner, PmEvent};
use crate::inventory::{LocalAddresses, LocalEndpoint};
use crate::registry::Connections;

/// How often links are checked and failed subflows retried.
const TICK: Duration = Duration::from_millis(250);

/// Why the userspace path manager could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PmError {
    /// The `mptcp_pm` netlink family or its event group could not be opened: no MPTCP,
    /// a kernel older than 5.19, or no CAP_NET_ADMIN ([`PmError::is_permission_denied`]).
    #[error(transparent)]
    Netlink(#[from] mptcp_netlink::Error),
    /// The path manager's task panicked or was cancelled.
    #[error("the userspace path manager stopped unexpectedly: {0}")]
    Stopped(#[from] tokio::task::JoinError),
}

impl PmError {
    /// True when the process lacks CAP_NET_ADMIN, which no retry fixes.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, PmError::Netlink(e) if e.is_permission_denied())
    }
}

/// A running userspace path manager, from [`start_userspace_pm`].
///
/// Dropping it leaves the path manager running until its shutdown future completes.
#[derive(Debug)]
pub struct UserspacePm {
    task: JoinHandle<()>,
}

impl UserspacePm {
    /// Waits until the path manager has stopped (its shutdown future completed).
    ///
    /// # Errors
    /// [`PmError::Stopped`] if its task panicked or was cancelled. Netlink errors after
    /// the start (lost events, refused commands) are logged, not returned.
    pub async fn finished(self) -> Result<(), PmError> {
        Ok(self.task.await?)
    }

    /// Whether it has stopped already.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// A handle that tells whether it still runs, for whoever reports health.
    pub fn monitor(&self) -> PmMonitor {
        PmMonitor(self.task.abort_handle())
    }
}

/// Tells whether a [`UserspacePm`] still runs (it stops on shutdown, or if its task
/// panicked), without owning or stopping it.
#[derive(Debug, Clone)]
pub struct PmMonitor(tokio::task::AbortHandle);

impl PmMonitor {
    /// Whether the path manager still runs.
    pub fn is_running(&self) -> bool {
        !self.0.is_finished()
    }
}

/// Starts the userspace path manager: opens the `mptcp_pm` netlink family and joins its
/// event group, then manages every client-side MPTCP connection of the network namespace
/// in a task of its own until `shutdown` completes.
///
/// `connections` tells the proxy's connections (which get their rule's path manager)
/// from other programs' (which get `default`); `inventory` is the endpoint list to make
/// subflows from, kept current by [`keep_inventory`](crate::keep_inventory).
///
/// Needs CAP_NET_ADMIN and `net.mptcp.path_manager=userspace` (`pm_type=1` before 6.15)
/// in the namespace; the caller sets that up. Must be called inside a tokio runtime.
///
/// # Errors
/// When the netlink family or its event group cannot be opened (no MPTCP, kernel older
/// than 5.19, no CAP_NET_ADMIN: see [`PmError::is_permission_denied`]). Once it has
/// returned `Ok`, the path manager is listening: no connection's events are missed.
pub async fn start_userspace_pm(
    connections: Connections,
    inventory: LocalAddresses,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<UserspacePm, PmError> {
    let client = PmClient::connect().await?;
    let events = PmEvents::subscribe().await?;
    let driver = Driver {
        client,
        planner: Planner::default(),
        world: World {
            connections,
            inventory,
            links: HashMap::new(),
        },
    };
    tracing::info!("userspace path manager running");
    let task = tokio::spawn(driver.run(events, shutdown));
    Ok(UserspacePm { task })
}

/// The planner with what it acts through.
struct Driver {
    client: PmClient,
    planner: Planner,
    world: World,
}

impl Driver {
    async fn run(mut self, mut events: PmEvents, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let actions = tokio::select! {
                () = &mut shutdown => return,
                event = events.next() => match event {
                    Ok(event) => {
                        tracing::trace!(?event, "path-manager event");
                        match planner_event(&event) {
                            Some(event) => self.planner.on_event(event, Instant::now(), &mut self.world),
                            None => continue,
                        }
                    }
                    Err(e) => {
                        // ENOBUFS: events were lost under load. State is rebuilt from
                        // what follows; a missed SUB_ESTABLISHED at worst causes a spare
                        // subflow.
                        tracing::warn!(error = %e, "path-manager event stream");
                        continue;
                    }
                },
                _ = tick.tick() => {
                    // Link states are read at most once per tick.
                    self.world.links.clear();
                    self.planner.on_tick(Instant::now(), &mut self.world)
                }
            };
            self.execute(actions).await;
        }
    }

    /// Carries out the planner's actions, telling it which creates the kernel refused.
    async fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Create {
                    token,
                    local,
                    remote,
                } => {
                    if let Err(e) = self
                        .client
                        .subflow_create(token, endpoint(local), remote)
                        .await
                    {
                        tracing::debug!(token, local = %local.addr, %remote, error = %e, "subflow_create");
                        self.planner
                            .create_failed(token, local.addr, remote, &e, Instant::now());
                    }
                }
                Action::Destroy {
                    token,
                    local,
                    remote,
                } => {
                    if let Err(e) = self.client.subflow_destroy(token, local, remote).await {
                        tracing::debug!(token, error = %e, "subflow_destroy");
                    }
                }
            }
        }
    }
}

/// What the planner asks about, answered from the proxy's registry, the inventory and the
/// host's interfaces.
struct World {
    connections: Connections,
    inventory: LocalAddresses,
    /// Link state per local address, read at most once per tick.
    links: HashMap<IpAddr, bool>,
}

impl Environment for World {
    fn owner(&mut self, token: u32) -> Option<(u64, PathManager)> {
        self.connections
            .by_token(token)
            .map(|c| (c.id, c.settings.path_manager))
    }

    fn live_tokens(&mut self) -> HashSet<u32> {
        self.connections.tokens()
    }

    fn endpoints(&mut self) -> Arc<Vec<LocalEndpoint>> {
        self.inventory.get()
    }

    fn link_up(&mut self, addr: IpAddr) -> bool {
        *self.links.entry(addr).or_insert_with(|| {
            let state = mptcp_policy::local_address_up(addr);
            tracing::trace!(%addr, ?state, "link state");
            state.ok().flatten() != Some(false)
        })
    }
}

/// The planner's view of a kernel event; `None` for what it ignores (connections this
/// host accepted, listeners, priorities).
fn planner_event(event: &Event) -> Option<PmEvent> {
    Some(match *event {
        Event::Created(c) | Event::Established(c) if !c.server_side => PmEvent::Connection {
            token: c.token,
            local: c.local,
            remote: c.remote,
            deny_join_id0: c.deny_join_id0(),
            established: matches!(event, Event::Established(_)),
        },
        Event::Closed { token } => PmEvent::Closed { token },
        Event::Announced(a) => PmEvent::Announced {
            token: a.token,
            remote_id: a.remote_id,
            addr: a.addr,
            port: a.port,
        },
        Event::Removed { token, remote_id } => PmEvent::Removed { token, remote_id },
        Event::SubEstablished(s) => PmEvent::SubEstablished {
            token: s.token,
            local: s.local,
            remote: s.remote,
        },
        Event::SubClosed(s) => PmEvent::SubClosed {
            token: s.token,
            local: s.local,
            remote: s.remote,
            error: s.error,
        },
        _ => return None,
    })
}

/// The netlink form of a subflow's local end. The endpoint's id keeps address ids stable
/// across path-manager modes; without one the kernel reports id 0 and no interface.
fn endpoint(local: LocalEnd) -> Endpoint {
    let mut endpoint = Endpoint::new(local.addr);
    if let Some(id) = local.id {
        endpoint = endpoint.with_id(id);
    }
    if let Some(ifindex) = local.ifindex.and_then(|i| i32::try_from(i).ok()) {
        endpoint = endpoint.with_ifindex(ifindex);
    }
    endpoint
}
