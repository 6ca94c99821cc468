//! `cargo xtask`: development tasks of the dagger-rs workspace.
//!
//! - `cargo xtask test` runs every check the project has (layering, tests, optional-library
//!   suites, examples, formatting) and prints a summary table.
//! - `cargo xtask bench` builds `dagger-bench` in release mode, runs the benchmark workloads
//!   and prints the median of each figure as `dagger <ID> <metric> <value> <unit>`.
//! - `cargo xtask chaos --seeds N` runs the simulated cluster (the real driver and worker
//!   cores over a virtual network with faults) for N seeds and prints the time taken.
//! - `cargo xtask fuzz --cases N` runs the stable fuzz tests of the decoders and the cores
//!   with N cases each.
//! - `cargo xtask deps` prints the crate graph of the workspace and checks its layering.
//!
//! Every cargo invocation runs in the workspace root with the environment inherited from
//! the caller (the target directory is never overridden here).

mod bench;
mod chaos;
mod deps;
mod fuzz;
mod layering;
mod metadata;
mod process;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command line of `cargo xtask`.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Development tasks of the dagger-rs workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands of `cargo xtask`.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run every check: layering, unit and integration tests, the hwloc suite, the
    /// examples and formatting; print a summary table.
    Test(test::TestArgs),
    /// Build `dagger-bench` (release), run the benchmark workloads and print the median of
    /// each figure.
    Bench(bench::BenchArgs),
    /// Run the simulated cluster (real driver and worker cores, virtual network and time,
    /// random faults) for many seeds; print the time taken and any failing seed.
    Chaos(chaos::ChaosArgs),
    /// Run the stable fuzz tests (frame decoder, wire decoder, hostile peers against the
    /// cores) in release mode with many cases each.
    Fuzz(fuzz::FuzzArgs),
    /// Print the dependency graph of the workspace crates and check their layering.
    Deps,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = process::workspace_root();
    let result = match cli.command {
        Command::Test(args) => test::run(&root, &args),
        Command::Bench(args) => bench::run(&root, &args),
        Command::Chaos(args) => chaos::run(&root, &args),
        Command::Fuzz(args) => fuzz::run(&root, &args),
        Command::Deps => deps::run(&root),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
