//! Starting worker processes, and recognising that this process is one.
//!
//! A worker is a copy of the driver's own executable (or of a build of the same program on
//! another host) started in one of three ways:
//!
//! - By [`LocalLauncher`], on this host: the environment variables [`ENV_JOIN`],
//!   [`ENV_IDENTITY_FD`] and [`ENV_NAME`], and an inherited pipe. The launcher writes the
//!   worker's [`Identity`] (private key included) into the pipe, never into the environment
//!   or the command line, where every process the worker starts, and
//!   `/proc/<pid>/environ`, would show it. The launcher keeps the pipe's write end open for
//!   as long as its process lives, so the worker sees end-of-file on it when the driver
//!   *process* is gone (see [`DriverLink`]).
//! - By [`SshLauncher`] or [`SlurmLauncher`], through a client process (`ssh`, `srun`) that
//!   forwards its standard input to the worker: the command line
//!   `--dagger-worker --join ADDR --identity-stdin [--name N]`. The launcher writes the
//!   identity as one line into the client's standard input and keeps it open for the
//!   client's life, so end-of-file on the worker's standard input means, as the pipe does
//!   for a local worker, that the driver's process is gone.
//! - By hand or by a batch script ([`ManualLauncher`] prints the command): the command line
//!   `--dagger-worker --join ADDR --cert FILE --key FILE --ca FILE [--name N]`, with the
//!   files a driver writes into its certificate folder.
//!
//! Every launcher implements [`Launcher`], so a driver grows its pool the same way
//! whichever starts the processes.
//!
//! Which arguments a locally launched worker gets is explicit: this process's own
//! arguments by default, or those set with [`LocalLauncher::args`] (for a test of a
//! `cargo test` binary, [`test_harness_args`]). Nothing is inferred from thread names.
//!
//! Every process also has a [`build_id`]: a fingerprint of its executable, which the
//! driver compares at the join so that a worker built from other code is refused unless
//! mixing builds was allowed on purpose ([`ENV_ALLOW_MIXED_BUILDS`] on the worker's side).

mod slurm;
mod ssh;

pub use slurm::SlurmLauncher;
pub use ssh::SshLauncher;

use crate::{Identity, NetError};
use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};

/// Environment variable: the driver address a worker joins.
pub const ENV_JOIN: &str = "DAGGER_WORKER_JOIN";
/// Environment variable: the number of the inherited file descriptor (the read end of a
/// pipe) on which the launcher wrote the worker's identity, as one line of
/// [`Identity::to_text`]. Holds a number only, never key material.
pub const ENV_IDENTITY_FD: &str = "DAGGER_WORKER_IDENTITY_FD";
/// Environment variable: the worker's number among the local workers of its context (the
/// `N` of its name `worker-N`), by which a worker whose thread processors are capped
/// rotates the CPUs it pins (the same variable as `dagger_proc::sys::SLOT_VAR`).
pub const ENV_SLOT: &str = "DAGGER_CPU_SLOT";

/// The number at the end of a worker's name (`worker-3` → 3), if it has one.
fn name_number(name: &str) -> Option<u32> {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    name[name.len() - digits..].parse().ok()
}

/// Environment variable: the worker's name (optional).
pub const ENV_NAME: &str = "DAGGER_WORKER_NAME";
/// Environment variable of a worker process: `1` announces in its hello that the worker
/// may join a driver built from another executable ([`build_id`] differs). The driver's
/// side of the same opt-out is a setting of the driver (in the `dagger` facade,
/// `ContextBuilder::allow_mixed_builds`). Only the task registry is then checked.
pub const ENV_ALLOW_MIXED_BUILDS: &str = "DAGGER_ALLOW_MIXED_BUILDS";

/// The longest identity line accepted from the launcher's pipe.
const MAX_IDENTITY_LINE: usize = 1 << 20;

/// What a worker process needs to join its cluster.
#[derive(Debug)]
pub struct WorkerArgs {
    /// The driver's address.
    pub join: String,
    /// The worker's credentials.
    pub identity: Identity,
    /// A name for logs, if the launcher gave one.
    pub name: Option<String>,
    /// The pipe from the launcher, when a [`LocalLauncher`] started this process, or
    /// standard input with `--identity-stdin`: it reaches end-of-file when the launcher's
    /// process is gone. `None` for a worker started by hand (credentials from files).
    pub driver_link: Option<DriverLink>,
}

