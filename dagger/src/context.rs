//! The user's entry point: a running cluster (driver + workers) and the calls to submit
//! work to it and ask about it.

use crate::driver::{self, DriverCmd, DriverConfig, DriverState, LinkEvent};
use crate::handle::{Handle, Slot};
use crate::lazy::{Collect, LazyArgKind, LazyNode};
use crate::registry;
use crate::worker::{self, WorkerSetup};
use dagger_core::{
    Arg, ChunkId, ExitCause, Options, ProcId, TaskError, TaskId, TaskSpec, WorkerId,
};
use dagger_net::launch::{LocalLauncher, WorkerProcess};
use dagger_net::{ClusterCa, Identity, MemTransport, NetError, Transport};
use dagger_proc::Topology;
use parking_lot::Mutex;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub use dagger_sched::ClusterEvent;

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
}

pub(crate) struct Inner {
    cmd: mpsc::UnboundedSender<DriverCmd>,
    next_task: AtomicU64,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    children: Arc<Mutex<Vec<WorkerProcess>>>,
    /// Local worker processes that exited (counted by the child watch).
    exited_children: Arc<std::sync::atomic::AtomicUsize>,
    identity: Option<Identity>,
    ca: Option<ClusterCa>,
    listen_addr: String,
    stopped: std::sync::atomic::AtomicBool,
}

/// How to start a context. See [`Context::builder`].
#[derive(Debug, Clone)]
pub struct ContextBuilder {
    workers: usize,
    driver_runs_tasks: Option<bool>,
    listen: String,
    config: dagger_sched::Config,
    heartbeat_timeout: Duration,
    join_timeout: Duration,
    shm: bool,
    worker_threads: Option<usize>,
    cert_dir: Option<PathBuf>,
}

impl Default for ContextBuilder {
    fn default() -> Self {
        Self {
            workers: 0,
            driver_runs_tasks: None,
            listen: "127.0.0.1:0".into(),
            config: dagger_sched::Config::default(),
            heartbeat_timeout: Duration::from_secs(5),
            join_timeout: Duration::from_secs(60),
            shm: true,
            worker_threads: None,
            cert_dir: None,
        }
    }
}

impl ContextBuilder {
    /// Local worker processes to start (re-executions of this binary). Default 0.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    /// Whether the driver's own cores run tasks. Default: only when there are no workers.
    pub fn driver_runs_tasks(mut self, yes: bool) -> Self {
        self.driver_runs_tasks = Some(yes);
        self
    }
    /// The address the driver listens on for workers (default `127.0.0.1:0`; use
    /// `0.0.0.0:7400` for workers on other hosts).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }
    /// The scheduler's settings.
    pub fn scheduler(mut self, config: dagger_sched::Config) -> Self {
        self.config = config;
        self
    }
    /// A worker silent this long is declared lost. Default 5 s.
    pub fn heartbeat_timeout(mut self, d: Duration) -> Self {
        self.heartbeat_timeout = d;
        self
    }
    /// How long to wait for the local workers to join. Default 60 s.
    pub fn join_timeout(mut self, d: Duration) -> Self {
        self.join_timeout = d;
        self
    }
    /// Whether processes on one host move large chunks through shared memory. Default on.
    pub fn shared_memory(mut self, on: bool) -> Self {
        self.shm = on;
        self
    }
    /// Thread processors per local worker (default: one per allowed core).
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = Some(n);
        self
    }
    /// Writes the cluster's CA and a worker certificate into `dir`, so that workers started
    /// by hand or by a batch system can join (`--dagger-worker --join ADDR --cert .. --key .. --ca ..`).
    pub fn cert_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cert_dir = Some(dir.into());
        self
    }

    /// Starts the context: the driver loop, the local workers; returns once they joined.
    pub fn build(self) -> Result<Context, ContextError> {
        Context::start(self)
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
        write!(f, "Context(listening on {})", self.inner.listen_addr)
    }
}

impl Context {
    /// The driver plus `n` worker processes of this executable on this host, linked by QUIC
    /// with mutual TLS. With `n == 0` the driver's own cores run the tasks.
    pub fn local(n: usize) -> Result<Context, ContextError> {
        Self::builder().workers(n).build()
    }

