//! The data directory: where each task's result is (its holders, or the scheduler's inline
//! copy), and the accounting that decides when copies and records can be released.
//!
//! The first holder of a result lives in the task record (`Task::holder`, valid with the
//! `HELD` flag); only results held by more than one worker have a replica list here.

use crate::hash::{FxMap, FxSet};
use crate::scheduler::Scheduler;
use crate::task_table::{State, TaskFlags};
use dagger_core::WorkerId;

#[derive(Default)]
pub(crate) struct DataDir {
    /// Results kept inline by the scheduler, by task index.
    pub(crate) inline: FxMap<u32, Vec<u8>>,
    /// Full holder lists of results held by more than one worker.
    pub(crate) replicas: FxMap<u32, Vec<WorkerId>>,
    /// The results each worker holds a copy of (the inverse of the holder lists), so a
    /// lost worker costs in proportion to what it held.
    pub(crate) held_by: FxMap<WorkerId, FxSet<u32>>,
}

impl Scheduler {
    /// Whether task `i`'s result exists somewhere (on a worker or inline).
    pub(crate) fn available(&self, i: u32) -> bool {
        self.tasks[i].flags.contains(TaskFlags::HELD) || self.data.inline.contains_key(&i)
    }

    /// The workers holding task `i`'s result.
    pub(crate) fn holders_of(&self, i: u32) -> &[WorkerId] {
        let t = &self.tasks[i];
        if !t.flags.contains(TaskFlags::HELD) {
            return &[];
        }
        if !self.data.replicas.is_empty() {
            if let Some(v) = self.data.replicas.get(&i) {
                return v;
            }
        }
        std::slice::from_ref(&t.holder)
    }

    /// Makes `w` the only holder of task `i`'s result.
    pub(crate) fn set_holder(&mut self, i: u32, w: WorkerId) {
        if self.tasks[i].flags.contains(TaskFlags::HELD) {
            self.unindex_holders(i);
        }
        if !self.data.replicas.is_empty() {
            self.data.replicas.remove(&i);
        }
        let t = &mut self.tasks[i];
        t.holder = w;
        t.flags.insert(TaskFlags::HELD);
        self.data.held_by.entry(w).or_default().insert(i);
    }

    /// Adds `w` to the holders of task `i`'s result.
    pub(crate) fn add_holder(&mut self, i: u32, w: WorkerId) {
        let t = &self.tasks[i];
        if !t.flags.contains(TaskFlags::HELD) {
            return self.set_holder(i, w);
        }
        let first = t.holder;
        if first == w {
            return;
        }
        let list = self.data.replicas.entry(i).or_insert_with(|| vec![first]);
        if !list.contains(&w) {
            list.push(w);
            self.data.held_by.entry(w).or_default().insert(i);
        }
    }

    /// Removes task `i` from the per-worker index of every worker holding its result.
    fn unindex_holders(&mut self, i: u32) {
        let DataDir {
            held_by, replicas, ..
        } = &mut self.data;
        let first = [self.tasks[i].holder];
        let holders = replicas.get(&i).map_or(&first[..], |v| &v[..]);
        for h in holders {
            if let Some(set) = held_by.get_mut(h) {
                set.remove(&i);
            }
        }
    }

    /// Tells every holder of task `i`'s result to drop it and forgets them.
    pub(crate) fn release_holders(&mut self, i: u32) {
        if !self.tasks[i].flags.contains(TaskFlags::HELD) {
            return;
        }
        self.unindex_holders(i);
        let t = &mut self.tasks[i];
        t.flags.remove(TaskFlags::HELD);
        let chunk = t.id.chunk();
        let first = t.holder;
        match self.data.replicas.remove(&i) {
            Some(list) => {
                for h in list {
                    self.outbox.release(h, chunk);
                }
            }
            None => self.outbox.release(first, chunk),
        }
    }

    /// Forgets every copy held by `w`; returns the tasks whose result is now held nowhere,
    /// in index order, and how many records it examined. Costs O(copies `w` held).
    pub(crate) fn drop_holder(&mut self, w: WorkerId) -> (Vec<u32>, u64) {
        let Some(set) = self.data.held_by.remove(&w) else {
            return (Vec::new(), 0);
        };
        let mut held: Vec<u32> = set.into_iter().collect();
        held.sort_unstable();
        let examined = held.len() as u64;
        let mut emptied = Vec::new();
        for i in held {
            if let Some(list) = self.data.replicas.get_mut(&i) {
                list.retain(|&h| h != w);
                if let Some(&first) = list.first() {
                    self.tasks[i].holder = first;
                }
                if list.len() < 2 {
                    self.data.replicas.remove(&i);
                }
            } else {
                let t = &mut self.tasks[i];
                debug_assert!(t.flags.contains(TaskFlags::HELD) && t.holder == w);
                t.flags.remove(TaskFlags::HELD);
                emptied.push(i);
            }
        }
        (emptied, examined)
    }

    /// Frees copies of task `i`'s result that nothing needs any more, then its record.
    pub(crate) fn maybe_release(&mut self, i: u32) {
        let t = &self.tasks[i];
        if t.state == State::Finished {
            let released = t.flags.contains(TaskFlags::CLIENT_RELEASED);
            let unneeded = released && t.consumers == 0;
            let mut has_inline = self.data.inline.contains_key(&i);
            if has_inline && unneeded {
                self.data.inline.remove(&i);
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
    pub(crate) fn maybe_free(&mut self, i: u32) {
        let mut stack = vec![i];
        while let Some(x) = stack.pop() {
            let t = &mut self.tasks[x];
            if t.flags.contains(TaskFlags::DEAD)
                || !t.state.terminal()
                || !t.flags.contains(TaskFlags::CLIENT_RELEASED)
                || t.consumers > 0
                || t.live_dependents > 0
                || t.pending_fetch > 0
            {
                continue;
            }
            t.flags.insert(TaskFlags::DEAD);
            let spec = t.spec.take();
            self.tasks.counts.live -= 1;
            if !self.data.inline.is_empty() {
                self.data.inline.remove(&x);
            }
            if !self.errors.is_empty() {
                self.errors.remove(&x);
            }
            self.release_holders(x);
            if let Some(spec) = spec {
                for d in spec.deps {
                    let dt = &mut self.tasks[d];
                    dt.live_dependents = dt.live_dependents.saturating_sub(1);
                    stack.push(d);
                }
            }
        }
    }
}