/// Tells whether this process was started as a worker, from its environment or its
/// command line. `Ok(None)`: not a worker. `Err`: it was asked to be a worker but the
/// arguments are incomplete or unreadable.
///
/// When [`ENV_JOIN`] is set this *takes* the worker's arguments: it reads the identity
/// from the inherited pipe ([`ENV_IDENTITY_FD`]), marks that descriptor close-on-exec, and
/// removes [`ENV_JOIN`], [`ENV_IDENTITY_FD`] and [`ENV_NAME`] from the environment, so
/// that processes the worker's tasks start neither see them nor mistake themselves for
/// workers. A second call then returns `Ok(None)`. Call it once, at the start of `main`,
/// before other threads read the environment. Costs a few environment lookups and one
/// small pipe read (three file reads for the command-line form).
pub fn worker_args_from_env() -> Result<Option<WorkerArgs>, NetError> {
    if let Some(join) = std::env::var_os(ENV_JOIN) {
        let fd = std::env::var_os(ENV_IDENTITY_FD);
        let name = std::env::var(ENV_NAME).ok().filter(|n| !n.is_empty());
        for var in [ENV_JOIN, ENV_IDENTITY_FD, ENV_NAME] {
            std::env::remove_var(var);
        }
        let join = join.into_string().map_err(|_| NetError::WorkerArgs {
            reason: format!("{ENV_JOIN} is not UTF-8"),
        })?;
        let fd = fd
            .and_then(|v| v.into_string().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .ok_or_else(|| NetError::WorkerArgs {
                reason: format!(
                    "{ENV_JOIN} is set but {ENV_IDENTITY_FD} is missing or not a number"
                ),
            })?;
        let (identity, link) = read_identity_pipe(fd)?;
        return Ok(Some(WorkerArgs {
            join,
            identity,
            name,
            driver_link: Some(link),
        }));
    }
    parse_worker_argv(std::env::args().skip(1))
}

/// Parses the `--dagger-worker` command-line form; `Ok(None)` if the flag is absent.
///
/// Two forms: `--dagger-worker --join ADDR --cert FILE --key FILE --ca FILE [--name N]`
/// (credentials from files, for a worker started by hand), and
/// `--dagger-worker --join ADDR --identity-stdin [--name N]` (for a worker started through
/// a client that forwards standard input, as [`SshLauncher`] and [`SlurmLauncher`] do): the
/// identity is read as one line of [`Identity::to_text`] (at most 1 MiB) from standard
/// input, which is then replaced by `/dev/null` for the rest of the process; the returned
/// [`WorkerArgs::driver_link`] reaches end-of-file when standard input does, which the
/// launcher makes mean "the driver's process is gone". Flags may follow other arguments
/// (a `cargo test` binary gets them after `--`, where libtest takes them for test-name
/// filters that match nothing).
pub fn parse_worker_argv(
    args: impl IntoIterator<Item = String>,
) -> Result<Option<WorkerArgs>, NetError> {
    let args: Vec<String> = args.into_iter().collect();
    if !args.iter().any(|a| a == "--dagger-worker") {
        return Ok(None);
    }
    let value = |flag: &str| -> Result<Option<&str>, NetError> {
        match args.iter().position(|a| a == flag) {
            None => Ok(None),
            Some(i) => {
                args.get(i + 1)
                    .map(|v| Some(v.as_str()))
                    .ok_or_else(|| NetError::WorkerArgs {
                        reason: format!("{flag} needs a value"),
                    })
            }
        }
    };
    let required = |flag: &str| -> Result<&str, NetError> {
        value(flag)?.ok_or_else(|| NetError::WorkerArgs {
            reason: format!("--dagger-worker requires {flag}"),
        })
    };
    let join = required("--join")?.to_owned();
    let name = value("--name")?.map(str::to_owned);
    if args.iter().any(|a| a == "--identity-stdin") {
        if ["--cert", "--key", "--ca"]
            .iter()
            .any(|f| args.iter().any(|a| a == f))
        {
            return Err(NetError::WorkerArgs {
                reason: "--identity-stdin excludes --cert, --key and --ca".into(),
            });
        }
        let (identity, link) = read_identity_stdin()?;
        return Ok(Some(WorkerArgs {
            join,
            identity,
            name,
            driver_link: Some(link),
        }));
    }
    let identity = Identity::from_files(
        Path::new(required("--cert")?),
        Path::new(required("--key")?),
        Path::new(required("--ca")?),
    )?;
    Ok(Some(WorkerArgs {
        join,
        identity,
        name,
        driver_link: None,
    }))
}

/// The command-line arguments that make a `cargo test` (libtest) binary run only the test
/// called `test` (its full path without the crate name, as libtest prints it), one at a
/// time, so that a re-executed copy runs that test's first line, `dagger::init()`, and
/// turns into a worker. An `#[ignore]`d test is run too (`--include-ignored`): a test that
/// is only ever started by another (in a child process with another environment) starts
/// its workers like any other.
pub fn test_harness_args(test: &str) -> Vec<String> {
    vec![
        test.to_owned(),
        "--exact".to_owned(),
        "--include-ignored".to_owned(),
        "--nocapture".to_owned(),
        "--test-threads=1".to_owned(),
        "--quiet".to_owned(),
    ]
}

/// Whether this process's environment allows it to join a driver of another build
/// ([`ENV_ALLOW_MIXED_BUILDS`] is `1`, `true` or `yes`).
pub fn mixed_builds_allowed() -> bool {
    std::env::var(ENV_ALLOW_MIXED_BUILDS)
        .map(|v| matches!(v.trim(), "1" | "true" | "yes"))
        .unwrap_or(false)
}

/// A fingerprint of this process's executable, computed once per process: a hash of its
/// GNU build-id note when the linker wrote one (a few small reads of the ELF headers; the
/// note is itself a hash of the linked file), otherwise a hash of the whole file (one read
/// of the executable). Two processes of one build agree; a rebuilt or patched executable
/// differs. `0` if the executable cannot be read (then every build compares equal to
/// every other unreadable one; the driver treats `0` on either side as unknown).
pub fn build_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let Ok(exe) = std::env::current_exe() else {
            return 0;
        };
        build_id_of(&exe).unwrap_or(0)
    })
}

/// The fingerprint [`build_id`] computes, for the executable at `path`.
pub fn build_id_of(path: &Path) -> std::io::Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    if let Some(note) = elf_build_id(&mut f)? {
        return Ok(fingerprint(b"gnu-build-id", &note));
    }
    let mut all = Vec::new();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))?;
    f.read_to_end(&mut all)?;
    Ok(fingerprint(b"file", &all))
}

/// FNV-1a over 8-byte words (a fingerprint against accidents, not an adversary: the
/// cluster's certificates are what keep strangers out).
fn fingerprint(domain: &[u8], bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in domain {
        h = (h ^ u64::from(*b)).wrapping_mul(PRIME);
    }
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(a)).wrapping_mul(PRIME);
        h ^= h >> 29;
    }
    for b in words.remainder() {
        h = (h ^ u64::from(*b)).wrapping_mul(PRIME);
    }
    (h ^ bytes.len() as u64).wrapping_mul(PRIME)
}

/// The descriptor of a GNU build-id note of a 64-bit little-endian ELF file, if it has one.
fn elf_build_id(f: &mut std::fs::File) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    const PT_NOTE: u32 = 4;
    const NT_GNU_BUILD_ID: u32 = 3;
    let u16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |b: &[u8], i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |b: &[u8], i: usize| {
        b.get(i..i + 8).map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        })
    };
    let mut header = [0u8; 64];
    if f.read_exact(&mut header).is_err() {
        return Ok(None);
    }
    // Magic, 64-bit class, little-endian data.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Ok(None);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (
        u64_at(&header, 0x20),
        u16_at(&header, 0x36),
        u16_at(&header, 0x38),
    ) else {
        return Ok(None);
    };
    let (phentsize, phnum) = (usize::from(phentsize), usize::from(phnum));
    if phentsize < 56 || phnum == 0 {
        return Ok(None);
    }
    let mut table = vec![0u8; phentsize * phnum];
    f.seek(SeekFrom::Start(phoff))?;
    if f.read_exact(&mut table).is_err() {
        return Ok(None);
    }
    for ph in table.chunks_exact(phentsize) {
        if u32_at(ph, 0) != Some(PT_NOTE) {
            continue;
        }
        let (Some(offset), Some(size)) = (u64_at(ph, 8), u64_at(ph, 32)) else {
            continue;
        };
        if size > 1 << 16 {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(offset))?;
        if f.read_exact(&mut notes).is_err() {
            continue;
        }
        let align4 = |n: usize| n.div_ceil(4) * 4;
        let mut i = 0;
        while let (Some(namesz), Some(descsz), Some(kind)) = (
            u32_at(&notes, i),
            u32_at(&notes, i + 4),
            u32_at(&notes, i + 8),
        ) {
            let (namesz, descsz) = (namesz as usize, descsz as usize);
            let name_at = i + 12;
            let desc_at = name_at + align4(namesz);
            let Some(desc) = notes.get(desc_at..desc_at + descsz) else {
                break;
            };
            if kind == NT_GNU_BUILD_ID && notes.get(name_at..name_at + namesz) == Some(b"GNU\0") {
                return Ok(Some(desc.to_vec()));
            }
            i = desc_at + align4(descsz);
        }
    }
    Ok(None)
}

