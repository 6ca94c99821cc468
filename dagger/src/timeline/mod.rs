//! What ran where and when, and pictures of it: a run's [`Timeline`] (from
//! `Context::timeline`) exported as a Chrome trace (Perfetto, `chrome://tracing`), a Gantt
//! chart in SVG and a Graphviz graph; and the graph of a lazy task before it runs
//! ([`Lazy::to_dot`](crate::Lazy::to_dot)).
//!
//! Every time is on the driver's clock (see [`dagger_runtime::timeline`] for how worker
//! clocks are aligned); the exports keep it, so the times of a trace, a chart and a graph
//! of the same run agree.
//!
//! The exports are deterministic: the same timeline gives the same bytes, and a function
//! keeps its color from run to run as long as no other function of the run claims it
//! first.

mod chrome;
pub(crate) mod dot;
mod gantt;

pub use dagger_runtime::timeline::{MoveSpan, TaskSpan};
/// The driver core's record of a run, which a [`Timeline`] wraps and dereferences to; build
/// one by hand (and turn it into a `Timeline` with `From`) to export spans from elsewhere.
pub use dagger_runtime::Timeline as Record;

use dagger_core::{ProcId, TaskId};
use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every task and move of a run, with the processors they ran on, as the driver recorded
/// them; and its exports.
///
/// Made from the driver core's record ([`Context::timeline`](crate::Context::timeline)); a
/// hand-built one comes from a [`Record`] through `From`, and the record's fields are
/// readable through `Deref`.
#[derive(Clone, Default)]
pub struct Timeline {
    inner: Record,
    /// Index in `inner.tasks` of each task's span.
    by_task: HashMap<TaskId, usize>,
}

impl From<Record> for Timeline {
    fn from(inner: Record) -> Self {
        let by_task = inner
            .tasks
            .iter()
            .enumerate()
            .map(|(i, span)| (span.task, i))
            .collect();
        Self { inner, by_task }
    }
}

impl Deref for Timeline {
    type Target = Record;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.inner, f)
    }
}

impl PartialEq for Timeline {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}

/// Why a timeline could not be exported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimelineError {
    /// The file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The chart could not be laid out or drawn.
    #[error("cannot draw the Gantt chart: {message}")]
    Draw {
        /// What the drawing library said.
        message: String,
    },
}

impl Timeline {
    /// One span per task that finished or failed on a worker, in the order they were
    /// reported.
    pub fn tasks(&self) -> &[TaskSpan] {
        &self.inner.tasks
    }

    /// The chunks moved between workers, in the order they were reported.
    pub fn moves(&self) -> &[MoveSpan] {
        &self.inner.moves
    }

    /// The processors tasks ran on, with their labels (`thread[0]@worker-2`), in first-use
    /// order.
    pub fn processors(&self) -> &[(ProcId, String)] {
        &self.inner.processors
    }

    /// The span of `task`, if it ran (its last attempt).
    pub fn span(&self, task: TaskId) -> Option<&TaskSpan> {
        self.by_task.get(&task).map(|&i| &self.inner.tasks[i])
    }

    /// The run as a Chrome trace (the Trace Event Format's JSON object form), for
    /// [Perfetto](https://ui.perfetto.dev) or `chrome://tracing`.
    ///
    /// Each worker is a process (`pid` = worker number) and each processor a thread of it
    /// (`tid` = processor index), named by metadata events. A task is a complete event
    /// (`X`) named by its function, from its start to its end, with its id, function,
    /// attempts, result size and queued and dispatched times (µs) as arguments; a failed
    /// task has its error there too. A move is a complete event on a "moves in" thread of
    /// the destination worker (one such thread per overlapping move), and a flow from the
    /// task that made the chunk, through the move, to the first task on the destination
    /// that took it. Times are µs on the driver's clock.
    pub fn chrome_trace(&self) -> String {
        chrome::render(self)
    }

    /// Writes [`chrome_trace`](Self::chrome_trace) to `path`.
    pub fn write_chrome_trace(&self, path: impl AsRef<Path>) -> Result<(), TimelineError> {
        write(path.as_ref(), self.chrome_trace())
    }

