//! The admin API: auth and scopes, every route, state transitions, persistence across a
//! restart, dead letters, and a metrics scrape that matches what the test did.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir::emulator::EmulatorConfig;
use weir::metrics::sample;

use crate::helpers::{
    ADMIN, READ_TOKEN, TestEmulator, WRITE_TOKEN, delivery_config, spawn_app, spawn_emulator,
    status_and_json, wait_until,
};

async fn emulator() -> TestEmulator {
    spawn_emulator(EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..Default::default()
    })
    .await
}

fn config(emu: &TestEmulator, pipeline_extra: &str) -> String {
    format!(
        "{ADMIN}\n{}",
        delivery_config(&emu.base, pipeline_extra, "keys = [\"id\"]")
    )
}

#[tokio::test]
async fn admin_routes_need_a_token_with_the_right_scope() {
    let emu = emulator().await;
    let app = spawn_app(&config(&emu, "")).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            app.admin(Method::GET, path, None).await.status(),
            200,
            "{path} needs no token"
        );
    }
    let resp = app.admin(Method::GET, "/admin/pipelines", None).await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let (status, body) = status_and_json(resp).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = status_and_json(
        app.admin(
            Method::GET,
            "/admin/pipelines",
            Some("wrong-token-0123456789"),
        )
        .await,
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = status_and_json(
        app.admin(Method::GET, "/admin/pipelines", Some(READ_TOKEN))
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["pipelines"][0]["name"], "orders");
    let (status, body) = status_and_json(
        app.admin(
            Method::PATCH,
            "/admin/pipelines/orders/pause",
            Some(READ_TOKEN),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "a read token cannot pause"
    );
    assert_eq!(app.pipeline_view("orders").await["state"], "ACTIVE");
    let (status, body) = app
        .admin_json(Method::PATCH, "/admin/pipelines/orders/pause")
        .await;
    assert_eq!((status, body["state"].as_str()), (200, Some("PAUSED")));
    let (status, body) = app.admin_json(Method::GET, "/admin/pipelines/nope").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_pipeline"))
    );
}

#[tokio::test]
async fn a_paused_pipeline_keeps_accepting_and_delivers_nothing_until_resumed() {
    let emu = emulator().await;
    let app = spawn_app(&config(&emu, "")).await;
    app.admin_json(Method::PATCH, "/admin/pipelines/orders/pause")
        .await;
    assert_eq!(
        app.post_json("orders", r#"[{"id":"1"},{"id":"2"}]"#)
            .await
            .status(),
        202
    );
    let (status, body) = app
        .admin_json(Method::POST, "/admin/pipelines/orders/flush")
        .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("paused")));
    assert!(emu.jobs().await.is_empty());
    let view = app.pipeline_view("orders").await;
    assert_eq!(view["queue"]["rows"], 2);
    assert_eq!(view["paused"], true);
    let (_, body) = app
        .admin_json(Method::PATCH, "/admin/pipelines/orders/resume")
        .await;
    assert_eq!(body["state"], "ACTIVE");
    let (status, run) = app
        .admin_json(Method::POST, "/admin/pipelines/orders/flush")
        .await;
    assert_eq!(
        (status, run["outcome"].as_str(), run["rows"].as_u64()),
        (200, Some("delivered"), Some(2))
    );
    assert_eq!(emu.column("orders", "id").await, ["1", "2"]);
    let view = app.pipeline_view("orders").await;
    assert_eq!(view["last_run"]["job_id"], run["job_id"]);
    assert_eq!(view["counters"]["delivered"], 2);
    assert_eq!(view["queue"]["rows"], 0);
}

