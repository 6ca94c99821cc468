//! The worker core driven step by step: virtual time, every message through the real
//! encoder and decoder.

use dagger_core::wire::{
    self, ChunkPayload, Hello, Outcome, PeerInfo, PeerMsg, RunArg, RunPart, RunTask, ToDriver,
    ToWorker, PROTOCOL_VERSION,
};
use dagger_core::{ChunkId, Incarnation, MoveFailure, ProcId, TaskError, TaskId, WorkerId};
use dagger_runtime::worker::{
    Action, Dest, LinkKey, PeerRefused, Route, StartTask, Transmit, WorkerConfig, WorkerState,
};
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

type Worker = WorkerState<Vec<u8>>;

const ME: WorkerId = WorkerId(1);
const HOST: &str = "node-a";
const REGISTRY: u64 = 0xfeed;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Encodes and decodes a message, as it would cross a link.
fn over_wire<T: Serialize + DeserializeOwned>(msg: &T) -> T {
    wire::decode(&wire::encode(msg)).expect("a message decodes")
}

fn peer(id: u32, host: &str) -> PeerInfo {
    PeerInfo {
        worker: WorkerId(id),
        incarnation: Incarnation(0),
        addr: format!("10.0.0.{id}:7000"),
        host: host.into(),
    }
}

fn config() -> WorkerConfig {
    WorkerConfig::new(HOST, REGISTRY)
}

/// A worker welcomed at time zero, with peer 2 on its host and peers 3 and 4 elsewhere.
fn joined(config: WorkerConfig) -> Worker {
    let mut w = Worker::new(config);
    let welcome = ToWorker::Welcome {
        worker: ME,
        incarnation: Incarnation(5),
        peers: vec![peer(2, HOST), peer(3, "node-b"), peer(4, "node-c")],
        heartbeat: ms(250),
        log_filter: String::new(),
    };
    w.handle_driver_msg(Duration::ZERO, over_wire(&welcome));
    assert!(w.is_joined());
    w
}

fn run(w: &mut Worker, now: Duration, tasks: Vec<RunTask>) {
    w.handle_driver_msg(now, over_wire(&ToWorker::Run(tasks)));
}

fn task(id: u64, args: Vec<RunArg>) -> RunTask {
    RunTask {
        task: TaskId(id),
        func: "f".into(),
        args,
        proc: ProcId::new(ME, 1),
        any_thread: false,
        quiet: false,
        inline_limit: 1024,
        push_to: vec![],
        watch: false,
        attempt: 1,
    }
}

fn value(v: u64) -> RunArg {
    RunArg::Value(wire::encode(&v))
}

fn chunk_arg(c: u64, from: &[u32]) -> RunArg {
    RunArg::Chunk {
        chunk: ChunkId(c),
        from: from.iter().map(|w| WorkerId(*w)).collect(),
    }
}

fn transmits(w: &mut Worker) -> Vec<Transmit> {
    std::iter::from_fn(|| w.poll_transmit()).collect()
}

fn actions(w: &mut Worker) -> Vec<Action<Vec<u8>>> {
    std::iter::from_fn(|| w.poll_action()).collect()
}

