//! A context of the driver's own cores links no processes: it opens no socket, makes no
//! certificate authority and listens nowhere, in every feature configuration. Without the
//! `quic` feature, a context that would link processes and has no transport to do it with
//! is refused with a typed error.
//!
//! One test per concern, each alone in this binary's process would be ideal; the socket
//! count is only read by the single test that may open none, and no other test of this
//! file opens a socket either.

use dagger::prelude::*;

#[dagger::task]
fn triple(x: u64) -> u64 {
    3 * x
}

/// Sockets this process holds now (any family, any kind): the links of `/proc/self/fd`
/// that point at `socket:[inode]`.
fn sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd is readable")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[test]
fn a_threads_context_opens_no_socket_and_makes_no_certificate_authority() {
    dagger::init();
    let before = sockets();
    let ctx = Context::threads().unwrap();
    // A task ran, so the driver's own worker has joined (after setting up its peer side).
    assert_eq!(triple::spawn(&ctx, 14).unwrap().fetch().unwrap(), 42);
    assert_eq!(
        ctx.collect(triple::delayed(triple::delayed(2))).unwrap(),
        18
    );
    assert_eq!(sockets(), before, "Context::threads() opened a socket");
    assert_eq!(ctx.listen_addr(), None);
    assert!(ctx.driver_identity().is_none());
    #[cfg(feature = "quic")]
    assert!(ctx.cluster_ca().is_none());
    assert_eq!(format!("{ctx:?}"), "Context(in-process)");
    ctx.shutdown();
}

#[cfg(not(feature = "quic"))]
#[test]
fn without_quic_or_a_registered_transport_linking_processes_is_a_typed_error() {
    use dagger::ContextError;
    dagger::init();
    let refused = |r: Result<Context, ContextError>| matches!(r, Err(ContextError::NoTransport));
    assert!(refused(Context::local(2)));
    assert!(refused(Context::builder().listen("127.0.0.1:0").build()));
    assert!(refused(Context::builder().driver_runs_tasks(false).build()));
    assert!(matches!(
        Context::builder().cert_dir(std::env::temp_dir()).build(),
        Err(ContextError::InvalidSetting {
            setting: "cert_dir",
            ..
        })
    ));
    let err = Context::local(1).unwrap_err().to_string();
    assert!(
        err.contains("quic") && err.contains("set_transport"),
        "the error names the feature and the call: {err}"
    );
    // The driver's own cores need no transport.
    let ctx = Context::local(0).unwrap();
    assert_eq!(triple::spawn(&ctx, 1).unwrap().fetch().unwrap(), 3);
}
