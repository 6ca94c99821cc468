//! The CUDA backend (feature `cuda`): NVIDIA devices through the driver API, with
//! [`cudarc`].
//!
//! Nothing of CUDA is needed to build: the driver library (`libcuda.so`) is loaded when
//! detection first runs, and NVRTC (`libnvrtc.so`) when a kernel with CUDA C source is first
//! built. A machine without the driver reports the detector unavailable (`no CUDA driver
//! (libcuda.so not found)`); one with the driver but without NVRTC runs kernels given as PTX
//! and refuses those with only CUDA C source ([`DeviceError::Build`], `NVRTC not found`).
//!
//! Each [`CudaDevice`] holds the device's primary context and queues all its work on that
//! context's default stream, in the order the calls are made: an upload or a download
//! returns when its bytes have arrived, a kernel launch returns once queued (a later
//! download, copy or [`Gpu::synchronize`] waits for it). A kernel is built once per device
//! on first use (NVRTC for the device's architecture, then the driver's loader) and kept.
//! Kernel arguments are checked against the kernel's parameters (count and sizes) when the
//! driver can say them (`cuFuncGetParamInfo`, CUDA 12.4 and later).
//!
//! Every call into the CUDA libraries is guarded: cudarc panics when a library or a symbol
//! is missing, and such a panic becomes a [`DeviceError::Backend`] (or, during detection, an
//! unavailable detector), never a crash of the process.
//!
//! Not guaranteed: that peer copies go straight between devices (only when the driver lets
//! the two devices access each other; otherwise [`Gpu::copy_from_peer`] answers `None` and
//! the caller goes through the host), or that a kernel fault is reported by the call that
//! launched it (it is reported by the next call that waits on the device, and may leave the
//! context unusable, as CUDA's sticky errors do).

use super::{detection_of, DeviceError, DeviceInfo, Gpu, Kernel, KernelArg, RawBuffer, Scalar};
use crate::{DetectContext, Detection};
use cudarc::driver::result::DriverError;
use cudarc::driver::sys::{self, CUdevice_attribute, CUresult};
use cudarc::driver::{result, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};
use dagger_core::MemorySpace;
use parking_lot::Mutex;
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// The detector's name, which is also the backend's name, the processor kind and the kind
/// of the devices' memory spaces (`cuda:0`, `cuda:1`, ...).
pub const DETECTOR: &str = "cuda";

const BACKEND: &str = "cuda";

/// The reason detection gives on a machine without the CUDA driver.
pub const NO_DRIVER: &str = "no CUDA driver (libcuda.so not found)";

/// True if the CUDA driver library can be loaded on this machine. Checked once per process
/// (it tries to open the library under its usual names); nothing else of CUDA is called.
pub fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only opens and closes the library, running its initialisers.
    *PRESENT.get_or_init(|| catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false))
}

/// True if NVRTC, the run-time compiler of CUDA C, can be loaded on this machine. Without
/// it only kernels given as PTX can run. Checked once per process.
pub fn nvrtc_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: as in `driver_present`.
    *PRESENT.get_or_init(|| {
        catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
    })
}

/// True if the driver can tell a kernel's parameters (`cuFuncGetParamInfo`, CUDA 12.4 and
/// later), so that [`Gpu::launch`] checks the arguments' count and sizes before launching.
/// False without a driver.
pub fn checks_kernel_arguments() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        driver_present()
            && catch_unwind(|| {
                // SAFETY: the library is present (checked above); looking a symbol up calls
                // nothing.
                unsafe {
                    sys::culib()
                        .get::<unsafe extern "C" fn()>(b"cuFuncGetParamInfo")
                        .is_ok()
                }
            })
            .unwrap_or(false)
    })
}

/// Finds this backend's devices: one [`CudaDevice`] processor per device the driver shows
/// (`CUDA_VISIBLE_DEVICES` applies). Unavailable, with the reason, when the driver library
/// is missing, refuses to start or shows no device. Never panics.
pub fn detect(_ctx: &DetectContext) -> Detection {
    // Every call into CUDA is guarded already; this is the last guard, so that detection
    // cannot take the process down whatever the driver does.
    let found = catch_unwind(|| {
        devices().map(|devs| {
            devs.into_iter()
                .map(|d| d as Arc<dyn Gpu>)
                .collect::<Vec<_>>()
        })
    })
    .unwrap_or_else(|_| Err("the CUDA driver failed while devices were listed".to_string()));
    detection_of(BACKEND, found)
}

