//! `[[sources]] kind = "poll"` against the emulator's FinOps dequeue/ack API: packages are
//! dequeued, their rows queued in one push, then acked; empty queues, zip bombs and
//! oversized downloads queue nothing; a SIGKILL before the ack fetches the package again.

use serde_json::{Value, json};
use weir::emulator::EmulatorConfig;

use crate::crash::Weir;
use crate::helpers::{TestEmulator, spawn_app, spawn_emulator, wait_until};

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

/// Queues a package whose entities are (file name, CSV text).
async fn enqueue(emu: &TestEmulator, entities: &[(&str, &str)]) {
    let entities: serde_json::Map<String, Value> = entities
        .iter()
        .map(|(n, c)| ((*n).to_owned(), Value::String((*c).to_owned())))
        .collect();
    let resp = client()
        .post(format!("{}/emulator/finops/packages", emu.base))
        .json(&json!({ "entities": entities }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}

/// The emulator's FinOps counts.
async fn counts(emu: &TestEmulator) -> Value {
    client()
        .get(format!("{}/emulator/finops", emu.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn count(emu: &TestEmulator, key: &str) -> u64 {
    counts(emu).await[key].as_u64().unwrap()
}

/// A pipeline "orders" that never delivers on its own, and a source feeding it from `emu`.
fn polling_config(emu: &TestEmulator, source_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"

[[pipelines]]
name = "orders"
queue_capacity = 1000
schedule = "1h"

[pipelines.sink]
kind = "celonis"
url = "http://127.0.0.1:9"
data_pool_id = "pool-1"
target_name = "orders"
app_key = "test-key"

[[sources]]
kind = "poll"
pipeline = "orders"
schedule = "1s"
dequeue_url = "{base}/api/connector/dequeue/activity-1"
ack_url = {{ expr = "'{base}/api/connector/ack/activity-1'" }}
download_url_field = "DownloadLocation"
{source_extra}
"#,
        base = emu.base
    )
}

#[tokio::test]
async fn a_dequeued_package_lands_in_the_queue_in_one_push_and_is_acked() {
    let emu = finops_emulator().await;
    enqueue(
        &emu,
        &[
            (
                "Customer groups.csv",
                "ID,Name\nCG1,Wholesale\nCG2,Retail\n",
            ),
            ("Vendor groups.csv", "ID,Name\nVG1,Services\n"),
        ],
    )
    .await;
    // format = "csv" reads every entry as CSV: Manifest.xml and PackageHeader.xml would
    // become rows if they were not skipped.
    let app = spawn_app(&polling_config(&emu, "format = \"csv\"")).await;
    wait_until(10, "the package is acked", || async {
        count(&emu, "acks").await == 1
    })
    .await;
    let rows = app.queued_fields("orders").await;
    let pair = |id: &str, name: &str| {
        vec![
            ("ID".to_owned(), id.to_owned()),
            ("Name".to_owned(), name.to_owned()),
        ]
    };
    assert_eq!(
        rows,
        vec![
            pair("CG1", "Wholesale"),
            pair("CG2", "Retail"),
            pair("VG1", "Services")
        ],
        "both entities, no metadata rows, no BOM in the first header"
    );
    let p = app.app().pipeline("orders").unwrap();
    assert_eq!(
        weir::pipeline::Counters::get(&p.counters.accepted),
        3,
        "rows count as accepted"
    );
    assert_eq!(count(&emu, "queued").await, 0);
    let metrics = app.app().metrics().render();
    assert!(
        metrics.contains(
            "weir_source_polls_total{source=\"0\",pipeline=\"orders\",outcome=\"acked\"} 1"
        ),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_empty_dequeue_queues_nothing_and_acks_nothing() {
    let emu = finops_emulator().await;
    let app = spawn_app(&polling_config(&emu, "")).await;
    wait_until(10, "two dequeues", || async {
        count(&emu, "dequeues").await >= 2
    })
    .await;
    let c = counts(&emu).await;
    assert_eq!(
        (c["downloads"].as_u64(), c["acks_started"].as_u64()),
        (Some(0), Some(0)),
        "{c}"
    );
    assert!(app.queued("orders").await.is_empty());
    app.shutdown().await;
}

/// Dequeued twice (so retried after the refusal), never acked, nothing queued.
async fn refused_and_not_acked(emu: &TestEmulator, source_extra: &str) {
    let app = spawn_app(&polling_config(emu, source_extra)).await;
    wait_until(15, "the package is downloaded twice", || async {
        count(emu, "downloads").await >= 2
    })
    .await;
    let c = counts(emu).await;
    assert_eq!(c["acks_started"], 0, "{c}");
    assert_eq!(c["queued"], 1, "{c}");
    assert!(app.queued("orders").await.is_empty());
    let metrics = app.app().metrics().render();
    assert!(
        metrics.contains(
            "weir_source_polls_total{source=\"0\",pipeline=\"orders\",outcome=\"failed\"}"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("outcome=\"acked\""), "{metrics}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_zip_bomb_is_refused_by_what_it_unpacks_to_and_not_acked() {
    let emu = finops_emulator().await;
    // 8 MiB of CSV deflates to a few KiB: the download fits max_bytes, the unpacking does not.
    let big = format!(
        "ID,Name\n{}",
        "1,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n".repeat(250_000)
    );
    enqueue(&emu, &[("Bomb.csv", &big)]).await;
    refused_and_not_acked(&emu, "max_bytes = \"256KiB\"").await;
}

#[tokio::test]
async fn a_download_over_max_bytes_is_refused_and_not_acked() {
    let emu = finops_emulator().await;
    // Random ids hardly compress: the zip itself is larger than max_bytes.
    let mut csv = String::from("ID\n");
    for _ in 0..20_000 {
        csv.push_str(&uuid::Uuid::new_v4().to_string());
        csv.push('\n');
    }
    enqueue(&emu, &[("Big.csv", &csv)]).await;
    refused_and_not_acked(&emu, "max_bytes = \"64KiB\"").await;
}

/// Rows the real binary's logs say it delivered.
fn delivered_rows(w: &Weir) -> u64 {
    w.logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["status"] == "delivered")
        .filter_map(|v| v["fields"]["rows"].as_u64())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_before_the_ack_fetches_the_package_again_and_delta_keys_keep_each_row_once() {
    let emu = finops_emulator().await;
    enqueue(
        &emu,
        &[
            (
                "Customer groups.csv",
                "ID,Name\nCG1,Wholesale\nCG2,Retail\n",
            ),
            ("Vendor groups.csv", "ID,Name\nVG1,Services\n"),
        ],
    )
    .await;
    // The ack hangs: weir has queued the rows and is waiting for it when it is killed.
    let resp = client()
        .post(format!("{}/emulator/finops/faults", emu.base))
        .json(&json!({ "ack_delay_ms": 600_000 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
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
mode = "DELTA"
keys = ["ID"]
app_key = "test-key"

[[sources]]
kind = "poll"
pipeline = "groups"
schedule = "1s"
dequeue_url = "{base}/api/connector/dequeue/activity-1"
ack_url = "{base}/api/connector/ack/activity-1"
timeout = "10m"
"#,
        data = dir.path().join("data").display(),
        spool = dir.path().join("spool").display(),
        base = emu.base
    );
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, text).unwrap();

    let first = Weir::start(&config);
    wait_until(20, "weir to queue the rows and send the ack", || async {
        count(&emu, "acks_started").await >= 1
    })
    .await;
    let delivered_before = delivered_rows(&first);
    first.kill();
    assert_eq!(count(&emu, "acks").await, 0, "the killed weir never acked");

    client()
        .delete(format!("{}/emulator/finops/faults", emu.base))
        .send()
        .await
        .unwrap();
    let second = Weir::start(&config);
    wait_until(20, "the package is downloaded again and acked", || async {
        count(&emu, "acks").await == 1
    })
    .await;
    assert!(count(&emu, "downloads").await >= 2);
    wait_until(20, "both copies of the package delivered", || async {
        delivered_before + delivered_rows(&second) >= 6
    })
    .await;
    let mut ids = emu.column("groups", "ID").await;
    ids.sort();
    assert_eq!(ids, ["CG1", "CG2", "VG1"], "each row once");
    let logs = second.logs.lock().unwrap().join("\n");
    assert!(logs.contains("package acked"), "{logs}");
    assert!(
        !logs.contains("secret-signature"),
        "a download URL's query string reached the log"
    );
    let _ = second.terminate();
}
