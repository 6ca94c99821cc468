//! Hostile peers against the driver core and the worker core: random programs of
//! well-formed but lying messages (results for unknown tasks or stale incarnations,
//! chunks never asked for, replicas that do not exist, a second join, absurd sizes,
//! durations and counts) and damaged frames, mixed with honest traffic. Nothing may
//! panic; the driver's scheduler must pass its bookkeeping recount after every input,
//! and each client slot and fetch is answered at most once.
//!
//! Runs `DAGGER_FUZZ_CASES` programs per core (default 2000); the same programs run under
//! cargo-fuzz (`fuzz/fuzz_targets/cores.rs`).

#[path = "support/hostile.rs"]
mod hostile;
#[path = "../../dagger-core/tests/support/wire_fuzz.rs"]
mod wire_fuzz;

use arbitrary::Unstructured;
use dagger_core::wire::{self, PeerInfo, ToWorker};
use dagger_core::{Incarnation, WorkerId};
use dagger_runtime::worker::{WorkerConfig, WorkerState};
use proptest::prelude::*;
use std::time::Duration;

fn cases() -> u32 {
    std::env::var("DAGGER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn driver_core_survives_hostile_workers(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = hostile::drive_driver(&mut Unstructured::new(&data));
    }

    #[test]
    fn worker_core_survives_a_hostile_driver_and_peers(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = hostile::drive_worker(&mut Unstructured::new(&data));
    }
}

/// A welcome whose heartbeat interval is absurd (it comes from the network) does not
/// overflow the worker's timer arithmetic.
#[test]
fn an_absurd_heartbeat_interval_does_not_overflow() {
    for heartbeat in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
        let mut w = WorkerState::<Vec<u8>>::new(WorkerConfig::new("h", 1));
        let welcome = ToWorker::Welcome {
            worker: WorkerId(1),
            incarnation: Incarnation(1),
            peers: vec![PeerInfo {
                worker: WorkerId(2),
                incarnation: Incarnation(1),
                addr: "a".into(),
                host: "h".into(),
            }],
            heartbeat,
            log_filter: String::new(),
        };
        let welcome: ToWorker = wire::decode(&wire::encode(&welcome)).expect("decodes");
        w.handle_driver_msg(Duration::from_secs(10), welcome);
        assert!(w.is_joined());
        let next = w.poll_timeout().expect("a heartbeat is timed");
        assert!(next >= Duration::from_secs(10));
        w.handle_timeout(Duration::from_secs(20));
        w.handle_timeout(next);
    }
}

/// A worker that reports an absurd run time cannot make the scheduler's estimates
/// saturate and place the next task on a processor of a worker that is gone.
#[test]
fn an_absurd_run_time_does_not_send_tasks_to_a_lost_worker() {
    use dagger_core::wire::{Outcome, TaskDone, ToDriver};
    use dagger_core::{Arg, LostReason, Options, TaskId, TaskSpec};
    use dagger_runtime::driver::{DriverConfig, DriverCore, LinkId};

    let mut core: DriverCore<()> = DriverCore::new(
        dagger_sched::Scheduler::new(dagger_sched::Config::default()),
        DriverConfig::default(),
    );
    let info = |pid| {
        let mut u = Unstructured::new(&[]);
        let mut info = wire_fuzz::worker_info(&mut u).expect("an empty info");
        info.pid = pid;
        info.procs = hostile::honest_procs();
        info
    };
    let spec = |id| TaskSpec {
        id: TaskId(id),
        func: "f".into(),
        args: vec![Arg::Value(wire::encode(&1u64))],
        options: Options::default(),
    };
    let ms = Duration::from_millis;
    // The first worker's processors take the first slots, then it is lost.
    core.handle_join(ms(0), LinkId(1), info(1), false)
        .expect("joins");
    core.handle_submit(ms(0), [(spec(100), None)]);
    while core.poll_transmit().is_some() {}
    let lost = LostReason::LinkClosed {
        detail: "gone".into(),
    };
    core.handle_link_closed(ms(1), LinkId(1), lost);
    // The second claims a single processor, its root, of the kind the tasks run on (as
    // the fuzzer found it): every candidate then has the learned run time.
    let mut only_root = info(2);
    only_root.procs.truncate(1);
    only_root.procs[0].kind = dagger_core::ProcKind::THREAD;
    let second = core
        .handle_join(ms(2), LinkId(2), only_root, false)
        .expect("joins");
    core.handle_submit(ms(3), [(spec(1), None)]);
    core.flush();
    let runs = |core: &mut DriverCore<()>| {
        let mut n = 0;
        while let Some(t) = core.poll_transmit() {
            if let Ok(ToWorker::Run(tasks)) = wire::decode(&t.frame) {
                assert_eq!(t.worker, second.worker);
                n += tasks.len();
            }
        }
        while core.poll_event().is_some() {}
        n
    };
    assert_eq!(runs(&mut core), 2, "task 100 again, and task 1");
    let done = ToDriver::Done {
        incarnation: second.incarnation,
        tasks: vec![TaskDone {
            task: TaskId(1),
            proc: dagger_core::ProcId::root(second.worker),
            run_ns: u64::MAX,
            started_ns: 0,
            outcome: Outcome::Value(wire::encode(&2u64)),
        }],
        moves: Vec::new(),
        sent_ns: 0,
    };
    core.handle_message(ms(4), LinkId(2), done);
    core.handle_submit(ms(5), [(spec(2), None), (spec(3), None)]);
    // Task 100 still runs there, so the bounded dispatch sends one of the two now.
    assert_eq!(runs(&mut core), 1, "the next task goes to the live worker");
    core.scheduler().check_invariants().expect("consistent");
}
