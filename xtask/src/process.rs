//! Spawning child processes (mostly cargo) from the workspace root.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use anyhow::{Context, Result};

/// The root of the workspace (the parent of the `xtask` package directory).
///
/// Resolved at compile time from the manifest directory of this package, so it is correct
/// however `cargo xtask` is invoked from inside the workspace. Costs nothing.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// A `cargo` command that runs in `root`.
///
/// Uses the cargo that runs `cargo xtask` (the `CARGO` variable cargo sets for the
/// processes it runs), falling back to `cargo` on the `PATH`. The environment, the target
/// directory included, is inherited unchanged.
pub fn cargo(root: &Path) -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(program);
    command.current_dir(root);
    command
}

/// The command line of `command`, for display (`cargo test --workspace`).
///
/// The program is shown by its file name only, so the cargo path from `CARGO` does not
/// clutter the log.
pub fn display(command: &Command) -> String {
    let program = Path::new(command.get_program())
        .file_name()
        .unwrap_or_else(|| command.get_program());
    std::iter::once(program)
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `command` with inherited standard streams after echoing it as `$ <command>` on
/// stderr, and waits for it. Fails only when the process cannot be started; an unsuccessful exit is
/// returned as its [`ExitStatus`].
pub fn run_inherited(command: &mut Command) -> Result<ExitStatus> {
    eprintln!("$ {}", display(command));
    command
        .status()
        .with_context(|| format!("could not start `{}`", display(command)))
}

/// Runs `command` with its stdout and stderr captured (stdin closed) and waits for it.
/// Fails only when the process cannot be started.
pub fn run_captured(command: &mut Command) -> Result<Output> {
    command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", display(command)))
}

/// Whether `program args...` can be started and exits successfully (stdio discarded).
///
/// Used to probe for tools and system libraries (`pkg-config --exists hwloc`); a program
/// that is not installed counts as failure.
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
