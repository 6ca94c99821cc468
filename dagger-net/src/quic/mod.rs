//! QUIC links with mutual TLS (quinn + rustls with the ring provider).
//!
//! A link is one primary QUIC connection plus `k - 1` lanes (extra connections), each
//! carrying one bidirectional stream. The pieces:
//!
//! - [`tls`]: rustls/quinn configuration (mutual TLS 1.3 against the cluster CA), UDP
//!   endpoints;
//! - [`handshake`]: the versioned preamble and hello on every connection, and the join of
//!   a link's lanes on the accepting side;
//! - [`lanes`]: the writer tasks and the receiver, striping large frames over the lanes;
//! - [`codec`]: the framing of the byte stream (pure, no I/O).

pub(crate) mod handshake;
pub(crate) mod lanes;
pub(crate) mod tls;
#[cfg(target_os = "linux")]
pub(crate) mod upgrade;

use crate::{BoxFuture, Conn, Identity, Listener, NetConfig, NetError, Transport};
use dagger_core::wire::PROTOCOL_VERSION;
use handshake::{accept_loop, connect_on};
use quinn::Endpoint;
use std::net::SocketAddr;
use std::sync::Mutex;
use tls::{build_configs, make_endpoint};
use tokio::sync::mpsc;

/// How many QUIC connections a link uses by default: one, no lanes. Striping over 4
/// connections, with the default or 4x larger flow-control windows, did not move large
/// transfers faster on a 2-core host (see the `measure_lanes` measurement) and costs 3
/// extra handshakes per link, so it is opt-in.
pub(crate) const DEFAULT_LANES: u8 = 1;
/// The most connections one link may use.
pub(crate) const MAX_LANES: u8 = 16;
/// Application error codes used when closing a QUIC connection.
pub(crate) mod code {
    /// Orderly close by the application.
    pub const CLOSED: u32 = 0;
    /// The peer sent a frame over the limit or a malformed header.
    pub const PROTOCOL: u32 = 1;
    /// The peer's preamble announced another version.
    pub const VERSION: u32 = 2;
}

/// QUIC with mutual TLS: the default transport between processes.
///
/// A link is one QUIC connection carrying a bidirectional stream of frames; optionally
/// (see [`QuicTransport::with_lanes`]) plus extra connections, its lanes, over which
/// frames of 1 MiB or more are striped.
///
/// Holds the TLS configuration built from an [`Identity`] and one client endpoint (a UDP
/// socket), created at the first `connect` and shared by all dialled links. Listening and
/// dialling must happen inside a tokio runtime (the links' tasks are spawned on it).
pub struct QuicTransport {
    pub(crate) config: NetConfig,
    pub(crate) server: quinn::ServerConfig,
    pub(crate) client: quinn::ClientConfig,
    client_endpoints: Mutex<[Option<Endpoint>; 2]>,
    pub(crate) version: u32,
    pub(crate) lanes: u8,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// Builds the transport: parses the identity's PEMs and prepares the TLS and QUIC
    /// configurations (no socket is opened yet). Fails with [`NetError::Identity`] or
    /// [`NetError::Tls`] if the certificate, key or CA is unusable.
    pub fn new(identity: Identity, config: NetConfig) -> Result<Self, NetError> {
        let (server, client) = build_configs(&identity, &config)?;
        Ok(QuicTransport {
            config,
            server,
            client,
            client_endpoints: Mutex::new([None, None]),
            version: PROTOCOL_VERSION,
            lanes: DEFAULT_LANES,
        })
    }

    /// Sets how many QUIC connections each link this transport dials uses (1 to 16,
    /// clamped; default 1). Frames of 1 MiB or more are split evenly over them and
    /// reassembled in order, so that encryption and packet processing of one large
    /// transfer can run on several cores; smaller frames use the first connection only.
    /// Costs one extra handshake per lane when dialling, and pays off only on hosts with
    /// cores to spare (measure with `measure_lanes` before turning it on). The accepting
    /// side follows the dialler's choice.
    pub fn with_lanes(mut self, lanes: u8) -> Self {
        self.lanes = lanes.clamp(1, MAX_LANES);
        self
    }

    /// The endpoint used to dial addresses of `addr`'s family, created on first use.
    pub(crate) fn client_endpoint(&self, addr: &SocketAddr) -> Result<Endpoint, NetError> {
        let slot = usize::from(addr.is_ipv6());
        let mut eps = self
            .client_endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(ep) = &eps[slot] {
            return Ok(ep.clone());
        }
        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let ep = make_endpoint(bind, None, &bind.to_string())?;
        eps[slot] = Some(ep.clone());
        Ok(ep)
    }

    async fn do_connect(&self, addr: &str) -> Result<Conn, NetError> {
        ensure_runtime()?;
        let sock = resolve(addr).await?;
        let endpoint = self.client_endpoint(&sock)?;
        let fut = connect_on(
            &endpoint,
            self.client.clone(),
            sock,
            addr,
            self.version,
            &self.config,
            self.lanes,
        );
        match tokio::time::timeout(self.config.idle_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(NetError::Refused {
                peer: addr.to_owned(),
                reason: "handshake timed out".into(),
            }),
        }
    }

    async fn do_listen(&self, addr: &str) -> Result<Box<dyn Listener>, NetError> {
        ensure_runtime()?;
        let sock = resolve(addr).await?;
        let endpoint = make_endpoint(sock, Some(self.server.clone()), addr)?;
        let local = endpoint.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(accept_loop(
            endpoint.clone(),
            tx,
            self.version,
            self.config.clone(),
        ));
        Ok(Box::new(QuicListener {
            endpoint,
            local,
            rx,
            task,
        }))
    }
}

impl Transport for QuicTransport {
    fn listen<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Box<dyn Listener>, NetError>> {
        Box::pin(self.do_listen(addr))
    }

    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Conn, NetError>> {
        Box::pin(self.do_connect(addr))
    }

    fn name(&self) -> &'static str {
        "quic"
    }
}

fn ensure_runtime() -> Result<(), NetError> {
    tokio::runtime::Handle::try_current()
        .map(|_| ())
        .map_err(|_| NetError::NoRuntime)
}

pub(crate) async fn resolve(addr: &str) -> Result<SocketAddr, NetError> {
    let bad = |reason: String| NetError::Address {
        addr: addr.to_owned(),
        reason,
    };
    let mut it = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| bad(e.to_string()))?;
    it.next()
        .ok_or_else(|| bad("resolves to no address".into()))
}
/// A listener on a QUIC endpoint.
struct QuicListener {
    endpoint: Endpoint,
    local: SocketAddr,
    rx: mpsc::UnboundedReceiver<Conn>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener for QuicListener {
    fn local_addr(&self) -> String {
        self.local.to_string()
    }

    fn accept(&mut self) -> BoxFuture<'_, Result<Conn, NetError>> {
        Box::pin(async move {
            self.rx.recv().await.ok_or_else(|| NetError::Closed {
                reason: "the listener's endpoint shut down".into(),
            })
        })
    }
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        self.task.abort();
        self.endpoint.set_server_config(None);
    }
}
