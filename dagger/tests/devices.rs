//! Kernel tasks on real devices in real worker processes over QUIC: OpenCL (PoCL in CI)
//! and wgpu (Vulkan on lavapipe in CI), each with its feature.
//!
//! A backend whose runtime is missing on this machine is skipped with a line saying so,
//! unless `DAGGER_REQUIRE_ALL=1` (as `.ci/run` sets), where that fails the test.

#![cfg(all(feature = "quic", any(feature = "opencl", feature = "wgpu")))]

use dagger::device::{Device, Kernel};
use dagger::prelude::*;
use dagger::{DeviceVec, ProcInfo};
use std::time::{Duration, Instant};

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
    );

/// `y + a * x`, on the device the task runs on, or on the CPU.
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
            .expect("saxpy"),
        None => {
            let x = x.as_slice().expect("a CPU task's input is in host memory");
            for (y, x) in y.as_mut_slice().expect("host").iter_mut().zip(x) {
                *y += a * x;
            }
        }
    }
    y
}

#[dagger::task]
fn ramp(n: u32, scale: f32) -> Vec<f32> {
    (0..n).map(|i| (i % 1000) as f32 * scale).collect()
}

#[dagger::task]
fn sum(v: Vec<f32>) -> f64 {
    v.iter().map(|&x| x as f64).sum()
}

/// Where the input arrived and whether it was handed over without a copy: a buffer
/// shared with the worker's store (more than one holder) came from a resident chunk; an
/// upload from host bytes would be this task's alone.
#[dagger::task]
fn residency(x: DeviceVec<f32>) -> (bool, bool, String) {
    let shared = x
        .buffer()
        .map(|b| std::sync::Arc::strong_count(b) > 1)
        .unwrap_or(false);
    (x.is_on_device(), shared, x.memory().to_string())
}

/// Bytes the runtime holds on the device this task runs on.
#[dagger::task]
fn device_bytes() -> u64 {
    Device::current()
        .map(|d| d.handle().ledger().used())
        .unwrap_or(u64::MAX)
}

/// Bytes the runtime holds on the device, once `after` is there.
#[dagger::task]
fn device_bytes_after(after: DeviceVec<f32>) -> u64 {
    drop(after);
    device_bytes()
}

fn cpu_saxpy(a: f32, x: &[f32], y: &[f32]) -> Vec<f32> {
    y.iter().zip(x).map(|(y, x)| y + a * x).collect()
}

fn ramp_cpu(n: u32, scale: f32) -> Vec<f32> {
    (0..n).map(|i| (i % 1000) as f32 * scale).collect()
}

fn require_all() -> bool {
    std::env::var("DAGGER_REQUIRE_ALL").as_deref() == Ok("1")
}

fn context() -> Context {
    dagger::init();
    Context::builder()
        .workers(1)
        .test_harness()
        .build()
        .expect("context")
}

/// The device of `kind` on the worker process, or why there is none (then the test is
/// skipped, or fails under `DAGGER_REQUIRE_ALL=1`).
fn device_on_worker(ctx: &Context, kind: &'static str) -> Option<(WorkerId, ProcInfo)> {
    let w = *ctx.workers().first().expect("one worker");
    let topo = ctx.topology();
    let info = topo.worker(w).expect("joined");
    if let Some(p) = info.procs.iter().find(|p| p.kind.as_str() == kind) {
        return Some((w, p.clone()));
    }
    let why = info.procs[0]
        .properties
        .get(&format!("unavailable.{kind}"))
        .cloned()
        .unwrap_or_else(|| "no device found".into());
    assert!(
        !require_all(),
        "DAGGER_REQUIRE_ALL=1 but the worker has no {kind} device: {why}\n{topo}"
    );
    eprintln!("skipped: no {kind} device ({why})");
    None
}

fn on(w: WorkerId, kind: &'static str) -> Options {
    Options::new().scope(Scope::WorkerKind(w, ProcKind::custom(kind)))
}

