//! The direct lane: tasks of a context that links no processes run straight on the
//! driver's own thread processors, without the scheduler, without encoding a `Run` or a
//! `Done`, and without a trip through the driver loop.
//!
//! In such a context no worker can ever join, so there is nothing to place across
//! processes, no data to move between them and no process that can be lost: what is
//! left of scheduling is "run it when its inputs are there, on a free core". A task goes
//! this way when it can be run so exactly as the scheduler would run it:
//! - its function is registered in this process and has no device-typed parameter or
//!   result (those are placed on device processors by the scheduler);
//! - its options are the defaults (no scope, priority or retries to honour);
//! - each of its inputs is a value or the result of another direct task.
//!
//! Any other task goes through the scheduler as before. One that takes the result of a
//! direct task is handed to the driver once that result exists, with the result as a
//! value (see [`Direct::submit`]), so the two kinds mix freely in one graph.
//!
//! A direct task waits for its inputs through continuations on their slots
//! ([`Slot::then`]): the thread that completes the last input queues the task, on its
//! own processor, so a chain stays on one core. Otherwise tasks go to the thread
//! processors in turn. A panic is caught and reported as [`TaskError::Panicked`], a failed
//! input as [`TaskError::DependencyFailed`], and a task whose processor shut down before
//! it ran as [`TaskError::Shutdown`]: every slot is completed, whatever happens.
//!
//! `ContextBuilder::direct(false)` or `DAGGER_DIRECT=0` turns the lane off, and a
//! context that records a timeline, serves the live view or shows progress never uses it
//! (those show every task's run, which only the scheduler's path reports).

use crate::args::ArgIn;
use crate::context::{Args, TaskInfo};
use crate::driver::DriverCmd;
use crate::handle::{Outcome, Slot};
use crate::registry::{ArgValue, TaskFn, TaskOutput};
use dagger_core::hash::IdHashMap;
use dagger_core::{Arg, Options, Part, ProcId, ProcKind, TaskError, TaskId, TaskSpec, WorkerId};
use dagger_proc::Processor;
use dagger_sched::Completion;
use parking_lot::Mutex;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Tasks for the driver, each with its handle's slot if it has one.
type Batch = Vec<(TaskSpec, Option<Arc<Slot>>)>;

/// The environment variable that turns the lane off (`0`) for every context.
pub const ENV_DIRECT: &str = "DAGGER_DIRECT";

/// Whether the environment allows the lane.
pub(crate) fn allowed_by_env() -> bool {
    !matches!(
        std::env::var(ENV_DIRECT).as_deref(),
        Ok("0" | "false" | "off")
    )
}

/// The thread processors of the driver's own worker, once it joined.
struct Procs {
    worker: WorkerId,
    /// Each thread processor and its index in the worker's processor list.
    threads: Vec<(u32, Arc<dyn Processor>)>,
    /// Tasks each one finished (a counter per thread: no cache line shared between them).
    finished: Vec<Padded<AtomicU64>>,
    /// The pump of each.
    runners: Vec<Arc<Runner>>,
    /// The lane's one queue, which every pump takes from: a thread that is free takes
    /// the next task, so a long or blocked task holds up no other.
    queue: Queue,
    /// Pumps queued or running.
    pumps: Padded<AtomicUsize>,
}

/// The lane's queue of ready tasks: a bounded lock-free ring, and behind it, once the
/// ring is full, a list under a lock. Queueing a task allocates nothing (a linked queue
/// allocates a block every few dozen tasks on the submitting thread, freed on another,
/// and mid-size blocks make glibc consolidate its small-chunk caches). Tasks leave in the
/// order they came: while the list holds any, new ones join it, and it is taken from only
/// once the ring is empty.
struct Queue {
    ring: crossbeam_queue::ArrayQueue<Job>,
    overflow: Mutex<std::collections::VecDeque<Job>>,
    /// How many jobs the list holds, read without its lock.
    overflowed: AtomicUsize,
}

/// Ready tasks the ring holds (with their work: 128 bytes each).
const RING: usize = 1024;

impl Queue {
    fn new() -> Self {
        Self {
            ring: crossbeam_queue::ArrayQueue::new(RING),
            overflow: Mutex::new(std::collections::VecDeque::new()),
            overflowed: AtomicUsize::new(0),
        }
    }

    fn push(&self, job: Job) {
        let job = if self.overflowed.load(Ordering::SeqCst) == 0 {
            match self.ring.push(job) {
                Ok(()) => return,
                Err(job) => job,
            }
        } else {
            job
        };
        let mut list = self.overflow.lock();
        list.push_back(job);
        self.overflowed.store(list.len(), Ordering::SeqCst);
    }

