//! Values held in a device's memory rather than as host bytes.
//!
//! A device backend (OpenCL, wgpu, CUDA, or a user's own board) implements
//! [`DeviceBuffer`] for its buffer type. A move registered towards a device processor
//! returns such a buffer as [`MoveValue::Device`](crate::MoveValue::Device) (e.g. with
//! [`MoveRegistry::register_to_device`](crate::MoveRegistry::register_to_device)), a task
//! on that processor receives it, and a move back to host memory reads it with
//! [`DeviceBuffer::to_host`]. The plain-data description of such a value — its memory
//! space, its backend handle and its length — is [`ChunkRepr`].

use crate::MoveError;
use dagger_core::{ChunkRepr, DeviceHandle, MemorySpace};
use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// Conversions to [`Any`] for every `'static + Send + Sync` type, so that a
/// `dyn DeviceBuffer` can be downcast to its backend's type. Implemented for every type;
/// a backend never implements it by hand.
pub trait AsAnyBuffer: Any + Send + Sync {
    /// `self` as `&dyn Any`.
    fn as_any(&self) -> &dyn Any;
    /// `self` as `Arc<dyn Any>`, for [`Arc::downcast`].
    fn into_any_arc(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl<T: Any + Send + Sync> AsAnyBuffer for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any_arc(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// A buffer that a device backend holds in a memory space other than host RAM, as one
/// chunk's value. Device backends (OpenCL, wgpu, CUDA, a user's device) implement it for
/// their buffer type; the runtime only ever asks where the buffer lives, how long it is,
/// and for a host copy when the value must leave the device.
///
/// Implementations must be cheap to share: the runtime holds buffers as
/// `Arc<dyn DeviceBuffer>`, and dropping the last `Arc` should free the device memory.
pub trait DeviceBuffer: AsAnyBuffer + fmt::Debug {
    /// The memory space the buffer lives in (e.g. `cuda:0`).
    fn memory(&self) -> MemorySpace;

    /// The buffer's length, in bytes.
    fn len(&self) -> u64;

    /// True if the buffer holds no byte.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the value back to host memory, encoded as the host form of the same value
    /// (postcard bytes of the task's data type, as [`MoveValue::Bytes`](crate::MoveValue)
    /// holds), so that it can reach a CPU processor or another process. Costs a
    /// device-to-host transfer; a failure is reported, never a panic.
    fn to_host(&self) -> Result<Vec<u8>, MoveError>;

    /// The backend's opaque name for the buffer. The default is the buffer's address,
    /// unique while it is alive; a backend with handles of its own (a `cl_mem`, a device
    /// pointer) returns those.
    fn handle(&self) -> DeviceHandle {
        DeviceHandle(self as *const Self as *const () as usize as u64)
    }

    /// The plain-data description of this value: [`ChunkRepr::Device`].
    fn repr(&self) -> ChunkRepr {
        ChunkRepr::Device {
            memory: self.memory(),
            handle: self.handle(),
            len: self.len(),
        }
    }
}

/// Takes a `B` out of a shared device buffer, if it is one; gives the buffer back
/// otherwise.
pub(crate) fn downcast_buffer<B: DeviceBuffer>(
    buf: Arc<dyn DeviceBuffer>,
) -> Result<Arc<B>, Arc<dyn DeviceBuffer>> {
    match Arc::clone(&buf).into_any_arc().downcast::<B>() {
        Ok(b) => Ok(b),
        Err(_) => Err(buf),
    }
}
