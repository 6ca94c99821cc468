//! Shared-memory objects: round trip, name and length validation, cleanup.

use dagger_move::{shm, MoveError};

/// A prefix of this test process, so parallel test runs never touch each other's objects.
fn prefix(tag: &str) -> String {
    format!("dagger-test-{}-{tag}", std::process::id())
}

#[test]
fn round_trip_of_8_mib() {
    let pre = prefix("rt");
    let data: Vec<u8> = (0..8usize << 20).map(|i| (i * 7 % 253) as u8).collect();
    let obj = shm::write(&pre, &data).unwrap();
    assert_eq!(obj.len, data.len() as u64);
    assert!(obj.name.starts_with(&pre));
    shm::validate_name(&obj.name).unwrap();
    let view = shm::read(&obj.name, obj.len).unwrap();
    assert_eq!(&*view, &data[..]);
    // Unlinked right after mapping: a second read finds nothing.
    assert!(matches!(
        shm::read(&obj.name, obj.len),
        Err(MoveError::Shm { .. })
    ));
    drop(view);
}

#[test]
fn writer_serializes_in_place_and_unlinks_when_dropped_unfinished() {
    let pre = prefix("writer");
    let mut w = shm::ShmWriter::create(&pre, 5).unwrap();
    w.copy_from_slice(b"hello");
    let obj = w.finish();
    assert_eq!(&*shm::read(&obj.name, 5).unwrap(), b"hello");

    let w = shm::ShmWriter::create(&pre, 16).unwrap();
    let name = w.name().to_string();
    drop(w);
    assert!(matches!(shm::read(&name, 16), Err(MoveError::Shm { .. })));
}

/// Objects are readable and writable by their owner only, whatever the umask allows.
#[cfg(target_os = "linux")]
#[test]
fn objects_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = shm::ShmWriter::create(&prefix("mode"), 8).unwrap();
    let meta = std::fs::metadata(format!("/dev/shm/{}", w.name())).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn empty_objects_work() {
    let obj = shm::write(&prefix("empty"), &[]).unwrap();
    assert_eq!(obj.len, 0);
    assert!(shm::read(&obj.name, 0).unwrap().is_empty());
}

#[test]
fn bad_names_are_rejected() {
    let long = format!("dagger-{}", "a".repeat(shm::MAX_NAME_LEN));
    for name in [
        "../etc/passwd",
        "dagger-../../etc/passwd",
        "dagger-a/b",
        "dagger-",
        "other-name",
        "dagger-UPPER",
        "dagger-a\0b",
        "dagger-a.b",
        "",
        long.as_str(),
    ] {
        match shm::read(name, 1) {
            Err(MoveError::ShmName { .. }) => {}
            other => panic!("{name:?}: expected a name error, got {other:?}"),
        }
        assert!(matches!(
            shm::write(name, b"x"),
            Err(MoveError::ShmName { .. })
        ));
    }
    assert_eq!(shm::cleanup_prefix("../etc"), 0);
}

#[test]
fn wrong_length_is_rejected_and_leaves_the_object() {
    let obj = shm::write(&prefix("len"), &[1, 2, 3, 4]).unwrap();
    for bad in [0, 3, 5, u64::MAX] {
        match shm::read(&obj.name, bad) {
            Err(MoveError::ShmLen {
                expected, actual, ..
            }) => {
                assert_eq!((expected, actual), (bad, 4));
            }
            other => panic!("len {bad}: expected a length error, got {other:?}"),
        }
    }
    assert_eq!(&*shm::read(&obj.name, 4).unwrap(), &[1, 2, 3, 4]);
}

#[test]
fn missing_object_is_an_error() {
    let name = format!("{}-nothing-here", prefix("missing"));
    assert!(matches!(shm::read(&name, 8), Err(MoveError::Shm { name: n, .. }) if n == name));
}

#[test]
fn cleanup_removes_leftovers_of_one_prefix_only() {
    let a = prefix("clean-a");
    let b = prefix("clean-b");
    let left: Vec<_> = (0..3).map(|i| shm::write(&a, &[i]).unwrap()).collect();
    let other = shm::write(&b, &[9]).unwrap();
    assert_eq!(shm::cleanup_prefix(&a), 3);
    for o in &left {
        assert!(shm::read(&o.name, o.len).is_err());
    }
    assert_eq!(&*shm::read(&other.name, 1).unwrap(), &[9]);
    assert_eq!(shm::cleanup_prefix(&a), 0);
}