#[tokio::test]
async fn pause_survives_a_restart() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        &emu,
        &format!(
            "queue = {{ kind = \"disk\", dir = \"{}\" }}",
            dir.path().join("spool").display()
        ),
    );
    let app = spawn_app(&text).await;
    app.admin_json(Method::PATCH, "/admin/pipelines/orders/pause")
        .await;
    app.post_json("orders", r#"{"id":"7"}"#).await;
    app.shutdown().await;
    let app = spawn_app(&text).await;
    let view = app.pipeline_view("orders").await;
    assert_eq!(view["state"], "PAUSED");
    assert_eq!(view["queue"]["rows"], 1, "the spool kept the row too");
    app.admin_json(Method::PATCH, "/admin/pipelines/orders/resume")
        .await;
    app.shutdown().await;
    let app = spawn_app(&text).await;
    assert_eq!(app.pipeline_view("orders").await["state"], "ACTIVE");
}

#[tokio::test]
async fn rows_can_be_peeked_reconciled_and_purged() {
    let emu = emulator().await;
    let app = spawn_app(&config(&emu, "")).await;
    app.post_json(
        "orders",
        r#"[{"id":"1"},{"id":"2"},{"id":"3"},{"id":"4"},{"id":"5"}]"#,
    )
    .await;
    let (status, body) = app
        .admin_json(Method::GET, "/admin/pipelines/orders/rows?limit=2")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["rows"].as_array().unwrap().len(), 2);
    assert_eq!(body["rows"][1]["row"], json!({"id": "2"}));
    assert_eq!(body["rows"][1]["offset"], 1);
    let (status, page) = app
        .admin_json(Method::PATCH, "/admin/pipelines/orders/events?pageSize=2")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        page,
        json!({"pageSize": 2, "total": 3, "content": [{"offset": 0, "row": {"id": "1"}}, {"offset": 1, "row": {"id": "2"}}]})
    );
    let (_, run) = app
        .admin_json(Method::POST, "/admin/pipelines/orders/flush")
        .await;
    assert_eq!(run["outcome"], "delivered", "{run}");
    assert_eq!(
        emu.column("orders", "id").await,
        ["3", "4", "5"],
        "reconciled rows are not delivered by weir"
    );
    app.post_json("orders", r#"[{"id":"6"},{"id":"7"}]"#).await;
    let (status, body) = app
        .admin_json(Method::DELETE, "/admin/pipelines/orders/rows")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("confirm_required"))
    );
    let (status, body) = app
        .admin_json(Method::DELETE, "/admin/pipelines/orders/rows?confirm=true")
        .await;
    assert_eq!((status, body), (200, json!({"removed": 2})));
    assert_eq!(app.pipeline_view("orders").await["counters"]["removed"], 4);
    let (status, body) = app
        .admin_json(Method::GET, "/admin/pipelines/orders/rows?limit=many")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_parameter"))
    );
}

#[tokio::test]
async fn replay_redelivers_from_an_offset_on_the_disk_spool_only() {
    let emu = emulator().await;
    let memory = spawn_app(&config(&emu, "")).await;
    let (status, body) = memory
        .admin_json(Method::PATCH, "/admin/pipelines/orders/replay?fromOffset=0")
        .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("unsupported")));
    assert!(body["message"].as_str().unwrap().contains("disk spool"));

    let dir = tempfile::tempdir().unwrap();
    let text = config(
        &emu,
        &format!(
            "queue = {{ kind = \"disk\", dir = \"{}\" }}",
            dir.path().join("spool").display()
        ),
    )
    .replace("target_name = \"orders\"", "target_name = \"replayed\"");
    let app = spawn_app(&text).await;
    app.post_json(
        "orders",
        r#"[{"id":"a","v":"1"},{"id":"b","v":"1"},{"id":"c","v":"1"}]"#,
    )
    .await;
    app.admin_json(Method::POST, "/admin/pipelines/orders/flush")
        .await;
    assert_eq!(app.pipeline_view("orders").await["queue"]["rows"], 0);
    let (status, body) = app
        .admin_json(Method::PATCH, "/admin/pipelines/orders/replay?fromOffset=1")
        .await;
    assert_eq!((status, body), (200, json!({"fromOffset": 1, "queued": 2})));
    let (_, run) = app
        .admin_json(Method::POST, "/admin/pipelines/orders/flush")
        .await;
    assert_eq!(run["rows"], 2, "offsets 1 and 2 were delivered again");
    assert_eq!(emu.jobs().await.len(), 2);
    assert_eq!(
        emu.column("replayed", "id").await,
        ["a", "b", "c"],
        "DELTA + keys: a replay is an upsert"
    );
    let (status, body) = app
        .admin_json(
            Method::PATCH,
            "/admin/pipelines/orders/replay?fromOffset=99",
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("offset_ahead"))
    );
}

