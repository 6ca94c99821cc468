//! Draining: a worker removed from the pool finishes what it was given and receives
//! nothing new, while every result that only it holds and that the graph still needs is
//! handed over to a worker that stays (the cheapest destination over the topology's
//! paths). A copy on another worker being drained, or drained and kept, does not count:
//! it may leave too. Once it runs nothing, holds no sole copy of a needed result, and no task
//! elsewhere may still fetch a result from it, the drain is over: the scheduler reports
//! [`ClusterEvent::WorkerDrained`] and the worker can be stopped without losing anything.
//!
//! A hand-over is a [`ToWorker::Replicate`] sent to the destination, which fetches the
//! chunk from the holders named (the draining worker first) and answers with
//! [`Scheduler::chunk_replicated`]; only then does the destination count as a holder. A
//! destination lost meanwhile, or a copy that fails, is retried on another destination;
//! after [`MAX_HANDOVER_FAILURES`] failed copies the drain gives up
//! ([`ClusterEvent::DrainFailed`]) and the owner removes the worker as lost, so that what
//! only it held is recomputed from lineage.

use crate::hash::FxMap;
use crate::scheduler::Scheduler;
use crate::task_table::{State, TaskFlags};
use crate::ClusterEvent;
use dagger_core::wire::ToWorker;
use dagger_core::{ChunkId, Incarnation, MoveFailure, ProcId, TaskId, WorkerId};
use std::collections::BTreeMap;
use std::time::Duration;

/// Failed copies after which a drain gives up on handing over what its worker holds.
pub const MAX_HANDOVER_FAILURES: u32 = 3;

/// Why workers cannot be drained.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DrainError {
    /// The worker is not in the pool (never joined, lost, or already removed).
    #[error("{worker} is not in the pool")]
    UnknownWorker {
        /// The worker.
        worker: WorkerId,
    },
    /// The worker is already being drained (or was drained and kept).
    #[error("{worker} is already draining")]
    AlreadyDraining {
        /// The worker.
        worker: WorkerId,
    },
    /// A task not yet dispatched could then run nowhere: every processor its scope admits
    /// is on a worker being removed. Nothing was changed.
    #[error("removing {workers:?} would leave {task} (scope {scope}) with no worker to run it")]
    WouldStrand {
        /// The workers asked to be removed.
        workers: Vec<WorkerId>,
        /// The first such task.
        task: TaskId,
        /// Its scope.
        scope: String,
    },
}

/// How far the drain of one worker is, from [`Scheduler::drain_progress`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainProgress {
    /// Tasks dispatched to it and not finished.
    pub running: usize,
    /// Needed results of which it holds a copy and no worker that stays holds one (only
    /// workers being drained, or drained and kept, do), hand-overs in flight included.
    pub sole_copies: usize,
    /// Of those, the ones being copied to another worker now.
    pub handing_over: usize,
    /// Results it holds that a task dispatched elsewhere and not finished may still fetch
    /// from it.
    pub awaited: usize,
    /// Results handed over so far.
    pub moved_chunks: u32,
    /// Their bytes.
    pub moved_bytes: u64,
}

/// One worker being drained.
#[derive(Default)]
pub(crate) struct Drain {
    moved_chunks: u32,
    moved_bytes: u64,
    failures: u32,
    /// Destinations whose copy from this worker failed: asked again only when no other
    /// destination is left.
    failed_to: Vec<WorkerId>,
}

/// The drains in progress.
#[derive(Default)]
pub(crate) struct Drains {
    /// By worker (ordered, so that what the scheduler emits is deterministic).
    active: BTreeMap<WorkerId, Drain>,
    /// Hand-overs in flight: task index → (draining worker, destination).
    handing: FxMap<u32, (WorkerId, WorkerId)>,
    /// Copies a destination stored after the result was lost, while the task that
    /// produces it again runs there: task index → destination. A release sent now could
    /// reach it after the new result and drop that; it is sent once the task is no longer
    /// running there and the new result did not replace the copy.
    stale: FxMap<u32, WorkerId>,
    /// Workers whose drain is over but that stay in the pool, receiving nothing (the
    /// owner keeps them): should a worker holding a copy they handed over be lost, they
    /// hand the result over again, so that stopping them still loses nothing.
    kept: std::collections::BTreeSet<WorkerId>,
    /// A worker was lost since the kept workers were last looked at.
    kept_dirty: bool,
    /// Something that may end or advance a drain happened since the last look.
    pub(crate) dirty: bool,
}

