//! The OpenCL backend (feature `opencl`).
//!
//! Finds every device of every OpenCL platform installed, of every device type: GPUs,
//! accelerators and CPU devices alike (PoCL's `pthread` device is a CPU device and is found).
//! Devices are numbered `0..` in the order the platforms and then their devices are listed,
//! and each becomes an [`OpenClDevice`], wrapped by the detector in a
//! [`DeviceProc`](super::DeviceProc) of kind `opencl` and memory `opencl:{index}`.
//!
//! The devices of one platform share one OpenCL context, so a buffer of one can be copied
//! into a buffer of another on the device side ([`Gpu::copy_from_peer`]); each device has
//! its own in-order command queue. Kernels are built from their OpenCL C source
//! ([`Kernel::opencl`]) on first use and kept, once per device and kernel.
//!
//! What it needs: the OpenCL ICD loader, `libOpenCL.so.1`, when the program is linked and
//! when it runs (the `ocl` crate links it), and an installed ICD (a file in
//! `/etc/OpenCL/vendors`, or the directory named by `OCL_ICD_VENDORS`) naming a platform's
//! driver. A machine with the loader but no ICD detects no device: the detection is
//! [`Detection::Unavailable`] with the reason, never a crash.

use super::{DeviceError, DeviceInfo, Gpu, Kernel, KernelArg, RawBuffer, Scalar};
use crate::{DetectContext, Detection};
use dagger_core::MemorySpace;
use ocl::core::{
    self, ArgVal, CommandQueue, Context, ContextProperties, DeviceId, DeviceType, KernelInfo,
    KernelInfoResult, KernelWorkGroupInfo, KernelWorkGroupInfoResult, Mem, MemFlags, PlatformId,
    PlatformInfo, Program, ProgramBuildInfo, ProgramBuildInfoResult, Status,
};
use parking_lot::Mutex;
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The detector's name.
pub const DETECTOR: &str = "opencl";

/// The backend's name: the processor kind and the prefix of the memory spaces.
pub const BACKEND: &str = "opencl";

/// Finds this backend's devices: every device of every platform, as
/// [`DeviceProc`](super::DeviceProc)s; [`Detection::Unavailable`] with the reason when
/// there is no platform (no ICD installed) or the runtime refused to answer.
pub fn detect(_ctx: &DetectContext) -> Detection {
    let found = match OpenClDevice::enumerate() {
        Ok(devices) => Ok(devices
            .into_iter()
            .map(|d| Arc::new(d) as Arc<dyn Gpu>)
            .collect()),
        // The reason alone: the topology already says it is OpenCL's.
        Err(DeviceError::Backend { message, .. }) => Err(message),
        Err(e) => Err(e.to_string()),
    };
    super::detection_of(BACKEND, found)
}

/// A buffer of an [`OpenClDevice`], as held inside a [`RawBuffer`]
/// (`raw.downcast_ref::<OpenClBuffer>()`).
pub struct OpenClBuffer {
    mem: Mem,
}

impl OpenClBuffer {
    /// The OpenCL memory object (at least one byte long, even for a buffer of length 0).
    pub fn as_core(&self) -> &Mem {
        &self.mem
    }
}

impl fmt::Debug for OpenClBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenClBuffer").finish_non_exhaustive()
    }
}

/// The key of a built program: the kernel's name and its OpenCL C source.
type ProgramKey = (&'static str, &'static str);

/// One OpenCL device: its platform's context (shared with the platform's other devices),
/// an in-order queue of its own, and the programs built for it.
///
/// Allocation: a buffer larger than [`max_alloc`](Self::max_alloc) is refused at once with
/// [`DeviceError::OutOfMemory`] whose `available` is that largest size; one the driver
/// refuses for want of room is [`DeviceError::OutOfMemory`] with `available` 0 (the driver
/// does not say). `capacity` is the device's global memory. A buffer of length 0 holds one
/// byte on the device.
///
/// Launches: the global size is rounded up to a multiple of [`Kernel::workgroup`], the
/// local size; a workgroup larger than the kernel can run on the device leaves the local
/// size to the runtime. A launch returns once queued; downloads, copies and
/// [`synchronize`](Gpu::synchronize) wait for it.
pub struct OpenClDevice {
    info: DeviceInfo,
    memory: MemorySpace,
    device: DeviceId,
    context: Context,
    queue: CommandQueue,
    max_alloc: u64,
    max_work_group: usize,
    /// Built programs, and the build failures, by kernel; built under the lock, so two
    /// threads launching a new kernel build it once.
    programs: Mutex<HashMap<ProgramKey, Result<Program, DeviceError>>>,
    builds: AtomicU64,
}

