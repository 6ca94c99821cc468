//! The runtime's cores: the driver core and the worker core, state machines without I/O.
//!
//! Like the scheduler (and quinn-proto under quinn), each core is driven by its shell:
//! events come in through `handle_*` methods that take the current time, what the core
//! wants done comes out of `poll_*` methods (frames to send, events, actions), and
//! `poll_timeout` says when the core next wants to be woken. The cores never touch a
//! socket, a thread or the clock, so a simulated cluster of real cores can run thousands
//! of fault schedules deterministically.

pub mod driver;
pub mod timeline;
pub mod worker;

pub use driver::{
    AfterDrain, DrainOutcome, DriverConfig, DriverCore, DriverEvent, FetchId, JoinError, Joined,
    LinkId, Transmit,
};
pub use timeline::{MoveSpan, TaskSpan, Timeline};
pub use worker::{WorkerConfig, WorkerState};
