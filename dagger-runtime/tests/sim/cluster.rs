//! The simulated cluster: one real `DriverCore` and real `WorkerState`s joined by a virtual
//! network in virtual time.
//!
//! # The network
//!
//! A connection joins two ends (the driver and a worker process, or two worker processes)
//! and delivers frames in order after the latency of that pair (drawn per pair). It is a
//! reliable ordered stream while it is open, like QUIC: a frame is never dropped from a
//! connection that stays open. When it closes, whatever is in flight is lost, and each end
//! is told (the end that closed it at once, the other after the latency, or after the
//! transport's idle timeout when nothing can reach it).
//!
//! A partition between two ends makes their connections silent without closing them:
//! frames wait until it heals (then arrive in order), connection attempts between them
//! hang, and if it lasts as long as the transport's idle timeout the connections between
//! them close (losing what was in flight), as QUIC's idle timeout would.
//!
//! # Processes
//!
//! A worker process runs one `WorkerState`. Paused (SIGSTOP), it handles nothing: frames,
//! closes, task completions and its timers wait until it resumes, then run in order. A
//! paused process's connections close at the idle timeout. Killed (SIGKILL), it is gone:
//! its connections are cut (the other ends learn at once when the socket is closed, or at
//! the idle timeout when it goes silent), and the driver may be told of the exit the way a
//! parent sees its child exit. A process whose driver connection closes exits, as the
//! facade's worker does.
//!
//! Faults of tasks and processes: a poison task crashes the process running it a little
//! after it starts; some processes are flaky and make tasks with retries panic; a
//! supervisor replaces crashed processes while its `dagger_ft::RestartBudget` allows; a
//! worker may also leave cleanly (it closes its links). The oracle accepts
//! `TaskError::Poisoned` for a poison task, and for another task only if the simulation
//! itself saw it running in two processes that crashed; `LostReason::Excluded` only for a
//! worker where at least as many distinct tasks panicked as its strikes.
//!
//! Shared memory is off (`WorkerConfig::shm` false, no shortcut edges), and the processes
//! are spread over a few host names: every chunk moves over the links.

use super::graph::{self, Graph, FUNC};
use dagger_core::wire::{self, Hello, PeerMsg, ToDriver, ToWorker};
use dagger_core::{
    ExitCause, Incarnation, LostReason, MemorySpace, ProcId, ProcInfo, ProcKind, TaskError, TaskId,
    WorkerId, WorkerInfo,
};
use dagger_runtime::driver::{
    AfterDrain, DrainOutcome, DriverConfig, DriverCore, DriverEvent, FetchId, LinkId,
};
use dagger_runtime::worker::{Action, Dest, LinkKey, WorkerConfig, WorkerState};
use dagger_sched::{ClusterEvent, Completion, DrainError, Scheduler};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

/// The transport's idle timeout (dagger-net's default).
pub const IDLE: Duration = Duration::from_secs(10);
/// The scheduler's inline limit in the simulation: padded results exceed it.
const INLINE_LIMIT: u32 = 12;
/// A run still going after this much virtual time is a hang.
const HANG_LIMIT: Duration = Duration::from_secs(600);
/// How many times a task may lose its worker or an input before it fails (the fault
/// policy's default budget, `dagger_ft::DEFAULT_LOSS_RETRIES`, plus the first run).
const LOSS_BUDGET_ATTEMPTS: u32 = dagger_ft::DEFAULT_LOSS_RETRIES + 1;
/// How long the cluster runs on after the last task settled (and the last fault healed)
/// before the final checks.
const QUIET: Duration = Duration::from_secs(7);
/// The registry fingerprint every simulated process shares.
const REGISTRY: u64 = 0x5eed;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

type Worker = WorkerState<Vec<u8>>;
/// The driver's slot per task is the task's number, checked when it comes back.
type Driver = DriverCore<u64>;

/// One end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Driver,
    Proc(usize),
}

struct Conn {
    /// For a driver connection, `[worker, driver]`; for a peer connection, `[opener,
    /// acceptor]`.
    ends: [Who; 2],
    latency: Duration,
    closed: bool,
    /// Frames to the driver arriving up to this time after the close are still handed to
    /// the driver core (its reader's backlog): they must be fenced.
    driver_grace: Duration,
    /// FIFO: the due time of the last frame toward each end.
    last_due: [Duration; 2],
    /// The driver took the join (driver connection) / the acceptor took the hello.
    accepted: bool,
    /// Each end has been told of the close.
    told: [bool; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PState {
    Alive,
    Paused,
    Dead,
}

struct Proc {
    core: Worker,
    /// How far this process's clock is ahead of the driver's (each process has a clock
    /// of its own origin; the driver aligns the times it reports).
    clock: Duration,
    pid: u32,
    state: PState,
    driver_conn: u64,
    conns: BTreeSet<u64>,
    deferred: Vec<Ev>,
    timer: Option<Duration>,
    /// When each of its thread processors is next free (index = processor index).
    free_at: Vec<Duration>,
    tokens: BTreeMap<TaskId, u64>,
    /// Tasks that finished here and whose `Done` has not reached the driver: to the driver
    /// they still run here, and a crash now counts against them as against a running one.
    unreported: BTreeSet<TaskId>,
    /// The driver declared it lost (any later message of it is stale).
    lost: bool,
    /// It makes tasks with retries panic, half the time.
    flaky: bool,
    /// The driver removed it from the pool (a drain stopped it, or its drain ended it as
    /// lost): it exits and is not replaced.
    removed: bool,
}

/// How a killed process's end is noticed.
#[derive(Clone, Copy, Debug)]
enum KillMode {
    /// Its parent (the driver's process) sees it exit; its links go silent.
    LocalChild,
    /// A remote process: its links go silent (the driver's heartbeat timeout finds it).
    Remote,
    /// Its sockets are closed: the other ends see the links close.
    LinkClose,
    /// It leaves on its own: it closes its links and exits (not replaced).
    Leave,
}

enum Ev {
    Frame {
        conn: u64,
        to: usize,
        frame: Vec<u8>,
    },
    Closed {
        conn: u64,
        to: usize,
    },
    /// The idle timeout of a connection: it closes if it is still cut off.
    IdleCheck {
        conn: u64,
    },
    DriverTimer,
    WorkerTimer(usize),
    Finish {
        p: usize,
        task: TaskId,
        token: u64,
        run: Duration,
        result: Result<Vec<u8>, TaskError>,
    },
    Connect {
        p: usize,
        peer: WorkerId,
        target: Option<usize>,
        started: Duration,
    },
    Exited {
        pid: u32,
    },
    /// A poison task running in process `p` crashes it.
    Crash(usize),
    Fault,
    Resume(usize),
    Submit(usize),
    Fetch(TaskId, Vec<WorkerId>),
    Release(TaskId),
    Spawn,
    /// The client removes one or two workers from the pool.
    Drain,
    /// A process is killed (a race with a drain: the drained worker, or the destination of
    /// a hand-over).
    Kill(usize, KillMode),
    /// A worker drained and kept is killed: nothing may be lost or run again.
    KillKept(usize, WorkerId),
}

impl Ev {
    /// The process this event is for, if it is one (paused processes defer it).
    fn target(&self, conns: &BTreeMap<u64, Conn>) -> Option<usize> {
        match self {
            Ev::Frame { conn, to, .. } | Ev::Closed { conn, to } => match conns[conn].ends[*to] {
                Who::Proc(p) => Some(p),
                Who::Driver => None,
            },
            Ev::WorkerTimer(p) | Ev::Finish { p, .. } | Ev::Connect { p, .. } | Ev::Crash(p) => {
                Some(*p)
            }
            _ => None,
        }
    }
}

struct Partition {
    a: Who,
    b: Who,
    /// When it heals; `None`: never.
    until: Option<Duration>,
}

/// What a node ended with, as the client saw it (the values are shown in reports).
#[derive(Clone, Debug)]
#[allow(dead_code)]
enum Settled {
    Value(u64),
    Error(TaskError),
}

/// Totals over a run, for the coverage line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    /// Runs added up.
    pub seeds: u64,
    /// Runs in which some task spent its loss budget (or a fetch found no holder for
    /// that reason).
    pub seeds_budget_spent: u64,
    pub tasks: u64,
    pub executions: u64,
    pub stored: u64,
    pub fetches: u64,
    pub kills: u64,
    pub pauses: u64,
    pub long_pauses: u64,
    pub partitions: u64,
    pub link_cuts: u64,
    pub joins: u64,
    pub lost: u64,
    pub silent: u64,
    pub retries: u64,
    pub recomputed: u64,
    pub fenced_frames: u64,
    pub lost_frames: u64,
    pub budget_exhausted: u64,
    pub no_processor: u64,
    pub virtual_ms: u64,
    pub events: u64,
    /// Processes crashed by poison tasks.
    pub poison_crashes: u64,
    /// Poison tasks that ended `Poisoned`.
    pub poisoned: u64,
    /// Other tasks that ended `Poisoned` (they ran in two crashed processes).
    pub innocent_poisoned: u64,
    /// Crashed processes the supervisor replaced, and those it refused to.
    pub restarts: u64,
    pub restarts_refused: u64,
    /// Workers that left cleanly.
    pub leaves: u64,
    /// Panics caused by flaky workers.
    pub flaky_panics: u64,
    /// Workers excluded by the fault policy (of them, flaky ones).
    pub excluded: u64,
    pub excluded_flaky: u64,
    /// Workers whose drain was accepted, and drains refused because they would strand a
    /// pinned task.
    pub drains: u64,
    pub drains_stranding: u64,
    /// Drains that ended `Drained` (of them, kept workers), past their deadline, with a
    /// failed hand-over, with the worker lost first.
    pub drained: u64,
    pub drained_kept: u64,
    pub drain_deadlines: u64,
    pub drain_handover_failed: u64,
    pub drain_lost: u64,
    /// Results handed over by drains that ended `Drained`.
    pub handed_over: u64,
    /// Kept drained workers killed (of them, ones that had become a sole holder since,
    /// when another holder was lost).
    pub kept_killed: u64,
    pub kept_killed_sole: u64,
    /// Drained workers killed right after their drain started, and hand-over
    /// destinations killed as the request reached them.
    pub drain_race_kills: u64,
    pub handover_dest_kills: u64,
    /// Runs whose timeline was recorded and checked, and the task spans in them.
    pub timelines_checked: u64,
    pub spans_checked: u64,
}

impl Totals {
    /// Adds the totals of one run.
    pub fn add(&mut self, o: &Totals) {
        self.seeds += 1;
        self.seeds_budget_spent += u64::from(o.budget_exhausted > 0);
        self.tasks += o.tasks;
        self.executions += o.executions;
        self.stored += o.stored;
        self.fetches += o.fetches;
        self.kills += o.kills;
        self.pauses += o.pauses;
        self.long_pauses += o.long_pauses;
        self.partitions += o.partitions;
        self.link_cuts += o.link_cuts;
        self.joins += o.joins;
        self.lost += o.lost;
        self.silent += o.silent;
        self.retries += o.retries;
        self.recomputed += o.recomputed;
        self.fenced_frames += o.fenced_frames;
        self.lost_frames += o.lost_frames;
        self.budget_exhausted += o.budget_exhausted;
        self.no_processor += o.no_processor;
        self.virtual_ms += o.virtual_ms;
        self.events += o.events;
        self.poison_crashes += o.poison_crashes;
        self.poisoned += o.poisoned;
        self.innocent_poisoned += o.innocent_poisoned;
        self.restarts += o.restarts;
        self.restarts_refused += o.restarts_refused;
        self.leaves += o.leaves;
        self.flaky_panics += o.flaky_panics;
        self.excluded += o.excluded;
        self.excluded_flaky += o.excluded_flaky;
        self.drains += o.drains;
        self.drains_stranding += o.drains_stranding;
        self.drained += o.drained;
        self.drained_kept += o.drained_kept;
        self.drain_deadlines += o.drain_deadlines;
        self.drain_handover_failed += o.drain_handover_failed;
        self.drain_lost += o.drain_lost;
        self.handed_over += o.handed_over;
        self.kept_killed += o.kept_killed;
        self.kept_killed_sole += o.kept_killed_sole;
        self.drain_race_kills += o.drain_race_kills;
        self.handover_dest_kills += o.handover_dest_kills;
        self.timelines_checked += o.timelines_checked;
        self.spans_checked += o.spans_checked;
    }
}

/// One simulated run.
pub struct Sim {
    seed: u64,
    rng: StdRng,
    now: Duration,
    seq: u64,
    queue: BTreeMap<(Duration, u64), Ev>,

