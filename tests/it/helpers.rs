//! `spawn_app` and the domain helpers the tests read with.

use std::collections::HashMap;
use std::time::Duration;

use weir::app::App;
use weir::config::Config;
use weir::queue::Entry;

/// A config with one pipeline "orders" whose sink points nowhere reachable; tests that need
/// delivery override the sink. `extra` is appended inside the pipeline table.
pub fn pipeline_config(listen: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
max_body_bytes = 4096
shutdown_grace = "5s"

[[pipelines]]
name = "orders"
queue_capacity = 10
schedule = "1h"
{extra}

[pipelines.sink]
kind = "celonis"
url = "http://127.0.0.1:9"
data_pool_id = "pool-1"
target_name = "orders"
app_key = "test-key"
"#
    )
}

pub struct TestApp {
    app: Option<App>,
    /// The app's `data_dir` (pause flags, dead letters), unless the config set one.
    _data_dir: Option<tempfile::TempDir>,
    pub base: String,
    pub client: reqwest::Client,
}

/// Starts the real app from config text (with no environment variables).
pub async fn spawn_app(config: &str) -> TestApp {
    spawn_app_with_env(config, HashMap::new()).await
}

pub async fn spawn_app_with_env(config: &str, env: HashMap<String, String>) -> TestApp {
    // Each app gets its own data_dir, so no state leaks between tests or into the checkout.
    let (config, data_dir) = if config.contains("data_dir") {
        (config.to_owned(), None)
    } else {
        let dir = tempfile::tempdir().unwrap();
        (
            format!("data_dir = \"{}\"\n{config}", dir.path().display()),
            Some(dir),
        )
    };
    let config =
        Config::load(&config, &env).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    let app = App::start(config).await.expect("app starts");
    let base = format!("http://{}", app.ingest_addr());
    TestApp {
        app: Some(app),
        _data_dir: data_dir,
        base,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .unwrap(),
    }
}

impl TestApp {
    pub fn app(&self) -> &App {
        self.app.as_ref().expect("app running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_json(&self, pipeline: &str, body: &str) -> reqwest::Response {
        self.post(
            &format!("/hooks/{pipeline}"),
            "application/json",
            body.to_owned(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// Every row queued in a pipeline, oldest first.
    pub async fn queued(&self, pipeline: &str) -> Vec<Entry> {
        let p = self.app().pipeline(pipeline).expect("pipeline exists");
        p.queue()
            .peek(usize::MAX, u64::MAX)
            .await
            .expect("queue readable")
    }

    /// The queued rows as (field, text) pairs, for easy comparison.
    pub async fn queued_fields(&self, pipeline: &str) -> Vec<Vec<(String, String)>> {
        self.queued(pipeline)
            .await
            .iter()
            .map(|e| {
                e.row
                    .fields()
                    .map(|f| (f.name.to_owned(), f.text.to_owned()))
                    .collect()
            })
            .collect()
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

/// A response's status and JSON body.
pub async fn status_and_json(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body readable");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is not JSON: {text}"));
    (status, json)
}

/// Waits until `cond` holds, polling every 20 ms, for at most `secs` seconds.
pub async fn wait_until<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real Data Push emulator, on a free loopback port.
pub struct TestEmulator {
    pub base: String,
    client: reqwest::Client,
    stop: tokio_util::sync::CancellationToken,
}

pub async fn spawn_emulator(config: weir::emulator::EmulatorConfig) -> TestEmulator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let emulator = weir::emulator::Emulator::new(config).expect("emulator starts");
    tokio::spawn(emulator.serve(listener, stop.clone()));
    TestEmulator {
        base,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        stop,
    }
}

impl Drop for TestEmulator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestEmulator {
    /// The rows of a table, in insertion order (empty when it does not exist yet).
    pub async fn table(&self, name: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let resp = self
            .client
            .get(format!("{}/emulator/tables/{name}", self.base))
            .send()
            .await
            .unwrap();
        if resp.status() == 404 {
            return vec![];
        }
        let body: serde_json::Value = resp.json().await.unwrap();
        body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_object().unwrap().clone())
            .collect()
    }

    /// One column of a table, in insertion order.
    pub async fn column(&self, table: &str, column: &str) -> Vec<String> {
        self.table(table)
            .await
            .iter()
            .map(|r| r[column].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Every job the emulator saw, oldest first.
    pub async fn jobs(&self) -> Vec<serde_json::Value> {
        let resp = self
            .client
            .get(format!("{}/emulator/jobs", self.base))
            .send()
            .await
            .unwrap();
        resp.json().await.unwrap()
    }

    pub async fn fault(&self, fault: serde_json::Value) {
        let resp = self
            .client
            .post(format!("{}/emulator/faults", self.base))
            .json(&fault)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "fault accepted");
    }
}

/// The `[server]` table and a pipeline "orders" that only runs when flushed, up to its
/// `[pipelines.sink]` line; `pipeline_extra` goes in the pipeline table.
pub fn orders_pipeline(pipeline_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"

[[pipelines]]
name = "orders"
queue_capacity = 1000
schedule = "1h"
retry_initial = "1h"
retry_max_interval = "1h"
{pipeline_extra}

[pipelines.sink]
"#
    )
}

/// A pipeline config delivering to `emulator_url`; `pipeline_extra` goes in the pipeline
/// table, `sink_extra` in the sink table.
pub fn delivery_config(emulator_url: &str, pipeline_extra: &str, sink_extra: &str) -> String {
    format!(
        r#"{}kind = "celonis"
url = "{emulator_url}"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "orders"
app_key = "test-key"
{sink_extra}
"#,
        orders_pipeline(pipeline_extra)
    )
}

pub const READ_TOKEN: &str = "read-token-0123456789";
pub const WRITE_TOKEN: &str = "write-token-0123456789";

/// The `[admin]` table tests use: a read and a write token.
pub const ADMIN: &str = r#"
[admin]
listen = "127.0.0.1:0"
[[admin.tokens]]
name = "dashboard"
token = "read-token-0123456789"
scope = "read"
[[admin.tokens]]
name = "operator"
token = "write-token-0123456789"
scope = "write"
"#;

impl TestApp {
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.app().admin_addr().expect("admin configured")
        )
    }

    /// Sends an admin request with the given token (or none).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.client.request(method, self.admin_url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("admin request sent")
    }

    /// An admin request with the write token, answered with its status and JSON body.
    pub async fn admin_json(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> (u16, serde_json::Value) {
        status_and_json(self.admin(method, path, Some(WRITE_TOKEN)).await).await
    }

    /// The pipeline as `GET /admin/pipelines/{name}` shows it.
    pub async fn pipeline_view(&self, name: &str) -> serde_json::Value {
        let (status, body) = status_and_json(
            self.admin(
                reqwest::Method::GET,
                &format!("/admin/pipelines/{name}"),
                Some(READ_TOKEN),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn scrape(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl TestEmulator {
    pub async fn clear_faults(&self) {
        let resp = self
            .client
            .delete(format!("{}/emulator/faults", self.base))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }
}
