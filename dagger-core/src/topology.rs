//! The topology graph: the multi-root processor tree plus network and named shortcut edges,
//! each edge with a [`LinkCost`]. Plain data and graph bookkeeping, no I/O; the path search
//! over it lives in `dagger-move`, and `dagger-proc` re-exports it for its callers.

use crate::ids::{Incarnation, ProcId, WorkerId};
use crate::proc::{LinkCost, ProcInfo, ProcKind, WorkerInfo};
use std::collections::BTreeMap;
use std::fmt;

/// The prefix of the properties of a process's root ([`ProcInfo::properties`] of its
/// `OsProc`) that record a detector that could not look for its processors:
/// `unavailable.<detector>` = the reason. They travel with the rest of the process's
/// description, and the [`Display`](fmt::Display) of a [`Topology`] prints them as
/// `<detector>: unavailable (<reason>)` lines under the process instead of as properties.
pub const UNAVAILABLE_PREFIX: &str = "unavailable.";

/// The detectors that `info` records as unavailable (see [`UNAVAILABLE_PREFIX`]), as
/// (detector, reason) pairs in name order.
pub fn unavailable_detectors(info: &ProcInfo) -> impl Iterator<Item = (&str, &str)> + '_ {
    info.properties.iter().filter_map(|(k, v)| {
        k.strip_prefix(UNAVAILABLE_PREFIX)
            .map(|name| (name, v.as_str()))
    })
}

/// What an edge of the topology graph is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EdgeKind {
    /// Parent ↔ child inside one process (thread ↔ its OsProc, GPU ↔ its OsProc).
    Tree,
    /// OsProc ↔ OsProc over the cluster's transport.
    Network,
    /// An extra edge between nodes that are not directly connected in the tree
    /// (shared memory between two processes of one host, GPU peer copy, ...), by name.
    Shortcut(String),
}

/// One directed edge of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    /// Where it leads.
    pub to: ProcId,
    /// What it is.
    pub kind: EdgeKind,
    /// What it costs.
    pub cost: LinkCost,
}

/// Default costs of the edges the topology adds by itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DefaultCosts {
    /// Parent ↔ child where both compute in the same memory space (no copy needed).
    pub same_memory: LinkCost,
    /// Parent ↔ child across memory spaces (host ↔ device).
    pub device: LinkCost,
    /// OsProc ↔ OsProc over the network transport.
    pub network: LinkCost,
}

impl Default for DefaultCosts {
    fn default() -> Self {
        Self {
            same_memory: LinkCost::new(0, u64::MAX / 2),
            device: LinkCost::new(10_000, 10_000_000_000),
            network: LinkCost::new(50_000, 600_000_000),
        }
    }
}

#[derive(Clone, Debug)]
struct WorkerNode {
    info: WorkerInfo,
    /// Outgoing edges of each processor of this worker, by processor index.
    edges: Vec<Vec<Edge>>,
}

/// The whole cluster's processors and the edges between them.
///
/// Every worker's `OsProc` is connected to every other worker's `OsProc` by a
/// [`EdgeKind::Network`] edge; each non-root processor to its parent by a
/// [`EdgeKind::Tree`] edge (both directions). Shortcuts are added on top.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    workers: BTreeMap<WorkerId, WorkerNode>,
    costs: DefaultCosts,
    shortcuts: Vec<(ProcId, ProcId, String, LinkCost)>,
}

impl Topology {
    /// An empty topology with default edge costs.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty topology with the given default edge costs.
    pub fn with_costs(costs: DefaultCosts) -> Self {
        Self {
            costs,
            ..Self::default()
        }
    }

    /// The default edge costs.
    pub fn costs(&self) -> &DefaultCosts {
        &self.costs
    }

