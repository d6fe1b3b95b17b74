//! The config file as serde reads it: every table denies unknown keys, so a typo is an error.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub data_dir: Option<String>,
    pub server: Option<RawServer>,
    pub emulator: Option<RawEmulator>,
    pub admin: Option<RawAdmin>,
    pub celonis: Option<RawCelonis>,
    pub proxy: Option<RawProxy>,
    #[serde(default)]
    pub pipelines: Vec<RawPipeline>,
    #[serde(default)]
    pub sources: Vec<RawSource>,
}

/// `[[sources]]`: rows weir fetches itself (`kind = "poll"`: a dequeue/ack API).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub kind: String,
    pub pipeline: String,
    pub schedule: Option<String>,
    pub dequeue_url: Option<String>,
    pub ack_url: Option<RawText>,
    pub download_url_field: Option<String>,
    pub format: Option<String>,
    pub entries: Option<Vec<String>>,
    pub max_bytes: Option<ByteSize>,
    pub timeout: Option<String>,
    pub auth: Option<RawAuth>,
    pub proxy: Option<RawProxy>,
}

/// `[pipelines.fetch]`: each event row names a file to download; its rows are queued.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFetch {
    pub url_field: Option<String>,
    pub when: Option<String>,
    pub mode: Option<String>,
    pub format: Option<String>,
    pub entries: Option<Vec<String>>,
    pub csv: Option<RawCsvInput>,
    pub max_bytes: Option<ByteSize>,
    pub timeout: Option<String>,
    pub retries: Option<i64>,
    pub event_fields: Option<Vec<String>>,
    pub auth: Option<RawAuth>,
    pub proxy: Option<RawProxy>,
}

/// `csv = { … }` of `[pipelines.fetch]`: how a downloaded file's CSV is read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCsvInput {
    pub separator: Option<String>,
    pub quote: Option<String>,
}

/// `[proxy]`, or `proxy = { … }` on a sink: the HTTP proxy outbound calls go through.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub no_proxy: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: Option<String>,
    pub max_body_bytes: Option<ByteSize>,
    pub shutdown_grace: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub max_header_bytes: Option<ByteSize>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub max_rows_per_request: Option<i64>,
    pub max_fields_per_row: Option<i64>,
    pub max_field_name_bytes: Option<i64>,
    pub max_depth: Option<i64>,
    pub max_body_bytes_in_flight: Option<ByteSize>,
    pub forwarded_header: Option<String>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEmulator {
    pub listen: Option<String>,
    pub database: Option<String>,
    pub app_key: Option<String>,
    /// OAuth clients the token endpoint knows: client id → secret.
    pub oauth_clients: Option<toml::Table>,
    pub token_ttl: Option<String>,
    /// The data pool ids that exist; absent: every UUID names a pool.
    pub pools: Option<Vec<String>>,
    /// `[emulator.finops]`: also serve a FinOps dequeue/ack API.
    pub finops: Option<RawFinops>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFinops {
    /// Packages queued at start: each a list of CSV entities.
    pub packages: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Option<String>,
    pub max_connections: Option<i64>,
    pub header_read_timeout: Option<String>,
    pub max_header_bytes: Option<ByteSize>,
    #[serde(default)]
    pub tokens: Vec<RawToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    pub token: String,
    pub scope: String,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCelonis {
    pub jobs_per_hour: Option<i64>,
    pub jobs_per_second: Option<i64>,
    pub uploads_per_second: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub name: String,
    pub hook: Option<String>,
    pub unrouted: Option<String>,
    pub allow_ips: Option<Vec<String>>,
    pub queue_capacity: Option<i64>,
    pub queue: Option<RawQueue>,
    pub schedule: Option<String>,
    pub max_wait: Option<String>,
    pub max_rows_per_run: Option<i64>,
    pub max_bytes_per_run: Option<ByteSize>,
    pub max_columns: Option<i64>,
    pub retry_initial: Option<String>,
    pub retry_max_interval: Option<String>,
    pub suspend_after: Option<String>,
    pub drain_on_shutdown: Option<bool>,
    pub retention: Option<String>,
    pub schema: Option<RawSchema>,
    pub rows: Option<String>,
    pub filter: Option<String>,
    #[serde(default)]
    pub columns: Vec<RawColumn>,
    pub sink: RawSink,
    pub auth: Option<RawSenderAuth>,
    pub rate_limit: Option<String>,
    pub response: Option<RawResponse>,
    pub wait_timeout: Option<String>,
    pub allow_sync: Option<bool>,
    pub pseudonymise: Option<RawPseudonymiseRules>,
    pub fetch: Option<RawFetch>,
}

/// `[[pipelines.pseudonymise]]` (several rules) or one `[pipelines.pseudonymise]` table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawPseudonymiseRules {
    Many(Vec<RawPseudonymise>),
    One(RawPseudonymise),
}

/// One rule: these fields, this method.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPseudonymise {
    pub fields: Vec<String>,
    pub method: Option<String>,
    pub key: Option<String>,
    pub salt: Option<String>,
}