impl OpenClDevice {
    /// Every device of every OpenCL platform, numbered `0..` in the order found; one
    /// context per platform. Fails with [`DeviceError::Backend`] saying why when there is
    /// no platform or the runtime refused; a panic inside the `ocl` crate is caught and
    /// reported the same way.
    pub fn enumerate() -> Result<Vec<OpenClDevice>, DeviceError> {
        // The ICD loader initialises itself on the first call, and doing that from two
        // threads at once loses platforms or crashes: one enumeration at a time.
        static ENUMERATION: Mutex<()> = Mutex::new(());
        let _one_at_a_time = ENUMERATION.lock();
        match catch_unwind(AssertUnwindSafe(enumerate_devices)) {
            Ok(r) => r,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_string());
                Err(DeviceError::backend(
                    BACKEND,
                    format!("the OpenCL runtime panicked: {message}"),
                ))
            }
        }
    }

    /// The largest single buffer the device allocates, in bytes
    /// (`CL_DEVICE_MAX_MEM_ALLOC_SIZE`).
    pub fn max_alloc(&self) -> u64 {
        self.max_alloc
    }

    /// The largest workgroup the device runs (`CL_DEVICE_MAX_WORK_GROUP_SIZE`).
    pub fn max_work_group(&self) -> usize {
        self.max_work_group
    }

    /// How many programs were compiled for this device so far (a kernel is compiled once,
    /// on its first launch; a failed build counts too and is not retried).
    pub fn builds(&self) -> u64 {
        self.builds.load(Ordering::Acquire)
    }

    /// True if `other` shares this device's OpenCL context (same platform, same
    /// detection), so buffers can be copied between them on the device side.
    pub fn shares_context(&self, other: &OpenClDevice) -> bool {
        self.context.as_ptr() == other.context.as_ptr()
    }

    /// The OpenCL device id.
    pub fn device_id(&self) -> &DeviceId {
        &self.device
    }

    /// The context it shares with the other devices of its platform.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Its in-order command queue.
    pub fn queue(&self) -> &CommandQueue {
        &self.queue
    }

    /// `buf` as a buffer of this device, or why not.
    fn own<'b>(&self, buf: &'b RawBuffer, what: &str) -> Result<&'b OpenClBuffer, DeviceError> {
        if buf.memory() != &self.memory {
            return Err(DeviceError::BadArgument(format!(
                "{what}: a buffer in {} used on {}",
                buf.memory(),
                self.memory
            )));
        }
        buf.downcast_ref::<OpenClBuffer>().ok_or_else(|| {
            DeviceError::BadArgument(format!("{what}: not an OpenCL buffer of {}", self.memory))
        })
    }

    fn out_of_memory(&self, requested: u64, available: u64) -> DeviceError {
        DeviceError::OutOfMemory {
            memory: self.memory.clone(),
            requested,
            available,
            capacity: self.info.memory_bytes,
        }
    }

    /// The program of `kernel` built for this device: from the cache, or compiled now.
    fn program(&self, kernel: &Kernel, source: &'static str) -> Result<Program, DeviceError> {
        let mut programs = self.programs.lock();
        if let Some(built) = programs.get(&(kernel.name, source)) {
            return built.clone();
        }
        self.builds.fetch_add(1, Ordering::AcqRel);
        let built = self.build(kernel.name, source);
        programs.insert((kernel.name, source), built.clone());
        built
    }

    fn build(&self, name: &'static str, source: &'static str) -> Result<Program, DeviceError> {
        let build_error = |log: String| DeviceError::Build {
            kernel: name.to_string(),
            backend: BACKEND,
            log,
        };
        let src = CString::new(source)
            .map_err(|_| build_error("the source holds a NUL byte".to_string()))?;
        let program = core::create_program_with_source(&self.context, &[src])
            .map_err(|e| build_error(e.to_string()))?;
        let options = CString::default();
        match core::build_program(&program, Some(&[self.device]), &options, None, None) {
            Ok(()) => Ok(program),
            Err(e) => {
                let log = match core::get_program_build_info(
                    &program,
                    self.device,
                    ProgramBuildInfo::BuildLog,
                ) {
                    Ok(ProgramBuildInfoResult::BuildLog(log)) if !log.trim().is_empty() => {
                        log.trim().to_string()
                    }
                    _ => e.to_string(),
                };
                Err(build_error(log))
            }
        }
    }

    /// The largest workgroup `kernel` runs with on this device.
    fn kernel_work_group(&self, kernel: &core::Kernel) -> usize {
        match core::get_kernel_work_group_info(
            kernel,
            self.device,
            KernelWorkGroupInfo::WorkGroupSize,
        ) {
            Ok(KernelWorkGroupInfoResult::WorkGroupSize(n)) if n > 0 => n.min(self.max_work_group),
            _ => self.max_work_group,
        }
    }

    fn enqueue_copy(&self, src: &Mem, dst: &Mem, len: u64) -> Result<(), DeviceError> {
        if len == 0 {
            return Ok(());
        }
        let len = to_usize(len)?;
        core::enqueue_copy_buffer::<u8, _, _, _>(
            &self.queue,
            src,
            dst,
            0,
            0,
            len,
            None::<()>,
            None::<()>,
        )
        .map_err(backend)?;
        core::finish(&self.queue).map_err(backend)
    }
}

