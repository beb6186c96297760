//! Whether a rule's settings can take effect on this host, and why not.
//!
//! The seed's kernel applied scheduler and path manager per socket. Upstream Linux
//! selects both per network namespace, so a rule may ask for something this host cannot
//! give a single connection. Every setting is either in effect or reported here with the
//! reason and, where one exists, the fix.

use std::fmt;

use crate::error::Field;
use crate::kernel::{Flavour, KernelSupport};
use crate::keyword::keyword_enum;
use crate::rule::{PathManager, Scheduler, Settings};

keyword_enum! {
    /// How the daemon manages subflows on an upstream kernel.
    ///
    /// Printed `in-kernel` (the REST API shows it); `kernel`, as in
    /// `mptcp-socksd --path-manager kernel` and the sysctl, parses as well.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[non_exhaustive]
    pub enum PmMode: Field::PmMode {
        /// The kernel's own path manager, driven by `ip mptcp endpoint`: the same for every
        /// connection in the namespace.
        #[default]
        InKernel = "in-kernel" | "kernel",
        /// The daemon creates subflows per connection over the `mptcp_pm` netlink family
        /// (`net.mptcp.path_manager=userspace`).
        Userspace = "userspace",
    }
}

/// One way in which a rule does not (fully) take effect here.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limitation {
    /// The kernel has no MPTCP, or it is switched off: connections are plain TCP.
    MptcpUnavailable {
        /// Why: no MPTCP, or `net.mptcp.enabled=0`.
        reason: &'static str,
    },
    /// The kernel does not offer the scheduler; connections use `default`.
    SchedulerUnavailable {
        /// What the rule asks for.
        requested: Scheduler,
        /// What `net.mptcp.available_schedulers` lists.
        available: Vec<String>,
    },
    /// The scheduler is available but upstream selects it per namespace, and the
    /// namespace uses another one.
    SchedulerPerNamespace {
        /// What the rule asks for.
        requested: Scheduler,
        /// `net.mptcp.scheduler`.
        in_use: String,
    },
    /// The path manager needs per-connection control, which the in-kernel path
    /// manager does not give.
    NeedsUserspacePm {
        /// What the rule asks for.
        requested: PathManager,
    },
    /// `binder` exists only on the legacy kernel.
    BinderUnsupported,
    /// The namespace runs the userspace path manager (`net.mptcp.path_manager=userspace`,
    /// set by mptcpd or left behind by a daemon that died) but this daemon runs in
    /// kernel mode: nobody creates subflows, so connections stay single-path.
    NoSubflowsUserspacePm,
}

impl Limitation {
    /// Whether the REST API refuses a rule with this limitation (422). The others are
    /// accepted and reported: a fix on the host (a flag, a sysctl) makes them work.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Limitation::SchedulerUnavailable { .. } | Limitation::BinderUnsupported
        )
    }
}

impl fmt::Display for Limitation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limitation::MptcpUnavailable { reason } => {
                write!(f, "{reason}: connections use plain TCP")
            }
            Limitation::SchedulerUnavailable {
                requested,
                available,
            } => write!(
                f,
                "scheduler {requested} is not available on this kernel (available: {}); connections use default",
                available.join(", ")
            ),
            Limitation::SchedulerPerNamespace { requested, in_use } => write!(
                f,
                "scheduler {requested}: upstream Linux selects the scheduler per network namespace and this one uses {in_use} (sysctl net.mptcp.scheduler)"
            ),
            Limitation::NeedsUserspacePm { requested } => write!(
                f,
                "path manager {requested} needs per-connection subflow control: run mptcp-socksd --path-manager userspace (the in-kernel path manager treats every connection alike)"
            ),
            Limitation::BinderUnsupported => f.write_str(
                "path manager binder exists only on the legacy multipath-tcp.org kernel; upstream Linux has no equivalent",
            ),
            Limitation::NoSubflowsUserspacePm => f.write_str(
                "no subflows will be created: this network namespace runs the userspace path manager (sysctl net.mptcp.path_manager=userspace) and this daemon does not (run mptcp-socksd --path-manager userspace, or sysctl -w net.mptcp.path_manager=kernel)",
            ),
        }
    }
}

