//! A worker process killed in the middle of a graph: the driver notices at once (it watches
//! its local worker processes), recomputes what was lost from lineage, and the supervisor
//! starts a replacement process that joins as a new worker. The program kills one of its own
//! workers once about 30% of the leaves are done, prints what the cluster reports (the loss
//! and its reason, the tasks run again, the replacement's arrival) and checks the result.
//!
//! ```sh
//! cargo run --example fault_tolerance
//! ```

use anyhow::{bail, ensure, Context as _};
use dagger::prelude::*;
use dagger::ClusterEvent;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::Duration;

/// A leaf: 50 ms of "work" on one number.
#[dagger::task]
fn square(i: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(50));
    i * i
}

/// An inner node: the sum of two children.
#[dagger::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

const LEAVES: u64 = 60;
/// How long to wait for something the cluster must do before calling it lost: a bound
/// against hangs, far above what a run needs.
const GUARD: Duration = Duration::from_secs(120);

fn main() -> anyhow::Result<()> {
    // In a worker process this joins the cluster and never returns.
    dagger::init();

    let ctx = Context::builder()
        .workers(3)
        .build()
        .context("starting the driver and 3 local workers")?;
    let workers = ctx.workers();
    println!(
        "cluster: workers {workers:?}, processes {:?}",
        ctx.local_worker_pids()
    );

    // Every cluster event, printed as it comes and handed to the main thread.
    let mut events = ctx.subscribe();
    let (ev_tx, ev_rx) = mpsc::channel();
    let printer = std::thread::spawn(move || {
        while let Some(e) = events.blocking_recv() {
            match &e {
                ClusterEvent::WorkerLost { worker, reason } => {
                    println!("event: {worker} lost: {reason}")
                }
                ClusterEvent::WorkerRestarted {
                    old_pid,
                    new_pid,
                    restarts,
                } => println!(
                    "event: process {old_pid} replaced by process {new_pid} (restart {restarts} in the window)"
                ),
                ClusterEvent::WorkerJoined { worker } => println!("event: {worker} joined"),
                ClusterEvent::RestartsExhausted { pid, .. } => {
                    println!("event: process {pid} not replaced: the restart budget is spent")
                }
                // Summed up at the end; drains do not happen here.
                _ => {}
            }
            if ev_tx.send(e).is_err() {
                break;
            }
        }
    });

    let leaves: Vec<Handle<u64>> = (0..LEAVES)
        .map(|i| square::spawn(&ctx, i))
        .collect::<Result<_, _>>()?;
    let leaf_of: BTreeMap<TaskId, u64> = leaves.iter().zip(0..).map(|(h, i)| (h.id(), i)).collect();
    let mut level = leaves.clone();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len() / 2 + 1);
        for pair in level.chunks(2) {
            next.push(match pair {
                [a, b] => add::spawn(&ctx, a, b)?,
                [a] => a.clone(),
                _ => unreachable!("chunks(2) yields one or two"),
            });
        }
        level = next;
    }
    let total = level.remove(0);

    // Once the first 30% of the leaves are done, kill one worker process.
    let done_before = LEAVES * 3 / 10;
    for h in &leaves[..done_before as usize] {
        h.fetch()?;
    }
    let victim_pid = *ctx
        .local_worker_pids()
        .first()
        .context("no local worker process")?;
    let victim = ctx
        .topology()
        .workers()
        .find(|w| w.pid == victim_pid)
        .map(|w| w.worker)
        .context("the victim is not in the topology")?;
    println!(
        "killing {victim} (process {victim_pid}) with SIGKILL after {done_before} leaves finished"
    );
    // SAFETY: a plain syscall on a child process this program started.
    if unsafe { libc::kill(victim_pid as i32, libc::SIGKILL) } != 0 {
        bail!("kill({victim_pid}): {}", std::io::Error::last_os_error());
    }

    let sum = total.fetch()?;
    let expected = (LEAVES - 1) * LEAVES * (2 * LEAVES - 1) / 6;
    println!("sum of squares 0..{LEAVES}: {sum} (expected {expected})");
    ensure!(sum == expected, "wrong result {sum}, expected {expected}");

    // The replacement may join after the graph is done: wait for it (bounded).
    let mut retried = BTreeSet::new();
    let mut lost = None;
    let mut new_pid = None;
    let mut replacement = None;
    let deadline = std::time::Instant::now() + GUARD;
    while replacement.is_none() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let e = ev_rx
            .recv_timeout(left)
            .context("no replacement worker joined")?;
        match e {
            ClusterEvent::TaskRetried { task, .. } => {
                retried.insert(task);
            }
            ClusterEvent::WorkerLost { worker, reason } => lost = Some((worker, reason)),
            ClusterEvent::WorkerRestarted {
                old_pid,
                new_pid: p,
                ..
            } if old_pid == victim_pid => new_pid = Some(p),
            ClusterEvent::WorkerJoined { worker } if new_pid.is_some() => {
                replacement = Some(worker)
            }
            ClusterEvent::RestartsExhausted { .. } => bail!("the victim was not replaced"),
            _ => {}
        }
    }
    let (lost_worker, reason) = lost.context("no WorkerLost event")?;
    ensure!(lost_worker == victim, "{lost_worker} lost, not {victim}");
    let replacement = replacement.context("no replacement")?;
    let recomputed: Vec<u64> = retried
        .iter()
        .filter_map(|t| leaf_of.get(t).copied())
        .collect();
    println!("lost: {lost_worker} ({reason})");
    println!(
        "run again: {} task(s) that were on it or whose results it held ({} leaves: {recomputed:?}; {} sums)",
        retried.len(),
        recomputed.len(),
        retried.len() - recomputed.len()
    );
    println!(
        "replacement: {replacement} (process {}), now in the pool: {:?}",
        new_pid.unwrap_or_default(),
        ctx.workers()
    );
    ensure!(
        ctx.workers().contains(&replacement),
        "the replacement left the pool"
    );
    ctx.shutdown();
    printer
        .join()
        .map_err(|_| anyhow::anyhow!("the event printer panicked"))?;
    Ok(())
}