    fn pop(&self) -> Option<Job> {
        if let Some(job) = self.ring.pop() {
            return Some(job);
        }
        if self.overflowed.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut list = self.overflow.lock();
        let job = list.pop_front();
        self.overflowed.store(list.len(), Ordering::SeqCst);
        job
    }

    fn is_empty(&self) -> bool {
        self.ring.is_empty() && self.overflowed.load(Ordering::SeqCst) == 0
    }
}

/// A value alone on its cache lines (two, for the adjacent-line prefetcher), so that
/// threads updating different ones do not slow each other down.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// The lane of one context.
pub(crate) struct Direct {
    procs: OnceLock<Procs>,
    /// Set (and signalled) once the driver's own worker attached, with or without threads.
    attached: (parking_lot::Mutex<bool>, parking_lot::Condvar),
    closed: AtomicBool,
    /// The next processor for a task that no finished input placed.
    next: Padded<AtomicUsize>,
    /// Direct tasks whose slot is alive, for the tasks that name them by id.
    tasks: Mutex<IdHashMap<TaskId, Weak<Slot>>>,
    /// Batches for the driver, in submission order, waiting for direct tasks' results
    /// (see [`Direct::submit`]).
    waiting: Mutex<std::collections::VecDeque<Waiting>>,
    submitted: Padded<AtomicU64>,
    failed: Padded<AtomicU64>,
}

thread_local! {
    /// The lane whose task this thread is running (its address), while the task
    /// completes: a dependent it makes ready goes to [`NEXT`].
    static ON_LANE: Cell<usize> = const { Cell::new(0) };
    /// The task this pump runs next: the dependent that the task it just ran made ready,
    /// so that a chain stays on one core and skips the queue.
    static NEXT: std::cell::RefCell<Option<Job>> = const { std::cell::RefCell::new(None) };
}

/// What a direct task's slot keeps besides what every slot has (its lane is the slot's
/// `lane`, its outcome the slot's outcome): where and how long it ran, and what it waits
/// for. Held inline in every slot (24 bytes) and used only by direct tasks, so that a
/// direct task is one allocation on the thread that spawns it: that thread bounds the
/// lane's rate, and a fanout's first round touches new memory for every task in flight.
pub(crate) struct DirectSlot {
    /// Whether the slot is a direct task's (fixed when the slot is made).
    direct: bool,
    /// Whether its id was handed out ([`crate::Handle::id`]): only then can a task name
    /// it by id, and the lane keeps it in its map of tasks by id.
    exposed: AtomicBool,
    /// Inputs not yet finished, plus one held by the spawner until it registered them all
    /// (used only by a task that waits for inputs).
    missing: AtomicU32,
    /// Where and how long it ran: 1 + the index in the lane's thread list of the
    /// processor that ran it in the top [`RAN_ON_BITS`] bits (0 before it ran), the
    /// nanoseconds it ran in the others (saturated).
    ran: AtomicU64,
    /// The work of a task that waits for inputs, until the last of them finished (a task
    /// with none to wait for goes to the queue with its work at once); null otherwise.
    waiting: AtomicPtr<Work>,
}

/// Bits of [`DirectSlot::ran`] that name the processor.
const RAN_ON_BITS: u32 = 16;

/// The nanoseconds [`DirectSlot::ran`] holds at most (about 78 hours).
const RAN_NS_MAX: u64 = (1 << (64 - RAN_ON_BITS)) - 1;

/// What a direct task runs.
struct Work {
    func: &'static TaskFn,
    /// Values, and direct tasks of the lane (see [`Direct::takes_only_own`]).
    inputs: Args,
}

impl DirectSlot {
    /// The data of a slot that is not a direct task's.
    pub(crate) fn unused() -> Self {
        Self::new(false, 0)
    }

