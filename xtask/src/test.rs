//! `cargo xtask test`: every check of the project, one step after another, with a summary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;

use crate::layering;
use crate::metadata::Workspace;
use crate::process;

/// Debian packages the hwloc suite needs.
const HWLOC_PACKAGES: &str = "libhwloc-dev libudev-dev pkg-config";

/// Debian packages the OpenCL suite needs: the ICD loader to link against and PoCL, an
/// OpenCL implementation on the CPU.
const OPENCL_PACKAGES: &str = "ocl-icd-opencl-dev pocl-opencl-icd";

/// Debian packages the wgpu suite needs: the Vulkan loader and lavapipe, Vulkan on the CPU.
const VULKAN_PACKAGES: &str = "libvulkan1 mesa-vulkan-drivers";

/// Examples run (not only built) by the `examples` steps, with their arguments.
const RUN_EXAMPLES: &[(&str, &[&str])] = &[
    ("topology", &[]),
    ("custom_processor", &[]),
    ("manual_worker", &[]),
    ("fault_tolerance", &[]),
    ("dynamic_pool", &[]),
    // Writes its trace, Gantt chart and graphs under the build folder.
    ("timeline", &["target/timeline-example"]),
];

/// Benchmark workloads run once, in the debug build, by the `bench:*` steps: their lines
/// must print and their checks pass (the figures of a debug build are not reported).
const SMOKE_WORKLOADS: &[&str] = &["W6", "W1t"];

/// Seeds of the simulated cluster run by the `chaos` step.
const CHAOS_SEEDS: u64 = 1000;

/// Random graphs run on real, killed and paused worker processes by the `chaos:real` step.
const REAL_CHAOS_GRAPHS: u64 = 6;
/// Cases per target run by the `fuzz` step (about a minute in all on 2 cores, build
/// included).
const FUZZ_CASES: u32 = 100_000;

/// Transport crates outside the workspace whose own tests (the transport conformance suite)
/// the `transports` step runs.
const EXTERNAL_TRANSPORTS: &[&str] = &["transports/unix-transport"];

/// Environment variable that has the effect of `--require-all` when set to `1`, `true` or
/// `yes`.
const REQUIRE_ALL_ENV: &str = "DAGGER_REQUIRE_ALL";

/// Options of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Treat every skipped step (missing system library or tool) as a failure. Also
    /// enabled by DAGGER_REQUIRE_ALL=1.
    #[arg(long)]
    require_all: bool,
    /// Keep going after a failed step (and pass --no-fail-fast to cargo test).
    #[arg(long)]
    no_fail_fast: bool,
}

/// How one step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed {
        reason: String,
    },
    /// Not run because something it needs is absent; `remedy` says how to get it.
    Skipped {
        reason: String,
        remedy: String,
    },
    /// Not run because an earlier step failed.
    NotRun,
}

impl Outcome {
    fn failed(reason: impl Into<String>) -> Self {
        Self::Failed {
            reason: reason.into(),
        }
    }

    /// `Passed` when `status` is a success, else a failure naming the command.
    fn from_status(command: &Command, status: std::process::ExitStatus) -> Self {
        if status.success() {
            Self::Passed
        } else {
            Self::failed(format!(
                "`{}` exited with {status}",
                process::display(command)
            ))
        }
    }

    /// The text of the result column of the summary.
    fn describe(&self) -> String {
        match self {
            Self::Passed => "passed".into(),
            Self::Failed { reason } => format!("FAILED: {reason}"),
            Self::Skipped { reason, remedy } => format!("skipped: {reason} ({remedy})"),
            Self::NotRun => "not run (an earlier step failed)".into(),
        }
    }
}

/// Everything the steps share.
struct Context {
    root: PathBuf,
    workspace: Workspace,
    no_fail_fast: bool,
}

impl Context {
    fn cargo(&self) -> Command {
        process::cargo(&self.root)
    }

