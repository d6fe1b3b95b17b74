//! The human-readable summary `weir check` prints: every pipeline with its resolved
//! settings, secrets masked.

use std::fmt::Write;

use super::{
    ApiKeyLocation, BodyMode, CelonisAuth, Config, HttpAuth, OAuth2Config, QueueConfig, SinkConfig,
    Text,
};

/// Renders the resolved config. Secrets print as `***`.
pub fn describe(c: &Config) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "server: listen {}, max body {} bytes, shutdown grace {}",
        c.server.listen,
        c.server.max_body_bytes,
        humantime::format_duration(c.server.shutdown_grace)
    );
    let l = &c.server.limits;
    let proxies: Vec<String> = l.trusted_proxies.iter().map(|n| n.to_string()).collect();
    let _ = writeln!(
        w,
        "server limits: headers {} bytes within {}, body read timeout {}, {} connections, {} rows per request, {} fields per row, field names up to {} bytes, nesting up to {}, {} body bytes in flight, trusted proxies [{}] via {}, tls {}",
        l.max_header_bytes,
        humantime::format_duration(l.header_read_timeout),
        humantime::format_duration(l.body_read_timeout),
        l.max_connections,
        l.max_rows_per_request,
        l.max_fields_per_row,
        l.max_field_name_bytes,
        l.max_depth,
        l.max_body_bytes_in_flight,
        proxies.join(", "),
        l.forwarded_header.as_str(),
        l.tls
            .as_ref()
            .map_or("off".to_owned(), |t| format!("cert {}", t.cert.display()))
    );
    if let Some(a) = &c.admin {
        let tokens: Vec<String> = a
            .tokens
            .iter()
            .map(|t| format!("{} ({:?}) {}", t.name, t.scope, t.token))
            .collect();
        let _ = writeln!(
            w,
            "admin: listen {}, tokens: {}",
            a.listen,
            tokens.join(", ")
        );
    }
    if let Some(e) = &c.emulator {
        let db = e
            .database
            .as_ref()
            .map_or("in memory".to_owned(), |p| p.display().to_string());
        let key = if e.app_key.is_some() { "***" } else { "any" };
        let _ = writeln!(
            w,
            "emulator: listen {}, database {db}, app key {key}",
            e.listen
        );
        if let Some(pools) = &e.pools {
            let _ = writeln!(w, "emulator pools: [{}]", pools.join(", "));
        }
        if !e.oauth_clients.is_empty() {
            let ids: Vec<&str> = e.oauth_clients.iter().map(|(id, _)| id.as_str()).collect();
            let _ = writeln!(
                w,
                "emulator oauth: clients [{}] (secrets ***), tokens live {}",
                ids.join(", "),
                humantime::format_duration(e.token_ttl)
            );
        }
    }
    let _ = writeln!(
        w,
        "celonis limits per team: {} jobs/hour, {} jobs/second, {} continuous uploads/second",
        c.celonis.jobs_per_hour, c.celonis.jobs_per_second, c.celonis.uploads_per_second
    );
    for p in &c.pipelines {
        let _ = writeln!(w, "pipeline {}:", p.name);
        let sharing: Vec<&str> = c
            .pipelines
            .iter()
            .filter(|o| o.hook == p.hook && o.name != p.name)
            .map(|o| o.name.as_str())
            .collect();
        if sharing.is_empty() {
            let _ = writeln!(w, "  ingest url: /hooks/{}", p.hook);
        } else {
            let _ = writeln!(
                w,
                "  ingest url: /hooks/{}, shared with {} (rows routed by each filter; unrouted rows {})",
                p.hook,
                sharing.join(", "),
                if p.unrouted_reject {
                    "refuse the request"
                } else {
                    "are ignored"
                }
            );
        }
        if let Some(rows) = &p.rows {
            let _ = writeln!(w, "  rows: {:?}", rows.source());
        }
        match &p.allow_ips {
            None => {
                let _ = writeln!(w, "  allow_ips: any");
            }
            Some(nets) => {
                let list: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
                let _ = writeln!(w, "  allow_ips: {}", list.join(", "));
            }
        }
        if let Some(a) = &p.auth {
            let _ = writeln!(w, "  auth: {}", super::describe_auth(a));
        }
        if let Some(r) = &p.rate_limit {
            let _ = writeln!(w, "  rate limit: {r}");
        }
        let _ = writeln!(
            w,
            "  wait=delivered: up to {}, {}",
            humantime::format_duration(p.wait_timeout),
            if p.allow_sync {
                "starts a run (allow_sync)"
            } else {
                "waits for the schedule"
            }
        );
        let r = &p.response;
        match &r.body {
            None if r.status == 204 => {
                let _ = writeln!(w, "  answer when queued: 204, no body");
            }
            None => {
                let _ = writeln!(
                    w,
                    "  answer when queued: {}, {{\"accepted\", \"ignored\"}}",
                    r.status
                );
            }
            Some(body) => {
                let _ = writeln!(
                    w,
                    "  answer when queued: {}, {} {body:?}",
                    r.status, r.content_type
                );
            }
        }
        match &p.queue {
            QueueConfig::Memory { max_bytes } => {
                let _ = writeln!(
                    w,
                    "  queue: memory, {} rows, {max_bytes} bytes",
                    p.queue_capacity
                );
            }
            QueueConfig::Nats(n) => {
                let _ = writeln!(
                    w,
                    "  queue: nats at {}, stream {} ({} replicas), {} rows, {} bytes, delivery lease {}, retention {}, dead letters in stream {}{}",
                    n.url,
                    n.stream,
                    n.replicas,
                    p.queue_capacity,
                    n.max_bytes,
                    humantime::format_duration(n.lease_ttl),
                    humantime::format_duration(n.retention),
                    n.dead_letter_stream(),
                    if n.wait_for_nats {
                        ", starts without NATS and waits for it"
                    } else {
                        ""
                    }
                );
            }
            QueueConfig::Disk {
                dir,
                max_bytes,
                segment_bytes,
                retention,
            } => {
                let _ = writeln!(
                    w,
                    "  queue: disk at {}, {} rows, {max_bytes} bytes, segments of {segment_bytes} bytes, retention {}",
                    dir.display(),
                    p.queue_capacity,
                    humantime::format_duration(*retention)
                );
            }
        }
        let _ = writeln!(
            w,
            "  schedule: {}, at most {} rows and {} bytes per run, retry from {} up to {}",
            match p.schedule {
                super::Schedule::Continuous => format!(
                    "continuous (a full batch, or {} after the oldest queued row)",
                    humantime::format_duration(p.max_wait)
                ),
                ref other => other.to_string(),
            },
            p.max_rows_per_run,
            p.max_bytes_per_run,
            humantime::format_duration(p.retry_initial),
            humantime::format_duration(p.retry_max_interval)
        );
        if let Some(s) = &p.schema {
            let fields: Vec<String> = s
                .fields
                .iter()
                .map(|(n, t)| format!("{n}: {}", t.name()))
                .collect();
            let _ = writeln!(
                w,
                "  schema: on_mismatch {:?}, required [{}], allow_extra {}, fields {{{}}}",
                s.on_mismatch,
                s.required.join(", "),
                s.allow_extra,
                fields.join(", ")
            );
        }
        if !p.pseudonymise.is_empty() {
            let fields: Vec<String> = p
                .pseudonymise
                .fields()
                .iter()
                .map(|(f, m)| format!("{f} ({})", m.name()))
                .collect();
            let _ = writeln!(w, "  pseudonymised at ingest: {}", fields.join(", "));
        }
        if let Some(f) = &p.filter {
            let _ = writeln!(w, "  filter: {:?}", f.source());
        }
        if let Some(f) = &p.fetch {
            let mode = match f.mode {
                super::FetchMode::Inline => "inline (202 after the rows are queued)",
                super::FetchMode::Deferred => "deferred (202 at once, pending in fetches.json)",
            };
            let when = f
                .when
                .as_ref()
                .map(|e| format!(" when {:?}", e.source()))
                .unwrap_or_default();
            let _ = writeln!(
                w,
                "  fetch: the file at each event's {}{when}, {mode}, format {:?}, entries [{}], at most {} bytes, timeout {}, {} retries, event fields [{}], auth {}",
                f.url_field,
                f.format,
                f.entries.join(", "),
                f.max_bytes,
                humantime::format_duration(f.timeout),
                f.retries,
                f.event_fields.join(", "),
                http_auth(&f.auth),
            );
        }
        if !p.columns.is_empty() {
            let cols: Vec<String> = p
                .columns
                .iter()
                .map(|c| {
                    let SinkConfig::Celonis(sink) = &p.sink else {
                        return format!("\"{}\" <- {}", c.name, c.source);
                    };
                    let field = match (&c.source, &p.schema) {
                        (super::ColumnSource::Field(f), Some(s)) => s.field_type(f),
                        _ => None,
                    };
                    let d = super::ColumnDecl::new(
                        &c.name,
                        c.typing,
                        field,
                        sink.fallback_varchar_length,
                    );
                    let mut ty = match d.ty {
                        super::ColumnType::String => format!("STRING({})", d.length),
                        super::ColumnType::Float => format!("FLOAT({} decimals)", d.decimals),
                        other => other.as_str().to_owned(),
                    };
                    if let Some(f) = &c.input.date {
                        ty.push_str(&format!(" format {:?}", f.describe()));
                    }
                    if let Some(s) = c.input.number.decimal_separator {
                        ty.push_str(&format!(" decimal_separator {:?}", s.to_string()));
                    }
                    if let Some(s) = c.input.number.thousands_separator {
                        ty.push_str(&format!(" thousands_separator {:?}", s.to_string()));
                    }
                    format!("\"{}\" <- {} {ty}", c.name, c.source)
                })
                .collect();
            let _ = writeln!(w, "  columns: {}", cols.join(", "));
        }
        match &p.sink {
            SinkConfig::Celonis(s) => {
                let auth = match &s.auth {
                    CelonisAuth::AppKey(k) => format!("AppKey {k}"),
                    CelonisAuth::ApiKey(k) => format!("Bearer {k}"),
                    CelonisAuth::OAuth2(o) => oauth2(o),
                };
                if s.api == super::CelonisApi::Continuous {
                    let _ = writeln!(
                        w,
                        "  sink: celonis continuous {}/continuous-batch-processing/api/v1/{}/items, table {}, keys [{}], auth {auth}, one Parquet file per run, no job budget",
                        s.base_url.as_str().trim_end_matches('/'),
                        s.data_pool_id,
                        s.target_name,
                        s.keys.join(", "),
                    );
                    if !s.keys.is_empty() {
                        let _ = writeln!(
                            w,
                            "  per key: latest row of a key wins (weir sends only that row, with {0}; duplicateRemovalOrderColumn={0})",
                            super::ORDER_COLUMN
                        );
                    }
                    continue;
                }
                let _ = writeln!(
                    w,
                    "  sink: celonis {}{}/api/v1/data-push/{}/jobs/, table {}, mode {}, keys [{}], auth {auth}, {}, poll timeout {}",
                    s.base_url.as_str().trim_end_matches('/'),
                    s.api_prefix,
                    s.data_pool_id,
                    s.target_name,
                    s.mode.as_str(),
                    s.keys.join(", "),
                    match s.file_type {
                        super::FileType::Csv => format!("CSV chunks up to {} bytes", s.chunk_bytes),
                        super::FileType::Parquet { rows_per_chunk } => {
                            format!("Parquet chunks of {rows_per_chunk} rows")
                        }
                    },
                    humantime::format_duration(s.poll_timeout)
                );
                if !s.keys.is_empty() {
                    let mut per_key = vec![format!(
                        "latest row of a key wins ({})",
                        match s.dedupe {
                            super::Dedupe::Client => "dedupe client: weir sends only that row",
                            super::Dedupe::Server =>
                                "dedupe server: every row with weir_seq, duplicateRemovalColumn=weir_seq",
                        }
                    )];
                    if let Some(d) = &s.delete_when {
                        per_key.push(format!("deleted when {}", d.source()));
                    }
                    if let Some(u) = s.upsert_strategy {
                        per_key.push(format!("upsert strategy {}", u.as_str()));
                    }
                    let _ = writeln!(w, "  per key: {}", per_key.join(", "));
                }
            }
            SinkConfig::Http(h) => {
                let auth = http_auth(&h.auth);
                let body = match &h.body {
                    BodyMode::JsonArray => "json_array".to_owned(),
                    BodyMode::Ndjson => "ndjson".to_owned(),
                    BodyMode::Csv => "csv".to_owned(),
                    BodyMode::Expr(e) => format!("expr {:?}", e.source()),
                };
                let _ = writeln!(
                    w,
                    "  sink: http {} {} path {}, body {body}, one request per {}{}, auth {auth}, success {}",
                    h.method,
                    text(&h.base_url),
                    text(&h.path),
                    match h.batch_per {
                        super::BatchPer::Run => "run",
                        super::BatchPer::Row => "row",
                    },
                    match h.batch_per {
                        super::BatchPer::Row => format!(" ({} at once)", h.concurrency),
                        super::BatchPer::Run => String::new(),
                    },
                    h.success
                        .as_ref()
                        .map_or("2xx".to_owned(), |e| format!("{:?}", e.source())),
                );
            }
        }
        let proxy = match &p.sink {
            SinkConfig::Celonis(s) => s.proxy.as_ref(),
            SinkConfig::Http(h) => h.proxy.as_ref(),
        };
        let _ = writeln!(w, "  proxy: {}", describe_proxy(proxy));
    }
    out
}

