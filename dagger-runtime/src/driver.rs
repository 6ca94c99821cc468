//! The driver core: every decision of the driver, as a state machine without I/O.
//!
//! # Shape
//!
//! [`DriverCore`] owns the [`Scheduler`] and everything the driver decides around it:
//! worker ids and incarnations, membership (`Welcome`, `PeerJoined`, `PeerLeft`), fencing of
//! links that were replaced or lost, heartbeat expiry (through
//! [`dagger_ft::FailureDetector`], which a stall of the driver itself does not trip), the
//! fault policy ([`dagger_ft::FaultPolicy`]: the verdict on each task of a lost worker,
//! watched suspects and their `Started` reports, poison tasks, loss budgets, and the
//! exclusion of a worker whose failed tasks succeed elsewhere, declared lost with
//! [`LostReason::Excluded`]), fetches of large results (parked while a lost result is
//! recomputed), `Release` messages held back to ride with the next message, and `Run`
//! batches split to fit the transport's frame limit.
//!
//! Like the scheduler and quinn-proto's `Connection`, it is driven by a shell:
//!
//! * inputs come in through `handle_*` methods that take the current time `now` (a
//!   [`Duration`] since a start the shell chooses; it must not go backwards — an earlier
//!   value is treated as the latest one seen);
//! * frames to send come out of [`DriverCore::poll_transmit`] (already encoded with
//!   [`dagger_core::wire::encode`], each at most [`DriverConfig::max_frame`] bytes), and
//!   everything else the shell must carry out comes out of [`DriverCore::poll_event`]
//!   (completions for client slots, fetch answers, cluster events, links to close);
//! * [`DriverCore::poll_timeout`] says when the core next needs
//!   [`DriverCore::handle_timeout`]; the shell arms one timer for it. There is no periodic
//!   tick.
//!
//! The shell calls the `poll_*` methods after each batch of inputs, until they return
//! `None`. Submissions made between two polls are given to the scheduler in one call
//! (one batch), which keeps the per-task cost low.
//!
//! A link is named by a [`LinkId`] the shell chooses when a process passes the handshake;
//! every later input from that link names it, and the core maps it to the worker and the
//! incarnation it joined as. Input from a link that is not (or no longer) joined is
//! ignored: that is the fencing of stale incarnations.
//!
//! The type parameter `S` is what the shell keeps per client-visible task (the facade keeps
//! its completion slot there; a simulation may use `()`). The core hands it back exactly
//! once, in [`DriverEvent::Complete`], unless the shell took it back before with
//! [`DriverCore::forget_slot`].
//!
//! Architecture invariant: this module never performs I/O, never spawns a thread and never
//! reads the clock.
//!
//! # Not guaranteed
//!
//! * A frame handed out by `poll_transmit` may be lost if its link breaks; the core learns
//!   of it only through [`DriverCore::handle_link_closed`] (or the heartbeat timeout).
//! * Held-back releases are sent at most [`DriverConfig::release_delay`] after the first of
//!   them was held, or earlier; not at any exact time.

use dagger_core::hash::IdHashMap;
use dagger_core::wire::{self, Outcome, PeerInfo, RunTask, TaskDone, ToDriver, ToWorker};
use dagger_core::{
    ChunkId, ExitCause, GraphError, Incarnation, LostReason, MemorySpace, MoveFailure, ProcId,
    ProcInfo, ProcKind, TaskError, TaskId, TaskSpec, WorkerId, WorkerInfo,
};
use dagger_ft::{FailureDetector, FaultPolicy, PolicyConfig};
use dagger_proc::Topology;
use dagger_sched::{
    ClusterEvent, Command, Completion, DrainError, LossVerdict, Scheduler, Stats, TaskInfo,
};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

/// Names one link (one connection to a process) of the shell. Chosen by the shell, unique
/// among the links it ever reports; opaque to the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u64);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link-{}", self.0)
    }
}

/// Names one fetch of a large result, as returned by [`DriverCore::handle_fetch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FetchId(pub u64);

impl fmt::Display for FetchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fetch-{}", self.0)
    }
}

/// Tunables of the driver core, fixed at [`DriverCore::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    /// A worker heard nothing from for this long is declared lost
    /// ([`LostReason::Silent`]); workers are told to send a heartbeat every quarter of it.
    /// Default 900 ms.
    pub heartbeat_timeout: Duration,
    /// How long a fetch waits for a lost result to be recomputed before it fails with
    /// [`MoveFailure::NoHolder`]. Default 60 s.
    pub fetch_park_limit: Duration,
    /// Held-back releases are sent at once when this many have gathered. Default 1024.
    pub release_batch: usize,
    /// The longest a release is held back waiting for another message to its worker.
    /// Default 20 ms.
    pub release_delay: Duration,
    /// The largest frame the links carry, in bytes (the transport's limit). `Run` batches
    /// are split to fit; a single task that cannot fit fails with
    /// [`MoveFailure::TooLarge`]. Default 1 GiB.
    pub max_frame: usize,
    /// Whether workers on one host are joined by a shared-memory shortcut edge in the
    /// topology (the workers use one for large moves). Default on.
    pub shm_shortcuts: bool,
    /// The fault policy: loss budgets, poison tasks, exclusion of workers.
    pub policy: PolicyConfig,
    /// Record every task's and move's span for [`DriverCore::timeline`]. Default off. On,
    /// it also turns the scheduler's quiet reports off (`dagger_sched::Config::quiet_reports`),
    /// so that the timeline has every task once the last result arrived.
    pub record: bool,
    /// Which log events workers forward to the driver, as `tracing` filter directives
    /// (`RUST_LOG` syntax), sent in each `Welcome`; the driver emits them again under the
    /// target `dagger::worker`. Empty (the default): workers forward nothing.
    pub worker_log_filter: String,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout: Duration::from_millis(900),
            fetch_park_limit: Duration::from_secs(60),
            release_batch: 1024,
            release_delay: Duration::from_millis(20),
            max_frame: 1 << 30,
            shm_shortcuts: true,
            policy: PolicyConfig::default(),
            record: false,
            worker_log_filter: String::new(),
        }
    }
}

/// One encoded frame to send, taken with [`DriverCore::poll_transmit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The link to send it on.
    pub link: LinkId,
    /// The worker on the other end of that link.
    pub worker: WorkerId,
    /// One `ToWorker` message, encoded; at most [`DriverConfig::max_frame`] bytes.
    pub frame: Vec<u8>,
}