/// The read end of the pipe a [`LocalLauncher`] handed this worker its identity on. Only
/// the launcher's process holds the write end, and keeps it open while it lives: when that
/// process exits (however it exits, whichever of its threads started this one), the pipe
/// reaches end-of-file.
#[derive(Debug)]
pub struct DriverLink {
    #[cfg(unix)]
    fd: std::os::fd::OwnedFd,
}

impl DriverLink {
    /// Blocks the calling thread until the launcher's process is gone (end-of-file or an
    /// error on the pipe). Meant for a thread of its own.
    pub fn wait_closed(self) {
        #[cfg(unix)]
        {
            use std::io::Read;
            let mut f = std::fs::File::from(self.fd);
            let mut buf = [0u8; 64];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
            }
        }
    }
}

#[cfg(unix)]
fn read_identity_pipe(fd: i32) -> Result<(Identity, DriverLink), NetError> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let bad = |reason: String| NetError::WorkerArgs { reason };
    if fd < 3 {
        return Err(bad(format!(
            "{ENV_IDENTITY_FD}={fd} is not an inherited pipe"
        )));
    }
    // SAFETY: fstat only writes into the buffer it is given; an fd that is not open fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(bad(format!(
            "{ENV_IDENTITY_FD}={fd} is not an open pipe inherited from the launcher"
        )));
    }
    // SAFETY: the descriptor is open (fstat succeeded), and it was inherited for this
    // process to read the identity from: nothing else in the process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Processes the worker's tasks start must not inherit it.
    // SAFETY: plain fcntl on a descriptor this function owns.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    read_identity_line(owned, "the launcher's pipe")
}

