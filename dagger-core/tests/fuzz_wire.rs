//! The wire decoder against untrusted bytes: raw random bytes, and valid encodings of
//! generated messages damaged (bits flipped, cut short, lengths rewritten to huge or
//! overlong varints, bytes inserted). Nothing may panic or overflow the stack, whatever
//! decodes must re-encode to itself, `split_chunk_bytes` must agree with the decoder, and
//! a length prefix must not make the decoder allocate more than a bounded amount.
//!
//! Runs `DAGGER_FUZZ_CASES` cases per target (default 2000); the same checks run under
//! cargo-fuzz (`fuzz/fuzz_targets/wire_to_driver.rs`, `wire_to_worker.rs`).

#[path = "support/alloc.rs"]
mod alloc;
#[path = "support/wire_fuzz.rs"]
mod wire_fuzz;

use arbitrary::Unstructured;
use dagger_core::wire::{self, Outcome, TaskDone, ToDriver, ToWorker};
use dagger_core::{ProcId, TaskError, TaskId, WorkerId};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: alloc::Tracking = alloc::Tracking;

/// What serde lets a decoder reserve for a sequence ahead of its elements (1 MiB), times
/// the nesting of sequences in these messages, plus what the input itself accounts for.
fn allocation_bound(input: usize) -> usize {
    4 * (1 << 20) + 64 * input
}

fn cases() -> u32 {
    std::env::var("DAGGER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn driver_side_decoding_survives_hostile_frames(data in proptest::collection::vec(any::<u8>(), 0..768)) {
        let mut u = Unstructured::new(&data);
        let (_, largest) = alloc::largest_allocation(|| wire_fuzz::check_to_driver(&mut u));
        prop_assert!(largest <= allocation_bound(data.len()), "allocated {largest} bytes");
    }

    #[test]
    fn worker_side_decoding_survives_hostile_frames(data in proptest::collection::vec(any::<u8>(), 0..768)) {
        let mut u = Unstructured::new(&data);
        let (_, largest) = alloc::largest_allocation(|| wire_fuzz::check_to_worker(&mut u));
        prop_assert!(largest <= allocation_bound(data.len()), "allocated {largest} bytes");
    }
}

/// A `Done` whose task list claims 2^60 entries is refused after reserving at most serde's
/// cautious read-ahead, not 2^60 entries.
#[test]
fn a_huge_sequence_length_reserves_little() {
    let mut frame = wire::encode(&ToDriver::Done {
        incarnation: dagger_core::Incarnation(1),
        tasks: vec![],
        moves: Vec::new(),
        sent_ns: 0,
    });
    // The three one-byte fields at the end (the task count, the move count, the clock)
    // give way to a task count of 2^60.
    frame.truncate(frame.len() - 3);
    frame.extend(wire_fuzz::varint(1 << 60));
    let (r, largest) = alloc::largest_allocation(|| wire::decode::<ToDriver>(&frame));
    assert!(r.is_err());
    assert!(largest <= 1 << 20, "allocated {largest} bytes");
    let mut frame = wire::encode(&ToWorker::Run(vec![]));
    frame.pop();
    frame.extend(wire_fuzz::varint(u64::MAX));
    let (r, largest) = alloc::largest_allocation(|| wire::decode::<ToWorker>(&frame));
    assert!(r.is_err());
    assert!(largest <= 1 << 20, "allocated {largest} bytes");
}

/// A failure whose `DependencyFailed` causes nest deeper than any real chain is refused
/// as malformed instead of exhausting the decoder's stack (a frame of a few hundred
/// kilobytes could otherwise nest a hundred thousand levels).
#[test]
fn deeply_nested_causes_are_refused_without_overflowing_the_stack() {
    let done = ToDriver::Done {
        incarnation: dagger_core::Incarnation(1),
        tasks: vec![TaskDone {
            task: TaskId(1),
            proc: ProcId::new(WorkerId(1), 1),
            run_ns: 0,
            started_ns: 0,
            outcome: Outcome::Failed(TaskError::Shutdown { task: TaskId(1) }),
        }],
        moves: Vec::new(),
        sent_ns: 0,
    };
    let encoded = wire::encode(&done);
    // Everything before the error, then the nested causes, then the innermost error, then
    // the fields after the task list (no moves, the clock).
    let inner = wire::encode(&TaskError::Shutdown { task: TaskId(1) });
    let tail = wire::encode(&(Vec::<wire::MoveDone>::new(), 0u64));
    let prefix = &encoded[..encoded.len() - inner.len() - tail.len()];
    let nested_variant = wire::encode(&TaskError::DependencyFailed {
        task: TaskId(1),
        dependency: TaskId(1),
        cause: Box::new(TaskError::Shutdown { task: TaskId(1) }),
    });
    let level = &nested_variant[..nested_variant.len() - inner.len()];
    let build = |depth: usize| {
        let mut frame = prefix.to_vec();
        for _ in 0..depth {
            frame.extend_from_slice(level);
        }
        frame.extend_from_slice(&inner);
        frame.extend_from_slice(&tail);
        frame
    };
    // Real chains (the scheduler names the root failure directly) decode.
    assert!(wire::decode::<ToDriver>(&build(8)).is_ok());
    // A hostile one is malformed. Run on a thread with a small stack so that a decoder
    // recursing once per level would overflow it.
    let deep = build(200_000);
    let r = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || wire::decode::<ToDriver>(&deep).is_err())
        .expect("spawn")
        .join()
        .expect("the decoder overflowed its stack");
    assert!(r, "a 200,000-deep cause decoded");
}
