//! Fast, non-cryptographic hashing for maps keyed by ids ([`TaskId`](crate::TaskId),
//! [`ChunkId`](crate::ChunkId), [`WorkerId`](crate::WorkerId), ...): rustc's `FxHasher`
//! from the `rustc-hash` crate, behind names of this crate so callers do not depend on it.
//!
//! It is not resistant to chosen keys: use it only where keys are allocated by this
//! program (ids) or where a collision costs time, never correctness.

use std::collections::{HashMap, HashSet};

/// The hasher of [`IdHashMap`] / [`IdHashSet`] (`rustc_hash::FxHasher`). Build maps with
/// those aliases rather than using it directly.
pub type IdHasher = rustc_hash::FxHasher;
/// Builds [`IdHasher`]s; the `S` parameter of [`IdHashMap`] and [`IdHashSet`].
pub type IdBuildHasher = rustc_hash::FxBuildHasher;
/// A `HashMap` with the fast [`IdHasher`]. Create with `IdHashMap::default()`.
pub type IdHashMap<K, V> = HashMap<K, V, IdBuildHasher>;
/// A `HashSet` with the fast [`IdHasher`]. Create with `IdHashSet::default()`.
pub type IdHashSet<K> = HashSet<K, IdBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskId;
    use std::hash::BuildHasher;

    #[test]
    fn maps_with_id_keys_work_and_hashes_differ() {
        let mut m: IdHashMap<TaskId, u64> = IdHashMap::default();
        for i in 0..10_000u64 {
            m.insert(TaskId(i), i * 2);
        }
        assert_eq!(m.len(), 10_000);
        assert!((0..10_000u64).all(|i| m[&TaskId(i)] == i * 2));
        let h = |x: u64| IdBuildHasher::default().hash_one(TaskId(x));
        assert_ne!(h(1), h(2));
        let s = |x: &str| IdBuildHasher::default().hash_one(x);
        assert_ne!(s("abcdefghij"), s("abcdefghik"));
    }

    /// Ids that differ only in their high bits (a counter kept in the upper half of a
    /// `u64`) must still spread over the low bits, which pick the bucket of a `HashMap`:
    /// a plain multiply leaves the low bits of such keys all equal, and every key then
    /// lands in one probe chain.
    #[test]
    fn ids_differing_only_in_high_bits_spread_over_the_low_bits() {
        let buckets: IdHashSet<u64> = (0..4096u64)
            .map(|i| IdBuildHasher::default().hash_one(TaskId(i << 32)) & 0xfff)
            .collect();
        assert!(buckets.len() > 1024, "{} distinct buckets", buckets.len());
    }
}
