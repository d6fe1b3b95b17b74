//! The Data Push job budget of one Celonis team: at most N job submissions per second and M
//! per UTC clock hour, shared by every pipeline that pushes to that team. When the budget is
//! spent, runs wait for it instead of failing. The hour's count is persisted (a small
//! versioned JSON file per team in the data directory, written before each job is created),
//! so a restart mid-hour never allows more than M. The budget also holds the team's "not
//! before" instant: after a 429 with `Retry-After`, no call of any kind goes to the team
//! until it has passed.
//!
//! When the team's pipelines queue on NATS (several replicas), the hour's count, the last
//! second's submissions and the "not before" instant live in one record of the shared
//! bucket instead, taken with compare-and-swap, so every replica spends one budget.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::CelonisLimits;
use crate::queue::SharedStore;
use crate::sync::lock;

/// The wall clock, injectable so the hour window can be tested.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The version of the budget file this weir writes.
const FILE_VERSION: u32 = 1;

pub struct JobBudget {
    limits: CelonisLimits,
    clock: Clock,
    /// Where the hour's count is persisted; `None` keeps it in memory only.
    file: Option<PathBuf>,
    /// The team's record in a store every replica shares, and its key (instead of `file`).
    shared: Option<(Arc<dyn SharedStore>, String)>,
    state: Mutex<State>,
}

/// The version of the shared record this weir writes.
const SHARED_VERSION: u32 = 1;

/// Compare-and-swap attempts per acquire before it waits a moment and tries again.
const CAS_ATTEMPTS: usize = 16;

/// How often a shared budget reads the record for what it shows (`remaining_this_hour`).
const SHARED_REFRESH: Duration = Duration::from_secs(2);

/// The team's budget as the shared bucket keeps it. Times are wall-clock milliseconds, as
/// every replica reads the same record.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SharedRecord {
    v: u32,
    /// The UTC hour `used` counts for (hours since the epoch).
    hour: u64,
    used: u32,
    /// Submissions of the last second.
    #[serde(default)]
    recent_ms: Vec<u64>,
    /// No job is created for the team before this (a server-requested wait).
    #[serde(default)]
    not_before_ms: u64,
}

#[derive(Default)]
struct State {
    /// Submissions in the last second (monotonic time).
    recent: VecDeque<Instant>,
    /// The UTC hour (hours since the epoch) `used_this_hour` counts for.
    hour: u64,
    used_this_hour: u32,
    /// No call goes to the team before this instant (a server-requested wait).
    not_before: Option<Instant>,
}

/// The persisted hour count.
#[derive(Debug, Serialize, Deserialize)]
struct BudgetFile {
    version: u32,
    hour: u64,
    used: u32,
}

impl JobBudget {
    pub fn new(limits: CelonisLimits) -> JobBudget {
        JobBudget::with_clock(limits, Arc::new(SystemTime::now))
    }

    pub fn with_clock(limits: CelonisLimits, clock: Clock) -> JobBudget {
        JobBudget {
            limits,
            clock,
            file: None,
            shared: None,
            state: Mutex::new(State::default()),
        }
    }

