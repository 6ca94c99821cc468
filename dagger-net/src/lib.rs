//! Transports of dagger-rs: how processes of a cluster exchange frames.
//!
//! A [`Transport`] opens [`Conn`]s: ordered, reliable, message-oriented links carrying
//! opaque [`Frame`]s in both directions. Two transports share one API:
//!
//! - [`QuicTransport`] (feature `quic`, on by default): QUIC over UDP with mutual TLS. Every
//!   process holds an [`Identity`] issued by the cluster's [`ClusterCa`]; a peer without a
//!   certificate chaining to that CA is refused. After the TLS handshake both sides exchange
//!   a preamble (`b"DAGR"` and [`dagger_core::wire::PROTOCOL_VERSION`]); a mismatch fails
//!   with [`NetError::Version`]. Two processes of one host then move their frames
//!   through a pair of shared-memory rings instead (the QUIC connection stays open to
//!   watch the peer's liveness), unless [`NetConfig::same_host_rings`] is off.
//! - [`MemTransport`]: an in-process hub over tokio channels, for tests and simulations. It
//!   is a real transport (ordering, frame limit, close semantics), not a mock.
//!
//! The [`launch`] module starts worker processes, on this host or elsewhere (through
//! `ssh` or Slurm's `srun`, or by hand), behind one [`launch::Launcher`] trait, and tells a
//! process whether it was started as a worker.
//!
//! # Implementing a transport
//!
//! A transport outside this crate implements [`Transport`] and [`Listener`], and builds
//! each [`Conn`] from its own halves: a [`FrameSink`] wrapped by [`FrameSender::new`] (which
//! enforces the frame limit, then makes one virtual call per frame) and a [`FrameSource`]
//! wrapped by [`FrameReceiver::new`]. A byte-stream transport can reuse this crate's
//! framing, [`codec`]. The `conformance` module (feature `conformance`)
//! checks an implementation against the contract below.
//!
//! # Contract
//!
//! - Frames are delivered whole, in the order they were sent, or not at all: after an
//!   error the link is down and nothing more arrives.
//! - [`FrameSender::send`] never blocks and never awaits; the queue towards the network is
//!   unbounded, so a producer much faster than the link grows memory. Flow control is the
//!   caller's business (the scheduler bounds what it has in flight).
//! - A frame longer than [`NetConfig::max_frame`] is refused by `send`; one received from a
//!   misbehaving peer closes that link (never the process) before anything is allocated.
//! - On a link a listener accepted, the first frame (the peer's hello) is limited to
//!   [`NetConfig::max_first_frame`] (4 KiB by default); a larger one closes the link with
//!   [`NetError::FrameTooLarge`] on the accepting side.
//! - Not guaranteed: delivery of frames still queued when the process exits, or when the
//!   link dies; that a frame was *processed* by the peer (acknowledge at a higher level).

#![warn(missing_docs)]
#![cfg_attr(not(feature = "quic"), allow(rustdoc::broken_intra_doc_links))]

pub mod bench;
#[cfg(feature = "quic")]
mod ca;
pub mod codec;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod error;
mod identity;
pub mod launch;
mod link;
mod mem;
#[cfg(feature = "quic")]
mod quic;
#[cfg(all(feature = "quic", target_os = "linux"))]
mod ring;

#[cfg(feature = "quic")]
pub use ca::{ClusterCa, SERVER_NAME};
pub use error::NetError;
pub use identity::Identity;
pub use link::{Doorbell, FrameReceiver, FrameSender, FrameSink, FrameSource};
pub use mem::MemTransport;
#[cfg(feature = "quic")]
pub use quic::QuicTransport;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// One message on a link: opaque bytes, at most [`NetConfig::max_frame`] long.
pub type Frame = Vec<u8>;

/// A boxed, sendable future (the return type of the object-safe transport traits).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The default of [`NetConfig::max_first_frame`]: 4 KiB.
pub const DEFAULT_MAX_FIRST_FRAME: usize = 4096;

/// Settings shared by every link of a transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The longest frame accepted, in bytes (default 1 GiB). Larger frames are refused by
    /// `send`, and a peer sending one has its link closed.
    pub max_frame: usize,
    /// The longest *first* frame accepted on a link this side accepted (default 4 KiB):
    /// the peer's hello, sent before it has said who it is. A larger one is refused with
    /// [`NetError::FrameTooLarge`] and closes the link, so a peer that merely holds a valid
    /// certificate cannot make a listener buffer a frame of up to `max_frame` bytes.
    /// Frames after the first are limited by `max_frame` only.
    pub max_first_frame: usize,
    /// How often an idle QUIC link sends a keep-alive packet (default 1 s).
    pub keep_alive: Duration,
    /// How long a QUIC link may stay silent before it is declared dead (default 10 s); also
    /// bounds the handshake. Must be longer than `keep_alive`.
    pub idle_timeout: Duration,
    /// Whether QUIC links between two processes of one host switch to shared-memory rings
    /// after the handshake (default true; Linux only). Also off in a process whose
    /// environment sets `DAGGER_RINGS=0` or `DAGGER_SHM=0`. See [`QuicTransport`].
    pub same_host_rings: bool,
    /// The capacity of each ring of a same-host link, in bytes (default 1 MiB; rounded up
    /// to a power of two between 4 KiB and 1 GiB). Frames larger than this stream
    /// through the ring in pieces. The dialling side's setting applies.
    pub ring_capacity: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            max_frame: 1 << 30,
            max_first_frame: DEFAULT_MAX_FIRST_FRAME,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            same_host_rings: true,
            ring_capacity: 1 << 20,
        }
    }
}

/// An open link to one peer.
#[derive(Debug)]
pub struct Conn {
    /// Sends frames to the peer (cloneable, usable from any thread).
    pub sender: FrameSender,
    /// Receives the peer's frames, in order.
    pub receiver: FrameReceiver,
    /// The peer's address as this side sees it (`ip:port`, or `mem:<n>`).
    pub peer_addr: String,
}

/// A way to open links: listen for peers, or dial one.
///
/// Object-safe, so a runtime can hold a `Box<dyn Transport>` chosen at run time.
pub trait Transport: Send + Sync + 'static {
    /// Starts listening on `addr` (for QUIC `ip:port`, port 0 picks a free one; for the
    /// in-memory transport `mem:<n>`, `mem:0` picks a free name). The returned listener's
    /// [`Listener::local_addr`] is the address peers should dial.
    fn listen<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Box<dyn Listener>, NetError>>;

    /// Dials `addr` and completes the handshake (TLS and preamble for QUIC). Costs one
    /// QUIC handshake plus one preamble round trip.
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Conn, NetError>>;

    /// A short name for logs (`"quic"`, `"mem"`).
    fn name(&self) -> &'static str;
}

/// A listening endpoint that yields incoming links.
///
/// Dropping it stops accepting; links already accepted stay open.
pub trait Listener: Send + Sync {
    /// The address peers should dial to reach this listener.
    fn local_addr(&self) -> String;

    /// Waits for the next peer that completed the handshake. Peers that fail it (bad
    /// certificate, wrong version, malformed preamble) are logged with `tracing::warn!`
    /// and skipped. Returns `Err(NetError::Closed)` only when the listener can accept no
    /// more (its endpoint shut down). Cancel-safe.
    fn accept(&mut self) -> BoxFuture<'_, Result<Conn, NetError>>;
}

#[cfg(test)]
mod tests;