    fn new(direct: bool, missing: u32) -> Self {
        Self {
            direct,
            exposed: AtomicBool::new(false),
            missing: AtomicU32::new(missing),
            ran: AtomicU64::new(0),
            waiting: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Whether it belongs to a direct task.
    pub(crate) fn is_direct(&self) -> bool {
        self.direct
    }

    /// Makes the task findable by its id, once its id is handed out.
    pub(crate) fn expose(&self, lane: &Direct, slot: &Arc<Slot>) {
        if !self.exposed.load(Ordering::Relaxed) && !self.exposed.swap(true, Ordering::AcqRel) {
            lane.tasks.lock().insert(slot.id, Arc::downgrade(slot));
        }
    }

    pub(crate) fn forget(&self, lane: &Direct, id: TaskId) {
        if self.exposed.load(Ordering::Acquire) {
            lane.tasks.lock().remove(&id);
        }
    }

    /// Sets the work of a task that waits for inputs.
    fn set_waiting(&self, work: Work) {
        let old = self
            .waiting
            .swap(Box::into_raw(Box::new(work)), Ordering::AcqRel);
        debug_assert!(old.is_null(), "a direct task's work is set once");
    }

    /// Takes the work of a task that waited for inputs (once).
    fn take_waiting(&self) -> Option<Box<Work>> {
        let p = self.waiting.swap(std::ptr::null_mut(), Ordering::AcqRel);
        // SAFETY: a non-null pointer came from `Box::into_raw` in `set_waiting`, and the
        // swap hands it to this caller alone.
        (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
    }

    /// Records where (lane processor `at`) and how long the task ran.
    fn record_run(&self, at: usize, run: Duration) {
        let ns = u64::try_from(run.as_nanos()).map_or(RAN_NS_MAX, |n| n.min(RAN_NS_MAX));
        let on = (at as u64 + 1).min((1 << RAN_ON_BITS) - 1);
        self.ran
            .store(on << (64 - RAN_ON_BITS) | ns, Ordering::Release);
    }

    /// Where and how long the task ran, once it did.
    pub(crate) fn info(&self, lane: &Direct, task: TaskId) -> Option<TaskInfo> {
        let ran = self.ran.load(Ordering::Acquire);
        let at = (ran >> (64 - RAN_ON_BITS)).checked_sub(1)?;
        let procs = lane.procs.get()?;
        let (index, _) = procs.threads.get(at as usize)?;
        let proc = ProcId::new(procs.worker, *index);
        Some(TaskInfo {
            task,
            proc: Some(proc),
            processor: format!("{}[{}]@{}", ProcKind::THREAD, proc.index, proc.worker),
            attempts: 1,
            // The lane does not time a task from its submission (one clock read less on
            // the submitting thread).
            turnaround: None,
            run_time: Some(Duration::from_nanos(ran & RAN_NS_MAX)),
            direct: true,
        })
    }
}

impl Drop for DirectSlot {
    fn drop(&mut self) {
        // The work of a task that never ran (its lane closed first).
        drop(self.take_waiting());
    }
}

/// A queued direct task with its work. Dropped unrun (its processor shut down), it
/// fails the task.
struct Job(Option<(Arc<Slot>, Work)>);

impl Drop for Job {
    fn drop(&mut self) {
        if let Some((slot, work)) = self.0.take() {
            drop(work);
            shut_out(slot);
        }
    }
}

/// The lane data of a direct task's slot, and its lane.
fn lane_data(slot: &Slot) -> (&DirectSlot, &Arc<Direct>) {
    match (slot.direct(), &slot.lane) {
        (Some(d), Some(lane)) => (d, lane),
        _ => unreachable!("a direct task's slot is a direct slot with its lane"),
    }
}

/// Fails a task that will not run because the lane closed. Its dependents fail the same
/// way, from a queue rather than by recursion: a long chain must not deepen the stack.
fn shut_out(slot: Arc<Slot>) {
    thread_local! {
        static QUEUE: std::cell::RefCell<Vec<Arc<Slot>>> = const { std::cell::RefCell::new(Vec::new()) };
        static ACTIVE: Cell<bool> = const { Cell::new(false) };
    }
    QUEUE.with(|q| q.borrow_mut().push(slot));
    if ACTIVE.with(|a| a.replace(true)) {
        return;
    }
    while let Some(slot) = QUEUE.with(|q| q.borrow_mut().pop()) {
        let (d, lane) = lane_data(&slot);
        // Its inputs are let go (they may be the last holders of other tasks).
        drop(d.take_waiting());
        lane.failed.0.fetch_add(1, Ordering::Relaxed);
        slot.complete(Err(TaskError::Shutdown { task: slot.id }));
    }
    ACTIVE.with(|a| a.set(false));
}

impl Direct {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            procs: OnceLock::new(),
            attached: (parking_lot::Mutex::new(false), parking_lot::Condvar::new()),
            closed: AtomicBool::new(false),
            next: Padded::default(),
            tasks: Mutex::new(IdHashMap::default()),
            waiting: Mutex::new(std::collections::VecDeque::new()),
            submitted: Padded::default(),
            failed: Padded::default(),
        })
    }

