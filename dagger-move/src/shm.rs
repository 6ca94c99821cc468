//! The same-host shared-memory shortcut: a worker writes a value's bytes into a POSIX
//! shared-memory object once, sends its name and length to a worker of the same host, and
//! that worker maps the object read-only instead of receiving the bytes over the network.
//!
//! Objects are named `dagger-` followed by lower-case letters, digits and `-` (at most
//! [`MAX_NAME_LEN`] bytes); a name or length that arrives from the network is checked
//! against that pattern and against the object's real size before anything is mapped.
//! The reader unlinks the object right after mapping it, so a crash after that leaks
//! nothing; objects written but never read are removed by [`cleanup_prefix`].
//!
//! Not guaranteed: protection against another process of the same user that opens, resizes
//! or rewrites an object between write and read (the objects are created with mode 0600).

use crate::MoveError;
use dagger_core::topology::{EdgeKind, Topology};
use dagger_core::LinkCost;
use dagger_core::ProcId;
use memmap2::{Mmap, MmapMut, MmapOptions};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Write as _};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

/// The name of the shortcut edge [`add_same_host_shortcuts`] adds.
pub const SHORTCUT: &str = "shm";

/// The prefix every object name starts with.
pub const NAME_PREFIX: &str = "dagger-";

/// The longest accepted object name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// The cost model of the shared-memory shortcut between two processes of one host: one
/// `write` into a fresh object, then a read-only mapping of it on the other side, read in
/// full and dropped. Measured with `cargo bench -p dagger-move --bench shm` on a 2-core
/// cloud VM whose memcpy runs at 10–25 GB/s: about 1.6 GB/s for 8 MiB objects on a quiet
/// machine (the kernel's allocation of the fresh object's pages and their release after
/// the read dominate; the copy itself is a small part) and about 21–25 µs for a 64-byte
/// object (create, write, open, size, map, unlink). Rounded to 1.5 GB/s and 25 µs.
pub fn default_cost() -> LinkCost {
    LinkCost::new(25_000, 1_500_000_000)
}

/// Adds a [`SHORTCUT`] edge, with [`default_cost`], between the roots of every pair of
/// workers whose [`WorkerInfo::host`](dagger_core::WorkerInfo::host) is the same non-empty
/// string, unless that pair already has one. Idempotent; costs O(workers²).
pub fn add_same_host_shortcuts(topo: &mut Topology) {
    let roots: Vec<(ProcId, String)> = topo
        .workers()
        .filter(|w| !w.host.is_empty() && topo.proc(ProcId::root(w.worker)).is_some())
        .map(|w| (ProcId::root(w.worker), w.host.clone()))
        .collect();
    let kind = EdgeKind::Shortcut(SHORTCUT.to_string());
    for (i, (a, host_a)) in roots.iter().enumerate() {
        for (b, host_b) in &roots[i + 1..] {
            if host_a != host_b {
                continue;
            }
            let present = topo.edges(*a).iter().any(|e| e.to == *b && e.kind == kind);
            if !present {
                topo.add_shortcut(*a, *b, SHORTCUT, default_cost());
            }
        }
    }
}

/// Checks that `name` is an acceptable object name: `dagger-` then at least one of
/// `[0-9a-z-]`, at most [`MAX_NAME_LEN`] bytes (so never a `/`, a `.` or a NUL).
pub fn validate_name(name: &str) -> Result<(), MoveError> {
    let bad = |reason| {
        Err(MoveError::ShmName {
            name: name.chars().take(MAX_NAME_LEN + 8).collect(),
            reason,
        })
    };
    if name.len() > MAX_NAME_LEN {
        return bad("longer than the limit");
    }
    let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
        return bad("does not start with `dagger-`");
    };
    if rest.is_empty() {
        return bad("nothing after `dagger-`");
    }
    if !rest
        .bytes()
        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase() || c == b'-')
    {
        return bad("holds a character other than 0-9, a-z and `-`");
    }
    Ok(())
}

fn shm_err(name: &str, source: io::Error) -> MoveError {
    MoveError::Shm {
        name: name.to_string(),
        source,
    }
}

/// How an object is opened: the flags of `shm_open` (close-on-exec is always added).
#[derive(Clone, Copy)]
enum Access {
    /// A new object, read-write; fails if the name is taken (`O_CREAT | O_EXCL | O_RDWR`).
    CreateNew,
    /// An existing object, read-only.
    ReadOnly,
}

