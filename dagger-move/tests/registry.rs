//! The move registry: specificity order, user-wins, typed decoding.

use dagger_core::{MemorySpace, ProcId, ProcKind, WorkerId};
use dagger_move::{KindPattern, MoveError, MoveRegistry, MoveTarget, MoveValue};

fn fpga() -> ProcKind {
    ProcKind::custom("fpga")
}

/// Registers an untyped move that replaces the value by `tag`.
fn tagged(
    r: &MoveRegistry,
    src: KindPattern,
    dst: KindPattern,
    ty: Option<&str>,
    tag: &'static str,
) {
    let f = move |_v: MoveValue, _t: &MoveTarget<'_>| Ok(MoveValue::value(tag));
    match ty {
        Some(ty) => r.register_named(src, dst, ty, f),
        None => r.register_any(src, dst, f),
    }
}

fn run(r: &MoveRegistry, src: &ProcKind, dst: &ProcKind, ty: &str) -> String {
    let mem = MemorySpace::HOST;
    let target = MoveTarget::new(ProcId::new(WorkerId(1), 1), dst, &mem);
    match r.apply(src, ty, MoveValue::Bytes(vec![1, 2, 3]), &target) {
        Ok(v) => match v.downcast::<&'static str>() {
            Ok(tag) => tag.to_string(),
            Err(MoveValue::Bytes(b)) => format!("identity {b:?}"),
            Err(other) => format!("unexpected {other:?}"),
        },
        Err(e) => format!("error {e}"),
    }
}

#[test]
fn fallback_is_identity() {
    let r = MoveRegistry::new();
    assert_eq!(
        run(&r, &ProcKind::THREAD, &fpga(), "u32"),
        "identity [1, 2, 3]"
    );
}

#[test]
fn most_specific_move_wins_in_documented_order() {
    let r = MoveRegistry::new();
    let (t, f) = (ProcKind::THREAD, fpga());
    let k = |k: &ProcKind| KindPattern::Kind(k.clone());
    // Registered least specific first, so that "latest wins" cannot explain the result.
    tagged(&r, KindPattern::Any, KindPattern::Any, None, "any-any-any");
    tagged(&r, k(&t), KindPattern::Any, None, "src-any-any");
    tagged(&r, KindPattern::Any, k(&f), None, "any-dst-any");
    tagged(
        &r,
        KindPattern::Any,
        KindPattern::Any,
        Some("T"),
        "any-any-T",
    );
    tagged(&r, k(&t), KindPattern::Any, Some("T"), "src-any-T");
    tagged(&r, KindPattern::Any, k(&f), Some("T"), "any-dst-T");
    tagged(&r, k(&t), k(&f), None, "src-dst-any");
    tagged(&r, k(&t), k(&f), Some("T"), "src-dst-T");

    assert_eq!(run(&r, &t, &f, "T"), "src-dst-T");
    assert_eq!(run(&r, &t, &f, "U"), "src-dst-any");
    let cuda = ProcKind::CUDA;
    assert_eq!(run(&r, &cuda, &f, "T"), "any-dst-T");
    assert_eq!(run(&r, &t, &cuda, "T"), "src-any-T");
    assert_eq!(run(&r, &cuda, &cuda, "T"), "any-any-T");
    assert_eq!(run(&r, &cuda, &f, "U"), "any-dst-any");
    assert_eq!(run(&r, &t, &cuda, "U"), "src-any-any");
    assert_eq!(run(&r, &cuda, &cuda, "U"), "any-any-any");
}

#[test]
fn later_registration_of_equal_specificity_wins() {
    let r = MoveRegistry::new();
    tagged(&r, "thread".into(), "fpga".into(), Some("T"), "builtin");
    tagged(
        &r,
        ProcKind::THREAD.into(),
        fpga().into(),
        Some("T"),
        "user",
    );
    assert_eq!(run(&r, &ProcKind::THREAD, &fpga(), "T"), "user");
    // Re-registering the same patterns replaces, it does not accumulate.
    assert_eq!(r.len(), 2);
    // A user's catch-all registered later replaces the built-in identity.
    tagged(&r, "*".into(), "any".into(), None, "user-fallback");
    assert_eq!(
        run(&r, &ProcKind::CUDA, &ProcKind::CUDA, "X"),
        "user-fallback"
    );
}

