//! The user's entry point: a running cluster (driver + workers) and the calls to submit
//! work to it and ask about it.

use crate::args::{ArgIn, IntoArg, TaskArg};
use crate::direct::Direct;
use crate::driver::{self, DriverCmd, DriverConfig, DriverState, LinkEvent};
use crate::handle::{Handle, Slot};
use crate::lazy::{Collect, LazyArgKind, LazyNode};
use crate::registry;
use crate::supervisor::{Children, Supervisor};
use crate::worker::{self, WorkerSetup};
use dagger_core::{Arg, ChunkId, Options, ProcId, TaskError, TaskId, TaskSpec, WorkerId};
use dagger_net::launch::{LocalLauncher, WorkerProcess};
#[cfg(feature = "quic")]
use dagger_net::ClusterCa;
use dagger_net::{Identity, MemTransport, NetError, Transport};
use dagger_proc::Topology;
use parking_lot::Mutex;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub use dagger_sched::ClusterEvent;

/// The events of a cluster from [`Context::subscribe`], in order: `recv().await` in async
/// code, `blocking_recv()` or `try_recv()` elsewhere. `recv` yields `None` once the context
/// is shut down.
pub type ClusterEvents = mpsc::UnboundedReceiver<ClusterEvent>;

/// A context could not be started or changed.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The I/O runtime could not start.
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A transport failed (listening, certificates).
    #[error("transport: {0}")]
    Net(#[from] NetError),
    /// Worker processes could not be started.
    #[error("cannot start worker processes: {0}")]
    Launch(String),
    /// Not all workers joined in time.
    #[error("only {joined} of {expected} workers joined within {waited:?}")]
    JoinTimeout {
        /// Workers expected.
        expected: usize,
        /// Workers that joined.
        joined: usize,
        /// How long we waited.
        waited: Duration,
    },
    /// The context was shut down.
    #[error("the context is shut down")]
    Shutdown,
    /// The context would link processes (local workers, a listening address, a certificate
    /// folder, or a driver that runs no tasks and waits for workers started by hand), but
    /// this build has no transport for it: the `quic` feature is off and no transport was
    /// registered with [`set_transport`](crate::set_transport).
    #[error("no transport to link processes: build `dagger` with its `quic` feature, or register one with `dagger::set_transport` before `dagger::init`")]
    NoTransport,
    /// Workers were to be added ([`Context::add_workers`]) to a context that links no
    /// processes: it listens nowhere (built without workers, listen address or
    /// certificate folder, with a driver that runs tasks).
    #[error("the context links no processes, so no worker can join it (give it a listen address, a certificate folder, or workers)")]
    NotLinked,
    /// A launcher could not start workers.
    #[error("the {kind} launcher cannot start workers: {source}")]
    Launcher {
        /// The launcher's kind (`"local"`, `"ssh"`, `"slurm"`, `"manual"`).
        kind: &'static str,
        /// What failed.
        #[source]
        source: NetError,
    },
    /// A launched process (a local worker, or the `ssh`/`srun` client of a remote one)
    /// exited before its worker joined.
    #[error("worker {name} ({launcher} launcher) ended before it joined: {exit}")]
    WorkerExited {
        /// The worker's name.
        name: String,
        /// The launcher's kind.
        launcher: &'static str,
        /// How the process ended (`Unknown` when its status was taken by another watcher).
        exit: dagger_core::ExitCause,
    },
    /// The live view ([`ContextBuilder::dashboard`]) cannot listen at its address.
    #[error("the live view cannot listen at {addr}: {source}")]
    Dashboard {
        /// The address it was given.
        addr: String,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// A builder setting is out of range or cannot be honoured.
    #[error("invalid setting `{setting}`: {reason}")]
    InvalidSetting {
        /// The builder method.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A task could not be submitted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// An argument could not be encoded.
    #[error("an argument of type `{ty}` cannot be encoded: {message}")]
    Encode {
        /// Its type.
        ty: &'static str,
        /// What the encoder said.
        message: String,
    },
    /// A handle from another context was passed as an argument.
    #[error("{task} belongs to another context")]
    ForeignHandle {
        /// The foreign task.
        task: TaskId,
    },
    /// The context was shut down.
    #[error("the context is shut down")]
    Shutdown,
    /// A handle passed as an argument holds a result of another type than the parameter
    /// (a handle that was [`cast`](crate::Handle::cast)).
    #[error("{task} yields `{found}` but the parameter is a `{expected}`")]
    TypeMismatch {
        /// The task whose handle was passed.
        task: TaskId,
        /// The parameter's type.
        expected: &'static str,
        /// The task's result type.
        found: &'static str,
    },
    /// A plain-value argument is too large to travel in one message.
    #[error("an argument of {bytes} bytes exceeds the limit of {limit} bytes; pass large data as a task's result")]
    TooLarge {
        /// Its encoded size.
        bytes: u64,
        /// The largest value argument accepted.
        limit: u64,
    },
    /// The graph was refused.
    #[error(transparent)]
    Graph(#[from] dagger_core::GraphError),
}

/// Where and when a task ran.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    /// The task.
    pub task: TaskId,
    /// The processor it ran on (last attempt).
    pub proc: Option<ProcId>,
    /// The processor as text, e.g. `thread[3]@worker-2`.
    pub processor: String,
    /// Run attempts (more than one after a retry or a lost worker).
    pub attempts: u32,
    /// Time from submission to the scheduler hearing it finished.
    pub turnaround: Option<Duration>,
    /// How long the function ran.
    pub run_time: Option<Duration>,
    /// Whether it ran on the direct lane, straight on the driver's threads and past the
    /// scheduler (see [`ContextBuilder::direct`]).
    pub direct: bool,
}

pub(crate) struct Inner {
    cmd: mpsc::UnboundedSender<DriverCmd>,
    /// Spawns waiting in `cmd` for the driver loop ([`driver::Backlog`]).
    backlog: Arc<driver::Backlog>,
    /// The direct lane, in a context that links no processes (see [`crate::direct`]).
    direct: Option<Arc<Direct>>,
    next_task: AtomicU64,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    pub(crate) children: Children,
    /// Local worker processes that exited (counted by the supervisor's exit watches;
    /// receivers are told of every change).
    exited_children: Arc<tokio::sync::watch::Sender<usize>>,
    /// Credentials, transport and address of a context that links processes.
    links: Option<Links>,
    /// What starting more workers needs (a context that links processes).
    pub(crate) launching: Option<crate::launch::Launching>,
    stopped: std::sync::atomic::AtomicBool,
    /// Where the live view listens, if one was asked for.
    dashboard: Option<String>,
    /// Whether long waits show a progress bar (decided once, at the start: asking whether
    /// stderr is a terminal is a system call, too dear for every `fetch`).
    pub(crate) progress: bool,
}

/// How to start a context. See [`Context::builder`].
#[derive(Debug, Clone)]
pub struct ContextBuilder {
    workers: usize,
    driver_runs_tasks: Option<bool>,
    listen: Option<String>,
    config: dagger_sched::Config,
    heartbeat_timeout: Duration,
    join_timeout: Duration,
    shm: bool,
    worker_threads: Option<usize>,
    cert_dir: Option<PathBuf>,
    worker_args: WorkerArgs,
    allow_mixed_builds: bool,
    respawn: bool,
    restart_budget: (u32, Duration),
    worker_memory_limit: Option<u64>,
    /// Record the timeline of every task and move.
    pub(crate) timeline: bool,
    dashboard: Option<String>,
    /// Which worker log events are forwarded (`None`: the driver's `RUST_LOG`).
    worker_logs: Option<String>,
    /// Whether long waits show a progress bar.
    progress: crate::progress::Progress,
    /// Whether tasks may take the direct lane (see [`ContextBuilder::direct`]).
    direct: bool,
}

/// Which command-line arguments local workers get.
#[derive(Debug, Clone)]
enum WorkerArgs {
    /// This process's own.
    Own,
    /// These.
    Given(Vec<std::ffi::OsString>),
    /// Only the libtest test of this name (`None`: the builder was not on a named thread).
    Test(Option<String>),
}

impl Default for ContextBuilder {
    fn default() -> Self {
        Self {
            workers: 0,
            driver_runs_tasks: None,
            listen: None,
            config: dagger_sched::Config::default(),
            heartbeat_timeout: Duration::from_millis(900),
            join_timeout: Duration::from_secs(60),
            shm: true,
            worker_threads: None,
            cert_dir: None,
            worker_args: WorkerArgs::Own,
            allow_mixed_builds: false,
            respawn: true,
            restart_budget: {
                let b = dagger_ft::RestartBudget::default();
                (b.max(), b.window())
            },
            worker_memory_limit: None,
            timeline: false,
            dashboard: None,
            worker_logs: None,
            progress: crate::progress::Progress::Auto,
            direct: true,
        }
    }
}

impl ContextBuilder {
    /// Local worker processes to start (re-executions of this binary). Default 0.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    /// Whether a context that links no processes runs its plain tasks straight on its
    /// thread processors, past the scheduler (default: yes, unless `DAGGER_DIRECT=0`).
    /// A plain task is one whose function is registered here and takes no device
    /// types, whose options are the defaults, and whose inputs are values or results of
    /// other plain tasks; it runs as it would through the scheduler, at a fraction of the
    /// cost. Any other task, and every task of a context that records a timeline or serves
    /// the live view, goes through the scheduler.
    pub fn direct(mut self, yes: bool) -> Self {
        self.direct = yes;
        self
    }
    /// Whether the driver's own cores run tasks. Default: only when there are no workers.
    pub fn driver_runs_tasks(mut self, yes: bool) -> Self {
        self.driver_runs_tasks = Some(yes);
        self
    }
    /// The address the driver listens on for workers (default `127.0.0.1:0`; use
    /// `0.0.0.0:7400` for workers on other hosts). Setting it makes the context listen even
    /// without local workers, so that workers started by hand can join.
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into());
        self
    }
    /// The scheduler's settings.
    pub fn scheduler(mut self, config: crate::SchedulerConfig) -> Self {
        self.config = config;
        self
    }
    /// A worker silent this long is declared lost. Default 900 ms (heartbeats every 225 ms), so a paused worker is lost within a second.
    pub fn heartbeat_timeout(mut self, d: Duration) -> Self {
        self.heartbeat_timeout = d;
        self
    }
    /// How long to wait for the local workers to join. Default 60 s.
    pub fn join_timeout(mut self, d: Duration) -> Self {
        self.join_timeout = d;
        self
    }
    /// Records every task's queued, dispatched, started and finished times and processor,
    /// and every move between workers, for [`Context::timeline`]. Default off. The cost is
    /// one record per task and per move, kept for the context's life.
    pub fn timeline(mut self, on: bool) -> Self {
        self.timeline = on;
        self
    }

    /// Whether `collect` and `fetch` show a progress bar (tasks done out of tasks
    /// submitted, and the rate) on standard error while they wait longer than half a
    /// second. Default [`Progress::Auto`](crate::Progress::Auto): when standard error is
    /// a terminal (checked once, when the context starts).
    pub fn progress(mut self, mode: crate::Progress) -> Self {
        self.progress = mode;
        self
    }

    /// Which log events of worker processes are forwarded to this process, as `tracing`
    /// filter directives (`RUST_LOG` syntax, e.g. `"dagger=debug,my_app=info"`); the
    /// driver emits them again under the target `dagger::worker`, with the worker and the
    /// original target as fields, so this process's subscriber shows the whole cluster.
    /// Default: this process's `RUST_LOG` when it is set, else nothing. `""` turns
    /// forwarding off. Each worker forwards at most 200 events a second (bursts of 400)
    /// and reports how many it dropped.
    pub fn worker_logs(mut self, directives: impl Into<String>) -> Self {
        self.worker_logs = Some(directives.into());
        self
    }

    /// Whether processes on one host move large chunks through shared memory. Default on.
    pub fn shared_memory(mut self, on: bool) -> Self {
        self.shm = on;
        self
    }
    /// Thread processors per local worker (default: one per allowed core). At least 1:
    /// `build` refuses 0 with [`ContextError::InvalidSetting`].
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = Some(n);
        self
    }
    /// Writes the cluster's CA and a worker certificate into `dir`, so that workers started
    /// by hand or by a batch system can join (`--dagger-worker --join ADDR --cert .. --key .. --ca ..`).
    /// Makes the context listen even without local workers. Needs the `quic` feature (the
    /// certificate authority): without it `build` fails with
    /// [`ContextError::InvalidSetting`].
    pub fn cert_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cert_dir = Some(dir.into());
        self
    }

    /// The command-line arguments (without the program name) of the local worker
    /// processes, which re-run this executable. Default: this process's own arguments, so
    /// a program whose `main` starts with [`crate::init`] turns into a worker whatever its
    /// arguments mean.
    pub fn worker_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        self.worker_args = WorkerArgs::Given(args.into_iter().map(Into::into).collect());
        self
    }

    /// Declares that this context is started by a test of a `cargo test` (libtest) binary,
    /// and must be called on that test's own thread (libtest names it after the test). The
    /// local workers then re-run the binary with only this test selected
    /// (`NAME --exact --test-threads=1`), whose first line, [`crate::init`], turns them
    /// into workers; any setup the test does before `init` (a detector, say) runs in the
    /// workers too. The builder may then be moved to and built on any thread. Without this
    /// call workers get this process's own arguments: nothing is inferred from thread
    /// names. On a thread libtest did not name, `build` fails with
    /// [`ContextError::InvalidSetting`].
    pub fn test_harness(mut self) -> Self {
        let name = std::thread::current()
            .name()
            .filter(|n| *n != "main")
            .map(str::to_owned);
        self.worker_args = WorkerArgs::Test(name);
        self
    }

    /// Accept workers whose executable is another build than the driver's (a different
    /// [build fingerprint](dagger_net::launch::build_id)), as long as their task functions
    /// agree. Default off: a worker built from other code is refused at the join, because
    /// a task of the same name and types may compute something else there. A worker can
    /// opt in on its side with `DAGGER_ALLOW_MIXED_BUILDS=1`.
    pub fn allow_mixed_builds(mut self, yes: bool) -> Self {
        self.allow_mixed_builds = yes;
        self
    }

    /// Whether a local worker process that dies (killed, crashed, out of memory, or killed
    /// by the context after it was declared lost) is replaced by a new one started the same
    /// way. Default on. The replacement joins as a new worker; subscribers see
    /// [`ClusterEvent::WorkerRestarted`], then its [`ClusterEvent::WorkerJoined`].
    /// Replacements are limited by [`ContextBuilder::restart_budget`].
    pub fn respawn(mut self, yes: bool) -> Self {
        self.respawn = yes;
        self
    }

    /// At most `max` replacements of dead local worker processes within any `window` of
    /// time; a process that dies beyond that is not replaced, and subscribers see
    /// [`ClusterEvent::RestartsExhausted`] (a crash loop ends instead of spinning). Default
    /// 10 within 60 s. `max == 0` never replaces, as `respawn(false)`.
    pub fn restart_budget(mut self, max: u32, window: Duration) -> Self {
        self.restart_budget = (max, window);
        self
    }

    /// Caps the address space of each local worker process at `bytes` (`RLIMIT_AS`; see
    /// [`LocalLauncher::memory_limit`]). A worker whose allocation fails under it aborts,
    /// which the context handles as any other process exit: its tasks run again elsewhere,
    /// and it is replaced. Counts reserved address space (thread stacks, allocator arenas)
    /// as well as used memory: leave a few hundred MiB above what the tasks need. Default:
    /// no limit. At least 64 MiB: `build` refuses less with
    /// [`ContextError::InvalidSetting`].
    pub fn worker_memory_limit(mut self, bytes: u64) -> Self {
        self.worker_memory_limit = Some(bytes);
        self
    }

    /// Serves the live view of the cluster, a web page at `http://ADDR/`, from the
    /// driver's process: the processor tree, the task stream, each worker's queue and
    /// memory, joins and losses, refreshed four times a second (JSON at `/api/state` and
    /// `/api/tasks?since=N`; see the `dashboard` module of the source).
    ///
    /// The server binds to exactly `addr` (`127.0.0.1:8787`; port 0, as in
    /// `127.0.0.1:0`, picks a free port, which [`Context::dashboard_addr`] reports). The
    /// page has no authentication and shows function names, host names and process ids:
    /// keep it on a loopback address unless every host that can reach it may see that.
    /// Bound to a loopback address, it answers only requests naming a loopback host
    /// (`127.0.0.1`, `[::1]`, `localhost`), so that a web page of another origin cannot
    /// read it through a name rebound to loopback.
    /// Without this call no page is served and no socket is opened for one. It turns on
    /// [`ContextBuilder::timeline`] recording (the page lists finished tasks from the
    /// timeline). The server keeps no context alive and stops when the context shuts
    /// down. `build` fails with [`ContextError::Dashboard`] when it cannot listen there.
    pub fn dashboard(mut self, addr: impl Into<String>) -> Self {
        self.dashboard = Some(addr.into());
        self
    }

    /// Starts the context: the driver loop, the local workers; returns once they joined.
    pub fn build(self) -> Result<Context, ContextError> {
        self.validate()?;
        Context::start(self)
    }

    fn validate(&self) -> Result<(), ContextError> {
        if self.worker_threads == Some(0) {
            return Err(ContextError::InvalidSetting {
                setting: "worker_threads",
                reason: "a worker needs at least one thread processor".into(),
            });
        }
        if matches!(self.worker_args, WorkerArgs::Test(None)) {
            return Err(ContextError::InvalidSetting {
                setting: "test_harness",
                reason:
                    "called on a thread without a test's name (call it on the test's own thread)"
                        .into(),
            });
        }
        if self
            .worker_memory_limit
            .is_some_and(|b| b < MIN_WORKER_MEMORY)
        {
            return Err(ContextError::InvalidSetting {
                setting: "worker_memory_limit",
                reason: format!(
                    "a worker needs more than {} MiB of address space",
                    MIN_WORKER_MEMORY >> 20
                ),
            });
        }
        if self.restart_budget.1.is_zero() && self.restart_budget.0 > 0 {
            return Err(ContextError::InvalidSetting {
                setting: "restart_budget",
                reason: "the window must be longer than zero".into(),
            });
        }
        if self.heartbeat_timeout.is_zero() {
            return Err(ContextError::InvalidSetting {
                setting: "heartbeat_timeout",
                reason: "must be longer than zero".into(),
            });
        }
        if !cfg!(feature = "quic") && self.cert_dir.is_some() {
            return Err(ContextError::InvalidSetting {
                setting: "cert_dir",
                reason: "certificates need the `quic` feature of `dagger` (the cluster's certificate authority)".into(),
            });
        }
        if self.links_processes() && !crate::transport::available() {
            return Err(ContextError::NoTransport);
        }
        Ok(())
    }

    /// The local launcher with this builder's worker settings, what every launcher gets
    /// from the context, and the supervisor of local worker processes.
    fn launching(
        &self,
        links: &Links,
        children: &Children,
        exited: &Arc<tokio::sync::watch::Sender<usize>>,
        ev_tx: mpsc::UnboundedSender<LinkEvent>,
        handle: &tokio::runtime::Handle,
    ) -> Result<(crate::launch::Launching, Supervisor), ContextError> {
        let mut envs = Vec::new();
        if let Some(t) = self.worker_threads {
            envs.push(("DAGGER_THREADS".to_owned(), t.to_string()));
        }
        if !self.shm {
            envs.push(("DAGGER_SHM".to_owned(), "0".to_owned()));
        }
        let args = match &self.worker_args {
            WorkerArgs::Own => None,
            WorkerArgs::Given(args) => Some(
                args.iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>(),
            ),
            WorkerArgs::Test(Some(test)) => Some(dagger_net::launch::test_harness_args(test)),
            WorkerArgs::Test(None) => {
                return Err(ContextError::InvalidSetting {
                    setting: "test_harness",
                    reason: "called on a thread without a test's name".into(),
                })
            }
        };
        let mut local =
            LocalLauncher::new(links.listen_addr.clone(), links.worker_identity.clone());
        for (k, v) in &envs {
            local = local.env(k, v);
        }
        if let Some(bytes) = self.worker_memory_limit {
            local = local.memory_limit(bytes);
        }
        // Local workers get exactly the given arguments (not necessarily UTF-8).
        local = match &self.worker_args {
            WorkerArgs::Own => local,
            WorkerArgs::Given(args) => local.args(args.iter().cloned()),
            WorkerArgs::Test(_) => local.args(args.iter().flatten().cloned()),
        };
        let budget = (self.respawn && self.restart_budget.0 > 0)
            .then(|| dagger_ft::RestartBudget::new(self.restart_budget.0, self.restart_budget.1));
        let names = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (supervisor, handle_of_supervisor) = Supervisor::new(
            local.clone(),
            budget,
            children.clone(),
            exited.clone(),
            ev_tx,
            handle.clone(),
            names.clone(),
        );
        let launching = crate::launch::Launching {
            local,
            envs,
            args,
            identity: links.worker_identity.clone(),
            listen_addr: links.listen_addr.clone(),
            names,
            supervisor: handle_of_supervisor,
            clients: Arc::new(Mutex::new(Vec::new())),
            join_timeout: self.join_timeout,
        };
        Ok((launching, supervisor))
    }

    /// Whether the context links to other processes, and so listens and needs a transport
    /// and (with QUIC) a certificate authority: it starts local workers, was given an
    /// address or a certificate folder for workers started by hand, or its driver runs no
    /// tasks (so only workers that join can run them). Otherwise the driver's own cores
    /// run every task over the in-process transport, and no socket is opened.
    fn links_processes(&self) -> bool {
        self.workers > 0
            || self.listen.is_some()
            || self.cert_dir.is_some()
            || self.driver_runs_tasks == Some(false)
    }
}

