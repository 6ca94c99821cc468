//! A simulated cluster: random DAGs run on simulated workers that execute tasks, report in
//! random order, die and come back, with every message going through the wire encoding and
//! the scheduler's invariants checked after each step. A failing seed is printed.

mod common;

use common::*;
use dagger_core::wire::{self, Outcome, RunArg, RunTask, TaskDone, ToWorker};
use dagger_core::{Arg, ChunkId, Options, Scope, TaskError, TaskId, WorkerId};
use dagger_sched::{Command, Completion, Config, Scheduler};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

const INLINE: u32 = 12;

struct SimWorker {
    inc: u32,
    alive: bool,
    store: HashMap<ChunkId, Vec<u8>>,
    queue: Vec<RunTask>,
}

struct Node {
    deps: Vec<u64>,
    big: bool,
    panics_once: bool,
    always_panics: bool,
}

enum Expect {
    Value(u64),
    Failed,
}

struct Sim {
    seed: u64,
    rng: Rng,
    s: Scheduler,
    nodes: Vec<Node>,
    workers: BTreeMap<WorkerId, SimWorker>,
    dones: Vec<(WorkerId, u32, TaskDone)>,
    now: Duration,
    next_worker: u32,
    kills: u32,
    kills_enabled: bool,
    completes: HashMap<TaskId, Result<Completion, TaskError>>,
    to_fetch: Vec<TaskId>,
    got: HashMap<TaskId, Result<u64, TaskError>>,
    releasable: Vec<TaskId>,
    executions: HashMap<TaskId, u32>,
    unexplained_move_failures: u32,
    /// Tasks that had a failed run (a fetch of their result legitimately fails).
    failed_runs: HashSet<TaskId>,
    /// Reports delivered from an incarnation that was already declared lost.
    stale_dones: u32,
}

