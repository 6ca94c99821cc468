//! The supervisor of local worker processes, over real worker processes linked by QUIC: a
//! worker process that dies (SIGKILL, a crash under its memory limit, or a kill by the
//! context after it went silent) is replaced by a new process that joins as a new worker
//! and gets work; without replacements the survivors carry on; a crash loop ends when the
//! restart budget is spent, with a typed event, and tasks nothing can run then fail with a
//! typed error.
//!
//! No test asserts a duration: events and results are awaited with long bounds that only
//! turn a hang into a failure. Tasks that must not finish before the test has seen
//! something wait for a gate file the test creates.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;
use dagger::{ClusterEvent, ClusterEvents, ExitCause, LostReason, SchedulerConfig};
use serde::de::DeserializeOwned;
use std::path::Path;
use std::time::Duration;

mod support;
use support::TempDir;

/// How long an event or a result may take before the test calls it lost. Far longer than
/// any run needs: it only turns "never happens" into a failure.
const GUARD: Duration = Duration::from_secs(120);

/// Leaves a marker that a task started in this process (`dir/pid-<pid>`), then waits until
/// the test creates `dir/open`.
fn mark_and_wait_for_gate(dir: &str) {
    let dir = Path::new(dir);
    std::fs::write(dir.join(format!("pid-{}", std::process::id())), b"").expect("marker written");
    while !dir.join("open").exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `i * i`, once the gate is open.
#[dagger::task]
fn gated_square(i: u64, dir: String) -> u64 {
    mark_and_wait_for_gate(&dir);
    std::thread::sleep(Duration::from_millis(20));
    i * i
}

/// `x`, and the worker that ran this.
#[dagger::task]
fn tag(x: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(20));
    (x, dagger::current_worker().0)
}

#[dagger::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// On its first attempt (no `dir/attempted` yet), allocates and touches memory until the
/// process's allocation fails under its memory limit, which aborts the process. On a later
/// attempt returns 42.
#[dagger::task]
fn hog_on_first_attempt(dir: String) -> u64 {
    let marker = Path::new(&dir).join("attempted");
    if !marker.exists() {
        std::fs::write(&marker, b"").expect("attempt marker written");
        let mut held: Vec<Vec<u8>> = Vec::new();
        loop {
            // Written, not only reserved: the pages are really used.
            held.push(vec![1u8; 32 << 20]);
            std::hint::black_box(&held);
        }
    }
    42
}

/// Allocates and touches memory until the process's allocation fails under its memory
/// limit, which aborts the process: on every worker, every time.
#[dagger::task]
fn hog_always() -> u64 {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(vec![1u8; 32 << 20]);
        std::hint::black_box(&held);
    }
}

/// Waits until a task started in process `pid` (it left `dir/pid-<pid>`).
fn wait_for_start_in(dir: &TempDir, pid: u32) {
    dir.wait_for(&format!("pid-{pid}"), GUARD);
}

/// The events of a context, with every one received so far kept.
struct Events {
    rx: ClusterEvents,
    rt: tokio::runtime::Runtime,
    seen: Vec<ClusterEvent>,
}

impl Events {
    fn new(ctx: &Context) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Self {
            rx: ctx.subscribe(),
            rt,
            seen: Vec::new(),
        }
    }

    /// The next event that `want` accepts (returning what it extracts), failing the test if
    /// none comes.
    fn wait_for<T>(&mut self, what: &str, want: impl Fn(&ClusterEvent) -> Option<T>) -> T {
        loop {
            let next = self
                .rt
                .block_on(async { tokio::time::timeout(GUARD, self.rx.recv()).await });
            let e = match next {
                Ok(Some(e)) => e,
                Ok(None) => panic!(
                    "the event stream ended; still waiting for {what}: {:?}",
                    self.seen
                ),
                Err(_) => panic!("waited {GUARD:?} for {what} in vain: {:?}", self.seen),
            };
            self.seen.push(e.clone());
            if let Some(t) = want(&e) {
                return t;
            }
        }
    }

    /// Every event already delivered, kept with the others; returns them all.
    fn drain(&mut self) -> &[ClusterEvent] {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e);
        }
        &self.seen
    }

    fn fetch<T: DeserializeOwned + Send + 'static>(&self, h: &Handle<T>) -> T {
        self.rt
            .block_on(async { tokio::time::timeout(GUARD, h.clone()).await })
            .unwrap_or_else(|_| panic!("task {} never completed", h.id()))
            .unwrap_or_else(|e| panic!("task {} failed: {e}", h.id()))
    }
}

