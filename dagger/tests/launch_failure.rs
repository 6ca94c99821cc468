//! A local worker process that dies before it joins makes `Context::local` fail at once with
//! a typed error, rather than wait for the join timeout.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;
use dagger::ContextError;
use std::time::Duration;

#[test]
fn a_worker_that_dies_before_joining_is_a_launch_error() {
    // In the worker processes (and only there) detection kills the process before it joins.
    if std::env::var_os("DAGGER_WORKER_JOIN").is_some() {
        dagger::detectors().register("dies", |_| std::process::exit(3));
    }
    dagger::init();
    // With a 600 s join timeout, waiting for the joins would end in `JoinTimeout`; the
    // early check gives `Launch` as soon as the processes are seen to exit.
    let err = Context::builder()
        .workers(2)
        .test_harness()
        .join_timeout(Duration::from_secs(600))
        .build()
        .unwrap_err();
    assert!(matches!(err, ContextError::Launch(_)), "{err}");
}
