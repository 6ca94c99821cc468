//! Draining workers, on the scheduler alone: hand-overs, when a drain ends, refusals.

mod common;

use common::*;
use dagger_core::wire::{Outcome, RunTask, TaskDone, ToWorker};
use dagger_core::{
    ChunkId, Incarnation, LinkCost, LostReason, MoveFailure, Options, ProcId, Scope, TaskId,
    WorkerId,
};
use dagger_sched::{
    ClusterEvent, Command, Config, DrainError, DrainProgress, Scheduler, MAX_HANDOVER_FAILURES,
};
use std::time::Duration;

const W1: WorkerId = WorkerId(1);
const W2: WorkerId = WorkerId(2);
const W3: WorkerId = WorkerId(3);

fn cluster(workers: &[u32]) -> Scheduler {
    let mut s = Scheduler::new(Config {
        saturation: false,
        ..Config::default()
    });
    for &w in workers {
        s.worker_joined(ms(0), worker(w, 1, 1, &[]));
    }
    drain(&mut s);
    s
}

fn on(w: WorkerId) -> Options {
    Options::new().scope(Scope::Worker(w))
}

fn stored(rt: &RunTask) -> TaskDone {
    TaskDone {
        task: rt.task,
        proc: rt.proc,
        run_ns: 1_000,
        started_ns: 0,
        outcome: Outcome::Stored { size: 100 },
    }
}

/// The hand-overs among commands: (destination, chunk, sources).
fn handovers(cmds: &[Command]) -> Vec<(WorkerId, ChunkId, Vec<WorkerId>)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Send {
                worker,
                msg: ToWorker::Replicate { chunk, from },
            } => Some((*worker, *chunk, from.clone())),
            _ => None,
        })
        .collect()
}

fn drained(cmds: &[Command]) -> Vec<WorkerId> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Event(ClusterEvent::WorkerDrained { worker, .. }) => Some(*worker),
            _ => None,
        })
        .collect()
}

fn released_to(cmds: &[Command], w: WorkerId) -> Vec<ChunkId> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Send {
                worker,
                msg: ToWorker::Release(cs),
            } if *worker == w => Some(cs.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Runs task `id` pinned to `w` to completion, its result stored there (and wanted by the
/// client, which keeps its handle).
fn stored_on(s: &mut Scheduler, now: Duration, id: u64, w: WorkerId) {
    s.submit(now, vec![spec(id, "f", vec![val(id)], on(w))])
        .unwrap();
    let r = runs(&drain(s));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, w);
    report(s, now, w, 1, stored(&r[0].1));
    drain(s);
    assert_eq!(s.holders(TaskId(id).chunk()), [w]);
}

#[test]
fn a_sole_copy_goes_to_the_cheapest_destination_and_the_drain_ends_once_it_is_stored() {
    let mut s = cluster(&[1, 2, 3]);
    // Workers 1 and 3 share a fast path; worker 2 is reached over the network only.
    s.topology_mut().add_shortcut(
        ProcId::root(W1),
        ProcId::root(W3),
        "shm",
        LinkCost::new(100, 100_000_000_000),
    );
    stored_on(&mut s, ms(1), 10, W1);
    s.drain(ms(2), &[W1]).unwrap();
    assert!(s.is_draining(W1));
    let cmds = drain(&mut s);
    assert_eq!(
        handovers(&cmds),
        vec![(W3, TaskId(10).chunk(), vec![W1])],
        "worker 3 is the cheapest destination"
    );
    assert!(drained(&cmds).is_empty(), "not before the copy is stored");
    assert_eq!(
        s.drain_progress(W1),
        Some(DrainProgress {
            sole_copies: 1,
            handing_over: 1,
            ..DrainProgress::default()
        })
    );
    s.check_invariants().unwrap();

    s.chunk_replicated(ms(3), W3, Incarnation(1), TaskId(10).chunk(), Ok(()));
    let cmds = drain(&mut s);
    assert_eq!(s.holders(TaskId(10).chunk()), [W1, W3]);
    assert!(matches!(
        &cmds[..],
        [Command::Event(ClusterEvent::WorkerDrained {
            worker: W1,
            moved_chunks: 1,
            moved_bytes: 100
        })]
    ));
    assert_eq!(s.drain_progress(W1), None, "its drain is over");
    assert!(s.is_draining(W1), "it still takes no work");
    s.check_invariants().unwrap();

    // Removing it now loses nothing: no task runs again.
    s.worker_lost(
        ms(4),
        W1,
        LostReason::Removed {
            detail: "drained".into(),
        },
    );
    assert!(runs(&drain(&mut s)).is_empty());
    assert_eq!(s.holders(TaskId(10).chunk()), [W3]);
    assert_eq!(s.stats().finished, 1);
}

#[test]
fn a_drain_waits_for_the_tasks_its_worker_runs() {
    let mut s = cluster(&[1, 2]);
    s.submit(ms(1), vec![spec(1, "f", vec![val(1)], on(W1))])
        .unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 1);
    s.drain(ms(2), &[W1]).unwrap();
    assert!(drained(&drain(&mut s)).is_empty(), "task 1 still runs");
    assert_eq!(s.drain_progress(W1).map(|p| p.running), Some(1));
    // It finishes with a stored result: that is handed over first.
    report(&mut s, ms(3), W1, 1, stored(&r[0].1));
    let cmds = drain(&mut s);
    assert!(drained(&cmds).is_empty());
    assert_eq!(handovers(&cmds), vec![(W2, TaskId(1).chunk(), vec![W1])]);
    s.chunk_replicated(ms(4), W2, Incarnation(1), TaskId(1).chunk(), Ok(()));
    assert_eq!(drained(&drain(&mut s)), vec![W1]);
    s.check_invariants().unwrap();
}

