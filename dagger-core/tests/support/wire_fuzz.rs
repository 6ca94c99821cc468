//! Checks of the wire decoder against untrusted bytes, shared by `tests/fuzz_wire.rs`
//! (a fixed number of generated inputs on stable Rust) and the cargo-fuzz targets
//! `wire_to_driver` and `wire_to_worker` (coverage-guided, on nightly). Messages are
//! generated from an [`Unstructured`], so both feed the same code.

#![allow(dead_code)]

use arbitrary::{Result, Unstructured};
use dagger_core::wire::{
    self, ByteBuf, ChunkPayload, Hello, Outcome, PeerInfo, PeerMsg, RunArg, RunPart, RunTask,
    TaskDone, ToDriver, ToWorker,
};
use dagger_core::{
    ChunkId, GraphError, Incarnation, LostReason, MemorySpace, MoveFailure, ProcId, ProcInfo,
    ProcKind, TaskError, TaskId, WorkerId, WorkerInfo,
};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;
use std::time::Duration;

/// Decodes `bytes` as `T`; a message that decodes must encode and decode back to itself.
fn decodes_stably<T>(bytes: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let msg = wire::decode::<T>(bytes).ok()?;
    let again = wire::encode(&msg);
    assert!(again.len() <= bytes.len(), "re-encoding grew a message");
    assert_eq!(wire::decode::<T>(&again).ok().as_ref(), Some(&msg));
    Some(msg)
}

/// Decodes `bytes` as every message a driver takes from a worker.
pub fn decode_as_driver(bytes: &[u8]) {
    decodes_stably::<Hello>(bytes);
    decodes_stably::<ToDriver>(bytes);
}

/// Decodes `bytes` as every message a worker takes from the driver or a peer, and checks
/// that [`wire::split_chunk_bytes`] agrees with the decoder.
pub fn decode_as_worker(bytes: &[u8]) {
    decodes_stably::<Hello>(bytes);
    decodes_stably::<ToWorker>(bytes);
    let peer = decodes_stably::<PeerMsg>(bytes);
    if let Some((chunk, range, push)) = wire::split_chunk_bytes(bytes) {
        assert!(range.start <= range.end && range.end == bytes.len());
        let payload = ChunkPayload::Bytes(bytes[range].to_vec());
        let want = if push {
            PeerMsg::Push { chunk, payload }
        } else {
            PeerMsg::Chunk { chunk, payload }
        };
        assert_eq!(peer, Some(want), "split_chunk_bytes disagrees with decode");
    }
}

fn small_string(u: &mut Unstructured<'_>) -> Result<String> {
    let n = u.int_in_range(0..=12)?;
    (0..n)
        .map(|_| u.int_in_range(b'a'..=b'z').map(char::from))
        .collect()
}

fn bytes(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let n = u.int_in_range(0..=40)?;
    Ok(u.bytes(n)?.to_vec())
}

/// A task id, chunk id or worker id: mostly small (so that generated messages name the
/// same things), sometimes anything.
fn id64(u: &mut Unstructured<'_>) -> Result<u64> {
    if u.ratio(7, 8)? {
        u.int_in_range(0..=8)
    } else {
        u.arbitrary()
    }
}

fn id32(u: &mut Unstructured<'_>) -> Result<u32> {
    if u.ratio(7, 8)? {
        u.int_in_range(0..=4)
    } else {
        u.arbitrary()
    }
}

/// A task id as a generated message would name it.
pub fn task(u: &mut Unstructured<'_>) -> Result<TaskId> {
    Ok(TaskId(id64(u)?))
}

/// A worker id as a generated message would name it.
pub fn worker(u: &mut Unstructured<'_>) -> Result<WorkerId> {
    Ok(WorkerId(id32(u)?))
}

/// An incarnation as a generated message would name it.
pub fn incarnation(u: &mut Unstructured<'_>) -> Result<Incarnation> {
    Ok(Incarnation(id32(u)?))
}

