//! The supervisor of local worker processes, as Dask's nanny or Ray's raylet: it watches
//! every process the context started, reports each exit to the driver loop at once, starts a
//! replacement for one that died while a restart budget allows it, and kills a local process
//! that the driver declared lost while it still runs (a paused or hung one), so that nothing
//! of ours lingers and its exit brings the replacement. The policy, how many restarts within
//! what time, is `dagger_ft::RestartBudget`'s; this is the shell that carries it out.
//!
//! Processes that `Context::add_workers` starts later are adopted through a
//! [`SupervisorHandle`] from any thread; an adopted process is not replaced until it has
//! joined (an exit before that is the call's launch failure).
//!
//! It lives in the driver loop's state and runs on the loop: a replacement is started
//! there (one process spawn, a few milliseconds), so `WorkerRestarted` reaches subscribers
//! after the `WorkerLost` of the process it replaces and before the replacement's
//! `WorkerJoined`.

use crate::driver::LinkEvent;
use dagger_core::ExitCause;
use dagger_ft::RestartBudget;
use dagger_net::launch::{LocalLauncher, WorkerProcess};
use dagger_net::NetError;
use dagger_sched::ClusterEvent;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The local worker processes of a context, shared by the context (pids, shutdown), the
/// exit watches and the supervisor.
pub(crate) type Children = Arc<Mutex<Vec<WorkerProcess>>>;

/// Starts, watches and replaces the local worker processes of one context.
pub(crate) struct Supervisor {
    /// What the supervisor shares with the context (see [`SupervisorHandle`]).
    shared: Arc<Shared>,
    /// `None`: processes that die are not replaced.
    budget: Option<RestartBudget>,
    /// Replaces processes only once the context started: a process that dies before the
    /// context is built is a launch failure, reported to the caller of `build`.
    armed: bool,
    /// This host's name: only workers that report it may be processes of ours.
    host: String,
    /// Processes removed from the pool on purpose (drained): their exit is not replaced.
    retired: std::collections::HashSet<u32>,
}

/// The part of the supervisor that the context uses from any thread: it puts processes
/// that `Context::add_workers` started under supervision.
struct Shared {
    /// Starts replacements of processes started before supervision, or adopted without a
    /// launcher of their own.
    launcher: Arc<LocalLauncher>,
    children: Children,
    /// Counts exits (the context's `wait_for_workers` wakes on it).
    exited: Arc<tokio::sync::watch::Sender<usize>>,
    ev_tx: mpsc::UnboundedSender<LinkEvent>,
    runtime: tokio::runtime::Handle,
    /// The number in the next worker's name (`worker-N`), shared with the context so that
    /// names are unique per context.
    names: Arc<AtomicUsize>,
    adopted: Mutex<Adopted>,
}

/// Processes adopted after the supervisor was made.
#[derive(Default)]
struct Adopted {
    /// The launcher that started each process (and starts its replacement).
    launchers: HashMap<u32, Arc<LocalLauncher>>,
    /// Processes not yet seen joined: one that exits is a launch failure, reported to the
    /// caller of `add_workers`, and not replaced.
    pending: HashSet<u32>,
}

/// The context's handle on its supervisor: adopts processes from any thread.
#[derive(Clone)]
pub(crate) struct SupervisorHandle(Arc<Shared>);

impl SupervisorHandle {
    /// Puts `process` under supervision: it joins the list of local processes, its exit is
    /// reported to the driver loop, and once [`SupervisorHandle::joined`] it is replaced
    /// (by `launcher`, else the context's) when it dies, within the restart budget. Until
    /// then an exit is a launch failure and not replaced.
    pub(crate) fn adopt(&self, process: WorkerProcess, launcher: Option<LocalLauncher>) {
        let (pid, watch) = (process.pid(), process.exit_watch());
        {
            let mut adopted = self.0.adopted.lock();
            adopted.pending.insert(pid);
            if let Some(l) = launcher {
                adopted.launchers.insert(pid, Arc::new(l));
            }
        }
        self.0.children.lock().push(process);
        self.0.watch(pid, watch);
    }

    /// Process `pid` (adopted) joined: from now on it is replaced when it dies.
    pub(crate) fn joined(&self, pid: u32) {
        self.0.adopted.lock().pending.remove(&pid);
    }
}

