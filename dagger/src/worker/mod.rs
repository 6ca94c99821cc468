//! The worker shell: joins the driver, runs tasks on this process's processors, and
//! carries out what the worker core ([`dagger_runtime::worker::WorkerState`]) decides:
//! frames to send, links to open, shared memory to write and read. The core holds the
//! chunk store, the want/serve protocol, heartbeats and the batching of finished tasks.
//!
//! The same code runs in worker processes (over QUIC) and inside the driver's process when
//! the driver's own cores run tasks (over the in-process transport).
//!
//! Every event source (the driver link's reader, the peer links' readers, processor
//! threads finishing tasks, the timer) locks the core, feeds it the event, drains what it
//! asks for, unlocks, and only then sends frames and starts jobs. One timer task sleeps
//! until the core's next deadline; an event that brings the deadline forward wakes it.
//!
//! A processor thread never waits for the core: a finished task's report goes into a
//! queue, and the thread feeds the queue to the core only if the core is free. Whoever
//! holds the core feeds the queue before letting go and looks at it again after, so no
//! report is left behind (see [`Worker::finished`]).

mod crew;
mod logs;
mod peer;

use crate::registry::{self, ArgValue, TaskOutput};
use dagger_core::hash::IdHashMap;
use dagger_core::wire::{self, Hello, ToDriver, ToWorker, PROTOCOL_VERSION};
use dagger_core::{Incarnation, MoveFailure, ProcId, ProcKind, TaskError, WorkerId, WorkerInfo};
use dagger_move::{DeviceBuffer, MoveTarget, MoveValue};
use dagger_net::launch::WorkerArgs;
use dagger_net::{FrameReceiver, FrameSender, NetError, Transport};
use dagger_proc::device::{DeviceProc, Evictable};
use dagger_proc::{DetectContext, LocalProcs};
use dagger_runtime::worker::{
    Action, ChunkData, Dest, LinkKey, StartTask, Transmit, WorkerConfig, WorkerState,
};
use parking_lot::Mutex;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

static WORKER_ID: AtomicU32 = AtomicU32::new(0);

/// Numbers the workers of this process, for their shared-memory name prefixes.
static NEXT_PREFIX: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static CURRENT_PROC: Cell<Option<ProcId>> = const { Cell::new(None) };
    /// The inputs of the task running on this thread, while its arguments are decoded
    /// and it runs (a pointer to its argument slice and the slice's length).
    static INPUTS: Cell<(*const Data, usize)> = const { Cell::new((std::ptr::null(), 0)) };
}

/// Runs `f` (a task's decoding and call) with `inputs` as the inputs a [`crate::Bytes`]
/// parameter may refer to in place ([`borrow_input`]).
fn with_inputs<R>(inputs: &[Data], f: impl FnOnce() -> R) -> R {
    struct Restore((*const Data, usize));
    impl Drop for Restore {
        fn drop(&mut self) {
            INPUTS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(INPUTS.with(|c| c.replace((inputs.as_ptr(), inputs.len()))));
    f()
}

/// The input of the running task whose bytes contain `bytes` (a slice an argument's
/// decoding borrowed), with the offset of `bytes` in it; `None` outside a task or for
/// bytes of anything else.
pub(crate) fn borrow_input(bytes: &[u8]) -> Option<(Data, usize)> {
    let (ptr, len) = INPUTS.with(|c| c.get());
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `with_inputs` set this from a live slice and restores the previous value
    // before that slice's borrow ends; this runs inside it, on the same thread.
    let inputs = unsafe { std::slice::from_raw_parts(ptr, len) };
    let at = bytes.as_ptr() as usize;
    inputs.iter().find_map(|d| {
        let all: &[u8] = d.as_ref();
        let base = all.as_ptr() as usize;
        (at >= base && at + bytes.len() <= base + all.len()).then(|| (d.clone(), at - base))
    })
}

pub(crate) fn current_worker() -> WorkerId {
    WorkerId(WORKER_ID.load(Ordering::Relaxed))
}

/// A panic's payload as text.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

/// Runs `f` as the task code of processor `proc` (what [`current_proc`] reports).
pub(crate) fn with_current_proc<R>(proc: ProcId, f: impl FnOnce() -> R) -> R {
    let prev = CURRENT_PROC.with(|c| c.replace(Some(proc)));
    let r = f();
    CURRENT_PROC.with(|c| c.set(prev));
    r
}

pub(crate) fn current_proc() -> Option<ProcId> {
    CURRENT_PROC.with(|c| c.get())
}

/// Bytes of one chunk held by this worker.
pub(crate) enum ChunkBytes {
    Vec(Vec<u8>),
    /// The bytes are the tail of a received frame, kept whole to avoid a copy.
    Framed(Vec<u8>, usize),
    Shm(dagger_move::shm::ShmView),
    /// The bytes are in a segment a peer lends; dropping this hands the segment back.
    Segment(dagger_move::shm::SegmentView),
    /// A result this worker encoded straight into a segment of its own pool, which a peer
    /// of this host is lent without a copy.
    Stored(Arc<dagger_move::shm::StoredSegment>),
    /// A result that was its own encoding already, in a vector (`BytesMut`).
    Shared(Arc<Vec<u8>>),
    /// The value lives in a device's memory (a task on a device returned it there).
    Device(DeviceChunk),
}

impl std::ops::Deref for ChunkBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ChunkBytes::Vec(v) => v,
            ChunkBytes::Framed(f, start) => &f[*start..],
            ChunkBytes::Shm(s) => s,
            ChunkBytes::Segment(s) => s,
            ChunkBytes::Stored(s) => s,
            ChunkBytes::Shared(v) => v,
            ChunkBytes::Device(d) => d.host(),
        }
    }
}

