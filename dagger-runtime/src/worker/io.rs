//! What goes in and out of the worker core besides decoded messages: link keys, frames to
//! send and actions for the shell.

use dagger_core::wire::{self, ChunkPayload, ToDriver};
use dagger_core::{ChunkId, ProcId, TaskId, WorkerId};
use std::borrow::Cow;
use std::fmt;
use thiserror::Error;

/// The bytes of one chunk, as the shell holds them.
///
/// The core never looks at the bytes beyond their length; it only clones handles to them
/// (so cloning must be cheap: an `Arc`, or a `Vec` in tests) and makes one from the inline
/// bytes of a message (`From<Vec<u8>>`).
///
/// A shell may hold a chunk in a device's memory: [`device_len`](ChunkData::device_len)
/// then says so, and the core never reads such a chunk's bytes when a task finishes (its
/// result is reported as stored, never inline), only when a peer or the driver asks for
/// it (`as_ref` then copies it to the host once).
pub trait ChunkData: AsRef<[u8]> + Clone + From<Vec<u8>> + Send + Sync + 'static {
    /// The chunk's length in a device's memory, if it lives there; `None` (the default)
    /// for host bytes.
    fn device_len(&self) -> Option<u64> {
        None
    }
}

impl ChunkData for Vec<u8> {}

/// One peer link, named by the shell: the shell picks a fresh key for every link it opens
/// (after [`Action::Connect`]) or accepts, and never reuses one.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct LinkKey(pub u64);

impl fmt::Display for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link-{}", self.0)
    }
}

/// Where a frame goes.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Dest {
    /// The link to the driver.
    Driver,
    /// A peer link; the core emits frames only to links it was told are up. A frame for a
    /// link that closed meanwhile is dropped by the shell.
    Link(LinkKey),
}

/// One frame to send. [`Transmit::into_frame`] encodes it (with `dagger_core::wire`); a
/// shell that keeps the core under a lock calls it after releasing the lock, so a large
/// batch of finished tasks is not encoded while processor threads wait.
#[derive(Clone, PartialEq, Debug)]
pub struct Transmit {
    /// Where to.
    pub to: Dest,
    /// `Some(chunk)` when the frame answers a request for `chunk` with its bytes (a peer's
    /// want or the driver's fetch): if the link refuses it as too large, the shell reports
    /// that with [`WorkerState::handle_send_too_large`](super::WorkerState::handle_send_too_large)
    /// so the requester is told instead of waiting.
    pub chunk: Option<ChunkId>,
    pub(crate) body: Body,
}

/// A frame's contents: already encoded, a head followed by a chunk's bytes as the store
/// holds them, or a message to the driver encoded on demand.
#[derive(Clone, PartialEq, Debug)]
pub(crate) enum Body {
    Encoded(Vec<u8>),
    Parts(Vec<u8>, Tail),
    Driver(ToDriver),
}

impl From<Vec<u8>> for Body {
    fn from(frame: Vec<u8>) -> Self {
        Body::Encoded(frame)
    }
}

/// The bytes a frame ends with when they are a chunk's as this worker holds them: shared
/// with the store, not copied into the frame.
#[derive(Clone)]
pub struct Tail(std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>);

impl Tail {
    pub(crate) fn new<B: ChunkData>(bytes: B) -> Self {
        Tail(std::sync::Arc::new(bytes))
    }
}

impl AsRef<[u8]> for Tail {
    fn as_ref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl PartialEq for Tail {
    fn eq(&self, other: &Self) -> bool {
        self.as_ref() == other.as_ref()
    }
}

impl fmt::Debug for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tail({} bytes)", self.as_ref().len())
    }
}

impl Transmit {
    /// The encoded frame. Costs the encoding of a message to the driver (one pass to size
    /// it, one to write), and a copy of a chunk's bytes for a frame that carries them (see
    /// [`into_parts`](Self::into_parts), which does not copy).
    pub fn into_frame(self) -> Vec<u8> {
        match self.into_parts() {
            (frame, None) => frame,
            (mut head, Some(tail)) => {
                head.extend_from_slice(tail.as_ref());
                head
            }
        }
    }

    /// The frame as its head and, for a frame that carries a large chunk's bytes, those
    /// bytes as the store holds them: the frame is the head followed by them. A shell
    /// hands both to its link (`FrameSender::send_parts`) so the bytes are not copied.
    pub fn into_parts(self) -> (Vec<u8>, Option<Tail>) {
        match self.body {
            Body::Encoded(frame) => (frame, None),
            Body::Parts(head, tail) => (head, Some(tail)),
            Body::Driver(msg) => (wire::encode(&msg), None),
        }
    }
}

