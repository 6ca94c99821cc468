//! The vocabulary every dagger-rs crate shares: ids, processor descriptions, scopes,
//! task options, task errors, the messages that cross process boundaries and the cluster's
//! [`topology`] graph.
//!
//! This crate performs no I/O and depends on no other dagger crate. Everything here is
//! plain data that can be encoded with postcard and written down (scheduler checkpoints).
//!
//! Architecture invariant: `dagger-core` never depends on another dagger crate and never
//! touches a socket, a thread or the clock.

mod chunk;
mod error;
pub mod hash;
mod ids;
mod proc;
mod scope;
mod task;
pub mod topology;
pub mod wire;

pub use chunk::{ChunkRepr, DeviceHandle};
pub use error::{ExitCause, GraphError, LostReason, MoveFailure, TaskError, WireError};
pub use ids::{ChunkId, Incarnation, ProcId, TaskId, WorkerId};
pub use proc::{LinkCost, MemorySpace, ProcInfo, ProcKind, WorkerInfo};
pub use scope::{Options, Scope};
pub use task::{Arg, LossVerdict, LostTask, Part, TaskSpec};
