//! The wgpu backend on the machine's own Vulkan driver (lavapipe where there is no GPU).
#![cfg(feature = "wgpu")]

use dagger_core::{MemorySpace, ProcKind, WorkerId};
use dagger_proc::device::wgpu::{detect, WgpuDevice};
use dagger_proc::device::{DeviceError, DeviceProc, Gpu, Kernel, KernelArg, Scalar};
use dagger_proc::{DetectContext, Detection, Processor};
use std::sync::{Arc, OnceLock};

/// One device shared by the tests of this file (opening one costs a little on lavapipe).
fn gpu() -> Arc<WgpuDevice> {
    static GPU: OnceLock<Arc<WgpuDevice>> = OnceLock::new();
    GPU.get_or_init(|| {
        let mut devices = WgpuDevice::enumerate().expect("a wgpu adapter");
        Arc::new(devices.remove(0))
    })
    .clone()
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

const SAXPY_WGSL: &str = r"
@group(0) @binding(0) var<uniform> a: f32;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> n: u32;

@compute @workgroup_size(64)
fn saxpy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < n) {
        y[i] = a * x[i] + y[i];
    }
}
";

const SAXPY: Kernel = Kernel::new("saxpy").wgsl(SAXPY_WGSL).workgroup(64);

fn f32s_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_to_f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn detection_finds_an_adapter_as_a_wgpu_processor() {
    let ctx = DetectContext::new(WorkerId(0));
    let procs = match detect(&ctx) {
        Detection::Found(p) => p,
        Detection::Unavailable { reason } => panic!("no wgpu device: {reason}"),
    };
    assert!(!procs.is_empty());
    let p = &procs[0];
    assert_eq!(p.kind(), ProcKind::custom("wgpu"));
    assert_eq!(p.memory(), MemorySpace::custom("wgpu", 0));
    assert!(!p.label().is_empty());
    let props = p.properties();
    println!("wgpu:0 = {} {props:#?}", p.label());
    assert!(props.contains_key("memory_source"));
    assert_eq!(props.get("backend").map(String::as_str), Some("vulkan"));
    let dev = p
        .as_any()
        .downcast_ref::<DeviceProc>()
        .expect("a DeviceProc");
    assert!(dev.info().memory_bytes > 0);
    assert_eq!(dev.info().compute_units, 0);
    if props.get("device_type").map(String::as_str) == Some("Cpu") {
        assert_eq!(props["memory_source"], "host_memory/2");
    }
    for p in &procs {
        p.shutdown();
    }
}

#[test]
fn bytes_go_up_and_come_back() {
    let gpu = gpu();
    for len in [1 << 20, 1001, 3, 1] {
        let data = bytes(len, 7);
        let buf = gpu.alloc(len as u64).unwrap();
        assert_eq!(buf.len(), len as u64);
        gpu.upload(&buf, &data).unwrap();
        let mut out = vec![0u8; len];
        gpu.download(&buf, &mut out).unwrap();
        assert_eq!(out, data, "{len} bytes");

        // A copy on the device, into a buffer as long.
        let dst = gpu.alloc(len as u64).unwrap();
        gpu.copy(&buf, &dst).unwrap();
        let mut out = vec![0u8; len];
        gpu.download(&dst, &mut out).unwrap();
        assert_eq!(out, data, "copy of {len} bytes");
    }
}

#[test]
fn short_writes_keep_the_bytes_after_them() {
    let gpu = gpu();
    let buf = gpu.alloc(10).unwrap();
    gpu.upload(&buf, &[0xAA; 10]).unwrap();
    // 5 bytes: a whole word and one byte of the next, whose other 3 bytes stay.
    gpu.upload(&buf, &[1, 2, 3, 4, 5]).unwrap();
    let mut out = vec![0u8; 10];
    gpu.download(&buf, &mut out).unwrap();
    assert_eq!(out, [1, 2, 3, 4, 5, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA]);

    // A copy of 6 bytes into a buffer of 10 keeps its last 4.
    let src = gpu.alloc(6).unwrap();
    gpu.upload(&src, &[9, 8, 7, 6, 5, 4]).unwrap();
    gpu.copy(&src, &buf).unwrap();
    gpu.download(&buf, &mut out).unwrap();
    assert_eq!(out, [9, 8, 7, 6, 5, 4, 0xAA, 0xAA, 0xAA, 0xAA]);

    // A partial download.
    let mut head = [0u8; 3];
    gpu.download(&buf, &mut head).unwrap();
    assert_eq!(head, [9, 8, 7]);
}

