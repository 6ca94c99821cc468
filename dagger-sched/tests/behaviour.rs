//! Targeted scenarios, each driving the scheduler directly with virtual time.

mod common;

use common::*;
use dagger_core::wire::{self, Outcome, RunArg, RunPart, RunTask, TaskDone, ToWorker};
use dagger_core::{
    Arg, ChunkId, GraphError, Incarnation, MoveFailure, Options, Part, ProcId, Scope, TaskError,
    TaskId, WorkerId,
};
use dagger_sched::{ClusterEvent, Command, Completion, Config, Scheduler};
use std::time::{Duration, Instant};

fn completes(cmds: &[Command]) -> Vec<(TaskId, Result<Completion, TaskError>)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Complete { task, result } => Some((*task, result.clone())),
            _ => None,
        })
        .collect()
}

fn releases(cmds: &[Command]) -> Vec<(WorkerId, Vec<ChunkId>)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Send {
                worker,
                msg: ToWorker::Release(cs),
            } => Some((*worker, cs.clone())),
            _ => None,
        })
        .collect()
}

fn events(cmds: &[Command]) -> Vec<ClusterEvent> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn cluster(workers: &[u32], threads: u32) -> Scheduler {
    cluster_with(Config::default(), workers, threads)
}

fn cluster_with(config: Config, workers: &[u32], threads: u32) -> Scheduler {
    let mut s = Scheduler::new(config);
    for &w in workers {
        s.worker_joined(ms(0), worker(w, 1, threads, &[]));
    }
    drain(&mut s);
    s
}

/// A pool whose tasks always wait for their inputs to finish (none is dispatched ahead of
/// them), for tests about what happens once inputs are done.
fn cluster_after_inputs(workers: &[u32], threads: u32) -> Scheduler {
    let config = Config {
        dispatch_ahead: false,
        ..Config::default()
    };
    cluster_with(config, workers, threads)
}

/// A configuration that dispatches every ready task at once, for tests about where tasks
/// go rather than when.
fn unbounded() -> Config {
    Config {
        saturation: false,
        ..Config::default()
    }
}

fn on(w: u32) -> Options {
    Options::new().scope(Scope::Worker(WorkerId(w)))
}

#[test]
fn placement_prefers_the_holder_of_a_large_input() {
    for holder in [1u32, 2] {
        let mut s = cluster(&[1, 2], 2);
        s.submit(ms(1), vec![spec(1, "make", vec![], on(holder))])
            .unwrap();
        let r = runs(&drain(&mut s));
        assert_eq!(r.len(), 1);
        report(
            &mut s,
            ms(2),
            WorkerId(holder),
            1,
            stored_done(&r[0].1, 100 << 20),
        );
        assert_eq!(s.holders(ChunkId(1)), &[WorkerId(holder)]);
        s.submit(
            ms(3),
            vec![spec(2, "use", vec![Arg::Task(TaskId(1))], Options::new())],
        )
        .unwrap();
        let r = runs(&drain(&mut s));
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].0,
            WorkerId(holder),
            "placed away from its 100 MiB input"
        );
        assert_eq!(
            r[0].1.args,
            vec![RunArg::Chunk {
                chunk: ChunkId(1),
                from: vec![WorkerId(holder)]
            }]
        );
    }
}

#[test]
fn scopes_are_respected() {
    let mut s = Scheduler::new(unbounded());
    s.worker_joined(ms(0), worker(1, 1, 2, &[]));
    s.worker_joined(ms(0), worker(2, 1, 2, &["fpga"]));
    drain(&mut s);
    let fpga = ProcId::new(WorkerId(2), 3);
    let mut tasks = Vec::new();
    for k in 0..8u64 {
        tasks.push(spec(
            100 + k,
            "p",
            vec![val(k)],
            Options::new().scope(Scope::Proc(ProcId::new(WorkerId(1), 2))),
        ));
        tasks.push(spec(200 + k, "w", vec![val(k)], on(2)));
        tasks.push(spec(
            300 + k,
            "k",
            vec![val(k)],
            Options::new().scope(Scope::kind("fpga")),
        ));
        tasks.push(spec(400 + k, "a", vec![val(k)], Options::new()));
    }
    s.submit(ms(1), tasks).unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 32);
    let mut any_on = [0, 0];
    for (w, rt) in &r {
        assert_eq!(*w, rt.proc.worker);
        match rt.task.0 / 100 {
            1 => assert_eq!(rt.proc, ProcId::new(WorkerId(1), 2)),
            2 => assert!(rt.proc.worker == WorkerId(2) && (1..=2).contains(&rt.proc.index)),
            3 => assert_eq!(rt.proc, fpga),
            _ => {
                assert_ne!(rt.proc, fpga, "Scope::Any only admits threads");
                assert!(!rt.proc.is_root());
                any_on[rt.proc.worker.0 as usize - 1] += 1;
            }
        }
    }
    assert!(
        any_on[0] > 0 && any_on[1] > 0,
        "unscoped work spread over both workers: {any_on:?}"
    );
}

#[test]
fn no_processor_fails_but_an_empty_pool_waits() {
    // Empty pool: the task waits for a worker.
    let mut s = Scheduler::new(unbounded());
    s.submit(ms(0), vec![spec(1, "f", vec![val(1)], Options::new())])
        .unwrap();
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.stats().ready, 1);
    s.worker_joined(ms(1), worker(1, 1, 1, &[]));
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 1);

    // A kind nobody has fails; other tasks are unaffected.
    s.submit(
        ms(2),
        vec![
            spec(2, "g", vec![], Options::new().scope(Scope::kind("fpga"))),
            spec(3, "h", vec![Arg::Task(TaskId(2))], Options::new()),
            spec(4, "i", vec![], Options::new()),
        ],
    )
    .unwrap();
    let cmds = drain(&mut s);
    let c = completes(&cmds);
    assert!(
        matches!(
            &c[0],
            (
                TaskId(2),
                Err(TaskError::NoProcessor {
                    task: TaskId(2),
                    ..
                })
            )
        ),
        "{c:?}"
    );
    assert!(
        matches!(
            &c[1],
            (
                TaskId(3),
                Err(TaskError::DependencyFailed {
                    dependency: TaskId(2),
                    ..
                })
            )
        ),
        "{c:?}"
    );
    assert_eq!(runs(&cmds).len(), 1);

    // A draining worker gets nothing; the task waits until it accepts again.
    s.set_accepting(WorkerId(1), false);
    s.submit(ms(3), vec![spec(5, "f", vec![], Options::new())])
        .unwrap();
    assert!(runs(&drain(&mut s)).is_empty());
    s.set_accepting(WorkerId(1), true);
    assert_eq!(runs(&drain(&mut s))[0].1.task, TaskId(5));
}

fn graced(grace: Option<Duration>) -> Scheduler {
    Scheduler::new(Config {
        no_processor_grace: grace,
        dispatch_ahead: false,
        ..Config::default()
    })
}

