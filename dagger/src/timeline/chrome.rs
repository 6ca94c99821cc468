//! The Chrome trace (Trace Event Format, JSON object form) of a timeline.

use super::{micros, Timeline};
use dagger_core::WorkerId;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Thread ids of a worker's "moves in" tracks start here, above every processor index.
const MOVE_TID_BASE: u64 = 1 << 32;

/// The category of a move's events, its flow's included (a flow's steps must share it).
const MOVE_CAT: &str = "move";

pub(super) fn render(timeline: &Timeline) -> String {
    let mut events: Vec<Value> = Vec::new();
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
            json!({ "name": w.to_string() }),
        ));
        events.push(metadata(
            "process_sort_index",
            w.get(),
            0,
            json!({ "sort_index": w.get() }),
        ));
    }
    for (proc, label) in &rows {
        let (pid, tid) = (proc.worker.get(), u64::from(proc.index));
        events.push(metadata("thread_name", pid, tid, json!({ "name": label })));
        events.push(metadata(
            "thread_sort_index",
            pid,
            tid,
            json!({ "sort_index": tid }),
        ));
    }

    for span in timeline.tasks() {
        let mut args = json!({
            "task": span.task.get(),
            "function": span.func,
            "attempts": span.attempts,
            "bytes": span.bytes,
            "queued": micros(span.queued),
            "dispatched": micros(span.dispatched),
        });
        if let Some(error) = &span.error {
            args["error"] = json!(error);
        }
        events.push(json!({
            "name": span.func,
            "cat": if span.error.is_some() { "task,failed" } else { "task" },
            "ph": "X",
            "ts": micros(span.started),
            "dur": micros(span.finished.saturating_sub(span.started)),
            "pid": span.worker.get(),
            "tid": span.proc.index,
            "args": args,
        }));
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
        events.push(json!({
            "name": name,
            "cat": MOVE_CAT,
            "ph": "X",
            "ts": micros(mv.started),
            "dur": micros(mv.finished.saturating_sub(mv.started)),
            "pid": pid,
            "tid": tid,
            "args": {
                "chunk": mv.chunk.get(),
                "from": mv.from.to_string(),
                "to": mv.to.to_string(),
                "bytes": mv.bytes,
                "transport": transport,
            },
        }));

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
            json!({
                "name": name,
                "cat": MOVE_CAT,
                "ph": ph,
                "id": id,
                "bp": "e",
                "ts": micros(ts),
                "pid": pid,
                "tid": tid,
            })
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
                json!({ "name": name }),
            ));
            events.push(metadata(
                "thread_sort_index",
                w.get(),
                tid,
                json!({ "sort_index": tid }),
            ));
        }
    }

    json!({ "traceEvents": events, "displayTimeUnit": "ms" }).to_string()
}

/// A metadata event (`M`) naming or ordering a track.
fn metadata(name: &str, pid: u32, tid: u64, args: Value) -> Value {
    json!({ "name": name, "ph": "M", "ts": 0, "pid": pid, "tid": tid, "args": args })
}