/// What keeps `settings` from taking effect on a host with `kernel`, the daemon running
/// its path manager in `mode`. Empty when everything the rule asks for happens.
pub fn limitations(settings: &Settings, kernel: &KernelSupport, mode: PmMode) -> Vec<Limitation> {
    let mut found = Vec::new();
    if !settings.mptcp {
        // Plain TCP is always possible, and scheduler and path manager do not apply.
        return found;
    }
    match (kernel.flavour, kernel.enabled) {
        (Flavour::Legacy, true) => return found, // per-socket options do it all
        (Flavour::Upstream, true) => {}
        (Flavour::Upstream | Flavour::Legacy, false) => {
            found.push(Limitation::MptcpUnavailable {
                reason: "MPTCP is disabled (sysctl net.mptcp.enabled=0)",
            });
            return found;
        }
        _ => {
            found.push(Limitation::MptcpUnavailable {
                reason: "this kernel has no MPTCP (Linux 5.6+ with CONFIG_MPTCP)",
            });
            return found;
        }
    }
    let scheduler = settings.scheduler.as_str();
    if !kernel.available_schedulers.iter().any(|s| s == scheduler) {
        found.push(Limitation::SchedulerUnavailable {
            requested: settings.scheduler,
            available: kernel.available_schedulers.clone(),
        });
    } else if let Some(in_use) = &kernel.scheduler
        && in_use != scheduler
    {
        found.push(Limitation::SchedulerPerNamespace {
            requested: settings.scheduler,
            in_use: in_use.clone(),
        });
    }
    match settings.path_manager {
        PathManager::Binder => found.push(Limitation::BinderUnsupported),
        PathManager::Fullmesh | PathManager::Ndiffports(_) if mode == PmMode::InKernel => {
            found.push(Limitation::NeedsUserspacePm {
                requested: settings.path_manager,
            });
        }
        _ => {}
    }
    // The in-kernel path manager does nothing in a namespace switched to userspace, and
    // this daemon does not drive the netlink family then: a rule's MPTCP is not in
    // effect, whatever else it asks for. The host can fix it, so this is no refusal.
    if mode == PmMode::InKernel && kernel.path_manager.as_deref() == Some("userspace") {
        found.push(Limitation::NoSubflowsUserspacePm);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(schedulers: &[&str]) -> KernelSupport {
        KernelSupport {
            flavour: Flavour::Upstream,
            enabled: true,
            scheduler: Some("default".into()),
            available_schedulers: schedulers.iter().map(|s| s.to_string()).collect(),
            path_manager: Some("kernel".into()),
        }
    }

    fn settings(mptcp: bool, scheduler: &str, pm: &str) -> Settings {
        Settings {
            mptcp,
            scheduler: scheduler.parse().unwrap(),
            path_manager: pm.parse().unwrap(),
        }
    }

    #[test]
    fn table() {
        use PmMode::{InKernel, Userspace};
        let k = upstream(&["default"]);
        let cases: &[(Settings, PmMode, &[&str])] = &[
            (settings(true, "default", "default"), InKernel, &[]),
            (settings(true, "default", "default"), Userspace, &[]),
            (settings(false, "redundant", "binder"), InKernel, &[]),
            (
                settings(true, "default", "fullmesh"),
                InKernel,
                &["--path-manager userspace"],
            ),
            (settings(true, "default", "fullmesh"), Userspace, &[]),
            (
                settings(true, "default", "ndiffports:3"),
                InKernel,
                &["--path-manager userspace"],
            ),
            (settings(true, "default", "ndiffports"), Userspace, &[]),
            (settings(true, "default", "binder"), Userspace, &["legacy"]),
            (
                settings(true, "roundrobin", "default"),
                Userspace,
                &["available: default"],
            ),
            (
                settings(true, "redundant", "binder"),
                InKernel,
                &["available: default", "legacy"],
            ),
        ];
        for (s, mode, expected) in cases {
            let found = limitations(s, &k, *mode);
            assert_eq!(found.len(), expected.len(), "{s:?} {mode:?}: {found:?}");
            for (limitation, needle) in found.iter().zip(*expected) {
                assert!(limitation.to_string().contains(needle), "{limitation}");
            }
        }
    }

    #[test]
    fn userspace_namespace_without_a_userspace_daemon() {
        use PmMode::{InKernel, Userspace};
        let mut k = upstream(&["default"]);
        k.path_manager = Some("userspace".into());
        let cases: &[(Settings, PmMode, &[&str])] = &[
            (
                settings(true, "default", "default"),
                InKernel,
                &["no subflows will be created"],
            ),
            (settings(true, "default", "default"), Userspace, &[]),
            (settings(false, "default", "default"), InKernel, &[]),
            (
                settings(true, "default", "fullmesh"),
                InKernel,
                &["--path-manager userspace", "no subflows will be created"],
            ),
            (settings(true, "default", "fullmesh"), Userspace, &[]),
        ];
        for (s, mode, expected) in cases {
            let found = limitations(s, &k, *mode);
            assert_eq!(found.len(), expected.len(), "{s:?} {mode:?}: {found:?}");
            for (limitation, needle) in found.iter().zip(*expected) {
                assert!(limitation.to_string().contains(needle), "{limitation}");
                assert!(!limitation.is_refusal(), "{limitation}");
            }
        }
        // The kernel's own path manager: nothing to report.
        k.path_manager = Some("kernel".into());
        assert!(limitations(&settings(true, "default", "default"), &k, InKernel).is_empty());
    }

    #[test]
    fn refusals_are_binder_and_unavailable_schedulers_only() {
        let k = upstream(&["default"]);
        let refused = |s: Settings| {
            limitations(&s, &k, PmMode::InKernel)
                .iter()
                .any(Limitation::is_refusal)
        };
        assert!(refused(settings(true, "default", "binder")));
        assert!(refused(settings(true, "redundant", "default")));
        assert!(!refused(settings(true, "default", "fullmesh")));
        assert!(!refused(settings(false, "redundant", "binder")));
    }

    #[test]
    fn available_but_not_the_namespace_scheduler() {
        let k = upstream(&["default", "redundant"]);
        let found = limitations(
            &settings(true, "redundant", "default"),
            &k,
            PmMode::Userspace,
        );
        assert!(matches!(
            found.as_slice(),
            [Limitation::SchedulerPerNamespace { .. }]
        ));
        assert!(!found[0].is_refusal());
    }

    #[test]
    fn legacy_kernel_does_everything_and_no_mptcp_does_nothing() {
        let mut k = upstream(&[]);
        k.flavour = Flavour::Legacy;
        assert!(
            limitations(&settings(true, "redundant", "binder"), &k, PmMode::InKernel).is_empty()
        );
        k.flavour = Flavour::None;
        k.enabled = false;
        let found = limitations(&settings(true, "default", "default"), &k, PmMode::InKernel);
        assert!(found[0].to_string().contains("no MPTCP"), "{found:?}");
    }
}