fn lose(s: &mut Scheduler, now: Duration, w: u32) {
    s.worker_lost(
        now,
        WorkerId(w),
        dagger_core::LostReason::ProcessExited {
            pid: 1,
            exit: dagger_core::ExitCause::Signal(9),
        },
    );
}

#[test]
fn a_task_fails_when_no_processor_comes_within_the_grace_period() {
    let grace = Duration::from_secs(5);
    let mut s = graced(Some(grace));
    s.worker_joined(ms(0), worker(1, 1, 1, &[]));
    drain(&mut s);
    s.submit(
        ms(1),
        vec![
            spec(1, "f", vec![], Options::new()),
            spec(2, "g", vec![Arg::Task(TaskId(1))], Options::new()),
        ],
    )
    .unwrap();
    assert_eq!(runs(&drain(&mut s)).len(), 1);
    assert_eq!(s.poll_timeout(), None, "nothing waits for a processor");

    // Every worker is lost: task 1 waits for a processor, from the loss on.
    lose(&mut s, ms(10), 1);
    assert!(runs(&drain(&mut s)).is_empty());
    assert_eq!(s.poll_timeout(), Some(ms(10) + grace));
    s.check_invariants().unwrap();

    // A process without cores joins: still no processor, and the wait is not restarted.
    s.worker_joined(ms(20), worker(2, 1, 0, &[]));
    assert!(runs(&drain(&mut s)).is_empty());
    assert_eq!(s.poll_timeout(), Some(ms(10) + grace));

    // Before the deadline nothing happens; at it, the task and its dependent fail.
    s.handle_timeout(ms(10) + grace - ms(1));
    assert!(completes(&drain(&mut s)).is_empty());
    s.handle_timeout(ms(10) + grace);
    let c = completes(&drain(&mut s));
    assert!(
        matches!(
            &c[..],
            [
                (
                    TaskId(1),
                    Err(TaskError::NoProcessor {
                        task: TaskId(1),
                        ..
                    })
                ),
                (
                    TaskId(2),
                    Err(TaskError::DependencyFailed {
                        dependency: TaskId(1),
                        ..
                    })
                )
            ]
        ),
        "{c:?}"
    );
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.stats().failed, 2);
    s.check_invariants().unwrap();
}

#[test]
fn a_task_runs_when_a_worker_joins_within_the_grace_period() {
    let grace = Duration::from_secs(5);
    let mut s = graced(Some(grace));
    s.worker_joined(ms(0), worker(1, 1, 1, &[]));
    drain(&mut s);
    s.submit(ms(1), vec![spec(1, "f", vec![], on(1))]).unwrap();
    assert_eq!(runs(&drain(&mut s)).len(), 1);
    lose(&mut s, ms(10), 1);
    drain(&mut s);
    assert_eq!(
        s.poll_timeout(),
        Some(ms(10) + grace),
        "the wait is bounded"
    );

    // Worker 1 comes back within the grace period: the task runs there.
    s.worker_joined(ms(10) + grace / 2, worker(1, 2, 1, &[]));
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].0, r[0].1.task), (WorkerId(1), TaskId(1)));
    assert_eq!(s.poll_timeout(), None, "the wait ended");

    // The old deadline passing does nothing; the task completes normally.
    s.handle_timeout(ms(10) + grace * 2);
    assert!(completes(&drain(&mut s)).is_empty());
    report(
        &mut s,
        ms(10) + grace * 2,
        WorkerId(1),
        2,
        value_done(&r[0].1, 7),
    );
    let c = completes(&drain(&mut s));
    assert!(matches!(&c[..], [(TaskId(1), Ok(_))]), "{c:?}");
    s.check_invariants().unwrap();
}

#[test]
fn an_empty_pool_waits_at_most_the_grace_period() {
    let grace = Duration::from_secs(5);
    let mut s = graced(Some(grace));
    s.submit(ms(100), vec![spec(1, "f", vec![val(1)], Options::new())])
        .unwrap();
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.poll_timeout(), Some(ms(100) + grace));
    s.handle_timeout(ms(100) + grace);
    let c = completes(&drain(&mut s));
    assert!(
        matches!(
            &c[..],
            [(
                TaskId(1),
                Err(TaskError::NoProcessor {
                    task: TaskId(1),
                    ..
                })
            )]
        ),
        "{c:?}"
    );

    // With no grace period configured it waits for good.
    let mut s = graced(None);
    s.submit(ms(0), vec![spec(1, "f", vec![val(1)], Options::new())])
        .unwrap();
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(Duration::from_secs(3600));
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.stats().ready, 1);
}

#[test]
fn a_task_parked_behind_a_draining_worker_is_reconsidered_when_it_leaves() {
    let mut s = cluster(&[1, 2], 1);
    s.set_accepting(WorkerId(2), false);
    s.submit(ms(1), vec![spec(1, "f", vec![], on(2))]).unwrap();
    assert!(
        runs(&drain(&mut s)).is_empty(),
        "worker 2 does not accept work"
    );
    lose(&mut s, ms(2), 2);
    let c = completes(&drain(&mut s));
    assert!(
        matches!(
            &c[..],
            [(
                TaskId(1),
                Err(TaskError::NoProcessor {
                    task: TaskId(1),
                    scope,
                })
            )] if scope == "worker-2 (worker-2 not in the pool: lost, or never joined)"
        ),
        "{c:?}"
    );
    s.check_invariants().unwrap();
}

#[test]
fn panics_fail_dependents_only_and_retries_rerun() {
    let mut s = cluster_after_inputs(&[1], 2);
    s.submit(
        ms(0),
        vec![
            spec(1, "bad", vec![], Options::new()),
            spec(2, "f", vec![Arg::Task(TaskId(1))], Options::new()),
            spec(3, "f", vec![Arg::Task(TaskId(2)), val(3)], Options::new()),
            spec(4, "ok", vec![], Options::new()),
            spec(5, "flaky", vec![], Options::new().retries(2)),
        ],
    )
    .unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(
        r.iter().map(|x| x.1.task.0).collect::<Vec<_>>(),
        vec![1, 4, 5]
    );
    let panic = |rt: &RunTask| TaskDone {
        task: rt.task,
        proc: rt.proc,
        run_ns: 5,
        started_ns: 0,
        outcome: Outcome::Failed(TaskError::Panicked {
            task: rt.task,
            func: rt.func.to_string(),
            message: "boom".into(),
        }),
    };
    report(&mut s, ms(1), WorkerId(1), 1, panic(&r[0].1));
    report(&mut s, ms(1), WorkerId(1), 1, value_done(&r[1].1, 4));
    report(&mut s, ms(1), WorkerId(1), 1, panic(&r[2].1));
    let cmds = drain(&mut s);
    let c = completes(&cmds);
    assert!(matches!(
        &c[0],
        (TaskId(1), Err(TaskError::Panicked { .. }))
    ));
    let cause = Box::new(TaskError::Panicked {
        task: TaskId(1),
        func: "bad".into(),
        message: "boom".into(),
    });
    assert!(c.contains(&(
        TaskId(2),
        Err(TaskError::DependencyFailed {
            task: TaskId(2),
            dependency: TaskId(1),
            cause: cause.clone()
        })
    )));
    assert!(c.contains(&(
        TaskId(3),
        Err(TaskError::DependencyFailed {
            task: TaskId(3),
            dependency: TaskId(1),
            cause
        })
    )));
    assert!(c.contains(&(TaskId(4), Ok(Completion::Value(wire::encode(&4u64))))));
    assert!(
        !c.iter().any(|(t, _)| *t == TaskId(5)),
        "a task with retries left does not complete"
    );
    assert!(events(&cmds).contains(&ClusterEvent::TaskRetried {
        task: TaskId(5),
        attempt: 2
    }));
    let again = runs(&cmds);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1.task, TaskId(5));
    report(&mut s, ms(2), WorkerId(1), 1, value_done(&again[0].1, 5));
    let c = completes(&drain(&mut s));
    assert_eq!(
        c,
        vec![(TaskId(5), Ok(Completion::Value(wire::encode(&5u64))))]
    );
    assert_eq!(s.task_info(TaskId(5)).unwrap().attempts, 2);
    s.check_invariants().unwrap();
}

