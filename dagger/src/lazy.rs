//! The lazy style: describe a graph first, run it with `Context::collect`. A thin layer over
//! the eager one: collecting submits every node as a task in one batch.

use crate::context::{Context, SubmitError};
use crate::handle::{Handle, Slot};
use dagger_core::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::sync::Arc;

pub(crate) struct LazyNode {
    pub(crate) func: &'static str,
    pub(crate) args: Vec<LazyArg>,
    pub(crate) options: Options,
}

/// Dropping a long chain of lazy tasks must not recurse once per node (a chain of a
/// million tasks would overflow the stack): children whose last reference this is are
/// taken apart on an explicit stack.
impl Drop for LazyNode {
    fn drop(&mut self) {
        let mut stack: Vec<Arc<LazyNode>> = Vec::new();
        let take = |args: &mut Vec<LazyArg>, stack: &mut Vec<Arc<LazyNode>>| {
            for a in args.drain(..) {
                match a.0 {
                    LazyArgKind::Node(child) => stack.push(child),
                    LazyArgKind::Gather(parts) => {
                        for p in parts {
                            if let LazyArgKind::Node(child) = p {
                                stack.push(child);
                            }
                        }
                    }
                    _ => {}
                }
            }
        };
        take(&mut self.args, &mut stack);
        while let Some(node) = stack.pop() {
            if let Some(mut node) = Arc::into_inner(node) {
                take(&mut node.args, &mut stack);
            }
        }
    }
}

/// One argument of a lazy task (opaque; made by [`IntoLazy`]).
pub struct LazyArg(pub(crate) LazyArgKind);

pub(crate) enum LazyArgKind {
    /// An encoded value.
    Value(Vec<u8>),
    /// Another lazy task.
    Node(Arc<LazyNode>),
    /// A task already spawned (kept alive until the graph is submitted).
    Spawned(Arc<Slot>),
    /// A value that could not be encoded; reported at `collect`.
    Invalid(SubmitError),
    /// A gathered argument: its parts, in order, none of them a `Gather`.
    Gather(Vec<LazyArgKind>),
}

impl LazyArgKind {
    /// The lazy tasks this argument refers to, in order.
    pub(crate) fn children(&self) -> impl Iterator<Item = &Arc<LazyNode>> {
        let (one, parts): (Option<&Arc<LazyNode>>, &[LazyArgKind]) = match self {
            LazyArgKind::Node(n) => (Some(n), &[]),
            LazyArgKind::Gather(parts) => (None, parts),
            _ => (None, &[]),
        };
        one.into_iter().chain(parts.iter().filter_map(|p| match p {
            LazyArgKind::Node(n) => Some(n),
            _ => None,
        }))
    }
}

