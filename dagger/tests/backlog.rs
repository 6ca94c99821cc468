//! A client that spawns far more tasks than the driver loop's command backlog holds is
//! held back, not refused or hung: every task runs (one worker process over QUIC).

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;

#[dagger::task]
fn twice(x: u64) -> u64 {
    2 * x
}

#[test]
fn spawning_past_the_backlog_waits_and_every_task_runs() {
    dagger::init();
    let ctx = Context::builder()
        .workers(1)
        .test_harness()
        .worker_threads(2)
        .build()
        .unwrap();
    // 1 << 16 spawns fit in the backlog; twice as many must wait for the loop at times.
    let n = 2u64 << 16;
    let handles: Vec<_> = (0..n).map(|i| twice::spawn(&ctx, i).unwrap()).collect();
    let mut sum = 0u64;
    for h in &handles {
        sum += h.fetch().unwrap();
    }
    assert_eq!(sum, n * (n - 1));
    assert_eq!(ctx.stats().unwrap().finished, n);
}
