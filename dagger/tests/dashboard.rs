//! The live view (`ContextBuilder::dashboard`): the page loaded in a real headless
//! Chromium shows the processor tree's workers and the tasks of a running graph; the JSON
//! routes answer with the topology, the counters, the joins and the task stream; no socket
//! is opened without the setting; joins and losses reach the events as they happen; the
//! server keeps no context alive and stops with it.
//!
//! The browser test needs `/usr/bin/chromium` (Debian's `chromium`); without it the test
//! prints "skipped: ..." and passes, unless `DAGGER_REQUIRE_ALL=1`, which makes a missing
//! browser a failure.
//!
//! No test asserts a duration: waits have long bounds that only turn a hang into a
//! failure. Tasks that must still run while the page is read wait for a gate file.

use dagger::prelude::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod support;
use support::TempDir;

/// A bound that only turns "never happens" into a failure.
const GUARD: Duration = Duration::from_secs(120);

/// The tests of this file run one at a time: one counts the listening sockets of this
/// process, and each waits for its server to be gone before the next starts.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Finishes at once; runs before the page is loaded.
#[dagger::task]
fn dash_warmup_step(i: u64) -> u64 {
    i * 3
}

/// Leaves `dir/started-<i>` and waits for `dir/open`: runs while the page is read.
#[dagger::task]
fn dash_gated_sleeper(i: u64, dir: String) -> u64 {
    let dir = Path::new(&dir);
    std::fs::write(dir.join(format!("started-{i}")), b"").expect("marker written");
    while !dir.join("open").exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    i + 100
}

/// Sums what the sleepers returned.
#[dagger::task]
fn dash_total(parts: Vec<u64>) -> u64 {
    parts.iter().sum()
}

/// Whether a missing browser is a failure rather than a skip.
#[cfg(feature = "quic")]
fn require_all() -> bool {
    std::env::var("DAGGER_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

#[cfg(feature = "quic")]
const CHROMIUM: &str = "/usr/bin/chromium";

/// A plain HTTP/1.1 GET: the status code and the body.
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_get_as(addr, addr, path)
}

/// A plain HTTP/1.1 GET to `addr` naming `host` in its `Host` header.
fn http_get_as(addr: &str, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(GUARD))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, tail) = rest.split_once("\r\n").expect("a chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&tail[..size]);
        rest = &tail[size + 2..];
    }
}

fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, path).expect("the live view answers");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Shuts `ctx` down (by dropping it, the last clone) and waits until nothing listens at
/// `addr` any more.
fn drop_and_wait_closed(ctx: Context, addr: &str) {
    drop(ctx);
    let deadline = Instant::now() + GUARD;
    while TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the live view still listens at {addr}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The inodes of this process's TCP sockets in the LISTEN state, with their ports.
fn listening_tcp_sockets() -> Vec<(u64, u16)> {
    let mine: std::collections::HashSet<u64> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|link| {
            let l = link.to_str()?;
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let mut found = Vec::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let inode: u64 = inode.parse().unwrap_or(0);
            if *state == "0A" && mine.contains(&inode) {
                let port = local
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    .unwrap_or(0);
                found.push((inode, port));
            }
        }
    }
    found
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("an address with a port")
}

