//! W5: a worker process killed (or paused) while a graph of sleeping tasks runs.
//!
//! 200 tasks sleep 50 ms each and return their index, on 2 worker processes of 2 thread
//! processors. A run without faults gives the baseline time; then, in fresh clusters:
//! SIGKILL one worker when 30% of the results are in, with the supervisor replacing it
//! (`time_ratio`) and without (`time_ratio_norespawn`); and SIGSTOP one instead
//! (`detect_stop_ms`). Every result of every run is checked (`lost` counts the wrong or
//! missing ones). `detect_ms` is the time from the kill to the driver's `WorkerLost` event
//! reaching a subscriber.

use anyhow::{bail, ensure};
use dagger::prelude::*;
use dagger::{ClusterEvent, ClusterEvents, LostReason};
use rustix::process::{kill_process, Pid, Signal};
use std::time::{Duration, Instant};

use crate::line;

#[dagger::task]
fn nap(i: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    i
}

const TASKS: u64 = 200;
const NAP_MS: u64 = 50;
/// The fault comes when this many results (30%) are in.
const FAULT_AT: usize = 60;

/// What one run measured.
struct Run {
    elapsed: Duration,
    /// Results that were wrong or missing.
    lost: u64,
    /// Fault → `WorkerLost` seen by a subscriber.
    detect: Option<Duration>,
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    Kill,
    Stop,
}

fn cluster(respawn: bool) -> anyhow::Result<Context> {
    Ok(Context::builder()
        .workers(2)
        .worker_threads(2)
        .respawn(respawn)
        .build()?)
}

fn signal(pid: u32, sig: Signal) -> anyhow::Result<()> {
    let Some(pid) = Pid::from_raw(pid as i32) else {
        bail!("bad pid {pid}");
    };
    kill_process(pid, sig)?;
    Ok(())
}

/// Waits for the `WorkerLost` event of `victim`; other events are skipped.
fn wait_lost(events: &mut ClusterEvents, victim: WorkerId) -> anyhow::Result<()> {
    loop {
        match events.blocking_recv() {
            Some(ClusterEvent::WorkerLost { worker, reason }) if worker == victim => {
                ensure!(
                    matches!(
                        reason,
                        LostReason::ProcessExited { .. }
                            | LostReason::Silent { .. }
                            | LostReason::LinkClosed { .. }
                    ),
                    "unexpected loss reason {reason}"
                );
                return Ok(());
            }
            Some(_) => {}
            None => bail!("the context stopped before the worker was declared lost"),
        }
    }
}

fn run(ctx: &Context, fault: Fault) -> anyhow::Result<Run> {
    // A warm-up task on each worker process, so the first measured tasks do not pay for
    // anything the baseline did not.
    for h in (0..4)
        .map(|i| nap::spawn(ctx, i, 1))
        .collect::<Result<Vec<_>, _>>()?
    {
        h.wait()?;
    }
    let workers = ctx.workers();
    let Some(&victim) = workers.first() else {
        bail!("no workers");
    };
    let victim_pid = ctx
        .topology()
        .workers()
        .find(|w| w.worker == victim)
        .map(|w| w.pid)
        .ok_or_else(|| anyhow::anyhow!("no pid for {victim}"))?;
    let mut events = ctx.subscribe();
    let t = Instant::now();
    let hs: Vec<Handle<u64>> = (0..TASKS)
        .map(|i| nap::spawn(ctx, i, NAP_MS))
        .collect::<Result<_, _>>()?;
    let mut lost = 0;
    let mut detect = None;
    for (i, h) in hs.iter().enumerate() {
        match h.fetch() {
            Ok(v) if v == i as u64 => {}
            _ => lost += 1,
        }
        if i + 1 == FAULT_AT && fault != Fault::None {
            let sig = if fault == Fault::Kill {
                Signal::KILL
            } else {
                Signal::STOP
            };
            let at = Instant::now();
            signal(victim_pid, sig)?;
            wait_lost(&mut events, victim)?;
            detect = Some(at.elapsed());
            if fault == Fault::Stop {
                // Lost and fenced: it must not come back to life in the middle of the
                // run; the supervisor may already have killed it.
                let _ = signal(victim_pid, Signal::KILL);
                let _ = signal(victim_pid, Signal::CONT);
            }
        }
    }
    Ok(Run {
        elapsed: t.elapsed(),
        lost,
        detect,
    })
}

pub(crate) fn w5(quick: bool) -> anyhow::Result<()> {
    let _ = quick;
    let t = Instant::now();
    let base = {
        let ctx = cluster(true)?;
        line("W5", "startup_ms", t.elapsed().as_secs_f64() * 1e3, "ms");
        run(&ctx, Fault::None)?
    };
    let killed = run(&cluster(true)?, Fault::Kill)?;
    let norespawn = run(&cluster(false)?, Fault::Kill)?;
    let stopped = run(&cluster(true)?, Fault::Stop)?;
    let base_s = base.elapsed.as_secs_f64();
    line(
        "W5",
        "time_ratio",
        killed.elapsed.as_secs_f64() / base_s,
        "x",
    );
    line(
        "W5",
        "time_ratio_norespawn",
        norespawn.elapsed.as_secs_f64() / base_s,
        "x",
    );
    line(
        "W5",
        "lost",
        (base.lost + killed.lost + norespawn.lost + stopped.lost) as f64,
        "tasks",
    );
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    line("W5", "detect_ms", ms(killed.detect), "ms");
    line("W5", "detect_stop_ms", ms(stopped.detect), "ms");
    line("W5", "baseline_s", base_s, "s");
    Ok(())
}