fn unlink_os(name: &str) -> Result<(), MoveError> {
    validate_name(name)?;
    rustix::shm::unlink(format!("/{name}").as_str()).map_err(|e| shm_err(name, e.into()))
}

fn open_os(name: &str, access: Access) -> Result<File, MoveError> {
    validate_name(name)?;
    let flags = match access {
        Access::CreateNew => {
            rustix::shm::OFlags::CREATE | rustix::shm::OFlags::EXCL | rustix::shm::OFlags::RDWR
        }
        Access::ReadOnly => rustix::shm::OFlags::RDONLY,
    };
    // Owner-only: read and write for the creating user (0600), nothing for anyone else.
    let mode = rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR;
    let fd = rustix::shm::open(format!("/{name}").as_str(), flags, mode)
        .map_err(|e| shm_err(name, e.into()))?;
    Ok(File::from(fd))
}

/// Allocates the pages of a new object of `len` bytes, so that a full `/dev/shm` is a
/// typed error here (`ENOSPC`) rather than a `SIGBUS` when the mapping is first written.
fn reserve(file: &File, name: &str, len: u64) -> Result<(), MoveError> {
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len)
        .map_err(|e| shm_err(name, e.into()))
}

/// A written object: what the reader needs to map it. Plain data, sent over the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShmObject {
    /// The object's name (without the leading `/`).
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
}

impl ShmObject {
    /// Removes an object that will not be read (its message was not sent, its reader is
    /// gone). Not needed after [`read`], which unlinks the object itself.
    pub fn unlink(&self) -> Result<(), MoveError> {
        unlink_os(&self.name)
    }
}

/// A new object of a fixed length, mapped writable, for serializing a value straight into
/// shared memory. [`finish`](Self::finish) hands it over; dropping it unfinished removes
/// the object.
pub struct ShmWriter {
    name: String,
    len: u64,
    map: Option<MmapMut>,
    finished: bool,
}

static NEXT_OBJECT: AtomicU64 = AtomicU64::new(0);

