//! Device-resident values: moves into and out of a memory space other than host RAM.
//!
//! The "device" here is a real, if simple, memory space kept by the test: it owns its
//! buffers (raw little-endian words, not the host encoding), hands out handles, frees a
//! buffer when its last reference goes, and runs a "kernel" on its buffers.

use dagger_core::{ChunkRepr, DeviceHandle, MemorySpace, ProcId, ProcKind, WorkerId};
use dagger_move::{DeviceBuffer, MoveError, MoveRegistry, MoveTarget, MoveValue};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A memory space of its own: buffers by handle.
#[derive(Debug)]
struct FakeDevice {
    memory: MemorySpace,
    buffers: Mutex<BTreeMap<u64, Vec<u8>>>,
    next: Mutex<u64>,
}

impl FakeDevice {
    fn new(index: u32) -> Arc<Self> {
        Arc::new(Self {
            memory: MemorySpace::custom("fakedev", index),
            buffers: Mutex::new(BTreeMap::new()),
            next: Mutex::new(1),
        })
    }

    /// Uploads `words` into a new device buffer.
    fn upload(self: &Arc<Self>, words: &[u32]) -> FakeBuf {
        let raw: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let len = raw.len() as u64;
        let handle = {
            let mut next = self.next.lock();
            *next += 1;
            *next
        };
        self.buffers.lock().insert(handle, raw);
        FakeBuf {
            device: Arc::clone(self),
            handle,
            len,
        }
    }

    /// A "kernel": doubles every word of a buffer, on the device.
    fn double(&self, buf: &FakeBuf) {
        if let Some(raw) = self.buffers.lock().get_mut(&buf.handle) {
            for w in raw.chunks_exact_mut(4) {
                let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]).wrapping_mul(2);
                w.copy_from_slice(&v.to_le_bytes());
            }
        }
    }

    fn download(&self, buf: &FakeBuf) -> Result<Vec<u32>, MoveError> {
        let buffers = self.buffers.lock();
        let raw = buffers.get(&buf.handle).ok_or_else(|| MoveError::Failed {
            message: format!("no buffer {}", buf.handle),
        })?;
        Ok(raw
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect())
    }

    fn live_buffers(&self) -> usize {
        self.buffers.lock().len()
    }
}

/// One buffer of a [`FakeDevice`]; freed on the device when dropped.
#[derive(Debug)]
struct FakeBuf {
    device: Arc<FakeDevice>,
    handle: u64,
    len: u64,
}

impl Drop for FakeBuf {
    fn drop(&mut self) {
        self.device.buffers.lock().remove(&self.handle);
    }
}

impl DeviceBuffer for FakeBuf {
    fn memory(&self) -> MemorySpace {
        self.device.memory.clone()
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn to_host(&self) -> Result<Vec<u8>, MoveError> {
        let words = self.device.download(self)?;
        postcard::to_allocvec(&words).map_err(|e| MoveError::Failed {
            message: e.to_string(),
        })
    }

    fn handle(&self) -> DeviceHandle {
        DeviceHandle(self.handle)
    }
}

/// Another backend's buffer type, to check downcasts.
#[derive(Debug)]
struct OtherBuf;

impl DeviceBuffer for OtherBuf {
    fn memory(&self) -> MemorySpace {
        MemorySpace::custom("other", 0)
    }
    fn len(&self) -> u64 {
        0
    }
    fn to_host(&self) -> Result<Vec<u8>, MoveError> {
        Ok(Vec::new())
    }
}

fn fakedev() -> ProcKind {
    ProcKind::custom("fakedev")
}

/// The registry with a host → device upload and a device → host download of `Vec<u32>`.
fn registry() -> MoveRegistry {
    let r = MoveRegistry::new();
    r.register_to_device::<Vec<u32>, FakeBuf>(
        ProcKind::THREAD,
        fakedev(),
        |words, target: &MoveTarget<'_>| {
            let dev = target
                .device::<Arc<FakeDevice>>()
                .ok_or_else(|| MoveError::Failed {
                    message: "no device handle".into(),
                })?;
            Ok(dev.upload(&words))
        },
    );
    r.register_from_device::<Vec<u32>, FakeBuf, Vec<u32>>(fakedev(), ProcKind::THREAD, |buf, _| {
        buf.device.download(&buf)
    });
    r
}

