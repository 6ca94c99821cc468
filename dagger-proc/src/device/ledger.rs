//! The memory ledger of one device: how many bytes the runtime holds there, the most it
//! may, and the values it may push out to the host to make room.

use super::DeviceError;
use dagger_core::MemorySpace;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// A value held in a device's memory that can leave it on request: a device-resident chunk
/// the worker keeps for later tasks. Registered with [`MemoryLedger::register`].
pub trait Evictable: Send + Sync {
    /// Copies the value to host memory and drops the device copy, if nothing is using the
    /// device copy now. Returns the device bytes that freed (0 if it is in use, already
    /// evicted, or its copy could not be made: then it stays where it is).
    fn evict(&self) -> u64;
}

/// Bytes reserved in a [`MemoryLedger`]; given back when dropped (with the buffer that
/// holds it).
pub struct Reservation {
    ledger: Arc<Inner>,
    len: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.ledger.used.fetch_sub(self.len, Ordering::AcqRel);
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reservation({} B)", self.len)
    }
}

struct Inner {
    used: AtomicU64,
}

/// The bytes the runtime holds on one device, capped at a capacity. A reservation that
/// would pass the cap first evicts registered [`Evictable`] values, oldest first, and
/// fails with [`DeviceError::OutOfMemory`] only if that did not make room.
pub struct MemoryLedger {
    memory: MemorySpace,
    capacity: u64,
    inner: Arc<Inner>,
    /// Serialises reservations, so two cannot both pass the check with one gap.
    reserve_lock: Mutex<()>,
    evictables: Mutex<VecDeque<Weak<dyn Evictable>>>,
    peak: AtomicU64,
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
}

impl MemoryLedger {
    /// A ledger for `memory` with room for `capacity` bytes.
    pub fn new(memory: MemorySpace, capacity: u64) -> Self {
        Self {
            memory,
            capacity,
            inner: Arc::new(Inner {
                used: AtomicU64::new(0),
            }),
            reserve_lock: Mutex::new(()),
            evictables: Mutex::new(VecDeque::new()),
            peak: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
        }
    }

    /// The memory space it keeps.
    pub fn memory(&self) -> &MemorySpace {
        &self.memory
    }

    /// The most bytes the runtime holds on the device.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held now (live buffers).
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Acquire)
    }

    /// The most bytes held at once since the ledger was made.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Acquire)
    }

    /// How many values were evicted to the host, and their bytes.
    pub fn evictions(&self) -> (u64, u64) {
        (
            self.evictions.load(Ordering::Acquire),
            self.evicted_bytes.load(Ordering::Acquire),
        )
    }

    /// Registers a value that may be evicted when room is needed; held weakly (a value
    /// dropped meanwhile is skipped). Older registrations are evicted first.
    pub fn register(&self, value: Weak<dyn Evictable>) {
        let mut list = self.evictables.lock();
        // Drop the dead entries now and then, so the list stays the size of what lives.
        if list.len() >= 64 && list.len().is_power_of_two() {
            list.retain(|w| w.strong_count() > 0);
        }
        list.push_back(value);
    }

    /// Reserves `len` bytes, evicting registered values if needed.
    pub fn reserve(&self, len: u64) -> Result<Reservation, DeviceError> {
        if len > self.capacity {
            return Err(self.out_of_memory(len));
        }
        let _serial = self.reserve_lock.lock();
        if let Some(r) = self.try_reserve(len) {
            return Ok(r);
        }
        let need = (self.used() + len).saturating_sub(self.capacity);
        self.evict_for(need);
        self.try_reserve(len).ok_or_else(|| self.out_of_memory(len))
    }

    fn try_reserve(&self, len: u64) -> Option<Reservation> {
        let used = &self.inner.used;
        let mut cur = used.load(Ordering::Acquire);
        loop {
            let next = cur.checked_add(len)?;
            if next > self.capacity {
                return None;
            }
            match used.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.peak.fetch_max(next, Ordering::AcqRel);
                    return Some(Reservation {
                        ledger: self.inner.clone(),
                        len,
                    });
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Evicts registered values, oldest first, until `bytes` were freed or none is left
    /// that can go. Returns the bytes freed.
    pub fn evict_for(&self, bytes: u64) -> u64 {
        let mut freed = 0;
        // Take the candidates out, so evicting (which frees buffers) runs without the lock.
        let candidates: Vec<Weak<dyn Evictable>> = self.evictables.lock().drain(..).collect();
        let mut keep = Vec::with_capacity(candidates.len());
        for w in candidates {
            if freed >= bytes {
                keep.push(w);
                continue;
            }
            let Some(v) = w.upgrade() else { continue };
            let n = v.evict();
            if n > 0 {
                freed += n;
                self.evictions.fetch_add(1, Ordering::AcqRel);
                self.evicted_bytes.fetch_add(n, Ordering::AcqRel);
            } else {
                keep.push(w);
            }
        }
        let mut list = self.evictables.lock();
        // Registered meanwhile go after the survivors, which are older.
        for w in keep.into_iter().rev() {
            list.push_front(w);
        }
        freed
    }

    pub(crate) fn out_of_memory(&self, requested: u64) -> DeviceError {
        DeviceError::OutOfMemory {
            memory: self.memory.clone(),
            requested,
            available: self.capacity.saturating_sub(self.used()),
            capacity: self.capacity,
        }
    }
}

impl fmt::Debug for MemoryLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLedger")
            .field("memory", &self.memory)
            .field("capacity", &self.capacity)
            .field("used", &self.used())
            .field("peak", &self.peak())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct Value {
        ledger: Arc<MemoryLedger>,
        held: Mutex<Option<Reservation>>,
        busy: AtomicBool,
    }

    impl Evictable for Value {
        fn evict(&self) -> u64 {
            if self.busy.load(Ordering::Acquire) {
                return 0;
            }
            self.held.lock().take().map_or(0, |r| r.len)
        }
    }

    fn value(ledger: &Arc<MemoryLedger>, len: u64, busy: bool) -> Arc<Value> {
        let v = Arc::new(Value {
            ledger: ledger.clone(),
            held: Mutex::new(Some(ledger.reserve(len).unwrap())),
            busy: AtomicBool::new(busy),
        });
        let w: Weak<dyn Evictable> = Arc::downgrade(&v) as Weak<dyn Evictable>;
        v.ledger.register(w);
        v
    }

    #[test]
    fn a_full_ledger_evicts_unused_values_oldest_first_then_refuses() {
        let ledger = Arc::new(MemoryLedger::new(MemorySpace::custom("test", 0), 100));
        let old = value(&ledger, 40, false);
        let busy = value(&ledger, 40, true);
        assert_eq!(ledger.used(), 80);
        // 30 more does not fit: the oldest unused value goes, the busy one stays.
        let r = ledger.reserve(30).unwrap();
        assert!(old.held.lock().is_none());
        assert!(busy.held.lock().is_some());
        assert_eq!(ledger.used(), 70);
        assert_eq!(ledger.evictions(), (1, 40));
        // Nothing more can go: a reservation that does not fit is refused, typed.
        let err = ledger.reserve(50).unwrap_err();
        assert!(matches!(
            err,
            DeviceError::OutOfMemory {
                requested: 50,
                available: 30,
                capacity: 100,
                ..
            }
        ));
        assert!(ledger.reserve(101).is_err());
        drop(r);
        assert_eq!(ledger.used(), 40, "the busy value still holds its bytes");
        drop(busy);
        assert_eq!(ledger.used(), 0);
        assert_eq!(ledger.peak(), 80);
    }
}
