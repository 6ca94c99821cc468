//! The direct lane: in a context that links no processes, plain tasks run straight on the
//! driver's thread processors, past the scheduler. These tests check that such tasks take
//! the lane (`TaskInfo::direct`), that the lane gives the same results and the same typed
//! errors as the scheduler's path, that the two kinds of task feed each other in both
//! directions (eager and lazy), and that shutting down completes every handle.

use dagger::prelude::*;
use dagger::{Scope, TaskError};
use proptest::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

#[dagger::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[dagger::task]
fn double(x: u64) -> u64 {
    2 * x
}

#[dagger::task]
fn sum(xs: Vec<u64>) -> u64 {
    xs.iter().sum()
}

#[dagger::task]
fn fail_if(x: u64, bad: u64) -> u64 {
    if x == bad {
        panic!("input {x} is the bad one");
    }
    x
}

#[dagger::task]
fn which_thread(x: u64) -> (u64, Option<u32>) {
    (x, dagger::current_processor().map(|p| p.index))
}

#[dagger::task]
fn maybe_fail(x: u64, fail: bool) -> u64 {
    assert!(!fail, "told to fail");
    x
}

/// A gate a task waits at until the test opens it (no timing).
struct Gate {
    open: Mutex<bool>,
    cond: Condvar,
    reached: AtomicBool,
}

impl Gate {
    const fn new() -> Self {
        Self {
            open: Mutex::new(false),
            cond: Condvar::new(),
            reached: AtomicBool::new(false),
        }
    }

    /// Called by the task: blocks until the gate opens.
    fn pass(&self) {
        self.reached.store(true, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cond.wait(open).unwrap();
        }
    }

    /// Waits until a task is at the gate.
    fn wait_reached(&self) {
        while !self.reached.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cond.notify_all();
    }
}

/// For the shutdown test.
static GATE: Gate = Gate::new();
/// For the test that a blocked task holds up no other.
static HOLD: Gate = Gate::new();

#[dagger::task]
fn wait_at_gate(x: u64) -> u64 {
    GATE.pass();
    x
}

#[dagger::task]
fn hold(x: u64) -> u64 {
    HOLD.pass();
    x
}

fn threads() -> Context {
    dagger::init();
    Context::threads().unwrap()
}

/// A scope that sends a task through the scheduler while admitting the same processors.
fn scheduled() -> Options {
    Options::new().scope(Scope::kind(dagger::ProcKind::THREAD))
}

#[test]
fn plain_tasks_of_a_threads_context_take_the_lane() {
    let ctx = threads();
    let a = double::spawn(&ctx, 20).unwrap();
    let b = add::spawn(&ctx, &a, 2).unwrap();
    assert_eq!(b.fetch().unwrap(), 42);
    for h in [&a, &b] {
        let info = h.info().unwrap();
        assert!(info.direct, "{info:?}");
        assert_eq!(info.attempts, 1);
        assert!(info.run_time.is_some());
        assert!(info.processor.starts_with("thread["), "{}", info.processor);
        assert!(ctx.task_info(h.id()).unwrap().direct);
    }
    // The task ran with its processor as the current one, as on a worker.
    let (x, index) = which_thread::spawn(&ctx, 7).unwrap().fetch().unwrap();
    assert_eq!(x, 7);
    assert!(
        index.is_some_and(|i| i > 0),
        "ran on a thread processor: {index:?}"
    );
    let proc = a.info().unwrap().proc.unwrap();
    assert!(ctx.workers().contains(&proc.worker), "{proc:?}");
    let stats = ctx.stats().unwrap();
    assert!(stats.submitted >= 3 && stats.finished >= 3, "{stats:?}");
}

