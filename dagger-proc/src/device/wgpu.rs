//! The wgpu backend (feature `wgpu`): compute on Vulkan devices through [`wgpu`].
//!
//! [`detect`] opens every adapter wgpu enumerates on the Vulkan backend (another set of
//! backends with `WGPU_BACKEND`, such as `WGPU_BACKEND=vulkan,gl`, if they were compiled
//! in) and asks each for a device with the adapter's own limits, so buffers may be as large
//! as the adapter allows. Each device becomes a [`DeviceProc`](super::DeviceProc) of kind
//! `wgpu` in memory space `wgpu:{index}`.
//!
//! Needs, at run time only: the Vulkan loader (`libvulkan.so.1`) and a Vulkan driver (an
//! ICD: a GPU's driver, or Mesa's lavapipe on the CPU). Without them the detection is
//! [`Detection::Unavailable`] with the reason, never a crash; nothing is needed to build.
//!
//! Kernels are WGSL ([`Kernel::wgsl`]); the arguments follow the convention documented on
//! [`Kernel`]: argument `i` is `@group(0) @binding(i)`, a buffer a `var<storage, ...>` and a
//! scalar a `var<uniform>` (32-bit scalars only: WGSL has no 64-bit types). A kernel is
//! compiled into a compute pipeline (layout taken from the shader) on its first launch on a
//! device and kept. A launch runs `ceil(global / workgroup)` workgroups along `x` only, so
//! the kernel indexes with `global_invocation_id.x` and `global` is at most
//! `workgroup × max_compute_workgroups_per_dimension` (65535 on most devices); above that
//! the launch is refused with [`DeviceError::BadArgument`]. A buffer is bound whole, so a
//! kernel argument may be at most `max_storage_buffer_binding_size` bytes (shown in the
//! device's properties); larger buffers still upload, download and copy.
//!
//! wgpu reports misuse through error scopes, not return values: every operation here runs
//! inside scopes that catch validation, out-of-memory and internal errors and turn them
//! into [`DeviceError`]s; an error that escapes them is kept (see
//! [`WgpuDevice::uncaptured_errors`]) and printed, never a panic.
//!
//! wgpu has no query for a device's memory. [`DeviceInfo::memory_bytes`] is an estimate,
//! named in `extra["memory_source"]`: for a CPU adapter (lavapipe) half the host's physical
//! memory (`host_memory/2`), for any other the largest buffer the device may hold
//! (`max_buffer_size`). Cap it with [`ENV_DEVICE_MEMORY`](super::ENV_DEVICE_MEMORY).

use super::{DeviceError, DeviceInfo, Gpu, Kernel, KernelArg, RawBuffer, Scalar};
use crate::{DetectContext, Detection};
use dagger_core::MemorySpace;
use parking_lot::Mutex;
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

/// The detector's name.
pub const DETECTOR: &str = "wgpu";

/// The backend's name: the processor kind and the memory-space prefix.
const BACKEND: &str = "wgpu";

/// The longest a download waits for its buffer's map callback once the device is idle
/// (another thread's poll may be about to call it).
const MAP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// wgpu's copy and write alignment (`COPY_BUFFER_ALIGNMENT`).
const ALIGN: u64 = wgpu::COPY_BUFFER_ALIGNMENT;

/// The size of the uniform buffer that carries one scalar argument.
const SCALAR_BYTES: u64 = 16;

/// Finds this backend's devices: one [`DeviceProc`](super::DeviceProc) per adapter that
/// gave a device, or [`Detection::Unavailable`] when wgpu found no adapter.
pub fn detect(_ctx: &DetectContext) -> Detection {
    let found = WgpuDevice::enumerate().map(|devices| {
        devices
            .into_iter()
            .map(|d| Arc::new(d) as Arc<dyn Gpu>)
            .collect::<Vec<_>>()
    });
    super::detection_of(BACKEND, found)
}

/// The instance flags: wgpu's release defaults whatever the build profile (validation
/// layers off), changed by `WGPU_DEBUG`, `WGPU_VALIDATION` and the like.
fn instance() -> Result<wgpu::Instance, String> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN;
    desc.flags = wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL;
    let desc = desc.with_env();
    let backends = desc.backends;
    catch_unwind(AssertUnwindSafe(|| wgpu::Instance::new(desc))).map_err(|p| {
        let backends = backend_names(backends);
        format!("wgpu instance ({backends}) failed: {}", panic_text(&*p))
    })
}

