//! An emulator of the Celonis Data Push API, so weir runs end to end without a Celonis account.
//!
//! It serves the eight job endpoints under both path prefixes ([`http`]), keeps jobs and their
//! chunks in memory, and on execute loads CSV chunks into SQLite tables ([`table`]) named
//! after the job's target. It also serves the Continuous Batch Processing upload ([`items`]),
//! applying each Parquet file to the same tables at once. Test hooks under `/emulator/` show tables and jobs and inject faults.
//! One emulator is one Celonis team: the execute rate limit ([`limiter`]) is shared by all pools.

mod chunk;
mod faults;
mod finops;
mod http;
mod items;
mod limiter;
mod model;
mod oauth;
mod parquet;
mod table;
mod types;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use rusqlite::{Connection, OpenFlags};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use faults::Faults;
use limiter::RateLimiter;
use model::JobSpec;
use table::ChunkKind;

/// How the emulator behaves.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Keys accepted as `Authorization: AppKey <k>`.
    pub app_keys: Vec<String>,
    /// Keys accepted as `Authorization: Bearer <k>`.
    /// When both lists are empty any AppKey/Bearer value is accepted, but the header is still required.
    pub api_keys: Vec<String>,
    /// The SQLite file holding the pushed tables; `None` keeps them in memory.
    pub database: Option<PathBuf>,
    /// Execute submissions per sliding second, for the whole emulator (0 = unlimited).
    pub jobs_per_second: u32,
    /// Execute submissions per UTC clock hour, for the whole emulator (0 = unlimited).
    pub jobs_per_hour: u32,
    /// Time an executed job spends in QUEUED and again in RUNNING, so polling code is exercised.
    pub step_delay: Duration,
    /// OAuth clients (id, secret) of `POST /oauth2/token`. When there are any, a Bearer value
    /// must be an unexpired token it issued with a data-push scope (or one of `api_keys`).
    pub oauth_clients: Vec<(String, String)>,
    /// Lifetime of the tokens it issues (`expires_in`).
    pub token_ttl: Duration,
    /// The data pools that exist (UUIDs): any other pool id is 404. `None`: every UUID
    /// names a pool.
    pub pools: Option<Vec<String>>,
    /// Also serve a FinOps dequeue/ack API ([`finops`]) with this many sample packages
    /// queued at start; `None`: not served.
    pub finops: Option<u32>,
}

impl Default for EmulatorConfig {
    fn default() -> EmulatorConfig {
        EmulatorConfig {
            app_keys: Vec::new(),
            api_keys: Vec::new(),
            database: None,
            jobs_per_second: 10,
            jobs_per_hour: 250,
            step_delay: Duration::from_millis(20),
            oauth_clients: Vec::new(),
            token_ttl: Duration::from_secs(3600),
            pools: None,
            finops: None,
        }
    }
}

/// What can go wrong inside the emulator itself (not in what a client sent).
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot open the emulator database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the emulator database failed")]
    Database(#[from] rusqlite::Error),
    #[error("only read-only statements can be queried")]
    NotReadOnly,
    #[error("a blocking database task failed")]
    Blocking(#[from] tokio::task::JoinError),
    #[error("cannot serialise a response")]
    Serialize(#[source] serde_json::Error),
}

/// A cheap, cloneable handle to one running emulator.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

struct Inner {
    config: EmulatorConfig,
    jobs: Mutex<Vec<Job>>,
    /// Continuous uploads applied.
    items: Mutex<items::Items>,
    faults: Mutex<Faults>,
    /// The FinOps package queue (served only when `config.finops` is set).
    finops: Mutex<finops::Finops>,
    limiter: Mutex<RateLimiter>,
    tokens: Mutex<oauth::TokenStore>,
    db: Arc<Mutex<Connection>>,
    tracker: TaskTracker,
    /// Cancelled when serving stops: delays end early so shutdown is quick.
    stop: CancellationToken,
    /// Whether the `/emulator/` hooks need the key the data-push routes check: set by
    /// [`Emulator::serve`] when it listens beyond loopback.
    hooks_need_key: AtomicBool,
}

/// Whether an emulator listening on `listen` guards its `/emulator/` hooks (tables, jobs,
/// faults, OAuth) with its key: on loopback anyone who can reach it is local already; on any
/// other address (including `0.0.0.0`) the tables and faults would be open to the network.
pub fn hooks_need_key(listen: SocketAddr) -> bool {
    !listen.ip().is_loopback()
}

/// A job's lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    New,
    Queued,
    Running,
    Done,
    Error,
    Canceled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::New => "NEW",
            Status::Queued => "QUEUED",
            Status::Running => "RUNNING",
            Status::Done => "DONE",
            Status::Error => "ERROR",
            Status::Canceled => "CANCELED",
        }
    }
}

