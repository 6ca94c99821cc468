//! `ThreadProc`: one CPU core, served by one dedicated OS thread with a FIFO job queue.

use crate::current::{self, Identity};
use crate::error::ProcError;
use crate::idle;
use crate::processor::{Job, Processor};
use crate::sys;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use dagger_core::{MemorySpace, ProcId, ProcKind};
use parking_lot::Mutex;
use rustix::thread::futex;
use std::any::Any;
use std::collections::BTreeMap;
use std::error::Error;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
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
            asleep: AtomicBool::new(false),
            free: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            bell: AtomicU32::new(0),
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
                SERVING.with(|s| s.set(Arc::as_ptr(&thread_shared)));
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
    /// The thread is asleep (or about to be) on `bell`.
    asleep: AtomicBool,
    /// The thread is awake with an empty queue, looking for work: a job given to it now
    /// starts at once. Cleared by a [`ThreadProc::try_claim`], before it sleeps and when
    /// it takes a job.
    free: AtomicBool,
    /// The thread runs a job (set as it takes one, cleared when it looks for the next).
    busy: AtomicBool,
    /// The futex word the thread sleeps on; changed to wake it.
    bell: AtomicU32,
}

impl Shared {
    /// Called after a message was queued: wakes the thread if it sleeps. Pairs with the
    /// thread's "set `asleep`, then look at the queue" in [`next`]: the fences order each
    /// side's write before its read, so either the thread sees the message or this sees
    /// `asleep` (a wake before the wait makes the wait return at once, since the word
    /// changed).
    fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) && self.asleep.swap(false, Ordering::AcqRel) {
            self.bell.fetch_add(1, Ordering::Release);
            let _ = futex::wake(&self.bell, futex::Flags::PRIVATE, 1);
        }
    }
}

thread_local! {
    /// The processor whose thread this is (null on other threads); only compared.
    static SERVING: std::cell::Cell<*const Shared> = const { std::cell::Cell::new(std::ptr::null()) };
}

/// Whether this kernel has `futex_waitv` (Linux 5.16 and later); cleared the first time
/// it is found missing, after which idle threads sleep on their own word only.
static WAITV: AtomicBool = AtomicBool::new(true);

/// The longest a thread sleeps before it looks again on its own (a wake-up normally comes
/// first).
const SLEEP: Duration = if cfg!(test) {
    // Long in this crate's tests, so that a wake-up they expect cannot come from it.
    Duration::from_secs(120)
} else {
    Duration::from_millis(100)
};

/// How many times an idle thread yields the CPU between spinning and sleeping.
const YIELDS: usize = 4;

/// Sleeps until `bell` no longer holds `own` or, with `words`, until one of them no longer
/// holds its armed value, for at most [`SLEEP`].
fn sleep(bell: &AtomicU32, own: u32, words: &[idle::Armed]) {
    let relative = futex::Timespec {
        tv_sec: SLEEP.as_secs() as i64,
        tv_nsec: SLEEP.subsec_nanos() as _,
    };
    if words.is_empty() || !WAITV.load(Ordering::Relaxed) {
        let _ = futex::wait(bell, futex::Flags::PRIVATE, own, Some(&relative));
        return;
    }
    let mut waits = Vec::with_capacity(words.len() + 1);
    let mut own_wait = futex::Wait::new();
    own_wait.val = u64::from(own);
    own_wait.uaddr = futex::WaitPtr::new(bell as *const AtomicU32 as *mut _);
    own_wait.flags = futex::WaitFlags::SIZE_U32 | futex::WaitFlags::PRIVATE;
    waits.push(own_wait);
    for a in words {
        let mut w = futex::Wait::new();
        w.val = u64::from(a.value);
        w.uaddr = futex::WaitPtr::new(a.word.word() as *const AtomicU32 as *mut _);
        // Shared with the processes that wake it: not private.
        w.flags = futex::WaitFlags::SIZE_U32;
        waits.push(w);
    }
    // `futex_waitv` takes an absolute time on the clock it is given.
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let mut deadline = futex::Timespec {
        tv_sec: now.tv_sec + SLEEP.as_secs() as i64,
        tv_nsec: now.tv_nsec + SLEEP.subsec_nanos() as i64,
    };
    if deadline.tv_nsec >= 1_000_000_000 {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1_000_000_000;
    }
    // The words stay valid: `words` holds their owners until the sleep is over.
    match futex::waitv(
        &waits,
        futex::WaitvFlags::empty(),
        Some(&deadline),
        rustix::time::ClockId::Monotonic,
    ) {
        Ok(_) => {}
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::TIMEDOUT | rustix::io::Errno::INTR) => {}
        // No `futex_waitv` here (an older kernel, or a sandbox that forbids it): return
        // at once, so the caller withdraws what it armed, and never arm again.
        Err(_) => WAITV.store(false, Ordering::Relaxed),
    }
}

