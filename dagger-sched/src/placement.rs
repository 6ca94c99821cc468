//! Placement: the ready queue, the processor table and the choice of a processor by lowest
//! estimated finish time, with its caches (path costs per source worker and size bucket,
//! candidate lists per scope, learned run times per function and processor kind, queued
//! work per processor), and the dispatch of a placed task into the outbox.
//!
//! With [`Config::saturation`](crate::Config::saturation) on, a processor takes another
//! task only while it is not saturated ([`Slot::saturated`]); a ready task whose candidate
//! processors are all saturated is held back in its scope's queue ([`ScopeEntry::held`]).
//! Tasks of one scope share their candidates, so each queue is retried from its head, and
//! only until its first task that still finds no room, whenever room may have appeared (a
//! task finished or failed, the pool changed, a drain ended): huge graphs are not
//! re-examined on every event. Tasks pinned to one worker (early dispatch) bypass it.

use crate::edges::Edges;
use crate::hash::{FxMap, FxSet};
use crate::scheduler::Scheduler;
use crate::task_table::{ns, Args, State, TaskFlags};
use dagger_core::wire::{RunArg, RunPart, RunTask};
use dagger_core::{Arg, Part, ProcId, ProcKind, Scope, TaskError, TaskId, WorkerId};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

/// Cost of an unreachable destination; small enough that sums do not overflow.
const UNREACHABLE: u64 = u64::MAX / 1024;
/// The longest run time learned from a report (2^50 ns, about 13 days).
const MAX_LEARNED_RUN_NS: u64 = 1 << 50;
/// The most inputs a task may have and still be dispatched ahead of them: whether it may
/// is looked at, in O(inputs), each time one of its inputs is dispatched or finishes.
pub(crate) const MAX_AHEAD_INPUTS: usize = 16;

/// One processor of the pool (or one that was in it: slots are never removed).
pub(crate) struct Slot {
    pub(crate) id: ProcId,
    pub(crate) kind: u32,
    pub(crate) alive: bool,
    /// Estimated run time of the tasks dispatched here and not finished.
    pub(crate) queued_ns: u64,
    /// The tasks dispatched here and not finished, so a lost worker costs in proportion to
    /// what it ran. Intrusive: a dispatched task's `link` is its position here, so adding
    /// and removing are O(1) without hashing.
    pub(crate) running: Vec<u32>,
    /// The learned run time of each task of `running` (same positions) when it was
    /// dispatched; 0 for a task whose function had none on this processor kind.
    pub(crate) run_est: Vec<u64>,
    /// The sum of `run_est`: the work queued here, as far as it was measured.
    pub(crate) load_ns: u64,
    /// The entries of `run_est` that are 0 (tasks of unknown cost).
    pub(crate) unmeasured: u32,
}

impl Slot {
    /// Whether the slot takes no more held-back work for a task whose function has
    /// (`measured`) or has not a learned run time on its kind: `min_depth` tasks or more
    /// are dispatched here, and either the task or one queued here is of unknown cost, or
    /// the measured work queued here reaches `horizon`.
    #[inline]
    pub(crate) fn saturated(&self, min_depth: u32, horizon: u64, measured: bool) -> bool {
        self.running.len() >= min_depth.max(1) as usize
            && (!measured || self.unmeasured > 0 || self.load_ns >= horizon)
    }

    /// Records a task dispatched here (at the end of `running`).
    fn push(&mut self, i: u32, run_est: u64) {
        self.running.push(i);
        self.run_est.push(run_est);
        self.load_ns = self.load_ns.saturating_add(run_est);
        self.unmeasured += u32::from(run_est == 0);
    }

    /// Forgets the task at `pos` of `running` (swapped with the last); the task moved
    /// into `pos`, if any.
    fn remove(&mut self, pos: usize) -> Option<u32> {
        self.running.swap_remove(pos);
        let run_est = self.run_est.swap_remove(pos);
        self.load_ns = self.load_ns.saturating_sub(run_est);
        self.unmeasured -= u32::from(run_est == 0);
        self.running.get(pos).copied()
    }
}

/// A distinct scope and its cached candidate processors.
pub(crate) struct ScopeEntry {
    pub(crate) scope: Scope,
    /// The scope confines tasks to a single worker (early dispatch).
    pub(crate) early: bool,
    gen: u64,
    cands: Vec<u32>,
    any_admits: bool,
    /// Ready tasks held back because every candidate processor was saturated, by
    /// priority, in submission order (task index) within one, never early ones. Entries
    /// of tasks that are no longer ready are dropped when they reach the head.
    ///
    /// Submission order, not the order they became ready: a task that became ready late
    /// (a reduction's step, once its inputs finished) goes before tasks submitted after
    /// it, so a graph spawned whole is worked through in the order it was built, and
    /// the results its later steps consume are released early instead of piling up
    /// until every task that was ready first has run.
    pub(crate) held: BTreeMap<i32, BinaryHeap<Reverse<u32>>>,
}

/// What placement decided for a ready task.
pub(crate) enum Placement {
    /// Run it on this slot, with this estimate of its own cost and its learned run time
    /// there (0 when there is none).
    On { slot: u32, est: u64, run: u64 },
    /// Hold it back: every processor that may run it is saturated.
    Full,
    /// Wait: processors admit it but their workers do not accept work now.
    Park,
    /// Wait, at most the grace period: the pool has no task processor at all (empty, still
    /// starting, or only processes without cores).
    Starve,
    /// Fail: the pool has task processors and none admits it.
    NoProcessor,
}

