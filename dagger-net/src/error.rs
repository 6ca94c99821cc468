//! The error type of every transport operation.

/// Why a transport operation failed.
///
/// Every error that ends a link ([`FrameReceiver::recv`](crate::FrameReceiver::recv)
/// returning `Err`) means the link is down for good; open a new one with
/// [`Transport::connect`](crate::Transport::connect).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The link is down: the peer closed it, dropped it, or the connection died.
    #[error("link closed: {reason}")]
    Closed {
        /// Why, as reported by the peer or by the local transport.
        reason: String,
    },
    /// The peer (or the address) refused the link, or the handshake did not finish.
    #[error("connection to {peer} refused: {reason}")]
    Refused {
        /// The address that was dialled, or the peer's address on the accepting side.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The TLS layer rejected the handshake (unknown certificate authority, missing client
    /// certificate, bad key, ...).
    #[error("TLS failure: {0}")]
    Tls(String),
    /// A frame longer than the configured limit was sent or received; a received one
    /// closes the link.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The length of the frame.
        len: u64,
        /// The limit in force ([`NetConfig::max_frame`](crate::NetConfig::max_frame)).
        limit: u64,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    Version {
        /// [`dagger_core::wire::PROTOCOL_VERSION`] of this process.
        ours: u32,
        /// The version announced by the peer.
        theirs: u32,
    },
    /// The peer sent bytes that are not a valid preamble or frame header.
    #[error("protocol violation by {peer}: {reason}")]
    Protocol {
        /// The peer's address.
        peer: String,
        /// What was wrong.
        reason: String,
    },
    /// An operating-system I/O error (binding a socket, reading a file, spawning a process).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An address could not be parsed, resolved or bound.
    #[error("bad address {addr}: {reason}")]
    Address {
        /// The address as given.
        addr: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A certificate, key or encoded identity could not be parsed or generated.
    #[error("bad identity: {0}")]
    Identity(String),
    /// The operation needs a tokio runtime and was called outside one.
    #[error("no tokio runtime is running on this thread")]
    NoRuntime,
    /// A worker's command line (`--dagger-worker ...`) is incomplete or malformed.
    #[error("bad worker arguments: {reason}")]
    WorkerArgs {
        /// What is missing or malformed.
        reason: String,
    },
}
