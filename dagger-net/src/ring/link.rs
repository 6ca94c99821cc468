//! A [`Conn`] over two rings: the sink writes into one, the receiver reads the other.
//!
//! Sending copies the encoded frame straight into the ring when nothing is queued and it
//! fits (the common case, no thread involved); otherwise the rest is queued and a writer
//! thread (`dagger-ring-tx`, started on demand, gone once the queue is empty) feeds it in
//! as the peer makes room, so `send` never blocks and order is kept.
//!
//! Receiving decodes the ring inside `poll_recv`, on the caller's task. When the ring is
//! empty the receiver sets the ring's sleep word and waits for the ring's wake-up FIFO in
//! the tokio reactor; the producer writes a byte into the FIFO only when it finds the
//! word set. A wake-up thus costs one thread wake (the reactor's), the floor for a task
//! that sleeps.
//!
//! Threads outside the runtime may take frames too (`try_recv`, under the caller's lock):
//! a thread that polls the ring for a while announces itself in the ring's header, and the
//! producer then wakes nobody; a thread about to sleep announces itself and sleeps on the
//! ring's doorbell (a futex in the header), and the producer then changes the doorbell and
//! wakes one such thread instead of the receiver's task. Only with neither is the task
//! woken. A worker's thread processors do this between tasks, so a frame that starts a
//! task wakes the thread that runs it and no other.

use super::shm::{futex, Ring};
use crate::codec::{Decoded, Decoder, Header, HEADER_LEN};
use crate::link::{Doorbell, FrameReceiver, FrameSender, FrameSink, FrameSource, LinkState};
use crate::quic::code;
use crate::quic::lanes::describe_connection_error;
use crate::{Conn, Frame, NetConfig, NetError};
use quinn::{Endpoint, RecvStream, SendStream, VarInt};
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
#[cfg(test)]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// How long a parked reader or writer sleeps before it re-checks the link's liveness on
/// its own (wake-ups normally come earlier, from the peer or from the liveness watcher).
const PARK: Duration = Duration::from_millis(100);

/// The QUIC side of a ring link, kept open as its liveness channel.
pub(crate) struct Liveness {
    /// The authenticated connection to the peer.
    pub(crate) connection: quinn::Connection,
    /// The endpoint the connection lives on.
    pub(crate) endpoint: Endpoint,
    /// The handshake stream, idle from now on.
    pub(crate) streams: (SendStream, RecvStream),
    /// The peer's process id (same pid namespace, checked in the offer).
    pub(crate) peer_pid: u32,
}

/// A frame (or close) not yet wholly in the ring.
struct Pending {
    header: [u8; HEADER_LEN],
    body: Vec<u8>,
    /// Bytes of header and body already written.
    done: usize,
}

impl Pending {
    fn frame(frame: Frame) -> Pending {
        Pending {
            header: Header::Data {
                len: frame.len() as u64,
            }
            .encode(),
            body: frame,
            done: 0,
        }
    }