impl Drains {
    /// Whether any drain is in progress.
    #[inline]
    pub(crate) fn any(&self) -> bool {
        !self.active.is_empty()
    }
}

impl Scheduler {
    /// Starts draining `workers`, all or none: from now on they receive no new task (also
    /// none dispatched early), finish what they were given, and hand every needed result
    /// that only they hold to a worker that stays. [`ClusterEvent::WorkerDrained`] reports
    /// each one whose drain is over; the owner may then stop it (with
    /// [`Scheduler::worker_lost`] and a [`LostReason::Removed`](dagger_core::LostReason)
    /// reason) or keep it out of the pool's work. A drained worker that is kept holds
    /// copies other workers also hold; it is asked for them last.
    ///
    /// Refused, with nothing changed, when a worker is unknown or already draining, or
    /// when a task not yet dispatched would be left without any worker its scope admits
    /// ([`DrainError::WouldStrand`]). Costs O(live tasks) for that check, plus the
    /// hand-overs.
    pub fn drain(&mut self, now: Duration, workers: &[WorkerId]) -> Result<(), DrainError> {
        self.now = now;
        for &w in workers {
            if self.topology.worker(w).is_none() {
                return Err(DrainError::UnknownWorker { worker: w });
            }
            if self.placer.draining.contains(&w) {
                return Err(DrainError::AlreadyDraining { worker: w });
            }
        }
        for &w in workers {
            self.placer.draining.insert(w);
        }
        self.placer.dirty = true;
        if let Some((task, scope)) = self.stranded_task(workers) {
            for &w in workers {
                self.placer.draining.remove(&w);
            }
            self.placer.dirty = true;
            return Err(DrainError::WouldStrand {
                workers: workers.to_vec(),
                task,
                scope,
            });
        }
        for &w in workers {
            self.drains.active.insert(w, Drain::default());
        }
        self.drains.dirty = true;
        Ok(())
    }

    /// Whether `worker` is being drained, or was drained and kept out of the pool's work.
    pub fn is_draining(&self, worker: WorkerId) -> bool {
        self.placer.draining.contains(&worker)
    }

    /// How far the drain of `worker` is; `None` when it is not being drained (never was,
    /// or its drain is over). O(results it holds).
    pub fn drain_progress(&self, worker: WorkerId) -> Option<DrainProgress> {
        let d = self.drains.active.get(&worker)?;
        let mut p = DrainProgress {
            running: self.running_on(worker),
            moved_chunks: d.moved_chunks,
            moved_bytes: d.moved_bytes,
            ..DrainProgress::default()
        };
        for i in self.held_by(worker) {
            if self.sole_needed_copy(i, worker) {
                p.sole_copies += 1;
                if self.drains.handing.contains_key(&i) {
                    p.handing_over += 1;
                }
            }
            if self.tasks[i].pending_fetch > 0 {
                p.awaited += 1;
            }
        }
        Some(p)
    }

