//! The topology graph: tree, network and shortcut edges, and its printout.

use dagger_core::topology::{EdgeKind, Topology};
use dagger_core::{
    Incarnation, LinkCost, MemorySpace, ProcId, ProcInfo, ProcKind, WorkerId, WorkerInfo,
};
use std::collections::BTreeMap;

fn proc(w: u32, index: u32, kind: ProcKind, memory: MemorySpace, label: &str) -> ProcInfo {
    ProcInfo {
        id: ProcId::new(WorkerId(w), index),
        kind,
        parent: (index != 0).then_some(ProcId::root(WorkerId(w))),
        memory,
        label: label.into(),
        properties: BTreeMap::from([("core".to_string(), index.to_string())]),
    }
}

/// A process with an OsProc, two threads and (if `gpu`) a cuda device.
fn worker(w: u32, gpu: bool) -> WorkerInfo {
    let mut procs = vec![
        proc(
            w,
            0,
            ProcKind::OS,
            MemorySpace::HOST,
            &format!("process of {w}"),
        ),
        proc(w, 1, ProcKind::THREAD, MemorySpace::HOST, "core 0"),
        proc(w, 2, ProcKind::THREAD, MemorySpace::HOST, "core 1"),
    ];
    if gpu {
        procs.push(proc(
            w,
            3,
            ProcKind::CUDA,
            MemorySpace::custom("cuda", 0),
            "NVIDIA H100",
        ));
    }
    WorkerInfo {
        worker: WorkerId(w),
        incarnation: Incarnation(0),
        host: "node1".into(),
        pid: 100 + w,
        name: String::new(),
        peer_addr: None,
        procs,
    }
}

fn id(w: u32, i: u32) -> ProcId {
    ProcId::new(WorkerId(w), i)
}

fn has_edge(t: &Topology, a: ProcId, b: ProcId, kind: &EdgeKind) -> bool {
    t.edges(a).iter().any(|e| e.to == b && &e.kind == kind)
}

#[test]
fn workers_get_tree_and_network_edges() {
    let mut t = Topology::new();
    t.add_worker(worker(0, false));
    t.add_worker(worker(1, true));
    assert_eq!(t.len(), 7);
    let costs = *t.costs();
    for w in [0, 1] {
        for c in [1, 2] {
            assert!(has_edge(&t, id(w, c), id(w, 0), &EdgeKind::Tree));
            assert!(has_edge(&t, id(w, 0), id(w, c), &EdgeKind::Tree));
        }
    }
    let gpu_up = t.edges(id(1, 3)).iter().find(|e| e.to == id(1, 0)).unwrap();
    assert_eq!(gpu_up.cost, costs.device);
    let thread_up = t.edges(id(1, 1)).iter().find(|e| e.to == id(1, 0)).unwrap();
    assert_eq!(thread_up.cost, costs.same_memory);
    assert!(has_edge(&t, id(0, 0), id(1, 0), &EdgeKind::Network));
    assert!(has_edge(&t, id(1, 0), id(0, 0), &EdgeKind::Network));
    // Threads are not connected across processes directly.
    assert!(t.edges(id(0, 1)).iter().all(|e| e.to.worker == WorkerId(0)));
    assert_eq!(t.children(id(1, 0)).count(), 3);

    let removed = t.remove_worker(WorkerId(1)).unwrap();
    assert_eq!(removed.procs.len(), 4);
    assert!(t.proc(id(1, 0)).is_none());
    assert!(t.edges(id(0, 0)).iter().all(|e| e.to.worker != WorkerId(1)));
    assert!(t.remove_worker(WorkerId(1)).is_none());
    assert_eq!(t.len(), 3);
}

#[test]
fn re_adding_a_worker_replaces_it_without_duplicate_edges() {
    let mut t = Topology::new();
    t.add_worker(worker(0, false));
    t.add_worker(worker(1, false));
    let mut again = worker(1, false);
    again.incarnation = Incarnation(1);
    t.add_worker(again);
    assert_eq!(t.incarnation(WorkerId(1)), Some(Incarnation(1)));
    let net = |a, b| {
        t.edges(id(a, 0))
            .iter()
            .filter(|e| e.to == id(b, 0))
            .count()
    };
    assert_eq!(net(0, 1), 1);
    assert_eq!(net(1, 0), 1);
}

