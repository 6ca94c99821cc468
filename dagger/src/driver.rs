//! The driver loop: owns the scheduler and the links to the workers. It feeds the
//! scheduler events (submissions, joins, finished tasks, losses, `now`) and carries out
//! the commands it returns. It is the only place where the scheduler meets I/O.

use crate::context::ClusterEvent;
use crate::handle::Slot;
use crate::registry;
use dagger_core::hash::IdHashMap;
use dagger_core::wire::{
    self, Hello, Outcome, PeerInfo, RunTask, TaskDone, ToDriver, ToWorker, PROTOCOL_VERSION,
};
use dagger_core::{
    ChunkId, ExitCause, Incarnation, LostReason, MoveFailure, TaskError, TaskId, TaskSpec,
    WorkerId, WorkerInfo,
};
use dagger_ft::FailureDetector;
use dagger_net::{Conn, FrameSender, Listener};
use dagger_sched::{Command, Scheduler};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Where the bytes of a chunk fetched for the user go.
type FetchReply = oneshot::Sender<Result<Vec<u8>, TaskError>>;

/// What the user's threads ask of the driver loop.
pub(crate) enum DriverCmd {
    /// New tasks, with the slots their results go to; accepted or refused together.
    Submit(Vec<(TaskSpec, Option<Arc<Slot>>)>),
    /// One new task (the common case: no batch to allocate).
    Spawn(TaskSpec, Arc<Slot>),
    /// The last handle to a task was dropped.
    Release(TaskId),
    /// Bring a large result's bytes to the driver.
    FetchChunk {
        chunk: ChunkId,
        holders: Vec<WorkerId>,
        reply: oneshot::Sender<Result<Vec<u8>, TaskError>>,
    },
    /// Run a closure on the driver's state (queries: topology, task info, workers).
    Query(Box<dyn FnOnce(&mut DriverState) + Send>),
    /// Stop: tell the workers to exit, fail what is pending.
    Shutdown(std::sync::mpsc::Sender<()>),
}

/// What the links report to the driver loop.
pub(crate) enum LinkEvent {
    /// A process passed the handshake and wants to join.
    Joined {
        conn: Conn,
        info: WorkerInfo,
        in_process: bool,
    },
    /// A message from a joined worker.
    Msg {
        worker: WorkerId,
        incarnation: Incarnation,
        msg: ToDriver,
    },
    /// A worker's link closed or sent garbage.
    Closed {
        worker: WorkerId,
        incarnation: Incarnation,
        reason: LostReason,
    },
    /// A local worker process exited (seen by its parent at once; a killed process's
    /// QUIC link would only be noticed by missed heartbeats).
    ProcessExited { pid: u32, exit: ExitCause },
}

struct WorkerLink {
    incarnation: Incarnation,
    pid: u32,
    sender: FrameSender,
    peer: PeerInfo,
}

pub(crate) struct DriverConfig {
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) shm: bool,
}

/// The driver loop's state. Only the loop touches it (queries run inside the loop).
pub(crate) struct DriverState {
    pub(crate) sched: Scheduler,
    start: Instant,
    slots: IdHashMap<TaskId, Arc<Slot>>,
    /// Submissions taken from the command queue and not yet given to the scheduler: the
    /// submissions of one drain go to it in one call.
    pending: Vec<TaskSpec>,
    /// Where each submission (one `Spawn`, or one `Submit` batch) in `pending` ends.
    pending_ends: Vec<usize>,
    links: HashMap<WorkerId, WorkerLink>,
    next_worker: u32,
    next_incarnation: u32,
    fetches: HashMap<ChunkId, Vec<(WorkerId, FetchReply)>>,
    subscribers: Vec<mpsc::UnboundedSender<ClusterEvent>>,
    detector: FailureDetector,
    ev_tx: mpsc::UnboundedSender<LinkEvent>,
    config: DriverConfig,
    pub(crate) joined_total: usize,
    /// Releases held back per worker (see `flush`), and how many in all.
    pending_release: HashMap<WorkerId, Vec<ChunkId>>,
    pending_release_count: usize,
    /// Fetches waiting for a lost result to be recomputed.
    parked_fetches: Vec<(ChunkId, Vec<WorkerId>, FetchReply, Duration)>,
}

/// How long a fetch waits for a lost result to be recomputed before it fails.
const FETCH_PARK_LIMIT: Duration = Duration::from_secs(60);

