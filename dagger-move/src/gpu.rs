//! Typed device-resident values: [`DeviceVec<T>`], the argument and result type of kernel
//! tasks, the buffer behind it ([`GpuBuffer`]), kernel launches from a task
//! ([`Device::current`], [`Launch`]), and the moves that take a `DeviceVec` between host
//! memory and the devices of every backend ([`register_device_moves`]).
//!
//! A `DeviceVec<T>` is a vector of plain numbers that lives either in host memory or in one
//! device's memory. Its encoded form is exactly a `Vec<T>`'s, so a task that returns
//! `Vec<f32>` feeds a task that takes `DeviceVec<f32>` and the other way round. When a task
//! taking `DeviceVec` arguments is placed on a device processor, the worker moves each
//! argument there before the task runs (an upload from host bytes, nothing if it already
//! lives there, a direct or host-staged copy from another device); on a CPU thread the
//! same arguments arrive in host memory. A task that returns a device-resident `DeviceVec`
//! leaves its result on the device, where the next task on that device takes it without a
//! copy; it is copied to the host only when something elsewhere needs it.
//!
//! Buffers are shared: a task that writes a `DeviceVec` argument in place
//! ([`Launch::buffer_mut`], [`DeviceVec::as_mut_slice`]) first gets its own copy if the
//! buffer is shared with the worker's store (copy on write), so a chunk other tasks read
//! never changes under them.

use crate::device::DeviceBuffer;
use crate::registry::{MoveRegistry, MoveTarget, MoveValue};
use crate::MoveError;
use dagger_core::MemorySpace;
use dagger_proc::device::{
    DeviceError, DeviceInfo, DeviceProc, DeviceRef, Kernel, KernelArg, RawBuffer, Scalar,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

mod sealed {
    pub trait Sealed {}
}

/// A plain number type a [`DeviceVec`] holds: `f32`, `f64`, `i8`, `i16`, `i32`, `i64`, `u8`,
/// `u16`, `u32`, `u64`. Its device bytes are its little-endian memory layout.
pub trait Element:
    bytemuck::Pod + Serialize + DeserializeOwned + Send + Sync + fmt::Debug + sealed::Sealed + 'static
{
    /// True if the encoded form of a `Vec<Self>` is a length and then exactly the elements'
    /// little-endian bytes (floats and bytes; postcard writes wider integers as varints), so
    /// that device bytes and encoded bytes convert without touching each element.
    const FIXED_WIDTH: bool;

    /// The value as a kernel scalar argument, for the types kernels take by value.
    fn scalar(self) -> Option<Scalar>;
}

macro_rules! elements {
    ($($t:ty => $fixed:expr, $s:expr),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const FIXED_WIDTH: bool = $fixed && cfg!(target_endian = "little");
            fn scalar(self) -> Option<Scalar> {
                #[allow(clippy::redundant_closure_call)]
                ($s)(self)
            }
        }
    )*};
}

elements! {
    f32 => true, |v| Some(Scalar::F32(v)),
    f64 => true, |v| Some(Scalar::F64(v)),
    i32 => false, |v| Some(Scalar::I32(v)),
    u32 => false, |v| Some(Scalar::U32(v)),
    i64 => false, |v| Some(Scalar::I64(v)),
    u64 => false, |v| Some(Scalar::U64(v)),
    i8 => true, |_| None,
    i16 => false, |_| None,
    u8 => true, |_| None,
    u16 => false, |_| None,
}

/// Writes `n` as postcard's varint (LEB128).
fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a postcard varint (at most 10 bytes) from the front of `b`: the value and the
/// rest. `None` for a truncated or overlong one.
fn take_varint(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut n: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        n |= bits.checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some((n, &b[i + 1..]));
        }
    }
    None
}

/// The elements' bytes inside the encoded form of a `Vec<T>`, for a fixed-width `T`:
/// `None` when `T` is not fixed-width or the bytes are not exactly one such vector (the
/// caller then decodes them the slow way, which reports the error).
fn fixed_payload<T: Element>(encoded: &[u8]) -> Option<&[u8]> {
    if !T::FIXED_WIDTH {
        return None;
    }
    let (n, rest) = take_varint(encoded)?;
    let len = usize::try_from(n)
        .ok()?
        .checked_mul(std::mem::size_of::<T>())?;
    (rest.len() == len).then_some(rest)
}

