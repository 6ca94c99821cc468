//! See what ran where: the quickstart's graph — 256 leaves, a tree reduction over them —
//! on a driver and two local worker processes with the timeline recorded, exported as a
//! Chrome trace (open it in <https://ui.perfetto.dev> or `chrome://tracing`), a Gantt
//! chart in SVG and a Graphviz graph of the run, plus the graph of a small lazy reduction
//! before it runs.
//!
//! ```sh
//! cargo run --release --example timeline -- out/   # writes out/trace.json, out/gantt.svg, ...
//! dot -Tsvg out/graph.dot -o out/graph.svg          # Graphviz renders the graphs
//! ```

use anyhow::{ensure, Context as _};
use dagger::prelude::*;
use std::path::PathBuf;

use dagger_examples::tree::{add, leaf};

fn main() -> anyhow::Result<()> {
    // In a worker process this joins the cluster and never returns.
    dagger::init();

    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let ctx = Context::builder()
        .workers(2)
        .timeline(true)
        .build()
        .context("starting the driver and 2 local workers")?;

    const N: u64 = 256;
    let mut level: Vec<Handle<u64>> = (0..N)
        .map(|i| leaf::spawn(&ctx, i))
        .collect::<Result<_, _>>()?;
    let mut spawned = level.len();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len() / 2 + 1);
        for pair in level.chunks(2) {
            next.push(match pair {
                [a, b] => {
                    spawned += 1;
                    add::spawn(&ctx, a, b)?
                }
                [a] => a.clone(),
                _ => unreachable!("chunks(2) yields one or two"),
            });
        }
        level = next;
    }
    let root = level.pop().context("the reduction has a root")?;
    let total = root.fetch()?;

    let timeline = ctx.timeline();
    ensure!(
        timeline.tasks().len() == spawned,
        "{} of {spawned} tasks recorded",
        timeline.tasks().len()
    );
    let trace = dir.join("trace.json");
    let gantt = dir.join("gantt.svg");
    let graph = dir.join("graph.dot");
    let plan = dir.join("plan.dot");
    timeline.write_chrome_trace(&trace)?;
    timeline.write_gantt_svg(&gantt)?;
    std::fs::write(&graph, timeline.to_dot())
        .with_context(|| format!("writing {}", graph.display()))?;

    // A lazy graph's plan, before it runs.
    let lazy = add::delayed(
        add::delayed(leaf::delayed(1), leaf::delayed(2)),
        leaf::delayed(3),
    );
    std::fs::write(&plan, lazy.to_dot()).with_context(|| format!("writing {}", plan.display()))?;

    println!(
        "{} tasks on {} processors, {} moves between workers; result {total}",
        timeline.tasks().len(),
        timeline.processors().len(),
        timeline.moves().len()
    );
    println!(
        "wrote {}: Chrome trace (ui.perfetto.dev, chrome://tracing)",
        trace.display()
    );
    println!("wrote {}: Gantt chart", gantt.display());
    println!("wrote {}: graph of the run (dot -Tsvg)", graph.display());
    println!(
        "wrote {}: graph of a lazy task before it runs",
        plan.display()
    );
    Ok(())
}
