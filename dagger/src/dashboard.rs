//! The live view of a running cluster: a small web page the driver serves when
//! [`ContextBuilder::dashboard`](crate::ContextBuilder::dashboard) asks for one.
//!
//! The server runs on the driver's I/O runtime and keeps no [`Context`](crate::Context)
//! alive: it holds the driver loop's command channel only, asks the loop for what it shows
//! (one query per request, the same path as [`Context::stats`](crate::Context::stats)), and
//! stops when the loop ends, at shutdown. Nothing runs between requests except one task
//! that keeps the last cluster events (joins, losses, restarts) in a ring buffer.
//!
//! Routes:
//!
//! - `GET /`: one page of HTML and plain JavaScript (no framework, nothing fetched from
//!   elsewhere), embedded in the binary. It polls the two JSON routes every 250 ms.
//! - `GET /api/state`: the processor tree (workers and their processors), per-worker queue
//!   (tasks dispatched there and not finished) and memory (resident set size of a worker
//!   process on this host, read from `/proc/<pid>/status`; `null` for another host), the
//!   scheduler's counters and the last cluster events.
//! - `GET /api/tasks?since=N`: the task stream, every entry whose `seq` is above `N`
//!   (at most [`MAX_BATCH`] at a time, oldest first) and `next`, the `since` of the next
//!   call. A task gets an entry when it is seen dispatched (`running`) and another when it
//!   is seen finished or failed.
//!
//! A server bound to a loopback address refuses (421) requests whose `Host` header names
//! anything but a loopback host, so a web page of another origin cannot read it through a
//! name rebound to 127.0.0.1.
//!
//! The JSON field names are stable; the page's elements the tests read have stable ids
//! (`processor-tree`, `workers`, `task-stream`, `events`, `stats`), and each row of the
//! task stream carries its function's name in `data-func`.

mod http;

use crate::context::{ClusterEvent, ContextError};
use crate::driver::{DriverCmd, DriverState};
use crate::json::{obj, Json};
use dagger_core::{ProcId, TaskId, WorkerId};
use http::{Request, Response};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Cluster events kept for the page.
const EVENT_RING: usize = 256;
/// Task-stream entries kept for the page.
const TASK_RING: usize = 8192;
/// The most task-stream entries one `/api/tasks` answer carries.
pub(crate) const MAX_BATCH: usize = 2000;
/// The most tasks a sample lists as running (a pool dispatches a few per processor; more
/// only with saturation off or many pinned tasks).
const MAX_RUNNING: usize = 4096;

/// Starts the server on the driver's runtime, bound to exactly `addr`, and returns the
/// bound address (the port chosen when `addr` asks for port 0).
pub(crate) fn start(
    addr: &str,
    cmd: mpsc::UnboundedSender<DriverCmd>,
    handle: &tokio::runtime::Handle,
) -> Result<SocketAddr, ContextError> {
    let bind = addr.to_owned();
    let listener =
        crate::context::run_on(
            handle,
            async move { tokio::net::TcpListener::bind(bind).await },
        )
        .ok_or(ContextError::Shutdown)?
        .map_err(|source| ContextError::Dashboard {
            addr: addr.to_owned(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| ContextError::Dashboard {
            addr: addr.to_owned(),
            source,
        })?;
    let shared = Arc::new(Shared {
        cmd: cmd.clone(),
        started: Instant::now(),
        host: dagger_proc::hostname(),
        events: Mutex::new(EventLog::default()),
        tasks: tokio::sync::Mutex::new(TaskStream::default()),
    });
    // The events from now on; the driver loop drops the sender when it ends, which is
    // also the server's signal to stop.
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    cmd.send(DriverCmd::Query(Box::new(move |st: &mut DriverState| {
        st.subscribe(ev_tx)
    })))
    .map_err(|_| ContextError::Shutdown)?;
    let loopback = local.ip().is_loopback();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    {
        let shared = shared.clone();
        handle.spawn(async move {
            while let Some(e) = ev_rx.recv().await {
                let at = shared.started.elapsed();
                shared.events.lock().push(at, &e);
            }
            let _ = stop_tx.send(());
        });
    }
    handle.spawn(http::serve(
        listener,
        move |req| route(shared.clone(), loopback, req),
        stop_rx,
    ));
    Ok(local)
}

/// What the handlers share. No `Context`: the command channel only.
struct Shared {
    cmd: mpsc::UnboundedSender<DriverCmd>,
    started: Instant,
    /// This host's name: a worker reporting it runs here, and its memory can be read.
    host: String,
    events: Mutex<EventLog>,
    /// Held across a sample, so that concurrent requests see one consistent stream.
    tasks: tokio::sync::Mutex<TaskStream>,
}

impl Shared {
    /// Runs `f` in the driver loop; `None` once the loop has ended.
    async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DriverState) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(DriverCmd::Query(Box::new(move |st| {
                let _ = tx.send(f(st));
            })))
            .ok()?;
        rx.await.ok()
    }
}