#[test]
fn bad_graphs_are_refused_whole() {
    let mut s = cluster(&[1], 1);
    s.submit(ms(0), vec![spec(1, "f", vec![], Options::new())])
        .unwrap();
    let before = s.stats();
    let cyc = s.submit(
        ms(0),
        vec![
            spec(10, "f", vec![Arg::Task(TaskId(1))], Options::new()),
            spec(11, "f", vec![Arg::Task(TaskId(12))], Options::new()),
            spec(12, "f", vec![Arg::Task(TaskId(13))], Options::new()),
            spec(13, "f", vec![Arg::Task(TaskId(11))], Options::new()),
        ],
    );
    assert!(
        matches!(cyc, Err(GraphError::Cycle { task }) if [11, 12, 13].contains(&task.0)),
        "{cyc:?}"
    );
    let selfdep = s.submit(
        ms(0),
        vec![spec(20, "f", vec![Arg::Task(TaskId(20))], Options::new())],
    );
    assert_eq!(selfdep, Err(GraphError::Cycle { task: TaskId(20) }));
    let dup = s.submit(
        ms(0),
        vec![
            spec(30, "f", vec![], Options::new()),
            spec(30, "f", vec![], Options::new()),
        ],
    );
    assert_eq!(dup, Err(GraphError::DuplicateTask { task: TaskId(30) }));
    let dup_old = s.submit(ms(0), vec![spec(1, "f", vec![], Options::new())]);
    assert_eq!(dup_old, Err(GraphError::DuplicateTask { task: TaskId(1) }));
    let unknown = s.submit(
        ms(0),
        vec![
            spec(40, "f", vec![], Options::new()),
            spec(41, "f", vec![Arg::Task(TaskId(99))], Options::new()),
        ],
    );
    assert_eq!(
        unknown,
        Err(GraphError::UnknownDependency {
            task: TaskId(41),
            dependency: TaskId(99)
        })
    );
    assert_eq!(s.stats(), before, "nothing of a refused batch is kept");
    assert!(s.task_info(TaskId(40)).is_none());
    // The same ids are accepted once the batch is valid (dependencies may come later in it).
    s.submit(
        ms(0),
        vec![
            spec(41, "f", vec![Arg::Task(TaskId(40))], Options::new()),
            spec(40, "f", vec![], Options::new()),
        ],
    )
    .unwrap();
    s.check_invariants().unwrap();
}

#[test]
fn stale_and_misdirected_reports_are_fenced() {
    let mut s = cluster(&[1, 2], 1);
    s.submit(ms(0), vec![spec(1, "f", vec![], on(1))]).unwrap();
    let r = runs(&drain(&mut s));
    let d = value_done(&r[0].1, 7);
    s.task_done(ms(1), WorkerId(1), Incarnation(0), d.clone());
    s.task_done(ms(1), WorkerId(2), Incarnation(1), d.clone());
    s.task_done(ms(1), WorkerId(9), Incarnation(1), d.clone());
    assert!(completes(&drain(&mut s)).is_empty());
    // The worker is lost and comes back: the old incarnation's report is ignored.
    s.worker_lost(
        ms(2),
        WorkerId(1),
        dagger_core::LostReason::LinkClosed {
            detail: "reset".into(),
        },
    );
    s.worker_joined(ms(3), worker(1, 2, 1, &[]));
    let cmds = drain(&mut s);
    assert!(events(&cmds).contains(&ClusterEvent::WorkerLost {
        worker: WorkerId(1),
        reason: dagger_core::LostReason::LinkClosed {
            detail: "reset".into()
        }
    }));
    let r2 = runs(&cmds);
    assert_eq!(r2.len(), 1, "re-dispatched to the new incarnation");
    report(&mut s, ms(4), WorkerId(1), 1, d);
    assert!(completes(&drain(&mut s)).is_empty());
    report(&mut s, ms(5), WorkerId(1), 2, value_done(&r2[0].1, 8));
    assert_eq!(
        completes(&drain(&mut s)),
        vec![(TaskId(1), Ok(Completion::Value(wire::encode(&8u64))))]
    );
}

#[test]
fn worker_scoped_chain_is_dispatched_early() {
    let mut s = cluster(&[1, 2], 1);
    let n = 10u64;
    let mut tasks = vec![spec(1, "inc", vec![val(0)], on(1))];
    for i in 2..=n {
        tasks.push(spec(
            i,
            "inc",
            vec![Arg::Task(TaskId(i - 1))],
            on(if i % 2 == 1 { 1 } else { 2 }),
        ));
    }
    s.submit(ms(0), tasks).unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(
        r.len(),
        n as usize,
        "every hop is dispatched before anything finished"
    );
    for (w, rt) in &r {
        let i = rt.task.0;
        assert_eq!(w.0, if i % 2 == 1 { 1 } else { 2 });
        if i > 1 {
            let prev_worker = WorkerId(if (i - 1) % 2 == 1 { 1 } else { 2 });
            assert_eq!(
                rt.args,
                vec![RunArg::Chunk {
                    chunk: ChunkId(i - 1),
                    from: vec![prev_worker]
                }]
            );
        }
    }
    for (i, (w, rt)) in r.iter().enumerate() {
        report(
            &mut s,
            ms(1 + i as u64),
            *w,
            1,
            value_done(rt, i as u64 + 1),
        );
    }
    let cmds = drain(&mut s);
    assert_eq!(completes(&cmds).len(), n as usize);
    assert!(runs(&cmds).is_empty());
    s.check_invariants().unwrap();
}