/// Opens every device the driver shows, in ordinal order. `Err` says why there is none:
/// no driver ([`NO_DRIVER`]), `cuInit` failed, or no device. A device that fails to open
/// while others open is skipped with a line on stderr. Costs a context per device (the
/// primary context, shared with any other user of CUDA in the process).
pub fn devices() -> Result<Vec<Arc<CudaDevice>>, String> {
    if !driver_present() {
        return Err(NO_DRIVER.to_string());
    }
    let count = guarded(|| CudaContext::device_count().map_err(driver_error))
        .map_err(|e| format!("the CUDA driver did not start: {}", backend_message(&e)))?;
    if count <= 0 {
        return Err("no CUDA device (the driver shows none)".to_string());
    }
    let mut devs = Vec::new();
    let mut first_error = None;
    for ordinal in 0..count as usize {
        match CudaDevice::open(ordinal) {
            Ok(d) => devs.push(Arc::new(d)),
            Err(e) => {
                eprintln!("dagger: CUDA device {ordinal} is skipped: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    match (devs.is_empty(), first_error) {
        (true, Some(e)) => Err(format!(
            "no CUDA device could be opened: {}",
            backend_message(&e)
        )),
        _ => Ok(devs),
    }
}

/// Plain cudarc memcpy bandwidth on device 0, the yardstick of the runtime's own moves:
/// `iters` host-to-device copies of a pageable `Vec<u8>` of `bytes` bytes, then `iters`
/// device-to-host copies, each waited for, after one untimed copy each way. Returns
/// `(host_to_device, device_to_host)` in MB/s (10^6 bytes per second). Costs `bytes` of
/// device memory and twice that of host memory while it runs.
pub fn raw_memcpy_bench(bytes: usize, iters: u32) -> Result<(f64, f64), DeviceError> {
    if bytes == 0 || iters == 0 {
        return Err(DeviceError::BadArgument(
            "the memcpy benchmark needs at least one byte and one iteration".into(),
        ));
    }
    require_driver()?;
    guarded(|| {
        let ctx = CudaContext::new(0).map_err(driver_error)?;
        let stream = ctx.default_stream();
        let host: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
        let mut back = vec![0u8; bytes];
        // SAFETY: every byte is written by the first copy before anything reads it.
        let mut dev = unsafe { stream.alloc::<u8>(bytes) }.map_err(driver_error)?;
        stream.memcpy_htod(&host, &mut dev).map_err(driver_error)?;
        stream.memcpy_dtoh(&dev, &mut back).map_err(driver_error)?;
        stream.synchronize().map_err(driver_error)?;
        let start = Instant::now();
        for _ in 0..iters {
            stream.memcpy_htod(&host, &mut dev).map_err(driver_error)?;
            stream.synchronize().map_err(driver_error)?;
        }
        let htod = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for _ in 0..iters {
            stream.memcpy_dtoh(&dev, &mut back).map_err(driver_error)?;
            stream.synchronize().map_err(driver_error)?;
        }
        let dtoh = start.elapsed().as_secs_f64();
        if back != host {
            return Err(DeviceError::backend(
                BACKEND,
                "the memcpy benchmark read back other bytes than it wrote",
            ));
        }
        let total = bytes as f64 * f64::from(iters);
        let rate = |secs: f64| total / secs.max(f64::MIN_POSITIVE) / 1e6;
        Ok((rate(htod), rate(dtoh)))
    })
}

/// The backend's buffer inside a [`RawBuffer`]: the device allocation and its address.
struct CudaBuf {
    /// The device address of the first byte.
    ptr: sys::CUdeviceptr,
    /// Owns the allocation (freed, in stream order, when dropped) and keeps the context.
    _slice: CudaSlice<u8>,
}

/// A kernel built for one device.
#[derive(Clone)]
struct Built {
    func: CudaFunction,
    /// The size in bytes of each parameter, when the driver can say.
    params: Option<Arc<[usize]>>,
}

/// One NVIDIA device: its primary context and default stream, its built kernels and the
/// devices it may copy from directly. Thread-safe; every call binds the context to the
/// calling thread first.
pub struct CudaDevice {
    info: DeviceInfo,
    memory: MemorySpace,
    ordinal: usize,
    compute_capability: (i32, i32),
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Mutex<HashMap<Kernel, Built>>,
    built: AtomicU64,
    /// Per peer ordinal: whether this context may access that device's memory.
    peers: Mutex<HashMap<usize, bool>>,
}

impl CudaDevice {
    /// Opens the device with this ordinal (its index among the devices the driver shows):
    /// retains its primary context and reads what it is. Its [`DeviceInfo::index`] is the
    /// ordinal. Fails with [`DeviceError::Backend`] when there is no driver, no such
    /// device, or the driver refuses.
    pub fn open(ordinal: usize) -> Result<Self, DeviceError> {
        require_driver()?;
        let index = u32::try_from(ordinal)
            .map_err(|_| DeviceError::BadArgument(format!("CUDA ordinal {ordinal}")))?;
        guarded(|| {
            let ctx = CudaContext::new(ordinal).map_err(driver_error)?;
            // SAFETY: before any allocation of this context object. All the work of this
            // device goes to one stream, so the per-buffer events that order several
            // streams are not needed; peer copies wait for the source device first.
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx.default_stream();
            let name = ctx.name().map_err(driver_error)?;
            let memory_bytes = ctx.total_mem().map_err(driver_error)? as u64;
            let sms = ctx
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(driver_error)?;
            let cc = ctx.compute_capability().map_err(driver_error)?;
            let mut extra = BTreeMap::new();
            extra.insert("compute_capability".into(), format!("{}.{}", cc.0, cc.1));
            if let Some(v) = driver_version() {
                extra.insert("driver".into(), format!("{}.{}", v / 1000, (v % 1000) / 10));
            }
            if let Some(bus) = pci_bus_id(ctx.cu_device()) {
                extra.insert("pci_bus_id".into(), bus);
            }
            extra.insert(
                "nvrtc".into(),
                if nvrtc_present() { "yes" } else { "not found" }.into(),
            );
            Ok(Self {
                info: DeviceInfo {
                    backend: BACKEND,
                    index,
                    name,
                    vendor: "NVIDIA".into(),
                    memory_bytes,
                    compute_units: u32::try_from(sms).unwrap_or(0),
                    extra,
                },
                memory: MemorySpace::custom(BACKEND, index),
                ordinal,
                compute_capability: cc,
                ctx,
                stream,
                kernels: Mutex::new(HashMap::new()),
                built: AtomicU64::new(0),
                peers: Mutex::new(HashMap::new()),
            })
        })
    }

    /// The device's ordinal among the devices the driver shows.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The compute capability, `(major, minor)`: `(9, 0)` for an H100 or H200.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// The device's context (its primary context), for code that uses cudarc directly.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream all of this device's work goes to (the context's default stream).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// How many kernels were built for this device (each one once, on its first launch).
    pub fn kernels_built(&self) -> u64 {
        self.built.load(Ordering::Acquire)
    }

    /// The size in bytes of each parameter of `kernel` as built for this device (building
    /// it now if it was not yet), or `None` when the driver cannot say (see
    /// [`checks_kernel_arguments`]). These are the sizes [`Gpu::launch`] checks its
    /// arguments against: 8 for a pointer (a buffer), the scalar's size otherwise.
    pub fn kernel_params(&self, kernel: &Kernel) -> Result<Option<Vec<usize>>, DeviceError> {
        guarded(|| Ok(self.function(kernel)?.params.map(|p| p.to_vec())))
    }

    /// Free and total device memory now, in bytes, as the driver reports it (other
    /// processes' allocations included).
    pub fn memory_info(&self) -> Result<(u64, u64), DeviceError> {
        guarded(|| {
            let (free, total) = self.ctx.mem_get_info().map_err(driver_error)?;
            Ok((free as u64, total as u64))
        })
    }

    /// The backend's buffer of `buf`, if it is a buffer of this device.
    fn own<'b>(&self, buf: &'b RawBuffer) -> Result<&'b CudaBuf, DeviceError> {
        if buf.memory() != &self.memory {
            return Err(DeviceError::BadArgument(format!(
                "a buffer in {} used on {}",
                buf.memory(),
                self.memory
            )));
        }
        buf.downcast_ref::<CudaBuf>()
            .ok_or_else(|| DeviceError::BadArgument(format!("not a CUDA buffer: {buf:?}")))
    }

    fn out_of_memory(&self, requested: u64) -> DeviceError {
        let available = self.ctx.mem_get_info().map_or(0, |(free, _)| free as u64);
        DeviceError::OutOfMemory {
            memory: self.memory.clone(),
            requested,
            available,
            capacity: self.info.memory_bytes,
        }
    }

    /// The kernel built for this device, building it on first use.
    fn function(&self, kernel: &Kernel) -> Result<Built, DeviceError> {
        let mut kernels = self.kernels.lock();
        if let Some(b) = kernels.get(kernel) {
            return Ok(b.clone());
        }
        let built = self.build(kernel)?;
        kernels.insert(*kernel, built.clone());
        self.built.fetch_add(1, Ordering::AcqRel);
        Ok(built)
    }

    fn build(&self, kernel: &Kernel) -> Result<Built, DeviceError> {
        let build_error = |log: String| DeviceError::Build {
            kernel: kernel.name.to_string(),
            backend: BACKEND,
            log,
        };
        let ptx = match (kernel.cuda, kernel.ptx) {
            (Some(src), _) if nvrtc_present() => {
                self.compile(kernel.name, src).map_err(build_error)?
            }
            (_, Some(ptx)) => Ptx::from_src(ptx),
            (Some(_), None) => {
                return Err(build_error(
                    "NVRTC not found (libnvrtc.so): a kernel with only CUDA C source needs \
                     it; give the kernel PTX to run without it"
                        .into(),
                ))
            }
            (None, None) => {
                return Err(DeviceError::NoSource {
                    kernel: kernel.name.to_string(),
                    backend: BACKEND,
                })
            }
        };
        let module = self
            .ctx
            .load_module(ptx)
            .map_err(|e| build_error(format!("the driver did not load the PTX: {}", msg(&e))))?;
        let func = module.load_function(kernel.name).map_err(|e| {
            build_error(format!(
                "no entry point `{}` in the module (an `extern \"C\" __global__` function): {}",
                kernel.name,
                msg(&e)
            ))
        })?;
        let params = param_sizes(&func).map(Arc::from);
        Ok(Built { func, params })
    }

    /// CUDA C to PTX with NVRTC, for this device's architecture (or NVRTC's default one if
    /// this NVRTC does not know the device's). `Err` is the compiler's log.
    fn compile(&self, name: &str, src: &str) -> Result<Ptx, String> {
        let (major, minor) = self.compute_capability;
        let opts = |arch: bool| CompileOptions {
            options: if arch {
                vec![format!("--gpu-architecture=compute_{major}{minor}")]
            } else {
                Vec::new()
            },
            name: Some(format!("{name}.cu")),
            ..Default::default()
        };
        match cudarc::nvrtc::compile_ptx_with_opts(src, opts(true)) {
            Ok(ptx) => Ok(ptx),
            Err(CompileError::CompileError { nvrtc, .. })
                if nvrtc.0 == cudarc::nvrtc::sys::nvrtcResult::NVRTC_ERROR_INVALID_OPTION =>
            {
                cudarc::nvrtc::compile_ptx_with_opts(src, opts(false)).map_err(compile_log)
            }
            Err(e) => Err(compile_log(e)),
        }
    }

    /// Whether this context may read `peer`'s memory directly; enables it on first ask.
    fn peer_access(&self, peer: &CudaDevice) -> bool {
        if peer.ctx.cu_ctx() == self.ctx.cu_ctx() {
            return true;
        }
        let mut peers = self.peers.lock();
        if let Some(&ok) = peers.get(&peer.ordinal) {
            return ok;
        }
        let ok = guarded(|| {
            let mut can = 0;
            // SAFETY: both devices are valid handles of open contexts; `can` outlives the call.
            unsafe {
                sys::cuDeviceCanAccessPeer(&mut can, self.ctx.cu_device(), peer.ctx.cu_device())
            }
            .result()
            .map_err(driver_error)?;
            if can == 0 {
                return Ok(false);
            }
            self.ctx.bind_to_thread().map_err(driver_error)?;
            // SAFETY: the current context is this device's; the peer's context is alive.
            match unsafe { sys::cuCtxEnablePeerAccess(peer.ctx.cu_ctx(), 0) } {
                CUresult::CUDA_SUCCESS | CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => {
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
        .unwrap_or(false);
        peers.insert(peer.ordinal, ok);
        ok
    }
}

impl Gpu for CudaDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn alloc(&self, len: u64) -> Result<RawBuffer, DeviceError> {
        guarded(|| {
            let n = usize::try_from(len)
                .map_err(|_| self.out_of_memory(len))?
                .max(1);
            // SAFETY: the contents are unspecified by contract; nothing reads them before a
            // write through this backend.
            let slice = unsafe { self.stream.alloc::<u8>(n) }.map_err(|e| {
                if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                    self.out_of_memory(len)
                } else {
                    driver_error(e)
                }
            })?;
            let ptr = {
                let (ptr, record) = slice.device_ptr(&self.stream);
                drop(record);
                ptr
            };
            Ok(RawBuffer::new(
                CudaBuf { ptr, _slice: slice },
                len,
                self.memory.clone(),
            ))
        })
    }

    fn upload(&self, buf: &RawBuffer, data: &[u8]) -> Result<(), DeviceError> {
        let dst = self.own(buf)?;
        crate::device::check_fits("upload", data.len() as u64, buf.len())?;
        if data.is_empty() {
            return Ok(());
        }
        guarded(|| {
            self.ctx.bind_to_thread().map_err(driver_error)?;
            // SAFETY: `dst` holds at least `data.len()` bytes; `data` outlives the copy,
            // which is waited for before returning.
            unsafe { result::memcpy_htod_async(dst.ptr, data, self.stream.cu_stream()) }
                .map_err(driver_error)?;
            self.stream.synchronize().map_err(driver_error)
        })
    }

    fn download(&self, buf: &RawBuffer, out: &mut [u8]) -> Result<(), DeviceError> {
        let src = self.own(buf)?;
        crate::device::check_fits("download", out.len() as u64, buf.len())?;
        if out.is_empty() {
            return Ok(());
        }
        guarded(|| {
            self.ctx.bind_to_thread().map_err(driver_error)?;
            // SAFETY: `src` holds at least `out.len()` bytes; `out` outlives the copy, which
            // is waited for before returning.
            unsafe { result::memcpy_dtoh_async(&mut *out, src.ptr, self.stream.cu_stream()) }
                .map_err(driver_error)?;
            self.stream.synchronize().map_err(driver_error)
        })
    }

    fn copy(&self, src: &RawBuffer, dst: &RawBuffer) -> Result<(), DeviceError> {
        let (s, d) = (self.own(src)?, self.own(dst)?);
        crate::device::check_fits("copy", src.len(), dst.len())?;
        if src.is_empty() {
            return Ok(());
        }
        guarded(|| {
            self.ctx.bind_to_thread().map_err(driver_error)?;
            // SAFETY: both buffers are live allocations of this context, `dst` at least as
            // long as `src`; freeing either is queued after the copy on the same stream.
            unsafe {
                result::memcpy_dtod_async(d.ptr, s.ptr, src.len() as usize, self.stream.cu_stream())
            }
            .map_err(driver_error)
        })
    }

    fn copy_from_peer(
        &self,
        from: &dyn Gpu,
        src: &RawBuffer,
        dst: &RawBuffer,
    ) -> Option<Result<(), DeviceError>> {
        let peer = from.as_any().downcast_ref::<CudaDevice>()?;
        if !self.peer_access(peer) {
            return None;
        }
        let run = || {
            let (s, d) = (peer.own(src)?, self.own(dst)?);
            crate::device::check_fits("copy", src.len(), dst.len())?;
            if src.is_empty() {
                return Ok(());
            }
            // The source may still be written by work queued on its own device.
            peer.synchronize()?;
            guarded(|| {
                self.ctx.bind_to_thread().map_err(driver_error)?;
                // SAFETY: both buffers are live allocations of their contexts; the copy is
                // waited for before returning, so neither is freed while it runs.
                unsafe {
                    result::memcpy_peer_async(
                        self.ctx.cu_ctx(),
                        d.ptr,
                        peer.ctx.cu_ctx(),
                        s.ptr,
                        src.len() as usize,
                        self.stream.cu_stream(),
                    )
                }
                .map_err(driver_error)?;
                self.stream.synchronize().map_err(driver_error)
            })
        };
        Some(run())
    }

    fn launch(
        &self,
        kernel: &Kernel,
        global: u32,
        args: &[KernelArg<'_>],
    ) -> Result<(), DeviceError> {
        if global == 0 {
            return Ok(());
        }
        if kernel.workgroup == 0 {
            return Err(DeviceError::BadArgument(format!(
                "kernel `{}` has a workgroup of 0",
                kernel.name
            )));
        }
        let mut slots = Vec::with_capacity(args.len());
        for a in args {
            slots.push(match a {
                KernelArg::Buffer(b) => Slot::new(&self.own(b)?.ptr.to_ne_bytes()),
                KernelArg::Scalar(s) => Slot::scalar(s),
            });
        }
        guarded(|| {
            let built = self.function(kernel)?;
            if let Some(params) = &built.params {
                check_arguments(kernel.name, params, &slots)?;
            }
            let mut pointers: Vec<*mut c_void> = slots
                .iter_mut()
                .map(|s| s.bytes.as_mut_ptr().cast::<c_void>())
                .collect();
            let grid = global.div_ceil(kernel.workgroup);
            self.ctx.bind_to_thread().map_err(driver_error)?;
            // SAFETY: the function belongs to this context; each parameter pointer points at
            // a value of the parameter's size (checked above when the driver can say), read
            // by the driver before `cuLaunchKernel` returns; buffers are freed in stream
            // order, after the kernel.
            unsafe {
                result::launch_kernel(
                    built.func.cu_function(),
                    (grid, 1, 1),
                    (kernel.workgroup, 1, 1),
                    0,
                    self.stream.cu_stream(),
                    &mut pointers,
                )
            }
            .map_err(driver_error)
        })
    }

    fn synchronize(&self) -> Result<(), DeviceError> {
        guarded(|| self.stream.synchronize().map_err(driver_error))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal)
            .field("name", &self.info.name)
            .field("memory_bytes", &self.info.memory_bytes)
            .field("kernels_built", &self.kernels_built())
            .finish()
    }
}

/// One kernel parameter's value, 8-aligned, as `cuLaunchKernel` reads it.
#[repr(C, align(8))]
struct Slot {
    bytes: [u8; 8],
    len: usize,
}

impl Slot {
    fn new(value: &[u8]) -> Self {
        let mut bytes = [0u8; 8];
        bytes[..value.len()].copy_from_slice(value);
        Self {
            bytes,
            len: value.len(),
        }
    }

    fn scalar(s: &Scalar) -> Self {
        match *s {
            Scalar::F32(v) => Self::new(&v.to_ne_bytes()),
            Scalar::F64(v) => Self::new(&v.to_ne_bytes()),
            Scalar::I32(v) => Self::new(&v.to_ne_bytes()),
            Scalar::U32(v) => Self::new(&v.to_ne_bytes()),
            Scalar::I64(v) => Self::new(&v.to_ne_bytes()),
            Scalar::U64(v) => Self::new(&v.to_ne_bytes()),
        }
    }
}

fn check_arguments(kernel: &str, params: &[usize], slots: &[Slot]) -> Result<(), DeviceError> {
    if params.len() != slots.len() {
        return Err(DeviceError::BadArgument(format!(
            "kernel `{kernel}` takes {} arguments, {} given",
            params.len(),
            slots.len()
        )));
    }
    for (i, (&want, slot)) in params.iter().zip(slots).enumerate() {
        if want != slot.len {
            return Err(DeviceError::BadArgument(format!(
                "argument {i} of kernel `{kernel}` is {want} bytes, a value of {} given",
                slot.len
            )));
        }
    }
    Ok(())
}

/// The size of each parameter of `func`, if the driver can say.
fn param_sizes(func: &CudaFunction) -> Option<Vec<usize>> {
    if !checks_kernel_arguments() {
        return None;
    }
    let mut sizes = Vec::new();
    // A kernel has at most a few thousand bytes of parameters.
    for i in 0..4096 {
        let (mut offset, mut size) = (0usize, 0usize);
        // SAFETY: a function of a loaded module; the out-pointers outlive the call.
        match unsafe { sys::cuFuncGetParamInfo(func.cu_function(), i, &mut offset, &mut size) } {
            CUresult::CUDA_SUCCESS => sizes.push(size),
            CUresult::CUDA_ERROR_INVALID_VALUE => return Some(sizes),
            _ => return None,
        }
    }
    None
}

fn driver_version() -> Option<i32> {
    let mut v = 0;
    // SAFETY: the driver is loaded; `v` outlives the call.
    unsafe { sys::cuDriverGetVersion(&mut v) }.result().ok()?;
    Some(v)
}

fn pci_bus_id(dev: sys::CUdevice) -> Option<String> {
    let mut buf = [0u8; 32];
    // SAFETY: `buf` holds the 32 bytes announced; the driver writes a NUL-terminated string.
    unsafe { sys::cuDeviceGetPCIBusId(buf.as_mut_ptr().cast(), buf.len() as i32, dev) }
        .result()
        .ok()?;
    let id = std::ffi::CStr::from_bytes_until_nul(&buf).ok()?;
    Some(id.to_string_lossy().into_owned())
}

fn require_driver() -> Result<(), DeviceError> {
    if driver_present() {
        Ok(())
    } else {
        Err(DeviceError::backend(BACKEND, NO_DRIVER))
    }
}

/// Runs `f`, turning a panic inside the CUDA libraries' wrappers (a missing library or
/// symbol) into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, DeviceError>) -> Result<T, DeviceError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        Err(DeviceError::backend(
            BACKEND,
            format!("the CUDA library wrapper failed: {message}"),
        ))
    })
}