/// How a frame that is not an answer on a known link reaches a peer.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Route {
    /// On this link (the one a want came on).
    Link(LinkKey),
    /// On this worker's own link to the peer, opened first if needed.
    Peer(WorkerId),
}

/// A task whose inputs are all here: the shell runs it on its processor and reports the
/// result with [`WorkerState::handle_task_finished`](super::WorkerState::handle_task_finished).
#[derive(Clone, Debug)]
pub struct StartTask<B> {
    /// The task.
    pub task: TaskId,
    /// The registered name of its function.
    pub func: Cow<'static, str>,
    /// The processor to run it on (its `index` among this worker's processors).
    pub proc: ProcId,
    /// It may run on any thread processor of this worker instead (its scope admits them
    /// all): the shell picks one that is free now, and reports it with
    /// [`WorkerState::handle_task_finished_on`](super::WorkerState::handle_task_finished_on).
    pub any_thread: bool,
    /// Its arguments, in order.
    pub args: Vec<B>,
    /// Which dispatch of the task this is (1 for the first).
    pub attempt: u32,
}

/// A chunk to copy into shared memory for a peer on this host. The shell writes it (into a
/// segment it lends to `peer` for an answer, or a one-shot object for a push) and hands
/// this back with [`WorkerState::handle_shm_written`](super::WorkerState::handle_shm_written).
#[derive(Clone, Debug)]
pub struct ShmWrite<B> {
    /// The peer that will read it.
    pub peer: WorkerId,
    /// How the frame naming the object reaches the peer.
    pub route: Route,
    /// The chunk.
    pub chunk: ChunkId,
    /// Whether it is a push (a replica the peer keeps; never in a lent segment) or the
    /// answer to a want.
    pub push: bool,
    /// The bytes.
    pub bytes: B,
}

/// Something only the shell can do.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Action<B> {
    /// Run a task.
    Start(StartTask<B>),
    /// Open a link to a peer at `addr`; report
    /// [`WorkerState::handle_link_up`](super::WorkerState::handle_link_up) or
    /// [`WorkerState::handle_connect_failed`](super::WorkerState::handle_connect_failed).
    Connect {
        /// The peer.
        peer: WorkerId,
        /// Its address for peer links.
        addr: String,
    },
    /// Copy a chunk into shared memory for a peer.
    WriteShm(ShmWrite<B>),
    /// A peer sent a chunk in shared memory (`payload` is `ChunkPayload::Shm` or
    /// `ChunkPayload::Segment`): map it and report the bytes (or why not) with
    /// [`WorkerState::handle_chunk_received`](super::WorkerState::handle_chunk_received),
    /// passing `push` back. A segment is lent by `from`: when the bytes are dropped, or
    /// cannot be mapped, hand it back with
    /// [`WorkerState::handle_segment_released`](super::WorkerState::handle_segment_released).
    ReadShm {
        /// The peer that sent it.
        from: WorkerId,
        /// The chunk.
        chunk: ChunkId,
        /// Whether to keep it (a push) or only hand it to the tasks waiting for it.
        push: bool,
        /// Where it is.
        payload: ChunkPayload,
    },
    /// A peer is done with a segment this worker lent it: it may be written again.
    SegmentReturned {
        /// The peer.
        peer: WorkerId,
        /// The segment's name.
        name: String,
    },
    /// A peer left the cluster: drop what the shell keeps for it (segments lent to it).
    ForgetPeer(WorkerId),
    /// Close a peer link (its peer left, or was replaced).
    CloseLink(LinkKey),
    /// The driver asked this worker to finish: stop serving.
    Shutdown,
}

/// Why a link a peer opened was refused at its hello.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PeerRefused {
    /// The peer speaks another protocol version.
    #[error("the peer speaks protocol version {theirs}, this worker {ours}")]
    Version {
        /// This worker's version.
        ours: u32,
        /// The peer's.
        theirs: u32,
    },
    /// The peer runs another build of the executable (and neither side allows mixing).
    #[error("the peer's build ({theirs:#x}) differs from this worker's ({ours:#x})")]
    Build {
        /// This worker's build id.
        ours: u64,
        /// The peer's.
        theirs: u64,
    },
    /// The peer runs a binary with other task functions.
    #[error("the peer's task registry ({theirs:#x}) differs from this worker's ({ours:#x})")]
    Registry {
        /// This worker's fingerprint.
        ours: u64,
        /// The peer's.
        theirs: u64,
    },
    /// The shell already registered a link with this key.
    #[error("{link} is already registered")]
    DuplicateLink {
        /// The key.
        link: LinkKey,
    },
}
