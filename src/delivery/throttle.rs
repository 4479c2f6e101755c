//! Per-channel pacing after a receiver answers 429 (rate limited).
//!
//! Why: Slack allows about one message per second per incoming webhook, and a burst of
//! events to one channel used to keep sending to a URL that had just said "slow down": every
//! delivery got its own 429, climbed the retry schedule (5 s, 300 s, 1800 s…), and a burst of
//! 20 took 40 minutes. Now a 429 *holds* the channel (no send to it) for its `Retry-After`
//! (or the schedule's first delay when there is none; at least [`MIN_HOLD`]), and the channel
//! is then *paced*: one send at a time, each a little more than that after the previous one,
//! until [`PACED_FOR`] passes after the hold without another 429. Against Slack's one message per second that is
//! one send per second, not a 429 every other send. Deliveries that wait here make no attempt
//! and lose nothing: they stay in the worker's queue (and in the store).
//!
//! This module only decides which deliveries may go; the worker owns the queue and the
//! sends. A delivery waiting here is in exactly one place of the worker's bookkeeping (a
//! channel's backlog below), and the worker's usual checks (still queued, not in flight, due)
//! apply again when it is released, so a stale entry is harmless.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use crate::ids::DeliveryId;

/// How long a channel stays paced (one send at a time) after its last 429's hold ends.
pub const PACED_FOR: Duration = Duration::from_secs(60);

/// The shortest hold and spacing (a `Retry-After: 0` would otherwise mean none at all).
pub const MIN_HOLD: Duration = Duration::from_secs(1);

#[derive(Default)]
struct ChannelThrottle {
    /// No send to the channel before this (ms since the epoch): the 429's hold, then the
    /// spacing after each paced send.
    hold_until_ms: u64,
    /// A little more than the last hold's length: the least time between two paced sends
    /// (a send leaves a few ms after it is released, so exactly the hold could land two
    /// sends inside one rate-limit window).
    spacing_ms: u64,
    /// Paced until this: [`PACED_FOR`] after the last 429's hold ends.
    paced_until_ms: u64,
    /// Deliveries that were ready while the channel was held or busy, in order.
    backlog: VecDeque<DeliveryId>,
}

impl ChannelThrottle {
    fn held(&self, now: u64) -> bool {
        now < self.hold_until_ms
    }

    fn paced(&self, now: u64) -> bool {
        now < self.paced_until_ms
    }

    /// When the next paced send may go after one at `now`: the spacing, but never past the
    /// pacing's end (a long `Retry-After` makes a spacing longer than the minute of pacing,
    /// which would hold the backlog a second time after it).
    fn next_send(&self, now: u64) -> u64 {
        (now + self.spacing_ms).min(self.paced_until_ms)
    }
}

/// The throttled channels of one webhook, by channel ID (usually none).
#[derive(Default)]
pub struct Throttles {
    channels: HashMap<String, ChannelThrottle>,
    /// Released by [`Throttles::releasable`] and not yet admitted: they skip the line once.
    passes: HashSet<DeliveryId>,
}

impl Throttles {
    /// The channel answered 429: hold it for `hold` from `now`, then pace it.
    pub fn on_429(&mut self, channel: &str, now: u64, hold: Duration) {
        let t = self.channels.entry(channel.to_string()).or_default();
        let hold = hold.max(MIN_HOLD).as_millis() as u64;
        t.hold_until_ms = t.hold_until_ms.max(now + hold);
        t.spacing_ms = hold + hold / 20;
        t.paced_until_ms = t.paced_until_ms.max(t.hold_until_ms + PACED_FOR.as_millis() as u64);
    }