/// The body of a processor thread: take jobs in order, run each under `catch_unwind`.
fn serve(rx: Receiver<Msg>, spin: Duration, shared: &Shared) {
    let mut attached = false;
    let mut words = Words::default();
    while let Some(msg) = {
        shared.busy.store(false, Ordering::Relaxed);
        let msg = next(&rx, spin, shared, &mut words);
        shared.free.store(false, Ordering::Relaxed);
        shared.busy.store(true, Ordering::Relaxed);
        msg
    } {
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

/// The words a thread announced itself on, kept for their capacity.
#[derive(Default)]
struct Words {
    /// Announced as polling while the thread spins.
    watched: Vec<Arc<dyn idle::WakeWord>>,
    /// Armed while it sleeps.
    armed: Vec<idle::Armed>,
}

/// Polls the queue (and the idle work) for up to `spin`, then yields a few times: on a
/// busy machine this lets the thread that will submit the next job run, and a job
/// submitted meanwhile costs no sleep and wake. `Some` once the queue gave something.
fn spin_for(rx: &Receiver<Msg>, spin: Duration) -> Option<Option<Msg>> {
    let take = |rx: &Receiver<Msg>| match rx.try_recv() {
        Ok(m) => Some(Some(m)),
        Err(TryRecvError::Disconnected) => Some(None),
        Err(TryRecvError::Empty) => None,
    };
    let mut start = Instant::now();
    loop {
        for _ in 0..64 {
            if let Some(m) = take(rx) {
                return Some(m);
            }
            std::hint::spin_loop();
        }
        // Work that arrives meanwhile may start a job on this thread: keep spinning
        // while there is some.
        if idle::poll() {
            start = Instant::now();
            continue;
        }
        if start.elapsed() >= spin {
            break;
        }
        // Another thread may wait for this CPU (the one that will send what this thread
        // waits for, on a machine with more threads than cores, or pinned to the same
        // core): let it run now rather than when the spin is over. Returns at once when
        // nothing else is runnable here.
        std::thread::yield_now();
    }
    for _ in 0..YIELDS {
        std::thread::yield_now();
        idle::poll();
        if let Some(m) = take(rx) {
            return Some(m);
        }
    }
    None
}

/// The next message: polls for up to `spin` (running the process's [`idle`] work
/// meanwhile), yields a few times, then sleeps until [`Shared::wake`] or, for a thread that
/// spins, until a source of idle work has some. `None` once every sender is gone.
fn next(rx: &Receiver<Msg>, spin: Duration, shared: &Shared, w: &mut Words) -> Option<Msg> {
    match rx.try_recv() {
        Ok(m) => return Some(m),
        Err(TryRecvError::Disconnected) => return None,
        Err(TryRecvError::Empty) => {}
    }
    if !spin.is_zero() {
        shared.free.store(true, Ordering::Relaxed);
        // Announced as polling meanwhile, so the sources of idle work wake nobody for
        // what this thread will take; withdrawn before any job runs, then polled once
        // more for what came as it was withdrawn.
        idle::watch(&mut w.watched);
        let found = spin_for(rx, spin);
        idle::unwatch(&mut w.watched);
        idle::poll();
        if let Some(m) = found {
            return m;
        }
    }
    match rx.try_recv() {
        Ok(m) => return Some(m),
        Err(TryRecvError::Disconnected) => return None,
        Err(TryRecvError::Empty) => {}
    }
    let words = &mut w.armed;
    let disarm = |words: &mut Vec<idle::Armed>| {
        for a in words.drain(..) {
            a.word.disarm();
        }
    };
    loop {
        shared.free.store(false, Ordering::Relaxed);
        shared.asleep.store(true, Ordering::Relaxed);
        let own = shared.bell.load(Ordering::Relaxed);
        fence(Ordering::SeqCst);
        // A thread that does not spin (a device's host thread) takes no idle work.
        let ready = spin.is_zero() || !WAITV.load(Ordering::Relaxed) || idle::arm(words);
        let msg = rx.try_recv();
        if ready && matches!(msg, Err(TryRecvError::Empty)) {
            sleep(&shared.bell, own, words);
        }
        shared.asleep.store(false, Ordering::Relaxed);
        disarm(words);
        match msg {
            Ok(m) => return Some(m),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        // Woken by a source of idle work (or not asleep, since one had work): take it
        // before looking at the queue again, so a job there does not hold it up. A job
        // it starts may be given to this thread (it is free meanwhile).
        if !spin.is_zero() {
            if rx.is_empty() {
                shared.free.store(true, Ordering::Relaxed);
            }
            idle::poll();
        }
        match rx.try_recv() {
            Ok(m) => return Some(m),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
    }
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

    /// Claims the processor if its thread is awake with nothing to run (it spins for
    /// work, or runs the process's [`idle`] work): a job given to it right after starts at
    /// once, without a wake-up. A claimed processor counts as busy until its thread has
    /// taken a job and looks for work again, so two callers do not both pick it. A hint,
    /// not a reservation: [`execute`](Processor::execute) works in every state, and a
    /// claim that is not followed by a job only makes the processor look busy until the
    /// thread's next job or sleep.
    pub fn try_claim(&self) -> bool {
        self.shared.free.load(Ordering::Relaxed)
            && self
                .shared
                .free
                .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether the thread is running a job. Once it returns, the thread looks at its queue
    /// again: a job given to a processor that is not busy waits for no other.
    pub fn is_busy(&self) -> bool {
        self.shared.busy.load(Ordering::Relaxed)
    }

    /// Whether the calling thread is this processor's own.
    pub fn is_current(&self) -> bool {
        SERVING.with(|s| s.get() == Arc::as_ptr(&self.shared))
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
            self.shared.wake();
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
        self.shared.wake();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idle::{Armed, IdleWork, WakeWord};
    use std::sync::atomic::AtomicUsize;

    /// A source of idle work with one word of its own: counts its arms and polls.
    struct Source {
        word: Arc<Word>,
        arms: AtomicUsize,
        polls: AtomicUsize,
    }

    struct Word(AtomicU32);

    impl WakeWord for Word {
        fn word(&self) -> &AtomicU32 {
            &self.0
        }
        fn disarm(&self) {}
        fn watch(&self, _on: bool) {}
    }

    impl IdleWork for Source {
        fn poll(&self) -> bool {
            self.polls.fetch_add(1, Ordering::SeqCst);
            false
        }
        fn arm(&self, words: &mut Vec<Armed>) -> bool {
            self.arms.fetch_add(1, Ordering::SeqCst);
            words.push(Armed {
                word: self.word.clone(),
                value: self.word.0.load(Ordering::SeqCst),
            });
            true
        }
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Both sleeps of an idle thread: on its own word and a source's (with `futex_waitv`),
    /// and, once `futex_waitv` is found missing, on its own word only, arming nothing.
    #[test]
    fn an_asleep_thread_wakes_for_its_sources_and_without_waitv_for_its_jobs_only() {
        let source = Arc::new(Source {
            word: Arc::new(Word(AtomicU32::new(0))),
            arms: AtomicUsize::new(0),
            polls: AtomicUsize::new(0),
        });
        let work: Arc<dyn IdleWork> = source.clone();
        idle::register(&work);
        let proc = ThreadProc::builder()
            .spin(Duration::from_micros(50))
            .spawn()
            .expect("thread");
        let (tx, rx) = std::sync::mpsc::channel();
        let job = |tx: std::sync::mpsc::Sender<()>| -> Job {
            Box::new(move || tx.send(()).expect("send"))
        };
        proc.execute(job(tx.clone()));
        rx.recv().expect("the job ran");
        // Asleep with the source's word armed (the kernel here has futex_waitv).
        wait_until("the thread never armed the source", || {
            source.arms.load(Ordering::SeqCst) > 0
        });
        let polls = source.polls.load(Ordering::SeqCst);
        source.word.0.fetch_add(1, Ordering::SeqCst);
        let _ = futex::wake(&source.word.0, futex::Flags::empty(), 1);
        wait_until("the source's wake did not reach the thread", || {
            source.polls.load(Ordering::SeqCst) > polls
        });

        // Without futex_waitv (as found on an older kernel) the thread arms nothing and
        // still wakes for a job.
        WAITV.store(false, Ordering::SeqCst);
        proc.execute(job(tx.clone()));
        rx.recv().expect("the job ran");
        std::thread::sleep(Duration::from_millis(20));
        let arms = source.arms.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        proc.execute(job(tx));
        rx.recv().expect("a job given to a sleeping thread ran");
        assert_eq!(
            source.arms.load(Ordering::SeqCst),
            arms,
            "armed without futex_waitv"
        );
        drop(proc);
        drop(work);
    }

    /// A claim takes a thread that spins for work, once; a thread that runs a job, or
    /// that does not spin, cannot be claimed; a job given to a claimed thread frees it
    /// again once it is done.
    #[test]
    fn only_a_free_thread_is_claimed_and_only_once() {
        let proc = ThreadProc::builder()
            // Spins for the whole test once idle: free until claimed.
            .spin(Duration::from_secs(600))
            .spawn()
            .expect("thread");
        assert!(!proc.is_current());
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let here = Arc::new(AtomicBool::new(false));
        let me = Arc::new(proc);
        let weak = Arc::downgrade(&me);
        let seen = here.clone();
        me.execute(Box::new(move || {
            let p = weak.upgrade().expect("the processor");
            seen.store(p.is_current(), Ordering::SeqCst);
            tx.send(()).expect("send");
            go_rx.recv().expect("go");
        }));
        rx.recv().expect("the job started");
        assert!(here.load(Ordering::SeqCst), "a job's thread is not current");
        assert!(!me.try_claim(), "a thread running a job was claimed");
        go_tx.send(()).expect("go");
        wait_until("the idle thread was never free", || me.try_claim());
        assert!(!me.try_claim(), "a thread was claimed twice");
        let (tx, rx) = std::sync::mpsc::channel();
        me.execute(Box::new(move || tx.send(()).expect("send")));
        rx.recv().expect("the claimed thread ran the job");
        wait_until("the thread was not free after the job", || me.try_claim());

        let lazy = ThreadProc::builder()
            .spin(Duration::ZERO)
            .spawn()
            .expect("thread");
        let (tx, rx) = std::sync::mpsc::channel();
        lazy.execute(Box::new(move || tx.send(()).expect("send")));
        rx.recv().expect("ran");
        std::thread::sleep(Duration::from_millis(20));
        assert!(!lazy.try_claim(), "a thread that does not spin was claimed");
    }
}
