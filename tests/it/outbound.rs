//! Outbound delivery: OAuth 2.0 client credentials against the emulator's token endpoint, the
//! generic HTTP sink against a recording test server, success rules, CEL filters and
//! expression columns.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use weir::config::Secret;
use weir::emulator::EmulatorConfig;
use weir::schedule::Outcome;
use weir::sink::oauth::{FetchToken, OAuthError, Token, TokenSource};

use crate::helpers::{
    ADMIN, TestEmulator, delivery_config, orders_pipeline, spawn_app, spawn_emulator,
};

const DATA_PUSH: &str = "integration.data-pools:data_push";

fn oauth_emulator() -> EmulatorConfig {
    EmulatorConfig {
        oauth_clients: vec![("weir-client".into(), "s3cret-value".into())],
        token_ttl: Duration::from_secs(900),
        ..EmulatorConfig::default()
    }
}

/// A Celonis sink using OAuth against the emulator; `auth_extra` goes inside the auth table.
fn celonis_oauth_config(emu: &TestEmulator, secret: &str, auth_extra: &str) -> String {
    delivery_config(&emu.base, "", "")
        .replace(
            "app_key = \"test-key\"",
            &format!(
                "auth = {{ kind = \"oauth2\", client_id = \"weir-client\", client_secret = \"{secret}\"{auth_extra} }}"
            ),
        )
}