    /// A budget kept in `store` under `key`, which every replica opening the same record
    /// shares. What it shows is read again every [`SHARED_REFRESH`] while it lives.
    pub fn shared(
        limits: CelonisLimits,
        clock: Clock,
        store: Arc<dyn SharedStore>,
        key: String,
    ) -> Arc<JobBudget> {
        let budget = Arc::new(JobBudget {
            shared: Some((store, key)),
            ..JobBudget::with_clock(limits, clock)
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&budget);
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(SHARED_REFRESH).await;
                    let Some(b) = weak.upgrade() else { return };
                    let Some((store, key)) = &b.shared else {
                        return;
                    };
                    if let Err(e) = b.load_shared(store.as_ref(), key).await {
                        tracing::debug!(error = %e, "reading the shared job budget failed");
                    }
                }
            });
        }
        budget
    }

    /// A budget whose hour count lives in `file` (created on the first job). Every budget
    /// opened on the same file shares the count.
    pub fn persisted(limits: CelonisLimits, clock: Clock, file: PathBuf) -> JobBudget {
        JobBudget {
            file: Some(file),
            ..JobBudget::with_clock(limits, clock)
        }
    }

    /// Takes one job submission from the budget, waiting until one is available. Fails only
    /// when the count cannot be persisted: then no job may be created.
    pub async fn acquire(&self) -> std::io::Result<()> {
        loop {
            let next = match &self.shared {
                Some((store, key)) => self.try_acquire_shared(store.as_ref(), key).await?,
                None => self.try_acquire()?,
            };
            match next {
                Ok(()) => return Ok(()),
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
    pub fn try_acquire(&self) -> std::io::Result<Result<(), Duration>> {
        let wall = (self.clock)()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let hour = wall.as_secs() / 3600;
        let now = Instant::now();
        let mut s = lock(&self.state);
        if let Some(at) = s.not_before
            && at > now
        {
            return Ok(Err(at - now));
        }
        if s.hour != hour {
            s.hour = hour;
            s.used_this_hour = 0;
        }
        if let Some(file) = &self.file {
            s.used_this_hour = s.used_this_hour.max(used_on_disk(file, hour, &self.limits));
        }
        if s.used_this_hour >= self.limits.jobs_per_hour {
            let next_hour = Duration::from_secs(hour.saturating_add(1).saturating_mul(3600));
            return Ok(Err(next_hour
                .saturating_sub(wall)
                .max(Duration::from_millis(10))));
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
            return Ok(Err(
                (oldest + Duration::from_secs(1)).saturating_duration_since(now)
            ));
        }
        let used = s.used_this_hour + 1;
        if let Some(file) = &self.file {
            write_file(file, hour, used)?;
        }
        s.recent.push_back(now);
        s.used_this_hour = used;
        Ok(Ok(()))
    }

    /// Holds every call to the team for `wait` (longer waits already set are kept). A
    /// shared budget also holds the other replicas' job creation for it.
    pub fn defer(&self, wait: Duration) {
        let now = Instant::now();
        let wait = wait.min(super::MAX_RETRY_AFTER);
        let at = now.checked_add(wait).unwrap_or(now);
        let mut s = lock(&self.state);
        s.not_before = Some(s.not_before.map_or(at, |t| t.max(at)));
        drop(s);
        if let Some((store, key)) = &self.shared
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (store, key) = (store.clone(), key.clone());
            let until_ms = self.wall_ms().saturating_add(wait.as_millis() as u64);
            rt.spawn(async move {
                if let Err(e) = share_not_before(store.as_ref(), &key, until_ms).await {
                    tracing::warn!(error = %e, "sharing the team's wait with the other replicas failed");
                }
            });
        }
    }

    fn wall_ms(&self) -> u64 {
        (self.clock)()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64
    }

    /// [`JobBudget::try_acquire`] against the shared record: takes one submission with
    /// compare-and-swap, or says how long to wait for one. Fails when the store cannot be
    /// read or written: then no job may be created.
    async fn try_acquire_shared(
        &self,
        store: &dyn SharedStore,
        key: &str,
    ) -> std::io::Result<Result<(), Duration>> {
        let now = Instant::now();
        if let Some(at) = lock(&self.state).not_before
            && at > now
        {
            return Ok(Err(at - now));
        }
        for _ in 0..CAS_ATTEMPTS {
            let wall = self.wall_ms();
            let hour = wall / 3_600_000;
            let until_next_hour =
                Duration::from_millis((hour + 1) * 3_600_000 - wall).max(Duration::from_millis(10));
            let Some((mut rec, revision)) = read_shared(store, key).await? else {
                return Ok(Err(until_next_hour));
            };
            if rec.not_before_ms > wall {
                return Ok(Err(Duration::from_millis(rec.not_before_ms - wall)));
            }
            if rec.hour != hour {
                rec.hour = hour;
                rec.used = 0;
            }
            self.note_used(hour, rec.used);
            if rec.used >= self.limits.jobs_per_hour {
                return Ok(Err(until_next_hour));
            }
            rec.recent_ms
                .retain(|&t| t + 1000 > wall && t <= wall + 1000);
            if rec.recent_ms.len() as u32 >= self.limits.jobs_per_second {
                let oldest = rec.recent_ms.iter().copied().min().unwrap_or(wall);
                return Ok(Err(Duration::from_millis(
                    (oldest + 1000).saturating_sub(wall).max(1),
                )));
            }
            rec.v = SHARED_VERSION;
            rec.used += 1;
            rec.recent_ms.push(wall);
            let value = serde_json::to_vec(&rec).map_err(std::io::Error::other)?;
            if store
                .store(key.to_owned(), value, revision)
                .await
                .map_err(std::io::Error::other)?
            {
                self.note_used(hour, rec.used);
                return Ok(Ok(()));
            }
        }
        // Other replicas won every attempt: try again in a moment.
        Ok(Err(Duration::from_millis(20)))
    }

    /// Reads the shared record into what this budget shows.
    async fn load_shared(&self, store: &dyn SharedStore, key: &str) -> std::io::Result<()> {
        let hour = self.wall_ms() / 3_600_000;
        let used = match read_shared(store, key).await? {
            Some((rec, _)) if rec.hour == hour => rec.used,
            Some(_) => 0,
            None => self.limits.jobs_per_hour,
        };
        self.note_used(hour, used);
        Ok(())
    }

    /// Records that `used` submissions of `hour` are spent (as the shared record says).
    fn note_used(&self, hour: u64, used: u32) {
        let mut s = lock(&self.state);
        if s.hour != hour {
            s.hour = hour;
            s.used_this_hour = 0;
        }
        s.used_this_hour = s.used_this_hour.max(used);
    }

    /// Whether the team asked to wait and the wait is not over.
    pub fn deferred(&self) -> bool {
        lock(&self.state)
            .not_before
            .is_some_and(|at| at > Instant::now())
    }

    /// Waits until calls to the team are allowed again.
    pub async fn ready(&self) {
        let at = lock(&self.state).not_before;
        if let Some(at) = at
            && at > Instant::now()
        {
            tracing::info!(
                wait_ms = (at - Instant::now()).as_millis() as u64,
                "team asked to wait, holding calls"
            );
            tokio::time::sleep_until(at).await;
        }
    }

    /// Submissions left in the current UTC hour.
    pub fn remaining_this_hour(&self) -> u32 {
        let hour = (self.clock)()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            / 3600;
        let s = lock(&self.state);
        let used = if s.hour == hour { s.used_this_hour } else { 0 };
        let used = match &self.file {
            Some(file) => used.max(used_on_disk(file, hour, &self.limits)),
            None => used,
        };
        self.limits.jobs_per_hour.saturating_sub(used)
    }
}

/// The team's shared record and its revision (a fresh record at revision 0 when there is
/// none), or `None` when it is of an unknown version or unreadable: that hour counts as
/// spent, as for the file.
async fn read_shared(
    store: &dyn SharedStore,
    key: &str,
) -> std::io::Result<Option<(SharedRecord, u64)>> {
    let fresh = SharedRecord {
        v: SHARED_VERSION,
        ..SharedRecord::default()
    };
    let Some((bytes, revision)) = store
        .load(key.to_owned())
        .await
        .map_err(std::io::Error::other)?
    else {
        return Ok(Some((fresh, 0)));
    };
    if bytes.is_empty() {
        return Ok(Some((fresh, revision)));
    }
    match serde_json::from_slice::<SharedRecord>(&bytes) {
        Ok(r) if r.v == SHARED_VERSION => Ok(Some((r, revision))),
        Ok(r) => {
            tracing::warn!(store = %store.describe(), key, version = r.v, "shared job budget of an unknown version; treating this hour as spent");
            Ok(None)
        }
        Err(e) => {
            tracing::warn!(store = %store.describe(), key, error = %e, "shared job budget unreadable; treating this hour as spent");
            Ok(None)
        }
    }
}

/// Holds job creation for the team on every replica until `until_ms` (wall clock).
async fn share_not_before(
    store: &dyn SharedStore,
    key: &str,
    until_ms: u64,
) -> std::io::Result<()> {
    for _ in 0..CAS_ATTEMPTS {
        let Some((mut rec, revision)) = read_shared(store, key).await? else {
            return Ok(());
        };
        if rec.not_before_ms >= until_ms {
            return Ok(());
        }
        rec.v = SHARED_VERSION;
        rec.not_before_ms = until_ms;
        let value = serde_json::to_vec(&rec).map_err(std::io::Error::other)?;
        if store
            .store(key.to_owned(), value, revision)
            .await
            .map_err(std::io::Error::other)?
        {
            return Ok(());
        }
    }
    Err(std::io::Error::other(
        "other replicas kept writing the shared record",
    ))
}

/// Jobs the file says were created in `hour`. A file that cannot be read or is of an
/// unknown version counts as a spent hour: the budget must never be exceeded.
fn used_on_disk(file: &Path, hour: u64, limits: &CelonisLimits) -> u32 {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "job budget file unreadable; treating this hour as spent");
            return limits.jobs_per_hour;
        }
    };
    match serde_json::from_slice::<BudgetFile>(&bytes) {
        Ok(f) if f.version == FILE_VERSION => {
            if f.hour == hour {
                f.used
            } else {
                0
            }
        }
        Ok(f) => {
            tracing::warn!(file = %file.display(), version = f.version, "job budget file of an unknown version; treating this hour as spent");
            limits.jobs_per_hour
        }
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "job budget file unreadable; treating this hour as spent");
            limits.jobs_per_hour
        }
    }
}

