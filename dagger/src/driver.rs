//! The driver loop: a thin shell around [`DriverCore`], the driver's decisions as a state
//! machine without I/O. The loop feeds the core what happens (messages and closes from the
//! link readers, the user's commands, local processes exiting, the timer), sends the frames
//! it yields on the right link, carries out its events (completing slots, answering
//! fetches, telling subscribers, closing links) and arms one timer for its next deadline.

use crate::context::ClusterEvent;
use crate::handle::Slot;
use crate::registry;
use crate::supervisor::Supervisor;
use dagger_core::hash::IdHashMap;
use dagger_core::wire::{self, Hello, ToDriver, PROTOCOL_VERSION};
use dagger_core::{
    ChunkId, ExitCause, LostReason, TaskError, TaskId, TaskSpec, WorkerId, WorkerInfo,
};
use dagger_net::{Conn, FrameSender, Listener};
use dagger_runtime::driver::{DriverCore, DriverEvent, FetchId, LinkId};
use dagger_sched::Scheduler;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Where the bytes of a chunk fetched for the user go.
type FetchReply = oneshot::Sender<Result<Vec<u8>, TaskError>>;

/// What the user's threads ask of the driver loop.
pub(crate) enum DriverCmd {
    /// New tasks, with the slots their results go to; accepted or refused together.
    Submit(Vec<(TaskSpec, Option<Arc<Slot>>)>),
    /// One new task (the common case: no batch to allocate), with a weak reference to
    /// its slot, made by the spawning thread while the slot is in its cache (the loop
    /// takes the command in much later, and would otherwise touch the slot's memory
    /// again only to make it). A release of the task, sent when its last handle is
    /// dropped, comes after this on the same channel.
    Spawn(TaskSpec, Weak<Slot>),
    /// The last handle to a task was dropped.
    Release(TaskId),
    /// Bring a large result's bytes to the driver.
    FetchChunk {
        chunk: ChunkId,
        holders: Vec<WorkerId>,
        reply: FetchReply,
    },
    /// Run a closure on the driver's state (queries: topology, task info, workers).
    Query(Box<dyn FnOnce(&mut DriverState) + Send>),
    /// Stop: tell the workers to exit, fail what is pending.
    Shutdown(std::sync::mpsc::Sender<()>),
}

/// What the links report to the driver loop.
pub(crate) enum LinkEvent {
    /// A process passed the handshake and wants to join.
    Joined {
        conn: Conn,
        info: WorkerInfo,
        in_process: bool,
    },
    /// A message from a joined link.
    Msg { link: LinkId, msg: ToDriver },
    /// Bytes of a message not yet complete arrived on a joined link (its worker is alive
    /// while it sends one large frame).
    Progress { link: LinkId },
    /// A joined link closed or sent garbage.
    Closed { link: LinkId, reason: LostReason },
    /// A local worker process exited (seen by its parent at once; a killed process's
    /// QUIC link would only be noticed by missed heartbeats).
    ProcessExited { pid: u32, exit: ExitCause },
}

/// The facade's settings of the driver core (the rest keep their defaults).
pub(crate) struct DriverConfig {
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) shm: bool,
    pub(crate) record: bool,
    pub(crate) worker_log_filter: String,
}

/// The driver loop's state: the core and the I/O handles its outputs name. Only the loop
/// touches it (queries run inside the loop).
pub(crate) struct DriverState {
    /// The core keeps a weak reference to each task's slot: a slot lives as long as the
    /// user's handles to it, not until its task completes (a million-task graph whose
    /// handles are dropped as it is built keeps no million slots).
    pub(crate) core: DriverCore<Weak<Slot>>,
    start: Instant,
    links: IdHashMap<LinkId, FrameSender>,
    next_link: u64,
    fetches: IdHashMap<FetchId, FetchReply>,
    subscribers: Vec<mpsc::UnboundedSender<ClusterEvent>>,
    ev_tx: mpsc::UnboundedSender<LinkEvent>,
    /// The host and process id each joined link's worker reported (links of other
    /// processes only): a local one declared lost is killed by the supervisor.
    link_procs: IdHashMap<LinkId, (String, u32)>,
    /// The local worker processes' supervisor, once the context started some.
    supervisor: Option<Supervisor>,
    /// Events of the shell (the supervisor's), told to subscribers after the core's
    /// events of the same step, so that a restart follows the loss it answers.
    shell_events: Vec<ClusterEvent>,
    /// This host's name, as local worker processes report it.
    host: String,
    /// The handles waiting for each drain in progress.
    pub(crate) drain_waiters: IdHashMap<dagger_core::WorkerId, Vec<crate::drain::DrainCell>>,
    /// The spawns waiting in the command channel, shared with the context's clients.
    pub(crate) backlog: Arc<Backlog>,
    /// Spawns taken from the channel since the backlog was last told.
    spawns_taken: usize,
}

