//! What ran where and when: [`Context::timeline`](crate::Context::timeline).

use std::ops::Deref;

/// Every task and move of a run, on the driver's clock (see
/// [`dagger_runtime::timeline`] for how worker clocks are aligned).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    inner: dagger_runtime::Timeline,
}

impl From<dagger_runtime::Timeline> for Timeline {
    fn from(inner: dagger_runtime::Timeline) -> Self {
        Self { inner }
    }
}

impl Deref for Timeline {
    type Target = dagger_runtime::Timeline;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}
