//! A simulated cluster of the real cores: one `DriverCore` and several `WorkerState`s
//! joined by a virtual network in virtual time, running random task graphs while workers
//! are killed, paused and partitioned, links close, new workers join and workers are
//! removed by draining them (stopped or kept, with or without a deadline, racing with
//! their own loss or that of the workers they hand over to). Every message goes
//! through the real encoder; after every step the scheduler's invariants and the agreement
//! of the scheduler with the workers' stores are checked; at the end every task must have
//! ended with exactly the value (or the typed error) computed directly from its graph.
//!
//! `DAGGER_SIM_SEEDS` sets the number of seeds, `DAGGER_SIM_SEED` the first one; a failing
//! seed is printed with the command that replays it (`cargo xtask chaos --seeds 1 --seed N`).

mod sim {
    pub mod cluster;
    pub mod graph;
}

use sim::cluster::{Sim, Totals};
use std::time::Instant;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

#[test]
fn random_graphs_on_a_faulty_cluster() {
    // The invariant check after every step is O(tasks): an unoptimised build runs fewer
    // seeds by default (`cargo xtask chaos` builds in release mode).
    let seeds = env("DAGGER_SIM_SEEDS").unwrap_or(if cfg!(debug_assertions) { 30 } else { 200 });
    let first = env("DAGGER_SIM_SEED").unwrap_or(1);
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    for seed in first..first + seeds {
        match Sim::new(seed).run() {
            Ok(outcome) => totals.add(&outcome.totals),
            Err(report) => {
                eprintln!("{report}");
                failures.push(seed);
            }
        }
    }
    let t = totals;
    eprintln!(
        "{seeds} seed(s) from {first} in {:.1}s: {} tasks, {} executions, {} stored results fetched {} times; \
         {} kills, {} pauses ({} past the heartbeat timeout), {} partitions, {} links cut, {} joins; \
         {} workers lost ({} silent), {} retries, {} stale frames fenced, {} frames lost with their link; \
         {} retry budgets spent (in {} of {} passing seeds), {} tasks without a processor; \
         {} poison crashes, {} poison tasks poisoned, {} other tasks poisoned, {} restarts ({} refused), {} clean leaves, \
         {} flaky panics, {} workers excluded ({} flaky); \
         {} drains ({} refused as stranding): {} drained ({} kept, {} chunks handed over), {} past their deadline, \
         {} hand-overs failed, {} lost while draining; {} drained workers killed at once, {} destinations killed; \
         {} kept workers killed ({} then alone holding a result); \
         {} timelines checked ({} task spans); {} events, {:.0}s virtual",
        started.elapsed().as_secs_f64(),
        t.tasks,
        t.executions,
        t.stored,
        t.fetches,
        t.kills,
        t.pauses,
        t.long_pauses,
        t.partitions,
        t.link_cuts,
        t.joins,
        t.lost,
        t.silent,
        t.retries,
        t.fenced_frames,
        t.lost_frames,
        t.budget_exhausted,
        t.seeds_budget_spent,
        t.seeds,
        t.no_processor,
        t.poison_crashes,
        t.poisoned,
        t.innocent_poisoned,
        t.restarts,
        t.restarts_refused,
        t.leaves,
        t.flaky_panics,
        t.excluded,
        t.excluded_flaky,
        t.drains,
        t.drains_stranding,
        t.drained,
        t.drained_kept,
        t.handed_over,
        t.drain_deadlines,
        t.drain_handover_failed,
        t.drain_lost,
        t.drain_race_kills,
        t.handover_dest_kills,
        t.kept_killed,
        t.kept_killed_sole,
        t.timelines_checked,
        t.spans_checked,
        t.events,
        t.virtual_ms as f64 / 1000.0,
    );
    assert!(
        failures.is_empty(),
        "{} seed(s) failed: {failures:?} (replay one with `cargo xtask chaos --seeds 1 --seed N`)",
        failures.len()
    );
}

