//! Handles to tasks' results: typed futures, usable blocking or with `.await`.

use crate::context::{Inner, SubmitError, TaskInfo};
use crate::direct::{Direct, DirectSlot};
use crate::driver::DriverCmd;
use crate::registry::TaskFn;
use dagger_core::{MoveFailure, TaskError, TaskId};
use dagger_sched::Completion;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll, Waker};
use tokio::sync::mpsc::UnboundedSender;

pub(crate) type Outcome = Result<Completion, TaskError>;

/// The driver's record of one task the user holds a handle to. When the last handle is
/// dropped the scheduler is told that the result is no longer wanted.
pub(crate) struct Slot {
    pub(crate) id: TaskId,
    pub(crate) func: Option<&'static TaskFn>,
    /// The outcome: null until it is set, once, by the driver loop (or by the thread that
    /// ran a direct task); read without a lock afterwards, and freed with the slot. Boxed:
    /// every task has a slot until it completes, most are never completed with a holder
    /// left (their handles were dropped), and an outcome is several times the size of a
    /// pointer.
    outcome: AtomicPtr<Outcome>,
    /// Async waiters, continuations and blocked threads; also the lock under which a
    /// waiter looks at the outcome before it registers.
    waiters: Mutex<Vec<Waiter>>,
    release: UnboundedSender<DriverCmd>,
    /// Of a direct task, the lane that runs it. Of a task that went to the scheduler, the
    /// direct lane of its context: its release must not overtake a submission the lane
    /// holds back (one that takes its result).
    pub(crate) lane: Option<Arc<Direct>>,
    /// What a task run directly on the driver's threads (see [`crate::direct`]) keeps
    /// besides; unused by any other. Inline and small: a direct task is one allocation of
    /// 128 bytes (with the allocator's header) on the thread that spawns it, and that
    /// thread is what bounds the lane's rate. See [`Slot::direct`].
    direct: DirectSlot,
}

/// What waits for a slot's outcome.
enum Waiter {
    /// An async `fetch`.
    Wake(Waker),
    /// Work to do with the outcome (a direct task whose input this is), run by the thread
    /// that completes the slot.
    Then(Box<dyn FnOnce(&Outcome) + Send>),
    /// A thread blocked in [`Slot::wait`], parked on the slot's address.
    Parked,
}

impl Slot {
    /// Whether this slot was made by the context whose command channel is `cmd`.
    pub(crate) fn belongs_to(&self, cmd: &UnboundedSender<DriverCmd>) -> bool {
        self.release.same_channel(cmd)
    }

    pub(crate) fn new(
        id: TaskId,
        func: Option<&'static TaskFn>,
        release: UnboundedSender<DriverCmd>,
    ) -> Self {
        Self {
            id,
            func,
            outcome: AtomicPtr::new(std::ptr::null_mut()),
            waiters: Mutex::new(Vec::new()),
            release,
            lane: None,
            direct: DirectSlot::unused(),
        }
    }

    /// The slot of a task run directly on the driver's threads by `lane`.
    pub(crate) fn new_direct(
        id: TaskId,
        func: &'static TaskFn,
        release: UnboundedSender<DriverCmd>,
        lane: Arc<Direct>,
        direct: DirectSlot,
    ) -> Self {
        let mut slot = Self::new(id, Some(func), release);
        slot.lane = Some(lane);
        slot.direct = direct;
        slot
    }

    /// The direct-task data, for a task run directly on the driver's threads (the
    /// scheduler never heard of it); `None` for any other.
    pub(crate) fn direct(&self) -> Option<&DirectSlot> {
        self.direct.is_direct().then_some(&self.direct)
    }

    /// Sets the outcome unless it is set; whether this call set it.
    fn set_outcome(&self, outcome: Outcome) -> bool {
        let new = Box::into_raw(Box::new(outcome));
        match self.outcome.compare_exchange(
            std::ptr::null_mut(),
            new,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(_) => {
                // SAFETY: `new` came from `Box::into_raw` above and was not published.
                drop(unsafe { Box::from_raw(new) });
                false
            }
        }
    }

    /// Makes the task findable by its id (a direct task is not, until its id is handed
    /// out: see [`DirectSlot::expose`]).
    pub(crate) fn expose(self: &Arc<Self>) {
        if let (Some(d), Some(lane)) = (self.direct(), &self.lane) {
            d.expose(lane, self);
        }
    }

