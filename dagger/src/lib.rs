//! # dagger-rs
//!
//! Run graphs of tasks over a hierarchy of processors — worker OS processes, the CPU cores
//! inside them, and their GPUs — moving each piece of data explicitly to where it is
//! needed.
//!
//! ```no_run
//! use dagger::prelude::*;
//!
//! #[dagger::task]
//! fn inc(x: u64) -> u64 { x + 1 }
//!
//! #[dagger::task]
//! fn add(a: u64, b: u64) -> u64 { a + b }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     dagger::init(); // in a process started as a worker: joins the cluster, never returns
//!     let ctx = Context::local(2)?; // the driver plus two worker processes of this binary
//!     let a = inc::spawn(&ctx, 1)?;
//!     let b = add::spawn(&ctx, &a, 10)?;
//!     assert_eq!(b.fetch()?, 12);
//!     assert_eq!(ctx.collect(add::delayed(inc::delayed(1), 10))?, 12);
//!     Ok(())
//! }
//! ```
//!
//! One binary is driver and worker alike: [`init`] must be the first call of `main` (and
//! of every test that starts a context with worker processes), because a local cluster
//! starts its workers by running the same executable again.
//!
//! # Names
//!
//! A program needs `dagger` alone: every type that the facade's API names is re-exported
//! here, so no lower crate (`dagger-sched`, `dagger-net`, ...) has to be a dependency.
//! What a context and its tasks name is at the crate root — the scheduler's settings and
//! counters as [`SchedulerConfig`] and [`Stats`], the topology's [`Edge`]s, the
//! [`Processor`] trait's [`Job`], [`LazyArg`] — and so are [`Transport`], [`Identity`],
//! [`NetError`] and [`BoxFuture`], which [`set_transport`] names. The rest of the
//! transport API, everything needed to write or wrap a transport, is in [`net`].
//!
//! # Features
//!
//! - `quic` (default): links between processes over QUIC with mutual TLS, and the cluster's
//!   certificate authority. Without it, [`Context::threads`] works as before, and a context
//!   with worker processes needs a transport registered with [`set_transport`] (otherwise
//!   `build` fails with [`ContextError::NoTransport`]); that transport gets
//!   [`Identity::empty`].
//! - `hwloc`: cores, NUMA nodes and caches from hwloc.
//! - `opencl`, `wgpu`, `cuda`: the devices of each backend as processors (kinds `opencl`,
//!   `wgpu`, `cuda`), found at run time: a machine without the backend's driver detects
//!   none, says why in the topology (`unavailable.<backend>`), and runs the rest. Tasks
//!   take and return [`DeviceVec`]s and launch kernels with [`device::Device`]; see
//!   [`device`].
//!
//! What is **not** guaranteed: the order in which independent tasks run; on which
//! processor a task runs, unless its scope says so; that a task runs only once (a task is
//! re-run when its worker is lost, so tasks should be pure functions of their inputs).

mod args;
mod bytes;
mod context;
mod dashboard;
mod direct;
pub mod drain;
mod driver;
mod handle;
mod json;
mod launch;
mod lazy;
mod progress;
mod registry;
mod supervisor;
pub mod timeline;
mod transport;
mod worker;

pub use args::{IntoArg, TaskArg};
pub use bytes::{Bytes, BytesMut};
pub use context::{
    ClusterEvent, ClusterEvents, CollectError, Context, ContextBuilder, ContextError, SubmitError,
    TaskInfo,
};
pub use dagger_core::{
    Arg, ChunkId, ExitCause, GraphError, Incarnation, LinkCost, LostReason, MemorySpace,
    MoveFailure, Options, Part, ProcId, ProcInfo, ProcKind, Scope, TaskError, TaskId, WorkerId,
    WorkerInfo,
};
pub use dagger_macros::task;
pub use dagger_move::{moves, KindPattern, MoveError, MoveFn, MoveRegistry, MoveTarget, MoveValue};
/// Launchers of workers, for [`Context::add_workers`]: on this host, through `ssh`,
/// through Slurm's `srun`, or by hand.
pub use dagger_net::launch::{
    JoinSpec, Launched, Launcher, LocalLauncher, ManualLauncher, SlurmLauncher, SshLauncher,
    WorkerProcess,
};
#[cfg(feature = "quic")]
pub use dagger_net::ClusterCa;
pub use dagger_net::{BoxFuture, Identity, NetError, Transport};
pub use dagger_proc::{
    detectors, DefaultCosts, DetectContext, Detectors, Edge, EdgeKind, Job, Processor, Topology,
};
/// The scheduler's settings, for [`ContextBuilder::scheduler`].
pub use dagger_sched::Config as SchedulerConfig;
/// Counts of tasks by state, from [`Context::stats`].
pub use dagger_sched::Stats;
pub use drain::{Drain, DrainError, DrainOptions, DrainOutcome, DrainReport, RemoveError};
pub use handle::Handle;
pub use lazy::{Collect, IntoLazy, Lazy, LazyArg};
pub use progress::Progress;
pub use registry::{registry_hash, task_names, CallError};
pub use timeline::{MoveSpan, TaskSpan, Timeline, TimelineError};
pub use transport::{set_transport, TransportFactory};