/// What a context that links processes holds: its credentials, its network transport and
/// the address workers join at.
struct Links {
    transport: Arc<dyn Transport>,
    listen_addr: String,
    /// What the driver presents to workers.
    identity: Identity,
    /// What local workers get, and what `cert_dir` receives.
    worker_identity: Identity,
    #[cfg(feature = "quic")]
    ca: ClusterCa,
}

impl Links {
    /// Makes the credentials (a fresh certificate authority with QUIC, the empty identity
    /// without), writes the worker's into the certificate folder, makes the transport and
    /// listens. Returns the listener the driver accepts workers on.
    fn open(
        b: &ContextBuilder,
        handle: &tokio::runtime::Handle,
    ) -> Result<(Links, Box<dyn dagger_net::Listener>), ContextError> {
        #[cfg(feature = "quic")]
        let (ca, identity, worker_identity) = {
            let ca = ClusterCa::generate("dagger-local")?;
            let identity = ca.issue("driver")?;
            let worker_identity = ca.issue("worker")?;
            (ca, identity, worker_identity)
        };
        #[cfg(not(feature = "quic"))]
        let (identity, worker_identity) = (Identity::empty(), Identity::empty());
        if let Some(dir) = &b.cert_dir {
            std::fs::create_dir_all(dir).map_err(|e| ContextError::Net(NetError::Io(e)))?;
            worker_identity.write_files(dir)?;
        }
        let transport = {
            let _g = handle.enter();
            crate::transport::make(&identity)?
        };
        let listener = {
            let transport = transport.clone();
            let addr = b.listen.clone().unwrap_or_else(|| DEFAULT_LISTEN.into());
            run_on(handle, async move { transport.listen(&addr).await })
                .ok_or(ContextError::Shutdown)??
        };
        let links = Links {
            transport,
            listen_addr: listener.local_addr(),
            identity,
            worker_identity,
            #[cfg(feature = "quic")]
            ca,
        };
        Ok((links, listener))
    }
}

