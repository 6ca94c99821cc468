//! The task table: one flat record per task in a slab indexed by `u32`, the id → index map,
//! the task states and their counters, and the interned function names.
//!
//! Records are never removed (an index stays valid for the scheduler's life); what is
//! variable-sized lives in [`Spec`] and is freed once the task cannot be needed any more.

use crate::edges::Edges;
use crate::hash::FxMap;
use dagger_core::{Arg, TaskId, WorkerId};
use std::borrow::Cow;
use std::ops::{Index, IndexMut};
use std::time::Duration;

/// "No time recorded".
pub(crate) const NONE: u64 = u64::MAX;

/// `Task::loss_retries` of a task whose options leave the budget to the default.
pub(crate) const LOSS_BUDGET_UNSET: u8 = u8::MAX;
/// The largest loss budget a task keeps (`loss_reruns` saturates at `u8::MAX`).
pub(crate) const MAX_LOSS_BUDGET: u32 = u8::MAX as u32 - 1;

/// The stored form of `Options::loss_retries`.
pub(crate) fn loss_retries_of(options: Option<u32>) -> u8 {
    options.map_or(LOSS_BUDGET_UNSET, |n| n.min(MAX_LOSS_BUDGET) as u8)
}

bitflags::bitflags! {
    /// Flags of [`Task::flags`] (one byte of the record).
    #[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
    pub(crate) struct TaskFlags: u8 {
        /// Its scope pins it to one worker: it may be dispatched once its inputs are
        /// dispatched, before they exist.
        const EARLY = 1;
        /// The client released its handle.
        const CLIENT_RELEASED = 2;
        /// The client's completion slot was answered.
        const COMPLETED = 4;
        /// Freed for good: no longer needed, not even to recompute a lost result.
        const DEAD = 8;
        /// `holder` is valid (more holders, if any, are listed in the data directory's
        /// replicas).
        const HELD = 16;
        /// The scheduler keeps a copy of the result (in the data directory's `inline`).
        const INLINE = 32;
        /// It is suspected of crashing workers: its `RunTask` asks the worker to report
        /// when it starts (`RunTask::watch`).
        const WATCH = 64;
        /// Its scope does not pin it, but it was dispatched ahead of its inputs, to the
        /// worker running every one of them that was unfinished (see
        /// [`Config::dispatch_ahead`](crate::Config::dispatch_ahead)). Set only while it
        /// is dispatched or over; cleared when it is queued again.
        const AHEAD = 128;
    }
}

/// Where a task is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    Waiting,
    Ready,
    Dispatched,
    Finished,
    Failed,
}

impl State {
    pub(crate) fn terminal(self) -> bool {
        matches!(self, State::Finished | State::Failed)
    }
}

/// Whether a dependency in `state` lets a dependent (early or not) be dispatched.
#[inline]
pub(crate) fn satisfies(early: bool, state: State) -> bool {
    match state {
        State::Finished => true,
        State::Dispatched => early,
        _ => false,
    }
}

