//! weir's configuration: parsed once from TOML, validated into domain types, every mistake
//! reported at once with its key path.
//!
//! Loading is `Config::load(text, env)`: the environment is passed in as a map so tests never
//! touch the process environment.

mod describe;
mod env;
mod outbound;

pub use describe::describe;
mod raw;
mod security;
mod sources;

pub use sources::{CsvInput, FetchConfig, FetchMode, PackageFormat, SourceConfig};

pub use security::{
    AuthConfig, AuthMethod, ForwardedHeader, HmacAlgorithm, HmacConfig, HmacPreset, RateLimit,
    SecretKey, ServerLimits, SignatureEncoding, TlsFiles, describe_auth,
};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use reqwest::Url;

use crate::expr::Expr;

use raw::{ByteSize, RawConfig, RawPipeline, RawSink};

/// One problem in the config, at a key path such as `pipelines[1].allow_ips[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A secret string (an app key, a token). Its Debug and Display never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where pipeline state (pause flag, dead letters, disk spools) lives by default.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub admin: Option<AdminConfig>,
    pub emulator: Option<EmulatorSettings>,
    pub celonis: CelonisLimits,
    /// `[proxy]`, already filled into every sink without its own.
    pub proxy: Option<Proxy>,
    pub pipelines: Vec<PipelineConfig>,
    /// `[[sources]]`: dequeue/ack APIs polled into pipelines.
    pub sources: Vec<SourceConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    /// Trusted proxies, header and time limits, connection cap, TLS.
    pub limits: ServerLimits,
}

/// The admin API's listener and its bearer tokens.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub tokens: Vec<AdminToken>,
    /// Open connections at most; more are closed on accept.
    pub max_connections: usize,
    /// Time a client has to send its request headers.
    pub header_read_timeout: Duration,
    /// Size of the request line and headers at most.
    pub max_header_bytes: usize,
}

pub const DEFAULT_ADMIN_MAX_CONNECTIONS: u64 = 64;
pub const DEFAULT_ADMIN_HEADER_READ_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_ADMIN_MAX_HEADER_BYTES: u64 = 16 * 1024;
/// hyper's smallest read buffer.
const MIN_ADMIN_HEADER_BYTES: u64 = 8192;

#[derive(Debug, Clone)]
pub struct AdminToken {
    /// A label for logs; never the token itself.
    pub name: String,
    pub token: Secret,
    pub scope: Scope,
}

/// What an admin token may do: `Read` inspects, `Write` also changes state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
}

/// The built-in Data Push emulator, run inside `weir serve` when configured.
#[derive(Debug, Clone)]
pub struct EmulatorSettings {
    pub listen: SocketAddr,
    pub database: Option<PathBuf>,
    pub app_key: Option<Secret>,
    /// OAuth clients its token endpoint accepts (id, secret); none: no OAuth.
    pub oauth_clients: Vec<(String, Secret)>,
    /// Lifetime of the tokens it issues.
    pub token_ttl: Duration,
    /// The data pools that exist (UUIDs, lowercase); any other pool is 404. `None`: every
    /// UUID names a pool.
    pub pools: Option<Vec<String>>,
    /// `[emulator.finops]`: also serve a FinOps dequeue/ack API with this many sample
    /// packages queued at start.
    pub finops: Option<u32>,
}

/// Celonis' job-submission limits, applied per team (one budget per team host), and the
/// polite rate of continuous uploads (which spend no job budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CelonisLimits {
    pub jobs_per_hour: u32,
    pub jobs_per_second: u32,
    /// `api = "continuous"` uploads per second, per team.
    pub uploads_per_second: u32,
}

impl Default for CelonisLimits {
    fn default() -> Self {
        CelonisLimits {
            jobs_per_hour: 250,
            jobs_per_second: 10,
            uploads_per_second: 10,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub name: String,
    /// The URL segment of `/hooks/{hook}`: `hook`, else the name. Pipelines with the same
    /// hook share one URL; the first of them (in config order) checks the sender.
    pub hook: String,
    /// A shared hook's `unrouted = "reject"`: a request with rows no pipeline takes is 422.
    pub unrouted_reject: bool,
    /// `None`: any client address may post.
    pub allow_ips: Option<Vec<IpNet>>,
    pub queue_capacity: u64,
    pub queue: QueueConfig,
    pub schedule: Schedule,
    pub max_rows_per_run: usize,
    /// With `schedule = "continuous"`: the longest the oldest queued row waits for a run.
    pub max_wait: Duration,
    /// Row data (`Row::encoded_len`) one run takes at most; a run always takes one row.
    pub max_bytes_per_run: u64,
    /// Without `columns` or `schema`: the most distinct fields one run's CSV may have.
    pub max_columns: usize,
    pub retry_initial: Duration,
    pub retry_max_interval: Duration,
    /// After this long of continuous failure the pipeline is SUSPENDED.
    pub suspend_after: Duration,
    /// Rows queued longer than this are moved to the dead-letter file.
    pub retention: Duration,
    /// Pause flag and dead letters live here.
    pub state_dir: PathBuf,
    /// Memory queue only: make one last delivery at shutdown.
    pub drain_on_shutdown: bool,
    pub schema: Option<Schema>,
    /// `rows`: CEL over `body` turning a request's body into rows (a list of maps).
    pub rows: Option<Expr>,
    /// Rows for which this is false are ignored at ingest (variables `row`, `pipeline`).
    pub filter: Option<Expr>,
    pub columns: Vec<Column>,
    pub sink: SinkConfig,
    /// `None`: any sender that passes `allow_ips` may post.
    pub auth: Option<AuthConfig>,
    pub rate_limit: Option<RateLimit>,
    /// What a request whose rows were queued is answered.
    pub response: SuccessResponse,
    /// How long `?wait=delivered` holds a request before answering 202 `queued`.
    pub wait_timeout: Duration,
    /// A waiting request triggers a run now (within the job budget) instead of waiting for
    /// the schedule.
    pub allow_sync: bool,
    /// Fields pseudonymised at ingest, right after the schema check (`pseudonymise`).
    pub pseudonymise: crate::pseudonymise::Pseudonymiser,
    /// `[pipelines.fetch]`: the event rows name files whose rows are queued instead.
    pub fetch: Option<FetchConfig>,
}

/// `max_wait` unless configured.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

/// `wait_timeout` unless configured.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `wait_timeout`: a held request holds a connection.
pub const MAX_WAIT_TIMEOUT: Duration = Duration::from_secs(300);

/// The answer to a request whose rows were queued (`response`): by default 202 with
/// `{"accepted", "ignored"}`; some senders want 204, or a fixed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuccessResponse {
    /// 200, 201, 202 or 204.
    pub status: u16,
    /// A fixed body instead of the counts; never with 204.
    pub body: Option<String>,
    /// The body's `Content-Type` (default `application/json`).
    pub content_type: String,
}

impl Default for SuccessResponse {
    fn default() -> Self {
        SuccessResponse {
            status: 202,
            body: None,
            content_type: DEFAULT_RESPONSE_CONTENT_TYPE.to_owned(),
        }
    }
}

pub const DEFAULT_RESPONSE_CONTENT_TYPE: &str = "application/json";

/// The statuses a pipeline may answer with when its rows were queued.
pub const SUCCESS_STATUSES: [u16; 4] = [200, 201, 202, 204];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueConfig {
    Memory {
        max_bytes: u64,
    },
    Disk {
        dir: PathBuf,
        max_bytes: u64,
        segment_bytes: u64,
        retention: Duration,
    },
    /// A NATS JetStream stream shared by every replica (`src/queue/nats.rs`).
    Nats(NatsQueueConfig),
}

/// `queue = { kind = "nats", … }`: where the stream lives and how weir signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsQueueConfig {
    pub url: String,
    pub stream: String,
    pub replicas: usize,
    pub max_bytes: u64,
    /// Create the stream when it does not exist (else refuse to start).
    pub create: bool,
    /// Start even when NATS cannot be reached: `/readyz` answers 503 and ingest 503 until
    /// it is, instead of refusing to start.
    pub wait_for_nats: bool,
    /// How long a replica's delivery lease lasts without renewal.
    pub lease_ttl: Duration,
    /// How long a request waits for JetStream to acknowledge its rows.
    pub publish_timeout: Duration,
    /// How long delivered rows stay in the stream for replay.
    pub retention: Duration,
    pub auth: NatsAuth,
    /// A CA file to trust for TLS (`tls://` URLs).
    pub ca_file: Option<PathBuf>,
}

