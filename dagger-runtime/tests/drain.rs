//! Draining workers through the driver core, step by step in virtual time, every message
//! through the real encoder: where results go, when a drain ends and how, and what
//! becomes of the worker.

use dagger_core::wire::{self, Outcome, RunTask, TaskDone, ToDriver, ToWorker};
use dagger_core::{
    Arg, ChunkId, Incarnation, LostReason, MemorySpace, MoveFailure, Options, ProcId, ProcInfo,
    ProcKind, Scope, TaskId, TaskSpec, WorkerId, WorkerInfo,
};
use dagger_runtime::driver::{
    AfterDrain, DrainOutcome, DriverConfig, DriverCore, DriverEvent, Joined, LinkId,
};
use dagger_sched::{DrainError, Scheduler};
use std::time::Duration;

type Core = DriverCore<u64>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn core() -> Core {
    let config = dagger_sched::Config {
        inline_limit: 12,
        ..dagger_sched::Config::default()
    };
    let dconfig = DriverConfig {
        // Releases go out at once.
        release_batch: 1,
        ..DriverConfig::default()
    };
    DriverCore::new(Scheduler::new(config), dconfig)
}

/// Joins a worker with one CPU thread (and a GPU when `gpu`) on link `link`, host `host`.
fn join(c: &mut Core, now: Duration, link: u64, host: &str, gpu: bool) -> Joined {
    let id = WorkerId(0);
    let root = ProcId::root(id);
    let mut procs = vec![
        ProcInfo {
            id: root,
            kind: ProcKind::OS,
            parent: None,
            memory: MemorySpace::HOST,
            label: "process".into(),
            properties: Default::default(),
        },
        ProcInfo {
            id: ProcId::new(id, 1),
            kind: ProcKind::THREAD,
            parent: Some(root),
            memory: MemorySpace::HOST,
            label: "core".into(),
            properties: Default::default(),
        },
    ];
    if gpu {
        procs.push(ProcInfo {
            id: ProcId::new(id, 2),
            kind: ProcKind::custom("gpu"),
            parent: Some(root),
            memory: MemorySpace::custom("gpu", 0),
            label: "gpu".into(),
            properties: Default::default(),
        });
    }
    let info = WorkerInfo {
        worker: id,
        incarnation: Incarnation(0),
        host: host.into(),
        pid: 100 + link as u32,
        name: String::new(),
        peer_addr: Some(format!("10.0.0.{link}:7000")),
        procs,
    };
    let j = c.handle_join(now, LinkId(link), info, false).unwrap();
    take(c);
    j
}

fn spec(id: u64, options: Options) -> TaskSpec {
    TaskSpec {
        id: TaskId(id),
        func: "f".into(),
        args: vec![Arg::Value(wire::encode(&id))],
        options,
    }
}

fn on(w: WorkerId) -> Options {
    Options::new().scope(Scope::worker(w))
}

/// Every frame out, decoded, with its link; and every event.
fn take(c: &mut Core) -> (Vec<(LinkId, ToWorker)>, Vec<DriverEvent<u64>>) {
    let mut frames = Vec::new();
    while let Some(t) = c.poll_transmit() {
        frames.push((t.link, wire::decode::<ToWorker>(&t.frame).unwrap()));
    }
    (frames, std::iter::from_fn(|| c.poll_event()).collect())
}

fn runs(frames: &[(LinkId, ToWorker)]) -> Vec<(LinkId, RunTask)> {
    let mut v = Vec::new();
    for (l, m) in frames {
        if let ToWorker::Run(ts) = m {
            v.extend(ts.iter().map(|t| (*l, t.clone())));
        }
    }
    v
}

fn handovers(frames: &[(LinkId, ToWorker)]) -> Vec<(LinkId, ChunkId, Vec<WorkerId>)> {
    frames
        .iter()
        .filter_map(|(l, m)| match m {
            ToWorker::Replicate { chunk, from } => Some((*l, *chunk, from.clone())),
            _ => None,
        })
        .collect()
}

fn outcomes(evs: &[DriverEvent<u64>]) -> Vec<(WorkerId, DrainOutcome)> {
    evs.iter()
        .filter_map(|e| match e {
            DriverEvent::Drained {
                worker, outcome, ..
            } => Some((*worker, outcome.clone())),
            _ => None,
        })
        .collect()
}

fn closed(evs: &[DriverEvent<u64>]) -> Vec<(LinkId, LostReason)> {
    evs.iter()
        .filter_map(|e| match e {
            DriverEvent::CloseLink { link, reason } => Some((*link, reason.clone())),
            _ => None,
        })
        .collect()
}

/// A message from the worker on `link`, through the encoder.
fn send(c: &mut Core, now: Duration, link: LinkId, msg: ToDriver) {
    c.handle_message(now, link, wire::decode(&wire::encode(&msg)).unwrap());
}