/// How many spawned tasks may wait in the command channel for the driver loop before a
/// client that spawns waits for room. Spawning faster than the loop takes tasks in only
/// piles commands up: bounded, the backlog's memory is reused instead of growing with the
/// graph (and staying with the client thread's allocator arena after the loop frees it).
pub(crate) const SPAWN_BACKLOG: usize = 1 << 12;

/// The count of spawns in the command channel, and a wait for room.
#[derive(Default)]
pub(crate) struct Backlog {
    pending: std::sync::atomic::AtomicUsize,
    closed: std::sync::atomic::AtomicBool,
    lock: parking_lot::Mutex<()>,
    room: parking_lot::Condvar,
}

impl Backlog {
    /// A client is about to send one spawn: waits while [`SPAWN_BACKLOG`] spawns are ahead
    /// of it (never once the loop has ended). O(1) when there is room.
    pub(crate) fn admit(&self) {
        use std::sync::atomic::Ordering::AcqRel;
        use std::sync::atomic::Ordering::Acquire;
        if self.pending.fetch_add(1, AcqRel) < SPAWN_BACKLOG {
            return;
        }
        let mut g = self.lock.lock();
        while self.pending.load(Acquire) > SPAWN_BACKLOG && !self.closed.load(Acquire) {
            // Woken when the loop takes spawns; the bound only guards a missed wake-up.
            self.room.wait_for(&mut g, Duration::from_millis(10));
        }
    }

    /// The loop took `n` spawns out of the channel.
    fn taken(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self
            .pending
            .fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
        if before > SPAWN_BACKLOG {
            let _g = self.lock.lock();
            self.room.notify_all();
        }
    }

    /// The loop ended: nobody waits for room any more.
    fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        let _g = self.lock.lock();
        self.room.notify_all();
    }
}

impl DriverState {
    pub(crate) fn new(
        sched: Scheduler,
        ev_tx: mpsc::UnboundedSender<LinkEvent>,
        config: DriverConfig,
    ) -> Self {
        let config = dagger_runtime::driver::DriverConfig {
            heartbeat_timeout: config.heartbeat_timeout,
            shm_shortcuts: config.shm,
            record: config.record,
            worker_log_filter: config.worker_log_filter,
            ..Default::default()
        };
        Self {
            core: DriverCore::new(sched, config),
            start: Instant::now(),
            links: IdHashMap::default(),
            next_link: 1,
            fetches: IdHashMap::default(),
            subscribers: Vec::new(),
            ev_tx,
            link_procs: IdHashMap::default(),
            supervisor: None,
            shell_events: Vec::new(),
            host: dagger_proc::hostname(),
            drain_waiters: IdHashMap::default(),
            backlog: Arc::default(),
            spawns_taken: 0,
        }
    }

    /// Hands the local worker processes' supervisor to the loop; it watches them from now on.
    pub(crate) fn supervise(&mut self, supervisor: Supervisor) {
        supervisor.watch_all();
        self.supervisor = Some(supervisor);
    }

    /// The context started: from now on local worker processes that die are replaced
    /// (within the restart budget).
    pub(crate) fn arm_supervisor(&mut self) {
        if let Some(s) = &mut self.supervisor {
            s.arm();
        }
    }

    pub(crate) fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Workers currently joined.
    pub(crate) fn workers(&self) -> Vec<WorkerId> {
        self.core.workers()
    }

    /// Puts the driver's own process in the topology as a root without thread processors,
    /// so the tree shows it and move costs from the driver (inline values) are known.
    pub(crate) fn add_driver_root(&mut self) {
        let now = self.now();
        self.core
            .add_driver_root(now, dagger_proc::hostname(), std::process::id());
    }