/// Takes standard input for the identity and the driver link: moves it to a new
/// close-on-exec descriptor and puts `/dev/null` in its place, so that neither the
/// process's own reads of standard input nor the processes its tasks start can take bytes
/// from the launcher's channel, then reads the identity line from it.
#[cfg(unix)]
fn read_identity_stdin() -> Result<(Identity, DriverLink), NetError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let bad = |reason: String| NetError::WorkerArgs { reason };
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor (or -1); nothing else owns it.
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(bad(format!(
            "--identity-stdin: standard input is not open: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: just created above, owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 onto descriptor 0, which this process keeps open (now on /dev/null).
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    read_identity_line(owned, "standard input")
}

#[cfg(not(unix))]
fn read_identity_stdin() -> Result<(Identity, DriverLink), NetError> {
    Err(NetError::WorkerArgs {
        reason: "--identity-stdin is supported on Unix hosts only".into(),
    })
}

/// Reads one line of [`Identity::to_text`] (at most [`MAX_IDENTITY_LINE`] bytes) from
/// `fd`, which stays open as the returned link; bytes after the line are never read here.
#[cfg(unix)]
fn read_identity_line(
    fd: std::os::fd::OwnedFd,
    what: &str,
) -> Result<(Identity, DriverLink), NetError> {
    use std::io::Read;
    let bad = |reason: String| NetError::WorkerArgs { reason };
    let mut f = std::fs::File::from(fd);
    let mut line = Vec::with_capacity(4096);
    let mut byte = [0u8; 1];
    // One byte at a time: the line is a few KiB, read once, and nothing after it may be
    // consumed (it is not the identity's, and the link only waits for end-of-file).
    let complete = loop {
        match f.read(&mut byte) {
            Ok(0) => break false,
            Ok(_) if byte[0] == b'\n' => break true,
            Ok(_) => {
                line.push(byte[0]);
                if line.len() > MAX_IDENTITY_LINE {
                    return Err(bad(format!(
                        "the identity on {what} is longer than {MAX_IDENTITY_LINE} bytes"
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad(format!("reading the identity from {what}: {e}"))),
        }
    };
    if !complete {
        return Err(bad(format!(
            "{what} closed before a whole identity arrived (did the driver exit?)"
        )));
    }
    let text = String::from_utf8(line).map_err(|_| bad("the identity is not UTF-8".into()))?;
    let identity = Identity::from_text(text.trim_end_matches('\r'))?;
    Ok((identity, DriverLink { fd: f.into() }))
}

#[cfg(not(unix))]
fn read_identity_pipe(_fd: i32) -> Result<(Identity, DriverLink), NetError> {
    Err(NetError::WorkerArgs {
        reason: "local workers are supported on Unix hosts only".into(),
    })
}

/// Starts worker processes on this host: copies of the current executable.
///
/// Each child gets [`ENV_JOIN`], [`ENV_IDENTITY_FD`] and [`ENV_NAME`], the read end of a
/// pipe holding its identity, and inherits stdout and stderr. Its arguments are this
/// process's own (`argv[1..]`) unless [`LocalLauncher::args`] says otherwise. The child
/// learns that this process is gone from the pipe (see [`DriverLink`]), whichever thread
/// started it.
#[derive(Clone, Debug)]
pub struct LocalLauncher {
    join: String,
    identity: Identity,
    envs: Vec<(String, String)>,
    args: Option<Vec<OsString>>,
    memory_limit: Option<u64>,
}

impl LocalLauncher {
    /// A launcher whose workers join `join` with `identity`.
    pub fn new(join: impl Into<String>, identity: Identity) -> Self {
        LocalLauncher {
            join: join.into(),
            identity,
            envs: Vec::new(),
            args: None,
            memory_limit: None,
        }
    }

    /// Caps the address space of every worker this launcher starts at `bytes`
    /// (`RLIMIT_AS`, set in the child before it executes; Unix hosts only). An allocation
    /// beyond it fails inside the worker, and a Rust program aborts on a failed allocation
    /// (`SIGABRT`): the driver sees a process exit like any other, and the worker's tasks
    /// run again elsewhere. The limit counts reserved address space, not resident memory:
    /// each thread's stack and the allocator's per-thread arenas count in full, so leave a
    /// few hundred MiB above what the tasks need. Default: no limit.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The address-space limit set with [`LocalLauncher::memory_limit`], if any.
    pub fn memory_limit_bytes(&self) -> Option<u64> {
        self.memory_limit
    }

    /// Sets an extra environment variable for every worker this launcher starts (e.g.
    /// `DAGGER_THREADS` to cap each worker's thread processors).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The command-line arguments of the workers (without the program name). Default: this
    /// process's own. A test of a `cargo test` binary passes [`test_harness_args`].
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// The launcher that [`Launcher::launch`] uses for `spec`: this one with the spec's
    /// address and identity, the spec's environment before this launcher's own, and this
    /// launcher's arguments if set, else the spec's (else this process's own).
    pub fn for_spec(&self, spec: &JoinSpec) -> LocalLauncher {
        LocalLauncher {
            join: spec.join.clone(),
            identity: spec.identity.clone(),
            envs: spec.envs.iter().chain(&self.envs).cloned().collect(),
            args: self.args.clone().or_else(|| {
                spec.args
                    .as_ref()
                    .map(|a| a.iter().map(OsString::from).collect())
            }),
            memory_limit: self.memory_limit,
        }
    }

    /// Starts `n` workers named `worker-0` … `worker-{n-1}`. Costs one process spawn each.
    /// If one spawn fails, the ones already started are killed and the error returned.
    pub fn spawn(&self, n: usize) -> Result<Vec<WorkerProcess>, NetError> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(self.spawn_named(&format!("worker-{i}"))?);
        }
        Ok(out)
    }

    /// Starts one worker called `name`.
    #[cfg(unix)]
    pub fn spawn_named(&self, name: &str) -> Result<WorkerProcess, NetError> {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let exe = std::env::current_exe()?;
        let (read, write) = pipe_cloexec()?;
        // The identity goes into the pipe before the child exists; the write end is
        // non-blocking meanwhile, so an identity larger than the pipe is an error, never a
        // hang (a few KiB fit in any pipe).
        let mut line = self.identity.to_text().into_bytes();
        line.push(b'\n');
        set_nonblocking(write.as_raw_fd(), true)?;
        let mut writer = std::fs::File::from(write);
        writer.write_all(&line).map_err(|e| NetError::WorkerArgs {
            reason: format!("cannot hand the identity to the worker through a pipe: {e}"),
        })?;
        set_nonblocking(writer.as_raw_fd(), false)?;
        let mut cmd = Command::new(exe);
        match &self.args {
            Some(args) => cmd.args(args),
            None => cmd.args(std::env::args_os().skip(1)),
        };
        // A worker named `…-N` is the N-th of its launcher on this host: it spreads its
        // pinned CPUs by N (see `dagger_proc::sys::SLOT_VAR`).
        if let Some(slot) = name_number(name) {
            cmd.env(ENV_SLOT, slot.to_string());
        }
        cmd.env(ENV_JOIN, &self.join)
            .env(ENV_IDENTITY_FD, read.as_raw_fd().to_string())
            .env(ENV_NAME, name)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        inherit_fd(&mut cmd, read.as_raw_fd());
        if let Some(bytes) = self.memory_limit {
            limit_address_space(&mut cmd, bytes);
        }
        let child = cmd.spawn()?;
        drop(read);
        let pidfd = pidfd_open(child.id());
        Ok(WorkerProcess {
            child,
            name: name.to_owned(),
            reaped: None,
            is_worker: true,
            driver_link: Some(writer),
            pidfd,
        })
    }

    /// Starts one worker called `name` (Unix hosts only).
    #[cfg(not(unix))]
    pub fn spawn_named(&self, _name: &str) -> Result<WorkerProcess, NetError> {
        Err(NetError::WorkerArgs {
            reason: "local workers are supported on Unix hosts only".into(),
        })
    }
}

impl Launcher for LocalLauncher {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn as_local(&self) -> Option<&LocalLauncher> {
        Some(self)
    }

    /// Starts one worker process per name on this host. The spec's address and identity
    /// are used (not the ones given to [`LocalLauncher::new`]); the spec's environment
    /// comes before this launcher's own [`env`](LocalLauncher::env) settings; the
    /// arguments are this launcher's [`args`](LocalLauncher::args) if set, else the
    /// spec's, else this process's own. If one spawn fails, the workers already started
    /// by this call are killed and the error returned.
    fn launch(&self, spec: &JoinSpec, names: &[String]) -> Result<Vec<Launched>, NetError> {
        let launcher = self.for_spec(spec);
        names
            .iter()
            .map(|name| {
                Ok(Launched {
                    name: name.clone(),
                    process: Some(launcher.spawn_named(name)?),
                })
            })
            .collect()
    }
}

/// Starts workers, wherever they run: on this host ([`LocalLauncher`]), through `ssh`
/// ([`SshLauncher`]), through Slurm's `srun` ([`SlurmLauncher`]), or by the user's hand
/// ([`ManualLauncher`], which only says what to run). A driver grows its pool with any of
/// them (in the `dagger` facade, `Context::add_workers`), and recognises the workers by the
/// names it chose, which each worker reports when it joins.
pub trait Launcher: Send + Sync + std::fmt::Debug {
    /// A short name for logs and errors: `"local"`, `"ssh"`, `"slurm"`, `"manual"`.
    fn kind(&self) -> &'static str;

    /// Starts one worker per name in `names`, each told to join `spec.join` with
    /// `spec.identity` and to report its name. Returns one [`Launched`] per name, in order,
    /// once the processes are started (not joined). The identity's private key must reach
    /// the worker only through a private channel (a pipe, standard input, a 0600 file),
    /// never a command line or an environment variable. On an error, processes this call
    /// already started are ended (dropping a [`WorkerProcess`] does that).
    fn launch(&self, spec: &JoinSpec, names: &[String]) -> Result<Vec<Launched>, NetError>;

    /// This launcher as a [`LocalLauncher`], if it is one: a driver then replaces a local
    /// worker that dies with another started the same way. Default `None`.
    fn as_local(&self) -> Option<&LocalLauncher> {
        None
    }
}

/// What every worker of one launch needs: where to join, with which credentials, and the
/// settings the driver gives its workers. Its `Debug` form hides the private key.
#[derive(Clone, Debug)]
pub struct JoinSpec {
    /// The driver's address, reachable from where the workers run (a driver listening on
    /// `0.0.0.0:PORT` gives its host name here).
    pub join: String,
    /// The workers' credentials (the private key included).
    pub identity: Identity,
    /// Environment variables for the workers (e.g. `DAGGER_THREADS`); never secrets.
    pub envs: Vec<(String, String)>,
    /// The worker program's own arguments, before the worker flags (for a test of a
    /// `cargo test` binary, [`test_harness_args`]); `None`: none for a remote worker, this
    /// process's own for a local one. A launcher's own setting wins over this.
    pub args: Option<Vec<String>>,
}

impl JoinSpec {
    /// A spec with no environment and no arguments.
    pub fn new(join: impl Into<String>, identity: Identity) -> Self {
        JoinSpec {
            join: join.into(),
            identity,
            envs: Vec::new(),
            args: None,
        }
    }
}

/// One worker a [`Launcher`] started (or, for [`ManualLauncher`], asked for).
#[derive(Debug)]
pub struct Launched {
    /// The name the worker reports when it joins.
    pub name: String,
    /// The local child process, when there is one: the worker itself for a local launch
    /// ([`WorkerProcess::is_worker`]), the `ssh` or `srun` client whose end means the
    /// remote worker's end otherwise; `None` when nothing was started here.
    pub process: Option<WorkerProcess>,
}

/// The argument list that runs the worker program through a client that forwards standard
/// input (`ssh`, `srun`): `[env K=V ...] PROGRAM [ARGS... --] --dagger-worker --join ADDR
/// --identity-stdin --name NAME`. The `--` keeps a libtest binary from taking the worker
/// flags for options (it takes them for test-name filters that match nothing).
pub(crate) fn stdin_worker_argv(
    program: &str,
    args: Option<&[String]>,
    envs: &[(String, String)],
    join: &str,
    name: &str,
) -> Vec<String> {
    let mut argv = Vec::new();
    if !envs.is_empty() {
        argv.push("env".to_owned());
        argv.extend(envs.iter().map(|(k, v)| format!("{k}={v}")));
    }
    argv.push(program.to_owned());
    if let Some(args) = args.filter(|a| !a.is_empty()) {
        argv.extend(args.iter().cloned());
        argv.push("--".to_owned());
    }
    argv.extend(
        [
            "--dagger-worker",
            "--join",
            join,
            "--identity-stdin",
            "--name",
            name,
        ]
        .into_iter()
        .map(str::to_owned),
    );
    argv
}

/// `word` quoted for a POSIX shell: as it is when it has only safe characters, else in
/// single quotes (a quote inside written `'\''`).
pub fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The path of the worker program on the remote host: `program` if set, else this
/// executable's path (the same path must hold the same build there).
pub(crate) fn program_or_current(program: Option<&str>) -> Result<String, NetError> {
    if let Some(p) = program {
        return Ok(p.to_owned());
    }
    let exe = std::env::current_exe()?;
    exe.to_str()
        .map(str::to_owned)
        .ok_or_else(|| NetError::WorkerArgs {
            reason: format!("this executable's path {} is not UTF-8", exe.display()),
        })
}

/// Starts a client (`ssh`, `srun`) that runs a worker elsewhere and forwards its standard
/// input there: writes the identity line into the client's standard input and keeps it
/// open for the client's life. Standard output and error are inherited.
#[cfg(unix)]
pub(crate) fn spawn_client(
    mut cmd: Command,
    name: &str,
    identity: &Identity,
    what: &str,
) -> Result<WorkerProcess, NetError> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, OwnedFd};
    cmd.stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        NetError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot start `{what}`: {e}"),
        ))
    })?;
    let pidfd = pidfd_open(child.id());
    let Some(stdin) = child.stdin.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(NetError::Io(std::io::Error::other(format!(
            "`{what}` was started without a standard input"
        ))));
    };
    let mut writer = std::fs::File::from(OwnedFd::from(stdin));
    let mut line = identity.to_text().into_bytes();
    line.push(b'\n');
    // Non-blocking: a few KiB fit in any pipe, so this is never a hang; a client that does
    // not read is found out when the worker does not join.
    let written = set_nonblocking(writer.as_raw_fd(), true)
        .and_then(|()| writer.write_all(&line))
        .and_then(|()| set_nonblocking(writer.as_raw_fd(), false));
    let mut process = WorkerProcess {
        child,
        name: name.to_owned(),
        reaped: None,
        is_worker: false,
        driver_link: Some(writer),
        pidfd,
    };
    if let Err(e) = written {
        let _ = process.kill();
        return Err(NetError::WorkerArgs {
            reason: format!("cannot hand the identity to `{what}`'s standard input: {e}"),
        });
    }
    Ok(process)
}