/// A task that has not run yet: pass it to other lazy tasks, then `Context::collect` it.
pub struct Lazy<T> {
    pub(crate) node: Arc<LazyNode>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Lazy<T> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> Lazy<T> {
    /// A lazy call of the registered function `func` (used by `#[dagger::task]`).
    #[doc(hidden)]
    pub fn new(func: &'static str, args: Vec<LazyArg>, options: Options) -> Self {
        Self {
            node: Arc::new(LazyNode {
                func,
                args,
                options,
            }),
            _t: PhantomData,
        }
    }
}

impl<T> Lazy<T> {
    /// The graph under this task as Graphviz DOT, before it runs (Dagger.jl's
    /// `show_plan`, Dask's `visualize`): a node per lazy task labelled with its function
    /// (a task reached along several paths is one node), a small leaf per plain value or
    /// spawned task, and an edge per argument labelled with its position. Render it with
    /// `dot -Tsvg`.
    pub fn to_dot(&self) -> String {
        crate::timeline::dot::lazy_graph(&self.node)
    }
}

/// A value usable as an argument of type `T` of a lazy task: a plain value, another lazy
/// task returning `T`, or a handle to a spawned task returning `T`.
pub trait IntoLazy<T> {
    /// Turns it into a lazy argument.
    fn into_lazy(self) -> LazyArg;
}

impl<T: Serialize> IntoLazy<T> for T {
    fn into_lazy(self) -> LazyArg {
        match postcard::to_allocvec(&self) {
            Ok(v) => LazyArg(LazyArgKind::Value(v)),
            Err(e) => LazyArg(LazyArgKind::Invalid(SubmitError::Encode {
                ty: std::any::type_name::<T>(),
                message: e.to_string(),
            })),
        }
    }
}

impl<T> IntoLazy<T> for Lazy<T> {
    fn into_lazy(self) -> LazyArg {
        LazyArg(LazyArgKind::Node(self.node))
    }
}

impl<T> IntoLazy<T> for &Lazy<T> {
    fn into_lazy(self) -> LazyArg {
        LazyArg(LazyArgKind::Node(self.node.clone()))
    }
}

impl<T> IntoLazy<T> for &Handle<T> {
    fn into_lazy(self) -> LazyArg {
        match self.check_arg_type() {
            Ok(()) => LazyArg(LazyArgKind::Spawned(self.slot.clone())),
            Err(e) => LazyArg(LazyArgKind::Invalid(e)),
        }
    }
}

/// A `Vec<T>` value feeds a lazy task's `DeviceVec<T>` parameter (same encoding).
impl<T: dagger_move::Element> IntoLazy<dagger_move::DeviceVec<T>> for Vec<T> {
    fn into_lazy(self) -> LazyArg {
        IntoLazy::<Vec<T>>::into_lazy(self)
    }
}

/// A lazy task returning `Vec<T>` feeds a `DeviceVec<T>` parameter.
impl<T: dagger_move::Element> IntoLazy<dagger_move::DeviceVec<T>> for Lazy<Vec<T>> {
    fn into_lazy(self) -> LazyArg {
        LazyArg(LazyArgKind::Node(self.node))
    }
}

/// A lazy task returning `Vec<T>` feeds a `DeviceVec<T>` parameter.
impl<T: dagger_move::Element> IntoLazy<dagger_move::DeviceVec<T>> for &Lazy<Vec<T>> {
    fn into_lazy(self) -> LazyArg {
        LazyArg(LazyArgKind::Node(self.node.clone()))
    }
}

/// A lazy task returning `DeviceVec<T>` feeds a `Vec<T>` parameter (copied to the host of
/// the task that takes it).
impl<T: dagger_move::Element> IntoLazy<Vec<T>> for Lazy<dagger_move::DeviceVec<T>> {
    fn into_lazy(self) -> LazyArg {
        LazyArg(LazyArgKind::Node(self.node))
    }
}

/// A lazy task returning `DeviceVec<T>` feeds a `Vec<T>` parameter.
impl<T: dagger_move::Element> IntoLazy<Vec<T>> for &Lazy<dagger_move::DeviceVec<T>> {
    fn into_lazy(self) -> LazyArg {
        LazyArg(LazyArgKind::Node(self.node.clone()))
    }
}

/// A spawned task returning `Vec<T>` feeds a lazy task's `DeviceVec<T>` parameter.
impl<T: dagger_move::Element> IntoLazy<dagger_move::DeviceVec<T>> for &Handle<Vec<T>> {
    fn into_lazy(self) -> LazyArg {
        IntoLazy::<Vec<T>>::into_lazy(self)
    }
}

/// Lazy tasks gather into a parameter of type `Vec<T>`: each is a dependency, and the
/// function receives their results in order.
impl<T> IntoLazy<Vec<T>> for Vec<Lazy<T>> {
    fn into_lazy(self) -> LazyArg {
        LazyArg(LazyArgKind::Gather(
            self.into_iter()
                .map(|l| LazyArgKind::Node(l.node))
                .collect(),
        ))
    }
}

/// See the implementation for `Vec<Lazy<T>>`.
impl<T> IntoLazy<Vec<T>> for &[Lazy<T>] {
    fn into_lazy(self) -> LazyArg {
        LazyArg(LazyArgKind::Gather(
            self.iter()
                .map(|l| LazyArgKind::Node(l.node.clone()))
                .collect(),
        ))
    }
}

/// Handles to spawned tasks gather into a lazy task's `Vec<T>` parameter too.
impl<T> IntoLazy<Vec<T>> for &[Handle<T>] {
    fn into_lazy(self) -> LazyArg {
        LazyArg(LazyArgKind::Gather(
            self.iter().map(|h| IntoLazy::<T>::into_lazy(h).0).collect(),
        ))
    }
}

/// What `Context::collect` accepts: one lazy task, or a vector of them.
pub trait Collect {
    /// The collected result.
    type Output;
    /// The handles the graph's roots were spawned as.
    type Handles;
    /// Spawns the whole graph (one submission) and returns the roots' handles.
    fn spawn_all(self, ctx: &Context) -> Result<Self::Handles, SubmitError>;
    /// Waits for and fetches the roots' results.
    fn fetch_all(handles: Self::Handles) -> Result<Self::Output, dagger_core::TaskError>;
}

impl<T: DeserializeOwned> Collect for Lazy<T> {
    type Output = T;
    type Handles = Handle<T>;
    fn spawn_all(self, ctx: &Context) -> Result<Handle<T>, SubmitError> {
        let mut hs = ctx.spawn_lazy_graph(vec![self.node])?;
        Ok(Handle::new(
            hs.pop().expect("one root gives one handle"),
            ctx.inner().clone(),
        ))
    }
    fn fetch_all(h: Handle<T>) -> Result<T, dagger_core::TaskError> {
        h.fetch()
    }
}

impl<T: DeserializeOwned> Collect for Vec<Lazy<T>> {
    type Output = Vec<T>;
    type Handles = Vec<Handle<T>>;
    fn spawn_all(self, ctx: &Context) -> Result<Vec<Handle<T>>, SubmitError> {
        let slots = ctx.spawn_lazy_graph(self.into_iter().map(|l| l.node).collect())?;
        Ok(slots
            .into_iter()
            .map(|s| Handle::new(s, ctx.inner().clone()))
            .collect())
    }
    fn fetch_all(hs: Vec<Handle<T>>) -> Result<Vec<T>, dagger_core::TaskError> {
        hs.iter().map(|h| h.fetch()).collect()
    }
}

/// Byte buffers that encode alike: a value, a lazy task or a spawned task of one feeds a
/// lazy task's parameter of another ([`crate::Bytes`] reads its argument in place).
macro_rules! same_bytes {
    ($($from:ty => $to:ty),* $(,)?) => {$(
        impl IntoLazy<$to> for $from {
            fn into_lazy(self) -> LazyArg {
                IntoLazy::<$from>::into_lazy(self)
            }
        }

        impl IntoLazy<$to> for Lazy<$from> {
            fn into_lazy(self) -> LazyArg {
                LazyArg(LazyArgKind::Node(self.node))
            }
        }

        impl IntoLazy<$to> for &Lazy<$from> {
            fn into_lazy(self) -> LazyArg {
                LazyArg(LazyArgKind::Node(self.node.clone()))
            }
        }

        impl IntoLazy<$to> for &Handle<$from> {
            fn into_lazy(self) -> LazyArg {
                IntoLazy::<$from>::into_lazy(self)
            }
        }
    )*};
}

crate::args::byte_buffer_pairs!(same_bytes);
