//! The worker core: the decisions of a worker, as a state machine without I/O.
//!
//! A worker holds chunks, runs tasks once their inputs are here, and serves and fetches
//! chunks to and from its peers directly. [`WorkerState`] makes every decision of that:
//! the chunk store (chunks ready, and chunks coming with who waits for them: local tasks,
//! peers, the driver), the want/serve protocol between workers (asking a holder that
//! answers "not here yet" again with growing pauses, then the next holder; a "gone" answer
//! is final; wants out to a peer that leaves are asked of the next holder or failed),
//! heartbeats, the batching of finished tasks into `Done` messages, releases, replicas,
//! and whether a chunk moves to a peer through shared memory or over the link.
//!
//! # Driving it
//!
//! The shell (the facade's worker, or a simulated cluster) feeds events through the
//! `handle_*` methods, each with the current time as a [`Duration`] since any fixed
//! origin, then drains [`WorkerState::poll_transmit`] (encoded frames for the driver or a
//! peer link) and [`WorkerState::poll_action`] (things only the shell can do: run a task,
//! open a link, use shared memory), and calls [`WorkerState::handle_timeout`] once the
//! time [`WorkerState::poll_timeout`] names has come. Every frame is encoded with
//! `dagger_core::wire`, so a simulation exercises the real encoder.
//!
//! The core never reads the clock, never blocks and never touches a socket or a thread.
//! Each `handle_*` call costs time proportional to what it touches (a task's inputs, the
//! waiters of a chunk), except [`WorkerState::handle_driver_msg`] for `PeerLeft` and
//! [`WorkerState::handle_link_closed`], which scan the chunks still coming.
//!
//! What it does not guarantee: frames for a link that closed are the shell's to drop; the
//! core does not retry a frame the shell could not send, it reacts to the link closing.
//!
//! # Concurrency
//!
//! `WorkerState` is plain data (`Send` when the bytes type is). A shell with several
//! event sources (processor threads finishing tasks, link readers, a timer) keeps it
//! under one mutex: lock, call `handle_*`, drain the outputs into a local buffer, unlock,
//! then perform the I/O.

mod config;
mod io;

use io::Body;

pub use config::WorkerConfig;
pub use io::{
    Action, ChunkData, Dest, LinkKey, PeerRefused, Route, ShmWrite, StartTask, Tail, Transmit,
};

use dagger_core::hash::IdHashMap;
use dagger_core::wire::{
    self, ByteBuf, ChunkPayload, Hello, MoveDone, Outcome, PeerInfo, PeerMsg, RunArg, RunPart,
    RunTask, TaskDone, ToDriver, ToWorker, PROTOCOL_VERSION,
};
use dagger_core::{ChunkId, Incarnation, MoveFailure, ProcId, TaskError, TaskId, WorkerId};
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

/// A chunk at least this long is sent as a frame head followed by the bytes as the store
/// holds them ([`Transmit::into_parts`]); a shorter one is copied into its frame.
const TAIL_MIN_BYTES: usize = 64 << 10;

/// Who waits for a chunk that is not here yet.
#[derive(Clone, Copy, Debug)]
enum Waiter {
    /// Argument `index` of a task waiting to start.
    Task(TaskId, u32),
    /// A peer asked for it on this link.
    Peer(LinkKey, WorkerId),
    /// The driver fetches it.
    Driver,
    /// The driver asked for a copy to be kept here ([`ToWorker::Replicate`]).
    Replica,
}

/// One chunk in the store.
enum Entry<B> {
    /// Its bytes are here.
    Ready(B),
    /// It is coming: produced here by a task, or asked of `holders` (first one asked).
    Waiting {
        waiters: Vec<Waiter>,
        holders: Vec<WorkerId>,
        /// How many times the current holder answered "not here (yet)".
        attempts: u32,
    },
}

/// A task waiting for some of its inputs.
struct Pending<B> {
    func: Cow<'static, str>,
    proc: ProcId,
    inline_limit: u32,
    /// Its inputs, gathered parts flattened in place.
    args: Vec<Option<B>>,
    /// How `args` folds back into the function's arguments, when it has a gathered one.
    shape: Option<Shape>,
    missing: usize,
    /// The chunks it waits for (those of its missing arguments when it came).
    wanted: Vec<ChunkId>,
    /// The driver watches it: report `Started` before it runs.
    watch: bool,
    /// It may run on any thread processor of this worker.
    any_thread: bool,
    /// Nothing waits for its report (`RunTask::quiet`).
    quiet: bool,
    /// Which dispatch of it this is.
    attempt: u32,
}

/// A task handed to the shell to run.
struct Running {
    proc: ProcId,
    inline_limit: u32,
    /// Nothing waits for its report: it may wait for the next batch.
    quiet: bool,
}

/// A frame waiting for a link being opened, with the chunk it asks for, if it is a want.
struct Queued {
    frame: Body,
    want: Option<ChunkId>,
}

/// This worker's own link to a peer.
enum OutLink {
    Idle,
    Connecting(Vec<Queued>),
    Up(LinkKey),
}

struct Peer {
    info: PeerInfo,
    link: OutLink,
}

/// What the core knows of a link that is up.
#[derive(Clone, Copy)]
struct LinkInfo {
    peer: WorkerId,
    /// Opened by this worker (else by the peer).
    outbound: bool,
}

/// The worker core. See the [module documentation](self) for how to drive it.
///
/// `B` is the shell's handle to a chunk's bytes ([`ChunkData`]).
pub struct WorkerState<B> {
    config: WorkerConfig,
    id: WorkerId,
    incarnation: Incarnation,
    joined: bool,
    store: IdHashMap<ChunkId, Entry<B>>,
    pending: IdHashMap<TaskId, Pending<B>>,
    running: IdHashMap<TaskId, Running>,
    peers: IdHashMap<WorkerId, Peer>,
    links: IdHashMap<LinkKey, LinkInfo>,
    /// The time of the latest event.
    now: Duration,
    heartbeat: Duration,
    next_heartbeat: Option<Duration>,
    done: Vec<TaskDone>,
    /// Chunks received from peers since the last `Done` batch, reported with it.
    moves: Vec<MoveDone>,
    /// When each chunk asked of a peer was first asked for, until it arrives or fails.
    asked: IdHashMap<ChunkId, Duration>,
    /// Chunks read from shared memory by the shell: who sent them.
    reading: IdHashMap<ChunkId, WorkerId>,
    done_due: Option<Duration>,
    /// Wants to ask again: (when, sequence number, chunk, of whom).
    retries: BinaryHeap<Reverse<(Duration, u64, ChunkId, WorkerId)>>,
    retry_seq: u64,
    /// Chunks whose producing task failed here, each with the sequence number it was
    /// remembered under (at most [`WorkerConfig::failed_chunks_kept`]).
    failed: IdHashMap<ChunkId, u64>,
    /// The same chunks, oldest first; an entry whose number no longer matches `failed` was
    /// forgotten or remembered again since.
    failed_order: VecDeque<(u64, ChunkId)>,
    failed_seq: u64,
    /// Chunks whose producing task failed here and whose waiters are still to be told
    /// (a task failed for want of one fails its own chunk in turn: a chain of tasks
    /// waiting here is failed in a loop, not in a recursion as deep as the chain).
    cascade: Vec<ChunkId>,
    /// A loop over `cascade` is under way.
    cascading: bool,
    transmits: VecDeque<Transmit>,
    actions: VecDeque<Action<B>>,
}