    /// Adds `--no-fail-fast` to a `cargo test` command when asked for.
    fn cargo_test(&self) -> Command {
        let mut command = self.cargo();
        command.arg("test");
        if self.no_fail_fast {
            command.arg("--no-fail-fast");
        }
        command
    }
}

type StepFn = Box<dyn Fn(&Context) -> Result<Outcome>>;

/// The steps, in the order they run.
fn steps() -> Vec<(String, StepFn)> {
    let mut steps: Vec<(String, StepFn)> = vec![
        ("layering".into(), Box::new(layering_step)),
        ("no-quic".into(), Box::new(no_quic_step)),
        ("unit+integration".into(), Box::new(unit_integration_step)),
        ("chaos".into(), Box::new(chaos_step)),
        ("chaos:real".into(), Box::new(real_chaos_step)),
        ("fuzz".into(), Box::new(fuzz_step)),
        ("transports".into(), Box::new(transports_step)),
        ("hwloc".into(), Box::new(hwloc_step)),
        ("features".into(), Box::new(features_step)),
        ("clippy".into(), Box::new(clippy_step)),
        ("doc".into(), Box::new(doc_step)),
        ("devices:opencl".into(), Box::new(opencl_step)),
        ("devices:wgpu".into(), Box::new(wgpu_step)),
        ("devices:cuda".into(), Box::new(cuda_step)),
        ("devices:graph".into(), Box::new(device_graph_step)),
        ("examples:build".into(), Box::new(examples_build_step)),
        ("examples:gpu_saxpy".into(), Box::new(gpu_example_step)),
    ];
    for (example, args) in RUN_EXAMPLES {
        steps.push((
            format!("examples:{example}"),
            Box::new(move |ctx: &Context| example_run_step(ctx, example, args)),
        ));
    }
    for id in SMOKE_WORKLOADS {
        steps.push((
            format!("bench:{id}"),
            Box::new(move |ctx: &Context| bench_smoke_step(ctx, id)),
        ));
    }
    steps.push(("fmt".into(), Box::new(fmt_step)));
    steps
}

/// Runs `cargo xtask test`. Fails (non-zero exit) when any step failed.
pub fn run(root: &Path, args: &TestArgs) -> Result<()> {
    let require_all = args.require_all || env_flag(REQUIRE_ALL_ENV);
    if require_all {
        // The suites that find their system software at run time (devices, sshd, Slurm,
        // a browser) read it: under it a missing piece fails instead of skipping.
        std::env::set_var(REQUIRE_ALL_ENV, "1");
    }
    let ctx = Context {
        root: root.to_path_buf(),
        workspace: Workspace::load(root)?,
        no_fail_fast: args.no_fail_fast,
    };
    let steps = steps();
    let total = steps.len();
    let mut results: Vec<(String, Outcome, Duration)> = Vec::with_capacity(total);
    let mut any_failed = false;
    for (index, (name, step)) in steps.into_iter().enumerate() {
        if any_failed && !args.no_fail_fast {
            results.push((name, Outcome::NotRun, Duration::ZERO));
            continue;
        }
        println!("\n==> [{}/{total}] {name}", index + 1);
        let started = Instant::now();
        let mut outcome = step(&ctx).unwrap_or_else(|err| Outcome::failed(format!("{err:#}")));
        if require_all {
            if let Outcome::Skipped { reason, remedy } = &outcome {
                outcome = Outcome::failed(format!(
                    "skipped ({reason}; {remedy}) but all steps are required"
                ));
            }
        }
        let elapsed = started.elapsed();
        println!("<== {name}: {}", outcome.describe());
        any_failed |= matches!(outcome, Outcome::Failed { .. });
        results.push((name, outcome, elapsed));
    }
    print_summary(&results, require_all);
    let failed = results
        .iter()
        .filter(|(_, outcome, _)| matches!(outcome, Outcome::Failed { .. }))
        .count();
    if failed > 0 {
        bail!("{failed} step(s) failed");
    }
    Ok(())
}

/// Whether the environment variable `name` is set to `1`, `true` or `yes`.
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| {
        matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes"
        )
    })
}