fn starts(w: &mut Worker) -> Vec<StartTask<Vec<u8>>> {
    actions(w)
        .into_iter()
        .filter_map(|a| match a {
            Action::Start(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// The peer messages sent on `link`, decoded.
fn peer_msgs(ts: &[Transmit], link: LinkKey) -> Vec<PeerMsg> {
    ts.iter()
        .filter(|t| t.to == Dest::Link(link))
        .filter_map(|t| wire::decode::<PeerMsg>(&t.clone().into_frame()).ok())
        .collect()
}

fn driver_msgs(ts: &[Transmit]) -> Vec<ToDriver> {
    ts.iter()
        .filter(|t| t.to == Dest::Driver)
        .map(|t| {
            wire::decode::<ToDriver>(&t.clone().into_frame()).expect("a driver message decodes")
        })
        .collect()
}

/// Opens this worker's link to `peer` as the shell would after `Action::Connect`, and
/// returns the frames it sent there (its hello first).
fn link_up(w: &mut Worker, now: Duration, peer: u32, link: LinkKey) -> Vec<PeerMsg> {
    let connects: Vec<_> = actions(w)
        .into_iter()
        .filter(|a| matches!(a, Action::Connect { peer: p, .. } if *p == WorkerId(peer)))
        .collect();
    assert_eq!(connects.len(), 1, "one connect to worker-{peer}");
    w.handle_link_up(now, WorkerId(peer), link);
    let ts = transmits(w);
    let first = ts.first().expect("the hello");
    let hello: Hello = wire::decode(&first.clone().into_frame()).expect("a hello");
    assert_eq!(hello.worker, ME);
    assert_eq!(hello.registry_hash, REGISTRY);
    peer_msgs(&ts[1..], link)
}

/// A link peer `peer` opened to this worker.
fn inbound(w: &mut Worker, now: Duration, peer: u32, link: LinkKey) {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        registry_hash: REGISTRY,
        worker: WorkerId(peer),
        incarnation: Incarnation(0),
        build_id: 0,
        allow_mixed_builds: false,
    };
    assert_eq!(
        w.handle_inbound_link(now, link, &over_wire(&hello)),
        Ok(WorkerId(peer))
    );
}

fn peer_msg(w: &mut Worker, now: Duration, link: LinkKey, msg: PeerMsg) {
    w.handle_peer_msg(now, link, over_wire(&msg));
}

fn missing(c: u64) -> PeerMsg {
    PeerMsg::Chunk {
        chunk: ChunkId(c),
        payload: ChunkPayload::Missing("not here".into()),
    }
}

/// Flushes the batch of finished tasks (due at once by default) and returns it.
fn flush_done(w: &mut Worker, now: Duration) -> Vec<wire::TaskDone> {
    w.handle_timeout(now);
    driver_msgs(&transmits(w))
        .into_iter()
        .flat_map(|m| match m {
            ToDriver::Done {
                incarnation, tasks, ..
            } => {
                assert_eq!(incarnation, Incarnation(5));
                tasks
            }
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn a_task_with_inline_and_local_inputs_starts_at_once() {
    let mut w = joined(config());
    run(&mut w, ms(1), vec![task(10, vec![value(41)])]);
    let s = starts(&mut w);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].task, TaskId(10));
    assert_eq!(s[0].proc, ProcId::new(ME, 1));
    assert_eq!(s[0].args, vec![wire::encode(&41u64)]);
    assert!(transmits(&mut w).is_empty(), "nothing asked of anyone");

    // Its result is kept here; a task using it (and a value) starts at once too.
    w.handle_task_finished(ms(2), TaskId(10), ms(1), Ok(vec![7; 2000]));
    assert!(w.holds(ChunkId(10)));
    run(
        &mut w,
        ms(3),
        vec![task(11, vec![chunk_arg(10, &[1]), value(1)])],
    );
    let s = starts(&mut w);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].args, vec![vec![7; 2000], wire::encode(&1u64)]);
    assert_eq!(w.waiting_tasks(), 0);
    assert_eq!(w.running_tasks(), 1);
}

#[test]
fn missing_answers_are_asked_again_with_growing_pauses_then_of_the_next_holder() {
    let mut cfg = config();
    cfg.want_attempts = 4;
    cfg.want_pause_min = ms(1);
    cfg.want_pause_max = ms(8);
    let mut w = joined(cfg);
    run(&mut w, ms(1), vec![task(20, vec![chunk_arg(7, &[3, 4])])]);
    assert_eq!(w.running_tasks(), 0, "its input is not here");
    assert_eq!(w.waiting_tasks(), 1);
    let l3 = LinkKey(1);
    assert_eq!(
        link_up(&mut w, ms(1), 3, l3),
        vec![PeerMsg::Want(ChunkId(7))]
    );

    // Worker 3 answers "not here (yet)": asked again after 2, 4, 8, 8 ms (virtual).
    let mut now = ms(2);
    let mut pauses = Vec::new();
    for _ in 0..4 {
        peer_msg(&mut w, now, l3, missing(7));
        assert!(
            transmits(&mut w).is_empty(),
            "not asked again before the pause"
        );
        let at = w.poll_timeout().expect("a retry is timed");
        pauses.push(at - now);
        w.handle_timeout(at - Duration::from_micros(1));
        assert!(peer_msgs(&transmits(&mut w), l3).is_empty(), "not early");
        w.handle_timeout(at);
        assert_eq!(
            peer_msgs(&transmits(&mut w), l3),
            vec![PeerMsg::Want(ChunkId(7))]
        );
        now = at + ms(1);
    }
    assert_eq!(pauses, vec![ms(2), ms(4), ms(8), ms(8)]);

    // The fifth "not here" exhausts worker 3: worker 4 is asked, at once.
    peer_msg(&mut w, now, l3, missing(7));
    assert!(peer_msgs(&transmits(&mut w), l3).is_empty());
    let l4 = LinkKey(2);
    assert_eq!(link_up(&mut w, now, 4, l4), vec![PeerMsg::Want(ChunkId(7))]);

    // Worker 4 never has it either: the task fails with a typed cause naming worker 4.
    for _ in 0..5 {
        peer_msg(&mut w, now, l4, missing(7));
        if let Some(at) = w.poll_timeout().filter(|at| *at < ms(250)) {
            now = at;
            w.handle_timeout(now);
        }
    }
    let done = flush_done(&mut w, now);
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].outcome,
        Outcome::Failed(TaskError::MoveFailed {
            task: TaskId(20),
            cause: MoveFailure::NotHeld {
                worker: WorkerId(4)
            },
        })
    );
    assert!(!w.is_coming(ChunkId(7)));
    assert!(!w.is_coming(ChunkId(20)), "its own result will not come");
}

#[test]
fn gone_fails_the_waiting_task_at_once() {
    let mut w = joined(config());
    run(&mut w, ms(1), vec![task(21, vec![chunk_arg(8, &[3, 4])])]);
    let l3 = LinkKey(1);
    link_up(&mut w, ms(1), 3, l3);
    let gone = PeerMsg::Chunk {
        chunk: ChunkId(8),
        payload: ChunkPayload::Gone(MoveFailure::SourceFailed),
    };
    peer_msg(&mut w, ms(2), l3, gone);
    // Worker 4 is not asked: the answer is final.
    assert!(actions(&mut w).is_empty());
    let done = flush_done(&mut w, ms(2));
    assert_eq!(
        done[0].outcome,
        Outcome::Failed(TaskError::MoveFailed {
            task: TaskId(21),
            cause: MoveFailure::SourceFailed,
        })
    );
}