/// A running cluster: the driver (this process) and its workers. Cheap to clone; the
/// cluster shuts down when the last clone and the last handle are dropped, or on
/// [`Context::shutdown`].
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.listen_addr() {
            Some(addr) => write!(f, "Context(listening on {addr})"),
            None => f.write_str("Context(in-process)"),
        }
    }
}

impl Context {
    /// The driver plus `n` worker processes of this executable on this host, linked by QUIC
    /// with mutual TLS (or the transport registered with [`set_transport`](crate::set_transport)).
    /// With `n == 0` the driver's own cores run the tasks, as with [`Context::threads`].
    /// Without the `quic` feature and without a registered transport, `n > 0` fails with
    /// [`ContextError::NoTransport`].
    pub fn local(n: usize) -> Result<Context, ContextError> {
        Self::builder().workers(n).build()
    }

    /// Only this process's own cores, no worker processes: tasks run on thread processors
    /// of this process, over the in-process transport. Opens no socket and makes no
    /// certificate authority; works in every feature configuration.
    pub fn threads() -> Result<Context, ContextError> {
        Self::builder().build()
    }

    /// A builder with every setting.
    pub fn builder() -> ContextBuilder {
        ContextBuilder::default()
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    fn start(b: ContextBuilder) -> Result<Context, ContextError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dagger-driver")
            .enable_all()
            .build()
            .map_err(ContextError::Runtime)?;
        let handle = runtime.handle().clone();
        let (links, listener) = if b.links_processes() {
            let (links, listener) = Links::open(&b, &handle)?;
            (Some(links), Some(listener))
        } else {
            (None, None)
        };
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let sched = dagger_sched::Scheduler::new(b.config.clone());
        let state = DriverState::new(
            sched,
            ev_tx.clone(),
            DriverConfig {
                heartbeat_timeout: b.heartbeat_timeout,
                shm: b.shm,
                // The live view shows the timeline's finished tasks.
                record: b.timeline || b.dashboard.is_some(),
                worker_log_filter: b
                    .worker_logs
                    .clone()
                    .or_else(|| std::env::var("RUST_LOG").ok())
                    .unwrap_or_default(),
            },
        );
        let backlog = state.backlog.clone();
        {
            let _g = handle.enter();
            if let Some(listener) = listener {
                driver::spawn_acceptor(listener, ev_tx.clone(), false, b.allow_mixed_builds);
            }
            handle.spawn(driver::run(state, cmd_rx, ev_rx));
        }
        // Before any worker joins, so that the page lists every join.
        let dashboard = match &b.dashboard {
            Some(addr) => Some(crate::dashboard::start(addr, cmd_tx.clone(), &handle)?.to_string()),
            None => None,
        };
        let children: Children = Arc::new(Mutex::new(Vec::new()));
        let exited_children = Arc::new(tokio::sync::watch::Sender::new(0));
        // A context that links processes can start workers at any time: it gets a
        // supervisor for its local ones from the start.
        let (launching, supervisor) = match &links {
            Some(links) => {
                let (launching, supervisor) =
                    b.launching(links, &children, &exited_children, ev_tx.clone(), &handle)?;
                (Some(launching), Some(supervisor))
            }
            None => (None, None),
        };
        let direct = (b.direct
            && links.is_none()
            && !b.timeline
            && b.dashboard.is_none()
            && crate::direct::allowed_by_env())
        .then(Direct::new);
        let inner = Arc::new(Inner {
            cmd: cmd_tx,
            backlog,
            direct: direct.clone(),
            next_task: AtomicU64::new(1),
            runtime: Mutex::new(Some(runtime)),
            handle: handle.clone(),
            children,
            exited_children,
            links,
            launching,
            stopped: std::sync::atomic::AtomicBool::new(false),
            dashboard,
            progress: b.progress.enabled(),
        });
        let ctx = Context { inner };
        if let Some(supervisor) = supervisor {
            ctx.query(move |st| st.supervise(supervisor))
                .ok_or(ContextError::Shutdown)?;
        }
        let deadline = tokio::time::Instant::now() + b.join_timeout;
        let mut expected = b.workers;
        let driver_runs = b.driver_runs_tasks.unwrap_or(b.workers == 0);
        if driver_runs {
            let net = ctx.inner.links.as_ref().map(|l| {
                let requested = b.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
                (l.transport.clone(), peer_bind_for(requested))
            });
            ctx.start_in_process_worker(net, ev_tx, b.shm, direct)?;
            expected += 1;
        } else {
            ctx.query(|st| st.add_driver_root())
                .ok_or(ContextError::Shutdown)?;
        }
        if let (true, Some(launcher)) = (b.workers > 0, ctx.local_launcher()) {
            // The same path as `add_workers`; a process that exits before it joined is a
            // launch failure of the context.
            ctx.add_workers_until(&launcher, b.workers, deadline, b.join_timeout)
                .map_err(|e| match e {
                    ContextError::Launcher { source, .. } => {
                        ContextError::Launch(source.to_string())
                    }
                    e @ ContextError::WorkerExited { .. } => ContextError::Launch(e.to_string()),
                    e => e,
                })?;
        }
        ctx.wait_for_workers(expected, b.join_timeout)?;
        if let Some(d) = &ctx.inner.direct {
            // The worker joined; it attaches its processors right after the welcome.
            d.wait_attached(std::time::Instant::now() + b.join_timeout);
        }
        // Started: from now on a local process that dies is replaced, not a launch failure.
        ctx.query(|st| st.arm_supervisor())
            .ok_or(ContextError::Shutdown)?;
        Ok(ctx)
    }

