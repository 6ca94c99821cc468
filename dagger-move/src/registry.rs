//! The move registry: which function moves a value of some type from a processor of one
//! kind to a processor of another.

use crate::device::{downcast_buffer, DeviceBuffer};
use crate::MoveError;
use dagger_core::{ChunkRepr, MemorySpace, ProcId, ProcKind};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// A value in flight between two processors.
pub enum MoveValue {
    /// A host value encoded with postcard: what crosses processes, and what every
    /// processor of the host memory space can decode.
    Bytes(Vec<u8>),
    /// A typed in-memory host value, e.g. a decoded host value or a user's own handle.
    Value(Box<dyn Any + Send>),
    /// A value held in a device's memory (see [`DeviceBuffer`]): produced by a move towards
    /// a device processor, consumed by the task there or by a move back to the host.
    Device(Arc<dyn DeviceBuffer>),
}

impl MoveValue {
    /// Wraps a typed value. Costs one allocation.
    pub fn value<T: Send + 'static>(v: T) -> Self {
        MoveValue::Value(Box::new(v))
    }

    /// Wraps a device buffer. Costs one allocation.
    pub fn device<B: DeviceBuffer>(buf: B) -> Self {
        MoveValue::Device(Arc::new(buf))
    }

    /// True for [`MoveValue::Bytes`].
    pub fn is_bytes(&self) -> bool {
        matches!(self, MoveValue::Bytes(_))
    }

    /// True for [`MoveValue::Device`].
    pub fn is_device(&self) -> bool {
        matches!(self, MoveValue::Device(_))
    }

    /// The encoded bytes, if this is [`MoveValue::Bytes`].
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            MoveValue::Bytes(b) => Some(b),
            MoveValue::Value(_) | MoveValue::Device(_) => None,
        }
    }

    /// The device buffer, if this is [`MoveValue::Device`].
    pub fn as_device(&self) -> Option<&Arc<dyn DeviceBuffer>> {
        match self {
            MoveValue::Device(d) => Some(d),
            MoveValue::Bytes(_) | MoveValue::Value(_) => None,
        }
    }

    /// The memory the value lives in: [`MemorySpace::HOST`] unless it is a device buffer.
    pub fn memory(&self) -> MemorySpace {
        match self {
            MoveValue::Device(d) => d.memory(),
            MoveValue::Bytes(_) | MoveValue::Value(_) => MemorySpace::HOST,
        }
    }

    /// The plain-data description of the value's representation: host bytes with their
    /// length, or the device buffer's memory, handle and length. `None` for a typed host
    /// value, whose size is not known.
    pub fn repr(&self) -> Option<ChunkRepr> {
        match self {
            MoveValue::Bytes(b) => Some(ChunkRepr::Host {
                len: b.len() as u64,
            }),
            MoveValue::Device(d) => Some(d.repr()),
            MoveValue::Value(_) => None,
        }
    }

    /// Takes the typed value out, if this is a [`MoveValue::Value`] holding a `T`;
    /// otherwise gives `self` back unchanged. Never decodes bytes or reads a device.
    pub fn downcast<T: 'static>(self) -> Result<T, Self> {
        match self {
            MoveValue::Value(v) => match v.downcast::<T>() {
                Ok(t) => Ok(*t),
                Err(v) => Err(MoveValue::Value(v)),
            },
            other @ (MoveValue::Bytes(_) | MoveValue::Device(_)) => Err(other),
        }
    }

    /// Takes the device buffer out as its backend's type `B`, if this is a
    /// [`MoveValue::Device`] holding a `B`; otherwise gives `self` back unchanged.
    pub fn downcast_device<B: DeviceBuffer>(self) -> Result<Arc<B>, Self> {
        match self {
            MoveValue::Device(d) => downcast_buffer::<B>(d).map_err(MoveValue::Device),
            other @ (MoveValue::Bytes(_) | MoveValue::Value(_)) => Err(other),
        }
    }

    /// The value as encoded host bytes: [`MoveValue::Bytes`] as they are, a device buffer
    /// copied back with [`DeviceBuffer::to_host`]. A typed host value cannot be encoded
    /// here (its type is not known) and is [`MoveError::WrongValue`].
    pub fn into_host_bytes(self) -> Result<Vec<u8>, MoveError> {
        match self {
            MoveValue::Bytes(b) => Ok(b),
            MoveValue::Device(d) => d.to_host(),
            MoveValue::Value(_) => Err(MoveError::WrongValue {
                expected: "encoded host bytes or a device buffer".to_string(),
            }),
        }
    }

    /// A `T` out of any form: decodes [`MoveValue::Bytes`] with postcard, downcasts
    /// [`MoveValue::Value`], or copies a [`MoveValue::Device`] buffer back to the host
    /// and decodes that. Errors are [`MoveError::Decode`], [`MoveError::WrongValue`] and
    /// the buffer's own; bytes from the network can never make it panic.
    pub fn into_typed<T: DeserializeOwned + 'static>(self) -> Result<T, MoveError> {
        let decode = |b: &[u8]| {
            postcard::from_bytes::<T>(b).map_err(|e| MoveError::Decode {
                ty: std::any::type_name::<T>().to_string(),
                message: e.to_string(),
            })
        };
        match self {
            MoveValue::Bytes(b) => decode(&b),
            MoveValue::Device(d) => decode(&d.to_host()?),
            MoveValue::Value(v) => {
                v.downcast::<T>()
                    .map(|t| *t)
                    .map_err(|_| MoveError::WrongValue {
                        expected: std::any::type_name::<T>().to_string(),
                    })
            }
        }
    }
}