/// A chunk whose value a device holds. Its host bytes are made once, when something that
/// reads bytes (a peer, the driver, a CPU task) first asks, or when the device needs the
/// room and evicts it ([`Evictable`]); after an eviction the device copy is gone and the
/// chunk is host bytes for good.
pub(crate) struct DeviceChunk {
    buf: Mutex<Option<Arc<dyn DeviceBuffer>>>,
    host: std::sync::OnceLock<Vec<u8>>,
    len: u64,
}

impl DeviceChunk {
    /// The device buffer, while the device still holds the value.
    fn buffer(&self) -> Option<Arc<dyn DeviceBuffer>> {
        self.buf.lock().clone()
    }

    /// The host bytes, copied from the device on first use. A device that fails the copy
    /// leaves the bytes empty, which a reader reports as a decoding error of the value.
    fn host(&self) -> &[u8] {
        if let Some(bytes) = self.host.get() {
            return bytes;
        }
        // Taken before the copy, never inside it: an eviction holds this lock while it
        // sets the host bytes, and it only evicts a buffer nobody else holds (this clone
        // counts), so the two never wait for each other.
        let buf = self.buf.lock().clone();
        self.host.get_or_init(|| {
            match buf.map(|b| b.to_host()) {
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "a device-resident result could not be copied to the host");
                    Vec::new()
                }
                None => Vec::new(),
            }
        })
    }
}

impl Evictable for ChunkBytes {
    fn evict(&self) -> u64 {
        let ChunkBytes::Device(d) = self else {
            return 0;
        };
        let mut slot = d.buf.lock();
        let Some(buf) = slot.as_ref() else {
            return 0;
        };
        // A running task or a move holds it too: it cannot leave the device now.
        if Arc::strong_count(buf) > 1 {
            return 0;
        }
        if d.host.get().is_none() {
            match buf.to_host() {
                Ok(bytes) => {
                    let _ = d.host.set(bytes);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not evict a device-resident result");
                    return 0;
                }
            }
        }
        let freed = buf.len();
        *slot = None;
        freed
    }
}

/// The core's handle to a chunk's bytes: shared, so handing a chunk to several tasks and
/// peers never copies it.
#[derive(Clone)]
pub(crate) struct Data(Arc<ChunkBytes>);

impl Data {
    pub(crate) fn new(bytes: ChunkBytes) -> Self {
        Data(Arc::new(bytes))
    }
}

impl Data {
    /// A device-resident result, registered with its device's ledger (when it has one)
    /// so that it can be evicted to host memory when the device needs room.
    fn device(buf: Arc<dyn DeviceBuffer>) -> Self {
        let ledger = Arc::clone(&buf)
            .into_any_arc()
            .downcast::<dagger_move::GpuBuffer>()
            .ok()
            .map(|g| g.device().ledger().clone());
        let len = buf.len();
        let data = Data::new(ChunkBytes::Device(DeviceChunk {
            buf: Mutex::new(Some(buf)),
            host: std::sync::OnceLock::new(),
            len,
        }));
        if let Some(ledger) = ledger {
            let weak: std::sync::Weak<dyn Evictable> =
                Arc::downgrade(&data.0) as std::sync::Weak<dyn Evictable>;
            ledger.register(weak);
        }
        data
    }