    fn close(reason: &str) -> Pending {
        let mut end = reason.len().min(crate::codec::MAX_CLOSE_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Pending {
            header: Header::Close { len: end as u64 }.encode(),
            body: reason.as_bytes()[..end].to_vec(),
            done: 0,
        }
    }

    fn finished(&self) -> bool {
        self.done == HEADER_LEN + self.body.len()
    }
}

/// Why [`Shared::push`] took nothing.
enum Refused {
    /// The close record was queued already.
    Ended,
    /// The link cannot carry more, for this reason.
    Failed(String),
}

/// The producer's state, behind one lock so that frames from every sender clone enter the
/// ring in one order.
#[derive(Default)]
struct Producer {
    /// The ring's head as this side last stored it.
    head: u64,
    queue: VecDeque<Pending>,
    /// Whether a writer thread is draining `queue`.
    writer: bool,
    /// Whether the close (or the end on drop) was queued: nothing may follow it.
    ended: bool,
}

/// Everything both halves, the threads and the watcher share.
struct Shared {
    state: Arc<LinkState>,
    /// The ring this side writes.
    tx: Ring,
    /// The ring this side reads.
    rx: Ring,
    peer: String,
    spin: Duration,
    producer: Mutex<Producer>,
    /// The peer's wake-up FIFO (of `tx`).
    peer_wake: OwnedFd,
    /// This side's wake-up FIFO (of `rx`), for waking this side's receiver locally.
    own_wake: OwnedFd,
    /// Set once the peer is known gone (its connection closed or its process exited).
    peer_gone: AtomicBool,
    /// Set when a send found that the peer stopped reading (it closed the link).
    peer_stopped: AtomicBool,
    peer_reason: Mutex<Option<String>>,
    connection: quinn::Connection,
}

/// Writes one byte into a wake-up FIFO (a full FIFO already wakes its reader).
fn poke(fd: &OwnedFd) {
    let _ = rustix::io::write(fd, &[1]);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Test hook: a producer stops after this many bytes in total (a peer stuck mid-frame).
#[cfg(test)]
pub(crate) static STALL_AFTER: AtomicU64 = AtomicU64::new(u64::MAX);

/// Test hook: how many ring links this process built (each side counts).
#[cfg(test)]
pub(crate) static RING_LINKS: AtomicU64 = AtomicU64::new(0);

impl Shared {
    /// Copies as much of `item` as fits into the ring and publishes it. Returns how many
    /// bytes were written, or why the link cannot carry more.
    fn write_some(&self, head: &mut u64, item: &mut Pending) -> Result<usize, String> {
        let ring = &self.tx;
        if ring.reader_gone().load(Ordering::Acquire) != 0 {
            self.peer_stopped.store(true, Ordering::Release);
            return Err("the peer stopped reading the link".to_owned());
        }
        let tail = ring.tail().load(Ordering::Acquire);
        let used = head.wrapping_sub(tail);
        if used > ring.capacity() {
            return Err("the peer corrupted the ring (tail out of range)".to_owned());
        }
        let mut free = (ring.capacity() - used) as usize;
        #[cfg(test)]
        {
            let stall = STALL_AFTER.load(Ordering::Relaxed);
            free = free.min(stall.saturating_sub(*head) as usize);
        }
        let mut written = 0;
        while free > 0 && !item.finished() {
            let src = if item.done < HEADER_LEN {
                &item.header[item.done..]
            } else {
                &item.body[item.done - HEADER_LEN..]
            };
            let n = src.len().min(free);
            ring.copy_in(*head, &src[..n]);
            *head += n as u64;
            item.done += n;
            free -= n;
            written += n;
        }
        if written > 0 {
            ring.head().store(*head, Ordering::Release);
            fence(Ordering::SeqCst);
            // A thread of the reader's process polling the ring, or else one asleep on
            // its doorbell, takes the bytes itself; only when there is neither does the
            // reader's task get woken.
            if ring.threads_polling().load(Ordering::Relaxed) != 0 {
            } else if ring.threads_asleep().load(Ordering::Relaxed) != 0 {
                ring.doorbell().fetch_add(1, Ordering::Release);
                futex::wake_one(ring.doorbell());
            } else if ring.reader_sleep().load(Ordering::Relaxed) != 0 {
                ring.reader_sleep().store(0, Ordering::Relaxed);
                poke(&self.peer_wake);
            }
        }
        Ok(written)
    }

    /// Writes `item` now if nothing is queued before it, else (or for what does not fit)
    /// queues it for the writer thread. `last`: the item is the close record, after which
    /// nothing is accepted (a second one is dropped).
    fn push(
        self: &Arc<Self>,
        guard: &Arc<ConnGuard>,
        mut item: Pending,
        last: bool,
    ) -> Result<(), Refused> {
        let mut p = lock(&self.producer);
        if p.ended {
            return if last { Ok(()) } else { Err(Refused::Ended) };
        }
        p.ended = last;
        if p.queue.is_empty() {
            let Producer { head, .. } = &mut *p;
            self.write_some(head, &mut item).map_err(Refused::Failed)?;
            if item.finished() {
                return Ok(());
            }
        }
        p.queue.push_back(item);
        if !p.writer {
            let (shared, guard) = (self.clone(), guard.clone());
            std::thread::Builder::new()
                .name("dagger-ring-tx".into())
                .spawn(move || shared.writer(guard))
                .map_err(|e| {
                    Refused::Failed(format!("cannot start the ring's writer thread: {e}"))
                })?;
            p.writer = true;
        }
        Ok(())
    }

    /// The writer thread: drains the queue into the ring, waiting for room as needed.
    /// Holds `_guard` so the link stays up until the queue is flushed.
    fn writer(self: Arc<Self>, _guard: Arc<ConnGuard>) {
        loop {
            let mut p = lock(&self.producer);
            let mut failure = None;
            {
                let Producer { head, queue, .. } = &mut *p;
                while let Some(front) = queue.front_mut() {
                    if let Err(e) = self.write_some(head, front) {
                        failure = Some(e);
                        break;
                    }
                    if !front.finished() {
                        break;
                    }
                    queue.pop_front();
                }
            }
            if let Some(reason) = failure {
                p.queue.clear();
                p.writer = false;
                drop(p);
                self.fail(&reason);
                return;
            }
            if p.queue.is_empty() {
                p.writer = false;
                return;
            }
            let head = p.head;
            drop(p);
            #[cfg(test)]
            if head >= STALL_AFTER.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            if let Err(reason) = self.wait_for_room(head) {
                let mut p = lock(&self.producer);
                p.queue.clear();
                p.writer = false;
                drop(p);
                self.fail(&reason);
                return;
            }
        }
    }

    /// Waits until the peer frees room in the full ring (whose head is `head`), or fails
    /// once the peer is gone.
    fn wait_for_room(&self, head: u64) -> Result<(), String> {
        let ring = &self.tx;
        let ready = || {
            ring.tail().load(Ordering::Acquire) != head.wrapping_sub(ring.capacity())
                || self.peer_gone.load(Ordering::SeqCst)
                || ring.reader_gone().load(Ordering::Acquire) != 0
        };
        loop {
            if self.peer_gone.load(Ordering::SeqCst) {
                return Err(self.peer_reason());
            }
            if ready() || spin_until(self.spin, ready) {
                return Ok(());
            }
            futex::prepare(ring.writer_sleep());
            if ready() {
                ring.writer_sleep().store(0, Ordering::Relaxed);
                continue;
            }
            futex::wait(ring.writer_sleep(), PARK);
            ring.writer_sleep().store(0, Ordering::Relaxed);
        }
    }

    fn peer_reason(&self) -> String {
        lock(&self.peer_reason)
            .clone()
            .unwrap_or_else(|| "the peer is gone".to_owned())
    }

    /// Marks the link down with `reason` and wakes this side's receiver.
    fn fail(&self, reason: &str) {
        self.state.shut(reason);
        poke(&self.own_wake);
    }

    /// Called by the liveness watcher: the peer is gone. Wakes the receiver, which ends
    /// after what is already in the ring, and a writer waiting for room.
    fn set_peer_gone(&self, reason: String) {
        {
            let mut r = lock(&self.peer_reason);
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.peer_gone.store(true, Ordering::SeqCst);
        poke(&self.own_wake);
        futex::wake(self.tx.writer_sleep());
    }
}

/// Spins until `ready` holds or `budget` passed; returns whether it holds.
fn spin_until(budget: Duration, mut ready: impl FnMut() -> bool) -> bool {
    if budget.is_zero() {
        return ready();
    }
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= budget {
            return ready();
        }
    }
}

/// Keeps the link's QUIC connection open while the sink, the receiver or a writer thread
/// still uses the link; closing it when the last goes tells the peer.
struct ConnGuard {
    shared: Arc<Shared>,
    _endpoint: Endpoint,
    _streams: (SendStream, RecvStream),
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let sh = &self.shared;
        sh.connection
            .close(VarInt::from_u32(code::CLOSED), b"the peer dropped the link");
    }
}

/// The sending half.
struct RingSink {
    shared: Arc<Shared>,
    guard: Arc<ConnGuard>,
}

impl FrameSink for RingSink {
    fn send(&self, frame: Frame) -> Result<(), NetError> {
        let sh = &self.shared;
        if sh.state.is_down() {
            return Err(sh.state.closed_error());
        }
        match sh.push(&self.guard, Pending::frame(frame), false) {
            Ok(()) => Ok(()),
            Err(Refused::Ended) => Err(sh.state.closed_error()),
            Err(Refused::Failed(reason)) => {
                sh.fail(&reason);
                Err(sh.state.closed_error())
            }
        }
    }

