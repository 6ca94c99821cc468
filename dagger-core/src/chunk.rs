//! How a chunk's value is held inside one process: as encoded host bytes, or as a buffer
//! in a device's memory.
//!
//! Chunks cross processes as encoded host bytes only. Inside a process a chunk may instead
//! live in the memory of a device (a GPU, a user's board): device backends (OpenCL, wgpu,
//! CUDA, a user's own) keep such buffers themselves and name each one with an opaque
//! [`DeviceHandle`]. This module is the plain-data description of that; the trait that a
//! backend's buffer type implements (`DeviceBuffer`: `memory()`, `len()`, `to_host()`)
//! lives in `dagger-move`, where moves produce and consume device-resident values.

use crate::proc::MemorySpace;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A device backend's opaque name for one buffer it holds. Only the backend that issued
/// it can interpret it; it is unique among the live buffers of one [`MemorySpace`] of one
/// process, and means nothing in another process.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct DeviceHandle(pub u64);

impl fmt::Debug for DeviceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dev#{:x}", self.0)
    }
}

impl fmt::Display for DeviceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The representation a chunk's value is held in, within the process that holds it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChunkRepr {
    /// Encoded host bytes (postcard): what every host-memory processor reads and what
    /// crosses processes.
    Host {
        /// The encoded length, in bytes.
        len: u64,
    },
    /// A buffer in a device's memory, held by the backend of that memory space.
    Device {
        /// The memory the buffer lives in (never [`MemorySpace::HOST`]'s kind for a real
        /// device, though nothing here forbids it).
        memory: MemorySpace,
        /// The backend's name for the buffer.
        handle: DeviceHandle,
        /// The buffer's length, in bytes.
        len: u64,
    },
}

impl ChunkRepr {
    /// The memory the value lives in: [`MemorySpace::HOST`] for host bytes.
    pub fn memory(&self) -> &MemorySpace {
        match self {
            ChunkRepr::Host { .. } => &MemorySpace::HOST,
            ChunkRepr::Device { memory, .. } => memory,
        }
    }

    /// The length of the representation, in bytes.
    pub fn len(&self) -> u64 {
        match self {
            ChunkRepr::Host { len } | ChunkRepr::Device { len, .. } => *len,
        }
    }

    /// True if the representation holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for encoded host bytes.
    pub fn is_host(&self) -> bool {
        matches!(self, ChunkRepr::Host { .. })
    }

    /// The device handle, for a device-resident value.
    pub fn device_handle(&self) -> Option<DeviceHandle> {
        match self {
            ChunkRepr::Host { .. } => None,
            ChunkRepr::Device { handle, .. } => Some(*handle),
        }
    }
}

impl fmt::Display for ChunkRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkRepr::Host { len } => write!(f, "host bytes ({len} B)"),
            ChunkRepr::Device {
                memory,
                handle,
                len,
            } => write!(f, "{handle} in {memory} ({len} B)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_device_representations_describe_themselves() {
        let host = ChunkRepr::Host { len: 12 };
        assert!(host.is_host());
        assert_eq!(host.memory(), &MemorySpace::HOST);
        assert_eq!(host.device_handle(), None);
        assert_eq!(host.to_string(), "host bytes (12 B)");

        let dev = ChunkRepr::Device {
            memory: MemorySpace::custom("opencl", 1),
            handle: DeviceHandle(0x2a),
            len: 0,
        };
        assert!(!dev.is_host());
        assert!(dev.is_empty());
        assert_eq!(dev.memory(), &MemorySpace::custom("opencl", 1));
        assert_eq!(dev.device_handle(), Some(DeviceHandle(0x2a)));
        assert_eq!(dev.to_string(), "dev#2a in opencl:1 (0 B)");

        let bytes = postcard::to_allocvec(&dev).unwrap();
        assert_eq!(postcard::from_bytes::<ChunkRepr>(&bytes).unwrap(), dev);
    }
}
