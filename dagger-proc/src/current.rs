//! Which processor the calling thread is running a job for.
//!
//! A thread-local slot holds the id of the processor whose job the thread is running and a
//! weak handle to it. [`ThreadProc`](crate::ThreadProc) threads fill it once they have been
//! attached (by [`LocalProcs::detect`](crate::LocalProcs::detect)); [`OsProc`](crate::OsProc)
//! fills it on the threads it starts; a user processor with its own threads fills it with
//! [`enter`] around each job. Reading it costs a thread-local access and, for
//! [`current`] and [`with_current`], upgrading a weak pointer.
//!
//! A worker process detects and attaches its processors before the driver has given it its
//! worker id, so they are attached under the provisional `WorkerId(0)`. Once the id is
//! known the process records it with [`set_worker`] — the worker loop of the `dagger`
//! facade must call it right after the driver's welcome, in worker processes only; from
//! then on [`current_id`] and [`current`] report every
//! processor of the process under that id, and [`worker`] returns it.

use crate::error::WorkerAlreadySet;
use crate::processor::Processor;
use dagger_core::{ProcId, WorkerId};
use std::cell::RefCell;
use std::sync::{Arc, OnceLock, Weak};

/// A processor identity as stored in the thread-local slot.
#[derive(Clone)]
pub(crate) struct Identity {
    pub(crate) id: ProcId,
    pub(crate) proc: Weak<dyn Processor>,
}

thread_local! {
    static CURRENT: RefCell<Option<Identity>> = const { RefCell::new(None) };
}

/// The worker id of this process, once [`set_worker`] has recorded it.
static PROCESS_WORKER: OnceLock<WorkerId> = OnceLock::new();

/// Records the worker id of this process, once it is known (for a worker process: when
/// the driver's welcome arrives). From then on [`current_id`] and [`current`] report the
/// processors of this process under `id`, whatever id they were attached with, and
/// [`worker`] returns it.
///
/// Call it only in a process that is exactly one worker. A process that hosts several
/// workers (the driver's own worker, in-process test clusters) must not call it: its
/// processors then keep the ids they were attached with.
///
/// Can be set once: setting the same id again is `Ok`, another id is
/// [`WorkerAlreadySet`] and changes nothing. Costs one atomic read or write.
pub fn set_worker(id: WorkerId) -> Result<(), WorkerAlreadySet> {
    let set = *PROCESS_WORKER.get_or_init(|| id);
    if set == id {
        Ok(())
    } else {
        Err(WorkerAlreadySet {
            current: set,
            requested: id,
        })
    }
}

/// The worker id recorded by [`set_worker`], or `None` before it (and in processes that
/// never call it). Costs one atomic read.
pub fn worker() -> Option<WorkerId> {
    PROCESS_WORKER.get().copied()
}

/// `id` under the process's worker id, when one was recorded.
fn in_process(id: ProcId) -> ProcId {
    match worker() {
        Some(w) => ProcId::new(w, id.index),
        None => id,
    }
}

/// The processor the calling thread is running a job for, as returned by [`current`].
#[derive(Clone)]
pub struct CurrentProc {
    /// Its id (process and index).
    pub id: ProcId,
    /// The processor itself; downcast with `proc.as_any().downcast_ref::<T>()`.
    pub proc: Arc<dyn Processor>,
}

impl std::fmt::Debug for CurrentProc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentProc")
            .field("id", &self.id)
            .field("kind", &self.proc.kind())
            .finish()
    }
}

/// The id of the processor the calling thread runs a job for, or `None` outside any
/// processor's job (or when that processor was never attached). Its worker is the one
/// recorded by [`set_worker`] once that is called. Costs one thread-local read.
pub fn current_id() -> Option<ProcId> {
    CURRENT.with(|c| c.borrow().as_ref().map(|i| in_process(i.id)))
}

/// The processor the calling thread runs a job for, or `None` outside any processor's job
/// or when the processor has already been dropped. Its id's worker is the one recorded by
/// [`set_worker`] once that is called.
pub fn current() -> Option<CurrentProc> {
    let ident = CURRENT.with(|c| c.borrow().clone())?;
    Some(CurrentProc {
        id: in_process(ident.id),
        proc: ident.proc.upgrade()?,
    })
}

/// Calls `f` with the current processor's index within its process and the processor
/// itself, or with `None` outside any processor's job. The slot is not borrowed while `f`
/// runs, so `f` may call [`enter`] or [`current`].
pub fn with_current<R>(f: impl FnOnce(Option<(u32, &Arc<dyn Processor>)>) -> R) -> R {
    match current() {
        Some(c) => f(Some((c.id.index, &c.proc))),
        None => f(None),
    }
}

/// Marks the calling thread as running a job of processor `id` until the returned guard is
/// dropped; the previous value comes back then. Used by processors that run jobs on
/// threads of their own (see [`Processor::attach`]).
#[must_use = "the processor is current only while the guard lives"]
pub fn enter(id: ProcId, proc: Weak<dyn Processor>) -> CurrentGuard {
    let prev = CURRENT.with(|c| c.borrow_mut().replace(Identity { id, proc }));
    CurrentGuard { prev }
}

pub(crate) fn set_identity(ident: Identity) {
    CURRENT.with(|c| *c.borrow_mut() = Some(ident));
}

/// Restores the previous current processor when dropped; see [`enter`].
pub struct CurrentGuard {
    prev: Option<Identity>,
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let prev = self.prev.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

impl std::fmt::Debug for CurrentGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentGuard")
            .field("prev", &self.prev.as_ref().map(|i| i.id))
            .finish()
    }
}
