//! What can be passed as a task argument: a plain value or a handle to another task's
//! result (a dependency, checked by the compiler: a `Handle<u64>` only where a `u64` is
//! expected).

use crate::context::{Context, SubmitError};
use crate::handle::{Handle, Slot};
use dagger_core::{Arg, Part, TaskId};
use serde::Serialize;
use std::sync::Arc;

/// A value usable as a task argument of type `T`.
pub trait IntoArg<T> {
    /// Turns the argument into a task's argument (encoding a value with postcard) for a
    /// task of `ctx`.
    fn into_arg(self, ctx: &Context) -> Result<TaskArg, SubmitError>;
}

/// One argument of a task as it is spawned (made by [`IntoArg`]): an encoded value, or
/// another task by its handle, so that a task of the driver's own threads finds its
/// inputs without looking them up.
pub struct TaskArg(pub(crate) ArgIn);

/// A task's argument as spawned.
pub(crate) enum ArgIn {
    /// An encoded value.
    Value(Vec<u8>),
    /// A small encoded value, held inline (no allocation for an integer or a short key).
    Small(Inline),
    /// Another task, by its handle's slot.
    Task(Arc<Slot>),
    /// Another task, by its id alone (an argument given in wire form).
    Id(TaskId),
    /// A gathered argument: its parts, none of them a `Gather`.
    Gather(Vec<ArgIn>),
}

/// The bytes of a small encoded value, held inline: at most [`Inline::CAP`] of them.
#[derive(Clone, Copy)]
pub(crate) struct Inline {
    len: u8,
    bytes: [u8; Inline::CAP],
}

impl Inline {
    /// Bytes an inline value holds (a `u64` takes at most 10, an `f64` 8); the size keeps
    /// an [`ArgIn`] as small as one holding a vector.
    pub(crate) const CAP: usize = 22;

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl ArgIn {
    /// The encoded value, if it is one.
    pub(crate) fn value(&self) -> Option<&[u8]> {
        match self {
            ArgIn::Value(v) => Some(v),
            ArgIn::Small(v) => Some(v.as_slice()),
            ArgIn::Task(_) | ArgIn::Id(_) | ArgIn::Gather(_) => None,
        }
    }

    /// Its wire form. The slots of the tasks it takes go to `taken`: they must live until
    /// the task is submitted (a slot dropped first would release its result before), and
    /// a task of the scheduler that takes a direct task is held back until that one
    /// finished (see [`crate::direct::Direct::submit`]).
    pub(crate) fn into_wire(self, taken: &mut Vec<Arc<Slot>>) -> Arg {
        match self {
            ArgIn::Gather(parts) => Arg::Gather(
                parts
                    .into_iter()
                    .map(|p| match p.into_wire(taken) {
                        Arg::Value(v) => Part::Value(v),
                        Arg::Task(t) => Part::Task(t),
                        Arg::Gather(_) => unreachable!("gathered parts do not nest"),
                    })
                    .collect(),
            ),
            ArgIn::Value(v) => Arg::Value(v),
            ArgIn::Small(v) => Arg::Value(v.as_slice().to_vec()),
            ArgIn::Id(t) => Arg::Task(t),
            ArgIn::Task(slot) => {
                let id = slot.id;
                taken.push(slot);
                Arg::Task(id)
            }
        }
    }

    /// An argument given in wire form; `slot` finds a direct task by its id.
    pub(crate) fn from_wire(arg: Arg, slot: &impl Fn(TaskId) -> Option<Arc<Slot>>) -> Self {
        let task = |t: TaskId| match slot(t) {
            Some(s) => ArgIn::Task(s),
            None => ArgIn::Id(t),
        };
        match arg {
            Arg::Value(v) => ArgIn::Value(v),
            Arg::Task(t) => task(t),
            Arg::Gather(parts) => ArgIn::Gather(
                parts
                    .into_iter()
                    .map(|p| match p {
                        Part::Value(v) => ArgIn::Value(v),
                        Part::Task(t) => task(t),
                    })
                    .collect(),
            ),
        }
    }

    /// The bytes of its values.
    pub(crate) fn value_bytes(&self) -> u64 {
        match self {
            ArgIn::Value(v) => v.len() as u64,
            ArgIn::Small(v) => v.len as u64,
            ArgIn::Task(_) | ArgIn::Id(_) => 0,
            ArgIn::Gather(parts) => parts.iter().map(ArgIn::value_bytes).sum(),
        }
    }
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self, _ctx: &Context) -> Result<TaskArg, SubmitError> {
        // Sized first: one allocation of the right size, not a vector grown byte by byte.
        let encode_error = |e: postcard::Error| SubmitError::Encode {
            ty: std::any::type_name::<T>(),
            message: e.to_string(),
        };
        let size = postcard::experimental::serialized_size(&self).map_err(encode_error)?;
        if size <= Inline::CAP {
            let mut small = Inline {
                len: 0,
                bytes: [0; Inline::CAP],
            };
            small.len = postcard::to_slice(&self, &mut small.bytes)
                .map_err(encode_error)?
                .len() as u8;
            return Ok(TaskArg(ArgIn::Small(small)));
        }
        postcard::to_extend(&self, Vec::with_capacity(size))
            .map(|v| TaskArg(ArgIn::Value(v)))
            .map_err(encode_error)
    }
}