    pub(crate) fn subscribe(&mut self, tx: mpsc::UnboundedSender<ClusterEvent>) {
        self.subscribers.push(tx);
    }

    /// Feeds one command to the core; returns the acknowledgement channel of a shutdown.
    fn on_cmd(&mut self, now: Duration, cmd: DriverCmd) -> Option<std::sync::mpsc::Sender<()>> {
        match cmd {
            DriverCmd::Spawn(spec, slot) => {
                self.spawns_taken += 1;
                self.core.handle_spawn(now, spec, slot)
            }
            DriverCmd::Submit(tasks) => self.core.handle_submit(
                now,
                tasks
                    .into_iter()
                    .map(|(spec, slot)| (spec, slot.as_ref().map(Arc::downgrade))),
            ),
            DriverCmd::Release(task) => {
                // The last handle is gone (the slot sent this as it was dropped): nobody
                // reads the completion, and the slot's memory goes with its weak reference.
                self.core.handle_release(now, task);
                self.core.forget_slot(task);
            }
            DriverCmd::FetchChunk {
                chunk,
                holders,
                reply,
            } => {
                let fetch = self.core.handle_fetch(now, chunk, holders);
                self.fetches.insert(fetch, reply);
            }
            DriverCmd::Query(f) => {
                if !self.core.is_shut_down() {
                    // Queries see every submission made before them.
                    self.core.flush();
                    f(self);
                }
            }
            DriverCmd::Shutdown(ack) => return Some(ack),
        }
        None
    }