/// A task that fails for want of one input no longer waits for its others: a chunk asked
/// of a peer only for it is not expected any more (its answer, when it comes, is dropped),
/// while a chunk produced here, or also wanted by another task, stays coming.
#[test]
fn a_failed_task_withdraws_its_other_wants() {
    let mut w = joined(config());
    // Task 30 is produced here; task 31 needs chunk 8 (peer 3), chunk 9 (peer 4) and
    // chunk 30; task 32 needs chunk 9 too.
    run(
        &mut w,
        ms(1),
        vec![
            task(30, vec![value(1)]),
            task(
                31,
                vec![chunk_arg(8, &[3]), chunk_arg(9, &[4]), chunk_arg(30, &[1])],
            ),
        ],
    );
    let (l3, l4) = (LinkKey(1), LinkKey(2));
    let mut acts = actions(&mut w);
    assert_eq!(
        acts.iter()
            .filter(|a| matches!(a, Action::Start(_)))
            .count(),
        1
    );
    acts.retain(|a| matches!(a, Action::Connect { .. }));
    assert_eq!(acts.len(), 2, "one connect to each holder");
    for (peer, link) in [(3, l3), (4, l4)] {
        w.handle_link_up(ms(1), WorkerId(peer), link);
    }
    let _ = transmits(&mut w);
    let gone = PeerMsg::Chunk {
        chunk: ChunkId(8),
        payload: ChunkPayload::Gone(MoveFailure::SourceFailed),
    };
    peer_msg(&mut w, ms(2), l3, gone);
    assert!(matches!(
        flush_done(&mut w, ms(2))[..],
        [wire::TaskDone {
            task: TaskId(31),
            outcome: Outcome::Failed(_),
            ..
        }]
    ));
    assert!(!w.is_coming(ChunkId(9)), "nothing here waits for chunk 9");
    assert!(w.is_coming(ChunkId(30)), "task 30 still produces chunk 30");
    // Its answer is dropped.
    let bytes = PeerMsg::Chunk {
        chunk: ChunkId(9),
        payload: ChunkPayload::Bytes(vec![9; 10]),
    };
    peer_msg(&mut w, ms(3), l4, bytes.clone());
    assert!(!w.holds(ChunkId(9)) && !w.is_coming(ChunkId(9)));
    assert_eq!(w.waiting_tasks(), 0);

    // With another task waiting for it, it stays coming and reaches that task.
    run(
        &mut w,
        ms(4),
        vec![
            task(33, vec![chunk_arg(8, &[3]), chunk_arg(9, &[4])]),
            task(34, vec![chunk_arg(9, &[4])]),
        ],
    );
    let _ = transmits(&mut w);
    let gone = PeerMsg::Chunk {
        chunk: ChunkId(8),
        payload: ChunkPayload::Gone(MoveFailure::SourceFailed),
    };
    peer_msg(&mut w, ms(5), l3, gone);
    assert!(w.is_coming(ChunkId(9)), "task 34 waits for chunk 9");
    peer_msg(&mut w, ms(6), l4, bytes);
    let started = starts(&mut w);
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].task, TaskId(34));
}

#[test]
fn a_peer_leaving_has_its_wants_asked_of_the_next_holder_or_failed() {
    let mut w = joined(config());
    run(
        &mut w,
        ms(1),
        vec![
            task(30, vec![chunk_arg(9, &[3, 4])]),
            task(31, vec![chunk_arg(6, &[3])]),
        ],
    );
    let l3 = LinkKey(1);
    let sent = link_up(&mut w, ms(1), 3, l3);
    assert_eq!(sent.len(), 2);
    w.handle_driver_msg(ms(2), over_wire(&ToWorker::PeerLeft(WorkerId(3))));
    let acts = actions(&mut w);
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::CloseLink(k) if *k == l3)));
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::ForgetPeer(p) if *p == WorkerId(3))));
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Connect { peer, .. } if *peer == WorkerId(4))));
    // Chunk 9 is asked of worker 4; chunk 6 had no other holder and fails.
    w.handle_link_up(ms(3), WorkerId(4), LinkKey(2));
    let msgs = peer_msgs(&transmits(&mut w), LinkKey(2));
    assert_eq!(msgs, vec![PeerMsg::Want(ChunkId(9))]);
    let done = flush_done(&mut w, ms(3));
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].outcome,
        Outcome::Failed(TaskError::MoveFailed {
            task: TaskId(31),
            cause: MoveFailure::PeerLeft {
                worker: WorkerId(3)
            },
        })
    );
    // Worker 4 answers: task 30 starts.
    w.handle_chunk_received(ms(4), ChunkId(9), false, Ok(vec![1, 2, 3]));
    let s = starts(&mut w);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].task, TaskId(30));
    assert_eq!(s[0].args, vec![vec![1, 2, 3]]);
    // The answer to a want is not kept.
    assert!(!w.holds(ChunkId(9)));
}

#[test]
fn a_closed_link_has_its_wants_sent_again_and_a_failed_connect_fails_them() {
    let mut w = joined(config());
    run(&mut w, ms(1), vec![task(32, vec![chunk_arg(5, &[3])])]);
    link_up(&mut w, ms(1), 3, LinkKey(1));
    w.handle_link_closed(ms(2), LinkKey(1));
    // Worker 3 is still in the cluster: a new link, the want again.
    let again = link_up(&mut w, ms(2), 3, LinkKey(2));
    assert_eq!(again, vec![PeerMsg::Want(ChunkId(5))]);
    w.handle_link_closed(ms(3), LinkKey(2));
    assert!(actions(&mut w)
        .iter()
        .any(|a| matches!(a, Action::Connect { .. })));
    w.handle_connect_failed(ms(4), WorkerId(3), "refused".into());
    let done = flush_done(&mut w, ms(4));
    assert_eq!(
        done[0].outcome,
        Outcome::Failed(TaskError::MoveFailed {
            task: TaskId(32),
            cause: MoveFailure::Unreachable {
                worker: WorkerId(3),
                detail: "refused".into()
            },
        })
    );
}