impl Gpu for OpenClDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn alloc(&self, len: u64) -> Result<RawBuffer, DeviceError> {
        if len > self.max_alloc {
            return Err(self.out_of_memory(len, self.max_alloc));
        }
        // OpenCL has no empty buffer: one of length 0 holds a byte nobody sees.
        let bytes = to_usize(len.max(1))?;
        // SAFETY: no host pointer is given (no USE_HOST_PTR/COPY_HOST_PTR), so the buffer
        // refers to no host memory.
        let mem = unsafe {
            core::create_buffer::<_, u8>(&self.context, MemFlags::new().read_write(), bytes, None)
        };
        match mem {
            Ok(mem) => Ok(RawBuffer::new(
                OpenClBuffer { mem },
                len,
                self.memory.clone(),
            )),
            Err(e) if is_allocation_failure(&e) => Err(self.out_of_memory(len, 0)),
            Err(e) => Err(backend(e)),
        }
    }

    fn upload(&self, buf: &RawBuffer, data: &[u8]) -> Result<(), DeviceError> {
        let b = self.own(buf, "upload")?;
        crate::device::check_fits("upload", data.len() as u64, buf.len())?;
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: the write blocks, so `data` outlives the command; the buffer is at least
        // `data.len()` bytes long (checked above).
        unsafe {
            core::enqueue_write_buffer(&self.queue, &b.mem, true, 0, data, None::<()>, None::<()>)
        }
        .map_err(backend)
    }

    fn download(&self, buf: &RawBuffer, out: &mut [u8]) -> Result<(), DeviceError> {
        let b = self.own(buf, "download")?;
        crate::device::check_fits("download", out.len() as u64, buf.len())?;
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: the read blocks, so `out` outlives the command and is not touched by the
        // host meanwhile; the buffer is at least `out.len()` bytes long (checked above).
        unsafe {
            core::enqueue_read_buffer(&self.queue, &b.mem, true, 0, out, None::<()>, None::<()>)
        }
        .map_err(backend)
    }

    fn copy(&self, src: &RawBuffer, dst: &RawBuffer) -> Result<(), DeviceError> {
        let s = self.own(src, "copy source")?;
        let d = self.own(dst, "copy destination")?;
        crate::device::check_fits("copy", src.len(), dst.len())?;
        self.enqueue_copy(&s.mem, &d.mem, src.len())
    }

    fn copy_from_peer(
        &self,
        from: &dyn Gpu,
        src: &RawBuffer,
        dst: &RawBuffer,
    ) -> Option<Result<(), DeviceError>> {
        let peer = from.as_any().downcast_ref::<OpenClDevice>()?;
        if !self.shares_context(peer) {
            return None;
        }
        Some((|| {
            let s = peer.own(src, "peer copy source")?;
            let d = self.own(dst, "peer copy destination")?;
            crate::device::check_fits("copy", src.len(), dst.len())?;
            // The peer's queue is not ordered with ours: let its launches writing `src` end.
            core::finish(&peer.queue).map_err(backend)?;
            self.enqueue_copy(&s.mem, &d.mem, src.len())
        })())
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
        let source = kernel.opencl.ok_or(DeviceError::NoSource {
            kernel: kernel.name.to_string(),
            backend: BACKEND,
        })?;
        let program = self.program(kernel, source)?;
        // A kernel object per launch: setting arguments is not thread-safe on a shared one.
        let k = core::create_kernel(&program, kernel.name).map_err(|e| {
            if e.api_status() == Some(Status::CL_INVALID_KERNEL_NAME) {
                DeviceError::Build {
                    kernel: kernel.name.to_string(),
                    backend: BACKEND,
                    log: format!("the source has no kernel named `{}`", kernel.name),
                }
            } else {
                backend(e)
            }
        })?;
        if let Ok(KernelInfoResult::NumArgs(n)) = core::get_kernel_info(&k, KernelInfo::NumArgs) {
            if n as usize != args.len() {
                return Err(DeviceError::BadArgument(format!(
                    "kernel `{}` takes {n} arguments, {} given",
                    kernel.name,
                    args.len()
                )));
            }
        }
        for (i, arg) in args.iter().enumerate() {
            let index = u32::try_from(i)
                .map_err(|_| DeviceError::BadArgument("too many kernel arguments".into()))?;
            let set = match arg {
                KernelArg::Buffer(buf) => {
                    let b = self.own(buf, "kernel argument")?;
                    core::set_kernel_arg(&k, index, ArgVal::mem(&b.mem))
                }
                KernelArg::Scalar(s) => match s {
                    Scalar::F32(v) => core::set_kernel_arg(&k, index, ArgVal::scalar(v)),
                    Scalar::F64(v) => core::set_kernel_arg(&k, index, ArgVal::scalar(v)),
                    Scalar::I32(v) => core::set_kernel_arg(&k, index, ArgVal::scalar(v)),
                    Scalar::U32(v) => core::set_kernel_arg(&k, index, ArgVal::scalar(v)),
                    Scalar::I64(v) => core::set_kernel_arg(&k, index, ArgVal::scalar(v)),
                    Scalar::U64(v) => core::set_kernel_arg(&k, index, ArgVal::scalar(v)),
                },
            };
            set.map_err(|e| match e.api_status() {
                Some(
                    Status::CL_INVALID_ARG_SIZE
                    | Status::CL_INVALID_ARG_VALUE
                    | Status::CL_INVALID_MEM_OBJECT
                    | Status::CL_INVALID_ARG_INDEX,
                ) => DeviceError::BadArgument(format!(
                    "argument {i} of kernel `{}` ({arg:?}): {e}",
                    kernel.name
                )),
                _ => backend(e),
            })?;
        }
        let wg = kernel.workgroup as u64;
        let (global, local) = if wg == 0 {
            (global as u64, None)
        } else {
            let rounded = (global as u64).div_ceil(wg) * wg;
            let local = (kernel.workgroup as usize <= self.kernel_work_group(&k)).then_some([
                kernel.workgroup as usize,
                0,
                0,
            ]);
            (rounded, local)
        };
        let global = [to_usize(global)?, 0, 0];
        // SAFETY: every argument is set (the count was checked) to a memory object of this
        // context or a plain value; the runtime keeps the memory objects alive until the
        // kernel has run, even if their buffers are dropped meanwhile.
        unsafe {
            core::enqueue_kernel(
                &self.queue,
                &k,
                1,
                None,
                &global,
                local,
                None::<()>,
                None::<()>,
            )
        }
        .map_err(|e| match e.api_status() {
            Some(Status::CL_INVALID_KERNEL_ARGS) => DeviceError::BadArgument(format!(
                "kernel `{}` was launched with missing arguments: {e}",
                kernel.name
            )),
            _ => backend(e),
        })
    }

    fn synchronize(&self) -> Result<(), DeviceError> {
        core::finish(&self.queue).map_err(backend)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl fmt::Debug for OpenClDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenClDevice")
            .field("info", &self.info)
            .field("builds", &self.builds())
            .finish_non_exhaustive()
    }
}

