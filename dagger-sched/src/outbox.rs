//! The outbox: what the scheduler has decided and the owner has not taken yet. `Run`s and
//! `Release`s are collected per worker and turned into batched messages at a flush;
//! completions and events are queued as they happen.

use crate::{ClusterEvent, Command, Completion};
use dagger_core::wire::{RunTask, ToWorker};
use dagger_core::{ChunkId, TaskError, TaskId, WorkerId};
use std::collections::{BTreeMap, VecDeque};

#[derive(Default)]
pub(crate) struct Outbox {
    /// Run batches per worker, each at most `max_batch` long.
    runs: BTreeMap<WorkerId, Vec<Vec<RunTask>>>,
    releases: BTreeMap<WorkerId, Vec<ChunkId>>,
    out: VecDeque<Command>,
    /// A result of at least `Config::large_release_bytes` was released since the owner
    /// last asked ([`Scheduler::take_large_release`](crate::Scheduler::take_large_release)).
    pub(crate) large_released: bool,
}

impl Outbox {
    /// Queues a task for `worker`'s next `Run` batch, starting a new batch at `max` tasks.
    /// `expected` is how many tasks are likely to be queued before the next flush (this
    /// one included): a new batch is sized for them, up to `max`, so it does not grow.
    pub(crate) fn run(&mut self, worker: WorkerId, run: RunTask, max: usize, expected: usize) {
        let max = max.max(1);
        let batches = self.runs.entry(worker).or_default();
        match batches.last_mut() {
            Some(b) if b.len() < max => b.push(run),
            _ => {
                let mut b = Vec::with_capacity(expected.clamp(1, max));
                b.push(run);
                batches.push(b);
            }
        }
    }

    /// Queues a chunk for `worker`'s next `Release` batch.
    pub(crate) fn release(&mut self, worker: WorkerId, chunk: ChunkId) {
        self.releases.entry(worker).or_default().push(chunk);
    }

    /// Queues one message for `worker`, sent on its own (not batched).
    pub(crate) fn send(&mut self, worker: WorkerId, msg: ToWorker) {
        self.out.push_back(Command::Send { worker, msg });
    }

    /// Drops everything not yet sent to `worker` (it left).
    pub(crate) fn forget(&mut self, worker: WorkerId) {
        self.runs.remove(&worker);
        self.releases.remove(&worker);
    }

    /// Queues a task's completion.
    pub(crate) fn complete(&mut self, task: TaskId, result: Result<Completion, TaskError>) {
        self.out.push_back(Command::Complete { task, result });
    }

    /// Queues an event.
    pub(crate) fn event(&mut self, event: ClusterEvent) {
        self.out.push_back(Command::Event(event));
    }

    /// Whether no command is waiting to be taken.
    pub(crate) fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// The next command.
    pub(crate) fn pop(&mut self) -> Option<Command> {
        self.out.pop_front()
    }

    /// Every task queued for a `Run` batch and not flushed yet.
    pub(crate) fn runs_mut(&mut self) -> impl Iterator<Item = &mut RunTask> {
        self.runs.values_mut().flatten().flatten()
    }

    /// Turns the per-worker batches into `Send` commands: every `Release` batch first (in
    /// worker order), then every `Run` batch.
    pub(crate) fn flush(&mut self) {
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
