//! Removing workers from a running cluster: [`Context::remove_workers`] drains them and
//! hands back one [`Drain`] per worker, which resolves when the worker holds nothing the
//! graph still needs.
//!
//! # What a drain guarantees
//!
//! From the call on, a removed worker receives no new task, not even one whose scope
//! names it (the call is refused, [`DrainError::WouldStrand`], when a task not yet
//! dispatched would then have no worker its scope admits). It finishes every task it was
//! given. Every result that only it holds and that the graph still needs (a dependent
//! has not run yet, or a handle to it is alive) is copied to a worker that stays, chosen
//! by the cheapest path over the topology (shared memory on one host, the network
//! otherwise), and a copy counts only once the destination has stored it. The drain is
//! over when the worker runs nothing, no needed result is held there alone, and no task
//! that was told to fetch a result from it is still unfinished elsewhere. Then
//! [`Drain::wait`] returns [`DrainOutcome::Drained`]: stopping the worker from now on
//! loses nothing, and nothing is recomputed. By default the worker is then told to shut
//! down and leaves the pool (a local process is not replaced); with
//! [`DrainOptions::keep`] it stays joined, receiving nothing, for its owner to stop.
//!
//! With a deadline ([`DrainOptions::deadline`]), a drain still going when it passes ends
//! with [`DrainOutcome::DeadlineExceeded`]: the worker is removed as lost, the tasks it
//! still ran run again elsewhere, and the needed results only it held are recomputed from
//! their lineage (the fault-tolerance path, within the tasks' loss budgets).
//!
//! # What it does not guarantee
//!
//! * When it ends: a task that never returns keeps a drain without deadline going for
//!   good. Give a deadline where that matters.
//! * That a lost worker's work is not redone: a worker lost before its drain is over
//!   ([`DrainOutcome::Lost`]) is recovered like any lost worker.
//! * That results the graph no longer needs are copied: they are dropped with the worker.
//! * The order in which several drains end.