    /// Starts the worker that runs tasks on the driver's own cores. It talks to the driver
    /// over an in-process link; its peers (other workers) reach it over `net`, the network
    /// transport and the address to listen at, or, when the context links no processes,
    /// over the in-process transport.
    fn start_in_process_worker(
        &self,
        net: Option<(Arc<dyn Transport>, String)>,
        ev_tx: mpsc::UnboundedSender<LinkEvent>,
        shm: bool,
        direct: Option<Arc<Direct>>,
    ) -> Result<(), ContextError> {
        let mem = MemTransport::new();
        let listener = {
            let mem = mem.clone();
            run_on(&self.inner.handle, async move { mem.listen("mem:0").await })
                .ok_or(ContextError::Shutdown)??
        };
        let addr = listener.local_addr();
        {
            let _g = self.inner.handle.enter();
            // The driver's own worker is this very build.
            driver::spawn_acceptor(listener, ev_tx, true, true);
        }
        let (peer_transport, peer_bind): (Arc<dyn Transport>, String) = match net {
            Some(net) => net,
            None => (Arc::new(mem.clone()), "mem:0".into()),
        };
        let setup = WorkerSetup {
            transport: Arc::new(mem),
            join: addr,
            peer_transport,
            peer_bind,
            shm,
            in_process: true,
            name: String::new(),
            direct,
        };
        // The worker's I/O (decoding runs, batching results) gets a thread and runtime of
        // its own, so the driver loop's thread only schedules. It ends when the driver
        // says shutdown or its link closes.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ContextError::Runtime)?;
        std::thread::Builder::new()
            .name("dagger-local-io".into())
            .spawn(move || match runtime.block_on(worker::run_worker(setup)) {
                Ok(worker::WorkerEnd::Shutdown) => {}
                Ok(worker::WorkerEnd::LinkLost { why, .. }) => {
                    tracing::warn!(error = %why, "the driver's own worker stopped")
                }
                Err(e) => tracing::warn!(error = %e, "the driver's own worker stopped"),
            })
            .map_err(ContextError::Runtime)?;
        Ok(())
    }

