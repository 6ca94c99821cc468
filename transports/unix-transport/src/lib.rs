//! A [`Transport`] over Unix domain sockets, for processes of one host.
//!
//! Addresses are `unix:<path>`: [`Transport::listen`] binds a socket file at `<path>`
//! (which must not exist; it is removed when the listener is dropped) and
//! [`Transport::connect`] dials it. Each link is one stream socket. Both sides first
//! exchange an 8-byte preamble ([`PREAMBLE`]); then frames flow in dagger-net's framing
//! ([`dagger_net::codec`]: an 8-byte header with the length, close frames carrying the
//! reason), with [`NetConfig::max_frame`] enforced on send and on receipt and
//! [`NetConfig::max_first_frame`] on the first frame of an accepted link.
//!
//! There is no authentication beyond the file system's permissions on the socket path.
//!
//! This crate lives outside the dagger-rs workspace and uses only dagger-net's public API:
//! [`FrameSink`] and [`FrameSource`] are what a transport implements for each link.

#![warn(missing_docs)]

use bytes::Bytes;
use dagger_net::codec::{Decoded, Decoder, Encoder};
use dagger_net::{
    BoxFuture, Conn, Frame, FrameReceiver, FrameSender, FrameSink, FrameSource, Listener,
    NetConfig, NetError, Transport,
};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};

/// The bytes each side writes first: magic and framing version.
pub const PREAMBLE: [u8; 8] = *b"DAGUNIX1";
/// How long the preamble exchange may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The writer stops gathering queued frames into one batch beyond this many bytes.
const BATCH_BYTES: usize = 4 << 20;
/// The receiver's read buffer.
const READ_BUFFER: usize = 64 << 10;

/// Links over Unix domain sockets (`unix:<path>` addresses).
///
/// Listening and dialling must happen inside a tokio runtime (each link has a writer
/// task, and each listener a task that runs the preamble exchange of incoming links).
#[derive(Clone, Debug, Default)]
pub struct UnixTransport {
    config: NetConfig,
}

impl UnixTransport {
    /// A transport whose links use `config` (`max_frame` and `max_first_frame`; the QUIC
    /// timers do not apply).
    pub fn new(config: NetConfig) -> Self {
        UnixTransport { config }
    }

    async fn do_listen(&self, addr: &str) -> Result<Box<dyn Listener>, NetError> {
        let path = parse_addr(addr)?;
        let listener = UnixListener::bind(&path).map_err(|e| NetError::Address {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let config = self.config.clone();
        let local = addr.to_owned();
        let task = tokio::spawn(accept_loop(listener, tx, config, local.clone()));
        Ok(Box::new(UnixLinkListener {
            local,
            path,
            rx,
            task,
        }))
    }

    async fn do_connect(&self, addr: &str) -> Result<Conn, NetError> {
        let path = parse_addr(addr)?;
        let refused = |reason: String| NetError::Refused {
            peer: addr.to_owned(),
            reason,
        };
        let mut stream = UnixStream::connect(&path)
            .await
            .map_err(|e| refused(e.to_string()))?;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut stream, addr))
            .await
            .map_err(|_| refused("handshake timed out".into()))??;
        Ok(make_conn(stream, &self.config, addr.to_owned(), false))
    }
}

impl Transport for UnixTransport {
    fn listen<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Box<dyn Listener>, NetError>> {
        Box::pin(self.do_listen(addr))
    }

    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Conn, NetError>> {
        Box::pin(self.do_connect(addr))
    }

    fn name(&self) -> &'static str {
        "unix"
    }
}

/// The socket path of a `unix:<path>` address.
fn parse_addr(addr: &str) -> Result<PathBuf, NetError> {
    match addr.strip_prefix("unix:") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(NetError::Address {
            addr: addr.to_owned(),
            reason: "expected unix:<path>".into(),
        }),
    }
}

/// Writes our preamble and checks the peer's.
async fn handshake(stream: &mut UnixStream, peer: &str) -> Result<(), NetError> {
    stream.write_all(&PREAMBLE).await?;
    let mut theirs = [0u8; 8];
    stream
        .read_exact(&mut theirs)
        .await
        .map_err(|e| NetError::Refused {
            peer: peer.to_owned(),
            reason: format!("no preamble: {e}"),
        })?;
    if theirs != PREAMBLE {
        return Err(NetError::Protocol {
            peer: peer.to_owned(),
            reason: format!("bad preamble {theirs:?}"),
        });
    }
    Ok(())
}