#[cfg(not(unix))]
pub(crate) fn spawn_client(
    _cmd: Command,
    _name: &str,
    _identity: &Identity,
    what: &str,
) -> Result<WorkerProcess, NetError> {
    Err(NetError::WorkerArgs {
        reason: format!("launching workers through `{what}` is supported on Unix hosts only"),
    })
}

/// A launcher that starts nothing: for workers a user starts by hand on another host, or
/// a batch script starts. [`ManualLauncher::command`] is the exact shell command for one
/// worker, which reads its credentials from the files a driver writes into its
/// certificate folder (in the `dagger` facade, `ContextBuilder::cert_dir`; copy the folder
/// to the worker's host, keeping `key.pem` private):
///
/// ```text
/// PROGRAM [ARGS... --] --dagger-worker --join HOST:PORT --cert DIR/cert.pem --key DIR/key.pem --ca DIR/ca.pem --name NAME
/// ```
///
/// [`Launcher::launch`] hands each worker's command to a callback (by default it prints
/// `dagger: start worker NAME with: COMMAND` on standard error) and returns no process; the
/// driver then waits for workers of those names to join.
#[derive(Clone)]
pub struct ManualLauncher {
    cert_dir: std::path::PathBuf,
    program: Option<String>,
    args: Option<Vec<String>>,
    on_command: OnCommand,
}

/// What [`ManualLauncher`] does with each worker's name and command.
type OnCommand = std::sync::Arc<dyn Fn(&str, &str) + Send + Sync>;

impl std::fmt::Debug for ManualLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualLauncher")
            .field("cert_dir", &self.cert_dir)
            .field("program", &self.program)
            .field("args", &self.args)
            .finish_non_exhaustive()
    }
}

impl ManualLauncher {
    /// Workers that read their credentials from `cert_dir` on their host (`cert.pem`,
    /// `key.pem`, `ca.pem`, as a driver's certificate folder holds them).
    pub fn new(cert_dir: impl Into<std::path::PathBuf>) -> Self {
        ManualLauncher {
            cert_dir: cert_dir.into(),
            program: None,
            args: None,
            on_command: std::sync::Arc::new(|name, command| {
                eprintln!("dagger: start worker {name} with: {command}");
            }),
        }
    }

