//! Dispatch ahead of inputs (`Config::dispatch_ahead`): a task whose unfinished inputs
//! are all dispatched to one worker goes there before they finish, in the same `Run`
//! batch, and the worker starts it without a round trip through the driver.

mod common;

use common::*;
use dagger_core::wire::{Outcome, RunArg, RunTask, TaskDone, ToWorker};
use dagger_core::{Arg, MoveFailure, Options, TaskError, TaskId, WorkerId};
use dagger_sched::{Command, Completion, Config, Scheduler};

fn failed(rt: &RunTask, err: TaskError) -> TaskDone {
    TaskDone {
        task: rt.task,
        proc: rt.proc,
        run_ns: 0,
        started_ns: 0,
        outcome: Outcome::Failed(err),
    }
}

fn pool(workers: &[u32], threads: u32) -> Scheduler {
    let mut s = Scheduler::new(Config::default());
    for &w in workers {
        s.worker_joined(ms(0), worker(w, 1, threads, &[]));
    }
    drain(&mut s);
    s
}

/// A free task `id` taking the result of each task of `inputs`.
fn after(id: u64, inputs: &[u64]) -> dagger_core::TaskSpec {
    let args = inputs.iter().map(|&d| Arg::Task(TaskId(d))).collect();
    spec(id, "f", args, Options::new())
}

/// The `Run` batches among commands: destination and the ids in each.
fn batches(cmds: &[Command]) -> Vec<(WorkerId, Vec<u64>)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Send {
                worker,
                msg: ToWorker::Run(ts),
            } => Some((*worker, ts.iter().map(|t| t.task.0).collect())),
            _ => None,
        })
        .collect()
}

fn run_of(r: &[(WorkerId, RunTask)], id: u64) -> (WorkerId, RunTask) {
    r.iter()
        .find(|x| x.1.task == TaskId(id))
        .unwrap_or_else(|| panic!("task {id} was not dispatched: {r:?}"))
        .clone()
}