#[test]
fn a_want_for_a_chunk_being_produced_is_answered_when_it_is_produced() {
    let mut w = joined(config());
    run(&mut w, ms(1), vec![task(40, vec![value(1)])]);
    assert_eq!(starts(&mut w).len(), 1);
    let l = LinkKey(9);
    inbound(&mut w, ms(1), 3, l);
    peer_msg(&mut w, ms(2), l, PeerMsg::Want(ChunkId(40)));
    assert!(transmits(&mut w).is_empty(), "not here yet: the peer waits");
    w.handle_task_finished(ms(3), TaskId(40), ms(1), Ok(vec![4; 10]));
    let ts = transmits(&mut w);
    let answer: Vec<_> = ts.iter().filter(|t| t.to == Dest::Link(l)).collect();
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].chunk, Some(ChunkId(40)));
    assert_eq!(
        wire::decode::<PeerMsg>(&answer[0].clone().into_frame()).unwrap(),
        PeerMsg::Chunk {
            chunk: ChunkId(40),
            payload: ChunkPayload::Bytes(vec![4; 10]),
        }
    );
    // A want for a chunk that is neither here nor coming is answered "missing".
    peer_msg(&mut w, ms(4), l, PeerMsg::Want(ChunkId(99)));
    assert!(matches!(
        &peer_msgs(&transmits(&mut w), l)[..],
        [PeerMsg::Chunk {
            payload: ChunkPayload::Missing(_),
            ..
        }]
    ));
}

#[test]
fn a_peer_with_another_registry_is_refused() {
    let mut w = joined(config());
    let hello = Hello {
        version: PROTOCOL_VERSION,
        registry_hash: REGISTRY + 1,
        worker: WorkerId(3),
        incarnation: Incarnation(0),
        build_id: 0,
        allow_mixed_builds: false,
    };
    assert!(matches!(
        w.handle_inbound_link(ms(1), LinkKey(1), &hello),
        Err(PeerRefused::Registry { .. })
    ));
    // Its messages are ignored.
    peer_msg(&mut w, ms(1), LinkKey(1), PeerMsg::Want(ChunkId(1)));
    assert!(transmits(&mut w).is_empty());
}

#[test]
fn heartbeats_come_at_the_interval_the_welcome_gives() {
    let mut w = joined(config());
    assert_eq!(w.heartbeat_interval(), ms(250));
    let mut beats = Vec::new();
    let mut now = Duration::ZERO;
    while now < ms(1000) {
        now = w.poll_timeout().expect("a heartbeat is always timed");
        w.handle_timeout(now);
        for m in driver_msgs(&transmits(&mut w)) {
            assert_eq!(
                m,
                ToDriver::Heartbeat {
                    incarnation: Incarnation(5)
                }
            );
            beats.push(now);
        }
    }
    assert_eq!(beats, vec![ms(250), ms(500), ms(750), ms(1000)]);

    // The configuration may override the driver's interval.
    let mut cfg = config();
    cfg.heartbeat = Some(ms(100));
    let w = joined(cfg);
    assert_eq!(w.poll_timeout(), Some(ms(100)));
}

#[test]
fn finished_tasks_are_batched_into_one_done() {
    let mut w = joined(config());
    run(
        &mut w,
        ms(1),
        (50..53).map(|i| task(i, vec![value(i)])).collect(),
    );
    assert_eq!(starts(&mut w).len(), 3);
    w.handle_task_finished(ms(2), TaskId(50), ms(1), Ok(vec![1]));
    // Due at once, but sent only when the shell's timer runs: tasks finishing meanwhile
    // join the batch.
    assert_eq!(w.poll_timeout(), Some(ms(2)));
    assert!(transmits(&mut w).is_empty());
    w.handle_task_finished(ms(2), TaskId(51), ms(1), Ok(vec![2; 2000]));
    w.handle_task_finished(ms(2), TaskId(52), ms(1), Err(panicked(52)));
    w.handle_timeout(ms(2));
    let msgs = driver_msgs(&transmits(&mut w));
    assert_eq!(msgs.len(), 1, "one Done for three tasks");
    let ToDriver::Done { tasks, .. } = &msgs[0] else {
        panic!("expected a Done, got {:?}", msgs[0]);
    };
    let outcomes: Vec<_> = tasks.iter().map(|t| (t.task, &t.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            (TaskId(50), &Outcome::Value(vec![1])),
            (TaskId(51), &Outcome::Stored { size: 2000 }),
            (TaskId(52), &Outcome::Failed(panicked(52))),
        ]
    );
    assert_eq!(tasks[0].run_ns, 1_000_000);
    assert_eq!(
        w.poll_timeout(),
        Some(ms(250)),
        "only the heartbeat is timed"
    );

    // A full batch goes out at once.
    let mut cfg = config();
    cfg.done_batch_max = 2;
    let mut w = joined(cfg);
    run(
        &mut w,
        ms(1),
        (60..62).map(|i| task(i, vec![value(i)])).collect(),
    );
    starts(&mut w);
    w.handle_task_finished(ms(2), TaskId(60), ms(1), Ok(vec![1]));
    assert!(transmits(&mut w).is_empty());
    w.handle_task_finished(ms(2), TaskId(61), ms(1), Ok(vec![1]));
    assert!(matches!(
        &driver_msgs(&transmits(&mut w))[..],
        [ToDriver::Done { tasks, .. }] if tasks.len() == 2
    ));
}

