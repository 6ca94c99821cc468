//! Real processes under real faults: `dagger-chaos --graphs N [--seed S]` runs N random
//! graphs, each on a fresh local cluster of 3 worker processes linked by QUIC with mutual
//! TLS. While a graph runs, a chaos thread SIGKILLs random worker processes at random times
//! and SIGSTOPs another for a random while (sometimes longer than the heartbeat timeout,
//! so it is declared lost, sometimes shorter, so it is not), then SIGCONTs it. Every result
//! is checked against the same functions computed in this process. The pool also changes
//! under it: a worker process is added, and a worker is removed (drained) — plainly, with a
//! deadline, or killed while its drain runs, or while another worker (perhaps the one
//! receiving its results) is killed. A wrong or missing result, a typed error, a drain that
//! never resolves, or a graph that does not finish within its guard fails the run with the
//! seed to replay.
//!
//! `cargo xtask chaos --real N` builds and runs it.

use anyhow::{bail, Context as _};
use dagger::prelude::*;
use dagger::{ClusterEvent, ClusterEvents};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rustix::process::{kill_process, Pid, Signal};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A graph that has not finished after this long is a hang.
const GUARD: Duration = Duration::from_secs(180);

fn mix(a: u64, b: u64) -> u64 {
    (a ^ b.rotate_left(17))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
}

#[dagger::task]
fn source(i: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    mix(i, 1)
}

#[dagger::task]
fn join2(a: u64, b: u64, salt: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    mix(mix(a, b), salt)
}

/// A result large enough to stay on its worker (fetched and moved as a chunk).
#[dagger::task]
fn spread(a: u64, len: u64) -> Vec<u64> {
    (0..len).map(|k| mix(a, k)).collect()
}

#[dagger::task]
fn fold(v: Vec<u64>, b: u64) -> u64 {
    v.iter().fold(b, |acc, &x| mix(acc, x))
}

/// One node of the graph, as built here and as computed by the oracle.
enum Node {
    Source {
        i: u64,
        ms: u64,
    },
    Join {
        a: usize,
        b: usize,
        salt: u64,
        ms: u64,
    },
    Spread {
        a: usize,
        len: u64,
    },
    Fold {
        v: usize,
        b: usize,
    },
}

enum Value {
    Int(u64),
    Vec(Vec<u64>),
}

fn random_graph(rng: &mut StdRng) -> Vec<Node> {
    let mut nodes = Vec::new();
    let width = rng.random_range(8..=24usize);
    let mut layer: Vec<usize> = (0..width)
        .map(|i| {
            nodes.push(Node::Source {
                i: i as u64,
                ms: rng.random_range(2..=30),
            });
            nodes.len() - 1
        })
        .collect();
    let layers = rng.random_range(6..=10);
    for _ in 0..layers {
        let width = rng.random_range(12..=40usize);
        let mut next = Vec::with_capacity(width);
        for _ in 0..width {
            let a = layer[rng.random_range(0..layer.len())];
            let b = layer[rng.random_range(0..layer.len())];
            let node = if rng.random_range(0..6) == 0 {
                nodes.push(Node::Spread {
                    a,
                    len: rng.random_range(4_096..=32_768),
                });
                Node::Fold {
                    v: nodes.len() - 1,
                    b,
                }
            } else {
                Node::Join {
                    a,
                    b,
                    salt: rng.random(),
                    ms: rng.random_range(2..=30),
                }
            };
            nodes.push(node);
            next.push(nodes.len() - 1);
        }
        layer = next;
    }
    nodes
}

fn oracle(nodes: &[Node]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(nodes.len());
    let int = |out: &[Value], i: usize| match out[i] {
        Value::Int(x) => x,
        Value::Vec(_) => unreachable!("an integer node"),
    };
    for n in nodes {
        let v = match *n {
            Node::Source { i, .. } => Value::Int(mix(i, 1)),
            Node::Join { a, b, salt, .. } => Value::Int(mix(mix(int(&out, a), int(&out, b)), salt)),
            Node::Spread { a, len } => {
                let a = int(&out, a);
                Value::Vec((0..len).map(|k| mix(a, k)).collect())
            }
            Node::Fold { v, b } => {
                let b = int(&out, b);
                match &out[v] {
                    Value::Vec(v) => Value::Int(v.iter().fold(b, |acc, &x| mix(acc, x))),
                    Value::Int(_) => unreachable!("a vector node"),
                }
            }
        };
        out.push(v);
    }
    out
}

enum Spawned {
    Int(Handle<u64>),
    Vec(Handle<Vec<u64>>),
}

