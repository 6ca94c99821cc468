//! End to end over real worker processes (re-executions of this test binary) linked by
//! QUIC with mutual TLS on loopback. Each test calls `dagger::init()` first: in a worker
//! process that call joins the cluster and never returns.

use dagger::prelude::*;
use dagger::{Collect, SubmitError};
use serde_bytes::ByteBuf;

#[dagger::task]
fn inc(x: u64) -> u64 {
    x + 1
}

#[dagger::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[dagger::task]
fn boom(x: u64) -> u64 {
    if x == 13 {
        panic!("unlucky number {x}");
    }
    x
}

#[dagger::task]
fn where_am_i(_i: u64) -> u32 {
    dagger::current_worker().get()
}

#[dagger::task]
fn big(len: u64, fill: u8) -> ByteBuf {
    ByteBuf::from(vec![fill; len as usize])
}

#[dagger::task]
fn sum_bytes(b: ByteBuf) -> u64 {
    b.iter().map(|&x| x as u64).sum()
}

/// The sum of `b`'s bytes, and how many shared-memory objects created by process
/// `writer_pid` this process has mapped while it runs (a reader keeps each segment it was
/// lent mapped, so an input that came through shared memory shows here; the objects are
/// unlinked, and listed as deleted, by then).
#[dagger::task]
fn sum_bytes_counting_shm_maps(b: ByteBuf, writer_pid: u32) -> (u64, usize) {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps readable");
    // Object names start with the writing worker's prefix, `dagger-<its pid>-`.
    let from_writer = format!("/dev/shm/dagger-{writer_pid}-");
    let objects: std::collections::BTreeSet<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|path| path.starts_with(&from_writer))
        .collect();
    (b.iter().map(|&x| x as u64).sum(), objects.len())
}

/// Two worker processes, linked by QUIC.
#[cfg(feature = "quic")]
fn cluster() -> Context {
    Context::builder()
        .workers(2)
        .test_harness()
        .worker_threads(2)
        .build()
        .expect("local cluster starts")
}

