//! Generates what the Debian package ships besides the binaries, from the same clap
//! definitions the binaries parse with: `xtask generated DIR` writes
//! `DIR/man/{mptcp-socksd,mptcpctl}.1.gz` and
//! `DIR/completions/{NAME.bash,_NAME,NAME.fish}` for both binaries.
//!
//! `packaging/build-deb` runs it before `cargo deb`. Generated files are never committed:
//! they are made anew for every package.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail, ensure};
use clap::CommandFactory;
use clap_complete::Shell;
use mptcp_socksd::Args;
use mptcp_socksd::ctl::CtlArgs;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [command, dir] if command == "generated" => generate(Path::new(dir)),
        _ => bail!("usage: xtask generated DIR   (man pages and completions into DIR)"),
    }
}

/// Writes `man/NAME.1.gz` and `completions/{NAME.bash,_NAME,NAME.fish}` for both binaries.
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
        // Debian ships man pages gzipped; cargo-deb leaves files below target/ as they are.
        // -n: no name or time stamp inside, so the same page gives the same bytes.
        let status = Command::new("gzip")
            .arg("-9nf")
            .arg(&path)
            .status()
            .context("cannot run gzip")?;
        ensure!(
            status.success(),
            "gzip {} failed ({status})",
            path.display()
        );
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut cmd = cmd.clone();
            clap_complete::generate_to(shell, &mut cmd, &name, &completions)
                .with_context(|| format!("cannot write the {shell} completion of {name}"))?;
        }
    }
    println!("man pages and completions in {}", dir.display());
    Ok(())
}
