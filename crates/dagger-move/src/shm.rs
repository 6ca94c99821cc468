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
use dagger_core::LinkCost;
use dagger_core::ProcId;
use dagger_proc::{EdgeKind, Topology};
use memmap2::{Mmap, MmapMut, MmapOptions};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write as _};
use std::ops::{Deref, DerefMut};
use std::os::fd::FromRawFd;
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

fn os_name(name: &str) -> Result<CString, MoveError> {
    validate_name(name)?;
    // A valid name holds no NUL, so this cannot fail; map it to the name error anyway.
    CString::new(format!("/{name}")).map_err(|_| MoveError::ShmName {
        name: name.to_string(),
        reason: "holds a NUL byte",
    })
}

fn shm_err(name: &str, source: io::Error) -> MoveError {
    MoveError::Shm {
        name: name.to_string(),
        source,
    }
}

fn unlink_os(name: &str) -> Result<(), MoveError> {
    let c = os_name(name)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::shm_unlink(c.as_ptr()) };
    if rc != 0 {
        return Err(shm_err(name, io::Error::last_os_error()));
    }
    Ok(())
}

fn open_os(name: &str, flags: libc::c_int) -> Result<File, MoveError> {
    let c = os_name(name)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::shm_open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600 as libc::mode_t) };
    if fd < 0 {
        return Err(shm_err(name, io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by a successful `shm_open` and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
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
        match open_os(&name, libc::O_CREAT | libc::O_EXCL | libc::O_RDWR) {
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
/// Costs four system calls; the bytes are not copied, pages are mapped as they are read.
pub fn read(name: &str, len: u64) -> Result<ShmView, MoveError> {
    let file = open_os(name, libc::O_RDONLY)?;
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
            Ok(l) => unsafe { MmapOptions::new().len(l).map(&file) }
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