/// `CUDA_ERROR_OUT_OF_MEMORY (out of memory)`.
fn msg(e: &DriverError) -> String {
    match e.error_string() {
        Ok(s) => format!("{:?} ({})", e.0, s.to_string_lossy()),
        Err(_) => format!("{:?}", e.0),
    }
}

fn driver_error(e: DriverError) -> DeviceError {
    DeviceError::backend(BACKEND, msg(&e))
}

fn backend_message(e: &DeviceError) -> String {
    match e {
        DeviceError::Backend { message, .. } => message.clone(),
        e => e.to_string(),
    }
}

fn compile_log(e: CompileError) -> String {
    match e {
        CompileError::CompileError { log, nvrtc, .. } => {
            let log = log.to_string_lossy().trim().to_string();
            if log.is_empty() {
                format!("NVRTC failed: {:?}", nvrtc.0)
            } else {
                log
            }
        }
        e => format!("NVRTC failed: {e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_fill_their_slots_with_their_own_size() {
        let s = Slot::scalar(&Scalar::F32(1.5));
        assert_eq!(s.len, 4);
        assert_eq!(&s.bytes[..4], &1.5f32.to_ne_bytes());
        assert_eq!(Slot::scalar(&Scalar::U64(7)).len, 8);
        assert_eq!(std::mem::align_of::<Slot>(), 8);
    }

    #[test]
    fn arguments_are_checked_against_the_parameters() {
        let slots = [
            Slot::new(&0u64.to_ne_bytes()),
            Slot::scalar(&Scalar::F32(2.0)),
        ];
        assert!(check_arguments("k", &[8, 4], &slots).is_ok());
        assert!(matches!(
            check_arguments("k", &[8, 8], &slots),
            Err(DeviceError::BadArgument(m)) if m.contains("argument 1")
        ));
        assert!(matches!(
            check_arguments("k", &[8, 4, 4], &slots),
            Err(DeviceError::BadArgument(m)) if m.contains("takes 3 arguments, 2 given")
        ));
    }

    #[test]
    fn a_panicking_call_becomes_a_backend_error() {
        let r: Result<(), DeviceError> = guarded(|| panic!("Missing symbol cuFoo"));
        assert!(matches!(
            r,
            Err(DeviceError::Backend { message, .. }) if message.contains("Missing symbol cuFoo")
        ));
    }
}
