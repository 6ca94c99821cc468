//! Removing workers from a running cluster, over real worker processes linked by QUIC: a
//! drained worker finishes what it was given, receives nothing new, hands every needed
//! result only it holds to a worker that stays, and once its drain handle resolves,
//! killing it loses nothing and recomputes nothing; a deadline turns what it still runs
//! into a loss that the fault-tolerance path recovers; a removal that would strand a task
//! is a typed error; and a removal can be made from inside a task while a `collect` waits.
//!
//! No test asserts a duration: results and drains are awaited with long bounds that only
//! turn a hang into a failure. Tasks that must not finish before the test has seen
//! something wait for a gate file the test creates.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;
use dagger::{ClusterEvent, DrainError, DrainOptions, DrainOutcome, RemoveError};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

mod support;
use support::TempDir;

/// How long a drain or a result may take before the test calls it lost. Far longer than
/// any run needs: it only turns "never happens" into a failure.
const GUARD: Duration = Duration::from_secs(120);

/// 1 MiB of bytes derived from `i` (far above the inline limit: it stays on its worker),
/// and the worker that made it.
#[dagger::task]
fn block(i: u64) -> (Vec<u8>, u32) {
    let bytes = (0..1u64 << 20)
        .map(|k| (k.wrapping_mul(31) ^ i) as u8)
        .collect();
    (bytes, dagger::current_worker().0)
}

fn expected_block(i: u64) -> Vec<u8> {
    (0..1u64 << 20)
        .map(|k| (k.wrapping_mul(31) ^ i) as u8)
        .collect()
}

/// The sum of a block's bytes.
#[dagger::task]
fn checksum(b: (Vec<u8>, u32)) -> u64 {
    b.0.iter().map(|&x| u64::from(x)).sum()
}

/// Leaves a marker that it started (`dir/started-<i>`), waits for `dir/open`, and returns
/// `i` with the worker that ran it.
#[dagger::task]
fn gated(i: u64, dir: String) -> (u64, u32) {
    let dir = Path::new(&dir);
    std::fs::write(dir.join(format!("started-{i}")), b"").expect("marker written");
    while !dir.join("open").exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    (i, dagger::current_worker().0)
}

/// Waits for `dir/open` only on its first attempt (none of `dir/attempt-<i>` yet), so that
/// a re-run after a deadline finishes.
#[dagger::task]
fn stuck_once(i: u64, dir: String) -> (u64, u32) {
    let dir = Path::new(&dir);
    let marker = dir.join(format!("attempt-{i}"));
    if !marker.exists() {
        std::fs::write(&marker, b"").expect("marker written");
        while !dir.join("open").exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    (i * 10, dagger::current_worker().0)
}

#[dagger::task]
fn where_am_i(i: u64) -> (u64, u32) {
    (i, dagger::current_worker().0)
}

/// The context tests running in this process share, for tasks that remove workers.
static CTX: OnceLock<Context> = OnceLock::new();

/// Adds a worker process, then removes worker `w`, from inside a task, and waits for the
/// drain; returns whether it drained cleanly and the added worker.
#[dagger::task]
fn reshape_from_task(w: u32) -> (bool, u32) {
    let ctx = CTX.get().expect("the context is published");
    let launcher = ctx.local_launcher().expect("a context with local workers");
    let added = ctx.add_workers(&launcher, 1).expect("a worker added");
    let drains = ctx
        .remove_workers(&[WorkerId(w)])
        .expect("removal accepted");
    (drains[0].wait().is_clean(), added[0].0)
}

/// `i`, whether the removal before it was clean, and the worker that ran this.
#[dagger::task]
fn after_removal(reshaped: (bool, u32), i: u64) -> (u64, bool, u32) {
    (i, reshaped.0, dagger::current_worker().0)
}

fn cluster(workers: usize) -> Context {
    Context::builder()
        .workers(workers)
        .test_harness()
        .worker_threads(1)
        .build()
        .unwrap()
}

fn pid_of(ctx: &Context, w: WorkerId) -> u32 {
    ctx.topology().worker(w).expect("worker in topology").pid
}

fn kill(pid: u32) {
    // SAFETY: plain syscall on a child process id this test's context started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

fn wait_exit(ctx: &Context, pid: u32) {
    let deadline = std::time::Instant::now() + GUARD;
    while ctx.local_worker_pids().contains(&pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} never exited"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn events_so_far(rx: &mut dagger::ClusterEvents) -> Vec<ClusterEvent> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(e);
    }
    v
}

/// A worker holding 16 needed results (the only copies) is drained and kept: the drain
/// moves all 16 to the other worker; killing the drained process afterwards loses nothing:
/// every result is fetched intact, no task ran twice, and the consumers spawned after the
/// kill run on the copies.
#[test]
fn killing_a_drained_worker_loses_nothing() {
    dagger::init();
    let ctx = cluster(2);
    let mut events = ctx.subscribe();
    let ws = ctx.workers();
    let (victim, stays) = (ws[0], ws[1]);
    let blocks: Vec<Handle<(Vec<u8>, u32)>> = (0..16u64)
        .map(|i| {
            block::with(Options::new().scope(Scope::worker(victim)))
                .spawn(&ctx, i)
                .unwrap()
        })
        .collect();
    // The results are made (and stay) on the victim; nothing fetched them yet.
    for h in &blocks {
        h.wait().expect("block made");
    }
    for h in &blocks {
        assert_eq!(ctx.holders(h.id()), vec![victim]);
    }
    let drains = ctx
        .remove_workers_with(&[victim], DrainOptions::new().keep())
        .unwrap();
    let report = drains[0].wait_timeout(GUARD).expect("the drain resolves");
    match report.outcome {
        DrainOutcome::Drained {
            moved_chunks,
            moved_bytes,
            stopped,
            ..
        } => {
            assert_eq!(moved_chunks, 16);
            assert!(moved_bytes >= 16 << 20, "{moved_bytes}");
            assert!(!stopped);
        }
        other => panic!("not drained: {other:?}"),
    }
    for h in &blocks {
        assert!(ctx.holders(h.id()).contains(&stays), "copied to {stays}");
    }
    kill(pid_of(&ctx, victim));
    wait_exit(&ctx, pid_of_or(&report));
    // Consumers spawned after the kill read the copies.
    let sums: Vec<Handle<u64>> = blocks
        .iter()
        .map(|b| checksum::spawn(&ctx, b).unwrap())
        .collect();
    for (i, (b, s)) in blocks.iter().zip(&sums).enumerate() {
        let (bytes, made_on) = b.fetch().expect("the copy is fetched");
        assert_eq!(bytes, expected_block(i as u64));
        assert_eq!(made_on, victim.0, "made once, on the victim");
        let want: u64 = expected_block(i as u64).iter().map(|&x| u64::from(x)).sum();
        assert_eq!(s.fetch().unwrap(), want);
        let info = ctx.task_info(b.id()).expect("known");
        assert_eq!(info.attempts, 1, "{} ran again", b.id());
    }
    let seen = events_so_far(&mut events);
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, ClusterEvent::TaskRetried { .. })),
        "nothing re-ran: {seen:?}"
    );
}

