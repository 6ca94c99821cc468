//! Kernel tasks on every device the workers have: one saxpy task (`y = a*x + y`) with
//! OpenCL C, WGSL and CUDA C sources and a CPU path, run on each device kind found and on
//! CPU threads, every result checked; then one graph whose data goes CPU → device →
//! another device kind → CPU.
//!
//! ```sh
//! cargo run --release --example gpu_saxpy --features gpu      # opencl + wgpu + cuda
//! cargo run --release --example gpu_saxpy --features opencl   # one backend
//! cargo run --example gpu_saxpy                               # no backend: CPU only
//! ```
//!
//! A backend not compiled in, or compiled in but without a driver or device on this
//! machine, is skipped with a line saying why (the processor tree shows the same reason as
//! `unavailable.<backend>`). The program exits with status 1 if any result is wrong.

use anyhow::Context as _;
use dagger::device::{Device, Kernel};
use dagger::prelude::*;
use dagger::{DeviceVec, ProcInfo};
use std::process::ExitCode;
use std::time::Duration;

/// Elements in each vector.
const N: u32 = 1 << 20;
/// Relative tolerance of a device result against the CPU's.
const TOLERANCE: f32 = 1e-5;

/// The device backends this example knows, and whether each is compiled in.
const BACKENDS: [(&str, bool); 3] = [
    ("opencl", cfg!(feature = "opencl")),
    ("wgpu", cfg!(feature = "wgpu")),
    ("cuda", cfg!(feature = "cuda")),
];

/// `y[i] = y[i] + a * x[i]`, written once per backend. Argument `i` of a launch is the
/// kernel's parameter `i` (in WGSL, `@binding(i)`).
const SAXPY: Kernel = Kernel::new("saxpy")
    .opencl(
        "__kernel void saxpy(float a, __global const float* x, __global float* y, uint n) {
            uint i = get_global_id(0);
            if (i < n) y[i] = y[i] + a * x[i];
        }",
    )
    .wgsl(
        "@group(0) @binding(0) var<uniform> a: f32;
         @group(0) @binding(1) var<storage, read_write> x: array<f32>;
         @group(0) @binding(2) var<storage, read_write> y: array<f32>;
         @group(0) @binding(3) var<uniform> n: u32;
         @compute @workgroup_size(64)
         fn saxpy(@builtin(global_invocation_id) id: vec3<u32>) {
             let i = id.x;
             if (i < n) { y[i] = y[i] + a * x[i]; }
         }",
    )
    .cuda(
        r#"extern "C" __global__ void saxpy(float a, const float* x, float* y, unsigned int n) {
            unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n) y[i] = y[i] + a * x[i];
        }"#,
    );

/// `a * x + y` on the device the task runs on, or on the CPU thread it runs on. Its
/// arguments arrive where it runs (uploaded, handed over, or downloaded by the runtime),
/// and a device result stays on the device until something elsewhere needs it.
#[dagger::task]
fn saxpy(a: f32, x: DeviceVec<f32>, mut y: DeviceVec<f32>) -> DeviceVec<f32> {
    let n = y.len();
    match Device::current() {
        Some(dev) => dev
            .launch(&SAXPY, n)
            .scalar(a)
            .buffer(&x)
            .buffer_mut(&mut y)
            .scalar(n as u32)
            .run()
            .expect("launching saxpy"),
        None => {
            let x = x.as_slice().expect("a CPU task's input is in host memory");
            let y = y
                .as_mut_slice()
                .expect("a CPU task's input is in host memory");
            for (y, x) in y.iter_mut().zip(x) {
                *y += a * x;
            }
        }
    }
    y
}

/// The input vectors, made on a CPU thread of a worker.
#[dagger::task]
fn ramp(n: u32, start: f32, step: f32) -> Vec<f32> {
    ramp_cpu(n, start, step)
}

/// The sum of a vector, in `f64`.
#[dagger::task]
fn sum(v: Vec<f32>) -> f64 {
    v.iter().map(|&x| f64::from(x)).sum()
}

/// Where an input arrived: on a device or not, whether its buffer is shared with the
/// worker's store (handed over as it was, no copy) or the task's own (copied), and its
/// memory space.
#[dagger::task]
fn residency(x: DeviceVec<f32>) -> (bool, bool, String) {
    let shared = x
        .buffer()
        .is_some_and(|b| std::sync::Arc::strong_count(b) > 1);
    (x.is_on_device(), shared, x.memory().to_string())
}

