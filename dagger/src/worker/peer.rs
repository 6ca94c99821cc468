//! Peer links and shared memory: opening and accepting links, reading them into the core,
//! and the same-host shared-memory moves the core asks for.
//!
//! On one host, a chunk that answers a want travels in a reusable segment the answering
//! worker lends to the wanting one ([`dagger_move::shm::SegmentPool`]): the reader uses it
//! in place for the tasks that wait for it, does not keep it in its store, and hands it
//! back with [`PeerMsg::SegmentDone`] once they are done. Pushes (replicas, which the
//! reader keeps) and chunks that do not fit the pool go in one-shot objects.

use super::{ChunkBytes, Data, Worker};
use dagger_core::wire::{self, ChunkPayload, Hello, PeerMsg};
use dagger_core::{MoveFailure, WorkerId};
use dagger_move::shm::{SegmentCache, SegmentPool, SegmentRef, DEFAULT_POOL_BYTES};
use dagger_net::{Conn, Doorbell, Frame, FrameReceiver, FrameSender};
use dagger_proc::idle::{Armed, IdleWork, WakeWord};
use dagger_runtime::worker::{LinkKey, ShmWrite};
use parking_lot::Mutex;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::Poll;

/// A peer link whose receiver both its task and the thread processors read.
pub(super) struct PolledLink {
    key: LinkKey,
    rx: Mutex<FrameReceiver>,
    sender: FrameSender,
    /// The link's doorbell, which idle thread processors sleep on (same-host rings), and
    /// the same as they see it.
    bell: Option<(Arc<dyn Doorbell>, Arc<dyn WakeWord>)>,
}

/// A link's [`Doorbell`] as the thread processors see it.
struct Bell(Arc<dyn Doorbell>);

impl WakeWord for Bell {
    fn word(&self) -> &std::sync::atomic::AtomicU32 {
        self.0.word()
    }

    fn disarm(&self) {
        self.0.disarm()
    }

    fn watch(&self, on: bool) {
        self.0.watch(on)
    }
}

/// A worker's peer links, polled by a thread processor that waits for its next job
/// ([`dagger_proc::idle`]). It takes only frames that have arrived (on same-host rings;
/// other transports hand none over this way) and skips a link whose task is reading it.
/// A processor that goes to sleep sleeps on the links' doorbells too, so a peer's frame
/// wakes it, not the link's task, and a task the frame starts on that processor runs
/// with no other thread woken.
pub(super) struct LinkPoller(Weak<Worker>);

impl IdleWork for LinkPoller {
    fn watch(&self, words: &mut Vec<Arc<dyn WakeWord>>) {
        let Some(w) = self.0.upgrade().filter(|w| w.crew.is_first()) else {
            return;
        };
        for link in w.polled.read().iter() {
            if let Some((_, word)) = &link.bell {
                word.watch(true);
                words.push(word.clone());
            }
        }
    }

    fn arm(&self, words: &mut Vec<Armed>) -> bool {
        let Some(w) = self.0.upgrade().filter(|w| w.crew.is_first()) else {
            return true;
        };
        for link in w.polled.read().iter() {
            let Some((doorbell, word)) = &link.bell else {
                continue;
            };
            // Past the kernel's limit a link stays unarmed: its task is woken instead.
            if words.len() >= dagger_proc::idle::MAX_ARMED {
                break;
            }
            match doorbell.arm() {
                Some(value) => words.push(Armed {
                    word: word.clone(),
                    value,
                }),
                None => return false,
            }
        }
        true
    }

    fn poll(&self) -> bool {
        let Some(w) = self.0.upgrade().filter(|w| w.crew.is_first()) else {
            return false;
        };
        let mut did = false;
        for link in w.polled.read().iter() {
            let Some(mut rx) = link.rx.try_lock() else {
                continue;
            };
            while let Some(frame) = rx.try_recv() {
                did = true;
                if w.peer_frame(link, frame).is_break() {
                    break;
                }
            }
        }
        did
    }
}

/// One worker's shared-memory segments: those it lends to its peers and its mappings of
/// those its peers lend it.
struct Segments {
    pool: Arc<SegmentPool>,
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

impl Worker {
    fn new_link_key(&self) -> LinkKey {
        LinkKey(self.next_link.fetch_add(1, Ordering::Relaxed))
    }