fn pid_of_or(report: &dagger::DrainReport) -> u32 {
    report.pid
}

/// A drained worker first finishes the tasks it was given (gated ones, still running when
/// the removal is asked), receives nothing new meanwhile, and is then stopped: its process
/// exits on its own and is not replaced; the rest of the graph runs on the other worker.
#[test]
fn a_drained_worker_finishes_its_tasks_then_stops() {
    dagger::init();
    let ctx = cluster(2);
    let mut events = ctx.subscribe();
    let dir = TempDir::new("drain", "finishes");
    let ws = ctx.workers();
    let (victim, stays) = (ws[0], ws[1]);
    let victim_pid = pid_of(&ctx, victim);
    let running = gated::with(Options::new().scope(Scope::worker(victim)))
        .spawn(&ctx, 1, dir.arg())
        .unwrap();
    dir.wait_for("started-1", GUARD);
    let drains = ctx.remove_workers(&[victim]).unwrap();
    // Spawned after the removal: must not go to the victim.
    let later: Vec<_> = (0..20u64)
        .map(|i| where_am_i::spawn(&ctx, i).unwrap())
        .collect();
    for h in &later {
        let (_, w) = h.fetch().unwrap();
        assert_eq!(w, stays.0, "a task went to a draining worker");
    }
    assert!(
        drains[0].report().is_none(),
        "the drain waits for the running task"
    );
    dir.open_gate();
    let report = drains[0].wait_timeout(GUARD).expect("the drain resolves");
    assert!(report.is_clean(), "{report:?}");
    assert!(matches!(
        report.outcome,
        DrainOutcome::Drained { stopped: true, .. }
    ));
    assert_eq!(
        running.fetch().unwrap(),
        (1, victim.0),
        "finished where it ran"
    );
    assert_eq!(ctx.task_info(running.id()).unwrap().attempts, 1);
    wait_exit(&ctx, victim_pid);
    assert_eq!(ctx.workers(), vec![stays]);
    // Not replaced: the pool stays one worker, and later work runs there.
    assert_eq!(
        where_am_i::spawn(&ctx, 99).unwrap().fetch().unwrap(),
        (99, stays.0)
    );
    assert_eq!(ctx.workers(), vec![stays]);
    let seen = events_so_far(&mut events);
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, ClusterEvent::WorkerRestarted { .. })),
        "a removed process was replaced: {seen:?}"
    );
}

