//! The [`Scheduler`] facade: its state, grouped by concern, and the public entry points.
//! Each entry point records the event and hands the work to the module of its concern:
//!
//! * [`task_table`](crate::task_table): the flat per-task records, states and counters;
//! * [`graph`](crate::graph): submission, dependency wiring and state transitions;
//! * [`data`](crate::data): where results are, and when copies and records are released;
//! * [`placement`](crate::placement): the ready queue, the processor table, the choice of a
//!   processor and the dispatch;
//! * [`recovery`](crate::recovery): lost workers, retries, recomputation from lineage and
//!   failure cascades;
//! * [`outbox`](crate::outbox): commands queued per worker and batched at a flush.

use crate::data::DataDir;
use crate::drain::Drains;
use crate::edges::Edges;
use crate::hash::FxMap;
use crate::outbox::Outbox;
use crate::placement::Placer;
use crate::task_table::{opt_time, State, Task, TaskFlags, TaskTable, NONE};
use crate::{ClusterEvent, Command, Completion, Config, LossVerdict, LostTask, Stats, TaskInfo};
use dagger_core::topology::Topology;
use dagger_core::wire::{Outcome, TaskDone};
use dagger_core::{
    ChunkId, GraphError, Incarnation, LostReason, TaskError, TaskId, TaskSpec, WorkerId, WorkerInfo,
};
use std::time::Duration;

/// The scheduler: tasks, their placement, results and recovery, as a sans-I/O state
/// machine. See the crate documentation for the contract.
pub struct Scheduler {
    pub(crate) config: Config,
    pub(crate) topology: Topology,
    /// The time of the latest event.
    pub(crate) now: Duration,
    pub(crate) tasks: TaskTable,
    pub(crate) data: DataDir,
    pub(crate) placer: Placer,
    pub(crate) drains: Drains,
    pub(crate) outbox: Outbox,
    /// Why each failed task failed (until its record is freed).
    pub(crate) errors: FxMap<u32, TaskError>,
    /// The dependencies each dispatched task was told to fetch as chunks at its current
    /// dispatch (tasks with none are absent: most have none, so the list is not kept in
    /// every task's [`Spec`](crate::task_table::Spec)).
    pub(crate) fetching: FxMap<u32, Edges>,
    /// Task records looked at by recovery from lost workers, ever (see [`Stats`]).
    pub(crate) recovery_examined: u64,
}

