//! The Chrome trace (Trace Event Format, JSON object form) of a timeline.

use super::{micros, Timeline};
use crate::json::{obj, Json};
use dagger_core::WorkerId;
use std::collections::BTreeMap;
use std::time::Duration;

/// Thread ids of a worker's "moves in" tracks start here, above every processor index.
const MOVE_TID_BASE: u64 = 1 << 32;

/// The category of a move's events, its flow's included (a flow's steps must share it).
const MOVE_CAT: &str = "move";

pub(super) fn render(timeline: &Timeline) -> String {
    let mut events: Vec<Json> = Vec::new();
    let rows = timeline.rows();

    // Tracks: a process per worker, a thread per processor.
    let mut workers: Vec<WorkerId> = rows.iter().map(|(p, _)| p.worker).collect();
    workers.extend(timeline.moves().iter().flat_map(|m| [m.from, m.to]));
    workers.sort_unstable();
    workers.dedup();
    for w in &workers {
        events.push(metadata(
            "process_name",
            w.get(),
            0,
            obj([("name", w.to_string().into())]),
        ));
        events.push(metadata(
            "process_sort_index",
            w.get(),
            0,
            obj([("sort_index", w.get().into())]),
        ));
    }
    for (proc, label) in &rows {
        let (pid, tid) = (proc.worker.get(), u64::from(proc.index));
        events.push(metadata(
            "thread_name",
            pid,
            tid,
            obj([("name", label.as_str().into())]),
        ));
        events.push(metadata(
            "thread_sort_index",
            pid,
            tid,
            obj([("sort_index", tid.into())]),
        ));
    }

    for span in timeline.tasks() {
        let mut args = vec![
            ("task", span.task.get().into()),
            ("function", span.func.as_str().into()),
            ("attempts", span.attempts.into()),
            ("bytes", span.bytes.into()),
            ("queued", micros(span.queued).into()),
            ("dispatched", micros(span.dispatched).into()),
        ];
        if let Some(error) = &span.error {
            args.push(("error", error.as_str().into()));
        }
        events.push(obj([
            ("name", span.func.as_str().into()),
            (
                "cat",
                if span.error.is_some() {
                    "task,failed"
                } else {
                    "task"
                }
                .into(),
            ),
            ("ph", "X".into()),
            ("ts", micros(span.started).into()),
            (
                "dur",
                micros(span.finished.saturating_sub(span.started)).into(),
            ),
            ("pid", span.worker.get().into()),
            ("tid", span.proc.index.into()),
            ("args", Json::Obj(args)),
        ]));
    }

    // Moves: on the destination's "moves in" tracks, one track per overlapping move.
    let consumers = timeline.consumers();
    let mut lanes: BTreeMap<WorkerId, Vec<Duration>> = BTreeMap::new();
    for (i, mv) in timeline.moves().iter().enumerate() {
        let ends = lanes.entry(mv.to).or_default();
        let lane = match ends.iter().position(|&end| end <= mv.started) {
            Some(lane) => {
                ends[lane] = mv.finished;
                lane
            }
            None => {
                ends.push(mv.finished);
                ends.len() - 1
            }
        };
        let (pid, tid) = (mv.to.get(), MOVE_TID_BASE + lane as u64);
        let name = format!("move {}", mv.chunk);
        let transport = if mv.shared_memory { "shm" } else { "net" };
        events.push(obj([
            ("name", name.as_str().into()),
            ("cat", MOVE_CAT.into()),
            ("ph", "X".into()),
            ("ts", micros(mv.started).into()),
            ("dur", micros(mv.finished.saturating_sub(mv.started)).into()),
            ("pid", pid.into()),
            ("tid", tid.into()),
            (
                "args",
                obj([
                    ("chunk", mv.chunk.get().into()),
                    ("from", mv.from.to_string().into()),
                    ("to", mv.to.to_string().into()),
                    ("bytes", mv.bytes.into()),
                    ("transport", transport.into()),
                ]),
            ),
        ]));

        // The flow: producer → move → first consumer on the destination. Each step's
        // time lies inside the slice it binds to.
        let id = i as u64 + 1;
        let producer = timeline
            .span(mv.chunk.task())
            .filter(|p| p.worker == mv.from);
        let consumer = consumers.get(&mv.chunk.task()).and_then(|list| {
            list.iter()
                .map(|&c| &timeline.tasks()[c])
                .find(|c| c.worker == mv.to)
        });
        let flow = |ph: &str, ts: Duration, pid: u32, tid: u64| {
            obj([
                ("name", name.as_str().into()),
                ("cat", MOVE_CAT.into()),
                ("ph", ph.into()),
                ("id", id.into()),
                ("bp", "e".into()),
                ("ts", micros(ts).into()),
                ("pid", pid.into()),
                ("tid", tid.into()),
            ])
        };
        if let Some(p) = producer {
            events.push(flow(
                "s",
                p.started,
                p.worker.get(),
                u64::from(p.proc.index),
            ));
            match consumer {
                Some(c) => {
                    events.push(flow("t", mv.started, pid, tid));
                    events.push(flow(
                        "f",
                        c.started,
                        c.worker.get(),
                        u64::from(c.proc.index),
                    ));
                }
                None => events.push(flow("f", mv.started, pid, tid)),
            }
        } else if let Some(c) = consumer {
            events.push(flow("s", mv.started, pid, tid));
            events.push(flow(
                "f",
                c.started,
                c.worker.get(),
                u64::from(c.proc.index),
            ));
        }
    }
    for (w, ends) in &lanes {
        for lane in 0..ends.len() {
            let name = if lane == 0 {
                "moves in".to_owned()
            } else {
                format!("moves in #{}", lane + 1)
            };
            let tid = MOVE_TID_BASE + lane as u64;
            events.push(metadata(
                "thread_name",
                w.get(),
                tid,
                obj([("name", name.into())]),
            ));
            events.push(metadata(
                "thread_sort_index",
                w.get(),
                tid,
                obj([("sort_index", tid.into())]),
            ));
        }
    }

    obj([
        ("traceEvents", Json::Arr(events)),
        ("displayTimeUnit", "ms".into()),
    ])
    .render()
}

/// A metadata event (`M`) naming or ordering a track.
fn metadata(name: &str, pid: u32, tid: u64, args: Json) -> Json {
    obj([
        ("name", name.into()),
        ("ph", "M".into()),
        ("ts", 0u64.into()),
        ("pid", pid.into()),
        ("tid", tid.into()),
        ("args", args),
    ])
}
