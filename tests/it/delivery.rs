//! Scheduled delivery to the real emulator over loopback HTTP: job body, CSV bytes, table
//! contents, batching, modes, failures and the job budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::json;
use weir::emulator::EmulatorConfig;
use weir::queue::memory::MemoryQueue;
use weir::queue::{BoxFuture, Entry, InFlight, Offset, Queue, QueueError, QueueStats};
use weir::row::{Kind, Row};
use weir::schedule::{Carry, Outcome, run_once};

use crate::helpers::{ADMIN, TestEmulator, delivery_config, spawn_app, spawn_emulator, wait_until};

fn emulator() -> EmulatorConfig {
    EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..EmulatorConfig::default()
    }
}

#[tokio::test]
async fn posted_rows_become_one_job_with_the_right_body_csv_and_table_rows() {
    let emu = spawn_emulator(emulator()).await;
    let columns = r#"
[[pipelines.columns]]
name = "Order ID"
from = "OrderId"
[[pipelines.columns]]
name = "Note"
from = "Note"
"#;
    let sink = r#"mode = "DELTA"
keys = ["Order ID"]
[pipelines.sink.csv]
separator = ";"
line_ending = "\r\n"
"#;
    let app = spawn_app(&delivery_config(&emu.base, columns, sink)).await;
    assert_eq!(
        app.get("/hooks/orders?OrderId=0145632053&Note=M%C3%BCnchen%3B+Bahnhof")
            .await
            .status(),
        202
    );
    let body =
        json!([{"OrderId": "007", "Note": "say \"hi\"\nbye"}, {"OrderId": "0008"}]).to_string();
    assert_eq!(app.post_json("orders", &body).await.status(), 202);

    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert_eq!(report.rows, 3);

    let jobs = emu.jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(report.job_id.as_deref(), jobs[0]["id"].as_str());
    assert_eq!(
        jobs[0]["request"],
        json!({
            "type": "DELTA",
            "fileType": "CSV",
            "targetName": "orders",
            "dataPoolId": "8f2c1f9e-0000-4000-8000-000000000001",
            "keys": ["Order ID"],
            "csvParsingOptions": {
                "separatorSequence": ";", "quoteSequence": "\"", "escapeSequence": "\"",
                "lineEnding": "\r\n", "charSet": "UTF-8", "decimalSeparator": ".", "dateFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSXXX"
            },
            "tableSchema": {"tableName": "orders", "columns": [
                {"columnName": "Order ID", "columnType": "STRING", "fieldLength": 255, "decimals": 0, "pkField": true},
                {"columnName": "Note", "columnType": "STRING", "fieldLength": 255, "decimals": 0, "pkField": false}
            ]},
            "fallbackVarcharLength": 255
        })
    );
    assert_eq!(jobs[0]["status"], "DONE");
    assert_eq!(
        jobs[0]["chunks"][0]["content"],
        "Order ID;Note\r\n0145632053;\"München; Bahnhof\"\r\n007;\"say \"\"hi\"\"\nbye\"\r\n0008;\r\n"
    );
    let table = emu.table("orders").await;
    assert_eq!(table.len(), 3);
    assert_eq!(table[0]["Order ID"], "0145632053");
    assert_eq!(table[0]["Note"], "München; Bahnhof");
    assert_eq!(table[1]["Note"], "say \"hi\"\nbye");
    assert_eq!(table[2]["Order ID"], "0008");
    assert!(
        app.queued("orders").await.is_empty(),
        "delivered rows left the queue"
    );
}

#[tokio::test]
async fn each_run_takes_at_most_max_rows_per_run_in_arrival_order() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(&emu.base, "max_rows_per_run = 3", "")).await;
    let rows: Vec<_> = (0..7).map(|i| json!({"n": format!("{i:03}")})).collect();
    assert_eq!(
        app.post_json("orders", &json!(rows).to_string())
            .await
            .status(),
        202
    );
    let mut delivered = vec![];
    for _ in 0..3 {
        let r = app.app().flush("orders").await.unwrap();
        assert_eq!(r.outcome, Outcome::Delivered);
        delivered.push(r.rows);
    }
    assert_eq!(delivered, [3, 3, 1]);
    let empty = app.app().flush("orders").await.unwrap();
    assert_eq!((empty.outcome, empty.rows), (Outcome::Empty, 0));
    assert_eq!(emu.jobs().await.len(), 3, "an empty queue makes no job");
    let expected: Vec<String> = (0..7).map(|i| format!("{i:03}")).collect();
    assert_eq!(emu.column("orders", "n").await, expected);
}