/// Everything a kernel scalar argument can be built from.
pub trait IntoScalar {
    /// The scalar.
    fn into_scalar(self) -> Scalar;
}

macro_rules! into_scalar {
    ($($t:ty => $v:ident),*) => {$(
        impl IntoScalar for $t {
            fn into_scalar(self) -> Scalar {
                Scalar::$v(self)
            }
        }
    )*};
}
into_scalar!(f32 => F32, f64 => F64, i32 => I32, u32 => U32, i64 => I64, u64 => U64);

impl IntoScalar for Scalar {
    fn into_scalar(self) -> Scalar {
        self
    }
}

/// A buffer of `T`s on one device: the device-resident value of a chunk. Freed on the
/// device (and its bytes returned to the device's ledger) when the last handle drops.
pub struct GpuBuffer {
    device: DeviceRef,
    raw: RawBuffer,
    /// Element count.
    elems: usize,
    /// The element type's name, for messages.
    ty: &'static str,
    /// Encodes the device bytes as the host form (a postcard `Vec<T>`).
    encode: fn(&[u8]) -> Result<Vec<u8>, MoveError>,
}

impl GpuBuffer {
    /// The device it lives on.
    pub fn device(&self) -> &DeviceRef {
        &self.device
    }

    /// The backend's buffer.
    pub fn raw(&self) -> &RawBuffer {
        &self.raw
    }

    /// Element count.
    pub fn elems(&self) -> usize {
        self.elems
    }

    /// The raw device bytes, copied to the host.
    pub fn download_raw(&self) -> Result<Vec<u8>, MoveError> {
        self.device.download(&self.raw).map_err(device_error)
    }

    /// The elements, copied from the device straight into a new vector (one copy).
    fn download_typed<T: Element>(&self) -> Result<Vec<T>, MoveError> {
        let mut out = vec![T::zeroed(); self.elems];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
        self.device
            .gpu()
            .download(&self.raw, bytes)
            .map_err(device_error)?;
        Ok(out)
    }
}

impl fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GpuBuffer<{}>[{}] in {}",
            self.ty,
            self.elems,
            self.device.memory()
        )
    }
}

impl DeviceBuffer for GpuBuffer {
    fn memory(&self) -> MemorySpace {
        self.device.memory().clone()
    }

    fn len(&self) -> u64 {
        self.raw.len()
    }

    fn to_host(&self) -> Result<Vec<u8>, MoveError> {
        let raw = self.download_raw()?;
        (self.encode)(&raw)
    }
}

fn encode_as<T: Element>(raw: &[u8]) -> Result<Vec<u8>, MoveError> {
    if T::FIXED_WIDTH {
        let mut out = Vec::with_capacity(raw.len() + 10);
        put_varint(&mut out, (raw.len() / std::mem::size_of::<T>()) as u64);
        out.extend_from_slice(raw);
        return Ok(out);
    }
    let elems: Vec<T> = bytemuck::pod_collect_to_vec(raw);
    postcard::to_allocvec(&elems).map_err(|e| MoveError::Decode {
        ty: std::any::type_name::<Vec<T>>().to_string(),
        message: e.to_string(),
    })
}

/// A device failure as a move failure.
pub fn device_error(e: DeviceError) -> MoveError {
    MoveError::Device(e)
}

enum Repr<T> {
    Host(Vec<T>),
    Device(Arc<GpuBuffer>),
}

/// A vector of plain numbers in host memory or in one device's memory; see the
/// [module documentation](self). Encodes exactly as a `Vec<T>`.
pub struct DeviceVec<T: Element> {
    repr: Repr<T>,
}

impl<T: Element> DeviceVec<T> {
    /// A vector in host memory.
    pub fn from_vec(v: Vec<T>) -> Self {
        Self {
            repr: Repr::Host(v),
        }
    }

