//! The CUDA backend on a real device. Each test that needs one first looks for the driver
//! and a device; without them it says on stderr that it skipped and passes, unless
//! `DAGGER_REQUIRE_CUDA=1` is set, when it fails (so a run on a GPU machine cannot pass by
//! skipping). The first test runs everywhere: on a machine without the driver, detection
//! says so and nothing panics.
#![cfg(feature = "cuda")]

use dagger_core::WorkerId;
use dagger_proc::device::cuda::{self, CudaDevice};
use dagger_proc::device::{DeviceError, DeviceProc, Gpu, Kernel, KernelArg, RawBuffer, Scalar};
use dagger_proc::{DetectContext, Detection, LocalProcs};
use std::sync::Arc;

const ENV_REQUIRE: &str = "DAGGER_REQUIRE_CUDA";

fn required() -> bool {
    std::env::var(ENV_REQUIRE).is_ok_and(|v| v == "1")
}

/// Says why the test cannot run, then skips it, or fails it when a device is required.
fn skip(why: &str) {
    assert!(!required(), "{ENV_REQUIRE}=1 but {why}");
    eprintln!("skipped: {why}");
}

/// A fresh handle on device 0 (its own kernel cache and counters), or `None` after saying
/// why there is none.
fn device() -> Option<Arc<CudaDevice>> {
    if !cuda::driver_present() {
        skip(cuda::NO_DRIVER);
        return None;
    }
    match CudaDevice::open(0) {
        Ok(d) => Some(Arc::new(d)),
        Err(e) => {
            skip(&format!("no CUDA device ({e})"));
            None
        }
    }
}

/// True if NVRTC is there; otherwise says that the test skips (or fails when required).
fn nvrtc() -> bool {
    if cuda::nvrtc_present() {
        return true;
    }
    skip("no NVRTC (libnvrtc.so not found)");
    false
}

fn proc_of(gpu: &Arc<CudaDevice>) -> DeviceProc {
    DeviceProc::new(gpu.clone() as Arc<dyn Gpu>).expect("the device's thread starts")
}

fn f32s_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn bytes_to_f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

const SAXPY_CUDA: Kernel = Kernel::new("saxpy")
    .cuda(
        r#"
extern "C" __global__ void saxpy(const float* x, float* y, float a, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = a * x[i] + y[i];
    }
}
"#,
    )
    .workgroup(256);

/// The same kernel as hand-written PTX: runs without NVRTC.
const SAXPY_PTX: Kernel = Kernel::new("saxpy_ptx")
    .ptx(
        r#"
.version 7.0
.target sm_52
.address_size 64

.visible .entry saxpy_ptx(
    .param .u64 x,
    .param .u64 y,
    .param .f32 a,
    .param .u32 n
)
{
    .reg .pred %p<2>;
    .reg .f32 %f<4>;
    .reg .b32 %r<6>;
    .reg .b64 %rd<8>;

    ld.param.u64 %rd1, [x];
    ld.param.u64 %rd2, [y];
    ld.param.f32 %f1, [a];
    ld.param.u32 %r1, [n];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r5, %r2, %r3, %r4;
    setp.ge.u32 %p1, %r5, %r1;
    @%p1 bra DONE;
    cvta.to.global.u64 %rd3, %rd1;
    cvta.to.global.u64 %rd4, %rd2;
    mul.wide.u32 %rd5, %r5, 4;
    add.s64 %rd6, %rd3, %rd5;
    add.s64 %rd7, %rd4, %rd5;
    ld.global.f32 %f2, [%rd6];
    ld.global.f32 %f3, [%rd7];
    fma.rn.f32 %f3, %f1, %f2, %f3;
    st.global.f32 [%rd7], %f3;
DONE:
    ret;
}
"#,
    )
    .workgroup(128);

/// Runs a saxpy kernel (`y = a*x + y`) over 100_003 floats and checks every one against
/// the same computation on the CPU. The values are exact in `f32` with or without a fused
/// multiply-add, so the comparison is exact.
fn check_saxpy(gpu: &Arc<CudaDevice>, kernel: &Kernel) {
    const N: u32 = 100_003;
    let a = 3.0f32;
    let x: Vec<f32> = (0..N).map(|i| i as f32 * 0.25).collect();
    let y: Vec<f32> = (0..N).map(|i| (i % 7) as f32).collect();
    let proc = proc_of(gpu);
    let xb = proc.upload(&f32s_to_bytes(&x)).unwrap();
    let yb = proc.upload(&f32s_to_bytes(&y)).unwrap();
    proc.launch(
        kernel,
        N,
        &[
            KernelArg::Buffer(&xb),
            KernelArg::Buffer(&yb),
            KernelArg::Scalar(Scalar::F32(a)),
            KernelArg::Scalar(Scalar::U32(N)),
        ],
    )
    .unwrap();
    let got = bytes_to_f32s(&proc.download(&yb).unwrap());
    let want: Vec<f32> = x.iter().zip(&y).map(|(x, y)| a * x + y).collect();
    assert_eq!(got.len(), want.len());
    let wrong: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
    assert!(
        wrong.is_empty(),
        "{} of {N} wrong, first at {}: got {}, want {}",
        wrong.len(),
        wrong[0],
        got[wrong[0]],
        want[wrong[0]]
    );
}

