//! Throughput of the shared-memory shortcut: write an 8 MiB object, map it read-only,
//! read every byte (what a receiving worker does when it decodes the value), drop the view.
//! Prints the median over many rounds (robust to a busy machine) and the best round.
//! Run with `cargo bench -p dagger-move --bench shm`.

use dagger_move::shm;
use std::hint::black_box;
use std::time::{Duration, Instant};

const SIZE: usize = 8 << 20;
const ROUNDS: usize = 200;

/// Sums the bytes eight at a time, so the read side touches every page like a decoder.
fn checksum(b: &[u8]) -> u64 {
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .fold(0u64, u64::wrapping_add)
}

/// (median, best) of `f`'s run times over `rounds` rounds.
fn time(rounds: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut t: Vec<Duration> = (0..rounds)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    (t[t.len() / 2], t[0])
}

fn report(what: &str, bytes: usize, (median, best): (Duration, Duration)) {
    let mbs = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    println!(
        "{what:<40} median {:>7.0} MB/s   best {:>7.0} MB/s",
        mbs(median),
        mbs(best)
    );
}

fn main() {
    let prefix = format!("dagger-bench-{}", std::process::id());
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    let expect = checksum(&data);
    let mut dst = vec![0u8; SIZE];

    report(
        "memcpy into a warm buffer (8 MiB)",
        SIZE,
        time(ROUNDS, || {
            dst.copy_from_slice(&data);
            black_box(&dst);
        }),
    );
    report(
        "shm write (8 MiB)",
        SIZE,
        time(ROUNDS, || {
            let o = shm::write(&prefix, &data).expect("write");
            o.unlink().expect("unlink");
        }),
    );
    report(
        "shm move: write + map + read + drop",
        SIZE,
        time(ROUNDS, || {
            let o = shm::write(&prefix, &data).expect("write");
            let v = shm::read(&o.name, o.len).expect("read");
            assert_eq!(checksum(&v), expect);
        }),
    );
    let small = [7u8; 64];
    let (median, best) = time(2000, || {
        let o = shm::write(&prefix, &small).expect("write");
        let v = shm::read(&o.name, o.len).expect("read");
        black_box(&*v);
    });
    println!(
        "{:<40} median {:>7.1} µs      best {:>7.1} µs",
        "shm move of 64 bytes",
        median.as_secs_f64() * 1e6,
        best.as_secs_f64() * 1e6
    );
    shm::cleanup_prefix(&prefix);
}
