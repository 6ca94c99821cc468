//! QUIC links with mutual TLS (quinn + rustls with the ring provider).
//!
//! Wire format of a link: one bidirectional stream on each of its `k` QUIC connections
//! (the primary and `k - 1` lanes). On each, the dialler first writes the 8-byte preamble
//! `b"DAGR"` + protocol version (u32 LE) and a 10-byte hello (role: 0 primary / 1 lane;
//! `k` for the primary or the lane's index; a u64 token naming the link); the acceptor
//! answers with its own preamble. Then frames flow on the primary stream, each an 8-byte
//! little-endian header followed by the payload. The header's low 62 bits are a length;
//! bit 63 announces a close whose UTF-8 reason (at most [`MAX_CLOSE_REASON`] bytes)
//! follows, after which the sender finishes the stream; bit 62 announces a striped frame,
//! whose first part follows on the primary stream and whose part `i` is the next data on
//! lane `i` (parts as in [`part_range`]). Every stream is consumed in frame order, so
//! frames stay ordered.

use crate::link::{Cmd, FrameReceiver, FrameSender, LinkState, RecvInner};
use crate::{BoxFuture, Conn, Frame, Identity, Listener, NetConfig, NetError, Transport};
use bytes::{Buf, Bytes};
use dagger_core::wire::PROTOCOL_VERSION;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    ConnectionError, Endpoint, EndpointConfig, IdleTimeout, MtuDiscoveryConfig, ReadError,
    RecvStream, SendStream, TokioRuntime, TransportConfig, VarInt,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The preamble's magic bytes.
pub(crate) const MAGIC: &[u8; 4] = b"DAGR";
/// Marks a close frame in a frame header.
const CLOSE_BIT: u64 = 1 << 63;
/// Marks a frame striped over the link's streams (see [`part_range`]).
const STRIPE_BIT: u64 = 1 << 62;
/// Frames at least this long are striped over the link's lanes.
const STRIPE_MIN: usize = 1 << 20;
/// How many QUIC connections a link uses by default (one primary, the rest lanes).
pub(crate) const DEFAULT_LANES: u8 = 4;
/// The most connections one link may use.
pub(crate) const MAX_LANES: u8 = 16;
/// Hello roles: the primary connection of a link, or an extra lane.
pub(crate) const ROLE_PRIMARY: u8 = 0;
pub(crate) const ROLE_LANE: u8 = 1;
/// The longest close reason accepted from a peer.
pub(crate) const MAX_CLOSE_REASON: usize = 4096;
/// Frames up to this size are copied into the writer's coalescing buffer; larger ones are
/// handed to quinn without a copy.
const COPY_LIMIT: usize = 16 * 1024;
/// The writer stops gathering queued frames into one write beyond this many bytes.
const BATCH_BYTES: usize = 4 << 20;
/// ALPN protocol id of dagger links.
const ALPN: &[u8] = b"dagger";
/// Per-stream and per-connection flow-control windows. Large, so that one 8 MiB frame
/// never waits for window updates on a fast link.
const STREAM_WINDOW: u32 = 128 << 20;
const CONN_WINDOW: u32 = 256 << 20;
/// UDP socket buffer size requested from the kernel.
const SOCKET_BUFFER: usize = 16 << 20;

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
/// A link is one primary QUIC connection carrying a bidirectional stream of frames, plus
/// (by default three) extra connections, its lanes, over which frames of 1 MiB or more are
/// striped; see [`QuicTransport::with_lanes`].
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
    /// clamped; default 4). Frames of 1 MiB or more are split evenly over them and
    /// reassembled in order, so that encryption and packet processing of one large
    /// transfer run on several cores; smaller frames use the first connection only.
    /// Costs one extra handshake per lane when dialling. The accepting side follows the
    /// dialler's choice.
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

fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| NetError::Identity(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(NetError::Identity(format!("{what}: no certificate found")));
    }
    Ok(certs)
}

