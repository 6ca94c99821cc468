//! Path search over the topology graph.

use dagger_core::topology::{EdgeKind, Topology};
use dagger_core::{
    Incarnation, LinkCost, MemorySpace, ProcId, ProcInfo, ProcKind, WorkerId, WorkerInfo,
};
use dagger_move::{cheapest_path, costs_from, generic_path, shm, MoveError, PathCache};

/// A worker on `host` with an OsProc root, two threads and one CUDA device.
fn worker(id: u32, host: &str) -> WorkerInfo {
    let w = WorkerId(id);
    let root = ProcId::root(w);
    let proc = |index: u32, kind: ProcKind, memory: MemorySpace| ProcInfo {
        id: ProcId::new(w, index),
        kind,
        parent: (index != 0).then_some(root),
        memory,
        label: format!("p{index}"),
        properties: Default::default(),
    };
    WorkerInfo {
        worker: w,
        incarnation: Incarnation(1),
        host: host.to_string(),
        pid: 1000 + id,
        name: String::new(),
        peer_addr: None,
        procs: vec![
            proc(0, ProcKind::OS, MemorySpace::HOST),
            proc(1, ProcKind::THREAD, MemorySpace::HOST),
            proc(2, ProcKind::THREAD, MemorySpace::HOST),
            proc(3, ProcKind::CUDA, MemorySpace::custom("cuda", 0)),
        ],
    }
}

fn topo(hosts: &[&str]) -> Topology {
    let mut t = Topology::new();
    for (i, h) in hosts.iter().enumerate() {
        t.add_worker(worker(i as u32 + 1, h));
    }
    t
}

fn p(w: u32, i: u32) -> ProcId {
    ProcId::new(WorkerId(w), i)
}

const BIG: u64 = 64 << 20;

#[test]
fn same_processor_is_the_empty_path() {
    let t = topo(&["a"]);
    let path = cheapest_path(&t, p(1, 1), p(1, 1), BIG).unwrap();
    assert!(path.is_empty());
    assert_eq!(path.cost_ns, 0);
    assert!(generic_path(&t, p(1, 1), p(1, 1)).unwrap().is_empty());
}

#[test]
fn shm_shortcut_wins_for_large_data_on_one_host() {
    let mut t = topo(&["a", "a"]);
    shm::add_same_host_shortcuts(&mut t);
    let path = cheapest_path(&t, p(1, 1), p(2, 1), BIG).unwrap();
    let kinds: Vec<_> = path.hops.iter().map(|h| h.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            EdgeKind::Tree,
            EdgeKind::Shortcut(shm::SHORTCUT.into()),
            EdgeKind::Tree
        ]
    );
    assert!(path.uses_shortcut(shm::SHORTCUT));
    assert_eq!(path.hops[1].from, p(1, 0));
    assert_eq!(path.hops[1].to, p(2, 0));
    assert_eq!(
        path.cost_ns,
        path.hops.iter().map(|h| h.cost_ns).sum::<u64>()
    );
    let net = t.costs().network.time_ns(BIG);
    assert!(path.cost_ns < net, "{} vs network {}", path.cost_ns, net);
}

#[test]
fn network_edge_is_used_across_hosts() {
    let mut t = topo(&["a", "b"]);
    shm::add_same_host_shortcuts(&mut t);
    let path = cheapest_path(&t, p(1, 1), p(2, 1), BIG).unwrap();
    assert!(!path.uses_shortcut(shm::SHORTCUT));
    assert_eq!(path.hops[1].kind, EdgeKind::Network);
    assert_eq!(path.hops.len(), 3);
}

#[test]
fn network_edge_wins_when_it_is_cheaper_than_the_shortcut() {
    let mut t = topo(&["a", "a"]);
    // A shortcut slower than the network for every size.
    t.add_shortcut(
        p(1, 0),
        p(2, 0),
        "slow",
        LinkCost::new(1_000_000, 1_000_000),
    );
    let path = cheapest_path(&t, p(1, 0), p(2, 0), BIG).unwrap();
    assert_eq!(path.hops.len(), 1);
    assert_eq!(path.hops[0].kind, EdgeKind::Network);
}

#[test]
fn shortcuts_are_added_once_and_only_between_same_host_workers() {
    let mut t = topo(&["a", "a", "b", "a", ""]);
    shm::add_same_host_shortcuts(&mut t);
    shm::add_same_host_shortcuts(&mut t);
    let shm_edges = |from: ProcId| {
        t.edges(from)
            .iter()
            .filter(|e| e.kind == EdgeKind::Shortcut(shm::SHORTCUT.into()))
            .map(|e| e.to)
            .collect::<Vec<_>>()
    };
    let mut from1 = shm_edges(p(1, 0));
    from1.sort();
    assert_eq!(from1, vec![p(2, 0), p(4, 0)]);
    assert!(shm_edges(p(3, 0)).is_empty());
    assert!(shm_edges(p(5, 0)).is_empty());
    assert_eq!(shm_edges(p(2, 0)).len(), 2);
}

