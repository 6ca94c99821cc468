//! Paths over the topology graph: the cheapest path for a datum's size, the generic tree
//! path, and a cache of path costs for the scheduler's hot path.

use crate::MoveError;
use dagger_core::topology::{EdgeKind, Topology};
use dagger_core::{LinkCost, ProcId};
use parking_lot::RwLock;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

/// One hop of a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// Where the hop starts.
    pub from: ProcId,
    /// Where it ends.
    pub to: ProcId,
    /// Which kind of edge it crosses.
    pub kind: EdgeKind,
    /// Its cost for the datum's size, in nanoseconds.
    pub cost_ns: u64,
}

/// A path between two processors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Path {
    /// The hops, in order; empty when source and destination are the same.
    pub hops: Vec<Hop>,
    /// The sum of the hops' costs, in nanoseconds.
    pub cost_ns: u64,
}

impl Path {
    /// True for the empty path (the data is already there).
    pub fn is_empty(&self) -> bool {
        self.hops.is_empty()
    }

    /// True if some hop crosses the shortcut named `name`.
    pub fn uses_shortcut(&self, name: &str) -> bool {
        self.hops
            .iter()
            .any(|h| matches!(&h.kind, EdgeKind::Shortcut(n) if n == name))
    }
}

/// The cheapest path from `from` to `to` for a datum of `bytes` bytes: Dijkstra over
/// [`Topology::edges`], each edge weighted by [`LinkCost::time_ns`]. Edges that cannot carry
/// data (bandwidth 0) are skipped. Equal-cost alternatives are broken deterministically.
///
/// `from == to` gives the empty path of cost 0 (even for a processor the topology does not
/// know). An unknown processor or an unreachable destination is [`MoveError::NoPath`].
/// Costs O(E log V) over the whole cluster's graph; see [`PathCache`] for repeated queries.
pub fn cheapest_path(
    topo: &Topology,
    from: ProcId,
    to: ProcId,
    bytes: u64,
) -> Result<Path, MoveError> {
    let links = search(topo, from, to, bytes)?;
    Ok(priced(&links, bytes))
}

/// The cheapest cost, in nanoseconds, of moving `bytes` bytes from `from` to every
/// processor reachable from it: one single-source Dijkstra over the same edges and costs as
/// [`cheapest_path`] (edges that cannot carry data are skipped). Costs `O(E log V)`; a
/// caller placing many tasks (the scheduler) caches the result per source and size.
/// An unknown `from` gives an empty map.
pub fn costs_from(topo: &Topology, from: ProcId, bytes: u64) -> HashMap<ProcId, u64> {
    let mut dist: HashMap<ProcId, u64> = HashMap::new();
    if topo.proc(from).is_none() {
        return dist;
    }
    let mut heap = BinaryHeap::new();
    dist.insert(from, 0);
    heap.push(Reverse((0u64, from)));
    while let Some(Reverse((d, p))) = heap.pop() {
        if dist.get(&p).is_some_and(|&best| d > best) {
            continue;
        }
        for e in topo.edges(p) {
            if e.cost.bytes_per_s == 0 {
                continue;
            }
            let nd = d.saturating_add(e.cost.time_ns(bytes));
            if dist.get(&e.to).is_none_or(|&best| nd < best) {
                dist.insert(e.to, nd);
                heap.push(Reverse((nd, e.to)));
            }
        }
    }
    dist
}

/// Dijkstra from `from` to `to` for `bytes` bytes; the hops with their edges' cost models.
fn search(
    topo: &Topology,
    from: ProcId,
    to: ProcId,
    bytes: u64,
) -> Result<Vec<CachedHop>, MoveError> {
    if from == to {
        return Ok(Vec::new());
    }
    let no_path = || MoveError::NoPath { from, to };
    if topo.proc(from).is_none() || topo.proc(to).is_none() {
        return Err(no_path());
    }
    // Best known distance, and the node and edge index it was reached by.
    let mut dist: HashMap<ProcId, u64> = HashMap::new();
    let mut prev: HashMap<ProcId, (ProcId, usize)> = HashMap::new();
    let mut heap = BinaryHeap::new();
    dist.insert(from, 0);
    heap.push(Reverse((0u64, from)));
    while let Some(Reverse((d, p))) = heap.pop() {
        if p == to {
            break;
        }
        if dist.get(&p).is_some_and(|&best| d > best) {
            continue;
        }
        for (i, e) in topo.edges(p).iter().enumerate() {
            if e.cost.bytes_per_s == 0 {
                continue;
            }
            let nd = d.saturating_add(e.cost.time_ns(bytes));
            if dist.get(&e.to).is_none_or(|&old| nd < old) {
                dist.insert(e.to, nd);
                prev.insert(e.to, (p, i));
                heap.push(Reverse((nd, e.to)));
            }
        }
    }
    if !dist.contains_key(&to) {
        return Err(no_path());
    }
    let mut hops = Vec::new();
    let mut cur = to;
    while cur != from {
        let &(p, i) = prev.get(&cur).ok_or_else(no_path)?;
        let e = topo.edges(p).get(i).ok_or_else(no_path)?;
        hops.push(CachedHop {
            from: p,
            to: cur,
            kind: e.kind.clone(),
            cost: e.cost,
        });
        cur = p;
    }
    hops.reverse();
    Ok(hops)
}

