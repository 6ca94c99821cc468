//! Device processors: GPUs (and other accelerators) behind a backend.
//!
//! A backend (OpenCL, wgpu, CUDA — each behind its feature — or a user's own) implements
//! [`Gpu`] for one device: allocate, upload, download, copy and launch a [`Kernel`]. The
//! runtime wraps each device in a [`DeviceProc`], the processor the scheduler places work
//! on: its jobs run on one host thread of its own, in order, and every allocation goes
//! through its [`MemoryLedger`], which keeps the device's memory within its capacity by
//! asking the registered [`Evictable`] values (device-resident chunks nobody uses) to leave
//! the device before it reports [`DeviceError::OutOfMemory`].
//!
//! Buffers are untyped ([`RawBuffer`]): typed values (`DeviceVec<T>`) and moves between
//! memories are built on them in `dagger-move`.
//!
//! Not guaranteed: that a backend's own allocator never fails below the ledger's capacity
//! (fragmentation, other processes on the device); such a failure is still a
//! [`DeviceError::OutOfMemory`], never a crash.

#[cfg(feature = "cuda")]
pub mod cuda;
mod ledger;
#[cfg(feature = "opencl")]
pub mod opencl;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use ledger::{Evictable, MemoryLedger, Reservation};

use crate::processor::{Job, Processor};
use crate::thread::ThreadProc;
use dagger_core::{MemorySpace, ProcId, ProcKind};
use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Weak};

/// Environment variable capping the device memory the runtime uses on each device of a
/// process, in bytes (`268435456`) or with a unit (`256MiB`, `1GiB`, `64MB`). The capacity
/// is the smaller of this and what the device reports.
pub const ENV_DEVICE_MEMORY: &str = "DAGGER_DEVICE_MEMORY";

/// What a backend reports of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The backend's name, which is also the processor kind (`opencl`, `wgpu`, `cuda`).
    pub backend: &'static str,
    /// The device's index among this backend's devices in this process; the memory space
    /// is `{backend}:{index}`.
    pub index: u32,
    /// The device's name (`NVIDIA H200`, `cpu-haswell-...`, `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// Who made it, as the backend says.
    pub vendor: String,
    /// Global memory in bytes, as the device reports it.
    pub memory_bytes: u64,
    /// Compute units (OpenCL compute units, CUDA multiprocessors; 0 if the backend does
    /// not say, as wgpu does not).
    pub compute_units: u32,
    /// Further facts shown in the topology (driver version, platform, device type, ...).
    pub extra: BTreeMap<String, String>,
}

/// Why a device operation failed. Never a panic: a backend maps its driver's errors here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The device has not room for `requested` bytes even after every unused resident
    /// value was evicted.
    #[error("out of memory on {memory}: {requested} bytes asked, {available} of {capacity} free")]
    OutOfMemory {
        /// The device's memory space.
        memory: MemorySpace,
        /// Bytes asked for.
        requested: u64,
        /// Bytes still free.
        available: u64,
        /// The ledger's capacity.
        capacity: u64,
    },
    /// The kernel has no source for this backend.
    #[error("kernel `{kernel}` has no {backend} source")]
    NoSource {
        /// The kernel's name.
        kernel: String,
        /// The backend asked.
        backend: &'static str,
    },
    /// The kernel source did not compile; `log` is the compiler's output.
    #[error("kernel `{kernel}` did not build on {backend}: {log}")]
    Build {
        /// The kernel's name.
        kernel: String,
        /// The backend.
        backend: &'static str,
        /// What the compiler said.
        log: String,
    },
    /// A kernel argument does not fit the kernel, or a buffer belongs to another device
    /// or backend, or lengths differ.
    #[error("bad argument: {0}")]
    BadArgument(String),
    /// The backend's driver reported an error.
    #[error("{backend} error: {message}")]
    Backend {
        /// The backend.
        backend: &'static str,
        /// What the driver said.
        message: String,
    },
}

impl DeviceError {
    /// A backend error from anything printable.
    pub fn backend(backend: &'static str, message: impl fmt::Display) -> Self {
        DeviceError::Backend {
            backend,
            message: message.to_string(),
        }
    }
}

