//! A worker process's log events reach the driver's subscriber: a task logs in a real
//! worker process, and the driver's subscriber receives the event under the target
//! `dagger::worker`, with the worker, the original target, and the task's span (its id,
//! function and attempt) in the message.

#![cfg(feature = "quic")]

use dagger::prelude::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::Layer;

const GUARD: Duration = Duration::from_secs(120);

#[dagger::task]
fn chatty(i: u64) -> u64 {
    tracing::info!(i, "hello from a task");
    i
}

/// One event the driver's subscriber saw: its fields as `name=value` text.
type Seen = Arc<Mutex<Vec<String>>>;

struct Capture(Seen);

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?};", field.name()));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: LayerContext<'_, S>) {
        if event.metadata().target() == "dagger::worker" {
            let mut f = Fields(String::new());
            event.record(&mut f);
            self.0.lock().unwrap().push(f.0);
        }
    }
}

#[test]
fn a_worker_s_log_events_reach_the_driver_s_subscriber() {
    dagger::init();
    let seen: Seen = Arc::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(Capture(seen.clone())),
    )
    .expect("the test's subscriber");
    let ctx = Context::builder()
        .workers(1)
        .test_harness()
        .worker_logs("worker_logs=info")
        .build()
        .unwrap();
    let worker = ctx.workers()[0];
    let hs: Vec<_> = (0..5u64).map(|i| chatty::spawn(&ctx, i).unwrap()).collect();
    for h in &hs {
        h.fetch().unwrap();
    }
    let deadline = Instant::now() + GUARD;
    loop {
        let lines: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("hello from a task"))
            .cloned()
            .collect();
        if lines.len() == 5 {
            for l in &lines {
                assert!(l.contains(&format!("worker={worker};")), "{l}");
                assert!(l.contains("origin=worker_logs;"), "{l}");
                assert!(l.contains("task{task=task-"), "the task's span: {l}");
                assert!(l.contains("func=worker_logs::chatty"), "{l}");
                assert!(l.contains("attempt=1"), "{l}");
            }
            break;
        }
        assert!(lines.len() < 5, "too many: {lines:?}");
        assert!(Instant::now() < deadline, "forwarded so far: {lines:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