#[test]
fn a_worker_being_drained_receives_no_new_task() {
    let mut s = cluster(&[1, 2]);
    s.drain(ms(1), &[W1]).unwrap();
    assert_eq!(drained(&drain(&mut s)), vec![W1], "it held nothing");
    let tasks = (1..=6).map(|i| spec(i, "f", vec![val(i)], Options::new()));
    s.submit(ms(2), tasks.collect()).unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 6);
    assert!(r.iter().all(|(w, _)| *w == W2), "{r:?}");
}

#[test]
fn two_workers_drained_together_do_not_count_on_each_others_copies() {
    let mut s = cluster(&[1, 2, 3]);
    stored_on(&mut s, ms(1), 10, W1);
    // Worker 2 keeps a copy too.
    s.chunk_replicated(ms(2), W2, Incarnation(1), TaskId(10).chunk(), Ok(()));
    assert_eq!(s.holders(TaskId(10).chunk()), [W1, W2]);
    s.drain(ms(3), &[W1, W2]).unwrap();
    let cmds = drain(&mut s);
    assert!(
        drained(&cmds).is_empty(),
        "both would leave with the only copies"
    );
    let h = handovers(&cmds);
    assert_eq!(h.len(), 1, "one copy is made: {h:?}");
    assert_eq!(h[0].0, W3);
    s.chunk_replicated(ms(4), W3, Incarnation(1), TaskId(10).chunk(), Ok(()));
    let mut both = drained(&drain(&mut s));
    both.sort();
    assert_eq!(both, vec![W1, W2]);
    s.check_invariants().unwrap();
}

#[test]
fn a_destination_lost_mid_handover_is_replaced() {
    let mut s = cluster(&[1, 2, 3]);
    stored_on(&mut s, ms(1), 10, W1);
    s.drain(ms(2), &[W1]).unwrap();
    let h = handovers(&drain(&mut s));
    assert_eq!(h.len(), 1);
    let first = h[0].0;
    s.worker_lost(
        ms(3),
        first,
        LostReason::LinkClosed {
            detail: "gone".into(),
        },
    );
    let cmds = drain(&mut s);
    let other = if first == W2 { W3 } else { W2 };
    assert_eq!(
        handovers(&cmds),
        vec![(other, TaskId(10).chunk(), vec![W1])]
    );
    assert!(runs(&cmds).is_empty(), "nothing is recomputed");
    // A late answer of the lost destination is ignored.
    s.chunk_replicated(ms(4), first, Incarnation(1), TaskId(10).chunk(), Ok(()));
    assert!(drained(&drain(&mut s)).is_empty());
    s.chunk_replicated(ms(5), other, Incarnation(1), TaskId(10).chunk(), Ok(()));
    assert_eq!(drained(&drain(&mut s)), vec![W1]);
    s.check_invariants().unwrap();
}

