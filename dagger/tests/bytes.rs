//! `Bytes` parameters read their argument where the worker holds it, without a copy: a
//! result of the same worker, one that arrived over the network, and one lent in a
//! shared-memory segment by a worker of the same host. Over real worker processes
//! (re-executions of this test binary).

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

mod support;

use dagger::prelude::*;
use dagger::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

fn pattern(len: u64, seed: u64) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

fn sum(b: &[u8]) -> u64 {
    b.iter().map(|&x| x as u64).sum()
}

#[dagger::task]
fn make(len: u64, seed: u64) -> ByteBuf {
    ByteBuf::from(pattern(len, seed))
}

/// Written in place with `BytesMut` (in a shared-memory segment when large and shared
/// memory is on).
#[dagger::task]
fn make_in_place(len: u64, seed: u64) -> Bytes {
    let mut b = BytesMut::zeroed(len as usize);
    b.copy_from_slice(&pattern(len, seed));
    b.freeze()
}

#[dagger::task]
fn make_vec(len: u64, seed: u64) -> Vec<u8> {
    pattern(len, seed)
}

/// Length, sum, and whether the bytes were read in place.
#[dagger::task]
fn inspect(b: Bytes) -> (u64, u64, bool) {
    (b.len() as u64, sum(&b), b.is_borrowed())
}

#[dagger::task]
fn tail(b: Bytes, from: u64) -> Bytes {
    Bytes::from(&b[from as usize..])
}

#[dagger::task]
fn total(v: Vec<u8>) -> u64 {
    sum(&v)
}

#[dagger::task]
fn total_buf(v: ByteBuf) -> u64 {
    sum(&v)
}

#[derive(Serialize, Deserialize)]
struct Block {
    id: u32,
    data: Bytes,
}

#[dagger::task]
fn block(len: u64, seed: u64) -> Block {
    Block {
        id: seed as u32,
        data: Bytes::from(pattern(len, seed)),
    }
}

/// A `Bytes` inside a struct is read in place too.
#[dagger::task]
fn inspect_block(b: Block) -> (u32, u64, bool) {
    (b.id, sum(&b.data), b.data.is_borrowed())
}

#[test]
fn bytes_parameters_read_their_argument_in_place() {
    dagger::init();
    for shm in [false, true] {
        let ctx = support::two_workers(2, shm);
        let ws = ctx.workers();
        let on = |w| Options::new().scope(Scope::worker(w));
        // Small and large (past the shared-memory and stored-result sizes), on the
        // producer's worker and on the other one.
        for (i, len) in [1_000u64, 300_000, 3 << 20].into_iter().enumerate() {
            let seed = i as u64;
            let want = sum(&pattern(len, seed));
            let p = make::with(on(ws[0])).spawn(&ctx, len, seed).unwrap();
            for w in [ws[0], ws[1]] {
                let r = inspect::with(on(w)).spawn(&ctx, &p).unwrap();
                let (n, s, borrowed) = r.fetch().unwrap();
                assert_eq!((n, s), (len, want), "shm {shm}, {len} bytes on {w}");
                assert!(borrowed, "shm {shm}: {len} bytes on {w} were copied");
            }
            // A `Vec<u8>` result feeds a `Bytes` parameter; a `Bytes` result feeds
            // `Vec<u8>` and `ByteBuf` parameters.
            let v = make_vec::with(on(ws[1])).spawn(&ctx, len, seed).unwrap();
            let r = inspect::with(on(ws[0])).spawn(&ctx, &v).unwrap();
            assert_eq!(r.fetch().unwrap(), (len, want, true));
            let t = tail::with(on(ws[1])).spawn(&ctx, &v, 10).unwrap();
            let tail_sum = sum(&pattern(len, seed)[10..]);
            let a = total::with(on(ws[0])).spawn(&ctx, &t).unwrap();
            let b = total_buf::with(on(ws[1])).spawn(&ctx, &t).unwrap();
            assert_eq!(
                (a.fetch().unwrap(), b.fetch().unwrap()),
                (tail_sum, tail_sum)
            );
            // Fetched by the driver, a `Bytes` owns its bytes.
            let fetched = t.fetch().unwrap();
            assert_eq!(
                (fetched.len() as u64, fetched.is_borrowed()),
                (len - 10, false)
            );
            assert_eq!(sum(&fetched), tail_sum);
            // Built with `BytesMut`: read in place on both workers, fetched whole.
            let m = make_in_place::with(on(ws[0]))
                .spawn(&ctx, len, seed)
                .unwrap();
            for w in [ws[0], ws[1]] {
                let r = inspect::with(on(w)).spawn(&ctx, &m).unwrap();
                assert_eq!(r.fetch().unwrap(), (len, want, true), "shm {shm} on {w}");
            }
            let a = total::with(on(ws[1])).spawn(&ctx, &m).unwrap();
            assert_eq!(a.fetch().unwrap(), want);
            assert_eq!(m.fetch().unwrap(), Bytes::from(pattern(len, seed)));
            // A plain value passed to a `Bytes` parameter.
            let r = inspect::with(on(ws[1]))
                .spawn(&ctx, pattern(len, seed))
                .unwrap();
            assert_eq!(r.fetch().unwrap(), (len, want, true));
        }
        let b = block::with(on(ws[0])).spawn(&ctx, 2 << 20, 5).unwrap();
        for w in [ws[0], ws[1]] {
            let r = inspect_block::with(on(w)).spawn(&ctx, &b).unwrap();
            assert_eq!(
                r.fetch().unwrap(),
                (5, sum(&pattern(2 << 20, 5)), true),
                "shm {shm} on {w}"
            );
        }
    }
}

/// Outside a task a `Bytes` owns its bytes, and it encodes like a `Vec<u8>`.
#[test]
fn bytes_encode_like_a_vector() {
    let v = pattern(1000, 3);
    let b = Bytes::from(v.clone());
    assert!(!b.is_borrowed());
    let enc = postcard::to_allocvec(&b).unwrap();
    assert_eq!(enc, postcard::to_allocvec(&v).unwrap());
    assert_eq!(
        enc,
        postcard::to_allocvec(&ByteBuf::from(v.clone())).unwrap()
    );
    let back: Bytes = postcard::from_bytes(&enc).unwrap();
    assert!(back == b && !back.is_borrowed());
    assert_eq!(Vec::from(back), v);
    let json = serde_json::to_string(&b).unwrap();
    assert_eq!(serde_json::from_str::<Bytes>(&json).unwrap(), b);
}

/// In a context without worker processes (the direct lane) `BytesMut` outputs and `Bytes`
/// inputs work the same way.
#[test]
fn bytes_in_a_threads_context() {
    let ctx = Context::threads().unwrap();
    for len in [0u64, 1_000, 3 << 20] {
        let m = make_in_place::spawn(&ctx, len, 9).unwrap();
        let r = inspect::spawn(&ctx, &m).unwrap();
        let want = sum(&pattern(len, 9));
        let (n, s, _) = r.fetch().unwrap();
        assert_eq!((n, s), (len, want));
        assert_eq!(m.fetch().unwrap(), Bytes::from(pattern(len, 9)));
        assert_eq!(total::spawn(&ctx, &m).unwrap().fetch().unwrap(), want);
    }
}