/// Loads `url` in headless Chromium, lets its scripts run for 3 s of virtual time, and
/// returns the DOM; `None` (after saying why) when there is no browser and that is allowed.
#[cfg(feature = "quic")]
fn chromium_dom(url: &str, scratch: &Path) -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        let why = format!("{CHROMIUM} not found (install Debian's `chromium`)");
        assert!(!require_all(), "DAGGER_REQUIRE_ALL=1 but {why}");
        println!("skipped: {why}");
        return None;
    }
    let profile = scratch.join("chromium-profile");
    std::fs::create_dir_all(&profile).expect("profile directory");
    let mut child = std::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .env("HOME", scratch)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        let mut dom = String::new();
        let _ = out.read_to_string(&mut dom);
        dom
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + GUARD;
    let status = loop {
        if let Some(status) = child.try_wait().expect("chromium waited for") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {GUARD:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let dom = reader.join().expect("stdout read");
    let errors = err_reader.join().expect("stderr read");
    assert!(status.success(), "chromium failed ({status}): {errors}");
    Some(dom)
}

/// The page, loaded in a real browser while a graph runs on two worker processes, shows
/// both workers in the processor tree, rows of the running tasks and of the tasks that
/// finished before it was loaded, with their function names; the JSON routes agree.
#[test]
// Worker processes link to the driver over QUIC.
#[cfg(feature = "quic")]
fn a_browser_shows_the_workers_and_the_running_tasks() {
    dagger::init();
    let _serial = serial();
    let dir = TempDir::new("dashboard", "browser");
    let ctx = Context::builder()
        .workers(2)
        .worker_threads(2)
        .test_harness()
        .dashboard("127.0.0.1:0")
        .build()
        .expect("a cluster with a live view");
    let addr = ctx.dashboard_addr().expect("a live view was asked for");
    assert!(addr.starts_with("127.0.0.1:"), "bound where asked: {addr}");
    assert_ne!(port_of(&addr), 0, "port 0 picks a port");

    // A first wave that finishes before the page is read, then four tasks (one per
    // processor of the pool) that run until the gate opens, and their sum.
    let warm: Vec<u64> = (0..8u64)
        .map(|i| dash_warmup_step::spawn(&ctx, i).expect("spawned"))
        .map(|h| h.fetch().expect("warm-up ran"))
        .collect();
    assert_eq!(warm.iter().sum::<u64>(), 84);
    let sleepers: Vec<Lazy<u64>> = (0..4u64)
        .map(|i| dash_gated_sleeper::delayed(i, dir.arg()))
        .collect();
    let total = ctx
        .spawn_graph(dash_total::delayed(sleepers))
        .expect("graph submitted");
    // All four are dispatched (a processor takes up to two).
    let deadline = Instant::now() + GUARD;
    while ctx.stats().expect("running").running < 4 {
        assert!(
            Instant::now() < deadline,
            "the sleepers were never dispatched"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    let url = format!("http://{addr}/");
    let dom = chromium_dom(&url, dir.path());
    // Whatever the browser did, the graph finishes.
    let state = get_json(&addr, "/api/state");
    dir.open_gate();
    assert_eq!(total.fetch().expect("the graph finished"), 406);

    let workers = ctx.workers();
    assert_eq!(workers.len(), 2);
    let listed: Vec<u64> = state["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["id"].as_u64().expect("id"))
        .collect();
    for w in &workers {
        assert!(listed.contains(&u64::from(w.0)), "{w} in /api/state");
    }

    if let Some(dom) = dom {
        assert!(dom.contains("id=\"processor-tree\""), "{dom}");
        let tree = &dom[dom.find("id=\"processor-tree\"").expect("tree")..];
        let tree = &tree[..tree.find("id=\"workers\"").unwrap_or(tree.len())];
        for w in &workers {
            assert!(
                tree.contains(&format!("data-worker=\"{w}\"")),
                "{w} in the processor tree: {tree}"
            );
        }
        assert!(
            tree.contains("class=\"proc\""),
            "processors under the workers: {tree}"
        );
        let stream = &dom[dom.find("id=\"task-stream\"").expect("task stream")..];
        let sleeper_rows = stream
            .matches(&format!("data-func=\"{}\"", dash_gated_sleeper::NAME))
            .count();
        assert_eq!(
            sleeper_rows, 4,
            "a row for each running sleeper in the task stream: {stream}"
        );
        assert!(
            stream.contains("data-state=\"running\""),
            "the sleepers are shown running: {stream}"
        );
        // The warm-up finished before the page was loaded: its rows come from the
        // timeline, which the live view records.
        let warm_rows = stream
            .matches(&format!(
                "data-func=\"{}\" data-state=\"finished\"",
                dash_warmup_step::NAME
            ))
            .count();
        assert_eq!(warm_rows, 8, "the finished warm-up tasks: {stream}");
        assert!(
            dom.contains("class=\"status\">live<"),
            "the page is live: {dom}"
        );
    }
    drop(total);

    // A worker process killed: its loss, and its replacement's restart and join, reach
    // the page's events as they happen.
    let victim = workers[0];
    let pid = ctx.topology().worker(victim).expect("in the topology").pid;
    // SAFETY: a plain syscall on a child process this test's context started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + GUARD;
    loop {
        let state = get_json(&addr, "/api/state");
        let events = state["events"].as_array().expect("events");
        let lost = events
            .iter()
            .any(|e| e["kind"] == "lost" && e["worker"] == victim.0);
        let restarted = events.iter().any(|e| e["kind"] == "restarted");
        if lost && restarted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the loss of {victim} never reached the live view: {events:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop_and_wait_closed(ctx, &addr);
}

/// The JSON routes: the topology with processors, the counters, the joins, and a task
/// stream that lists a task running and then finished; dropping the last context clone
/// stops the server (it keeps no context alive).
#[test]
fn the_json_routes_show_state_and_the_task_stream() {
    dagger::init();
    let _serial = serial();
    let dir = TempDir::new("dashboard", "json");
    let ctx = Context::builder()
        .dashboard("127.0.0.1:0")
        .build()
        .expect("a context with a live view");
    let addr = ctx.dashboard_addr().expect("a live view was asked for");

    let (status, page) = http_get(&addr, "/").expect("the page");
    assert_eq!(status, 200);
    for id in [
        "processor-tree",
        "workers",
        "task-stream",
        "events",
        "stats",
    ] {
        assert!(page.contains(&format!("id=\"{id}\"")), "#{id} on the page");
    }

    let h = dash_gated_sleeper::spawn(&ctx, 1, dir.arg()).expect("spawned");
    dir.wait_for("started-1", GUARD);

    let state = get_json(&addr, "/api/state");
    let workers = state["workers"].as_array().expect("workers");
    let me = workers
        .iter()
        .find(|w| w["in_pool"] == true)
        .expect("the driver's own worker runs tasks");
    assert_eq!(me["pid"], std::process::id());
    assert_eq!(me["queue"], 1, "one task dispatched there: {me}");
    assert!(
        me["rss_bytes"].as_u64().is_some_and(|b| b > 0),
        "this host's process has a resident size: {me}"
    );
    let procs = me["processors"].as_array().expect("processors");
    assert!(procs.len() >= 2, "the root and its threads: {me}");
    assert_eq!(procs[0]["parent"], serde_json::Value::Null);
    assert!(procs[1..].iter().all(|p| p["parent"] == 0), "{me}");
    assert_eq!(state["stats"]["running"], 1);
    let events = state["events"].as_array().expect("events");
    assert!(
        events.iter().any(|e| e["kind"] == "joined"),
        "the join is in the events: {events:?}"
    );

    let first = get_json(&addr, "/api/tasks?since=0");
    let tasks = first["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 1, "{first}");
    assert_eq!(tasks[0]["task"], h.id().0);
    assert_eq!(tasks[0]["func"], dash_gated_sleeper::NAME);
    assert_eq!(tasks[0]["state"], "running");
    let next = first["next"].as_u64().expect("next");
    let again = get_json(&addr, &format!("/api/tasks?since={next}"));
    assert!(
        again["tasks"].as_array().expect("tasks").is_empty(),
        "nothing new: {again}"
    );

    dir.open_gate();
    assert_eq!(h.fetch().expect("ran"), 101);
    let done = get_json(&addr, &format!("/api/tasks?since={next}"));
    let tasks = done["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 1, "{done}");
    assert_eq!(tasks[0]["task"], h.id().0);
    assert_eq!(tasks[0]["state"], "finished");
    assert!(tasks[0]["run_ms"].as_f64().is_some(), "{done}");

    let (status, _) = http_get(&addr, "/no-such-page").expect("an answer");
    assert_eq!(status, 404);
    // A loopback server answers only requests that name a loopback host (a page of
    // another origin whose name was rebound to 127.0.0.1 cannot read it).
    let port = port_of(&addr);
    let (status, _) =
        http_get_as(&addr, &format!("localhost:{port}"), "/api/state").expect("an answer");
    assert_eq!(status, 200);
    let (status, body) =
        http_get_as(&addr, &format!("rebound.example:{port}"), "/api/state").expect("an answer");
    assert_eq!(status, 421, "{body}");

    drop(h);
    drop_and_wait_closed(ctx, &addr);
}

/// Without `dashboard(..)` a context serves nothing and listens on no TCP socket (a
/// `threads()` context opens no socket at all); with it, exactly its address listens.
#[test]
fn no_socket_without_a_dashboard() {
    dagger::init();
    let _serial = serial();
    let before = listening_tcp_sockets();
    let ctx = Context::threads().expect("a context");
    assert_eq!(ctx.dashboard_addr(), None);
    assert_eq!(inc_one::spawn(&ctx, 1).unwrap().fetch().unwrap(), 2);
    assert_eq!(
        listening_tcp_sockets(),
        before,
        "no socket listens without a dashboard"
    );
    drop(ctx);

    let ctx = Context::builder()
        .dashboard("127.0.0.1:0")
        .build()
        .expect("a context with a live view");
    let addr = ctx.dashboard_addr().expect("bound");
    let now: Vec<u16> = listening_tcp_sockets()
        .into_iter()
        .filter(|s| !before.contains(s))
        .map(|(_, port)| port)
        .collect();
    assert_eq!(now, vec![port_of(&addr)], "only the live view listens");
    drop_and_wait_closed(ctx, &addr);
}

/// An address that cannot be bound is the build's typed error.
#[test]
fn an_address_in_use_is_refused() {
    dagger::init();
    let _serial = serial();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("its address").to_string();
    match Context::builder().dashboard(addr.clone()).build() {
        Err(dagger::ContextError::Dashboard { addr: a, source }) => {
            assert_eq!(a, addr);
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a second listener on {addr}"),
    }
}

#[dagger::task]
fn inc_one(x: u64) -> u64 {
    x + 1
}
