//! A user's transport replaces QUIC in every process of the binary: registered before
//! `init`, it is what the driver listens with and what the worker processes connect with,
//! and the cluster's traffic flows through the links it hands out.

// The user's transport wraps QUIC.
#![cfg(feature = "quic")]

use dagger::net::{
    Conn, Frame, FrameReceiver, FrameSender, FrameSink, FrameSource, Listener, NetConfig,
    QuicTransport,
};
use dagger::prelude::*;
use dagger::{BoxFuture, Identity, NetError, Transport};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

/// What passed through the user's transport in this process.
#[derive(Default)]
struct Counters {
    /// Links the listener accepted.
    accepted: AtomicUsize,
    /// Frames received on accepted links.
    frames_in: AtomicUsize,
}

static COUNTERS: std::sync::OnceLock<Arc<Counters>> = std::sync::OnceLock::new();

fn counters() -> Arc<Counters> {
    COUNTERS.get_or_init(Arc::default).clone()
}

/// QUIC underneath; every link it hands out is wrapped, through the public
/// `FrameSink`/`FrameSource` seam, in halves that count what passes.
struct Counting {
    inner: QuicTransport,
    counters: Arc<Counters>,
    /// Where this process leaves a mark once a link it dialled carried a frame.
    marks: PathBuf,
}

/// Counts the frames received on a link, then hands them on.
struct CountingSource {
    inner: FrameReceiver,
    counters: Arc<Counters>,
}

impl FrameSource for CountingSource {
    fn poll_recv(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Frame, NetError>> {
        let r = std::task::ready!(self.inner.poll_recv(cx));
        if r.is_ok() {
            self.counters.frames_in.fetch_add(1, Ordering::SeqCst);
        }
        Poll::Ready(r)
    }
}

/// Leaves a mark file named after this process the first time a dialled link sends.
struct MarkingSink {
    inner: FrameSender,
    marked: AtomicBool,
    mark: PathBuf,
}

impl FrameSink for MarkingSink {
    fn send(&self, frame: Frame) -> Result<(), NetError> {
        self.inner.send(frame)?;
        if !self.marked.swap(true, Ordering::SeqCst) {
            std::fs::write(&self.mark, b"").map_err(NetError::Io)?;
        }
        Ok(())
    }
    fn close(&self, reason: &str) {
        self.inner.close(reason)
    }
    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
}

/// The counting listener: wraps each accepted link's receiver.
struct CountingListener {
    inner: Box<dyn Listener>,
    counters: Arc<Counters>,
}

impl Listener for CountingListener {
    fn local_addr(&self) -> String {
        self.inner.local_addr()
    }
    fn accept(&mut self) -> BoxFuture<'_, Result<Conn, NetError>> {
        Box::pin(async move {
            let conn = self.inner.accept().await?;
            self.counters.accepted.fetch_add(1, Ordering::SeqCst);
            Ok(Conn {
                receiver: FrameReceiver::new(CountingSource {
                    inner: conn.receiver,
                    counters: self.counters.clone(),
                }),
                ..conn
            })
        })
    }
}

impl Transport for Counting {
    fn listen<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Box<dyn Listener>, NetError>> {
        Box::pin(async move {
            let inner = self.inner.listen(addr).await?;
            Ok(Box::new(CountingListener {
                inner,
                counters: self.counters.clone(),
            }) as Box<dyn Listener>)
        })
    }
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Conn, NetError>> {
        Box::pin(async move {
            let conn = self.inner.connect(addr).await?;
            let max_frame = conn.sender.max_frame();
            let mark = self.marks.join(format!("dialled-{}", std::process::id()));
            Ok(Conn {
                sender: FrameSender::new(
                    MarkingSink {
                        inner: conn.sender,
                        marked: AtomicBool::new(false),
                        mark,
                    },
                    max_frame,
                ),
                ..conn
            })
        })
    }
    fn name(&self) -> &'static str {
        "counting-quic"
    }
}

#[dagger::task]
fn pid(_x: u32) -> u32 {
    std::process::id()
}

/// The pids of the processes that left a mark named `prefix-<pid>` in `dir`.
fn marked(dir: &std::path::Path, prefix: &str) -> std::collections::BTreeSet<u32> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix(prefix)?
                .parse()
                .ok()
        })
        .collect()
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
        std::fs::write(dir.join(format!("made-{}", std::process::id())), b"")
            .map_err(NetError::Io)?;
        Ok(Arc::new(Counting {
            inner: QuicTransport::new(identity.clone(), NetConfig::default())?,
            counters: counters(),
            marks: dir.clone(),
        }) as Arc<dyn Transport>)
    });
    dagger::init();

    let ctx = Context::builder()
        .workers(2)
        .worker_threads(1)
        .driver_runs_tasks(false)
        .build()
        .unwrap();
    let pids: std::collections::BTreeSet<u32> = (0..16u32)
        .map(|i| pid::spawn(&ctx, i).unwrap().fetch().unwrap())
        .collect();
    let driver = std::process::id();
    let workers: std::collections::BTreeSet<u32> = ctx.local_worker_pids().into_iter().collect();
    assert_eq!(workers.len(), 2, "two worker processes");

    // Every process made its transport with the factory.
    let made = marked(&marks, "made-");
    assert!(made.contains(&driver), "the driver used the factory");
    assert!(
        workers.is_subset(&made),
        "workers used the factory: {made:?}"
    );

    // The tasks ran in worker processes, not in the driver...
    assert!(
        !pids.is_empty() && pids.is_subset(&workers) && !pids.contains(&driver),
        "tasks ran on {pids:?}, workers are {workers:?}, driver {driver}"
    );
    // ...which joined by dialling through the user's transport and sent frames on it...
    let dialled = marked(&marks, "dialled-");
    assert!(
        workers.is_subset(&dialled),
        "every worker sent frames on a link it dialled through the user's transport: \
         {dialled:?}"
    );
    // ...and the driver received their traffic through the links its listener accepted:
    // a hello and a join from each worker, and at least one batch of results.
    let c = counters();
    assert!(
        c.accepted.load(Ordering::SeqCst) >= workers.len(),
        "the driver accepted each worker's link through the user's transport"
    );
    let frames_in = c.frames_in.load(Ordering::SeqCst);
    assert!(
        frames_in > 2 * workers.len(),
        "only {frames_in} frames arrived through the user's transport"
    );
    let _ = std::fs::remove_dir_all(&marks);
}
