//! Growing a running cluster: [`Context::add_workers`] starts workers with any
//! [`Launcher`] (on this host, through `ssh`, through Slurm's `srun`, or by hand), and
//! returns once they joined.
//!
//! Each worker gets a name unique in the context (`worker-N`), passed by the launcher and
//! reported by the worker in its join, which is how the context tells its new workers
//! from any other that joins meanwhile. A local worker process goes under the context's
//! supervisor (replaced if it dies once joined, within the restart budget); the client
//! process of a remote worker (`ssh`, `srun`) is kept, reaped when it exits, and ended at
//! shutdown, which ends its worker.

use crate::context::{Context, ContextError, Inner};
use crate::supervisor::{Children, SupervisorHandle};
use dagger_core::{ExitCause, WorkerId};
use dagger_net::launch::{JoinSpec, Launched, Launcher, LocalLauncher, WorkerProcess};
use dagger_net::Identity;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a context that links processes needs to start workers after it started.
pub(crate) struct Launching {
    /// Starts local workers with the context's settings (the supervisor's default).
    pub(crate) local: LocalLauncher,
    /// The worker settings every launcher gets (environment, program arguments).
    pub(crate) envs: Vec<(String, String)>,
    pub(crate) args: Option<Vec<String>>,
    /// What the workers present to the driver.
    pub(crate) identity: Identity,
    /// Where the driver listens (as its listener reports it).
    pub(crate) listen_addr: String,
    /// The number in the next worker's name (`worker-N`), shared with the supervisor.
    pub(crate) names: Arc<AtomicUsize>,
    pub(crate) supervisor: SupervisorHandle,
    /// The clients (`ssh`, `srun`) of remote workers still running.
    pub(crate) clients: Children,
    /// How long `add_workers` waits for the joins.
    pub(crate) join_timeout: Duration,
}

impl Launching {
    /// The spec for a launcher of `kind`: a local worker joins at the listen address as
    /// it is; any other at an address other hosts can reach (`0.0.0.0` and `[::]` become
    /// this host's name).
    fn spec(&self, kind: &str) -> JoinSpec {
        let join = if kind == "local" {
            self.listen_addr.clone()
        } else {
            reachable(&self.listen_addr, &dagger_proc::hostname())
        };
        JoinSpec {
            join,
            identity: self.identity.clone(),
            envs: self.envs.clone(),
            args: self.args.clone(),
        }
    }

    /// Names for `n` new workers.
    fn names(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| format!("worker-{}", self.names.fetch_add(1, Ordering::Relaxed)))
            .collect()
    }
}

/// `addr` with an unspecified host (`0.0.0.0`, `[::]`) replaced by `host`, so that a
/// process elsewhere can dial it.
fn reachable(addr: &str, host: &str) -> String {
    match addr.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "::", port)) => format!("{host}:{port}"),
        _ => addr.to_owned(),
    }
}

/// A launched process of one `add_workers` call, until its worker joined.
struct Pending {
    name: String,
    pid: Option<u32>,
    is_worker: bool,
}

impl Context {
    /// Starts `n` more workers with `launcher` and waits until all of them joined, for at
    /// most the context's join timeout ([`ContextBuilder::join_timeout`](crate::ContextBuilder::join_timeout));
    /// returns their ids in launch order. Tasks reach them from their join on (the
    /// scheduler gives a worker that joins its share of the waiting tasks).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), dagger::ContextError> {
    /// let ctx = dagger::Context::local(2)?;
    /// let launcher = ctx.local_launcher().expect("a context with workers links processes");
    /// let new = ctx.add_workers(&launcher, 2)?;
    /// # let _ = new; Ok(()) }
    /// ```
    ///
    /// Each worker gets a name unique in this context (`worker-N`), which it reports when
    /// it joins: that is how it is recognised. A local worker process is supervised like
    /// the context's first ones (replaced if it dies after joining, within the restart
    /// budget); the client of a remote worker (`ssh`, `srun`) is ended at shutdown.
    ///
    /// Fails with [`ContextError::NotLinked`] when the context links no processes (built
    /// with no workers, no listen address, no certificate folder, and a driver that runs
    /// tasks), [`ContextError::Launcher`] when the launcher cannot start them,
    /// [`ContextError::WorkerExited`] as soon as a launched local process (the worker, or
    /// the client that runs it elsewhere) exits before its worker joined, and
    /// [`ContextError::JoinTimeout`]. On failure the processes of this call whose worker
    /// did not join are ended; workers that did join stay. May be called from any thread,
    /// also from a task running in the driver's process, and by several threads at once.
    pub fn add_workers(
        &self,
        launcher: &dyn Launcher,
        n: usize,
    ) -> Result<Vec<WorkerId>, ContextError> {
        let launching = self
            .inner()
            .launching
            .as_ref()
            .ok_or(ContextError::NotLinked)?;
        let timeout = launching.join_timeout;
        self.add_workers_until(launcher, n, tokio::time::Instant::now() + timeout, timeout)
    }