#[test]
fn lengths_and_foreign_buffers_are_refused() {
    let gpu = gpu();
    let buf = gpu.alloc(8).unwrap();
    assert!(matches!(
        gpu.upload(&buf, &[0; 9]),
        Err(DeviceError::BadArgument(_))
    ));
    assert!(matches!(
        gpu.download(&buf, &mut [0; 9]),
        Err(DeviceError::BadArgument(_))
    ));
    let big = gpu.alloc(12).unwrap();
    assert!(matches!(
        gpu.copy(&big, &buf),
        Err(DeviceError::BadArgument(_))
    ));
    // A buffer of another device of the same adapter.
    let other = WgpuDevice::enumerate().unwrap().remove(0);
    let theirs = other.alloc(8).unwrap();
    let err = gpu.download(&theirs, &mut [0; 8]).unwrap_err();
    assert!(matches!(err, DeviceError::BadArgument(_)), "{err:?}");
}

#[test]
fn saxpy_runs_and_its_pipeline_is_built_once() {
    let gpu = gpu();
    let n = 100_003usize;
    // Values whose products and sums are exact in f32, so the check is equality.
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.25).collect();
    let y: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let a = 3.0f32;
    let xb = gpu.alloc((n * 4) as u64).unwrap();
    let yb = gpu.alloc((n * 4) as u64).unwrap();
    gpu.upload(&xb, &f32s_to_bytes(&x)).unwrap();
    gpu.upload(&yb, &f32s_to_bytes(&y)).unwrap();

    let args = [
        KernelArg::Scalar(Scalar::F32(a)),
        KernelArg::Buffer(&xb),
        KernelArg::Buffer(&yb),
        KernelArg::Scalar(Scalar::U32(n as u32)),
    ];
    gpu.launch(&SAXPY, n as u32, &args).unwrap();
    gpu.synchronize().unwrap();
    let mut out = vec![0u8; n * 4];
    gpu.download(&yb, &mut out).unwrap();
    let expect: Vec<f32> = x.iter().zip(&y).map(|(x, y)| a * x + y).collect();
    assert_eq!(bytes_to_f32s(&out), expect);

    // Again, on y = a*x + (a*x + y): the same pipeline.
    gpu.launch(&SAXPY, n as u32, &args).unwrap();
    gpu.download(&yb, &mut out).unwrap();
    let expect2: Vec<f32> = x.iter().zip(&expect).map(|(x, y)| a * x + y).collect();
    assert_eq!(bytes_to_f32s(&out), expect2);

    // Other tests build kernels on the shared device meanwhile (saxpy too): count on a
    // device of its own.
    let own = WgpuDevice::enumerate().unwrap().remove(0);
    let xo = own.alloc(16).unwrap();
    let yo = own.alloc(16).unwrap();
    let args = [
        KernelArg::Scalar(Scalar::F32(1.0)),
        KernelArg::Buffer(&xo),
        KernelArg::Buffer(&yo),
        KernelArg::Scalar(Scalar::U32(4)),
    ];
    assert_eq!(own.builds(), 0);
    own.launch(&SAXPY, 4, &args).unwrap();
    assert_eq!(own.builds(), 1);
    own.launch(&SAXPY, 4, &args).unwrap();
    own.launch(&SAXPY, 0, &args).unwrap();
    assert_eq!(own.builds(), 1, "the second launch reuses the pipeline");
}

