//! The worker's thread processors as one crew for the tasks that may run on any of them
//! (`RunTask::any_thread`: their scope admits every thread processor of the worker).
//!
//! The scheduler still names a processor for each task, but a worker knows better which of
//! its threads can start one now: a task goes to the crew's one queue, and a *pump* (a job
//! on a thread processor that runs tasks from the queue until it is empty) takes it. So:
//! - a thread that is free takes the next task, and a long or blocked task holds up no
//!   other (a task the scheduler placed behind it is run by a sibling);
//! - a task made ready by a message that an idle thread took (a peer's chunk) runs on that
//!   thread, with no hand-off and nothing to wake;
//! - a thread is woken only when every pump is busy and tasks wait.
//!
//! Tasks pinned to one processor, and tasks of other kinds, are given to their processor as
//! before. A pump gives its thread back after [`PUMP_BUDGET`] tasks, queued again behind
//! the processor's other jobs, so those are not starved.

use super::{StartGuard, Worker};
use dagger_proc::{Processor, ThreadProc};
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Tasks a pump runs before it queues itself behind the processor's other jobs.
const PUMP_BUDGET: usize = 256;

pub(super) struct Crew {
    members: Vec<Member>,
    tx: crossbeam_channel::Sender<StartGuard>,
    rx: crossbeam_channel::Receiver<StartGuard>,
    /// Pumps queued or running.
    pumps: AtomicUsize,
    /// Where the search for a thread without a pump starts next (round robin).
    next: AtomicUsize,
}

struct Member {
    /// Its index among the worker's processors.
    index: u32,
    proc: Arc<dyn Processor>,
    /// Its pump is queued or running.
    running: AtomicBool,
}

impl Member {
    fn thread(&self) -> Option<&ThreadProc> {
        self.proc.as_any().downcast_ref::<ThreadProc>()
    }
}

impl Crew {
    /// The crew of the thread processors among `procs` (by index).
    pub(super) fn new(procs: &[Arc<dyn Processor>]) -> Self {
        let members = procs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.as_any().is::<ThreadProc>())
            .map(|(i, p)| Member {
                index: i as u32,
                proc: p.clone(),
                running: AtomicBool::new(false),
            })
            .collect();
        let (tx, rx) = crossbeam_channel::unbounded();
        Self {
            members,
            tx,
            rx,
            pumps: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
        }
    }

    /// Whether the calling thread is the crew's first thread processor: the one that
    /// takes peers' frames between jobs. One thread per worker does, so that a chain of
    /// tasks across workers stays on each worker's first thread, and the workers of a host
    /// list their CPUs in rotated orders (`dagger_proc::sys::spread`): the chain's
    /// threads are on different CPUs instead of taking turns on one.
    pub(super) fn is_first(&self) -> bool {
        self.members
            .first()
            .and_then(Member::thread)
            .is_some_and(ThreadProc::is_current)
    }

    /// Whether processor `index` is one of the crew.
    pub(super) fn has(&self, index: u32) -> bool {
        self.members.iter().any(|m| m.index == index)
    }

    /// Queues a task (dispatched to crew member `assigned`) and makes sure a pump will
    /// take it.
    pub(super) fn push(&self, worker: &Arc<Worker>, task: StartGuard, assigned: u32) {
        // The receiver lives as long as the sender: this cannot fail.
        let _ = self.tx.send(task);
        self.wake(worker, assigned);
    }

    /// Starts one more pump while tasks wait and a thread has none: every running pump
    /// is busy with a task (a long one, perhaps), so a waiting task must not wait for
    /// them. The thread is chosen to start it soonest:
    /// 1. the calling thread, if it is a member with nothing to run (it took the message
    ///    that made the task ready), or none if its pump runs (it finished the task that
    ///    made this one ready, and takes it next);
    /// 2. a member that spins for work;
    /// 3. the one the scheduler chose, if it runs nothing (asleep), else any such;
    /// 4. the one the scheduler chose, else any: all are busy, and the first to be done
    ///    takes the task.
    fn wake(&self, worker: &Arc<Worker>, assigned: u32) {
        let n = self.members.len();
        let pumps = self.pumps.load(Ordering::SeqCst);
        if pumps >= n || (pumps > 0 && self.rx.is_empty()) {
            return;
        }
        let pumpless = |m: &Member| !m.running.load(Ordering::SeqCst);
        let take = |m: &Member| !m.running.swap(true, Ordering::SeqCst);
        let claim = |m: &Member| m.thread().is_some_and(|t| t.try_claim());
        let idle = |m: &Member| m.thread().is_some_and(|t| !t.is_busy());
        let here = self
            .members
            .iter()
            .position(|m| m.thread().is_some_and(|t| t.is_current()));
        if let Some(i) = here {
            let m = &self.members[i];
            if !pumpless(m) && self.rx.len() <= 1 {
                // This thread's pump takes it next (a task this thread just ran made it
                // ready): a chain stays on one thread.
                return;
            }
            if pumpless(m) && claim(m) && take(m) {
                return self.start_pump(worker, i);
            }
        }
        for (i, m) in self.members.iter().enumerate() {
            if Some(i) != here && pumpless(m) && claim(m) && take(m) {
                return self.start_pump(worker, i);
            }
        }
        let chosen = self.members.iter().position(|m| m.index == assigned);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let order = || chosen.into_iter().chain((0..n).map(|k| (start + k) % n));
        for i in order() {
            let m = &self.members[i];
            if pumpless(m) && idle(m) && take(m) {
                return self.start_pump(worker, i);
            }
        }
        for i in order() {
            if take(&self.members[i]) {
                return self.start_pump(worker, i);
            }
        }
    }

    /// Queues the pump of member `i` (already marked running) on its processor.
    fn start_pump(&self, worker: &Arc<Worker>, i: usize) {
        self.pumps.fetch_add(1, Ordering::SeqCst);
        let mut pump = Pump(Some((worker.clone(), i)));
        self.members[i].proc.execute(Box::new(move || {
            if let Some((w, i)) = pump.0.take() {
                w.crew.pump(&w, i);
            }
        }));
    }

    /// Member `i`'s pump: runs queued tasks until the queue is empty (or the budget is
    /// spent).
    fn pump(&self, worker: &Arc<Worker>, i: usize) {
        let m = &self.members[i];
        let mut ran = 0;
        loop {
            while let Ok(mut guard) = self.rx.try_recv() {
                if let Some(mut t) = guard.task.take() {
                    t.proc.index = m.index;
                    worker.run_task(t);
                }
                ran += 1;
                if ran >= PUMP_BUDGET {
                    // Still counted as running: the next pump goes behind the processor's
                    // other jobs.
                    self.pumps.fetch_sub(1, Ordering::SeqCst);
                    return self.start_pump(worker, i);
                }
            }
            self.pumps.fetch_sub(1, Ordering::SeqCst);
            m.running.store(false, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            // A task queued after the queue was found empty but before this pump stopped
            // counting may have started no pump: take it on.
            if self.rx.is_empty() || m.running.swap(true, Ordering::SeqCst) {
                return;
            }
            self.pumps.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A queued pump. Dropped unrun (its processor shut down), it no longer counts, and the
/// queued tasks are dropped, each reported failed by its guard, so nobody waits.
struct Pump(Option<(Arc<Worker>, usize)>);

impl Drop for Pump {
    fn drop(&mut self) {
        let Some((w, i)) = self.0.take() else { return };
        w.crew.pumps.fetch_sub(1, Ordering::SeqCst);
        w.crew.members[i].running.store(false, Ordering::SeqCst);
        while w.crew.rx.try_recv().is_ok() {}
    }
}
