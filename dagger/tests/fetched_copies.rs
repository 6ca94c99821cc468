//! A worker that fetches a chunk from a peer for its tasks does not keep the copy: the
//! scheduler does not count it as a holder and would never release it, so keeping it would
//! grow the worker's memory with every move.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;
use serde_bytes::ByteBuf;

#[dagger::task]
fn make(len: u64, fill: u8) -> ByteBuf {
    ByteBuf::from(vec![fill; len as usize])
}

#[dagger::task]
fn total(b: ByteBuf) -> u64 {
    b.iter().map(|&x| x as u64).sum()
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

#[test]
fn consumers_do_not_keep_fetched_copies() {
    dagger::init();
    for shm in [false, true] {
        let ctx = Context::builder()
            .workers(2)
            .test_harness()
            .worker_threads(1)
            .shared_memory(shm)
            .build()
            .unwrap();
        let ws = ctx.workers();
        let (a, b) = (ws[0], ws[1]);
        let len = 8u64 << 20;
        // 48 moves of 8 MiB: 384 MiB if the consumer kept every copy.
        for round in 0..6u64 {
            let hs: Vec<_> = (0..8u64)
                .map(|i| {
                    let p = make::with(Options::new().scope(Scope::worker(a)))
                        .spawn(&ctx, len, i as u8)
                        .unwrap();
                    total::with(Options::new().scope(Scope::worker(b)))
                        .spawn(&ctx, &p)
                        .unwrap()
                })
                .collect();
            for (i, h) in hs.iter().enumerate() {
                assert_eq!(h.fetch().unwrap(), i as u64 * len, "round {round}");
            }
        }
        let topo = ctx.topology();
        let pid_b = topo.worker(b).unwrap().pid;
        let rss = rss_mib(pid_b);
        assert!(
            rss < 200,
            "consumer {b} (shm {shm}) holds {rss} MiB after 384 MiB of moves"
        );
    }
}
