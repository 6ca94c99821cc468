//! Peer links: worker-to-worker chunk moves (inline bytes or, on one host, shared memory),
//! link set-up, and retries of wants that arrived before their chunk.
//!
//! On one host, a chunk that answers a want travels in a reusable segment the answering
//! worker lends to the wanting one ([`dagger_move::shm::SegmentPool`]): the reader uses it
//! in place for the tasks that wait for it, does not keep it in its store, and hands it
//! back with [`PeerMsg::SegmentDone`] once they are done. Pushes (replicas, which the
//! reader keeps) and chunks that do not fit the pool go in one-shot objects.

use super::{ChunkBytes, Entry, PeerLink, Waiter, Worker, SHM_MIN_BYTES};
use crate::registry;
use dagger_core::wire::{self, ChunkPayload, Hello, PeerMsg, PROTOCOL_VERSION};
use dagger_core::{ChunkId, MoveFailure, WorkerId};
use dagger_move::shm::{SegmentCache, SegmentPool, SegmentRef, DEFAULT_POOL_BYTES};
use dagger_net::Conn;
use parking_lot::Mutex;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// One worker's shared-memory segments: those it lends to its peers and its mappings of
/// those its peers lend it.
struct Segments {
    pool: SegmentPool,
    cache: SegmentCache,
}

/// The segment state of every live worker of this process (one, or a few in tests and in
/// the driver's process), keyed by the worker. Entries of dropped workers are removed (and
/// their segments unmapped and unlinked) the next time any worker looks its own up.
#[allow(clippy::type_complexity)]
static SEGMENTS: Mutex<Vec<(Weak<Worker>, Arc<Segments>)>> = Mutex::new(Vec::new());

fn owner_key(w: WorkerId) -> u64 {
    u64::from(w.0)
}

/// How many times a chunk is asked of one holder that answers "not here (yet)".
const MAX_WANT_ATTEMPTS: u32 = 110;

/// The longest pause between two asks.
const MAX_WANT_PAUSE: Duration = Duration::from_millis(50);

impl Worker {
    pub(super) fn same_host(&self, w: WorkerId) -> bool {
        self.peers
            .lock()
            .get(&w)
            .map(|p| p.info.host == self.host)
            .unwrap_or(false)
    }

    /// The frame that answers a want (or pushes) `chunk` to `peer`: a shared-memory object
    /// for a large chunk and a peer on this host (when enabled), else the bytes inline,
    /// copied once, straight into the frame.
    pub(super) fn chunk_frame(
        self: &Arc<Self>,
        push: bool,
        peer: WorkerId,
        chunk: ChunkId,
        data: Result<Arc<ChunkBytes>, MoveFailure>,
    ) -> Vec<u8> {
        let b = match data {
            Ok(b) => b,
            Err(m) => {
                let payload = ChunkPayload::Missing(m.to_string());
                return wire::encode(&if push {
                    PeerMsg::Push { chunk, payload }
                } else {
                    PeerMsg::Chunk { chunk, payload }
                });
            }
        };
        if self.shm && b.len() >= SHM_MIN_BYTES && self.same_host(peer) {
            if !push {
                if let Some(frame) = self.segment_frame(peer, chunk, &b) {
                    return frame;
                }
            }
            match dagger_move::shm::write(&self.shm_prefix, &b) {
                Ok(obj) => {
                    let payload = ChunkPayload::Shm {
                        name: obj.name,
                        len: obj.len,
                    };
                    return wire::encode(&if push {
                        PeerMsg::Push { chunk, payload }
                    } else {
                        PeerMsg::Chunk { chunk, payload }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "shared-memory move failed; sending over the link")
                }
            }
        }
        wire::encode_chunk_bytes(push, chunk, &b)
    }

    /// This worker's segment state, created on first use. `None` when its object prefix is
    /// not a valid name (then segments are not used).
    fn segments(self: &Arc<Self>) -> Option<Arc<Segments>> {
        let mut all = SEGMENTS.lock();
        all.retain(|(w, _)| w.strong_count() > 0);
        let me = Arc::as_ptr(self);
        if let Some((_, s)) = all.iter().find(|(w, _)| std::ptr::eq(w.as_ptr(), me)) {
            return Some(s.clone());
        }
        let pool = SegmentPool::new(&self.shm_prefix, DEFAULT_POOL_BYTES).ok()?;
        let s = Arc::new(Segments {
            pool,
            cache: SegmentCache::new(),
        });
        all.push((Arc::downgrade(self), s.clone()));
        Some(s)
    }

    /// Copies `bytes` into a segment lent to `peer` and returns the `Chunk` frame naming
    /// it; `None` when the pool is full or failed (then a one-shot object or the link
    /// carries the chunk). Segments of peers that left are dropped first.
    fn segment_frame(
        self: &Arc<Self>,
        peer: WorkerId,
        chunk: ChunkId,
        bytes: &[u8],
    ) -> Option<Vec<u8>> {
        let seg = self.segments()?;
        let gone: Vec<u64> = {
            let peers = self.peers.lock();
            seg.pool
                .owners()
                .into_iter()
                .filter(|o| !peers.keys().any(|w| owner_key(*w) == *o))
                .collect()
        };
        for o in gone {
            seg.pool.drop_owner(o);
        }
        match seg.pool.write(owner_key(peer), bytes) {
            Ok(Some(SegmentRef { name, size, len })) => Some(wire::encode(&PeerMsg::Chunk {
                chunk,
                payload: ChunkPayload::Segment { name, size, len },
            })),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot lend a shared-memory segment");
                None
            }
        }
    }

