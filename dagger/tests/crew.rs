//! A worker's thread processors share the tasks that may run on any of them: a task the
//! scheduler placed on a thread that is busy with a long task is run by its free sibling,
//! and the driver learns where it really ran.

#![cfg(all(feature = "quic", target_os = "linux"))]

use dagger::prelude::*;
use dagger::ProcId;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Announces its start (creates `started`), then holds its thread until `release` exists.
#[dagger::task]
fn hold(started: String, release: String) -> u32 {
    std::fs::write(&started, b"").expect("write the start mark");
    while !Path::new(&release).exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    dagger::current_processor().map_or(u32::MAX, |p| p.index)
}

/// The index of the processor it ran on.
#[dagger::task]
fn whereami(i: u64) -> (u64, u32) {
    (i, dagger::current_processor().map_or(u32::MAX, |p| p.index))
}

/// Waits for `cond`; the limit only keeps a broken build from hanging the suite.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn scratch(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("dagger-crew-{}-{nanos}-{name}", std::process::id()))
}

#[test]
fn tasks_placed_behind_a_blocked_thread_run_on_its_free_sibling() {
    dagger::init();
    let ctx = Context::builder()
        .workers(1)
        .worker_threads(2)
        .test_harness()
        .build()
        .unwrap();
    let w = ctx.workers()[0];
    let threads: Vec<ProcId> = ctx
        .topology()
        .procs()
        .filter(|p| p.id.worker == w && p.kind == ProcKind::THREAD)
        .map(|p| p.id)
        .collect();
    assert_eq!(threads.len(), 2, "two thread processors: {threads:?}");
    let (started, release) = (scratch("started"), scratch("release"));
    let blocker = hold::with(Options::new().scope(Scope::proc(threads[0])))
        .spawn(
            &ctx,
            started.display().to_string(),
            release.display().to_string(),
        )
        .unwrap();
    wait_for("the blocking task never started", || started.exists());

    // The scheduler does not know that the first thread is blocked: it places some of
    // these there (as many as it keeps queued on a processor of unknown load).
    let hs: Vec<_> = (0..40u64)
        .map(|i| {
            whereami::with(Options::new().scope(Scope::worker(w)))
                .spawn(&ctx, i)
                .unwrap()
        })
        .collect();
    wait_for(
        "tasks placed on the blocked thread waited for it instead of running on its sibling",
        || hs.iter().all(|h| h.is_done()),
    );
    assert!(!blocker.is_done(), "the blocking task ended early");
    for (i, h) in hs.iter().enumerate() {
        assert_eq!(h.fetch().unwrap(), (i as u64, threads[1].index));
        assert_eq!(
            h.info().unwrap().proc,
            Some(threads[1]),
            "the driver was not told where task {i} ran"
        );
    }
    std::fs::write(&release, b"").unwrap();
    assert_eq!(blocker.fetch().unwrap(), threads[0].index);
    let _ = std::fs::remove_file(&started);
    let _ = std::fs::remove_file(&release);
}
