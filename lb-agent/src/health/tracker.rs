//! Rise/fall counting for one backend, after HAProxy's `check rise N fall M`:
//! a down backend needs `rise` consecutive successes to come up, an up one
//! `fall` consecutive failures to go down, so single blips change nothing.
//! Time is passed in, so tests run without sleeping.

use std::time::{Duration, Instant};

/// A change of health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub up: bool,
}

#[derive(Debug, Clone)]
pub struct HealthTracker {
    up: bool,
    rise: u32,
    fall: u32,
    ok_streak: u32,
    fail_streak: u32,
    changed_at: Instant,
    /// Number of transitions since the agent started.
    pub transitions: u64,
    /// Whether any check has completed yet.
    pub checked: bool,
}

impl HealthTracker {
    pub fn new(start_up: bool, rise: u32, fall: u32, now: Instant) -> Self {
        Self {
            up: start_up,
            rise: rise.max(1),
            fall: fall.max(1),
            ok_streak: 0,
            fail_streak: 0,
            changed_at: now,
            transitions: 0,
            checked: false,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// New rise/fall counts (a reload); the state and streaks stay.
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    pub fn changed_at(&self) -> Instant {
        self.changed_at
    }

    /// Records one check result; returns the transition it caused, if any.
    pub fn observe(&mut self, ok: bool, now: Instant) -> Option<Transition> {
        self.checked = true;
        if ok {
            self.ok_streak = self.ok_streak.saturating_add(1);
            self.fail_streak = 0;
            if !self.up && self.ok_streak >= self.rise {
                return Some(self.flip(true, now));
            }
        } else {
            self.fail_streak = self.fail_streak.saturating_add(1);
            self.ok_streak = 0;
            if self.up && self.fail_streak >= self.fall {
                return Some(self.flip(false, now));
            }
        }
        None
    }

    fn flip(&mut self, up: bool, now: Instant) -> Transition {
        self.up = up;
        self.changed_at = now;
        self.transitions += 1;
        Transition { up }
    }

    /// Weight to schedule with: while an up backend is in its slow start,
    /// the weight ramps linearly from 1 to `weight` over `slow_start`.
    pub fn effective_weight(&self, weight: u32, slow_start: Duration, now: Instant) -> u32 {
        if !self.up || slow_start.is_zero() || self.transitions == 0 {
            return weight;
        }
        let elapsed = now.saturating_duration_since(self.changed_at);
        if elapsed >= slow_start {
            return weight;
        }
        let scaled = (u128::from(weight) * elapsed.as_millis()) / slow_start.as_millis().max(1);
        (scaled as u32).clamp(1, weight)
    }

    /// Whether the weight is still ramping (the agent re-applies until not).
    pub fn in_slow_start(&self, slow_start: Duration, now: Instant) -> bool {
        self.up
            && self.transitions > 0
            && !slow_start.is_zero()
            && now.saturating_duration_since(self.changed_at) < slow_start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    #[test]
    fn fall_and_rise_need_consecutive_results() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(true, 2, 3, t0);
        assert_eq!(h.observe(false, at(t0, 1)), None);
        assert_eq!(h.observe(false, at(t0, 2)), None);
        assert_eq!(
            h.observe(true, at(t0, 3)),
            None,
            "a success resets the fall count"
        );
        assert_eq!(h.observe(false, at(t0, 4)), None);
        assert_eq!(h.observe(false, at(t0, 5)), None);
        assert_eq!(h.observe(false, at(t0, 6)), Some(Transition { up: false }));
        assert!(!h.is_up());
        assert_eq!(h.changed_at(), at(t0, 6));
        assert_eq!(h.observe(true, at(t0, 7)), None);
        assert_eq!(
            h.observe(false, at(t0, 8)),
            None,
            "a failure resets the rise count"
        );
        assert_eq!(h.observe(true, at(t0, 9)), None);
        assert_eq!(h.observe(true, at(t0, 10)), Some(Transition { up: true }));
        assert_eq!(h.transitions, 2);
    }

    #[test]
    fn start_as_down_needs_rise_successes() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(false, 2, 3, t0);
        assert!(!h.is_up());
        assert!(!h.checked);
        assert_eq!(h.observe(true, t0), None);
        assert_eq!(h.observe(true, t0), Some(Transition { up: true }));
    }

    #[test]
    fn flapping_every_other_check_never_toggles() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(true, 2, 3, t0);
        for i in 0..1000 {
            assert_eq!(h.observe(i % 2 == 0, at(t0, i)), None, "check {i}");
        }
        // Two failures then one success, forever: still never three in a row.
        for i in 0..999u64 {
            assert_eq!(h.observe(i % 3 == 0, at(t0, 1000 + i)), None);
        }
        assert!(h.is_up());
        assert_eq!(h.transitions, 0);
    }

    #[test]
    fn slow_start_ramps_the_weight() {
        let t0 = Instant::now();
        let mut h = HealthTracker::new(true, 1, 1, t0);
        let ramp = Duration::from_secs(10);
        assert_eq!(
            h.effective_weight(10, ramp, t0),
            10,
            "no ramp at agent start"
        );
        h.observe(false, at(t0, 1));
        h.observe(true, at(t0, 2));
        assert_eq!(h.effective_weight(10, ramp, at(t0, 2)), 1, "starts at 1");
        assert_eq!(h.effective_weight(10, ramp, at(t0, 7)), 5, "half way");
        assert!(h.in_slow_start(ramp, at(t0, 7)));
        assert_eq!(
            h.effective_weight(10, ramp, at(t0, 12)),
            10,
            "full after the ramp"
        );
        assert!(!h.in_slow_start(ramp, at(t0, 12)));
        assert_eq!(h.effective_weight(10, Duration::ZERO, at(t0, 2)), 10);
    }
}
