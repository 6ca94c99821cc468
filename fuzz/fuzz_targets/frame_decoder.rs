//! The frame decoder fed arbitrary bytes in arbitrary pieces (raw, or valid streams
//! damaged), under any frame limit, first-frame limit and striping setting. The checks
//! are those of `dagger-net/tests/fuzz_codec.rs`.

#![no_main]

#[path = "../../dagger-net/tests/support/codec_fuzz.rs"]
mod codec_fuzz;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = codec_fuzz::check(&mut arbitrary::Unstructured::new(data));
});
