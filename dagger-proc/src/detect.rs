//! The detector registry and the processors of the running process.

use crate::error::{DetectorPanicked, DetectorUnavailable, ProcError};
use crate::os::OsProc;
use crate::processor::{Job, Processor};
use dagger_core::topology::UNAVAILABLE_PREFIX;
use dagger_core::{ProcId, ProcInfo, ProcKind, WorkerId};
use parking_lot::RwLock;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

/// What a detector is told about the process it runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectContext {
    /// The process's id in the cluster, as far as it is known when detection runs. A
    /// worker process detects its processors before the driver has given it its id, so
    /// there this is `WorkerId(0)`; the real id, once known, is set with
    /// [`set_worker`](crate::set_worker) and read with [`worker`](crate::worker).
    pub worker: WorkerId,
    /// The host it runs on.
    pub hostname: String,
}

impl DetectContext {
    /// The context of process `worker` on this machine (host name from [`hostname`](crate::hostname)).
    pub fn new(worker: WorkerId) -> Self {
        Self {
            worker,
            hostname: crate::sys::hostname(),
        }
    }
}

/// What one detector found when it ran.
pub enum Detection {
    /// The processors it found; none is a valid answer (the machine has no such device).
    Found(Vec<Box<dyn Processor>>),
    /// It could not look: its library, driver or device interface is missing or refused.
    /// The reason is kept in [`LocalProcs::unavailable`] and shown in the topology tree.
    Unavailable {
        /// Why, in a few words (`libOpenCL.so.1 not found`).
        reason: String,
    },
}

impl Detection {
    /// A detector that could not look, for `reason`.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Detection::Unavailable {
            reason: reason.into(),
        }
    }
}

impl From<Vec<Box<dyn Processor>>> for Detection {
    fn from(procs: Vec<Box<dyn Processor>>) -> Self {
        Detection::Found(procs)
    }
}

impl std::fmt::Debug for Detection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Detection::Found(procs) => f
                .debug_tuple("Found")
                .field(&procs.iter().map(|p| p.label()).collect::<Vec<_>>())
                .finish(),
            Detection::Unavailable { reason } => f
                .debug_struct("Unavailable")
                .field("reason", reason)
                .finish(),
        }
    }
}

/// A detector as stored in the registry: called once per process start, says what it
/// found.
pub type DetectFn = dyn Fn(&DetectContext) -> Detection + Send + Sync;

/// The process-global registry of detectors, from [`detectors`]. Detectors run in the
/// order they were first registered; replacing one keeps its place.
pub struct Detectors {
    list: RwLock<Vec<(String, Arc<DetectFn>)>>,
}

impl Detectors {
    fn with_builtin() -> Self {
        #[allow(unused_mut)]
        let mut list: Vec<(String, Arc<DetectFn>)> = vec![(
            crate::cpu::DETECTOR.to_string(),
            Arc::new(|ctx: &DetectContext| Detection::Found(crate::cpu::detect(ctx))),
        )];
        // The device backends compiled in, each found at run time (a missing driver is
        // `Detection::Unavailable`, never a crash).
        #[cfg(feature = "opencl")]
        list.push((
            crate::device::opencl::DETECTOR.to_string(),
            Arc::new(crate::device::opencl::detect),
        ));
        #[cfg(feature = "wgpu")]
        list.push((
            crate::device::wgpu::DETECTOR.to_string(),
            Arc::new(crate::device::wgpu::detect),
        ));
        #[cfg(feature = "cuda")]
        list.push((
            crate::device::cuda::DETECTOR.to_string(),
            Arc::new(crate::device::cuda::detect),
        ));
        Self {
            list: RwLock::new(list),
        }
    }

    /// Registers `f` under `name`, replacing a detector of the same name (so registering
    /// `"cpu"` replaces the built-in CPU detection). Takes effect for the next
    /// [`LocalProcs::detect`]; a detection already running is not affected.
    ///
    /// A detector that can also tell why it found nothing registers with
    /// [`register_detection`](Self::register_detection).
    pub fn register(
        &self,
        name: &str,
        f: impl Fn(&DetectContext) -> Vec<Box<dyn Processor>> + Send + Sync + 'static,
    ) {
        self.insert(
            name,
            Arc::new(move |ctx: &DetectContext| Detection::Found(f(ctx))),
        );
    }

