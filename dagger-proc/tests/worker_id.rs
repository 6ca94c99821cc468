//! The process's worker id, set once it is known. A test binary of its own: the id is
//! process-global and can be set once.

use dagger_core::{ProcId, WorkerId};
use dagger_proc::{
    current_id, set_worker, worker, LocalProcs, OsProc, ThreadProc, WorkerAlreadySet,
};
use std::sync::mpsc;

/// Runs a job on processor `index` and returns what `current_id` said inside it.
fn id_seen_by_a_job(procs: &LocalProcs, index: u32) -> Option<ProcId> {
    let (tx, rx) = mpsc::channel();
    procs
        .execute(
            index,
            Box::new(move || {
                let _ = tx.send(current_id());
            }),
        )
        .unwrap();
    rx.recv().unwrap()
}

#[test]
fn processors_report_the_worker_id_set_after_they_were_attached() {
    // As in a worker process: processors attached before the driver's welcome, under the
    // provisional id 0.
    let procs = LocalProcs::from_processors(
        WorkerId(0),
        vec![
            Box::new(OsProc::new("here")),
            Box::new(ThreadProc::unpinned().unwrap()),
        ],
    );
    assert_eq!(worker(), None);
    assert_eq!(
        id_seen_by_a_job(&procs, 1),
        Some(ProcId::new(WorkerId(0), 1))
    );

    set_worker(WorkerId(7)).unwrap();
    assert_eq!(worker(), Some(WorkerId(7)));
    // The thread was attached long before; it now reports the real id.
    assert_eq!(
        id_seen_by_a_job(&procs, 1),
        Some(ProcId::new(WorkerId(7), 1))
    );
    // Outside any job there is still no current processor.
    assert_eq!(current_id(), None);

    // Set once: the same id again is fine, another one is refused and changes nothing.
    set_worker(WorkerId(7)).unwrap();
    assert_eq!(
        set_worker(WorkerId(8)),
        Err(WorkerAlreadySet {
            current: WorkerId(7),
            requested: WorkerId(8),
        })
    );
    assert_eq!(worker(), Some(WorkerId(7)));
    assert_eq!(
        id_seen_by_a_job(&procs, 1),
        Some(ProcId::new(WorkerId(7), 1))
    );
}