fn print_summary(results: &[(String, Outcome, Duration)], require_all: bool) {
    let width = results
        .iter()
        .map(|(name, _, _)| name.len())
        .max()
        .unwrap_or(0)
        .max("step".len());
    println!(
        "\n==> summary{}",
        if require_all {
            " (all steps required)"
        } else {
            ""
        }
    );
    println!("{:<width$}  {:>8}  result", "step", "time");
    for (name, outcome, elapsed) in results {
        let time = if *outcome == Outcome::NotRun {
            "-".to_string()
        } else {
            format!("{:.1}s", elapsed.as_secs_f64())
        };
        println!("{name:<width$}  {time:>8}  {}", outcome.describe());
    }
}

fn layering_step(ctx: &Context) -> Result<Outcome> {
    let violations = layering::check_and_report(&ctx.root, &ctx.workspace)?;
    Ok(if violations.is_empty() {
        Outcome::Passed
    } else {
        Outcome::failed(format!("{} layering violation(s)", violations.len()))
    })
}

/// Without its default features the facade must not reach QUIC at all: in-process and
/// user transports only.
fn no_quic_step(ctx: &Context) -> Result<Outcome> {
    let mut command = ctx.cargo();
    command.args([
        "tree",
        "-p",
        "dagger",
        "--no-default-features",
        "-e",
        "normal",
        "-i",
        "quinn",
    ]);
    let out = process::run_captured(&mut command)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // `cargo tree -i` fails with "did not match any packages" when the crate is absent.
    if stdout.contains("quinn v") {
        println!("{stdout}");
        return Ok(Outcome::failed(
            "`dagger` without default features depends on quinn",
        ));
    }
    if out.status.success() || stderr.contains("did not match any packages") {
        println!("dagger --no-default-features: no quinn in the tree");
        Ok(Outcome::Passed)
    } else {
        Ok(Outcome::failed(format!("`cargo tree` failed: {stderr}")))
    }
}

/// The simulated cluster over many seeds (see `cargo xtask chaos`).
fn chaos_step(ctx: &Context) -> Result<Outcome> {
    let mut command = crate::chaos::command(&ctx.root, CHAOS_SEEDS, None);
    let status = process::run_inherited(&mut command)?;
    Ok(Outcome::from_status(&command, status))
}

/// Random graphs on real worker processes that are SIGKILLed and SIGSTOPped while they run
/// (see `cargo xtask chaos --real`), built with the dev profile the other steps share.
fn real_chaos_step(ctx: &Context) -> Result<Outcome> {
    let mut command = crate::chaos::real_command(&ctx.root, REAL_CHAOS_GRAPHS, None, false)?;
    let status = process::run_inherited(&mut command)?;
    Ok(Outcome::from_status(&command, status))
}

/// The stable fuzz tests of the decoders and the cores, in release mode with many cases.
fn fuzz_step(ctx: &Context) -> Result<Outcome> {
    Ok(if crate::fuzz::run_all(&ctx.root, FUZZ_CASES)? {
        Outcome::Passed
    } else {
        Outcome::failed(format!(
            "a fuzz test failed with {FUZZ_CASES} cases (see its output above)"
        ))
    })
}

/// Transport crates outside the workspace, built against the workspace's crates, pass the
/// transport conformance suite.
fn transports_step(ctx: &Context) -> Result<Outcome> {
    let mut failures = Vec::new();
    for dir in EXTERNAL_TRANSPORTS {
        let manifest = ctx.root.join(dir).join("Cargo.toml");
        if !manifest.exists() {
            failures.push(format!("{} is missing", manifest.display()));
            continue;
        }
        let mut command = ctx.cargo_test();
        command.arg("--manifest-path").arg(&manifest);
        // Share the workspace's build directory so dependencies build once.
        if std::env::var_os("CARGO_TARGET_DIR").is_none() {
            command.env("CARGO_TARGET_DIR", ctx.root.join("target"));
        }
        let status = process::run_inherited(&mut command)?;
        if let Outcome::Failed { reason } = Outcome::from_status(&command, status) {
            failures.push(reason);
        }
    }
    Ok(if failures.is_empty() {
        Outcome::Passed
    } else {
        Outcome::failed(failures.join("; "))
    })
}