/// Where a placement finds an input that it must move: the input's index in the task
/// table and its size while it is held (its holders are read when its cost is added, so
/// weighing an input allocates nothing), or the worker it runs on.
#[derive(Clone, Copy)]
enum Source {
    Held(u32, u64),
    Running(WorkerId),
}

pub(crate) struct Placer {
    /// The topology changed since the processor table was built.
    pub(crate) dirty: bool,
    gen: u64,
    kinds: FxMap<ProcKind, u32>,
    /// The interned index of `ProcKind::THREAD` (`u32::MAX` until a thread is seen).
    thread_kind: u32,
    pub(crate) scopes: Vec<ScopeEntry>,
    scope_ids: FxMap<Scope, u32>,
    /// The scope interned last (an index into `scopes`; out of range while there is none).
    last_scope: u32,
    pub(crate) slots: Vec<Slot>,
    slot_of: FxMap<ProcId, u32>,
    pool_has_procs: bool,
    /// Learned run time per function, per processor kind (0 = never measured).
    runtime: Vec<Vec<u64>>,
    /// Path cost from a worker's root to every slot, per size bucket.
    dist: FxMap<(WorkerId, u8), Vec<u64>>,
    pub(crate) draining: FxSet<WorkerId>,
    /// Parked tasks that no processor of the pool admits, with the time they fail at.
    pub(crate) starving: FxMap<u32, Duration>,
    /// The same deadlines in time order (always the same entries as `starving`).
    pub(crate) deadlines: BTreeSet<(Duration, u32)>,
    /// Ready tasks by priority, FIFO within one priority.
    /// With saturation on, only early tasks (pinned to one worker) come here; the others
    /// go to their scope's `held` queue.
    ready: BTreeMap<i32, VecDeque<u32>>,
    parked: Vec<u32>,
    /// Waiting tasks one of whose inputs was dispatched or finished since the last
    /// placement round: each may now be dispatched ahead of its inputs (`place_ahead`).
    /// Entries of tasks that are no longer waiting are skipped.
    pub(crate) ahead: Vec<u32>,
    /// The scopes whose `held` queue may be non-empty.
    pub(crate) held_scopes: BTreeSet<u32>,
    /// Room may have appeared, or tasks were held back, since the held queues were last
    /// retried.
    pub(crate) retry: bool,
    /// Placements tried, ever (see `Stats::placements`).
    pub(crate) placements: u64,
    driver_present: bool,
    /// Network cost per size bucket, used when the driver is not in the topology.
    net_cost: Vec<u64>,
    scratch_cost: Vec<u64>,
    scratch_min: Vec<u64>,
    /// The inputs a placement weighs, reused from one placement to the next.
    scratch_sources: Vec<Source>,
}

impl Default for Placer {
    fn default() -> Self {
        Self {
            dirty: true,
            gen: 0,
            kinds: FxMap::default(),
            thread_kind: u32::MAX,
            scopes: Vec::new(),
            scope_ids: FxMap::default(),
            last_scope: u32::MAX,
            slots: Vec::new(),
            slot_of: FxMap::default(),
            pool_has_procs: false,
            runtime: Vec::new(),
            dist: FxMap::default(),
            draining: FxSet::default(),
            starving: FxMap::default(),
            deadlines: BTreeSet::new(),
            ready: BTreeMap::new(),
            parked: Vec::new(),
            ahead: Vec::new(),
            held_scopes: BTreeSet::new(),
            retry: false,
            placements: 0,
            driver_present: false,
            net_cost: Vec::new(),
            scratch_cost: Vec::new(),
            scratch_min: Vec::new(),
            scratch_sources: Vec::new(),
        }
    }
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

impl Placer {
    /// A new function was interned: give it a row of learned run times.
    pub(crate) fn add_func(&mut self) {
        self.runtime.push(Vec::new());
    }

    pub(crate) fn intern_scope(&mut self, scope: Scope) -> u32 {
        // Most tasks of a batch share their scope (`Any`, mostly): compare with the last
        // one interned or looked up before hashing.
        if let Some(e) = self.scopes.get(self.last_scope as usize) {
            if matches!((&e.scope, &scope), (Scope::Any, Scope::Any)) {
                return self.last_scope;
            }
            if e.scope == scope {
                return self.last_scope;
            }
        }
        let s = match self.scope_ids.get(&scope) {
            Some(&s) => s,
            None => self.add_scope(scope),
        };
        self.last_scope = s;
        s
    }

    fn add_scope(&mut self, scope: Scope) -> u32 {
        let s = self.scopes.len() as u32;
        self.scope_ids.insert(scope.clone(), s);
        self.scopes.push(ScopeEntry {
            early: early_scope(&scope),
            scope,
            gen: u64::MAX,
            cands: Vec::new(),
            any_admits: false,
            held: BTreeMap::new(),
        });
        s
    }

    /// Whether slot `slot` is a thread processor whose task of scope `s` may run on any
    /// thread processor of its worker (`RunTask::any_thread`).
    fn any_thread(&self, slot: u32, s: u32) -> bool {
        let sl = &self.slots[slot as usize];
        sl.kind == self.thread_kind
            && self.scopes[s as usize]
                .scope
                .admits_every(sl.id.worker, &ProcKind::THREAD)
    }