    /// Whether a ready delivery to `channel` may be sent now; if not, it waits in the
    /// channel's backlog. `in_flight_on` counts the channel's sends in flight (asked only
    /// for a paced channel).
    pub fn admit(&mut self, channel: &str, id: &DeliveryId, now: u64, in_flight_on: impl FnOnce() -> usize) -> bool {
        if self.passes.remove(id) {
            return true;
        }
        let Some(t) = self.channels.get_mut(channel) else { return true };
        let wait = t.held(now) || (t.paced(now) && (!t.backlog.is_empty() || in_flight_on() > 0));
        if wait {
            // Once: a delivery queued twice (a manual retry of one still ready) would be
            // released twice, the stale release using up a spacing with no send.
            if !t.backlog.contains(id) {
                t.backlog.push_back(id.clone());
            }
        } else if t.paced(now) {
            t.hold_until_ms = t.next_send(now);
        }
        !wait
    }

    /// Deliveries that may go now, oldest first: one per paced channel that is neither held
    /// nor busy, the whole backlog of a channel whose pacing is over. Each gets a pass that
    /// [`Throttles::admit`] honours once, until [`Throttles::end_round`]. Channels left with
    /// nothing to remember are dropped.
    pub fn releasable(&mut self, now: u64, in_flight_on: impl Fn(&str) -> usize) -> Vec<DeliveryId> {
        self.passes.clear();
        let mut out = Vec::new();
        for (channel, t) in self.channels.iter_mut() {
            if t.held(now) || t.backlog.is_empty() {
                continue;
            }
            if !t.paced(now) {
                out.extend(t.backlog.drain(..));
            } else if in_flight_on(channel) == 0 {
                out.extend(t.backlog.pop_front());
                t.hold_until_ms = t.next_send(now);
            }
        }
        self.channels.retain(|_, t| t.paced(now) || !t.backlog.is_empty());
        self.passes.extend(out.iter().cloned());
        out
    }

    /// The worker's round of sends is over: passes not used by now are void (a released
    /// delivery that could not go meanwhile queues again like any other).
    pub fn end_round(&mut self) {
        self.passes.clear();
    }

    /// When the earliest hold (or spacing) still ahead of `now` with deliveries waiting ends
    /// (the worker's timer). A paced channel past it waits for its send in flight instead:
    /// that send's outcome releases the next one (a timer then would fire at once, again
    /// and again).
    pub fn next_wake(&self, now: u64) -> Option<u64> {
        self.channels.values().filter(|t| !t.backlog.is_empty() && t.held(now)).map(|t| t.hold_until_ms).min()
    }

    /// Channels a PATCH removed (their deliveries are buried by the worker).
    pub fn forget(&mut self, channels: &[String]) {
        // Their waiting deliveries are the burial's, not sent.
        let _buried = self.release(channels);
    }

