//! What this host offers the rules: the kernel's MPTCP support, the daemon's path-manager
//! mode and the local address inventory. The REST API judges every rule against it.

use std::fmt;
use std::sync::Arc;

use mptcp_policy::{KernelSupport, PmMode};
// The inventory lives in mptcp-socks, whose path manager reads it too.
pub use mptcp_socks::{LocalAddresses, LocalEndpoint, interface_name};

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
    fn the_host_sees_what_the_keeper_sets() {
        let keeper = LocalAddresses::default();
        let host = Host::new(PmMode::Userspace).local_addresses(keeper.clone());
        assert!(host.inventory().is_empty());
        // An endpoint bound to `lo` (index 1 in every namespace).
        keeper.set(vec![LocalEndpoint {
            id: 2,
            addr: "127.0.0.2".parse().expect("addr"),
            flags: Vec::new(),
            ifindex: Some(1),
        }]);
        assert_eq!(host.inventory()[0].interface().as_deref(), Some("lo"));
    }

    #[test]
    fn fixed_probe_answers_what_it_was_given() {
        let mut kernel = KernelSupport::probe();
        kernel.available_schedulers = vec!["default".into(), "made-up".into()];
        let probe = KernelProbe::fixed(kernel.clone());
        assert_eq!(probe.get(), kernel);
    }
}