/// Something the shell must carry out, taken with [`DriverCore::poll_event`].
#[derive(Clone, Debug, PartialEq)]
pub enum DriverEvent<S> {
    /// A task submitted with a slot finished, failed, was refused, or the driver shut down.
    /// Emitted exactly once per slot (never for one taken back with
    /// [`DriverCore::forget_slot`]).
    Complete {
        /// The task.
        task: TaskId,
        /// The slot it was submitted with.
        slot: S,
        /// Its result, or why there is none.
        result: Result<Completion, TaskError>,
    },
    /// The answer to a fetch. Emitted exactly once per [`DriverCore::handle_fetch`].
    FetchDone {
        /// The fetch.
        fetch: FetchId,
        /// The result's encoded bytes, or why they could not be brought.
        result: Result<Vec<u8>, TaskError>,
    },
    /// A change of the cluster, for subscribers.
    Cluster(ClusterEvent),
    /// The drain of a worker ([`DriverCore::handle_drain`]) is over, in one of the ways
    /// [`DrainOutcome`] names. Emitted once per drained worker. When the worker was
    /// stopped, its link follows with [`DriverEvent::CloseLink`] (after a `Shutdown` frame).
    Drained {
        /// The worker.
        worker: WorkerId,
        /// The link it was joined on.
        link: LinkId,
        /// Its OS process id, as it reported it when it joined.
        pid: u32,
        /// How the drain ended.
        outcome: DrainOutcome,
    },
    /// Close this link: its worker was declared lost (or replaced). Emitted once per joined
    /// link; nothing more is sent on it.
    CloseLink {
        /// The link.
        link: LinkId,
        /// Why.
        reason: LostReason,
    },
}

/// Who a joining process became, returned by [`DriverCore::handle_join`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Joined {
    /// The id assigned to it.
    pub worker: WorkerId,
    /// Its incarnation (unique over the driver's life).
    pub incarnation: Incarnation,
}

/// A join the core refused; the shell closes the link.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The link already carries a joined worker (a shell error: link ids must be fresh).
    #[error("{link} already carries a joined worker")]
    LinkInUse {
        /// The link.
        link: LinkId,
    },
    /// The driver is shut down and admits no workers.
    #[error("the driver is shut down")]
    ShutDown,
}

/// What becomes of a worker once its drain is over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AfterDrain {
    /// It is told to shut down and leaves the pool (default).
    #[default]
    Stop,
    /// It stays joined but receives no task: its owner stops it (losing nothing), or a
    /// test kills it to show that nothing is lost.
    Keep,
}

/// How a drain ended, in [`DriverEvent::Drained`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum DrainOutcome {
    /// It held nothing the graph still needed: every task it was given finished, every
    /// needed result only it held was copied to a worker that stays, and no task elsewhere
    /// still fetches from it. Stopping it loses nothing.
    Drained {
        /// From the drain's start to its end.
        took: Duration,
        /// Results it handed over.
        moved_chunks: u32,
        /// Their bytes.
        moved_bytes: u64,
        /// Whether it was told to shut down ([`AfterDrain::Stop`]).
        stopped: bool,
    },
    /// The deadline came first: it was removed as lost; the tasks it still ran run again
    /// elsewhere and the needed results only it held are recomputed (within their loss
    /// budgets), as after any loss.
    DeadlineExceeded {
        /// From the drain's start to the deadline.
        took: Duration,
        /// Tasks it was still running.
        rerun: usize,
        /// Needed results only it held.
        sole_copies: usize,
    },
    /// Copies of a result only it held kept failing: it was removed as lost, and what only
    /// it held is recomputed.
    HandoverFailed {
        /// From the drain's start to its end.
        took: Duration,
        /// The task whose result could not be copied.
        task: TaskId,
        /// Why the last copy failed.
        cause: MoveFailure,
    },
    /// It was lost before its drain was over; recovery reruns and recomputes its work.
    Lost {
        /// From the drain's start to the loss.
        took: Duration,
        /// Why it was lost.
        reason: LostReason,
    },
    /// The driver shut down first.
    ShutDown,
}

/// A drain in progress.
struct CoreDrain {
    incarnation: Incarnation,
    since: Duration,
    deadline: Option<Duration>,
    then: AfterDrain,
}

/// A joined worker's link.
struct WorkerLink {
    link: LinkId,
    incarnation: Incarnation,
    pid: u32,
    peer: PeerInfo,
}

/// A fetch sent to a worker that holds its chunk.
#[derive(Clone, Copy)]
struct SentFetch {
    worker: WorkerId,
    fetch: FetchId,
    since: Duration,
}

/// A fetch waiting for a live holder of its chunk.
struct ParkedFetch {
    fetch: FetchId,
    chunk: ChunkId,
    holders: Vec<WorkerId>,
    since: Duration,
}

/// The driver's decisions as a state machine without I/O. See the [module
/// documentation](self) for how a shell drives it.
pub struct DriverCore<S = ()> {
    sched: Scheduler,
    config: DriverConfig,
    /// The latest `now` seen.
    now: Duration,
    /// Whether inputs arrived since the scheduler's commands were last taken.
    dirty: bool,
    shut_down: bool,

    /// Slots of accepted tasks whose completion has not been handed out.
    slots: IdHashMap<TaskId, S>,
    /// Submissions not yet given to the scheduler (all of them go in one call).
    pending: Vec<TaskSpec>,
    /// The slot of each task in `pending`, in the same order.
    pending_slots: Vec<(TaskId, Option<S>)>,
    /// Where each submission in `pending` ends.
    pending_ends: Vec<usize>,

    /// Joined workers, by id (ordered, so that what the core emits is deterministic).
    workers: BTreeMap<WorkerId, WorkerLink>,
    /// Joined links: the worker and incarnation each joined as.
    links: IdHashMap<LinkId, (WorkerId, Incarnation)>,
    next_worker: u32,
    next_incarnation: u32,
    joined_total: usize,
    detector: FailureDetector,
    policy: FaultPolicy,

    next_fetch: u64,
    /// Fetches sent to a worker, by chunk: who was asked, for which fetch, and when the
    /// fetch started (its park limit counts from then).
    fetches: IdHashMap<ChunkId, Vec<SentFetch>>,
    parked: Vec<ParkedFetch>,

    /// Drains in progress, by worker.
    drains: BTreeMap<WorkerId, CoreDrain>,
    /// The spans of tasks and moves, when recording.
    recorder: Option<crate::timeline::Recorder>,

    /// Releases held back per worker, how many in all, and since when the oldest waits.
    held: BTreeMap<WorkerId, Vec<ChunkId>>,
    held_count: usize,
    held_since: Option<Duration>,

    transmits: VecDeque<Transmit>,
    events: VecDeque<DriverEvent<S>>,
}