// ---------------------------------------------------------------------------------------
// The smallest scenarios of the bugs the simulation found, on the driver core alone (each
// failed before its fix).

mod scenario {
    use dagger_core::wire::{self, Outcome, RunTask, TaskDone, ToDriver, ToWorker};
    use dagger_core::{
        Arg, Incarnation, LostReason, MemorySpace, Options, ProcId, ProcInfo, ProcKind, Scope,
        TaskError, TaskId, TaskSpec, WorkerId, WorkerInfo,
    };
    use dagger_runtime::driver::{DriverConfig, DriverCore, DriverEvent, Joined, LinkId};
    use dagger_sched::{Completion, Scheduler};
    use std::time::Duration;

    pub type Core = DriverCore<u64>;

    pub fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    pub fn core() -> Core {
        let config = dagger_sched::Config {
            inline_limit: 12,
            ..dagger_sched::Config::default()
        };
        let dconfig = DriverConfig {
            shm_shortcuts: false,
            ..DriverConfig::default()
        };
        DriverCore::new(Scheduler::new(config), dconfig)
    }

    pub fn join(c: &mut Core, now: Duration, link: u64) -> Joined {
        let id = WorkerId(0);
        let root = ProcId::root(id);
        let info = WorkerInfo {
            worker: id,
            incarnation: Incarnation(0),
            host: format!("host-{link}"),
            pid: 100 + link as u32,
            name: String::new(),
            peer_addr: Some(format!("sim:{link}")),
            procs: vec![
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
            ],
        };
        c.handle_join(now, LinkId(link), info, false).unwrap()
    }

    pub fn spec(id: u64, deps: &[u64], scope: Option<WorkerId>) -> TaskSpec {
        let mut args = vec![Arg::Value(wire::encode(&id))];
        args.extend(deps.iter().map(|&d| Arg::Task(TaskId(d))));
        let mut options = Options::new();
        if let Some(w) = scope {
            options = options.scope(Scope::worker(w));
        }
        TaskSpec {
            id: TaskId(id),
            func: "sum".into(),
            args,
            options,
        }
    }

    /// Every frame out, decoded, with its link; and every event.
    pub fn drain(c: &mut Core) -> (Vec<(LinkId, ToWorker)>, Vec<DriverEvent<u64>>) {
        let mut frames = Vec::new();
        while let Some(t) = c.poll_transmit() {
            frames.push((t.link, wire::decode::<ToWorker>(&t.frame).unwrap()));
        }
        (frames, std::iter::from_fn(|| c.poll_event()).collect())
    }

    pub fn runs(frames: &[(LinkId, ToWorker)]) -> Vec<(LinkId, RunTask)> {
        let mut v = Vec::new();
        for (l, m) in frames {
            if let ToWorker::Run(ts) = m {
                v.extend(ts.iter().map(|t| (*l, t.clone())));
            }
        }
        v
    }

    /// Reports `t` done on `link` with `outcome`, through the encoder.
    pub fn done(
        c: &mut Core,
        now: Duration,
        link: LinkId,
        inc: Incarnation,
        t: &RunTask,
        outcome: Outcome,
    ) {
        let msg = ToDriver::Done {
            incarnation: inc,
            tasks: vec![TaskDone {
                task: t.task,
                proc: t.proc,
                run_ns: 1000,
                started_ns: 0,
                outcome,
            }],
            moves: Vec::new(),
            sent_ns: 0,
        };
        c.handle_message(now, link, wire::decode(&wire::encode(&msg)).unwrap());
    }

    pub fn closed() -> LostReason {
        LostReason::LinkClosed {
            detail: "connection closed".into(),
        }
    }

    pub fn completions(evs: &[DriverEvent<u64>]) -> Vec<(TaskId, Result<Completion, TaskError>)> {
        evs.iter()
            .filter_map(|e| match e {
                DriverEvent::Complete { task, result, .. } => Some((*task, result.clone())),
                _ => None,
            })
            .collect()
    }
}