/// Writes the count atomically: temp file, fsync, rename, fsync the directory.
fn write_file(file: &Path, hour: u64, used: u32) -> std::io::Result<()> {
    let body = serde_json::to_vec(&BudgetFile {
        version: FILE_VERSION,
        hour,
        used,
    })
    .map_err(std::io::Error::other)?;
    crate::durable::replace(file, &body)
}

/// One budget per team, created on first use; and one upload rate per team for continuous
/// sinks, which spend no job budget.
#[derive(Default)]
pub struct Budgets {
    teams: Mutex<HashMap<String, Arc<JobBudget>>>,
    uploads: Mutex<HashMap<String, Arc<JobBudget>>>,
    /// Where each team's hour count is persisted; `None` keeps counts in memory.
    dir: Option<PathBuf>,
    /// Teams whose budget lives in a store several replicas share.
    shared: Mutex<HashMap<String, Arc<dyn SharedStore>>>,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("teams", &self.teams)
            .field("dir", &self.dir)
            .finish()
    }
}

impl Budgets {
    /// Budgets whose hour counts persist in `dir` (one file per team).
    pub fn persisted(dir: PathBuf) -> Budgets {
        Budgets {
            dir: Some(dir),
            ..Budgets::default()
        }
    }

    /// Keeps `team`'s budget in `store`, shared with every replica that does the same
    /// (a pipeline queued on NATS); called before the team's budget is first taken. The
    /// first store named for a team is kept.
    pub fn share(&self, team: &str, store: Arc<dyn SharedStore>) {
        lock(&self.shared).entry(team.to_owned()).or_insert(store);
    }