    /// The run as a Gantt chart in SVG, like Dask's task stream: a row per processor, a bar
    /// per task colored by its function (failed tasks outlined in red), a thin line per
    /// move from the row of the task that made the chunk to the row of the task that took
    /// it (solid over the network, dashed through shared memory), a time axis in ms on the
    /// driver's clock, and a legend of the functions.
    pub fn gantt_svg(&self) -> Result<String, TimelineError> {
        gantt::render(self)
    }

    /// Writes [`gantt_svg`](Self::gantt_svg) to `path`.
    pub fn write_gantt_svg(&self, path: impl AsRef<Path>) -> Result<(), TimelineError> {
        write(path.as_ref(), self.gantt_svg()?)
    }

    /// The finished run as a Graphviz graph (DOT): a node per task, labelled with its
    /// function, id and processor and colored as in the Gantt chart, and an edge per
    /// input, labelled with the size of the result it carried and, when the result was
    /// moved between workers, `shm` or `net`. A task whose producer has no span (it did not
    /// run on a worker) points from a dashed node of that id.
    pub fn to_dot(&self) -> String {
        dot::timeline(self)
    }

    /// The tasks that took `task`'s result, in order of their start.
    pub(crate) fn consumers(&self) -> HashMap<TaskId, Vec<usize>> {
        let mut out: HashMap<TaskId, Vec<usize>> = HashMap::new();
        for (i, span) in self.inner.tasks.iter().enumerate() {
            for input in &span.inputs {
                out.entry(*input).or_default().push(i);
            }
        }
        for list in out.values_mut() {
            list.sort_by_key(|&i| self.inner.tasks[i].started);
        }
        out
    }

    /// The processors to show: the recorded ones and any a task names that the list
    /// lacks, sorted by worker and index, with their labels.
    pub(crate) fn rows(&self) -> Vec<(ProcId, String)> {
        let mut rows: Vec<(ProcId, String)> = self.inner.processors.clone();
        for span in &self.inner.tasks {
            if !rows.iter().any(|(p, _)| *p == span.proc) {
                rows.push((span.proc, span.proc.to_string()));
            }
        }
        rows.sort_by_key(|(p, _)| *p);
        rows.dedup_by_key(|(p, _)| *p);
        rows
    }

    /// The color of each function in the Gantt chart and the graph (RGB), by function name
    /// in sorted order. A function's color is chosen from a ten-color palette by a hash
    /// of its name, the next free one when another function of the run has it: stable
    /// from run to run, and distinct among up to ten functions.
    pub fn function_colors(&self) -> Vec<(String, [u8; 3])> {
        let mut names: Vec<&str> = self.inner.tasks.iter().map(|t| t.func.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let mut taken = [false; PALETTE.len()];
        names
            .into_iter()
            .map(|name| {
                let start = (fnv1a(name) % PALETTE.len() as u64) as usize;
                let slot = (0..PALETTE.len())
                    .map(|k| (start + k) % PALETTE.len())
                    .find(|&k| !taken[k])
                    .unwrap_or(start);
                taken[slot] = true;
                if taken.iter().all(|&t| t) {
                    taken = [false; PALETTE.len()];
                }
                (name.to_owned(), PALETTE[slot])
            })
            .collect()
    }
}

/// Ten colors that stay apart (Tableau 10, with cyan for its grey, which the chart's moves
/// use).
const PALETTE: [[u8; 3]; 10] = [
    [0x4e, 0x79, 0xa7],
    [0xf2, 0x8e, 0x2b],
    [0xe1, 0x57, 0x59],
    [0x76, 0xb7, 0xb2],
    [0x59, 0xa1, 0x4f],
    [0xed, 0xc9, 0x48],
    [0xb0, 0x7a, 0xa1],
    [0xff, 0x9d, 0xa7],
    [0x9c, 0x75, 0x5f],
    [0x17, 0xbe, 0xcf],
];

/// FNV-1a: a hash that is the same in every build and on every platform.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A color as `#rrggbb`.
pub(crate) fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// A duration in µs, the Chrome trace's unit.
pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A size for people: `512 B`, `1.5 KiB`, `3.0 MiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn write(path: &Path, contents: String) -> Result<(), TimelineError> {
    std::fs::write(path, contents).map_err(|source| TimelineError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests;
