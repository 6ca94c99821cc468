use crate::ids::{Incarnation, ProcId, TaskId, WorkerId};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;
use thiserror::Error;

/// Why a worker was declared lost. Plain data: it crosses processes inside events and task
/// errors, and tests match on it instead of parsing text.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum LostReason {
    /// Its link closed (the peer closed it, the connection broke, or the transport timed
    /// it out).
    #[error("its link closed: {detail}")]
    LinkClosed {
        /// What the transport said.
        detail: String,
    },
    /// Its OS process exited, as seen by the process that started it.
    #[error("its process {pid} exited ({exit})")]
    ProcessExited {
        /// The process id.
        pid: u32,
        /// How it ended.
        exit: ExitCause,
    },
    /// Nothing was heard from it for longer than the heartbeat timeout (a paused or hung
    /// process, or a cut link that did not close).
    #[error("silent for longer than the heartbeat timeout of {timeout:?}")]
    Silent {
        /// The timeout that passed.
        timeout: Duration,
    },
    /// It sent a frame that does not decode as a message.
    #[error("it sent a malformed frame: {detail}")]
    MalformedFrame {
        /// What the decoder said.
        detail: String,
    },
    /// It sent a message the protocol does not allow at that point (a second join, say).
    #[error("it broke the protocol: {detail}")]
    ProtocolViolation {
        /// What it did.
        detail: String,
    },
    /// A newer incarnation of the same worker took its place; anything still heard from
    /// the old one is fenced off.
    #[error("fenced: replaced by incarnation {by}")]
    Fenced {
        /// The incarnation that replaced it.
        by: Incarnation,
    },
    /// The fault policy excluded it: tasks that failed there succeeded elsewhere, from
    /// `strikes` distinct tasks within the policy's window.
    #[error("excluded after {strikes} tasks failed there and succeeded elsewhere")]
    Excluded {
        /// The strikes that excluded it.
        strikes: u32,
    },
    /// The user removed it from the pool: its drain finished (it held nothing the graph
    /// still needed) or its drain deadline passed (what it still ran is run again
    /// elsewhere).
    #[error("removed from the pool ({detail})")]
    Removed {
        /// How its drain ended.
        detail: String,
    },
}

impl LostReason {
    /// A short name of the kind of loss (`"link_closed"`, `"process_exited"`, ...), for logs
    /// and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LostReason::LinkClosed { .. } => "link_closed",
            LostReason::ProcessExited { .. } => "process_exited",
            LostReason::Silent { .. } => "silent",
            LostReason::MalformedFrame { .. } => "malformed_frame",
            LostReason::ProtocolViolation { .. } => "protocol_violation",
            LostReason::Fenced { .. } => "fenced",
            LostReason::Excluded { .. } => "excluded",
            LostReason::Removed { .. } => "removed",
        }
    }

    /// Whether the loss may be a crash of the worker's process (it exited, or its link
    /// closed, which is how the death of a remote process is seen): the losses that count
    /// against the tasks running there when attributing crashes. A silent (perhaps
    /// paused) worker, a fenced or excluded one and a protocol error are not crashes.
    pub fn is_crash(&self) -> bool {
        matches!(
            self,
            LostReason::LinkClosed { .. } | LostReason::ProcessExited { .. }
        )
    }
}

/// How an OS process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ExitCause {
    /// It exited with this status code.
    Code(i32),
    /// It was killed by this signal number (9 for SIGKILL, the OOM killer's signal).
    Signal(i32),
    /// The status could not be read.
    Unknown,
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitCause::Code(c) => write!(f, "exit status {c}"),
            ExitCause::Signal(s) => write!(f, "killed by signal {s}"),
            ExitCause::Unknown => f.write_str("status unknown"),
        }
    }
}