/// The flat per-task record. Everything variable-sized lives in `spec`, which is freed
/// once the task can no longer be needed.
pub(crate) struct Task {
    pub(crate) id: TaskId,
    pub(crate) est_ns: u64,
    pub(crate) submitted_ns: u64,
    pub(crate) dispatched_ns: u64,
    pub(crate) finished_ns: u64,
    pub(crate) run_ns: u64,
    /// Encoded size of the result (0 until known).
    pub(crate) size: u64,
    /// A worker holding the result (see `HELD`).
    pub(crate) holder: WorkerId,
    pub(crate) func: u32,
    pub(crate) scope: u32,
    pub(crate) priority: i32,
    pub(crate) retries_left: u32,
    pub(crate) attempts: u32,
    /// Shared by state (the states never overlap, and the record has no room for three
    /// fields):
    /// * while `Waiting`/`Ready`: the dependencies not yet satisfied;
    /// * while `Dispatched`: its position in its processor slot's list of running tasks
    ///   (`Slot::running`);
    /// * while `HELD` (only ever `Finished`): its position in its first holder's list of
    ///   held results (`DataDir::held_by`).
    pub(crate) link: u32,
    /// Dependents not finished or failed (they need this result).
    pub(crate) consumers: u32,
    /// Dependents whose record is not freed (they may need this task's lineage).
    pub(crate) live_dependents: u32,
    /// Dispatched, unfinished tasks that were told to fetch this result from a worker.
    pub(crate) pending_fetch: u32,
    /// The processor it was last dispatched to, as its slot in the processor table (slots
    /// are never reused for another processor); valid once `dispatched_ns` is set.
    pub(crate) slot: u32,
    pub(crate) loss_reruns: u8,
    /// Its own budget of re-runs after losses (`Options::loss_retries`, at most
    /// [`MAX_LOSS_BUDGET`]), or [`LOSS_BUDGET_UNSET`] for the configured default.
    pub(crate) loss_retries: u8,
    pub(crate) state: State,
    pub(crate) flags: TaskFlags,
    /// The scheduler's copy of the result when it keeps one (`INLINE`) of at most
    /// [`SMALL_ARG`] bytes; [`SmallArg::ABSENT`] otherwise (a longer copy is in the data
    /// directory's `inline` map). In the record, the copy costs no allocation, and adding
    /// or dropping it touches no memory the task's own bookkeeping does not.
    pub(crate) small_result: SmallArg,
    pub(crate) spec: Option<Box<Spec>>,
}

// The record is what every task costs for the scheduler's life: keep it at 128 bytes or
// less (a million tasks in about 122 MiB).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Task>() <= 128);
// The flags take one byte, as the `u8` they replace did.
const _: () = assert!(std::mem::size_of::<TaskFlags>() == 1);

/// The variable-sized part of a task: its arguments and graph edges (its lineage).
pub(crate) struct Spec {
    pub(crate) args: Args,
    /// Unique dependencies, by index (sorted).
    pub(crate) deps: Edges,
    /// Unique dependents, by index (up to three without an allocation of their own).
    pub(crate) dependents: Edges,
}

// Every task's spec lives as long as its lineage may be needed (a whole graph, until its
// roots are released): keep it in a 64-byte allocation (glibc's chunk for up to 56 bytes).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Spec>() <= 56);

/// A task's arguments, kept in the form that costs least: every task of a graph keeps them
/// as long as its lineage may be needed, and most tasks of a large graph take either their
/// inputs' results only (a reduction) or one small value (a leaf).
pub(crate) enum Args {
    /// Every argument is a dependency, and they are the task's `deps`, in that order (each
    /// input once, in the order of its index): nothing to keep.
    Deps,
    /// One plain value of at most [`SMALL_ARG`] bytes, inline.
    Small(SmallArg),
    /// Any other arguments, as submitted.
    List(Vec<Arg>),
}

/// The most bytes of an [`Args::Small`] value.
pub(crate) const SMALL_ARG: usize = 15;

/// An encoded value of at most [`SMALL_ARG`] bytes.
pub(crate) struct SmallArg {
    len: u8,
    bytes: [u8; SMALL_ARG],
}

impl SmallArg {
    /// No value (a length no value has).
    pub(crate) const ABSENT: SmallArg = SmallArg {
        len: u8::MAX,
        bytes: [0; SMALL_ARG],
    };

    /// Whether it holds a value (it is not [`SmallArg::ABSENT`]).
    #[inline]
    pub(crate) fn is_present(&self) -> bool {
        self.len != u8::MAX
    }

    /// `v` inline, if it is short enough.
    pub(crate) fn new(v: &[u8]) -> Option<Self> {
        let mut bytes = [0; SMALL_ARG];
        bytes.get_mut(..v.len())?.copy_from_slice(v);
        Some(Self {
            len: v.len() as u8,
            bytes,
        })
    }

    /// The value's bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len as usize).unwrap_or(&[])
    }
}

