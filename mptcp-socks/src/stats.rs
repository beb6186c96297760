//! Cheap counters for observability.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mptcp_policy::{SubflowInfo, Transport};

use crate::socks5::Reply;

/// Upper bounds (seconds) of the connect-latency buckets: from a LAN's milliseconds to
/// the connect timeout.
pub const CONNECT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

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
    /// Failures by reply code (index = the code, 0 unused).
    failed_by_reply: [AtomicU64; 9],
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    subflows_created: AtomicU64,
    subflows_lost: AtomicU64,
    subflows_recreated: AtomicU64,
    /// Per bucket of [`CONNECT_BUCKETS`] (not cumulative), then the overflow.
    connect_buckets: [AtomicU64; CONNECT_BUCKETS.len() + 1],
    connect_micros: AtomicU64,
    /// What the subflows of closed connections carried, by local address: (sent and
    /// acknowledged, received). As many keys as the host has addresses.
    uplinks: Mutex<HashMap<IpAddr, (u64, u64)>>,
    /// Connections by route: `direct` or an upstream's name (as many as configured).
    via: Mutex<HashMap<String, u64>>,
}

/// The connect-latency histogram: cumulative counts per bucket of [`CONNECT_BUCKETS`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LatencySnapshot {
    /// `(upper bound in seconds, connects that took at most that long)`, then
    /// `(f64::INFINITY, all)`.
    pub buckets: Vec<(f64, u64)>,
    /// All connect times added up, in seconds.
    pub sum_seconds: f64,
    /// Connects measured.
    pub count: u64,
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
    /// Bytes relayed from clients towards their destinations.
    pub bytes_up: u64,
    /// Bytes relayed from destinations back to clients.
    pub bytes_down: u64,
    /// Subflows the relayed MPTCP connections had, beyond their first (sampled every
    /// second, and at the end).
    pub subflows_created: u64,
    /// Subflows that went away while their connection went on (a link down).
    pub subflows_lost: u64,
    /// Subflows that came back from a local address whose subflow had been lost.
    pub subflows_recreated: u64,
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
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
            subflows_created: c.subflows_created.load(Ordering::Relaxed),
            subflows_lost: c.subflows_lost.load(Ordering::Relaxed),
            subflows_recreated: c.subflows_recreated.load(Ordering::Relaxed),
        }
    }

    /// Requests that failed, by the reply code they got (or would have got).
    #[must_use]
    pub fn failed_by_reply(&self) -> Vec<(Reply, u64)> {
        (1u8..=8)
            .map(|code| {
                let count = self.0.failed_by_reply[usize::from(code)].load(Ordering::Relaxed);
                (Reply::from_u8(code), count)
            })
            .collect()
    }

    /// The connect-latency histogram.
    #[must_use]
    pub fn connect_latency(&self) -> LatencySnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(CONNECT_BUCKETS.len() + 1);
        let bounds = CONNECT_BUCKETS.iter().copied().chain([f64::INFINITY]);
        for (bound, count) in bounds.zip(&self.0.connect_buckets) {
            cumulative += count.load(Ordering::Relaxed);
            buckets.push((bound, cumulative));
        }
        LatencySnapshot {
            buckets,
            sum_seconds: self.0.connect_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: cumulative,
        }
    }

    /// What the subflows of *closed* connections carried, by local address: (sent and
    /// acknowledged, received). Add the live ones from [`Connections::list`] for a total.
    ///
    /// [`Connections::list`]: crate::Connections::list
    #[must_use]
    pub fn closed_uplink_bytes(&self) -> Vec<(IpAddr, u64, u64)> {
        let mut all: Vec<_> = lock(&self.0.uplinks)
            .iter()
            .map(|(ip, (sent, received))| (*ip, *sent, *received))
            .collect();
        all.sort_by_key(|(ip, _, _)| *ip);
        all
    }

    /// Connections by route: `direct` or an upstream's name.
    #[must_use]
    pub fn by_via(&self) -> Vec<(String, u64)> {
        let mut all: Vec<_> = lock(&self.0.via)
            .iter()
            .map(|(via, n)| (via.clone(), *n))
            .collect();
        all.sort();
        all
    }

    pub(crate) fn failed_with(&self, reply: Reply) {
        self.0.failed.fetch_add(1, Ordering::Relaxed);
        if let Some(counter) = self.0.failed_by_reply.get(usize::from(reply.as_u8())) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn connect_took(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = CONNECT_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(CONNECT_BUCKETS.len());
        self.0.connect_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.0.connect_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn routed(&self, via: &str) {
        let mut counts = lock(&self.0.via);
        // No allocation per connection: only a route seen for the first time is stored.
        match counts.get_mut(via) {
            Some(n) => *n += 1,
            None => {
                counts.insert(via.to_owned(), 1);
            }
        }
    }

    pub(crate) fn relayed(&self, upstream: bool, bytes: u64) {
        let counter = if upstream {
            &self.0.bytes_up
        } else {
            &self.0.bytes_down
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A closed connection's subflows: what each carried, and how many came and went.
    pub(crate) fn subflows_closed(&self, subflows: &[SubflowInfo], lost: u64, recreated: u64) {
        let c = &self.0;
        let extra = (subflows.len() as u64).saturating_sub(1);
        c.subflows_created.fetch_add(extra, Ordering::Relaxed);
        c.subflows_lost.fetch_add(lost, Ordering::Relaxed);
        c.subflows_recreated.fetch_add(recreated, Ordering::Relaxed);
        let mut uplinks = lock(&c.uplinks);
        for subflow in subflows {
            let entry = uplinks.entry(subflow.local.ip()).or_default();
            entry.0 += subflow.bytes_acked;
            entry.1 += subflow.bytes_received;
        }
    }

    /// Counts an accepted client; the returned guard keeps it counted as active.
    pub(crate) fn accepted(&self) -> ActiveGuard {
        self.0.accepted.fetch_add(1, Ordering::Relaxed);
        self.0.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_ends_with_everything() {
        let stats = Stats::default();
        for ms in [0, 3, 3, 40, 20_000] {
            stats.connect_took(Duration::from_millis(ms));
        }
        let h = stats.connect_latency();
        assert_eq!(h.count, 5);
        let at = |bound: f64| h.buckets.iter().find(|(b, _)| *b == bound).map(|(_, n)| *n);
        assert_eq!(at(0.001), Some(1));
        assert_eq!(at(0.005), Some(3));
        assert_eq!(at(0.05), Some(4));
        assert_eq!(at(10.0), Some(4));
        assert_eq!(h.buckets.last(), Some(&(f64::INFINITY, 5)));
        assert!((h.sum_seconds - 20.046).abs() < 1e-9, "{}", h.sum_seconds);
        stats.failed_with(Reply::ConnectionRefused);
        assert!(
            stats
                .failed_by_reply()
                .contains(&(Reply::ConnectionRefused, 1))
        );
        assert_eq!(stats.snapshot().failed, 1);
    }
}
