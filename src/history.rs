//! The last hour of a pipeline, minute by minute: rows accepted and delivered per one-minute
//! bucket, in a ring of 60 buckets fed where the counters are incremented.

use std::sync::Mutex;

use serde::Serialize;

use crate::sync::lock;

/// How many one-minute buckets a history keeps.
pub const MINUTES: usize = 60;
const MINUTE_MS: u64 = 60_000;

/// One minute of a pipeline's history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Minute {
    /// Start of the minute, ms since the epoch.
    pub start_ms: u64,
    pub accepted: u64,
    pub delivered: u64,
}

/// A ring of [`MINUTES`] buckets; a bucket is reused when its minute comes round again.
#[derive(Debug)]
pub struct History {
    /// Slot `m % MINUTES` holds minute `m` (minutes since the epoch) once written.
    slots: Mutex<[Slot; MINUTES]>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    minute: u64,
    accepted: u64,
    delivered: u64,
}

impl Default for History {
    fn default() -> History {
        History {
            slots: Mutex::new([Slot::default(); MINUTES]),
        }
    }
}

impl History {
    pub fn add_accepted(&self, now_ms: u64, n: u64) {
        self.add(now_ms, |s| s.accepted = s.accepted.saturating_add(n));
    }

    pub fn add_delivered(&self, now_ms: u64, n: u64) {
        self.add(now_ms, |s| s.delivered = s.delivered.saturating_add(n));
    }

    fn add(&self, now_ms: u64, f: impl FnOnce(&mut Slot)) {
        let minute = now_ms / MINUTE_MS;
        let mut slots = lock(&self.slots);
        let slot = &mut slots[(minute % MINUTES as u64) as usize];
        if slot.minute != minute {
            *slot = Slot {
                minute,
                ..Slot::default()
            };
        }
        f(slot);
    }

    /// The [`MINUTES`] minutes up to and including the current one, oldest first; minutes
    /// with nothing recorded are zero.
    pub fn last_hour(&self, now_ms: u64) -> Vec<Minute> {
        let now = now_ms / MINUTE_MS;
        let slots = lock(&self.slots);
        (0..MINUTES as u64)
            .rev()
            .filter_map(|back| now.checked_sub(back))
            .map(|minute| {
                let slot = slots[(minute % MINUTES as u64) as usize];
                let (accepted, delivered) = if slot.minute == minute {
                    (slot.accepted, slot.delivered)
                } else {
                    (0, 0)
                };
                Minute {
                    start_ms: minute * MINUTE_MS,
                    accepted,
                    delivered,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000 / MINUTE_MS * MINUTE_MS;

    #[test]
    fn rows_land_in_the_bucket_of_their_minute_and_the_hour_ends_with_the_current_minute() {
        let h = History::default();
        h.add_accepted(T0, 3);
        h.add_accepted(T0 + 59_999, 2);
        h.add_delivered(T0 + MINUTE_MS, 5);
        let hour = h.last_hour(T0 + MINUTE_MS + 1);
        assert_eq!(hour.len(), MINUTES);
        assert_eq!(
            hour[MINUTES - 2],
            Minute {
                start_ms: T0,
                accepted: 5,
                delivered: 0
            }
        );
        assert_eq!(
            hour[MINUTES - 1],
            Minute {
                start_ms: T0 + MINUTE_MS,
                accepted: 0,
                delivered: 5
            }
        );
        assert!(hour[..MINUTES - 2].iter().all(|m| m.accepted == 0));
    }

    #[test]
    fn a_minute_older_than_an_hour_is_forgotten_when_its_slot_comes_round_again() {
        let h = History::default();
        h.add_accepted(T0, 7);
        let an_hour_later = T0 + MINUTES as u64 * MINUTE_MS;
        assert!(h.last_hour(an_hour_later).iter().all(|m| m.accepted == 0));
        h.add_accepted(an_hour_later, 1);
        let hour = h.last_hour(an_hour_later);
        assert_eq!(hour[MINUTES - 1].accepted, 1);
        assert_eq!(hour.iter().map(|m| m.accepted).sum::<u64>(), 1);
    }
}