    /// Called by the driver's own worker once it joined: its thread processors.
    pub(crate) fn attach(self: &Arc<Self>, worker: WorkerId, procs: &[Arc<dyn Processor>]) {
        let threads: Vec<(u32, Arc<dyn Processor>)> = procs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.kind() == ProcKind::THREAD)
            .map(|(i, p)| (i as u32, p.clone()))
            .collect();
        if !threads.is_empty() {
            let finished = threads.iter().map(|_| Padded::default()).collect();
            let runners = threads
                .iter()
                .enumerate()
                .map(|(at, (_, p))| {
                    Arc::new(Runner {
                        at,
                        proc: p.clone(),
                        lane: Arc::downgrade(self),
                        running: AtomicBool::new(false),
                    })
                })
                .collect();
            let _ = self.procs.set(Procs {
                worker,
                threads,
                finished,
                runners,
                queue: Queue::new(),
                pumps: Padded::default(),
            });
        }
        *self.attached.0.lock() = true;
        self.attached.1.notify_all();
    }

    /// Waits until the driver's own worker attached, or `deadline` (then its tasks go
    /// through the scheduler until it does).
    pub(crate) fn wait_attached(&self, deadline: Instant) {
        let mut attached = self.attached.0.lock();
        while !*attached {
            if self
                .attached
                .1
                .wait_until(&mut attached, deadline)
                .timed_out()
            {
                return;
            }
        }
    }

    /// No more direct tasks: later spawns go to the driver (which refuses them after
    /// shutdown), and queued ones fail with `Shutdown` as their processors stop.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Closed, not joined: a task running now may run for long, and shutting down
        // must not wait for it. Jobs queued before still run; later ones are dropped.
        if let Some(p) = self.procs.get() {
            for (_, proc) in &p.threads {
                if let Some(t) = proc.as_any().downcast_ref::<dagger_proc::ThreadProc>() {
                    t.close();
                }
            }
        }
    }

    /// Counters of the direct tasks: (submitted, finished, failed).
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        let finished = self.procs.get().map_or(0, |p| {
            p.finished.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
        });
        (
            self.submitted.0.load(Ordering::Relaxed),
            finished,
            self.failed.0.load(Ordering::Relaxed),
        )
    }

    /// The slot of a live direct task.
    pub(crate) fn slot(&self, id: TaskId) -> Option<Arc<Slot>> {
        self.tasks.lock().get(&id).and_then(Weak::upgrade)
    }

    /// Starts `func(args)` as a direct task if it is one (see the module's rules); gives
    /// the arguments back otherwise.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        id: TaskId,
        func: Option<&'static TaskFn>,
        args: Args,
        options: &Options,
        release: &UnboundedSender<DriverCmd>,
    ) -> Result<Arc<Slot>, Args> {
        let Some(func) = func else { return Err(args) };
        if self.closed.load(Ordering::Acquire)
            || self.procs.get().is_none()
            || *options != Options::default()
            || !host_only(func)
            // Every task it takes must be a direct task of this lane.
            || !args.iter().all(|a| self.takes_only_own(a))
        {
            return Err(args);
        }
        // The inputs not finished yet (the task is queued by the last to finish).
        let waits: Vec<Arc<Slot>> = args
            .iter()
            .flat_map(|i| match i {
                ArgIn::Gather(ps) => ps.as_slice(),
                one => std::slice::from_ref(one),
            })
            .filter_map(|i| match i {
                ArgIn::Task(s) if !s.is_done() => Some(s.clone()),
                _ => None,
            })
            .collect();
        let work = Work { func, inputs: args };
        let slot = Arc::new(Slot::new_direct(
            id,
            func,
            release.clone(),
            self.clone(),
            DirectSlot::new(true, 1 + waits.len() as u32),
        ));
        self.submitted.0.fetch_add(1, Ordering::Relaxed);
        if waits.is_empty() {
            dispatch(self, slot.clone(), work);
            return Ok(slot);
        }
        lane_data(&slot).0.set_waiting(work);
        for s in waits {
            let dependent = slot.clone();
            s.then(move |_| arrived(&dependent));
        }
        arrived(&slot);
        Ok(slot)
    }

    /// Whether every task `a` takes is a direct task of this lane.
    fn takes_only_own(&self, a: &ArgIn) -> bool {
        match a {
            ArgIn::Value(_) | ArgIn::Small(_) => true,
            ArgIn::Id(_) => false,
            ArgIn::Task(s) => {
                s.direct().is_some() && s.lane.as_ref().is_some_and(|l| std::ptr::eq(&**l, self))
            }
            ArgIn::Gather(ps) => ps.iter().all(|p| self.takes_only_own(p)),
        }
    }

    /// Hands `batch` to the driver, or, when some of its tasks take results of direct
    /// tasks that are not finished, once they are: each such input becomes the result's
    /// value. A task whose direct input failed (or that takes a task that did) is failed
    /// with `DependencyFailed` instead, and the others are submitted.
    ///
    /// Batches reach the driver in the order they were submitted: one submitted while an
    /// earlier one waits, waits behind it (a later task may take the earlier one's
    /// result, and the scheduler must know a task before its dependents).
    ///
    /// `taken` holds the slots of the tasks that the batch's tasks take; the direct ones
    /// among them are waited for.
    pub(crate) fn submit(
        self: &Arc<Self>,
        cmd: &UnboundedSender<DriverCmd>,
        batch: Batch,
        taken: Vec<Arc<Slot>>,
    ) -> Result<(), ()> {
        // `taken` lives to the end (dropped after the lock below): a slot dropped before
        // the batch went could release a result the batch takes.
        let mut seen = dagger_core::hash::IdHashSet::default();
        let inputs: Vec<Arc<Slot>> = taken
            .iter()
            .filter(|s| s.direct().is_some() && seen.insert(s.id))
            .cloned()
            .collect();
        let mut queue = self.waiting.lock();
        if inputs.is_empty() && queue.is_empty() {
            let sent = cmd.send(DriverCmd::Submit(batch));
            drop(queue);
            // A refused batch (the context shut down) is dropped without the lock.
            return sent.map_err(drop);
        }
        let bridge = Arc::new(Bridge {
            batch: Mutex::new(Some(batch)),
            missing: AtomicUsize::new(1),
            inputs,
            cmd: cmd.clone(),
        });
        queue.push_back(Waiting::Batch(bridge.clone()));
        drop(queue);
        let waits: Vec<Arc<Slot>> = bridge
            .inputs
            .iter()
            .filter(|s| !s.is_done())
            .cloned()
            .collect();
        bridge.missing.fetch_add(waits.len(), Ordering::Relaxed);
        for s in waits {
            let (b, lane) = (bridge.clone(), self.clone());
            s.then(move |_| b.arrived(&lane));
        }
        bridge.arrived(self);
        Ok(())
    }

    /// Sends the batches at the front of the queue whose inputs are all finished, and
    /// the releases behind them.
    fn flush(&self) {
        // Dropped after the lock: a slot dropped here releases its task through this queue.
        let mut done: Vec<Waiting> = Vec::new();
        let mut slots: Vec<Arc<Slot>> = Vec::new();
        {
            let mut queue = self.waiting.lock();
            while let Some(w) = queue.front() {
                match w {
                    Waiting::Batch(b) if b.missing.load(Ordering::Acquire) != 0 => break,
                    Waiting::Batch(b) => b.send(&mut slots),
                    Waiting::Release(cmd, task) => {
                        let _ = cmd.send(DriverCmd::Release(*task));
                    }
                }
                done.extend(queue.pop_front());
            }
        }
        drop(slots);
        drop(done);
    }

    /// Tells the driver that `task`'s last handle is gone, behind every batch held back
    /// before (one of them may take its result).
    pub(crate) fn release(&self, cmd: &UnboundedSender<DriverCmd>, task: TaskId) {
        let mut queue = self.waiting.lock();
        if queue.is_empty() {
            // The context may be gone already; then there is nothing to release.
            let _ = cmd.send(DriverCmd::Release(task));
        } else {
            queue.push_back(Waiting::Release(cmd.clone(), task));
        }
    }
}