#[test]
fn the_lane_can_be_turned_off_and_other_tasks_never_take_it() {
    dagger::init();
    let off = Context::builder().direct(false).build().unwrap();
    let h = double::spawn(&off, 4).unwrap();
    assert_eq!(h.fetch().unwrap(), 8);
    assert!(!h.info().unwrap().direct);

    let ctx = threads();
    // Options other than the defaults go through the scheduler.
    for opts in [
        scheduled(),
        Options::new().priority(3),
        Options::new().retries(1),
    ] {
        let h = double::with(opts).spawn(&ctx, 5).unwrap();
        assert_eq!(h.fetch().unwrap(), 10);
        assert!(!h.info().unwrap().direct);
    }
    // So does a task that takes a scheduled task's result.
    let s = double::with(scheduled()).spawn(&ctx, 1).unwrap();
    let t = add::spawn(&ctx, &s, 1).unwrap();
    assert_eq!(t.fetch().unwrap(), 3);
    assert!(!t.info().unwrap().direct);

    // A context that records a timeline shows every task: no lane.
    let traced = Context::builder().timeline(true).build().unwrap();
    let h = double::spawn(&traced, 4).unwrap();
    assert_eq!(h.fetch().unwrap(), 8);
    assert!(!h.info().unwrap().direct);
}

#[test]
fn scheduled_tasks_take_results_of_direct_ones_eagerly_and_lazily() {
    let ctx = threads();
    let a = double::spawn(&ctx, 10).unwrap();
    let parts: Vec<_> = (0..5).map(|i| double::spawn(&ctx, i).unwrap()).collect();
    // Scheduled, fed by direct tasks: each input arrives as a value.
    let s = add::with(scheduled()).spawn(&ctx, &a, 1).unwrap();
    let g = sum::with(scheduled()).spawn(&ctx, &parts).unwrap();
    assert_eq!(s.fetch().unwrap(), 21);
    assert_eq!(g.fetch().unwrap(), 20);
    assert!(!s.info().unwrap().direct && !g.info().unwrap().direct);
    // A direct task after a scheduled one after a direct one.
    let d = double::spawn(&ctx, &s).unwrap();
    assert_eq!(d.fetch().unwrap(), 42);
    // A lazy graph that takes direct tasks' results.
    let lazy = add::delayed(&a, sum::delayed(parts.as_slice()));
    assert_eq!(ctx.collect(lazy).unwrap(), 40);
}

#[test]
fn plain_lazy_graphs_take_the_lane_too() {
    let ctx = threads();
    let leaves: Vec<_> = (1..=10).map(double::delayed).collect();
    let root = add::delayed(sum::delayed(leaves), 1);
    let handle = ctx.spawn_graph(root).unwrap();
    assert_eq!(handle.fetch().unwrap(), 111);
    assert!(handle.info().unwrap().direct);
    // A lazy chain of 100,000 tasks.
    let mut chain = double::delayed(0);
    for _ in 0..100_000 {
        chain = add::delayed(chain, 1);
    }
    assert_eq!(ctx.collect(chain).unwrap(), 100_000);
    // A node that is not plain goes to the scheduler, fed by a direct node; the node that
    // takes its result goes there too.
    let mixed = add::delayed(double::with(scheduled()).delayed(double::delayed(5)), 2);
    let h = ctx.spawn_graph(mixed).unwrap();
    assert_eq!(h.fetch().unwrap(), 22);
    assert!(!h.info().unwrap().direct);
}

/// A direct task is found by its id once the id was handed out: a task given it by id
/// (in wire form, through `spawn_by_name`) takes its result on the lane like one given
/// the handle.
#[test]
fn a_direct_task_named_by_id_feeds_its_dependent() {
    let ctx = threads();
    let a = double::spawn(&ctx, 20).unwrap();
    let by_id: Handle<u64> = ctx
        .spawn_by_name(
            add::NAME,
            vec![
                dagger::Arg::Task(a.id()),
                dagger::Arg::Value(postcard::to_stdvec(&2u64).unwrap()),
            ],
            Options::new(),
        )
        .unwrap();
    assert_eq!(by_id.fetch().unwrap(), 42);
    assert!(
        by_id.info().unwrap().direct,
        "named by id, still on the lane"
    );
    // The same after the task finished, and gathered.
    let parts: Vec<_> = (1..=3).map(|i| double::spawn(&ctx, i).unwrap()).collect();
    for p in &parts {
        p.wait().unwrap();
    }
    let gathered: Handle<u64> = ctx
        .spawn_by_name(
            sum::NAME,
            vec![dagger::Arg::Gather(
                parts.iter().map(|p| dagger::Part::Task(p.id())).collect(),
            )],
            Options::new(),
        )
        .unwrap();
    assert_eq!(gathered.fetch().unwrap(), 12);
    assert!(gathered.info().unwrap().direct);
}