    fn intern_kind(&mut self, kind: &ProcKind) -> u32 {
        if let Some(&k) = self.kinds.get(kind) {
            return k;
        }
        let k = self.kinds.len() as u32;
        self.kinds.insert(kind.clone(), k);
        if *kind == ProcKind::THREAD {
            self.thread_kind = k;
        }
        k
    }

    /// Folds a measured run time into the estimate for (function, processor kind). A run
    /// time comes from a worker's report, so it is capped at [`MAX_LEARNED_RUN_NS`]: a
    /// lying worker cannot push the estimates to where their sums saturate.
    pub(crate) fn learn(&mut self, func: u32, kind: u32, run_ns: u64) {
        let run_ns = run_ns.min(MAX_LEARNED_RUN_NS);
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

    /// The processor of a slot.
    #[inline]
    /// The slot of processor `proc`, if it is known.
    pub(crate) fn slot_index(&self, proc: ProcId) -> Option<u32> {
        self.slot_of.get(&proc).copied()
    }

    pub(crate) fn slot_proc(&self, slot: u32) -> ProcId {
        self.slots
            .get(slot as usize)
            .map_or(ProcId::default(), |s| s.id)
    }

    pub(crate) fn push_ready(&mut self, i: u32, priority: i32) {
        self.ready.entry(priority).or_default().push_back(i);
    }

    /// Queues ready task `i` of scope `s` behind the scope's held-back tasks.
    fn push_held(&mut self, i: u32, s: u32, priority: i32) {
        self.scopes[s as usize]
            .held
            .entry(priority)
            .or_default()
            .push(Reverse(i));
        self.held_scopes.insert(s);
        self.retry = true;
    }

    /// Takes the parked tasks (to be put back in the ready queue).
    pub(crate) fn take_parked(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.parked)
    }
}

impl Scheduler {
    /// Puts every parked task that is still ready back in the ready queue.
    pub(crate) fn unpark(&mut self) {
        for i in self.placer.take_parked() {
            if self.tasks[i].state == State::Ready {
                self.push_ready(i);
            }
        }
        // The pool changed: a held-back task may find room now.
        self.placer.retry = true;
    }

    pub(crate) fn push_ready(&mut self, i: u32) {
        let t = &self.tasks[i];
        let (priority, s) = (t.priority, t.scope);
        if self.config.saturation && !self.placer.scopes[s as usize].early {
            self.placer.push_held(i, s, priority);
        } else {
            self.placer.push_ready(i, priority);
        }
    }

    /// Rebuilds the processor table from the topology after a change.
    fn refresh(&mut self) {
        let p = &mut self.placer;
        if !p.dirty {
            return;
        }
        p.dirty = false;
        p.gen += 1;
        p.dist.clear();
        for s in &mut p.slots {
            s.alive = false;
        }
        let procs: Vec<(ProcId, ProcKind, bool)> = self
            .topology
            .procs()
            .map(|p| (p.id, p.kind.clone(), p.id.is_root()))
            .collect();
        p.pool_has_procs = false;
        p.driver_present = self.topology.worker(WorkerId::DRIVER).is_some();
        let net = self.topology.costs().network;
        p.net_cost = (0..=64u8).map(|b| net.time_ns(bucket_bytes(b))).collect();
        for (id, kind, root) in procs {
            let k = p.intern_kind(&kind);
            let s = match p.slot_of.get(&id) {
                Some(&s) => s,
                None => {
                    let s = p.slots.len() as u32;
                    p.slots.push(Slot {
                        id,
                        kind: k,
                        alive: true,
                        queued_ns: 0,
                        running: Vec::new(),
                        run_est: Vec::new(),
                        load_ns: 0,
                        unmeasured: 0,
                    });
                    p.slot_of.insert(id, s);
                    s
                }
            };
            let slot = &mut p.slots[s as usize];
            slot.alive = true;
            slot.kind = k;
            p.pool_has_procs |= !root;
        }
    }

    fn refresh_scope(&mut self, s: u32) {
        let p = &mut self.placer;
        let entry = &mut p.scopes[s as usize];
        if entry.gen == p.gen {
            return;
        }
        entry.gen = p.gen;
        entry.cands.clear();
        entry.any_admits = false;
        for (k, slot) in p.slots.iter().enumerate() {
            if !slot.alive {
                continue;
            }
            let Some(info) = self.topology.proc(slot.id) else {
                continue;
            };
            if entry.scope.admits(info) {
                entry.any_admits = true;
                if !p.draining.contains(&slot.id.worker) {
                    entry.cands.push(k as u32);
                }
            }
        }
    }

    /// Rebuilds the processor table if the topology or the draining set changed.
    pub(crate) fn refresh_table(&mut self) {
        self.refresh();
    }

    /// Whether processors of the pool admit scope `s`, but only ones of workers that do
    /// not accept work (its tasks would wait for one to join).
    pub(crate) fn scope_only_on_draining(&mut self, s: u32) -> bool {
        self.refresh_scope(s);
        let e = &self.placer.scopes[s as usize];
        e.any_admits && e.cands.is_empty()
    }

    /// Takes the lists of tasks running on `worker`'s processors; O(slots).
    pub(crate) fn take_running(&mut self, worker: WorkerId) -> Vec<u32> {
        let mut lost = Vec::new();
        for s in &mut self.placer.slots {
            if s.id.worker == worker && !s.running.is_empty() {
                lost.append(&mut s.running);
                s.run_est.clear();
                s.load_ns = 0;
                s.unmeasured = 0;
            }
        }
        lost
    }

