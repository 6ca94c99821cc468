//! Hostile peers against the sans-I/O cores, shared by `tests/hostile.rs` (a fixed number
//! of generated programs on stable Rust) and the cargo-fuzz target `cores`
//! (coverage-guided, on nightly).
//!
//! An [`Unstructured`] is read as a program: a sequence of inputs to a [`DriverCore`] or a
//! [`WorkerState`], most of them messages from a peer that lies (results for tasks it was
//! never given or for a stale incarnation, chunks never asked for, replicas that do not
//! exist, a second join, absurd sizes, durations and counts, raw frames that may not
//! decode), mixed with the honest traffic that makes those lies meaningful. After every
//! input the core's outputs are drained and checked: frames decode and fit the frame
//! limit, each client slot and fetch is answered at most once, and the scheduler's
//! bookkeeping passes its recount. A panic anywhere is a failure.
//!
//! Expects the wire generators of `dagger-core/tests/support/wire_fuzz.rs` as
//! `crate::wire_fuzz`.

use crate::wire_fuzz;
use arbitrary::{Result, Unstructured};
use dagger_core::wire::{self, Outcome, PeerMsg, ToDriver, ToWorker};
use dagger_core::{
    Arg, ChunkId, ExitCause, Incarnation, LostReason, MoveFailure, Options, ProcId, TaskId,
    TaskSpec, WorkerId,
};
use dagger_runtime::driver::{AfterDrain, DriverConfig, DriverCore, DriverEvent, FetchId, LinkId};
use dagger_runtime::worker::{Action, Dest, LinkKey, ShmWrite, WorkerConfig, WorkerState};
use dagger_sched::Scheduler;
use std::collections::BTreeSet;
use std::time::Duration;

/// The most inputs one program gives a core.
const MAX_STEPS: usize = 96;

/// How far a step moves the clock: mostly a little, sometimes past every timeout.
fn tick(u: &mut Unstructured<'_>) -> Result<Duration> {
    Ok(match u.int_in_range(0..=7u8)? {
        0..=4 => Duration::from_millis(u.int_in_range(0..=50)?),
        5 | 6 => Duration::from_millis(u.int_in_range(0..=5_000)?),
        _ => Duration::from_secs(u.int_in_range(0..=100_000)?),
    })
}

/// A task dispatched by the driver core, as its worker would know it.
#[derive(Clone, Copy, Debug)]
struct Dispatched {
    task: TaskId,
    link: LinkId,
    incarnation: Incarnation,
    proc: ProcId,
}

/// The driver core under test, with what a test shell knows of it.
struct Driver {
    core: DriverCore<u64>,
    now: Duration,
    links: Vec<LinkId>,
    next_link: u64,
    tasks: Vec<TaskId>,
    next_task: u64,
    dispatched: Vec<Dispatched>,
    fetches: BTreeSet<FetchId>,
    completed: BTreeSet<u64>,
    /// Workers whose drain was accepted and has not resolved.
    draining: BTreeSet<WorkerId>,
    slots_given: u64,
    max_frame: usize,
}

impl Driver {
    fn new(max_frame: usize) -> Self {
        let config = DriverConfig {
            max_frame,
            ..DriverConfig::default()
        };
        let sched = Scheduler::new(dagger_sched::Config::default());
        Driver {
            core: DriverCore::new(sched, config),
            now: Duration::ZERO,
            links: Vec::new(),
            next_link: 1,
            tasks: Vec::new(),
            next_task: 1,
            dispatched: Vec::new(),
            fetches: BTreeSet::new(),
            completed: BTreeSet::new(),
            draining: BTreeSet::new(),
            slots_given: 0,
            max_frame,
        }
    }

    fn link(&self, u: &mut Unstructured<'_>) -> Result<LinkId> {
        if self.links.is_empty() || u.ratio(1, 8)? {
            Ok(LinkId(u.int_in_range(0..=self.next_link)?))
        } else {
            Ok(*u.choose(&self.links)?)
        }
    }

    fn known_task(&self, u: &mut Unstructured<'_>) -> Result<TaskId> {
        if self.tasks.is_empty() || u.ratio(1, 6)? {
            wire_fuzz::task(u)
        } else {
            Ok(*u.choose(&self.tasks)?)
        }
    }

