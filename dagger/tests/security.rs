//! Links are mutual TLS against the cluster's CA: a process without the cluster's
//! certificate is refused, and a member that sends garbage is cut off — the driver and the
//! other workers go on.

// Worker processes link to the driver over QUIC.
#![cfg(feature = "quic")]

use dagger::net::{ClusterCa, NetConfig, QuicTransport, Transport};
use dagger::prelude::*;
use dagger::ClusterEvent;
use dagger_core::wire::{self, Hello, ToDriver, PROTOCOL_VERSION};
use dagger_core::{Incarnation, WorkerInfo};
use std::time::Duration;

#[dagger::task]
fn double(x: u64) -> u64 {
    2 * x
}

#[test]
fn a_process_without_the_cluster_certificate_is_refused() {
    dagger::init();
    let ctx = Context::builder()
        .workers(1)
        .test_harness()
        .worker_threads(1)
        .build()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stranger = ClusterCa::generate("another-cluster")
        .unwrap()
        .issue("intruder")
        .unwrap();
    let addr = ctx.listen_addr().expect("it listens").to_string();
    let refused = rt.block_on(async move {
        let t = QuicTransport::new(stranger, NetConfig::default()).unwrap();
        match tokio::time::timeout(Duration::from_secs(20), t.connect(&addr)).await {
            Ok(Ok(mut conn)) => {
                // Some TLS stacks report the refusal only on first use.
                let _ = conn.sender.send(vec![1, 2, 3]);
                tokio::time::timeout(Duration::from_secs(20), conn.receiver.recv())
                    .await
                    .map(|r| r.is_err())
                    .unwrap_or(false)
            }
            Ok(Err(_)) => true,
            Err(_) => false,
        }
    });
    assert!(refused, "a stranger's certificate must be refused");
    assert_eq!(ctx.workers().len(), 1);
    assert_eq!(double::spawn(&ctx, 21).unwrap().fetch().unwrap(), 42);
}

#[test]
fn a_member_sending_garbage_is_cut_off_and_the_cluster_goes_on() {
    dagger::init();
    let ctx = Context::builder()
        .workers(1)
        .test_harness()
        .worker_threads(1)
        .build()
        .unwrap();
    let mut events = ctx.subscribe();
    let identity = ctx.cluster_ca().unwrap().issue("rogue").unwrap();
    let addr = ctx.listen_addr().expect("it listens").to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let t = QuicTransport::new(identity, NetConfig::default()).unwrap();
        let mut conn = t.connect(&addr).await.unwrap();
        let hello = Hello {
            version: PROTOCOL_VERSION,
            registry_hash: registry_hash_of_this_binary(),
            worker: dagger::WorkerId(0),
            incarnation: Incarnation(0),
            build_id: dagger_net::launch::build_id(),
            allow_mixed_builds: false,
        };
        conn.sender.send(wire::encode(&hello)).unwrap();
        let info = WorkerInfo {
            worker: dagger::WorkerId(0),
            incarnation: Incarnation(0),
            host: "rogue".into(),
            pid: 1,
            name: String::new(),
            peer_addr: None,
            procs: vec![],
        };
        conn.sender
            .send(wire::encode(&ToDriver::Join(info)))
            .unwrap();
        let _welcome = conn.receiver.recv().await.unwrap();
        conn.sender.send(vec![0xff; 64]).unwrap();
        // The driver closes the link.
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if conn.receiver.recv().await.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the driver must close a link that sent garbage"
        );
    });
    let mut saw_join = false;
    let lost = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(e) = events.recv().await {
                match e {
                    ClusterEvent::WorkerJoined { .. } => saw_join = true,
                    ClusterEvent::WorkerLost { reason, .. } => return Some(reason),
                    _ => {}
                }
            }
            None
        })
        .await
    });
    let reason = lost.ok().flatten().expect("a WorkerLost event");
    assert!(
        matches!(reason, dagger::LostReason::MalformedFrame { .. }),
        "{reason:?}"
    );
    assert!(saw_join);
    assert_eq!(double::spawn(&ctx, 5).unwrap().fetch().unwrap(), 10);
}

fn registry_hash_of_this_binary() -> u64 {
    dagger::registry_hash()
}
