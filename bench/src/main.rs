//! The benchmark workloads. `dagger-bench <ID> [--quick]` runs one workload once and prints
//! `dagger <ID> <metric> <value> <unit>` lines, and `dagger <ID> <name> skipped: <why>` for
//! a part it could not measure here (DEV: a backend with no device); `cargo xtask bench`
//! runs each several times and prints the medians.
//!
//! S1 is a graph of about 2,000,000 tasks, for the driver's memory and time; see [`s1`].
//!
//! DEV measures the device backends of the build's features (`opencl`, `wgpu`, `cuda`;
//! `devices` for all three); see [`dev`].

use anyhow::{bail, ensure, Context as _};
use dagger::prelude::*;
use std::time::{Duration, Instant};

mod dev;
mod s1;
mod w5;
mod w6;

#[dagger::task]
fn inc(i: u64) -> u64 {
    i + 1
}

#[dagger::task]
fn leaf(i: u64) -> u64 {
    i
}

#[dagger::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Builds its buffer with `BytesMut`: where chunks move through shared memory it is
/// written once, in place, into the segment that a worker of the same host is then lent.
#[dagger::task]
fn produce(i: u64, len: u64) -> dagger::Bytes {
    dagger::BytesMut::filled(len as usize, (i % 251) as u8).freeze()
}

/// Takes its buffer as `Bytes`: read where the worker holds it (a segment a worker of the
/// same host lends, the frame it arrived in), not copied into a vector first.
#[dagger::task]
fn checksum(b: dagger::Bytes) -> u64 {
    // The byte sum, in 16-bit lanes over runs of 256 bytes (which cannot overflow them):
    // about 3 times as fast as widening every byte to 64 bits, so the move, not the sum,
    // is what W4 weighs.
    b.chunks(256)
        .map(|c| c.iter().map(|&x| x as u16).sum::<u16>() as u64)
        .sum()
}

/// `DAGGER_BENCH_REPEAT=n` runs the measured part n times (for profiling).
fn repeat() -> usize {
    std::env::var("DAGGER_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

pub(crate) fn line(id: &str, metric: &str, value: f64, unit: &str) {
    if value.fract() == 0.0 || value >= 1000.0 {
        println!("dagger {id} {metric} {} {unit}", value.round() as i64);
    } else {
        println!("dagger {id} {metric} {value:.2} {unit}");
    }
}

fn start(id: &str, builder: dagger::ContextBuilder) -> anyhow::Result<Context> {
    let t = Instant::now();
    let ctx = builder.build()?;
    line(id, "startup_ms", t.elapsed().as_secs_f64() * 1e3, "ms");
    Ok(ctx)
}

fn fanout(ctx: &Context, n: u64) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let hs: Vec<Handle<u64>> = (0..n)
        .map(|i| inc::spawn(ctx, i))
        .collect::<Result<_, _>>()?;
    let mut sum = 0u64;
    for h in &hs {
        sum += h.fetch()?;
    }
    let el = t.elapsed();
    ensure!(sum == n * (n + 1) / 2, "W1 sum wrong: {sum}");
    Ok(el)
}

fn w1(quick: bool) -> anyhow::Result<()> {
    let ctx = start("W1", Context::builder().workers(2))?;
    let n = if quick { 2_000 } else { 10_000 };
    fanout(&ctx, n / 10)?; // warm the links and the run-time estimates
    let el = fanout(&ctx, n)?;
    line("W1", "tasks_per_s", n as f64 / el.as_secs_f64(), "tasks/s");
    Ok(())
}

fn l1(quick: bool) -> anyhow::Result<()> {
    let ctx = start("L1", Context::builder())?;
    let n = if quick { 2_000 } else { 10_000 };
    fanout(&ctx, n / 10)?;
    for _ in 1..repeat() {
        fanout(&ctx, n)?;
    }
    let el = fanout(&ctx, n)?;
    line("L1", "tasks_per_s", n as f64 / el.as_secs_f64(), "tasks/s");
    Ok(())
}

/// W1t: W1 and L1 with timeline recording on (every task's span recorded; checked to be
/// all there), to read against W1 and L1 without it.
fn w1t(quick: bool) -> anyhow::Result<()> {
    let n = if quick { 2_000 } else { 10_000 };
    for (id, builder) in [
        ("W1", Context::builder().workers(2)),
        ("L1", Context::builder()),
    ] {
        let ctx = builder.timeline(true).build()?;
        fanout(&ctx, n / 10)?;
        let el = fanout(&ctx, n)?;
        line(
            id,
            "tasks_per_s_traced",
            n as f64 / el.as_secs_f64(),
            "tasks/s",
        );
        let spans = ctx.timeline().tasks.len() as u64;
        ensure!(spans == n + n / 10, "{id}: {spans} spans recorded");
        ctx.shutdown();
    }
    Ok(())
}

fn w2(quick: bool) -> anyhow::Result<()> {
    let ctx = start("W2", Context::builder().workers(2))?;
    let leaves: u64 = if quick { 1024 } else { 8192 };
    let run = |leaves: u64| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let mut level: Vec<Lazy<u64>> = (0..leaves).map(leaf::delayed).collect();
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|p| add::delayed(&p[0], &p[1]))
                .collect();
        }
        let root = level.pop().context("root")?;
        let total: u64 = ctx.collect(root)?;
        let el = t.elapsed();
        ensure!(total == leaves * (leaves - 1) / 2, "W2 sum wrong: {total}");
        Ok(el)
    };
    run(256)?;
    let el = run(leaves)?;
    let tasks = 2 * leaves - 1;
    line(
        "W2",
        "tasks_per_s",
        tasks as f64 / el.as_secs_f64(),
        "tasks/s",
    );
    Ok(())
}