/// A path over `links`, priced for `bytes` bytes.
fn priced(links: &[CachedHop], bytes: u64) -> Path {
    let hops: Vec<Hop> = links
        .iter()
        .map(|h| Hop {
            from: h.from,
            to: h.to,
            kind: h.kind.clone(),
            cost_ns: h.cost.time_ns(bytes),
        })
        .collect();
    let cost_ns = hops
        .iter()
        .fold(0u64, |acc, h| acc.saturating_add(h.cost_ns));
    Path { hops, cost_ns }
}

/// The generic path from `from` to `to`, for a datum of zero bytes (hop costs are the
/// edges' latencies). See [`generic_path_for`].
pub fn generic_path(topo: &Topology, from: ProcId, to: ProcId) -> Result<Path, MoveError> {
    generic_path_for(topo, from, to, 0)
}

/// The generic path, which uses tree and network edges only: child → parent hops up to the
/// common ancestor (within one process) or to the process root, then root → root over the
/// network edge, then parent → child hops down (thread@A → OsProc A → OsProc B → cuda@B).
/// Hop costs are for a datum of `bytes` bytes.
///
/// `from == to` gives the empty path. An unknown processor, a broken parent chain or a
/// missing edge is [`MoveError::NoPath`]. Costs O(tree depth).
pub fn generic_path_for(
    topo: &Topology,
    from: ProcId,
    to: ProcId,
    bytes: u64,
) -> Result<Path, MoveError> {
    if from == to {
        return Ok(Path::default());
    }
    let no_path = || MoveError::NoPath { from, to };
    let up_from = ancestors(topo, from).ok_or_else(no_path)?;
    let up_to = ancestors(topo, to).ok_or_else(no_path)?;
    // Node sequence of the walk.
    let mut nodes: Vec<ProcId> = Vec::new();
    if from.worker == to.worker {
        let common = up_from
            .iter()
            .position(|p| up_to.contains(p))
            .ok_or_else(no_path)?;
        let lca = up_from[common];
        let down = up_to.iter().position(|&p| p == lca).ok_or_else(no_path)?;
        nodes.extend_from_slice(&up_from[..=common]);
        nodes.extend(up_to[..down].iter().rev());
    } else {
        nodes.extend_from_slice(&up_from);
        nodes.extend(up_to.iter().rev());
    }
    let mut hops = Vec::with_capacity(nodes.len().saturating_sub(1));
    let mut total = 0u64;
    for pair in nodes.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let want = if a.worker == b.worker {
            EdgeKind::Tree
        } else {
            EdgeKind::Network
        };
        let edge = topo
            .edges(a)
            .iter()
            .find(|e| e.to == b && e.kind == want)
            .ok_or_else(no_path)?;
        let w = edge.cost.time_ns(bytes);
        total = total.saturating_add(w);
        hops.push(Hop {
            from: a,
            to: b,
            kind: want,
            cost_ns: w,
        });
    }
    Ok(Path {
        hops,
        cost_ns: total,
    })
}

/// `p` and its ancestors up to its process root, `p` first; `None` if `p` is unknown or
/// the parent chain is broken (a cycle, a parent in another process, a missing parent).
fn ancestors(topo: &Topology, p: ProcId) -> Option<Vec<ProcId>> {
    let limit = topo.len();
    let mut chain = vec![p];
    let mut cur = topo.proc(p)?;
    while let Some(parent) = cur.parent {
        if parent.worker != p.worker || chain.len() > limit {
            return None;
        }
        chain.push(parent);
        cur = topo.proc(parent)?;
    }
    Some(chain)
}

