//! Gathering: a task whose parameter is `Vec<T>` takes a list of handles or lazy tasks,
//! each a dependency, and receives their results in order. Checked in the driver's own
//! process and over real worker processes linked by QUIC.

mod support;

use dagger::prelude::*;
use dagger::Lazy;

#[dagger::task]
fn ident(i: u64) -> u64 {
    i
}

#[dagger::task]
fn fails_at(i: u64, bad: u64) -> u64 {
    if i == bad {
        panic!("part {i} fails");
    }
    i
}

#[dagger::task]
fn vcat(xs: Vec<u64>) -> Vec<u64> {
    xs
}

#[dagger::task]
fn weighted(scale: u64, xs: Vec<u64>, offset: u64) -> u64 {
    xs.iter().map(|x| x * scale).sum::<u64>() + offset
}

/// Every gathering form, on `ctx`.
fn check_gathers(ctx: &Context) {
    let expected: Vec<u64> = (0..20).collect();

    // Eager: a vector of handles, a slice of them, and a plain vector value as before.
    let hs: Vec<Handle<u64>> = (0..20).map(|i| ident::spawn(ctx, i).unwrap()).collect();
    let all = vcat::spawn(ctx, &hs).unwrap();
    assert_eq!(all.fetch().unwrap(), expected);
    let rev: Vec<Handle<u64>> = hs.iter().rev().cloned().collect();
    let mut backwards = expected.clone();
    backwards.reverse();
    assert_eq!(vcat::spawn(ctx, rev).unwrap().fetch().unwrap(), backwards);
    assert_eq!(
        vcat::spawn(ctx, &hs[5..8]).unwrap().fetch().unwrap(),
        vec![5, 6, 7]
    );
    assert_eq!(
        vcat::spawn(ctx, vec![7u64, 8]).unwrap().fetch().unwrap(),
        vec![7, 8]
    );
    // A gathered argument among plain ones, and one part given twice.
    let twice = vec![hs[3].clone(), hs[4].clone(), hs[3].clone()];
    assert_eq!(
        weighted::spawn(ctx, 10, &twice, 1)
            .unwrap()
            .fetch()
            .unwrap(),
        101
    );

    // Lazy: a vector of lazy tasks, collected in one submission.
    let parts: Vec<Lazy<u64>> = (0..20).map(ident::delayed).collect();
    assert_eq!(ctx.collect(vcat::delayed(parts)).unwrap(), expected);
    // Lazy over spawned handles.
    assert_eq!(ctx.collect(vcat::delayed(&hs[..3])).unwrap(), vec![0, 1, 2]);

    // An empty gather gives an empty vector.
    let none: Vec<Handle<u64>> = Vec::new();
    assert_eq!(
        vcat::spawn(ctx, none).unwrap().fetch().unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(
        ctx.collect(vcat::delayed(Vec::<Lazy<u64>>::new())).unwrap(),
        Vec::<u64>::new()
    );

    // A failing part fails the gathering task, naming that part.
    let hs: Vec<Handle<u64>> = (0..20)
        .map(|i| fails_at::spawn(ctx, i, 13).unwrap())
        .collect();
    match vcat::spawn(ctx, &hs).unwrap().fetch() {
        Err(TaskError::DependencyFailed { dependency, .. }) => {
            assert_eq!(dependency, hs[13].id())
        }
        other => panic!("expected DependencyFailed, got {other:?}"),
    }
    let parts: Vec<Lazy<u64>> = (0..20).map(|i| fails_at::delayed(i, 5)).collect();
    assert!(matches!(
        ctx.collect(vcat::delayed(parts)),
        Err(dagger::CollectError::Task(
            TaskError::DependencyFailed { .. }
        ))
    ));
}

#[test]
fn gathers_in_the_driver_s_process() {
    dagger::init();
    let ctx = Context::threads().unwrap();
    check_gathers(&ctx);
}

#[cfg(feature = "quic")]
#[test]
fn gathers_over_worker_processes() {
    dagger::init();
    let ctx = support::two_workers(2, true);
    check_gathers(&ctx);
}