async fn tokens_issued(emu: &TestEmulator) -> u64 {
    let body: Value = reqwest::get(format!("{}/emulator/oauth", emu.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["issued"].as_u64().unwrap()
}

async fn post_one(app: &crate::helpers::TestApp, id: &str) {
    let resp = app
        .post_json("orders", &json!({ "OrderId": id }).to_string())
        .await;
    assert_eq!(resp.status(), 202);
}

// ---------------------------------------------------------------- OAuth with the Celonis sink

#[tokio::test]
async fn the_celonis_sink_fetches_one_token_and_reuses_it_across_runs() {
    let emu = spawn_emulator(oauth_emulator()).await;
    let app = spawn_app(&celonis_oauth_config(&emu, "s3cret-value", "")).await;
    for id in ["001", "002", "003"] {
        post_one(&app, id).await;
        let report = app.app().flush("orders").await.unwrap();
        assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    }
    assert_eq!(emu.column("orders", "OrderId").await, ["001", "002", "003"]);
    assert_eq!(tokens_issued(&emu).await, 1, "one token serves every call");
}

#[tokio::test]
async fn client_secret_post_authenticates_with_form_fields() {
    let emu = spawn_emulator(oauth_emulator()).await;
    let app = spawn_app(&celonis_oauth_config(
        &emu,
        "s3cret-value",
        ", client_auth = \"post\"",
    ))
    .await;
    post_one(&app, "001").await;
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert_eq!(tokens_issued(&emu).await, 1);
}

#[tokio::test]
async fn a_token_refused_with_401_is_replaced_once_and_the_call_retried() {
    let emu = spawn_emulator(oauth_emulator()).await;
    let app = spawn_app(&celonis_oauth_config(&emu, "s3cret-value", "")).await;
    post_one(&app, "001").await;
    assert_eq!(
        app.app().flush("orders").await.unwrap().outcome,
        Outcome::Delivered
    );
    let revoked = reqwest::Client::new()
        .delete(format!("{}/emulator/oauth/tokens", emu.base))
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    post_one(&app, "002").await;
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert_eq!(tokens_issued(&emu).await, 2, "exactly one refresh");
    assert_eq!(emu.column("orders", "OrderId").await, ["001", "002"]);
}

#[tokio::test]
async fn a_wrong_client_secret_fails_the_run_keeps_the_rows_and_never_shows_the_secret() {
    let emu = spawn_emulator(oauth_emulator()).await;
    let app = spawn_app(&celonis_oauth_config(&emu, "wrong-secret-value", "")).await;
    post_one(&app, "001").await;
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Failed);
    let error = report.error.unwrap();
    assert!(error.contains("invalid_client"), "{error}");
    assert!(!error.contains("wrong-secret-value"), "{error}");
    assert_eq!(app.queued("orders").await.len(), 1, "rows stay queued");
    assert!(emu.jobs().await.is_empty(), "no job without a token");
}

#[tokio::test]
async fn the_emulator_token_endpoint_takes_form_multipart_and_query_encodings() {
    let emu = spawn_emulator(oauth_emulator()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/oauth2/token", emu.base);
    // client_secret_basic, form-encoded (pycelonis)
    let form = client
        .post(&url)
        .basic_auth("weir-client", Some("s3cret-value"))
        .form(&[("grant_type", "client_credentials"), ("scope", DATA_PUSH)])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    let token: Value = form.json().await.unwrap();
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 900);
    assert_eq!(token["scope"], DATA_PUSH);
    // client_secret_post, multipart (the Celonis docs' curl example)
    let multipart = reqwest::multipart::Form::new()
        .text("grant_type", "client_credentials")
        .text("scope", "integration.data-pools")
        .text("client_id", "weir-client")
        .text("client_secret", "s3cret-value");
    let resp = client.post(&url).multipart(multipart).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // grant_type and scope in the query string (the Postman walkthrough)
    let resp = client
        .post(format!("{url}?grant_type=client_credentials&scope=studio"))
        .basic_auth("weir-client", Some("s3cret-value"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let unscoped: Value = resp.json().await.unwrap();
    // A wrong secret and a wrong grant are refused.
    let resp = client
        .post(&url)
        .basic_auth("weir-client", Some("nope"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
    let resp = client
        .post(&url)
        .basic_auth("weir-client", Some("s3cret-value"))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // The data-push API wants a token it issued, with a data-push scope.
    let jobs = format!(
        "{}/integration/api/v1/data-push/8f2c1f9e-0000-4000-8000-000000000001/jobs/",
        emu.base
    );
    let with = |t: &str| client.get(&jobs).bearer_auth(t.to_owned()).send();
    assert_eq!(
        with(token["access_token"].as_str().unwrap())
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        with(unscoped["access_token"].as_str().unwrap())
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(with("made-up").await.unwrap().status(), 401);
}

// ---------------------------------------------------------------- the token cache, paused time

/// Hands out "t1", "t2", … after `delay`, each valid for `expires_in`.
struct FakeFetcher {
    calls: Arc<AtomicU32>,
    delay: Duration,
    expires_in: Duration,
}

impl FetchToken for FakeFetcher {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Token, OAuthError>> + Send + '_>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Token {
                access_token: Secret::new(format!("t{n}")),
                expires_in: self.expires_in,
            })
        })
    }
}

fn fake_source(delay: Duration) -> (Arc<TokenSource>, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let source = TokenSource::new(Box::new(FakeFetcher {
        calls: calls.clone(),
        delay,
        expires_in: Duration::from_secs(300),
    }));
    (Arc::new(source), calls)
}

#[tokio::test(start_paused = true)]
async fn tokens_are_cached_and_refreshed_a_minute_before_they_expire() {
    let (source, calls) = fake_source(Duration::ZERO);
    assert_eq!(source.token().await.unwrap().expose(), "t1");
    tokio::time::advance(Duration::from_secs(239)).await;
    assert_eq!(
        source.token().await.unwrap().expose(),
        "t1",
        "still cached 61 s before expiry"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        source.token().await.unwrap().expose(),
        "t2",
        "refreshed within the last minute (expires_in is seconds, not days)"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_token_request() {
    let (source, calls) = fake_source(Duration::from_secs(1));
    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let s = source.clone();
            tokio::spawn(async move { s.token().await.unwrap().expose().to_owned() })
        })
        .collect();
    for w in waiting {
        assert_eq!(w.await.unwrap(), "t1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_is_replaced_but_a_stale_rejection_keeps_the_new_one() {
    let (source, calls) = fake_source(Duration::ZERO);
    let t1 = source.token().await.unwrap();
    source.reject(&t1).await;
    let t2 = source.token().await.unwrap();
    assert_eq!(t2.expose(), "t2");
    // A second run that also got a 401 with t1 must not throw t2 away.
    source.reject(&t1).await;
    assert_eq!(source.token().await.unwrap().expose(), "t2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------- the HTTP sink

/// One request the test server received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    /// Path and query.
    uri: String,
    headers: HeaderMap,
    body: String,
}

#[derive(Clone, Default)]
struct ServerState {
    received: Arc<Mutex<Vec<Received>>>,
    /// Scripted answers, in order; when empty: 200 `{"result":"ok"}`.
    answers: Arc<Mutex<VecDeque<(u16, Value)>>>,
}

struct TestServer {
    base: String,
    state: ServerState,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestServer {
    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    fn answer(&self, status: u16, body: Value) {
        self.state.answers.lock().unwrap().push_back((status, body));
    }
}

async fn record(State(state): State<ServerState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    state.received.lock().unwrap().push(Received {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let answer = state.answers.lock().unwrap().pop_front();
    let (status, body) = answer.unwrap_or((200, json!({"result": "ok"})));
    let mut resp = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    if status == 429 {
        resp.headers_mut()
            .insert("retry-after", "120".parse().unwrap());
    }
    resp
}

async fn spawn_server() -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = ServerState::default();
    let router = axum::Router::new()
        .fallback(record)
        .with_state(state.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    });
    TestServer { base, state, stop }
}

/// A pipeline "orders" with an HTTP sink; `sink` goes inside `[pipelines.sink]` after
/// `base_url`.
fn http_config(server: &TestServer, pipeline_extra: &str, sink: &str) -> String {
    format!(
        "{}kind = \"http\"\nbase_url = \"{}\"\n{sink}\n",
        orders_pipeline(pipeline_extra),
        server.base
    )
}

const ROWS: &str = r#"[{"id":"007","price":1.50,"qty":3,"express":true,"note":null,"tags":[1,"a"]},{"id":"008","qty":4}]"#;

#[tokio::test]
async fn json_array_bodies_keep_types_and_path_query_and_headers_come_from_text_and_cel() {
    let server = spawn_server().await;
    let app = spawn_app(&http_config(
        &server,
        "",
        r#"path = { expr = "'/v1/tables/' + pipeline.name" }
query = { environment = "production", count = { expr = "string(size(rows))" } }
headers = { "X-Source" = "weir", "X-First" = { expr = "rows[0].id" } }
auth = { kind = "api_key", location = "header", name = "x-api-key", value = "k-123" }"#,
    ))
    .await;
    assert_eq!(app.post_json("orders", ROWS).await.status(), 202);
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    let got = server.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/v1/tables/orders?environment=production&count=2");
    assert_eq!(r.headers["x-source"], "weir");
    assert_eq!(r.headers["x-first"], "007");
    assert_eq!(r.headers["x-api-key"], "k-123");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(
        r.body,
        r#"[{"id":"007","price":1.50,"qty":3,"express":true,"note":null,"tags":[1,"a"]},{"id":"008","qty":4}]"#,
        "numbers keep their text, types stay"
    );
    assert!(app.queued("orders").await.is_empty());
}

#[tokio::test]
async fn ndjson_bodies_with_bearer_auth() {
    let server = spawn_server().await;
    let app = spawn_app(&http_config(
        &server,
        "",
        r#"path = "/ingest"
body = "ndjson"
auth = { kind = "bearer", token = "tok-1" }"#,
    ))
    .await;
    assert_eq!(app.post_json("orders", ROWS).await.status(), 202);
    assert_eq!(
        app.app().flush("orders").await.unwrap().outcome,
        Outcome::Delivered
    );
    let r = &server.received()[0];
    assert_eq!(r.uri, "/ingest");
    assert_eq!(r.headers["authorization"], "Bearer tok-1");
    assert_eq!(r.headers["content-type"], "application/x-ndjson");
    assert_eq!(
        r.body,
        "{\"id\":\"007\",\"price\":1.50,\"qty\":3,\"express\":true,\"note\":null,\"tags\":[1,\"a\"]}\n{\"id\":\"008\",\"qty\":4}\n"
    );
}

#[tokio::test]
async fn csv_bodies_with_basic_auth_use_the_pipeline_columns() {
    let server = spawn_server().await;
    let app = spawn_app(&http_config(
        &server,
        r#"[[pipelines.columns]]
name = "ID"
from = "id"
[[pipelines.columns]]
name = "Qty x2"
expr = "string(row.qty * 2)""#,
        r#"method = "PUT"
body = "csv"
auth = { kind = "basic", username = "weir", password = "pw" }
[pipelines.sink.csv]
separator = ";""#,
    ))
    .await;
    assert_eq!(app.post_json("orders", ROWS).await.status(), 202);
    assert_eq!(
        app.app().flush("orders").await.unwrap().outcome,
        Outcome::Delivered
    );
    let r = &server.received()[0];
    assert_eq!(r.method, "PUT");
    assert_eq!(r.headers["authorization"], "Basic d2Vpcjpwdw==");
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert_eq!(r.body, "ID;Qty x2\n007;6\n008;8\n");
}

#[tokio::test]
async fn a_body_expression_builds_any_json_and_api_keys_can_go_in_the_query() {
    let server = spawn_server().await;
    let app = spawn_app(&http_config(
        &server,
        "",
        r#"path = "/v1/charges"
body = { expr = "{'source': pipeline.name, 'count': size(rows), 'items': rows.map(r, {'id': r.id, 'qty': r.qty})}" }
auth = { kind = "api_key", location = "query", name = "key", value = "k 1" }"#,
    ))
    .await;
    assert_eq!(app.post_json("orders", ROWS).await.status(), 202);
    assert_eq!(
        app.app().flush("orders").await.unwrap().outcome,
        Outcome::Delivered
    );
    let r = &server.received()[0];
    assert_eq!(r.uri, "/v1/charges?key=k+1");
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        body,
        json!({"source": "orders", "count": 2, "items": [{"id": "007", "qty": 3}, {"id": "008", "qty": 4}]})
    );
}

#[tokio::test]
async fn batch_per_row_sends_one_request_per_row() {
    let server = spawn_server().await;
    let app = spawn_app(&http_config(
        &server,
        "",
        r#"method = "PUT"
path = { expr = "'/items/' + row.id" }
batch_per = "row"
concurrency = 2"#,
    ))
    .await;
    let rows: Vec<Value> = (1..=5).map(|i| json!({"id": format!("r{i}")})).collect();
    assert_eq!(
        app.post_json("orders", &json!(rows).to_string())
            .await
            .status(),
        202
    );
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    let mut got: Vec<(String, String)> = server
        .received()
        .into_iter()
        .map(|r| (r.uri, r.body))
        .collect();
    got.sort();
    let want: Vec<(String, String)> = (1..=5)
        .map(|i| (format!("/items/r{i}"), format!("{{\"id\":\"r{i}\"}}")))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn batch_per_row_sends_in_row_order_and_a_retry_starts_at_the_failed_row() {
    let server = spawn_server().await;
    let app = spawn_app(&http_config(
        &server,
        "",
        r#"path = { expr = "'/items/' + row.id" }
batch_per = "row"
concurrency = 1"#,
    ))
    .await;
    let rows: Vec<Value> = (1..=6).map(|i| json!({"id": format!("r{i}")})).collect();
    assert_eq!(
        app.post_json("orders", &json!(rows).to_string())
            .await
            .status(),
        202
    );
    server.answer(200, json!({"result": "ok"}));
    server.answer(200, json!({"result": "ok"}));
    server.answer(503, json!({"error": "busy"}));
    let failed = app.app().flush("orders").await.unwrap();
    assert_eq!(failed.outcome, Outcome::Failed, "{failed:?}");
    let error = failed.error.unwrap();
    assert!(
        error.contains("delivered 2 rows (through offset 1)") && error.contains("HTTP 503"),
        "{error}"
    );
    let left: Vec<u64> = app
        .queued("orders")
        .await
        .iter()
        .map(|e| e.offset)
        .collect();
    assert_eq!(left, [2, 3, 4, 5], "the delivered prefix left the queue");
    let retried = app.app().flush("orders").await.unwrap();
    assert_eq!(retried.outcome, Outcome::Delivered, "{retried:?}");
    let uris: Vec<String> = server.received().into_iter().map(|r| r.uri).collect();
    assert_eq!(
        uris,
        [
            "/items/r1",
            "/items/r2",
            "/items/r3",
            "/items/r3",
            "/items/r4",
            "/items/r5",
            "/items/r6"
        ],
        "one at a time, in row order; the retry sends only the rows not delivered"
    );
    assert!(app.queued("orders").await.is_empty());
}

/// A server that answers `/away` with a redirect to `target`, `/here` with a redirect to its
/// own `/landed`, and records everything else.
async fn spawn_redirector(target: String) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = ServerState::default();
    let away = move || async move {
        (
            StatusCode::TEMPORARY_REDIRECT,
            [("location", format!("{target}/stolen"))],
        )
    };
    let here = || async { (StatusCode::TEMPORARY_REDIRECT, [("location", "/landed")]) };
    let router = axum::Router::new()
        .route("/away", axum::routing::any(away))
        .route("/here", axum::routing::any(here))
        .fallback(record)
        .with_state(state.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    });
    TestServer { base, state, stop }
}

#[tokio::test]
async fn the_api_key_never_follows_a_redirect_to_another_port() {
    let elsewhere = spawn_server().await;
    let server = spawn_redirector(elsewhere.base.clone()).await;
    let sink = r#"path = "/away"
auth = { kind = "api_key", location = "header", name = "x-api-key", value = "k-secret-123" }"#;
    let app = spawn_app(&http_config(&server, "", sink)).await;
    assert_eq!(app.post_json("orders", ROWS).await.status(), 202);
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    let error = report.error.unwrap();
    assert!(
        error.contains("not following the redirect") && error.contains(&elsewhere.base),
        "{error}"
    );
    assert!(!error.contains("k-secret-123"), "{error}");
    assert!(
        elsewhere.received().is_empty(),
        "nothing, and no key, reached the other port"
    );
    assert_eq!(app.queued("orders").await.len(), 2, "rows stay queued");

    // Within the sink's own origin, redirects are followed with the key.
    let app = spawn_app(&http_config(&server, "", &sink.replace("/away", "/here"))).await;
    assert_eq!(app.post_json("orders", ROWS).await.status(), 202);
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    let got = server.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].uri, "/landed");
    assert_eq!(got[0].headers["x-api-key"], "k-secret-123");
}

#[tokio::test]
async fn a_response_body_over_the_read_limit_fails_the_success_rule_unread() {
    let server = spawn_server().await;
    let app = spawn_app(&http_config(
        &server,
        "",
        r#"success = "response.status == 200""#,
    ))
    .await;
    server.answer(200, json!("x".repeat(weir::sink::http::MAX_RESPONSE_BYTES)));
    assert_eq!(app.post_json("orders", ROWS).await.status(), 202);
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    assert!(
        report
            .error
            .as_deref()
            .unwrap()
            .contains("larger than 1048576 bytes"),
        "{report:?}"
    );
    assert_eq!(app.queued("orders").await.len(), 2, "rows stay queued");
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
}

#[tokio::test]
async fn the_failure_clock_survives_a_restart_so_suspend_after_counts_across_it() {
    let server = spawn_server().await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("orders");
    std::fs::create_dir_all(&state_dir).unwrap();
    let now_ms = weir::queue::now_ms();
    // Failing for 2 h when weir stopped; it suspends after 1 h.
    std::fs::write(
        state_dir.join("pipeline.json"),
        json!({"version": 2, "paused": false, "failing_since_ms": now_ms - 2 * 3600 * 1000})
            .to_string(),
    )
    .unwrap();
    let text = format!(
        "data_dir = \"{}\"\n{ADMIN}\n{}",
        dir.path().display(),
        http_config(&server, "suspend_after = \"1h\"", "")
    );
    let app = spawn_app(&text).await;
    assert_eq!(app.pipeline_view("orders").await["state"], "FAILING");
    server.answer(500, json!({"error": "still down"}));
    assert_eq!(app.post_json("orders", ROWS).await.status(), 202);
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    assert_eq!(
        app.pipeline_view("orders").await["state"],
        "SUSPENDED",
        "the first failure after the restart is already past suspend_after"
    );
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert_eq!(app.pipeline_view("orders").await["state"], "ACTIVE");
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("pipeline.json")).unwrap()).unwrap();
    assert_eq!(
        on_disk,
        json!({"version": 2, "paused": false}),
        "cleared on success"
    );
}

