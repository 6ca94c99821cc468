//! Growing a running cluster with every launcher, over real processes: local workers
//! (supervised like the first ones), a worker started by hand with the printed command,
//! workers started through `ssh` (an sshd on 127.0.0.1:2222 with key authentication) and
//! through Slurm's `srun` (a one-node cluster). `.ci/services.sh` starts sshd and Slurm.
//!
//! The ssh and Slurm tests print `skipped: ...` and pass when the service is not there,
//! unless `DAGGER_REQUIRE_ALL=1`, which makes a missing service a failure.
//!
//! No test asserts a duration: results are awaited with long bounds that only turn a hang
//! into a failure. Tasks that must not finish before the new workers joined wait for a
//! gate file the test creates.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::prelude::*;
use dagger::{
    ClusterEvent, ContextError, Identity, Launcher, LocalLauncher, ManualLauncher, SlurmLauncher,
    SshLauncher,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod support;
use support::TempDir;

/// How long anything may take before the test calls it lost. Far longer than any run
/// needs: it only turns "never happens" into a failure.
const GUARD: Duration = Duration::from_secs(120);

/// The worker that ran this, and its process, once `dir/open` exists.
#[dagger::task]
fn gated_where(_i: u64, dir: String) -> (u32, u32) {
    while !Path::new(&dir).join("open").exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    (dagger::current_worker().0, std::process::id())
}

/// The worker that ran this, and its process.
#[dagger::task]
fn where_am_i(_i: u64) -> (u32, u32) {
    std::thread::sleep(Duration::from_millis(10));
    (dagger::current_worker().0, std::process::id())
}

fn fetch<T: serde::de::DeserializeOwned + Send + 'static>(h: Handle<T>) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(h.fetch());
    });
    rx.recv_timeout(GUARD)
        .expect("no answer from the workers")
        .expect("the task failed")
}

/// Whether a missing service is a failure rather than a skip.
fn require_all() -> bool {
    std::env::var("DAGGER_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Skips the test (returns `true`) when a service is missing, or fails it under
/// `DAGGER_REQUIRE_ALL=1`.
fn skip(why: &str) -> bool {
    assert!(!require_all(), "DAGGER_REQUIRE_ALL=1 but {why}");
    println!("skipped: {why}");
    true
}

/// Waits until process `pid` is gone (a guard, not a timing assertion).
fn wait_gone(pid: u32) {
    let deadline = Instant::now() + GUARD;
    while Path::new(&format!("/proc/{pid}")).exists() {
        // A zombie of ours counts as gone.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The names (`comm`) of the ancestors of process `pid`, nearest first.
fn ancestors(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut pid = pid;
    while pid > 1 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            break;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            break;
        };
        let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) else {
            break;
        };
        pid = ppid;
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            out.push(comm.trim().to_owned());
        }
    }
    out
}

/// Fails if any process of this machine shows `identity`'s private key (its longest
/// base64 line, as text or as the hex of the identity's text form) in its command line
/// or its environment.
fn assert_no_process_shows_the_key(identity: &Identity) {
    let line = identity
        .key_pem
        .lines()
        .max_by_key(|l| l.len())
        .expect("a key")
        .to_owned();
    assert!(line.len() >= 32, "a key line long enough to be unique");
    let hex: String = line.bytes().map(|b| format!("{b:02x}")).collect();
    let needles = [line.clone(), hex.clone(), hex.to_uppercase()];
    let mut scanned = 0;
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        for what in ["cmdline", "environ"] {
            let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{what}")) else {
                continue;
            };
            scanned += 1;
            let text = String::from_utf8_lossy(&bytes);
            for n in &needles {
                assert!(
                    !text.contains(n.as_str()),
                    "process {pid} shows the worker's key in its {what}"
                );
            }
        }
    }
    assert!(scanned > 0, "no process could be read");
}

