//! Work an idle thread processor does while it spins for its next job.
//!
//! Between the end of one job and parking, a [`ThreadProc`](crate::ThreadProc) polls its
//! queue for a short while (`DAGGER_SPIN_US`). During that time it also runs the
//! [`IdleWork`] registered in this process: a source of work that would otherwise reach a
//! processor only through another thread, which must then wake it. A runtime registers,
//! for example, a poll of the links its tasks' inputs arrive on: a thread that has just
//! finished a task takes the next message itself, and a job that message starts on this
//! very thread runs without any thread being woken.
//!
//! Idle work must be short and must not block: it runs on the processor's own thread,
//! between jobs, and a job submitted meanwhile waits for it to return.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock, Weak};

/// Work a spinning thread processor may do; see the [module](self).
pub trait IdleWork: Send + Sync + 'static {
    /// Does what is ready without waiting; returns whether it did anything (the thread
    /// then goes on spinning, since more may follow).
    fn poll(&self) -> bool;

    /// Called when the thread is about to sleep: announces a sleeper to the sources of
    /// this work and pushes, for each, the word it waits on with the value the word holds
    /// now. A source's producer, finding a sleeper announced, changes the word and wakes
    /// one waiter, so that a thread of this process takes the work without any other
    /// thread between. Returns `false` when work is there already (the thread then polls
    /// instead of sleeping). Every word pushed is disarmed after the sleep, or at once if
    /// the thread does not sleep. A source left unarmed because `words` holds
    /// [`MAX_ARMED`] already must still wake its work's other consumers. The default pushes
    /// nothing.
    fn arm(&self, words: &mut Vec<Armed>) -> bool {
        let _ = words;
        true
    }

    /// Called when a thread starts spinning (it will [`poll`](IdleWork::poll) often
    /// until it stops): announces it to the sources of this work with
    /// [`WakeWord::watch`]`(true)`, which may then skip waking anyone for work they
    /// produce meanwhile, and pushes each word so announced; the thread withdraws each
    /// (`watch(false)`) when it stops, then polls once more. The default pushes nothing.
    fn watch(&self, words: &mut Vec<Arc<dyn WakeWord>>) {
        let _ = words;
    }
}

/// The most words a thread arms for one sleep ([`IdleWork::arm`] stops pushing at this
/// many): the kernel's `futex_waitv` takes 128, one of which is the thread's own.
pub const MAX_ARMED: usize = 127;

/// A word an idle thread sleeps on until a source of its [`IdleWork`] has work.
pub trait WakeWord: Send + Sync {
    /// The futex word.
    fn word(&self) -> &AtomicU32;
    /// Withdraws the sleeper [`IdleWork::arm`] announced.
    fn disarm(&self);
    /// Announces (`true`) or withdraws a thread that polls this source for a while.
    fn watch(&self, on: bool);
}

/// A word armed for one sleep, with the value it held when armed; the thread sleeps only
/// while it still holds that value. The word lives in memory shared with other processes
/// (their wakes are not process-private).
pub struct Armed {
    /// The word.
    pub word: Arc<dyn WakeWord>,
    /// Its value when armed.
    pub value: u32,
}

/// The process's idle work. Held weakly: dropping the owner's `Arc` unregisters it.
static WORK: RwLock<Vec<Weak<dyn IdleWork>>> = RwLock::new(Vec::new());

/// Set by the first registration: until then (in a process that never registers any,
/// such as a driver without workers) spinning threads do not touch the lock.
static ANY: AtomicBool = AtomicBool::new(false);

/// Registers `work` for every thread processor of this process, until its last `Arc` is
/// dropped.
pub fn register(work: &Arc<dyn IdleWork>) {
    let mut all = WORK.write().unwrap_or_else(|p| p.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(work));
    ANY.store(true, Ordering::Release);
}

/// Arms every registered piece of idle work for a sleep (see [`IdleWork::arm`]);
/// `false` when some has work already.
pub(crate) fn arm(words: &mut Vec<Armed>) -> bool {
    if !ANY.load(Ordering::Acquire) {
        return true;
    }
    let all = WORK.read().unwrap_or_else(|p| p.into_inner());
    for w in all.iter() {
        if let Some(w) = w.upgrade() {
            if !w.arm(words) {
                return false;
            }
        }
    }
    true
}

/// Announces a spinning thread to every registered piece of idle work (see
/// [`IdleWork::watch`]); what was announced is pushed to `words`.
pub(crate) fn watch(words: &mut Vec<Arc<dyn WakeWord>>) {
    if !ANY.load(Ordering::Acquire) {
        return;
    }
    let all = WORK.read().unwrap_or_else(|p| p.into_inner());
    for w in all.iter() {
        if let Some(w) = w.upgrade() {
            w.watch(words);
        }
    }
}

/// Withdraws what [`watch`] announced.
pub(crate) fn unwatch(words: &mut Vec<Arc<dyn WakeWord>>) {
    for w in words.drain(..) {
        w.watch(false);
    }
}

/// Runs every registered piece of idle work once; whether any did something.
pub(crate) fn poll() -> bool {
    if !ANY.load(Ordering::Acquire) {
        return false;
    }
    let all = WORK.read().unwrap_or_else(|p| p.into_inner());
    let mut did = false;
    for w in all.iter() {
        if let Some(w) = w.upgrade() {
            did |= w.poll();
        }
    }
    did
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Processor, ThreadProc};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// Counts its polls in a counter the test keeps.
    struct Counter(Arc<AtomicU64>);

    impl IdleWork for Counter {
        fn poll(&self) -> bool {
            self.0.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    #[test]
    fn a_spinning_processor_runs_idle_work_and_a_dropped_one_is_forgotten() {
        let polls = Arc::new(AtomicU64::new(0));
        let work: Arc<dyn IdleWork> = Arc::new(Counter(polls.clone()));
        register(&work);
        let proc = ThreadProc::builder()
            .spin(Duration::from_millis(200))
            .spawn()
            .expect("thread");
        let (tx, rx) = std::sync::mpsc::channel();
        proc.execute(Box::new(move || tx.send(()).expect("send")));
        rx.recv().expect("the job ran");
        // After its job the thread spins for 200 ms, polling the idle work meanwhile.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while polls.load(Ordering::Relaxed) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "idle work never polled"
            );
            std::thread::yield_now();
        }
        // With the processor gone (nothing holds the work for a poll any more), dropping
        // the last `Arc` unregisters it.
        drop(proc);
        drop(work);
        let before = polls.load(Ordering::Relaxed);
        poll();
        assert_eq!(
            polls.load(Ordering::Relaxed),
            before,
            "a dropped registration ran"
        );
    }
}
