//! The messages that cross process boundaries, and their encoding.
//!
//! Every link starts with a [`Hello`] in each direction carrying [`PROTOCOL_VERSION`];
//! afterwards each frame is one postcard-encoded message. Frames are length-prefixed and
//! limited in size by the transport; decoding never panics on bad input.

use crate::error::{TaskError, WireError};
use crate::ids::{ChunkId, Incarnation, ProcId, TaskId, WorkerId};
use crate::proc::WorkerInfo;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
pub use serde_bytes::ByteBuf;
use std::borrow::Cow;

/// The version of this message set. Peers with another version are refused at the hello.
pub const PROTOCOL_VERSION: u32 = 7;

/// The first message on every link, in both directions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`PROTOCOL_VERSION`].
    pub version: u32,
    /// A fingerprint of the task functions registered in the sender's binary; processes
    /// of different binaries would disagree on what a task name means.
    pub registry_hash: u64,
    /// Who is speaking (the driver speaks as `WorkerId::DRIVER`).
    pub worker: WorkerId,
    /// Which incarnation of that worker (0 until the driver assigns one).
    pub incarnation: Incarnation,
    /// A fingerprint of the sender's executable (0: unknown). The driver refuses a worker
    /// of another build unless either side allowed mixed builds.
    pub build_id: u64,
    /// The sender was told that it may join a cluster of another build.
    pub allow_mixed_builds: bool,
}

/// Driver → worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// The answer to a joining worker: its id and incarnation, and the peers it may reach.
    Welcome {
        /// The id assigned to it.
        worker: WorkerId,
        /// Its incarnation.
        incarnation: Incarnation,
        /// The cluster's other workers.
        peers: Vec<PeerInfo>,
        /// How often the worker must send a heartbeat (the driver declares it lost when
        /// nothing is heard from it for its heartbeat timeout, a few intervals).
        heartbeat: std::time::Duration,
        /// Which of its log events the worker forwards to the driver
        /// ([`ToDriver::Log`]), as `tracing` filter directives (`RUST_LOG` syntax);
        /// empty: none.
        log_filter: String,
    },
    /// A batch of tasks to run.
    Run(Vec<RunTask>),
    /// Chunks the graph no longer needs.
    Release(Vec<ChunkId>),
    /// The driver wants a chunk's bytes (a `fetch` of a large result).
    Fetch(ChunkId),
    /// Keep a copy of a chunk, fetched from one of its holders (a worker being drained
    /// hands over what only it holds). Answered with [`ToDriver::Replicated`] once the copy
    /// is here, or once it cannot come.
    Replicate {
        /// The chunk.
        chunk: ChunkId,
        /// Its holders, in the order to ask them.
        from: Vec<WorkerId>,
    },
    /// A worker joined the cluster.
    PeerJoined(PeerInfo),
    /// A worker left the cluster.
    PeerLeft(WorkerId),
    /// Finish and exit.
    Shutdown,
}

/// Worker → driver. Every message carries the sender's incarnation (see [`Incarnation`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToDriver {
    /// A joining worker describes itself (its id and incarnation are filled by the driver).
    Join(WorkerInfo),
    /// Tasks that finished, in a batch, and the chunks that arrived since the last batch.
    Done {
        /// The sender's incarnation.
        incarnation: Incarnation,
        /// The finished tasks.
        tasks: Vec<TaskDone>,
        /// Chunks this worker received from peers.
        moves: Vec<MoveDone>,
        /// The sender's clock when it sent this, in nanoseconds (its own origin): the
        /// driver aligns the times of the batch with it.
        sent_ns: u64,
    },
    /// The answer to [`ToWorker::Fetch`].
    ChunkData {
        /// The sender's incarnation.
        incarnation: Incarnation,
        /// The chunk.
        chunk: ChunkId,
        /// Its bytes, or why they are not there.
        data: Result<ByteBuf, crate::MoveFailure>,
    },
    /// The answer to [`ToWorker::Replicate`]: the sender now holds a copy of the chunk,
    /// or why it could not get one.
    Replicated {
        /// The sender's incarnation.
        incarnation: Incarnation,
        /// The chunk.
        chunk: ChunkId,
        /// `Ok` once the copy is stored here.
        result: Result<(), crate::MoveFailure>,
    },
    /// Still alive.
    Heartbeat {
        /// The sender's incarnation.
        incarnation: Incarnation,
    },
    /// Log events of the worker, forwarded for the driver's subscriber (rate-limited).
    Log {
        /// The sender's incarnation.
        incarnation: Incarnation,
        /// The events, oldest first.
        lines: Vec<LogLine>,
        /// Events dropped by the rate limit since the previous batch.
        dropped: u64,
    },
    /// Watched tasks ([`RunTask::watch`]) are about to run: sent at once, before their
    /// functions start, so that a crash of the process afterwards is attributed to them.
    Started {
        /// The sender's incarnation.
        incarnation: Incarnation,
        /// The tasks.
        tasks: Vec<TaskId>,
    },
}