    /// Cheapest path cost from `src`'s root to every slot for `bytes` (bucketed), cached.
    fn ensure_dist(&mut self, src: WorkerId, b: u8) {
        let p = &mut self.placer;
        if p.dist.contains_key(&(src, b)) {
            return;
        }
        let bytes = bucket_bytes(b);
        let mut dist = vec![UNREACHABLE; p.slots.len()];
        let source_alive = p
            .slot_of
            .get(&ProcId::root(src))
            .is_some_and(|&s0| p.slots[s0 as usize].alive);
        if source_alive {
            let costs = dagger_move::costs_from(&self.topology, ProcId::root(src), bytes);
            for (s, slot) in p.slots.iter().enumerate() {
                if let Some(&c) = costs.get(&slot.id) {
                    dist[s] = c.min(UNREACHABLE);
                }
            }
        }
        p.dist.insert((src, b), dist);
    }

    /// Adds to `scratch_cost[j]` the cached cost of moving an input from `key`'s source
    /// (for `key`'s size bucket) to candidate `cands[j]`; false when it is not cached.
    fn add_source_cost(&mut self, cands: &[u32], key: (WorkerId, u8)) -> bool {
        let p = &mut self.placer;
        let Some(table) = p.dist.get(&key) else {
            return false;
        };
        for (j, &c) in cands.iter().enumerate() {
            p.scratch_cost[j] = p.scratch_cost[j].saturating_add(table[c as usize]);
        }
        true
    }

    /// Adds to `scratch_cost[j]` the cost of moving an input held by `holders` (of `bytes`)
    /// to candidate `cands[j]`.
    fn add_input_cost(&mut self, cands: &[u32], holders: &[WorkerId], bytes: u64) {
        let b = bucket(bytes);
        if let [h] = holders {
            // One source (the common case): its costs are the minimum; one lookup when
            // they are cached.
            if !self.add_source_cost(cands, (*h, b)) {
                self.ensure_dist(*h, b);
                self.add_source_cost(cands, (*h, b));
            }
            return;
        }
        for &h in holders {
            self.ensure_dist(h, b);
        }
        let p = &mut self.placer;
        let mut mins = std::mem::take(&mut p.scratch_min);
        mins.clear();
        mins.resize(cands.len(), UNREACHABLE);
        for &h in holders {
            if let Some(table) = p.dist.get(&(h, b)) {
                for (j, &c) in cands.iter().enumerate() {
                    mins[j] = mins[j].min(table[c as usize]);
                }
            }
        }
        for (j, m) in mins.iter().enumerate() {
            p.scratch_cost[j] = p.scratch_cost[j].saturating_add(*m);
        }
        p.scratch_min = mins;
    }

    /// Chooses a processor for ready task `i`: among its scope's candidates that are not
    /// saturated (all of them when `bounded` is false), the one with the lowest estimated
    /// finish time.
    fn place(&mut self, i: u32, bounded: bool) -> Placement {
        self.placer.placements += 1;
        self.place_among(i, bounded, None, None)
    }

    /// [`Scheduler::place`], among the candidates on worker `only` when it is given (then
    /// `Park` when none of them admits the task), taking slot `prefer` whenever it is a
    /// candidate with room; not counted in `placements`.
    fn place_among(
        &mut self,
        i: u32,
        bounded: bool,
        only: Option<WorkerId>,
        prefer: Option<u32>,
    ) -> Placement {
        let s = self.tasks[i].scope;
        self.refresh_scope(s);
        let all = std::mem::take(&mut self.placer.scopes[s as usize].cands);
        let cands = match only {
            None => all,
            Some(w) => {
                let p = &self.placer;
                let on_w: Vec<u32> = all
                    .iter()
                    .copied()
                    .filter(|&c| p.slots[c as usize].id.worker == w)
                    .collect();
                self.placer.scopes[s as usize].cands = all;
                if on_w.is_empty() {
                    return Placement::Park;
                }
                on_w
            }
        };
        if cands.is_empty() {
            let any = self.placer.scopes[s as usize].any_admits;
            return if any {
                Placement::Park
            } else if !self.placer.pool_has_procs {
                Placement::Starve
            } else {
                Placement::NoProcessor
            };
        }
        let mut cost = std::mem::take(&mut self.placer.scratch_cost);
        cost.clear();
        cost.resize(cands.len(), 0);
        self.placer.scratch_cost = cost;

        // Inputs.
        let mut driver_bytes = 0u64;
        let mut sources = std::mem::take(&mut self.placer.scratch_sources);
        sources.clear();
        if let Some(spec) = self.tasks[i].spec.as_ref() {
            match &spec.args {
                Args::Deps => {
                    for &d in &spec.deps {
                        self.input_cost(d, &mut driver_bytes, &mut sources);
                    }
                }
                Args::Small(v) => driver_bytes += v.as_slice().len() as u64,
                Args::List(args) => {
                    for a in args {
                        match a {
                            Arg::Value(v) => driver_bytes += v.len() as u64,
                            Arg::Task(_) => {}
                            Arg::Gather(parts) => {
                                for p in parts {
                                    if let Part::Value(v) = p {
                                        driver_bytes += v.len() as u64;
                                    }
                                }
                            }
                        }
                        for d in a.deps() {
                            if let Some(d) = self.tasks.get(&d) {
                                self.input_cost(d, &mut driver_bytes, &mut sources);
                            }
                        }
                    }
                }
            }
        }
        if self.placer.driver_present {
            self.add_input_cost(&cands, &[WorkerId::DRIVER], driver_bytes);
        } else {
            let c = self.placer.net_cost[bucket(driver_bytes) as usize];
            for x in &mut self.placer.scratch_cost {
                *x += c;
            }
        }
        for &source in &sources {
            match source {
                Source::Running(w) => self.add_input_cost(&cands, &[w], 0),
                Source::Held(d, size) => match self.holders_of(d) {
                    &[h] => self.add_input_cost(&cands, &[h], size),
                    hs => {
                        let hs = hs.to_vec();
                        self.add_input_cost(&cands, &hs, size);
                    }
                },
            }
        }
        self.placer.scratch_sources = sources;

        let func = self.tasks[i].func as usize;
        let p = &self.placer;
        let row = &p.runtime[func];
        let default = self.config.default_runtime_ns;
        let (depth, horizon) = (self.config.min_depth, ns(self.config.queue_horizon));
        let mut best: Option<(u64, u32, u64, u64)> = None;
        for (j, &c) in cands.iter().enumerate() {
            let slot = &p.slots[c as usize];
            let learned = match row.get(slot.kind as usize) {
                Some(&r) if r > 0 => r,
                _ => 0,
            };
            if bounded && slot.saturated(depth, horizon, learned > 0) {
                continue;
            }
            let run = if learned > 0 { learned } else { default };
            let own = p.scratch_cost[j].saturating_add(run);
            let total = own.saturating_add(slot.queued_ns);
            if prefer == Some(c) {
                best = Some((total, c, own, learned));
                break;
            }
            // The first admitted candidate is taken even at the largest cost.
            if best.is_none_or(|b| total < b.0) {
                best = Some((total, c, own, learned));
            }
        }
        if only.is_none() {
            self.placer.scopes[s as usize].cands = cands;
        }
        match best {
            Some((_, slot, est, run)) => Placement::On { slot, est, run },
            None => Placement::Full,
        }
    }