    /// Blocks until `n` workers (counting the driver's own, if it runs tasks) have joined,
    /// or `timeout` passed. Wakes on each join, loss and local process exit (no polling);
    /// fails early with [`ContextError::Launch`] when the local processes still alive and
    /// not yet joined can no longer make up the number (one exited before joining, say).
    pub fn wait_for_workers(&self, n: usize, timeout: Duration) -> Result<(), ContextError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribed before the first count: the driver loop handles the subscription
        // before the count query, so no join between the two is missed.
        let mut events = self.subscribe();
        let mut exits = self.inner.exited_children.subscribe();
        loop {
            let joined = self
                .query(|st| st.workers().len())
                .ok_or(ContextError::Shutdown)?;
            if joined >= n {
                return Ok(());
            }
            let exited = *exits.borrow_and_update();
            if exited > 0 {
                let joined_pids: std::collections::HashSet<u32> = self
                    .query(|st| st.core.topology().workers().map(|w| w.pid).collect())
                    .unwrap_or_default();
                let pending = self
                    .inner
                    .children
                    .lock()
                    .iter_mut()
                    .filter_map(|c| {
                        let alive = matches!(c.try_wait(), Ok(None));
                        (alive && !joined_pids.contains(&c.pid())).then_some(())
                    })
                    .count();
                if joined + pending < n {
                    return Err(ContextError::Launch(format!(
                        "{exited} local worker process(es) exited; {joined} joined and {pending} may still join, {n} wanted"
                    )));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ContextError::JoinTimeout {
                    expected: n,
                    joined,
                    waited: timeout,
                });
            }
            (events, exits) = wait_for_change(&self.inner.handle, events, exits, deadline)?;
        }
    }

    /// Runs `f` inside the driver loop and returns its result (None if shut down).
    pub(crate) fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DriverState) -> R + Send + 'static,
    ) -> Option<R> {
        self.inner.query(f)
    }

    /// Submits one task by function name; used by `#[dagger::task]`'s generated code.
    #[doc(hidden)]
    pub fn spawn_args<T, const N: usize>(
        &self,
        func: &'static str,
        args: [TaskArg; N],
        options: Options,
    ) -> Result<Handle<T>, SubmitError> {
        let args: Args = args.into_iter().map(|a| a.0).collect();
        self.spawn_spec(Cow::Borrowed(func), args, options)
    }

    /// A value as a handle: encoded once, here, and then kept by the cluster like a task's
    /// result, so that any number of tasks can take `&handle` as an argument without each
    /// carrying (and encoding) its own copy. Workers fetch it as they fetch any input, once
    /// per process that needs it; it is released with its last handle. Use it for a large
    /// constant (a matrix, a lookup table) shared by many tasks.
    ///
    /// ```no_run
    /// # use dagger::prelude::*;
    /// # #[dagger::task] fn score(table: Vec<f64>, i: u64) -> f64 { table[i as usize] }
    /// # fn main() -> anyhow::Result<()> {
    /// let ctx = Context::threads()?;
    /// let table = ctx.put(&vec![0.5_f64; 1 << 20])?;
    /// let scores: Vec<_> = (0..1000).map(|i| score::spawn(&ctx, &table, i)).collect::<Result<_, _>>()?;
    /// # Ok(()) }
    /// ```
    pub fn put<T: Serialize>(&self, value: &T) -> Result<Handle<T>, SubmitError> {
        let arg = IntoArg::<&T>::into_arg(value, self)?;
        let args: Args = std::iter::once(arg.0).collect();
        self.spawn_spec(Cow::Borrowed(registry::PUT), args, Options::default())
    }

    /// Submits one task by a function name that need not be registered in this process
    /// (e.g. a function only the workers know). Its result is fetched untyped-checked.
    pub fn spawn_by_name<T>(
        &self,
        func: &str,
        args: Vec<Arg>,
        options: Options,
    ) -> Result<Handle<T>, SubmitError> {
        let lane = self.inner.direct.as_deref();
        let slot = |t: TaskId| lane.and_then(|d| d.slot(t));
        let args: Args = args
            .into_iter()
            .map(|a| ArgIn::from_wire(a, &slot))
            .collect();
        self.spawn_spec(Cow::Owned(func.to_string()), args, options)
    }

    fn spawn_spec<T>(
        &self,
        func: Cow<'static, str>,
        args: Args,
        options: Options,
    ) -> Result<Handle<T>, SubmitError> {
        check_sizes(&args)?;
        let id = TaskId(self.inner.next_task.fetch_add(1, Ordering::Relaxed));
        let f = match &func {
            Cow::Borrowed(name) => registry::lookup_static(name),
            Cow::Owned(name) => registry::lookup(name),
        };
        let args = match &self.inner.direct {
            Some(direct) => match direct.spawn(id, f, args, &options, &self.inner.cmd) {
                Ok(slot) => return Ok(Handle::new(slot, self.inner.clone())),
                Err(args) => args,
            },
            None => args,
        };
        let mut inputs = Vec::new();
        let args = wire_args(args, &mut inputs);
        let mut slot = Slot::new(id, f, self.inner.cmd.clone());
        slot.lane = self.inner.direct.clone();
        let slot = Arc::new(slot);
        let spec = TaskSpec {
            id,
            func,
            args,
            options,
        };
        match &self.inner.direct {
            // It may take results of direct tasks.
            Some(direct) => direct
                .submit(&self.inner.cmd, vec![(spec, Some(slot.clone()))], inputs)
                .map_err(|()| SubmitError::Shutdown)?,
            None => {
                self.inner.backlog.admit();
                self.inner
                    .cmd
                    .send(DriverCmd::Spawn(spec, Arc::downgrade(&slot)))
                    .map_err(|_| SubmitError::Shutdown)?
            }
        }
        Ok(Handle::new(slot, self.inner.clone()))
    }

    /// One argument of a lazy task (or one part of a gathered one) as submitted, given
    /// the slots of the graph's nodes submitted before it.
    fn lazy_part(
        &self,
        a: &LazyArgKind,
        ids: &HashMap<*const LazyNode, Arc<Slot>>,
    ) -> Result<ArgIn, SubmitError> {
        Ok(match a {
            LazyArgKind::Value(v) => ArgIn::Value(v.clone()),
            LazyArgKind::Node(child) => ArgIn::Task(ids[&Arc::as_ptr(child)].clone()),
            LazyArgKind::Spawned(slot) if !slot.belongs_to(&self.inner.cmd) => {
                return Err(SubmitError::ForeignHandle { task: slot.id });
            }
            LazyArgKind::Spawned(slot) => ArgIn::Task(slot.clone()),
            LazyArgKind::Invalid(e) => return Err(e.clone()),
            LazyArgKind::Gather(_) => unreachable!("gathered parts do not nest"),
        })
    }

    /// Submits a lazy graph in one batch; returns the roots' slots.
    pub(crate) fn spawn_lazy_graph(
        &self,
        roots: Vec<Arc<LazyNode>>,
    ) -> Result<Vec<Arc<Slot>>, SubmitError> {
        let mut ids: HashMap<*const LazyNode, Arc<Slot>> = HashMap::new();
        let mut batch: Vec<(TaskSpec, Option<Arc<Slot>>)> = Vec::new();
        // The direct tasks that tasks of the batch take (see `Direct::submit`); they also
        // keep those tasks' results until the batch is submitted.
        let mut inputs: Vec<Arc<Slot>> = Vec::new();
        // Iterative post-order walk: children before parents.
        for root in &roots {
            let mut stack: Vec<(Arc<LazyNode>, bool)> = vec![(root.clone(), false)];
            while let Some((node, expanded)) = stack.pop() {
                let key = Arc::as_ptr(&node);
                if ids.contains_key(&key) {
                    continue;
                }
                if !expanded {
                    stack.push((node.clone(), true));
                    let children: Vec<&Arc<LazyNode>> =
                        node.args.iter().flat_map(|a| a.0.children()).collect();
                    for child in children.into_iter().rev() {
                        if !ids.contains_key(&Arc::as_ptr(child)) {
                            stack.push((child.clone(), false));
                        }
                    }
                    continue;
                }
                let mut args = Args::with_capacity(node.args.len());
                for a in &node.args {
                    args.push(match &a.0 {
                        LazyArgKind::Gather(parts) => {
                            let mut ps = Vec::with_capacity(parts.len());
                            for p in parts {
                                ps.push(self.lazy_part(p, &ids)?);
                            }
                            ArgIn::Gather(ps)
                        }
                        one => self.lazy_part(one, &ids)?,
                    });
                }
                check_sizes(&args)?;
                let id = TaskId(self.inner.next_task.fetch_add(1, Ordering::Relaxed));
                let f = registry::lookup(node.func);
                // A plain node runs on the direct lane as soon as its inputs are there.
                let args = match &self.inner.direct {
                    Some(direct) => {
                        match direct.spawn(id, f, args, &node.options, &self.inner.cmd) {
                            Ok(slot) => {
                                ids.insert(key, slot);
                                continue;
                            }
                            Err(args) => args,
                        }
                    }
                    None => args,
                };
                let args = wire_args(args, &mut inputs);
                let mut slot = Slot::new(id, f, self.inner.cmd.clone());
                slot.lane = self.inner.direct.clone();
                let slot = Arc::new(slot);
                let spec = TaskSpec {
                    id,
                    func: Cow::Borrowed(node.func),
                    args,
                    options: node.options.clone(),
                };
                batch.push((spec, Some(slot.clone())));
                ids.insert(key, slot);
            }
        }
        let out: Vec<Arc<Slot>> = roots.iter().map(|r| ids[&Arc::as_ptr(r)].clone()).collect();
        // Only the roots' results are wanted; inner nodes' slots are dropped here, which
        // releases their results once their consumers ran.
        match &self.inner.direct {
            // It may take results of direct tasks.
            Some(direct) => direct
                .submit(&self.inner.cmd, batch, inputs)
                .map_err(|()| SubmitError::Shutdown)?,
            None => self
                .inner
                .cmd
                .send(DriverCmd::Submit(batch))
                .map_err(|_| SubmitError::Shutdown)?,
        }
        Ok(out)
    }

    /// The context an `Inner` belongs to (a handle's way back to it).
    pub(crate) fn from_inner(inner: Arc<Inner>) -> Context {
        Context { inner }
    }

    /// Whether long waits show a progress bar.
    pub(crate) fn shows_progress(&self) -> bool {
        self.inner.progress
    }

    /// Runs a lazy graph (one task or a vector of them) and returns its result(s).
    pub fn collect<C: Collect>(&self, graph: C) -> Result<C::Output, CollectError> {
        let handles = graph.spawn_all(self)?;
        Ok(crate::progress::while_waiting(self, || {
            C::fetch_all(handles)
        })?)
    }

    /// Starts a lazy graph and returns its handles at once, to wait for later.
    pub fn spawn_graph<C: Collect>(&self, graph: C) -> Result<C::Handles, SubmitError> {
        graph.spawn_all(self)
    }

    /// The processor tree of every process of the cluster, with shortcut edges.
    pub fn topology(&self) -> Topology {
        self.query(|st| st.core.topology().clone())
            .unwrap_or_default()
    }

    /// The workers now in the cluster (the driver's own process included if it runs tasks).
    pub fn workers(&self) -> Vec<WorkerId> {
        self.query(|st| st.workers()).unwrap_or_default()
    }

    /// Events of the cluster from now on: workers joined or lost, tasks retried, local
    /// worker processes replaced by the supervisor or not replaced (restart budget spent).
    pub fn subscribe(&self) -> ClusterEvents {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.query(move |st| st.subscribe(tx));
        rx
    }

    /// Counters of the scheduler (submitted, finished, running...).
    pub fn stats(&self) -> Option<crate::Stats> {
        let mut stats = self.query(|st| st.core.stats())?;
        if let Some(d) = &self.inner.direct {
            let (submitted, finished, failed) = d.counts();
            stats.submitted += submitted;
            stats.finished += finished;
            stats.failed += failed;
        }
        Some(stats)
    }

    /// Where and when a task ran.
    pub fn task_info(&self, task: TaskId) -> Option<TaskInfo> {
        self.inner.task_info(task)
    }

    /// The address workers join at; `None` when the context links no processes (as
    /// [`Context::threads`]) and so listens nowhere.
    pub fn listen_addr(&self) -> Option<&str> {
        self.inner.links.as_ref().map(|l| l.listen_addr.as_str())
    }

    /// The address the live view listens at (the port chosen when
    /// [`ContextBuilder::dashboard`] asked for port 0); `None` when none was asked for.
    /// The page is `http://ADDR/`.
    pub fn dashboard_addr(&self) -> Option<String> {
        self.inner.dashboard.clone()
    }

    /// Operating-system process ids of the local worker processes now running (the
    /// supervisor's replacements included; a process leaves the list once it exited).
    pub fn local_worker_pids(&self) -> Vec<u32> {
        self.inner.children.lock().iter().map(|c| c.pid()).collect()
    }

    /// Stops the cluster: workers are told to exit, pending tasks fail with `Shutdown`.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// The cluster's certificate authority (to issue identities for workers started by
    /// hand); `None` when the context links no processes (as [`Context::threads`]).
    #[cfg(feature = "quic")]
    pub fn cluster_ca(&self) -> Option<&ClusterCa> {
        self.inner.links.as_ref().map(|l| &l.ca)
    }

    /// The identity the driver presents to workers; `None` when the context links no
    /// processes, or when it has no certificate authority (without the `quic` feature the
    /// transport gets [`Identity::empty`]).
    pub fn driver_identity(&self) -> Option<&Identity> {
        self.inner
            .links
            .as_ref()
            .map(|l| &l.identity)
            .filter(|id| !id.is_empty())
    }
}

