//! [`Bytes`]: a byte buffer a task takes as a parameter without copying it out of where its
//! worker holds it.

use crate::worker::Data;
use dagger_move::shm::{SegmentWriter, StoredSegment};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// An immutable byte buffer, cheap to clone.
///
/// As a task's parameter it refers to the argument's bytes where the worker running the
/// task holds them (its store, the frame the bytes arrived in, or a shared-memory segment
/// that a worker of the same host lends) instead of copying them into a new vector. A
/// `Vec<u8>` or `serde_bytes::ByteBuf` parameter costs a copy of the whole buffer (and its
/// page faults); a `Bytes` parameter costs none. Anywhere else (a result fetched by the
/// driver, a value decoded outside a task) it owns its bytes.
///
/// It encodes exactly like a `Vec<u8>` and a `serde_bytes::ByteBuf`, so a task returning
/// either feeds a `Bytes` parameter, and a task returning `Bytes` feeds a parameter of
/// either type.
///
/// A `Bytes` that refers to an argument keeps the whole argument alive: a lent segment
/// goes back to its writer only once every `Bytes` of it is dropped. Copy the part to keep
/// ([`to_vec`](slice::to_vec)) rather than keeping a small `Bytes` of a large input.
///
/// ```
/// use dagger::Bytes;
///
/// #[dagger::task]
/// fn checksum(b: Bytes) -> u64 {
///     b.iter().map(|&x| x as u64).sum()
/// }
///
/// let b = Bytes::from(vec![1u8, 2, 3]);
/// assert_eq!(&b[..], &[1, 2, 3]);
/// assert_eq!(checksum(b), 6);
/// ```
#[derive(Clone, Default)]
pub struct Bytes(Repr);

/// A buffer this large is backed at once when it is made to be filled (see
/// [`vec_to_fill`]); a smaller one faults its pages in as it is written.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const BACK_AT_ONCE_MIN: usize = 1 << 20;

/// An empty vector with room for exactly `capacity` bytes, about to be written whole.
///
/// A fresh buffer of many megabytes takes a page fault for each of its pages as it is
/// first written, each a trap into the kernel. When it is large, its pages are backed
/// in one call instead (`MADV_POPULATE_WRITE`, Linux 5.14 and later), which does the same
/// work without the traps: a cold 8 MiB fill costs about a quarter less on a 2-core VM.
/// Where the call is not supported or fails, the pages fault in as before.
fn vec_to_fill(capacity: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(capacity);
    if capacity >= BACK_AT_ONCE_MIN {
        let spare = v.spare_capacity_mut();
        let _ = back_now(spare.as_mut_ptr().cast(), spare.len());
    }
    v
}

/// Backs the whole pages of `len` bytes at `start` with memory now.
#[cfg(target_os = "linux")]
fn back_now(start: *mut u8, len: usize) -> std::io::Result<()> {
    const PAGE: usize = 4096;
    let first = (start as usize).next_multiple_of(PAGE);
    let end = (start as usize + len) & !(PAGE - 1);
    if end <= first {
        return Ok(());
    }
    // SAFETY: the range lies inside an allocation this process owns (the caller's
    // vector's spare room); backing its pages writes no byte the program can see (a fresh
    // page reads as zero, a page already backed is left as it is).
    unsafe {
        rustix::mm::madvise(
            first as *mut std::ffi::c_void,
            end - first,
            rustix::mm::Advice::LinuxPopulateWrite,
        )
    }
    .map_err(Into::into)
}

#[cfg(not(target_os = "linux"))]
fn back_now(_start: *mut u8, _len: usize) -> std::io::Result<()> {
    Ok(())
}

/// Where a [`Bytes`] built by [`BytesMut`] holds its encoding.
pub(crate) enum Encoding {
    Vec(Arc<Vec<u8>>),
    Segment(Arc<StoredSegment>),
}

#[derive(Clone)]
enum Repr {
    Owned(Arc<Vec<u8>>),
    /// `len` bytes from `start` of an input the worker holds.
    Input {
        data: Data,
        start: usize,
        len: usize,
    },
    /// Built by [`BytesMut`] as its own encoding: the length's varint, then the bytes
    /// from `start` to the end.
    Encoded {
        v: Arc<Vec<u8>>,
        start: usize,
    },
    /// Built in a segment of the worker's pool, which holds this value's encoding: the
    /// length's varint, then the `len` bytes from `start`.
    Stored {
        seg: Arc<StoredSegment>,
        start: usize,
        len: usize,
    },
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Owned(Arc::default())
    }
}

impl Bytes {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the bytes are an argument's, read in place (not a copy). For tests and
    /// diagnostics.
    pub fn is_borrowed(&self) -> bool {
        matches!(self.0, Repr::Input { .. })
    }

