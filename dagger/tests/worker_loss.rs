//! A worker process killed with SIGKILL while a graph runs: the driver notices (its link
//! closes), the lost tasks and the results that lived only there are recomputed on the
//! surviving worker, and every result is right.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;
use dagger::ClusterEvent;
use std::time::Duration;

#[dagger::task]
fn slow(i: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    i
}

#[dagger::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[test]
fn a_killed_worker_delays_results_but_never_loses_them() {
    dagger::init();
    let ctx = Context::builder()
        .workers(2)
        .test_harness()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut events = ctx.subscribe();
    let leaves: Vec<_> = (0..60u64).map(|i| slow::spawn(&ctx, i).unwrap()).collect();
    let mut level = leaves.clone();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|p| {
                if p.len() == 2 {
                    add::spawn(&ctx, &p[0], &p[1]).unwrap()
                } else {
                    p[0].clone()
                }
            })
            .collect();
    }
    // Wait until some work is done, then kill one worker process.
    leaves[5].wait().unwrap();
    let victim = ctx.local_worker_pids()[0];
    // SAFETY: plain syscall on a child process id we started.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);

    assert_eq!(level[0].fetch().unwrap(), (0..60u64).sum::<u64>());
    for (i, h) in leaves.iter().enumerate() {
        assert_eq!(h.fetch().unwrap(), i as u64);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lost = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(e) = events.recv().await {
                if let ClusterEvent::WorkerLost { worker, .. } = e {
                    return Some(worker);
                }
            }
            None
        })
        .await
    });
    assert!(matches!(lost, Ok(Some(_))), "a WorkerLost event");
    assert_eq!(ctx.workers().len(), 1);
    // The survivor keeps working.
    assert_eq!(add::spawn(&ctx, 1, 2).unwrap().fetch().unwrap(), 3);
}

#[dagger::task]
fn slow_big(i: u64) -> serde_bytes::ByteBuf {
    std::thread::sleep(Duration::from_millis(200));
    serde_bytes::ByteBuf::from(vec![i as u8; 256 * 1024])
}

#[dagger::task]
fn sum_big(b: serde_bytes::ByteBuf) -> u64 {
    b.iter().map(|&x| x as u64).sum()
}

/// Starts `workers` workers; spawns `pairs` producers (unscoped, large results) and their
/// consumers pinned to the second worker; SIGKILLs the first worker while the producers
/// sleep; checks every consumer's result.
fn kill_a_producer_worker_and_check_consumers(workers: usize, pairs: u64) {
    let ctx = Context::builder()
        .workers(workers)
        .test_harness()
        .worker_threads(2)
        .build()
        .unwrap();
    let ws = ctx.workers();
    let (victim, consumer) = (ws[0], ws[1]);
    let pairs: Vec<_> = (0..pairs)
        .map(|i| {
            let p = slow_big::spawn(&ctx, i).unwrap();
            let c = sum_big::with(Options::new().scope(Scope::worker(consumer)))
                .spawn(&ctx, &p)
                .unwrap();
            (i, p, c)
        })
        .collect();
    let pid = ctx.topology().worker(victim).unwrap().pid;
    // SAFETY: plain syscall on a child process id we started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    for (i, _p, c) in &pairs {
        assert_eq!(c.fetch().unwrap(), i * 256 * 1024, "consumer {i}");
    }
}

/// Consumers pinned to the surviving worker were dispatched before their (large) inputs
/// existed and asked the producers' worker for them; that worker is killed before
/// answering. The consumers must get their inputs from the recomputed producers, not wait
/// forever.
#[test]
fn consumers_waiting_on_a_killed_worker_get_recomputed_inputs() {
    dagger::init();
    kill_a_producer_worker_and_check_consumers(2, 8);
}

/// Three workers: consumers pinned to B wait for large inputs produced on A and C. A is
/// killed; its producers are recomputed on B or C. The consumers' outstanding wants to A
/// must be asked again of the new holders, not wait for A forever.
#[test]
fn wants_to_a_killed_worker_are_asked_again_of_the_recomputed_copy() {
    dagger::init();
    kill_a_producer_worker_and_check_consumers(3, 24);
}
