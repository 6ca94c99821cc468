//! S1: a million-task graph, for the driver's memory and the growth of its time.
//!
//! Groups of 10,000 trivial leaf tasks, each group reduced by a binary tree of adds
//! (19,999 tasks a group), every task of every group spawned before the first fetch, then
//! every group's sum fetched and checked. The large run has 100 groups (1,999,900 tasks),
//! the small one 10 (199,990); each runs in a fresh driver process (`dagger-bench S1-run
//! <groups>`), with 2 worker processes over QUIC on loopback, and reports its time from the
//! first spawn to the last fetch and its peak resident memory (`VmHWM`).
//!
//! Figures: `bytes_per_task` (the large run's peak RSS divided by its task count),
//! `time_ratio` (large time ÷ small time; 10 is linear), `startup_ms` (the large run's
//! context start-up). `--quick` runs 10 groups against 1.

use anyhow::{bail, ensure, Context as _};
use dagger::prelude::*;
use std::process::Command;
use std::time::Instant;

use crate::line;

/// Leaves in one group.
const LEAVES: u64 = 10_000;

#[dagger::task]
fn s1_leaf(i: u64) -> u64 {
    i
}

#[dagger::task]
fn s1_add(a: u64, b: u64) -> u64 {
    a + b
}

/// Tasks in one group: the leaves and the adds of its reduction tree.
fn tasks_per_group() -> u64 {
    2 * LEAVES - 1
}

/// What one `S1-run` child reported.
#[derive(Debug, Default)]
struct RunReport {
    tasks: u64,
    elapsed_s: f64,
    peak_rss: u64,
    startup_ms: f64,
}

/// The S1 workload: runs the large and the small graph, each in a fresh driver process.
pub(crate) fn s1(quick: bool) -> anyhow::Result<()> {
    let (large, small) = if quick { (10, 1) } else { (100, 10) };
    let big = child(large)?;
    let little = child(small)?;
    ensure!(little.elapsed_s > 0.0, "S1: the small run took no time");
    line("S1", "startup_ms", big.startup_ms, "ms");
    line(
        "S1",
        "bytes_per_task",
        (big.peak_rss as f64 / big.tasks as f64).round(),
        "B",
    );
    line("S1", "time_ratio", big.elapsed_s / little.elapsed_s, "x");
    eprintln!(
        "S1: {} tasks in {:.2} s, peak RSS {} MB; {} tasks in {:.2} s, peak RSS {} MB",
        big.tasks,
        big.elapsed_s,
        big.peak_rss >> 20,
        little.tasks,
        little.elapsed_s,
        little.peak_rss >> 20
    );
    Ok(())
}

/// Runs `dagger-bench S1-run <groups>` and parses its `s1-run <key> <value>` lines.
fn child(groups: u64) -> anyhow::Result<RunReport> {
    let exe = std::env::current_exe().context("the bench binary's path")?;
    let out = Command::new(&exe)
        .arg("S1-run")
        .arg(groups.to_string())
        .output()
        .with_context(|| format!("could not start {} S1-run {groups}", exe.display()))?;
    // The child's diagnostics go on through our stderr.
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("S1-run {groups} exited with {}", out.status);
    }
    let mut report = RunReport::default();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = l.split_whitespace();
        if words.next() != Some("s1-run") {
            continue;
        }
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            bail!("S1-run {groups}: malformed line {l:?}");
        };
        match key {
            "tasks" => report.tasks = value.parse()?,
            "elapsed_s" => report.elapsed_s = value.parse()?,
            "peak_rss" => report.peak_rss = value.parse()?,
            "startup_ms" => report.startup_ms = value.parse()?,
            _ => {}
        }
    }
    ensure!(
        report.tasks == groups * tasks_per_group() && report.peak_rss > 0,
        "S1-run {groups} reported {report:?}"
    );
    Ok(report)
}

/// Peak resident set size of this process, from `VmHWM` in `/proc/self/status`.
fn peak_rss() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()?;
    Ok(kb * 1024)
}

/// One size of S1 in this process: `dagger-bench S1-run <groups>`.
pub(crate) fn run(groups: &str) -> anyhow::Result<()> {
    let groups: u64 = groups.parse().context("S1-run <groups>")?;
    let t = Instant::now();
    let ctx = Context::builder().workers(2).build()?;
    let startup = t.elapsed();

    let t = Instant::now();
    let mut roots = Vec::with_capacity(groups as usize);
    for g in 0..groups {
        let base = g * LEAVES;
        let mut level: Vec<Handle<u64>> = (base..base + LEAVES)
            .map(|i| s1_leaf::spawn(&ctx, i))
            .collect::<Result<_, _>>()?;
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|p| match p {
                    [a, b] => s1_add::spawn(&ctx, a, b),
                    [a] => Ok(a.clone()),
                    _ => unreachable!("chunks(2) gives one or two"),
                })
                .collect::<Result<_, _>>()?;
        }
        roots.push((base, level.pop().context("a group's root")?));
    }
    let spawned = t.elapsed();
    let rss_spawned = peak_rss()?;
    // A query is answered after every command sent before it: this is when the driver
    // has taken in the whole graph.
    ensure!(!ctx.workers().is_empty(), "S1: no workers");
    let ingested = t.elapsed();
    let rss_ingested = peak_rss()?;
    for (base, root) in &roots {
        let sum = root.fetch()?;
        let want = LEAVES * base + LEAVES * (LEAVES - 1) / 2;
        ensure!(sum == want, "S1 group at {base}: sum {sum}, want {want}");
    }
    let elapsed = t.elapsed();
    let rss = peak_rss()?;
    eprintln!(
        "S1-run {groups}: spawn {:.2} s (peak RSS {} MB then), taken in by the driver at \
         {:.2} s (peak RSS {} MB), all fetched at {:.2} s, peak RSS {} MB",
        spawned.as_secs_f64(),
        rss_spawned >> 20,
        ingested.as_secs_f64(),
        rss_ingested >> 20,
        elapsed.as_secs_f64(),
        rss >> 20
    );
    println!("s1-run tasks {}", groups * tasks_per_group());
    println!("s1-run elapsed_s {}", elapsed.as_secs_f64());
    println!("s1-run peak_rss {rss}");
    println!("s1-run startup_ms {}", startup.as_secs_f64() * 1e3);
    Ok(())
}
