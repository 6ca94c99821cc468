//! The connections and streams of one link, and the tasks that move frames over them.
//!
//! A link is a primary stream plus `k - 1` lanes (streams on connections of their own).
//! Frames travel on the primary stream, framed by the [`codec`](crate::codec); a frame of
//! at least [`STRIPE_MIN`] bytes on a link with lanes is *striped*: its header and first
//! part go on the primary stream, part `i` is the next data on lane `i` (parts as in
//! [`part_range`]). Every stream is consumed in frame order, so frames stay ordered.
//! One writer task per stream drains the link's queue; the receiver reads the primary
//! stream and, for a striped frame, every lane at once straight into the frame's buffer.

use super::code;
use crate::codec::{Decoded, Decoder, Encoder};
use crate::link::{Cmd, FrameReceiver, FrameSender, FrameSource, LinkState, QueueSink};
use crate::{Conn, Frame, NetConfig, NetError};
use bytes::{Buf, Bytes};
use quinn::{ConnectionError, Endpoint, ReadError, RecvStream, SendStream, VarInt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Frames at least this long are striped over the link's lanes.
pub(crate) const STRIPE_MIN: usize = 1 << 20;
/// The writer stops gathering queued frames into one write beyond this many bytes.
const BATCH_BYTES: usize = 4 << 20;

/// One stream of a link: its connection and both halves.
pub(crate) type Lane = (quinn::Connection, SendStream, RecvStream);

/// Wraps an established, preamble-checked primary stream and its extra lanes into a
/// [`Conn`], and starts the writer tasks.
pub(crate) fn make_conn(
    endpoint: Endpoint,
    primary: Lane,
    lanes: Vec<Lane>,
    peer_addr: String,
    config: &NetConfig,
    accepted: bool,
) -> Conn {
    let (connection, send, recv) = primary;
    let state = Arc::new(LinkState::default());
    let mut lane_txs = Vec::with_capacity(lanes.len());
    let mut lane_recvs = Vec::with_capacity(lanes.len());
    let mut lane_conns = Vec::with_capacity(lanes.len());
    for (conn, send, recv) in lanes {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(lane_writer(
            send,
            rx,
            state.clone(),
            conn.clone(),
            config.idle_timeout,
        ));
        lane_txs.push(tx);
        lane_recvs.push(recv);
        lane_conns.push(conn);
    }
    let mut decoder = Decoder::new(config.max_frame).allow_striped(!lane_recvs.is_empty());
    if accepted {
        decoder = decoder.with_first_frame_limit(config.max_first_frame);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(writer(
        send,
        rx,
        lane_txs,
        state.clone(),
        connection.clone(),
        endpoint.clone(),
        config.idle_timeout,
    ));
    let received = Arc::new(AtomicU64::new(0));
    Conn {
        sender: FrameSender::new(
            QueueSink {
                tx,
                state: state.clone(),
                own_inbox: None,
            },
            config.max_frame,
        ),
        receiver: FrameReceiver::new(QuicSource {
            idle: Some(Box::new(QuicReceiver {
                recv,
                lanes: lane_recvs,
                connection,
                _lane_connections: lane_conns,
                _endpoint: endpoint,
                state,
                pending: Bytes::new(),
                decoder,
                striped: None,
                done: None,
                received: received.clone(),
            })),
            busy: None,
            received,
        }),
        peer_addr,
    }
}

/// The byte range of part `i` of a `len`-byte frame striped over `k` streams.
fn part_range(len: usize, k: usize, i: usize) -> std::ops::Range<usize> {
    let chunk = len.div_ceil(k.max(1));
    let start = (i * chunk).min(len);
    start..(start + chunk).min(len)
}

/// Queues one command in the write batch, striping large frames over the lanes.
/// Returns whether it was a close.
fn push_cmd(cmd: Cmd, enc: &mut Encoder, lanes: &[mpsc::UnboundedSender<Bytes>]) -> bool {
    match cmd {
        Cmd::Frame(f) if f.len() >= STRIPE_MIN && !lanes.is_empty() => {
            let len = f.len();
            let whole = Bytes::from(f);
            let k = lanes.len() + 1;
            enc.push_striped(len, whole.slice(part_range(len, k, 0)));
            for (i, lane) in lanes.iter().enumerate() {
                // A failed lane is noticed by its writer task, which downs the link.
                let _ = lane.send(whole.slice(part_range(len, k, i + 1)));
            }
            false
        }
        Cmd::Frame(f) => {
            enc.push_frame(f);
            false
        }
        Cmd::Parts(mut head, tail)
            if head.len() + tail.len() >= STRIPE_MIN && !lanes.is_empty() =>
        {
            head.extend_from_slice(&tail);
            push_cmd(Cmd::Frame(head), enc, lanes)
        }
        Cmd::Parts(head, tail) => {
            enc.push_parts(head, tail);
            false
        }
        Cmd::Close(reason) => {
            enc.push_close(&reason);
            true
        }
    }
}

/// Drains a link's queue into its primary QUIC stream, coalescing small frames into one
/// write and handing the parts of large frames to the lanes.
async fn writer(
    mut send: SendStream,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    lanes: Vec<mpsc::UnboundedSender<Bytes>>,
    state: Arc<LinkState>,
    connection: quinn::Connection,
    _endpoint: Endpoint,
    linger: Duration,
) {
    let mut enc = Encoder::new();
    loop {
        let first = tokio::select! {
            biased;
            cmd = rx.recv() => cmd,
            e = connection.closed() => {
                state.shut(&describe_connection_error(&e));
                return;
            }
            _ = state.wait_down() => {
                // Closed locally without a close command (receiver error): stop writing.
                if let Ok(cmd) = rx.try_recv() { Some(cmd) } else { return; }
            }
        };
        let Some(first) = first else {
            // Every sender was dropped: end the stream after what was written.
            let _ = send.finish();
            let _ = tokio::time::timeout(linger, send.stopped()).await;
            return;
        };
        let mut closing = push_cmd(first, &mut enc, &lanes);
        while !closing && enc.queued() < BATCH_BYTES {
            let Ok(cmd) = rx.try_recv() else { break };
            closing = push_cmd(cmd, &mut enc, &lanes);
        }
        let mut chunks = enc.take();
        let res = send.write_all_chunks(&mut chunks).await;
        enc.reuse(chunks);
        if let Err(e) = res {
            state.shut(&format!("write failed: {e}"));
            return;
        }
        if closing {
            // The close frame is the last thing on the stream. The connection itself is
            // released when both halves are dropped, so frames the peer has received but
            // not yet read are not discarded.
            let _ = send.finish();
            let _ = tokio::time::timeout(linger, send.stopped()).await;
            return;
        }
    }
}

/// Writes the parts of striped frames handed to one extra lane, in order.
async fn lane_writer(
    mut send: SendStream,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    state: Arc<LinkState>,
    connection: quinn::Connection,
    linger: Duration,
) {
    loop {
        let part = tokio::select! {
            biased;
            part = rx.recv() => part,
            e = connection.closed() => {
                state.shut(&describe_connection_error(&e));
                return;
            }
        };
        let Some(part) = part else {
            let _ = send.finish();
            let _ = tokio::time::timeout(linger, send.stopped()).await;
            return;
        };
        if let Err(e) = send.write_chunk(part).await {
            state.shut(&format!("write on a lane failed: {e}"));
            return;
        }
    }
}

pub(crate) fn describe_connection_error(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ApplicationClosed(a) => {
            let reason = String::from_utf8_lossy(&a.reason);
            if reason.is_empty() {
                "the peer closed the connection".to_owned()
            } else {
                reason.into_owned()
            }
        }
        ConnectionError::LocallyClosed => "closed locally".to_owned(),
        ConnectionError::TimedOut => "the peer stopped responding (idle timeout)".to_owned(),
        other => other.to_string(),
    }
}

/// A striped frame being received: its buffer, and how many bytes of each part arrived.
#[derive(Debug)]
struct Striped {
    buf: Vec<u8>,
    filled: Vec<usize>,
}

impl Striped {
    fn new(len: usize, streams: usize) -> Self {
        Striped {
            buf: vec![0; len],
            filled: vec![0; streams],
        }
    }

    /// Whether part `i` is complete.
    fn part_done(&self, i: usize) -> bool {
        self.filled[i] >= part_range(self.buf.len(), self.filled.len(), i).len()
    }

    fn complete(&self) -> bool {
        (0..self.filled.len()).all(|i| self.part_done(i))
    }

    /// The unfilled rest of part `i`.
    fn rest_of(&mut self, i: usize) -> &mut [u8] {
        let range = part_range(self.buf.len(), self.filled.len(), i);
        let start = range.start + self.filled[i].min(range.len());
        &mut self.buf[start..range.end]
    }
}

/// The receiving half of a QUIC link: decodes frames out of the primary stream (and the
/// lanes, for striped frames). All parsing state lives here so that `recv` is cancel-safe.
#[derive(Debug)]
pub(crate) struct QuicReceiver {
    recv: RecvStream,
    lanes: Vec<RecvStream>,
    connection: quinn::Connection,
    _lane_connections: Vec<quinn::Connection>,
    _endpoint: Endpoint,
    state: Arc<LinkState>,
    /// Bytes read from the primary stream and not yet decoded.
    pending: Bytes,
    decoder: Decoder,
    striped: Option<Striped>,
    done: Option<String>,
    /// Bytes read from the link so far (every stream), shared with the [`QuicSource`].
    received: Arc<AtomicU64>,
}

/// A [`QuicReceiver::recv`] in progress, owning the receiver until it completes.
type PendingRecv = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Box<QuicReceiver>, Result<Frame, NetError>)> + Send>,
>;

