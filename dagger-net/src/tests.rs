//! Behaviour tests of both transports over real links (loopback sockets for QUIC).

use crate::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Frames in order both ways, concurrently, of varied sizes (including empty).
async fn many_frames_both_ways(t: &dyn Transport, addr: &str) {
    let (a, b) = bench::loop_pair(t, addr).await.unwrap();
    const N: usize = 2000;
    let frame = |side: u8, i: usize| {
        let len = (i * 37) % 3000;
        let mut f = vec![side; len];
        f.extend_from_slice(&(i as u32).to_le_bytes());
        f
    };
    let Conn {
        sender: a_send,
        receiver: mut a_recv,
        ..
    } = a;
    let Conn {
        sender: b_send,
        receiver: mut b_recv,
        ..
    } = b;
    let sender_thread = std::thread::spawn(move || {
        // Sending from a plain thread, outside the runtime.
        for i in 0..N {
            a_send.send(frame(1, i)).unwrap();
        }
        a_send
    });
    for i in 0..N {
        b_send.send(frame(2, i)).unwrap();
    }
    for i in 0..N {
        assert_eq!(b_recv.recv().await.unwrap(), frame(1, i), "frame {i} a->b");
        assert_eq!(a_recv.recv().await.unwrap(), frame(2, i), "frame {i} b->a");
    }
    let a_send = sender_thread.join().unwrap();
    // Orderly close: frames before it arrive, then the reason.
    a_send.send(b"last".to_vec()).unwrap();
    a_send.close("done here");
    assert!(a_send.is_closed());
    assert!(matches!(a_send.send(vec![1]), Err(NetError::Closed { .. })));
    assert_eq!(b_recv.recv().await.unwrap(), b"last");
    match b_recv.recv().await {
        Err(NetError::Closed { reason }) => assert_eq!(reason, "done here"),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(matches!(b_recv.recv().await, Err(NetError::Closed { .. })));
    assert!(matches!(a_recv.recv().await, Err(NetError::Closed { .. })));
}

async fn big_frames(t: &dyn Transport, addr: &str) {
    let (a, mut b) = bench::loop_pair(t, addr).await.unwrap();
    let big = |i: usize| -> Vec<u8> { (0..8 << 20).map(|j| (j * 31 + i) as u8).collect() };
    for i in 0..4 {
        a.sender.send(big(i)).unwrap();
    }
    for i in 0..4 {
        let f = b.receiver.recv().await.unwrap();
        assert_eq!(f.len(), 8 << 20);
        assert!(f == big(i), "8 MiB frame {i} corrupted");
    }
}

async fn send_refuses_oversized(t: &dyn Transport, addr: &str) {
    let (a, mut b) = bench::loop_pair(t, addr).await.unwrap();
    match a.sender.send(vec![0; 1025]) {
        Err(NetError::FrameTooLarge { len, limit }) => assert_eq!((len, limit), (1025, 1024)),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    // The link is still usable.
    a.sender.send(vec![5; 1024]).unwrap();
    assert_eq!(b.receiver.recv().await.unwrap(), vec![5; 1024]);
}

async fn dropped_peer_is_closed(t: &dyn Transport, addr: &str) {
    let (a, mut b) = bench::loop_pair(t, addr).await.unwrap();
    drop(a);
    assert!(matches!(
        b.receiver.recv().await,
        Err(NetError::Closed { .. })
    ));
}

fn small_config() -> NetConfig {
    NetConfig {
        max_frame: 1024,
        ..NetConfig::default()
    }
}

#[test]
fn mem_round_trip_in_order() {
    rt().block_on(many_frames_both_ways(&MemTransport::new(), "mem:0"));
}

#[test]
fn mem_big_frames() {
    rt().block_on(big_frames(&MemTransport::new(), "mem:0"));
}

#[test]
fn mem_frame_limit_and_drop() {
    rt().block_on(async {
        let t = MemTransport::with_config(small_config());
        send_refuses_oversized(&t, "mem:0").await;
        dropped_peer_is_closed(&t, "mem:0").await;
    });
}

#[test]
fn mem_first_frame_is_limited_on_accepted_links() {
    rt().block_on(async {
        let t = MemTransport::new();
        let mut listener = t.listen("mem:0").await.unwrap();
        let addr = listener.local_addr();
        let (a, b) = tokio::join!(t.connect(&addr), listener.accept());
        let (a, mut b) = (a.unwrap(), b.unwrap());
        a.sender.send(vec![0; DEFAULT_MAX_FIRST_FRAME + 1]).unwrap();
        match b.receiver.recv().await {
            Err(NetError::FrameTooLarge { len, limit }) => assert_eq!(
                (len, limit),
                (
                    DEFAULT_MAX_FIRST_FRAME as u64 + 1,
                    DEFAULT_MAX_FIRST_FRAME as u64
                )
            ),
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(a.sender.is_closed());
        assert!(matches!(
            b.receiver.recv().await,
            Err(NetError::Closed { .. })
        ));
    });
}

/// The in-memory transport passes the public conformance suite.
#[test]
fn mem_passes_the_conformance_suite() {
    let config = NetConfig {
        max_frame: 1 << 20,
        ..NetConfig::default()
    };
    let hub = MemTransport::with_config(config.clone());
    let subject = conformance::Subject::new(
        move || std::sync::Arc::new(hub.clone()) as std::sync::Arc<dyn Transport>,
        || "mem:0".to_owned(),
        &config,
    );
    rt().block_on(conformance::run_all(&subject)).unwrap();
}

#[test]
fn mem_addresses() {
    rt().block_on(async {
        let t = MemTransport::new();
        let l1 = t.listen("mem:0").await.unwrap();
        let l2 = t.clone().listen("mem:0").await.unwrap();
        assert_ne!(l1.local_addr(), l2.local_addr());
        let fixed = t.listen("mem:900").await.unwrap();
        assert_eq!(fixed.local_addr(), "mem:900");
        assert!(matches!(
            t.listen("mem:900").await,
            Err(NetError::Address { .. })
        ));
        assert!(matches!(
            t.listen("tcp:1").await,
            Err(NetError::Address { .. })
        ));
        assert!(matches!(
            t.connect("mem:901").await,
            Err(NetError::Refused { .. })
        ));
        drop(fixed);
        assert!(t.connect("mem:900").await.is_err());
        assert!(t.listen("mem:900").await.is_ok());
        assert_eq!(t.name(), "mem");
    });
}

#[cfg(feature = "quic")]
mod quic_tests {
    use super::*;
    use crate::quic::handshake::{connect_on, preamble};
    use crate::quic::{resolve, QuicTransport};
    use rustls::pki_types::pem::PemObject;
    use std::sync::OnceLock;
    use std::time::Duration;

    fn ca() -> &'static ClusterCa {
        static CA: OnceLock<ClusterCa> = OnceLock::new();
        CA.get_or_init(|| ClusterCa::generate("test-cluster").unwrap())
    }

    /// A QUIC transport that stays on QUIC between processes of one host (the rings have
    /// tests of their own).
    fn quic(config: NetConfig) -> QuicTransport {
        let config = NetConfig {
            same_host_rings: false,
            ..config
        };
        QuicTransport::new(ca().issue("node-a").unwrap(), config).unwrap()
    }

    fn no_rings() -> NetConfig {
        NetConfig {
            same_host_rings: false,
            ..NetConfig::default()
        }
    }

    /// QUIC passes the public conformance suite, with striping (frames of the limit are
    /// striped over 2 lanes) and without.
    #[test]
    fn quic_passes_the_conformance_suite() {
        for lanes in [1u8, 2] {
            let config = NetConfig {
                max_frame: 2 << 20,
                ..no_rings()
            };
            let identity = ca().issue("node-c").unwrap();
            let cfg = config.clone();
            let subject = conformance::Subject::new(
                move || {
                    std::sync::Arc::new(
                        QuicTransport::new(identity.clone(), cfg.clone())
                            .unwrap()
                            .with_lanes(lanes),
                    ) as std::sync::Arc<dyn Transport>
                },
                || "127.0.0.1:0".to_owned(),
                &config,
            );
            rt().block_on(conformance::run_all(&subject))
                .unwrap_or_else(|e| panic!("lanes {lanes}: {e}"));
        }
    }

    #[test]
    fn quic_round_trip_in_order() {
        let t = quic(NetConfig::default());
        rt().block_on(many_frames_both_ways(&t, "127.0.0.1:0"));
    }

    #[test]
    fn quic_big_frames() {
        let t = quic(NetConfig::default());
        rt().block_on(big_frames(&t, "127.0.0.1:0"));
    }

    /// Large (striped) and small frames interleaved stay in order, for several lane counts,
    /// and a reused link keeps working after large frames.
    #[test]
    fn quic_striped_and_small_frames_interleave_in_order() {
        for lanes in [1u8, 2, 3] {
            let t = quic(NetConfig::default()).with_lanes(lanes);
            rt().block_on(async {
                let (a, mut b) = bench::loop_pair(&t, "127.0.0.1:0").await.unwrap();
                let frame = |i: usize| -> Vec<u8> {
                    let len = if i % 3 == 0 {
                        (1 << 20) + i * 4099
                    } else {
                        i * 7
                    };
                    (0..len).map(|j| (j ^ i) as u8).collect()
                };
                for i in 0..24 {
                    a.sender.send(frame(i)).unwrap();
                }
                for i in 0..24 {
                    let got = b.receiver.recv().await.unwrap();
                    assert!(got == frame(i), "lanes {lanes}: frame {i} differs");
                }
                b.sender.send(vec![9; 3 << 20]).unwrap();
                let mut a = a;
                assert_eq!(a.receiver.recv().await.unwrap(), vec![9; 3 << 20]);
            });
        }
    }

    #[test]
    fn striped_header_without_lanes_is_a_protocol_error() {
        let server = quic(NetConfig::default());
        let client = quic(NetConfig::default());
        rt().block_on(async {
            let mut listener = server.listen("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr();
            let header = ((1u64 << 62) | 16).to_le_bytes();
            let (_raw, accepted) =
                tokio::join!(raw_peer(&client, &addr, &header), listener.accept());
            assert!(matches!(
                accepted.unwrap().receiver.recv().await,
                Err(NetError::Protocol { .. })
            ));
            good_client_still_accepted(&mut listener, &server).await;
        });
    }

    #[test]
    fn lane_of_an_unknown_link_is_refused() {
        let server = quic(NetConfig::default());
        rt().block_on(async {
            let mut listener = server.listen("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr();
            let sock = resolve(&addr).await.unwrap();
            let ep = server.client_endpoint(&sock).unwrap();
            let ext =
                crate::quic::handshake::hello_ext(crate::quic::handshake::ROLE_LANE, 1, 12345);
            let r = crate::quic::handshake::dial_stream(
                &ep,
                server.client.clone(),
                sock,
                &addr,
                dagger_core::wire::PROTOCOL_VERSION,
                ext,
                &[],
            )
            .await;
            assert!(matches!(r, Err(NetError::Refused { .. })), "{:?}", r.err());
            good_client_still_accepted(&mut listener, &server).await;
        });
    }

    #[test]
    fn quic_frame_limit_and_drop() {
        let t = quic(small_config());
        rt().block_on(async {
            send_refuses_oversized(&t, "127.0.0.1:0").await;
            dropped_peer_is_closed(&t, "127.0.0.1:0").await;
        });
    }

    /// Dials `target` with a raw stream, sends a good preamble and then `bytes`.
    async fn raw_peer(client: &QuicTransport, target: &str, bytes: &[u8]) -> quinn::Connection {
        raw_peer_open(client, target, bytes).await.0
    }

    /// As [`raw_peer`], keeping the stream open for more bytes.
    async fn raw_peer_open(
        client: &QuicTransport,
        target: &str,
        bytes: &[u8],
    ) -> (quinn::Connection, quinn::SendStream) {
        let sock = resolve(target).await.unwrap();
        let ep = client.client_endpoint(&sock).unwrap();
        let (conn, mut send, mut recv) =
            crate::quic::handshake::open_raw(&ep, client.client.clone(), sock, target)
                .await
                .unwrap();
        send.write_all(&preamble(dagger_core::wire::PROTOCOL_VERSION))
            .await
            .unwrap();
        send.write_all(&crate::quic::handshake::hello_ext(0, 1, 7))
            .await
            .unwrap();
        let mut p = [0u8; 8];
        recv.read_exact(&mut p).await.unwrap();
        send.write_all(bytes).await.unwrap();
        (conn, send)
    }

    #[test]
    fn oversized_frame_from_peer_closes_only_that_link() {
        let server = quic(small_config());
        let client = quic(NetConfig::default());
        rt().block_on(async {
            let mut listener = server.listen("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr();
            let huge = (1u64 << 40).to_le_bytes();
            let (raw, accepted) = tokio::join!(raw_peer(&client, &addr, &huge), listener.accept());
            let mut accepted = accepted.unwrap();
            match accepted.receiver.recv().await {
                Err(NetError::FrameTooLarge { len, limit }) => {
                    assert_eq!((len, limit), (1 << 40, 1024))
                }
                other => panic!("expected FrameTooLarge, got {other:?}"),
            }
            assert!(accepted.sender.is_closed());
            // The misbehaving peer sees its connection closed by the server.
            let e = raw.closed().await;
            assert!(
                matches!(e, quinn::ConnectionError::ApplicationClosed(_)),
                "{e:?}"
            );
            // A malformed close header is refused the same way.
            let bad_close = u64::MAX.to_le_bytes();
            let (_raw2, accepted2) =
                tokio::join!(raw_peer(&client, &addr, &bad_close), listener.accept());
            assert!(matches!(
                accepted2.unwrap().receiver.recv().await,
                Err(NetError::Protocol { .. })
            ));
            // The listener still accepts a well-behaved client.
            let (good, acc) = tokio::join!(client.connect(&addr), listener.accept());
            let (good, mut acc) = (good.unwrap(), acc.unwrap());
            good.sender.send(b"hello".to_vec()).unwrap();
            assert_eq!(acc.receiver.recv().await.unwrap(), b"hello");
        });
    }

    /// The bytes of a frame still arriving are counted (a peer sending one large frame is
    /// visibly alive before the frame completes).
    #[test]
    fn bytes_of_an_unfinished_frame_are_counted() {
        let server = quic(NetConfig::default());
        let client = quic(NetConfig::default());
        rt().block_on(async {
            let mut listener = server.listen("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr();
            // A header announcing 3,000 bytes, then only 1,000 of them.
            let mut partial = 3000u64.to_le_bytes().to_vec();
            partial.extend(std::iter::repeat_n(7u8, 1000));
            let ((_raw, _send), accepted) =
                tokio::join!(raw_peer_open(&client, &addr, &partial), listener.accept());
            let mut accepted = accepted.unwrap();
            assert_eq!(accepted.receiver.received_bytes(), Some(0));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let polled = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(accepted.receiver.poll_recv(cx))
                })
                .await;
                assert!(polled.is_pending(), "no frame is complete: {polled:?}");
                if accepted.receiver.received_bytes() >= Some(1008) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the bytes never came"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }

    /// A peer with a valid certificate that announces a huge first frame (under the frame
    /// limit) before its hello is refused on the header: the listener neither waits for nor
    /// buffers the body.
    #[test]
    fn huge_first_frame_is_refused_before_the_hello() {
        let server = quic(NetConfig::default());
        let client = quic(NetConfig::default());
        rt().block_on(async {
            let mut listener = server.listen("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr();
            let announced = 1u64 << 29;
            let header = announced.to_le_bytes();
            let (raw, accepted) =
                tokio::join!(raw_peer(&client, &addr, &header), listener.accept());
            let mut accepted = accepted.unwrap();
            // Without the first-frame limit `recv` would wait for 512 MiB that never come.
            let got = tokio::time::timeout(Duration::from_secs(20), accepted.receiver.recv())
                .await
                .expect("the announced frame must be refused on its header");
            match got {
                Err(NetError::FrameTooLarge { len, limit }) => {
                    assert_eq!((len, limit), (announced, DEFAULT_MAX_FIRST_FRAME as u64))
                }
                other => panic!("expected FrameTooLarge, got {other:?}"),
            }
            assert!(accepted.sender.is_closed());
            let e = raw.closed().await;
            assert!(
                matches!(e, quinn::ConnectionError::ApplicationClosed(_)),
                "{e:?}"
            );
            good_client_still_accepted(&mut listener, &server).await;
        });
    }

    /// After the first frame, frames up to `max_frame` pass; the dialling side applies no
    /// first-frame limit.
    #[test]
    fn first_frame_limit_only_guards_the_hello() {
        let t = quic(NetConfig::default());
        rt().block_on(async {
            let mut listener = t.listen("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr();
            let (a, b) = tokio::join!(t.connect(&addr), listener.accept());
            let (mut a, mut b) = (a.unwrap(), b.unwrap());
            a.sender.send(vec![1; DEFAULT_MAX_FIRST_FRAME]).unwrap();
            assert_eq!(
                b.receiver.recv().await.unwrap().len(),
                DEFAULT_MAX_FIRST_FRAME
            );
            a.sender.send(vec![2; 64 << 10]).unwrap();
            assert_eq!(b.receiver.recv().await.unwrap().len(), 64 << 10);
            b.sender.send(vec![3; 64 << 10]).unwrap();
            assert_eq!(a.receiver.recv().await.unwrap().len(), 64 << 10);
        });
    }

    /// Accepts on `listener` until a link arrives; used to show that refused peers do not
    /// stop the listener.
    async fn good_client_still_accepted(listener: &mut Box<dyn Listener>, good: &QuicTransport) {
        let addr = listener.local_addr();
        let (c, a) = tokio::join!(good.connect(&addr), listener.accept());
        let (c, mut a) = (c.unwrap(), a.unwrap());
        c.sender.send(vec![42]).unwrap();
        assert_eq!(a.receiver.recv().await.unwrap(), vec![42]);
    }

    #[test]
    fn client_of_another_ca_is_refused() {
        let server = quic(NetConfig::default());
        let other_ca = ClusterCa::generate("other").unwrap();
        let stranger = QuicTransport::new(other_ca.issue("node-x").unwrap(), no_rings()).unwrap();
        // A certificate of the other CA, but trusting our CA: the server must refuse it.
        let mut mixed = other_ca.issue("node-y").unwrap();
        mixed.ca_pem = ca().cert_pem();
        let impostor = QuicTransport::new(mixed, no_rings()).unwrap();
        rt().block_on(async {
            let mut listener = server.listen("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr();
            let e = stranger.connect(&addr).await.unwrap_err();
            assert!(
                matches!(e, NetError::Tls(_) | NetError::Refused { .. }),
                "{e:?}"
            );
            let e = impostor.connect(&addr).await.unwrap_err();
            assert!(
                matches!(e, NetError::Tls(_) | NetError::Refused { .. }),
                "{e:?}"
            );
            good_client_still_accepted(&mut listener, &server).await;
        });
    }

    #[test]
    fn client_without_certificate_is_refused() {
        let server = quic(NetConfig::default());
        let id = ca().issue("anon").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(id.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"dagger".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let anon = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
        rt().block_on(async {
            let mut listener = server.listen("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr();
            let sock = resolve(&addr).await.unwrap();
            let ep = server.client_endpoint(&sock).unwrap();
            let cfg = no_rings();
            let e = connect_on(
                &ep,
                anon,
                sock,
                &addr,
                dagger_core::wire::PROTOCOL_VERSION,
                &cfg,
                1,
            )
            .await
            .unwrap_err();
            assert!(
                matches!(e, NetError::Tls(_) | NetError::Refused { .. }),
                "{e:?}"
            );
            good_client_still_accepted(&mut listener, &server).await;
        });
    }

    #[test]
    fn version_mismatch_is_refused() {
        let server = quic(NetConfig::default());
        let mut client = quic(NetConfig::default());
        client.version = dagger_core::wire::PROTOCOL_VERSION + 1;
        rt().block_on(async {
            let mut listener = server.listen("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr();
            match client.connect(&addr).await {
                Err(NetError::Version { ours, theirs }) => {
                    assert_eq!(ours, dagger_core::wire::PROTOCOL_VERSION + 1);
                    assert_eq!(theirs, dagger_core::wire::PROTOCOL_VERSION);
                }
                other => panic!("expected Version, got {other:?}"),
            }
            good_client_still_accepted(&mut listener, &server).await;
        });
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let original = ClusterCa::generate("pem-cluster").unwrap();
        let loaded = ClusterCa::from_pem(&original.cert_pem(), &original.key_pem()).unwrap();
        assert_eq!(loaded.cert_pem(), original.cert_pem());
        // An identity issued by the reloaded CA talks to one issued by the original.
        let a = QuicTransport::new(original.issue("a").unwrap(), no_rings()).unwrap();
        let b = QuicTransport::new(loaded.issue("b").unwrap(), no_rings()).unwrap();
        rt().block_on(async {
            let mut listener = a.listen("127.0.0.1:0").await.unwrap();
            good_client_still_accepted(&mut listener, &b).await;
        });
        assert!(ClusterCa::from_pem("junk", &original.key_pem()).is_err());
        assert!(matches!(
            QuicTransport::new(
                Identity {
                    cert_pem: "x".into(),
                    key_pem: "y".into(),
                    ca_pem: "z".into()
                },
                no_rings()
            ),
            Err(NetError::Identity(_))
        ));
    }

    #[test]
    fn listen_and_connect_need_a_runtime_and_a_good_address() {
        let t = quic(NetConfig::default());
        {
            // Polled outside any tokio runtime: a typed error, not a panic.
            let mut fut = t.connect("127.0.0.1:1");
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match fut.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(Err(NetError::NoRuntime)) => {}
                other => panic!("expected NoRuntime, got {other:?}"),
            }
        }
        rt().block_on(async {
            assert!(matches!(
                t.listen("not an address").await,
                Err(NetError::Address { .. })
            ));
            assert_eq!(t.name(), "quic");
        });
    }

    /// Prints the throughput and round trip of the raw quinn path and of the `Conn` path.
    /// Run with `cargo test -p dagger-net --release -- --ignored --nocapture measure`;
    /// `DAGGER_NET_MEASURE_THREADS` sets the runtime's worker threads (default 2).
    /// Large transfers (32 frames of 8 MiB, MB/s) and 64-byte round trips (µs) over QUIC
    /// links of 1 and 4 lanes, with the default flow-control windows and with windows 4x
    /// larger; configurations interleaved, best of 5 each. Run with
    /// `cargo test --release -p dagger-net measure_lanes -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement, not a test"]
    fn measure_lanes() {
        use crate::quic::tls::{transport_config, CONN_WINDOW, STREAM_WINDOW};
        let id = ca().issue("bench").unwrap();
        let configs: [(u8, u32, u32); 4] = [
            (1, STREAM_WINDOW, CONN_WINDOW),
            (4, STREAM_WINDOW, CONN_WINDOW),
            (1, STREAM_WINDOW * 4, CONN_WINDOW * 4),
            (4, STREAM_WINDOW * 4, CONN_WINDOW * 4),
        ];
        let make = |(lanes, sw, cw): (u8, u32, u32)| {
            let mut t = QuicTransport::new(id.clone(), no_rings())
                .unwrap()
                .with_lanes(lanes);
            let tc = std::sync::Arc::new(transport_config(&t.config, sw, cw).unwrap());
            t.server.transport_config(tc.clone());
            t.client.transport_config(tc);
            t
        };
        let mut best = [(0f64, f64::MAX); 4];
        rt().block_on(async {
            for _ in 0..5 {
                for (i, c) in configs.iter().enumerate() {
                    let t = make(*c);
                    let mbps = bench::conn_mbps(&t, "127.0.0.1:0", 32, 8 << 20)
                        .await
                        .unwrap();
                    let rtt = bench::conn_rtt_us(&t, "127.0.0.1:0", 1000).await.unwrap();
                    best[i].0 = best[i].0.max(mbps);
                    best[i].1 = best[i].1.min(rtt);
                }
            }
        });
        for ((lanes, sw, cw), (mbps, rtt)) in configs.iter().zip(best) {
            println!(
                "lanes {lanes}  stream window {} MiB  connection window {} MiB:  \
                 {mbps:.0} MB/s  rtt {rtt:.1} us",
                sw >> 20,
                cw >> 20
            );
        }
    }

    #[test]
    #[ignore = "measurement, not a test"]
    fn measure_quic_paths() {
        let id = ca().issue("bench").unwrap();
        let t = QuicTransport::new(id.clone(), no_rings()).unwrap();
        let threads = std::env::var("DAGGER_NET_MEASURE_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for round in 0..3 {
                let raw = bench::raw_quic_mbps(&id, 32, 8 << 20).await.unwrap();
                let conn = bench::conn_mbps(&t, "127.0.0.1:0", 32, 8 << 20).await.unwrap();
                let mut by_lanes = String::new();
                for lanes in [1u8, 2, 8] {
                    let t = QuicTransport::new(id.clone(), no_rings())
                        .unwrap()
                        .with_lanes(lanes);
                    let r = bench::conn_mbps(&t, "127.0.0.1:0", 32, 8 << 20).await.unwrap();
                    by_lanes.push_str(&format!("  conn_MBps[{lanes} lanes] {r:.0}"));
                }
                let raw_rtt = bench::raw_quic_rtt_us(&id, 2000).await.unwrap();
                let conn_rtt = bench::conn_rtt_us(&t, "127.0.0.1:0", 2000).await.unwrap();
                let mem = bench::conn_rtt_us(&MemTransport::new(), "mem:0", 2000).await.unwrap();
                println!(
                    "round {round}: raw_quic_MBps {raw:.0}  conn_MBps {conn:.0}  \
                     raw_quic_rtt_us {raw_rtt:.1}  conn_rtt_us {conn_rtt:.1}  mem_rtt_us {mem:.1}{by_lanes}"
                );
            }
        });
    }
}

/// Prints the cost of many small frames (the driver loop's pattern) over both transports.
/// Run with `cargo test --release -p dagger-net measure_small_frames -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a test"]
#[cfg_attr(not(feature = "quic"), allow(unused_mut))]
fn measure_small_frames() {
    let rt = rt();
    rt.block_on(async {
        let (mut mem_fps, mut mem_rtt, mut q_fps, mut q_rtt) = (0f64, f64::MAX, 0f64, f64::MAX);
        #[cfg(feature = "quic")]
        let ca = ClusterCa::generate("m").unwrap();
        for _ in 0..7 {
            let mem = MemTransport::new();
            let n = 200_000;
            let m = bench::conn_mbps(&mem, "mem:0", n, 64).await.unwrap();
            mem_fps = mem_fps.max(m * 1e6 / 64.0);
            mem_rtt = mem_rtt.min(bench::conn_rtt_us(&mem, "mem:0", 5000).await.unwrap());
            #[cfg(feature = "quic")]
            {
                let t = QuicTransport::new(
                    ca.issue("n").unwrap(),
                    NetConfig {
                        same_host_rings: false,
                        ..NetConfig::default()
                    },
                )
                .unwrap();
                let q = bench::conn_mbps(&t, "127.0.0.1:0", n, 64).await.unwrap();
                q_fps = q_fps.max(q * 1e6 / 64.0);
                q_rtt = q_rtt.min(bench::conn_rtt_us(&t, "127.0.0.1:0", 2000).await.unwrap());
            }
        }
        println!(
            "best of 7: mem_small_frames_per_s {mem_fps:.0}  mem_rtt_us {mem_rtt:.1}  \
             quic_small_frames_per_s {q_fps:.0}  quic_rtt_us {q_rtt:.1}"
        );
    });
}

/// Prints the CPU time (of the measuring thread, so other load on the machine does not
/// count) per small frame sent and received over the in-memory transport, best of 9.
#[test]
#[ignore = "measurement, not a test"]
fn measure_mem_cpu_per_frame() {
    fn thread_cpu_ns() -> u128 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for the call to write.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t = MemTransport::new();
        let (a, mut b) = bench::loop_pair(&t, "mem:0").await.unwrap();
        let n = 200_000u32;
        let mut best = f64::MAX;
        for _ in 0..9 {
            let start = thread_cpu_ns();
            for i in 0..n {
                a.sender.send(i.to_le_bytes().to_vec()).unwrap();
            }
            for _ in 0..n {
                b.receiver.recv().await.unwrap();
            }
            best = best.min((thread_cpu_ns() - start) as f64 / f64::from(n));
        }
        println!("mem_cpu_ns_per_frame {best:.1}");
    });
}
