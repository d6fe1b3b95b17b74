//! `[pipelines.fetch]` against the emulator's FinOps business events: the zip a
//! `DownloadURL` names lands with both its CSV entries; inline answers after the rows are
//! queued (or 502), deferred at once with `fetches_queued`; an expired link is dead-lettered
//! with host and status only; oversized files queue nothing; a SIGKILL before the download
//! resumes it at start-up.

use serde_json::{Value, json};
use weir::emulator::EmulatorConfig;

use crate::crash::Weir;
use crate::helpers::{TestEmulator, spawn_app, spawn_emulator, status_and_json, wait_until};

async fn finops_emulator() -> TestEmulator {
    spawn_emulator(EmulatorConfig {
        app_keys: vec!["test-key".into()],
        finops: Some(0),
        ..Default::default()
    })
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A business event from the emulator whose package holds `entities` (file name, CSV).
async fn event(emu: &TestEmulator, entities: &[(&str, &str)]) -> Value {
    let entities: serde_json::Map<String, Value> = entities
        .iter()
        .map(|(n, c)| ((*n).to_owned(), Value::String((*c).to_owned())))
        .collect();
    let resp = client()
        .post(format!("{}/emulator/finops/events", emu.base))
        .json(&json!({ "entity": "Customer groups", "entities": entities }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json().await.unwrap()
}

const TWO_ENTITIES: &[(&str, &str)] = &[
    (
        "Customer groups.csv",
        "ID,Name\nCG1,Wholesale\nCG2,Retail\n",
    ),
    ("Vendor groups.csv", "ID,Name\nVG1,Services\n"),
];

async fn count(emu: &TestEmulator, key: &str) -> u64 {
    let c: Value = client()
        .get(format!("{}/emulator/finops", emu.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    c[key].as_u64().unwrap()
}

async fn faults(emu: &TestEmulator, faults: Value) {
    let resp = client()
        .post(format!("{}/emulator/finops/faults", emu.base))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

async fn expire(emu: &TestEmulator, event: &Value) {
    let id = event["FileId"].as_str().unwrap();
    let resp = client()
        .post(format!("{}/emulator/finops/files/{id}/expire", emu.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

/// A pipeline "groups" that never delivers on its own and fetches what its events name.
fn fetching_config(fetch_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"

[[pipelines]]
name = "groups"
queue_capacity = 1000
schedule = "1h"

[pipelines.sink]
kind = "celonis"
url = "http://127.0.0.1:9"
data_pool_id = "pool-1"
target_name = "groups"
app_key = "test-key"

[pipelines.fetch]
url_field = "DownloadURL"
event_fields = ["EntityName"]
timeout = "10s"
retries = 1
{fetch_extra}
"#
    )
}

fn with_entity(id: &str, name: &str) -> Vec<(String, String)> {
    vec![
        ("ID".to_owned(), id.to_owned()),
        ("Name".to_owned(), name.to_owned()),
        ("EntityName".to_owned(), "Customer groups".to_owned()),
    ]
}

#[tokio::test]
async fn inline_answers_once_both_csv_entries_of_the_zip_are_queued() {
    let emu = finops_emulator().await;
    let app = spawn_app(&fetching_config("mode = \"inline\"")).await;
    let e = event(&emu, TWO_ENTITIES).await;
    let (status, body) = status_and_json(app.post_json("groups", &e.to_string()).await).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"accepted": 3, "ignored": 0, "fetched": 1}));
    // Queued before the answer: no waiting here.
    assert_eq!(
        app.queued_fields("groups").await,
        vec![
            with_entity("CG1", "Wholesale"),
            with_entity("CG2", "Retail"),
            with_entity("VG1", "Services")
        ],
        "both entities, no metadata rows, no BOM, the event's EntityName added"
    );
    assert_eq!(count(&emu, "file_downloads").await, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn csv_entries_are_read_with_the_fetchs_csv_options() {
    let emu = finops_emulator().await;
    let app = spawn_app(&fetching_config(
        "mode = \"inline\"\ncsv = { separator = \";\", quote = \"'\" }",
    ))
    .await;
    let e = event(&emu, &[("Groups.csv", "ID;Name\nCG1;'Whole;sale'\n")]).await;
    let (status, body) = status_and_json(app.post_json("groups", &e.to_string()).await).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(1)),
        "{body}"
    );
    assert_eq!(
        app.queued_fields("groups").await,
        vec![with_entity("CG1", "Whole;sale")]
    );
    app.shutdown().await;
}

#[tokio::test]
async fn deferred_answers_at_once_with_fetches_queued_and_the_worker_queues_the_rows() {
    let emu = finops_emulator().await;
    // The download is held: the 202 cannot have waited for it.
    faults(&emu, json!({ "file_delay_ms": 2000 })).await;
    let app = spawn_app(&fetching_config("")).await;
    let e = event(&emu, TWO_ENTITIES).await;
    let (status, body) = status_and_json(app.post_json("groups", &e.to_string()).await).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body,
        json!({"accepted": 0, "ignored": 0, "fetches_queued": 1})
    );
    assert!(app.queued("groups").await.is_empty());
    assert_eq!(count(&emu, "file_downloads").await, 0);
    wait_until(15, "the worker queues the file's rows", || async {
        app.queued("groups").await.len() == 3
    })
    .await;
    assert_eq!(count(&emu, "file_downloads").await, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_transient_failure_is_tried_again_and_one_past_the_retries_is_dead_lettered() {
    let emu = finops_emulator().await;
    // retries = 1: one 503 is survived.
    faults(&emu, json!({ "file_failures": 1, "file_status": 503 })).await;
    let app = spawn_app(&fetching_config("")).await;
    let e = event(&emu, TWO_ENTITIES).await;
    let (status, _) = status_and_json(app.post_json("groups", &e.to_string()).await).await;
    assert_eq!(status, 202);
    wait_until(15, "the second try queues the rows", || async {
        app.queued("groups").await.len() == 3
    })
    .await;
    assert_eq!(count(&emu, "file_requests").await, 2);
    // Two 503s exhaust it: dead-lettered with the status and the tries.
    faults(&emu, json!({ "file_failures": 2, "file_status": 503 })).await;
    let e = event(&emu, TWO_ENTITIES).await;
    let (status, _) = status_and_json(app.post_json("groups", &e.to_string()).await).await;
    assert_eq!(status, 202);
    let path = app.app().pipeline("groups").unwrap().dead_letter_path();
    wait_until(15, "the exhausted download is dead-lettered", || async {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("HTTP 503 (after 2 tries)"))
    })
    .await;
    assert_eq!(app.queued("groups").await.len(), 3, "nothing more queued");
    app.shutdown().await;
}

#[tokio::test]
async fn an_event_without_a_url_is_ignored_and_a_bad_url_is_400() {
    let emu = finops_emulator().await;
    let app = spawn_app(&fetching_config("mode = \"inline\"")).await;
    let (status, body) = status_and_json(
        app.post_json("groups", r#"{"EntityName": "Customer groups"}"#)
            .await,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["ignored"], 1, "{body}");
    let (status, body) = status_and_json(
        app.post_json("groups", r#"{"DownloadURL": "ftp://files/x.zip"}"#)
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("malformed_body"))
    );
    assert!(app.queued("groups").await.is_empty());
    assert_eq!(count(&emu, "file_requests").await, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn an_expired_link_goes_to_the_dead_letter_file_with_host_and_status_and_no_query() {
    let emu = finops_emulator().await;
    let app = spawn_app(&fetching_config("")).await;
    let e = event(&emu, TWO_ENTITIES).await;
    expire(&emu, &e).await;
    let (status, body) = status_and_json(app.post_json("groups", &e.to_string()).await).await;
    assert_eq!((status, body["fetches_queued"].as_u64()), (202, Some(1)));
    let path = app.app().pipeline("groups").unwrap().dead_letter_path();
    wait_until(15, "the failed download is dead-lettered", || async {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("403"))
    })
    .await;
    let text = std::fs::read_to_string(&path).unwrap();
    let host = e["DownloadURL"].as_str().unwrap();
    let host = reqwest::Url::parse(host).unwrap();
    assert!(
        text.contains(&format!(
            "download from {} answered HTTP 403",
            host.host_str().unwrap()
        )),
        "{text}"
    );
    assert!(text.contains(host.path()), "the path stays: {text}");
    assert!(
        !text.contains("secret-signature") && !text.contains("sig="),
        "the signature reached the dead-letter file: {text}"
    );
    assert!(text.starts_with("offset,"), "{text}");
    assert!(app.queued("groups").await.is_empty());
    // A 403 is not retried: the link will not come back.
    assert_eq!(count(&emu, "file_requests").await, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn an_inline_fetch_that_fails_is_502_naming_host_and_status_and_queues_nothing() {
    let emu = finops_emulator().await;
    let app = spawn_app(&fetching_config("mode = \"inline\"")).await;
    let e = event(&emu, TWO_ENTITIES).await;
    expire(&emu, &e).await;
    let (status, body) = status_and_json(app.post_json("groups", &e.to_string()).await).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "fetch_failed", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("127.0.0.1") && message.contains("HTTP 403"),
        "{message}"
    );
    assert!(!message.contains("sig"), "{message}");
    assert!(app.queued("groups").await.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn a_zip_bomb_or_a_download_over_max_bytes_is_refused_and_queues_nothing() {
    let emu = finops_emulator().await;
    let app = spawn_app(&fetching_config(
        "mode = \"inline\"\nmax_bytes = \"256KiB\"",
    ))
    .await;
    // 8 MiB of CSV deflates to a few KiB: the download fits max_bytes, the unpacking does not.
    let big = format!(
        "ID,Name\n{}",
        "1,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n".repeat(250_000)
    );
    let bomb = event(&emu, &[("Bomb.csv", &big)]).await;
    let (status, body) = status_and_json(app.post_json("groups", &bomb.to_string()).await).await;
    assert_eq!(status, 502, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("over max_bytes") && message.contains("unpacked"),
        "{message}"
    );
    // Random ids hardly compress: the zip itself is larger than max_bytes.
    let mut csv = String::from("ID\n");
    for _ in 0..20_000 {
        csv.push_str(&uuid::Uuid::new_v4().to_string());
        csv.push('\n');
    }
    let large = event(&emu, &[("Big.csv", &csv)]).await;
    let (status, body) = status_and_json(app.post_json("groups", &large.to_string()).await).await;
    assert_eq!(status, 502, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("over max_bytes") && message.contains("downloaded"),
        "{message}"
    );
    assert!(app.queued("groups").await.is_empty());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_between_acceptance_and_download_resumes_it_at_start_up_and_the_rows_arrive_once()
{
    let emu = finops_emulator().await;
    // The download hangs: weir has accepted the event and is fetching when it is killed.
    faults(&emu, json!({ "file_delay_ms": 600_000 })).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
data_dir = "{data}"
[server]
listen = "127.0.0.1:0"

[[pipelines]]
name = "groups"
queue_capacity = 1000
queue = {{ kind = "disk", dir = "{spool}" }}
schedule = "1s"
retry_initial = "100ms"
retry_max_interval = "500ms"

[pipelines.sink]
kind = "celonis"
url = "{base}"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "groups"
app_key = "test-key"

[pipelines.fetch]
url_field = "DownloadURL"
mode = "deferred"
timeout = "10m"
"#,
        data = dir.path().join("data").display(),
        spool = dir.path().join("spool").display(),
        base = emu.base
    );
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, text).unwrap();

    let first = Weir::start(&config);
    let e = event(&emu, TWO_ENTITIES).await;
    let resp = client()
        .post(format!("{}/hooks/groups", first.base))
        .json(&e)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(resp).await;
    assert_eq!((status, body["fetches_queued"].as_u64()), (202, Some(1)));
    wait_until(20, "weir to start the download", || async {
        count(&emu, "file_requests").await >= 1
    })
    .await;
    first.kill();
    assert_eq!(count(&emu, "file_downloads").await, 0);

    client()
        .delete(format!("{}/emulator/finops/faults", emu.base))
        .send()
        .await
        .unwrap();
    let second = Weir::start(&config);
    wait_until(30, "the resumed download's rows are delivered", || async {
        emu.column("groups", "ID").await.len() >= 3
    })
    .await;
    let mut ids = emu.column("groups", "ID").await;
    ids.sort();
    assert_eq!(ids, ["CG1", "CG2", "VG1"], "each row once");
    assert_eq!(count(&emu, "file_downloads").await, 1);
    let pending = std::fs::read_to_string(dir.path().join("data/fetches.json")).unwrap();
    let pending: Value = serde_json::from_str(&pending).unwrap();
    assert_eq!(
        pending["tasks"],
        json!([]),
        "the task left after its rows were queued"
    );
    let logs = second.logs.lock().unwrap().join("\n");
    assert!(
        !logs.contains("secret-signature"),
        "a download URL's query string reached the log"
    );
    let _ = second.terminate();
}
