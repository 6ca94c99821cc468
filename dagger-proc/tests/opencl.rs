//! The OpenCL backend on the machine's real OpenCL platform (PoCL's CPU device will do).
//!
//! Tests that need a process of their own (a memory cap read from the environment at
//! detection, a machine without an ICD, a platform with two devices) run this test binary
//! again as a child, with the environment they need, on one of the ignored `child_*` tests.
#![cfg(feature = "opencl")]

use dagger_core::{MemorySpace, ProcKind, WorkerId};
use dagger_proc::device::opencl::{self, OpenClBuffer, OpenClDevice};
use dagger_proc::device::{
    DeviceError, DeviceProc, Gpu, Kernel, KernelArg, RawBuffer, Scalar, ENV_DEVICE_MEMORY,
};
use dagger_proc::{detectors, DetectContext, Detection, Processor};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

/// Set in a child process: the `child_*` test it runs does its work (elsewhere they pass
/// doing nothing, so `--ignored` runs stay green).
const CHILD: &str = "DAGGER_OPENCL_TEST_CHILD";

const SAXPY: Kernel = Kernel::new("saxpy")
    .opencl(
        r#"
__kernel void saxpy(float a, __global const float* x, __global float* y, uint n) {
    uint i = get_global_id(0);
    if (i < n) {
        y[i] = a * x[i] + y[i];
    }
}
"#,
    )
    .workgroup(64);

/// The first device, alone in a processor of its own (a fresh context each call).
fn device() -> DeviceProc {
    let mut devices = OpenClDevice::enumerate().expect("an OpenCL platform with a device");
    assert!(!devices.is_empty(), "no OpenCL device");
    let gpu: Arc<dyn Gpu> = Arc::new(devices.remove(0));
    DeviceProc::new(gpu).expect("the device's processor")
}

fn ocl(p: &DeviceProc) -> &OpenClDevice {
    p.gpu()
        .as_any()
        .downcast_ref::<OpenClDevice>()
        .expect("an OpenCL device")
}

fn varied(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8 ^ (i as u8))
        .collect()
}

fn floats(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

fn from_floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0)
}

/// Runs the ignored test `name` of this binary in a child process with `env` set (and the
/// variables the children use cleared otherwise); returns its output, after checking it
/// passed and really ran the test.
fn run_child(name: &str, env: &[(&str, &std::ffi::OsStr)]) -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, "1");
    for var in ["OCL_ICD_VENDORS", "POCL_DEVICES", ENV_DEVICE_MEMORY] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the child test process");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child `{name}` failed:\n{text}");
    assert!(
        text.contains(&format!("child {name} done")),
        "child `{name}` did not run:\n{text}"
    );
    text
}

fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

#[test]
fn detection_finds_the_platform_devices() {
    assert!(detectors().names().contains(&opencl::DETECTOR.to_string()));
    let procs = match opencl::detect(&DetectContext::new(WorkerId(0))) {
        Detection::Found(procs) => procs,
        Detection::Unavailable { reason } => panic!("OpenCL unavailable: {reason}"),
    };
    assert!(!procs.is_empty(), "no OpenCL device found");
    for (i, p) in procs.iter().enumerate() {
        let d = p
            .as_any()
            .downcast_ref::<DeviceProc>()
            .expect("a device processor");
        let info = d.info();
        println!("opencl:{i} {:?} {:?}", info.name, p.properties());
        assert_eq!(info.backend, "opencl");
        assert_eq!(info.index, i as u32);
        assert!(!info.name.is_empty());
        assert!(!info.vendor.is_empty());
        assert!(info.memory_bytes > 0);
        assert!(info.compute_units > 0);
        for key in ["platform", "version", "device_type", "max_alloc"] {
            assert!(info.extra.contains_key(key), "no {key} in {:?}", info.extra);
        }
        assert_eq!(p.kind(), ProcKind::custom("opencl"));
        assert_eq!(p.memory(), MemorySpace::custom("opencl", i as u32));
        assert_eq!(d.ledger().capacity(), info.memory_bytes);
        let dev = d.gpu().as_any().downcast_ref::<OpenClDevice>().unwrap();
        assert!(dev.max_alloc() > 0 && dev.max_alloc() <= info.memory_bytes);
        assert!(dev.max_work_group() > 0);
    }
}