    /// The worker program's path on the workers' host. Default: this executable's path.
    pub fn program(mut self, path: impl Into<String>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// The worker program's own arguments, before the worker flags (a `--` separates
    /// them). Default: the spec's ([`JoinSpec::args`]), else none.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// What [`Launcher::launch`] does with each worker's name and command (show it to the
    /// user, write it into a batch script, start it through a tool of one's own).
    pub fn on_command(mut self, f: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        self.on_command = std::sync::Arc::new(f);
        self
    }

    /// The shell command that starts worker `name` of `spec` on another host (its words
    /// quoted for a POSIX shell). Holds paths and the address only, never key material.
    pub fn command(&self, spec: &JoinSpec, name: &str) -> Result<String, NetError> {
        let program = program_or_current(self.program.as_deref())?;
        let dir = self.cert_dir.to_str().ok_or_else(|| NetError::WorkerArgs {
            reason: format!(
                "the certificate folder {} is not UTF-8",
                self.cert_dir.display()
            ),
        })?;
        let dir = dir.trim_end_matches('/');
        let mut argv = vec![program];
        if let Some(args) = self
            .args
            .as_ref()
            .or(spec.args.as_ref())
            .filter(|a| !a.is_empty())
        {
            argv.extend(args.iter().cloned());
            argv.push("--".to_owned());
        }
        argv.extend([
            "--dagger-worker".to_owned(),
            "--join".to_owned(),
            spec.join.clone(),
            "--cert".to_owned(),
            format!("{dir}/cert.pem"),
            "--key".to_owned(),
            format!("{dir}/key.pem"),
            "--ca".to_owned(),
            format!("{dir}/ca.pem"),
            "--name".to_owned(),
            name.to_owned(),
        ]);
        let mut words: Vec<String> = spec
            .envs
            .iter()
            .map(|(k, v)| shell_quote(&format!("{k}={v}")))
            .collect();
        if !words.is_empty() {
            words.insert(0, "env".to_owned());
        }
        words.extend(argv.iter().map(|w| shell_quote(w)));
        Ok(words.join(" "))
    }
}

impl Launcher for ManualLauncher {
    fn kind(&self) -> &'static str {
        "manual"
    }

    /// Hands each worker's [`command`](ManualLauncher::command) to the callback; starts
    /// nothing, so every [`Launched::process`] is `None`.
    fn launch(&self, spec: &JoinSpec, names: &[String]) -> Result<Vec<Launched>, NetError> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let command = self.command(spec, name)?;
            (self.on_command)(name, &command);
            out.push(Launched {
                name: name.clone(),
                process: None,
            });
        }
        Ok(out)
    }
}

/// A pipe whose both ends are close-on-exec (no other child of this process inherits them).
#[cfg(unix)]
fn pipe_cloexec() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let rc = unsafe {
        let rc = libc::pipe(fds.as_mut_ptr());
        if rc == 0 {
            libc::fcntl(fds[0], libc::F_SETFD, libc::FD_CLOEXEC);
            libc::fcntl(fds[1], libc::F_SETFD, libc::FD_CLOEXEC);
        }
        rc
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(unix)]
fn set_nonblocking(fd: i32, on: bool) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        if libc::fcntl(fd, libc::F_SETFL, flags) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Lets the child inherit `fd` across `exec` (it is close-on-exec in this process).
#[cfg(unix)]
fn inherit_fd(cmd: &mut Command, fd: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and calls only fcntl,
    // which is async-signal-safe; it touches the child's copy of the descriptor.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Caps the child's address space at `bytes` (`RLIMIT_AS`, soft and hard limit).
#[cfg(unix)]
fn limit_address_space(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    let bytes = libc::rlim_t::try_from(bytes).unwrap_or(libc::RLIM_INFINITY);
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // setrlimit, which is async-signal-safe, with a limit struct on its own stack; it
    // allocates nothing and touches no lock. It changes only the child's limits.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A descriptor that becomes readable when the process exits (Linux 5.3 and later).
#[cfg(target_os = "linux")]
fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: the syscall takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    let fd = libc::c_int::try_from(fd).ok()?;
    // SAFETY: the descriptor was just created and is owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(all(unix, not(target_os = "linux")))]
fn pidfd_open(_pid: u32) -> Option<std::os::fd::OwnedFd> {
    None
}

/// A running local child process of a launcher: the worker itself ([`LocalLauncher`];
/// [`WorkerProcess::is_worker`] is true), or the client through which a remote worker runs
/// (`ssh` for [`SshLauncher`], `srun` for [`SlurmLauncher`]), whose end means the remote
/// worker's end. Dropping it ends the process (see [`WorkerProcess::kill`]) and reaps it.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
    name: String,
    reaped: Option<ExitStatus>,
    /// Whether the child is the worker (not a client that runs it elsewhere).
    is_worker: bool,
    /// The write end of the worker's identity channel (the inherited pipe of a local
    /// worker, the client's standard input): open while this value lives (see
    /// [`DriverLink`]); closed first when a client is ended.
    #[cfg(unix)]
    driver_link: Option<std::fs::File>,
    #[cfg(unix)]
    pidfd: Option<std::os::fd::OwnedFd>,
}

/// Resolves when a worker process exits, without polling. See [`WorkerProcess::exit_watch`].
#[derive(Debug)]
pub struct ExitWatch {
    #[cfg(unix)]
    pidfd: Option<std::os::fd::OwnedFd>,
    pid: u32,
}

impl ExitWatch {
    /// Waits until the process has exited (it is not reaped: call
    /// [`WorkerProcess::try_wait`] for its status). With a pidfd (Linux 5.3+) this is a
    /// readiness wait on the runtime's reactor; otherwise a blocking `waitid(WNOWAIT)` on
    /// the runtime's blocking pool. Must run inside a tokio runtime with I/O enabled.
    pub async fn wait(self) -> Result<(), NetError> {
        #[cfg(unix)]
        if let Some(fd) = self.pidfd {
            // SAFETY: an `OwnedFd` stays open, and is the same descriptor, until the `AsyncFd`
            // that owns it is dropped.
            let afd = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            }
            .map_err(std::io::Error::from)?;
            let _ready = afd.readable().await?;
            return Ok(());
        }
        #[cfg(unix)]
        {
            let pid = self.pid;
            tokio::task::spawn_blocking(move || wait_exit_blocking(pid))
                .await
                .map_err(|e| NetError::Io(std::io::Error::other(e)))?;
        }
        Ok(())
    }
}