/// The process id of worker `w`, checked to be a local worker process.
fn pid_of(ctx: &Context, w: WorkerId) -> u32 {
    let pid = ctx.topology().worker(w).expect("worker in topology").pid;
    assert!(
        ctx.local_worker_pids().contains(&pid),
        "{w} is a local process"
    );
    pid
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: plain syscall on a child process id we started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// Two workers of one thread each; the worker holding `ws[0]` is the victim.
fn two_workers(respawn: bool) -> Context {
    Context::builder()
        .workers(2)
        .test_harness()
        .worker_threads(1)
        .respawn(respawn)
        .build()
        .unwrap()
}

/// After the replacement for `old_pid` was announced: it joins as a new worker, which is
/// the announced process. Returns the new worker.
fn expect_replacement(
    ctx: &Context,
    events: &mut Events,
    old_pid: u32,
    old_workers: &[WorkerId],
) -> WorkerId {
    let (new_pid, restarts) = events.wait_for("WorkerRestarted", |e| match e {
        ClusterEvent::WorkerRestarted {
            old_pid: o,
            new_pid,
            restarts,
        } if *o == old_pid => Some((*new_pid, *restarts)),
        _ => None,
    });
    assert_eq!(restarts, 1, "the first restart within the window");
    assert_ne!(new_pid, old_pid);
    let new = events.wait_for("the replacement's WorkerJoined", |e| match e {
        ClusterEvent::WorkerJoined { worker } => Some(*worker),
        _ => None,
    });
    assert!(!old_workers.contains(&new), "a new worker id: {new}");
    assert_eq!(ctx.topology().worker(new).expect("joined").pid, new_pid);
    let pids = ctx.local_worker_pids();
    assert!(
        pids.contains(&new_pid) && !pids.contains(&old_pid),
        "{pids:?}"
    );
    new
}

/// The handles of [`gated_graph`]: the squares, their tags and the sum.
type GatedGraph = (Vec<Handle<u64>>, Vec<Handle<(u64, u32)>>, Handle<u64>);

/// Spawns 40 gated squares, each tagged with the worker that ran its tag, and their sum.
fn gated_graph(ctx: &Context, dir: &TempDir) -> GatedGraph {
    let squares: Vec<_> = (0..40u64)
        .map(|i| gated_square::spawn(ctx, i, dir.arg()).unwrap())
        .collect();
    let tags: Vec<_> = squares
        .iter()
        .map(|s| tag::spawn(ctx, s).unwrap())
        .collect();
    let mut level = squares.clone();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|p| match p {
                [a, b] => add::spawn(ctx, a, b).unwrap(),
                [a] => a.clone(),
                _ => unreachable!(),
            })
            .collect();
    }
    (squares, tags, level.remove(0))
}

const SUM_OF_SQUARES: u64 = 39 * 40 * 79 / 6;