fn done(c: &mut Core, now: Duration, link: LinkId, inc: Incarnation, t: &RunTask, size: u64) {
    let outcome = Outcome::Stored { size };
    let tasks = vec![TaskDone {
        task: t.task,
        proc: t.proc,
        run_ns: 1000,
        started_ns: 0,
        outcome,
    }];
    send(
        c,
        now,
        link,
        ToDriver::Done {
            incarnation: inc,
            tasks,
            moves: Vec::new(),
            sent_ns: 0,
        },
    );
}

fn replicated(
    c: &mut Core,
    now: Duration,
    link: LinkId,
    inc: Incarnation,
    chunk: ChunkId,
    result: Result<(), MoveFailure>,
) {
    let msg = ToDriver::Replicated {
        incarnation: inc,
        chunk,
        result,
    };
    send(c, now, link, msg);
}

/// Runs task `id` pinned to the worker of `j` (on `link`) to a stored result.
fn stored_on(c: &mut Core, now: Duration, id: u64, j: &Joined, link: u64) -> RunTask {
    c.handle_submit(now, [(spec(id, on(j.worker)), Some(id))]);
    let (frames, _) = take(c);
    let r = runs(&frames);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, LinkId(link));
    done(c, now, LinkId(link), j.incarnation, &r[0].1, 30);
    take(c);
    assert_eq!(c.holders(TaskId(id).chunk()), [j.worker]);
    r[0].1.clone()
}

#[test]
fn sole_copies_go_to_the_cheapest_destination_then_the_worker_is_stopped() {
    let mut c = core();
    // Workers 1 and 3 share a host (a shared-memory path); worker 2 is elsewhere.
    let a = join(&mut c, ms(0), 1, "h1", false);
    let _b = join(&mut c, ms(0), 2, "h2", false);
    let d = join(&mut c, ms(0), 3, "h1", false);
    stored_on(&mut c, ms(1), 10, &a, 1);
    stored_on(&mut c, ms(1), 11, &a, 1);

    c.handle_drain(ms(2), &[a.worker], None, AfterDrain::Stop)
        .unwrap();
    assert_eq!(c.draining(), vec![a.worker]);
    let (frames, evs) = take(&mut c);
    let mut h = handovers(&frames);
    h.sort_by_key(|(_, chunk, _)| *chunk);
    assert_eq!(
        h,
        vec![
            (LinkId(3), TaskId(10).chunk(), vec![a.worker]),
            (LinkId(3), TaskId(11).chunk(), vec![a.worker]),
        ],
        "both go to the worker on the same host"
    );
    assert!(outcomes(&evs).is_empty());

    replicated(
        &mut c,
        ms(3),
        LinkId(3),
        d.incarnation,
        TaskId(10).chunk(),
        Ok(()),
    );
    let (_, evs) = take(&mut c);
    assert!(outcomes(&evs).is_empty(), "one copy is still missing");
    replicated(
        &mut c,
        ms(4),
        LinkId(3),
        d.incarnation,
        TaskId(11).chunk(),
        Ok(()),
    );
    let (frames, evs) = take(&mut c);
    assert_eq!(
        outcomes(&evs),
        vec![(
            a.worker,
            DrainOutcome::Drained {
                took: ms(2),
                moved_chunks: 2,
                moved_bytes: 60,
                stopped: true
            }
        )]
    );
    // Told to shut down, then its link closes; nothing runs again.
    assert!(frames
        .iter()
        .any(|(l, m)| *l == LinkId(1) && *m == ToWorker::Shutdown));
    assert!(matches!(
        &closed(&evs)[..],
        [(LinkId(1), LostReason::Removed { .. })]
    ));
    assert!(runs(&frames).is_empty());
    assert_eq!(c.holders(TaskId(10).chunk()), [d.worker]);
    assert!(c.draining().is_empty());
    c.scheduler().check_invariants().unwrap();
}