fn spawn(ctx: &Context, nodes: &[Node]) -> anyhow::Result<Vec<Spawned>> {
    let mut hs: Vec<Spawned> = Vec::with_capacity(nodes.len());
    let int = |hs: &[Spawned], i: usize| match &hs[i] {
        Spawned::Int(h) => h.clone(),
        Spawned::Vec(_) => unreachable!("an integer node"),
    };
    for n in nodes {
        let h = match *n {
            Node::Source { i, ms } => Spawned::Int(source::spawn(ctx, i, ms)?),
            Node::Join { a, b, salt, ms } => {
                Spawned::Int(join2::spawn(ctx, &int(&hs, a), &int(&hs, b), salt, ms)?)
            }
            Node::Spread { a, len } => Spawned::Vec(spread::spawn(ctx, &int(&hs, a), len)?),
            Node::Fold { v, b } => {
                let Spawned::Vec(v) = &hs[v] else {
                    unreachable!("a vector node")
                };
                Spawned::Int(fold::spawn(ctx, v, &int(&hs, b))?)
            }
        };
        hs.push(h);
    }
    Ok(hs)
}

fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        // The process may have died already (killed twice, replaced): nothing to do then.
        let _ = kill_process(pid, sig);
    }
}

/// What the chaos thread did.
#[derive(Default, Debug)]
struct Faults {
    kills: u32,
    stops: u32,
    added: u32,
    /// Removals accepted, and the drains they started.
    drains: Vec<dagger::Drain>,
    /// Removals refused (they would have stranded a task).
    refused: u32,
}

/// How the chaos thread removes a worker.
#[derive(Clone, Copy, Debug)]
enum Removal {
    Plain,
    Deadline(u64),
    /// Kill the drained worker this many ms after the removal.
    KillIt(u64),
    /// Kill another worker this many ms after the removal.
    KillOther(u64),
}

/// SIGKILLs and SIGSTOP/SIGCONTs worker processes of `ctx` at random times until `done`.
fn chaos(ctx: Context, mut rng: StdRng, done: Arc<AtomicBool>) -> Faults {
    let mut faults = Faults::default();
    let kills = rng.random_range(1..=2u32);
    let nap = |rng: &mut StdRng, done: &AtomicBool, lo: u64, hi: u64| {
        let until = Instant::now() + Duration::from_millis(rng.random_range(lo..=hi));
        while Instant::now() < until {
            if done.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        !done.load(Ordering::Relaxed)
    };
    // The faults of this graph, in a random order: kills, one pause, one growth and one
    // removal.
    #[derive(Clone, Copy)]
    enum Act {
        Kill,
        Stop,
        Grow,
        Remove,
    }
    let mut acts: Vec<Act> = (0..kills).map(|_| Act::Kill).collect();
    acts.extend([Act::Stop, Act::Grow, Act::Remove]);
    for k in (1..acts.len()).rev() {
        acts.swap(k, rng.random_range(0..=k));
    }
    for act in acts {
        if !nap(&mut rng, &done, 50, 500) {
            break;
        }
        let pids = ctx.local_worker_pids();
        if pids.is_empty() {
            continue;
        }
        let pid = pids[rng.random_range(0..pids.len())];
        match act {
            Act::Stop => {
                faults.stops += 1;
                signal(pid, Signal::STOP);
                // Shorter or longer than the heartbeat timeout (900 ms by default).
                let held = rng.random_range(100..=1_800);
                std::thread::sleep(Duration::from_millis(held));
                signal(pid, Signal::CONT);
            }
            Act::Kill => {
                faults.kills += 1;
                signal(pid, Signal::KILL);
            }
            Act::Grow => {
                if let Some(launcher) = ctx.local_launcher() {
                    match ctx.add_workers(&launcher, 1) {
                        Ok(_) => faults.added += 1,
                        Err(e) => eprintln!("chaos: adding a worker failed: {e}"),
                    }
                }
            }
            Act::Remove => remove_one(&ctx, &mut rng, &mut faults),
        }
    }
    faults
}

/// Removes one random worker (while two or more accept work), in a random way.
fn remove_one(ctx: &Context, rng: &mut StdRng, faults: &mut Faults) {
    let workers = ctx.workers();
    if workers.len() < 2 {
        return;
    }
    let victim = workers[rng.random_range(0..workers.len())];
    let how = match rng.random_range(0..4) {
        0 => Removal::Plain,
        1 => Removal::Deadline(rng.random_range(50..=1_500)),
        2 => Removal::KillIt(rng.random_range(0..=300)),
        _ => Removal::KillOther(rng.random_range(0..=300)),
    };
    let options = match how {
        Removal::Deadline(ms) => dagger::DrainOptions::new().deadline(Duration::from_millis(ms)),
        _ => dagger::DrainOptions::new(),
    };
    let pid_of = |w: WorkerId| ctx.topology().worker(w).map(|i| i.pid);
    let victim_pid = pid_of(victim);
    match ctx.remove_workers_with(&[victim], options) {
        Ok(drains) => faults.drains.extend(drains),
        Err(dagger::RemoveError::Drain(dagger::DrainError::WouldStrand { .. })) => {
            faults.refused += 1;
            return;
        }
        Err(e) => {
            eprintln!("chaos: removing {victim} failed: {e}");
            return;
        }
    }
    let target = match how {
        Removal::KillIt(ms) => Some((ms, victim_pid)),
        Removal::KillOther(ms) => {
            let others: Vec<WorkerId> = workers.into_iter().filter(|&w| w != victim).collect();
            let other = others[rng.random_range(0..others.len())];
            Some((ms, pid_of(other)))
        }
        _ => None,
    };
    if let Some((ms, Some(pid))) = target {
        std::thread::sleep(Duration::from_millis(ms));
        faults.kills += 1;
        signal(pid, Signal::KILL);
    }
}

#[derive(Default, Debug)]
struct Seen {
    lost: u32,
    reasons: Vec<String>,
    restarted: u32,
    retried: u32,
}

fn count(events: &mut ClusterEvents, seen: &mut Seen) {
    while let Ok(e) = events.try_recv() {
        match e {
            ClusterEvent::WorkerLost { worker, reason } => {
                seen.lost += 1;
                seen.reasons.push(format!("{worker}: {reason}"));
            }
            ClusterEvent::WorkerRestarted { .. } => seen.restarted += 1,
            ClusterEvent::TaskRetried { .. } => seen.retried += 1,
            _ => {}
        }
    }
}

fn one_graph(seed: u64) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let nodes = random_graph(&mut rng);
    let expected = oracle(&nodes);
    let ctx = Context::builder()
        .workers(3)
        .worker_threads(2)
        .build()
        .context("starting the cluster")?;
    let mut events = ctx.subscribe();
    let done = Arc::new(AtomicBool::new(false));
    let chaos_thread = {
        let (ctx, rng, done) = (ctx.clone(), StdRng::seed_from_u64(!seed), done.clone());
        std::thread::spawn(move || chaos(ctx, rng, done))
    };
    let t = Instant::now();
    let hs = spawn(&ctx, &nodes)?;
    let mut seen = Seen::default();
    let checked = check(&hs, &expected);
    count(&mut events, &mut seen);
    if let Err(e) = checked {
        done.store(true, Ordering::Relaxed);
        let faults = chaos_thread.join();
        bail!("{e:#}; faults {faults:?}; losses {:?}", seen.reasons);
    }
    let elapsed = t.elapsed();
    done.store(true, Ordering::Relaxed);
    let faults = chaos_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the chaos thread panicked"))?;
    count(&mut events, &mut seen);
    let mut outcomes = Vec::new();
    for d in &faults.drains {
        let Some(r) = d.wait_timeout(GUARD) else {
            bail!("the drain of {} never resolved", d.worker());
        };
        outcomes.push(format!("{} {}", r.worker, drain_kind(&r.outcome)));
    }
    println!(
        "seed {seed}: {} tasks right in {:.2}s; {} kill(s), {} pause(s), {} added, {} removal(s) [{}] ({} refused); {} worker(s) lost, {} restarted, {} task retries",
        nodes.len(),
        elapsed.as_secs_f64(),
        faults.kills,
        faults.stops,
        faults.added,
        faults.drains.len(),
        outcomes.join(", "),
        faults.refused,
        seen.lost,
        seen.restarted,
        seen.retried,
    );
    ctx.shutdown();
    Ok(())
}

