//! Which transport the links of this binary use. QUIC with mutual TLS by default (feature
//! `quic`); a user can swap in their own `Transport` (an RDMA fabric, a test harness) for
//! every process of the binary without touching the scheduler.
//!
//! A transport implements `dagger_net::Transport` and `Listener`, and builds each link's
//! `Conn` from its own `dagger_net::FrameSink` (sending side) and `FrameSource`
//! (receiving side); `dagger_net::conformance` (feature `conformance`) checks that it keeps
//! the contract the driver and the workers rely on: ordered frames, the frame limits,
//! close reasons, errors after the peer is gone.

use crate::context::ContextError;
use dagger_net::{Identity, NetError, Transport};
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
/// make the same choice. The factory is called once per process that links to others
/// (never for [`Context::threads`](crate::Context::threads), which links none), inside the
/// process's I/O runtime.
///
/// It gets the process's identity: with the `quic` feature a certificate and key issued by
/// the cluster's certificate authority, and that authority's certificate; without it the
/// cluster has no certificate authority and the identity is [`Identity::empty`], so the
/// transport must authenticate peers by its own means (or not at all).
pub fn set_transport(
    factory: impl Fn(&Identity) -> Result<Arc<dyn Transport>, NetError> + Send + Sync + 'static,
) {
    *slot().write() = Some(Arc::new(factory));
}

/// Whether this process can link to others: a transport was registered, or QUIC is built in.
pub(crate) fn available() -> bool {
    cfg!(feature = "quic") || slot().read().is_some()
}

/// The transport for a process with `identity`: the user's factory, or QUIC. Fails with
/// [`ContextError::NoTransport`] when there is neither. Must be called inside a tokio
/// runtime (QUIC binds its sockets there).
pub(crate) fn make(identity: &Identity) -> Result<Arc<dyn Transport>, ContextError> {
    let custom = slot().read().clone();
    match custom {
        Some(f) => Ok(f(identity)?),
        None => builtin(identity),
    }
}

#[cfg(feature = "quic")]
fn builtin(identity: &Identity) -> Result<Arc<dyn Transport>, ContextError> {
    Ok(Arc::new(dagger_net::QuicTransport::new(
        identity.clone(),
        dagger_net::NetConfig::default(),
    )?))
}

#[cfg(not(feature = "quic"))]
fn builtin(_identity: &Identity) -> Result<Arc<dyn Transport>, ContextError> {
    Err(ContextError::NoTransport)
}