/// SIGKILL one of two workers while its task runs: it is lost (its process exit), a
/// replacement is started, joins as a new worker, and runs tasks of the same graph; every
/// result is right.
#[test]
fn a_killed_worker_is_replaced_and_the_replacement_gets_work() {
    dagger::init();
    let ctx = two_workers(true);
    let ws = ctx.workers();
    assert_eq!(ws.len(), 2);
    let victim = ws[0];
    let victim_pid = pid_of(&ctx, victim);
    let dir = TempDir::new("supervisor", "kill");
    let mut events = Events::new(&ctx);
    let (squares, tags, sum) = gated_graph(&ctx, &dir);

    wait_for_start_in(&dir, victim_pid);
    signal(victim_pid, libc::SIGKILL);
    let reason = events.wait_for("WorkerLost", |e| match e {
        ClusterEvent::WorkerLost { worker, reason } if *worker == victim => Some(reason.clone()),
        _ => None,
    });
    assert!(
        matches!(
            reason,
            LostReason::ProcessExited { pid, exit: ExitCause::Signal(libc::SIGKILL) }
                if pid == victim_pid
        ),
        "{reason:?}"
    );
    let new = expect_replacement(&ctx, &mut events, victim_pid, &ws);
    // Every square waited for the gate: the tags, which become ready only now, are
    // placed while the replacement is in the pool.
    dir.open_gate();

    assert_eq!(events.fetch(&sum), SUM_OF_SQUARES);
    let mut on_new = 0;
    for (i, (s, t)) in squares.iter().zip(&tags).enumerate() {
        let i = i as u64;
        assert_eq!(events.fetch(s), i * i);
        let (v, w) = events.fetch(t);
        assert_eq!(v, i * i);
        on_new += usize::from(w == new.0);
    }
    assert!(on_new > 0, "no task ran on the replacement {new}");
    assert!(ctx.workers().contains(&new));
}

/// Without replacements, the survivor runs everything and no restart is announced.
#[test]
fn without_respawn_the_survivor_carries_on_alone() {
    dagger::init();
    let ctx = two_workers(false);
    let ws = ctx.workers();
    let (victim, survivor) = (ws[0], ws[1]);
    let (victim_pid, survivor_pid) = (pid_of(&ctx, victim), pid_of(&ctx, survivor));
    let dir = TempDir::new("supervisor", "no-respawn");
    let mut events = Events::new(&ctx);
    let (squares, tags, sum) = gated_graph(&ctx, &dir);

    wait_for_start_in(&dir, victim_pid);
    signal(victim_pid, libc::SIGKILL);
    events.wait_for("WorkerLost", |e| match e {
        ClusterEvent::WorkerLost { worker, .. } if *worker == victim => Some(()),
        _ => None,
    });
    dir.open_gate();

    assert_eq!(events.fetch(&sum), SUM_OF_SQUARES);
    for (i, (s, t)) in squares.iter().zip(&tags).enumerate() {
        let i = i as u64;
        assert_eq!(events.fetch(s), i * i);
        assert_eq!(events.fetch(t), (i * i, survivor.0));
    }
    // A restart would have been announced in the step that handled the exit, before any
    // of the results above.
    let seen = events.drain();
    assert!(
        !seen.iter().any(|e| matches!(
            e,
            ClusterEvent::WorkerRestarted { .. } | ClusterEvent::RestartsExhausted { .. }
        )),
        "{seen:?}"
    );
    assert_eq!(ctx.workers(), vec![survivor]);
    assert_eq!(ctx.local_worker_pids(), vec![survivor_pid]);
}