#[test]
fn bad_kernels_and_arguments_are_typed_errors() {
    let gpu = gpu();
    let buf = gpu.alloc(64).unwrap();

    const BROKEN: Kernel = Kernel::new("broken").wgsl("@compute @workgroup_size(64) fn broken( {");
    match gpu.launch(&BROKEN, 64, &[KernelArg::Buffer(&buf)]) {
        Err(DeviceError::Build {
            kernel,
            backend,
            log,
        }) => {
            assert_eq!(kernel, "broken");
            assert_eq!(backend, "wgpu");
            assert!(!log.trim().is_empty());
            println!("build log: {log}");
        }
        other => panic!("expected a build error, got {other:?}"),
    }

    // Valid WGSL whose entry point is not the kernel's name.
    const MISNAMED: Kernel =
        Kernel::new("missing").wgsl("@compute @workgroup_size(64) fn other() {}");
    assert!(matches!(
        gpu.launch(&MISNAMED, 64, &[]),
        Err(DeviceError::Build { .. })
    ));

    const NO_WGSL: Kernel = Kernel::new("k").opencl("__kernel void k() {}");
    assert!(matches!(
        gpu.launch(&NO_WGSL, 64, &[]),
        Err(DeviceError::NoSource {
            backend: "wgpu",
            ..
        })
    ));

    let f64_arg = [
        KernelArg::Scalar(Scalar::F64(1.0)),
        KernelArg::Buffer(&buf),
        KernelArg::Buffer(&buf),
        KernelArg::Scalar(Scalar::U32(16)),
    ];
    assert!(matches!(
        gpu.launch(&SAXPY, 16, &f64_arg),
        Err(DeviceError::BadArgument(_))
    ));

    // A buffer where the kernel has a uniform scalar.
    let swapped = [
        KernelArg::Buffer(&buf),
        KernelArg::Buffer(&buf),
        KernelArg::Buffer(&buf),
        KernelArg::Scalar(Scalar::U32(16)),
    ];
    let err = gpu.launch(&SAXPY, 16, &swapped).unwrap_err();
    assert!(matches!(err, DeviceError::BadArgument(_)), "{err:?}");

    // More work items than one dispatch along x can hold.
    let too_many = gpu.limits().max_compute_workgroups_per_dimension as u64 * 64 + 1;
    if let Ok(g) = u32::try_from(too_many) {
        let args = [
            KernelArg::Scalar(Scalar::F32(1.0)),
            KernelArg::Buffer(&buf),
            KernelArg::Buffer(&buf),
            KernelArg::Scalar(Scalar::U32(16)),
        ];
        assert!(matches!(
            gpu.launch(&SAXPY, g, &args),
            Err(DeviceError::BadArgument(_))
        ));
    }

    // The device still works.
    gpu.upload(&buf, &[5; 64]).unwrap();
    let mut out = [0u8; 64];
    gpu.download(&buf, &mut out).unwrap();
    assert_eq!(out, [5; 64]);
}

#[test]
fn the_ledger_counts_buffers_and_refuses_past_its_capacity() {
    let gpu: Arc<dyn Gpu> = gpu();
    let proc = DeviceProc::with_capacity(gpu.clone(), 1 << 20).unwrap();
    let ledger = proc.ledger().clone();
    let start = ledger.used();
    let a = proc.alloc(600 << 10).unwrap();
    let b = proc.upload(&bytes(1000, 3)).unwrap();
    assert_eq!(ledger.used(), start + (600 << 10) + 1000);
    assert_eq!(proc.download(&b).unwrap(), bytes(1000, 3));
    let err = proc.alloc(600 << 10).unwrap_err();
    assert!(
        matches!(err, DeviceError::OutOfMemory { requested, .. } if requested == 600 << 10),
        "{err:?}"
    );
    drop(a);
    drop(b);
    assert_eq!(ledger.used(), start);
    let c = proc.alloc(600 << 10).unwrap();
    drop(c);
    assert_eq!(ledger.used(), start);
    proc.shutdown();

    // The backend itself refuses a buffer larger than the device allows.
    let max = gpu
        .as_any()
        .downcast_ref::<WgpuDevice>()
        .unwrap()
        .limits()
        .max_buffer_size;
    if let Some(over) = max.checked_add(4) {
        assert!(matches!(
            gpu.alloc(over),
            Err(DeviceError::OutOfMemory { .. })
        ));
    }
}

const CHILD_ENV: &str = "DAGGER_WGPU_TEST_CHILD";

/// Run by `detection_without_a_vulkan_driver_is_unavailable` in a child process whose
/// Vulkan loader finds no driver.
#[test]
#[ignore = "run by another test in a child process"]
fn child_detection_without_driver() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let d = detect(&DetectContext::new(WorkerId(0)));
    println!("CHILD DETECTION: {d:?}");
    match d {
        Detection::Unavailable { reason } => assert!(!reason.is_empty()),
        Detection::Found(p) => panic!("found {} wgpu devices without a driver", p.len()),
    }
}

#[test]
fn detection_without_a_vulkan_driver_is_unavailable() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "child_detection_without_driver",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .env("VK_ICD_FILENAMES", "/nonexistent.json")
        .env("VK_DRIVER_FILES", "/nonexistent.json")
        .env_remove("WGPU_BACKEND")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("CHILD DETECTION: Unavailable"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
    println!("{stdout}");
}