#[tokio::test]
async fn a_200_with_an_error_body_fails_the_success_rule_is_retried_and_then_delivered() {
    let server = spawn_server().await;
    let app = spawn_app(&http_config(
        &server,
        "",
        r#"success = "response.status == 200 && response.body.result == 'ok' && response.headers['content-type'] == 'application/json'""#,
    ))
    .await;
    server.answer(200, json!({"result": "error", "message": "quota"}));
    assert_eq!(app.post_json("orders", ROWS).await.status(), 202);
    let first = app.app().flush("orders").await.unwrap();
    assert_eq!(first.outcome, Outcome::Failed);
    assert!(
        first.error.as_deref().unwrap().contains("success rule"),
        "{first:?}"
    );
    assert_eq!(app.queued("orders").await.len(), 2, "rows stay queued");
    let second = app.app().flush("orders").await.unwrap();
    assert_eq!(second.outcome, Outcome::Delivered, "{second:?}");
    assert!(app.queued("orders").await.is_empty());
    let got = server.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, got[1].body, "the same batch is sent again");
}

#[tokio::test]
async fn without_a_rule_any_non_2xx_fails_and_a_429_retry_after_is_honoured() {
    let server = spawn_server().await;
    let app = spawn_app(&http_config(&server, "", "")).await;
    server.answer(500, json!({"error": "boom"}));
    server.answer(429, json!("slow down"));
    assert_eq!(app.post_json("orders", ROWS).await.status(), 202);
    let failed = app.app().flush("orders").await.unwrap();
    assert_eq!(failed.outcome, Outcome::Failed);
    assert!(failed.error.as_deref().unwrap().contains("HTTP 500"));
    let limited = app.app().flush("orders").await.unwrap();
    assert_eq!(limited.outcome, Outcome::Failed);
    assert_eq!(limited.retry_after, Some(Duration::from_secs(120)));
    assert_eq!(
        app.app().flush("orders").await.unwrap().outcome,
        Outcome::Delivered
    );
}