#[test]
fn a_result_released_while_it_is_copied_is_released_at_its_destination() {
    let mut s = cluster(&[1, 2]);
    stored_on(&mut s, ms(1), 10, W1);
    s.drain(ms(2), &[W1]).unwrap();
    assert_eq!(handovers(&drain(&mut s)).len(), 1);
    // The client drops its handle: nothing needs the result any more, the drain is over.
    s.release(TaskId(10));
    let cmds = drain(&mut s);
    assert_eq!(drained(&cmds), vec![W1]);
    assert_eq!(released_to(&cmds, W1), vec![TaskId(10).chunk()]);
    s.check_invariants().unwrap();
    // The copy arrives anyway: its destination is told to drop it.
    s.chunk_replicated(ms(3), W2, Incarnation(1), TaskId(10).chunk(), Ok(()));
    let cmds = drain(&mut s);
    assert_eq!(released_to(&cmds, W2), vec![TaskId(10).chunk()]);
    assert!(s.holders(TaskId(10).chunk()).is_empty());
    s.check_invariants().unwrap();
}

#[test]
fn failed_copies_are_retried_then_the_drain_gives_up() {
    let mut s = cluster(&[1, 2]);
    stored_on(&mut s, ms(1), 10, W1);
    s.drain(ms(2), &[W1]).unwrap();
    let chunk = TaskId(10).chunk();
    let mut cmds = drain(&mut s);
    for k in 1..=MAX_HANDOVER_FAILURES {
        assert_eq!(handovers(&cmds), vec![(W2, chunk, vec![W1])], "copy {k}");
        let cause = MoveFailure::PeerLeft { worker: W1 };
        s.chunk_replicated(ms(2 + u64::from(k)), W2, Incarnation(1), chunk, Err(cause));
        cmds = drain(&mut s);
        s.check_invariants().unwrap();
    }
    assert!(matches!(
        &cmds[..],
        [Command::Event(ClusterEvent::DrainFailed {
            worker: W1,
            task: TaskId(10),
            ..
        })]
    ));
    assert_eq!(s.drain_progress(W1), None);
}

