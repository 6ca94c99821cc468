//! The dagger-rs scheduler: a sans-I/O state machine that places tasks on processors.
//!
//! # Shape
//!
//! [`Scheduler`] is driven like `quinn-proto`: the owner feeds it events
//! ([`Scheduler::submit`], [`Scheduler::task_done`], [`Scheduler::worker_joined`],
//! [`Scheduler::worker_lost`], [`Scheduler::release`], ...) together with the current time
//! as a [`Duration`] since the scheduler's start, and takes the
//! resulting [`Command`]s with [`Scheduler::poll_command`] until it returns `None`. The
//! owner sends the [`Command::Send`] messages to workers, hands [`Command::Complete`]s to
//! the client and logs [`Command::Event`]s. Because nothing here waits, a whole cluster can
//! be simulated in a unit test with virtual time and a seeded random schedule of faults.
//!
//! Architecture invariant: dagger-sched never performs I/O, never spawns a thread and never
//! reads the clock; every input is an argument and every output is a returned value.
//!
//! # Placement
//!
//! A ready task goes to the processor, among those its scope admits on workers that accept
//! work (and that are not saturated, see below), with the lowest estimated finish time: the cost of moving each input from its
//! nearest holder (cheapest path over the topology's edges, `latency + bytes / bandwidth`
//! per hop), plus the expected run time of the function on that processor kind (an
//! exponentially weighted mean of the measured `run_ns`, [`Config::default_runtime_ns`]
//! until the first measurement), plus the estimates of the tasks already dispatched there
//! and not finished. Path costs are cached per (source worker, size bucket) and dropped
//! whenever the topology changes; candidate lists are cached per distinct scope. Among
//! ready tasks, higher [`Options::priority`](dagger_core::Options) goes first, then
//! submission order.
//!
//! Dispatch is bounded ("saturation", as Dask's worker saturation or HyperQueue's bounded
//! worker queues; [`Config::saturation`]): a processor is sent another task only while it
//! is not saturated, that is while fewer than [`Config::min_depth`] tasks (2: one running,
//! one queued, so it never idles while a `Done`/`Run` round trip is in flight) are
//! dispatched there and unfinished, or while the learned run times of those add up to
//! less than [`Config::queue_horizon`] (5 ms, so µs-scale tasks still go thousands at a
//! time). A function never measured on a processor kind counts as expensive there (only
//! the count applies): 200 never-measured tasks go two per processor, not all at once. The
//! other ready tasks wait in the scheduler, in one queue per distinct scope (by priority,
//! in submission order within one, whenever a task became ready: a reduction's step that
//! became ready late goes before the leaves submitted after it; tasks of a scope share
//! their candidates), and each queue is retried
//! from its head, until its first task that still finds no room, whenever room may have
//! appeared: a task finished or failed, a worker joined or was lost, a drain ended. So a
//! worker that joins late (a replacement for a lost one, a pool that grows) receives its
//! share of the remaining work in the same [`Scheduler::poll_command`] round as its join,
//! and a huge graph is not re-examined on every event. They count as `ready` in
//! [`Stats`].
//!
//! A task whose scope names exactly one worker (`Scope::Worker`, `Scope::Proc`,
//! `Scope::WorkerKind`) is dispatched *early*: as soon as each of its inputs is finished or
//! at least dispatched. An input that is only dispatched is passed as
//! `RunArg::Chunk { from: [the worker running it] }`; that worker answers the fetch once the
//! value exists. A chain alternating between two workers thus costs one one-way trip per
//! hop. Such tasks are never held back by saturation: no other worker could run them, and
//! holding them would put a driver round trip back on every hop.
//!
//! Any other task is dispatched *ahead* of its inputs when its placement is already decided
//! ([`Config::dispatch_ahead`]): every input that is not finished is dispatched to one
//! worker, that worker accepts work, and the task's scope admits one of its processors that
//! has room (the one running its last input is preferred). It goes in the same `Run` batch
//! as its inputs, or as soon as the last of them is dispatched, and the worker starts it
//! the moment its inputs exist there: a chain placed freely costs no driver round trip per
//! hop. Unlike pinned tasks, these are held to the saturation bound (a task with a thousand
//! dependents must not pull them all onto its worker); one that finds no room waits for its
//! inputs as before, and is looked at again when another input is dispatched or finishes,
//! or when the task before it in a chain finishes. A task with inputs on two workers waits
//! until only one of them runs unfinished inputs; one with more than 16 inputs never goes
//! ahead. If its input's run fails where it waited for it, it runs again without counting
//! against its loss budget; if its worker is lost, it runs again like any task there.
//!
//! # Results and memory
//!
//! Results up to [`Config::inline_limit`] bytes come back inline; the scheduler keeps a
//! copy (so dependents get them as `RunArg::Value`) until the client released the task and
//! no unfinished task needs it. Larger results stay on the worker that produced them. Every
//! worker keeps every result until it is told `ToWorker::Release`; the scheduler sends one
//! (batched per worker) once no unfinished task will fetch the chunk from it, and either the
//! scheduler holds the value inline or the client released it and no unfinished task needs
//! it.
//!
//! Per-task state is a flat record of ids, counters and times (see
//! [`Scheduler::task_record_size`]); the arguments and dependency lists of a task are kept
//! only while they may be needed to recompute a lost result (lineage) and are freed once the
//! task is finished, released by the client, and every dependent is freed too.
//!
//! # Faults
//!
//! * A task that panics is re-run while its retry budget lasts (a `TaskRetried` event each
//!   time); then it fails, and every transitive dependent fails with
//!   `TaskError::DependencyFailed` naming the task that failed first and its error. Other
//!   tasks are not affected.
//! * A lost worker is not a task's fault: the tasks dispatched there run again regardless of
//!   their retry budget, within their loss budget (`Options::loss_retries`, else
//!   [`Config::default_loss_retries`], 3), then fail with `TaskError::WorkerLost`. An owner
//!   with a fault policy (the driver core, with `dagger_ft::FaultPolicy`) judges each such
//!   task itself through [`Scheduler::worker_lost_with`]: run again, watched (a suspected
//!   poison task) or not, or fail with its error (`TaskError::Poisoned`).
//!   Results whose only copy was there and that are still needed are recomputed from their
//!   lineage (recursively through inputs that are lost as well). A task whose input fetch
//!   failed (`TaskError::MoveFailed`, e.g. its source worker died) counts the same way.
//! * Messages are fenced: a `TaskDone` whose incarnation is not the worker's current one,
//!   from a worker that is not (any more) in the pool, or for a task not dispatched to that
//!   worker is ignored.
//! * A task whose scope admits no processor of the pool fails with
//!   `TaskError::NoProcessor` when it becomes ready — unless the pool has no task processor
//!   at all (the cluster is still starting, or every worker was lost), in which case it
//!   waits, for at most [`Config::no_processor_grace`] (then it fails the same way). A task
//!   whose admitted processors all belong to workers that do not accept work (draining)
//!   waits until one accepts again, a new worker joins, or the draining workers leave.
//!
//! # Time
//!
//! The only timer is that grace period. After taking the commands, the owner asks
//! [`Scheduler::poll_timeout`] for the next deadline and calls
//! [`Scheduler::handle_timeout`] once its clock reaches it; time is whatever `Duration`
//! the owner passes as `now` (virtual in tests).
//!
//! # Not guaranteed
//!
//! * The estimates are heuristics; nothing bounds how far a placement is from optimal.
//! * A task whose result was recomputed after a loss does not complete a second time:
//!   [`Scheduler::holders`] always tells where a stored result lives now.
//! * A task may run more than once (after a loss or a failed fetch); task functions should
//!   be free of side effects that must happen exactly once.