/// `collect` failed: the graph could not be submitted, or a task failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The graph could not be submitted.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// A task of the graph failed.
    #[error(transparent)]
    Task(#[from] TaskError),
}

impl Inner {
    /// The driver's I/O runtime.
    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    pub(crate) fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DriverState) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.cmd
            .send(DriverCmd::Query(Box::new(move |st| {
                let _ = tx.send(f(st));
            })))
            .ok()?;
        rx.recv().ok()
    }

    pub(crate) fn task_info(&self, task: TaskId) -> Option<TaskInfo> {
        if let Some(lane) = &self.direct {
            if let Some(slot) = lane.slot(task) {
                return slot.direct()?.info(lane, task);
            }
        }
        self.query(move |st| {
            let i = st.core.task_info(task)?;
            let processor = match i.proc {
                Some(p) => match st.core.topology().proc(p) {
                    Some(info) => format!("{}[{}]@{}", info.kind, p.index, p.worker),
                    None => format!("{p}"),
                },
                None => "-".into(),
            };
            Some(TaskInfo {
                task,
                proc: i.proc,
                processor,
                attempts: i.attempts,
                turnaround: i.finished.map(|f| f.saturating_sub(i.submitted)),
                run_time: i.run_ns.map(Duration::from_nanos),
                direct: false,
            })
        })
        .flatten()
    }

    pub(crate) async fn fetch_chunk(
        &self,
        chunk: ChunkId,
        holders: Vec<WorkerId>,
    ) -> Result<Vec<u8>, TaskError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(DriverCmd::FetchChunk {
                chunk,
                holders,
                reply: tx,
            })
            .map_err(|_| TaskError::Shutdown { task: chunk.task() })?;
        rx.await
            .map_err(|_| TaskError::Shutdown { task: chunk.task() })?
    }

    pub(crate) fn fetch_chunk_blocking(
        &self,
        chunk: ChunkId,
        holders: Vec<WorkerId>,
    ) -> Result<Vec<u8>, TaskError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(DriverCmd::FetchChunk {
                chunk,
                holders,
                reply: tx,
            })
            .map_err(|_| TaskError::Shutdown { task: chunk.task() })?;
        // Not `blocking_recv`: that panics when called from inside an async runtime.
        match run_on(&self.handle, rx) {
            Some(Ok(result)) => result,
            _ => Err(TaskError::Shutdown { task: chunk.task() }),
        }
    }

    fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(d) = &self.direct {
            d.close();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        if self.cmd.send(DriverCmd::Shutdown(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
        // Give the workers (and the clients of remote ones, which end with them) a moment
        // to exit by themselves, then make sure they are gone.
        let mut children = std::mem::take(&mut *self.children.lock());
        if let Some(l) = &self.launching {
            children.append(&mut l.clients.lock());
        }
        self.wait_for_exits(&children, CHILD_EXIT_GRACE);
        // Dropping a `WorkerProcess` kills it if it is still running (a client gets a
        // moment to end its remote worker), and reaps it.
        drop(children);
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_background();
        }
    }

    /// Waits until every one of `children` has exited, or `grace` has passed: one task on
    /// the I/O runtime awaits their exit notifications (pidfds), no polling.
    fn wait_for_exits(&self, children: &[WorkerProcess], grace: Duration) {
        if children.is_empty() {
            return;
        }
        let watches: Vec<_> = children.iter().map(WorkerProcess::exit_watch).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            for watch in watches {
                if let Err(e) = watch.wait().await {
                    tracing::warn!(error = %e, "cannot watch a local worker process exit");
                }
            }
            let _ = tx.send(());
        });
        // Not awaited on the runtime: `shutdown` may run on any thread, the driver's too
        // (the bound then still holds: the task cannot run and the wait times out).
        let _ = rx.recv_timeout(grace);
    }
}

