//! Failure detection over real worker processes linked by QUIC: a worker is declared lost
//! when it is silent, never while it is busy sending one large frame.
//!
//! No test asserts a duration.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;
use dagger::ClusterEvent;
use serde_bytes::ByteBuf;

/// A result of `len` bytes, byte `k` being `k % 251`.
#[dagger::task]
fn big(len: u64) -> ByteBuf {
    ByteBuf::from((0..len).map(|k| (k % 251) as u8).collect::<Vec<u8>>())
}

/// A worker fetched from sends one frame that takes longer than the heartbeat timeout (the
/// default, 900 ms) to arrive, its heartbeats waiting behind that frame: 128 MiB, which takes
/// several seconds over QUIC in the unoptimized build the test suite uses. The bytes
/// arriving keep it alive: it is not declared lost, and the fetch succeeds (with a lost
/// worker and no other, the result would have to be recomputed and the fetch would fail
/// for want of a processor).
#[test]
fn a_worker_sending_a_large_frame_is_not_declared_silent() {
    dagger::init();
    let ctx = Context::builder()
        .workers(1)
        .worker_threads(1)
        .respawn(false)
        .test_harness()
        .build()
        .unwrap();
    let mut events = ctx.subscribe();
    let len: u64 = 128 << 20;
    let h = big::spawn(&ctx, len).unwrap();
    let got = match h.fetch() {
        Ok(got) => got,
        Err(e) => {
            let seen: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
            panic!("the large result is not fetched: {e}; events {seen:?}");
        }
    };
    assert_eq!(got.len() as u64, len);
    assert!(
        got.iter()
            .enumerate()
            .step_by(4099)
            .all(|(k, &b)| b == (k % 251) as u8),
        "the result's bytes"
    );
    let lost: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| matches!(e, ClusterEvent::WorkerLost { .. }))
        .collect();
    assert!(lost.is_empty(), "{lost:?}");
    assert_eq!(ctx.workers().len(), 1);
}