    /// A vector held by a device buffer of `T`s. Fails if the buffer holds another type.
    pub fn from_buffer(buf: Arc<GpuBuffer>) -> Result<Self, MoveError> {
        if buf.ty != std::any::type_name::<T>() {
            return Err(MoveError::WrongValue {
                expected: format!("a device buffer of {}", std::any::type_name::<T>()),
            });
        }
        Ok(Self {
            repr: Repr::Device(buf),
        })
    }

    /// Uploads `data` to `device`.
    pub fn upload(device: &DeviceRef, data: &[T]) -> Result<Self, MoveError> {
        let raw = device
            .upload(bytemuck::cast_slice(data))
            .map_err(device_error)?;
        Ok(Self::on_device(device, raw, data.len()))
    }

    /// The vector encoded in `encoded` (the postcard form of a `Vec<T>`), uploaded to
    /// `device`: for floats and bytes straight from the encoded bytes, with no decoding
    /// pass.
    pub fn upload_encoded(device: &DeviceRef, encoded: &[u8]) -> Result<Self, MoveError> {
        if let Some(payload) = fixed_payload::<T>(encoded) {
            let raw = device.upload(payload).map_err(device_error)?;
            return Ok(Self::on_device(
                device,
                raw,
                payload.len() / std::mem::size_of::<T>(),
            ));
        }
        let v = decode_vec::<T>(encoded)?;
        Self::upload(device, &v)
    }

    /// `n` zeros on `device`.
    pub fn zeros(device: &DeviceRef, n: usize) -> Result<Self, MoveError> {
        Self::upload(device, &vec![T::zeroed(); n])
    }

    fn on_device(device: &DeviceRef, raw: RawBuffer, elems: usize) -> Self {
        Self {
            repr: Repr::Device(Arc::new(GpuBuffer {
                device: device.clone(),
                raw,
                elems,
                ty: std::any::type_name::<T>(),
                encode: encode_as::<T>,
            })),
        }
    }

    /// Element count.
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Host(v) => v.len(),
            Repr::Device(b) => b.elems,
        }
    }

    /// True if it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory it lives in.
    pub fn memory(&self) -> MemorySpace {
        match &self.repr {
            Repr::Host(_) => MemorySpace::HOST,
            Repr::Device(b) => b.device.memory().clone(),
        }
    }

    /// True if it lives in a device's memory.
    pub fn is_on_device(&self) -> bool {
        matches!(self.repr, Repr::Device(_))
    }

    /// The elements, if it lives in host memory.
    pub fn as_slice(&self) -> Option<&[T]> {
        match &self.repr {
            Repr::Host(v) => Some(v),
            Repr::Device(_) => None,
        }
    }

    /// The elements for writing, if it lives in host memory.
    pub fn as_mut_slice(&mut self) -> Option<&mut [T]> {
        match &mut self.repr {
            Repr::Host(v) => Some(v),
            Repr::Device(_) => None,
        }
    }

    /// The device buffer, if it lives on a device.
    pub fn buffer(&self) -> Option<&Arc<GpuBuffer>> {
        match &self.repr {
            Repr::Host(_) => None,
            Repr::Device(b) => Some(b),
        }
    }

    /// The device buffer for writing: copied first on its device if anyone else holds it
    /// (the worker's store, another task), so that what they see does not change.
    pub fn buffer_mut(&mut self) -> Result<Option<&RawBuffer>, MoveError> {
        let Repr::Device(b) = &mut self.repr else {
            return Ok(None);
        };
        if Arc::strong_count(b) > 1 {
            let raw = b.device.duplicate(&b.raw).map_err(device_error)?;
            *b = Arc::new(GpuBuffer {
                device: b.device.clone(),
                raw,
                elems: b.elems,
                ty: b.ty,
                encode: b.encode,
            });
        }
        Ok(Some(&b.raw))
    }

    /// The elements in host memory: a clone for a host vector, a download for a device
    /// one.
    pub fn to_vec(&self) -> Result<Vec<T>, MoveError> {
        match &self.repr {
            Repr::Host(v) => Ok(v.clone()),
            Repr::Device(b) => b.download_typed(),
        }
    }

    /// The elements in host memory, consuming the vector (no copy for a host vector).
    pub fn into_vec(self) -> Result<Vec<T>, MoveError> {
        match self.repr {
            Repr::Host(v) => Ok(v),
            Repr::Device(b) => b.download_typed(),
        }
    }

    /// The same elements on `device`: no copy if they are there already, a direct copy
    /// from another device of the same backend where it has one, else through the host.
    pub fn to_device(&self, device: &DeviceRef) -> Result<Self, MoveError> {
        match &self.repr {
            Repr::Host(v) => Self::upload(device, v),
            Repr::Device(b) if b.device.same_device(device) => Ok(Self {
                repr: Repr::Device(b.clone()),
            }),
            Repr::Device(b) => {
                let raw = device.copy_from(&b.device, &b.raw).map_err(device_error)?;
                Ok(Self::on_device(device, raw, b.elems))
            }
        }
    }

    /// The same elements in host memory (a download for a device vector).
    pub fn to_host(&self) -> Result<Self, MoveError> {
        self.to_vec().map(Self::from_vec)
    }

    /// The value as a chunk's device-resident representation, if it lives on a device.
    pub fn as_device_buffer(&self) -> Option<Arc<dyn DeviceBuffer>> {
        self.buffer().map(|b| b.clone() as Arc<dyn DeviceBuffer>)
    }
}