/// CPU → device → device → CPU: the kernel runs on the worker's device, its result stays
/// there for the next kernel task (handed over without a copy), and comes back right.
fn kernel_tasks_run_on(kind: &'static str) {
    let ctx = context();
    let Some((w, dev)) = device_on_worker(&ctx, kind) else {
        return;
    };
    println!("{kind}: {} ({:?})", dev.label, dev.properties);
    let n = 100_003u32;
    let x = ramp::spawn(&ctx, n, 0.5).unwrap();
    let y = ramp::spawn(&ctx, n, 2.0).unwrap();
    let y1 = saxpy::with(on(w, kind)).spawn(&ctx, 3.0, &x, &y).unwrap();
    let y2 = saxpy::with(on(w, kind)).spawn(&ctx, -1.0, &x, &y1).unwrap();
    let seen = residency::with(on(w, kind)).spawn(&ctx, &y2).unwrap();
    let total = sum::spawn(&ctx, &y2).unwrap();

    let (xs, ys) = (ramp_cpu(n, 0.5), ramp_cpu(n, 2.0));
    let expect = cpu_saxpy(-1.0, &xs, &cpu_saxpy(3.0, &xs, &ys));
    let got = y2.fetch().unwrap().into_vec().unwrap();
    assert_eq!(got.len(), expect.len());
    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
        assert!(
            (g - e).abs() <= 1e-3 * e.abs().max(1.0),
            "element {i}: {g} != {e}"
        );
    }
    let want: f64 = expect.iter().map(|&v| v as f64).sum();
    assert!((total.fetch().unwrap() - want).abs() <= 1e-6 * want.abs());

    for h in [&y1, &y2] {
        let info = h.info().unwrap();
        assert!(
            info.processor.starts_with(&format!("{kind}[")),
            "ran on {}, not a {kind} device",
            info.processor
        );
    }
    let (on_device, shared, memory) = seen.fetch().unwrap();
    assert!(on_device, "the input of a {kind} task is in {memory}");
    assert_eq!(memory, dev.memory.to_string());
    assert!(
        shared,
        "the result of the previous {kind} task was copied, not handed over from the device"
    );
}