/// Creates a new, empty object named `<name_prefix>-<pid>-<seq>-<nonce>` with `O_EXCL`
/// (retrying with the next sequence number if a stale object holds the name).
fn create_unique(name_prefix: &str) -> Result<(String, File), MoveError> {
    validate_name(name_prefix)?;
    let pid = std::process::id();
    let mut attempt = 0;
    loop {
        let seq = NEXT_OBJECT.fetch_add(1, Ordering::Relaxed);
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("{name_prefix}-{pid:x}-{seq:x}-{nonce:x}");
        match open_os(&name, Access::CreateNew) {
            Ok(f) => return Ok((name, f)),
            Err(MoveError::Shm { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists && attempt < 8 =>
            {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

impl ShmWriter {
    /// Creates an object of exactly `len` bytes named `<name_prefix>-<pid>-<seq>-<nonce>`
    /// and maps it with its pages populated up front (one `mmap` fault pass instead of one
    /// fault per page). `name_prefix` must itself be a valid name (see [`validate_name`]),
    /// e.g. `dagger-<cluster id>`. Costs four system calls plus the allocation of the
    /// object's pages.
    pub fn create(name_prefix: &str, len: u64) -> Result<Self, MoveError> {
        let (name, file) = create_unique(name_prefix)?;
        let map = (|| {
            file.set_len(len).map_err(|e| shm_err(&name, e))?;
            if len == 0 {
                return Ok(None);
            }
            reserve(&file, &name, len)?;
            let map_len = usize::try_from(len).map_err(|_| {
                shm_err(
                    &name,
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "length exceeds the address space",
                    ),
                )
            })?;
            // SAFETY: the object was created just now with O_EXCL and mode 0600 and is
            // sized to `len`; nothing else maps or truncates it while this writer lives.
            let map = unsafe { MmapOptions::new().len(map_len).populate().map_mut(&file) }
                .map_err(|e| shm_err(&name, e))?;
            Ok(Some(map))
        })();
        match map {
            Ok(map) => Ok(Self {
                name,
                len,
                map,
                finished: false,
            }),
            Err(e) => {
                let _ = unlink_os(&name);
                Err(e)
            }
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Unmaps the object and returns its description for the reader.
    pub fn finish(mut self) -> ShmObject {
        self.finished = true;
        self.map = None;
        ShmObject {
            name: std::mem::take(&mut self.name),
            len: self.len,
        }
    }
}

impl Deref for ShmWriter {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

impl DerefMut for ShmWriter {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.map.as_deref_mut().unwrap_or(&mut [])
    }
}

impl Drop for ShmWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.map = None;
            let _ = unlink_os(&self.name);
        }
    }
}

impl std::fmt::Debug for ShmWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmWriter")
            .field("name", &self.name)
            .field("len", &self.len)
            .finish()
    }
}

/// Writes `bytes` into a new object (named as [`ShmWriter::create`] does; the prefix
/// follows the same rules) and returns its description. The bytes are copied once, by the
/// kernel, with a `write` into the object: on Linux tmpfs this is about twice as fast as
/// copying into a fresh mapping, whose page faults zero every page before the copy.
pub fn write(name_prefix: &str, bytes: &[u8]) -> Result<ShmObject, MoveError> {
    let (name, mut file) = create_unique(name_prefix)?;
    match file.write_all(bytes) {
        Ok(()) => Ok(ShmObject {
            name,
            len: bytes.len() as u64,
        }),
        Err(e) => {
            let _ = unlink_os(&name);
            Err(shm_err(&name, e))
        }
    }
}

/// A read-only mapping of an object; its bytes through [`Deref`]. Unmapped on drop; the
/// object itself is already unlinked.
pub struct ShmView {
    name: String,
    map: Option<Mmap>,
}

impl ShmView {
    /// The object's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Deref for ShmView {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

impl AsRef<[u8]> for ShmView {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for ShmView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmView")
            .field("name", &self.name)
            .field("len", &self.len())
            .finish()
    }
}

/// Maps the object `name` read-only after checking the name's pattern
/// ([`MoveError::ShmName`]) and that its real size is `len` ([`MoveError::ShmLen`]; the
/// object is then left in place), then unlinks it. A missing object is
/// [`MoveError::Shm`]. Safe to call with any name and length received from the network.
/// Costs four system calls; the bytes are not copied, and the pages are mapped up front
/// (one pass instead of a fault per few pages).
pub fn read(name: &str, len: u64) -> Result<ShmView, MoveError> {
    let file = open_os(name, Access::ReadOnly)?;
    let actual = file.metadata().map_err(|e| shm_err(name, e))?.len();
    if actual != len {
        return Err(MoveError::ShmLen {
            name: name.to_string(),
            expected: len,
            actual,
        });
    }
    let map = if len == 0 {
        Ok(None)
    } else {
        match usize::try_from(len) {
            // SAFETY: the object's size was checked to be `len` above; its writer unmapped
            // it before handing over its name, and it is unlinked below so no other process
            // can open it afterwards.
            Ok(l) => unsafe { MmapOptions::new().len(l).populate().map(&file) }
                .map(Some)
                .map_err(|e| shm_err(name, e)),
            Err(_) => Err(shm_err(
                name,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "length exceeds the address space",
                ),
            )),
        }
    };
    let unlinked = unlink_os(name);
    let map = map?;
    unlinked?;
    Ok(ShmView {
        name: name.to_string(),
        map,
    })
}

/// Removes every object whose name starts with `<prefix>-` (the leftovers of a cluster:
/// objects written whose readers never came). Call at shutdown, with the prefix given to
/// [`write()`]. Returns how many were removed; a prefix that is not a valid name removes
/// nothing. Lists `/dev/shm`, so it finds nothing on systems without it.
pub fn cleanup_prefix(prefix: &str) -> usize {
    if validate_name(prefix).is_err() {
        return 0;
    }
    let Ok(dir) = std::fs::read_dir("/dev/shm") else {
        return 0;
    };
    let start = format!("{prefix}-");
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&start))
        .filter(|n| unlink_os(n).is_ok())
        .count()
}

/// How many bytes of reusable segments one [`SegmentPool`] keeps by default, over all
/// its readers.
pub const DEFAULT_POOL_BYTES: u64 = 256 << 20;

/// Segments are sized in multiples of this many bytes, so one of them fits chunks of
/// slightly different lengths.
const SEGMENT_GRANULE: u64 = 1 << 20;

/// Segments for stored chunks are sized in multiples of this many bytes (a chunk is
/// written once and kept, so less is wasted on rounding).
const STORED_GRANULE: u64 = 64 << 10;

/// Counts of what a [`SegmentPool`] did ([`SegmentPool::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Segments created.
    pub created: u64,
    /// Writers that waited for an in-flight segment and got one.
    pub waited: u64,
    /// Writers that waited for an in-flight segment until their limit, then created one
    /// (or found the pool full).
    pub waited_in_vain: u64,
}

