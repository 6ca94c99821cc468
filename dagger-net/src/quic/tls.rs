//! TLS and QUIC configuration of cluster links: mutual TLS 1.3 against the cluster CA
//! (rustls with the ring provider), quinn transport settings, and UDP endpoints.

use crate::{Identity, NetConfig, NetError};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    Endpoint, EndpointConfig, IdleTimeout, MtuDiscoveryConfig, TokioRuntime, TransportConfig,
    VarInt,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// ALPN protocol id of dagger links.
const ALPN: &[u8] = b"dagger";
/// Per-stream and per-connection flow-control windows. Large, so that one 8 MiB frame
/// never waits for window updates on a fast link.
pub(crate) const STREAM_WINDOW: u32 = 128 << 20;
pub(crate) const CONN_WINDOW: u32 = 256 << 20;
/// UDP socket buffer size requested from the kernel.
const SOCKET_BUFFER: usize = 16 << 20;

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

    let transport = Arc::new(transport_config(config, STREAM_WINDOW, CONN_WINDOW)?);
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
/// `stream_window` and `conn_window` are the per-stream and per-connection flow-control
/// windows (receive, and send for the connection).
pub(crate) fn transport_config(
    config: &NetConfig,
    stream_window: u32,
    conn_window: u32,
) -> Result<TransportConfig, NetError> {
    let mut t = TransportConfig::default();
    let idle = IdleTimeout::try_from(config.idle_timeout).map_err(|_| NetError::Address {
        addr: String::new(),
        reason: format!("idle timeout {:?} is out of range", config.idle_timeout),
    })?;
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive))
        .stream_receive_window(VarInt::from_u32(stream_window))
        .receive_window(VarInt::from_u32(conn_window))
        .send_window(u64::from(conn_window))
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
