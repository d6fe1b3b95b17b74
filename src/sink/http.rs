//! The generic HTTP sink: a run's batch becomes one request (or one per row) to any API, with
//! URL, query, headers and body from config text or CEL expressions, and success read from
//! the status or from a CEL rule over the response.
//!
//! Per run, a batch is delivered only when its request succeeded; otherwise all of it stays
//! queued and is sent again on retry. Per row, requests go out in row order (at most
//! `concurrency` in flight); when a row fails, the rows before it are reported delivered
//! ([`HttpFailure::Partial`]) and the retry starts at the failed row. With `concurrency`
//! above 1, later rows already sent may be sent again (at least once, per row).
//!
//! Credentials never follow a redirect to another origin (scheme, host and port), and a
//! response body is read only up to [`MAX_RESPONSE_BYTES`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use cel::Value;
use reqwest::{Response, StatusCode, Url, header};

use super::CallObserver;
use super::csv::{ColumnSpec, write_chunks};
use super::oauth::{OAuthError, TokenSource};
use crate::config::{ApiKeyLocation, BatchPer, BodyMode, HttpAuth, HttpSink, Secret, Text};
use crate::expr::{self, EvalError};
use crate::queue::{Entry, Offset};
use crate::row::Row;

/// Why a batch was not delivered. It stays queued in every case.
#[derive(Debug, thiserror::Error)]
pub enum HttpFailure {
    #[error("building the request: {what}: {source}")]
    Expr {
        what: &'static str,
        #[source]
        source: EvalError,
    },
    #[error("building the request: \"{0}\" is not a URL")]
    Url(String),
    #[error("writing CSV: {0}")]
    Csv(#[from] ::csv::Error),
    #[error("no OAuth token: {0}")]
    Token(#[from] OAuthError),
    #[error("{source}")]
    Transport {
        #[source]
        source: reqwest::Error,
    },
    #[error("{message}")]
    ProxyRefused { message: String },
    #[error("HTTP {status}: {body}")]
    Status {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("HTTP {status}: the success rule is false: {body}")]
    Rule { status: u16, body: String },
    #[error("HTTP {status}: the success rule failed: {source}")]
    RuleError {
        status: u16,
        #[source]
        source: EvalError,
    },
    #[error(
        "HTTP {status}: the response body is larger than {limit} bytes, so the success rule cannot judge it"
    )]
    ResponseTooLarge { status: u16, limit: usize },
    #[error("HTTP {status}: not following the redirect to {origin}: it leaves the sink's origin")]
    Redirect { status: u16, origin: String },
    /// Per-row delivery: the first `rows` rows (through offset `through`) were delivered,
    /// then a row failed.
    #[error("delivered {rows} rows (through offset {through}), then: {source}")]
    Partial {
        rows: usize,
        through: Offset,
        #[source]
        source: Box<HttpFailure>,
    },
}

impl HttpFailure {
    /// How long the server asked us to wait (`Retry-After`, clamped).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpFailure::Status { retry_after, .. } => *retry_after,
            HttpFailure::Partial { source, .. } => source.retry_after(),
            _ => None,
        }
    }

    /// The offset through which the rows were delivered before the failure, if any: the
    /// worker commits through it and retries the rest.
    pub fn delivered_through(&self) -> Option<Offset> {
        match self {
            HttpFailure::Partial { through, .. } => Some(*through),
            _ => None,
        }
    }
}

/// The most of a response body weir reads (for the success rule and error messages).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Redirects followed at most, within the sink's origin.
const MAX_REDIRECTS: usize = 10;

/// A client for one pipeline's HTTP sink. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    sink: HttpSink,
    pipeline: Value,
    tokens: Option<Arc<TokenSource>>,
    observe: CallObserver,
    /// Whether any expression reads `rows` (building it costs a pass over the batch).
    needs_rows: bool,
}

/// What one request is about: the whole batch, or one row of it.
struct Subject {
    rows_value: Value,
    row_value: Option<Value>,
}

