//! The Unix-socket transport passes dagger-net's transport conformance suite.

use dagger_net::conformance::{run_all, Subject};
use dagger_net::{NetConfig, NetError, Transport};
use dagger_unix_transport::UnixTransport;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A fresh folder for this test's socket files.
fn socket_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dagger-unix-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("socket folder");
    dir
}

#[test]
fn passes_the_conformance_suite() {
    let dir = socket_dir("conformance");
    let config = NetConfig {
        max_frame: 1 << 20,
        ..NetConfig::default()
    };
    let transport = UnixTransport::new(config.clone());
    let n = Arc::new(AtomicUsize::new(0));
    let sockets = dir.clone();
    let subject = Subject::new(
        move || Arc::new(transport.clone()) as Arc<dyn Transport>,
        move || {
            let i = n.fetch_add(1, Ordering::Relaxed);
            format!("unix:{}", sockets.join(format!("s{i}")).display())
        },
        &config,
    );
    rt().block_on(run_all(&subject)).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn addresses_are_checked() {
    let dir = socket_dir("addresses");
    rt().block_on(async {
        let t = UnixTransport::default();
        assert!(matches!(
            t.listen("tcp:1").await,
            Err(NetError::Address { .. })
        ));
        let addr = format!("unix:{}", dir.join("a").display());
        let listener = t.listen(&addr).await.unwrap();
        assert_eq!(listener.local_addr(), addr);
        // The path is taken while the listener lives, and freed when it is dropped.
        assert!(matches!(
            t.listen(&addr).await,
            Err(NetError::Address { .. })
        ));
        drop(listener);
        assert!(matches!(
            t.connect(&addr).await,
            Err(NetError::Refused { .. })
        ));
        assert!(t.listen(&addr).await.is_ok());
        assert_eq!(t.name(), "unix");
    });
    let _ = std::fs::remove_dir_all(&dir);
}