    /// A launcher of local worker processes with this context's settings: its join
    /// address and worker identity, the worker threads, shared-memory and memory-limit
    /// settings, and the workers' program arguments (the test's, with
    /// [`ContextBuilder::test_harness`](crate::ContextBuilder::test_harness)). `None` when
    /// the context links no processes. For [`Context::add_workers`].
    pub fn local_launcher(&self) -> Option<LocalLauncher> {
        self.inner().launching.as_ref().map(|l| l.local.clone())
    }

    /// What a launcher of `kind` (`"local"`, `"ssh"`, ...) gets from this context: the
    /// address to join (reachable from other hosts unless `kind` is `"local"`), the
    /// workers' identity, environment and program arguments. For a command line built
    /// outside a launcher, e.g. [`ManualLauncher::command`](crate::ManualLauncher::command).
    /// `None` when the context links no processes. The spec holds the workers' private
    /// key: keep it out of logs and command lines.
    pub fn join_spec(&self, kind: &str) -> Option<JoinSpec> {
        self.inner().launching.as_ref().map(|l| l.spec(kind))
    }

    /// [`Context::add_workers`] with a deadline of its own; `waited` is what a timeout
    /// error reports.
    pub(crate) fn add_workers_until(
        &self,
        launcher: &dyn Launcher,
        n: usize,
        deadline: tokio::time::Instant,
        waited: Duration,
    ) -> Result<Vec<WorkerId>, ContextError> {
        let inner = self.inner();
        let launching = inner.launching.as_ref().ok_or(ContextError::NotLinked)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let kind = launcher.kind();
        let spec = launching.spec(kind);
        let names = launching.names(n);
        // Subscribed before the launch: no join is missed.
        let mut events = self.subscribe();
        let launched = launcher
            .launch(&spec, &names)
            .map_err(|source| ContextError::Launcher { kind, source })?;
        if launched.len() != n || launched.iter().zip(&names).any(|(l, n)| &l.name != n) {
            return Err(ContextError::Launcher {
                kind,
                source: dagger_net::NetError::WorkerArgs {
                    reason: format!(
                        "the launcher returned {} workers for the {n} names it was given",
                        launched.len()
                    ),
                },
            });
        }
        let local = launcher.as_local().map(|l| l.for_spec(&spec));
        let (exits_tx, mut exits) =
            tokio::sync::watch::channel(HashMap::<String, ExitCause>::new());
        let exits_tx = Arc::new(exits_tx);
        let mut pending: Vec<Pending> = Vec::with_capacity(n);
        for Launched { name, process } in launched {
            let pid = process.as_ref().map(WorkerProcess::pid);
            let is_worker = process.as_ref().is_some_and(WorkerProcess::is_worker);
            if let Some(process) = process {
                let list = if is_worker {
                    inner.children.clone()
                } else {
                    launching.clients.clone()
                };
                watch_launched(inner, &process, name.clone(), list, exits_tx.clone());
                if is_worker {
                    launching.supervisor.adopt(process, local.clone());
                } else {
                    adopt_client(inner, launching, process);
                }
            }
            pending.push(Pending {
                name,
                pid,
                is_worker,
            });
        }
        let wanted: HashSet<String> = names.iter().cloned().collect();
        loop {
            let joined: HashMap<String, WorkerId> = {
                let wanted = wanted.clone();
                self.query(move |st| {
                    st.core
                        .topology()
                        .workers()
                        .filter(|w| wanted.contains(&w.name))
                        .map(|w| (w.name.clone(), w.worker))
                        .collect()
                })
                .ok_or(ContextError::Shutdown)?
            };
            for p in pending.iter().filter(|p| joined.contains_key(&p.name)) {
                if let (true, Some(pid)) = (p.is_worker, p.pid) {
                    launching.supervisor.joined(pid);
                }
            }
            if joined.len() == n {
                return Ok(names.iter().map(|name| joined[name]).collect());
            }
            let exited = exits
                .borrow_and_update()
                .iter()
                .find(|(name, _)| !joined.contains_key(*name))
                .map(|(name, exit)| (name.clone(), *exit));
            if let Some((name, exit)) = exited {
                end_unjoined(inner, launching, &pending, &joined);
                return Err(ContextError::WorkerExited {
                    name,
                    launcher: kind,
                    exit,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                end_unjoined(inner, launching, &pending, &joined);
                return Err(ContextError::JoinTimeout {
                    expected: n,
                    joined: joined.len(),
                    waited,
                });
            }
            (events, exits) =
                crate::context::wait_for_change(inner.handle(), events, exits, deadline)?;
        }
    }
}

/// Records in `exits` when `process` exits, with its status when it can still be read
/// from `list` (the supervisor's or the client reaper may take it first).
fn watch_launched(
    inner: &Inner,
    process: &WorkerProcess,
    name: String,
    list: Children,
    exits: Arc<tokio::sync::watch::Sender<HashMap<String, ExitCause>>>,
) {
    let (pid, watch) = (process.pid(), process.exit_watch());
    inner.handle().spawn(async move {
        if let Err(e) = watch.wait().await {
            tracing::warn!(pid, error = %e, "cannot watch a launched process");
            return;
        }
        let exit = list
            .lock()
            .iter_mut()
            .find(|c| c.pid() == pid)
            .and_then(|c| c.try_wait().ok().flatten())
            .map_or(ExitCause::Unknown, crate::supervisor::exit_cause);
        exits.send_modify(|m| {
            m.insert(name, exit);
        });
    });
}

/// Keeps the client of a remote worker until it exits, then reaps it.
fn adopt_client(inner: &Inner, launching: &Launching, process: WorkerProcess) {
    let (pid, watch) = (process.pid(), process.exit_watch());
    launching.clients.lock().push(process);
    let clients = launching.clients.clone();
    inner.handle().spawn(async move {
        if let Err(e) = watch.wait().await {
            tracing::warn!(pid, error = %e, "cannot watch a worker's client process");
            return;
        }
        let mut clients = clients.lock();
        if let Some(i) = clients.iter().position(|c| c.pid() == pid) {
            let mut client = clients.swap_remove(i);
            if let Ok(Some(status)) = client.try_wait() {
                tracing::info!(pid, name = client.name(), %status, "a worker's client process exited");
            }
        }
    });
}

/// Ends the processes of `pending` whose worker has not joined. A local worker stays
/// pending for the supervisor, so its exit is not replaced.
fn end_unjoined(
    inner: &Inner,
    launching: &Launching,
    pending: &[Pending],
    joined: &HashMap<String, WorkerId>,
) {
    for p in pending.iter().filter(|p| !joined.contains_key(&p.name)) {
        let Some(pid) = p.pid else { continue };
        let list = if p.is_worker {
            &inner.children
        } else {
            &launching.clients
        };
        if let Some(c) = list.lock().iter_mut().find(|c| c.pid() == pid) {
            if let Err(e) = c.kill() {
                tracing::warn!(pid, error = %e, "cannot end a launched process");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reachable;

    #[test]
    fn an_unspecified_listen_address_becomes_the_host_name() {
        assert_eq!(reachable("0.0.0.0:7400", "node1"), "node1:7400");
        assert_eq!(reachable("[::]:7400", "node1"), "node1:7400");
        assert_eq!(reachable("127.0.0.1:7400", "node1"), "127.0.0.1:7400");
        assert_eq!(reachable("10.0.0.5:1", "node1"), "10.0.0.5:1");
    }
}