/// What waits in the lane's queue for the driver.
enum Waiting {
    Batch(Arc<Bridge>),
    /// A release, which must not overtake a batch that takes the task's result.
    Release(UnboundedSender<DriverCmd>, TaskId),
}

/// A batch for the driver waiting for direct tasks it takes results of, or behind a batch
/// that does.
struct Bridge {
    batch: Mutex<Option<Batch>>,
    inputs: Vec<Arc<Slot>>,
    missing: AtomicUsize,
    cmd: UnboundedSender<DriverCmd>,
}

impl Bridge {
    fn arrived(&self, lane: &Direct) {
        if self.missing.fetch_sub(1, Ordering::AcqRel) == 1 {
            lane.flush();
        }
    }

    /// Submits the batch, its direct inputs replaced by their values (all are finished).
    /// The slots of tasks that were not submitted go to `unsent`, for the caller to drop
    /// once it holds no lock.
    fn send(&self, unsent: &mut Vec<Arc<Slot>>) {
        let Some(batch) = self.batch.lock().take() else {
            return;
        };
        let results: IdHashMap<TaskId, &Outcome> = self
            .inputs
            .iter()
            .filter_map(|s| Some((s.id, s.outcome()?)))
            .collect();
        let mut failed: IdHashMap<TaskId, TaskError> = IdHashMap::default();
        let mut send = Vec::with_capacity(batch.len());
        for (mut spec, slot) in batch {
            // A batch lists inputs before the tasks that take them.
            let failure =
                spec.args
                    .iter()
                    .flat_map(Arg::deps)
                    .find_map(|d| match results.get(&d) {
                        Some(Err(e)) => Some((d, e.clone())),
                        _ => failed.get(&d).map(|e| (d, e.clone())),
                    });
            if let Some((dependency, cause)) = failure {
                let err = TaskError::DependencyFailed {
                    task: spec.id,
                    dependency,
                    cause: Box::new(cause),
                };
                if let Some(slot) = slot {
                    slot.complete(Err(err.clone()));
                    unsent.push(slot);
                }
                failed.insert(spec.id, err);
                continue;
            }
            let value = |t: &TaskId| match results.get(t) {
                Some(Ok(Completion::Value(v))) => Some(v.clone()),
                _ => None,
            };
            for a in &mut spec.args {
                match a {
                    Arg::Task(t) => {
                        if let Some(v) = value(t) {
                            *a = Arg::Value(v);
                        }
                    }
                    Arg::Gather(parts) => {
                        for p in parts {
                            if let Part::Task(t) = p {
                                if let Some(v) = value(t) {
                                    *p = Part::Value(v);
                                }
                            }
                        }
                    }
                    Arg::Value(_) => {}
                }
            }
            send.push((spec, slot));
        }
        if send.is_empty() {
            return;
        }
        if let Err(e) = self.cmd.send(DriverCmd::Submit(send)) {
            // The context shut down meanwhile.
            if let DriverCmd::Submit(batch) = e.0 {
                for (spec, slot) in batch {
                    if let Some(slot) = slot {
                        slot.complete(Err(TaskError::Shutdown { task: spec.id }));
                        unsent.push(slot);
                    }
                }
            }
        }
    }
}