#[test]
fn a_quiet_task_is_reported_late_unless_another_report_goes_first_or_it_failed() {
    let mut cfg = config();
    cfg.quiet_delay = ms(3);
    let mut w = joined(cfg);
    let quiet = |id: u64| RunTask {
        quiet: true,
        ..task(id, vec![value(id)])
    };
    run(
        &mut w,
        ms(1),
        vec![quiet(70), quiet(71), task(72, vec![value(72)])],
    );
    assert_eq!(starts(&mut w).len(), 3);
    w.handle_task_finished(ms(2), TaskId(70), ms(1), Ok(vec![1]));
    assert_eq!(w.poll_timeout(), Some(ms(5)), "due a quiet delay later");
    w.handle_timeout(ms(4));
    assert!(transmits(&mut w).is_empty(), "sent before its time");
    let done: Vec<_> = flush_done(&mut w, ms(5)).iter().map(|d| d.task).collect();
    assert_eq!(done, vec![TaskId(70)]);

    // An ordinary report makes the batch due at once, and the quiet one rides along.
    w.handle_task_finished(ms(6), TaskId(71), ms(1), Ok(vec![2]));
    w.handle_task_finished(ms(6), TaskId(72), ms(1), Ok(vec![3]));
    assert_eq!(w.poll_timeout(), Some(ms(6)));
    let done: Vec<_> = flush_done(&mut w, ms(6)).iter().map(|d| d.task).collect();
    assert_eq!(done, vec![TaskId(71), TaskId(72)]);

    // A quiet task that failed is reported at once.
    run(&mut w, ms(7), vec![quiet(73)]);
    starts(&mut w);
    w.handle_task_finished(ms(8), TaskId(73), ms(1), Err(panicked(73)));
    assert_eq!(w.poll_timeout(), Some(ms(8)));
}

fn panicked(t: u64) -> TaskError {
    TaskError::Panicked {
        task: TaskId(t),
        func: "f".into(),
        message: "boom".into(),
    }
}

/// The one answer a peer's want of chunk `c` got on `l`.
fn answer_on(w: &mut Worker, l: LinkKey, c: u64) -> ChunkPayload {
    match &peer_msgs(&transmits(w), l)[..] {
        [PeerMsg::Chunk { chunk, payload }] if *chunk == ChunkId(c) => payload.clone(),
        other => panic!("expected one answer for chunk {c}, got {other:?}"),
    }
}

/// A want that arrives after the task producing the chunk failed here is answered "gone"
/// (final), as a want that waited for it is, not "missing" (which the asker would ask again
/// for seconds). The memory ends with a release, a new run of the task, or when newer
/// failures push it out.
#[test]
fn a_want_after_the_producer_failed_here_is_answered_gone() {
    let mut c = config();
    c.failed_chunks_kept = 2;
    let mut w = joined(c);
    let l = LinkKey(9);
    inbound(&mut w, ms(1), 3, l);
    let gone = ChunkPayload::Gone(MoveFailure::SourceFailed);

    // Task 50 panics; task 51 cannot get its input.
    run(&mut w, ms(1), vec![task(51, vec![chunk_arg(7, &[4])])]);
    let l4 = LinkKey(10);
    link_up(&mut w, ms(2), 4, l4);
    run(&mut w, ms(2), vec![task(50, vec![value(1)])]);
    assert_eq!(starts(&mut w).len(), 1);
    w.handle_task_finished(ms(2), TaskId(50), ms(1), Err(panicked(50)));
    let _ = transmits(&mut w);
    let lost = PeerMsg::Chunk {
        chunk: ChunkId(7),
        payload: ChunkPayload::Gone(MoveFailure::SourceFailed),
    };
    peer_msg(&mut w, ms(3), l4, lost);
    let _ = transmits(&mut w);
    for c in [50, 51] {
        peer_msg(&mut w, ms(4), l, PeerMsg::Want(ChunkId(c)));
        assert_eq!(answer_on(&mut w, l, c), gone, "chunk {c}");
    }
    // The driver fetching it is told the same.
    w.handle_driver_msg(ms(4), over_wire(&ToWorker::Fetch(ChunkId(50))));
    assert!(matches!(
        &driver_msgs(&transmits(&mut w))[..],
        [ToDriver::ChunkData {
            data: Err(MoveFailure::SourceFailed),
            ..
        }]
    ));

    // Released: forgotten.
    w.handle_driver_msg(ms(5), over_wire(&ToWorker::Release(vec![ChunkId(51)])));
    peer_msg(&mut w, ms(5), l, PeerMsg::Want(ChunkId(51)));
    assert!(matches!(answer_on(&mut w, l, 51), ChunkPayload::Missing(_)));

    // Run again here: the want waits for the new run.
    run(&mut w, ms(6), vec![task(50, vec![value(1)])]);
    assert_eq!(starts(&mut w).len(), 1);
    peer_msg(&mut w, ms(6), l, PeerMsg::Want(ChunkId(50)));
    assert!(
        transmits(&mut w).is_empty(),
        "the peer waits for the new run"
    );
    w.handle_task_finished(ms(7), TaskId(50), ms(1), Ok(vec![5; 10]));
    assert_eq!(answer_on(&mut w, l, 50), ChunkPayload::Bytes(vec![5; 10]));

    // At most two are remembered: the oldest of three failures is forgotten.
    for t in 60..63 {
        run(&mut w, ms(8), vec![task(t, vec![value(1)])]);
        starts(&mut w);
        w.handle_task_finished(ms(8), TaskId(t), ms(1), Err(panicked(t)));
    }
    let _ = transmits(&mut w);
    peer_msg(&mut w, ms(9), l, PeerMsg::Want(ChunkId(60)));
    assert!(matches!(answer_on(&mut w, l, 60), ChunkPayload::Missing(_)));
    for c in [61, 62] {
        peer_msg(&mut w, ms(9), l, PeerMsg::Want(ChunkId(c)));
        assert_eq!(answer_on(&mut w, l, c), gone, "chunk {c}");
    }
}

