//! The two halves of a link, and the traits a transport implements to provide them.
//!
//! A transport builds each [`Conn`](crate::Conn) from a [`FrameSink`] (the sending side)
//! and a [`FrameSource`] (the receiving side). [`FrameSender`] and [`FrameReceiver`] wrap
//! them behind one virtual call per operation and add what every transport shares: the
//! frame limit on `send`, cheap clones of the sender, and `recv` as an `async fn`.

use crate::{Frame, NetError};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{mpsc, Notify};

/// The sending side of one link, as a transport implements it.
///
/// Shared by every clone of the [`FrameSender`] that wraps it, so it takes `&self` and
/// must be usable from any thread, inside or outside a runtime.
pub trait FrameSink: Send + Sync + 'static {
    /// Queues `frame` behind every frame queued before it, without blocking or awaiting.
    /// The length has already been checked against the link's limit. Fails with
    /// [`NetError::Closed`] once the link is down (the frame is dropped).
    fn send(&self, frame: Frame) -> Result<(), NetError>;

    /// Like [`send`](FrameSink::send), for the frame `head` followed by `tail`. A
    /// transport that can write the two in turn overrides this to send `tail` without
    /// copying it; the default joins them into one frame.
    fn send_parts(&self, head: Frame, tail: Bytes) -> Result<(), NetError> {
        let mut frame = head;
        frame.extend_from_slice(&tail);
        self.send(frame)
    }

    /// Closes the link: frames queued before are still delivered, then the peer's receiver
    /// returns [`NetError::Closed`] carrying `reason`; afterwards `send` fails, and this
    /// end's receiver returns `Closed` too. Idempotent; never blocks.
    fn close(&self, reason: &str);

    /// Whether the link is known to be down (closed by either side or broken).
    fn is_closed(&self) -> bool;
}

/// The receiving side of one link, as a transport implements it.
///
/// Poll-based, like a stream: the frame being received lives in the source, not in a
/// future, so dropping a pending [`FrameReceiver::recv`] loses nothing.
pub trait FrameSource: Send + 'static {
    /// Polls for the next frame from the peer, registering `cx`'s waker when none is
    /// ready. The contract of the result is [`FrameReceiver::recv`]'s.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, NetError>>;

    /// How many bytes arrived on the link so far, counting those of a frame not yet
    /// complete; `None` (the default) when the transport cannot tell. A peer sending one
    /// large frame is alive while this grows, though no frame completes for a while.
    fn received_bytes(&self) -> Option<u64> {
        None
    }

    /// A frame that has arrived already, taken without waiting and without registering a
    /// waker, so that a thread outside the async runtime can take it while it has nothing
    /// else to do. `None` (the default) when no frame is ready, when the link has ended
    /// (that end is then [`poll_recv`](FrameSource::poll_recv)'s to report) or when the
    /// transport cannot take one this way. Frames come in the same single order whichever
    /// of the two takes them.
    fn try_recv(&mut self) -> Option<Frame> {
        None
    }

    /// A word threads of this process may sleep on until the peer sends (see
    /// [`Doorbell`]); `None` (the default) when the transport has none.
    fn doorbell(&self) -> Option<Arc<dyn Doorbell>> {
        None
    }
}

/// A word threads of this process may sleep on until a link's peer sends
/// ([`FrameReceiver::doorbell`]). While a thread sleeps there, the peer wakes that thread
/// instead of the task reading the link, so the thread that will handle a frame is the
/// only one woken for it; it then takes the frame with [`FrameReceiver::try_recv`].
/// Same-host rings have one.
pub trait Doorbell: Send + Sync + 'static {
    /// Announces a thread about to sleep on [`word`](Doorbell::word) and returns the
    /// value the word holds now; `None` (announcement withdrawn) when frames have arrived
    /// that nobody took yet, so there is no reason to sleep. Every `Some` must be followed
    /// by [`disarm`](Doorbell::disarm) once the thread is awake again.
    fn arm(&self) -> Option<u32>;
    /// Withdraws the sleeper [`arm`](Doorbell::arm) announced.
    fn disarm(&self);
    /// The futex word (in memory shared with the peer's process, so not process-private):
    /// the peer changes it and wakes one sleeper when it sends while one is announced.
    fn word(&self) -> &std::sync::atomic::AtomicU32;
    /// Announces (`true`) or withdraws a thread that polls the link with
    /// [`FrameReceiver::try_recv`] for a while: while one does, the peer wakes nobody
    /// when it sends. After withdrawing, the thread polls once more (a frame sent just
    /// before may have found it announced).
    fn watch(&self, on: bool);
}

