//! Finite device memory, on real devices in real worker processes: every process of this
//! test runs with `DAGGER_DEVICE_MEMORY=8MiB`, so the device's ledger holds at most 8 MiB.
//! Results kept on the device are evicted to host memory when a later task needs the room
//! (and still fetched intact); an input that cannot fit even after every eviction fails
//! the task with a typed `DeviceFull`, or runs it on a CPU thread when its scope allows
//! one; nothing crashes.
//!
//! One test per backend, in this binary only: the cap is a process environment variable,
//! set once, before the context starts its workers (which inherit it).

#![cfg(all(feature = "quic", any(feature = "opencl", feature = "wgpu")))]

use dagger::device::{Device, Kernel};
use dagger::prelude::*;
use dagger::{DeviceVec, MoveFailure};

const SCALE: Kernel = Kernel::new("scale")
    .opencl(
        "__kernel void scale(float a, __global float* y, uint n) {
            uint i = get_global_id(0);
            if (i < n) y[i] = a * y[i];
        }",
    )
    .wgsl(
        "@group(0) @binding(0) var<uniform> a: f32;
         @group(0) @binding(1) var<storage, read_write> y: array<f32>;
         @group(0) @binding(2) var<uniform> n: u32;
         @compute @workgroup_size(64)
         fn scale(@builtin(global_invocation_id) id: vec3<u32>) {
             let i = id.x;
             if (i < n) { y[i] = a * y[i]; }
         }",
    );

/// `a * y`, on the device it runs on (the result stays there), or on the CPU.
#[dagger::task]
fn scale(a: f32, mut y: DeviceVec<f32>) -> DeviceVec<f32> {
    let n = y.len();
    match Device::current() {
        Some(dev) => dev
            .launch(&SCALE, n)
            .scalar(a)
            .buffer_mut(&mut y)
            .scalar(n as u32)
            .run()
            .expect("scale"),
        None => y
            .as_mut_slice()
            .expect("host")
            .iter_mut()
            .for_each(|v| *v *= a),
    }
    y
}

#[dagger::task]
fn ones(n: u32) -> Vec<f32> {
    vec![1.0; n as usize]
}

/// The device ledger's capacity, bytes held, and evictions so far.
#[dagger::task]
fn ledger() -> (u64, u64, u64) {
    let d = Device::current().expect("runs on a device");
    let l = d.handle().ledger();
    (l.capacity(), l.used(), l.evictions().0)
}

const MIB: u32 = 1 << 20;

fn pressure(kind: &'static str) {
    // Before the context starts: the workers inherit it.
    std::env::set_var(dagger::device::ENV_DEVICE_MEMORY, "8MiB");
    dagger::init();
    let ctx = Context::builder()
        .workers(1)
        .test_harness()
        .build()
        .expect("context");
    let w = ctx.workers()[0];
    let topo = ctx.topology();
    let has = topo
        .worker(w)
        .expect("joined")
        .procs
        .iter()
        .any(|p| p.kind.as_str() == kind);
    if !has {
        assert!(
            std::env::var("DAGGER_REQUIRE_ALL").as_deref() != Ok("1"),
            "DAGGER_REQUIRE_ALL=1 but no {kind} device:\n{topo}"
        );
        eprintln!("skipped: no {kind} device");
        return;
    }
    let on_device = || Options::new().scope(Scope::WorkerKind(w, ProcKind::custom(kind)));
    let (capacity, _, _) = ledger::with(on_device())
        .spawn(&ctx)
        .unwrap()
        .fetch()
        .unwrap();
    assert_eq!(capacity, 8 << 20, "the cap reached the worker");

    // Six 2 MiB results kept on the device (12 MiB in all, with room for 8): the later
    // tasks evict the earlier results to host memory.
    let floats = 2 * MIB / 4;
    let inputs: Vec<_> = (0..6).map(|_| ones::spawn(&ctx, floats).unwrap()).collect();
    let results: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| {
            scale::with(on_device())
                .spawn(&ctx, (i + 2) as f32, x)
                .unwrap()
        })
        .collect();
    for r in &results {
        r.wait().unwrap();
    }
    let (_, used, evictions) = ledger::with(on_device())
        .spawn(&ctx)
        .unwrap()
        .fetch()
        .unwrap();
    assert!(used <= 8 << 20, "{used} bytes held past the cap");
    assert!(
        evictions > 0,
        "12 MiB of results fit in 8 MiB without an eviction"
    );
    for (i, r) in results.iter().enumerate() {
        let v = r.fetch().unwrap().into_vec().unwrap();
        assert_eq!(v.len(), floats as usize);
        assert!(v.iter().all(|&x| x == (i + 2) as f32), "result {i} damaged");
    }

    // 16 MiB cannot fit in 8: on the device alone the task fails, typed.
    let big = ones::spawn(&ctx, 16 * MIB / 4).unwrap();
    let err = scale::with(on_device().loss_retries(1))
        .spawn(&ctx, 2.0, &big)
        .unwrap()
        .fetch()
        .unwrap_err();
    let full = matches!(
        &err,
        TaskError::MoveFailed {
            cause: MoveFailure::DeviceFull { requested, capacity, .. },
            ..
        } if *requested >= 16 << 20 && *capacity == 8 << 20
    );
    assert!(full, "expected DeviceFull, got {err:?}");

    // With a CPU thread in its scope, the same task runs there instead.
    let either =
        Options::new().scope(Scope::WorkerKind(w, ProcKind::custom(kind)).or(Scope::Worker(w)));
    let done = scale::with(either).spawn(&ctx, 2.0, &big).unwrap();
    let v = done.fetch().unwrap().into_vec().unwrap();
    assert!(v.iter().all(|&x| x == 2.0));
    println!(
        "{kind}: {evictions} evictions; the 16 MiB task ran on {}",
        done.info().unwrap().processor
    );
}

#[cfg(feature = "opencl")]
#[test]
fn opencl_memory_pressure_evicts_and_never_crashes() {
    pressure("opencl");
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_memory_pressure_evicts_and_never_crashes() {
    pressure("wgpu");
}
