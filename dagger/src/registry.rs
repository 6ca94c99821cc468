//! The registry of task functions: filled at compile time by `#[dagger::task]`, identical in
//! every process of one binary.

use dagger_core::hash::IdHashMap;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

/// Why a registered function could not be called with the given arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The number of arguments differs from the function's parameters.
    #[error("expected {expected} arguments, got {got}")]
    Arity {
        /// Parameters of the function.
        expected: usize,
        /// Arguments given.
        got: usize,
    },
    /// An argument could not be decoded as its parameter's type.
    #[error("argument `{param}` is not a `{ty}`: {message}")]
    Decode {
        /// The parameter's name.
        param: &'static str,
        /// The parameter's type.
        ty: &'static str,
        /// What the decoder said.
        message: String,
    },
    /// The result could not be encoded.
    #[error("result could not be encoded: {0}")]
    Encode(String),
}

impl CallError {
    /// An arity error.
    pub fn arity(expected: usize, got: usize) -> Self {
        CallError::Arity { expected, got }
    }
}

/// One registered task function. Created by `#[dagger::task]`; not meant to be built by hand.
pub struct TaskFn {
    /// The stable name it is registered under.
    pub name: &'static str,
    /// Decodes the arguments, calls the function and encodes its result (or hands back
    /// its device buffer, for a result that stays on a device).
    pub call: fn(&mut [ArgValue<'_>]) -> Result<TaskOutput, CallError>,
    /// The name of the function's result type (checked at `fetch`).
    pub result_type: fn() -> &'static str,
    /// The names of its parameters' types (move functions are chosen by them).
    pub arg_types: fn() -> Vec<&'static str>,
}

inventory::collect!(TaskFn);

/// The name of the built-in task behind [`Context::put`](crate::Context::put): it returns its
/// one argument's encoded bytes unchanged.
pub(crate) const PUT: &str = "dagger::put";

/// `PUT`'s function. Its result type is left empty: the handle `put` returns is typed by the
/// value it was made from, and an empty result type is not checked against it.
fn put_call(args: &mut [ArgValue<'_>]) -> Result<TaskOutput, CallError> {
    match args {
        [ArgValue::Bytes(b)] => Ok(TaskOutput::Bytes(b.to_vec())),
        [ArgValue::Value(_)] => Err(CallError::Decode {
            param: "value",
            ty: "encoded bytes",
            message: "a put value reached its task as a decoded value".into(),
        }),
        _ => Err(CallError::arity(1, args.len())),
    }
}

inventory::submit! {
    TaskFn {
        name: PUT,
        call: put_call,
        result_type: || "",
        arg_types: || vec![""],
    }
}

struct Registry {
    by_name: IdHashMap<&'static str, &'static TaskFn>,
    hash: u64,
}

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| {
        let mut by_name = IdHashMap::default();
        let mut names: Vec<(&'static str, &'static str)> = Vec::new();
        for f in inventory::iter::<TaskFn> {
            if by_name.insert(f.name, f).is_some() {
                tracing::warn!(
                    name = f.name,
                    "two task functions share one name; the last one wins"
                );
            }
            names.push((f.name, (f.result_type)()));
        }
        names.sort();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        names.hash(&mut h);
        Registry {
            by_name,
            hash: h.finish(),
        }
    })
}

/// The function registered under `name` in this process.
pub fn lookup(name: &str) -> Option<&'static TaskFn> {
    registry().by_name.get(name).copied()
}

