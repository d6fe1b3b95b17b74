//! `api = "continuous"` against the real emulator: each run is one Parquet file uploaded to
//! the Continuous Batch Processing API; typed rows reach the table, the latest row of a key
//! wins across runs, a failed or unanswered upload is repeated without doubling a key, and
//! a file refused with 400 goes through bad-row isolation. No job is ever made.

use std::time::Duration;

use serde_json::{Value, json};
use weir::config::{Config, SinkConfig};
use weir::emulator::EmulatorConfig;
use weir::schedule::Outcome;

use crate::helpers::{
    ADMIN, READ_TOKEN, TestApp, TestEmulator, delivery_config, spawn_app, spawn_emulator,
};

const POOL: &str = "8f2c1f9e-0000-4000-8000-000000000001";

fn emulator() -> EmulatorConfig {
    EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..EmulatorConfig::default()
    }
}

/// A pipeline "orders" with a continuous sink to the emulator; `sink_extra` goes in the sink.
fn config(emu: &TestEmulator, pipeline_extra: &str, sink_extra: &str) -> String {
    format!(
        "{ADMIN}\n{}",
        delivery_config(
            &emu.base,
            pipeline_extra,
            &format!("api = \"continuous\"\n{sink_extra}")
        )
    )
}

impl TestEmulator {
    /// Every continuous upload the emulator applied, oldest first.
    async fn items(&self) -> Vec<Value> {
        reqwest::get(format!("{}/emulator/items", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

async fn post(app: &TestApp, rows: Value) {
    assert_eq!(
        app.post_json("orders", &rows.to_string()).await.status(),
        202
    );
}

/// The dead-letter file's records (offset, received_at, reason, row).
async fn dead_letters(app: &TestApp) -> Vec<Vec<String>> {
    let resp = app
        .admin(
            reqwest::Method::GET,
            "/admin/pipelines/orders/dead-letter",
            Some(READ_TOKEN),
        )
        .await;
    if resp.status() == 404 {
        return Vec::new();
    }
    let text = resp.text().await.unwrap();
    csv::Reader::from_reader(text.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

const TYPED: &str = r#"
[pipelines.schema]
fields = { OrderId = "string", Quantity = "integer", Price = "number", Express = "boolean", Day = "string" }
[[pipelines.columns]]
name = "OrderId"
from = "OrderId"
[[pipelines.columns]]
name = "Quantity"
from = "Quantity"
[[pipelines.columns]]
name = "Price"
from = "Price"
[[pipelines.columns]]
name = "Express"
from = "Express"
[[pipelines.columns]]
name = "Day"
from = "Day"
type = "DATE"
"#;

#[tokio::test]
async fn continuous_delivers_typed_rows_as_one_upload_and_makes_no_job() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&config(&emu, TYPED, "")).await;
    post(
        &app,
        json!([
            {"OrderId": "0145", "Quantity": 12, "Price": 19.5, "Express": true, "Day": "2026-12-03"},
            {"OrderId": "0146", "Quantity": 1, "Price": 2.25, "Express": false}
        ]),
    )
    .await;
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert_eq!(report.rows, 2);

    let items = emu.items().await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        report.job_id.as_deref(),
        items[0]["id"].as_str(),
        "the item id is the run's id"
    );
    assert_eq!(items[0]["fileName"], "orders.parquet");
    assert!(items[0]["bucketId"].is_string(), "{items:?}");
    let client_id = items[0]["clientId"].as_str().unwrap().to_owned();
    assert!(client_id.starts_with("weir-"), "{client_id}");
    assert!(emu.jobs().await.is_empty(), "no data push job was made");

    let table = emu.table("orders").await;
    assert_eq!(table.len(), 2);
    assert_eq!(table[0]["OrderId"], "0145", "leading zeros kept");
    assert_eq!(table[0]["Quantity"], 12);
    assert_eq!(table[0]["Price"], 19.5);
    assert_eq!(table[0]["Express"], true);
    assert_eq!(table[0]["Day"], "2026-12-03");
    assert_eq!(table[1]["Express"], false);
    assert_eq!(table[1]["Day"], Value::Null);
    assert!(
        !table[0].contains_key("weir_seq"),
        "no order column without keys"
    );

    // The admin API shows the item id as the last run's job.
    let view = app.pipeline_view("orders").await;
    assert_eq!(view["last_run"]["job_id"], items[0]["id"], "{view}");

    // A second run keeps the same client id.
    post(&app, json!([{"OrderId": "0147"}])).await;
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert_eq!(emu.items().await[1]["clientId"], client_id.as_str());
}

#[tokio::test]
async fn three_rows_for_one_key_in_three_runs_leave_the_last() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&config(&emu, "", "keys = [\"id\"]")).await;
    for v in ["first", "second", "third"] {
        post(
            &app,
            json!([{"id": "1", "v": v}, {"id": format!("other-{v}"), "v": v}]),
        )
        .await;
        let report = app.app().flush("orders").await.unwrap();
        assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    }
    let table = emu.table("orders").await;
    let ones: Vec<_> = table.iter().filter(|r| r["id"] == "1").collect();
    assert_eq!(ones.len(), 1, "{table:?}");
    assert_eq!(ones[0]["v"], "third");
    assert_eq!(
        ones[0]["weir_seq"], 4,
        "the order column is the row's queue offset"
    );
    assert_eq!(table.len(), 4, "{table:?}");
}

#[tokio::test]
async fn within_one_run_only_the_latest_row_of_a_key_is_sent() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&config(&emu, "", "keys = [\"id\"]")).await;
    post(
        &app,
        json!([{"id": "1", "v": "a"}, {"id": "2", "v": "x"}, {"id": "1", "v": "b"}]),
    )
    .await;
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert_eq!(report.rows, 3, "every row of the batch is committed");
    assert_eq!(
        emu.items().await[0]["rows"],
        2,
        "one row per key in the file"
    );
    // A key's latest row goes where that row is in the batch.
    assert_eq!(emu.column("orders", "v").await, ["x", "b"]);
}

