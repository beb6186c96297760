//! What this host offers the rules: the kernel's MPTCP support, the daemon's path-manager
//! mode and the local address inventory. The REST API judges every rule against it.

use std::fmt;
use std::fs;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

use mptcp_policy::{KernelSupport, PmMode};
use serde::{Deserialize, Serialize};

/// Where the kernel's MPTCP support is read from.
///
/// [`KernelProbe::live`] reads `/proc/sys/net/mptcp` each time it is asked, so a sysctl
/// changed while the daemon runs shows at once; [`KernelProbe::fixed`] answers the same
/// every time (tests, or a host described rather than probed).
#[derive(Clone, Default)]
pub struct KernelProbe {
    /// `None`: probe the kernel on every call.
    fixed: Option<Arc<KernelSupport>>,
}

impl KernelProbe {
    /// Probes the network namespace of the process on every call.
    pub fn live() -> Self {
        KernelProbe { fixed: None }
    }

    /// Always answers `kernel`.
    pub fn fixed(kernel: KernelSupport) -> Self {
        KernelProbe {
            fixed: Some(Arc::new(kernel)),
        }
    }

    /// The kernel's support now.
    pub fn get(&self) -> KernelSupport {
        match &self.fixed {
            Some(kernel) => KernelSupport::clone(kernel),
            None => KernelSupport::probe(),
        }
    }
}

impl fmt::Debug for KernelProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fixed {
            Some(kernel) => f.debug_tuple("KernelProbe::fixed").field(kernel).finish(),
            None => f.write_str("KernelProbe::live"),
        }
    }
}

/// One local address the operator made available for subflows: an entry of the kernel's
/// endpoint list (`ip mptcp endpoint show`), which both path-manager modes use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// The name of the endpoint's interface (from `/sys/class/net`), if it has one and it
    /// still exists.
    pub fn interface(&self) -> Option<String> {
        self.ifindex.and_then(interface_name)
    }
}

/// The name of the interface with index `ifindex` in this network namespace (as far as the
/// mounted `/sys` shows it: `ip netns exec` mounts the namespace's own).
pub fn interface_name(ifindex: u32) -> Option<String> {
    fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let index = fs::read_to_string(entry.path().join("ifindex")).ok()?;
            (index.trim().parse::<u32>().ok()? == ifindex)
                .then(|| entry.file_name().to_string_lossy().into_owned())
        })
}

/// The local address inventory, shared between whoever keeps it current (the daemon,
/// from the kernel's endpoint list) and whoever reads it (the API, the path manager).
/// Cheap to clone; all clones see the same list.
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

/// What the API needs to know about the host to say whether a rule takes effect.
///
/// ```
/// use mptcp_policy::PmMode;
/// use mptcp_socksd::{Host, LocalAddresses};
///
/// let inventory = LocalAddresses::default();
/// let host = Host::new(PmMode::InKernel).local_addresses(inventory.clone());
/// assert_eq!(host.mode(), PmMode::InKernel);
/// assert!(host.inventory().is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// Re-read per request, so that `sysctl -w net.mptcp.*` shows without a restart.
    kernel: KernelProbe,
    /// Chosen by the daemon at start; fixed for its lifetime.
    mode: PmMode,
    /// Kept current by the daemon.
    local_addresses: LocalAddresses,
}

impl Host {
    /// This host, probed live, with the daemon's path manager in `mode` and an empty
    /// address inventory.
    pub fn new(mode: PmMode) -> Self {
        Host {
            mode,
            ..Host::default()
        }
    }

    /// Reads the kernel's support through `probe` instead of probing live.
    #[must_use]
    pub fn kernel_probe(mut self, probe: KernelProbe) -> Self {
        self.kernel = probe;
        self
    }

    /// Uses `addresses` as the inventory (keep a clone to update it).
    #[must_use]
    pub fn local_addresses(mut self, addresses: LocalAddresses) -> Self {
        self.local_addresses = addresses;
        self
    }

    /// The kernel's MPTCP support now.
    pub fn kernel(&self) -> KernelSupport {
        self.kernel.get()
    }

    /// The probe the kernel's support is read through.
    pub fn probe(&self) -> &KernelProbe {
        &self.kernel
    }

    /// The daemon's path-manager mode.
    pub fn mode(&self) -> PmMode {
        self.mode
    }

    /// The local address inventory now.
    pub fn inventory(&self) -> Arc<Vec<LocalEndpoint>> {
        self.local_addresses.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_is_shared_between_clones() {
        let addresses = LocalAddresses::default();
        let host = Host::new(PmMode::Userspace).local_addresses(addresses.clone());
        let before = host.inventory();
        addresses.set(vec![LocalEndpoint {
            id: 1,
            addr: "10.0.0.1".parse().expect("addr"),
            flags: vec!["subflow".into()],
            ifindex: None,
        }]);
        assert!(before.is_empty(), "a snapshot does not change");
        assert_eq!(host.inventory().len(), 1);
        assert_eq!(host.inventory()[0].interface(), None);
    }

    #[test]
    fn loopback_has_a_name() {
        // Index 1 is `lo` in every network namespace.
        assert_eq!(interface_name(1).as_deref(), Some("lo"));
    }

    #[test]
    fn fixed_probe_answers_what_it_was_given() {
        let mut kernel = KernelSupport::probe();
        kernel.available_schedulers = vec!["default".into(), "made-up".into()];
        let probe = KernelProbe::fixed(kernel.clone());
        assert_eq!(probe.get(), kernel);
    }
}