/// A handle feeds a parameter of its own type; one [`cast`](Handle::cast) to another type
/// than its task's result is refused with [`SubmitError::TypeMismatch`].
impl<T> IntoArg<T> for &Handle<T> {
    fn into_arg(self, ctx: &Context) -> Result<TaskArg, SubmitError> {
        dependency(self, ctx).map(TaskArg)
    }
}

/// The task `h` stands for, as a dependency of a task of `ctx`.
fn dependency<T>(h: &Handle<T>, ctx: &Context) -> Result<ArgIn, SubmitError> {
    if !std::sync::Arc::ptr_eq(&h.ctx, ctx.inner()) {
        return Err(SubmitError::ForeignHandle { task: h.slot.id });
    }
    h.check_arg_type()?;
    Ok(ArgIn::Task(h.slot.clone()))
}

/// Handles gather into a parameter of type `Vec<T>`: each is a dependency, and the
/// function receives their results in order (an empty slice gives an empty vector).
impl<T> IntoArg<Vec<T>> for &[Handle<T>] {
    fn into_arg(self, ctx: &Context) -> Result<TaskArg, SubmitError> {
        self.iter()
            .map(|h| dependency(h, ctx))
            .collect::<Result<_, _>>()
            .map(|parts| TaskArg(ArgIn::Gather(parts)))
    }
}

/// See the implementation for `&[Handle<T>]`.
impl<T> IntoArg<Vec<T>> for &Vec<Handle<T>> {
    fn into_arg(self, ctx: &Context) -> Result<TaskArg, SubmitError> {
        IntoArg::<Vec<T>>::into_arg(self.as_slice(), ctx)
    }
}

/// See the implementation for `&[Handle<T>]`.
impl<T> IntoArg<Vec<T>> for Vec<Handle<T>> {
    fn into_arg(self, ctx: &Context) -> Result<TaskArg, SubmitError> {
        IntoArg::<Vec<T>>::into_arg(self.as_slice(), ctx)
    }
}

/// A `Vec<T>` value feeds a `DeviceVec<T>` parameter (same encoding).
impl<T: dagger_move::Element> IntoArg<dagger_move::DeviceVec<T>> for Vec<T> {
    fn into_arg(self, ctx: &Context) -> Result<TaskArg, SubmitError> {
        IntoArg::<Vec<T>>::into_arg(self, ctx)
    }
}

/// A task returning `Vec<T>` feeds a `DeviceVec<T>` parameter: the result is moved onto
/// the device of the task that takes it.
impl<T: dagger_move::Element> IntoArg<dagger_move::DeviceVec<T>> for &Handle<Vec<T>> {
    fn into_arg(self, ctx: &Context) -> Result<TaskArg, SubmitError> {
        dependency(self, ctx).map(TaskArg)
    }
}

/// A task returning `DeviceVec<T>` feeds a `Vec<T>` parameter: a device-resident result is
/// copied to the host of the task that takes it.
impl<T: dagger_move::Element> IntoArg<Vec<T>> for &Handle<dagger_move::DeviceVec<T>> {
    fn into_arg(self, ctx: &Context) -> Result<TaskArg, SubmitError> {
        dependency(self, ctx).map(TaskArg)
    }
}

/// Byte buffers that encode alike: a value or a task's result of one feeds a parameter of
/// another ([`crate::Bytes`] reads its argument in place).
macro_rules! same_bytes {
    ($($from:ty => $to:ty),* $(,)?) => {$(
        impl IntoArg<$to> for $from {
            fn into_arg(self, ctx: &Context) -> Result<TaskArg, SubmitError> {
                IntoArg::<$from>::into_arg(self, ctx)
            }
        }

        impl IntoArg<$to> for &Handle<$from> {
            fn into_arg(self, ctx: &Context) -> Result<TaskArg, SubmitError> {
                dependency(self, ctx).map(TaskArg)
            }
        }
    )*};
}

/// Calls `$m!` with every pair of byte-buffer types of which the first feeds a parameter
/// of the second (they encode alike).
macro_rules! byte_buffer_pairs {
    ($m:ident) => {
        $m!(
            Vec<u8> => crate::Bytes,
            serde_bytes::ByteBuf => crate::Bytes,
            crate::Bytes => Vec<u8>,
            crate::Bytes => serde_bytes::ByteBuf,
            Vec<u8> => serde_bytes::ByteBuf,
            serde_bytes::ByteBuf => Vec<u8>,
        );
    };
}
pub(crate) use byte_buffer_pairs;

byte_buffer_pairs!(same_bytes);