/// Worker ↔ worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Ask for a chunk.
    Want(ChunkId),
    /// A chunk, or why it is not there.
    Chunk {
        /// The chunk.
        chunk: ChunkId,
        /// Its payload.
        payload: ChunkPayload,
    },
    /// Sent ahead of time by a producer to a consumer it knows of.
    Push {
        /// The chunk.
        chunk: ChunkId,
        /// Its payload.
        payload: ChunkPayload,
    },
    /// The receiver of a [`ChunkPayload::Segment`] is done with that segment: its sender may
    /// write into it again. Carries the segment's name.
    SegmentDone(String),
}

/// How a chunk's bytes travel between workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ChunkPayload {
    /// Inline bytes over the link.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    /// In a shared-memory object on the same host; the receiver maps and unlinks it.
    Shm {
        /// The object's name under /dev/shm.
        name: String,
        /// Its length in bytes.
        len: u64,
    },
    /// The sender does not hold it.
    Missing(String),
    /// In the first `len` bytes of a reusable shared-memory segment of `size` bytes that the
    /// sender lends to the receiver until the receiver answers [`PeerMsg::SegmentDone`]. The
    /// receiver maps (and unlinks) the segment the first time it sees its name and keeps
    /// that mapping for later chunks in the same segment.
    Segment {
        /// The segment's name under /dev/shm.
        name: String,
        /// The segment's size in bytes.
        size: u64,
        /// How many of its first bytes are the chunk.
        len: u64,
    },
    /// The chunk will not come (its task failed here); unlike [`ChunkPayload::Missing`],
    /// asking again is pointless.
    Gone(crate::MoveFailure),
}

/// How to reach a peer worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its id.
    pub worker: WorkerId,
    /// Its incarnation.
    pub incarnation: Incarnation,
    /// Its address for peer links.
    pub addr: String,
    /// Its host name (same host: shared-memory moves are possible).
    pub host: String,
}

/// One task to run, with where to find its inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunTask {
    /// The task.
    pub task: TaskId,
    /// Its function's registered name (borrowed on the sending side when the name is a
    /// compile-time one; always owned after decoding).
    pub func: Cow<'static, str>,
    /// Its arguments, in order.
    pub args: Vec<RunArg>,
    /// The processor to run on.
    pub proc: ProcId,
    /// The task's scope admits every thread processor of this worker (and `proc` is
    /// one): the worker may run it on whichever of them is free first.
    pub any_thread: bool,
    /// Nothing waits for this task's report: no client holds a handle to it, and its
    /// dependents are dispatched already (they get its result from the worker). The
    /// worker may report it with its next batch, a little later, instead of at once, so
    /// a chain of such tasks does not wake the driver for every link.
    pub quiet: bool,
    /// Results no larger than this many bytes are sent back inline with the done message;
    /// larger ones stay on the worker as a chunk.
    pub inline_limit: u32,
    /// Workers to push the result to as soon as it exists (consumers already placed).
    pub push_to: Vec<WorkerId>,
    /// The task is suspected of crashing workers: the worker reports
    /// [`ToDriver::Started`] before running it.
    pub watch: bool,
    /// Which dispatch of the task this is (1 for the first), for logs and traces.
    pub attempt: u32,
}

/// One argument of a task to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RunArg {
    /// An encoded value.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A chunk, and the workers that hold a copy (first one preferred). The worker may
    /// also already hold it, or receive it by a push.
    Chunk {
        /// The chunk.
        chunk: ChunkId,
        /// Who holds it.
        from: Vec<WorkerId>,
    },
    /// A gathered argument: the parts, in order, each an encoded `T`; the function
    /// receives them as one encoded `Vec<T>`.
    Gather(Vec<RunPart>),
}

/// One part of a gathered argument ([`RunArg::Gather`]); parts do not nest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RunPart {
    /// An encoded value.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A chunk, and the workers that hold a copy (first one preferred).
    Chunk {
        /// The chunk.
        chunk: ChunkId,
        /// Who holds it.
        from: Vec<WorkerId>,
    },
}