    /// Adds what moving the result of input `d` costs: its bytes to `driver_bytes` if the
    /// scheduler keeps it inline, else its holders (or the worker it runs on) to `sources`.
    fn input_cost(&self, d: u32, driver_bytes: &mut u64, sources: &mut Vec<Source>) {
        let dt = &self.tasks[d];
        if let Some(v) = self.inline_of(d) {
            *driver_bytes += v.len() as u64;
        } else if dt.flags.contains(crate::task_table::TaskFlags::HELD) {
            sources.push(Source::Held(d, dt.size));
        } else if dt.state == State::Dispatched {
            sources.push(Source::Running(self.placer.slot_proc(dt.slot).worker));
        }
    }

    /// Where the worker `dest` finds the result of dependency `id`: inline, or as a chunk
    /// from its holders (a copy on `dest` first), noted in `fetching`. `None` for a task
    /// no longer known.
    fn run_part(&self, id: TaskId, dest: WorkerId, fetching: &mut Edges) -> Option<RunPart> {
        let d = self.tasks.get(&id)?;
        Some(self.run_part_at(d, dest, fetching))
    }

    /// [`Self::run_part`] of the task at index `d`.
    fn run_part_at(&self, d: u32, dest: WorkerId, fetching: &mut Edges) -> RunPart {
        if let Some(v) = self.inline_of(d) {
            return RunPart::Value(v.to_vec());
        }
        let from = match self.holders_of(d) {
            hs if !hs.is_empty() => {
                let mut hs = hs.to_vec();
                // A worker being drained is asked last: it is about to leave.
                if !self.placer.draining.is_empty() && hs.len() > 1 {
                    hs.sort_by_key(|h| self.placer.draining.contains(h));
                }
                // Prefer a copy on the destination worker.
                if let Some(p) = hs.iter().position(|&h| h == dest) {
                    hs.swap(0, p);
                }
                hs
            }
            _ => vec![self.placer.slot_proc(self.tasks[d].slot).worker],
        };
        if !fetching.contains(&d) {
            fetching.push(d);
        }
        RunPart::Chunk {
            chunk: self.tasks[d].id.chunk(),
            from,
        }
    }

