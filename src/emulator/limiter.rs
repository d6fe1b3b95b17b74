//! The per-team limit on executing push jobs: a sliding one-second window and a count per UTC clock hour.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

const HOUR_MS: u64 = 3_600_000;
const SECOND: Duration = Duration::from_secs(1);

/// Counts job submissions; a limit of 0 means unlimited.
#[derive(Debug)]
pub(super) struct RateLimiter {
    per_second: u32,
    per_hour: u32,
    recent: VecDeque<Instant>,
    hour: u64,
    hour_count: u32,
}

impl RateLimiter {
    pub(super) fn new(per_second: u32, per_hour: u32) -> RateLimiter {
        RateLimiter {
            per_second,
            per_hour,
            recent: VecDeque::new(),
            hour: 0,
            hour_count: 0,
        }
    }

    /// Records one submission at `now` (wall clock `unix_ms`), or says how long until one would fit.
    pub(super) fn try_acquire(&mut self, now: Instant, unix_ms: u64) -> Result<(), Duration> {
        while let Some(&oldest) = self.recent.front() {
            if now.saturating_duration_since(oldest) >= SECOND {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        let hour = unix_ms / HOUR_MS;
        if hour != self.hour {
            self.hour = hour;
            self.hour_count = 0;
        }
        if self.per_hour > 0 && self.hour_count >= self.per_hour {
            return Err(Duration::from_millis((hour + 1) * HOUR_MS - unix_ms));
        }
        if self.per_second > 0 && self.recent.len() >= self.per_second as usize {
            let oldest = self.recent.front().copied().unwrap_or(now);
            return Err(SECOND.saturating_sub(now.saturating_duration_since(oldest)));
        }
        self.recent.push_back(now);
        if self.per_second > 0 && self.recent.len() > self.per_second as usize {
            self.recent.pop_front();
        }
        self.hour_count += 1;
        Ok(())
    }
}

/// A wait as a `Retry-After` value: whole seconds, rounded up, at least 1.
pub(super) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: u64 = 1_700_000_000_000 / HOUR_MS * HOUR_MS;

    #[test]
    fn the_second_window_slides() {
        let mut limiter = RateLimiter::new(2, 0);
        let t0 = Instant::now();
        assert!(limiter.try_acquire(t0, NOON).is_ok());
        assert!(
            limiter
                .try_acquire(t0 + Duration::from_millis(500), NOON)
                .is_ok()
        );
        let wait = limiter
            .try_acquire(t0 + Duration::from_millis(900), NOON)
            .unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(limiter.try_acquire(t0 + SECOND, NOON).is_ok());
        assert!(
            limiter
                .try_acquire(t0 + Duration::from_millis(1_100), NOON)
                .is_err()
        );
        assert!(
            limiter
                .try_acquire(t0 + Duration::from_millis(1_500), NOON)
                .is_ok()
        );
    }

    #[test]
    fn the_hour_window_resets_at_the_full_utc_hour() {
        let mut limiter = RateLimiter::new(0, 2);
        let t0 = Instant::now();
        let late = NOON + HOUR_MS - 10_000;
        assert!(limiter.try_acquire(t0, NOON + 5).is_ok());
        assert!(limiter.try_acquire(t0, late).is_ok());
        let wait = limiter.try_acquire(t0, late + 500).unwrap_err();
        assert_eq!(wait, Duration::from_millis(9_500));
        assert_eq!(retry_after_secs(wait), 10);
        assert!(limiter.try_acquire(t0, NOON + HOUR_MS).is_ok());
    }

    #[test]
    fn rejected_submissions_do_not_count() {
        let mut limiter = RateLimiter::new(0, 1);
        let t0 = Instant::now();
        assert!(limiter.try_acquire(t0, NOON).is_ok());
        for _ in 0..5 {
            assert!(limiter.try_acquire(t0, NOON).is_err());
        }
        assert!(limiter.try_acquire(t0, NOON + HOUR_MS).is_ok());
    }

    #[test]
    fn zero_limits_mean_unlimited() {
        let mut limiter = RateLimiter::new(0, 0);
        let t0 = Instant::now();
        for _ in 0..1_000 {
            assert!(limiter.try_acquire(t0, NOON).is_ok());
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2_001)), 3);
    }
}
