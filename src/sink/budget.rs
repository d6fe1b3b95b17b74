//! The Data Push job budget of one Celonis team: at most N job submissions per second and M
//! per UTC clock hour, shared by every pipeline that pushes to that team. When the budget is
//! spent, runs wait for it instead of failing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::config::CelonisLimits;

/// The wall clock, injectable so the hour window can be tested.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

pub struct JobBudget {
    limits: CelonisLimits,
    clock: Clock,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Submissions in the last second (monotonic time).
    recent: VecDeque<Instant>,
    /// The UTC hour (hours since the epoch) `used_this_hour` counts for.
    hour: u64,
    used_this_hour: u32,
}

impl JobBudget {
    pub fn new(limits: CelonisLimits) -> JobBudget {
        JobBudget::with_clock(limits, Arc::new(SystemTime::now))
    }

    pub fn with_clock(limits: CelonisLimits, clock: Clock) -> JobBudget {
        JobBudget {
            limits,
            clock,
            state: Mutex::new(State::default()),
        }
    }

    /// Takes one job submission from the budget, waiting until one is available.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire() {
                Ok(()) => return,
                Err(wait) => {
                    tracing::info!(
                        wait_ms = wait.as_millis() as u64,
                        "job budget spent, waiting"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Takes one submission now, or says how long to wait for one.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let wall = (self.clock)()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let hour = wall.as_secs() / 3600;
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.hour != hour {
            s.hour = hour;
            s.used_this_hour = 0;
        }
        if s.used_this_hour >= self.limits.jobs_per_hour {
            let next_hour = Duration::from_secs((hour + 1) * 3600);
            return Err(next_hour
                .saturating_sub(wall)
                .max(Duration::from_millis(10)));
        }
        while s
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            s.recent.pop_front();
        }
        if s.recent.len() as u32 >= self.limits.jobs_per_second {
            let oldest = *s.recent.front().expect("non-empty: len >= limit > 0");
            return Err((oldest + Duration::from_secs(1)).saturating_duration_since(now));
        }
        s.recent.push_back(now);
        s.used_this_hour += 1;
        Ok(())
    }

    /// Submissions left in the current UTC hour.
    pub fn remaining_this_hour(&self) -> u32 {
        let hour = (self.clock)()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            / 3600;
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.hour == hour {
            self.limits.jobs_per_hour.saturating_sub(s.used_this_hour)
        } else {
            self.limits.jobs_per_hour
        }
    }
}

/// One budget per team, created on first use.
#[derive(Default, Debug)]
pub struct Budgets {
    teams: Mutex<HashMap<String, Arc<JobBudget>>>,
}

impl Budgets {
    pub fn for_team(&self, team: &str, limits: CelonisLimits) -> Arc<JobBudget> {
        let mut teams = self.teams.lock().unwrap_or_else(|e| e.into_inner());
        teams
            .entry(team.to_owned())
            .or_insert_with(|| Arc::new(JobBudget::new(limits)))
            .clone()
    }

    /// Submissions left this UTC hour, per team.
    pub fn remaining(&self) -> Vec<(String, u32)> {
        let teams = self.teams.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = teams
            .iter()
            .map(|(t, b)| (t.clone(), b.remaining_this_hour()))
            .collect();
        out.sort();
        out
    }
}

impl std::fmt::Debug for JobBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobBudget")
            .field("limits", &self.limits)
            .field("remaining_this_hour", &self.remaining_this_hour())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn limits(per_second: u32, per_hour: u32) -> CelonisLimits {
        CelonisLimits {
            jobs_per_second: per_second,
            jobs_per_hour: per_hour,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_n_submissions_start_in_any_second() {
        let budget = JobBudget::new(limits(3, 1000));
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..7 {
            budget.acquire().await;
            starts.push(start.elapsed());
        }
        for w in starts.windows(4) {
            assert!(w[3] - w[0] >= Duration::from_secs(1), "{starts:?}");
        }
        assert!(
            starts[6] < Duration::from_millis(2100),
            "waits no longer than needed: {starts:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_hour_budget_resets_at_the_full_utc_hour() {
        // 10:59:59 UTC on some day.
        let wall = Arc::new(AtomicU64::new(1_700_000_000 / 3600 * 3600 + 3599));
        let w = wall.clone();
        let clock: Clock =
            Arc::new(move || UNIX_EPOCH + Duration::from_secs(w.load(Ordering::SeqCst)));
        let budget = JobBudget::with_clock(limits(10, 2), clock);
        assert!(budget.try_acquire().is_ok());
        assert!(budget.try_acquire().is_ok());
        assert_eq!(budget.remaining_this_hour(), 0);
        let wait = budget.try_acquire().unwrap_err();
        assert_eq!(
            wait,
            Duration::from_secs(1),
            "waits until the next full hour"
        );
        wall.fetch_add(1, Ordering::SeqCst);
        assert_eq!(budget.remaining_this_hour(), 2);
        assert!(budget.try_acquire().is_ok());
    }

    #[test]
    fn pipelines_of_one_team_share_a_budget() {
        let budgets = Budgets::default();
        let a = budgets.for_team("acme:443", limits(10, 1));
        let b = budgets.for_team("acme:443", limits(10, 1));
        let c = budgets.for_team("other:443", limits(10, 1));
        assert!(a.try_acquire().is_ok());
        assert!(b.try_acquire().is_err());
        assert!(c.try_acquire().is_ok());
    }
}