impl<T: Element> Clone for DeviceVec<T> {
    /// Shares a device buffer (writes copy it first, see [`DeviceVec::buffer_mut`]);
    /// clones a host vector.
    fn clone(&self) -> Self {
        Self {
            repr: match &self.repr {
                Repr::Host(v) => Repr::Host(v.clone()),
                Repr::Device(b) => Repr::Device(b.clone()),
            },
        }
    }
}

impl<T: Element> From<Vec<T>> for DeviceVec<T> {
    fn from(v: Vec<T>) -> Self {
        Self::from_vec(v)
    }
}

impl<T: Element> fmt::Debug for DeviceVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Host(v) => f.debug_tuple("DeviceVec").field(v).finish(),
            Repr::Device(b) => write!(f, "DeviceVec({b:?})"),
        }
    }
}

impl<T: Element> PartialEq for DeviceVec<T> {
    /// Compares the elements, downloading device vectors (a failed download compares
    /// unequal).
    fn eq(&self, other: &Self) -> bool {
        match (self.to_vec(), other.to_vec()) {
            (Ok(a), Ok(b)) => {
                bytemuck::cast_slice::<T, u8>(&a) == bytemuck::cast_slice::<T, u8>(&b)
            }
            _ => false,
        }
    }
}

impl<T: Element> Serialize for DeviceVec<T> {
    /// As a `Vec<T>`; a device vector is downloaded first (a failed download is an
    /// encoding error).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.repr {
            Repr::Host(v) => v.serialize(s),
            Repr::Device(b) => {
                let v: Vec<T> = b.download_typed().map_err(serde::ser::Error::custom)?;
                v.serialize(s)
            }
        }
    }
}

impl<'de, T: Element> Deserialize<'de> for DeviceVec<T> {
    /// From a `Vec<T>`, into host memory.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(d).map(Self::from_vec)
    }
}

/// The device the calling task runs on, for launching kernels and allocating there.
#[derive(Clone, Debug)]
pub struct Device {
    device: DeviceRef,
}

impl Device {
    /// The device of the processor running the calling task; `None` on a CPU thread or
    /// outside a task.
    pub fn current() -> Option<Device> {
        let cur = dagger_proc::current()?;
        let proc = cur.proc.as_any().downcast_ref::<DeviceProc>()?;
        Some(Device {
            device: proc.device().clone(),
        })
    }

    /// A device from its handle.
    pub fn from_ref(device: DeviceRef) -> Self {
        Self { device }
    }

    /// The handle to the device.
    pub fn handle(&self) -> &DeviceRef {
        &self.device
    }

    /// What the device is.
    pub fn info(&self) -> &DeviceInfo {
        self.device.info()
    }

