//! Wall-clock time as weir stores it: milliseconds (or seconds) since the Unix epoch.
//!
//! Durations and deadlines use `tokio::time::Instant` instead (so tests can pause time); this
//! module is only for timestamps that are written down or compared with a sender's clock.
//! The emulator has its own copy, because it depends on no other weir module.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    millis(SystemTime::now())
}

/// Seconds since the Unix epoch, now, for comparing with signed timestamps of senders.
pub fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Milliseconds since the Unix epoch of `t` (0 before 1970, saturating far in the future).
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
