//! A processor type the runtime does not know — a pretend FPGA board — brought in by a
//! detector, given a move function, and used by a task scoped to its kind.
//!
//! ```sh
//! cargo run --example custom_processor
//! ```

use dagger::prelude::*;
use dagger_examples::fpga;

/// Runs on the FPGA: the scheduler only places it on processors of kind `fpga`.
#[dagger::task]
fn fpga_sum(xs: Vec<u32>) -> (u64, String) {
    let sum = xs.iter().map(|&x| x as u64).sum();
    let here = dagger::current_processor()
        .map(|p| p.to_string())
        .unwrap_or_default();
    (sum, here)
}

fn main() -> anyhow::Result<()> {
    // Detectors run when a process starts: register before `init`, in every process.
    fpga::register();
    dagger::init();

    let ctx = Context::local(2)?;
    println!("{}", ctx.topology());

    let on_fpga = fpga_sum::with(Options::new().scope(Scope::kind(fpga::KIND)))
        .spawn(&ctx, (1..=100).collect::<Vec<u32>>())?;
    let (sum, proc) = on_fpga.fetch()?;
    let info = on_fpga.info()?;
    println!("fpga_sum = {sum}, ran on {} ({proc})", info.processor);
    anyhow::ensure!(sum == 5050, "wrong sum");
    anyhow::ensure!(
        info.processor.starts_with("fpga["),
        "did not run on the fpga: {}",
        info.processor
    );
    Ok(())
}