    /// Adds (or replaces) a worker and its processors. `info.procs[0]` must be the root.
    pub fn add_worker(&mut self, info: WorkerInfo) {
        let w = info.worker;
        self.remove_worker(w);
        let n = info.procs.len();
        let mut edges = vec![Vec::new(); n];
        for p in &info.procs {
            if let Some(parent) = p.parent {
                if parent.worker != w || parent.index as usize >= n || p.id.index as usize >= n {
                    continue;
                }
                let pm = &info.procs[parent.index as usize].memory;
                let cost = if *pm == p.memory {
                    self.costs.same_memory
                } else {
                    self.costs.device
                };
                edges[p.id.index as usize].push(Edge {
                    to: parent,
                    kind: EdgeKind::Tree,
                    cost,
                });
                edges[parent.index as usize].push(Edge {
                    to: p.id,
                    kind: EdgeKind::Tree,
                    cost,
                });
            }
        }
        // Root ↔ root network edges (a worker that reported no processor has no root: it
        // is kept, unconnected, rather than trusted).
        let root = ProcId::root(w);
        if let Some(own) = edges.first_mut() {
            let cost = self.costs.network;
            for (o, node) in self.workers.iter_mut() {
                if let Some(their) = node.edges.first_mut() {
                    own.push(Edge {
                        to: ProcId::root(*o),
                        kind: EdgeKind::Network,
                        cost,
                    });
                    their.push(Edge {
                        to: root,
                        kind: EdgeKind::Network,
                        cost,
                    });
                }
            }
        }
        self.workers.insert(w, WorkerNode { info, edges });
        // Re-attach shortcuts that touch this worker.
        let sc: Vec<_> = self
            .shortcuts
            .iter()
            .filter(|(a, b, _, _)| a.worker == w || b.worker == w)
            .cloned()
            .collect();
        for (a, b, name, cost) in sc {
            self.attach_shortcut(a, b, &name, cost);
        }
    }

    /// Removes a worker, its processors and every edge to them. Returns its description.
    pub fn remove_worker(&mut self, w: WorkerId) -> Option<WorkerInfo> {
        let node = self.workers.remove(&w)?;
        for other in self.workers.values_mut() {
            for e in &mut other.edges {
                e.retain(|edge| edge.to.worker != w);
            }
        }
        Some(node.info)
    }

    /// Adds a shortcut edge in both directions between `a` and `b`, replacing one of the
    /// same name between them. It is remembered, so it comes back if either worker is
    /// removed and added again (or appears only later).
    pub fn add_shortcut(&mut self, a: ProcId, b: ProcId, name: &str, cost: LinkCost) {
        self.shortcuts
            .retain(|(x, y, n, _)| !(n == name && ((*x == a && *y == b) || (*x == b && *y == a))));
        self.shortcuts.push((a, b, name.to_string(), cost));
        self.attach_shortcut(a, b, name, cost);
    }

    fn attach_shortcut(&mut self, a: ProcId, b: ProcId, name: &str, cost: LinkCost) {
        if self.proc(a).is_none() || self.proc(b).is_none() {
            return;
        }
        for (x, y) in [(a, b), (b, a)] {
            if let Some(list) = self.edges_mut(x) {
                list.retain(|e| !(e.to == y && e.kind == EdgeKind::Shortcut(name.to_string())));
                list.push(Edge {
                    to: y,
                    kind: EdgeKind::Shortcut(name.to_string()),
                    cost,
                });
            }
        }
    }

    fn edges_mut(&mut self, p: ProcId) -> Option<&mut Vec<Edge>> {
        self.workers
            .get_mut(&p.worker)?
            .edges
            .get_mut(p.index as usize)
    }

    /// The edges leaving `p` (empty if `p` is unknown).
    pub fn edges(&self, p: ProcId) -> &[Edge] {
        self.workers
            .get(&p.worker)
            .and_then(|n| n.edges.get(p.index as usize))
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// One processor's description.
    pub fn proc(&self, p: ProcId) -> Option<&ProcInfo> {
        self.workers
            .get(&p.worker)?
            .info
            .procs
            .get(p.index as usize)
    }

    /// One worker's description.
    pub fn worker(&self, w: WorkerId) -> Option<&WorkerInfo> {
        self.workers.get(&w).map(|n| &n.info)
    }

    /// The incarnation of a worker, if it is present.
    pub fn incarnation(&self, w: WorkerId) -> Option<Incarnation> {
        self.workers.get(&w).map(|n| n.info.incarnation)
    }

    /// All workers, in id order.
    pub fn workers(&self) -> impl Iterator<Item = &WorkerInfo> + '_ {
        self.workers.values().map(|n| &n.info)
    }