#[tokio::test]
async fn replace_delta_with_keys_and_delta_append_load_differently() {
    let emu = spawn_emulator(emulator()).await;
    let replace = spawn_app(
        &delivery_config(
            &emu.base,
            "",
            "mode = \"REPLACE\"\ntarget_name = \"t_replace\"",
        )
        .replace("target_name = \"orders\"\n", ""),
    )
    .await;
    let upsert = spawn_app(
        &delivery_config(&emu.base, "", "keys = [\"id\"]\ntarget_name = \"t_upsert\"")
            .replace("target_name = \"orders\"\n", ""),
    )
    .await;
    let append = spawn_app(
        &delivery_config(&emu.base, "", "target_name = \"t_append\"")
            .replace("target_name = \"orders\"\n", ""),
    )
    .await;
    for app in [&replace, &upsert, &append] {
        app.post_json("orders", r#"[{"id":"1","v":"a"},{"id":"2","v":"b"}]"#)
            .await;
        assert_eq!(
            app.app().flush("orders").await.unwrap().outcome,
            Outcome::Delivered
        );
        app.post_json("orders", r#"[{"id":"2","v":"c"},{"id":"3","v":"d"}]"#)
            .await;
        assert_eq!(
            app.app().flush("orders").await.unwrap().outcome,
            Outcome::Delivered
        );
    }
    let pairs = |rows: Vec<serde_json::Map<String, serde_json::Value>>| -> Vec<String> {
        rows.iter()
            .map(|r| format!("{}={}", r["id"].as_str().unwrap(), r["v"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(pairs(emu.table("t_replace").await), ["2=c", "3=d"]);
    assert_eq!(pairs(emu.table("t_upsert").await), ["1=a", "2=c", "3=d"]);
    assert_eq!(
        pairs(emu.table("t_append").await),
        ["1=a", "2=b", "2=c", "3=d"]
    );
}

/// Posts ids 1..=4, makes one run fail with `fault`, and checks that nothing left the queue,
/// then that the next run delivers each key exactly once, in order.
async fn a_failed_run_keeps_every_row(
    fault: serde_json::Value,
    sink_extra: &str,
    expect_in_error: &str,
) {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(
        &emu.base,
        "",
        &format!("keys = [\"id\"]\n{sink_extra}"),
    ))
    .await;
    app.post_json("orders", r#"[{"id":"1"},{"id":"2"},{"id":"3"},{"id":"4"}]"#)
        .await;
    emu.fault(fault).await;
    let failed = app.app().flush("orders").await.unwrap();
    assert_eq!(failed.outcome, Outcome::Failed, "{failed:?}");
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains(expect_in_error),
        "{error:?} should mention {expect_in_error:?}"
    );
    assert_eq!(
        app.queued("orders").await.len(),
        4,
        "every row is still queued"
    );
    let ok = app.app().flush("orders").await.unwrap();
    assert_eq!(ok.outcome, Outcome::Delivered, "{ok:?}");
    // A timed-out job may still finish: wait for the emulator to settle, then count keys.
    wait_until(10, "no job still running", || async {
        emu.jobs()
            .await
            .iter()
            .all(|j| !matches!(j["status"].as_str(), Some("QUEUED" | "RUNNING")))
    })
    .await;
    assert_eq!(emu.column("orders", "id").await, ["1", "2", "3", "4"]);
    assert!(app.queued("orders").await.is_empty());
}

#[tokio::test]
async fn a_server_error_leaves_every_row_queued_for_the_next_run() {
    a_failed_run_keeps_every_row(
        json!({"status": 500, "count": 1, "endpoint": "upload"}),
        "",
        "HTTP 500",
    )
    .await;
}

#[tokio::test]
async fn a_credentials_error_leaves_every_row_queued_and_says_so() {
    a_failed_run_keeps_every_row(
        json!({"status": 401, "count": 1, "endpoint": "create"}),
        "",
        "credentials rejected",
    )
    .await;
}

#[tokio::test]
async fn a_rate_limited_execute_leaves_every_row_queued() {
    a_failed_run_keeps_every_row(
        json!({"status": 429, "count": 1, "endpoint": "execute", "retry_after": 1}),
        "",
        "HTTP 429",
    )
    .await;
}

/// Waits until the emulator runs no job.
async fn no_job_running(emu: &TestEmulator) {
    wait_until(10, "no job still running", || async {
        emu.jobs()
            .await
            .iter()
            .all(|j| !matches!(j["status"].as_str(), Some("QUEUED" | "RUNNING")))
    })
    .await;
}

/// DELTA without keys appends: a second push of the same rows would double them. Posts ids
/// 1..=4, makes the first run end with an unknown outcome through `fault`, and checks that
/// the next run settles the same job instead of pushing the rows again.
async fn an_unknown_outcome_is_never_a_second_push(
    fault: serde_json::Value,
    sink_extra: &str,
    expect_in_error: &str,
) {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(&emu.base, "", sink_extra)).await;
    app.post_json("orders", r#"[{"id":"1"},{"id":"2"},{"id":"3"},{"id":"4"}]"#)
        .await;
    emu.fault(fault).await;
    let failed = app.app().flush("orders").await.unwrap();
    assert_eq!(failed.outcome, Outcome::Failed, "{failed:?}");
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains(expect_in_error),
        "{error:?} should mention {expect_in_error:?}"
    );
    let pipeline = app.app().pipeline("orders").unwrap().clone();
    assert!(
        pipeline
            .queue()
            .in_flight()
            .is_some_and(|b| b.job_id.is_some()),
        "the job of an unknown outcome stays recorded in flight"
    );
    emu.clear_faults().await;
    let settled = app.app().flush("orders").await.unwrap();
    assert_eq!(settled.outcome, Outcome::Delivered, "{settled:?}");
    assert_eq!(settled.rows, 4);
    no_job_running(&emu).await;
    assert_eq!(
        emu.column("orders", "id").await,
        ["1", "2", "3", "4"],
        "no row twice"
    );
    let jobs = emu.jobs().await;
    assert_eq!(jobs.len(), 1, "the rows made one job: {jobs:?}");
    assert_eq!(jobs[0]["status"], "DONE");
    assert_eq!(
        jobs[0]["chunks"].as_array().map(Vec::len),
        Some(1),
        "the job's chunk was uploaded once"
    );
    assert!(app.queued("orders").await.is_empty());
    assert!(
        pipeline.queue().in_flight().is_none(),
        "settled, the record is cleared"
    );
}

#[tokio::test]
async fn an_execute_that_answers_500_but_runs_is_not_pushed_a_second_time() {
    an_unknown_outcome_is_never_a_second_push(
        json!({"status": 500, "endpoint": "execute", "handled": true}),
        "",
        "HTTP 500",
    )
    .await;
}

#[tokio::test]
async fn an_execute_without_an_answer_executes_the_same_job_again_without_a_new_upload() {
    an_unknown_outcome_is_never_a_second_push(
        json!({"delay_ms": 1500, "endpoint": "execute"}),
        "request_timeout = \"300ms\"",
        "execute job",
    )
    .await;
}

#[tokio::test]
async fn a_poll_that_keeps_failing_leaves_the_job_to_be_settled_not_pushed_again() {
    an_unknown_outcome_is_never_a_second_push(
        json!({"status": 500, "endpoint": "get", "count": 1000}),
        "poll_timeout = \"1s\"",
        "was not finished",
    )
    .await;
}

#[tokio::test]
async fn a_poll_answer_larger_than_a_mebibyte_is_refused_and_the_job_settled_later() {
    an_unknown_outcome_is_never_a_second_push(
        json!({"endpoint": "get", "pad_bytes": 2_000_000}),
        "",
        "larger than 1024 KiB",
    )
    .await;
}

#[tokio::test]
async fn a_rate_limited_execute_runs_the_same_job_again_after_retry_after() {
    an_unknown_outcome_is_never_a_second_push(
        json!({"status": 429, "endpoint": "execute", "retry_after": 1}),
        "",
        "HTTP 429",
    )
    .await;
}

#[tokio::test]
async fn a_huge_retry_after_never_kills_the_worker() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&format!("{ADMIN}\n{}", delivery_config(&emu.base, "", ""))).await;
    app.get("/hooks/orders?id=1").await;
    emu.fault(json!({"status": 429, "endpoint": "create", "retry_after": u64::MAX}))
        .await;
    let failed = app
        .app()
        .flush("orders")
        .await
        .expect("the worker answers: it did not die on the wait");
    assert_eq!(failed.outcome, Outcome::Failed);
    assert!(
        failed.retry_after.unwrap() <= std::time::Duration::from_secs(3600),
        "the wait is clamped: {failed:?}"
    );
    assert_eq!(
        app.app().runs().purge("orders").await.unwrap(),
        1,
        "the worker still carries out commands"
    );
    let ready = app
        .client
        .get(app.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(app.pipeline_view("orders").await["worker"], "running");
}

#[tokio::test]
async fn a_batch_with_more_fields_than_max_columns_is_delivered_in_smaller_runs() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&format!(
        "{ADMIN}\n{}",
        delivery_config(&emu.base, "max_columns = 3", "")
    ))
    .await;
    app.post_json(
        "orders",
        r#"[{"a":"1","b":"1"},{"c":"2","a":"2"},{"d":"3","e":"3"},{"f":"4"}]"#,
    )
    .await;
    let first = app.app().flush("orders").await.unwrap();
    assert_eq!(first.outcome, Outcome::Delivered, "{first:?}");
    assert_eq!(first.rows, 2, "the longest prefix within 3 columns");
    let error = first.error.unwrap_or_default();
    assert!(
        error.contains("pipeline orders") && error.contains("max_columns = 3"),
        "{error}"
    );
    wait_until(10, "the rest to be delivered right away", || async {
        app.queued("orders").await.is_empty()
    })
    .await;
    let jobs = emu.jobs().await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for job in &jobs {
        let header = job["chunks"][0]["content"]
            .as_str()
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_owned();
        assert!(header.split(',').count() <= 3, "{header}");
    }
    let scrape = app.scrape().await;
    assert!(
        scrape.contains("weir_delivery_batches_cut_total{pipeline=\"orders\"} 1"),
        "{scrape}"
    );
}

#[tokio::test]
async fn a_restart_mid_hour_never_exceeds_the_job_budget() {
    let emu = spawn_emulator(emulator()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "data_dir = \"{}\"\n[celonis]\njobs_per_hour = 1\n{}",
        dir.path().display(),
        delivery_config(&emu.base, "", "")
    );
    let before = spawn_app(&config).await;
    before.get("/hooks/orders?id=1").await;
    assert_eq!(
        before.app().flush("orders").await.unwrap().outcome,
        Outcome::Delivered
    );
    before.shutdown().await;
    let after = spawn_app(&config).await;
    after.get("/hooks/orders?id=2").await;
    let waited = tokio::time::timeout(
        std::time::Duration::from_millis(800),
        after.app().flush("orders"),
    )
    .await;
    assert!(
        waited.is_err(),
        "the restarted weir waits for the next hour"
    );
    assert_eq!(emu.jobs().await.len(), 1);
}

/// A memory queue whose first `failing` commits advance the cursor in memory but fail to
/// persist it, as a disk whose cursor file cannot be written.
struct FailingCommits {
    inner: MemoryQueue,
    failing: AtomicU32,
    commits: AtomicU32,
}

impl Queue for FailingCommits {
    fn push(&self, rows: Vec<Row>) -> BoxFuture<'_, Result<(), weir::queue::PushError>> {
        self.inner.push(rows)
    }
    fn peek(&self, max: usize, max_bytes: u64) -> BoxFuture<'_, Result<Vec<Entry>, QueueError>> {
        self.inner.peek(max, max_bytes)
    }
    fn commit(&self, through: Offset) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            self.commits.fetch_add(1, Ordering::SeqCst);
            self.inner.commit(through).await?;
            let failing = self.failing.load(Ordering::SeqCst);
            if failing > 0 {
                self.failing.store(failing - 1, Ordering::SeqCst);
                return Err(QueueError::Io(std::io::Error::other(
                    "cursor file not written",
                )));
            }
            Ok(())
        })
    }
    fn stats(&self) -> QueueStats {
        self.inner.stats()
    }
    fn set_in_flight(&self, batch: Option<InFlight>) -> BoxFuture<'_, Result<(), QueueError>> {
        self.inner.set_in_flight(batch)
    }
    fn in_flight(&self) -> Option<InFlight> {
        self.inner.in_flight()
    }
}