#[test]
fn release_drops_only_ready_chunks() {
    let mut w = joined(config());
    run(&mut w, ms(1), vec![task(70, vec![value(1)])]);
    run(&mut w, ms(1), vec![task(71, vec![value(1)])]);
    starts(&mut w);
    w.handle_task_finished(ms(2), TaskId(70), ms(1), Ok(vec![1; 5000]));
    assert!(w.holds(ChunkId(70)));
    assert!(w.is_coming(ChunkId(71)));
    let l = LinkKey(3);
    inbound(&mut w, ms(2), 3, l);
    peer_msg(&mut w, ms(2), l, PeerMsg::Want(ChunkId(71)));
    w.handle_driver_msg(
        ms(3),
        over_wire(&ToWorker::Release(vec![ChunkId(70), ChunkId(71)])),
    );
    assert!(!w.holds(ChunkId(70)));
    assert!(
        w.is_coming(ChunkId(71)),
        "a chunk still coming is not dropped"
    );
    transmits(&mut w);
    // The peer waiting for it still gets it.
    w.handle_task_finished(ms(4), TaskId(71), ms(1), Ok(vec![2; 5000]));
    let msgs = peer_msgs(&transmits(&mut w), l);
    assert!(matches!(
        &msgs[..],
        [PeerMsg::Chunk { chunk: ChunkId(71), payload: ChunkPayload::Bytes(b) }] if b.len() == 5000
    ));
    // And a fetch of the released one is answered "not held".
    w.handle_driver_msg(ms(5), over_wire(&ToWorker::Fetch(ChunkId(70))));
    assert!(matches!(
        &driver_msgs(&transmits(&mut w))[..],
        [ToDriver::ChunkData {
            data: Err(MoveFailure::NotHeld { worker: ME }),
            ..
        }]
    ));
}

/// Produces chunk 80 of `len` bytes and has peer `peer` want it on an inbound link.
fn serve_to(w: &mut Worker, peer: u32, len: usize) -> LinkKey {
    run(w, ms(1), vec![task(80, vec![value(1)])]);
    starts(w);
    w.handle_task_finished(ms(2), TaskId(80), ms(1), Ok(vec![3; len]));
    flush_done(w, ms(2));
    let l = LinkKey(u64::from(peer) + 100);
    inbound(w, ms(2), peer, l);
    peer_msg(w, ms(3), l, PeerMsg::Want(ChunkId(80)));
    l
}

#[test]
fn a_large_chunk_to_a_peer_on_this_host_goes_through_shared_memory() {
    let big = 64 * 1024;
    let mut w = joined(config());
    let l = serve_to(&mut w, 2, big);
    assert!(transmits(&mut w).is_empty(), "not inline");
    let acts = actions(&mut w);
    let [Action::WriteShm(write)] = &acts[..] else {
        panic!("expected one shared-memory write, got {acts:?}");
    };
    assert_eq!(write.peer, WorkerId(2));
    assert_eq!(write.route, Route::Link(l));
    assert_eq!(write.chunk, ChunkId(80));
    assert!(!write.push);
    assert_eq!(write.bytes.len(), big);
    // The shell wrote it into a segment: the answer names the segment.
    let payload = ChunkPayload::Segment {
        name: "dagger-1-2-3".into(),
        size: 1 << 20,
        len: big as u64,
    };
    w.handle_shm_written(ms(4), write.clone(), Ok(payload.clone()));
    assert_eq!(
        peer_msgs(&transmits(&mut w), l),
        vec![PeerMsg::Chunk {
            chunk: ChunkId(80),
            payload
        }]
    );
    // A failed write falls back to the link.
    w.handle_shm_written(ms(5), write.clone(), Err("no space".into()));
    assert!(matches!(
        &peer_msgs(&transmits(&mut w), l)[..],
        [PeerMsg::Chunk { payload: ChunkPayload::Bytes(b), .. }] if b.len() == big
    ));
}

/// A large chunk sent over a link is handed out as a frame head and the chunk's bytes as
/// the store holds them (for the link to write without copying them into the frame); a
/// small one as one frame. Either way the frame is the chunk's `PeerMsg::Chunk`.
#[test]
fn a_large_inline_chunk_goes_as_a_head_and_the_stored_bytes() {
    for (len, tail) in [(1 << 20, true), (100, false)] {
        let mut w = joined(config());
        let l = serve_to(&mut w, 3, len);
        let ts = transmits(&mut w);
        let [t] = &ts[..] else {
            panic!("expected one frame, got {ts:?}");
        };
        assert_eq!(t.to, Dest::Link(l));
        let (head, rest) = t.clone().into_parts();
        assert_eq!(rest.is_some(), tail, "a chunk of {len} bytes");
        let mut frame = head.clone();
        if let Some(rest) = &rest {
            assert_eq!(rest.as_ref(), &vec![3u8; len][..]);
            assert!(head.len() < 32, "the head is only the header");
            frame.extend_from_slice(rest.as_ref());
        }
        assert_eq!(frame, t.clone().into_frame());
        assert_eq!(
            wire::decode::<PeerMsg>(&frame).unwrap(),
            PeerMsg::Chunk {
                chunk: ChunkId(80),
                payload: ChunkPayload::Bytes(vec![3; len])
            }
        );
    }
}

#[test]
fn small_chunks_other_hosts_and_shm_off_go_inline() {
    let inline = |w: &mut Worker, peer: u32, len: usize| {
        let l = serve_to(w, peer, len);
        assert!(
            !actions(w).iter().any(|a| matches!(a, Action::WriteShm(_))),
            "no shared memory"
        );
        let msgs = peer_msgs(&transmits(w), l);
        assert!(matches!(
            &msgs[..],
            [PeerMsg::Chunk { payload: ChunkPayload::Bytes(b), .. }] if b.len() == len
        ));
    };
    // Same host, below the threshold.
    inline(&mut joined(config()), 2, 64 * 1024 - 1);
    // Large, another host.
    inline(&mut joined(config()), 3, 1 << 20);
    // Large, same host, shortcut off.
    let mut cfg = config();
    cfg.shm = false;
    inline(&mut joined(cfg), 2, 1 << 20);
}

