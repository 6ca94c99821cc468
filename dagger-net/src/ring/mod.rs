//! The same-host fast path: two processes of one host exchange frames through a pair of
//! shared-memory rings instead of their QUIC connection.
//!
//! The choice is made per link, inside the QUIC transport, once the authenticated (mutual
//! TLS) connection and the preamble are through, so nothing above the transport knows
//! which path a [`Conn`](crate::Conn) uses:
//!
//! 1. A dialler with rings enabled says so in its hello (role "primary with an offer") and
//!    appends an [`Offer`]: its host identity (host name, boot id and pid namespace) and
//!    process id. The acceptor answers with its own offer after its preamble.
//! 2. If both have rings enabled and the identities are equal, the dialler creates two
//!    rings (one per direction, named `dagger-ring-<128 random bits in hex>`, mode 0600,
//!    `O_EXCL`, each with a wake-up FIFO `/dev/shm/<name>-w`, mode 0600) and sends their names on the QUIC stream; the acceptor opens and maps
//!    them, checks them, answers with one byte, and both unlink the objects. Anything that
//!    fails on the way (no shared `/dev/shm`, another user) falls back to QUIC.
//! 3. The QUIC connection stays open as the liveness channel: when it closes, or the
//!    peer's process exits (watched through a pidfd), the ring link ends with
//!    [`NetError::Closed`](crate::NetError::Closed), after the bytes already in the ring.
//!
//! The receiver decodes the ring on its own task; when the ring is empty it waits for the
//! ring's wake-up FIFO in the tokio reactor, and the writer pokes the FIFO only when the
//! receiver said it waits (see the `link` module).
//!
//! Frames travel in the ring encoded by the [`codec`](crate::codec), so a frame larger
//! than the ring streams through it in pieces, and a malformed stream ends the link with
//! [`NetError::Protocol`](crate::NetError::Protocol) or `FrameTooLarge` like on QUIC.
//!
//! Rings are on by default; [`NetConfig::same_host_rings`](crate::NetConfig) turns them
//! off for a transport, and the environment variables `DAGGER_RINGS=0` or `DAGGER_SHM=0`
//! for a process.

pub(crate) mod link;
pub(crate) mod shm;
#[cfg(test)]
pub(crate) mod tests;

use crate::NetConfig;
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable that, set to `0`, turns the rings off in a process.
pub const RINGS_VAR: &str = "DAGGER_RINGS";
/// The environment variable that, set to `0`, turns every shared-memory path off,
/// rings included.
pub const SHM_VAR: &str = "DAGGER_SHM";
/// The environment variable giving how long (µs) a ring writer spins before it parks.
const SPIN_VAR: &str = "DAGGER_SPIN_US";
/// The spin time when [`SPIN_VAR`] is not set.
const DEFAULT_SPIN: Duration = Duration::from_micros(20);
/// The longest host identity accepted in an offer.
const MAX_HOST_ID: usize = 1024;

/// Whether links of a transport configured with `config` may use rings in this process.
pub(crate) fn enabled(config: &NetConfig) -> bool {
    let off = |var| std::env::var(var).is_ok_and(|v| v.trim() == "0");
    config.same_host_rings && !off(RINGS_VAR) && !off(SHM_VAR)
}

/// How long a ring writer waiting for room spins before it parks, from `DAGGER_SPIN_US`
/// (default 20 µs), read once per process. (The receiver never spins: it runs on an async
/// task, and a thread spinning for it would still have to wake that task.)
pub(crate) fn spin() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| {
        std::env::var(SPIN_VAR)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_micros)
            .unwrap_or(DEFAULT_SPIN)
    })
}

/// What identifies this host and its namespaces: the host name, the kernel's boot id and
/// the pid namespace, one per line; empty (no rings) when the boot id cannot be read.
fn host_id() -> &'static [u8] {
    static ID: OnceLock<Vec<u8>> = OnceLock::new();
    ID.get_or_init(|| {
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned());
        let Ok(boot) = read("/proc/sys/kernel/random/boot_id") else {
            return Vec::new();
        };
        let host = read("/proc/sys/kernel/hostname").unwrap_or_default();
        let pid_ns = std::fs::read_link("/proc/self/ns/pid")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut id = format!("{host}\n{boot}\n{pid_ns}").into_bytes();
        id.truncate(MAX_HOST_ID);
        id
    })
}

/// One side's proposal to use rings, exchanged in the QUIC handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Offer {
    /// Whether this side may use rings.
    pub(crate) enabled: bool,
    /// This side's process id (watched for the link's liveness).
    pub(crate) pid: u32,
    /// This side's host identity ([`host_id`]).
    pub(crate) host: Vec<u8>,
}

/// The fixed part of an encoded offer: flag, pid, length of the host identity.
pub(crate) const OFFER_FIXED: usize = 7;

impl Offer {
    /// This process's offer.
    pub(crate) fn local(enabled: bool) -> Offer {
        Offer {
            enabled,
            pid: std::process::id(),
            host: host_id().to_vec(),
        }
    }

    /// The wire form: enabled (u8), pid (u32 LE), host length (u16 LE), host bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let host = &self.host[..self.host.len().min(MAX_HOST_ID)];
        let mut b = Vec::with_capacity(OFFER_FIXED + host.len());
        b.push(u8::from(self.enabled));
        b.extend_from_slice(&self.pid.to_le_bytes());
        b.extend_from_slice(&(host.len() as u16).to_le_bytes());
        b.extend_from_slice(host);
        b
    }

    /// Parses the fixed part; returns the flag, the pid and how many host bytes follow.
    pub(crate) fn parse_fixed(b: [u8; OFFER_FIXED]) -> Result<(bool, u32, usize), String> {
        let enabled = match b[0] {
            0 => false,
            1 => true,
            x => return Err(format!("bad ring offer flag {x}")),
        };
        let pid = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
        let len = usize::from(u16::from_le_bytes([b[5], b[6]]));
        if len > MAX_HOST_ID {
            return Err(format!("ring offer host identity of {len} bytes"));
        }
        Ok((enabled, pid, len))
    }

    /// Whether the two sides agree on rings: both enabled, on one host.
    pub(crate) fn agrees(&self, theirs: &Offer) -> bool {
        self.enabled && theirs.enabled && !self.host.is_empty() && self.host == theirs.host
    }
}