impl Args {
    /// The compact form of `args`, whose dependencies are at `deps` (in argument order,
    /// before sorting).
    pub(crate) fn new(args: Vec<Arg>, deps: &[u32]) -> Self {
        if args.len() == deps.len()
            && deps.windows(2).all(|w| w[0] < w[1])
            && args.iter().all(|a| matches!(a, Arg::Task(_)))
        {
            return Args::Deps;
        }
        if let [Arg::Value(v)] = args.as_slice() {
            if let Some(small) = SmallArg::new(v) {
                return Args::Small(small);
            }
        }
        Args::List(args)
    }
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Args>() == 24);

/// Number of tasks per state, and of live records.
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) submitted: u64,
    pub(crate) waiting: u64,
    pub(crate) ready: u64,
    pub(crate) running: u64,
    pub(crate) finished: u64,
    pub(crate) failed: u64,
    pub(crate) live: u64,
}

impl Counts {
    pub(crate) fn slot(&mut self, s: State) -> &mut u64 {
        match s {
            State::Waiting => &mut self.waiting,
            State::Ready => &mut self.ready,
            State::Dispatched => &mut self.running,
            State::Finished => &mut self.finished,
            State::Failed => &mut self.failed,
        }
    }
}

/// The id → index map of the task table. A client numbers its tasks in the order it
/// submits them, so ids mostly arrive as runs of consecutive ids at consecutive indices:
/// each run is kept as one entry (16 bytes for a whole graph, where a hash map costs
/// about 36 bytes a task with its spare capacity), found by a binary search; an id that
/// arrives out of order (below the end of the last run) goes to a hash map.
#[derive(Default)]
struct IdIndex {
    /// In increasing order of id, not overlapping.
    runs: Vec<Run>,
    /// Ids that came after a greater one.
    other: FxMap<TaskId, u32>,
}

/// Ids `first .. first + len` at indices `index .. index + len`.
#[derive(Clone, Copy)]
struct Run {
    first: u64,
    index: u32,
    len: u32,
}

impl Run {
    /// The first id after the run.
    fn end(&self) -> u64 {
        self.first + u64::from(self.len)
    }
}

impl IdIndex {
    /// Records `id` at index `i` (neither known yet).
    fn insert(&mut self, id: TaskId, i: u32) {
        match self.runs.last_mut() {
            Some(last) if id.0 == last.end() && i == last.index + last.len => last.len += 1,
            Some(last) if id.0 < last.end() => {
                self.other.insert(id, i);
            }
            _ => self.runs.push(Run {
                first: id.0,
                index: i,
                len: 1,
            }),
        }
    }

    /// The index of `id`, if it was recorded.
    #[inline]
    fn get(&self, id: TaskId) -> Option<u32> {
        let k = self.runs.partition_point(|r| r.first <= id.0);
        if let Some(r) = k.checked_sub(1).map(|k| &self.runs[k]) {
            if id.0 < r.end() {
                return Some(r.index + (id.0 - r.first) as u32);
            }
        }
        if self.other.is_empty() {
            return None;
        }
        self.other.get(&id).copied()
    }
}

/// The slab of task records and what is interned alongside it.
pub(crate) struct TaskTable {
    tasks: Vec<Task>,
    index: IdIndex,
    /// Function names by id; a name submitted as `Cow::Borrowed` stays borrowed, so
    /// copying it into a `RunTask` costs nothing.
    funcs: Vec<Cow<'static, str>>,
    func_ids: FxMap<Cow<'static, str>, u32>,
    /// The function interned last (an index into `funcs`; out of range while there is
    /// none).
    last_func: u32,
    pub(crate) counts: Counts,
}

impl Default for TaskTable {
    fn default() -> Self {
        Self {
            tasks: Vec::new(),
            index: IdIndex::default(),
            funcs: Vec::new(),
            func_ids: FxMap::default(),
            last_func: u32::MAX,
            counts: Counts::default(),
        }
    }
}