/// The [`FrameSource`] of a QUIC link: drives [`QuicReceiver::recv`], keeping an
/// unfinished call across polls (so a dropped `FrameReceiver::recv` loses nothing).
pub(crate) struct QuicSource {
    idle: Option<Box<QuicReceiver>>,
    busy: Option<PendingRecv>,
    /// The receiver's byte count, readable while it is busy inside a frame.
    received: Arc<AtomicU64>,
}

impl FrameSource for QuicSource {
    fn received_bytes(&self) -> Option<u64> {
        Some(self.received.load(Ordering::Relaxed))
    }

    fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Frame, NetError>> {
        if self.busy.is_none() {
            // Fast path: a frame already buffered (small frames arrive many to a read)
            // is returned without starting an asynchronous receive.
            if let Some(ready) = self.idle.as_mut().and_then(|rx| rx.try_buffered()) {
                return std::task::Poll::Ready(ready);
            }
            let Some(mut rx) = self.idle.take() else {
                return std::task::Poll::Ready(Err(NetError::Closed {
                    reason: "the link's receiver is gone".into(),
                }));
            };
            self.busy = Some(Box::pin(async move {
                let r = rx.recv().await;
                (rx, r)
            }));
        }
        let Some(fut) = self.busy.as_mut() else {
            return std::task::Poll::Pending;
        };
        let (rx, r) = std::task::ready!(fut.as_mut().poll(cx));
        self.busy = None;
        self.idle = Some(rx);
        std::task::Poll::Ready(r)
    }
}