    /// The backend's name (`opencl`, `wgpu`, `cuda`).
    pub fn backend(&self) -> &'static str {
        self.device.info().backend
    }

    /// Uploads `data` here.
    pub fn upload<T: Element>(&self, data: &[T]) -> Result<DeviceVec<T>, MoveError> {
        DeviceVec::upload(&self.device, data)
    }

    /// `n` zeros here.
    pub fn zeros<T: Element>(&self, n: usize) -> Result<DeviceVec<T>, MoveError> {
        DeviceVec::zeros(&self.device, n)
    }

    /// Starts a launch of `kernel` over `global` work items; add its arguments in order,
    /// then [`Launch::run`].
    pub fn launch<'a>(&'a self, kernel: &'a Kernel, global: usize) -> Launch<'a> {
        Launch {
            device: &self.device,
            kernel,
            global,
            args: Vec::new(),
            error: None,
        }
    }

    /// Waits for everything queued on the device.
    pub fn synchronize(&self) -> Result<(), DeviceError> {
        self.device.gpu().synchronize()
    }
}

/// One kernel launch being put together: the arguments in the kernel's parameter order.
pub struct Launch<'a> {
    device: &'a DeviceRef,
    kernel: &'a Kernel,
    global: usize,
    args: Vec<KernelArg<'a>>,
    error: Option<MoveError>,
}

impl<'a> Launch<'a> {
    /// A buffer the kernel reads. It must live on this device (task arguments of type
    /// `DeviceVec` are moved there before the task runs).
    pub fn buffer<T: Element>(mut self, v: &'a DeviceVec<T>) -> Self {
        match v.buffer() {
            Some(b) => self.args.push(KernelArg::Buffer(b.raw())),
            None => self.fail(v),
        }
        self
    }

