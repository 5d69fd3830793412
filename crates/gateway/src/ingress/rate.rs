//! `per_client_per_minute` (SPEC §10): a token bucket per client — the
//! `from` of a post, within its session — holding up to a minute's worth of
//! requests and refilled continuously; an empty bucket means 429 with
//! `Retry-After` (when the next token arrives).
//!
//! Checked after authentication, so that nobody can drain a device's bucket
//! by posting in its name without credentials. Memory is bounded: at most
//! [`MAX_CLIENTS`] buckets; when full, buckets that have refilled completely
//! (equivalent to absent) are dropped, and if that frees nothing every
//! bucket is dropped — under a flood of more than `MAX_CLIENTS` distinct
//! authenticated clients a minute, limiting degrades to a fresh start rather
//! than to unbounded memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Most buckets kept.
pub const MAX_CLIENTS: usize = 65_536;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per (session, client).
pub struct RateLimiter {
    capacity: f64,
    per_sec: f64,
    max_clients: usize,
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_minute", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// `per_minute` requests a minute per client (also the burst).
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter::with_max_clients(per_minute, MAX_CLIENTS)
    }

    fn with_max_clients(per_minute: u32, max_clients: usize) -> RateLimiter {
        let capacity = f64::from(per_minute.max(1));
        RateLimiter {
            capacity,
            per_sec: capacity / 60.0,
            max_clients,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `from` in `session` at `now`; when there is none,
    /// `Err(wait)`: the time until there is one (at least a second, as
    /// `Retry-After` counts whole seconds).
    pub fn take(&self, session: &str, from: &str, now: Instant) -> Result<(), Duration> {
        let mut map = match self.buckets.lock() {
            Ok(m) => m,
            // A panic elsewhere while holding the lock: the buckets are
            // still consistent numbers.
            Err(p) => p.into_inner(),
        };
        if map.len() >= self.max_clients {
            let (cap, rate) = (self.capacity, self.per_sec);
            map.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < cap
            });
            if map.len() >= self.max_clients {
                map.clear();
            }
        }
        let key = (session.to_string(), from.to_string());
        let b = map.entry(key).or_insert(Bucket {
            tokens: self.capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.capacity);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let secs = ((1.0 - b.tokens) / self.per_sec).ceil().max(1.0);
            Err(Duration::from_secs_f64(secs))
        }
    }

    /// Buckets held (tests, metrics).
    pub fn clients(&self) -> usize {
        self.buckets.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_of_burst_then_the_refill_rate() {
        let r = RateLimiter::new(60);
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(r.take("s", "dev", t0).is_ok());
        }
        assert_eq!(r.take("s", "dev", t0), Err(Duration::from_secs(1)));
        // Other clients and other sessions have their own buckets.
        assert!(r.take("s", "other", t0).is_ok());
        assert!(r.take("s2", "dev", t0).is_ok());
        // One per second comes back.
        let t1 = t0 + Duration::from_millis(1000);
        assert!(r.take("s", "dev", t1).is_ok());
        assert!(r.take("s", "dev", t1).is_err());
        let r = RateLimiter::new(6);
        for _ in 0..6 {
            r.take("s", "d", t0).unwrap();
        }
        assert_eq!(r.take("s", "d", t0), Err(Duration::from_secs(10)));
    }

    #[test]
    fn memory_is_bounded() {
        let r = RateLimiter::with_max_clients(10, 100);
        let t0 = Instant::now();
        for i in 0..1000 {
            r.take("s", &format!("d{i}"), t0).unwrap();
            assert!(r.clients() <= 100);
        }
        // Idle buckets (full again) go first; active ones are kept.
        let r = RateLimiter::with_max_clients(10, 3);
        for _ in 0..10 {
            r.take("s", "busy", t0).unwrap();
        }
        r.take("s", "idle", t0).unwrap();
        let later = t0 + Duration::from_secs(50);
        r.take("s", "x", later).unwrap();
        r.take("s", "y", later).unwrap();
        assert_eq!(r.clients(), 3);
        assert!(r.take("s", "busy", later).is_ok(), "refilled ~8 of 10");
    }
}