/// One cluster event as the page shows it.
#[derive(Clone, Debug)]
struct EventView {
    /// Its number, from 1.
    seq: u64,
    /// Milliseconds since the server started.
    at_ms: f64,
    /// `joined`, `lost`, `drained`, `drain_failed`, `retried`, `restarted`,
    /// `restarts_exhausted` or `other`.
    kind: &'static str,
    /// The worker it is about, if one.
    worker: Option<u32>,
    /// A line of text.
    text: String,
}

#[derive(Default)]
struct EventLog {
    ring: VecDeque<EventView>,
    next: u64,
}

impl EventLog {
    fn push(&mut self, at: std::time::Duration, e: &ClusterEvent) {
        let (kind, worker, text) = describe(e);
        self.next += 1;
        if self.ring.len() == EVENT_RING {
            self.ring.pop_front();
        }
        self.ring.push_back(EventView {
            seq: self.next,
            at_ms: millis(at),
            kind,
            worker: worker.map(|w| w.0),
            text,
        });
    }
}

fn describe(e: &ClusterEvent) -> (&'static str, Option<WorkerId>, String) {
    match e {
        ClusterEvent::WorkerJoined { worker } => {
            ("joined", Some(*worker), format!("{worker} joined"))
        }
        ClusterEvent::WorkerLost { worker, reason } => {
            ("lost", Some(*worker), format!("{worker} lost: {reason}"))
        }
        ClusterEvent::WorkerDrained {
            worker,
            moved_chunks,
            moved_bytes,
        } => (
            "drained",
            Some(*worker),
            format!("{worker} drained ({moved_chunks} results, {moved_bytes} bytes handed over)"),
        ),
        ClusterEvent::DrainFailed {
            worker,
            task,
            cause,
        } => (
            "drain_failed",
            Some(*worker),
            format!("drain of {worker} failed on {task}: {cause}"),
        ),
        ClusterEvent::TaskRetried { task, attempt } => (
            "retried",
            None,
            format!("{task} queued again (attempt {attempt})"),
        ),
        ClusterEvent::WorkerRestarted {
            old_pid,
            new_pid,
            restarts,
        } => (
            "restarted",
            None,
            format!("process {old_pid} replaced by {new_pid} (restart {restarts})"),
        ),
        ClusterEvent::RestartsExhausted { pid, restarts, .. } => (
            "restarts_exhausted",
            None,
            format!("process {pid} not replaced: {restarts} restarts spent"),
        ),
        other => ("other", None, format!("{other:?}")),
    }
}

/// One entry of the task stream.
#[derive(Clone, Debug)]
struct TaskEntry {
    /// Its number, from 1; `/api/tasks?since=N` returns the entries above `N`.
    seq: u64,
    /// The task's id.
    task: u64,
    /// Its function's registered name.
    func: String,
    /// The worker it was dispatched to.
    worker: Option<u32>,
    /// The processor, as `thread[1]@worker-2`.
    processor: String,
    /// `running` (dispatched, not finished), `finished` or `failed`.
    state: &'static str,
    /// Milliseconds from submission to dispatch.
    waited_ms: Option<f64>,
    /// Milliseconds its function ran.
    run_ms: Option<f64>,
    /// Why it failed.
    error: Option<String>,
}

/// What the server remembers of the task stream between samples.
#[derive(Default)]
struct TaskStream {
    ring: VecDeque<TaskEntry>,
    next: u64,
    /// Tasks seen running and not yet seen ending, with where they ran.
    open: HashMap<TaskId, Open>,
    /// The timeline's task spans read so far.
    span_cursor: usize,
}

#[derive(Clone)]
struct Open {
    func: String,
    worker: WorkerId,
    processor: String,
}

