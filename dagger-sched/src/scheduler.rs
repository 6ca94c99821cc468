//! The scheduler state machine.

use crate::hash::{FxMap, FxSet};
use crate::{ClusterEvent, Command, Completion, Config, Stats, TaskInfo};
use dagger_core::wire::{Outcome, RunArg, RunTask, TaskDone, ToWorker};
use dagger_core::{
    Arg, ChunkId, GraphError, Incarnation, LostReason, ProcId, ProcKind, Scope, TaskError, TaskId,
    TaskSpec, WorkerId, WorkerInfo,
};
use dagger_proc::Topology;
use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// "No time recorded".
const NONE: u64 = u64::MAX;
/// Cost of an unreachable destination; small enough that sums do not overflow.
const UNREACHABLE: u64 = u64::MAX / 1024;
/// A task that lost its worker (or an input fetch) more often than this fails.
const MAX_LOSS_RERUNS: u8 = 3;

const EARLY: u8 = 1;
const CLIENT_RELEASED: u8 = 2;
const COMPLETED: u8 = 4;
const DEAD: u8 = 8;
/// `holder` is valid (more holders, if any, are listed in `replicas`).
const HELD: u8 = 16;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
enum State {
    Waiting,
    Ready,
    Dispatched,
    Finished,
    Failed,
}

impl State {
    fn terminal(self) -> bool {
        matches!(self, State::Finished | State::Failed)
    }
}

/// Whether a dependency in `state` lets a dependent (early or not) be dispatched.
#[inline]
fn satisfies(early: bool, state: State) -> bool {
    match state {
        State::Finished => true,
        State::Dispatched => early,
        _ => false,
    }
}

/// The flat per-task record. Everything variable-sized lives in `spec`, which is freed
/// once the task can no longer be needed.
struct Task {
    id: TaskId,
    proc: ProcId,
    est_ns: u64,
    submitted_ns: u64,
    dispatched_ns: u64,
    finished_ns: u64,
    run_ns: u64,
    /// Encoded size of the result (0 until known).
    size: u64,
    /// A worker holding the result (see `HELD`).
    holder: WorkerId,
    func: u32,
    scope: u32,
    priority: i32,
    retries_left: u32,
    attempts: u32,
    /// Dependencies not yet satisfied (while Waiting/Ready).
    unmet: u32,
    /// Dependents not finished or failed (they need this result).
    consumers: u32,
    /// Dependents whose record is not freed (they may need this task's lineage).
    live_dependents: u32,
    /// Dispatched, unfinished tasks that were told to fetch this result from a worker.
    pending_fetch: u32,
    /// Slot of `proc` in the processor table (valid while dispatched).
    slot: u32,
    loss_reruns: u8,
    state: State,
    flags: u8,
    spec: Option<Box<Spec>>,
}

struct Spec {
    args: Vec<Arg>,
    /// Unique dependencies, by index.
    deps: Vec<u32>,
    /// Unique dependents, by index.
    dependents: Vec<u32>,
    /// Dependencies this task was told to fetch as chunks at its current dispatch.
    fetching: Vec<u32>,
}

struct Slot {
    id: ProcId,
    kind: u32,
    alive: bool,
    queued_ns: u64,
}

struct ScopeEntry {
    scope: Scope,
    /// The single worker this scope confines tasks to, if any (early dispatch).
    early: bool,
    gen: u64,
    cands: Vec<u32>,
    any_admits: bool,
}

enum Placement {
    On { slot: u32, est: u64 },
    Park,
    NoProcessor,
}

#[derive(Default)]
struct Counts {
    submitted: u64,
    waiting: u64,
    ready: u64,
    running: u64,
    finished: u64,
    failed: u64,
    live: u64,
}

impl Counts {
    fn slot(&mut self, s: State) -> &mut u64 {
        match s {
            State::Waiting => &mut self.waiting,
            State::Ready => &mut self.ready,
            State::Dispatched => &mut self.running,
            State::Finished => &mut self.finished,
            State::Failed => &mut self.failed,
        }
    }
}

/// The scheduler: tasks, their placement, results and recovery, as a sans-I/O state
/// machine. See the crate documentation for the contract.
pub struct Scheduler {
    config: Config,
    topology: Topology,
    dirty: bool,
    gen: u64,
    now: Duration,

    tasks: Vec<Task>,
    index: FxMap<TaskId, u32>,
    /// Function names by id; a name submitted as `Cow::Borrowed` stays borrowed, so
    /// copying it into a `RunTask` costs nothing.
    funcs: Vec<Cow<'static, str>>,
    func_ids: FxMap<Cow<'static, str>, u32>,
    kinds: FxMap<ProcKind, u32>,
    scopes: Vec<ScopeEntry>,
    scope_ids: FxMap<Scope, u32>,
    slots: Vec<Slot>,
    slot_of: FxMap<ProcId, u32>,
    pool_has_procs: bool,
    /// Learned run time per function, per processor kind (0 = never measured).
    runtime: Vec<Vec<u64>>,
    /// Path cost from a worker's root to every slot, per size bucket.
    dist: FxMap<(WorkerId, u8), Vec<u64>>,
    draining: FxSet<WorkerId>,

    /// Ready tasks by priority, FIFO within one priority.
    ready: BTreeMap<i32, VecDeque<u32>>,
    parked: Vec<u32>,

    inline: FxMap<u32, Vec<u8>>,
    /// Full holder lists of results held by more than one worker.
    replicas: FxMap<u32, Vec<WorkerId>>,
    driver_present: bool,
    /// Network cost per size bucket, used when the driver is not in the topology.
    net_cost: Vec<u64>,
    errors: FxMap<u32, TaskError>,

    /// Run batches per worker, each at most `max_batch` long.
    runs: BTreeMap<WorkerId, Vec<Vec<RunTask>>>,
    releases: BTreeMap<WorkerId, Vec<ChunkId>>,
    out: VecDeque<Command>,
    counts: Counts,

    scratch_cost: Vec<u64>,
    scratch_min: Vec<u64>,
}

#[inline]
fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128 - 1) as u64
}

#[inline]
fn bucket(bytes: u64) -> u8 {
    (64 - bytes.leading_zeros()) as u8
}

#[inline]
fn bucket_bytes(b: u8) -> u64 {
    if b == 0 {
        0
    } else {
        1u64 << (b - 1)
    }
}

fn early_scope(scope: &Scope) -> bool {
    matches!(
        scope,
        Scope::Worker(_) | Scope::Proc(_) | Scope::WorkerKind(..)
    )
}

