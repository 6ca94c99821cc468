//! The supervisor's restart policy: how many replacements of dead local workers are allowed
//! within a sliding window of time, so that a crash loop ends instead of spinning.

use std::collections::VecDeque;
use std::time::Duration;

/// The restart budget is spent: more processes died within the window than may be
/// replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{restarts} worker restarts within {window:?}: the restart budget is spent")]
pub struct RestartsExhausted {
    /// Restarts made within the window.
    pub restarts: u32,
    /// The window.
    pub window: Duration,
}

/// Allows at most `max` restarts within any `window` of time (a sliding window, like
/// Erlang/OTP's supervisor intensity). Sans-I/O: the owner passes `now`, a [`Duration`]
/// since a start of its choosing.
///
/// The defaults (10 restarts within 60 s) replace the occasional killed worker forever,
/// and end a crash loop of a cluster of a few workers within seconds.
#[derive(Clone, Debug)]
pub struct RestartBudget {
    max: u32,
    window: Duration,
    /// When each restart within the window was made, oldest first.
    recent: VecDeque<Duration>,
}

impl Default for RestartBudget {
    fn default() -> Self {
        Self::new(10, Duration::from_secs(60))
    }
}

impl RestartBudget {
    /// At most `max` restarts within any `window`. `max == 0` never restarts.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            recent: VecDeque::new(),
        }
    }

    /// The most restarts allowed within the window.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Asks to restart a process at `now`. Granted (returning how many restarts the window
    /// now holds, this one included) while fewer than `max` were made within the window
    /// ending at `now`; the grant is recorded. Refused otherwise, and nothing is recorded.
    /// A `now` earlier than an earlier call's is treated as that call's. O(1) amortized.
    pub fn try_restart(&mut self, now: Duration) -> Result<u32, RestartsExhausted> {
        let now = self.recent.back().map_or(now, |&last| now.max(last));
        while let Some(&oldest) = self.recent.front() {
            if now.saturating_sub(oldest) >= self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() as u64 >= u64::from(self.max) {
            return Err(RestartsExhausted {
                restarts: self.recent.len() as u32,
                window: self.window,
            });
        }
        self.recent.push_back(now);
        Ok(self.recent.len() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_crash_loop_is_refused_and_the_window_slides() {
        let mut b = RestartBudget::new(3, s(10));
        assert_eq!(b.try_restart(s(0)), Ok(1));
        assert_eq!(b.try_restart(s(1)), Ok(2));
        assert_eq!(b.try_restart(s(2)), Ok(3));
        let refused = RestartsExhausted {
            restarts: 3,
            window: s(10),
        };
        assert_eq!(b.try_restart(s(3)), Err(refused));
        assert_eq!(
            b.try_restart(s(9)),
            Err(refused),
            "refusals are not recorded"
        );
        // The restart at 0 s leaves the window at 10 s.
        assert_eq!(b.try_restart(s(10)), Ok(3));
        assert_eq!(b.try_restart(s(10)), Err(refused));
        // Long after, the whole budget is back.
        assert_eq!(b.try_restart(s(100)), Ok(1));
    }

    #[test]
    fn zero_never_restarts_and_time_going_back_is_harmless() {
        let mut none = RestartBudget::new(0, s(10));
        assert!(none.try_restart(s(0)).is_err());
        let mut b = RestartBudget::new(2, s(10));
        assert_eq!(b.try_restart(s(50)), Ok(1));
        assert_eq!(b.try_restart(s(1)), Ok(2), "an earlier now counts as 50 s");
        assert!(b.try_restart(s(59)).is_err());
        assert_eq!(b.try_restart(s(60)), Ok(1));
    }
}