    /// The device buffer, if the chunk still lives on a device.
    fn device_buffer(&self) -> Option<Arc<dyn DeviceBuffer>> {
        match &*self.0 {
            ChunkBytes::Device(d) => d.buffer(),
            _ => None,
        }
    }
}

impl From<Vec<u8>> for Data {
    fn from(v: Vec<u8>) -> Self {
        Data::new(ChunkBytes::Vec(v))
    }
}

impl AsRef<[u8]> for Data {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl ChunkData for Data {
    fn device_len(&self) -> Option<u64> {
        match &*self.0 {
            ChunkBytes::Device(d) if d.buf.lock().is_some() => Some(d.len),
            _ => None,
        }
    }
}

type Core = WorkerState<Data>;

/// How many tasks of a `Run` batch are fed to the core per lock.
const RUN_TASKS_PER_LOCK: usize = 16;

/// Reports a task that its processor dropped without running it, so nobody waits.
struct StartGuard {
    worker: Arc<Worker>,
    task: Option<StartTask<Data>>,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            let err = TaskError::MoveFailed {
                task: t.task,
                cause: MoveFailure::Dropped,
            };
            self.worker.ran(t.task, t.proc, Duration::ZERO, Err(err));
        }
    }
}

/// Settings of one worker.
pub(crate) struct WorkerSetup {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) join: String,
    pub(crate) peer_transport: Arc<dyn Transport>,
    pub(crate) peer_bind: String,
    pub(crate) shm: bool,
    pub(crate) in_process: bool,
    /// The name the launcher gave this worker (empty if none), reported in its join so
    /// that the driver recognises the workers it launched.
    pub(crate) name: String,
    /// The direct lane of the driver's own worker, which runs on its thread processors.
    pub(crate) direct: Option<Arc<crate::direct::Direct>>,
}

/// What the core and its links look like under the lock.
struct Inner {
    core: Core,
    /// The senders of the peer links that are up, by the key the core knows them by.
    links: IdHashMap<LinkKey, FrameSender>,
    /// The deadline the timer task sleeps until (`None`: it waits to be woken).
    armed: Option<Duration>,
    /// The reports taken from [`Worker::finished_queue`], kept for its capacity.
    finished_buf: Vec<FinishedTask>,
}

/// A finished task's report, queued until the core is free.
struct FinishedTask {
    task: dagger_core::TaskId,
    /// The processor it ran on, when it ran.
    proc: Option<ProcId>,
    run: Duration,
    result: Result<Data, TaskError>,
}

/// What one event asked for, performed after the lock is released.
#[derive(Default)]
struct Out {
    sends: Vec<(Option<FrameSender>, Transmit)>,
    actions: Vec<Action<Data>>,
    closes: Vec<FrameSender>,
    wake_timer: bool,
    /// The core's timeout is due already.
    due: bool,
}

impl Inner {
    /// Takes the core's output; frames for links that closed meanwhile are dropped.
    fn drain(&mut self, out: &mut Out, now: Duration) {
        while let Some(t) = self.core.poll_transmit() {
            let sender = match t.to {
                Dest::Driver => None,
                Dest::Link(key) => match self.links.get(&key) {
                    Some(s) => Some(s.clone()),
                    None => continue,
                },
            };
            out.sends.push((sender, t));
        }
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::CloseLink(key) => {
                    if let Some(s) = self.links.remove(&key) {
                        out.closes.push(s);
                    }
                }
                a => out.actions.push(a),
            }
        }
        if let Some(t) = self.core.poll_timeout() {
            if t <= now {
                // Whoever performs this decides who handles it (`Worker::perform`).
                out.due = true;
            } else if self.armed.is_none_or(|a| t < a) {
                self.armed = Some(t);
                out.wake_timer = true;
            }
        }
    }
}