#[test]
fn chunks_are_released_once_unneeded() {
    let mut s = cluster(&[1, 2], 1);
    s.submit(
        ms(0),
        vec![
            spec(1, "big", vec![], on(1)),
            spec(2, "use", vec![Arg::Task(TaskId(1))], on(2)),
        ],
    )
    .unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 2);
    report(&mut s, ms(1), WorkerId(1), 1, stored_done(&r[0].1, 1 << 20));
    s.release(TaskId(1));
    assert!(
        releases(&drain(&mut s)).is_empty(),
        "task 2 still fetches chunk 1"
    );
    report(&mut s, ms(2), WorkerId(2), 1, stored_done(&r[1].1, 1 << 20));
    assert_eq!(
        releases(&drain(&mut s)),
        vec![(WorkerId(1), vec![ChunkId(1)])]
    );
    // A small result: the scheduler keeps it, the worker's copy goes at once.
    s.submit(ms(3), vec![spec(3, "small", vec![], on(2))])
        .unwrap();
    let r = runs(&drain(&mut s));
    report(&mut s, ms(4), WorkerId(2), 1, value_done(&r[0].1, 3));
    assert_eq!(
        releases(&drain(&mut s)),
        vec![(WorkerId(2), vec![ChunkId(3)])]
    );
    // Its dependents get it inline.
    s.submit(
        ms(5),
        vec![spec(4, "use", vec![Arg::Task(TaskId(3))], on(1))],
    )
    .unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r[0].1.args, vec![RunArg::Value(wire::encode(&3u64))]);
    s.release(TaskId(2));
    assert_eq!(
        releases(&drain(&mut s)),
        vec![(WorkerId(2), vec![ChunkId(2)])]
    );
    s.check_invariants().unwrap();
}

/// Results the scheduler keeps, short (in the task's record) and long (in the data
/// directory), reach their dependents whole; a task whose handle was released gets no
/// completion for its result (nobody reads it), but still one for its failure.
#[test]
fn kept_results_of_any_length_reach_dependents_and_released_tasks_complete_only_failures() {
    let mut s = cluster_after_inputs(&[1, 2], 1);
    let long: Vec<u8> = (0..100).collect();
    s.submit(
        ms(0),
        vec![
            spec(1, "short", vec![], on(1)),
            spec(2, "long", vec![], on(1)),
            spec(3, "fails", vec![], on(1)),
        ],
    )
    .unwrap();
    for id in [1, 2, 3] {
        s.release(TaskId(id));
    }
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 3);
    let by_id = |id: u64| r.iter().find(|(_, rt)| rt.task == TaskId(id)).unwrap();
    // Dependents keep the results wanted after the release.
    s.submit(
        ms(1),
        vec![spec(
            4,
            "use",
            vec![Arg::Task(TaskId(1)), Arg::Task(TaskId(2))],
            Options::new(),
        )],
    )
    .unwrap();
    assert!(runs(&drain(&mut s)).is_empty(), "its inputs are unfinished");
    report(&mut s, ms(2), WorkerId(1), 1, value_done(&by_id(1).1, 7));
    let mut long_done = value_done(&by_id(2).1, 0);
    long_done.outcome = Outcome::Value(long.clone());
    report(&mut s, ms(2), WorkerId(1), 1, long_done);
    let mut failed = value_done(&by_id(3).1, 0);
    failed.outcome = Outcome::Failed(TaskError::Panicked {
        task: TaskId(3),
        func: "fails".into(),
        message: "boom".into(),
    });
    report(&mut s, ms(2), WorkerId(1), 1, failed);
    let cmds = drain(&mut s);
    let done = completes(&cmds);
    assert_eq!(done.len(), 1, "only the failure completes: {done:?}");
    assert_eq!(done[0].0, TaskId(3));
    assert!(done[0].1.is_err());
    s.check_invariants().unwrap();
    let r = runs(&cmds);
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].1.args,
        vec![RunArg::Value(wire::encode(&7u64)), RunArg::Value(long)]
    );
    // Once the dependent is done and released, every record (and copy) is freed.
    report(&mut s, ms(3), r[0].0, 1, value_done(&r[0].1, 1));
    assert_eq!(
        completes(&drain(&mut s)).len(),
        1,
        "task 4 was not released"
    );
    s.release(TaskId(4));
    drain(&mut s);
    s.check_invariants().unwrap();
    assert_eq!(s.stats().live, 0);
}

#[test]
fn lost_worker_reruns_tasks_and_recomputes_lost_inputs() {
    let mut s = cluster_after_inputs(&[1, 2], 1);
    s.submit(ms(0), vec![spec(1, "big", vec![], on(1))])
        .unwrap();
    let r = runs(&drain(&mut s));
    report(&mut s, ms(1), WorkerId(1), 1, stored_done(&r[0].1, 1 << 30));
    // Task 2 (any worker) produces a 1 GiB chunk; task 3 is placed next to it.
    s.submit(
        ms(2),
        vec![
            spec(2, "big", vec![], Options::new()),
            spec(3, "use", vec![Arg::Task(TaskId(2))], Options::new()),
        ],
    )
    .unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 1);
    let w2 = r[0].0;
    report(&mut s, ms(3), w2, 1, stored_done(&r[0].1, 1 << 30));
    let r3 = runs(&drain(&mut s));
    assert_eq!(r3[0].0, w2, "placed with its 1 GiB input");
    s.worker_lost(
        ms(4),
        w2,
        dagger_core::LostReason::ProcessExited {
            pid: 1,
            exit: dagger_core::ExitCause::Signal(9),
        },
    );
    let cmds = drain(&mut s);
    let ev = events(&cmds);
    assert!(
        ev.contains(&ClusterEvent::TaskRetried {
            task: TaskId(3),
            attempt: 2
        }),
        "{ev:?}"
    );
    let r = runs(&cmds);
    // Task 2 is recomputed on the surviving worker; task 3 waits for it.
    assert_eq!(r.iter().map(|x| x.1.task.0).collect::<Vec<_>>(), vec![2]);
    s.check_invariants().unwrap();
    let other = r[0].0;
    report(&mut s, ms(5), other, 1, stored_done(&r[0].1, 1 << 30));
    let cmds = drain(&mut s);
    assert!(completes(&cmds).is_empty(), "task 2 already completed once");
    let r = runs(&cmds);
    assert_eq!(r[0].1.task, TaskId(3));
    assert_eq!(
        r[0].1.args,
        vec![RunArg::Chunk {
            chunk: ChunkId(2),
            from: vec![other]
        }]
    );
    s.check_invariants().unwrap();
}