#[tokio::test]
async fn a_500_then_a_200_delivers_the_batch_once() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&config(&emu, "", "")).await;
    emu.fault(json!({"endpoint": "items", "status": 500})).await;
    post(&app, json!([{"id": "1"}, {"id": "2"}, {"id": "3"}])).await;

    let failed = app.app().flush("orders").await.unwrap();
    assert_eq!(failed.outcome, Outcome::Failed, "{failed:?}");
    let error = failed.error.unwrap();
    assert!(error.contains("upload file: HTTP 500"), "{error}");
    assert_eq!(
        app.queued("orders").await.len(),
        3,
        "the batch stays queued"
    );
    assert!(emu.table("orders").await.is_empty());

    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert!(app.queued("orders").await.is_empty());
    // Without keys every applied upload appends: three rows means one upload went through.
    assert_eq!(emu.column("orders", "id").await, ["1", "2", "3"]);
    assert_eq!(emu.items().await.len(), 1);
}

#[tokio::test]
async fn a_lost_answer_and_the_retry_leave_each_key_once() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&config(&emu, "", "keys = [\"id\"]")).await;
    emu.fault(json!({"endpoint": "items", "lost_answer": true}))
        .await;
    post(&app, json!([{"id": "1", "v": "a"}, {"id": "2", "v": "b"}])).await;

    let failed = app.app().flush("orders").await.unwrap();
    assert_eq!(failed.outcome, Outcome::Failed, "{failed:?}");
    let error = failed.error.unwrap();
    assert!(error.starts_with("upload file: "), "{error}");
    assert_eq!(
        app.queued("orders").await.len(),
        2,
        "no answer: the batch stays queued"
    );
    assert_eq!(
        emu.items().await.len(),
        1,
        "yet the emulator applied the file"
    );

    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert_eq!(emu.items().await.len(), 2, "the file was uploaded again");
    let table = emu.table("orders").await;
    assert_eq!(table.len(), 2, "each key once: {table:?}");
    assert_eq!(emu.column("orders", "v").await, ["a", "b"]);
}

#[tokio::test]
async fn a_file_refused_with_400_isolates_the_bad_row_and_delivers_the_rest() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&config(&emu, "", "")).await;
    let rows: Vec<_> = (0..10)
        .map(|i| {
            let price = if i == 6 {
                "not-a-price".to_owned()
            } else {
                format!("{i}.5")
            };
            json!({"id": i.to_string(), "Price": price})
        })
        .collect();
    post(&app, json!(rows)).await;
    emu.fault(json!({"bad_value": "not-a-price"})).await;

    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert_eq!(report.rows, 10, "{report:?}");
    assert!(app.queued("orders").await.is_empty());
    let mut ids = emu.column("orders", "id").await;
    ids.sort_by_key(|id| id.parse::<u32>().unwrap());
    assert_eq!(ids, ["0", "1", "2", "3", "4", "5", "7", "8", "9"]);
    let dead = dead_letters(&app).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0][0], "6");
    assert!(
        dead[0][2].starts_with("upload file: HTTP 400: row ")
            && dead[0][2].contains("column Price: the value \"not-a-price\""),
        "the service's reason: {dead:?}"
    );
}

