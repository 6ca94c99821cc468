//! The main job: a driver and two local worker processes run a graph — 256 leaves, a
//! tree reduction over them — with a progress bar, then print the processor tree, where
//! each task ran, and the checked result.
//!
//! ```sh
//! cargo run --release --example quickstart
//! ```

use anyhow::{ensure, Context as _};
use dagger::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;

use dagger_examples::tree::{add, leaf, leaf_value as expected_leaf};

fn main() -> anyhow::Result<()> {
    // In a worker process this joins the cluster and never returns.
    dagger::init();

    let ctx = Context::local(2).context("starting the driver and 2 local workers")?;
    println!("== the cluster's processors ==\n{}", ctx.topology());

    const N: u64 = 256;
    let leaves: Vec<Handle<u64>> = (0..N)
        .map(|i| leaf::spawn(&ctx, i))
        .collect::<Result<_, _>>()?;

    // Reduce pairwise: each inner task depends on two handles (type-checked: u64 + u64).
    let mut all: Vec<Handle<u64>> = leaves.clone();
    let mut level = leaves;
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len() / 2 + 1);
        for pair in level.chunks(2) {
            next.push(match pair {
                [a, b] => add::spawn(&ctx, a, b)?,
                [a] => a.clone(),
                _ => unreachable!("chunks(2) yields one or two"),
            });
        }
        all.extend(next.iter().cloned());
        level = next;
    }
    let root = level.pop().context("the reduction has a root")?;

    let bar = ProgressBar::new(all.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} tasks {elapsed}",
    )?);
    for h in &all {
        h.wait()?;
        bar.inc(1);
    }
    bar.finish();

    let total = root.fetch()?;
    let expected: u64 = (0..N).map(expected_leaf).sum();
    ensure!(total == expected, "wrong result: {total} != {expected}");

    let mut per_proc: BTreeMap<String, usize> = BTreeMap::new();
    for h in &all {
        *per_proc.entry(h.info()?.processor).or_default() += 1;
    }
    println!("== where the {} tasks ran ==", all.len());
    for (proc, n) in &per_proc {
        println!("{proc:>24}: {n} tasks");
    }
    println!("root task {} ran on {}", root.id(), root.info()?.processor);

    // The same reduction, lazily: build first, run on collect.
    let lazy = add::delayed(
        add::delayed(leaf::delayed(1), leaf::delayed(2)),
        leaf::delayed(3),
    );
    let small: u64 = ctx.collect(lazy)?;
    ensure!(small == expected_leaf(1) + expected_leaf(2) + expected_leaf(3));

    println!("result {total} (checked)");
    Ok(())
}