    fn dispatch(&mut self, i: u32, slot: u32, est: u64, run_est: u64) {
        let proc = self.placer.slots[slot as usize].id;
        let queued = &mut self.placer.slots[slot as usize].queued_ns;
        *queued = queued.saturating_add(est);
        let now = ns(self.now);
        let mut args = Vec::new();
        let mut fetching = Edges::default();
        {
            let t = &self.tasks[i];
            let list = match t.spec.as_ref().map(|s| (&s.args, s)) {
                Some((Args::Deps, spec)) => {
                    args.reserve(spec.deps.len());
                    for &d in &spec.deps {
                        args.push(match self.run_part_at(d, proc.worker, &mut fetching) {
                            RunPart::Value(v) => RunArg::Value(v),
                            RunPart::Chunk { chunk, from } => RunArg::Chunk { chunk, from },
                        });
                    }
                    None
                }
                Some((Args::Small(v), _)) => {
                    args.push(RunArg::Value(v.as_slice().to_vec()));
                    None
                }
                Some((Args::List(list), _)) => Some(list),
                None => None,
            };
            if let Some(list) = list {
                args.reserve(list.len());
                for a in list {
                    args.push(match a {
                        Arg::Value(v) => RunArg::Value(v.clone()),
                        Arg::Task(id) => match self.run_part(*id, proc.worker, &mut fetching) {
                            Some(RunPart::Value(v)) => RunArg::Value(v),
                            Some(RunPart::Chunk { chunk, from }) => RunArg::Chunk { chunk, from },
                            None => continue,
                        },
                        Arg::Gather(parts) => RunArg::Gather(
                            parts
                                .iter()
                                .filter_map(|p| match p {
                                    Part::Value(v) => Some(RunPart::Value(v.clone())),
                                    Part::Task(id) => {
                                        self.run_part(*id, proc.worker, &mut fetching)
                                    }
                                })
                                .collect(),
                        ),
                    });
                }
            }
        }
        for &d in &fetching {
            self.tasks[d].pending_fetch += 1;
        }
        if !fetching.is_empty() {
            self.fetching.insert(i, fetching);
        }
        let t = &mut self.tasks[i];
        t.slot = slot;
        t.est_ns = est;
        t.dispatched_ns = now;
        t.attempts += 1;
        let (task, func, attempt, scope) = (t.id, t.func, t.attempts, t.scope);
        // Suspects report their start, and so do tasks expected to run long (or never
        // measured on this kind): a crash while one runs can then count against it.
        let threshold = u64::try_from(self.config.watch_threshold.as_nanos()).unwrap_or(u64::MAX);
        let watch = t.flags.contains(crate::task_table::TaskFlags::WATCH)
            || (threshold < u64::MAX && (run_est == 0 || run_est >= threshold));
        let run = RunTask {
            task,
            func: self.tasks.func_name(func).clone(),
            args,
            proc,
            any_thread: self.placer.any_thread(slot, scope),
            // Decided when the batch goes out (`Scheduler::mark_quiet`).
            quiet: false,
            inline_limit: self.config.inline_limit,
            push_to: Vec::new(),
            watch,
            attempt,
        };
        // Every ready task may be placed before the flush (this one is still counted),
        // unless held back: then only a few are likely to be.
        let ready = self.tasks.counts.ready as usize;
        let expected = if self.config.saturation {
            ready.min(64)
        } else {
            ready
        };
        self.outbox
            .run(proc.worker, run, self.config.max_batch, expected);
        let slot = &mut self.placer.slots[slot as usize];
        self.tasks[i].link = slot.running.len() as u32;
        slot.push(i, run_est);
        self.set_state(i, State::Dispatched);
    }

    /// Undoes the bookkeeping of a dispatch (queued work, pending fetches).
    pub(crate) fn undispatch(&mut self, i: u32) {
        let t = &mut self.tasks[i];
        let slot = t.slot as usize;
        let est = t.est_ns;
        let pos = t.link as usize;
        let fetching = if self.fetching.is_empty() {
            Edges::default()
        } else {
            self.fetching.remove(&i).unwrap_or_default()
        };
        if let Some(s) = self.placer.slots.get_mut(slot) {
            s.queued_ns = s.queued_ns.saturating_sub(est);
            // Absent when recovery already took the lost worker's list.
            if s.running.get(pos) == Some(&i) {
                if let Some(moved) = s.remove(pos) {
                    self.tasks[moved].link = pos as u32;
                }
                // The slot has room for another task.
                self.placer.retry = true;
            }
        }
        for d in fetching {
            let dt = &mut self.tasks[d];
            dt.pending_fetch = dt.pending_fetch.saturating_sub(1);
            self.maybe_release(d);
        }
    }

    /// Places every ready task: dispatches it, holds it back while its processors are
    /// saturated, parks it, or fails it when no processor of the pool admits it.
    ///
    /// Ready tasks go first (pinned ones, then the held-back queues), then the tasks that
    /// may go ahead of their inputs, into the room that ready tasks left.
    pub(crate) fn schedule(&mut self) {
        let retry = self.placer.retry && !self.placer.held_scopes.is_empty();
        if self.placer.ready.is_empty() && !retry && self.placer.ahead.is_empty() {
            return;
        }
        self.refresh();
        loop {
            self.place_ready();
            if self.placer.retry {
                self.placer.retry = false;
                self.release_held();
            }
            self.place_ahead();
            // Dispatching a task makes the early tasks that depend on it ready.
            if self.placer.ready.is_empty() {
                break;
            }
        }
    }

    /// Where waiting task `i` may be dispatched ahead of its inputs: the one worker to
    /// which every input not finished yet is dispatched, if it accepts work, and the slot
    /// of the last such input (the processor to prefer: the task cannot start before that
    /// input is done). `None` for a task pinned by its scope (it has its own rule), with
    /// an input neither finished nor dispatched, with inputs on two workers, or with more
    /// than [`MAX_AHEAD_INPUTS`] inputs. O(inputs).
    fn ahead_target(&self, i: u32) -> Option<(WorkerId, u32)> {
        let t = &self.tasks[i];
        if t.state != State::Waiting || t.flags.contains(TaskFlags::EARLY) {
            return None;
        }
        let spec = t.spec.as_ref()?;
        if spec.deps.len() > MAX_AHEAD_INPUTS {
            return None;
        }
        let mut target: Option<(WorkerId, u32)> = None;
        for &d in &spec.deps {
            let dt = &self.tasks[d];
            match dt.state {
                State::Finished => {}
                State::Dispatched => {
                    let w = self.placer.slot_proc(dt.slot).worker;
                    if target.is_some_and(|(tw, _)| tw != w) {
                        return None;
                    }
                    target = Some((w, dt.slot));
                }
                State::Waiting | State::Ready | State::Failed => return None,
            }
        }
        let (w, slot) = target?;
        if self.placer.draining.contains(&w) {
            return None;
        }
        Some((w, slot))
    }

