use crate::ids::{TaskId, WorkerId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

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
        reason: String,
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
    #[error("task {task}: input could not be moved: {message}")]
    MoveFailed {
        /// The task.
        task: TaskId,
        /// What went wrong.
        message: String,
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