/// One finished task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskDone {
    /// The task.
    pub task: TaskId,
    /// Where it ran.
    pub proc: ProcId,
    /// How long its function ran, in nanoseconds.
    pub run_ns: u64,
    /// When it started, on the sender's clock (nanoseconds; see `ToDriver::Done::sent_ns`).
    pub started_ns: u64,
    /// Its result.
    pub outcome: Outcome,
}

/// One log event of a worker, forwarded to the driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its level: 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    pub level: u8,
    /// The module (or target) that logged it.
    pub target: String,
    /// Its message and fields, with the spans it happened in, as text.
    pub message: String,
}

/// One chunk a worker received from a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveDone {
    /// The chunk.
    pub chunk: ChunkId,
    /// The peer it came from.
    pub from: WorkerId,
    /// Its size.
    pub bytes: u64,
    /// Whether it came through shared memory (else inline over the link).
    pub shared_memory: bool,
    /// When it was asked for, on the receiver's clock (nanoseconds).
    pub started_ns: u64,
    /// When it arrived, on the same clock.
    pub finished_ns: u64,
}

/// What a task produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// A small result, inline.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A large result, kept on the worker as the task's chunk.
    Stored {
        /// Its encoded size.
        size: u64,
    },
    /// The task failed.
    Failed(TaskError),
}

/// Encodes a message into a new buffer of exactly the right size (one pass to size it,
/// one to write: large byte fields are copied once).
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Vec<u8> {
    // Encoding into a Vec cannot fail for these types (no maps with non-string keys,
    // no unsized sequences).
    let size = postcard::experimental::serialized_size(msg).unwrap_or(0);
    postcard::to_extend(msg, Vec::with_capacity(size)).unwrap_or_default()
}

/// The borrowed twin of [`PeerMsg`]'s chunk-carrying variants: same variant order, so the
/// bytes it encodes to decode as a [`PeerMsg`].
#[derive(Serialize)]
enum PeerMsgRef<'a> {
    #[allow(dead_code)]
    Want(ChunkId),
    Chunk {
        chunk: ChunkId,
        payload: PayloadRef<'a>,
    },
    Push {
        chunk: ChunkId,
        payload: PayloadRef<'a>,
    },
}

#[derive(Serialize)]
enum PayloadRef<'a> {
    Bytes(#[serde(with = "serde_bytes")] &'a [u8]),
}

/// Encodes `PeerMsg::Chunk` (or `PeerMsg::Push` when `push`) carrying `bytes` inline,
/// copying `bytes` once, straight into the frame.
pub fn encode_chunk_bytes(push: bool, chunk: ChunkId, bytes: &[u8]) -> Vec<u8> {
    let payload = PayloadRef::Bytes(bytes);
    if push {
        encode(&PeerMsgRef::Push { chunk, payload })
    } else {
        encode(&PeerMsgRef::Chunk { chunk, payload })
    }
}

/// The head of the frame [`encode_chunk_bytes`] makes for `len` bytes: that frame is this
/// head followed by the bytes, so a sender may hand the bytes to its link as they lie
/// instead of copying them into the frame.
pub fn encode_chunk_head(push: bool, chunk: ChunkId, len: usize) -> Vec<u8> {
    // The fields as postcard lays them out: the variant's index, the chunk, the payload's
    // variant (`Bytes`) and the byte string's length, each a varint.
    let variant: u32 = if push { 2 } else { 1 };
    encode(&(variant, chunk, 0u32, len as u64))
}

/// If `frame` is a `PeerMsg::Chunk` or `PeerMsg::Push` with inline bytes, returns the chunk
/// where in `frame` its bytes are, and whether it is a push, so a receiver can keep the frame instead of copying
/// the bytes out. `None` for any other frame (decode those with [`decode`]).
pub fn split_chunk_bytes(frame: &[u8]) -> Option<(ChunkId, std::ops::Range<usize>, bool)> {
    let (variant, rest) = postcard::take_from_bytes::<u32>(frame).ok()?;
    if variant != 1 && variant != 2 {
        return None;
    }
    let (chunk, rest) = postcard::take_from_bytes::<ChunkId>(rest).ok()?;
    let (payload, rest) = postcard::take_from_bytes::<u32>(rest).ok()?;
    if payload != 0 {
        return None;
    }
    let (len, rest) = postcard::take_from_bytes::<u64>(rest).ok()?;
    if len != rest.len() as u64 {
        return None;
    }
    let start = frame.len() - rest.len();
    Some((chunk, start..frame.len(), variant == 2))
}

/// Encodes a message, appending to `buf`.
pub fn encode_into<T: Serialize>(msg: &T, buf: &mut Vec<u8>) {
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(msg, taken).unwrap_or_default();
}

