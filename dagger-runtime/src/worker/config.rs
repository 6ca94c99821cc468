//! Settings of the worker core.

use std::time::Duration;

/// Settings of one [`WorkerState`](super::WorkerState).
///
/// Build with [`WorkerConfig::new`], which fills the defaults the facade uses, then change
/// fields as needed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// This worker's host name: peers with the same one may receive chunks through shared
    /// memory.
    pub host: String,
    /// The fingerprint of the task functions registered in this binary, sent in the hello
    /// of every peer link this worker opens and checked on links peers open.
    pub registry_hash: u64,
    /// How often to send a heartbeat to the driver; `None` (the default) takes the interval
    /// the driver asks for in its welcome.
    pub heartbeat: Option<Duration>,
    /// How many times one holder that answers "not here (yet)" is asked again before the
    /// next holder is asked (default 110, about 5 s with the default pauses).
    pub want_attempts: u32,
    /// The pause before the first repeated ask (default 200 µs); each further one doubles,
    /// up to [`WorkerConfig::want_pause_max`].
    pub want_pause_min: Duration,
    /// The longest pause between two asks of one holder (default 50 ms).
    pub want_pause_max: Duration,
    /// Whether chunks to peers on the same host may travel through shared memory (default
    /// on).
    pub shm: bool,
    /// The smallest chunk, in bytes, that travels through shared memory to a peer on the
    /// same host (default 64 KiB); smaller ones go inline over the link.
    pub shm_min_bytes: usize,
    /// The most finished tasks one `Done` message carries: a batch this large is sent at
    /// once (default 8192).
    pub done_batch_max: usize,
    /// How long the first finished task of a batch may wait for others before the batch is
    /// sent (default zero: the batch goes out at the next timeout, so tasks that finish
    /// while the shell is busy travel together, and none waits for a timer).
    pub done_delay: Duration,
    /// How long the report of a task nothing waits for (`RunTask::quiet`) may wait for the
    /// next batch (default 1 ms). Such a task's dependents are running already and no
    /// client asked for it: the driver only needs the report to keep its books (and, should
    /// this worker be lost meanwhile, runs the task again).
    pub quiet_delay: Duration,
    /// The fingerprint of this worker's executable (0 when unknown), said in the hello of
    /// every peer link; a peer of another build is refused unless either side allows it.
    pub build_id: u64,
    /// Whether this worker accepts peers of another build (and asks them to accept it).
    pub allow_mixed_builds: bool,
    /// How many chunks whose producing task failed here are remembered (the most recent
    /// ones, default 4096), so that a peer asking for one after the failure is told it is
    /// gone (final) rather than "not here yet" (asked again for seconds).
    pub failed_chunks_kept: usize,
}

impl WorkerConfig {
    /// The default settings for a worker on `host` whose binary's task registry has the
    /// fingerprint `registry_hash`.
    pub fn new(host: impl Into<String>, registry_hash: u64) -> Self {
        Self {
            host: host.into(),
            registry_hash,
            heartbeat: None,
            want_attempts: 110,
            want_pause_min: Duration::from_micros(200),
            want_pause_max: Duration::from_millis(50),
            shm: true,
            shm_min_bytes: 64 * 1024,
            done_batch_max: 8192,
            done_delay: Duration::ZERO,
            quiet_delay: Duration::from_millis(1),
            build_id: 0,
            allow_mixed_builds: false,
            failed_chunks_kept: 4096,
        }
    }

    /// The pause before ask number `attempt` (counted from 1) of one holder.
    pub(crate) fn want_pause(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(16);
        self.want_pause_min
            .saturating_mul(factor)
            .min(self.want_pause_max)
    }
}
