//! A pool that grows and shrinks while a graph runs.
//!
//! Twenty tasks of half a second each report the worker they ran on; one task gathers
//! their answers into a vector. The graph starts on 2 worker processes; while it runs, 2
//! more are launched and added, and once both have work, the first 2 are removed: each
//! finishes the task it is running, receives nothing new, and leaves. When the graph is
//! done the remaining workers are drained too. The program prints the distinct workers
//! that ran tasks (4) and how long each drain took.
//!
//! ```text
//! cargo run --release --example dynamic_pool
//! ```

use dagger::prelude::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Works for `ms` milliseconds and says where it ran.
#[dagger::task]
fn which_worker(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    dagger::current_worker().0
}

/// Gathers the answers, in order.
#[dagger::task]
fn vcat(parts: Vec<u32>) -> Vec<u32> {
    parts
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    dagger::init();
    let ctx = Context::builder().workers(2).worker_threads(1).build()?;
    let first = ctx.workers();
    println!("started on {} workers: {first:?}", first.len());

    let t0 = Instant::now();
    let parts: Vec<Handle<u32>> = (0..20)
        .map(|_| which_worker::spawn(&ctx, 500))
        .collect::<Result<_, _>>()?;
    let all = vcat::spawn(&ctx, &parts)?;

    // Grow: two more worker processes of this program join the running graph.
    std::thread::sleep(Duration::from_millis(700));
    let launcher = ctx
        .local_launcher()
        .ok_or("this context starts no local workers")?;
    let added = ctx.add_workers(&launcher, 2)?;
    println!(
        "{:>6.2}s added {added:?}; the pool is {:?}",
        t0.elapsed().as_secs_f64(),
        ctx.workers()
    );

    // Shrink: once both new workers have work, the first two are drained while the graph
    // goes on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !added.iter().all(|w| has_work(&ctx, &parts, *w)) {
        if Instant::now() > deadline {
            return Err("the added workers never received a task".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut drains = ctx.remove_workers(&first)?;
    println!(
        "{:>6.2}s removing {first:?} (each finishes the task it runs)",
        t0.elapsed().as_secs_f64()
    );

    let ran_on = all.fetch()?;
    println!("{:>6.2}s graph done", t0.elapsed().as_secs_f64());

    // Then every worker left is drained and shut down.
    drains.extend(ctx.remove_workers(&ctx.workers())?);
    for d in &drains {
        let r = d.wait();
        println!(
            "drained {} (process {}) in {:.1} ms: {}",
            r.worker,
            r.pid,
            r.took().as_secs_f64() * 1e3,
            if r.is_clean() {
                "nothing lost"
            } else {
                "work redone elsewhere"
            }
        );
    }

    let distinct: BTreeSet<u32> = ran_on.iter().copied().collect();
    println!(
        "{} tasks ran on {} distinct workers: {:?}",
        ran_on.len(),
        distinct.len(),
        distinct
    );
    if ran_on.len() != 20 || distinct.len() != 4 {
        return Err(format!("expected 20 tasks on 4 workers, got {ran_on:?}").into());
    }
    println!("the pool is now {:?}", ctx.workers());
    Ok(())
}

/// Whether some task of `parts` was dispatched to `w`.
fn has_work(ctx: &Context, parts: &[Handle<u32>], w: WorkerId) -> bool {
    parts.iter().any(|h| {
        ctx.task_info(h.id())
            .and_then(|i| i.proc)
            .is_some_and(|p| p.worker == w)
    })
}
