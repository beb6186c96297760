//! A three-namespace test topology with two rate-limited paths, for end-to-end tests
//! against the real kernel (Linux with MPTCP built in, run as root).
//!
//! ```text
//!   client ns               proxy ns                             server ns
//!   veth-p 10.X.0.2 ──── veth-c 10.X.0.1
//!                        path-a 10.X.1.1 ══ tbf 20 Mbit/s ══ path-a 10.X.1.2
//!                        path-b 10.X.2.1 ══ tbf 20 Mbit/s ══ path-b 10.X.2.2
//! ```
//!
//! - Both paths are shaped with `tbf` on the egress of *both* ends, so each direction of
//!   each path is a 20 Mbit/s bottleneck (netem is not available on the target kernel).
//! - An MPTCP connection opened in the proxy namespace towards the server's path-A address
//!   gets a second subflow over path B: the proxy has `ip mptcp endpoint add 10.X.2.1 dev
//!   path-b subflow`, and a policy-routing rule (`from 10.X.2.1 lookup 102`) makes that
//!   subflow really leave through path B even though its destination is on path A's subnet.
//!   rp_filter is off in proxy and server, since that subflow's replies arrive on the
//!   "wrong" interface from the main table's point of view.
//! - The client namespace reaches only the proxy: the proxy does not forward by default
//!   ([`Options::forwarding`]), so a client can reach the server only *through* a SOCKS
//!   proxy running in the proxy namespace, which is what the end-to-end tests must prove.
//! - Interface names are fixed (`veth-p`, `veth-c`, `path-a`, `path-b`): they live inside
//!   the namespaces, so topologies never collide on them; namespace names are unique (see
//!   [`Namespace`]). Addresses are only meaningful inside one topology.
//!
//! With [`Options::internet`], a fourth namespace stands for the internet behind the
//! server, which then plays an aggregation server (a VPS) that also routes onward:
//!
//! ```text
//!   server ns                      internet ns
//!   to-inet 10.X.3.1 ──────────── inet 10.X.3.2 .. 10.X.3.9 (no shaping)
//! ```
//!
//! The proxy reaches 10.X.3.0/24 over path A (main table) and, from path B's address,
//! over path B (table 102), so a connection from the proxy to the internet namespace is
//! shaped like one through the server, and an MPTCP one gets a subflow per path.
//!
//! One `Topology` exists at a time per test binary: [`Topology::new`] waits for the
//! previous one to be dropped, so throughput measurements never overlap on a small
//! machine. Do not build two in one test (it would wait for itself; it panics after
//! [`SERIAL_WAIT`]).

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::namespace::{Namespace, in_netns};
use super::process::NsChild;
use super::traffic::{PatternServer, Proto, Transfer, fetch_in_netns};
use crate::require_netns;

/// The client namespace's interface towards the proxy.
pub const CLIENT_IF: &str = "veth-p";
/// The proxy namespace's interface towards the client.
pub const PROXY_CLIENT_IF: &str = "veth-c";
/// Path A's interface, in the proxy and in the server namespace alike.
pub const PATH_A_IF: &str = "path-a";
/// Path B's interface, in the proxy and in the server namespace alike.
pub const PATH_B_IF: &str = "path-b";
/// The server namespace's interface towards the internet namespace.
pub const SERVER_INET_IF: &str = "to-inet";
/// The internet namespace's interface.
pub const INET_IF: &str = "inet";
/// Addresses the internet namespace has on [`INET_IF`]: 10.X.3.2 up to 10.X.3.(1 + this),
/// so that tests can give destinations different rules.
pub const INET_ADDRESSES: u8 = 8;

/// Routing table in the proxy namespace that sends path B's source address out of path B.
const PATH_B_TABLE: &str = "102";

/// `tbf` shaping, per path and direction. `burst 16kb` is ~10 full-size packets (6.5 ms at
/// 20 Mbit/s): large enough for one flow to reach ~19.2 Mbit/s (hrtimer-based tbf does not
/// need rate/HZ of burst), small enough not to inflate a multi-megabyte measurement by
/// more than ~0.2 %. `latency 20ms` bounds the queue at ~66 KB, which is plenty on a
/// near-zero-RTT veth and keeps bufferbloat out of the picture. Measured here (6.18, bbr
/// inherited from the host; 16 MiB / 8 MiB downloads): TCP 18-19.2 Mbit/s, MPTCP over both
/// paths 35-37 Mbit/s idle and 31-34 Mbit/s with the 2 cores busy (the default scheduler
/// is CPU-sensitive); burst 16kb/32kb/64kb all measured alike.
const TBF_BURST: &str = "16kb";
const TBF_LATENCY: &str = "20ms";