/// Builds the quinn server and client configurations for `identity`.
pub(crate) fn build_configs(
    identity: &Identity,
    config: &NetConfig,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), NetError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = parse_certs(&identity.cert_pem, "node certificate")?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(|e| NetError::Identity(format!("node key: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in parse_certs(&identity.ca_pem, "CA certificate")? {
        roots
            .add(ca)
            .map_err(|e| NetError::Identity(format!("CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    let tls = |e: rustls::Error| NetError::Tls(e.to_string());

    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(tls)?;
    server_tls.alpn_protocols = vec![ALPN.to_vec()];
    server_tls.max_early_data_size = 0;
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(tls)?;
    client_tls.alpn_protocols = vec![ALPN.to_vec()];

    let transport = Arc::new(transport_config(config)?);
    let server_crypto =
        QuicServerConfig::try_from(server_tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let client_crypto =
        QuicClientConfig::try_from(client_tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    Ok((server, client))
}

/// The QUIC transport settings of every cluster link.
fn transport_config(config: &NetConfig) -> Result<TransportConfig, NetError> {
    let mut t = TransportConfig::default();
    let idle = IdleTimeout::try_from(config.idle_timeout).map_err(|_| NetError::Address {
        addr: String::new(),
        reason: format!("idle timeout {:?} is out of range", config.idle_timeout),
    })?;
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONN_WINDOW))
        .send_window(u64::from(CONN_WINDOW))
        .max_concurrent_bidi_streams(VarInt::from_u32(16))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        // Links are mostly within a data centre or on one host: start with a short RTT
        // guess so that a lost packet early on is retransmitted quickly.
        .initial_rtt(Duration::from_millis(10));
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtu));
    Ok(t)
}

/// The largest UDP payload that path MTU discovery probes for. Loopback allows 64 KiB
/// datagrams; other paths stop at their own MTU when probes are lost.
const MTU_UPPER_BOUND: u16 = 8952;

/// Opens a UDP socket on `bind` with large kernel buffers and wraps it in a quinn endpoint.
pub(crate) fn make_endpoint(
    bind: SocketAddr,
    server: Option<quinn::ServerConfig>,
    addr_text: &str,
) -> Result<Endpoint, NetError> {
    let socket = std::net::UdpSocket::bind(bind).map_err(|e| NetError::Address {
        addr: addr_text.to_owned(),
        reason: e.to_string(),
    })?;
    enlarge_buffers(&socket);
    let ep = Endpoint::new(
        EndpointConfig::default(),
        server,
        socket,
        Arc::new(TokioRuntime),
    )?;
    Ok(ep)
}

/// Asks the kernel for larger UDP buffers (best effort: capped by `net.core.*mem_max`
/// unless the process may force them).
#[cfg(target_os = "linux")]
fn enlarge_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let size = SOCKET_BUFFER as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: `fd` is a valid socket owned by `socket`; the option value is a
            // properly sized c_int that outlives the call.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn enlarge_buffers(_socket: &std::net::UdpSocket) {}

pub(crate) fn preamble(version: u32) -> [u8; 8] {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(MAGIC);
    p[4..].copy_from_slice(&version.to_le_bytes());
    p
}

/// Reads the peer's preamble and returns its version.
async fn read_preamble(recv: &mut RecvStream, peer: &str) -> Result<u32, NetError> {
    let mut p = [0u8; 8];
    recv.read_exact(&mut p).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => NetError::Protocol {
            peer: peer.to_owned(),
            reason: "stream ended inside the preamble".into(),
        },
        quinn::ReadExactError::ReadError(e) => read_error(e, peer),
    })?;
    if &p[..4] != MAGIC {
        return Err(NetError::Protocol {
            peer: peer.to_owned(),
            reason: format!("bad preamble magic {:?}", &p[..4]),
        });
    }
    Ok(u32::from_le_bytes([p[4], p[5], p[6], p[7]]))
}

fn is_crypto_code(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// Maps a connection error during a handshake.
pub(crate) fn handshake_error(e: ConnectionError, peer: &str) -> NetError {
    match &e {
        ConnectionError::TransportError(t) if is_crypto_code(t.code) => {
            NetError::Tls(t.to_string())
        }
        ConnectionError::ConnectionClosed(c) if is_crypto_code(c.error_code) => {
            NetError::Tls(c.to_string())
        }
        ConnectionError::ApplicationClosed(a) => NetError::Refused {
            peer: peer.to_owned(),
            reason: String::from_utf8_lossy(&a.reason).into_owned(),
        },
        _ => NetError::Refused {
            peer: peer.to_owned(),
            reason: e.to_string(),
        },
    }
}

fn read_error(e: ReadError, peer: &str) -> NetError {
    match e {
        ReadError::ConnectionLost(c) => handshake_error(c, peer),
        other => NetError::Refused {
            peer: peer.to_owned(),
            reason: other.to_string(),
        },
    }
}

fn write_error(e: quinn::WriteError, peer: &str) -> NetError {
    match e {
        quinn::WriteError::ConnectionLost(c) => handshake_error(c, peer),
        other => NetError::Refused {
            peer: peer.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// The hello extension written after the dialler's preamble: role, count or index, token.
pub(crate) fn hello_ext(role: u8, n: u8, token: u64) -> [u8; 10] {
    let mut e = [0u8; 10];
    e[0] = role;
    e[1] = n;
    e[2..].copy_from_slice(&token.to_le_bytes());
    e
}

/// Dials `sock`, sends the preamble and `ext`, and checks the answering preamble.
pub(crate) async fn dial_stream(
    endpoint: &Endpoint,
    client: quinn::ClientConfig,
    sock: SocketAddr,
    addr: &str,
    version: u32,
    ext: [u8; 10],
) -> Result<(quinn::Connection, SendStream, RecvStream), NetError> {
    let (connection, mut send, mut recv) = open_raw(endpoint, client, sock, addr).await?;
    let mut hello = [0u8; 18];
    hello[..8].copy_from_slice(&preamble(version));
    hello[8..].copy_from_slice(&ext);
    send.write_all(&hello)
        .await
        .map_err(|e| write_error(e, addr))?;
    let theirs = read_preamble(&mut recv, addr).await?;
    if theirs != version {
        connection.close(
            VarInt::from_u32(code::VERSION),
            b"protocol version mismatch",
        );
        return Err(NetError::Version {
            ours: version,
            theirs,
        });
    }
    Ok((connection, send, recv))
}

/// A random token naming one link across its connections.
fn link_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Dials `sock` on `endpoint`, completes TLS and the preamble exchange on the primary
/// connection, then opens `lanes - 1` extra connections for striping large frames.
pub(crate) async fn connect_on(
    endpoint: &Endpoint,
    client: quinn::ClientConfig,
    sock: SocketAddr,
    addr: &str,
    version: u32,
    config: &NetConfig,
    lanes: u8,
) -> Result<Conn, NetError> {
    let token = link_token();
    let primary = dial_stream(
        endpoint,
        client.clone(),
        sock,
        addr,
        version,
        hello_ext(ROLE_PRIMARY, lanes, token),
    )
    .await?;
    let mut extra = Vec::with_capacity(usize::from(lanes.saturating_sub(1)));
    let mut pending = tokio::task::JoinSet::new();
    for i in 1..lanes {
        let (ep, client, addr) = (endpoint.clone(), client.clone(), addr.to_owned());
        let ext = hello_ext(ROLE_LANE, i, token);
        pending.spawn(async move {
            let r = dial_stream(&ep, client, sock, &addr, version, ext).await;
            (i, r)
        });
    }
    while let Some(done) = pending.join_next().await {
        let (i, r) = done.map_err(|e| NetError::Refused {
            peer: addr.to_owned(),
            reason: format!("lane task failed: {e}"),
        })?;
        extra.push((i, r?));
    }
    extra.sort_by_key(|(i, _)| *i);
    let extra = extra.into_iter().map(|(_, l)| l).collect();
    Ok(make_conn(
        endpoint.clone(),
        primary,
        extra,
        sock.to_string(),
        config,
    ))
}

/// Dials `sock` and opens one bidirectional stream (made visible to the peer by the first
/// write on it).
pub(crate) async fn open_raw(
    endpoint: &Endpoint,
    client: quinn::ClientConfig,
    sock: SocketAddr,
    addr: &str,
) -> Result<(quinn::Connection, SendStream, RecvStream), NetError> {
    let connecting = endpoint
        .connect_with(client, sock, crate::SERVER_NAME)
        .map_err(|e| NetError::Address {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
    let connection = connecting.await.map_err(|e| handshake_error(e, addr))?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| handshake_error(e, addr))?;
    Ok((connection, send, recv))
}

/// One stream of a link: its connection and both halves.
type Lane = (quinn::Connection, SendStream, RecvStream);

/// Links whose primary connection arrived and whose extra lanes are still expected,
/// by token.
type PendingLinks = Arc<Mutex<std::collections::HashMap<u64, PendingLink>>>;

struct PendingLink {
    ip: std::net::IpAddr,
    lanes: mpsc::UnboundedSender<(u8, Lane)>,
}

/// Accepts incoming connections forever, handshaking each in its own task.
async fn accept_loop(
    endpoint: Endpoint,
    tx: mpsc::UnboundedSender<Conn>,
    version: u32,
    config: NetConfig,
) {
    let pending: PendingLinks = Arc::default();
    while let Some(incoming) = endpoint.accept().await {
        let tx = tx.clone();
        let endpoint = endpoint.clone();
        let config = config.clone();
        let pending = pending.clone();
        let peer = incoming.remote_address().to_string();
        tokio::spawn(async move {
            let fut = server_handshake(endpoint, incoming, &peer, version, &config, &pending);
            match tokio::time::timeout(config.idle_timeout, fut).await {
                Ok(Ok(Some(conn))) => {
                    let _ = tx.send(conn);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(peer = %peer, error = %e, "refused an incoming link"),
                Err(_) => {
                    tracing::warn!(peer = %peer, "refused an incoming link: handshake timed out")
                }
            }
        });
    }
}

/// Handshakes one incoming connection. Returns the link for a primary connection once all
/// its lanes joined, `None` for a lane (handed to its primary).
async fn server_handshake(
    endpoint: Endpoint,
    incoming: quinn::Incoming,
    peer: &str,
    version: u32,
    config: &NetConfig,
    pending: &PendingLinks,
) -> Result<Option<Conn>, NetError> {
    let connection = incoming.await.map_err(|e| handshake_error(e, peer))?;
    let (mut send, mut recv) = connection
        .accept_bi()
        .await
        .map_err(|e| handshake_error(e, peer))?;
    let protocol = |reason: String| NetError::Protocol {
        peer: peer.to_owned(),
        reason,
    };
    let theirs = match read_preamble(&mut recv, peer).await {
        Ok(v) => v,
        Err(e) => {
            connection.close(VarInt::from_u32(code::PROTOCOL), b"bad preamble");
            return Err(e);
        }
    };
    if theirs != version {
        // Answer with our version, so the dialler can report the mismatch.
        send.write_all(&preamble(version))
            .await
            .map_err(|e| write_error(e, peer))?;
        let _ = send.finish();
        let _ = tokio::time::timeout(config.idle_timeout, send.stopped()).await;
        connection.close(
            VarInt::from_u32(code::VERSION),
            b"protocol version mismatch",
        );
        return Err(NetError::Version {
            ours: version,
            theirs,
        });
    }
    let mut ext = [0u8; 10];
    recv.read_exact(&mut ext).await.map_err(|e| {
        connection.close(VarInt::from_u32(code::PROTOCOL), b"bad hello");
        protocol(format!("incomplete hello: {e}"))
    })?;
    let (role, n) = (ext[0], ext[1]);
    let token = u64::from_le_bytes([
        ext[2], ext[3], ext[4], ext[5], ext[6], ext[7], ext[8], ext[9],
    ]);
    let ip = connection.remote_address().ip();
    match role {
        ROLE_PRIMARY if (1..=MAX_LANES).contains(&n) => {
            let (lane_tx, mut lane_rx) = mpsc::unbounded_channel();
            if n > 1 {
                let mut map = pending.lock().unwrap_or_else(|p| p.into_inner());
                if map.contains_key(&token) {
                    return Err(protocol("duplicate link token".into()));
                }
                map.insert(token, PendingLink { ip, lanes: lane_tx });
            }
            // Unregisters the link however this handshake ends (also when it times out).
            struct Unregister<'a>(&'a PendingLinks, u64);
            impl Drop for Unregister<'_> {
                fn drop(&mut self) {
                    self.0
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&self.1);
                }
            }
            let _unregister = (n > 1).then(|| Unregister(pending, token));
            // Registered before answering: the dialler opens lanes only after the answer.
            let answered = send.write_all(&preamble(version)).await;
            let collected = async {
                answered.map_err(|e| write_error(e, peer))?;
                let mut lanes: Vec<Option<Lane>> = (1..n).map(|_| None).collect();
                for _ in 1..n {
                    let (i, lane) = lane_rx.recv().await.ok_or_else(|| NetError::Refused {
                        peer: peer.to_owned(),
                        reason: "listener stopped".into(),
                    })?;
                    let slot = lanes
                        .get_mut(usize::from(i) - 1)
                        .ok_or_else(|| protocol(format!("lane index {i} out of range")))?;
                    if slot.replace(lane).is_some() {
                        return Err(protocol(format!("lane {i} joined twice")));
                    }
                }
                Ok(lanes.into_iter().flatten().collect::<Vec<Lane>>())
            }
            .await;
            let lanes = collected?;
            Ok(Some(make_conn(
                endpoint,
                (connection, send, recv),
                lanes,
                peer.to_owned(),
                config,
            )))
        }
        ROLE_LANE if (1..MAX_LANES).contains(&n) => {
            let target = {
                let map = pending.lock().unwrap_or_else(|p| p.into_inner());
                map.get(&token)
                    .filter(|p| p.ip == ip)
                    .map(|p| p.lanes.clone())
            };
            let Some(target) = target else {
                connection.close(VarInt::from_u32(code::PROTOCOL), b"unknown link");
                return Err(protocol("lane of an unknown link".into()));
            };
            send.write_all(&preamble(version))
                .await
                .map_err(|e| write_error(e, peer))?;
            let _ = target.send((n, (connection, send, recv)));
            Ok(None)
        }
        _ => {
            connection.close(VarInt::from_u32(code::PROTOCOL), b"bad hello");
            Err(protocol(format!("bad hello role {role} / {n}")))
        }
    }
}

/// Wraps an established, preamble-checked primary stream and its extra lanes into a
/// [`Conn`], and starts the writer tasks.
fn make_conn(
    endpoint: Endpoint,
    primary: Lane,
    lanes: Vec<Lane>,
    peer_addr: String,
    config: &NetConfig,
) -> Conn {
    let (connection, send, recv) = primary;
    let state = Arc::new(LinkState::default());
    let mut lane_txs = Vec::with_capacity(lanes.len());
    let mut lane_recvs = Vec::with_capacity(lanes.len());
    let mut lane_conns = Vec::with_capacity(lanes.len());
    for (conn, send, recv) in lanes {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(lane_writer(
            send,
            rx,
            state.clone(),
            conn.clone(),
            config.idle_timeout,
        ));
        lane_txs.push(tx);
        lane_recvs.push(recv);
        lane_conns.push(conn);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(writer(
        send,
        rx,
        lane_txs,
        state.clone(),
        connection.clone(),
        endpoint.clone(),
        config.idle_timeout,
    ));
    Conn {
        sender: FrameSender {
            tx,
            state: state.clone(),
            max_frame: config.max_frame,
            own_inbox: None,
        },
        receiver: FrameReceiver {
            inner: RecvInner::Quic(Box::new(QuicReceiver {
                recv,
                lanes: lane_recvs,
                connection,
                _lane_connections: lane_conns,
                _endpoint: endpoint,
                state,
                max_frame: config.max_frame,
                pending: Bytes::new(),
                header: [0; 8],
                header_len: 0,
                body: None,
                done: None,
            })),
        },
        peer_addr,
    }
}

/// The byte range of part `i` of a `len`-byte frame striped over `k` streams.
fn part_range(len: usize, k: usize, i: usize) -> std::ops::Range<usize> {
    let chunk = len.div_ceil(k.max(1));
    let start = (i * chunk).min(len);
    start..(start + chunk).min(len)
}

/// Appends one command to the write batch (striping large frames over the lanes).
/// Returns `Some(reason)` for a close.
fn push_cmd(
    cmd: Cmd,
    buf: &mut Vec<u8>,
    chunks: &mut Vec<Bytes>,
    lanes: &[mpsc::UnboundedSender<Bytes>],
) -> Option<String> {
    match cmd {
        Cmd::Frame(f) if f.len() >= STRIPE_MIN && !lanes.is_empty() => {
            let len = f.len();
            buf.extend_from_slice(&(STRIPE_BIT | len as u64).to_le_bytes());
            chunks.push(Bytes::from(std::mem::take(buf)));
            let whole = Bytes::from(f);
            let k = lanes.len() + 1;
            chunks.push(whole.slice(part_range(len, k, 0)));
            for (i, lane) in lanes.iter().enumerate() {
                // A failed lane is noticed by its writer task, which downs the link.
                let _ = lane.send(whole.slice(part_range(len, k, i + 1)));
            }
            None
        }
        Cmd::Frame(f) => {
            buf.extend_from_slice(&(f.len() as u64).to_le_bytes());
            if f.len() <= COPY_LIMIT {
                buf.extend_from_slice(&f);
            } else {
                chunks.push(Bytes::from(std::mem::take(buf)));
                chunks.push(Bytes::from(f));
            }
            None
        }
        Cmd::Close(reason) => {
            let mut end = reason.len().min(MAX_CLOSE_REASON);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            buf.extend_from_slice(&(CLOSE_BIT | end as u64).to_le_bytes());
            buf.extend_from_slice(&reason.as_bytes()[..end]);
            Some(reason)
        }
    }
}

/// Drains a link's queue into its primary QUIC stream, coalescing small frames into one
/// write and handing the parts of large frames to the lanes.
async fn writer(
    mut send: SendStream,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    lanes: Vec<mpsc::UnboundedSender<Bytes>>,
    state: Arc<LinkState>,
    connection: quinn::Connection,
    _endpoint: Endpoint,
    linger: Duration,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            cmd = rx.recv() => cmd,
            e = connection.closed() => {
                state.shut(&describe_connection_error(&e));
                return;
            }
            _ = state.wait_down() => {
                // Closed locally without a close command (receiver error): stop writing.
                if let Ok(cmd) = rx.try_recv() { Some(cmd) } else { return; }
            }
        };
        let Some(first) = first else {
            // Every sender was dropped: end the stream after what was written.
            let _ = send.finish();
            let _ = tokio::time::timeout(linger, send.stopped()).await;
            return;
        };
        let mut closing = push_cmd(first, &mut buf, &mut chunks, &lanes);
        let mut batched = buf.len() + chunks.iter().map(Bytes::len).sum::<usize>();
        while closing.is_none() && batched < BATCH_BYTES {
            let Ok(cmd) = rx.try_recv() else { break };
            let before = buf.len();
            let n = chunks.len();
            closing = push_cmd(cmd, &mut buf, &mut chunks, &lanes);
            batched += buf.len().saturating_sub(before)
                + chunks[n..].iter().map(Bytes::len).sum::<usize>();
        }
        if !buf.is_empty() {
            chunks.push(Bytes::from(std::mem::take(&mut buf)));
        }
        let res = send.write_all_chunks(&mut chunks).await;
        chunks.clear();
        if let Err(e) = res {
            state.shut(&format!("write failed: {e}"));
            return;
        }
        if closing.is_some() {
            // The close frame is the last thing on the stream. The connection itself is
            // released when both halves are dropped, so frames the peer has received but
            // not yet read are not discarded.
            let _ = send.finish();
            let _ = tokio::time::timeout(linger, send.stopped()).await;
            return;
        }
    }
}

/// Writes the parts of striped frames handed to one extra lane, in order.
async fn lane_writer(
    mut send: SendStream,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    state: Arc<LinkState>,
    connection: quinn::Connection,
    linger: Duration,
) {
    loop {
        let part = tokio::select! {
            biased;
            part = rx.recv() => part,
            e = connection.closed() => {
                state.shut(&describe_connection_error(&e));
                return;
            }
        };
        let Some(part) = part else {
            let _ = send.finish();
            let _ = tokio::time::timeout(linger, send.stopped()).await;
            return;
        };
        if let Err(e) = send.write_chunk(part).await {
            state.shut(&format!("write on a lane failed: {e}"));
            return;
        }
    }
}

fn describe_connection_error(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ApplicationClosed(a) => {
            let reason = String::from_utf8_lossy(&a.reason);
            if reason.is_empty() {
                "the peer closed the connection".to_owned()
            } else {
                reason.into_owned()
            }
        }
        ConnectionError::LocallyClosed => "closed locally".to_owned(),
        ConnectionError::TimedOut => "the peer stopped responding (idle timeout)".to_owned(),
        other => other.to_string(),
    }
}

/// The frame being received.
#[derive(Debug)]
enum Body {
    /// A frame on the primary stream: bytes so far, full length, whether it is a close.
    Plain(Vec<u8>, usize, bool),
    /// A frame striped over the primary stream and the lanes: the zeroed buffer, and how
    /// many bytes of each part have arrived.
    Striped(Vec<u8>, Vec<usize>),
}

/// The receiving half of a QUIC link: parses frames out of the primary stream (and the
/// lanes, for striped frames), enforcing the frame limit before allocating. All parsing
/// state lives here so that `recv` is cancel-safe.
#[derive(Debug)]
pub(crate) struct QuicReceiver {
    recv: RecvStream,
    lanes: Vec<RecvStream>,
    connection: quinn::Connection,
    _lane_connections: Vec<quinn::Connection>,
    _endpoint: Endpoint,
    state: Arc<LinkState>,
    max_frame: usize,
    /// Bytes read from the primary stream and not yet parsed.
    pending: Bytes,
    header: [u8; 8],
    header_len: usize,
    body: Option<Body>,
    done: Option<String>,
}

/// What parsing the pending bytes produced.
enum Parsed {
    Frame(Frame),
    NeedMore,
}

/// The outcome of waiting for the parts of a striped frame.
enum LaneProgress {
    Progress,
    Ended,
    Failed(ReadError),
}

impl QuicReceiver {
    pub(crate) async fn recv(&mut self) -> Result<Frame, NetError> {
        loop {
            if let Some(reason) = &self.done {
                return Err(NetError::Closed {
                    reason: reason.clone(),
                });
            }
            match self.parse() {
                Ok(Parsed::Frame(f)) => return Ok(f),
                Ok(Parsed::NeedMore) => {}
                Err(e) => return Err(e),
            }
            if self.state.is_down() {
                let reason = self.state.reason();
                return Err(self.finish(reason, None));
            }
            if matches!(self.body, Some(Body::Striped(..))) {
                let state = self.state.clone();
                let progress = tokio::select! {
                    p = self.striped_progress() => p,
                    _ = state.wait_down() => continue,
                };
                match progress {
                    LaneProgress::Progress => continue,
                    LaneProgress::Ended => {
                        return Err(
                            self.finish("the peer ended a stream inside a frame".to_owned(), None)
                        )
                    }
                    LaneProgress::Failed(e) => return Err(self.read_failed(e)),
                }
            }
            let read = tokio::select! {
                r = self.recv.read_chunk(usize::MAX, true) => r,
                _ = self.state.wait_down() => continue,
            };
            match read {
                Ok(Some(chunk)) => self.pending = chunk.bytes,
                Ok(None) => {
                    let reason = if self.header_len > 0 || self.body.is_some() {
                        "the peer ended the stream inside a frame"
                    } else {
                        "the peer finished the link"
                    };
                    return Err(self.finish(reason.to_owned(), None));
                }
                Err(e) => return Err(self.read_failed(e)),
            }
        }
    }

    fn read_failed(&mut self, e: ReadError) -> NetError {
        match e {
            ReadError::ConnectionLost(e) => self.finish(describe_connection_error(&e), None),
            e => self.finish(format!("stream error: {e}"), None),
        }
    }

    /// Reads directly into the unfinished parts of the striped frame, from every stream at
    /// once; resolves as soon as any of them made progress.
    fn striped_progress(&mut self) -> impl std::future::Future<Output = LaneProgress> + '_ {
        let QuicReceiver {
            recv, lanes, body, ..
        } = self;
        std::future::poll_fn(move |cx| {
            let Some(Body::Striped(buf, filled)) = body.as_mut() else {
                return std::task::Poll::Ready(LaneProgress::Progress);
            };
            let len = buf.len();
            let k = filled.len();
            let mut progressed = false;
            for (i, got) in filled.iter_mut().enumerate() {
                let range = part_range(len, k, i);
                if *got >= range.len() {
                    continue;
                }
                let stream = if i == 0 {
                    &mut *recv
                } else {
                    match lanes.get_mut(i - 1) {
                        Some(s) => s,
                        None => return std::task::Poll::Ready(LaneProgress::Ended),
                    }
                };
                let slice = &mut buf[range.start + *got..range.end];
                match stream.poll_read(cx, slice) {
                    std::task::Poll::Ready(Ok(0)) => {
                        return std::task::Poll::Ready(LaneProgress::Ended)
                    }
                    std::task::Poll::Ready(Ok(n)) => {
                        *got += n;
                        progressed = true;
                    }
                    std::task::Poll::Ready(Err(e)) => {
                        return std::task::Poll::Ready(LaneProgress::Failed(e))
                    }
                    std::task::Poll::Pending => {}
                }
            }
            if progressed {
                std::task::Poll::Ready(LaneProgress::Progress)
            } else {
                std::task::Poll::Pending
            }
        })
    }

    /// Parses as much of `pending` as makes one frame.
    fn parse(&mut self) -> Result<Parsed, NetError> {
        loop {
            match self.body.as_mut() {
                None => {
                    let n = (8 - self.header_len).min(self.pending.len());
                    self.header[self.header_len..self.header_len + n]
                        .copy_from_slice(&self.pending[..n]);
                    self.pending.advance(n);
                    self.header_len += n;
                    if self.header_len < 8 {
                        return Ok(Parsed::NeedMore);
                    }
                    self.header_len = 0;
                    self.start_frame(u64::from_le_bytes(self.header))?;
                }
                Some(Body::Plain(body, len, is_close)) => {
                    let n = (*len - body.len()).min(self.pending.len());
                    body.extend_from_slice(&self.pending[..n]);
                    self.pending.advance(n);
                    if body.len() < *len {
                        return Ok(Parsed::NeedMore);
                    }
                    let is_close = *is_close;
                    let Some(Body::Plain(body, _, _)) = self.body.take() else {
                        continue;
                    };
                    if is_close {
                        let reason = String::from_utf8_lossy(&body).into_owned();
                        return Err(self.finish(reason, None));
                    }
                    return Ok(Parsed::Frame(body));
                }
                Some(Body::Striped(buf, filled)) => {
                    // Part 0 travels on the primary stream, right after the header.
                    let part0 = part_range(buf.len(), filled.len(), 0);
                    let n = (part0.len() - filled[0]).min(self.pending.len());
                    buf[filled[0]..filled[0] + n].copy_from_slice(&self.pending[..n]);
                    self.pending.advance(n);
                    filled[0] += n;
                    let len = buf.len();
                    let k = filled.len();
                    let complete = filled
                        .iter()
                        .enumerate()
                        .all(|(i, got)| *got >= part_range(len, k, i).len());
                    if !complete {
                        return Ok(Parsed::NeedMore);
                    }
                    let Some(Body::Striped(buf, _)) = self.body.take() else {
                        continue;
                    };
                    return Ok(Parsed::Frame(buf));
                }
            }
        }
    }

    /// Checks a frame header and prepares the body it announces.
    fn start_frame(&mut self, word: u64) -> Result<(), NetError> {
        let is_close = word & CLOSE_BIT != 0;
        let striped = word & STRIPE_BIT != 0;
        let len = word & !(CLOSE_BIT | STRIPE_BIT);
        let limit = if is_close {
            MAX_CLOSE_REASON
        } else {
            self.max_frame
        };
        let peer = || self.connection.remote_address().to_string();
        let err = if is_close && striped {
            Some(NetError::Protocol {
                peer: peer(),
                reason: "a close frame cannot be striped".into(),
            })
        } else if striped && self.lanes.is_empty() {
            Some(NetError::Protocol {
                peer: peer(),
                reason: "striped frame on a link without lanes".into(),
            })
        } else if len > limit as u64 {
            Some(if is_close {
                NetError::Protocol {
                    peer: peer(),
                    reason: format!("close reason of {len} bytes"),
                }
            } else {
                NetError::FrameTooLarge {
                    len,
                    limit: limit as u64,
                }
            })
        } else {
            None
        };
        if let Some(err) = err {
            let reason = err.to_string();
            return Err(self.finish_with(reason, Some(code::PROTOCOL), err));
        }
        // `len <= limit`, which is a usize.
        let len = len as usize;
        self.body = Some(if striped {
            Body::Striped(vec![0; len], vec![0; self.lanes.len() + 1])
        } else {
            Body::Plain(Vec::with_capacity(len), len, is_close)
        });
        Ok(())
    }

    /// Ends the link with `reason`, closing the connection with `code` if given.
    fn finish(&mut self, reason: String, code: Option<u32>) -> NetError {
        let err = NetError::Closed {
            reason: reason.clone(),
        };
        self.finish_with(reason, code, err)
    }

    fn finish_with(&mut self, reason: String, code: Option<u32>, err: NetError) -> NetError {
        self.state.shut(&reason);
        let _ = self.recv.stop(VarInt::from_u32(code::CLOSED));
        for lane in &mut self.lanes {
            let _ = lane.stop(VarInt::from_u32(code::CLOSED));
        }
        if let Some(code) = code {
            self.connection
                .close(VarInt::from_u32(code), reason.as_bytes());
            for c in &self._lane_connections {
                c.close(VarInt::from_u32(code), reason.as_bytes());
            }
        }
        self.pending = Bytes::new();
        self.body = None;
        self.done = Some(reason);
        err
    }
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