impl NatsQueueConfig {
    /// The stream that holds the pipeline's dead letters, beside the rows' stream (as the
    /// `{stream}_lease` and `{stream}_state` buckets are).
    pub fn dead_letter_stream(&self) -> String {
        format!("{}_dead", self.stream)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    None,
    Token(String),
    UserPassword(String, String),
    NkeySeed(String),
    CredsFile(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Run every interval.
    Every(Duration),
    /// A 6-field cron expression (seconds first), in UTC.
    Cron(String),
    /// As soon as the queued rows reach `max_rows_per_run` or `max_bytes_per_run`, or
    /// `max_wait` after the oldest queued row arrived.
    Continuous,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
            Schedule::Cron(c) => write!(f, "cron \"{c}\" (UTC)"),
            Schedule::Continuous => f.write_str("continuous"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMismatch {
    /// Drop the row, count it, answer 202.
    Ignore,
    /// Refuse the whole request with 422.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
}

impl FieldType {
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Integer => "integer",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Schema {
    pub on_mismatch: OnMismatch,
    pub required: Vec<String>,
    pub allow_extra: bool,
    /// In config order.
    pub fields: Vec<(String, FieldType)>,
}

impl Schema {
    pub fn field_type(&self, name: &str) -> Option<FieldType> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }
}

/// One CSV column: header `name`, value from a row field or a CEL expression, and the
/// Celonis type it is declared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub source: ColumnSource,
    pub typing: Typing,
    /// How the sender writes this column's values, converted at ingest to the canonical form.
    pub input: Input,
}

/// A column's input conventions (`format`, `decimal_separator`, `thousands_separator`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Input {
    /// DATE, DATETIME and TIME columns: the sender's pattern (ISO-8601 when not set).
    pub date: Option<crate::values::DateFormat>,
    /// INTEGER and FLOAT columns.
    pub number: crate::values::NumberFormat,
}

impl ColumnType {
    /// The date type this is, if it is one.
    pub fn moment(self) -> Option<crate::values::Moment> {
        use crate::values::Moment;
        match self {
            ColumnType::Date => Some(Moment::Date),
            ColumnType::DateTime => Some(Moment::DateTime),
            ColumnType::Time => Some(Moment::Time),
            _ => None,
        }
    }
}

/// A column's Celonis type (`ColumnTransport.columnType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Integer,
    Float,
    Boolean,
    Date,
    DateTime,
    Time,
}

impl ColumnType {
    /// The name Celonis uses, also the name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::String => "STRING",
            ColumnType::Integer => "INTEGER",
            ColumnType::Float => "FLOAT",
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::Date => "DATE",
            ColumnType::DateTime => "DATETIME",
            ColumnType::Time => "TIME",
        }
    }

    /// The type a schema field type gives a column by default.
    pub fn of_field(t: FieldType) -> ColumnType {
        match t {
            FieldType::String => ColumnType::String,
            FieldType::Integer => ColumnType::Integer,
            FieldType::Number => ColumnType::Float,
            FieldType::Boolean => ColumnType::Boolean,
        }
    }
}

/// What `[[pipelines.columns]]` says about a column's type; `None` takes the default (the
/// schema field's type, else STRING of the sink's `fallback_varchar_length`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Typing {
    pub ty: Option<ColumnType>,
    /// STRING only: the length in characters.
    pub length: Option<u32>,
    /// FLOAT only: the decimals.
    pub decimals: Option<u32>,
}

/// Why a field cannot be pseudonymised with `method`, if it cannot: the schema and the
/// columns (when they name any) must know it, and a token must land in a STRING column long
/// enough for it.
fn pseudonymised_field_problem(
    field: &str,
    method: &crate::pseudonymise::Method,
    schema: Option<&Schema>,
    columns: &[Column],
    sink: &SinkConfig,
) -> Option<String> {
    if field.is_empty() {
        return Some("is not a field name".into());
    }
    let in_schema = schema.and_then(|s| s.field_type(field));
    let reading: Vec<&Column> = columns
        .iter()
        .filter(|c| matches!(&c.source, ColumnSource::Field(f) if f == field))
        .collect();
    let declared = schema.is_some_and(|s| !s.fields.is_empty()) || !columns.is_empty();
    if declared && in_schema.is_none() && reading.is_empty() {
        return Some("is not a field of the schema or any column's from".into());
    }
    let SinkConfig::Celonis(celonis) = sink else {
        return None;
    };
    let key_column = celonis.keys.iter().find(|k| {
        if columns.is_empty() {
            k.as_str() == field
        } else {
            reading.iter().any(|c| &c.name == *k)
        }
    });
    if let Some(key) = key_column
        && matches!(
            method,
            crate::pseudonymise::Method::Mask | crate::pseudonymise::Method::Drop
        )
    {
        return Some(format!(
            "feeds the sink's key \"{key}\": {} would give every row the same key; use hmac-sha256, whose tokens keep keys apart",
            method.name()
        ));
    }
    let length = method.output_length()?;
    let fallback = celonis.fallback_varchar_length;
    if columns.is_empty() {
        if let Some(t) = in_schema
            && t != FieldType::String
        {
            return Some(format!(
                "is {} in the schema, but its {} token is text: declare it \"string\"",
                t.name(),
                method.name()
            ));
        }
        if fallback < length {
            return Some(format!(
                "gets a {length}-character token, longer than fallback_varchar_length = {fallback}"
            ));
        }
        return None;
    }
    for c in reading {
        let ty = c
            .typing
            .ty
            .or(in_schema.map(ColumnType::of_field))
            .unwrap_or(ColumnType::String);
        if ty != ColumnType::String {
            return Some(format!(
                "feeds column \"{}\" of type {}, but its {} token is text: set the column's type = \"STRING\"",
                c.name,
                ty.as_str(),
                method.name()
            ));
        }
        let col_length = c.typing.length.unwrap_or(fallback);
        if col_length < length {
            return Some(format!(
                "gets a {length}-character token, longer than column \"{}\" (length {col_length})",
                c.name
            ));
        }
    }
    None
}

/// The longest STRING column weir declares, in characters. Assumption: the Data Push
/// reference states no maximum; 32000 is Vertica's VARCHAR limit in characters of up to 2
/// bytes, and Celonis stores `fieldLength` characters as 4 bytes each (§3.2).
pub const MAX_STRING_LENGTH: u32 = 32000;

/// Celonis' own `fallbackVarcharLength` is 80 and crops longer strings; weir declares 255.
pub const DEFAULT_FALLBACK_VARCHAR_LENGTH: u32 = 255;

/// One column of a table as declared in `tableSchema`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDecl {
    pub name: String,
    pub ty: ColumnType,
    /// STRING: the length in characters; 0 otherwise.
    pub length: u32,
    /// FLOAT: the decimals; 0 otherwise.
    pub decimals: u32,
}

/// A table's typed columns, in CSV order: what the sink declares in `tableSchema` (and a
/// Parquet writer would use for its schema).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableSpec {
    pub columns: Vec<ColumnDecl>,
}

impl ColumnDecl {
    /// The declared column of `typing`, whose default type is `default` (from the schema).
    pub fn new(
        name: &str,
        typing: Typing,
        default: Option<FieldType>,
        fallback: u32,
    ) -> ColumnDecl {
        let ty = typing
            .ty
            .or(default.map(ColumnType::of_field))
            .unwrap_or(ColumnType::String);
        ColumnDecl {
            name: name.to_owned(),
            ty,
            length: if ty == ColumnType::String {
                typing.length.unwrap_or(fallback)
            } else {
                0
            },
            decimals: if ty == ColumnType::Float {
                typing.decimals.unwrap_or(0)
            } else {
                0
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnSource {
    /// The row field of this name (`from`).
    Field(String),
    /// A CEL expression over `row` and `pipeline` (`expr`).
    Expr(Expr),
}

impl fmt::Display for ColumnSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnSource::Field(name) => f.write_str(name),
            ColumnSource::Expr(e) => write!(f, "expr {:?}", e.source()),
        }
    }
}

#[derive(Debug, Clone)]
pub enum SinkConfig {
    Celonis(CelonisSink),
    Http(HttpSink),
}

pub use outbound::{
    ApiKeyLocation, BatchPer, BodyMode, ClientAuth, HttpAuth, HttpSink, OAuth2Config, Proxy, Text,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushMode {
    Delta,
    Replace,
}

impl PushMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PushMode::Delta => "DELTA",
            PushMode::Replace => "REPLACE",
        }
    }
}

#[derive(Debug, Clone)]
pub enum CelonisAuth {
    /// `Authorization: AppKey …`
    AppKey(Secret),
    /// `Authorization: Bearer …` (a user API key)
    ApiKey(Secret),
    /// `Authorization: Bearer …` with a token from OAuth 2.0 client credentials.
    OAuth2(OAuth2Config),
}

#[derive(Debug, Clone)]
pub struct CelonisSink {
    /// Which Celonis API a run's batch goes to.
    pub api: CelonisApi,
    /// The team's base URL, e.g. `https://myteam.eu-1.celonis.cloud`.
    pub base_url: Url,
    /// `/integration` (default) or `/data-ingestion`.
    pub api_prefix: String,
    pub data_pool_id: String,
    pub connection_id: Option<String>,
    pub target_name: String,
    pub mode: PushMode,
    pub keys: Vec<String>,
    /// With `keys`: who keeps the latest row of a key within a batch.
    pub dedupe: Dedupe,
    /// With `keys`: rows for which this is true delete their key (`row` is the row).
    pub delete_when: Option<Expr>,
    /// With `keys`: the create body's `upsertStrategy`.
    pub upsert_strategy: Option<UpsertStrategy>,
    pub auth: CelonisAuth,
    /// CSV chunks of at most `chunk_bytes`, or Parquet chunks of at most `rows_per_chunk` rows.
    pub file_type: FileType,
    pub chunk_bytes: u64,
    /// `fallbackVarcharLength`: the length of every STRING column without its own `length`.
    pub fallback_varchar_length: u32,
    pub poll_timeout: Duration,
    pub request_timeout: Duration,
    pub csv: CsvOptions,
    /// Its own `proxy`, else `[proxy]`; none: `HTTPS_PROXY` / `NO_PROXY` from the environment.
    pub proxy: Option<Proxy>,
}

/// Which Celonis API a Celonis sink delivers with (`api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CelonisApi {
    /// Data Push jobs: create, upload chunks, execute, poll (spends the team's job budget).
    #[default]
    DataPush,
    /// Continuous Batch Processing: one multipart Parquet upload per run, no job.
    Continuous,
}

impl CelonisApi {
    pub fn as_str(self) -> &'static str {
        match self {
            CelonisApi::DataPush => "data-push",
            CelonisApi::Continuous => "continuous",
        }
    }
}

/// The format of a job's chunks (`file_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    Csv,
    Parquet { rows_per_chunk: usize },
}

impl FileType {
    /// The create body's `fileType`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::Csv => "CSV",
            FileType::Parquet { .. } => "PARQUET",
        }
    }
}

/// The INTEGER column weir adds to keyed rows Celonis deduplicates (`dedupe = "server"`,
/// `api = "continuous"`): the row's queue offset, which only grows, so the highest wins.
pub const ORDER_COLUMN: &str = "weir_seq";

