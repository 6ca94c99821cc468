//! W6: a pool that grows, and a worker drained.
//!
//! Grow: 40 tasks of 100 ms start on 1 worker process of 1 thread processor; 0.5 s after
//! they were spawned a second worker is launched (a local process, through the same
//! launcher API a user calls) and added. The ideal total is 2.25 s (5 tasks alone, then
//! 35 shared by two). `total_s` is spawn → every result fetched; `tasks_on_added` counts
//! the tasks the added worker ran; `join_to_first_task_ms` is the time from the driver's
//! `WorkerJoined` event reaching a subscriber thread (blocked on it) to the first task
//! starting on the new worker, both read on this host's wall clock (`CLOCK_REALTIME`, the
//! same for every process of the host).
//!
//! Drain: on 2 workers, 16 tasks pinned to the first make 8 MiB results that stay there
//! (the only copies, and the client still holds their handles). `drain_ms` is the time
//! from `remove_workers` of that worker to its drain handle resolving: the 128 MiB are
//! copied to the other worker first. Every result is then checked on the copies.

use anyhow::{bail, ensure};
use dagger::prelude::*;
use dagger::ClusterEvent;
use serde_bytes::ByteBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::line;

const TASKS: u64 = 40;
const TASK_MS: u64 = 100;
const ADD_AFTER: Duration = Duration::from_millis(500);
const IDEAL_S: f64 = 2.25;
const CHUNKS: u64 = 16;
const CHUNK_BYTES: u64 = 8 << 20;

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Sleeps `ms` and returns the worker that ran it and when it started (wall clock, ns).
#[dagger::task]
fn timed_nap(ms: u64) -> (u32, u64) {
    let started = wall_ns();
    std::thread::sleep(Duration::from_millis(ms));
    (dagger::current_worker().0, started)
}

#[dagger::task]
fn chunk(i: u64, len: u64) -> ByteBuf {
    ByteBuf::from(vec![(i % 251) as u8; len as usize])
}

pub(crate) fn w6(quick: bool) -> anyhow::Result<()> {
    grow(quick)?;
    drain()
}

fn grow(_quick: bool) -> anyhow::Result<()> {
    let t = Instant::now();
    let ctx = Context::builder().workers(1).worker_threads(1).build()?;
    line("W6", "startup_ms", t.elapsed().as_secs_f64() * 1e3, "ms");
    let launcher = ctx
        .local_launcher()
        .ok_or_else(|| anyhow::anyhow!("the context has no local launcher"))?;
    // A thread blocked on the event stream notes when the join is announced.
    let mut events = ctx.subscribe();
    let joined = std::thread::spawn(move || loop {
        match events.blocking_recv() {
            Some(ClusterEvent::WorkerJoined { worker }) => return Some((worker, wall_ns())),
            Some(_) => continue,
            None => return None,
        }
    });
    let start = Instant::now();
    let hs: Vec<Handle<(u32, u64)>> = (0..TASKS)
        .map(|_| timed_nap::spawn(&ctx, TASK_MS))
        .collect::<Result<_, _>>()?;
    std::thread::sleep(ADD_AFTER.saturating_sub(start.elapsed()));
    let added = ctx.add_workers(&launcher, 1)?;
    let mut results = Vec::with_capacity(hs.len());
    for h in &hs {
        results.push(h.fetch()?);
    }
    let total = start.elapsed().as_secs_f64();
    let Some((new, joined_at)) = joined
        .join()
        .map_err(|_| anyhow::anyhow!("watcher panicked"))?
    else {
        bail!("no WorkerJoined event");
    };
    ensure!(added == [new], "added {added:?}, the event named {new}");
    let on_added: Vec<u64> = results
        .iter()
        .filter(|(w, _)| *w == new.0)
        .map(|(_, s)| *s)
        .collect();
    ensure!(!on_added.is_empty(), "the added worker ran nothing");
    let first = on_added.iter().copied().min().unwrap_or(joined_at);
    line("W6", "total_s", total, "s");
    line("W6", "ideal_s", IDEAL_S, "s");
    line("W6", "tasks_on_added", on_added.len() as f64, "tasks");
    line(
        "W6",
        "join_to_first_task_ms",
        first.saturating_sub(joined_at) as f64 / 1e6,
        "ms",
    );
    ctx.shutdown();
    Ok(())
}

fn drain() -> anyhow::Result<()> {
    let ctx = Context::builder().workers(2).worker_threads(1).build()?;
    let ws = ctx.workers();
    let victim = ws[0];
    let hs: Vec<Handle<ByteBuf>> = (0..CHUNKS)
        .map(|i| {
            chunk::with(Options::new().scope(Scope::worker(victim))).spawn(&ctx, i, CHUNK_BYTES)
        })
        .collect::<Result<_, _>>()?;
    for h in &hs {
        h.wait()?;
    }
    let t = Instant::now();
    let drains = ctx.remove_workers(&[victim])?;
    let report = drains[0]
        .wait_timeout(Duration::from_secs(120))
        .ok_or_else(|| anyhow::anyhow!("the drain did not resolve"))?;
    let el = t.elapsed();
    ensure!(report.is_clean(), "drain: {:?}", report.outcome);
    for (i, h) in hs.iter().enumerate() {
        let b = h.fetch()?;
        ensure!(
            b.len() as u64 == CHUNK_BYTES && b.iter().all(|&x| x == (i as u64 % 251) as u8),
            "chunk {i} is wrong after the drain"
        );
    }
    line("W6", "drain_ms", el.as_secs_f64() * 1e3, "ms");
    ctx.shutdown();
    Ok(())
}