impl Supervisor {
    /// A supervisor of the processes in `children`, which the caller started with
    /// `launcher`, and of those adopted later through the returned handle. `budget` is
    /// `None` when dead processes are not to be replaced; `names` numbers replacements.
    pub(crate) fn new(
        launcher: LocalLauncher,
        budget: Option<RestartBudget>,
        children: Children,
        exited: Arc<tokio::sync::watch::Sender<usize>>,
        ev_tx: mpsc::UnboundedSender<LinkEvent>,
        runtime: tokio::runtime::Handle,
        names: Arc<AtomicUsize>,
    ) -> (Self, SupervisorHandle) {
        let shared = Arc::new(Shared {
            launcher: Arc::new(launcher),
            children,
            exited,
            ev_tx,
            runtime,
            names,
            adopted: Mutex::new(Adopted::default()),
        });
        let supervisor = Self {
            shared: shared.clone(),
            budget,
            armed: false,
            host: dagger_proc::hostname(),
            retired: std::collections::HashSet::new(),
        };
        (supervisor, SupervisorHandle(shared))
    }

    /// Starts watching every process now in the list.
    pub(crate) fn watch_all(&self) {
        let pids: Vec<_> = self
            .shared
            .children
            .lock()
            .iter()
            .map(|c| (c.pid(), c.exit_watch()))
            .collect();
        for (pid, watch) in pids {
            self.shared.watch(pid, watch);
        }
    }

    /// From now on, processes that die are replaced (within the budget).
    pub(crate) fn arm(&mut self) {
        self.armed = true;
    }

    /// How local process `pid` of host `host` ended, if it has ended already (a
    /// non-blocking look; its exit watch still reports it as usual). `None` for a process
    /// that is not ours or still runs.
    pub(crate) fn exited_now(&self, host: &str, pid: u32) -> Option<ExitCause> {
        if host != self.host {
            return None;
        }
        let mut children = self.shared.children.lock();
        let child = children.iter_mut().find(|c| c.pid() == pid)?;
        match child.try_wait() {
            Ok(Some(status)) => Some(exit_cause(status)),
            _ => None,
        }
    }

    /// Local process `pid` exited (after the driver core heard of it). Unless the context
    /// has not started yet or replacements are off, asks the budget and starts a
    /// replacement. Returns the event for subscribers: `WorkerRestarted`, or
    /// `RestartsExhausted` when the budget refused.
    pub(crate) fn on_exit(&mut self, now: Duration, pid: u32) -> Option<ClusterEvent> {
        let (pending, launcher) = {
            let mut adopted = self.shared.adopted.lock();
            (adopted.pending.remove(&pid), adopted.launchers.remove(&pid))
        };
        if self.retired.remove(&pid) || !self.armed || pending {
            return None;
        }
        let budget = self.budget.as_mut()?;
        let restarts = match budget.try_restart(now) {
            Ok(n) => n,
            Err(refused) => {
                tracing::error!(
                    pid,
                    restarts = refused.restarts,
                    window = ?refused.window,
                    "a local worker process died and is not replaced: {refused}"
                );
                return Some(ClusterEvent::RestartsExhausted {
                    pid,
                    restarts: refused.restarts,
                    window: refused.window,
                });
            }
        };
        let launcher = launcher.unwrap_or_else(|| self.shared.launcher.clone());
        match self.spawn_one(launcher) {
            Ok(new_pid) => {
                tracing::warn!(
                    old_pid = pid,
                    new_pid,
                    restarts,
                    "a local worker process died; started a replacement"
                );
                Some(ClusterEvent::WorkerRestarted {
                    old_pid: pid,
                    new_pid,
                    restarts,
                })
            }
            Err(e) => {
                tracing::error!(pid, error = %e, "cannot start a replacement for a local worker process");
                None
            }
        }
    }