/// One reusable segment of a [`SegmentPool`]: a named object of a fixed size, mapped
/// writable by its writer, lent to one reader at a time.
struct Segment {
    name: String,
    /// The reader this segment belongs to (once a reader has mapped it, and so unlinked
    /// its name, no other reader can open it); `None` until one has been lent it.
    owner: Option<u64>,
    size: u64,
    map: std::sync::Arc<memmap2::MmapRaw>,
    /// Lent to its owner, who may be reading it.
    busy: bool,
    /// Holds a chunk of the writer's own ([`StoredSegment`]), kept until that is dropped.
    stored: bool,
}

impl Segment {
    /// Free to be written again: neither lent nor holding a stored chunk.
    fn idle(&self) -> bool {
        !self.busy && !self.stored
    }
}

/// A pool's segments, shared with the stored chunks written into them.
struct Shared {
    segs: parking_lot::Mutex<Vec<Segment>>,
    /// Notified whenever a segment may have become idle: a loan handed back, a stored
    /// chunk dropped, an owner forgotten.
    freed: parking_lot::Condvar,
    /// What creating a segment has cost here, in nanoseconds per MiB (a moving average of
    /// the pool's creations; 0 before the first).
    create_ns_per_mib: AtomicU64,
    /// How many times [`freed`](Self::freed) was notified.
    frees: AtomicU64,
    /// [`frees`](Self::frees) when a writer last waited in vain; while nothing has been
    /// freed since, writers create at once instead of waiting again.
    stalled_at: AtomicU64,
    /// The longest a writer waits for a segment to come back, in nanoseconds;
    /// `u64::MAX`: as long as creating one is expected to take ([`SegmentPool::set_return_wait`]).
    return_wait_ns: AtomicU64,
    /// Segments created, writers that found a segment after waiting, and writers that
    /// waited in vain.
    created: AtomicU64,
    waited: AtomicU64,
    waited_in_vain: AtomicU64,
}

impl Shared {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Vec<Segment>> {
        self.segs.lock()
    }

    /// A segment may have become idle: wakes the writers waiting for one.
    fn notify_freed(&self) {
        self.frees.fetch_add(1, Ordering::Relaxed);
        self.freed.notify_all();
    }

    /// The longest a writer of a segment of `size` bytes waits for one to come back: as
    /// set, else as long as creating one is expected to take from the pool's own creations
    /// so far (zero before the first), at most [`MAX_RETURN_WAIT`].
    fn return_wait(&self, size: u64) -> std::time::Duration {
        let set = self.return_wait_ns.load(Ordering::Relaxed);
        if set != u64::MAX {
            return std::time::Duration::from_nanos(set);
        }
        let per_mib = self.create_ns_per_mib.load(Ordering::Relaxed);
        std::time::Duration::from_nanos(per_mib.saturating_mul(size.div_ceil(1 << 20)))
            .min(MAX_RETURN_WAIT)
    }

    /// Folds one creation's cost into the moving average.
    fn record_create(&self, size: u64, took: std::time::Duration) {
        let mib = size.div_ceil(1 << 20).max(1);
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX) / mib;
        let old = self.create_ns_per_mib.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old.saturating_mul(3) / 4).saturating_add(sample / 4)
        };
        self.create_ns_per_mib.store(new, Ordering::Relaxed);
    }
}

/// The longest a writer waits for a segment to come back instead of creating one, unless
/// set otherwise ([`SegmentPool::set_return_wait`]), whatever creations have cost.
pub const MAX_RETURN_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

impl Default for Shared {
    fn default() -> Self {
        Self {
            segs: Default::default(),
            freed: Default::default(),
            create_ns_per_mib: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            stalled_at: AtomicU64::new(u64::MAX),
            return_wait_ns: AtomicU64::new(u64::MAX),
            created: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            waited_in_vain: AtomicU64::new(0),
        }
    }
}

type Segments = std::sync::Arc<Shared>;

/// What a writer sends so the reader can map a segment: the object's name, its size and
/// how many of its first bytes hold the chunk. Plain data, sent over the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SegmentRef {
    /// The object's name (without the leading `/`).
    pub name: String,
    /// The object's size in bytes.
    pub size: u64,
    /// How many of its first bytes are the chunk.
    pub len: u64,
}