/// Recovery finds what a lost worker ran and held through a per-worker index: the right
/// tasks run again, the others are untouched, and the number of records recovery looks at
/// is the lost worker's share, not the number of tasks.
#[test]
fn lost_worker_costs_what_it_held_not_every_task() {
    let mut s = cluster(&[1, 2, 3, 4], 2);
    let mut id = 0u64;
    let mut batch = |s: &mut Scheduler, w: u32, n: u64| -> Vec<(WorkerId, RunTask)> {
        let specs = (0..n)
            .map(|_| {
                id += 1;
                spec(id, "f", vec![], on(w))
            })
            .collect();
        s.submit(ms(1), specs).unwrap();
        let r = runs(&drain(s));
        assert_eq!(r.len() as u64, n);
        assert!(r.iter().all(|(to, _)| *to == WorkerId(w)));
        r
    };
    // Workers 1-3: 100 running tasks and 50 stored results each.
    for w in 1..=3 {
        batch(&mut s, w, 100);
        for (to, rt) in batch(&mut s, w, 50) {
            report(&mut s, ms(2), to, 1, stored_done(&rt, 1 << 20));
        }
    }
    // Worker 4: 5 running tasks, 3 stored results still wanted by the client, one
    // released by the client (no copy kept) and one with a replica on worker 1.
    let running: Vec<TaskId> = batch(&mut s, 4, 5).iter().map(|r| r.1.task).collect();
    let stored = batch(&mut s, 4, 5);
    for (to, rt) in &stored {
        report(&mut s, ms(2), *to, 1, stored_done(rt, 1 << 20));
    }
    let wanted: Vec<TaskId> = stored[..3].iter().map(|r| r.1.task).collect();
    let released = stored[3].1.task;
    let replicated = stored[4].1.task;
    s.release(released);
    s.chunk_replicated(
        ms(2),
        WorkerId(1),
        Incarnation(1),
        replicated.chunk(),
        Ok(()),
    );
    drain(&mut s);
    s.check_invariants().unwrap();
    assert_eq!(s.stats().recovery_examined, 0);
    let total = s.stats().submitted;

    // Worker 4 restarts: its old incarnation is lost.
    s.worker_joined(ms(3), worker(4, 2, 2, &[]));
    let cmds = drain(&mut s);
    s.check_invariants().unwrap();
    let mut rerun: Vec<TaskId> = runs(&cmds)
        .iter()
        .map(|(to, rt)| {
            assert_eq!(*to, WorkerId(4));
            rt.task
        })
        .collect();
    rerun.sort();
    let mut expected = [running.clone(), wanted.clone()].concat();
    expected.sort();
    assert_eq!(
        rerun, expected,
        "exactly its running tasks and wanted results"
    );
    assert!(s.holders(released.chunk()).is_empty());
    assert_eq!(s.holders(replicated.chunk()), &[WorkerId(1)]);
    // 5 running + 4 copies (3 wanted, 1 replicated) of 460 tasks.
    assert_eq!(s.stats().recovery_examined, 9);
    assert_eq!(total, 460);

    // The reruns finish on the new incarnation; the index follows.
    for (to, rt) in runs(&cmds) {
        report(&mut s, ms(4), to, 2, stored_done(&rt, 1 << 20));
    }
    drain(&mut s);
    s.check_invariants().unwrap();
    assert_eq!(s.stats().running, 300);
}

/// Copies beyond the first holder are indexed too: losing a worker with only further
/// copies keeps the first holder; losing the first holder promotes the next one; results
/// removed from the middle of a worker's lists leave the others findable.
#[test]
fn further_copies_and_list_positions_follow_losses() {
    let mut s = cluster(&[1, 2, 3], 2);
    let specs = (1..=6).map(|id| spec(id, "f", vec![], on(1))).collect();
    s.submit(ms(1), specs).unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 6);
    // Finish them out of dispatch order, so removals come from the middle of the list.
    for k in [3, 0, 5, 1, 4, 2] {
        let (to, rt) = &r[k];
        report(&mut s, ms(2), *to, 1, stored_done(rt, 1 << 20));
        s.check_invariants().unwrap();
    }
    let ids: Vec<TaskId> = r.iter().map(|(_, rt)| rt.task).collect();
    // Copies of task 1 on 2 and 3; of task 2 on 2.
    s.chunk_replicated(ms(2), WorkerId(2), Incarnation(1), ids[0].chunk(), Ok(()));
    s.chunk_replicated(ms(2), WorkerId(3), Incarnation(1), ids[0].chunk(), Ok(()));
    s.chunk_replicated(ms(2), WorkerId(2), Incarnation(1), ids[1].chunk(), Ok(()));
    s.check_invariants().unwrap();
    // The client releases a result from the middle of worker 1's list.
    s.release(ids[3]);
    drain(&mut s);
    s.check_invariants().unwrap();

    // Worker 2 held only further copies: the first holder stays.
    lose(&mut s, ms(3), 2);
    assert!(runs(&drain(&mut s)).is_empty(), "nothing to recompute");
    s.check_invariants().unwrap();
    assert_eq!(s.holders(ids[0].chunk()), &[WorkerId(1), WorkerId(3)]);
    assert_eq!(s.holders(ids[1].chunk()), &[WorkerId(1)]);
    assert_eq!(s.stats().recovery_examined, 2);

    // Worker 1 was the first holder of every result: task 1's copy on 3 becomes the
    // first; the others are held nowhere now.
    lose(&mut s, ms(4), 1);
    drain(&mut s);
    s.check_invariants().unwrap();
    assert_eq!(s.holders(ids[0].chunk()), &[WorkerId(3)]);
    assert!(s.holders(ids[1].chunk()).is_empty());
    // 2 before + 5 first copies on worker 1 (task 4 was released).
    assert_eq!(s.stats().recovery_examined, 7);
}

/// A result lost after one of its inputs failed (that input's own recomputation failed)
/// cannot be recomputed: it fails with the root failure, and so does a task that needs it,
/// instead of waiting forever.
#[test]
fn a_lost_result_whose_input_failed_since_fails() {
    let mut s = cluster(&[1, 2], 1);
    s.submit(
        ms(0),
        vec![
            spec(1, "big", vec![], on(1)),
            spec(2, "use", vec![Arg::Task(TaskId(1))], on(2)),
        ],
    )
    .unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 2, "task 2 is dispatched early");
    for (w, rt) in &r {
        report(&mut s, ms(1), *w, 1, stored_done(rt, 1 << 20));
    }
    assert_eq!(completes(&drain(&mut s)).len(), 2);
    // Worker 1 is lost: task 1 (still wanted by the client) cannot run again, its scope's
    // only worker is gone.
    lose(&mut s, ms(2), 1);
    drain(&mut s);
    let no_processor = TaskError::NoProcessor {
        task: TaskId(1),
        scope: "worker-1 (worker-1 not in the pool: lost, or never joined)".into(),
    };
    assert_eq!(s.failure(TaskId(1)), Some(&no_processor));
    assert_eq!(s.failure(TaskId(2)), None, "task 2's result is still held");
    // Worker 2 is lost: task 2's result must be recomputed, from failed task 1.
    lose(&mut s, ms(3), 2);
    let cmds = drain(&mut s);
    assert!(completes(&cmds).is_empty(), "task 2 completed once already");
    assert_eq!(
        s.failure(TaskId(2)),
        Some(&TaskError::DependencyFailed {
            task: TaskId(2),
            dependency: TaskId(1),
            cause: Box::new(no_processor.clone()),
        })
    );
    assert_eq!(s.stats().waiting, 0, "nothing waits behind task 1");
    // A task that needs task 2 fails at once.
    s.submit(
        ms(4),
        vec![spec(3, "use", vec![Arg::Task(TaskId(2))], Options::new())],
    )
    .unwrap();
    assert_eq!(
        completes(&drain(&mut s)),
        vec![(
            TaskId(3),
            Err(TaskError::DependencyFailed {
                task: TaskId(3),
                dependency: TaskId(1),
                cause: Box::new(no_processor),
            })
        )]
    );
    s.check_invariants().unwrap();
}