    /// Called by the driver loop (or a direct task's thread) when the task finished or
    /// failed. Only the first call has an effect. Waiters check the outcome under the
    /// `waiters` lock before sleeping, and this takes that lock after setting it, so none
    /// misses it.
    pub(crate) fn complete(&self, outcome: Outcome) {
        if !self.set_outcome(outcome) {
            return;
        }
        let waiters = std::mem::take(&mut *self.waiters.lock());
        if waiters.is_empty() {
            return;
        }
        let Some(outcome) = self.outcome() else {
            unreachable!("set above")
        };
        let mut parked = false;
        for w in waiters {
            match w {
                Waiter::Wake(w) => w.wake(),
                Waiter::Then(f) => f(outcome),
                Waiter::Parked => parked = true,
            }
        }
        if parked {
            // SAFETY: the key is this slot's address, which only `wait` parks on; the
            // token is not used.
            unsafe {
                parking_lot_core::unpark_all(
                    self.park_key(),
                    parking_lot_core::DEFAULT_UNPARK_TOKEN,
                );
            }
        }
    }

    /// The key blocked waiters park on: the slot's address.
    fn park_key(&self) -> usize {
        self as *const Self as usize
    }

    /// Runs `f` with the outcome once there is one: at once on this thread if the slot is
    /// complete, else on the thread that completes it.
    pub(crate) fn then(&self, f: impl FnOnce(&Outcome) + Send + 'static) {
        if let Some(o) = self.outcome() {
            return f(o);
        }
        let mut waiters = self.waiters.lock();
        match self.outcome() {
            Some(o) => {
                drop(waiters);
                f(o)
            }
            None => waiters.push(Waiter::Then(Box::new(f))),
        }
    }

    /// The outcome, if the task finished or failed.
    pub(crate) fn outcome(&self) -> Option<&Outcome> {
        let p = self.outcome.load(Ordering::Acquire);
        // SAFETY: a non-null pointer is a boxed outcome, set once and freed only with the
        // slot.
        unsafe { p.as_ref() }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.outcome().is_some()
    }

    /// Blocks until the outcome is set; a set outcome is read without locking.
    pub(crate) fn wait(&self) -> &Outcome {
        if let Some(o) = self.outcome() {
            return o;
        }
        {
            let mut waiters = self.waiters.lock();
            if let Some(o) = self.outcome() {
                return o;
            }
            // `complete` sets the outcome before it takes the list: it finds this entry,
            // or this thread found the outcome above.
            if !waiters.iter().any(|w| matches!(w, Waiter::Parked)) {
                waiters.push(Waiter::Parked);
            }
        }
        loop {
            if let Some(o) = self.outcome() {
                return o;
            }
            // SAFETY: parks on this slot's address; the validation runs under the
            // parking lot's lock for that address, which `complete` takes (after setting
            // the outcome) to wake every thread parked there, so no wake-up is missed.
            unsafe {
                parking_lot_core::park(
                    self.park_key(),
                    || self.outcome().is_none(),
                    || {},
                    |_, _| {},
                    parking_lot_core::DEFAULT_PARK_TOKEN,
                    None,
                );
            }
        }
    }

    fn poll(&self, cx: &mut TaskCx<'_>) -> Poll<Outcome> {
        if let Some(o) = self.outcome() {
            return Poll::Ready(Outcome::clone(o));
        }
        let mut waiters = self.waiters.lock();
        if let Some(o) = self.outcome() {
            return Poll::Ready(Outcome::clone(o));
        }
        let known = waiters
            .iter()
            .any(|w| matches!(w, Waiter::Wake(w) if w.will_wake(cx.waker())));
        if !known {
            waiters.push(Waiter::Wake(cx.waker().clone()));
        }
        Poll::Pending
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let outcome = *self.outcome.get_mut();
        if !outcome.is_null() {
            // SAFETY: set once from `Box::into_raw`; nothing borrows it past the slot.
            drop(unsafe { Box::from_raw(outcome) });
        }
        match (self.direct(), &self.lane) {
            // Only the direct lane knew it.
            (Some(d), Some(lane)) => d.forget(lane, self.id),
            (Some(_), None) => {}
            (None, Some(lane)) => lane.release(&self.release, self.id),
            // The context may be gone already; then there is nothing to release.
            (None, None) => {
                let _ = self.release.send(DriverCmd::Release(self.id));
            }
        }
    }
}

/// A typed handle to a task's result. Passing `&handle` as an argument of another task
/// makes that task depend on this one. Cloning is cheap; the result is kept by the cluster
/// while any clone is alive.
pub struct Handle<T> {
    pub(crate) slot: Arc<Slot>,
    pub(crate) ctx: Arc<Inner>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Self {
            slot: self.slot.clone(),
            ctx: self.ctx.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Handle<{}>({})",
            std::any::type_name::<T>(),
            self.slot.id
        )
    }
}

