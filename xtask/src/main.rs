//! `cargo xtask`: chores that need the project's own code.
//!
//! - `cargo xtask deb`: the Debian package, `target/debian/mptcp-socksd_*.deb`. Writes the
//!   man pages and shell completions (generated from the same clap definitions the
//!   binaries parse with) to `target/release/generated/`, then runs `cargo deb`, whose
//!   `[package.metadata.deb]` in `bins/Cargo.toml` picks them up. Needs cargo-deb
//!   (`cargo install cargo-deb --locked`).
//! - `cargo xtask generated DIR`: only the man pages and completions, into `DIR`.
//!
//! Generated files are never committed: they are made anew for every package.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use clap::CommandFactory;
use clap_complete::Shell;
use mptcp_socksd::Args;
use mptcp_socksd::ctl::CtlArgs;

fn main() -> anyhow::Result<()> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args.first().and_then(|a| a.to_str()) {
        Some("deb") => deb(&args[1..]),
        Some("generated") => match args.get(1) {
            Some(dir) => generate(Path::new(dir)),
            None => bail!("usage: cargo xtask generated DIR"),
        },
        _ => bail!(
            "usage: cargo xtask deb [CARGO-DEB FLAGS]   the Debian package\n       \
             cargo xtask generated DIR           man pages and completions only"
        ),
    }
}

/// The workspace's root (xtask/..).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// Where cargo builds: `CARGO_TARGET_DIR`, else `target/` in the workspace.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// Generates the man pages and completions where `bins/Cargo.toml`'s assets expect them,
/// then runs `cargo deb` with `extra` flags.
fn deb(extra: &[OsString]) -> anyhow::Result<()> {
    // cargo-deb replaces the `target/release/` of an asset's path with the real target
    // directory, so the generated files go below it.
    generate(&target_dir().join("release/generated"))?;
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(root())
        .args(["deb", "--package", "mptcp-socksd", "--locked"])
        .args(extra)
        .status()
        .context("cannot run cargo deb")?;
    ensure!(
        status.success(),
        "cargo deb failed ({status}); is cargo-deb installed? cargo install cargo-deb --locked"
    );
    Ok(())
}

/// Writes `man/NAME.1` and `completions/{NAME.bash,_NAME,NAME.fish}` for both binaries.
fn generate(dir: &Path) -> anyhow::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for sub in [&man, &completions] {
        std::fs::create_dir_all(sub).with_context(|| format!("cannot create {}", sub.display()))?;
    }
    for cmd in [Args::command(), CtlArgs::command()] {
        let name = cmd.get_name().to_owned();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut page)
            .with_context(|| format!("cannot render the man page of {name}"))?;
        let path = man.join(format!("{name}.1"));
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut cmd = cmd.clone();
            clap_complete::generate_to(shell, &mut cmd, &name, &completions)
                .with_context(|| format!("cannot write the {shell} completion of {name}"))?;
        }
    }
    println!("man pages and completions in {}", dir.display());
    Ok(())
}