/// `vulkan`, `vulkan,gl`, `none`.
fn backend_names(backends: wgpu::Backends) -> String {
    let names: Vec<String> = backends
        .iter_names()
        .map(|(name, _)| name.to_ascii_lowercase())
        .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(",")
    }
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic".to_string()
    }
}

/// The buffer a [`RawBuffer`] of this backend holds.
struct WgpuBuffer {
    buffer: wgpu::Buffer,
    /// The [`WgpuDevice::id`] of the device that made it.
    device: u64,
}

/// Distinguishes the devices of this process (two detections make two devices of index 0).
static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(0);

/// One wgpu device (a logical device on one adapter) and its queue.
pub struct WgpuDevice {
    id: u64,
    info: DeviceInfo,
    memory: MemorySpace,
    adapter: wgpu::AdapterInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    /// Compiled kernels, by entry point and source.
    pipelines: Mutex<HashMap<(&'static str, &'static str), wgpu::ComputePipeline>>,
    builds: AtomicU64,
    /// Why the device was lost, once it was.
    lost: Arc<Mutex<Option<String>>>,
    /// Errors no scope caught.
    uncaptured: Arc<Mutex<Vec<String>>>,
}

impl WgpuDevice {
    /// Opens a device on every adapter wgpu finds (see the [module docs](self) for the
    /// backends), numbered from 0 in the order wgpu lists them. An adapter that gives no
    /// device is skipped with a line on stderr. `Err` with the reason when there is no
    /// adapter at all, or none gave a device.
    pub fn enumerate() -> Result<Vec<WgpuDevice>, String> {
        let instance = instance()?;
        let backends = wgpu::Backends::VULKAN.with_env();
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        if adapters.is_empty() {
            let why = if backends.contains(wgpu::Backends::VULKAN) {
                "no Vulkan driver found"
            } else {
                "WGPU_BACKEND leaves out vulkan, the backend this build has"
            };
            return Err(format!(
                "no wgpu adapter on {} ({why})",
                backend_names(backends)
            ));
        }
        let mut devices = Vec::new();
        let mut failures = Vec::new();
        for adapter in adapters {
            let index = devices.len() as u32;
            match Self::open(&adapter, index) {
                Ok(d) => devices.push(d),
                Err(e) => {
                    let name = adapter.get_info().name;
                    eprintln!("dagger: the wgpu adapter {name:?} is skipped: {e}");
                    failures.push(format!("{name}: {e}"));
                }
            }
        }
        if devices.is_empty() {
            return Err(format!(
                "no wgpu adapter gave a device ({})",
                failures.join("; ")
            ));
        }
        Ok(devices)
    }

    /// A device on `adapter`, numbered `index`, with the adapter's limits.
    fn open(adapter: &wgpu::Adapter, index: u32) -> Result<WgpuDevice, String> {
        let adapter_info = adapter.get_info();
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("dagger"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = catch_unwind(AssertUnwindSafe(|| {
            pollster::block_on(adapter.request_device(&desc))
        }))
        .map_err(|p| format!("request_device panicked: {}", panic_text(&*p)))?
        .map_err(|e| e.to_string())?;
        let limits = device.limits();

        let uncaptured: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = uncaptured.clone();
        let name = adapter_info.name.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            eprintln!("dagger: wgpu device {name:?}: an uncaught error: {e}");
            let mut list = sink.lock();
            if list.len() < 64 {
                list.push(e.to_string());
            }
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            lost_sink
                .lock()
                .get_or_insert_with(|| format!("{reason:?}: {message}"));
        });

