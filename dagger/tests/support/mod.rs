//! Helpers the integration tests of `dagger` share.

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A fresh, empty directory under the system's temporary folder, named after the test
/// suite, this process and `name`; removed on drop. Tasks get its path as an argument
/// (`arg`) to leave markers in it and to wait for a gate file the test creates.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(suite: &str, name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("dagger-{suite}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp directory created");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path as a task argument.
    pub fn arg(&self) -> String {
        self.0.to_str().expect("temp dir is UTF-8").to_owned()
    }

    /// Waits until `file` exists in the directory, at most `guard` (a bound that only
    /// turns a hang into a failure).
    pub fn wait_for(&self, file: &str, guard: Duration) {
        let deadline = Instant::now() + guard;
        while !self.0.join(file).exists() {
            assert!(Instant::now() < deadline, "{file} never appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Creates the gate file `open` that gated tasks wait for.
    pub fn open_gate(&self) {
        std::fs::write(self.0.join("open"), b"").expect("gate opened");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A context with two local worker processes (re-executions of the test binary), each
/// with `threads` thread processors, with shared memory between them on or off.
pub fn two_workers(threads: usize, shm: bool) -> dagger::Context {
    dagger::Context::builder()
        .workers(2)
        .test_harness()
        .worker_threads(threads)
        .shared_memory(shm)
        .build()
        .expect("a context with two workers")
}