    /// A chunk arrived in a segment `from` lends: map it (once per segment) and hand it to
    /// the waiting tasks without keeping it, so the segment goes back when they are done.
    fn receive_segment(self: &Arc<Self>, chunk: ChunkId, r: SegmentRef, from: WorkerId) {
        let Some(seg) = self.segments() else {
            self.fail_chunk(
                chunk,
                MoveFailure::SharedMemory {
                    detail: "shared-memory segments are unavailable here".into(),
                },
            );
            return;
        };
        let weak = Arc::downgrade(self);
        let name = r.name.clone();
        // The view may be dropped under any lock of this worker: hand the segment back
        // from a fresh task.
        let hand_back = Box::new(move || {
            if let Some(w) = weak.upgrade() {
                let rt = w.rt.clone();
                rt.spawn(async move { w.send_to_peer(from, PeerMsg::SegmentDone(name)) });
            }
        });
        match seg.cache.view(&r, hand_back) {
            Ok(view) => self.deliver_lent(chunk, Arc::new(ChunkBytes::Segment(view))),
            Err(e) => {
                self.send_to_peer(from, PeerMsg::SegmentDone(r.name));
                self.fail_chunk(
                    chunk,
                    MoveFailure::SharedMemory {
                        detail: e.to_string(),
                    },
                );
            }
        }
    }

    /// Hands lent bytes to everyone waiting for `chunk` without storing them (a later
    /// task here that needs the chunk asks its holder again).
    fn deliver_lent(self: &Arc<Self>, chunk: ChunkId, bytes: Arc<ChunkBytes>) {
        let waiters = {
            let mut store = self.store.lock();
            match store.remove(&chunk) {
                Some(Entry::Waiting { waiters, .. }) => waiters,
                Some(other) => {
                    store.insert(chunk, other);
                    Vec::new()
                }
                None => Vec::new(),
            }
        };
        for w in waiters {
            self.answer(chunk, w, Ok(bytes.clone()));
        }
    }

    /// Sends a message to a peer, connecting first if needed.
    pub(super) fn send_to_peer(self: &Arc<Self>, to: WorkerId, msg: PeerMsg) {
        let wants = match &msg {
            PeerMsg::Want(c) => Some(*c),
            _ => None,
        };
        self.queue_to_peer(to, wire::encode(&msg), wants);
    }

    pub(super) fn send_frame_to_peer(self: &Arc<Self>, to: WorkerId, frame: Vec<u8>) {
        self.queue_to_peer(to, frame, None);
    }