    fn close(&self, reason: &str) {
        let sh = &self.shared;
        if sh.state.is_down() {
            return;
        }
        self.end(reason);
        sh.state.shut(reason);
        poke(&sh.own_wake);
    }

    fn is_closed(&self) -> bool {
        self.shared.state.is_down()
    }
}

impl RingSink {
    /// Queues the close record (once): nothing is sent after it.
    fn end(&self, reason: &str) {
        let sh = &self.shared;
        if let Err(Refused::Failed(r)) = sh.push(&self.guard, Pending::close(reason), true) {
            sh.fail(&r);
        }
    }
}

impl Drop for RingSink {
    fn drop(&mut self) {
        if !self.shared.state.is_down() {
            self.end("the peer finished the link");
        }
    }
}

/// The doorbell of a ring link's receiving side ([`crate::Doorbell`]): the ring's futex
/// word, shared with the peer, on which threads of this process sleep until the peer
/// writes. While one sleeps there, the peer wakes it instead of the receiver's task.
struct RingBell {
    shared: Arc<Shared>,
}

impl Doorbell for RingBell {
    fn arm(&self) -> Option<u32> {
        let ring = &self.shared.rx;
        ring.threads_asleep().fetch_add(1, Ordering::SeqCst);
        let value = ring.doorbell().load(Ordering::SeqCst);
        if ring.head().load(Ordering::Acquire) != ring.tail().load(Ordering::Acquire)
            || self.shared.state.is_down()
        {
            self.disarm();
            return None;
        }
        Some(value)
    }