/// The source of one kernel for every backend it has been written for. A kernel is named
/// by `name` (the entry point in every source) and built once per device, on first use.
///
/// Argument convention, the same on every backend: argument `i` of [`Gpu::launch`] is the
/// kernel's parameter `i`. In WGSL, where a compute shader has no parameters, argument
/// `i` is `@group(0) @binding(i)`: a buffer is a `var<storage, read_write>` array and a
/// scalar a `var<uniform>` of its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    /// The entry point's name in every source.
    pub name: &'static str,
    /// OpenCL C source.
    pub opencl: Option<&'static str>,
    /// WGSL source.
    pub wgsl: Option<&'static str>,
    /// CUDA C source, compiled at run time with NVRTC (an `extern "C" __global__`).
    pub cuda: Option<&'static str>,
    /// PTX, loaded as it is (used when there is no CUDA C source).
    pub ptx: Option<&'static str>,
    /// The workgroup (block) size: for WGSL it must equal the shader's
    /// `@workgroup_size`; OpenCL and CUDA use it as the local size. 64 by default.
    pub workgroup: u32,
}

impl Kernel {
    /// A kernel with no source yet.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            opencl: None,
            wgsl: None,
            cuda: None,
            ptx: None,
            workgroup: 64,
        }
    }
    /// With OpenCL C source.
    pub const fn opencl(mut self, src: &'static str) -> Self {
        self.opencl = Some(src);
        self
    }
    /// With WGSL source.
    pub const fn wgsl(mut self, src: &'static str) -> Self {
        self.wgsl = Some(src);
        self
    }
    /// With CUDA C source (compiled with NVRTC).
    pub const fn cuda(mut self, src: &'static str) -> Self {
        self.cuda = Some(src);
        self
    }
    /// With PTX.
    pub const fn ptx(mut self, src: &'static str) -> Self {
        self.ptx = Some(src);
        self
    }
    /// With a workgroup (block) size.
    pub const fn workgroup(mut self, n: u32) -> Self {
        self.workgroup = n;
        self
    }
    /// True if the kernel has a source `backend` can build.
    pub fn supports(&self, backend: &str) -> bool {
        match backend {
            "opencl" => self.opencl.is_some(),
            "wgpu" => self.wgsl.is_some(),
            "cuda" => self.cuda.is_some() || self.ptx.is_some(),
            _ => false,
        }
    }
}

/// One scalar kernel argument, passed by value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    /// `float`/`f32`.
    F32(f32),
    /// `double`/`f64` (not in WGSL).
    F64(f64),
    /// `int`/`i32`.
    I32(i32),
    /// `uint`/`u32`.
    U32(u32),
    /// `long`/`i64` (not in WGSL).
    I64(i64),
    /// `ulong`/`u64` (not in WGSL).
    U64(u64),
}

impl Scalar {
    /// The value's bytes, little-endian, as a kernel parameter holds them.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match *self {
            Scalar::F32(v) => v.to_le_bytes().to_vec(),
            Scalar::F64(v) => v.to_le_bytes().to_vec(),
            Scalar::I32(v) => v.to_le_bytes().to_vec(),
            Scalar::U32(v) => v.to_le_bytes().to_vec(),
            Scalar::I64(v) => v.to_le_bytes().to_vec(),
            Scalar::U64(v) => v.to_le_bytes().to_vec(),
        }
    }
}

/// One kernel argument.
#[derive(Clone, Copy, Debug)]
pub enum KernelArg<'a> {
    /// A buffer of this device (read and written in place).
    Buffer(&'a RawBuffer),
    /// A value.
    Scalar(Scalar),
}

/// Checks that `len` bytes fit a buffer of `room` bytes, for a backend's `upload`,
/// `download` and `copy` (`what` names the operation in the error).
pub fn check_fits(what: &str, len: u64, room: u64) -> Result<(), DeviceError> {
    if len > room {
        return Err(DeviceError::BadArgument(format!(
            "{what} of {len} bytes with a buffer of {room}"
        )));
    }
    Ok(())
}

/// A backend's buffer on one device, untyped: `len` bytes. Dropping it frees the device
/// memory and returns its bytes to the device's [`MemoryLedger`].
pub struct RawBuffer {
    /// The backend's own buffer (a `cl_mem` wrapper, a `wgpu::Buffer`, a CUDA slice);
    /// the backend downcasts it.
    inner: Box<dyn Any + Send + Sync>,
    len: u64,
    memory: MemorySpace,
    /// Keeps the bytes counted in the ledger until the buffer is freed.
    _reservation: Option<Reservation>,
}

impl RawBuffer {
    /// Wraps a backend's buffer of `len` bytes in `memory`. Backends call this; the ledger's
    /// reservation is attached by [`DeviceRef::alloc`].
    pub fn new<B: Any + Send + Sync>(inner: B, len: u64, memory: MemorySpace) -> Self {
        Self {
            inner: Box::new(inner),
            len,
            memory,
            _reservation: None,
        }
    }

