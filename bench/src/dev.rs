//! DEV: devices. For every device backend compiled in (features `opencl`, `wgpu`, `cuda`)
//! and found on this machine, on its first device:
//!
//! - `<backend>_h2d_MBps`: a 64 MiB `DeviceVec<f32>` moved through the move registry
//!   (`dagger::moves()`) from a CPU thread to the device, starting from its encoded host
//!   form (postcard bytes, as a chunk arrives from another process): decode, allocate,
//!   upload. `<backend>_d2h_MBps`: the device-resident value moved back to a CPU thread:
//!   download into a host vector. Both run in this process, on the devices it detects
//!   itself; each is the median of several moves after one untimed, and the round trip is
//!   checked element for element.
//! - `<backend>_raw_h2d_MBps`, `<backend>_raw_d2h_MBps`: the same 64 MiB with the device
//!   handle's own `upload` (allocate and copy) and `download`, so the registry's and the
//!   encoding's share of the move is visible.
//! - `<backend>_task_us`: an empty kernel task (launch over one work item, then
//!   `synchronize`) scoped to a worker process's device, spawned and fetched one at a time;
//!   the median round trip after a warm-up that builds the kernel. Every result says it ran
//!   on that backend. `thread_task_us`: the same loop with a task that does nothing, on a
//!   CPU thread of the same worker: the round trip without the device.
//! - `host_memcpy_MBps`, `host_fresh_copy_MBps`: the host's own ceilings in the same run, a
//!   64 MiB copy into memory already touched, and into memory just allocated (its pages
//!   faulted in by the copy, as they are in a move that allocates its destination).
//! - on CUDA, `cuda_raw_h2d_MBps`/`cuda_raw_d2h_MBps`: a plain cudarc memcpy of the same
//!   size, and `cuda_h2d_vs_raw`/`cuda_d2h_vs_raw`: the registry's moves as fractions of it.
//!
//! MB/s are 10^6 bytes per second, as in W4. A backend compiled in but not usable here
//! prints `dagger DEV <backend> skipped: <why>` instead of its figures: a line that is not a
//! figure (its value is not a number), so `cargo xtask bench` reports it as a note.

use anyhow::{bail, ensure, Context as _};
use dagger::device::{Device, DeviceProc, DeviceRef, Kernel};
use dagger::prelude::*;
use dagger::{DetectContext, DeviceVec, MemorySpace, MoveTarget, MoveValue, ProcInfo};
use dagger_proc::LocalProcs;
use std::any::type_name;
use std::time::{Duration, Instant};

use crate::line;

/// Bytes moved each way.
const MOVE_BYTES: usize = 64 << 20;

/// The backends a build may have, in the order they are reported.
const BACKENDS: &[&str] = &["opencl", "wgpu", "cuda"];

/// A kernel that does nothing, for every backend.
const EMPTY: Kernel = Kernel::new("empty")
    .opencl("__kernel void empty() {}")
    .wgsl("@compute @workgroup_size(64) fn empty() {}")
    .cuda("extern \"C\" __global__ void empty() {}");

/// Launches the empty kernel over one work item on the task's device and waits for it.
/// Returns the backend it ran on, or why it could not.
#[dagger::task]
fn empty_kernel() -> Result<String, String> {
    let dev = Device::current().ok_or_else(|| "not on a device processor".to_string())?;
    dev.launch(&EMPTY, 1).run().map_err(|e| e.to_string())?;
    dev.synchronize().map_err(|e| e.to_string())?;
    Ok(dev.backend().to_string())
}

/// Does nothing, on a CPU thread; returns its argument.
#[dagger::task]
fn noop(i: u64) -> u64 {
    i
}

/// The backends this build has the features of.
const COMPILED: &[&str] = &[
    #[cfg(feature = "opencl")]
    "opencl",
    #[cfg(feature = "wgpu")]
    "wgpu",
    #[cfg(feature = "cuda")]
    "cuda",
];

/// Whether the build has `backend`'s feature.
fn compiled(backend: &str) -> bool {
    COMPILED.contains(&backend)
}

/// Prints the note for a backend that is not measured.
fn skipped(backend: &str, why: &str) {
    println!("dagger DEV {backend} skipped: {why}");
}

/// MB/s (10^6 bytes per second) for `bytes` in `elapsed`.
fn mbps(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE) / 1e6
}

/// The median of `d` (not empty).
fn median(d: &mut [Duration]) -> Duration {
    d.sort_unstable();
    d[d.len() / 2]
}