pub(crate) struct Worker {
    id: WorkerId,
    procs: LocalProcs,
    /// The thread processors, for the tasks that may run on any of them.
    crew: crew::Crew,
    inner: Mutex<Inner>,
    /// Reports of finished tasks not yet given to the core. Lock order: `inner`, then
    /// this; never `inner` while holding this.
    finished_queue: Mutex<Vec<FinishedTask>>,
    to_driver: FrameSender,
    timer: tokio::sync::Notify,
    stopping: AtomicBool,
    epoch: Instant,
    next_link: AtomicU64,
    peer_transport: Arc<dyn Transport>,
    rt: tokio::runtime::Handle,
    shm_prefix: String,
    /// Chunks move through shared memory between processes of this host.
    shm: bool,
    /// The pool of this worker's segments, once a task asked for it.
    result_pool: std::sync::OnceLock<Option<Arc<dagger_move::shm::SegmentPool>>>,
    /// Tasks handed to a processor and not yet reported finished.
    running: AtomicUsize,
    /// The peer links the thread processors poll between jobs.
    polled: parking_lot::RwLock<Vec<Arc<peer::PolledLink>>>,
    /// This worker's registration with the thread processors, made with its first link.
    idle: std::sync::OnceLock<Arc<dyn dagger_proc::idle::IdleWork>>,
}

/// How a worker's service ended without an error of its own.
pub(crate) enum WorkerEnd {
    /// The driver said shutdown.
    Shutdown,
    /// The link to the driver ended without a shutdown: the driver declared this worker
    /// lost (it was paused or cut off, and is fenced now), or the driver is gone.
    LinkLost {
        /// What the link said.
        why: String,
        /// How long the worker had been joined.
        joined_for: Duration,
    },
}

/// Environment variable counting the rejoins of a worker started by hand (see
/// [`run_worker_process`]).
const ENV_REJOINS: &str = "DAGGER_REJOINS";
/// A worker started by hand rejoins at most this many times in a row (a rejoined worker
/// that stays joined for [`REJOIN_RESET`] starts counting anew).
const MAX_REJOINS: u32 = 20;
const REJOIN_RESET: Duration = Duration::from_secs(60);

/// Entry point of a process started as a worker. Returns the exit code.
///
/// A worker started by hand (`rejoin`: its credentials come from files, so its command
/// line can be run again) whose link to the driver ends without a shutdown joins again as
/// a new worker: the driver declared it lost (it was paused past the heartbeat timeout,
/// or cut off) and fenced what it held, so this process executes itself anew, with the
/// same arguments and a fresh state, and the driver gives it a new worker id and
/// incarnation. If the driver is gone, that join fails and the process exits non-zero.
/// Rejoins back off (50 ms doubling to 5 s) and stop after [`MAX_REJOINS`] in a row. A
/// local worker (`rejoin` false) exits instead: its supervisor replaces it.
pub(crate) fn run_worker_process(args: WorkerArgs, rejoin: bool) -> i32 {
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
            name: args.name.clone().unwrap_or_default(),
            direct: None,
        })
        .await
    });
    rt.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(WorkerEnd::Shutdown) => 0,
        Ok(WorkerEnd::LinkLost { why, joined_for }) => {
            eprintln!(
                "dagger worker: the link to the driver closed before it said shutdown ({why})"
            );
            if rejoin {
                join_again(joined_for)
            } else {
                eprintln!("dagger worker: is the driver gone? exiting");
                1
            }
        }
        Err(e) => {
            eprintln!("dagger worker: {e}");
            1
        }
    }
}

/// Executes this program again with the same arguments, to join as a new worker. Returns
/// the exit code only if that is not possible.
fn join_again(joined_for: Duration) -> i32 {
    use std::os::unix::process::CommandExt;
    let before = std::env::var(ENV_REJOINS)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    let rejoins = if joined_for >= REJOIN_RESET {
        0
    } else {
        before
    };
    if rejoins >= MAX_REJOINS {
        eprintln!("dagger worker: {rejoins} rejoins in a row; giving up");
        return 1;
    }
    let pause = Duration::from_millis(50)
        .saturating_mul(1 << rejoins.min(7))
        .min(Duration::from_secs(5));
    std::thread::sleep(pause);
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("dagger worker: cannot find this program to join again: {e}");
            return 1;
        }
    };
    eprintln!("dagger worker: joining again as a new worker");
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(ENV_REJOINS, (rejoins + 1).to_string())
        .exec();
    eprintln!("dagger worker: cannot execute this program again: {err}");
    1
}

