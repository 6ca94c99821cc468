//! `cargo xtask chaos`: the simulated cluster over many seeds, or (with `--real N`) N
//! random graphs on real worker processes that are killed and paused while they run.
//!
//! The simulation is the `sim` test of `dagger-runtime`: the real driver core and real
//! worker cores joined by a virtual network (latency, closed links, partitions, paused
//! workers) in virtual time, every message through the real encoder, the invariants
//! checked after every step. It reads the number of seeds from `DAGGER_SIM_SEEDS` and a
//! first seed from `DAGGER_SIM_SEED` (to replay a failure it printed).
//!
//! The real runs are the `dagger-chaos` binary of `dagger-bench`: fresh local clusters over
//! QUIC, SIGKILL and SIGSTOP/SIGCONT of random worker processes at random times, every
//! result checked.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use crate::process;

/// Options of `cargo xtask chaos`.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed (a failing run prints its seed; pass it here with `--seeds 1` to
    /// replay it).
    #[arg(long)]
    seed: Option<u64>,
    /// Instead of the simulation, run this many random graphs on real worker processes,
    /// killing and pausing them while the graphs run.
    #[arg(long, value_name = "N")]
    real: Option<u64>,
}

/// The package and binary of the real-process runs.
const REAL_PACKAGE: &str = "dagger-bench";
const REAL_BINARY: &str = "dagger-chaos";

/// Builds `dagger-chaos` (`release` or the dev profile) and returns the command that runs
/// `graphs` graphs from seed `first`.
pub fn real_command(
    root: &Path,
    graphs: u64,
    first: Option<u64>,
    release: bool,
) -> Result<Command> {
    let mut build = process::cargo(root);
    build.args(["build", "-p", REAL_PACKAGE, "--bin", REAL_BINARY]);
    if release {
        build.arg("--release");
    }
    let status = process::run_inherited(&mut build)?;
    if !status.success() {
        bail!("`{}` exited with {status}", process::display(&build));
    }
    let dir = crate::metadata::Workspace::load(root)?
        .target_directory
        .join(if release { "release" } else { "debug" });
    let mut command = Command::new(dir.join(REAL_BINARY));
    command.current_dir(root);
    command.args(["--graphs", &graphs.to_string()]);
    if let Some(first) = first {
        command.args(["--seed", &first.to_string()]);
    }
    Ok(command)
}

/// The command that runs the simulation for `seeds` seeds, starting at `first`.
pub fn command(root: &Path, seeds: u64, first: Option<u64>) -> Command {
    let mut command = process::cargo(root);
    command.args([
        "test",
        "--release",
        "-p",
        "dagger-runtime",
        "--test",
        "sim",
        "--",
        "--nocapture",
    ]);
    command.env("DAGGER_SIM_SEEDS", seeds.to_string());
    if let Some(first) = first {
        command.env("DAGGER_SIM_SEED", first.to_string());
    }
    command
}

/// Runs `cargo xtask chaos`.
pub fn run(root: &Path, args: &ChaosArgs) -> Result<()> {
    if let Some(graphs) = args.real {
        let mut command = real_command(root, graphs, args.seed, true)?;
        let status = process::run_inherited(&mut command)?;
        if !status.success() {
            bail!("a real-process graph failed (its seed is printed above)");
        }
        return Ok(());
    }
    let mut command = command(root, args.seeds, args.seed);
    let started = Instant::now();
    let status = process::run_inherited(&mut command)?;
    let elapsed = started.elapsed();
    println!(
        "chaos: {} seed(s) in {:.1}s (build included)",
        args.seeds,
        elapsed.as_secs_f64()
    );
    if !status.success() {
        bail!("the simulated cluster failed (the failing seed is printed above)");
    }
    Ok(())
}