#[test]
fn detection_without_a_driver_is_unavailable_and_nothing_panics() {
    let ctx = DetectContext::new(WorkerId(0));
    let detection = cuda::detect(&ctx);
    if !cuda::driver_present() {
        match &detection {
            Detection::Unavailable { reason } => assert_eq!(reason, cuda::NO_DRIVER),
            other => panic!("detection without a driver found {other:?}"),
        }
        // Every entry point answers with an error, not a panic.
        assert!(matches!(
            CudaDevice::open(0),
            Err(DeviceError::Backend { message, .. }) if message == cuda::NO_DRIVER
        ));
        assert!(cuda::raw_memcpy_bench(1 << 20, 1).is_err());
        assert_eq!(cuda::devices().unwrap_err(), cuda::NO_DRIVER);
        assert!(!cuda::checks_kernel_arguments());
        // Through the registry: the detector is there, reported unavailable, not failed.
        let local = LocalProcs::detect(&ctx);
        assert!(local.failures().is_empty(), "{:?}", local.failures());
        let u = local
            .unavailable()
            .iter()
            .find(|u| u.detector == cuda::DETECTOR)
            .expect("the cuda detector reports itself unavailable");
        assert_eq!(u.reason, cuda::NO_DRIVER);
        eprintln!("no CUDA driver here: detection says {:?}", u.reason);
    } else {
        match &detection {
            Detection::Found(procs) => assert!(!procs.is_empty()),
            Detection::Unavailable { reason } => {
                assert!(reason.contains("CUDA"), "{reason}");
                skip(&format!("no CUDA device ({reason})"));
            }
        }
    }
}

#[test]
fn detection_finds_the_devices_with_their_facts() {
    let Some(_) = device() else { return };
    let ctx = DetectContext::new(WorkerId(0));
    let Detection::Found(procs) = cuda::detect(&ctx) else {
        panic!("a driver with a device, but detection found nothing")
    };
    let count = cuda::devices().unwrap().len();
    assert_eq!(procs.len(), count);
    for (i, p) in procs.iter().enumerate() {
        let dp = p
            .as_any()
            .downcast_ref::<DeviceProc>()
            .expect("a device processor");
        let info = dp.info();
        eprintln!(
            "cuda:{i}: {} ({} SMs, {} bytes, {:?})",
            info.name, info.compute_units, info.memory_bytes, info.extra
        );
        assert_eq!(info.backend, "cuda");
        assert_eq!(info.index as usize, i);
        assert_eq!(info.vendor, "NVIDIA");
        assert!(!info.name.is_empty());
        assert!(info.memory_bytes > 0);
        assert!(info.compute_units > 0);
        assert!(info.extra.contains_key("compute_capability"));
        assert_eq!(p.kind().to_string(), "cuda");
        assert_eq!(p.memory().to_string(), format!("cuda:{i}"));
    }
}

#[test]
fn a_mebibyte_goes_there_and_back() {
    let Some(gpu) = device() else { return };
    let proc = proc_of(&gpu);
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let buf = proc.upload(&data).unwrap();
    assert_eq!(buf.len(), data.len() as u64);
    assert_eq!(buf.memory().to_string(), "cuda:0");
    assert_eq!(proc.download(&buf).unwrap(), data);
    // A part of it, and an empty buffer.
    let mut head = vec![0u8; 1000];
    gpu.download(&buf, &mut head).unwrap();
    assert_eq!(head, data[..1000]);
    let empty = proc.alloc(0).unwrap();
    assert!(empty.is_empty());
    assert!(proc.download(&empty).unwrap().is_empty());
    // More bytes than the buffer holds is refused.
    assert!(matches!(
        gpu.upload(&empty, &[1, 2, 3]),
        Err(DeviceError::BadArgument(_))
    ));
}