/// Decodes one message; never panics on bad input.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    postcard::from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let m = ToWorker::Run(vec![RunTask {
            task: TaskId(7),
            func: "inc".into(),
            args: vec![
                RunArg::Value(encode(&41u64)),
                RunArg::Chunk {
                    chunk: ChunkId(3),
                    from: vec![WorkerId(2)],
                },
                RunArg::Gather(vec![
                    RunPart::Value(encode(&1u64)),
                    RunPart::Chunk {
                        chunk: ChunkId(4),
                        from: vec![WorkerId(3)],
                    },
                ]),
            ],
            proc: ProcId::new(WorkerId(1), 2),
            any_thread: true,
            quiet: false,
            inline_limit: 1024,
            push_to: vec![],
            watch: true,
            attempt: 1,
        }]);
        let bytes = encode(&m);
        assert_eq!(decode::<ToWorker>(&bytes).unwrap(), m);
        // Truncations and garbage give errors, never panics.
        for n in 0..bytes.len() {
            assert!(decode::<ToWorker>(&bytes[..n]).is_err());
        }
        assert!(decode::<ToWorker>(&[0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn borrowed_chunk_frames_decode_as_peer_messages_and_split_without_copy() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for push in [false, true] {
            let frame = encode_chunk_bytes(push, ChunkId(77), &bytes);
            let expected = if push {
                PeerMsg::Push {
                    chunk: ChunkId(77),
                    payload: ChunkPayload::Bytes(bytes.clone()),
                }
            } else {
                PeerMsg::Chunk {
                    chunk: ChunkId(77),
                    payload: ChunkPayload::Bytes(bytes.clone()),
                }
            };
            assert_eq!(frame, encode(&expected));
            assert_eq!(decode::<PeerMsg>(&frame).unwrap(), expected);
            let (chunk, range, is_push) = split_chunk_bytes(&frame).unwrap();
            assert_eq!(chunk, ChunkId(77));
            assert_eq!(is_push, push);
            assert_eq!(&frame[range], &bytes[..]);
        }
        // Other messages and damaged frames are not split.
        assert!(split_chunk_bytes(&encode(&PeerMsg::Want(ChunkId(3)))).is_none());
        // A chunk's head followed by its bytes is the frame `encode_chunk_bytes` makes.
        for len in [0usize, 1, 127, 128, 300, 1 << 14, (1 << 21) + 5] {
            for push in [false, true] {
                for chunk in [ChunkId(0), ChunkId(127), ChunkId(u64::MAX)] {
                    let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                    let mut joined = encode_chunk_head(push, chunk, len);
                    joined.extend_from_slice(&data);
                    assert_eq!(joined, encode_chunk_bytes(push, chunk, &data), "len {len}");
                }
            }
        }
        let missing = PeerMsg::Chunk {
            chunk: ChunkId(3),
            payload: ChunkPayload::Missing("x".into()),
        };
        assert!(split_chunk_bytes(&encode(&missing)).is_none());
        let frame = encode_chunk_bytes(false, ChunkId(9), &bytes);
        assert!(split_chunk_bytes(&frame[..frame.len() - 1]).is_none());
        assert!(split_chunk_bytes(&[]).is_none());
    }

    #[test]
    fn segment_messages_round_trip_and_keep_older_encodings() {
        let msgs = [
            PeerMsg::Chunk {
                chunk: ChunkId(5),
                payload: ChunkPayload::Segment {
                    name: "dagger-1-2-3".into(),
                    size: 8 << 20,
                    len: 12345,
                },
            },
            PeerMsg::SegmentDone("dagger-1-2-3".into()),
            PeerMsg::Chunk {
                chunk: ChunkId(6),
                payload: ChunkPayload::Gone(crate::MoveFailure::SourceFailed),
            },
        ];
        for m in msgs {
            let bytes = encode(&m);
            assert_eq!(decode::<PeerMsg>(&bytes).unwrap(), m);
            assert!(split_chunk_bytes(&bytes).is_none());
            for n in 0..bytes.len() {
                assert!(decode::<PeerMsg>(&bytes[..n]).is_err());
            }
        }
        // The variants that existed before keep their tags.
        assert_eq!(encode(&PeerMsg::Want(ChunkId(1)))[0], 0);
        let shm = PeerMsg::Push {
            chunk: ChunkId(1),
            payload: ChunkPayload::Shm {
                name: "dagger-x".into(),
                len: 1,
            },
        };
        assert_eq!(&encode(&shm)[..3], &[2, 1, 1]);
    }
}
