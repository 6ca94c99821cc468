//! Tests of the ring links: real QUIC handshakes on loopback that switch to rings (every
//! test checks that the switch happened), and a peer in another process that dies.

use super::link::{RING_LINKS, STALL_AFTER};
use super::shm::{self, Ring};
use crate::{conformance, ClusterCa, Conn, NetConfig, NetError, QuicTransport, Transport};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Serializes the tests that create rings or look at `/dev/shm` (the counters and the
/// directory are process-wide).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// When set, [`tap`] keeps second mappings of the rings the next dialler creates.
static TAP: Mutex<Option<Vec<Ring>>> = Mutex::new(None);

/// Called by the dialler right after it created its rings (before handing them over):
/// maps them a second time for a test that plays a misbehaving peer.
pub(crate) fn tap(a: &Ring, b: &Ring) {
    let mut tap = TAP.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = tap.as_mut() {
        v.push(Ring::open(a.name()).expect("second mapping"));
        v.push(Ring::open(b.name()).expect("second mapping"));
    }
}

fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| ClusterCa::generate("ring-cluster").unwrap())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn config(ring_capacity: usize, max_frame: usize) -> NetConfig {
    NetConfig {
        ring_capacity,
        max_frame,
        same_host_rings: true,
        ..NetConfig::default()
    }
}

fn transport(config: &NetConfig) -> QuicTransport {
    QuicTransport::new(ca().issue("ring-node").unwrap(), config.clone()).unwrap()
}

/// A linked pair `(dialler, accepted)` on loopback; panics unless both ends use rings.
async fn ring_pair(config: &NetConfig) -> (Conn, Conn) {
    let before = RING_LINKS.load(Ordering::SeqCst);
    let (server, client) = (transport(config), transport(config));
    let mut listener = server.listen("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr();
    let (a, b) = tokio::join!(client.connect(&target), listener.accept());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        RING_LINKS.load(Ordering::SeqCst) - before,
        2,
        "both ends switched to rings"
    );
    (a, b)
}

fn ring_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(shm::NAME_PREFIX))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn patterned(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (j.wrapping_mul(31) ^ seed) as u8)
        .collect()
}

async fn recv(conn: &mut Conn) -> Result<Vec<u8>, NetError> {
    tokio::time::timeout(Duration::from_secs(60), conn.receiver.recv())
        .await
        .expect("no outcome within 60 s")
}