impl TaskTable {
    /// The number of records (every task ever accepted).
    pub(crate) fn len(&self) -> u32 {
        self.tasks.len() as u32
    }

    /// The index of a task, if it was ever accepted.
    #[inline]
    pub(crate) fn get(&self, id: &TaskId) -> Option<u32> {
        self.index.get(*id)
    }

    /// Whether a task id is known.
    pub(crate) fn contains(&self, id: &TaskId) -> bool {
        self.index.get(*id).is_some()
    }

    /// Every record with its index.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Task)> {
        self.tasks.iter().enumerate().map(|(i, t)| (i as u32, t))
    }

    /// Makes room for `n` more records.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.tasks.reserve(n);
    }

    /// Appends a record; returns its index.
    pub(crate) fn push(&mut self, task: Task) -> u32 {
        let i = self.tasks.len() as u32;
        self.index.insert(task.id, i);
        self.tasks.push(task);
        i
    }

    /// The id of a function name, interning it on first sight; `new_func` is true then.
    pub(crate) fn intern_func(&mut self, name: Cow<'static, str>) -> (u32, bool) {
        // Tasks of a batch mostly call the same function: compare with the last one before
        // hashing.
        if let Some(last) = self.funcs.get(self.last_func as usize) {
            let (a, b) = (last.as_ref(), name.as_ref());
            if std::ptr::eq(a, b) || a == b {
                return (self.last_func, false);
            }
        }
        if let Some(&f) = self.func_ids.get(name.as_ref()) {
            self.last_func = f;
            return (f, false);
        }
        let f = self.funcs.len() as u32;
        self.funcs.push(name.clone());
        self.func_ids.insert(name, f);
        self.last_func = f;
        (f, true)
    }

    /// The name of an interned function.
    pub(crate) fn func_name(&self, f: u32) -> &Cow<'static, str> {
        &self.funcs[f as usize]
    }

    /// A copy of task `i`'s dependencies (empty once its record is freed; no allocation
    /// for up to three).
    pub(crate) fn deps_of(&self, i: u32) -> Edges {
        self.tasks[i as usize]
            .spec
            .as_ref()
            .map(|s| s.deps.clone())
            .unwrap_or_default()
    }
}

impl Task {
    /// Its own loss budget, if its options set one.
    pub(crate) fn own_loss_retries(&self) -> Option<u32> {
        (self.loss_retries != LOSS_BUDGET_UNSET).then_some(u32::from(self.loss_retries))
    }
}

impl Index<u32> for TaskTable {
    type Output = Task;
    #[inline]
    fn index(&self, i: u32) -> &Task {
        &self.tasks[i as usize]
    }
}

impl IndexMut<u32> for TaskTable {
    #[inline]
    fn index_mut(&mut self, i: u32) -> &mut Task {
        &mut self.tasks[i as usize]
    }
}

#[inline]
pub(crate) fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128 - 1) as u64
}

pub(crate) fn opt_time(v: u64) -> Option<Duration> {
    (v != NONE).then(|| Duration::from_nanos(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_index_finds_ids_in_runs_and_out_of_order() {
        let mut ix = IdIndex::default();
        // A run, a gap, a second run, then ids below the end (another client's), then
        // more of the second run at indices that no longer follow it.
        let order: Vec<u64> = (10..20)
            .chain(30..35)
            .chain([25, 5, 20])
            .chain(35..38)
            .collect();
        for (i, &id) in order.iter().enumerate() {
            ix.insert(TaskId(id), i as u32);
        }
        assert_eq!(
            ix.runs.len(),
            3,
            "10..20, 30..35, and 35..38 at other indices"
        );
        assert_eq!(ix.other.len(), 3);
        for (i, &id) in order.iter().enumerate() {
            assert_eq!(ix.get(TaskId(id)), Some(i as u32), "{id}");
        }
        for id in [0, 4, 6, 9, 21, 24, 26, 29, 38, u64::MAX] {
            assert_eq!(ix.get(TaskId(id)), None, "{id}");
        }
    }
}