fn two_workers(ctx: &Context) -> anyhow::Result<(WorkerId, WorkerId)> {
    let ws = ctx.workers();
    match ws.as_slice() {
        [a, b, ..] => Ok((*a, *b)),
        _ => bail!("need two workers, have {ws:?}"),
    }
}

/// W3's chain: `n` increments, alternating between the context's first two workers, every
/// task pinned to its worker; the time from the first spawn to the last fetch.
fn pinned_chain(ctx: &Context, n: u64) -> anyhow::Result<Duration> {
    let (a, b) = two_workers(ctx)?;
    let t = Instant::now();
    let mut prev = inc::with(Options::new().scope(Scope::worker(a))).spawn(ctx, 0)?;
    for i in 1..n {
        let w = if i % 2 == 0 { a } else { b };
        prev = inc::with(Options::new().scope(Scope::worker(w))).spawn(ctx, &prev)?;
    }
    let v = prev.fetch()?;
    let el = t.elapsed();
    ensure!(v == n, "W3 chain wrong: {v} != {n}");
    Ok(el)
}

/// W3's pinned chain with a timeline: where a hop's time goes. Prints the gaps between a
/// task's end and its dependent's start (on the driver's clock, so within the clock
/// alignment's error), and how many tasks ran on the thread processor their worker's
/// previous task of the chain ran on.
fn w3_trace() -> anyhow::Result<()> {
    let ctx = Context::builder().workers(2).timeline(true).build()?;
    pinned_chain(&ctx, 50)?;
    let el = pinned_chain(&ctx, 1000)?;
    line("W3trace", "us_per_hop", el.as_secs_f64() * 1e3, "us");
    let tl = ctx.timeline();
    let mut spans: Vec<_> = tl.tasks().iter().collect();
    spans.sort_by_key(|s| s.started);
    let spans = &spans[spans.len().saturating_sub(1000)..];
    let mut gaps: Vec<f64> = Vec::new();
    let mut same = 0;
    for w in spans.windows(3) {
        gaps.push((w[2].started.as_secs_f64() - w[1].finished.as_secs_f64()) * 1e6);
        same += usize::from(w[2].proc == w[0].proc);
    }
    ensure!(!gaps.is_empty(), "no spans recorded");
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    gaps.sort_by(f64::total_cmp);
    let q = |f: f64| gaps[(f * (gaps.len() - 1) as f64) as usize];
    println!(
        "W3trace gap_us p10 {:.1} p50 {:.1} p90 {:.1} mean {mean:.1}; {same} of {} on the thread of the worker's previous task",
        q(0.1),
        q(0.5),
        q(0.9),
        gaps.len()
    );
    Ok(())
}