#[test]
fn unlink_removes_an_unread_object() {
    let obj = shm::write(&prefix("unlink"), &[1]).unwrap();
    obj.unlink().unwrap();
    assert!(shm::read(&obj.name, 1).is_err());
    assert!(matches!(obj.unlink(), Err(MoveError::Shm { .. })));
}

/// A hand-back hook that counts its runs.
fn counter() -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    impl Fn() -> Box<dyn FnOnce() + Send + Sync>,
) {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let m = n.clone();
    (n, move || {
        let m = m.clone();
        Box::new(move || {
            m.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
    })
}

fn names_with(prefix: &str) -> usize {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn pooled_segments_are_reused_across_many_transfers() {
    let pre = prefix("pool");
    let pool = shm::SegmentPool::new(&pre, 64 << 20).unwrap();
    let cache = shm::SegmentCache::new();
    let (handed_back, hook) = counter();
    let mut names = std::collections::HashSet::new();
    for i in 0..200usize {
        let len = 100_000 + (i % 7) * 50_000;
        let data: Vec<u8> = (0..len).map(|j| ((i + j) % 251) as u8).collect();
        let r = pool.write(1, &data).unwrap().expect("room in the pool");
        assert_eq!(r.len, len as u64);
        assert!(r.size >= r.len);
        names.insert(r.name.clone());
        let view = cache.view(&r, hook()).unwrap();
        assert_eq!(&*view, &data[..]);
        drop(view);
        assert!(pool.release(1, &r.name));
        // Handing back twice, or as another reader, changes nothing.
        assert!(!pool.release(1, &r.name));
        assert!(!pool.release(2, &r.name));
    }
    assert_eq!(handed_back.load(std::sync::atomic::Ordering::SeqCst), 200);
    // One segment served every transfer, and the reader mapped (and unlinked) it once.
    assert_eq!(names.len(), 1);
    assert_eq!(cache.len(), 1);
    assert_eq!(names_with(&pre), 0);
    assert_eq!(pool.held_bytes(), (1 << 20, 0));
}

#[test]
fn a_lent_segment_is_not_written_again_until_handed_back() {
    let pre = prefix("lent");
    let pool = shm::SegmentPool::new(&pre, 2 << 20).unwrap();
    let cache = shm::SegmentCache::new();
    let (_, hook) = counter();
    let a = pool.write(7, &[1u8; 1000]).unwrap().unwrap();
    let b = pool.write(7, &[2u8; 1000]).unwrap().unwrap();
    assert_ne!(a.name, b.name);
    // Full: the caller falls back to one-shot objects.
    assert!(pool.write(7, &[3u8; 1000]).unwrap().is_none());
    let va = cache.view(&a, hook()).unwrap();
    let vb = cache.view(&b, hook()).unwrap();
    assert!(va.iter().all(|&x| x == 1) && vb.iter().all(|&x| x == 2));
    // Another reader cannot use a segment lent to reader 7.
    assert!(pool.write(8, &[4u8; 10]).unwrap().is_none());
    assert!(pool.release(7, &a.name));
    let c = pool.write(7, &[5u8; 500]).unwrap().unwrap();
    assert_eq!(c.name, a.name);
    drop(va);
    let vc = cache.view(&c, hook()).unwrap();
    assert_eq!(&*vc, &[5u8; 500][..]);
    assert!(vb.iter().all(|&x| x == 2));
}

#[test]
fn segments_of_a_reader_that_disappears_are_dropped_and_unlinked() {
    let pre = prefix("gone");
    let pool = shm::SegmentPool::new(&pre, 16 << 20).unwrap();
    // Written, never mapped: the name is still there.
    let r = pool.write(3, &[9u8; 4096]).unwrap().unwrap();
    let other = pool.write(4, &[9u8; 4096]).unwrap().unwrap();
    assert_eq!(names_with(&pre), 2);
    assert_eq!(pool.owners(), vec![3, 4]);
    assert_eq!(pool.drop_owner(3), 1);
    assert_eq!(pool.owners(), vec![4]);
    assert_eq!(names_with(&pre), 1);
    assert!(!pool.release(3, &r.name));
    let cache = shm::SegmentCache::new();
    let (_, hook) = counter();
    assert!(matches!(cache.view(&r, hook()), Err(MoveError::Shm { .. })));
    // Dropping the pool removes the rest.
    drop(pool);
    assert_eq!(names_with(&pre), 0);
    assert!(matches!(
        cache.view(&other, hook()),
        Err(MoveError::Shm { .. })
    ));
}

#[test]
fn bad_segment_references_are_rejected() {
    let pre = prefix("badseg");
    let pool = shm::SegmentPool::new(&pre, 4 << 20).unwrap();
    let cache = shm::SegmentCache::new();
    let (handed_back, hook) = counter();
    let r = pool.write(1, &[1u8; 100]).unwrap().unwrap();
    let mut wrong = r.clone();
    wrong.len = r.size + 1;
    assert!(matches!(
        cache.view(&wrong, hook()),
        Err(MoveError::ShmLen { .. })
    ));
    let mut wrong = r.clone();
    wrong.size += 4096;
    wrong.len = 10;
    assert!(matches!(
        cache.view(&wrong, hook()),
        Err(MoveError::ShmLen { .. })
    ));
    let mut wrong = r.clone();
    wrong.name = "/etc/passwd".into();
    assert!(matches!(
        cache.view(&wrong, hook()),
        Err(MoveError::ShmName { .. })
    ));
    // The real reference still works, then a cached mapping refuses another size.
    let v = cache.view(&r, hook()).unwrap();
    assert_eq!(&*v, &[1u8; 100][..]);
    let mut wrong = r.clone();
    wrong.size *= 2;
    assert!(matches!(
        cache.view(&wrong, hook()),
        Err(MoveError::ShmLen { .. })
    ));
    // Failed views never run their hook.
    drop(v);
    assert_eq!(handed_back.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(shm::SegmentPool::new("not-a-name", 1).is_err());
    assert!(pool.write(1, &[]).unwrap().is_none());
}

#[test]
fn a_stored_chunk_is_lent_in_place_and_its_segment_reused_once_free() {
    let pre = prefix("stored");
    let pool = shm::SegmentPool::new(&pre, 3 << 20).unwrap();
    let cache = shm::SegmentCache::new();
    let (handed_back, hook) = counter();
    let data: Vec<u8> = (0..1_500_000usize).map(|j| (j % 253) as u8).collect();
    let mut w = pool
        .alloc_stored(data.len())
        .unwrap()
        .expect("room in the pool");
    w.copy_from_slice(&data);
    let stored = w.finish();
    assert_eq!(&*stored, &data[..]);
    // Lent without a copy: the reader sees the writer's bytes in the same segment.
    let r = pool.lend_stored(1, &stored).expect("lendable");
    assert_eq!((r.name.as_str(), r.len), (stored.name(), data.len() as u64));
    assert!(r.size >= r.len && r.size < r.len + (64 << 10));
    // Lent once at a time; and once reader 1 has it, no other reader may map it.
    assert!(pool.lend_stored(1, &stored).is_none());
    let view = cache.view(&r, hook()).unwrap();
    assert_eq!(&*view, &data[..]);
    drop(view);
    assert!(pool.release(1, &r.name));
    assert!(pool.lend_stored(2, &stored).is_none());
    let again = pool
        .lend_stored(1, &stored)
        .expect("lendable again once handed back");
    assert_eq!(&*cache.view(&again, hook()).unwrap(), &data[..]);
    // The pool is full (3 MiB): a copy for reader 2 does not fit next to a 1.5 MB
    // stored segment and a 1 MiB copy segment.
    let copy = pool
        .write(2, &data[..1000])
        .unwrap()
        .expect("a copy segment fits");
    assert!(pool.write(2, &data[..1000]).unwrap().is_none());
    assert!(pool.alloc_stored(1 << 20).unwrap().is_none());
    // The stored chunk dropped while lent: its segment stays busy until handed back.
    drop(stored);
    assert!(pool.alloc_stored(1 << 20).unwrap().is_none());
    assert!(pool.release(1, &again.name));
    let reused = pool
        .alloc_stored(1 << 20)
        .unwrap()
        .expect("the segment is idle again");
    assert_eq!(reused.finish().name(), r.name);
    assert!(pool.release(2, &copy.name));
    assert_eq!(handed_back.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Another pool's chunk is not lent by this one.
    let other = shm::SegmentPool::new(&prefix("other"), 1 << 20).unwrap();
    let theirs = other.alloc_stored(10).unwrap().unwrap().finish();
    assert!(pool.lend_stored(1, &theirs).is_none());
}

/// A writer that finds every fitting segment in flight waits for one to come back rather
/// than creating another: the pool stays as small as the traffic through it.
#[test]
fn a_writer_waits_for_a_segment_in_flight_instead_of_creating_one() {
    let pool = std::sync::Arc::new(shm::SegmentPool::new(&prefix("waits"), 64 << 20).unwrap());
    // Long enough never to run out in a test; only a defect makes the test that slow.
    pool.set_return_wait(Some(std::time::Duration::from_secs(60)));
    let stored = pool.alloc_stored(1 << 20).unwrap().unwrap().finish();
    let lent = pool.lend_stored(7, &stored).expect("lendable");
    let lent_name = lent.name.clone();
    assert_eq!(pool.stats().created, 1);
    // The reader hands the segment back and the chunk is released, on another thread,
    // while (or before) the writer below asks for a segment.
    let back = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(pool.release(7, &lent.name));
            drop(stored);
        })
    };
    let again = pool.alloc_stored(1 << 20).unwrap().unwrap().finish();
    back.join().unwrap();
    let stats = pool.stats();
    assert_eq!(stats.created, 1, "{stats:?}");
    assert_eq!(stats.waited_in_vain, 0, "{stats:?}");
    assert_eq!(pool.held_bytes().0, 1 << 20);
    // A stored chunk not lent yet is waited for too: in a flow it is lent and released
    // soon after.
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            drop(again);
        });
        let next = pool.alloc_stored(1 << 20).unwrap().unwrap().finish();
        assert_eq!(next.name(), lent_name);
    });
    assert_eq!(pool.stats().created, 1);
}