/// Why an input of a task (or a result the user fetched) could not be moved where it was
/// needed. [`MoveFailure::is_transient`] tells the causes that another attempt may cure (the
/// peer left) from those that would fail the same way again (the value is too large).
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MoveFailure {
    /// The worker that held (or was producing) the value left, or its link closed, before
    /// sending it.
    #[error("{worker} left before sending it")]
    PeerLeft {
        /// The worker that was asked.
        worker: WorkerId,
    },
    /// The worker holding the value could not be reached.
    #[error("{worker} cannot be reached: {detail}")]
    Unreachable {
        /// The worker.
        worker: WorkerId,
        /// What the transport said.
        detail: String,
    },
    /// A same-host shared-memory object could not be created, mapped or read.
    #[error("shared memory failed: {detail}")]
    SharedMemory {
        /// What the system said.
        detail: String,
    },
    /// No live worker holds the value (its copies were lost; it may be recomputed).
    #[error("no live worker holds it")]
    NoHolder,
    /// The worker asked does not hold it (and, asked again for a while, still did not).
    #[error("{worker} does not hold it")]
    NotHeld {
        /// The worker that was asked.
        worker: WorkerId,
    },
    /// The processor dropped the job without running it (it was shut down).
    #[error("its processor dropped it without running it")]
    Dropped,
    /// The task that produces the value failed where it ran.
    #[error("its producing task failed")]
    SourceFailed,
    /// The value does not fit in one message of the transport.
    #[error("{bytes} bytes do not fit in one message of at most {limit} bytes")]
    TooLarge {
        /// The encoded size.
        bytes: u64,
        /// The transport's limit.
        limit: u64,
    },
    /// A registered move function refused or failed to convert the value for the target
    /// processor.
    #[error("the move to the processor failed: {message}")]
    Conversion {
        /// What the move function said.
        message: String,
    },
    /// The worker has no processor with the index the task was placed on.
    #[error("the worker has no processor {proc}")]
    NoSuchProcessor {
        /// The processor asked for.
        proc: ProcId,
    },
    /// A device had no room for an input even after every unused value there was evicted
    /// to host memory (the task may run elsewhere, or later, when room is free).
    #[error("{memory} has no room for {requested} bytes ({available} of {capacity} free)")]
    DeviceFull {
        /// The device's memory space, e.g. `opencl:0`.
        memory: String,
        /// Bytes asked for.
        requested: u64,
        /// Bytes free then.
        available: u64,
        /// The device's capacity for the runtime.
        capacity: u64,
    },
}

impl MoveFailure {
    /// Whether another attempt (elsewhere, or after a recomputation) may succeed. Transient
    /// failures are retried by the scheduler within the task's budget; the others fail the
    /// task at once.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            MoveFailure::PeerLeft { .. }
                | MoveFailure::Unreachable { .. }
                | MoveFailure::SharedMemory { .. }
                | MoveFailure::NoHolder
                | MoveFailure::NotHeld { .. }
                | MoveFailure::Dropped
                | MoveFailure::SourceFailed
                | MoveFailure::DeviceFull { .. }
        )
    }
}

/// Why a task has no result. Returned by `fetch`/`wait`; it is plain data so that it can
/// cross processes and be written into a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum TaskError {
    /// The task's function panicked.
    #[error("task {task} ({func}) panicked: {message}")]
    Panicked {
        /// The task.
        task: TaskId,
        /// Its function's registered name.
        func: String,
        /// The panic payload, as text.
        message: String,
    },
    /// No function of this name is registered in the process that was asked to run it.
    #[error("task {task}: no function named `{func}` is registered on {worker}")]
    UnknownFunction {
        /// The task.
        task: TaskId,
        /// The name that was not found.
        func: String,
        /// The process that did not know it.
        worker: WorkerId,
    },
    /// The task's arguments could not be decoded as the function's parameter types.
    #[error("task {task} ({func}): arguments do not match the function's parameters: {message}")]
    BadArguments {
        /// The task.
        task: TaskId,
        /// Its function.
        func: String,
        /// What the decoder said.
        message: String,
    },
    /// The result was fetched as a type it cannot be decoded as.
    #[error("task {task}: result is a `{found}`, fetched as `{expected}`")]
    TypeMismatch {
        /// The task.
        task: TaskId,
        /// The type asked for.
        expected: String,
        /// The type the function returns.
        found: String,
    },
    /// A task this one depends on failed, so this one never ran.
    #[error("task {task} did not run: its input {dependency} failed: {cause}")]
    DependencyFailed {
        /// The task that did not run.
        task: TaskId,
        /// The input that failed.
        dependency: TaskId,
        /// Why it failed.
        #[serde(deserialize_with = "nested_cause")]
        cause: Box<TaskError>,
    },
    /// The worker running the task was lost and the retry budget is spent.
    #[error("task {task}: worker {worker} was lost ({reason}) and no retries are left")]
    WorkerLost {
        /// The task.
        task: TaskId,
        /// The lost worker.
        worker: WorkerId,
        /// Why it was declared lost.
        reason: LostReason,
    },
    /// The task is a poison task: it was running in distinct worker processes that
    /// crashed while it ran, so it is failed instead of being run again.
    #[error("task {task} ({func}) is poisoned: it killed {} worker processes", crashes.len())]
    Poisoned {
        /// The task.
        task: TaskId,
        /// Its function's registered name.
        func: String,
        /// The workers that crashed while it ran, and how each was lost.
        crashes: Vec<(WorkerId, LostReason)>,
    },
    /// No processor in the pool is admitted by the task's scope.
    #[error("task {task}: no processor matches scope {scope}")]
    NoProcessor {
        /// The task.
        task: TaskId,
        /// The scope, as text.
        scope: String,
    },
    /// An input of the task could not be moved to its processor.
    #[error("task {task}: a value could not be moved: {cause}")]
    MoveFailed {
        /// The task (for a fetch, the task whose result was fetched).
        task: TaskId,
        /// Why; [`MoveFailure::is_transient`] says whether a retry may help.
        cause: MoveFailure,
    },
    /// The scheduler refused the graph the task was submitted with.
    #[error("task {task} was refused: {error}")]
    Rejected {
        /// The task.
        task: TaskId,
        /// Why the graph was refused.
        error: GraphError,
    },
    /// The context shut down before the task finished.
    #[error("task {task}: the context was shut down")]
    Shutdown {
        /// The task.
        task: TaskId,
    },
}