    /// The backend's buffer as a `B`, if it is one.
    pub fn downcast_ref<B: Any>(&self) -> Option<&B> {
        self.inner.downcast_ref::<B>()
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if the buffer holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memory it lives in.
    pub fn memory(&self) -> &MemorySpace {
        &self.memory
    }
}

impl fmt::Debug for RawBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawBuffer({} B in {})", self.len, self.memory)
    }
}

/// One device of a backend. Every method may block until the device has done the work
/// (uploads and downloads are complete when they return; a launch may still be running,
/// and a later download or [`synchronize`](Gpu::synchronize) waits for it).
///
/// Implementations must be thread-safe; the runtime calls them from the device's
/// processor thread and from the threads that move data.
pub trait Gpu: Send + Sync + 'static {
    /// What the device is.
    fn info(&self) -> &DeviceInfo;

    /// A buffer of `len` bytes, contents unspecified. A failure of the driver's allocator
    /// is [`DeviceError::OutOfMemory`]. Callers go through [`DeviceRef::alloc`], which
    /// keeps the ledger.
    fn alloc(&self, len: u64) -> Result<RawBuffer, DeviceError>;

    /// Writes `data` at the start of `buf` (`data.len() <= buf.len()`).
    fn upload(&self, buf: &RawBuffer, data: &[u8]) -> Result<(), DeviceError>;

    /// Reads the first `out.len()` bytes of `buf` into `out`, after every launch before it.
    fn download(&self, buf: &RawBuffer, out: &mut [u8]) -> Result<(), DeviceError>;

    /// Copies all of `src` into `dst` on this device (`src.len() <= dst.len()`).
    fn copy(&self, src: &RawBuffer, dst: &RawBuffer) -> Result<(), DeviceError>;

    /// Copies `src`, a buffer of `from` (another device of the same backend), into `dst`
    /// on this device without going through host memory, if the backend can (CUDA peer
    /// access, two devices of one OpenCL context). `None` when it cannot: the caller then
    /// goes through the host.
    fn copy_from_peer(
        &self,
        from: &dyn Gpu,
        src: &RawBuffer,
        dst: &RawBuffer,
    ) -> Option<Result<(), DeviceError>> {
        let _ = (from, src, dst);
        None
    }

    /// Runs `kernel` over `global` work items (rounded up to whole workgroups; the kernel
    /// checks its index against its data's length) with `args`. Builds the kernel for
    /// this device on first use and keeps it.
    fn launch(
        &self,
        kernel: &Kernel,
        global: u32,
        args: &[KernelArg<'_>],
    ) -> Result<(), DeviceError>;

    /// Waits until every launch and copy queued on the device has finished.
    fn synchronize(&self) -> Result<(), DeviceError>;

    /// The device as `Any`, so a caller can reach the backend's own type.
    fn as_any(&self) -> &dyn Any;
}

/// A shared handle to one device and its memory ledger: what a buffer keeps to free,
/// copy or download itself, and what moves allocate through. Cloning costs two `Arc`
/// clones.
#[derive(Clone)]
pub struct DeviceRef {
    gpu: Arc<dyn Gpu>,
    ledger: Arc<MemoryLedger>,
    memory: MemorySpace,
}

impl DeviceRef {
    /// A handle to `gpu` with a ledger of `capacity` bytes.
    pub fn new(gpu: Arc<dyn Gpu>, capacity: u64) -> Self {
        let info = gpu.info();
        let memory = MemorySpace::custom(info.backend, info.index);
        Self {
            ledger: Arc::new(MemoryLedger::new(memory.clone(), capacity)),
            memory,
            gpu,
        }
    }

    /// The backend's device.
    pub fn gpu(&self) -> &Arc<dyn Gpu> {
        &self.gpu
    }

    /// What the device is.
    pub fn info(&self) -> &DeviceInfo {
        self.gpu.info()
    }

    /// The device's memory space (`{backend}:{index}`).
    pub fn memory(&self) -> &MemorySpace {
        &self.memory
    }

    /// The device's memory ledger: capacity, bytes in use, registered evictable values.
    pub fn ledger(&self) -> &Arc<MemoryLedger> {
        &self.ledger
    }

    /// True if both handles name the same device.
    pub fn same_device(&self, other: &DeviceRef) -> bool {
        Arc::ptr_eq(&self.ledger, &other.ledger)
    }

