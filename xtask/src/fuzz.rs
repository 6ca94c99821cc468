//! `cargo xtask fuzz`: the stable fuzz tests with many cases.
//!
//! Each decoder's crate has a test that feeds it generated hostile input: raw bytes, and
//! valid encodings damaged (bits flipped, cut short, lengths rewritten, bytes inserted),
//! plus programs of lying messages against the driver and worker cores. They read the
//! number of cases from `DAGGER_FUZZ_CASES` (2000 by default, so that `cargo test` stays
//! quick). The same checks run coverage-guided under cargo-fuzz (`fuzz/`, nightly only).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use crate::process;

/// The fuzz tests: (package, test target).
pub const TARGETS: &[(&str, &str)] = &[
    ("dagger-net", "fuzz_codec"),
    ("dagger-core", "fuzz_wire"),
    ("dagger-runtime", "hostile"),
];

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// How many cases each fuzz test runs.
    #[arg(long, default_value_t = 100_000)]
    cases: u32,
}

/// The command that runs one fuzz test in release mode with `cases` cases.
pub fn command(root: &Path, package: &str, test: &str, cases: u32) -> Command {
    let mut command = process::cargo(root);
    command.args(["test", "--release", "-p", package, "--test", test]);
    command.env("DAGGER_FUZZ_CASES", cases.to_string());
    command
}

/// Runs every fuzz test with `cases` cases; the first failure stops.
pub fn run_all(root: &Path, cases: u32) -> Result<bool> {
    for (package, test) in TARGETS {
        let mut command = command(root, package, test, cases);
        if !process::run_inherited(&mut command)?.success() {
            eprintln!("fuzz: `{}` failed", process::display(&command));
            return Ok(false);
        }
    }
    Ok(true)
}

/// Runs `cargo xtask fuzz`.
pub fn run(root: &Path, args: &FuzzArgs) -> Result<()> {
    let started = Instant::now();
    let ok = run_all(root, args.cases)?;
    println!(
        "fuzz: {} case(s) per target, {} targets, in {:.1}s (build included)",
        args.cases,
        TARGETS.len(),
        started.elapsed().as_secs_f64()
    );
    if !ok {
        bail!("a fuzz test failed (proptest prints the smallest failing input above)");
    }
    Ok(())
}