#[test]
fn gathered_inputs_mix_values_and_results() {
    let ctx = threads();
    let hs: Vec<_> = (1..=100).map(|i| double::spawn(&ctx, i).unwrap()).collect();
    let total = sum::spawn(&ctx, &hs).unwrap();
    assert_eq!(total.fetch().unwrap(), 10_100);
    assert!(total.info().unwrap().direct);
    let none: Vec<Handle<u64>> = Vec::new();
    assert_eq!(sum::spawn(&ctx, &none).unwrap().fetch().unwrap(), 0);
}

#[test]
fn failures_are_typed_and_reach_every_dependent() {
    let ctx = threads();
    let bad = fail_if::spawn(&ctx, 3, 3).unwrap();
    match bad.fetch() {
        Err(TaskError::Panicked { message, .. }) => assert!(message.contains("bad one")),
        other => panic!("expected a panic, got {other:?}"),
    }
    // A direct dependent, and a dependent of that.
    let dep = double::spawn(&ctx, &bad).unwrap();
    let dep2 = double::spawn(&ctx, &dep).unwrap();
    for (h, input) in [(&dep, bad.id()), (&dep2, dep.id())] {
        match h.fetch() {
            Err(TaskError::DependencyFailed {
                task, dependency, ..
            }) => {
                assert_eq!((task, dependency), (h.id(), input));
            }
            other => panic!("expected DependencyFailed, got {other:?}"),
        }
    }
    // A scheduled dependent, and a lazy graph over the failed task.
    let sched = double::with(scheduled()).spawn(&ctx, &bad).unwrap();
    assert!(matches!(
        sched.fetch(),
        Err(TaskError::DependencyFailed { dependency, .. }) if dependency == bad.id()
    ));
    assert!(ctx.collect(double::delayed(&bad)).is_err());
    let stats = ctx.stats().unwrap();
    assert!(stats.failed >= 3, "{stats:?}");
    // A type mismatch is refused at submission, as on the scheduler's path.
    let cast: Handle<String> = double::spawn(&ctx, 1).unwrap().cast();
    assert!(cast.fetch().is_err());
}

#[test]
fn a_blocked_task_holds_up_no_other() {
    dagger::init();
    let ctx = Context::builder().worker_threads(2).build().unwrap();
    let held = hold::spawn(&ctx, 1).unwrap();
    HOLD.wait_reached();
    // Every one of these must run on the other thread while the first one blocks; none
    // may wait in a queue behind it.
    let quick: Vec<_> = (0..64).map(|i| double::spawn(&ctx, i).unwrap()).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let sum: u64 = quick.iter().map(|h| h.fetch().unwrap()).sum();
        let _ = tx.send(sum);
    });
    // A generous bound only so that a regression fails instead of hanging the suite.
    let got = rx.recv_timeout(std::time::Duration::from_secs(120));
    HOLD.open();
    assert_eq!(
        got,
        Ok(2 * (0..64).sum::<u64>()),
        "quick tasks waited behind a blocked one"
    );
    assert_eq!(held.fetch().unwrap(), 1);
    assert!(held.info().unwrap().direct);
}

#[test]
fn a_long_chain_stays_linear_and_is_correct() {
    let ctx = threads();
    let mut h = double::spawn(&ctx, 0).unwrap();
    for _ in 0..100_000 {
        h = add::spawn(&ctx, &h, 1).unwrap();
    }
    assert_eq!(h.fetch().unwrap(), 100_000);
}

