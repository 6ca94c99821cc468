//! The worker side: holds chunks, runs tasks on its processors, serves and fetches chunks
//! to and from its peers directly (never through the driver).
//!
//! The same code runs in worker processes (over QUIC) and inside the driver's process when
//! the driver's own cores run tasks (over the in-process transport).

mod peer;

use crate::registry::{self, ArgValue};
use dagger_core::hash::IdHashMap;
use dagger_core::wire::{
    self, ChunkPayload, Hello, Outcome, PeerInfo, PeerMsg, RunArg, RunTask, TaskDone, ToDriver,
    ToWorker, PROTOCOL_VERSION,
};
use dagger_core::{ChunkId, Incarnation, ProcId, TaskError, TaskId, WorkerId, WorkerInfo};
use dagger_core::{MoveFailure, ProcKind};
use dagger_move::{MoveTarget, MoveValue};
use dagger_net::launch::WorkerArgs;
use dagger_net::{Conn, FrameReceiver, FrameSender, Transport};
use dagger_proc::{DetectContext, LocalProcs};
use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

static WORKER_ID: AtomicU32 = AtomicU32::new(0);

/// Numbers the workers of this process, for their shared-memory name prefixes.
static NEXT_PREFIX: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static CURRENT_PROC: Cell<Option<ProcId>> = const { Cell::new(None) };
}

pub(crate) fn current_worker() -> WorkerId {
    WorkerId(WORKER_ID.load(Ordering::Relaxed))
}

pub(crate) fn current_proc() -> Option<ProcId> {
    CURRENT_PROC.with(|c| c.get())
}

/// Chunks whose bytes are at least this large go through shared memory to a peer on the
/// same host (when the shortcut is on).
const SHM_MIN_BYTES: usize = 64 * 1024;

/// Bytes of one chunk held by this worker.
pub(crate) enum ChunkBytes {
    Vec(Vec<u8>),
    /// The bytes are the tail of a received frame, kept whole to avoid a copy.
    Framed(Vec<u8>, usize),
    Shm(dagger_move::shm::ShmView),
    /// The bytes are in a segment a peer lends; dropping this hands the segment back.
    Segment(dagger_move::shm::SegmentView),
}

impl std::ops::Deref for ChunkBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ChunkBytes::Vec(v) => v,
            ChunkBytes::Framed(f, start) => &f[*start..],
            ChunkBytes::Shm(s) => s,
            ChunkBytes::Segment(s) => s,
        }
    }
}

struct StartGuard {
    worker: Arc<Worker>,
    pending: Option<Arc<Pending>>,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            self.worker.fail_task(
                &p,
                TaskError::MoveFailed {
                    task: p.task,
                    cause: MoveFailure::Dropped,
                },
            );
        }
    }
}

struct Pending {
    task: TaskId,
    func: std::borrow::Cow<'static, str>,
    proc: ProcId,
    inline_limit: u32,
    args: Mutex<Vec<Option<Arc<ChunkBytes>>>>,
    missing: AtomicUsize,
    failed: AtomicBool,
}

enum Waiter {
    Task(Arc<Pending>, usize),
    Peer(FrameSender, WorkerId),
    Driver,
}

enum Entry {
    Ready(Arc<ChunkBytes>),
    Waiting {
        waiters: Vec<Waiter>,
        holders: Vec<WorkerId>,
        attempts: u32,
    },
}

enum PeerLink {
    Idle,
    /// Frames queued while the link is being opened, with the chunk each one wants.
    Connecting(Vec<(Vec<u8>, Option<ChunkId>)>),
    Up(FrameSender),
}

struct Peer {
    info: PeerInfo,
    link: PeerLink,
}

/// Settings of one worker.
pub(crate) struct WorkerSetup {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) join: String,
    pub(crate) peer_transport: Arc<dyn Transport>,
    pub(crate) peer_bind: String,
    pub(crate) shm: bool,
    pub(crate) in_process: bool,
}

pub(crate) struct Worker {
    id: WorkerId,
    incarnation: Incarnation,
    host: String,
    procs: LocalProcs,
    store: Mutex<IdHashMap<ChunkId, Entry>>,
    peers: Mutex<HashMap<WorkerId, Peer>>,
    to_driver: FrameSender,
    done: Mutex<Vec<TaskDone>>,
    done_notify: tokio::sync::Notify,
    peer_transport: Arc<dyn Transport>,
    rt: tokio::runtime::Handle,
    shm: bool,
    shm_prefix: String,
}