#[tokio::test]
async fn check_online_probes_a_continuous_sink_with_the_pools_job_list() {
    let emu = spawn_emulator(EmulatorConfig {
        pools: Some(vec![POOL.into()]),
        ..emulator()
    })
    .await;
    let load = |text: String| {
        let config = Config::load(&text, &Default::default()).unwrap();
        match &config.pipelines[0].sink {
            SinkConfig::Celonis(s) => s.clone(),
            SinkConfig::Http(_) => unreachable!("a celonis sink"),
        }
    };
    let tokens = weir::sink::oauth::Tokens::default();
    let ok = load(config(&emu, "", ""));
    let probed = weir::sink::probe::probe(&ok, &tokens, Duration::from_secs(5)).await;
    assert_eq!(probed, Ok(Some(0)));
    let wrong = load(config(&emu, "", "").replace("test-key", "wrong-key"));
    let probed = weir::sink::probe::probe(&wrong, &tokens, Duration::from_secs(5)).await;
    assert!(
        matches!(probed, Err(weir::sink::probe::Problem::Unauthorized { .. })),
        "{probed:?}"
    );
}

/// `config` with `schedule = "continuous"` instead of the helpers' hourly schedule.
fn continuously(emu: &TestEmulator, pipeline_extra: &str) -> String {
    let text = config(emu, pipeline_extra, "");
    assert!(text.contains("schedule = \"1h\""));
    text.replace("schedule = \"1h\"", "schedule = \"continuous\"")
}

#[tokio::test]
async fn schedule_continuous_uploads_as_soon_as_the_queued_rows_reach_max_rows_per_run() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&continuously(
        &emu,
        "max_rows_per_run = 3\nmax_wait = \"1h\"",
    ))
    .await;
    post(&app, json!([{"id": "1"}, {"id": "2"}])).await;
    post(&app, json!([{"id": "3"}])).await;
    crate::helpers::wait_until(10, "three rows in the table", || async {
        emu.table("orders").await.len() == 3
    })
    .await;
    let items = emu.items().await;
    assert_eq!(items.len(), 1, "two rows did not make an upload: {items:?}");
    assert_eq!(items[0]["rows"], 3);
    crate::helpers::wait_until(10, "the rows committed", || async {
        app.queued("orders").await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn schedule_continuous_uploads_max_wait_after_the_oldest_queued_row() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&continuously(&emu, "max_wait = \"1s\"")).await;
    let start = tokio::time::Instant::now();
    post(&app, json!([{"id": "1"}])).await;
    crate::helpers::wait_until(10, "the row in the table", || async {
        emu.table("orders").await.len() == 1
    })
    .await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "uploaded after {waited:?}, before max_wait"
    );
    let view = app.pipeline_view("orders").await;
    assert_eq!(view["schedule"], "continuous", "{view}");
}

#[tokio::test]
async fn with_oauth_an_upload_refused_with_401_gets_one_new_token_and_is_sent_again() {
    let emu = spawn_emulator(EmulatorConfig {
        oauth_clients: vec![("weir-client".into(), "s3cret-value".into())],
        ..EmulatorConfig::default()
    })
    .await;
    let text = config(&emu, "", "").replace(
        "app_key = \"test-key\"",
        "auth = { kind = \"oauth2\", client_id = \"weir-client\", client_secret = \"s3cret-value\" }",
    );
    let app = spawn_app(&text).await;
    let issued = || async {
        let body: Value = reqwest::get(format!("{}/emulator/oauth", emu.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["issued"].as_u64().unwrap()
    };
    post(&app, json!([{"id": "1"}])).await;
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert_eq!(issued().await, 1);
    let revoked = reqwest::Client::new()
        .delete(format!("{}/emulator/oauth/tokens", emu.base))
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    post(&app, json!([{"id": "2"}])).await;
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert_eq!(issued().await, 2, "exactly one refresh");
    assert_eq!(emu.column("orders", "id").await, ["1", "2"]);
}

#[tokio::test]
async fn a_wrong_key_leaves_the_batch_queued_and_is_not_bad_data() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&config(&emu, "", "").replace("test-key", "wrong-key")).await;
    post(&app, json!([{"id": "1"}, {"id": "2"}])).await;
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    let error = report.error.unwrap();
    assert!(error.contains("HTTP 401"), "{error}");
    assert_eq!(app.queued("orders").await.len(), 2);
    assert!(dead_letters(&app).await.is_empty(), "nothing isolated");
}

#[tokio::test]
async fn a_429_leaves_the_batch_queued_and_the_retry_waits_for_retry_after() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&config(&emu, "", "")).await;
    emu.fault(json!({"endpoint": "items", "status": 429, "retry_after": 2}))
        .await;
    post(&app, json!([{"id": "1"}])).await;
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    assert_eq!(report.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(app.queued("orders").await.len(), 1);
    // The next upload to the team waits out the 429's Retry-After.
    let start = tokio::time::Instant::now();
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
}
