//! Validation of the outbound settings: auth (API key, bearer, basic, OAuth 2.0 client
//! credentials), the generic HTTP sink, and CEL expressions, each error with its key path.

use std::time::Duration;

use reqwest::{Method, Url};

use super::raw::{RawAuth, RawProxy, RawSink, RawText};
use super::{CelonisAuth, CsvOptions, Secret, Validator};
use crate::expr::Expr;

/// The HTTP proxy a sink's calls go through (`[proxy]`, or `proxy` on the sink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// `http://host:port` (or `https://`), without credentials.
    pub url: Url,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Hosts reached directly: a domain (and its subdomains), an IP, a CIDR, or `*`.
    pub no_proxy: Vec<String>,
}

impl Proxy {
    /// The proxy as it may be shown: scheme, host and port, never the password.
    pub fn shown(&self) -> String {
        format!(
            "{}://{}:{}",
            self.url.scheme(),
            self.url.host_str().unwrap_or_default(),
            self.url.port_or_known_default().unwrap_or_default()
        )
    }
}

/// Literal text, or a CEL expression evaluated per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Literal(String),
    Expr(Expr),
}

/// OAuth 2.0 client credentials (RFC 6749 §4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Config {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    pub client_auth: ClientAuth,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic `client_id:client_secret`.
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` as form fields.
    Post,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyLocation {
    Header,
    Query,
}

/// How the HTTP sink authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpAuth {
    None,
    ApiKey {
        location: ApiKeyLocation,
        name: String,
        value: Secret,
    },
    Bearer(Secret),
    Basic {
        username: String,
        password: Secret,
    },
    OAuth2(OAuth2Config),
}

/// What a request body holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyMode {
    /// The rows as one JSON array of objects (one object for `batch_per = "row"`).
    JsonArray,
    /// One JSON object per line.
    Ndjson,
    /// CSV with a header row, like the Celonis sink writes.
    Csv,
    /// Any JSON a CEL expression builds from `rows` (or `row`) and `pipeline`.
    Expr(Expr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPer {
    Run,
    Row,
}

/// `kind = "http"`: each run's batch goes to any HTTP API.
#[derive(Debug, Clone)]
pub struct HttpSink {
    pub base_url: Text,
    pub method: Method,
    pub path: Text,
    pub query: Vec<(String, Text)>,
    pub headers: Vec<(String, Text)>,
    pub body: BodyMode,
    pub batch_per: BatchPer,
    /// Requests in flight at once with `batch_per = "row"`.
    pub concurrency: usize,
    pub auth: HttpAuth,
    /// `None`: any 2xx is success.
    pub success: Option<Expr>,
    pub request_timeout: Duration,
    pub csv: CsvOptions,
    /// Its own `proxy`, else `[proxy]`; none: `HTTPS_PROXY` / `NO_PROXY` from the environment.
    pub proxy: Option<Proxy>,
}

/// Variables of the request expressions.
const RUN_VARS: &[&str] = &["rows", "pipeline"];
const ROW_VARS: &[&str] = &["rows", "row", "pipeline"];
const SUCCESS_VARS: &[&str] = &["response", "rows", "pipeline"];

impl Validator<'_> {
    /// `[proxy]` or a sink's `proxy`: an http(s) URL without credentials in it, optional
    /// basic-auth credentials, and the hosts that bypass it (`*.internal` is read as
    /// `.internal`: that domain and its subdomains).
    pub(super) fn proxy(&mut self, path: &str, p: RawProxy) -> Option<Proxy> {
        let url = match Url::parse(&p.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
            _ => {
                self.error(
                    format!("{path}.url"),
                    format!(
                        "\"{}\" is not an http(s) proxy URL like \"http://proxy:3128\"",
                        p.url
                    ),
                );
                return None;
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            self.error(
                format!("{path}.url"),
                "holds credentials: set username and password instead, so they are never shown",
            );
            return None;
        }
        if p.password.is_some() && p.username.is_none() {
            self.error(format!("{path}.password"), "needs username");
        }
        let mut no_proxy = Vec::new();
        for (i, host) in p.no_proxy.unwrap_or_default().into_iter().enumerate() {
            let host = host.trim();
            let entry = match host.strip_prefix("*.") {
                Some(domain) => format!(".{domain}"),
                None => host.to_owned(),
            };
            if entry.is_empty()
                || entry.contains(',')
                || (entry.contains('*') && entry != "*")
                || entry.contains(char::is_whitespace)
            {
                self.error(
                    format!("{path}.no_proxy[{i}]"),
                    format!(
                        "\"{host}\" is not a host pattern: use a domain (\"internal.example\" or \"*.internal\"), an IP, a CIDR or \"*\""
                    ),
                );
                continue;
            }
            no_proxy.push(entry);
        }
        Some(Proxy {
            url,
            username: p.username,
            password: p.password.map(Secret::new),
            no_proxy,
        })
    }

    /// Compiles a CEL expression, reporting a syntax error or an unknown name at `path`.
    pub(super) fn expr(&mut self, path: &str, source: &str, vars: &[&str]) -> Option<Expr> {
        match Expr::compile(source, vars) {
            Ok(e) => Some(e),
            Err(message) => {
                self.error(path, message);
                None
            }
        }
    }

    pub(super) fn text(&mut self, path: &str, raw: RawText, vars: &[&str]) -> Text {
        match raw {
            RawText::Literal(s) => Text::Literal(s),
            RawText::Expr(e) => self
                .expr(&format!("{path}.expr"), &e.expr, vars)
                .map_or(Text::Literal(String::new()), Text::Expr),
        }
    }

    /// A table of name → literal or `{ expr = "…" }`, in order.
    fn pairs(
        &mut self,
        path: &str,
        table: Option<toml::Table>,
        vars: &[&str],
    ) -> Vec<(String, Text)> {
        let mut out = Vec::new();
        for (name, value) in table.unwrap_or_default() {
            let vpath = format!("{path}.{name}");
            match value.try_into::<RawText>() {
                Ok(t) => {
                    let t = self.text(&vpath, t, vars);
                    out.push((name, t));
                }
                Err(_) => self.error(vpath, "must be text or { expr = \"…\" }"),
            }
        }
        out
    }

    /// `[emulator] oauth_clients = { id = "secret" }`.
    pub(super) fn oauth_clients(
        &mut self,
        path: &str,
        table: Option<toml::Table>,
    ) -> Vec<(String, Secret)> {
        let mut out = Vec::new();
        for (id, secret) in table.unwrap_or_default() {
            match secret.as_str() {
                Some(s) => out.push((id, Secret::new(s))),
                None => self.error(format!("{path}.{id}"), "must be the client's secret (text)"),
            }
        }
        out
    }

    /// `auth` of a Celonis sink: only `kind = "oauth2"`, token_url defaults to `{url}/oauth2/token`.
    pub(super) fn celonis_oauth(
        &mut self,
        path: &str,
        a: RawAuth,
        default_token_url: Option<Url>,
    ) -> CelonisAuth {
        if a.kind != "oauth2" {
            self.error(
                format!("{path}.kind"),
                format!(
                    "\"{}\" is not an auth kind of the Celonis sink: use \"oauth2\" (or app_key / api_key)",
                    a.kind
                ),
            );
            return CelonisAuth::AppKey(Secret::new(""));
        }
        let scopes = vec!["integration.data-pools:data_push".to_owned()];
        CelonisAuth::OAuth2(self.oauth2(path, a, default_token_url, scopes))
    }

    fn oauth2(
        &mut self,
        path: &str,
        a: RawAuth,
        default_token_url: Option<Url>,
        default_scopes: Vec<String>,
    ) -> OAuth2Config {
        self.unused(
            path,
            "oauth2",
            &[
                ("location", a.location.is_some()),
                ("name", a.name.is_some()),
                ("value", a.value.is_some()),
                ("token", a.token.is_some()),
                ("username", a.username.is_some()),
                ("password", a.password.is_some()),
            ],
        );
        let token_url = match a.token_url {
            Some(t) => self.url(&format!("{path}.token_url"), &t),
            None => default_token_url.unwrap_or_else(|| {
                self.error(format!("{path}.token_url"), "is required");
                super::placeholder_url()
            }),
        };
        let client_id = a.client_id.unwrap_or_else(|| {
            self.error(format!("{path}.client_id"), "is required");
            String::new()
        });
        let client_secret = Secret::new(a.client_secret.unwrap_or_else(|| {
            self.error(format!("{path}.client_secret"), "is required");
            String::new()
        }));
        let client_auth = match a.client_auth.as_deref() {
            None | Some("basic") => ClientAuth::Basic,
            Some("post") => ClientAuth::Post,
            Some(other) => {
                self.error(
                    format!("{path}.client_auth"),
                    format!("\"{other}\" is not \"basic\" or \"post\""),
                );
                ClientAuth::Basic
            }
        };
        OAuth2Config {
            token_url,
            client_id,
            client_secret,
            scopes: a.scopes.unwrap_or(default_scopes),
            client_auth,
        }
    }

    pub(super) fn url(&mut self, path: &str, text: &str) -> Url {
        match Url::parse(text) {
            Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() => u,
            _ => {
                self.error(path, format!("\"{text}\" is not an http(s) URL"));
                super::placeholder_url()
            }
        }
    }

    fn unused(&mut self, path: &str, kind: &str, keys: &[(&str, bool)]) {
        for (key, set) in keys {
            if *set {
                self.error(
                    format!("{path}.{key}"),
                    format!("does not apply to kind = \"{kind}\""),
                );
            }
        }
    }

    pub(super) fn http_auth(&mut self, path: &str, a: Option<RawAuth>) -> HttpAuth {
        let Some(a) = a else { return HttpAuth::None };
        let required = |v: &mut Validator, key: &str, value: Option<String>| {
            value.unwrap_or_else(|| {
                v.error(format!("{path}.{key}"), "is required");
                String::new()
            })
        };
        let oauth_keys = [
            ("token_url", a.token_url.is_some()),
            ("client_id", a.client_id.is_some()),
            ("client_secret", a.client_secret.is_some()),
            ("scopes", a.scopes.is_some()),
            ("client_auth", a.client_auth.is_some()),
        ];
        match a.kind.as_str() {
            "none" => HttpAuth::None,
            "api_key" => {
                self.unused(path, "api_key", &oauth_keys);
                self.unused(
                    path,
                    "api_key",
                    &[
                        ("token", a.token.is_some()),
                        ("username", a.username.is_some()),
                        ("password", a.password.is_some()),
                    ],
                );
                let location = match a.location.as_deref() {
                    None | Some("header") => ApiKeyLocation::Header,
                    Some("query") => ApiKeyLocation::Query,
                    Some(other) => {
                        self.error(
                            format!("{path}.location"),
                            format!("\"{other}\" is not \"header\" or \"query\""),
                        );
                        ApiKeyLocation::Header
                    }
                };
                HttpAuth::ApiKey {
                    location,
                    name: required(self, "name", a.name),
                    value: Secret::new(required(self, "value", a.value)),
                }
            }
            "bearer" => {
                self.unused(path, "bearer", &oauth_keys);
                HttpAuth::Bearer(Secret::new(required(self, "token", a.token)))
            }
            "basic" => {
                self.unused(path, "basic", &oauth_keys);
                HttpAuth::Basic {
                    username: required(self, "username", a.username),
                    password: Secret::new(required(self, "password", a.password)),
                }
            }
            "oauth2" => HttpAuth::OAuth2(self.oauth2(path, a, None, Vec::new())),
            other => {
                self.error(
                    format!("{path}.kind"),
                    format!(
                        "\"{other}\" is not an auth kind: use \"none\", \"api_key\", \"bearer\", \"basic\" or \"oauth2\""
                    ),
                );
                HttpAuth::None
            }
        }
    }

    /// Keys of the HTTP sink set on a Celonis sink are mistakes.
    pub(super) fn only_for_http(&mut self, path: &str, s: &RawSink) {
        for (key, set) in [
            ("base_url", s.base_url.is_some()),
            ("method", s.method.is_some()),
            ("path", s.path.is_some()),
            ("query", s.query.is_some()),
            ("headers", s.headers.is_some()),
            ("body", s.body.is_some()),
            ("batch_per", s.batch_per.is_some()),
            ("concurrency", s.concurrency.is_some()),
            ("success", s.success.is_some()),
        ] {
            if set {
                self.error(format!("{path}.{key}"), "only applies to kind = \"http\"");
            }
        }
    }

    pub(super) fn http_sink(&mut self, path: &str, s: RawSink) -> HttpSink {
        for (key, set) in [
            ("api", s.api.is_some()),
            ("url", s.url.is_some()),
            ("team", s.team.is_some()),
            ("cluster", s.cluster.is_some()),
            ("api_prefix", s.api_prefix.is_some()),
            ("data_pool_id", s.data_pool_id.is_some()),
            ("connection_id", s.connection_id.is_some()),
            ("target_name", s.target_name.is_some()),
            ("mode", s.mode.is_some()),
            ("keys", s.keys.is_some()),
            ("dedupe", s.dedupe.is_some()),
            ("delete_when", s.delete_when.is_some()),
            ("upsert_strategy", s.upsert_strategy.is_some()),
            ("app_key", s.app_key.is_some()),
            ("api_key", s.api_key.is_some()),
            ("chunk_bytes", s.chunk_bytes.is_some()),
            ("file_type", s.file_type.is_some()),
            ("rows_per_chunk", s.rows_per_chunk.is_some()),
            ("poll_timeout", s.poll_timeout.is_some()),
        ] {
            if set {
                self.error(
                    format!("{path}.{key}"),
                    "only applies to kind = \"celonis\"",
                );
            }
        }
        let batch_per = match s.batch_per.as_deref() {
            None | Some("run") => BatchPer::Run,
            Some("row") => BatchPer::Row,
            Some(other) => {
                self.error(
                    format!("{path}.batch_per"),
                    format!("\"{other}\" is not \"run\" or \"row\""),
                );
                BatchPer::Run
            }
        };
        let vars = match batch_per {
            BatchPer::Run => RUN_VARS,
            BatchPer::Row => ROW_VARS,
        };
        let base_url = match s.base_url {
            None => {
                self.error(format!("{path}.base_url"), "is required");
                Text::Literal(String::new())
            }
            Some(RawText::Literal(u)) => {
                self.url(&format!("{path}.base_url"), &u);
                Text::Literal(u)
            }
            Some(t) => self.text(&format!("{path}.base_url"), t, vars),
        };
        let method_text = s.method.unwrap_or_else(|| "POST".to_owned());
        let method = Method::from_bytes(method_text.to_ascii_uppercase().as_bytes())
            .unwrap_or_else(|_| {
                self.error(
                    format!("{path}.method"),
                    format!("\"{method_text}\" is not an HTTP method"),
                );
                Method::POST
            });
        let path_text = match s.path {
            None => Text::Literal(String::new()),
            Some(t) => self.text(&format!("{path}.path"), t, vars),
        };
        let query = self.pairs(&format!("{path}.query"), s.query, vars);
        let headers = self.pairs(&format!("{path}.headers"), s.headers, vars);
        for (name, _) in &headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.error(
                    format!("{path}.headers.{name}"),
                    "is not a valid header name",
                );
            }
        }
        let body = match s.body {
            None => BodyMode::JsonArray,
            Some(RawText::Literal(mode)) => match mode.as_str() {
                "json_array" => BodyMode::JsonArray,
                "ndjson" => BodyMode::Ndjson,
                "csv" => BodyMode::Csv,
                other => {
                    self.error(
                        format!("{path}.body"),
                        format!(
                            "\"{other}\" is not \"json_array\", \"ndjson\", \"csv\" or {{ expr = \"…\" }}"
                        ),
                    );
                    BodyMode::JsonArray
                }
            },
            Some(RawText::Expr(e)) => self
                .expr(&format!("{path}.body.expr"), &e.expr, vars)
                .map_or(BodyMode::JsonArray, BodyMode::Expr),
        };
        let concurrency = self.positive(&format!("{path}.concurrency"), s.concurrency, 4);
        let success = s
            .success
            .and_then(|e| self.expr(&format!("{path}.success"), &e, SUCCESS_VARS));
        let request_timeout = self.duration(
            &format!("{path}.request_timeout"),
            s.request_timeout.as_deref(),
            60,
        );
        let auth = self.http_auth(&format!("{path}.auth"), s.auth);
        let csv = self.csv(&format!("{path}.csv"), s.csv);
        let proxy = s
            .proxy
            .and_then(|p| self.proxy(&format!("{path}.proxy"), p));
        HttpSink {
            base_url,
            method,
            path: path_text,
            query,
            headers,
            body,
            batch_per,
            concurrency: usize::try_from(concurrency).unwrap_or(usize::MAX),
            auth,
            success,
            request_timeout,
            csv,
            proxy,
        }
    }
}