#[test]
fn a_move_places_a_value_in_device_memory_and_another_brings_it_back() {
    let r = registry();
    let dev = FakeDevice::new(3);
    let ty = std::any::type_name::<Vec<u32>>();
    let kind = fakedev();
    let mem = dev.memory.clone();
    let handle: Arc<FakeDevice> = Arc::clone(&dev);
    let to_dev = MoveTarget::new(ProcId::new(WorkerId(1), 2), &kind, &mem).with_device(&handle);

    let host = MoveValue::Bytes(postcard::to_allocvec(&vec![1u32, 2, 3]).unwrap());
    let on_dev = r.apply(&ProcKind::THREAD, ty, host, &to_dev).unwrap();
    assert!(on_dev.is_device());
    assert_eq!(on_dev.memory(), MemorySpace::custom("fakedev", 3));
    let repr = on_dev.repr().unwrap();
    assert!(matches!(
        &repr,
        ChunkRepr::Device { memory, len: 12, .. } if *memory == MemorySpace::custom("fakedev", 3)
    ));
    assert_eq!(dev.live_buffers(), 1);

    // A task on the device works on the buffer in place.
    let handle = on_dev.as_device().unwrap().handle();
    assert_eq!(repr.device_handle(), Some(handle));
    let fake = on_dev.downcast_device::<FakeBuf>().unwrap();
    assert_eq!(DeviceHandle(fake.handle), handle);
    dev.double(&fake);

    let host_mem = MemorySpace::HOST;
    let thread = ProcKind::THREAD;
    let to_host = MoveTarget::new(ProcId::new(WorkerId(1), 1), &thread, &host_mem);
    let back = r
        .apply(&kind, ty, MoveValue::Device(fake), &to_host)
        .unwrap();
    assert_eq!(back.downcast::<Vec<u32>>().unwrap(), vec![2, 4, 6]);
    // The last reference is gone: the device freed the buffer.
    assert_eq!(dev.live_buffers(), 0);
}

#[test]
fn a_device_value_decodes_through_its_host_copy() {
    let dev = FakeDevice::new(0);
    let v = MoveValue::device(dev.upload(&[7, 8]));
    assert_eq!(v.into_typed::<Vec<u32>>().unwrap(), vec![7, 8]);
    assert_eq!(dev.live_buffers(), 0);

    let v = MoveValue::device(dev.upload(&[9]));
    assert_eq!(
        v.into_host_bytes().unwrap(),
        postcard::to_allocvec(&vec![9u32]).unwrap()
    );
}

#[test]
fn downcasts_to_another_backend_give_the_value_back() {
    let dev = FakeDevice::new(0);
    let v = MoveValue::device(dev.upload(&[1]));
    let v = v.downcast_device::<OtherBuf>().unwrap_err();
    assert!(v.is_device());
    let v = v.downcast::<FakeBuf>().unwrap_err();
    assert!(v.downcast_device::<FakeBuf>().is_ok());
    assert!(MoveValue::Bytes(vec![1])
        .downcast_device::<FakeBuf>()
        .is_err());

    let r = registry();
    let kind = fakedev();
    let thread = ProcKind::THREAD;
    let host_mem = MemorySpace::HOST;
    let to_host = MoveTarget::new(ProcId::new(WorkerId(1), 1), &thread, &host_mem);
    let ty = std::any::type_name::<Vec<u32>>();
    let err = r
        .apply(&kind, ty, MoveValue::device(OtherBuf), &to_host)
        .unwrap_err();
    assert!(matches!(err, MoveError::WrongValue { .. }), "{err}");
}

#[test]
fn an_upload_without_the_device_handle_fails_with_the_move_error() {
    let r = registry();
    let kind = fakedev();
    let mem = MemorySpace::custom("fakedev", 0);
    let target = MoveTarget::new(ProcId::new(WorkerId(1), 2), &kind, &mem);
    let host = MoveValue::Bytes(postcard::to_allocvec(&vec![1u32]).unwrap());
    let err = r
        .apply(
            &ProcKind::THREAD,
            std::any::type_name::<Vec<u32>>(),
            host,
            &target,
        )
        .unwrap_err();
    assert!(matches!(err, MoveError::Failed { .. }), "{err}");
}
