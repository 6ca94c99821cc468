//! A conformance suite for [`Transport`] implementations (feature `conformance`).
//!
//! Each check is an `async fn` taking a [`Subject`] — a factory of transports plus a way
//! to name fresh listening addresses — that opens real links and checks one clause of the
//! contract written in the [crate documentation](crate#contract). [`run_all`] runs every
//! check in turn. The suite asserts nothing about speed; each check gives up after
//! [`Subject::patience`] and reports [`Failure::Stalled`] rather than hanging.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dagger_net::conformance::Failure> {
//! use dagger_net::conformance::{run_all, Subject};
//! use dagger_net::{MemTransport, NetConfig, Transport};
//! use std::sync::Arc;
//!
//! let config = NetConfig { max_frame: 1 << 20, ..NetConfig::default() };
//! let hub = MemTransport::with_config(config.clone());
//! let subject = Subject::new(
//!     move || Arc::new(hub.clone()) as Arc<dyn Transport>,
//!     || "mem:0".to_owned(),
//!     &config,
//! );
//! run_all(&subject).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Run it inside a multi-threaded tokio runtime (one check sends from a plain thread).
//! Keep the subject's `max_frame` small (1 MiB or so): one check sends a frame of exactly
//! that size.

use crate::{Conn, Frame, NetConfig, NetError, Transport};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What the suite tests: how to make transports and where they listen.
#[derive(Clone)]
pub struct Subject {
    make: Arc<dyn Fn() -> Arc<dyn Transport> + Send + Sync>,
    listen_addr: Arc<dyn Fn() -> String + Send + Sync>,
    max_frame: usize,
    max_first_frame: usize,
    patience: Duration,
}

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subject")
            .field("max_frame", &self.max_frame)
            .field("max_first_frame", &self.max_first_frame)
            .field("patience", &self.patience)
            .finish_non_exhaustive()
    }
}

impl Subject {
    /// A subject whose transports come from `make` and listen on addresses from
    /// `listen_addr`, configured with `config` (the suite reads its `max_frame` and
    /// `max_first_frame`).
    ///
    /// Transports made by two calls of `make` must reach each other's listeners (for an
    /// in-process transport: clones of one hub). `listen_addr` is called once per
    /// listener and must name a free address each time (`127.0.0.1:0`, `mem:0`, a new
    /// socket path).
    pub fn new(
        make: impl Fn() -> Arc<dyn Transport> + Send + Sync + 'static,
        listen_addr: impl Fn() -> String + Send + Sync + 'static,
        config: &NetConfig,
    ) -> Self {
        Subject {
            make: Arc::new(make),
            listen_addr: Arc::new(listen_addr),
            max_frame: config.max_frame,
            max_first_frame: config.max_first_frame.min(config.max_frame),
            patience: Duration::from_secs(60),
        }
    }

    /// How long one check may take before it is reported as [`Failure::Stalled`]
    /// (default 60 s).
    pub fn patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    fn transport(&self) -> Arc<dyn Transport> {
        (self.make)()
    }

    fn addr(&self) -> String {
        (self.listen_addr)()
    }

    /// Opens a link between two transports of the subject: `(dialler, accepted)`. When
    /// `hello` is true the dialler's first frame (one byte) has already been received.
    async fn pair(&self, check: &'static str, hello: bool) -> Result<(Conn, Conn), Failure> {
        let (server, client) = (self.transport(), self.transport());
        let mut listener = server.listen(&self.addr()).await.map_err(net(check))?;
        let target = listener.local_addr();
        let (a, b) = tokio::join!(client.connect(&target), listener.accept());
        let (a, mut b) = (a.map_err(net(check))?, b.map_err(net(check))?);
        if hello {
            a.sender.send(vec![0]).map_err(net(check))?;
            expect_frame(check, &mut b, &[0]).await?;
        }
        Ok((a, b))
    }
}