#[test]
fn a_buffer_is_copied_on_the_device() {
    let Some(gpu) = device() else { return };
    let proc = proc_of(&gpu);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let src = proc.upload(&data).unwrap();
    let dup = proc.duplicate(&src).unwrap();
    assert_eq!(proc.download(&dup).unwrap(), data);
    // Into a longer buffer: the prefix is the source.
    let dst = proc.upload(&vec![0xEE; 400_000]).unwrap();
    gpu.copy(&src, &dst).unwrap();
    let back = proc.download(&dst).unwrap();
    assert_eq!(back[..data.len()], data[..]);
    assert!(back[data.len()..].iter().all(|&b| b == 0xEE));
    assert!(matches!(
        gpu.copy(&dst, &src),
        Err(DeviceError::BadArgument(_))
    ));
}

#[test]
fn a_buffer_of_another_memory_is_refused() {
    let Some(gpu) = device() else { return };
    let foreign = RawBuffer::new(0u32, 16, dagger_core::MemorySpace::custom("cuda", 999));
    assert!(matches!(
        gpu.upload(&foreign, &[0; 4]),
        Err(DeviceError::BadArgument(_))
    ));
    let proc = proc_of(&gpu);
    let mine = proc.alloc(16).unwrap();
    assert!(matches!(
        gpu.copy(&foreign, &mine),
        Err(DeviceError::BadArgument(_))
    ));
}

#[test]
fn saxpy_in_cuda_c_matches_the_cpu() {
    let Some(gpu) = device() else { return };
    if !nvrtc() {
        return;
    }
    check_saxpy(&gpu, &SAXPY_CUDA);
}

#[test]
fn saxpy_in_ptx_matches_the_cpu() {
    let Some(gpu) = device() else { return };
    check_saxpy(&gpu, &SAXPY_PTX);
}

#[test]
fn a_kernel_is_built_once_per_device() {
    let Some(gpu) = device() else { return };
    let proc = proc_of(&gpu);
    let buf = proc.upload(&f32s_to_bytes(&[1.0; 64])).unwrap();
    let args = |b| {
        [
            KernelArg::Buffer(b),
            KernelArg::Buffer(b),
            KernelArg::Scalar(Scalar::F32(1.0)),
            KernelArg::Scalar(Scalar::U32(64)),
        ]
    };
    assert_eq!(gpu.kernels_built(), 0);
    for _ in 0..3 {
        proc.launch(&SAXPY_PTX, 64, &args(&buf)).unwrap();
    }
    assert_eq!(gpu.kernels_built(), 1);
    // x = y = 1, three times y = x + y.
    assert_eq!(bytes_to_f32s(&proc.download(&buf).unwrap()), vec![8.0; 64]);
    if cuda::nvrtc_present() {
        proc.launch(&SAXPY_CUDA, 64, &args(&buf)).unwrap();
        proc.launch(&SAXPY_CUDA, 64, &args(&buf)).unwrap();
        assert_eq!(gpu.kernels_built(), 2);
    }
    // No work items: nothing is built or run.
    proc.launch(&Kernel::new("never").ptx("not ptx"), 0, &[])
        .unwrap();
    assert_eq!(
        gpu.kernels_built(),
        if cuda::nvrtc_present() { 2 } else { 1 }
    );
}