        let (memory_bytes, memory_source) = memory_estimate(&adapter_info, &limits);
        let mut extra = BTreeMap::new();
        extra.insert("backend".into(), adapter_info.backend.to_string());
        extra.insert("driver".into(), adapter_info.driver.clone());
        extra.insert("driver_info".into(), adapter_info.driver_info.clone());
        extra.insert(
            "device_type".into(),
            format!("{:?}", adapter_info.device_type),
        );
        extra.insert("memory_source".into(), memory_source.into());
        extra.insert(
            "max_buffer_size".into(),
            super::format_bytes(limits.max_buffer_size),
        );
        extra.insert(
            "max_storage_buffer_binding_size".into(),
            super::format_bytes(limits.max_storage_buffer_binding_size),
        );
        let info = DeviceInfo {
            backend: BACKEND,
            index,
            name: adapter_info.name.clone(),
            vendor: vendor_name(&adapter_info),
            memory_bytes,
            compute_units: 0,
            extra,
        };
        Ok(WgpuDevice {
            id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
            memory: MemorySpace::custom(BACKEND, index),
            info,
            adapter: adapter_info,
            device,
            queue,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            builds: AtomicU64::new(0),
            lost,
            uncaptured,
        })
    }

    /// How many kernels were compiled into pipelines on this device (a kernel launched
    /// again is not compiled again).
    pub fn builds(&self) -> u64 {
        self.builds.load(Ordering::Acquire)
    }

    /// What wgpu says of the adapter.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.adapter
    }

    /// The device's limits (the adapter's own, as requested).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The wgpu device, to use wgpu directly alongside the runtime.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The device's queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The wgpu buffer of `buf`, if it is a buffer of this backend. Its size is `buf.len()`
    /// rounded up to a multiple of 4.
    pub fn buffer(buf: &RawBuffer) -> Option<&wgpu::Buffer> {
        buf.downcast_ref::<WgpuBuffer>().map(|b| &b.buffer)
    }

    /// The errors wgpu reported outside any operation of this backend (at most 64 kept).
    pub fn uncaptured_errors(&self) -> Vec<String> {
        self.uncaptured.lock().clone()
    }

    /// Fails if the device was lost.
    fn check_alive(&self) -> Result<(), DeviceError> {
        match &*self.lost.lock() {
            Some(why) => Err(DeviceError::backend(BACKEND, format!("device lost: {why}"))),
            None => Ok(()),
        }
    }

    /// The wgpu buffer of `buf`, if it is one of this device.
    fn own<'a>(
        &self,
        buf: &'a RawBuffer,
        what: impl fmt::Display,
    ) -> Result<&'a wgpu::Buffer, DeviceError> {
        match buf.downcast_ref::<WgpuBuffer>() {
            Some(b) if b.device == self.id => Ok(&b.buffer),
            Some(_) => Err(DeviceError::BadArgument(format!(
                "{what}: a buffer of another wgpu device ({}) used on {}",
                buf.memory(),
                self.memory
            ))),
            None => Err(DeviceError::BadArgument(format!(
                "{what}: a buffer of {} is not a wgpu buffer",
                buf.memory()
            ))),
        }
    }

    /// Out of memory for `requested` bytes, as the device says (its ledger knows better).
    fn out_of_memory(&self, requested: u64) -> DeviceError {
        DeviceError::OutOfMemory {
            memory: self.memory.clone(),
            requested,
            available: 0,
            capacity: self.info.memory_bytes,
        }
    }

    /// A caught wgpu error of `what` as a [`DeviceError`]: out of memory stays so (for
    /// `requested` bytes), anything else is a backend error.
    fn device_error(&self, what: &str, e: wgpu::Error, requested: u64) -> DeviceError {
        match e {
            wgpu::Error::OutOfMemory { .. } => self.out_of_memory(requested),
            e => DeviceError::backend(BACKEND, format!("{what}: {}", error_text(&e))),
        }
    }

    /// Runs `f` inside error scopes (validation, out of memory, internal) and returns what
    /// it returned and the first error they caught. Scopes belong to the calling thread.
    fn scoped<T>(&self, f: impl FnOnce() -> T) -> (T, Option<wgpu::Error>) {
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let mut err = pollster::block_on(validation.pop());
        let e = pollster::block_on(oom.pop());
        err = err.or(e);
        let e = pollster::block_on(internal.pop());
        (out, err.or(e))
    }

    /// Waits for `index` (or all submitted work) to finish.
    fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<(), DeviceError> {
        let poll = wgpu::PollType::Wait {
            submission_index: index,
            timeout: None,
        };
        // wgpu panics on a poll error it does not classify (a lost device).
        match catch_unwind(AssertUnwindSafe(|| self.device.poll(poll))) {
            Ok(Ok(_)) => self.check_alive(),
            Ok(Err(e)) => Err(DeviceError::backend(BACKEND, format!("poll: {e}"))),
            Err(p) => Err(DeviceError::backend(
                BACKEND,
                format!("poll: {}", panic_text(&*p)),
            )),
        }
    }

    /// Submits `commands`, waits for them, and reports an error any caught.
    fn submit_and_wait(
        &self,
        what: &str,
        commands: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<(), DeviceError> {
        let (index, err) = self.scoped(|| {
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(what) });
            commands(&mut enc);
            self.queue.submit([enc.finish()])
        });
        if let Some(e) = err {
            return Err(self.device_error(what, e, 0));
        }
        self.wait(Some(index))
    }

    /// Reads `out.len()` bytes of `buf` from `offset` (a multiple of 4).
    fn read(&self, buf: &wgpu::Buffer, offset: u64, out: &mut [u8]) -> Result<(), DeviceError> {
        if out.is_empty() {
            return Ok(());
        }
        let size = round_up(out.len() as u64);
        let (staging, err) = self.scoped(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("dagger download"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        if let Some(e) = err {
            return Err(self.device_error("download", e, size));
        }
        self.submit_and_wait("download", |enc| {
            enc.copy_buffer_to_buffer(buf, offset, &staging, 0, size);
        })?;
        let (tx, rx) = mpsc::channel();
        let ((), err) = self.scoped(|| {
            staging.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
        });
        if let Some(e) = err {
            return Err(self.device_error("download", e, 0));
        }
        self.wait(None)?;
        // The callback runs on the thread whose poll found the mapping done: when another
        // thread polls the same device, it may have taken the mapping and not yet called
        // the callback when this thread's poll returns. Wait for it, polling again, for a
        // bounded time.
        let deadline = std::time::Instant::now() + MAP_WAIT;
        let mapped = loop {
            match rx.recv_timeout(std::time::Duration::from_millis(1)) {
                Ok(r) => break Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) if std::time::Instant::now() < deadline => {
                    self.wait(None)?;
                }
                Err(_) => break None,
            }
        };
        match mapped {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(DeviceError::backend(BACKEND, format!("map: {e}"))),
            None => {
                return Err(DeviceError::backend(
                    BACKEND,
                    "map: the buffer was not mapped after the device was idle",
                ))
            }
        }
        {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| DeviceError::backend(BACKEND, format!("map: {e}")))?;
            out.copy_from_slice(&view[..out.len()]);
        }
        staging.unmap();
        Ok(())
    }

    /// Writes `data` at `offset` (a multiple of 4) of `buf`, whose first `len` bytes are
    /// the buffer's own. A length that is not a multiple of 4 ends in a word partly kept:
    /// that word is read back and merged when bytes after `data` belong to the buffer.
    fn write(
        &self,
        buf: &wgpu::Buffer,
        len: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), DeviceError> {
        if data.is_empty() {
            return Ok(());
        }
        let n = data.len() as u64;
        let whole = n - n % ALIGN;
        let mut tail = Vec::new();
        if whole < n {
            tail = vec![0u8; ALIGN as usize];
            let kept = len.min(offset + whole + ALIGN) - (offset + n);
            if kept > 0 {
                self.read(buf, offset + whole, &mut tail)?;
            }
            tail[..(n - whole) as usize].copy_from_slice(&data[whole as usize..]);
        }
        let (index, err) = self.scoped(|| {
            if whole > 0 {
                self.queue
                    .write_buffer(buf, offset, &data[..whole as usize]);
            }
            if !tail.is_empty() {
                self.queue.write_buffer(buf, offset + whole, &tail);
            }
            self.queue.submit([])
        });
        if let Some(e) = err {
            return Err(self.device_error("upload", e, 0));
        }
        self.wait(Some(index))
    }

    /// The pipeline of `kernel`, compiled on first use.
    fn pipeline(
        &self,
        kernel: &Kernel,
        src: &'static str,
    ) -> Result<wgpu::ComputePipeline, DeviceError> {
        let mut cache = self.pipelines.lock();
        if let Some(p) = cache.get(&(kernel.name, src)) {
            return Ok(p.clone());
        }
        let build_error = |log: String| DeviceError::Build {
            kernel: kernel.name.to_string(),
            backend: BACKEND,
            log,
        };
        let (module, err) = self.scoped(|| {
            self.device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.name),
                    source: wgpu::ShaderSource::Wgsl(src.into()),
                })
        });
        let compiled = pollster::block_on(module.get_compilation_info());
        let messages: Vec<String> = compiled
            .messages
            .iter()
            .filter(|m| m.message_type == wgpu::CompilationMessageType::Error)
            .map(|m| m.message.trim().to_string())
            .collect();
        if !messages.is_empty() {
            return Err(build_error(messages.join("\n")));
        }
        if let Some(e) = err {
            return Err(build_error(error_text(&e)));
        }
        let (pipeline, err) = self.scoped(|| {
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(kernel.name),
                    layout: None,
                    module: &module,
                    entry_point: Some(kernel.name),
                    compilation_options: Default::default(),
                    cache: None,
                })
        });
        if let Some(e) = err {
            return Err(build_error(error_text(&e)));
        }
        self.builds.fetch_add(1, Ordering::AcqRel);
        cache.insert((kernel.name, src), pipeline.clone());
        Ok(pipeline)
    }
}