/// Every feature alone, and no features, build for every crate (`cargo hack`); all
/// features together are built by the clippy step.
fn features_step(ctx: &Context) -> Result<Outcome> {
    let mut probe = ctx.cargo();
    probe.args(["hack", "--version"]);
    let available = process::run_captured(&mut probe).is_ok_and(|out| out.status.success());
    if !available {
        return Ok(Outcome::Skipped {
            reason: "cargo-hack is not installed".into(),
            remedy: "cargo install cargo-hack".into(),
        });
    }
    let mut command = ctx.cargo();
    command.args([
        "hack",
        "check",
        "--workspace",
        "--each-feature",
        "--no-dev-deps",
    ]);
    // The hwloc feature needs libhwloc; without it, that feature is left out here (the
    // hwloc step reports it as skipped).
    if !process::succeeds("pkg-config", &["--exists", "hwloc"]) {
        command.args(["--exclude-features", "hwloc"]);
    }
    let status = process::run_inherited(&mut command)?;
    Ok(Outcome::from_status(&command, status))
}

/// `cargo clippy` over every target with warnings denied (all features where the system
/// libraries allow).
fn clippy_step(ctx: &Context) -> Result<Outcome> {
    let mut probe = ctx.cargo();
    probe.args(["clippy", "--version"]);
    let available = process::run_captured(&mut probe).is_ok_and(|out| out.status.success());
    if !available {
        return Ok(Outcome::Skipped {
            reason: "clippy is not installed".into(),
            remedy: "rustup component add clippy".into(),
        });
    }
    let mut command = ctx.cargo();
    command.args(["clippy", "--workspace", "--all-targets"]);
    if process::succeeds("pkg-config", &["--exists", "hwloc"]) {
        command.arg("--all-features");
    }
    command.args(["--", "-D", "warnings"]);
    let status = process::run_inherited(&mut command)?;
    Ok(Outcome::from_status(&command, status))
}

/// The API documentation builds with warnings (broken links, missing docs) denied.
fn doc_step(ctx: &Context) -> Result<Outcome> {
    let mut command = ctx.cargo();
    command.args(["doc", "--workspace", "--no-deps"]);
    command.env("RUSTDOCFLAGS", "-D warnings");
    let status = process::run_inherited(&mut command)?;
    Ok(Outcome::from_status(&command, status))
}

fn unit_integration_step(ctx: &Context) -> Result<Outcome> {
    let mut command = ctx.cargo_test();
    command.arg("--workspace");
    let status = process::run_inherited(&mut command)?;
    Ok(Outcome::from_status(&command, status))
}

fn hwloc_step(ctx: &Context) -> Result<Outcome> {
    let missing = if !process::succeeds("pkg-config", &["--version"]) {
        Some("pkg-config is not installed")
    } else if !process::succeeds("pkg-config", &["--exists", "hwloc"]) {
        Some("pkg-config cannot find hwloc")
    } else if !process::succeeds("pkg-config", &["--exists", "libudev"]) {
        Some("pkg-config cannot find libudev")
    } else {
        None
    };
    if let Some(reason) = missing {
        return Ok(Outcome::Skipped {
            reason: reason.into(),
            remedy: format!("install {HWLOC_PACKAGES}"),
        });
    }
    cargo_tests(
        ctx,
        &[
            &["-p", "dagger-proc", "--features", "hwloc"],
            &["-p", "dagger", "--features", "hwloc"],
        ],
    )
}

/// Why the OpenCL suites cannot build here, if they cannot: the `ocl` crate links the ICD
/// loader (`libOpenCL.so`, from `ocl-icd-opencl-dev`).
fn opencl_missing() -> Option<&'static str> {
    let linkable = process::succeeds("pkg-config", &["--exists", "OpenCL"])
        || Path::new("/usr/lib/x86_64-linux-gnu/libOpenCL.so").exists()
        || Path::new("/usr/lib/libOpenCL.so").exists();
    (!linkable).then_some("the OpenCL ICD loader (libOpenCL.so) is not installed")
}