/// One edge of a cached path: enough to recompute the hop's cost for any size.
#[derive(Clone, Debug)]
struct CachedHop {
    from: ProcId,
    to: ProcId,
    kind: EdgeKind,
    cost: LinkCost,
}

type Candidate = Arc<[CachedHop]>;

/// (from, to, size bucket).
type CacheKey = (ProcId, ProcId, u8);

/// The cheapest paths at a bucket's two ends, or `None` when there is no path.
type CacheEntry = Option<[Candidate; 2]>;

fn cost_of(c: &[CachedHop], bytes: u64) -> u64 {
    c.iter()
        .fold(0u64, |acc, h| acc.saturating_add(h.cost.time_ns(bytes)))
}

/// The size bucket of `bytes`: 0 for 0, otherwise ⌊log2 bytes⌋ + 1.
fn bucket(bytes: u64) -> u8 {
    (64 - bytes.leading_zeros()) as u8
}

/// The smallest and largest size of a bucket.
fn bucket_bounds(b: u8) -> (u64, u64) {
    match b {
        0 => (0, 0),
        64 => (1 << 63, u64::MAX),
        b => (1u64 << (b - 1), (1u64 << b) - 1),
    }
}

/// A memo of cheapest paths per (from, to, size bucket), the bucket being ⌊log2 bytes⌋.
///
/// For each bucket it keeps the cheapest path at the bucket's smallest and at its largest
/// size, and answers a query with the cheaper of the two for the exact size. That is the
/// exact answer of [`cheapest_path`] whenever the best path at that size is one of these
/// two (always so when at most two routes compete, as a network edge against a
/// shared-memory shortcut); otherwise it is an upper bound.
///
/// Lookups take a read lock and one hash probe, with no allocation. Call
/// [`invalidate`](Self::invalidate) whenever the topology changes (a worker joins or leaves,
/// a shortcut is added): the cache does not watch the topology.
#[derive(Debug, Default)]
pub struct PathCache {
    map: RwLock<HashMap<CacheKey, CacheEntry>>,
}

impl PathCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every memoized path. Call after any change to the topology.
    pub fn invalidate(&self) {
        self.map.write().clear();
    }

    /// Number of memoized (from, to, bucket) entries.
    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    /// True if nothing is memoized.
    pub fn is_empty(&self) -> bool {
        self.map.read().is_empty()
    }

    fn candidates(
        &self,
        topo: &Topology,
        from: ProcId,
        to: ProcId,
        bytes: u64,
    ) -> Result<[Candidate; 2], MoveError> {
        let key = (from, to, bucket(bytes));
        if let Some(entry) = self.map.read().get(&key) {
            return entry.clone().ok_or(MoveError::NoPath { from, to });
        }
        let (lo, hi) = bucket_bounds(key.2);
        let compute = |size| search(topo, from, to, size).map(Candidate::from);
        let entry = match (compute(lo), compute(hi)) {
            (Ok(a), Ok(b)) => Some([a, b]),
            (Err(MoveError::NoPath { .. }), _) | (_, Err(MoveError::NoPath { .. })) => None,
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        self.map.write().insert(key, entry.clone());
        entry.ok_or(MoveError::NoPath { from, to })
    }

    /// The cost in nanoseconds of moving `bytes` bytes from `from` to `to` (0 when they are
    /// the same processor). Computes and memoizes the bucket's paths on first use.
    pub fn cost_ns(
        &self,
        topo: &Topology,
        from: ProcId,
        to: ProcId,
        bytes: u64,
    ) -> Result<u64, MoveError> {
        if from == to {
            return Ok(0);
        }
        let [a, b] = self.candidates(topo, from, to, bytes)?;
        Ok(cost_of(&a, bytes).min(cost_of(&b, bytes)))
    }

    /// The path [`cost_ns`](Self::cost_ns) prices, with hop costs for `bytes` bytes.
    pub fn path(
        &self,
        topo: &Topology,
        from: ProcId,
        to: ProcId,
        bytes: u64,
    ) -> Result<Path, MoveError> {
        if from == to {
            return Ok(Path::default());
        }
        let [a, b] = self.candidates(topo, from, to, bytes)?;
        let best = if cost_of(&b, bytes) < cost_of(&a, bytes) {
            b
        } else {
            a
        };
        Ok(priced(&best, bytes))
    }
}