/// The outcome of waiting for the parts of a striped frame.
enum LaneProgress {
    Progress,
    Ended,
    Failed(ReadError),
}

impl QuicReceiver {
    pub(crate) async fn recv(&mut self) -> Result<Frame, NetError> {
        loop {
            if let Some(reason) = &self.done {
                return Err(NetError::Closed {
                    reason: reason.clone(),
                });
            }
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            if self.state.is_down() {
                let reason = self.state.reason();
                return Err(self.finish(reason, None));
            }
            if self.striped.is_some() {
                let state = self.state.clone();
                let progress = tokio::select! {
                    p = self.striped_progress() => p,
                    _ = state.wait_down() => continue,
                };
                match progress {
                    LaneProgress::Progress => continue,
                    LaneProgress::Ended => {
                        return Err(
                            self.finish("the peer ended a stream inside a frame".to_owned(), None)
                        )
                    }
                    LaneProgress::Failed(e) => return Err(self.read_failed(e)),
                }
            }
            let read = tokio::select! {
                r = self.recv.read_chunk(usize::MAX, true) => r,
                _ = self.state.wait_down() => continue,
            };
            match read {
                Ok(Some(chunk)) => {
                    self.received
                        .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
                    self.pending = chunk.bytes;
                }
                Ok(None) => {
                    let reason = if !self.decoder.is_idle() || self.striped.is_some() {
                        "the peer ended the stream inside a frame"
                    } else {
                        "the peer finished the link"
                    };
                    return Err(self.finish(reason.to_owned(), None));
                }
                Err(e) => return Err(self.read_failed(e)),
            }
        }
    }