/// Whether a function computes in host memory only: no parameter or result of a device
/// type, which the scheduler places on device processors. Remembered per thread for the
/// last function asked about (a loop spawns one function many times).
fn host_only(f: &'static TaskFn) -> bool {
    thread_local! {
        static LAST: Cell<(usize, bool)> = const { Cell::new((0, false)) };
    }
    let key = f as *const TaskFn as usize;
    let (k, v) = LAST.with(Cell::get);
    if k == key {
        return v;
    }
    let device = |t: &str| t.contains("DeviceVec");
    let v = !device((f.result_type)()) && !(f.arg_types)().into_iter().any(device);
    LAST.with(|c| c.set((key, v)));
    v
}

/// One input of `slot`'s task finished (or the spawner registered them all): queue it
/// when none is missing.
fn arrived(slot: &Arc<Slot>) {
    let (d, lane) = lane_data(slot);
    if d.missing.fetch_sub(1, Ordering::AcqRel) == 1 {
        // The last input: the work is there (set before any input could arrive).
        if let Some(work) = d.take_waiting() {
            dispatch(lane, slot.clone(), *work);
        }
    }
}

/// Queues a task of `lane` whose inputs are all finished.
fn dispatch(lane: &Direct, slot: Arc<Slot>, work: Work) {
    let procs = match lane.procs.get() {
        Some(procs) if !lane.closed.load(Ordering::Acquire) => procs,
        // Closed (a task is direct only once the processors are known).
        _ => {
            drop(work);
            return shut_out(slot);
        }
    };
    let mut job = Job(Some((slot, work)));
    // Made ready by a task of this lane that this thread just ran: run it next here.
    if ON_LANE.with(Cell::get) == lane as *const Direct as usize {
        job = match NEXT.with(|n| {
            let mut n = n.borrow_mut();
            match n.as_ref() {
                None => {
                    *n = Some(job);
                    None
                }
                Some(_) => Some(job),
            }
        }) {
            None => return,
            Some(job) => job,
        };
    }
    procs.queue.push(job);
    wake(lane, procs);
}

/// Starts one more pump while tasks wait in the queue and a thread has none: every
/// running pump is busy with a task (a long one, perhaps), so a waiting task must not
/// wait for them.
fn wake(lane: &Direct, procs: &Procs) {
    let n = procs.runners.len();
    let pumps = procs.pumps.0.load(Ordering::SeqCst);
    if pumps >= n || (pumps > 0 && procs.queue.is_empty()) {
        return;
    }
    let start = lane.next.0.fetch_add(1, Ordering::Relaxed);
    for k in 0..n {
        let r = &procs.runners[(start + k) % n];
        if !r.running.swap(true, Ordering::SeqCst) {
            procs.pumps.0.fetch_add(1, Ordering::SeqCst);
            return r.start_pump();
        }
    }
}

/// The lane's pump on one thread processor. Tasks are not handed to the processor one by
/// one (a boxed job each): a pump job, queued on the processor when it is woken, runs
/// tasks from the lane's queue and gives the thread back after [`PUMP_BUDGET`] of them,
/// so that other jobs of that processor are not starved.
struct Runner {
    at: usize,
    proc: Arc<dyn Processor>,
    /// The lane (not kept alive by its own runners).
    lane: Weak<Direct>,
    /// Whether its pump is queued or running.
    running: AtomicBool,
}