#[test]
fn generic_path_walks_the_tree() {
    let mut t = topo(&["a", "a"]);
    shm::add_same_host_shortcuts(&mut t);
    // thread@1 → OsProc 1 → OsProc 2 → cuda@2, never the shortcut.
    let path = generic_path(&t, p(1, 1), p(2, 3)).unwrap();
    let nodes: Vec<_> = path
        .hops
        .iter()
        .map(|h| (h.from, h.to, h.kind.clone()))
        .collect();
    assert_eq!(
        nodes,
        vec![
            (p(1, 1), p(1, 0), EdgeKind::Tree),
            (p(1, 0), p(2, 0), EdgeKind::Network),
            (p(2, 0), p(2, 3), EdgeKind::Tree),
        ]
    );
    // Within one process: up to the common ancestor and down again.
    let local = generic_path(&t, p(1, 1), p(1, 2)).unwrap();
    let nodes: Vec<_> = local.hops.iter().map(|h| (h.from, h.to)).collect();
    assert_eq!(nodes, vec![(p(1, 1), p(1, 0)), (p(1, 0), p(1, 2))]);
    // Root to its own child: one hop.
    assert_eq!(generic_path(&t, p(2, 0), p(2, 3)).unwrap().hops.len(), 1);
}

#[test]
fn unknown_processors_have_no_path() {
    let t = topo(&["a"]);
    let missing = p(9, 0);
    assert!(matches!(
        cheapest_path(&t, p(1, 1), missing, 10),
        Err(MoveError::NoPath { from, to }) if from == p(1, 1) && to == missing
    ));
    assert!(matches!(
        generic_path(&t, missing, p(1, 1)),
        Err(MoveError::NoPath { .. })
    ));
    assert!(matches!(
        cheapest_path(&t, p(1, 7), p(1, 1), 10),
        Err(MoveError::NoPath { .. })
    ));
}

#[test]
fn path_cache_matches_cheapest_path_and_is_invalidated() {
    let mut t = topo(&["a", "a", "b"]);
    shm::add_same_host_shortcuts(&mut t);
    let cache = PathCache::new();
    let sizes = [
        0u64,
        1,
        100,
        4096,
        65_535,
        65_536,
        1 << 20,
        3 << 20,
        1 << 30,
        u64::MAX / 2,
    ];
    let pairs = [
        (p(1, 1), p(2, 3)),
        (p(1, 1), p(3, 2)),
        (p(2, 3), p(1, 0)),
        (p(1, 1), p(1, 2)),
    ];
    for &(a, b) in &pairs {
        for &n in &sizes {
            let want = cheapest_path(&t, a, b, n).unwrap();
            assert_eq!(
                cache.cost_ns(&t, a, b, n).unwrap(),
                want.cost_ns,
                "{a}->{b} {n}"
            );
            assert_eq!(cache.path(&t, a, b, n).unwrap().cost_ns, want.cost_ns);
        }
    }
    assert!(!cache.is_empty());

    // The crossover between the network and a shortcut inside one bucket is still exact.
    let mut t2 = topo(&["a", "a"]);
    // Dearer than the network below ~3.06 MB, cheaper above: the crossover lies inside
    // the bucket [2 MiB, 4 MiB).
    t2.add_shortcut(
        p(1, 0),
        p(2, 0),
        "bulk",
        LinkCost::new(2_550_000, 1_200_000_000),
    );
    let c2 = PathCache::new();
    let mut kinds = std::collections::BTreeSet::new();
    for n in (2u64 << 20..4 << 20).step_by(97_003) {
        let want = cheapest_path(&t2, p(1, 0), p(2, 0), n).unwrap();
        kinds.insert(format!("{:?}", want.hops[0].kind));
        assert_eq!(
            c2.cost_ns(&t2, p(1, 0), p(2, 0), n).unwrap(),
            want.cost_ns,
            "{n}"
        );
        assert_eq!(c2.path(&t2, p(1, 0), p(2, 0), n).unwrap(), want, "{n}");
    }
    assert_eq!(
        kinds.len(),
        2,
        "both routes win somewhere in the bucket: {kinds:?}"
    );

    // A topology change is seen only after invalidate().
    let before = cache.cost_ns(&t, p(1, 1), p(3, 2), BIG).unwrap();
    t.add_shortcut(
        p(1, 0),
        p(3, 0),
        "rdma",
        LinkCost::new(1_000, 50_000_000_000),
    );
    assert_eq!(cache.cost_ns(&t, p(1, 1), p(3, 2), BIG).unwrap(), before);
    cache.invalidate();
    assert!(cache.is_empty());
    let after = cache.cost_ns(&t, p(1, 1), p(3, 2), BIG).unwrap();
    assert!(after < before);
    assert_eq!(
        after,
        cheapest_path(&t, p(1, 1), p(3, 2), BIG).unwrap().cost_ns
    );

    // Unreachable pairs are errors, cached or not.
    assert!(matches!(
        cache.cost_ns(&t, p(1, 1), p(8, 0), 5),
        Err(MoveError::NoPath { .. })
    ));
    assert!(matches!(
        cache.cost_ns(&t, p(1, 1), p(8, 0), 5),
        Err(MoveError::NoPath { .. })
    ));
}

#[test]
fn costs_from_agrees_with_cheapest_path_for_every_destination() {
    let mut t = topo(&["a", "a", "b"]);
    shm::add_same_host_shortcuts(&mut t);
    let procs: Vec<ProcId> = t.procs().map(|p| p.id).collect();
    for bytes in [0u64, 1 << 10, 1 << 20, 64 << 20] {
        for &from in &procs {
            let all = costs_from(&t, from, bytes);
            for &to in &procs {
                let expected = cheapest_path(&t, from, to, bytes).map(|p| p.cost_ns).ok();
                assert_eq!(
                    all.get(&to).copied(),
                    expected,
                    "{from} -> {to}, {bytes} bytes"
                );
            }
        }
    }
    assert!(costs_from(&t, p(9, 0), 1).is_empty());
}