mod data;
mod drain;
mod edges;
mod graph;
mod hash;
mod invariants;
mod outbox;
mod placement;
mod recovery;
mod scheduler;
mod task_table;

pub use drain::{DrainError, DrainProgress, MAX_HANDOVER_FAILURES};
pub use scheduler::Scheduler;

use dagger_core::wire::ToWorker;
use dagger_core::{ProcId, TaskError, TaskId, WorkerId};
use std::time::Duration;

/// Tunables of the scheduler, fixed at [`Scheduler::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Results up to this many bytes travel back inline (`Outcome::Value`) and the scheduler
    /// keeps a copy. Default 64 KiB.
    pub inline_limit: u32,
    /// The most tasks in one `ToWorker::Run` message. Default 512 (frames stay small enough for the allocator to recycle cheaply).
    pub max_batch: usize,
    /// Run-time estimate, in nanoseconds, of a function never measured on a processor kind.
    /// Default 50 µs.
    pub default_runtime_ns: u64,
    /// How long a ready task may wait while the pool has no task processor at all (no
    /// worker yet, every worker lost, or only processes without cores) before it fails with
    /// `TaskError::NoProcessor`. The wait starts when the task is first parked for want of
    /// a processor and ends when one admits it. Default 10 s. A pool that may take longer
    /// to grow (workers started by a batch system, say) should raise it; `None` waits
    /// forever. The owner drives it with [`Scheduler::poll_timeout`] and
    /// [`Scheduler::handle_timeout`].
    pub no_processor_grace: Option<Duration>,
    /// How many times a task runs again after its worker was lost (or a transient move
    /// failure), when its options do not say (`Options::loss_retries`). Default 3. The
    /// driver core replaces it with its fault policy's (`dagger_ft::PolicyConfig`), whose
    /// verdicts decide worker losses.
    pub default_loss_retries: u32,
    /// Bounded dispatch ("saturation", as Dask's worker saturation or HyperQueue's bounded
    /// worker queues): a processor is sent another task only while it is not saturated (see
    /// [`Config::min_depth`] and [`Config::queue_horizon`]); the other ready tasks wait in
    /// the scheduler, so a worker that joins later (a replacement, a pool that grows) gets
    /// its share of what is left. Tasks whose scope pins them to one worker are never held
    /// back. Default `true`; `false` dispatches every ready task at once.
    pub saturation: bool,
    /// A processor is not saturated while fewer than this many tasks are dispatched to it
    /// and unfinished. Default 2: one running and one queued, so the processor does not
    /// idle while a `Done`/`Run` round trip is in flight. Taken as at least 1.
    pub min_depth: u32,
    /// A processor at or above [`Config::min_depth`] is still not saturated while the
    /// learned run times of the tasks dispatched to it and unfinished add up to less than
    /// this, and the task to place has a learned run time there too: a task never
    /// measured on that processor kind, or any such task queued there, counts as
    /// expensive (only `min_depth` applies). Default 5 ms: more than a round trip to a
    /// worker and the driver's time to answer it, so a processor of µs-scale tasks has
    /// thousands queued and never waits for the next batch, while a worker that joins
    /// late finds at most about 5 ms of work per processor placed elsewhere before it.
    pub queue_horizon: Duration,
    /// Tasks whose learned run time on the chosen processor kind is at least this, or not
    /// known yet, report when they start (`RunTask::watch`), so that a crash of their
    /// worker while they run can be attributed to them (poison tasks) from their first run.
    /// Shorter tasks are watched only after a crash made them suspects. Default 1 ms (one
    /// more small message per task of a millisecond or more costs nothing);
    /// `Duration::MAX` watches suspects only (also tasks of unknown run time are then not
    /// watched).
    pub watch_threshold: Duration,
    /// Dispatch a task ahead of its inputs when its placement is already decided: every
    /// input that is not finished is dispatched to one worker (queued or running there),
    /// that worker accepts work and its scope admits one of its processors with room.
    /// The task then goes to that worker in the same `Run` batch as (or right after) its
    /// producers, and the worker starts it as soon as its inputs exist, without a
    /// `Done`/`Run` round trip through the driver. Unlike tasks pinned to one worker, such
    /// a task is held to the saturation bound, and tasks with more than
    /// `MAX_AHEAD_INPUTS` (16) inputs are never dispatched ahead. Default `true`.
    pub dispatch_ahead: bool,
    /// Tell workers which tasks nothing waits for (`RunTask::quiet`): no client holds a
    /// handle to them, their dependents are dispatched when the batch goes out, and no
    /// ready task waits for room. Their workers report them with the next batch instead
    /// of at once (within `WorkerConfig::quiet_delay`), so a chain of them, dispatched
    /// ahead, runs without a message to the driver per link. Default `true`.
    pub quiet_reports: bool,
    /// Releasing a result at least this large is worth a message of its own: the owner
    /// learns of it with [`Scheduler::take_large_release`] and need not hold the release
    /// back to batch it with others. Its memory (a shared-memory segment, perhaps) is
    /// then free for the next result. Default 1 MiB.
    pub large_release_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            inline_limit: 64 * 1024,
            max_batch: 512,
            default_runtime_ns: 50_000,
            no_processor_grace: Some(Duration::from_secs(10)),
            default_loss_retries: 3,
            saturation: true,
            min_depth: 2,
            queue_horizon: Duration::from_millis(5),
            watch_threshold: Duration::from_millis(1),
            dispatch_ahead: true,
            quiet_reports: true,
            large_release_bytes: 1 << 20,
        }
    }
}