fn completed(cmds: &[Command]) -> Vec<(TaskId, Result<Completion, TaskError>)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Complete { task, result } => Some((*task, result.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_free_chain_goes_ahead_in_the_batch_of_its_head() {
    let mut s = pool(&[1, 2], 1);
    s.submit(ms(0), vec![after(1, &[]), after(2, &[1]), after(3, &[2])])
        .unwrap();
    let cmds = drain(&mut s);
    s.check_invariants().unwrap();
    // One processor per worker, two tasks each (`min_depth`): the head and its dependent,
    // in one batch, to one worker; the third waits for room.
    let b = batches(&cmds);
    assert_eq!(b.len(), 1, "{b:?}");
    let (w, ids) = &b[0];
    assert_eq!(
        ids,
        &vec![1, 2],
        "task 2 goes with task 1, before it finished"
    );
    let r = runs(&cmds);
    let (_, rt2) = run_of(&r, 2);
    assert_eq!(
        rt2.args,
        vec![RunArg::Chunk {
            chunk: TaskId(1).chunk(),
            from: vec![*w],
        }],
        "task 2 waits for task 1's result on its own worker"
    );

    // Task 1's report lets task 3 go ahead of task 2, on the same worker, though task 2
    // has not finished.
    let (_, rt1) = run_of(&r, 1);
    report(&mut s, ms(1), *w, 1, value_done(&rt1, 1));
    let r = runs(&drain(&mut s));
    s.check_invariants().unwrap();
    let (w3, rt3) = run_of(&r, 3);
    assert_eq!(w3, *w);
    assert_eq!(
        rt3.args,
        vec![RunArg::Chunk {
            chunk: TaskId(2).chunk(),
            from: vec![*w],
        }]
    );
    let (_, rt2) = run_of(&runs(&cmds), 2);
    report(&mut s, ms(2), *w, 1, value_done(&rt2, 2));
    report(&mut s, ms(3), *w, 1, value_done(&rt3, 3));
    let cmds = drain(&mut s);
    s.check_invariants().unwrap();
    let done: Vec<u64> = completed(&cmds).iter().map(|(t, _)| t.0).collect();
    assert_eq!(done, vec![2, 3]);
}

#[test]
fn it_does_not_go_ahead_when_turned_off() {
    let mut s = Scheduler::new(Config {
        dispatch_ahead: false,
        ..Config::default()
    });
    s.worker_joined(ms(0), worker(1, 1, 1, &[]));
    drain(&mut s);
    s.submit(ms(0), vec![after(1, &[]), after(2, &[1])])
        .unwrap();
    let ids: Vec<u64> = runs(&drain(&mut s)).iter().map(|x| x.1.task.0).collect();
    assert_eq!(ids, vec![1]);
}

#[test]
fn inputs_on_two_workers_wait_until_only_one_is_unfinished() {
    let mut s = pool(&[1, 2], 1);
    s.submit(
        ms(0),
        vec![
            spec(
                1,
                "a",
                vec![],
                Options::new().scope(dagger_core::Scope::Worker(WorkerId(1))),
            ),
            spec(
                2,
                "b",
                vec![],
                Options::new().scope(dagger_core::Scope::Worker(WorkerId(2))),
            ),
            after(3, &[1, 2]),
        ],
    )
    .unwrap();
    let r = runs(&drain(&mut s));
    s.check_invariants().unwrap();
    let ids: Vec<u64> = r.iter().map(|x| x.1.task.0).collect();
    assert_eq!(
        ids,
        vec![1, 2],
        "task 3's inputs run on two workers: it waits"
    );

    // Task 1 finished (a large result, kept on worker 1): task 3 now waits for task 2
    // only, so it goes ahead to worker 2 and fetches task 1's result from worker 1.
    let (_, rt1) = run_of(&r, 1);
    report(&mut s, ms(1), WorkerId(1), 1, stored_done(&rt1, 1 << 20));
    let r3 = runs(&drain(&mut s));
    s.check_invariants().unwrap();
    let (w3, rt3) = run_of(&r3, 3);
    assert_eq!(w3, WorkerId(2));
    assert_eq!(
        rt3.args,
        vec![
            RunArg::Chunk {
                chunk: TaskId(1).chunk(),
                from: vec![WorkerId(1)],
            },
            RunArg::Chunk {
                chunk: TaskId(2).chunk(),
                from: vec![WorkerId(2)],
            },
        ]
    );
}

#[test]
fn a_task_ahead_runs_again_elsewhere_when_its_worker_is_lost() {
    let mut s = pool(&[1, 2], 1);
    s.submit(ms(0), vec![after(1, &[]), after(2, &[1])])
        .unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 2, "task 2 went ahead: {r:?}");
    let lost = r[0].0;
    assert_eq!(r[1].0, lost);
    let other = if lost == WorkerId(1) {
        WorkerId(2)
    } else {
        WorkerId(1)
    };
    s.worker_lost(
        ms(1),
        lost,
        dagger_core::LostReason::ProcessExited {
            pid: 1,
            exit: dagger_core::ExitCause::Signal(9),
        },
    );
    s.check_invariants().unwrap();
    let r = runs(&drain(&mut s));
    s.check_invariants().unwrap();
    // Both run again on the worker that is left, task 2 again ahead of task 1.
    let ids: Vec<(WorkerId, u64, u32)> = r.iter().map(|x| (x.0, x.1.task.0, x.1.attempt)).collect();
    assert_eq!(ids, vec![(other, 1, 2), (other, 2, 2)]);
    let (_, rt2) = run_of(&r, 2);
    assert_eq!(
        rt2.args,
        vec![RunArg::Chunk {
            chunk: TaskId(1).chunk(),
            from: vec![other],
        }]
    );
    report(&mut s, ms(2), other, 1, value_done(&r[0].1, 1));
    report(&mut s, ms(2), other, 1, value_done(&r[1].1, 2));
    let cmds = drain(&mut s);
    s.check_invariants().unwrap();
    let done: Vec<(u64, bool)> = completed(&cmds)
        .iter()
        .map(|(t, res)| (t.0, res.is_ok()))
        .collect();
    assert_eq!(done, vec![(1, true), (2, true)]);
}

#[test]
fn a_draining_worker_gets_no_task_ahead() {
    let mut s = pool(&[1, 2], 1);
    s.submit(ms(0), vec![after(1, &[]), after(3, &[])]).unwrap();
    let r = runs(&drain(&mut s));
    let (w1, rt1) = run_of(&r, 1);
    let (w3, rt3) = run_of(&r, 3);
    assert_ne!(w1, w3, "one head per worker: {r:?}");
    s.drain(ms(1), &[w1]).unwrap();
    drain(&mut s);
    s.submit(ms(2), vec![after(2, &[1]), after(4, &[3])])
        .unwrap();
    let r = runs(&drain(&mut s));
    s.check_invariants().unwrap();
    // Task 4 goes ahead to its input's worker; task 2 does not go to the draining one.
    let ids: Vec<(WorkerId, u64)> = r.iter().map(|x| (x.0, x.1.task.0)).collect();
    assert_eq!(ids, vec![(w3, 4)]);

    // Once tasks 1 and 3 are done, task 2 runs on the worker that stays.
    report(&mut s, ms(3), w1, 1, value_done(&rt1, 1));
    report(&mut s, ms(3), w3, 1, value_done(&rt3, 3));
    let r = runs(&drain(&mut s));
    s.check_invariants().unwrap();
    let ids: Vec<(WorkerId, u64)> = r.iter().map(|x| (x.0, x.1.task.0)).collect();
    assert_eq!(ids, vec![(w3, 2)]);
}

#[test]
fn tasks_ahead_are_held_to_the_saturation_bound() {
    // One worker, two processors: at most `min_depth` (2) unmeasured tasks each.
    let mut s = pool(&[1], 2);
    let mut specs = vec![after(1, &[])];
    specs.extend((2..=21).map(|i| after(i, &[1])));
    s.submit(ms(0), specs).unwrap();
    let r = runs(&drain(&mut s));
    s.check_invariants().unwrap();
    assert_eq!(r.len(), 4, "task 1 and three of its dependents: {r:?}");
    assert_eq!(r[0].1.task, TaskId(1));

    // Once task 1 is done the others are ready, and placed as ready tasks.
    report(&mut s, ms(1), WorkerId(1), 1, value_done(&r[0].1, 1));
    let r2 = runs(&drain(&mut s));
    s.check_invariants().unwrap();
    assert_eq!(r2.len(), 1, "the room task 1 left: {r2:?}");
}

#[test]
fn a_task_ahead_of_a_failed_input_runs_again_without_spending_its_loss_budget() {
    let mut s = pool(&[1], 1);
    s.submit(
        ms(0),
        vec![
            spec(1, "flaky", vec![], Options::new().retries(1)),
            spec(
                2,
                "f",
                vec![Arg::Task(TaskId(1))],
                Options::new().loss_retries(0),
            ),
        ],
    )
    .unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 2, "task 2 went ahead: {r:?}");
    let w = r[0].0;
    // The worker fails task 2 first (its input will not come), then task 1's panic.
    let cause = MoveFailure::SourceFailed;
    let err = TaskError::MoveFailed {
        task: TaskId(2),
        cause,
    };
    report(&mut s, ms(1), w, 1, failed(&r[1].1, err));
    s.check_invariants().unwrap();
    let panic = TaskError::Panicked {
        task: TaskId(1),
        func: "flaky".into(),
        message: "flaky".into(),
    };
    report(&mut s, ms(1), w, 1, failed(&r[0].1, panic));
    let cmds = drain(&mut s);
    s.check_invariants().unwrap();
    assert!(completed(&cmds).is_empty(), "nothing failed: {cmds:?}");
    let ids: Vec<(u64, u32)> = runs(&cmds)
        .iter()
        .map(|x| (x.1.task.0, x.1.attempt))
        .collect();
    assert_eq!(ids, vec![(1, 2), (2, 2)], "both run again, task 2 ahead");
}