/// A writer's pool of reusable shared-memory segments, each lent to one reader (`owner`,
/// an opaque key such as a worker id) at a time.
///
/// A segment's pages are allocated once, when it is created; afterwards a chunk moves with
/// one plain memory copy into the writer's mapping, and the reader, which keeps its own
/// mapping of the segment in a [`SegmentCache`], reads it in place without a page fault.
/// The reader hands a segment back (its [`SegmentView`] dropped, the writer told with
/// [`release`](Self::release)) before the writer writes into it again.
///
/// Leaks: a segment's name exists only from its creation until its reader first maps it
/// (the reader unlinks it then); afterwards its memory lives exactly as long as one of the
/// two processes maps it, and the kernel frees it when both have exited, crashed included.
/// A segment written but never mapped keeps its name (under the pool's prefix) until the
/// pool drops it ([`drop_owner`](Self::drop_owner) or drop), or [`cleanup_prefix`] runs.
/// At most the pool's byte limit stays allocated per writer, shared with its readers,
/// while both processes live.
///
/// Creating a segment costs far more than reusing one (every page is allocated, zeroed
/// and mapped on both sides), so a writer of a stored chunk that finds every fitting
/// segment in flight waits a bounded time for one to come back before it creates another
/// ([`set_return_wait`](Self::set_return_wait)): a producer that runs ahead of its reader
/// cycles through a few segments instead of growing the pool to its limit.
pub struct SegmentPool {
    prefix: String,
    max_bytes: u64,
    inner: Segments,
}

impl SegmentPool {
    /// A pool whose segments are named like [`write()`]'s objects (`name_prefix` follows the
    /// same rules) and hold at most `max_bytes` in all. Creates nothing yet.
    pub fn new(name_prefix: &str, max_bytes: u64) -> Result<Self, MoveError> {
        validate_name(name_prefix)?;
        Ok(Self {
            prefix: name_prefix.to_string(),
            max_bytes,
            inner: Segments::default(),
        })
    }

    /// Copies `bytes` into a free segment of `owner` (the smallest that fits), creating one
    /// if none fits and the limit allows, and marks it lent. `Ok(None)`: the pool is full
    /// (use [`write()`] instead). Costs one memory copy when a segment is reused, plus the
    /// segment's creation (five system calls and its pages) otherwise.
    pub fn write(&self, owner: u64, bytes: &[u8]) -> Result<Option<SegmentRef>, MoveError> {
        let len = bytes.len() as u64;
        if len == 0 {
            return Ok(None);
        }
        let size = len.div_ceil(SEGMENT_GRANULE) * SEGMENT_GRANULE;
        let Some((name, size, map)) = self.take(
            size,
            false,
            |s| (s.owner == Some(owner) || s.owner.is_none()) && s.size >= len,
            |s| {
                s.owner = Some(owner);
                s.busy = true;
            },
        )?
        else {
            return Ok(None);
        };
        // SAFETY: the segment is marked busy, so no other writer copies into it, and its
        // reader does not read it until it receives the reference returned below; the
        // mapping is `size >= len` bytes long and stays mapped while `map` lives.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), map.as_mut_ptr(), bytes.len()) };
        Ok(Some(SegmentRef { name, size, len }))
    }