/// Why the wgpu suites cannot run here, if they cannot: wgpu loads the Vulkan loader
/// (`libvulkan.so.1`) at run time.
fn vulkan_missing() -> Option<&'static str> {
    let present = [
        "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
        "/usr/lib/libvulkan.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    (!present).then_some("the Vulkan loader (libvulkan.so.1) is not installed")
}

/// The skip of a step that needs both OpenCL and Vulkan, if either is missing.
fn both_device_runtimes_missing() -> Option<Outcome> {
    opencl_missing()
        .or(vulkan_missing())
        .map(|reason| Outcome::Skipped {
            reason: reason.into(),
            remedy: format!("install {OPENCL_PACKAGES} {VULKAN_PACKAGES}"),
        })
}

/// Runs `cargo test` with each argument list in turn; the first failure ends it (all of
/// them are run with `--no-fail-fast`).
fn cargo_tests(ctx: &Context, runs: &[&[&str]]) -> Result<Outcome> {
    let mut failures = Vec::new();
    for args in runs {
        let mut command = ctx.cargo_test();
        command.args(*args);
        let status = process::run_inherited(&mut command)?;
        if let Outcome::Failed { reason } = Outcome::from_status(&command, status) {
            failures.push(reason);
            if !ctx.no_fail_fast {
                break;
            }
        }
    }
    Ok(if failures.is_empty() {
        Outcome::Passed
    } else {
        Outcome::failed(failures.join("; "))
    })
}

/// The OpenCL backend on a real OpenCL implementation (PoCL in CI): its own suite, then
/// kernel tasks and memory pressure in worker processes.
fn opencl_step(ctx: &Context) -> Result<Outcome> {
    if let Some(reason) = opencl_missing() {
        return Ok(Outcome::Skipped {
            reason: reason.into(),
            remedy: format!("install {OPENCL_PACKAGES}"),
        });
    }
    cargo_tests(
        ctx,
        &[
            &[
                "-p",
                "dagger-proc",
                "--features",
                "opencl",
                "--test",
                "opencl",
            ],
            &[
                "-p",
                "dagger",
                "--features",
                "opencl",
                "--test",
                "devices",
                "--test",
                "device_memory",
            ],
        ],
    )
}

/// The wgpu backend on a real Vulkan driver (lavapipe in CI).
fn wgpu_step(ctx: &Context) -> Result<Outcome> {
    if let Some(reason) = vulkan_missing() {
        return Ok(Outcome::Skipped {
            reason: reason.into(),
            remedy: format!("install {VULKAN_PACKAGES}"),
        });
    }
    cargo_tests(
        ctx,
        &[
            &["-p", "dagger-proc", "--features", "wgpu", "--test", "wgpu"],
            &[
                "-p",
                "dagger",
                "--features",
                "wgpu",
                "--test",
                "devices",
                "--test",
                "device_memory",
            ],
        ],
    )
}

/// The CUDA backend builds everywhere (the driver is loaded at run time); its suite runs
/// where a CUDA driver and device exist and says `skipped` per test where not. Never a
/// skipped step: building and the clean skip are what is checked without a GPU.
fn cuda_step(ctx: &Context) -> Result<Outcome> {
    cargo_tests(
        ctx,
        // `--nocapture`: each test that finds no driver prints why it skipped.
        &[&[
            "-p",
            "dagger-proc",
            "--features",
            "cuda",
            "--test",
            "cuda",
            "--",
            "--nocapture",
        ]],
    )
}

