//! Worker processes seen as a program sees them (this test has no libtest harness: `main`
//! is the program's, like a user's): local workers get the program's own arguments, whatever
//! thread starts the context; a worker of another build is refused unless mixing builds was
//! allowed; a hand-started worker whose driver dies exits non-zero and says why; one that was
//! paused until the driver declared it lost joins again, as a new worker.
//!
//! The checks re-run this executable in roles, chosen by `PROGRAM_TEST_ROLE`.

use dagger::prelude::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const ROLE: &str = "PROGRAM_TEST_ROLE";
const DIR: &str = "PROGRAM_TEST_DIR";

#[dagger::task]
fn program_args(_x: u64) -> Vec<String> {
    std::env::args().skip(1).collect()
}

#[dagger::task]
fn process_id(_x: u64) -> u32 {
    std::process::id()
}

fn main() {
    dagger::init();
    match std::env::var(ROLE).as_deref() {
        Ok("args") => return args_role(),
        Ok("driver") => return driver_role(),
        _ => {}
    }
    let base = std::env::temp_dir().join(format!("dagger-program-test-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    workers_get_the_programs_own_arguments();
    println!("ok: workers get the program's own arguments, from a named thread too");
    a_worker_of_another_build_is_refused(&base);
    println!("ok: a worker of another build is refused unless mixed builds are allowed");
    a_hand_started_worker_whose_driver_died_exits_non_zero(&base);
    println!("ok: a hand-started worker whose driver died exits non-zero and says why");
    a_paused_hand_started_worker_rejoins_as_a_new_worker(&base);
    println!("ok: a hand-started worker declared lost while paused rejoins as a new worker");
    let _ = std::fs::remove_dir_all(&base);
}

/// Runs `cmd` to its end, its output captured; fails the test (instead of hanging it) if
/// it does not end within a generous bound.
fn run_to_end(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_to_end(child)
}

fn wait_to_end(child: std::process::Child) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(out) => {
            waiter.join().unwrap();
            out.unwrap()
        }
        Err(_) => {
            // SAFETY: plain syscall on a child process id we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("process {pid} did not end");
        }
    }
}

fn worker_command(exe: &Path, addr: &str, certs: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("--dagger-worker")
        .args(["--join", addr])
        .arg("--cert")
        .arg(certs.join("cert.pem"))
        .arg("--key")
        .arg(certs.join("key.pem"))
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .env_remove(ROLE)
        .env_remove(dagger_net::launch::ENV_ALLOW_MIXED_BUILDS);
    cmd
}

