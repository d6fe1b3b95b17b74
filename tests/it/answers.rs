//! What a sender is answered: a pipeline's own success response, dry runs, and answers that
//! wait for delivery.

use hmac::{KeyInit, Mac};
use serde_json::json;
use weir::emulator::EmulatorConfig;

use crate::helpers::{
    ADMIN, READ_TOKEN, TestApp, TestEmulator, delivery_config, pipeline_config, spawn_app,
    spawn_emulator, status_and_json,
};

fn github_signature(key: &[u8], body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn a_pipeline_with_response_204_answers_no_content_and_errors_keep_their_json() {
    let app = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        "response = { status = 204 }",
    ))
    .await;
    let resp = app.post_json("orders", r#"{"OrderId":"1"}"#).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.text().await.unwrap(), "", "204 has no body");
    assert_eq!(app.queued("orders").await.len(), 1, "the row is queued");

    let resp = app.post("/hooks/orders", "text/csv", "OrderId\n1\n").await;
    assert_eq!(
        status_and_json(resp).await.1["error"],
        "unsupported_media_type",
        "errors keep the JSON error shape"
    );
}

#[tokio::test]
async fn a_fixed_body_is_sent_with_its_status_and_content_type() {
    let app = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        r#"response = { status = 200, body = '{"ok": true}' }"#,
    ))
    .await;
    let resp = app
        .post_json("orders", r#"[{"OrderId":"1"},{"OrderId":"2"}]"#)
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.unwrap(), r#"{"ok": true}"#);
    assert_eq!(app.queued("orders").await.len(), 2);

    let plain = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        r#"response = { status = 201, body = "thanks", content_type = "text/plain; charset=utf-8" }"#,
    ))
    .await;
    let resp = plain.get("/hooks/orders?OrderId=1").await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(resp.text().await.unwrap(), "thanks");

    let counts = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        "response = { status = 200 }",
    ))
    .await;
    let resp = counts.get("/hooks/orders?OrderId=1").await;
    assert_eq!(
        status_and_json(resp).await,
        (200, json!({"accepted": 1, "ignored": 0})),
        "a status alone keeps the counts"
    );
}

#[tokio::test]
async fn a_replayed_delivery_is_answered_with_the_same_custom_response() {
    let app = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        r#"response = { status = 200, body = "received" }

[pipelines.auth]
kind = "hmac"
preset = "github"
secret = "gh""#,
    ))
    .await;
    let body = r#"{"OrderId":"1"}"#;
    for _ in 0..2 {
        let resp = app
            .client
            .post(app.url("/hooks/orders"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", github_signature(b"gh", body))
            .header("x-github-delivery", "d-1")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "received");
    }
    assert_eq!(app.queued("orders").await.len(), 1, "queued once");
}

async fn emulator() -> TestEmulator {
    spawn_emulator(EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..Default::default()
    })
    .await
}

/// Orders with typed columns, a filter and a schema that ignores mismatches.
const TYPED: &str = r#"filter = "row.Status != 'test'"

[pipelines.schema]
on_mismatch = "ignore"
fields = { OrderId = "string", Quantity = "integer", Status = "string" }

[[pipelines.columns]]
name = "OrderId"
from = "OrderId"
length = 20
[[pipelines.columns]]
name = "Quantity"
from = "Quantity"
"#;

async fn dry_run(app: &TestApp, body: &str) -> (u16, serde_json::Value) {
    status_and_json(
        app.post(
            "/hooks/orders?dry_run=true",
            "application/json",
            body.to_owned(),
        )
        .await,
    )
    .await
}

