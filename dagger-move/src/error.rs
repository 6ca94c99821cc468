//! The error type of every operation of this crate.

use dagger_core::{ProcId, ProcKind};

/// Why a move, a path search or a shared-memory operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MoveError {
    /// No registered move takes this data type from `src` to `dst`.
    #[error("no move of {ty} from a {src} processor to a {dst} processor")]
    NoMove {
        /// The source processor kind.
        src: ProcKind,
        /// The destination processor kind.
        dst: ProcKind,
        /// The data type's name.
        ty: String,
    },
    /// Encoded bytes could not be decoded as the type a typed move expects.
    #[error("cannot decode the bytes of a {ty} value: {message}")]
    Decode {
        /// The type the move expects.
        ty: String,
        /// What the decoder reported.
        message: String,
    },
    /// An in-memory value is not of the type the move expects.
    #[error("the moved value is not a {expected}")]
    WrongValue {
        /// The type the move expects.
        expected: String,
    },
    /// The topology has no path between the two processors (one is unknown, or no edge
    /// that can carry data connects them).
    #[error("no path from {from} to {to} in the topology")]
    NoPath {
        /// Where the data is.
        from: ProcId,
        /// Where it should go.
        to: ProcId,
    },
    /// A shared-memory object could not be created, mapped or removed.
    #[error("shared-memory object {name}: {source}")]
    Shm {
        /// The object's name.
        name: String,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// A shared-memory object name does not follow the accepted pattern
    /// (`dagger-` then lower-case letters, digits and `-`, at most
    /// [`shm::MAX_NAME_LEN`](crate::shm::MAX_NAME_LEN) bytes).
    #[error("invalid shared-memory object name {name:?}: {reason}")]
    ShmName {
        /// The rejected name (as received).
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A shared-memory object's real size is not the length the reader was told.
    #[error("shared-memory object {name} holds {actual} bytes, expected {expected}")]
    ShmLen {
        /// The object's name.
        name: String,
        /// The length the reader was told.
        expected: u64,
        /// The object's real size.
        actual: u64,
    },
    /// A device refused: out of memory even after evicting what it could, a kernel that
    /// does not build or has no source for the backend, a bad argument, a driver error.
    #[cfg(feature = "devices")]
    #[error(transparent)]
    Device(#[from] dagger_proc::device::DeviceError),
    /// A move function reported a failure of its own.
    #[error("move failed: {message}")]
    Failed {
        /// What went wrong.
        message: String,
    },
}
