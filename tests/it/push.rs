//! `weir push`: backfilling a file through a pipeline in runs, as the real binary, against
//! the real emulator; interrupted with SIGKILL and resumed, no row is sent twice.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::helpers::{TestEmulator, spawn_emulator, wait_until};

/// A config pushing pipeline "orders" to `emulator` in runs of `max_rows`, with its state
/// in `dir`. The sink has no keys: the table appends, so a row sent twice would show.
fn config(dir: &Path, emulator: &TestEmulator, max_rows: usize, extra: &str) -> PathBuf {
    let text = format!(
        r#"
data_dir = "{data}"

[server]
listen = "127.0.0.1:0"

[[pipelines]]
name = "orders"
schedule = "1h"
max_rows_per_run = {max_rows}
retry_initial = "50ms"
retry_max_interval = "100ms"
{extra}

[[pipelines.columns]]
name = "OrderId"
from = "OrderId"

[[pipelines.columns]]
name = "Quantity"
from = "Quantity"
type = "INTEGER"

[pipelines.sink]
kind = "celonis"
url = "{url}"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "orders"
app_key = "test-key"
"#,
        data = dir.join("data").display(),
        url = emulator.base,
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn weir_push(config: &Path, file: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.env_remove("WEIR_CONFIG")
        .env("RUST_LOG", "info")
        .args(["push", "--json", "-p", "orders", "-c"])
        .arg(config)
        .args(args)
        .arg(file);
    c
}

/// Runs a push to its end (bounded: the binary gives up after 5 failed runs).
async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("weir push runs"))
        .await
        .unwrap()
}

fn write_csv(path: &Path, rows: usize) {
    let mut text = String::from("OrderId,Quantity\n");
    for i in 0..rows {
        text.push_str(&format!("{i:08},{}\n", i % 7));
    }
    std::fs::write(path, text).unwrap();
}

/// Each OrderId in the table, and how often it is there.
async fn counts(emulator: &TestEmulator) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for id in emulator.column("orders", "OrderId").await {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

async fn done_jobs(emulator: &TestEmulator) -> usize {
    emulator
        .jobs()
        .await
        .iter()
        .filter(|j| j["status"] == "DONE")
        .count()
}

#[tokio::test]
async fn a_csv_goes_in_runs_of_max_rows_and_a_killed_push_resumes_without_a_row_twice() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = spawn_emulator(Default::default()).await;
    let config = config(dir.path(), &emulator, 10_000, "");
    let file = dir.path().join("orders.csv");
    write_csv(&file, 25_000);
    // The first job runs at once, the second stays RUNNING for 5 s: the push is killed
    // while that job's outcome is unknown to it.
    emulator
        .fault(serde_json::json!({"job_running_ms": 0}))
        .await;
    emulator
        .fault(serde_json::json!({"job_running_ms": 5000}))
        .await;

    let mut child = weir_push(&config, &file, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(60, "the second job running", || async {
        let jobs = emulator.jobs().await;
        jobs.len() == 2 && jobs[1]["status"] == "RUNNING"
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        emulator.table("orders").await.len(),
        10_000,
        "first job only"
    );

    // Without --resume the push refuses to start over.
    let again = run(weir_push(&config, &file, &[])).await;
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("pass --resume"), "{stderr}");
    assert!(
        stderr.contains("through pipeline orders in part"),
        "{stderr}"
    );

    let resumed = run(weir_push(&config, &file, &["--resume"])).await;
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(
        stderr.contains("batch in flight was delivered"),
        "the resumed push settled the running job instead of pushing its rows again: {stderr}"
    );
    assert!(stderr.contains("push: resuming at 40%"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(summary["records"], 25_000);
    assert_eq!(summary["delivered"], 25_000);
    assert_eq!(summary["jobs"], 3);
    assert_eq!(summary["rejected"], 0);

    let counts = counts(&emulator).await;
    assert_eq!(counts.len(), 25_000, "every row arrived");
    assert!(counts.values().all(|&n| n == 1), "no row arrived twice");
    assert_eq!(
        done_jobs(&emulator).await,
        3,
        "25 000 rows in runs of 10 000"
    );
    assert_eq!(emulator.jobs().await.len(), 3, "no job pushed twice");

    // A finished file is not pushed again by mistake.
    let done = run(weir_push(&config, &file, &["--resume"])).await;
    assert!(!done.status.success());
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("already pushed completely"), "{stderr}");
}

#[tokio::test]
async fn a_json_lines_push_reports_rejected_and_filtered_records_and_goes_through_the_filter() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = spawn_emulator(Default::default()).await;
    let config = config(
        dir.path(),
        &emulator,
        2,
        r#"filter = "row.Quantity != '0'""#,
    );
    let file = dir.path().join("orders.jsonl");
    std::fs::write(
        &file,
        concat!(
            "{\"OrderId\": \"A1\", \"Quantity\": \"3\"}\n",
            "{\"OrderId\": \"A2\", \"Quantity\": \"three\"}\n",
            "\n",
            "{\"OrderId\": \"A3\", \"Quantity\": \"0\"}\n",
            "not json\n",
            "{\"OrderId\": \"A4\", \"Quantity\": \"4\"}\n",
            "{\"OrderId\": \"A5\", \"Quantity\": \"5\"}\n",
        ),
    )
    .unwrap();
    let out = run(weir_push(&config, &file, &[])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["records"], 6, "the blank line is no record");
    assert_eq!(summary["delivered"], 3);
    assert_eq!(summary["jobs"], 2, "A1+A4, then A5");
    assert_eq!(summary["rejected"], 2);
    assert_eq!(summary["filtered"], 1);
    let reasons = summary["reasons"].as_array().unwrap();
    assert!(
        reasons[0]
            .as_str()
            .unwrap()
            .starts_with("record 2: field \"Quantity\""),
        "{reasons:?}"
    );
    assert!(
        reasons[1].as_str().unwrap().starts_with("record 4: "),
        "{reasons:?}"
    );
    assert_eq!(
        emulator.column("orders", "OrderId").await,
        vec!["A1", "A4", "A5"]
    );
    // The job budget the daemon uses was spent by the push too.
    let budget_dir = dir.path().join("data/job-budget");
    let budget: Vec<_> = std::fs::read_dir(&budget_dir).unwrap().collect();
    assert_eq!(budget.len(), 1, "one team's budget file");
    let text = std::fs::read_to_string(budget[0].as_ref().unwrap().path()).unwrap();
    let used: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(used["used"], 2);
}

#[tokio::test]
async fn a_json_array_file_is_pushed_and_a_file_of_another_kind_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = spawn_emulator(Default::default()).await;
    let config = config(dir.path(), &emulator, 10, "");
    let file = dir.path().join("orders.json");
    std::fs::write(
        &file,
        r#"[{"OrderId": "J1", "Quantity": 1}, {"OrderId": "J2", "Quantity": 2}, {"OrderId": "J3", "Quantity": 3}]"#,
    )
    .unwrap();
    let out = run(weir_push(&config, &file, &[])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            summary["records"].as_u64(),
            summary["delivered"].as_u64(),
            summary["jobs"].as_u64()
        ),
        (Some(3), Some(3), Some(1))
    );
    assert_eq!(
        emulator.column("orders", "OrderId").await,
        vec!["J1", "J2", "J3"]
    );

    let xlsx = dir.path().join("orders.xlsx");
    std::fs::write(&xlsx, "not a sheet").unwrap();
    let out = run(weir_push(&config, &xlsx, &[])).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot tell the format; name the file .csv, .jsonl (or .ndjson) or .json"),
        "{stderr}"
    );
}