    /// This value's encoding, when [`BytesMut`] built it as one: a task returning it
    /// keeps that memory as its result instead of encoding a copy.
    pub(crate) fn encoding(&self) -> Option<Encoding> {
        match &self.0 {
            Repr::Stored { seg, .. } => Some(Encoding::Segment(seg.clone())),
            Repr::Encoded { v, .. } => Some(Encoding::Vec(v.clone())),
            _ => None,
        }
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Input { data, start, len } => &data.as_ref()[*start..*start + *len],
            Repr::Encoded { v, start } => &v[*start..],
            Repr::Stored { seg, start, len } => &seg[*start..*start + *len],
        }
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(Repr::Owned(Arc::new(v)))
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes::from(v.to_vec())
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Self {
        match b.0 {
            Repr::Owned(v) => Arc::try_unwrap(v).unwrap_or_else(|v| v.to_vec()),
            Repr::Input { .. } | Repr::Encoded { .. } | Repr::Stored { .. } => b.to_vec(),
        }
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl Eq for Bytes {}

impl PartialEq<[u8]> for Bytes {
    fn eq(&self, other: &[u8]) -> bool {
        &self[..] == other
    }
}

impl std::hash::Hash for Bytes {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self[..].hash(state)
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bytes")
            .field("len", &self.len())
            .field("borrowed", &self.is_borrowed())
            .finish()
    }
}

/// A byte buffer of fixed length being written, which [`freeze`](Self::freeze)s into a
/// [`Bytes`] to return from a task.
///
/// Inside a task on a worker whose chunks move through shared memory, a buffer of 1 MiB or
/// more is laid out in a segment of the worker's pool, already in its encoded form: a task
/// returning it stores that segment as its result, and a consumer on the same host is lent
/// the same memory, so the bytes are written once and never copied. Elsewhere it is a
/// vector laid out the same way, which a task returning it keeps as its result without
/// encoding a copy.
///
/// ```
/// use dagger::{Bytes, BytesMut};
///
/// #[dagger::task]
/// fn ramp(len: u64) -> Bytes {
///     let mut b = BytesMut::zeroed(len as usize);
///     for (i, x) in b.iter_mut().enumerate() {
///         *x = i as u8;
///     }
///     b.freeze()
/// }
///
/// assert_eq!(&ramp(4)[..], &[0, 1, 2, 3]);
/// ```
pub struct BytesMut(MutRepr);

enum MutRepr {
    /// The encoding's varint is at the front, then the bytes from `start` to the end.
    Vec { v: Vec<u8>, start: usize },
    /// The encoding's varint is at the front, then the `len` bytes from `start`.
    Segment {
        w: SegmentWriter,
        start: usize,
        len: usize,
    },
}

impl BytesMut {
    /// `len` bytes, each `byte`.
    pub fn filled(len: usize, byte: u8) -> Self {
        // The length as its encoding writes it (a varint of at most 10 bytes).
        let mut buf = [0u8; 10];
        let head: &[u8] = match postcard::to_slice(&(len as u64), &mut buf) {
            Ok(h) => h,
            Err(_) => &[],
        };
        if len >= crate::registry::STORED_RESULT_MIN_BYTES {
            if let Some(pool) = crate::registry::result_pool() {
                if let Ok(Some(mut w)) = pool.alloc_stored(head.len() + len) {
                    w[..head.len()].copy_from_slice(head);
                    w[head.len()..].fill(byte);
                    return BytesMut(MutRepr::Segment {
                        w,
                        start: head.len(),
                        len,
                    });
                }
            }
        }
        let mut v = vec_to_fill(head.len() + len);
        v.extend_from_slice(head);
        v.resize(head.len() + len, byte);
        BytesMut(MutRepr::Vec {
            v,
            start: head.len(),
        })
    }

    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        Self::filled(len, 0)
    }

    /// The bytes, read-only from now on.
    pub fn freeze(self) -> Bytes {
        match self.0 {
            MutRepr::Vec { v, start } => Bytes(Repr::Encoded {
                v: Arc::new(v),
                start,
            }),
            MutRepr::Segment { w, start, len } => Bytes(Repr::Stored {
                seg: Arc::new(w.finish()),
                start,
                len,
            }),
        }
    }
}

impl Deref for BytesMut {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            MutRepr::Vec { v, start } => &v[*start..],
            MutRepr::Segment { w, start, len } => &w[*start..*start + *len],
        }
    }
}

impl DerefMut for BytesMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            MutRepr::Vec { v, start } => &mut v[*start..],
            MutRepr::Segment { w, start, len } => &mut w[*start..*start + *len],
        }
    }
}

impl fmt::Debug for BytesMut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BytesMut")
            .field("len", &self.len())
            .field("in_segment", &matches!(self.0, MutRepr::Segment { .. }))
            .finish()
    }
}