    /// The outcome of `recv` if it needs no I/O: the link already ended, or a whole frame
    /// (or a bad header) is buffered.
    fn try_buffered(&mut self) -> Option<Result<Frame, NetError>> {
        if let Some(reason) = &self.done {
            return Some(Err(NetError::Closed {
                reason: reason.clone(),
            }));
        }
        self.parse().transpose()
    }

    fn read_failed(&mut self, e: ReadError) -> NetError {
        match e {
            ReadError::ConnectionLost(e) => self.finish(describe_connection_error(&e), None),
            e => self.finish(format!("stream error: {e}"), None),
        }
    }

    /// Reads directly into the unfinished parts of the striped frame, from every stream at
    /// once; resolves as soon as any of them made progress.
    fn striped_progress(&mut self) -> impl std::future::Future<Output = LaneProgress> + '_ {
        use std::task::Poll;
        let QuicReceiver {
            recv,
            lanes,
            striped,
            received,
            ..
        } = self;
        std::future::poll_fn(move |cx| {
            let Some(frame) = striped.as_mut() else {
                return Poll::Ready(LaneProgress::Progress);
            };
            let mut progressed = false;
            for i in 0..frame.filled.len() {
                if frame.part_done(i) {
                    continue;
                }
                let stream = if i == 0 {
                    &mut *recv
                } else {
                    match lanes.get_mut(i - 1) {
                        Some(s) => s,
                        None => return Poll::Ready(LaneProgress::Ended),
                    }
                };
                match stream.poll_read(cx, frame.rest_of(i)) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(LaneProgress::Ended),
                    Poll::Ready(Ok(n)) => {
                        frame.filled[i] += n;
                        received.fetch_add(n as u64, Ordering::Relaxed);
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(LaneProgress::Failed(e)),
                    Poll::Pending => {}
                }
            }
            if progressed {
                Poll::Ready(LaneProgress::Progress)
            } else {
                Poll::Pending
            }
        })
    }

    /// Decodes as much of `pending` as makes one frame; `Ok(None)` when more bytes are
    /// needed.
    fn parse(&mut self) -> Result<Option<Frame>, NetError> {
        loop {
            if let Some(frame) = self.striped.as_mut() {
                // Part 0 travels on the primary stream, right after the header.
                let rest = frame.rest_of(0);
                let n = rest.len().min(self.pending.len());
                rest[..n].copy_from_slice(&self.pending[..n]);
                self.pending.advance(n);
                frame.filled[0] += n;
                if !frame.complete() {
                    return Ok(None);
                }
                return Ok(self.striped.take().map(|f| f.buf));
            }
            let mut input = &self.pending[..];
            let decoded = self.decoder.decode(&mut input);
            let used = self.pending.len() - input.len();
            self.pending.advance(used);
            match decoded {
                Ok(None) => return Ok(None),
                Ok(Some(Decoded::Frame(f))) => return Ok(Some(f)),
                Ok(Some(Decoded::Close(reason))) => return Err(self.finish(reason, None)),
                Ok(Some(Decoded::Striped { len })) => {
                    self.striped = Some(Striped::new(len, self.lanes.len() + 1));
                }
                Err(e) => {
                    let err = e.into_net_error(&self.connection.remote_address().to_string());
                    let reason = err.to_string();
                    return Err(self.finish_with(reason, Some(code::PROTOCOL), err));
                }
            }
        }
    }

    /// Ends the link with `reason`, closing the connection with `code` if given.
    fn finish(&mut self, reason: String, code: Option<u32>) -> NetError {
        let err = NetError::Closed {
            reason: reason.clone(),
        };
        self.finish_with(reason, code, err)
    }

    fn finish_with(&mut self, reason: String, code: Option<u32>, err: NetError) -> NetError {
        self.state.shut(&reason);
        let _ = self.recv.stop(VarInt::from_u32(code::CLOSED));
        for lane in &mut self.lanes {
            let _ = lane.stop(VarInt::from_u32(code::CLOSED));
        }
        if let Some(code) = code {
            self.connection
                .close(VarInt::from_u32(code), reason.as_bytes());
            for c in &self._lane_connections {
                c.close(VarInt::from_u32(code), reason.as_bytes());
            }
        }
        self.pending = Bytes::new();
        self.striped = None;
        self.done = Some(reason);
        err
    }
}