/// `start + (i % 1000) * step`: values away from zero, so a relative check is meaningful.
fn ramp_cpu(n: u32, start: f32, step: f32) -> Vec<f32> {
    (0..n).map(|i| start + (i % 1000) as f32 * step).collect()
}

/// The reference result, on this process's CPU.
fn saxpy_cpu(a: f32, x: &[f32], y: &[f32]) -> Vec<f32> {
    y.iter().zip(x).map(|(y, x)| y + a * x).collect()
}

/// `Ok` if every element is within [`TOLERANCE`] of the reference, else the first that is
/// not and how many are not.
fn check(got: &[f32], want: &[f32]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} elements, {} expected", got.len(), want.len()));
    }
    let bad = |(g, e): (&f32, &f32)| (g - e).abs() > TOLERANCE * e.abs() || g.is_nan();
    match got.iter().zip(want).position(bad) {
        None => Ok(()),
        Some(i) => Err(format!(
            "element {i} is {} instead of {} ({} elements wrong)",
            got[i],
            want[i],
            got.iter().zip(want).filter(|&p| bad(p)).count()
        )),
    }
}

/// A device found on a worker.
#[derive(Clone)]
struct Found {
    worker: WorkerId,
    proc: ProcInfo,
}

/// For each backend compiled in and present, its devices on the workers (in worker order);
/// a line for each backend skipped, with the reason.
fn devices(ctx: &Context) -> Vec<(&'static str, Vec<Found>)> {
    let topo = ctx.topology();
    let mut found = Vec::new();
    for (kind, compiled) in BACKENDS {
        if !compiled {
            println!(
                "skipped {kind}: not compiled in (build with --features {kind}, or --features gpu)"
            );
            continue;
        }
        let mut reasons = Vec::new();
        let mut devices = Vec::new();
        for w in ctx.workers() {
            let Some(info) = topo.worker(w) else { continue };
            let here: Vec<Found> = info
                .procs
                .iter()
                .filter(|p| p.kind.as_str() == kind)
                .map(|p| Found {
                    worker: w,
                    proc: p.clone(),
                })
                .collect();
            if here.is_empty() {
                let why = info
                    .procs
                    .first()
                    .and_then(|root| root.properties.get(&format!("unavailable.{kind}")))
                    .cloned()
                    .unwrap_or_else(|| "no device found".into());
                if !reasons.contains(&why) {
                    reasons.push(why);
                }
            }
            devices.extend(here);
        }
        if !devices.is_empty() {
            for d in &devices {
                println!(
                    "found {kind}: {} ({}) on {}",
                    d.proc.label, d.proc.memory, d.worker
                );
            }
            found.push((kind, devices));
        } else if reasons.is_empty() {
            println!("skipped {kind}: no worker joined");
        } else {
            println!("skipped {kind}: {}", reasons.join("; "));
        }
    }
    if BACKENDS.iter().all(|&(_, compiled)| !compiled) {
        println!(
            "no device backend is compiled in: running the CPU path only \
             (--features gpu for opencl, wgpu and cuda)"
        );
    }
    found
}

/// Task options placing a task on `scope`.
fn on(scope: Scope) -> Options {
    Options::new().scope(scope)
}

/// The CPU threads of every worker.
fn cpu() -> Scope {
    Scope::Kind(ProcKind::THREAD)
}

/// Milliseconds, for the report.
fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "?".into(),
        |d| format!("{:.2} ms", d.as_secs_f64() * 1e3),
    )
}

/// Runs one saxpy task on `scope` and checks it; `Ok(false)` if its result is wrong or it
/// failed.
fn run_once(
    ctx: &Context,
    name: &str,
    scope: Scope,
    x: &Handle<Vec<f32>>,
    y: &Handle<Vec<f32>>,
    want: &[f32],
) -> anyhow::Result<bool> {
    const A: f32 = 2.5;
    let h = saxpy::with(on(scope)).spawn(ctx, A, x, y)?;
    let got = match h.fetch() {
        Ok(v) => v.into_vec().context("the fetched result")?,
        Err(e) => {
            println!("  {name:<8} FAILED: {e}");
            return Ok(false);
        }
    };
    let info = h.info()?;
    let verdict = check(&got, want);
    println!(
        "  {name:<8} ran on {:<24} run {:>10}, submit-to-done {:>10}   {}",
        info.processor,
        ms(info.run_time),
        ms(info.turnaround),
        match &verdict {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("WRONG: {e}"),
        }
    );
    Ok(verdict.is_ok())
}

