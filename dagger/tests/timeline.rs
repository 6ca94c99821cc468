//! A run's timeline and its exports. Over real worker processes: every task of a run is
//! in the timeline once, in order (queued ≤ dispatched ≤ started ≤ finished), on the
//! processor the context reports, a large result moved between workers is a move span,
//! and the Chrome trace, the Gantt chart and the graph of the run are well-formed (the
//! graph is rendered by Graphviz's `dot` when it is installed; `DAGGER_REQUIRE_ALL=1`
//! makes its absence a failure). On hand-built timelines: what each export shows, and
//! the graph of a lazy task before it runs.
//!
//! The trace's and the graph's checks are written out here, from the Trace Event Format
//! and the DOT grammar, rather than taken from the code under test.

use dagger::prelude::*;
use dagger::timeline::Record;
use dagger::{ChunkId, ProcId};
use dagger::{IntoLazy, MoveSpan, TaskSpan, Timeline, TimelineError};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

/// 1 MiB of bytes derived from `i`: far above the inline limit, so it stays on its worker
/// and moves to a consumer on another.
#[dagger::task]
fn block(i: u64) -> Vec<u8> {
    (0..1u64 << 20)
        .map(|k| (k.wrapping_mul(31) ^ i) as u8)
        .collect()
}

/// The sum of two blocks' bytes.
#[dagger::task]
fn pair_sum(a: Vec<u8>, b: Vec<u8>) -> u64 {
    a.iter().chain(&b).map(|&x| u64::from(x)).sum()
}

#[dagger::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Fails when `x` is odd.
#[dagger::task]
fn even(x: u64) -> u64 {
    assert!(x % 2 == 0, "odd input {x}");
    x
}

#[cfg(feature = "quic")]
fn expected_sum(i: u64) -> u64 {
    (0..1u64 << 20)
        .map(|k| u64::from((k.wrapping_mul(31) ^ i) as u8))
        .sum()
}

