//! Placement between a CPU and a device version of one task: the scheduler picks the
//! processor kind by the run time it learned for the function on each kind plus the cost
//! of moving the inputs there.

mod common;

use common::*;
use dagger_core::wire::{self, Outcome, TaskDone};
use dagger_core::{Options, ProcId, ProcKind, Scope, WorkerId};
use dagger_sched::{Config, Scheduler};

const OPENCL: &str = "opencl";

/// Worker 1: a root, one CPU thread (index 1) and one OpenCL device (index 2).
fn cluster() -> Scheduler {
    let mut s = Scheduler::new(Config::default());
    s.worker_joined(ms(0), worker(1, 1, 1, &[OPENCL]));
    drain(&mut s);
    s
}

const THREAD: ProcId = ProcId {
    worker: WorkerId(1),
    index: 1,
};
const DEVICE: ProcId = ProcId {
    worker: WorkerId(1),
    index: 2,
};

/// Runs one task of `func` on `proc` and reports that it took `run_ms`.
fn teach(s: &mut Scheduler, id: u64, func: &str, proc: ProcId, run_ms: u64) {
    s.submit(
        ms(id),
        vec![spec(
            id,
            func,
            vec![],
            Options::new().scope(Scope::Proc(proc)),
        )],
    )
    .unwrap();
    let run = runs(&drain(s));
    assert_eq!(run.len(), 1);
    assert_eq!(run[0].1.proc, proc);
    report(
        s,
        ms(id),
        WorkerId(1),
        1,
        TaskDone {
            task: run[0].1.task,
            proc,
            run_ns: run_ms * 1_000_000,
            started_ns: 0,
            outcome: Outcome::Value(wire::encode(&0u64)),
        },
    );
    drain(s);
}

/// Where a task of `func` that may run on the CPU or the device goes.
fn placed(s: &mut Scheduler, id: u64, func: &str) -> ProcId {
    let either = Scope::Kind(ProcKind::THREAD).or(Scope::Kind(ProcKind::custom(OPENCL)));
    s.submit(
        ms(id),
        vec![spec(id, func, vec![], Options::new().scope(either))],
    )
    .unwrap();
    let run = runs(&drain(s));
    assert_eq!(run.len(), 1);
    run[0].1.proc
}

#[test]
fn the_kind_with_the_shorter_learned_run_time_gets_the_task() {
    let mut s = cluster();
    // `saxpy` is fast on the device, `branchy` on the CPU.
    teach(&mut s, 1, "saxpy", THREAD, 40);
    teach(&mut s, 2, "saxpy", DEVICE, 2);
    teach(&mut s, 3, "branchy", THREAD, 2);
    teach(&mut s, 4, "branchy", DEVICE, 40);
    assert_eq!(placed(&mut s, 10, "saxpy"), DEVICE);
    assert_eq!(placed(&mut s, 11, "branchy"), THREAD);
}

#[test]
fn a_device_a_little_faster_loses_to_the_cost_of_moving_a_large_input_there() {
    let mut s = cluster();
    teach(&mut s, 1, "saxpy", THREAD, 5);
    teach(&mut s, 2, "saxpy", DEVICE, 4);
    // The device is 1 ms faster, but the 256 MiB input is in worker 1's host memory:
    // reaching the device costs a copy over the host-device link (tens of ms at the
    // default 10 GB/s), reaching a CPU thread costs nothing.
    s.submit(
        ms(3),
        vec![spec(
            3,
            "make",
            vec![],
            Options::new().scope(Scope::Proc(THREAD)),
        )],
    )
    .unwrap();
    let run = runs(&drain(&mut s));
    report(
        &mut s,
        ms(3),
        WorkerId(1),
        1,
        TaskDone {
            task: run[0].1.task,
            proc: THREAD,
            run_ns: 1_000,
            started_ns: 0,
            outcome: Outcome::Stored { size: 256 << 20 },
        },
    );
    drain(&mut s);
    let either = Scope::Kind(ProcKind::THREAD).or(Scope::Kind(ProcKind::custom(OPENCL)));
    s.submit(
        ms(4),
        vec![spec(
            4,
            "saxpy",
            vec![dagger_core::Arg::Task(dagger_core::TaskId(3))],
            Options::new().scope(either),
        )],
    )
    .unwrap();
    let run = runs(&drain(&mut s));
    assert_eq!(run.len(), 1);
    assert_eq!(run[0].1.proc, THREAD);
}