impl fmt::Debug for MoveValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveValue::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            MoveValue::Value(_) => f.write_str("Value(..)"),
            MoveValue::Device(d) => write!(f, "Device({})", d.repr()),
        }
    }
}

/// Where a move delivers: the destination processor, described without the processor
/// trait object so that moves do not depend on how processors are implemented.
#[derive(Clone, Copy)]
pub struct MoveTarget<'a> {
    /// The destination processor.
    pub proc: ProcId,
    /// Its kind.
    pub kind: &'a ProcKind,
    /// The memory it computes in.
    pub memory: &'a MemorySpace,
    /// A handle to the device behind it (a CUDA context, an OpenCL queue, a user's board),
    /// for moves that must allocate there. `None` for CPU processors.
    pub device: Option<&'a (dyn Any + Send + Sync)>,
}

impl<'a> MoveTarget<'a> {
    /// A target with no device handle.
    pub fn new(proc: ProcId, kind: &'a ProcKind, memory: &'a MemorySpace) -> Self {
        Self {
            proc,
            kind,
            memory,
            device: None,
        }
    }

    /// The same target with a device handle.
    pub fn with_device(self, device: &'a (dyn Any + Send + Sync)) -> Self {
        Self {
            device: Some(device),
            ..self
        }
    }

    /// The device handle as a `D`, if there is one of that type.
    pub fn device<D: 'static>(&self) -> Option<&'a D> {
        self.device.and_then(|d| d.downcast_ref::<D>())
    }
}

impl fmt::Debug for MoveTarget<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MoveTarget")
            .field("proc", &self.proc)
            .field("kind", self.kind)
            .field("memory", self.memory)
            .field("device", &self.device.is_some())
            .finish()
    }
}

/// A move function as stored in the registry.
pub type MoveFn = dyn Fn(MoveValue, &MoveTarget<'_>) -> Result<MoveValue, MoveError> + Send + Sync;

/// Which processor kinds a registered move applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KindPattern {
    /// Every kind.
    Any,
    /// Exactly this kind.
    Kind(ProcKind),
}

impl KindPattern {
    /// True if `kind` is matched.
    pub fn matches(&self, kind: &ProcKind) -> bool {
        match self {
            KindPattern::Any => true,
            KindPattern::Kind(k) => k == kind,
        }
    }

    fn is_any(&self) -> bool {
        matches!(self, KindPattern::Any)
    }
}

impl From<ProcKind> for KindPattern {
    fn from(k: ProcKind) -> Self {
        KindPattern::Kind(k)
    }
}

impl From<&ProcKind> for KindPattern {
    fn from(k: &ProcKind) -> Self {
        KindPattern::Kind(k.clone())
    }
}

/// `"*"` and `"any"` mean [`KindPattern::Any`]; any other name is that kind
/// (`"thread"` is [`ProcKind::THREAD`], `"fpga"` is `ProcKind::custom("fpga")`).
impl From<&'static str> for KindPattern {
    fn from(s: &'static str) -> Self {
        match s {
            "*" | "any" => KindPattern::Any,
            name => KindPattern::Kind(ProcKind::custom(name)),
        }
    }
}

struct Entry {
    src: KindPattern,
    dst: KindPattern,
    /// `None`: every data type.
    ty: Option<String>,
    /// Registration order; later wins among equally specific entries.
    seq: u64,
    f: Arc<MoveFn>,
}