impl Scheduler {
    /// A scheduler with an empty pool and no tasks. Cheap.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            topology: Topology::new(),
            now: Duration::ZERO,
            tasks: TaskTable::default(),
            data: DataDir::default(),
            placer: Placer::default(),
            drains: Drains::default(),
            outbox: Outbox::default(),
            errors: FxMap::default(),
            fetching: FxMap::default(),
            recovery_examined: 0,
        }
    }

    /// Whether a result of at least [`Config::large_release_bytes`] was released (a
    /// `Release` command named it) since the last call: its holders should hear of it
    /// soon rather than with the next batch of releases.
    pub fn take_large_release(&mut self) -> bool {
        std::mem::take(&mut self.outbox.large_released)
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces [`Config::default_loss_retries`] (an owner with a fault policy makes it
    /// agree with the policy's). Tasks already submitted without their own budget use the
    /// new default from their next loss on.
    pub fn set_default_loss_retries(&mut self, n: u32) {
        self.config.default_loss_retries = n;
    }

    /// Replaces [`Config::quiet_reports`]; tasks already sent keep what they were told.
    pub fn set_quiet_reports(&mut self, on: bool) {
        self.config.quiet_reports = on;
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
        self.placer.dirty = true;
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
        self.placer.draining.remove(&w);
        self.placer.dirty = true;
        // A new destination for hand-overs that found none.
        self.drains.dirty = true;
        self.unpark();
        self.outbox.event(ClusterEvent::WorkerJoined { worker: w });
    }

    /// Marks a worker as accepting new work or not. A worker that does not accept keeps
    /// running what it has and keeps its chunks; placement skips it. Accepting again calls
    /// off a drain of the worker ([`Scheduler::drain`]), whose owner then hears nothing
    /// more of it.
    pub fn set_accepting(&mut self, worker: WorkerId, accepting: bool) {
        let changed = if accepting {
            self.cancel_drain(worker);
            self.placer.draining.remove(&worker)
        } else {
            self.placer.draining.insert(worker)
        };
        if changed {
            self.placer.dirty = true;
            if accepting {
                self.unpark();
            }
        }
    }

    /// A worker is gone (its link closed or it stopped answering). It leaves the topology;
    /// later messages from it are ignored; its unfinished tasks are queued again while
    /// their loss budget lasts (`Options::loss_retries`, else
    /// [`Config::default_loss_retries`]), then they fail with `TaskError::WorkerLost`;
    /// results whose only copy it held and that are still needed are recomputed from
    /// lineage. Emits `ClusterEvent::WorkerLost`. Costs O(tasks dispatched to it + results
    /// it held + the processor slots of the pool, plus what is recomputed), not O(tasks in
    /// memory). Unknown workers are ignored.
    pub fn worker_lost(&mut self, now: Duration, worker: WorkerId, reason: LostReason) {
        self.worker_lost_with(now, worker, reason, None);
    }

    /// Like [`Scheduler::worker_lost`], with a fault policy: `verdict` is asked, once per
    /// unfinished task dispatched to the worker (in task order), whether to run it again
    /// (and watch it: its `RunTask::watch` is set) or to fail it with an error (a poison
    /// task, a spent budget); its dependents then fail with `DependencyFailed`. `None`
    /// applies the loss budget alone. Either way a re-run counts against the task's loss
    /// budget. Same cost as `worker_lost`.
    pub fn worker_lost_with(
        &mut self,
        now: Duration,
        worker: WorkerId,
        reason: LostReason,
        verdict: Option<&mut dyn FnMut(&LostTask<'_>) -> LossVerdict>,
    ) {
        self.now = now;
        if self.topology.remove_worker(worker).is_none() {
            return;
        }
        // Subscribers hear of the loss before the retries and failures it causes.
        self.outbox.event(ClusterEvent::WorkerLost {
            worker,
            reason: reason.clone(),
        });
        match verdict {
            Some(v) => self.recover_worker(worker, v),
            None => {
                let budgets = self.config.default_loss_retries;
                let r = reason.clone();
                let mut by_budget = move |lost: &LostTask<'_>| {
                    let budget = lost.loss_retries.unwrap_or(budgets);
                    if lost.loss_reruns >= budget.min(crate::task_table::MAX_LOSS_BUDGET) {
                        LossVerdict::Fail(TaskError::WorkerLost {
                            task: lost.task,
                            worker,
                            reason: r.clone(),
                        })
                    } else {
                        LossVerdict::Retry { watch: false }
                    }
                };
                self.recover_worker(worker, &mut by_budget);
            }
        }
        // Tasks parked behind its (draining) processors are looked at again.
        self.unpark();
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

    /// The client dropped its interest in a task's result. Once no unfinished task needs it,
    /// the scheduler's copy is freed and workers are told to release theirs. No
    /// [`Command::Complete`] with a result comes for the task after this (a failure still
    /// does). Unknown tasks are ignored. Cheap.
    pub fn release(&mut self, task: TaskId) {
        let Some(i) = self.tasks.get(&task) else {
            return;
        };
        let t = &mut self.tasks[i];
        if t.flags.contains(TaskFlags::CLIENT_RELEASED) {
            return;
        }
        t.flags.insert(TaskFlags::CLIENT_RELEASED);
        self.maybe_release(i);
        if self.drains.any() {
            self.drains.dirty = true;
        }
    }

    // ---------------------------------------------------------------- worker reports

    /// A worker reports a finished (or failed) task. Ignored unless `incarnation` is the
    /// worker's current one and the task is dispatched to that worker; but a result the
    /// current incarnation reports for a task no longer dispatched to it (failed by a
    /// cascade while it ran, say) is released there at once, since the worker keeps every
    /// result until told otherwise. O(dependents).
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
        if self.drains.any() {
            self.drains.dirty = true;
        }
        let Some(i) = self.tasks.get(&done.task) else {
            return;
        };
        let t = &self.tasks[i];
        if t.state != State::Dispatched || self.placer.slot_proc(t.slot).worker != worker {
            // The worker stored that result: unless it is a copy the scheduler counts,
            // nothing else would ever release it.
            let stored = matches!(done.outcome, Outcome::Value(_) | Outcome::Stored { .. });
            if stored && !self.holders_of(i).contains(&worker) {
                self.outbox.release(worker, done.task.chunk());
            }
            return;
        }
        let kind = self.placer.slots[t.slot as usize].kind;
        let func = t.func;
        let ran_on = done.proc;
        match done.outcome {
            Outcome::Value(bytes) => {
                self.placer.learn(func, kind, done.run_ns);
                let size = bytes.len() as u64;
                self.finish(i, worker, done.run_ns, size);
                self.ran_on(i, ran_on);
                let t = &self.tasks[i];
                let released = t.flags.contains(TaskFlags::CLIENT_RELEASED);
                let keep = t.consumers > 0 || !released;
                // A released task's completion has no reader (its owner gave the slot
                // back), so it is not made: no copy of the bytes for it.
                let first = !t.flags.contains(TaskFlags::COMPLETED) && !released;
                match (first, keep) {
                    (true, true) => {
                        self.complete(i, Ok(Completion::Value(bytes.clone())));
                        self.put_inline(i, bytes);
                    }
                    (true, false) => self.complete(i, Ok(Completion::Value(bytes))),
                    (false, true) => {
                        self.put_inline(i, bytes);
                    }
                    (false, false) => {}
                }
                self.maybe_release(i);
            }
            Outcome::Stored { size } => {
                self.placer.learn(func, kind, done.run_ns);
                self.finish(i, worker, done.run_ns, size);
                self.ran_on(i, ran_on);
                let t = &self.tasks[i];
                if !t
                    .flags
                    .intersects(TaskFlags::COMPLETED | TaskFlags::CLIENT_RELEASED)
                {
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
                let loss_budget = self.loss_budget(i);
                let input_redone = self.input_not_produced(i, &err);
                let t = &mut self.tasks[i];
                t.run_ns = done.run_ns;
                let retry = match &err {
                    // Dispatched ahead of an input whose run failed: not its own failure,
                    // and bounded by that input's attempts.
                    TaskError::MoveFailed { .. } if input_redone => true,
                    TaskError::Panicked { .. } if t.retries_left > 0 => {
                        t.retries_left -= 1;
                        true
                    }
                    // A transient move failure (the source left, no holder yet) may be
                    // cured by recomputing the input; a deterministic one (too large,
                    // undecodable) would fail the same way again.
                    TaskError::MoveFailed { cause, .. }
                        if cause.is_transient() && u32::from(t.loss_reruns) < loss_budget =>
                    {
                        t.loss_reruns = t.loss_reruns.saturating_add(1);
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

    /// Whether `err`, reported for task `i`, says only that an input it was dispatched
    /// ahead of will not be produced where it waited for it: `i` went ahead of its inputs
    /// without being pinned (pinned tasks keep the loss-budget rule), the cause is that the producer failed or is not there, and an input
    /// is indeed not finished. Such a task runs again without counting against its loss
    /// budget; the input's own attempts bound how often that happens.
    fn input_not_produced(&self, i: u32, err: &TaskError) -> bool {
        let t = &self.tasks[i];
        let TaskError::MoveFailed { cause, .. } = err else {
            return false;
        };
        t.flags.contains(TaskFlags::AHEAD)
            && matches!(
                cause,
                dagger_core::MoveFailure::SourceFailed | dagger_core::MoveFailure::NoHolder
            )
            && self
                .tasks
                .deps_of(i)
                .iter()
                .any(|&d| self.tasks[d].state != State::Finished)
    }

    // ---------------------------------------------------------------- output

    /// The next command to carry out, or `None` when there is nothing to do. When its queue
    /// is empty it first places every ready task and flushes the per-worker batches
    /// (`Release` before `Run` for each worker). Call until it returns `None` after every
    /// event. Amortised cost per task placed: O(admitted processors × inputs).
    pub fn poll_command(&mut self) -> Option<Command> {
        if self.outbox.is_empty() {
            self.schedule();
            self.progress_drains();
            self.mark_quiet();
            self.outbox.flush();
        }
        self.outbox.pop()
    }

    /// The next time [`Scheduler::handle_timeout`] has something to do, on the clock of the
    /// `now` arguments, or `None` when nothing waits for a deadline. Call it after
    /// [`Scheduler::poll_command`] returned `None` (placement may start a wait) and arm a
    /// timer for it; a deadline in the past means "at once". O(1).
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.next_deadline()
    }

    /// Time has reached `now`: every task whose
    /// [`no_processor_grace`](Config::no_processor_grace) ran out while no processor of
    /// the pool admits it fails with `TaskError::NoProcessor` (and its dependents with
    /// `DependencyFailed`); take the results with [`Scheduler::poll_command`]. Calling it
    /// early or more than once is harmless. O(expired tasks).
    pub fn handle_timeout(&mut self, now: Duration) {
        self.now = now;
        self.expire_starving();
    }

    /// The unfinished tasks dispatched to `worker` (running there or waiting there for
    /// their inputs), with what a fault policy needs to judge them if the worker is lost.
    /// O(processor slots of the pool + tasks dispatched there).
    pub fn dispatched_to(&self, worker: WorkerId) -> impl Iterator<Item = LostTask<'_>> {
        self.lost_tasks_of(worker)
    }

    /// Whether `task` is dispatched to `worker` and unfinished. O(1).
    pub fn is_dispatched_to(&self, task: TaskId, worker: WorkerId) -> bool {
        self.tasks.get(&task).is_some_and(|i| {
            let t = &self.tasks[i];
            t.state == State::Dispatched && self.placer.slot_proc(t.slot).worker == worker
        })
    }

    /// The workers holding a copy of a chunk (empty if none or unknown).
    pub fn holders(&self, chunk: ChunkId) -> &[WorkerId] {
        match self.tasks.get(&chunk.task()) {
            Some(i) => self.holders_of(i),
            None => &[],
        }
    }

    /// Why a task failed, or `None` if it has not failed (or is unknown, or its record was
    /// freed). A task that finished and whose result was then lost may fail later, when
    /// its recomputation fails; this is how the owner learns of it (the task does not
    /// complete a second time). O(1).
    pub fn failure(&self, task: TaskId) -> Option<&TaskError> {
        let i = self.tasks.get(&task)?;
        if self.tasks[i].state != State::Failed {
            return None;
        }
        self.errors.get(&i)
    }

    /// Marks the tasks about to be sent whose report nothing waits for
    /// ([`Config::quiet_reports`]): no client handle, every dependent dispatched (or done),
    /// not watched, and no ready task held back for room (a report frees room).
    fn mark_quiet(&mut self) {
        if !self.config.quiet_reports || self.tasks.counts.ready > 0 {
            return;
        }
        let tasks = &self.tasks;
        for run in self.outbox.runs_mut() {
            if run.watch {
                continue;
            }
            let Some(i) = tasks.get(&run.task) else {
                continue;
            };
            let t = &tasks[i];
            run.quiet = t.flags.contains(TaskFlags::CLIENT_RELEASED)
                && t.spec.as_ref().is_none_or(|s| {
                    s.dependents
                        .iter()
                        .all(|&d| !matches!(tasks[d].state, State::Waiting | State::Ready))
                });
        }
    }

    /// Notes where finished task `i` ran, as its worker reported: another processor of
    /// the same kind on the same worker than the one it was dispatched to, for a task
    /// that could run on any of them (`RunTask::any_thread`). Anything else is ignored.
    fn ran_on(&mut self, i: u32, proc: dagger_core::ProcId) {
        let slot = self.tasks[i].slot;
        let p = &self.placer;
        let (was, kind) = (p.slot_proc(slot), p.slots[slot as usize].kind);
        if was == proc || was.worker != proc.worker {
            return;
        }
        if let Some(s) = p.slot_index(proc) {
            if p.slots[s as usize].kind == kind {
                self.tasks[i].slot = s;
            }
        }
    }

    /// What is known about one task, or `None` if it was never submitted.
    pub fn task_info(&self, task: TaskId) -> Option<TaskInfo> {
        let i = self.tasks.get(&task)?;
        let t = &self.tasks[i];
        Some(TaskInfo {
            func: self.tasks.func_name(t.func).to_string(),
            proc: (t.dispatched_ns != NONE).then(|| self.placer.slot_proc(t.slot)),
            submitted: Duration::from_nanos(t.submitted_ns),
            dispatched: opt_time(t.dispatched_ns),
            finished: opt_time(t.finished_ns),
            run_ns: (t.run_ns != NONE).then_some(t.run_ns),
            attempts: t.attempts,
        })
    }

    /// When `task` was last dispatched and how many times it was, if it is dispatched to
    /// `worker` now (so a report from `worker` answers that dispatch); without the rest of
    /// [`Scheduler::task_info`] (no allocation). O(1).
    pub fn dispatch_to(&self, task: TaskId, worker: WorkerId) -> Option<(Duration, u32)> {
        let i = self.tasks.get(&task)?;
        let t = &self.tasks[i];
        if t.state != State::Dispatched || self.placer.slot_proc(t.slot).worker != worker {
            return None;
        }
        opt_time(t.dispatched_ns).map(|d| (d, t.attempts))
    }

    /// Counts of tasks by state. O(1).
    pub fn stats(&self) -> Stats {
        let c = &self.tasks.counts;
        Stats {
            submitted: c.submitted,
            finished: c.finished,
            failed: c.failed,
            running: c.running,
            ready: c.ready,
            waiting: c.waiting,
            live: c.live,
            recovery_examined: self.recovery_examined,
            placements: self.placer.placements,
        }
    }
}