#[test]
fn bytes_go_to_the_device_and_back_and_copy_there() {
    let d = device();
    let data = varied(1 << 20);
    let buf = d.upload(&data).unwrap();
    assert_eq!(buf.len(), 1 << 20);
    assert_eq!(buf.memory(), &MemorySpace::custom("opencl", 0));
    assert!(buf.downcast_ref::<OpenClBuffer>().is_some());
    assert_eq!(d.download(&buf).unwrap(), data);

    // A copy on the device, and one into a larger buffer (its tail stays as it was).
    let dup = d.duplicate(&buf).unwrap();
    assert_eq!(d.download(&dup).unwrap(), data);
    let big = d.upload(&vec![7u8; (1 << 20) + 16]).unwrap();
    d.gpu().copy(&buf, &big).unwrap();
    let got = d.download(&big).unwrap();
    assert_eq!(&got[..1 << 20], &data[..]);
    assert_eq!(&got[1 << 20..], &[7u8; 16]);

    // A partial download is the buffer's first bytes.
    let mut head = [0u8; 100];
    d.gpu().download(&buf, &mut head).unwrap();
    assert_eq!(&head[..], &data[..100]);

    // An empty buffer is a valid one.
    let empty = d.alloc(0).unwrap();
    assert!(empty.is_empty());
    d.gpu().upload(&empty, &[]).unwrap();
    assert_eq!(d.download(&empty).unwrap(), Vec::<u8>::new());
    d.gpu().synchronize().unwrap();
}

#[test]
fn saxpy_runs_on_the_device_and_is_built_once() {
    let d = device();
    let n: u32 = 100_003; // not a multiple of the workgroup
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.5 - 17.0).collect();
    let y: Vec<f32> = (0..n).map(|i| (i % 777) as f32 * -0.25 + 3.0).collect();
    let a = 2.5f32;
    let xb = d.upload(&floats(&x)).unwrap();
    let yb = d.upload(&floats(&y)).unwrap();
    let args = [
        KernelArg::Scalar(Scalar::F32(a)),
        KernelArg::Buffer(&xb),
        KernelArg::Buffer(&yb),
        KernelArg::Scalar(Scalar::U32(n)),
    ];
    assert_eq!(ocl(&d).builds(), 0);
    d.launch(&SAXPY, n, &args).unwrap();
    let got = from_floats(&d.download(&yb).unwrap());
    let want: Vec<f32> = x.iter().zip(&y).map(|(x, y)| a * x + y).collect();
    assert_eq!(got.len(), n as usize);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(close(*g, *w), "y[{i}] = {g}, expected {w}");
    }
    assert_eq!(ocl(&d).builds(), 1);

    // Again, on the result: the built program is reused.
    d.launch(&SAXPY, n, &args).unwrap();
    d.gpu().synchronize().unwrap();
    let again = from_floats(&d.download(&yb).unwrap());
    for (i, (g, w)) in again.iter().zip(&want).enumerate() {
        let w2 = a * x[i] + w;
        assert!(close(*g, w2), "y[{i}] = {g}, expected {w2}");
    }
    assert_eq!(ocl(&d).builds(), 1, "the second launch rebuilt the kernel");

    // No work items: nothing runs.
    d.launch(&SAXPY, 0, &args).unwrap();
    assert_eq!(from_floats(&d.download(&yb).unwrap()), again);
}