#[test]
fn a_drain_that_would_strand_a_pinned_task_is_refused_and_changes_nothing() {
    // Only worker 1 has a GPU; with saturation on, GPU tasks beyond what it can run soon
    // wait in the scheduler.
    let mut s = Scheduler::new(Config::default());
    s.worker_joined(ms(0), worker(1, 1, 1, &["gpu"]));
    s.worker_joined(ms(0), worker(2, 1, 1, &[]));
    drain(&mut s);
    let gpu = Scope::Kind(dagger_core::ProcKind::custom("gpu"));
    let tasks = (1..=20).map(|i| spec(i, "f", vec![val(i)], Options::new().scope(gpu.clone())));
    s.submit(ms(1), tasks.collect()).unwrap();
    let r = runs(&drain(&mut s));
    assert!(!r.is_empty() && r.len() < 20, "{} dispatched", r.len());
    let err = s.drain(ms(2), &[W1]).unwrap_err();
    let DrainError::WouldStrand {
        workers,
        task,
        scope,
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(workers, vec![W1]);
    assert!(
        r.iter().all(|(_, t)| t.task != task),
        "{task} was dispatched"
    );
    assert_eq!(scope, gpu.to_string());
    assert!(!s.is_draining(W1));
    assert_eq!(s.drain_progress(W1), None);
    // Nothing changed: worker 1 takes the next task when one finishes.
    report(&mut s, ms(3), W1, 1, stored(&r[0].1));
    let more = runs(&drain(&mut s));
    assert!(!more.is_empty() && more.iter().all(|(w, _)| *w == W1));
    s.check_invariants().unwrap();

    // Worker 2 may leave: nothing waits for it alone.
    s.drain(ms(4), &[W2]).unwrap();
    assert_eq!(
        s.drain(ms(4), &[WorkerId(9)]),
        Err(DrainError::UnknownWorker {
            worker: WorkerId(9)
        })
    );
}

#[test]
fn a_task_already_waiting_for_a_drained_worker_does_not_block_other_drains() {
    let mut s = cluster(&[1, 2, 3]);
    s.drain(ms(1), &[W1]).unwrap();
    assert_eq!(drained(&drain(&mut s)), vec![W1]);
    // A task pinned to the drained worker waits for it to take work again.
    s.submit(ms(2), vec![spec(1, "f", vec![val(1)], on(W1))])
        .unwrap();
    assert!(runs(&drain(&mut s)).is_empty());
    // Draining another worker does not change its lot.
    s.drain(ms(3), &[W2]).unwrap();
    assert_eq!(drained(&drain(&mut s)), vec![W2]);
    assert_eq!(
        s.drain(ms(4), &[W1]),
        Err(DrainError::AlreadyDraining { worker: W1 })
    );
    s.check_invariants().unwrap();
}

#[test]
fn a_failed_copy_is_asked_of_another_destination() {
    let mut s = cluster(&[1, 2, 3]);
    // Worker 2 is the cheaper destination, but cannot reach worker 1.
    s.topology_mut().add_shortcut(
        ProcId::root(W1),
        ProcId::root(W2),
        "shm",
        LinkCost::new(100, 100_000_000_000),
    );
    stored_on(&mut s, ms(1), 10, W1);
    s.drain(ms(2), &[W1]).unwrap();
    let chunk = TaskId(10).chunk();
    assert_eq!(handovers(&drain(&mut s)), vec![(W2, chunk, vec![W1])]);
    let cause = MoveFailure::NotHeld { worker: W1 };
    s.chunk_replicated(ms(3), W2, Incarnation(1), chunk, Err(cause));
    assert_eq!(handovers(&drain(&mut s)), vec![(W3, chunk, vec![W1])]);
    s.chunk_replicated(ms(4), W3, Incarnation(1), chunk, Ok(()));
    assert_eq!(drained(&drain(&mut s)), vec![W1]);
    s.check_invariants().unwrap();
}

#[test]
fn a_copy_answered_while_its_task_runs_there_again_is_released_only_after_that_run() {
    let mut s = cluster(&[1, 2]);
    s.submit(ms(1), vec![spec(10, "f", vec![val(10)], Options::new())])
        .unwrap();
    let r = runs(&drain(&mut s));
    let (a, b) = if r[0].0 == W1 { (W1, W2) } else { (W2, W1) };
    report(&mut s, ms(1), a, 1, stored(&r[0].1));
    drain(&mut s);
    let chunk = TaskId(10).chunk();
    s.drain(ms(2), &[a]).unwrap();
    assert_eq!(handovers(&drain(&mut s)), vec![(b, chunk, vec![a])]);
    // The drained worker is lost before the copy is reported: task 10 runs again on B.
    s.worker_lost(
        ms(3),
        a,
        LostReason::LinkClosed {
            detail: "gone".into(),
        },
    );
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, b);
    // B stored the copy before the run came: a release now could arrive after the run's
    // new result and drop it. None is sent.
    s.chunk_replicated(ms(4), b, Incarnation(1), chunk, Ok(()));
    assert!(released_to(&drain(&mut s), b).is_empty());
    // The run fails: the copy is released now.
    let failed = TaskDone {
        task: TaskId(10),
        proc: r[0].1.proc,
        run_ns: 1_000,
        started_ns: 0,
        outcome: Outcome::Failed(dagger_core::TaskError::Panicked {
            task: TaskId(10),
            func: "f".into(),
            message: "boom".into(),
        }),
    };
    report(&mut s, ms(5), b, 1, failed);
    assert_eq!(released_to(&drain(&mut s), b), vec![chunk]);
    s.check_invariants().unwrap();
}