pub(crate) fn dev(quick: bool) -> anyhow::Result<()> {
    // Moves: in this process, on the devices it detects itself.
    let mut measured = Vec::new();
    {
        let local = LocalProcs::detect(&DetectContext::new(WorkerId::DRIVER));
        let thread = local
            .infos()
            .into_iter()
            .find(|p| p.kind == ProcKind::THREAD)
            .context("this process has no thread processor")?;
        for &backend in BACKENDS {
            if !compiled(backend) {
                skipped(backend, &format!("not built with the `{backend}` feature"));
                continue;
            }
            let found = local
                .procs()
                .iter()
                .zip(local.infos())
                .find_map(|(p, info)| {
                    p.as_any()
                        .downcast_ref::<DeviceProc>()
                        .filter(|d| d.info().backend == backend)
                        .map(|d| (d.device().clone(), info))
                });
            let Some((device, info)) = found else {
                let why = local
                    .unavailable()
                    .iter()
                    .find(|u| u.detector == backend)
                    .map(|u| u.reason.clone())
                    .unwrap_or_else(|| "no device found".to_string());
                skipped(backend, &why);
                continue;
            };
            println!(
                "DEV {backend}: {} ({}), memory {}",
                info.label,
                device.info().vendor,
                info.memory
            );
            moves(backend, &device, &info, &thread, quick)?;
            measured.push(backend);
        }
    }
    if !measured.is_empty() {
        host_ceilings(quick);
    }
    // Kernel tasks: on a worker process's device.
    let t = Instant::now();
    let ctx = Context::builder().workers(2).build()?;
    line("DEV", "startup_ms", t.elapsed().as_secs_f64() * 1e3, "ms");
    let mut baseline = None;
    for &backend in BACKENDS.iter().filter(|b| compiled(b)) {
        match device_worker(&ctx, backend) {
            Ok(w) => {
                baseline.get_or_insert(w);
                tasks(&ctx, backend, w, quick)?;
            }
            // Already reported as skipped when this process found none either.
            Err(why) if measured.contains(&backend) => skipped(backend, &format!("tasks: {why}")),
            Err(_) => {}
        }
    }
    if let Some(w) = baseline {
        thread_tasks(&ctx, w, quick)?;
    }
    ctx.shutdown();
    Ok(())
}

/// Host → device → host through the move registry, and the device handle's raw copies.
fn moves(
    backend: &str,
    device: &DeviceRef,
    info: &ProcInfo,
    thread: &ProcInfo,
    quick: bool,
) -> anyhow::Result<()> {
    let runs = if quick { 2 } else { 5 };
    let elems = MOVE_BYTES / std::mem::size_of::<f32>();
    let host: Vec<f32> = (0..elems).map(|i| (i % 1009) as f32 * 0.5).collect();
    let encoded = postcard::to_allocvec(&host)?;
    let ty = type_name::<DeviceVec<f32>>();
    let to_device = MoveTarget::new(info.id, &info.kind, &info.memory).with_device(device);
    let to_host = MoveTarget::new(thread.id, &ProcKind::THREAD, &MemorySpace::HOST);

    let (mut h2d, mut d2h) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let bytes = encoded.clone();
        let t = Instant::now();
        let moved =
            dagger::moves().apply(&ProcKind::THREAD, ty, MoveValue::Bytes(bytes), &to_device)?;
        let up = t.elapsed();
        let on_device = moved
            .downcast::<DeviceVec<f32>>()
            .map_err(|_| anyhow::anyhow!("{backend}: the move to the device gave another type"))?;
        ensure!(
            on_device.is_on_device() && on_device.memory() == info.memory,
            "{backend}: the moved value is in {}, not {}",
            on_device.memory(),
            info.memory
        );
        let buffer = on_device
            .as_device_buffer()
            .context("a device vector without a buffer")?;
        drop(on_device);
        let t = Instant::now();
        let back = dagger::moves().apply(&info.kind, ty, MoveValue::Device(buffer), &to_host)?;
        let down = t.elapsed();
        let back = back
            .downcast::<DeviceVec<f32>>()
            .map_err(|_| anyhow::anyhow!("{backend}: the move to the host gave another type"))?;
        ensure!(
            !back.is_on_device(),
            "{backend}: the move to a CPU thread left the value in {}",
            back.memory()
        );
        ensure!(
            back.as_slice() == Some(host.as_slice()),
            "{backend}: the round trip through the device changed the data"
        );
        if run > 0 {
            h2d.push(up);
            d2h.push(down);
        }
    }
    line(
        "DEV",
        &format!("{backend}_h2d_MBps"),
        mbps(MOVE_BYTES, median(&mut h2d)),
        "MB/s",
    );
    line(
        "DEV",
        &format!("{backend}_d2h_MBps"),
        mbps(MOVE_BYTES, median(&mut d2h)),
        "MB/s",
    );

    let raw: Vec<u8> = host.iter().flat_map(|x| x.to_le_bytes()).collect();
    drop(encoded);
    let (mut up_raw, mut down_raw) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let t = Instant::now();
        let buf = device.upload(&raw)?;
        let up = t.elapsed();
        let t = Instant::now();
        let back = device.download(&buf)?;
        let down = t.elapsed();
        ensure!(
            back == raw,
            "{backend}: the raw round trip through the device changed the data"
        );
        if run > 0 {
            up_raw.push(up);
            down_raw.push(down);
        }
    }
    let (raw_h2d, raw_d2h) = (
        mbps(MOVE_BYTES, median(&mut up_raw)),
        mbps(MOVE_BYTES, median(&mut down_raw)),
    );
    line("DEV", &format!("{backend}_raw_h2d_MBps"), raw_h2d, "MB/s");
    line("DEV", &format!("{backend}_raw_d2h_MBps"), raw_d2h, "MB/s");

    if backend == "cuda" {
        cuda_ceiling(
            mbps(MOVE_BYTES, median(&mut h2d)),
            mbps(MOVE_BYTES, median(&mut d2h)),
            runs,
        )?;
    }
    Ok(())
}