/// An unfinished task dispatched to a worker, as [`Scheduler::dispatched_to`] lists it and
/// a fault policy judges it when the worker is lost ([`Scheduler::worker_lost_with`]), and
/// what the policy decides for it.
pub use dagger_core::{LossVerdict, LostTask};

/// One output of the scheduler, taken with [`Scheduler::poll_command`].
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Send this message to this worker: `Run` batches (one per worker per flush, at most
    /// [`Config::max_batch`] tasks each) and `Release` batches.
    Send {
        /// The destination.
        worker: WorkerId,
        /// The message.
        msg: ToWorker,
    },
    /// A task finished or failed. Emitted exactly once for every task.
    Complete {
        /// The task.
        task: TaskId,
        /// Its result, or why there is none.
        result: Result<Completion, TaskError>,
    },
    /// Something the owner may want to log or show.
    Event(ClusterEvent),
}

/// Where a finished task's result is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The result, encoded, small enough to travel inline.
    Value(Vec<u8>),
    /// The result stays on workers; fetch it from one of them.
    Stored {
        /// The workers holding a copy when the task finished.
        holders: Vec<WorkerId>,
        /// Its encoded size in bytes.
        size: u64,
    },
}

/// Changes of the cluster the scheduler reports. More kinds may come in later versions.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// A worker joined the pool.
    WorkerJoined {
        /// It.
        worker: WorkerId,
    },
    /// A worker left the pool; its running tasks and its needed results are recomputed.
    WorkerLost {
        /// It.
        worker: WorkerId,
        /// Why it was declared lost.
        reason: dagger_core::LostReason,
    },
    /// A worker being drained ([`Scheduler::drain`]) holds nothing the graph still needs:
    /// it runs no task, every needed result it held has a copy on a worker that stays, and
    /// no task elsewhere may still fetch from it. Stopping it now loses nothing.
    WorkerDrained {
        /// It.
        worker: WorkerId,
        /// Results it handed over to other workers.
        moved_chunks: u32,
        /// Their bytes.
        moved_bytes: u64,
    },
    /// A drain gave up: copies of a result only the worker held failed
    /// [`MAX_HANDOVER_FAILURES`] times in a row. The owner removes the worker as lost, and
    /// what only it held is recomputed from lineage.
    DrainFailed {
        /// The worker being drained.
        worker: WorkerId,
        /// The task whose result could not be copied.
        task: TaskId,
        /// Why the last copy failed.
        cause: dagger_core::MoveFailure,
    },
    /// A task is queued to run again (after a panic with retries left, a lost worker or a
    /// failed input fetch).
    TaskRetried {
        /// The task.
        task: TaskId,
        /// The number of the attempt that comes next (the first run is attempt 1).
        attempt: u32,
    },
    /// The supervisor of local workers started a process to replace one that died. The
    /// replacement joins as a new worker with a new incarnation ([`ClusterEvent::WorkerJoined`]
    /// follows when it has). Emitted by the shell that owns the processes, not the scheduler.
    WorkerRestarted {
        /// The process that died.
        old_pid: u32,
        /// The process started in its place.
        new_pid: u32,
        /// Restarts within the budget's window, this one included.
        restarts: u32,
    },
    /// The supervisor's restart budget is spent: a local worker process that died is not
    /// replaced (a crash loop). Tasks the remaining pool cannot run fail with a typed error
    /// once their grace period is over. Emitted by the shell that owns the processes.
    RestartsExhausted {
        /// The process that died and was not replaced.
        pid: u32,
        /// Restarts made within the window.
        restarts: u32,
        /// The budget's window.
        window: std::time::Duration,
    },
}