/// The deepest chain of [`TaskError::DependencyFailed`] causes that decodes. The
/// scheduler names the root failure directly, so real chains are two deep; a peer's deeper
/// one would make the decoder recurse once per level and exhaust its stack.
pub const MAX_CAUSE_DEPTH: u32 = 32;

thread_local! {
    /// How many `DependencyFailed` causes the decoder of this thread is inside.
    static CAUSE_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Decodes the cause of a `DependencyFailed`, refusing chains deeper than
/// [`MAX_CAUSE_DEPTH`].
fn nested_cause<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Box<TaskError>, D::Error> {
    /// Leaves one level when dropped, also when decoding fails.
    struct Level;
    impl Drop for Level {
        fn drop(&mut self) {
            CAUSE_DEPTH.with(|c| c.set(c.get().saturating_sub(1)));
        }
    }
    let depth = CAUSE_DEPTH.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    let _level = Level;
    if depth > MAX_CAUSE_DEPTH {
        return Err(serde::de::Error::custom(format_args!(
            "failure causes nested deeper than {MAX_CAUSE_DEPTH}"
        )));
    }
    TaskError::deserialize(d).map(Box::new)
}

impl TaskError {
    /// The task this error is about.
    pub fn task(&self) -> TaskId {
        match self {
            TaskError::Panicked { task, .. }
            | TaskError::UnknownFunction { task, .. }
            | TaskError::BadArguments { task, .. }
            | TaskError::TypeMismatch { task, .. }
            | TaskError::DependencyFailed { task, .. }
            | TaskError::WorkerLost { task, .. }
            | TaskError::Poisoned { task, .. }
            | TaskError::NoProcessor { task, .. }
            | TaskError::MoveFailed { task, .. }
            | TaskError::Rejected { task, .. }
            | TaskError::Shutdown { task } => *task,
        }
    }
}

/// A graph that cannot be accepted as submitted.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum GraphError {
    /// The tasks depend on each other in a cycle.
    #[error("the graph has a cycle through {task}")]
    Cycle {
        /// One task on the cycle.
        task: TaskId,
    },
    /// A task depends on a task the scheduler never saw.
    #[error("task {task} depends on unknown task {dependency}")]
    UnknownDependency {
        /// The task.
        task: TaskId,
        /// The id that is not known.
        dependency: TaskId,
    },
    /// A task id was submitted twice.
    #[error("task {task} was submitted twice")]
    DuplicateTask {
        /// The repeated id.
        task: TaskId,
    },
}

/// A frame that could not be decoded or is not allowed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum WireError {
    /// The frame is larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its announced length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The bytes are not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: ours {ours}, peer's {theirs}")]
    Version {
        /// Our version.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
}