/// How long [`Topology::new`] waits for another test's topology before giving up.
pub const SERIAL_WAIT: Duration = Duration::from_secs(300);

/// The three namespaces of a topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ns {
    /// Where SOCKS clients run; it reaches only the proxy.
    Client,
    /// Where the proxy runs; joined to the server by both paths.
    Proxy,
    /// Where the destination servers run.
    Server,
    /// Behind the server ([`Options::internet`]).
    Internet,
}

impl Ns {
    /// All three, in the order of their index in a topology.
    pub const ALL: [Ns; 3] = [Ns::Client, Ns::Proxy, Ns::Server];

    fn role(self) -> &'static str {
        match self {
            Ns::Client => "client",
            Ns::Proxy => "proxy",
            Ns::Server => "server",
            Ns::Internet => "inet",
        }
    }
}

/// Every address of a topology (all /24s; `X` is per topology).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// Client namespace, on `veth-p` (10.X.0.2).
    pub client: Ipv4Addr,
    /// Proxy namespace, client side, on `veth-c` (10.X.0.1): where a SOCKS proxy listens.
    pub proxy_lan: Ipv4Addr,
    /// Proxy namespace, path A (10.X.1.1): the source of the initial subflow.
    pub proxy_a: Ipv4Addr,
    /// Proxy namespace, path B (10.X.2.1): the `subflow` endpoint.
    pub proxy_b: Ipv4Addr,
    /// Server namespace, path A (10.X.1.2): the address clients connect to.
    pub server_a: Ipv4Addr,
    /// Server namespace, path B (10.X.2.2).
    pub server_b: Ipv4Addr,
    /// Server namespace, towards the internet namespace (10.X.3.1).
    pub server_inet: Ipv4Addr,
    /// The internet namespace's first address (10.X.3.2); [`Addrs::internet_n`] the others.
    pub internet: Ipv4Addr,
}

impl Addrs {
    fn new(x: u8) -> Self {
        Addrs {
            client: Ipv4Addr::new(10, x, 0, 2),
            proxy_lan: Ipv4Addr::new(10, x, 0, 1),
            proxy_a: Ipv4Addr::new(10, x, 1, 1),
            proxy_b: Ipv4Addr::new(10, x, 2, 1),
            server_a: Ipv4Addr::new(10, x, 1, 2),
            server_b: Ipv4Addr::new(10, x, 2, 2),
            server_inet: Ipv4Addr::new(10, x, 3, 1),
            internet: Ipv4Addr::new(10, x, 3, 2),
        }
    }

    /// The internet namespace's `n`th address (0-based, below [`INET_ADDRESSES`]).
    ///
    /// # Panics
    /// When `n` is not below [`INET_ADDRESSES`].
    pub fn internet_n(&self, n: u8) -> Ipv4Addr {
        assert!(
            n < INET_ADDRESSES,
            "the internet namespace has {INET_ADDRESSES} addresses"
        );
        let [a, b, c, d] = self.internet.octets();
        Ipv4Addr::new(a, b, c, d + n)
    }
}

/// Knobs for [`Topology::with_options`]; `Options::default()` is what [`Topology::new`] builds.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rate of each proxy–server path in each direction, in Mbit/s (default 20).
    pub rate_mbit: u32,
    /// Add the proxy's `subflow` endpoint on path B (default true). Without it MPTCP
    /// connections stay single-path.
    pub subflow_endpoint: bool,
    /// Let the proxy namespace route between client and server (default false): then the
    /// client can reach the server directly, bypassing any SOCKS proxy.
    pub forwarding: bool,
    /// Add the internet namespace behind the server, which routes to it (default false).
    pub internet: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rate_mbit: 20,
            subflow_endpoint: true,
            forwarding: false,
            internet: false,
        }
    }
}

/// Released when a `Topology` is dropped; lets only one topology exist per test binary
/// at a time. A flag and a condvar rather than a `MutexGuard` so `Topology` stays `Send`.
#[derive(Debug)]
struct SerialPermit;

static SERIAL_BUSY: Mutex<bool> = Mutex::new(false);
static SERIAL_FREED: Condvar = Condvar::new();