#[tokio::test]
async fn reconcile_answers_the_rows_taken_as_page_size_and_the_rows_left_as_total() {
    let emu = emulator().await;
    let app = spawn_app(&config(&emu, "")).await;
    let rows: Vec<_> = (1..=5).map(|i| json!({"id": i.to_string()})).collect();
    app.post_json("orders", &json!(rows).to_string()).await;
    let (status, page) = app
        .admin_json(Method::PATCH, "/admin/pipelines/orders/events?pageSize=3")
        .await;
    assert_eq!(status, 200);
    assert_eq!((&page["pageSize"], &page["total"]), (&json!(3), &json!(2)));
    assert_eq!(page["content"].as_array().unwrap().len(), 3);
    let (status, page) = app
        .admin_json(Method::PATCH, "/admin/pipelines/orders/events?pageSize=50")
        .await;
    assert_eq!(status, 200);
    assert_eq!((&page["pageSize"], &page["total"]), (&json!(2), &json!(0)));
    assert_eq!(page["content"][1]["row"], json!({"id": "5"}));
    let (status, body) = app
        .admin_json(
            Method::PATCH,
            "/admin/pipelines/orders/events?pageSize=10001",
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("above_maximum"))
    );
    assert!(
        body["message"].as_str().unwrap().contains("pageSize"),
        "{body}"
    );
}

#[tokio::test]
async fn replay_without_an_offset_starts_at_the_oldest_retained_row() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        &emu,
        &format!(
            "queue = {{ kind = \"disk\", dir = \"{}\" }}",
            dir.path().join("spool").display()
        ),
    );
    let app = spawn_app(&text).await;
    app.post_json("orders", r#"[{"id":"a"},{"id":"b"},{"id":"c"}]"#)
        .await;
    let (_, run) = app
        .admin_json(Method::POST, "/admin/pipelines/orders/flush")
        .await;
    assert_eq!(run["outcome"], "delivered", "{run}");
    let (status, body) = app
        .admin_json(Method::PATCH, "/admin/pipelines/orders/replay")
        .await;
    assert_eq!((status, body), (200, json!({"fromOffset": 0, "queued": 3})));
}

