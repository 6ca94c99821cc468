//! What can be passed as a task argument: a plain value or a handle to another task's
//! result (a dependency, checked by the compiler: a `Handle<u64>` only where a `u64` is
//! expected).

use crate::context::{Context, SubmitError};
use crate::handle::Handle;
use dagger_core::Arg;
use serde::Serialize;

/// A value usable as a task argument of type `T`.
pub trait IntoArg<T> {
    /// Turns the argument into its wire form (encoding a value with postcard) for a task
    /// of `ctx`.
    fn into_arg(self, ctx: &Context) -> Result<Arg, SubmitError>;
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self, _ctx: &Context) -> Result<Arg, SubmitError> {
        postcard::to_allocvec(&self)
            .map(Arg::Value)
            .map_err(|e| SubmitError::Encode {
                ty: std::any::type_name::<T>(),
                message: e.to_string(),
            })
    }
}

/// A handle feeds a parameter of its own type; one [`cast`](Handle::cast) to another type
/// than its task's result is refused with [`SubmitError::TypeMismatch`].
impl<T> IntoArg<T> for &Handle<T> {
    fn into_arg(self, ctx: &Context) -> Result<Arg, SubmitError> {
        if !std::sync::Arc::ptr_eq(&self.ctx, ctx.inner()) {
            return Err(SubmitError::ForeignHandle { task: self.id() });
        }
        self.check_arg_type()?;
        Ok(Arg::Task(self.id()))
    }
}
