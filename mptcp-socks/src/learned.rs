//! What `via=auto:NAME` learned: per destination address (address and port), whether it
//! answers MPTCP directly. The first connection goes through the upstream while a probe
//! (one MPTCP connect, closed at once) finds out; later ones go direct where the answer
//! was yes, until it is older than the configured time.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use mptcp_policy::{Settings, Transport};

use crate::connect::attempt;

/// At most this many addresses are remembered; beyond it the oldest answers go first.
const CAPACITY: usize = 16_384;

/// One learned answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LearnedAddress {
    /// The destination address and port.
    pub addr: SocketAddr,
    /// Whether it answered MPTCP (then connections go direct).
    pub mptcp: bool,
    /// When it was learned.
    pub learned_at: SystemTime,
    /// How long it stays valid.
    pub expires_in: Duration,
}

/// The answers `auto:NAME` rules learned, shared by all connections of a server.
#[derive(Debug)]
pub struct Learned {
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    answers: HashMap<SocketAddr, (bool, Instant, SystemTime)>,
    probing: HashSet<SocketAddr>,
}

impl Learned {
    pub(crate) fn new(ttl: Duration) -> Learned {
        Learned {
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer for `addr` while it is fresh.
    pub(crate) fn verdict(&self, addr: SocketAddr) -> Option<bool> {
        let inner = self.inner();
        let (mptcp, at, _) = inner.answers.get(&addr)?;
        (at.elapsed() < self.ttl).then_some(*mptcp)
    }

    /// Records an answer.
    pub(crate) fn record(&self, addr: SocketAddr, mptcp: bool) {
        let mut inner = self.inner();
        if inner.answers.len() >= CAPACITY && !inner.answers.contains_key(&addr) {
            let ttl = self.ttl;
            inner.answers.retain(|_, (_, at, _)| at.elapsed() < ttl);
            if inner.answers.len() >= CAPACITY
                && let Some(oldest) = inner
                    .answers
                    .iter()
                    .min_by_key(|(_, (_, at, _))| *at)
                    .map(|(addr, _)| *addr)
            {
                inner.answers.remove(&oldest);
            }
        }
        inner
            .answers
            .insert(addr, (mptcp, Instant::now(), SystemTime::now()));
    }

    /// Starts a background probe of `addr` unless one is running. Runs on the current
    /// Tokio runtime; bounded by `timeout`.
    pub(crate) fn probe(self: &Arc<Self>, addr: SocketAddr, settings: Settings, timeout: Duration) {
        if !self.inner().probing.insert(addr) {
            return;
        }
        let learned = Arc::clone(self);
        tokio::spawn(async move {
            let settings = Settings {
                mptcp: true,
                ..settings
            };
            let mptcp = match attempt(addr, &settings, None, timeout).await {
                Ok((stream, opened)) => {
                    mptcp_policy::transport(&stream, opened) == Transport::Mptcp
                }
                Err(err) => {
                    tracing::debug!(%addr, error = %err, "MPTCP probe failed");
                    false
                }
            };
            tracing::info!(%addr, mptcp, "learned whether the destination speaks MPTCP");
            learned.record(addr, mptcp);
            learned.inner().probing.remove(&addr);
        });
    }

    /// The fresh answers, by address.
    pub fn list(&self) -> Vec<LearnedAddress> {
        let inner = self.inner();
        let mut list: Vec<LearnedAddress> = inner
            .answers
            .iter()
            .filter_map(|(addr, (mptcp, at, when))| {
                let expires_in = self.ttl.checked_sub(at.elapsed())?;
                Some(LearnedAddress {
                    addr: *addr,
                    mptcp: *mptcp,
                    learned_at: *when,
                    expires_in,
                })
            })
            .collect();
        list.sort_by_key(|l| l.addr);
        list
    }

    /// Forgets everything learned, so the next connections probe again.
    pub fn forget(&self) {
        self.inner().answers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_the_oldest_goes_when_full() {
        let addr: SocketAddr = "192.0.2.1:443".parse().expect("addr");
        let learned = Learned::new(Duration::from_secs(3600));
        assert_eq!(learned.verdict(addr), None);
        learned.record(addr, true);
        assert_eq!(learned.verdict(addr), Some(true));
        assert_eq!(learned.list().len(), 1);
        learned.forget();
        assert_eq!(learned.verdict(addr), None);

        let expired = Learned::new(Duration::ZERO);
        expired.record(addr, true);
        assert_eq!(expired.verdict(addr), None);
        assert!(expired.list().is_empty());

        let full = Learned::new(Duration::from_secs(3600));
        for port in 1..=u16::try_from(CAPACITY).expect("fits") {
            full.record(SocketAddr::new(addr.ip(), port), false);
        }
        full.record(SocketAddr::new(addr.ip(), 0), true);
        assert_eq!(full.inner().answers.len(), CAPACITY);
        assert_eq!(full.verdict(SocketAddr::new(addr.ip(), 0)), Some(true));
    }
}