    fn on_link(&mut self, now: Duration, ev: LinkEvent) {
        match ev {
            LinkEvent::Joined {
                conn,
                info,
                in_process,
            } => {
                let link = LinkId(self.next_link);
                self.next_link += 1;
                let process = (!in_process).then(|| (info.host.clone(), info.pid));
                match self.core.handle_join(now, link, info, in_process) {
                    Ok(_) => {
                        if let Some(process) = process {
                            self.link_procs.insert(link, process);
                        }
                        let Conn {
                            sender, receiver, ..
                        } = conn;
                        self.links.insert(link, sender);
                        let beat = self.core.config().heartbeat_timeout / 4;
                        spawn_reader(link, receiver, self.ev_tx.clone(), beat);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "join refused");
                        conn.sender.close(&e.to_string());
                    }
                }
            }
            LinkEvent::Msg { link, msg } => self.core.handle_message(now, link, msg),
            LinkEvent::Progress { link } => self.core.handle_progress(now, link),
            LinkEvent::Closed { link, reason } => {
                // A link closed because its local process died (a same-host link watches
                // the peer's process) names the death, as the exit watch would a moment
                // later: the loss reports how the process ended, whichever came first.
                let exited = match (self.link_procs.get(&link), &self.supervisor) {
                    (Some((host, pid)), Some(sup)) => sup
                        .exited_now(host, *pid)
                        .map(|exit| (host.clone(), *pid, exit)),
                    _ => None,
                };
                if let Some((host, pid, exit)) = exited {
                    self.core.handle_process_exited(now, &host, pid, exit);
                }
                self.core.handle_link_closed(now, link, reason)
            }
            LinkEvent::ProcessExited { pid, exit } => {
                self.core.handle_process_exited(now, &self.host, pid, exit);
                if self.core.is_shut_down() {
                    return;
                }
                // The loss goes out (its tasks re-placed, subscribers told) before the
                // replacement is started, which takes a fork and an exec.
                self.drive();
                if let Some(e) = self.supervisor.as_mut().and_then(|s| s.on_exit(now, pid)) {
                    self.shell_events.push(e);
                }
            }
        }
    }

    /// Carries out everything the core asks for: frames first (so that frames queued
    /// before a link's close still go out), then events.
    fn drive(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            if let Some(sender) = self.links.get(&t.link) {
                if let Err(e) = sender.send(t.frame) {
                    // The link's reader reports the close; the core then loses the worker.
                    tracing::debug!(worker = %t.worker, error = %e, "frame not sent");
                }
            }
        }
        while let Some(ev) = self.core.poll_event() {
            match ev {
                // A slot with no handle left has nobody to read it (its release is on
                // its way): the outcome is not stored.
                DriverEvent::Complete { slot, result, .. } => {
                    if let Some(slot) = slot.upgrade() {
                        slot.complete(result);
                    }
                }
                DriverEvent::FetchDone { fetch, result } => {
                    if let Some(reply) = self.fetches.remove(&fetch) {
                        let _ = reply.send(result);
                    }
                }
                DriverEvent::Cluster(e) => self.subscribers.retain(|s| s.send(e.clone()).is_ok()),
                DriverEvent::Drained {
                    worker,
                    link,
                    pid,
                    outcome,
                } => self.drained(worker, link, pid, outcome),
                DriverEvent::CloseLink { link, reason } => {
                    if let Some(sender) = self.links.remove(&link) {
                        sender.close(&reason.to_string());
                    }
                    // A local process declared lost while it still runs (paused, hung,
                    // cut off) is ours and fenced: kill it, so it does not linger and its
                    // exit brings a replacement.
                    if let (Some((host, pid)), Some(sup)) =
                        (self.link_procs.remove(&link), &self.supervisor)
                    {
                        if !self.core.is_shut_down() {
                            sup.kill_lost(&host, pid);
                        }
                    }
                }
            }
        }
        for e in self.shell_events.drain(..) {
            self.subscribers.retain(|s| s.send(e.clone()).is_ok());
        }
    }

    /// A drain is over: its handles resolve; a local process that was stopped is not
    /// replaced, and is killed if it has not exited after [`SHUTDOWN_LINGER`].
    fn drained(
        &mut self,
        worker: dagger_core::WorkerId,
        link: LinkId,
        pid: u32,
        outcome: dagger_runtime::DrainOutcome,
    ) {
        use dagger_runtime::DrainOutcome as O;
        let removed = matches!(
            outcome,
            O::Drained { stopped: true, .. }
                | O::DeadlineExceeded { .. }
                | O::HandoverFailed { .. }
        );
        if removed {
            // Ours to stop, not to kill at once or replace: it exits when told to.
            if let Some((host, pid)) = self.link_procs.remove(&link) {
                if let Some(sup) = &mut self.supervisor {
                    sup.retire(&host, pid, SHUTDOWN_LINGER);
                }
            }
        }
        let report = crate::drain::DrainReport {
            worker,
            pid,
            outcome,
        };
        if let Some(waiters) = self.drain_waiters.remove(&worker) {
            for w in waiters {
                w.resolve(report.clone());
            }
        }
    }

    /// Stops the core and carries out what that asks (workers told to exit, every pending
    /// slot and fetch answered).
    fn shutdown(&mut self) {
        let now = self.now();
        self.core.handle_shutdown(now);
        self.drive();
    }
}

