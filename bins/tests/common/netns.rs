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
//!   the namespaces, so topologies never collide on them; namespace names carry the pid
//!   and a counter. Addresses are only meaningful inside one topology.
//!
//! One `Topology` exists at a time per test binary: [`Topology::new`] waits for the
//! previous one to be dropped, so throughput measurements never overlap on a small
//! machine. Do not build two in one test (it would wait for itself; it panics after
//! [`SERIAL_WAIT`]).
//!
//! Threads vs processes: [`in_netns`] moves a fresh *thread* into a namespace (its sockets
//! live there, and threads it starts, e.g. a tokio runtime's workers, inherit it), while
//! [`Topology::exec`] / [`Topology::spawn`] run *processes* through `ip netns exec`, which
//! also bind-mounts `/etc/netns/<ns>/*` over `/etc` and remounts `/sys`. Only the latter
//! see the files written by [`Topology::write_hosts`].

// Each integration-test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Prefix of every namespace this module creates; `Topology::new` removes leftovers with
/// this prefix whose owning process is gone (a test killed by SIGKILL cannot run `Drop`).
const NS_PREFIX: &str = "mpsk";

/// Interface names (the same in every topology: they live inside the namespaces).
pub const CLIENT_IF: &str = "veth-p";
pub const PROXY_CLIENT_IF: &str = "veth-c";
pub const PATH_A_IF: &str = "path-a";
pub const PATH_B_IF: &str = "path-b";

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
    Client,
    Proxy,
    Server,
}

impl Ns {
    pub const ALL: [Ns; 3] = [Ns::Client, Ns::Proxy, Ns::Server];

    fn role(self) -> &'static str {
        match self {
            Ns::Client => "client",
            Ns::Proxy => "proxy",
            Ns::Server => "server",
        }
    }
}

/// Socket protocol for the traffic helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// `IPPROTO_MPTCP`; falls back to TCP transparently if the peer does not speak MPTCP.
    Mptcp,
    /// Plain `IPPROTO_TCP`.
    Tcp,
}

impl Proto {
    fn socket2(self) -> Protocol {
        match self {
            Proto::Mptcp => Protocol::MPTCP,
            Proto::Tcp => Protocol::TCP,
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
        }
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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rate_mbit: 20,
            subflow_endpoint: true,
            forwarding: false,
        }
    }
}

/// Decides whether a namespace test may run here. Returns `true` if it can. Otherwise it
/// prints why and returns `false` (the test should return early) — unless the `CI`
/// environment variable is set, in which case a missing capability is a failure and this
/// panics with the reason: CI must never silently skip the end-to-end tests.
pub fn require_netns() -> bool {
    static MISSING: OnceLock<Option<String>> = OnceLock::new();
    match MISSING.get_or_init(missing_capability) {
        None => true,
        Some(reason) if std::env::var_os("CI").is_some() => {
            panic!(
                "network-namespace tests cannot run, and CI is set so they may not be skipped: {reason}"
            )
        }
        Some(reason) => {
            eprintln!(
                "skipping network-namespace test: {reason} (set CI=1 to make this a failure)"
            );
            false
        }
    }
}

fn missing_capability() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("network namespaces need Linux".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "not running as root (ip netns, tc and ip mptcp need CAP_NET_ADMIN / CAP_SYS_ADMIN)"
                .into(),
        );
    }
    for (program, args) in [("ip", &["netns", "list"][..]), ("tc", &["-V"][..])] {
        match Command::new(program).args(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Some(format!(
                    "`{program} {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Err(e) => return Some(format!("cannot run `{program}` (iproute2): {e}")),
        }
    }
    if !std::path::Path::new("/proc/sys/net/mptcp/enabled").exists() {
        return Some(
            "the kernel has no MPTCP (/proc/sys/net/mptcp missing; needs CONFIG_MPTCP, Linux 5.6+)"
                .into(),
        );
    }
    None
}

/// Runs `f` on a fresh thread that first enters network namespace `ns` (a name under
/// `/var/run/netns`), and returns its result. Sockets created inside `f` belong to `ns`
/// and keep working when returned to and used from any other thread; threads spawned by
/// `f` inherit the namespace. A panic in `f` is propagated. Panics if the namespace
/// cannot be entered (so `f` never runs in the wrong namespace).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_netns(ns);
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Like [`in_netns`] but does not wait: for long-running work such as a server loop or a
/// tokio runtime that must create its sockets in `ns`.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let ns = ns.to_owned();
    thread::Builder::new()
        .name(format!("in-{ns}"))
        .spawn(move || {
            enter_netns(&ns);
            f()
        })
        .expect("spawning a thread")
}