/// What a [`QueueSink`] queues towards the link's writer.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// A frame to deliver.
    Frame(Frame),
    /// A frame to deliver, given as its head and the bytes that follow it.
    Parts(Frame, Bytes),
    /// Close the link, telling the peer why (after the frames queued before it).
    Close(String),
}

/// Whether one end of a link is down, and why. Shared by that end's sender, receiver and
/// (for QUIC) its writer task.
#[derive(Debug, Default)]
pub(crate) struct LinkState {
    down: AtomicBool,
    reason: Mutex<Option<String>>,
    notify: Notify,
}

impl LinkState {
    /// Marks the link down with `reason` unless it already is; wakes every waiter.
    pub(crate) fn shut(&self, reason: &str) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(reason.to_owned());
            }
        }
        self.down.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether the link is down.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// The reason the link went down (or a generic one if it has not).
    pub(crate) fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "link closed".to_owned())
    }

    /// The error reported once the link is down.
    pub(crate) fn closed_error(&self) -> NetError {
        NetError::Closed {
            reason: self.reason(),
        }
    }

    /// Resolves once the link is down (immediately if it already is).
    #[cfg(feature = "quic")]
    pub(crate) async fn wait_down(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_down() {
                return;
            }
            notified.await;
        }
    }
}

/// The sink of this crate's transports: an unbounded queue drained by the link's writer
/// (a QUIC writer task, or the peer's receiver in memory).
#[derive(Debug)]
pub(crate) struct QueueSink {
    pub(crate) tx: mpsc::UnboundedSender<Cmd>,
    pub(crate) state: Arc<LinkState>,
    /// For the in-memory transport: this end's own incoming queue, so that `close` also
    /// ends this end's receiver.
    pub(crate) own_inbox: Option<mpsc::WeakUnboundedSender<Cmd>>,
}

impl QueueSink {
    fn queue(&self, cmd: Cmd) -> Result<(), NetError> {
        self.tx.send(cmd).map_err(|_| {
            self.state.shut("the link's writer has stopped");
            self.state.closed_error()
        })
    }
}

impl FrameSink for QueueSink {
    fn send(&self, frame: Frame) -> Result<(), NetError> {
        if self.state.is_down() {
            return Err(self.state.closed_error());
        }
        self.queue(Cmd::Frame(frame))
    }

    fn send_parts(&self, head: Frame, tail: Bytes) -> Result<(), NetError> {
        if self.state.is_down() {
            return Err(self.state.closed_error());
        }
        self.queue(Cmd::Parts(head, tail))
    }

    fn close(&self, reason: &str) {
        if self.state.is_down() {
            return;
        }
        // Queue the close before marking the state down, so the writer (which stops on
        // `down`) finds it behind the frames it must still flush.
        let _ = self.tx.send(Cmd::Close(reason.to_owned()));
        if let Some(inbox) = self.own_inbox.as_ref().and_then(|w| w.upgrade()) {
            let _ = inbox.send(Cmd::Close(reason.to_owned()));
        }
        self.state.shut(reason);
    }

    fn is_closed(&self) -> bool {
        self.state.is_down() || self.tx.is_closed()
    }
}

