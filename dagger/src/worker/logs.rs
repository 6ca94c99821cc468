//! A worker process's log events, forwarded to the driver.
//!
//! The driver's `Welcome` names which events to forward, as `tracing` filter directives
//! (`RUST_LOG` syntax; the driver's own `RUST_LOG` by default). A worker process then
//! installs a subscriber of its own (the process is the runtime's: the program's `main`
//! never gets past `dagger::init`) whose layer formats each event it lets through, with
//! the spans it happened in (a task's span, target `dagger::task`, always on, names the
//! task, its function, worker, processor and attempt), and queues it. A task of the worker sends the queue to the driver every
//! [`FLUSH_EVERY`] as one `ToDriver::Log`; the driver emits the events again under the
//! target `dagger::worker`, so `RUST_LOG=dagger=debug` on the driver shows the whole
//! cluster.
//!
//! A token bucket ([`RATE`] events a second, bursts of [`BURST`]) bounds what a chatty
//! worker sends; what it drops is counted and reported.

use dagger_core::wire::LogLine;
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

/// How often queued events go to the driver.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Events forwarded per second, at most, on average.
const RATE: f64 = 200.0;
/// Events forwarded in one burst, at most.
const BURST: f64 = 400.0;
/// The longest message forwarded; longer ones are cut.
const MAX_MESSAGE: usize = 4096;

struct Queue {
    lines: Vec<LogLine>,
    dropped: u64,
    tokens: f64,
    refilled: Instant,
}

static QUEUE: Mutex<Option<Queue>> = Mutex::new(None);

/// Installs the forwarding subscriber for `directives` in this process, once. Returns
/// whether events are forwarded: not when the directives are empty or do not parse, or
/// when the process already has a global subscriber.
pub(crate) fn install(directives: &str) -> bool {
    if directives.trim().is_empty() {
        return false;
    }
    // The span of every task run (target `dagger::task`) is always on, so that an event a
    // task logs is forwarded with the task it belongs to.
    let filter = match EnvFilter::try_new(format!("{directives},dagger::task=info")) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "dagger worker: the driver's log filter does not parse ({e}); not forwarding logs"
            );
            return false;
        }
    };
    *QUEUE.lock() = Some(Queue {
        lines: Vec::new(),
        dropped: 0,
        tokens: BURST,
        refilled: Instant::now(),
    });
    let subscriber = tracing_subscriber::registry().with(Forward.with_filter(filter));
    tracing::subscriber::set_global_default(subscriber).is_ok()
}

/// The events queued since the last call and the count dropped meanwhile; `None` when
/// there is nothing to send.
pub(crate) fn take() -> Option<(Vec<LogLine>, u64)> {
    let mut q = QUEUE.lock();
    let q = q.as_mut()?;
    if q.lines.is_empty() && q.dropped == 0 {
        return None;
    }
    Some((std::mem::take(&mut q.lines), std::mem::take(&mut q.dropped)))
}

/// The layer that formats and queues events.
struct Forward;

/// A span's fields as text, kept in the span's extensions.
struct SpanText(String);

impl<S> Layer<S> for Forward
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut text = Text::default();
        attrs.record(&mut text);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanText(text.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut q = QUEUE.lock();
        let Some(q) = q.as_mut() else {
            return;
        };
        let now = Instant::now();
        q.tokens = (q.tokens + now.duration_since(q.refilled).as_secs_f64() * RATE).min(BURST);
        q.refilled = now;
        if q.tokens < 1.0 {
            q.dropped += 1;
            return;
        }
        q.tokens -= 1.0;
        let mut message = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                let _ = write!(message, "{}", span.name());
                if let Some(t) = span.extensions().get::<SpanText>() {
                    if !t.0.is_empty() {
                        let _ = write!(message, "{{{}}}", t.0);
                    }
                }
                message.push_str(": ");
            }
        }
        let mut text = Text::default();
        event.record(&mut text);
        message.push_str(&text.message);
        if !text.fields.is_empty() {
            if !text.message.is_empty() {
                message.push(' ');
            }
            message.push_str(&text.fields);
        }
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let meta = event.metadata();
        q.lines.push(LogLine {
            level: level_number(*meta.level()),
            target: meta.target().to_owned(),
            message,
        });
    }
}

fn level_number(level: Level) -> u8 {
    match level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// An event's message and its other fields (`name=value`, space-separated).
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_formatted_with_their_spans_and_rate_limited() {
        *QUEUE.lock() = Some(Queue {
            lines: Vec::new(),
            dropped: 0,
            tokens: 3.0,
            refilled: Instant::now(),
        });
        let subscriber =
            tracing_subscriber::registry().with(Forward.with_filter(EnvFilter::new("debug")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::debug_span!("task", task = 7u64, func = "inc");
            let _e = span.enter();
            tracing::info!(bytes = 3u64, "moved");
            tracing::trace!("filtered out");
            for _ in 0..10 {
                tracing::warn!("chatty");
            }
        });
        let (lines, dropped) = take().expect("events queued");
        assert_eq!(lines[0].level, 3);
        assert_eq!(lines[0].message, "task{task=7 func=inc}: moved bytes=3");
        // 3 tokens: the info and two warnings went out (the refill in between is tiny).
        assert!(lines.len() >= 3 && lines.len() < 6, "{lines:?}");
        assert!(dropped >= 5, "{dropped}");
        assert!(lines.iter().all(|l| !l.message.contains("filtered out")));
        *QUEUE.lock() = None;
    }
}