impl TaskStream {
    fn push(&mut self, mut e: TaskEntry) {
        self.next += 1;
        e.seq = self.next;
        if self.ring.len() == TASK_RING {
            self.ring.pop_front();
        }
        self.ring.push_back(e);
    }

    fn since(&self, since: u64) -> Vec<TaskEntry> {
        // Entries are numbered consecutively: the first one above `since` is found by
        // offset, not by a scan.
        let first = self.ring.front().map_or(1, |e| e.seq);
        let skip = since.saturating_add(1).saturating_sub(first);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        self.ring
            .iter()
            .skip(skip)
            .take(MAX_BATCH)
            .cloned()
            .collect()
    }

    /// Folds one sample of the driver into the stream.
    fn apply(&mut self, sample: TaskSample) {
        let running: HashSet<TaskId> = sample.running.iter().map(|r| r.task).collect();
        for r in sample.running {
            if self.open.contains_key(&r.task) {
                continue;
            }
            self.open.insert(
                r.task,
                Open {
                    func: r.func.clone(),
                    worker: r.worker,
                    processor: r.processor.clone(),
                },
            );
            self.push(TaskEntry {
                seq: 0,
                task: r.task.0,
                func: r.func,
                worker: Some(r.worker.0),
                processor: r.processor,
                state: "running",
                waited_ms: r.waited_ms,
                run_ms: None,
                error: None,
            });
        }
        self.span_cursor = sample.spans_read;
        for end in sample.ended {
            // A failed attempt's span while the task runs again: it stays running.
            if running.contains(&end.task) {
                continue;
            }
            let open = self.open.remove(&end.task);
            let (func, worker, processor) = match (open, end.func) {
                (Some(o), func) => (
                    func.unwrap_or(o.func),
                    end.worker.unwrap_or(o.worker),
                    end.processor.unwrap_or(o.processor),
                ),
                (None, Some(func)) => (
                    func,
                    end.worker.unwrap_or(WorkerId::DRIVER),
                    end.processor.unwrap_or_default(),
                ),
                // Not seen running, and nothing to name it by.
                (None, None) => continue,
            };
            self.push(TaskEntry {
                seq: 0,
                task: end.task.0,
                func,
                worker: Some(worker.0),
                processor,
                state: if end.error.is_some() {
                    "failed"
                } else {
                    "finished"
                },
                waited_ms: end.waited_ms,
                run_ms: end.run_ms,
                error: end.error,
            });
        }
    }
}

/// A task dispatched and unfinished, as sampled in the driver loop.
struct Running {
    task: TaskId,
    func: String,
    worker: WorkerId,
    processor: String,
    waited_ms: Option<f64>,
}

/// A task that has ended: from the timeline, or from the scheduler's record of a task
/// seen running.
struct Ended {
    task: TaskId,
    /// Its function (`None`: as seen running).
    func: Option<String>,
    /// Where it ran last.
    worker: Option<WorkerId>,
    processor: Option<String>,
    waited_ms: Option<f64>,
    run_ms: Option<f64>,
    error: Option<String>,
}

/// What one sample of the driver brings to the task stream.
struct TaskSample {
    running: Vec<Running>,
    ended: Vec<Ended>,
    /// The timeline's spans read so far (where the next sample starts).
    spans_read: usize,
}

/// One processor of the tree.
#[derive(Clone, Debug)]
struct ProcView {
    /// `proc[i]@worker-n`.
    id: String,
    /// Its index within its process (0 for the process root).
    index: u32,
    /// The index of its parent, `null` for the root.
    parent: Option<u32>,
    /// Its kind (`os`, `thread`, a device's).
    kind: String,
    /// Its short human name.
    label: String,
}

/// One worker process and its processors.
#[derive(Clone, Debug)]
struct WorkerView {
    /// Its id's number.
    id: u32,
    /// `worker-n`.
    label: String,
    /// The name its launcher gave it.
    name: String,
    /// Its host.
    host: String,
    /// Its OS process id.
    pid: u32,
    /// Whether it is the driver's own process.
    driver: bool,
    /// Whether it is in the pool (joined and not lost; the driver's root is listed without
    /// being in the pool when it runs no tasks).
    in_pool: bool,
    /// Tasks dispatched there and not finished.
    queue: usize,
    /// Resident set size in bytes, when the process runs on this host.
    rss_bytes: Option<u64>,
    /// Its processors, the root first.
    processors: Vec<ProcView>,
}