    pub(super) fn queue_to_peer(
        self: &Arc<Self>,
        to: WorkerId,
        frame: Vec<u8>,
        wants: Option<ChunkId>,
    ) {
        let mut peers = self.peers.lock();
        let Some(peer) = peers.get_mut(&to) else {
            drop(peers);
            let cause = MoveFailure::PeerLeft { worker: to };
            self.peer_unreachable(vec![(frame, wants)], cause);
            return;
        };
        match &mut peer.link {
            PeerLink::Up(s) => match s.send(frame) {
                Ok(()) => return,
                Err(_) => {
                    // The link died; reopen it. The frame is gone with the old link, so a
                    // want is sent again on the new one.
                    let again = wants.map(|c| wire::encode(&PeerMsg::Want(c)));
                    peer.link =
                        PeerLink::Connecting(again.into_iter().map(|f| (f, wants)).collect());
                }
            },
            PeerLink::Connecting(q) => {
                q.push((frame, wants));
                return;
            }
            PeerLink::Idle => peer.link = PeerLink::Connecting(vec![(frame, wants)]),
        }
        let addr = peer.info.addr.clone();
        drop(peers);
        let w = self.clone();
        self.rt.spawn(async move {
            match w.peer_transport.connect(&addr).await {
                Ok(conn) => {
                    let hello = Hello {
                        version: PROTOCOL_VERSION,
                        registry_hash: registry::registry_hash(),
                        worker: w.id,
                        incarnation: w.incarnation,
                        build_id: dagger_net::launch::build_id(),
                        allow_mixed_builds: dagger_net::launch::mixed_builds_allowed(),
                    };
                    let _ = conn.sender.send(wire::encode(&hello));
                    let queued = {
                        let mut peers = w.peers.lock();
                        match peers.get_mut(&to) {
                            Some(p) => match std::mem::replace(
                                &mut p.link,
                                PeerLink::Up(conn.sender.clone()),
                            ) {
                                PeerLink::Connecting(q) => q,
                                _ => Vec::new(),
                            },
                            None => Vec::new(),
                        }
                    };
                    for (f, _) in queued {
                        let _ = conn.sender.send(f);
                    }
                    w.serve_peer_conn(conn, Some(to)).await;
                }
                Err(e) => {
                    let queued = {
                        let mut peers = w.peers.lock();
                        match peers.get_mut(&to) {
                            Some(p) => match std::mem::replace(&mut p.link, PeerLink::Idle) {
                                PeerLink::Connecting(q) => q,
                                _ => Vec::new(),
                            },
                            None => Vec::new(),
                        }
                    };
                    w.peer_unreachable(
                        queued,
                        MoveFailure::Unreachable {
                            worker: to,
                            detail: e.to_string(),
                        },
                    );
                }
            }
        });
    }

    pub(super) fn peer_unreachable(
        self: &Arc<Self>,
        frames: Vec<(Vec<u8>, Option<ChunkId>)>,
        cause: MoveFailure,
    ) {
        for (_, wants) in frames {
            if let Some(chunk) = wants {
                self.fail_chunk(chunk, cause.clone());
            }
        }
    }