#[tokio::test]
async fn a_dry_run_shows_rows_verdicts_columns_and_csv_and_queues_nothing() {
    let emu = emulator().await;
    let app = spawn_app(&format!(
        "{ADMIN}\n{}",
        delivery_config(&emu.base, TYPED, "keys = [\"OrderId\"]")
    ))
    .await;
    let body = r#"[{"OrderId":"007","Quantity":3,"Status":"new"},
                   {"OrderId":"008","Quantity":"three"},
                   {"OrderId":"009","Quantity":1,"Status":"test"}]"#;
    let (status, d) = dry_run(&app, body).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["dry_run"], true);
    assert_eq!(
        (d["accepted"].as_u64(), d["ignored"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(d["status"], 202, "what a real request would be answered");
    let verdicts: Vec<&str> = d["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["accepted", "schema_mismatch", "filtered_out"]);
    assert_eq!(
        d["rows"][0]["row"],
        json!({"OrderId":"007","Quantity":3,"Status":"new"})
    );
    let reason = d["rows"][1]["reason"].as_str().unwrap();
    assert!(
        reason.contains("Quantity"),
        "the reason names the field: {reason}"
    );
    assert_eq!(
        d["columns"],
        json!([
            {"name": "OrderId", "type": "STRING", "length": 20, "decimals": 0, "key": true},
            {"name": "Quantity", "type": "INTEGER", "length": 0, "decimals": 0, "key": false},
        ])
    );
    assert_eq!(d["table"], "orders");
    assert_eq!(d["csv"], json!(["OrderId,Quantity\n007,3\n"]));

    let view = app.pipeline_view("orders").await;
    assert_eq!(view["queue"]["rows"], 0, "nothing queued");
    assert_eq!(
        view["counters"]["accepted"], 0,
        "nothing counted as accepted"
    );
    assert_eq!(view["counters"]["ignored"], 0);
    assert!(app.queued("orders").await.is_empty());
}

/// The status page's "try a payload": the admin API's dry run, with a read token.
async fn admin_dry_run(
    app: &TestApp,
    pipeline: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(app.admin_url(&format!("/admin/pipelines/{pipeline}/dry-run")))
        .bearer_auth(READ_TOKEN)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    status_and_json(resp).await
}

#[tokio::test]
async fn the_admin_dry_run_answers_as_the_hook_does_and_refuses_what_the_hook_refuses() {
    let emu = emulator().await;
    let app = spawn_app(&format!(
        "{ADMIN}\n{}",
        delivery_config(&emu.base, TYPED, "keys = [\"OrderId\"]")
    ))
    .await;
    let body =
        r#"[{"OrderId":"007","Quantity":3,"Status":"new"},{"OrderId":"008","Quantity":"three"}]"#;
    let (hook_status, from_hook) = dry_run(&app, body).await;
    let (status, from_admin) = admin_dry_run(&app, "orders", "application/json", body).await;
    assert_eq!((hook_status, status), (200, 200), "{from_admin}");
    assert_eq!(from_admin, from_hook, "the same answer as ?dry_run=true");

    let (status, e) =
        admin_dry_run(&app, "orders", "application/x-ndjson", "{\"OrderId\":\n").await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"], "malformed_body");
    let (status, e) = admin_dry_run(&app, "orders", "text/plain", "x").await;
    assert_eq!(
        (status, e["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (status, e) = admin_dry_run(&app, "nope", "application/json", "{}").await;
    assert_eq!(
        (status, e["error"].as_str()),
        (404, Some("unknown_pipeline"))
    );
    // Over server.max_body_bytes (1 MiB by default): refused before it is judged.
    let big = format!("[{}]", vec![r#"{"OrderId":"1"}"#; 80_000].join(","));
    let (status, e) = admin_dry_run(&app, "orders", "application/json", big).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (413, Some("body_too_large")),
        "{e}"
    );
    // Without a token it is refused like every admin route.
    let resp = app
        .admin(
            reqwest::Method::POST,
            "/admin/pipelines/orders/dry-run",
            None,
        )
        .await;
    assert_eq!(resp.status(), 401);

    let view = app.pipeline_view("orders").await;
    assert_eq!(view["queue"]["rows"], 0, "nothing queued");
    assert_eq!(view["counters"]["accepted"], 0);
    assert_eq!(view["counters"]["rejected"], 0, "dry runs count nothing");
}

#[tokio::test]
async fn the_dry_run_csv_is_exactly_what_the_emulator_receives_for_the_same_rows() {
    let emu = emulator().await;
    let app = spawn_app(&format!("{ADMIN}\n{}", delivery_config(&emu.base, "", ""))).await;
    // No column config: the header is the union of the fields, and values keep their text.
    let body = r#"[{"OrderId":"0145632053","Note":"a, \"quoted\" note"},
                   {"OrderId":"0145632054","Price":1.50,"Stadt":"München"}]"#;
    let (status, d) = dry_run(&app, body).await;
    assert_eq!(status, 200, "{d}");
    let preview = d["csv"].clone();
    assert_eq!(preview.as_array().map(Vec::len), Some(1), "{d}");

    assert_eq!(app.post_json("orders", body).await.status(), 202);
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.rows, 2, "{report:?}");
    let jobs = emu.jobs().await;
    assert_eq!(jobs.len(), 1);
    let sent: Vec<serde_json::Value> = jobs[0]["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["content"].clone())
        .collect();
    assert_eq!(serde_json::Value::Array(sent), preview);
    let declared: Vec<&str> = jobs[0]["request"]["tableSchema"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["columnName"].as_str().unwrap())
        .collect();
    let previewed: Vec<&str> = d["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(declared, previewed, "the same columns are declared");
}

#[tokio::test]
async fn a_mismatching_row_in_reject_mode_is_a_verdict_in_a_200_and_request_errors_stay_errors() {
    let app = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        r#"[pipelines.schema]
on_mismatch = "reject"
fields = { OrderId = "string", Quantity = "integer" }"#,
    ))
    .await;
    let (status, d) = dry_run(&app, r#"[{"OrderId":"1","Quantity":"x"},{"OrderId":"2"}]"#).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["rows"][0]["verdict"], "schema_mismatch");
    assert_eq!(d["rows"][1]["verdict"], "accepted");
    assert_eq!(d["status"], 422, "a real request would be refused whole");
    assert_eq!(d["accepted"], 0);

    let (status, e) = dry_run(&app, r#"{"OrderId": "#).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("malformed_body")));
    let resp = app
        .post("/hooks/nope?dry_run=true", "application/json", "{}")
        .await;
    assert_eq!(resp.status(), 404);
    // A query-string row: dry_run is weir's parameter, never a field.
    let (status, d) = status_and_json(app.get("/hooks/orders?dry_run=true&OrderId=5").await).await;
    assert_eq!(status, 200);
    assert_eq!(d["rows"][0]["row"], json!({"OrderId": "5"}));
    assert!(app.queued("orders").await.is_empty());
}

#[tokio::test]
async fn a_dry_run_still_checks_the_sender() {
    let app = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        r#"[pipelines.auth]
kind = "token"
header = "X-Api-Key"
secret = "s3cret-token""#,
    ))
    .await;
    let resp = app
        .post(
            "/hooks/orders?dry_run=true",
            "application/json",
            r#"{"OrderId":"1"}"#,
        )
        .await;
    assert_eq!(status_and_json(resp).await.0, 401);
    let resp = app
        .client
        .post(app.url("/hooks/orders?dry_run=true"))
        .header("content-type", "application/json")
        .header("x-api-key", "s3cret-token")
        .body(r#"{"OrderId":"1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

async fn post_waiting(app: &TestApp, body: &str) -> (u16, serde_json::Value) {
    status_and_json(
        app.post(
            "/hooks/orders?wait=delivered",
            "application/json",
            body.to_owned(),
        )
        .await,
    )
    .await
}

#[tokio::test]
async fn a_waiting_request_of_an_allow_sync_pipeline_is_answered_200_once_its_job_is_done() {
    let emu = emulator().await;
    // The schedule never ticks during the test: only the waiting request starts the run.
    let app = spawn_app(&delivery_config(
        &emu.base,
        "allow_sync = true\nwait_timeout = \"20s\"",
        "",
    ))
    .await;
    let (status, body) = post_waiting(&app, r#"[{"OrderId":"1"},{"OrderId":"2"}]"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["ignored"].as_u64()),
        (Some(2), Some(0))
    );
    let jobs = emu.jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["status"], "DONE");
    assert_eq!(body["job_id"], jobs[0]["id"], "the emulator's job id");
    assert!(
        body["delivered_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    assert_eq!(emu.column("orders", "OrderId").await, ["1", "2"]);
    assert!(app.queued("orders").await.is_empty());
}

#[tokio::test]
async fn a_waiting_request_gets_202_queued_after_wait_timeout_and_its_rows_are_delivered_later() {
    let emu = emulator().await;
    let app = spawn_app(&format!(
        "{ADMIN}\n{}",
        delivery_config(&emu.base, "allow_sync = true\nwait_timeout = \"300ms\"", "")
    ))
    .await;
    let (status, _) = app
        .admin_json(reqwest::Method::PATCH, "/admin/pipelines/orders/pause")
        .await;
    assert_eq!(status, 200);
    let (status, body) = post_waiting(&app, r#"{"OrderId":"7"}"#).await;
    assert_eq!(
        (status, body),
        (
            202,
            json!({"accepted": 1, "ignored": 0, "status": "queued"})
        )
    );
    assert!(
        emu.jobs().await.is_empty(),
        "a paused pipeline delivers nothing"
    );
    assert_eq!(app.queued("orders").await.len(), 1, "the row stays queued");

    let (status, _) = app
        .admin_json(reqwest::Method::PATCH, "/admin/pipelines/orders/resume")
        .await;
    assert_eq!(status, 200);
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.rows, 1, "{report:?}");
    assert_eq!(emu.column("orders", "OrderId").await, ["7"]);
}

#[tokio::test]
async fn without_allow_sync_a_waiting_request_waits_for_a_run_it_does_not_start() {
    let emu = emulator().await;
    let app = spawn_app(&delivery_config(&emu.base, "wait_timeout = \"20s\"", "")).await;
    let waiting = {
        let client = app.client.clone();
        let url = app.url("/hooks/orders?wait=delivered");
        tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(r#"{"OrderId":"9"}"#)
                .send()
                .await
                .unwrap()
        })
    };
    crate::helpers::wait_until(10, "the row is queued", || async {
        app.queued("orders").await.len() == 1
    })
    .await;
    assert!(emu.jobs().await.is_empty(), "the request started no run");
    // The run comes from elsewhere (here the operator's flush, as the schedule would).
    let report = app.app().flush("orders").await.unwrap();
    let (status, body) = status_and_json(waiting.await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        Some(body["job_id"].as_str().unwrap().to_owned()),
        report.job_id
    );
}
