//! What the running kernel offers for MPTCP, read from `/proc/sys/net/mptcp`.

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use crate::error::Field;
use crate::keyword::keyword_enum;

keyword_enum! {
    /// Which MPTCP implementation the kernel has.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum Flavour: Field::Flavour {
        /// Upstream Linux MPTCP (5.6+): `IPPROTO_MPTCP`, per-namespace scheduler and path
        /// manager.
        Upstream = "upstream",
        /// The out-of-tree multipath-tcp.org kernel: per-socket options on TCP sockets.
        Legacy = "legacy",
        /// No MPTCP at all: every connection is plain TCP.
        None = "none",
    }
}

/// The kernel's MPTCP capabilities, as far as sysctls tell them.
///
/// The sysctls are per network namespace: probe from the namespace the sockets will be
/// opened in.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KernelSupport {
    /// Which implementation.
    pub flavour: Flavour,
    /// Whether MPTCP sockets may be opened (`net.mptcp.enabled` or `mptcp_enabled`).
    pub enabled: bool,
    /// The scheduler in use for the namespace (upstream) or by default (legacy).
    pub scheduler: Option<String>,
    /// Schedulers the kernel offers (`net.mptcp.available_schedulers`; upstream kernels
    /// before 6.6 have only the built-in `default`).
    pub available_schedulers: Vec<String>,
    /// The path manager: upstream `kernel` or `userspace`, legacy `fullmesh`,
    /// `ndiffports`, ...
    pub path_manager: Option<String>,
}

impl KernelSupport {
    /// Probes `/proc/sys/net/mptcp`.
    pub fn probe() -> KernelSupport {
        KernelSupport::probe_at(Path::new("/proc/sys/net/mptcp"))
    }

    /// The result of [`KernelSupport::probe`] taken once per process, for hot paths.
    pub fn cached() -> &'static KernelSupport {
        static CACHE: OnceLock<KernelSupport> = OnceLock::new();
        CACHE.get_or_init(KernelSupport::probe)
    }

    /// Probes a directory laid out like `/proc/sys/net/mptcp` (tests use a copy).
    pub fn probe_at(dir: &Path) -> KernelSupport {
        let read = |name: &str| {
            fs::read_to_string(dir.join(name))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        if let Some(enabled) = read("enabled") {
            let path_manager = read("path_manager").or_else(|| {
                read("pm_type").map(|t| match t.as_str() {
                    "0" => "kernel".to_owned(),
                    "1" => "userspace".to_owned(),
                    other => other.to_owned(),
                })
            });
            let available_schedulers = read("available_schedulers")
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_else(|| vec!["default".to_owned()]);
            return KernelSupport {
                flavour: Flavour::Upstream,
                enabled: enabled != "0",
                scheduler: read("scheduler").or_else(|| Some("default".to_owned())),
                available_schedulers,
                path_manager,
            };
        }
        if let Some(enabled) = read("mptcp_enabled") {
            let scheduler = read("mptcp_scheduler");
            return KernelSupport {
                flavour: Flavour::Legacy,
                enabled: enabled != "0",
                available_schedulers: scheduler.iter().cloned().collect(),
                scheduler,
                path_manager: read("mptcp_path_manager"),
            };
        }
        KernelSupport {
            flavour: Flavour::None,
            enabled: false,
            scheduler: None,
            available_schedulers: Vec::new(),
            path_manager: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mptcp-probe-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for (name, content) in files {
            fs::write(dir.join(name), content).unwrap();
        }
        dir
    }

    #[test]
    fn upstream_kernel() {
        let dir = dir_with(&[
            ("enabled", "1\n"),
            ("path_manager", "userspace\n"),
            ("available_schedulers", "default bpf_rr\n"),
            ("scheduler", "default\n"),
        ]);
        let k = KernelSupport::probe_at(&dir);
        assert_eq!(k.flavour, Flavour::Upstream);
        assert!(k.enabled);
        assert_eq!(k.path_manager.as_deref(), Some("userspace"));
        assert_eq!(k.available_schedulers, ["default", "bpf_rr"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn older_upstream_kernel_with_pm_type_and_mptcp_off() {
        let dir = dir_with(&[("enabled", "0\n"), ("pm_type", "0\n")]);
        let k = KernelSupport::probe_at(&dir);
        assert_eq!(k.flavour, Flavour::Upstream);
        assert!(!k.enabled);
        assert_eq!(k.path_manager.as_deref(), Some("kernel"));
        assert_eq!(k.available_schedulers, ["default"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn legacy_kernel_from_the_seed() {
        let dir = dir_with(&[
            ("mptcp_enabled", "2\n"),
            ("mptcp_path_manager", "fullmesh\n"),
            ("mptcp_scheduler", "default\n"),
        ]);
        let k = KernelSupport::probe_at(&dir);
        assert_eq!(k.flavour, Flavour::Legacy);
        assert!(k.enabled);
        assert_eq!(k.path_manager.as_deref(), Some("fullmesh"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_mptcp() {
        let dir = dir_with(&[]);
        assert_eq!(KernelSupport::probe_at(&dir).flavour, Flavour::None);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn this_machine_is_probed() {
        let k = KernelSupport::probe();
        let upstream = Path::new("/proc/sys/net/mptcp/enabled").exists();
        assert_eq!(k.flavour == Flavour::Upstream, upstream, "{k:?}");
        if upstream {
            assert!(
                k.available_schedulers.iter().any(|s| s == "default"),
                "{k:?}"
            );
        }
    }
}