fn enter_netns(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: the fd is valid for the call; setns only changes this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        panic!("setns({path}): {}", io::Error::last_os_error());
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
    names: [String; 3],
    addrs: Addrs,
    options: Options,
    // Last field: released only after Drop::drop has removed the namespaces.
    _serial: SerialPermit,
}

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
        remove_stale_namespaces();
        let n = TOPOLOGY_COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let names = Ns::ALL.map(|ns| format!("{NS_PREFIX}{pid}-{n}-{}", ns.role()));
        let topo = Topology {
            names,
            // Second octet varies only to make captures and logs easier to tell apart.
            addrs: Addrs::new(100 + (n % 100) as u8),
            options,
            _serial: serial,
        };
        // On error `topo` is dropped here, which deletes whatever was created.
        topo.build()?;
        Ok(topo)
    }

    fn build(&self) -> anyhow::Result<()> {
        let a = self.addrs;
        let [client, proxy, server] = &self.names;
        for name in &self.names {
            sh(&format!("ip netns add {name}"))?;
            sh(&format!("ip -n {name} link set lo up"))?;
        }
        // Sysctls first: interfaces created afterwards inherit `conf.default.*`.
        let forwarding = if self.options.forwarding { "1" } else { "0" };
        for name in &self.names {
            let mut settings = vec![
                ("net/mptcp/enabled", "1"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
            ];
            if name == proxy {
                settings.push(("net/ipv4/ip_forward", forwarding));
            }
            in_netns(name, || -> anyhow::Result<()> {
                for (key, value) in settings {
                    // /proc/sys/net resolves to the opening thread's network namespace.
                    fs::write(format!("/proc/sys/{key}"), value)
                        .with_context(|| format!("setting {key}={value} in {name}"))?;
                }
                Ok(())
            })?;
        }
        // The peer is created directly in the other namespace, so equal names do not clash.
        sh(&format!(
            "ip -n {client} link add {CLIENT_IF} type veth peer name {PROXY_CLIENT_IF} netns {proxy}"
        ))?;
        for path in [PATH_A_IF, PATH_B_IF] {
            sh(&format!(
                "ip -n {proxy} link add {path} type veth peer name {path} netns {server}"
            ))?;
        }
        for (name, dev, addr) in [
            (client, CLIENT_IF, a.client),
            (proxy, PROXY_CLIENT_IF, a.proxy_lan),
            (proxy, PATH_A_IF, a.proxy_a),
            (proxy, PATH_B_IF, a.proxy_b),
            (server, PATH_A_IF, a.server_a),
            (server, PATH_B_IF, a.server_b),
        ] {
            sh(&format!("ip -n {name} addr add {addr}/24 dev {dev}"))?;
            sh(&format!("ip -n {name} link set {dev} up"))?;
        }
        // Egress of both ends, so each direction of each path is shaped.
        let rate = self.options.rate_mbit;
        for name in [proxy, server] {
            for dev in [PATH_A_IF, PATH_B_IF] {
                sh(&format!(
                    "tc -n {name} qdisc add dev {dev} root tbf rate {rate}mbit \
                     burst {TBF_BURST} latency {TBF_LATENCY}"
                ))?;
            }
        }
        // Path B's source address leaves through path B whatever the destination, so the
        // subflow endpoint's connection to the server's path-A address crosses path B.
        let (net_a, net_b, lan) = (subnet(a.proxy_a), subnet(a.proxy_b), subnet(a.client));
        let (from_b, table) = (a.proxy_b, PATH_B_TABLE);
        sh(&format!(
            "ip -n {proxy} rule add from {from_b} table {table} priority 1000"
        ))?;
        sh(&format!(
            "ip -n {proxy} route add {net_b} dev {PATH_B_IF} src {from_b} table {table}"
        ))?;
        sh(&format!(
            "ip -n {proxy} route add {net_a} via {} dev {PATH_B_IF} table {table}",
            a.server_b
        ))?;
        if self.options.forwarding {
            for net in [net_a, net_b] {
                sh(&format!(
                    "ip -n {client} route add {net} via {}",
                    a.proxy_lan
                ))?;
            }
            sh(&format!("ip -n {server} route add {lan} via {}", a.proxy_a))?;
        }
        for name in [proxy, server] {
            sh(&format!(
                "ip -n {name} mptcp limits set subflows 2 add_addr_accepted 2"
            ))?;
        }
        if self.options.subflow_endpoint {
            sh(&format!(
                "ip -n {proxy} mptcp endpoint add {from_b} dev {PATH_B_IF} subflow"
            ))?;
        }
        Ok(())
    }

    /// The namespace's name, for `ip netns exec`, [`in_netns`] or `ip -n`.
    pub fn name(&self, ns: Ns) -> &str {
        &self.names[ns as usize]
    }

    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// [`in_netns`] for one of this topology's namespaces.
    pub fn in_netns<T: Send>(&self, ns: Ns, f: impl FnOnce() -> T + Send) -> T {
        in_netns(self.name(ns), f)
    }

    /// A `Command` running `program` in `ns` through `ip netns exec` (so it sees
    /// `/etc/netns/<ns>/*` and the namespace's `/sys`); add arguments, env and stdio, then
    /// pass it to [`NsChild::spawn`] or call `output()`.
    pub fn command(&self, ns: Ns, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name(ns)]).arg(program);
        cmd
    }

    /// Runs `program args..` in `ns` to completion and returns its output, whatever its
    /// exit status.
    ///
    /// # Errors
    /// Only if the process cannot be started.
    pub fn exec<I, S>(&self, ns: Ns, program: &str, args: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(ns, program)
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// Like [`Topology::exec`] but fails on a non-zero exit; returns stdout.
    ///
    /// # Errors
    /// The process cannot start or exits unsuccessfully (stderr in the error).
    pub fn exec_ok<I, S>(&self, ns: Ns, program: &str, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(ns, program);
        cmd.args(args);
        output_ok(&mut cmd)
    }

    /// Starts `program args..` in `ns` (stdin null, stdout/stderr inherited); the child is
    /// killed when the returned [`NsChild`] is dropped. For piped output build the command
    /// with [`Topology::command`] and use [`NsChild::spawn`].
    ///
    /// # Errors
    /// The process cannot be started.
    pub fn spawn<I, S>(&self, ns: Ns, program: &str, args: I) -> io::Result<NsChild>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(ns, program);
        cmd.args(args).stdin(Stdio::null());
        NsChild::spawn(&mut cmd)
    }

    /// Writes `/etc/netns/<ns>/hosts` with `entries` (plus localhost) and a `resolv.conf`
    /// pointing only at 127.0.0.1 (nothing listens there, so no lookup leaves the test).
    /// Processes started *afterwards* with `ip netns exec` (via [`Topology::command`],
    /// [`Topology::exec`], [`Topology::spawn`]) see them as `/etc/hosts` and
    /// `/etc/resolv.conf`; threads in [`in_netns`] do not (no mount namespace). Removed on
    /// drop. E.g. `topo.write_hosts(Ns::Proxy, &[("server.test", topo.addrs().server_a.into())])`.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn write_hosts(&self, ns: Ns, entries: &[(&str, IpAddr)]) -> anyhow::Result<()> {
        let dir = etc_netns_dir(self.name(ns));
        fs::create_dir_all(&dir).with_context(|| format!("creating {dir}"))?;
        let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (name, addr) in entries {
            hosts.push_str(&format!("{addr} {name}\n"));
        }
        fs::write(format!("{dir}/hosts"), hosts).with_context(|| format!("writing {dir}/hosts"))?;
        fs::write(
            format!("{dir}/resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .with_context(|| format!("writing {dir}/resolv.conf"))?;
        Ok(())
    }

    /// Sets a link up or down, e.g. `(Ns::Server, PATH_B_IF, false)` to cut path B
    /// mid-transfer (the seed's "block one interface" check).
    ///
    /// # Errors
    /// `ip link set` fails.
    pub fn set_link(&self, ns: Ns, dev: &str, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        sh(&format!("ip -n {} link set {dev} {state}", self.name(ns)))?;
        Ok(())
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

    /// Runs [`fetch_pattern`] in `ns` over a stream from `connect` (run in `ns` too).
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

impl Drop for Topology {
    fn drop(&mut self) {
        for name in &self.names {
            delete_namespace(name);
        }
    }
}

/// Kills what still runs in the namespace (a leaked child keeps it alive even after
/// `ip netns del`), deletes it, and removes `/etc/netns/<name>`. Never panics: it runs
/// during unwinding.
fn delete_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        let me = std::process::id();
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<u32>()
                && pid != me
            {
                // SAFETY: plain syscall; the pid was just listed as living in our namespace.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
    if let Err(e) = run("ip", ["netns", "del", name]) {
        eprintln!("netns cleanup: {e:#}");
    }
    let dir = etc_netns_dir(name);
    if let Err(e) = fs::remove_dir_all(&dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        eprintln!("netns cleanup: removing {dir}: {e}");
    }
}

/// Deletes namespaces left by test processes that no longer exist.
fn remove_stale_namespaces() {
    let Ok(list) = run("ip", ["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns: removing stale namespace {name}");
            delete_namespace(name);
        }
    }
}

fn etc_netns_dir(name: &str) -> String {
    format!("/etc/netns/{name}")
}

/// Names of all namespaces currently listed by `ip netns list`.
///
/// # Errors
/// `ip netns list` fails.
pub fn list_namespaces() -> anyhow::Result<Vec<String>> {
    Ok(run("ip", ["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// Runs a command line of whitespace-free words (our names and addresses never contain
/// spaces), so the setup reads like the shell commands it replaces.
fn sh(command_line: &str) -> anyhow::Result<String> {
    let mut words = command_line.split_whitespace();
    let program = words.next().context("empty command line")?;
    run(program, words)
}

/// The /24 around `addr`, as `a.b.c.0/24`.
fn subnet(addr: Ipv4Addr) -> String {
    let [a, b, c, _] = addr.octets();
    format!("{a}.{b}.{c}.0/24")
}

fn run<I, S>(program: &str, args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    output_ok(&mut cmd)
}

fn output_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A child process that is killed (SIGKILL) and reaped when dropped. Derefs to `Child`.
#[derive(Debug)]
pub struct NsChild(Child);

impl NsChild {
    /// Spawns `cmd` (typically from [`Topology::command`]).
    ///
    /// # Errors
    /// The process cannot be started.
    pub fn spawn(cmd: &mut Command) -> io::Result<Self> {
        cmd.spawn().map(NsChild)
    }
}

impl Deref for NsChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for NsChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        // Already exited: kill fails harmlessly, wait reaps.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Server-side interface byte counters (see [`Topology::server_path_counters`]): `tx` is
/// what the server sent on the path, `rx` what it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathCounters {
    pub a_tx: u64,
    pub a_rx: u64,
    pub b_tx: u64,
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

/// What [`mptcp_subflows`] read from a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubflowCount {
    /// All subflows including the initial one: `mptcpi_subflows_total` (6.8+), else
    /// `mptcpi_subflows + 1` (that counter excludes the initial subflow).
    pub total: u8,
    pub token: u32,
}

/// Reads `MPTCP_INFO` from `sock`: `Ok(None)` if the socket is plain TCP or fell back to
/// TCP (EOPNOTSUPP / ENOPROTOOPT).
///
/// # Errors
/// Any other getsockopt failure.
pub fn mptcp_subflows(sock: &impl AsFd) -> io::Result<Option<SubflowCount>> {
    Ok(mptcp_policy::mptcp_info(sock)?.map(|info| SubflowCount {
        total: info.subflow_count(),
        token: info.token,
    }))
}

/// The byte stream the pattern server sends: byte `i` is `i % 251`. 251 is prime, so a
/// lost, duplicated or reordered chunk of any power-of-two size shows as a mismatch.
const PATTERN_PERIOD: usize = 251;
const CHUNK: usize = 64 * 1024;

fn pattern_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..CHUNK + PATTERN_PERIOD)
            .map(|i| (i % PATTERN_PERIOD) as u8)
            .collect()
    })
}