/// A context grows by two local workers while tasks wait: the new workers get some of
/// them, are supervised (one killed is replaced), and the call fails with a typed error
/// when a launched process exits before it joins.
#[test]
fn local_workers_join_a_running_context_and_get_tasks() {
    dagger::init();
    let ctx = Context::builder()
        .workers(1)
        .worker_threads(1)
        .test_harness()
        .build()
        .unwrap();
    let first: HashSet<u32> = ctx.workers().iter().map(|w| w.0).collect();
    let gate = TempDir::new("launchers", "local");
    // More tasks than one worker of one thread takes: the rest wait in the scheduler.
    let handles: Vec<_> = (0..12)
        .map(|i| gated_where::spawn(&ctx, i, gate.arg()).unwrap())
        .collect();
    let launcher = ctx.local_launcher().expect("the context links processes");
    let added = ctx.add_workers(&launcher, 2).unwrap();
    assert_eq!(added.len(), 2);
    let now: HashSet<WorkerId> = ctx.workers().into_iter().collect();
    for w in &added {
        assert!(now.contains(w), "{w} is in the pool");
        assert!(!first.contains(&w.0), "{w} is new");
    }
    let name_of = |w: WorkerId| ctx.topology().worker(w).expect("in topology").name.clone();
    let names: HashSet<String> = added.iter().map(|w| name_of(*w)).collect();
    assert_eq!(names.len(), 2, "names are unique: {names:?}");
    gate.open_gate();
    let ran_on: HashSet<u32> = handles.into_iter().map(|h| fetch(h).0).collect();
    for w in &added {
        assert!(
            ran_on.contains(&w.0),
            "no task ran on the new {w}: {ran_on:?}"
        );
    }

    // The new local processes are supervised: one that dies is replaced.
    let mut events = ctx.subscribe();
    let victim = ctx.topology().worker(added[0]).unwrap().pid;
    assert!(ctx.local_worker_pids().contains(&victim));
    // SAFETY: plain syscall on a child process this test's context started.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let replaced = rt.block_on(async {
        tokio::time::timeout(GUARD, async {
            while let Some(e) = events.recv().await {
                if let ClusterEvent::WorkerRestarted { old_pid, .. } = e {
                    if old_pid == victim {
                        return true;
                    }
                }
            }
            false
        })
        .await
    });
    assert_eq!(replaced, Ok(true), "the killed new worker was not replaced");

    // A launched process that exits before it joins: a typed error, not a timeout.
    let doomed = LocalLauncher::new("ignored", Identity::empty()).args(["no-such-test", "--exact"]);
    match ctx.add_workers(&doomed, 1) {
        Err(ContextError::WorkerExited { launcher, .. }) => assert_eq!(launcher, "local"),
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    ctx.shutdown();
}

/// A context that starts with no worker (it listens, its driver runs no task) grows from
/// zero, with the call made from another thread.
#[test]
fn a_context_with_no_workers_grows_from_zero() {
    dagger::init();
    let ctx = Context::builder()
        .listen("127.0.0.1:0")
        .driver_runs_tasks(false)
        .worker_threads(1)
        .test_harness()
        .build()
        .unwrap();
    assert!(ctx.workers().is_empty());
    let launcher = ctx
        .local_launcher()
        .expect("a listening context links processes");
    let added = std::thread::scope(|s| {
        s.spawn(|| ctx.add_workers(&launcher, 1))
            .join()
            .expect("no panic")
    })
    .unwrap();
    let (w, pid) = fetch(where_am_i::spawn(&ctx, 0).unwrap());
    assert_eq!(WorkerId(w), added[0]);
    assert!(ctx.local_worker_pids().contains(&pid));
    ctx.shutdown();
}

/// `add_workers` on a context that links no processes is a typed error.
#[test]
fn a_context_that_links_nothing_cannot_grow() {
    dagger::init();
    let ctx = Context::threads().unwrap();
    assert!(ctx.local_launcher().is_none());
    let l = LocalLauncher::new("x", Identity::empty());
    assert!(matches!(
        ctx.add_workers(&l, 1),
        Err(ContextError::NotLinked)
    ));
}

/// A worker started by hand with the command the manual launcher prints (the argv form,
/// credentials from the certificate folder) joins under its name and runs tasks; it exits
/// with status 0 at the driver's shutdown.
#[test]
fn a_worker_started_by_hand_with_the_printed_command_joins() {
    dagger::init();
    let certs = TempDir::new("launchers", "by-hand");
    let ctx = Context::builder()
        .driver_runs_tasks(false)
        .cert_dir(certs.path())
        .test_harness()
        .build()
        .unwrap();
    let started = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let manual = {
        let started = started.clone();
        ManualLauncher::new(certs.path()).on_command(move |name, command| {
            assert!(command.contains("--cert"), "{command}");
            assert!(command.ends_with(&format!("--name {name}")), "{command}");
            let child = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("exec {command}"))
                .spawn()
                .expect("the worker command starts");
            started.lock().unwrap().push(child);
        })
    };
    assert_eq!(manual.kind(), "manual");
    let added = ctx.add_workers(&manual, 1).unwrap();
    let child_pid = started.lock().unwrap()[0].id();
    let (w, pid) = fetch(where_am_i::spawn(&ctx, 0).unwrap());
    assert_eq!(WorkerId(w), added[0]);
    assert_eq!(pid, child_pid, "the task ran in the hand-started process");
    assert!(
        !ctx.local_worker_pids().contains(&pid),
        "a hand-started worker is not the context's local process"
    );
    ctx.shutdown();
    let status = started.lock().unwrap()[0].wait().unwrap();
    assert!(
        status.success(),
        "the hand-started worker exited with {status}"
    );
}