    /// A buffer of `len` bytes: reserves them in the ledger (evicting unused resident
    /// values if needed), then allocates on the device. Fails with
    /// [`DeviceError::OutOfMemory`] rather than exceed the capacity.
    pub fn alloc(&self, len: u64) -> Result<RawBuffer, DeviceError> {
        let reservation = self.ledger.reserve(len)?;
        let mut buf = match self.gpu.alloc(len) {
            Ok(b) => b,
            Err(DeviceError::OutOfMemory { .. }) => {
                // The driver's allocator refused below our capacity: make room, try once more.
                drop(reservation);
                self.ledger.evict_for(len);
                let reservation = self.ledger.reserve(len)?;
                let mut b = self.gpu.alloc(len).map_err(|e| match e {
                    DeviceError::OutOfMemory { .. } => self.ledger.out_of_memory(len),
                    e => e,
                })?;
                b._reservation = Some(reservation);
                return Ok(b);
            }
            Err(e) => return Err(e),
        };
        buf._reservation = Some(reservation);
        Ok(buf)
    }

    /// A buffer holding `data`: [`alloc`](Self::alloc) then [`Gpu::upload`].
    pub fn upload(&self, data: &[u8]) -> Result<RawBuffer, DeviceError> {
        let buf = self.alloc(data.len() as u64)?;
        self.gpu.upload(&buf, data)?;
        Ok(buf)
    }

    /// The buffer's bytes, copied to the host.
    pub fn download(&self, buf: &RawBuffer) -> Result<Vec<u8>, DeviceError> {
        let mut out = vec![0u8; buf.len() as usize];
        self.gpu.download(buf, &mut out)?;
        Ok(out)
    }

    /// A new buffer on this device with the contents of `src` (a buffer of this device).
    pub fn duplicate(&self, src: &RawBuffer) -> Result<RawBuffer, DeviceError> {
        let dst = self.alloc(src.len())?;
        self.gpu.copy(src, &dst)?;
        Ok(dst)
    }

    /// A new buffer on this device with the contents of `src`, a buffer of `from`: a
    /// direct copy when the backend has one between the two devices
    /// ([`Gpu::copy_from_peer`]), else through host memory.
    pub fn copy_from(&self, from: &DeviceRef, src: &RawBuffer) -> Result<RawBuffer, DeviceError> {
        if self.same_device(from) {
            return self.duplicate(src);
        }
        if self.info().backend == from.info().backend {
            let dst = self.alloc(src.len())?;
            if let Some(r) = self.gpu.copy_from_peer(from.gpu.as_ref(), src, &dst) {
                r?;
                return Ok(dst);
            }
        }
        let bytes = from.download(src)?;
        self.upload(&bytes)
    }

    /// Runs `kernel` (see [`Gpu::launch`]); every buffer must live on this device.
    pub fn launch(
        &self,
        kernel: &Kernel,
        global: u32,
        args: &[KernelArg<'_>],
    ) -> Result<(), DeviceError> {
        for a in args {
            if let KernelArg::Buffer(b) = a {
                if b.memory() != &self.memory {
                    return Err(DeviceError::BadArgument(format!(
                        "a buffer in {} passed to a kernel on {}",
                        b.memory(),
                        self.memory
                    )));
                }
            }
        }
        self.gpu.launch(kernel, global, args)
    }
}

impl fmt::Debug for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceRef")
            .field("name", &self.gpu.info().name)
            .field("ledger", &self.ledger)
            .finish()
    }
}

/// A device as a processor: kind = the backend's name, memory = `{backend}:{index}`.
/// Jobs run on one host thread of its own, in order (a device runs one task at a time;
/// its kernels queue on the device). Allocation goes through its [`MemoryLedger`]; the
/// device operations are those of its [`DeviceRef`], which it dereferences to.
pub struct DeviceProc {
    device: DeviceRef,
    thread: ThreadProc,
    kind: ProcKind,
}

impl DeviceProc {
    /// Wraps `gpu`, with a ledger whose capacity is the device's memory, capped by
    /// [`ENV_DEVICE_MEMORY`].
    pub fn new(gpu: Arc<dyn Gpu>) -> Result<Self, crate::ProcError> {
        let reported = gpu.info().memory_bytes;
        let capacity = match device_memory_from_env() {
            Some(cap) => cap.min(reported),
            None => reported,
        };
        Self::with_capacity(gpu, capacity)
    }

