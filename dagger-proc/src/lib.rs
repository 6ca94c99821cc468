//! Processors of dagger-rs: what can run a task, and how the processes of a cluster and
//! their processors are connected.
//!
//! - [`Processor`] is the trait every processor implements; a processor runs
//!   [`Job`]s given to [`Processor::execute`].
//! - [`OsProc`] is a process (the root of its subtree); [`ThreadProc`] is one CPU core with
//!   a dedicated, pinned OS thread and a FIFO queue.
//! - Detectors, registered by name in the process-global [`detectors`] registry, find the
//!   processors of a process when it starts; [`LocalProcs::detect`] runs them. The built-in
//!   `"cpu"` detector makes one `ThreadProc` per usable CPU (per core with the `hwloc`
//!   feature); users add their own for devices the runtime does not know.
//! - [`current`] tells a running job which processor it runs on; [`set_worker`] records
//!   the process's worker id once the driver has given it.
//! - [`Topology`] (defined in `dagger-core`, re-exported here) is the cluster-wide graph:
//!   every process's tree plus network and shortcut edges, each with a cost.
//!
//! Environment: `DAGGER_THREADS` caps the thread processors of a process,
//! `DAGGER_SPIN_US` sets how long an idle thread spins before parking (default 20 µs),
//! `DAGGER_PIN=0` disables pinning.
//! - [`idle`]: work a spinning thread processor does between jobs (a runtime's poll of its
//!   links), so that a message arriving then needs no other thread to wake it.
//!
//! Not guaranteed: pinning (it may fail, and is recorded as `pinned=false`), fairness
//! between processors, or that a job submitted after shutdown runs (it is dropped).
//!
//! Architecture invariant: this crate knows nothing of tasks, data or the network; it runs
//! opaque jobs and describes processors.

#![warn(missing_docs)]

mod cpu;
mod current;
mod detect;
pub mod device;
mod error;
#[cfg(feature = "hwloc")]
pub mod hwloc;
pub mod idle;
mod os;
mod processor;
pub mod sys;
mod thread;

pub use cpu::{detect_plain, DETECTOR as CPU_DETECTOR};
pub use current::{
    current, current_id, enter, set_worker, with_current, worker, CurrentGuard, CurrentProc,
};
/// The topology graph, defined in `dagger-core` (plain data the scheduler uses without this
/// crate's threads); re-exported here for existing callers.
pub use dagger_core::topology;
pub use dagger_core::topology::{DefaultCosts, Edge, EdgeKind, Topology};
pub use detect::{detectors, DetectContext, DetectFn, Detection, Detectors, LocalProcs};
pub use error::{
    AffinityError, DetectorPanicked, DetectorUnavailable, EnvVarError, ProcError, WorkerAlreadySet,
};
pub use os::OsProc;
pub use processor::{Job, Processor};
pub use sys::hostname;
pub use thread::{PinFailure, Pinning, ThreadProc, ThreadProcBuilder};
