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
