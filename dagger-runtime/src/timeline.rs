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
//! clocks differ. The estimate only gets better as batches arrive; times are aligned when
//! the timeline is read, with each worker's latest estimate, so all spans of one worker
//! move together.
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

/// What the driver core keeps while recording: raw spans in the worker's terms, completed
/// from the scheduler's records when a [`Timeline`] is asked for.
#[derive(Default)]
pub(crate) struct Recorder {
    /// Every accepted report, in order (a re-run's report comes after the earlier one;
    /// only the last of a task is kept when the timeline is read).
    tasks: Vec<RawTask>,
    /// The inputs of each submitted task that has any, recorded at submission.
    inputs: dagger_core::hash::IdHashMap<TaskId, Vec<TaskId>>,
    /// Chunks received, on the receiver's clock.
    moves: Vec<(WorkerId, dagger_core::wire::MoveDone)>,
    /// The latest clock offset of each worker that reported (kept after it left).
    skews: dagger_core::hash::IdHashMap<WorkerId, ClockSkew>,
}

/// A task's run as its worker reported it, on the worker's clock: aligned when the
/// timeline is read, with the worker's latest offset, so that one worker's spans are
/// shifted alike and never overlap by an artefact of the alignment.
struct RawTask {
    task: TaskId,
    worker: WorkerId,
    proc: ProcId,
    /// The dispatch this run answers, and the attempts then.
    dispatched: Duration,
    attempts: u32,
    started_ns: u64,
    run_ns: u64,
    bytes: u64,
    error: Option<String>,
}

/// The offset of a worker's clock from the driver's: the smallest `arrival − sent` seen,
/// in nanoseconds (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ClockSkew(Option<i128>);

impl ClockSkew {
    /// A batch sent at `sent_ns` (the worker's clock) arrived at `now` (the driver's).
    pub(crate) fn observe(&mut self, now: Duration, sent_ns: u64) {
        let d = now.as_nanos() as i128 - i128::from(sent_ns);
        self.0 = Some(self.0.map_or(d, |o| o.min(d)));
    }

    /// `worker_ns` on the driver's clock (never before its start).
    pub(crate) fn align(&self, worker_ns: u64) -> Duration {
        let t = i128::from(worker_ns) + self.0.unwrap_or(0);
        Duration::from_nanos(u64::try_from(t.max(0)).unwrap_or(u64::MAX))
    }
}

impl Recorder {
    /// Notes the inputs of a submitted task.
    pub(crate) fn submitted(&mut self, spec: &dagger_core::TaskSpec) {
        let mut inputs: Vec<TaskId> = Vec::new();
        for d in spec.deps() {
            if !inputs.contains(&d) {
                inputs.push(d);
            }
        }
        if !inputs.is_empty() {
            self.inputs.insert(spec.id, inputs);
        }
    }

    /// A batch of `worker`'s, sent at `sent_ns` on its clock, arrived at `now`.
    pub(crate) fn batch(&mut self, worker: WorkerId, now: Duration, sent_ns: u64) {
        self.skews.entry(worker).or_default().observe(now, sent_ns);
    }

    /// Notes a task's run on `worker`, reported by `done`, answering the dispatch at
    /// `dispatched` (the task's `attempts`-th).
    pub(crate) fn task_done(
        &mut self,
        worker: WorkerId,
        done: &dagger_core::wire::TaskDone,
        (dispatched, attempts): (Duration, u32),
    ) {
        use dagger_core::wire::Outcome;
        let (bytes, error) = match &done.outcome {
            Outcome::Value(v) => (v.len() as u64, None),
            Outcome::Stored { size } => (*size, None),
            Outcome::Failed(e) => (0, Some(e.to_string())),
        };
        let raw = RawTask {
            task: done.task,
            worker,
            proc: done.proc,
            dispatched,
            attempts,
            started_ns: done.started_ns,
            run_ns: done.run_ns,
            bytes,
            error,
        };
        self.tasks.push(raw);
    }

    /// Notes a chunk `to` received, reported by `m`.
    pub(crate) fn moved(&mut self, to: WorkerId, m: dagger_core::wire::MoveDone) {
        self.moves.push((to, m));
    }

    fn skew(&self, worker: WorkerId) -> ClockSkew {
        self.skews.get(&worker).copied().unwrap_or_default()
    }

    /// The timeline so far, completed from the scheduler (function names, submission and
    /// dispatch times, attempts) and the topology (processor labels).
    pub(crate) fn timeline(&self, sched: &dagger_sched::Scheduler) -> Timeline {
        let mut processors: Vec<(ProcId, String)> = Vec::new();
        let mut seen: std::collections::HashSet<ProcId> = std::collections::HashSet::new();
        // The last report of each task, in the order of each task's first report.
        let mut last: dagger_core::hash::IdHashMap<TaskId, usize> = Default::default();
        let mut order: Vec<TaskId> = Vec::new();
        for (k, r) in self.tasks.iter().enumerate() {
            if last.insert(r.task, k).is_none() {
                order.push(r.task);
            }
        }
        let mut tasks = Vec::with_capacity(order.len());
        for r in order
            .iter()
            .filter_map(|t| last.get(t))
            .map(|&k| &self.tasks[k])
        {
            if seen.insert(r.proc) {
                let label = sched
                    .topology()
                    .proc(r.proc)
                    .map_or_else(|| r.proc.to_string(), |p| p.label.clone());
                processors.push((r.proc, label));
            }
            tasks.push(self.task_span(r, sched));
        }
        let moves = self
            .moves
            .iter()
            .map(|(to, m)| {
                let skew = self.skew(*to);
                MoveSpan {
                    chunk: m.chunk,
                    from: m.from,
                    to: *to,
                    bytes: m.bytes,
                    shared_memory: m.shared_memory,
                    started: skew.align(m.started_ns),
                    finished: skew.align(m.finished_ns),
                }
            })
            .collect();
        Timeline {
            tasks,
            moves,
            processors,
        }
    }
    /// The spans of the reports from position `from` of their order on, every report
    /// (a re-run's after the earlier one's), and how many reports there are in all: O(spans
    /// returned).
    pub(crate) fn tasks_since(
        &self,
        from: usize,
        sched: &dagger_sched::Scheduler,
    ) -> (Vec<TaskSpan>, usize) {
        let spans = self
            .tasks
            .get(from..)
            .unwrap_or_default()
            .iter()
            .map(|r| self.task_span(r, sched))
            .collect();
        (spans, self.tasks.len())
    }

    /// One report as a span, completed from the scheduler's record of its task.
    fn task_span(&self, r: &RawTask, sched: &dagger_sched::Scheduler) -> TaskSpan {
        let skew = self.skew(r.worker);
        let (func, queued) = match sched.task_info(r.task) {
            Some(i) => (i.func, i.submitted),
            None => (String::new(), r.dispatched),
        };
        // No clamping: the alignment itself keeps a start after the dispatch (see the
        // module documentation), and only reports the scheduler accepted (of the attempt
        // dispatched last) are recorded.
        TaskSpan {
            task: r.task,
            func,
            worker: r.worker,
            proc: r.proc,
            attempts: r.attempts,
            queued,
            dispatched: r.dispatched,
            started: skew.align(r.started_ns),
            finished: skew.align(r.started_ns.saturating_add(r.run_ns)),
            bytes: r.bytes,
            error: r.error.clone(),
            inputs: self.inputs.get(&r.task).cloned().unwrap_or_default(),
        }
    }
}
