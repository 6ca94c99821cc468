//! Graphviz (DOT) graphs: of a finished run, and of a lazy graph before it runs.

use super::{hex, human_bytes, Timeline};
use crate::lazy::{LazyArgKind, LazyNode};
use dagger_core::TaskId;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

/// `s` as a DOT quoted string: `"` and `\` escaped, line breaks as `\n` (centred lines),
/// other control characters dropped.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const HEADER: &str = "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", \
                      fontsize=10];\n  edge [fontname=\"Helvetica\", fontsize=9];\n";

pub(super) fn timeline(t: &Timeline) -> String {
    let colors: HashMap<String, [u8; 3]> = t.function_colors().into_iter().collect();
    let mut out = String::from("digraph timeline {\n");
    out.push_str(HEADER);
    let node = |id: TaskId| format!("t{}", id.get());

    // Producers that have no span: a dashed node each, once.
    let known: BTreeSet<TaskId> = t.tasks().iter().map(|s| s.task).collect();
    let missing: BTreeSet<TaskId> = t
        .tasks()
        .iter()
        .flat_map(|s| s.inputs.iter().copied())
        .filter(|i| !known.contains(i))
        .collect();

    for span in t.tasks() {
        let mut label = format!("{}\n{} on {}", span.func, span.task, span.proc);
        let mut attrs = String::new();
        if let Some(error) = &span.error {
            let _ = write!(label, "\nfailed: {error}");
            attrs.push_str(", color=\"#d62728\", penwidth=2");
        }
        let color = colors.get(&span.func).copied().unwrap_or([0xcc; 3]);
        let _ = writeln!(
            out,
            "  {} [label={}, fillcolor={}{attrs}];",
            node(span.task),
            quote(&label),
            quote(&hex(color)),
        );
    }
    for id in &missing {
        let _ = writeln!(
            out,
            "  {} [label={}, style=dashed];",
            node(*id),
            quote(&id.to_string())
        );
    }

    for span in t.tasks() {
        for input in &span.inputs {
            let mut label = t
                .span(*input)
                .map(|p| human_bytes(p.bytes))
                .unwrap_or_default();
            let moved = t
                .moves()
                .iter()
                .find(|m| m.chunk == input.chunk() && m.to == span.worker);
            if let Some(m) = moved {
                if label.is_empty() {
                    label = human_bytes(m.bytes);
                }
                label.push_str(if m.shared_memory { " shm" } else { " net" });
            }
            let _ = writeln!(
                out,
                "  {} -> {} [label={}];",
                node(*input),
                node(span.task),
                quote(&label)
            );
        }
    }
    out.push_str("}\n");
    out
}

/// The graph under `root`, before it runs: a node per lazy task (by function; a task
/// reached along several paths is one node), a small leaf per value, spawned task or
/// invalid argument, and an edge per argument labelled with its position (`2[1]` for the
/// second part of a gathered third argument). Walks an explicit stack, so a chain of any
/// length is fine.
pub(crate) fn lazy_graph(root: &Arc<LazyNode>) -> String {
    let mut out = String::from("digraph lazy {\n");
    out.push_str(HEADER);
    let mut ids: HashMap<*const LazyNode, usize> = HashMap::new();
    let mut stack: Vec<&Arc<LazyNode>> = vec![root];
    ids.insert(Arc::as_ptr(root), 0);
    let mut leaves = 0usize;
    while let Some(node) = stack.pop() {
        let me = ids[&Arc::as_ptr(node)];
        let _ = writeln!(out, "  n{me} [label={}];", quote(node.func));
        for (pos, arg) in node.args.iter().enumerate() {
            let parts: Vec<(String, &LazyArgKind)> = match &arg.0 {
                LazyArgKind::Gather(parts) => parts
                    .iter()
                    .enumerate()
                    .map(|(j, p)| (format!("{pos}[{j}]"), p))
                    .collect(),
                other => vec![(pos.to_string(), other)],
            };
            for (edge, part) in parts {
                let from = match part {
                    LazyArgKind::Node(child) => {
                        let next = ids.len();
                        let id = *ids.entry(Arc::as_ptr(child)).or_insert_with(|| {
                            stack.push(child);
                            next
                        });
                        format!("n{id}")
                    }
                    leaf => {
                        let (label, extra) = match leaf {
                            LazyArgKind::Value(bytes) => {
                                (format!("value\n{}", human_bytes(bytes.len() as u64)), "")
                            }
                            LazyArgKind::Spawned(slot) => (
                                format!("{}\n{}", slot.func.map_or("spawned", |f| f.name), slot.id),
                                ", style=\"rounded,dashed\"",
                            ),
                            LazyArgKind::Invalid(e) => {
                                (format!("invalid\n{e}"), ", color=\"#d62728\"")
                            }
                            // Nodes are handled above, and a gather's parts are never
                            // gathers.
                            LazyArgKind::Node(_) | LazyArgKind::Gather(_) => {
                                (String::from("gather"), "")
                            }
                        };
                        let id = format!("v{leaves}");
                        leaves += 1;
                        let _ = writeln!(
                            out,
                            "  {id} [label={}, shape=ellipse, style=filled, \
                             fillcolor=\"#eeeeee\", fontsize=8{extra}];",
                            quote(&label)
                        );
                        id
                    }
                };
                let _ = writeln!(out, "  {from} -> n{me} [label={}];", quote(&edge));
            }
        }
    }
    out.push_str("}\n");
    out
}
