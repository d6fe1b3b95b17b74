//! The emulator's OAuth 2.0 token endpoint (`POST /oauth2/token`, client credentials) and the
//! issued-token check behind `Authorization: Bearer` (reference §2.2).
//!
//! It takes `grant_type`, `scope`, `client_id` and `client_secret` form-encoded, as multipart
//! form data, or in the query string, and the client's credentials either as HTTP Basic
//! (`client_secret_basic`) or as fields (`client_secret_post`).

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine;
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

/// Scopes that grant the Data Push API.
pub(super) const DATA_PUSH_SCOPES: [&str; 2] =
    ["integration.data-pools:data_push", "integration.data-pools"];

/// A token the endpoint issued.
pub(super) struct Issued {
    pub expires: Instant,
    pub scopes: Vec<String>,
}

/// What a Bearer value is worth.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// An unexpired token with a data-push scope.
    Valid,
    /// An unexpired token without a data-push scope (403).
    WrongScope,
    /// Expired, revoked or never issued (401).
    Unknown,
}

/// Tokens issued so far, by token value.
#[derive(Default)]
pub(super) struct TokenStore {
    tokens: HashMap<String, Issued>,
    /// Every token ever issued, for tests that count token requests.
    pub issued: u64,
}

impl TokenStore {
    pub(super) fn issue(&mut self, ttl: Duration, scopes: Vec<String>) -> String {
        let now = Instant::now();
        self.tokens.retain(|_, t| t.expires > now);
        let token = format!("emu-{}", Uuid::new_v4().simple());
        self.tokens.insert(
            token.clone(),
            Issued {
                expires: now + ttl,
                scopes,
            },
        );
        self.issued += 1;
        token
    }

    pub(super) fn check(&self, token: &str) -> Verdict {
        match self.tokens.get(token) {
            Some(t) if t.expires > Instant::now() => {
                if t.scopes
                    .iter()
                    .any(|s| DATA_PUSH_SCOPES.contains(&s.as_str()))
                {
                    Verdict::Valid
                } else {
                    Verdict::WrongScope
                }
            }
            _ => Verdict::Unknown,
        }
    }

    /// Forgets every token, as if they had all expired.
    pub(super) fn revoke_all(&mut self) {
        self.tokens.clear();
    }
}

/// An OAuth error answer (RFC 6749 §5.2).
pub(super) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut resp = (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED
        && let Ok(v) = "Basic realm=\"oauth2\"".parse()
    {
        resp.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    resp
}

/// The token request's parameters from query, form or multipart body (later ones win).
pub(super) async fn parameters(request: Request) -> Result<HashMap<String, String>, Response> {
    let mut params: HashMap<String, String> = request
        .uri()
        .query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .collect::<HashMap<String, String>>()
        })
        .unwrap_or_default();
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let bad = |what: &str| {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("the body is not valid {what}"),
        )
    };
    if content_type.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|_| bad("multipart form data"))?;
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|_| bad("multipart form data"))?
        {
            let Some(name) = field.name().map(str::to_owned) else {
                continue;
            };
            let value = field.text().await.map_err(|_| bad("multipart form data"))?;
            params.insert(name, value);
        }
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        let Form(pairs) = Form::<Vec<(String, String)>>::from_request(request, &())
            .await
            .map_err(|_| bad("form data"))?;
        params.extend(pairs);
    }
    Ok(params)
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    // Serde's urlencoded reader, through axum's Query extractor's format.
    let uri: axum::http::Uri = match format!("/?{query}").parse() {
        Ok(u) => u,
        Err(_) => return Vec::new(),
    };
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

/// The client's id and secret: HTTP Basic (`client_secret_basic`) or form fields.
pub(super) fn client_credentials(
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Option<(String, String)> {
    if let Some(basic) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (id, secret) = text.split_once(':')?;
        return Some((id.to_owned(), secret.to_owned()));
    }
    Some((
        params.get("client_id")?.clone(),
        params.get("client_secret")?.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn issued_tokens_expire_and_need_a_data_push_scope() {
        let mut store = TokenStore::default();
        let good = store.issue(
            Duration::from_secs(60),
            vec!["integration.data-pools:data_push".into()],
        );
        let other = store.issue(Duration::from_secs(60), vec!["studio".into()]);
        assert_eq!(store.check(&good), Verdict::Valid);
        assert_eq!(store.check(&other), Verdict::WrongScope);
        assert_eq!(store.check("made-up"), Verdict::Unknown);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(store.check(&good), Verdict::Unknown);
        assert_eq!(store.issued, 2);
    }
}