/// A crash loop: with a budget of 2 restarts, the third death is not replaced and says so;
/// the remaining worker still runs tasks; once it is gone too, a task nothing can run fails
/// with a typed error.
#[test]
fn a_crash_loop_ends_when_the_restart_budget_is_spent() {
    dagger::init();
    let window = Duration::from_secs(3600);
    let ctx = Context::builder()
        .workers(2)
        .test_harness()
        .worker_threads(1)
        .restart_budget(2, window)
        .scheduler(SchedulerConfig {
            no_processor_grace: Some(Duration::from_millis(500)),
            ..SchedulerConfig::default()
        })
        .build()
        .unwrap();
    let mut events = Events::new(&ctx);
    // Kill a live local process (replacements too, joined or not) until one is not
    // replaced.
    let mut restarts_seen = Vec::new();
    let exhausted = loop {
        let pid = *ctx
            .local_worker_pids()
            .first()
            .expect("a live worker process");
        signal(pid, libc::SIGKILL);
        let answer = events.wait_for("the supervisor's answer", |e| match e {
            ClusterEvent::WorkerRestarted {
                old_pid, restarts, ..
            } if *old_pid == pid => Some(Ok(*restarts)),
            ClusterEvent::RestartsExhausted { pid: p, .. } if *p == pid => Some(Err(e.clone())),
            _ => None,
        });
        match answer {
            Ok(n) => restarts_seen.push(n),
            Err(e) => break (pid, e),
        }
        assert!(restarts_seen.len() <= 2, "more restarts than the budget");
    };
    assert_eq!(restarts_seen, vec![1, 2]);
    assert_eq!(
        exhausted.1,
        ClusterEvent::RestartsExhausted {
            pid: exhausted.0,
            restarts: 2,
            window
        }
    );
    // One process is left, and it works.
    let left = ctx.local_worker_pids();
    assert_eq!(left.len(), 1, "{left:?}");
    // It may be a replacement that has not joined yet.
    ctx.wait_for_workers(1, GUARD).unwrap();
    let h = add::spawn(&ctx, 20, 22).unwrap();
    assert_eq!(events.fetch(&h), 42);
    // The last one dies too: not replaced either, and a task nothing can run fails with a
    // typed error, not a hang.
    signal(left[0], libc::SIGKILL);
    events.wait_for("RestartsExhausted for the last process", |e| match e {
        ClusterEvent::RestartsExhausted {
            pid, restarts: 2, ..
        } if *pid == left[0] => Some(()),
        _ => None,
    });
    assert!(ctx.local_worker_pids().is_empty());
    let h = add::spawn(&ctx, 1, 2).unwrap();
    let outcome = events
        .rt
        .block_on(async { tokio::time::timeout(GUARD, h.clone()).await })
        .expect("the task ends");
    assert!(
        matches!(outcome, Err(TaskError::NoProcessor { .. })),
        "{outcome:?}"
    );
}

/// A paused (SIGSTOPped) worker goes silent: it is declared lost for its silence, the
/// context kills the paused process (it is ours, and fenced), and its exit brings a
/// replacement; every result is right.
#[test]
fn a_paused_worker_is_declared_silent_killed_and_replaced() {
    dagger::init();
    let ctx = two_workers(true);
    let ws = ctx.workers();
    let victim = ws[0];
    let victim_pid = pid_of(&ctx, victim);
    let dir = TempDir::new("supervisor", "pause");
    let mut events = Events::new(&ctx);
    let (squares, tags, sum) = gated_graph(&ctx, &dir);

    wait_for_start_in(&dir, victim_pid);
    signal(victim_pid, libc::SIGSTOP);
    let reason = events.wait_for("WorkerLost", |e| match e {
        ClusterEvent::WorkerLost { worker, reason } if *worker == victim => Some(reason.clone()),
        _ => None,
    });
    assert!(matches!(reason, LostReason::Silent { .. }), "{reason:?}");
    // A paused process never exits by itself: the replacement comes only because the
    // context killed it.
    expect_replacement(&ctx, &mut events, victim_pid, &ws);
    dir.open_gate();

    assert_eq!(events.fetch(&sum), SUM_OF_SQUARES);
    for (i, (s, t)) in squares.iter().zip(&tags).enumerate() {
        let i = i as u64;
        assert_eq!(events.fetch(s), i * i);
        assert_eq!(events.fetch(t).0, i * i);
    }
}

