//! Exponential backoff with full jitter (the `backoff` crate is unmaintained).
//!
//! The n-th delay is drawn uniformly from `[base/2, base]` where
//! `base = min(initial * 2^n, max)`: it doubles as FCM asks (table 4,
//! SERVICE_UNAVAILABLE) while the random half keeps many messages from
//! retrying in lockstep.

use rand::Rng;
use std::time::Duration;

/// A backoff sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `initial`, never above `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The un-jittered ceiling for attempt `n` (0-based).
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u64.checked_shl(n.min(40)).unwrap_or(u64::MAX);
        let ms = (self.initial.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms).min(self.max)
    }

    /// The delay for attempt `n` with jitter in `[ceiling/2, ceiling]`.
    pub fn delay(&self, n: u32) -> Duration {
        self.delay_with(n, &mut rand::rng())
    }

    /// [`Backoff::delay`] with the jitter drawn from `rng` (the engine core
    /// uses a seeded one, so its tests are repeatable).
    pub fn delay_with(&self, n: u32, rng: &mut impl Rng) -> Duration {
        let c = self.ceiling(n);
        let ms = c.as_millis() as u64;
        if ms < 2 {
            return c;
        }
        Duration::from_millis(rng.random_range(ms / 2..=ms))
    }

    /// The next delay of this sequence.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    /// [`Backoff::next_delay`] with the jitter drawn from `rng`.
    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let d = self.delay_with(self.attempt, rng);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Starts over.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_jitters() {
        let b = Backoff::new(Duration::from_millis(1000), Duration::from_millis(10_000));
        assert_eq!(b.ceiling(0), Duration::from_millis(1000));
        assert_eq!(b.ceiling(1), Duration::from_millis(2000));
        assert_eq!(b.ceiling(3), Duration::from_millis(8000));
        assert_eq!(b.ceiling(4), Duration::from_millis(10_000));
        assert_eq!(b.ceiling(200), Duration::from_millis(10_000));
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = b.delay(2);
            assert!(d >= Duration::from_millis(2000) && d <= Duration::from_millis(4000));
            distinct.insert(d);
        }
        assert!(distinct.len() > 10, "no jitter");
    }

    #[test]
    fn sequence_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(1000));
        assert!(b.next_delay() <= Duration::from_millis(10));
        assert!(b.next_delay() <= Duration::from_millis(20));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }
}