    /// Dispatches ahead of their inputs the waiting tasks whose placement is decided (see
    /// [`Config::dispatch_ahead`](crate::Config::dispatch_ahead)): to the worker running
    /// their unfinished inputs, on the processor with the lowest estimate there (the one
    /// running their last input when it admits them and has room), within the saturation
    /// bound. A task that finds no room there waits for its inputs as any other; it is
    /// looked at again when another of its inputs is dispatched or finishes.
    fn place_ahead(&mut self) {
        while let Some(i) = self.placer.ahead.pop() {
            let Some((w, prefer)) = self.ahead_target(i) else {
                continue;
            };
            let bounded = self.config.saturation;
            let Placement::On { slot, est, run } =
                self.place_among(i, bounded, Some(w), Some(prefer))
            else {
                continue;
            };
            self.placer.placements += 1;
            let t = &mut self.tasks[i];
            t.flags.insert(TaskFlags::AHEAD);
            t.link = 0;
            self.set_state(i, State::Ready);
            self.dispatch(i, slot, est, run);
        }
    }

    /// Places the tasks of the ready queue (only early ones with saturation on: they are
    /// never held back).
    fn place_ready(&mut self) {
        loop {
            let i = match self.placer.ready.last_entry() {
                None => break,
                Some(mut e) => match e.get_mut().pop_front() {
                    Some(i) => i,
                    None => {
                        e.remove();
                        continue;
                    }
                },
            };
            if self.tasks[i].state != State::Ready {
                continue;
            }
            let placement = self.place(i, false);
            self.carry_out(i, placement);
        }
    }

    /// Acts on a placement of ready task `i` that is not `Full`.
    fn carry_out(&mut self, i: u32, placement: Placement) {
        match placement {
            Placement::On { slot, est, run } => self.dispatch(i, slot, est, run),
            Placement::Full => {
                debug_assert!(false, "a task placed without a bound found no room");
                self.placer.parked.push(i);
            }
            Placement::Park => {
                self.stop_starving(i);
                self.placer.parked.push(i)
            }
            Placement::Starve => {
                self.start_starving(i);
                self.placer.parked.push(i)
            }
            Placement::NoProcessor => {
                let t = &self.tasks[i];
                let scope = self.scope_text(t.scope);
                let err = TaskError::NoProcessor { task: t.id, scope };
                self.fail(i, err);
            }
        }
    }

    /// The first held-back task of scope `s` that is still ready, and its priority;
    /// entries of tasks that are not are dropped. `None` (and `s` leaves `held_scopes`)
    /// when there is none.
    fn held_head(&mut self, s: u32) -> Option<(i32, u32)> {
        let held = &mut self.placer.scopes[s as usize].held;
        loop {
            let Some(mut e) = held.last_entry() else {
                self.placer.held_scopes.remove(&s);
                return None;
            };
            match e.get().peek() {
                None => {
                    e.remove();
                }
                Some(&Reverse(i)) if self.tasks[i].state != State::Ready => {
                    e.get_mut().pop();
                }
                Some(&Reverse(i)) => return Some((*e.key(), i)),
            }
        }
    }

    /// Retries the held-back tasks: across scopes by priority (then submission order),
    /// each scope from its head and only until its first task that finds no room.
    /// O(scopes with held tasks) per task dispatched, plus one placement per such scope.
    fn release_held(&mut self) {
        let mut active: Vec<u32> = self.placer.held_scopes.iter().copied().collect();
        while !active.is_empty() {
            let mut best: Option<(usize, i32, u32)> = None;
            let mut k = 0;
            while k < active.len() {
                match self.held_head(active[k]) {
                    None => {
                        active.swap_remove(k);
                    }
                    Some((prio, i)) => {
                        if best.is_none_or(|(_, bp, bi)| {
                            (prio, std::cmp::Reverse(i)) > (bp, std::cmp::Reverse(bi))
                        }) {
                            best = Some((k, prio, i));
                        }
                        k += 1;
                    }
                }
            }
            let Some((k, _, i)) = best else {
                break;
            };
            let s = active[k];
            match self.place(i, true) {
                Placement::Full => {
                    // Some processor admits it: it is not starving.
                    self.stop_starving(i);
                    active.swap_remove(k);
                }
                placement => {
                    if let Some(mut e) = self.placer.scopes[s as usize].held.last_entry() {
                        e.get_mut().pop();
                    }
                    self.carry_out(i, placement);
                }
            }
        }
    }

