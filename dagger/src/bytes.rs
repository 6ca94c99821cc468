//! [`Bytes`]: a byte buffer a task takes as a parameter without copying it out of where its
//! worker holds it.

use crate::worker::Data;
use std::fmt;
use std::ops::Deref;
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

#[derive(Clone)]
enum Repr {
    Owned(Arc<Vec<u8>>),
    /// `len` bytes from `start` of an input the worker holds.
    Input {
        data: Data,
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
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Input { data, start, len } => &data.as_ref()[*start..*start + *len],
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
            Repr::Input { .. } => b.to_vec(),
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
}