fn w3(quick: bool) -> anyhow::Result<()> {
    let ctx = start("W3", Context::builder().workers(2))?;
    let n = if quick { 200 } else { 1000 };
    pinned_chain(&ctx, 50)?;
    let el = pinned_chain(&ctx, n)?;
    line("W3", "us_per_hop", el.as_secs_f64() * 1e6 / n as f64, "us");
    // The same chain with no scopes: the scheduler places every task (a hop may stay
    // inside one process).
    let free_chain = |n: u64| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let mut prev = inc::spawn(&ctx, 0)?;
        for _ in 1..n {
            prev = inc::spawn(&ctx, &prev)?;
        }
        let v = prev.fetch()?;
        let el = t.elapsed();
        ensure!(v == n, "W3 free chain wrong: {v} != {n}");
        Ok(el)
    };
    free_chain(50)?;
    let el = free_chain(n)?;
    line(
        "W3",
        "us_per_hop_free",
        el.as_secs_f64() * 1e6 / n as f64,
        "us",
    );
    // The pinned chain again on a second cluster whose links stay on QUIC (no same-host
    // rings), read against half of `raw_quic_rtt_us`. The variable is read at each
    // connect, by this process and by the workers, which inherit it.
    {
        std::env::set_var("DAGGER_RINGS", "0");
        let quic = Context::builder().workers(2).build();
        std::env::remove_var("DAGGER_RINGS");
        let quic = quic?;
        pinned_chain(&quic, 50)?;
        let el = pinned_chain(&quic, n)?;
        line(
            "W3",
            "us_per_hop_quic",
            el.as_secs_f64() * 1e6 / n as f64,
            "us",
        );
    }
    let id = ctx.driver_identity().context("identity")?.clone();
    let rt = tokio::runtime::Runtime::new()?;
    let rtt = rt.block_on(dagger_net::bench::raw_quic_rtt_us(
        &id,
        if quick { 200 } else { 2000 },
    ))?;
    line("W3", "raw_quic_rtt_us", rtt, "us");
    Ok(())
}

fn transfer(ctx: &Context, count: u64, len: u64) -> anyhow::Result<Duration> {
    let (a, b) = two_workers(ctx)?;
    let t = Instant::now();
    let mut sums = Vec::new();
    for i in 0..count {
        let p = produce::with(Options::new().scope(Scope::worker(a))).spawn(ctx, i, len)?;
        sums.push((
            i,
            checksum::with(Options::new().scope(Scope::worker(b))).spawn(ctx, &p)?,
        ));
    }
    for (i, h) in &sums {
        let s = h.fetch()?;
        ensure!(s == (i % 251) * len, "W4 checksum wrong for buffer {i}");
    }
    Ok(t.elapsed())
}

