//! `ThreadProc`: one CPU core, served by one dedicated OS thread with a FIFO job queue.

use crate::current::{self, Identity};
use crate::error::ProcError;
use crate::processor::{Job, Processor};
use crate::sys;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use dagger_core::{MemorySpace, ProcId, ProcKind};
use parking_lot::Mutex;
use std::any::Any;
use std::collections::BTreeMap;
use std::error::Error;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

/// A boxed error a custom pinning function may return.
pub type PinFailure = Box<dyn Error + Send + Sync + 'static>;

/// How a [`ThreadProc`]'s thread binds itself to CPUs when it starts.
pub enum Pinning {
    /// Not at all: the operating system places the thread.
    None,
    /// To these CPUs (OS indices), with `sched_setaffinity`.
    Cpus(Vec<usize>),
    /// By calling this function on the new thread (e.g. hwloc's thread binding). The CPUs
    /// are what [`ThreadProc::cpus`] reports.
    With {
        /// The CPUs the function binds to (OS indices).
        cpus: Vec<usize>,
        /// Binds the calling thread.
        bind: Box<dyn FnOnce() -> Result<(), PinFailure> + Send + 'static>,
    },
}

impl std::fmt::Debug for Pinning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pinning::None => f.write_str("None"),
            Pinning::Cpus(c) => f.debug_tuple("Cpus").field(c).finish(),
            Pinning::With { cpus, .. } => f.debug_struct("With").field("cpus", cpus).finish(),
        }
    }
}

/// Configures and starts a [`ThreadProc`]; from [`ThreadProc::builder`].
#[derive(Debug)]
pub struct ThreadProcBuilder {
    name: String,
    label: String,
    properties: BTreeMap<String, String>,
    spin: Duration,
    pinning: Pinning,
}

impl ThreadProcBuilder {
    /// The OS thread's name (default `dagger-thread`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The label shown in the topology (default `thread`).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Adds a property shown in the topology.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// How long the idle thread polls its queue before it parks (default: the value of
    /// `DAGGER_SPIN_US`, else 20 µs). Spinning makes a job submitted right after the last
    /// one start in well under a microsecond instead of the ~20 µs a wake-up costs, at the
    /// price of burning the core meanwhile; zero parks at once.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// How the thread binds itself to CPUs (default: not at all).
    pub fn pinning(mut self, pinning: Pinning) -> Self {
        self.pinning = pinning;
        self
    }

    /// Starts the thread and waits until it has tried to pin itself, so that
    /// [`ThreadProc::pinned`] is known on return. A failure to pin is recorded (property
    /// `pinned=false`, `pin_error=...`), not returned. Costs a thread start (tens of µs).
    pub fn spawn(self) -> Result<ThreadProc, ProcError> {
        let ThreadProcBuilder {
            name,
            label,
            mut properties,
            spin,
            pinning,
        } = self;
        let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
        let shared = Arc::new(Shared {
            closed: AtomicBool::new(false),
            panics: AtomicU64::new(0),
            identity: OnceLock::new(),
        });
        let (pin_tx, pin_rx) = crossbeam_channel::bounded::<Option<String>>(1);
        let cpus = match &pinning {
            Pinning::None => Vec::new(),
            Pinning::Cpus(c) | Pinning::With { cpus: c, .. } => c.clone(),
        };
        let thread_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let outcome = match pinning {
                    Pinning::None => None,
                    Pinning::Cpus(c) => sys::pin_current_thread(&c).err().map(|e| error_chain(&e)),
                    Pinning::With { bind, .. } => bind().err().map(|e| error_chain(&*e)),
                };
                // The builder waits for this; it only fails if the builder is gone.
                let _ = pin_tx.send(outcome);
                serve(rx, spin, &thread_shared);
            })
            .map_err(|source| ProcError::SpawnThread {
                name: name.clone(),
                source,
            })?;
        // The thread sends exactly once before serving; a closed channel means it panicked
        // while pinning, which counts as not pinned.
        let outcome = pin_rx
            .recv()
            .unwrap_or_else(|_| Some("the thread died while pinning".into()));
        let pinned = !cpus.is_empty() && outcome.is_none();
        properties.insert("pinned".into(), pinned.to_string());
        if let Some(err) = outcome {
            properties.insert("pin_error".into(), err);
        }
        properties.insert("spin_us".into(), spin.as_micros().to_string());
        let thread_id = handle.thread().id();
        Ok(ThreadProc {
            tx,
            shared,
            handle: Mutex::new(Some(handle)),
            thread_id,
            name,
            label,
            properties,
            cpus,
            pinned,
            spin,
        })
    }
}