fn backend(e: impl fmt::Display) -> DeviceError {
    DeviceError::backend(BACKEND, e)
}

fn to_usize(n: u64) -> Result<usize, DeviceError> {
    usize::try_from(n)
        .map_err(|_| DeviceError::BadArgument(format!("{n} does not fit this host's usize")))
}

/// True for the errors with which an allocation is refused for want of room.
fn is_allocation_failure(e: &core::Error) -> bool {
    matches!(
        e.api_status(),
        Some(
            Status::CL_MEM_OBJECT_ALLOCATION_FAILURE
                | Status::CL_OUT_OF_RESOURCES
                | Status::CL_OUT_OF_HOST_MEMORY
                | Status::CL_INVALID_BUFFER_SIZE
        )
    )
}

/// How many platforms the loader knows, asked once and without retrying: `ocl` retries
/// for ten seconds when the loader says there is no platform, which is the plain answer of
/// a machine without an ICD.
fn platform_count() -> Result<u32, DeviceError> {
    let mut count: core::ffi::cl_uint = 0;
    // SAFETY: asks only for the count, into a local; no platform array is passed.
    let status = unsafe { core::ffi::clGetPlatformIDs(0, std::ptr::null_mut(), &mut count) };
    if status == Status::CL_PLATFORM_NOT_FOUND_KHR as i32 {
        return Err(no_platform());
    }
    if status != Status::CL_SUCCESS as i32 {
        return Err(backend(format!(
            "the OpenCL ICD loader refused to list platforms (clGetPlatformIDs: {status})"
        )));
    }
    Ok(count)
}

