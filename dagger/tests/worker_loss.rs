//! A worker process killed with SIGKILL while a graph runs: the driver notices (its own
//! watch of the child process reports the exit), the tasks that were on the killed worker
//! run again on a survivor, and every result is right.
//!
//! Each test makes sure that work really was on the victim when it died: task functions
//! that start in the victim's process leave a marker file and then never return, and the
//! test kills the victim only once such a marker exists. Those tasks can finish only by
//! being run again elsewhere — without recovery their handles would never complete (the
//! fetches below are bounded so that this shows as a failure, not a hang). The tests also
//! require the `WorkerLost` event, with the exact reason, and a `TaskRetried` event for
//! every task that was seen running on the victim.
//!
//! The supervisor's replacement of the killed process is off here (`respawn(false)`):
//! these tests are about recomputation on the survivors; `supervisor.rs` covers the
//! replacement.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;
use dagger::{ClusterEvent, ClusterEvents, ExitCause, LostReason};
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a result may take before the test calls it lost. Far longer than any run
/// needs: it only turns "never completes" into a failure.
const LIVENESS_LIMIT: Duration = Duration::from_secs(120);

/// In process `hold_pid`, records that task `i` started there (an empty file `dir/i`) and
/// blocks for good: the task ends only when its process is killed. Elsewhere returns at once.
fn hold_if_in(hold_pid: u32, dir: &str, i: u64) {
    if std::process::id() != hold_pid {
        return;
    }
    std::fs::write(Path::new(dir).join(i.to_string()), b"").expect("marker file written");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[dagger::task]
fn leaf(i: u64, hold_pid: u32, dir: String) -> (u64, u32) {
    // The first leaves may finish anywhere; the others never finish on the victim.
    if i >= 20 {
        hold_if_in(hold_pid, &dir, i);
    }
    std::thread::sleep(Duration::from_millis(20));
    (i, std::process::id())
}

#[dagger::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[dagger::task]
fn first(p: (u64, u32)) -> u64 {
    p.0
}

#[dagger::task]
fn slow_big(i: u64, hold_pid: u32, dir: String) -> serde_bytes::ByteBuf {
    hold_if_in(hold_pid, &dir, i);
    std::thread::sleep(Duration::from_millis(200));
    serde_bytes::ByteBuf::from(vec![i as u8; 256 * 1024])
}

#[dagger::task]
fn sum_big(b: serde_bytes::ByteBuf) -> u64 {
    b.iter().map(|&x| x as u64).sum()
}

/// A fresh, empty directory for marker files, removed on drop.
struct MarkerDir(PathBuf);

impl MarkerDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("dagger-worker-loss-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("marker directory created");
        Self(dir)
    }

    fn arg(&self) -> String {
        self.0.to_str().expect("temp dir is UTF-8").to_owned()
    }

    /// The tasks that left a marker so far.
    fn started(&self) -> BTreeSet<u64> {
        std::fs::read_dir(&self.0)
            .expect("marker directory readable")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Waits until at least one task left a marker; returns those that did.
    fn wait_for_a_start(&self) -> BTreeSet<u64> {
        let deadline = std::time::Instant::now() + LIVENESS_LIMIT;
        loop {
            let started = self.started();
            if !started.is_empty() {
                return started;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no task ever started on the worker to be killed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for MarkerDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fetches `h`, failing the test if it never completes.
fn fetch<T: DeserializeOwned + Send + 'static>(rt: &tokio::runtime::Runtime, h: &Handle<T>) -> T {
    rt.block_on(async { tokio::time::timeout(LIVENESS_LIMIT, h.clone()).await })
        .unwrap_or_else(|_| panic!("task {} never completed", h.id()))
        .unwrap_or_else(|e| panic!("task {} failed: {e}", h.id()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The victim's process id, checked to be one of the context's local worker processes.
fn pid_of(ctx: &Context, w: WorkerId) -> u32 {
    let pid = ctx.topology().worker(w).expect("worker in topology").pid;
    assert!(
        ctx.local_worker_pids().contains(&pid),
        "{w} is a local process"
    );
    pid
}

fn kill(pid: u32) {
    // SAFETY: plain syscall on a child process id we started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

/// Every event already delivered (all of those that precede the completions the test has
/// seen: the scheduler emits them in order).
fn drain(events: &mut ClusterEvents) -> Vec<ClusterEvent> {
    std::iter::from_fn(|| events.try_recv().ok()).collect()
}

/// Checks the loss and retry events: exactly one `WorkerLost`, for `victim`, reported by
/// the driver's watch of the child process as killed by SIGKILL (a SIGKILLed process's QUIC
/// link just goes silent, so the process watch is what reports it, at once), and a
/// `TaskRetried` event for each task of `must_retry` (each seen running on the victim).
/// Returns the retried tasks with the attempt number announced.
fn check_events(
    events: Vec<ClusterEvent>,
    victim: WorkerId,
    victim_pid: u32,
    must_retry: &[TaskId],
) -> HashMap<TaskId, u32> {
    let lost: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ClusterEvent::WorkerLost { worker, reason } => Some((*worker, reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(lost.len(), 1, "one WorkerLost event: {events:?}");
    assert_eq!(lost[0].0, victim);
    assert!(
        matches!(
            lost[0].1,
            LostReason::ProcessExited { pid, exit: ExitCause::Signal(libc::SIGKILL) }
                if pid == victim_pid
        ),
        "lost because its process was killed by SIGKILL: {:?}",
        lost[0].1
    );
    let retried: HashMap<TaskId, u32> = events
        .iter()
        .filter_map(|e| match e {
            ClusterEvent::TaskRetried { task, attempt } => Some((*task, *attempt)),
            _ => None,
        })
        .collect();
    for t in must_retry {
        let attempt = retried
            .get(t)
            .unwrap_or_else(|| panic!("no TaskRetried event for {t}: {events:?}"));
        assert!(*attempt >= 2, "{t} retried as attempt {attempt}");
    }
    retried
}

#[test]
fn a_killed_worker_delays_results_but_never_loses_them() {
    dagger::init();
    let ctx = Context::builder()
        .workers(2)
        .test_harness()
        .worker_threads(2)
        // Recovery on the survivors alone: no replacement process joins.
        .respawn(false)
        .build()
        .unwrap();
    let rt = runtime();
    let ws = ctx.workers();
    assert_eq!(ws.len(), 2);
    let (victim, survivor) = (ws[0], ws[1]);
    let (victim_pid, survivor_pid) = (pid_of(&ctx, victim), pid_of(&ctx, survivor));
    let markers = MarkerDir::new("tree");
    let mut events = ctx.subscribe();

    let leaves: Vec<_> = (0..60u64)
        .map(|i| leaf::spawn(&ctx, i, victim_pid, markers.arg()).unwrap())
        .collect();
    let mut level: Vec<_> = leaves
        .iter()
        .map(|l| first::spawn(&ctx, l).unwrap())
        .collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|p| {
                if p.len() == 2 {
                    add::spawn(&ctx, &p[0], &p[1]).unwrap()
                } else {
                    p[0].clone()
                }
            })
            .collect();
    }

    // Kill the victim once a task is running there.
    let started = markers.wait_for_a_start();
    kill(victim_pid);

    assert_eq!(fetch(&rt, &level[0]), (0..60u64).sum::<u64>());
    for (i, h) in leaves.iter().enumerate() {
        let (v, pid) = fetch(&rt, h);
        assert_eq!(v, i as u64);
        if i >= 20 {
            // Never finished on the victim: ran (again, for those that started there) on
            // the survivor.
            assert_eq!(pid, survivor_pid, "leaf {i}");
        }
    }
    // Every task seen running on the victim ran again, on the survivor.
    let on_victim: Vec<TaskId> = started.iter().map(|&i| leaves[i as usize].id()).collect();
    check_events(drain(&mut events), victim, victim_pid, &on_victim);
    for &i in &started {
        let info = leaves[i as usize].info().unwrap();
        assert!(info.attempts >= 2, "leaf {i}: {info:?}");
        assert_eq!(info.proc.unwrap().worker, survivor, "leaf {i}: {info:?}");
    }
    assert_eq!(ctx.workers(), vec![survivor]);
    // The survivor keeps working.
    assert_eq!(fetch(&rt, &add::spawn(&ctx, 1, 2).unwrap()), 3);
}

/// Starts `workers` workers; spawns `pairs` producers (unscoped, large results) and their
/// consumers pinned to the second worker; SIGKILLs the first worker once one of its
/// producers runs; checks the loss, the retries and every consumer's result.
fn kill_a_producer_worker_and_check_consumers(workers: usize, pairs: u64) {
    let ctx = Context::builder()
        .workers(workers)
        .test_harness()
        .worker_threads(2)
        // Recovery on the survivors alone: no replacement process joins.
        .respawn(false)
        .build()
        .unwrap();
    let rt = runtime();
    let ws = ctx.workers();
    assert_eq!(ws.len(), workers);
    let (victim, consumer) = (ws[0], ws[1]);
    let victim_pid = pid_of(&ctx, victim);
    let markers = MarkerDir::new(&format!("consumers-{workers}"));
    let mut events = ctx.subscribe();
    let pairs: Vec<_> = (0..pairs)
        .map(|i| {
            let p = slow_big::spawn(&ctx, i, victim_pid, markers.arg()).unwrap();
            let c = sum_big::with(Options::new().scope(Scope::worker(consumer)))
                .spawn(&ctx, &p)
                .unwrap();
            (i, p, c)
        })
        .collect();
    let started = markers.wait_for_a_start();
    kill(victim_pid);

    for (i, _p, c) in &pairs {
        assert_eq!(fetch(&rt, c), i * 256 * 1024, "consumer {i}");
    }
    let on_victim: Vec<TaskId> = started.iter().map(|&i| pairs[i as usize].1.id()).collect();
    check_events(drain(&mut events), victim, victim_pid, &on_victim);
    for (i, p, c) in &pairs {
        // No producer finished on the victim (those placed there never return there).
        let info = p.info().unwrap();
        assert_ne!(info.proc.unwrap().worker, victim, "producer {i}: {info:?}");
        assert_eq!(c.info().unwrap().proc.unwrap().worker, consumer);
    }
    for &i in &started {
        assert!(
            pairs[i as usize].1.info().unwrap().attempts >= 2,
            "producer {i}"
        );
    }
    assert!(!ctx.workers().contains(&victim));
}

/// Consumers pinned to the surviving worker were dispatched before their (large) inputs
/// existed and asked the producers' worker for them; that worker is killed before
/// answering. The consumers must get their inputs from the recomputed producers, not wait
/// forever.
#[test]
fn consumers_waiting_on_a_killed_worker_get_recomputed_inputs() {
    dagger::init();
    kill_a_producer_worker_and_check_consumers(2, 8);
}

/// Three workers: consumers pinned to B wait for large inputs produced on A and C. A is
/// killed; its producers are recomputed on B or C. The consumers' outstanding wants to A
/// must be asked again of the new holders, not wait for A forever.
#[test]
fn wants_to_a_killed_worker_are_asked_again_of_the_recomputed_copy() {
    dagger::init();
    kill_a_producer_worker_and_check_consumers(3, 24);
}