#[test]
fn replicas_are_pulled_and_kept_and_lent_segments_are_not_kept() {
    let mut w = joined(config());
    run(&mut w, ms(1), vec![task(90, vec![value(1)])]);
    starts(&mut w);
    w.handle_task_finished(ms(2), TaskId(90), ms(1), Ok(vec![9; 100]));
    flush_done(&mut w, ms(2));
    // A copy asked of a worker that already holds the chunk is there at once.
    w.handle_driver_msg(
        ms(3),
        over_wire(&ToWorker::Replicate {
            chunk: ChunkId(90),
            from: vec![WorkerId(3)],
        }),
    );
    assert_eq!(
        driver_msgs(&transmits(&mut w)),
        vec![ToDriver::Replicated {
            incarnation: Incarnation(5),
            chunk: ChunkId(90),
            result: Ok(()),
        }]
    );
    assert!(actions(&mut w).is_empty(), "nothing asked of anyone");

    // A chunk held elsewhere is asked of its holder, kept once it is here, and reported.
    w.handle_driver_msg(
        ms(3),
        over_wire(&ToWorker::Replicate {
            chunk: ChunkId(95),
            from: vec![ME, WorkerId(3)],
        }),
    );
    assert!(driver_msgs(&transmits(&mut w)).is_empty(), "not yet here");
    assert_eq!(
        link_up(&mut w, ms(3), 3, LinkKey(1)),
        vec![PeerMsg::Want(ChunkId(95))]
    );
    assert!(w.is_coming(ChunkId(95)));
    peer_msg(
        &mut w,
        ms(4),
        LinkKey(1),
        PeerMsg::Chunk {
            chunk: ChunkId(95),
            payload: ChunkPayload::Bytes(vec![5; 100]),
        },
    );
    assert!(w.holds(ChunkId(95)));
    assert_eq!(
        driver_msgs(&transmits(&mut w)),
        vec![ToDriver::Replicated {
            incarnation: Incarnation(5),
            chunk: ChunkId(95),
            result: Ok(()),
        }]
    );

    // A copy whose only holder leaves is reported failed, and nothing is kept.
    w.handle_driver_msg(
        ms(5),
        over_wire(&ToWorker::Replicate {
            chunk: ChunkId(96),
            from: vec![WorkerId(3)],
        }),
    );
    assert_eq!(
        peer_msgs(&transmits(&mut w), LinkKey(1)),
        vec![PeerMsg::Want(ChunkId(96))]
    );
    w.handle_driver_msg(ms(6), over_wire(&ToWorker::PeerLeft(WorkerId(3))));
    assert_eq!(
        driver_msgs(&transmits(&mut w)),
        vec![ToDriver::Replicated {
            incarnation: Incarnation(5),
            chunk: ChunkId(96),
            result: Err(MoveFailure::PeerLeft {
                worker: WorkerId(3)
            }),
        }]
    );
    assert!(!w.holds(ChunkId(96)) && !w.is_coming(ChunkId(96)));

    // A push received is kept; a segment a peer lends is read by the shell, not kept.
    let l = LinkKey(7);
    inbound(&mut w, ms(4), 2, l);
    peer_msg(
        &mut w,
        ms(4),
        l,
        PeerMsg::Push {
            chunk: ChunkId(91),
            payload: ChunkPayload::Bytes(vec![1]),
        },
    );
    assert!(w.holds(ChunkId(91)));
    run(&mut w, ms(5), vec![task(92, vec![chunk_arg(93, &[2])])]);
    link_up(&mut w, ms(5), 2, LinkKey(8));
    let seg = ChunkPayload::Segment {
        name: "dagger-9-2-0-seg-1".into(),
        size: 1 << 20,
        len: 70_000,
    };
    peer_msg(
        &mut w,
        ms(6),
        LinkKey(8),
        PeerMsg::Chunk {
            chunk: ChunkId(93),
            payload: seg.clone(),
        },
    );
    let acts = actions(&mut w);
    assert!(matches!(
        &acts[..],
        [Action::ReadShm { from: WorkerId(2), chunk: ChunkId(93), push: false, payload }] if *payload == seg
    ));
    w.handle_chunk_received(ms(6), ChunkId(93), false, Ok(vec![0; 70_000]));
    assert_eq!(starts(&mut w).len(), 1);
    assert!(!w.holds(ChunkId(93)));
    // Handing a segment back goes to its lender; one returned to us is the shell's.
    w.handle_segment_released(ms(7), WorkerId(2), "dagger-9-2-0-seg-1".into());
    assert_eq!(
        peer_msgs(&transmits(&mut w), LinkKey(8)),
        vec![PeerMsg::SegmentDone("dagger-9-2-0-seg-1".into())]
    );
    peer_msg(&mut w, ms(7), l, PeerMsg::SegmentDone("mine".into()));
    assert!(matches!(
        &actions(&mut w)[..],
        [Action::SegmentReturned { peer: WorkerId(2), name }] if name == "mine"
    ));
}

#[test]
fn an_answer_too_large_for_its_link_tells_the_requester() {
    let mut w = joined(config());
    let l = serve_to(&mut w, 3, 10);
    let ts = transmits(&mut w);
    assert_eq!(ts[0].chunk, Some(ChunkId(80)));
    w.handle_send_too_large(ms(4), ts[0].to, ChunkId(80), 2048, 1024);
    assert_eq!(
        peer_msgs(&transmits(&mut w), l),
        vec![PeerMsg::Chunk {
            chunk: ChunkId(80),
            payload: ChunkPayload::Gone(MoveFailure::TooLarge {
                bytes: 2048,
                limit: 1024
            })
        }]
    );
}