/// Tasks a pump runs before it queues itself behind the processor's other jobs.
const PUMP_BUDGET: usize = 256;

impl Runner {
    fn start_pump(self: &Arc<Self>) {
        let mut pump = Pump(Some(self.clone()));
        self.proc.execute(Box::new(move || {
            if let Some(r) = pump.0.take() {
                r.pump();
            }
        }));
    }

    fn pump(self: Arc<Self>) {
        let Some(lane) = self.lane.upgrade() else {
            return;
        };
        let Some(procs) = lane.procs.get() else {
            return;
        };
        let queue = &procs.queue;
        let next = || NEXT.with(|n| n.borrow_mut().take()).or_else(|| queue.pop());
        let mut ran = 0;
        loop {
            while let Some(mut job) = next() {
                if let Some((slot, work)) = job.0.take() {
                    run(slot, work, self.at);
                }
                ran += 1;
                if ran >= PUMP_BUDGET {
                    // Still counted as running: the next pump goes behind the processor's
                    // other jobs, and the task kept for it waits in the queue.
                    if let Some(job) = NEXT.with(|n| n.borrow_mut().take()) {
                        queue.push(job);
                    }
                    return self.start_pump();
                }
            }
            // The queue is empty: a submitting thread often queues the next task within
            // a microsecond or two. Wait that long for it before giving the thread back
            // (restarting a pump costs a job on the processor, and a wake-up if its
            // thread went to sleep meanwhile).
            if linger(queue) {
                continue;
            }
            procs.pumps.0.fetch_sub(1, Ordering::SeqCst);
            self.running.store(false, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            // A task queued after the queue was found empty but before this pump stopped
            // counting may have started no pump: take it on.
            if queue.is_empty() || self.running.swap(true, Ordering::SeqCst) {
                return;
            }
            procs.pumps.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// How long a pump waits for a task in an empty queue before it stops: [`LINGER`], or
/// less where threads spin for less (`DAGGER_SPIN_US`; 0 turns both off).
fn linger_for() -> Duration {
    dagger_proc::sys::spin_from_env().min(LINGER)
}

/// The longest a pump waits for a task in an empty queue.
const LINGER: Duration = Duration::from_micros(5);

/// Polls the lane's empty queue for up to [`linger_for`]; whether a task came.
fn linger(queue: &Queue) -> bool {
    let limit = linger_for();
    if limit.is_zero() {
        return false;
    }
    let start = Instant::now();
    loop {
        for _ in 0..32 {
            if !queue.is_empty() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::yield_now();
    }
}

/// A queued pump. Dropped unrun (its processor shut down: the lane closed), it no longer
/// counts, and it fails what is queued.
struct Pump(Option<Arc<Runner>>);

impl Drop for Pump {
    fn drop(&mut self) {
        let Some(r) = self.0.take() else { return };
        let Some(lane) = r.lane.upgrade() else { return };
        if let Some(procs) = lane.procs.get() {
            procs.pumps.0.fetch_sub(1, Ordering::SeqCst);
            r.running.store(false, Ordering::SeqCst);
            // Each job fails its task as it is dropped.
            while procs.queue.pop().is_some() {}
        }
    }
}

/// Runs a direct task whose inputs are all finished, on lane processor `at`.
fn run(slot: Arc<Slot>, work: Work, at: usize) {
    let task = slot.id;
    let (d, lane) = lane_data(&slot);
    let Some(procs) = lane.procs.get() else {
        return;
    };
    let func = work.func;
    let (index, _) = procs.threads[at];
    let proc = ProcId::new(procs.worker, index);
    // A failed input fails the task.
    let failed = work.inputs.iter().find_map(|i| match i {
        ArgIn::Task(s) => input_failure(s),
        ArgIn::Gather(ps) => ps.iter().find_map(|i| match i {
            ArgIn::Task(s) => input_failure(s),
            _ => None,
        }),
        ArgIn::Value(_) | ArgIn::Small(_) | ArgIn::Id(_) => None,
    });
    let t0 = Instant::now();
    let outcome = match failed {
        Some((dependency, cause)) => Err(TaskError::DependencyFailed {
            task,
            dependency,
            cause: Box::new(cause),
        }),
        None => {
            // The same span as a task run by a worker: its fields name the task wherever
            // its function logs.
            let span = tracing::info_span!(
                target: "dagger::task",
                "task",
                task = %task,
                func = %func.name,
                worker = %procs.worker,
                proc = %proc,
                attempt = 1u32
            );
            let _entered = span.enter();
            let result = crate::worker::with_current_proc(proc, || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(&work)))
            });
            match result {
                Ok(Ok(TaskOutput::Bytes(bytes))) => Ok(Completion::Value(bytes)),
                Ok(Ok(TaskOutput::Stored(s))) => Ok(Completion::Value(s.to_vec())),
                Ok(Ok(TaskOutput::Shared(v))) => Ok(Completion::Value(
                    std::sync::Arc::try_unwrap(v).unwrap_or_else(|v| v.to_vec()),
                )),
                Ok(Ok(TaskOutput::Device(buf))) => {
                    buf.to_host()
                        .map(Completion::Value)
                        .map_err(|e| TaskError::BadArguments {
                            task,
                            func: func.name.to_string(),
                            message: format!("a device result could not be read back: {e}"),
                        })
                }
                Ok(Err(e)) => Err(TaskError::BadArguments {
                    task,
                    func: func.name.to_string(),
                    message: e.to_string(),
                }),
                Err(panic) => Err(TaskError::Panicked {
                    task,
                    func: func.name.to_string(),
                    message: crate::worker::panic_message(&*panic),
                }),
            }
        }
    };
    let run = t0.elapsed();
    // Its inputs are let go before its dependents run.
    drop(work);
    d.record_run(at, run);
    let counter = if outcome.is_ok() {
        &procs.finished[at].0
    } else {
        &lane.failed.0
    };
    counter.fetch_add(1, Ordering::Relaxed);
    // A dependent made ready by this completion runs next on this thread.
    let prev = ON_LANE.with(|c| c.replace(&**lane as *const Direct as usize));
    slot.complete(outcome);
    ON_LANE.with(|c| c.set(prev));
}

/// The input's error, if it failed.
fn input_failure(s: &Slot) -> Option<(TaskId, TaskError)> {
    match s.outcome() {
        Some(Err(e)) => Some((s.id, e.clone())),
        _ => None,
    }
}

/// Calls the task's function on its inputs.
fn call(p: &Work) -> Result<TaskOutput, crate::registry::CallError> {
    let n = p.inputs.len();
    if !p.inputs.iter().any(|i| matches!(i, ArgIn::Gather(_))) {
        // Most functions take a few arguments: no allocation for them.
        const FEW: usize = 4;
        if n <= FEW {
            let mut values: [ArgValue<'_>; FEW] = std::array::from_fn(|_| ArgValue::Bytes(&[]));
            for (v, i) in values.iter_mut().zip(&p.inputs) {
                *v = ArgValue::Bytes(input_bytes(i));
            }
            return (p.func.call)(&mut values[..n]);
        }
        let mut values: Vec<ArgValue<'_>> = p
            .inputs
            .iter()
            .map(|i| ArgValue::Bytes(input_bytes(i)))
            .collect();
        return (p.func.call)(&mut values);
    }
    // A gathered input is passed as the bytes of a `Vec<T>`: its length, then each
    // part's encoded `T`.
    let gathered: Vec<Option<Vec<u8>>> = p
        .inputs
        .iter()
        .map(|i| match i {
            ArgIn::Gather(ps) => {
                let mut bytes = dagger_core::wire::encode(&(ps.len() as u64));
                for part in ps {
                    bytes.extend_from_slice(input_bytes(part));
                }
                Some(bytes)
            }
            _ => None,
        })
        .collect();
    let mut values: Vec<ArgValue<'_>> = p
        .inputs
        .iter()
        .zip(&gathered)
        .map(|(i, g)| ArgValue::Bytes(g.as_deref().unwrap_or_else(|| input_bytes(i))))
        .collect();
    (p.func.call)(&mut values)
}

/// The encoded value of a finished, successful input (a direct task's result is always
/// kept as a value).
fn input_bytes(i: &ArgIn) -> &[u8] {
    match i {
        ArgIn::Task(s) => match s.outcome() {
            Some(Ok(Completion::Value(v))) => v,
            _ => &[],
        },
        value => value.value().unwrap_or(&[]),
    }
}

#[cfg(test)]
mod tests {
    /// Every live handle of a direct task holds its lane data: with the allocator's
    /// header it fits an allocation of 128 bytes, so that a fanout of many tasks touches
    /// as few fresh pages as it can. Small arguments are held inline, in no more room
    /// than a vector takes.
    #[test]
    fn a_direct_task_stays_small() {
        assert!(
            std::mem::size_of::<super::DirectSlot>() <= 24,
            "{} bytes",
            std::mem::size_of::<super::DirectSlot>()
        );
        // A slot and its reference counts fit 120 bytes: one allocation of 128 with the
        // allocator's header.
        assert!(
            std::mem::size_of::<crate::handle::Slot>() + 16 <= 120,
            "{} bytes",
            std::mem::size_of::<crate::handle::Slot>()
        );
        assert_eq!(
            std::mem::size_of::<crate::args::ArgIn>(),
            std::mem::size_of::<Vec<u8>>() + 8
        );
    }
}
