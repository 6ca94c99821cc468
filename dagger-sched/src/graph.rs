//! Submission and the dependency graph: validating and wiring a batch, and the state
//! transitions that keep dependents' counts of unmet inputs right.

use crate::edges::Edges;
use crate::hash::FxMap;
use crate::scheduler::Scheduler;
use crate::task_table::{ns, satisfies, Args, SmallArg, Spec, State, Task, TaskFlags, NONE};
use crate::Completion;
use dagger_core::{GraphError, TaskError, TaskId, TaskSpec, WorkerId};
use std::time::Duration;

impl Scheduler {
    /// Validates a batch: no repeated or known ids, every dependency known (and not freed)
    /// or in the batch, no cycle. Returns the batch's id → position map.
    pub(crate) fn check_batch(&self, tasks: &[TaskSpec]) -> Result<FxMap<TaskId, u32>, GraphError> {
        let mut batch: FxMap<TaskId, u32> = FxMap::default();
        batch.reserve(tasks.len());
        for (k, t) in tasks.iter().enumerate() {
            if self.tasks.contains(&t.id) || batch.insert(t.id, k as u32).is_some() {
                return Err(GraphError::DuplicateTask { task: t.id });
            }
        }
        let mut forward = false;
        for (k, t) in tasks.iter().enumerate() {
            for d in t.deps() {
                match batch.get(&d) {
                    Some(&j) => forward |= j as usize >= k,
                    None => match self.tasks.get(&d) {
                        Some(i) if !self.tasks[i].flags.contains(TaskFlags::DEAD) => {}
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
    pub(crate) fn accept(
        &mut self,
        now: Duration,
        tasks: Vec<TaskSpec>,
        batch: FxMap<TaskId, u32>,
    ) {
        self.now = now;
        let base = self.tasks.len();
        let now_ns = ns(now);
        let n = tasks.len();
        self.tasks.reserve(n);
        // The dependencies of one task before sorting (reused: most fit inline).
        let mut scratch = Vec::new();
        for mut t in tasks {
            let (func, new_func) = self.tasks.intern_func(std::mem::take(&mut t.func));
            if new_func {
                self.placer.add_func();
            }
            scratch.clear();
            for d in t.deps() {
                scratch.push(match batch.get(&d) {
                    Some(&j) => base + j,
                    None => self.tasks.get(&d).expect("checked by check_batch"),
                });
            }
            let args = Args::new(std::mem::take(&mut t.args), &scratch);
            let deps = Edges::sorted_unique(&mut scratch);
            let scope = self.placer.intern_scope(t.options.scope);
            let early = self.placer.scopes[scope as usize].early;
            self.tasks.push(Task {
                id: t.id,
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
                link: 0,
                consumers: 0,
                live_dependents: 0,
                pending_fetch: 0,
                slot: 0,
                loss_reruns: 0,
                loss_retries: crate::task_table::loss_retries_of(t.options.loss_retries),
                state: State::Waiting,
                flags: if early {
                    TaskFlags::EARLY
                } else {
                    TaskFlags::empty()
                },
                small_result: SmallArg::ABSENT,
                spec: Some(Box::new(Spec {
                    args,
                    deps,
                    dependents: Edges::default(),
                })),
            });
            let counts = &mut self.tasks.counts;
            counts.waiting += 1;
            counts.submitted += 1;
            counts.live += 1;
        }

        // Wire dependencies.
        for x in base..self.tasks.len() {
            let deps = self.tasks.deps_of(x);
            for d in deps {
                let dt = &mut self.tasks[d];
                dt.consumers += 1;
                dt.live_dependents += 1;
                if let Some(s) = dt.spec.as_mut() {
                    s.dependents.push(x);
                }
            }
        }

        // Compute readiness; fail tasks with failed inputs; recompute freed inputs.
        for x in base..self.tasks.len() {
            if self.tasks[x].state != State::Waiting {
                continue; // failed by a cascade from an earlier task of this batch
            }
            let early = self.tasks[x].flags.contains(TaskFlags::EARLY);
            let deps = self.tasks.deps_of(x);
            let mut unmet = 0;
            let mut failed_dep = None;
            let mut recompute = Vec::new();
            for &d in &deps {
                let dt = &self.tasks[d];
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
                    task: self.tasks[x].id,
                    dependency: dep_id,
                    cause: Box::new(cause),
                };
                self.fail(x, err);
                continue;
            }
            self.tasks[x].link = unmet;
            if unmet == 0 {
                self.make_ready(x);
            } else if !early && self.config.dispatch_ahead {
                // Its inputs may already be dispatched: it may go ahead of them.
                self.placer.ahead.push(x);
            }
            for d in recompute {
                self.requeue(d);
            }
        }
    }

    pub(crate) fn complete(&mut self, i: u32, result: Result<Completion, TaskError>) {
        let t = &mut self.tasks[i];
        t.flags.insert(TaskFlags::COMPLETED);
        let task = t.id;
        self.outbox.complete(task, result);
    }

    /// Changes a task's state, keeps the counters, and tells dependents whose readiness
    /// changes.
    pub(crate) fn set_state(&mut self, i: u32, new: State) {
        let old = self.tasks[i].state;
        if old == new {
            return;
        }
        *self.tasks.counts.slot(old) -= 1;
        *self.tasks.counts.slot(new) += 1;
        self.tasks[i].state = new;
        if old == State::Ready {
            self.stop_starving(i);
        }
        let early_changes = satisfies(true, old) != satisfies(true, new);
        let normal_changes = satisfies(false, old) != satisfies(false, new);
        if !early_changes && !normal_changes {
            return;
        }
        let dependents = match self.tasks[i].spec.as_mut() {
            Some(s) if !s.dependents.is_empty() => std::mem::take(&mut s.dependents),
            _ => return,
        };
        for &u in &dependents {
            let ut = &mut self.tasks[u];
            if !matches!(ut.state, State::Waiting | State::Ready) {
                continue;
            }
            let early = ut.flags.contains(TaskFlags::EARLY);
            let before = satisfies(early, old);
            let after = satisfies(early, new);
            if before && !after {
                ut.link += 1;
                if ut.state == State::Ready {
                    self.set_state(u, State::Waiting);
                }
            } else if !before && after {
                ut.link = ut.link.saturating_sub(1);
                if ut.link == 0 && ut.state == State::Waiting {
                    self.make_ready(u);
                    continue;
                }
            }
            // An input was dispatched or finished: a dependent still waiting may now be
            // placed where its other unfinished inputs run (see `place_ahead`).
            let ut = &self.tasks[u];
            if !early
                && ut.state == State::Waiting
                && matches!(new, State::Dispatched | State::Finished)
                && self.config.dispatch_ahead
            {
                self.placer.ahead.push(u);
            }
        }
        if let Some(s) = self.tasks[i].spec.as_mut() {
            s.dependents = dependents;
        }
    }

    /// Lists, as candidates to go ahead of their inputs, the waiting dependents of the
    /// dependents of `i` that were dispatched ahead. O(those dependents).
    fn push_ahead_beyond(&mut self, i: u32) {
        let Some(spec) = self.tasks[i].spec.as_ref() else {
            return;
        };
        for &u in &spec.dependents {
            let ut = &self.tasks[u];
            if ut.state != State::Dispatched || !ut.flags.contains(TaskFlags::AHEAD) {
                continue;
            }
            let Some(us) = ut.spec.as_ref() else {
                continue;
            };
            for &v in &us.dependents {
                if self.tasks[v].state == State::Waiting {
                    self.placer.ahead.push(v);
                }
            }
        }
    }

    pub(crate) fn make_ready(&mut self, i: u32) {
        self.set_state(i, State::Ready);
        self.push_ready(i);
    }

    /// A dispatched task finished with a result held by `worker`.
    pub(crate) fn finish(&mut self, i: u32, worker: WorkerId, run_ns: u64, size: u64) {
        self.undispatch(i);
        let t = &mut self.tasks[i];
        t.run_ns = run_ns;
        t.finished_ns = ns(self.now);
        t.size = size;
        self.set_holder(i, worker);
        self.set_state(i, State::Finished);
        if self.config.dispatch_ahead {
            // Room appeared where `i` ran: the next tasks of chains that went ahead of it
            // may find it (the dependents of its dependents dispatched ahead).
            self.push_ahead_beyond(i);
        }
        for d in self.tasks.deps_of(i) {
            let dt = &mut self.tasks[d];
            dt.consumers = dt.consumers.saturating_sub(1);
            self.maybe_release(d);
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