/// A 64 MiB copy on the host into memory already touched, and into memory just allocated,
/// each the median of several after one untimed.
fn host_ceilings(quick: bool) {
    let runs = if quick { 2 } else { 5 };
    let src = vec![7u8; MOVE_BYTES];
    let mut warm = vec![0u8; MOVE_BYTES];
    let (mut copy, mut fresh) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let t = Instant::now();
        warm.copy_from_slice(&src);
        let c = t.elapsed();
        let t = Instant::now();
        let new = src.clone();
        let f = t.elapsed();
        std::hint::black_box((&warm, &new));
        if run > 0 {
            copy.push(c);
            fresh.push(f);
        }
    }
    line(
        "DEV",
        "host_memcpy_MBps",
        mbps(MOVE_BYTES, median(&mut copy)),
        "MB/s",
    );
    line(
        "DEV",
        "host_fresh_copy_MBps",
        mbps(MOVE_BYTES, median(&mut fresh)),
        "MB/s",
    );
}

/// The plain cudarc memcpy of the same size, and the registry's moves as fractions of it.
#[cfg(feature = "cuda")]
fn cuda_ceiling(h2d: f64, d2h: f64, iters: u32) -> anyhow::Result<()> {
    let (raw_h2d, raw_d2h) = dagger::device::cuda::raw_memcpy_bench(MOVE_BYTES, iters)?;
    line("DEV", "cuda_raw_h2d_MBps", raw_h2d, "MB/s");
    line("DEV", "cuda_raw_d2h_MBps", raw_d2h, "MB/s");
    line("DEV", "cuda_h2d_vs_raw", h2d / raw_h2d, "fraction");
    line("DEV", "cuda_d2h_vs_raw", d2h / raw_d2h, "fraction");
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn cuda_ceiling(_h2d: f64, _d2h: f64, _iters: u32) -> anyhow::Result<()> {
    bail!("a CUDA device was measured in a build without the `cuda` feature")
}

/// The first worker process with a device of `backend`, or why there is none.
fn device_worker(ctx: &Context, backend: &str) -> Result<WorkerId, String> {
    let topo = ctx.topology();
    let mut why = None;
    for w in ctx.workers() {
        let Some(info) = topo.worker(w) else { continue };
        if info.procs.iter().any(|p| p.kind.as_str() == backend) {
            return Ok(w);
        }
        why = why.or_else(|| {
            info.procs
                .first()
                .and_then(|root| root.properties.get(&format!("unavailable.{backend}")))
                .cloned()
        });
    }
    Err(why.unwrap_or_else(|| "no worker process found a device".to_string()))
}

/// Round trips measured as [`tasks`] measures them: `n` after `warm` untimed, the median.
fn round_trips(
    n: usize,
    warm: usize,
    mut one: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<Duration> {
    for _ in 0..warm {
        one()?;
    }
    let mut each = (0..n).map(|_| one()).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(median(&mut each))
}

/// Sequential tasks that do nothing on a CPU thread of worker `w`.
fn thread_tasks(ctx: &Context, w: WorkerId, quick: bool) -> anyhow::Result<()> {
    let scope = Options::new().scope(Scope::worker(w));
    let mut i = 0u64;
    let one = || -> anyhow::Result<Duration> {
        i += 1;
        let t = Instant::now();
        let got = noop::with(scope.clone()).spawn(ctx, i)?.fetch()?;
        let el = t.elapsed();
        ensure!(got == i, "the CPU task returned {got}, not {i}");
        Ok(el)
    };
    let n = if quick { 50 } else { 200 };
    let el = round_trips(n, 21, one)?;
    line("DEV", "thread_task_us", el.as_secs_f64() * 1e6, "us");
    Ok(())
}

/// Sequential empty kernel tasks on worker `w`'s device of `backend`.
fn tasks(ctx: &Context, backend: &'static str, w: WorkerId, quick: bool) -> anyhow::Result<()> {
    let scope = Options::new().scope(Scope::WorkerKind(w, ProcKind::custom(backend)));
    let one = || -> anyhow::Result<Duration> {
        let t = Instant::now();
        let h = empty_kernel::with(scope.clone()).spawn(ctx)?;
        let ran = h.fetch()?;
        let el = t.elapsed();
        match ran {
            Ok(b) if b == backend => Ok(el),
            Ok(b) => bail!("the {backend} kernel task ran on {b}"),
            Err(e) => bail!("the {backend} kernel task failed: {e}"),
        }
    };
    // The first task builds the kernel on the device.
    let t = Instant::now();
    one()?;
    println!(
        "DEV {backend}: first kernel task (kernel build included) {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let n = if quick { 50 } else { 200 };
    let el = round_trips(n, 20, one)?;
    line(
        "DEV",
        &format!("{backend}_task_us"),
        el.as_secs_f64() * 1e6,
        "us",
    );
    Ok(())
}
