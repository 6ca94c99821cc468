//! The in-process transport.

use crate::link::{Cmd, FrameReceiver, FrameSender, LinkState, RecvInner};
use crate::{BoxFuture, Conn, Frame, Listener, NetConfig, NetError, Transport};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
            sender: FrameSender {
                tx: b_tx.clone(),
                state: state.clone(),
                max_frame,
                own_inbox: Some(a_tx.downgrade()),
            },
            receiver: FrameReceiver {
                inner: RecvInner::Mem(MemReceiver::new(a_rx, state.clone(), None)),
            },
            peer_addr: format!("mem:{n}"),
        };
        let accepted = Conn {
            sender: FrameSender {
                tx: a_tx,
                state: state.clone(),
                max_frame,
                own_inbox: Some(b_tx.downgrade()),
            },
            receiver: FrameReceiver {
                inner: RecvInner::Mem(MemReceiver::new(
                    b_rx,
                    state,
                    Some(self.hub.config.max_first_frame.min(max_frame)),
                )),
            },
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
    state: Arc<LinkState>,
    /// The limit on the first frame, until it has arrived (accepted links only).
    first_limit: Option<usize>,
    done: Option<String>,
}

impl MemReceiver {
    fn new(
        rx: mpsc::UnboundedReceiver<Cmd>,
        state: Arc<LinkState>,
        first_limit: Option<usize>,
    ) -> Self {
        MemReceiver {
            rx,
            state,
            first_limit,
            done: None,
        }
    }

    pub(crate) async fn recv(&mut self) -> Result<Frame, NetError> {
        if let Some(reason) = &self.done {
            return Err(NetError::Closed {
                reason: reason.clone(),
            });
        }
        let reason = match self.rx.recv().await {
            Some(Cmd::Frame(f)) => match self.first_limit.take() {
                Some(limit) if f.len() > limit => {
                    let err = NetError::FrameTooLarge {
                        len: f.len() as u64,
                        limit: limit as u64,
                    };
                    self.end(err.to_string());
                    return Err(err);
                }
                _ => return Ok(f),
            },
            Some(Cmd::Close(reason)) => reason,
            None => "the peer dropped the link".to_owned(),
        };
        self.end(reason.clone());
        Err(NetError::Closed { reason })
    }

    /// Marks the link down for good with `reason`.
    fn end(&mut self, reason: String) {
        self.state.shut(&reason);
        self.rx.close();
        self.done = Some(reason);
    }
}

impl Drop for MemReceiver {
    fn drop(&mut self) {
        self.state.shut("the peer dropped its receiver");
    }
}