/// The largest frame the links carry (the transports' default limit).
const MAX_FRAME: usize = 1 << 30;

/// Held-back releases are sent once this many have gathered.
const RELEASE_BATCH: usize = 1024;

/// How often the driver loop checks heartbeats and sends held-back releases.
const TICK: Duration = Duration::from_millis(20);

impl DriverState {
    pub(crate) fn new(
        sched: Scheduler,
        ev_tx: mpsc::UnboundedSender<LinkEvent>,
        config: DriverConfig,
    ) -> Self {
        Self {
            sched,
            start: Instant::now(),
            slots: IdHashMap::default(),
            pending: Vec::new(),
            pending_ends: Vec::new(),
            links: HashMap::new(),
            next_worker: 1,
            next_incarnation: 1,
            fetches: HashMap::new(),
            subscribers: Vec::new(),
            detector: FailureDetector::new(config.heartbeat_timeout),
            ev_tx,
            config,
            joined_total: 0,
            pending_release: HashMap::new(),
            pending_release_count: 0,
            parked_fetches: Vec::new(),
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Workers currently joined.
    pub(crate) fn workers(&self) -> Vec<WorkerId> {
        let mut v: Vec<_> = self.links.keys().copied().collect();
        v.sort();
        v
    }

    /// Puts the driver's own process in the topology as a root without thread processors,
    /// so the tree shows it and move costs from the driver (inline values) are known.
    pub(crate) fn add_driver_root(&mut self) {
        let host = dagger_proc::hostname();
        let pid = std::process::id();
        let root = dagger_core::ProcInfo {
            id: dagger_core::ProcId::root(WorkerId::DRIVER),
            kind: dagger_core::ProcKind::OS,
            parent: None,
            memory: dagger_core::MemorySpace::HOST,
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
            peer_addr: None,
            procs: vec![root],
        };
        let now = self.now();
        self.sched.worker_joined(now, info);
    }

    pub(crate) fn subscribe(&mut self, tx: mpsc::UnboundedSender<ClusterEvent>) {
        self.subscribers.push(tx);
    }

    /// Gives the scheduler every submission taken since the last call, in one batch. If the
    /// merged batch is refused, each submission is tried on its own, so one bad submission
    /// fails only its own tasks (as if each had been submitted alone).
    fn submit_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let now = self.now();
        let tasks = std::mem::take(&mut self.pending);
        let ends = std::mem::take(&mut self.pending_ends);
        let tasks = match self.sched.try_submit(now, tasks) {
            Ok(()) => return,
            Err((error, tasks)) if ends.len() <= 1 => {
                self.reject(&tasks, &error);
                return;
            }
            Err((_, tasks)) => tasks,
        };
        let mut rest = tasks.into_iter();
        let mut start = 0;
        for end in ends {
            let group: Vec<TaskSpec> = rest.by_ref().take(end - start).collect();
            start = end;
            if let Err((error, group)) = self.sched.try_submit(now, group) {
                self.reject(&group, &error);
            }
        }
    }

    /// Fails the slots of refused tasks.
    fn reject(&mut self, tasks: &[TaskSpec], error: &dagger_core::GraphError) {
        for t in tasks {
            if let Some(slot) = self.slots.remove(&t.id) {
                slot.complete(Err(TaskError::Rejected {
                    task: t.id,
                    error: error.clone(),
                }));
            }
        }
    }

    fn on_cmd(&mut self, cmd: DriverCmd) -> Option<std::sync::mpsc::Sender<()>> {
        match cmd {
            DriverCmd::Spawn(spec, slot) => {
                self.slots.insert(spec.id, slot);
                self.pending.push(spec);
                self.pending_ends.push(self.pending.len());
                return None;
            }
            DriverCmd::Submit(tasks) => {
                for (spec, slot) in tasks {
                    if let Some(slot) = slot {
                        self.slots.insert(spec.id, slot);
                    }
                    self.pending.push(spec);
                }
                self.pending_ends.push(self.pending.len());
                return None;
            }
            _ => {}
        }
        // Everything else sees the submissions made before it.
        self.submit_pending();
        match cmd {
            DriverCmd::Spawn(..) | DriverCmd::Submit(_) => {}
            DriverCmd::Release(task) => self.sched.release(task),
            DriverCmd::FetchChunk {
                chunk,
                holders,
                reply,
            } => {
                let now = self.now();
                self.start_fetch(chunk, holders, reply, now);
            }
            DriverCmd::Query(f) => f(self),
            DriverCmd::Shutdown(ack) => return Some(ack),
        }
        None
    }

    /// Asks a live holder of `chunk` for its bytes. The scheduler's holders are the current
    /// ones (a lost holder's chunk is recomputed elsewhere); while no live worker holds it
    /// (it is being recomputed) the fetch waits, for at most `FETCH_PARK_LIMIT`.
    fn start_fetch(
        &mut self,
        chunk: ChunkId,
        fallback: Vec<WorkerId>,
        reply: FetchReply,
        since: Duration,
    ) {
        let current = self.sched.holders(chunk);
        let holders = if current.is_empty() {
            fallback
        } else {
            current.to_vec()
        };
        match holders.iter().copied().find(|w| self.links.contains_key(w)) {
            Some(w) => {
                let msg = wire::encode(&ToWorker::Fetch(chunk));
                if self.links[&w].sender.send(msg).is_ok() {
                    self.fetches.entry(chunk).or_default().push((w, reply));
                } else {
                    let _ = reply.send(Err(TaskError::MoveFailed {
                        task: chunk.task(),
                        cause: MoveFailure::PeerLeft { worker: w },
                    }));
                }
            }
            None if self.now().saturating_sub(since) < FETCH_PARK_LIMIT => {
                self.parked_fetches.push((chunk, holders, reply, since));
            }
            None => {
                tracing::debug!(%chunk, ?holders, "no live worker holds the fetched result");
                let _ = reply.send(Err(TaskError::MoveFailed {
                    task: chunk.task(),
                    cause: MoveFailure::NoHolder,
                }));
            }
        }
    }

    /// Tries the parked fetches again (after events that may have brought a copy back).
    fn retry_parked_fetches(&mut self) {
        if self.parked_fetches.is_empty() {
            return;
        }
        for (chunk, holders, reply, since) in std::mem::take(&mut self.parked_fetches) {
            self.start_fetch(chunk, holders, reply, since);
        }
    }

    fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Joined {
                conn,
                info,
                in_process,
            } => self.on_join(conn, info, in_process),
            LinkEvent::Msg {
                worker,
                incarnation,
                msg,
            } => self.on_msg(worker, incarnation, msg),
            LinkEvent::Closed {
                worker,
                incarnation,
                reason,
            } => self.on_lost(worker, incarnation, reason),
            LinkEvent::ProcessExited { pid, exit } => {
                let found = self
                    .links
                    .iter()
                    .find(|(w, l)| l.pid == pid && !w.is_driver())
                    .map(|(w, l)| (*w, l.incarnation));
                if let Some((worker, incarnation)) = found {
                    self.on_lost(worker, incarnation, LostReason::ProcessExited { pid, exit });
                }
            }
        }
    }

    fn on_join(&mut self, conn: Conn, mut info: WorkerInfo, in_process: bool) {
        let worker = if in_process {
            WorkerId::DRIVER
        } else {
            let w = WorkerId(self.next_worker);
            self.next_worker += 1;
            w
        };
        let incarnation = Incarnation(self.next_incarnation);
        self.next_incarnation += 1;
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
        let peers: Vec<PeerInfo> = self.links.values().map(|l| l.peer.clone()).collect();
        let welcome = ToWorker::Welcome {
            worker,
            incarnation,
            peers,
            heartbeat: self.config.heartbeat_timeout / 4,
        };
        if conn.sender.send(wire::encode(&welcome)).is_err() {
            return;
        }
        let joined = wire::encode(&ToWorker::PeerJoined(peer.clone()));
        for l in self.links.values() {
            let _ = l.sender.send(joined.clone());
        }
        let Conn {
            sender, receiver, ..
        } = conn;
        self.links.insert(
            worker,
            WorkerLink {
                incarnation,
                pid: info.pid,
                sender: sender.clone(),
                peer,
            },
        );
        spawn_reader(worker, incarnation, sender, receiver, self.ev_tx.clone());
        let now = self.now();
        self.detector.heard(worker, incarnation, now);
        self.sched.worker_joined(now, info);
        if self.config.shm {
            dagger_move::shm::add_same_host_shortcuts(self.sched.topology_mut());
        }
        self.joined_total += 1;
    }

    fn on_msg(&mut self, worker: WorkerId, incarnation: Incarnation, msg: ToDriver) {
        let now = self.now();
        match self.links.get(&worker) {
            Some(l) if l.incarnation == incarnation => {}
            // A message from a connection already declared lost: fenced.
            _ => return,
        }
        self.detector.heard(worker, incarnation, now);
        match msg {
            ToDriver::Done { incarnation, tasks } => {
                for done in tasks {
                    self.sched.task_done(now, worker, incarnation, done);
                }
            }
            ToDriver::ChunkData { chunk, data, .. } => {
                if let Some(waiters) = self.fetches.get_mut(&chunk) {
                    let mut rest = Vec::new();
                    for (w, reply) in waiters.drain(..) {
                        if w == worker {
                            let r = data.clone().map(|b| b.into_vec()).map_err(|cause| {
                                TaskError::MoveFailed {
                                    task: chunk.task(),
                                    cause,
                                }
                            });
                            let _ = reply.send(r);
                        } else {
                            rest.push((w, reply));
                        }
                    }
                    if rest.is_empty() {
                        self.fetches.remove(&chunk);
                    } else {
                        self.fetches.insert(chunk, rest);
                    }
                }
            }
            ToDriver::Replicated {
                incarnation,
                chunk,
                to,
            } => {
                self.sched.chunk_replicated(worker, incarnation, chunk, to);
            }
            ToDriver::Heartbeat { .. } => {}
            ToDriver::Join(_) => {
                // A second join on a live link is a protocol error.
                let detail = "sent a second join".to_string();
                self.on_lost(
                    worker,
                    incarnation,
                    LostReason::ProtocolViolation { detail },
                );
            }
        }
    }

    fn on_lost(&mut self, worker: WorkerId, incarnation: Incarnation, reason: LostReason) {
        match self.links.get(&worker) {
            Some(l) if l.incarnation == incarnation => {}
            _ => return,
        }
        if let Some(l) = self.links.remove(&worker) {
            l.sender.close(&reason.to_string());
        }
        self.detector.forget(worker);
        if let Some(chunks) = self.pending_release.remove(&worker) {
            self.pending_release_count -= chunks.len();
        }
        let now = self.now();
        tracing::warn!(%worker, %reason, "worker lost");
        self.sched.worker_lost(now, worker, reason.clone());
        let left = wire::encode(&ToWorker::PeerLeft(worker));
        for l in self.links.values() {
            let _ = l.sender.send(left.clone());
        }
        // Fetches waiting on it fail; the caller may fetch again from another holder.
        self.fetches.retain(|chunk, waiters| {
            let (lost, keep): (Vec<_>, Vec<_>) = waiters.drain(..).partition(|(w, _)| *w == worker);
            for (_, reply) in lost {
                let _ = reply.send(Err(TaskError::MoveFailed {
                    task: chunk.task(),
                    cause: MoveFailure::PeerLeft { worker },
                }));
            }
            *waiters = keep;
            !waiters.is_empty()
        });
    }

    fn on_tick(&mut self) {
        self.send_all_releases();
        let now = self.now();
        for (worker, incarnation) in self.detector.expired(now) {
            let timeout = self.config.heartbeat_timeout;
            self.on_lost(worker, incarnation, LostReason::Silent { timeout });
        }
    }

    /// Sends a batch of tasks, split in halves while its frame would exceed the transport's
    /// limit; a single task that cannot fit is reported failed to the scheduler (which
    /// retries it, then fails it with a typed error) instead of being lost.
    fn send_run(&mut self, worker: WorkerId, tasks: Vec<RunTask>) {
        let msg = ToWorker::Run(tasks);
        let frame = wire::encode(&msg);
        if frame.len() <= MAX_FRAME {
            if let Some(l) = self.links.get(&worker) {
                let _ = l.sender.send(frame);
            }
            return;
        }
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
        let (Some(t), Some(incarnation)) =
            (tasks.pop(), self.links.get(&worker).map(|l| l.incarnation))
        else {
            return;
        };
        let now = self.now();
        let bytes = wire::encode(&ToWorker::Run(vec![t.clone()])).len() as u64;
        let done = TaskDone {
            task: t.task,
            proc: t.proc,
            run_ns: 0,
            outcome: Outcome::Failed(TaskError::MoveFailed {
                task: t.task,
                cause: MoveFailure::TooLarge {
                    bytes,
                    limit: MAX_FRAME as u64,
                },
            }),
        };
        self.sched.task_done(now, worker, incarnation, done);
    }

    /// Sends the releases held back for `worker`, if any.
    fn send_releases(&mut self, worker: WorkerId) {
        if let Some(chunks) = self.pending_release.remove(&worker) {
            self.pending_release_count -= chunks.len();
            if let Some(l) = self.links.get(&worker) {
                let _ = l.sender.send(wire::encode(&ToWorker::Release(chunks)));
            }
        }
    }

    /// Sends every release held back.
    fn send_all_releases(&mut self) {
        let workers: Vec<WorkerId> = self.pending_release.keys().copied().collect();
        for w in workers {
            self.send_releases(w);
        }
    }

    /// Carries out everything the scheduler asked for. Releases are not urgent: they are
    /// held back and ride along with the worker's next message, or go out on the next tick
    /// or once many have gathered, so a finished task does not wake its worker again.
    fn flush(&mut self) {
        self.submit_pending();
        while let Some(cmd) = self.sched.poll_command() {
            match cmd {
                Command::Send {
                    worker,
                    msg: ToWorker::Release(chunks),
                } => {
                    self.pending_release_count += chunks.len();
                    self.pending_release
                        .entry(worker)
                        .or_default()
                        .extend(chunks);
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
                    if let Some(l) = self.links.get(&worker) {
                        let _ = l.sender.send(wire::encode(&msg));
                    }
                }
                Command::Complete { task, result } => {
                    if let Some(slot) = self.slots.remove(&task) {
                        slot.complete(result);
                    }
                }
                Command::Event(e) => {
                    self.subscribers.retain(|s| s.send(e.clone()).is_ok());
                }
            }
        }
        if self.pending_release_count >= RELEASE_BATCH {
            self.send_all_releases();
        }
        self.retry_parked_fetches();
    }

    fn shutdown(&mut self) {
        let bye = wire::encode(&ToWorker::Shutdown);
        for l in self.links.values() {
            let _ = l.sender.send(bye.clone());
        }
        for (task, slot) in self.slots.drain() {
            slot.complete(Err(TaskError::Shutdown { task }));
        }
        for (chunk, waiters) in self.fetches.drain() {
            for (_, reply) in waiters {
                let _ = reply.send(Err(TaskError::Shutdown { task: chunk.task() }));
            }
        }
        for (chunk, _, reply, _) in self.parked_fetches.drain(..) {
            let _ = reply.send(Err(TaskError::Shutdown { task: chunk.task() }));
        }
    }

    /// Fails what a command arriving after shutdown asked for, so no caller waits forever.
    fn refuse(&mut self, cmd: DriverCmd) {
        match cmd {
            DriverCmd::Spawn(spec, slot) => {
                slot.complete(Err(TaskError::Shutdown { task: spec.id }))
            }
            DriverCmd::Submit(tasks) => {
                for (spec, slot) in tasks {
                    if let Some(slot) = slot {
                        slot.complete(Err(TaskError::Shutdown { task: spec.id }));
                    }
                }
            }
            DriverCmd::FetchChunk { chunk, reply, .. } => {
                let _ = reply.send(Err(TaskError::Shutdown { task: chunk.task() }));
            }
            DriverCmd::Shutdown(ack) => {
                let _ = ack.send(());
            }
            DriverCmd::Release(_) | DriverCmd::Query(_) => {}
        }
    }
}