fn proc_id(u: &mut Unstructured<'_>) -> Result<ProcId> {
    Ok(ProcId::new(worker(u)?, id32(u)?))
}

/// Any cause of a failed move.
pub fn move_failure(u: &mut Unstructured<'_>) -> Result<MoveFailure> {
    Ok(match u.int_in_range(0..=8u8)? {
        0 => MoveFailure::PeerLeft { worker: worker(u)? },
        1 => MoveFailure::Unreachable {
            worker: worker(u)?,
            detail: small_string(u)?,
        },
        2 => MoveFailure::SharedMemory {
            detail: small_string(u)?,
        },
        3 => MoveFailure::NoHolder,
        4 => MoveFailure::NotHeld { worker: worker(u)? },
        5 => MoveFailure::Dropped,
        6 => MoveFailure::SourceFailed,
        7 => MoveFailure::TooLarge {
            bytes: u.arbitrary()?,
            limit: u.arbitrary()?,
        },
        _ => MoveFailure::Conversion {
            message: small_string(u)?,
        },
    })
}

/// Any task error (dependency chains a few deep).
pub fn task_error(u: &mut Unstructured<'_>, depth: u32) -> Result<TaskError> {
    let task = task(u)?;
    Ok(match u.int_in_range(0..=9u8)? {
        0 => TaskError::Panicked {
            task,
            func: small_string(u)?,
            message: small_string(u)?,
        },
        1 => TaskError::UnknownFunction {
            task,
            func: small_string(u)?,
            worker: worker(u)?,
        },
        2 => TaskError::BadArguments {
            task,
            func: small_string(u)?,
            message: small_string(u)?,
        },
        3 => TaskError::TypeMismatch {
            task,
            expected: small_string(u)?,
            found: small_string(u)?,
        },
        4 if depth < 4 => TaskError::DependencyFailed {
            task,
            dependency: self::task(u)?,
            cause: Box::new(task_error(u, depth + 1)?),
        },
        5 => TaskError::WorkerLost {
            task,
            worker: worker(u)?,
            reason: LostReason::Silent {
                timeout: Duration::from_millis(u.arbitrary()?),
            },
        },
        6 => TaskError::NoProcessor {
            task,
            scope: small_string(u)?,
        },
        7 => TaskError::MoveFailed {
            task,
            cause: move_failure(u)?,
        },
        8 => TaskError::Rejected {
            task,
            error: GraphError::Cycle { task },
        },
        _ => TaskError::Shutdown { task },
    })
}

/// What a worker could claim about itself when it joins: processors with any ids and
/// parents (including missing, foreign and cyclic ones).
pub fn worker_info(u: &mut Unstructured<'_>) -> Result<WorkerInfo> {
    let me = worker(u)?;
    let n = u.int_in_range(0..=5)?;
    let mut procs = Vec::new();
    for i in 0..n {
        let id = if u.ratio(3, 4)? {
            ProcId::new(me, i)
        } else {
            proc_id(u)?
        };
        let parent = match u.int_in_range(0..=3u8)? {
            0 => None,
            1 | 2 => Some(ProcId::root(me)),
            _ => Some(proc_id(u)?),
        };
        let kind = match u.int_in_range(0..=3u8)? {
            0 => ProcKind::OS,
            1 | 2 => ProcKind::THREAD,
            _ => ProcKind::custom(small_string(u)?),
        };
        procs.push(ProcInfo {
            id,
            kind,
            parent,
            memory: MemorySpace::HOST,
            label: small_string(u)?,
            properties: Default::default(),
        });
    }
    Ok(WorkerInfo {
        worker: me,
        incarnation: incarnation(u)?,
        host: small_string(u)?,
        pid: u.arbitrary()?,
        name: String::new(),
        peer_addr: u.arbitrary::<bool>()?.then(|| "127.0.0.1:1".to_string()),
        procs,
    })
}

