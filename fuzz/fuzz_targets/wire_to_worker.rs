//! What a worker decodes from the driver or a peer (`Hello`, `ToWorker`, `PeerMsg`, and
//! `split_chunk_bytes` against the decoder): raw bytes, and valid encodings of generated
//! messages damaged. The checks are those of `dagger-core/tests/fuzz_wire.rs`.

#![no_main]

#[path = "../../dagger-core/tests/support/wire_fuzz.rs"]
mod wire_fuzz;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire_fuzz::check_to_worker(&mut arbitrary::Unstructured::new(data));
});
