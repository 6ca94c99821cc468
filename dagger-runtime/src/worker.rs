//! The worker core.
