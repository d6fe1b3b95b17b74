//! DELTA per key against the real emulator: the latest row of a key wins within a batch,
//! `dedupe = "server"`, deletes by key, the config refusals, and a table's column order that
//! holds across batches and restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use weir::config::Config;
use weir::emulator::EmulatorConfig;
use weir::schedule::Outcome;

use crate::helpers::{TestApp, delivery_config, spawn_app, spawn_emulator};

fn emulator() -> EmulatorConfig {
    EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..EmulatorConfig::default()
    }
}

const DELETES: &str = "keys = [\"id\"]\ndelete_when = \"row.op == 'delete'\"";

async fn deliver(app: &TestApp, body: &str) {
    assert_eq!(app.post_json("orders", body).await.status(), 202);
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert!(
        app.queued("orders").await.is_empty(),
        "the whole batch is committed"
    );
}

fn pairs(rows: &[serde_json::Map<String, serde_json::Value>]) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}={}",
                r["id"].as_str().unwrap(),
                r["v"].as_str().unwrap_or("")
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn with_keys_a_batch_sends_only_the_last_row_of_each_key() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(&emu.base, "", "keys = [\"id\"]")).await;
    deliver(
        &app,
        r#"[{"id":"1","v":"a"},{"id":"2","v":"x"},{"id":"1","v":"b"},{"id":"1","v":"c"}]"#,
    )
    .await;
    let jobs = emu.jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["chunks"][0]["content"], "id,v\n2,x\n1,c\n");
    assert_eq!(pairs(&emu.table("orders").await), ["1=c", "2=x"]);
}

#[tokio::test]
async fn dedupe_server_sends_every_row_with_weir_seq_and_celonis_keeps_the_last() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(
        &emu.base,
        "",
        "keys = [\"id\"]\ndedupe = \"server\"",
    ))
    .await;
    deliver(
        &app,
        r#"[{"id":"1","v":"a"},{"id":"1","v":"b"},{"id":"1","v":"c"}]"#,
    )
    .await;
    let jobs = emu.jobs().await;
    assert_eq!(
        jobs[0]["chunks"][0]["content"],
        "id,v,weir_seq\n1,a,0\n1,b,1\n1,c,2\n"
    );
    let declared = jobs[0]["request"]["tableSchema"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["columnName"] == "weir_seq")
        .cloned()
        .unwrap();
    assert_eq!(declared["columnType"], "INTEGER", "{declared}");
    assert_eq!(pairs(&emu.table("orders").await), ["1=c"]);
}