    /// Opens this worker's link to `peer` (the core asked), then reads it.
    pub(super) fn connect(self: &Arc<Self>, peer: WorkerId, addr: String) {
        let w = self.clone();
        self.rt.spawn(async move {
            match w.peer_transport.connect(&addr).await {
                Ok(conn) => {
                    let key = w.new_link_key();
                    let sender = conn.sender.clone();
                    w.drive(|i, now| {
                        i.links.insert(key, sender);
                        i.core.handle_link_up(now, peer, key);
                    });
                    w.serve_link(key, conn.sender, conn.receiver).await;
                }
                Err(e) => {
                    let detail = e.to_string();
                    w.drive(|i, now| i.core.handle_connect_failed(now, peer, detail));
                }
            }
        });
    }

    /// Reads a link a peer opened: its hello first, then its messages.
    pub(super) async fn serve_inbound(self: Arc<Self>, conn: Conn) {
        let Conn {
            sender,
            mut receiver,
            ..
        } = conn;
        let Ok(first) = receiver.recv().await else {
            return;
        };
        let hello = match wire::decode::<Hello>(&first) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "a peer link without a hello");
                sender.close("bad peer hello");
                return;
            }
        };
        let key = self.new_link_key();
        let accepted = {
            let mut inner = self.inner.lock();
            let now = self.now();
            let r = inner.core.handle_inbound_link(now, key, &hello);
            if r.is_ok() {
                inner.links.insert(key, sender.clone());
            }
            r
        };
        self.after_unlock();
        if let Err(e) = accepted {
            tracing::warn!(error = %e, "refused a peer link");
            sender.close("bad peer hello");
            return;
        }
        self.serve_link(key, sender, receiver).await;
    }

    /// Feeds a link's frames to the core until it closes, then tells the core. Inline chunk
    /// bytes are kept in their frame, not copied out.
    ///
    /// The receiver is shared with this process's thread processors
    /// ([`LinkPoller`]): one that has just finished a task takes what has arrived itself, so
    /// a task that the message starts on that thread runs with no thread woken. Whoever
    /// takes a frame handles it before letting go of the receiver, so frames are handled
    /// in their order.
    async fn serve_link(
        self: &Arc<Self>,
        key: LinkKey,
        sender: FrameSender,
        receiver: FrameReceiver,
    ) {
        let bell = receiver.doorbell().map(|d| {
            let word: Arc<dyn WakeWord> = Arc::new(Bell(d.clone()));
            (d, word)
        });
        let link = Arc::new(PolledLink {
            key,
            rx: Mutex::new(receiver),
            sender,
            bell,
        });
        self.poll_link(&link);
        loop {
            let flow = std::future::poll_fn(|cx| {
                let mut rx = link.rx.lock();
                match rx.poll_recv(cx) {
                    Poll::Ready(Ok(frame)) => Poll::Ready(self.peer_frame(&link, frame)),
                    Poll::Ready(Err(_)) => Poll::Ready(ControlFlow::Break(())),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            if flow.is_break() {
                break;
            }
        }
        self.polled.write().retain(|l| !Arc::ptr_eq(l, &link));
        self.drive(|i, now| {
            i.links.remove(&key);
            i.core.handle_link_closed(now, key);
        });
    }

    /// Hands one frame from a peer to the core; `Break` when the peer broke the protocol
    /// (its link is closed then).
    fn peer_frame(self: &Arc<Self>, link: &PolledLink, frame: Frame) -> ControlFlow<()> {
        if let Some((chunk, range, push)) = wire::split_chunk_bytes(&frame) {
            let bytes = Data::new(ChunkBytes::Framed(frame, range.start));
            self.drive(|i, now| i.core.handle_chunk_received(now, chunk, push, Ok(bytes)));
            return ControlFlow::Continue(());
        }
        match wire::decode::<PeerMsg>(&frame) {
            Ok(msg) => {
                let key = link.key;
                self.drive(|i, now| i.core.handle_peer_msg(now, key, msg));
                ControlFlow::Continue(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "a peer sent a malformed frame; closing its link");
                link.sender.close("malformed frame");
                ControlFlow::Break(())
            }
        }
    }

    /// Lets this process's spinning thread processors take `link`'s frames (registering
    /// this worker's [`LinkPoller`] with them on first use).
    fn poll_link(self: &Arc<Self>, link: &Arc<PolledLink>) {
        self.idle.get_or_init(|| {
            let poller: Arc<dyn IdleWork> = Arc::new(LinkPoller(Arc::downgrade(self)));
            dagger_proc::idle::register(&poller);
            poller
        });
        self.polled.write().push(link.clone());
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
        let pool = Arc::new(SegmentPool::new(&self.shm_prefix, DEFAULT_POOL_BYTES).ok()?);
        let s = Arc::new(Segments {
            pool,
            cache: SegmentCache::new(),
        });
        all.push((Arc::downgrade(self), s.clone()));
        Some(s)
    }

    /// The pool large task results are encoded into, when chunks move through shared
    /// memory here: a peer of this host is then lent the result's own segment.
    pub(super) fn result_pool(self: &Arc<Self>) -> Option<Arc<SegmentPool>> {
        if !self.shm {
            return None;
        }
        // Looked up once: this runs for every task.
        self.result_pool
            .get_or_init(|| self.segments().map(|s| s.pool.clone()))
            .clone()
    }

    /// Writes a chunk into shared memory for a peer on this host: for the answer to a
    /// want, the chunk's own segment when it was stored in one, else a segment lent to it
    /// (when the pool has room); else a one-shot object.
    pub(super) fn write_shm(self: &Arc<Self>, w: &ShmWrite<Data>) -> Result<ChunkPayload, String> {
        let bytes = w.bytes.as_ref();
        if !w.push {
            if let Some(seg) = self.segments() {
                if let ChunkBytes::Stored(stored) = &*w.bytes.0 {
                    if let Some(SegmentRef { name, size, len }) =
                        seg.pool.lend_stored(owner_key(w.peer), stored)
                    {
                        return Ok(ChunkPayload::Segment { name, size, len });
                    }
                }
                match seg.pool.write(owner_key(w.peer), bytes) {
                    Ok(Some(SegmentRef { name, size, len })) => {
                        return Ok(ChunkPayload::Segment { name, size, len })
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot lend a shared-memory segment"),
                }
            }
        }
        dagger_move::shm::write(&self.shm_prefix, bytes)
            .map(|obj| ChunkPayload::Shm {
                name: obj.name,
                len: obj.len,
            })
            .map_err(|e| e.to_string())
    }

    /// Maps a chunk a peer sent in shared memory. A lent segment's view hands the segment
    /// back to `from` when the last task using it drops it.
    pub(super) fn read_shm(
        self: &Arc<Self>,
        from: WorkerId,
        payload: ChunkPayload,
    ) -> Result<Data, MoveFailure> {
        let shm_err = |detail: String| MoveFailure::SharedMemory { detail };
        match payload {
            ChunkPayload::Shm { name, len } => dagger_move::shm::read(&name, len)
                .map(|view| Data::new(ChunkBytes::Shm(view)))
                .map_err(|e| shm_err(e.to_string())),
            ChunkPayload::Segment { name, size, len } => {
                let Some(seg) = self.segments() else {
                    self.hand_back(from, name);
                    return Err(shm_err(
                        "shared-memory segments are unavailable here".into(),
                    ));
                };
                let r = SegmentRef { name, size, len };
                let weak = Arc::downgrade(self);
                let name = r.name.clone();
                // The view may be dropped under this worker's lock: hand the segment back
                // from a fresh task.
                let on_drop = Box::new(move || {
                    if let Some(w) = weak.upgrade() {
                        let rt = w.rt.clone();
                        rt.spawn(async move { w.hand_back(from, name) });
                    }
                });
                match seg.cache.view(&r, on_drop) {
                    Ok(view) => Ok(Data::new(ChunkBytes::Segment(view))),
                    Err(e) => {
                        self.hand_back(from, r.name);
                        Err(shm_err(e.to_string()))
                    }
                }
            }
            other => Err(shm_err(format!("not a shared-memory payload: {other:?}"))),
        }
    }

    fn hand_back(self: &Arc<Self>, from: WorkerId, name: String) {
        self.drive(|i, now| i.core.handle_segment_released(now, from, name));
    }

    /// A peer is done with a segment this worker lent it.
    pub(super) fn segment_returned(self: &Arc<Self>, peer: WorkerId, name: &str) {
        if let Some(seg) = self.segments() {
            seg.pool.release(owner_key(peer), name);
        }
    }

    /// A peer left: the segments lent to it are this worker's again.
    pub(super) fn forget_peer(self: &Arc<Self>, peer: WorkerId) {
        if let Some(seg) = self.segments() {
            seg.pool.drop_owner(owner_key(peer));
        }
    }
}