impl SerialPermit {
    fn acquire() -> Self {
        let deadline = Instant::now() + SERIAL_WAIT;
        let mut busy = SERIAL_BUSY.lock().unwrap_or_else(PoisonError::into_inner);
        while *busy {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "waited {SERIAL_WAIT:?} for another Topology to be dropped; \
                 is one test building two at once?"
            );
            busy = SERIAL_FREED
                .wait_timeout(busy, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *busy = true;
        SerialPermit
    }
}

impl Drop for SerialPermit {
    fn drop(&mut self) {
        *SERIAL_BUSY.lock().unwrap_or_else(PoisonError::into_inner) = false;
        SERIAL_FREED.notify_one();
    }
}

/// The namespaces, links, shaping and MPTCP configuration described in the module docs.
/// Dropping it deletes the namespaces and their `/etc/netns` directories, also when the
/// test panics; declare it *before* anything running inside it (children, servers), so it
/// is dropped after them.
#[derive(Debug)]
pub struct Topology {
    /// Indexed by `Ns as usize`; the internet namespace only with [`Options::internet`].
    namespaces: Vec<Namespace>,
    addrs: Addrs,
    options: Options,
    // Last field: released only after the namespaces above have been deleted.
    _serial: SerialPermit,
}

/// Numbers topologies, only to vary their addresses (see [`Topology::with_options`]).
static TOPOLOGY_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// Skips-or-fails per [`require_netns`], then builds a default topology; panics if
    /// building fails on a machine that has the capabilities. Typical use:
    /// `let Some(topo) = Topology::new_or_skip() else { return };`
    pub fn new_or_skip() -> Option<Self> {
        if !require_netns() {
            return None;
        }
        Some(Topology::new().expect("building the network-namespace topology"))
    }

    /// Builds the default topology (two 20 Mbit/s paths, subflow endpoint, no forwarding).
    ///
    /// # Errors
    /// Any `ip`/`tc` command failing (its stderr is in the error); everything created so far
    /// is removed again.
    pub fn new() -> anyhow::Result<Self> {
        Topology::with_options(Options::default())
    }

    /// Builds a topology with the given [`Options`].
    ///
    /// # Errors
    /// As [`Topology::new`].
    pub fn with_options(options: Options) -> anyhow::Result<Self> {
        let serial = SerialPermit::acquire();
        let n = TOPOLOGY_COUNTER.fetch_add(1, Ordering::Relaxed);
        // On error the namespaces created so far are dropped, which deletes them.
        let mut namespaces = Vec::with_capacity(4);
        for ns in Ns::ALL {
            namespaces.push(Namespace::new(ns.role())?);
        }
        if options.internet {
            namespaces.push(Namespace::new(Ns::Internet.role())?);
        }
        let topo = Topology {
            namespaces,
            // Second octet varies only to make captures and logs easier to tell apart.
            addrs: Addrs::new(100 + (n % 100) as u8),
            options,
            _serial: serial,
        };
        topo.build()?;
        Ok(topo)
    }

