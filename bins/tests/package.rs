//! The Debian package that `packaging/build-deb` builds (`.ci/run` builds it before the
//! tests): what it installs, its maintainer scripts, its systemd unit checked by
//! `systemd-analyze verify`, and the daemon run from the package's own paths with its
//! default config, serving a SOCKS request in network namespaces.
//!
//! The package is never installed on this host: it is unpacked into a temporary
//! directory, and the daemon sees it at /usr and /etc through overlay mounts in a mount
//! namespace of its own. There is no systemd here to run the unit itself; the daemon runs
//! as an unprivileged user with CAP_NET_ADMIN only, as the unit says.
//!
//! Without a package (no `packaging/build-deb` run), the tests skip, or fail under `CI`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use mptcp_test_support::netns::{Namespace, NsChild, output_ok};
use mptcp_test_support::socks::Target;
use mptcp_test_support::socks::blocking as socks;

/// The newest `mptcp-socksd_*.deb` in the target directory (or `MPTCP_SOCKS_DEB`), or a
/// skip (a failure under CI) saying how to build one.
fn package() -> Option<PathBuf> {
    if let Some(deb) = std::env::var_os("MPTCP_SOCKS_DEB") {
        return Some(PathBuf::from(deb));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let newest = std::fs::read_dir(target.join("debian"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mptcp-socksd_") && n.ends_with(".deb"))
        })
        .max_by_key(|path| path.metadata().and_then(|m| m.modified()).ok());
    if newest.is_none() {
        mptcp_test_support::skip(
            "no Debian package in target/debian: build it with `packaging/build-deb` (.ci/run does)",
        );
    }
    newest
}

/// The package unpacked into a temporary directory.
fn unpacked(deb: &Path) -> anyhow::Result<tempfile::TempDir> {
    let root = tempfile::tempdir()?;
    output_ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root.path()))?;
    Ok(root)
}

/// Where the package puts its unit: /lib or /usr/lib, as cargo-deb decides.
fn unit_path(root: &Path) -> anyhow::Result<PathBuf> {
    ["lib/systemd/system", "usr/lib/systemd/system"]
        .iter()
        .map(|dir| root.join(dir).join("mptcp-socksd.service"))
        .find(|path| path.exists())
        .context("the package has no mptcp-socksd.service")
}