impl Entry {
    /// How specific this entry is for a lookup it matches; lower is more specific.
    fn rank(&self) -> u8 {
        match (self.src.is_any(), self.dst.is_any(), self.ty.is_none()) {
            (false, false, false) => 0,
            (false, false, true) => 1,
            (true, false, false) => 2,
            (false, true, false) => 3,
            (true, true, false) => 4,
            (true, false, true) => 5,
            (false, true, true) => 6,
            (true, true, true) => 7,
        }
    }

    fn matches(&self, src: &ProcKind, dst: &ProcKind, type_name: &str) -> bool {
        self.src.matches(src)
            && self.dst.matches(dst)
            && self.ty.as_deref().is_none_or(|t| t == type_name)
    }
}

#[derive(Default)]
struct Inner {
    entries: Vec<Entry>,
    next_seq: u64,
}

/// The registry of move functions, chosen by (source kind, destination kind, data type).
///
/// Lookup order, most specific first:
/// (src, dst, type) > (src, dst, any type) > (any, dst, type) > (src, any, type) >
/// (any, any, type) > (any, dst, any type) > (src, any, any type) > (any, any, any type).
/// Among entries equally specific the latest registration wins, so a user's move
/// registered after the built-ins replaces them. Registering again under exactly the
/// same patterns replaces the earlier function.
///
/// Thread-safe; lookups take a read lock and scan the (small) list of registrations
/// without allocating.
pub struct MoveRegistry {
    inner: RwLock<Inner>,
}

impl Default for MoveRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MoveRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.read();
        let mut l = f.debug_list();
        for e in &inner.entries {
            l.entry(&(&e.src, &e.dst, e.ty.as_deref().unwrap_or("*")));
        }
        l.finish()
    }
}

impl MoveRegistry {
    /// A registry holding only the built-in fallback: (any, any, any type) is the
    /// identity, which hands the value over unchanged (right for every host-memory
    /// destination, where encoded bytes and host values are understood as they are).
    pub fn new() -> Self {
        let r = Self {
            inner: RwLock::new(Inner::default()),
        };
        r.insert(
            KindPattern::Any,
            KindPattern::Any,
            None,
            Arc::new(|v, _| Ok(v)),
        );
        r
    }

    fn insert(&self, src: KindPattern, dst: KindPattern, ty: Option<String>, f: Arc<MoveFn>) {
        let mut inner = self.inner.write();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner
            .entries
            .retain(|e| !(e.src == src && e.dst == dst && e.ty == ty));
        inner.entries.push(Entry {
            src,
            dst,
            ty,
            seq,
            f,
        });
    }

    /// Registers a typed move of `T` values from `src` to `dst` processors, chosen for the
    /// type name `std::any::type_name::<T>()`. The registered function decodes
    /// [`MoveValue::Bytes`] with postcard into `T` (a failure is [`MoveError::Decode`]) or
    /// downcasts [`MoveValue::Value`] to `T` (a failure is [`MoveError::WrongValue`]),
    /// calls `f`, and stores its output `U` as [`MoveValue::Value`].
    ///
    /// May be called at any time; takes effect for lookups that start afterwards.
    pub fn register<T, U>(
        &self,
        src: impl Into<KindPattern>,
        dst: impl Into<KindPattern>,
        f: impl Fn(T, &MoveTarget<'_>) -> Result<U, MoveError> + Send + Sync + 'static,
    ) where
        T: DeserializeOwned + Send + 'static,
        U: Send + 'static,
    {
        let wrapped = move |v: MoveValue, target: &MoveTarget<'_>| {
            let t = v.into_typed::<T>()?;
            f(t, target).map(|u| MoveValue::Value(Box::new(u)))
        };
        self.insert(
            src.into(),
            dst.into(),
            Some(std::any::type_name::<T>().to_string()),
            Arc::new(wrapped),
        );
    }

    /// Registers a typed move of `T` values from `src` to `dst` processors that places
    /// them in a device's memory: like [`register`](Self::register) (the same lookup by
    /// `std::any::type_name::<T>()`, the same decoding of the input), but `f` returns the
    /// backend's buffer, stored as [`MoveValue::Device`].
    pub fn register_to_device<T, B>(
        &self,
        src: impl Into<KindPattern>,
        dst: impl Into<KindPattern>,
        f: impl Fn(T, &MoveTarget<'_>) -> Result<B, MoveError> + Send + Sync + 'static,
    ) where
        T: DeserializeOwned + Send + 'static,
        B: DeviceBuffer,
    {
        let wrapped = move |v: MoveValue, target: &MoveTarget<'_>| {
            let t = v.into_typed::<T>()?;
            f(t, target).map(MoveValue::device)
        };
        self.insert(
            src.into(),
            dst.into(),
            Some(std::any::type_name::<T>().to_string()),
            Arc::new(wrapped),
        );
    }

