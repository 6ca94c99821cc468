//! Same-host moves through reusable shared-memory segments, over real worker processes
//! (re-executions of this test binary): many transfers in both directions, chunks of
//! varying sizes, one chunk read by several consumers, and replicas, all checked against
//! the network path.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;
use serde_bytes::ByteBuf;

#[dagger::task]
fn pattern(len: u64, seed: u64) -> ByteBuf {
    ByteBuf::from(
        (0..len)
            .map(|i| ((i * 31 + seed) % 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn hash(b: &[u8]) -> u64 {
    b.iter().enumerate().fold(0u64, |h, (i, &x)| {
        h.wrapping_mul(31).wrapping_add(x as u64 ^ i as u64)
    })
}

#[dagger::task]
fn digest(b: ByteBuf) -> u64 {
    hash(&b)
}

#[dagger::task]
fn digest_pair(a: ByteBuf, b: ByteBuf) -> u64 {
    hash(&a).wrapping_add(hash(&b).rotate_left(7))
}

fn expected(len: u64, seed: u64) -> u64 {
    let v: Vec<u8> = (0..len).map(|i| ((i * 31 + seed) % 251) as u8).collect();
    hash(&v)
}

/// Runs the same transfers with shared memory off and on; both must give the expected
/// digests.
#[test]
fn many_segment_moves_in_both_directions_agree_with_the_network_path() {
    dagger::init();
    for shm in [false, true] {
        let ctx = Context::builder()
            .workers(2)
            .test_harness()
            .worker_threads(2)
            .shared_memory(shm)
            .build()
            .unwrap();
        let ws = ctx.workers();
        let on = |w| Options::new().scope(Scope::worker(w));
        let mut checks = Vec::new();
        // 60 moves, alternating direction, sizes around the segment granule.
        for i in 0..60u64 {
            let (from, to) = if i % 2 == 0 {
                (ws[0], ws[1])
            } else {
                (ws[1], ws[0])
            };
            let len = 64 * 1024 + (i % 5) * 300_000;
            let p = pattern::with(on(from)).spawn(&ctx, len, i).unwrap();
            let d = digest::with(on(to)).spawn(&ctx, &p).unwrap();
            checks.push((d, expected(len, i)));
        }
        // One chunk read by several consumers on the other worker, and twice by one.
        let len = 3u64 << 20;
        let p = pattern::with(on(ws[0])).spawn(&ctx, len, 99).unwrap();
        for _ in 0..4 {
            let d = digest::with(on(ws[1])).spawn(&ctx, &p).unwrap();
            checks.push((d, expected(len, 99)));
        }
        let both = digest_pair::with(on(ws[1])).spawn(&ctx, &p, &p).unwrap();
        let one = expected(len, 99);
        checks.push((both, one.wrapping_add(one.rotate_left(7))));
        for (h, want) in &checks {
            assert_eq!(h.fetch().unwrap(), *want, "shared memory {shm}");
        }
        // The large chunk itself still comes back whole.
        assert_eq!(p.fetch().unwrap().len() as u64, len);
    }
}
