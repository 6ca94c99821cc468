//! Starting worker processes, and recognising that this process is one.
//!
//! A worker is a copy of the driver's own executable started in one of two ways:
//!
//! - By [`LocalLauncher`]: the environment variables [`ENV_JOIN`], [`ENV_IDENTITY_FD`] and
//!   [`ENV_NAME`], and an inherited pipe. The launcher writes the worker's [`Identity`]
//!   (private key included) into the pipe, never into the environment or the command line,
//!   where every process the worker starts, and `/proc/<pid>/environ`, would show it. The
//!   launcher keeps the pipe's write end open for as long as its process lives, so the
//!   worker sees end-of-file on it when the driver *process* is gone (see [`DriverLink`]).
//! - By hand or by a batch system: the command line
//!   `--dagger-worker --join ADDR --cert FILE --key FILE --ca FILE [--name N]`.
//!
//! Which arguments a locally launched worker gets is explicit: this process's own
//! arguments by default, or those set with [`LocalLauncher::args`] (for a test of a
//! `cargo test` binary, [`test_harness_args`]). Nothing is inferred from thread names.
//!
//! Every process also has a [`build_id`]: a fingerprint of its executable, which the
//! driver compares at the join so that a worker built from other code is refused unless
//! mixing builds was allowed on purpose ([`ENV_ALLOW_MIXED_BUILDS`] on the worker's side).

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
    /// The pipe from the launcher, when a [`LocalLauncher`] started this process: it
    /// reaches end-of-file when the launcher's process is gone.
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
    let identity = Identity::from_files(
        Path::new(required("--cert")?),
        Path::new(required("--key")?),
        Path::new(required("--ca")?),
    )?;
    let name = value("--name")?.map(str::to_owned);
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
/// turns into a worker.
pub fn test_harness_args(test: &str) -> Vec<String> {
    vec![
        test.to_owned(),
        "--exact".to_owned(),
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
    use std::io::Read;
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
    let mut f = std::fs::File::from(owned);
    let mut line = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad(format!("reading the identity pipe: {e}"))),
        };
        line.extend_from_slice(&buf[..n]);
        if line.last() == Some(&b'\n') || line.len() > MAX_IDENTITY_LINE {
            break;
        }
    }
    if line.pop() != Some(b'\n') {
        return Err(bad(
            "the launcher's pipe closed before a whole identity arrived (did the driver exit?)"
                .into(),
        ));
    }
    let text = String::from_utf8(line).map_err(|_| bad("the identity is not UTF-8".into()))?;
    let identity = Identity::from_text(&text)?;
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
            _driver_link: writer,
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

/// A running worker process started by [`LocalLauncher`]. Dropping it kills and reaps the
/// process.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
    name: String,
    reaped: Option<ExitStatus>,
    /// The pipe's write end: open while this process lives (see [`DriverLink`]).
    #[cfg(unix)]
    _driver_link: std::fs::File,
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

    /// Kills the process (SIGKILL on Unix). Does nothing if it already exited; does not wait.
    pub fn kill(&mut self) -> Result<(), NetError> {
        if self.reaped.is_some() {
            return Ok(());
        }
        match self.child.kill() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
            Err(e) => Err(e.into()),
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
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

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
