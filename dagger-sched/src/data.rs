//! The data directory: where each task's result is (its holders, or the scheduler's inline
//! copy), and the accounting that decides when copies and records can be released.
//!
//! The first holder of a result lives in the task record (`Task::holder`, valid with the
//! `HELD` flag); only results held by more than one worker have a replica list here.

use crate::hash::{FxMap, FxSet};
use crate::scheduler::Scheduler;
use crate::task_table::{SmallArg, State, TaskFlags};
use dagger_core::WorkerId;

#[derive(Default)]
pub(crate) struct DataDir {
    /// Results kept inline by the scheduler, by task index, when they are longer than
    /// [`SMALL_ARG`](crate::task_table::SMALL_ARG) bytes (shorter ones are in the task's record: `Task::small_result`).
    pub(crate) inline: FxMap<u32, Vec<u8>>,
    /// Full holder lists of results held by more than one worker (the first is
    /// `Task::holder`).
    pub(crate) replicas: FxMap<u32, Vec<WorkerId>>,
    /// The results each worker is the first holder of, so a lost worker costs in proportion
    /// to what it held. Intrusive: a held task's `link` is its position in its first
    /// holder's list, so adding and removing are O(1) without hashing the task.
    pub(crate) held_by: FxMap<WorkerId, Vec<u32>>,
    /// The results each worker holds a further copy of (it is in their replica list, not
    /// first). Replicas are rare, so a hash set is good enough here.
    pub(crate) replica_by: FxMap<WorkerId, FxSet<u32>>,
    /// Scratch stack of `maybe_free` (kept to avoid an allocation per call).
    free_stack: Vec<u32>,
}

impl Scheduler {
    /// Whether task `i`'s result exists somewhere (on a worker or inline).
    pub(crate) fn available(&self, i: u32) -> bool {
        self.tasks[i]
            .flags
            .intersects(TaskFlags::HELD | TaskFlags::INLINE)
    }

    /// Whether the scheduler keeps a copy of task `i`'s result.
    #[inline]
    pub(crate) fn has_inline(&self, i: u32) -> bool {
        self.tasks[i].flags.contains(TaskFlags::INLINE)
    }

    /// The scheduler's copy of task `i`'s result, if it keeps one.
    #[inline]
    pub(crate) fn inline_of(&self, i: u32) -> Option<&[u8]> {
        let t = &self.tasks[i];
        if !t.flags.contains(TaskFlags::INLINE) {
            None
        } else if t.small_result.is_present() {
            Some(t.small_result.as_slice())
        } else {
            self.data.inline.get(&i).map(Vec::as_slice)
        }
    }

    /// Keeps a copy of task `i`'s result in the scheduler: in its record when it is short.
    pub(crate) fn put_inline(&mut self, i: u32, bytes: Vec<u8>) {
        self.drop_inline(i);
        let t = &mut self.tasks[i];
        t.flags.insert(TaskFlags::INLINE);
        match SmallArg::new(&bytes) {
            Some(small) => t.small_result = small,
            None => {
                self.data.inline.insert(i, bytes);
            }
        }
    }