fn no_platform() -> DeviceError {
    backend("no OpenCL platform (no ICD installed)")
}

fn enumerate_devices() -> Result<Vec<OpenClDevice>, DeviceError> {
    if platform_count()? == 0 {
        return Err(no_platform());
    }
    let platforms = core::get_platform_ids().map_err(|e| {
        backend(format!(
            "the OpenCL ICD loader refused to list platforms: {e}"
        ))
    })?;
    let mut out = Vec::new();
    for platform in platforms {
        let ids = match core::get_device_ids(platform, Some(DeviceType::ALL), None) {
            Ok(ids) => ids,
            Err(e) if e.api_status() == Some(Status::CL_DEVICE_NOT_FOUND) => continue,
            Err(e) => {
                eprintln!("dagger: an OpenCL platform is skipped: its devices: {e}");
                continue;
            }
        };
        if ids.is_empty() {
            continue;
        }
        match platform_devices(platform, &ids, out.len()) {
            Ok(devices) => out.extend(devices),
            Err(e) => eprintln!("dagger: an OpenCL platform is skipped: {e}"),
        }
    }
    Ok(out)
}

/// The devices `ids` of `platform`, sharing one context, numbered from `first`.
fn platform_devices(
    platform: PlatformId,
    ids: &[DeviceId],
    first: usize,
) -> Result<Vec<OpenClDevice>, DeviceError> {
    let platform_name = core::get_platform_info(platform, PlatformInfo::Name)
        .map(|r| r.to_string())
        .unwrap_or_default();
    let properties = ContextProperties::new().platform(platform);
    let context = core::create_context(Some(&properties), ids, None, None).map_err(backend)?;
    let mut out = Vec::with_capacity(ids.len());
    for (i, &device) in ids.iter().enumerate() {
        let index = u32::try_from(first + i)
            .map_err(|_| backend("more OpenCL devices than a u32 counts"))?;
        let queue = core::create_command_queue(&context, device, None).map_err(backend)?;
        let memory_bytes = info_u64(device, core::ffi::CL_DEVICE_GLOBAL_MEM_SIZE)?;
        let max_alloc = info_u64(device, core::ffi::CL_DEVICE_MAX_MEM_ALLOC_SIZE)?;
        let max_work_group = info_usize(device, core::ffi::CL_DEVICE_MAX_WORK_GROUP_SIZE)?;
        let device_type = info_u64(device, core::ffi::CL_DEVICE_TYPE)?;
        let mut extra = BTreeMap::new();
        extra.insert("platform".to_string(), platform_name.clone());
        extra.insert(
            "version".to_string(),
            info_string(device, core::ffi::CL_DEVICE_VERSION)?,
        );
        if let Ok(driver) = info_string(device, core::ffi::CL_DRIVER_VERSION) {
            extra.insert("driver".to_string(), driver);
        }
        extra.insert("device_type".to_string(), device_type_name(device_type));
        extra.insert("max_alloc".to_string(), super::format_bytes(max_alloc));
        let info = DeviceInfo {
            backend: BACKEND,
            index,
            name: info_string(device, core::ffi::CL_DEVICE_NAME)?,
            vendor: info_string(device, core::ffi::CL_DEVICE_VENDOR)?,
            memory_bytes,
            compute_units: info_u32(device, core::ffi::CL_DEVICE_MAX_COMPUTE_UNITS)?,
            extra,
        };
        out.push(OpenClDevice {
            memory: MemorySpace::custom(BACKEND, index),
            info,
            device,
            context: context.clone(),
            queue,
            max_alloc,
            max_work_group: max_work_group.max(1),
            programs: Mutex::new(HashMap::new()),
            builds: AtomicU64::new(0),
        });
    }
    Ok(out)
}

