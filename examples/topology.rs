//! Prints the whole cluster's processor tree — the driver and every worker process, their
//! cores, and the shortcut edges between them — like `lstopo`.
//!
//! ```sh
//! cargo run --example topology            # built-in CPU detection
//! cargo run --example topology --features hwloc   # real topology: cores, NUMA, caches
//! ```

use dagger::prelude::*;

fn main() -> anyhow::Result<()> {
    dagger::init();
    let workers = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2);
    let ctx = Context::builder()
        .workers(workers)
        .driver_runs_tasks(true)
        .build()?;
    print!("{}", ctx.topology());
    Ok(())
}