#[tokio::test]
async fn rows_past_retention_move_to_the_dead_letter_file() {
    let emu = emulator().await;
    let app = spawn_app(
        &config(&emu, "retention = \"1s\"").replace("schedule = \"1h\"", "schedule = \"1s\""),
    )
    .await;
    app.admin_json(Method::PATCH, "/admin/pipelines/orders/pause")
        .await;
    app.post_json("orders", r#"[{"id":"old-1"},{"id":"old-2"}]"#)
        .await;
    wait_until(10, "the rows to be dead-lettered", || async {
        app.pipeline_view("orders").await["counters"]["dead_lettered"] == 2
    })
    .await;
    assert_eq!(app.pipeline_view("orders").await["queue"]["rows"], 0);
    let resp = app
        .admin(
            Method::GET,
            "/admin/pipelines/orders/dead-letter",
            Some(READ_TOKEN),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = resp.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "offset,received_at,reason,row");
    assert!(
        lines[1].starts_with("0,")
            && lines[1].contains("pipeline paused")
            && lines[1].contains("old-1"),
        "{csv}"
    );
    assert!(
        lines[2].starts_with("1,") && lines[2].contains("old-2"),
        "{csv}"
    );
    let scrape = app.scrape().await;
    assert_eq!(
        sample(&scrape, r#"weir_dead_letter_rows_total{pipeline="orders"}"#),
        Some(2.0),
        "{scrape}"
    );
}

#[tokio::test]
async fn a_failing_pipeline_suspends_probes_with_one_row_and_recovers() {
    let emu = emulator().await;
    let text = config(&emu, "suspend_after = \"1s\"").replace(
        "retry_initial = \"1h\"\nretry_max_interval = \"1h\"",
        "retry_initial = \"100ms\"\nretry_max_interval = \"300ms\"",
    );
    let app = spawn_app(&text).await;
    app.post_json("orders", r#"[{"id":"1"},{"id":"2"},{"id":"3"}]"#)
        .await;
    emu.fault(json!({"status": 503, "count": 1000, "endpoint": "create"}))
        .await;
    let (_, run) = app
        .admin_json(Method::POST, "/admin/pipelines/orders/flush")
        .await;
    assert_eq!(run["outcome"], "failed");
    let view = app.pipeline_view("orders").await;
    assert_eq!(view["state"], "FAILING");
    assert!(view["failing_since"].is_string());
    assert!(
        view["last_run"]["error"]
            .as_str()
            .unwrap()
            .contains("HTTP 503")
    );
    wait_until(10, "SUSPENDED", || async {
        app.pipeline_view("orders").await["state"] == "SUSPENDED"
    })
    .await;
    wait_until(5, "a probe run", || async {
        app.pipeline_view("orders").await["last_run"]["rows"] == 1
    })
    .await;
    assert_eq!(
        app.pipeline_view("orders").await["queue"]["rows"],
        3,
        "a suspended pipeline keeps its rows"
    );
    app.post_json("orders", r#"{"id":"4"}"#).await;
    emu.clear_faults().await;
    wait_until(10, "ACTIVE again", || async {
        app.pipeline_view("orders").await["state"] == "ACTIVE"
    })
    .await;
    app.admin_json(Method::POST, "/admin/pipelines/orders/flush")
        .await;
    assert_eq!(emu.column("orders", "id").await, ["1", "2", "3", "4"]);
}

#[tokio::test]
async fn a_metrics_scrape_matches_what_happened() {
    let emu = emulator().await;
    let schema = "[pipelines.schema]\non_mismatch = \"ignore\"\nrequired = [\"id\"]\n";
    let text = format!(
        "{ADMIN}\n{}",
        delivery_config(&emu.base, "", "keys = [\"id\"]")
            .replace("[pipelines.sink]", &format!("{schema}\n[pipelines.sink]"))
    );
    let app = spawn_app(&text).await;
    app.post_json(
        "orders",
        r#"[{"id":"1"},{"id":"2"},{"id":"3"},{"nope":"x"}]"#,
    )
    .await;
    app.post_json("orders", "{broken").await;
    app.post("/hooks/orders", "text/csv", "a,b").await;
    app.post_json("missing", "{}").await;
    let before = app.scrape().await;
    assert_eq!(
        sample(&before, r#"weir_queue_rows{pipeline="orders"}"#),
        Some(3.0),
        "{before}"
    );
    app.admin_json(Method::POST, "/admin/pipelines/orders/flush")
        .await;
    let m = app.scrape().await;
    let expect = [
        (
            r#"weir_ingest_rows_total{pipeline="orders",outcome="accepted"}"#,
            3.0,
        ),
        (
            r#"weir_ingest_rows_total{pipeline="orders",outcome="ignored"}"#,
            1.0,
        ),
        (
            r#"weir_ingest_refused_requests_total{pipeline="orders",reason="malformed_body"}"#,
            1.0,
        ),
        (
            r#"weir_ingest_refused_requests_total{pipeline="orders",reason="unsupported_media_type"}"#,
            1.0,
        ),
        (r#"weir_ingest_unknown_pipeline_requests_total"#, 1.0),
        (r#"weir_delivery_rows_total{pipeline="orders"}"#, 3.0),
        (
            r#"weir_delivery_runs_total{pipeline="orders",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"weir_delivery_run_duration_seconds_count{pipeline="orders"}"#,
            1.0,
        ),
        (
            r#"weir_sink_requests_total{pipeline="orders",endpoint="create",status="200"}"#,
            1.0,
        ),
        (
            r#"weir_sink_requests_total{pipeline="orders",endpoint="upload",status="200"}"#,
            1.0,
        ),
        (
            r#"weir_sink_requests_total{pipeline="orders",endpoint="execute",status="200"}"#,
            1.0,
        ),
        (r#"weir_queue_rows{pipeline="orders"}"#, 0.0),
        (r#"weir_queue_capacity_rows{pipeline="orders"}"#, 1000.0),
        (
            r#"weir_pipeline_state{pipeline="orders",state="ACTIVE"}"#,
            1.0,
        ),
        (
            r#"weir_pipeline_state{pipeline="orders",state="PAUSED"}"#,
            0.0,
        ),
        (
            r#"weir_celonis_job_budget_remaining{team="127.0.0.1"#,
            249.0,
        ),
    ];
    for (name, value) in expect {
        let got = m
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        assert_eq!(got, Some(value), "{name} in\n{m}");
    }
    assert!(m.trim_end().ends_with("# EOF"));
}

#[tokio::test]
async fn readyz_turns_unavailable_when_shutdown_starts() {
    let emu = emulator().await;
    let app = spawn_app(&config(&emu, "")).await;
    assert_eq!(app.admin(Method::GET, "/readyz", None).await.status(), 200);
    let url = app.admin_url("/readyz");
    let client = app.client.clone();
    // Hold a delivery open so shutdown has to wait for it.
    app.post_json("orders", r#"{"id":"1"}"#).await;
    emu.fault(json!({"delay_ms": 1500, "count": 1, "endpoint": "create"}))
        .await;
    let runs = app.app().runs().clone();
    let flush = tokio::spawn(async move { runs.flush("orders").await });
    let pipeline = app.app().pipeline("orders").unwrap().clone();
    wait_until(5, "the run to start", || async {
        pipeline.queue().in_flight().is_some()
    })
    .await;
    let stop = tokio::spawn(app.shutdown());
    // The admin listener stays up while the delivery drains, and says it is not ready.
    wait_until(5, "readyz to turn 503", || async {
        client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    assert!(!stop.is_finished(), "the delivery is still draining");
    stop.await.unwrap();
    assert!(flush.await.unwrap().is_ok());
}

/// The `[admin]` table of the listener tests: the test tokens plus `limits`.
fn admin_with(limits: &str) -> String {
    ADMIN.replace(
        "listen = \"127.0.0.1:0\"\n",
        &format!("listen = \"127.0.0.1:0\"\n{limits}\n"),
    )
}

fn listener_config(limits: &str) -> String {
    format!(
        "{}\n{}",
        admin_with(limits),
        crate::helpers::pipeline_config("127.0.0.1:0", "")
    )
}

#[tokio::test]
async fn a_slow_header_on_the_admin_port_is_cut_off() {
    let app = spawn_app(&listener_config("header_read_timeout = \"300ms\"")).await;
    let addr = app.app().admin_addr().unwrap();
    // Headers that never end: the admin listener closes the connection on its own.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "a slow header on the admin port was not cut off within 5 s"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // A whole request still gets its answer.
    assert_eq!(app.admin(Method::GET, "/healthz", None).await.status(), 200);
}

#[tokio::test]
async fn oversized_headers_on_the_admin_port_get_431() {
    let app = spawn_app(&listener_config("max_header_bytes = 8192")).await;
    let resp = app
        .client
        .get(app.admin_url("/healthz"))
        .header("x-big", "a".repeat(10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
}

#[tokio::test]
async fn admin_connections_beyond_max_connections_are_refused() {
    let app = spawn_app(&listener_config(
        "max_connections = 1\nheader_read_timeout = \"30s\"",
    ))
    .await;
    let addr = app.app().admin_addr().unwrap();
    let first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the second admin connection is closed: {read:?}"
    );
    drop(first);
    wait_until(5, "an admin connection slot to free up", || async {
        let resp = app.client.get(app.admin_url("/healthz")).send().await;
        resp.is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test]
async fn a_wrong_length_token_gets_401() {
    let app = spawn_app(&listener_config("")).await;
    let shorter = &WRITE_TOKEN[..WRITE_TOKEN.len() - 1];
    let longer = format!("{WRITE_TOKEN}0");
    for token in [shorter, longer.as_str(), "x"] {
        let resp = app
            .admin(Method::GET, "/admin/pipelines", Some(token))
            .await;
        let (status, body) = status_and_json(resp).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized")),
            "a token of {} bytes",
            token.len()
        );
    }
    let (status, _) = app.admin_json(Method::GET, "/admin/pipelines").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn peeking_more_than_400_rows_is_refused_naming_the_maximum() {
    let app = spawn_app(&listener_config("")).await;
    let (status, body) = app
        .admin_json(Method::GET, "/admin/pipelines/orders/rows?limit=400")
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .admin_json(Method::GET, "/admin/pipelines/orders/rows?limit=401")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("above_maximum"))
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("limit=401") && message.contains("maximum of 400"),
        "{message}"
    );
}

#[tokio::test]
async fn the_dead_letter_download_is_streamed_not_sized_in_memory() {
    let app = spawn_app(&listener_config("")).await;
    let path = app.app().pipeline("orders").unwrap().dead_letter_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut csv = String::from("offset,received_at,reason,row\n");
    for i in 0..20_000 {
        csv.push_str(&format!(
            "{i},2026-01-01T00:00:00.000Z,HTTP 500,\"{{\"\"id\"\":\"\"{i}\"\"}}\"\n"
        ));
    }
    std::fs::write(&path, &csv).unwrap();
    let resp = app
        .admin(
            Method::GET,
            "/admin/pipelines/orders/dead-letter",
            Some(READ_TOKEN),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    // A body read whole into memory is sent with its length; a streamed one in chunks.
    assert_eq!(
        resp.headers()
            .get("transfer-encoding")
            .map(|v| v.as_bytes()),
        Some(&b"chunked"[..])
    );
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(resp.text().await.unwrap(), csv);
}

#[tokio::test]
async fn failed_sender_checks_are_counted_in_metrics_by_reason() {
    let app = spawn_app(&format!(
        "{ADMIN}\n{}",
        crate::helpers::pipeline_config(
            "127.0.0.1:0",
            "[pipelines.auth]\nkind = \"token\"\nheader = \"X-Api-Key\"\nsecret = \"the-right-token\"\n",
        )
    ))
    .await;
    let post = |token: Option<&'static str>| {
        let mut req = app
            .client
            .post(app.url("/hooks/orders"))
            .header("content-type", "application/json")
            .body("{\"id\":\"1\"}");
        if let Some(t) = token {
            req = req.header("x-api-key", t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(Some("the-wrong-token")).await, 401);
    assert_eq!(post(Some("the-wrong-token")).await, 401);
    assert_eq!(post(None).await, 401);
    assert_eq!(post(Some("the-right-token")).await, 202);
    let scrape = app.scrape().await;
    let failures = |reason: &str| {
        sample(
            &scrape,
            &format!(r#"weir_ingest_auth_failures_total{{pipeline="orders",reason="{reason}"}}"#),
        )
    };
    assert_eq!(failures("bad_credentials"), Some(2.0), "{scrape}");
    assert_eq!(failures("missing_credentials"), Some(1.0));
    assert_eq!(failures("stale_timestamp"), Some(0.0));
}