#[tokio::test]
async fn a_commit_that_fails_to_persist_is_not_reported_delivered_and_is_retried_first() {
    let emu = spawn_emulator(emulator()).await;
    let config = weir::config::Config::load(
        &format!(
            "data_dir = \"/nonexistent\"\n{}",
            delivery_config(&emu.base, "", "")
        ),
        &HashMap::new(),
    )
    .unwrap();
    let pc = config.pipelines[0].clone();
    let queue = Arc::new(FailingCommits {
        inner: MemoryQueue::new(100, u64::MAX),
        failing: AtomicU32::new(2),
        commits: AtomicU32::new(0),
    });
    let rows = (1..=2)
        .map(|i| {
            let mut b = Row::builder();
            b.push("id", Kind::String, &i.to_string()).unwrap();
            b.finish()
        })
        .collect();
    queue.push(rows).await.unwrap();
    let budgets = weir::sink::budget::Budgets::default();
    let metrics = Arc::new(weir::metrics::Metrics::new(Box::new(
        weir::collector::Collector::new(vec![], Arc::new(Default::default())),
    )));
    let sink = weir::sink::Sink::new(
        &pc,
        config.celonis,
        &budgets,
        &weir::sink::oauth::Tokens::default(),
        metrics,
        &config.data_dir,
    )
    .unwrap();
    let p = weir::pipeline::Pipeline::new(pc, queue.clone());
    let mut carry = Carry::default();

    let first = run_once(&p, &sink, &mut carry, 100).await;
    assert_eq!(first.outcome, Outcome::Failed, "{first:?}");
    assert!(first.error.unwrap().contains("committing delivered rows"));
    assert!(
        p.queue().in_flight().is_some(),
        "kept in flight until the cursor is on disk"
    );

    let second = run_once(&p, &sink, &mut carry, 100).await;
    assert_eq!(
        second.outcome,
        Outcome::Failed,
        "the retried commit failed again"
    );
    assert!(p.queue().in_flight().is_some());

    let third = run_once(&p, &sink, &mut carry, 100).await;
    assert_eq!(third.outcome, Outcome::Delivered, "{third:?}");
    assert_eq!(third.rows, 2);
    assert!(
        p.queue().in_flight().is_none(),
        "cleared once the commit persisted"
    );
    assert_eq!(
        queue.commits.load(Ordering::SeqCst),
        3,
        "each run retried the commit first"
    );
    no_job_running(&emu).await;
    assert_eq!(emu.jobs().await.len(), 1, "no second push");
    assert_eq!(emu.column("orders", "id").await, ["1", "2"]);
}