    /// Marks an idle segment that `fits` (the smallest) with `claim`, or creates one of
    /// `new_size` bytes and claims it if the byte limit allows. `Ok(None)`: the pool is
    /// full.
    ///
    /// With `wait`, when no idle segment fits but some that fit are in use (lent to a
    /// reader, or holding a stored chunk, which in a producer-consumer flow is lent and
    /// released soon after), the caller first waits for one to come back, at most as long
    /// as creating a segment has taken here (and at most [`MAX_RETURN_WAIT`]). Creating a
    /// segment allocates and maps every page of it (about a millisecond per MiB on a
    /// virtual machine), so waiting that long costs at worst twice what creating at once
    /// would have; when a segment comes back first, the pool stays as small as the traffic
    /// through it needs, and its pages stay in the processor's cache. After a wait in
    /// vain, writers create at once until a segment is freed again: chunks that stay
    /// stored for long cost one such wait, not one per writer.
    #[allow(clippy::type_complexity)]
    fn take(
        &self,
        new_size: u64,
        wait: bool,
        fits: impl Fn(&Segment) -> bool,
        claim: impl Fn(&mut Segment),
    ) -> Result<Option<(String, u64, std::sync::Arc<memmap2::MmapRaw>)>, MoveError> {
        let room = |segs: &[Segment]| {
            let held: u64 = segs.iter().map(|s| s.size).sum();
            held + new_size <= self.max_bytes
        };
        let mut deadline = None;
        loop {
            let mut segs = self.inner.lock();
            let best = segs
                .iter_mut()
                .filter(|s| s.idle() && fits(s))
                .min_by_key(|s| s.size);
            if let Some(s) = best {
                claim(s);
                if deadline.is_some() {
                    self.inner.waited.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(Some((s.name.clone(), s.size, s.map.clone())));
            }
            let frees = self.inner.frees.load(Ordering::Relaxed);
            if wait
                && self.inner.stalled_at.load(Ordering::Relaxed) != frees
                && segs.iter().any(|s| !s.idle() && fits(s))
            {
                let budget = self.inner.return_wait(new_size);
                // A limit of zero (none measured yet, or set so) never waits.
                if deadline.is_some() || !budget.is_zero() {
                    let until = *deadline.get_or_insert_with(|| std::time::Instant::now() + budget);
                    if std::time::Instant::now() < until {
                        self.inner.freed.wait_until(&mut segs, until);
                        continue;
                    }
                    self.inner.stalled_at.store(frees, Ordering::Relaxed);
                    self.inner.waited_in_vain.fetch_add(1, Ordering::Relaxed);
                }
            }
            if !room(&segs) {
                return Ok(None);
            }
            break;
        }
        let started = std::time::Instant::now();
        let (name, map) = self.create_segment(new_size)?;
        self.inner.record_create(new_size, started.elapsed());
        self.inner.created.fetch_add(1, Ordering::Relaxed);
        let mut segs = self.inner.lock();
        if !room(&segs) {
            drop(segs);
            let _ = unlink_os(&name);
            return Ok(None);
        }
        let mut seg = Segment {
            name: name.clone(),
            owner: None,
            size: new_size,
            map: map.clone(),
            busy: false,
            stored: false,
        };
        claim(&mut seg);
        segs.push(seg);
        Ok(Some((name, new_size, map)))
    }

    /// A segment of at least `len` bytes for a chunk of this writer's own, to encode the
    /// chunk straight into: an idle one of any reader (the smallest that fits), else a new
    /// one if the byte limit allows. `Ok(None)`: the pool is full (keep the chunk in
    /// ordinary memory). Write the chunk through the returned writer, then
    /// [`finish`](SegmentWriter::finish) it; [`lend_stored`](Self::lend_stored) then lends
    /// it to a reader without a copy. The segment is idle again once the stored chunk (and
    /// any loan of it) is gone.
    pub fn alloc_stored(&self, len: usize) -> Result<Option<SegmentWriter>, MoveError> {
        if len == 0 {
            return Ok(None);
        }
        let size = (len as u64).div_ceil(STORED_GRANULE) * STORED_GRANULE;
        let Some((name, _, map)) =
            self.take(size, true, |s| s.size >= len as u64, |s| s.stored = true)?
        else {
            return Ok(None);
        };
        Ok(Some(SegmentWriter {
            stored: StoredSegment {
                name,
                map,
                len,
                segments: self.inner.clone(),
            },
        }))
    }

    /// Lends the segment of a stored chunk to reader `owner` without copying it, if that
    /// segment is this pool's, is not lent now, and `owner` may map it (no other reader has
    /// mapped it before). `None`: copy the chunk with [`write`](Self::write) instead. The
    /// reader hands it back as after `write` ([`release`](Self::release)).
    pub fn lend_stored(&self, owner: u64, chunk: &StoredSegment) -> Option<SegmentRef> {
        if !std::sync::Arc::ptr_eq(&self.inner, &chunk.segments) {
            return None;
        }
        let mut segs = self.inner.lock();
        let s = segs.iter_mut().find(|s| s.stored && s.name == chunk.name)?;
        if s.busy || s.owner.is_some_and(|o| o != owner) {
            return None;
        }
        s.owner = Some(owner);
        s.busy = true;
        Some(SegmentRef {
            name: s.name.clone(),
            size: s.size,
            len: chunk.len as u64,
        })
    }

    fn create_segment(
        &self,
        size: u64,
    ) -> Result<(String, std::sync::Arc<memmap2::MmapRaw>), MoveError> {
        let (name, file) = create_unique(&self.prefix)?;
        let map = (|| {
            file.set_len(size).map_err(|e| shm_err(&name, e))?;
            reserve(&file, &name, size)?;
            let map_len = usize::try_from(size).map_err(|_| {
                shm_err(
                    &name,
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "length exceeds the address space",
                    ),
                )
            })?;
            MmapOptions::new()
                .len(map_len)
                .populate()
                .map_raw(&file)
                .map_err(|e| shm_err(&name, e))
        })();
        match map {
            Ok(m) => Ok((name, std::sync::Arc::new(m))),
            Err(e) => {
                let _ = unlink_os(&name);
                Err(e)
            }
        }
    }

