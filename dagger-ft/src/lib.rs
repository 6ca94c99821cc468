//! Fault tolerance of dagger-rs: noticing that a worker went silent, and the fault policy.
//!
//! [`FailureDetector`] is a sans-I/O heartbeat detector: the owner tells it whenever it
//! hears from a worker ([`FailureDetector::heard`], any message counts, not only
//! heartbeats), asks it for the next deadline ([`FailureDetector::poll_timeout`]) to arm a
//! timer, and, when the timer fires, collects the workers that stayed silent too long
//! ([`FailureDetector::expired`]) and reports them lost to the scheduler. Time is a
//! [`Duration`] since an arbitrary start chosen by the owner, so tests run on virtual time.
//!
//! The detector is stall-proof: when its owner saw no input at all for half the timeout or
//! longer ([`FailureDetector::observe`]), its own thread or process was stalled and the
//! workers' heartbeats may be sitting unread in socket buffers, so every watched worker is
//! granted one more heartbeat interval before it can expire.
//!
//! [`FaultPolicy`] decides what a fault means: which tasks of a lost worker run again (and
//! are watched), which are poison tasks that crash every process they run in, which have
//! spent their loss budget, and which workers are excluded because tasks keep failing there
//! and succeeding elsewhere. [`RestartBudget`] is the supervisor's restart policy.
//!
//! Recovery itself (re-running a lost worker's tasks, recomputing lost chunks from lineage,
//! fencing late messages by incarnation) lives in the scheduler, which treats a lost worker
//! like any other event and applies the policy's verdicts.
//!
//! Architecture invariant: dagger-ft never performs I/O, never spawns a thread and never
//! reads the clock.
//!
//! Not guaranteed: a worker that is merely slow (a long GC-like pause, an overloaded host)
//! looks exactly like a dead one; choose the timeout well above the heartbeat interval.

use dagger_core::{Incarnation, WorkerId};
use std::collections::BTreeMap;
use std::time::Duration;

mod policy;
mod restart;
pub use dagger_core::{LossVerdict, LostTask};
pub use policy::{Exclusion, FaultPolicy, PolicyConfig, DEFAULT_LOSS_RETRIES};
pub use restart::{RestartBudget, RestartsExhausted};

/// Declares workers lost when nothing was heard from them for longer than a timeout.
#[derive(Clone, Debug)]
pub struct FailureDetector {
    timeout: Duration,
    /// What a stall of the owner grants every watched worker.
    grace: Duration,
    /// The latest input the owner reported through [`FailureDetector::observe`].
    last_input: Option<Duration>,
    last: BTreeMap<WorkerId, (Incarnation, Duration)>,
}

impl FailureDetector {
    /// A detector with no watched workers that declares a worker lost after `timeout` of
    /// silence, and grants a quarter of it (the heartbeat interval the driver asks for)
    /// after a stall of its owner.
    pub fn new(timeout: Duration) -> Self {
        Self::with_grace(timeout, timeout / 4)
    }

    /// Like [`FailureDetector::new`], granting `grace` after a stall of the owner (at least
    /// one heartbeat interval of the workers).
    pub fn with_grace(timeout: Duration, grace: Duration) -> Self {
        Self {
            timeout,
            grace,
            last_input: None,
            last: BTreeMap::new(),
        }
    }

    /// The owner saw some input (any message from any worker, a timer, a client call) at
    /// `now`. If it saw none for half the timeout or longer before, the owner itself was
    /// stalled (its thread starved, its process paused) and the workers' messages of that
    /// time may still be unread: every watched worker then expires no earlier than one
    /// grace period from `now`. Call it before [`FailureDetector::heard`] and
    /// [`FailureDetector::expired`] for the same input. A worker that is really silent is
    /// thus declared lost at most one grace period late: right after a grace, the owner's
    /// next timer comes within the grace period, which is no stall. O(workers) after a
    /// stall, O(1) otherwise.
    pub fn observe(&mut self, now: Duration) {
        let stalled = self
            .last_input
            .is_some_and(|prev| now.saturating_sub(prev) >= self.timeout / 2);
        if stalled {
            let floor = now.saturating_add(self.grace).saturating_sub(self.timeout);
            for (_, at) in self.last.values_mut() {
                *at = (*at).max(floor);
            }
        }
        self.last_input = Some(self.last_input.map_or(now, |prev| prev.max(now)));
    }