    /// The recount of the held-back tasks and the slots' loads: every ready task is listed
    /// (ready queue, held queue of its own scope, or parked), no early task is held back,
    /// each slot's load matches its entries, and, once the held queues were retried after
    /// the last change, no scope's first held task would find room.
    pub(crate) fn check_held(&self) -> Result<(), String> {
        let p = &self.placer;
        for slot in &p.slots {
            let load = slot.run_est.iter().fold(0u64, |a, &r| a.saturating_add(r));
            let unmeasured = slot.run_est.iter().filter(|&&r| r == 0).count();
            if slot.run_est.len() != slot.running.len()
                || load != slot.load_ns
                || unmeasured != slot.unmeasured as usize
            {
                return Err(format!("slot {:?}: load does not match its tasks", slot.id));
            }
        }
        let mut listed = FxSet::default();
        listed.extend(p.ready.values().flatten().copied());
        listed.extend(p.parked.iter().copied());
        for (s, entry) in p.scopes.iter().enumerate() {
            let held: Vec<u32> = entry.held.values().flatten().map(|r| r.0).collect();
            if held.is_empty() {
                continue;
            }
            if entry.early {
                return Err(format!(
                    "tasks of early scope {} are held back",
                    entry.scope
                ));
            }
            if !p.held_scopes.contains(&(s as u32)) {
                return Err(format!(
                    "held tasks of scope {} are not listed",
                    entry.scope
                ));
            }
            for &i in &held {
                if self.tasks[i].scope != s as u32 {
                    return Err(format!(
                        "{} held in another scope's queue",
                        self.tasks[i].id
                    ));
                }
            }
            listed.extend(held);
        }
        for (i, t) in self.tasks.iter() {
            if t.state == State::Ready && !listed.contains(&i) {
                return Err(format!("{}: ready but in no queue", t.id));
            }
        }
        if p.retry || p.dirty || !self.config.saturation {
            return Ok(());
        }
        let (depth, horizon) = (self.config.min_depth, ns(self.config.queue_horizon));
        for &s in &p.held_scopes {
            let entry = &p.scopes[s as usize];
            if entry.gen != p.gen {
                continue;
            }
            let head = entry.held.values().rev().find_map(|h| {
                h.iter()
                    .map(|r| r.0)
                    .filter(|&i| self.tasks[i].state == State::Ready)
                    .min()
            });
            let Some(i) = head else {
                continue;
            };
            let row = &p.runtime[self.tasks[i].func as usize];
            for &c in &entry.cands {
                let slot = &p.slots[c as usize];
                let measured = row.get(slot.kind as usize).is_some_and(|&r| r > 0);
                if !slot.saturated(depth, horizon, measured) {
                    return Err(format!(
                        "{}: held back while {:?} has room",
                        self.tasks[i].id, slot.id
                    ));
                }
            }
        }
        Ok(())
    }

    /// Task `i` is parked because no processor of the pool admits it: from now it waits at
    /// most [`Config::no_processor_grace`](crate::Config::no_processor_grace) (unless it
    /// already waits).
    fn start_starving(&mut self, i: u32) {
        let Some(grace) = self.config.no_processor_grace else {
            return;
        };
        if self.placer.starving.contains_key(&i) {
            return;
        }
        let deadline = self.now.saturating_add(grace);
        self.placer.starving.insert(i, deadline);
        self.placer.deadlines.insert((deadline, i));
    }

    /// Task `i` is placed, some processor admits it again, or it is no longer ready: it no
    /// longer waits for a processor.
    pub(crate) fn stop_starving(&mut self, i: u32) {
        if self.placer.starving.is_empty() {
            return;
        }
        if let Some(deadline) = self.placer.starving.remove(&i) {
            self.placer.deadlines.remove(&(deadline, i));
        }
    }

    /// The earliest time a starving task fails.
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        self.placer.deadlines.first().map(|&(d, _)| d)
    }

    /// Fails every starving task whose deadline is at or before `self.now` and that still
    /// no processor of the pool admits.
    pub(crate) fn expire_starving(&mut self) {
        let mut due = Vec::new();
        while let Some(&(deadline, i)) = self.placer.deadlines.first() {
            if deadline > self.now {
                break;
            }
            self.placer.deadlines.pop_first();
            self.placer.starving.remove(&i);
            due.push((deadline, i));
        }
        if due.is_empty() {
            return;
        }
        self.refresh();
        for (_, i) in due {
            if self.tasks[i].state != State::Ready {
                continue;
            }
            let s = self.tasks[i].scope;
            self.refresh_scope(s);
            if self.placer.scopes[s as usize].any_admits {
                continue; // a processor came; the next placement uses it
            }
            let t = &self.tasks[i];
            let scope = self.scope_text(t.scope);
            let err = TaskError::NoProcessor { task: t.id, scope };
            self.fail(i, err);
        }
    }

    /// Scope `s` as a [`TaskError::NoProcessor`] names it, followed by the workers it names
    /// that are not in the pool (lost, or never joined), which is then why nothing admits
    /// it.
    fn scope_text(&self, s: u32) -> String {
        fn named(scope: &Scope, out: &mut Vec<WorkerId>) {
            match scope {
                Scope::Worker(w) | Scope::WorkerKind(w, _) => out.push(*w),
                Scope::Proc(p) => out.push(p.worker),
                Scope::Union(v) => v.iter().for_each(|s| named(s, out)),
                Scope::Any | Scope::Kind(_) => {}
            }
        }
        let scope = &self.placer.scopes[s as usize].scope;
        let mut workers = Vec::new();
        named(scope, &mut workers);
        workers.sort_unstable();
        workers.dedup();
        let gone: Vec<String> = workers
            .into_iter()
            .filter(|w| self.topology.worker(*w).is_none())
            .map(|w| w.to_string())
            .collect();
        if gone.is_empty() {
            scope.to_string()
        } else {
            format!(
                "{scope} ({} not in the pool: lost, or never joined)",
                gone.join(", ")
            )
        }
    }
}