/// A fetch waiting on the worker that holds a result must survive that worker's loss: the
/// result is recomputed from lineage and the fetch answered from the new holder.
#[test]
fn a_fetch_outlives_the_loss_of_the_holder_it_asked() {
    use dagger_core::wire::{self, Outcome, ToDriver, ToWorker};
    use dagger_runtime::driver::DriverEvent;
    use scenario::*;

    let mut c = core();
    let a = join(&mut c, ms(0), 1);
    let b = join(&mut c, ms(0), 2);
    c.handle_submit(ms(1), [(spec(1, &[], None), Some(1))]);
    let (frames, _) = drain(&mut c);
    let (link, t) = runs(&frames).pop().expect("task 1 is placed");
    let (inc, other) = if link.0 == 1 {
        (a.incarnation, 2)
    } else {
        (b.incarnation, 1)
    };
    done(&mut c, ms(2), link, inc, &t, Outcome::Stored { size: 22 });
    let (_, evs) = drain(&mut c);
    assert!(matches!(
        &completions(&evs)[..],
        [(_, Ok(dagger_sched::Completion::Stored { .. }))]
    ));

    let fetch = c.handle_fetch(ms(3), t.task.chunk(), vec![c.worker_on(link).unwrap().0]);
    let (frames, _) = drain(&mut c);
    assert!(frames
        .iter()
        .any(|(l, m)| *l == link && *m == ToWorker::Fetch(t.task.chunk())));

    // The holder is lost before it answers: the result is recomputed on the other worker.
    c.handle_link_closed(ms(4), link, closed());
    let (frames, evs) = drain(&mut c);
    for e in &evs {
        if let DriverEvent::FetchDone { fetch: f, result } = e {
            assert_eq!(*f, fetch);
            panic!("the fetch failed although the result can be recomputed: {result:?}");
        }
    }
    let rerun = runs(&frames);
    assert_eq!(rerun.len(), 1, "task 1 runs again");
    assert_eq!(rerun[0].0 .0, other);

    // The recomputed result is fetched from its new holder.
    let (link2, t2) = &rerun[0];
    let inc2 = if other == 1 {
        a.incarnation
    } else {
        b.incarnation
    };
    done(
        &mut c,
        ms(5),
        *link2,
        inc2,
        t2,
        Outcome::Stored { size: 22 },
    );
    let (frames, _) = drain(&mut c);
    assert!(
        frames
            .iter()
            .any(|(l, m)| l == link2 && *m == ToWorker::Fetch(t.task.chunk())),
        "the fetch asks the new holder: {frames:?}"
    );
    let bytes = vec![7u8; 22];
    let msg = ToDriver::ChunkData {
        incarnation: inc2,
        chunk: t.task.chunk(),
        data: Ok(wire::ByteBuf::from(bytes.clone())),
    };
    c.handle_message(ms(6), *link2, wire::decode(&wire::encode(&msg)).unwrap());
    let (_, evs) = drain(&mut c);
    assert_eq!(
        evs,
        vec![DriverEvent::FetchDone {
            fetch,
            result: Ok(bytes)
        }]
    );
}

