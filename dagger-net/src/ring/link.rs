//! A [`Conn`] over two rings: the sink writes into one, a reader thread drains the other.
//!
//! Sending copies the encoded frame straight into the ring when nothing is queued and it
//! fits (the common case, no thread involved); otherwise the rest is queued and a writer
//! thread (`dagger-ring-tx`, started on demand, gone once the queue is empty) feeds it in
//! as the peer makes room, so `send` never blocks and order is kept. The reader thread
//! (`dagger-ring-rx`) spins for the spin budget when the ring is empty, then parks on the
//! ring's futex word; the writer wakes it only when it is parked. Decoded frames are
//! handed to the async receiver through a queue and its waker.

use super::shm::{futex, Ring};
use crate::codec::{Decoded, Decoder, Header, HEADER_LEN};
use crate::link::{FrameReceiver, FrameSender, FrameSink, FrameSource, LinkState};
use crate::quic::code;
use crate::quic::lanes::describe_connection_error;
use crate::{Conn, Frame, NetConfig, NetError};
use quinn::{Endpoint, RecvStream, SendStream, VarInt};
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

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

/// What the async receiver takes frames from.
#[derive(Default)]
struct Inbox {
    frames: VecDeque<Frame>,
    /// The error that ended the link, returned once after the frames before it.
    end: Option<NetError>,
    /// Whether the end was returned (every later call returns `Closed`).
    ended: bool,
    waker: Option<Waker>,
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
    inbox: Mutex<Inbox>,
    /// Set once the peer is known gone (its connection closed or its process exited).
    peer_gone: AtomicBool,
    peer_reason: Mutex<Option<String>>,
    /// Set when this side's receiver is dropped: the reader thread stops.
    rx_stop: AtomicBool,
    received: AtomicU64,
    connection: quinn::Connection,
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
            futex::wake(ring.reader_sleep());
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
        self.wake_receiver();
    }

    fn wake_receiver(&self) {
        let waker = lock(&self.inbox).waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Called by the liveness watcher: the peer is gone. Wakes both threads, which finish
    /// with what is already in the ring.
    fn set_peer_gone(&self, reason: String) {
        {
            let mut r = lock(&self.peer_reason);
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.peer_gone.store(true, Ordering::SeqCst);
        futex::wake(self.rx.reader_sleep());
        futex::wake(self.tx.writer_sleep());
    }

    /// Hands decoded frames to the receiver.
    fn deliver(&self, frames: &mut Vec<Frame>) {
        if frames.is_empty() {
            return;
        }
        let waker = {
            let mut inbox = lock(&self.inbox);
            inbox.frames.extend(frames.drain(..));
            inbox.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The reader thread: decodes the ring into frames until the peer closes the link,
    /// misbehaves or goes away, or this side's receiver is dropped.
    fn reader(self: Arc<Self>, mut decoder: Decoder) {
        let ring = &self.rx;
        let mut tail = ring.tail().load(Ordering::Relaxed);
        let mut frames = Vec::new();
        let has_data = |tail: u64| ring.head().load(Ordering::Acquire) != tail;
        let flags = || self.peer_gone.load(Ordering::SeqCst) || self.rx_stop.load(Ordering::SeqCst);
        let end: Result<String, NetError> = loop {
            let head = ring.head().load(Ordering::Acquire);
            let avail = head.wrapping_sub(tail);
            if avail > ring.capacity() {
                break Err(NetError::Protocol {
                    peer: self.peer.clone(),
                    reason: "ring head out of range".into(),
                });
            }
            if avail > 0 {
                let mut rest = avail;
                let mut stop = None;
                while rest > 0 && stop.is_none() {
                    let piece = ring.readable_at(tail, rest);
                    let mut input = piece;
                    loop {
                        match decoder.decode(&mut input) {
                            Ok(None) => break,
                            Ok(Some(Decoded::Frame(f))) => frames.push(f),
                            Ok(Some(Decoded::Close(reason))) => {
                                stop = Some(Ok(reason));
                                break;
                            }
                            Ok(Some(Decoded::Striped { .. })) => {
                                stop = Some(Err(NetError::Protocol {
                                    peer: self.peer.clone(),
                                    reason: "striped frame on a ring".into(),
                                }));
                                break;
                            }
                            Err(e) => {
                                stop = Some(Err(e.into_net_error(&self.peer)));
                                break;
                            }
                        }
                    }
                    let used = (piece.len() - input.len()) as u64;
                    tail += used;
                    rest -= used;
                }
                ring.tail().store(tail, Ordering::Release);
                self.received.fetch_add(avail - rest, Ordering::Relaxed);
                futex::wake(ring.writer_sleep());
                self.deliver(&mut frames);
                if let Some(stop) = stop {
                    break stop;
                }
                continue;
            }
            if self.rx_stop.load(Ordering::SeqCst) {
                return;
            }
            if self.peer_gone.load(Ordering::SeqCst) {
                if has_data(tail) {
                    continue;
                }
                let mut reason = self.peer_reason();
                if !decoder.is_idle() {
                    reason.push_str(" (inside a frame)");
                }
                break Err(NetError::Closed { reason });
            }
            if spin_until(self.spin, || has_data(tail) || flags()) {
                continue;
            }
            futex::prepare(ring.reader_sleep());
            if has_data(tail) || flags() {
                ring.reader_sleep().store(0, Ordering::Relaxed);
                continue;
            }
            futex::wait(ring.reader_sleep(), PARK);
            ring.reader_sleep().store(0, Ordering::Relaxed);
        };
        // The link is over for this side: tell the peer's writer, then the receiver.
        ring.reader_gone().store(1, Ordering::Release);
        futex::wake(ring.writer_sleep());
        let err = match end {
            Ok(reason) => NetError::Closed { reason },
            Err(e) => {
                if matches!(
                    e,
                    NetError::Protocol { .. } | NetError::FrameTooLarge { .. }
                ) {
                    self.connection
                        .close(VarInt::from_u32(code::PROTOCOL), e.to_string().as_bytes());
                }
                e
            }
        };
        let reason = match &err {
            NetError::Closed { reason } => reason.clone(),
            e => e.to_string(),
        };
        self.state.shut(&reason);
        let waker = {
            let mut inbox = lock(&self.inbox);
            inbox.end = Some(err);
            inbox.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
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
        sh.rx_stop.store(true, Ordering::SeqCst);
        futex::wake(sh.rx.reader_sleep());
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
        sh.wake_receiver();
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

/// The receiving half.
struct RingSource {
    shared: Arc<Shared>,
    _guard: Arc<ConnGuard>,
}

impl FrameSource for RingSource {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, NetError>> {
        let sh = &self.shared;
        let mut inbox = lock(&sh.inbox);
        if let Some(f) = inbox.frames.pop_front() {
            return Poll::Ready(Ok(f));
        }
        if let Some(e) = inbox.end.take() {
            inbox.ended = true;
            return Poll::Ready(Err(e));
        }
        if inbox.ended || sh.state.is_down() {
            inbox.ended = true;
            return Poll::Ready(Err(sh.state.closed_error()));
        }
        match &inbox.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inbox.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn received_bytes(&self) -> Option<u64> {
        Some(self.shared.received.load(Ordering::Relaxed))
    }
}

impl Drop for RingSource {
    fn drop(&mut self) {
        let sh = &self.shared;
        sh.rx_stop.store(true, Ordering::SeqCst);
        sh.rx.reader_gone().store(1, Ordering::Release);
        futex::wake(sh.rx.writer_sleep());
        futex::wake(sh.rx.reader_sleep());
    }
}

/// Builds the [`Conn`] of a ring link over `tx` (this side writes) and `rx` (this side
/// reads), starting its reader thread and its liveness watcher (on the current tokio
/// runtime). `accepted`: the link was accepted, so its first frame is limited.
pub(crate) fn make_ring_conn(
    tx: Ring,
    rx: Ring,
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
    let shared = Arc::new(Shared {
        state: Arc::new(LinkState::default()),
        tx,
        rx,
        peer: peer_addr.clone(),
        spin: super::spin(),
        producer: Mutex::new(Producer::default()),
        inbox: Mutex::new(Inbox::default()),
        peer_gone: AtomicBool::new(false),
        peer_reason: Mutex::new(None),
        rx_stop: AtomicBool::new(false),
        received: AtomicU64::new(0),
        connection: connection.clone(),
    });
    let guard = Arc::new(ConnGuard {
        shared: shared.clone(),
        _endpoint: endpoint,
        _streams: streams,
    });
    let reader = shared.clone();
    std::thread::Builder::new()
        .name("dagger-ring-rx".into())
        .spawn(move || reader.reader(decoder))?;
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
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            }
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