    /// Wraps `gpu` with a ledger of `capacity` bytes. Starts the device's host thread
    /// (unpinned; it parks at once when idle).
    pub fn with_capacity(gpu: Arc<dyn Gpu>, capacity: u64) -> Result<Self, crate::ProcError> {
        let info = gpu.info();
        let thread = ThreadProc::builder()
            .name(format!("dagger-{}-{}", info.backend, info.index))
            .label(info.name.clone())
            .spin(std::time::Duration::ZERO)
            .spawn()?;
        Ok(Self {
            kind: ProcKind::custom(info.backend),
            device: DeviceRef::new(gpu, capacity),
            thread,
        })
    }

    /// The shared handle to the device.
    pub fn device(&self) -> &DeviceRef {
        &self.device
    }
}

impl std::ops::Deref for DeviceProc {
    type Target = DeviceRef;
    fn deref(&self) -> &DeviceRef {
        &self.device
    }
}

impl Processor for DeviceProc {
    fn kind(&self) -> ProcKind {
        self.kind.clone()
    }

    fn memory(&self) -> MemorySpace {
        self.device.memory.clone()
    }

    fn label(&self) -> String {
        self.device.info().name.clone()
    }

    fn properties(&self) -> BTreeMap<String, String> {
        let info = self.device.info();
        let mut p = info.extra.clone();
        p.insert("vendor".into(), info.vendor.clone());
        p.insert("memory".into(), format_bytes(info.memory_bytes));
        p.insert(
            "memory_limit".into(),
            format_bytes(self.device.ledger.capacity()),
        );
        p.insert("compute_units".into(), info.compute_units.to_string());
        p
    }

    fn execute(&self, job: Job) {
        self.thread.execute(job);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn attach(&self, id: ProcId, this: Weak<dyn Processor>) {
        // The jobs run on the inner thread; `current()` there must name this processor.
        self.thread.attach(id, this);
    }

    fn shutdown(&self) {
        self.thread.shutdown();
    }
}

impl fmt::Debug for DeviceProc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceProc")
            .field("info", self.device.info())
            .field("ledger", &self.device.ledger)
            .finish()
    }
}

/// `1.5 GiB`, `64 MiB`, `512 B`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            let v = n as f64 / size as f64;
            return if n % size == 0 {
                format!("{} {unit}", n / size)
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{n} B")
}

/// Parses `268435456`, `256MiB`, `256 MiB`, `1GiB`, `64MB`, `512KiB`, `1G`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn device_memory_from_env() -> Option<u64> {
    let v = std::env::var(ENV_DEVICE_MEMORY).ok()?;
    match parse_bytes(&v) {
        Some(n) => Some(n),
        None => {
            eprintln!("dagger: {ENV_DEVICE_MEMORY}={v:?} is not a size (like 256MiB); ignored");
            None
        }
    }
}

/// The detection of one backend: its devices as processors, or why it found none.
pub fn detection_of(
    backend: &'static str,
    found: Result<Vec<Arc<dyn Gpu>>, String>,
) -> crate::Detection {
    match found {
        Err(reason) => crate::Detection::unavailable(reason),
        Ok(gpus) => {
            let mut procs: Vec<Box<dyn Processor>> = Vec::new();
            for g in gpus {
                match DeviceProc::new(g) {
                    Ok(p) => procs.push(Box::new(p)),
                    Err(e) => eprintln!("dagger: a {backend} device is skipped: {e}"),
                }
            }
            crate::Detection::Found(procs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_bytes("268435456"), Some(268435456));
        assert_eq!(parse_bytes("256MiB"), Some(256 << 20));
        assert_eq!(parse_bytes("256 MiB"), Some(256 << 20));
        assert_eq!(parse_bytes("1GiB"), Some(1 << 30));
        assert_eq!(parse_bytes("64MB"), Some(64_000_000));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("12 parsecs"), None);
        assert_eq!(format_bytes(64 << 20), "64 MiB");
        assert_eq!(format_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(format_bytes(100), "100 B");
    }

    #[test]
    fn kernels_say_which_backends_they_support() {
        const K: Kernel = Kernel::new("k")
            .opencl("__kernel void k() {}")
            .workgroup(128);
        assert!(K.supports("opencl"));
        assert!(!K.supports("wgpu"));
        assert!(!K.supports("cuda"));
        assert_eq!(K.workgroup, 128);
        assert!(Kernel::new("p").ptx(".version 8.0").supports("cuda"));
    }
}
