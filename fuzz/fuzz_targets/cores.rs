//! Programs of hostile (and honest) inputs, decoded or not, against the driver core and
//! the worker core; the first byte picks the core. The checks are those of
//! `dagger-runtime/tests/hostile.rs` (no panic, the scheduler's recount passes, frames
//! decode, slots and fetches answered at most once).

#![no_main]

#[path = "../../dagger-runtime/tests/support/hostile.rs"]
mod hostile;
#[path = "../../dagger-core/tests/support/wire_fuzz.rs"]
mod wire_fuzz;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, program)) = data.split_first() else {
        return;
    };
    let mut u = arbitrary::Unstructured::new(program);
    let _ = if which % 2 == 0 {
        hostile::drive_driver(&mut u)
    } else {
        hostile::drive_worker(&mut u)
    };
});
