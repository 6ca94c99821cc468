//! The wgpu backend (feature `wgpu`). Not yet written.

use crate::{DetectContext, Detection};

/// The detector's name.
pub const DETECTOR: &str = "wgpu";

/// Finds this backend's devices.
pub fn detect(_ctx: &DetectContext) -> Detection {
    Detection::unavailable("not built yet")
}