impl HttpClient {
    pub fn new(
        sink: HttpSink,
        pipeline: &str,
        tokens: Option<Arc<TokenSource>>,
        observe: CallObserver,
    ) -> Result<HttpClient, reqwest::Error> {
        let http = client(sink.request_timeout, sink.proxy.as_ref())?;
        let is_expr = |t: &Text| matches!(t, Text::Expr(_));
        let needs_rows = is_expr(&sink.base_url)
            || is_expr(&sink.path)
            || sink.query.iter().any(|(_, t)| is_expr(t))
            || sink.headers.iter().any(|(_, t)| is_expr(t))
            || matches!(sink.body, BodyMode::Expr(_))
            || sink.success.is_some();
        Ok(HttpClient {
            inner: Arc::new(Inner {
                http,
                sink,
                pipeline: expr::pipeline_value(pipeline),
                tokens,
                observe,
                needs_rows,
            }),
        })
    }

    /// Delivers the batch: one request, or one per row with at most `concurrency` at once.
    pub async fn deliver(&self, config: &ColumnSpec, entries: &[Entry]) -> Result<(), HttpFailure> {
        let rows: Vec<Row> = entries.iter().map(|e| e.row.clone()).collect();
        match self.inner.sink.batch_per {
            BatchPer::Run => {
                let body = self.inner.body(config, entries, &rows, false)?;
                let subject = self.inner.subject(&rows, None);
                self.inner.send(&subject, body).await
            }
            BatchPer::Row => self.deliver_rows(config, entries).await,
        }
    }

    /// Sends one request per row: started in row order, at most `concurrency` in flight,
    /// finished in row order. When a row fails, no further row is started and the rows
    /// before it are reported as delivered.
    async fn deliver_rows(
        &self,
        config: &ColumnSpec,
        entries: &[Entry],
    ) -> Result<(), HttpFailure> {
        let inner = &*self.inner;
        let mut window: VecDeque<Slot<'_>> = VecDeque::new();
        let mut next = 0;
        let mut delivered = 0;
        let mut failed = false;
        // Config makes it at least 1; an empty window would end the loop with rows unsent.
        let concurrency = inner.sink.concurrency.max(1);
        loop {
            while !failed && window.len() < concurrency && next < entries.len() {
                let entry = &entries[next];
                next += 1;
                let row = std::slice::from_ref(&entry.row);
                window.push_back(
                    match inner.body(config, std::slice::from_ref(entry), row, true) {
                        Ok(body) => {
                            let subject = inner.subject(row, Some(&entry.row));
                            Slot::Sending(Box::pin(async move { inner.send(&subject, body).await }))
                        }
                        Err(e) => {
                            failed = true;
                            Slot::Done(Err(e))
                        }
                    },
                );
            }
            // Drive every request in the window, oldest first, until the oldest is done.
            std::future::poll_fn(|cx| {
                for slot in window.iter_mut() {
                    if let Slot::Sending(request) = slot
                        && let Poll::Ready(result) = request.as_mut().poll(cx)
                    {
                        failed |= result.is_err();
                        *slot = Slot::Done(result);
                    }
                }
                match window.front() {
                    Some(Slot::Sending(_)) => Poll::Pending,
                    _ => Poll::Ready(()),
                }
            })
            .await;
            match window.pop_front() {
                None => return Ok(()),
                Some(Slot::Done(Ok(()))) => delivered += 1,
                Some(Slot::Done(Err(e))) => {
                    return Err(match delivered {
                        0 => e,
                        rows => HttpFailure::Partial {
                            rows,
                            through: entries[rows - 1].offset,
                            source: Box::new(e),
                        },
                    });
                }
                // The poll above returns only once the oldest request is done.
                Some(Slot::Sending(_)) => unreachable!("the oldest request is done"),
            }
        }
    }
}

/// One row's request in the per-row window.
enum Slot<'a> {
    Sending(Pin<Box<dyn Future<Output = Result<(), HttpFailure>> + Send + 'a>>),
    Done(Result<(), HttpFailure>),
}

/// The sink's HTTP client: weir's user agent, the request timeout, and redirects followed
/// only within the origin of the request, so the API key, bearer token or basic credentials
/// never reach another host.
fn client(
    timeout: Duration,
    proxy: Option<&crate::config::Proxy>,
) -> Result<reqwest::Client, reqwest::Error> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if !same_origin {
            attempt.stop()
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    });
    super::client_builder(timeout, proxy)?
        .redirect(policy)
        .build()
}