struct Job {
    id: Uuid,
    /// The pool from the path, lowercase.
    pool: String,
    /// The create body exactly as received.
    request: Box<RawValue>,
    /// The known fields the client sent, echoed in every job response.
    echo: Map<String, Value>,
    spec: JobSpec,
    status: Status,
    logs: Vec<String>,
    modified_ms: u64,
    executed_ms: Option<u64>,
    chunks: Vec<Chunk>,
    /// Deleted through the API: gone from the API, still shown by `/emulator/jobs`.
    deleted: bool,
}

impl Job {
    fn to_json(&self, path_pool: &str) -> Value {
        let mut job = self.echo.clone();
        job.insert("id".into(), Value::String(self.id.to_string()));
        if job.get("dataPoolId").is_none_or(Value::is_null) {
            job.insert("dataPoolId".into(), Value::String(path_pool.to_owned()));
        }
        job.insert("status".into(), Value::String(self.status.as_str().into()));
        job.insert(
            "logs".into(),
            Value::Array(self.logs.iter().cloned().map(Value::String).collect()),
        );
        job.insert("lastModified".into(), Value::from(self.modified_ms));
        Value::Object(job)
    }

    fn set_status(&mut self, status: Status) {
        self.status = status;
        self.modified_ms = now_ms();
    }
}

struct Chunk {
    id: Uuid,
    kind: ChunkKind,
    created_ms: u64,
    checksum: String,
    /// `None` once evicted to keep memory bounded (see [`evict_chunk_contents`]).
    content: Option<Bytes>,
}

/// Chunk bytes kept for `/emulator/jobs` beyond what pending jobs need.
const RETAINED_CHUNK_BYTES: usize = 256 << 20;