    /// An incarnation for a message on `link`: its own, mostly, else a stale or made-up one.
    fn incarnation(&self, u: &mut Unstructured<'_>, link: LinkId) -> Result<Incarnation> {
        match self.core.worker_on(link) {
            Some((_, inc)) if u.ratio(3, 4)? => Ok(inc),
            _ => wire_fuzz::incarnation(u),
        }
    }

    fn join(&mut self, u: &mut Unstructured<'_>, honest: bool) -> Result<()> {
        let link = if u.ratio(1, 10)? {
            self.link(u)?
        } else {
            let l = LinkId(self.next_link);
            self.next_link += 1;
            l
        };
        let mut info = wire_fuzz::worker_info(u)?;
        if honest {
            info.procs = honest_procs();
        }
        let in_process = u.ratio(1, 10)?;
        if self
            .core
            .handle_join(self.now, link, info, in_process)
            .is_ok()
        {
            self.links.push(link);
        }
        Ok(())
    }

    fn submit(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let n = u.int_in_range(1..=4)?;
        let mut specs = Vec::new();
        for _ in 0..n {
            let id = if u.ratio(1, 10)? {
                self.known_task(u)?
            } else {
                let t = TaskId(self.next_task);
                self.next_task += 1;
                t
            };
            let mut args = Vec::new();
            for _ in 0..u.int_in_range(0..=2)? {
                args.push(if u.arbitrary()? || self.tasks.is_empty() {
                    Arg::Value(wire::encode(&u.arbitrary::<u64>()?))
                } else {
                    Arg::Task(self.known_task(u)?)
                });
            }
            specs.push(TaskSpec {
                id,
                func: "f".into(),
                args,
                options: Options::default(),
            });
            self.tasks.push(id);
        }
        let with_slots = specs.into_iter().map(|s| {
            self.slots_given += 1;
            (s, Some(self.slots_given))
        });
        let with_slots: Vec<_> = with_slots.collect();
        self.core.handle_submit(self.now, with_slots);
        Ok(())
    }

