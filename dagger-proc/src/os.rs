//! `OsProc`: the root of a process's subtree.

use crate::current::{self, Identity};
use crate::processor::{Job, Processor};
use dagger_core::{MemorySpace, ProcId, ProcKind};
use parking_lot::Mutex;
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};

/// One OS process as a processor: the root of that process's subtree, index 0 of its
/// [`LocalProcs`](crate::LocalProcs). Data moving between processes goes through it.
///
/// It has no core of its own: [`execute`](Processor::execute) starts a fresh OS thread per
/// job (tens of µs), which suits the rare work scheduled on a process as a whole, not
/// small tasks (those go to [`ThreadProc`](crate::ThreadProc)s).
#[derive(Debug)]
pub struct OsProc {
    host: String,
    pid: u32,
    identity: OnceLock<IdentityDebug>,
}

struct IdentityDebug(Identity);

impl std::fmt::Debug for IdentityDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.id)
    }
}

impl OsProc {
    /// The processor of the calling process on host `host`. Cheap.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            pid: std::process::id(),
            identity: OnceLock::new(),
        }
    }

    /// The host name given at construction.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Processor for OsProc {
    fn kind(&self) -> ProcKind {
        ProcKind::OS
    }

    fn memory(&self) -> MemorySpace {
        MemorySpace::HOST
    }

    fn label(&self) -> String {
        format!("process {} on {}", self.pid, self.host)
    }

    fn properties(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("host".to_string(), self.host.clone()),
            ("pid".to_string(), self.pid.to_string()),
        ])
    }

    /// Runs `job` on a new OS thread named `dagger-os`. If the thread cannot be started
    /// (the process is out of threads), the job runs on the caller's thread instead, so it
    /// is never lost.
    fn execute(&self, job: Job) {
        let ident = self.identity.get().map(|i| i.0.clone());
        let slot = Arc::new(Mutex::new(Some(job)));
        let theirs = Arc::clone(&slot);
        let spawned = std::thread::Builder::new()
            .name("dagger-os".into())
            .spawn(move || {
                let job = theirs.lock().take();
                if let Some(job) = job {
                    if let Some(i) = ident {
                        current::set_identity(i);
                    }
                    job();
                }
            });
        if spawned.is_err() {
            let job = slot.lock().take();
            if let Some(job) = job {
                let _guard = self
                    .identity
                    .get()
                    .map(|i| current::enter(i.0.id, i.0.proc.clone()));
                job();
            }
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn attach(&self, id: ProcId, this: Weak<dyn Processor>) {
        let _ = self
            .identity
            .set(IdentityDebug(Identity { id, proc: this }));
    }
}
