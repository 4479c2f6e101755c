//! The retry policy, as a pure function: (failures so far, outcome, age, Retry-After,
//! jitter draw) → deliver again after a delay, or give up.
//!
//! No I/O, no clock, no randomness in here: the caller passes the age and a jitter draw in
//! `[-1, 1]`, so every branch is unit-tested. Per the contract *anything* that is not a 2xx
//! (including 4xx) and every timeout or connection error is retried; only failures that can
//! never succeed on retry (a template that does not render, a channel this build cannot
//! send) are permanent.

use std::time::Duration;

/// Jitter applied to every scheduled delay: ±20%.
pub const JITTER: f64 = 0.2;

/// What one attempt came to, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx: done.
    Delivered,
    /// Non-2xx status, timeout, connection or address-policy error: try again later.
    Retriable,
    /// Can never succeed by retrying the same request.
    Permanent,
}

/// Classifies an HTTP status: any 2xx is success, anything else is retried (contract).
pub fn classify_status(status: u16) -> Outcome {
    if (200..300).contains(&status) {
        Outcome::Delivered
    } else {
        Outcome::Retriable
    }
}

/// What to do next with a delivery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Succeeded,
    RetryIn(Duration),
    Dead,
}

/// The configured schedule and age limit.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Delay before retry n (1-based); the last entry repeats.
    pub schedule: Vec<Duration>,
    /// Give up once a delivery has been retried for this long.
    pub max_age: Duration,
}

impl Policy {
    /// Decides after an attempt.
    ///
    /// * `failures`: failed attempts so far *including* this one (≥ 1 when not delivered).
    /// * `age`: time since the delivery (or its manual retry) was first queued.
    /// * `retry_after`: the receiver's `Retry-After`, honoured (capped at the schedule's
    ///   longest delay) when longer than the scheduled delay.
    /// * `jitter`: a draw in `[-1, 1]`, scaled to ±[`JITTER`].
    ///
    /// A retry never goes past `max_age`: the last one is pulled in to the deadline, and at
    /// or after the deadline the delivery is dead.
    pub fn decide(
        &self,
        outcome: Outcome,
        failures: u32,
        age: Duration,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Decision {
        match outcome {
            Outcome::Delivered => return Decision::Succeeded,
            Outcome::Permanent => return Decision::Dead,
            Outcome::Retriable => {}
        }
        if age >= self.max_age || self.schedule.is_empty() {
            return Decision::Dead;
        }
        let idx = (failures.max(1) as usize - 1).min(self.schedule.len() - 1);
        let base = self.schedule[idx];
        let factor = 1.0 + JITTER * jitter.clamp(-1.0, 1.0);
        let mut delay = base.mul_f64(factor);
        if let Some(ra) = retry_after {
            let cap = self.schedule.iter().max().copied().unwrap_or(base);
            delay = delay.max(ra.min(cap));
        }
        let remaining = self.max_age - age;
        Decision::RetryIn(delay.min(remaining))
    }
}

impl Policy {
    /// How long a channel that answered 429 is left alone: its `Retry-After`, else the
    /// schedule's first delay, at most the schedule's longest (as [`Policy::decide`] caps).
    pub fn hold_after_429(&self, retry_after: Option<Duration>) -> Duration {
        let first = self.schedule.first().copied().unwrap_or(Duration::from_secs(1));
        let cap = self.schedule.iter().max().copied().unwrap_or(first);
        retry_after.unwrap_or(first).min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            schedule: [5, 300, 1800].iter().map(|s| Duration::from_secs(*s)).collect(),
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(classify_status(200), Outcome::Delivered);
        assert_eq!(classify_status(204), Outcome::Delivered);
        assert_eq!(classify_status(299), Outcome::Delivered);
        for s in [301, 400, 404, 410, 429, 500, 503] {
            assert_eq!(classify_status(s), Outcome::Retriable, "{s}");
        }
    }

    #[test]
    fn follows_schedule_and_repeats_last() {
        let p = policy();
        let z = Duration::ZERO;
        assert_eq!(p.decide(Outcome::Retriable, 1, z, None, 0.0), Decision::RetryIn(Duration::from_secs(5)));
        assert_eq!(p.decide(Outcome::Retriable, 2, z, None, 0.0), Decision::RetryIn(Duration::from_secs(300)));
        assert_eq!(p.decide(Outcome::Retriable, 3, z, None, 0.0), Decision::RetryIn(Duration::from_secs(1800)));
        assert_eq!(p.decide(Outcome::Retriable, 9, z, None, 0.0), Decision::RetryIn(Duration::from_secs(1800)));
    }

    #[test]
    fn jitter_is_bounded_to_20_percent() {
        let p = policy();
        let lo = p.decide(Outcome::Retriable, 2, Duration::ZERO, None, -1.0);
        let hi = p.decide(Outcome::Retriable, 2, Duration::ZERO, None, 1.0);
        assert_eq!(lo, Decision::RetryIn(Duration::from_secs(240)));
        assert_eq!(hi, Decision::RetryIn(Duration::from_secs(360)));
        // Out-of-range draws are clamped.
        assert_eq!(p.decide(Outcome::Retriable, 2, Duration::ZERO, None, 7.0), hi);
    }

    #[test]
    fn success_and_permanent() {
        let p = policy();
        assert_eq!(p.decide(Outcome::Delivered, 0, Duration::ZERO, None, 0.0), Decision::Succeeded);
        assert_eq!(p.decide(Outcome::Permanent, 1, Duration::ZERO, None, 0.0), Decision::Dead);
    }

    #[test]
    fn max_age_caps_and_kills() {
        let p = policy();
        // 10 s before the deadline, a 30 min retry is pulled in to the deadline.
        let d = p.decide(Outcome::Retriable, 3, Duration::from_secs(3590), None, 0.0);
        assert_eq!(d, Decision::RetryIn(Duration::from_secs(10)));
        assert_eq!(p.decide(Outcome::Retriable, 3, Duration::from_secs(3600), None, 0.0), Decision::Dead);
        assert_eq!(p.decide(Outcome::Retriable, 1, Duration::from_secs(9999), None, 0.0), Decision::Dead);
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let p = policy();
        let d = p.decide(Outcome::Retriable, 1, Duration::ZERO, Some(Duration::from_secs(60)), 0.0);
        assert_eq!(d, Decision::RetryIn(Duration::from_secs(60)));
        let d = p.decide(Outcome::Retriable, 1, Duration::ZERO, Some(Duration::from_secs(99_999)), 0.0);
        assert_eq!(d, Decision::RetryIn(Duration::from_secs(1800)));
        // Shorter than the schedule: the schedule wins.
        let d = p.decide(Outcome::Retriable, 2, Duration::ZERO, Some(Duration::from_secs(1)), 0.0);
        assert_eq!(d, Decision::RetryIn(Duration::from_secs(300)));
    }
}