/// With a deadline, a task that does not finish in time is treated as lost: the drain
/// resolves as `DeadlineExceeded` naming it, and it runs again on the other worker.
#[test]
fn a_deadline_reruns_what_is_still_running() {
    dagger::init();
    let ctx = cluster(2);
    let dir = TempDir::new("drain", "deadline");
    let ws = ctx.workers();
    let (victim, stays) = (ws[0], ws[1]);
    let h = stuck_once::spawn(&ctx, 7, dir.arg()).unwrap();
    dir.wait_for("attempt-7", GUARD);
    let ran_on = ctx
        .task_info(h.id())
        .unwrap()
        .proc
        .expect("dispatched")
        .worker;
    let (victim, stays) = if ran_on == victim {
        (victim, stays)
    } else {
        (stays, victim)
    };
    let drains = ctx
        .remove_workers_with(
            &[victim],
            DrainOptions::new().deadline(Duration::from_millis(200)),
        )
        .unwrap();
    let report = drains[0].wait_timeout(GUARD).expect("the drain resolves");
    match report.outcome {
        DrainOutcome::DeadlineExceeded { rerun, .. } => assert_eq!(rerun, 1),
        other => panic!("expected the deadline to pass: {other:?}"),
    }
    assert_eq!(
        h.fetch().unwrap(),
        (70, stays.0),
        "re-run on the worker that stays"
    );
    assert_eq!(ctx.workers(), vec![stays]);
    dir.open_gate();
}

/// Removing the last worker that a waiting task's scope admits is refused with a typed
/// error, and nothing changes: the task still runs there afterwards.
#[test]
fn stranding_a_pinned_task_is_refused() {
    dagger::init();
    let ctx = cluster(2);
    let dir = TempDir::new("drain", "strand");
    let ws = ctx.workers();
    let gate = gated::with(Options::new().scope(Scope::worker(ws[0])))
        .spawn(&ctx, 1, dir.arg())
        .unwrap();
    let gate2 = gated::with(Options::new().scope(Scope::worker(ws[1])))
        .spawn(&ctx, 2, dir.arg())
        .unwrap();
    let pinned = where_am_i::with(Options::new().scope(Scope::worker(ws[1])))
        .spawn(&ctx, 5)
        .unwrap();
    // A pinned task is dispatched early (and then is its worker's to finish) once its
    // inputs are dispatched; behind a task waiting for inputs on two workers (which is
    // not dispatched ahead of them), it is not.
    let mid = checksum_of_two::spawn(&ctx, &gate, &gate2).unwrap();
    let behind = plus_worker::with(Options::new().scope(Scope::worker(ws[1])))
        .spawn(&ctx, &mid)
        .unwrap();
    let err = ctx.remove_workers(&[ws[1]]).unwrap_err();
    match err {
        RemoveError::Drain(DrainError::WouldStrand { task, .. }) => assert_eq!(task, behind.id()),
        other => panic!("expected WouldStrand, got {other:?}"),
    }
    // Removing all workers strands every waiting task too.
    assert!(matches!(
        ctx.remove_workers(&ws).unwrap_err(),
        RemoveError::Drain(DrainError::WouldStrand { .. })
    ));
    dir.open_gate();
    assert_eq!(pinned.fetch().unwrap(), (5, ws[1].0));
    let mid_value = mid.fetch().unwrap();
    assert_eq!(behind.fetch().unwrap(), mid_value + u64::from(ws[1].0));
    assert_eq!(ctx.workers(), ws, "nothing changed");
    // Unknown workers are a typed error too.
    assert!(matches!(
        ctx.remove_workers(&[WorkerId(999)]).unwrap_err(),
        RemoveError::Drain(DrainError::UnknownWorker { .. })
    ));
}

/// The first values of two pairs plus the id of the worker this runs on.
#[dagger::task]
fn checksum_of_two(a: (u64, u32), b: (u64, u32)) -> u64 {
    a.0 + b.0 + u64::from(dagger::current_worker().0)
}

/// `x` plus the id of the worker this runs on.
#[dagger::task]
fn plus_worker(x: u64) -> u64 {
    x + u64::from(dagger::current_worker().0)
}

/// A task running on the driver's own cores adds a worker process and removes another
/// while `collect` waits on a graph: the drain resolves inside the task, the added worker
/// is in the pool, and the graph's result is right.
#[test]
fn removing_from_inside_a_task_during_collect() {
    dagger::init();
    let ctx = Context::builder()
        .workers(2)
        .driver_runs_tasks(true)
        .test_harness()
        .worker_threads(1)
        .build()
        .unwrap();
    let _ = CTX.set(ctx.clone());
    let ctx = CTX.get().unwrap();
    let victim = *ctx
        .workers()
        .iter()
        .find(|w| !w.is_driver())
        .expect("a worker process");
    let remover = reshape_from_task::with(Options::new().scope(Scope::worker(WorkerId::DRIVER)))
        .delayed(victim.0);
    // Every part waits for the removal: the removal runs while `collect` waits.
    let parts: Vec<Lazy<(u64, bool, u32)>> = (0..30u64)
        .map(|i| after_removal::delayed(remover.clone(), i))
        .collect();
    let done = ctx.collect(parts).expect("the graph runs");
    let mut ids: Vec<u64> = done.iter().map(|(i, _, _)| *i).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..30).collect::<Vec<_>>());
    for (i, clean, w) in done {
        assert!(clean, "the drain inside the task resolved cleanly");
        assert_ne!(w, victim.0, "part {i} ran on the removed worker");
    }
    assert!(!ctx.workers().contains(&victim));
    assert_eq!(
        ctx.workers().len(),
        3,
        "the driver's worker, the other and the added one"
    );
}