/// Whatever way the loop ends (shutdown, or the runtime dropped under it), every handle
/// still waiting gets an answer.
impl Drop for DriverState {
    fn drop(&mut self) {
        for (task, slot) in self.slots.drain() {
            slot.complete(Err(TaskError::Shutdown { task }));
        }
    }
}

fn spawn_reader(
    worker: WorkerId,
    incarnation: Incarnation,
    sender: FrameSender,
    mut receiver: dagger_net::FrameReceiver,
    ev_tx: mpsc::UnboundedSender<LinkEvent>,
) {
    tokio::spawn(async move {
        let reason = loop {
            match receiver.recv().await {
                Ok(frame) => match wire::decode::<ToDriver>(&frame) {
                    Ok(msg) => {
                        if ev_tx
                            .send(LinkEvent::Msg {
                                worker,
                                incarnation,
                                msg,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        sender.close("malformed frame");
                        break LostReason::MalformedFrame {
                            detail: e.to_string(),
                        };
                    }
                },
                Err(e) => {
                    break LostReason::LinkClosed {
                        detail: e.to_string(),
                    }
                }
            }
        };
        let _ = ev_tx.send(LinkEvent::Closed {
            worker,
            incarnation,
            reason,
        });
    });
}

/// Accepts links on `listener`, runs the join handshake and hands joined processes to the
/// driver loop. Handshake failures are logged and the link closed; the loop goes on.
pub(crate) fn spawn_acceptor(
    mut listener: Box<dyn Listener>,
    ev_tx: mpsc::UnboundedSender<LinkEvent>,
    in_process: bool,
    allow_mixed_builds: bool,
) {
    tokio::spawn(async move {
        loop {
            let conn = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "listener stopped");
                    return;
                }
            };
            let ev_tx = ev_tx.clone();
            tokio::spawn(async move {
                match handshake(conn, allow_mixed_builds).await {
                    Ok((conn, info)) => {
                        let _ = ev_tx.send(LinkEvent::Joined {
                            conn,
                            info,
                            in_process,
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "a process failed to join"),
                }
            });
        }
    });
}

async fn handshake(mut conn: Conn, allow_mixed_builds: bool) -> Result<(Conn, WorkerInfo), String> {
    let limit = Duration::from_secs(30);
    let first = tokio::time::timeout(limit, conn.receiver.recv())
        .await
        .map_err(|_| "no hello in time".to_string())?
        .map_err(|e| e.to_string())?;
    let hello: Hello = wire::decode(&first).map_err(|e| e.to_string())?;
    if hello.version != PROTOCOL_VERSION {
        conn.sender.close("protocol version mismatch");
        return Err(format!(
            "protocol version {} (ours {PROTOCOL_VERSION})",
            hello.version
        ));
    }
    let ours = dagger_net::launch::build_id();
    if hello.build_id != ours
        && hello.build_id != 0
        && ours != 0
        && !allow_mixed_builds
        && !hello.allow_mixed_builds
    {
        let why = format!(
            "build mismatch: the worker's executable is another build than the driver's \
             (build id {:016x}, driver {ours:016x}); to mix builds on purpose set \
             ContextBuilder::allow_mixed_builds on the driver or {}=1 on the worker",
            hello.build_id,
            dagger_net::launch::ENV_ALLOW_MIXED_BUILDS
        );
        conn.sender.close(&why);
        return Err(why);
    }
    if hello.registry_hash != registry::registry_hash() {
        conn.sender
            .close("task registry mismatch: not the same binary");
        return Err("its task functions differ from the driver's (another binary?)".into());
    }
    let second = tokio::time::timeout(limit, conn.receiver.recv())
        .await
        .map_err(|_| "no join in time".to_string())?
        .map_err(|e| e.to_string())?;
    match wire::decode::<ToDriver>(&second).map_err(|e| e.to_string())? {
        ToDriver::Join(info) => Ok((conn, info)),
        other => {
            conn.sender.close("expected a join");
            Err(format!("expected a join, got {other:?}"))
        }
    }
}

/// Runs the driver loop until shutdown.
pub(crate) async fn run(
    mut st: DriverState,
    mut cmd_rx: mpsc::UnboundedReceiver<DriverCmd>,
    mut ev_rx: mpsc::UnboundedReceiver<LinkEvent>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ack = loop {
        let mut stop = None;
        tokio::select! {
            biased;
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { break None };
                st.on_link(ev);
                for _ in 0..4096 {
                    match ev_rx.try_recv() {
                        Ok(ev) => st.on_link(ev),
                        Err(_) => break,
                    }
                }
            }
            cmd = cmd_rx.recv() => {
                match cmd {
                    None => break None,
                    Some(cmd) => {
                        stop = st.on_cmd(cmd);
                        while stop.is_none() {
                            match cmd_rx.try_recv() {
                                Ok(cmd) => stop = st.on_cmd(cmd),
                                Err(_) => break,
                            }
                        }
                    }
                }
            }
            _ = tick.tick() => st.on_tick(),
        }
        st.flush();
        if let Some(ack) = stop {
            break Some(ack);
        }
    };
    st.flush();
    st.shutdown();
    // Commands that raced with the shutdown are answered, not dropped.
    cmd_rx.close();
    while let Ok(cmd) = cmd_rx.try_recv() {
        st.refuse(cmd);
    }
    if let Some(ack) = ack {
        let _ = ack.send(());
    }
}