/// One finished task as a worker could report it.
pub fn task_done(u: &mut Unstructured<'_>, task: TaskId) -> Result<TaskDone> {
    Ok(TaskDone {
        task,
        proc: proc_id(u)?,
        run_ns: u.arbitrary()?,
        started_ns: u.arbitrary()?,
        outcome: match u.int_in_range(0..=2u8)? {
            0 => Outcome::Value(bytes(u)?),
            1 => Outcome::Stored {
                size: u.arbitrary()?,
            },
            _ => Outcome::Failed(task_error(u, 0)?),
        },
    })
}

/// Any message to the driver.
pub fn to_driver(u: &mut Unstructured<'_>) -> Result<ToDriver> {
    Ok(match u.int_in_range(0..=6u8)? {
        0 => ToDriver::Join(worker_info(u)?),
        1 => {
            let n = u.int_in_range(0..=4)?;
            let tasks = (0..n)
                .map(|_| {
                    let t = task(u)?;
                    task_done(u, t)
                })
                .collect::<Result<_>>()?;
            ToDriver::Done {
                incarnation: incarnation(u)?,
                tasks,
                moves: (0..u.int_in_range(0..=2)?)
                    .map(|_| {
                        Ok(dagger_core::wire::MoveDone {
                            chunk: ChunkId(id64(u)?),
                            from: worker(u)?,
                            bytes: u.arbitrary()?,
                            shared_memory: u.arbitrary()?,
                            started_ns: u.arbitrary()?,
                            finished_ns: u.arbitrary()?,
                        })
                    })
                    .collect::<Result<_>>()?,
                sent_ns: u.arbitrary()?,
            }
        }
        2 => ToDriver::ChunkData {
            incarnation: incarnation(u)?,
            chunk: ChunkId(id64(u)?),
            data: if u.arbitrary()? {
                Ok(ByteBuf::from(bytes(u)?))
            } else {
                Err(move_failure(u)?)
            },
        },
        3 => ToDriver::Replicated {
            incarnation: incarnation(u)?,
            chunk: ChunkId(id64(u)?),
            result: if u.arbitrary()? {
                Ok(())
            } else {
                Err(move_failure(u)?)
            },
        },
        4 => ToDriver::Started {
            incarnation: incarnation(u)?,
            tasks: (0..u.int_in_range(0..=4)?)
                .map(|_| task(u))
                .collect::<Result<_>>()?,
        },
        5 => ToDriver::Log {
            incarnation: incarnation(u)?,
            lines: (0..u.int_in_range(0..=3)?)
                .map(|_| {
                    Ok(dagger_core::wire::LogLine {
                        level: u.arbitrary()?,
                        target: small_string(u)?,
                        message: small_string(u)?,
                    })
                })
                .collect::<Result<_>>()?,
            dropped: u.arbitrary()?,
        },
        _ => ToDriver::Heartbeat {
            incarnation: incarnation(u)?,
        },
    })
}

fn peer_info(u: &mut Unstructured<'_>) -> Result<PeerInfo> {
    Ok(PeerInfo {
        worker: worker(u)?,
        incarnation: incarnation(u)?,
        addr: small_string(u)?,
        host: small_string(u)?,
    })
}

/// One task to run as the driver could send it.
pub fn run_task(u: &mut Unstructured<'_>) -> Result<RunTask> {
    let n = u.int_in_range(0..=3)?;
    let args = (0..n)
        .map(|_| {
            Ok(match u.int_in_range(0..=2)? {
                0 => RunArg::Value(bytes(u)?),
                1 => {
                    let k = u.int_in_range(0..=2)?;
                    RunArg::Chunk {
                        chunk: ChunkId(id64(u)?),
                        from: (0..k).map(|_| worker(u)).collect::<Result<_>>()?,
                    }
                }
                _ => {
                    let n = u.int_in_range(0..=3)?;
                    RunArg::Gather(
                        (0..n)
                            .map(|_| {
                                Ok(if u.arbitrary()? {
                                    RunPart::Value(bytes(u)?)
                                } else {
                                    RunPart::Chunk {
                                        chunk: ChunkId(id64(u)?),
                                        from: vec![worker(u)?],
                                    }
                                })
                            })
                            .collect::<Result<_>>()?,
                    )
                }
            })
        })
        .collect::<Result<_>>()?;
    Ok(RunTask {
        task: task(u)?,
        func: small_string(u)?.into(),
        args,
        proc: proc_id(u)?,
        any_thread: u.arbitrary()?,
        quiet: u.arbitrary()?,
        inline_limit: u.arbitrary()?,
        push_to: vec![],
        watch: u.arbitrary()?,
        attempt: u.arbitrary()?,
    })
}

