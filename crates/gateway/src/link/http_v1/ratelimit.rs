//! The client-side project quota (SPEC §8.4, `fcm.max_messages_per_minute`):
//! one token bucket shared by every link of the pool, so a burst from the
//! BALs does not earn 429 `QUOTA_EXCEEDED` from FCM's per-minute project
//! quota.
//!
//! The bucket holds at most `burst` = max(1, N/600) tokens (a tenth of a
//! second of sending) and refills at (N − burst)/60 per second, so no
//! window of 60 seconds — fixed or sliding — ever sees more than N sends:
//! `burst + rate × 60 = N`. A link takes tokens for as many requests as it
//! has ready ([`RateLimiter::take`]); what it could not take waits for
//! [`RateLimiter::wait`]. Time is tokio's, so tests run it under paused
//! time.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The shared bucket.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u64,
    burst: f64,
    /// Tokens per second.
    rate: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// A bucket for `per_minute` sends a minute; `None` for 0 (no limit).
    pub fn new(per_minute: u64) -> Option<RateLimiter> {
        if per_minute == 0 {
            return None;
        }
        let burst = (per_minute / 600).max(1) as f64;
        // With a quota of 1 a minute the burst is the whole quota; keep the
        // refill positive anyway.
        let rate = ((per_minute as f64 - burst).max(0.5)) / 60.0;
        Some(RateLimiter {
            per_minute,
            burst,
            rate,
            state: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
        })
    }

    /// The configured quota.
    pub fn per_minute(&self) -> u64 {
        self.per_minute
    }

    /// Takes up to `want` tokens now; returns how many it got.
    pub fn take(&self, want: usize) -> usize {
        let now = Instant::now();
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut b, now);
        let got = (b.tokens.floor() as usize).min(want);
        b.tokens -= got as f64;
        got
    }

    /// Returns `n` tokens taken and not used (a link that could not open
    /// the streams after all).
    pub fn give_back(&self, n: usize) {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        b.tokens = (b.tokens + n as f64).min(self.burst);
    }

    /// How long until the next token (zero when one is there).
    pub fn wait(&self) -> Duration {
        let now = Instant::now();
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut b, now);
        if b.tokens >= 1.0 {
            return Duration::ZERO;
        }
        // At least a millisecond: tokio's timer resolution.
        Duration::from_secs_f64((1.0 - b.tokens) / self.rate).max(Duration::from_millis(1))
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * self.rate).min(self.burst);
        b.at = now;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Sends `n` through the bucket as a link does, returning each send's
    /// time since the start.
    async fn drive(rl: &RateLimiter, n: usize) -> Vec<Duration> {
        let start = Instant::now();
        let mut times = Vec::with_capacity(n);
        while times.len() < n {
            let got = rl.take(n - times.len());
            for _ in 0..got {
                times.push(start.elapsed());
            }
            if times.len() < n {
                tokio::time::sleep(rl.wait()).await;
            }
        }
        times
    }

    #[tokio::test(start_paused = true)]
    async fn no_minute_sees_more_than_the_quota() {
        let rl = RateLimiter::new(600).unwrap();
        // Burst 1, then 599/60 per second.
        let times = drive(&rl, 1300).await;
        for (i, t) in times.iter().enumerate() {
            // Every window of 60 s holds at most 600 sends.
            let later = times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(60))
                .count();
            assert!(later <= 600, "{later} sends in the 60 s after {t:?}");
        }
        // And the bucket does not hold back more than it must: 1300 sends
        // take about 1299 / (599/60) s ≈ 130 s.
        let last = times[1299].as_secs_f64();
        assert!((129.0..=131.5).contains(&last), "{last}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_a_tenth_of_a_second() {
        let rl = RateLimiter::new(600_000).unwrap();
        assert_eq!(rl.take(5000), 1000);
        assert_eq!(rl.take(1), 0);
        let w = rl.wait();
        assert!(w > Duration::ZERO && w <= Duration::from_millis(1), "{w:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = rl.take(5000);
        assert!((990..=1000).contains(&got), "{got}");
    }

    #[test]
    fn zero_is_no_limit() {
        assert!(RateLimiter::new(0).is_none());
    }
}