impl serde::Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self)
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(Visitor)
    }
}

struct Visitor;

impl<'de> serde::de::Visitor<'de> for Visitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(crate::worker::borrow_input(v)
            .map(|(data, start)| {
                Bytes(Repr::Input {
                    data,
                    start,
                    len: v.len(),
                })
            })
            .unwrap_or_else(|| Bytes::from(v)))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Bytes::from(v))
    }
}

#[allow(dead_code)]
fn bytes_are_send_and_sync() {
    fn is<T: Send + Sync + 'static>() {}
    is::<Bytes>();
    is::<BytesMut>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{with_result_pool, OutputInPlace as _, OutputOf, TaskOutput};
    use dagger_move::shm::SegmentPool;

    /// A large buffer made to be filled has its pages backed before anything is written
    /// to it (`vec_to_fill`), where the kernel supports it.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_buffer_to_fill_is_backed_before_it_is_written() {
        const PAGE: usize = 4096;
        // Above glibc's largest threshold for serving a block from its heap, so these are
        // fresh pages that nothing has touched.
        let len = 48 << 20;
        let mut probe: Vec<u8> = Vec::with_capacity(len);
        let supported = back_now(probe.as_mut_ptr(), 2 * PAGE);
        drop(probe);
        if let Err(e) = supported {
            eprintln!("skipped: this kernel cannot back pages on request ({e})");
            return;
        }
        let v = vec_to_fill(len);
        let start = (v.as_ptr() as usize).next_multiple_of(PAGE);
        let pages = (len - PAGE) / PAGE;
        let mut resident = vec![0u8; pages];
        // SAFETY: the range lies inside `v`'s allocation; `resident` has one byte a page.
        let rc = unsafe { libc::mincore(start as *mut _, pages * PAGE, resident.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        let backed = resident.iter().filter(|&&r| r & 1 == 1).count();
        assert_eq!(backed, pages, "pages backed before the fill");
        // And an ordinary buffer of the same size is not (the check can tell).
        let plain: Vec<u8> = Vec::with_capacity(len);
        let start = (plain.as_ptr() as usize).next_multiple_of(PAGE);
        // SAFETY: as above, inside `plain`'s allocation.
        let rc = unsafe { libc::mincore(start as *mut _, pages * PAGE, resident.as_mut_ptr()) };
        assert_eq!(rc, 0);
        assert!(resident.iter().filter(|&&r| r & 1 == 1).count() < pages / 2);
        drop(v);
    }

    /// Inside a task of a worker that offers its pool, a large buffer is laid out in a
    /// segment as its own encoding: returning it stores that very memory, no copy.
    #[test]
    fn a_large_buffer_built_in_a_segment_is_stored_as_it_is() {
        let pool = Arc::new(SegmentPool::new("dagger-test-bytesmut", 64 << 20).unwrap());
        let len = 3 << 20;
        let (out, data_ptr) = with_result_pool(Some(pool.clone()), || {
            let mut b = BytesMut::filled(len, 9);
            b[0] = 1;
            b[len - 1] = 2;
            let b = b.freeze();
            assert_eq!(b.len(), len);
            let ptr = b.as_ptr();
            ((&&OutputOf(b)).task_output().unwrap(), ptr)
        });
        let mut want = vec![9u8; len];
        want[0] = 1;
        want[len - 1] = 2;
        let encoded = postcard::to_allocvec(&Bytes::from(want.clone())).unwrap();
        let TaskOutput::Stored(seg) = out else {
            panic!("not stored in its segment");
        };
        assert_eq!(&seg[..], &encoded[..]);
        let head = encoded.len() - len;
        assert_eq!(
            seg[head..].as_ptr(),
            data_ptr,
            "the same memory, not a copy"
        );
        assert!(pool.lend_stored(1, &seg).is_some());
        // Small, or outside a task (no pool offered): a vector laid out the same way, kept as
        // it is.
        let small = with_result_pool(Some(pool), || {
            (&&OutputOf(BytesMut::filled(10, 3).freeze()))
                .task_output()
                .unwrap()
        });
        assert!(
            matches!(small, TaskOutput::Shared(v) if *v == postcard::to_allocvec(&vec![3u8; 10]).unwrap())
        );
        let outside = BytesMut::filled(len, 4).freeze();
        assert!(outside.iter().all(|&x| x == 4) && outside.len() == len);
        let ptr = outside.as_ptr();
        let TaskOutput::Shared(v) = (&&OutputOf(outside)).task_output().unwrap() else {
            panic!("a vector-backed BytesMut is not kept as it is");
        };
        assert_eq!(&v[..], &postcard::to_allocvec(&vec![4u8; len]).unwrap()[..]);
        assert_eq!(
            v[v.len() - len..].as_ptr(),
            ptr,
            "the same memory, not a copy"
        );
    }
}