/// Blocks until `pid` (a child of this process) has exited, leaving it to be reaped.
#[cfg(unix)]
fn wait_exit_blocking(pid: u32) {
    let pid: libc::id_t = pid;
    loop {
        // SAFETY: waitid writes into the siginfo it is given.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc =
            unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

impl WorkerProcess {
    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name the worker was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A future-maker that tells when this process exits, usable without holding on to
    /// this value. Costs one `dup` of the process's pidfd.
    pub fn exit_watch(&self) -> ExitWatch {
        ExitWatch {
            #[cfg(unix)]
            pidfd: self.pidfd.as_ref().and_then(|fd| fd.try_clone().ok()),
            pid: self.pid(),
        }
    }

    /// Whether this process is the worker itself (a [`LocalLauncher`]'s), rather than a
    /// client (`ssh`, `srun`) that runs the worker elsewhere and ends when it ends.
    pub fn is_worker(&self) -> bool {
        self.is_worker
    }

    /// Ends the process. Does nothing if it already exited; does not wait.
    ///
    /// A worker is killed (SIGKILL on Unix). A client is asked to end its remote worker:
    /// its standard input is closed (the worker reads end-of-file, its sign that the
    /// driver is gone) and it gets SIGTERM, which `srun` forwards to its task and on which
    /// `ssh` closes its connection (the remote side then sees end-of-file as well).
    /// Dropping the value kills a client that has not exited within 2 s of that.
    pub fn kill(&mut self) -> Result<(), NetError> {
        if self.reaped.is_some() {
            return Ok(());
        }
        if !self.is_worker {
            #[cfg(unix)]
            {
                self.driver_link = None;
                return self.signal(libc::SIGTERM);
            }
        }
        match self.child.kill() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends `sig` unless the process was reaped (then its pid may be another process's).
    #[cfg(unix)]
    fn signal(&mut self, sig: libc::c_int) -> Result<(), NetError> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid()).map_err(std::io::Error::other)?;
        // SAFETY: kill takes a pid and a signal; the child is not reaped, so the pid is
        // still this child's.
        if unsafe { libc::kill(pid, sig) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Waits at most `limit` for the process to exit (a `poll` on its pidfd; checks every
    /// 10 ms without one). Returns whether it exited.
    #[cfg(unix)]
    fn wait_exit_for(&mut self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if !matches!(self.try_wait(), Ok(None)) {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            match &self.pidfd {
                Some(fd) => {
                    use std::os::fd::AsRawFd;
                    let mut pfd = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
                    // SAFETY: poll reads and writes the one pollfd it is given.
                    unsafe { libc::poll(&mut pfd, 1, ms) };
                }
                None => std::thread::sleep(left.min(std::time::Duration::from_millis(10))),
            }
        }
    }

    /// Waits for the process to exit (blocks the calling thread).
    pub fn wait(&mut self) -> Result<ExitStatus, NetError> {
        if let Some(s) = self.reaped {
            return Ok(s);
        }
        let s = self.child.wait()?;
        self.reaped = Some(s);
        Ok(s)
    }

    /// Returns the exit status if the process has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, NetError> {
        if let Some(s) = self.reaped {
            return Ok(Some(s));
        }
        let s = self.child.try_wait()?;
        self.reaped = s;
        Ok(s)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            #[cfg(unix)]
            if !self.is_worker && self.kill().is_ok() && self.wait_exit_for(CLIENT_GRACE) {
                return;
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How long a dropped client (`ssh`, `srun`) gets to end its remote worker and exit
/// before it is killed.
const CLIENT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Identity {
        Identity {
            cert_pem: "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nB\n-----END PRIVATE KEY-----\n".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nC\n-----END CERTIFICATE-----\n".into(),
        }
    }

    /// This test's arguments for a re-executed copy of the test binary (the test knows it
    /// runs under libtest, which names its thread after it).
    fn this_test() -> Vec<String> {
        test_harness_args(std::thread::current().name().expect("a libtest thread"))
    }

    #[test]
    fn a_worker_s_number_comes_from_its_name() {
        assert_eq!(name_number("worker-3"), Some(3));
        assert_eq!(name_number("worker-12"), Some(12));
        assert_eq!(name_number("worker"), None);
        assert_eq!(name_number(""), None);
    }

    #[test]
    fn argv_without_flag_is_not_a_worker() {
        let r = parse_worker_argv(["--exact".to_owned(), "x".to_owned()]).unwrap();
        assert!(r.is_none());
    }

    #[test]
    fn argv_missing_join_is_an_error() {
        let r = parse_worker_argv(["--dagger-worker".to_owned(), "--cert".to_owned()]);
        assert!(matches!(r, Err(NetError::WorkerArgs { .. })));
    }

    #[test]
    fn argv_form_reads_files() {
        let id = sample();
        let dir = std::env::temp_dir().join(format!("dagger-net-argv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k, a) = id.write_files(&dir).unwrap();
        let args: Vec<String> = vec![
            "--dagger-worker".into(),
            "--join".into(),
            "127.0.0.1:9".into(),
            "--cert".into(),
            c.display().to_string(),
            "--key".into(),
            k.display().to_string(),
            "--ca".into(),
            a.display().to_string(),
            "--name".into(),
            "w7".into(),
        ];
        let w = parse_worker_argv(args).unwrap().unwrap();
        assert_eq!(w.join, "127.0.0.1:9");
        assert_eq!(w.identity, id);
        assert_eq!(w.name.as_deref(), Some("w7"));
        assert!(w.driver_link.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Re-executes this test binary as a worker of this very test: the child reads its
    /// identity from the pipe, finds no key material and no worker variable left in its
    /// environment, and exits 0 (a real runtime would join).
    #[test]
    fn local_launcher_hands_the_identity_through_a_pipe() {
        if std::env::var_os(ENV_JOIN).is_some() {
            let check = || -> Result<(), String> {
                let args = worker_args_from_env()
                    .map_err(|e| e.to_string())?
                    .ok_or("not a worker")?;
                if args.join != "127.0.0.1:1" || args.name.as_deref() != Some("worker-0") {
                    return Err(format!("wrong arguments {args:?}"));
                }
                if args.identity != sample() {
                    return Err("the identity differs".into());
                }
                for (k, v) in std::env::vars() {
                    if k.starts_with("DAGGER_WORKER") || v.contains("PRIVATE KEY") {
                        return Err(format!("{k} is still in the environment"));
                    }
                }
                if worker_args_from_env().map_err(|e| e.to_string())?.is_some() {
                    return Err("the arguments can be taken twice".into());
                }
                Ok(())
            };
            match check() {
                Ok(()) => std::process::exit(0),
                Err(e) => {
                    eprintln!("worker check failed: {e}");
                    std::process::exit(1);
                }
            }
        }
        let mut procs = LocalLauncher::new("127.0.0.1:1", sample())
            .args(this_test())
            .spawn(1)
            .unwrap();
        assert!(procs[0].pid() > 0);
        let status = procs[0].wait().unwrap();
        assert!(status.success(), "worker exited with {status}");
        assert!(procs[0].try_wait().unwrap().is_some());
    }

    /// A worker started through a client that forwards standard input (here the test
    /// binary itself, started as `ssh` or `srun` would start it, flags after `--`): it
    /// reads its identity from standard input, which is `/dev/null` afterwards, and no
    /// key material is on its command line or in its environment.
    #[test]
    fn identity_stdin_reads_one_line_and_frees_stdin() {
        if std::env::args().any(|a| a == "--identity-stdin") {
            let check = || -> Result<(), String> {
                let args = worker_args_from_env()
                    .map_err(|e| e.to_string())?
                    .ok_or("not a worker")?;
                if args.join != "127.0.0.1:1" || args.name.as_deref() != Some("w1") {
                    return Err(format!("wrong arguments {args:?}"));
                }
                if args.identity != sample() || args.driver_link.is_none() {
                    return Err("the identity differs, or no driver link".into());
                }
                let mut rest = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest)
                    .map_err(|e| e.to_string())?;
                if !rest.is_empty() {
                    return Err("standard input still reads the launcher's channel".into());
                }
                let cmdline = std::fs::read("/proc/self/cmdline").map_err(|e| e.to_string())?;
                let environ = std::fs::read("/proc/self/environ").map_err(|e| e.to_string())?;
                let text = sample().to_text();
                for bytes in [&cmdline, &environ] {
                    let shown = String::from_utf8_lossy(bytes);
                    if shown.contains("PRIVATE KEY") || shown.contains(&text[..64]) {
                        return Err("key material on the command line or environment".into());
                    }
                }
                Ok(())
            };
            match check() {
                Ok(()) => std::process::exit(0),
                Err(e) => {
                    eprintln!("worker check failed: {e}");
                    std::process::exit(1);
                }
            }
        }
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(this_test()).args([
            "--",
            "--dagger-worker",
            "--join",
            "127.0.0.1:1",
            "--identity-stdin",
            "--name",
            "w1",
        ]);
        let mut p = spawn_client(cmd, "w1", &sample(), "the test binary").unwrap();
        assert!(!p.is_worker());
        let status = p.wait().unwrap();
        assert!(status.success(), "worker exited with {status}");
    }

    #[test]
    fn identity_stdin_excludes_certificate_files() {
        let r = parse_worker_argv(
            [
                "--dagger-worker",
                "--join",
                "a:1",
                "--identity-stdin",
                "--key",
                "k.pem",
            ]
            .map(String::from),
        );
        assert!(matches!(r, Err(NetError::WorkerArgs { .. })), "{r:?}");
    }

    #[test]
    fn a_join_spec_s_debug_form_hides_the_key() {
        let spec = JoinSpec::new("a:1", sample());
        assert!(!format!("{spec:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn the_manual_command_names_the_certificate_files() {
        let mut spec = JoinSpec::new("host:7400", sample());
        spec.args = Some(vec!["my test".into()]);
        let l = ManualLauncher::new("/etc/dagger/").program("/opt/app");
        assert_eq!(
            l.command(&spec, "worker-9").unwrap(),
            "/opt/app 'my test' -- --dagger-worker --join host:7400 --cert /etc/dagger/cert.pem \
             --key /etc/dagger/key.pem --ca /etc/dagger/ca.pem --name worker-9"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn dropping_a_worker_kills_it() {
        if std::env::var_os(ENV_JOIN).is_some() {
            // The re-executed copy: stay alive until killed.
            std::thread::sleep(std::time::Duration::from_secs(60));
            std::process::exit(3);
        }
        let mut p = LocalLauncher::new("x", sample())
            .args(this_test())
            .spawn_named("w")
            .unwrap();
        p.kill().unwrap();
        let status = p.wait().unwrap();
        assert!(!status.success(), "a killed worker must not report success");
        // Killing an exited, reaped process is a no-op.
        p.kill().unwrap();
    }

    /// The exit watch resolves once the process is gone, without polling its status.
    #[tokio::test]
    async fn exit_watch_resolves_when_the_process_exits() {
        if std::env::var_os(ENV_JOIN).is_some() {
            std::thread::sleep(std::time::Duration::from_secs(60));
            std::process::exit(3);
        }
        let mut p = LocalLauncher::new("x", sample())
            .args(this_test())
            .spawn_named("w")
            .unwrap();
        let watch = p.exit_watch();
        p.kill().unwrap();
        watch.wait().await.unwrap();
        let status = p.try_wait().unwrap().expect("exited, not yet reaped");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    /// A worker started with a memory limit runs under it: its `RLIMIT_AS` is the limit,
    /// and an allocation larger than the limit fails there (while it succeeds here).
    #[test]
    fn a_memory_limit_caps_the_worker_s_address_space() {
        const LIMIT: u64 = 512 << 20;
        if std::env::var_os(ENV_JOIN).is_some() {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the struct it is given.
            let rc = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) };
            let capped = rc == 0 && limit.rlim_cur == LIMIT && limit.rlim_max == LIMIT;
            let refused = Vec::<u8>::new().try_reserve_exact(1 << 30).is_err();
            std::process::exit(if capped && refused { 0 } else { 1 });
        }
        assert!(Vec::<u8>::new().try_reserve_exact(1 << 30).is_ok());
        let launcher = LocalLauncher::new("x", sample())
            .args(this_test())
            .memory_limit(LIMIT);
        assert_eq!(launcher.memory_limit_bytes(), Some(LIMIT));
        let mut p = launcher.spawn_named("w").unwrap();
        let status = p.wait().unwrap();
        assert!(
            status.success(),
            "the worker ran without its limit: {status}"
        );
    }

    #[test]
    fn build_id_tells_builds_apart() {
        let exe = std::env::current_exe().unwrap();
        let ours = build_id();
        assert_ne!(ours, 0);
        assert_eq!(build_id_of(&exe).unwrap(), ours);
        // Another build: a copy whose build-id note (or, without one, content) differs.
        let bytes = std::fs::read(&exe).unwrap();
        let mut f = std::fs::File::open(&exe).unwrap();
        let mut other = bytes.clone();
        match elf_build_id(&mut f).unwrap() {
            Some(note) => {
                let at = bytes
                    .windows(note.len())
                    .position(|w| w == note.as_slice())
                    .unwrap();
                other[at] ^= 0xff;
            }
            None => other.push(0),
        }
        let copy = std::env::temp_dir().join(format!("dagger-net-build-{}", std::process::id()));
        std::fs::write(&copy, &other).unwrap();
        let theirs = build_id_of(&copy).unwrap();
        std::fs::remove_file(&copy).unwrap();
        assert_ne!(theirs, ours);
    }

    #[test]
    fn fingerprint_depends_on_every_byte() {
        let a = fingerprint(b"x", b"0123456789abcdef0");
        assert_ne!(a, fingerprint(b"x", b"0123456789abcdef1"));
        assert_ne!(a, fingerprint(b"x", b"1123456789abcdef0"));
        assert_ne!(a, fingerprint(b"y", b"0123456789abcdef0"));
        assert_ne!(fingerprint(b"x", b""), fingerprint(b"x", b"\0"));
    }
}