#[test]
fn shortcuts_connect_both_ways_and_survive_re_adding() {
    let mut t = Topology::new();
    t.add_worker(worker(1, true));
    t.add_worker(worker(2, true));
    let shm = EdgeKind::Shortcut("peer".into());
    let cost = LinkCost::new(1_000, 50_000_000_000);
    t.add_shortcut(id(1, 3), id(2, 3), "peer", cost);
    t.add_shortcut(id(1, 3), id(2, 3), "peer", cost);
    assert!(has_edge(&t, id(1, 3), id(2, 3), &shm));
    assert!(has_edge(&t, id(2, 3), id(1, 3), &shm));
    assert_eq!(
        t.edges(id(1, 3)).iter().filter(|e| e.kind == shm).count(),
        1
    );

    t.remove_worker(WorkerId(2));
    assert!(!t.edges(id(1, 3)).iter().any(|e| e.kind == shm));
    t.add_worker(worker(2, true));
    assert!(has_edge(&t, id(1, 3), id(2, 3), &shm));
    assert!(has_edge(&t, id(2, 3), id(1, 3), &shm));
    assert_eq!(
        t.edges(id(2, 3)).iter().filter(|e| e.kind == shm).count(),
        1
    );
}

#[test]
fn a_worker_without_processors_does_not_break_the_graph() {
    let mut t = Topology::new();
    t.add_worker(worker(0, false));
    let mut empty = worker(5, false);
    empty.procs.clear();
    t.add_worker(empty);
    t.add_worker(worker(6, false));
    assert!(t.worker(WorkerId(5)).is_some());
    assert!(has_edge(&t, id(0, 0), id(6, 0), &EdgeKind::Network));
    assert!(t.edges(id(0, 0)).iter().all(|e| e.to.worker != WorkerId(5)));
    let _ = t.to_string();
}

#[test]
fn display_lists_every_worker_processor_and_edge() {
    let mut t = Topology::new();
    t.add_worker(worker(0, false));
    t.add_worker(worker(1, true));
    t.add_shortcut(
        id(0, 0),
        id(1, 0),
        "shm",
        LinkCost::new(1_000, 5_000_000_000),
    );
    let s = t.to_string();
    assert!(s.contains("worker-0 (driver) host=node1 pid=100"), "{s}");
    assert!(s.contains("worker-1 (worker) host=node1 pid=101"), "{s}");
    for p in t.procs() {
        let line = s
            .lines()
            .find(|l| l.contains(&format!("{} {}", p.id, p.kind)))
            .unwrap_or_else(|| panic!("{} missing:\n{s}", p.id));
        assert!(line.contains(&p.label), "{line}");
        assert!(line.contains(&format!("mem={}", p.memory)), "{line}");
        assert!(line.contains("core="), "{line}");
    }
    assert!(
        s.contains("└─ proc[3]@worker-1 cuda \"NVIDIA H100\" mem=cuda:0"),
        "{s}"
    );
    assert!(s.contains("network: worker-0 <-> worker-1"), "{s}");
    assert!(
        s.contains("shortcut shm: proc[0]@worker-0 <-> proc[0]@worker-1 (1000 ns, 5000 MB/s)"),
        "{s}"
    );
    println!("{s}");
}

#[test]
fn display_shows_unavailable_detectors_under_their_process() {
    let mut t = Topology::new();
    let mut w = worker(1, false);
    w.procs[0].properties.insert(
        format!("{}opencl", dagger_core::topology::UNAVAILABLE_PREFIX),
        "libOpenCL.so.1 not found".into(),
    );
    t.add_worker(w);
    t.add_worker(worker(2, false));
    let s = t.to_string();
    let lines: Vec<&str> = s.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == "  opencl: unavailable (libOpenCL.so.1 not found)")
        .unwrap_or_else(|| panic!("no unavailable line in:\n{s}"));
    // Under worker-1's tree, before worker-2's block, and not repeated as a property.
    let w2 = lines
        .iter()
        .position(|l| l.starts_with("worker-2"))
        .unwrap();
    assert!(at < w2, "{s}");
    assert!(!s.contains("unavailable.opencl"), "{s}");
    assert_eq!(s.matches("unavailable").count(), 1, "{s}");
}