/// [`lookup`] for a name fixed at compile time (what `#[dagger::task]` submits), with the
/// last answer remembered per thread: a loop that spawns one function looks it up once.
pub(crate) fn lookup_static(name: &'static str) -> Option<&'static TaskFn> {
    thread_local! {
        static LAST: std::cell::Cell<Option<(&'static str, Option<&'static TaskFn>)>> =
            const { std::cell::Cell::new(None) };
    }
    if let Some((n, f)) = LAST.with(std::cell::Cell::get) {
        if std::ptr::eq(n, name) {
            return f;
        }
    }
    let f = lookup(name);
    LAST.with(|c| c.set(Some((name, f))));
    f
}

/// A fingerprint of every registered (name, result type): two processes of one binary agree.
pub fn registry_hash() -> u64 {
    registry().hash
}

/// The names of all registered task functions, sorted.
pub fn task_names() -> Vec<&'static str> {
    let mut v: Vec<_> = registry().by_name.keys().copied().collect();
    v.sort();
    v
}

/// One argument as it reaches a task: encoded bytes in host memory, or a value a move
/// function produced for the task's processor (a device buffer, say).
pub enum ArgValue<'a> {
    /// Encoded with postcard.
    Bytes(&'a [u8]),
    /// Already a value of the parameter's type (taken by the call).
    Value(Option<Box<dyn std::any::Any + Send>>),
}

/// Decodes one argument (used by the code `#[dagger::task]` generates).
pub fn decode_arg<T: serde::de::DeserializeOwned + 'static>(
    arg: &mut ArgValue<'_>,
    param: &'static str,
) -> Result<T, CallError> {
    let ty = std::any::type_name::<T>();
    match arg {
        ArgValue::Bytes(bytes) => postcard::from_bytes(bytes).map_err(|e| CallError::Decode {
            param,
            ty,
            message: e.to_string(),
        }),
        ArgValue::Value(v) => match v.take().map(|b| b.downcast::<T>()) {
            Some(Ok(t)) => Ok(*t),
            Some(Err(_)) => Err(CallError::Decode {
                param,
                ty,
                message: "the moved value is of another type".into(),
            }),
            None => Err(CallError::Decode {
                param,
                ty,
                message: "the value was already taken".into(),
            }),
        },
    }
}

/// What a task's function produced: encoded host bytes, or a buffer that stays in a
/// device's memory until something elsewhere needs it.
pub enum TaskOutput {
    /// Encoded with postcard.
    Bytes(Vec<u8>),
    /// A device-resident value (a `DeviceVec` on the device that ran the task).
    Device(std::sync::Arc<dyn dagger_move::DeviceBuffer>),
    /// Encoded with postcard straight into a shared-memory segment of the worker's pool
    /// (a large result, where chunks move through shared memory).
    Stored(std::sync::Arc<dagger_move::shm::StoredSegment>),
    /// Encoded with postcard, in a vector the task may still share (a `Bytes` that
    /// `BytesMut` laid out as its own encoding).
    Shared(std::sync::Arc<Vec<u8>>),
}

/// Results at least this large are encoded into a shared-memory segment when the worker
/// running the task offers one ([`with_result_pool`]).
pub(crate) const STORED_RESULT_MIN_BYTES: usize = 1 << 20;

thread_local! {
    /// The pool of the worker whose task runs on this thread, while it runs.
    static RESULT_POOL: std::cell::RefCell<Option<std::sync::Arc<dagger_move::shm::SegmentPool>>> =
        const { std::cell::RefCell::new(None) };
}

/// The pool the worker running the task on this thread offers for results, if any.
pub(crate) fn result_pool() -> Option<std::sync::Arc<dagger_move::shm::SegmentPool>> {
    RESULT_POOL.with(|p| p.borrow().clone())
}

/// Runs `f` (a task's call) with `pool` offered for its result: a result of at least
/// [`STORED_RESULT_MIN_BYTES`] is encoded into one of its segments if it has room.
pub(crate) fn with_result_pool<R>(
    pool: Option<std::sync::Arc<dagger_move::shm::SegmentPool>>,
    f: impl FnOnce() -> R,
) -> R {
    if pool.is_none() {
        return f();
    }
    struct Restore(Option<std::sync::Arc<dagger_move::shm::SegmentPool>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            RESULT_POOL.with(|p| *p.borrow_mut() = prev);
        }
    }
    let _restore = Restore(RESULT_POOL.with(|p| p.replace(pool)));
    f()
}

