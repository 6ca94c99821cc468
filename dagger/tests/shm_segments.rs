//! Same-host moves through reusable shared-memory segments, over real worker processes
//! (re-executions of this test binary): many transfers in both directions, chunks of
//! varying sizes, one chunk read by several consumers, and replicas, all checked against
//! the network path.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

mod support;

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
        let ctx = support::two_workers(2, shm);
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

#[dagger::task]
fn filled(len: u64, fill: u8) -> ByteBuf {
    ByteBuf::from(vec![fill; len as usize])
}

#[dagger::task]
fn ends(b: ByteBuf) -> (u64, u8, u8) {
    (b.len() as u64, b[0], b[b.len() - 1])
}

/// `(RssAnon, RssShmem)` of a process, in MiB.
fn rss_anon_shmem_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            / 1024
    };
    (field("RssAnon:"), field("RssShmem:"))
}

/// A large result is encoded straight into a shared-memory segment of its worker's pool,
/// and a consumer on the same host is lent that very segment: the producer holds the
/// result once, in shared memory, not in its heap as well. With shared memory off it is
/// in the heap (which shows what the measure sees).
#[test]
fn a_large_result_is_encoded_into_shared_memory_and_lent_in_place() {
    dagger::init();
    let len = 40u64 << 20;
    for shm in [false, true] {
        let ctx = support::two_workers(2, shm);
        let ws = ctx.workers();
        let on = |w| Options::new().scope(Scope::worker(w));
        let p = filled::with(on(ws[0])).spawn(&ctx, len, 7).unwrap();
        // With shared memory the consumer is on the other worker (the chunk moves); without,
        // on the producer's (only where the result is kept is looked at).
        let consumer = if shm { ws[1] } else { ws[0] };
        let e = ends::with(on(consumer)).spawn(&ctx, &p).unwrap();
        let got = e
            .fetch()
            .unwrap_or_else(|err| panic!("shared memory {shm}: {err:?}"));
        assert_eq!(got, (len, 7, 7));
        // The result is still held (`p` lives): where does the producer keep it?
        let pid = ctx.topology().worker(ws[0]).unwrap().pid;
        let (anon, shmem) = rss_anon_shmem_mib(pid);
        if shm {
            assert!(
                shmem >= 40 && anon < 40,
                "the result is in shared memory only: RssAnon {anon} MiB, RssShmem {shmem} MiB"
            );
        } else {
            assert!(
                anon >= 40 && shmem < 40,
                "without shared memory the result is in the heap: RssAnon {anon} MiB, RssShmem {shmem} MiB"
            );
        }
        // And it comes back whole.
        assert_eq!(p.fetch().unwrap().len() as u64, len);
    }
}