    /// Registers `f` under `name` like [`register`](Self::register), for a detector that
    /// answers with a [`Detection`]: the processors it found, or
    /// [`Detection::Unavailable`] with the reason it could not look (a missing library or
    /// driver), which [`LocalProcs::unavailable`] keeps and the topology tree shows.
    pub fn register_detection(
        &self,
        name: &str,
        f: impl Fn(&DetectContext) -> Detection + Send + Sync + 'static,
    ) {
        self.insert(name, Arc::new(f));
    }

    fn insert(&self, name: &str, f: Arc<DetectFn>) {
        let mut list = self.list.write();
        match list.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = f,
            None => list.push((name.to_string(), f)),
        }
    }

    /// Removes the detector `name`; false if there was none.
    pub fn unregister(&self, name: &str) -> bool {
        let mut list = self.list.write();
        let before = list.len();
        list.retain(|(n, _)| n != name);
        list.len() != before
    }

    /// The registered names, in the order the detectors run.
    pub fn names(&self) -> Vec<String> {
        self.list.read().iter().map(|(n, _)| n.clone()).collect()
    }

    fn snapshot(&self) -> Vec<(String, Arc<DetectFn>)> {
        self.list.read().clone()
    }
}

impl std::fmt::Debug for Detectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detectors")
            .field("names", &self.names())
            .finish()
    }
}

/// The process-global detector registry. The built-in `"cpu"` detector (hwloc-based with
/// the `hwloc` feature) is registered on first use.
pub fn detectors() -> &'static Detectors {
    static REGISTRY: OnceLock<Detectors> = OnceLock::new();
    REGISTRY.get_or_init(Detectors::with_builtin)
}

/// The processors of the running process: index 0 is its [`OsProc`], then the processors
/// of each detector in registry order, all children of the `OsProc`.
///
/// Dropping it shuts every processor down (see [`Processor::shutdown`]), even if clones of
/// their `Arc`s are still held elsewhere; this blocks until running jobs finish.
pub struct LocalProcs {
    worker: WorkerId,
    procs: Vec<Arc<dyn Processor>>,
    infos: Vec<ProcInfo>,
    failures: Vec<DetectorPanicked>,
    unavailable: Vec<DetectorUnavailable>,
}

impl LocalProcs {
    /// Runs every registered detector and assembles the process's processors. A panicking
    /// detector is caught, reported on stderr and skipped (see [`failures`](Self::failures));
    /// one that reports itself unavailable is recorded (see
    /// [`unavailable`](Self::unavailable)) and shown on the `OsProc`'s description, under
    /// the property `unavailable.<detector>` that the topology tree prints.
    /// Costs whatever the detectors cost: starting one thread per core for the built-in one,
    /// and reading the hardware topology with hwloc (milliseconds) when enabled.
    pub fn detect(ctx: &DetectContext) -> LocalProcs {
        let mut found: Vec<Box<dyn Processor>> = Vec::new();
        let mut failures = Vec::new();
        let mut unavailable = Vec::new();
        for (name, f) in detectors().snapshot() {
            match catch_unwind(AssertUnwindSafe(|| f(ctx))) {
                Ok(Detection::Found(procs)) => found.extend(procs),
                Ok(Detection::Unavailable { reason }) => unavailable.push(DetectorUnavailable {
                    detector: name,
                    reason,
                }),
                Err(payload) => {
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".to_string());
                    let failure = DetectorPanicked {
                        detector: name,
                        message,
                    };
                    eprintln!("dagger: {failure}; its processors are skipped");
                    failures.push(failure);
                }
            }
        }
        let root: Box<dyn Processor> = Box::new(OsProc::new(ctx.hostname.clone()));
        let mut local = Self::assemble(ctx.worker, std::iter::once(root).chain(found).collect());
        if let Some(root) = local.infos.first_mut() {
            for u in &unavailable {
                root.properties.insert(
                    format!("{UNAVAILABLE_PREFIX}{}", u.detector),
                    u.reason.clone(),
                );
            }
        }
        local.failures = failures;
        local.unavailable = unavailable;
        local
    }