/// Entry point of a process started as a worker. Returns the exit code.
pub(crate) fn run_worker_process(args: WorkerArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dagger worker: cannot start the I/O runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(async move {
        let transport: Arc<dyn Transport> =
            crate::transport::make(&args.identity).map_err(|e| e.to_string())?;
        let loopback = args.join.starts_with("127.")
            || args.join.starts_with("localhost")
            || args.join.starts_with("[::1]");
        let peer_bind = if loopback {
            "127.0.0.1:0".to_string()
        } else {
            "0.0.0.0:0".to_string()
        };
        let shm = std::env::var("DAGGER_SHM")
            .map(|v| v != "0")
            .unwrap_or(true);
        run_worker(WorkerSetup {
            transport: transport.clone(),
            join: args.join.clone(),
            peer_transport: transport,
            peer_bind,
            shm,
            in_process: false,
        })
        .await
    });
    rt.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dagger worker: {e}");
            1
        }
    }
}

/// Joins the driver, then serves until the driver says shutdown or the link closes.
pub(crate) async fn run_worker(setup: WorkerSetup) -> Result<(), String> {
    let host = dagger_proc::hostname();
    let procs = LocalProcs::detect(&DetectContext {
        worker: WorkerId(0),
        hostname: host.clone(),
    });
    let mut listener = setup
        .peer_transport
        .listen(&setup.peer_bind)
        .await
        .map_err(|e| format!("cannot listen for peers: {e}"))?;
    let mut peer_addr = listener.local_addr();
    if let Some(port) = peer_addr.strip_prefix("0.0.0.0:") {
        peer_addr = format!("{host}:{port}");
    }
    let Conn {
        sender,
        mut receiver,
        ..
    } = setup
        .transport
        .connect(&setup.join)
        .await
        .map_err(|e| format!("cannot reach the driver at {}: {e}", setup.join))?;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        registry_hash: registry::registry_hash(),
        worker: WorkerId(0),
        incarnation: Incarnation(0),
        build_id: dagger_net::launch::build_id(),
        allow_mixed_builds: dagger_net::launch::mixed_builds_allowed(),
    };
    let info = WorkerInfo {
        worker: WorkerId(0),
        incarnation: Incarnation(0),
        host: host.clone(),
        pid: std::process::id(),
        peer_addr: Some(peer_addr),
        procs: procs.infos(),
    };
    sender
        .send(wire::encode(&hello))
        .map_err(|e| e.to_string())?;
    sender
        .send(wire::encode(&ToDriver::Join(info)))
        .map_err(|e| e.to_string())?;
    let first = receiver
        .recv()
        .await
        .map_err(|e| format!("the driver refused this worker: {e}"))?;
    let (id, incarnation, peers, heartbeat) =
        match wire::decode::<ToWorker>(&first).map_err(|e| e.to_string())? {
            ToWorker::Welcome {
                worker,
                incarnation,
                peers,
                heartbeat,
            } => (worker, incarnation, peers, heartbeat),
            other => return Err(format!("expected a welcome from the driver, got {other:?}")),
        };
    if !setup.in_process {
        WORKER_ID.store(id.0, Ordering::Relaxed);
    }
    let worker = Arc::new(Worker {
        id,
        incarnation,
        host,
        procs,
        store: Mutex::new(IdHashMap::default()),
        peers: Mutex::new(
            peers
                .into_iter()
                .map(|p| {
                    (
                        p.worker,
                        Peer {
                            info: p,
                            link: PeerLink::Idle,
                        },
                    )
                })
                .collect(),
        ),
        to_driver: sender,
        done: Mutex::new(Vec::new()),
        done_notify: tokio::sync::Notify::new(),
        peer_transport: setup.peer_transport.clone(),
        rt: tokio::runtime::Handle::current(),
        shm: setup.shm,
        // Unique per worker in this process (several contexts may each run one here), and
        // starting with the pid so the driver can clean up after a killed worker.
        shm_prefix: format!(
            "dagger-{}-{}-{}",
            std::process::id(),
            id.0,
            NEXT_PREFIX.fetch_add(1, Ordering::Relaxed)
        ),
    });

    // Peers that connect to us.
    {
        let w = worker.clone();
        tokio::spawn(async move {
            while let Ok(conn) = listener.accept().await {
                let w = w.clone();
                tokio::spawn(async move { w.serve_peer_conn(conn, None).await });
            }
        });
    }
    // Finished tasks go to the driver in batches.
    {
        let w = worker.clone();
        tokio::spawn(async move {
            loop {
                w.done_notify.notified().await;
                let batch = std::mem::take(&mut *w.done.lock());
                if batch.is_empty() {
                    continue;
                }
                let msg = ToDriver::Done {
                    incarnation: w.incarnation,
                    tasks: batch,
                };
                if w.to_driver.send(wire::encode(&msg)).is_err() {
                    return;
                }
            }
        });
    }
    // Heartbeats.
    {
        let w = worker.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(heartbeat.max(Duration::from_millis(1)));
            loop {
                t.tick().await;
                if w.to_driver
                    .send(wire::encode(&ToDriver::Heartbeat {
                        incarnation: w.incarnation,
                    }))
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    let result = worker.serve_driver(&mut receiver).await;
    dagger_move::shm::cleanup_prefix(&worker.shm_prefix);
    result
}

impl Worker {
    async fn serve_driver(self: &Arc<Self>, receiver: &mut FrameReceiver) -> Result<(), String> {
        loop {
            let frame = match receiver.recv().await {
                Ok(f) => f,
                // The driver went away without saying shutdown (it died, or the link broke).
                Err(e) => {
                    return Err(format!(
                        "the link to the driver closed before it said shutdown ({e}); is the driver gone?"
                    ))
                }
            };
            let msg = match wire::decode::<ToWorker>(&frame) {
                Ok(m) => m,
                Err(e) => {
                    self.to_driver.close("malformed frame");
                    return Err(format!("the driver sent a malformed frame: {e}"));
                }
            };
            match msg {
                ToWorker::Run(tasks) => {
                    for t in tasks {
                        self.accept_task(t);
                    }
                }
                ToWorker::Release(chunks) => {
                    let mut store = self.store.lock();
                    for c in chunks {
                        if let Some(Entry::Ready(_)) = store.get(&c) {
                            store.remove(&c);
                        }
                    }
                }
                ToWorker::Fetch(chunk) => self.want(chunk, Waiter::Driver),
                ToWorker::Replicate { chunk, to } => {
                    let bytes = match self.store.lock().get(&chunk) {
                        Some(Entry::Ready(b)) => Some(b.clone()),
                        _ => None,
                    };
                    if let Some(b) = bytes {
                        let frame = self.chunk_frame(true, to, chunk, Ok(b));
                        self.send_frame_to_peer(to, frame);
                        let _ = self.to_driver.send(wire::encode(&ToDriver::Replicated {
                            incarnation: self.incarnation,
                            chunk,
                            to,
                        }));
                    }
                }
                ToWorker::PeerJoined(p) => {
                    self.peers.lock().insert(
                        p.worker,
                        Peer {
                            info: p,
                            link: PeerLink::Idle,
                        },
                    );
                }
                ToWorker::PeerLeft(w) => {
                    self.peers.lock().remove(&w);
                    self.peer_gone(w);
                }
                ToWorker::Welcome { .. } => {}
                ToWorker::Shutdown => return Ok(()),
            }
        }
    }

    /// Registers a task: resolves its inputs (local, inline, or wanted from a peer) and
    /// starts it once all are here.
    fn accept_task(self: &Arc<Self>, t: RunTask) {
        let n = t.args.len();
        let pending = Arc::new(Pending {
            task: t.task,
            func: t.func,
            proc: t.proc,
            inline_limit: t.inline_limit,
            args: Mutex::new(vec![None; n]),
            missing: AtomicUsize::new(n + 1),
            failed: AtomicBool::new(false),
        });
        let mut wants = Vec::new();
        {
            let mut store = self.store.lock();
            // Our own result will be produced here: peers asking for it wait.
            store
                .entry(t.task.chunk())
                .or_insert_with(|| Entry::Waiting {
                    waiters: Vec::new(),
                    holders: Vec::new(),
                    attempts: 0,
                });
            let mut args = pending.args.lock();
            for (i, arg) in t.args.into_iter().enumerate() {
                match arg {
                    RunArg::Value(v) => {
                        args[i] = Some(Arc::new(ChunkBytes::Vec(v)));
                        pending.missing.fetch_sub(1, Ordering::AcqRel);
                    }
                    RunArg::Chunk { chunk, from } => match store.get_mut(&chunk) {
                        Some(Entry::Ready(b)) => {
                            args[i] = Some(b.clone());
                            pending.missing.fetch_sub(1, Ordering::AcqRel);
                        }
                        Some(Entry::Waiting {
                            waiters, holders, ..
                        }) => {
                            waiters.push(Waiter::Task(pending.clone(), i));
                            // The scheduler's view may be newer (a recomputed copy).
                            for f in from {
                                if f != self.id && !holders.contains(&f) {
                                    holders.push(f);
                                }
                            }
                        }
                        None => {
                            let holders: Vec<WorkerId> =
                                from.into_iter().filter(|w| *w != self.id).collect();
                            store.insert(
                                chunk,
                                Entry::Waiting {
                                    waiters: vec![Waiter::Task(pending.clone(), i)],
                                    holders: holders.clone(),
                                    attempts: 0,
                                },
                            );
                            wants.push((chunk, holders));
                        }
                    },
                }
            }
        }
        for (chunk, holders) in wants {
            match holders.first() {
                Some(&h) => self.send_to_peer(h, PeerMsg::Want(chunk)),
                None => self.fail_chunk(chunk, MoveFailure::NoHolder),
            }
        }
        if pending.missing.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.start(pending);
        }
    }

    /// Someone wants a chunk: answered now if it is here, when it arrives if it is coming.
    fn want(self: &Arc<Self>, chunk: ChunkId, waiter: Waiter) {
        let mut store = self.store.lock();
        match store.get_mut(&chunk) {
            Some(Entry::Ready(b)) => {
                let b = b.clone();
                drop(store);
                self.answer(chunk, waiter, Ok(b));
            }
            Some(Entry::Waiting { waiters, .. }) => waiters.push(waiter),
            None => {
                drop(store);
                self.answer(chunk, waiter, Err(MoveFailure::NotHeld { worker: self.id }));
            }
        }
    }

    fn answer(
        self: &Arc<Self>,
        chunk: ChunkId,
        waiter: Waiter,
        data: Result<Arc<ChunkBytes>, MoveFailure>,
    ) {
        match waiter {
            Waiter::Task(p, i) => match data {
                Ok(b) => {
                    p.args.lock()[i] = Some(b);
                    if p.missing.fetch_sub(1, Ordering::AcqRel) == 1 {
                        self.start(p);
                    }
                }
                Err(cause) => self.fail_task(
                    &p,
                    TaskError::MoveFailed {
                        task: p.task,
                        cause,
                    },
                ),
            },
            Waiter::Peer(sender, peer) => {
                if let Err(e) = sender.send(self.chunk_frame(false, peer, chunk, data)) {
                    // Too large for one frame (the link itself closing is seen by the peer):
                    // say so, so the peer fails the task instead of waiting.
                    if let dagger_net::NetError::FrameTooLarge { len, limit } = e {
                        let payload =
                            ChunkPayload::Gone(MoveFailure::TooLarge { bytes: len, limit });
                        let _ = sender.send(wire::encode(&PeerMsg::Chunk { chunk, payload }));
                    }
                }
            }
            Waiter::Driver => {
                let msg = ToDriver::ChunkData {
                    incarnation: self.incarnation,
                    chunk,
                    data: data.map(|b| wire::ByteBuf::from(b.to_vec())),
                };
                if let Err(dagger_net::NetError::FrameTooLarge { len, limit }) =
                    self.to_driver.send(wire::encode(&msg))
                {
                    let msg = ToDriver::ChunkData {
                        incarnation: self.incarnation,
                        chunk,
                        data: Err(MoveFailure::TooLarge { bytes: len, limit }),
                    };
                    let _ = self.to_driver.send(wire::encode(&msg));
                }
            }
        }
    }

    /// A chunk's bytes are here: keep them and wake everyone waiting.
    fn deliver(self: &Arc<Self>, chunk: ChunkId, bytes: Arc<ChunkBytes>) {
        let waiters = {
            let mut store = self.store.lock();
            match store.insert(chunk, Entry::Ready(bytes.clone())) {
                Some(Entry::Waiting { waiters, .. }) => waiters,
                _ => Vec::new(),
            }
        };
        for w in waiters {
            self.answer(chunk, w, Ok(bytes.clone()));
        }
    }

    /// A chunk will not come: everyone waiting for it is told.
    pub(super) fn fail_chunk(self: &Arc<Self>, chunk: ChunkId, cause: MoveFailure) {
        let waiters = {
            let mut store = self.store.lock();
            match store.remove(&chunk) {
                Some(Entry::Waiting { waiters, .. }) => waiters,
                Some(ready @ Entry::Ready(_)) => {
                    store.insert(chunk, ready);
                    Vec::new()
                }
                None => Vec::new(),
            }
        };
        for w in waiters {
            match w {
                // A peer must not ask again: the chunk will never exist here.
                Waiter::Peer(sender, _) => {
                    let payload = ChunkPayload::Gone(cause.clone());
                    let _ = sender.send(wire::encode(&PeerMsg::Chunk { chunk, payload }));
                }
                w => self.answer(chunk, w, Err(cause.clone())),
            }
        }
    }

    /// A peer left the cluster (or its link to us closed): every input we asked it for is
    /// asked of the next holder, or fails (the scheduler then re-runs the task elsewhere).
    pub(super) fn peer_gone(self: &Arc<Self>, gone: WorkerId) {
        let mut retry = Vec::new();
        let mut failed = Vec::new();
        {
            let mut store = self.store.lock();
            for (chunk, e) in store.iter_mut() {
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
                    }
                }
            }
        }
        for (chunk, h) in retry {
            self.send_to_peer(h, PeerMsg::Want(chunk));
        }
        for chunk in failed {
            self.fail_chunk(chunk, MoveFailure::PeerLeft { worker: gone });
        }
    }

    fn fail_task(self: &Arc<Self>, p: &Pending, err: TaskError) {
        if p.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(task = %p.task, error = %err, "task failed");
        self.fail_chunk(p.task.chunk(), MoveFailure::SourceFailed);
        self.report(TaskDone {
            task: p.task,
            proc: p.proc,
            run_ns: 0,
            outcome: Outcome::Failed(err),
        });
    }

    fn report(&self, done: TaskDone) {
        let was_empty = {
            let mut d = self.done.lock();
            d.push(done);
            d.len() == 1
        };
        if was_empty {
            self.done_notify.notify_one();
        }
    }

    /// All inputs are here: run the task on its processor.
    fn start(self: &Arc<Self>, p: Arc<Pending>) {
        if p.failed.load(Ordering::Acquire) {
            return;
        }
        let Some(proc) = self.procs.get(p.proc.index).cloned() else {
            let err = TaskError::MoveFailed {
                task: p.task,
                cause: MoveFailure::NoSuchProcessor { proc: p.proc },
            };
            self.fail_task(&p, err);
            return;
        };
        // A processor may drop a job without running it (it was shut down, or a user's
        // processor refuses work): the guard then reports the task failed, so nobody waits.
        let mut guard = StartGuard {
            worker: self.clone(),
            pending: Some(p),
        };
        proc.execute(Box::new(move || {
            if let Some(p) = guard.pending.take() {
                guard.worker.run_task(p);
            }
        }));
    }

    fn run_task(self: &Arc<Self>, p: Arc<Pending>) {
        let Some(f) = registry::lookup(&p.func) else {
            let err = TaskError::UnknownFunction {
                task: p.task,
                func: p.func.to_string(),
                worker: self.id,
            };
            self.fail_task(&p, err);
            return;
        };
        // A task starts only once every input arrived; should that ever not hold, it fails
        // with a typed error instead of taking the worker down.
        let args: Option<Vec<Arc<ChunkBytes>>> = p.args.lock().iter().cloned().collect();
        let Some(args) = args else {
            tracing::error!(task = %p.task, "started before all its inputs arrived");
            self.fail_task(
                &p,
                TaskError::MoveFailed {
                    task: p.task,
                    cause: MoveFailure::NoHolder,
                },
            );
            return;
        };
        let prev = CURRENT_PROC.with(|c| c.replace(Some(p.proc)));
        let t0 = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let moved = self.move_args(&p, f, &args)?;
            let mut bytes: Vec<Option<Vec<u8>>> = Vec::new();
            let mut vals: Vec<Option<Box<dyn std::any::Any + Send>>> = Vec::new();
            let mut values: Vec<ArgValue<'_>> = match moved {
                None => args.iter().map(|a| ArgValue::Bytes(&a[..])).collect(),
                Some(m) => {
                    for mv in m {
                        match mv {
                            MoveValue::Bytes(b) => {
                                bytes.push(Some(b));
                                vals.push(None);
                            }
                            MoveValue::Value(v) => {
                                bytes.push(None);
                                vals.push(Some(v));
                            }
                            // A device-resident argument reaches the task as its host copy.
                            MoveValue::Device(d) => {
                                let b = d.to_host().map_err(|e| TaskError::MoveFailed {
                                    task: p.task,
                                    cause: MoveFailure::Conversion {
                                        message: e.to_string(),
                                    },
                                })?;
                                bytes.push(Some(b));
                                vals.push(None);
                            }
                        }
                    }
                    bytes
                        .iter()
                        .zip(vals.iter_mut())
                        .map(|(b, v)| match b {
                            Some(b) => ArgValue::Bytes(&b[..]),
                            None => ArgValue::Value(v.take()),
                        })
                        .collect()
                }
            };
            (f.call)(&mut values).map_err(|e| TaskError::BadArguments {
                task: p.task,
                func: p.func.to_string(),
                message: e.to_string(),
            })
        }));
        let run_ns = t0.elapsed().as_nanos() as u64;
        CURRENT_PROC.with(|c| c.set(prev));
        drop(args);
        match result {
            Ok(Ok(bytes)) => {
                let size = bytes.len();
                let outcome = if size <= p.inline_limit as usize {
                    Outcome::Value(bytes.clone())
                } else {
                    Outcome::Stored { size: size as u64 }
                };
                self.deliver(p.task.chunk(), Arc::new(ChunkBytes::Vec(bytes)));
                self.report(TaskDone {
                    task: p.task,
                    proc: p.proc,
                    run_ns,
                    outcome,
                });
            }
            Ok(Err(err)) => self.fail_task(&p, err),
            Err(panic) => {
                let message = if let Some(s) = panic.downcast_ref::<&str>() {
                    s.to_string()
                } else if let Some(s) = panic.downcast_ref::<String>() {
                    s.clone()
                } else {
                    "a non-string panic payload".to_string()
                };
                let err = TaskError::Panicked {
                    task: p.task,
                    func: p.func.to_string(),
                    message,
                };
                self.fail_task(&p, err);
            }
        }
    }

    /// Inputs of a task on a processor that does not compute in host memory go through the
    /// move registry (host thread → that kind, chosen by the parameter's type), so a user's
    /// move can turn host bytes into a device buffer on the way.
    fn move_args(
        &self,
        p: &Pending,
        f: &registry::TaskFn,
        args: &[Arc<ChunkBytes>],
    ) -> Result<Option<Vec<MoveValue>>, TaskError> {
        let Some(proc) = self.procs.get(p.proc.index) else {
            return Ok(None);
        };
        let kind = proc.kind();
        if kind == ProcKind::THREAD || kind == ProcKind::OS {
            return Ok(None);
        }
        let memory = proc.memory();
        let target = MoveTarget::new(p.proc, &kind, &memory);
        let types = (f.arg_types)();
        let mut out = Vec::with_capacity(args.len());
        for (i, a) in args.iter().enumerate() {
            let ty = types.get(i).copied().unwrap_or("");
            let v = dagger_move::moves()
                .apply(&ProcKind::THREAD, ty, MoveValue::Bytes(a.to_vec()), &target)
                .map_err(|e| TaskError::MoveFailed {
                    task: p.task,
                    cause: MoveFailure::Conversion {
                        message: e.to_string(),
                    },
                })?;
            out.push(v);
        }
        Ok(Some(out))
    }
}