#[tokio::test]
async fn an_error_job_leaves_every_row_queued() {
    a_failed_run_keeps_every_row(
        json!({"job_status": "ERROR", "count": 1}),
        "",
        "ended ERROR",
    )
    .await;
}

#[tokio::test]
async fn a_slow_response_times_out_and_leaves_every_row_queued() {
    a_failed_run_keeps_every_row(
        json!({"delay_ms": 1500, "count": 1, "endpoint": "create"}),
        "request_timeout = \"300ms\"",
        "create job",
    )
    .await;
}

#[tokio::test]
async fn a_job_that_outlives_the_poll_timeout_is_retried_without_duplicating_keys() {
    a_failed_run_keeps_every_row(
        json!({"delay_ms": 1500, "count": 2, "endpoint": "get"}),
        "request_timeout = \"300ms\"\npoll_timeout = \"900ms\"",
        "was not finished",
    )
    .await;
}

#[tokio::test]
async fn failed_runs_are_retried_with_backoff_without_waiting_for_the_schedule() {
    let emu = spawn_emulator(emulator()).await;
    let config = delivery_config(&emu.base, "", "").replace(
        "retry_initial = \"1h\"\nretry_max_interval = \"1h\"",
        "retry_initial = \"100ms\"\nretry_max_interval = \"400ms\"",
    );
    let app = spawn_app(&config).await;
    app.post_json("orders", r#"[{"id":"1"},{"id":"2"}]"#).await;
    emu.fault(json!({"status": 503, "count": 3, "endpoint": "create"}))
        .await;
    assert_eq!(
        app.app().flush("orders").await.unwrap().outcome,
        Outcome::Failed
    );
    wait_until(10, "the retries to deliver the rows", || async {
        emu.column("orders", "id").await == ["1", "2"]
    })
    .await;
    let created: Vec<_> = emu.jobs().await;
    assert_eq!(
        created.len(),
        1,
        "the three refused creates made no job; the fourth try did"
    );
}

#[tokio::test]
async fn the_schedule_delivers_on_its_own() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(
        &delivery_config(&emu.base, "", "").replace("schedule = \"1h\"", "schedule = \"1s\""),
    )
    .await;
    app.get("/hooks/orders?id=0042").await;
    wait_until(10, "the scheduled run", || async {
        emu.column("orders", "id").await == ["0042"]
    })
    .await;
}