/// CPU → `first` → `second` → CPU in one graph; `Ok(false)` if the sum is wrong.
fn chain(ctx: &Context, first: &Found, second: &Found) -> anyhow::Result<bool> {
    let (a1, a2) = (0.5f32, -1.5f32);
    let x = ramp::with(on(cpu())).spawn(ctx, N, 0.25, 1e-3)?;
    let y = ramp::with(on(cpu())).spawn(ctx, N, 3.0, 2e-3)?;
    let y1 = saxpy::with(on(Scope::Proc(first.proc.id))).spawn(ctx, a1, &x, &y)?;
    let y2 = saxpy::with(on(Scope::Proc(second.proc.id))).spawn(ctx, a2, &x, &y1)?;
    // What the second device saw of the first's result, before the second task wrote to it.
    let seen = residency::with(on(Scope::Proc(second.proc.id))).spawn(ctx, &y1)?;
    let total = sum::with(on(cpu())).spawn(ctx, &y2)?;

    let xs = ramp_cpu(N, 0.25, 1e-3);
    let ys = ramp_cpu(N, 3.0, 2e-3);
    let want: f64 = saxpy_cpu(a2, &xs, &saxpy_cpu(a1, &xs, &ys))
        .iter()
        .map(|&v| f64::from(v))
        .sum();
    let got = total.fetch()?;

    let path = [
        y.info()?.processor,
        y1.info()?.processor,
        y2.info()?.processor,
        total.info()?.processor,
    ];
    println!("  path: {}", path.join(" -> "));
    let (on_device, shared, memory) = seen.fetch()?;
    let handed = if !on_device {
        format!("arrived in {memory}, not on the device")
    } else if shared {
        format!("handed over in {memory} without a copy")
    } else {
        format!("copied into {memory}")
    };
    println!(
        "  {}'s result at the second task: {handed}",
        first.proc.memory
    );
    let ok = (got - want).abs() <= f64::from(TOLERANCE) * want.abs();
    println!(
        "  sum on the CPU: {got:.3} (expected {want:.3})   {}",
        if ok { "ok" } else { "WRONG" }
    );
    Ok(ok)
}

fn main() -> anyhow::Result<ExitCode> {
    // In a worker process this joins the cluster and never returns.
    dagger::init();

    let ctx = Context::local(2).context("starting the driver and 2 local workers")?;
    println!("== the cluster's processors ==\n{}", ctx.topology());

    println!("== device backends ==");
    let found = devices(&ctx);

    let mut wrong = 0usize;
    println!("\n== saxpy, {N} elements, on each device kind and on CPU threads ==");
    let x = ramp::with(on(cpu())).spawn(&ctx, N, 0.25, 1e-3)?;
    let y = ramp::with(on(cpu())).spawn(&ctx, N, 1.0, 1e-3)?;
    let want = saxpy_cpu(2.5, &ramp_cpu(N, 0.25, 1e-3), &ramp_cpu(N, 1.0, 1e-3));
    for (kind, ds) in &found {
        let scope = Scope::WorkerKind(ds[0].worker, ProcKind::custom(*kind));
        if !run_once(&ctx, kind, scope, &x, &y, &want)? {
            wrong += 1;
        }
    }
    if !run_once(&ctx, "cpu", cpu(), &x, &y, &want)? {
        wrong += 1;
    }
    if !found.is_empty() {
        println!("  (a device's first run includes building the kernel for it)");
    }

    println!("\n== one graph across memories ==");
    match found.as_slice() {
        [] => println!("  skipped: no device on the workers"),
        [(kind, ds)] => {
            println!("  one device kind: CPU -> {kind} -> the same {kind} device -> CPU");
            println!("  (the second {kind} task takes the first's result on the device)");
            if !chain(&ctx, &ds[0], &ds[0])? {
                wrong += 1;
            }
        }
        [(k1, d1), (k2, d2), ..] => {
            // The second kind on the worker of the first if it has one there: a move
            // between two devices of one process, staged through its host memory.
            let first = &d1[0];
            let second = d2
                .iter()
                .find(|d| d.worker == first.worker)
                .unwrap_or(&d2[0]);
            println!("  two device kinds: CPU -> {k1} -> {k2} -> CPU");
            if !chain(&ctx, first, second)? {
                wrong += 1;
            }
        }
    }

    if wrong > 0 {
        eprintln!("\nFAILED: {wrong} result(s) wrong");
        return Ok(ExitCode::FAILURE);
    }
    println!("\nall results checked");
    Ok(ExitCode::SUCCESS)
}
