//! The built-in `"cpu"` detector: one [`ThreadProc`] per CPU the process may use.
//!
//! Without the `hwloc` feature the CPUs come from the affinity mask (`sched_getaffinity`)
//! and each thread is pinned to one CPU. With it, [`crate::hwloc`] finds cores, NUMA nodes
//! and caches, and falls back to this plain detection if hwloc fails at run time.
//!
//! In both cases `DAGGER_THREADS=n` keeps at most `n` processors; which ones rotates with
//! the process's worker id, so capped processes sharing a machine spread over its CPUs.
//! `DAGGER_PIN=0` turns pinning off.

use crate::detect::DetectContext;
use crate::processor::Processor;
use crate::sys;
use crate::thread::{Pinning, ThreadProc};

/// The name the built-in CPU detector is registered under.
pub const DETECTOR: &str = "cpu";

/// The built-in detector: hwloc's topology with the `hwloc` feature, else the plain one.
pub fn detect(ctx: &DetectContext) -> Vec<Box<dyn Processor>> {
    #[cfg(feature = "hwloc")]
    {
        crate::hwloc::detect(ctx)
    }
    #[cfg(not(feature = "hwloc"))]
    {
        detect_plain(ctx, &[])
    }
}

/// The cap from `DAGGER_THREADS`, or `None` (with a warning on stderr if malformed).
pub(crate) fn cap_from_env() -> Option<usize> {
    sys::threads_cap_from_env().unwrap_or_else(|e| {
        eprintln!("dagger: {e}; using every CPU");
        None
    })
}

/// One pinned [`ThreadProc`] per CPU of the affinity mask, capped by `DAGGER_THREADS`.
/// `extra` properties are added to each (e.g. why hwloc was not used). If the mask cannot
/// be read, `available_parallelism` threads are made, unpinned, with an `affinity_error`
/// property. A thread that cannot be started is reported on stderr and skipped.
pub fn detect_plain(ctx: &DetectContext, extra: &[(&str, String)]) -> Vec<Box<dyn Processor>> {
    let (cpus, affinity_error) = match sys::affinity() {
        Ok(c) if !c.is_empty() => (c, None),
        Ok(_) => (
            fallback_cpus(),
            Some("the affinity mask is empty".to_string()),
        ),
        Err(e) => (fallback_cpus(), Some(e.to_string())),
    };
    let pin = sys::pin_from_env() && affinity_error.is_none();
    let chosen = sys::spread(
        cpus.len(),
        cap_from_env().unwrap_or(usize::MAX),
        sys::process_slot(ctx.worker.0),
    );
    let mut out: Vec<Box<dyn Processor>> = Vec::with_capacity(chosen.len());
    for pos in chosen {
        let cpu = cpus[pos];
        let mut b = ThreadProc::builder()
            .name(format!("dagger-thread-{cpu}"))
            .label(format!("cpu {cpu}"))
            .property("cpu", cpu.to_string())
            .pinning(if pin {
                Pinning::Cpus(vec![cpu])
            } else {
                Pinning::None
            });
        if let Some(e) = &affinity_error {
            b = b.property("affinity_error", e.clone());
        }
        for (k, v) in extra {
            b = b.property(*k, v.clone());
        }
        match b.spawn() {
            Ok(t) => out.push(Box::new(t)),
            Err(e) => eprintln!("dagger: {e}; CPU {cpu} gets no thread processor"),
        }
    }
    out
}

fn fallback_cpus() -> Vec<usize> {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (0..n).collect()
}