/// Any message to a worker from the driver.
pub fn to_worker(u: &mut Unstructured<'_>) -> Result<ToWorker> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => ToWorker::Welcome {
            worker: worker(u)?,
            incarnation: incarnation(u)?,
            peers: (0..u.int_in_range(0..=3)?)
                .map(|_| peer_info(u))
                .collect::<Result<_>>()?,
            heartbeat: Duration::new(u.arbitrary()?, u.int_in_range(0..=999_999_999)?),
            log_filter: small_string(u)?,
        },
        1 => ToWorker::Run(
            (0..u.int_in_range(0..=3)?)
                .map(|_| run_task(u))
                .collect::<Result<_>>()?,
        ),
        2 => ToWorker::Release(
            (0..u.int_in_range(0..=3)?)
                .map(|_| Ok(ChunkId(id64(u)?)))
                .collect::<Result<_>>()?,
        ),
        3 => ToWorker::Fetch(ChunkId(id64(u)?)),
        4 => ToWorker::Replicate {
            chunk: ChunkId(id64(u)?),
            from: (0..u.int_in_range(0..=3)?)
                .map(|_| worker(u))
                .collect::<Result<_>>()?,
        },
        5 => ToWorker::PeerJoined(peer_info(u)?),
        6 => ToWorker::PeerLeft(worker(u)?),
        _ => ToWorker::Shutdown,
    })
}

/// Any message between workers.
pub fn peer_msg(u: &mut Unstructured<'_>) -> Result<PeerMsg> {
    let chunk = ChunkId(id64(u)?);
    let payload = match u.int_in_range(0..=4u8)? {
        0 => ChunkPayload::Bytes(bytes(u)?),
        1 => ChunkPayload::Shm {
            name: small_string(u)?,
            len: u.arbitrary()?,
        },
        2 => ChunkPayload::Missing(small_string(u)?),
        3 => ChunkPayload::Segment {
            name: small_string(u)?,
            size: u.arbitrary()?,
            len: u.arbitrary()?,
        },
        _ => ChunkPayload::Gone(move_failure(u)?),
    };
    Ok(match u.int_in_range(0..=3u8)? {
        0 => PeerMsg::Want(chunk),
        1 => PeerMsg::Chunk { chunk, payload },
        2 => PeerMsg::Push { chunk, payload },
        _ => PeerMsg::SegmentDone(small_string(u)?),
    })
}

/// Any hello.
pub fn hello(u: &mut Unstructured<'_>) -> Result<Hello> {
    Ok(Hello {
        version: if u.arbitrary()? {
            wire::PROTOCOL_VERSION
        } else {
            u.arbitrary()?
        },
        registry_hash: u.arbitrary()?,
        worker: worker(u)?,
        incarnation: incarnation(u)?,
        build_id: u.arbitrary()?,
        allow_mixed_builds: u.arbitrary()?,
    })
}

