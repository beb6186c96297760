//! Who may use the proxy, how much of it one client may take, and which destinations are
//! off limits: the defaults that keep a LAN proxy from being a way into the box itself,
//! an open proxy for the internet, or a file-descriptor sink for one client.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Clients from these ranges may use a proxy without authentication by default:
/// loopback, RFC 1918 private, link-local, and IPv6 unique local (fc00::/7).
pub(crate) fn is_local_network(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
    }
}

/// Addresses that reach this host or its link whatever its interfaces say: loopback,
/// "this network" (0.0.0.0/8: Linux connects 0.0.0.0 to the host itself), `::`,
/// link-local, and the IPv4 broadcast address.
pub(crate) fn is_always_protected(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.octets()[0] == 0 || v4.is_link_local() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || v6.is_unicast_link_local(),
    }
}

/// How long the host's address list is trusted before it is read again.
const HOST_ADDRESSES_TTL: Duration = Duration::from_secs(1);

/// The host's own addresses, read again at most once per [`HOST_ADDRESSES_TTL`], so a
/// new DHCP lease is protected within a second while a connection burst costs one
/// `getifaddrs` per second.
#[derive(Debug, Default)]
pub(crate) struct HostAddresses {
    cache: Mutex<Option<(Instant, Arc<Vec<IpAddr>>)>>,
}

impl HostAddresses {
    /// Whether `ip` is this host (loopback, unspecified, any interface's address) or
    /// link-local. When the address list cannot be read, every address counts as
    /// protected for that second: better refuse than open the box.
    pub(crate) fn is_protected(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if is_always_protected(ip) {
            return true;
        }
        match self.current() {
            Some(addrs) => addrs.contains(&ip),
            None => true,
        }
    }

    fn current(&self) -> Option<Arc<Vec<IpAddr>>> {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((read, addrs)) = &*cache
            && now.duration_since(*read) < HOST_ADDRESSES_TTL
        {
            return Some(Arc::clone(addrs));
        }
        match mptcp_policy::local_addresses() {
            Ok(list) => {
                let addrs = Arc::new(list.into_iter().map(|a| a.to_canonical()).collect());
                *cache = Some((now, Arc::clone(&addrs)));
                Some(addrs)
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot list this host's addresses");
                None
            }
        }
    }
}

/// Connections are counted per client address; IPv6 clients per /64, since one host
/// commonly holds a whole /64 and could otherwise take a new address per connection.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Which limit a new connection ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitHit {
    /// The proxy holds its maximum of client connections.
    Total(usize),
    /// This client (address, or IPv6 /64) holds its maximum.
    PerClient(usize),
}

/// Open client connections, in all and per client.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    max_total: usize,
    max_per_client: usize,
    /// Open connections in all, and per [`client_key`] (entries removed at zero).
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl ConnectionLimits {
    pub(crate) fn new(max_total: usize, max_per_client: usize) -> Self {
        ConnectionLimits {
            max_total,
            max_per_client,
            open: Mutex::new((0, HashMap::new())),
        }
    }

    /// Counts a new connection from `ip` until the returned slot drops.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, LimitHit> {
        let key = client_key(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.0 >= self.max_total {
            return Err(LimitHit::Total(self.max_total));
        }
        let mine = open.1.entry(key).or_insert(0);
        if *mine >= self.max_per_client {
            return Err(LimitHit::PerClient(self.max_per_client));
        }
        *mine += 1;
        open.0 += 1;
        Ok(Slot {
            limits: Arc::clone(self),
            key,
        })
    }
}

/// One counted connection.
#[derive(Debug)]
pub(crate) struct Slot {
    limits: Arc<ConnectionLimits>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.0 = open.0.saturating_sub(1);
        if let Some(mine) = open.1.get_mut(&self.key) {
            *mine -= 1;
            if *mine == 0 {
                open.1.remove(&self.key);
            }
        }
    }
}

/// The delay after the first failed password; it doubles with each further failure.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest delay between two password attempts of one client.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Clients tracked at most; beyond that, the stalest are dropped first.
const MAX_TRACKED: usize = 10_000;
/// One summary line per client at most this often.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Failures {
    /// Failed attempts since the last success (or since they were forgotten).
    count: u32,
    last: Instant,
    /// The earliest time the next attempt of this client is checked. Each attempt
    /// reserves its turn, so parallel connections queue instead of guessing at once.
    next_turn: Instant,
    /// Failures not yet reported in a log line, and when the last line went out.
    unreported: u32,
    reported: Option<Instant>,
}

/// What a summary line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailureSummary {
    /// Failures since the last summary line of this client.
    pub(crate) new: u32,
    /// Failures in a row from this client.
    pub(crate) in_a_row: u32,
    /// How long its next attempt will wait.
    pub(crate) next_delay: Duration,
}

/// Failed password attempts per client, slowing each client down as it keeps failing.
#[derive(Debug, Default)]
pub(crate) struct AuthFailures {
    clients: Mutex<HashMap<IpAddr, Failures>>,
}

fn delay_after(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    FIRST_DELAY
        .saturating_mul(1 << (failures - 1).min(16))
        .min(MAX_DELAY)
}

