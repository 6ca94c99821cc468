//! The scheduler's id-keyed maps use the fast id hasher of `dagger-core`. Keys come from
//! the owner (ids it allocated), not from untrusted peers directly, and a collision only
//! costs time.

pub(crate) use dagger_core::hash::{IdHashMap as FxMap, IdHashSet as FxSet};
