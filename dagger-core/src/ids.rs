use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident($inner:ty), $prefix:literal) => {
        $(#[$m])*
        #[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
        pub struct $name(pub $inner);

        impl $name {
            /// The raw number behind the id.
            #[inline]
            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }
    };
}

id_type!(
    /// One OS process of the cluster. `WorkerId::DRIVER` (0) is the driver's own process.
    WorkerId(u32),
    "worker-"
);
id_type!(
    /// A task of the graph, unique within one context.
    TaskId(u64),
    "task-"
);
id_type!(
    /// A piece of data held by one processor. A task's result is the chunk with the same
    /// number as the task.
    ChunkId(u64),
    "chunk-"
);
id_type!(
    /// The n-th time a worker id connected. Messages carry it so that late messages from a
    /// connection the driver already declared lost can be told apart and dropped.
    Incarnation(u32),
    "inc-"
);

impl WorkerId {
    /// The driver's own process.
    pub const DRIVER: WorkerId = WorkerId(0);

    /// True for the driver's own process.
    pub fn is_driver(self) -> bool {
        self == Self::DRIVER
    }
}

impl TaskId {
    /// The chunk that holds this task's result.
    #[inline]
    pub const fn chunk(self) -> ChunkId {
        ChunkId(self.0)
    }
}

impl ChunkId {
    /// The task whose result this chunk is (every chunk is some task's result).
    #[inline]
    pub const fn task(self) -> TaskId {
        TaskId(self.0)
    }
}

/// A processor of the cluster: the process it lives in and its index there.
/// Index 0 is always the process's own `OsProc` (the root of that process's subtree).
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct ProcId {
    /// The process the processor belongs to.
    pub worker: WorkerId,
    /// Its index among that process's processors; 0 is the `OsProc`.
    pub index: u32,
}

impl ProcId {
    /// The processor `index` of `worker`.
    pub const fn new(worker: WorkerId, index: u32) -> Self {
        Self { worker, index }
    }

    /// The `OsProc` (root) of a worker.
    pub const fn root(worker: WorkerId) -> Self {
        Self { worker, index: 0 }
    }

    /// True if this is a process root.
    pub const fn is_root(self) -> bool {
        self.index == 0
    }
}

impl fmt::Debug for ProcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proc[{}]@{}", self.index, self.worker)
    }
}

impl fmt::Display for ProcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