/// A writer waits at most its limit, then creates; after such a wait in vain, writers
/// create at once until a segment is freed again.
#[test]
fn after_a_wait_in_vain_writers_create_at_once_until_a_segment_is_freed() {
    let pool = shm::SegmentPool::new(&prefix("vain"), 64 << 20).unwrap();
    pool.set_return_wait(Some(std::time::Duration::from_millis(1)));
    let a = pool.alloc_stored(1 << 20).unwrap().unwrap().finish();
    let la = pool.lend_stored(1, &a).unwrap();
    // `a` stays lent: the writer waits its limit in vain, then creates.
    let b = pool.alloc_stored(1 << 20).unwrap().unwrap().finish();
    assert_eq!(
        pool.stats(),
        shm::PoolStats {
            created: 2,
            waited: 0,
            waited_in_vain: 1
        }
    );
    let lb = pool.lend_stored(1, &b).unwrap();
    // Nothing was freed since: no second wait, even with a long limit.
    pool.set_return_wait(Some(std::time::Duration::from_secs(60)));
    let c = pool.alloc_stored(1 << 20).unwrap().unwrap().finish();
    assert_eq!(pool.stats().created, 3);
    assert_eq!(pool.stats().waited_in_vain, 1);
    // A loan handed back counts as a free: the next writer waits again, and here it
    // gets `b`'s segment once its chunk is released.
    assert!(pool.release(1, &la.name));
    let lc = pool.lend_stored(1, &c).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(pool.release(1, &lb.name));
            drop(b);
        });
        let d = pool.alloc_stored(1 << 20).unwrap().unwrap().finish();
        assert_eq!(d.name(), lb.name);
    });
    assert_eq!(pool.stats().created, 3);
    assert_eq!(pool.stats().waited, 1);
    assert!(pool.release(1, &lc.name));
    drop((a, c));
    // Zero never waits (nor counts a wait): with every segment in use, it creates.
    pool.set_return_wait(Some(std::time::Duration::ZERO));
    let in_use: Vec<_> = (0..3)
        .map(|_| pool.alloc_stored(1 << 20).unwrap().unwrap().finish())
        .collect();
    let before = pool.stats();
    assert_eq!(before.created, 3);
    let _f = pool.alloc_stored(1 << 20).unwrap().unwrap().finish();
    let after = pool.stats();
    assert_eq!(after.created, 4);
    assert_eq!(
        (after.waited, after.waited_in_vain),
        (before.waited, before.waited_in_vain)
    );
    drop(in_use);
}