fn drain_kind(o: &dagger::DrainOutcome) -> &'static str {
    match o {
        dagger::DrainOutcome::Drained { .. } => "drained",
        dagger::DrainOutcome::DeadlineExceeded { .. } => "past its deadline",
        dagger::DrainOutcome::HandoverFailed { .. } => "hand-over failed",
        dagger::DrainOutcome::Lost { .. } => "lost while draining",
        _ => "shut down",
    }
}

/// Fetches every node's result and compares it with the oracle's.
fn check(hs: &[Spawned], expected: &[Value]) -> anyhow::Result<()> {
    for (i, (h, want)) in hs.iter().zip(expected).enumerate() {
        match (h, want) {
            (Spawned::Int(h), Value::Int(want)) => {
                let got = h.fetch().with_context(|| format!("node {i}"))?;
                if got != *want {
                    bail!("node {i}: {got} != {want}");
                }
            }
            (Spawned::Vec(h), Value::Vec(want)) => {
                let got = h.fetch().with_context(|| format!("node {i}"))?;
                if got != *want {
                    bail!("node {i}: a vector of {} differs", want.len());
                }
            }
            _ => bail!("node {i}: kinds differ"),
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    dagger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> anyhow::Result<Option<u64>> {
        match args.iter().position(|a| a == name) {
            None => Ok(None),
            Some(i) => Ok(Some(
                args.get(i + 1)
                    .with_context(|| format!("{name} needs a value"))?
                    .parse()
                    .with_context(|| format!("{name} takes a number"))?,
            )),
        }
    };
    let graphs = value("--graphs")?.unwrap_or(5);
    let first = value("--seed")?.unwrap_or(1);
    // A hang guard: the process fails rather than blocking CI forever.
    let deadline = Duration::from_secs(GUARD.as_secs() * graphs.max(1));
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!("dagger-chaos: no end after {deadline:?}: a hang");
        std::process::exit(2);
    });
    let t = Instant::now();
    for seed in first..first + graphs {
        if let Err(e) = one_graph(seed) {
            bail!("seed {seed} failed (replay: cargo xtask chaos --real 1 --seed {seed}): {e:#}");
        }
    }
    println!(
        "dagger-chaos: {graphs} graph(s) right in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
