//! A task that kills every worker it runs on: once no processor that could run the graph is
//! left, the waiting tasks fail with a typed error after the scheduler's grace period,
//! instead of waiting for good.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;
use dagger::{SchedulerConfig, TaskError};
use std::time::Duration;

/// Takes down the process it runs in, as an out-of-memory kill would.
#[dagger::task]
fn crash(_x: u64) -> u64 {
    std::process::abort()
}

#[dagger::task]
fn inc(x: u64) -> u64 {
    x + 1
}

#[test]
fn tasks_left_without_any_processor_fail_instead_of_waiting_forever() {
    dagger::init();
    let ctx = Context::builder()
        .workers(2)
        .test_harness()
        // Only the worker processes run tasks: once they are gone, nothing can.
        .driver_runs_tasks(false)
        // No replacement processes either.
        .respawn(false)
        .scheduler(SchedulerConfig {
            no_processor_grace: Some(Duration::from_millis(500)),
            ..SchedulerConfig::default()
        })
        .build()
        .unwrap();
    let bad = crash::spawn(&ctx, 1).unwrap();
    let after = inc::spawn(&ctx, &bad).unwrap();
    // The crashing task kills each worker it is placed on; with both gone, it and its
    // dependent end with a typed error: a poison task (`Poisoned`, when both crashes were
    // seen while it ran), the retry budget (`WorkerLost`) or the grace period
    // (`NoProcessor`), whichever comes first.
    let err = bad.fetch().unwrap_err();
    assert!(
        matches!(
            err,
            TaskError::Poisoned { .. }
                | TaskError::WorkerLost { .. }
                | TaskError::NoProcessor { .. }
        ),
        "{err:?}"
    );
    let err = after.fetch().unwrap_err();
    assert!(matches!(err, TaskError::DependencyFailed { .. }), "{err:?}");
    // A task submitted now has no processor at all and fails after the grace period.
    let late = inc::spawn(&ctx, 1).unwrap();
    let err = late.fetch().unwrap_err();
    assert!(matches!(err, TaskError::NoProcessor { .. }), "{err:?}");
}