#[test]
fn ring_objects_are_owner_only_unguessable_and_checked() {
    let _serial = serial();
    let a = Ring::create(5000).unwrap();
    let b = Ring::create(5000).unwrap();
    assert_ne!(a.name(), b.name());
    assert_eq!(a.name().len(), shm::NAME_LEN);
    shm::validate_name(a.name()).unwrap();
    assert_eq!(a.capacity(), 8192, "rounded up to a power of two");
    let meta = std::fs::metadata(format!("/dev/shm/{}", a.name())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let fifo = std::fs::symlink_metadata(format!("/dev/shm/{}-w", a.name())).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.permissions().mode() & 0o777, 0o600);
    // A second open of a checked object works; bad names never reach the system.
    Ring::open(a.name()).unwrap();
    for bad in [
        "dagger-ring-../../etc/passwd",
        "dagger-ring-0123",
        "dagger-ring-0123456789ABCDEF0123456789abcdef",
        "other-ring-0123456789abcdef0123456789abcdef",
    ] {
        assert!(shm::validate_name(bad).is_err(), "{bad}");
        assert!(Ring::open(bad).is_err(), "{bad}");
    }
    // An object that is readable by others is refused.
    std::fs::set_permissions(
        format!("/dev/shm/{}", b.name()),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert!(Ring::open(b.name()).is_err());
    shm::unlink(a.name());
    shm::unlink(b.name());
    assert!(!ring_names().contains(&a.name().to_owned()));
}

#[test]
fn frames_of_many_sizes_wrap_and_keep_order_both_ways() {
    let _serial = serial();
    rt().block_on(async {
        // The smallest ring (4 KiB): most frames wrap, many are larger than the ring.
        let config = config(4096, 1 << 20);
        let (mut a, mut b) = ring_pair(&config).await;
        a.sender.send(vec![0]).unwrap();
        assert_eq!(recv(&mut b).await.unwrap(), vec![0]);
        let sizes: Vec<usize> = (0..300)
            .map(|i| match i % 7 {
                0 => 0,
                1 => 1,
                2 => 4088,
                3 => 4096,
                4 => 4097 + i,
                5 => 70_000 + i,
                _ => (i * 131) % 3000,
            })
            .collect();
        let sent = sizes.clone();
        let a_send = a.sender.clone();
        let thread = std::thread::spawn(move || {
            for (i, len) in sent.into_iter().enumerate() {
                a_send.send(patterned(len, i)).unwrap();
            }
        });
        for (i, len) in sizes.iter().enumerate() {
            b.sender.send(patterned(*len, i + 1000)).unwrap();
        }
        for (i, len) in sizes.iter().enumerate() {
            assert_eq!(recv(&mut b).await.unwrap(), patterned(*len, i), "frame {i}");
            assert_eq!(
                recv(&mut a).await.unwrap(),
                patterned(*len, i + 1000),
                "frame {i} back"
            );
        }
        thread.join().unwrap();
    });
}

#[test]
fn full_ring_queues_the_rest_and_resumes_as_the_reader_drains() {
    let _serial = serial();
    rt().block_on(async {
        let config = config(4096, 8 << 20);
        let (a, mut b) = ring_pair(&config).await;
        a.sender.send(vec![0]).unwrap();
        recv(&mut b).await.unwrap();
        // 8 MiB through 4 KiB: `send` returns at once, the writer thread fills the ring
        // over and over; small frames queued behind it arrive after it.
        let big = patterned(8 << 20, 7);
        a.sender.send(big.clone()).unwrap();
        for i in 0..50 {
            a.sender.send(patterned(i * 100, i)).unwrap();
        }
        assert!(recv(&mut b).await.unwrap() == big);
        for i in 0..50 {
            assert_eq!(recv(&mut b).await.unwrap(), patterned(i * 100, i));
        }
        assert_eq!(
            b.receiver.received_bytes(),
            Some(1 + (8 << 20) + 51 * 8 + 122_500 + 8)
        );
    });
}

/// What the peer wrote counts as received while nothing receives: a peer in the middle
/// of a large frame is seen to make progress (the liveness check reads this count).
#[test]
fn bytes_in_the_ring_count_before_they_are_received() {
    let _serial = serial();
    rt().block_on(async {
        let (a, mut b) = ring_pair(&config(4096, 1 << 20)).await;
        assert_eq!(b.receiver.received_bytes(), Some(0));
        for i in 0..3 {
            a.sender.send(patterned(100, i)).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while b.receiver.received_bytes() != Some(3 * (8 + 100)) {
            assert!(
                std::time::Instant::now() < deadline,
                "the count stayed at {:?}",
                b.receiver.received_bytes()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for i in 0..3 {
            assert_eq!(recv(&mut b).await.unwrap(), patterned(100, i));
        }
        assert_eq!(b.receiver.received_bytes(), Some(3 * (8 + 100)));
    });
}

#[test]
fn a_thread_asleep_on_the_doorbell_is_woken_by_a_send_and_takes_the_frame() {
    let _serial = serial();
    rt().block_on(async {
        let (a, mut b) = ring_pair(&config(4096, 1 << 20)).await;
        let bell = b.receiver.doorbell().expect("a ring link has a doorbell");
        let value = bell.arm().expect("nothing arrived yet");
        let word = bell.clone();
        let sleeper = std::thread::spawn(move || {
            let timeout = rustix::thread::futex::Timespec {
                tv_sec: 60,
                tv_nsec: 0,
            };
            let flags = rustix::thread::futex::Flags::empty();
            let _ = rustix::thread::futex::wait(word.word(), flags, value, Some(&timeout));
            word.word().load(Ordering::SeqCst)
        });
        a.sender.send(patterned(100, 7)).unwrap();
        let seen = tokio::task::spawn_blocking(move || sleeper.join().unwrap())
            .await
            .unwrap();
        assert_ne!(seen, value, "the send rang the doorbell");
        bell.disarm();
        assert_eq!(b.receiver.try_recv(), Some(patterned(100, 7)));
        assert_eq!(b.receiver.try_recv(), None);

        // A frame nobody took yet: no reason to sleep.
        a.sender.send(patterned(10, 1)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while b.receiver.received_bytes() != Some(8 + 100 + 8 + 10) {
            assert!(
                std::time::Instant::now() < deadline,
                "the frame never arrived"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(bell.arm(), None);
        assert_eq!(b.receiver.try_recv(), Some(patterned(10, 1)));

        // While a thread polls the link, a send rings nobody, though another sleeps on
        // the doorbell; the frame waits for the polling thread.
        let before = bell.arm().expect("nothing waiting");
        bell.watch(true);
        a.sender.send(patterned(20, 2)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let frame = loop {
            if let Some(f) = b.receiver.try_recv() {
                break f;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the frame never arrived"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        bell.watch(false);
        bell.disarm();
        assert_eq!(frame, patterned(20, 2));
        assert_eq!(
            bell.word().load(Ordering::SeqCst),
            before,
            "nobody was woken"
        );
        // The reader's task was never needed, and still works.
        a.sender.send(patterned(30, 3)).unwrap();
        assert_eq!(recv(&mut b).await.unwrap(), patterned(30, 3));
    });
}

#[test]
fn a_send_to_a_peer_that_closed_does_not_hide_its_reason() {
    let _serial = serial();
    rt().block_on(async {
        let (a, b) = ring_pair(&config(4096, 1 << 20)).await;
        let Conn {
            sender, receiver, ..
        } = b;
        sender.close("refused: build mismatch");
        drop(receiver);
        // This side's send finds the peer stopped reading and fails ...
        assert!(a.sender.send(patterned(10, 0)).is_err());
        // ... and its receiver still reports what the peer said when it closed.
        let mut a = a;
        match recv(&mut a).await {
            Err(NetError::Closed { reason }) => {
                assert!(reason.contains("build mismatch"), "reason lost: {reason}")
            }
            other => panic!("expected the peer's close, got {other:?}"),
        }
        drop(sender);
    });
}

#[test]
fn close_delivers_queued_frames_then_closed() {
    let _serial = serial();
    rt().block_on(async {
        let config = config(4096, 1 << 20);
        let (mut a, mut b) = ring_pair(&config).await;
        a.sender.send(vec![0]).unwrap();
        recv(&mut b).await.unwrap();
        for i in 0..20 {
            a.sender.send(patterned(30_000, i)).unwrap();
        }
        // A frame the peer sends now crosses the close: it is not delivered to the side
        // that closed (its receiver ends).
        b.sender.send(vec![4; 10]).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.sender.close("done with the ring");
        assert!(matches!(
            a.sender.send(vec![1]),
            Err(NetError::Closed { .. })
        ));
        for i in 0..20 {
            assert_eq!(recv(&mut b).await.unwrap(), patterned(30_000, i));
        }
        match recv(&mut b).await {
            Err(NetError::Closed { reason }) => assert_eq!(reason, "done with the ring"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(recv(&mut b).await, Err(NetError::Closed { .. })));
        assert!(matches!(recv(&mut a).await, Err(NetError::Closed { .. })));
        assert!(b.sender.send(vec![1]).is_err());
    });
}

/// The public conformance suite over ring links (frames of the limit are 16 times the
/// ring).
#[test]
fn rings_pass_the_conformance_suite() {
    let _serial = serial();
    let config = config(64 << 10, 1 << 20);
    let before = RING_LINKS.load(Ordering::SeqCst);
    let cfg = config.clone();
    let subject = conformance::Subject::new(
        move || Arc::new(transport(&cfg)) as Arc<dyn Transport>,
        || "127.0.0.1:0".to_owned(),
        &config,
    );
    rt().block_on(conformance::run_all(&subject)).unwrap();
    assert!(RING_LINKS.load(Ordering::SeqCst) - before >= 2 * 9);
}

#[test]
fn rings_are_off_when_either_side_disables_them() {
    let _serial = serial();
    rt().block_on(async {
        let before = RING_LINKS.load(Ordering::SeqCst);
        let off = NetConfig {
            same_host_rings: false,
            ..NetConfig::default()
        };
        for (s, c) in [(&off, &NetConfig::default()), (&NetConfig::default(), &off)] {
            let (server, client) = (transport(s), transport(c));
            let mut listener = server.listen("127.0.0.1:0").await.unwrap();
            let target = listener.local_addr();
            let (a, b) = tokio::join!(client.connect(&target), listener.accept());
            let (a, mut b) = (a.unwrap(), b.unwrap());
            a.sender.send(vec![5; 10]).unwrap();
            assert_eq!(recv(&mut b).await.unwrap(), vec![5; 10]);
        }
        assert_eq!(RING_LINKS.load(Ordering::SeqCst), before);
    });
}

#[test]
fn a_peer_of_another_cluster_is_refused_before_any_ring_exists() {
    let _serial = serial();
    rt().block_on(async {
        let before_names = ring_names();
        let before = RING_LINKS.load(Ordering::SeqCst);
        let server = transport(&NetConfig::default());
        let other = ClusterCa::generate("other-cluster").unwrap();
        let stranger = QuicTransport::new(other.issue("x").unwrap(), NetConfig::default()).unwrap();
        let mut listener = server.listen("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr();
        let e = stranger.connect(&target).await.unwrap_err();
        assert!(
            matches!(e, NetError::Tls(_) | NetError::Refused { .. }),
            "{e:?}"
        );
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "nothing was accepted");
        assert_eq!(RING_LINKS.load(Ordering::SeqCst), before);
        assert_eq!(ring_names(), before_names, "no ring object was created");
    });
}

#[test]
fn no_ring_object_outlives_the_handshake() {
    let _serial = serial();
    rt().block_on(async {
        let before = ring_names();
        let (a, mut b) = ring_pair(&config(1 << 20, 1 << 20)).await;
        assert_eq!(ring_names(), before);
        a.sender.send(vec![1, 2, 3]).unwrap();
        assert_eq!(recv(&mut b).await.unwrap(), vec![1, 2, 3]);
    });
}

/// Plays a misbehaving dialler through a second mapping of its rings: `write` gets the
/// ring the dialler writes (and the accepted end reads) and may change it.
async fn misbehaving_peer(write: impl FnOnce(&Ring)) -> (Conn, Conn) {
    *TAP.lock().unwrap() = Some(Vec::new());
    let pair = ring_pair(&config(4096, 1 << 20)).await;
    let rings = TAP.lock().unwrap().take().unwrap();
    write(&rings[0]);
    pair
}

#[test]
fn malformed_ring_input_ends_the_link_with_a_typed_error() {
    let _serial = serial();
    rt().block_on(async {
        // A header announcing a frame over the (first-frame) limit.
        let (mut a, mut b) = misbehaving_peer(|ring| {
            let header = crate::codec::Header::Data { len: 1 << 40 }.encode();
            ring.copy_in(0, &header);
            ring.head().store(8, Ordering::Release);
            super::shm::futex::wake(ring.reader_sleep());
        })
        .await;
        assert!(
            matches!(recv(&mut b).await, Err(NetError::FrameTooLarge { .. })),
            "oversized header"
        );
        assert!(matches!(recv(&mut b).await, Err(NetError::Closed { .. })));
        assert!(
            recv(&mut a).await.is_err(),
            "the dialler's end is closed too"
        );

        // A head running more than the capacity ahead of the tail.
        let (_a, mut b) = misbehaving_peer(|ring| {
            ring.head().store(ring.capacity() + 1, Ordering::Release);
            super::shm::futex::wake(ring.reader_sleep());
        })
        .await;
        assert!(
            matches!(recv(&mut b).await, Err(NetError::Protocol { .. })),
            "head out of range"
        );

        // Garbage: a close header announcing an over-long reason.
        let (_a, mut b) = misbehaving_peer(|ring| {
            ring.copy_in(0, &(u64::MAX).to_le_bytes());
            ring.head().store(8, Ordering::Release);
            super::shm::futex::wake(ring.reader_sleep());
        })
        .await;
        assert!(
            matches!(recv(&mut b).await, Err(NetError::Protocol { .. })),
            "garbage header"
        );
    });
}

const CHILD_ADDR: &str = "DAGGER_RING_TEST_ADDR";
const CHILD_ID: &str = "DAGGER_RING_TEST_IDENTITY";
/// What the child writes before it stalls: its hello (8 + 1 bytes), then the header and
/// 100 bytes of a 64 KiB frame.
const CHILD_BYTES: u64 = 9 + 8 + 100;

/// Not a test on its own: the peer process of
/// [`a_peer_that_dies_mid_frame_closes_the_link`], started by it.
#[test]
#[ignore = "helper process of a_peer_that_dies_mid_frame_closes_the_link"]
fn child_peer_stalls_mid_frame() {
    let (Ok(addr), Ok(id)) = (std::env::var(CHILD_ADDR), std::env::var(CHILD_ID)) else {
        return;
    };
    STALL_AFTER.store(CHILD_BYTES, Ordering::SeqCst);
    let identity = crate::Identity::from_text(&id).unwrap();
    rt().block_on(async {
        let t = QuicTransport::new(identity, config(4096, 1 << 20)).unwrap();
        let conn = t.connect(&addr).await.unwrap();
        conn.sender.send(vec![0]).unwrap();
        conn.sender.send(vec![9; 64 << 10]).unwrap();
        // Stay alive, stuck inside the frame, until killed.
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

#[test]
fn a_peer_that_dies_mid_frame_closes_the_link() {
    let _serial = serial();
    rt().block_on(async {
        let before = RING_LINKS.load(Ordering::SeqCst);
        let server = transport(&config(4096, 1 << 20));
        let mut listener = server.listen("127.0.0.1:0").await.unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "ring::tests::child_peer_stalls_mid_frame",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ADDR, listener.local_addr())
            .env(CHILD_ID, ca().issue("child").unwrap().to_text())
            .spawn()
            .unwrap();
        let mut b = tokio::time::timeout(Duration::from_secs(60), listener.accept())
            .await
            .expect("the child connects")
            .unwrap();
        assert_eq!(RING_LINKS.load(Ordering::SeqCst) - before, 1, "a ring link");
        assert_eq!(recv(&mut b).await.unwrap(), vec![0]);
        // Wait until the partial frame is in the ring (counted while nothing receives),
        // then kill the child (SIGKILL).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while b.receiver.received_bytes().unwrap_or(0) < CHILD_BYTES {
            assert!(
                std::time::Instant::now() < deadline,
                "the child's partial frame never arrived"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        child.kill().unwrap();
        match recv(&mut b).await {
            Err(NetError::Closed { reason }) => {
                assert!(reason.contains("inside a frame"), "{reason}")
            }
            other => panic!("expected Closed, got {other:?}"),
        }
        assert!(b.sender.send(vec![1]).is_err() || b.sender.is_closed());
        let _ = child.wait();
    });
}

/// Round trip of a 64-byte ping-pong over a ring link and over QUIC (rings off), between
/// two tasks of one process. A measurement, not a check:
/// `cargo test -p dagger-net --release ring_rtt -- --ignored --nocapture`.
#[test]
#[ignore = "measurement"]
fn ring_rtt() {
    let _serial = serial();
    let rt = rt();
    for rings in [true, false] {
        let config = NetConfig {
            same_host_rings: rings,
            ..NetConfig::default()
        };
        let median = rt.block_on(async {
            let (server, client) = (transport(&config), transport(&config));
            let mut listener = server.listen("127.0.0.1:0").await.unwrap();
            let target = listener.local_addr();
            let (a, b) = tokio::join!(client.connect(&target), listener.accept());
            let (mut a, mut b) = (a.unwrap(), b.unwrap());
            let echo = tokio::spawn(async move {
                while let Ok(f) = b.receiver.recv().await {
                    if b.sender.send(f).is_err() {
                        break;
                    }
                }
            });
            let mut samples = Vec::new();
            for _ in 0..5000 {
                let t = std::time::Instant::now();
                a.sender.send(vec![7; 64]).unwrap();
                a.receiver.recv().await.unwrap();
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
            a.sender.close("done");
            let _ = echo.await;
            samples.sort_by(f64::total_cmp);
            samples[samples.len() / 2]
        });
        println!(
            "ring_rtt {} 64-byte round trip median {median:.1} us",
            if rings { "ring" } else { "quic" }
        );
    }
}

/// Throughput of 8 MiB frames one way over ring links of several capacities and over
/// QUIC. A measurement, not a check:
/// `cargo test -p dagger-net --release ring_mbps -- --ignored --nocapture`.
#[test]
#[ignore = "measurement"]
fn ring_mbps() {
    let _serial = serial();
    let rt = rt();
    for (rings, capacity) in [
        (true, 64 << 10),
        (true, 256 << 10),
        (true, 1 << 20),
        (true, 4 << 20),
        (false, 0),
    ] {
        let config = NetConfig {
            same_host_rings: rings,
            ring_capacity: capacity,
            ..NetConfig::default()
        };
        let t = transport(&config);
        let mbps = rt
            .block_on(crate::bench::conn_mbps(&t, "127.0.0.1:0", 32, 8 << 20))
            .unwrap();
        println!(
            "ring_mbps {} capacity {} KiB: {mbps:.0} MB/s",
            if rings { "ring" } else { "quic" },
            capacity >> 10
        );
    }
}

#[test]
fn a_dialler_with_lanes_still_switches_to_rings() {
    let _serial = serial();
    rt().block_on(async {
        let config = config(4096, 1 << 20);
        let before = RING_LINKS.load(Ordering::SeqCst);
        let server = transport(&config);
        let client = transport(&config).with_lanes(3);
        let mut listener = server.listen("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr();
        let (a, b) = tokio::join!(client.connect(&target), listener.accept());
        let (a, mut b) = (a.unwrap(), b.unwrap());
        assert_eq!(RING_LINKS.load(Ordering::SeqCst) - before, 2);
        let big = patterned(1 << 20, 3);
        a.sender.send(vec![0]).unwrap();
        a.sender.send(big.clone()).unwrap();
        assert_eq!(recv(&mut b).await.unwrap(), vec![0]);
        assert!(recv(&mut b).await.unwrap() == big);
    });
}