/// Device memory goes back to where it started once the graph's results are released.
fn device_memory_is_freed(kind: &'static str) {
    let ctx = context();
    let Some((w, _)) = device_on_worker(&ctx, kind) else {
        return;
    };
    let before = device_bytes::with(on(w, kind))
        .spawn(&ctx)
        .unwrap()
        .fetch()
        .unwrap();
    {
        let x = ramp::spawn(&ctx, 1 << 18, 1.0).unwrap();
        let y0 = ramp::spawn(&ctx, 1 << 18, 1.0).unwrap();
        let mut y = saxpy::with(on(w, kind)).spawn(&ctx, 0.5, &x, &y0).unwrap();
        for _ in 0..5 {
            y = saxpy::with(on(w, kind)).spawn(&ctx, 0.5, &x, &y).unwrap();
        }
        let during = device_bytes_after::with(on(w, kind))
            .spawn(&ctx, &y)
            .unwrap();
        assert!(
            during.fetch().unwrap() > before,
            "the graph held nothing on the device"
        );
    }
    // The handles are gone: the scheduler releases the chunks and the worker frees them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = device_bytes::with(on(w, kind))
            .spawn(&ctx)
            .unwrap()
            .fetch()
            .unwrap();
        if now == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{kind} memory stayed at {now} bytes, {before} before the graph"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(feature = "opencl")]
#[test]
fn opencl_kernel_tasks_keep_their_results_on_the_device() {
    kernel_tasks_run_on("opencl");
}

#[cfg(feature = "opencl")]
#[test]
fn opencl_device_memory_returns_to_its_start() {
    device_memory_is_freed("opencl");
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_kernel_tasks_keep_their_results_on_the_device() {
    kernel_tasks_run_on("wgpu");
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_device_memory_returns_to_its_start() {
    device_memory_is_freed("wgpu");
}

/// One graph crosses device kinds: CPU → OpenCL → wgpu → CPU.
#[cfg(all(feature = "opencl", feature = "wgpu"))]
#[test]
fn a_graph_moves_data_from_one_device_kind_to_another() {
    let ctx = context();
    let (Some((w, _)), Some(_)) = (
        device_on_worker(&ctx, "opencl"),
        device_on_worker(&ctx, "wgpu"),
    ) else {
        return;
    };
    let n = 4099u32;
    let x = ramp::spawn(&ctx, n, 1.0).unwrap();
    let y = ramp::spawn(&ctx, n, 1.0).unwrap();
    let on_cl = saxpy::with(on(w, "opencl"))
        .spawn(&ctx, 2.0, &x, &y)
        .unwrap();
    let on_wgpu = saxpy::with(on(w, "wgpu"))
        .spawn(&ctx, 1.0, &x, &on_cl)
        .unwrap();
    let seen = residency::with(on(w, "wgpu")).spawn(&ctx, &on_cl).unwrap();
    let total = sum::spawn(&ctx, &on_wgpu).unwrap();
    let xs = ramp_cpu(n, 1.0);
    let want: f64 = xs.iter().map(|&v| 4.0 * v as f64).sum();
    assert!((total.fetch().unwrap() - want).abs() <= 1e-6 * want);
    let (on_device, shared, memory) = seen.fetch().unwrap();
    assert!(on_device && memory.starts_with("wgpu:"), "{memory}");
    assert!(
        !shared,
        "a buffer copied across device kinds is the task's own"
    );
    assert!(on_cl.info().unwrap().processor.starts_with("opencl["));
    assert!(on_wgpu.info().unwrap().processor.starts_with("wgpu["));
}

/// Runs in a child process with every device runtime hidden (see
/// `without_device_runtimes_the_cluster_runs_and_says_why`).
#[test]
#[ignore = "run by without_device_runtimes_the_cluster_runs_and_says_why in a child process"]
fn child_without_device_runtimes() {
    dagger::init();
    let config = dagger::SchedulerConfig {
        no_processor_grace: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let ctx = Context::builder()
        .workers(1)
        .scheduler(config)
        .test_harness()
        .build()
        .expect("context");
    let topo = ctx.topology();
    let text = topo.to_string();
    println!("{text}");
    for w in ctx.workers() {
        let root = &topo.worker(w).expect("joined").procs[0];
        for kind in ["opencl", "wgpu"] {
            if cfg!(feature = "opencl") && kind == "opencl"
                || cfg!(feature = "wgpu") && kind == "wgpu"
            {
                let why = root
                    .properties
                    .get(&format!("unavailable.{kind}"))
                    .unwrap_or_else(|| {
                        panic!("{w} found {kind} devices or gave no reason:\n{text}")
                    });
                assert!(!why.is_empty());
            }
        }
    }
    // CPU tasks run; a kernel task that only a device could run fails, typed.
    let x = ramp::spawn(&ctx, 10, 1.0).unwrap();
    assert_eq!(sum::spawn(&ctx, &x).unwrap().fetch().unwrap(), 45.0);
    let kind = if cfg!(feature = "opencl") {
        "opencl"
    } else {
        "wgpu"
    };
    let err = saxpy::with(Options::new().scope(Scope::kind(ProcKind::custom(kind))))
        .spawn(&ctx, 1.0, &x, &x)
        .unwrap()
        .fetch()
        .unwrap_err();
    assert!(
        matches!(err, TaskError::NoProcessor { .. }),
        "expected NoProcessor, got {err:?}"
    );
    println!("child passed");
}

/// With no OpenCL ICD and no Vulkan driver, a program built with the device features
/// starts, shows why each backend found nothing, runs its CPU tasks, and refuses a task
/// that only a device could run with `NoProcessor`; no crash.
#[test]
fn without_device_runtimes_the_cluster_runs_and_says_why() {
    let empty = std::env::temp_dir().join(format!("dagger-no-icd-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_without_device_runtimes",
            "--nocapture",
        ])
        .env("OCL_ICD_VENDORS", &empty)
        .env("OPENCL_VENDOR_PATH", &empty)
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .env_remove("DAGGER_REQUIRE_ALL")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&empty);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("child passed"),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("unavailable"), "{stdout}");
}