/// Where the driver listens for workers unless told otherwise.
const DEFAULT_LISTEN: &str = "127.0.0.1:0";

/// Where the driver's own worker listens for its peers, given where the driver listens for
/// workers: the same address with port 0 (`0.0.0.0:7400` → `0.0.0.0:0`, `mem:3` →
/// `mem:0`), so that whoever can reach the driver can reach it; `127.0.0.1:0` for an
/// address of another form.
fn peer_bind_for(listen: &str) -> String {
    match listen.rsplit_once(':') {
        // The worker names an unspecified address by this host's name to its peers, which
        // it does for IPv4's only.
        Some(("[::]", _)) => "0.0.0.0:0".into(),
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{host}:0")
        }
        _ => DEFAULT_LISTEN.into(),
    }
}

/// The smallest address-space limit accepted for a local worker process.
const MIN_WORKER_MEMORY: u64 = 64 << 20;

/// How long local worker processes get to exit by themselves at shutdown before they are
/// killed.
const CHILD_EXIT_GRACE: Duration = Duration::from_secs(2);

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs `fut` on the context's runtime and waits for its output from the calling thread.
/// Unlike `Handle::block_on` this works from any thread, also one inside another async
/// runtime (it then blocks that thread). `None` if the runtime is shutting down.
pub(crate) fn run_on<F>(handle: &tokio::runtime::Handle, fut: F) -> Option<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().ok()
}