    fn build(&self) -> anyhow::Result<()> {
        let a = self.addrs;
        let [client, proxy, server] =
            [Ns::Client, Ns::Proxy, Ns::Server].map(|ns| self.namespace(ns));
        // Sysctls first: interfaces created afterwards inherit `conf.default.*`.
        let forwarding = if self.options.forwarding { "1" } else { "0" };
        for ns in Ns::ALL {
            let mut settings = vec![
                ("net/mptcp/enabled", "1"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
            ];
            if ns == Ns::Proxy {
                settings.push(("net/ipv4/ip_forward", forwarding));
            }
            if ns == Ns::Server && self.options.internet {
                settings.push(("net/ipv4/ip_forward", "1"));
            }
            self.namespace(ns).set_sysctls(&settings)?;
        }
        client.add_veth(CLIENT_IF, proxy, PROXY_CLIENT_IF)?;
        for path in [PATH_A_IF, PATH_B_IF] {
            proxy.add_veth(path, server, path)?;
        }
        for (ns, dev, addr) in [
            (client, CLIENT_IF, a.client),
            (proxy, PROXY_CLIENT_IF, a.proxy_lan),
            (proxy, PATH_A_IF, a.proxy_a),
            (proxy, PATH_B_IF, a.proxy_b),
            (server, PATH_A_IF, a.server_a),
            (server, PATH_B_IF, a.server_b),
        ] {
            ns.add_address(dev, addr.into(), 24)?;
        }
        // Egress of both ends, so each direction of each path is shaped.
        let rate = self.options.rate_mbit;
        for ns in [proxy, server] {
            for dev in [PATH_A_IF, PATH_B_IF] {
                ns.tc(&format!(
                    "qdisc add dev {dev} root tbf rate {rate}mbit \
                     burst {TBF_BURST} latency {TBF_LATENCY}"
                ))?;
            }
        }
        // Path B's source address leaves through path B whatever the destination, so the
        // subflow endpoint's connection to the server's path-A address crosses path B.
        let (net_a, net_b, lan) = (subnet(a.proxy_a), subnet(a.proxy_b), subnet(a.client));
        let (from_b, table) = (a.proxy_b, PATH_B_TABLE);
        proxy.ip(&format!(
            "rule add from {from_b} table {table} priority 1000"
        ))?;
        proxy.ip(&format!(
            "route add {net_b} dev {PATH_B_IF} src {from_b} table {table}"
        ))?;
        proxy.ip(&format!(
            "route add {net_a} via {} dev {PATH_B_IF} table {table}",
            a.server_b
        ))?;
        if self.options.forwarding {
            for net in [net_a, net_b] {
                client.ip(&format!("route add {net} via {}", a.proxy_lan))?;
            }
            server.ip(&format!("route add {lan} via {}", a.proxy_a))?;
        }
        for ns in [proxy, server] {
            ns.set_mptcp_limits(2, 2)?;
        }
        if self.options.subflow_endpoint {
            proxy.add_mptcp_endpoint(from_b.into(), PATH_B_IF, "subflow")?;
        }
        if self.options.internet {
            self.build_internet()?;
        }
        Ok(())
    }

    fn build_internet(&self) -> anyhow::Result<()> {
        let a = self.addrs;
        let [proxy, server, internet] =
            [Ns::Proxy, Ns::Server, Ns::Internet].map(|ns| self.namespace(ns));
        internet.set_sysctls(&[
            ("net/mptcp/enabled", "1"),
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/default/rp_filter", "0"),
        ])?;
        server.add_veth(SERVER_INET_IF, internet, INET_IF)?;
        server.add_address(SERVER_INET_IF, a.server_inet.into(), 24)?;
        for n in 0..INET_ADDRESSES {
            internet.add_address(INET_IF, a.internet_n(n).into(), 24)?;
        }
        internet.ip(&format!("route add default via {}", a.server_inet))?;
        internet.set_mptcp_limits(2, 2)?;
        let net = subnet(a.internet);
        proxy.ip(&format!("route add {net} via {}", a.server_a))?;
        proxy.ip(&format!(
            "route add {net} via {} dev {PATH_B_IF} table {PATH_B_TABLE}",
            a.server_b
        ))?;
        Ok(())
    }

    /// One of the namespaces, for everything [`Namespace`] offers.
    ///
    /// # Panics
    /// For [`Ns::Internet`] in a topology built without [`Options::internet`].
    pub fn namespace(&self, ns: Ns) -> &Namespace {
        self.namespaces
            .get(ns as usize)
            .expect("Ns::Internet needs Options::internet")
    }

    /// The namespace's name, for `ip netns exec`, [`in_netns`] or `ip -n`.
    pub fn name(&self, ns: Ns) -> &str {
        self.namespace(ns).name()
    }

    /// Every address of this topology.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// What this topology was built with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// [`in_netns`] for one of this topology's namespaces.
    pub fn in_netns<T: Send>(&self, ns: Ns, f: impl FnOnce() -> T + Send) -> T {
        in_netns(self.name(ns), f)
    }

    /// [`Namespace::command`] in `ns`.
    pub fn command(&self, ns: Ns, program: impl AsRef<OsStr>) -> Command {
        self.namespace(ns).command(program)
    }

    /// [`Namespace::exec`] in `ns`: the output whatever the exit status.
    ///
    /// # Errors
    /// Only if the process cannot be started.
    pub fn exec<I, S>(&self, ns: Ns, program: &str, args: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.namespace(ns).exec(program, args)
    }

    /// [`Namespace::exec_ok`] in `ns`: stdout, failing on a non-zero exit.
    ///
    /// # Errors
    /// The process cannot start or exits unsuccessfully (stderr in the error).
    pub fn exec_ok<I, S>(&self, ns: Ns, program: &str, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.namespace(ns).exec_ok(program, args)
    }

    /// [`Namespace::spawn`] in `ns`: a child killed on drop.
    ///
    /// # Errors
    /// The process cannot be started.
    pub fn spawn<I, S>(&self, ns: Ns, program: &str, args: I) -> io::Result<NsChild>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.namespace(ns).spawn(program, args)
    }