/// The values of `key=` in the unit, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_package_installs_binaries_config_unit_man_pages_and_completions() -> anyhow::Result<()> {
    let Some(deb) = package() else { return Ok(()) };
    let listing = output_ok(Command::new("dpkg-deb").arg("-c").arg(&deb))?;
    // `-rwxr-xr-x root/root 123 2026-01-01 00:00 ./usr/bin/mptcp-socksd`
    let entry = |path: &str| {
        listing
            .lines()
            .find(|line| line.ends_with(&format!(" .{path}")))
            .map(|line| {
                line.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
    };
    for (path, mode) in [
        ("/usr/bin/mptcp-socksd", "-rwxr-xr-x"),
        ("/usr/bin/mptcpctl", "-rwxr-xr-x"),
        ("/etc/mptcp-socks/mptcp-socksd.toml", "-rw-r--r--"),
        ("/usr/lib/sysusers.d/mptcp-socksd.conf", "-rw-r--r--"),
        ("/usr/share/man/man1/mptcp-socksd.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/mptcpctl.1.gz", "-rw-r--r--"),
        (
            "/usr/share/bash-completion/completions/mptcp-socksd",
            "-rw-r--r--",
        ),
        (
            "/usr/share/bash-completion/completions/mptcpctl",
            "-rw-r--r--",
        ),
        (
            "/usr/share/zsh/vendor-completions/_mptcp-socksd",
            "-rw-r--r--",
        ),
        ("/usr/share/zsh/vendor-completions/_mptcpctl", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/mptcp-socksd.fish",
            "-rw-r--r--",
        ),
        (
            "/usr/share/fish/vendor_completions.d/mptcpctl.fish",
            "-rw-r--r--",
        ),
    ] {
        assert_eq!(entry(path).as_deref(), Some(mode), "{path} in\n{listing}");
    }
    assert!(
        entry("/lib/systemd/system/mptcp-socksd.service").is_some()
            || entry("/usr/lib/systemd/system/mptcp-socksd.service").is_some(),
        "no unit in\n{listing}"
    );

    let root = unpacked(&deb)?;
    // The man pages and completions are the clap definitions' (the newest flags are in).
    let man_page = |name: &str| {
        let page = root.path().join(format!("usr/share/man/man1/{name}.1.gz"));
        output_ok(Command::new("gzip").arg("-dc").arg(page))
    };
    let man = man_page("mptcp-socksd")?;
    assert!(man.contains(".TH mptcp-socksd"), "{man}");
    assert!(man.contains("print\\-config"), "{man}");
    let man = man_page("mptcpctl")?;
    assert!(man.contains("doctor"), "{man}");
    for completion in [
        "usr/share/bash-completion/completions/mptcp-socksd",
        "usr/share/zsh/vendor-completions/_mptcp-socksd",
        "usr/share/fish/vendor_completions.d/mptcp-socksd.fish",
    ] {
        let text = std::fs::read_to_string(root.path().join(completion))?;
        assert!(text.contains("print-config"), "{completion}");
    }
    let ctl_bash = std::fs::read_to_string(
        root.path()
            .join("usr/share/bash-completion/completions/mptcpctl"),
    )?;
    assert!(ctl_bash.contains("learned"), "mptcpctl's subcommands");
    // The shipped config is the repository's.
    let shipped = std::fs::read_to_string(root.path().join("etc/mptcp-socks/mptcp-socksd.toml"))?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/mptcp-socksd.toml");
    assert_eq!(shipped, std::fs::read_to_string(source)?);
    let sysusers =
        std::fs::read_to_string(root.path().join("usr/lib/sysusers.d/mptcp-socksd.conf"))?;
    assert!(
        sysusers.lines().any(|l| l.starts_with("u mptcp-socks ")),
        "{sysusers}"
    );
    Ok(())
}

#[test]
fn the_maintainer_scripts_keep_the_rules_on_remove_and_stop_the_service() -> anyhow::Result<()> {
    let Some(deb) = package() else { return Ok(()) };
    let control = tempfile::tempdir()?;
    let dir = control.path().join("DEBIAN");
    output_ok(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&dir))?;
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    assert_eq!(
        read("conffiles").trim(),
        "/etc/mptcp-socks/mptcp-socksd.toml"
    );
    let prerm = read("prerm");
    assert!(
        prerm.contains("deb-systemd-invoke stop mptcp-socksd.service"),
        "prerm stops the service:\n{prerm}"
    );
    let postinst = read("postinst");
    assert!(postinst.contains("systemd-sysusers"), "{postinst}");
    // Not enabled on install (an operator enables it after reading the config): only a
    // unit enabled before is enabled again.
    assert!(
        postinst.contains("deb-systemd-helper debian-installed mptcp-socksd.service"),
        "{postinst}"
    );
    assert!(
        !postinst.contains("new installations run enable"),
        "{postinst}"
    );
    // The state directory (rule file, certificate) goes only on purge: the script run
    // in a mount namespace whose /etc and /var/lib write to a temporary directory.
    if mptcp_test_support::require_root("to run postrm with /etc and /var/lib overlaid") {
        let sandbox = tempfile::tempdir()?;
        let mut mounts = String::from("set -e\n");
        for (dir, name) in [("/etc", "etc"), ("/var/lib", "var")] {
            let upper = sandbox.path().join(name).join("upper");
            let work = sandbox.path().join(name).join("work");
            std::fs::create_dir_all(&upper)?;
            std::fs::create_dir_all(&work)?;
            mounts.push_str(&format!(
                "mount -t overlay pkg-{name} -o lowerdir={dir},upperdir={},workdir={} {dir}\n",
                upper.display(),
                work.display()
            ));
        }
        let postrm = dir.join("postrm");
        let script = format!(
            "{mounts}mkdir -p /var/lib/mptcp-socks\n\
             echo '10.0.0.5,0,default,default,' > /var/lib/mptcp-socks/rules\n\
             sh {postrm} remove\n\
             test -f /var/lib/mptcp-socks/rules && echo kept-on-remove\n\
             sh {postrm} purge\n\
             test ! -e /var/lib/mptcp-socks && echo gone-on-purge\n",
            postrm = postrm.display()
        );
        let out = output_ok(Command::new("unshare").args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ]))?;
        assert_eq!(out, "kept-on-remove\ngone-on-purge\n");
    }
    let control = read("control");
    assert!(control.contains("Package: mptcp-socksd"), "{control}");
    assert!(control.contains("Section: net"), "{control}");
    Ok(())
}

#[test]
fn the_unit_passes_systemd_analyze_and_keeps_its_sandbox() -> anyhow::Result<()> {
    let Some(deb) = package() else { return Ok(()) };
    let root = unpacked(&deb)?;
    let unit_file = unit_path(root.path())?;
    let unit = std::fs::read_to_string(&unit_file)?;
    for (key, value) in [
        ("Restart", "on-failure"),
        ("User", "mptcp-socks"),
        ("StateDirectory", "mptcp-socks"),
        ("AmbientCapabilities", "CAP_NET_ADMIN"),
        ("CapabilityBoundingSet", "CAP_NET_ADMIN"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        ),
        ("LimitNOFILE", "65536"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        (
            "ExecStart",
            "/usr/bin/mptcp-socksd --config /etc/mptcp-socks/mptcp-socksd.toml",
        ),
    ] {
        assert_eq!(unit_values(&unit, key), [value], "{key}");
    }
    // It would forbid the userspace path manager's sysctl switch.
    assert!(unit_values(&unit, "ProtectKernelTunables").is_empty());

    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        mptcp_test_support::skip("no systemd-analyze (apt-get install systemd)");
        return Ok(());
    };
    if !mptcp_test_support::require_root("to overlay the package on /usr for systemd-analyze") {
        return Ok(());
    }
    // The unit where the package puts it and its ExecStart binary present: the package's
    // /usr over the host's, in a mount namespace of its own (--root would look for
    // /bin/kill and systemd's own targets in the package too).
    let unit_in_usr = unit_file.strip_prefix(root.path())?;
    let script = format!(
        "set -e\nmount -t overlay pkg-usr -o lowerdir={root}/usr:/usr /usr\n\
         exec {analyze} verify /{unit}\n",
        root = root.path().display(),
        unit = unit_in_usr.display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("mptcp-socksd.service"))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify:\n{stderr}");
    Ok(())
}