/// `response = { status, body, content_type }`: what a request whose rows were queued gets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResponse {
    pub status: Option<i64>,
    pub body: Option<String>,
    pub content_type: Option<String>,
}

/// `[pipelines.auth]`: which keys apply depends on `kind` (and `preset`); the validator
/// reports keys that do not apply.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSenderAuth {
    pub kind: String,
    pub header: Option<String>,
    pub query: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub secret: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub secret_file: Option<String>,
    pub preset: Option<String>,
    pub algorithm: Option<String>,
    pub encoding: Option<String>,
    pub prefix: Option<String>,
    pub timestamp_header: Option<String>,
    pub tolerance: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub kind: String,
    pub dir: Option<String>,
    pub max_bytes: Option<ByteSize>,
    pub segment_bytes: Option<ByteSize>,
    pub retention: Option<String>,
    pub url: Option<String>,
    pub stream: Option<String>,
    pub replicas: Option<u64>,
    pub create: Option<bool>,
    pub wait_for_nats: Option<bool>,
    pub lease_ttl: Option<String>,
    pub publish_timeout: Option<String>,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub nkey_seed: Option<String>,
    pub creds_file: Option<String>,
    pub ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchema {
    pub on_mismatch: Option<String>,
    #[serde(default)]
    pub required: Vec<String>,
    pub allow_extra: Option<bool>,
    #[serde(default)]
    pub fields: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawColumn {
    pub name: String,
    pub from: Option<String>,
    pub expr: Option<String>,
    #[serde(rename = "type")]
    pub ty: Option<String>,
    pub length: Option<i64>,
    pub decimals: Option<i64>,
    pub format: Option<String>,
    pub decimal_separator: Option<String>,
    pub thousands_separator: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    pub kind: String,
    pub api: Option<String>,
    pub url: Option<String>,
    pub team: Option<String>,
    pub cluster: Option<String>,
    pub api_prefix: Option<String>,
    pub data_pool_id: Option<String>,
    pub connection_id: Option<String>,
    pub target_name: Option<String>,
    pub mode: Option<String>,
    pub keys: Option<Vec<String>>,
    pub dedupe: Option<String>,
    pub delete_when: Option<String>,
    pub upsert_strategy: Option<String>,
    pub app_key: Option<String>,
    pub api_key: Option<String>,
    pub chunk_bytes: Option<ByteSize>,
    pub file_type: Option<String>,
    pub rows_per_chunk: Option<i64>,
    pub fallback_varchar_length: Option<i64>,
    pub poll_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub csv: Option<RawCsv>,
    pub auth: Option<RawAuth>,
    pub proxy: Option<RawProxy>,
    // kind = "http"
    pub base_url: Option<RawText>,
    pub method: Option<String>,
    pub path: Option<RawText>,
    /// Parameter name → literal text or `{ expr = "CEL" }`, in order.
    pub query: Option<toml::Table>,
    /// Header name → literal text or `{ expr = "CEL" }`, in order.
    pub headers: Option<toml::Table>,
    pub body: Option<RawText>,
    pub batch_per: Option<String>,
    pub concurrency: Option<i64>,
    pub success: Option<String>,
}

/// A value that is either literal text or `{ expr = "CEL" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawText {
    Literal(String),
    Expr(RawExpr),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpr {
    pub expr: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub kind: String,
    // api_key
    pub location: Option<String>,
    pub name: Option<String>,
    pub value: Option<String>,
    // bearer
    pub token: Option<String>,
    // basic
    pub username: Option<String>,
    pub password: Option<String>,
    // oauth2
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub client_auth: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCsv {
    pub separator: Option<String>,
    pub quote: Option<String>,
    pub escape: Option<String>,
    pub line_ending: Option<String>,
    pub decimal_separator: Option<String>,
    pub thousand_separator: Option<String>,
    pub date_format: Option<String>,
}

/// A size: a plain number of bytes or a string like "64MiB", "1GB", "512k".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum ByteSize {
    Bytes(i64),
    Text(String),
}