/// Rows per Parquet chunk when `rows_per_chunk` is not set (what pycelonis sends).
pub const DEFAULT_ROWS_PER_CHUNK: usize = 100_000;

/// Which row of a key a batch keeps when it holds several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dedupe {
    /// weir sends only the last row of each key (arrival order).
    #[default]
    Client,
    /// weir sends every row with a `weir_seq` column (the queue offset) and asks Celonis to
    /// keep the greatest (`duplicateRemovalColumn`).
    Server,
}

/// The create body's `upsertStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertStrategy {
    WithNullification,
    WithUnchangedMetadata,
}

impl UpsertStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            UpsertStrategy::WithNullification => "UPSERT_WITH_NULLIFICATION",
            UpsertStrategy::WithUnchangedMetadata => "UPSERT_WITH_UNCHANGED_METADATA",
        }
    }
}

impl CelonisSink {
    /// Jobs are budgeted per team; the team is the base URL's host and port.
    pub fn team_key(&self) -> String {
        format!(
            "{}:{}",
            self.base_url.host_str().unwrap_or_default(),
            self.base_url.port_or_known_default().unwrap_or_default()
        )
    }
}

/// How CSV files are written, and told to Celonis in `csvParsingOptions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    pub separator: u8,
    pub quote: u8,
    pub escape: u8,
    pub line_ending: LineEnding,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            separator: b',',
            quote: b'"',
            escape: b'"',
            line_ending: LineEnding::Lf,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    Lf,
    CrLf,
    Cr,
}

impl LineEnding {
    pub fn as_str(self) -> &'static str {
        match self {
            LineEnding::Lf => "\n",
            LineEnding::CrLf => "\r\n",
            LineEnding::Cr => "\r",
        }
    }
}

pub const DEFAULT_CONFIG_PATH: &str = "config/weir.toml";

/// A memory queue's `max_bytes` unless configured.
pub const MEMORY_MAX_BYTES: u64 = crate::queue::memory::DEFAULT_MAX_BYTES;

/// A pipeline's `max_bytes_per_run` unless configured.
pub const MAX_BYTES_PER_RUN: u64 = 64 << 20;

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::new(
                "",
                format!("cannot read config file {}: {e}", path.display()),
            )])
        })?;
        Config::load(&text, env)
    }

    /// Parses and validates config text. `env` resolves `${VAR}` references.
    pub fn load(text: &str, env: &HashMap<String, String>) -> Result<Config, ConfigErrors> {
        // First pass on the text itself, so syntax errors and unknown keys point at a line.
        if let Err(e) = toml::from_str::<RawConfig>(text) {
            return Err(ConfigErrors(vec![ConfigError::new("", toml_message(&e))]));
        }
        let mut tree: toml::Value = toml::from_str(text)
            .map_err(|e| ConfigErrors(vec![ConfigError::new("", toml_message(&e))]))?;
        let mut errors = Vec::new();
        env::substitute(&mut tree, "", env, &mut errors);
        let raw: RawConfig = tree.try_into().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError::new("", e.message().to_owned())])
        })?;
        let config = validate(raw, &mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    pub fn pipeline(&self, name: &str) -> Option<&PipelineConfig> {
        self.pipelines.iter().find(|p| p.name == name)
    }
}

fn toml_message(e: &toml::de::Error) -> String {
    e.to_string().trim_end().to_owned()
}

fn validate(raw: RawConfig, errors: &mut Vec<ConfigError>) -> Config {
    let mut v = Validator { errors };
    let data_dir = raw
        .data_dir
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data"));
    let s = raw.server.unwrap_or_default();
    let server = ServerConfig {
        listen: v.addr("server.listen", s.listen.as_deref(), "127.0.0.1:8080"),
        max_body_bytes: v
            .size(
                "server.max_body_bytes",
                s.max_body_bytes.as_ref(),
                1024 * 1024,
            )
            .try_into()
            .unwrap_or(usize::MAX),
        shutdown_grace: v.duration("server.shutdown_grace", s.shutdown_grace.as_deref(), 30),
        limits: v.server_limits(&s),
    };
    let admin = raw.admin.map(|a| {
        let listen = v.addr("admin.listen", a.listen.as_deref(), "127.0.0.1:9090");
        let mut tokens = Vec::new();
        for (i, t) in a.tokens.into_iter().enumerate() {
            let path = format!("admin.tokens[{i}]");
            let scope = match t.scope.as_str() {
                "read" => Scope::Read,
                "write" => Scope::Write,
                other => {
                    v.error(format!("{path}.scope"), format!("\"{other}\" is not \"read\" or \"write\""));
                    Scope::Read
                }
            };
            if t.token.len() < 16 {
                v.error(format!("{path}.token"), "must be at least 16 characters");
            }
            tokens.push(AdminToken {
                name: t.name.unwrap_or_else(|| format!("token {i}")),
                token: Secret::new(t.token),
                scope,
            });
        }
        if tokens.is_empty() {
            v.error("admin.tokens", "list at least one token: every admin route but /healthz, /readyz and /metrics needs one");
        }
        let max_connections = v.positive(
            "admin.max_connections",
            a.max_connections,
            DEFAULT_ADMIN_MAX_CONNECTIONS,
        );
        let header_read_timeout = v.duration(
            "admin.header_read_timeout",
            a.header_read_timeout.as_deref(),
            DEFAULT_ADMIN_HEADER_READ_TIMEOUT_SECS,
        );
        if header_read_timeout.is_zero() {
            v.error("admin.header_read_timeout", "must be longer than 0s");
        }
        let mut max_header_bytes = v.size(
            "admin.max_header_bytes",
            a.max_header_bytes.as_ref(),
            DEFAULT_ADMIN_MAX_HEADER_BYTES,
        );
        if max_header_bytes < MIN_ADMIN_HEADER_BYTES {
            v.error(
                "admin.max_header_bytes",
                format!("{max_header_bytes} is below the minimum of {MIN_ADMIN_HEADER_BYTES}"),
            );
            max_header_bytes = MIN_ADMIN_HEADER_BYTES;
        }
        AdminConfig {
            listen,
            tokens,
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            header_read_timeout,
            max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
        }
    });
    let emulator = raw.emulator.map(|e| EmulatorSettings {
        listen: v.addr("emulator.listen", e.listen.as_deref(), "127.0.0.1:8900"),
        database: e.database.map(PathBuf::from),
        app_key: e.app_key.map(Secret::new),
        oauth_clients: v.oauth_clients("emulator.oauth_clients", e.oauth_clients),
        token_ttl: v.duration("emulator.token_ttl", e.token_ttl.as_deref(), 3600),
        pools: e.pools.map(|pools| v.pools("emulator.pools", pools)),
        finops: e.finops.map(|f| f.packages.unwrap_or(1)),
    });
    let celonis = match raw.celonis {
        Some(c) => CelonisLimits {
            jobs_per_hour: v.positive_u32("celonis.jobs_per_hour", c.jobs_per_hour, 250),
            jobs_per_second: v.positive_u32("celonis.jobs_per_second", c.jobs_per_second, 10),
            uploads_per_second: v.positive_u32(
                "celonis.uploads_per_second",
                c.uploads_per_second,
                10,
            ),
        },
        None => CelonisLimits::default(),
    };
    let mut names = HashSet::new();
    let mut pipelines = Vec::new();
    // Each pipeline's spool or state directory, with the key it comes from.
    let mut dirs: Vec<(PathBuf, String)> = Vec::new();
    // Which pipelines set `unrouted` themselves (it only applies to a shared hook).
    let unrouted_set: Vec<bool> = raw.pipelines.iter().map(|p| p.unrouted.is_some()).collect();
    for (i, p) in raw.pipelines.into_iter().enumerate() {
        let path = format!("pipelines[{i}]");
        let unique = names.insert(p.name.clone());
        if !unique {
            v.error(
                format!("{path}.name"),
                format!("\"{}\" is used by an earlier pipeline", p.name),
            );
        }
        let dir_key = match &p.queue {
            Some(q) if q.dir.is_some() => format!("{path}.queue.dir"),
            _ => format!("{path}.name"),
        };
        let pipeline = v.pipeline(&path, p, &data_dir);
        let dir = lexical(&pipeline.state_dir);
        if let Some((_, earlier)) = dirs.iter().find(|(d, _)| *d == dir) {
            if unique {
                v.error(
                    &dir_key,
                    format!(
                        "resolves to {}, the spool or state directory of {earlier}; each pipeline needs its own directory",
                        pipeline.state_dir.display()
                    ),
                );
            }
        } else {
            dirs.push((dir, dir_key));
        }
        pipelines.push(pipeline);
    }
    shared_hooks(&mut v, &pipelines, &unrouted_set);
    // A sink without its own proxy goes through `[proxy]`.
    let proxy = raw.proxy.and_then(|p| v.proxy("proxy", p));
    if let Some(global) = &proxy {
        for p in &mut pipelines {
            match &mut p.sink {
                SinkConfig::Celonis(c) if c.proxy.is_none() => c.proxy = Some(global.clone()),
                SinkConfig::Http(h) if h.proxy.is_none() => h.proxy = Some(global.clone()),
                _ => {}
            }
            if let Some(f) = &mut p.fetch
                && f.proxy.is_none()
            {
                f.proxy = Some(global.clone());
            }
        }
    }
    let sources = v.sources(raw.sources, &pipelines, proxy.as_ref());
    Config {
        data_dir,
        server,
        admin,
        emulator,
        celonis,
        proxy,
        pipelines,
        sources,
    }
}