/// The scheduler's counters the page shows.
#[derive(Clone, Debug)]
struct StatsView {
    submitted: u64,
    finished: u64,
    failed: u64,
    running: u64,
    ready: u64,
    waiting: u64,
}

/// `/api/state`.
struct StateView {
    /// Milliseconds since the server started.
    uptime_ms: f64,
    stats: StatsView,
    workers: Vec<WorkerView>,
    /// The last cluster events, oldest first.
    events: Vec<EventView>,
}

/// `/api/tasks`.
struct TasksView {
    /// Pass as `since` to get what came after.
    next: u64,
    tasks: Vec<TaskEntry>,
}

impl EventView {
    fn to_json(&self) -> Json {
        obj([
            ("seq", self.seq.into()),
            ("at_ms", self.at_ms.into()),
            ("kind", self.kind.into()),
            ("worker", self.worker.into()),
            ("text", self.text.as_str().into()),
        ])
    }
}

impl TaskEntry {
    fn to_json(&self) -> Json {
        obj([
            ("seq", self.seq.into()),
            ("task", self.task.into()),
            ("func", self.func.as_str().into()),
            ("worker", self.worker.into()),
            ("processor", self.processor.as_str().into()),
            ("state", self.state.into()),
            ("waited_ms", self.waited_ms.into()),
            ("run_ms", self.run_ms.into()),
            ("error", self.error.as_deref().into()),
        ])
    }
}

impl WorkerView {
    fn to_json(&self) -> Json {
        let processors = self
            .processors
            .iter()
            .map(|p| {
                obj([
                    ("id", p.id.as_str().into()),
                    ("index", p.index.into()),
                    ("parent", p.parent.into()),
                    ("kind", p.kind.as_str().into()),
                    ("label", p.label.as_str().into()),
                ])
            })
            .collect();
        obj([
            ("id", self.id.into()),
            ("label", self.label.as_str().into()),
            ("name", self.name.as_str().into()),
            ("host", self.host.as_str().into()),
            ("pid", self.pid.into()),
            ("driver", self.driver.into()),
            ("in_pool", self.in_pool.into()),
            ("queue", self.queue.into()),
            ("rss_bytes", self.rss_bytes.into()),
            ("processors", Json::Arr(processors)),
        ])
    }
}

impl StateView {
    fn to_json(&self) -> Json {
        let s = &self.stats;
        obj([
            ("uptime_ms", self.uptime_ms.into()),
            (
                "stats",
                obj([
                    ("submitted", s.submitted.into()),
                    ("finished", s.finished.into()),
                    ("failed", s.failed.into()),
                    ("running", s.running.into()),
                    ("ready", s.ready.into()),
                    ("waiting", s.waiting.into()),
                ]),
            ),
            (
                "workers",
                Json::Arr(self.workers.iter().map(WorkerView::to_json).collect()),
            ),
            (
                "events",
                Json::Arr(self.events.iter().map(EventView::to_json).collect()),
            ),
        ])
    }
}

impl TasksView {
    fn to_json(&self) -> Json {
        obj([
            ("next", self.next.into()),
            (
                "tasks",
                Json::Arr(self.tasks.iter().map(TaskEntry::to_json).collect()),
            ),
        ])
    }
}

/// Answers one request.
async fn route(shared: Arc<Shared>, loopback: bool, req: Request) -> Response {
    if loopback && !req.host.as_deref().is_some_and(http::is_loopback_host) {
        return Response::text(421, "this server answers requests for a loopback host only");
    }
    match req.path.as_str() {
        "/" => Response::ok("text/html; charset=utf-8", PAGE.to_owned()),
        "/api/state" => api_state(&shared).await,
        "/api/tasks" => {
            let since = match http::query_param(&req.query, "since") {
                None => 0,
                Some(n) => match n.parse() {
                    Ok(n) => n,
                    Err(_) => return Response::text(400, "`since` is a number"),
                },
            };
            api_tasks(&shared, since).await
        }
        _ => Response::text(404, "no such page"),
    }
}

