//! The opencl backend (feature `opencl`). Not yet written.

use crate::{DetectContext, Detection};

/// The detector's name.
pub const DETECTOR: &str = "opencl";

/// Finds this backend's devices.
pub fn detect(_ctx: &DetectContext) -> Detection {
    Detection::unavailable("not built yet")
}