/// A context started from a thread named like a tokio worker: its workers get this
/// program's arguments (here `--alpha beta`), not a test filter made of the thread's name.
fn workers_get_the_programs_own_arguments() {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--alpha", "beta"]).env(ROLE, "args");
    let out = run_to_end(cmd);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn args_role() {
    let ours: Vec<String> = std::env::args().skip(1).collect();
    assert_eq!(ours, ["--alpha", "beta"]);
    let theirs = std::thread::Builder::new()
        .name("tokio-runtime-worker".into())
        .spawn(|| {
            let ctx = Context::builder()
                .workers(1)
                .worker_threads(1)
                .build()
                .unwrap();
            program_args::spawn(&ctx, 0).unwrap().fetch().unwrap()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(theirs, ours, "the worker's arguments");
}

/// A copy of this executable whose build fingerprint differs: its GNU build-id note
/// changed where it has one (what another build of the same code has), else one byte
/// appended.
fn another_build(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().unwrap();
    let mut bytes = std::fs::read(&exe).unwrap();
    // Note header: name size 4, type 3 (NT_GNU_BUILD_ID), name "GNU\0"; the id follows.
    let at = bytes
        .windows(16)
        .position(|w| w[..4] == [4, 0, 0, 0] && w[8..] == [3, 0, 0, 0, b'G', b'N', b'U', 0]);
    match at {
        Some(at) => bytes[at + 16] ^= 0xff,
        None => bytes.push(0),
    }
    let copy = dir.join("another-build");
    std::fs::write(&copy, &bytes).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_ne!(
        dagger_net::launch::build_id_of(&copy).unwrap(),
        dagger_net::launch::build_id(),
        "the copy must be another build"
    );
    copy
}

fn a_worker_of_another_build_is_refused(base: &Path) {
    let certs = base.join("build-certs");
    let ctx = Context::builder()
        .driver_runs_tasks(false)
        .cert_dir(&certs)
        .build()
        .unwrap();
    let addr = ctx.listen_addr().expect("it listens").to_string();
    let copy = another_build(base);

    let refused = run_to_end(worker_command(&copy, &addr, &certs));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a worker of another build exited with {}",
        refused.status
    );
    assert!(
        stderr.contains("build mismatch"),
        "the refused worker does not say why: {stderr}"
    );
    assert!(ctx.workers().is_empty(), "the other build joined");

    // The worker's opt-out.
    let mut cmd = worker_command(&copy, &addr, &certs);
    cmd.env(dagger_net::launch::ENV_ALLOW_MIXED_BUILDS, "1")
        .stdout(Stdio::null());
    let child = cmd.spawn().unwrap();
    ctx.wait_for_workers(1, Duration::from_secs(60)).unwrap();
    let pid = process_id::spawn(&ctx, 0).unwrap().fetch().unwrap();
    assert_eq!(pid, child.id());
    ctx.shutdown();
    let out = wait_to_end(child);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The driver's opt-out.
    let certs = base.join("build-certs-2");
    let ctx = Context::builder()
        .driver_runs_tasks(false)
        .allow_mixed_builds(true)
        .cert_dir(&certs)
        .build()
        .unwrap();
    let mut cmd = worker_command(&copy, ctx.listen_addr().expect("it listens"), &certs);
    cmd.stdout(Stdio::null());
    let child = cmd.spawn().unwrap();
    ctx.wait_for_workers(1, Duration::from_secs(60)).unwrap();
    ctx.shutdown();
    let out = wait_to_end(child);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A driver in a process of its own, killed once a hand-started worker joined it.
fn a_hand_started_worker_whose_driver_died_exits_non_zero(base: &Path) {
    let certs = base.join("dead-driver-certs");
    let exe = std::env::current_exe().unwrap();
    let mut driver = Command::new(&exe)
        .env(ROLE, "driver")
        .env(DIR, &certs)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first.strip_prefix("listening ").expect(&first).to_owned();
    let mut cmd = worker_command(&exe, &addr, &certs);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let worker = cmd.spawn().unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "joined");
    driver.kill().unwrap();
    driver.wait().unwrap();
    let out = wait_to_end(worker);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a worker whose driver died exited with {}",
        out.status
    );
    assert!(
        stderr.lines().any(|l| l.contains("driver")),
        "the worker does not say why it stopped: {stderr:?}"
    );
}

fn driver_role() {
    let dir = std::env::var_os(DIR).expect("a certificate folder");
    let ctx = Context::builder()
        .driver_runs_tasks(false)
        .cert_dir(dir)
        .build()
        .unwrap();
    println!("listening {}", ctx.listen_addr().expect("it listens"));
    ctx.wait_for_workers(1, Duration::from_secs(60)).unwrap();
    println!("joined");
    // Killed by the test.
    std::thread::sleep(Duration::from_secs(600));
}

/// The next cluster event `want` accepts, waiting at most a generous bound.
fn next_event<T>(
    events: &mut dagger::ClusterEvents,
    what: &str,
    want: impl Fn(&dagger::ClusterEvent) -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match events.try_recv() {
            Ok(e) => {
                if let Some(t) = want(&e) {
                    return t;
                }
            }
            Err(_) => {
                assert!(std::time::Instant::now() < deadline, "no {what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// A worker started by hand is paused (SIGSTOP) until the driver declares it lost, then
/// resumed: the driver has fenced it, so it executes itself again and joins as a new worker
/// (same process, new worker id and incarnation), and runs tasks.
fn a_paused_hand_started_worker_rejoins_as_a_new_worker(base: &Path) {
    let certs = base.join("rejoin-certs");
    let exe = std::env::current_exe().unwrap();
    let ctx = Context::builder()
        .driver_runs_tasks(false)
        .cert_dir(&certs)
        .build()
        .unwrap();
    let addr = ctx.listen_addr().expect("it listens").to_owned();
    let mut cmd = worker_command(&exe, &addr, &certs);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let worker = cmd.spawn().unwrap();
    let pid = worker.id();
    ctx.wait_for_workers(1, Duration::from_secs(60)).unwrap();
    let first = ctx.workers()[0];
    let mut events = ctx.subscribe();
    // SAFETY: plain syscalls on a child process id we started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    let reason = next_event(&mut events, "WorkerLost", |e| match e {
        dagger::ClusterEvent::WorkerLost { worker, reason } if *worker == first => {
            Some(reason.clone())
        }
        _ => None,
    });
    assert!(
        matches!(reason, dagger::LostReason::Silent { .. }),
        "{reason:?}"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGCONT) }, 0);
    let second = next_event(&mut events, "the rejoin", |e| match e {
        dagger::ClusterEvent::WorkerJoined { worker } => Some(*worker),
        _ => None,
    });
    assert_ne!(second, first, "a new worker id");
    let info = ctx.topology().worker(second).expect("joined").clone();
    assert_eq!(info.pid, pid, "the same process, executed again");
    let h = process_id::with(Options::new().scope(Scope::worker(second)))
        .spawn(&ctx, 0)
        .unwrap();
    assert_eq!(h.fetch().unwrap(), pid);
    ctx.shutdown();
    let out = wait_to_end(worker);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the rejoined worker exited with {} after the shutdown: {stderr}",
        out.status
    );
    assert!(
        stderr.contains("joining again as a new worker"),
        "the worker says it rejoins: {stderr:?}"
    );
}