enum Resolve {
    Ready(Vec<Vec<u8>>),
    Wait,
    Failed(String),
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let kills_enabled = rng.chance(75);
        let config = Config {
            inline_limit: INLINE,
            max_batch: 1 + rng.below(64) as usize,
            ..Config::default()
        };
        let mut sim = Sim {
            seed,
            rng,
            s: Scheduler::new(config),
            nodes: Vec::new(),
            workers: BTreeMap::new(),
            dones: Vec::new(),
            now: Duration::ZERO,
            next_worker: 1,
            kills: 0,
            kills_enabled,
            completes: HashMap::new(),
            to_fetch: Vec::new(),
            got: HashMap::new(),
            releasable: Vec::new(),
            executions: HashMap::new(),
            unexplained_move_failures: 0,
            failed_runs: HashSet::new(),
            stale_dones: 0,
        };
        for _ in 0..3 {
            sim.add_worker();
        }
        sim
    }

    fn add_worker(&mut self) {
        // Either a fresh id or a dead id coming back with a new incarnation.
        let dead: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.alive)
            .map(|(&id, _)| id)
            .collect();
        let (id, inc) = if !dead.is_empty() && self.rng.chance(50) {
            let id = dead[self.rng.below(dead.len() as u64) as usize];
            (id, self.workers[&id].inc + 1)
        } else {
            let id = WorkerId(self.next_worker);
            self.next_worker += 1;
            (id, 1)
        };
        self.workers.insert(
            id,
            SimWorker {
                inc,
                alive: true,
                store: HashMap::new(),
                queue: Vec::new(),
            },
        );
        self.s.worker_joined(self.now, worker(id.0, inc, 2, &[]));
    }

    fn gen_graph(&mut self) {
        let n = 200 + self.rng.below(1801);
        let initial: Vec<WorkerId> = self.workers.keys().copied().collect();
        let mut batch = Vec::new();
        for k in 1..=n {
            let mut deps = Vec::new();
            if k > 1 {
                for _ in 0..self.rng.below(4) {
                    let lo = k.saturating_sub(60).max(1);
                    let d = lo + self.rng.below(k - lo);
                    deps.push(d);
                }
            }
            let node = Node {
                deps: deps.clone(),
                big: self.rng.chance(20),
                panics_once: self.rng.chance(2),
                always_panics: self.rng.chance(1),
            };
            let mut options = Options::new().priority(self.rng.below(3) as i32);
            if node.panics_once {
                options = options.retries(1);
            }
            if !self.kills_enabled && self.rng.chance(10) {
                let w = initial[self.rng.below(initial.len() as u64) as usize];
                options = options.scope(Scope::Worker(w));
            }
            let mut args = vec![Arg::Value(wire::encode(&k))];
            args.extend(deps.iter().map(|&d| Arg::Task(TaskId(d))));
            batch.push(spec(k, "f", args, options));
            self.nodes.push(node);
            if self.rng.chance(5) || k == n {
                self.s
                    .submit(self.now, std::mem::take(&mut batch))
                    .expect("valid graph");
            }
        }
    }

    fn expected(&self) -> Vec<Expect> {
        let mut out: Vec<Expect> = Vec::new();
        for (k0, node) in self.nodes.iter().enumerate() {
            let k = k0 as u64 + 1;
            let mut e = if node.always_panics {
                Expect::Failed
            } else {
                Expect::Value(k)
            };
            for &d in &node.deps {
                e = match (e, &out[d as usize - 1]) {
                    (Expect::Value(a), Expect::Value(b)) => Expect::Value(a.wrapping_add(*b)),
                    _ => Expect::Failed,
                };
            }
            out.push(e);
        }
        out
    }

    fn deliver_commands(&mut self) {
        for c in drain(&mut self.s) {
            match c {
                Command::Send { worker, msg } => {
                    let Some(w) = self.workers.get_mut(&worker).filter(|w| w.alive) else {
                        panic!("seed {}: message for absent {worker}: {msg:?}", self.seed)
                    };
                    match msg {
                        ToWorker::Run(ts) => {
                            for t in ts {
                                assert_eq!(t.inline_limit, INLINE);
                                w.queue.push(t);
                            }
                        }
                        ToWorker::Release(cs) => {
                            for c in cs {
                                w.store.remove(&c);
                            }
                        }
                        other => panic!("seed {}: unexpected {other:?}", self.seed),
                    }
                }
                Command::Complete { task, result } => {
                    assert!(
                        self.completes.insert(task, result.clone()).is_none(),
                        "seed {}: {task} completed twice",
                        self.seed
                    );
                    match result {
                        Ok(Completion::Value(bytes)) => {
                            let (v, _): (u64, Vec<u8>) = wire::decode(&bytes).unwrap();
                            self.got.insert(task, Ok(v));
                            self.releasable.push(task);
                        }
                        Ok(Completion::Stored { .. }) => self.to_fetch.push(task),
                        Err(e) => {
                            self.got.insert(task, Err(e));
                            self.releasable.push(task);
                        }
                    }
                }
                Command::Event(_) => {}
            }
        }
    }

    fn resolve(&self, me: WorkerId, rt: &RunTask) -> Resolve {
        let mut out = Vec::new();
        for a in &rt.args {
            match a {
                RunArg::Value(b) => out.push(b.clone()),
                RunArg::Chunk { chunk, from } => {
                    if let Some(b) = self.workers[&me].store.get(chunk) {
                        out.push(b.clone());
                        continue;
                    }
                    let mut found = None;
                    let mut producing = false;
                    for f in from {
                        let Some(w) = self.workers.get(f).filter(|w| w.alive) else {
                            continue;
                        };
                        if let Some(b) = w.store.get(chunk) {
                            found = Some(b.clone());
                            break;
                        }
                        producing |= w.queue.iter().any(|q| q.task == chunk.task());
                    }
                    match found {
                        Some(b) => out.push(b),
                        None if producing => return Resolve::Wait,
                        None => {
                            let any_dead = from
                                .iter()
                                .any(|f| !self.workers.get(f).is_some_and(|w| w.alive));
                            return Resolve::Failed(if any_dead {
                                "dead".into()
                            } else {
                                "missing".into()
                            });
                        }
                    }
                }
            }
        }
        Resolve::Ready(out)
    }

    fn execute_some(&mut self) {
        let alive: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.alive && !w.queue.is_empty())
            .map(|(&id, _)| id)
            .collect();
        if alive.is_empty() {
            return;
        }
        let me = alive[self.rng.below(alive.len() as u64) as usize];
        let n = 1 + self.rng.below(20);
        for _ in 0..n {
            let q = &self.workers[&me].queue;
            if q.is_empty() {
                return;
            }
            // Some runnable task among the queue, searched from a random start.
            let start = self.rng.below(q.len() as u64) as usize;
            let mut pick = None;
            for off in 0..q.len() {
                let j = (start + off) % q.len();
                match self.resolve(me, &q[j]) {
                    Resolve::Wait => continue,
                    r => {
                        pick = Some((j, r));
                        break;
                    }
                }
            }
            let Some((j, r)) = pick else { return };
            let rt = self.workers.get_mut(&me).unwrap().queue.swap_remove(j);
            let k = rt.task.0;
            let node = &self.nodes[k as usize - 1];
            let outcome = match r {
                Resolve::Wait => unreachable!(),
                Resolve::Failed(why) => {
                    // A holder that died (and maybe came back empty) or a producer that
                    // failed explains a missing chunk; anything else is a premature release.
                    let explained = why == "dead"
                        || self.kills > 0
                        || rt.args.iter().any(|a| match a {
                            RunArg::Chunk { chunk, .. } => self.failed_runs.contains(&chunk.task()),
                            _ => false,
                        });
                    if !explained {
                        eprintln!("seed {}: unexplained fetch failure of {} on {me}: {:?} kills={} stats={:?}", self.seed, rt.task, rt.args, self.kills, self.s.stats());
                        for a in &rt.args {
                            if let RunArg::Chunk { chunk, .. } = a {
                                eprintln!(
                                    "  {chunk}: holders {:?} info {:?}",
                                    self.s.holders(*chunk),
                                    self.s.task_info(chunk.task())
                                );
                            }
                        }
                        self.unexplained_move_failures += 1;
                    }
                    let _ = why;
                    Outcome::Failed(TaskError::MoveFailed {
                        task: rt.task,
                        cause: dagger_core::MoveFailure::NoHolder,
                    })
                }
                Resolve::Ready(args) => {
                    let runs = self.executions.entry(rt.task).or_default();
                    *runs += 1;
                    if node.always_panics || (node.panics_once && *runs == 1) {
                        Outcome::Failed(TaskError::Panicked {
                            task: rt.task,
                            func: rt.func.to_string(),
                            message: "boom".into(),
                        })
                    } else {
                        let mut v: u64 = wire::decode(&args[0]).unwrap();
                        for a in &args[1..] {
                            let (x, _): (u64, Vec<u8>) = wire::decode(a).unwrap();
                            v = v.wrapping_add(x);
                        }
                        let pad = if node.big { vec![7u8; 20] } else { Vec::new() };
                        let bytes = wire::encode(&(v, pad));
                        let w = self.workers.get_mut(&me).unwrap();
                        w.store.insert(rt.task.chunk(), bytes.clone());
                        if bytes.len() as u32 <= rt.inline_limit {
                            Outcome::Value(bytes)
                        } else {
                            Outcome::Stored {
                                size: bytes.len() as u64,
                            }
                        }
                    }
                }
            };
            if matches!(outcome, Outcome::Failed(_)) {
                self.failed_runs.insert(rt.task);
            }
            let inc = self.workers[&me].inc;
            let run_ns = 1_000 + self.rng.below(100_000);
            self.dones.push((
                me,
                inc,
                TaskDone {
                    task: rt.task,
                    proc: rt.proc,
                    run_ns,
                    outcome,
                },
            ));
        }
    }

    fn deliver_dones(&mut self) {
        let n = 1 + self.rng.below(20);
        for _ in 0..n {
            if self.dones.is_empty() {
                return;
            }
            let j = self.rng.below(self.dones.len() as u64) as usize;
            let (w, inc, d) = self.dones.swap_remove(j);
            if self.workers[&w].inc != inc || !self.workers[&w].alive {
                self.stale_dones += 1;
            }
            report(&mut self.s, self.now, w, inc, d);
        }
    }

    fn client_step(&mut self, release_all: bool) {
        let mut still = Vec::new();
        for task in std::mem::take(&mut self.to_fetch) {
            let holders = self.s.holders(task.chunk()).to_vec();
            let mut fetched = None;
            for h in &holders {
                let w = &self.workers[h];
                assert!(w.alive, "seed {}: holder {h} of {task} is dead", self.seed);
                if let Some(b) = w.store.get(&task.chunk()) {
                    fetched = Some(b.clone());
                    break;
                }
            }
            match fetched {
                Some(b) => {
                    let (v, _): (u64, Vec<u8>) = wire::decode(&b).unwrap();
                    self.got.insert(task, Ok(v));
                    self.releasable.push(task);
                }
                None => {
                    assert!(
                        holders.is_empty(),
                        "seed {}: {task} listed on {holders:?} but not there",
                        self.seed
                    );
                    still.push(task);
                }
            }
        }
        self.to_fetch = still;
        let mut keep = Vec::new();
        for task in std::mem::take(&mut self.releasable) {
            if release_all || self.rng.chance(50) {
                self.s.release(task);
            } else {
                keep.push(task);
            }
        }
        self.releasable = keep;
    }

    fn fault(&mut self) {
        let alive: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.alive)
            .map(|(&id, _)| id)
            .collect();
        if self.kills_enabled && self.kills < 3 && alive.len() >= 2 && self.rng.chance(50) {
            let victim = alive[self.rng.below(alive.len() as u64) as usize];
            let w = self.workers.get_mut(&victim).unwrap();
            w.alive = false;
            w.store.clear();
            w.queue.clear();
            self.kills += 1;
            self.s.worker_lost(
                self.now,
                victim,
                dagger_core::LostReason::ProcessExited {
                    pid: 1,
                    exit: dagger_core::ExitCause::Signal(9),
                },
            );
        } else if self.workers.len() < 6 || alive.len() < 3 {
            self.add_worker();
        }
    }

    fn quiescent(&self) -> bool {
        self.dones.is_empty()
            && self.to_fetch.is_empty()
            && self.workers.values().all(|w| w.queue.is_empty())
            && self.completes.len() == self.nodes.len()
    }

    fn run(&mut self) {
        self.gen_graph();
        let mut steps = 0u64;
        loop {
            steps += 1;
            assert!(
                steps < 1_000_000,
                "seed {}: no progress; stats {:?}",
                self.seed,
                self.s.stats()
            );
            match self.rng.below(100) {
                0..=29 => self.deliver_commands(),
                30..=59 => self.execute_some(),
                60..=84 => self.deliver_dones(),
                85..=97 => self.client_step(false),
                _ => self.fault(),
            }
            self.now += Duration::from_micros(self.rng.below(1000));
            if let Err(e) = self.s.check_invariants() {
                panic!(
                    "seed {}: invariant broken after step {steps}: {e}",
                    self.seed
                );
            }
            if self.quiescent() {
                self.deliver_commands();
                if self.quiescent() {
                    break;
                }
            }
        }
        // Check every result against the graph.
        let expected = self.expected();
        for (k0, e) in expected.iter().enumerate() {
            let task = TaskId(k0 as u64 + 1);
            let got = self
                .got
                .get(&task)
                .unwrap_or_else(|| panic!("seed {}: no result for {task}", self.seed));
            match (e, got) {
                (Expect::Value(v), Ok(g)) => {
                    assert_eq!(v, g, "seed {}: {task} wrong value", self.seed)
                }
                (Expect::Failed, Err(TaskError::Panicked { task: t, .. })) => {
                    assert_eq!(*t, task);
                    assert!(
                        self.nodes[k0].always_panics,
                        "seed {}: {task} should not fail",
                        self.seed
                    );
                }
                (
                    Expect::Failed,
                    Err(TaskError::DependencyFailed {
                        task: t,
                        dependency,
                        ..
                    }),
                ) => {
                    assert_eq!(*t, task);
                    assert!(
                        self.nodes[dependency.0 as usize - 1].always_panics,
                        "seed {}: {task} blames {dependency}",
                        self.seed
                    );
                }
                (_, g) => panic!("seed {}: {task}: unexpected {g:?}", self.seed),
            }
        }
        assert_eq!(
            self.unexplained_move_failures, 0,
            "seed {}: fetches of released chunks",
            self.seed
        );
        // Release everything: every record shrinks and every worker drops every chunk.
        self.client_step(true);
        self.deliver_commands();
        self.s.check_invariants().unwrap();
        let stats = self.s.stats();
        assert_eq!(
            stats.live, 0,
            "seed {}: records not freed: {stats:?}",
            self.seed
        );
        assert_eq!(
            stats.running + stats.ready + stats.waiting,
            0,
            "seed {}: {stats:?}",
            self.seed
        );
        for (id, w) in &self.workers {
            if w.alive {
                assert!(
                    w.store.is_empty(),
                    "seed {}: {id} still holds {:?}",
                    self.seed,
                    w.store.keys().collect::<HashSet<_>>()
                );
            }
        }
    }
}

#[test]
fn random_dags_with_faults() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        // The invariant check after every step is O(tasks): an unoptimised build runs
        // fewer seeds by default (`cargo test --release` runs 200 in seconds).
        .unwrap_or(if cfg!(debug_assertions) { 40 } else { 200 });
    let first: u64 = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let (mut kills, mut tasks, mut stale, mut stored) = (0, 0, 0, 0);
    for seed in first..first + seeds {
        let mut sim = Sim::new(seed);
        sim.run();
        kills += sim.kills;
        tasks += sim.nodes.len();
        stale += sim.stale_dones;
        stored += sim.nodes.iter().filter(|n| n.big).count();
    }
    eprintln!("{seeds} seeds: {tasks} tasks ({stored} stored results), {kills} workers killed, {stale} stale reports fenced");
    assert!(kills > 0 && stale > 0);
}