use crate::context::Context;
use dagger_core::WorkerId;
pub use dagger_runtime::{AfterDrain, DrainOutcome};
pub use dagger_sched::DrainError;
use parking_lot::{Condvar, Mutex};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to remove workers ([`Context::remove_workers_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainOptions {
    deadline: Option<Duration>,
    then: AfterDrain,
}

impl DrainOptions {
    /// No deadline; the workers are stopped once drained.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends the drain at most `after` from the call: what the worker still runs then is
    /// run again elsewhere, and what only it holds is recomputed.
    pub fn deadline(mut self, after: Duration) -> Self {
        self.deadline = Some(after);
        self
    }

    /// Keeps the drained workers joined, receiving nothing, instead of stopping them:
    /// stopping one afterwards (however it is stopped) loses nothing. Should a worker that
    /// received one of its results be lost meanwhile, the kept worker hands that result
    /// over again (until that copy lands, it is again the only holder).
    pub fn keep(mut self) -> Self {
        self.then = AfterDrain::Keep;
        self
    }
}

/// A worker could not be removed. Nothing was changed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RemoveError {
    /// The scheduler refused the drain: an unknown worker, one already draining, or a
    /// task that would be stranded.
    #[error(transparent)]
    Drain(#[from] DrainError),
    /// The driver's own worker runs in this process and cannot be stopped; drain it with
    /// [`DrainOptions::keep`] to take it out of the pool's work.
    #[error("the driver's own worker cannot be stopped; remove it with DrainOptions::keep()")]
    DriverWorker,
    /// The context was shut down.
    #[error("the context is shut down")]
    Shutdown,
}

/// How the drain of one worker ended, from [`Drain::wait`].
#[derive(Clone, Debug, PartialEq)]
pub struct DrainReport {
    /// The worker.
    pub worker: WorkerId,
    /// Its OS process id, as it reported it.
    pub pid: u32,
    /// How the drain ended.
    pub outcome: DrainOutcome,
}

impl DrainReport {
    /// Whether the worker held nothing needed when the drain ended (nothing of its work
    /// is redone because of the removal).
    pub fn is_clean(&self) -> bool {
        matches!(self.outcome, DrainOutcome::Drained { .. })
    }

    /// From the call to the drain's end, as the driver measured it (zero after a
    /// shutdown).
    pub fn took(&self) -> Duration {
        match &self.outcome {
            DrainOutcome::Drained { took, .. }
            | DrainOutcome::DeadlineExceeded { took, .. }
            | DrainOutcome::HandoverFailed { took, .. }
            | DrainOutcome::Lost { took, .. } => *took,
            _ => Duration::ZERO,
        }
    }
}

/// Where the driver loop puts a drain's report, and how its handles wait for it.
#[derive(Clone, Default)]
pub(crate) struct DrainCell {
    inner: Arc<CellInner>,
}

#[derive(Default)]
struct CellInner {
    report: Mutex<Option<DrainReport>>,
    ready: Condvar,
    notify: tokio::sync::Notify,
}

impl DrainCell {
    /// Sets the report (once) and wakes every waiter.
    pub(crate) fn resolve(&self, report: DrainReport) {
        let mut slot = self.inner.report.lock();
        if slot.is_none() {
            *slot = Some(report);
        }
        drop(slot);
        self.inner.ready.notify_all();
        self.inner.notify.notify_waiters();
    }

    fn get(&self) -> Option<DrainReport> {
        self.inner.report.lock().clone()
    }
}

/// The drain of one removed worker: resolves once the worker holds nothing the graph
/// still needs (or its deadline passed, or it was lost). Wait with [`Drain::wait`] from
/// any thread, with `.await` in async code, or poll it with [`Drain::report`]. Dropping
/// it does not stop the drain. See the [module documentation](crate::drain) for what
/// a drain guarantees.
#[derive(Clone)]
pub struct Drain {
    worker: WorkerId,
    cell: DrainCell,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("worker", &self.worker)
            .field("report", &self.cell.get())
            .finish()
    }
}

impl Drain {
    /// The worker being drained.
    pub fn worker(&self) -> WorkerId {
        self.worker
    }

    /// The report, if the drain is over.
    pub fn report(&self) -> Option<DrainReport> {
        self.cell.get()
    }

    /// Blocks the calling thread until the drain is over. Do not call it on the thread of
    /// an async runtime (await the drain there).
    pub fn wait(&self) -> DrainReport {
        let mut slot = self.cell.inner.report.lock();
        loop {
            if let Some(r) = slot.as_ref() {
                return r.clone();
            }
            self.cell.inner.ready.wait(&mut slot);
        }
    }

    /// Like [`Drain::wait`], giving up after `timeout` (`None`: the drain goes on).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<DrainReport> {
        let until = Instant::now() + timeout;
        let mut slot = self.cell.inner.report.lock();
        loop {
            if let Some(r) = slot.as_ref() {
                return Some(r.clone());
            }
            if self
                .cell
                .inner
                .ready
                .wait_until(&mut slot, until)
                .timed_out()
            {
                return slot.clone();
            }
        }
    }

    /// Waits for the drain asynchronously.
    pub async fn done(&self) -> DrainReport {
        loop {
            let notified = self.cell.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.cell.get() {
                return r;
            }
            notified.await;
        }
    }
}

impl IntoFuture for Drain {
    type Output = DrainReport;
    type IntoFuture = Pin<Box<dyn Future<Output = DrainReport> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.done().await })
    }
}

impl Context {
    /// Every task and move of the run so far, with its queued, dispatched, started and
    /// finished times on the driver's clock and the processor it ran on; empty unless the
    /// context was built with [`ContextBuilder::timeline`](crate::ContextBuilder::timeline).
    /// Tasks still running are not in it yet.
    pub fn timeline(&self) -> crate::Timeline {
        self.query(|st| st.core.timeline().unwrap_or_default())
            .unwrap_or_default()
            .into()
    }

    /// The workers holding `task`'s result now, as the scheduler knows them (empty for a
    /// result kept inline by the driver, one not made yet, or an unknown task).
    pub fn holders(&self, task: dagger_core::TaskId) -> Vec<WorkerId> {
        self.query(move |st| st.core.holders(task.chunk()).to_vec())
            .unwrap_or_default()
    }

    /// Removes `workers` from the pool, all or none: each is drained (see the [module
    /// documentation](crate::drain)) and then told to shut down. Returns one [`Drain`] per
    /// worker, in the order given. Callable from any thread, also from inside a task and
    /// while a `collect` or `fetch` is waiting.
    pub fn remove_workers(&self, workers: &[WorkerId]) -> Result<Vec<Drain>, RemoveError> {
        self.remove_workers_with(workers, DrainOptions::new())
    }

    /// [`Context::remove_workers`] with a deadline, or keeping the drained workers joined.
    pub fn remove_workers_with(
        &self,
        workers: &[WorkerId],
        options: DrainOptions,
    ) -> Result<Vec<Drain>, RemoveError> {
        if options.then == AfterDrain::Stop && workers.iter().any(|w| w.is_driver()) {
            return Err(RemoveError::DriverWorker);
        }
        let workers = workers.to_vec();
        let cells: Vec<DrainCell> = workers.iter().map(|_| DrainCell::default()).collect();
        let handles: Vec<Drain> = workers
            .iter()
            .zip(&cells)
            .map(|(&worker, cell)| Drain {
                worker,
                cell: cell.clone(),
            })
            .collect();
        self.query(move |st| {
            let now = st.now();
            let deadline = options.deadline.map(|d| now.saturating_add(d));
            st.core
                .handle_drain(now, &workers, deadline, options.then)
                .map(|()| {
                    for (w, cell) in workers.into_iter().zip(cells) {
                        st.drain_waiters.entry(w).or_default().push(cell);
                    }
                })
        })
        .ok_or(RemoveError::Shutdown)??;
        Ok(handles)
    }
}