    /// Reads one peer link: wants are answered on it, chunks stored.
    pub(super) async fn serve_peer_conn(self: Arc<Self>, conn: Conn, known: Option<WorkerId>) {
        let Conn {
            sender,
            mut receiver,
            ..
        } = conn;
        let peer = match known {
            Some(w) => w,
            None => {
                // Links others opened start with their hello.
                let Ok(first) = receiver.recv().await else {
                    return;
                };
                match wire::decode::<Hello>(&first) {
                    Ok(h)
                        if h.version == PROTOCOL_VERSION
                            && h.registry_hash == registry::registry_hash() =>
                    {
                        h.worker
                    }
                    _ => {
                        sender.close("bad peer hello");
                        return;
                    }
                }
            }
        };
        while let Ok(frame) = receiver.recv().await {
            if let Some((chunk, range, push)) = wire::split_chunk_bytes(&frame) {
                let bytes = Arc::new(ChunkBytes::Framed(frame, range.start));
                if push {
                    self.deliver(chunk, bytes);
                } else {
                    self.deliver_lent(chunk, bytes);
                }
                continue;
            }
            let msg = match wire::decode::<PeerMsg>(&frame) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "a peer sent a malformed frame; closing its link");
                    sender.close("malformed frame");
                    break;
                }
            };
            match msg {
                PeerMsg::Want(chunk) => self.want(chunk, Waiter::Peer(sender.clone(), peer)),
                PeerMsg::Chunk { chunk, payload } => {
                    self.receive_payload(chunk, payload, Some(peer), false)
                }
                PeerMsg::Push { chunk, payload } => {
                    self.receive_payload(chunk, payload, Some(peer), true)
                }
                PeerMsg::SegmentDone(name) => {
                    if let Some(seg) = self.segments() {
                        seg.pool.release(owner_key(peer), &name);
                    }
                }
            }
        }
        if let Some(w) = known {
            // Our link to `w` closed: wants still out on it may be lost. Ask again over a
            // new link (or fail them, if `w` is gone).
            let still_known = {
                let mut peers = self.peers.lock();
                match peers.get_mut(&w) {
                    Some(p) => {
                        if matches!(&p.link, PeerLink::Up(s) if s.is_closed()) {
                            p.link = PeerLink::Idle;
                        }
                        true
                    }
                    None => false,
                }
            };
            if still_known {
                self.ask_again(w);
            } else {
                self.peer_gone(w);
            }
        }
    }

    /// Sends again every want whose current holder is `w`.
    fn ask_again(self: &Arc<Self>, w: WorkerId) {
        let chunks: Vec<ChunkId> = {
            let store = self.store.lock();
            store
                .iter()
                .filter_map(|(c, e)| match e {
                    Entry::Waiting { holders, .. } if holders.first() == Some(&w) => Some(*c),
                    _ => None,
                })
                .collect()
        };
        for c in chunks {
            self.send_to_peer(w, PeerMsg::Want(c));
        }
    }

    pub(super) fn receive_payload(
        self: &Arc<Self>,
        chunk: ChunkId,
        payload: ChunkPayload,
        from: Option<WorkerId>,
        keep: bool,
    ) {
        // A push (a replica the scheduler counts) is kept until released; the answer to a
        // want only feeds the tasks waiting here: the scheduler does not count it as a
        // copy, so it would never be released.
        let hand = |w: &Arc<Self>, bytes: Arc<ChunkBytes>| {
            if keep {
                w.deliver(chunk, bytes)
            } else {
                w.deliver_lent(chunk, bytes)
            }
        };
        match payload {
            ChunkPayload::Bytes(v) => hand(self, Arc::new(ChunkBytes::Vec(v))),
            ChunkPayload::Shm { name, len } => match dagger_move::shm::read(&name, len) {
                Ok(view) => hand(self, Arc::new(ChunkBytes::Shm(view))),
                Err(e) => self.fail_chunk(
                    chunk,
                    MoveFailure::SharedMemory {
                        detail: e.to_string(),
                    },
                ),
            },
            ChunkPayload::Segment { name, size, len } => match from {
                Some(from) => self.receive_segment(chunk, SegmentRef { name, size, len }, from),
                None => self.fail_chunk(
                    chunk,
                    MoveFailure::SharedMemory {
                        detail: "a lent segment from an unknown peer".into(),
                    },
                ),
            },
            ChunkPayload::Missing(reason) => self.retry_want(chunk, from, reason),
            ChunkPayload::Gone(cause) => self.fail_chunk(chunk, cause),
        }
    }

    /// The peer did not hold the chunk (yet): its producing task may not have reached it.
    /// Ask again a few times with growing pauses, then the next holder, then give up.
    pub(super) fn retry_want(
        self: &Arc<Self>,
        chunk: ChunkId,
        from: Option<WorkerId>,
        reason: String,
    ) {
        let next = {
            let mut store = self.store.lock();
            match store.get_mut(&chunk) {
                Some(Entry::Waiting {
                    holders, attempts, ..
                }) => {
                    *attempts += 1;
                    // The holder may simply not have received the producing task yet:
                    // keep asking for about 5 s (pauses growing to 50 ms), then try the
                    // next holder.
                    if *attempts > MAX_WANT_ATTEMPTS {
                        if let Some(f) = from {
                            holders.retain(|h| *h != f);
                        }
                        *attempts = 0;
                    }
                    holders.first().copied().map(|h| (h, *attempts))
                }
                _ => return,
            }
        };
        match next {
            Some((h, attempts)) => {
                let w = self.clone();
                let delay = Duration::from_micros(200u64 << attempts.min(8)).min(MAX_WANT_PAUSE);
                self.rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    w.send_to_peer(h, PeerMsg::Want(chunk));
                });
            }
            None => {
                tracing::debug!(%chunk, %reason, "no holder had the input in time");
                let cause = match from {
                    Some(worker) => MoveFailure::NotHeld { worker },
                    None => MoveFailure::NoHolder,
                };
                self.fail_chunk(chunk, cause)
            }
        }
    }
}
