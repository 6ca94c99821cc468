//! The frame decoder against untrusted bytes: raw random bytes, and valid streams damaged
//! (bits flipped, cut short, length fields rewritten, bytes inserted), each fed in random
//! pieces. Nothing may panic, every frame must respect the limit in force, the result
//! must not depend on how the bytes are cut, and a length prefix must not make the decoder
//! allocate more than its bounded read-ahead.
//!
//! Runs `DAGGER_FUZZ_CASES` cases (default 2000); the same checks run under cargo-fuzz
//! (`fuzz/fuzz_targets/frame_decoder.rs`).

#[path = "../../dagger-core/tests/support/alloc.rs"]
mod alloc;
#[path = "support/codec_fuzz.rs"]
mod codec_fuzz;

use arbitrary::Unstructured;
use codec_fuzz::{Setup, RESERVE};
use dagger_net::codec::{CodecError, Decoded, Decoder, Header};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: alloc::Tracking = alloc::Tracking;

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

    /// Raw and damaged streams, with the setup and the cuts chosen by the input.
    #[test]
    fn decoder_survives_hostile_streams(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut u = Unstructured::new(&data);
        let (r, largest) = alloc::largest_allocation(|| codec_fuzz::check(&mut u));
        // Running out of input is the end of a case, not a failure.
        let _ = r;
        // Item lists, the stream copies and frames are bounded by the input; a header
        // alone may reserve at most the read-ahead.
        prop_assert!(largest <= RESERVE + 64 * data.len() + 4096, "allocated {largest} bytes for {} input bytes", data.len());
    }

    /// Headers alone, of any length and flags, cost at most the read-ahead.
    #[test]
    fn a_header_alone_allocates_little(word in any::<u64>(), max_pow in 0u32..62) {
        let max_frame = 1usize << max_pow;
        let header = word.to_le_bytes();
        let ((), largest) = alloc::largest_allocation(|| {
            let mut dec = Decoder::new(max_frame).allow_striped(true);
            let mut input = &header[..];
            let _ = dec.decode(&mut input);
            drop(dec);
        });
        prop_assert!(largest <= RESERVE.min(max_frame), "allocated {largest} for header {word:#x}");
    }
}

#[test]
fn a_frame_of_the_limit_announced_by_a_peer_reserves_the_read_ahead_only() {
    let setup = Setup {
        max_frame: 1 << 40,
        first_limit: None,
        striped: false,
    };
    let stream = Header::Data { len: 1 << 40 }.encode();
    let (out, largest) = alloc::largest_allocation(|| codec_fuzz::decode(setup, &stream, &[3, 5]));
    assert!(out.items.is_empty() && out.error.is_none());
    assert!(largest <= RESERVE, "allocated {largest} bytes");
}

#[test]
fn the_first_frame_limit_holds_whatever_the_cuts() {
    let setup = Setup {
        max_frame: 1024,
        first_limit: Some(4),
        striped: true,
    };
    let mut stream = Header::Striped { len: 5 }.encode().to_vec();
    stream.extend_from_slice(&[0; 5]);
    for cut in 0..stream.len() {
        let out = codec_fuzz::decode(setup, &stream, &[cut]);
        assert_eq!(
            out.error,
            Some(CodecError::FrameTooLarge { len: 5, limit: 4 })
        );
    }
    let mut ok = Header::Data { len: 4 }.encode().to_vec();
    ok.extend_from_slice(&[1; 4]);
    ok.extend_from_slice(&Header::Striped { len: 900 }.encode());
    let out = codec_fuzz::decode(setup, &ok, &[1, 9]);
    assert_eq!(
        out.items,
        vec![Decoded::Frame(vec![1; 4]), Decoded::Striped { len: 900 }]
    );
}