#[test]
fn a_drain_waits_for_running_tasks_and_a_kept_worker_stays_joined() {
    let mut c = core();
    let a = join(&mut c, ms(0), 1, "h1", false);
    let b = join(&mut c, ms(0), 2, "h2", false);
    c.handle_submit(ms(1), [(spec(1, on(a.worker)), Some(1))]);
    let (frames, _) = take(&mut c);
    let r = runs(&frames);
    assert_eq!(r.len(), 1);

    c.handle_drain(ms(2), &[a.worker], None, AfterDrain::Keep)
        .unwrap();
    // (Within the heartbeat timeout: neither worker is lost for its silence.)
    for k in 3..16 {
        c.handle_timeout(ms(k * 50));
        let (_, evs) = take(&mut c);
        assert!(outcomes(&evs).is_empty(), "task 1 still runs");
    }
    done(&mut c, ms(850), LinkId(1), a.incarnation, &r[0].1, 30);
    let (frames, _) = take(&mut c);
    assert_eq!(
        handovers(&frames),
        vec![(LinkId(2), TaskId(1).chunk(), vec![a.worker])]
    );
    replicated(
        &mut c,
        ms(851),
        LinkId(2),
        b.incarnation,
        TaskId(1).chunk(),
        Ok(()),
    );
    let (frames, evs) = take(&mut c);
    assert!(matches!(
        &outcomes(&evs)[..],
        [(w, DrainOutcome::Drained { stopped: false, moved_chunks: 1, .. })] if *w == a.worker
    ));
    assert!(closed(&evs).is_empty(), "kept");
    assert!(!frames.iter().any(|(_, m)| *m == ToWorker::Shutdown));
    assert_eq!(c.link_of(a.worker), Some(LinkId(1)));

    // Killing it now changes nothing: no task runs again, no result is recomputed.
    let before = c.stats();
    c.handle_link_closed(
        ms(852),
        LinkId(1),
        LostReason::LinkClosed {
            detail: "killed".into(),
        },
    );
    let (frames, evs) = take(&mut c);
    assert!(runs(&frames).is_empty());
    assert!(outcomes(&evs).is_empty(), "its drain resolved already");
    assert_eq!(c.stats().finished, before.finished);
    assert_eq!(c.holders(TaskId(1).chunk()), [b.worker]);
}

#[test]
fn at_the_deadline_the_worker_is_removed_and_its_work_redone() {
    let mut c = core();
    let a = join(&mut c, ms(0), 1, "h1", false);
    let b = join(&mut c, ms(0), 2, "h2", false);
    // Task 2's result is only on A; task 1 (unpinned) runs on A (B, drained and kept,
    // takes no work) and never returns. A third worker joins to take over.
    c.handle_submit(ms(1), [(spec(2, on(a.worker)), Some(2))]);
    let (frames, _) = take(&mut c);
    done(
        &mut c,
        ms(1),
        LinkId(1),
        a.incarnation,
        &runs(&frames)[0].1,
        30,
    );
    take(&mut c);
    c.handle_drain(ms(2), &[b.worker], None, AfterDrain::Keep)
        .unwrap();
    c.handle_submit(ms(2), [(spec(1, Options::new()), Some(1))]);
    let (frames, _) = take(&mut c);
    assert_eq!(runs(&frames)[0].0, LinkId(1), "B takes no work");
    let _c3 = join(&mut c, ms(3), 3, "h3", false);

    let deadline = ms(500);
    c.handle_drain(ms(4), &[a.worker], Some(deadline), AfterDrain::Stop)
        .unwrap();
    assert_eq!(c.poll_timeout(), Some(deadline));
    // The copy of task 2's result never comes.
    take(&mut c);
    c.handle_timeout(ms(499));
    let (_, evs) = take(&mut c);
    assert!(outcomes(&evs).iter().all(|(w, _)| *w != a.worker));
    c.handle_timeout(deadline);
    let (frames, evs) = take(&mut c);
    assert_eq!(
        outcomes(&evs),
        vec![(
            a.worker,
            DrainOutcome::DeadlineExceeded {
                took: ms(496),
                rerun: 1,
                sole_copies: 1
            }
        )]
    );
    assert!(matches!(
        &closed(&evs)[..],
        [(LinkId(1), LostReason::Removed { .. })]
    ));
    // Task 1 runs again, on worker 3 (task 2, pinned to A, cannot be recomputed).
    let r = runs(&frames);
    assert!(
        r.iter()
            .any(|(l, t)| *l == LinkId(3) && t.task == TaskId(1)),
        "{r:?}"
    );
    assert!(c.draining().is_empty());
}

#[test]
fn a_destination_lost_mid_handover_is_replaced_and_nothing_is_lost() {
    let mut c = core();
    let a = join(&mut c, ms(0), 1, "h1", false);
    let b = join(&mut c, ms(0), 2, "h2", false);
    let d = join(&mut c, ms(0), 3, "h3", false);
    stored_on(&mut c, ms(1), 10, &a, 1);
    c.handle_drain(ms(2), &[a.worker], None, AfterDrain::Stop)
        .unwrap();
    let (frames, _) = take(&mut c);
    let h = handovers(&frames);
    assert_eq!(h.len(), 1);
    let (first, other, other_inc) = if h[0].0 == LinkId(2) {
        (LinkId(2), LinkId(3), d.incarnation)
    } else {
        (LinkId(3), LinkId(2), b.incarnation)
    };
    c.handle_link_closed(
        ms(3),
        first,
        LostReason::LinkClosed {
            detail: "gone".into(),
        },
    );
    let (frames, evs) = take(&mut c);
    assert_eq!(
        handovers(&frames),
        vec![(other, TaskId(10).chunk(), vec![a.worker])]
    );
    assert!(runs(&frames).is_empty(), "nothing is recomputed");
    assert!(outcomes(&evs).is_empty());
    replicated(&mut c, ms(4), other, other_inc, TaskId(10).chunk(), Ok(()));
    let (frames, evs) = take(&mut c);
    assert!(matches!(
        &outcomes(&evs)[..],
        [(w, DrainOutcome::Drained { moved_chunks: 1, stopped: true, .. })] if *w == a.worker
    ));
    assert!(runs(&frames).is_empty());
    assert_eq!(c.stats().finished, 1);
}