impl Gpu for WgpuDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn alloc(&self, len: u64) -> Result<RawBuffer, DeviceError> {
        self.check_alive()?;
        let size = round_up(len.max(1));
        if size > self.limits.max_buffer_size {
            return Err(DeviceError::OutOfMemory {
                memory: self.memory.clone(),
                requested: len,
                available: self.limits.max_buffer_size,
                capacity: self.limits.max_buffer_size,
            });
        }
        let (buffer, err) = self.scoped(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        if err.is_some() {
            // A buffer the device refused, for room or for a limit, is out of memory.
            return Err(self.out_of_memory(len));
        }
        Ok(RawBuffer::new(
            WgpuBuffer {
                buffer,
                device: self.id,
            },
            len,
            self.memory.clone(),
        ))
    }

    fn upload(&self, buf: &RawBuffer, data: &[u8]) -> Result<(), DeviceError> {
        self.check_alive()?;
        let b = self.own(buf, "upload")?;
        crate::device::check_fits("upload", data.len() as u64, buf.len())?;
        self.write(b, buf.len(), 0, data)
    }

    fn download(&self, buf: &RawBuffer, out: &mut [u8]) -> Result<(), DeviceError> {
        self.check_alive()?;
        let b = self.own(buf, "download")?;
        crate::device::check_fits("download", out.len() as u64, buf.len())?;
        self.read(b, 0, out)
    }