/// The pattern bytes at stream offsets `offset..offset + len` (`len <= CHUNK`).
fn pattern_at(offset: u64, len: usize) -> &'static [u8] {
    let start = (offset % PATTERN_PERIOD as u64) as usize;
    &pattern_table()[start..start + len]
}

/// Per-connection result of a [`PatternServer`].
#[derive(Debug, Clone)]
pub struct ConnReport {
    pub peer: SocketAddr,
    /// MPTCP_INFO was readable, i.e. the connection did not fall back to TCP.
    pub mptcp: bool,
    /// Largest subflow count seen while sending (sampled every ~10 ms).
    pub max_subflows: u8,
    /// Bytes the client asked for.
    pub requested: u64,
    /// Bytes actually written.
    pub sent: u64,
    /// Why serving stopped early, if it did.
    pub error: Option<String>,
}

/// A listener in a namespace speaking a tiny protocol: the client sends the number of
/// bytes it wants as a big-endian `u64`; the server streams that many pattern bytes,
/// shuts down its sending side and waits for the client to close. Each connection is
/// served on its own thread and produces a [`ConnReport`]. Stops accepting on drop.
#[derive(Debug)]
pub struct PatternServer {
    port: u16,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    reports: mpsc::Receiver<ConnReport>,
}

impl PatternServer {
    /// Listens on `0.0.0.0:port` (0 = any free port) in namespace `ns`.
    ///
    /// # Errors
    /// Socket creation, bind or listen fails (e.g. MPTCP disabled in `ns`).
    pub fn start(ns: &str, proto: Proto, port: u16) -> anyhow::Result<Self> {
        let listener = in_netns(ns, || -> io::Result<Socket> {
            let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(proto.socket2()))?;
            sock.set_reuse_address(true)?;
            sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
            sock.listen(64)?;
            Ok(sock)
        })
        .with_context(|| format!("{proto:?} listener on port {port} in {ns}"))?;
        let port = listener
            .local_addr()?
            .as_socket()
            .context("listener address")?
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, reports) = mpsc::channel();
        let acceptor = {
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("pattern-accept".into())
                .spawn(move || accept_loop(&listener, &stop, &tx))?
        };
        Ok(PatternServer {
            port,
            stop,
            acceptor: Some(acceptor),
            reports,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the report of the next finished connection.
    ///
    /// # Errors
    /// None arrives within `timeout`.
    pub fn next_report(&self, timeout: Duration) -> anyhow::Result<ConnReport> {
        self.reports
            .recv_timeout(timeout)
            .map_err(|e| anyhow!("no connection report within {timeout:?}: {e}"))
    }
}

impl Drop for PatternServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &Socket, stop: &AtomicBool, reports: &mpsc::Sender<ConnReport>) {
    while !stop.load(Ordering::Relaxed) {
        // Poll with a timeout so the loop notices `stop` without a wake-up connection
        // (which would have to come from inside the namespace).
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
        if ready <= 0 {
            continue;
        }
        let Ok((conn, peer)) = listener.accept() else {
            continue;
        };
        let reports = reports.clone();
        let spawned = thread::Builder::new()
            .name("pattern-conn".into())
            .spawn(move || {
                let report = serve_pattern(conn, &peer);
                let _ = reports.send(report);
            });
        if let Err(e) = spawned {
            eprintln!("pattern server: cannot spawn a connection thread: {e}");
        }
    }
}