#[test]
fn shutdown_completes_every_waiting_direct_task() {
    let ctx = threads();
    let first = wait_at_gate::spawn(&ctx, 1).unwrap();
    // A long chain waits behind it: failing it must not recurse once per task.
    let mut chain = vec![add::spawn(&ctx, &first, 1).unwrap()];
    for _ in 0..50_000 {
        let next = add::spawn(&ctx, chain.last().unwrap(), 1).unwrap();
        chain.push(next);
    }
    GATE.wait_reached();
    // Shutting down does not wait for the running task.
    ctx.shutdown();
    assert!(
        double::spawn(&ctx, 1).is_err(),
        "a closed context refuses tasks"
    );
    GATE.open();
    // Every handle completes; what did not run failed with `Shutdown`.
    let mut shut = 0;
    for h in &chain {
        match h.fetch() {
            Ok(_) => {}
            Err(TaskError::Shutdown { task }) => {
                assert_eq!(task, h.id());
                shut += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(shut, chain.len(), "the whole chain was waiting at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_handles_can_be_awaited() {
    let ctx = tokio::task::spawn_blocking(threads).await.unwrap();
    let a = double::spawn(&ctx, 21).unwrap();
    assert_eq!(a.clone().await.unwrap(), 42);
    let b = add::spawn(&ctx, &a, 0).unwrap();
    assert_eq!(b.await.unwrap(), 42);
    tokio::task::spawn_blocking(move || ctx.shutdown())
        .await
        .unwrap();
}

/// One node of a random graph: its inputs (earlier nodes), and whether it is scheduled.
#[derive(Debug, Clone)]
struct Node {
    inputs: Vec<usize>,
    scheduled: bool,
    fails: bool,
}

fn graphs() -> impl Strategy<Value = Vec<Node>> {
    prop::collection::vec(
        (
            prop::collection::vec(any::<prop::sample::Index>(), 0..4),
            any::<bool>(),
            0u8..20,
        ),
        1..40,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (ins, scheduled, f))| Node {
                inputs: if i == 0 {
                    vec![]
                } else {
                    ins.iter().map(|x| x.index(i)).collect()
                },
                scheduled,
                fails: f == 0,
            })
            .collect()
    })
}

/// The expected result of each node: the sum of its inputs plus its index, or `None` if
/// it or an input failed.
fn expected(graph: &[Node]) -> Vec<Option<u64>> {
    let mut out: Vec<Option<u64>> = Vec::with_capacity(graph.len());
    for (i, n) in graph.iter().enumerate() {
        let v = n
            .inputs
            .iter()
            .map(|&j| out[j])
            .sum::<Option<u64>>()
            .filter(|_| !n.fails)
            .map(|s| s + i as u64);
        out.push(v);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random graphs of direct and scheduled tasks, some failing, give what the graph
    /// means, node by node.
    #[test]
    fn mixed_graphs_give_the_same_results_as_the_scheduler(graph in graphs()) {
        dagger::init();
        static CTX: std::sync::OnceLock<Context> = std::sync::OnceLock::new();
        let ctx = CTX.get_or_init(|| Context::threads().unwrap());
        let mut hs: Vec<Handle<u64>> = Vec::new();
        for (i, n) in graph.iter().enumerate() {
            let ins: Vec<Handle<u64>> = n.inputs.iter().map(|&j| hs[j].clone()).collect();
            let total = if n.scheduled {
                sum::with(scheduled()).spawn(ctx, &ins).unwrap()
            } else {
                sum::spawn(ctx, &ins).unwrap()
            };
            let with_index = add::spawn(ctx, &total, i as u64).unwrap();
            hs.push(maybe_fail::spawn(ctx, &with_index, n.fails).unwrap());
        }
        for (i, (h, want)) in hs.iter().zip(expected(&graph)).enumerate() {
            let got = h.fetch().ok();
            prop_assert_eq!(got, want, "node {} of {:?}", i, graph);
        }
    }
}