/// Accepts streams forever, running each one's preamble exchange in its own task.
async fn accept_loop(
    listener: UnixListener,
    tx: mpsc::UnboundedSender<Conn>,
    config: NetConfig,
    local: String,
) {
    let counter = Arc::new(AtomicU64::new(0));
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // Out of descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (tx, config) = (tx.clone(), config.clone());
        let peer = format!("{local}#{}", counter.fetch_add(1, Ordering::Relaxed) + 1);
        tokio::spawn(async move {
            // A peer that fails the preamble is dropped; the listener goes on.
            if let Ok(Ok(())) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut stream, &peer)).await
            {
                let _ = tx.send(make_conn(stream, &config, peer, true));
            }
        });
    }
}

/// A listener on a socket path.
struct UnixLinkListener {
    local: String,
    path: PathBuf,
    rx: mpsc::UnboundedReceiver<Conn>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener for UnixLinkListener {
    fn local_addr(&self) -> String {
        self.local.clone()
    }

    fn accept(&mut self) -> BoxFuture<'_, Result<Conn, NetError>> {
        Box::pin(async move {
            self.rx.recv().await.ok_or_else(|| NetError::Closed {
                reason: "the listener stopped".into(),
            })
        })
    }
}

impl Drop for UnixLinkListener {
    fn drop(&mut self) {
        self.task.abort();
        remove_socket(&self.path);
    }
}

fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Whether one end of a link is down, and why; wakes the writer task and the receiver.
#[derive(Debug, Default)]
struct LinkState {
    down: AtomicBool,
    reason: Mutex<Option<String>>,
    notify: Notify,
    receiver: Mutex<Option<Waker>>,
}

