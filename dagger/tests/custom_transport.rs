//! A user's transport replaces QUIC in every process of the binary: registered before
//! `init`, it is what the driver listens with and what the worker processes connect with.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::net::{Conn, Listener, NetConfig, QuicTransport};
use dagger::prelude::*;
use dagger::{BoxFuture, Identity, NetError, Transport};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// QUIC underneath, counting what passes through it and leaving a mark for each process
/// that made one.
struct Counting {
    inner: QuicTransport,
    listens: Arc<AtomicUsize>,
}

static LISTENS: std::sync::OnceLock<Arc<AtomicUsize>> = std::sync::OnceLock::new();

impl Transport for Counting {
    fn listen<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Box<dyn Listener>, NetError>> {
        self.listens.fetch_add(1, Ordering::SeqCst);
        self.inner.listen(addr)
    }
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Conn, NetError>> {
        self.inner.connect(addr)
    }
    fn name(&self) -> &'static str {
        "counting-quic"
    }
}

#[dagger::task]
fn pid(_x: u32) -> u32 {
    std::process::id()
}

#[test]
fn every_process_uses_the_registered_transport() {
    let marks = std::env::temp_dir().join(format!(
        "dagger-transport-marks-{}",
        std::env::var("DAGGER_MARK_OWNER").unwrap_or_else(|_| std::process::id().to_string())
    ));
    if std::env::var("DAGGER_MARK_OWNER").is_err() {
        // The driver: workers inherit this, so all processes write into one folder.
        std::env::set_var("DAGGER_MARK_OWNER", std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&marks);
        std::fs::create_dir_all(&marks).unwrap();
    }
    let dir = marks.clone();
    dagger::set_transport(move |identity: &Identity| {
        std::fs::write(dir.join(std::process::id().to_string()), b"").map_err(NetError::Io)?;
        let listens = LISTENS
            .get_or_init(|| Arc::new(AtomicUsize::new(0)))
            .clone();
        Ok(Arc::new(Counting {
            inner: QuicTransport::new(identity.clone(), NetConfig::default())?,
            listens,
        }) as Arc<dyn Transport>)
    });
    dagger::init();

    let ctx = Context::builder()
        .workers(2)
        .test_harness()
        .worker_threads(1)
        .build()
        .unwrap();
    let pids: std::collections::BTreeSet<u32> = (0..16u32)
        .map(|i| pid::spawn(&ctx, i).unwrap().fetch().unwrap())
        .collect();
    assert!(
        LISTENS.get().unwrap().load(Ordering::SeqCst) >= 1,
        "the driver listened through it"
    );
    let marked: std::collections::BTreeSet<u32> = std::fs::read_dir(&marks)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    assert!(
        marked.contains(&std::process::id()),
        "the driver made its transport with the factory"
    );
    for w in ctx.local_worker_pids() {
        assert!(
            marked.contains(&w),
            "worker {w} made its transport with the factory: {marked:?}"
        );
    }
    assert!(!pids.is_empty());
    let _ = std::fs::remove_dir_all(&marks);
}