    /// A buffer the kernel writes: copied first if it is shared (see
    /// [`DeviceVec::buffer_mut`]).
    pub fn buffer_mut<T: Element>(mut self, v: &'a mut DeviceVec<T>) -> Self {
        let on_device = v.is_on_device();
        match v.buffer_mut() {
            Ok(Some(raw)) => self.args.push(KernelArg::Buffer(raw)),
            Ok(None) => {
                debug_assert!(!on_device);
                self.error
                    .get_or_insert(MoveError::Device(DeviceError::BadArgument(format!(
                        "argument {} is a DeviceVec in host memory, not on {}",
                        self.args.len(),
                        self.device.memory()
                    ))));
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// A value passed by value (`f32`, `u32`, ...).
    pub fn scalar(mut self, v: impl IntoScalar) -> Self {
        self.args.push(KernelArg::Scalar(v.into_scalar()));
        self
    }

    fn fail<T: Element>(&mut self, _v: &DeviceVec<T>) {
        self.error
            .get_or_insert(MoveError::Device(DeviceError::BadArgument(format!(
                "argument {} is a DeviceVec in host memory, not on {}",
                self.args.len(),
                self.device.memory()
            ))));
    }

    /// Runs the kernel. Errors: a bad argument, a kernel that does not build for this
    /// backend or has no source for it, a driver error.
    pub fn run(self) -> Result<(), MoveError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let global = u32::try_from(self.global).map_err(|_| {
            MoveError::Device(DeviceError::BadArgument(format!(
                "{} work items do not fit a launch",
                self.global
            )))
        })?;
        self.device
            .launch(self.kernel, global, &self.args)
            .map_err(device_error)
    }
}

/// Decodes the postcard form of a `Vec<T>`.
fn decode_vec<T: Element>(b: &[u8]) -> Result<Vec<T>, MoveError> {
    postcard::from_bytes::<Vec<T>>(b).map_err(|e| MoveError::Decode {
        ty: std::any::type_name::<Vec<T>>().to_string(),
        message: e.to_string(),
    })
}

/// Moves a `DeviceVec<T>` in whatever form it arrives (host bytes, a typed host value, a
/// device buffer) to the target: onto the target's device, or into host memory for a
/// target without one.
fn move_device_vec<T: Element>(
    v: MoveValue,
    target: &MoveTarget<'_>,
) -> Result<MoveValue, MoveError> {
    let dv: DeviceVec<T> = match v {
        MoveValue::Bytes(b) => {
            DeviceVec::from_vec(postcard::from_bytes::<Vec<T>>(&b).map_err(|e| {
                MoveError::Decode {
                    ty: std::any::type_name::<Vec<T>>().to_string(),
                    message: e.to_string(),
                }
            })?)
        }
        MoveValue::Value(any) => match any.downcast::<DeviceVec<T>>() {
            Ok(dv) => *dv,
            Err(any) => match any.downcast::<Vec<T>>() {
                Ok(v) => DeviceVec::from_vec(*v),
                Err(_) => {
                    return Err(MoveError::WrongValue {
                        expected: std::any::type_name::<DeviceVec<T>>().to_string(),
                    })
                }
            },
        },
        MoveValue::Device(buf) => {
            let gpu = crate::device::downcast_buffer::<GpuBuffer>(buf).map_err(|other| {
                MoveError::WrongValue {
                    expected: format!("a GpuBuffer, not {other:?}"),
                }
            })?;
            DeviceVec::from_buffer(gpu)?
        }
    };
    let moved = match target.device::<DeviceRef>() {
        Some(dev) => dv.to_device(dev)?,
        None if dv.is_on_device() => dv.to_host()?,
        None => dv,
    };
    Ok(MoveValue::value(moved))
}

/// Registers, for every [`Element`] type, the move of `DeviceVec<T>` from any processor
/// kind to any other. Called once when the process-global registry is made; a user's move
/// registered later for a more specific pair wins.
pub fn register_device_moves(r: &MoveRegistry) {
    fn one<T: Element>(r: &MoveRegistry) {
        r.register_named(
            crate::registry::KindPattern::Any,
            crate::registry::KindPattern::Any,
            std::any::type_name::<DeviceVec<T>>(),
            move_device_vec::<T>,
        );
    }
    one::<f32>(r);
    one::<f64>(r);
    one::<i8>(r);
    one::<i16>(r);
    one::<i32>(r);
    one::<i64>(r);
    one::<u8>(r);
    one::<u16>(r);
    one::<u32>(r);
    one::<u64>(r);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_vectors_convert_without_decoding_and_agree_with_postcard() {
        for n in [0usize, 1, 127, 128, 300, 70_000] {
            let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let encoded = postcard::to_allocvec(&v).unwrap();
            // Device bytes → the encoded form, by the fast path, is postcard's own.
            assert_eq!(encode_as::<f32>(bytemuck::cast_slice(&v)).unwrap(), encoded);
            // The encoded form → the elements' bytes, without decoding.
            assert_eq!(
                fixed_payload::<f32>(&encoded).unwrap(),
                bytemuck::cast_slice::<f32, u8>(&v)
            );
        }
        let bytes: Vec<u8> = (0..=255).collect();
        let encoded = postcard::to_allocvec(&bytes).unwrap();
        assert_eq!(fixed_payload::<u8>(&encoded).unwrap(), &bytes[..]);
        // Varint integers are not fixed-width: they take the decoding path.
        let ints: Vec<u32> = vec![1, 300, 70_000];
        let encoded = postcard::to_allocvec(&ints).unwrap();
        assert!(fixed_payload::<u32>(&encoded).is_none());
        assert_eq!(
            encode_as::<u32>(bytemuck::cast_slice(&ints)).unwrap(),
            encoded
        );
    }

    #[test]
    fn malformed_encodings_are_refused_not_trusted() {
        // A length that does not match the bytes, a truncated or overlong varint.
        assert!(fixed_payload::<f32>(&[3, 0, 0, 0, 0]).is_none());
        assert!(fixed_payload::<f32>(&[0x80]).is_none());
        assert!(fixed_payload::<f32>(&[0xff; 11]).is_none());
        assert!(fixed_payload::<f32>(&[
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ])
        .is_none());
        assert!(decode_vec::<f32>(&[3, 0, 0]).is_err());
    }
}
