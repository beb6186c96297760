//! Running the setup commands (`ip`, `tc`) and the programs a test starts.

use std::ffi::OsStr;
use std::io;
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, ensure};

/// A child process that is killed (SIGKILL) and reaped when dropped. Derefs to `Child`.
#[derive(Debug)]
pub struct NsChild(Child);

impl NsChild {
    /// Spawns `cmd` (typically from [`super::Namespace::command`]).
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

/// Runs a command line of whitespace-free words (our names and addresses never contain
/// spaces), so the setup reads like the shell commands it replaces.
pub(crate) fn sh(command_line: &str) -> anyhow::Result<String> {
    let mut words = command_line.split_whitespace();
    let program = words.next().context("empty command line")?;
    run(program, words)
}

/// Runs `program args..` and returns its stdout.
pub(crate) fn run<I, S>(program: &str, args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    output_ok(&mut cmd)
}

/// Runs `cmd` with stdin closed; its stdout, or an error with its stderr.
///
/// # Errors
/// `cmd` cannot start or exits unsuccessfully (its stderr in the error).
pub fn output_ok(cmd: &mut Command) -> anyhow::Result<String> {
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