/// Joins the driver, then serves until the driver says shutdown or the link closes.
pub(crate) async fn run_worker(setup: WorkerSetup) -> Result<WorkerEnd, String> {
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
    let dagger_net::Conn {
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
        name: setup.name.clone(),
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
    let welcome = wire::decode::<ToWorker>(&first).map_err(|e| e.to_string())?;
    let ToWorker::Welcome {
        worker: id,
        incarnation,
        log_filter,
        ..
    } = &welcome
    else {
        return Err(format!(
            "expected a welcome from the driver, got {welcome:?}"
        ));
    };
    let (id, incarnation) = (*id, *incarnation);
    // A worker process forwards its log events to the driver (the driver's own worker
    // logs to the driver's subscriber already).
    let forward_logs = !setup.in_process && logs::install(log_filter);
    if !setup.in_process {
        WORKER_ID.store(id.0, Ordering::Relaxed);
        // Processors of this process report the real worker id from now on.
        if let Err(e) = dagger_proc::set_worker(id) {
            tracing::error!(error = %e, "this process already serves as another worker");
        }
    }
    if let Some(direct) = &setup.direct {
        direct.attach(id, procs.procs());
    }
    let mut config = WorkerConfig::new(host, registry::registry_hash());
    config.shm = setup.shm;
    config.build_id = hello.build_id;
    config.allow_mixed_builds = hello.allow_mixed_builds;
    let epoch = Instant::now();
    let mut core = Core::new(config);
    core.handle_driver_msg(Duration::ZERO, welcome);
    let crew = crew::Crew::new(procs.procs());
    let worker = Arc::new(Worker {
        id,
        crew,
        procs,
        inner: Mutex::new(Inner {
            core,
            links: IdHashMap::default(),
            armed: None,
            finished_buf: Vec::new(),
        }),
        finished_queue: Mutex::new(Vec::new()),
        to_driver: sender,
        timer: tokio::sync::Notify::new(),
        stopping: AtomicBool::new(false),
        epoch,
        next_link: AtomicU64::new(0),
        peer_transport: setup.peer_transport.clone(),
        rt: tokio::runtime::Handle::current(),
        // Unique per worker in this process (several contexts may each run one here), and
        // starting with the pid so the driver can clean up after a killed worker.
        shm_prefix: format!(
            "dagger-{}-{}-{}",
            std::process::id(),
            id.0,
            NEXT_PREFIX.fetch_add(1, Ordering::Relaxed)
        ),
        shm: setup.shm,
        result_pool: std::sync::OnceLock::new(),
        running: AtomicUsize::new(0),
        polled: parking_lot::RwLock::new(Vec::new()),
        idle: std::sync::OnceLock::new(),
    });

    // Peers that connect to us.
    {
        let w = worker.clone();
        tokio::spawn(async move {
            while let Ok(conn) = listener.accept().await {
                let w = w.clone();
                tokio::spawn(async move { w.serve_inbound(conn).await });
            }
        });
    }
    // Heartbeats, batches of finished tasks and repeated wants, when the core wants them.
    tokio::spawn(worker.clone().run_timer());
    if forward_logs {
        let w = worker.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(logs::FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !w.stopping.load(Ordering::Acquire) {
                tick.tick().await;
                if let Some((lines, dropped)) = logs::take() {
                    let msg = ToDriver::Log {
                        incarnation,
                        lines,
                        dropped,
                    };
                    if w.to_driver.send(wire::encode(&msg)).is_err() {
                        return;
                    }
                }
            }
        });
    }

    let result = worker
        .serve_driver(&mut receiver)
        .await
        .map(|end| match end {
            WorkerEnd::LinkLost { why, .. } => WorkerEnd::LinkLost {
                why,
                joined_for: epoch.elapsed(),
            },
            end => end,
        });
    worker.stopping.store(true, Ordering::Release);
    worker.timer.notify_one();
    dagger_move::shm::cleanup_prefix(&worker.shm_prefix);
    result
}