#[tokio::test]
async fn the_http_sink_uses_oauth_tokens_and_refreshes_once_on_401() {
    let emu = spawn_emulator(oauth_emulator()).await;
    let server = spawn_server().await;
    let app = spawn_app(&http_config(
        &server,
        "",
        &format!(
            r#"auth = {{ kind = "oauth2", token_url = "{}/oauth2/token", client_id = "weir-client", client_secret = "s3cret-value", scopes = ["{DATA_PUSH}"], client_auth = "post" }}"#,
            emu.base
        ),
    ))
    .await;
    server.answer(401, json!({"error": "expired"}));
    assert_eq!(app.post_json("orders", ROWS).await.status(), 202);
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    let got = server.received();
    assert_eq!(got.len(), 2, "one retry after the 401");
    let auth: Vec<&str> = got
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap())
        .collect();
    assert!(
        auth.iter().all(|a| a.starts_with("Bearer emu-")),
        "{auth:?}"
    );
    assert_ne!(auth[0], auth[1], "a fresh token for the retry");
    assert_eq!(tokens_issued(&emu).await, 2);
}

// ---------------------------------------------------------------- filters and expression columns

#[tokio::test]
async fn filters_drop_rows_at_ingest_and_expression_columns_reach_the_emulator() {
    let emu = spawn_emulator(EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..EmulatorConfig::default()
    })
    .await;
    let pipeline = r#"filter = "row.EntityName == 'Customer groups'"
