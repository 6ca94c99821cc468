use dagger_core::{MemorySpace, ProcId, ProcKind};
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Weak;

/// A unit of work handed to a processor: runs once, on whatever thread the processor
/// chooses.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Anything that can run a task: a CPU thread, a GPU, a user's device.
///
/// A processor is shared (`Arc<dyn Processor>`) between the code that schedules work on it
/// and the jobs that run on it, so every method takes `&self` and must be cheap and
/// non-blocking unless stated otherwise.
pub trait Processor: Send + Sync + 'static {
    /// What kind of processor this is (`thread`, `cuda`, a user's `fpga`, ...). Scopes and
    /// move functions are chosen by kind.
    fn kind(&self) -> ProcKind;

    /// The memory space tasks on this processor compute in; a value must be moved into it
    /// before a task here may read it.
    fn memory(&self) -> MemorySpace;

    /// A short human name shown in the topology (`cpu 3`, `core 3`, `NVIDIA H100`, ...).
    fn label(&self) -> String;

    /// Free-form properties shown in the topology (core index, NUMA node, caches, ...).
    /// Called once per detection; may allocate.
    fn properties(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// Runs `job` on this processor. For a [`ThreadProc`](crate::ThreadProc) the job runs
    /// on the processor's own pinned OS thread, after every job submitted before it (FIFO).
    ///
    /// Must not block the caller for long (enqueue and return). A job the processor can no
    /// longer run (it was shut down) is dropped without running, which releases whatever it
    /// captured, so a caller waiting on a channel inside it sees the channel close.
    fn execute(&self, job: Job);

    /// The processor as `Any`, so a task can downcast the current processor to its device
    /// type (`proc.as_any().downcast_ref::<MyDevice>()`).
    fn as_any(&self) -> &dyn Any;

    /// Tells the processor its id and a weak handle to itself. Called once by
    /// [`LocalProcs::detect`](crate::LocalProcs::detect) after indices are assigned, before
    /// any job is submitted. Processors that run jobs on threads of their own store these
    /// and install them with [`enter`](crate::enter) around each job, so that
    /// [`current`](crate::current) answers inside the job. The default ignores them.
    fn attach(&self, id: ProcId, this: Weak<dyn Processor>) {
        let _ = (id, this);
    }

    /// Stops accepting work and releases the processor's threads, letting jobs already
    /// submitted finish first; may block until they have. Called when the owning
    /// [`LocalProcs`](crate::LocalProcs) is dropped. Jobs submitted afterwards are dropped.
    /// The default does nothing.
    fn shutdown(&self) {}
}
