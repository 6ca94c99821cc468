//! The versioned preamble and the join of a link's connections.
//!
//! On every connection of a link the dialler opens one bidirectional stream and writes
//! the 8-byte preamble (`b"DAGR"` + protocol version, u32 LE) and a 10-byte hello (role:
//! 0 primary / 1 lane / 2 primary with a same-host offer; the lane count for a primary or
//! the lane's index; a u64 token naming the link). The acceptor answers with its own
//! preamble, followed by its own offer for role 2. When both offers agree (same host,
//! both willing) the link then switches to shared-memory rings (see `upgrade`). A primary is handed to
//! the listener once all its lanes joined; a lane is handed to the primary with its token
//! (from the same IP address).

use super::code;
use super::lanes::make_conn;
use super::MAX_LANES;
use crate::{Conn, NetConfig, NetError};
use quinn::{ConnectionError, Endpoint, ReadError, RecvStream, SendStream, VarInt};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The preamble's magic bytes.
pub(crate) const MAGIC: &[u8; 4] = b"DAGR";
/// Hello roles: the primary connection of a link, or an extra lane.
pub(crate) const ROLE_PRIMARY: u8 = 0;
pub(crate) const ROLE_LANE: u8 = 1;
/// A primary connection whose hello is followed by a same-host offer (see the `ring`
/// module); the acceptor answers with its own offer after its preamble.
pub(crate) const ROLE_PRIMARY_OFFER: u8 = 2;

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

pub(crate) fn read_error(e: ReadError, peer: &str) -> NetError {
    match e {
        ReadError::ConnectionLost(c) => handshake_error(c, peer),
        other => NetError::Refused {
            peer: peer.to_owned(),
            reason: other.to_string(),
        },
    }
}

pub(crate) fn write_error(e: quinn::WriteError, peer: &str) -> NetError {
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

/// Dials `sock`, sends the preamble, `ext` and `extra` (the offer of a primary with one),
/// and checks the answering preamble.
pub(crate) async fn dial_stream(
    endpoint: &Endpoint,
    client: quinn::ClientConfig,
    sock: SocketAddr,
    addr: &str,
    version: u32,
    ext: [u8; 10],
    extra: &[u8],
) -> Result<(quinn::Connection, SendStream, RecvStream), NetError> {
    let (connection, mut send, mut recv) = open_raw(endpoint, client, sock, addr).await?;
    let mut hello = Vec::with_capacity(18 + extra.len());
    hello.extend_from_slice(&preamble(version));
    hello.extend_from_slice(&ext);
    hello.extend_from_slice(extra);
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
    #[cfg(target_os = "linux")]
    let offer = crate::ring::enabled(config).then(|| crate::ring::Offer::local(true));
    #[cfg(target_os = "linux")]
    let (role, extra) = match &offer {
        Some(o) => (ROLE_PRIMARY_OFFER, o.encode()),
        None => (ROLE_PRIMARY, Vec::new()),
    };
    #[cfg(not(target_os = "linux"))]
    let (role, extra) = (ROLE_PRIMARY, Vec::new());
    #[allow(unused_mut)]
    let mut primary = dial_stream(
        endpoint,
        client.clone(),
        sock,
        addr,
        version,
        hello_ext(role, lanes, token),
        &extra,
    )
    .await?;
    let mut extra = Vec::with_capacity(usize::from(lanes.saturating_sub(1)));
    let mut pending = tokio::task::JoinSet::new();
    for i in 1..lanes {
        let (ep, client, addr) = (endpoint.clone(), client.clone(), addr.to_owned());
        let ext = hello_ext(ROLE_LANE, i, token);
        pending.spawn(async move {
            let r = dial_stream(&ep, client, sock, &addr, version, ext, &[]).await;
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
    #[cfg(target_os = "linux")]
    if let Some(ours) = offer {
        let (_, send, recv) = &mut primary;
        let theirs = super::upgrade::read_offer(recv, addr).await?;
        if ours.agrees(&theirs) {
            if let Some((tx, rx)) = super::upgrade::dial_rings(send, recv, config, addr).await? {
                // The extra lanes (if any) are not needed: dropping them closes them.
                drop(extra);
                let (connection, send, recv) = primary;
                let live = crate::ring::link::Liveness {
                    connection,
                    endpoint: endpoint.clone(),
                    streams: (send, recv),
                    peer_pid: theirs.pid,
                };
                return crate::ring::link::make_ring_conn(
                    tx,
                    rx,
                    live,
                    sock.to_string(),
                    config,
                    false,
                );
            }
        }
    }
    Ok(make_conn(
        endpoint.clone(),
        primary,
        extra,
        sock.to_string(),
        config,
        false,
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
pub(crate) async fn accept_loop(
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
        ROLE_PRIMARY | ROLE_PRIMARY_OFFER if (1..=MAX_LANES).contains(&n) => {
            // The dialler's same-host offer, and ours in answer.
            #[cfg(target_os = "linux")]
            let offers = if role == ROLE_PRIMARY_OFFER {
                let theirs = match super::upgrade::read_offer(&mut recv, peer).await {
                    Ok(o) => o,
                    Err(e) => {
                        connection.close(VarInt::from_u32(code::PROTOCOL), b"bad hello");
                        return Err(e);
                    }
                };
                Some((
                    crate::ring::Offer::local(crate::ring::enabled(config)),
                    theirs,
                ))
            } else {
                None
            };
            #[cfg(not(target_os = "linux"))]
            if role == ROLE_PRIMARY_OFFER {
                connection.close(VarInt::from_u32(code::PROTOCOL), b"bad hello");
                return Err(protocol("same-host offers are not supported here".into()));
            }
            let mut answer = preamble(version).to_vec();
            #[cfg(target_os = "linux")]
            if let Some((ours, _)) = &offers {
                answer.extend_from_slice(&ours.encode());
            }
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
            let answered = send.write_all(&answer).await;
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
            #[cfg(target_os = "linux")]
            if let Some((_, theirs)) = offers.filter(|(ours, theirs)| ours.agrees(theirs)) {
                if let Some((tx, rx)) =
                    super::upgrade::accept_rings(&mut send, &mut recv, peer).await?
                {
                    drop(lanes);
                    let live = crate::ring::link::Liveness {
                        connection,
                        endpoint,
                        streams: (send, recv),
                        peer_pid: theirs.pid,
                    };
                    return crate::ring::link::make_ring_conn(
                        tx,
                        rx,
                        live,
                        peer.to_owned(),
                        config,
                        true,
                    )
                    .map(Some);
                }
            }
            Ok(Some(make_conn(
                endpoint,
                (connection, send, recv),
                lanes,
                peer.to_owned(),
                config,
                true,
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
