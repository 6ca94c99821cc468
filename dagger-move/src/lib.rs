//! Moves of dagger-rs: how a value gets from the processor that holds it to the processor
//! that needs it.
//!
//! - [`MoveRegistry`] (and the process-global [`moves()`]) holds move functions chosen by
//!   (source processor kind, destination processor kind, data type), with fallbacks for any
//!   type and any kind; a user's move wins over a built-in one.
//! - [`cheapest_path`], [`generic_path`] and [`PathCache`] search the
//!   [`Topology`](dagger_core::topology::Topology) graph for the route of a datum of a given size.
//! - [`DeviceBuffer`] is a value held in a device's memory ([`MoveValue::Device`]), which
//!   device backends (OpenCL, wgpu, CUDA, a user's board) implement for their buffers;
//!   moves produce and consume such values.
//! - With the `devices` feature, `DeviceVec` is a typed vector in host or device memory, the argument and result
//!   type of kernel tasks; `Device::current` launches kernels from a task on a device
//!   processor; the moves of a `DeviceVec` between host memory and every device are
//!   registered in [`moves()`].
//! - [`shm`] is the same-host shared-memory shortcut between two worker processes.
//!
//! Contract: nothing here performs network I/O or spawns threads; every input that may come
//! from the network (encoded bytes, shared-memory names and lengths) yields a typed
//! [`MoveError`], never a panic. Not guaranteed: that a path cost matches the real time of
//! a move — costs are models, as good as the topology's [`LinkCost`](dagger_core::LinkCost)s.

mod device;
mod error;
#[cfg(feature = "devices")]
pub mod gpu;
mod path;
mod registry;
pub mod shm;

pub use device::{AsAnyBuffer, DeviceBuffer};
pub use error::MoveError;
#[cfg(feature = "devices")]
pub use gpu::{Device, DeviceVec, Element, GpuBuffer, Launch};
pub use path::{cheapest_path, costs_from, generic_path, generic_path_for, Hop, Path, PathCache};
pub use registry::{moves, KindPattern, MoveFn, MoveRegistry, MoveTarget, MoveValue};