impl Worker {
    /// The core's clock: time since this worker joined.
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Feeds one event to the core under the lock (and the finished tasks queued
    /// meanwhile), then performs what it asked for.
    fn drive(self: &Arc<Self>, event: impl FnOnce(&mut Inner, Duration)) {
        let mut out = Out::default();
        {
            let mut inner = self.inner.lock();
            let now = self.now();
            event(&mut inner, now);
            self.take_finished(&mut inner, now);
            inner.drain(&mut out, now);
        }
        self.perform(out);
        self.after_unlock();
    }

    /// Feeds the queued reports of finished tasks to the core (called with it locked).
    fn take_finished(&self, inner: &mut Inner, now: Duration) {
        let Inner {
            core, finished_buf, ..
        } = inner;
        std::mem::swap(&mut *self.finished_queue.lock(), finished_buf);
        for f in finished_buf.drain(..) {
            core.handle_task_finished_on(now, f.task, f.proc, f.run, f.result);
        }
    }

    /// Called by every holder of the core after it let go: reports queued while it held
    /// the core (by threads that found it busy and left) are fed now.
    fn after_unlock(self: &Arc<Self>) {
        if !self.finished_queue.lock().is_empty() {
            self.feed_finished();
        }
    }

    /// Feeds the queued reports to the core if it is free. If it is not, its holder feeds
    /// them: it looks at the queue after letting go, and the queue's lock orders that look
    /// after this thread's push, so the report is seen by one of the two.
    fn feed_finished(self: &Arc<Self>) {
        loop {
            let mut out = Out::default();
            {
                let Some(mut inner) = self.inner.try_lock() else {
                    return;
                };
                let now = self.now();
                self.take_finished(&mut inner, now);
                inner.drain(&mut out, now);
            }
            self.perform(out);
            if self.finished_queue.lock().is_empty() {
                return;
            }
        }
    }

    fn perform(self: &Arc<Self>, out: Out) {
        let Out {
            sends,
            actions,
            closes,
            wake_timer,
            due,
        } = out;
        for (sender, t) in sends {
            let sender = sender.as_ref().unwrap_or(&self.to_driver);
            // A closed link is seen by its reader, which tells the core.
            let (to, chunk) = (t.to, t.chunk);
            let sent = match t.into_parts() {
                (frame, None) => sender.send(frame),
                // A chunk's bytes go as they lie (a stored result: no copy into the frame).
                (head, Some(tail)) => sender.send_parts(head, tail),
            };
            if let Err(NetError::FrameTooLarge { len, limit }) = sent {
                match chunk {
                    Some(chunk) => self
                        .drive(|i, now| i.core.handle_send_too_large(now, to, chunk, len, limit)),
                    None => {
                        tracing::warn!(len, limit, "a frame too large for its link was dropped")
                    }
                }
            }
        }
        for s in closes {
            s.close("the peer left");
        }
        for a in actions {
            match a {
                Action::Start(t) => self.start(t),
                Action::Connect { peer, addr } => self.connect(peer, addr),
                Action::WriteShm(w) => {
                    let payload = self.write_shm(&w);
                    self.drive(|i, now| i.core.handle_shm_written(now, w, payload));
                }
                Action::ReadShm {
                    from,
                    chunk,
                    push,
                    payload,
                } => {
                    let bytes = self.read_shm(from, payload);
                    self.drive(|i, now| i.core.handle_chunk_received(now, chunk, push, bytes));
                }
                Action::SegmentReturned { peer, name } => self.segment_returned(peer, &name),
                Action::ForgetPeer(peer) => self.forget_peer(peer),
                Action::Shutdown => self.stopping.store(true, Ordering::Release),
                Action::CloseLink(_) => {}
                other => {
                    tracing::debug!(action = ?std::mem::discriminant(&other), "an action this shell does not know")
                }
            }
        }
        // Last: what the timer sends (the batch of finished tasks for the driver, a
        // heartbeat) is not urgent, and on a runtime of one thread a task woken earlier
        // runs earlier. A result a peer waits for, or a task ready to start, goes first.
        // A timeout due now (mostly: the batch of finished tasks for the driver) is
        // handled by this thread when no task is running here, since then no other report
        // would join the batch, and finishing a task wakes no other thread. While tasks
        // run, the timer task sends it, and reports that arrive before it runs travel in
        // the same batch.
        if due && self.running.load(Ordering::Acquire) == 0 {
            self.timeout_now();
        } else if wake_timer || due {
            self.timer.notify_one();
        }
    }

    /// Handles a timeout that is due already on this thread, and again while reports
    /// that arrived meanwhile make one due (a loop, not a recursion: processors finishing
    /// tasks steadily would otherwise deepen this thread's stack).
    fn timeout_now(self: &Arc<Self>) {
        loop {
            let mut out = Out::default();
            {
                let mut inner = self.inner.lock();
                let now = self.now();
                self.take_finished(&mut inner, now);
                inner.core.handle_timeout(now);
                inner.drain(&mut out, now);
            }
            let again = std::mem::take(&mut out.due);
            self.perform(out);
            self.after_unlock();
            if !again {
                return;
            }
        }
    }

    /// Sleeps until the core's next deadline (or until an event brings it forward) and
    /// calls the core's timeout handler.
    async fn run_timer(self: Arc<Self>) {
        loop {
            let mut out = Out::default();
            let deadline = {
                let mut inner = self.inner.lock();
                let now = self.now();
                self.take_finished(&mut inner, now);
                inner.core.handle_timeout(now);
                inner.armed = None;
                inner.drain(&mut out, now);
                inner.armed
            };
            // The timer is this task: no need to wake it.
            out.wake_timer = false;
            self.perform(out);
            self.after_unlock();
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            match deadline {
                Some(at) => {
                    let sleep = tokio::time::sleep_until((self.epoch + at).into());
                    tokio::select! {
                        _ = sleep => {}
                        _ = self.timer.notified() => {}
                    }
                }
                None => self.timer.notified().await,
            }
        }
    }

    async fn serve_driver(
        self: &Arc<Self>,
        receiver: &mut FrameReceiver,
    ) -> Result<WorkerEnd, String> {
        loop {
            let frame = match receiver.recv().await {
                Ok(f) => f,
                // The driver declared this worker lost, went away without saying shutdown,
                // or the link broke.
                Err(e) => {
                    return Ok(WorkerEnd::LinkLost {
                        why: e.to_string(),
                        joined_for: Duration::ZERO,
                    })
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
                // A large batch is fed a few tasks per lock, so processors finishing tasks
                // are not held up behind it and its first tasks start at once.
                ToWorker::Run(tasks) => {
                    let mut tasks = tasks.into_iter().peekable();
                    while tasks.peek().is_some() {
                        self.drive(|i, now| {
                            for t in tasks.by_ref().take(RUN_TASKS_PER_LOCK) {
                                i.core.handle_run(now, t);
                            }
                        });
                    }
                }
                msg => self.drive(|i, now| i.core.handle_driver_msg(now, msg)),
            }
            if self.stopping.load(Ordering::Acquire) {
                return Ok(WorkerEnd::Shutdown);
            }
        }
    }

    /// Reports a task's result (or why it has none) to the core. Called on processor
    /// threads, which must not wait for the core while another event holds it: the report
    /// is queued and fed by this thread if the core is free, else by its holder.
    fn finished(
        self: &Arc<Self>,
        task: dagger_core::TaskId,
        run: Duration,
        result: Result<Data, TaskError>,
    ) {
        self.push_finished(FinishedTask {
            task,
            proc: None,
            run,
            result,
        });
    }

    fn push_finished(self: &Arc<Self>, f: FinishedTask) {
        self.finished_queue.lock().push(f);
        self.feed_finished();
    }

    /// [`Worker::finished`] for a task that [`Worker::start`] handed to a processor.
    fn ran(
        self: &Arc<Self>,
        task: dagger_core::TaskId,
        proc: ProcId,
        run: Duration,
        result: Result<Data, TaskError>,
    ) {
        self.running.fetch_sub(1, Ordering::AcqRel);
        self.push_finished(FinishedTask {
            task,
            proc: Some(proc),
            run,
            result,
        });
    }

    /// All inputs are here: run the task on its processor, or on the first of the
    /// worker's thread processors to be free if it may run on any ([`crew`]).
    fn start(self: &Arc<Self>, t: StartTask<Data>) {
        if t.any_thread && self.crew.has(t.proc.index) {
            self.running.fetch_add(1, Ordering::AcqRel);
            let assigned = t.proc.index;
            let guard = StartGuard {
                worker: self.clone(),
                task: Some(t),
            };
            self.crew.push(self, guard, assigned);
            return;
        }
        let Some(proc) = self.procs.get(t.proc.index).cloned() else {
            let err = TaskError::MoveFailed {
                task: t.task,
                cause: MoveFailure::NoSuchProcessor { proc: t.proc },
            };
            self.finished(t.task, Duration::ZERO, Err(err));
            return;
        };
        // A processor may drop a job without running it (it was shut down, or a user's
        // processor refuses work): the guard then reports the task failed, so nobody waits.
        self.running.fetch_add(1, Ordering::AcqRel);
        let mut guard = StartGuard {
            worker: self.clone(),
            task: Some(t),
        };
        proc.execute(Box::new(move || {
            if let Some(t) = guard.task.take() {
                guard.worker.run_task(t);
            }
        }));
    }

    fn run_task(self: &Arc<Self>, t: StartTask<Data>) {
        let StartTask {
            task,
            func,
            proc,
            args,
            attempt,
            ..
        } = t;
        // One span per run: its fields name the task wherever its function logs.
        let span = tracing::info_span!(
            target: "dagger::task",
            "task",
            task = %task,
            func = %func,
            worker = %self.id,
            proc = %proc,
            attempt
        );
        let _entered = span.enter();
        let Some(f) = registry::lookup(&func) else {
            let err = TaskError::UnknownFunction {
                task,
                func: func.to_string(),
                worker: self.id,
            };
            self.ran(task, proc, Duration::ZERO, Err(err));
            return;
        };
        let prev = CURRENT_PROC.with(|c| c.replace(Some(proc)));
        let t0 = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let moved = self.move_args(task, proc, f, &args)?;
            let mut bytes: Vec<Option<Vec<u8>>> = Vec::new();
            let mut vals: Vec<Option<Box<dyn std::any::Any + Send>>> = Vec::new();
            let mut values: Vec<ArgValue<'_>> = match moved {
                None => args.iter().map(|a| ArgValue::Bytes(a.as_ref())).collect(),
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
                                    task,
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
            let pool = self.result_pool();
            let call = || with_inputs(&args, || (f.call)(&mut values));
            registry::with_result_pool(pool, call).map_err(|e| TaskError::BadArguments {
                task,
                func: func.to_string(),
                message: e.to_string(),
            })
        }));
        let run = t0.elapsed();
        CURRENT_PROC.with(|c| c.set(prev));
        // The inputs go before the result is reported: a lent segment is handed back now.
        drop(args);
        let result = match result {
            Ok(Ok(TaskOutput::Bytes(bytes))) => Ok(Data::from(bytes)),
            Ok(Ok(TaskOutput::Stored(s))) => Ok(Data::new(ChunkBytes::Stored(s))),
            Ok(Ok(TaskOutput::Shared(v))) => Ok(Data::new(ChunkBytes::Shared(v))),
            Ok(Ok(TaskOutput::Device(buf))) => Ok(Data::device(buf)),
            Ok(Err(err)) => Err(err),
            Err(panic) => Err(TaskError::Panicked {
                task,
                func: func.to_string(),
                message: panic_message(&*panic),
            }),
        };
        self.ran(task, proc, run, result);
    }

    /// Inputs of a task on a processor that does not compute in host memory go through the
    /// move registry (from where each input lives — host memory, or the device a
    /// device-resident chunk is on — to that processor's kind, chosen by the parameter's
    /// type), so a move can turn host bytes into a device buffer on the way, or hand a
    /// buffer already on that device over without a copy. A device buffer as input of a
    /// CPU task reaches it as host bytes (copied once, kept with the chunk).
    fn move_args(
        &self,
        task: dagger_core::TaskId,
        proc_id: ProcId,
        f: &registry::TaskFn,
        args: &[Data],
    ) -> Result<Option<Vec<MoveValue>>, TaskError> {
        let Some(proc) = self.procs.get(proc_id.index) else {
            return Ok(None);
        };
        let kind = proc.kind();
        if kind == ProcKind::THREAD || kind == ProcKind::OS {
            return Ok(None);
        }
        let memory = proc.memory();
        let device = proc
            .as_any()
            .downcast_ref::<DeviceProc>()
            .map(|d| d.device());
        let mut target = MoveTarget::new(proc_id, &kind, &memory);
        if let Some(d) = device {
            target = target.with_device(d);
        }
        let types = (f.arg_types)();
        let mut out = Vec::with_capacity(args.len());
        for (i, a) in args.iter().enumerate() {
            let ty = types.get(i).copied().unwrap_or("");
            let (src, value) = match a.device_buffer() {
                Some(buf) => (
                    ProcKind::custom(buf.memory().kind.to_string()),
                    MoveValue::Device(buf),
                ),
                None => (ProcKind::THREAD, MoveValue::Bytes(a.as_ref().to_vec())),
            };
            let v = dagger_move::moves()
                .apply(&src, ty, value, &target)
                .map_err(|e| TaskError::MoveFailed {
                    task,
                    cause: move_failure(e),
                })?;
            out.push(v);
        }
        Ok(Some(out))
    }
}

/// A failed move towards a processor, as the task's failure: a full device is transient
/// (the task may run elsewhere, or later); anything else is the move's own refusal.
fn move_failure(e: dagger_move::MoveError) -> MoveFailure {
    match e {
        dagger_move::MoveError::Device(dagger_proc::device::DeviceError::OutOfMemory {
            memory,
            requested,
            available,
            capacity,
        }) => MoveFailure::DeviceFull {
            memory: memory.to_string(),
            requested,
            available,
            capacity,
        },
        e => MoveFailure::Conversion {
            message: e.to_string(),
        },
    }
}