/// Pipelines that share a hook: the first (in config order) checks the sender and answers,
/// so the others may not set `allow_ips`, `auth`, `rate_limit`, `response` or `rows`; and
/// they must agree on `unrouted`.
fn shared_hooks(v: &mut Validator<'_>, pipelines: &[PipelineConfig], unrouted_set: &[bool]) {
    for (i, p) in pipelines.iter().enumerate() {
        let path = format!("pipelines[{i}]");
        let group: Vec<usize> = (0..pipelines.len())
            .filter(|&j| pipelines[j].hook == p.hook)
            .collect();
        if group.len() < 2 {
            if unrouted_set.get(i).copied().unwrap_or(false) {
                v.error(
                    format!("{path}.unrouted"),
                    "only applies to pipelines that share a hook",
                );
            }
            continue;
        }
        let lead = &pipelines[group[0]];
        if p.fetch.is_some() {
            v.error(
                format!("{path}.fetch"),
                format!(
                    "pipeline {} shares hook \"{}\": fetch applies to a pipeline with a hook of its own",
                    p.name, p.hook
                ),
            );
        }
        if group[0] != i {
            for (key, set) in [
                ("allow_ips", p.allow_ips.is_some()),
                ("auth", p.auth.is_some()),
                ("rate_limit", p.rate_limit.is_some()),
                ("response", p.response != SuccessResponse::default()),
                ("rows", p.rows.is_some()),
            ] {
                if set {
                    v.error(
                        format!("{path}.{key}"),
                        format!(
                            "pipeline {} shares hook \"{}\" with {}, whose {key} applies to the hook: set it there only",
                            p.name, p.hook, lead.name
                        ),
                    );
                }
            }
            if p.unrouted_reject != lead.unrouted_reject {
                v.error(
                    format!("{path}.unrouted"),
                    format!(
                        "pipelines sharing hook \"{}\" must agree on unrouted ({} says {})",
                        p.hook,
                        lead.name,
                        if lead.unrouted_reject {
                            "reject"
                        } else {
                            "accept"
                        }
                    ),
                );
            }
        }
    }
}

/// `path` with `.` left out and `..` applied to the part before it, without touching the
/// file system (the directories may not exist yet).
fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

