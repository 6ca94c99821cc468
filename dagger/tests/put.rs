//! `Context::put`: a value made into a handle is encoded once, however many tasks take it,
//! in the driver's own process and over real worker processes linked by QUIC.

mod support;

use dagger::prelude::*;
use serde::{Deserialize, Serialize, Serializer};
use std::cell::Cell;

thread_local! {
    /// Counts how often a [`Table`] is encoded on this thread (the tests run side by side,
    /// each encoding on its own thread).
    static ENCODED: Cell<usize> = const { Cell::new(0) };
}

fn encodings() -> usize {
    ENCODED.with(Cell::get)
}

/// A large constant whose encodings are counted.
#[derive(Deserialize, Clone, Debug, PartialEq)]
struct Table(Vec<u64>);

impl Serialize for Table {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ENCODED.with(|c| c.set(c.get() + 1));
        self.0.serialize(s)
    }
}

#[dagger::task]
fn lookup(table: Table, i: u64) -> u64 {
    table.0[i as usize]
}

#[dagger::task]
fn total(table: Table) -> u64 {
    table.0.iter().sum()
}

fn check_put(ctx: &Context) {
    let table = Table((0..100_000u64).map(|i| i * 3).collect());
    let before = encodings();
    let h = ctx.put(&table).unwrap();
    let lookups: Vec<_> = (0..200u64)
        .map(|i| lookup::spawn(ctx, &h, i * 7).unwrap())
        .collect();
    let t = total::spawn(ctx, &h).unwrap();
    for (i, l) in lookups.iter().enumerate() {
        assert_eq!(l.fetch().unwrap(), i as u64 * 21);
    }
    assert_eq!(t.fetch().unwrap(), 3 * (0..100_000u64).sum::<u64>());
    // In this process the table was encoded by `put` alone (serialized-size pass and the
    // encoding itself), not once per task that took it.
    let encoded = encodings() - before;
    assert!(
        encoded <= 2,
        "the table was encoded {encoded} times for 201 tasks"
    );
    // The handle fetches as the value, typed by what was put.
    assert_eq!(h.fetch().unwrap(), table);
    // Passing the value itself encodes it once per task (what `put` avoids).
    let before = encodings();
    let direct: Vec<_> = (0..10u64)
        .map(|i| lookup::spawn(ctx, table.clone(), i).unwrap())
        .collect();
    for d in &direct {
        d.wait().unwrap();
    }
    assert!(encodings() - before >= 10);
}

#[test]
fn a_put_value_is_encoded_once_on_the_driver_threads() {
    dagger::init();
    let ctx = Context::threads().unwrap();
    check_put(&ctx);
}

#[cfg(feature = "quic")]
#[test]
fn a_put_value_is_encoded_once_over_worker_processes() {
    dagger::init();
    let ctx = support::two_workers(2, true);
    check_put(&ctx);
}