    /// A `Done` batch on a link: for tasks dispatched there (honest), for tasks dispatched
    /// elsewhere or never, with the right or a stale incarnation, and any outcome.
    fn done(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let (link, given) = if self.dispatched.is_empty() || u.ratio(1, 4)? {
            (self.link(u)?, None)
        } else {
            let d = u.choose(&self.dispatched)?;
            (d.link, Some(d.incarnation))
        };
        // The incarnation the tasks were given to (which may have been replaced since),
        // the link's current one, or a made-up one.
        let incarnation = match given {
            Some(i) if u.ratio(1, 2)? => i,
            _ => self.incarnation(u, link)?,
        };
        let mut tasks = Vec::new();
        for _ in 0..u.int_in_range(1..=3)? {
            let d = if self.dispatched.is_empty() || u.ratio(1, 4)? {
                None
            } else {
                Some(*u.choose(&self.dispatched)?)
            };
            let task = match d {
                Some(d) => d.task,
                None => self.known_task(u)?,
            };
            let mut done = wire_fuzz::task_done(u, task)?;
            if let Some(d) = d {
                if u.ratio(3, 4)? {
                    done.proc = d.proc;
                }
                if u.ratio(1, 2)? {
                    done.outcome = Outcome::Value(wire::encode(&1u64));
                }
            }
            tasks.push(done);
        }
        let msg = ToDriver::Done {
            incarnation,
            tasks,
            moves: Vec::new(),
            sent_ns: 0,
        };
        self.core.handle_message(self.now, link, over_wire(&msg));
        Ok(())
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        self.now += tick(u)?;
        let now = self.now;
        let op = u.int_in_range(0..=15u8)?;
        match op {
            0 => self.join(u, true)?,
            1 => self.join(u, false)?,
            2 | 3 => self.submit(u)?,
            4..=6 => self.done(u)?,
            7 => {
                let link = self.link(u)?;
                let msg = wire_fuzz::to_driver(u)?;
                self.core.handle_message(now, link, over_wire(&msg));
            }
            8 => {
                // A raw frame, handled as the shell does: decoded, or the link is lost.
                let link = self.link(u)?;
                let mut frame = wire::encode(&wire_fuzz::to_driver(u)?);
                wire_fuzz::mutate(u, &mut frame)?;
                match wire::decode::<ToDriver>(&frame) {
                    Ok(msg) => self.core.handle_message(now, link, msg),
                    Err(e) => {
                        let detail = e.to_string();
                        let reason = LostReason::MalformedFrame { detail };
                        self.core.handle_link_closed(now, link, reason);
                    }
                }
            }
            9 => {
                let link = self.link(u)?;
                let msg = ToDriver::ChunkData {
                    incarnation: self.incarnation(u, link)?,
                    chunk: self.known_task(u)?.chunk(),
                    data: if u.arbitrary()? {
                        Ok(wire::ByteBuf::from(vec![7; u.int_in_range(0..=64)?]))
                    } else {
                        Err(wire_fuzz::move_failure(u)?)
                    },
                };
                self.core.handle_message(now, link, over_wire(&msg));
            }
            10 if u.arbitrary()? => {
                // A copy reported that may never have been asked for.
                let link = self.link(u)?;
                let msg = ToDriver::Replicated {
                    incarnation: self.incarnation(u, link)?,
                    chunk: self.known_task(u)?.chunk(),
                    result: if u.arbitrary()? {
                        Ok(())
                    } else {
                        Err(wire_fuzz::move_failure(u)?)
                    },
                };
                self.core.handle_message(now, link, over_wire(&msg));
            }
            10 => {
                // A drain of joined workers (or made-up ones), at any time.
                let mut workers = Vec::new();
                for _ in 0..u.int_in_range(1..=2)? {
                    let w = match self.core.worker_on(self.link(u)?) {
                        Some((w, _)) if u.ratio(7, 8)? => w,
                        _ => wire_fuzz::worker(u)?,
                    };
                    workers.push(w);
                }
                let deadline = if u.arbitrary()? {
                    Some(now + tick(u)?)
                } else {
                    None
                };
                let then = if u.arbitrary()? {
                    AfterDrain::Stop
                } else {
                    AfterDrain::Keep
                };
                if self
                    .core
                    .handle_drain(now, &workers, deadline, then)
                    .is_ok()
                {
                    // A worker named twice in one request is drained once.
                    let unique: BTreeSet<WorkerId> = workers.into_iter().collect();
                    for w in unique {
                        assert!(self.draining.insert(w), "{w} accepted for a drain twice");
                    }
                }
            }
            11 => {
                let link = self.link(u)?;
                let msg = if u.arbitrary()? {
                    ToDriver::Join(wire_fuzz::worker_info(u)?)
                } else {
                    // Started reports, true or false, for tasks the driver knows.
                    let n = u.int_in_range(0..=3)?;
                    ToDriver::Started {
                        incarnation: self.incarnation(u, link)?,
                        tasks: (0..n).map(|_| self.known_task(u)).collect::<Result<_>>()?,
                    }
                };
                self.core.handle_message(now, link, over_wire(&msg));
            }
            12 => {
                let link = self.link(u)?;
                let reason = LostReason::LinkClosed {
                    detail: "closed".into(),
                };
                self.core.handle_link_closed(now, link, reason);
            }
            13 => {
                let chunk = self.known_task(u)?.chunk();
                let holders = vec![wire_fuzz::worker(u)?];
                let fetch = self.core.handle_fetch(now, chunk, holders);
                assert!(self.fetches.insert(fetch), "{fetch} handed out twice");
            }
            14 => {
                if u.ratio(1, 2)? {
                    let task = self.known_task(u)?;
                    self.core.handle_release(now, task);
                } else {
                    let exit = ExitCause::Signal(9);
                    let host = if u.arbitrary()? { "node-a" } else { "node-b" };
                    self.core
                        .handle_process_exited(now, host, u.arbitrary()?, exit);
                }
            }
            _ => {
                if u.ratio(1, 16)? {
                    self.core.handle_shutdown(now);
                } else {
                    self.core.handle_timeout(now);
                }
            }
        }
        self.drain();
        Ok(())
    }

    /// Takes every output and checks it.
    fn drain(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            assert!(t.frame.len() <= self.max_frame, "a frame over the limit");
            let msg = wire::decode::<ToWorker>(&t.frame).expect("the core's frames decode");
            if let ToWorker::Run(tasks) = msg {
                let Some((_, incarnation)) = self.core.worker_on(t.link) else {
                    continue;
                };
                for r in tasks {
                    self.dispatched.push(Dispatched {
                        task: r.task,
                        link: t.link,
                        incarnation,
                        proc: r.proc,
                    });
                }
            }
        }
        while let Some(e) = self.core.poll_event() {
            match e {
                DriverEvent::Complete { slot, .. } => {
                    assert!(self.completed.insert(slot), "slot {slot} completed twice");
                }
                DriverEvent::FetchDone { fetch, .. } => {
                    assert!(self.fetches.remove(&fetch), "{fetch} answered twice");
                }
                DriverEvent::Drained { worker, .. } => {
                    assert!(
                        self.draining.remove(&worker),
                        "the drain of {worker} resolved twice, or was never accepted"
                    );
                }
                DriverEvent::Cluster(_) | DriverEvent::CloseLink { .. } => {}
            }
        }
        if let Err(e) = self.core.scheduler().check_invariants() {
            panic!("the scheduler's bookkeeping is off: {e}");
        }
        if self.dispatched.len() > 256 {
            self.dispatched.drain(..128);
        }
    }
}