struct Validator<'a> {
    errors: &'a mut Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    /// Data pool ids: each a UUID, kept lowercase.
    fn pools(&mut self, path: &str, pools: Vec<String>) -> Vec<String> {
        let mut valid = Vec::with_capacity(pools.len());
        for (i, pool) in pools.into_iter().enumerate() {
            if uuid::Uuid::parse_str(&pool).is_ok() {
                valid.push(pool.to_lowercase());
            } else {
                self.error(
                    format!("{path}[{i}]"),
                    format!("{pool:?} is not a data pool id (a UUID)"),
                );
            }
        }
        valid
    }

    fn addr(&mut self, path: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        text.parse().unwrap_or_else(|_| {
            self.error(
                path,
                format!("\"{text}\" is not a socket address like 127.0.0.1:8080"),
            );
            default.parse().expect("default addresses parse")
        })
    }

    fn duration(&mut self, path: &str, value: Option<&str>, default_secs: u64) -> Duration {
        match value {
            None => Duration::from_secs(default_secs),
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) => d,
                Err(_) => {
                    self.error(
                        path,
                        format!("\"{text}\" is not a duration like \"30s\" or \"5m\""),
                    );
                    Duration::from_secs(default_secs)
                }
            },
        }
    }

    fn size(&mut self, path: &str, value: Option<&ByteSize>, default: u64) -> u64 {
        let parsed = match value {
            None => return default,
            Some(ByteSize::Bytes(n)) => u64::try_from(*n).ok().filter(|&n| n > 0),
            Some(ByteSize::Text(t)) => parse_size(t).filter(|&n| n > 0),
        };
        parsed.unwrap_or_else(|| {
            let shown = match value {
                Some(ByteSize::Bytes(n)) => n.to_string(),
                Some(ByteSize::Text(t)) => format!("\"{t}\""),
                None => String::new(),
            };
            self.error(
                path,
                format!("{shown} is not a positive size like 1048576 or \"64MiB\""),
            );
            default
        })
    }

    fn positive(&mut self, path: &str, value: Option<i64>, default: u64) -> u64 {
        match value {
            None => default,
            Some(n) if n > 0 => n as u64,
            Some(n) => {
                self.error(path, format!("{n} must be greater than 0"));
                default
            }
        }
    }

    fn positive_u32(&mut self, path: &str, value: Option<i64>, default: u32) -> u32 {
        let n = self.positive(path, value, default as u64);
        u32::try_from(n).unwrap_or_else(|_| {
            self.error(path, format!("{n} is too large"));
            default
        })
    }

    fn pipeline(&mut self, path: &str, p: RawPipeline, data_dir: &Path) -> PipelineConfig {
        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.error(
                format!("{path}.name"),
                format!(
                    "\"{}\" may only contain letters, digits, '_' and '-'",
                    p.name
                ),
            );
        }
        let allow_ips = p.allow_ips.map(|ips| {
            ips.iter()
                .enumerate()
                .filter_map(|(j, text)| match parse_net(text) {
                    Some(net) => Some(net),
                    None => {
                        self.error(
                            format!("{path}.allow_ips[{j}]"),
                            format!("\"{text}\" is not a CIDR"),
                        );
                        None
                    }
                })
                .collect()
        });
        let queue_capacity =
            self.positive(&format!("{path}.queue_capacity"), p.queue_capacity, 100_000);
        let queue = self.queue(path, p.queue, &p.name, data_dir, p.retention.as_deref());
        let drain_on_shutdown = p.drain_on_shutdown.unwrap_or(false);
        if drain_on_shutdown && !matches!(queue, QueueConfig::Memory { .. }) {
            self.error(
                format!("{path}.drain_on_shutdown"),
                "only applies to the memory queue: the disk spool and NATS keep their rows across restarts",
            );
        }
        let state_dir = match &queue {
            QueueConfig::Disk { dir, .. } => dir.clone(),
            QueueConfig::Memory { .. } | QueueConfig::Nats(_) => data_dir.join(&p.name),
        };
        let schedule = self.schedule(&format!("{path}.schedule"), p.schedule.as_deref());
        let max_rows_per_run = self.positive(
            &format!("{path}.max_rows_per_run"),
            p.max_rows_per_run,
            10_000,
        ) as usize;
        let max_wait = self.duration(
            &format!("{path}.max_wait"),
            p.max_wait.as_deref(),
            DEFAULT_MAX_WAIT.as_secs(),
        );
        if p.max_wait.is_some() {
            if schedule != Schedule::Continuous {
                self.error(
                    format!("{path}.max_wait"),
                    "only applies to schedule = \"continuous\"",
                );
            } else if max_wait < Duration::from_millis(100) {
                self.error(format!("{path}.max_wait"), "must be at least 100ms");
            }
        }
        let max_bytes_per_run = self.size(
            &format!("{path}.max_bytes_per_run"),
            p.max_bytes_per_run.as_ref(),
            MAX_BYTES_PER_RUN,
        );
        let max_columns =
            self.positive(&format!("{path}.max_columns"), p.max_columns, 1000) as usize;
        let retry_max_interval = self.duration(
            &format!("{path}.retry_max_interval"),
            p.retry_max_interval.as_deref(),
            600,
        );
        // The default first retry follows a shorter cap the user set, so setting only
        // `retry_max_interval` never fails on a key the user did not write.
        let retry_initial = match p.retry_initial.as_deref() {
            None => Duration::from_secs(5).min(retry_max_interval),
            Some(_) => self.duration(
                &format!("{path}.retry_initial"),
                p.retry_initial.as_deref(),
                5,
            ),
        };
        let suspend_after = self.duration(
            &format!("{path}.suspend_after"),
            p.suspend_after.as_deref(),
            8 * 3600,
        );
        let retention = self.duration(
            &format!("{path}.retention"),
            p.retention.as_deref(),
            7 * 86_400,
        );
        if retry_initial > retry_max_interval {
            self.error(
                format!("{path}.retry_initial"),
                "must not be longer than retry_max_interval",
            );
        }
        let schema = p.schema.map(|s| self.schema(&format!("{path}.schema"), s));
        let mut columns = Vec::new();
        let mut column_names = HashSet::new();
        for (j, c) in p.columns.into_iter().enumerate() {
            let cpath = format!("{path}.columns[{j}]");
            if c.name.is_empty() {
                self.error(format!("{cpath}.name"), "must not be empty");
            } else if !column_names.insert(c.name.clone()) {
                self.error(
                    format!("{cpath}.name"),
                    format!("\"{}\" is already a column", c.name),
                );
            }
            let source = match (c.from.clone(), c.expr.clone()) {
                (Some(from), None) => {
                    if let Some(schema) = &schema
                        && schema.field_type(&from).is_none()
                    {
                        self.error(
                            format!("{cpath}.from"),
                            format!("\"{from}\" is not a field of the pipeline's schema"),
                        );
                    }
                    ColumnSource::Field(from)
                }
                (None, Some(text)) => {
                    match self.expr(&format!("{cpath}.expr"), &text, &["row", "pipeline"]) {
                        Some(e) => ColumnSource::Expr(e),
                        None => continue,
                    }
                }
                (None, None) => {
                    self.error(
                        format!("{cpath}.from"),
                        "is required: the row field this column is read from (or set expr)",
                    );
                    continue;
                }
                (Some(_), Some(_)) => {
                    self.error(format!("{cpath}.expr"), "set from or expr, not both");
                    continue;
                }
            };
            let typing = self.typing(&cpath, &c, &source, schema.as_ref());
            let input = self.input(&cpath, &c, &source, schema.as_ref(), typing);
            columns.push(Column {
                name: c.name,
                source,
                typing,
                input,
            });
        }
        let filter = p
            .filter
            .and_then(|f| self.expr(&format!("{path}.filter"), &f, &["row", "pipeline"]));
        let rows = p
            .rows
            .and_then(|r| self.expr(&format!("{path}.rows"), &r, &["body"]));
        let sink = self.sink(&format!("{path}.sink"), p.sink, &columns, schema.as_ref());
        let auth = p.auth.and_then(|a| self.auth(&format!("{path}.auth"), a));
        let rate_limit = p
            .rate_limit
            .and_then(|r| self.rate_limit(&format!("{path}.rate_limit"), &r));
        let response = p
            .response
            .map(|r| self.response(&format!("{path}.response"), r))
            .unwrap_or_default();
        let wait_timeout = self.duration(
            &format!("{path}.wait_timeout"),
            p.wait_timeout.as_deref(),
            DEFAULT_WAIT_TIMEOUT.as_secs(),
        );
        if wait_timeout.is_zero() || wait_timeout > MAX_WAIT_TIMEOUT {
            self.error(
                format!("{path}.wait_timeout"),
                "must be longer than 0s and at most 5m",
            );
        }
        let pseudonymise =
            self.pseudonymise(path, p.pseudonymise, schema.as_ref(), &columns, &sink);
        let hook = match p.hook {
            None => p.name.clone(),
            Some(h) => {
                if h.is_empty()
                    || !h
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    self.error(
                        format!("{path}.hook"),
                        format!("\"{h}\" may only contain letters, digits, '_' and '-'"),
                    );
                }
                h
            }
        };
        let unrouted_reject = match p.unrouted.as_deref() {
            None | Some("accept") => false,
            Some("reject") => true,
            Some(other) => {
                self.error(
                    format!("{path}.unrouted"),
                    format!("\"{other}\" is not a choice: use \"accept\" or \"reject\""),
                );
                false
            }
        };
        let fetch = p.fetch.map(|f| self.fetch(&format!("{path}.fetch"), f));
        PipelineConfig {
            fetch,
            name: p.name,
            hook,
            unrouted_reject,
            allow_ips,
            queue_capacity,
            queue,
            schedule,
            max_rows_per_run,
            max_wait,
            max_bytes_per_run,
            max_columns,
            retry_initial,
            retry_max_interval,
            suspend_after,
            retention,
            state_dir,
            drain_on_shutdown,
            schema,
            rows,
            filter,
            columns,
            sink,
            auth,
            rate_limit,
            response,
            wait_timeout: wait_timeout.min(MAX_WAIT_TIMEOUT),
            allow_sync: p.allow_sync.unwrap_or(false),
            pseudonymise,
        }
    }

    /// `pseudonymise`: each rule's fields and method. A field must be one the schema or a
    /// column knows (when they name any), and, unless dropped, must land in a STRING column
    /// long enough for its token, so Celonis never crops or refuses one.
    fn pseudonymise(
        &mut self,
        path: &str,
        raw: Option<raw::RawPseudonymiseRules>,
        schema: Option<&Schema>,
        columns: &[Column],
        sink: &SinkConfig,
    ) -> crate::pseudonymise::Pseudonymiser {
        use crate::pseudonymise::{Method, Pseudonymiser};
        let (rules, many) = match raw {
            None => return Pseudonymiser::default(),
            Some(raw::RawPseudonymiseRules::Many(r)) => (r, true),
            Some(raw::RawPseudonymiseRules::One(r)) => (vec![r], false),
        };
        let mut out: Vec<(String, Method)> = Vec::new();
        for (i, r) in rules.into_iter().enumerate() {
            let rpath = if many {
                format!("{path}.pseudonymise[{i}]")
            } else {
                format!("{path}.pseudonymise")
            };
            let method = match r.method.as_deref().unwrap_or("hmac-sha256") {
                "hmac-sha256" => match r.key.as_deref() {
                    None => {
                        self.error(
                            format!("{rpath}.key"),
                            "is required for hmac-sha256: a secret of at least 16 characters, e.g. key = \"${PSEUDO_KEY}\"",
                        );
                        continue;
                    }
                    Some(k) if k.chars().count() < 16 => {
                        self.error(
                            format!("{rpath}.key"),
                            "must be at least 16 characters: a short key lets anyone test guesses",
                        );
                        continue;
                    }
                    Some(k) => Method::HmacSha256(Secret::new(k)),
                },
                "sha256" => match r.salt.as_deref() {
                    None | Some("") => {
                        self.error(
                            format!("{rpath}.salt"),
                            "is required for sha256 (or use method = \"hmac-sha256\" with a key)",
                        );
                        continue;
                    }
                    Some(salt) => Method::Sha256 {
                        salt: Secret::new(salt),
                    },
                },
                "mask" => Method::Mask,
                "drop" => Method::Drop,
                other => {
                    self.error(
                        format!("{rpath}.method"),
                        format!(
                            "\"{other}\" is not a method: use \"hmac-sha256\", \"sha256\", \"mask\" or \"drop\""
                        ),
                    );
                    continue;
                }
            };
            if r.key.is_some() && !matches!(method, Method::HmacSha256(_)) {
                self.error(
                    format!("{rpath}.key"),
                    format!(
                        "only applies to method = \"hmac-sha256\", not \"{}\"",
                        method.name()
                    ),
                );
            }
            if r.salt.is_some() && !matches!(method, Method::Sha256 { .. }) {
                self.error(
                    format!("{rpath}.salt"),
                    format!(
                        "only applies to method = \"sha256\", not \"{}\"",
                        method.name()
                    ),
                );
            }
            if r.fields.is_empty() {
                self.error(format!("{rpath}.fields"), "names no field");
            }
            for field in r.fields {
                let fpath = format!("{rpath}.fields");
                if let Some(problem) =
                    pseudonymised_field_problem(&field, &method, schema, columns, sink)
                {
                    self.error(fpath, format!("\"{field}\" {problem}"));
                    continue;
                }
                out.push((field, method.clone()));
            }
        }
        match Pseudonymiser::new(out) {
            Ok(p) => p,
            Err(field) => {
                self.error(
                    format!("{path}.pseudonymise"),
                    format!("field \"{field}\" is given twice"),
                );
                Pseudonymiser::default()
            }
        }
    }

    fn response(&mut self, path: &str, r: raw::RawResponse) -> SuccessResponse {
        let mut out = SuccessResponse::default();
        if let Some(status) = r.status {
            match u16::try_from(status)
                .ok()
                .filter(|s| SUCCESS_STATUSES.contains(s))
            {
                Some(s) => out.status = s,
                None => self.error(
                    format!("{path}.status"),
                    format!("{status} is not one of 200, 201, 202 or 204"),
                ),
            }
        }
        if r.body.is_some() && out.status == 204 {
            self.error(
                format!("{path}.body"),
                "a 204 No Content answer has no body: remove body or use another status",
            );
        }
        match (&r.body, r.content_type) {
            (_, None) => {}
            (None, Some(_)) => self.error(
                format!("{path}.content_type"),
                "only applies with body: the counts are always application/json",
            ),
            (Some(_), Some(ct)) => {
                let printable = !ct.is_empty()
                    && ct.contains('/')
                    && ct.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
                if printable {
                    out.content_type = ct;
                } else {
                    self.error(
                        format!("{path}.content_type"),
                        format!("\"{ct}\" is not a media type like \"application/json\""),
                    );
                }
            }
        }
        out.body = r.body.filter(|_| out.status != 204);
        out
    }

    fn queue(
        &mut self,
        path: &str,
        raw: Option<raw::RawQueue>,
        name: &str,
        data_dir: &Path,
        pipeline_retention: Option<&str>,
    ) -> QueueConfig {
        let Some(q) = raw else {
            return QueueConfig::Memory {
                max_bytes: MEMORY_MAX_BYTES,
            };
        };
        let qpath = format!("{path}.queue");
        if q.kind != "nats" {
            for (key, set) in [
                ("url", q.url.is_some()),
                ("stream", q.stream.is_some()),
                ("replicas", q.replicas.is_some()),
                ("create", q.create.is_some()),
                ("wait_for_nats", q.wait_for_nats.is_some()),
                ("lease_ttl", q.lease_ttl.is_some()),
                ("publish_timeout", q.publish_timeout.is_some()),
                ("token", q.token.is_some()),
                ("user", q.user.is_some()),
                ("password", q.password.is_some()),
                ("nkey_seed", q.nkey_seed.is_some()),
                ("creds_file", q.creds_file.is_some()),
                ("ca_file", q.ca_file.is_some()),
            ] {
                if set {
                    self.error(format!("{qpath}.{key}"), "only applies to kind = \"nats\"");
                }
            }
        }
        match q.kind.as_str() {
            "nats" => QueueConfig::Nats(self.nats_queue(&qpath, q, name, pipeline_retention)),
            "memory" => {
                for (key, set) in [
                    ("dir", q.dir.is_some()),
                    ("segment_bytes", q.segment_bytes.is_some()),
                    ("retention", q.retention.is_some()),
                ] {
                    if set {
                        self.error(format!("{qpath}.{key}"), "only applies to kind = \"disk\"");
                    }
                }
                let max_bytes = self.size(
                    &format!("{qpath}.max_bytes"),
                    q.max_bytes.as_ref(),
                    MEMORY_MAX_BYTES,
                );
                QueueConfig::Memory { max_bytes }
            }
            "disk" => QueueConfig::Disk {
                dir: q
                    .dir
                    .map(PathBuf::from)
                    .unwrap_or_else(|| data_dir.join(name)),
                max_bytes: self.size(&format!("{qpath}.max_bytes"), q.max_bytes.as_ref(), 1 << 30),
                segment_bytes: self.size(
                    &format!("{qpath}.segment_bytes"),
                    q.segment_bytes.as_ref(),
                    64 << 20,
                ),
                retention: self.duration(
                    &format!("{qpath}.retention"),
                    q.retention.as_deref().or(pipeline_retention),
                    7 * 86_400,
                ),
            },
            other => {
                self.error(
                    format!("{qpath}.kind"),
                    format!(
                        "\"{other}\" is not a queue kind: use \"memory\", \"disk\" or \"nats\""
                    ),
                );
                QueueConfig::Memory {
                    max_bytes: MEMORY_MAX_BYTES,
                }
            }
        }
    }

    fn nats_queue(
        &mut self,
        qpath: &str,
        q: raw::RawQueue,
        name: &str,
        pipeline_retention: Option<&str>,
    ) -> NatsQueueConfig {
        for (key, set) in [
            ("dir", q.dir.is_some()),
            ("segment_bytes", q.segment_bytes.is_some()),
        ] {
            if set {
                self.error(
                    format!("{qpath}.{key}"),
                    "does not apply to kind = \"nats\": the stream holds the rows",
                );
            }
        }
        let url = q.url.unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
        if !url.split(',').all(|u| {
            let u = u.trim();
            ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| u.starts_with(s) && u.len() > s.len())
        }) {
            self.error(
                format!("{qpath}.url"),
                format!("\"{url}\" is not a NATS URL: use nats://host:port (or tls://; several joined by commas)"),
            );
        }
        let stream = q.stream.unwrap_or_else(|| {
            format!(
                "WEIR_{}",
                name.replace(
                    |c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-',
                    "_"
                )
            )
        });
        if stream.is_empty()
            || !stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.error(
                format!("{qpath}.stream"),
                format!("\"{stream}\" is not a stream name: use letters, digits, _ and -"),
            );
        }
        let replicas = q.replicas.unwrap_or(1);
        if !(1..=5).contains(&replicas) {
            self.error(
                format!("{qpath}.replicas"),
                format!("{replicas} replicas: JetStream keeps 1 to 5 copies of a stream"),
            );
        }
        let secret = |v: &Option<String>| v.as_ref().is_some_and(|s| !s.is_empty());
        let methods = [
            secret(&q.token),
            secret(&q.user) || secret(&q.password),
            secret(&q.nkey_seed),
            secret(&q.creds_file),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            self.error(
                qpath.to_owned(),
                "sign in one way: token, user and password, nkey_seed or creds_file",
            );
        }
        let auth = if let Some(t) = q.token.filter(|t| !t.is_empty()) {
            NatsAuth::Token(t)
        } else if q.user.is_some() || q.password.is_some() {
            match (q.user, q.password) {
                (Some(u), Some(p)) => NatsAuth::UserPassword(u, p),
                (None, _) => {
                    self.error(format!("{qpath}.user"), "is needed with password");
                    NatsAuth::None
                }
                (_, None) => {
                    self.error(format!("{qpath}.password"), "is needed with user");
                    NatsAuth::None
                }
            }
        } else if let Some(seed) = q.nkey_seed.filter(|s| !s.is_empty()) {
            if !seed.starts_with("SU") {
                self.error(
                    format!("{qpath}.nkey_seed"),
                    "is not a user NKey seed (it starts with SU)",
                );
            }
            NatsAuth::NkeySeed(seed)
        } else if let Some(f) = q.creds_file.filter(|f| !f.is_empty()) {
            NatsAuth::CredsFile(PathBuf::from(f))
        } else {
            NatsAuth::None
        };
        let lease_ttl = self.duration(&format!("{qpath}.lease_ttl"), q.lease_ttl.as_deref(), 15);
        if lease_ttl < Duration::from_secs(1) {
            self.error(format!("{qpath}.lease_ttl"), "must be at least 1s");
        }
        NatsQueueConfig {
            url,
            stream,
            replicas: replicas as usize,
            max_bytes: self.size(&format!("{qpath}.max_bytes"), q.max_bytes.as_ref(), 1 << 30),
            create: q.create.unwrap_or(true),
            wait_for_nats: q.wait_for_nats.unwrap_or(false),
            lease_ttl,
            publish_timeout: self.duration(
                &format!("{qpath}.publish_timeout"),
                q.publish_timeout.as_deref(),
                5,
            ),
            retention: self.duration(
                &format!("{qpath}.retention"),
                q.retention.as_deref().or(pipeline_retention),
                7 * 86_400,
            ),
            auth,
            ca_file: q.ca_file.map(PathBuf::from),
        }
    }

    fn schedule(&mut self, path: &str, value: Option<&str>) -> Schedule {
        let text = value.unwrap_or("5m").trim();
        if text == "continuous" {
            return Schedule::Continuous;
        }
        if let Ok(d) = humantime::parse_duration(text) {
            if d < Duration::from_secs(1) {
                self.error(
                    path,
                    format!("\"{text}\" is shorter than the 1s the scheduler can keep"),
                );
            }
            return Schedule::Every(d);
        }
        if text.split_whitespace().count() == 6 {
            let probe = tokio_cron_scheduler::Job::new_async(text, |_, _| Box::pin(async {}));
            if probe.is_ok() {
                return Schedule::Cron(text.to_owned());
            }
            self.error(path, format!("\"{text}\" is not a valid cron expression"));
        } else {
            self.error(
                path,
                format!(
                    "\"{text}\" is neither an interval like \"5m\", a 6-field cron expression like \"0 */5 * * * *\", nor \"continuous\""
                ),
            );
        }
        Schedule::Every(Duration::from_secs(300))
    }

    fn schema(&mut self, path: &str, s: raw::RawSchema) -> Schema {
        let on_mismatch = match s.on_mismatch.as_deref() {
            None | Some("reject") => OnMismatch::Reject,
            Some("ignore") => OnMismatch::Ignore,
            Some(other) => {
                self.error(
                    format!("{path}.on_mismatch"),
                    format!("\"{other}\" is not \"ignore\" or \"reject\""),
                );
                OnMismatch::Reject
            }
        };
        let mut fields = Vec::new();
        for (name, ty) in s.fields {
            let ty = match ty.as_str() {
                Some("string") => FieldType::String,
                Some("integer") => FieldType::Integer,
                Some("number") => FieldType::Number,
                Some("boolean") => FieldType::Boolean,
                _ => {
                    self.error(
                        format!("{path}.fields.{name}"),
                        format!("{ty} is not a type: use \"string\", \"integer\", \"number\" or \"boolean\""),
                    );
                    continue;
                }
            };
            fields.push((name, ty));
        }
        let allow_extra = s.allow_extra.unwrap_or(true);
        for (j, r) in s.required.iter().enumerate() {
            if !fields.is_empty() && !fields.iter().any(|(n, _)| n == r) {
                self.error(
                    format!("{path}.required[{j}]"),
                    format!("\"{r}\" is not in schema.fields"),
                );
            }
        }
        if !allow_extra && fields.is_empty() {
            self.error(
                format!("{path}.allow_extra"),
                "is false but schema.fields lists no field, so every row would mismatch",
            );
        }
        Schema {
            on_mismatch,
            required: s.required,
            allow_extra,
            fields,
        }
    }

    fn sink(
        &mut self,
        path: &str,
        s: RawSink,
        columns: &[Column],
        schema: Option<&Schema>,
    ) -> SinkConfig {
        match s.kind.as_str() {
            "celonis" => {}
            "http" => return SinkConfig::Http(self.http_sink(path, s)),
            other => self.error(
                format!("{path}.kind"),
                format!("\"{other}\" is not a sink kind: use \"celonis\" or \"http\""),
            ),
        }
        self.only_for_http(path, &s);
        let data_push_only = [
            ("api_prefix", s.api_prefix.is_some()),
            ("dedupe", s.dedupe.is_some()),
            ("delete_when", s.delete_when.is_some()),
            ("upsert_strategy", s.upsert_strategy.is_some()),
            ("poll_timeout", s.poll_timeout.is_some()),
            ("rows_per_chunk", s.rows_per_chunk.is_some()),
        ];
        let base_url = match (&s.url, &s.team, &s.cluster) {
            (Some(url), None, None) => match Url::parse(url) {
                Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() => u,
                _ => {
                    self.error(
                        format!("{path}.url"),
                        format!("\"{url}\" is not an http(s) URL"),
                    );
                    placeholder_url()
                }
            },
            (None, Some(team), Some(cluster)) => {
                let text = format!("https://{team}.{cluster}.celonis.cloud");
                Url::parse(&text).unwrap_or_else(|_| {
                    self.error(
                        format!("{path}.team"),
                        format!("\"{text}\" is not a valid URL"),
                    );
                    placeholder_url()
                })
            }
            (None, _, _) => {
                self.error(path, "set either url, or team and cluster");
                placeholder_url()
            }
            (Some(_), _, _) => {
                self.error(
                    format!("{path}.url"),
                    "set either url, or team and cluster, not both",
                );
                placeholder_url()
            }
        };
        let api_prefix = match s.api_prefix.as_deref() {
            None => "/integration".to_owned(),
            Some(p @ ("/integration" | "/data-ingestion")) => p.to_owned(),
            Some(other) => {
                self.error(
                    format!("{path}.api_prefix"),
                    format!("\"{other}\" is not \"/integration\" or \"/data-ingestion\""),
                );
                "/integration".to_owned()
            }
        };
        let data_pool_id = self.required_id(&format!("{path}.data_pool_id"), s.data_pool_id);
        let target_name = s.target_name.unwrap_or_else(|| {
            self.error(
                format!("{path}.target_name"),
                "is required: the Celonis table to push to",
            );
            String::new()
        });
        let mode = match s.mode.as_deref() {
            None | Some("DELTA") => PushMode::Delta,
            Some("REPLACE") => PushMode::Replace,
            Some(other) => {
                self.error(
                    format!("{path}.mode"),
                    format!("\"{other}\" is not \"DELTA\" or \"REPLACE\""),
                );
                PushMode::Delta
            }
        };
        let keys = s.keys.clone().unwrap_or_default();
        let known: Option<Vec<&str>> = if !columns.is_empty() {
            Some(columns.iter().map(|c| c.name.as_str()).collect())
        } else {
            schema
                .filter(|s| !s.fields.is_empty())
                .map(|s| s.fields.iter().map(|(n, _)| n.as_str()).collect())
        };
        for (j, k) in keys.iter().enumerate() {
            if let Some(known) = &known
                && !known.contains(&k.as_str())
            {
                self.error(
                    format!("{path}.keys[{j}]"),
                    format!("\"{k}\" is not one of the CSV columns"),
                );
            }
        }
        if mode == PushMode::Replace && !keys.is_empty() {
            self.error(
                format!("{path}.keys"),
                "keys only apply to mode = \"DELTA\"",
            );
        }
        let dedupe = match s.dedupe.as_deref() {
            None | Some("client") => Dedupe::Client,
            Some("server") => Dedupe::Server,
            Some(other) => {
                self.error(
                    format!("{path}.dedupe"),
                    format!("\"{other}\" is not \"client\" or \"server\""),
                );
                Dedupe::Client
            }
        };
        if dedupe == Dedupe::Server && !keys.is_empty() {
            self.order_column_free(path, columns, schema, "dedupe = \"server\"");
        }
        let delete_when = s
            .delete_when
            .as_deref()
            .and_then(|src| self.expr(&format!("{path}.delete_when"), src, &["row"]));
        let upsert_strategy = match s.upsert_strategy.as_deref() {
            None => None,
            Some("UPSERT_WITH_NULLIFICATION") => Some(UpsertStrategy::WithNullification),
            Some("UPSERT_WITH_UNCHANGED_METADATA") => Some(UpsertStrategy::WithUnchangedMetadata),
            Some(other) => {
                self.error(
                    format!("{path}.upsert_strategy"),
                    format!(
                        "\"{other}\" is not \"UPSERT_WITH_NULLIFICATION\" or \"UPSERT_WITH_UNCHANGED_METADATA\""
                    ),
                );
                None
            }
        };
        for (key, set) in [
            ("dedupe", s.dedupe.is_some()),
            ("delete_when", s.delete_when.is_some()),
            ("upsert_strategy", s.upsert_strategy.is_some()),
        ] {
            if !set {
                continue;
            }
            if mode == PushMode::Replace {
                self.error(
                    format!("{path}.{key}"),
                    "only applies to mode = \"DELTA\" with keys",
                );
            } else if keys.is_empty() {
                self.error(
                    format!("{path}.{key}"),
                    "needs keys: it works per key (set keys = [\"...\"])",
                );
            }
        }
        let api = match s.api.as_deref() {
            None | Some("data-push") => CelonisApi::DataPush,
            Some("continuous") => CelonisApi::Continuous,
            Some(other) => {
                self.error(
                    format!("{path}.api"),
                    format!("\"{other}\" is not \"data-push\" or \"continuous\""),
                );
                CelonisApi::DataPush
            }
        };
        if api == CelonisApi::Continuous {
            self.continuous_sink(path, &data_push_only, mode, &keys, columns, schema);
        }
        let auth = match (s.app_key, s.api_key, s.auth) {
            (Some(k), None, None) => CelonisAuth::AppKey(Secret::new(k)),
            (None, Some(k), None) => CelonisAuth::ApiKey(Secret::new(k)),
            (None, None, Some(a)) => {
                let default_token_url = Url::parse(&format!(
                    "{}/oauth2/token",
                    base_url.as_str().trim_end_matches('/')
                ))
                .ok();
                self.celonis_oauth(&format!("{path}.auth"), a, default_token_url)
            }
            (None, None, None) => {
                self.error(path, "set app_key, api_key or auth");
                CelonisAuth::AppKey(Secret::new(""))
            }
            _ => {
                self.error(
                    format!("{path}.api_key"),
                    "set only one of app_key, api_key and auth",
                );
                CelonisAuth::AppKey(Secret::new(""))
            }
        };
        let chunk_bytes = self.size(
            &format!("{path}.chunk_bytes"),
            s.chunk_bytes.as_ref(),
            64 << 20,
        );
        if chunk_bytes > 1 << 30 {
            self.error(
                format!("{path}.chunk_bytes"),
                "Celonis accepts chunks of at most 1 GiB",
            );
        }
        let poll_timeout = self.duration(
            &format!("{path}.poll_timeout"),
            s.poll_timeout.as_deref(),
            600,
        );
        let request_timeout = self.duration(
            &format!("{path}.request_timeout"),
            s.request_timeout.as_deref(),
            60,
        );
        let file_type = match s.file_type.as_deref() {
            // One Parquet file per run: its only chunk holds the whole batch.
            None if api == CelonisApi::Continuous => FileType::Parquet {
                rows_per_chunk: usize::MAX,
            },
            Some("csv") if api == CelonisApi::Continuous => {
                self.error(
                    format!("{path}.file_type"),
                    "api = \"continuous\" uploads Parquet files only: remove file_type or set \"parquet\"",
                );
                FileType::Parquet {
                    rows_per_chunk: usize::MAX,
                }
            }
            Some("parquet") if api == CelonisApi::Continuous => FileType::Parquet {
                rows_per_chunk: usize::MAX,
            },
            None | Some("csv") => FileType::Csv,
            Some("parquet") => FileType::Parquet {
                rows_per_chunk: DEFAULT_ROWS_PER_CHUNK,
            },
            Some(other) => {
                self.error(
                    format!("{path}.file_type"),
                    format!("\"{other}\" is not \"csv\" or \"parquet\""),
                );
                FileType::Csv
            }
        };
        let file_type = match (file_type, s.rows_per_chunk) {
            (_, None) => file_type,
            // Refused by `continuous_sink`.
            (_, Some(_)) if api == CelonisApi::Continuous => file_type,
            (FileType::Parquet { .. }, Some(n)) if (1..=10_000_000).contains(&n) => {
                FileType::Parquet {
                    rows_per_chunk: n as usize,
                }
            }
            (FileType::Parquet { .. }, Some(n)) => {
                self.error(
                    format!("{path}.rows_per_chunk"),
                    format!("{n} is not a number of rows from 1 to 10000000"),
                );
                file_type
            }
            (FileType::Csv, Some(_)) => {
                self.error(
                    format!("{path}.rows_per_chunk"),
                    "only applies to file_type = \"parquet\" (CSV chunks are bounded by chunk_bytes)",
                );
                file_type
            }
        };
        if matches!(file_type, FileType::Parquet { .. }) {
            for (key, set) in [
                ("csv", s.csv.is_some()),
                ("chunk_bytes", s.chunk_bytes.is_some()),
            ] {
                if set {
                    self.error(
                        format!("{path}.{key}"),
                        match api {
                            CelonisApi::DataPush => "only applies to file_type = \"csv\"",
                            CelonisApi::Continuous => {
                                "does not apply to api = \"continuous\": it uploads Parquet files"
                            }
                        },
                    );
                }
            }
        }
        let csv = self.csv(&format!("{path}.csv"), s.csv);
        let fallback_varchar_length = match s.fallback_varchar_length {
            None => DEFAULT_FALLBACK_VARCHAR_LENGTH,
            Some(n) if n >= 1 && n <= i64::from(MAX_STRING_LENGTH) => n as u32,
            Some(n) => {
                self.error(
                    format!("{path}.fallback_varchar_length"),
                    format!("{n} is not a length from 1 to {MAX_STRING_LENGTH} characters"),
                );
                DEFAULT_FALLBACK_VARCHAR_LENGTH
            }
        };
        let proxy = s
            .proxy
            .and_then(|p| self.proxy(&format!("{path}.proxy"), p));
        SinkConfig::Celonis(CelonisSink {
            proxy,
            fallback_varchar_length,
            base_url,
            api_prefix,
            data_pool_id,
            connection_id: s.connection_id,
            target_name,
            mode,
            api,
            keys,
            dedupe,
            delete_when,
            upsert_strategy,
            auth,
            file_type,
            chunk_bytes,
            poll_timeout,
            request_timeout,
            csv,
        })
    }

    /// What `api = "continuous"` refuses: keys of Data Push jobs the upload call has no
    /// place for, and a user column named like the order column weir adds with `keys`.
    fn continuous_sink(
        &mut self,
        path: &str,
        data_push_only: &[(&'static str, bool)],
        mode: PushMode,
        keys: &[String],
        columns: &[Column],
        schema: Option<&Schema>,
    ) {
        if mode == PushMode::Replace {
            self.error(
                format!("{path}.mode"),
                "api = \"continuous\" only adds or upserts rows: REPLACE needs api = \"data-push\"",
            );
        }
        for &(key, set) in data_push_only {
            let why = match key {
                "api_prefix" => "the continuous API has no prefix",
                "dedupe" => "Celonis keeps the latest row of a key by weir's order column",
                "delete_when" => "the continuous API cannot delete rows",
                "upsert_strategy" => "the upload call takes no upsert strategy",
                "poll_timeout" => "an upload is answered at once, there is no job to poll",
                _ => "each run is one Parquet file; bound it with max_rows_per_run",
            };
            if set {
                self.error(
                    format!("{path}.{key}"),
                    format!("does not apply to api = \"continuous\": {why}"),
                );
            }
        }
        if !keys.is_empty() {
            self.order_column_free(path, columns, schema, "api = \"continuous\" with keys");
        }
    }

    /// Errors for a declared column or schema field named like [`ORDER_COLUMN`], which weir
    /// adds to every row when `why`.
    fn order_column_free(
        &mut self,
        sink_path: &str,
        columns: &[Column],
        schema: Option<&Schema>,
        why: &str,
    ) {
        let clash = |name: &str| name.eq_ignore_ascii_case(ORDER_COLUMN);
        let message =
            format!("\"{ORDER_COLUMN}\" is the order column weir adds with {why}: rename it");
        let pipeline = sink_path.strip_suffix(".sink").unwrap_or(sink_path);
        for (j, c) in columns.iter().enumerate() {
            if clash(&c.name) {
                self.error(format!("{pipeline}.columns[{j}].name"), message.clone());
            }
        }
        if columns.is_empty()
            && let Some(schema) = schema
        {
            for (name, _) in &schema.fields {
                if clash(name) {
                    self.error(format!("{pipeline}.schema.fields.{name}"), message.clone());
                }
            }
        }
    }

    /// A column's `type`, `length` and `decimals`.
    fn typing(
        &mut self,
        path: &str,
        c: &raw::RawColumn,
        source: &ColumnSource,
        schema: Option<&Schema>,
    ) -> Typing {
        let ty = c.ty.as_deref().and_then(|t| {
            let ty = match t {
                "STRING" => ColumnType::String,
                "INTEGER" => ColumnType::Integer,
                "FLOAT" => ColumnType::Float,
                "BOOLEAN" => ColumnType::Boolean,
                "DATE" => ColumnType::Date,
                "DATETIME" => ColumnType::DateTime,
                "TIME" => ColumnType::Time,
                other => {
                    self.error(
                        format!("{path}.type"),
                        format!(
                            "\"{other}\" is not a column type: use STRING, INTEGER, FLOAT, BOOLEAN, DATE, DATETIME or TIME"
                        ),
                    );
                    return None;
                }
            };
            if let (ColumnSource::Field(from), Some(schema)) = (source, schema)
                && let Some(field) = schema.field_type(from)
                && !fits_field(ty, field, c)
            {
                self.error(
                    format!("{path}.type"),
                    format!(
                        "\"{t}\" contradicts the schema: field \"{from}\" is {} ({}){}",
                        field.name(),
                        ColumnType::of_field(field).as_str(),
                        contradiction_hint(ty, field)
                    ),
                );
                return None;
            }
            Some(ty)
        });
        let effective = ty.or_else(|| match (source, schema) {
            (ColumnSource::Field(from), Some(s)) => s.field_type(from).map(ColumnType::of_field),
            _ => None,
        });
        let effective = effective.unwrap_or(ColumnType::String);
        let length = c.length.and_then(|n| {
            if effective != ColumnType::String {
                self.error(
                    format!("{path}.length"),
                    format!(
                        "only applies to STRING columns, this one is {}",
                        effective.as_str()
                    ),
                );
                None
            } else if n < 1 || n > i64::from(MAX_STRING_LENGTH) {
                self.error(
                    format!("{path}.length"),
                    format!("{n} is not a length from 1 to {MAX_STRING_LENGTH} characters"),
                );
                None
            } else {
                Some(n as u32)
            }
        });
        let decimals = c.decimals.and_then(|n| {
            if effective != ColumnType::Float {
                self.error(
                    format!("{path}.decimals"),
                    format!(
                        "only applies to FLOAT columns, this one is {}",
                        effective.as_str()
                    ),
                );
                None
            } else if !(0..=100).contains(&n) {
                self.error(
                    format!("{path}.decimals"),
                    format!("{n} is not from 0 to 100"),
                );
                None
            } else {
                Some(n as u32)
            }
        });
        Typing {
            ty,
            length,
            decimals,
        }
    }

    /// A column's input conventions, checked against its type.
    fn input(
        &mut self,
        path: &str,
        c: &raw::RawColumn,
        source: &ColumnSource,
        schema: Option<&Schema>,
        typing: Typing,
    ) -> Input {
        let ty = typing
            .ty
            .or_else(|| match (source, schema) {
                (ColumnSource::Field(from), Some(s)) => {
                    s.field_type(from).map(ColumnType::of_field)
                }
                _ => None,
            })
            .unwrap_or(ColumnType::String);
        let mut input = Input::default();
        if let ColumnSource::Expr(_) = source
            && (c.format.is_some()
                || c.decimal_separator.is_some()
                || c.thousands_separator.is_some())
        {
            let key = if c.format.is_some() {
                "format"
            } else if c.decimal_separator.is_some() {
                "decimal_separator"
            } else {
                "thousands_separator"
            };
            self.error(
                format!("{path}.{key}"),
                "applies to a column read from a field: an expression's value is written as it is",
            );
            return input;
        }
        if let Some(text) = &c.format {
            match ty.moment() {
                None => self.error(
                    format!("{path}.format"),
                    format!(
                        "only applies to DATE, DATETIME and TIME columns, this one is {}",
                        ty.as_str()
                    ),
                ),
                Some(moment) => match crate::values::DateFormat::parse(text, moment) {
                    Ok(f) => input.date = Some(f),
                    Err(e) => self.error(format!("{path}.format"), e),
                },
            }
        } else if ty.moment().is_some() {
            input.date = Some(crate::values::DateFormat::Iso8601);
        }
        let mut separator = |key: &str, value: &Option<String>, types: &[ColumnType]| {
            let text = value.as_deref()?;
            if !types.contains(&ty) {
                let names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
                self.error(
                    format!("{path}.{key}"),
                    format!(
                        "only applies to {} columns, this one is {}",
                        names.join(" and "),
                        ty.as_str()
                    ),
                );
                return None;
            }
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(ch), None) if !ch.is_ascii_digit() && ch != '-' && ch != '+' => Some(ch),
                _ => {
                    self.error(
                        format!("{path}.{key}"),
                        format!(
                            "\"{}\" is not one character other than a digit or sign",
                            text.escape_default()
                        ),
                    );
                    None
                }
            }
        };
        input.number.decimal_separator = separator(
            "decimal_separator",
            &c.decimal_separator,
            &[ColumnType::Float],
        );
        input.number.thousands_separator = separator(
            "thousands_separator",
            &c.thousands_separator,
            &[ColumnType::Integer, ColumnType::Float],
        );
        if input.number.decimal_separator.is_some()
            && input.number.decimal_separator == input.number.thousands_separator
        {
            self.error(
                format!("{path}.thousands_separator"),
                "must differ from decimal_separator",
            );
        }
        input
    }

    fn required_id(&mut self, path: &str, value: Option<String>) -> String {
        match value {
            None => {
                self.error(path, "is required");
                String::new()
            }
            Some(id)
                if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                self.error(
                    path,
                    format!("\"{id}\" is not an id (letters, digits and '-')"),
                );
                id
            }
            Some(id) => id,
        }
    }

    fn csv(&mut self, path: &str, raw: Option<raw::RawCsv>) -> CsvOptions {
        let mut opts = CsvOptions::default();
        let Some(c) = raw else { return opts };
        let byte = |v: &mut Validator, key: &str, value: Option<String>, default: u8| match value {
            None => default,
            Some(s) if s.len() == 1 && s.is_ascii() => s.as_bytes()[0],
            Some(s) => {
                v.error(
                    format!("{path}.{key}"),
                    format!(
                        "\"{}\" must be a single ASCII character",
                        s.escape_default()
                    ),
                );
                default
            }
        };
        opts.separator = byte(self, "separator", c.separator, b',');
        opts.quote = byte(self, "quote", c.quote, b'"');
        opts.escape = byte(self, "escape", c.escape, b'"');
        opts.line_ending = match c.line_ending.as_deref() {
            None | Some("\n") => LineEnding::Lf,
            Some("\r\n") => LineEnding::CrLf,
            Some("\r") => LineEnding::Cr,
            Some(other) => {
                self.error(
                    format!("{path}.line_ending"),
                    format!(
                        "\"{}\" is not \"\\n\", \"\\r\\n\" or \"\\r\"",
                        other.escape_default()
                    ),
                );
                LineEnding::Lf
            }
        };
        for (key, set) in [
            ("decimal_separator", c.decimal_separator.is_some()),
            ("thousand_separator", c.thousand_separator.is_some()),
            ("date_format", c.date_format.is_some()),
        ] {
            if set {
                let column_key = match key {
                    "date_format" => "format",
                    "thousand_separator" => "thousands_separator",
                    other => other,
                };
                self.error(
                    format!("{path}.{key}"),
                    format!(
                        "weir writes numbers with \".\" and dates in ISO-8601 and declares exactly that: say how the sender writes them with {column_key} on the [[pipelines.columns]] entry"
                    ),
                );
            }
        }
        if opts.separator == opts.quote {
            self.error(format!("{path}.quote"), "must differ from the separator");
        }
        opts
    }
}