#[tokio::test]
async fn a_run_still_going_at_the_next_tick_is_not_started_twice() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(
        &delivery_config(&emu.base, "", "").replace("schedule = \"1h\"", "schedule = \"1s\""),
    )
    .await;
    emu.fault(json!({"delay_ms": 3000, "count": 1, "endpoint": "create"}))
        .await;
    app.get("/hooks/orders?id=1").await;
    wait_until(15, "the slow run to deliver", || async {
        emu.column("orders", "id").await == ["1"]
    })
    .await;
    // Ticks kept coming during the 3 s create; none started a second run on the same rows.
    assert_eq!(emu.jobs().await.len(), 1);
}

#[tokio::test]
async fn the_job_budget_is_never_exceeded_and_runs_wait_for_it() {
    let emu = spawn_emulator(emulator()).await;
    let config = format!(
        "[celonis]\njobs_per_hour = 2\n{}",
        delivery_config(&emu.base, "max_rows_per_run = 1", "")
    );
    let app = spawn_app(&config).await;
    app.post_json("orders", r#"[{"id":"1"},{"id":"2"},{"id":"3"}]"#)
        .await;
    assert_eq!(
        app.app().flush("orders").await.unwrap().outcome,
        Outcome::Delivered
    );
    assert_eq!(
        app.app().flush("orders").await.unwrap().outcome,
        Outcome::Delivered
    );
    let third = tokio::time::timeout(
        std::time::Duration::from_millis(800),
        app.app().flush("orders"),
    )
    .await;
    assert!(
        third.is_err(),
        "the third run waits for the next hour instead of failing"
    );
    assert_eq!(emu.jobs().await.len(), 2);
    assert_eq!(
        app.queued("orders").await.len(),
        1,
        "the waiting row is still queued"
    );
}

#[tokio::test]
async fn pipelines_of_one_team_share_the_job_budget() {
    let emu = spawn_emulator(emulator()).await;
    let one = delivery_config(&emu.base, "", "");
    let second = one[one.find("[[pipelines]]").unwrap()..]
        .replace("name = \"orders\"", "name = \"returns\"");
    let config = format!("[celonis]\njobs_per_hour = 1\n{one}\n{second}");
    let app = spawn_app(&config).await;
    app.get("/hooks/orders?id=1").await;
    app.get("/hooks/returns?id=2").await;
    assert_eq!(
        app.app().flush("orders").await.unwrap().outcome,
        Outcome::Delivered
    );
    let other = tokio::time::timeout(
        std::time::Duration::from_millis(800),
        app.app().flush("returns"),
    )
    .await;
    assert!(
        other.is_err(),
        "the other pipeline of the same team waits for the budget"
    );
    assert_eq!(emu.jobs().await.len(), 1);
}

#[tokio::test]
async fn shutdown_lets_a_running_delivery_finish_first() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(&emu.base, "", "")).await;
    app.post_json("orders", r#"[{"id":"1"},{"id":"2"}]"#).await;
    emu.fault(json!({"delay_ms": 1000, "count": 1, "endpoint": "create"}))
        .await;
    let runs = app.app().runs().clone();
    let flush = tokio::spawn(async move { runs.flush("orders").await });
    let pipeline = app.app().pipeline("orders").unwrap().clone();
    wait_until(5, "the run to start", || async {
        pipeline.queue().in_flight().is_some()
    })
    .await;
    app.shutdown().await;
    assert_eq!(
        emu.column("orders", "id").await,
        ["1", "2"],
        "the run finished before weir stopped"
    );
    assert_eq!(flush.await.unwrap().unwrap().outcome, Outcome::Delivered);
    assert!(
        pipeline
            .queue()
            .peek(10, u64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn drain_on_shutdown_makes_one_last_delivery_from_the_memory_queue() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(&emu.base, "drain_on_shutdown = true", "")).await;
    app.post_json("orders", r#"[{"id":"1"},{"id":"2"}]"#).await;
    assert!(
        emu.jobs().await.is_empty(),
        "nothing delivered before shutdown"
    );
    app.shutdown().await;
    assert_eq!(emu.column("orders", "id").await, ["1", "2"]);
}
