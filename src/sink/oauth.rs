//! OAuth 2.0 client credentials (RFC 6749 §4.4): fetch an access token, cache it, refresh it
//! before it expires, and forget it when the API refuses it.
//!
//! One [`TokenSource`] per (token URL, client id, scopes), shared by every pipeline that uses
//! those credentials ([`Tokens`]). Its cache is behind an async mutex: concurrent runs that
//! need a token wait for the one request in flight instead of each making their own. Expiry
//! uses `tokio::time`, so it is tested with paused time against a fake [`FetchToken`].
//!
//! Secrets (client secret, access tokens) live in [`Secret`]; errors carry only the token
//! endpoint's status and its OAuth `error` fields.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::config::{ClientAuth, OAuth2Config, Secret};
use crate::sync::lock;

/// An access token and how long it is valid.
#[derive(Debug, Clone)]
pub struct Token {
    pub access_token: Secret,
    pub expires_in: Duration,
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("token request to {url} failed: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("token endpoint {url} answered HTTP {status}: {detail}")]
    Rejected {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("token endpoint {url} answered something that is not a token: {detail}")]
    BadResponse { url: String, detail: String },
}

/// Something that gets a fresh token: the token endpoint, or a fake in tests.
pub trait FetchToken: Send + Sync {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Token, OAuthError>> + Send + '_>>;
}

/// The longest a token is cached, whatever its `expires_in` says.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 3600);

/// The most bytes of a token response weir reads.
const MAX_TOKEN_BODY: usize = 64 << 10;

/// How long before its expiry a token is replaced: 60 s (as pycelonis does), or half its
/// lifetime for short-lived tokens.
pub fn refresh_margin(expires_in: Duration) -> Duration {
    (expires_in / 2).min(Duration::from_secs(60))
}

/// A cached token, refreshed before expiry. Cheap to share behind an `Arc`.
pub struct TokenSource {
    fetcher: Box<dyn FetchToken>,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
}

impl TokenSource {
    pub fn new(fetcher: Box<dyn FetchToken>) -> TokenSource {
        TokenSource {
            fetcher,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A token that is not about to expire: the cached one, or a fresh one. Callers that
    /// come while a fetch is in flight wait for it and share its token.
    pub async fn token(&self) -> Result<Secret, OAuthError> {
        let mut slot = self.cached.lock().await;
        if let Some(c) = slot.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        *slot = None;
        let t = self.fetcher.fetch().await?;
        // The fetcher clamps `expires_in`; a fake one may not, so the sum is checked too.
        let lifetime = t.expires_in.min(MAX_EXPIRES_IN);
        let now = Instant::now();
        let refresh_at = now
            .checked_add(lifetime.saturating_sub(refresh_margin(lifetime)))
            .unwrap_or(now);
        *slot = Some(Cached {
            token: t.access_token.clone(),
            refresh_at,
        });
        Ok(t.access_token)
    }

    /// The API refused `token` (401): forget it, so the next [`TokenSource::token`] fetches
    /// a new one — unless another caller has already replaced it.
    pub async fn reject(&self, token: &Secret) {
        let mut slot = self.cached.lock().await;
        if slot.as_ref().is_some_and(|c| &c.token == token) {
            *slot = None;
        }
    }
}

/// What makes two token sources the same: (token URL, client id, scopes).
/// Token URL, client id, scopes, and the proxy the token endpoint is reached through.
type SourceKey = (String, String, Vec<String>, Option<String>);

/// The token sources of the process, one per (token URL, client id, scopes). Cheap to clone.
#[derive(Clone, Default)]
pub struct Tokens {
    sources: Arc<Mutex<HashMap<SourceKey, Arc<TokenSource>>>>,
}

impl Tokens {
    /// The shared source for these credentials, made on first use.
    pub fn source(
        &self,
        config: &OAuth2Config,
        timeout: Duration,
        proxy: Option<&crate::config::Proxy>,
    ) -> Result<Arc<TokenSource>, reqwest::Error> {
        let key = (
            config.token_url.to_string(),
            config.client_id.clone(),
            config.scopes.clone(),
            proxy.map(|p| p.url.to_string()),
        );
        let mut sources = lock(&self.sources);
        if let Some(s) = sources.get(&key) {
            return Ok(s.clone());
        }
        let fetcher = HttpFetcher::new(config.clone(), timeout, proxy)?;
        let source = Arc::new(TokenSource::new(Box::new(fetcher)));
        sources.insert(key, source.clone());
        Ok(source)
    }
}

/// Fetches tokens from a token endpoint with `grant_type=client_credentials`, form-encoded.
pub struct HttpFetcher {
    http: reqwest::Client,
    config: OAuth2Config,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    /// Seconds (RFC 6749 §5.1). Some servers send it as a string.
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

/// Lifetime assumed when the server does not say (the 401 retry covers a shorter one).
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);

impl HttpFetcher {
    pub fn new(
        config: OAuth2Config,
        timeout: Duration,
        proxy: Option<&crate::config::Proxy>,
    ) -> Result<HttpFetcher, reqwest::Error> {
        let http = super::http_client(timeout, proxy)?;
        Ok(HttpFetcher { http, config })
    }

    async fn request(&self) -> Result<Token, OAuthError> {
        let c = &self.config;
        let url = c.token_url.to_string();
        let scope = c.scopes.join(" ");
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let mut req = self.http.post(c.token_url.clone());
        match c.client_auth {
            ClientAuth::Basic => {
                req = req.basic_auth(&c.client_id, Some(c.client_secret.expose()));
            }
            ClientAuth::Post => {
                form.push(("client_id", &c.client_id));
                form.push(("client_secret", c.client_secret.expose()));
            }
        }
        let resp = req
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|source| OAuthError::Transport {
                url: url.clone(),
                source: source.without_url(),
            })?;
        let status = resp.status();
        let mut resp = resp;
        let (bytes, more) = super::read_limited(&mut resp, MAX_TOKEN_BODY)
            .await
            .unwrap_or_default();
        if more && status.is_success() {
            return Err(OAuthError::BadResponse {
                url,
                detail: format!("the body is larger than {} KiB", MAX_TOKEN_BODY >> 10),
            });
        }
        let text = String::from_utf8_lossy(&bytes);
        if !status.is_success() {
            // Only the OAuth error fields are kept: a body could echo what was sent.
            let detail = match serde_json::from_str::<ErrorResponse>(&text) {
                Ok(ErrorResponse {
                    error: Some(e),
                    error_description,
                }) => match error_description {
                    Some(d) => format!("{e}: {}", d.chars().take(200).collect::<String>()),
                    None => e,
                },
                _ => "no OAuth error in the body".to_owned(),
            };
            return Err(OAuthError::Rejected {
                url,
                status: status.as_u16(),
                detail,
            });
        }
        let bad = |detail: &str| OAuthError::BadResponse {
            url: url.clone(),
            detail: detail.to_owned(),
        };
        let body: TokenResponse = serde_json::from_str(&text)
            .map_err(|_| bad("the body is not a JSON token response"))?;
        let access_token = body
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no access_token"))?;
        if body
            .token_type
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err(bad("token_type is not Bearer"));
        }
        let expires_in = match body.expires_in {
            None | Some(serde_json::Value::Null) => DEFAULT_EXPIRES_IN,
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .map(Duration::from_secs)
                .ok_or_else(|| bad("expires_in is not a whole number of seconds"))?,
            Some(serde_json::Value::String(s)) => s
                .trim()
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| bad("expires_in is not a whole number of seconds"))?,
            Some(_) => return Err(bad("expires_in is not a number")),
        };
        let expires_in = expires_in.min(MAX_EXPIRES_IN);
        tracing::debug!(token_url = %url, expires_in_s = expires_in.as_secs(), "oauth token fetched");
        Ok(Token {
            access_token: Secret::new(access_token),
            expires_in,
        })
    }
}

impl FetchToken for HttpFetcher {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Token, OAuthError>> + Send + '_>> {
        Box::pin(self.request())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_a_minute_early_or_at_half_life() {
        assert_eq!(
            refresh_margin(Duration::from_secs(899)),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        assert_eq!(refresh_margin(Duration::ZERO), Duration::ZERO);
    }

    struct Forever;

    impl FetchToken for Forever {
        fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Token, OAuthError>> + Send + '_>> {
            Box::pin(async {
                Ok(Token {
                    access_token: Secret::new("t".to_owned()),
                    expires_in: Duration::MAX,
                })
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_expires_in_never_overflows_the_clock_and_is_cached_at_most_a_day() {
        let source = TokenSource::new(Box::new(Forever));
        assert_eq!(source.token().await.unwrap().expose(), "t");
        let refresh_at = source.cached.lock().await.as_ref().unwrap().refresh_at;
        assert!(refresh_at <= Instant::now() + MAX_EXPIRES_IN);
    }
}