/// A task that allocates past the workers' memory limit takes its process down (the
/// allocation fails and the process aborts); the task runs again elsewhere and returns its
/// value there, the process is replaced, and the cluster carries on.
#[test]
fn a_worker_over_its_memory_limit_aborts_and_its_task_runs_again() {
    dagger::init();
    let ctx = Context::builder()
        .workers(2)
        .test_harness()
        .worker_threads(1)
        .worker_memory_limit(1 << 30)
        .build()
        .unwrap();
    let ws = ctx.workers();
    let dir = TempDir::new("supervisor", "oom");
    let mut events = Events::new(&ctx);
    let hog = hog_on_first_attempt::spawn(&ctx, dir.arg()).unwrap();
    let after = add::spawn(&ctx, &hog, 1).unwrap();

    let (worker, pid, exit) = events.wait_for("WorkerLost", |e| match e {
        ClusterEvent::WorkerLost {
            worker,
            reason: LostReason::ProcessExited { pid, exit },
        } => Some((*worker, *pid, *exit)),
        ClusterEvent::WorkerLost { reason, .. } => panic!("lost for another reason: {reason:?}"),
        _ => None,
    });
    assert!(ws.contains(&worker));
    assert_eq!(
        exit,
        ExitCause::Signal(libc::SIGABRT),
        "a failed allocation aborts the process"
    );
    assert_eq!(events.fetch(&hog), 42);
    assert_eq!(events.fetch(&after), 43);
    let info = hog.info().expect("task info");
    assert_eq!(info.attempts, 2, "{info:?}");
    expect_replacement(&ctx, &mut events, pid, &ws);
    let more: Vec<_> = (0..8u64).map(|i| add::spawn(&ctx, i, i).unwrap()).collect();
    for (i, h) in more.iter().enumerate() {
        assert_eq!(events.fetch(h), 2 * i as u64);
    }
}

/// A task that runs out of memory on every worker is a poison task: after it took down two
/// worker processes (each replaced), it fails with `TaskError::Poisoned` naming both
/// crashes, its dependent fails with `DependencyFailed` naming it, and the cluster carries
/// on — it does not kill one worker after another.
#[test]
fn a_task_that_runs_out_of_memory_everywhere_is_a_poison_task() {
    dagger::init();
    let ctx = Context::builder()
        .workers(2)
        .test_harness()
        .worker_threads(1)
        .worker_memory_limit(1 << 30)
        .build()
        .unwrap();
    let mut events = Events::new(&ctx);
    let before = add::spawn(&ctx, 20, 22).unwrap();
    assert_eq!(events.fetch(&before), 42);
    let hog = hog_always::spawn(&ctx).unwrap();
    let after = add::spawn(&ctx, &hog, 1).unwrap();

    let err = events
        .rt
        .block_on(async { tokio::time::timeout(GUARD, hog.clone()).await })
        .expect("the poison task ends")
        .expect_err("a poison task has no value");
    let crashes = match &err {
        TaskError::Poisoned { task, crashes, .. } => {
            assert_eq!(*task, hog.id());
            crashes.clone()
        }
        other => panic!("expected Poisoned, got {other:?}"),
    };
    assert_eq!(crashes.len(), 2, "{crashes:?}");
    assert_ne!(crashes[0].0, crashes[1].0, "two different workers");
    for (_, reason) in &crashes {
        assert!(
            matches!(
                reason,
                LostReason::ProcessExited {
                    exit: ExitCause::Signal(libc::SIGABRT),
                    ..
                }
            ),
            "{reason:?}"
        );
    }
    match events
        .rt
        .block_on(async { tokio::time::timeout(GUARD, after.clone()).await })
        .expect("the dependent ends")
    {
        Err(TaskError::DependencyFailed { dependency, .. }) => assert_eq!(dependency, hog.id()),
        other => panic!("expected DependencyFailed, got {other:?}"),
    }
    // Exactly the two crashes: it was never run a third time, and no third worker was
    // taken down (the losses reach subscribers before the failures they cause).
    let info = ctx.task_info(hog.id()).expect("task info");
    assert_eq!(info.attempts, 2, "{info:?}");
    let lost = events
        .drain()
        .iter()
        .filter(|e| matches!(e, ClusterEvent::WorkerLost { .. }))
        .count();
    assert_eq!(lost, 2, "{:?}", events.seen);
    // The replacements carry on.
    let more: Vec<_> = (0..8u64).map(|i| add::spawn(&ctx, i, i).unwrap()).collect();
    for (i, h) in more.iter().enumerate() {
        assert_eq!(events.fetch(h), 2 * i as u64);
    }
}
