//! Processors of dagger-rs (placeholder: being filled in).
pub mod topology;
pub use topology::{DefaultCosts, Edge, EdgeKind, Topology};
