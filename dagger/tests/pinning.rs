//! Pinned thread processors of the local worker processes of one host spread over the
//! CPUs: two workers capped at one thread each pin different CPUs, read back from the
//! kernel (`/proc/<pid>/task/<tid>/status`) for every thread processor of each process.

#![cfg(all(feature = "quic", target_os = "linux"))]

use dagger::prelude::*;
use std::collections::BTreeSet;

/// The CPUs each thread processor (`dagger-thread-*`) of process `pid` may run on.
fn thread_processor_cpus(pid: u32) -> Vec<BTreeSet<usize>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the worker's threads") {
        let dir = entry.expect("a thread").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("dagger-thread-") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).expect("thread status");
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list")
            .trim()
            .to_owned();
        out.push(parse_cpu_list(&list));
    }
    out
}

/// `0-2,5` → {0, 1, 2, 5}.
fn parse_cpu_list(list: &str) -> BTreeSet<usize> {
    let mut cpus = BTreeSet::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => {
                cpus.insert(part.parse().unwrap());
            }
        }
    }
    cpus
}

#[test]
fn capped_local_workers_pin_different_cpus() {
    dagger::init();
    let own = parse_cpu_list(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim(),
    );
    if own.len() < 2 || std::env::var("DAGGER_PIN").as_deref() == Ok("0") {
        assert!(
            std::env::var("DAGGER_REQUIRE_ALL").as_deref() != Ok("1"),
            "DAGGER_REQUIRE_ALL=1 but this process may run on {own:?} only, or pinning is off"
        );
        println!("skipped: fewer than 2 CPUs available ({own:?}) or DAGGER_PIN=0");
        return;
    }
    let ctx = Context::builder()
        .workers(2)
        .worker_threads(1)
        .test_harness()
        .build()
        .unwrap();
    let mut pinned = Vec::new();
    for w in ctx.workers() {
        let pid = ctx.topology().worker(w).expect("joined").pid;
        let cpus = thread_processor_cpus(pid);
        assert_eq!(cpus.len(), 1, "{w}: one thread processor, got {cpus:?}");
        assert_eq!(
            cpus[0].len(),
            1,
            "{w}: pinned to one CPU, got {:?}",
            cpus[0]
        );
        pinned.push(*cpus[0].iter().next().unwrap());
    }
    assert_ne!(
        pinned[0], pinned[1],
        "both workers pinned CPU {}",
        pinned[0]
    );
}