    /// The reader `owner` is done with segment `name`: it may be written again. Returns
    /// whether such a lent segment existed (a name from the network that matches nothing,
    /// or another owner's segment, changes nothing).
    pub fn release(&self, owner: u64, name: &str) -> bool {
        let mut segs = self.inner.lock();
        match segs
            .iter_mut()
            .find(|s| s.busy && s.owner == Some(owner) && s.name == name)
        {
            Some(s) => {
                s.busy = false;
                self.inner.notify_freed();
                true
            }
            None => false,
        }
    }

    /// Forgets every segment of `owner` (a reader that is gone), lent or not: unmaps them
    /// here and removes any name still present. Returns how many were dropped.
    pub fn drop_owner(&self, owner: u64) -> usize {
        let gone: Vec<Segment> = {
            let mut segs = self.inner.lock();
            let (gone, keep) = std::mem::take(&mut *segs)
                .into_iter()
                .partition(|s| s.owner == Some(owner));
            *segs = keep;
            gone
        };
        self.inner.notify_freed();
        for s in &gone {
            let _ = unlink_os(&s.name);
        }
        gone.len()
    }

    /// Sets the longest a writer of a stored chunk ([`alloc_stored`](Self::alloc_stored))
    /// waits for an in-flight segment to come back before it creates one: `None` (the
    /// default) for as long as creating a segment has taken in this pool, at most
    /// [`MAX_RETURN_WAIT`]; `Some(Duration::ZERO)` never waits.
    pub fn set_return_wait(&self, limit: Option<std::time::Duration>) {
        let ns = limit.map_or(u64::MAX, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
        });
        self.inner.return_wait_ns.store(ns, Ordering::Relaxed);
    }

    /// What the pool has done so far.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            created: self.inner.created.load(Ordering::Relaxed),
            waited: self.inner.waited.load(Ordering::Relaxed),
            waited_in_vain: self.inner.waited_in_vain.load(Ordering::Relaxed),
        }
    }

    /// The owners that have segments, each once.
    pub fn owners(&self) -> Vec<u64> {
        let mut o: Vec<u64> = self.inner.lock().iter().filter_map(|s| s.owner).collect();
        o.sort_unstable();
        o.dedup();
        o
    }

    /// Bytes of segments held, and of those lent out now (stored chunks' segments count
    /// as held, and as lent while lent).
    pub fn held_bytes(&self) -> (u64, u64) {
        let segs = self.inner.lock();
        let held = segs.iter().map(|s| s.size).sum();
        let lent = segs.iter().filter(|s| s.busy).map(|s| s.size).sum();
        (held, lent)
    }
}

impl Drop for SegmentPool {
    fn drop(&mut self) {
        for s in self.inner.lock().iter() {
            let _ = unlink_os(&s.name);
        }
    }
}

impl std::fmt::Debug for SegmentPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (held, lent) = self.held_bytes();
        f.debug_struct("SegmentPool")
            .field("prefix", &self.prefix)
            .field("max_bytes", &self.max_bytes)
            .field("held", &held)
            .field("lent", &lent)
            .finish()
    }
}

/// A segment being filled with a chunk of the writer's own ([`SegmentPool::alloc_stored`]):
/// its first `len` bytes, writable. Dropping it unfinished gives the segment back.
pub struct SegmentWriter {
    stored: StoredSegment,
}

impl SegmentWriter {
    /// The chunk is written: from now on it is only read.
    pub fn finish(self) -> StoredSegment {
        self.stored
    }
}

impl Deref for SegmentWriter {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.stored
    }
}

impl DerefMut for SegmentWriter {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: the segment is marked stored, so the pool hands it to no other writer,
        // and it is lent to no reader before `finish`; the mapping is at least `len` bytes
        // long and lives as long as `map`. `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.stored.map.as_mut_ptr(), self.stored.len) }
    }
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("name", &self.stored.name)
            .field("len", &self.stored.len)
            .finish()
    }
}