/// A task failed by a cascade while it ran still finishes on its worker, which keeps the
/// result until it is released: the scheduler releases it when the report comes, whether
/// the result is small (inline) or stored. A report from a stale incarnation is not
/// answered (that worker is gone).
#[test]
fn the_result_of_a_task_failed_while_it_ran_is_released() {
    for stored in [false, true] {
        let mut s = cluster(&[1, 2], 1);
        s.submit(
            ms(0),
            vec![
                spec(1, "big", vec![], on(1)),
                spec(2, "use", vec![Arg::Task(TaskId(1))], on(2)),
            ],
        )
        .unwrap();
        let r = runs(&drain(&mut s));
        assert_eq!(r.len(), 2, "task 2 is dispatched early");
        let (w1, t1) = r.iter().find(|(w, _)| *w == WorkerId(1)).unwrap();
        let (w2, t2) = r.iter().find(|(w, _)| *w == WorkerId(2)).unwrap();
        report(&mut s, ms(1), *w1, 1, stored_done(t1, 1 << 20));
        drain(&mut s);
        // Worker 1 is lost while task 2 runs: task 1 cannot run again, task 2 fails.
        lose(&mut s, ms(2), 1);
        let c = completes(&drain(&mut s));
        assert!(
            matches!(
                &c[..],
                [(TaskId(2), Err(TaskError::DependencyFailed { .. }))]
            ),
            "{c:?}"
        );
        // A stale incarnation's report of it is not answered.
        let done = if stored {
            stored_done(t2, 1 << 20)
        } else {
            value_done(t2, 2)
        };
        report(&mut s, ms(3), *w2, 0, done.clone());
        assert!(releases(&drain(&mut s)).is_empty());
        // Worker 2 finishes task 2 anyway and keeps its result: it is released.
        report(&mut s, ms(3), *w2, 1, done);
        let cmds = drain(&mut s);
        assert!(completes(&cmds).is_empty());
        assert_eq!(releases(&cmds), vec![(WorkerId(2), vec![ChunkId(2)])]);
        s.check_invariants().unwrap();
    }
}

#[test]
fn a_task_losing_its_worker_four_times_fails() {
    let mut s = cluster(&[1], 1);
    s.submit(ms(0), vec![spec(1, "f", vec![], Options::new())])
        .unwrap();
    for round in 0..4u32 {
        let r = runs(&drain(&mut s));
        assert_eq!(r.len(), 1, "round {round}");
        let w = r[0].0;
        s.worker_joined(ms(round as u64), worker(round + 2, 1, 1, &[]));
        s.worker_lost(
            ms(round as u64),
            w,
            dagger_core::LostReason::ProcessExited {
                pid: 1,
                exit: dagger_core::ExitCause::Signal(9),
            },
        );
    }
    let c = completes(&drain(&mut s));
    assert!(
        matches!(
            &c[..],
            [(
                TaskId(1),
                Err(TaskError::WorkerLost {
                    task: TaskId(1),
                    ..
                })
            )]
        ),
        "{c:?}"
    );
}

#[test]
fn priority_then_fifo() {
    let mut s = Scheduler::new(unbounded());
    s.worker_joined(ms(0), worker(1, 1, 1, &[]));
    drain(&mut s);
    s.submit(
        ms(0),
        vec![
            spec(1, "f", vec![], Options::new()),
            spec(2, "f", vec![], Options::new().priority(5)),
            spec(3, "f", vec![], Options::new()),
            spec(4, "f", vec![], Options::new().priority(5)),
        ],
    )
    .unwrap();
    let order: Vec<u64> = runs(&drain(&mut s)).iter().map(|x| x.1.task.0).collect();
    assert_eq!(order, vec![2, 4, 1, 3]);
}