/// Encodes a result into a segment of the running worker's pool, if it offers one, the
/// result is large enough and the pool has room.
fn encode_stored<T: serde::Serialize>(v: &T, size: usize) -> Option<TaskOutput> {
    if size < STORED_RESULT_MIN_BYTES {
        return None;
    }
    let mut w = RESULT_POOL.with(|p| {
        let pool = p.borrow();
        match pool.as_ref()?.alloc_stored(size) {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "no shared-memory segment for a result");
                None
            }
        }
    })?;
    match postcard::to_slice(v, &mut w) {
        Ok(used) if used.len() == size => Some(TaskOutput::Stored(std::sync::Arc::new(w.finish()))),
        _ => None,
    }
}

/// Wraps a task's result so that the code `#[dagger::task]` generates can pick, by the
/// result's type, how it leaves the task: [`OutputInPlace`] for a `DeviceVec` (kept on
/// its device) and a `Bytes` (kept in its segment), [`OutputViaSerialize`] for everything
/// else.
pub struct OutputOf<T>(pub T);

/// A result that can stay where it is: a `DeviceVec` on its device, a `Bytes` in the
/// shared-memory segment it was built in.
pub trait OutputInPlace {
    /// The task's output.
    fn task_output(&self) -> Result<TaskOutput, CallError>;
}

impl<T: dagger_move::Element> OutputInPlace for &OutputOf<dagger_move::DeviceVec<T>> {
    fn task_output(&self) -> Result<TaskOutput, CallError> {
        match self.0.as_device_buffer() {
            Some(buf) => Ok(TaskOutput::Device(buf)),
            None => encode_result(&self.0).map(TaskOutput::Bytes),
        }
    }
}

/// Any other result: encoded.
pub trait OutputViaSerialize {
    /// The task's output.
    fn task_output(&self) -> Result<TaskOutput, CallError>;
}

impl<T: serde::Serialize> OutputViaSerialize for OutputOf<T> {
    fn task_output(&self) -> Result<TaskOutput, CallError> {
        encode_output(&self.0)
    }
}

/// A `Bytes` built by [`crate::BytesMut`] is already its own encoding (in a segment of the
/// worker's pool, or in a vector): that memory becomes the result, with no copy.
impl OutputInPlace for &OutputOf<crate::Bytes> {
    fn task_output(&self) -> Result<TaskOutput, CallError> {
        match self.0.encoding() {
            Some(crate::bytes::Encoding::Segment(seg)) => Ok(TaskOutput::Stored(seg)),
            Some(crate::bytes::Encoding::Vec(v)) => Ok(TaskOutput::Shared(v)),
            None => encode_output(&self.0),
        }
    }
}

/// Encodes a result: into a segment of the running worker's pool when it is large and the
/// worker offers one ([`with_result_pool`]), else into a vector of exactly its size.
fn encode_output<T: serde::Serialize>(v: &T) -> Result<TaskOutput, CallError> {
    let size = encoded_len(v)?;
    match encode_stored(v, size) {
        Some(out) => Ok(out),
        None => encode_sized(v, size).map(TaskOutput::Bytes),
    }
}

fn encoded_len<T: serde::Serialize>(v: &T) -> Result<usize, CallError> {
    postcard::experimental::serialized_size(v).map_err(|e| CallError::Encode(e.to_string()))
}

/// Encodes `v`, whose encoding is `size` bytes, into one allocation of that size.
fn encode_sized<T: serde::Serialize>(v: &T, size: usize) -> Result<Vec<u8>, CallError> {
    postcard::to_extend(v, Vec::with_capacity(size)).map_err(|e| CallError::Encode(e.to_string()))
}

/// Encodes a result (used by the code `#[dagger::task]` generates).
pub fn encode_result<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, CallError> {
    encode_sized(v, encoded_len(v)?)
}