    /// Drops the scheduler's copy of task `i`'s result, if any.
    pub(crate) fn drop_inline(&mut self, i: u32) {
        let t = &mut self.tasks[i];
        if t.flags.contains(TaskFlags::INLINE) {
            t.flags.remove(TaskFlags::INLINE);
            if t.small_result.is_present() {
                t.small_result = SmallArg::ABSENT;
            } else {
                self.data.inline.remove(&i);
            }
        }
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
            if !self.data.replicas.is_empty() {
                self.data.replicas.remove(&i);
            }
        }
        self.tasks[i].holder = w;
        self.tasks[i].flags.insert(TaskFlags::HELD);
        self.index_first_holder(i, w);
    }

    /// Appends task `i` to `w`'s list of results it holds first and records its position.
    fn index_first_holder(&mut self, i: u32, w: WorkerId) {
        let list = self.data.held_by.entry(w).or_default();
        self.tasks[i].link = list.len() as u32;
        list.push(i);
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
            self.data.replica_by.entry(w).or_default().insert(i);
        }
    }

    /// Removes task `i` (held) from the per-worker index of every worker holding its result.
    fn unindex_holders(&mut self, i: u32) {
        let t = &self.tasks[i];
        let (first, pos) = (t.holder, t.link as usize);
        if let Some(list) = self.data.held_by.get_mut(&first) {
            if list.get(pos) == Some(&i) {
                list.swap_remove(pos);
                if let Some(&moved) = list.get(pos) {
                    self.tasks[moved].link = pos as u32;
                }
            } else {
                debug_assert!(false, "held task not at its position in held_by");
            }
        }
        if self.data.replicas.is_empty() {
            return;
        }
        let DataDir {
            replicas,
            replica_by,
            ..
        } = &mut self.data;
        if let Some(hs) = replicas.get(&i) {
            for h in &hs[1..] {
                if let Some(set) = replica_by.get_mut(h) {
                    set.remove(&i);
                }
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
        if t.size >= self.config.large_release_bytes {
            self.outbox.large_released = true;
        }
        let list = if self.data.replicas.is_empty() {
            None
        } else {
            self.data.replicas.remove(&i)
        };
        match list {
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
        let firsts = self.data.held_by.remove(&w).unwrap_or_default();
        let mut others: Vec<u32> = self
            .data
            .replica_by
            .remove(&w)
            .map(|set| set.into_iter().collect())
            .unwrap_or_default();
        others.sort_unstable();
        let examined = (firsts.len() + others.len()) as u64;
        // Further copies: the first holder stays.
        for i in others {
            if let Some(list) = self.data.replicas.get_mut(&i) {
                list.retain(|&h| h != w);
                if list.len() < 2 {
                    self.data.replicas.remove(&i);
                }
            }
        }
        // First copies: the next holder, if any, becomes the first.
        let mut emptied = Vec::new();
        for i in firsts {
            let next = match self.data.replicas.get_mut(&i) {
                Some(list) => {
                    list.retain(|&h| h != w);
                    let next = list.first().copied();
                    if list.len() < 2 {
                        self.data.replicas.remove(&i);
                    }
                    next
                }
                None => None,
            };
            match next {
                Some(h) => {
                    if let Some(set) = self.data.replica_by.get_mut(&h) {
                        set.remove(&i);
                    }
                    self.tasks[i].holder = h;
                    self.index_first_holder(i, h);
                }
                None => {
                    let t = &mut self.tasks[i];
                    debug_assert!(t.flags.contains(TaskFlags::HELD) && t.holder == w);
                    t.flags.remove(TaskFlags::HELD);
                    emptied.push(i);
                }
            }
        }
        emptied.sort_unstable();
        (emptied, examined)
    }

    /// Frees copies of task `i`'s result that nothing needs any more, then its record.
    pub(crate) fn maybe_release(&mut self, i: u32) {
        let t = &self.tasks[i];
        if t.state == State::Finished {
            let released = t.flags.contains(TaskFlags::CLIENT_RELEASED);
            let unneeded = released && t.consumers == 0;
            let mut has_inline = t.flags.contains(TaskFlags::INLINE);
            if has_inline && unneeded {
                self.drop_inline(i);
                has_inline = false;
            }
            let release_workers = self.tasks[i].pending_fetch == 0 && (has_inline || unneeded);
            if release_workers {
                self.release_holders(i);
            }
        }
        self.maybe_free(i);
    }

    /// Whether task `x`'s record can be freed now.
    #[inline]
    fn freeable(&self, x: u32) -> bool {
        let t = &self.tasks[x];
        !t.flags.contains(TaskFlags::DEAD)
            && t.state.terminal()
            && t.flags.contains(TaskFlags::CLIENT_RELEASED)
            && t.consumers == 0
            && t.live_dependents == 0
            && t.pending_fetch == 0
    }

    /// Frees the variable-sized state of tasks nothing can need any more, cascading to
    /// their inputs.
    pub(crate) fn maybe_free(&mut self, i: u32) {
        if !self.freeable(i) {
            return;
        }
        // A reused stack: no allocation per call.
        let mut stack = std::mem::take(&mut self.data.free_stack);
        stack.push(i);
        while let Some(x) = stack.pop() {
            if !self.freeable(x) {
                continue;
            }
            let t = &mut self.tasks[x];
            t.flags.insert(TaskFlags::DEAD);
            let spec = t.spec.take();
            self.tasks.counts.live -= 1;
            self.drop_inline(x);
            if !self.errors.is_empty() {
                self.errors.remove(&x);
            }
            self.release_holders(x);
            if let Some(spec) = spec {
                for &d in &spec.deps {
                    let dt = &mut self.tasks[d];
                    dt.live_dependents = dt.live_dependents.saturating_sub(1);
                    stack.push(d);
                }
            }
        }
        self.data.free_stack = stack;
    }
}