/// A result lost after an input of it failed (its recomputation failed) cannot be
/// recomputed: a task that needs it must fail, not wait forever.
#[test]
fn a_result_whose_input_cannot_be_recomputed_fails_its_consumers() {
    use dagger_core::wire::Outcome;
    use dagger_runtime::driver::LinkId;
    use scenario::*;

    let mut c = core();
    let a = join(&mut c, ms(0), 1);
    let b = join(&mut c, ms(0), 2);
    // Task 1 pinned to A, task 2 (its consumer) pinned to B; both results large.
    c.handle_submit(
        ms(1),
        [
            (spec(1, &[], Some(a.worker)), Some(1)),
            (spec(2, &[1], Some(b.worker)), Some(2)),
        ],
    );
    let (frames, _) = drain(&mut c);
    let placed = runs(&frames);
    assert_eq!(
        placed.len(),
        2,
        "both are dispatched (task 2 before its input exists)"
    );
    for (link, t) in placed {
        let inc = if link.0 == 1 {
            a.incarnation
        } else {
            b.incarnation
        };
        done(&mut c, ms(2), link, inc, &t, Outcome::Stored { size: 22 });
    }
    let (_, evs) = drain(&mut c);
    let ok = completions(&evs).iter().filter(|(_, r)| r.is_ok()).count();
    assert_eq!(ok, 2, "tasks 1 and 2 succeed: {evs:?}");
    // A is lost: task 1 (still wanted by the client) cannot run again (its scope's worker
    // is gone). Then B is lost: task 2 (wanted too) must be recomputed, from task 1.
    c.handle_link_closed(ms(4), LinkId(1), closed());
    drain(&mut c);
    let _c2 = join(&mut c, ms(5), 3);
    c.handle_link_closed(ms(6), LinkId(2), closed());
    drain(&mut c);
    // A new task needs task 2: it must end (with an error), not wait forever.
    c.handle_submit(ms(7), [(spec(3, &[2], None), Some(3))]);
    let mut ended = false;
    for k in 8..100 {
        c.handle_timeout(ms(k * 100));
        let (_, evs) = drain(&mut c);
        ended |= completions(&evs)
            .iter()
            .any(|(t, _)| *t == dagger_core::TaskId(3));
    }
    assert!(
        ended,
        "task 3 never completed: it waits behind task 2, which waits behind failed task 1"
    );
}

/// A task failed while it ran (its input's recomputation failed) still finishes on its
/// worker, which keeps its result: the scheduler must release that copy.
#[test]
fn the_result_of_a_task_failed_while_it_ran_is_released() {
    use dagger_core::wire::{Outcome, ToWorker};
    use dagger_runtime::driver::LinkId;
    use scenario::*;

    let mut c = core();
    let a = join(&mut c, ms(0), 1);
    let b = join(&mut c, ms(0), 2);
    c.handle_submit(
        ms(1),
        [
            (spec(1, &[], Some(a.worker)), Some(1)),
            (spec(2, &[1], Some(b.worker)), Some(2)),
        ],
    );
    let (frames, _) = drain(&mut c);
    let mut t2 = None;
    for (link, t) in runs(&frames) {
        if link.0 == 1 {
            done(
                &mut c,
                ms(2),
                link,
                a.incarnation,
                &t,
                Outcome::Stored { size: 22 },
            );
        } else {
            t2 = Some(t);
        }
    }
    let (frames, _) = drain(&mut c);
    let t2 = t2
        .or_else(|| runs(&frames).into_iter().map(|(_, t)| t).next())
        .expect("task 2 is dispatched to B");
    // A is lost while task 2 runs on B: task 1 cannot be recomputed, task 2 is failed.
    c.handle_link_closed(ms(3), LinkId(1), closed());
    let (_, evs) = drain(&mut c);
    assert!(
        completions(&evs).iter().any(|(t, r)| *t == t2.task
            && matches!(r, Err(dagger_core::TaskError::DependencyFailed { .. }))),
        "task 2 fails with its input: {evs:?}"
    );
    // B finishes task 2 anyway and keeps its (small) result.
    done(
        &mut c,
        ms(4),
        LinkId(2),
        b.incarnation,
        &t2,
        Outcome::Value(vec![1, 0]),
    );
    for t in 1..=2 {
        c.handle_release(ms(5), dagger_core::TaskId(t));
    }
    let mut released = false;
    for k in 6..20 {
        c.handle_timeout(ms(k * 10));
        let (frames, _) = drain(&mut c);
        released |= frames.iter().any(|(l, m)| {
            l.0 == 2 && matches!(m, ToWorker::Release(cs) if cs.contains(&t2.task.chunk()))
        });
    }
    assert!(released, "B keeps task 2's result forever");
}
