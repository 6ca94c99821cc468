use dagger_core::WorkerId;
use std::io;

/// Why a processor could not be created or reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcError {
    /// The operating system refused to start a processor's thread.
    #[error("could not start the thread `{name}`")]
    SpawnThread {
        /// The name the thread would have had.
        name: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// No processor has this index in this process.
    #[error("{worker} has no processor with index {index} (it has {count})")]
    UnknownProcessor {
        /// The process asked.
        worker: WorkerId,
        /// The index asked for.
        index: u32,
        /// How many processors the process has.
        count: usize,
    },
}

/// Why reading or setting a CPU affinity mask failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AffinityError {
    /// `sched_getaffinity` failed.
    #[error("could not read the CPU affinity mask")]
    Get {
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// `sched_setaffinity` failed.
    #[error("could not pin the thread to CPUs {cpus:?}")]
    Set {
        /// The CPUs asked for.
        cpus: Vec<usize>,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// A CPU number past what the affinity mask can name.
    #[error("CPU {cpu} cannot be named in an affinity mask (CPUs 0..{max} can)")]
    CpuOutOfRange {
        /// The CPU asked for.
        cpu: usize,
        /// How many CPUs a mask can name.
        max: usize,
    },
    /// The platform has no affinity interface this crate knows.
    #[error("CPU affinity is not supported on this platform")]
    Unsupported,
}

/// An environment variable that is set to something that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not a non-negative whole number")]
pub struct EnvVarError {
    /// The variable's name.
    pub var: &'static str,
    /// What it was set to.
    pub value: String,
}

/// A detector that panicked while [`LocalProcs::detect`](crate::LocalProcs::detect) ran
/// it; its processors are missing from the process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("processor detector `{detector}` panicked: {message}")]
pub struct DetectorPanicked {
    /// The name it was registered under.
    pub detector: String,
    /// The panic's message (or a placeholder when the payload was not a string).
    pub message: String,
}

/// A detector that reported, while [`LocalProcs::detect`](crate::LocalProcs::detect) ran
/// it, that it could not look for its processors (a missing library, driver or device
/// interface). Not a failure of the process: it just has none of those processors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detector}: unavailable ({reason})")]
pub struct DetectorUnavailable {
    /// The name it was registered under.
    pub detector: String,
    /// Why it could not look, as it said.
    pub reason: String,
}

/// [`set_worker`](crate::set_worker) was called with an id other than the one the process
/// already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this process is already {current}; it cannot become {requested}")]
pub struct WorkerAlreadySet {
    /// The id the process has.
    pub current: WorkerId,
    /// The id asked for.
    pub requested: WorkerId,
}
