//! Detection through the process-global registry. The registry is shared by every test of
//! this file, so they take a lock and restore what they change.

use dagger_core::{Incarnation, WorkerInfo};
use dagger_core::{MemorySpace, ProcId, ProcKind, WorkerId};
use dagger_proc::{
    detectors, DetectContext, Detection, DetectorUnavailable, LocalProcs, Processor, Topology,
    CPU_DETECTOR,
};
use std::any::Any;
use std::sync::{Mutex, MutexGuard};

static REGISTRY: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn ctx(worker: u32) -> DetectContext {
    DetectContext {
        worker: WorkerId(worker),
        hostname: "testhost".into(),
    }
}

struct Fpga {
    board: u32,
    log: std::sync::Arc<Mutex<Vec<u32>>>,
}

impl Processor for Fpga {
    fn kind(&self) -> ProcKind {
        ProcKind::custom("fpga")
    }
    fn memory(&self) -> MemorySpace {
        MemorySpace::custom("fpga-ddr", self.board)
    }
    fn label(&self) -> String {
        format!("fpga board {}", self.board)
    }
    fn execute(&self, job: dagger_proc::Job) {
        self.log.lock().unwrap().push(self.board);
        job();
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[test]
fn builtin_detection_gives_threads_under_the_os_proc() {
    let _g = lock();
    assert!(detectors().names().contains(&CPU_DETECTOR.to_string()));
    let procs = LocalProcs::detect(&ctx(2));
    let infos = procs.infos();
    assert_eq!(infos.len(), procs.len());
    assert_eq!(infos[0].id, ProcId::root(WorkerId(2)));
    assert_eq!(infos[0].kind, ProcKind::OS);
    assert_eq!(infos[0].parent, None);
    assert_eq!(
        infos[0].properties.get("host").map(String::as_str),
        Some("testhost")
    );
    assert!(procs.thread_count() >= 1);
    for (i, info) in infos.iter().enumerate().skip(1) {
        assert_eq!(info.id, ProcId::new(WorkerId(2), i as u32));
        assert_eq!(info.parent, Some(ProcId::root(WorkerId(2))));
        if info.kind == ProcKind::THREAD {
            assert_eq!(info.memory, MemorySpace::HOST);
            assert!(info.properties.contains_key("pinned"));
            assert!(procs
                .get(i as u32)
                .unwrap()
                .as_any()
                .is::<dagger_proc::ThreadProc>());
        }
    }
    assert!(procs.failures().is_empty());
}

#[test]
fn a_user_detector_adds_its_own_kind() {
    let _g = lock();
    let log = std::sync::Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    detectors().register("fpga", move |c| {
        assert_eq!(c.hostname, "testhost");
        (0..2)
            .map(|b| {
                Box::new(Fpga {
                    board: b,
                    log: l.clone(),
                }) as Box<dyn Processor>
            })
            .collect()
    });
    let procs = LocalProcs::detect(&ctx(1));
    assert!(detectors().unregister("fpga"));
    assert!(!detectors().names().contains(&"fpga".to_string()));
    let fpgas: Vec<_> = procs
        .infos()
        .into_iter()
        .filter(|i| i.kind.as_str() == "fpga")
        .collect();
    assert_eq!(fpgas.len(), 2);
    for (b, info) in fpgas.iter().enumerate() {
        assert_eq!(info.parent, Some(ProcId::root(WorkerId(1))));
        assert_eq!(info.memory, MemorySpace::custom("fpga-ddr", b as u32));
        assert_eq!(info.label, format!("fpga board {b}"));
        let p = procs.get(info.id.index).unwrap();
        assert_eq!(p.as_any().downcast_ref::<Fpga>().unwrap().board, b as u32);
    }
    // The user processor's own execute is what runs the job.
    let idx = fpgas[1].id.index;
    procs.execute(idx, Box::new(|| {})).unwrap();
    assert_eq!(*log.lock().unwrap(), vec![1]);
}

#[test]
fn a_panicking_detector_is_skipped() {
    let _g = lock();
    detectors().register("boom", |_| panic!("no such board"));
    let procs = LocalProcs::detect(&ctx(1));
    assert!(detectors().unregister("boom"));
    assert_eq!(procs.failures().len(), 1);
    assert_eq!(procs.failures()[0].detector, "boom");
    assert_eq!(procs.failures()[0].message, "no such board");
    // The others still ran.
    assert!(procs.thread_count() >= 1);
    assert_eq!(procs.infos()[0].kind, ProcKind::OS);
}

#[test]
fn registering_a_name_again_replaces_it_in_place() {
    let _g = lock();
    let mk = |board: u32| {
        move |_: &DetectContext| {
            vec![Box::new(Fpga {
                board,
                log: Default::default(),
            }) as Box<dyn Processor>]
        }
    };
    detectors().register("dup", mk(1));
    detectors().register("dup", mk(9));
    let names = detectors().names();
    assert_eq!(names.iter().filter(|n| *n == "dup").count(), 1);
    assert_eq!(names[0], CPU_DETECTOR);
    let procs = LocalProcs::detect(&ctx(1));
    assert!(detectors().unregister("dup"));
    assert!(!detectors().unregister("dup"));
    let boards: Vec<u32> = procs
        .procs()
        .iter()
        .filter_map(|p| p.as_any().downcast_ref::<Fpga>().map(|f| f.board))
        .collect();
    assert_eq!(boards, vec![9]);
}

#[test]
fn an_unavailable_detector_is_recorded_and_shown_in_the_tree() {
    let _g = lock();
    detectors().register_detection("opencl", |_| {
        Detection::unavailable("libOpenCL.so.1 not found")
    });
    // The other form of a typed answer: found nothing, which is not "unavailable".
    detectors().register_detection("none", |_| Detection::Found(Vec::new()));
    let procs = LocalProcs::detect(&ctx(3));
    assert!(detectors().unregister("opencl"));
    assert!(detectors().unregister("none"));

    // Device backends compiled in may report themselves unavailable too: keep this test's.
    let ours: Vec<DetectorUnavailable> = procs
        .unavailable()
        .iter()
        .filter(|u| u.detector == "opencl" || u.detector == "none")
        .cloned()
        .collect();
    assert_eq!(
        ours,
        [DetectorUnavailable {
            detector: "opencl".into(),
            reason: "libOpenCL.so.1 not found".into(),
        }]
    );
    assert_eq!(
        ours[0].to_string(),
        "opencl: unavailable (libOpenCL.so.1 not found)"
    );
    assert!(procs.failures().is_empty());
    assert!(procs.thread_count() >= 1);

    // The reason travels with the process's description and the tree prints it.
    let mut topo = Topology::new();
    topo.add_worker(WorkerInfo {
        worker: WorkerId(3),
        incarnation: Incarnation(0),
        host: "testhost".into(),
        pid: 1,
        name: String::new(),
        peer_addr: None,
        procs: procs.infos(),
    });
    let text = topo.to_string();
    assert!(
        text.lines()
            .any(|l| l == "  opencl: unavailable (libOpenCL.so.1 not found)"),
        "{text}"
    );
    assert!(!text.contains("none"), "{text}");
}

#[cfg(feature = "hwloc")]
#[test]
fn hwloc_reports_cores_with_numa_and_caches() {
    let _g = lock();
    let procs = LocalProcs::detect(&ctx(1));
    let threads: Vec<_> = procs
        .infos()
        .into_iter()
        .filter(|i| i.kind == ProcKind::THREAD)
        .collect();
    assert!(!threads.is_empty());
    for t in &threads {
        assert!(
            !t.properties.contains_key("hwloc"),
            "hwloc fell back: {:?}",
            t.properties
        );
        assert!(t.label.starts_with("core "));
        for key in ["core", "pu", "numa", "pinned"] {
            assert!(
                t.properties.contains_key(key),
                "{key} missing in {:?}",
                t.properties
            );
        }
        assert!(
            ["l1d", "l2", "l3"]
                .iter()
                .any(|k| t.properties.contains_key(*k)),
            "no cache size in {:?}",
            t.properties
        );
    }
}