impl LinkState {
    fn shut(&self, reason: &str) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(reason.to_owned());
            }
        }
        self.down.store(true, Ordering::Release);
        self.notify.notify_waiters();
        let waker = self
            .receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "link closed".to_owned())
    }

    async fn wait_down(&self) {
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

/// What the sink queues towards the writer task.
enum Cmd {
    Frame(Frame),
    Close(String),
}

/// Builds both halves of a link over an established stream and starts its writer.
fn make_conn(stream: UnixStream, config: &NetConfig, peer_addr: String, accepted: bool) -> Conn {
    let (read, write) = stream.into_split();
    let state = Arc::new(LinkState::default());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(writer(write, rx, state.clone()));
    let mut decoder = Decoder::new(config.max_frame);
    if accepted {
        decoder = decoder.with_first_frame_limit(config.max_first_frame);
    }
    Conn {
        sender: FrameSender::new(
            UnixSink {
                tx,
                state: state.clone(),
            },
            config.max_frame,
        ),
        receiver: FrameReceiver::new(UnixSource {
            read,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            decoder,
            state,
            peer: peer_addr.clone(),
            done: None,
        }),
        peer_addr,
    }
}

/// The sending side: a queue drained by the writer task.
struct UnixSink {
    tx: mpsc::UnboundedSender<Cmd>,
    state: Arc<LinkState>,
}

impl FrameSink for UnixSink {
    fn send(&self, frame: Frame) -> Result<(), NetError> {
        if self.state.is_down() {
            return Err(NetError::Closed {
                reason: self.state.reason(),
            });
        }
        self.tx.send(Cmd::Frame(frame)).map_err(|_| {
            self.state.shut("the link's writer has stopped");
            NetError::Closed {
                reason: self.state.reason(),
            }
        })
    }

    fn close(&self, reason: &str) {
        if self.state.is_down() {
            return;
        }
        // Queued before the state goes down, so the writer flushes it after the frames.
        let _ = self.tx.send(Cmd::Close(reason.to_owned()));
        self.state.shut(reason);
    }

    fn is_closed(&self) -> bool {
        self.state.is_down() || self.tx.is_closed()
    }
}

/// Drains the queue into the socket, a batch of coalesced frames per write round; ends the
/// stream after a close, when every sender is gone, or when the link goes down.
async fn writer(
    mut write: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    state: Arc<LinkState>,
) {
    let mut enc = Encoder::new();
    loop {
        let first = tokio::select! {
            biased;
            cmd = rx.recv() => cmd,
            _ = state.wait_down() => rx.try_recv().ok(),
        };
        let Some(first) = first else {
            let _ = write.shutdown().await;
            return;
        };
        let mut closing = push(first, &mut enc);
        while !closing && enc.queued() < BATCH_BYTES {
            let Ok(cmd) = rx.try_recv() else { break };
            closing = push(cmd, &mut enc);
        }
        let chunks = enc.take();
        if let Err(e) = write_chunks(&mut write, &chunks).await {
            state.shut(&format!("write failed: {e}"));
            return;
        }
        enc.reuse(chunks);
        if closing {
            let _ = write.shutdown().await;
            return;
        }
    }
}

fn push(cmd: Cmd, enc: &mut Encoder) -> bool {
    match cmd {
        Cmd::Frame(f) => {
            enc.push_frame(f);
            false
        }
        Cmd::Close(reason) => {
            enc.push_close(&reason);
            true
        }
    }
}

async fn write_chunks(write: &mut OwnedWriteHalf, chunks: &[Bytes]) -> std::io::Result<()> {
    for chunk in chunks {
        write.write_all(chunk).await?;
    }
    Ok(())
}

/// The receiving side: decodes frames out of the socket's bytes. All state lives here, so
/// a dropped `recv` loses nothing.
struct UnixSource {
    read: OwnedReadHalf,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    decoder: Decoder,
    state: Arc<LinkState>,
    peer: String,
    done: Option<String>,
}

impl UnixSource {
    /// Ends the link for good with `reason`.
    fn finish(&mut self, reason: String) {
        self.state.shut(&reason);
        self.start = 0;
        self.end = 0;
        self.done = Some(reason);
    }
}

impl FrameSource for UnixSource {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, NetError>> {
        loop {
            if let Some(reason) = &self.done {
                return Poll::Ready(Err(NetError::Closed {
                    reason: reason.clone(),
                }));
            }
            let mut input = &self.buf[self.start..self.end];
            let decoded = self.decoder.decode(&mut input);
            self.start = self.end - input.len();
            match decoded {
                Ok(Some(Decoded::Frame(f))) => return Poll::Ready(Ok(f)),
                Ok(Some(Decoded::Close(reason))) => {
                    self.finish(reason.clone());
                    return Poll::Ready(Err(NetError::Closed { reason }));
                }
                Ok(Some(Decoded::Striped { .. })) => {
                    // The decoder refuses striped headers unless allowed; not reached.
                    let err = NetError::Protocol {
                        peer: self.peer.clone(),
                        reason: "striped frame".into(),
                    };
                    self.finish(err.to_string());
                    return Poll::Ready(Err(err));
                }
                Ok(None) => {}
                Err(e) => {
                    let err = e.into_net_error(&self.peer);
                    self.finish(err.to_string());
                    return Poll::Ready(Err(err));
                }
            }
            // Register before checking, so a close racing with this poll wakes us.
            *self
                .state
                .receiver
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            if self.state.is_down() {
                let reason = self.state.reason();
                self.finish(reason.clone());
                return Poll::Ready(Err(NetError::Closed { reason }));
            }
            let mut rb = ReadBuf::new(&mut self.buf);
            match Pin::new(&mut self.read).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        let reason = if self.decoder.is_idle() {
                            "the peer ended the link"
                        } else {
                            "the peer ended the stream inside a frame"
                        };
                        self.finish(reason.to_owned());
                        return Poll::Ready(Err(NetError::Closed {
                            reason: reason.to_owned(),
                        }));
                    }
                    self.start = 0;
                    self.end = n;
                }
                Poll::Ready(Err(e)) => {
                    let reason = format!("read failed: {e}");
                    self.finish(reason.clone());
                    return Poll::Ready(Err(NetError::Closed { reason }));
                }
            }
        }
    }
}

impl Drop for UnixSource {
    fn drop(&mut self) {
        self.state.shut("the receiver was dropped");
    }
}