async fn api_state(shared: &Shared) -> Response {
    let sample = shared
        .query(|st| {
            let core = &st.core;
            let pool: HashSet<WorkerId> = core.workers().into_iter().collect();
            let s = core.stats();
            let stats = StatsView {
                submitted: s.submitted,
                finished: s.finished,
                failed: s.failed,
                running: s.running,
                ready: s.ready,
                waiting: s.waiting,
            };
            let workers: Vec<_> = core
                .topology()
                .workers()
                .map(|w| {
                    let queue = core.scheduler().dispatched_to(w.worker).count();
                    let processors = w
                        .procs
                        .iter()
                        .map(|p| ProcView {
                            id: p.id.to_string(),
                            index: p.id.index,
                            parent: p.parent.map(|q| q.index),
                            kind: p.kind.to_string(),
                            label: p.label.clone(),
                        })
                        .collect();
                    WorkerView {
                        id: w.worker.0,
                        label: w.worker.to_string(),
                        name: w.name.clone(),
                        host: w.host.clone(),
                        pid: w.pid,
                        driver: w.worker == WorkerId::DRIVER,
                        in_pool: pool.contains(&w.worker),
                        queue,
                        rss_bytes: None,
                        processors,
                    }
                })
                .collect();
            (stats, workers)
        })
        .await;
    let Some((stats, mut workers)) = sample else {
        return gone();
    };
    for w in &mut workers {
        if w.host == shared.host {
            w.rss_bytes = rss_of(w.pid);
        }
    }
    let events = shared.events.lock().ring.iter().cloned().collect();
    let view = StateView {
        uptime_ms: millis(shared.started.elapsed()),
        stats,
        workers,
        events,
    };
    Response::ok("application/json", view.to_json().render())
}

async fn api_tasks(shared: &Shared, since: u64) -> Response {
    let mut stream = shared.tasks.lock().await;
    let open: Vec<TaskId> = stream.open.keys().copied().collect();
    let span_cursor = stream.span_cursor;
    let sample = shared
        .query(move |st| {
            let core = &st.core;
            let sched = core.scheduler();
            let label = |p: ProcId| match core.topology().proc(p) {
                Some(info) => format!("{}[{}]@{}", info.kind, p.index, p.worker),
                None => p.to_string(),
            };
            let mut running = Vec::new();
            'workers: for w in core.workers() {
                for t in sched.dispatched_to(w) {
                    if running.len() == MAX_RUNNING {
                        break 'workers;
                    }
                    let info = sched.task_info(t.task);
                    let proc = info.as_ref().and_then(|i| i.proc);
                    running.push(Running {
                        task: t.task,
                        func: t.func.to_owned(),
                        worker: w,
                        processor: proc.map_or_else(|| w.to_string(), label),
                        waited_ms: info
                            .as_ref()
                            .and_then(|i| Some(millis(i.dispatched?.saturating_sub(i.submitted)))),
                    });
                }
            }
            // Runs the timeline recorded since the last sample (at most the ring's worth:
            // older entries would leave the ring at once).
            let mut ended = Vec::new();
            let mut spans_read = span_cursor;
            if let Some((_, len)) = core.timeline_tasks_since(usize::MAX) {
                let from = span_cursor.max(len.saturating_sub(TASK_RING));
                if let Some((spans, len)) = core.timeline_tasks_since(from) {
                    spans_read = len;
                    ended.extend(spans.into_iter().map(|t| Ended {
                        task: t.task,
                        func: Some(t.func),
                        worker: Some(t.worker),
                        processor: Some(label(t.proc)),
                        waited_ms: Some(millis(t.dispatched.saturating_sub(t.queued))),
                        run_ms: Some(millis(t.finished.saturating_sub(t.started))),
                        error: t.error,
                    }));
                }
            }
            // Tasks seen running that are neither running now nor in those spans (a span
            // left out above, or a context that does not record): the scheduler's record
            // says how they ended.
            let covered: HashSet<TaskId> = running
                .iter()
                .map(|r| r.task)
                .chain(ended.iter().map(|e| e.task))
                .collect();
            let from_records: Vec<Ended> = open
                .into_iter()
                .filter(|t| !covered.contains(t))
                .filter_map(|t| {
                    let info = sched.task_info(t)?;
                    let error = sched.failure(t).map(ToString::to_string);
                    // Still waiting to run again (a retry): not ended.
                    if info.finished.is_none() && error.is_none() {
                        return None;
                    }
                    Some(Ended {
                        task: t,
                        func: None,
                        worker: info.proc.map(|p| p.worker),
                        processor: info.proc.map(label),
                        waited_ms: info
                            .dispatched
                            .map(|d| millis(d.saturating_sub(info.submitted))),
                        run_ms: info.run_ns.map(|ns| ns as f64 / 1e6),
                        error,
                    })
                })
                .collect();
            ended.extend(from_records);
            TaskSample {
                running,
                ended,
                spans_read,
            }
        })
        .await;
    let Some(sample) = sample else {
        return gone();
    };
    stream.apply(sample);
    let tasks = stream.since(since);
    let next = tasks.last().map_or(since.max(stream.next), |e| e.seq);
    Response::ok(
        "application/json",
        TasksView { next, tasks }.to_json().render(),
    )
}

