//! The driver core driven step by step: virtual time, every message through the real
//! encoder (frames the core yields are decoded with `wire::decode`, messages fed to it are
//! encoded and decoded first).

use dagger_core::wire::{self, Outcome, RunTask, TaskDone, ToDriver, ToWorker};
use dagger_core::{
    Arg, ChunkId, ExitCause, GraphError, Incarnation, LostReason, MemorySpace, MoveFailure,
    Options, ProcId, ProcInfo, ProcKind, TaskError, TaskId, TaskSpec, WorkerId, WorkerInfo,
};
use dagger_runtime::driver::{
    DriverConfig, DriverCore, DriverEvent, JoinError, Joined, LinkId, Transmit,
};
use dagger_sched::{ClusterEvent, Completion, Scheduler};
use std::time::Duration;

/// The slot a test keeps per task: the task's number, to check the right slot comes back.
type Core = DriverCore<u64>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn core(config: DriverConfig) -> Core {
    DriverCore::new(Scheduler::new(dagger_sched::Config::default()), config)
}

/// What a process says of itself when it joins: a root and `threads` CPU threads. The id
/// and incarnation are the driver's to fill.
fn info(pid: u32, threads: u32) -> WorkerInfo {
    let id = WorkerId(0);
    let root = ProcId::root(id);
    let mut procs = vec![ProcInfo {
        id: root,
        kind: ProcKind::OS,
        parent: None,
        memory: MemorySpace::HOST,
        label: format!("process {pid}"),
        properties: Default::default(),
    }];
    for t in 0..threads {
        procs.push(ProcInfo {
            id: ProcId::new(id, t + 1),
            kind: ProcKind::THREAD,
            parent: Some(root),
            memory: MemorySpace::HOST,
            label: format!("core {t}"),
            properties: Default::default(),
        });
    }
    let info = WorkerInfo {
        worker: id,
        incarnation: Incarnation(0),
        host: "sim".into(),
        pid,
        name: String::new(),
        peer_addr: Some(format!("10.0.0.{pid}:7000")),
        procs,
    };
    match wire::decode::<ToDriver>(&wire::encode(&ToDriver::Join(info))).unwrap() {
        ToDriver::Join(i) => i,
        other => panic!("join decoded as {other:?}"),
    }
}

fn spec(id: u64, args: Vec<Arg>) -> TaskSpec {
    TaskSpec {
        id: TaskId(id),
        func: "f".into(),
        args,
        options: Options::default(),
    }
}

fn val(x: u64) -> Arg {
    Arg::Value(wire::encode(&x))
}

/// Every frame the core wants sent, decoded, each checked against the frame limit.
fn frames(c: &mut Core) -> Vec<(LinkId, ToWorker)> {
    let max = c.config().max_frame;
    let mut v = Vec::new();
    while let Some(Transmit {
        link,
        worker,
        frame,
    }) = c.poll_transmit()
    {
        assert!(frame.len() <= max, "a frame of {} bytes", frame.len());
        assert_eq!(c.link_of(worker).or(Some(link)), Some(link));
        v.push((
            link,
            wire::decode::<ToWorker>(&frame).expect("frames decode"),
        ));
    }
    v
}

fn events(c: &mut Core) -> Vec<DriverEvent<u64>> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// Feeds `msg` from `link`, through the encoder.
fn deliver(c: &mut Core, now: Duration, link: LinkId, msg: ToDriver) {
    let msg = wire::decode::<ToDriver>(&wire::encode(&msg)).unwrap();
    c.handle_message(now, link, msg);
}

/// The tasks of the `Run` frames, with their link.
fn runs(frames: &[(LinkId, ToWorker)]) -> Vec<(LinkId, RunTask)> {
    let mut v = Vec::new();
    for (link, msg) in frames {
        if let ToWorker::Run(tasks) = msg {
            v.extend(tasks.iter().map(|t| (*link, t.clone())));
        }
    }
    v
}

fn done(t: &RunTask, outcome: Outcome) -> TaskDone {
    TaskDone {
        task: t.task,
        proc: t.proc,
        run_ns: 1_000,
        started_ns: 0,
        outcome,
    }
}

