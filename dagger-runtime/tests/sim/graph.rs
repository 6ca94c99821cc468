//! The random task graphs of the simulation and their oracle: what every task must end
//! with, computed directly from the graph.

use dagger_core::wire;
use dagger_core::{Arg, Options, Scope, TaskId, TaskSpec, WorkerId};
use rand::rngs::StdRng;
use rand::RngExt;

/// The one function every simulated task runs.
pub const FUNC: &str = "sum";

/// Bytes of padding that make a result too large to travel inline (with an inline limit
/// of 12 bytes).
pub const PAD: usize = 20;

/// One task of the graph.
#[derive(Clone, Debug)]
pub struct Node {
    /// Indices of the nodes whose results it takes (in argument order, after its own
    /// number).
    pub deps: Vec<usize>,
    /// Whether its result is padded above the inline limit (it then stays on workers).
    pub big: bool,
    /// Whether its first execution panics (it has one retry).
    pub panics_once: bool,
    /// Whether every execution panics.
    pub always_panics: bool,
    /// A poison task: the worker process running it crashes shortly after it starts.
    pub poison: bool,
    /// Its retry budget after a panic (`Options::retries`): 1 for `panics_once`, and
    /// some tasks get a few, which flaky workers use up.
    pub retries: u32,
    /// The initial worker (index among them) its scope pins it to, if any.
    pub pin: Option<usize>,
}

/// A graph, cut into the submissions the client makes.
#[derive(Clone, Debug)]
pub struct Graph {
    /// The nodes; node `k` is task `k + 1`.
    pub nodes: Vec<Node>,
    /// Where each submission ends (exclusive), in order.
    pub batch_ends: Vec<usize>,
}

/// The task of node `k`.
pub fn task_of(k: usize) -> TaskId {
    TaskId(k as u64 + 1)
}

/// The node of task `t`.
pub fn node_of(t: TaskId) -> usize {
    (t.0 - 1) as usize
}

impl Graph {
    /// A random graph of 20 to `max_nodes` nodes, fan-in up to 3. `pins` is the number of
    /// initial workers tasks may be pinned to (0: none).
    pub fn random(rng: &mut StdRng, max_nodes: usize, pins: usize) -> Self {
        let n = rng.random_range(20..=max_nodes.max(20));
        let big_pct = rng.random_range(0..60u32);
        let pin_pct = if pins > 0 && rng.random_bool(0.5) {
            rng.random_range(1..15u32)
        } else {
            0
        };
        // Poison tasks in some graphs (per mille), retries on some tasks.
        let poison_pm = if rng.random_bool(0.3) {
            rng.random_range(2..=20u32)
        } else {
            0
        };
        let retry_pct = rng.random_range(0..30u32);
        let mut nodes = Vec::with_capacity(n);
        let mut batch_ends = Vec::new();
        for k in 0..n {
            let mut deps = Vec::new();
            if k > 0 {
                for _ in 0..rng.random_range(0..=3) {
                    let lo = k.saturating_sub(40);
                    deps.push(rng.random_range(lo..k));
                }
            }
            let poison = rng.random_range(0..1000) < poison_pm;
            let panics_once = !poison && rng.random_range(0..100) < 3;
            let always_panics = !poison && rng.random_range(0..1000) < 7;
            let retries = if panics_once {
                1
            } else if !poison && rng.random_range(0..100) < retry_pct {
                rng.random_range(1..=3)
            } else {
                0
            };
            let pin = (rng.random_range(0..100) < pin_pct).then(|| rng.random_range(0..pins));
            nodes.push(Node {
                deps,
                big: rng.random_range(0..100) < big_pct,
                panics_once,
                always_panics,
                poison,
                retries,
                pin: pin.filter(|_| !poison),
            });
            if k + 1 == n || rng.random_range(0..100) < 3 {
                batch_ends.push(k + 1);
            }
        }
        Graph { nodes, batch_ends }
    }

    /// The spec of node `k`, with `workers` the ids of the initial workers (for pins).
    pub fn spec(&self, k: usize, workers: &[WorkerId]) -> TaskSpec {
        let node = &self.nodes[k];
        let mut options = Options::new();
        if node.retries > 0 {
            options = options.retries(node.retries);
        }
        if let Some(p) = node.pin {
            options = options.scope(Scope::worker(workers[p]));
        }
        let mut args = vec![Arg::Value(wire::encode(&(k as u64 + 1)))];
        args.extend(node.deps.iter().map(|&d| Arg::Task(task_of(d))));
        TaskSpec {
            id: task_of(k),
            func: FUNC.into(),
            args,
            options,
        }
    }

    /// The value every node must produce, or `None` when it must fail (it always panics or
    /// is a poison task, or depends on one). Failures caused by faults are judged
    /// separately.
    pub fn expected(&self) -> Vec<Option<u64>> {
        let mut out: Vec<Option<u64>> = Vec::with_capacity(self.nodes.len());
        for (k, node) in self.nodes.iter().enumerate() {
            let mut v = (!node.always_panics && !node.poison).then_some(k as u64 + 1);
            for &d in &node.deps {
                v = match (v, out[d]) {
                    (Some(a), Some(b)) => Some(a.wrapping_add(b)),
                    _ => None,
                };
            }
            out.push(v);
        }
        out
    }
}

/// The encoded result of a node with value `v`, as the registry would encode it.
pub fn result_bytes(v: u64, big: bool) -> Vec<u8> {
    let pad = if big { vec![7u8; PAD] } else { Vec::new() };
    wire::encode(&(v, pad))
}

/// Decodes a result; `None` if the bytes are not a well-formed result.
pub fn decode_result(bytes: &[u8]) -> Option<(u64, bool)> {
    let (v, pad): (u64, Vec<u8>) = wire::decode(bytes).ok()?;
    match pad.len() {
        0 => Some((v, false)),
        PAD if pad.iter().all(|&b| b == 7) => Some((v, true)),
        _ => None,
    }
}
