//! One direction of a ring link: a single-producer single-consumer byte ring in a POSIX
//! shared-memory object.
//!
//! Layout of the object: a 4 KiB header, then `capacity` bytes of data (a power of two).
//! The header holds, each on its own cache line, the magic and the capacity (written once
//! by the creator), `head` (bytes written so far, stored only by the producer), `tail`
//! (bytes read so far, stored only by the consumer), and six 32-bit words: the
//! consumer's sleep flag (set while it waits for its wake-up FIFO), the producer's sleep
//! word (a futex it parks on while the ring is full), the consumer's "gone" flag, the
//! number of the consumer process's threads polling the ring (they take what comes: no
//! wake-up needed), the number asleep on the ring's doorbell, and the doorbell (a futex
//! those threads wait on, changed by the producer to wake one).
//! Positions only grow; the byte at position `p` lives at `p % capacity`.
//!
//! Next to each object lives its wake-up FIFO, `/dev/shm/<name>-w` (mode 0600): a reader
//! about to wait sets its sleep word and waits for the FIFO to become readable (in its
//! async runtime's poller, so a wake-up costs one thread wake, not two); the producer,
//! after publishing bytes, writes one byte into it when it finds the word set.
//!
//! Every value read from the peer's side of the header is checked before use (`head`
//! never runs more than `capacity` ahead of `tail`), so a hostile or dying peer can make
//! the link fail but not make this process read or write outside the mapping.
//!
//! Not guaranteed: protection against a process of the same user that shrinks the object
//! while it is mapped (that would fault on access); the objects are created with mode
//! 0600 and unlinked as soon as both ends mapped them.

use memmap2::{MmapMut, MmapOptions};
use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The prefix of every ring object's name.
pub(crate) const NAME_PREFIX: &str = "dagger-ring-";
/// How many lower-case hex digits follow the prefix (128 random bits).
const NAME_HEX: usize = 32;
/// The length of a ring object's name.
pub(crate) const NAME_LEN: usize = NAME_PREFIX.len() + NAME_HEX;
/// The magic at the start of a ring object.
const MAGIC: u64 = u64::from_le_bytes(*b"DAGRRNG1");
/// The header's length; the data starts here.
const HEADER: usize = 4096;
const OFF_MAGIC: usize = 0;
const OFF_CAPACITY: usize = 8;
const OFF_HEAD: usize = 64;
const OFF_TAIL: usize = 128;
const OFF_READER_SLEEP: usize = 192;
const OFF_WRITER_SLEEP: usize = 256;
const OFF_READER_GONE: usize = 320;
const OFF_THREADS_ASLEEP: usize = 384;
const OFF_DOORBELL: usize = 448;
const OFF_THREADS_POLLING: usize = 512;
/// The smallest ring capacity.
pub(crate) const MIN_CAPACITY: usize = 4096;
/// The largest ring capacity.
pub(crate) const MAX_CAPACITY: usize = 1 << 30;

