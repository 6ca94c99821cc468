//! A progress bar for long waits: [`Context::collect`](crate::Context::collect) and
//! [`Handle::fetch`](crate::Handle::fetch) show tasks done out of tasks submitted, and the
//! rate, on standard error while they wait, when the wait lasts longer than
//! [`SHOW_AFTER`] and [`Progress`] allows it (by default: when standard error is a
//! terminal). The bar reads the scheduler's counters ([`Stats`](crate::Stats)) a few
//! times a second; it never slows the tasks down.

use crate::context::Context;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A wait shorter than this shows nothing.
pub const SHOW_AFTER: Duration = Duration::from_millis(500);
/// How often the bar is updated.
const TICK: Duration = Duration::from_millis(100);

/// Whether long waits show a progress bar ([`ContextBuilder::progress`](crate::ContextBuilder::progress)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Progress {
    /// When standard error is a terminal (default).
    #[default]
    Auto,
    /// Never.
    Off,
    /// Always (drawn only where the terminal library can draw: a terminal).
    On,
}

impl Progress {
    pub(crate) fn enabled(self) -> bool {
        match self {
            Progress::Auto => std::io::stderr().is_terminal(),
            Progress::Off => false,
            Progress::On => true,
        }
    }
}

/// Where a wait stands: tasks done since the wait began, out of the tasks to do then and
/// submitted since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Tasks finished or failed when the wait began.
    base_done: u64,
    /// Tasks not yet finished or failed when the wait began.
    base_open: u64,
    /// Tasks submitted when the wait began.
    base_submitted: u64,
}

impl Tally {
    pub(crate) fn new(s: &crate::Stats) -> Self {
        let done = s.finished + s.failed;
        Self {
            base_done: done,
            base_open: s.submitted.saturating_sub(done),
            base_submitted: s.submitted,
        }
    }

    /// `(done, total)` now.
    pub(crate) fn at(&self, s: &crate::Stats) -> (u64, u64) {
        let done = (s.finished + s.failed).saturating_sub(self.base_done);
        let total = self.base_open + s.submitted.saturating_sub(self.base_submitted);
        (done.min(total), total)
    }
}

/// Runs `wait` while a progress bar, if enabled, shows how the context's tasks advance.
pub(crate) fn while_waiting<R>(ctx: &Context, wait: impl FnOnce() -> R) -> R {
    if !ctx.shows_progress() {
        return wait();
    }
    let Some(start) = ctx.stats() else {
        return wait();
    };
    let tally = Tally::new(&start);
    let stop = Arc::new(AtomicBool::new(false));
    let drawer = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        std::thread::Builder::new()
            .name("dagger-progress".into())
            .spawn(move || draw(&ctx, tally, &stop))
    };
    let out = wait();
    stop.store(true, Ordering::Release);
    if let Ok(drawer) = drawer {
        let _ = drawer.join();
    }
    out
}

/// Draws the bar until `stop`, from [`SHOW_AFTER`] on.
fn draw(ctx: &Context, tally: Tally, stop: &AtomicBool) {
    let mut waited = Duration::ZERO;
    while waited < SHOW_AFTER {
        if stop.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(TICK);
        waited += TICK;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} tasks ({per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while !stop.load(Ordering::Acquire) {
        let Some(s) = ctx.stats() else {
            break;
        };
        let (done, total) = tally.at(&s);
        bar.set_length(total);
        bar.set_position(done);
        std::thread::sleep(TICK);
    }
    bar.finish_and_clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(submitted: u64, finished: u64, failed: u64) -> crate::Stats {
        crate::Stats {
            submitted,
            finished,
            failed,
            ..Default::default()
        }
    }

    #[test]
    fn the_tally_counts_from_the_start_of_the_wait() {
        // 100 tasks before the wait, 40 of them done.
        let t = Tally::new(&stats(100, 35, 5));
        assert_eq!(t.at(&stats(100, 35, 5)), (0, 60));
        assert_eq!(t.at(&stats(100, 80, 5)), (45, 60));
        // 20 more submitted during the wait.
        assert_eq!(t.at(&stats(120, 100, 10)), (70, 80));
        assert_eq!(t.at(&stats(120, 110, 10)), (80, 80));
    }
}