#[test]
fn launches_from_several_threads_build_once_and_do_not_mix_arguments() {
    let d = device();
    let n: u32 = 10_000;
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let d = &d;
            s.spawn(move || {
                let x: Vec<f32> = (0..n).map(|i| (i + t) as f32).collect();
                let xb = d.upload(&floats(&x)).unwrap();
                let yb = d.upload(&floats(&vec![t as f32; n as usize])).unwrap();
                for _ in 0..3 {
                    d.launch(
                        &SAXPY,
                        n,
                        &[
                            KernelArg::Scalar(Scalar::F32(t as f32 + 1.0)),
                            KernelArg::Buffer(&xb),
                            KernelArg::Buffer(&yb),
                            KernelArg::Scalar(Scalar::U32(n)),
                        ],
                    )
                    .unwrap();
                }
                let got = from_floats(&d.download(&yb).unwrap());
                for (i, g) in got.iter().enumerate() {
                    let want = 3.0 * (t as f32 + 1.0) * x[i] + t as f32;
                    assert!(close(*g, want), "thread {t}: y[{i}] = {g}, expected {want}");
                }
            });
        }
    });
    assert_eq!(ocl(&d).builds(), 1);
}

#[test]
fn a_kernel_that_does_not_compile_is_a_build_error_with_the_log() {
    let d = device();
    const BROKEN: Kernel =
        Kernel::new("broken").opencl("__kernel void broken(__global float* y) { y[0] = ; }");
    let buf = d.alloc(16).unwrap();
    let err = d
        .launch(&BROKEN, 4, &[KernelArg::Buffer(&buf)])
        .unwrap_err();
    match &err {
        DeviceError::Build {
            kernel,
            backend,
            log,
        } => {
            assert_eq!(*kernel, "broken");
            assert_eq!(*backend, "opencl");
            assert!(!log.trim().is_empty(), "empty build log");
            println!("build log: {log}");
        }
        e => panic!("expected a build error, got {e:?}"),
    }
    // The failure is kept: no second compilation.
    assert_eq!(ocl(&d).builds(), 1);
    assert_eq!(
        d.launch(&BROKEN, 4, &[KernelArg::Buffer(&buf)])
            .unwrap_err(),
        err
    );
    assert_eq!(ocl(&d).builds(), 1);

    // A source without the kernel named.
    const MISNAMED: Kernel = Kernel::new("absent").opencl("__kernel void other() {}");
    assert!(matches!(
        d.launch(&MISNAMED, 1, &[]),
        Err(DeviceError::Build { .. })
    ));
}

#[test]
fn a_kernel_without_opencl_source_is_no_source() {
    let d = device();
    let k = Kernel::new("wgsl_only").wgsl("@compute @workgroup_size(64) fn wgsl_only() {}");
    assert_eq!(
        d.launch(&k, 64, &[]),
        Err(DeviceError::NoSource {
            kernel: "wgsl_only".into(),
            backend: "opencl",
        })
    );
    assert_eq!(ocl(&d).builds(), 0);
}

