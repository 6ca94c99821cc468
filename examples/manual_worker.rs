//! A worker started by hand (or by ssh, or by a batch system's `srun`) joins with the
//! cluster's certificate files; a process holding another cluster's certificate is refused.
//!
//! The driver writes the files with `cert_dir`, then this example starts its own executable
//! as the command line a user would type on another host:
//!
//! ```sh
//! my-app --dagger-worker --join HOST:PORT --cert cert.pem --key key.pem --ca ca.pem
//! ```
//!
//! Such a worker exits with status 0 after the driver's shutdown, and with status 1 and a
//! line on stderr saying why when it is refused (another cluster's certificate, another
//! build of the program unless mixed builds are allowed) or when its driver disappears
//! without a shutdown.

use anyhow::{bail, ensure, Context as _};
use dagger::prelude::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[dagger::task]
fn which_process(_x: u64) -> u32 {
    std::process::id()
}

fn worker_command(addr: &str, dir: &std::path::Path) -> anyhow::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--dagger-worker")
        .args(["--join", addr])
        .arg("--cert")
        .arg(dir.join("cert.pem"))
        .arg("--key")
        .arg(dir.join("key.pem"))
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Ok(cmd)
}

fn main() -> anyhow::Result<()> {
    dagger::init();
    let base = std::env::temp_dir().join(format!("dagger-manual-worker-{}", std::process::id()));
    let ours = base.join("cluster");
    let ctx = Context::builder()
        .driver_runs_tasks(false)
        .cert_dir(&ours)
        .build()?;
    let addr = ctx
        .listen_addr()
        .context("a driver with a certificate folder listens")?
        .to_string();
    println!(
        "driver listening on {addr}; certificate files in {}",
        ours.display()
    );

    // A stranger: certificate files of another cluster, written by another driver.
    let theirs = base.join("stranger");
    {
        let other = Context::builder()
            .driver_runs_tasks(false)
            .cert_dir(&theirs)
            .build()?;
        other.shutdown();
    }
    let stranger = worker_command(&addr, &theirs)?
        .spawn()?
        .wait_with_output()?;
    ensure!(
        !stranger.status.success(),
        "a worker with another cluster's certificate must not join"
    );
    println!(
        "stranger refused: {}",
        String::from_utf8_lossy(&stranger.stderr)
            .lines()
            .last()
            .unwrap_or("(no message)")
    );
    ensure!(ctx.workers().is_empty(), "the stranger joined");

    let mut child = worker_command(&addr, &ours)?.spawn()?;
    ctx.wait_for_workers(1, Duration::from_secs(60))
        .context("the hand-started worker joins")?;
    let pid = which_process::spawn(&ctx, 0)?.fetch()?;
    println!("joined: {:?}; a task ran in process {pid}", ctx.workers());
    if pid != child.id() {
        bail!(
            "the task ran in {pid}, not in the hand-started worker {}",
            child.id()
        );
    }
    ctx.shutdown();
    let status = child.wait()?;
    println!("worker exited with {status} after the driver shut down");
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