    /// Starts one more worker process with `launcher`, adds it to the list and watches
    /// it; its own replacement will be started by the same launcher.
    fn spawn_one(&mut self, launcher: Arc<LocalLauncher>) -> Result<u32, NetError> {
        let name = format!(
            "worker-{}",
            self.shared.names.fetch_add(1, Ordering::Relaxed)
        );
        let child = launcher.spawn_named(&name)?;
        let (pid, watch) = (child.pid(), child.exit_watch());
        if !Arc::ptr_eq(&launcher, &self.shared.launcher) {
            self.shared.adopted.lock().launchers.insert(pid, launcher);
        }
        self.shared.children.lock().push(child);
        self.shared.watch(pid, watch);
        Ok(pid)
    }

    /// A worker that reported process `pid` on `host` was removed from the pool on purpose
    /// (drained, or its drain deadline passed) and told to shut down: if it is one of our
    /// processes, its exit is not replaced, and it is killed if it still runs after
    /// `linger` (a task that does not return).
    pub(crate) fn retire(&mut self, host: &str, pid: u32, linger: Duration) {
        if host != self.host || !self.shared.children.lock().iter().any(|c| c.pid() == pid) {
            return;
        }
        self.retired.insert(pid);
        let children = self.shared.children.clone();
        self.shared.runtime.spawn(async move {
            tokio::time::sleep(linger).await;
            let mut children = children.lock();
            if let Some(child) = children.iter_mut().find(|c| c.pid() == pid) {
                if matches!(child.try_wait(), Ok(None)) {
                    tracing::warn!(
                        pid,
                        "a removed worker process did not exit in time; killing it"
                    );
                    let _ = child.kill();
                }
            }
        });
    }

    /// The driver declared a worker lost that reported process `pid` on `host`: if that is
    /// one of our processes and it still runs (paused, hung, or cut off), kill it (SIGKILL).
    /// It is fenced already; its exit then brings the replacement. Returns whether a
    /// process was killed. The kill goes through the process's own handle, which knows
    /// whether it was reaped, so it never reaches another process that reuses the pid.
    pub(crate) fn kill_lost(&self, host: &str, pid: u32) -> bool {
        if host != self.host {
            return false;
        }
        let mut children = self.shared.children.lock();
        let Some(child) = children.iter_mut().find(|c| c.pid() == pid) else {
            return false;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        match child.kill() {
            Ok(()) => {
                tracing::warn!(pid, "killed a local worker process that was declared lost");
                true
            }
            Err(e) => {
                tracing::warn!(pid, error = %e, "cannot kill a local worker process that was declared lost");
                false
            }
        }
    }
}

impl Shared {
    /// Reports the exit of process `pid` to the driver loop, without polling: one task
    /// waits on the process's pidfd (a blocking `waitid` on older kernels), reaps it and
    /// takes it out of the list. Holds the list, not the context: a watch never keeps the
    /// context alive.
    fn watch(&self, pid: u32, watch: dagger_net::launch::ExitWatch) {
        let children = self.children.clone();
        let exited = self.exited.clone();
        let ev_tx = self.ev_tx.clone();
        self.runtime.spawn(async move {
            if let Err(e) = watch.wait().await {
                tracing::warn!(pid, error = %e, "cannot watch a local worker process");
                return;
            }
            let status = {
                let mut children = children.lock();
                let Some(i) = children.iter().position(|c| c.pid() == pid) else {
                    // Shut down: the context took the list.
                    return;
                };
                let status = children[i].try_wait();
                children.swap_remove(i);
                status
            };
            let exit = match status {
                Ok(Some(status)) => exit_cause(status),
                _ => ExitCause::Unknown,
            };
            // The driver hears of it first (the loss is on the critical path of recovery),
            // then a killed worker's shared-memory objects, which it did not clean up, are
            // removed (a scan of the shared-memory folder).
            let _ = ev_tx.send(LinkEvent::ProcessExited { pid, exit });
            exited.send_modify(|n| *n += 1);
            dagger_move::shm::cleanup_prefix(&format!("dagger-{pid}"));
        });
    }
}

/// How a local worker process ended.
pub(crate) fn exit_cause(status: std::process::ExitStatus) -> ExitCause {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitCause::Code(code),
            (None, Some(sig)) => ExitCause::Signal(sig),
            (None, None) => ExitCause::Unknown,
        }
    }
    #[cfg(not(unix))]
    match status.code() {
        Some(code) => ExitCause::Code(code),
        None => ExitCause::Unknown,
    }
}