#[test]
fn a_long_free_chain_goes_ahead_once_its_function_is_measured() {
    let mut s = pool(&[1], 1);
    s.submit(ms(0), vec![after(1, &[])]).unwrap();
    let r = runs(&drain(&mut s));
    report(&mut s, ms(1), WorkerId(1), 1, value_done(&r[0].1, 0));
    drain(&mut s);
    // `f` runs in 1 µs: a 1,000-task chain fits the 5 ms horizon and goes in one batch.
    let n = 1_000u64;
    let specs = (2..2 + n).map(|i| after(i, &[i - 1])).collect();
    s.submit(ms(2), specs).unwrap();
    let cmds = drain(&mut s);
    s.check_invariants().unwrap();
    let b = batches(&cmds);
    let sent: usize = b.iter().map(|(_, ids)| ids.len()).sum();
    assert_eq!(sent as u64, n, "{} batches", b.len());
    let r = runs(&cmds);
    for (k, (_, rt)) in r.iter().enumerate().skip(1) {
        let prev = r[k - 1].1.task;
        assert_eq!(
            rt.args,
            vec![RunArg::Chunk {
                chunk: prev.chunk(),
                from: vec![WorkerId(1)],
            }]
        );
    }
}

/// A task is sent `quiet` (its worker may report it late) only when nothing waits for its
/// report: its client handle is released, each dependent is dispatched by the time its
/// batch goes out, and no ready task is held back for room.
#[test]
fn only_tasks_nothing_waits_for_are_sent_quiet() {
    let pinned = || Options::new().scope(dagger_core::Scope::Worker(WorkerId(1)));
    let chain = |from: u64| {
        (from..from + 3)
            .map(|id| {
                let args = if id == from {
                    vec![val(id)]
                } else {
                    vec![Arg::Task(TaskId(id - 1))]
                };
                spec(id, "f", args, pinned())
            })
            .collect::<Vec<_>>()
    };
    let quiet = |r: &[(WorkerId, RunTask)], id: u64| run_of(r, id).1.quiet;
    // Tasks of unknown run time report their start (`watch`), and a watched task is
    // never quiet: watch suspects only.
    let pool = |workers: &[u32], threads: u32| {
        let mut s = Scheduler::new(Config {
            watch_threshold: std::time::Duration::MAX,
            ..Config::default()
        });
        for &w in workers {
            s.worker_joined(ms(0), worker(w, 1, threads, &[]));
        }
        drain(&mut s);
        s
    };

    // A chain pinned to one worker goes out whole; tasks 1 and 2 have no handle.
    let mut s = pool(&[1], 2);
    s.submit(ms(0), chain(1)).unwrap();
    s.release(TaskId(1));
    s.release(TaskId(2));
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 3, "{r:?}");
    assert!(quiet(&r, 1) && quiet(&r, 2), "{r:?}");
    assert!(!quiet(&r, 3), "task 3's client holds a handle: {r:?}");

    // The same with the handles kept: nothing is quiet.
    let mut s = pool(&[1], 2);
    s.submit(ms(0), chain(1)).unwrap();
    let r = runs(&drain(&mut s));
    assert!(r.iter().all(|(_, rt)| !rt.quiet), "{r:?}");

    // A dependent that is not dispatched waits in the driver for the reports: here its
    // inputs run on two workers, so its place is not decided before they finish.
    let mut s = pool(&[1, 2], 1);
    let on = |id: u64, w: u32| {
        spec(
            id,
            "f",
            vec![val(id)],
            Options::new().scope(dagger_core::Scope::Worker(WorkerId(w))),
        )
    };
    s.submit(ms(0), vec![on(1, 1), on(2, 2), after(3, &[1, 2])])
        .unwrap();
    s.release(TaskId(1));
    s.release(TaskId(2));
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 2, "task 3 waits: {r:?}");
    assert!(
        !quiet(&r, 1) && !quiet(&r, 2),
        "task 3 waits for them: {r:?}"
    );

    // Ready tasks held back for room: every report frees some.
    let mut s = pool(&[1], 1);
    s.submit(ms(0), (1..=8).map(|id| after(id, &[])).collect())
        .unwrap();
    for id in 1..=8 {
        s.release(TaskId(id));
    }
    let r = runs(&drain(&mut s));
    assert!(r.len() < 8, "some are held back: {r:?}");
    assert!(r.iter().all(|(_, rt)| !rt.quiet), "{r:?}");
}
