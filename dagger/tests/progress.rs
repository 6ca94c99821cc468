//! The progress bar of long waits, in a real terminal: this test runs itself again under
//! `script` (util-linux), which gives the child a pseudo-terminal, and finds the bar in
//! what the terminal showed; run again with its output in a pipe, the child shows none
//! (the default, `Progress::Auto`, draws only on a terminal).

#![cfg(feature = "quic")]

use dagger::prelude::*;
use std::process::Command;
use std::time::Duration;

/// Set in the child: run the graph instead of checking.
const CHILD: &str = "DAGGER_PROGRESS_TEST_CHILD";

#[dagger::task]
fn nap(i: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(100));
    i
}

/// The child's part: 20 tasks of 100 ms on one worker thread (2 s of waiting).
fn child() {
    let ctx = Context::builder()
        .workers(1)
        .worker_threads(1)
        .test_harness()
        .build()
        .unwrap();
    let parts: Vec<Lazy<u64>> = (0..20u64).map(nap::delayed).collect();
    let got = ctx.collect(parts).unwrap();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    eprintln!("child done");
}

fn this_test() -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "collect_shows_a_progress_bar_on_a_terminal_only",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ]);
    c.env(CHILD, "1");
    c
}

#[test]
fn collect_shows_a_progress_bar_on_a_terminal_only() {
    dagger::init();
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    // In a pipe: no bar.
    let out = this_test().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("child done"), "{err}");
    assert!(!err.contains("tasks ("), "a bar drawn into a pipe: {err}");
    // In a terminal.
    let Ok(script) = which("script") else {
        assert!(
            std::env::var("DAGGER_REQUIRE_ALL").as_deref() != Ok("1"),
            "DAGGER_REQUIRE_ALL=1 but `script` (util-linux) is missing"
        );
        println!("skipped: `script` (util-linux) is not installed");
        return;
    };
    let cmd = this_test();
    let line = std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new(script)
        .args(["-qec", &line, "/dev/null"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("child done"), "{shown}");
    assert!(
        shown.contains("/20 tasks ("),
        "no progress bar on the terminal: {shown}"
    );
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}