/// A clause of the transport contract that the subject broke.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The transport behaved against the contract.
    #[error("{check}: {detail}")]
    Violated {
        /// The check that failed.
        check: &'static str,
        /// What was expected and what happened.
        detail: String,
    },
    /// An operation that should have succeeded failed.
    #[error("{check}: unexpected transport error: {source}")]
    Net {
        /// The check that failed.
        check: &'static str,
        /// The error.
        #[source]
        source: NetError,
    },
    /// The check did not finish within the subject's patience (a frame or an error that
    /// should have arrived never did).
    #[error("{check}: no outcome within {patience:?}")]
    Stalled {
        /// The check that stalled.
        check: &'static str,
        /// The patience in force.
        patience: Duration,
    },
}

fn net(check: &'static str) -> impl Fn(NetError) -> Failure {
    move |source| Failure::Net { check, source }
}

fn violated(check: &'static str, detail: impl Into<String>) -> Failure {
    Failure::Violated {
        check,
        detail: detail.into(),
    }
}

/// A receive's outcome for a message: frames by length, not contents.
fn outcome(r: &Result<Frame, NetError>) -> String {
    match r {
        Ok(f) => format!("a frame of {} bytes", f.len()),
        Err(e) => format!("the error {e:?}"),
    }
}

async fn expect_frame(check: &'static str, conn: &mut Conn, want: &[u8]) -> Result<(), Failure> {
    let got = conn.receiver.recv().await.map_err(net(check))?;
    if got != want {
        return Err(violated(
            check,
            format!(
                "received a frame of {} bytes, expected {} bytes{}",
                got.len(),
                want.len(),
                if got.len() == want.len() {
                    " (contents differ)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(())
}

/// Runs `body` under the subject's patience.
async fn guarded(
    subject: &Subject,
    check: &'static str,
    body: impl Future<Output = Result<(), Failure>>,
) -> Result<(), Failure> {
    tokio::time::timeout(subject.patience, body)
        .await
        .unwrap_or(Err(Failure::Stalled {
            check,
            patience: subject.patience,
        }))
}

/// The checks of the suite, by name, in the order [`run_all`] runs them.
pub const CHECKS: &[&str] = &[
    "ordered_delivery",
    "frames_up_to_the_limit",
    "oversized_send_is_refused",
    "first_frame_is_limited",
    "close_reason_reaches_the_peer",
    "peer_drop_is_an_error",
    "listener_accepts_several_links",
    "recv_is_cancel_safe",
    "frames_in_parts",
];

/// Runs every check, stopping at the first failure.
pub async fn run_all(subject: &Subject) -> Result<(), Failure> {
    ordered_delivery(subject).await?;
    frames_up_to_the_limit(subject).await?;
    oversized_send_is_refused(subject).await?;
    first_frame_is_limited(subject).await?;
    close_reason_reaches_the_peer(subject).await?;
    peer_drop_is_an_error(subject).await?;
    listener_accepts_several_links(subject).await?;
    recv_is_cancel_safe(subject).await?;
    frames_in_parts(subject).await?;
    Ok(())
}

/// A deterministic frame: `side`, then `i`, then filler; lengths vary from 5 bytes to
/// about 5 KiB (including the coalescing sizes of stream transports).
fn numbered(side: u8, i: usize) -> Frame {
    let len = (i * 37) % 5000;
    let mut f = vec![side];
    f.extend_from_slice(&(i as u32).to_le_bytes());
    f.extend((0..len).map(|j| (j ^ i) as u8));
    f
}

/// Frames arrive whole and in order, both ways at once, including empty frames and frames
/// sent from a thread outside any runtime.
pub async fn ordered_delivery(subject: &Subject) -> Result<(), Failure> {
    const CHECK: &str = "ordered_delivery";
    const N: usize = 1000;
    guarded(subject, CHECK, async {
        let (mut a, mut b) = subject.pair(CHECK, true).await?;
        let a_send = a.sender.clone();
        let thread = std::thread::spawn(move || {
            for i in 0..N {
                a_send.send(numbered(1, i))?;
            }
            a_send.send(Vec::new())
        });
        for i in 0..N {
            b.sender.send(numbered(2, i)).map_err(net(CHECK))?;
        }
        b.sender.send(Vec::new()).map_err(net(CHECK))?;
        for i in 0..N {
            expect_frame(CHECK, &mut b, &numbered(1, i)).await?;
            expect_frame(CHECK, &mut a, &numbered(2, i)).await?;
        }
        expect_frame(CHECK, &mut b, &[]).await?;
        expect_frame(CHECK, &mut a, &[]).await?;
        thread
            .join()
            .map_err(|_| violated(CHECK, "the sending thread panicked"))?
            .map_err(net(CHECK))
    })
    .await
}

/// A frame of exactly the limit arrives intact, after and before small frames.
pub async fn frames_up_to_the_limit(subject: &Subject) -> Result<(), Failure> {
    const CHECK: &str = "frames_up_to_the_limit";
    guarded(subject, CHECK, async {
        let (a, mut b) = subject.pair(CHECK, true).await?;
        let big: Frame = (0..subject.max_frame).map(|j| (j * 31) as u8).collect();
        a.sender.send(vec![1]).map_err(net(CHECK))?;
        a.sender.send(big.clone()).map_err(net(CHECK))?;
        a.sender.send(vec![2]).map_err(net(CHECK))?;
        expect_frame(CHECK, &mut b, &[1]).await?;
        expect_frame(CHECK, &mut b, &big).await?;
        expect_frame(CHECK, &mut b, &[2]).await
    })
    .await
}

/// A frame sent in two parts ([`FrameSender::send_parts`](crate::FrameSender::send_parts))
/// arrives as the one frame of head and tail, in order among whole frames, for heads and
/// tails of any size up to the limit together; a pair over the limit is refused like
/// `send` refuses a frame, and the link stays usable.
pub async fn frames_in_parts(subject: &Subject) -> Result<(), Failure> {
    const CHECK: &str = "frames_in_parts";
    guarded(subject, CHECK, async {
        let (a, mut b) = subject.pair(CHECK, true).await?;
        let limit = subject.max_frame;
        let pattern = |len: usize, seed: usize| -> Frame {
            (0..len).map(|j| (j * 13 + seed) as u8).collect()
        };
        let mut sizes = vec![(0, 0), (3, 0), (0, 9), (7, 300), (11, 70_000), (2, 1 << 20)];
        sizes.retain(|(h, t)| h + t <= limit);
        sizes.push((5, limit - 5));
        for (i, &(h, t)) in sizes.iter().enumerate() {
            a.sender
                .send_parts(pattern(h, i), pattern(t, i + 100))
                .map_err(net(CHECK))?;
            a.sender.send(numbered(1, i)).map_err(net(CHECK))?;
        }
        for (i, &(h, t)) in sizes.iter().enumerate() {
            let mut whole = pattern(h, i);
            whole.extend_from_slice(&pattern(t, i + 100));
            expect_frame(CHECK, &mut b, &whole).await?;
            expect_frame(CHECK, &mut b, &numbered(1, i)).await?;
        }
        match a.sender.send_parts(vec![1; 2], vec![0; limit - 1]) {
            Err(NetError::FrameTooLarge { len: l, limit: m })
                if l == limit as u64 + 1 && m == limit as u64 => {}
            other => {
                return Err(violated(
                    CHECK,
                    format!(
                        "parts of {} bytes gave {other:?}, expected FrameTooLarge",
                        limit + 1
                    ),
                ))
            }
        }
        a.sender.send(vec![6; 2]).map_err(net(CHECK))?;
        expect_frame(CHECK, &mut b, &[6; 2]).await
    })
    .await
}

/// `send` refuses a frame over the limit with [`NetError::FrameTooLarge`] naming both
/// lengths, and the link stays usable.
pub async fn oversized_send_is_refused(subject: &Subject) -> Result<(), Failure> {
    const CHECK: &str = "oversized_send_is_refused";
    guarded(subject, CHECK, async {
        let (a, mut b) = subject.pair(CHECK, true).await?;
        let len = subject.max_frame + 1;
        match a.sender.send(vec![0; len]) {
            Err(NetError::FrameTooLarge { len: l, limit })
                if l == len as u64 && limit == subject.max_frame as u64 => {}
            other => {
                return Err(violated(
                    CHECK,
                    format!("send of {len} bytes gave {other:?}, expected FrameTooLarge"),
                ))
            }
        }
        if a.sender.is_closed() {
            return Err(violated(CHECK, "a refused send closed the link"));
        }
        a.sender.send(vec![5; 3]).map_err(net(CHECK))?;
        expect_frame(CHECK, &mut b, &[5; 3]).await
    })
    .await
}

/// On an accepted link the first frame is limited to `max_first_frame`: one of exactly
/// that size passes, one byte more is refused on the accepting side with
/// [`NetError::FrameTooLarge`], closing the link (the dialler's receiver ends too).
pub async fn first_frame_is_limited(subject: &Subject) -> Result<(), Failure> {
    const CHECK: &str = "first_frame_is_limited";
    guarded(subject, CHECK, async {
        let limit = subject.max_first_frame;
        let (a, mut b) = subject.pair(CHECK, false).await?;
        a.sender.send(vec![3; limit]).map_err(net(CHECK))?;
        expect_frame(CHECK, &mut b, &vec![3; limit]).await?;

        let (mut a, mut b) = subject.pair(CHECK, false).await?;
        a.sender.send(vec![4; limit + 1]).map_err(net(CHECK))?;
        match b.receiver.recv().await {
            Err(NetError::FrameTooLarge { len, limit: l })
                if len == limit as u64 + 1 && l == limit as u64 => {}
            other => {
                return Err(violated(
                    CHECK,
                    format!(
                        "a first frame of {} bytes gave {} on the accepting side, \
                         expected FrameTooLarge with limit {limit}",
                        limit + 1,
                        outcome(&other)
                    ),
                ))
            }
        }
        if !matches!(b.receiver.recv().await, Err(NetError::Closed { .. })) {
            return Err(violated(CHECK, "the link stayed up after a refused frame"));
        }
        match a.receiver.recv().await {
            Err(_) => Ok(()),
            Ok(f) => Err(violated(
                CHECK,
                format!("the dialler received a frame of {} bytes", f.len()),
            )),
        }
    })
    .await
}

/// Frames sent before `close` arrive, then the peer's receiver returns
/// [`NetError::Closed`] with the reason (and keeps returning `Closed`); the closing side's
/// sender refuses further frames and its own receiver ends.
pub async fn close_reason_reaches_the_peer(subject: &Subject) -> Result<(), Failure> {
    const CHECK: &str = "close_reason_reaches_the_peer";
    const REASON: &str = "conformance: done here";
    guarded(subject, CHECK, async {
        let (mut a, mut b) = subject.pair(CHECK, true).await?;
        for i in 0..10 {
            a.sender.send(numbered(1, i)).map_err(net(CHECK))?;
        }
        a.sender.close(REASON);
        a.sender.close("a second close is ignored");
        if !a.sender.is_closed() {
            return Err(violated(CHECK, "is_closed is false after close"));
        }
        if !matches!(a.sender.send(vec![1]), Err(NetError::Closed { .. })) {
            return Err(violated(CHECK, "send after close did not fail with Closed"));
        }
        for i in 0..10 {
            expect_frame(CHECK, &mut b, &numbered(1, i)).await?;
        }
        match b.receiver.recv().await {
            Err(NetError::Closed { reason }) if reason == REASON => {}
            other => {
                return Err(violated(
                    CHECK,
                    format!(
                        "the peer saw {}, expected Closed({REASON:?})",
                        outcome(&other)
                    ),
                ))
            }
        }
        if !matches!(b.receiver.recv().await, Err(NetError::Closed { .. })) {
            return Err(violated(
                CHECK,
                "recv after the close did not return Closed",
            ));
        }
        if !matches!(a.receiver.recv().await, Err(NetError::Closed { .. })) {
            return Err(violated(CHECK, "the closing side's receiver did not end"));
        }
        Ok(())
    })
    .await
}

/// Dropping one end (sender and receiver) makes the other end's receiver return an error,
/// in both directions.
pub async fn peer_drop_is_an_error(subject: &Subject) -> Result<(), Failure> {
    const CHECK: &str = "peer_drop_is_an_error";
    guarded(subject, CHECK, async {
        let (a, mut b) = subject.pair(CHECK, true).await?;
        a.sender.send(vec![7]).map_err(net(CHECK))?;
        drop(a);
        // Frames sent before the drop may or may not arrive; then the link must end.
        loop {
            match b.receiver.recv().await {
                Ok(f) if f == [7] => continue,
                Ok(f) => {
                    return Err(violated(
                        CHECK,
                        format!("unexpected frame of {} bytes", f.len()),
                    ))
                }
                Err(_) => break,
            }
        }
        let (mut a, b) = subject.pair(CHECK, true).await?;
        drop(b);
        match a.receiver.recv().await {
            Err(_) => Ok(()),
            Ok(f) => Err(violated(
                CHECK,
                format!("the dialler received {} bytes from a dropped peer", f.len()),
            )),
        }
    })
    .await
}

/// One listener accepts several links (from distinct transports), and each carries its
/// own frames.
pub async fn listener_accepts_several_links(subject: &Subject) -> Result<(), Failure> {
    const CHECK: &str = "listener_accepts_several_links";
    const LINKS: usize = 4;
    guarded(subject, CHECK, async {
        let server = subject.transport();
        let mut listener = server.listen(&subject.addr()).await.map_err(net(CHECK))?;
        let target = listener.local_addr();
        let mut diallers = Vec::new();
        let mut accepted = Vec::new();
        for i in 0..LINKS {
            let client = subject.transport();
            let (a, b) = tokio::join!(client.connect(&target), listener.accept());
            let (a, b) = (a.map_err(net(CHECK))?, b.map_err(net(CHECK))?);
            a.sender.send(vec![i as u8]).map_err(net(CHECK))?;
            diallers.push((client, a));
            accepted.push(b);
        }
        for (i, b) in accepted.iter_mut().enumerate() {
            expect_frame(CHECK, b, &[i as u8]).await?;
            b.sender.send(vec![i as u8; 2]).map_err(net(CHECK))?;
        }
        for (i, (_, a)) in diallers.iter_mut().enumerate() {
            expect_frame(CHECK, a, &[i as u8; 2]).await?;
        }
        Ok(())
    })
    .await
}

/// A `recv` future dropped before a frame arrived loses nothing: the next `recv` returns
/// the frame.
pub async fn recv_is_cancel_safe(subject: &Subject) -> Result<(), Failure> {
    const CHECK: &str = "recv_is_cancel_safe";
    guarded(subject, CHECK, async {
        let (a, mut b) = subject.pair(CHECK, true).await?;
        for _ in 0..3 {
            // Nothing was sent, so these must time out; each drops a pending `recv`.
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(5), b.receiver.recv()).await {
                return Err(violated(
                    CHECK,
                    format!("recv returned {} with nothing sent", outcome(&r)),
                ));
            }
        }
        let big: Frame = (0..64 << 10).map(|j| j as u8).collect();
        a.sender.send(big.clone()).map_err(net(CHECK))?;
        a.sender.send(vec![9]).map_err(net(CHECK))?;
        // Receive through many short-lived `recv` calls, so that some are dropped while
        // the large frame is partly received; both frames must still arrive, in order.
        let mut got = Vec::new();
        while got.len() < 2 {
            match tokio::time::timeout(Duration::from_micros(50), b.receiver.recv()).await {
                Ok(r) => got.push(r.map_err(net(CHECK))?),
                Err(_) => tokio::task::yield_now().await,
            }
        }
        if got[0] != big || got[1] != [9] {
            return Err(violated(
                CHECK,
                "frames received through cancelled recv calls differ",
            ));
        }
        Ok(())
    })
    .await
}