#[test]
fn a_peer_of_another_build_is_refused_unless_mixing_is_allowed() {
    let mut c = config();
    c.build_id = 7;
    let mut w = joined(c);
    let mut hello = Hello {
        version: PROTOCOL_VERSION,
        registry_hash: REGISTRY,
        worker: WorkerId(3),
        incarnation: Incarnation(0),
        build_id: 8,
        allow_mixed_builds: false,
    };
    assert!(matches!(
        w.handle_inbound_link(ms(1), LinkKey(1), &hello),
        Err(PeerRefused::Build { ours: 7, theirs: 8 })
    ));
    hello.allow_mixed_builds = true;
    assert_eq!(
        w.handle_inbound_link(ms(1), LinkKey(2), &hello),
        Ok(WorkerId(3))
    );
}

#[test]
fn watched_tasks_report_started_before_they_run_and_others_do_not() {
    let mut w = joined(config());
    // An unwatched task: no message to the driver before it runs.
    run(&mut w, ms(1), vec![task(1, vec![value(1)])]);
    assert!(driver_msgs(&transmits(&mut w)).is_empty());
    assert_eq!(starts(&mut w).len(), 1);
    // Two watched tasks starting together: one Started, queued before their starts (the
    // shell sends frames before it starts jobs), and a watched task that waits for an
    // input reports only when it starts.
    let mut a = task(2, vec![value(2)]);
    a.watch = true;
    let mut b = task(3, vec![value(3)]);
    b.watch = true;
    let mut c = task(4, vec![chunk_arg(9, &[2])]);
    c.watch = true;
    run(&mut w, ms(2), vec![a, b, c]);
    let msgs = driver_msgs(&transmits(&mut w));
    assert_eq!(
        msgs,
        vec![ToDriver::Started {
            incarnation: Incarnation(5),
            tasks: vec![TaskId(2), TaskId(3)],
        }]
    );
    assert_eq!(starts(&mut w).len(), 2);
    w.handle_chunk_received(ms(3), ChunkId(9), false, Ok(vec![1, 2, 3]));
    let msgs = driver_msgs(&transmits(&mut w));
    assert_eq!(
        msgs,
        vec![ToDriver::Started {
            incarnation: Incarnation(5),
            tasks: vec![TaskId(4)],
        }]
    );
    assert_eq!(starts(&mut w).len(), 1);
}

#[test]
fn a_gathered_argument_starts_once_every_part_is_here_as_one_encoded_vec() {
    let mut w = joined(config());
    // A part produced here.
    run(&mut w, ms(1), vec![task(10, vec![value(1)])]);
    assert_eq!(starts(&mut w).len(), 1);
    w.handle_task_finished(ms(2), TaskId(10), ms(1), Ok(wire::encode(&100u64)));
    let gather = RunArg::Gather(vec![
        RunPart::Chunk {
            chunk: ChunkId(20),
            from: vec![WorkerId(3)],
        },
        RunPart::Value(wire::encode(&7u64)),
        RunPart::Chunk {
            chunk: ChunkId(10),
            from: vec![ME],
        },
    ]);
    run(
        &mut w,
        ms(3),
        vec![task(11, vec![value(5), gather, RunArg::Gather(vec![])])],
    );
    assert_eq!(w.running_tasks(), 0, "one part is on a peer");
    assert_eq!(w.waiting_tasks(), 1);
    let l3 = LinkKey(1);
    assert_eq!(
        link_up(&mut w, ms(3), 3, l3),
        vec![PeerMsg::Want(ChunkId(20))]
    );
    peer_msg(
        &mut w,
        ms(4),
        l3,
        PeerMsg::Chunk {
            chunk: ChunkId(20),
            payload: ChunkPayload::Bytes(wire::encode(&300u64)),
        },
    );
    let s = starts(&mut w);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].task, TaskId(11));
    assert_eq!(
        s[0].args,
        vec![
            wire::encode(&5u64),
            wire::encode(&vec![300u64, 7, 100]),
            wire::encode(&Vec::<u64>::new()),
        ]
    );
    assert_eq!(
        wire::decode::<Vec<u64>>(&s[0].args[1]).unwrap(),
        vec![300, 7, 100]
    );
}

/// A chain of tasks waiting here for each other's results (the scheduler dispatched them
/// ahead of their inputs): each starts as soon as the one before finishes, with no word
/// from the driver; and a failure at its head fails the whole chain, however long, in a
/// loop rather than a recursion as deep as the chain.
#[test]
fn a_local_chain_starts_hop_by_hop_and_fails_whole_without_recursing() {
    let n = 20_000u64;
    let mut w = joined(config());
    let mut batch = vec![task(1, vec![value(0)])];
    batch.extend((2..=n).map(|k| task(k, vec![chunk_arg(k - 1, &[ME.0])])));
    run(&mut w, ms(1), batch);
    let s = starts(&mut w);
    assert_eq!(
        s.iter().map(|s| s.task).collect::<Vec<_>>(),
        vec![TaskId(1)]
    );
    assert!(transmits(&mut w).is_empty(), "nothing asked of anyone");
    assert_eq!(w.waiting_tasks(), n as usize - 1);

    w.handle_task_finished(ms(2), TaskId(1), ms(1), Ok(wire::encode(&1u64)));
    let s = starts(&mut w);
    assert_eq!(
        s.iter().map(|s| s.task).collect::<Vec<_>>(),
        vec![TaskId(2)]
    );
    assert_eq!(s[0].args, vec![wire::encode(&1u64)]);

    w.handle_task_finished(ms(3), TaskId(2), ms(1), Err(panicked(2)));
    assert!(starts(&mut w).is_empty());
    assert_eq!(w.waiting_tasks(), 0);
    let done = flush_done(&mut w, ms(3));
    assert_eq!(done.len(), n as usize);
    let failed = done
        .iter()
        .filter(|d| matches!(d.outcome, wire::Outcome::Failed(_)))
        .count();
    assert_eq!(failed, n as usize - 1, "task 2 and every task after it");
}
