//! Local worker processes: what they inherit, how long they live, how their end is
//! reported; and the builder's and the arguments' checks.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;
use dagger::{ClusterEvent, ContextError, ExitCause, LostReason, SubmitError};
use std::sync::mpsc;
use std::time::Duration;

/// What a worker's environment shows to a process its task starts (`env`), and its own
/// initial environment (`/proc/self/environ`).
#[dagger::task]
fn environment(_x: u64) -> (String, String) {
    let env = std::process::Command::new("env")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("cannot run env: {e}"));
    let initial = std::fs::read("/proc/self/environ")
        .map(|b| String::from_utf8_lossy(&b).replace('\0', "\n"))
        .unwrap_or_else(|e| format!("cannot read /proc/self/environ: {e}"));
    (env, initial)
}

#[dagger::task]
fn process_id(_x: u64) -> u32 {
    std::process::id()
}

#[dagger::task]
fn number(x: u64) -> u64 {
    x
}

#[dagger::task]
fn text_len(s: String) -> u64 {
    s.len() as u64
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Fetches `h` on another thread, so that a worker that never answers fails the test
/// instead of hanging it (a guard, not a timing assertion).
fn fetch_or_fail<T: serde::de::DeserializeOwned + Send + 'static>(h: Handle<T>) -> T {
    let (tx, rx) = mpsc::channel();
    let fetcher = std::thread::spawn(move || {
        let _ = tx.send(h.fetch());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(r) => {
            fetcher.join().unwrap();
            r.expect("the task failed")
        }
        Err(_) => panic!("no answer from the workers"),
    }
}

/// The worker's private key reaches it through a pipe: neither the environment its tasks'
/// processes inherit nor its own initial environment holds key material, or any variable
/// that would make a child process of the same binary think it is a worker.
#[test]
fn workers_keep_their_key_out_of_the_environment() {
    dagger::init();
    let ctx = Context::builder()
        .workers(1)
        .test_harness()
        .worker_threads(1)
        .build()
        .unwrap();
    let (env, initial) = fetch_or_fail(environment::spawn(&ctx, 0).unwrap());
    assert!(env.contains("PATH="), "`env` printed nothing: {env}");
    for (what, text) in [("env", &env), ("/proc/self/environ", &initial)] {
        for needle in [
            "PRIVATE KEY".to_string(),
            hex("PRIVATE KEY"),
            hex("-----BEGIN"),
            "dagger-identity".to_string(),
            "DAGGER_WORKER_IDENTITY=".to_string(),
        ] {
            assert!(
                !text.contains(&needle),
                "{what} of a worker holds {needle:?}:\n{text}"
            );
        }
    }
    assert!(
        !env.contains("DAGGER_WORKER_"),
        "a task's process inherits the worker variables:\n{env}"
    );
}

/// A context built on a thread that then ends keeps its workers: they belong to the
/// driver process, not to the thread that forked them.
#[test]
fn workers_outlive_the_thread_that_started_them() {
    dagger::init();
    let builder = Context::builder()
        .workers(2)
        .test_harness()
        .worker_threads(1);
    let (ctx_tx, ctx_rx) = mpsc::channel();
    let (end_tx, end_rx) = mpsc::channel::<()>();
    let helper = std::thread::Builder::new()
        .name("context-builder".into())
        .spawn(move || {
            ctx_tx.send(builder.build().unwrap()).unwrap();
            let _ = end_rx.recv();
        })
        .unwrap();
    let ctx: Context = ctx_rx.recv().unwrap();
    let mut events = ctx.subscribe();
    drop(end_tx);
    helper.join().unwrap();
    let mut pids = ctx.local_worker_pids();
    pids.sort_unstable();
    assert_eq!(pids.len(), 2);
    let mut ran_in = Vec::new();
    for w in ctx.workers() {
        let h = process_id::with(Options::new().scope(Scope::worker(w)))
            .spawn(&ctx, 0)
            .unwrap();
        ran_in.push(fetch_or_fail(h));
    }
    ran_in.sort_unstable();
    assert_eq!(
        ran_in, pids,
        "tasks ran in the workers started by the ended thread"
    );
    while let Ok(ev) = events.try_recv() {
        assert!(
            !matches!(ev, ClusterEvent::WorkerLost { .. }),
            "a worker was lost: {ev:?}"
        );
    }
}

/// A killed worker is reported lost by the child watch, with the signal that ended it.
#[test]
fn a_killed_worker_is_lost_with_its_signal() {
    dagger::init();
    let ctx = Context::builder()
        .workers(1)
        .test_harness()
        .worker_threads(1)
        .build()
        .unwrap();
    let mut events = ctx.subscribe();
    let pid = ctx.local_worker_pids()[0];
    // SAFETY: plain syscall on a child process id we started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    loop {
        match events.blocking_recv() {
            Some(ClusterEvent::WorkerLost { reason, .. }) => {
                match reason {
                    LostReason::ProcessExited {
                        pid: lost,
                        exit: ExitCause::Signal(9),
                    } => assert_eq!(lost, pid),
                    other => panic!("lost for another reason: {other:?}"),
                }
                break;
            }
            Some(_) => continue,
            None => panic!("the event stream ended"),
        }
    }
}

/// A handle cast to another type cannot feed a parameter of that type: the bytes of a
/// `u64` would otherwise be read as a `String`.
#[test]
fn a_cast_handle_of_another_type_is_refused_as_an_argument() {
    let ctx = Context::threads().unwrap();
    let n = number::spawn(&ctx, 0).unwrap();
    let as_text: Handle<String> = n.clone().cast();
    match text_len::spawn(&ctx, &as_text) {
        Err(SubmitError::TypeMismatch {
            task,
            expected,
            found,
        }) => {
            assert_eq!(task, n.id());
            assert_eq!(expected, std::any::type_name::<String>());
            assert_eq!(found, "u64");
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }
    // The lazy form is refused as well.
    assert!(matches!(
        ctx.collect(text_len::delayed(&as_text)),
        Err(dagger::CollectError::Submit(
            SubmitError::TypeMismatch { .. }
        ))
    ));
    // Cast back, it is an ordinary argument again.
    let back: Handle<u64> = as_text.cast();
    assert_eq!(number::spawn(&ctx, &back).unwrap().fetch().unwrap(), 0);
}

#[test]
fn zero_worker_threads_is_refused() {
    let err = Context::builder()
        .workers(1)
        .worker_threads(0)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            ContextError::InvalidSetting {
                setting: "worker_threads",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn test_harness_on_an_unnamed_thread_is_refused() {
    let err = std::thread::spawn(|| {
        Context::builder()
            .workers(1)
            .test_harness()
            .build()
            .unwrap_err()
    })
    .join()
    .unwrap();
    assert!(
        matches!(
            err,
            ContextError::InvalidSetting {
                setting: "test_harness",
                ..
            }
        ),
        "{err}"
    );
}

/// `cert_dir` leaves the worker's key private even where an older, world-readable
/// key.pem was.
#[cfg(unix)]
#[test]
fn cert_dir_makes_an_existing_key_file_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("dagger-cert-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    std::fs::write(&key, "an old key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ctx = Context::builder()
        .driver_runs_tasks(false)
        .cert_dir(&dir)
        .build()
        .unwrap();
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    let text = std::fs::read_to_string(&key).unwrap();
    ctx.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(mode, 0o600, "key.pem is {mode:o}");
    assert!(text.contains("PRIVATE KEY"));
}