/// A worker's root and two threads (ids filled by the driver).
pub fn honest_procs() -> Vec<dagger_core::ProcInfo> {
    use dagger_core::{MemorySpace, ProcInfo, ProcKind};
    let root = ProcId::root(WorkerId(0));
    let mut procs = vec![ProcInfo {
        id: root,
        kind: ProcKind::OS,
        parent: None,
        memory: MemorySpace::HOST,
        label: "process".into(),
        properties: Default::default(),
    }];
    for i in 1..=2 {
        procs.push(ProcInfo {
            id: ProcId::new(WorkerId(0), i),
            kind: ProcKind::THREAD,
            parent: Some(root),
            memory: MemorySpace::HOST,
            label: format!("core {i}"),
            properties: Default::default(),
        });
    }
    procs
}

/// Encodes and decodes a message, as it would cross a link.
fn over_wire<T: serde::Serialize + serde::de::DeserializeOwned>(msg: &T) -> T {
    wire::decode(&wire::encode(msg)).expect("a generated message decodes")
}

/// Runs the program `u` against a driver core with two honest workers and a few tasks
/// to start with. Panics if the core panics or breaks a guarantee.
pub fn drive_driver(u: &mut Unstructured<'_>) -> Result<()> {
    let max_frame = if u.ratio(1, 4)? { 256 } else { 1 << 20 };
    let mut d = Driver::new(max_frame);
    d.join(u, true)?;
    d.join(u, true)?;
    d.submit(u)?;
    d.drain();
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        d.step(u)?;
    }
    Ok(())
}

/// The worker core under test, with what a test shell knows of it.
struct Worker {
    core: WorkerState<Vec<u8>>,
    now: Duration,
    links: Vec<LinkKey>,
    next_link: u64,
    started: Vec<TaskId>,
    connects: Vec<WorkerId>,
    shm: Vec<ShmWrite<Vec<u8>>>,
}

