use crate::ids::{ProcId, WorkerId};
use crate::proc::{ProcInfo, ProcKind};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Which processors may run a task.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Scope {
    /// Any processor that can run tasks of the function (the default: CPU threads).
    #[default]
    Any,
    /// Any processor of one worker process.
    Worker(WorkerId),
    /// Exactly this processor.
    Proc(ProcId),
    /// Any processor of this kind, on any worker.
    Kind(ProcKind),
    /// Any processor of this kind on this worker.
    WorkerKind(WorkerId, ProcKind),
    /// Any processor that one of these scopes admits.
    Union(Vec<Scope>),
}

impl Scope {
    /// Any processor of one worker.
    pub fn worker(w: WorkerId) -> Self {
        Scope::Worker(w)
    }
    /// Exactly one processor.
    pub fn proc(p: ProcId) -> Self {
        Scope::Proc(p)
    }
    /// Any processor of a kind, e.g. `Scope::kind("opencl")`.
    pub fn kind(k: impl Into<ProcKindArg>) -> Self {
        Scope::Kind(k.into().0)
    }
    /// The union of two scopes.
    pub fn or(self, other: Scope) -> Self {
        match self {
            Scope::Union(mut v) => {
                v.push(other);
                Scope::Union(v)
            }
            s => Scope::Union(vec![s, other]),
        }
    }

    /// Whether the processor `p` is admitted. `Scope::Any` admits every processor that is
    /// not an `OsProc` root (roots coordinate; their children compute).
    pub fn admits(&self, p: &ProcInfo) -> bool {
        match self {
            Scope::Any => p.kind == ProcKind::THREAD,
            Scope::Worker(w) => p.id.worker == *w && p.kind == ProcKind::THREAD,
            Scope::Proc(id) => p.id == *id,
            Scope::Kind(k) => &p.kind == k,
            Scope::WorkerKind(w, k) => p.id.worker == *w && &p.kind == k,
            Scope::Union(v) => v.iter().any(|s| s.admits(p)),
        }
    }

    /// Whether every processor of `kind` on `worker` is admitted, whichever there are:
    /// a task of this scope placed on one of them may as well run on another. `Proc`
    /// scopes answer no (they name one processor), and a union answers yes only when one
    /// of its parts does.
    pub fn admits_every(&self, worker: WorkerId, kind: &ProcKind) -> bool {
        match self {
            Scope::Any => *kind == ProcKind::THREAD,
            Scope::Worker(w) => *w == worker && *kind == ProcKind::THREAD,
            Scope::Proc(_) => false,
            Scope::Kind(k) => k == kind,
            Scope::WorkerKind(w, k) => *w == worker && k == kind,
            Scope::Union(v) => v.iter().any(|s| s.admits_every(worker, kind)),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Any => f.write_str("any"),
            Scope::Worker(w) => write!(f, "{w}"),
            Scope::Proc(p) => write!(f, "{p}"),
            Scope::Kind(k) => write!(f, "kind {k}"),
            Scope::WorkerKind(w, k) => write!(f, "kind {k} on {w}"),
            Scope::Union(v) => {
                f.write_str("(")?;
                for (i, s) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" | ")?;
                    }
                    write!(f, "{s}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// Lets `Scope::kind` take a `&str` or a `ProcKind`.
pub struct ProcKindArg(ProcKind);
impl From<ProcKind> for ProcKindArg {
    fn from(k: ProcKind) -> Self {
        ProcKindArg(k)
    }
}
impl From<&'static str> for ProcKindArg {
    fn from(k: &'static str) -> Self {
        ProcKindArg(ProcKind::custom(k))
    }
}

/// Options that ride along with a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Options {
    /// Which processors may run it.
    pub scope: Scope,
    /// How many times it is run again after it failed itself (its function panicked).
    /// Default 0.
    pub retries: u32,
    /// Higher runs first among ready tasks.
    pub priority: i32,
    /// How many times it is run again after the worker running it was lost (or an input
    /// could not be brought for a transient reason), which is not the task's fault.
    /// `None` (the default) leaves it to the driver's fault policy
    /// (`dagger_ft::DEFAULT_LOSS_RETRIES`, 3, unless configured otherwise).
    pub loss_retries: Option<u32>,
}

impl Options {
    /// The default options: any CPU thread, no retries after a panic, the policy's budget
    /// for lost workers, priority 0.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the scope.
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }
    /// Sets the budget of re-runs after the task itself failed (panicked).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }
    /// Sets the budget of re-runs after the worker running the task was lost (see
    /// [`Options::loss_retries`](Options#structfield.loss_retries)); 0 fails it at the
    /// first loss.
    pub fn loss_retries(mut self, n: u32) -> Self {
        self.loss_retries = Some(n);
        self
    }
    /// Sets the priority.
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = p;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_admits_every_processor_of_a_kind_on_a_worker_only_when_it_names_no_single_one() {
        let (w, v) = (WorkerId(1), WorkerId(2));
        let gpu = ProcKind::CUDA;
        let t = &ProcKind::THREAD;
        assert!(Scope::Any.admits_every(w, t));
        assert!(!Scope::Any.admits_every(w, &gpu));
        assert!(Scope::Worker(w).admits_every(w, t));
        assert!(!Scope::Worker(v).admits_every(w, t));
        assert!(!Scope::Worker(w).admits_every(w, &gpu));
        assert!(Scope::Kind(gpu.clone()).admits_every(v, &gpu));
        assert!(Scope::WorkerKind(w, gpu.clone()).admits_every(w, &gpu));
        assert!(!Scope::WorkerKind(w, gpu.clone()).admits_every(v, &gpu));
        assert!(!Scope::Proc(ProcId::new(w, 1)).admits_every(w, t));
        assert!(!Scope::Proc(ProcId::new(w, 1))
            .or(Scope::Proc(ProcId::new(w, 2)))
            .admits_every(w, t));
        assert!(Scope::Proc(ProcId::new(v, 1))
            .or(Scope::Worker(w))
            .admits_every(w, t));
    }
}