/// How long the daemon may take to listen.
const START: Duration = Duration::from_secs(20);

#[test]
fn the_installed_daemon_serves_socks_with_the_default_config() -> anyhow::Result<()> {
    if !mptcp_test_support::require_netns() {
        return Ok(());
    }
    let Some(deb) = package() else { return Ok(()) };
    let root = unpacked(&deb)?;
    let unit = std::fs::read_to_string(unit_path(root.path())?)?;
    let exec_start = unit_values(&unit, "ExecStart")
        .first()
        .context("ExecStart")?
        .to_string();
    // /var/lib of the daemon's mount namespace: the host's, with writes going here.
    let var = tempfile::tempdir()?;
    for dir in ["upper", "work"] {
        std::fs::create_dir(var.path().join(dir))?;
    }

    // A host that is not the proxy's own: the proxy refuses its own addresses by default.
    let proxy = Namespace::new("pkgbox")?;
    let site = Namespace::new("pkgsite")?;
    proxy.add_veth("up0", &site, "down0")?;
    proxy.add_address("up0", IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)), 24)?;
    site.add_address("down0", IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2)), 24)?;
    let echo = site.in_netns(|| TcpListener::bind("10.77.0.2:0"))?;
    let echo_addr = echo.local_addr()?;
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = echo.accept() {
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });

    // The package's /usr and /etc over the host's, a state directory as systemd's
    // StateDirectory= makes it, then the unit's own command line.
    let overlays = format!(
        "set -e\n\
         mount -t overlay pkg-usr -o lowerdir={root}/usr:/usr /usr\n\
         mount -t overlay pkg-etc -o lowerdir={root}/etc:/etc /etc\n\
         mount -t overlay pkg-var -o lowerdir=/var/lib,upperdir={var}/upper,workdir={var}/work /var/lib\n",
        root = root.path().display(),
        var = var.path().display(),
    );
    // As the unit runs it: not root (nobody stands in for the package's user, which only
    // exists where the package is installed), with CAP_NET_ADMIN alone and no new
    // privileges.
    let daemon_script = format!(
        "{overlays}mkdir -p /var/lib/mptcp-socks\n\
         chown 65534:65534 /var/lib/mptcp-socks\n\
         cd /var/lib/mptcp-socks\n\
         exec setpriv --reuid=65534 --regid=65534 --clear-groups \
         --inh-caps=-all,+net_admin --ambient-caps=-all,+net_admin \
         --bounding-set=-all,+net_admin --no-new-privs {exec_start}\n"
    );
    let mut cmd = proxy.command("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &daemon_script,
    ])
    .env_remove("RUST_LOG")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut daemon = NsChild::spawn(&mut cmd)?;

    let socks_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 1080));
    let deadline = Instant::now() + START;
    while proxy
        .in_netns(|| TcpStream::connect_timeout(&socks_addr, Duration::from_secs(1)))
        .is_err()
    {
        if let Some(status) = daemon.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut pipe) = daemon.stderr.take() {
                pipe.read_to_string(&mut stderr)?;
            }
            bail!("the packaged daemon exited ({status}):\n{stderr}");
        }
        ensure!(Instant::now() < deadline, "nothing listens on {socks_addr}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A SOCKS request from a loopback client (a local network: served without a
    // password by default) to the other host, echoed back.
    proxy.in_netns(|| -> anyhow::Result<()> {
        let mut relayed = socks::connect(socks_addr, Target::Addr(echo_addr), None)?;
        relayed.write_all(b"through the package")?;
        let mut back = [0u8; 19];
        relayed.read_exact(&mut back)?;
        assert_eq!(&back, b"through the package");
        Ok(())
    })?;

    // The package's mptcpctl finds the API through the default config file, and the rule
    // lands in the state directory.
    let ctl_script = format!("{overlays}exec /usr/bin/mptcpctl rules add 192.0.2.77 --mptcp off\n");
    let out = proxy
        .command("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &ctl_script,
        ])
        .env_remove("MPTCP_SOCKS_API")
        .env_remove("MPTCP_SOCKS_API_TOKEN")
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "mptcpctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = std::fs::read_to_string(var.path().join("upper/mptcp-socks/rules"))?;
    assert!(rules.contains("192.0.2.77,0,"), "{rules}");

    assert!(daemon.try_wait()?.is_none(), "the daemon stopped");
    Ok(())
}
