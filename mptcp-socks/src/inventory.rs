//! The local address inventory: the entries of the kernel's MPTCP endpoint list
//! (`ip mptcp endpoint`), kept in one place so that everyone who shows or uses them (an
//! operator API, the userspace path manager) sees the same list.

use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

pub use mptcp_policy::interface_name;

/// One local address the operator made available for subflows: an entry of the kernel's
/// endpoint list (`ip mptcp endpoint show`), which both path-manager modes use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalEndpoint {
    /// The kernel's address id.
    pub id: u8,
    /// The address.
    pub addr: IpAddr,
    /// `subflow`, `signal`, `backup`, `fullmesh`, ... as `ip mptcp endpoint` names them.
    pub flags: Vec<String>,
    /// The interface the endpoint is bound to (`dev IF`), if any.
    pub ifindex: Option<u32>,
}

impl LocalEndpoint {
    /// The name of the endpoint's interface, if it has one and it still exists.
    pub fn interface(&self) -> Option<String> {
        self.ifindex.and_then(interface_name)
    }
}

/// The local address inventory, shared between whoever keeps it current
/// ([`keep_inventory`](crate::keep_inventory), from the kernel's endpoint list) and whoever
/// reads it (an API, the path manager). Cheap to clone; all clones see the same list.
///
/// ```
/// use mptcp_socks::{LocalAddresses, LocalEndpoint};
///
/// let inventory = LocalAddresses::default();
/// let reader = inventory.clone();
/// inventory.set(vec![LocalEndpoint {
///     id: 1,
///     addr: "192.0.2.1".parse().unwrap(),
///     flags: vec!["subflow".into()],
///     ifindex: None,
/// }]);
/// assert_eq!(reader.get().len(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct LocalAddresses {
    inner: Arc<RwLock<Arc<Vec<LocalEndpoint>>>>,
}

impl LocalAddresses {
    /// An inventory holding `endpoints`.
    pub fn new(endpoints: Vec<LocalEndpoint>) -> Self {
        let addresses = LocalAddresses::default();
        addresses.set(endpoints);
        addresses
    }

    /// Replaces the whole list (endpoints are few; a refresh re-reads them all).
    pub fn set(&self, endpoints: Vec<LocalEndpoint>) {
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(endpoints);
    }

    /// The list now. Later `set`s do not change what was returned.
    pub fn get(&self) -> Arc<Vec<LocalEndpoint>> {
        Arc::clone(&self.inner.read().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(feature = "userspace-pm")]
pub use keeper::keep_inventory;

#[cfg(feature = "userspace-pm")]
mod keeper {
    use std::future::Future;
    use std::time::Duration;

    use mptcp_netlink::{EndpointInfo, PmClient};

    use super::{LocalAddresses, LocalEndpoint};

    /// Keeps `inventory` in step with the kernel's endpoint list (`ip mptcp endpoint`) of
    /// this network namespace, re-reading it every `every` (one netlink dump; a second is
    /// plenty) until `shutdown` completes. The first read happens at once.
    ///
    /// Needs no privilege: reading the endpoint list is open to every user. On a kernel
    /// without MPTCP (no `mptcp_pm` netlink family) it logs that at debug level and returns
    /// at once, leaving the inventory as it was; a failed read is logged and retried at
    /// the next period.
    pub async fn keep_inventory(
        inventory: LocalAddresses,
        every: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let client = match PmClient::connect().await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!("no endpoint inventory: {e}");
                return;
            }
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            match client.endpoints().await {
                Ok(endpoints) => inventory.set(endpoints.iter().map(from_kernel).collect()),
                Err(e) => tracing::debug!("cannot read the endpoint list: {e}"),
            }
        }
    }

    /// An inventory entry from the kernel's (a function, not `From`, so that no netlink
    /// type shows in this crate's API).
    fn from_kernel(e: &EndpointInfo) -> LocalEndpoint {
        LocalEndpoint {
            id: e.id,
            addr: e.addr,
            // `EndpointFlags` prints as `ip mptcp endpoint` does: "subflow,backup".
            flags: e
                .flags
                .to_string()
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect(),
            ifindex: e.ifindex.and_then(|i| u32::try_from(i).ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_is_shared_between_clones() {
        let addresses = LocalAddresses::default();
        let reader = addresses.clone();
        let before = reader.get();
        addresses.set(vec![LocalEndpoint {
            id: 1,
            addr: "10.0.0.1".parse().expect("addr"),
            flags: vec!["subflow".into()],
            ifindex: None,
        }]);
        assert!(before.is_empty(), "a snapshot does not change");
        assert_eq!(reader.get().len(), 1);
        assert_eq!(reader.get()[0].interface(), None);
    }

    #[test]
    fn loopback_has_a_name() {
        // Index 1 is `lo` in every network namespace.
        assert_eq!(interface_name(1).as_deref(), Some("lo"));
        assert_eq!(interface_name(0), None);
        assert_eq!(interface_name(u32::MAX), None);
    }
}
