//! `weir check --online`: contacts each Celonis sink the way it delivers (same URL, same
//! `Authorization`), lists the pool's jobs to prove the key may push to that pool, and says
//! exactly what is wrong when it may not.
//!
//! The list call is `GET {url}{api_prefix}/api/v1/data-push/{pool}/jobs/` (reference §4 #2,
//! with the trailing slash real clients send). It changes nothing in the team. A continuous
//! sink (`api = "continuous"`) is probed with the same call: the Continuous Batch Processing
//! API has no documented read-only call, and the job list proves the URL, pool and key. What an answer
//! or a transport error means is decided by two pure functions, [`classify_status`] and
//! [`classify_error`], tested on their own. No message carries a secret: keys and tokens
//! only ever go into the `Authorization` header.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::IgnoredAny;

use super::celonis::{authorize, error_text, jobs_url};
use super::oauth::{OAuthError, Tokens};
use crate::config::{CelonisAuth, CelonisSink, Config, SinkConfig};

/// The longest one sink's probe (token and list) takes, whatever its `request_timeout`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes of a job list weir reads; a longer one is still a job list.
const MAX_LIST_BODY: usize = 4 << 20;

/// The most characters of a service's error text a problem keeps.
const MAX_DETAIL: usize = 200;

/// Which credential the sink sends, named as its config key, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    AppKey,
    ApiKey,
    OAuth,
}

impl Credential {
    pub fn of(auth: &CelonisAuth) -> Credential {
        match auth {
            CelonisAuth::AppKey(_) => Credential::AppKey,
            CelonisAuth::ApiKey(_) => Credential::ApiKey,
            CelonisAuth::OAuth2(_) => Credential::OAuth,
        }
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::AppKey => "application key (app_key)",
            Credential::ApiKey => "API key (api_key)",
            Credential::OAuth => "OAuth access token",
        })
    }
}

/// Why a sink would not work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("HTTP 401: the {credential} was refused: it is wrong or expired")]
    Unauthorized { credential: Credential },
    #[error(
        "HTTP 403: the {credential} has no Data Push permission on data pool {pool}: \
         in the pool's permissions, tick the Data Push API permission for it"
    )]
    Forbidden {
        credential: Credential,
        pool: String,
    },
    #[error(
        "HTTP 404: data pool {pool} does not exist in this team (or url and api_prefix \
         point elsewhere): check data_pool_id"
    )]
    PoolNotFound { pool: String },
    #[error("HTTP 429: the team is over its rate limit; try again later")]
    RateLimited,
    #[error("HTTP {status}: the service failed: {detail}")]
    Server { status: u16, detail: String },
    #[error("HTTP {status}: the request was refused: {detail}")]
    Refused { status: u16, detail: String },
    #[error("the answer is not a list of data push jobs: check url and api_prefix")]
    NotAJobList,
    #[error("DNS lookup failed: no such host; check url")]
    Dns,
    #[error("TLS failed: {detail}")]
    Tls { detail: String },
    #[error("connection refused: nothing listens at that address; check url")]
    ConnectionRefused,
    #[error("no answer within {}", humantime::format_duration(*after))]
    Timeout { after: Duration },
    #[error("cannot connect: {detail}")]
    Connect { detail: String },
    #[error("the request failed: {detail}")]
    Transport { detail: String },
    #[error("no OAuth token: {detail}: check token_url, client_id, client_secret and scopes")]
    Token { detail: String },
    #[error("token endpoint {url}: {cause}")]
    TokenEndpoint { url: String, cause: Box<Problem> },
    #[error("cannot build the HTTP client: {detail}")]
    Client { detail: String },
    #[error("{message}")]
    ProxyRefused { message: String },
}

/// What an answer to the list call means (a pure function): `Ok(())` for a 2xx, else the
/// problem, with the service's own error text from `body` where it helps.
pub fn classify_status(
    status: StatusCode,
    body: &str,
    credential: Credential,
    pool: &str,
) -> Result<(), Problem> {
    let detail = || {
        let text = error_text(body.trim());
        let mut detail: String = text.chars().take(MAX_DETAIL).collect();
        if detail.len() < text.len() {
            detail.push('…');
        }
        if detail.is_empty() {
            detail.push_str("no body");
        }
        detail
    };
    match status.as_u16() {
        200..=299 => Ok(()),
        401 => Err(Problem::Unauthorized { credential }),
        403 => Err(Problem::Forbidden {
            credential,
            pool: pool.to_owned(),
        }),
        404 => Err(Problem::PoolNotFound {
            pool: pool.to_owned(),
        }),
        429 => Err(Problem::RateLimited),
        s @ 500..=599 => Err(Problem::Server {
            status: s,
            detail: detail(),
        }),
        s => Err(Problem::Refused {
            status: s,
            detail: detail(),
        }),
    }
}

