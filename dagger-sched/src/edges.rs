//! [`Edges`]: a task's dependencies or dependents, by index, without an allocation for
//! the common few.

/// How many indices an [`Edges`] holds without allocating.
const INLINE: usize = 3;

/// A list of task indices: up to three inline (most tasks of a graph have one to three
/// inputs and dependents), more in a boxed vector. 16 bytes, against 24 for the `Vec<u32>`
/// it replaces, which also cost a heap allocation (32 bytes with the allocator's header)
/// per non-empty list.
#[derive(Clone)]
pub(crate) enum Edges {
    /// `len` indices in the first `len` entries.
    Inline(Len, [u32; INLINE]),
    /// More than [`INLINE`] (or once more: a list that grew past it stays on the heap).
    /// Boxed, so that the variant takes 8 bytes and `Edges` 16 (a bare `Vec` would make
    /// it 24): long lists are rare and pay the extra allocation.
    #[allow(clippy::box_collection)]
    Heap(Box<Vec<u32>>),
}

/// The length of an inline [`Edges`]: an enum, so that the byte's other values are free
/// to tell the variants apart (what keeps `Edges` at 16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Len {
    L0,
    L1,
    L2,
    L3,
}

impl Len {
    const ALL: [Len; INLINE + 1] = [Len::L0, Len::L1, Len::L2, Len::L3];

    fn of(n: usize) -> Len {
        Len::ALL[n]
    }
}

// Every task's spec holds two of these for as long as its lineage may be needed.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Edges>() == 16);

impl Default for Edges {
    fn default() -> Self {
        Edges::Inline(Len::L0, [0; INLINE])
    }
}

impl Edges {
    /// The indices, in order.
    #[inline]
    pub(crate) fn as_slice(&self) -> &[u32] {
        match self {
            Edges::Inline(len, items) => &items[..*len as usize],
            Edges::Heap(v) => v,
        }
    }

    /// The number of indices.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are none.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `x`.
    pub(crate) fn push(&mut self, x: u32) {
        match self {
            Edges::Inline(len, items) if (*len as usize) < INLINE => {
                items[*len as usize] = x;
                *len = Len::of(*len as usize + 1);
            }
            Edges::Inline(_, items) => {
                let mut v = Vec::with_capacity(2 * INLINE);
                v.extend_from_slice(items);
                v.push(x);
                *self = Edges::Heap(Box::new(v));
            }
            Edges::Heap(v) => v.push(x),
        }
    }

    /// The indices in `v`, sorted and without repeats; `v` is left sorted and deduplicated
    /// (a scratch buffer: only lists longer than the inline part are copied to the heap).
    pub(crate) fn sorted_unique(v: &mut Vec<u32>) -> Self {
        if v.len() > 1 {
            v.sort_unstable();
            v.dedup();
        }
        Self::from(v.as_slice())
    }
}

impl From<&[u32]> for Edges {
    fn from(v: &[u32]) -> Self {
        if v.len() <= INLINE {
            let mut items = [0; INLINE];
            items[..v.len()].copy_from_slice(v);
            Edges::Inline(Len::of(v.len()), items)
        } else {
            Edges::Heap(Box::new(v.to_vec()))
        }
    }
}

impl std::ops::Deref for Edges {
    type Target = [u32];
    #[inline]
    fn deref(&self) -> &[u32] {
        self.as_slice()
    }
}

impl<'a> IntoIterator for &'a Edges {
    type Item = &'a u32;
    type IntoIter = std::slice::Iter<'a, u32>;
    #[inline]
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// The indices of an [`Edges`] taken by value.
pub(crate) struct IntoIter {
    edges: Edges,
    next: usize,
}

impl Iterator for IntoIter {
    type Item = u32;
    #[inline]
    fn next(&mut self) -> Option<u32> {
        let x = self.edges.as_slice().get(self.next).copied();
        self.next += 1;
        x
    }
}

impl IntoIterator for Edges {
    type Item = u32;
    type IntoIter = IntoIter;
    fn into_iter(self) -> IntoIter {
        IntoIter {
            edges: self,
            next: 0,
        }
    }
}

impl std::fmt::Debug for Edges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_from_inline_to_the_heap_in_order() {
        let mut e = Edges::default();
        assert!(e.is_empty());
        for x in 0..10 {
            e.push(x * 7);
            assert_eq!(e.len(), x as usize + 1);
            assert_eq!(
                matches!(e, Edges::Inline(..)),
                x < INLINE as u32,
                "after {x}"
            );
        }
        assert_eq!(e.as_slice(), (0..10).map(|x| x * 7).collect::<Vec<_>>());
    }

    #[test]
    fn sorted_unique_keeps_short_lists_inline() {
        let e = Edges::sorted_unique(&mut vec![5, 1, 5, 3]);
        assert!(matches!(e, Edges::Inline(Len::L3, _)));
        assert_eq!(&*e, &[1, 3, 5]);
        let e = Edges::sorted_unique(&mut vec![9, 8, 7, 6]);
        assert!(matches!(e, Edges::Heap(_)));
        assert_eq!(&*e, &[6, 7, 8, 9]);
        assert_eq!(e.iter().copied().sum::<u32>(), 30);
        assert_eq!(e.clone().into_iter().collect::<Vec<_>>(), vec![6, 7, 8, 9]);
        let e = Edges::from(&[4, 2][..]);
        assert_eq!(e.into_iter().collect::<Vec<_>>(), vec![4, 2]);
    }
}
