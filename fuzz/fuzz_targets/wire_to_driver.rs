//! What the driver decodes from a worker (`Hello`, `ToDriver`): raw bytes, and valid
//! encodings of generated messages damaged. The checks are those of
//! `dagger-core/tests/fuzz_wire.rs`.

#![no_main]

#[path = "../../dagger-core/tests/support/wire_fuzz.rs"]
mod wire_fuzz;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire_fuzz::check_to_driver(&mut arbitrary::Unstructured::new(data));
});