    /// Builds the process's processors from an explicit list, without running detectors:
    /// `procs[0]` becomes the root (index 0) and every other one its child. Attaches each
    /// processor (see [`Processor::attach`]). Useful for tests and for embedding.
    pub fn from_processors(worker: WorkerId, procs: Vec<Box<dyn Processor>>) -> LocalProcs {
        Self::assemble(worker, procs)
    }

    fn assemble(worker: WorkerId, procs: Vec<Box<dyn Processor>>) -> LocalProcs {
        let procs: Vec<Arc<dyn Processor>> = procs.into_iter().map(Arc::from).collect();
        let root = ProcId::root(worker);
        let mut infos = Vec::with_capacity(procs.len());
        for (i, p) in procs.iter().enumerate() {
            let id = ProcId::new(worker, u32::try_from(i).unwrap_or(u32::MAX));
            p.attach(id, Arc::downgrade(p));
            infos.push(ProcInfo {
                id,
                kind: p.kind(),
                parent: (i != 0).then_some(root),
                memory: p.memory(),
                label: p.label(),
                properties: p.properties(),
            });
        }
        LocalProcs {
            worker,
            procs,
            infos,
            failures: Vec::new(),
            unavailable: Vec::new(),
        }
    }

    /// The process these processors belong to.
    pub fn worker(&self) -> WorkerId {
        self.worker
    }

    /// The processor with this index (0 is the `OsProc`).
    pub fn get(&self, index: u32) -> Option<&Arc<dyn Processor>> {
        self.procs.get(index as usize)
    }

    /// All processors, by index.
    pub fn procs(&self) -> &[Arc<dyn Processor>] {
        &self.procs
    }

    /// The description of each processor, by index, as sent to the driver. Clones.
    pub fn infos(&self) -> Vec<ProcInfo> {
        self.infos.clone()
    }

    /// The description of one processor.
    pub fn info(&self, index: u32) -> Option<&ProcInfo> {
        self.infos.get(index as usize)
    }

    /// Number of processors, the `OsProc` included.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Never true after [`detect`](Self::detect) (the `OsProc` is always there).
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Number of processors of kind [`ProcKind::THREAD`].
    pub fn thread_count(&self) -> usize {
        self.infos
            .iter()
            .filter(|i| i.kind == ProcKind::THREAD)
            .count()
    }

    /// The detectors that panicked during [`detect`](Self::detect).
    pub fn failures(&self) -> &[DetectorPanicked] {
        &self.failures
    }

    /// The detectors that reported, during [`detect`](Self::detect), that they could not
    /// look, with their reasons.
    pub fn unavailable(&self) -> &[DetectorUnavailable] {
        &self.unavailable
    }

    /// Runs `job` on processor `index` (see [`Processor::execute`]).
    pub fn execute(&self, index: u32, job: Job) -> Result<(), ProcError> {
        let p = self.get(index).ok_or(ProcError::UnknownProcessor {
            worker: self.worker,
            index,
            count: self.procs.len(),
        })?;
        p.execute(job);
        Ok(())
    }

    /// Shuts every processor down: first asks all to stop, then waits for each (so their
    /// queues drain in parallel). Called by `drop`; calling it earlier is allowed, and
    /// later jobs are then dropped unrun.
    pub fn shutdown(&self) {
        for p in &self.procs {
            if let Some(t) = p.as_any().downcast_ref::<crate::ThreadProc>() {
                t.close();
            }
        }
        for p in &self.procs {
            p.shutdown();
        }
    }
}

impl Drop for LocalProcs {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for LocalProcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProcs")
            .field("worker", &self.worker)
            .field("procs", &self.infos)
            .field("failures", &self.failures)
            .field("unavailable", &self.unavailable)
            .finish()
    }
}
