//! The in-process transport.

use crate::link::{Cmd, FrameReceiver, FrameSender, FrameSource, LinkState, QueueSink};
use crate::{BoxFuture, Conn, Frame, Listener, NetConfig, NetError, Transport};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// An in-process transport: a hub of named listeners (`mem:<n>`) joined by tokio channels.
///
/// Cloning shares the hub, so a listener registered through one clone is reachable from
/// every other. Links behave like QUIC links (ordered frames, [`NetConfig::max_frame`]
/// enforced, close reasons delivered) but cost a channel push per frame. Needs no runtime
/// to create; `recv` and `accept` must be awaited inside a tokio runtime.
#[derive(Clone, Debug, Default)]
pub struct MemTransport {
    hub: Arc<Hub>,
}

#[derive(Debug, Default)]
struct Hub {
    config: NetConfig,
    state: Mutex<HubState>,
}

#[derive(Debug, Default)]
struct HubState {
    next: u64,
    listeners: HashMap<u64, mpsc::UnboundedSender<Conn>>,
}

impl MemTransport {
    /// A new, empty hub with the default [`NetConfig`].
    pub fn new() -> Self {
        Self::with_config(NetConfig::default())
    }

    /// A new, empty hub whose links use `config` (only `max_frame` matters in memory).
    pub fn with_config(config: NetConfig) -> Self {
        MemTransport {
            hub: Arc::new(Hub {
                config,
                state: Mutex::new(HubState::default()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.hub.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn do_listen(&self, addr: &str) -> Result<Box<dyn Listener>, NetError> {
        let n = parse_mem_addr(addr)?;
        let mut st = self.lock();
        st.listeners.retain(|_, tx| !tx.is_closed());
        let n = if n == 0 {
            loop {
                st.next += 1;
                if !st.listeners.contains_key(&st.next) {
                    break st.next;
                }
            }
        } else if st.listeners.contains_key(&n) {
            return Err(NetError::Address {
                addr: addr.to_owned(),
                reason: "already in use".into(),
            });
        } else {
            n
        };
        let (tx, rx) = mpsc::unbounded_channel();
        st.listeners.insert(n, tx);
        Ok(Box::new(MemListener {
            addr: format!("mem:{n}"),
            rx,
        }))
    }

    fn do_connect(&self, addr: &str) -> Result<Conn, NetError> {
        let n = parse_mem_addr(addr)?;
        let st = self.lock();
        let refused = |reason: &str| NetError::Refused {
            peer: addr.to_owned(),
            reason: reason.to_owned(),
        };
        let listener = st
            .listeners
            .get(&n)
            .ok_or_else(|| refused("no listener at this address"))?;
        let max_frame = self.hub.config.max_frame;
        let state = Arc::new(LinkState::default());
        let (a_tx, a_rx) = mpsc::unbounded_channel(); // towards the dialler
        let (b_tx, b_rx) = mpsc::unbounded_channel(); // towards the listener
        let dialler = Conn {
            sender: FrameSender::new(
                QueueSink {
                    tx: b_tx.clone(),
                    state: state.clone(),
                    own_inbox: Some(a_tx.downgrade()),
                },
                max_frame,
            ),
            receiver: FrameReceiver::new(MemReceiver::new(
                a_rx,
                b_tx.downgrade(),
                state.clone(),
                None,
            )),
            peer_addr: format!("mem:{n}"),
        };
        let a_weak = a_tx.downgrade();
        let accepted = Conn {
            sender: FrameSender::new(
                QueueSink {
                    tx: a_tx,
                    state: state.clone(),
                    own_inbox: Some(b_tx.downgrade()),
                },
                max_frame,
            ),
            receiver: FrameReceiver::new(MemReceiver::new(
                b_rx,
                a_weak,
                state,
                Some(self.hub.config.max_first_frame.min(max_frame)),
            )),
            peer_addr: format!("mem:dialler-of-{n}"),
        };
        drop(b_tx);
        listener
            .send(accepted)
            .map_err(|_| refused("the listener was dropped"))?;
        Ok(dialler)
    }
}

fn parse_mem_addr(addr: &str) -> Result<u64, NetError> {
    addr.strip_prefix("mem:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| NetError::Address {
            addr: addr.to_owned(),
            reason: "expected mem:<number>".into(),
        })
}

impl Transport for MemTransport {
    fn listen<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Box<dyn Listener>, NetError>> {
        Box::pin(async move { self.do_listen(addr) })
    }

    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Conn, NetError>> {
        Box::pin(async move { self.do_connect(addr) })
    }

    fn name(&self) -> &'static str {
        "mem"
    }
}

struct MemListener {
    addr: String,
    rx: mpsc::UnboundedReceiver<Conn>,
}

impl Listener for MemListener {
    fn local_addr(&self) -> String {
        self.addr.clone()
    }

    fn accept(&mut self) -> BoxFuture<'_, Result<Conn, NetError>> {
        Box::pin(async move {
            self.rx.recv().await.ok_or_else(|| NetError::Closed {
                reason: "listener closed".into(),
            })
        })
    }
}

/// The receiving half of an in-memory link.
#[derive(Debug)]
pub(crate) struct MemReceiver {
    rx: mpsc::UnboundedReceiver<Cmd>,
    /// The peer's incoming queue, told when this end fails the link.
    peer_inbox: Option<mpsc::WeakUnboundedSender<Cmd>>,
    state: Arc<LinkState>,
    /// The limit on the first frame, until it has arrived (accepted links only).
    first_limit: Option<usize>,
    done: Option<String>,
}

impl MemReceiver {
    fn new(
        rx: mpsc::UnboundedReceiver<Cmd>,
        peer_inbox: mpsc::WeakUnboundedSender<Cmd>,
        state: Arc<LinkState>,
        first_limit: Option<usize>,
    ) -> Self {
        MemReceiver {
            rx,
            peer_inbox: Some(peer_inbox),
            state,
            first_limit,
            done: None,
        }
    }

    /// Marks the link down for good with `reason`.
    fn end(&mut self, reason: String) {
        // A link this end fails (a refused frame) ends for the peer too; after a close
        // from the peer this only queues a message nobody reads.
        if let Some(peer) = self.peer_inbox.take().and_then(|w| w.upgrade()) {
            let _ = peer.send(Cmd::Close(reason.clone()));
        }
        self.state.shut(&reason);
        self.rx.close();
        self.done = Some(reason);
    }
}

impl FrameSource for MemReceiver {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, NetError>> {
        if let Some(reason) = &self.done {
            return Poll::Ready(Err(NetError::Closed {
                reason: reason.clone(),
            }));
        }
        let got = match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(Cmd::Frame(f)) => Ok(f),
            // In memory the parts are joined here, as the peer's bytes would arrive.
            Some(Cmd::Parts(mut head, tail)) => {
                head.extend_from_slice(&tail);
                Ok(head)
            }
            Some(Cmd::Close(reason)) => Err(reason),
            None => Err("the peer dropped the link".to_owned()),
        };
        let reason = match got {
            Ok(f) => match self.first_limit.take() {
                Some(limit) if f.len() > limit => {
                    let err = NetError::FrameTooLarge {
                        len: f.len() as u64,
                        limit: limit as u64,
                    };
                    self.end(err.to_string());
                    return Poll::Ready(Err(err));
                }
                _ => return Poll::Ready(Ok(f)),
            },
            Err(reason) => reason,
        };
        self.end(reason.clone());
        Poll::Ready(Err(NetError::Closed { reason }))
    }
}

impl Drop for MemReceiver {
    fn drop(&mut self) {
        self.state.shut("the peer dropped its receiver");
    }
}