    /// The first task, not yet dispatched, that no processor of a worker accepting work
    /// admits now that `workers` drain, though a processor of theirs does (a task already
    /// waiting for a worker to join, because its scope names only workers drained
    /// earlier, is not this drain's doing), with its scope. O(live tasks + distinct
    /// scopes × processors).
    fn stranded_task(&mut self, workers: &[WorkerId]) -> Option<(TaskId, String)> {
        self.refresh_table();
        let mut checked: FxMap<u32, bool> = FxMap::default();
        let pending: Vec<(u32, u32)> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.state, State::Waiting | State::Ready))
            .map(|(i, t)| (i, t.scope))
            .collect();
        for (i, s) in pending {
            let stranded = match checked.get(&s) {
                Some(&b) => b,
                None => {
                    let b = self.scope_only_on_draining(s) && self.scope_admits_any(s, workers);
                    checked.insert(s, b);
                    b
                }
            };
            if stranded {
                let scope = self.placer.scopes[s as usize].scope.to_string();
                return Some((self.tasks[i].id, scope));
            }
        }
        None
    }

    /// Whether scope `s` admits a live processor of one of `workers`. O(processor slots).
    fn scope_admits_any(&self, s: u32, workers: &[WorkerId]) -> bool {
        let scope = &self.placer.scopes[s as usize].scope;
        self.placer
            .slots
            .iter()
            .filter(|slot| slot.alive && workers.contains(&slot.id.worker))
            .any(|slot| {
                self.topology
                    .proc(slot.id)
                    .is_some_and(|info| scope.admits(info))
            })
    }

    /// Tasks dispatched to `worker` and not finished. O(processor slots).
    fn running_on(&self, worker: WorkerId) -> usize {
        self.placer
            .slots
            .iter()
            .filter(|s| s.id.worker == worker)
            .map(|s| s.running.len())
            .sum()
    }

    /// The results `worker` holds (first copies, then further ones).
    fn held_by(&self, worker: WorkerId) -> impl Iterator<Item = u32> + '_ {
        let firsts = self.data.held_by.get(&worker).into_iter().flatten();
        let others = self.data.replica_by.get(&worker).into_iter().flatten();
        firsts.chain(others).copied()
    }

    /// Whether `worker` holds a copy of task `i`'s result that the graph still needs (the
    /// scheduler keeps no inline copy) and no worker that stays holds one: every other
    /// holder is being drained too, or was drained and kept (its owner may stop it at any
    /// time), so the copy must be handed over before `worker` may leave.
    fn sole_needed_copy(&self, i: u32, worker: WorkerId) -> bool {
        let t = &self.tasks[i];
        if t.state != State::Finished
            || !t.flags.contains(TaskFlags::HELD)
            || t.flags.contains(TaskFlags::INLINE)
        {
            return false;
        }
        let holders = self.holders_of(i);
        holders.contains(&worker) && holders.iter().all(|h| self.placer.draining.contains(h))
    }

    /// Advances every drain: starts the hand-overs still needed and reports the drains
    /// that are over. Called before the scheduler's commands are handed out, when
    /// something happened since the last call. O(results the draining workers hold).
    pub(crate) fn progress_drains(&mut self) {
        if !self.drains.stale.is_empty() {
            self.settle_stale_copies();
        }
        if self.drains.kept_dirty {
            self.drains.kept_dirty = false;
            self.rehand_kept();
        }
        if !self.drains.dirty || !self.drains.any() {
            return;
        }
        self.drains.dirty = false;
        // Hand-overs of results their source no longer holds alone (released, fetched by
        // another worker, or lost and being recomputed meanwhile) are moot: their answers
        // are handled as copies nobody asked for.
        let moot: Vec<u32> = self
            .drains
            .handing
            .iter()
            .filter(|&(&i, &(from, _))| !self.sole_needed_copy(i, from))
            .map(|(&i, _)| i)
            .collect();
        for i in moot {
            self.drains.handing.remove(&i);
        }
        let workers: Vec<WorkerId> = self.drains.active.keys().copied().collect();
        for w in workers {
            let mut over = self.running_on(w) == 0;
            let held: Vec<u32> = self.held_by(w).collect();
            for i in held {
                if self.tasks[i].pending_fetch > 0 {
                    over = false;
                }
                if !self.sole_needed_copy(i, w) {
                    continue;
                }
                over = false;
                if !self.drains.handing.contains_key(&i) {
                    self.start_handover(i, w);
                }
            }
            if over {
                let Some(d) = self.drains.active.remove(&w) else {
                    continue;
                };
                // Copies still in flight from it are of results it no longer holds alone
                // (released, or fetched by another worker meanwhile): their answers are
                // handled as copies nobody asked for.
                self.drains.handing.retain(|_, (from, _)| *from != w);
                self.drains.kept.insert(w);
                self.outbox.event(ClusterEvent::WorkerDrained {
                    worker: w,
                    moved_chunks: d.moved_chunks,
                    moved_bytes: d.moved_bytes,
                });
            }
        }
    }

    /// Asks the cheapest destination (a worker with task processors that accepts work,
    /// fewest hand-overs in flight among equals, one whose copy from `from` failed only
    /// when there is no other) to copy task `i`'s result from `from`.
    /// With no destination the result stays where it is until one joins.
    fn start_handover(&mut self, i: u32, from: WorkerId) {
        let bytes = self.tasks[i].size;
        let costs = dagger_move::costs_from(&self.topology, ProcId::root(from), bytes);
        let mut inflight: FxMap<WorkerId, u32> = FxMap::default();
        for &(_, to) in self.drains.handing.values() {
            *inflight.entry(to).or_default() += 1;
        }
        let failed: &[WorkerId] = self.drains.active.get(&from).map_or(&[], |d| &d.failed_to);
        let best = self
            .topology
            .workers()
            .map(|w| w.worker)
            .filter(|&w| w != from && !self.placer.draining.contains(&w))
            .filter(|&w| self.runs_tasks(w))
            .map(|w| {
                let cost = costs.get(&ProcId::root(w)).copied().unwrap_or(u64::MAX);
                let inflight = inflight.get(&w).copied().unwrap_or(0);
                (failed.contains(&w), cost, inflight, w)
            })
            .min();
        let Some((_, _, _, to)) = best else {
            return;
        };
        let chunk = self.tasks[i].id.chunk();
        self.drains.handing.insert(i, (from, to));
        self.outbox.send(
            to,
            ToWorker::Replicate {
                chunk,
                from: vec![from],
            },
        );
    }

    /// Whether `worker` has a task processor (the driver's own root, when the driver runs
    /// no tasks, holds nothing).
    fn runs_tasks(&self, worker: WorkerId) -> bool {
        self.topology
            .worker(worker)
            .is_some_and(|w| w.procs.iter().any(|p| !p.id.is_root()))
    }

    /// `worker` (in `incarnation`) reports how a copy of `chunk` it was asked to keep
    /// ([`ToWorker::Replicate`]) ended. On success it becomes a holder — or, if the
    /// result is no longer needed, it is told to release the copy at once. Ignored from a
    /// stale incarnation. O(1) plus what the drain it belongs to does next.
    pub fn chunk_replicated(
        &mut self,
        now: Duration,
        worker: WorkerId,
        incarnation: Incarnation,
        chunk: ChunkId,
        result: Result<(), MoveFailure>,
    ) {
        self.now = now;
        if self.topology.incarnation(worker) != Some(incarnation) {
            return;
        }
        let i = self.tasks.get(&chunk.task());
        let handover = i.and_then(|i| match self.drains.handing.get(&i) {
            Some(&(from, to)) if to == worker => Some((i, from)),
            _ => None,
        });
        if let Some((i, _)) = handover {
            self.drains.handing.remove(&i);
            self.drains.dirty = true;
        }
        match result {
            Ok(()) => {
                let needed = i.is_some_and(|i| {
                    let t = &self.tasks[i];
                    t.state == State::Finished && t.flags.contains(TaskFlags::HELD)
                });
                match i {
                    Some(i) if needed => {
                        self.add_holder(i, worker);
                        if let Some((_, from)) = handover {
                            let size = self.tasks[i].size;
                            if let Some(d) = self.drains.active.get_mut(&from) {
                                d.moved_chunks += 1;
                                d.moved_bytes = d.moved_bytes.saturating_add(size);
                                d.failures = 0;
                            }
                        }
                    }
                    // Running there again (the result was lost meanwhile): released later,
                    // unless the new result replaces it.
                    Some(i) if self.is_dispatched_to(chunk.task(), worker) => {
                        self.drains.stale.insert(i, worker);
                    }
                    // Released, freed or lost meanwhile: nothing would ever free the copy.
                    _ => self.outbox.release(worker, chunk),
                }
            }
            Err(cause) => {
                let Some((i, from)) = handover else {
                    return;
                };
                // A result released (or recomputed) meanwhile is no failure of the drain.
                if !self.sole_needed_copy(i, from) {
                    return;
                }
                let Some(d) = self.drains.active.get_mut(&from) else {
                    // A kept worker tries again (each try is a round trip, not a spin).
                    self.drains.kept_dirty |= self.drains.kept.contains(&from);
                    return;
                };
                d.failures += 1;
                if !d.failed_to.contains(&worker) {
                    d.failed_to.push(worker);
                }
                if d.failures >= MAX_HANDOVER_FAILURES {
                    self.drains.active.remove(&from);
                    self.drains.handing.retain(|_, (f, _)| *f != from);
                    self.outbox.event(ClusterEvent::DrainFailed {
                        worker: from,
                        task: chunk.task(),
                        cause,
                    });
                }
            }
        }
    }

    /// Releases the stale copies whose task no longer runs on their worker, unless the
    /// task's new result there replaced them. O(stale copies).
    fn settle_stale_copies(&mut self) {
        let settled: Vec<(u32, WorkerId)> = self
            .drains
            .stale
            .iter()
            .filter(|&(&i, &w)| !self.is_dispatched_to(self.tasks[i].id, w))
            .map(|(&i, &w)| (i, w))
            .collect();
        for (i, w) in settled {
            self.drains.stale.remove(&i);
            let replaced =
                self.tasks[i].state == State::Finished && self.holders_of(i).contains(&w);
            if !replaced {
                self.outbox.release(w, self.tasks[i].id.chunk());
            }
        }
    }

    /// `worker` left the pool: its drain, if any, is over (the owner reports how), and
    /// hand-overs to or from it are forgotten (those to it start again elsewhere).
    pub(crate) fn forget_drains_of(&mut self, worker: WorkerId) {
        self.drains.stale.retain(|_, w| *w != worker);
        self.drains.kept.remove(&worker);
        // A copy a kept worker handed over may have been there.
        self.drains.kept_dirty = !self.drains.kept.is_empty();
        if self.drains.handing.is_empty() && !self.drains.any() {
            return;
        }
        self.drains.active.remove(&worker);
        self.drains
            .handing
            .retain(|_, (from, to)| *from != worker && *to != worker);
        self.drains.dirty = true;
    }

    /// Drained workers kept in the pool hand over again the needed results they hold alone
    /// (after the loss of a worker their copy had gone to). O(results they hold).
    fn rehand_kept(&mut self) {
        let kept: Vec<WorkerId> = self.drains.kept.iter().copied().collect();
        for w in kept {
            let held: Vec<u32> = self.held_by(w).collect();
            for i in held {
                if self.sole_needed_copy(i, w) && !self.drains.handing.contains_key(&i) {
                    self.start_handover(i, w);
                }
            }
        }
    }

    /// `worker` accepts work again: its drain, if any, is called off (hand-overs in
    /// flight still complete, as copies nobody asked for).
    pub(crate) fn cancel_drain(&mut self, worker: WorkerId) {
        self.drains.active.remove(&worker);
        self.drains.kept.remove(&worker);
        self.drains.handing.retain(|_, (from, _)| *from != worker);
    }

    /// The hand-overs in flight, checked by the invariants: each names a draining source
    /// and another destination. (Its task may have left the finished state since: a
    /// result recomputed while it was being copied; the next pass forgets it.)
    pub(crate) fn check_drains(&self) -> Result<(), String> {
        for (&i, &(from, to)) in &self.drains.handing {
            if !self.drains.active.contains_key(&from) && !self.drains.kept.contains(&from) {
                return Err(format!(
                    "hand-over of task {i} from {from}, which is not draining"
                ));
            }
            if from == to {
                return Err(format!("hand-over of task {i} from {from} to itself"));
            }
            if i >= self.tasks.len() {
                return Err(format!("hand-over of unknown task {i}"));
            }
        }
        for w in self.drains.active.keys().chain(&self.drains.kept) {
            if !self.placer.draining.contains(w) {
                return Err(format!("{w} drains but accepts work"));
            }
        }
        Ok(())
    }
}
