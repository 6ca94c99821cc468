//! `cargo xtask chaos`: the simulated cluster over many seeds.
//!
//! The simulation is the `sim` test of `dagger-runtime`: the real driver core and real
//! worker cores joined by a virtual network (latency, closed links, partitions, paused
//! workers) in virtual time, every message through the real encoder, the invariants
//! checked after every step. It reads the number of seeds from `DAGGER_SIM_SEEDS` and a
//! first seed from `DAGGER_SIM_SEED` (to replay a failure it printed).

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