#[test]
fn batches_are_split_at_max_batch() {
    let mut s = Scheduler::new(Config {
        max_batch: 3,
        ..unbounded()
    });
    s.worker_joined(ms(0), worker(1, 1, 1, &[]));
    drain(&mut s);
    s.submit(
        ms(0),
        (1..=7)
            .map(|i| spec(i, "f", vec![], Options::new()))
            .collect(),
    )
    .unwrap();
    let sizes: Vec<usize> = drain(&mut s)
        .iter()
        .filter_map(|c| match c {
            Command::Send {
                msg: ToWorker::Run(v),
                ..
            } => Some(v.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, vec![3, 3, 1]);
}

/// 100k trivial tasks end to end, in rounds of 10k like a fan-out benchmark: every record
/// is freed, and the scheduler's own cost per task is printed (not asserted: timings depend
/// on the machine).
#[test]
fn many_trivial_tasks_stay_small() {
    let rounds = 10u64;
    let per_round = 10_000u64;
    let mut s = cluster(&[1, 2], 8);
    // Learn the function's run time first, so every round is dispatched at once.
    s.submit(
        Duration::ZERO,
        vec![spec(0, "inc", vec![val(0)], Options::new())],
    )
    .unwrap();
    let (w, rt) = runs(&drain(&mut s)).remove(0);
    s.task_done(Duration::ZERO, w, Incarnation(1), value_done(&rt, 1));
    s.release(rt.task);
    drain(&mut s);
    let mut phase = [Duration::ZERO; 4];
    let mut next = 1u64;
    for round in 0..rounds {
        let specs: Vec<_> = (next..next + per_round)
            .map(|i| spec(i, "inc", vec![val(i)], Options::new()))
            .collect();
        next += per_round;
        let t0 = Instant::now();
        s.submit(Duration::ZERO, specs).unwrap();
        let t1 = Instant::now();
        let mut batches = Vec::new();
        while let Some(c) = s.poll_command() {
            if let Command::Send {
                worker,
                msg: ToWorker::Run(ts),
            } = c
            {
                batches.push((worker, ts));
            }
        }
        let t2 = Instant::now();
        let dones: Vec<_> = batches
            .into_iter()
            .flat_map(|(w, ts)| {
                ts.into_iter().map(move |t| {
                    let outcome = Outcome::Value(vec![1]);
                    (
                        w,
                        TaskDone {
                            task: t.task,
                            proc: t.proc,
                            run_ns: 100,
                            started_ns: 0,
                            outcome,
                        },
                    )
                })
            })
            .collect();
        assert_eq!(dones.len(), per_round as usize);
        let t3 = Instant::now();
        for (w, d) in dones {
            s.task_done(Duration::ZERO, w, Incarnation(1), d);
        }
        let t4 = Instant::now();
        let mut completed = 0;
        while let Some(c) = s.poll_command() {
            if let Command::Complete { task, .. } = c {
                s.release(task);
                completed += 1;
            }
        }
        while s.poll_command().is_some() {}
        let t5 = Instant::now();
        assert_eq!(completed, per_round);
        if round > 0 {
            phase[0] += t1 - t0;
            phase[1] += t2 - t1;
            phase[2] += t4 - t3;
            phase[3] += t5 - t4;
        }
    }
    let st = s.stats();
    assert_eq!((st.live, st.finished), (0, rounds * per_round + 1));
    let n = ((rounds - 1) * per_round) as f64;
    let per = |d: Duration| d.as_nanos() as f64 / n;
    eprintln!(
        "trivial tasks, ns per task (warm rounds): submit {:.0}, place+dispatch {:.0}, done {:.0}, complete+release {:.0}, total {:.0}; record {} bytes",
        per(phase[0]),
        per(phase[1]),
        per(phase[2]),
        per(phase[3]),
        phase.iter().map(|d| per(*d)).sum::<f64>(),
        Scheduler::task_record_size()
    );
    assert!(Scheduler::task_record_size() <= 128);
}

fn move_failed(rt: &RunTask, cause: MoveFailure) -> TaskDone {
    TaskDone {
        task: rt.task,
        proc: rt.proc,
        run_ns: 0,
        started_ns: 0,
        outcome: Outcome::Failed(TaskError::MoveFailed {
            task: rt.task,
            cause,
        }),
    }
}

#[test]
fn transient_move_failures_are_retried_deterministic_ones_fail_at_once() {
    let mut s = cluster(&[1], 1);
    s.submit(
        ms(0),
        vec![
            spec(1, "f", vec![], Options::new()),
            spec(2, "g", vec![], Options::new()),
        ],
    )
    .unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 2);
    let (t1, t2) = if r[0].1.task == TaskId(1) {
        (&r[0].1, &r[1].1)
    } else {
        (&r[1].1, &r[0].1)
    };
    // The source left: another attempt may succeed, so the task is queued again.
    report(
        &mut s,
        ms(1),
        WorkerId(1),
        1,
        move_failed(
            t1,
            MoveFailure::PeerLeft {
                worker: WorkerId(7),
            },
        ),
    );
    // Too large for a frame: it would fail the same way again.
    let too_large = MoveFailure::TooLarge {
        bytes: 2 << 30,
        limit: 1 << 30,
    };
    report(
        &mut s,
        ms(1),
        WorkerId(1),
        1,
        move_failed(t2, too_large.clone()),
    );
    let cmds = drain(&mut s);
    let ev = events(&cmds);
    assert!(
        ev.contains(&ClusterEvent::TaskRetried {
            task: TaskId(1),
            attempt: 2
        }),
        "{ev:?}"
    );
    assert!(
        !ev.iter().any(|e| matches!(
            e,
            ClusterEvent::TaskRetried {
                task: TaskId(2),
                ..
            }
        )),
        "{ev:?}"
    );
    let c = completes(&cmds);
    assert_eq!(
        c,
        vec![(
            TaskId(2),
            Err(TaskError::MoveFailed {
                task: TaskId(2),
                cause: too_large
            })
        )]
    );
    assert_eq!(
        runs(&cmds).iter().map(|x| x.1.task).collect::<Vec<_>>(),
        vec![TaskId(1)]
    );
    s.check_invariants().unwrap();
}

#[test]
fn a_gathered_argument_waits_for_all_its_parts_and_receives_them_in_order() {
    let mut s = cluster_after_inputs(&[1, 2], 4);
    let gather = Arg::Gather(vec![
        Part::Task(TaskId(3)),
        Part::Value(wire::encode(&7u64)),
        Part::Task(TaskId(1)),
        Part::Task(TaskId(2)),
    ]);
    s.submit(
        ms(0),
        vec![
            spec(1, "part", vec![], on(1)),
            spec(2, "part", vec![], on(2)),
            spec(3, "part", vec![], on(1)),
            spec(4, "vcat", vec![val(9), gather], Options::new()),
        ],
    )
    .unwrap();
    let r = runs(&drain(&mut s));
    let mut ran: Vec<u64> = r.iter().map(|x| x.1.task.0).collect();
    ran.sort_unstable();
    assert_eq!(ran, vec![1, 2, 3], "the gathering task waits for its parts");
    let by_id = |id: u64| r.iter().find(|x| x.1.task.0 == id).unwrap().clone();
    // Part 1 small (inline), parts 2 and 3 large (kept where they ran).
    let (w1, rt1) = by_id(1);
    report(&mut s, ms(1), w1, 1, value_done(&rt1, 11));
    let (w2, rt2) = by_id(2);
    report(&mut s, ms(1), w2, 1, stored_done(&rt2, 1 << 20));
    assert!(runs(&drain(&mut s)).is_empty(), "one part is still running");
    s.check_invariants().unwrap();
    let (w3, rt3) = by_id(3);
    report(&mut s, ms(2), w3, 1, stored_done(&rt3, 1 << 20));
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].1.task, TaskId(4));
    assert_eq!(
        r[0].1.args,
        vec![
            RunArg::Value(wire::encode(&9u64)),
            RunArg::Gather(vec![
                RunPart::Chunk {
                    chunk: ChunkId(3),
                    from: vec![WorkerId(1)]
                },
                RunPart::Value(wire::encode(&7u64)),
                RunPart::Value(wire::encode(&11u64)),
                RunPart::Chunk {
                    chunk: ChunkId(2),
                    from: vec![WorkerId(2)]
                },
            ])
        ]
    );
    s.check_invariants().unwrap();
}

#[test]
fn a_failed_part_fails_the_gathering_task() {
    let mut s = cluster_after_inputs(&[1], 2);
    s.submit(
        ms(0),
        vec![
            spec(1, "part", vec![], Options::new()),
            spec(2, "bad", vec![], Options::new()),
            spec(
                3,
                "vcat",
                vec![Arg::Gather(vec![
                    Part::Task(TaskId(1)),
                    Part::Task(TaskId(2)),
                ])],
                Options::new(),
            ),
        ],
    )
    .unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 2);
    let bad = r.iter().find(|x| x.1.task == TaskId(2)).unwrap();
    report(
        &mut s,
        ms(1),
        WorkerId(1),
        1,
        TaskDone {
            task: bad.1.task,
            proc: bad.1.proc,
            run_ns: 5,
            started_ns: 0,
            outcome: Outcome::Failed(TaskError::Panicked {
                task: bad.1.task,
                func: "bad".into(),
                message: "boom".into(),
            }),
        },
    );
    let cmds = drain(&mut s);
    let failed: Vec<_> = completes(&cmds)
        .into_iter()
        .filter(|(t, _)| *t == TaskId(3))
        .collect();
    assert!(
        matches!(
            failed.as_slice(),
            [(_, Err(TaskError::DependencyFailed { dependency, .. }))] if *dependency == TaskId(2)
        ),
        "{failed:?}"
    );
    s.check_invariants().unwrap();
}