    /// Registers a move of `T` values held in a device buffer of type `B` from `src` to
    /// `dst` processors (a device-to-device copy, a download into a host value): `f`
    /// receives the buffer, and its output `U` is stored as [`MoveValue::Value`]. A value
    /// that is not a `B` buffer is [`MoveError::WrongValue`]. Looked up, like
    /// [`register`](Self::register), by `std::any::type_name::<T>()`.
    pub fn register_from_device<T, B, U>(
        &self,
        src: impl Into<KindPattern>,
        dst: impl Into<KindPattern>,
        f: impl Fn(Arc<B>, &MoveTarget<'_>) -> Result<U, MoveError> + Send + Sync + 'static,
    ) where
        T: 'static,
        B: DeviceBuffer,
        U: Send + 'static,
    {
        let wrapped = move |v: MoveValue, target: &MoveTarget<'_>| {
            let buf = v
                .downcast_device::<B>()
                .map_err(|_| MoveError::WrongValue {
                    expected: format!("a {} device buffer", std::any::type_name::<B>()),
                })?;
            f(buf, target).map(|u| MoveValue::Value(Box::new(u)))
        };
        self.insert(
            src.into(),
            dst.into(),
            Some(std::any::type_name::<T>().to_string()),
            Arc::new(wrapped),
        );
    }

    /// Registers an untyped move for every data type from `src` to `dst` processors.
    ///
    /// May be called at any time; takes effect for lookups that start afterwards.
    pub fn register_any(
        &self,
        src: impl Into<KindPattern>,
        dst: impl Into<KindPattern>,
        f: impl Fn(MoveValue, &MoveTarget<'_>) -> Result<MoveValue, MoveError> + Send + Sync + 'static,
    ) {
        self.insert(src.into(), dst.into(), None, Arc::new(f));
    }

    /// Registers an untyped move for the data type named `type_name` (as
    /// `std::any::type_name` spells it) from `src` to `dst` processors: for callers that
    /// know a type only by name.
    pub fn register_named(
        &self,
        src: impl Into<KindPattern>,
        dst: impl Into<KindPattern>,
        type_name: &str,
        f: impl Fn(MoveValue, &MoveTarget<'_>) -> Result<MoveValue, MoveError> + Send + Sync + 'static,
    ) {
        self.insert(
            src.into(),
            dst.into(),
            Some(type_name.to_string()),
            Arc::new(f),
        );
    }

    /// The most specific move for (src, dst, type) (see the type's documentation for the
    /// order). `None` only if the built-in fallback was removed, which cannot happen
    /// through this API. Costs a read lock and a scan of the registrations.
    pub fn lookup(&self, src: &ProcKind, dst: &ProcKind, type_name: &str) -> Option<Arc<MoveFn>> {
        let inner = self.inner.read();
        inner
            .entries
            .iter()
            .filter(|e| e.matches(src, dst, type_name))
            .min_by_key(|e| (e.rank(), std::cmp::Reverse(e.seq)))
            .map(|e| e.f.clone())
    }

    /// Moves `value`, of the type named `type_name`, from a processor of kind `src` to
    /// `target` with the move [`lookup`](Self::lookup) picks. The registry's lock is not
    /// held while the move runs, so a move may itself register moves.
    pub fn apply(
        &self,
        src: &ProcKind,
        type_name: &str,
        value: MoveValue,
        target: &MoveTarget<'_>,
    ) -> Result<MoveValue, MoveError> {
        let f = self
            .lookup(src, target.kind, type_name)
            .ok_or_else(|| MoveError::NoMove {
                src: src.clone(),
                dst: target.kind.clone(),
                ty: type_name.to_string(),
            })?;
        f(value, target)
    }

    /// Number of registrations, the built-in fallback included.
    pub fn len(&self) -> usize {
        self.inner.read().entries.len()
    }

    /// Always false: the built-in fallback is always registered.
    pub fn is_empty(&self) -> bool {
        self.inner.read().entries.is_empty()
    }
}

/// The process-global registry, created on first use with the built-in fallback and (with
/// the `devices` feature) the moves of `DeviceVec` between host memory and every device.
pub fn moves() -> &'static MoveRegistry {
    static REGISTRY: OnceLock<MoveRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let r = MoveRegistry::new();
        #[cfg(feature = "devices")]
        crate::gpu::register_device_moves(&r);
        r
    })
}
