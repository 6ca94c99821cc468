//! What ran where and when: the spans of a run's tasks and moves, as the driver core
//! records them when recording is on ([`DriverConfig::record`](crate::DriverConfig)).
//!
//! # One clock
//!
//! Every time is a [`Duration`] on the driver core's clock (the `now` its shell passes).
//! A task's queued and dispatched times are the driver's own. Its start and end, and a
//! move's, are measured by the worker on the worker's clock and carried in its `Done`
//! batches, which also carry the worker's clock at sending. The driver aligns each
//! worker's clock with the smallest difference it has seen between a batch's arrival (its
//! clock) and its sending (the worker's): that difference is the clocks' offset plus the
//! shortest one-way trip, so an aligned time is late by at most that trip (tens of µs on
//! one host) and never later than the arrival of the batch that reported it. Hence, for
//! every task, `queued ≤ dispatched ≤ started ≤ finished`, also across hosts whose
//! clocks differ; the estimate only gets better as batches arrive.
//!
//! Recording costs one record per task (its dependencies included) and one per move, and
//! lives as long as the driver core.

use dagger_core::{ChunkId, ProcId, TaskId, WorkerId};
use std::time::Duration;

/// Every task and move of a run, from [`DriverCore::timeline`](crate::DriverCore).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    /// One span per task that finished or failed on a worker, in the order they were
    /// reported (its last attempt, for a task that ran more than once).
    pub tasks: Vec<TaskSpan>,
    /// Chunks moved between workers, in the order they were reported.
    pub moves: Vec<MoveSpan>,
    /// The processors tasks ran on: id and label (`thread[0]@worker-2`), in first-use
    /// order.
    pub processors: Vec<(ProcId, String)>,
}

/// One task's run.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpan {
    /// The task.
    pub task: TaskId,
    /// Its function's registered name.
    pub func: String,
    /// The worker it ran on (last attempt).
    pub worker: WorkerId,
    /// The processor it ran on.
    pub proc: ProcId,
    /// How many times it was dispatched.
    pub attempts: u32,
    /// When it was submitted.
    pub queued: Duration,
    /// When it was last dispatched.
    pub dispatched: Duration,
    /// When its function started.
    pub started: Duration,
    /// When its function returned.
    pub finished: Duration,
    /// The encoded size of its result (0 if it failed).
    pub bytes: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The tasks whose results it took, in argument order (each once).
    pub inputs: Vec<TaskId>,
}

/// One chunk moved from a worker to another.
#[derive(Clone, Debug, PartialEq)]
pub struct MoveSpan {
    /// The chunk (the result of `chunk.task()`).
    pub chunk: ChunkId,
    /// Where it came from.
    pub from: WorkerId,
    /// Where it went.
    pub to: WorkerId,
    /// Its size.
    pub bytes: u64,
    /// Whether it went through shared memory (else over the link).
    pub shared_memory: bool,
    /// When the destination asked for it.
    pub started: Duration,
    /// When it arrived.
    pub finished: Duration,
}