impl AuthFailures {
    /// How long this client's next attempt must wait; reserves its turn.
    pub(crate) fn wait_before_attempt(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = clients.get_mut(&client_key(ip)) else {
            return Duration::ZERO;
        };
        if now.duration_since(entry.last) > FORGET_AFTER {
            clients.remove(&client_key(ip));
            return Duration::ZERO;
        }
        let turn = entry.next_turn.max(now);
        entry.next_turn = turn + delay_after(entry.count);
        turn - now
    }

    /// Records a failure; returns a summary when a log line is due (the first failure,
    /// then at most once per [`SUMMARY_EVERY`] per client).
    pub(crate) fn failed(&self, ip: IpAddr) -> Option<FailureSummary> {
        let now = Instant::now();
        let key = client_key(ip);
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.len() >= MAX_TRACKED && !clients.contains_key(&key) {
            clients.retain(|_, f| now.duration_since(f.last) <= FORGET_AFTER);
            if clients.len() >= MAX_TRACKED
                && let Some(stalest) = clients.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| *k)
            {
                clients.remove(&stalest);
            }
        }
        let entry = clients.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            next_turn: now,
            unreported: 0,
            reported: None,
        });
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        entry.unreported += 1;
        entry.next_turn = entry.next_turn.max(now + delay_after(entry.count));
        let due = entry
            .reported
            .is_none_or(|at| now.duration_since(at) >= SUMMARY_EVERY);
        due.then(|| {
            let summary = FailureSummary {
                new: entry.unreported,
                in_a_row: entry.count,
                next_delay: delay_after(entry.count),
            };
            entry.unreported = 0;
            entry.reported = Some(now);
            summary
        })
    }

    /// A success clears the client's record.
    pub(crate) fn succeeded(&self, ip: IpAddr) {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&client_key(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn local_network_clients() {
        let table = [
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("172.32.0.1", false),
            ("192.168.1.20", true),
            ("169.254.1.1", true),
            ("::1", true),
            ("fd12::1", true),
            ("fe80::1", true),
            ("::ffff:192.168.1.2", true),
            ("100.64.0.1", false),
            ("8.8.8.8", false),
            ("2001:db8::1", false),
            ("::ffff:8.8.8.8", false),
        ];
        for (addr, local) in table {
            assert_eq!(is_local_network(ip(addr)), local, "{addr}");
        }
    }

    #[test]
    fn protected_destinations() {
        let table = [
            ("127.0.0.1", true),
            ("127.8.9.10", true),
            ("0.0.0.0", true),
            ("0.1.2.3", true),
            ("::", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:0.0.0.0", true),
            ("169.254.169.254", true),
            ("fe80::1", true),
            ("255.255.255.255", true),
            ("192.0.2.1", false),
            ("10.0.0.1", false),
            ("2001:db8::1", false),
        ];
        for (addr, protected) in table {
            assert_eq!(is_always_protected(ip(addr)), protected, "{addr}");
        }
        // The host's own addresses come from its interfaces: loopback at least.
        let host = HostAddresses::default();
        assert!(host.is_protected(ip("127.0.0.1")));
        assert!(!host.is_protected(ip("192.0.2.1")));
    }

    #[test]
    fn limits_count_per_client_and_in_all() {
        let limits = Arc::new(ConnectionLimits::new(3, 2));
        let a1 = limits.admit(ip("10.0.0.1")).unwrap();
        let _a2 = limits.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(
            limits.admit(ip("10.0.0.1")).unwrap_err(),
            LimitHit::PerClient(2)
        );
        let _b1 = limits.admit(ip("2001:db8::1")).unwrap();
        assert_eq!(
            limits.admit(ip("10.0.0.2")).unwrap_err(),
            LimitHit::Total(3)
        );
        drop(a1);
        let _a3 = limits.admit(ip("10.0.0.1")).unwrap();
        // The same /64 counts as one client.
        let v6 = Arc::new(ConnectionLimits::new(10, 2));
        let _c1 = v6.admit(ip("2001:db8::1")).unwrap();
        let _c2 = v6.admit(ip("2001:db8::2")).unwrap();
        assert_eq!(
            v6.admit(ip("2001:db8::3")).unwrap_err(),
            LimitHit::PerClient(2)
        );
        assert!(v6.admit(ip("2001:db8:0:1::1")).is_ok());
    }

    #[test]
    fn failed_passwords_slow_the_client_down() {
        let failures = AuthFailures::default();
        let client = ip("192.0.2.7");
        assert_eq!(failures.wait_before_attempt(client), Duration::ZERO);
        let first = failures
            .failed(client)
            .expect("the first failure is reported");
        assert_eq!((first.new, first.in_a_row), (1, 1));
        assert!(
            failures.failed(client).is_none(),
            "summaries are rate-limited"
        );
        // Two failures: the next attempt waits, and a parallel one waits longer still.
        let w1 = failures.wait_before_attempt(client);
        let w2 = failures.wait_before_attempt(client);
        assert!(w1 > Duration::ZERO && w2 > w1, "{w1:?} {w2:?}");
        assert_eq!(
            failures.wait_before_attempt(ip("192.0.2.8")),
            Duration::ZERO
        );
        failures.succeeded(client);
        assert_eq!(failures.wait_before_attempt(client), Duration::ZERO);
        assert_eq!(delay_after(1), FIRST_DELAY);
        assert_eq!(delay_after(2), FIRST_DELAY * 2);
        assert_eq!(delay_after(40), MAX_DELAY);
    }
}