impl<T> Handle<T> {
    pub(crate) fn new(slot: Arc<Slot>, ctx: Arc<Inner>) -> Self {
        Self {
            slot,
            ctx,
            _t: PhantomData,
        }
    }

    /// The task's id. (A task of the driver's own threads becomes findable by its id,
    /// e.g. as an argument given by id to [`Context::spawn_by_name`](crate::Context::spawn_by_name),
    /// once its id was asked for.)
    pub fn id(&self) -> TaskId {
        self.slot.expose();
        self.slot.id
    }

    /// True once the task finished or failed. Never blocks.
    pub fn is_done(&self) -> bool {
        self.slot.is_done()
    }

    /// Blocks until the task finished; `Err` if it failed. Does not move the result to the
    /// driver. Must not be called from inside an async runtime's worker thread (use
    /// `.await` there).
    pub fn wait(&self) -> Result<(), TaskError> {
        match self.slot.wait() {
            Ok(_) => Ok(()),
            Err(e) => Err(e.clone()),
        }
    }

    /// Where and when the task ran. Blocks until the task finished.
    pub fn info(&self) -> Result<TaskInfo, TaskError> {
        self.wait()?;
        let task = self.slot.id;
        match (self.slot.direct(), &self.slot.lane) {
            (Some(d), Some(lane)) => d.info(lane, task),
            _ => self.ctx.task_info(task),
        }
        .ok_or(TaskError::Shutdown { task })
    }

    /// The same task's result, viewed as another type. `fetch` then checks the type and
    /// reports `TaskError::TypeMismatch` if it differs, and passing the handle as a task's
    /// argument is refused with `SubmitError::TypeMismatch`.
    pub fn cast<U>(self) -> Handle<U> {
        Handle {
            slot: self.slot,
            ctx: self.ctx,
            _t: PhantomData,
        }
    }
}

impl<T> Handle<T> {
    /// Checks, where this process knows the task's function, that its result type is `T`:
    /// a handle [`cast`](Handle::cast) to another type must not feed a parameter of that
    /// type (the bytes of a `u64` would decode as some other value).
    pub(crate) fn check_arg_type(&self) -> Result<(), SubmitError> {
        match self.type_mismatch() {
            Some((expected, found)) => Err(SubmitError::TypeMismatch {
                task: self.slot.id,
                expected,
                found,
            }),
            None => Ok(()),
        }
    }

    /// `(T, the function's result type)` where this process knows the task's function and
    /// they differ. An empty result type is untyped (a `Context::put` value, typed by its
    /// handle).
    fn type_mismatch(&self) -> Option<(&'static str, &'static str)> {
        let found = (self.slot.func?.result_type)();
        let expected = std::any::type_name::<T>();
        (!found.is_empty() && found != expected).then_some((expected, found))
    }
}

impl<T: DeserializeOwned> Handle<T> {
    /// Blocks until the task finished and returns its result, moved to the driver.
    /// Costs one round trip to the holding worker for results larger than the inline limit.
    pub fn fetch(&self) -> Result<T, TaskError> {
        if !self.slot.is_done() {
            let ctx = crate::Context::from_inner(self.ctx.clone());
            crate::progress::while_waiting(&ctx, || {
                let _ = self.slot.wait();
            });
        }
        let outcome = self.slot.wait().as_ref().map_err(Clone::clone);
        self.decode(outcome, |chunk, holders| {
            self.ctx.fetch_chunk_blocking(chunk, holders)
        })
    }

    fn check_type(&self) -> Result<(), TaskError> {
        match self.type_mismatch() {
            Some((expected, found)) => Err(TaskError::TypeMismatch {
                task: self.slot.id,
                expected: expected.to_string(),
                found: found.to_string(),
            }),
            None => Ok(()),
        }
    }

    fn decode(
        &self,
        outcome: Result<&Completion, TaskError>,
        get: impl FnOnce(dagger_core::ChunkId, Vec<dagger_core::WorkerId>) -> Result<Vec<u8>, TaskError>,
    ) -> Result<T, TaskError> {
        self.check_type()?;
        let bytes;
        let slice: &[u8] = match outcome? {
            Completion::Value(v) => v,
            Completion::Stored { holders, .. } => {
                bytes = get(self.slot.id.chunk(), holders.clone())?;
                &bytes
            }
        };
        postcard::from_bytes(slice).map_err(|e| TaskError::TypeMismatch {
            task: self.slot.id,
            expected: std::any::type_name::<T>().to_string(),
            found: format!("bytes that do not decode as it ({e})"),
        })
    }
}

/// Waits for a slot's outcome without blocking a thread.
struct SlotWait<'a>(&'a Slot);

