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
    pub base: String,
    pub client: reqwest::Client,
}

/// Starts the real app from config text (with no environment variables).
pub async fn spawn_app(config: &str) -> TestApp {
    spawn_app_with_env(config, HashMap::new()).await
}

pub async fn spawn_app_with_env(config: &str, env: HashMap<String, String>) -> TestApp {
    let config = Config::load(config, &env).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    let app = App::start(config).await.expect("app starts");
    let base = format!("http://{}", app.ingest_addr());
    TestApp {
        app: Some(app),
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
        p.queue.peek(usize::MAX).await.expect("queue readable")
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