/// Why a ring object could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RingError {
    /// The name handed over is not `dagger-ring-` followed by 32 lower-case hex digits.
    #[error("bad ring name {name:?}")]
    Name {
        /// The name, as received (cut to a sane length).
        name: String,
    },
    /// The object exists but is not a ring this process accepts.
    #[error("ring {name} refused: {reason}")]
    Invalid {
        /// The object's name.
        name: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// A system call failed.
    #[error("ring {name}: {source}")]
    Io {
        /// The object's name.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Checks that `name` is `dagger-ring-` followed by exactly 32 lower-case hex digits.
pub(crate) fn validate_name(name: &str) -> Result<(), RingError> {
    let ok = name.len() == NAME_LEN
        && name.starts_with(NAME_PREFIX)
        && name[NAME_PREFIX.len()..]
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    if ok {
        Ok(())
    } else {
        Err(RingError::Name {
            name: name.chars().take(NAME_LEN + 8).collect(),
        })
    }
}

/// A fresh unguessable name: the prefix and 128 bits from the kernel's random source.
fn random_name() -> io::Result<String> {
    let mut bytes = [0u8; NAME_HEX / 2];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let mut name = String::with_capacity(NAME_LEN);
    name.push_str(NAME_PREFIX);
    for b in bytes {
        name.push_str(&format!("{b:02x}"));
    }
    Ok(name)
}

/// Removes the object `name` and its FIFO (if `name` is valid). Missing ones are not an
/// error.
pub(crate) fn unlink(name: &str) {
    if validate_name(name).is_ok() {
        let _ = rustix::shm::unlink(format!("/{name}").as_str());
        let _ = std::fs::remove_file(fifo_path(name));
    }
}

/// Where the wake-up FIFO of the object `name` lives.
fn fifo_path(name: &str) -> String {
    format!("/dev/shm/{name}-w")
}

/// Opens the wake-up FIFO of `name` (read-write, non-blocking, never through a symbolic
/// link) and checks that it is a FIFO of this user that nobody else may open.
fn open_fifo(name: &str) -> Result<OwnedFd, RingError> {
    use rustix::fs::{FileType, Mode, OFlags};
    let io_err = |source: io::Error| RingError::Io {
        name: name.to_owned(),
        source,
    };
    let fd = rustix::fs::open(
        fifo_path(name).as_str(),
        OFlags::RDWR | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(e.into()))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| io_err(e.into()))?;
    let invalid = |reason| RingError::Invalid {
        name: name.to_owned(),
        reason,
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Fifo {
        return Err(invalid("its wake-up file is not a FIFO"));
    }
    if st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
        return Err(invalid("its wake-up FIFO is not owner-only"));
    }
    Ok(fd)
}

/// One mapped ring (either end).
pub(crate) struct Ring {
    /// The mapping; `base` points into it.
    _map: MmapMut,
    base: *mut u8,
    capacity: u64,
    name: String,
    /// The wake-up FIFO, until taken by [`Ring::take_wake`].
    wake: Option<OwnedFd>,
}

// SAFETY: the mapping is plain shared memory; every access to it goes through atomics or
// through raw copies of regions the SPSC protocol gives to one side at a time.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Creates a new ring object of `capacity` bytes (rounded up to a power of two within
    /// [`MIN_CAPACITY`]..=[`MAX_CAPACITY`]) under a fresh random name, owner-only (0600)
    /// and exclusive (`O_EXCL`), and maps it. The caller unlinks it (see [`unlink`]).
    pub(crate) fn create(capacity: usize) -> Result<Ring, RingError> {
        let capacity = capacity
            .clamp(MIN_CAPACITY, MAX_CAPACITY)
            .next_power_of_two();
        let name = random_name().map_err(|source| RingError::Io {
            name: NAME_PREFIX.to_owned(),
            source,
        })?;
        let io_err = |source: io::Error| RingError::Io {
            name: name.clone(),
            source,
        };
        let flags =
            rustix::shm::OFlags::CREATE | rustix::shm::OFlags::EXCL | rustix::shm::OFlags::RDWR;
        let mode = rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR;
        let fd = rustix::shm::open(format!("/{name}").as_str(), flags, mode)
            .map_err(|e| io_err(e.into()))?;
        let file = File::from(fd);
        let ring = (|| {
            file.set_len((HEADER + capacity) as u64).map_err(io_err)?;
            rustix::fs::mkfifoat(rustix::fs::CWD, fifo_path(&name).as_str(), mode)
                .map_err(|e| io_err(e.into()))?;
            let mut ring = Ring::map(&file, name.clone(), capacity as u64)?;
            ring.wake = Some(open_fifo(&name)?);
            ring.word64(OFF_CAPACITY)
                .store(capacity as u64, Ordering::Relaxed);
            ring.word64(OFF_MAGIC).store(MAGIC, Ordering::Release);
            Ok(ring)
        })();
        if ring.is_err() {
            unlink(&name);
        }
        ring
    }

    /// Opens and maps the ring object `name` created by the peer, after checking its name,
    /// owner (this user), mode (nothing for group or others), magic, capacity and size.
    pub(crate) fn open(name: &str) -> Result<Ring, RingError> {
        validate_name(name)?;
        let invalid = |reason| RingError::Invalid {
            name: name.to_owned(),
            reason,
        };
        let io_err = |source: io::Error| RingError::Io {
            name: name.to_owned(),
            source,
        };
        let fd = rustix::shm::open(
            format!("/{name}").as_str(),
            rustix::shm::OFlags::RDWR,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| io_err(e.into()))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(io_err)?;
        if meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(invalid("owned by another user"));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(invalid("readable or writable by other users"));
        }
        let size = meta.len();
        if size <= HEADER as u64 || size > (HEADER + MAX_CAPACITY) as u64 {
            return Err(invalid("size out of range"));
        }
        let capacity = size - HEADER as u64;
        let mut ring = Ring::map(&file, name.to_owned(), capacity)?;
        ring.wake = Some(open_fifo(name)?);
        if ring.word64(OFF_MAGIC).load(Ordering::Acquire) != MAGIC {
            return Err(invalid("bad magic"));
        }
        if ring.word64(OFF_CAPACITY).load(Ordering::Relaxed) != capacity
            || !capacity.is_power_of_two()
            || capacity < MIN_CAPACITY as u64
        {
            return Err(invalid("capacity does not match the size"));
        }
        Ok(ring)
    }

    fn map(file: &File, name: String, capacity: u64) -> Result<Ring, RingError> {
        let len = HEADER + capacity as usize;
        // SAFETY: the object is ours or was checked above; its size is `len`. Concurrent
        // changes by the peer are handled by the access discipline of this module.
        let mut map = unsafe { MmapOptions::new().len(len).map_mut(file) }.map_err(|source| {
            RingError::Io {
                name: name.clone(),
                source,
            }
        })?;
        let base = map.as_mut_ptr();
        Ok(Ring {
            _map: map,
            base,
            capacity,
            name,
            wake: None,
        })
    }

    /// Takes the ring's wake-up FIFO (read-write, non-blocking); `None` once taken.
    pub(crate) fn take_wake(&mut self) -> Option<OwnedFd> {
        self.wake.take()
    }

    /// The object's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The data capacity in bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    fn word64(&self, off: usize) -> &AtomicU64 {
        // SAFETY: `off` is a constant inside the header, 8-aligned (the mapping is
        // page-aligned); the memory lives as long as `self`.
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    fn word32(&self, off: usize) -> &AtomicU32 {
        // SAFETY: as for `word64`, 4-aligned.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    /// Bytes written so far (stored by the producer).
    pub(crate) fn head(&self) -> &AtomicU64 {
        self.word64(OFF_HEAD)
    }

    /// Bytes read so far (stored by the consumer).
    pub(crate) fn tail(&self) -> &AtomicU64 {
        self.word64(OFF_TAIL)
    }

    /// The consumer's sleep flag: non-zero while it waits (or is about to wait) for its
    /// wake-up FIFO.
    pub(crate) fn reader_sleep(&self) -> &AtomicU32 {
        self.word32(OFF_READER_SLEEP)
    }

    /// The producer's futex word: non-zero while it is (about to be) parked on a full ring.
    pub(crate) fn writer_sleep(&self) -> &AtomicU32 {
        self.word32(OFF_WRITER_SLEEP)
    }

    /// Set by the consumer when it stops reading for good.
    pub(crate) fn reader_gone(&self) -> &AtomicU32 {
        self.word32(OFF_READER_GONE)
    }

    /// How many threads of the consumer's process poll the ring, so that bytes published
    /// now are taken without a wake-up.
    pub(crate) fn threads_polling(&self) -> &AtomicU32 {
        self.word32(OFF_THREADS_POLLING)
    }

    /// How many threads of the consumer's process sleep on [`Ring::doorbell`].
    pub(crate) fn threads_asleep(&self) -> &AtomicU32 {
        self.word32(OFF_THREADS_ASLEEP)
    }

    /// A futex the consumer's idle threads wait on; the producer changes it and wakes one
    /// after publishing bytes while [`Ring::threads_asleep`] is non-zero.
    pub(crate) fn doorbell(&self) -> &AtomicU32 {
        self.word32(OFF_DOORBELL)
    }

    /// Copies `src` into the ring at position `pos` (wrapping). The caller (the producer)
    /// has checked that `[pos, pos + src.len())` is free.
    pub(crate) fn copy_in(&self, pos: u64, src: &[u8]) {
        debug_assert!(src.len() as u64 <= self.capacity);
        let at = (pos & (self.capacity - 1)) as usize;
        let first = src.len().min(self.capacity as usize - at);
        // SAFETY: `at + first <= capacity` and `src.len() - first <= capacity`; both
        // ranges lie in the data area, which the SPSC protocol gives to the producer.
        unsafe {
            let data = self.base.add(HEADER);
            std::ptr::copy_nonoverlapping(src.as_ptr(), data.add(at), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
        }
    }

    /// The readable bytes at position `pos` up to the end of the data area, at most
    /// `avail` (the caller, the consumer, checked `avail <= capacity`).
    ///
    /// The region belongs to the consumer until it moves `tail` past it; a peer that
    /// writes into it anyway only garbles its own frames, which the decoder checks.
    pub(crate) fn readable_at(&self, pos: u64, avail: u64) -> &[u8] {
        let at = (pos & (self.capacity - 1)) as usize;
        let len = (avail.min(self.capacity) as usize).min(self.capacity as usize - at);
        // SAFETY: `at + len <= capacity`, inside the data area.
        unsafe { std::slice::from_raw_parts(self.base.add(HEADER + at), len) }
    }
}

/// Sleep-word helpers on words of a shared mapping; futexes (never `FUTEX_PRIVATE`: the other side is
/// another process).
pub(crate) mod futex {
    use rustix::thread::futex;
    use std::sync::atomic::{fence, AtomicU32, Ordering};
    use std::time::Duration;

    /// Parks on the futex `word` while it holds 1, for at most `timeout`.
    pub(crate) fn wait(word: &AtomicU32, timeout: Duration) {
        let ts = futex::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let _ = futex::wait(word, futex::Flags::empty(), 1, Some(&ts));
    }

    /// Announces that this side is about to wait on `word`'s account (the caller then
    /// re-checks its condition before waiting).
    pub(crate) fn prepare(word: &AtomicU32) {
        word.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Wakes one thread waiting on `word` (in any process that maps it).
    pub(crate) fn wake_one(word: &AtomicU32) {
        let _ = futex::wake(word, futex::Flags::empty(), 1);
    }

    /// Wakes the side parked on `word`, if it is: call after publishing what it waits for.
    pub(crate) fn wake(word: &AtomicU32) {
        fence(Ordering::SeqCst);
        if word.load(Ordering::Relaxed) != 0 {
            word.store(0, Ordering::SeqCst);
            let _ = futex::wake(word, futex::Flags::empty(), u32::MAX >> 1);
        }
    }
}
