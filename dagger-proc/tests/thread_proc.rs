//! ThreadProc and OsProc execution, and the current-processor thread-local.

use dagger_core::{ProcId, ProcKind, WorkerId};
use dagger_proc::{current, current_id, with_current, LocalProcs, OsProc, Processor, ThreadProc};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn jobs_run_in_fifo_order_on_the_processor_thread() {
    let tp = ThreadProc::unpinned().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = mpsc::channel();
    for i in 0..1000u32 {
        let seen = Arc::clone(&seen);
        tp.execute(Box::new(move || {
            seen.lock().unwrap().push((i, std::thread::current().id()));
        }));
    }
    tp.execute(Box::new(move || {
        done_tx
            .send(std::thread::current().name().map(String::from))
            .unwrap()
    }));
    let name = done_rx.recv().unwrap();
    assert_eq!(name.as_deref(), Some("dagger-thread"));
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (0..1000).collect::<Vec<_>>()
    );
    assert!(seen.iter().all(|(_, t)| *t == tp.thread_id()));
    assert_ne!(tp.thread_id(), std::thread::current().id());
}

#[test]
fn a_panicking_job_does_not_kill_the_thread() {
    let tp = ThreadProc::builder()
        .name("dagger-thread-panics")
        .spin(Duration::ZERO)
        .spawn()
        .unwrap();
    tp.execute(Box::new(|| panic!("job failure on purpose")));
    let (tx, rx) = mpsc::channel();
    tp.execute(Box::new(move || {
        tx.send(std::thread::current().id()).unwrap()
    }));
    assert_eq!(rx.recv().unwrap(), tp.thread_id());
    assert_eq!(tp.panicked_jobs(), 1);
}

#[test]
fn pinned_thread_reports_its_cpu() {
    let cpu = dagger_proc::sys::affinity().unwrap()[0];
    let tp = ThreadProc::pinned_to(cpu).unwrap();
    let props = tp.properties();
    assert_eq!(props.get("cpu"), Some(&cpu.to_string()));
    assert_eq!(props.get("pinned"), Some(&tp.pinned().to_string()));
    assert_eq!(tp.thread_name(), format!("dagger-thread-{cpu}"));
    if tp.pinned() {
        let (tx, rx) = mpsc::channel();
        tp.execute(Box::new(move || {
            tx.send(dagger_proc::sys::affinity().unwrap()).unwrap()
        }));
        assert_eq!(rx.recv().unwrap(), vec![cpu]);
    }
}

#[test]
fn pinning_to_a_missing_cpu_is_recorded_not_fatal() {
    let tp = ThreadProc::builder()
        .pinning(dagger_proc::Pinning::Cpus(vec![100_000]))
        .spawn()
        .unwrap();
    assert!(!tp.pinned());
    assert_eq!(
        tp.properties().get("pinned").map(String::as_str),
        Some("false")
    );
    assert!(tp.properties().contains_key("pin_error"));
    let (tx, rx) = mpsc::channel();
    tp.execute(Box::new(move || tx.send(()).unwrap()));
    rx.recv().unwrap();
}

#[test]
fn shutdown_drains_the_queue_then_drops_later_jobs() {
    let tp = ThreadProc::builder().spin(Duration::ZERO).spawn().unwrap();
    let count = Arc::new(Mutex::new(0u32));
    for _ in 0..100 {
        let count = Arc::clone(&count);
        tp.execute(Box::new(move || *count.lock().unwrap() += 1));
    }
    tp.shutdown();
    assert_eq!(*count.lock().unwrap(), 100);
    assert!(tp.is_closed());
    let (tx, rx) = mpsc::channel::<()>();
    tp.execute(Box::new(move || tx.send(()).unwrap()));
    // The job was dropped unrun, so its sender is gone.
    assert_eq!(rx.recv(), Err(mpsc::RecvError));
}

#[test]
fn dropping_the_last_handle_from_its_own_thread_does_not_deadlock() {
    let tp: Arc<dyn Processor> = Arc::new(ThreadProc::unpinned().unwrap());
    let (tx, rx) = mpsc::channel();
    let inner = Arc::clone(&tp);
    tp.execute(Box::new(move || {
        let keep = inner;
        tx.send(()).unwrap();
        // `keep` may be the last handle; dropping it here must not join this thread.
        drop(keep);
    }));
    drop(tp);
    rx.recv().unwrap();
}

#[test]
fn jobs_know_their_current_processor() {
    assert!(current().is_none());
    let procs = LocalProcs::from_processors(
        WorkerId(3),
        vec![
            Box::new(OsProc::new("here")),
            Box::new(ThreadProc::unpinned().unwrap()),
            Box::new(ThreadProc::unpinned().unwrap()),
        ],
    );
    let (tx, rx) = mpsc::channel();
    for index in 0..3u32 {
        let tx = tx.clone();
        procs
            .execute(
                index,
                Box::new(move || {
                    let id = current_id();
                    let (kind, is_thread) = with_current(|c| {
                        let (i, p) = c.expect("a current processor");
                        assert_eq!(i, index);
                        (p.kind(), p.as_any().downcast_ref::<ThreadProc>().is_some())
                    });
                    tx.send((index, id, kind, is_thread)).unwrap();
                }),
            )
            .unwrap();
    }
    let mut got: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
    got.sort_by_key(|g| g.0);
    assert_eq!(
        got[0],
        (0, Some(ProcId::new(WorkerId(3), 0)), ProcKind::OS, false)
    );
    assert_eq!(
        got[1],
        (1, Some(ProcId::new(WorkerId(3), 1)), ProcKind::THREAD, true)
    );
    assert_eq!(
        got[2],
        (2, Some(ProcId::new(WorkerId(3), 2)), ProcKind::THREAD, true)
    );
    assert!(current().is_none());
    assert!(matches!(
        procs.execute(7, Box::new(|| {})),
        Err(dagger_proc::ProcError::UnknownProcessor {
            index: 7,
            count: 3,
            ..
        })
    ));
}

#[test]
fn enter_sets_and_restores_the_current_processor() {
    let p: Arc<dyn Processor> = Arc::new(OsProc::new("h"));
    let a = ProcId::new(WorkerId(1), 4);
    let b = ProcId::new(WorkerId(1), 5);
    {
        let _g = dagger_proc::enter(a, Arc::downgrade(&p));
        assert_eq!(current_id(), Some(a));
        {
            let _h = dagger_proc::enter(b, Arc::downgrade(&p));
            assert_eq!(current().unwrap().id, b);
        }
        assert_eq!(current_id(), Some(a));
    }
    assert_eq!(current_id(), None);
}

#[test]
fn dropping_local_procs_runs_queued_jobs_and_stops_threads() {
    let procs = LocalProcs::from_processors(
        WorkerId(1),
        vec![
            Box::new(OsProc::new("h")),
            Box::new(ThreadProc::unpinned().unwrap()),
        ],
    );
    let held = Arc::clone(procs.get(1).unwrap());
    let count = Arc::new(Mutex::new(0));
    for _ in 0..50 {
        let count = Arc::clone(&count);
        procs
            .execute(1, Box::new(move || *count.lock().unwrap() += 1))
            .unwrap();
    }
    drop(procs);
    assert_eq!(*count.lock().unwrap(), 50);
    // The thread is gone even though a handle is still held.
    assert!(held
        .as_any()
        .downcast_ref::<ThreadProc>()
        .unwrap()
        .is_closed());
}