impl Future for SlotWait<'_> {
    type Output = Outcome;
    fn poll(self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Outcome> {
        self.0.poll(cx)
    }
}

/// Awaiting a handle gives its result, like `fetch`, without blocking a thread.
impl<T: DeserializeOwned + Send + 'static> std::future::IntoFuture for Handle<T> {
    type Output = Result<T, TaskError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T, TaskError>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let outcome = SlotWait(&self.slot).await;
            let fetched = match &outcome {
                Ok(Completion::Stored { holders, .. }) => Some(
                    self.ctx
                        .fetch_chunk(self.slot.id.chunk(), holders.clone())
                        .await,
                ),
                _ => None,
            };
            self.decode(
                outcome.as_ref().map_err(Clone::clone),
                |_, _| match fetched {
                    Some(r) => r,
                    None => Err(TaskError::MoveFailed {
                        task: self.slot.id,
                        cause: MoveFailure::NoHolder,
                    }),
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{decode_arg, ArgValue, CallError, TaskOutput};
    use crate::{Arg, Context, Options};
    use std::sync::{Condvar as StdCondvar, Mutex as StdMutex};
    use std::time::{Duration, Instant};

    /// Opened by the test below: `gated` waits for it.
    static GATE: (StdMutex<bool>, StdCondvar) = (StdMutex::new(false), StdCondvar::new());

    const GATED: &str = "dagger::handle::tests::gated";
    const PLUS_ONE: &str = "dagger::handle::tests::plus_one";

    /// Returns its `u64` argument once the gate is open.
    fn gated(args: &mut [ArgValue<'_>]) -> Result<TaskOutput, CallError> {
        let [x] = args else {
            return Err(CallError::arity(1, args.len()));
        };
        let x: u64 = decode_arg(x, "x")?;
        let mut open = GATE.0.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = GATE.1.wait(open).unwrap_or_else(|e| e.into_inner());
        }
        Ok(TaskOutput::Bytes(
            postcard::to_stdvec(&x).expect("a u64 encodes"),
        ))
    }

    fn plus_one(args: &mut [ArgValue<'_>]) -> Result<TaskOutput, CallError> {
        let [x] = args else {
            return Err(CallError::arity(1, args.len()));
        };
        let x: u64 = decode_arg(x, "x")?;
        Ok(TaskOutput::Bytes(
            postcard::to_stdvec(&(x + 1)).expect("a u64 encodes"),
        ))
    }

    inventory::submit! {
        TaskFn { name: GATED, call: gated, result_type: || "u64", arg_types: || vec!["u64"] }
    }
    inventory::submit! {
        TaskFn { name: PLUS_ONE, call: plus_one, result_type: || "u64", arg_types: || vec!["u64"] }
    }

    /// A handle dropped before its task finished frees the task's slot at once (the driver
    /// keeps only a weak reference): a graph whose handles are dropped as it is built does
    /// not keep a slot per task. The task still runs, its dependents get its result, and
    /// tasks spawned later on them are fetched as usual.
    #[test]
    fn a_dropped_handle_frees_its_slot_before_the_task_runs() {
        let ctx = Context::builder().direct(false).build().unwrap();
        let value = |x: u64| Arg::Value(postcard::to_stdvec(&x).unwrap());
        let a: Handle<u64> = ctx
            .spawn_by_name(GATED, vec![value(41)], Options::default())
            .unwrap();
        let b: Handle<u64> = ctx
            .spawn_by_name(PLUS_ONE, vec![Arg::Task(a.id())], Options::default())
            .unwrap();
        let slot = Arc::downgrade(&a.slot);
        drop(a);
        // The spawn command holds the slot until the driver loop has taken it in.
        let deadline = Instant::now() + Duration::from_secs(10);
        while slot.upgrade().is_some() {
            assert!(
                Instant::now() < deadline,
                "the slot of a task whose handles are gone is kept until the task finishes"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!b.is_done(), "the gate is still shut");
        *GATE.0.lock().unwrap() = true;
        GATE.1.notify_all();
        assert_eq!(b.fetch().unwrap(), 42);
        let c: Handle<u64> = ctx
            .spawn_by_name(PLUS_ONE, vec![Arg::Task(b.id())], Options::default())
            .unwrap();
        drop(b);
        assert_eq!(c.fetch().unwrap(), 43);
    }

    /// Every task the driver knows has a slot until it completes: a million-task graph
    /// holds a million of them at its peak.
    #[test]
    fn a_slot_stays_small() {
        assert!(
            std::mem::size_of::<Slot>() <= 96,
            "{} bytes",
            std::mem::size_of::<Slot>()
        );
    }
}