    /// All processors of all workers.
    pub fn procs(&self) -> impl Iterator<Item = &ProcInfo> + '_ {
        self.workers.values().flat_map(|n| n.info.procs.iter())
    }

    /// The children of a processor.
    pub fn children(&self, p: ProcId) -> impl Iterator<Item = &ProcInfo> + '_ {
        self.workers
            .get(&p.worker)
            .into_iter()
            .flat_map(move |n| n.info.procs.iter().filter(move |c| c.parent == Some(p)))
    }

    /// Number of processors.
    pub fn len(&self) -> usize {
        self.workers.values().map(|n| n.info.procs.len()).sum()
    }

    /// True if no worker is present.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    fn fmt_node(
        &self,
        f: &mut fmt::Formatter<'_>,
        p: &ProcInfo,
        prefix: &str,
        last: bool,
        depth: usize,
    ) -> fmt::Result {
        let (branch, cont) = if depth == 0 {
            ("", "")
        } else if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        write!(
            f,
            "{prefix}{branch}{} {} \"{}\" mem={}",
            p.id, p.kind, p.label, p.memory
        )?;
        for (k, v) in &p.properties {
            if !k.starts_with(UNAVAILABLE_PREFIX) {
                write!(f, " {k}={v}")?;
            }
        }
        writeln!(f)?;
        // Guard against a parent cycle in a malformed description.
        if depth > 64 {
            return Ok(());
        }
        let children: Vec<&ProcInfo> = self.children(p.id).filter(|c| c.id != p.id).collect();
        let child_prefix = format!("{prefix}{cont}");
        for (i, c) in children.iter().enumerate() {
            self.fmt_node(f, c, &child_prefix, i + 1 == children.len(), depth + 1)?;
        }
        Ok(())
    }
}

/// Prints the processor tree of every process, like `lstopo`: one block per process (the
/// driver first), its `OsProc` and the processors under it with their properties and the
/// detectors that could not look (see [`UNAVAILABLE_PREFIX`]), then the network and
/// shortcut edges.
///
/// ```text
/// worker-0 (driver) host=node1 pid=4242 inc-0 addr=-
///   proc[0]@worker-0 os "process 4242 on node1" mem=host:0 host=node1 pid=4242
///   ├─ proc[1]@worker-0 thread "core 0" mem=host:0 core=0 l2=2 MiB numa=0 pinned=true pu=0
///   └─ proc[2]@worker-0 thread "core 1" mem=host:0 core=1 l2=2 MiB numa=0 pinned=true pu=1
///   opencl: unavailable (libOpenCL.so.1 not found)
/// network: worker-0 <-> worker-1 (50000 ns, 600 MB/s)
/// shortcut shm: proc[0]@worker-0 <-> proc[0]@worker-1 (1000 ns, 5000 MB/s)
/// ```
impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in self.workers.values() {
            let i = &n.info;
            let role = if i.worker.is_driver() {
                "driver"
            } else {
                "worker"
            };
            let addr = i.peer_addr.as_deref().unwrap_or("-");
            writeln!(
                f,
                "{} ({role}) host={} pid={} {} addr={addr}",
                i.worker, i.host, i.pid, i.incarnation
            )?;
            if let Some(root) = i.procs.first() {
                self.fmt_node(f, root, "  ", true, 0)?;
                for (detector, reason) in unavailable_detectors(root) {
                    writeln!(f, "  {detector}: unavailable ({reason})")?;
                }
            }
        }
        for (w, n) in &self.workers {
            for e in n.edges.first().into_iter().flatten() {
                if e.kind == EdgeKind::Network && *w < e.to.worker {
                    writeln!(
                        f,
                        "network: {w} <-> {} ({} ns, {} MB/s)",
                        e.to.worker,
                        e.cost.latency_ns,
                        e.cost.bytes_per_s / 1_000_000
                    )?;
                }
            }
        }
        let mut shown = std::collections::BTreeSet::new();
        for (a, b, name, cost) in &self.shortcuts {
            if self.proc(*a).is_some()
                && self.proc(*b).is_some()
                && shown.insert((*a.min(b), *a.max(b), name.clone()))
            {
                writeln!(
                    f,
                    "shortcut {name}: {a} <-> {b} ({} ns, {} MB/s)",
                    cost.latency_ns,
                    cost.bytes_per_s / 1_000_000
                )?;
            }
        }
        Ok(())
    }
}

/// True for the kinds that run tasks on host memory directly (CPU threads).
pub fn is_cpu_kind(k: &ProcKind) -> bool {
    *k == ProcKind::THREAD
}