    /// Only this process's own cores, no worker processes.
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
        let ca = ClusterCa::generate("dagger-local")?;
        let identity = ca.issue("driver")?;
        let worker_identity = ca.issue("worker")?;
        if let Some(dir) = &b.cert_dir {
            std::fs::create_dir_all(dir).map_err(|e| ContextError::Net(NetError::Io(e)))?;
            worker_identity.write_files(dir)?;
        }
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let quic: Arc<dyn Transport> = {
            let _g = handle.enter();
            crate::transport::make(&identity)?
        };
        let listener = {
            let (quic, addr) = (quic.clone(), b.listen.clone());
            run_on(&handle, async move { quic.listen(&addr).await })
                .ok_or(ContextError::Shutdown)??
        };
        let listen_addr = listener.local_addr();
        let sched = dagger_sched::Scheduler::new(b.config.clone());
        let state = DriverState::new(
            sched,
            ev_tx.clone(),
            DriverConfig {
                heartbeat_timeout: b.heartbeat_timeout,
                shm: b.shm,
            },
        );
        {
            let _g = handle.enter();
            driver::spawn_acceptor(listener, ev_tx.clone(), false);
            handle.spawn(driver::run(state, cmd_rx, ev_rx));
        }
        let inner = Arc::new(Inner {
            cmd: cmd_tx,
            next_task: AtomicU64::new(1),
            runtime: Mutex::new(Some(runtime)),
            handle: handle.clone(),
            children: Arc::new(Mutex::new(Vec::new())),
            exited_children: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            identity: Some(identity),
            ca: Some(ca),
            listen_addr: listen_addr.clone(),
            stopped: std::sync::atomic::AtomicBool::new(false),
        });
        let ctx = Context { inner };
        let ev_tx_watch = ev_tx.clone();
        let mut expected = b.workers;
        let driver_runs = b.driver_runs_tasks.unwrap_or(b.workers == 0);
        if driver_runs {
            ctx.start_in_process_worker(quic.clone(), ev_tx, b.shm)?;
            expected += 1;
        } else {
            ctx.query(|st| st.add_driver_root())
                .ok_or(ContextError::Shutdown)?;
        }
        if b.workers > 0 {
            let mut launcher = LocalLauncher::new(listen_addr.clone(), worker_identity.clone());
            if let Some(t) = b.worker_threads {
                launcher = launcher.env("DAGGER_THREADS", t.to_string());
            }
            if !b.shm {
                launcher = launcher.env("DAGGER_SHM", "0");
            }
            let children = launcher
                .spawn(b.workers)
                .map_err(|e| ContextError::Launch(e.to_string()))?;
            ctx.inner.children.lock().extend(children);
            ctx.watch_children(ev_tx_watch);
        }
        ctx.wait_for_workers(expected, b.join_timeout)?;
        Ok(ctx)
    }

    fn start_in_process_worker(
        &self,
        quic: Arc<dyn Transport>,
        ev_tx: mpsc::UnboundedSender<LinkEvent>,
        shm: bool,
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
            driver::spawn_acceptor(listener, ev_tx, true);
        }
        let setup = WorkerSetup {
            transport: Arc::new(mem),
            join: addr,
            peer_transport: quic,
            peer_bind: "127.0.0.1:0".into(),
            shm,
            in_process: true,
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
            .spawn(move || {
                if let Err(e) = runtime.block_on(worker::run_worker(setup)) {
                    tracing::warn!(error = %e, "the driver's own worker stopped");
                }
            })
            .map_err(ContextError::Runtime)?;
        Ok(())
    }

    /// Reports local worker processes that exit, so a killed worker is declared lost at
    /// once rather than after missed heartbeats.
    fn watch_children(&self, ev_tx: mpsc::UnboundedSender<LinkEvent>) {
        // Holds the child list, not the context: the watch never keeps the context alive
        // (nor runs its final drop on the driver's runtime).
        let children = self.inner.children.clone();
        let exited_count = self.inner.exited_children.clone();
        self.inner.handle.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                let mut exited: Vec<(u32, ExitCause)> = Vec::new();
                children.lock().retain_mut(|c| match c.try_wait() {
                    Ok(Some(status)) => {
                        use std::os::unix::process::ExitStatusExt;
                        let exit = match (status.code(), status.signal()) {
                            (Some(code), _) => ExitCause::Code(code),
                            (None, Some(sig)) => ExitCause::Signal(sig),
                            (None, None) => ExitCause::Unknown,
                        };
                        exited.push((c.pid(), exit));
                        false
                    }
                    _ => true,
                });
                for (pid, exit) in exited {
                    exited_count.fetch_add(1, Ordering::Relaxed);
                    // A killed worker cleans up nothing: remove its shared-memory objects.
                    dagger_move::shm::cleanup_prefix(&format!("dagger-{pid}"));
                    if ev_tx.send(LinkEvent::ProcessExited { pid, exit }).is_err() {
                        return;
                    }
                }
            }
        });
    }

    /// Blocks until `n` workers (counting the driver's own, if it runs tasks) have joined.
    pub fn wait_for_workers(&self, n: usize, timeout: Duration) -> Result<(), ContextError> {
        let start = Instant::now();
        loop {
            let joined = self
                .query(|st| st.workers().len())
                .ok_or(ContextError::Shutdown)?;
            if joined >= n {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(ContextError::JoinTimeout {
                    expected: n,
                    joined,
                    waited: timeout,
                });
            }
            // Fail early when the local processes still alive and not yet joined can no
            // longer make up the number (one exited before joining, say).
            let exited = self.inner.exited_children.load(Ordering::Relaxed);
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
            std::thread::sleep(Duration::from_millis(5));
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
    pub fn spawn_raw<T>(
        &self,
        func: &'static str,
        args: Vec<Result<Arg, SubmitError>>,
        options: Options,
    ) -> Result<Handle<T>, SubmitError> {
        let args: Vec<Arg> = args.into_iter().collect::<Result<_, _>>()?;
        self.spawn_spec(Cow::Borrowed(func), args, options)
    }

    /// Submits one task by a function name that need not be registered in this process
    /// (e.g. a function only the workers know). Its result is fetched untyped-checked.
    pub fn spawn_by_name<T>(
        &self,
        func: &str,
        args: Vec<Arg>,
        options: Options,
    ) -> Result<Handle<T>, SubmitError> {
        self.spawn_spec(Cow::Owned(func.to_string()), args, options)
    }

    fn spawn_spec<T>(
        &self,
        func: Cow<'static, str>,
        args: Vec<Arg>,
        options: Options,
    ) -> Result<Handle<T>, SubmitError> {
        check_sizes(&args)?;
        let id = TaskId(self.inner.next_task.fetch_add(1, Ordering::Relaxed));
        let slot = Arc::new(Slot::new(
            id,
            registry::lookup(&func),
            self.inner.cmd.clone(),
        ));
        let spec = TaskSpec {
            id,
            func,
            args,
            options,
        };
        self.inner
            .cmd
            .send(DriverCmd::Spawn(spec, slot.clone()))
            .map_err(|_| SubmitError::Shutdown)?;
        Ok(Handle::new(slot, self.inner.clone()))
    }

    /// Submits a lazy graph in one batch; returns the roots' slots.
    pub(crate) fn spawn_lazy_graph(
        &self,
        roots: Vec<Arc<LazyNode>>,
    ) -> Result<Vec<Arc<Slot>>, SubmitError> {
        let mut ids: HashMap<*const LazyNode, (TaskId, Arc<Slot>)> = HashMap::new();
        let mut batch: Vec<(TaskSpec, Option<Arc<Slot>>)> = Vec::new();
        let mut keep_alive: Vec<Arc<Slot>> = Vec::new();
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
                    for a in node.args.iter().rev() {
                        if let LazyArgKind::Node(child) = &a.0 {
                            if !ids.contains_key(&Arc::as_ptr(child)) {
                                stack.push((child.clone(), false));
                            }
                        }
                    }
                    continue;
                }
                let mut args = Vec::with_capacity(node.args.len());
                for a in &node.args {
                    args.push(match &a.0 {
                        LazyArgKind::Value(v) => Arg::Value(v.clone()),
                        LazyArgKind::Node(child) => Arg::Task(ids[&Arc::as_ptr(child)].0),
                        LazyArgKind::Spawned(slot) if !slot.belongs_to(&self.inner.cmd) => {
                            return Err(SubmitError::ForeignHandle { task: slot.id });
                        }
                        LazyArgKind::Spawned(slot) => {
                            keep_alive.push(slot.clone());
                            Arg::Task(slot.id)
                        }
                        LazyArgKind::Invalid(e) => return Err(e.clone()),
                    });
                }
                check_sizes(&args)?;
                let id = TaskId(self.inner.next_task.fetch_add(1, Ordering::Relaxed));
                let slot = Arc::new(Slot::new(
                    id,
                    registry::lookup(node.func),
                    self.inner.cmd.clone(),
                ));
                let spec = TaskSpec {
                    id,
                    func: Cow::Borrowed(node.func),
                    args,
                    options: node.options.clone(),
                };
                batch.push((spec, Some(slot.clone())));
                ids.insert(key, (id, slot));
            }
        }
        let out: Vec<Arc<Slot>> = roots
            .iter()
            .map(|r| ids[&Arc::as_ptr(r)].1.clone())
            .collect();
        // Only the roots' results are wanted; inner nodes' slots are dropped here, which
        // releases their results once their consumers ran.
        self.inner
            .cmd
            .send(DriverCmd::Submit(batch))
            .map_err(|_| SubmitError::Shutdown)?;
        drop(keep_alive);
        Ok(out)
    }

    /// Runs a lazy graph (one task or a vector of them) and returns its result(s).
    pub fn collect<C: Collect>(&self, graph: C) -> Result<C::Output, CollectError> {
        let handles = graph.spawn_all(self)?;
        Ok(C::fetch_all(handles)?)
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

    /// Events of the cluster from now on: workers joined or lost, tasks retried.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<ClusterEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.query(move |st| st.subscribe(tx));
        rx
    }

    /// Counters of the scheduler (submitted, finished, running...).
    pub fn stats(&self) -> Option<dagger_sched::Stats> {
        self.query(|st| st.core.stats())
    }

    /// Where and when a task ran.
    pub fn task_info(&self, task: TaskId) -> Option<TaskInfo> {
        self.inner.task_info(task)
    }

    /// The address workers join at.
    pub fn listen_addr(&self) -> &str {
        &self.inner.listen_addr
    }

    /// Operating-system process ids of the local worker processes.
    pub fn local_worker_pids(&self) -> Vec<u32> {
        self.inner.children.lock().iter().map(|c| c.pid()).collect()
    }

    /// Stops the cluster: workers are told to exit, pending tasks fail with `Shutdown`.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// The cluster's certificate authority (to issue identities for workers started by hand).
    pub fn cluster_ca(&self) -> Option<&ClusterCa> {
        self.inner.ca.as_ref()
    }

    /// The identity the driver presents to workers.
    pub fn driver_identity(&self) -> Option<&Identity> {
        self.inner.identity.as_ref()
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
        let (tx, rx) = std::sync::mpsc::channel();
        if self.cmd.send(DriverCmd::Shutdown(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
        // Give the workers a moment to exit by themselves, then make sure they are gone.
        let mut children = std::mem::take(&mut *self.children.lock());
        let deadline = Instant::now() + Duration::from_secs(2);
        for c in &mut children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        drop(children);
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs `fut` on the context's runtime and waits for its output from the calling thread.
/// Unlike `Handle::block_on` this works from any thread, also one inside another async
/// runtime (it then blocks that thread). `None` if the runtime is shutting down.
fn run_on<F>(handle: &tokio::runtime::Handle, fut: F) -> Option<F::Output>
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

/// The largest encoded plain-value argument: well under the transport's frame limit, so
/// the message that carries it can always be sent.
const MAX_VALUE_ARG: u64 = 256 << 20;

fn check_sizes(args: &[Arg]) -> Result<(), SubmitError> {
    for a in args {
        if let Arg::Value(v) = a {
            if v.len() as u64 > MAX_VALUE_ARG {
                return Err(SubmitError::TooLarge {
                    bytes: v.len() as u64,
                    limit: MAX_VALUE_ARG,
                });
            }
        }
    }
    Ok(())
}
