//! Network-namespace topology for the integration tests: two namespaces joined by two
//! veth pairs, so that the client has a second local address for an extra subflow.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

/// Client and server namespaces, deleted (with their veths) on drop, even on panic.
pub struct Topology {
    pub client: String,
    pub server: String,
}

pub const CLIENT_ADDRS: [&str; 2] = ["10.77.1.1", "10.77.2.1"];
pub const SERVER_ADDRS: [&str; 2] = ["10.77.1.2", "10.77.2.2"];
/// Client-side interface names, one per path.
pub const CLIENT_IFS: [&str; 2] = ["c0", "c1"];

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Whether the test can run: root (for namespaces, CAP_NET_ADMIN) and `ip netns`. When
/// not, it says why; with `CI` set that is a failure, not a skip.
pub fn can_run(test: &str) -> bool {
    let why = if is_root() {
        match Command::new("ip").args(["netns", "list"]).output() {
            Ok(o) if o.status.success() => return true,
            Ok(o) => format!("`ip netns` fails: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => format!("no `ip` command: {e}"),
        }
    } else {
        "needs root (network namespaces, CAP_NET_ADMIN)".to_string()
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why}");
    }
    eprintln!("skipping {test}: {why}");
    false
}

fn is_root() -> bool {
    // /proc/self/status avoids an unsafe geteuid call; the 2nd Uid field is effective.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

impl Topology {
    /// Build the namespaces, links and MPTCP settings. `tag` keeps names unique between
    /// tests of one process; the pid keeps them unique between processes.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let topo = Topology {
            client: format!("mpnl-c-{tag}-{pid}"),
            server: format!("mpnl-s-{tag}-{pid}"),
        };
        let (c, s) = (topo.client.as_str(), topo.server.as_str());
        run(&["ip", "netns", "add", c])?;
        run(&["ip", "netns", "add", s])?;
        for (i, cif) in CLIENT_IFS.iter().enumerate() {
            let sif = format!("s{i}");
            run(&[
                "ip", "-n", c, "link", "add", cif, "type", "veth", "peer", "name", &sif, "netns", s,
            ])?;
            run(&[
                "ip",
                "-n",
                c,
                "addr",
                "add",
                &format!("{}/24", CLIENT_ADDRS[i]),
                "dev",
                cif,
            ])?;
            run(&[
                "ip",
                "-n",
                s,
                "addr",
                "add",
                &format!("{}/24", SERVER_ADDRS[i]),
                "dev",
                &sif,
            ])?;
            run(&["ip", "-n", c, "link", "set", cif, "up"])?;
            run(&["ip", "-n", s, "link", "set", &sif, "up"])?;
        }
        for ns in [c, s] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            run(&[
                "ip",
                "-n",
                ns,
                "mptcp",
                "limits",
                "set",
                "subflows",
                "4",
                "add_addr_accepted",
                "4",
            ])?;
        }
        // The client runs the userspace path manager; the server keeps the in-kernel one,
        // which accepts joins up to its limits.
        if run(&[
            "ip",
            "netns",
            "exec",
            c,
            "sysctl",
            "-q",
            "net.mptcp.path_manager=userspace",
        ])
        .is_err()
        {
            run(&[
                "ip",
                "netns",
                "exec",
                c,
                "sysctl",
                "-q",
                "net.mptcp.pm_type=1",
            ])?;
        }
        // In userspace mode the endpoint list is only an inventory: the kernel keeps it
        // but does not act on it.
        run(&[
            "ip",
            "-n",
            c,
            "mptcp",
            "endpoint",
            "add",
            CLIENT_ADDRS[1],
            "dev",
            CLIENT_IFS[1],
            "subflow",
        ])?;
        Ok(topo)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Run `f` on a fresh thread that has entered network namespace `ns`; sockets it creates
/// (netlink ones included) belong to that namespace for their whole life. A panic in `f`
/// is re-raised here.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    let handle = std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns only changes this thread's namespace; the fd is valid.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    });
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// `struct mptcp_info` fields the tests need, read with getsockopt(SOL_MPTCP, MPTCP_INFO).
#[derive(Debug)]
pub struct Info {
    pub token: u32,
    /// Subflows besides the initial one.
    pub extra_subflows: u8,
}

pub fn mptcp_info(fd: &impl AsRawFd) -> std::io::Result<Info> {
    const SOL_MPTCP: libc::c_int = 284;
    const MPTCP_INFO: libc::c_int = 1;
    let mut buf = [0u8; 128];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is writable for len bytes; the kernel writes at most len.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_MPTCP,
            MPTCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Info {
        extra_subflows: buf[0],
        token: u32::from_ne_bytes(buf[12..16].try_into().unwrap()),
    })
}