/// Whether a missing tool is a failure rather than a skip.
fn require_all() -> bool {
    std::env::var("DAGGER_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Renders `dot` with Graphviz (`dot -Tsvg`) and requires success; skips with a line
/// when `dot` is not installed, unless `DAGGER_REQUIRE_ALL=1`.
fn render_with_graphviz(dot: &str) {
    use std::io::Write as _;
    let child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                !require_all(),
                "DAGGER_REQUIRE_ALL=1 but Graphviz's `dot` is not on PATH"
            );
            println!("skipped: Graphviz's `dot` is not on PATH");
            return;
        }
        Err(e) => panic!("cannot run dot: {e}"),
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(dot.as_bytes())
        .expect("the graph written to dot");
    let out = child.wait_with_output().expect("dot ran");
    assert!(
        out.status.success(),
        "dot -Tsvg failed: {}\n{dot}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Graphviz's SVG names its DTD.
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let svg = std::str::from_utf8(&out.stdout).expect("UTF-8");
    roxmltree::Document::parse_with_options(svg, options).expect("dot's SVG is XML");
}

#[cfg(feature = "quic")]
#[test]
fn a_run_is_recorded_and_exported() {
    dagger::init();
    let ctx = Context::builder()
        .workers(2)
        .test_harness()
        .worker_threads(1)
        .timeline(true)
        .build()
        .unwrap();
    let ws = ctx.workers();
    let (a, b) = (ws[0], ws[1]);
    let on = |w: WorkerId| Options::new().scope(Scope::worker(w));

    // Two blocks on `a`, one on `b`; a sum on `b` takes one of `a`'s (a move) and its own.
    let b0 = block::with(on(a)).spawn(&ctx, 0).unwrap();
    let b1 = block::with(on(a)).spawn(&ctx, 1).unwrap();
    let b2 = block::with(on(b)).spawn(&ctx, 2).unwrap();
    let s02 = pair_sum::with(on(b)).spawn(&ctx, &b0, &b2).unwrap();
    let s11 = pair_sum::with(on(a)).spawn(&ctx, &b1, &b1).unwrap();
    let total = add::spawn(&ctx, &s02, &s11).unwrap();
    let bad = even::spawn(&ctx, 3).unwrap();
    assert_eq!(
        total.fetch().unwrap(),
        expected_sum(0) + expected_sum(2) + 2 * expected_sum(1)
    );
    assert!(bad.fetch().is_err());
    let ids = [
        b0.id(),
        b1.id(),
        b2.id(),
        s02.id(),
        s11.id(),
        total.id(),
        bad.id(),
    ];

    let tl = ctx.timeline();
    // Every task once, ordered, on the processor the context reports.
    assert_eq!(tl.tasks().len(), ids.len(), "{:#?}", tl.tasks());
    for id in ids {
        let spans: Vec<&TaskSpan> = tl.tasks().iter().filter(|s| s.task == id).collect();
        assert_eq!(spans.len(), 1, "{id}");
        let span = spans[0];
        assert!(span.queued <= span.dispatched, "{span:?}");
        assert!(span.dispatched <= span.started, "{span:?}");
        assert!(span.started <= span.finished, "{span:?}");
        let info = ctx.task_info(id).expect("task info");
        assert_eq!(Some(span.proc), info.proc, "{id}");
        assert_eq!(span.worker, span.proc.worker);
        assert_eq!(span.attempts, info.attempts);
        assert!(tl.processors().iter().any(|(p, _)| *p == span.proc));
        assert_eq!(tl.span(id), Some(span));
    }
    assert_eq!(tl.span(b0.id()).unwrap().func, block::NAME);
    assert_eq!(tl.span(s02.id()).unwrap().inputs, [b0.id(), b2.id()]);
    assert_eq!(tl.span(s11.id()).unwrap().inputs, [b1.id()]);
    assert!(tl.span(bad.id()).unwrap().error.is_some());
    assert!(tl.span(total.id()).unwrap().error.is_none());

    // The block `b` took from `a` is a move.
    let mv = tl
        .moves()
        .iter()
        .find(|m| m.chunk == b0.id().chunk())
        .expect("the move of block 0");
    assert_eq!((mv.from, mv.to), (a, b));
    assert!(mv.bytes >= 1 << 20, "{mv:?}");
    assert!(mv.started <= mv.finished);

    // The exports.
    let events = check_trace_schema(&tl.chrome_trace());
    for id in ids {
        let span = tl.span(id).unwrap();
        let x: Vec<&Value> = events
            .iter()
            .filter(|e| e["ph"] == "X" && e["args"]["task"] == id.get())
            .collect();
        assert_eq!(x.len(), 1, "{id}");
        assert_eq!(x[0]["pid"], span.worker.get());
        assert_eq!(x[0]["tid"], span.proc.index);
    }
    assert!(events
        .iter()
        .any(|e| e["ph"] == "X" && e["cat"] == "move" && e["args"]["chunk"] == b0.id().get()));

    let svg = tl.gantt_svg().unwrap();
    let fills = rect_fills(&svg);
    for (func, color) in tl.function_colors() {
        let n = tl.tasks().iter().filter(|s| s.func == func).count();
        assert_eq!(fills.get(&hex(color)), Some(&(n + 1)), "{func}: {fills:?}");
    }

    let dot = tl.to_dot();
    let (nodes, edges) = check_dot(&dot);
    assert_eq!(nodes.len(), ids.len());
    let moved = edges
        .iter()
        .find(|(from, to, _)| {
            *from == format!("t{}", b0.id().get()) && *to == format!("t{}", s02.id().get())
        })
        .expect("the edge of the moved block");
    let how = if mv.shared_memory { " shm" } else { " net" };
    assert!(moved.2.ends_with(how), "{moved:?}");
    render_with_graphviz(&dot);
}

#[test]
fn a_lazy_graph_renders_with_graphviz() {
    let graph = add::delayed(add::delayed(1, 2), even::delayed(add::delayed(3, 4)));
    let dot = graph.to_dot();
    let (nodes, edges) = check_dot(&dot);
    assert_eq!(nodes.len(), 4 + 4, "four tasks, four values: {dot}");
    assert_eq!(edges.len(), 7, "{dot}");
    render_with_graphviz(&dot);
}

/// A color as the chart writes it.
fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// A duration in the trace's unit.
fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn task(id: u64, func: &str, proc: ProcId, start: u64, end: u64, inputs: &[u64]) -> TaskSpan {
    TaskSpan {
        task: TaskId(id),
        func: func.to_owned(),
        worker: proc.worker,
        proc,
        attempts: 1,
        queued: ms(1),
        dispatched: ms(2),
        started: ms(start),
        finished: ms(end),
        bytes: 8 * id,
        error: None,
        inputs: inputs.iter().map(|&i| TaskId(i)).collect(),
    }
}

/// Two leaves on two workers, a sum on worker 1 that takes the leaf of worker 2 over the
/// network, and a failed task on worker 2 that takes the sum through shared memory.
fn sample() -> Timeline {
    let p1 = ProcId::new(WorkerId(1), 1);
    let p2 = ProcId::new(WorkerId(2), 1);
    let p1b = ProcId::new(WorkerId(1), 2);
    let mut failed = task(4, "report \"q\"\\x", p2, 40, 45, &[3]);
    failed.error = Some("bad\ninput".into());
    failed.attempts = 2;
    Record {
        tasks: vec![
            task(1, "leaf", p1, 10, 20, &[]),
            task(2, "leaf", p2, 11, 19, &[]),
            task(3, "add", p1b, 25, 30, &[1, 2]),
            failed,
        ],
        moves: vec![
            MoveSpan {
                chunk: ChunkId(2),
                from: WorkerId(2),
                to: WorkerId(1),
                bytes: 16,
                shared_memory: false,
                started: ms(20),
                finished: ms(24),
            },
            MoveSpan {
                chunk: ChunkId(3),
                from: WorkerId(1),
                to: WorkerId(2),
                bytes: 24,
                shared_memory: true,
                started: ms(31),
                finished: ms(39),
            },
        ],
        processors: vec![
            (p1, "thread[0]@worker-1".into()),
            (p2, "thread[0]@worker-2".into()),
            (p1b, "thread[1]@worker-1".into()),
        ],
    }
    .into()
}

#[test]
fn accessors_and_span_lookup() {
    let t = sample();
    assert_eq!(t.tasks().len(), 4);
    assert_eq!(t.moves().len(), 2);
    assert_eq!(t.processors().len(), 3);
    assert_eq!(t.span(TaskId(3)).map(|s| s.func.as_str()), Some("add"));
    assert!(t.span(TaskId(99)).is_none());
    assert_eq!(Timeline::default().tasks().len(), 0);
}

/// Checks the fields the Trace Event Format requires for each phase; returns the events.
fn check_trace_schema(json: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_str(json).expect("the trace is JSON");
    assert_eq!(doc["displayTimeUnit"], "ms");
    let events = doc["traceEvents"]
        .as_array()
        .expect("traceEvents is an array");
    for e in events {
        let ph = e["ph"].as_str().expect("ph is a string");
        assert!(e["name"].is_string(), "no name: {e}");
        assert!(e["ts"].is_number(), "no ts: {e}");
        assert!(e["pid"].is_u64(), "no pid: {e}");
        assert!(e["tid"].is_u64(), "no tid: {e}");
        match ph {
            "X" => assert!(e["dur"].as_f64().is_some_and(|d| d >= 0.0), "no dur: {e}"),
            "s" | "t" | "f" => {
                assert!(e["id"].is_u64(), "flow without id: {e}");
                assert!(e["cat"].is_string(), "flow without cat: {e}");
            }
            "M" => assert!(e["args"]["name"].is_string() || e["args"]["sort_index"].is_u64()),
            other => panic!("unexpected phase {other}"),
        }
    }
    events.clone()
}

#[test]
fn chrome_trace_has_tracks_tasks_and_flows() {
    let t = sample();
    let events = check_trace_schema(&t.chrome_trace());

    let tasks: Vec<&Value> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"].as_str().is_some_and(|c| c.starts_with("task")))
        .collect();
    assert_eq!(tasks.len(), 4);
    for span in t.tasks() {
        let e = tasks
            .iter()
            .find(|e| e["args"]["task"] == span.task.get())
            .expect("an event per task");
        assert_eq!(e["name"], span.func.as_str());
        assert_eq!(e["pid"], span.worker.get());
        assert_eq!(e["tid"], span.proc.index);
        assert_eq!(e["ts"].as_f64(), Some(us(span.started)));
        assert_eq!(e["dur"].as_f64(), Some(us(span.finished - span.started)));
        assert_eq!(e["args"]["attempts"], span.attempts);
        assert_eq!(e["args"]["queued"].as_f64(), Some(us(span.queued)));
    }
    let failed = tasks.iter().find(|e| e["args"]["task"] == 4).unwrap();
    assert_eq!(failed["args"]["error"], "bad\ninput");

    // Every processor and worker is named.
    let names: HashSet<(u64, u64, String)> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .map(|e| {
            (
                e["pid"].as_u64().unwrap(),
                e["tid"].as_u64().unwrap(),
                e["args"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (p, label) in t.processors() {
        assert!(names.contains(&(u64::from(p.worker.get()), u64::from(p.index), label.clone())));
    }
    let processes = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "process_name")
        .count();
    assert_eq!(processes, 2);

    // Each move: an X event on the destination, and a flow producer → move → consumer.
    let moves: Vec<&Value> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "move")
        .collect();
    assert_eq!(moves.len(), 2);
    let mut flows: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| matches!(e["ph"].as_str(), Some("s" | "t" | "f")))
    {
        flows.entry(e["id"].as_u64().unwrap()).or_default().push(e);
    }
    assert_eq!(flows.len(), 2);
    for (i, mv) in t.moves().iter().enumerate() {
        let steps = &flows[&(i as u64 + 1)];
        let phases: Vec<&str> = steps.iter().map(|e| e["ph"].as_str().unwrap()).collect();
        assert_eq!(phases, ["s", "t", "f"]);
        let producer = t.span(mv.chunk.task()).unwrap();
        assert_eq!(steps[0]["pid"], producer.worker.get());
        assert_eq!(steps[0]["tid"], producer.proc.index);
        let consumer = t
            .tasks()
            .iter()
            .find(|s| s.inputs.contains(&mv.chunk.task()) && s.worker == mv.to)
            .unwrap();
        assert_eq!(steps[2]["pid"], consumer.worker.get());
        assert_eq!(steps[2]["tid"], consumer.proc.index);
        let x = moves
            .iter()
            .find(|e| e["args"]["chunk"] == mv.chunk.get())
            .unwrap();
        assert_eq!(x["pid"], mv.to.get());
        assert_eq!(
            (steps[1]["pid"].clone(), steps[1]["tid"].clone()),
            (x["pid"].clone(), x["tid"].clone())
        );
        // Each step lies inside the slice it binds to.
        assert_eq!(steps[0]["ts"].as_f64(), Some(us(producer.started)));
        assert_eq!(steps[2]["ts"].as_f64(), Some(us(consumer.started)));
    }
}

#[test]
fn overlapping_moves_get_their_own_tracks() {
    let mut rt = Record::clone(&sample());
    let mut second = rt.moves[0].clone();
    second.chunk = ChunkId(1);
    second.started = ms(21);
    rt.moves.push(second);
    let t = Timeline::from(rt);
    let events = check_trace_schema(&t.chrome_trace());
    let tids: HashSet<u64> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "move" && e["pid"] == 1)
        .map(|e| e["tid"].as_u64().unwrap())
        .collect();
    assert_eq!(tids.len(), 2);
}

#[test]
fn chrome_trace_of_an_empty_timeline() {
    let events = check_trace_schema(&Timeline::default().chrome_trace());
    assert!(events.is_empty());
}

/// The fill colors of the SVG's rectangles, with how many of each.
fn rect_fills(svg: &str) -> BTreeMap<String, usize> {
    let doc = roxmltree::Document::parse(svg).expect("the chart is XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let mut fills = BTreeMap::new();
    for node in doc.descendants().filter(|n| n.has_tag_name("rect")) {
        let fill = node.attribute("fill").unwrap_or("").to_ascii_lowercase();
        *fills.entry(fill).or_default() += 1;
    }
    fills
}

#[test]
fn gantt_has_a_bar_per_task_in_its_function_color() {
    let t = sample();
    let svg = t.gantt_svg().expect("drawn");
    let fills = rect_fills(&svg);
    for (func, color) in t.function_colors() {
        let tasks = t.tasks().iter().filter(|s| s.func == func).count();
        // One bar per task, and one swatch in the legend.
        assert_eq!(
            fills.get(&hex(color)),
            Some(&(tasks + 1)),
            "{func}: {fills:?}"
        );
    }
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
        .collect();
    for (_, label) in t.processors() {
        assert!(
            texts.contains(label),
            "row label {label} missing: {texts:?}"
        );
    }
    assert!(texts.iter().any(|t| t == "add"), "legend: {texts:?}");
    // A failed task is outlined.
    assert!(svg.contains("#D62728") || svg.contains("#d62728"));
}

#[test]
fn gantt_of_an_empty_timeline_is_drawn() {
    let svg = Timeline::default().gantt_svg().expect("drawn");
    roxmltree::Document::parse(&svg).expect("the chart is XML");
}

/// A structural check of a DOT graph: one `digraph NAME {` ... `}`, node statements
/// `ID [..];` and edge statements `ID -> ID [..];` between declared nodes, quoted strings
/// closed and balanced brackets. Returns (nodes, edges).
fn check_dot(dot: &str) -> (Vec<String>, Vec<(String, String, String)>) {
    let mut lines = dot.lines();
    let head = lines.next().expect("a header");
    assert!(
        head.starts_with("digraph ") && head.ends_with(" {"),
        "{head}"
    );
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    let mut closed = false;
    for line in lines {
        assert!(!closed, "text after the closing brace: {line}");
        let line = line.trim();
        if line == "}" {
            closed = true;
            continue;
        }
        assert!(line.ends_with("];"), "statement not closed: {line}");
        // Walk the line: outside quotes, brackets balance; inside, escapes are `\"`, `\\`
        // and `\n` only, and no raw line break can occur.
        let (mut quoted, mut depth, mut chars) = (false, 0i32, line.chars());
        let mut label = None::<String>;
        let mut current = String::new();
        while let Some(c) = chars.next() {
            if quoted {
                match c {
                    '\\' => {
                        let next = chars.next().expect("an escape ends the line");
                        assert!(matches!(next, '"' | '\\' | 'n'), "bad escape \\{next}");
                        current.push('\\');
                        current.push(next);
                    }
                    '"' => {
                        quoted = false;
                        if label.is_none() {
                            label = Some(std::mem::take(&mut current));
                        }
                        current.clear();
                    }
                    c => current.push(c),
                }
            } else {
                match c {
                    '"' => quoted = true,
                    '[' => depth += 1,
                    ']' => depth -= 1,
                    _ => {}
                }
                assert!(depth >= 0);
            }
        }
        assert!(!quoted && depth == 0, "unbalanced: {line}");
        let head = &line[..line.find('[').unwrap()];
        let label = label.unwrap_or_default();
        if line.starts_with("node ") || line.starts_with("edge ") {
            continue;
        }
        match head.split_once("->") {
            Some((a, b)) => edges.push((a.trim().to_owned(), b.trim().to_owned(), label)),
            None => nodes.push(head.trim().to_owned()),
        }
    }
    assert!(closed, "no closing brace");
    let declared: HashSet<&String> = nodes.iter().collect();
    assert_eq!(declared.len(), nodes.len(), "a node declared twice");
    for (a, b, _) in &edges {
        assert!(
            declared.contains(a) && declared.contains(b),
            "edge {a} -> {b} to an undeclared node"
        );
    }
    (nodes, edges)
}

#[test]
fn timeline_dot_has_tasks_inputs_and_moves() {
    let t = sample();
    let dot = t.to_dot();
    let (nodes, edges) = check_dot(&dot);
    assert_eq!(nodes, ["t1", "t2", "t3", "t4"]);
    let labels: BTreeMap<(&str, &str), &str> = edges
        .iter()
        .map(|(a, b, l)| ((a.as_str(), b.as_str()), l.as_str()))
        .collect();
    assert_eq!(labels[&("t1", "t3")], "8 B");
    assert_eq!(labels[&("t2", "t3")], "16 B net");
    assert_eq!(labels[&("t3", "t4")], "24 B shm");
    // The function name's quote and backslash are escaped, the error's line break too.
    assert!(
        dot.contains(r#"report \"q\"\\x\ntask-4 on proc[1]@worker-2\nfailed: bad\ninput"#),
        "{dot}"
    );
}

#[test]
fn timeline_dot_shows_producers_without_spans() {
    let mut rt = Record::clone(&sample());
    rt.tasks.retain(|s| s.task != TaskId(1));
    let (nodes, _) = check_dot(&Timeline::from(rt).to_dot());
    assert!(nodes.contains(&"t1".to_owned()));
}

#[test]
fn lazy_dot_shares_nodes_and_shows_values() {
    let leaf: Lazy<u64> = Lazy::new(
        "leaf",
        vec![IntoLazy::<u64>::into_lazy(7u64)],
        Options::default(),
    );
    let sum: Lazy<u64> = Lazy::new(
        "add \"two\"",
        vec![
            IntoLazy::<u64>::into_lazy(&leaf),
            IntoLazy::<u64>::into_lazy(&leaf),
        ],
        Options::default(),
    );
    let all: Lazy<u64> = Lazy::new(
        "total",
        vec![IntoLazy::<Vec<u64>>::into_lazy(vec![
            sum.clone(),
            leaf.clone(),
        ])],
        Options::default(),
    );
    let dot = all.to_dot();
    let (nodes, edges) = check_dot(&dot);
    // total, add, leaf (once) and the value.
    assert_eq!(nodes.len(), 4, "{dot}");
    assert_eq!(edges.len(), 5, "{dot}");
    assert!(edges.iter().any(|(_, _, l)| l == "0[1]"));
    assert!(dot.contains(r#"label="add \"two\"""#));
    assert!(
        dot.contains(r#"value\n8 B"#) || dot.contains(r#"value\n1 B"#),
        "{dot}"
    );
}

#[test]
fn a_long_lazy_chain_does_not_recurse() {
    let mut node: Lazy<u64> = Lazy::new(
        "leaf",
        vec![IntoLazy::<u64>::into_lazy(0u64)],
        Options::default(),
    );
    for _ in 0..100_000 {
        node = Lazy::new(
            "inc",
            vec![IntoLazy::<u64>::into_lazy(node)],
            Options::default(),
        );
    }
    let (nodes, edges) = check_dot(&node.to_dot());
    assert_eq!(nodes.len(), 100_002);
    assert_eq!(edges.len(), 100_001);
}

#[test]
fn write_errors_name_the_file() {
    let err = sample()
        .write_chrome_trace("/nonexistent-dir/trace.json")
        .unwrap_err();
    assert!(matches!(&err, TimelineError::Write { path, .. } if path.ends_with("trace.json")));
    assert!(err.to_string().contains("/nonexistent-dir/trace.json"));
}