    /// The team's continuous upload rate: `per_second` uploads in any second, no hourly
    /// count (nothing is persisted), and the team's "not before" after a 429 of an upload.
    pub fn uploads_for_team(&self, team: &str, per_second: u32) -> Arc<JobBudget> {
        let limits = CelonisLimits {
            jobs_per_hour: u32::MAX,
            jobs_per_second: per_second.max(1),
            uploads_per_second: per_second.max(1),
        };
        lock(&self.uploads)
            .entry(team.to_owned())
            .or_insert_with(|| Arc::new(JobBudget::new(limits)))
            .clone()
    }

    pub fn for_team(&self, team: &str, limits: CelonisLimits) -> Arc<JobBudget> {
        let mut teams = lock(&self.teams);
        teams
            .entry(team.to_owned())
            .or_insert_with(|| {
                if let Some(store) = lock(&self.shared).get(team) {
                    return JobBudget::shared(
                        limits,
                        Arc::new(SystemTime::now),
                        store.clone(),
                        shared_key(team),
                    );
                }
                Arc::new(match &self.dir {
                    Some(dir) => JobBudget::persisted(
                        limits,
                        Arc::new(SystemTime::now),
                        budget_file(dir, team),
                    ),
                    None => JobBudget::new(limits),
                })
            })
            .clone()
    }

    /// Submissions left this UTC hour, per team.
    pub fn remaining(&self) -> Vec<(String, u32)> {
        let teams = lock(&self.teams);
        let mut out: Vec<_> = teams
            .iter()
            .map(|(t, b)| (t.clone(), b.remaining_this_hour()))
            .collect();
        out.sort();
        out
    }
}

/// The key of a team's record in the shared bucket: `job-budget.` and the team's key with
/// every character but letters and digits replaced.
pub fn shared_key(team: &str) -> String {
    let name: String = team
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("job-budget.{name}")
}

