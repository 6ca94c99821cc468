//! A recount of the scheduler's bookkeeping from scratch, for tests and debugging.

use crate::hash::FxMap;
use crate::scheduler::Scheduler;
use crate::task_table::{satisfies, Counts, State, TaskFlags};

impl Scheduler {
    /// Checks the internal bookkeeping against a recount from scratch and returns the
    /// first inconsistency found. O(tasks × edges); meant for tests and debugging.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut counts = Counts::default();
        let mut queued = vec![0u64; self.placer.slots.len()];
        let mut fetchers: FxMap<u32, u32> = FxMap::default();
        for (i, t) in self.tasks.iter() {
            *counts.slot(t.state) += 1;
            if !t.flags.contains(TaskFlags::DEAD) {
                counts.live += 1;
            }
            if self.tasks.get(&t.id) != Some(i) {
                return Err(format!("{}: index mismatch", t.id));
            }
            if t.state == State::Dispatched {
                let q = &mut queued[t.slot as usize];
                *q = q.saturating_add(t.est_ns);
                let w = self.placer.slot_proc(t.slot).worker;
                if self.topology.worker(w).is_none() {
                    return Err(format!("{}: dispatched to absent {w}", t.id));
                }
            }
            let Some(spec) = t.spec.as_ref() else {
                if !t.flags.contains(TaskFlags::DEAD) {
                    return Err(format!("{}: spec freed but not dead", t.id));
                }
                continue;
            };
            let fetching = self.fetching.get(&i).map_or(&[][..], |f| f.as_slice());
            if t.state == State::Dispatched {
                for &d in fetching {
                    *fetchers.entry(d).or_default() += 1;
                }
            } else if !fetching.is_empty() {
                return Err(format!("{}: fetching while not dispatched", t.id));
            }
            if t.flags.contains(TaskFlags::AHEAD)
                && (t.flags.contains(TaskFlags::EARLY)
                    || matches!(t.state, State::Waiting | State::Ready))
            {
                return Err(format!("{}: ahead of its inputs while {:?}", t.id, t.state));
            }
            let early = t.flags.contains(TaskFlags::EARLY);
            let mut unmet = 0;
            let mut consumers = 0;
            let mut live = 0;
            for &d in &spec.deps {
                let dt = &self.tasks[d];
                if dt.flags.contains(TaskFlags::DEAD) {
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
            if t.state == State::Ready && unmet != 0 || t.state == State::Waiting && unmet != t.link
            {
                return Err(format!(
                    "{}: unmet {} but recount {} ({:?})",
                    t.id, t.link, unmet, t.state
                ));
            }
            for &u in &spec.dependents {
                let ut = &self.tasks[u];
                if !ut.state.terminal() {
                    consumers += 1;
                }
                if !ut.flags.contains(TaskFlags::DEAD) {
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
                && (t.consumers > 0 || !t.flags.contains(TaskFlags::CLIENT_RELEASED))
                && !self.available(i)
            {
                return Err(format!("{}: needed result is nowhere", t.id));
            }
        }
        for (i, t) in self.tasks.iter() {
            let f = fetchers.get(&i).copied().unwrap_or(0);
            if f != t.pending_fetch {
                return Err(format!(
                    "{}: pending_fetch {} recount {}",
                    t.id, t.pending_fetch, f
                ));
            }
        }
        for (&i, fetching) in &self.fetching {
            let t = &self.tasks[i];
            if fetching.is_empty() || t.state != State::Dispatched || t.spec.is_none() {
                return Err(format!("{}: fetch list kept while not dispatched", t.id));
            }
        }
        for (s, q) in queued.iter().enumerate() {
            if self.placer.slots[s].queued_ns != *q {
                return Err(format!(
                    "slot {:?}: queued {} recount {}",
                    self.placer.slots[s].id, self.placer.slots[s].queued_ns, q
                ));
            }
        }
        for i in 0..self.tasks.len() {
            for h in self.holders_of(i) {
                if self.topology.worker(*h).is_none() {
                    return Err(format!("holder {h} is not in the pool"));
                }
            }
        }
        for (i, t) in self.tasks.iter() {
            let in_map = self.data.inline.contains_key(&i);
            let copies = usize::from(in_map) + usize::from(t.small_result.is_present());
            if copies > 1 || t.flags.contains(TaskFlags::INLINE) != (copies == 1) {
                return Err(format!("{}: inline flag disagrees with the copy", t.id));
            }
        }
        for (i, hs) in &self.data.replicas {
            if hs.len() < 2
                || !self.tasks[*i].flags.contains(TaskFlags::HELD)
                || hs[0] != self.tasks[*i].holder
            {
                return Err(format!(
                    "replica list of {} is inconsistent",
                    self.tasks[*i].id
                ));
            }
        }
        self.check_worker_index()?;
        self.check_held()?;
        for (&i, &d) in &self.placer.starving {
            if self.tasks[i].state != State::Ready {
                return Err(format!("{}: starving but not ready", self.tasks[i].id));
            }
            if !self.placer.deadlines.contains(&(d, i)) {
                return Err(format!("{}: starving without a deadline", self.tasks[i].id));
            }
        }
        if self.placer.deadlines.len() != self.placer.starving.len() {
            return Err("stale grace-period deadlines".to_string());
        }
        let c = &self.tasks.counts;
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
        self.check_drains()?;
        Ok(())
    }

    /// The per-worker indexes (tasks dispatched to each worker, results each holds) against
    /// a full scan, positions included.
    fn check_worker_index(&self) -> Result<(), String> {
        let mut running = 0usize;
        let mut firsts = 0usize;
        let mut others = 0usize;
        for (i, t) in self.tasks.iter() {
            if t.state == State::Dispatched {
                running += 1;
                let w = self.placer.slot_proc(t.slot).worker;
                let at = self
                    .placer
                    .slots
                    .get(t.slot as usize)
                    .and_then(|s| s.running.get(t.link as usize));
                if at != Some(&i) {
                    return Err(format!("{}: dispatched to {w} but not indexed there", t.id));
                }
            }
            let holders = self.holders_of(i);
            if let Some((&first, rest)) = holders.split_first() {
                if t.state != State::Finished {
                    return Err(format!("{}: held while {:?}", t.id, t.state));
                }
                firsts += 1;
                let at = self
                    .data
                    .held_by
                    .get(&first)
                    .and_then(|l| l.get(t.link as usize));
                if at != Some(&i) {
                    return Err(format!("{}: held by {first} but not indexed there", t.id));
                }
                for &h in rest {
                    others += 1;
                    if !self.data.replica_by.get(&h).is_some_and(|s| s.contains(&i)) {
                        return Err(format!("{}: copy on {h} but not indexed there", t.id));
                    }
                }
            }
        }
        let indexed: usize = self.placer.slots.iter().map(|s| s.running.len()).sum();
        if indexed != running {
            return Err(format!(
                "{indexed} tasks indexed as dispatched, {running} dispatched"
            ));
        }
        let indexed: usize = self.data.held_by.values().map(|s| s.len()).sum();
        if indexed != firsts {
            return Err(format!("{indexed} first copies indexed, {firsts} held"));
        }
        let indexed: usize = self.data.replica_by.values().map(|s| s.len()).sum();
        if indexed != others {
            return Err(format!("{indexed} further copies indexed, {others} held"));
        }
        Ok(())
    }
}
