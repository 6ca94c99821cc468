//! Helpers shared by the scheduler's tests: worker descriptions, task specs, a command
//! drain that round-trips every message through the wire encoding.
#![allow(dead_code)]

use dagger_core::wire::{self, Outcome, RunTask, TaskDone, ToDriver, ToWorker};
use dagger_core::{
    Arg, Incarnation, MemorySpace, Options, ProcId, ProcInfo, ProcKind, TaskId, TaskSpec, WorkerId,
    WorkerInfo,
};
use dagger_sched::{Command, Scheduler};
use std::time::Duration;

/// A worker with a root and `threads` CPU thread processors, plus one processor of each
/// kind in `extra`.
pub fn worker(w: u32, inc: u32, threads: u32, extra: &[&'static str]) -> WorkerInfo {
    let id = WorkerId(w);
    let root = ProcId::root(id);
    let mut procs = vec![ProcInfo {
        id: root,
        kind: ProcKind::OS,
        parent: None,
        memory: MemorySpace::HOST,
        label: format!("os {w}"),
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
    for (k, kind) in extra.iter().enumerate() {
        procs.push(ProcInfo {
            id: ProcId::new(id, threads + 1 + k as u32),
            kind: ProcKind::custom(*kind),
            parent: Some(root),
            memory: MemorySpace::custom(*kind, k as u32),
            label: kind.to_string(),
            properties: Default::default(),
        });
    }
    let info = WorkerInfo {
        worker: id,
        incarnation: Incarnation(inc),
        host: "sim".into(),
        pid: 1000 + w,
        name: String::new(),
        peer_addr: None,
        procs,
    };
    // Joins travel over the wire too.
    match wire::decode::<ToDriver>(&wire::encode(&ToDriver::Join(info))).unwrap() {
        ToDriver::Join(i) => i,
        other => panic!("join decoded as {other:?}"),
    }
}

pub fn val(x: u64) -> Arg {
    Arg::Value(wire::encode(&x))
}

pub fn spec(id: u64, func: &str, args: Vec<Arg>, options: Options) -> TaskSpec {
    TaskSpec {
        id: TaskId(id),
        func: func.to_string().into(),
        args,
        options,
    }
}

pub fn t(d: Duration) -> Duration {
    d
}

/// Takes every command, sending each `Send` through encode/decode.
pub fn drain(s: &mut Scheduler) -> Vec<Command> {
    let mut v = Vec::new();
    while let Some(c) = s.poll_command() {
        v.push(match c {
            Command::Send { worker, msg } => {
                let back: ToWorker = wire::decode(&wire::encode(&msg)).unwrap();
                assert_eq!(back, msg);
                Command::Send { worker, msg: back }
            }
            other => other,
        });
    }
    v
}

/// The RunTasks among commands, with their destination.
pub fn runs(cmds: &[Command]) -> Vec<(WorkerId, RunTask)> {
    let mut v = Vec::new();
    for c in cmds {
        if let Command::Send {
            worker,
            msg: ToWorker::Run(ts),
        } = c
        {
            for t in ts {
                v.push((*worker, t.clone()));
            }
        }
    }
    v
}

/// Feeds a TaskDone through the wire encoding to the scheduler.
pub fn report(s: &mut Scheduler, now: Duration, w: WorkerId, inc: u32, done: TaskDone) {
    let msg = ToDriver::Done {
        incarnation: Incarnation(inc),
        tasks: vec![done],
        moves: Vec::new(),
        sent_ns: 0,
    };
    match wire::decode::<ToDriver>(&wire::encode(&msg)).unwrap() {
        ToDriver::Done {
            incarnation, tasks, ..
        } => {
            for d in tasks {
                s.task_done(now, w, incarnation, d);
            }
        }
        other => panic!("done decoded as {other:?}"),
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The report of `rt` having returned `v` inline after 1 µs.
pub fn value_done(rt: &RunTask, v: u64) -> TaskDone {
    TaskDone {
        task: rt.task,
        proc: rt.proc,
        run_ns: 1_000,
        started_ns: 0,
        outcome: Outcome::Value(wire::encode(&v)),
    }
}

/// The report of `rt` having stored a result of `size` bytes after 1 µs.
pub fn stored_done(rt: &RunTask, size: u64) -> TaskDone {
    TaskDone {
        task: rt.task,
        proc: rt.proc,
        run_ns: 1_000,
        started_ns: 0,
        outcome: Outcome::Stored { size },
    }
}
