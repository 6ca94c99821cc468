//! Which transport the links of this binary use. QUIC with mutual TLS by default; a user
//! can swap in their own `Transport` (an RDMA fabric, a test harness) for every process of
//! the binary without touching the scheduler.
//!
//! A transport implements `dagger_net::Transport` and `Listener`, and builds each link's
//! `Conn` from its own `dagger_net::FrameSink` (sending side) and `FrameSource`
//! (receiving side); `dagger_net::conformance` (feature `conformance`) checks that it keeps
//! the contract the driver and the workers rely on: ordered frames, the frame limits,
//! close reasons, errors after the peer is gone.

use dagger_net::{Identity, NetConfig, NetError, QuicTransport, Transport};
use parking_lot::RwLock;
use std::sync::Arc;

/// Makes the transport of one process from the identity the cluster gave it.
pub type TransportFactory = dyn Fn(&Identity) -> Result<Arc<dyn Transport>, NetError> + Send + Sync;

fn slot() -> &'static RwLock<Option<Arc<TransportFactory>>> {
    static SLOT: RwLock<Option<Arc<TransportFactory>>> = RwLock::new(None);
    &SLOT
}

/// Replaces the transport that the driver and the workers of this binary use for their
/// links (worker ↔ driver and worker ↔ worker). Like detectors, call it before
/// [`init`](crate::init) in `main`, so that worker processes (which run `main` again)
/// make the same choice. The factory is called once per process, inside the process's
/// I/O runtime; it gets the process's identity (certificate, key and the cluster's CA).
pub fn set_transport(
    factory: impl Fn(&Identity) -> Result<Arc<dyn Transport>, NetError> + Send + Sync + 'static,
) {
    *slot().write() = Some(Arc::new(factory));
}

/// The transport for a process with `identity`: the user's factory, or QUIC.
/// Must be called inside a tokio runtime (QUIC binds its sockets there).
pub(crate) fn make(identity: &Identity) -> Result<Arc<dyn Transport>, NetError> {
    let custom = slot().read().clone();
    match custom {
        Some(f) => f(identity),
        None => Ok(Arc::new(QuicTransport::new(
            identity.clone(),
            NetConfig::default(),
        )?)),
    }
}