/// The sending half of a link. Cheap to clone; every clone feeds the same ordered queue.
///
/// For this crate's transports the link's writer drains the queue in the background (for
/// QUIC, a tokio task that coalesces small queued frames into one write), so `send` costs
/// one channel push.
#[derive(Clone)]
pub struct FrameSender {
    sink: Arc<dyn FrameSink>,
    max_frame: usize,
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSender")
            .field("max_frame", &self.max_frame)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl FrameSender {
    /// Wraps a transport's sink; `send` refuses frames longer than `max_frame` before
    /// they reach it.
    pub fn new(sink: impl FrameSink, max_frame: usize) -> Self {
        Self::from_arc(Arc::new(sink), max_frame)
    }

    /// Like [`FrameSender::new`], for a sink already shared.
    pub fn from_arc(sink: Arc<dyn FrameSink>, max_frame: usize) -> Self {
        FrameSender { sink, max_frame }
    }

    /// The longest frame `send` accepts.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Queues the frame made of `head` followed by `tail`, like [`send`](Self::send):
    /// the same bytes reach the peer as one frame. A transport that writes to a byte
    /// stream (QUIC) sends `tail` from where it lies, without copying it into the frame:
    /// use it for a large buffer that something else already holds (a stored result).
    ///
    /// Errors: as [`send`](Self::send)'s, for the length of head and tail together.
    pub fn send_parts(
        &self,
        head: Frame,
        tail: impl AsRef<[u8]> + Send + 'static,
    ) -> Result<(), NetError> {
        self.check_len(head.len() + tail.as_ref().len())?;
        self.sink.send_parts(head, Bytes::from_owner(tail))
    }

    /// [`NetError::FrameTooLarge`] for a frame of `len` bytes over the limit.
    #[inline]
    fn check_len(&self, len: usize) -> Result<(), NetError> {
        if len > self.max_frame {
            return Err(NetError::FrameTooLarge {
                len: len as u64,
                limit: self.max_frame as u64,
            });
        }
        Ok(())
    }

    /// Queues `frame` for delivery after every frame queued before it (from any clone).
    ///
    /// Never blocks or awaits; callable from any thread, inside or outside a runtime.
    /// Errors: [`NetError::FrameTooLarge`] if `frame` exceeds the configured limit (nothing
    /// is sent and the link stays up), [`NetError::Closed`] once the link is down (the
    /// frame is dropped). `Ok` means queued, not delivered.
    #[inline]
    pub fn send(&self, frame: Frame) -> Result<(), NetError> {
        self.check_len(frame.len())?;
        self.sink.send(frame)
    }

    /// Closes the link: frames queued before this call are still sent, then the peer's
    /// receiver returns [`NetError::Closed`] carrying `reason`. Afterwards `send` fails on
    /// every clone and this end's receiver returns `Closed` too. Idempotent; never blocks.
    pub fn close(&self, reason: &str) {
        self.sink.close(reason)
    }

    /// Whether the link is known to be down (closed by either side or broken). A `false`
    /// answer may be stale by the time it is read.
    pub fn is_closed(&self) -> bool {
        self.sink.is_closed()
    }
}

/// The receiving half of a link.
pub struct FrameReceiver {
    source: Box<dyn FrameSource>,
}

impl std::fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReceiver").finish_non_exhaustive()
    }
}

impl FrameReceiver {
    /// Wraps a transport's source.
    pub fn new(source: impl FrameSource) -> Self {
        FrameReceiver {
            source: Box::new(source),
        }
    }

    /// Waits for the next frame from the peer.
    ///
    /// Returns `Err` once the link is down; the first error names the cause
    /// ([`NetError::Closed`] with the peer's reason when it closed or the connection died,
    /// [`NetError::FrameTooLarge`] or [`NetError::Protocol`] when the peer misbehaved, which
    /// also closes the link), and every later call returns [`NetError::Closed`].
    /// Cancel-safe: if the future is dropped before completing, no frame is lost.
    pub async fn recv(&mut self) -> Result<Frame, NetError> {
        std::future::poll_fn(|cx| self.source.poll_recv(cx)).await
    }

    /// How many bytes arrived on the link so far, including those of a frame still being
    /// received, if the transport tells ([`FrameSource::received_bytes`]). Readable while
    /// a `recv` is pending elsewhere; cheap (an atomic load for QUIC).
    pub fn received_bytes(&self) -> Option<u64> {
        self.source.received_bytes()
    }

    /// Polls for the next frame (the poll form of [`FrameReceiver::recv`]).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, NetError>> {
        self.source.poll_recv(cx)
    }

    /// A frame that has arrived already, if the transport can hand one over without
    /// waiting ([`FrameSource::try_recv`]; same-host rings can); never an error: the link's
    /// end is reported by [`recv`](FrameReceiver::recv).
    pub fn try_recv(&mut self) -> Option<Frame> {
        self.source.try_recv()
    }

    /// The link's [`Doorbell`], if its transport has one (same-host rings do): a thread
    /// that sleeps on it is woken when the peer sends, and then takes the frames with
    /// [`try_recv`](FrameReceiver::try_recv).
    pub fn doorbell(&self) -> Option<Arc<dyn Doorbell>> {
        self.source.doorbell()
    }
}
