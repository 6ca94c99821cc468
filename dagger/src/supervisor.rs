//! The supervisor of local worker processes, as Dask's nanny or Ray's raylet: it watches
//! every process the context started, reports each exit to the driver loop at once, starts a
//! replacement for one that died while a restart budget allows it, and kills a local process
//! that the driver declared lost while it still runs (a paused or hung one), so that nothing
//! of ours lingers and its exit brings the replacement. The policy, how many restarts within
//! what time, is `dagger_ft::RestartBudget`'s; this is the shell that carries it out.
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
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The local worker processes of a context, shared by the context (pids, shutdown), the
/// exit watches and the supervisor.
pub(crate) type Children = Arc<Mutex<Vec<WorkerProcess>>>;

/// Starts, watches and replaces the local worker processes of one context.
pub(crate) struct Supervisor {
    /// Starts replacements with the settings of the first workers.
    launcher: LocalLauncher,
    /// `None`: processes that die are not replaced.
    budget: Option<RestartBudget>,
    children: Children,
    /// Counts exits (the context's `wait_for_workers` wakes on it).
    exited: Arc<tokio::sync::watch::Sender<usize>>,
    ev_tx: mpsc::UnboundedSender<LinkEvent>,
    runtime: tokio::runtime::Handle,
    /// Replaces processes only once the context started: a process that dies before the
    /// context is built is a launch failure, reported to the caller of `build`.
    armed: bool,
    /// The number in the next replacement's name (`worker-N`).
    next_name: usize,
    /// This host's name: only workers that report it may be processes of ours.
    host: String,
    /// Processes removed from the pool on purpose (drained): their exit is not replaced.
    retired: std::collections::HashSet<u32>,
}

impl Supervisor {
    /// A supervisor of the processes in `children`, which the caller started with
    /// `launcher` (`started` of them, named `worker-0` … ). `budget` is `None` when dead
    /// processes are not to be replaced.
    pub(crate) fn new(
        launcher: LocalLauncher,
        budget: Option<RestartBudget>,
        children: Children,
        exited: Arc<tokio::sync::watch::Sender<usize>>,
        ev_tx: mpsc::UnboundedSender<LinkEvent>,
        runtime: tokio::runtime::Handle,
        started: usize,
    ) -> Self {
        Self {
            launcher,
            budget,
            children,
            exited,
            ev_tx,
            runtime,
            armed: false,
            next_name: started,
            host: dagger_proc::hostname(),
            retired: std::collections::HashSet::new(),
        }
    }

    /// Starts watching every process now in the list.
    pub(crate) fn watch_all(&self) {
        let pids: Vec<_> = self
            .children
            .lock()
            .iter()
            .map(|c| (c.pid(), c.exit_watch()))
            .collect();
        for (pid, watch) in pids {
            self.watch(pid, watch);
        }
    }

    /// From now on, processes that die are replaced (within the budget).
    pub(crate) fn arm(&mut self) {
        self.armed = true;
    }

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

    /// Local process `pid` exited (after the driver core heard of it). Unless the context
    /// has not started yet or replacements are off, asks the budget and starts a
    /// replacement. Returns the event for subscribers: `WorkerRestarted`, or
    /// `RestartsExhausted` when the budget refused.
    pub(crate) fn on_exit(&mut self, now: Duration, pid: u32) -> Option<ClusterEvent> {
        if self.retired.remove(&pid) || !self.armed {
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
        match self.spawn_one() {
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

    /// Starts one more worker process, adds it to the list and watches it.
    fn spawn_one(&mut self) -> Result<u32, NetError> {
        let name = format!("worker-{}", self.next_name);
        self.next_name += 1;
        let child = self.launcher.spawn_named(&name)?;
        let (pid, watch) = (child.pid(), child.exit_watch());
        self.children.lock().push(child);
        self.watch(pid, watch);
        Ok(pid)
    }

    /// A worker that reported process `pid` on `host` was removed from the pool on purpose
    /// (drained, or its drain deadline passed) and told to shut down: if it is one of our
    /// processes, its exit is not replaced, and it is killed if it still runs after
    /// `linger` (a task that does not return).
    pub(crate) fn retire(&mut self, host: &str, pid: u32, linger: Duration) {
        if host != self.host || !self.children.lock().iter().any(|c| c.pid() == pid) {
            return;
        }
        self.retired.insert(pid);
        let children = self.children.clone();
        self.runtime.spawn(async move {
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
        let mut children = self.children.lock();
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

/// How a local worker process ended.
fn exit_cause(status: std::process::ExitStatus) -> ExitCause {
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