fn serve_pattern(conn: Socket, peer: &SockAddr) -> ConnReport {
    let mut report = ConnReport {
        peer: peer
            .as_socket()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        mptcp: false,
        max_subflows: 0,
        requested: 0,
        sent: 0,
        error: None,
    };
    if let Err(e) = stream_pattern(conn, &mut report) {
        report.error = Some(format!("{e:#}"));
    }
    report
}

fn stream_pattern(mut conn: Socket, report: &mut ConnReport) -> anyhow::Result<()> {
    // Bounded: a stuck peer ends the thread instead of hanging the test binary.
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut request = [0u8; 8];
    conn.read_exact(&mut request)
        .context("reading the request")?;
    report.requested = u64::from_be_bytes(request);
    sample_subflows(&conn, report)?;
    let mut last_sample = Instant::now();
    while report.sent < report.requested {
        let len = (report.requested - report.sent).min(CHUNK as u64) as usize;
        let n = conn
            .write(pattern_at(report.sent, len))
            .context("sending")?;
        ensure!(n > 0, "peer stopped accepting data");
        report.sent += n as u64;
        // Subflows join shortly after the handshake, so keep looking during the transfer.
        if last_sample.elapsed() >= Duration::from_millis(10) {
            sample_subflows(&conn, report)?;
            last_sample = Instant::now();
        }
    }
    sample_subflows(&conn, report)?;
    conn.shutdown(std::net::Shutdown::Write)?;
    // Wait for the client's close so everything sent is delivered before we drop.
    let mut rest = [0u8; 64];
    while conn
        .read(&mut rest)
        .context("waiting for the client to close")?
        > 0
    {}
    Ok(())
}