/// The transport API: what a [`Transport`] implementation names (links, frames,
/// listeners, settings), the in-process transport, and with the `quic` feature the QUIC
/// transport and the cluster's certificate authority. Register a transport with
/// [`set_transport`].
pub mod net {
    pub use dagger_net::{
        codec, BoxFuture, Conn, Frame, FrameReceiver, FrameSender, FrameSink, FrameSource,
        Identity, Listener, MemTransport, NetConfig, NetError, Transport,
    };
    #[cfg(feature = "quic")]
    pub use dagger_net::{ClusterCa, QuicTransport};
}

/// Devices: kernel tasks, device-resident values and the device processors of the
/// `opencl`, `wgpu` and `cuda` features.
///
/// A kernel task is a task whose arguments are [`DeviceVec`]s: placed on a device
/// processor (a scope such as `Scope::kind("opencl")`, or a union of kinds for a task with
/// a CPU path too), its inputs are moved onto that device before it runs, it launches its
/// kernel with [`Device::current`](dagger_move::Device::current), and a `DeviceVec` it returns stays on the device until
/// something elsewhere needs it.
///
/// ```no_run
/// use dagger::device::{Device, Kernel};
/// use dagger::prelude::*;
/// use dagger::DeviceVec;
///
/// const SAXPY: Kernel = Kernel::new("saxpy").opencl(
///     "__kernel void saxpy(float a, __global const float* x, __global float* y, uint n) {
///         uint i = get_global_id(0); if (i < n) y[i] += a * x[i]; }",
/// );
///
/// #[dagger::task]
/// fn saxpy(a: f32, x: DeviceVec<f32>, mut y: DeviceVec<f32>) -> DeviceVec<f32> {
///     let n = y.len();
///     match Device::current() {
///         Some(dev) => dev
///             .launch(&SAXPY, n)
///             .scalar(a)
///             .buffer(&x)
///             .buffer_mut(&mut y)
///             .scalar(n as u32)
///             .run()
///             .expect("saxpy"),
///         None => {
///             let x = x.as_slice().expect("on the host");
///             for (y, x) in y.as_mut_slice().expect("on the host").iter_mut().zip(x) {
///                 *y += a * x;
///             }
///         }
///     }
///     y
/// }
/// ```
pub mod device {
    pub use dagger_move::gpu::{register_device_moves, IntoScalar};
    pub use dagger_move::{Device, DeviceVec, Element, GpuBuffer, Launch};
    #[cfg(feature = "cuda")]
    pub use dagger_proc::device::cuda;
    #[cfg(feature = "opencl")]
    pub use dagger_proc::device::opencl;
    #[cfg(feature = "wgpu")]
    pub use dagger_proc::device::wgpu;
    pub use dagger_proc::device::{
        DeviceError, DeviceInfo, DeviceProc, DeviceRef, Evictable, Gpu, Kernel, KernelArg,
        MemoryLedger, RawBuffer, Scalar, ENV_DEVICE_MEMORY,
    };
}

pub use dagger_move::DeviceVec;

/// The names most programs need: `use dagger::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Context, Handle, Lazy, Options, ProcKind, Processor, Scope, TaskError, TaskId, WorkerId,
    };
}

/// Turns a process launched as a worker into one: it joins the cluster and this call never
/// returns (the process exits when the cluster shuts down). In any other process it returns
/// at once. Call it first thing in `main`, and first thing in each test that starts worker
/// processes (such a test also calls [`ContextBuilder::test_harness`]).
///
/// A worker started by a local context takes its identity from a pipe (never from the
/// environment), removes its worker variables from the environment, so that processes
/// its tasks start do not inherit them, and exits with status 1 and a line on stderr when
/// the driver's process is gone. A worker that loses its driver without being told to shut
/// down exits with status 1 as well; a refused one (other build, other task functions,
/// other cluster) exits with status 1 and says why; bad worker arguments exit with 2.
///
/// Calls from several threads are serialised; in a worker process the later ones block
/// until the process exits.
pub fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| match dagger_net::launch::worker_args_from_env() {
        Ok(Some(mut args)) => {
            // A worker started by hand has no link to a launcher: it may join again.
            let by_hand = args.driver_link.is_none();
            if let Some(link) = args.driver_link.take() {
                watch_driver(link);
            }
            let code = worker::run_worker_process(args, by_hand);
            std::process::exit(code);
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("dagger: this process was started as a worker with bad arguments: {e}");
            std::process::exit(2);
        }
    });
}

/// Ends this worker process when the driver's process is gone: the launcher's pipe reaches
/// end-of-file then, whichever thread of the driver started the worker.
fn watch_driver(link: dagger_net::launch::DriverLink) {
    let spawned = std::thread::Builder::new()
        .name("dagger-driver-watch".into())
        .spawn(move || {
            link.wait_closed();
            eprintln!("dagger worker: the driver process is gone; exiting");
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        eprintln!("dagger worker: cannot watch the driver process: {e}");
        std::process::exit(1);
    }
}

/// The worker process this code runs in (`WorkerId::DRIVER` in the driver's process).
pub fn current_worker() -> WorkerId {
    worker::current_worker()
}

/// The processor the calling task runs on, if called from inside a task.
pub fn current_processor() -> Option<ProcId> {
    worker::current_proc()
}

#[doc(hidden)]
pub mod __private {
    pub use crate::registry::{
        decode_arg, encode_result, ArgValue, CallError, OutputInPlace, OutputOf,
        OutputViaSerialize, TaskFn, TaskOutput,
    };
    pub use inventory;
}