impl<S> DriverCore<S> {
    /// A core around `sched` with no workers. Cheap.
    pub fn new(mut sched: Scheduler, config: DriverConfig) -> Self {
        sched.set_default_loss_retries(config.policy.loss_retries);
        if config.record {
            // A recorded timeline holds every task once the last result is in: no report
            // may come late.
            sched.set_quiet_reports(false);
        }
        let recorder = config.record.then(crate::timeline::Recorder::default);
        Self {
            detector: FailureDetector::new(config.heartbeat_timeout),
            policy: FaultPolicy::new(config.policy.clone()),
            sched,
            config,
            now: Duration::ZERO,
            dirty: false,
            shut_down: false,
            slots: IdHashMap::default(),
            pending: Vec::new(),
            pending_slots: Vec::new(),
            pending_ends: Vec::new(),
            workers: BTreeMap::new(),
            links: IdHashMap::default(),
            next_worker: 1,
            next_incarnation: 1,
            joined_total: 0,
            next_fetch: 1,
            fetches: IdHashMap::default(),
            parked: Vec::new(),
            drains: BTreeMap::new(),
            recorder,
            held: BTreeMap::new(),
            held_count: 0,
            held_since: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &DriverConfig {
        &self.config
    }

    fn advance(&mut self, now: Duration) {
        self.now = self.now.max(now);
        // After a stall of the driver itself, nobody expires before one more interval.
        self.detector.observe(self.now);
        self.dirty = true;
    }

    // ---------------------------------------------------------------- membership

    /// Puts the driver's own process (`pid` on `host`) in the topology as a root without
    /// task processors, so the tree shows it and move costs from the driver (inline values)
    /// are known. Used when the driver runs no tasks itself.
    pub fn add_driver_root(&mut self, now: Duration, host: String, pid: u32) {
        self.advance(now);
        let root = ProcInfo {
            id: ProcId::root(WorkerId::DRIVER),
            kind: ProcKind::OS,
            parent: None,
            memory: MemorySpace::HOST,
            label: format!("driver process {pid} on {host}"),
            properties: [("role".to_string(), "driver (runs no tasks)".to_string())]
                .into_iter()
                .collect(),
        };
        let info = WorkerInfo {
            worker: WorkerId::DRIVER,
            incarnation: Incarnation(0),
            host,
            pid,
            name: String::new(),
            peer_addr: None,
            procs: vec![root],
        };
        self.sched.worker_joined(self.now, info);
    }

    /// A process passed the handshake on `link` and joins with `info` (its id and
    /// incarnation fields are ignored and filled here). `in_process` marks the driver's own
    /// worker, which becomes `WorkerId::DRIVER` (a previous incarnation of it is fenced off);
    /// any other gets a fresh id. Every join gets a fresh incarnation.
    ///
    /// Queues `Welcome` to the new worker (its id, incarnation, the other workers and the
    /// heartbeat interval), then `PeerJoined` to every other worker; the scheduler may
    /// place tasks on it from the next poll. Costs O(workers).
    pub fn handle_join(
        &mut self,
        now: Duration,
        link: LinkId,
        mut info: WorkerInfo,
        in_process: bool,
    ) -> Result<Joined, JoinError> {
        if self.shut_down {
            return Err(JoinError::ShutDown);
        }
        if self.links.contains_key(&link) {
            return Err(JoinError::LinkInUse { link });
        }
        self.advance(now);
        let worker = if in_process {
            WorkerId::DRIVER
        } else {
            let w = WorkerId(self.next_worker);
            self.next_worker += 1;
            w
        };
        let incarnation = Incarnation(self.next_incarnation);
        self.next_incarnation += 1;
        if let Some(old) = self.workers.get(&worker) {
            let old = old.incarnation;
            self.lose(worker, old, LostReason::Fenced { by: incarnation });
        }
        info.worker = worker;
        info.incarnation = incarnation;
        for p in &mut info.procs {
            p.id.worker = worker;
            if let Some(parent) = &mut p.parent {
                parent.worker = worker;
            }
        }
        let peer = PeerInfo {
            worker,
            incarnation,
            addr: info.peer_addr.clone().unwrap_or_default(),
            host: info.host.clone(),
        };
        let peers: Vec<PeerInfo> = self.workers.values().map(|l| l.peer.clone()).collect();
        let welcome = ToWorker::Welcome {
            worker,
            incarnation,
            peers,
            heartbeat: self.config.heartbeat_timeout / 4,
            log_filter: self.config.worker_log_filter.clone(),
        };
        self.transmits.push_back(Transmit {
            link,
            worker,
            frame: wire::encode(&welcome),
        });
        self.broadcast(&ToWorker::PeerJoined(peer.clone()));
        self.workers.insert(
            worker,
            WorkerLink {
                link,
                incarnation,
                pid: info.pid,
                peer,
            },
        );
        self.links.insert(link, (worker, incarnation));
        self.detector.heard(worker, incarnation, self.now);
        self.sched.worker_joined(self.now, info);
        if self.config.shm_shortcuts {
            dagger_move::shm::add_same_host_shortcuts(self.sched.topology_mut());
        }
        self.joined_total += 1;
        tracing::info!(%worker, %incarnation, "worker joined");
        Ok(Joined {
            worker,
            incarnation,
        })
    }

    /// A decoded message arrived on `link`. Ignored if the link is not (or no longer)
    /// joined: a replaced or lost incarnation is fenced off. Any message counts as a sign
    /// of life. A second `Join` on a joined link is a protocol violation and loses the
    /// worker. Costs O(tasks in the message) plus the scheduler's work.
    pub fn handle_message(&mut self, now: Duration, link: LinkId, msg: ToDriver) {
        let Some(&(worker, link_incarnation)) = self.links.get(&link) else {
            return;
        };
        self.advance(now);
        let now = self.now;
        self.detector.heard(worker, link_incarnation, now);
        match msg {
            ToDriver::Done {
                incarnation,
                tasks,
                moves,
                sent_ns,
            } => {
                let mut excluded = Vec::new();
                let recording = incarnation == link_incarnation;
                if let (Some(rec), true) = (&mut self.recorder, recording) {
                    rec.batch(worker, now, sent_ns);
                    for m in moves {
                        rec.moved(worker, m);
                    }
                }
                for done in tasks {
                    if let (Some(rec), true) = (&mut self.recorder, recording) {
                        // Only what the scheduler accepts: the attempt dispatched last.
                        if let Some(dispatch) = self.sched.dispatch_to(done.task, worker) {
                            rec.task_done(worker, &done, dispatch);
                        }
                    }
                    if incarnation == link_incarnation {
                        match &done.outcome {
                            Outcome::Failed(err) => {
                                self.policy
                                    .attempt_failed(now, done.task, worker, incarnation, err)
                            }
                            _ => excluded.extend(self.policy.attempt_succeeded(
                                now,
                                done.task,
                                worker,
                                incarnation,
                            )),
                        }
                    }
                    self.sched.task_done(now, worker, incarnation, done);
                }
                for ex in excluded {
                    // The driver's own worker runs in its process: never excluded.
                    if !ex.worker.is_driver() {
                        let strikes = ex.strikes;
                        self.lose(ex.worker, ex.incarnation, LostReason::Excluded { strikes });
                    }
                }
            }
            ToDriver::Started { incarnation, tasks } => {
                if incarnation == link_incarnation {
                    for task in tasks {
                        if self.sched.is_dispatched_to(task, worker) {
                            self.policy.started(task, worker, incarnation);
                        }
                    }
                }
            }
            ToDriver::ChunkData { chunk, data, .. } => self.answer_fetches(worker, chunk, data),
            ToDriver::Replicated {
                incarnation,
                chunk,
                result,
            } => self
                .sched
                .chunk_replicated(now, worker, incarnation, chunk, result),
            ToDriver::Heartbeat { .. } => {}
            ToDriver::Log {
                incarnation,
                lines,
                dropped,
            } => {
                if incarnation == link_incarnation {
                    forward_log(worker, &lines, dropped);
                }
            }
            ToDriver::Join(_) => {
                let detail = "sent a second join".to_string();
                let reason = LostReason::ProtocolViolation { detail };
                self.lose(worker, link_incarnation, reason);
            }
        }
    }

    /// `link` closed or sent a frame that does not decode (`reason` says which). Its
    /// worker, if the link is still joined, is declared lost: its tasks run again
    /// elsewhere, the other workers are told `PeerLeft`, and fetches waiting on it ask
    /// another holder or wait while the result is recomputed.
    pub fn handle_link_closed(&mut self, now: Duration, link: LinkId, reason: LostReason) {
        let Some(&(worker, incarnation)) = self.links.get(&link) else {
            return;
        };
        self.advance(now);
        self.lose(worker, incarnation, reason);
    }

    /// Bytes of a message still arriving came in on `link` (a peer sending one large
    /// frame, a result being fetched, is alive before the frame completes; the shell
    /// reports such progress about once per heartbeat interval). Counts as a sign of life
    /// like a message; ignored if the link is not joined. O(log workers).
    pub fn handle_progress(&mut self, now: Duration, link: LinkId) {
        let Some(&(worker, incarnation)) = self.links.get(&link) else {
            return;
        };
        self.now = self.now.max(now);
        self.detector.observe(self.now);
        self.detector.heard(worker, incarnation, self.now);
    }

    /// A process the shell started on host `host` (its own) exited: its parent saw it at
    /// once, where a killed process's link would otherwise be noticed only by missed
    /// heartbeats. The worker that joined from that host with that process id, if any, is
    /// declared lost with [`LostReason::ProcessExited`]; a worker of another host that
    /// happens to have the same process id is not.
    pub fn handle_process_exited(&mut self, now: Duration, host: &str, pid: u32, exit: ExitCause) {
        let found = self
            .workers
            .iter()
            .find(|(w, l)| l.pid == pid && l.peer.host == host && !w.is_driver())
            .map(|(w, l)| (*w, l.incarnation));
        if let Some((worker, incarnation)) = found {
            self.advance(now);
            self.lose(worker, incarnation, LostReason::ProcessExited { pid, exit });
        }
    }

    /// Removes `workers` from the pool, all or none, by draining them: from now on they
    /// receive no task, they finish what they were given, and every needed result that
    /// only they hold is copied to a worker that stays (the cheapest destination). Each
    /// drain ends with one [`DriverEvent::Drained`]: once the worker holds nothing the
    /// graph still needs (then it is told to shut down and leaves the pool, or is kept, as
    /// `then` says); at `deadline` (a time on the `now` clock), when it is removed as lost
    /// and what it still ran runs again elsewhere; or when it is lost first.
    ///
    /// Refused with nothing changed ([`DrainError`]) for an unknown worker, one already
    /// draining, or when a task not yet dispatched would be left with no worker its scope
    /// admits. Costs O(live tasks) for that check.
    pub fn handle_drain(
        &mut self,
        now: Duration,
        workers: &[WorkerId],
        deadline: Option<Duration>,
        then: AfterDrain,
    ) -> Result<(), DrainError> {
        for &w in workers {
            if !self.workers.contains_key(&w) {
                return Err(DrainError::UnknownWorker { worker: w });
            }
        }
        self.advance(now);
        self.submit_pending();
        self.sched.drain(self.now, workers)?;
        for &w in workers {
            if let Some(l) = self.workers.get(&w) {
                tracing::info!(worker = %w, ?deadline, "draining");
                self.drains.insert(
                    w,
                    CoreDrain {
                        incarnation: l.incarnation,
                        since: self.now,
                        deadline,
                        then,
                    },
                );
            }
        }
        Ok(())
    }

    /// The workers being drained now.
    pub fn draining(&self) -> Vec<WorkerId> {
        self.drains.keys().copied().collect()
    }

    /// The scheduler says `worker` holds nothing needed any more: its drain is reported,
    /// and it is stopped or kept as asked.
    fn drain_over(&mut self, worker: WorkerId, moved_chunks: u32, moved_bytes: u64) {
        let Some(d) = self.drains.remove(&worker) else {
            return;
        };
        let Some(l) = self.workers.get(&worker) else {
            return;
        };
        let (link, pid) = (l.link, l.pid);
        let stopped = d.then == AfterDrain::Stop;
        let took = self.now.saturating_sub(d.since);
        tracing::info!(%worker, ?took, moved_chunks, moved_bytes, "drained");
        self.events.push_back(DriverEvent::Drained {
            worker,
            link,
            pid,
            outcome: DrainOutcome::Drained {
                took,
                moved_chunks,
                moved_bytes,
                stopped,
            },
        });
        if stopped {
            let detail = "drained".to_string();
            self.stop_worker(worker, d.incarnation, LostReason::Removed { detail });
        }
    }

    /// The drain of `worker` could not hand over a result: it is removed as lost.
    fn drain_failed(&mut self, worker: WorkerId, task: TaskId, cause: MoveFailure) {
        let Some(d) = self.drains.remove(&worker) else {
            return;
        };
        let Some(l) = self.workers.get(&worker) else {
            return;
        };
        let (link, pid) = (l.link, l.pid);
        let took = self.now.saturating_sub(d.since);
        self.events.push_back(DriverEvent::Drained {
            worker,
            link,
            pid,
            outcome: DrainOutcome::HandoverFailed {
                took,
                task,
                cause: cause.clone(),
            },
        });
        let detail = format!("its drain could not copy the result of {task}: {cause}");
        self.stop_worker(worker, d.incarnation, LostReason::Removed { detail });
    }

    /// The deadline of `worker`'s drain passed: it is removed as lost.
    fn drain_deadline(&mut self, worker: WorkerId) {
        let Some(d) = self.drains.remove(&worker) else {
            return;
        };
        let Some(l) = self.workers.get(&worker) else {
            return;
        };
        let (link, pid) = (l.link, l.pid);
        let progress = self.sched.drain_progress(worker).unwrap_or_default();
        let took = self.now.saturating_sub(d.since);
        self.events.push_back(DriverEvent::Drained {
            worker,
            link,
            pid,
            outcome: DrainOutcome::DeadlineExceeded {
                took,
                rerun: progress.running,
                sole_copies: progress.sole_copies,
            },
        });
        let detail = format!("its drain deadline passed after {took:?}");
        self.stop_worker(worker, d.incarnation, LostReason::Removed { detail });
    }

    /// Tells `worker` to shut down, then removes it from the pool like a lost worker
    /// (what it still ran or alone held is redone; after a finished drain, nothing). The
    /// `Shutdown` frame goes out before the link is closed.
    fn stop_worker(&mut self, worker: WorkerId, incarnation: Incarnation, reason: LostReason) {
        if let Some(l) = self.workers.get(&worker) {
            if l.incarnation == incarnation {
                let link = l.link;
                self.transmits.push_back(Transmit {
                    link,
                    worker,
                    frame: wire::encode(&ToWorker::Shutdown),
                });
            }
        }
        self.lose(worker, incarnation, reason);
    }

    /// Declares `worker` (in `incarnation`) lost, unless it is already gone or replaced.
    fn lose(&mut self, worker: WorkerId, incarnation: Incarnation, reason: LostReason) {
        match self.workers.get(&worker) {
            Some(l) if l.incarnation == incarnation => {}
            _ => return,
        }
        let Some(l) = self.workers.remove(&worker) else {
            return;
        };
        self.links.remove(&l.link);
        self.events.push_back(DriverEvent::CloseLink {
            link: l.link,
            reason: reason.clone(),
        });
        self.detector.forget(worker);
        if let Some(chunks) = self.held.remove(&worker) {
            self.held_count -= chunks.len();
            if self.held_count == 0 {
                self.held_since = None;
            }
        }
        if let Some(d) = self.drains.remove(&worker) {
            self.events.push_back(DriverEvent::Drained {
                worker,
                link: l.link,
                pid: l.pid,
                outcome: DrainOutcome::Lost {
                    took: self.now.saturating_sub(d.since),
                    reason: reason.clone(),
                },
            });
        }
        if matches!(reason, LostReason::Removed { .. }) {
            tracing::info!(%worker, %incarnation, %reason, "worker removed");
        } else {
            tracing::warn!(%worker, %incarnation, kind = reason.kind(), %reason, "worker lost");
        }
        let policy = &mut self.policy;
        let r = &reason;
        let mut verdict = |t: &dagger_sched::LostTask<'_>| {
            let v = policy.on_lost(worker, incarnation, r, t);
            if let LossVerdict::Fail(err) = &v {
                tracing::warn!(task = %t.task, error = %err, "a task of the lost worker fails");
            }
            v
        };
        self.sched
            .worker_lost_with(self.now, worker, reason.clone(), Some(&mut verdict));
        self.policy.forget_worker(worker, incarnation);
        self.broadcast(&ToWorker::PeerLeft(worker));
        // Fetches waiting on it are parked again: the next `process` asks another holder,
        // or waits while the result is recomputed (at most the park limit, counted from
        // the fetch's start), or fails them if the recomputation failed.
        let parked = &mut self.parked;
        self.fetches.retain(|&chunk, waiters| {
            waiters.retain(|f| {
                if f.worker != worker {
                    return true;
                }
                parked.push(ParkedFetch {
                    fetch: f.fetch,
                    chunk,
                    holders: Vec::new(),
                    since: f.since,
                });
                false
            });
            !waiters.is_empty()
        });
        self.dirty = true;
    }

    // ---------------------------------------------------------------- client

    /// Completes `slot` with [`TaskError::Shutdown`]: the context stopped before `task` ran.
    fn complete_shut_down(&mut self, task: TaskId, slot: S) {
        self.events.push_back(DriverEvent::Complete {
            task,
            slot,
            result: Err(TaskError::Shutdown { task }),
        });
    }

    /// One new task, whose completion goes to `slot`. Given to the scheduler at the next
    /// poll together with every other submission since the last one. After shutdown the
    /// slot completes at once with [`TaskError::Shutdown`].
    pub fn handle_spawn(&mut self, now: Duration, spec: TaskSpec, slot: S) {
        if self.shut_down {
            self.complete_shut_down(spec.id, slot);
            return;
        }
        self.advance(now);
        self.pending_slots.push((spec.id, Some(slot)));
        self.pending.push(spec);
        self.pending_ends.push(self.pending.len());
    }

    /// One submission of tasks (a graph), each with an optional slot. The submissions made
    /// between two polls go to the scheduler in one batch; if that batch is refused, each
    /// submission is tried on its own, so a bad submission fails only its own tasks (their
    /// slots complete with [`TaskError::Rejected`]). After shutdown every slot completes
    /// at once with [`TaskError::Shutdown`].
    pub fn handle_submit(
        &mut self,
        now: Duration,
        tasks: impl IntoIterator<Item = (TaskSpec, Option<S>)>,
    ) {
        if self.shut_down {
            for (spec, slot) in tasks {
                if let Some(slot) = slot {
                    self.complete_shut_down(spec.id, slot);
                }
            }
            return;
        }
        self.advance(now);
        for (spec, slot) in tasks {
            self.pending_slots.push((spec.id, slot));
            self.pending.push(spec);
        }
        self.pending_ends.push(self.pending.len());
    }

    /// The client no longer wants `task`'s result (its last handle was dropped).
    pub fn handle_release(&mut self, now: Duration, task: TaskId) {
        if self.shut_down {
            return;
        }
        self.advance(now);
        self.submit_pending();
        self.sched.release(task);
    }

    /// Gives back the slot of `task`, if the core holds one: nobody will read its
    /// completion (the client dropped every handle to it), so no [`DriverEvent::Complete`]
    /// comes for it. The task itself is not affected: it still runs, and its dependents
    /// still get its result; [`DriverCore::handle_release`] says whether the result is
    /// still wanted. A slot of a submission not yet given to the scheduler stays until
    /// then (call [`DriverCore::handle_release`] first to give it now).
    pub fn forget_slot(&mut self, task: TaskId) -> Option<S> {
        self.slots.remove(&task)
    }

    /// Brings a large result's bytes to the driver: asks a live holder of `chunk` (the
    /// scheduler's current holders first, else `holders`, what the client was told). While
    /// no live worker holds it (it is being recomputed) the fetch waits, at most
    /// [`DriverConfig::fetch_park_limit`]; a holder lost before it answers counts the
    /// same way. If the recomputation fails for good, the fetch fails at once with the
    /// task's error. The answer comes as one [`DriverEvent::FetchDone`] with the returned
    /// id.
    pub fn handle_fetch(
        &mut self,
        now: Duration,
        chunk: ChunkId,
        holders: Vec<WorkerId>,
    ) -> FetchId {
        let fetch = FetchId(self.next_fetch);
        self.next_fetch += 1;
        if self.shut_down {
            self.events.push_back(DriverEvent::FetchDone {
                fetch,
                result: Err(TaskError::Shutdown { task: chunk.task() }),
            });
            return fetch;
        }
        self.advance(now);
        self.submit_pending();
        self.start_fetch(ParkedFetch {
            fetch,
            chunk,
            holders,
            since: self.now,
        });
        fetch
    }

    /// Stops: every worker is told `Shutdown`, every pending slot completes with
    /// [`TaskError::Shutdown`], every fetch fails the same way. Later submissions and
    /// fetches are answered at once with that error; other inputs are ignored.
    pub fn handle_shutdown(&mut self, now: Duration) {
        if self.shut_down {
            return;
        }
        self.advance(now);
        self.process();
        self.shut_down = true;
        self.broadcast(&ToWorker::Shutdown);
        for (worker, _) in std::mem::take(&mut self.drains) {
            if let Some(l) = self.workers.get(&worker) {
                self.events.push_back(DriverEvent::Drained {
                    worker,
                    link: l.link,
                    pid: l.pid,
                    outcome: DrainOutcome::ShutDown,
                });
            }
        }
        self.held.clear();
        self.held_count = 0;
        self.held_since = None;
        let slots: Vec<_> = self.slots.drain().collect();
        for (task, slot) in slots {
            self.complete_shut_down(task, slot);
        }
        let waiting = self
            .fetches
            .drain()
            .flat_map(|(chunk, waiters)| waiters.into_iter().map(move |f| (chunk, f.fetch)));
        let parked = self.parked.drain(..).map(|p| (p.chunk, p.fetch));
        for (chunk, fetch) in waiting.chain(parked) {
            self.events.push_back(DriverEvent::FetchDone {
                fetch,
                result: Err(TaskError::Shutdown { task: chunk.task() }),
            });
        }
    }

    /// The time given by [`DriverCore::poll_timeout`] has come (calling it earlier or more
    /// often is harmless): sends held-back releases that waited long enough, declares
    /// workers silent for the heartbeat timeout lost ([`LostReason::Silent`]), and fails
    /// fetches parked for longer than the park limit.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.shut_down {
            return;
        }
        self.advance(now);
        let now = self.now;
        if self
            .held_since
            .is_some_and(|since| now >= since.saturating_add(self.config.release_delay))
        {
            self.send_all_releases();
        }
        let due: Vec<WorkerId> = self
            .drains
            .iter()
            .filter(|(_, d)| d.deadline.is_some_and(|at| at <= now))
            .map(|(&w, _)| w)
            .collect();
        for worker in due {
            self.drain_deadline(worker);
        }
        let timeout = self.config.heartbeat_timeout;
        for (worker, incarnation) in self.detector.expired(now) {
            self.lose(worker, incarnation, LostReason::Silent { timeout });
        }
        // Tasks that no processor of the pool can run fail once their grace period is over.
        if self.sched.poll_timeout().is_some_and(|at| at <= now) {
            self.sched.handle_timeout(now);
            self.dirty = true;
        }
        // Parked fetches past their limit fail at the next `process`.
    }

    // ---------------------------------------------------------------- outputs

    /// The next frame to send, if any. Call after each batch of inputs until it returns
    /// `None`. Frames for one link come out in the order they must be sent.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.process();
        self.transmits.pop_front()
    }

    /// The next thing for the shell to carry out, if any. Call after each batch of inputs
    /// until it returns `None`.
    pub fn poll_event(&mut self) -> Option<DriverEvent<S>> {
        self.process();
        self.events.pop_front()
    }

    /// When the core next needs [`DriverCore::handle_timeout`]: the earliest heartbeat
    /// deadline, held-release flush, parked-fetch limit or the scheduler's own deadline (a
    /// task waiting for a processor that may never come). `None` when nothing is due
    /// (no worker watched, nothing held, nothing parked, or shut down). O(workers + parked
    /// fetches).
    pub fn poll_timeout(&mut self) -> Option<Duration> {
        self.process();
        if self.shut_down {
            return None;
        }
        let release = self
            .held_since
            .map(|since| since.saturating_add(self.config.release_delay));
        let fetch = self
            .parked
            .iter()
            .map(|p| p.since.saturating_add(self.config.fetch_park_limit))
            .min();
        let drain = self.drains.values().filter_map(|d| d.deadline).min();
        [
            self.detector.poll_timeout(),
            release,
            fetch,
            drain,
            self.sched.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Gives pending submissions to the scheduler and moves its commands into the core's
    /// outputs, so that queries see every input so far. The `poll_*` methods do this
    /// themselves; a shell calls it only before a query.
    pub fn flush(&mut self) {
        self.process();
    }

    /// Carries out what the scheduler asked for since the last call. Releases are not
    /// urgent: they are held back and ride along with the worker's next message, or go out
    /// after the release delay or once many have gathered, so a finished task does not
    /// wake its worker again.
    fn process(&mut self) {
        if !self.dirty || self.shut_down {
            return;
        }
        self.dirty = false;
        self.submit_pending();
        while let Some(cmd) = self.sched.poll_command() {
            match cmd {
                Command::Send {
                    worker,
                    msg: ToWorker::Release(chunks),
                } => {
                    if chunks.is_empty() {
                        continue;
                    }
                    if self.held_count == 0 {
                        self.held_since = Some(self.now);
                    }
                    self.held_count += chunks.len();
                    self.held.entry(worker).or_default().extend(chunks);
                }
                Command::Send {
                    worker,
                    msg: ToWorker::Run(tasks),
                } => {
                    self.send_releases(worker);
                    self.send_run(worker, tasks);
                }
                Command::Send { worker, msg } => {
                    self.send_releases(worker);
                    self.send(worker, &msg);
                }
                Command::Complete { task, result } => {
                    if result.is_err() {
                        self.policy.forget_task(task);
                    }
                    if let Some(slot) = self.slots.remove(&task) {
                        self.events
                            .push_back(DriverEvent::Complete { task, slot, result });
                    }
                }
                Command::Event(e) => {
                    match &e {
                        ClusterEvent::TaskRetried { task, attempt } => {
                            tracing::debug!(%task, attempt, "task queued to run again")
                        }
                        ClusterEvent::WorkerDrained {
                            worker,
                            moved_chunks,
                            moved_bytes,
                        } => self.drain_over(*worker, *moved_chunks, *moved_bytes),
                        ClusterEvent::DrainFailed {
                            worker,
                            task,
                            cause,
                        } => self.drain_failed(*worker, *task, cause.clone()),
                        _ => {}
                    }
                    self.events.push_back(DriverEvent::Cluster(e));
                }
            }
        }
        // A large result's memory is wanted back now (a segment the next result could
        // reuse): its release does not wait for the batch.
        let large = self.sched.take_large_release();
        if large || self.held_count >= self.config.release_batch {
            self.send_all_releases();
        }
        self.retry_parked();
    }

    /// Gives the scheduler every submission taken since the last call, in one batch. If
    /// the merged batch is refused, each submission is tried on its own, so one bad
    /// submission fails only its own tasks (as if each had been submitted alone).
    fn submit_pending(&mut self) {
        if self.pending.is_empty() {
            self.pending_ends.clear();
            self.pending_slots.clear();
            return;
        }
        let now = self.now;
        let tasks = std::mem::take(&mut self.pending);
        let mut ends = std::mem::take(&mut self.pending_ends);
        let mut slots = std::mem::take(&mut self.pending_slots);
        if let Some(rec) = &mut self.recorder {
            for spec in &tasks {
                rec.submitted(spec);
            }
        }
        match self.sched.try_submit(now, tasks) {
            Ok(()) => self.adopt(slots.drain(..)),
            Err((error, tasks)) if ends.len() <= 1 => {
                drop(tasks);
                self.reject(slots.drain(..), &error);
            }
            Err((_, tasks)) => {
                let mut rest = tasks.into_iter();
                let mut start = 0;
                let mut taken = slots.drain(..);
                for &end in &ends {
                    let group: Vec<TaskSpec> = rest.by_ref().take(end - start).collect();
                    let group_slots = taken.by_ref().take(end - start);
                    start = end;
                    match self.sched.try_submit(now, group) {
                        Ok(()) => {
                            for (task, slot) in group_slots {
                                if let Some(slot) = slot {
                                    self.slots.insert(task, slot);
                                }
                            }
                        }
                        Err((error, _)) => {
                            for (task, slot) in group_slots {
                                if let Some(slot) = slot {
                                    self.events.push_back(DriverEvent::Complete {
                                        task,
                                        slot,
                                        result: Err(TaskError::Rejected {
                                            task,
                                            error: error.clone(),
                                        }),
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        // Keep the buffers' capacity for the next drain.
        ends.clear();
        self.pending_ends = ends;
        slots.clear();
        self.pending_slots = slots;
    }

    /// Records the slots of accepted tasks.
    fn adopt(&mut self, slots: impl Iterator<Item = (TaskId, Option<S>)>) {
        for (task, slot) in slots {
            if let Some(slot) = slot {
                self.slots.insert(task, slot);
            }
        }
    }

    /// Fails the slots of refused tasks.
    fn reject(&mut self, slots: impl Iterator<Item = (TaskId, Option<S>)>, error: &GraphError) {
        for (task, slot) in slots {
            if let Some(slot) = slot {
                self.events.push_back(DriverEvent::Complete {
                    task,
                    slot,
                    result: Err(TaskError::Rejected {
                        task,
                        error: error.clone(),
                    }),
                });
            }
        }
    }

    /// Queues `msg` for `worker`, if it is joined.
    fn send(&mut self, worker: WorkerId, msg: &ToWorker) {
        if let Some(l) = self.workers.get(&worker) {
            self.transmits.push_back(Transmit {
                link: l.link,
                worker,
                frame: wire::encode(msg),
            });
        }
    }

    /// Queues `msg` for every joined worker (encoded once).
    fn broadcast(&mut self, msg: &ToWorker) {
        if self.workers.is_empty() {
            return;
        }
        let frame = wire::encode(msg);
        for (&worker, l) in &self.workers {
            self.transmits.push_back(Transmit {
                link: l.link,
                worker,
                frame: frame.clone(),
            });
        }
    }

    /// Queues a batch of tasks, split in halves while its frame would exceed the frame
    /// limit; a single task that cannot fit is reported failed to the scheduler (which
    /// fails it with [`MoveFailure::TooLarge`]) instead of being lost.
    fn send_run(&mut self, worker: WorkerId, tasks: Vec<RunTask>) {
        let Some((link, incarnation)) = self.workers.get(&worker).map(|l| (l.link, l.incarnation))
        else {
            return;
        };
        let msg = ToWorker::Run(tasks);
        let frame = wire::encode(&msg);
        if frame.len() <= self.config.max_frame {
            self.transmits.push_back(Transmit {
                link,
                worker,
                frame,
            });
            return;
        }
        let bytes = frame.len() as u64;
        drop(frame);
        let ToWorker::Run(mut tasks) = msg else {
            return;
        };
        if tasks.len() > 1 {
            let rest = tasks.split_off(tasks.len() / 2);
            self.send_run(worker, tasks);
            self.send_run(worker, rest);
            return;
        }
        let Some(t) = tasks.pop() else {
            return;
        };
        let done = TaskDone {
            task: t.task,
            proc: t.proc,
            run_ns: 0,
            started_ns: 0,
            outcome: Outcome::Failed(TaskError::MoveFailed {
                task: t.task,
                cause: MoveFailure::TooLarge {
                    bytes,
                    limit: self.config.max_frame as u64,
                },
            }),
        };
        self.sched.task_done(self.now, worker, incarnation, done);
    }

    /// Sends the releases held back for `worker`, if any.
    fn send_releases(&mut self, worker: WorkerId) {
        if self.held_count == 0 {
            return;
        }
        if let Some(chunks) = self.held.remove(&worker) {
            self.held_count -= chunks.len();
            if self.held_count == 0 {
                self.held_since = None;
            }
            self.send(worker, &ToWorker::Release(chunks));
        }
    }

    /// Sends every release held back.
    fn send_all_releases(&mut self) {
        for (worker, chunks) in std::mem::take(&mut self.held) {
            self.send(worker, &ToWorker::Release(chunks));
        }
        self.held_count = 0;
        self.held_since = None;
    }

    /// Asks a live holder of the fetch's chunk for its bytes. The scheduler's holders are
    /// the current ones (a lost holder's chunk is recomputed elsewhere); while no live
    /// worker holds it the fetch is parked, until its park limit. If the task that
    /// produces the chunk failed (its recomputation failed for good), the fetch fails at
    /// once with that task's error.
    fn start_fetch(&mut self, mut p: ParkedFetch) {
        if let Some(err) = self.sched.failure(p.chunk.task()) {
            tracing::debug!(chunk = %p.chunk, error = %err, "the fetched result cannot be recomputed");
            self.events.push_back(DriverEvent::FetchDone {
                fetch: p.fetch,
                result: Err(err.clone()),
            });
            return;
        }
        let current = self.sched.holders(p.chunk);
        if !current.is_empty() {
            p.holders.clear();
            p.holders.extend_from_slice(current);
        }
        match p
            .holders
            .iter()
            .copied()
            .find(|w| self.workers.contains_key(w))
        {
            Some(w) => {
                self.send(w, &ToWorker::Fetch(p.chunk));
                self.fetches.entry(p.chunk).or_default().push(SentFetch {
                    worker: w,
                    fetch: p.fetch,
                    since: p.since,
                });
            }
            None if self.now.saturating_sub(p.since) < self.config.fetch_park_limit => {
                self.parked.push(p);
            }
            None => {
                tracing::debug!(chunk = %p.chunk, holders = ?p.holders, "no live worker holds the fetched result");
                self.events.push_back(DriverEvent::FetchDone {
                    fetch: p.fetch,
                    result: Err(TaskError::MoveFailed {
                        task: p.chunk.task(),
                        cause: MoveFailure::NoHolder,
                    }),
                });
            }
        }
    }

    /// Tries the parked fetches again (after inputs that may have brought a copy back, or
    /// time that may have passed their limit).
    fn retry_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        for p in std::mem::take(&mut self.parked) {
            self.start_fetch(p);
        }
    }

    /// Answers the fetches of `chunk` that asked `worker`.
    fn answer_fetches(
        &mut self,
        worker: WorkerId,
        chunk: ChunkId,
        data: Result<wire::ByteBuf, MoveFailure>,
    ) {
        let Some(waiters) = self.fetches.get_mut(&chunk) else {
            return;
        };
        let mut answered: Vec<FetchId> = Vec::new();
        waiters.retain(|f| {
            if f.worker == worker {
                answered.push(f.fetch);
                false
            } else {
                true
            }
        });
        if waiters.is_empty() {
            self.fetches.remove(&chunk);
        }
        let mut data = Some(data.map(|b| b.into_vec()));
        let last = answered.len().saturating_sub(1);
        for (k, fetch) in answered.into_iter().enumerate() {
            // The last waiter takes the bytes; the others get copies.
            let d = if k == last { data.take() } else { data.clone() };
            let Some(d) = d else { break };
            let result = d.map_err(|cause| TaskError::MoveFailed {
                task: chunk.task(),
                cause,
            });
            self.events
                .push_back(DriverEvent::FetchDone { fetch, result });
        }
    }

    // ---------------------------------------------------------------- queries

    /// The workers now joined, in id order (the driver's own worker included if it joined).
    pub fn workers(&self) -> Vec<WorkerId> {
        self.workers.keys().copied().collect()
    }

    /// The link a joined worker is on.
    pub fn link_of(&self, worker: WorkerId) -> Option<LinkId> {
        self.workers.get(&worker).map(|l| l.link)
    }

    /// The worker and incarnation a link joined as, while it is joined.
    pub fn worker_on(&self, link: LinkId) -> Option<(WorkerId, Incarnation)> {
        self.links.get(&link).copied()
    }

    /// The pool's processors and the edges between them.
    pub fn topology(&self) -> &Topology {
        self.sched.topology()
    }

    /// What the scheduler knows about one task, or `None` if it never saw it (a submission
    /// not yet given to it counts as unseen: call [`DriverCore::flush`] first).
    pub fn task_info(&self, task: TaskId) -> Option<TaskInfo> {
        self.sched.task_info(task)
    }

    /// The scheduler's counts of tasks by state.
    pub fn stats(&self) -> Stats {
        self.sched.stats()
    }

    /// The workers holding `chunk` now, as the scheduler knows them.
    pub fn holders(&self, chunk: ChunkId) -> &[WorkerId] {
        self.sched.holders(chunk)
    }

    /// Every task and move recorded so far, on this core's clock (see
    /// [`timeline`](crate::timeline) for how worker clocks are aligned); `None` when
    /// recording is off ([`DriverConfig::record`]). O(recorded tasks + moves).
    pub fn timeline(&self) -> Option<crate::Timeline> {
        self.recorder.as_ref().map(|r| r.timeline(&self.sched))
    }

    /// The spans of the recorded task reports from position `from` of their order on, and
    /// how many reports there are in all (the `from` of the next read); `None` unless
    /// recording. O(spans returned), for a reader that follows a run as it goes. Every
    /// report is there: a task that ran again (a lost worker, a retry) has a span per
    /// accepted report, the later after the earlier, where [`DriverCore::timeline`] keeps
    /// each task's last.
    pub fn timeline_tasks_since(&self, from: usize) -> Option<(Vec<crate::TaskSpan>, usize)> {
        self.recorder
            .as_ref()
            .map(|r| r.tasks_since(from, &self.sched))
    }

    /// How many joins were accepted over the driver's life.
    pub fn joined_total(&self) -> usize {
        self.joined_total
    }

    /// The scheduler, for queries this type does not forward.
    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    /// Whether [`DriverCore::handle_shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    /// The latest time given to the core.
    pub fn now(&self) -> Duration {
        self.now
    }
}

/// Emits a worker's forwarded log events under the target `dagger::worker`, at their own
/// level, with the worker and the original target as fields.
fn forward_log(worker: WorkerId, lines: &[wire::LogLine], dropped: u64) {
    for l in lines {
        let (origin, message) = (&l.target, &l.message);
        match l.level {
            1 => tracing::error!(target: "dagger::worker", %worker, %origin, "{message}"),
            2 => tracing::warn!(target: "dagger::worker", %worker, %origin, "{message}"),
            3 => tracing::info!(target: "dagger::worker", %worker, %origin, "{message}"),
            4 => tracing::debug!(target: "dagger::worker", %worker, %origin, "{message}"),
            _ => tracing::trace!(target: "dagger::worker", %worker, %origin, "{message}"),
        }
    }
    if dropped > 0 {
        tracing::warn!(target: "dagger::worker", %worker, dropped, "log events dropped by the rate limit");
    }
}