impl Worker {
    fn link(&mut self, u: &mut Unstructured<'_>) -> Result<LinkKey> {
        if self.links.is_empty() || u.ratio(1, 6)? {
            let l = LinkKey(self.next_link);
            self.next_link += 1;
            Ok(l)
        } else {
            Ok(*u.choose(&self.links)?)
        }
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        self.now += tick(u)?;
        let now = self.now;
        match u.int_in_range(0..=13u8)? {
            0..=2 => {
                let msg = wire_fuzz::to_worker(u)?;
                self.core.handle_driver_msg(now, over_wire(&msg));
            }
            3 => {
                let mut frame = wire::encode(&wire_fuzz::to_worker(u)?);
                wire_fuzz::mutate(u, &mut frame)?;
                if let Ok(msg) = wire::decode::<ToWorker>(&frame) {
                    self.core.handle_driver_msg(now, msg);
                }
            }
            4 => {
                let link = self.link(u)?;
                let hello = wire_fuzz::hello(u)?;
                if self.core.handle_inbound_link(now, link, &hello).is_ok() {
                    self.links.push(link);
                }
            }
            5..=7 => {
                let link = self.link(u)?;
                let mut frame = wire::encode(&wire_fuzz::peer_msg(u)?);
                if u.ratio(1, 3)? {
                    wire_fuzz::mutate(u, &mut frame)?;
                }
                // As the shell does: inline chunks without a copy, the rest decoded.
                if let Some((chunk, range, push)) = wire::split_chunk_bytes(&frame) {
                    let bytes = frame[range].to_vec();
                    self.core.handle_chunk_received(now, chunk, push, Ok(bytes));
                } else if let Ok(msg) = wire::decode::<PeerMsg>(&frame) {
                    self.core.handle_peer_msg(now, link, msg);
                }
            }
            8 => {
                let peer = if self.connects.is_empty() || u.ratio(1, 4)? {
                    wire_fuzz::worker(u)?
                } else {
                    self.connects
                        .swap_remove(u.choose_index(self.connects.len())?)
                };
                if u.ratio(3, 4)? {
                    let link = LinkKey(self.next_link);
                    self.next_link += 1;
                    self.core.handle_link_up(now, peer, link);
                    self.links.push(link);
                } else {
                    self.core.handle_connect_failed(now, peer, "refused".into());
                }
            }
            9 => {
                let link = self.link(u)?;
                self.core.handle_link_closed(now, link);
            }
            10 => {
                let task = if self.started.is_empty() || u.ratio(1, 4)? {
                    wire_fuzz::task(u)?
                } else {
                    self.started
                        .swap_remove(u.choose_index(self.started.len())?)
                };
                let run = Duration::from_nanos(u.arbitrary()?);
                let result = if u.ratio(3, 4)? {
                    Ok(vec![1; u.int_in_range(0..=2048)?])
                } else {
                    Err(wire_fuzz::task_error(u, 0)?)
                };
                self.core.handle_task_finished(now, task, run, result);
            }
            11 => {
                let chunk = ChunkId(wire_fuzz::task(u)?.0);
                let r = if u.arbitrary()? {
                    Ok(vec![2; 8])
                } else {
                    Err(MoveFailure::NoHolder)
                };
                self.core
                    .handle_chunk_received(now, chunk, u.arbitrary()?, r);
            }
            12 => {
                if let Some(write) = self.shm.pop() {
                    let payload = if u.arbitrary()? {
                        Ok(dagger_core::wire::ChunkPayload::Shm {
                            name: "seg".into(),
                            len: u.arbitrary()?,
                        })
                    } else {
                        Err("no space".into())
                    };
                    self.core.handle_shm_written(now, write, payload);
                } else {
                    let to = if u.arbitrary()? {
                        Dest::Driver
                    } else {
                        Dest::Link(self.link(u)?)
                    };
                    let chunk = ChunkId(wire_fuzz::task(u)?.0);
                    self.core
                        .handle_send_too_large(now, to, chunk, u.arbitrary()?, u.arbitrary()?);
                }
            }
            _ => {
                if u.ratio(1, 2)? {
                    self.core.handle_timeout(now);
                } else {
                    let peer = wire_fuzz::worker(u)?;
                    self.core.handle_segment_released(now, peer, "seg".into());
                }
            }
        }
        self.drain();
        Ok(())
    }

    /// Takes every output and checks that frames decode.
    fn drain(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            let to = t.to;
            let frame = t.into_frame();
            let ok = match to {
                Dest::Driver => wire::decode::<ToDriver>(&frame).is_ok(),
                Dest::Link(_) => {
                    wire::decode::<PeerMsg>(&frame).is_ok()
                        || wire::decode::<wire::Hello>(&frame).is_ok()
                }
            };
            assert!(ok, "the worker core sent a frame that does not decode");
        }
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Start(s) => self.started.push(s.task),
                Action::Connect { peer, .. } => self.connects.push(peer),
                Action::WriteShm(w) => self.shm.push(w),
                _ => {}
            }
        }
        if self.started.len() > 256 {
            self.started.drain(..128);
        }
    }
}

/// Runs the program `u` against a worker core, welcomed or not. Panics if the core panics
/// or sends a frame that does not decode.
pub fn drive_worker(u: &mut Unstructured<'_>) -> Result<()> {
    let mut config = WorkerConfig::new("node-a", 7);
    config.shm = u.arbitrary()?;
    config.shm_min_bytes = 16;
    let mut w = Worker {
        core: WorkerState::new(config),
        now: Duration::ZERO,
        links: Vec::new(),
        next_link: 1,
        started: Vec::new(),
        connects: Vec::new(),
        shm: Vec::new(),
    };
    if u.ratio(3, 4)? {
        let welcome = ToWorker::Welcome {
            worker: WorkerId(1),
            incarnation: Incarnation(3),
            peers: vec![wire::PeerInfo {
                worker: WorkerId(2),
                incarnation: Incarnation(1),
                addr: "10.0.0.2:1".into(),
                host: "node-a".into(),
            }],
            heartbeat: Duration::from_millis(250),
            log_filter: String::new(),
        };
        w.core.handle_driver_msg(Duration::ZERO, welcome);
    }
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        w.step(u)?;
    }
    Ok(())
}
