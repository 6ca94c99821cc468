//! Measurements of the QUIC path, for benchmarks that read the cluster's figures against
//! the ceiling of the transport underneath.
//!
//! `raw_quic_pair` (feature `quic`) opens a bare quinn stream pair with exactly the TLS and transport
//! settings of cluster links, without this crate's framing; the other functions time the
//! raw path and the [`Conn`] path the same way. Nothing here asserts a speed.

#[cfg(feature = "quic")]
use crate::quic::handshake::{open_raw, preamble};
#[cfg(feature = "quic")]
use crate::quic::tls::{build_configs, make_endpoint};
use crate::{Conn, NetError, Transport};
#[cfg(feature = "quic")]
use crate::{Identity, NetConfig};
#[cfg(feature = "quic")]
use std::net::SocketAddr;
use std::time::Instant;

#[cfg(feature = "quic")]
/// Both ends of one bidirectional quinn stream on loopback, with the cluster's settings.
/// Holds the endpoints and connections, so the streams stay usable while it lives.
pub struct RawQuicPair {
    /// The dialling side's sending half.
    pub client_send: quinn::SendStream,
    /// The dialling side's receiving half.
    pub client_recv: quinn::RecvStream,
    /// The accepting side's sending half.
    pub server_send: quinn::SendStream,
    /// The accepting side's receiving half.
    pub server_recv: quinn::RecvStream,
    /// The dialling side's connection.
    pub client_connection: quinn::Connection,
    /// The accepting side's connection.
    pub server_connection: quinn::Connection,
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
}

#[cfg(feature = "quic")]
/// Opens a [`RawQuicPair`] between two fresh endpoints on 127.0.0.1 using `identity` on
/// both sides. Must be awaited inside a tokio runtime; costs one QUIC handshake.
pub async fn raw_quic_pair(
    identity: &Identity,
    config: &NetConfig,
) -> Result<RawQuicPair, NetError> {
    let (server_cfg, client_cfg) = build_configs(identity, config)?;
    let any: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
    let server_ep = make_endpoint(any, Some(server_cfg), "127.0.0.1:0")?;
    let client_ep = make_endpoint(any, None, "127.0.0.1:0")?;
    let server_addr = server_ep.local_addr()?;
    let accept = async {
        let incoming = server_ep.accept().await.ok_or_else(|| NetError::Closed {
            reason: "endpoint closed".into(),
        })?;
        let conn = incoming
            .await
            .map_err(|e| crate::quic::handshake::handshake_error(e, "raw client"))?;
        let (send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| crate::quic::handshake::handshake_error(e, "raw client"))?;
        let mut p = [0u8; 18];
        recv.read_exact(&mut p)
            .await
            .map_err(|e| NetError::Closed {
                reason: e.to_string(),
            })?;
        Ok::<_, NetError>((conn, send, recv))
    };
    let dial = async {
        let (conn, mut send, recv) = open_raw(
            &client_ep,
            client_cfg,
            server_addr,
            &server_addr.to_string(),
        )
        .await?;
        let mut hello = [0u8; 18];
        hello[..8].copy_from_slice(&preamble(dagger_core::wire::PROTOCOL_VERSION));
        hello[8..].copy_from_slice(&crate::quic::handshake::hello_ext(0, 1, 0));
        send.write_all(&hello).await.map_err(|e| NetError::Closed {
            reason: e.to_string(),
        })?;
        Ok::<_, NetError>((conn, send, recv))
    };
    let (server, client) = tokio::try_join!(accept, dial)?;
    Ok(RawQuicPair {
        client_send: client.1,
        client_recv: client.2,
        server_send: server.1,
        server_recv: server.2,
        client_connection: client.0,
        server_connection: server.0,
        _endpoints: (server_ep, client_ep),
    })
}

fn io(e: impl std::fmt::Display) -> NetError {
    NetError::Closed {
        reason: e.to_string(),
    }
}