#[test]
fn wrong_arguments_are_bad_arguments_not_panics() {
    let d = device();
    let gpu = d.gpu();
    let buf = d.upload(&[1, 2, 3, 4]).unwrap();
    let mut out = [0u8; 8];
    assert!(matches!(
        gpu.download(&buf, &mut out),
        Err(DeviceError::BadArgument(_))
    ));
    assert!(matches!(
        gpu.upload(&buf, &[0u8; 5]),
        Err(DeviceError::BadArgument(_))
    ));
    let small = d.alloc(2).unwrap();
    assert!(matches!(
        gpu.copy(&buf, &small),
        Err(DeviceError::BadArgument(_))
    ));

    // A buffer of another backend, and one claiming this memory but not OpenCL's.
    let foreign = RawBuffer::new(0u32, 4, MemorySpace::custom("wgpu", 0));
    assert!(matches!(
        gpu.download(&foreign, &mut out[..4]),
        Err(DeviceError::BadArgument(_))
    ));
    let fake = RawBuffer::new(0u32, 4, MemorySpace::custom("opencl", 0));
    assert!(matches!(
        gpu.upload(&fake, &[0u8; 4]),
        Err(DeviceError::BadArgument(_))
    ));
    assert!(matches!(
        gpu.launch(
            &SAXPY,
            1,
            &[
                KernelArg::Scalar(Scalar::F32(1.0)),
                KernelArg::Buffer(&fake),
                KernelArg::Buffer(&buf),
                KernelArg::Scalar(Scalar::U32(1)),
            ]
        ),
        Err(DeviceError::BadArgument(_))
    ));

    // Too few arguments, and a scalar of the wrong size.
    assert!(matches!(
        gpu.launch(&SAXPY, 1, &[KernelArg::Scalar(Scalar::F32(1.0))]),
        Err(DeviceError::BadArgument(_))
    ));
    assert!(matches!(
        gpu.launch(
            &SAXPY,
            1,
            &[
                KernelArg::Scalar(Scalar::F64(1.0)),
                KernelArg::Buffer(&buf),
                KernelArg::Buffer(&buf),
                KernelArg::Scalar(Scalar::U32(1)),
            ]
        ),
        Err(DeviceError::BadArgument(_))
    ));
}

#[test]
fn a_buffer_larger_than_the_device_allocates_is_out_of_memory() {
    let d = device();
    let dev = ocl(&d);
    let too_big = dev.max_alloc() + 1;
    match dev.alloc(too_big) {
        Err(DeviceError::OutOfMemory {
            memory, requested, ..
        }) => {
            assert_eq!(memory, MemorySpace::custom("opencl", 0));
            assert_eq!(requested, too_big);
        }
        r => panic!("expected out of memory, got {r:?}"),
    }
}

#[test]
fn the_ledger_counts_live_buffers() {
    let d = device();
    let ledger = d.ledger().clone();
    let start = ledger.used();
    let a = d.alloc(1 << 20).unwrap();
    let b = d.upload(&varied(4096)).unwrap();
    assert_eq!(ledger.used(), start + (1 << 20) + 4096);
    let c = d.duplicate(&b).unwrap();
    assert_eq!(ledger.used(), start + (1 << 20) + 8192);
    drop((a, b));
    assert_eq!(ledger.used(), start + 4096);
    drop(c);
    assert_eq!(ledger.used(), start);
    assert!(ledger.peak() >= (1 << 20) + 8192);
}

#[test]
fn a_capped_device_refuses_what_does_not_fit() {
    run_child(
        "child_capped_device",
        &[(ENV_DEVICE_MEMORY, "4MiB".as_ref())],
    );
}

#[test]
#[ignore = "run in a child process by a_capped_device_refuses_what_does_not_fit"]
fn child_capped_device() {
    if !in_child() {
        return;
    }
    let procs = match opencl::detect(&DetectContext::new(WorkerId(0))) {
        Detection::Found(procs) => procs,
        Detection::Unavailable { reason } => panic!("OpenCL unavailable: {reason}"),
    };
    let d = procs[0].as_any().downcast_ref::<DeviceProc>().unwrap();
    assert_eq!(d.ledger().capacity(), 4 << 20);
    let held = d.alloc(3 << 20).unwrap();
    match d.alloc(8 << 20) {
        Err(DeviceError::OutOfMemory {
            requested,
            capacity,
            ..
        }) => {
            assert_eq!(requested, 8 << 20);
            assert_eq!(capacity, 4 << 20);
        }
        r => panic!("expected out of memory, got {r:?}"),
    }
    // 2 MiB more does not fit beside the 3 held; it does once they are freed.
    assert!(matches!(
        d.alloc(2 << 20),
        Err(DeviceError::OutOfMemory { available, .. }) if available == 1 << 20
    ));
    drop(held);
    let fits = d.alloc(2 << 20).unwrap();
    assert_eq!(d.ledger().used(), 2 << 20);
    drop(fits);
    println!("child child_capped_device done");
}

