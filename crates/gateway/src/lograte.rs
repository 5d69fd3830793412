//! Repeated warnings, rate-limited (SPEC §11 "Input hygiene"): a warning
//! that the outside world can make gimmm repeat (unroutable upstream, a
//! flood of refused connections, garbage from a peer) is logged at most once
//! per interval, with the number of repeats that were left out — so a
//! misbehaving client cannot fill the disk with log lines or drown the
//! other messages.
//!
//! Time comes in as milliseconds, so the engine core (fake clock) and
//! async tasks (tokio's clock) can both use it.

/// One rate-limited warning.
#[derive(Debug, Clone)]
pub struct LogLimit {
    every_ms: i64,
    next_ms: Option<i64>,
    suppressed: u64,
}

impl LogLimit {
    /// At most one line per `every_ms`.
    pub const fn new(every_ms: i64) -> LogLimit {
        LogLimit {
            every_ms,
            next_ms: None,
            suppressed: 0,
        }
    }

    /// `Some(left_out)` when the warning may be logged now (`left_out`:
    /// how many were suppressed since the last line); `None` when it is
    /// suppressed.
    pub fn allow(&mut self, now_ms: i64) -> Option<u64> {
        match self.next_ms {
            Some(next) if now_ms < next => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.next_ms = Some(now_ms + self.every_ms);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Milliseconds on tokio's clock (for tasks outside the engine core).
pub fn tokio_ms() -> i64 {
    use std::sync::OnceLock;
    static START: OnceLock<tokio::time::Instant> = OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now()
        .saturating_duration_since(start)
        .as_millis() as i64
}

/// How often a repeated warning may be logged.
pub const WARN_EVERY_MS: i64 = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_interval_with_the_count_left_out() {
        let mut l = LogLimit::new(1_000);
        assert_eq!(l.allow(0), Some(0));
        assert_eq!(l.allow(1), None);
        assert_eq!(l.allow(999), None);
        assert_eq!(l.allow(1_000), Some(2));
        assert_eq!(l.allow(5_000), Some(0));
    }
}