/// One graph across device kinds (CPU → OpenCL → wgpu → CPU), with every backend built in.
fn device_graph_step(ctx: &Context) -> Result<Outcome> {
    if let Some(skipped) = both_device_runtimes_missing() {
        return Ok(skipped);
    }
    cargo_tests(
        ctx,
        &[&[
            "-p",
            "dagger",
            "--features",
            "opencl,wgpu,cuda",
            "--test",
            "devices",
            "--",
            "a_graph_moves_data_from_one_device_kind_to_another",
        ]],
    )
}

/// `examples/gpu_saxpy.rs` with every backend built in: saxpy on each device found,
/// checked against the CPU.
fn gpu_example_step(ctx: &Context) -> Result<Outcome> {
    if let Some(skipped) = both_device_runtimes_missing() {
        return Ok(skipped);
    }
    let mut command = ctx.cargo();
    command.args([
        "run",
        "-p",
        "dagger-examples",
        "--example",
        "gpu_saxpy",
        "--features",
        "gpu",
    ]);
    let status = process::run_inherited(&mut command)?;
    Ok(Outcome::from_status(&command, status))
}

fn examples_build_step(ctx: &Context) -> Result<Outcome> {
    let mut command = ctx.cargo();
    command.args(["build", "--examples", "--workspace"]);
    let status = process::run_inherited(&mut command)?;
    Ok(Outcome::from_status(&command, status))
}

fn example_run_step(ctx: &Context, example: &str, args: &[&str]) -> Result<Outcome> {
    let Some(package) = ctx.workspace.package_with_example(example) else {
        println!("no package of the workspace has an example named `{example}`");
        return Ok(Outcome::Skipped {
            reason: "example not present".into(),
            remedy: format!("add the `{example}` example"),
        });
    };
    let mut command = ctx.cargo();
    command.args(["run", "-p", package, "--example", example]);
    if !args.is_empty() {
        command.arg("--").args(args);
    }
    let status = process::run_inherited(&mut command)?;
    Ok(Outcome::from_status(&command, status))
}

/// One run of a benchmark workload in the debug build: it checks its own results and
/// prints its lines.
fn bench_smoke_step(ctx: &Context, id: &str) -> Result<Outcome> {
    let mut command = ctx.cargo();
    command.args([
        "run",
        "-p",
        "dagger-bench",
        "--bin",
        "dagger-bench",
        "--",
        id,
    ]);
    let status = process::run_inherited(&mut command)?;
    Ok(Outcome::from_status(&command, status))
}

fn fmt_step(ctx: &Context) -> Result<Outcome> {
    let mut probe = ctx.cargo();
    probe.args(["fmt", "--version"]);
    let available = process::run_captured(&mut probe).is_ok_and(|out| out.status.success());
    if !available {
        return Ok(Outcome::Skipped {
            reason: "rustfmt is not installed".into(),
            remedy: "rustup component add rustfmt".into(),
        });
    }
    let mut command = ctx.cargo();
    command.args(["fmt", "--all", "--", "--check"]);
    let status = process::run_inherited(&mut command)?;
    Ok(Outcome::from_status(&command, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_run_in_the_documented_order() {
        let names: Vec<String> = steps().into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            vec![
                "layering",
                "no-quic",
                "unit+integration",
                "chaos",
                "chaos:real",
                "fuzz",
                "transports",
                "hwloc",
                "features",
                "clippy",
                "doc",
                "devices:opencl",
                "devices:wgpu",
                "devices:cuda",
                "devices:graph",
                "examples:build",
                "examples:gpu_saxpy",
                "examples:topology",
                "examples:custom_processor",
                "examples:manual_worker",
                "examples:fault_tolerance",
                "examples:dynamic_pool",
                "examples:timeline",
                "bench:W6",
                "bench:W1t",
                "fmt",
            ]
        );
    }

    #[test]
    fn skipped_steps_name_their_remedy() {
        let outcome = Outcome::Skipped {
            reason: "pkg-config cannot find hwloc".into(),
            remedy: format!("install {HWLOC_PACKAGES}"),
        };
        assert_eq!(
            outcome.describe(),
            "skipped: pkg-config cannot find hwloc \
             (install libhwloc-dev libudev-dev pkg-config)"
        );
    }
}