#[test]
fn typed_move_decodes_bytes_and_downcasts_values() {
    let r = MoveRegistry::new();
    r.register::<Vec<f32>, _>(ProcKind::THREAD, fpga(), |v, t| {
        assert_eq!(t.proc, ProcId::new(WorkerId(2), 3));
        assert_eq!(t.device::<u32>(), Some(&7));
        Ok(v.len() * 10 + v.iter().sum::<f32>() as usize)
    });
    let ty = std::any::type_name::<Vec<f32>>();
    let (kind, mem) = (fpga(), MemorySpace::custom("fpga", 0));
    let board: u32 = 7;
    let target = MoveTarget::new(ProcId::new(WorkerId(2), 3), &kind, &mem).with_device(&board);

    let bytes = postcard::to_allocvec(&vec![1.0f32, 2.0, 3.0]).unwrap();
    let out = r
        .apply(&ProcKind::THREAD, ty, MoveValue::Bytes(bytes), &target)
        .unwrap();
    assert_eq!(out.downcast::<usize>().ok(), Some(36));

    let out = r
        .apply(
            &ProcKind::THREAD,
            ty,
            MoveValue::value(vec![5.0f32]),
            &target,
        )
        .unwrap();
    assert_eq!(out.downcast::<usize>().ok(), Some(15));

    // Other types still take the identity fallback.
    let out = r
        .apply(&ProcKind::THREAD, "u8", MoveValue::Bytes(vec![9]), &target)
        .unwrap();
    assert_eq!(out.as_bytes(), Some(&[9u8][..]));
}

#[test]
fn typed_move_reports_decode_and_type_errors() {
    let r = MoveRegistry::new();
    r.register::<(u64, String), ()>(ProcKind::THREAD, fpga(), |_, _| Ok(()));
    let ty = std::any::type_name::<(u64, String)>();
    let (kind, mem) = (fpga(), MemorySpace::HOST);
    let target = MoveTarget::new(ProcId::new(WorkerId(1), 1), &kind, &mem);

    // Truncated input: the string's length prefix promises bytes that are not there.
    let err = r
        .apply(
            &ProcKind::THREAD,
            ty,
            MoveValue::Bytes(vec![1, 200]),
            &target,
        )
        .unwrap_err();
    match err {
        MoveError::Decode { ty: t, message } => {
            assert_eq!(t, ty);
            assert!(!message.is_empty());
        }
        other => panic!("expected a decode error, got {other:?}"),
    }

    let err = r
        .apply(&ProcKind::THREAD, ty, MoveValue::value(17u8), &target)
        .unwrap_err();
    assert!(matches!(err, MoveError::WrongValue { expected } if expected == ty));
}

#[test]
fn a_move_error_passes_through() {
    let r = MoveRegistry::new();
    r.register_any(ProcKind::THREAD, fpga(), |_, t| {
        Err(MoveError::Failed {
            message: format!("board of {} is offline", t.proc),
        })
    });
    let (kind, mem) = (fpga(), MemorySpace::HOST);
    let target = MoveTarget::new(ProcId::new(WorkerId(4), 2), &kind, &mem);
    let err = r
        .apply(&ProcKind::THREAD, "x", MoveValue::Bytes(vec![]), &target)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "move failed: board of proc[2]@worker-4 is offline"
    );
}

#[test]
fn global_registry_is_shared() {
    let a = dagger_move::moves() as *const MoveRegistry;
    let b = dagger_move::moves() as *const MoveRegistry;
    assert_eq!(a, b);
    assert!(dagger_move::moves()
        .lookup(&ProcKind::THREAD, &ProcKind::OS, "anything")
        .is_some());
}
