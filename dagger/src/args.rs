//! What can be passed as a task argument: a plain value or a handle to another task's
//! result (a dependency, checked by the compiler: a `Handle<u64>` only where a `u64` is
//! expected).

use crate::context::{Context, SubmitError};
use crate::handle::Handle;
use dagger_core::{Arg, Part, TaskId};
use serde::Serialize;

/// A value usable as a task argument of type `T`.
pub trait IntoArg<T> {
    /// Turns the argument into its wire form (encoding a value with postcard) for a task
    /// of `ctx`.
    fn into_arg(self, ctx: &Context) -> Result<Arg, SubmitError>;
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self, _ctx: &Context) -> Result<Arg, SubmitError> {
        // Sized first: one allocation of the right size, not a vector grown byte by byte.
        let encode_error = |e: postcard::Error| SubmitError::Encode {
            ty: std::any::type_name::<T>(),
            message: e.to_string(),
        };
        let size = postcard::experimental::serialized_size(&self).map_err(encode_error)?;
        postcard::to_extend(&self, Vec::with_capacity(size))
            .map(Arg::Value)
            .map_err(encode_error)
    }
}

/// A handle feeds a parameter of its own type; one [`cast`](Handle::cast) to another type
/// than its task's result is refused with [`SubmitError::TypeMismatch`].
impl<T> IntoArg<T> for &Handle<T> {
    fn into_arg(self, ctx: &Context) -> Result<Arg, SubmitError> {
        dependency(self, ctx).map(Arg::Task)
    }
}

/// The task `h` stands for, as a dependency of a task of `ctx`.
fn dependency<T>(h: &Handle<T>, ctx: &Context) -> Result<TaskId, SubmitError> {
    if !std::sync::Arc::ptr_eq(&h.ctx, ctx.inner()) {
        return Err(SubmitError::ForeignHandle { task: h.id() });
    }
    h.check_arg_type()?;
    Ok(h.id())
}

/// Handles gather into a parameter of type `Vec<T>`: each is a dependency, and the
/// function receives their results in order (an empty slice gives an empty vector).
impl<T> IntoArg<Vec<T>> for &[Handle<T>] {
    fn into_arg(self, ctx: &Context) -> Result<Arg, SubmitError> {
        self.iter()
            .map(|h| dependency(h, ctx).map(Part::Task))
            .collect::<Result<_, _>>()
            .map(Arg::Gather)
    }
}

/// See the implementation for `&[Handle<T>]`.
impl<T> IntoArg<Vec<T>> for &Vec<Handle<T>> {
    fn into_arg(self, ctx: &Context) -> Result<Arg, SubmitError> {
        IntoArg::<Vec<T>>::into_arg(self.as_slice(), ctx)
    }
}

/// See the implementation for `&[Handle<T>]`.
impl<T> IntoArg<Vec<T>> for Vec<Handle<T>> {
    fn into_arg(self, ctx: &Context) -> Result<Arg, SubmitError> {
        IntoArg::<Vec<T>>::into_arg(self.as_slice(), ctx)
    }
}

/// A `Vec<T>` value feeds a `DeviceVec<T>` parameter (same encoding).
impl<T: dagger_move::Element> IntoArg<dagger_move::DeviceVec<T>> for Vec<T> {
    fn into_arg(self, ctx: &Context) -> Result<Arg, SubmitError> {
        IntoArg::<Vec<T>>::into_arg(self, ctx)
    }
}

/// A task returning `Vec<T>` feeds a `DeviceVec<T>` parameter: the result is moved onto
/// the device of the task that takes it.
impl<T: dagger_move::Element> IntoArg<dagger_move::DeviceVec<T>> for &Handle<Vec<T>> {
    fn into_arg(self, ctx: &Context) -> Result<Arg, SubmitError> {
        dependency(self, ctx).map(Arg::Task)
    }
}

/// A task returning `DeviceVec<T>` feeds a `Vec<T>` parameter: a device-resident result is
/// copied to the host of the task that takes it.
impl<T: dagger_move::Element> IntoArg<Vec<T>> for &Handle<dagger_move::DeviceVec<T>> {
    fn into_arg(self, ctx: &Context) -> Result<Arg, SubmitError> {
        dependency(self, ctx).map(Arg::Task)
    }
}

/// Byte buffers that encode alike: a value or a task's result of one feeds a parameter of
/// another ([`crate::Bytes`] reads its argument in place).
macro_rules! same_bytes {
    ($($from:ty => $to:ty),* $(,)?) => {$(
        impl IntoArg<$to> for $from {
            fn into_arg(self, ctx: &Context) -> Result<Arg, SubmitError> {
                IntoArg::<$from>::into_arg(self, ctx)
            }
        }

        impl IntoArg<$to> for &Handle<$from> {
            fn into_arg(self, ctx: &Context) -> Result<Arg, SubmitError> {
                dependency(self, ctx).map(Arg::Task)
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