/// A chunk of the writer's own kept in a segment of its pool: its bytes through [`Deref`].
/// [`SegmentPool::lend_stored`] lends it to a reader of the same host without a copy.
/// Dropping it makes the segment idle once no reader holds it.
pub struct StoredSegment {
    name: String,
    map: std::sync::Arc<memmap2::MmapRaw>,
    len: usize,
    segments: Segments,
}

impl StoredSegment {
    /// The segment's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Deref for StoredSegment {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the mapping is at least `len` bytes long and lives as long as `map`;
        // nothing writes into the segment while it is stored but its `SegmentWriter`,
        // which holds the only `StoredSegment` and borrows it mutably meanwhile.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for StoredSegment {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for StoredSegment {
    fn drop(&mut self) {
        let mut segs = self.segments.lock();
        if let Some(s) = segs.iter_mut().find(|s| s.stored && s.name == self.name) {
            s.stored = false;
            self.segments.notify_freed();
        }
    }
}

impl std::fmt::Debug for StoredSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSegment")
            .field("name", &self.name)
            .field("len", &self.len)
            .finish()
    }
}

/// A reader's mappings of the segments its writers lend it, by name. The first chunk in a
/// segment maps it (pages populated up front) and unlinks its name; later chunks in the same
/// segment reuse the mapping. Mappings stay until [`forget`](Self::forget) or drop.
#[derive(Default)]
pub struct SegmentCache {
    maps: parking_lot::Mutex<std::collections::HashMap<String, std::sync::Arc<Mmap>>>,
}

impl SegmentCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// A view of the first `r.len` bytes of segment `r.name`, mapping (and unlinking) it
    /// first if this cache has not seen it. Checks the name's pattern
    /// ([`MoveError::ShmName`]), `len <= size` and, when mapping, that the object's real
    /// size is `size` ([`MoveError::ShmLen`]); a cached mapping of another size is an
    /// error too. Safe with any reference received from the network. `on_drop` runs once
    /// when the view is dropped (hand the segment back there).
    pub fn view(
        &self,
        r: &SegmentRef,
        on_drop: Box<dyn FnOnce() + Send + Sync>,
    ) -> Result<SegmentView, MoveError> {
        validate_name(&r.name)?;
        let len_err = |actual| MoveError::ShmLen {
            name: r.name.clone(),
            expected: r.size,
            actual,
        };
        if r.len > r.size || r.len == 0 {
            return Err(len_err(r.len));
        }
        let cached = self.maps.lock().get(&r.name).cloned();
        let map = match cached {
            Some(m) => {
                if m.len() as u64 != r.size {
                    return Err(len_err(m.len() as u64));
                }
                m
            }
            None => {
                let file = open_os(&r.name, Access::ReadOnly)?;
                let actual = file.metadata().map_err(|e| shm_err(&r.name, e))?.len();
                if actual != r.size {
                    return Err(len_err(actual));
                }
                let map_len = usize::try_from(r.size).map_err(|_| len_err(actual))?;
                // SAFETY: the object's size was checked above; its writer writes into it
                // only while it is not lent to this reader, and it is unlinked below so no
                // other process can open it afterwards.
                let map = unsafe { MmapOptions::new().len(map_len).populate().map(&file) }
                    .map_err(|e| shm_err(&r.name, e));
                let unlinked = unlink_os(&r.name);
                let map = std::sync::Arc::new(map?);
                unlinked?;
                self.maps.lock().insert(r.name.clone(), map.clone());
                map
            }
        };
        Ok(SegmentView {
            name: r.name.clone(),
            map,
            len: r.len as usize,
            on_drop: Some(on_drop),
        })
    }

    /// Unmaps segment `name` once no view of it remains. Returns whether it was cached.
    pub fn forget(&self, name: &str) -> bool {
        self.maps.lock().remove(name).is_some()
    }

    /// How many segments are mapped.
    pub fn len(&self) -> usize {
        self.maps.lock().len()
    }

    /// Whether no segment is mapped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for SegmentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentCache")
            .field("segments", &self.len())
            .finish()
    }
}

/// A chunk lent in a segment: its bytes through [`Deref`], read in place. Dropping it runs
/// the hook given to [`SegmentCache::view`] (which hands the segment back to its writer).
pub struct SegmentView {
    name: String,
    map: std::sync::Arc<Mmap>,
    len: usize,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl SegmentView {
    /// The segment's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Deref for SegmentView {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

impl AsRef<[u8]> for SegmentView {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for SegmentView {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

impl std::fmt::Debug for SegmentView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentView")
            .field("name", &self.name)
            .field("len", &self.len)
            .finish()
    }
}