fn completions(evs: &[DriverEvent<u64>]) -> Vec<(TaskId, u64, Result<Completion, TaskError>)> {
    evs.iter()
        .filter_map(|e| match e {
            DriverEvent::Complete { task, slot, result } => Some((*task, *slot, result.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn joins_get_fresh_ids_and_incarnations_welcome_first_then_peer_joined() {
    let mut c = core(DriverConfig::default());
    let a = c
        .handle_join(ms(0), LinkId(10), info(101, 2), false)
        .unwrap();
    assert_eq!(
        a,
        Joined {
            worker: WorkerId(1),
            incarnation: Incarnation(1)
        }
    );
    let f = frames(&mut c);
    assert_eq!(f.len(), 1);
    match &f[0] {
        (
            LinkId(10),
            ToWorker::Welcome {
                worker,
                incarnation,
                peers,
                heartbeat,
                ..
            },
        ) => {
            assert_eq!((*worker, *incarnation), (WorkerId(1), Incarnation(1)));
            assert!(peers.is_empty());
            assert_eq!(*heartbeat, DriverConfig::default().heartbeat_timeout / 4);
        }
        other => panic!("expected a welcome, got {other:?}"),
    }

    let b = c
        .handle_join(ms(1), LinkId(20), info(102, 2), false)
        .unwrap();
    assert_eq!(
        b,
        Joined {
            worker: WorkerId(2),
            incarnation: Incarnation(2)
        }
    );
    let f = frames(&mut c);
    assert_eq!(f.len(), 2, "{f:?}");
    // The newcomer learns of the others first, then the others learn of it.
    match &f[0] {
        (LinkId(20), ToWorker::Welcome { worker, peers, .. }) => {
            assert_eq!(*worker, WorkerId(2));
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].worker, WorkerId(1));
            assert_eq!(peers[0].incarnation, Incarnation(1));
            assert_eq!(peers[0].addr, "10.0.0.101:7000");
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
    match &f[1] {
        (LinkId(10), ToWorker::PeerJoined(p)) => {
            assert_eq!((p.worker, p.incarnation), (WorkerId(2), Incarnation(2)));
            assert_eq!(p.host, "sim");
        }
        other => panic!("expected a peer-joined, got {other:?}"),
    }

    // The driver's own worker is always WorkerId::DRIVER, with a fresh incarnation.
    let own = c
        .handle_join(ms(2), LinkId(30), info(100, 1), true)
        .unwrap();
    assert_eq!(
        own,
        Joined {
            worker: WorkerId::DRIVER,
            incarnation: Incarnation(3)
        }
    );
    assert_eq!(
        c.handle_join(ms(3), LinkId(30), info(103, 1), false),
        Err(JoinError::LinkInUse { link: LinkId(30) })
    );
    let evs = events(&mut c);
    let joined: Vec<WorkerId> = evs
        .iter()
        .filter_map(|e| match e {
            DriverEvent::Cluster(ClusterEvent::WorkerJoined { worker }) => Some(*worker),
            _ => None,
        })
        .collect();
    assert_eq!(joined, vec![WorkerId(1), WorkerId(2), WorkerId::DRIVER]);
    assert_eq!(
        c.workers(),
        vec![WorkerId::DRIVER, WorkerId(1), WorkerId(2)]
    );
    assert_eq!(c.joined_total(), 3);
    // The ids were rewritten into the processors the scheduler knows.
    assert!(c.topology().proc(ProcId::new(WorkerId(2), 2)).is_some());
    assert_eq!(c.worker_on(LinkId(20)), Some((WorkerId(2), Incarnation(2))));
}

#[test]
fn a_replaced_incarnation_is_fenced_even_when_it_claims_the_new_one() {
    let mut c = core(DriverConfig::default());
    c.handle_join(ms(0), LinkId(1), info(100, 1), true).unwrap();
    c.handle_spawn(ms(1), spec(1, vec![val(7)]), 1);
    let f = frames(&mut c);
    let r = runs(&f);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, LinkId(1));
    let task = r[0].1.clone();

    // The driver's worker joins again on a new link: the old incarnation is fenced off.
    let new = c.handle_join(ms(2), LinkId(2), info(100, 1), true).unwrap();
    assert_eq!(new.incarnation, Incarnation(2));
    let evs = events(&mut c);
    assert!(evs.contains(&DriverEvent::CloseLink {
        link: LinkId(1),
        reason: LostReason::Fenced { by: Incarnation(2) },
    }));
    let rerun = runs(&frames(&mut c));
    assert_eq!(rerun.len(), 1, "the task runs again on the new incarnation");
    assert_eq!(rerun[0].0, LinkId(2));

    // A late Done on the old link is ignored, even if it names the new incarnation.
    let value = Outcome::Value(wire::encode(&8u64));
    deliver(
        &mut c,
        ms(3),
        LinkId(1),
        ToDriver::Done {
            incarnation: Incarnation(2),
            tasks: vec![done(&task, value.clone())],
            moves: Vec::new(),
            sent_ns: 0,
        },
    );
    assert!(completions(&events(&mut c)).is_empty(), "fenced");
    assert!(frames(&mut c).iter().all(|(l, _)| *l != LinkId(1)));

    deliver(
        &mut c,
        ms(4),
        LinkId(2),
        ToDriver::Done {
            incarnation: Incarnation(2),
            tasks: vec![done(&rerun[0].1, value)],
            moves: Vec::new(),
            sent_ns: 0,
        },
    );
    let done = completions(&events(&mut c));
    assert_eq!(
        done,
        vec![(TaskId(1), 1, Ok(Completion::Value(wire::encode(&8u64))))]
    );
}

#[test]
fn a_silent_worker_is_lost_at_the_heartbeat_deadline() {
    let config = DriverConfig {
        heartbeat_timeout: Duration::from_secs(5),
        ..DriverConfig::default()
    };
    let mut c = core(config);
    c.handle_join(ms(0), LinkId(1), info(101, 1), false)
        .unwrap();
    c.handle_join(ms(0), LinkId(2), info(102, 1), false)
        .unwrap();
    frames(&mut c);
    events(&mut c);
    deliver(
        &mut c,
        ms(3000),
        LinkId(2),
        ToDriver::Heartbeat {
            incarnation: Incarnation(2),
        },
    );
    assert_eq!(c.poll_timeout(), Some(ms(5000)));
    // Just before the deadline nothing happens.
    c.handle_timeout(ms(4999));
    assert!(events(&mut c).is_empty());
    assert!(frames(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), Some(ms(5000)));

    c.handle_timeout(ms(5000));
    let silent = LostReason::Silent {
        timeout: Duration::from_secs(5),
    };
    let evs = events(&mut c);
    assert!(evs.contains(&DriverEvent::CloseLink {
        link: LinkId(1),
        reason: silent.clone(),
    }));
    assert!(
        evs.contains(&DriverEvent::Cluster(ClusterEvent::WorkerLost {
            worker: WorkerId(1),
            reason: silent,
        }))
    );
    assert_eq!(
        frames(&mut c),
        vec![(LinkId(2), ToWorker::PeerLeft(WorkerId(1)))]
    );
    assert_eq!(c.workers(), vec![WorkerId(2)]);
    // The other worker was heard at 3 s: its deadline is next.
    assert_eq!(c.poll_timeout(), Some(ms(8000)));
    // Anything still arriving on the lost link is ignored.
    deliver(
        &mut c,
        ms(5001),
        LinkId(1),
        ToDriver::Heartbeat {
            incarnation: Incarnation(1),
        },
    );
    assert_eq!(c.workers(), vec![WorkerId(2)]);
    assert_eq!(c.poll_timeout(), Some(ms(8000)));
}

/// One worker, one finished task with a small result: the scheduler keeps the value and
/// releases the worker's copy.
fn finished_small_task(c: &mut Core) -> RunTask {
    c.handle_join(ms(0), LinkId(1), info(101, 2), false)
        .unwrap();
    c.handle_spawn(ms(1), spec(1, vec![val(1)]), 1);
    let t = runs(&frames(c))[0].1.clone();
    deliver(
        c,
        ms(10),
        LinkId(1),
        ToDriver::Done {
            incarnation: Incarnation(1),
            tasks: vec![done(&t, Outcome::Value(wire::encode(&2u64)))],
            moves: Vec::new(),
            sent_ns: 0,
        },
    );
    t
}

#[test]
fn releases_are_held_back_then_flushed_at_the_release_delay() {
    let mut c = core(DriverConfig::default());
    let t = finished_small_task(&mut c);
    assert_eq!(completions(&events(&mut c)).len(), 1);
    assert!(frames(&mut c).is_empty(), "the release is held back");
    assert_eq!(c.poll_timeout(), Some(ms(30)));
    c.handle_timeout(ms(29));
    assert!(frames(&mut c).is_empty());
    c.handle_timeout(ms(30));
    assert_eq!(
        frames(&mut c),
        vec![(LinkId(1), ToWorker::Release(vec![t.task.chunk()]))]
    );
    // Nothing held any more: the heartbeat deadline is next.
    assert_eq!(
        c.poll_timeout(),
        Some(ms(10) + DriverConfig::default().heartbeat_timeout)
    );
}

#[test]
fn releases_ride_with_the_next_message_to_their_worker() {
    let mut c = core(DriverConfig::default());
    let t = finished_small_task(&mut c);
    assert!(frames(&mut c).is_empty(), "the release is held back");
    c.handle_spawn(ms(11), spec(2, vec![val(3)]), 2);
    let f = frames(&mut c);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[0], (LinkId(1), ToWorker::Release(vec![t.task.chunk()])));
    assert!(matches!(&f[1], (LinkId(1), ToWorker::Run(ts)) if ts[0].task == TaskId(2)));
    assert_eq!(
        c.poll_timeout(),
        Some(ms(10) + DriverConfig::default().heartbeat_timeout)
    );
}

#[test]
fn releases_go_at_once_when_a_batch_gathered() {
    let mut c = core(DriverConfig {
        release_batch: 2,
        ..DriverConfig::default()
    });
    c.handle_join(ms(0), LinkId(1), info(101, 2), false)
        .unwrap();
    c.handle_submit(
        ms(1),
        vec![
            (spec(1, vec![val(1)]), Some(1)),
            (spec(2, vec![val(2)]), Some(2)),
        ],
    );
    let r = runs(&frames(&mut c));
    deliver(
        &mut c,
        ms(10),
        LinkId(1),
        ToDriver::Done {
            incarnation: Incarnation(1),
            tasks: vec![done(&r[0].1, Outcome::Value(wire::encode(&2u64)))],
            moves: Vec::new(),
            sent_ns: 0,
        },
    );
    assert!(frames(&mut c).is_empty());
    deliver(
        &mut c,
        ms(11),
        LinkId(1),
        ToDriver::Done {
            incarnation: Incarnation(1),
            tasks: vec![done(&r[1].1, Outcome::Value(wire::encode(&3u64)))],
            moves: Vec::new(),
            sent_ns: 0,
        },
    );
    let f = frames(&mut c);
    assert_eq!(f.len(), 1);
    assert!(matches!(&f[0], (LinkId(1), ToWorker::Release(chunks)) if chunks.len() == 2));
}

#[test]
fn the_release_of_a_large_result_goes_at_once() {
    let mut c = core(DriverConfig::default());
    c.handle_join(ms(0), LinkId(1), info(101, 2), false)
        .unwrap();
    c.handle_spawn(ms(1), spec(1, vec![val(1)]), 1);
    let t = runs(&frames(&mut c))[0].1.clone();
    let size = dagger_sched::Config::default().large_release_bytes;
    let stored = |t: &RunTask, size: u64| ToDriver::Done {
        incarnation: Incarnation(1),
        tasks: vec![done(t, Outcome::Stored { size })],
        moves: Vec::new(),
        sent_ns: 0,
    };
    deliver(&mut c, ms(2), LinkId(1), stored(&t, size));
    assert!(frames(&mut c).is_empty(), "the client still holds task 1");
    c.handle_release(ms(3), TaskId(1));
    assert_eq!(
        frames(&mut c),
        vec![(LinkId(1), ToWorker::Release(vec![t.task.chunk()]))],
        "a large result's release is not held back"
    );

    // One byte less: held back until the release delay.
    c.handle_spawn(ms(4), spec(2, vec![val(2)]), 2);
    let t = runs(&frames(&mut c))[0].1.clone();
    deliver(&mut c, ms(5), LinkId(1), stored(&t, size - 1));
    c.handle_release(ms(6), TaskId(2));
    assert!(
        frames(&mut c).is_empty(),
        "a smaller result's release is held back"
    );
    c.handle_timeout(ms(26));
    assert_eq!(
        frames(&mut c),
        vec![(LinkId(1), ToWorker::Release(vec![t.task.chunk()]))]
    );
}

#[test]
fn a_task_nothing_waits_for_is_sent_quiet_unless_the_timeline_is_recorded() {
    for record in [false, true] {
        // Tasks of unknown run time report their start, and are never quiet.
        let sched = Scheduler::new(dagger_sched::Config {
            watch_threshold: Duration::MAX,
            ..dagger_sched::Config::default()
        });
        let mut c = DriverCore::new(
            sched,
            DriverConfig {
                record,
                ..DriverConfig::default()
            },
        );
        c.handle_join(ms(0), LinkId(1), info(101, 2), false)
            .unwrap();
        frames(&mut c);
        c.handle_spawn(ms(1), spec(1, vec![val(1)]), 1);
        c.handle_release(ms(1), TaskId(1));
        let r = runs(&frames(&mut c));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1.quiet, !record, "recording: {record}");
    }
}

#[test]
fn oversized_run_batches_are_split_and_a_task_too_large_fails() {
    let limit = 4096;
    let mut c = core(DriverConfig {
        max_frame: limit,
        ..DriverConfig::default()
    });
    c.handle_join(ms(0), LinkId(1), info(101, 8), false)
        .unwrap();
    frames(&mut c);
    let blob = |n: usize| Arg::Value(vec![7u8; n]);
    let mut batch: Vec<(TaskSpec, Option<u64>)> = (1..=4)
        .map(|i| (spec(i, vec![blob(1500)]), Some(i)))
        .collect();
    batch.push((spec(5, vec![blob(5000)]), Some(5)));
    c.handle_submit(ms(1), batch);
    // `frames` checks every frame against the limit.
    let f = frames(&mut c);
    assert!(f.len() >= 3, "split into several Run frames: {f:?}");
    let mut ran: Vec<u64> = runs(&f).iter().map(|(_, t)| t.task.0).collect();
    ran.sort_unstable();
    assert_eq!(ran, vec![1, 2, 3, 4], "each fitting task is sent once");
    let done = completions(&events(&mut c));
    assert_eq!(done.len(), 1, "{done:?}");
    let (task, slot, result) = &done[0];
    assert_eq!((*task, *slot), (TaskId(5), 5));
    match result {
        Err(TaskError::MoveFailed {
            task: TaskId(5),
            cause: MoveFailure::TooLarge { bytes, limit: l },
        }) => {
            assert!(*bytes > limit as u64);
            assert_eq!(*l, limit as u64);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

/// Worker 1 on link 1 stores task 1's large result; worker 2 joins on link 2; worker 1 is
/// lost, so the result is recomputed on worker 2.
fn stored_result_lost(c: &mut Core, second_worker: bool) -> ChunkId {
    c.handle_join(ms(0), LinkId(1), info(101, 1), false)
        .unwrap();
    c.handle_spawn(ms(1), spec(1, vec![val(1)]), 1);
    let t = runs(&frames(c))[0].1.clone();
    deliver(
        c,
        ms(2),
        LinkId(1),
        ToDriver::Done {
            incarnation: Incarnation(1),
            tasks: vec![done(&t, Outcome::Stored { size: 1 << 20 })],
            moves: Vec::new(),
            sent_ns: 0,
        },
    );
    let done = completions(&events(c));
    assert_eq!(
        done,
        vec![(
            TaskId(1),
            1,
            Ok(Completion::Stored {
                holders: vec![WorkerId(1)],
                size: 1 << 20
            })
        )]
    );
    if second_worker {
        c.handle_join(ms(3), LinkId(2), info(102, 1), false)
            .unwrap();
    }
    frames(c);
    let closed = LostReason::LinkClosed {
        detail: "reset".into(),
    };
    c.handle_link_closed(ms(4), LinkId(1), closed.clone());
    let evs = events(c);
    assert!(evs.contains(&DriverEvent::CloseLink {
        link: LinkId(1),
        reason: closed,
    }));
    t.task.chunk()
}

#[test]
fn a_parked_fetch_is_answered_once_the_lost_result_is_recomputed() {
    let mut c = core(DriverConfig::default());
    let chunk = stored_result_lost(&mut c, true);
    let rerun = runs(&frames(&mut c));
    assert_eq!(rerun.len(), 1);
    assert_eq!(rerun[0].0, LinkId(2));

    // The client fetches from the holder it was told of, which is gone: the fetch waits.
    let fetch = c.handle_fetch(ms(5), chunk, vec![WorkerId(1)]);
    assert!(frames(&mut c).is_empty());
    assert!(events(&mut c).is_empty(), "neither answered nor failed");

    deliver(
        &mut c,
        ms(6),
        LinkId(2),
        ToDriver::Done {
            incarnation: Incarnation(2),
            tasks: vec![done(&rerun[0].1, Outcome::Stored { size: 1 << 20 })],
            moves: Vec::new(),
            sent_ns: 0,
        },
    );
    assert_eq!(frames(&mut c), vec![(LinkId(2), ToWorker::Fetch(chunk))]);
    let bytes = vec![5u8; 1000];
    deliver(
        &mut c,
        ms(7),
        LinkId(2),
        ToDriver::ChunkData {
            incarnation: Incarnation(2),
            chunk,
            data: Ok(wire::ByteBuf::from(bytes.clone())),
        },
    );
    assert_eq!(
        events(&mut c),
        vec![DriverEvent::FetchDone {
            fetch,
            result: Ok(bytes)
        }]
    );
}

#[test]
fn a_parked_fetch_fails_at_the_park_limit() {
    let limit = Duration::from_secs(60);
    // The recomputation waits for a processor for good here, so the park limit is the
    // only deadline.
    let sched = Scheduler::new(dagger_sched::Config {
        no_processor_grace: None,
        ..dagger_sched::Config::default()
    });
    let mut c = DriverCore::new(
        sched,
        DriverConfig {
            fetch_park_limit: limit,
            ..DriverConfig::default()
        },
    );
    let chunk = stored_result_lost(&mut c, false);
    let fetch = c.handle_fetch(ms(5), chunk, vec![WorkerId(1)]);
    assert!(events(&mut c).is_empty());
    // No worker is left: the park limit is the only deadline.
    assert_eq!(c.poll_timeout(), Some(ms(5) + limit));
    c.handle_timeout(ms(4) + limit);
    assert!(events(&mut c).is_empty());
    c.handle_timeout(ms(5) + limit);
    assert_eq!(
        events(&mut c),
        vec![DriverEvent::FetchDone {
            fetch,
            result: Err(TaskError::MoveFailed {
                task: chunk.task(),
                cause: MoveFailure::NoHolder
            })
        }]
    );
    assert_eq!(c.poll_timeout(), None);
}

/// A fetch sent to a worker that is then lost waits while the result is recomputed; when
/// the recomputation fails for good, the fetch fails at once with the task's error (not
/// with the lost worker, and not only at the park limit).
#[test]
fn a_fetch_from_a_worker_that_leaves_ends_with_the_recomputation() {
    let grace = Duration::from_secs(2);
    let sched = Scheduler::new(dagger_sched::Config {
        no_processor_grace: Some(grace),
        ..dagger_sched::Config::default()
    });
    let mut c = DriverCore::new(sched, DriverConfig::default());
    c.handle_join(ms(0), LinkId(1), info(101, 1), false)
        .unwrap();
    c.handle_spawn(ms(1), spec(1, vec![val(1)]), 1);
    let t = runs(&frames(&mut c))[0].1.clone();
    deliver(
        &mut c,
        ms(2),
        LinkId(1),
        ToDriver::Done {
            incarnation: Incarnation(1),
            tasks: vec![done(&t, Outcome::Stored { size: 1 << 20 })],
            moves: Vec::new(),
            sent_ns: 0,
        },
    );
    events(&mut c);
    let fetch = c.handle_fetch(ms(3), t.task.chunk(), vec![WorkerId(1)]);
    assert_eq!(
        frames(&mut c),
        vec![(LinkId(1), ToWorker::Fetch(t.task.chunk()))]
    );
    c.handle_process_exited(ms(4), "sim", 101, ExitCause::Signal(9));
    let evs = events(&mut c);
    assert!(
        evs.contains(&DriverEvent::Cluster(ClusterEvent::WorkerLost {
            worker: WorkerId(1),
            reason: LostReason::ProcessExited {
                pid: 101,
                exit: ExitCause::Signal(9)
            }
        }))
    );
    assert!(
        !evs.iter()
            .any(|e| matches!(e, DriverEvent::FetchDone { .. })),
        "the fetch waits for the recomputation: {evs:?}"
    );
    // No processor is left: the recomputation fails at the end of the scheduler's grace
    // period, long before the park limit, and the fetch with it.
    let deadline = c.poll_timeout().expect("the grace period is armed");
    assert_eq!(deadline, ms(4) + grace);
    c.handle_timeout(deadline);
    let no_processor = TaskError::NoProcessor {
        task: t.task,
        scope: dagger_core::Scope::Any.to_string(),
    };
    assert_eq!(
        events(&mut c),
        vec![DriverEvent::FetchDone {
            fetch,
            result: Err(no_processor)
        }]
    );
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn shutdown_answers_every_slot_and_fetch() {
    let mut c = core(DriverConfig::default());
    c.handle_join(ms(0), LinkId(1), info(101, 1), false)
        .unwrap();
    c.handle_submit(
        ms(1),
        vec![
            (spec(1, vec![val(1)]), Some(1)),
            (spec(2, vec![Arg::Task(TaskId(1))]), Some(2)),
            (spec(3, vec![Arg::Task(TaskId(2))]), None),
        ],
    );
    frames(&mut c);
    // A fetch of a result nobody holds waits (parked).
    let parked = c.handle_fetch(ms(2), ChunkId(77), vec![WorkerId(9)]);
    // Submitted, not yet given to the scheduler.
    c.handle_spawn(ms(3), spec(4, vec![val(4)]), 4);
    c.handle_shutdown(ms(4));
    // What was decided before the shutdown still goes out, then the shutdown itself.
    let f = frames(&mut c);
    assert_eq!(f.last(), Some(&(LinkId(1), ToWorker::Shutdown)), "{f:?}");
    let evs = events(&mut c);
    let mut failed: Vec<(u64, u64)> = completions(&evs)
        .into_iter()
        .map(|(task, slot, r)| {
            assert_eq!(r, Err(TaskError::Shutdown { task }));
            (task.0, slot)
        })
        .collect();
    failed.sort_unstable();
    assert_eq!(failed, vec![(1, 1), (2, 2), (4, 4)]);
    assert!(evs.contains(&DriverEvent::FetchDone {
        fetch: parked,
        result: Err(TaskError::Shutdown { task: TaskId(77) })
    }));
    assert_eq!(c.poll_timeout(), None);

    // Whatever comes later is answered at once.
    c.handle_spawn(ms(5), spec(5, vec![val(5)]), 5);
    let late = c.handle_fetch(ms(5), ChunkId(1), vec![WorkerId(1)]);
    let evs = events(&mut c);
    assert_eq!(
        evs,
        vec![
            DriverEvent::Complete {
                task: TaskId(5),
                slot: 5,
                result: Err(TaskError::Shutdown { task: TaskId(5) })
            },
            DriverEvent::FetchDone {
                fetch: late,
                result: Err(TaskError::Shutdown { task: TaskId(1) })
            }
        ]
    );
    assert_eq!(
        c.handle_join(ms(6), LinkId(2), info(102, 1), false),
        Err(JoinError::ShutDown)
    );
    assert!(frames(&mut c).is_empty());
}

#[test]
fn a_refused_submission_fails_only_its_own_tasks() {
    let mut c = core(DriverConfig::default());
    c.handle_join(ms(0), LinkId(1), info(101, 2), false)
        .unwrap();
    frames(&mut c);
    // Two submissions between two polls: merged into one batch, which is refused.
    c.handle_spawn(ms(1), spec(1, vec![val(1)]), 1);
    c.handle_submit(
        ms(1),
        vec![
            (spec(2, vec![Arg::Task(TaskId(999))]), Some(2)),
            (spec(3, vec![val(3)]), Some(3)),
        ],
    );
    let ran: Vec<TaskId> = runs(&frames(&mut c)).iter().map(|(_, t)| t.task).collect();
    assert_eq!(ran, vec![TaskId(1)], "the good submission runs");
    let refused = GraphError::UnknownDependency {
        task: TaskId(2),
        dependency: TaskId(999),
    };
    let mut done = completions(&events(&mut c));
    done.sort_by_key(|d| d.0);
    assert_eq!(
        done,
        vec![
            (
                TaskId(2),
                2,
                Err(TaskError::Rejected {
                    task: TaskId(2),
                    error: refused.clone()
                })
            ),
            (
                TaskId(3),
                3,
                Err(TaskError::Rejected {
                    task: TaskId(3),
                    error: refused
                })
            ),
        ]
    );
    assert_eq!(c.stats().submitted, 1);
}

#[test]
fn a_second_join_or_a_malformed_frame_loses_the_worker() {
    let mut c = core(DriverConfig::default());
    c.handle_join(ms(0), LinkId(1), info(101, 1), false)
        .unwrap();
    c.handle_join(ms(0), LinkId(2), info(102, 1), false)
        .unwrap();
    frames(&mut c);
    events(&mut c);
    deliver(&mut c, ms(1), LinkId(1), ToDriver::Join(info(101, 1)));
    let evs = events(&mut c);
    assert!(evs.iter().any(|e| matches!(
        e,
        DriverEvent::CloseLink {
            link: LinkId(1),
            reason: LostReason::ProtocolViolation { .. }
        }
    )));
    let bad = LostReason::MalformedFrame {
        detail: "garbage".into(),
    };
    c.handle_link_closed(ms(2), LinkId(2), bad.clone());
    assert!(events(&mut c).contains(&DriverEvent::CloseLink {
        link: LinkId(2),
        reason: bad,
    }));
    assert!(c.workers().is_empty());
    // A close reported again (the reader and the core both noticed) changes nothing.
    c.handle_link_closed(
        ms(3),
        LinkId(2),
        LostReason::LinkClosed {
            detail: "closed".into(),
        },
    );
    assert!(events(&mut c).is_empty());
}

/// Every worker that could run a task was killed: the task does not wait forever, it fails
/// with a typed error once the scheduler's grace period is over, woken by the core's timer.
#[test]
fn a_task_no_processor_can_run_fails_after_the_grace_period() {
    let grace = Duration::from_secs(10);
    let sched = Scheduler::new(dagger_sched::Config {
        no_processor_grace: Some(grace),
        ..dagger_sched::Config::default()
    });
    let mut c: Core = DriverCore::new(sched, DriverConfig::default());
    c.handle_join(ms(0), LinkId(1), info(101, 1), false)
        .unwrap();
    frames(&mut c);
    events(&mut c);
    c.handle_process_exited(ms(1), "sim", 101, ExitCause::Signal(9));
    frames(&mut c);
    events(&mut c);
    c.handle_spawn(ms(2), spec(1, vec![val(1)]), 1);
    assert!(completions(&events(&mut c)).is_empty());
    // The core's next deadline is the scheduler's: nothing else is pending.
    assert_eq!(c.poll_timeout(), Some(ms(2) + grace));
    c.handle_timeout(ms(2) + grace);
    let done = completions(&events(&mut c));
    assert!(
        matches!(
            &done[..],
            [(
                TaskId(1),
                1,
                Err(TaskError::NoProcessor {
                    task: TaskId(1),
                    ..
                })
            )]
        ),
        "{done:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Fault policy: poison tasks, exclusion, loss budgets, a stall of the driver.

/// Joins `n` workers with one thread each on links 1..=n; worker k is `WorkerId(k)`,
/// incarnation k, process 100 + k.
fn cluster(c: &mut Core, n: u64) {
    for k in 1..=n {
        let j = c
            .handle_join(ms(0), LinkId(k), info(100 + k as u32, 1), false)
            .unwrap();
        assert_eq!(j.worker, WorkerId(k as u32));
        assert_eq!(j.incarnation, Incarnation(k as u32));
    }
    frames(c);
    events(c);
}

fn panicked(t: &RunTask) -> Outcome {
    Outcome::Failed(TaskError::Panicked {
        task: t.task,
        func: "f".into(),
        message: "boom".into(),
    })
}

fn started(c: &mut Core, now: Duration, link: LinkId, task: TaskId) {
    let incarnation = Incarnation(link.0 as u32);
    deliver(
        c,
        now,
        link,
        ToDriver::Started {
            incarnation,
            tasks: vec![task],
        },
    );
}

fn exited(pid: u32) -> LostReason {
    LostReason::ProcessExited {
        pid,
        exit: ExitCause::Signal(9),
    }
}

fn closed() -> LostReason {
    LostReason::LinkClosed {
        detail: "reset".into(),
    }
}

/// The one `Run` of `task` in `f`: its link and whether it is watched.
fn run_of(f: &[(LinkId, ToWorker)], task: u64) -> (LinkId, bool) {
    let r: Vec<_> = runs(f)
        .into_iter()
        .filter(|(_, t)| t.task == TaskId(task))
        .collect();
    assert_eq!(r.len(), 1, "one run of task {task}: {f:?}");
    (r[0].0, r[0].1.watch)
}

/// A core whose scheduler watches suspects only (not tasks expected to run long).
fn core_watching_suspects_only() -> Core {
    let sched = Scheduler::new(dagger_sched::Config {
        watch_threshold: Duration::MAX,
        ..dagger_sched::Config::default()
    });
    DriverCore::new(sched, DriverConfig::default())
}

#[test]
fn a_task_watched_from_its_first_run_is_poisoned_by_two_crashes() {
    let mut c = core(DriverConfig::default());
    cluster(&mut c, 4);
    c.handle_spawn(ms(1), spec(1, vec![val(1)]), 1);
    // Never measured: it may run long, so it reports its start from its first run.
    let (l1, watch) = run_of(&frames(&mut c), 1);
    assert!(watch, "a task of unknown run time is watched");
    started(&mut c, ms(2), l1, TaskId(1));
    c.handle_process_exited(ms(3), "sim", 100 + l1.0 as u32, ExitCause::Signal(9));
    assert!(completions(&events(&mut c)).is_empty(), "one counted crash");
    let (l2, watch) = run_of(&frames(&mut c), 1);
    assert!(watch);
    started(&mut c, ms(4), l2, TaskId(1));
    c.handle_link_closed(ms(5), l2, closed());
    let done = completions(&events(&mut c));
    let poisoned = TaskError::Poisoned {
        task: TaskId(1),
        func: "f".into(),
        crashes: vec![
            (WorkerId(l1.0 as u32), exited(100 + l1.0 as u32)),
            (WorkerId(l2.0 as u32), closed()),
        ],
    };
    assert_eq!(done, vec![(TaskId(1), 1, Err(poisoned))]);
    assert!(runs(&frames(&mut c)).is_empty(), "not run again");
}

#[test]
fn a_task_that_crashed_two_processes_while_it_ran_is_poisoned() {
    let mut c = core_watching_suspects_only();
    cluster(&mut c, 4);
    let mut dependent = spec(2, vec![Arg::Task(TaskId(1))]);
    dependent.options = Options::new().scope(dagger_core::Scope::worker(WorkerId(4)));
    c.handle_submit(
        ms(1),
        vec![(spec(1, vec![val(1)]), Some(1)), (dependent, Some(2))],
    );
    let f = frames(&mut c);
    let (l1, watch) = run_of(&f, 1);
    assert!(!watch, "not a suspect yet: no Started asked for");
    // 1st crash: imprecise (was task 1 running, or only queued?). It runs again, watched.
    c.handle_process_exited(ms(10), "sim", 100 + l1.0 as u32, ExitCause::Signal(9));
    events(&mut c);
    let (l2, watch) = run_of(&frames(&mut c), 1);
    assert!(watch, "a suspect is watched");
    // 2nd crash, after its Started came from that process: counted.
    started(&mut c, ms(11), l2, TaskId(1));
    c.handle_link_closed(ms(12), l2, closed());
    assert!(completions(&events(&mut c)).is_empty(), "one counted crash");
    let (l3, watch) = run_of(&frames(&mut c), 1);
    assert!(watch);
    // 3rd crash, counted: two processes killed while it ran.
    started(&mut c, ms(13), l3, TaskId(1));
    c.handle_process_exited(ms(14), "sim", 100 + l3.0 as u32, ExitCause::Signal(9));
    let done = completions(&events(&mut c));
    let poisoned = TaskError::Poisoned {
        task: TaskId(1),
        func: "f".into(),
        crashes: vec![
            (WorkerId(l2.0 as u32), closed()),
            (WorkerId(l3.0 as u32), exited(100 + l3.0 as u32)),
        ],
    };
    assert!(poisoned.to_string().contains("killed 2 worker processes"));
    assert_eq!(
        done,
        vec![
            (TaskId(1), 1, Err(poisoned.clone())),
            (
                TaskId(2),
                2,
                Err(TaskError::DependencyFailed {
                    task: TaskId(2),
                    dependency: TaskId(1),
                    cause: Box::new(poisoned),
                })
            ),
        ]
    );
    assert!(runs(&frames(&mut c)).is_empty(), "not run again");
}

#[test]
fn crashes_while_a_watched_task_was_only_queued_do_not_poison_it() {
    let mut c = core(DriverConfig::default());
    cluster(&mut c, 5);
    c.handle_spawn(ms(1), spec(1, vec![val(1)]), 1);
    let (mut link, _) = run_of(&frames(&mut c), 1);
    // Crashes of every process it was sent to; its Started never came (it was queued
    // behind other work, or the report was lost with the process): retried within its
    // loss budget, then WorkerLost, never Poisoned.
    for k in 0..4u64 {
        c.handle_process_exited(ms(10 + k), "sim", 100 + link.0 as u32, ExitCause::Signal(9));
        let done = completions(&events(&mut c));
        if k < 3 {
            assert!(done.is_empty(), "loss {k}: {done:?}");
            link = run_of(&frames(&mut c), 1).0;
        } else {
            assert!(
                matches!(&done[..], [(_, 1, Err(TaskError::WorkerLost { .. }))]),
                "{done:?}"
            );
        }
    }
}

#[test]
fn a_worker_whose_failed_tasks_succeed_elsewhere_is_excluded() {
    let mut c = core(DriverConfig::default());
    cluster(&mut c, 2);
    let bad = LinkId(1);
    // Tasks panic on worker 1 and succeed on worker 2; each may be retried.
    let tasks: Vec<_> = (1..=12)
        .map(|k| {
            let mut s = spec(k, vec![val(k)]);
            s.options = Options::new().retries(3);
            (s, Some(k))
        })
        .collect();
    c.handle_submit(ms(1), tasks);
    let mut excluded = None;
    let mut now = ms(2);
    for _ in 0..50 {
        let f = frames(&mut c);
        let evs = events(&mut c);
        for e in &evs {
            if let DriverEvent::Cluster(ClusterEvent::WorkerLost { worker, reason }) = e {
                excluded = Some((*worker, reason.clone()));
            }
        }
        let r = runs(&f);
        if r.is_empty() {
            break;
        }
        for (link, t) in r {
            now += ms(1);
            let outcome = if link == bad {
                panicked(&t)
            } else {
                Outcome::Value(wire::encode(&t.task.0))
            };
            let incarnation = Incarnation(link.0 as u32);
            let tasks = vec![done(&t, outcome)];
            deliver(
                &mut c,
                now,
                link,
                ToDriver::Done {
                    incarnation,
                    tasks,
                    moves: Vec::new(),
                    sent_ns: 0,
                },
            );
        }
    }
    assert_eq!(
        excluded,
        Some((WorkerId(1), LostReason::Excluded { strikes: 3 })),
        "worker 1 is excluded after three tasks failed there and succeeded on worker 2"
    );
    assert_eq!(c.workers(), vec![WorkerId(2)]);
}

#[test]
fn loss_budgets_come_from_the_task_options() {
    let mut c = core(DriverConfig::default());
    c.handle_join(ms(0), LinkId(1), info(101, 3), false)
        .unwrap();
    let with = |id: u64, o: Options| TaskSpec {
        options: o,
        ..spec(id, vec![val(id)])
    };
    c.handle_submit(
        ms(1),
        vec![
            (with(1, Options::new().loss_retries(0)), Some(1)),
            (with(2, Options::new()), Some(2)),
            (with(3, Options::new().loss_retries(5)), Some(3)),
        ],
    );
    assert_eq!(runs(&frames(&mut c)).len(), 3);
    let mut failed = Vec::new();
    // Silent losses: no crash attribution, only the budgets.
    let mut now = ms(1);
    for k in 1..=6u64 {
        let mut evs = Vec::new();
        for _ in 0..5 {
            now = c.poll_timeout().expect("a deadline");
            c.handle_timeout(now);
            evs.extend(events(&mut c));
            if !c.workers().contains(&WorkerId(k as u32)) {
                break;
            }
        }
        assert!(
            evs.iter().any(|e| matches!(
                e,
                DriverEvent::Cluster(ClusterEvent::WorkerLost {
                    reason: LostReason::Silent { .. },
                    ..
                })
            )),
            "loss {k}: {evs:?}"
        );
        for (task, _, r) in completions(&evs) {
            assert!(matches!(r, Err(TaskError::WorkerLost { .. })), "{r:?}");
            failed.push((task.0, k));
        }
        // A fresh worker takes what is left.
        c.handle_join(now, LinkId(1 + k), info(101 + k as u32, 3), false)
            .unwrap();
        frames(&mut c);
    }
    // Task 1 (budget 0) fails at its first loss, task 2 (the policy's default, 3) at its
    // fourth, task 3 (budget 5) at its sixth.
    assert_eq!(failed, vec![(1, 1), (2, 4), (3, 6)]);
}

#[test]
fn a_stall_of_the_driver_loses_nobody_and_a_silent_worker_is_still_found() {
    let mut c = core(DriverConfig::default());
    let timeout = c.config().heartbeat_timeout;
    let interval = timeout / 4;
    cluster(&mut c, 2);
    let beat = |c: &mut Core, now: Duration, link: u64| {
        let incarnation = Incarnation(link as u32);
        deliver(c, now, LinkId(link), ToDriver::Heartbeat { incarnation });
    };
    beat(&mut c, ms(250), 1);
    beat(&mut c, ms(250), 2);
    // The driver's thread stalls for 10 s: its timer fires late, before the heartbeats
    // waiting in its sockets are read.
    c.handle_timeout(ms(10_250));
    let evs = events(&mut c);
    assert!(
        evs.is_empty(),
        "a stall of the driver loses nobody: {evs:?}"
    );
    // Worker 1's heartbeats are read now; worker 2 is really gone.
    beat(&mut c, ms(10_251), 1);
    let mut lost = None;
    for _ in 0..10 {
        let at = c.poll_timeout().expect("a deadline");
        c.handle_timeout(at);
        for e in events(&mut c) {
            if let DriverEvent::Cluster(ClusterEvent::WorkerLost { worker, reason }) = e {
                lost = Some((worker, reason, at));
            }
        }
        if lost.is_some() {
            break;
        }
        beat(&mut c, at, 1);
    }
    let (worker, reason, at) = lost.expect("worker 2 is lost");
    assert_eq!(worker, WorkerId(2));
    assert_eq!(reason, LostReason::Silent { timeout });
    assert!(at <= ms(10_250) + interval, "lost at {at:?}");
    assert_eq!(c.workers(), vec![WorkerId(1)]);

    // Without a stall, a silent worker is lost within the timeout and one interval.
    let mut c = core(DriverConfig::default());
    cluster(&mut c, 1);
    let mut lost_at = None;
    for _ in 0..10 {
        let at = c.poll_timeout().expect("a deadline");
        c.handle_timeout(at);
        if events(&mut c)
            .iter()
            .any(|e| matches!(e, DriverEvent::Cluster(ClusterEvent::WorkerLost { .. })))
        {
            lost_at = Some(at);
            break;
        }
    }
    let at = lost_at.expect("lost");
    assert!(at <= timeout + interval, "lost at {at:?}");
}

#[test]
fn bytes_still_arriving_keep_a_worker_alive_and_a_silent_one_is_lost() {
    let mut c = core(DriverConfig::default());
    let timeout = c.config().heartbeat_timeout;
    cluster(&mut c, 2);
    events(&mut c);
    // Worker 1 sends one large frame for 5 s: no message completes, but its bytes keep
    // coming (the shell reports progress every interval). Worker 2 is silent.
    let mut now = Duration::ZERO;
    let mut lost = Vec::new();
    while now < ms(5_000) {
        now += timeout / 4;
        c.handle_progress(now, LinkId(1));
        while let Some(at) = c.poll_timeout() {
            if at > now {
                break;
            }
            c.handle_timeout(at);
        }
        for e in events(&mut c) {
            if let DriverEvent::Cluster(ClusterEvent::WorkerLost { worker, .. }) = e {
                lost.push(worker);
            }
        }
    }
    assert_eq!(lost, vec![WorkerId(2)]);
    assert_eq!(c.workers(), vec![WorkerId(1)]);
    // Progress on a link that is not joined (or no longer) is ignored.
    c.handle_progress(now, LinkId(2));
    c.handle_progress(now, LinkId(99));
    assert!(events(&mut c).is_empty());
}

#[test]
fn a_process_exit_loses_only_the_worker_of_that_host() {
    let mut c = core(DriverConfig::default());
    c.handle_join(ms(0), LinkId(1), info(101, 1), false)
        .unwrap();
    events(&mut c);
    // Another host's process with the same pid exited: worker 1 (host "sim") stays.
    c.handle_process_exited(ms(1), "elsewhere", 101, ExitCause::Signal(9));
    assert!(events(&mut c).is_empty());
    assert_eq!(c.workers(), vec![WorkerId(1)]);
    c.handle_process_exited(ms(2), "sim", 101, ExitCause::Signal(9));
    let evs = events(&mut c);
    assert!(
        evs.iter().any(|e| matches!(
            e,
            DriverEvent::Cluster(ClusterEvent::WorkerLost {
                worker: WorkerId(1),
                reason: LostReason::ProcessExited { pid: 101, .. }
            })
        )),
        "{evs:?}"
    );
}

#[test]
fn a_forgotten_slot_is_not_completed_and_its_task_still_feeds_its_dependents() {
    let mut c = core(DriverConfig::default());
    c.handle_join(ms(0), LinkId(1), info(100, 1), true).unwrap();
    c.handle_spawn(ms(1), spec(1, vec![val(7)]), 1);
    c.handle_spawn(ms(1), spec(2, vec![Arg::Task(TaskId(1))]), 2);
    // The client dropped task 1's handle before it ran.
    c.handle_release(ms(2), TaskId(1));
    assert_eq!(c.forget_slot(TaskId(1)), Some(1));
    assert_eq!(c.forget_slot(TaskId(1)), None, "given back once");
    let mut seen = Vec::new();
    let mut now = 3;
    while !seen.iter().any(|(t, _, _)| *t == TaskId(2)) {
        assert!(now < 20, "task 2 never completed: {seen:?}");
        for (_, t) in runs(&frames(&mut c)) {
            let x = match t.task.0 {
                1 => 8u64,
                _ => 9,
            };
            deliver(
                &mut c,
                ms(now),
                LinkId(1),
                ToDriver::Done {
                    incarnation: Incarnation(1),
                    tasks: vec![done(&t, Outcome::Value(wire::encode(&x)))],
                    moves: Vec::new(),
                    sent_ns: 0,
                },
            );
        }
        c.handle_timeout(ms(now));
        seen.extend(completions(&events(&mut c)));
        now += 1;
    }
    assert_eq!(
        seen,
        vec![(TaskId(2), 2, Ok(Completion::Value(wire::encode(&9u64))))],
        "only the slot still held completes"
    );
    assert_eq!(c.stats().finished, 2, "the forgotten slot's task ran too");
}
