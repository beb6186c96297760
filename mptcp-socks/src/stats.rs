//! Cheap counters for observability.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mptcp_policy::Transport;

/// Connection counters shared between the server and whoever wants to read them.
///
/// Cloning gives another handle to the same counters.
#[derive(Debug, Clone, Default)]
pub struct Stats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    active: AtomicU64,
    failed: AtomicU64,
    mptcp: AtomicU64,
    fallback: AtomicU64,
    tcp: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Client connections accepted since start.
    pub accepted: u64,
    /// Client connections currently open.
    pub active: u64,
    /// Requests that ended without an outbound connection (handshake, resolve or connect).
    pub failed: u64,
    /// Outbound connections that ended up as MPTCP.
    pub mptcp: u64,
    /// Outbound connections opened as MPTCP that fell back to TCP.
    pub fallback: u64,
    /// Outbound connections opened as plain TCP.
    pub tcp: u64,
}

impl Stats {
    /// Reads all counters (each individually atomic, not as a group).
    #[must_use]
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.0;
        StatsSnapshot {
            accepted: c.accepted.load(Ordering::Relaxed),
            active: c.active.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            mptcp: c.mptcp.load(Ordering::Relaxed),
            fallback: c.fallback.load(Ordering::Relaxed),
            tcp: c.tcp.load(Ordering::Relaxed),
        }
    }

    /// Counts an accepted client; the returned guard keeps it counted as active.
    pub(crate) fn accepted(&self) -> ActiveGuard {
        self.0.accepted.fetch_add(1, Ordering::Relaxed);
        self.0.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    pub(crate) fn failed(&self) {
        self.0.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connected(&self, transport: Transport) {
        let counter = match transport {
            Transport::Mptcp => &self.0.mptcp,
            Transport::Fallback => &self.0.fallback,
            Transport::Tcp => &self.0.tcp,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Decrements the active count when the connection's task ends, however it ends
/// (including being aborted after the shutdown grace period).
#[derive(Debug)]
pub(crate) struct ActiveGuard(Stats);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        (self.0).0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