/// A varint of `x` as postcard writes lengths and integers.
pub fn varint(mut x: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (x & 0x7f) as u8;
        x >>= 7;
        if x == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// Damages an encoded message in a few ways chosen by `u`: bit flips, truncation, a
/// length or integer rewritten to a huge or overlong varint, bytes inserted, removed or
/// repeated.
pub fn mutate(u: &mut Unstructured<'_>, bytes: &mut Vec<u8>) -> Result<()> {
    let rounds = u.int_in_range(1..=3)?;
    for _ in 0..rounds {
        match u.int_in_range(0..=5u8)? {
            0 if !bytes.is_empty() => {
                let i = u.choose_index(bytes.len())?;
                bytes[i] ^= 1 << u.int_in_range(0..=7)?;
            }
            1 => {
                let n = u.int_in_range(0..=bytes.len())?;
                bytes.truncate(n);
            }
            2 if !bytes.is_empty() => {
                // A varint at a random place replaced by a huge (or malformed) one.
                let i = u.choose_index(bytes.len())?;
                let end = (i..bytes.len())
                    .find(|&k| bytes[k] & 0x80 == 0)
                    .map_or(bytes.len(), |k| k + 1);
                let with = match u.int_in_range(0..=4u8)? {
                    0 => varint(u.arbitrary()?),
                    1 => varint(u64::MAX),
                    2 => varint(u32::MAX as u64 + 1),
                    3 => vec![0xff; u.int_in_range(1..=12)?],
                    _ => varint(u.int_in_range(0..=300)?),
                };
                bytes.splice(i..end, with);
            }
            3 => {
                let i = u.int_in_range(0..=bytes.len())?;
                let n = u.int_in_range(0..=8)?;
                let ins = u.bytes(n)?.to_vec();
                bytes.splice(i..i, ins);
            }
            4 if !bytes.is_empty() => {
                let i = u.choose_index(bytes.len())?;
                let n = u.int_in_range(0..=bytes.len() - i)?;
                bytes.drain(i..i + n);
            }
            _ if !bytes.is_empty() => {
                let i = u.choose_index(bytes.len())?;
                let n = u.int_in_range(0..=(bytes.len() - i).min(32))?;
                let dup = bytes[i..i + n].to_vec();
                bytes.splice(i..i, dup);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks that a generated message round-trips exactly, then damages it and decodes it
/// as everything.
fn round_trip_then_mutate<T>(u: &mut Unstructured<'_>, msg: T) -> Result<()>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut bytes = wire::encode(&msg);
    assert_eq!(wire::decode::<T>(&bytes).ok(), Some(msg));
    for n in 0..bytes.len() {
        assert!(
            wire::decode::<T>(&bytes[..n]).is_err(),
            "a cut message decoded"
        );
    }
    mutate(u, &mut bytes)?;
    decode_as_driver(&bytes);
    decode_as_worker(&bytes);
    Ok(())
}

/// One fuzz case for what a driver decodes: raw bytes, or a generated `ToDriver` or
/// hello, damaged.
pub fn check_to_driver(u: &mut Unstructured<'_>) -> Result<()> {
    match u.int_in_range(0..=3u8)? {
        0 => {
            let raw = u.bytes(u.len().min(256))?;
            decode_as_driver(raw);
            Ok(())
        }
        1 => {
            let m = hello(u)?;
            round_trip_then_mutate(u, m)
        }
        _ => {
            let m = to_driver(u)?;
            round_trip_then_mutate(u, m)
        }
    }
}

/// One fuzz case for what a worker decodes: raw bytes, or a generated `ToWorker`,
/// `PeerMsg` (inline chunks included) or hello, damaged.
pub fn check_to_worker(u: &mut Unstructured<'_>) -> Result<()> {
    match u.int_in_range(0..=4u8)? {
        0 => {
            let raw = u.bytes(u.len().min(256))?;
            decode_as_worker(raw);
            Ok(())
        }
        1 => {
            let m = hello(u)?;
            round_trip_then_mutate(u, m)
        }
        2 => {
            let m = to_worker(u)?;
            round_trip_then_mutate(u, m)
        }
        3 => {
            let chunk = ChunkId(id64(u)?);
            let data = bytes(u)?;
            let mut frame = wire::encode_chunk_bytes(u.arbitrary()?, chunk, &data);
            mutate(u, &mut frame)?;
            decode_as_worker(&frame);
            Ok(())
        }
        _ => {
            let m = peer_msg(u)?;
            round_trip_then_mutate(u, m)
        }
    }
}
