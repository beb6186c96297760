//! One network namespace of a test, and running code and programs inside it.
//!
//! Threads vs processes: [`in_netns`] moves a fresh *thread* into a namespace (its sockets
//! live there, and threads it starts, e.g. a tokio runtime's workers, inherit it), while
//! [`Namespace::command`] and what is built on it run *processes* through `ip netns exec`,
//! which also bind-mounts `/etc/netns/<ns>/*` over `/etc` and remounts `/sys`. Only the
//! latter see the files written by [`Namespace::write_hosts`].

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::{self, JoinHandle};

use anyhow::Context;

use super::process::{NsChild, output_ok, run, sh};

/// Prefix of every namespace this crate creates; the first [`Namespace::new`] of a process
/// removes leftovers with this prefix whose owning process is gone (a test killed by
/// SIGKILL cannot run `Drop`).
const NS_PREFIX: &str = "mpsk";

/// Numbers the namespaces of this process, so that names never repeat between tests.
static NAMESPACE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace named `mpsk<pid>-<n>-<role>`: the pid keeps test binaries running
/// at once apart, the counter the tests of one binary. Dropping it kills what still runs
/// inside, deletes it and its `/etc/netns/<name>` directory, also when the test panics;
/// declare it *before* anything running inside it, so it is dropped after them.
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// Creates a namespace with its loopback up. `role` (e.g. `"client"`) only makes the
    /// name readable in `ip netns list`; it must be one word without spaces.
    ///
    /// # Errors
    /// `ip netns add` or `ip link set lo up` fails (its stderr is in the error); a
    /// namespace that was created is removed again.
    pub fn new(role: &str) -> anyhow::Result<Self> {
        static STALE_REMOVED: Once = Once::new();
        STALE_REMOVED.call_once(remove_stale_namespaces);
        let n = NAMESPACE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NS_PREFIX}{}-{n}-{role}", std::process::id());
        sh(&format!("ip netns add {name}"))?;
        // From here on, an error drops `namespace`, which deletes it.
        let namespace = Namespace { name };
        namespace.ip("link set lo up")?;
        Ok(namespace)
    }

    /// The name, for `ip -n`, `ip netns exec` or [`in_netns`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// [`in_netns`] for this namespace.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.name, f)
    }

    /// Runs `ip -n <name> <args>`, `args` being whitespace-separated words (our names and
    /// addresses never contain spaces), so that setup reads like the shell commands it
    /// replaces; returns stdout.
    ///
    /// # Errors
    /// `ip` cannot start or fails (its stderr is in the error).
    pub fn ip(&self, args: &str) -> anyhow::Result<String> {
        sh(&format!("ip -n {} {args}", self.name))
    }

    /// Runs `tc -n <name> <args>` as [`Namespace::ip`] runs `ip`.
    ///
    /// # Errors
    /// `tc` cannot start or fails (its stderr is in the error).
    pub fn tc(&self, args: &str) -> anyhow::Result<String> {
        sh(&format!("tc -n {} {args}", self.name))
    }

    /// Writes sysctls of this namespace, as `(key, value)` with `key` a path under
    /// `/proc/sys` such as `net/mptcp/enabled`. Interfaces created afterwards inherit the
    /// `conf/default/*` ones.
    ///
    /// # Errors
    /// A key does not exist in this kernel or cannot be written (the key is in the error).
    pub fn set_sysctls(&self, settings: &[(&str, &str)]) -> anyhow::Result<()> {
        self.in_netns(|| {
            for (key, value) in settings {
                // /proc/sys/net resolves to the opening thread's network namespace.
                fs::write(format!("/proc/sys/{key}"), value)
                    .with_context(|| format!("setting {key}={value} in {}", self.name))?;
            }
            Ok(())
        })
    }

    /// Makes the namespace run the userspace MPTCP path manager: `net.mptcp.path_manager
    /// = userspace`, or on kernels before 6.15, which lack that key, `net.mptcp.pm_type = 1`.
    ///
    /// # Errors
    /// Neither sysctl can be written.
    pub fn use_userspace_path_manager(&self) -> anyhow::Result<()> {
        self.set_sysctls(&[("net/mptcp/path_manager", "userspace")])
            .or_else(|_| self.set_sysctls(&[("net/mptcp/pm_type", "1")]))
    }

    /// Creates a veth pair: `dev` here, `peer_dev` in `peer`. The peer is created directly
    /// in the other namespace, so equal names on both ends do not clash.
    ///
    /// # Errors
    /// `ip link add` fails.
    pub fn add_veth(&self, dev: &str, peer: &Namespace, peer_dev: &str) -> anyhow::Result<()> {
        self.ip(&format!(
            "link add {dev} type veth peer name {peer_dev} netns {}",
            peer.name
        ))?;
        Ok(())
    }

    /// Gives `dev` the address `addr/prefix` and sets it up.
    ///
    /// # Errors
    /// `ip addr add` or `ip link set up` fails.
    pub fn add_address(&self, dev: &str, addr: IpAddr, prefix: u8) -> anyhow::Result<()> {
        self.ip(&format!("addr add {addr}/{prefix} dev {dev}"))?;
        self.ip(&format!("link set {dev} up"))?;
        Ok(())
    }

    /// Sets `ip mptcp limits`: how many extra subflows a connection may have and how many
    /// ADD_ADDR announcements it accepts.
    ///
    /// # Errors
    /// `ip mptcp limits set` fails (e.g. values above the kernel's maximum of 8).
    pub fn set_mptcp_limits(&self, subflows: u8, add_addr_accepted: u8) -> anyhow::Result<()> {
        self.ip(&format!(
            "mptcp limits set subflows {subflows} add_addr_accepted {add_addr_accepted}"
        ))?;
        Ok(())
    }

    /// Adds an MPTCP endpoint on `dev` with `flags` (e.g. `"subflow"`): with the in-kernel
    /// path manager a `subflow` endpoint opens a second subflow from `addr`; with the
    /// userspace one the list is only an inventory.
    ///
    /// # Errors
    /// `ip mptcp endpoint add` fails.
    pub fn add_mptcp_endpoint(&self, addr: IpAddr, dev: &str, flags: &str) -> anyhow::Result<()> {
        self.ip(&format!("mptcp endpoint add {addr} dev {dev} {flags}"))?;
        Ok(())
    }

    /// Sets a link up or down, e.g. to cut a path mid-transfer.
    ///
    /// # Errors
    /// `ip link set` fails.
    pub fn set_link(&self, dev: &str, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        self.ip(&format!("link set {dev} {state}"))?;
        Ok(())
    }

    /// A `Command` running `program` here through `ip netns exec` (so it sees
    /// `/etc/netns/<name>/*` and the namespace's `/sys`); add arguments, env and stdio,
    /// then pass it to [`NsChild::spawn`] or call `output()`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args..` here to completion and returns its output, whatever its
    /// exit status.
    ///
    /// # Errors
    /// Only if the process cannot be started.
    pub fn exec<I, S>(&self, program: &str, args: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// Like [`Namespace::exec`] but fails on a non-zero exit; returns stdout.
    ///
    /// # Errors
    /// The process cannot start or exits unsuccessfully (stderr in the error).
    pub fn exec_ok<I, S>(&self, program: &str, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        output_ok(&mut cmd)
    }

    /// Starts `program args..` here (stdin null, stdout/stderr inherited); the child is
    /// killed when the returned [`NsChild`] is dropped. For piped output build the command
    /// with [`Namespace::command`] and use [`NsChild::spawn`].
    ///
    /// # Errors
    /// The process cannot be started.
    pub fn spawn<I, S>(&self, program: &str, args: I) -> io::Result<NsChild>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args).stdin(Stdio::null());
        NsChild::spawn(&mut cmd)
    }

    /// Writes `/etc/netns/<name>/hosts` with `entries` (plus localhost) and a
    /// `resolv.conf` pointing only at 127.0.0.1 (nothing listens there, so no lookup leaves
    /// the test). Processes started *afterwards* with `ip netns exec` (via
    /// [`Namespace::command`], [`Namespace::exec`], [`Namespace::spawn`]) see them as
    /// `/etc/hosts` and `/etc/resolv.conf`; threads in [`in_netns`] do not (no mount
    /// namespace). Removed on drop.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn write_hosts(&self, entries: &[(&str, IpAddr)]) -> anyhow::Result<()> {
        let dir = etc_netns_dir(&self.name);
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
}

impl Drop for Namespace {
    fn drop(&mut self) {
        delete_namespace(&self.name);
    }
}

/// Runs `f` on a fresh thread that first enters network namespace `ns` (a name under
/// `/var/run/netns`), and returns its result. Sockets created inside `f` belong to `ns`
/// and keep working when returned to and used from any other thread (netlink sockets
/// too); threads spawned by `f` inherit the namespace. A panic in `f` is propagated.
/// Panics if the namespace cannot be entered (so `f` never runs in the wrong namespace).
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
    if let Err(e) = crate::sys::set_netns(file.as_fd()) {
        panic!("setns({path}): {e}");
    }
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
                crate::sys::kill(pid);
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
    let Ok(names) = list_namespaces() else {
        return;
    };
    for name in names {
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns: removing stale namespace {name}");
            delete_namespace(&name);
        }
    }
}

fn etc_netns_dir(name: &str) -> String {
    format!("/etc/netns/{name}")
}