/// Whether a column of type `ty` may read a schema field of type `field`: the same type, a
/// STRING of anything, a date type or a number with a convention from a string, and a date
/// type in an epoch format from an integer.
fn fits_field(ty: ColumnType, field: FieldType, c: &raw::RawColumn) -> bool {
    let epoch = matches!(c.format.as_deref(), Some("epoch_ms" | "epoch_s"));
    let convention = c.decimal_separator.is_some() || c.thousands_separator.is_some();
    ty == ColumnType::String
        || ty == ColumnType::of_field(field)
        || match (field, ty.moment()) {
            (FieldType::String, Some(_)) => true,
            (FieldType::Integer, Some(_)) => epoch,
            (FieldType::String, None) => {
                convention && matches!(ty, ColumnType::Integer | ColumnType::Float)
            }
            _ => false,
        }
}

/// What to change when a column's type contradicts its schema field.
fn contradiction_hint(ty: ColumnType, field: FieldType) -> &'static str {
    match (ty.moment(), field) {
        (Some(_), FieldType::Integer) => {
            ": an integer field takes format = \"epoch_ms\" or \"epoch_s\""
        }
        (Some(_), _) => ": a date arrives as text, declare the field string",
        (None, FieldType::String) if matches!(ty, ColumnType::Integer | ColumnType::Float) => {
            ": a number written as text needs the field's type, or a decimal_separator or thousands_separator on the column"
        }
        _ => "",
    }
}

fn placeholder_url() -> Url {
    Url::parse("http://invalid.invalid").expect("constant URL parses")
}

/// Parses a CIDR, or a bare address as a single-host network.
fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// Parses "1048576", "512k", "64MiB", "1GB" (decimal units are powers of 1000, binary ones of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests;