#[test]
fn a_chunk_released_while_it_is_copied_is_released_at_its_destination() {
    let mut c = core();
    let a = join(&mut c, ms(0), 1, "h1", false);
    let b = join(&mut c, ms(0), 2, "h2", false);
    stored_on(&mut c, ms(1), 10, &a, 1);
    c.handle_drain(ms(2), &[a.worker], None, AfterDrain::Keep)
        .unwrap();
    let (frames, _) = take(&mut c);
    assert_eq!(handovers(&frames).len(), 1);
    // The client drops the result: the drain is over without the copy.
    c.handle_release(ms(3), TaskId(10));
    let (_, evs) = take(&mut c);
    assert!(matches!(
        &outcomes(&evs)[..],
        [(w, DrainOutcome::Drained { moved_chunks: 0, .. })] if *w == a.worker
    ));
    c.scheduler().check_invariants().unwrap();
    // The copy arrives: B is told to drop it.
    replicated(
        &mut c,
        ms(4),
        LinkId(2),
        b.incarnation,
        TaskId(10).chunk(),
        Ok(()),
    );
    let (frames, _) = take(&mut c);
    assert!(
        frames.iter().any(|(l, m)| *l == LinkId(2)
            && matches!(m, ToWorker::Release(cs) if cs.contains(&TaskId(10).chunk()))),
        "{frames:?}"
    );
    assert!(c.holders(TaskId(10).chunk()).is_empty());
    c.scheduler().check_invariants().unwrap();
}

#[test]
fn a_drain_lost_to_its_workers_loss_resolves_once_as_lost() {
    let mut c = core();
    let a = join(&mut c, ms(0), 1, "h1", false);
    let _b = join(&mut c, ms(0), 2, "h2", false);
    stored_on(&mut c, ms(1), 10, &a, 1);
    c.handle_drain(ms(2), &[a.worker], Some(ms(100)), AfterDrain::Stop)
        .unwrap();
    take(&mut c);
    let reason = LostReason::LinkClosed {
        detail: "killed".into(),
    };
    c.handle_link_closed(ms(3), LinkId(1), reason.clone());
    let (frames, evs) = take(&mut c);
    assert_eq!(
        outcomes(&evs),
        vec![(
            a.worker,
            DrainOutcome::Lost {
                took: ms(1),
                reason
            }
        )]
    );
    // Task 10, pinned to it, cannot be recomputed: nothing runs.
    assert!(runs(&frames).is_empty());
    // The deadline passes: nothing more.
    c.handle_timeout(ms(200));
    let (_, evs) = take(&mut c);
    assert!(outcomes(&evs).is_empty());
}

#[test]
fn a_removal_that_would_strand_a_task_is_refused_and_changes_nothing() {
    let mut c = core();
    let a = join(&mut c, ms(0), 1, "h1", true);
    let _b = join(&mut c, ms(0), 2, "h2", false);
    // GPU tasks only A can run; saturation holds most of them back in the scheduler.
    let gpu = Options::new().scope(Scope::Kind(ProcKind::custom("gpu")));
    let tasks: Vec<_> = (1..=20).map(|i| (spec(i, gpu.clone()), Some(i))).collect();
    c.handle_submit(ms(1), tasks);
    let (frames, _) = take(&mut c);
    let dispatched = runs(&frames).len();
    assert!(dispatched > 0 && dispatched < 20, "{dispatched}");

    let err = c
        .handle_drain(ms(2), &[a.worker], None, AfterDrain::Stop)
        .unwrap_err();
    assert!(
        matches!(&err, DrainError::WouldStrand { workers, .. } if *workers == vec![a.worker]),
        "{err:?}"
    );
    assert!(c.draining().is_empty());
    assert!(!c.scheduler().is_draining(a.worker));
    let (frames, evs) = take(&mut c);
    assert!(frames.is_empty() && evs.is_empty(), "{frames:?} {evs:?}");
    assert_eq!(
        c.handle_drain(ms(3), &[WorkerId(99)], None, AfterDrain::Stop),
        Err(DrainError::UnknownWorker {
            worker: WorkerId(99)
        })
    );
}
