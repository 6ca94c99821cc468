//! A small, fast, non-cryptographic hasher for maps keyed by ids ([`TaskId`](crate::TaskId),
//! [`ChunkId`](crate::ChunkId), [`WorkerId`](crate::WorkerId), ...).
//!
//! It is not resistant to chosen keys: use it only where keys are allocated by this
//! program (ids) or where a collision costs time, never correctness. Hashing one id is a
//! rotate, a xor and a multiply.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-rotate hasher in the style of rustc's `FxHasher`. Build maps with
/// [`IdHashMap`] / [`IdHashSet`] rather than using it directly.
#[derive(Default, Clone, Copy, Debug)]
pub struct IdHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl IdHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// Builds [`IdHasher`]s; the `S` parameter of [`IdHashMap`] and [`IdHashSet`].
pub type IdBuildHasher = BuildHasherDefault<IdHasher>;
/// A `HashMap` with the fast [`IdHasher`]. Create with `IdHashMap::default()`.
pub type IdHashMap<K, V> = HashMap<K, V, IdBuildHasher>;
/// A `HashSet` with the fast [`IdHasher`]. Create with `IdHashSet::default()`.
pub type IdHashSet<K> = HashSet<K, IdBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskId;

    #[test]
    fn maps_with_id_keys_work_and_hashes_differ() {
        let mut m: IdHashMap<TaskId, u64> = IdHashMap::default();
        for i in 0..10_000u64 {
            m.insert(TaskId(i), i * 2);
        }
        assert_eq!(m.len(), 10_000);
        assert!((0..10_000u64).all(|i| m[&TaskId(i)] == i * 2));
        let h = |x: u64| {
            let mut s = IdHasher::default();
            s.write_u64(x);
            s.finish()
        };
        assert_ne!(h(1), h(2));
        let mut a = IdHasher::default();
        a.write(b"abcdefghij");
        let mut b = IdHasher::default();
        b.write(b"abcdefghik");
        assert_ne!(a.finish(), b.finish());
    }
}
