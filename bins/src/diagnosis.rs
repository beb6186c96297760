//! What an operator should know about the kernel the daemon runs on: one diagnosis, which
//! the daemon logs at start-up and `GET /capabilities` lists as its `notes`.

use std::fmt;

use mptcp_policy::{Flavour, KernelSupport, PmMode};

/// How much a [`Note`] matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Severity {
    /// What the host offers, for the record: nothing to do.
    Info,
    /// Rules will not take effect as written until the operator acts; the message names
    /// the fix.
    Warning,
}

/// One finding of [`kernel_notes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Whether the operator has to act.
    pub severity: Severity,
    /// The finding, with the fix where there is one.
    pub message: String,
}

impl Note {
    fn info(message: impl Into<String>) -> Self {
        Note {
            severity: Severity::Info,
            message: message.into(),
        }
    }

    fn warning(message: impl Into<String>) -> Self {
        Note {
            severity: Severity::Warning,
            message: message.into(),
        }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The diagnosis of `kernel` for a daemon running the path manager `mode`: first what
/// MPTCP the kernel has (a warning when connections will be plain TCP), then whether the
/// namespace's path manager matches `mode`. The warnings are what `GET /capabilities`
/// answers as `notes`.
///
/// Judge the namespace after the daemon has set it up: before `mptcp-socksd --path-manager
/// userspace` switches `net.mptcp.path_manager`, the mismatch is expected.
pub fn kernel_notes(kernel: &KernelSupport, mode: PmMode) -> Vec<Note> {
    let mut notes = Vec::new();
    notes.push(match (kernel.flavour, kernel.enabled) {
        (Flavour::Upstream, true) => Note::info(format!(
            "kernel has upstream MPTCP (path manager {}; schedulers: {})",
            kernel.path_manager.as_deref().unwrap_or("?"),
            kernel.available_schedulers.join(" ")
        )),
        (Flavour::Legacy, true) => {
            Note::info("kernel has the legacy multipath-tcp.org MPTCP: per-socket options")
        }
        (Flavour::Upstream | Flavour::Legacy, false) => Note::warning(
            "MPTCP is disabled in this network namespace: every connection is plain TCP \
             (sysctl -w net.mptcp.enabled=1)",
        ),
        _ => Note::warning(
            "this kernel has no MPTCP: every connection is plain TCP (Linux 5.6+ with \
             CONFIG_MPTCP)",
        ),
    });
    if kernel.flavour == Flavour::Upstream
        && mode == PmMode::Userspace
        && kernel.path_manager.as_deref() != Some("userspace")
    {
        notes.push(Note::warning(format!(
            "the daemon runs the userspace path manager but the namespace's is {} \
             (sysctl -w net.mptcp.path_manager=userspace)",
            kernel.path_manager.as_deref().unwrap_or("unknown")
        )));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(flavour: Flavour, enabled: bool, path_manager: Option<&str>) -> KernelSupport {
        // `KernelSupport` is non-exhaustive: start from this host's and set every field.
        let mut kernel = KernelSupport::probe();
        kernel.flavour = flavour;
        kernel.enabled = enabled;
        kernel.scheduler = Some("default".into());
        kernel.available_schedulers = vec!["default".into()];
        kernel.path_manager = path_manager.map(str::to_owned);
        kernel
    }

    #[test]
    fn notes_by_kernel_and_mode() {
        use Severity::{Info, Warning};
        for (kernel, mode, expected) in [
            (
                kernel(Flavour::Upstream, true, Some("kernel")),
                PmMode::InKernel,
                vec![(
                    Info,
                    "kernel has upstream MPTCP (path manager kernel; schedulers: default)",
                )],
            ),
            (
                kernel(Flavour::Upstream, true, Some("kernel")),
                PmMode::Userspace,
                vec![
                    (
                        Info,
                        "kernel has upstream MPTCP (path manager kernel; schedulers: default)",
                    ),
                    (
                        Warning,
                        "the daemon runs the userspace path manager but the namespace's is kernel (sysctl -w net.mptcp.path_manager=userspace)",
                    ),
                ],
            ),
            (
                kernel(Flavour::Upstream, true, Some("userspace")),
                PmMode::Userspace,
                vec![(
                    Info,
                    "kernel has upstream MPTCP (path manager userspace; schedulers: default)",
                )],
            ),
            (
                kernel(Flavour::Legacy, true, Some("fullmesh")),
                PmMode::Userspace,
                vec![(
                    Info,
                    "kernel has the legacy multipath-tcp.org MPTCP: per-socket options",
                )],
            ),
            (
                kernel(Flavour::Upstream, false, Some("kernel")),
                PmMode::InKernel,
                vec![(
                    Warning,
                    "MPTCP is disabled in this network namespace: every connection is plain TCP (sysctl -w net.mptcp.enabled=1)",
                )],
            ),
            (
                kernel(Flavour::None, false, None),
                PmMode::Userspace,
                vec![(
                    Warning,
                    "this kernel has no MPTCP: every connection is plain TCP (Linux 5.6+ with CONFIG_MPTCP)",
                )],
            ),
        ] {
            let found: Vec<(Severity, String)> = kernel_notes(&kernel, mode)
                .into_iter()
                .map(|note| (note.severity, note.message))
                .collect();
            let expected: Vec<(Severity, String)> = expected
                .into_iter()
                .map(|(severity, message)| (severity, message.to_owned()))
                .collect();
            assert_eq!(found, expected, "{kernel:?} {mode:?}");
        }
    }
}