    fn copy(&self, src: &RawBuffer, dst: &RawBuffer) -> Result<(), DeviceError> {
        self.check_alive()?;
        let s = self.own(src, "copy source")?;
        let d = self.own(dst, "copy destination")?;
        crate::device::check_fits("copy", src.len(), dst.len())?;
        let n = src.len();
        let whole = n - n % ALIGN;
        // The whole words on the device; a last partial word through the host, merged
        // with what the destination holds after it.
        if whole > 0 {
            self.submit_and_wait("copy", |enc| {
                enc.copy_buffer_to_buffer(s, 0, d, 0, whole);
            })?;
        }
        if whole < n {
            if dst.len() == n {
                // The padding after `n` is no one's: copy the whole last word.
                self.submit_and_wait("copy", |enc| {
                    enc.copy_buffer_to_buffer(s, whole, d, whole, ALIGN);
                })?;
            } else {
                let mut tail = vec![0u8; (n - whole) as usize];
                self.read(s, whole, &mut tail)?;
                self.write(d, dst.len(), whole, &tail)?;
            }
        }
        Ok(())
    }

    fn launch(
        &self,
        kernel: &Kernel,
        global: u32,
        args: &[KernelArg<'_>],
    ) -> Result<(), DeviceError> {
        self.check_alive()?;
        let src = kernel.wgsl.ok_or_else(|| DeviceError::NoSource {
            kernel: kernel.name.to_string(),
            backend: BACKEND,
        })?;
        if kernel.workgroup == 0 {
            return Err(DeviceError::BadArgument(format!(
                "kernel `{}` has a workgroup size of 0",
                kernel.name
            )));
        }
        let groups = global.div_ceil(kernel.workgroup);
        let max_groups = self.limits.max_compute_workgroups_per_dimension;
        if groups > max_groups {
            return Err(DeviceError::BadArgument(format!(
                "kernel `{}`: {global} work items make {groups} workgroups of {}, more than \
                 the {max_groups} this device dispatches along x",
                kernel.name, kernel.workgroup
            )));
        }
        // Check the arguments before building, so a bad one costs no compile.
        let mut buffers: Vec<&wgpu::Buffer> = Vec::with_capacity(args.len());
        let mut scalars: Vec<(usize, [u8; SCALAR_BYTES as usize])> = Vec::new();
        for (i, a) in args.iter().enumerate() {
            match a {
                KernelArg::Buffer(b) => buffers.push(self.own(b, format_args!("argument {i}"))?),
                KernelArg::Scalar(s) => {
                    if let Scalar::F64(_) | Scalar::I64(_) | Scalar::U64(_) = s {
                        return Err(DeviceError::BadArgument(format!(
                            "kernel `{}` argument {i}: {s:?} is 64-bit, which WGSL has not",
                            kernel.name
                        )));
                    }
                    let mut bytes = [0u8; SCALAR_BYTES as usize];
                    let v = s.to_le_bytes();
                    bytes[..v.len()].copy_from_slice(&v);
                    scalars.push((i, bytes));
                }
            }
        }
        let pipeline = self.pipeline(kernel, src)?;
        if global == 0 {
            return Ok(());
        }

        // The scalars' uniform buffers, written before the dispatch is submitted.
        let (uniforms, err) = self.scoped(|| {
            scalars
                .iter()
                .map(|(i, bytes)| {
                    let u = self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("dagger scalar"),
                        size: SCALAR_BYTES,
                        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    self.queue.write_buffer(&u, 0, bytes);
                    (*i, u)
                })
                .collect::<Vec<_>>()
        });
        if let Some(e) = err {
            return Err(self.device_error("kernel scalars", e, 0));
        }
        let (bind_group, err) = self.scoped(|| {
            if args.is_empty() {
                return None;
            }
            let mut next_buffer = buffers.iter();
            let mut next_uniform = uniforms.iter();
            let entries: Vec<wgpu::BindGroupEntry<'_>> = args
                .iter()
                .enumerate()
                .filter_map(|(i, a)| {
                    let buffer = match a {
                        KernelArg::Buffer(_) => *next_buffer.next()?,
                        KernelArg::Scalar(_) => &next_uniform.next()?.1,
                    };
                    Some(wgpu::BindGroupEntry {
                        binding: i as u32,
                        resource: buffer.as_entire_binding(),
                    })
                })
                .collect();
            let layout = pipeline.get_bind_group_layout(0);
            Some(self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.name),
                layout: &layout,
                entries: &entries,
            }))
        });
        if let Some(e) = err {
            return Err(DeviceError::BadArgument(format!(
                "kernel `{}`: the arguments do not fit its bindings: {}",
                kernel.name,
                error_text(&e)
            )));
        }
        let (_index, err) = self.scoped(|| {
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some(kernel.name),
                });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(kernel.name),
                    timestamp_writes: None,
                });
                pass.set_pipeline(&pipeline);
                if let Some(bg) = &bind_group {
                    pass.set_bind_group(0, bg, &[]);
                }
                pass.dispatch_workgroups(groups, 1, 1);
            }
            self.queue.submit([enc.finish()])
        });
        if let Some(e) = err {
            return Err(self.device_error(&format!("kernel `{}`", kernel.name), e, 0));
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<(), DeviceError> {
        self.check_alive()?;
        self.wait(None)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl fmt::Debug for WgpuDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WgpuDevice")
            .field("memory", &self.memory)
            .field("name", &self.info.name)
            .field("backend", &self.adapter.backend)
            .field("builds", &self.builds())
            .finish()
    }
}