    /// The timeout it was created with.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Records that `worker` (in `incarnation`) was heard from at `now`, and starts watching
    /// it if it was not watched. A message from an older incarnation than the one watched is
    /// ignored (it comes from a connection already replaced); a newer incarnation replaces
    /// the older one. `now` earlier than the last time heard is ignored. O(log workers).
    pub fn heard(&mut self, worker: WorkerId, incarnation: Incarnation, now: Duration) {
        match self.last.get_mut(&worker) {
            Some((inc, at)) if *inc == incarnation => *at = (*at).max(now),
            Some((inc, _)) if *inc > incarnation => {}
            _ => {
                self.last.insert(worker, (incarnation, now));
            }
        }
    }

    /// Stops watching `worker` (it left cleanly or was already declared lost another way).
    pub fn forget(&mut self, worker: WorkerId) {
        self.last.remove(&worker);
    }

    /// The earliest time at which some watched worker expires, or `None` if none is watched.
    /// Arm a timer for it and call [`FailureDetector::expired`] when it fires. O(workers).
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.last
            .values()
            .map(|(_, at)| at.saturating_add(self.timeout))
            .min()
    }

    /// The workers not heard from for the timeout or longer as of `now`, with the
    /// incarnation that went silent. They stop being watched, so each silence is reported
    /// once; hearing from the worker again watches it anew. O(workers).
    pub fn expired(&mut self, now: Duration) -> Vec<(WorkerId, Incarnation)> {
        let timeout = self.timeout;
        let mut out = Vec::new();
        self.last.retain(|&w, &mut (inc, at)| {
            let alive = now.saturating_sub(at) < timeout;
            if !alive {
                out.push((w, inc));
            }
            alive
        });
        out
    }

    /// The workers watched now, with their incarnation and when they were last heard from.
    pub fn watched(&self) -> impl Iterator<Item = (WorkerId, Incarnation, Duration)> + '_ {
        self.last.iter().map(|(&w, &(inc, at))| (w, inc, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn silence_longer_than_the_timeout_expires_once() {
        let mut d = FailureDetector::new(s(5));
        assert_eq!(d.poll_timeout(), None);
        d.heard(WorkerId(1), Incarnation(1), s(0));
        d.heard(WorkerId(2), Incarnation(1), s(2));
        assert_eq!(d.poll_timeout(), Some(s(5)));
        assert!(d.expired(s(4)).is_empty());
        d.heard(WorkerId(1), Incarnation(1), s(4));
        assert_eq!(d.poll_timeout(), Some(s(7)));
        assert!(d.expired(s(6)).is_empty());
        // At the deadline exactly, the worker has expired (a timer armed for
        // `poll_timeout` always finds something).
        assert_eq!(d.expired(s(7)), vec![(WorkerId(2), Incarnation(1))]);
        assert!(d.expired(s(8)).is_empty(), "reported once");
        assert_eq!(d.poll_timeout(), Some(s(9)));
        assert_eq!(d.expired(s(100)), vec![(WorkerId(1), Incarnation(1))]);
        assert_eq!(d.poll_timeout(), None);
    }

    #[test]
    fn incarnations_and_forget() {
        let mut d = FailureDetector::new(s(5));
        d.heard(WorkerId(1), Incarnation(2), s(10));
        // A late message of the replaced connection does not keep the new one alive.
        d.heard(WorkerId(1), Incarnation(1), s(14));
        assert_eq!(d.expired(s(16)), vec![(WorkerId(1), Incarnation(2))]);
        // A newer incarnation replaces the watched one.
        d.heard(WorkerId(1), Incarnation(2), s(20));
        d.heard(WorkerId(1), Incarnation(3), s(21));
        assert_eq!(
            d.watched().collect::<Vec<_>>(),
            vec![(WorkerId(1), Incarnation(3), s(21))]
        );
        // Time going backwards does not move the deadline back.
        d.heard(WorkerId(1), Incarnation(3), s(1));
        assert_eq!(d.poll_timeout(), Some(s(26)));
        d.forget(WorkerId(1));
        assert!(d.expired(s(1000)).is_empty());
        assert_eq!(d.poll_timeout(), None);
    }

    #[test]
    fn a_stall_of_the_owner_grants_one_interval_and_no_more() {
        let timeout = s(4);
        let mut d = FailureDetector::new(timeout);
        d.observe(s(0));
        d.heard(WorkerId(1), Incarnation(1), s(0));
        d.heard(WorkerId(2), Incarnation(1), s(0));
        // The owner stalls for 10 s: its timer fires late, before the heartbeats that
        // wait in its sockets are read. Nobody expires yet.
        d.observe(s(10));
        assert!(
            d.expired(s(10)).is_empty(),
            "a stall of the owner loses nobody"
        );
        assert_eq!(d.poll_timeout(), Some(s(11)), "one interval of grace");
        // Worker 1's heartbeats are read now; worker 2 is really gone.
        d.heard(WorkerId(1), Incarnation(1), s(10));
        d.observe(s(11));
        assert_eq!(d.expired(s(11)), vec![(WorkerId(2), Incarnation(1))]);
        // Without a stall (inputs closer than half the timeout), no grace: expiry at the
        // deadline exactly.
        let mut d = FailureDetector::new(timeout);
        d.observe(s(0));
        d.heard(WorkerId(1), Incarnation(1), s(0));
        d.observe(s(1));
        d.observe(s(2) + s(1) / 2);
        d.observe(s(4));
        assert_eq!(d.expired(s(4)), vec![(WorkerId(1), Incarnation(1))]);
    }

    #[test]
    fn a_silent_worker_is_lost_within_timeout_and_one_interval_when_nothing_else_comes() {
        // The only input is the timer: every call is a "gap" of the owner.
        let timeout = s(4);
        let mut d = FailureDetector::new(timeout);
        d.observe(s(0));
        d.heard(WorkerId(1), Incarnation(1), s(0));
        let mut lost_at = None;
        for _ in 0..10 {
            let now = d.poll_timeout().expect("watched");
            d.observe(now);
            if !d.expired(now).is_empty() {
                lost_at = Some(now);
                break;
            }
        }
        let at = lost_at.expect("lost");
        assert!(at <= timeout + timeout / 4, "lost at {at:?}");
    }

    #[test]
    fn a_virtual_clock_loop_detects_a_silent_worker_within_the_timeout() {
        // Two workers send heartbeats every second; worker 2 stops at t = 10 s.
        let timeout = s(3);
        let mut d = FailureDetector::new(timeout);
        let mut now = Duration::ZERO;
        let mut lost = None;
        for _ in 0..100 {
            if lost.is_some() {
                break;
            }
            d.heard(WorkerId(1), Incarnation(1), now);
            if now <= s(10) {
                d.heard(WorkerId(2), Incarnation(1), now);
            }
            let next_beat = now + s(1);
            let deadline = d.poll_timeout().unwrap();
            now = next_beat.min(deadline);
            for (w, _) in d.expired(now) {
                lost = Some((w, now));
            }
        }
        let (w, at) = lost.expect("worker 2 declared lost");
        assert_eq!(w, WorkerId(2));
        assert_eq!(at, s(10) + timeout, "lost exactly at the deadline");
    }
}