/// Blocks until the next cluster event, a change of what `exits` watches (local processes
/// that exited), or `deadline`, and hands both receivers back; [`ContextError::Shutdown`] once the context
/// stopped (its event stream or exit count ended).
pub(crate) fn wait_for_change<T: Send + Sync + 'static>(
    handle: &tokio::runtime::Handle,
    mut events: ClusterEvents,
    mut exits: tokio::sync::watch::Receiver<T>,
    deadline: tokio::time::Instant,
) -> Result<(ClusterEvents, tokio::sync::watch::Receiver<T>), ContextError> {
    let (events, exits, live) = run_on(handle, async move {
        let live = tokio::select! {
            e = events.recv() => e.is_some(),
            c = exits.changed() => c.is_ok(),
            () = tokio::time::sleep_until(deadline) => true,
        };
        (events, exits, live)
    })
    .ok_or(ContextError::Shutdown)?;
    if live {
        Ok((events, exits))
    } else {
        Err(ContextError::Shutdown)
    }
}

/// The largest encoded plain-value argument: well under the transport's frame limit, so
/// the message that carries it can always be sent.
const MAX_VALUE_ARG: u64 = 256 << 20;

fn check_sizes(args: &[ArgIn]) -> Result<(), SubmitError> {
    for a in args {
        let bytes = a.value_bytes();
        if bytes > MAX_VALUE_ARG {
            return Err(SubmitError::TooLarge {
                bytes,
                limit: MAX_VALUE_ARG,
            });
        }
    }
    Ok(())
}

/// The wire form of a task's arguments (see [`ArgIn::into_wire`]), in a vector of exactly
/// their number. (Collected from an iterator it would start at four: a buffer too large
/// for glibc's fast bins, whose free on the driver's thread, where the scheduler drops it,
/// then takes the allocator's lock against the spawning thread.)
fn wire_args(args: Args, taken: &mut Vec<Arc<Slot>>) -> Vec<Arg> {
    let mut wire = Vec::with_capacity(args.len());
    for a in args {
        wire.push(a.into_wire(taken));
    }
    wire
}

/// A task's arguments as spawned: most tasks take a few, held inline.
pub(crate) type Args = smallvec::SmallVec<[ArgIn; 3]>;

#[cfg(test)]
mod tests {
    use super::peer_bind_for;

    #[test]
    fn the_driver_s_worker_listens_for_peers_where_the_driver_listens() {
        assert_eq!(peer_bind_for("127.0.0.1:0"), "127.0.0.1:0");
        assert_eq!(peer_bind_for("0.0.0.0:7400"), "0.0.0.0:0");
        assert_eq!(peer_bind_for("[::1]:7400"), "[::1]:0");
        assert_eq!(peer_bind_for("[::]:7400"), "0.0.0.0:0");
        assert_eq!(peer_bind_for("mem:3"), "mem:0");
        assert_eq!(peer_bind_for("/run/dagger.sock"), "127.0.0.1:0");
        assert_eq!(peer_bind_for("host:"), "127.0.0.1:0");
    }
}