/// What a failed request means (a pure function over the error and its sources): a timeout,
/// a refused connection, a DNS failure, a TLS failure, or another connection or transport
/// failure, with the innermost cause's words. `after` is the timeout that applied.
pub fn classify_error(error: &(dyn StdError + 'static), after: Duration) -> Problem {
    let mut chain: Vec<&(dyn StdError + 'static)> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        chain.push(e);
        next = e.source();
    }
    let innermost = chain.last().map(|e| e.to_string()).unwrap_or_default();
    let mut connect = false;
    for e in &chain {
        if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            if r.is_timeout() {
                return Problem::Timeout { after };
            }
            connect |= r.is_connect();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return Problem::ConnectionRefused,
                std::io::ErrorKind::TimedOut => return Problem::Timeout { after },
                // While connecting, bytes that make no sense are the TLS handshake failing
                // (a rustls error inside, or a server that does not speak TLS).
                std::io::ErrorKind::InvalidData => {
                    return Problem::Tls {
                        detail: innermost.clone(),
                    };
                }
                _ => {}
            }
            // An io::Error's `source()` skips the error it wraps: look at it directly.
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
            {
                return Problem::Tls {
                    detail: tls.to_string(),
                };
            }
        }
        if let Some(tls) = e.downcast_ref::<tokio_rustls::rustls::Error>() {
            return Problem::Tls {
                detail: tls.to_string(),
            };
        }
        let text = e.to_string().to_ascii_lowercase();
        if text.starts_with("dns error")
            || text.contains("failed to lookup address")
            || text.contains("name or service not known")
            || text.contains("no such host")
        {
            return Problem::Dns;
        }
        if text.contains("timed out") {
            return Problem::Timeout { after };
        }
        // rustls' own texts, for when its error arrives only as text (through hyper's boxes).
        if text.contains("certificate")
            || text.contains("tls")
            || text.contains("handshake")
            || text.contains("received corrupt message")
            || text.contains("peer is incompatible")
            || text.contains("peer sent no certificates")
        {
            return Problem::Tls { detail: innermost };
        }
    }
    if connect {
        Problem::Connect { detail: innermost }
    } else {
        Problem::Transport { detail: innermost }
    }
}

/// What a token request's failure means.
fn token_problem(error: &OAuthError, after: Duration) -> Problem {
    match error {
        OAuthError::Transport { url, source } => Problem::TokenEndpoint {
            url: url.clone(),
            cause: Box::new(classify_error(source, after)),
        },
        other => Problem::Token {
            detail: other.to_string(),
        },
    }
}

/// What the probe of one pipeline found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The key listed the pool's jobs; `jobs` is how many, when the list was read whole.
    Ok {
        jobs: Option<usize>,
    },
    /// The pipeline's sink is not Celonis: nothing to contact.
    Skipped {
        sink: &'static str,
    },
    Failed(Problem),
}

/// One pipeline's line of `weir check --online`.
#[derive(Debug, Clone)]
pub struct Report {
    pub pipeline: String,
    /// The URL probed, without user info (absent when skipped).
    pub url: Option<String>,
    pub outcome: Outcome,
}

impl Report {
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed(_))
    }
}

/// Probes every pipeline's sink, at most [`PROBE_TIMEOUT`] each and all at once, and reports
/// in config order. Pipelines with the same OAuth client share one token request.
pub async fn probe_all(config: &Config) -> Vec<Report> {
    let tokens = Tokens::default();
    let handles: Vec<_> = config
        .pipelines
        .iter()
        .map(|p| {
            let (name, sink, tokens) = (p.name.clone(), p.sink.clone(), tokens.clone());
            tokio::spawn(async move {
                match sink {
                    SinkConfig::Celonis(sink) => Report {
                        pipeline: name,
                        url: Some(shown_url(&sink)),
                        outcome: match probe(&sink, &tokens, PROBE_TIMEOUT).await {
                            Ok(jobs) => Outcome::Ok { jobs },
                            Err(problem) => Outcome::Failed(problem),
                        },
                    },
                    SinkConfig::Http(_) => Report {
                        pipeline: name,
                        url: None,
                        outcome: Outcome::Skipped { sink: "http" },
                    },
                }
            })
        })
        .collect();
    let mut reports = Vec::with_capacity(handles.len());
    for (handle, p) in handles.into_iter().zip(&config.pipelines) {
        reports.push(handle.await.unwrap_or_else(|e| Report {
            pipeline: p.name.clone(),
            url: None,
            outcome: Outcome::Failed(Problem::Transport {
                detail: format!("the probe stopped: {e}"),
            }),
        }));
    }
    reports
}

