//! Recovery: a lost worker's tasks run again and its only copies of needed results are
//! recomputed from lineage; failed tasks are retried while their budget lasts, and a
//! failure cascades to every transitive dependent.

use crate::scheduler::Scheduler;
use crate::task_table::{ns, State, TaskFlags, MAX_LOSS_BUDGET, NONE};
use crate::{ClusterEvent, LossVerdict, LostTask};
use dagger_core::{TaskError, TaskId, WorkerId};

impl Scheduler {
    /// The loss budget of task `i`: its own, or the configured default.
    pub(crate) fn loss_budget(&self, i: u32) -> u32 {
        self.tasks[i]
            .own_loss_retries()
            .unwrap_or(self.config.default_loss_retries)
            .min(MAX_LOSS_BUDGET)
    }

    /// The unfinished tasks dispatched to `worker`, from its processor slots' lists.
    /// O(processor slots of the pool + tasks dispatched there).
    pub(crate) fn lost_tasks_of(&self, worker: WorkerId) -> impl Iterator<Item = LostTask<'_>> {
        self.placer
            .slots
            .iter()
            .filter(move |s| s.id.worker == worker)
            .flat_map(|s| s.running.iter())
            .map(move |&i| self.lost_task(i))
    }

    /// Task `i` as a fault policy judges it.
    fn lost_task(&self, i: u32) -> LostTask<'_> {
        let t = &self.tasks[i];
        LostTask {
            task: t.id,
            func: self.tasks.func_name(t.func),
            loss_reruns: u32::from(t.loss_reruns),
            loss_retries: t.own_loss_retries(),
        }
    }

    /// Everything a lost worker held or ran: copies are forgotten, its tasks run again or
    /// fail as `verdict` says, and needed results that only it held are recomputed. The
    /// worker has already left the topology.
    pub(crate) fn recover_worker(
        &mut self,
        worker: WorkerId,
        verdict: &mut dyn FnMut(&LostTask<'_>) -> LossVerdict,
    ) {
        self.placer.dirty = true;
        self.placer.draining.remove(&worker);
        self.forget_drains_of(worker);
        self.outbox.forget(worker);

        // Copies held there are gone.
        let (mut emptied, held) = self.drop_holder(worker);

        // Tasks running there run again.
        let mut lost = self.take_running(worker);
        lost.sort_unstable();
        self.recovery_examined += held + lost.len() as u64;
        for i in lost {
            if self.tasks[i].state != State::Dispatched {
                continue;
            }
            let v = verdict(&self.lost_task(i));
            let t = &mut self.tasks[i];
            t.loss_reruns = t.loss_reruns.saturating_add(1);
            match v {
                LossVerdict::Retry { watch } => {
                    t.flags.set(TaskFlags::WATCH, watch);
                    self.retry(i);
                }
                LossVerdict::Fail(err) => self.fail(i, err),
            }
        }

        // Needed results whose only copy was there are recomputed.
        emptied.sort_unstable();
        for i in emptied {
            let t = &self.tasks[i];
            if t.state == State::Finished
                && !self.has_inline(i)
                && (t.consumers > 0 || !t.flags.contains(TaskFlags::CLIENT_RELEASED))
            {
                self.requeue(i);
            }
        }
    }

    /// The task that failed first behind failed task `i`, and its error.
    pub(crate) fn root_failure(&self, i: u32) -> (TaskId, TaskError) {
        let id = self.tasks[i].id;
        match self.errors.get(&i) {
            Some(TaskError::DependencyFailed {
                dependency, cause, ..
            }) => (*dependency, (**cause).clone()),
            Some(e) => (id, e.clone()),
            None => (id, TaskError::Shutdown { task: id }),
        }
    }

    /// Fails `root` with `err` and every transitive dependent with `DependencyFailed`.
    pub(crate) fn fail(&mut self, root: u32, err: TaskError) {
        let root_id = self.tasks[root].id;
        let (dep_id, cause) = match &err {
            TaskError::DependencyFailed {
                dependency, cause, ..
            } => (*dependency, (**cause).clone()),
            e => (root_id, e.clone()),
        };
        let mut stack = vec![(root, Some(err))];
        while let Some((x, e)) = stack.pop() {
            let t = &self.tasks[x];
            if t.state.terminal() {
                continue;
            }
            if t.state == State::Dispatched {
                self.undispatch(x);
            }
            let id = self.tasks[x].id;
            let e = e.unwrap_or_else(|| TaskError::DependencyFailed {
                task: id,
                dependency: dep_id,
                cause: Box::new(cause.clone()),
            });
            self.tasks[x].finished_ns = ns(self.now);
            self.set_state(x, State::Failed);
            self.errors.insert(x, e.clone());
            if !self.tasks[x].flags.contains(TaskFlags::COMPLETED) {
                self.complete(x, Err(e));
            }
            for d in self.tasks.deps_of(x) {
                let dt = &mut self.tasks[d];
                dt.consumers = dt.consumers.saturating_sub(1);
                self.maybe_release(d);
            }
            if let Some(s) = self.tasks[x].spec.as_ref() {
                for &u in &s.dependents {
                    if !self.tasks[u].state.terminal() {
                        stack.push((u, None));
                    }
                }
            }
            self.maybe_release(x);
        }
    }

    /// Puts task `i` back in line for another attempt and tells subscribers.
    pub(crate) fn retry(&mut self, i: u32) {
        self.requeue(i);
        let t = &self.tasks[i];
        let ev = ClusterEvent::TaskRetried {
            task: t.id,
            attempt: t.attempts + 1,
        };
        self.outbox.event(ev);
    }

    /// Puts a dispatched or finished task back to waiting, recursively recomputing any of
    /// its inputs whose result is gone. A task with an input that failed meanwhile (a
    /// finished task's input may fail after it was used, when its own recomputation fails)
    /// cannot run again: it fails with `DependencyFailed` naming the root failure, and so
    /// do its dependents.
    pub(crate) fn requeue(&mut self, i: u32) {
        let mut stack = vec![i];
        while let Some(x) = stack.pop() {
            let t = &self.tasks[x];
            // An input pushed to be recomputed may be needed no more when its turn comes:
            // the dependent that needed it failed meanwhile (through another input that
            // had failed), and may have freed it with its lineage. Recomputing it then
            // would run it without its arguments.
            if t.flags.contains(TaskFlags::DEAD)
                || (x != i && t.consumers == 0 && t.flags.contains(TaskFlags::CLIENT_RELEASED))
            {
                continue;
            }
            let old = self.tasks[x].state;
            match old {
                State::Dispatched => self.undispatch(x),
                State::Finished => {
                    for d in self.tasks.deps_of(x) {
                        self.tasks[d].consumers += 1;
                    }
                    self.release_holders(x);
                    self.drop_inline(x);
                }
                _ => continue,
            }
            self.tasks[x].finished_ns = NONE;
            // Whether it may go ahead of its inputs again is decided afresh.
            self.tasks[x].flags.remove(TaskFlags::AHEAD);
            self.set_state(x, State::Waiting);
            let deps = self.tasks.deps_of(x);
            if let Some(&d) = deps.iter().find(|&&d| self.tasks[d].state == State::Failed) {
                let (dependency, cause) = self.root_failure(d);
                let err = TaskError::DependencyFailed {
                    task: self.tasks[x].id,
                    dependency,
                    cause: Box::new(cause),
                };
                self.fail(x, err);
                continue;
            }
            let early = self.tasks[x].flags.contains(TaskFlags::EARLY);
            let mut unmet = 0;
            for d in deps {
                let ds = self.tasks[d].state;
                if !crate::task_table::satisfies(early, ds) {
                    unmet += 1;
                }
                if ds == State::Finished && !self.available(d) {
                    stack.push(d);
                }
            }
            self.tasks[x].link = unmet;
            if unmet == 0 {
                self.make_ready(x);
            }
        }
    }
}
