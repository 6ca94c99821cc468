//! The two halves of a link, shared by every transport.

use crate::{Frame, NetError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};

/// What a [`FrameSender`] queues towards the peer.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// A frame to deliver.
    Frame(Frame),
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

/// The sending half of a link. Cheap to clone; every clone feeds the same ordered queue.
///
/// The link's writer drains the queue in the background (for QUIC, a tokio task that
/// coalesces small queued frames into one write), so `send` costs one channel push.
#[derive(Clone, Debug)]
pub struct FrameSender {
    pub(crate) tx: mpsc::UnboundedSender<Cmd>,
    pub(crate) state: Arc<LinkState>,
    pub(crate) max_frame: usize,
    /// For the in-memory transport: this end's own incoming queue, so that `close` also
    /// ends this end's receiver.
    pub(crate) own_inbox: Option<mpsc::WeakUnboundedSender<Cmd>>,
}

impl FrameSender {
    /// Queues `frame` for delivery after every frame queued before it (from any clone).
    ///
    /// Never blocks or awaits; callable from any thread, inside or outside a runtime.
    /// Errors: [`NetError::Closed`] once the link is down (the frame is dropped),
    /// [`NetError::FrameTooLarge`] if `frame` exceeds the configured limit (nothing is sent
    /// and the link stays up). `Ok` means queued, not delivered.
    pub fn send(&self, frame: Frame) -> Result<(), NetError> {
        if self.state.is_down() {
            return Err(self.state.closed_error());
        }
        if frame.len() > self.max_frame {
            return Err(NetError::FrameTooLarge {
                len: frame.len() as u64,
                limit: self.max_frame as u64,
            });
        }
        self.tx.send(Cmd::Frame(frame)).map_err(|_| {
            self.state.shut("the link's writer has stopped");
            self.state.closed_error()
        })
    }

    /// Closes the link: frames queued before this call are still sent, then the peer's
    /// receiver returns [`NetError::Closed`] carrying `reason`. Afterwards `send` fails on
    /// every clone and this end's receiver returns `Closed` too. Idempotent; never blocks.
    pub fn close(&self, reason: &str) {
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

    /// Whether the link is known to be down (closed by either side or broken). A `false`
    /// answer may be stale by the time it is read.
    pub fn is_closed(&self) -> bool {
        self.state.is_down() || self.tx.is_closed()
    }
}

/// The receiving half of a link.
#[derive(Debug)]
pub struct FrameReceiver {
    pub(crate) inner: RecvInner,
}

#[derive(Debug)]
pub(crate) enum RecvInner {
    Mem(crate::mem::MemReceiver),
    #[cfg(feature = "quic")]
    Quic(Box<crate::quic::lanes::QuicReceiver>),
}

impl FrameReceiver {
    /// Waits for the next frame from the peer.
    ///
    /// Returns `Err` once the link is down; the first error names the cause
    /// ([`NetError::Closed`] with the peer's reason when it closed or the connection died,
    /// [`NetError::FrameTooLarge`] or [`NetError::Protocol`] when the peer misbehaved, which
    /// also closes the link), and every later call returns [`NetError::Closed`].
    /// Cancel-safe: if the future is dropped before completing, no frame is lost.
    pub async fn recv(&mut self) -> Result<Frame, NetError> {
        match &mut self.inner {
            RecvInner::Mem(m) => m.recv().await,
            #[cfg(feature = "quic")]
            RecvInner::Quic(q) => q.recv().await,
        }
    }
}