    /// Channels a PATCH pointed at another destination (a new URL): the old receiver's hold
    /// and pacing say nothing of the new one. Returns their waiting deliveries, to go now.
    pub fn release(&mut self, channels: &[String]) -> Vec<DeliveryId> {
        let mut out = Vec::new();
        for c in channels {
            if let Some(t) = self.channels.remove(c) {
                out.extend(t.backlog);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Whether `id` waits in a channel's backlog.
    pub fn holds(&self, id: &DeliveryId) -> bool {
        self.channels.values().any(|t| t.backlog.contains(id))
    }

    /// How many deliveries wait in backlogs (for tests and logs).
    pub fn waiting(&self) -> usize {
        self.channels.values().map(|t| t.backlog.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> DeliveryId {
        DeliveryId::parse(&format!("del_{n}")).unwrap()
    }

    #[test]
    fn a_channel_without_a_429_is_never_held() {
        let mut t = Throttles::default();
        assert!(t.admit("c", &id(1), 0, || 5));
        assert!(t.is_empty() && t.next_wake(0).is_none());
    }

    #[test]
    fn a_429_holds_then_paces_one_at_a_time() {
        let mut t = Throttles::default();
        t.on_429("c", 1_000, Duration::from_secs(2));
        // Held: everything waits, in order; another channel is not affected.
        assert!(!t.admit("c", &id(1), 1_500, || 0));
        assert!(!t.admit("c", &id(2), 1_600, || 0));
        assert!(t.admit("other", &id(9), 1_600, || 0));
        assert_eq!(t.next_wake(1_600), Some(3_000));
        assert!(t.releasable(2_999, |_| 0).is_empty(), "still held");
        assert_eq!(t.next_wake(3_000), None, "past the hold, a release (not a timer) comes next");
        // Hold over: one at a time while paced, each a hold's length after the previous one.
        assert_eq!(t.releasable(3_000, |_| 0), vec![id(1)]);
        assert!(t.admit("c", &id(1), 3_000, || 0), "a released delivery goes, backlog or not");
        t.end_round();
        assert!(t.releasable(5_100, |_| 1).is_empty(), "one in flight: the next waits");
        assert!(!t.admit("c", &id(3), 5_100, || 1), "a new one queues behind the backlog");
        assert!(t.releasable(5_099, |_| 0).is_empty(), "sent at 3 s with a 2.1 s spacing");
        assert_eq!(t.next_wake(4_000), Some(5_100));
        assert_eq!(t.releasable(5_100, |_| 0), vec![id(2)]);
        // Paced for a minute after the hold (not after the 429: a long Retry-After would
        // leave no pacing at all); then the rest goes at once, and the channel is forgotten.
        let later = 3_000 + PACED_FOR.as_millis() as u64;
        assert!(t.releasable(later - 1, |_| 1).is_empty(), "still paced, one in flight");
        assert_eq!(t.releasable(later, |_| 1), vec![id(3)]);
        assert!(t.is_empty());
        assert!(t.admit("c", &id(4), later, || 3));
    }

    #[test]
    fn a_zero_retry_after_still_holds_and_spaces() {
        let mut t = Throttles::default();
        t.on_429("c", 0, Duration::ZERO);
        assert!(!t.admit("c", &id(1), 999, || 0));
        assert_eq!(t.releasable(1_000, |_| 0), vec![id(1)]);
        assert!(t.admit("c", &id(1), 1_000, || 0));
        assert!(!t.admit("c", &id(2), 2_000, || 0), "spaced by a little over the minimum hold");
        assert!(t.releasable(2_049, |_| 0).is_empty());
        assert_eq!(t.releasable(2_050, |_| 0), vec![id(2)]);
    }

    /// After the hold, one send at a time until a minute passes after it, then the rest at
    /// once: with a long Retry-After (600 s here; Twilio, GitHub and others send minutes) the
    /// spacing (630 s) ends with the pacing, not a second full hold later.
    #[test]
    fn a_long_hold_does_not_hold_the_backlog_a_second_time() {
        let mut t = Throttles::default();
        t.on_429("c", 0, Duration::from_secs(600));
        for n in 1..=3 {
            assert!(!t.admit("c", &id(n), 1_000, || 0));
        }
        // Hold over: one goes.
        assert_eq!(t.releasable(600_000, |_| 0), vec![id(1)]);
        assert!(t.admit("c", &id(1), 600_000, || 0));
        t.end_round();
        // It answered 2xx at once. A minute after the hold, pacing is over: the rest goes.
        let after_pacing = 600_000 + PACED_FOR.as_millis() as u64 + 1_000;
        assert_eq!(
            t.releasable(after_pacing, |_| 0),
            vec![id(2), id(3)],
            "pacing ended at {} ms, but the backlog is held until {} ms (next_wake {:?})",
            600_000 + PACED_FOR.as_millis() as u64,
            600_000 + 630_000,
            t.next_wake(after_pacing)
        );
    }

    #[test]
    fn a_later_429_extends_the_hold_and_removed_channels_are_forgotten() {
        let mut t = Throttles::default();
        t.on_429("c", 0, Duration::from_secs(5));
        t.on_429("c", 1_000, Duration::from_secs(1));
        assert!(!t.admit("c", &id(1), 4_000, || 0), "the longer hold stands");
        assert_eq!(t.waiting(), 1);
        t.forget(&["c".to_string()]);
        assert!(t.is_empty() && t.waiting() == 0);
    }
}