/// Whatever way the loop ends (shutdown, or the runtime dropped under it), every handle
/// still waiting gets an answer.
impl Drop for DriverState {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn_reader(
    link: LinkId,
    mut receiver: dagger_net::FrameReceiver,
    ev_tx: mpsc::UnboundedSender<LinkEvent>,
    beat: Duration,
) {
    tokio::spawn(async move {
        // Once per heartbeat interval without a whole message, bytes that came in for a
        // message still arriving are reported: a worker sending one large frame (a result
        // being fetched) is not silent, though its heartbeats wait behind that frame.
        let mut tick = tokio::time::interval(beat.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = receiver.received_bytes();
        let mut whole = false;
        let reason = loop {
            let got = tokio::select! {
                got = receiver.recv() => got,
                _ = tick.tick(), if seen.is_some() => {
                    let bytes = receiver.received_bytes();
                    if !std::mem::take(&mut whole)
                        && bytes != seen
                        && ev_tx.send(LinkEvent::Progress { link }).is_err()
                    {
                        return;
                    }
                    seen = bytes;
                    continue;
                }
            };
            match got {
                Ok(frame) => match wire::decode::<ToDriver>(&frame) {
                    Ok(msg) => {
                        whole = true;
                        if ev_tx.send(LinkEvent::Msg { link, msg }).is_err() {
                            return;
                        }
                    }
                    // The core declares the worker lost and has the link closed.
                    Err(e) => {
                        break LostReason::MalformedFrame {
                            detail: e.to_string(),
                        }
                    }
                },
                Err(e) => {
                    break LostReason::LinkClosed {
                        detail: e.to_string(),
                    }
                }
            }
        };
        let _ = ev_tx.send(LinkEvent::Closed { link, reason });
    });
}

/// Accepts links on `listener`, runs the join handshake and hands joined processes to the
/// driver loop. Handshake failures are logged and the link closed; the loop goes on.
pub(crate) fn spawn_acceptor(
    mut listener: Box<dyn Listener>,
    ev_tx: mpsc::UnboundedSender<LinkEvent>,
    in_process: bool,
    allow_mixed_builds: bool,
) {
    tokio::spawn(async move {
        loop {
            let conn = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "listener stopped");
                    return;
                }
            };
            let ev_tx = ev_tx.clone();
            tokio::spawn(async move {
                match handshake(conn, allow_mixed_builds).await {
                    Ok((conn, info)) => {
                        let _ = ev_tx.send(LinkEvent::Joined {
                            conn,
                            info,
                            in_process,
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "a process failed to join"),
                }
            });
        }
    });
}

async fn handshake(mut conn: Conn, allow_mixed_builds: bool) -> Result<(Conn, WorkerInfo), String> {
    let limit = Duration::from_secs(30);
    let first = tokio::time::timeout(limit, conn.receiver.recv())
        .await
        .map_err(|_| "no hello in time".to_string())?
        .map_err(|e| e.to_string())?;
    let hello: Hello = wire::decode(&first).map_err(|e| e.to_string())?;
    if hello.version != PROTOCOL_VERSION {
        conn.sender.close("protocol version mismatch");
        return Err(format!(
            "protocol version {} (ours {PROTOCOL_VERSION})",
            hello.version
        ));
    }
    let ours = dagger_net::launch::build_id();
    if hello.build_id != ours
        && hello.build_id != 0
        && ours != 0
        && !allow_mixed_builds
        && !hello.allow_mixed_builds
    {
        let why = format!(
            "build mismatch: the worker's executable is another build than the driver's \
             (build id {:016x}, driver {ours:016x}); to mix builds on purpose set \
             ContextBuilder::allow_mixed_builds on the driver or {}=1 on the worker",
            hello.build_id,
            dagger_net::launch::ENV_ALLOW_MIXED_BUILDS
        );
        conn.sender.close(&why);
        return Err(why);
    }
    if hello.registry_hash != registry::registry_hash() {
        conn.sender
            .close("task registry mismatch: not the same binary");
        return Err("its task functions differ from the driver's (another binary?)".into());
    }
    let second = tokio::time::timeout(limit, conn.receiver.recv())
        .await
        .map_err(|_| "no join in time".to_string())?
        .map_err(|e| e.to_string())?;
    match wire::decode::<ToDriver>(&second).map_err(|e| e.to_string())? {
        ToDriver::Join(info) => Ok((conn, info)),
        other => {
            conn.sender.close("expected a join");
            Err(format!("expected a join, got {other:?}"))
        }
    }
}

/// The most commands the driver loop takes before it drives the core (and hands the
/// submissions among them to the scheduler as one batch).
const CMD_BATCH: usize = 4096;

/// Runs the driver loop until shutdown.
pub(crate) async fn run(
    mut st: DriverState,
    mut cmd_rx: mpsc::UnboundedReceiver<DriverCmd>,
    mut ev_rx: mpsc::UnboundedReceiver<LinkEvent>,
) {
    let start = tokio::time::Instant::from_std(st.start);
    // One timer, armed for the core's next deadline. It is moved earlier when the deadline
    // moves earlier; a later deadline lets it fire early, which is harmless (the core
    // does nothing that is not due) and re-arms it.
    let timer = tokio::time::sleep_until(start);
    tokio::pin!(timer);
    let mut armed: Option<Duration> = None;
    let ack = loop {
        let mut stop = None;
        tokio::select! {
            biased;
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { break None };
                let now = st.now();
                st.on_link(now, ev);
                for _ in 0..4096 {
                    match ev_rx.try_recv() {
                        Ok(ev) => st.on_link(now, ev),
                        Err(_) => break,
                    }
                }
            }
            cmd = cmd_rx.recv() => {
                let Some(cmd) = cmd else { break None };
                let now = st.now();
                stop = st.on_cmd(now, cmd);
                // A bounded batch: the submissions gathered here go to the scheduler in
                // one call, whose transient state (the batch's specs, its id map) grows
                // with the batch; a client spawning faster than the loop ingests would
                // otherwise hand over its whole backlog at once.
                for _ in 1..CMD_BATCH {
                    if stop.is_some() {
                        break;
                    }
                    match cmd_rx.try_recv() {
                        Ok(cmd) => stop = st.on_cmd(now, cmd),
                        Err(_) => break,
                    }
                }
                st.backlog.taken(std::mem::take(&mut st.spawns_taken));
            }
            () = &mut timer, if armed.is_some() => {
                armed = None;
                let now = st.now();
                st.core.handle_timeout(now);
            }
        }
        st.drive();
        if let Some(ack) = stop {
            break Some(ack);
        }
        if let Some(deadline) = st.core.poll_timeout() {
            if armed.is_none_or(|a| deadline < a) {
                timer.as_mut().reset(start + deadline);
                armed = Some(deadline);
            }
        }
    };
    st.shutdown();
    st.backlog.close();
    // Commands that raced with the shutdown are answered, not dropped.
    cmd_rx.close();
    while let Ok(cmd) = cmd_rx.try_recv() {
        let now = st.now();
        if let Some(late) = st.on_cmd(now, cmd) {
            let _ = late.send(());
        }
    }
    st.drive();
    // Workers exit when told to shut down, which closes their links. Wait for that, at
    // most SHUTDOWN_LINGER, so that the runtime is not dropped while `Shutdown` frames are
    // still queued (a worker started by hand, which the context cannot watch exit, would
    // otherwise see its link time out instead of a shutdown).
    let deadline = tokio::time::Instant::now() + SHUTDOWN_LINGER;
    while !st.links.is_empty() {
        tokio::select! {
            ev = ev_rx.recv() => match ev {
                Some(LinkEvent::Closed { link, .. }) => {
                    st.links.remove(&link);
                }
                // A local worker's process ended (its link would only time out).
                Some(LinkEvent::ProcessExited { pid, .. }) => {
                    let host = st.host.clone();
                    st.link_procs.retain(|link, (h, p)| {
                        let gone = *p == pid && *h == host;
                        if gone {
                            st.links.remove(link);
                        }
                        !gone
                    });
                }
                Some(LinkEvent::Joined { conn, .. }) => conn.sender.close("the driver shut down"),
                Some(_) => {}
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    if let Some(ack) = ack {
        let _ = ack.send(());
    }
}

/// How long a shutting-down driver waits for its workers to close their links (and a
/// removed local worker's process has to exit before it is killed).
pub(crate) const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

#[cfg(test)]
mod backlog_tests {
    use super::{Backlog, SPAWN_BACKLOG};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Starts a spawner that admits one spawn into `b`, once `b` counts it as pending.
    fn spawner(b: &Arc<Backlog>) -> (std::thread::JoinHandle<()>, Arc<AtomicBool>) {
        let done = Arc::new(AtomicBool::new(false));
        let before = b.pending.load(Ordering::SeqCst);
        let t = std::thread::spawn({
            let (b, done) = (b.clone(), done.clone());
            move || {
                b.admit();
                done.store(true, Ordering::SeqCst);
            }
        });
        while b.pending.load(Ordering::SeqCst) == before {
            std::thread::yield_now();
        }
        (t, done)
    }

    #[test]
    fn a_full_backlog_holds_spawners_until_the_loop_takes_spawns_or_ends() {
        let b = Arc::new(Backlog::default());
        for _ in 0..SPAWN_BACKLOG {
            b.admit();
        }
        let (t, done) = spawner(&b);
        // It has counted itself and must now wait (a slow machine can only make this
        // check pass without the wait, never fail with it).
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            !done.load(Ordering::SeqCst),
            "a spawner went past a full backlog"
        );
        b.taken(1);
        t.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        // Full again: the loop's end releases the spawner too.
        let (t, _) = spawner(&b);
        b.close();
        t.join().unwrap();
    }
}