fn opt_time(v: u64) -> Option<Duration> {
    (v != NONE).then(|| Duration::from_nanos(v))
}

impl Scheduler {
    /// A scheduler with an empty pool and no tasks. Cheap.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            topology: Topology::new(),
            dirty: true,
            gen: 0,
            now: Duration::ZERO,
            tasks: Vec::new(),
            index: FxMap::default(),
            funcs: Vec::new(),
            func_ids: FxMap::default(),
            kinds: FxMap::default(),
            scopes: Vec::new(),
            scope_ids: FxMap::default(),
            slots: Vec::new(),
            slot_of: FxMap::default(),
            pool_has_procs: false,
            runtime: Vec::new(),
            dist: FxMap::default(),
            draining: FxSet::default(),
            ready: BTreeMap::new(),
            parked: Vec::new(),
            inline: FxMap::default(),
            replicas: FxMap::default(),
            driver_present: false,
            net_cost: Vec::new(),
            errors: FxMap::default(),
            runs: BTreeMap::new(),
            releases: BTreeMap::new(),
            out: VecDeque::new(),
            counts: Counts::default(),
            scratch_cost: Vec::new(),
            scratch_min: Vec::new(),
        }
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The pool's processors and the edges between them.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Mutable access to the topology, e.g. to add shortcut edges. Every cached path cost
    /// and candidate list is dropped (recomputed at the next placement), and tasks waiting
    /// for a processor are looked at again. Use [`Scheduler::worker_joined`] and
    /// [`Scheduler::worker_lost`] to change the pool, not this.
    pub fn topology_mut(&mut self) -> &mut Topology {
        self.dirty = true;
        self.unpark();
        &mut self.topology
    }

    /// The size in bytes of the flat per-task record every task keeps for the scheduler's
    /// life (its variable-sized parts are freed once the task cannot be needed any more).
    pub fn task_record_size() -> usize {
        std::mem::size_of::<Task>()
    }

    // ---------------------------------------------------------------- pool

    /// A worker joined (or re-joined with a new incarnation, which first loses the old
    /// one). Its processors are added to the topology and may receive ready tasks at the
    /// next [`Scheduler::poll_command`]. Emits `ClusterEvent::WorkerJoined`.
    pub fn worker_joined(&mut self, now: Duration, info: WorkerInfo) {
        self.now = now;
        let w = info.worker;
        if self.topology.worker(w).is_some() {
            let by = info.incarnation;
            self.worker_lost(now, w, LostReason::Fenced { by });
        }
        self.topology.add_worker(info);
        self.draining.remove(&w);
        self.dirty = true;
        self.unpark();
        self.out
            .push_back(Command::Event(ClusterEvent::WorkerJoined { worker: w }));
    }

    /// Marks a worker as accepting new work or not (draining). A worker that does not
    /// accept keeps running what it has and keeps its chunks; placement skips it.
    pub fn set_accepting(&mut self, worker: WorkerId, accepting: bool) {
        let changed = if accepting {
            self.draining.remove(&worker)
        } else {
            self.draining.insert(worker)
        };
        if changed {
            self.dirty = true;
            if accepting {
                self.unpark();
            }
        }
    }

    /// A worker is gone (its link closed or it stopped answering). It leaves the topology;
    /// later messages from it are ignored; its unfinished tasks are queued again (at most
    /// three times per task, then they fail with `TaskError::WorkerLost`); results whose
    /// only copy it held and that are still needed are recomputed from lineage. Emits
    /// `ClusterEvent::WorkerLost`. Costs O(tasks in memory). Unknown workers are ignored.
    pub fn worker_lost(&mut self, now: Duration, worker: WorkerId, reason: LostReason) {
        self.now = now;
        if self.topology.remove_worker(worker).is_none() {
            return;
        }
        self.dirty = true;
        self.draining.remove(&worker);
        self.runs.remove(&worker);
        self.releases.remove(&worker);

        // Copies held there are gone.
        let mut emptied = self.drop_holder(worker);

        // Tasks running there run again.
        let lost: Vec<u32> = (0..self.tasks.len() as u32)
            .filter(|&i| {
                let t = &self.tasks[i as usize];
                t.state == State::Dispatched && t.proc.worker == worker
            })
            .collect();
        for i in lost {
            let t = &mut self.tasks[i as usize];
            if t.state != State::Dispatched {
                continue;
            }
            t.loss_reruns = t.loss_reruns.saturating_add(1);
            if t.loss_reruns > MAX_LOSS_RERUNS {
                let err = TaskError::WorkerLost {
                    task: t.id,
                    worker,
                    reason: reason.clone(),
                };
                self.fail(i, err);
            } else {
                self.retry(i);
            }
        }

        // Needed results whose only copy was there are recomputed.
        emptied.sort_unstable();
        for i in emptied {
            let t = &self.tasks[i as usize];
            if t.state == State::Finished
                && !self.inline.contains_key(&i)
                && (t.consumers > 0 || t.flags & CLIENT_RELEASED == 0)
            {
                self.requeue(i);
            }
        }
        self.out
            .push_back(Command::Event(ClusterEvent::WorkerLost { worker, reason }));
    }

    // ---------------------------------------------------------------- submission

    /// Accepts a batch of tasks, all or nothing. Dependencies may be tasks of earlier
    /// batches (not yet freed) or of this batch. Fails on a repeated id, an unknown
    /// dependency or a cycle within the batch, and then nothing of the batch is kept.
    /// Costs O(tasks + arguments) of the batch.
    pub fn submit(&mut self, now: Duration, tasks: Vec<TaskSpec>) -> Result<(), GraphError> {
        self.try_submit(now, tasks).map_err(|(e, _)| e)
    }

    /// Like [`submit`](Self::submit), but a refused batch is handed back with the error,
    /// untouched, so the owner can split it and submit its parts separately (e.g. after
    /// merging the submissions of several clients into one call). Same cost.
    pub fn try_submit(
        &mut self,
        now: Duration,
        tasks: Vec<TaskSpec>,
    ) -> Result<(), (GraphError, Vec<TaskSpec>)> {
        match self.check_batch(&tasks) {
            Ok(batch) => {
                self.accept(now, tasks, batch);
                Ok(())
            }
            Err(e) => Err((e, tasks)),
        }
    }

    /// Validates a batch: no repeated or known ids, every dependency known (and not freed)
    /// or in the batch, no cycle. Returns the batch's id → position map.
    fn check_batch(&self, tasks: &[TaskSpec]) -> Result<FxMap<TaskId, u32>, GraphError> {
        let mut batch: FxMap<TaskId, u32> = FxMap::default();
        batch.reserve(tasks.len());
        for (k, t) in tasks.iter().enumerate() {
            if self.index.contains_key(&t.id) || batch.insert(t.id, k as u32).is_some() {
                return Err(GraphError::DuplicateTask { task: t.id });
            }
        }
        let mut forward = false;
        for (k, t) in tasks.iter().enumerate() {
            for d in t.deps() {
                match batch.get(&d) {
                    Some(&j) => forward |= j as usize >= k,
                    None => match self.index.get(&d) {
                        Some(&i) if self.tasks[i as usize].flags & DEAD == 0 => {}
                        _ => {
                            return Err(GraphError::UnknownDependency {
                                task: t.id,
                                dependency: d,
                            })
                        }
                    },
                }
            }
        }
        if forward {
            check_acyclic(tasks, &batch)?;
        }
        Ok(batch)
    }

    /// Creates the records of a validated batch and wires its dependencies.
    fn accept(&mut self, now: Duration, tasks: Vec<TaskSpec>, batch: FxMap<TaskId, u32>) {
        self.now = now;
        let base = self.tasks.len() as u32;
        let now_ns = ns(now);
        let n = tasks.len();
        self.tasks.reserve(n);
        self.index.reserve(n);
        for mut t in tasks {
            let idx = self.tasks.len() as u32;
            let func = self.intern_func(std::mem::take(&mut t.func));
            let mut deps = Vec::new();
            for d in t.deps() {
                deps.push(match batch.get(&d) {
                    Some(&j) => base + j,
                    None => self.index[&d],
                });
            }
            if deps.len() > 1 {
                deps.sort_unstable();
                deps.dedup();
            }
            let scope = self.intern_scope(t.options.scope);
            let early = self.scopes[scope as usize].early;
            let args = t.args;
            self.index.insert(t.id, idx);
            self.tasks.push(Task {
                id: t.id,
                proc: ProcId::default(),
                est_ns: 0,
                submitted_ns: now_ns,
                dispatched_ns: NONE,
                finished_ns: NONE,
                run_ns: NONE,
                size: 0,
                holder: WorkerId::DRIVER,
                func,
                scope,
                priority: t.options.priority,
                retries_left: t.options.retries,
                attempts: 0,
                unmet: 0,
                consumers: 0,
                live_dependents: 0,
                pending_fetch: 0,
                slot: 0,
                loss_reruns: 0,
                state: State::Waiting,
                flags: if early { EARLY } else { 0 },
                spec: Some(Box::new(Spec {
                    args,
                    deps,
                    dependents: Vec::new(),
                    fetching: Vec::new(),
                })),
            });
            self.counts.waiting += 1;
            self.counts.submitted += 1;
            self.counts.live += 1;
        }

        // Wire dependencies.
        for x in base..self.tasks.len() as u32 {
            let deps = self.deps_of(x);
            for d in deps {
                let dt = &mut self.tasks[d as usize];
                dt.consumers += 1;
                dt.live_dependents += 1;
                if let Some(s) = dt.spec.as_mut() {
                    s.dependents.push(x);
                }
            }
        }

        // Compute readiness; fail tasks with failed inputs; recompute freed inputs.
        for x in base..self.tasks.len() as u32 {
            if self.tasks[x as usize].state != State::Waiting {
                continue; // failed by a cascade from an earlier task of this batch
            }
            let early = self.tasks[x as usize].flags & EARLY != 0;
            let deps = self.deps_of(x);
            let mut unmet = 0;
            let mut failed_dep = None;
            let mut recompute = Vec::new();
            for &d in &deps {
                let dt = &self.tasks[d as usize];
                if dt.state == State::Failed {
                    failed_dep = Some(d);
                    break;
                }
                if !satisfies(early, dt.state) {
                    unmet += 1;
                }
                if dt.state == State::Finished && !self.available(d) {
                    recompute.push(d);
                }
            }
            if let Some(d) = failed_dep {
                let (dep_id, cause) = self.root_failure(d);
                let err = TaskError::DependencyFailed {
                    task: self.tasks[x as usize].id,
                    dependency: dep_id,
                    cause: Box::new(cause),
                };
                self.fail(x, err);
                continue;
            }
            self.tasks[x as usize].unmet = unmet;
            if unmet == 0 {
                self.make_ready(x);
            }
            for d in recompute {
                self.requeue(d);
            }
        }
    }

    /// The client dropped its interest in a task's result. Once no unfinished task needs it,
    /// the scheduler's copy is freed and workers are told to release theirs. Unknown tasks
    /// are ignored. Cheap.
    pub fn release(&mut self, task: TaskId) {
        let Some(&i) = self.index.get(&task) else {
            return;
        };
        let t = &mut self.tasks[i as usize];
        if t.flags & CLIENT_RELEASED != 0 {
            return;
        }
        t.flags |= CLIENT_RELEASED;
        self.maybe_release(i);
    }

    // ---------------------------------------------------------------- worker reports

    /// A worker reports a finished (or failed) task. Ignored unless `incarnation` is the
    /// worker's current one and the task is dispatched to that worker. O(dependents).
    pub fn task_done(
        &mut self,
        now: Duration,
        worker: WorkerId,
        incarnation: Incarnation,
        done: TaskDone,
    ) {
        self.now = now;
        if self.topology.incarnation(worker) != Some(incarnation) {
            return;
        }
        let Some(&i) = self.index.get(&done.task) else {
            return;
        };
        let t = &self.tasks[i as usize];
        if t.state != State::Dispatched || t.proc.worker != worker {
            return;
        }
        let kind = self.slots[t.slot as usize].kind;
        let func = t.func;
        match done.outcome {
            Outcome::Value(bytes) => {
                self.learn(func, kind, done.run_ns);
                let size = bytes.len() as u64;
                self.finish(i, worker, done.run_ns, size);
                let t = &self.tasks[i as usize];
                let keep = t.consumers > 0 || t.flags & CLIENT_RELEASED == 0;
                let first = t.flags & COMPLETED == 0;
                match (first, keep) {
                    (true, true) => {
                        self.complete(i, Ok(Completion::Value(bytes.clone())));
                        self.inline.insert(i, bytes);
                    }
                    (true, false) => self.complete(i, Ok(Completion::Value(bytes))),
                    (false, true) => {
                        self.inline.insert(i, bytes);
                    }
                    (false, false) => {}
                }
                self.maybe_release(i);
            }
            Outcome::Stored { size } => {
                self.learn(func, kind, done.run_ns);
                self.finish(i, worker, done.run_ns, size);
                if self.tasks[i as usize].flags & COMPLETED == 0 {
                    self.complete(
                        i,
                        Ok(Completion::Stored {
                            holders: vec![worker],
                            size,
                        }),
                    );
                }
                self.maybe_release(i);
            }
            Outcome::Failed(err) => {
                let t = &mut self.tasks[i as usize];
                t.run_ns = done.run_ns;
                let retry = match &err {
                    TaskError::Panicked { .. } if t.retries_left > 0 => {
                        t.retries_left -= 1;
                        true
                    }
                    // A transient move failure (the source left, no holder yet) may be
                    // cured by recomputing the input; a deterministic one (too large,
                    // undecodable) would fail the same way again.
                    TaskError::MoveFailed { cause, .. }
                        if cause.is_transient() && t.loss_reruns < MAX_LOSS_RERUNS =>
                    {
                        t.loss_reruns += 1;
                        true
                    }
                    _ => false,
                };
                if retry {
                    self.retry(i);
                } else {
                    self.fail(i, err);
                }
            }
        }
    }

    /// A worker reports that a chunk now also has a copy on `to`. Ignored if fenced, if
    /// `to` is not in the pool, or if the chunk is not held anywhere any more.
    pub fn chunk_replicated(
        &mut self,
        worker: WorkerId,
        incarnation: Incarnation,
        chunk: ChunkId,
        to: WorkerId,
    ) {
        if self.topology.incarnation(worker) != Some(incarnation)
            || self.topology.worker(to).is_none()
        {
            return;
        }
        let Some(&i) = self.index.get(&chunk.task()) else {
            return;
        };
        if self.tasks[i as usize].flags & HELD != 0 {
            self.add_holder(i, to);
        }
    }

    // ---------------------------------------------------------------- output

    /// The next command to carry out, or `None` when there is nothing to do. When its queue
    /// is empty it first places every ready task and flushes the per-worker batches
    /// (`Release` before `Run` for each worker). Call until it returns `None` after every
    /// event. Amortised cost per task placed: O(admitted processors × inputs).
    pub fn poll_command(&mut self) -> Option<Command> {
        if self.out.is_empty() {
            self.schedule();
            self.flush();
        }
        self.out.pop_front()
    }

    /// The workers holding a copy of a chunk (empty if none or unknown).
    pub fn holders(&self, chunk: ChunkId) -> &[WorkerId] {
        match self.index.get(&chunk.task()) {
            Some(&i) => self.holders_of(i),
            None => &[],
        }
    }

    /// What is known about one task, or `None` if it was never submitted.
    pub fn task_info(&self, task: TaskId) -> Option<TaskInfo> {
        let &i = self.index.get(&task)?;
        let t = &self.tasks[i as usize];
        Some(TaskInfo {
            func: self.funcs[t.func as usize].to_string(),
            proc: (t.dispatched_ns != NONE).then_some(t.proc),
            submitted: Duration::from_nanos(t.submitted_ns),
            dispatched: opt_time(t.dispatched_ns),
            finished: opt_time(t.finished_ns),
            run_ns: (t.run_ns != NONE).then_some(t.run_ns),
            attempts: t.attempts,
        })
    }

    /// Counts of tasks by state. O(1).
    pub fn stats(&self) -> Stats {
        let c = &self.counts;
        Stats {
            submitted: c.submitted,
            finished: c.finished,
            failed: c.failed,
            running: c.running,
            ready: c.ready,
            waiting: c.waiting,
            live: c.live,
        }
    }

    /// Checks the internal bookkeeping against a recount from scratch and returns the
    /// first inconsistency found. O(tasks × edges); meant for tests and debugging.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut counts = Counts::default();
        let mut queued = vec![0u64; self.slots.len()];
        let mut fetchers: FxMap<u32, u32> = FxMap::default();
        for (i, t) in self.tasks.iter().enumerate() {
            let i = i as u32;
            *counts.slot(t.state) += 1;
            if t.flags & DEAD == 0 {
                counts.live += 1;
            }
            if self.index.get(&t.id) != Some(&i) {
                return Err(format!("{}: index mismatch", t.id));
            }
            if t.state == State::Dispatched {
                queued[t.slot as usize] += t.est_ns;
                if self.topology.worker(t.proc.worker).is_none() {
                    return Err(format!("{}: dispatched to absent {}", t.id, t.proc.worker));
                }
            }
            let Some(spec) = t.spec.as_ref() else {
                if t.flags & DEAD == 0 {
                    return Err(format!("{}: spec freed but not dead", t.id));
                }
                continue;
            };
            if t.state == State::Dispatched {
                for &d in &spec.fetching {
                    *fetchers.entry(d).or_default() += 1;
                }
            } else if !spec.fetching.is_empty() {
                return Err(format!("{}: fetching while not dispatched", t.id));
            }
            let early = t.flags & EARLY != 0;
            let mut unmet = 0;
            let mut consumers = 0;
            let mut live = 0;
            for &d in &spec.deps {
                let dt = &self.tasks[d as usize];
                if dt.flags & DEAD != 0 {
                    return Err(format!("{}: depends on freed {}", t.id, dt.id));
                }
                if !satisfies(early, dt.state) {
                    unmet += 1;
                }
                if t.state == State::Ready && !satisfies(early, dt.state) {
                    return Err(format!(
                        "{}: {:?} but input {} is {:?}",
                        t.id, t.state, dt.id, dt.state
                    ));
                }
            }
            if t.state == State::Ready && unmet != 0
                || t.state == State::Waiting && unmet != t.unmet
            {
                return Err(format!(
                    "{}: unmet {} but recount {} ({:?})",
                    t.id, t.unmet, unmet, t.state
                ));
            }
            for &u in &spec.dependents {
                let ut = &self.tasks[u as usize];
                if !ut.state.terminal() {
                    consumers += 1;
                }
                if ut.flags & DEAD == 0 {
                    live += 1;
                }
            }
            if consumers != t.consumers || live != t.live_dependents {
                return Err(format!(
                    "{}: consumers {}/{} live {}/{}",
                    t.id, t.consumers, consumers, t.live_dependents, live
                ));
            }
            if t.state == State::Finished
                && (t.consumers > 0 || t.flags & CLIENT_RELEASED == 0)
                && !self.available(i)
            {
                return Err(format!("{}: needed result is nowhere", t.id));
            }
        }
        for (i, t) in self.tasks.iter().enumerate() {
            let f = fetchers.get(&(i as u32)).copied().unwrap_or(0);
            if f != t.pending_fetch {
                return Err(format!(
                    "{}: pending_fetch {} recount {}",
                    t.id, t.pending_fetch, f
                ));
            }
        }
        for (s, q) in queued.iter().enumerate() {
            if self.slots[s].queued_ns != *q {
                return Err(format!(
                    "slot {:?}: queued {} recount {}",
                    self.slots[s].id, self.slots[s].queued_ns, q
                ));
            }
        }
        for i in 0..self.tasks.len() as u32 {
            for h in self.holders_of(i) {
                if self.topology.worker(*h).is_none() {
                    return Err(format!("holder {h} is not in the pool"));
                }
            }
        }
        for (i, hs) in &self.replicas {
            if hs.len() < 2
                || self.tasks[*i as usize].flags & HELD == 0
                || hs[0] != self.tasks[*i as usize].holder
            {
                return Err(format!(
                    "replica list of {} is inconsistent",
                    self.tasks[*i as usize].id
                ));
            }
        }
        let c = &self.counts;
        if (c.waiting, c.ready, c.running, c.finished, c.failed, c.live)
            != (
                counts.waiting,
                counts.ready,
                counts.running,
                counts.finished,
                counts.failed,
                counts.live,
            )
        {
            return Err("state counters drifted".to_string());
        }
        Ok(())
    }

    // ---------------------------------------------------------------- internals

    fn intern_func(&mut self, name: Cow<'static, str>) -> u32 {
        if let Some(&f) = self.func_ids.get(name.as_ref()) {
            return f;
        }
        let f = self.funcs.len() as u32;
        self.funcs.push(name.clone());
        self.func_ids.insert(name, f);
        self.runtime.push(Vec::new());
        f
    }

    fn intern_scope(&mut self, scope: Scope) -> u32 {
        if let Some(&s) = self.scope_ids.get(&scope) {
            return s;
        }
        let s = self.scopes.len() as u32;
        self.scope_ids.insert(scope.clone(), s);
        self.scopes.push(ScopeEntry {
            early: early_scope(&scope),
            scope,
            gen: u64::MAX,
            cands: Vec::new(),
            any_admits: false,
        });
        s
    }

    fn intern_kind(&mut self, kind: &ProcKind) -> u32 {
        if let Some(&k) = self.kinds.get(kind) {
            return k;
        }
        let k = self.kinds.len() as u32;
        self.kinds.insert(kind.clone(), k);
        k
    }

    fn deps_of(&self, i: u32) -> Vec<u32> {
        self.tasks[i as usize]
            .spec
            .as_ref()
            .map(|s| s.deps.clone())
            .unwrap_or_default()
    }

    fn available(&self, i: u32) -> bool {
        self.tasks[i as usize].flags & HELD != 0 || self.inline.contains_key(&i)
    }

    /// The task that failed first behind failed task `i`, and its error.
    fn root_failure(&self, i: u32) -> (TaskId, TaskError) {
        let id = self.tasks[i as usize].id;
        match self.errors.get(&i) {
            Some(TaskError::DependencyFailed {
                dependency, cause, ..
            }) => (*dependency, (**cause).clone()),
            Some(e) => (id, e.clone()),
            None => (id, TaskError::Shutdown { task: id }),
        }
    }

    fn learn(&mut self, func: u32, kind: u32, run_ns: u64) {
        let row = &mut self.runtime[func as usize];
        if row.len() <= kind as usize {
            row.resize(kind as usize + 1, 0);
        }
        let x = run_ns.max(1);
        let old = row[kind as usize];
        row[kind as usize] = if old == 0 {
            x
        } else {
            (old / 8).saturating_mul(7) + x / 8
        }
        .max(1);
    }

    fn complete(&mut self, i: u32, result: Result<Completion, TaskError>) {
        let t = &mut self.tasks[i as usize];
        t.flags |= COMPLETED;
        self.out.push_back(Command::Complete { task: t.id, result });
    }

    /// Changes a task's state, keeps the counters, and tells dependents whose readiness
    /// changes.
    fn set_state(&mut self, i: u32, new: State) {
        let old = self.tasks[i as usize].state;
        if old == new {
            return;
        }
        *self.counts.slot(old) -= 1;
        *self.counts.slot(new) += 1;
        self.tasks[i as usize].state = new;
        let early_changes = satisfies(true, old) != satisfies(true, new);
        let normal_changes = satisfies(false, old) != satisfies(false, new);
        if !early_changes && !normal_changes {
            return;
        }
        let dependents = match self.tasks[i as usize].spec.as_mut() {
            Some(s) if !s.dependents.is_empty() => std::mem::take(&mut s.dependents),
            _ => return,
        };
        for &u in &dependents {
            let ut = &mut self.tasks[u as usize];
            if !matches!(ut.state, State::Waiting | State::Ready) {
                continue;
            }
            let early = ut.flags & EARLY != 0;
            let before = satisfies(early, old);
            let after = satisfies(early, new);
            if before && !after {
                ut.unmet += 1;
                if ut.state == State::Ready {
                    self.set_state(u, State::Waiting);
                }
            } else if !before && after {
                ut.unmet = ut.unmet.saturating_sub(1);
                if ut.unmet == 0 && ut.state == State::Waiting {
                    self.make_ready(u);
                }
            }
        }
        if let Some(s) = self.tasks[i as usize].spec.as_mut() {
            s.dependents = dependents;
        }
    }

    fn make_ready(&mut self, i: u32) {
        self.set_state(i, State::Ready);
        self.push_ready(i);
    }

    fn push_ready(&mut self, i: u32) {
        let priority = self.tasks[i as usize].priority;
        self.ready.entry(priority).or_default().push_back(i);
    }

    /// The workers holding task `i`'s result.
    fn holders_of(&self, i: u32) -> &[WorkerId] {
        let t = &self.tasks[i as usize];
        if t.flags & HELD == 0 {
            return &[];
        }
        if !self.replicas.is_empty() {
            if let Some(v) = self.replicas.get(&i) {
                return v;
            }
        }
        std::slice::from_ref(&t.holder)
    }

    fn set_holder(&mut self, i: u32, w: WorkerId) {
        if !self.replicas.is_empty() {
            self.replicas.remove(&i);
        }
        let t = &mut self.tasks[i as usize];
        t.holder = w;
        t.flags |= HELD;
    }

    fn add_holder(&mut self, i: u32, w: WorkerId) {
        let t = &self.tasks[i as usize];
        if t.flags & HELD == 0 {
            return self.set_holder(i, w);
        }
        let first = t.holder;
        if first == w {
            return;
        }
        let list = self.replicas.entry(i).or_insert_with(|| vec![first]);
        if !list.contains(&w) {
            list.push(w);
        }
    }

    /// Tells every holder of task `i`'s result to drop it and forgets them.
    fn release_holders(&mut self, i: u32) {
        let t = &mut self.tasks[i as usize];
        if t.flags & HELD == 0 {
            return;
        }
        t.flags &= !HELD;
        let chunk = t.id.chunk();
        let first = t.holder;
        match self.replicas.remove(&i) {
            Some(list) => {
                for h in list {
                    self.releases.entry(h).or_default().push(chunk);
                }
            }
            None => self.releases.entry(first).or_default().push(chunk),
        }
    }

    /// Forgets every copy held by `w`; returns the tasks whose result is now held nowhere.
    fn drop_holder(&mut self, w: WorkerId) -> Vec<u32> {
        let tasks = &mut self.tasks;
        self.replicas.retain(|&i, list| {
            list.retain(|&h| h != w);
            if let Some(&first) = list.first() {
                tasks[i as usize].holder = first;
            }
            list.len() >= 2
        });
        let mut emptied = Vec::new();
        for (i, t) in tasks.iter_mut().enumerate() {
            if t.flags & HELD != 0 && t.holder == w {
                t.flags &= !HELD;
                emptied.push(i as u32);
            }
        }
        emptied
    }

    fn unpark(&mut self) {
        for i in std::mem::take(&mut self.parked) {
            if self.tasks[i as usize].state == State::Ready {
                self.push_ready(i);
            }
        }
    }

    /// Undoes the bookkeeping of a dispatch (queued work, pending fetches).
    fn undispatch(&mut self, i: u32) {
        let t = &mut self.tasks[i as usize];
        let slot = t.slot as usize;
        let est = t.est_ns;
        let fetching = t
            .spec
            .as_mut()
            .map(|s| std::mem::take(&mut s.fetching))
            .unwrap_or_default();
        if let Some(s) = self.slots.get_mut(slot) {
            s.queued_ns = s.queued_ns.saturating_sub(est);
        }
        for d in fetching {
            let dt = &mut self.tasks[d as usize];
            dt.pending_fetch = dt.pending_fetch.saturating_sub(1);
            self.maybe_release(d);
        }
    }

    /// A dispatched task finished with a result held by `worker`.
    fn finish(&mut self, i: u32, worker: WorkerId, run_ns: u64, size: u64) {
        self.undispatch(i);
        let t = &mut self.tasks[i as usize];
        t.run_ns = run_ns;
        t.finished_ns = ns(self.now);
        t.size = size;
        self.set_holder(i, worker);
        self.set_state(i, State::Finished);
        for d in self.deps_of(i) {
            let dt = &mut self.tasks[d as usize];
            dt.consumers = dt.consumers.saturating_sub(1);
            self.maybe_release(d);
        }
    }

    /// Fails `root` with `err` and every transitive dependent with `DependencyFailed`.
    fn fail(&mut self, root: u32, err: TaskError) {
        let root_id = self.tasks[root as usize].id;
        let (dep_id, cause) = match &err {
            TaskError::DependencyFailed {
                dependency, cause, ..
            } => (*dependency, (**cause).clone()),
            e => (root_id, e.clone()),
        };
        let mut stack = vec![(root, Some(err))];
        while let Some((x, e)) = stack.pop() {
            let t = &self.tasks[x as usize];
            if t.state.terminal() {
                continue;
            }
            if t.state == State::Dispatched {
                self.undispatch(x);
            }
            let id = self.tasks[x as usize].id;
            let e = e.unwrap_or_else(|| TaskError::DependencyFailed {
                task: id,
                dependency: dep_id,
                cause: Box::new(cause.clone()),
            });
            self.tasks[x as usize].finished_ns = ns(self.now);
            self.set_state(x, State::Failed);
            self.errors.insert(x, e.clone());
            if self.tasks[x as usize].flags & COMPLETED == 0 {
                self.complete(x, Err(e));
            }
            for d in self.deps_of(x) {
                let dt = &mut self.tasks[d as usize];
                dt.consumers = dt.consumers.saturating_sub(1);
                self.maybe_release(d);
            }
            if let Some(s) = self.tasks[x as usize].spec.as_ref() {
                for &u in &s.dependents {
                    if !self.tasks[u as usize].state.terminal() {
                        stack.push((u, None));
                    }
                }
            }
            self.maybe_release(x);
        }
    }

    /// Puts a dispatched or finished task back to waiting, recursively recomputing any of
    /// its inputs whose result is gone.
    /// Puts task `i` back in line for another attempt and tells subscribers.
    fn retry(&mut self, i: u32) {
        self.requeue(i);
        let t = &self.tasks[i as usize];
        let ev = ClusterEvent::TaskRetried {
            task: t.id,
            attempt: t.attempts + 1,
        };
        self.out.push_back(Command::Event(ev));
    }

    fn requeue(&mut self, i: u32) {
        let mut stack = vec![i];
        while let Some(x) = stack.pop() {
            let old = self.tasks[x as usize].state;
            match old {
                State::Dispatched => self.undispatch(x),
                State::Finished => {
                    for d in self.deps_of(x) {
                        self.tasks[d as usize].consumers += 1;
                    }
                    self.release_holders(x);
                    self.inline.remove(&x);
                }
                _ => continue,
            }
            self.tasks[x as usize].finished_ns = NONE;
            self.set_state(x, State::Waiting);
            let early = self.tasks[x as usize].flags & EARLY != 0;
            let mut unmet = 0;
            for d in self.deps_of(x) {
                let ds = self.tasks[d as usize].state;
                if !satisfies(early, ds) {
                    unmet += 1;
                }
                if ds == State::Finished && !self.available(d) {
                    stack.push(d);
                }
            }
            self.tasks[x as usize].unmet = unmet;
            if unmet == 0 {
                self.make_ready(x);
            }
        }
    }

    /// Frees copies of task `i`'s result that nothing needs any more, then its record.
    fn maybe_release(&mut self, i: u32) {
        let t = &self.tasks[i as usize];
        if t.state == State::Finished {
            let released = t.flags & CLIENT_RELEASED != 0;
            let unneeded = released && t.consumers == 0;
            let mut has_inline = self.inline.contains_key(&i);
            if has_inline && unneeded {
                self.inline.remove(&i);
                has_inline = false;
            }
            let release_workers = t.pending_fetch == 0 && (has_inline || unneeded);
            if release_workers {
                self.release_holders(i);
            }
        }
        self.maybe_free(i);
    }

    /// Frees the variable-sized state of tasks nothing can need any more, cascading to
    /// their inputs.
    fn maybe_free(&mut self, i: u32) {
        let mut stack = vec![i];
        while let Some(x) = stack.pop() {
            let t = &mut self.tasks[x as usize];
            if t.flags & DEAD != 0
                || !t.state.terminal()
                || t.flags & CLIENT_RELEASED == 0
                || t.consumers > 0
                || t.live_dependents > 0
                || t.pending_fetch > 0
            {
                continue;
            }
            t.flags |= DEAD;
            let spec = t.spec.take();
            self.counts.live -= 1;
            if !self.inline.is_empty() {
                self.inline.remove(&x);
            }
            if !self.errors.is_empty() {
                self.errors.remove(&x);
            }
            self.release_holders(x);
            if let Some(spec) = spec {
                for d in spec.deps {
                    let dt = &mut self.tasks[d as usize];
                    dt.live_dependents = dt.live_dependents.saturating_sub(1);
                    stack.push(d);
                }
            }
        }
    }

    /// Rebuilds the processor table from the topology after a change.
    fn refresh(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        self.gen += 1;
        self.dist.clear();
        for s in &mut self.slots {
            s.alive = false;
        }
        let procs: Vec<(ProcId, ProcKind, bool)> = self
            .topology
            .procs()
            .map(|p| (p.id, p.kind.clone(), p.id.is_root()))
            .collect();
        self.pool_has_procs = false;
        self.driver_present = self.topology.worker(WorkerId::DRIVER).is_some();
        let net = self.topology.costs().network;
        self.net_cost = (0..=64u8).map(|b| net.time_ns(bucket_bytes(b))).collect();
        for (id, kind, root) in procs {
            let k = self.intern_kind(&kind);
            let s = match self.slot_of.get(&id) {
                Some(&s) => s,
                None => {
                    let s = self.slots.len() as u32;
                    self.slots.push(Slot {
                        id,
                        kind: k,
                        alive: true,
                        queued_ns: 0,
                    });
                    self.slot_of.insert(id, s);
                    s
                }
            };
            let slot = &mut self.slots[s as usize];
            slot.alive = true;
            slot.kind = k;
            self.pool_has_procs |= !root;
        }
    }

    fn refresh_scope(&mut self, s: u32) {
        let entry = &mut self.scopes[s as usize];
        if entry.gen == self.gen {
            return;
        }
        entry.gen = self.gen;
        entry.cands.clear();
        entry.any_admits = false;
        for (k, slot) in self.slots.iter().enumerate() {
            if !slot.alive {
                continue;
            }
            let Some(info) = self.topology.proc(slot.id) else {
                continue;
            };
            if entry.scope.admits(info) {
                entry.any_admits = true;
                if !self.draining.contains(&slot.id.worker) {
                    entry.cands.push(k as u32);
                }
            }
        }
    }

    /// Cheapest path cost from `src`'s root to every slot for `bytes` (bucketed), cached.
    fn ensure_dist(&mut self, src: WorkerId, b: u8) {
        if self.dist.contains_key(&(src, b)) {
            return;
        }
        let bytes = bucket_bytes(b);
        let mut dist = vec![UNREACHABLE; self.slots.len()];
        let source_alive = self
            .slot_of
            .get(&ProcId::root(src))
            .is_some_and(|&s0| self.slots[s0 as usize].alive);
        if source_alive {
            let costs = dagger_move::costs_from(&self.topology, ProcId::root(src), bytes);
            for (s, slot) in self.slots.iter().enumerate() {
                if let Some(&c) = costs.get(&slot.id) {
                    dist[s] = c.min(UNREACHABLE);
                }
            }
        }
        self.dist.insert((src, b), dist);
    }

    /// Adds to `scratch_cost[j]` the cost of moving an input held by `holders` (of `bytes`)
    /// to candidate `cands[j]`.
    fn add_input_cost(&mut self, cands: &[u32], holders: &[WorkerId], bytes: u64) {
        let b = bucket(bytes);
        for &h in holders {
            self.ensure_dist(h, b);
        }
        let mut mins = std::mem::take(&mut self.scratch_min);
        mins.clear();
        mins.resize(cands.len(), UNREACHABLE);
        for &h in holders {
            if let Some(table) = self.dist.get(&(h, b)) {
                for (j, &c) in cands.iter().enumerate() {
                    mins[j] = mins[j].min(table[c as usize]);
                }
            }
        }
        for (j, m) in mins.iter().enumerate() {
            self.scratch_cost[j] = self.scratch_cost[j].saturating_add(*m);
        }
        self.scratch_min = mins;
    }

    fn place(&mut self, i: u32) -> Placement {
        let s = self.tasks[i as usize].scope;
        self.refresh_scope(s);
        let cands = std::mem::take(&mut self.scopes[s as usize].cands);
        if cands.is_empty() {
            let any = self.scopes[s as usize].any_admits;
            return if any || !self.pool_has_procs {
                Placement::Park
            } else {
                Placement::NoProcessor
            };
        }
        let mut cost = std::mem::take(&mut self.scratch_cost);
        cost.clear();
        cost.resize(cands.len(), 0);
        self.scratch_cost = cost;

        // Inputs.
        let mut driver_bytes = 0u64;
        let mut sources: Vec<(Vec<WorkerId>, u64)> = Vec::new();
        if let Some(spec) = self.tasks[i as usize].spec.as_ref() {
            for a in &spec.args {
                match a {
                    Arg::Value(v) => driver_bytes += v.len() as u64,
                    Arg::Task(d) => {
                        let Some(&d) = self.index.get(d) else {
                            continue;
                        };
                        let dt = &self.tasks[d as usize];
                        if let Some(v) = self.inline.get(&d) {
                            driver_bytes += v.len() as u64;
                        } else if dt.flags & HELD != 0 {
                            sources.push((self.holders_of(d).to_vec(), dt.size));
                        } else if dt.state == State::Dispatched {
                            sources.push((vec![dt.proc.worker], 0));
                        }
                    }
                }
            }
        }
        if self.driver_present {
            self.add_input_cost(&cands, &[WorkerId::DRIVER], driver_bytes);
        } else {
            let c = self.net_cost[bucket(driver_bytes) as usize];
            for x in &mut self.scratch_cost {
                *x += c;
            }
        }
        for (hs, size) in &sources {
            self.add_input_cost(&cands, hs, *size);
        }

        let func = self.tasks[i as usize].func as usize;
        let row = &self.runtime[func];
        let default = self.config.default_runtime_ns;
        let mut best = (u64::MAX, 0u32, 0u64);
        for (j, &c) in cands.iter().enumerate() {
            let slot = &self.slots[c as usize];
            let run = match row.get(slot.kind as usize) {
                Some(&r) if r > 0 => r,
                _ => default,
            };
            let own = self.scratch_cost[j].saturating_add(run);
            let total = own.saturating_add(slot.queued_ns);
            if total < best.0 {
                best = (total, c, own);
            }
        }
        self.scopes[s as usize].cands = cands;
        Placement::On {
            slot: best.1,
            est: best.2,
        }
    }

    fn dispatch(&mut self, i: u32, slot: u32, est: u64) {
        let proc = self.slots[slot as usize].id;
        self.slots[slot as usize].queued_ns += est;
        let now = ns(self.now);
        let mut args = Vec::new();
        let mut fetching = Vec::new();
        {
            let t = &self.tasks[i as usize];
            if let Some(spec) = t.spec.as_ref() {
                args.reserve(spec.args.len());
                for a in &spec.args {
                    args.push(match a {
                        Arg::Value(v) => RunArg::Value(v.clone()),
                        Arg::Task(id) => {
                            let Some(&d) = self.index.get(id) else {
                                continue;
                            };
                            let d = &d;
                            if let Some(v) = self.inline.get(d) {
                                RunArg::Value(v.clone())
                            } else {
                                let from = match self.holders_of(*d) {
                                    hs if !hs.is_empty() => {
                                        let mut hs = hs.to_vec();
                                        // Prefer a copy on the destination worker.
                                        if let Some(p) = hs.iter().position(|&h| h == proc.worker) {
                                            hs.swap(0, p);
                                        }
                                        hs
                                    }
                                    _ => vec![self.tasks[*d as usize].proc.worker],
                                };
                                if !fetching.contains(d) {
                                    fetching.push(*d);
                                }
                                RunArg::Chunk {
                                    chunk: self.tasks[*d as usize].id.chunk(),
                                    from,
                                }
                            }
                        }
                    });
                }
            }
        }
        for &d in &fetching {
            self.tasks[d as usize].pending_fetch += 1;
        }
        let t = &mut self.tasks[i as usize];
        t.proc = proc;
        t.slot = slot;
        t.est_ns = est;
        t.dispatched_ns = now;
        t.attempts += 1;
        if let Some(spec) = t.spec.as_mut() {
            spec.fetching = fetching;
        }
        let run = RunTask {
            task: t.id,
            func: self.funcs[t.func as usize].clone(),
            args,
            proc,
            inline_limit: self.config.inline_limit,
            push_to: Vec::new(),
        };
        let max = self.config.max_batch.max(1);
        let batches = self.runs.entry(proc.worker).or_default();
        match batches.last_mut() {
            Some(b) if b.len() < max => b.push(run),
            _ => {
                let mut b = Vec::with_capacity(max.min(64));
                b.push(run);
                batches.push(b);
            }
        }
        self.set_state(i, State::Dispatched);
    }

    fn schedule(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        self.refresh();
        loop {
            let i = match self.ready.last_entry() {
                None => break,
                Some(mut e) => match e.get_mut().pop_front() {
                    Some(i) => i,
                    None => {
                        e.remove();
                        continue;
                    }
                },
            };
            if self.tasks[i as usize].state != State::Ready {
                continue;
            }
            match self.place(i) {
                Placement::On { slot, est } => self.dispatch(i, slot, est),
                Placement::Park => self.parked.push(i),
                Placement::NoProcessor => {
                    let t = &self.tasks[i as usize];
                    let scope = self.scopes[t.scope as usize].scope.to_string();
                    let err = TaskError::NoProcessor { task: t.id, scope };
                    self.fail(i, err);
                }
            }
        }
    }

    fn flush(&mut self) {
        for (worker, chunks) in std::mem::take(&mut self.releases) {
            if !chunks.is_empty() {
                self.out.push_back(Command::Send {
                    worker,
                    msg: ToWorker::Release(chunks),
                });
            }
        }
        for (worker, batches) in std::mem::take(&mut self.runs) {
            for b in batches {
                self.out.push_back(Command::Send {
                    worker,
                    msg: ToWorker::Run(b),
                });
            }
        }
    }
}