/// The list URL as printed: the sink's jobs URL with a trailing slash, without user info.
fn shown_url(sink: &CelonisSink) -> String {
    let mut base = sink.base_url.clone();
    // Setting these fails only for URLs that cannot have them, which then have none.
    let _ = base.set_username("");
    let _ = base.set_password(None);
    let shown = CelonisSink {
        base_url: base,
        ..sink.clone()
    };
    format!("{}/", jobs_url(&shown))
}

/// Lists the pool's jobs with the sink's credentials, within `timeout`: `Ok(Some(n))` with
/// the number of jobs (`None` when the list was too long to read whole).
pub async fn probe(
    sink: &CelonisSink,
    tokens: &Tokens,
    timeout: Duration,
) -> Result<Option<usize>, Problem> {
    let timeout = timeout.min(sink.request_timeout);
    match tokio::time::timeout(timeout, list_jobs(sink, tokens, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(Problem::Timeout { after: timeout }),
    }
}

async fn list_jobs(
    sink: &CelonisSink,
    tokens: &Tokens,
    timeout: Duration,
) -> Result<Option<usize>, Problem> {
    let client_problem = |e: reqwest::Error| Problem::Client {
        detail: e.to_string(),
    };
    let token = match &sink.auth {
        CelonisAuth::OAuth2(o) => {
            let source = tokens
                .source(o, timeout, sink.proxy.as_ref())
                .map_err(client_problem)?;
            let token = source
                .token()
                .await
                .map_err(|e| token_problem(&e, timeout))?;
            Some(token)
        }
        _ => None,
    };
    let http = super::http_client(timeout, sink.proxy.as_ref()).map_err(client_problem)?;
    let url = format!("{}/", jobs_url(sink));
    let req = http
        .get(&url)
        .header(reqwest::header::ACCEPT, "application/json");
    let sent = authorize(req, &sink.auth, token.as_ref()).send().await;
    if super::proxy_refused(&sent) {
        return Err(Problem::ProxyRefused {
            message: super::proxy_refusal(sink.proxy.as_ref()),
        });
    }
    let mut resp = sent.map_err(|e| classify_error(&e.without_url(), timeout))?;
    let status = resp.status();
    let (bytes, more) = super::read_limited(&mut resp, MAX_LIST_BODY)
        .await
        .map_err(|e| classify_error(&e.without_url(), timeout))?;
    let body = String::from_utf8_lossy(&bytes);
    classify_status(
        status,
        &body,
        Credential::of(&sink.auth),
        &sink.data_pool_id,
    )?;
    if more {
        return if body.trim_start().starts_with('[') {
            Ok(None)
        } else {
            Err(Problem::NotAJobList)
        };
    }
    match serde_json::from_str::<Vec<IgnoredAny>>(&body) {
        Ok(jobs) => Ok(Some(jobs.len())),
        Err(_) => Err(Problem::NotAJobList),
    }
}

/// The report as `weir check --online` prints it: one line per pipeline.
pub fn render(reports: &[Report]) -> String {
    let mut out = String::new();
    for r in reports {
        let line = match (&r.outcome, &r.url) {
            (Outcome::Ok { jobs: Some(n) }, Some(url)) => {
                let s = if *n == 1 { "" } else { "s" };
                format!("ok: GET {url} listed {n} job{s}")
            }
            (Outcome::Ok { .. }, Some(url)) => format!("ok: GET {url} listed the pool's jobs"),
            (Outcome::Ok { .. }, None) => "ok".to_owned(),
            (Outcome::Skipped { sink }, _) => {
                format!("skipped: not a Celonis sink (kind = \"{sink}\")")
            }
            (Outcome::Failed(problem), Some(url)) => format!("FAILED: GET {url}: {problem}"),
            (Outcome::Failed(problem), None) => format!("FAILED: {problem}"),
        };
        out.push_str(&format!("online {}: {line}\n", r.pipeline));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "8f2c1f9e-0000-4000-8000-000000000001";

    fn status(code: u16, body: &str) -> Result<(), Problem> {
        classify_status(
            StatusCode::from_u16(code).unwrap(),
            body,
            Credential::AppKey,
            POOL,
        )
    }

    #[test]
    fn each_status_names_what_to_fix() {
        assert_eq!(status(200, "[]"), Ok(()));
        assert_eq!(
            status(401, ""),
            Err(Problem::Unauthorized {
                credential: Credential::AppKey
            })
        );
        let forbidden = status(403, "").unwrap_err();
        assert!(
            forbidden
                .to_string()
                .contains("tick the Data Push API permission"),
            "{forbidden}"
        );
        assert!(forbidden.to_string().contains(POOL), "{forbidden}");
        assert_eq!(
            status(404, "\"data pool not found\""),
            Err(Problem::PoolNotFound { pool: POOL.into() })
        );
        assert_eq!(status(429, ""), Err(Problem::RateLimited));
        assert_eq!(
            status(503, r#"{"reference":"r","message":"down for maintenance"}"#),
            Err(Problem::Server {
                status: 503,
                detail: "down for maintenance".into()
            })
        );
        assert_eq!(
            status(400, ""),
            Err(Problem::Refused {
                status: 400,
                detail: "no body".into()
            })
        );
        let long = "x".repeat(1000);
        let Err(Problem::Refused { detail, .. }) = status(418, &long) else {
            panic!("418 is a refusal");
        };
        assert_eq!(detail.chars().count(), MAX_DETAIL + 1);
    }

    #[test]
    fn the_401_names_the_credential_the_sink_sends() {
        let message = |credential| {
            classify_status(StatusCode::UNAUTHORIZED, "", credential, POOL)
                .unwrap_err()
                .to_string()
        };
        assert!(message(Credential::AppKey).contains("app_key"));
        assert!(message(Credential::ApiKey).contains("api_key"));
        assert!(message(Credential::OAuth).contains("OAuth access token"));
        assert!(message(Credential::AppKey).contains("wrong or expired"));
    }

    /// An error with a message and an optional cause, as hyper and reqwest chain theirs.
    #[derive(Debug)]
    struct Layer {
        message: &'static str,
        source: Option<Box<dyn StdError + Send + Sync>>,
    }

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.message)
        }
    }

    impl StdError for Layer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.source
                .as_deref()
                .map(|e| e as &(dyn StdError + 'static))
        }
    }

    fn chain(message: &'static str, cause: impl StdError + Send + Sync + 'static) -> Layer {
        Layer {
            message: "error sending request",
            source: Some(Box::new(Layer {
                message,
                source: Some(Box::new(cause)),
            })),
        }
    }

    const AFTER: Duration = Duration::from_secs(10);

    #[test]
    fn transport_errors_are_told_apart_by_their_causes() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            classify_error(
                &chain(
                    "tcp connect error",
                    Error::from(ErrorKind::ConnectionRefused)
                ),
                AFTER
            ),
            Problem::ConnectionRefused
        );
        assert_eq!(
            classify_error(
                &chain(
                    "dns error",
                    Error::other("failed to lookup address information")
                ),
                AFTER
            ),
            Problem::Dns
        );
        assert_eq!(
            classify_error(
                &chain("tcp connect error", Error::from(ErrorKind::TimedOut)),
                AFTER
            ),
            Problem::Timeout { after: AFTER }
        );
        let tls = tokio_rustls::rustls::Error::InvalidCertificate(
            tokio_rustls::rustls::CertificateError::UnknownIssuer,
        );
        let Problem::Tls { detail } = classify_error(
            &chain(
                "client error (Connect)",
                Error::new(ErrorKind::InvalidData, tls),
            ),
            AFTER,
        ) else {
            panic!("a certificate rustls refused is a TLS failure");
        };
        assert!(detail.contains("certificate"), "{detail}");
        assert_eq!(
            classify_error(
                &chain("connection closed", Error::from(ErrorKind::ConnectionReset)),
                AFTER
            ),
            Problem::Transport {
                detail: "connection reset".into()
            }
        );
    }

    #[test]
    fn a_token_endpoint_that_cannot_be_reached_says_so() {
        let rejected = OAuthError::Rejected {
            url: "https://t/oauth2/token".into(),
            status: 401,
            detail: "invalid_client".into(),
        };
        let message = token_problem(&rejected, AFTER).to_string();
        assert!(message.contains("HTTP 401"), "{message}");
        assert!(message.contains("client_secret"), "{message}");
    }

    #[test]
    fn the_report_has_one_line_per_pipeline() {
        let reports = [
            Report {
                pipeline: "orders".into(),
                url: Some("http://e/jobs/".into()),
                outcome: Outcome::Ok { jobs: Some(1) },
            },
            Report {
                pipeline: "audit".into(),
                url: None,
                outcome: Outcome::Skipped { sink: "http" },
            },
            Report {
                pipeline: "billing".into(),
                url: Some("http://e/jobs/".into()),
                outcome: Outcome::Failed(Problem::ConnectionRefused),
            },
        ];
        assert_eq!(
            render(&reports),
            "online orders: ok: GET http://e/jobs/ listed 1 job\n\
             online audit: skipped: not a Celonis sink (kind = \"http\")\n\
             online billing: FAILED: GET http://e/jobs/: connection refused: nothing listens at that address; check url\n"
        );
        assert!(reports[2].failed() && !reports[0].failed() && !reports[1].failed());
    }
}