/// A task may move between the thread processors of its worker (`RunTask::any_thread`)
/// exactly when its scope admits all of them: the default scope, its worker's, the thread
/// kind's; not one processor's, nor a device's.
#[test]
fn a_task_may_change_threads_only_when_its_scope_admits_every_thread_of_its_worker() {
    let mut s = Scheduler::new(unbounded());
    s.worker_joined(ms(0), worker(1, 1, 2, &["fpga"]));
    drain(&mut s);
    let w = WorkerId(1);
    let fpga = ProcId::new(w, 3);
    let scopes = [
        (Scope::Any, true),
        (Scope::Worker(w), true),
        (Scope::kind("thread"), true),
        (Scope::WorkerKind(w, dagger_core::ProcKind::THREAD), true),
        (Scope::Proc(ProcId::new(w, 2)), false),
        (
            Scope::Proc(ProcId::new(w, 1)).or(Scope::Proc(ProcId::new(w, 2))),
            false,
        ),
        (Scope::Proc(ProcId::new(w, 1)).or(Scope::Worker(w)), true),
        (Scope::Proc(fpga), false),
        (Scope::kind("fpga"), false),
    ];
    let specs = scopes
        .iter()
        .enumerate()
        .map(|(i, (scope, _))| {
            spec(
                i as u64 + 1,
                "f",
                vec![val(i as u64)],
                Options::new().scope(scope.clone()),
            )
        })
        .collect();
    s.submit(ms(0), specs).unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), scopes.len(), "{r:?}");
    for (i, (scope, want)) in scopes.iter().enumerate() {
        let (_, rt) = r
            .iter()
            .find(|(_, rt)| rt.task == TaskId(i as u64 + 1))
            .expect("dispatched");
        assert_eq!(rt.any_thread, *want, "scope {scope} on {}", rt.proc);
    }
}

/// The processor a worker reports a task ran on is what the task's information shows,
/// when it is another thread processor of the worker it was dispatched to; a report
/// naming a processor of another worker, or of another kind, changes nothing.
#[test]
fn a_task_shows_the_thread_it_ran_on_when_its_worker_chose_another() {
    let mut s = Scheduler::new(unbounded());
    s.worker_joined(ms(0), worker(1, 1, 2, &["fpga"]));
    s.worker_joined(ms(0), worker(2, 1, 2, &[]));
    drain(&mut s);
    let opts = || Options::new().scope(Scope::Worker(WorkerId(1)));
    s.submit(
        ms(0),
        (1..=3)
            .map(|i| spec(i, "f", vec![val(i)], opts()))
            .collect(),
    )
    .unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 3, "{r:?}");
    let sibling = |p: ProcId| ProcId::new(p.worker, if p.index == 1 { 2 } else { 1 });
    let cases = [
        (1, sibling(r[0].1.proc), sibling(r[0].1.proc)),
        (2, ProcId::new(WorkerId(2), 1), r[1].1.proc),
        (3, ProcId::new(WorkerId(1), 3), r[2].1.proc),
    ];
    for (k, (id, reported, shown)) in cases.into_iter().enumerate() {
        let (w, rt) = &r[k];
        assert_eq!(rt.task, TaskId(id));
        let mut done = value_done(rt, id);
        done.proc = reported;
        report(&mut s, ms(1), *w, 1, done);
        drain(&mut s);
        s.check_invariants().unwrap();
        assert_eq!(
            s.task_info(TaskId(id)).unwrap().proc,
            Some(shown),
            "task {id} reported on {reported}"
        );
    }
}

/// A lost result is recomputed with the inputs it needs, but an input pushed for
/// recomputation is dropped again when the task that needed it fails on the way (through
/// another input whose own input had failed): that failure may free the input with its
/// lineage, and the input must not then be dispatched without its arguments.
#[test]
fn an_input_freed_while_its_dependent_fails_during_recovery_is_not_recomputed() {
    let mut s = Scheduler::new(unbounded());
    for w in 1..=4 {
        s.worker_joined(ms(0), worker(w, 1, 1, &[]));
    }
    drain(&mut s);
    let on =
        |id: u64, args: Vec<Arg>, scope: Scope| spec(id, "f", args, Options::new().scope(scope));
    let w = |w: u32| Scope::Worker(WorkerId(w));
    let t = |id: u64| Arg::Task(TaskId(id));
    // A (1); C (2) feeds B (3) and G (6); A and B feed D (4); D feeds E (5). E and G run
    // on worker 4 and never finish.
    s.submit(
        ms(0),
        vec![
            on(1, vec![val(1)], w(1)),
            on(2, vec![val(2)], w(1).or(w(2))),
            on(3, vec![t(2)], w(2)),
            on(4, vec![t(1), t(3)], w(3)),
            on(5, vec![t(4)], w(4)),
            on(6, vec![t(2)], w(4)),
        ],
    )
    .unwrap();
    for id in 1..=4 {
        s.release(TaskId(id));
    }
    let mut held = std::collections::BTreeMap::new();
    for _ in 0..3 {
        for (wk, rt) in runs(&drain(&mut s)) {
            if rt.task.0 <= 4 {
                held.insert(rt.task.0, wk);
                report(&mut s, ms(1), wk, 1, stored_done(&rt, 100));
            }
        }
    }
    drain(&mut s);
    s.check_invariants().unwrap();
    assert_eq!(held.len(), 4, "A, C, B and D ran: {held:?}");
    // A's and B's results are released (D has used them); C's is kept for G.

    // C's worker is lost: C is recomputed for G, and this time fails for good (G fails
    // with it; B, finished, keeps its place in D's lineage).
    lose(&mut s, ms(2), held[&2].0);
    let r = runs(&drain(&mut s));
    let (wc, c) = r
        .iter()
        .find(|(_, rt)| rt.task == TaskId(2))
        .cloned()
        .unwrap_or_else(|| panic!("C is recomputed: {r:?}"));
    report(
        &mut s,
        ms(3),
        wc,
        1,
        TaskDone {
            task: c.task,
            proc: c.proc,
            run_ns: 5,
            started_ns: 0,
            outcome: Outcome::Failed(TaskError::Panicked {
                task: c.task,
                func: c.func.to_string(),
                message: "boom".into(),
            }),
        },
    );
    drain(&mut s);
    s.check_invariants().unwrap();

    // D's worker is lost: D is needed by E, so it is recomputed with A and B; B cannot
    // run again (C failed) and fails, and with it D and E. A, freed with them, must not
    // run.
    lose(&mut s, ms(4), held[&4].0);
    let r = runs(&drain(&mut s));
    s.check_invariants().unwrap();
    assert!(
        r.iter().all(|(_, rt)| rt.task != TaskId(1)),
        "A was dispatched after it was freed: {r:?}"
    );
    assert!(s.failure(TaskId(5)).is_some(), "E failed with D");
}