impl<B: ChunkData> WorkerState<B> {
    /// A worker that has not joined yet: it knows its id, incarnation and peers once
    /// [`WorkerState::handle_welcome`] (or a `Welcome` through
    /// [`WorkerState::handle_driver_msg`]) tells it.
    pub fn new(config: WorkerConfig) -> Self {
        Self {
            config,
            id: WorkerId(0),
            incarnation: Incarnation(0),
            joined: false,
            store: IdHashMap::default(),
            pending: IdHashMap::default(),
            running: IdHashMap::default(),
            peers: IdHashMap::default(),
            links: IdHashMap::default(),
            now: Duration::ZERO,
            heartbeat: Duration::from_secs(1),
            next_heartbeat: None,
            done: Vec::new(),
            moves: Vec::new(),
            asked: IdHashMap::default(),
            reading: IdHashMap::default(),
            done_due: None,
            retries: BinaryHeap::new(),
            retry_seq: 0,
            failed: IdHashMap::default(),
            failed_order: VecDeque::new(),
            failed_seq: 0,
            cascade: Vec::new(),
            cascading: false,
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// This worker's id (`WorkerId(0)` until it joined).
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// This worker's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// Whether the driver welcomed this worker.
    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// The heartbeat interval in force.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// Whether `chunk`'s bytes are kept here.
    pub fn holds(&self, chunk: ChunkId) -> bool {
        matches!(self.store.get(&chunk), Some(Entry::Ready(_)))
    }

    /// Whether `chunk` is coming here (produced by a task here, or asked of a peer).
    pub fn is_coming(&self, chunk: ChunkId) -> bool {
        matches!(self.store.get(&chunk), Some(Entry::Waiting { .. }))
    }

    /// How many tasks wait for inputs.
    pub fn waiting_tasks(&self) -> usize {
        self.pending.len()
    }

    /// How many tasks were handed to the shell to run and are not reported finished.
    pub fn running_tasks(&self) -> usize {
        self.running.len()
    }

    /// How many finished tasks wait to be sent to the driver.
    pub fn unsent_done(&self) -> usize {
        self.done.len()
    }

    /// The peers this worker knows of.
    pub fn peers(&self) -> impl Iterator<Item = &PeerInfo> + '_ {
        self.peers.values().map(|p| &p.info)
    }

    // ---- outputs -------------------------------------------------------------------

    /// The next frame to send, if any. Call until `None` after every `handle_*` call.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing for the shell to do, if any. Call until `None` after every
    /// `handle_*` call.
    pub fn poll_action(&mut self) -> Option<Action<B>> {
        self.actions.pop_front()
    }

    /// When [`WorkerState::handle_timeout`] must next be called (a heartbeat, a batch of
    /// finished tasks or a repeated want is due), or `None` when nothing is timed. May be
    /// at or before the current time (then call it at once). Costs O(1).
    pub fn poll_timeout(&self) -> Option<Duration> {
        let retry = self.retries.peek().map(|Reverse((at, ..))| *at);
        [self.next_heartbeat, self.done_due, retry]
            .into_iter()
            .flatten()
            .min()
    }

    // ---- inputs --------------------------------------------------------------------

    /// The driver's welcome: this worker's id, incarnation and peers, and the heartbeat
    /// interval the driver wants (unless [`WorkerConfig::heartbeat`] overrides it). The
    /// first heartbeat is due one interval later. A second welcome is ignored.
    pub fn handle_welcome(
        &mut self,
        now: Duration,
        worker: WorkerId,
        incarnation: Incarnation,
        peers: Vec<PeerInfo>,
        heartbeat: Duration,
    ) {
        self.now = self.now.max(now);
        if self.joined {
            tracing::debug!("a second welcome from the driver, ignored");
            return;
        }
        self.joined = true;
        self.id = worker;
        self.incarnation = incarnation;
        self.heartbeat = self
            .config
            .heartbeat
            .unwrap_or(heartbeat)
            .max(Duration::from_millis(1));
        // The interval comes from the driver: an absurd one means no heartbeat, not an
        // overflow.
        self.next_heartbeat = Some(now.saturating_add(self.heartbeat));
        for p in peers {
            if p.worker != worker {
                self.peers.insert(
                    p.worker,
                    Peer {
                        info: p,
                        link: OutLink::Idle,
                    },
                );
            }
        }
    }

    /// A message from the driver.
    pub fn handle_driver_msg(&mut self, now: Duration, msg: ToWorker) {
        self.now = self.now.max(now);
        match msg {
            ToWorker::Welcome {
                worker,
                incarnation,
                peers,
                heartbeat,
                // The shell reads the log filter (the core does not log for the driver).
                log_filter: _,
            } => self.handle_welcome(now, worker, incarnation, peers, heartbeat),
            ToWorker::Run(tasks) => {
                for t in tasks {
                    self.accept_task(t);
                }
            }
            ToWorker::Release(chunks) => {
                for c in chunks {
                    // A chunk still coming has waiters that must be answered.
                    if let Some(Entry::Ready(_)) = self.store.get(&c) {
                        self.store.remove(&c);
                    }
                    self.failed.remove(&c);
                }
            }
            ToWorker::Fetch(chunk) => self.want(chunk, Waiter::Driver),
            ToWorker::Replicate { chunk, from } => self.replicate(chunk, from),
            ToWorker::PeerJoined(p) => {
                if p.worker == self.id {
                    return;
                }
                let w = p.worker;
                let old = self.peers.insert(
                    w,
                    Peer {
                        info: p,
                        link: OutLink::Idle,
                    },
                );
                // A new incarnation replaces the old one: its link is stale.
                if let Some(Peer {
                    link: OutLink::Up(key),
                    ..
                }) = old
                {
                    self.links.remove(&key);
                    self.actions.push_back(Action::CloseLink(key));
                }
            }
            ToWorker::PeerLeft(w) => {
                if let Some(Peer {
                    link: OutLink::Up(key),
                    ..
                }) = self.peers.remove(&w)
                {
                    self.links.remove(&key);
                    self.actions.push_back(Action::CloseLink(key));
                }
                self.actions.push_back(Action::ForgetPeer(w));
                self.peer_gone(now, w);
            }
            ToWorker::Shutdown => self.actions.push_back(Action::Shutdown),
        }
    }

    /// One task of a `Run` batch: the same as [`WorkerState::handle_driver_msg`] with a
    /// batch of one, so a shell may feed a large batch a few tasks at a time (and start
    /// the first ones before the last are read).
    pub fn handle_run(&mut self, now: Duration, task: RunTask) {
        self.now = self.now.max(now);
        self.accept_task(task);
    }

    /// A peer opened a link to this worker and said hello on it. On success the link's
    /// messages may be passed to [`WorkerState::handle_peer_msg`] and the peer's id is
    /// returned; on error the shell closes the link.
    pub fn handle_inbound_link(
        &mut self,
        now: Duration,
        link: LinkKey,
        hello: &Hello,
    ) -> Result<WorkerId, PeerRefused> {
        self.now = self.now.max(now);
        if hello.version != PROTOCOL_VERSION {
            return Err(PeerRefused::Version {
                ours: PROTOCOL_VERSION,
                theirs: hello.version,
            });
        }
        if hello.registry_hash != self.config.registry_hash {
            return Err(PeerRefused::Registry {
                ours: self.config.registry_hash,
                theirs: hello.registry_hash,
            });
        }
        let known = hello.build_id != 0 && self.config.build_id != 0;
        if known
            && hello.build_id != self.config.build_id
            && !hello.allow_mixed_builds
            && !self.config.allow_mixed_builds
        {
            return Err(PeerRefused::Build {
                ours: self.config.build_id,
                theirs: hello.build_id,
            });
        }
        if self.links.contains_key(&link) {
            return Err(PeerRefused::DuplicateLink { link });
        }
        self.links.insert(
            link,
            LinkInfo {
                peer: hello.worker,
                outbound: false,
            },
        );
        Ok(hello.worker)
    }

    /// The link this worker opened to `peer` (after [`Action::Connect`]) is up, under
    /// `link`. The core sends this worker's hello on it first, then what was queued.
    pub fn handle_link_up(&mut self, now: Duration, peer: WorkerId, link: LinkKey) {
        self.now = self.now.max(now);
        let hello = Hello {
            version: PROTOCOL_VERSION,
            registry_hash: self.config.registry_hash,
            worker: self.id,
            incarnation: self.incarnation,
            build_id: self.config.build_id,
            allow_mixed_builds: self.config.allow_mixed_builds,
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            // The peer left while the link was being opened.
            self.actions.push_back(Action::CloseLink(link));
            return;
        };
        let queued = match std::mem::replace(&mut p.link, OutLink::Up(link)) {
            OutLink::Connecting(q) => q,
            OutLink::Idle => Vec::new(),
            OutLink::Up(old) => {
                // Two links for one peer: keep the new one.
                self.links.remove(&old);
                self.actions.push_back(Action::CloseLink(old));
                Vec::new()
            }
        };
        self.links.insert(
            link,
            LinkInfo {
                peer,
                outbound: true,
            },
        );
        self.send(Dest::Link(link), wire::encode(&hello), None);
        for q in queued {
            self.send(Dest::Link(link), q.frame, None);
        }
    }

    /// Opening a link to `peer` failed: the wants queued for it fail with
    /// [`MoveFailure::Unreachable`] (the scheduler re-runs those tasks).
    pub fn handle_connect_failed(&mut self, now: Duration, peer: WorkerId, detail: String) {
        self.now = self.now.max(now);
        let queued = match self.peers.get_mut(&peer) {
            Some(p) => match std::mem::replace(&mut p.link, OutLink::Idle) {
                OutLink::Connecting(q) => q,
                other => {
                    p.link = other;
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let cause = MoveFailure::Unreachable {
            worker: peer,
            detail,
        };
        for q in queued {
            if let Some(chunk) = q.want {
                self.fail_chunk(chunk, cause.clone());
            }
        }
    }

    /// A peer link closed (either direction; for an unknown key, nothing happens). When
    /// it was this worker's own link to a peer still in the cluster, the wants out on it
    /// are sent again over a new link; when the peer left, they are asked of the next
    /// holder or fail.
    pub fn handle_link_closed(&mut self, now: Duration, link: LinkKey) {
        self.now = self.now.max(now);
        let Some(info) = self.links.remove(&link) else {
            return;
        };
        if !info.outbound {
            return;
        }
        match self.peers.get_mut(&info.peer) {
            Some(p) => {
                if matches!(p.link, OutLink::Up(k) if k == link) {
                    p.link = OutLink::Idle;
                }
                self.ask_again(info.peer);
            }
            None => self.peer_gone(now, info.peer),
        }
    }

    /// A message from a peer on `link` (a link up or accepted). Messages on an unknown
    /// link are ignored.
    pub fn handle_peer_msg(&mut self, now: Duration, link: LinkKey, msg: PeerMsg) {
        self.now = self.now.max(now);
        let Some(info) = self.links.get(&link).copied() else {
            tracing::debug!(%link, "a message on an unknown link, ignored");
            return;
        };
        let peer = info.peer;
        match msg {
            PeerMsg::Want(chunk) => self.want(chunk, Waiter::Peer(link, peer)),
            PeerMsg::Chunk { chunk, payload } => self.receive(now, peer, chunk, payload, false),
            PeerMsg::Push { chunk, payload } => self.receive(now, peer, chunk, payload, true),
            PeerMsg::SegmentDone(name) => self
                .actions
                .push_back(Action::SegmentReturned { peer, name }),
        }
    }

    /// A chunk's bytes arrived (inline in a frame the shell kept, or mapped from shared
    /// memory after [`Action::ReadShm`]), or could not be read. A push is kept until
    /// released; the answer to a want is only handed to the tasks waiting for it (the
    /// scheduler does not count it as a copy, so it would never be released).
    pub fn handle_chunk_received(
        &mut self,
        now: Duration,
        chunk: ChunkId,
        push: bool,
        bytes: Result<B, MoveFailure>,
    ) {
        self.now = self.now.max(now);
        if let Some(from) = self.reading.remove(&chunk) {
            if let Ok(b) = &bytes {
                self.record_move(chunk, from, b.as_ref().len() as u64, true);
            }
        }
        match bytes {
            Ok(b) if push => self.deliver(chunk, b),
            Ok(b) => self.deliver_lent(chunk, b),
            Err(cause) => self.fail_chunk(chunk, cause),
        }
    }

    /// This worker is done with a shared-memory segment `peer` lent it: tell the peer.
    pub fn handle_segment_released(&mut self, now: Duration, peer: WorkerId, name: String) {
        self.now = self.now.max(now);
        self.send_to_peer(peer, wire::encode(&PeerMsg::SegmentDone(name)), None);
    }

    /// The shell wrote (or failed to write) a chunk into shared memory after
    /// [`Action::WriteShm`]; `payload` is the `ChunkPayload::Shm` or `ChunkPayload::Segment`
    /// that names it. On failure the chunk goes inline over the link.
    pub fn handle_shm_written(
        &mut self,
        now: Duration,
        write: ShmWrite<B>,
        payload: Result<ChunkPayload, String>,
    ) {
        self.now = self.now.max(now);
        let ShmWrite {
            peer,
            route,
            chunk,
            push,
            bytes,
        } = write;
        let frame = match payload {
            Ok(payload) => wire::encode(&if push {
                PeerMsg::Push { chunk, payload }
            } else {
                PeerMsg::Chunk { chunk, payload }
            }),
            Err(detail) => {
                tracing::warn!(%chunk, %peer, %detail, "shared-memory move failed; sending over the link");
                wire::encode_chunk_bytes(push, chunk, bytes.as_ref())
            }
        };
        self.route(route, frame, (!push).then_some(chunk));
    }

    /// A frame carrying `chunk` (see [`Transmit::chunk`]) was refused by its link as too
    /// large: the requester is told the chunk will not come.
    pub fn handle_send_too_large(
        &mut self,
        now: Duration,
        to: Dest,
        chunk: ChunkId,
        len: u64,
        limit: u64,
    ) {
        self.now = self.now.max(now);
        let cause = MoveFailure::TooLarge { bytes: len, limit };
        match to {
            Dest::Driver => {
                let msg = ToDriver::ChunkData {
                    incarnation: self.incarnation,
                    chunk,
                    data: Err(cause),
                };
                self.send_driver(msg, None);
            }
            Dest::Link(link) => {
                let payload = ChunkPayload::Gone(cause);
                self.send(
                    Dest::Link(link),
                    wire::encode(&PeerMsg::Chunk { chunk, payload }),
                    None,
                );
            }
        }
    }

    /// A task's function finished (or could not run: an unknown function, a panic, a
    /// processor that dropped it) after [`Action::Start`], having run for `run`. Its
    /// result is kept as the task's chunk, handed to whoever waits for it, and reported to
    /// the driver in the next `Done` batch (inline when small). Reports of tasks not
    /// started by this core are ignored.
    pub fn handle_task_finished(
        &mut self,
        now: Duration,
        task: TaskId,
        run: Duration,
        result: Result<B, TaskError>,
    ) {
        self.handle_task_finished_on(now, task, None, run, result);
    }

    /// [`handle_task_finished`](Self::handle_task_finished) for a task that ran on `proc`,
    /// when the shell chose another thread processor than the one it was dispatched to
    /// ([`StartTask::any_thread`]); the driver is told where it ran.
    pub fn handle_task_finished_on(
        &mut self,
        now: Duration,
        task: TaskId,
        proc: Option<ProcId>,
        run: Duration,
        result: Result<B, TaskError>,
    ) {
        self.now = self.now.max(now);
        let Some(mut r) = self.running.remove(&task) else {
            tracing::debug!(%task, "a finished task that was not running, ignored");
            return;
        };
        if let Some(p) = proc {
            r.proc = p;
        }
        let run_ns = u64::try_from(run.as_nanos()).unwrap_or(u64::MAX);
        let outcome = match result {
            Ok(bytes) => {
                if let Some(size) = bytes.device_len() {
                    // A device-resident result stays where it is until someone asks.
                    self.deliver(task.chunk(), bytes);
                    let started_ns = nanos(now).saturating_sub(run_ns);
                    self.report(TaskDone {
                        task,
                        proc: r.proc,
                        run_ns,
                        started_ns,
                        outcome: Outcome::Stored { size },
                    });
                    return;
                }
                let b = bytes.as_ref();
                let outcome = if b.len() <= r.inline_limit as usize {
                    Outcome::Value(b.to_vec())
                } else {
                    Outcome::Stored {
                        size: b.len() as u64,
                    }
                };
                self.deliver(task.chunk(), bytes);
                outcome
            }
            Err(err) => {
                tracing::debug!(%task, error = %err, "task failed");
                self.fail_own_chunk(task.chunk());
                Outcome::Failed(err)
            }
        };
        let started_ns = nanos(now).saturating_sub(run_ns);
        // A failure is never quiet: the driver decides what follows from it.
        let delay = if r.quiet && !matches!(outcome, Outcome::Failed(_)) {
            self.config.quiet_delay
        } else {
            self.config.done_delay
        };
        self.report_within(
            TaskDone {
                task,
                proc: r.proc,
                run_ns,
                started_ns,
                outcome,
            },
            delay,
        );
    }

    /// The time [`WorkerState::poll_timeout`] named has come: sends the heartbeat and the
    /// batch of finished tasks if due, and asks again the wants whose pause is over.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.now = self.now.max(now);
        if let Some(at) = self.next_heartbeat {
            if at <= now {
                let msg = ToDriver::Heartbeat {
                    incarnation: self.incarnation,
                };
                self.send_driver(msg, None);
                // After a stall, one heartbeat, not one per missed interval.
                let next = at.saturating_add(self.heartbeat);
                self.next_heartbeat = Some(if next <= now {
                    now.saturating_add(self.heartbeat)
                } else {
                    next
                });
            }
        }
        if self.done_due.is_some_and(|at| at <= now) {
            self.flush_done();
        }
        while let Some(Reverse((at, _, chunk, holder))) = self.retries.peek().copied() {
            if at > now {
                break;
            }
            self.retries.pop();
            // Only if the chunk is still coming and still asked of that holder.
            let current = match self.store.get(&chunk) {
                Some(Entry::Waiting { holders, .. }) => holders.first().copied(),
                _ => None,
            };
            if current == Some(holder) {
                self.send_want(holder, chunk);
            }
        }
    }

    // ---- internals -------------------------------------------------------------------

    fn send(&mut self, to: Dest, frame: impl Into<Body>, chunk: Option<ChunkId>) {
        self.transmits.push_back(Transmit {
            to,
            chunk,
            body: frame.into(),
        });
    }

    /// Queues a message to the driver, encoded when the shell takes it.
    fn send_driver(&mut self, msg: ToDriver, chunk: Option<ChunkId>) {
        self.transmits.push_back(Transmit {
            to: Dest::Driver,
            chunk,
            body: Body::Driver(msg),
        });
    }

    /// Registers a task: resolves its inputs (inline, here, or wanted from a peer) and
    /// starts it at once when all are here.
    fn accept_task(&mut self, t: RunTask) {
        let RunTask {
            task,
            func,
            args,
            proc,
            any_thread,
            quiet,
            inline_limit,
            push_to: _,
            watch,
            attempt,
        } = t;
        // Our own result will be produced here (again, if an earlier run failed): peers
        // asking for it wait.
        self.failed.remove(&task.chunk());
        self.store
            .entry(task.chunk())
            .or_insert_with(|| Entry::Waiting {
                waiters: Vec::new(),
                holders: Vec::new(),
                attempts: 0,
            });
        let mut missing = 0usize;
        let mut wanted: Vec<ChunkId> = Vec::new();
        let mut wants: Vec<(ChunkId, Option<WorkerId>)> = Vec::new();
        let (parts, shape) = flatten(args);
        let mut values: Vec<Option<B>> = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            match part {
                RunPart::Value(v) => values.push(Some(B::from(v))),
                RunPart::Chunk { chunk, from } => match self.store.get_mut(&chunk) {
                    Some(Entry::Ready(b)) => values.push(Some(b.clone())),
                    Some(Entry::Waiting {
                        waiters, holders, ..
                    }) => {
                        waiters.push(Waiter::Task(task, i as u32));
                        // The scheduler's view may be newer (a recomputed copy).
                        for f in from {
                            if f != self.id && !holders.contains(&f) {
                                holders.push(f);
                            }
                        }
                        missing += 1;
                        wanted.push(chunk);
                        values.push(None);
                    }
                    None => {
                        let holders: Vec<WorkerId> =
                            from.into_iter().filter(|w| *w != self.id).collect();
                        wants.push((chunk, holders.first().copied()));
                        self.store.insert(
                            chunk,
                            Entry::Waiting {
                                waiters: vec![Waiter::Task(task, i as u32)],
                                holders,
                                attempts: 0,
                            },
                        );
                        missing += 1;
                        wanted.push(chunk);
                        values.push(None);
                    }
                },
            }
        }
        if missing == 0 {
            let args = assemble(values.into_iter().flatten().collect(), shape.as_ref());
            self.start(
                task,
                func,
                proc,
                inline_limit,
                args,
                (watch, any_thread, quiet, attempt),
            );
            return;
        }
        self.pending.insert(
            task,
            Pending {
                func,
                proc,
                inline_limit,
                args: values,
                shape,
                missing,
                wanted,
                watch,
                any_thread,
                quiet,
                attempt,
            },
        );
        for (chunk, holder) in wants {
            match holder {
                Some(h) => self.send_want(h, chunk),
                None => self.fail_chunk(chunk, MoveFailure::NoHolder),
            }
        }
    }

    fn start(
        &mut self,
        task: TaskId,
        func: Cow<'static, str>,
        proc: ProcId,
        inline_limit: u32,
        args: Vec<B>,
        (watch, any_thread, quiet, attempt): (bool, bool, bool, u32),
    ) {
        if watch {
            self.report_started(task);
        }
        self.running.insert(
            task,
            Running {
                proc,
                inline_limit,
                quiet,
            },
        );
        self.actions.push_back(Action::Start(StartTask {
            task,
            func,
            proc,
            any_thread,
            args,
            attempt,
        }));
    }

    /// Tells the driver at once that watched `task` starts (a suspected poison task: if
    /// this process dies now, the driver blames it). Tasks starting together share one
    /// `Started` message when nothing else was queued between them.
    fn report_started(&mut self, task: TaskId) {
        if let Some(Transmit {
            to: Dest::Driver,
            body: Body::Driver(ToDriver::Started { tasks, .. }),
            ..
        }) = self.transmits.back_mut()
        {
            tasks.push(task);
            return;
        }
        let msg = ToDriver::Started {
            incarnation: self.incarnation,
            tasks: vec![task],
        };
        self.send_driver(msg, None);
    }

    /// Someone wants a chunk: answered now if it is here, when it arrives if it is coming,
    /// "gone" if its producing task failed here (and is remembered), "not held" otherwise.
    fn want(&mut self, chunk: ChunkId, waiter: Waiter) {
        match self.store.get_mut(&chunk) {
            Some(Entry::Ready(b)) => {
                let b = b.clone();
                self.answer(chunk, waiter, Ok(b));
            }
            Some(Entry::Waiting { waiters, .. }) => waiters.push(waiter),
            None if self.failed.contains_key(&chunk) => {
                self.answer_gone(chunk, waiter, MoveFailure::SourceFailed);
            }
            None => {
                let cause = MoveFailure::NotHeld { worker: self.id };
                self.answer(chunk, waiter, Err(cause));
            }
        }
    }

    fn answer(&mut self, chunk: ChunkId, waiter: Waiter, data: Result<B, MoveFailure>) {
        match waiter {
            Waiter::Task(task, index) => match data {
                Ok(b) => self.fill_arg(task, index, b),
                Err(cause) => self.fail_task(task, TaskError::MoveFailed { task, cause }),
            },
            Waiter::Peer(link, peer) => {
                if !self.links.contains_key(&link) {
                    // The link closed: the peer asks again on a new one.
                    return;
                }
                match data {
                    Ok(b) => self.send_chunk(peer, Route::Link(link), chunk, b, false),
                    Err(m) => {
                        let payload = ChunkPayload::Missing(m.to_string());
                        let frame = wire::encode(&PeerMsg::Chunk { chunk, payload });
                        self.send(Dest::Link(link), frame, None);
                    }
                }
            }
            Waiter::Replica => match data {
                Ok(b) => {
                    // A chunk handed over lent (not kept by `deliver_lent`) is kept here.
                    if !matches!(self.store.get(&chunk), Some(Entry::Ready(_))) {
                        self.store.insert(chunk, Entry::Ready(b));
                    }
                    self.replicated(chunk, Ok(()));
                }
                Err(cause) => self.replicated(chunk, Err(cause)),
            },
            Waiter::Driver => {
                let msg = ToDriver::ChunkData {
                    incarnation: self.incarnation,
                    chunk,
                    data: data.map(|b| ByteBuf::from(b.as_ref().to_vec())),
                };
                let carries = msg_carries_bytes(&msg).then_some(chunk);
                self.send_driver(msg, carries);
            }
        }
    }

    /// Sends a chunk's bytes to `peer`: through shared memory for a large chunk and a
    /// peer on this host (when enabled), else inline, copied once straight into the frame.
    fn send_chunk(&mut self, peer: WorkerId, route: Route, chunk: ChunkId, bytes: B, push: bool) {
        if self.config.shm
            && bytes.as_ref().len() >= self.config.shm_min_bytes
            && self.same_host(peer)
        {
            self.actions.push_back(Action::WriteShm(ShmWrite {
                peer,
                route,
                chunk,
                push,
                bytes,
            }));
            return;
        }
        let len = bytes.as_ref().len();
        let frame = if len >= TAIL_MIN_BYTES {
            // The bytes follow the head as the store holds them (no copy into the frame).
            Body::Parts(wire::encode_chunk_head(push, chunk, len), Tail::new(bytes))
        } else {
            Body::Encoded(wire::encode_chunk_bytes(push, chunk, bytes.as_ref()))
        };
        self.route(route, frame, (!push).then_some(chunk));
    }

    fn route(&mut self, route: Route, frame: impl Into<Body>, answers: Option<ChunkId>) {
        let frame = frame.into();
        match route {
            Route::Link(link) => {
                if self.links.contains_key(&link) {
                    self.send(Dest::Link(link), frame, answers);
                }
            }
            Route::Peer(peer) => self.send_to_peer(peer, frame, None),
        }
    }

    fn same_host(&self, peer: WorkerId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| p.info.host == self.config.host)
    }

    fn fill_arg(&mut self, task: TaskId, index: u32, bytes: B) {
        let Some(p) = self.pending.get_mut(&task) else {
            // The task failed meanwhile.
            return;
        };
        let Some(slot) = p.args.get_mut(index as usize) else {
            return;
        };
        if slot.is_none() {
            p.missing -= 1;
        }
        *slot = Some(bytes);
        if p.missing == 0 {
            if let Some(p) = self.pending.remove(&task) {
                let args = assemble(p.args.into_iter().flatten().collect(), p.shape.as_ref());
                self.start(
                    task,
                    p.func,
                    p.proc,
                    p.inline_limit,
                    args,
                    (p.watch, p.any_thread, p.quiet, p.attempt),
                );
            }
        }
    }

    /// A task that waited for inputs cannot run: its result will not exist here.
    fn fail_task(&mut self, task: TaskId, err: TaskError) {
        let Some(p) = self.pending.remove(&task) else {
            return;
        };
        tracing::debug!(%task, error = %err, "task failed");
        self.withdraw_wants(task, &p.wanted);
        self.fail_own_chunk(task.chunk());
        self.report(TaskDone {
            task,
            proc: p.proc,
            run_ns: 0,
            started_ns: nanos(self.now),
            outcome: Outcome::Failed(err),
        });
    }

    /// Task `task`, which waited for `chunks`, no longer needs them: it leaves their waiters,
    /// and a chunk asked of a peer that no one here waits for any more is no longer asked
    /// for (an answer that comes later is dropped). A chunk produced here stays coming.
    fn withdraw_wants(&mut self, task: TaskId, chunks: &[ChunkId]) {
        for &chunk in chunks {
            let Some(Entry::Waiting { waiters, .. }) = self.store.get_mut(&chunk) else {
                continue;
            };
            waiters.retain(|w| !matches!(w, Waiter::Task(t, _) if *t == task));
            let producer = chunk.task();
            if waiters.is_empty()
                && !self.pending.contains_key(&producer)
                && !self.running.contains_key(&producer)
            {
                self.store.remove(&chunk);
                self.asked.remove(&chunk);
            }
        }
    }

    /// Adds a finished task to the batch for the driver: the batch goes out when it is
    /// full, else at the first timeout `done_delay` after its first task.
    fn report(&mut self, done: TaskDone) {
        self.report_within(done, self.config.done_delay);
    }

    /// Queues a report for the next `Done` batch, which goes out at most `delay` from now
    /// (sooner if another report makes it due sooner).
    fn report_within(&mut self, done: TaskDone, delay: Duration) {
        self.done.push(done);
        let due = self.now + delay;
        if self.done.len() >= self.config.done_batch_max {
            self.flush_done();
        } else if self.done_due.is_none_or(|d| d > due) {
            self.done_due = Some(due);
        }
    }

    fn flush_done(&mut self) {
        self.done_due = None;
        if self.done.is_empty() && self.moves.is_empty() {
            return;
        }
        let msg = ToDriver::Done {
            incarnation: self.incarnation,
            tasks: std::mem::take(&mut self.done),
            moves: std::mem::take(&mut self.moves),
            sent_ns: nanos(self.now),
        };
        self.send_driver(msg, None);
    }

    /// Notes a chunk received from `from` (for the driver's timeline), reported with the
    /// next `Done` batch, which goes out at most `done_delay` from now.
    fn record_move(&mut self, chunk: ChunkId, from: WorkerId, bytes: u64, shared_memory: bool) {
        let finished_ns = nanos(self.now);
        let started_ns = self.asked.remove(&chunk).map_or(finished_ns, nanos);
        tracing::debug!(
            target: "dagger::move",
            %chunk,
            %from,
            to = %self.id,
            bytes,
            path = if shared_memory { "shm" } else { "network" },
            took_us = finished_ns.saturating_sub(started_ns) / 1000,
            "chunk moved"
        );
        self.moves.push(MoveDone {
            chunk,
            from,
            bytes,
            shared_memory,
            started_ns,
            finished_ns,
        });
        if self.done_due.is_none() {
            self.done_due = Some(self.now + self.config.done_delay);
        }
    }

    /// A chunk's bytes are here: keep them and answer everyone waiting.
    fn deliver(&mut self, chunk: ChunkId, bytes: B) {
        if !self.failed.is_empty() {
            self.failed.remove(&chunk);
        }
        if let Some(Entry::Waiting { waiters, .. }) =
            self.store.insert(chunk, Entry::Ready(bytes.clone()))
        {
            self.answer_all(chunk, waiters, &bytes);
        }
    }

    /// Hands bytes to everyone waiting for `chunk` without keeping them (a later task here
    /// that needs the chunk asks its holder again).
    fn deliver_lent(&mut self, chunk: ChunkId, bytes: B) {
        if let Some(Entry::Waiting { .. }) = self.store.get(&chunk) {
            if let Some(Entry::Waiting { waiters, .. }) = self.store.remove(&chunk) {
                self.answer_all(chunk, waiters, &bytes);
            }
        }
    }

    fn answer_all(&mut self, chunk: ChunkId, waiters: Vec<Waiter>, bytes: &B) {
        for w in waiters {
            self.answer(chunk, w, Ok(bytes.clone()));
        }
    }

    /// A chunk will not come: everyone waiting for it is told (peers with a final "gone",
    /// so they do not ask again).
    fn fail_chunk(&mut self, chunk: ChunkId, cause: MoveFailure) {
        self.asked.remove(&chunk);
        if !matches!(self.store.get(&chunk), Some(Entry::Waiting { .. })) {
            return;
        }
        let Some(Entry::Waiting { waiters, .. }) = self.store.remove(&chunk) else {
            return;
        };
        for w in waiters {
            self.answer_gone(chunk, w, cause.clone());
        }
    }

    /// Tells one waiter that `chunk` will not come (a peer with a final "gone").
    fn answer_gone(&mut self, chunk: ChunkId, waiter: Waiter, cause: MoveFailure) {
        match waiter {
            Waiter::Peer(link, _) => {
                if self.links.contains_key(&link) {
                    let payload = ChunkPayload::Gone(cause);
                    let frame = wire::encode(&PeerMsg::Chunk { chunk, payload });
                    self.send(Dest::Link(link), frame, None);
                }
            }
            w => self.answer(chunk, w, Err(cause)),
        }
    }

    /// The task producing `chunk` here failed: everyone waiting for it is told, and it is
    /// remembered so that later askers are told too (until it is released, produced again,
    /// or pushed out by newer failures).
    fn fail_own_chunk(&mut self, chunk: ChunkId) {
        self.cascade.push(chunk);
        if self.cascading {
            return;
        }
        self.cascading = true;
        while let Some(c) = self.cascade.pop() {
            self.fail_chunk(c, MoveFailure::SourceFailed);
            self.remember_failed(c);
        }
        self.cascading = false;
    }

    /// Remembers that the task producing `chunk` here failed, so that a later `Want` of it
    /// is answered "gone" (at most [`WorkerConfig::failed_chunks_kept`] such chunks).
    fn remember_failed(&mut self, chunk: ChunkId) {
        let keep = self.config.failed_chunks_kept;
        if keep == 0 {
            return;
        }
        self.failed_seq += 1;
        let seq = self.failed_seq;
        self.failed.insert(chunk, seq);
        self.failed_order.push_back((seq, chunk));
        while self.failed.len() > keep {
            let Some((s, c)) = self.failed_order.pop_front() else {
                break;
            };
            if self.failed.get(&c) == Some(&s) {
                self.failed.remove(&c);
            }
        }
        // Entries forgotten early (released, produced again) stay in the order until they
        // reach its front: drop them once they are half of it (amortised O(1)).
        if self.failed_order.len() > 2 * keep {
            let failed = &self.failed;
            self.failed_order.retain(|(s, c)| failed.get(c) == Some(s));
        }
    }

    fn receive(
        &mut self,
        now: Duration,
        peer: WorkerId,
        chunk: ChunkId,
        payload: ChunkPayload,
        push: bool,
    ) {
        match payload {
            ChunkPayload::Bytes(v) => {
                self.record_move(chunk, peer, v.len() as u64, false);
                self.handle_chunk_received(now, chunk, push, Ok(B::from(v)))
            }
            payload @ ChunkPayload::Shm { .. } => {
                self.reading.insert(chunk, peer);
                self.actions.push_back(Action::ReadShm {
                    from: peer,
                    chunk,
                    push,
                    payload,
                })
            }
            // A lent segment only feeds the tasks waiting here, so it goes back when they
            // are done.
            payload @ ChunkPayload::Segment { .. } => {
                self.reading.insert(chunk, peer);
                self.actions.push_back(Action::ReadShm {
                    from: peer,
                    chunk,
                    push: false,
                    payload,
                })
            }
            ChunkPayload::Missing(reason) => self.retry_want(now, chunk, peer, &reason),
            ChunkPayload::Gone(cause) => self.fail_chunk(chunk, cause),
        }
    }

    /// `from` does not hold the chunk (yet): its producing task may not have reached it.
    /// Ask again with growing pauses, then the next holder, then give up.
    fn retry_want(&mut self, now: Duration, chunk: ChunkId, from: WorkerId, reason: &str) {
        let limit = self.config.want_attempts;
        let next = match self.store.get_mut(&chunk) {
            Some(Entry::Waiting {
                holders, attempts, ..
            }) => {
                *attempts += 1;
                if *attempts > limit {
                    holders.retain(|h| *h != from);
                    *attempts = 0;
                }
                holders.first().copied().map(|h| (h, *attempts))
            }
            _ => return,
        };
        match next {
            // A new holder is asked at once; the same one after a pause.
            Some((h, 0)) => self.send_want(h, chunk),
            Some((h, attempts)) => {
                let at = now + self.config.want_pause(attempts);
                self.retry_seq += 1;
                self.retries.push(Reverse((at, self.retry_seq, chunk, h)));
            }
            None => {
                tracing::debug!(%chunk, %reason, "no holder had the input in time");
                self.fail_chunk(chunk, MoveFailure::NotHeld { worker: from });
            }
        }
    }

    /// A peer left the cluster: every input asked of it is asked of the next holder, or
    /// fails (the scheduler then re-runs the task elsewhere).
    fn peer_gone(&mut self, _now: Duration, gone: WorkerId) {
        let mut retry = Vec::new();
        let mut failed = Vec::new();
        for (chunk, e) in self.store.iter_mut() {
            if let Entry::Waiting {
                holders, attempts, ..
            } = e
            {
                if holders.first() == Some(&gone) {
                    holders.retain(|h| *h != gone);
                    *attempts = 0;
                    match holders.first() {
                        Some(&h) => retry.push((*chunk, h)),
                        None => failed.push(*chunk),
                    }
                } else {
                    holders.retain(|h| *h != gone);
                }
            }
        }
        for (chunk, h) in retry {
            self.send_want(h, chunk);
        }
        for chunk in failed {
            self.fail_chunk(chunk, MoveFailure::PeerLeft { worker: gone });
        }
    }

    /// Sends again every want whose current holder is `peer` (its link closed).
    fn ask_again(&mut self, peer: WorkerId) {
        let chunks: Vec<ChunkId> = self
            .store
            .iter()
            .filter_map(|(c, e)| match e {
                Entry::Waiting { holders, .. } if holders.first() == Some(&peer) => Some(*c),
                _ => None,
            })
            .collect();
        for c in chunks {
            self.send_want(peer, c);
        }
    }

    fn send_want(&mut self, peer: WorkerId, chunk: ChunkId) {
        self.asked.entry(chunk).or_insert(self.now);
        self.send_to_peer(peer, wire::encode(&PeerMsg::Want(chunk)), Some(chunk));
    }

    /// Sends a frame on this worker's own link to `peer`, opening it first if needed.
    fn send_to_peer(&mut self, peer: WorkerId, frame: impl Into<Body>, want: Option<ChunkId>) {
        let frame = frame.into();
        let Some(p) = self.peers.get_mut(&peer) else {
            if let Some(chunk) = want {
                self.fail_chunk(chunk, MoveFailure::PeerLeft { worker: peer });
            }
            return;
        };
        match &mut p.link {
            OutLink::Up(link) => {
                let link = *link;
                self.send(Dest::Link(link), frame, None);
            }
            OutLink::Connecting(q) => q.push(Queued { frame, want }),
            OutLink::Idle => {
                p.link = OutLink::Connecting(vec![Queued { frame, want }]);
                let addr = p.info.addr.clone();
                self.actions.push_back(Action::Connect { peer, addr });
            }
        }
    }

    /// Pushes a chunk held here to another worker (a replica it keeps) and tells the
    /// driver the copy exists.
    /// Keeps a copy of `chunk` here, asked of `from` in order, and tells the driver once
    /// it is stored (or why it cannot be).
    fn replicate(&mut self, chunk: ChunkId, from: Vec<WorkerId>) {
        match self.store.get_mut(&chunk) {
            Some(Entry::Ready(_)) => self.replicated(chunk, Ok(())),
            Some(Entry::Waiting {
                waiters, holders, ..
            }) => {
                waiters.push(Waiter::Replica);
                for f in from {
                    if f != self.id && !holders.contains(&f) {
                        holders.push(f);
                    }
                }
            }
            None => {
                let holders: Vec<WorkerId> = from.into_iter().filter(|w| *w != self.id).collect();
                let first = holders.first().copied();
                self.store.insert(
                    chunk,
                    Entry::Waiting {
                        waiters: vec![Waiter::Replica],
                        holders,
                        attempts: 0,
                    },
                );
                match first {
                    Some(h) => self.send_want(h, chunk),
                    None => self.fail_chunk(chunk, MoveFailure::NoHolder),
                }
            }
        }
    }

    /// Tells the driver how a replica asked for with [`ToWorker::Replicate`] ended.
    fn replicated(&mut self, chunk: ChunkId, result: Result<(), MoveFailure>) {
        let msg = ToDriver::Replicated {
            incarnation: self.incarnation,
            chunk,
            result,
        };
        self.send_driver(msg, None);
    }
}

/// A time on the core's clock in nanoseconds (saturating after 584 years).
fn nanos(t: Duration) -> u64 {
    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
}

fn msg_carries_bytes(msg: &ToDriver) -> bool {
    matches!(msg, ToDriver::ChunkData { data: Ok(_), .. })
}

impl<B> std::fmt::Debug for WorkerState<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerState")
            .field("id", &self.id)
            .field("incarnation", &self.incarnation)
            .field("chunks", &self.store.len())
            .field("waiting_tasks", &self.pending.len())
            .field("running_tasks", &self.running.len())
            .field("peers", &self.peers.len())
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

/// How a task's flattened inputs fold back into its arguments: per argument, `None` for
/// a plain one (one input), `Some(n)` for a gathered one (the next `n` inputs).
type Shape = Vec<Option<usize>>;

/// A task's arguments as one flat list of inputs to resolve, and their shape when one is
/// gathered (`None` otherwise: the common case allocates nothing more).
fn flatten(args: Vec<RunArg>) -> (Vec<RunPart>, Option<Shape>) {
    let mut parts = Vec::with_capacity(args.len());
    let mut shape: Option<Shape> = None;
    let n = args.len();
    for (k, a) in args.into_iter().enumerate() {
        let gathered = match a {
            RunArg::Value(v) => {
                parts.push(RunPart::Value(v));
                None
            }
            RunArg::Chunk { chunk, from } => {
                parts.push(RunPart::Chunk { chunk, from });
                None
            }
            RunArg::Gather(ps) => {
                let len = ps.len();
                parts.extend(ps);
                Some(len)
            }
        };
        match (&mut shape, gathered) {
            (Some(s), g) => s.push(g),
            (None, Some(g)) => {
                let mut s = Vec::with_capacity(n);
                s.resize(k, None);
                s.push(Some(g));
                shape = Some(s);
            }
            (None, None) => {}
        }
    }
    (parts, shape)
}

/// Folds a task's resolved inputs back into its arguments: a gathered one becomes the
/// bytes postcard encodes a `Vec<T>` as, its length then each part's encoded `T` in order.
fn assemble<B: ChunkData>(inputs: Vec<B>, shape: Option<&Shape>) -> Vec<B> {
    let Some(shape) = shape else {
        return inputs;
    };
    let mut inputs = inputs.into_iter();
    let mut args = Vec::with_capacity(shape.len());
    for s in shape {
        match *s {
            None => args.extend(inputs.next()),
            Some(n) => {
                let parts: Vec<B> = inputs.by_ref().take(n).collect();
                let mut bytes = wire::encode(&(parts.len() as u64));
                bytes.reserve(parts.iter().map(|p| p.as_ref().len()).sum());
                for p in &parts {
                    bytes.extend_from_slice(p.as_ref());
                }
                args.push(B::from(bytes));
            }
        }
    }
    args
}
