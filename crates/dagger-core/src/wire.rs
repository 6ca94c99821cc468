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

/// The version of this message set. Peers with another version are refused at the hello.
pub const PROTOCOL_VERSION: u32 = 1;

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
    },
    /// A batch of tasks to run.
    Run(Vec<RunTask>),
    /// Chunks the graph no longer needs.
    Release(Vec<ChunkId>),
    /// The driver wants a chunk's bytes (a `fetch` of a large result).
    Fetch(ChunkId),
    /// Copy a chunk to another worker (draining, or a replica).
    Replicate {
        /// The chunk.
        chunk: ChunkId,
        /// Where to.
        to: WorkerId,
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
    /// Tasks that finished, in a batch.
    Done {
        /// The sender's incarnation.
        incarnation: Incarnation,
        /// The finished tasks.
        tasks: Vec<TaskDone>,
    },
    /// The answer to [`ToWorker::Fetch`].
    ChunkData {
        /// The sender's incarnation.
        incarnation: Incarnation,
        /// The chunk.
        chunk: ChunkId,
        /// Its bytes, or why they are not there.
        data: Result<ByteBuf, String>,
    },
    /// A chunk now has a copy on another worker (after [`ToWorker::Replicate`]).
    Replicated {
        /// The sender's incarnation.
        incarnation: Incarnation,
        /// The chunk.
        chunk: ChunkId,
        /// Where the copy is.
        to: WorkerId,
    },
    /// Still alive.
    Heartbeat {
        /// The sender's incarnation.
        incarnation: Incarnation,
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
    /// Its function's registered name.
    pub func: String,
    /// Its arguments, in order.
    pub args: Vec<RunArg>,
    /// The processor to run on.
    pub proc: ProcId,
    /// Results no larger than this many bytes are sent back inline with the done message;
    /// larger ones stay on the worker as a chunk.
    pub inline_limit: u32,
    /// Workers to push the result to as soon as it exists (consumers already placed).
    pub push_to: Vec<WorkerId>,
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
    /// Its result.
    pub outcome: Outcome,
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

/// Encodes a message into a new buffer.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Encoding into a Vec cannot fail for these types (no maps with non-string keys,
    // no unsized sequences).
    postcard::to_allocvec(msg).unwrap_or_default()
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
            ],
            proc: ProcId::new(WorkerId(1), 2),
            inline_limit: 1024,
            push_to: vec![],
        }]);
        let bytes = encode(&m);
        assert_eq!(decode::<ToWorker>(&bytes).unwrap(), m);
        // Truncations and garbage give errors, never panics.
        for n in 0..bytes.len() {
            assert!(decode::<ToWorker>(&bytes[..n]).is_err());
        }
        assert!(decode::<ToWorker>(&[0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