/// The file of a team's budget: its key with every character but letters and digits replaced.
pub fn budget_file(dir: &Path, team: &str) -> PathBuf {
    let name: String = team
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(format!("{name}.json"))
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
            ..CelonisLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_n_submissions_start_in_any_second() {
        let budget = JobBudget::new(limits(3, 1000));
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..7 {
            budget.acquire().await.unwrap();
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
    async fn uploads_keep_their_own_per_second_rate_and_spend_no_job_budget() {
        let budgets = Budgets::default();
        let jobs = budgets.for_team("team:443", limits(10, 250));
        let uploads = budgets.uploads_for_team("team:443", 2);
        assert!(Arc::ptr_eq(
            &uploads,
            &budgets.uploads_for_team("team:443", 2)
        ));
        let start = Instant::now();
        let mut starts = Vec::new();
        // More uploads than a job budget of 250 an hour would ever allow.
        for _ in 0..300 {
            uploads.acquire().await.unwrap();
            starts.push(start.elapsed());
        }
        for w in starts.windows(3) {
            assert!(w[2] - w[0] >= Duration::from_secs(1), "{:?}", &starts[..5]);
        }
        assert!(starts[299] < Duration::from_secs(151), "{:?}", starts[299]);
        assert_eq!(jobs.remaining_this_hour(), 250, "no job was spent");
        assert_eq!(budgets.remaining(), [("team:443".to_owned(), 250)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_hour_budget_resets_at_the_full_utc_hour() {
        // 10:59:59 UTC on some day.
        let wall = Arc::new(AtomicU64::new(1_700_000_000 / 3600 * 3600 + 3599));
        let w = wall.clone();
        let clock: Clock =
            Arc::new(move || UNIX_EPOCH + Duration::from_secs(w.load(Ordering::SeqCst)));
        let budget = JobBudget::with_clock(limits(10, 2), clock);
        assert!(budget.try_acquire().unwrap().is_ok());
        assert!(budget.try_acquire().unwrap().is_ok());
        assert_eq!(budget.remaining_this_hour(), 0);
        let wait = budget.try_acquire().unwrap().unwrap_err();
        assert_eq!(
            wait,
            Duration::from_secs(1),
            "waits until the next full hour"
        );
        wall.fetch_add(1, Ordering::SeqCst);
        assert_eq!(budget.remaining_this_hour(), 2);
        assert!(budget.try_acquire().unwrap().is_ok());
    }

    #[test]
    fn pipelines_of_one_team_share_a_budget() {
        let budgets = Budgets::default();
        let a = budgets.for_team("acme:443", limits(10, 1));
        let b = budgets.for_team("acme:443", limits(10, 1));
        let c = budgets.for_team("other:443", limits(10, 1));
        assert!(a.try_acquire().unwrap().is_ok());
        assert!(b.try_acquire().unwrap().is_err());
        assert!(c.try_acquire().unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_mid_hour_never_allows_more_jobs_than_the_hour_budget() {
        let dir = std::env::temp_dir().join(format!("weir-budget-{}", uuid::Uuid::new_v4()));
        let file = budget_file(&dir, "acme.celonis.cloud:443");
        let clock: Clock = Arc::new(SystemTime::now);
        let before = JobBudget::persisted(limits(10, 3), clock.clone(), file.clone());
        assert!(before.try_acquire().unwrap().is_ok());
        assert!(before.try_acquire().unwrap().is_ok());
        // A second budget opened on the same file: a restarted weir.
        let after = JobBudget::persisted(limits(10, 3), clock, file.clone());
        assert_eq!(after.remaining_this_hour(), 1);
        assert!(after.try_acquire().unwrap().is_ok());
        assert!(
            after.try_acquire().unwrap().is_err(),
            "the restarted budget counts the jobs made before the restart"
        );
        assert!(before.try_acquire().unwrap().is_err());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("\"version\":1"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_budget_file_written_by_version_1_is_read() {
        let dir = std::env::temp_dir().join(format!("weir-budget-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("team.json");
        let hour = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 3600;
        std::fs::write(
            &file,
            format!(r#"{{"version":1,"hour":{hour},"used":249}}"#),
        )
        .unwrap();
        let budget = JobBudget::persisted(limits(10, 250), Arc::new(SystemTime::now), file);
        assert_eq!(budget.remaining_this_hour(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_deferred_team_gets_no_job_and_no_call_before_the_wait_is_over() {
        let budget = JobBudget::new(limits(10, 100));
        budget.defer(Duration::from_secs(30));
        assert_eq!(
            budget.try_acquire().unwrap().unwrap_err(),
            Duration::from_secs(30)
        );
        assert!(budget.deferred());
        let start = Instant::now();
        budget.ready().await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert!(!budget.deferred());
        assert!(budget.try_acquire().unwrap().is_ok());
        // A huge wait does not overflow the clock.
        budget.defer(Duration::MAX);
    }

    /// A shared store in memory with compare-and-swap, which yields inside every call so
    /// concurrent acquires interleave as they would over the network.
    #[derive(Default)]
    struct MemStore(Mutex<HashMap<String, (Vec<u8>, u64)>>);

    impl SharedStore for MemStore {
        fn load(
            &self,
            key: String,
        ) -> crate::queue::BoxFuture<
            '_,
            Result<Option<crate::queue::Revisioned>, crate::queue::QueueError>,
        > {
            Box::pin(async move {
                let value = lock(&self.0).get(&key).cloned();
                tokio::task::yield_now().await;
                Ok(value)
            })
        }

        fn store(
            &self,
            key: String,
            value: Vec<u8>,
            revision: u64,
        ) -> crate::queue::BoxFuture<'_, Result<bool, crate::queue::QueueError>> {
            Box::pin(async move {
                tokio::task::yield_now().await;
                let mut map = lock(&self.0);
                let current = map.get(&key).map_or(0, |(_, r)| *r);
                if current != revision {
                    return Ok(false);
                }
                map.insert(key, (value, current + 1));
                Ok(true)
            })
        }

        fn describe(&self) -> String {
            "memory".into()
        }
    }

    fn wall_clock_at(secs: u64) -> Clock {
        Arc::new(move || UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_sharing_a_record_never_exceed_the_hour_budget_together() {
        let store: Arc<dyn SharedStore> = Arc::new(MemStore::default());
        // Mid-hour, so the test never sees the hour turn.
        let clock = wall_clock_at(1_700_000_000 / 3600 * 3600 + 1800);
        let replicas: Vec<Arc<JobBudget>> = (0..3)
            .map(|_| {
                JobBudget::shared(
                    limits(100, 5),
                    clock.clone(),
                    store.clone(),
                    shared_key("acme:443"),
                )
            })
            .collect();
        let tries: Vec<_> = (0..30)
            .map(|i| {
                let b = replicas[i % 3].clone();
                tokio::spawn(async move {
                    let (store, key) = b.shared.clone().unwrap();
                    b.try_acquire_shared(store.as_ref(), &key).await.unwrap()
                })
            })
            .collect();
        let mut granted = 0;
        for t in tries {
            if t.await.unwrap().is_ok() {
                granted += 1;
            }
        }
        assert_eq!(granted, 5, "five submissions for the three together");
        for b in &replicas {
            let (store, key) = b.shared.clone().unwrap();
            b.load_shared(store.as_ref(), &key).await.unwrap();
            assert_eq!(b.remaining_this_hour(), 0, "every replica shows the same");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_asked_of_one_replica_holds_the_others_and_an_unknown_record_spends_the_hour() {
        let store: Arc<dyn SharedStore> = Arc::new(MemStore::default());
        let clock = wall_clock_at(1_700_000_000 / 3600 * 3600 + 1800);
        let key = shared_key("acme:443");
        let a = JobBudget::shared(limits(100, 50), clock.clone(), store.clone(), key.clone());
        let b = JobBudget::shared(limits(100, 50), clock.clone(), store.clone(), key.clone());
        share_not_before(
            store.as_ref(),
            &key,
            1_700_000_000 / 3600 * 3600 * 1000 + 1_830_000,
        )
        .await
        .unwrap();
        assert_eq!(
            b.try_acquire_shared(store.as_ref(), &key).await.unwrap(),
            Err(Duration::from_secs(30)),
            "the other replica waits as long as the team asked"
        );
        drop(a);

        store
            .store(key.clone(), br#"{"v":2,"hour":0,"used":0}"#.to_vec(), 1)
            .await
            .unwrap();
        let wait = b.try_acquire_shared(store.as_ref(), &key).await.unwrap();
        assert_eq!(
            wait,
            Err(Duration::from_secs(1800)),
            "a record of a newer weir spends the hour"
        );
    }
}
