//! A worker process knows its own worker id: tasks pinned to each worker see that worker's
//! id in `dagger_proc::current_id()`, `dagger_proc::worker()`, `dagger::current_worker()`
//! and `dagger::current_processor()` — not the provisional `WorkerId(0)` its processors
//! were attached under before the driver's welcome.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;

/// What the running task's process says about where it runs, as raw worker numbers:
/// `(current_id's worker, dagger_proc::worker(), current_worker(), current_processor's
/// worker)`; `u32::MAX` where a call answered `None`.
#[dagger::task]
fn who_runs_me(_i: u64) -> (u32, u32, u32, u32) {
    let none = u32::MAX;
    (
        dagger_proc::current_id().map_or(none, |p| p.worker.0),
        dagger_proc::worker().map_or(none, |w| w.0),
        dagger::current_worker().0,
        dagger::current_processor().map_or(none, |p| p.worker.0),
    )
}

#[test]
fn tasks_pinned_to_a_worker_see_that_workers_id() {
    dagger::init();
    let ctx = Context::builder()
        .workers(3)
        .test_harness()
        .worker_threads(2)
        .build()
        .unwrap();
    let ws = ctx.workers();
    assert_eq!(ws.len(), 3);
    for &w in &ws {
        assert_ne!(w, WorkerId(0), "worker ids start at 1");
        let hs: Vec<_> = (0..4u64)
            .map(|i| {
                who_runs_me::with(Options::new().scope(Scope::worker(w)))
                    .spawn(&ctx, i)
                    .unwrap()
            })
            .collect();
        for h in &hs {
            let (proc_worker, process_worker, facade_worker, facade_proc) = h.fetch().unwrap();
            assert_eq!(h.info().unwrap().proc.unwrap().worker, w, "pinned to {w}");
            assert_eq!(WorkerId(proc_worker), w, "dagger_proc::current_id() on {w}");
            assert_eq!(WorkerId(process_worker), w, "dagger_proc::worker() on {w}");
            assert_eq!(
                WorkerId(facade_worker),
                w,
                "dagger::current_worker() on {w}"
            );
            assert_eq!(
                WorkerId(facade_proc),
                w,
                "dagger::current_processor() on {w}"
            );
        }
    }
}