/// What the scheduler knows about one task, for observability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    /// Its function's registered name.
    pub func: String,
    /// The processor it was last dispatched to.
    pub proc: Option<ProcId>,
    /// When it was submitted.
    pub submitted: Duration,
    /// When it was last dispatched.
    pub dispatched: Option<Duration>,
    /// When it last finished or failed.
    pub finished: Option<Duration>,
    /// How long its function last ran, as the worker measured it.
    pub run_ns: Option<u64>,
    /// How many times it was dispatched.
    pub attempts: u32,
}

/// Counts of tasks by state, from [`Scheduler::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tasks ever accepted by `submit`.
    pub submitted: u64,
    /// Tasks finished with a result (now).
    pub finished: u64,
    /// Tasks that failed.
    pub failed: u64,
    /// Tasks dispatched to a processor and not finished.
    pub running: u64,
    /// Tasks whose inputs are ready, waiting for placement (including parked ones and those
    /// held back while every processor that may run them is saturated).
    pub ready: u64,
    /// Tasks waiting for inputs.
    pub waiting: u64,
    /// Tasks whose full record (arguments, dependency lists) is still in memory.
    pub live: u64,
    /// Task records looked at, in all, to find what lost workers ran or held (the tasks
    /// dispatched to each and the results each held a copy of; never a scan of every task).
    pub recovery_examined: u64,
    /// Placements tried, in all: one per dispatch, park or failure for want of a processor,
    /// plus one per held-back queue that was retried and still found no room (held-back
    /// tasks are not looked at one by one on every event).
    pub placements: u64,
}