#[test]
fn a_machine_without_an_icd_detects_nothing_and_says_why() {
    let dir = empty_dir("no-icd");
    let out = run_child("child_no_icd", &[("OCL_ICD_VENDORS", dir.as_os_str())]);
    let _ = std::fs::remove_dir(&dir);
    assert!(out.contains("reason: no OpenCL platform"), "{out}");
}

#[test]
#[ignore = "run in a child process by a_machine_without_an_icd_detects_nothing_and_says_why"]
fn child_no_icd() {
    if !in_child() {
        return;
    }
    match opencl::detect(&DetectContext::new(WorkerId(0))) {
        Detection::Unavailable { reason } => {
            assert!(reason.contains("no OpenCL platform"), "{reason}");
            println!("reason: {reason}");
        }
        Detection::Found(procs) => panic!("found {} devices without an ICD", procs.len()),
    }
    assert!(matches!(
        OpenClDevice::enumerate(),
        Err(DeviceError::Backend { .. })
    ));
    println!("child child_no_icd done");
}

#[test]
fn devices_of_one_context_copy_directly_and_others_do_not() {
    // Two detections: two contexts on the same device, which cannot share buffers.
    let a = device();
    let b = device();
    let src = a.upload(&varied(1000)).unwrap();
    let dst = b.alloc(1000).unwrap();
    assert!(!ocl(&a).shares_context(ocl(&b)));
    assert!(b.gpu().copy_from_peer(&**a.gpu(), &src, &dst).is_none());

    // PoCL lists its CPU device twice when asked: two devices of one context.
    let out = run_child(
        "child_two_devices",
        &[("POCL_DEVICES", "pthread pthread".as_ref())],
    );
    println!("{out}");
}

#[test]
#[ignore = "run in a child process by devices_of_one_context_copy_directly_and_others_do_not"]
fn child_two_devices() {
    if !in_child() {
        return;
    }
    let devices = OpenClDevice::enumerate().unwrap();
    assert!(devices.len() >= 2, "PoCL gave {} devices", devices.len());
    let mut devices = devices.into_iter();
    let (d0, d1) = (devices.next().unwrap(), devices.next().unwrap());
    assert!(d0.shares_context(&d1));
    let (p0, p1) = (
        DeviceProc::new(Arc::new(d0)).unwrap(),
        DeviceProc::new(Arc::new(d1)).unwrap(),
    );
    assert_eq!(p1.memory(), MemorySpace::custom("opencl", 1));

    // A kernel writes on device 0; device 1 copies its result without the host.
    let n = 5000u32;
    let x = d0_floats(n);
    let xb = p0.upload(&floats(&x)).unwrap();
    let yb = p0.upload(&floats(&vec![1.0; n as usize])).unwrap();
    p0.launch(
        &SAXPY,
        n,
        &[
            KernelArg::Scalar(Scalar::F32(3.0)),
            KernelArg::Buffer(&xb),
            KernelArg::Buffer(&yb),
            KernelArg::Scalar(Scalar::U32(n)),
        ],
    )
    .unwrap();
    let dst = p1.alloc(yb.len()).unwrap();
    p1.gpu()
        .copy_from_peer(&**p0.gpu(), &yb, &dst)
        .expect("one context: a direct copy")
        .unwrap();
    let got = from_floats(&p1.download(&dst).unwrap());
    for (i, g) in got.iter().enumerate() {
        assert!(close(*g, 3.0 * x[i] + 1.0), "y[{i}] = {g}");
    }
    // The source must be the peer's: a buffer of device 1 as source is refused.
    assert!(matches!(
        p1.gpu().copy_from_peer(&**p0.gpu(), &dst, &dst),
        Some(Err(DeviceError::BadArgument(_)))
    ));
    println!("child child_two_devices done");
}

fn d0_floats(n: u32) -> Vec<f32> {
    (0..n).map(|i| i as f32 * 0.125).collect()
}

fn empty_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dagger-opencl-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}