fn error_chain(e: &(dyn Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

enum Msg {
    Run(Job),
    Stop,
}

struct Shared {
    closed: AtomicBool,
    panics: AtomicU64,
    identity: OnceLock<Identity>,
}

/// The body of a processor thread: take jobs in order, run each under `catch_unwind`.
fn serve(rx: Receiver<Msg>, spin: Duration, shared: &Shared) {
    let mut attached = false;
    while let Some(msg) = next(&rx, spin) {
        let job = match msg {
            Msg::Run(job) => job,
            Msg::Stop => break,
        };
        if !attached {
            if let Some(ident) = shared.identity.get() {
                current::set_identity(ident.clone());
                attached = true;
            }
        }
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            // The panic hook has already reported it; the thread keeps serving.
            shared.panics.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The next message: polls for up to `spin`, then blocks. `None` once every sender is gone.
fn next(rx: &Receiver<Msg>, spin: Duration) -> Option<Msg> {
    match rx.try_recv() {
        Ok(m) => return Some(m),
        Err(TryRecvError::Disconnected) => return None,
        Err(TryRecvError::Empty) => {}
    }
    if !spin.is_zero() {
        let start = Instant::now();
        loop {
            for _ in 0..64 {
                match rx.try_recv() {
                    Ok(m) => return Some(m),
                    Err(TryRecvError::Disconnected) => return None,
                    Err(TryRecvError::Empty) => std::hint::spin_loop(),
                }
            }
            if start.elapsed() >= spin {
                break;
            }
        }
    }
    rx.recv().ok()
}

/// A CPU core as a processor: one dedicated OS thread, optionally pinned to the core, that
/// runs the jobs given to [`execute`](Processor::execute) one at a time in submission
/// order.
///
/// - An idle thread polls its queue for a short while (see [`ThreadProcBuilder::spin`])
///   before parking.
/// - A panicking job is caught; the thread goes on with the next one
///   ([`panicked_jobs`](Self::panicked_jobs) counts them).
/// - Once [`attach`](Processor::attach)ed, jobs see this processor as
///   [`current`](crate::current).
/// - Dropping it (or [`shutdown`](Processor::shutdown)) lets queued jobs finish, then joins
///   the thread — unless called from that thread itself, which then exits on its own.
///
/// Not guaranteed: that the thread stays on its core if pinning failed (property
/// `pinned=false`), or any fairness between processors.
pub struct ThreadProc {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    handle: Mutex<Option<JoinHandle<()>>>,
    thread_id: ThreadId,
    name: String,
    label: String,
    properties: BTreeMap<String, String>,
    cpus: Vec<usize>,
    pinned: bool,
    spin: Duration,
}

impl ThreadProc {
    /// A builder with the defaults: unpinned, spin from `DAGGER_SPIN_US`.
    pub fn builder() -> ThreadProcBuilder {
        ThreadProcBuilder {
            name: "dagger-thread".into(),
            label: "thread".into(),
            properties: BTreeMap::new(),
            spin: sys::spin_from_env(),
            pinning: Pinning::None,
        }
    }

    /// A thread processor pinned to OS CPU `cpu`, named `dagger-thread-{cpu}`, labelled
    /// `cpu {cpu}`. Costs a thread start.
    pub fn pinned_to(cpu: usize) -> Result<ThreadProc, ProcError> {
        Self::builder()
            .name(format!("dagger-thread-{cpu}"))
            .label(format!("cpu {cpu}"))
            .property("cpu", cpu.to_string())
            .pinning(Pinning::Cpus(vec![cpu]))
            .spawn()
    }

    /// An unpinned thread processor with default settings. Costs a thread start.
    pub fn unpinned() -> Result<ThreadProc, ProcError> {
        Self::builder().spawn()
    }

    /// The CPUs (OS indices) the thread was asked to run on; empty if unpinned.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// True if the thread is bound to [`cpus`](Self::cpus).
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// How long the idle thread spins before parking.
    pub fn spin(&self) -> Duration {
        self.spin
    }

    /// The OS thread's name.
    pub fn thread_name(&self) -> &str {
        &self.name
    }

    /// The id of the processor's thread (compare with `std::thread::current().id()`).
    pub fn thread_id(&self) -> ThreadId {
        self.thread_id
    }

    /// How many jobs have panicked on this processor so far.
    pub fn panicked_jobs(&self) -> u64 {
        self.shared.panics.load(Ordering::Relaxed)
    }

    /// True once [`close`](Self::close) or [`shutdown`](Processor::shutdown) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Stops accepting jobs without waiting: jobs already queued still run, later ones are
    /// dropped unrun. Idempotent; never blocks.
    pub fn close(&self) {
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            // Fails only if the thread is already gone.
            let _ = self.tx.send(Msg::Stop);
        }
    }

    /// Waits for the thread to finish after [`close`](Self::close). Returns at once when
    /// called on the processor's own thread (it cannot wait for itself) or a second time.
    pub fn join(&self) {
        if std::thread::current().id() == self.thread_id {
            return;
        }
        let handle = self.handle.lock().take();
        if let Some(h) = handle {
            // Jobs are run under catch_unwind, so the thread itself does not panic.
            let _ = h.join();
        }
    }
}

impl Processor for ThreadProc {
    fn kind(&self) -> ProcKind {
        ProcKind::THREAD
    }

    fn memory(&self) -> MemorySpace {
        MemorySpace::HOST
    }

    fn label(&self) -> String {
        self.label.clone()
    }

    fn properties(&self) -> BTreeMap<String, String> {
        self.properties.clone()
    }

    /// Queues `job` behind the jobs already given (one channel push, plus a wake-up if the
    /// thread is parked). After shutdown the job is dropped unrun.
    fn execute(&self, job: Job) {
        if self.is_closed() {
            return;
        }
        // Fails only if the thread has exited; the job is then dropped, as documented.
        let _ = self.tx.send(Msg::Run(job));
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn attach(&self, id: ProcId, this: Weak<dyn Processor>) {
        // Only the first attachment counts: the identity of a thread never changes. A
        // worker id learnt later (`set_worker`) is applied when the id is read.
        let _ = self.shared.identity.set(Identity { id, proc: this });
    }

    fn shutdown(&self) {
        self.close();
        self.join();
    }
}

impl Drop for ThreadProc {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for ThreadProc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadProc")
            .field("name", &self.name)
            .field("cpus", &self.cpus)
            .field("pinned", &self.pinned)
            .field("spin", &self.spin)
            .finish()
    }
}