#[cfg(feature = "quic")]
/// Sends `count` buffers of `len` bytes one way over a [`RawQuicPair`] (the receiver reads
/// them with `read_chunk`, without copying) and returns the rate in MB/s (10^6 bytes per
/// second), timed from the first write until the last byte arrived.
pub async fn raw_quic_mbps(identity: &Identity, count: usize, len: usize) -> Result<f64, NetError> {
    let pair = raw_quic_pair(identity, &NetConfig::default()).await?;
    let mut send = pair.client_send;
    let mut recv = pair.server_recv;
    let total = count * len;
    let payload = bytes::Bytes::from(vec![7u8; len]);
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..count {
            send.write_chunk(payload.clone()).await.map_err(io)?;
        }
        Ok::<_, NetError>(send)
    });
    let mut got = 0usize;
    while got < total {
        match recv.read_chunk(usize::MAX, true).await.map_err(io)? {
            Some(c) => got += c.bytes.len(),
            None => break,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let _send = writer.await.map_err(io)??;
    Ok(got as f64 / secs / 1e6)
}

#[cfg(feature = "quic")]
/// Times `iters` ping-pongs of a 64-byte message over a [`RawQuicPair`] and returns the
/// median round trip in microseconds.
pub async fn raw_quic_rtt_us(identity: &Identity, iters: usize) -> Result<f64, NetError> {
    let pair = raw_quic_pair(identity, &NetConfig::default()).await?;
    let (mut c_send, mut c_recv) = (pair.client_send, pair.client_recv);
    let (mut s_send, mut s_recv) = (pair.server_send, pair.server_recv);
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        for _ in 0..iters {
            s_recv.read_exact(&mut buf).await.map_err(io)?;
            s_send.write_all(&buf).await.map_err(io)?;
        }
        Ok::<_, NetError>((s_send, s_recv))
    });
    let mut buf = [0u8; 64];
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        c_send.write_all(&buf).await.map_err(io)?;
        c_recv.read_exact(&mut buf).await.map_err(io)?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let _keep = echo.await.map_err(io)??;
    Ok(median(&mut samples))
}

/// Opens a link from `transport` to itself (listen on `addr`, dial it) and returns both
/// ends: `(dialler, accepted)`. The dialler has already sent a one-byte hello, which the
/// accepted end has received, so frames of any size up to the frame limit may follow
/// (see [`NetConfig::max_first_frame`](crate::NetConfig::max_first_frame)).
pub async fn loop_pair(transport: &dyn Transport, addr: &str) -> Result<(Conn, Conn), NetError> {
    let mut listener = transport.listen(addr).await?;
    let target = listener.local_addr();
    let (a, b) = tokio::join!(transport.connect(&target), listener.accept());
    let (a, mut b) = (a?, b?);
    a.sender.send(vec![0])?;
    b.receiver.recv().await?;
    Ok((a, b))
}

/// Sends `count` frames of `len` bytes one way over a [`Conn`] pair of `transport` and
/// returns the rate in MB/s, timed from the first send until the last frame was received.
pub async fn conn_mbps(
    transport: &dyn Transport,
    addr: &str,
    count: usize,
    len: usize,
) -> Result<f64, NetError> {
    let (a, mut b) = loop_pair(transport, addr).await?;
    let frames: Vec<Vec<u8>> = (0..count).map(|i| vec![i as u8; len]).collect();
    let start = Instant::now();
    for f in frames {
        a.sender.send(f)?;
    }
    let mut got = 0usize;
    for _ in 0..count {
        got += b.receiver.recv().await?.len();
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(got as f64 / secs / 1e6)
}

/// Times `iters` ping-pongs of a 64-byte frame over a [`Conn`] pair of `transport` and
/// returns the median round trip in microseconds.
pub async fn conn_rtt_us(
    transport: &dyn Transport,
    addr: &str,
    iters: usize,
) -> Result<f64, NetError> {
    let (mut a, b) = loop_pair(transport, addr).await?;
    let Conn {
        sender: b_send,
        receiver: mut b_recv,
        ..
    } = b;
    let echo = tokio::spawn(async move {
        for _ in 0..iters {
            let f = b_recv.recv().await?;
            b_send.send(f)?;
        }
        Ok::<_, NetError>((b_send, b_recv))
    });
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        a.sender.send(vec![0u8; 64])?;
        a.receiver.recv().await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let _keep = echo.await.map_err(io)??;
    Ok(median(&mut samples))
}

fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}