    driver: Driver,
    driver_timer: Option<Duration>,
    procs: Vec<Proc>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    next_token: u64,
    /// Latency per pair of ends.
    latency: BTreeMap<(Who, Who), Duration>,
    partitions: Vec<Partition>,
    hosts: usize,

    graph: Graph,
    expected: Vec<Option<u64>>,
    pins: Vec<WorkerId>,
    /// Per node: what the client got.
    settled: Vec<Option<Settled>>,
    completed: Vec<bool>,
    outstanding: usize,
    fetches: BTreeMap<FetchId, TaskId>,
    released: BTreeSet<TaskId>,
    /// Per node: the last batch that takes its result (0 if none).
    last_ref: Vec<usize>,
    /// How many batches were submitted.
    submitted: usize,
    executions: BTreeMap<TaskId, u32>,
    /// Per task: the processes that crashed (were killed, or left) while it ran there.
    crashed_running: BTreeMap<TaskId, BTreeSet<usize>>,
    /// Per task: how many of its executions panicked.
    panics: BTreeMap<TaskId, u32>,
    /// Per process: the tasks that panicked there.
    panicked_on: BTreeMap<usize, BTreeSet<TaskId>>,
    /// The share of processes that are flaky, in percent.
    flaky_pct: u32,
    /// The supervisor's restart policy for crashed processes.
    supervisor: dagger_ft::RestartBudget,
    lost_workers: BTreeSet<WorkerId>,
    /// In the current pump: drained workers stopped, whether a drain removed a worker as
    /// lost (its results are recomputed), and the drained worker whose loss was the last
    /// cluster event (a retry now would be one it caused).
    pump_stops: u32,
    pump_other_removals: bool,
    after_drained_loss: Option<WorkerId>,
    faults_left: u32,
    kills_left: u32,
    /// Drains still to come, and hand-over destinations that may still be killed.
    drains_left: u32,
    dest_kills_left: u32,
    /// Drains in progress, by worker.
    drains: BTreeMap<WorkerId, DrainRec>,
    /// Every worker whose drain was accepted (it takes no new task, ever).
    drained_ever: BTreeSet<WorkerId>,
    /// Workers drained and kept, with their process.
    kept: BTreeMap<WorkerId, usize>,
    /// What each worker being drained ran and held after the previous step.
    drain_snap: BTreeMap<WorkerId, DrainSnap>,
    failure: Option<String>,
    /// Until when faults may still hold messages back (partitions healing, links timing
    /// out).
    busy_until: Duration,
    /// Print every delivery and fault (`DAGGER_SIM_TRACE`, for a replay).
    trace: bool,
    pub totals: Totals,
}

/// A drain the client asked for, until it resolves.
#[derive(Clone, Copy, Debug)]
struct DrainRec {
    p: usize,
    since: Duration,
    deadline: Option<Duration>,
    then: AfterDrain,
}

/// A worker being drained, as the scheduler saw it after a step.
#[derive(Clone, Debug, Default)]
struct DrainSnap {
    /// Tasks dispatched to it and not finished.
    running: Vec<TaskId>,
    /// Large results of which it is the only holder.
    sole: usize,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Its totals.
    pub totals: Totals,
}

/// The result of a run: `Err` with the report of what went wrong.
pub type RunResult = Result<Outcome, String>;

impl Sim {
    /// A run for `seed`: the graph, the cluster's size and the faults are drawn from it.
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let workers = rng.random_range(2..=6usize);
        let graph = Graph::random(&mut rng, 200, workers);
        let expected = graph.expected();
        let n = graph.nodes.len();
        let mut last_ref = vec![0usize; n];
        let mut b = 0;
        for (k, node) in graph.nodes.iter().enumerate() {
            if k >= graph.batch_ends[b] {
                b += 1;
            }
            for &d in &node.deps {
                last_ref[d] = last_ref[d].max(b);
            }
        }
        let config = dagger_sched::Config {
            inline_limit: INLINE_LIMIT,
            max_batch: rng.random_range(1..=64),
            no_processor_grace: Some(ms(rng.random_range(500..=3000))),
            ..dagger_sched::Config::default()
        };
        let dconfig = DriverConfig {
            shm_shortcuts: false,
            release_batch: rng.random_range(1..=64),
            record: rng.random_bool(0.5),
            ..DriverConfig::default()
        };
        let mut driver = Driver::new(Scheduler::new(config), dconfig);
        driver.add_driver_root(Duration::ZERO, "host-0".into(), 1);
        let faults_left = if rng.random_bool(0.15) {
            0
        } else {
            rng.random_range(1..=6)
        };
        let kills_left = rng.random_range(0..=3);
        let drains_left = if rng.random_bool(0.3) {
            0
        } else {
            rng.random_range(1..=3)
        };
        let dest_kills_left = rng.random_range(0..=1);
        let flaky_pct = if rng.random_bool(0.4) {
            rng.random_range(10..=50)
        } else {
            0
        };
        let mut sim = Sim {
            seed,
            rng,
            now: Duration::ZERO,
            seq: 0,
            queue: BTreeMap::new(),
            driver,
            driver_timer: None,
            procs: Vec::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            next_token: 1,
            latency: BTreeMap::new(),
            partitions: Vec::new(),
            hosts: 1 + workers / 2,
            graph,
            expected,
            pins: (1..=workers as u32).map(WorkerId).collect(),
            settled: vec![None; n],
            completed: vec![false; n],
            outstanding: n,
            fetches: BTreeMap::new(),
            released: BTreeSet::new(),
            last_ref,
            submitted: 0,
            executions: BTreeMap::new(),
            crashed_running: BTreeMap::new(),
            panics: BTreeMap::new(),
            panicked_on: BTreeMap::new(),
            flaky_pct,
            supervisor: dagger_ft::RestartBudget::default(),
            lost_workers: BTreeSet::new(),
            pump_stops: 0,
            pump_other_removals: false,
            after_drained_loss: None,
            faults_left,
            kills_left,
            drains_left,
            dest_kills_left,
            drains: BTreeMap::new(),
            drained_ever: BTreeSet::new(),
            kept: BTreeMap::new(),
            drain_snap: BTreeMap::new(),
            failure: None,
            busy_until: Duration::ZERO,
            trace: std::env::var_os("DAGGER_SIM_TRACE").is_some(),
            totals: Totals {
                tasks: n as u64,
                ..Totals::default()
            },
        };
        // The initial workers start one after the other, so they get ids 1..=workers.
        for k in 0..workers {
            sim.spawn_process(ms(k as u64));
        }
        // The client submits its batches at random times, in order.
        let at = ms(sim.rng.random_range(0..20));
        sim.push(at, Ev::Submit(0));
        for _ in 0..sim.faults_left {
            let at = ms(sim.rng.random_range(30..1200));
            sim.push(at, Ev::Fault);
        }
        for _ in 0..sim.drains_left {
            let at = ms(sim.rng.random_range(20..1500));
            sim.push(at, Ev::Drain);
        }
        sim
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("{:>12?} {}", self.now, what());
        }
    }

    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), ev);
    }

    fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            self.failure = Some(format!("at {:?}: {what}", self.now));
        }
    }

    fn latency(&mut self, a: Who, b: Who) -> Duration {
        let key = if a <= b { (a, b) } else { (b, a) };
        if let Some(l) = self.latency.get(&key) {
            return *l;
        }
        let l = Duration::from_micros(self.rng.random_range(20..3000));
        self.latency.insert(key, l);
        l
    }

    /// The active partition between `a` and `b`: `Some(heal time)` (`None` inside: never).
    fn partitioned(&self, a: Who, b: Who) -> Option<Option<Duration>> {
        self.partitions
            .iter()
            .filter(|p| (p.a == a && p.b == b) || (p.a == b && p.b == a))
            .filter(|p| p.until.is_none_or(|u| u > self.now))
            .map(|p| p.until)
            .max_by(|x, y| match (x, y) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, _) => std::cmp::Ordering::Greater,
                (_, None) => std::cmp::Ordering::Less,
                (Some(a), Some(b)) => a.cmp(b),
            })
    }

    // ------------------------------------------------------------------ processes

    /// Process `p`'s clock now.
    fn wnow(&self, p: usize) -> Duration {
        self.now + self.procs[p].clock
    }

    /// Starts a worker process that connects to the driver and joins.
    fn spawn_process(&mut self, at: Duration) {
        let p = self.procs.len();
        let pid = 100 + p as u32;
        let host = format!("host-{}", 1 + p % self.hosts);
        let mut config = WorkerConfig::new(host.clone(), REGISTRY);
        config.shm = false;
        let threads = self.rng.random_range(1..=3u32);
        let flaky = self.rng.random_range(0..100) < self.flaky_pct;
        let clock = Duration::from_micros(self.rng.random_range(0..=3_600_000_000u64));
        let conn = self.new_conn([Who::Proc(p), Who::Driver]);
        self.procs.push(Proc {
            core: Worker::new(config),
            clock,
            pid,
            state: PState::Alive,
            driver_conn: conn,
            conns: [conn].into_iter().collect(),
            deferred: Vec::new(),
            timer: None,
            free_at: vec![Duration::ZERO; threads as usize + 1],
            tokens: BTreeMap::new(),
            unreported: BTreeSet::new(),
            lost: false,
            flaky,
            removed: false,
        });
        let info = process_info(pid, &host, threads);
        let frame = wire::encode(&ToDriver::Join(info));
        let due = at + self.conns[&conn].latency;
        self.conns.get_mut(&conn).unwrap().last_due[1] = due;
        self.push(due, Ev::Frame { conn, to: 1, frame });
    }

    fn new_conn(&mut self, ends: [Who; 2]) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        let latency = self.latency(ends[0], ends[1]);
        self.conns.insert(
            id,
            Conn {
                ends,
                latency,
                closed: false,
                driver_grace: Duration::ZERO,
                last_due: [Duration::ZERO; 2],
                accepted: false,
                told: [false; 2],
            },
        );
        id
    }

    /// Sends a frame on `conn` from end `from`.
    fn send(&mut self, conn: u64, from: usize, frame: Vec<u8>) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(&conn) else {
            self.fail(format!("a frame for unknown connection {conn}"));
            return;
        };
        if c.closed {
            self.totals.lost_frames += 1;
            return;
        }
        let to = 1 - from;
        let due = (now + c.latency).max(c.last_due[to]);
        c.last_due[to] = due;
        self.push(due, Ev::Frame { conn, to, frame });
    }

    /// Closes `conn`. The end `by` (if any) is told at once; the other after `delay`.
    fn close(&mut self, conn: u64, by: Option<usize>, delay: Duration) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closed {
            return;
        }
        c.closed = true;
        let ends = c.ends;
        for e in 0..2 {
            let at = if Some(e) == by { now } else { now + delay };
            // Across a partition, the close reaches the other end when it heals, or at its
            // idle timeout.
            let at = match self.partitioned(ends[0], ends[1]) {
                Some(heal) if Some(e) != by => heal
                    .map(|h| h + self.conns[&conn].latency)
                    .unwrap_or(now + IDLE)
                    .min(now + IDLE)
                    .max(at),
                _ => at,
            };
            self.push(at, Ev::Closed { conn, to: e });
        }
    }

    /// Closes `conn` at its idle timeout: both ends are told at once.
    fn close_idle(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closed {
            return;
        }
        c.closed = true;
        for to in 0..2 {
            self.push(self.now, Ev::Closed { conn, to });
        }
    }

    /// The end of `conn` that `who` is.
    fn end_of(&self, conn: u64, who: Who) -> usize {
        if self.conns[&conn].ends[0] == who {
            0
        } else {
            1
        }
    }

    fn kill(&mut self, p: usize, mode: KillMode) {
        if self.procs[p].state == PState::Dead {
            return;
        }
        self.trace(|| format!("process {p} killed ({mode:?})"));
        self.procs[p].state = PState::Dead;
        self.procs[p].deferred.clear();
        let unreported = std::mem::take(&mut self.procs[p].unreported);
        let running = std::mem::take(&mut self.procs[p].tokens).into_keys();
        for task in running.chain(unreported) {
            self.crashed_running.entry(task).or_default().insert(p);
        }
        let delay = match mode {
            KillMode::LinkClose | KillMode::Leave => self.conns[&self.procs[p].driver_conn].latency,
            KillMode::LocalChild | KillMode::Remote => IDLE,
        };
        // The supervisor replaces a process that died, while its budget lasts (not one the
        // driver removed from the pool).
        if !matches!(mode, KillMode::Leave) && !self.procs[p].removed {
            match self.supervisor.try_restart(self.now) {
                Ok(_) => {
                    self.totals.restarts += 1;
                    let at = self.now + ms(self.rng.random_range(20..200));
                    self.push(at, Ev::Spawn);
                }
                Err(_) => self.totals.restarts_refused += 1,
            }
        }
        for conn in std::mem::take(&mut self.procs[p].conns) {
            let e = self.end_of(conn, Who::Proc(p));
            let l = self.conns[&conn].latency;
            self.close(conn, Some(e), delay.min(IDLE).max(l));
        }
        if let KillMode::LocalChild = mode {
            let pid = self.procs[p].pid;
            self.push(self.now + ms(1), Ev::Exited { pid });
        }
    }

    // ------------------------------------------------------------------ the loop

    /// Runs to the end; `Err` with a report if anything went wrong.
    pub fn run(mut self) -> RunResult {
        let mut settled_at: Option<Duration> = None;
        let mut sched_busy_at = Duration::ZERO;
        while let Some(((at, _), ev)) = self.queue.pop_first() {
            self.now = at;
            self.totals.events += 1;
            self.handle(ev);
            self.pump();
            if let Err(e) = self.driver.scheduler().check_invariants() {
                self.fail(format!("scheduler invariant broken: {e}"));
            }
            self.check_holders();
            self.snap_drains();
            if self.failure.is_some() {
                break;
            }
            if self.outstanding == 0 && settled_at.is_none() {
                settled_at = Some(self.now);
                // Everything is in: the client drops every handle it still has.
                let keep: Vec<TaskId> = (0..self.graph.nodes.len())
                    .map(graph::task_of)
                    .filter(|t| !self.released.contains(t))
                    .collect();
                for t in keep {
                    self.released.insert(t);
                    self.driver.handle_release(self.now, t);
                }
                self.pump();
            }
            if let Some(s) = settled_at {
                // Results lost after the client saw them may still be recomputed for a
                // consumer (a want across a partition takes the idle timeout to fail):
                // the quiet time counts from when the scheduler has nothing left to do.
                if !self.scheduler_idle() {
                    sched_busy_at = self.now;
                }
                // Long enough for held-back releases, every frame in flight, and a want
                // of a chunk whose producer failed to be given up (about 5 s of asking).
                if self.now > s.max(self.busy_until).max(sched_busy_at) + QUIET
                    && !self.any_paused()
                    && self.drains.is_empty()
                    && !self.any_expecting()
                {
                    break;
                }
            }
            if self.now > HANG_LIMIT {
                break;
            }
        }
        self.totals.virtual_ms = self.now.as_millis() as u64;
        if self.failure.is_none() {
            self.final_checks(settled_at.is_some());
        }
        match self.failure.take() {
            None => Ok(Outcome {
                totals: self.totals,
            }),
            Some(f) => Err(self.report(&f)),
        }
    }

    /// Whether the scheduler has no task left to run, place or wait for.
    fn scheduler_idle(&mut self) -> bool {
        self.driver.flush();
        let stats = self.driver.stats();
        stats.running + stats.ready + stats.waiting == 0
    }

    /// Whether a live worker still asks a peer for a chunk (a copy asked for by a drain
    /// keeps asking its holder, across a partition, until it comes or cannot).
    fn any_expecting(&self) -> bool {
        self.procs.iter().any(|x| {
            x.state == PState::Alive
                && !x.lost
                && x.core.is_joined()
                && (0..self.graph.nodes.len()).any(|k| x.core.is_coming(graph::task_of(k).chunk()))
        })
    }

    fn any_paused(&self) -> bool {
        self.procs.iter().any(|p| p.state == PState::Paused)
    }

    fn handle(&mut self, ev: Ev) {
        if let Some(p) = ev.target(&self.conns) {
            match self.procs[p].state {
                PState::Dead => return,
                PState::Paused => {
                    self.procs[p].deferred.push(ev);
                    return;
                }
                PState::Alive => {}
            }
        }
        match ev {
            Ev::Frame { conn, to, frame } => self.deliver(conn, to, frame),
            Ev::Closed { conn, to } => self.closed(conn, to),
            Ev::IdleCheck { conn } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let cut = self.partitioned(c.ends[0], c.ends[1]).is_some()
                    || c.ends.iter().any(
                        |e| matches!(e, Who::Proc(p) if self.procs[*p].state == PState::Paused),
                    );
                if cut {
                    // Each end's own idle timer fires: both learn of the close now, even
                    // across the partition.
                    self.close_idle(conn);
                }
            }
            Ev::DriverTimer => {
                if self.driver_timer.is_some_and(|t| t <= self.now) {
                    self.driver_timer = None;
                    self.driver.handle_timeout(self.now);
                }
            }
            Ev::WorkerTimer(p) => {
                if self.procs[p].timer.is_some_and(|t| t <= self.now) {
                    self.procs[p].timer = None;
                    let now = self.wnow(p);
                    self.procs[p].core.handle_timeout(now);
                }
            }
            Ev::Finish {
                p,
                task,
                token,
                run,
                result,
            } => {
                if self.procs[p].tokens.get(&task) == Some(&token) {
                    self.trace(|| format!("process {p} finished {task}"));
                    self.procs[p].tokens.remove(&task);
                    self.procs[p].unreported.insert(task);
                    let wnow = self.wnow(p);
                    self.procs[p]
                        .core
                        .handle_task_finished(wnow, task, run, result);
                }
            }
            Ev::Connect {
                p,
                peer,
                target,
                started,
            } => self.connect(p, peer, target, started),
            Ev::Exited { pid } => {
                // Process p has pid 100 + p and runs on host-(1 + p % hosts).
                let host = format!("host-{}", 1 + (pid as usize - 100) % self.hosts);
                self.driver
                    .handle_process_exited(self.now, &host, pid, ExitCause::Signal(9));
            }
            Ev::Crash(p) => {
                self.totals.poison_crashes += 1;
                let mode = match self.rng.random_range(0..10) {
                    0..=3 => KillMode::LocalChild,
                    4..=7 => KillMode::LinkClose,
                    _ => KillMode::Remote,
                };
                self.kill(p, mode);
            }
            Ev::Fault => self.fault(),
            Ev::Resume(p) => self.resume(p),
            Ev::Submit(b) => self.submit(b),
            Ev::Fetch(task, holders) => {
                let f = self.driver.handle_fetch(self.now, task.chunk(), holders);
                self.totals.fetches += 1;
                self.fetches.insert(f, task);
            }
            Ev::Release(task) => {
                self.trace(|| format!("client releases {task}"));
                let k = graph::node_of(task);
                if self.last_ref[k] >= self.submitted {
                    // A batch not yet submitted takes it: the client still has the handle.
                    self.push(self.now + ms(50), Ev::Release(task));
                } else if self.released.insert(task) {
                    self.driver.handle_release(self.now, task);
                }
            }
            Ev::Spawn => {
                self.totals.joins += 1;
                self.spawn_process(self.now);
            }
            Ev::Drain => self.drain(),
            Ev::Kill(p, mode) => self.kill(p, mode),
            Ev::KillKept(p, w) => self.kill_kept(p, w),
        }
    }

    fn deliver(&mut self, conn: u64, to: usize, frame: Vec<u8>) {
        let c = &self.conns[&conn];
        let ends = c.ends;
        if let Some(heal) = self.partitioned(ends[0], ends[1]) {
            if !c.closed {
                // Silent until it heals (or the idle timeout closes the connection).
                let at = heal.unwrap_or(self.now + IDLE) + ms(1);
                self.push(at, Ev::Frame { conn, to, frame });
                return;
            }
        }
        if c.closed {
            if ends[to] == Who::Driver && self.now <= c.driver_grace {
                self.totals.fenced_frames += 1;
            } else {
                self.totals.lost_frames += 1;
                return;
            }
        }
        match ends[to] {
            Who::Driver => {
                let msg = match wire::decode::<ToDriver>(&frame) {
                    Ok(m) => m,
                    Err(e) => {
                        return self.fail(format!("a frame to the driver does not decode: {e}"))
                    }
                };
                self.trace(|| format!("driver <- {conn}: {msg:?}"));
                if !self.conns[&conn].accepted {
                    self.conns.get_mut(&conn).unwrap().accepted = true;
                    let ToDriver::Join(info) = msg else {
                        return self.fail(format!("first frame on {conn} is not a join"));
                    };
                    if let Err(e) = self.driver.handle_join(self.now, LinkId(conn), info, false) {
                        self.fail(format!("join refused: {e}"));
                    }
                } else {
                    if let ToDriver::Done { tasks, .. } = &msg {
                        if let Some(p) = self.procs.iter().position(|x| x.driver_conn == conn) {
                            for d in tasks {
                                self.procs[p].unreported.remove(&d.task);
                            }
                        }
                    }
                    self.driver.handle_message(self.now, LinkId(conn), msg);
                }
            }
            Who::Proc(p) => {
                if conn == self.procs[p].driver_conn {
                    match wire::decode::<ToWorker>(&frame) {
                        Ok(msg) => {
                            self.trace(|| format!("process {p} <- driver {conn}: {msg:?}"));
                            if matches!(msg, ToWorker::Replicate { .. })
                                && self.dest_kills_left > 0
                                && self.rng.random_bool(0.3)
                            {
                                // The destination of a hand-over dies while it copies.
                                self.dest_kills_left -= 1;
                                self.totals.handover_dest_kills += 1;
                                let at = self.now
                                    + Duration::from_micros(self.rng.random_range(0..3000));
                                let mode = self.random_kill_mode();
                                self.push(at, Ev::Kill(p, mode));
                            }
                            let wnow = self.wnow(p);
                            self.procs[p].core.handle_driver_msg(wnow, msg)
                        }
                        Err(e) => self.fail(format!("a frame to a worker does not decode: {e}")),
                    }
                    return;
                }
                if to == 1 && !self.conns[&conn].accepted {
                    let hello = match wire::decode::<Hello>(&frame) {
                        Ok(h) => h,
                        Err(e) => return self.fail(format!("a peer link without a hello: {e}")),
                    };
                    self.conns.get_mut(&conn).unwrap().accepted = true;
                    match self.procs[p]
                        .core
                        .handle_inbound_link(self.now, LinkKey(conn), &hello)
                    {
                        Ok(_) => {}
                        Err(e) => {
                            self.fail(format!("a peer link was refused: {e}"));
                        }
                    }
                    return;
                }
                if let Some((chunk, range, push)) = wire::split_chunk_bytes(&frame) {
                    let bytes = frame[range].to_vec();
                    self.trace(|| format!("process {p} <- {conn}: {chunk} bytes (push {push})"));
                    let wnow = self.wnow(p);
                    self.procs[p]
                        .core
                        .handle_chunk_received(wnow, chunk, push, Ok(bytes));
                    return;
                }
                match wire::decode::<PeerMsg>(&frame) {
                    Ok(msg) => {
                        self.trace(|| format!("process {p} <- {conn}: {msg:?}"));
                        let wnow = self.wnow(p);
                        self.procs[p].core.handle_peer_msg(wnow, LinkKey(conn), msg)
                    }
                    Err(e) => self.fail(format!("a peer frame does not decode: {e}")),
                }
            }
        }
    }

    fn closed(&mut self, conn: u64, to: usize) {
        let c = self.conns.get_mut(&conn).unwrap();
        if c.told[to] {
            return;
        }
        let who = c.ends[to];
        self.trace(|| format!("{who:?} told {conn} closed"));
        let c = self.conns.get_mut(&conn).unwrap();
        c.told[to] = true;
        match c.ends[to] {
            Who::Driver => {
                let reason = LostReason::LinkClosed {
                    detail: "connection closed".into(),
                };
                self.driver
                    .handle_link_closed(self.now, LinkId(conn), reason);
            }
            Who::Proc(p) => {
                self.procs[p].conns.remove(&conn);
                if conn == self.procs[p].driver_conn {
                    // The facade's worker exits when its driver link closes.
                    self.kill(p, KillMode::LinkClose);
                } else {
                    let wnow = self.wnow(p);
                    self.procs[p].core.handle_link_closed(wnow, LinkKey(conn));
                }
            }
        }
    }

    fn connect(&mut self, p: usize, peer: WorkerId, target: Option<usize>, started: Duration) {
        let Some(q) = target else {
            self.procs[p]
                .core
                .handle_connect_failed(self.now, peer, "no such address".into());
            return;
        };
        let reachable = self.procs[q].state == PState::Alive
            && self.partitioned(Who::Proc(p), Who::Proc(q)).is_none();
        if self.procs[q].state == PState::Dead {
            self.procs[p]
                .core
                .handle_connect_failed(self.now, peer, "connection refused".into());
        } else if !reachable {
            if self.now.saturating_sub(started) >= IDLE {
                self.procs[p]
                    .core
                    .handle_connect_failed(self.now, peer, "timed out".into());
            } else {
                self.push(
                    self.now + ms(100),
                    Ev::Connect {
                        p,
                        peer,
                        target,
                        started,
                    },
                );
            }
        } else {
            let conn = self.new_conn([Who::Proc(p), Who::Proc(q)]);
            self.procs[p].conns.insert(conn);
            self.procs[q].conns.insert(conn);
            let wnow = self.wnow(p);
            self.procs[p].core.handle_link_up(wnow, peer, LinkKey(conn));
        }
    }

    fn resume(&mut self, p: usize) {
        if self.procs[p].state != PState::Paused {
            return;
        }
        self.procs[p].state = PState::Alive;
        self.procs[p].timer = None;
        self.trace(|| format!("process {p} resumes"));
        let deferred = std::mem::take(&mut self.procs[p].deferred);
        for ev in deferred {
            // Finished tasks ran during the pause in no time: they finish now.
            self.handle(ev);
            self.pump();
        }
    }

    /// Takes every output of the driver and the workers and carries it out, then arms
    /// the timers.
    fn pump(&mut self) {
        // What the driver does on its own while its outputs are taken (the scheduler's
        // commands, drains that end): a stop after a drain must not make a finished task
        // unfinished.
        let before = self.driver.stats();
        self.pump_stops = 0;
        self.pump_other_removals = false;
        self.after_drained_loss = None;
        loop {
            let mut any = false;
            while let Some(t) = self.driver.poll_transmit() {
                any = true;
                if t.frame.len() > self.driver.config().max_frame {
                    self.fail(format!("a frame of {} bytes", t.frame.len()));
                }
                let conn = t.link.0;
                if !self.conns.contains_key(&conn) {
                    self.fail(format!("the driver sent on unknown link {}", t.link));
                    continue;
                }
                let e = self.end_of(conn, Who::Driver);
                self.send(conn, e, t.frame);
            }
            while let Some(ev) = self.driver.poll_event() {
                any = true;
                self.driver_event(ev);
            }
            for p in 0..self.procs.len() {
                if self.procs[p].state != PState::Alive {
                    continue;
                }
                while let Some(t) = self.procs[p].core.poll_transmit() {
                    any = true;
                    let conn = match t.to {
                        Dest::Driver => self.procs[p].driver_conn,
                        Dest::Link(k) => k.0,
                    };
                    if !self.conns.contains_key(&conn) {
                        self.fail(format!("a worker sent on unknown link {conn}"));
                        continue;
                    }
                    let e = self.end_of(conn, Who::Proc(p));
                    self.send(conn, e, t.into_frame());
                }
                while let Some(a) = self.procs[p].core.poll_action() {
                    any = true;
                    self.action(p, a);
                    if self.procs[p].state != PState::Alive {
                        break;
                    }
                }
            }
            if !any {
                break;
            }
        }
        if self.pump_stops > 0 && !self.pump_other_removals {
            let after = self.driver.stats();
            if after.finished < before.finished {
                self.fail(format!(
                    "stopping a drained worker made {} finished task(s) unfinished",
                    before.finished - after.finished
                ));
            }
        }
        if let Some(t) = self.driver.poll_timeout() {
            if self.driver_timer.is_none_or(|armed| t < armed) {
                self.driver_timer = Some(t);
                self.push(t, Ev::DriverTimer);
            }
        }
        for p in 0..self.procs.len() {
            if self.procs[p].state != PState::Alive {
                continue;
            }
            if let Some(t) = self.procs[p].core.poll_timeout() {
                let t = t.saturating_sub(self.procs[p].clock);
                if self.procs[p].timer.is_none_or(|armed| t < armed) {
                    self.procs[p].timer = Some(t);
                    self.push(t, Ev::WorkerTimer(p));
                }
            }
        }
    }

    fn action(&mut self, p: usize, a: Action<Vec<u8>>) {
        match a {
            Action::Start(s) => self.start(p, s),
            Action::Connect { peer, addr } => {
                let target = addr
                    .strip_prefix("sim:")
                    .and_then(|s| s.parse::<u32>().ok())
                    .and_then(|pid| self.procs.iter().position(|x| x.pid == pid));
                let l = match target {
                    Some(q) => self.latency(Who::Proc(p), Who::Proc(q)),
                    None => ms(1),
                };
                self.push(
                    self.now + 2 * l,
                    Ev::Connect {
                        p,
                        peer,
                        target,
                        started: self.now,
                    },
                );
            }
            Action::CloseLink(key) => {
                if let Some(c) = self.conns.get(&key.0) {
                    let l = c.latency;
                    let e = self.end_of(key.0, Who::Proc(p));
                    self.close(key.0, Some(e), l);
                }
            }
            Action::ForgetPeer(_) => {}
            // Only a drain stops a worker here (the driver never shuts down): it exits.
            Action::Shutdown => {
                self.procs[p].removed = true;
                self.kill(p, KillMode::Leave);
            }
            other => self.fail(format!(
                "an action the simulation does not expect: {other:?}"
            )),
        }
    }

    /// A worker core starts a task: check its inputs against the oracle and compute it.
    fn start(&mut self, p: usize, s: dagger_runtime::worker::StartTask<Vec<u8>>) {
        let task = s.task;
        let k = graph::node_of(task);
        if s.func != FUNC || k >= self.graph.nodes.len() {
            return self.fail(format!("started an unknown task {task} ({})", s.func));
        }
        let node = self.graph.nodes[k].clone();
        if s.args.len() != 1 + node.deps.len() {
            return self.fail(format!("{task} started with {} arguments", s.args.len()));
        }
        if wire::decode::<u64>(&s.args[0]).ok() != Some(k as u64 + 1) {
            return self.fail(format!("{task} started with a wrong first argument"));
        }
        let mut v = k as u64 + 1;
        for (i, &d) in node.deps.iter().enumerate() {
            let want = self.expected[d];
            let got = graph::decode_result(&s.args[i + 1]);
            match (want, got) {
                (Some(w), Some((g, big))) if w == g && big == self.graph.nodes[d].big => {
                    v = v.wrapping_add(g)
                }
                _ => {
                    return self.fail(format!(
                        "{task} started on process {p} with input {} = {got:?}, expected {want:?}",
                        graph::task_of(d)
                    ))
                }
            }
        }
        self.totals.executions += 1;
        let runs = self.executions.entry(task).or_default();
        *runs += 1;
        let runs = *runs;
        let idx = s.proc.index as usize;
        let proc = &self.procs[p];
        if idx == 0 || idx >= proc.free_at.len() || s.proc.worker != proc.core.id() {
            return self.fail(format!("{task} started on processor {}", s.proc));
        }
        if node.poison {
            // It runs a little, then the process crashes.
            let token = self.next_token;
            self.next_token += 1;
            self.procs[p].tokens.insert(task, token);
            let at = self.now + Duration::from_micros(self.rng.random_range(0..4000));
            self.trace(|| format!("process {p} starts poison {task}, crashes at {at:?}"));
            self.push(at, Ev::Crash(p));
            return;
        }
        let flaky = self.procs[p].flaky && node.retries > 0 && self.rng.random_bool(0.5);
        let result = if node.always_panics || (node.panics_once && runs == 1) || flaky {
            self.totals.flaky_panics += u64::from(flaky);
            *self.panics.entry(task).or_default() += 1;
            self.panicked_on.entry(p).or_default().insert(task);
            Err(TaskError::Panicked {
                task,
                func: FUNC.into(),
                message: "boom".into(),
            })
        } else {
            Ok(graph::result_bytes(v, node.big))
        };
        let run = Duration::from_micros(self.rng.random_range(200..15_000));
        let proc = &mut self.procs[p];
        let at = proc.free_at[idx].max(self.now) + run;
        if self.trace {
            eprintln!(
                "{:>12?} process {p} starts {task}, done at {at:?}: {result:?}",
                self.now
            );
        }
        proc.free_at[idx] = at;
        let token = self.next_token;
        self.next_token += 1;
        proc.tokens.insert(task, token);
        self.push(
            at,
            Ev::Finish {
                p,
                task,
                token,
                run,
                result,
            },
        );
    }

    // ------------------------------------------------------------------ the client

    fn submit(&mut self, b: usize) {
        if b != self.submitted {
            return self.fail(format!("batch {b} out of order"));
        }
        // A client pins tasks to workers it knows of: it waits for the initial workers.
        if self
            .pins
            .iter()
            .any(|&w| self.driver.link_of(w).is_none() && !self.lost_workers.contains(&w))
        {
            self.push(self.now + ms(5), Ev::Submit(b));
            return;
        }
        self.submitted += 1;
        if self.submitted < self.graph.batch_ends.len() {
            let at = self.now + Duration::from_micros(self.rng.random_range(0..30_000));
            self.push(at, Ev::Submit(self.submitted));
        }
        let start = if b == 0 {
            0
        } else {
            self.graph.batch_ends[b - 1]
        };
        let end = self.graph.batch_ends[b];
        let specs: Vec<_> = (start..end)
            .map(|k| self.graph.spec(k, &self.pins))
            .collect();
        if specs.len() == 1 && self.rng.random_bool(0.5) {
            let spec = specs.into_iter().next().unwrap();
            let slot = spec.id.0;
            self.driver.handle_spawn(self.now, spec, slot);
        } else {
            let tasks = specs.into_iter().map(|s| {
                let slot = s.id.0;
                (s, Some(slot))
            });
            self.driver.handle_submit(self.now, tasks);
        }
    }

    fn driver_event(&mut self, ev: DriverEvent<u64>) {
        self.trace(|| format!("driver event {ev:?}"));
        match ev {
            DriverEvent::Complete { task, slot, result } => {
                if slot != task.0 {
                    return self.fail(format!("{task} completed with the slot of task {slot}"));
                }
                let k = graph::node_of(task);
                if k >= self.completed.len() {
                    return self.fail(format!("an unknown {task} completed"));
                }
                if std::mem::replace(&mut self.completed[k], true) {
                    return self.fail(format!("{task} completed twice (now {result:?})"));
                }
                match result {
                    Ok(Completion::Value(bytes)) => self.settle_bytes(task, &bytes),
                    Ok(Completion::Stored { holders, .. }) => {
                        self.totals.stored += 1;
                        let at = self.now + Duration::from_micros(self.rng.random_range(0..50_000));
                        self.push(at, Ev::Fetch(task, holders));
                    }
                    Err(e) => self.settle_err(task, e),
                }
            }
            DriverEvent::FetchDone { fetch, result } => {
                let Some(task) = self.fetches.remove(&fetch) else {
                    return self.fail(format!("an answer to unknown {fetch}"));
                };
                match result {
                    Ok(bytes) => self.settle_bytes(task, &bytes),
                    Err(e) => match self.judge_fetch(task, &e) {
                        Ok(()) => self.settle(task, Settled::Error(e)),
                        Err(why) => self.fail(format!("the fetch of {task} failed: {e:?} ({why})")),
                    },
                }
            }
            DriverEvent::Cluster(ClusterEvent::WorkerLost { worker, reason }) => {
                self.after_drained_loss = match &reason {
                    LostReason::Removed { detail } if detail == "drained" => Some(worker),
                    _ => None,
                };
                self.totals.lost += 1;
                if matches!(reason, LostReason::Silent { .. }) {
                    self.totals.silent += 1;
                }
                if let LostReason::Excluded { strikes } = reason {
                    // Strikes come from distinct tasks that failed there (and succeeded
                    // elsewhere): at least that many distinct tasks panicked there.
                    let Some(p) = self.proc_of(worker) else {
                        return self.fail(format!("unknown {worker} excluded"));
                    };
                    let panicked = self.panicked_on.get(&p).map_or(0, |s| s.len());
                    if strikes < 3 || panicked < strikes as usize {
                        return self.fail(format!(
                            "{worker} (process {p}) excluded with {strikes} strikes, {panicked} distinct tasks panicked there"
                        ));
                    }
                    self.totals.excluded += 1;
                    self.totals.excluded_flaky += u64::from(self.procs[p].flaky);
                }
                self.lost_workers.insert(worker);
                if let Some(p) = self.proc_of(worker) {
                    self.procs[p].lost = true;
                }
                let usable = self.accepting().len();
                if usable < 2 || self.rng.random_bool(0.3) {
                    let at = self.now + ms(self.rng.random_range(10..300));
                    self.push(at, Ev::Spawn);
                }
            }
            DriverEvent::Cluster(ClusterEvent::TaskRetried { task, .. }) => {
                if let Some(w) = self.after_drained_loss {
                    return self.fail(format!("stopping drained {w} made {task} run again"));
                }
                self.totals.retries += 1
            }
            DriverEvent::Cluster(_) => self.after_drained_loss = None,
            DriverEvent::Drained {
                worker,
                link,
                pid,
                outcome,
            } => {
                self.after_drained_loss = None;
                self.drained(worker, link, pid, outcome);
            }
            DriverEvent::CloseLink { link, .. } => {
                let conn = link.0;
                if !self.conns.contains_key(&conn) {
                    return self.fail(format!("the driver closed unknown {link}"));
                }
                let grace = Duration::from_micros(self.rng.random_range(0..2000));
                let l = self.conns[&conn].latency;
                self.conns.get_mut(&conn).unwrap().driver_grace = self.now + grace;
                let e = self.end_of(conn, Who::Driver);
                self.close(conn, Some(e), l);
            }
        }
    }

    fn proc_of(&self, worker: WorkerId) -> Option<usize> {
        self.procs
            .iter()
            .position(|p| p.core.is_joined() && p.core.id() == worker)
            .or_else(|| {
                let link = self.driver.link_of(worker)?;
                self.procs.iter().position(|p| p.driver_conn == link.0)
            })
    }

    fn settle(&mut self, task: TaskId, s: Settled) {
        let k = graph::node_of(task);
        if self.settled[k].is_some() {
            return self.fail(format!("{task} settled twice"));
        }
        self.settled[k] = Some(s);
        self.outstanding -= 1;
        if self.rng.random_bool(0.5) {
            let at = self.now + ms(self.rng.random_range(0..100));
            self.push(at, Ev::Release(task));
        }
    }

    fn settle_bytes(&mut self, task: TaskId, bytes: &[u8]) {
        let k = graph::node_of(task);
        let got = graph::decode_result(bytes);
        match (self.expected[k], got) {
            (Some(w), Some((v, big))) if w == v && big == self.graph.nodes[k].big => {
                self.settle(task, Settled::Value(v))
            }
            (want, got) => self.fail(format!(
                "{task} ended with {got:?}, expected {want:?} (big: {})",
                self.graph.nodes[k].big
            )),
        }
    }

    fn settle_err(&mut self, task: TaskId, e: TaskError) {
        match self.judge(task, &e) {
            Ok(()) => self.settle(task, Settled::Error(e)),
            Err(why) => self.fail(format!("{task} ended with {e:?}: {why}")),
        }
    }

    /// Whether `w` was declared lost. The scheduler completes the tasks a loss fails
    /// before the driver reports the loss itself, so a joined worker's link that is gone
    /// counts too.
    fn is_lost(&self, w: WorkerId) -> bool {
        self.lost_workers.contains(&w) || self.driver.link_of(w).is_none()
    }

    fn attempts(&self, task: TaskId) -> u32 {
        self.driver.task_info(task).map_or(0, |i| i.attempts)
    }

    /// Whether `error` is what `task` may end with: the failure the graph dictates, or one
    /// a fault explains (a pinned worker lost for good, a retry budget spent).
    fn judge(&mut self, task: TaskId, error: &TaskError) -> Result<(), String> {
        let k = graph::node_of(task);
        let node = &self.graph.nodes[k];
        match error {
            TaskError::Panicked { task: t, .. } if *t == task => {
                let panics = self.panics.get(&task).copied().unwrap_or(0);
                if node.always_panics || panics > node.retries {
                    Ok(())
                } else {
                    Err(format!(
                        "it panicked {panics} time(s), within its {} retries",
                        node.retries
                    ))
                }
            }
            TaskError::Poisoned {
                task: t, crashes, ..
            } if *t == task => {
                let seen = self.crashed_running.get(&task).map_or(0, |s| s.len());
                let workers: BTreeSet<WorkerId> = crashes.iter().map(|c| c.0).collect();
                if crashes.len() < 2 || workers.len() != crashes.len() {
                    Err(format!("not two distinct crashed workers: {crashes:?}"))
                } else if seen < crashes.len() {
                    Err(format!(
                        "poisoned by {} crashes, but seen running in {seen} crashed processes",
                        crashes.len()
                    ))
                } else if crashes.iter().any(|(_, r)| !r.is_crash()) {
                    Err(format!("a loss that is no crash counted: {crashes:?}"))
                } else {
                    if node.poison {
                        self.totals.poisoned += 1;
                    } else {
                        self.totals.innocent_poisoned += 1;
                    }
                    Ok(())
                }
            }
            TaskError::DependencyFailed {
                task: t,
                dependency,
                cause,
            } if *t == task => {
                if !self.ancestors(k).contains(&graph::node_of(*dependency)) {
                    return Err(format!("{dependency} is not an input of it"));
                }
                if matches!(**cause, TaskError::DependencyFailed { .. }) {
                    return Err("the cause is not the root failure".into());
                }
                self.judge(*dependency, cause)
                    .map_err(|why| format!("its dependency's failure is wrong: {why}"))
            }
            TaskError::NoProcessor { task: t, .. } if *t == task => {
                match node.pin.map(|i| self.pins[i]) {
                    Some(w) if self.is_lost(w) || self.drained_ever.contains(&w) => {
                        self.totals.no_processor += 1;
                        Ok(())
                    }
                    _ => Err("its scope's worker was never lost nor drained".into()),
                }
            }
            TaskError::WorkerLost {
                task: t, worker, ..
            } if *t == task => {
                let attempts = self.attempts(task);
                if self.is_lost(*worker) && attempts >= LOSS_BUDGET_ATTEMPTS {
                    self.totals.budget_exhausted += 1;
                    Ok(())
                } else {
                    Err(format!(
                        "a transient loss surfaced ({attempts} attempts, budget not spent)"
                    ))
                }
            }
            TaskError::MoveFailed { task: t, cause } if *t == task => {
                let attempts = self.attempts(task);
                if cause.is_transient() && attempts >= LOSS_BUDGET_ATTEMPTS {
                    self.totals.budget_exhausted += 1;
                    Ok(())
                } else {
                    Err(format!(
                        "a move failure surfaced ({attempts} attempts, budget not spent)"
                    ))
                }
            }
            _ => Err("not an error this task can end with".into()),
        }
    }

    /// A fetch of a stored result may fail only when the result cannot be brought back:
    /// its recomputation itself failed (with an error the task may end with), or it found
    /// no holder within the park limit for a reason a fault explains.
    fn judge_fetch(&mut self, task: TaskId, error: &TaskError) -> Result<(), String> {
        let TaskError::MoveFailed {
            task: t,
            cause: dagger_core::MoveFailure::NoHolder,
        } = error
        else {
            return self
                .judge(task, error)
                .map_err(|why| format!("not an error its recomputation may fail with: {why}"));
        };
        if *t != task {
            return Err("it names another task".into());
        }
        let k = graph::node_of(task);
        let mut chain = self.ancestors(k);
        chain.insert(k);
        let explained = chain.iter().any(|&a| {
            let pinned_lost = self.graph.nodes[a].pin.is_some_and(|i| {
                self.is_lost(self.pins[i]) || self.drained_ever.contains(&self.pins[i])
            });
            pinned_lost || self.attempts(graph::task_of(a)) >= LOSS_BUDGET_ATTEMPTS
        });
        if explained {
            Ok(())
        } else {
            Err("no holder, though it could be recomputed".into())
        }
    }

    fn ancestors(&self, k: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack = self.graph.nodes[k].deps.clone();
        while let Some(d) = stack.pop() {
            if seen.insert(d) {
                stack.extend(self.graph.nodes[d].deps.iter().copied());
            }
        }
        seen
    }

    // ------------------------------------------------------------------ faults

    fn fault(&mut self) {
        if self.outstanding == 0 {
            return;
        }
        let usable: Vec<usize> = (0..self.procs.len())
            .filter(|&p| {
                let x = &self.procs[p];
                x.state == PState::Alive && !x.lost && x.core.is_joined()
            })
            .collect();
        if usable.is_empty() {
            return;
        }
        let p = usable[self.rng.random_range(0..usable.len())];
        match self.rng.random_range(0..100) {
            0..=19 if self.kills_left > 0 && usable.len() >= 2 => {
                self.kills_left -= 1;
                self.totals.kills += 1;
                let mode = match self.rng.random_range(0..3) {
                    0 => KillMode::LocalChild,
                    1 => KillMode::Remote,
                    _ => KillMode::LinkClose,
                };
                self.kill(p, mode);
            }
            0..=39 => {
                self.totals.pauses += 1;
                let dur = if self.rng.random_bool(0.7) {
                    ms(self.rng.random_range(50..3000))
                } else {
                    self.totals.long_pauses += 1;
                    ms(self.rng.random_range(6000..14_000))
                };
                self.procs[p].state = PState::Paused;
                self.trace(|| format!("process {p} paused for {dur:?}"));
                self.push(self.now + dur, Ev::Resume(p));
                self.busy_until = self.busy_until.max(self.now + dur.min(IDLE) + ms(10));
                if dur >= IDLE {
                    for &conn in &self.procs[p].conns.clone() {
                        self.push(self.now + IDLE, Ev::IdleCheck { conn });
                    }
                }
            }
            40..=59 => {
                let dur = self.partition_length(ms(6000)..ms(9000));
                self.partition(Who::Driver, Who::Proc(p), dur);
            }
            60..=74 if usable.len() >= 2 => {
                let q = loop {
                    let q = usable[self.rng.random_range(0..usable.len())];
                    if q != p {
                        break q;
                    }
                };
                let dur = self.partition_length(ms(11_000)..ms(20_000));
                self.partition(Who::Proc(p), Who::Proc(q), dur);
            }
            75..=84 => {
                let open: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| !c.closed && c.accepted)
                    .map(|(id, _)| *id)
                    .collect();
                if !open.is_empty() {
                    self.totals.link_cuts += 1;
                    let conn = open[self.rng.random_range(0..open.len())];
                    let l = self.conns[&conn].latency;
                    self.close(conn, None, l);
                }
            }
            85..=91 if usable.len() >= 2 => {
                self.totals.leaves += 1;
                self.kill(p, KillMode::Leave);
            }
            _ => {
                self.totals.joins += 1;
                self.spawn_process(self.now);
            }
        }
    }

    /// A short partition (most), a long one, or one that never heals.
    fn partition_length(&mut self, long: std::ops::Range<Duration>) -> Option<Duration> {
        match self.rng.random_range(0..100) {
            0..=59 => Some(ms(self.rng.random_range(50..3000))),
            60..=89 => Some(self.rng.random_range(long)),
            _ => None,
        }
    }

    fn partition(&mut self, a: Who, b: Who, dur: Option<Duration>) {
        self.totals.partitions += 1;
        self.trace(|| format!("partition {a:?} - {b:?} for {dur:?}"));
        let until = dur.map(|d| self.now + d);
        let busy = until.unwrap_or(self.now + IDLE).min(self.now + IDLE) + ms(10);
        self.busy_until = self.busy_until.max(busy);
        self.partitions.push(Partition { a, b, until });
        if dur.is_none_or(|d| d >= IDLE) {
            let between: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| !c.closed && (c.ends == [a, b] || c.ends == [b, a]))
                .map(|(id, _)| *id)
                .collect();
            for conn in between {
                self.push(self.now + IDLE, Ev::IdleCheck { conn });
            }
        }
    }

    // ------------------------------------------------------------------ drains

    /// The processes whose worker is in the pool and takes work (not lost, not draining,
    /// not drained).
    fn accepting(&self) -> Vec<usize> {
        (0..self.procs.len())
            .filter(|&p| {
                let x = &self.procs[p];
                let drained = x.core.is_joined() && self.drained_ever.contains(&x.core.id());
                x.state != PState::Dead && !x.lost && !x.removed && !drained
            })
            .collect()
    }

    fn random_kill_mode(&mut self) -> KillMode {
        match self.rng.random_range(0..3) {
            0 => KillMode::LocalChild,
            1 => KillMode::Remote,
            _ => KillMode::LinkClose,
        }
    }

    /// The client removes one or two workers: stopped or kept, with no deadline, a short
    /// one (that may pass) or a long one. Sometimes a drained worker is killed at once (a
    /// race of the drain with its loss).
    fn drain(&mut self) {
        if self.outstanding == 0 {
            return;
        }
        let cands: Vec<(usize, WorkerId)> = (0..self.procs.len())
            .filter_map(|p| {
                let x = &self.procs[p];
                let ok = x.state != PState::Dead && !x.lost && !x.removed && x.core.is_joined();
                let w = x.core.id();
                (ok && !self.drained_ever.contains(&w) && self.driver.link_of(w).is_some())
                    .then_some((p, w))
            })
            .collect();
        if cands.is_empty() {
            return;
        }
        let n = if cands.len() >= 2 && self.rng.random_bool(0.3) {
            2
        } else {
            1
        };
        let mut picked: Vec<(usize, WorkerId)> = Vec::new();
        while picked.len() < n {
            let c = cands[self.rng.random_range(0..cands.len())];
            if !picked.contains(&c) {
                picked.push(c);
            }
        }
        let workers: Vec<WorkerId> = picked.iter().map(|&(_, w)| w).collect();
        let then = if self.rng.random_bool(0.4) {
            AfterDrain::Keep
        } else {
            AfterDrain::Stop
        };
        let deadline = match self.rng.random_range(0..100) {
            0..=49 => None,
            50..=74 => Some(self.now + ms(self.rng.random_range(5..400))),
            _ => Some(self.now + ms(self.rng.random_range(1000..15_000))),
        };
        let before = self.driver.draining();
        let stranded_before = self.stranded(&[]);
        let stranded_after = self.stranded(&workers);
        self.trace(|| format!("drain {workers:?} ({then:?}, deadline {deadline:?})"));
        match self.driver.handle_drain(self.now, &workers, deadline, then) {
            Ok(()) => {
                for &(p, w) in &picked {
                    self.totals.drains += 1;
                    self.drains.insert(
                        w,
                        DrainRec {
                            p,
                            since: self.now,
                            deadline,
                            then,
                        },
                    );
                    self.drained_ever.insert(w);
                }
                // Accepted: no task waiting to be placed is left without a worker by it.
                if let Some(t) = stranded_after.iter().find(|t| !stranded_before.contains(t)) {
                    return self.fail(format!(
                        "the drain of {workers:?} was accepted, but leaves {t} (not dispatched) with no worker"
                    ));
                }
                if self.rng.random_bool(0.2) {
                    let (p, _) = picked[self.rng.random_range(0..picked.len())];
                    self.totals.drain_race_kills += 1;
                    let at = self.now + Duration::from_micros(self.rng.random_range(0..30_000));
                    let mode = self.random_kill_mode();
                    self.push(at, Ev::Kill(p, mode));
                }
                // The graph needs workers that take work: one joins.
                if self.accepting().len() < 2 {
                    let at = self.now + ms(self.rng.random_range(10..300));
                    self.push(at, Ev::Spawn);
                }
            }
            Err(DrainError::WouldStrand {
                workers: named,
                task,
                ..
            }) => {
                self.totals.drains_stranding += 1;
                if named != workers {
                    return self.fail(format!("refused the drain of {workers:?} naming {named:?}"));
                }
                if !stranded_after.contains(&task) {
                    return self.fail(format!(
                        "the drain of {workers:?} was refused for {task}, which it does not strand"
                    ));
                }
                if stranded_before.contains(&task) {
                    return self.fail(format!(
                        "the drain of {workers:?} was refused for {task}, which waits for a worker already"
                    ));
                }
                // Nothing changed.
                if self.driver.draining() != before
                    || workers
                        .iter()
                        .any(|&w| self.driver.scheduler().is_draining(w))
                {
                    self.fail(format!(
                        "a refused drain of {workers:?} changed what drains: {:?}",
                        self.driver.draining()
                    ));
                }
            }
            Err(e) => self.fail(format!("the drain of {workers:?} was refused: {e}")),
        }
    }

    /// The workers in the pool that take work, as the scheduler sees them.
    fn taking_work(&self) -> BTreeSet<WorkerId> {
        self.procs
            .iter()
            .filter_map(|x| self.driver.worker_on(LinkId(x.driver_conn)))
            .map(|(w, _)| w)
            .filter(|&w| !self.driver.scheduler().is_draining(w))
            .collect()
    }

    /// The submitted tasks neither finished nor dispatched that no worker taking work
    /// (besides `minus`) may run, while some worker of the pool may: their scope pins them
    /// to a worker being drained, or no worker but those takes work.
    fn stranded(&self, minus: &[WorkerId]) -> Vec<TaskId> {
        let submitted = match self.submitted {
            0 => 0,
            b => self.graph.batch_ends[b - 1],
        };
        let taking: BTreeSet<WorkerId> = self
            .taking_work()
            .into_iter()
            .filter(|w| !minus.contains(w))
            .collect();
        (0..submitted)
            .filter(|&k| {
                let t = graph::task_of(k);
                let Some(info) = self.driver.task_info(t) else {
                    return false;
                };
                let placed = info.finished.is_some()
                    || info
                        .proc
                        .is_some_and(|p| self.driver.scheduler().is_dispatched_to(t, p.worker));
                if placed {
                    return false;
                }
                match self.graph.nodes[k].pin.map(|i| self.pins[i]) {
                    Some(w) => self.driver.link_of(w).is_some() && !taking.contains(&w),
                    None => taking.is_empty(),
                }
            })
            .map(graph::task_of)
            .collect()
    }

    /// After every step: what each worker being drained runs and alone holds, for the
    /// checks of how its drain ends.
    fn snap_drains(&mut self) {
        self.drain_snap.clear();
        if self.drains.is_empty() {
            return;
        }
        let workers: Vec<WorkerId> = self.drains.keys().copied().collect();
        for w in workers {
            let running: Vec<TaskId> = self
                .driver
                .scheduler()
                .dispatched_to(w)
                .map(|t| t.task)
                .collect();
            let sole = self.sole_copies_of(w).len();
            self.drain_snap.insert(w, DrainSnap { running, sole });
        }
    }

    /// The large results the scheduler names `w` a holder of, and no worker that stays
    /// (only workers being drained, or drained and kept).
    fn sole_copies_of(&self, w: WorkerId) -> Vec<TaskId> {
        let sched = self.driver.scheduler();
        (0..self.graph.nodes.len())
            .filter(|&k| self.graph.nodes[k].big)
            .map(graph::task_of)
            .filter(|t| {
                let hs = self.driver.holders(t.chunk());
                hs.contains(&w) && hs.iter().all(|&h| sched.is_draining(h))
            })
            .collect()
    }

    /// A drain resolved: once, the way its worker's fate allows.
    fn drained(&mut self, worker: WorkerId, link: LinkId, pid: u32, outcome: DrainOutcome) {
        let Some(rec) = self.drains.remove(&worker) else {
            return self.fail(format!(
                "the drain of {worker} resolved ({outcome:?}), but none is in progress"
            ));
        };
        let x = &self.procs[rec.p];
        if x.driver_conn != link.0 || x.pid != pid {
            return self.fail(format!(
                "the drain of {worker} resolved on {link} (pid {pid}), it joined on link {} (pid {})",
                x.driver_conn, x.pid
            ));
        }
        let snap = self.drain_snap.get(&worker).cloned().unwrap_or_default();
        match outcome {
            DrainOutcome::Drained {
                took,
                moved_chunks,
                stopped,
                ..
            } => {
                self.totals.drained += 1;
                self.totals.handed_over += u64::from(moved_chunks);
                if took != self.now - rec.since {
                    return self.fail(format!("the drain of {worker} took {took:?}?"));
                }
                if rec.deadline.is_some_and(|d| self.now > d) {
                    return self.fail(format!("{worker} drained after its deadline"));
                }
                if stopped != (rec.then == AfterDrain::Stop) {
                    return self.fail(format!(
                        "{worker} drained, stopped {stopped}, asked {:?}",
                        rec.then
                    ));
                }
                if stopped {
                    self.procs[rec.p].removed = true;
                    self.pump_stops += 1;
                    return;
                }
                // Kept: it runs nothing, and holds no result that only it holds (unless a
                // worker was removed just now, leaving it the last copy).
                self.totals.drained_kept += 1;
                let running = self.driver.scheduler().dispatched_to(worker).count();
                if running > 0 {
                    return self.fail(format!("{worker} drained while it runs {running} task(s)"));
                }
                let sole = self.sole_copies_of(worker);
                if !sole.is_empty() && self.pump_stops == 0 && !self.pump_other_removals {
                    return self.fail(format!(
                        "{worker} drained while it alone holds the results of {sole:?}"
                    ));
                }
                self.kept.insert(worker, rec.p);
                // Its owner stops it, sometimes; always when tasks are pinned to it (they
                // wait for a worker that takes work, so they then fail).
                let pinned = self
                    .graph
                    .nodes
                    .iter()
                    .any(|n| n.pin.is_some_and(|i| self.pins[i] == worker));
                if pinned || self.rng.random_bool(0.5) {
                    let at = self.now + ms(self.rng.random_range(0..300));
                    self.push(at, Ev::KillKept(rec.p, worker));
                }
            }
            DrainOutcome::DeadlineExceeded {
                rerun, sole_copies, ..
            } => {
                self.totals.drain_deadlines += 1;
                self.procs[rec.p].removed = true;
                match rec.deadline {
                    Some(d) if self.now >= d => {}
                    d => {
                        return self.fail(format!(
                            "the drain of {worker} exceeded its deadline {d:?} at {:?}",
                            self.now
                        ))
                    }
                }
                if rerun != snap.running.len() || sole_copies != snap.sole {
                    self.fail(format!(
                        "the drain of {worker} exceeded its deadline with {rerun} task(s) to run again and {sole_copies} sole copies; it ran {:?} and alone held {}",
                        snap.running, snap.sole
                    ));
                }
            }
            DrainOutcome::HandoverFailed { .. } => {
                self.totals.drain_handover_failed += 1;
                self.procs[rec.p].removed = true;
                self.pump_other_removals = true;
            }
            DrainOutcome::Lost { reason, .. } => {
                self.totals.drain_lost += 1;
                if matches!(reason, LostReason::Removed { .. }) {
                    self.fail(format!("{worker} lost while draining as {reason:?}"));
                }
            }
            other => self.fail(format!("the drain of {worker} ended as {other:?}")),
        }
    }

    /// A worker drained and kept is killed: its loss must change nothing, no task runs
    /// again and no result is recomputed (the driver learns of it at once, so that
    /// nothing else happens in the same call). Unless it has become the only holder of a
    /// result since (another holder was lost): then that result is recomputed.
    fn kill_kept(&mut self, p: usize, w: WorkerId) {
        let x = &self.procs[p];
        if x.state == PState::Dead || x.lost || self.driver.link_of(w).is_none() {
            return;
        }
        self.driver.flush();
        let running = self.driver.scheduler().dispatched_to(w).count();
        if running > 0 {
            return self.fail(format!("drained and kept {w} runs {running} task(s)"));
        }
        let sole = (0..self.graph.nodes.len())
            .filter(|&k| self.graph.nodes[k].big)
            .any(|k| self.driver.holders(graph::task_of(k).chunk()) == [w]);
        self.totals.kept_killed += 1;
        self.totals.kept_killed_sole += u64::from(sole);
        self.trace(|| format!("drained and kept {w} (process {p}) killed"));
        let before = self.driver.stats();
        let conn = self.procs[p].driver_conn;
        self.kill(p, KillMode::LinkClose);
        let e = self.end_of(conn, Who::Driver);
        self.conns.get_mut(&conn).unwrap().told[e] = true;
        let reason = LostReason::LinkClosed {
            detail: "connection reset".into(),
        };
        self.driver
            .handle_link_closed(self.now, LinkId(conn), reason);
        let after = self.driver.stats();
        let changed = after.finished != before.finished
            || after.running != before.running
            || after.ready + after.waiting > before.ready + before.waiting;
        if changed && !sole {
            self.fail(format!(
                "killing drained and kept {w} changed the graph: {before:?} -> {after:?}"
            ));
        }
    }

    // ------------------------------------------------------------------ checks

    /// Every live, current holder the scheduler names holds the chunk.
    fn check_holders(&mut self) {
        for k in 0..self.graph.nodes.len() {
            if !self.graph.nodes[k].big {
                continue;
            }
            let chunk = graph::task_of(k).chunk();
            let holders = self.driver.holders(chunk).to_vec();
            for w in holders {
                let Some(p) = self.proc_of(w) else {
                    return self.fail(format!("{chunk} is held by {w}, a worker never seen"));
                };
                let x = &self.procs[p];
                if x.state != PState::Dead && !x.lost && !x.core.holds(chunk) {
                    return self.fail(format!(
                        "the scheduler names {w} (process {p}) a holder of {chunk}, which it does not hold"
                    ));
                }
            }
        }
    }

    fn final_checks(&mut self, settled: bool) {
        if let Some((w, rec)) = self.drains.iter().next() {
            return self.fail(format!(
                "the drain of {w} (since {:?}, deadline {:?}) never resolved",
                rec.since, rec.deadline
            ));
        }
        if !settled {
            let pending: Vec<TaskId> = (0..self.graph.nodes.len())
                .filter(|&k| self.settled[k].is_none())
                .map(graph::task_of)
                .collect();
            return self.fail(format!(
                "hang: {} task(s) never settled after {:?}: {:?}",
                pending.len(),
                self.now,
                &pending[..pending.len().min(20)]
            ));
        }
        self.driver.flush();
        let stats = self.driver.stats();
        if stats.running + stats.ready + stats.waiting != 0 {
            return self.fail(format!(
                "hang: tasks still not finished {:?} after every task settled: {stats:?}",
                self.now
            ));
        }
        if stats.live != 0 {
            return self.fail(format!("records not freed after every release: {stats:?}"));
        }
        if let Err(e) = self.check_timeline() {
            return self.fail(format!("timeline: {e}"));
        }
        for p in 0..self.procs.len() {
            let x = &self.procs[p];
            if x.state == PState::Dead || x.lost || !x.core.is_joined() {
                continue;
            }
            let held: Vec<TaskId> = (0..self.graph.nodes.len())
                .map(graph::task_of)
                .filter(|t| x.core.holds(t.chunk()))
                .collect();
            let coming: Vec<TaskId> = (0..self.graph.nodes.len())
                .map(graph::task_of)
                .filter(|t| x.core.is_coming(t.chunk()))
                .collect();
            if !held.is_empty() || !coming.is_empty() {
                let w = x.core.id();
                return self.fail(format!(
                    "{w} (process {p}) still holds {held:?} and expects {coming:?} after every release"
                ));
            }
            if x.core.waiting_tasks() + x.core.running_tasks() != 0 {
                let w = x.core.id();
                return self.fail(format!("{w} still has tasks: {:?}", x.core));
            }
        }
    }

    /// With recording on: every task appears at most once, every task that finished
    /// without error on a worker appears, and each span is ordered queued ≤ dispatched ≤
    /// started ≤ finished ≤ now on the driver's clock (the workers' clocks here are the
    /// virtual clock, shifted by the network's delays); moves end after they start.
    fn check_timeline(&mut self) -> Result<(), String> {
        let Some(timeline) = self.driver.timeline() else {
            return Ok(());
        };
        let mut seen = std::collections::HashSet::new();
        for s in &timeline.tasks {
            if !seen.insert(s.task) {
                return Err(format!("{} appears twice", s.task));
            }
            if !(s.queued <= s.dispatched
                && s.dispatched <= s.started
                && s.started <= s.finished
                && s.finished <= self.now)
            {
                return Err(format!("span out of order (now {:?}): {s:?}", self.now));
            }
        }
        for k in 0..self.graph.nodes.len() {
            let t = graph::task_of(k);
            let ran = self
                .driver
                .task_info(t)
                .is_some_and(|i| i.finished.is_some() && i.run_ns.is_some());
            if ran && self.driver.scheduler().failure(t).is_none() && !seen.contains(&t) {
                return Err(format!("{t} finished but has no span"));
            }
        }
        for m in &timeline.moves {
            if m.started > m.finished || m.finished > self.now {
                return Err(format!("move out of order: {m:?}"));
            }
        }
        self.totals.timelines_checked += 1;
        self.totals.spans_checked += timeline.tasks.len() as u64;
        Ok(())
    }

    fn report(&self, failure: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "seed {}: {failure}", self.seed);
        let _ = writeln!(
            s,
            "  replay: cargo xtask chaos --seeds 1 --seed {}",
            self.seed
        );
        let _ = writeln!(
            s,
            "  {} nodes, {} pins, stats {:?}",
            self.graph.nodes.len(),
            self.graph.nodes.iter().filter(|n| n.pin.is_some()).count(),
            self.driver.stats()
        );
        for (p, x) in self.procs.iter().enumerate() {
            let _ = writeln!(
                s,
                "  process {p} (pid {}): {:?}{}, {:?}, driver link {}",
                x.pid,
                x.state,
                if x.lost { " (lost)" } else { "" },
                x.core,
                x.driver_conn
            );
        }
        for part in &self.partitions {
            let _ = writeln!(
                s,
                "  partition {:?} - {:?} until {:?}",
                part.a, part.b, part.until
            );
        }
        let _ = writeln!(s, "  lost workers: {:?}", self.lost_workers);
        let _ = writeln!(
            s,
            "  drained: {:?}, kept: {:?}, draining: {:?}",
            self.drained_ever, self.kept, self.drains
        );
        for k in 0..self.graph.nodes.len() {
            let t = graph::task_of(k);
            if let Some(i) = self.driver.task_info(t) {
                if i.finished.is_none() && self.settled[k].is_some() {
                    let _ = writeln!(
                        s,
                        "  {t} settled as {:?} but unfinished: {:?}, {i:?}",
                        self.settled[k], self.graph.nodes[k]
                    );
                }
            }
        }
        let mut shown = 0;
        for k in 0..self.graph.nodes.len() {
            if self.settled[k].is_some() || shown >= 12 {
                continue;
            }
            shown += 1;
            let t = graph::task_of(k);
            let _ = writeln!(
                s,
                "  unsettled {t} {:?}: completed {}, holders {:?}, {:?}",
                self.graph.nodes[k],
                self.completed[k],
                self.driver.holders(t.chunk()),
                self.driver.task_info(t)
            );
        }
        s
    }
}

/// What a worker process says of itself when it joins: a root and `threads` CPU threads.
fn process_info(pid: u32, host: &str, threads: u32) -> WorkerInfo {
    let id = WorkerId(0);
    let root = ProcId::root(id);
    let mut procs = vec![ProcInfo {
        id: root,
        kind: ProcKind::OS,
        parent: None,
        memory: MemorySpace::HOST,
        label: format!("process {pid}"),
        properties: Default::default(),
    }];
    for t in 0..threads {
        procs.push(ProcInfo {
            id: ProcId::new(id, t + 1),
            kind: ProcKind::THREAD,
            parent: Some(root),
            memory: MemorySpace::HOST,
            label: format!("core {t}"),
            properties: Default::default(),
        });
    }
    WorkerInfo {
        worker: id,
        incarnation: Incarnation(0),
        host: host.into(),
        pid,
        name: String::new(),
        peer_addr: Some(format!("sim:{pid}")),
        procs,
    }
}