/// The answer once the driver loop has ended.
fn gone() -> Response {
    Response::text(503, "the context is shut down")
}

fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The resident set size of process `pid` of this host (`VmRSS` of `/proc/<pid>/status`);
/// `None` where that cannot be read (another OS, the process is gone).
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => n.checked_mul(1024),
        _ => None,
    }
}

/// The page: static HTML and JavaScript; every value is put in with `textContent` or
/// `setAttribute`, never parsed as HTML.
const PAGE: &str = include_str!("dashboard/page.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
    }

    fn entry(task: u64) -> TaskEntry {
        TaskEntry {
            seq: 0,
            task,
            func: "f".into(),
            worker: Some(1),
            processor: "thread[1]@worker-1".into(),
            state: "running",
            waited_ms: None,
            run_ms: None,
            error: None,
        }
    }

    #[test]
    fn the_stream_returns_what_came_after_since_within_its_ring() {
        let mut s = TaskStream::default();
        for t in 0..(TASK_RING as u64 + 10) {
            s.push(entry(t));
        }
        let all = s.since(0);
        assert_eq!(all.len(), MAX_BATCH);
        assert_eq!(all[0].seq, 11, "the oldest entries left the ring");
        let tail = s.since(TASK_RING as u64 + 5);
        assert_eq!(
            tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (TASK_RING as u64 + 6..=TASK_RING as u64 + 10).collect::<Vec<_>>()
        );
        assert!(s.since(u64::MAX).is_empty());
    }

    #[test]
    fn a_task_is_listed_running_then_finished_once() {
        let mut s = TaskStream::default();
        let running = || Running {
            task: TaskId(7),
            func: "g".into(),
            worker: WorkerId(2),
            processor: "thread[1]@worker-2".into(),
            waited_ms: Some(1.0),
        };
        let sample = |running: Vec<Running>, ended: Vec<Ended>| TaskSample {
            running,
            ended,
            spans_read: 0,
        };
        s.apply(sample(vec![running()], vec![]));
        s.apply(sample(vec![running()], vec![]));
        let ended = || Ended {
            task: TaskId(7),
            func: None,
            worker: None,
            processor: None,
            waited_ms: Some(1.0),
            run_ms: Some(2.5),
            error: None,
        };
        // A span of an attempt that failed while the task runs again keeps it running.
        s.apply(sample(vec![running()], vec![ended()]));
        s.apply(sample(vec![], vec![ended()]));
        s.apply(sample(vec![], vec![ended()]));
        let rows: Vec<_> = s
            .since(0)
            .iter()
            .map(|e| (e.seq, e.state, e.func.clone(), e.processor.clone()))
            .collect();
        assert_eq!(
            rows,
            vec![
                (1, "running", "g".into(), "thread[1]@worker-2".into()),
                (2, "finished", "g".into(), "thread[1]@worker-2".into())
            ]
        );
        assert!(s.open.is_empty());
    }

    #[test]
    fn a_span_of_a_task_never_seen_running_is_listed_finished() {
        let mut s = TaskStream::default();
        s.apply(TaskSample {
            running: vec![],
            ended: vec![Ended {
                task: TaskId(3),
                func: Some("quick".into()),
                worker: Some(WorkerId(1)),
                processor: Some("thread[2]@worker-1".into()),
                waited_ms: Some(0.1),
                run_ms: Some(0.01),
                error: Some("boom".into()),
            }],
            spans_read: 5,
        });
        let e = &s.since(0)[0];
        assert_eq!((e.task, e.func.as_str(), e.state), (3, "quick", "failed"));
        assert_eq!(e.worker, Some(1));
        assert_eq!(s.span_cursor, 5);
    }
}