fn sample_subflows(conn: &Socket, report: &mut ConnReport) -> io::Result<()> {
    if let Some(count) = mptcp_subflows(conn)? {
        report.mptcp = true;
        report.max_subflows = report.max_subflows.max(count.total);
    }
    Ok(())
}

/// One measured download.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub bytes: u64,
    /// From sending the request to receiving the last byte (connect time excluded).
    pub elapsed: Duration,
}

impl Transfer {
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Connects a `proto` socket to `addr` from the current thread's namespace (call it inside
/// [`in_netns`] or a `connect` closure). 30 s read/write timeouts bound a stuck transfer.
///
/// # Errors
/// Socket creation or connect fails.
pub fn connect(proto: Proto, addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(proto.socket2()),
    )?;
    sock.connect_timeout(&addr.into(), Duration::from_secs(10))?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    sock.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(sock.into())
}

/// Speaks the [`PatternServer`] protocol on an established `stream`: asks for `bytes`,
/// checks every byte against the pattern and that the server then closes, and measures
/// the throughput. The stream may be anything carrying the bytes to a pattern server,
/// e.g. a SOCKS5 connection after its handshake.
///
/// # Errors
/// I/O errors, a corrupted or short stream, or extra data.
pub fn fetch_pattern(stream: &mut (impl Read + Write), bytes: u64) -> anyhow::Result<Transfer> {
    let start = Instant::now();
    stream
        .write_all(&bytes.to_be_bytes())
        .context("sending the request")?;
    stream.flush()?;
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    while received < bytes {
        let want = (bytes - received).min(CHUNK as u64) as usize;
        let n = stream
            .read(&mut buf[..want])
            .with_context(|| format!("reading after {received} of {bytes} bytes"))?;
        ensure!(n > 0, "stream ended after {received} of {bytes} bytes");
        if buf[..n] != *pattern_at(received, n) {
            let at = buf[..n]
                .iter()
                .zip(pattern_at(received, n))
                .position(|(got, want)| got != want)
                .unwrap_or(0);
            bail!("pattern mismatch at byte {}", received + at as u64);
        }
        received += n as u64;
    }
    let elapsed = start.elapsed();
    let extra = stream
        .read(&mut buf[..1])
        .context("waiting for the server's close")?;
    ensure!(extra == 0, "server sent more than {bytes} bytes");
    Ok(Transfer { bytes, elapsed })
}

/// Runs `connect` and then [`fetch_pattern`] on a thread inside namespace `ns`. `connect`
/// returns the stream to use, e.g. `|| connect(Proto::Mptcp, addr)`, or a TCP connection
/// to a SOCKS proxy after its handshake; give custom streams read timeouts so a broken
/// transfer fails instead of hanging.
///
/// # Errors
/// `connect` fails, or as [`fetch_pattern`].
pub fn fetch_in_netns<S, E>(
    ns: &str,
    bytes: u64,
    connect: impl FnOnce() -> Result<S, E> + Send,
) -> anyhow::Result<Transfer>
where
    S: Read + Write,
    E: Into<anyhow::Error>,
{
    in_netns(ns, || {
        let mut stream = connect().map_err(Into::into).context("connecting")?;
        fetch_pattern(&mut stream, bytes)
    })
}

/// Waits for a transfer started on its own thread (e.g. with [`fetch_in_netns`]).
///
/// # Errors
/// The transfer failed or its thread panicked.
pub fn join_transfer(handle: JoinHandle<anyhow::Result<Transfer>>) -> anyhow::Result<Transfer> {
    handle
        .join()
        .map_err(|_| anyhow!("transfer thread panicked"))?
}
