//! A client that spawns far more tasks than the driver loop's command backlog holds is
//! held back, not refused or hung: every task runs (one worker process over QUIC).

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;

#[dagger::task]
fn twice(x: u64) -> u64 {
    2 * x
}

/// A context with one worker process of two thread processors.
fn one_worker() -> Context {
    dagger::init();
    Context::builder()
        .workers(1)
        .test_harness()
        .worker_threads(2)
        .build()
        .unwrap()
}

#[test]
fn spawning_past_the_backlog_waits_and_every_task_runs() {
    let ctx = one_worker();
    // 4,096 spawns fit in the backlog; 32 times as many must wait for the loop at times.
    let n = 1u64 << 17;
    let handles: Vec<_> = (0..n).map(|i| twice::spawn(&ctx, i).unwrap()).collect();
    let mut sum = 0u64;
    for h in &handles {
        sum += h.fetch().unwrap();
    }
    assert_eq!(sum, n * (n - 1));
    assert_eq!(ctx.stats().unwrap().finished, n);
}

/// A handle dropped at once is usually gone before the loop takes its task in (a spawn
/// holds only a weak reference to the slot): the release, sent behind the spawn, still
/// lets the scheduler forget the task once it ran, and no task is lost on the way.
#[test]
fn handles_dropped_before_the_loop_takes_their_spawns_in_release_their_tasks() {
    let ctx = one_worker();
    let n = 1u64 << 15;
    for i in 0..n {
        drop(twice::spawn(&ctx, i).unwrap());
    }
    // Spawned after all the others: once it finished, they have all been taken in.
    let last = twice::spawn(&ctx, 21).unwrap();
    assert_eq!(last.fetch().unwrap(), 42);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let stats = loop {
        let s = ctx.stats().unwrap();
        if s.live <= 1 && s.running == 0 && s.ready == 0 && s.waiting == 0 {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "released tasks are still remembered: {s:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(stats.submitted, n + 1, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
}