/// The sshd the ssh test uses: `DAGGER_SSH_PORT` (default 2222) on 127.0.0.1, with the key
/// `DAGGER_SSH_KEY` (default `~/.ssh/dagger_ci_ed25519`). `None` when it is not reachable.
fn ssh_service() -> Option<(u16, PathBuf)> {
    let port = std::env::var("DAGGER_SSH_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(2222);
    let key = std::env::var_os("DAGGER_SSH_KEY")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/dagger_ci_ed25519"))
        })?;
    if !key.exists() {
        return None;
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    Some((port, key))
}

/// Two workers started through `ssh` on 127.0.0.1 join, run tasks, never show their key,
/// and end with the driver.
#[test]
fn workers_started_through_ssh_join_and_run_tasks() {
    dagger::init();
    let Some((port, key)) = ssh_service() else {
        skip("no sshd with a key on 127.0.0.1 (run .ci/services.sh)");
        return;
    };
    let ctx = Context::builder()
        .listen("127.0.0.1:0")
        .driver_runs_tasks(false)
        .worker_threads(1)
        .test_harness()
        .build()
        .unwrap();
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let ssh = SshLauncher::new("127.0.0.1")
        .port(port)
        .user(user)
        .identity_file(key)
        .option("StrictHostKeyChecking=no")
        .option("UserKnownHostsFile=/dev/null")
        .option("LogLevel=ERROR");
    assert_eq!(ssh.kind(), "ssh");
    let added = ctx.add_workers(&ssh, 2).unwrap();
    check_remote_workers(&ctx, &added, "sshd");
}

/// Whether `srun` can run a job step here now.
fn slurm_service() -> bool {
    let ok = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .output()
            .map(|o| {
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                )
            })
            .unwrap_or((false, String::new()))
    };
    let (up, states) = ok("sinfo", &["-h", "-o", "%t"]);
    up && states
        .lines()
        .any(|s| matches!(s.trim(), "idle" | "mix" | "alloc"))
}

/// Two workers started through `srun` join, run tasks, never show their key (in their
/// own command line and environment, nor in any other process's), and end with the
/// driver.
#[test]
fn workers_started_through_srun_join_and_run_tasks() {
    dagger::init();
    if !slurm_service() {
        skip("no Slurm cluster with a usable node (run .ci/services.sh)");
        return;
    }
    let ctx = Context::builder()
        .listen("127.0.0.1:0")
        .driver_runs_tasks(false)
        .worker_threads(1)
        .test_harness()
        .build()
        .unwrap();
    let mut srun = SlurmLauncher::new();
    if let Ok(p) = std::env::var("DAGGER_SLURM_PARTITION") {
        srun = srun.partition(p);
    }
    assert_eq!(srun.kind(), "slurm");
    let added = ctx.add_workers(&srun, 2).unwrap();
    check_remote_workers(&ctx, &added, "slurmstepd");
}

/// The remote workers `added` run tasks, run under `via` (the daemon that started them),
/// show their key nowhere, and end when the context shuts down.
fn check_remote_workers(ctx: &Context, added: &[WorkerId], via: &str) {
    assert_eq!(added.len(), 2);
    let mut pids = Vec::new();
    for w in added {
        let topology = ctx.topology();
        let info = topology.worker(*w).expect("in topology");
        assert!(info.name.starts_with("worker-"), "{:?}", info.name);
        let chain = ancestors(info.pid);
        assert!(
            chain.iter().any(|c| c == via),
            "worker {w} (process {}) does not run under {via}: {chain:?}",
            info.pid
        );
        assert!(
            !ctx.local_worker_pids().contains(&info.pid),
            "a remote worker is not a local process of the context"
        );
        pids.push(info.pid);
    }
    let ran: HashSet<(u32, u32)> = (0..16)
        .map(|i| where_am_i::spawn(ctx, i).unwrap())
        .collect::<Vec<_>>()
        .into_iter()
        .map(fetch)
        .collect();
    for (w, pid) in &ran {
        assert!(added.contains(&WorkerId(*w)), "a task ran on {w}");
        assert!(pids.contains(pid));
    }
    let identity = ctx
        .join_spec("ssh")
        .expect("the context links processes")
        .identity;
    assert_no_process_shows_the_key(&identity);
    ctx.shutdown();
    for pid in pids {
        wait_gone(pid);
    }
}
