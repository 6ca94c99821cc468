use crate::ids::TaskId;
use crate::scope::Options;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// One argument of a task: a value encoded with postcard, or the result of another task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Arg {
    /// A plain value, already encoded.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The result of another task of the same graph (a dependency).
    Task(TaskId),
    /// A gathered argument: a parameter of type `Vec<T>` fed by several parts, each a
    /// value or a dependency of type `T`, in order. The function receives the parts'
    /// results as one `Vec<T>`.
    Gather(Vec<Part>),
}

/// One part of a gathered argument ([`Arg::Gather`]). Parts do not nest: a gather of
/// gathers is expressed by a task that gathers and a task that gathers its result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Part {
    /// A plain value, already encoded.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The result of another task of the same graph (a dependency).
    Task(TaskId),
}

impl Arg {
    /// The tasks this argument depends on, in order (may repeat).
    pub fn deps(&self) -> impl Iterator<Item = TaskId> + '_ {
        let (one, parts): (Option<TaskId>, &[Part]) = match self {
            Arg::Value(_) => (None, &[]),
            Arg::Task(t) => (Some(*t), &[]),
            Arg::Gather(parts) => (None, parts),
        };
        one.into_iter().chain(parts.iter().filter_map(|p| match p {
            Part::Task(t) => Some(*t),
            Part::Value(_) => None,
        }))
    }
}

/// A task as submitted to the scheduler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Its id; unique in the context, allocated by the submitter.
    pub id: TaskId,
    /// The registered name of its function: borrowed when it is a compile-time name (no
    /// allocation per task), owned when it was decoded or built at run time.
    pub func: Cow<'static, str>,
    /// Its arguments, in order.
    pub args: Vec<Arg>,
    /// Scope, retries, priority.
    pub options: Options,
}

impl TaskSpec {
    /// The tasks this one depends on, in argument order (may repeat).
    pub fn deps(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.args.iter().flat_map(Arg::deps)
    }
}

/// An unfinished task dispatched to a worker that was lost, as the scheduler knows it when
/// a fault policy judges it (the scheduler's `worker_lost_with`, the fault policy's
/// `on_lost`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostTask<'a> {
    /// The task.
    pub task: crate::TaskId,
    /// Its function's registered name.
    pub func: &'a str,
    /// How many times it already ran again after a loss (or a transient move failure);
    /// this loss not included.
    pub loss_reruns: u32,
    /// Its own loss budget (`Options::loss_retries`), if its options set one.
    pub loss_retries: Option<u32>,
}

/// What to do with an unfinished task of a lost worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossVerdict {
    /// Queue it again.
    Retry {
        /// The task is a suspect: ask the worker it runs on next to report when it starts
        /// (`RunTask::watch`).
        watch: bool,
    },
    /// Fail it (and its dependents, with `DependencyFailed`) with this error:
    /// `TaskError::Poisoned`, or `TaskError::WorkerLost` once the loss budget is spent.
    Fail(crate::TaskError),
}
