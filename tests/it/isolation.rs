//! Rows the service refuses for their data: isolated by bisection and dead-lettered with the
//! service's reason, while every other row is delivered. The emulator's `bad_value` fault
//! makes any job holding that value end ERROR with a data error naming the row.

use serde_json::json;
use weir::emulator::EmulatorConfig;
use weir::schedule::{Outcome, isolation_budget};

use crate::helpers::{ADMIN, READ_TOKEN, delivery_config, spawn_app, spawn_emulator};

fn emulator() -> EmulatorConfig {
    EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..EmulatorConfig::default()
    }
}

/// The dead-letter file's records (offset, received_at, reason, row).
async fn dead_letters(app: &crate::helpers::TestApp) -> Vec<Vec<String>> {
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

fn metric(scrape: &str, name: &str) -> u64 {
    scrape
        .lines()
        .find(|l| l.starts_with(name) && l.contains("pipeline=\"orders\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {scrape}"))
}

#[tokio::test]
async fn one_bad_row_among_a_thousand_is_dead_lettered_and_the_other_999_are_delivered() {
    let emu = spawn_emulator(emulator()).await;
    let config = format!(
        "{ADMIN}\n{}",
        delivery_config(&emu.base, "max_rows_per_run = 1000", "")
    );
    let app = spawn_app(&config).await;
    let rows: Vec<_> = (0..1000)
        .map(|i| {
            let price = if i == 637 {
                "not-a-price".to_owned()
            } else {
                format!("{i}.50")
            };
            json!({"id": i.to_string(), "Price": price})
        })
        .collect();
    assert_eq!(
        app.post_json("orders", &json!(rows).to_string())
            .await
            .status(),
        202
    );
    emu.fault(json!({"bad_value": "not-a-price"})).await;

    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    assert_eq!(report.rows, 1000, "{report:?}");
    assert!(
        app.queued("orders").await.is_empty(),
        "nothing is left queued"
    );

    let mut ids = emu.column("orders", "id").await;
    ids.sort_by_key(|id| id.parse::<u32>().unwrap());
    let expected: Vec<String> = (0..1000)
        .filter(|i| *i != 637)
        .map(|i| i.to_string())
        .collect();
    assert_eq!(ids, expected, "every good row delivered exactly once");

    let dead = dead_letters(&app).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0][0], "637");
    assert!(
        dead[0][2].contains("job ended ERROR") && dead[0][2].contains("column Price"),
        "the reason is the job's log: {:?}",
        dead[0][2]
    );
    assert!(dead[0][3].contains("not-a-price"), "{:?}", dead[0][3]);

    let jobs = emu.jobs().await.len() as u32;
    assert!(
        jobs - 1 <= isolation_budget(1000),
        "{jobs} jobs: the first plus at most {} to isolate",
        isolation_budget(1000)
    );
    let scrape = app.scrape().await;
    assert_eq!(metric(&scrape, "weir_delivery_rows_isolated_total"), 1);
    assert_eq!(
        metric(&scrape, "weir_delivery_isolation_jobs_total"),
        u64::from(jobs - 1)
    );
}

#[tokio::test]
async fn a_transient_error_is_retried_not_bisected() {
    let emu = spawn_emulator(emulator()).await;
    let config = format!("{ADMIN}\n{}", delivery_config(&emu.base, "", ""));
    let app = spawn_app(&config).await;
    app.post_json("orders", r#"[{"id":"1"},{"id":"2"},{"id":"3"},{"id":"4"}]"#)
        .await;
    emu.fault(json!({"job_status": "ERROR"})).await;
    let failed = app.app().flush("orders").await.unwrap();
    assert_eq!(failed.outcome, Outcome::Failed, "{failed:?}");
    assert_eq!(emu.jobs().await.len(), 1, "one job, no halves pushed");
    assert_eq!(
        app.queued("orders").await.len(),
        4,
        "every row still queued"
    );
    assert!(dead_letters(&app).await.is_empty());
    let scrape = app.scrape().await;
    assert_eq!(metric(&scrape, "weir_delivery_isolation_jobs_total"), 0);

    let ok = app.app().flush("orders").await.unwrap();
    assert_eq!(ok.outcome, Outcome::Delivered, "{ok:?}");
    assert_eq!(emu.column("orders", "id").await, ["1", "2", "3", "4"]);
}

/// Dead-letters rows 1 and 3 of ids 0..=4 (bad values "bad-1", "bad-3"), then clears the
/// fault, so they can be requeued. Returns the app and the emulator.
async fn two_dead_letters() -> (crate::helpers::TestApp, crate::helpers::TestEmulator) {
    let emu = spawn_emulator(emulator()).await;
    let config = format!("{ADMIN}\n{}", delivery_config(&emu.base, "", ""));
    let app = spawn_app(&config).await;
    let rows: Vec<_> = (0..5)
        .map(|i| {
            let v = if i % 2 == 1 {
                format!("bad-{i}")
            } else {
                format!("ok-{i}")
            };
            json!({"id": i.to_string(), "v": v})
        })
        .collect();
    app.post_json("orders", &json!(rows).to_string()).await;
    emu.fault(json!({"bad_value": "bad-1"})).await;
    emu.fault(json!({"bad_value": "bad-3"})).await;
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    let dead = dead_letters(&app).await;
    let offsets: Vec<&str> = dead.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(offsets, ["1", "3"], "{dead:?}");
    emu.clear_faults().await;
    (app, emu)
}

#[tokio::test]
async fn requeue_puts_every_dead_lettered_row_back_and_empties_the_file() {
    let (app, emu) = two_dead_letters().await;
    let (status, body) = app
        .admin_json(
            reqwest::Method::POST,
            "/admin/pipelines/orders/dead-letter/requeue",
        )
        .await;
    assert_eq!((status, body), (200, json!({"requeued": 2})));
    assert!(dead_letters(&app).await.is_empty(), "removed once queued");
    assert_eq!(app.queued("orders").await.len(), 2);
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    let mut ids = emu.column("orders", "id").await;
    ids.sort();
    assert_eq!(ids, ["0", "1", "2", "3", "4"]);
}

#[tokio::test]
async fn requeue_by_offsets_takes_only_those_rows() {
    let (app, _emu) = two_dead_letters().await;
    let (status, body) = app
        .admin_json(
            reqwest::Method::POST,
            "/admin/pipelines/orders/dead-letter/requeue?offsets=3,99",
        )
        .await;
    assert_eq!((status, body), (200, json!({"requeued": 1})));
    let left = dead_letters(&app).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0][0], "1", "the other row stays dead-lettered");
    let queued = app.queued_fields("orders").await;
    assert_eq!(
        queued,
        [vec![
            ("id".to_owned(), "3".to_owned()),
            ("v".to_owned(), "bad-3".to_owned())
        ]]
    );
    let (status, body) = app
        .admin_json(
            reqwest::Method::POST,
            "/admin/pipelines/orders/dead-letter/requeue?offsets=x",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_parameter");
}