    fn disarm(&self) {
        self.shared
            .rx
            .threads_asleep()
            .fetch_sub(1, Ordering::SeqCst);
    }

    fn watch(&self, on: bool) {
        let polling = self.shared.rx.threads_polling();
        if on {
            polling.fetch_add(1, Ordering::SeqCst);
        } else {
            polling.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn word(&self) -> &std::sync::atomic::AtomicU32 {
        self.shared.rx.doorbell()
    }
}

/// The receiving half: decodes the ring on the caller's task.
struct RingSource {
    shared: Arc<Shared>,
    _guard: Arc<ConnGuard>,
    /// This side's wake-up FIFO, registered with the tokio reactor.
    wake: AsyncFd<OwnedFd>,
    decoder: Decoder,
    /// The ring's tail as this side last stored it.
    tail: u64,
    /// Frames decoded and not yet returned.
    ready: VecDeque<Frame>,
    /// The error that ended the link, returned once after the frames before it.
    end: Option<NetError>,
    /// Whether the link ended for this side (every later call returns `Closed`).
    ended: bool,
    /// The ring's tail when the link was built (what the handshake had used).
    start: u64,
}

impl RingSource {
    /// Decodes every byte the ring holds into `ready`. Returns whether anything was
    /// consumed; an `Err` ends the link (a close from the peer is `Closed` with its
    /// reason).
    fn drain(&mut self) -> Result<bool, NetError> {
        let sh = &*self.shared;
        let ring = &sh.rx;
        let head = ring.head().load(Ordering::Acquire);
        let avail = head.wrapping_sub(self.tail);
        if avail == 0 {
            return Ok(false);
        }
        if avail > ring.capacity() {
            return Err(NetError::Protocol {
                peer: sh.peer.clone(),
                reason: "ring head out of range".into(),
            });
        }
        let mut rest = avail;
        let mut stop = None;
        while rest > 0 && stop.is_none() {
            let piece = ring.readable_at(self.tail, rest);
            let mut input = piece;
            loop {
                match self.decoder.decode(&mut input) {
                    Ok(None) => break,
                    Ok(Some(Decoded::Frame(f))) => self.ready.push_back(f),
                    Ok(Some(Decoded::Close(reason))) => {
                        stop = Some(NetError::Closed { reason });
                        break;
                    }
                    Ok(Some(Decoded::Striped { .. })) => {
                        stop = Some(NetError::Protocol {
                            peer: sh.peer.clone(),
                            reason: "striped frame on a ring".into(),
                        });
                        break;
                    }
                    Err(e) => {
                        stop = Some(e.into_net_error(&sh.peer));
                        break;
                    }
                }
            }
            let used = (piece.len() - input.len()) as u64;
            self.tail += used;
            rest -= used;
        }
        ring.tail().store(self.tail, Ordering::Release);
        futex::wake(ring.writer_sleep());
        match stop {
            Some(e) => Err(e),
            None => Ok(true),
        }
    }

    /// [`RingSource::drain`], ending the link on an error; whether anything happened
    /// (frames decoded, or the end found).
    fn step(&mut self) -> bool {
        match self.drain() {
            Ok(got) => got,
            Err(e) => {
                self.finish(e);
                true
            }
        }
    }

    /// Ends the link for this side with `err` (returned after the frames decoded before).
    fn finish(&mut self, err: NetError) {
        let sh = &*self.shared;
        sh.rx.reader_gone().store(1, Ordering::Release);
        futex::wake(sh.rx.writer_sleep());
        if matches!(
            err,
            NetError::Protocol { .. } | NetError::FrameTooLarge { .. }
        ) {
            sh.connection
                .close(VarInt::from_u32(code::PROTOCOL), err.to_string().as_bytes());
        }
        let reason = match &err {
            NetError::Closed { reason } => reason.clone(),
            e => e.to_string(),
        };
        sh.state.shut(&reason);
        self.end = Some(err);
        self.ended = true;
    }

    /// The next outcome already known, if any.
    fn next_known(&mut self) -> Option<Result<Frame, NetError>> {
        if let Some(f) = self.ready.pop_front() {
            return Some(Ok(f));
        }
        if let Some(e) = self.end.take() {
            return Some(Err(e));
        }
        if self.ended {
            return Some(Err(self.shared.state.closed_error()));
        }
        None
    }
}

impl FrameSource for RingSource {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, NetError>> {
        loop {
            if let Some(r) = self.next_known() {
                return Poll::Ready(r);
            }
            if self.shared.state.is_down() {
                // Closed by this side, or its sender failed: nothing more is read, except,
                // when the sender failed because the peer stopped reading, what the peer
                // wrote before (its close record says why it closed).
                if self.shared.peer_stopped.load(Ordering::Acquire) && self.step() {
                    continue;
                }
                self.ended = true;
                continue;
            }
            if self.step() {
                continue;
            }
            let sh = &*self.shared;
            if sh.peer_gone.load(Ordering::SeqCst) {
                if sh.rx.head().load(Ordering::Acquire) != self.tail {
                    continue;
                }
                let mut reason = sh.peer_reason();
                if !self.decoder.is_idle() {
                    reason.push_str(" (inside a frame)");
                }
                self.finish(NetError::Closed { reason });
                continue;
            }
            // Nothing to read: arm the wake-up, re-check, then wait for the FIFO.
            futex::prepare(sh.rx.reader_sleep());
            if sh.rx.head().load(Ordering::Acquire) != self.tail
                || sh.peer_gone.load(Ordering::SeqCst)
                || sh.state.is_down()
            {
                sh.rx.reader_sleep().store(0, Ordering::Relaxed);
                continue;
            }
            match self.wake.poll_read_ready(cx) {
                Poll::Ready(Ok(mut guard)) => {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = rustix::io::read(guard.get_inner(), &mut buf) {
                        if n < buf.len() {
                            break;
                        }
                    }
                    guard.clear_ready();
                }
                Poll::Ready(Err(e)) => {
                    self.finish(NetError::Closed {
                        reason: format!("the ring's wake-up FIFO failed: {e}"),
                    });
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// What the peer has published into the ring, decoded yet or not: it grows while
    /// the peer writes, whether or not this side is receiving.
    fn received_bytes(&self) -> Option<u64> {
        let head = self.shared.rx.head().load(Ordering::Acquire);
        Some(head.wrapping_sub(self.start))
    }

    fn doorbell(&self) -> Option<Arc<dyn Doorbell>> {
        Some(Arc::new(RingBell {
            shared: self.shared.clone(),
        }))
    }

    /// Decodes what the ring holds, without arming its wake-up. A decoding error ends the
    /// link as in `poll_recv`, and the receiver's own wake-up is poked so that its task
    /// reports the end.
    fn try_recv(&mut self) -> Option<Frame> {
        if let Some(f) = self.ready.pop_front() {
            return Some(f);
        }
        if self.ended || self.end.is_some() || self.shared.state.is_down() {
            return None;
        }
        match self.drain() {
            Ok(_) => self.ready.pop_front(),
            Err(e) => {
                self.finish(e);
                poke(&self.shared.own_wake);
                self.ready.pop_front()
            }
        }
    }
}

impl Drop for RingSource {
    fn drop(&mut self) {
        let sh = &self.shared;
        sh.rx.reader_gone().store(1, Ordering::Release);
        futex::wake(sh.rx.writer_sleep());
    }
}

/// Builds the [`Conn`] of a ring link over `tx` (this side writes) and `rx` (this side
/// reads), starting its reader thread and its liveness watcher (on the current tokio
/// runtime). `accepted`: the link was accepted, so its first frame is limited.
pub(crate) fn make_ring_conn(
    mut tx: Ring,
    mut rx: Ring,
    live: Liveness,
    peer_addr: String,
    config: &NetConfig,
    accepted: bool,
) -> Result<Conn, NetError> {
    #[cfg(test)]
    RING_LINKS.fetch_add(1, Ordering::SeqCst);
    let mut decoder = Decoder::new(config.max_frame);
    if accepted {
        decoder = decoder.with_first_frame_limit(config.max_first_frame);
    }
    let Liveness {
        connection,
        endpoint,
        streams,
        peer_pid,
    } = live;
    let no_fifo = || NetError::Closed {
        reason: "a ring's wake-up FIFO is missing".into(),
    };
    let peer_wake = tx.take_wake().ok_or_else(no_fifo)?;
    let wake = rx.take_wake().ok_or_else(no_fifo)?;
    let own_wake = rustix::io::fcntl_dupfd_cloexec(&wake, 0).map_err(std::io::Error::from)?;
    // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which keeps it open and unchanged
    // until it is dropped.
    let wake = unsafe { AsyncFd::register_with_interest(wake, Interest::READABLE) }
        .map_err(|e| NetError::Io(e.into()))?;
    let tail = rx.tail().load(Ordering::Acquire);
    let shared = Arc::new(Shared {
        state: Arc::new(LinkState::default()),
        tx,
        rx,
        peer: peer_addr.clone(),
        spin: super::spin(),
        producer: Mutex::new(Producer::default()),
        peer_wake,
        own_wake,
        peer_gone: AtomicBool::new(false),
        peer_stopped: AtomicBool::new(false),
        peer_reason: Mutex::new(None),
        connection: connection.clone(),
    });
    let guard = Arc::new(ConnGuard {
        shared: shared.clone(),
        _endpoint: endpoint,
        _streams: streams,
    });
    let pidfd = rustix::process::Pid::from_raw(peer_pid as i32)
        .filter(|_| peer_pid != std::process::id())
        .and_then(|pid| {
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
        });
    tokio::spawn(watch(shared.clone(), connection, pidfd));
    Ok(Conn {
        sender: FrameSender::new(
            RingSink {
                shared: shared.clone(),
                guard: guard.clone(),
            },
            config.max_frame,
        ),
        receiver: FrameReceiver::new(RingSource {
            shared,
            _guard: guard,
            wake,
            decoder,
            tail,
            ready: VecDeque::new(),
            end: None,
            ended: false,
            start: tail,
        }),
        peer_addr,
    })
}

/// Watches the link's liveness: its QUIC connection, and the peer's process when a pidfd
/// for it could be opened.
async fn watch(shared: Arc<Shared>, connection: quinn::Connection, pidfd: Option<OwnedFd>) {
    let exited = async {
        let registered = pidfd.map(|fd| {
            // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which keeps it open and
            // unchanged until it is dropped.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        });
        match registered {
            Some(Ok(fd)) => {
                let _ = fd.readable().await;
            }
            _ => std::future::pending::<()>().await,
        }
    };
    let reason = tokio::select! {
        e = connection.closed() => describe_connection_error(&e),
        () = exited => {
            connection.close(VarInt::from_u32(code::CLOSED), b"the peer process exited");
            "the peer process exited".to_owned()
        }
    };
    shared.set_peer_gone(reason);
}