/// Forgets the contents of the oldest finished (or deleted, never executed) jobs' chunks
/// until at most `limit` bytes remain; jobs still to be applied keep theirs.
fn evict_chunk_contents(jobs: &mut [Job], limit: usize) {
    let mut retained: usize = jobs
        .iter()
        .flat_map(|job| &job.chunks)
        .filter_map(|chunk| chunk.content.as_ref().map(Bytes::len))
        .sum();
    for job in jobs.iter_mut() {
        if retained <= limit {
            return;
        }
        let evictable = match job.status {
            Status::Done | Status::Error | Status::Canceled => true,
            Status::New => job.deleted,
            Status::Queued | Status::Running => false,
        };
        if evictable {
            for chunk in &mut job.chunks {
                if let Some(content) = chunk.content.take() {
                    retained -= content.len();
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Locks a mutex; a panic elsewhere cannot leave the emulator's plain data half-written, so poison is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Emulator {
    /// Opens (or creates) the database and builds an emulator; nothing listens until [`Emulator::serve`].
    pub fn new(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        let db = match &config.database {
            Some(path) => Connection::open(path).map_err(|source| EmulatorError::Open {
                path: path.clone(),
                source,
            })?,
            None => Connection::open_in_memory()?,
        };
        db.busy_timeout(Duration::from_secs(5))?;
        let limiter = RateLimiter::new(config.jobs_per_second, config.jobs_per_hour);
        let finops = finops::Finops::with_samples(config.finops.unwrap_or(0));
        Ok(Emulator {
            inner: Arc::new(Inner {
                config,
                jobs: Mutex::new(Vec::new()),
                items: Mutex::new(items::Items::default()),
                faults: Mutex::new(Faults::default()),
                finops: Mutex::new(finops),
                limiter: Mutex::new(limiter),
                tokens: Mutex::new(oauth::TokenStore::default()),
                db: Arc::new(Mutex::new(db)),
                tracker: TaskTracker::new(),
                stop: CancellationToken::new(),
                hooks_need_key: AtomicBool::new(false),
            }),
        })
    }

    /// The emulator's routes: the data-push API under both prefixes and the `/emulator/` test hooks.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// Serves on `listener` until `shutdown` is cancelled, then lets in-flight requests and jobs finish.
    ///
    /// Once shut down, an emulator's jobs no longer wait `step_delay`; make a new one to serve again.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let exposed = listener.local_addr().map_or(true, hooks_need_key);
        self.inner.hooks_need_key.store(exposed, Ordering::Relaxed);
        let stop = self.inner.stop.clone();
        let result = axum::serve(listener, self.router())
            .with_graceful_shutdown(async move {
                shutdown.cancelled().await;
                stop.cancel();
            })
            .await;
        self.inner.stop.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        tracing::info!("emulator stopped");
        result
    }

    /// Waits `delay`, or less if the emulator is stopping.
    async fn pause(&self, delay: Duration) {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = self.inner.stop.cancelled() => {}
        }
    }

    /// Runs `work` against the database on the blocking pool.
    async fn with_db<T, F>(&self, work: F) -> Result<T, EmulatorError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> T + Send + 'static,
    {
        let db = Arc::clone(&self.inner.db);
        Ok(tokio::task::spawn_blocking(move || work(&mut lock(&db))).await?)
    }
}

/// Why an emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("creating the emulator database directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the emulator")]
    Emulator(#[from] EmulatorError),
    #[error("binding {listen}")]
    Bind {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Creates the database's directory, opens the emulator, binds `listen` and serves on a task
/// of `tracker` until `stop` is cancelled. Returns the bound address (port 0 picks one).
/// Used by `weir emulator` and by `weir serve` with `[emulator]`.
pub async fn start(
    config: EmulatorConfig,
    listen: SocketAddr,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> Result<SocketAddr, StartError> {
    if let Some(dir) = config.database.as_ref().and_then(|d| d.parent())
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|source| StartError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let database = config.database.clone();
    let emulator = Emulator::new(config)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind { listen, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { listen, source })?;
    tracker.spawn(
        async move {
            if let Err(e) = emulator.serve(listener, stop).await {
                tracing::error!(error = %e, "emulator listener failed");
            }
        }
        .instrument(tracing::info_span!("emulator listener")),
    );
    match &database {
        Some(path) => {
            tracing::info!(listen = %addr, database = %path.display(), "data push emulator started")
        }
        None => tracing::info!(listen = %addr, "data push emulator started"),
    }
    Ok(addr)
}

/// Renders rows as an aligned text table with a row count (`weir emulator query`).
pub fn render_table(rows: &[Map<String, Value>]) -> String {
    let Some(first) = rows.first() else {
        return "(0 rows)\n".to_owned();
    };
    let headers: Vec<&String> = first.keys().collect();
    let cell = |v: &Value| match v {
        Value::String(s) => s.replace('\n', "\\n").replace('\r', "\\r"),
        Value::Null => "NULL".to_owned(),
        other => other.to_string(),
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            headers
                .iter()
                .map(|h| r.get(*h).map(cell).unwrap_or_default())
                .collect()
        })
        .collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| -> String {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        format!("{}\n", padded.join(" | ").trim_end())
    };
    let mut out = line(headers.iter().map(|h| h.as_str()).collect());
    out.push_str(&format!(
        "{}\n",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    ));
    for r in &cells {
        out.push_str(&line(r.iter().map(|c| c.as_str()).collect()));
    }
    out.push_str(&format!("({} rows)\n", rows.len()));
    out
}

/// Runs one read-only query against an emulator database file; rows come back as column → value.
pub fn query(database: &Path, sql: &str) -> Result<Vec<Map<String, Value>>, EmulatorError> {
    let conn = Connection::open_with_flags(
        database,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| EmulatorError::Open {
        path: database.to_owned(),
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut stmt = conn.prepare(sql)?;
    if !stmt.readonly() {
        return Err(EmulatorError::NotReadOnly);
    }
    let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut object = Map::new();
        for (i, column) in columns.iter().enumerate() {
            let value = match row.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(n) => Value::from(n),
                rusqlite::types::ValueRef::Real(f) => Value::from(f),
                other => table::value_text(other).map_or(Value::Null, Value::String),
            };
            object.insert(column.clone(), value);
        }
        out.push(object);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_need_the_key_on_every_address_but_loopback() {
        for open in ["127.0.0.1:8900", "127.0.0.2:8900", "[::1]:8900"] {
            assert!(!hooks_need_key(open.parse().unwrap()), "{open}");
        }
        for guarded in [
            "0.0.0.0:8900",
            "[::]:8900",
            "10.0.0.5:8900",
            "192.168.1.2:80",
        ] {
            assert!(hooks_need_key(guarded.parse().unwrap()), "{guarded}");
        }
    }

    #[test]
    fn a_query_result_renders_as_an_aligned_table() {
        let rows: Vec<Map<String, Value>> = vec![
            serde_json::from_str(r#"{"id":"1","note":"a\nb"}"#).unwrap(),
            serde_json::from_str(r#"{"id":"22","note":null}"#).unwrap(),
        ];
        assert_eq!(
            render_table(&rows),
            "id | note\n---+-----\n1  | a\\nb\n22 | NULL\n(2 rows)\n"
        );
        assert_eq!(render_table(&[]), "(0 rows)\n");
    }

    fn job_with_chunk(status: Status, bytes: usize) -> Job {
        let request = RawValue::from_string("{}".to_owned()).unwrap();
        let spec = model::parse_create(br#"{"targetName":"t","type":"DELTA"}"#, "p")
            .unwrap()
            .spec;
        Job {
            id: Uuid::new_v4(),
            pool: "p".into(),
            request,
            echo: Map::new(),
            spec,
            status,
            logs: Vec::new(),
            modified_ms: 0,
            executed_ms: None,
            chunks: vec![Chunk {
                id: Uuid::new_v4(),
                kind: ChunkKind::Upsert,
                created_ms: 0,
                checksum: String::new(),
                content: Some(Bytes::from(vec![b'x'; bytes])),
            }],
            deleted: false,
        }
    }

    #[test]
    fn eviction_forgets_the_oldest_finished_chunks_and_keeps_pending_ones() {
        let mut jobs = vec![
            job_with_chunk(Status::New, 10),
            job_with_chunk(Status::Done, 10),
            job_with_chunk(Status::Error, 10),
            job_with_chunk(Status::Running, 10),
        ];
        evict_chunk_contents(&mut jobs, 30);
        let kept: Vec<bool> = jobs.iter().map(|j| j.chunks[0].content.is_some()).collect();
        assert_eq!(kept, vec![true, false, true, true]);
        evict_chunk_contents(&mut jobs, 0);
        let kept: Vec<bool> = jobs.iter().map(|j| j.chunks[0].content.is_some()).collect();
        assert_eq!(kept, vec![true, false, false, true]);
    }

    #[test]
    fn query_refuses_statements_that_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (a TEXT); INSERT INTO t VALUES ('1')")
            .unwrap();
        assert!(matches!(
            query(&path, "DELETE FROM t"),
            Err(EmulatorError::NotReadOnly)
        ));
        let rows = query(&path, "SELECT a, 2 AS b FROM t").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["a"], Value::String("1".into()));
        assert_eq!(rows[0]["b"], Value::from(2));
    }
}