#[cfg(feature = "quic")]
#[test]
fn eager_and_lazy_graphs_give_checked_results() {
    dagger::init();
    let ctx = cluster();
    assert_eq!(ctx.workers().len(), 2);
    let a = inc::spawn(&ctx, 1).unwrap();
    let b = add::spawn(&ctx, &a, 10).unwrap();
    assert_eq!(b.fetch().unwrap(), 12);
    assert_eq!(a.fetch().unwrap(), 2);

    let g = add::delayed(inc::delayed(1), 10);
    assert_eq!(ctx.collect(g).unwrap(), 12);

    // A shared lazy node is one task, not two.
    let shared = inc::delayed(5);
    let both = add::delayed(&shared, &shared);
    assert_eq!(ctx.collect(both).unwrap(), 12);

    // Many independent tasks, all gathered.
    let hs: Vec<_> = (0..500u64).map(|i| inc::spawn(&ctx, i).unwrap()).collect();
    let sum: u64 = hs.iter().map(|h| h.fetch().unwrap()).sum();
    assert_eq!(sum, (1..=500u64).sum::<u64>());

    // A vector of lazy tasks collects into a vector of results.
    let v: Vec<u64> = ctx
        .collect((0..20u64).map(inc::delayed).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(v, (1..=20).collect::<Vec<_>>());

    // Both workers ran something, and the tasks ran in worker processes, not the driver.
    let ids: std::collections::BTreeSet<u32> = (0..64u64)
        .map(|i| where_am_i::spawn(&ctx, i).unwrap())
        .map(|h| h.fetch().unwrap())
        .collect();
    assert!(!ids.contains(&0), "tasks ran in the driver: {ids:?}");
    let info = b.info().unwrap();
    assert!(info.processor.starts_with("thread["), "{}", info.processor);
    assert_ne!(info.proc.unwrap().worker, WorkerId::DRIVER);
}

#[cfg(feature = "quic")]
#[test]
fn a_panicking_task_is_a_typed_error_and_the_others_finish() {
    dagger::init();
    let ctx = cluster();
    let hs: Vec<_> = (0..30u64).map(|i| boom::spawn(&ctx, i).unwrap()).collect();
    let dependent = add::spawn(&ctx, &hs[13], 1).unwrap();
    for (i, h) in hs.iter().enumerate() {
        match h.fetch() {
            Ok(v) => assert_eq!(v, i as u64),
            Err(TaskError::Panicked {
                task,
                func,
                message,
            }) => {
                assert_eq!(i, 13);
                assert_eq!(task, h.id());
                assert!(func.ends_with("boom"), "{func}");
                assert!(message.contains("unlucky number 13"), "{message}");
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    match dependent.fetch() {
        Err(TaskError::DependencyFailed { dependency, .. }) => assert_eq!(dependency, hs[13].id()),
        other => panic!("expected DependencyFailed, got {other:?}"),
    }
    // The cluster still works.
    assert_eq!(inc::spawn(&ctx, 41).unwrap().fetch().unwrap(), 42);
}

#[cfg(feature = "quic")]
#[test]
fn fetching_as_the_wrong_type_is_a_type_mismatch() {
    dagger::init();
    let ctx = cluster();
    let h = inc::spawn(&ctx, 1).unwrap();
    let wrong: Handle<String> = h.clone().cast();
    match wrong.fetch() {
        Err(TaskError::TypeMismatch {
            expected, found, ..
        }) => {
            assert!(expected.contains("String"), "{expected}");
            assert_eq!(found, "u64");
        }
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
    assert_eq!(h.fetch().unwrap(), 2);
}

#[cfg(feature = "quic")]
#[test]
fn an_unknown_task_name_is_reported_by_the_worker() {
    dagger::init();
    let ctx = cluster();
    let h: Handle<u64> = ctx
        .spawn_by_name("no::such::task", vec![], Options::new())
        .unwrap();
    match h.fetch() {
        Err(TaskError::UnknownFunction { func, worker, .. }) => {
            assert_eq!(func, "no::such::task");
            assert_ne!(worker, WorkerId::DRIVER);
        }
        other => panic!("expected UnknownFunction, got {other:?}"),
    }
    // Wrong arguments for a known function are a typed error too.
    let bad: Handle<u64> = ctx
        .spawn_by_name(inc::NAME, vec![dagger_core_arg(b"")], Options::new())
        .unwrap();
    assert!(
        matches!(bad.fetch(), Err(TaskError::BadArguments { .. })),
        "{:?}",
        bad.fetch()
    );
}

#[cfg(feature = "quic")]
fn dagger_core_arg(bytes: &[u8]) -> dagger::Arg {
    dagger::Arg::Value(bytes.to_vec())
}

#[cfg(feature = "quic")]
#[test]
fn scopes_pin_tasks_to_workers_and_large_results_move_worker_to_worker() {
    dagger::init();
    let ctx = cluster();
    let ws = ctx.workers();
    let (a, b) = (ws[0], ws[1]);
    for w in [a, b] {
        for i in 0..10u64 {
            let h = where_am_i::with(Options::new().scope(Scope::worker(w)))
                .spawn(&ctx, i)
                .unwrap();
            assert_eq!(WorkerId(h.fetch().unwrap()), w);
        }
    }
    // 4 MiB is far above the inline limit: it stays on `a` and moves straight to `b`.
    let len = 4u64 << 20;
    let p = big::with(Options::new().scope(Scope::worker(a)))
        .spawn(&ctx, len, 3)
        .unwrap();
    let c = sum_bytes::with(Options::new().scope(Scope::worker(b)))
        .spawn(&ctx, &p)
        .unwrap();
    assert_eq!(c.fetch().unwrap(), 3 * len);
    assert_eq!(p.info().unwrap().proc.unwrap().worker, a);
    assert_eq!(c.info().unwrap().proc.unwrap().worker, b);
    // Fetching the large result brings it to the driver.
    assert_eq!(p.fetch().unwrap().len() as u64, len);
    // A chain alternating between the two workers.
    let mut prev = inc::with(Options::new().scope(Scope::worker(a)))
        .spawn(&ctx, 0)
        .unwrap();
    for i in 1..50u64 {
        let w = if i % 2 == 0 { a } else { b };
        prev = inc::with(Options::new().scope(Scope::worker(w)))
            .spawn(&ctx, &prev)
            .unwrap();
    }
    assert_eq!(prev.fetch().unwrap(), 50);
}

/// Large results moved between two workers of one host: with shared memory on, the reader
/// maps the writer's segments (seen in its `/proc/self/maps`); with it off, it maps none of
/// the writer's objects. Both give the right sums.
#[cfg(feature = "quic")]
#[test]
fn same_host_moves_use_shared_memory_or_the_network_and_agree() {
    dagger::init();
    for shm in [false, true] {
        let ctx = Context::builder()
            .workers(2)
            .test_harness()
            .worker_threads(1)
            .shared_memory(shm)
            .build()
            .unwrap();
        let topo = ctx.topology().to_string();
        assert_eq!(topo.contains("shortcut shm"), shm, "{topo}");
        let ws = ctx.workers();
        let writer_pid = ctx.topology().worker(ws[0]).unwrap().pid;
        let len = 1u64 << 20;
        let hs: Vec<_> = (0..8u64)
            .map(|i| {
                let p = big::with(Options::new().scope(Scope::worker(ws[0])))
                    .spawn(&ctx, len, i as u8)
                    .unwrap();
                sum_bytes_counting_shm_maps::with(Options::new().scope(Scope::worker(ws[1])))
                    .spawn(&ctx, &p, writer_pid)
                    .unwrap()
            })
            .collect();
        for (i, h) in hs.iter().enumerate() {
            let (sum, shm_maps) = h.fetch().unwrap();
            assert_eq!(sum, i as u64 * len);
            // With shared memory on, the reader holds the writer's segment that carried
            // this input (or an earlier one's, reused); with it off, nothing of the writer.
            if shm {
                assert!(shm_maps > 0, "input {i} did not come through shared memory");
            } else {
                assert_eq!(shm_maps, 0, "input {i} came through shared memory");
            }
        }
    }
}

#[cfg(feature = "quic")]
#[test]
fn async_await_works() {
    dagger::init();
    let ctx = cluster();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let v = rt.block_on(async {
        let a = inc::spawn(&ctx, 1).unwrap();
        let b = add::spawn(&ctx, &a, 2).unwrap();
        b.await
    });
    assert_eq!(v.unwrap(), 4);
}

#[test]
fn a_handle_from_another_context_is_refused() {
    dagger::init();
    let one = Context::threads().unwrap();
    let two = Context::threads().unwrap();
    let h = inc::spawn(&one, 1).unwrap();
    match add::spawn(&two, &h, 1) {
        Err(SubmitError::ForeignHandle { task }) => assert_eq!(task, h.id()),
        other => panic!("expected ForeignHandle, got {other:?}"),
    }
    // Lazy graphs run on the driver's own cores too.
    let handle = inc::delayed(1).spawn_all(&two).unwrap();
    assert_eq!(handle.fetch().unwrap(), 2);
    assert_eq!(h.fetch().unwrap(), 2);
}

#[test]
fn a_dependency_the_scheduler_never_saw_is_a_typed_refusal() {
    dagger::init();
    let ctx = Context::threads().unwrap();
    let ghost = dagger::TaskId(u64::MAX / 2);
    let h: Handle<u64> = ctx
        .spawn_by_name(inc::NAME, vec![dagger::Arg::Task(ghost)], Options::new())
        .unwrap();
    match h.fetch() {
        Err(TaskError::Rejected {
            task,
            error: dagger::GraphError::UnknownDependency { dependency, .. },
        }) => {
            assert_eq!(task, h.id());
            assert_eq!(dependency, ghost);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nothing else was affected.
    assert_eq!(inc::spawn(&ctx, 1).unwrap().fetch().unwrap(), 2);
}

/// Parameters may be named like the generated code's own bindings.
#[dagger::task]
fn awkward_names(ctx: u64, args: u64, options: u64) -> u64 {
    ctx * 100 + args * 10 + options
}

#[test]
fn task_parameters_named_ctx_args_options_work() {
    dagger::init();
    let c = Context::threads().unwrap();
    assert_eq!(
        awkward_names::spawn(&c, 1, 2, 3).unwrap().fetch().unwrap(),
        123
    );
    assert_eq!(c.collect(awkward_names::delayed(4, 5, 6)).unwrap(), 456);
}

#[test]
fn a_long_lazy_chain_is_submitted_and_dropped_without_recursion() {
    dagger::init();
    // Building and dropping a 200,000-node chain: a recursive drop would overflow the
    // test thread's stack.
    let mut x = inc::delayed(0);
    for _ in 1..200_000u64 {
        x = inc::delayed(x);
    }
    drop(x);
    // A chain is submitted as one graph (walked without recursion) and runs.
    let c = Context::threads().unwrap();
    let mut y = inc::delayed(0);
    for _ in 1..2_000u64 {
        y = inc::delayed(y);
    }
    assert_eq!(c.collect(y).unwrap(), 2_000);
}

#[test]
fn a_lazy_graph_with_a_handle_from_another_context_is_refused() {
    dagger::init();
    let one = Context::threads().unwrap();
    let two = Context::threads().unwrap();
    let h = inc::spawn(&one, 1).unwrap();
    match two.collect(add::delayed(&h, 1)) {
        Err(dagger::CollectError::Submit(SubmitError::ForeignHandle { task })) => {
            assert_eq!(task, h.id())
        }
        other => panic!("expected ForeignHandle, got {other:?}"),
    }
}

#[test]
fn a_context_can_be_started_and_used_from_inside_an_async_runtime() {
    dagger::init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ctx = Context::threads().unwrap();
        // A large result (stored, fetched by a round trip) with the blocking call...
        let h = big::spawn(&ctx, 1 << 20, 7).unwrap();
        assert_eq!(h.fetch().unwrap().len(), 1 << 20);
        // ...and awaited.
        let v = big::spawn(&ctx, 1 << 20, 9).unwrap().await.unwrap();
        assert!(v.iter().all(|&b| b == 9));
    });
}

#[test]
fn an_argument_too_large_for_one_message_is_refused_at_spawn() {
    dagger::init();
    let ctx = Context::threads().unwrap();
    let huge = serde_bytes::ByteBuf::from(vec![0u8; 300 << 20]);
    match sum_bytes::spawn(&ctx, huge) {
        Err(SubmitError::TooLarge { bytes, limit }) => assert!(bytes > limit),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn a_task_can_be_defined_inside_a_function_with_a_local_type() {
    dagger::init();

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Point {
        x: i64,
        y: i64,
    }

    #[dagger::task]
    fn shift(p: Point, by: i64) -> Point {
        Point {
            x: p.x + by,
            y: p.y - by,
        }
    }

    let ctx = Context::threads().unwrap();
    let h = shift::spawn(&ctx, Point { x: 1, y: 2 }, 10).unwrap();
    assert_eq!(h.fetch().unwrap(), Point { x: 11, y: -8 });
    let twice = shift::delayed(shift::delayed(Point { x: 0, y: 0 }, 1), 2);
    assert_eq!(ctx.collect(twice).unwrap(), Point { x: 3, y: -3 });
    assert!(shift::NAME.ends_with("::shift"));
}