/// A request body and its Content-Type.
type Body = (Vec<u8>, &'static str);

impl Inner {
    fn subject(&self, rows: &[Row], row: Option<&Row>) -> Subject {
        let rows_value = if self.needs_rows {
            Value::List(Arc::new(rows.iter().map(expr::row_value).collect()))
        } else {
            Value::List(Arc::new(Vec::new()))
        };
        Subject {
            rows_value,
            row_value: row.map(expr::row_value),
        }
    }

    fn body(
        &self,
        config: &ColumnSpec,
        entries: &[Entry],
        rows: &[Row],
        single: bool,
    ) -> Result<Body, HttpFailure> {
        Ok(match &self.sink.body {
            BodyMode::JsonArray => {
                let bytes = if single {
                    serde_json::to_vec(&rows[0])
                } else {
                    serde_json::to_vec(rows)
                };
                // Rows always serialize: their keys are strings and values valid JSON.
                (bytes.unwrap_or_default(), "application/json")
            }
            BodyMode::Ndjson => {
                let mut out = Vec::new();
                for r in rows {
                    out.extend(serde_json::to_vec(r).unwrap_or_default());
                    out.push(b'\n');
                }
                (out, "application/x-ndjson")
            }
            BodyMode::Csv => {
                let layout = config.layout(entries);
                let mut chunks = write_chunks(&layout, entries, &self.sink.csv, u64::MAX)?;
                (chunks.pop().unwrap_or_default(), "text/csv; charset=utf-8")
            }
            BodyMode::Expr(e) => {
                let subject = self.subject(rows, single.then(|| &rows[0]));
                let json = e
                    .eval_json(&subject.vars_with(&self.pipeline))
                    .map_err(|source| HttpFailure::Expr {
                        what: "body",
                        source,
                    })?;
                (
                    serde_json::to_vec(&json).unwrap_or_default(),
                    "application/json",
                )
            }
        })
    }

    fn text(&self, t: &Text, subject: &Subject, what: &'static str) -> Result<String, HttpFailure> {
        match t {
            Text::Literal(s) => Ok(s.clone()),
            Text::Expr(e) => e
                .eval_text(&subject.vars_with(&self.pipeline))
                .map_err(|source| HttpFailure::Expr { what, source }),
        }
    }

    fn url(&self, subject: &Subject) -> Result<Url, HttpFailure> {
        let base = self.text(&self.sink.base_url, subject, "base_url")?;
        let path = self.text(&self.sink.path, subject, "path")?;
        let joined = if path.is_empty() {
            base
        } else {
            format!(
                "{}/{}",
                base.trim_end_matches('/'),
                path.trim_start_matches('/')
            )
        };
        let mut url = Url::parse(&joined).map_err(|_| HttpFailure::Url(joined.clone()))?;
        if !self.sink.query.is_empty() {
            let mut pairs = Vec::new();
            for (name, value) in &self.sink.query {
                pairs.push((name.as_str(), self.text(value, subject, "query")?));
            }
            url.query_pairs_mut().extend_pairs(pairs);
        }
        if let HttpAuth::ApiKey {
            location: ApiKeyLocation::Query,
            name,
            value,
        } = &self.sink.auth
        {
            url.query_pairs_mut().append_pair(name, value.expose());
        }
        Ok(url)
    }

    fn request(
        &self,
        subject: &Subject,
        body: &Body,
        token: Option<&Secret>,
    ) -> Result<reqwest::RequestBuilder, HttpFailure> {
        let mut req = self
            .http
            .request(self.sink.method.clone(), self.url(subject)?)
            .header(header::CONTENT_TYPE, body.1)
            .body(body.0.clone());
        for (name, value) in &self.sink.headers {
            req = req.header(name.as_str(), self.text(value, subject, "headers")?);
        }
        req = match (&self.sink.auth, token) {
            (
                HttpAuth::ApiKey {
                    location: ApiKeyLocation::Header,
                    name,
                    value,
                },
                _,
            ) => req.header(name.as_str(), value.expose()),
            (HttpAuth::Bearer(t), _) | (HttpAuth::OAuth2(_), Some(t)) => {
                req.bearer_auth(t.expose())
            }
            (HttpAuth::Basic { username, password }, _) => {
                req.basic_auth(username, Some(password.expose()))
            }
            _ => req,
        };
        Ok(req)
    }

    async fn token(&self) -> Result<Option<Secret>, HttpFailure> {
        match &self.tokens {
            None => Ok(None),
            Some(t) => Ok(Some(t.token().await?)),
        }
    }

    /// Sends one request and judges its response. With OAuth, a 401 drops the token and the
    /// request is sent once more with a fresh one.
    async fn send(&self, subject: &Subject, body: Body) -> Result<(), HttpFailure> {
        let transport = |source: reqwest::Error| HttpFailure::Transport {
            source: source.without_url(),
        };
        let refused = || HttpFailure::ProxyRefused {
            message: super::proxy_refusal(self.sink.proxy.as_ref()),
        };
        let token = self.token().await?;
        let sent = self.request(subject, &body, token.as_ref())?.send().await;
        self.observe
            .call("request", sent.as_ref().ok().map(|r| r.status().as_u16()));
        if super::proxy_refused(&sent) {
            return Err(refused());
        }
        let mut resp = sent.map_err(transport)?;
        if let (Some(tokens), Some(old)) = (&self.tokens, &token)
            && resp.status() == StatusCode::UNAUTHORIZED
        {
            tracing::info!("oauth token refused, fetching a new one");
            tokens.reject(old).await;
            let token = self.token().await?;
            let sent = self.request(subject, &body, token.as_ref())?.send().await;
            self.observe
                .call("request", sent.as_ref().ok().map(|r| r.status().as_u16()));
            resp = sent.map_err(transport)?;
        }
        self.judge(subject, resp).await
    }

    async fn judge(&self, subject: &Subject, resp: Response) -> Result<(), HttpFailure> {
        let status = resp.status();
        let retry_after = super::retry_after(resp.headers());
        let headers: Vec<(String, Value)> = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        let is_json = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| resp.url().join(v).ok());
        let read = read_capped(resp, MAX_RESPONSE_BYTES).await;
        let Some(rule) = &self.sink.success else {
            if status.is_success() {
                return Ok(());
            }
            if status.is_redirection()
                && let Some(to) = location
            {
                // Only a redirect the client refused to follow ends here.
                return Err(HttpFailure::Redirect {
                    status: status.as_u16(),
                    origin: to.origin().ascii_serialization(),
                });
            }
            let text =
                String::from_utf8_lossy(&read.map(|(b, _)| b).unwrap_or_default()).into_owned();
            return Err(HttpFailure::Status {
                status: status.as_u16(),
                body: shorten(&text),
                retry_after,
            });
        };
        let text = match read {
            Ok((bytes, true)) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok((_, false)) => {
                return Err(HttpFailure::ResponseTooLarge {
                    status: status.as_u16(),
                    limit: MAX_RESPONSE_BYTES,
                });
            }
            Err(source) => {
                return Err(HttpFailure::Transport {
                    source: source.without_url(),
                });
            }
        };
        let body_value = if is_json || text.trim_start().starts_with(['{', '[']) {
            serde_json::from_str(&text)
                .map(expr::json_value)
                .unwrap_or_else(|_| Value::from(text.clone()))
        } else {
            Value::from(text.clone())
        };
        let response = expr::map_value([
            ("status", Value::Int(i64::from(status.as_u16()))),
            (
                "headers",
                expr::map_value(headers.iter().map(|(k, v)| (k.as_str(), v.clone()))),
            ),
            ("body", body_value),
        ]);
        let mut vars = subject.vars_with(&self.pipeline);
        vars.push(("response", &response));
        match rule.eval_bool(&vars) {
            Ok(true) => Ok(()),
            Ok(false) => Err(HttpFailure::Rule {
                status: status.as_u16(),
                body: shorten(&text),
            }),
            Err(source) => Err(HttpFailure::RuleError {
                status: status.as_u16(),
                source,
            }),
        }
    }
}

impl Subject {
    fn vars(&self) -> Vec<(&str, &Value)> {
        let mut v = vec![("rows", &self.rows_value)];
        if let Some(row) = &self.row_value {
            v.push(("row", row));
        }
        v
    }

    fn vars_with<'a>(&'a self, pipeline: &'a Value) -> Vec<(&'a str, &'a Value)> {
        let mut v = self.vars();
        v.push(("pipeline", pipeline));
        v
    }
}

/// Reads a response body, streamed, up to `cap` bytes. Returns the bytes and whether that
/// was the whole body.
async fn read_capped(mut resp: Response, cap: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Ok((Vec::new(), false));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > cap {
            return Ok((out, false));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, true))
}

/// At most 2 KiB of a response body, for logs and run reports.
fn shorten(text: &str) -> String {
    if text.len() <= 2048 {
        return text.to_owned();
    }
    let cut = (0..=2048)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}…", &text[..cut])
}