[[pipelines.columns]]
name = "Group"
from = "Code"
[[pipelines.columns]]
name = "Code Upper"
expr = "row.Code.upperAscii()"
[[pipelines.columns]]
name = "Valid From"
expr = "row.Date.split('.')[2] + '-' + row.Date.split('.')[1] + '-' + row.Date.split('.')[0]"
[[pipelines.columns]]
name = "Label"
expr = "row.Code + ' / ' + row.Name"
"#;
    let app = spawn_app(&delivery_config(&emu.base, pipeline, "")).await;
    let body = json!([
        {"EntityName": "Customer groups", "Code": "dom", "Name": "Domestic", "Date": "12.03.2021"},
        {"EntityName": "Vendors", "Code": "v1", "Name": "Vendor", "Date": "01.01.2020"},
        {"Code": "x"},
        {"EntityName": "Customer groups", "Code": "exp", "Name": "Export", "Date": "01.02.2022"},
    ]);
    let resp = app.post_json("orders", &body.to_string()).await;
    let (status, answer) = crate::helpers::status_and_json(resp).await;
    assert_eq!(status, 202);
    assert_eq!(answer, json!({"accepted": 2, "ignored": 2}));
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    let table = emu.table("orders").await;
    let rows: Vec<Value> = table.into_iter().map(Value::Object).collect();
    assert_eq!(
        rows,
        [
            json!({"Group": "dom", "Code Upper": "DOM", "Valid From": "2021-03-12", "Label": "dom / Domestic"}),
            json!({"Group": "exp", "Code Upper": "EXP", "Valid From": "2022-02-01", "Label": "exp / Export"}),
        ]
    );
}