fn info_raw(device: DeviceId, what: u32) -> Result<Vec<u8>, DeviceError> {
    core::get_device_info_raw(device, what).map_err(backend)
}

fn info_string(device: DeviceId, what: u32) -> Result<String, DeviceError> {
    let raw = info_raw(device, what)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Ok(String::from_utf8_lossy(&raw[..end]).trim().to_string())
}

fn info_u64(device: DeviceId, what: u32) -> Result<u64, DeviceError> {
    let raw = info_raw(device, what)?;
    let bytes: [u8; 8] = raw
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| backend(format!("device info {what:#x}: {} bytes", raw.len())))?;
    Ok(u64::from_ne_bytes(bytes))
}

fn info_u32(device: DeviceId, what: u32) -> Result<u32, DeviceError> {
    let raw = info_raw(device, what)?;
    let bytes: [u8; 4] = raw
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| backend(format!("device info {what:#x}: {} bytes", raw.len())))?;
    Ok(u32::from_ne_bytes(bytes))
}

fn info_usize(device: DeviceId, what: u32) -> Result<usize, DeviceError> {
    let raw = info_raw(device, what)?;
    const N: usize = std::mem::size_of::<usize>();
    let bytes: [u8; N] = raw
        .get(..N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| backend(format!("device info {what:#x}: {} bytes", raw.len())))?;
    Ok(usize::from_ne_bytes(bytes))
}

fn device_type_name(bits: u64) -> String {
    let names = [
        (core::ffi::CL_DEVICE_TYPE_CPU, "cpu"),
        (core::ffi::CL_DEVICE_TYPE_GPU, "gpu"),
        (core::ffi::CL_DEVICE_TYPE_ACCELERATOR, "accelerator"),
        (core::ffi::CL_DEVICE_TYPE_CUSTOM, "custom"),
    ];
    let found: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if found.is_empty() {
        format!("{bits:#x}")
    } else {
        found.join("+")
    }
}