/// Kahn's algorithm over the batch's internal edges; names a task on a cycle.
fn check_acyclic(tasks: &[TaskSpec], batch: &FxMap<TaskId, u32>) -> Result<(), GraphError> {
    let n = tasks.len();
    let mut indeg = vec![0u32; n];
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut inner: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (k, t) in tasks.iter().enumerate() {
        let mut ds: Vec<u32> = t.deps().filter_map(|d| batch.get(&d).copied()).collect();
        ds.sort_unstable();
        ds.dedup();
        for &j in &ds {
            out[j as usize].push(k as u32);
        }
        indeg[k] = ds.len() as u32;
        inner[k] = ds;
    }
    let mut stack: Vec<u32> = (0..n as u32).filter(|&k| indeg[k as usize] == 0).collect();
    let mut seen = 0;
    while let Some(k) = stack.pop() {
        seen += 1;
        for &u in &out[k as usize] {
            indeg[u as usize] -= 1;
            if indeg[u as usize] == 0 {
                stack.push(u);
            }
        }
    }
    if seen == n {
        return Ok(());
    }
    // Walk back along unresolved inputs; after n steps we are on a cycle.
    let mut k = (0..n).find(|&k| indeg[k] > 0).unwrap_or(0);
    for _ in 0..n {
        match inner[k].iter().find(|&&j| indeg[j as usize] > 0) {
            Some(&j) => k = j as usize,
            None => break,
        }
    }
    Err(GraphError::Cycle { task: tasks[k].id })
}