#[tokio::test]
async fn a_row_whose_op_is_delete_removes_its_key() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(&emu.base, "", DELETES)).await;
    deliver(&app, r#"[{"id":"1","v":"a"},{"id":"2","v":"b"}]"#).await;
    deliver(&app, r#"[{"id":"1","op":"delete"}]"#).await;
    let jobs = emu.jobs().await;
    assert_eq!(jobs.len(), 2);
    let chunks = jobs[1]["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 1, "only the deleted chunk: {chunks:?}");
    assert_eq!(chunks[0]["type"], "DELETE", "{chunks:?}");
    assert_eq!(chunks[0]["content"], "id\n1\n");
    assert_eq!(pairs(&emu.table("orders").await), ["2=b"]);
}

#[tokio::test]
async fn within_one_batch_the_latest_row_of_a_key_decides_between_upsert_and_delete() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(&emu.base, "", DELETES)).await;
    deliver(&app, r#"[{"id":"1","v":"a"},{"id":"2","v":"b"}]"#).await;
    deliver(
        &app,
        r#"[{"id":"1","v":"new"},{"id":"1","op":"delete"},{"id":"2","op":"delete"},{"id":"2","v":"c"}]"#,
    )
    .await;
    let jobs = emu.jobs().await;
    let chunks = jobs[1]["chunks"].as_array().unwrap();
    let content = |kind: &str| -> Vec<String> {
        chunks
            .iter()
            .filter(|c| c["type"] == kind)
            .map(|c| c["content"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(content("UPSERT"), ["id,v,op\n2,c,\n"]);
    assert_eq!(content("DELETE"), ["id\n1\n"]);
    assert_eq!(
        pairs(&emu.table("orders").await),
        ["2=c"],
        "upsert then delete deletes; delete then upsert upserts"
    );
}

fn config_errors(sink_extra: &str) -> String {
    let text = format!(
        "data_dir = \"/tmp/unused\"\n{}",
        delivery_config("http://127.0.0.1:9", "", sink_extra)
    );
    match Config::load(&text, &HashMap::new()) {
        Ok(_) => panic!("{sink_extra} should be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn per_key_settings_are_refused_without_keys_or_with_replace() {
    let e = config_errors("delete_when = \"row.op == 'delete'\"");
    assert!(
        e.contains("pipelines[0].sink.delete_when: needs keys"),
        "{e}"
    );
    let e = config_errors("mode = \"REPLACE\"\ndelete_when = \"row.op == 'delete'\"");
    assert!(
        e.contains("pipelines[0].sink.delete_when: only applies to mode = \"DELTA\""),
        "{e}"
    );
    let e = config_errors("upsert_strategy = \"UPSERT_WITH_NULLIFICATION\"");
    assert!(
        e.contains("pipelines[0].sink.upsert_strategy: needs keys"),
        "{e}"
    );
    let e = config_errors("dedupe = \"server\"");
    assert!(e.contains("pipelines[0].sink.dedupe: needs keys"), "{e}");
    let e = config_errors("keys = [\"id\"]\ndedupe = \"both\"");
    assert!(
        e.contains("pipelines[0].sink.dedupe: \"both\" is not"),
        "{e}"
    );
    let e = config_errors("keys = [\"id\"]\nupsert_strategy = \"MERGE\"");
    assert!(
        e.contains("pipelines[0].sink.upsert_strategy: \"MERGE\" is not"),
        "{e}"
    );
    let e = config_errors("keys = [\"id\"]\ndelete_when = \"row.op ==\"");
    assert!(
        e.contains("pipelines[0].sink.delete_when: not a CEL expression"),
        "{e}"
    );
}

#[tokio::test]
async fn upsert_strategy_passes_through_to_the_create_body() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(
        &emu.base,
        "",
        "keys = [\"id\"]\nupsert_strategy = \"UPSERT_WITH_NULLIFICATION\"",
    ))
    .await;
    deliver(&app, r#"[{"id":"1","v":"a"}]"#).await;
    let jobs = emu.jobs().await;
    assert_eq!(
        jobs[0]["request"]["upsertStrategy"],
        "UPSERT_WITH_NULLIFICATION"
    );
}

#[tokio::test]
async fn the_column_order_stays_the_same_across_batches_and_restarts() {
    let emu = spawn_emulator(emulator()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "data_dir = \"{}\"\n{}",
        dir.path().display(),
        delivery_config(&emu.base, "", "")
    );
    let app = spawn_app(&config).await;
    deliver(&app, r#"[{"a":"1","b":"2"}]"#).await;
    deliver(&app, r#"[{"c":"3","b":"4","a":"5"}]"#).await;
    app.shutdown().await;
    let app = spawn_app(&config).await;
    deliver(&app, r#"[{"b":"6","d":"7"}]"#).await;
    let headers: Vec<String> = emu
        .jobs()
        .await
        .iter()
        .map(|j| {
            let c = j["chunks"][0]["content"].as_str().unwrap();
            c.lines().next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(headers, ["a,b", "a,b,c", "a,b,c,d"]);
    assert_eq!(emu.column("orders", "b").await, ["2", "4", "6"]);
}

/// The requests a minimal Data Push server received, as "METHOD path?query".
type Calls = Arc<Mutex<Vec<String>>>;

/// A Data Push server that answers every call as a happy team does and records it.
async fn recording_server() -> (String, Calls) {
    use axum::extract::{Request, State};
    use axum::http::Method;
    let calls: Calls = Arc::default();
    async fn answer(State(calls): State<Calls>, req: Request) -> axum::Json<serde_json::Value> {
        let line = format!("{} {}", req.method(), req.uri());
        calls.lock().unwrap().push(line);
        let status = if req.method() == Method::GET {
            "DONE"
        } else {
            "NEW"
        };
        axum::Json(serde_json::json!({"id": "job-1", "status": status}))
    }
    let router = axum::Router::new()
        .fallback(answer)
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (base, calls)
}

#[tokio::test]
async fn the_execute_call_asks_for_duplicate_removal_by_weir_seq_only_with_dedupe_server() {
    for (sink, execute) in [
        (
            "keys = [\"id\"]\ndedupe = \"server\"",
            "POST /integration/api/v1/data-push/8f2c1f9e-0000-4000-8000-000000000001/jobs/job-1?duplicateRemovalColumn=weir_seq",
        ),
        (
            "keys = [\"id\"]",
            "POST /integration/api/v1/data-push/8f2c1f9e-0000-4000-8000-000000000001/jobs/job-1",
        ),
    ] {
        let (base, calls) = recording_server().await;
        let app = spawn_app(&delivery_config(&base, "", sink)).await;
        deliver(&app, r#"[{"id":"1","v":"a"}]"#).await;
        let calls = calls.lock().unwrap().clone();
        let executes: Vec<&String> = calls
            .iter()
            .filter(|c| c.starts_with("POST") && c.contains("/jobs/job-1") && !c.contains("chunks"))
            .collect();
        assert_eq!(executes, [execute], "{calls:?}");
    }
}
