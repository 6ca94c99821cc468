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
        self.args.iter().filter_map(|a| match a {
            Arg::Task(t) => Some(*t),
            Arg::Value(_) => None,
        })
    }
}
