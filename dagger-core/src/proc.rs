use crate::ids::{Incarnation, ProcId, WorkerId};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// The kind of a processor: an open set. The built-in kinds are constants; a user's own
/// processor type brings its own name with [`ProcKind::custom`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcKind(Cow<'static, str>);

impl ProcKind {
    /// A worker OS process (the root of a process's subtree).
    pub const OS: ProcKind = ProcKind(Cow::Borrowed("os"));
    /// A CPU core of a process.
    pub const THREAD: ProcKind = ProcKind(Cow::Borrowed("thread"));
    /// A CUDA device.
    pub const CUDA: ProcKind = ProcKind(Cow::Borrowed("cuda"));
    /// An OpenCL device.
    pub const OPENCL: ProcKind = ProcKind(Cow::Borrowed("opencl"));
    /// A wgpu adapter.
    pub const WGPU: ProcKind = ProcKind(Cow::Borrowed("wgpu"));

    /// A kind of the user's own, e.g. `ProcKind::custom("fpga")`.
    pub fn custom(name: impl Into<Cow<'static, str>>) -> Self {
        ProcKind(name.into())
    }

    /// The kind's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ProcKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ProcKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The memory a processor computes in, named within its process: host RAM (`host`, 0),
/// a NUMA node's RAM, a GPU's memory, a user device's memory. An open set, like
/// [`ProcKind`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemorySpace {
    /// What kind of memory (`host`, `cuda`, `opencl`, `wgpu`, or a user's name).
    pub kind: Cow<'static, str>,
    /// Which one of that kind within the process (device index, NUMA node).
    pub index: u32,
}

impl MemorySpace {
    /// The process's host memory.
    pub const HOST: MemorySpace = MemorySpace {
        kind: Cow::Borrowed("host"),
        index: 0,
    };

    /// A memory space of the user's own.
    pub fn custom(kind: impl Into<Cow<'static, str>>, index: u32) -> Self {
        Self {
            kind: kind.into(),
            index,
        }
    }

    /// True for host RAM, where every value can be read by the CPU.
    pub fn is_host(&self) -> bool {
        self.kind == "host"
    }
}

impl fmt::Debug for MemorySpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.index)
    }
}

impl fmt::Display for MemorySpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The cost model of one edge of the topology graph: moving `n` bytes over it takes
/// `latency_ns + n * 1e9 / bytes_per_s` nanoseconds.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkCost {
    /// Fixed cost of one hop, in nanoseconds.
    pub latency_ns: u64,
    /// Sustained bandwidth, in bytes per second (0 means the edge cannot carry data).
    pub bytes_per_s: u64,
}

impl LinkCost {
    /// An edge with the given latency (ns) and bandwidth (bytes/s).
    pub const fn new(latency_ns: u64, bytes_per_s: u64) -> Self {
        Self {
            latency_ns,
            bytes_per_s,
        }
    }

    /// Nanoseconds to move `bytes` over this edge.
    pub fn time_ns(&self, bytes: u64) -> u64 {
        if self.bytes_per_s == 0 {
            return u64::MAX / 4;
        }
        self.latency_ns
            .saturating_add(((bytes as u128 * 1_000_000_000u128) / self.bytes_per_s as u128) as u64)
    }
}

/// The description of one processor, as it crosses the wire and appears in the tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcInfo {
    /// Its id (process and index).
    pub id: ProcId,
    /// Its kind.
    pub kind: ProcKind,
    /// Its parent in the tree; `None` for an `OsProc` root.
    pub parent: Option<ProcId>,
    /// The memory it computes in.
    pub memory: MemorySpace,
    /// A short human name (`core 3`, `NVIDIA H100`, ...).
    pub label: String,
    /// Free-form properties shown in the tree (core index, NUMA node, caches, device name).
    pub properties: BTreeMap<String, String>,
}

/// Everything the driver learns about a process when it joins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its id in the cluster.
    pub worker: WorkerId,
    /// Which connection of that id this is.
    pub incarnation: Incarnation,
    /// The host name it runs on (processes on one host may use shared-memory shortcuts).
    pub host: String,
    /// Its OS process id.
    pub pid: u32,
    /// The name its launcher gave it (empty if none): how a launcher recognises the
    /// workers it started when they join.
    pub name: String,
    /// The address other workers reach it at for worker-to-worker moves.
    pub peer_addr: Option<String>,
    /// Its processors, the `OsProc` root first.
    pub procs: Vec<ProcInfo>,
}