fn w4(quick: bool) -> anyhow::Result<()> {
    let count = if quick { 8 } else { 32 };
    let len: u64 = 8 << 20;
    let bytes = (count * len) as f64;
    {
        let ctx = start("W4", Context::builder().workers(2).shared_memory(false))?;
        transfer(&ctx, 2, len)?;
        let el = transfer(&ctx, count, len)?;
        line("W4", "MBps", bytes / el.as_secs_f64() / 1e6, "MB/s");
    }
    {
        let ctx = Context::builder().workers(2).shared_memory(true).build()?;
        transfer(&ctx, 2, len)?;
        let el = transfer(&ctx, count, len)?;
        line("W4", "MBps_shm", bytes / el.as_secs_f64() / 1e6, "MB/s");
        let id = ctx.driver_identity().context("identity")?.clone();
        let rt = tokio::runtime::Runtime::new()?;
        let raw = rt.block_on(dagger_net::bench::raw_quic_mbps(
            &id,
            count as usize,
            len as usize,
        ))?;
        line("W4", "raw_quic_MBps", raw, "MB/s");
    }
    let src = vec![7u8; 256 << 20];
    let mut dst = vec![0u8; 256 << 20];
    dst.copy_from_slice(&src); // fault the pages in first
    let t = Instant::now();
    dst.copy_from_slice(&src);
    let el = t.elapsed();
    ensure!(dst[12345] == 7);
    line(
        "W4",
        "raw_memcpy_MBps",
        (256u64 << 20) as f64 / el.as_secs_f64() / 1e6,
        "MB/s",
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    dagger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let Some(id) = args.iter().find(|a| !a.starts_with("--")) else {
        bail!("usage: dagger-bench <W1|W2|W3|W4|W5|W6|L1|W1t|S1|DEV> [--quick]");
    };
    match id.as_str() {
        "W1" => w1(quick),
        "W2" => w2(quick),
        "W3" => w3(quick),
        "W4" => w4(quick),
        "L1" => l1(quick),
        "W5" => w5::w5(quick),
        "W6" => w6::w6(quick),
        "W1t" => w1t(quick),
        "DEV" => dev::dev(quick),
        "S1" => s1::s1(quick),
        // One size of S1 in a fresh driver process; run by S1 itself.
        "S1-run" => match args.iter().filter(|a| !a.starts_with("--")).nth(1) {
            Some(groups) => s1::run(groups),
            None => bail!("usage: dagger-bench S1-run <groups>"),
        },
        // Diagnostics for profiling, not BENCH.md workloads: a chain on one worker
        // (no network hop), W4 without the move, W4's shared-memory half alone, and
        // W3's pinned chain with a timeline of its hops (`W3trace`).
        // W3's pinned chain alone, `DAGGER_BENCH_REPEAT` times after one warm-up.
        "W3pin" => {
            let ctx = Context::builder().workers(2).build()?;
            pinned_chain(&ctx, 50)?;
            for _ in 0..repeat() {
                let el = pinned_chain(&ctx, 1000)?;
                line("W3pin", "us_per_hop", el.as_secs_f64() * 1e3, "us");
            }
            Ok(())
        }
        "W3trace" => w3_trace(),
        // L1's fanout split into its phases, `DAGGER_BENCH_REPEAT` rounds (default 30)
        // after one warm-up: the spawn loop, the fetch loop and dropping the handles,
        // each in ns a task (medians over the rounds), and the whole round's rate.
        "L1split" | "W1split" => {
            let ctx = if id == "W1split" {
                Context::builder().workers(2).build()?
            } else {
                Context::builder().build()?
            };
            let n = 10_000u64;
            let warm: u64 = std::env::var("DAGGER_BENCH_WARM")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(n / 10);
            fanout(&ctx, warm)?;
            let rounds = std::env::var("DAGGER_BENCH_REPEAT").map_or(30, |_| repeat());
            let mut phases: [Vec<f64>; 4] = Default::default();
            // Minor page faults of the whole process (field 10 of /proc/self/stat).
            let faults = || -> u64 {
                std::fs::read_to_string("/proc/self/stat")
                    .ok()
                    .and_then(|s| {
                        let rest = s.rsplit_once(')')?.1.to_string();
                        rest.split_whitespace().nth(7)?.parse().ok()
                    })
                    .unwrap_or(0)
            };
            // A pause before the first round, for a profiler to attach (`DAGGER_BENCH_PAUSE_MS`).
            if let Some(ms) = std::env::var("DAGGER_BENCH_PAUSE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                std::thread::sleep(Duration::from_millis(ms));
            }
            for round in 0..rounds {
                let f0 = faults();
                let t0 = Instant::now();
                let hs: Vec<Handle<u64>> = (0..n)
                    .map(|i| inc::spawn(&ctx, i))
                    .collect::<Result<_, _>>()?;
                let t1 = Instant::now();
                let mut sum = 0u64;
                for h in &hs {
                    sum += h.fetch()?;
                }
                let t2 = Instant::now();
                drop(hs);
                let t3 = Instant::now();
                ensure!(sum == n * (n + 1) / 2, "{id} sum wrong: {sum}");
                let ns = |d: Duration| d.as_secs_f64() * 1e9 / n as f64;
                if round < 3 {
                    let r = format!("round{round}");
                    line(id, &format!("{r}_faults"), (faults() - f0) as f64, "faults");
                    line(id, &format!("{r}_ns_spawn"), ns(t1 - t0), "ns");
                    line(id, &format!("{r}_ns_fetch"), ns(t2 - t1), "ns");
                }
                phases[0].push(ns(t1 - t0));
                phases[1].push(ns(t2 - t1));
                phases[2].push(ns(t3 - t2));
                phases[3].push(n as f64 / (t2 - t0).as_secs_f64());
            }
            for (name, mut v) in ["ns_spawn", "ns_fetch", "ns_drop", "tasks_per_s"]
                .into_iter()
                .zip(phases)
            {
                v.sort_by(f64::total_cmp);
                let unit = if name == "tasks_per_s" {
                    "tasks/s"
                } else {
                    "ns"
                };
                line(id, name, v[v.len() / 2], unit);
                line(id, &format!("{name}_min"), v[0], unit);
                line(id, &format!("{name}_max"), v[v.len() - 1], unit);
            }
            Ok(())
        }
        "W3same" => {
            let ctx = Context::builder().workers(2).build()?;
            let (a, _) = two_workers(&ctx)?;
            for round in 0..2 {
                let t = Instant::now();
                let mut prev = inc::with(Options::new().scope(Scope::worker(a))).spawn(&ctx, 0)?;
                for _ in 1..1000 {
                    prev = inc::with(Options::new().scope(Scope::worker(a))).spawn(&ctx, &prev)?;
                }
                ensure!(prev.fetch()? == 1000);
                if round == 1 {
                    line(
                        "W3same",
                        "us_per_hop",
                        t.elapsed().as_secs_f64() * 1e3,
                        "us",
                    );
                }
            }
            let t = Instant::now();
            for i in 0..1000u64 {
                let h = inc::with(Options::new().scope(Scope::worker(a))).spawn(&ctx, i)?;
                ensure!(h.fetch()? == i + 1);
            }
            line(
                "W3same",
                "us_per_roundtrip_task",
                t.elapsed().as_secs_f64() * 1e3,
                "us",
            );
            Ok(())
        }
        // W4's halves alone, `DAGGER_BENCH_REPEAT` times after the same warm-up.
        "W4shm" | "W4net" => {
            let shm = id == "W4shm";
            let ctx = Context::builder().workers(2).shared_memory(shm).build()?;
            transfer(&ctx, 2, 8 << 20)?;
            let mut el = Duration::ZERO;
            for _ in 0..repeat() {
                el += transfer(&ctx, 32, 8 << 20)?;
            }
            line(
                id,
                if shm { "MBps_shm" } else { "MBps" },
                (repeat() as u64 * 32 * (8 << 20)) as f64 / el.as_secs_f64() / 1e6,
                "MB/s",
            );
            Ok(())
        }
        // W4's ceiling alone (one quinn stream, `DAGGER_BENCH_REPEAT` times), for
        // `perf stat` to set its CPU time beside `W4net`'s.
        "W4raw" => {
            let ctx = Context::builder().workers(2).build()?;
            let id = ctx.driver_identity().context("identity")?.clone();
            let rt = tokio::runtime::Runtime::new()?;
            for _ in 0..repeat() {
                let raw = rt.block_on(dagger_net::bench::raw_quic_mbps(&id, 32, 8 << 20))?;
                line("W4raw", "raw_quic_MBps", raw, "MB/s");
            }
            Ok(())
        }
        "W4local" => {
            let ctx = Context::builder().workers(2).build()?;
            let (a, _) = two_workers(&ctx)?;
            let len: u64 = 8 << 20;
            let t = Instant::now();
            let mut sums = Vec::new();
            for i in 0..32u64 {
                let p =
                    produce::with(Options::new().scope(Scope::worker(a))).spawn(&ctx, i, len)?;
                sums.push(checksum::with(Options::new().scope(Scope::worker(a))).spawn(&ctx, &p)?);
            }
            for h in &sums {
                h.wait()?;
            }
            line(
                "W4local",
                "MBps",
                (32 * len) as f64 / t.elapsed().as_secs_f64() / 1e6,
                "MB/s",
            );
            Ok(())
        }
        other => bail!("unknown workload {other}"),
    }
}