#[test]
fn a_syntax_error_is_a_build_error_with_the_compiler_log() {
    let Some(gpu) = device() else { return };
    const BROKEN: Kernel =
        Kernel::new("broken").cuda(r#"extern "C" __global__ void broken(float* x) { x[0] = ; }"#);
    let err = gpu.launch(&BROKEN, 1, &[]).unwrap_err();
    let DeviceError::Build {
        kernel,
        backend,
        log,
    } = err
    else {
        panic!("not a build error: {err:?}")
    };
    assert_eq!(kernel, "broken");
    assert_eq!(backend, "cuda");
    if cuda::nvrtc_present() {
        eprintln!("NVRTC said: {log}");
        assert!(log.contains("error"), "{log}");
    } else {
        assert!(log.starts_with("NVRTC not found"), "{log}");
        nvrtc();
    }
    assert_eq!(gpu.kernels_built(), 0);
    // A kernel with no CUDA source, and PTX the driver refuses.
    let opencl_only = Kernel::new("k").opencl("__kernel void k() {}");
    assert!(matches!(
        gpu.launch(&opencl_only, 1, &[]),
        Err(DeviceError::NoSource {
            backend: "cuda",
            ..
        })
    ));
    let bad_ptx = Kernel::new("k").ptx(".version 7.0\n.target sm_52\nthis is not ptx");
    assert!(matches!(
        gpu.launch(&bad_ptx, 1, &[]),
        Err(DeviceError::Build { .. })
    ));
}

#[test]
fn wrong_kernel_arguments_are_refused_before_launch() {
    let Some(gpu) = device() else { return };
    if !cuda::checks_kernel_arguments() {
        skip("the driver cannot tell kernel parameters (cuFuncGetParamInfo)");
        return;
    }
    // The driver reads the parameters (two pointers, a float, an unsigned int) ...
    assert_eq!(
        gpu.kernel_params(&SAXPY_PTX).unwrap(),
        Some(vec![8, 8, 4, 4])
    );
    // ... so arguments that do not fit them never reach the driver.
    let proc = proc_of(&gpu);
    let buf = proc.alloc(64 * 4).unwrap();
    let too_few = [KernelArg::Buffer(&buf), KernelArg::Buffer(&buf)];
    assert!(matches!(
        proc.launch(&SAXPY_PTX, 64, &too_few),
        Err(DeviceError::BadArgument(m)) if m.contains("takes 4 arguments, 2 given")
    ));
    let double_for_float = [
        KernelArg::Buffer(&buf),
        KernelArg::Buffer(&buf),
        KernelArg::Scalar(Scalar::F64(1.0)),
        KernelArg::Scalar(Scalar::U32(64)),
    ];
    assert!(matches!(
        proc.launch(&SAXPY_PTX, 64, &double_for_float),
        Err(DeviceError::BadArgument(m)) if m.contains("argument 2")
    ));
    gpu.synchronize().unwrap();
}

#[test]
fn the_ledger_returns_to_its_start() {
    let Some(gpu) = device() else { return };
    let proc = proc_of(&gpu);
    let ledger = proc.ledger().clone();
    assert_eq!(ledger.used(), 0);
    assert!(ledger.capacity() <= gpu.info().memory_bytes);
    {
        let a = proc.alloc(1 << 20).unwrap();
        let b = proc.upload(&[7u8; 4096]).unwrap();
        let c = proc.duplicate(&b).unwrap();
        assert_eq!(ledger.used(), (1 << 20) + 2 * 4096);
        drop(a);
        assert_eq!(ledger.used(), 2 * 4096);
        drop((b, c));
    }
    gpu.synchronize().unwrap();
    assert_eq!(ledger.used(), 0);
    assert_eq!(ledger.peak(), (1 << 20) + 2 * 4096);
}

#[test]
fn too_much_memory_is_out_of_memory_not_a_crash() {
    let Some(gpu) = device() else { return };
    // The ledger refuses past its capacity.
    let proc = DeviceProc::with_capacity(gpu.clone() as Arc<dyn Gpu>, 64 << 20).unwrap();
    let held = proc.alloc(48 << 20).unwrap();
    assert!(matches!(
        proc.alloc(32 << 20),
        Err(DeviceError::OutOfMemory { requested, capacity, .. })
            if requested == 32 << 20 && capacity == 64 << 20
    ));
    drop(held);
    assert!(proc.alloc(32 << 20).is_ok());
    // The driver refuses more than the device has: the same error, and the device works on.
    let too_much = gpu.info().memory_bytes * 2;
    assert!(matches!(
        gpu.alloc(too_much),
        Err(DeviceError::OutOfMemory { requested, .. }) if requested == too_much
    ));
    let small = proc.upload(&[1, 2, 3]).unwrap();
    assert_eq!(proc.download(&small).unwrap(), vec![1, 2, 3]);
}

#[test]
fn a_peer_copy_goes_between_two_devices() {
    let Some(_) = device() else { return };
    let devs = cuda::devices().unwrap();
    if devs.len() < 2 {
        eprintln!("skipped: one CUDA device, no peer to copy from");
        return;
    }
    let (a, b) = (proc_of(&devs[0]), proc_of(&devs[1]));
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    let src = a.upload(&data).unwrap();
    let dst = b.alloc(data.len() as u64).unwrap();
    match b.gpu().copy_from_peer(a.gpu().as_ref(), &src, &dst) {
        Some(r) => {
            r.unwrap();
            assert_eq!(b.download(&dst).unwrap(), data);
        }
        None => eprintln!("skipped: the two devices have no peer access"),
    }
}

#[test]
fn the_raw_memcpy_bench_measures_both_ways() {
    let Some(_) = device() else { return };
    let (htod, dtoh) = cuda::raw_memcpy_bench(8 << 20, 3).unwrap();
    eprintln!(
        "raw cudarc memcpy, 8 MiB pageable: {htod:.0} MB/s to the device, {dtoh:.0} MB/s back"
    );
    assert!(htod.is_finite() && htod > 0.0);
    assert!(dtoh.is_finite() && dtoh > 0.0);
    assert!(matches!(
        cuda::raw_memcpy_bench(0, 3),
        Err(DeviceError::BadArgument(_))
    ));
}