    /// [`Namespace::write_hosts`] in `ns`, e.g.
    /// `topo.write_hosts(Ns::Proxy, &[("server.test", topo.addrs().server_a.into())])`.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn write_hosts(&self, ns: Ns, entries: &[(&str, IpAddr)]) -> anyhow::Result<()> {
        self.namespace(ns).write_hosts(entries)
    }

    /// Sets a link up or down, e.g. `(Ns::Server, PATH_B_IF, false)` to cut path B
    /// mid-transfer (the seed's "block one interface" check).
    ///
    /// # Errors
    /// `ip link set` fails.
    pub fn set_link(&self, ns: Ns, dev: &str, up: bool) -> anyhow::Result<()> {
        self.namespace(ns).set_link(dev, up)
    }

    /// Byte counters of the server's two path interfaces (read from the namespace's own
    /// sysfs through `ip netns exec`). Take one before and one after a transfer and use
    /// [`PathCounters::since`].
    ///
    /// # Errors
    /// Reading the counters fails.
    pub fn server_path_counters(&self) -> anyhow::Result<PathCounters> {
        let files = [
            (PATH_A_IF, "tx"),
            (PATH_A_IF, "rx"),
            (PATH_B_IF, "tx"),
            (PATH_B_IF, "rx"),
        ]
        .map(|(dev, dir)| format!("/sys/class/net/{dev}/statistics/{dir}_bytes"));
        let out = self.exec_ok(Ns::Server, "cat", &files)?;
        let values = out
            .lines()
            .map(|line| {
                line.trim()
                    .parse::<u64>()
                    .with_context(|| format!("counter {line:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let [a_tx, a_rx, b_tx, b_rx] = values[..] else {
            bail!("expected 4 counters, got {out:?}");
        };
        Ok(PathCounters {
            a_tx,
            a_rx,
            b_tx,
            b_rx,
        })
    }

    /// Starts a [`PatternServer`] listening on `0.0.0.0:port` in the server namespace.
    ///
    /// # Errors
    /// As [`PatternServer::start`].
    pub fn start_pattern_server(&self, proto: Proto, port: u16) -> anyhow::Result<PatternServer> {
        PatternServer::start(self.name(Ns::Server), proto, port)
    }

    /// Runs [`super::fetch_pattern`] in `ns` over a stream from `connect` (run in `ns`
    /// too).
    ///
    /// # Errors
    /// As [`fetch_in_netns`].
    pub fn fetch<S, E>(
        &self,
        ns: Ns,
        bytes: u64,
        connect: impl FnOnce() -> Result<S, E> + Send,
    ) -> anyhow::Result<Transfer>
    where
        S: Read + Write,
        E: Into<anyhow::Error>,
    {
        fetch_in_netns(self.name(ns), bytes, connect)
    }
}

/// Server-side interface byte counters (see [`Topology::server_path_counters`]): `tx` is
/// what the server sent on the path, `rx` what it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathCounters {
    /// Bytes the server sent on path A.
    pub a_tx: u64,
    /// Bytes the server received on path A.
    pub a_rx: u64,
    /// Bytes the server sent on path B.
    pub b_tx: u64,
    /// Bytes the server received on path B.
    pub b_rx: u64,
}

impl PathCounters {
    /// The traffic between `earlier` and `self`.
    pub fn since(&self, earlier: &PathCounters) -> PathCounters {
        PathCounters {
            a_tx: self.a_tx.saturating_sub(earlier.a_tx),
            a_rx: self.a_rx.saturating_sub(earlier.a_rx),
            b_tx: self.b_tx.saturating_sub(earlier.b_tx),
            b_rx: self.b_rx.saturating_sub(earlier.b_rx),
        }
    }
}

/// The /24 around `addr`, as `a.b.c.0/24`.
fn subnet(addr: Ipv4Addr) -> String {
    let [a, b, c, _] = addr.octets();
    format!("{a}.{b}.{c}.0/24")
}
