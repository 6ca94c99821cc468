//! Bounded dispatch ("saturation"): a processor is sent another task only while it is not
//! saturated; the other ready tasks wait in the scheduler for room or for a new worker.
//! Virtual time only, no timing assertions.

mod common;

use common::*;
use dagger_core::wire::{Outcome, RunTask, TaskDone};
use dagger_core::{Arg, ExitCause, LostReason, Options, ProcId, Scope, TaskId, WorkerId};
use dagger_sched::{Command, Config, Scheduler};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

fn done(rt: &RunTask, run_ns: u64) -> TaskDone {
    TaskDone {
        task: rt.task,
        proc: rt.proc,
        run_ns,
        started_ns: 0,
        outcome: Outcome::Value(vec![1]),
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

fn tasks(ids: std::ops::Range<u64>, func: &str, options: Options) -> Vec<dagger_core::TaskSpec> {
    ids.map(|i| spec(i, func, vec![val(i)], options.clone()))
        .collect()
}

fn per_proc(r: &[(WorkerId, RunTask)]) -> BTreeMap<ProcId, usize> {
    let mut m = BTreeMap::new();
    for (_, rt) in r {
        *m.entry(rt.proc).or_default() += 1;
    }
    m
}

fn check(s: &Scheduler) {
    s.check_invariants().expect("consistent");
}

#[test]
fn never_measured_tasks_are_dispatched_min_depth_per_processor() {
    let mut s = pool(&[1, 2], 2);
    s.submit(ms(1), tasks(0..200, "sleep", Options::new()))
        .unwrap();
    let r = runs(&drain(&mut s));
    check(&s);
    let depth = Config::default().min_depth as usize;
    let m = per_proc(&r);
    assert_eq!(m.len(), 4, "every processor has work: {m:?}");
    assert!(m.values().all(|&n| n == depth), "{m:?}");
    assert_eq!(s.stats().ready, 200 - 4 * depth as u64);
    assert_eq!(s.stats().running, 4 * depth as u64);

    // A finished task (now measured at 50 ms: far above the horizon) makes room for
    // exactly one more, on the same processor.
    let (w, first) = r[0].clone();
    s.task_done(
        ms(51),
        w,
        dagger_core::Incarnation(1),
        done(&first, 50_000_000),
    );
    let r2 = runs(&drain(&mut s));
    check(&s);
    assert_eq!(r2.len(), 1);
    assert_eq!(r2[0].1.proc, first.proc);
}

#[test]
fn tasks_measured_as_short_are_dispatched_thousands_at_a_time() {
    let mut s = pool(&[1, 2], 2);
    s.submit(ms(1), tasks(0..10_000, "inc", Options::new()))
        .unwrap();
    let first = runs(&drain(&mut s));
    assert_eq!(first.len(), 8);
    for (w, rt) in &first {
        s.task_done(ms(2), *w, dagger_core::Incarnation(1), done(rt, 1_000));
    }
    // One schedule call: every remaining task fits under the horizon (5,000 of 1 µs per
    // processor).
    let mut sent = 0;
    let mut calls = 0;
    while let Some(c) = s.poll_command() {
        if let Command::Send {
            msg: dagger_core::wire::ToWorker::Run(ts),
            ..
        } = c
        {
            sent += ts.len();
        }
        calls += 1;
    }
    check(&s);
    assert!(calls > 0);
    assert_eq!(sent, 10_000 - 8);
    assert_eq!(s.stats().running, 10_000 - 8);
}

#[test]
fn a_joining_worker_gets_held_tasks_in_the_same_call() {
    let mut s = pool(&[1], 2);
    s.submit(ms(1), tasks(0..100, "sleep", Options::new()))
        .unwrap();
    assert_eq!(runs(&drain(&mut s)).len(), 4);
    s.worker_joined(ms(5), worker(2, 1, 2, &[]));
    let r = runs(&drain(&mut s));
    check(&s);
    assert_eq!(r.len(), 4, "{r:?}");
    assert!(r.iter().all(|(w, _)| *w == WorkerId(2)));
    // The oldest held tasks go first.
    let ids: Vec<u64> = r.iter().map(|(_, rt)| rt.task.0).collect();
    assert_eq!(ids, vec![4, 5, 6, 7]);
}

/// A worker of a processor-by-processor simulation: each processor runs its dispatched
/// tasks in order, each for `run`.
struct Sim {
    s: Scheduler,
    now: Duration,
    run: Duration,
    queues: BTreeMap<ProcId, VecDeque<RunTask>>,
    /// The running task of each busy processor finishes at this time.
    busy: BTreeMap<ProcId, Duration>,
    done_by: BTreeMap<WorkerId, usize>,
}

impl Sim {
    fn pump(&mut self) {
        for (_, rt) in runs(&drain(&mut self.s)) {
            self.queues.entry(rt.proc).or_default().push_back(rt);
        }
        check(&self.s);
        for (p, q) in &self.queues {
            if !q.is_empty() && !self.busy.contains_key(p) {
                self.busy.insert(*p, self.now + self.run);
            }
        }
    }

    fn next_finish(&self) -> Option<(Duration, ProcId)> {
        self.busy.iter().map(|(p, t)| (*t, *p)).min()
    }

    /// Runs until `until` (or until nothing runs).
    fn run_until(&mut self, until: Duration) {
        while let Some((t, p)) = self.next_finish() {
            if t > until {
                break;
            }
            self.now = t;
            self.busy.remove(&p);
            let rt = self.queues.get_mut(&p).and_then(|q| q.pop_front()).unwrap();
            let run_ns = self.run.as_nanos() as u64;
            self.s
                .task_done(t, p.worker, dagger_core::Incarnation(1), done(&rt, run_ns));
            *self.done_by.entry(p.worker).or_default() += 1;
            self.pump();
        }
        self.now = self.now.max(until);
    }

    fn kill(&mut self, w: u32) {
        let w = WorkerId(w);
        self.queues.retain(|p, _| p.worker != w);
        self.busy.retain(|p, _| p.worker != w);
        let reason = LostReason::ProcessExited {
            pid: 1,
            exit: ExitCause::Signal(9),
        };
        self.s.worker_lost(self.now, w, reason);
        self.pump();
    }
}

#[test]
fn a_replacement_worker_takes_half_of_what_remains() {
    // The W5 shape: 200 tasks of 50 ms on two workers of two processors; one worker is
    // killed at 30% and a replacement joins 20 ms later.
    let run = ms(50);
    let mut sim = Sim {
        s: pool(&[1, 2], 2),
        now: ms(0),
        run,
        queues: BTreeMap::new(),
        busy: BTreeMap::new(),
        done_by: BTreeMap::new(),
    };
    sim.s
        .submit(ms(0), tasks(0..200, "sleep", Options::new()))
        .unwrap();
    sim.pump();
    sim.run_until(ms(760)); // 15 rounds of 4 tasks: 30%
    let finished = sim.s.stats().finished;
    assert_eq!(finished, 60);
    sim.kill(2);
    sim.run_until(sim.now + ms(20));
    sim.s.worker_joined(sim.now, worker(3, 1, 2, &[]));
    sim.pump();
    assert!(
        sim.busy.keys().any(|p| p.worker == WorkerId(3)),
        "the replacement starts at its join"
    );
    let remaining = 200 - sim.s.stats().finished as usize;
    sim.run_until(Duration::from_secs(3600));
    let st = sim.s.stats();
    assert_eq!((st.finished, st.ready, st.running), (200, 0, 0));
    let by3 = sim.done_by.get(&WorkerId(3)).copied().unwrap_or(0);
    assert!(
        by3 * 10 >= remaining * 4 && by3 * 10 <= remaining * 6,
        "the replacement ran {by3} of the {remaining} remaining tasks"
    );
}

#[test]
fn pinned_tasks_are_never_held_back() {
    let mut s = pool(&[1, 2], 1);
    // Unpinned tasks fill both processors to the bound...
    s.submit(ms(1), tasks(0..20, "sleep", Options::new()))
        .unwrap();
    let r = runs(&drain(&mut s));
    assert_eq!(r.len(), 4);
    // ... but tasks pinned to one worker, a chain across both, all go at once.
    let mut chain = Vec::new();
    for k in 0..10u64 {
        let w = WorkerId(1 + (k % 2) as u32);
        let args = if k == 0 {
            vec![val(0)]
        } else {
            vec![Arg::Task(TaskId(100 + k - 1))]
        };
        chain.push(spec(
            100 + k,
            "inc",
            args,
            Options::new().scope(Scope::worker(w)),
        ));
    }
    s.submit(ms(2), chain).unwrap();
    let r = runs(&drain(&mut s));
    check(&s);
    let ids: Vec<u64> = r.iter().map(|(_, rt)| rt.task.0).collect();
    assert_eq!(ids.len(), 10, "{ids:?}");
    assert!(ids.iter().all(|&i| i >= 100));
    assert_eq!(s.stats().ready, 16);
}

#[test]
fn a_held_task_does_not_overtake_a_higher_priority_one() {
    let mut s = pool(&[1], 1);
    // Two fillers saturate the one processor.
    s.submit(ms(0), tasks(0..2, "sleep", Options::new()))
        .unwrap();
    let fillers = runs(&drain(&mut s));
    assert_eq!(fillers.len(), 2);
    // Held back in this order: low-priority ones first, a high-priority one later, and one
    // of another scope (sharing the processor) later still; one more waits for a filler.
    s.submit(
        ms(1),
        vec![
            spec(10, "sleep", vec![], Options::new()),
            spec(11, "sleep", vec![], Options::new()),
            spec(12, "sleep", vec![], Options::new().priority(5)),
            spec(
                13,
                "sleep",
                vec![],
                Options::new().priority(7).scope(Scope::kind("thread")),
            ),
            spec(
                14,
                "sleep",
                vec![Arg::Task(TaskId(0))],
                Options::new().priority(9),
            ),
        ],
    )
    .unwrap();
    assert!(runs(&drain(&mut s)).is_empty());
    check(&s);
    let mut order = Vec::new();
    let mut running: VecDeque<(WorkerId, RunTask)> = fillers.into_iter().collect();
    let mut now = 1;
    while let Some((w, rt)) = running.pop_front() {
        now += 50;
        s.task_done(
            ms(now),
            w,
            dagger_core::Incarnation(1),
            done(&rt, 50_000_000),
        );
        for x in runs(&drain(&mut s)) {
            order.push(x.1.task.0);
            running.push_back(x);
        }
        check(&s);
    }
    // Task 14 becomes ready when filler 0 finishes, in the same call that frees room.
    assert_eq!(order, vec![14, 13, 12, 10, 11]);
}

#[test]
fn held_tasks_are_not_looked_at_on_every_event() {
    let mut s = pool(&[1, 2], 2);
    let n = 200_000u64;
    s.submit(ms(0), tasks(0..n, "sleep", Options::new()))
        .unwrap();
    let mut running: VecDeque<(WorkerId, RunTask)> = runs(&drain(&mut s)).into_iter().collect();
    assert_eq!(running.len(), 8);
    let before = s.stats().placements;
    let events = 1_000u64;
    for k in 0..events {
        let (w, rt) = running.pop_front().unwrap();
        s.task_done(
            ms(k + 1),
            w,
            dagger_core::Incarnation(1),
            done(&rt, 50_000_000),
        );
        running.extend(runs(&drain(&mut s)));
    }
    let st = s.stats();
    assert_eq!(
        (st.finished, st.running, st.ready),
        (events, 8, n - events - 8)
    );
    // Each event dispatches one task and finds the next one without room: two placements,
    // not one per held task.
    assert!(
        st.placements - before <= 2 * events,
        "{} placements for {events} events",
        st.placements - before
    );
}

/// Held-back tasks go in submission order, not in the order they became ready: a step of
/// a reduction whose inputs just finished goes before the leaves submitted after it, so
/// a graph spawned whole is worked through as it was built and its intermediate results
/// are consumed (and released) early.
#[test]
fn held_back_tasks_go_in_submission_order_not_readiness_order() {
    let config = Config {
        dispatch_ahead: false,
        ..Config::default()
    };
    let mut s = Scheduler::new(config);
    s.worker_joined(ms(0), worker(1, 1, 1, &[]));
    drain(&mut s);
    // Two leaves, their sum, then eight more leaves.
    let mut graph = tasks(0..2, "leaf", Options::new());
    graph.push(spec(
        2,
        "add",
        vec![Arg::Task(TaskId(0)), Arg::Task(TaskId(1))],
        Options::new(),
    ));
    graph.extend(tasks(3..11, "leaf", Options::new()));
    s.submit(ms(1), graph).unwrap();
    let first = runs(&drain(&mut s));
    check(&s);
    let ids = |r: &[(WorkerId, RunTask)]| r.iter().map(|(_, t)| t.task.0).collect::<Vec<_>>();
    // Never measured: `min_depth` (2) on the one processor.
    assert_eq!(ids(&first), vec![0, 1]);
    // Each report is measured long (50 ms, past the horizon): one more task each time.
    let (w, t0) = first[0].clone();
    report(
        &mut s,
        ms(60),
        w,
        1,
        TaskDone {
            run_ns: 50_000_000,
            ..value_done(&t0, 1)
        },
    );
    let next = runs(&drain(&mut s));
    assert_eq!(ids(&next), vec![3], "the first leaf held back");
    let (w, t1) = first[1].clone();
    report(
        &mut s,
        ms(120),
        w,
        1,
        TaskDone {
            run_ns: 50_000_000,
            ..value_done(&t1, 2)
        },
    );
    let next = runs(&drain(&mut s));
    check(&s);
    assert_eq!(
        ids(&next),
        vec![2],
        "the sum, ready only now, goes before the leaves submitted after it"
    );
}