/// `n` rounded up to wgpu's copy alignment.
fn round_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// A wgpu error with its causes, on one line each.
fn error_text(e: &wgpu::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let line = s.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    text
}

/// The vendor, by PCI (or Khronos) vendor id, else the driver's name.
fn vendor_name(info: &wgpu::AdapterInfo) -> String {
    let known = match info.vendor {
        0x10DE => "NVIDIA",
        0x1002 | 0x1022 => "AMD",
        0x8086 => "Intel",
        0x13B5 => "ARM",
        0x5143 => "Qualcomm",
        0x106B => "Apple",
        0x1010 => "Imagination",
        0x10005 => "Mesa",
        0 => return info.driver.clone(),
        id => return format!("{id:#06x} ({})", info.driver),
    };
    known.to_string()
}

/// The device's memory as far as wgpu lets one guess, and which guess it is.
fn memory_estimate(info: &wgpu::AdapterInfo, limits: &wgpu::Limits) -> (u64, &'static str) {
    if info.device_type == wgpu::DeviceType::Cpu {
        if let Some(host) = host_memory() {
            return (host / 2, "host_memory/2");
        }
    }
    (limits.max_buffer_size, "max_buffer_size")
}

/// The host's physical memory (`MemTotal` of `/proc/meminfo`), in bytes.
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => n.checked_mul(1024),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_to_words() {
        assert_eq!(round_up(0), 0);
        assert_eq!(round_up(1), 4);
        assert_eq!(round_up(4), 4);
        assert_eq!(round_up(1001), 1004);
    }

    #[test]
    fn host_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(host_memory().unwrap_or(0) > 0);
        }
    }
}
