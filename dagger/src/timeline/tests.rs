//! The parts of the exporters that are not public.

use super::*;
use dagger_core::WorkerId;
use std::collections::HashSet;

fn task(id: u64, func: &str) -> TaskSpan {
    let proc = ProcId::new(WorkerId(1), 1);
    TaskSpan {
        task: TaskId(id),
        func: func.to_owned(),
        worker: proc.worker,
        proc,
        attempts: 1,
        queued: Duration::ZERO,
        dispatched: Duration::ZERO,
        started: Duration::ZERO,
        finished: Duration::ZERO,
        bytes: 0,
        error: None,
        inputs: Vec::new(),
    }
}

#[test]
fn bytes_for_people() {
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(1023), "1023 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(3 << 20), "3.0 MiB");
}

#[test]
fn function_colors_are_distinct_and_stable() {
    let mut rt = Record::default();
    for (i, name) in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
        .iter()
        .enumerate()
    {
        rt.tasks.push(task(i as u64, name));
    }
    let t = Timeline::from(rt.clone());
    let colors = t.function_colors();
    let distinct: HashSet<[u8; 3]> = colors.iter().map(|(_, c)| *c).collect();
    assert_eq!(distinct.len(), 10);
    rt.tasks.reverse();
    assert_eq!(Timeline::from(rt).function_colors(), colors);
}