/// A sink's proxy as `weir check` shows it: the URL, the user (the password masked), the
/// hosts that bypass it; or what the environment decides.
/// An outbound `auth`, secrets masked by their `Display`.
fn http_auth(auth: &HttpAuth) -> String {
    match auth {
        HttpAuth::None => "none".to_owned(),
        HttpAuth::ApiKey {
            location,
            name,
            value,
        } => {
            let at = match location {
                ApiKeyLocation::Header => "header",
                ApiKeyLocation::Query => "query",
            };
            format!("api_key in {at} {name} = {value}")
        }
        HttpAuth::Bearer(t) => format!("Bearer {t}"),
        HttpAuth::Basic { username, password } => format!("basic {username}:{password}"),
        HttpAuth::OAuth2(o) => oauth2(o),
    }
}

fn describe_proxy(proxy: Option<&super::Proxy>) -> String {
    let Some(p) = proxy else {
        return "from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), if set".to_owned();
    };
    let mut out = p.shown();
    if let Some(user) = &p.username {
        out.push_str(&format!(
            " as {user} (password {})",
            if p.password.is_some() { "***" } else { "none" }
        ));
    }
    if !p.no_proxy.is_empty() {
        out.push_str(&format!(", not for {}", p.no_proxy.join(", ")));
    }
    out
}

fn text(t: &Text) -> String {
    match t {
        Text::Literal(s) => format!("{s:?}"),
        Text::Expr(e) => format!("expr {:?}", e.source()),
    }
}

fn oauth2(o: &OAuth2Config) -> String {
    format!(
        "oauth2 client {} secret {} at {} scopes [{}] ({})",
        o.client_id,
        o.client_secret,
        o.token_url,
        o.scopes.join(" "),
        match o.client_auth {
            super::ClientAuth::Basic => "client_secret_basic",
            super::ClientAuth::Post => "client_secret_post",
        }
    )
}
