//! The Data Push API emulator over real HTTP: lifecycle, table semantics, rejections, auth, limits and faults.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use weir::emulator::{Emulator, EmulatorConfig};

const POOL: &str = "a41a7264-75e5-4320-810a-04ba56b4c189";
const OTHER_POOL: &str = "b52b8375-86f6-4431-921b-15cb67c5d290";
const APP_KEY: &str = "test-app-key";
const API_KEY: &str = "test-api-key";
const DEADLINE: Duration = Duration::from_secs(5);
const INTEGRATION: &str = "/integration/api/v1/data-push";
const DATA_INGESTION: &str = "/data-ingestion/api/v1/data-push";

struct TestEmulator {
    base: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

fn config() -> EmulatorConfig {
    EmulatorConfig {
        app_keys: vec![APP_KEY.into()],
        api_keys: vec![API_KEY.into()],
        ..EmulatorConfig::default()
    }
}

async fn spawn_emulator(config: EmulatorConfig) -> TestEmulator {
    let emulator = Emulator::new(config).expect("emulator starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(emulator.serve(listener, shutdown.clone()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("client builds");
    TestEmulator {
        base,
        client,
        shutdown,
        server,
    }
}

/// A CSV job for `target`.
fn csv_job(target: &str, kind: &str, keys: Option<&[&str]>) -> Value {
    json!({"targetName": target, "type": kind, "dataPoolId": POOL, "fileType": "CSV", "keys": keys})
}

impl TestEmulator {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn jobs_url(&self, prefix: &str) -> String {
        self.url(&format!("{prefix}/{POOL}/jobs/"))
    }

    fn job_url(&self, id: &str) -> String {
        self.url(&format!("{INTEGRATION}/{POOL}/jobs/{id}"))
    }

    fn post(&self, url: &str) -> reqwest::RequestBuilder {
        self.client
            .post(url)
            .header("authorization", format!("AppKey {APP_KEY}"))
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.client
            .get(url)
            .header("authorization", format!("AppKey {APP_KEY}"))
    }

    async fn create(&self, body: &Value) -> Value {
        let response = self
            .post(&self.jobs_url(INTEGRATION))
            .json(body)
            .send()
            .await
            .expect("create sent");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("job json")
    }

    async fn upload_to(&self, url: String, csv: &str) -> reqwest::Response {
        let form = Form::new().part(
            "file",
            Part::bytes(csv.as_bytes().to_vec()).file_name("chunk.csv"),
        );
        self.post(&url)
            .multipart(form)
            .send()
            .await
            .expect("upload sent")
    }

    async fn upload_bytes(&self, id: &str, kind: &str, bytes: Vec<u8>) {
        let form = Form::new().part("file", Part::bytes(bytes).file_name("file"));
        let response = self
            .post(&format!("{}/chunks/{kind}", self.job_url(id)))
            .multipart(form)
            .send()
            .await
            .expect("upload sent");
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// Create, upload binary chunks, execute with an optional query and wait: the finished job.
    async fn push_bytes(&self, job: &Value, chunks: Vec<(&str, Vec<u8>)>, query: &str) -> Value {
        let created = self.create(job).await;
        let id = created["id"].as_str().expect("id").to_owned();
        for (kind, bytes) in chunks {
            self.upload_bytes(&id, kind, bytes).await;
        }
        let response = self
            .post(&format!("{}{query}", self.job_url(&id)))
            .send()
            .await
            .expect("execute sent");
        assert_eq!(response.status(), StatusCode::OK);
        self.wait_until_finished(&id).await
    }

    async fn table_in(&self, connection: &str, name: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!(
                "/emulator/tables/{name}?connectionId={connection}"
            )))
            .send()
            .await
            .expect("table sent")
    }

    async fn upload(&self, id: &str, kind: &str, csv: &str) {
        let response = self
            .upload_to(format!("{}/chunks/{kind}", self.job_url(id)), csv)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    async fn execute(&self, id: &str) -> reqwest::Response {
        self.post(&self.job_url(id))
            .send()
            .await
            .expect("execute sent")
    }

    async fn job(&self, id: &str) -> Value {
        let response = self.get(&self.job_url(id)).send().await.expect("get sent");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("job json")
    }

    /// Polls the job until it leaves NEW/QUEUED/RUNNING, failing after the deadline.
    async fn wait_until_finished(&self, id: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let job = self.job(id).await;
            if !matches!(job["status"].as_str(), Some("NEW" | "QUEUED" | "RUNNING")) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} never finished: {job}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Create, upload chunks, execute and wait: the finished job.
    async fn push(&self, job: &Value, chunks: &[(&str, &str)]) -> Value {
        let created = self.create(job).await;
        let id = created["id"].as_str().expect("id").to_owned();
        for (kind, csv) in chunks {
            self.upload(&id, kind, csv).await;
        }
        assert_eq!(self.execute(&id).await.status(), StatusCode::OK);
        self.wait_until_finished(&id).await
    }

    async fn table(&self, name: &str) -> Value {
        let response = self
            .client
            .get(self.url(&format!("/emulator/tables/{name}")))
            .send()
            .await
            .expect("table sent");
        assert_eq!(response.status(), StatusCode::OK, "table {name}");
        response.json().await.expect("table json")
    }

    async fn jobs(&self) -> Vec<Value> {
        self.client
            .get(self.url("/emulator/jobs"))
            .send()
            .await
            .expect("jobs sent")
            .json()
            .await
            .expect("jobs json")
    }

    async fn fault(&self, fault: Value) {
        let response = self
            .client
            .post(self.url("/emulator/faults"))
            .json(&fault)
            .send()
            .await
            .expect("fault sent");
        assert_eq!(response.status(), StatusCode::OK, "fault {fault}");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(DEADLINE, self.server)
            .await
            .expect("emulator stops within the deadline")
            .expect("server task joins");
        assert!(result.is_ok());
    }
}

fn rows(table: &Value) -> Vec<Vec<Value>> {
    let columns: Vec<&str> = table["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c.as_str().expect("column name"))
        .collect();
    table["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| columns.iter().map(|c| row[*c].clone()).collect())
        .collect()
}

fn strings(values: &[&[&str]]) -> Vec<Vec<Value>> {
    values
        .iter()
        .map(|row| row.iter().map(|v| json!(v)).collect())
        .collect()
}

#[tokio::test]
async fn a_csv_job_goes_from_new_to_done_and_fills_the_table() {
    let emulator = spawn_emulator(config()).await;
    let body = r#"{"id":null,"targetName":"Orders","type":"DELTA","dataPoolId":"a41a7264-75e5-4320-810a-04ba56b4c189","fileType":"CSV","keys":["id"],"status":null,"logs":null,"fallbackVarcharLength":0,"extra":1}"#;
    let response = emulator
        .post(&emulator.jobs_url(INTEGRATION))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert_eq!(created["status"], "NEW");
    assert_eq!(created["logs"], json!([]));
    assert_eq!(created["targetName"], "Orders");
    assert_eq!(created["keys"], json!(["id"]));
    assert_eq!(created["fallbackVarcharLength"], 0);
    assert!(created.get("extra").is_none());

    let csv = "id,name\r\n1,apple\r\n2,pear\r\n";
    emulator.upload(&id, "upserted", csv).await;
    let chunks: Value = emulator
        .get(&format!("{}/chunks", emulator.job_url(&id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(chunks.as_array().unwrap().len(), 1);
    assert_eq!(chunks[0]["type"], "UPSERT");
    assert_eq!(chunks[0]["pushJobId"], json!(id));
    assert!(chunks[0]["checksum"].is_string());
    assert!(chunks[0]["creationDate"].is_u64());

    assert_eq!(emulator.execute(&id).await.status(), StatusCode::OK);
    let running = emulator.job(&id).await;
    assert!(matches!(
        running["status"].as_str(),
        Some("QUEUED" | "RUNNING")
    ));
    let done = emulator.wait_until_finished(&id).await;
    assert_eq!(done["status"], "DONE", "{done}");

    let table = emulator.table("orders").await;
    assert_eq!(table["table"], "Orders");
    assert_eq!(table["columns"], json!(["id", "name"]));
    assert_eq!(rows(&table), strings(&[&["1", "apple"], &["2", "pear"]]));

    let jobs = emulator.jobs().await;
    assert_eq!(jobs.len(), 1);
    let request: Value = serde_json::from_str(body).unwrap();
    assert_eq!(jobs[0]["request"], request);
    assert_eq!(jobs[0]["chunks"][0]["content"], csv);
    assert_eq!(jobs[0]["status"], "DONE");
    assert!(jobs[0]["executedAt"].is_u64());

    let listed: Value = emulator
        .get(&emulator.jobs_url(INTEGRATION))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], json!(id));
    emulator.stop().await;
}

#[tokio::test]
async fn both_prefixes_and_slash_variants_reach_the_same_jobs() {
    let emulator = spawn_emulator(config()).await;
    let without_slash = emulator.url(&format!("{DATA_INGESTION}/{POOL}/jobs"));
    let created: Value = emulator
        .post(&without_slash)
        .json(&csv_job("t", "DELTA", None))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();

    for url in [
        format!("{INTEGRATION}/{POOL}/jobs/{id}"),
        format!("{INTEGRATION}/{POOL}/jobs/{id}/"),
        format!("{DATA_INGESTION}/{POOL}/jobs/{id}"),
        format!("{DATA_INGESTION}/{POOL}/jobs/{id}/"),
        format!("{INTEGRATION}/{POOL}/jobs//{id}"),
    ] {
        let response = emulator.get(&emulator.url(&url)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
    }
    for url in [
        emulator.jobs_url(INTEGRATION),
        emulator.jobs_url(DATA_INGESTION),
        without_slash.clone(),
    ] {
        let listed: Value = emulator
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed.as_array().unwrap().len(), 1, "{url}");
    }

    let double = emulator.url(&format!("{INTEGRATION}/{POOL}/jobs//{id}/chunks/upserted"));
    assert_eq!(
        emulator.upload_to(double, "a\n1\n").await.status(),
        StatusCode::OK
    );
    let deleted_url = emulator.url(&format!("{INTEGRATION}/{POOL}/jobs/{id}/chunks/deleted/"));
    assert_eq!(
        emulator.upload_to(deleted_url, "a\n1\n").await.status(),
        StatusCode::OK
    );
    let execute_url = emulator.url(&format!("{DATA_INGESTION}/{POOL}/jobs/{id}/"));
    let response = emulator
        .post(&execute_url)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let finished = emulator.wait_until_finished(id).await;
    // A delete chunk on a DELTA job without keys cannot be applied.
    assert_eq!(finished["status"], "ERROR");
    emulator.stop().await;
}

#[tokio::test]
async fn replace_upsert_append_and_delete_each_shape_the_table_as_documented() {
    let emulator = spawn_emulator(config()).await;
    let replace = csv_job("Items", "REPLACE", None);
    let upsert = csv_job("items", "DELTA", Some(&["id"]));
    let append = csv_job("ITEMS", "DELTA", None);

    let done = emulator
        .push(&replace, &[("upserted", "id,v\n1,a\n2,b\n")])
        .await;
    assert_eq!(done["status"], "DONE", "{done}");
    emulator
        .push(&upsert, &[("upserted", "id,v\n2,B\n3,c\n")])
        .await;
    assert_eq!(
        rows(&emulator.table("items").await),
        strings(&[&["1", "a"], &["2", "B"], &["3", "c"]])
    );
    emulator.push(&append, &[("upserted", "id,v\n3,c\n")]).await;
    assert_eq!(
        rows(&emulator.table("items").await),
        strings(&[&["1", "a"], &["2", "B"], &["3", "c"], &["3", "c"]])
    );
    let deleted = emulator.push(&upsert, &[("deleted", "id\n3\n1\n")]).await;
    assert_eq!(deleted["status"], "DONE", "{deleted}");
    assert_eq!(
        rows(&emulator.table("items").await),
        strings(&[&["2", "B"]])
    );
    let with_new_column = emulator.push(&upsert, &[("upserted", "id,w\n2,x\n")]).await;
    assert_eq!(with_new_column["status"], "DONE");
    let table = emulator.table("Items").await;
    assert_eq!(table["columns"], json!(["id", "v", "w"]));
    assert_eq!(rows(&table), vec![vec![json!("2"), json!("B"), json!("x")]]);
    emulator.push(&replace, &[("upserted", "k\nonly\n")]).await;
    let table = emulator.table("items").await;
    assert_eq!(table["columns"], json!(["k"]));
    assert_eq!(rows(&table), strings(&[&["only"]]));
    emulator.stop().await;
}

#[tokio::test]
async fn jobs_that_cannot_be_applied_end_in_error_with_a_log_line() {
    let emulator = spawn_emulator(config()).await;
    let missing_key = emulator
        .push(
            &csv_job("t", "DELTA", Some(&["order_id"])),
            &[("upserted", "id\n1\n")],
        )
        .await;
    assert_eq!(missing_key["status"], "ERROR");
    assert!(
        missing_key["logs"][0]
            .as_str()
            .unwrap()
            .contains("order_id")
    );

    let delete_on_replace = emulator
        .push(&csv_job("t", "REPLACE", None), &[("deleted", "id\n1\n")])
        .await;
    assert_eq!(delete_on_replace["status"], "ERROR");
    assert!(!delete_on_replace["logs"].as_array().unwrap().is_empty());

    // PARQUET is also the file type of a job that names none: CSV bytes are not a Parquet file.
    for file_type in [json!("PARQUET"), Value::Null] {
        let job = json!({"targetName": "t", "type": "DELTA", "fileType": file_type});
        let finished = emulator.push(&job, &[("upserted", "id\n1\n")]).await;
        assert_eq!(finished["status"], "ERROR");
        assert!(
            finished["logs"][0]
                .as_str()
                .unwrap()
                .contains("not a valid Parquet file"),
            "{finished}"
        );
    }
    emulator.stop().await;
}

async fn assert_rejected(response: reqwest::Response, status: StatusCode, what: &str) -> Value {
    assert_eq!(response.status(), status, "{what}");
    response.json().await.unwrap_or(Value::Null)
}

#[tokio::test]
async fn emulator_rejects_the_malformed_requests_the_reference_lists() {
    let emulator = spawn_emulator(config()).await;
    let create = |body: Value| {
        emulator
            .post(&emulator.jobs_url(INTEGRATION))
            .json(&body)
            .send()
    };
    for (what, body) in [
        ("missing targetName", json!({"type": "DELTA"})),
        ("missing type", json!({"targetName": "t"})),
        ("null type", json!({"targetName": "t", "type": null})),
        ("bad type", json!({"targetName": "t", "type": "UPSERT"})),
        (
            "bad fileType",
            json!({"targetName": "t", "type": "DELTA", "fileType": "XLS"}),
        ),
        (
            "other pool",
            json!({"targetName": "t", "type": "DELTA", "dataPoolId": OTHER_POOL}),
        ),
        ("not an object", json!(["t"])),
    ] {
        let error =
            assert_rejected(create(body).await.unwrap(), StatusCode::BAD_REQUEST, what).await;
        assert!(error["frontendErrorKey"].is_string(), "{what}: {error}");
        assert!(error.get("errorInformation").is_some(), "{what}");
    }

    let created = emulator.create(&csv_job("t", "DELTA", None)).await;
    let id = created["id"].as_str().unwrap();
    let upload_url = format!("{}/chunks/upserted", emulator.job_url(id));

    let raw = emulator
        .post(&upload_url)
        .header("content-type", "text/csv")
        .body("a\n1\n")
        .send()
        .await
        .unwrap();
    assert!(
        matches!(
            raw.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::BAD_REQUEST
        ),
        "raw csv upload got {}",
        raw.status()
    );
    let wrong_part = Form::new().part("data", Part::bytes(b"a\n1\n".to_vec()));
    let response = emulator
        .post(&upload_url)
        .multipart(wrong_part)
        .send()
        .await
        .unwrap();
    assert_rejected(response, StatusCode::BAD_REQUEST, "missing file part").await;

    let unknown_job = emulator.job_url(&uuid::Uuid::new_v4().to_string());
    let body = assert_rejected(
        emulator.get(&unknown_job).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "unknown job",
    )
    .await;
    assert!(body.is_string(), "404 body is a bare JSON string: {body}");
    let unknown_pool = emulator.url(&format!("{INTEGRATION}/not-a-pool/jobs/"));
    let body = assert_rejected(
        emulator.get(&unknown_pool).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "unknown pool",
    )
    .await;
    assert!(body.is_string());
    let other_pool = emulator.url(&format!("{INTEGRATION}/{OTHER_POOL}/jobs/{id}"));
    assert_rejected(
        emulator.get(&other_pool).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "job of another pool",
    )
    .await;

    assert_eq!(emulator.execute(id).await.status(), StatusCode::OK);
    assert_rejected(
        emulator.execute(id).await,
        StatusCode::CONFLICT,
        "second execute",
    )
    .await;
    let late = emulator.upload_to(upload_url.clone(), "a\n1\n").await;
    assert_rejected(late, StatusCode::CONFLICT, "upload after execute").await;
    emulator.wait_until_finished(id).await;

    let response = emulator
        .client
        .delete(emulator.job_url(id))
        .header("authorization", format!("AppKey {APP_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_rejected(
        emulator.get(&emulator.job_url(id)).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "deleted job",
    )
    .await;
    assert_eq!(
        emulator.jobs().await.len(),
        1,
        "deleted jobs stay visible to tests"
    );
    emulator.stop().await;
}

#[tokio::test]
async fn a_second_job_for_a_busy_table_conflicts_until_the_first_finishes() {
    let emulator = spawn_emulator(EmulatorConfig {
        step_delay: Duration::from_secs(1),
        ..config()
    })
    .await;
    let first = emulator.create(&csv_job("Busy", "DELTA", None)).await;
    let second = emulator.create(&csv_job("BUSY", "DELTA", None)).await;
    let other = emulator.create(&csv_job("calm", "DELTA", None)).await;
    let (first, second, other) = (
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
        other["id"].as_str().unwrap(),
    );
    assert_eq!(emulator.execute(first).await.status(), StatusCode::OK);
    assert_eq!(
        emulator.execute(second).await.status(),
        StatusCode::CONFLICT
    );
    assert_eq!(emulator.execute(other).await.status(), StatusCode::OK);
    // The same target name in a data connection is another table.
    let mut elsewhere = csv_job("busy", "DELTA", None);
    elsewhere["connectionId"] = json!("conn-a");
    let elsewhere = emulator.create(&elsewhere).await;
    let elsewhere = elsewhere["id"].as_str().unwrap();
    assert_eq!(emulator.execute(elsewhere).await.status(), StatusCode::OK);
    assert_eq!(emulator.job(second).await["status"], "NEW");
    emulator.wait_until_finished(first).await;
    assert_eq!(emulator.execute(second).await.status(), StatusCode::OK);
    emulator.stop().await;
}

#[tokio::test]
async fn requests_without_a_matching_key_and_scheme_get_401_with_an_empty_body() {
    let emulator = spawn_emulator(config()).await;
    let url = emulator.jobs_url(INTEGRATION);
    for (what, header) in [
        ("no header", None),
        ("wrong app key", Some("AppKey nope".to_owned())),
        ("api key as AppKey", Some(format!("AppKey {API_KEY}"))),
        ("app key as Bearer", Some(format!("Bearer {APP_KEY}"))),
        ("basic scheme", Some(format!("Basic {APP_KEY}"))),
        ("no key", Some("AppKey ".to_owned())),
    ] {
        let mut request = emulator.client.get(&url);
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(response.bytes().await.unwrap().is_empty(), "{what}");
    }
    for header in [format!("AppKey {APP_KEY}"), format!("Bearer {API_KEY}")] {
        let response = emulator
            .client
            .get(&url)
            .header("Authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    emulator.stop().await;

    let open = spawn_emulator(EmulatorConfig::default()).await;
    let url = open.jobs_url(INTEGRATION);
    let anything = open
        .client
        .get(&url)
        .header("authorization", "Bearer whatever")
        .send()
        .await
        .unwrap();
    assert_eq!(anything.status(), StatusCode::OK);
    let none = open.client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    open.stop().await;
}

#[tokio::test]
async fn executes_over_the_hourly_limit_get_429_with_retry_after() {
    let emulator = spawn_emulator(EmulatorConfig {
        jobs_per_hour: 2,
        ..config()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let job = emulator
            .create(&csv_job(&format!("t{i}"), "DELTA", None))
            .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(emulator.execute(&ids[0]).await.status(), StatusCode::OK);
    assert_eq!(emulator.execute(&ids[1]).await.status(), StatusCode::OK);
    let limited = emulator.execute(&ids[2]).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry_after));
    let body: Value = limited.json().await.unwrap();
    assert!(body.is_string());
    assert_eq!(emulator.job(&ids[2]).await["status"], "NEW");
    emulator.stop().await;
}

#[tokio::test]
async fn status_faults_answer_the_next_requests_with_the_injected_status() {
    let emulator = spawn_emulator(config()).await;
    emulator
        .fault(json!({"status": 500, "count": 2, "endpoint": "create"}))
        .await;
    let body = csv_job("t", "DELTA", None);
    let url = emulator.jobs_url(INTEGRATION);
    // A fault for create does not hit other endpoints.
    assert_eq!(
        emulator.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    for _ in 0..2 {
        let response = emulator.post(&url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let error: Value = response.json().await.unwrap();
        for field in ["reference", "message", "shortMessage"] {
            assert!(error[field].is_string(), "{field} in {error}");
        }
    }
    let created = emulator.create(&body).await;
    let id = created["id"].as_str().unwrap();

    emulator
        .fault(json!({"status": 429, "retry_after": 7, "endpoint": "execute"}))
        .await;
    let limited = emulator.execute(id).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "7");
    assert_eq!(emulator.job(id).await["status"], "NEW");

    emulator.fault(json!({"status": 401})).await;
    let denied = emulator.get(&emulator.job_url(id)).send().await.unwrap();
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    assert!(denied.bytes().await.unwrap().is_empty());

    emulator
        .fault(json!({"status": 503, "count": 5, "endpoint": "upload"}))
        .await;
    let cleared = emulator
        .client
        .delete(emulator.url("/emulator/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), StatusCode::OK);
    emulator.upload(id, "upserted", "a\n1\n").await;

    let malformed = emulator
        .client
        .post(emulator.url("/emulator/faults"))
        .json(&json!({"status": 500, "endpoint": "nowhere"}))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert!(malformed.json::<Value>().await.is_ok());
    emulator.stop().await;
}

#[tokio::test]
async fn a_delay_fault_stalls_the_next_request() {
    let emulator = spawn_emulator(config()).await;
    emulator
        .fault(json!({"delay_ms": 300, "count": 1, "endpoint": "get"}))
        .await;
    let created = emulator.create(&csv_job("t", "DELTA", None)).await;
    let id = created["id"].as_str().unwrap();
    let started = Instant::now();
    emulator.job(id).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    emulator.job(id).await;
    assert!(started.elapsed() < Duration::from_millis(300));
    emulator.stop().await;
}

#[tokio::test]
async fn job_status_faults_end_the_next_executed_jobs_as_asked() {
    let emulator = spawn_emulator(config()).await;
    emulator.fault(json!({"job_status": "ERROR"})).await;
    emulator.fault(json!({"job_status": "CANCELED"})).await;
    let job = csv_job("t", "DELTA", None);
    let chunk = [("upserted", "a\n1\n")];
    let failed = emulator.push(&job, &chunk).await;
    assert_eq!(failed["status"], "ERROR");
    assert!(failed["logs"][0].as_str().unwrap().contains("fault"));
    let canceled = emulator.push(&job, &chunk).await;
    assert_eq!(canceled["status"], "CANCELED");
    assert!(!canceled["logs"].as_array().unwrap().is_empty());
    let done = emulator.push(&job, &chunk).await;
    assert_eq!(done["status"], "DONE");
    assert_eq!(rows(&emulator.table("t").await), strings(&[&["1"]]));
    emulator.stop().await;
}

#[tokio::test]
async fn awkward_values_round_trip_exactly() {
    let emulator = spawn_emulator(config()).await;
    let job = json!({
        "targetName": "Straße", "type": "DELTA", "fileType": "CSV", "keys": ["nr"],
        "csvParsingOptions": {"separatorSequence": ";", "quoteSequence": "\"", "escapeSequence": "\"", "lineEnding": "\r\n"}
    });
    let csv = "nr;name;note\r\n007;Müller;\"say \"\"hi\"\";\r\nnew line\"\r\n0042;Ærø;a,b\r\n";
    let finished = emulator.push(&job, &[("upserted", csv)]).await;
    assert_eq!(finished["status"], "DONE", "{finished}");
    let table = emulator.table("straße").await;
    assert_eq!(
        rows(&table),
        strings(&[
            &["007", "Müller", "say \"hi\";\r\nnew line"],
            &["0042", "Ærø", "a,b"],
        ])
    );
    let jobs = emulator.jobs().await;
    assert_eq!(jobs[0]["chunks"][0]["content"], csv);
    emulator.stop().await;
}

#[tokio::test]
async fn query_reads_a_file_database_the_emulator_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("emulator.db");
    let emulator = spawn_emulator(EmulatorConfig {
        database: Some(path.clone()),
        ..config()
    })
    .await;
    let finished = emulator
        .push(
            &csv_job("Orders", "REPLACE", None),
            &[("upserted", "id,amount\n01,9.50\n")],
        )
        .await;
    assert_eq!(finished["status"], "DONE");
    emulator.stop().await;

    let rows = tokio::task::spawn_blocking(move || {
        weir::emulator::query(&path, "SELECT id, amount FROM orders")
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], "01");
    assert_eq!(rows[0]["amount"], "9.50");
}

#[tokio::test]
async fn inspecting_a_missing_table_answers_404() {
    let emulator = spawn_emulator(config()).await;
    let response = emulator
        .client
        .get(emulator.url("/emulator/tables/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.json::<Value>().await.is_ok());
    emulator.stop().await;
}

#[tokio::test]
async fn duplicate_removal_column_on_execute_keeps_the_latest_row_per_key() {
    let emulator = spawn_emulator(config()).await;
    let created = emulator
        .create(&csv_job("events", "DELTA", Some(&["id"])))
        .await;
    let id = created["id"].as_str().unwrap();
    emulator
        .upload(id, "upserted", "id,seq,v\n1,2,second\n1,1,first\n")
        .await;
    let url = format!("{}?duplicateRemovalColumn=seq", emulator.job_url(id));
    let response = emulator.post(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let finished = emulator.wait_until_finished(id).await;
    assert_eq!(finished["status"], "DONE", "{finished}");
    assert_eq!(
        rows(&emulator.table("events").await),
        strings(&[&["1", "2", "second"]])
    );
    emulator.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_jobs_without_waiting_out_their_delays() {
    let emulator = spawn_emulator(EmulatorConfig {
        step_delay: Duration::from_secs(60),
        ..config()
    })
    .await;
    let created = emulator.create(&csv_job("t", "DELTA", None)).await;
    let id = created["id"].as_str().unwrap();
    emulator.upload(id, "upserted", "a\n1\n").await;
    assert_eq!(emulator.execute(id).await.status(), StatusCode::OK);
    assert_eq!(emulator.job(id).await["status"], "QUEUED");
    // stop() fails unless serve returns, with its job task done, within the 5 s deadline.
    emulator.stop().await;
}

#[tokio::test]
async fn executes_over_the_per_second_limit_get_429_for_about_a_second() {
    let emulator = spawn_emulator(EmulatorConfig {
        jobs_per_second: 1,
        ..config()
    })
    .await;
    let first = emulator.create(&csv_job("a", "DELTA", None)).await;
    let second = emulator.create(&csv_job("b", "DELTA", None)).await;
    let first = first["id"].as_str().unwrap();
    let second = second["id"].as_str().unwrap();
    assert_eq!(emulator.execute(first).await.status(), StatusCode::OK);
    let limited = emulator.execute(second).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "1");
    emulator.stop().await;
}

/// A CSV job for `target` with a `tableSchema` of (name, type, fieldLength) columns and extra fields.
fn typed_job(
    target: &str,
    kind: &str,
    keys: Option<&[&str]>,
    columns: &[(&str, &str, u64)],
    extra: Value,
) -> Value {
    let columns: Vec<Value> = columns
        .iter()
        .map(|(name, kind, length)| {
            json!({"columnName": name, "columnType": kind, "fieldLength": length, "decimals": 0, "pkField": false})
        })
        .collect();
    let mut job = csv_job(target, kind, keys);
    job["tableSchema"] = json!({"tableName": target, "columns": columns});
    if let Value::Object(extra) = extra {
        for (name, value) in extra {
            job[name] = value;
        }
    }
    job
}

fn schema_of(table: &Value) -> Vec<(String, String, Value)> {
    table["schema"]
        .as_array()
        .expect("schema")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["type"].as_str().unwrap().to_owned(),
                c["length"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_table_schema_gives_typed_sqlite_columns_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("emulator.db");
    let emulator = spawn_emulator(EmulatorConfig {
        database: Some(path.clone()),
        ..config()
    })
    .await;
    let job = typed_job(
        "Orders",
        "REPLACE",
        None,
        &[
            ("id", "INTEGER", 0),
            ("amount", "FLOAT", 0),
            ("paid", "BOOLEAN", 0),
            ("day", "DATE", 0),
            ("at", "DATETIME", 0),
            ("name", "STRING", 20),
        ],
        json!({"csvParsingOptions": {
            "separatorSequence": ";", "decimalSeparator": ",", "thousandSeparator": ".",
            "dateFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
            "additionalColumnOptions": [{"columnName": "day", "dateFormat": "dd.MM.yyyy"}]}}),
    );
    let finished = emulator
        .push(
            &job,
            &[(
                "upserted",
                "id;amount;paid;day;at;name\n007;1.234,5;true;01.03.2024;2024-03-01T13:45:00.250+02:00;Ann\n2;;false;;;\n",
            )],
        )
        .await;
    assert_eq!(finished["status"], "DONE", "{finished}");
    let table = emulator.table("orders").await;
    assert_eq!(
        schema_of(&table),
        vec![
            ("id".into(), "INTEGER".into(), Value::Null),
            ("amount".into(), "FLOAT".into(), Value::Null),
            ("paid".into(), "BOOLEAN".into(), Value::Null),
            ("day".into(), "DATE".into(), Value::Null),
            ("at".into(), "DATETIME".into(), Value::Null),
            ("name".into(), "STRING".into(), json!(20)),
        ]
    );
    assert_eq!(
        rows(&table),
        vec![
            vec![
                json!(7),
                json!(1234.5),
                json!(true),
                json!("2024-03-01"),
                json!("2024-03-01T11:45:00.250Z"),
                json!("Ann")
            ],
            vec![
                json!(2),
                Value::Null,
                json!(false),
                Value::Null,
                Value::Null,
                json!("")
            ],
        ]
    );
    emulator.stop().await;

    let database = path.clone();
    let stored = tokio::task::spawn_blocking(move || {
        weir::emulator::query(
            &database,
            "SELECT typeof(id) AS id, typeof(amount) AS amount, typeof(paid) AS paid, paid AS p, typeof(day) AS day FROM Orders ORDER BY rowid LIMIT 1",
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(stored[0]["id"], "integer");
    assert_eq!(stored[0]["amount"], "real");
    assert_eq!(stored[0]["paid"], "integer");
    assert_eq!(stored[0]["p"], 1);
    assert_eq!(stored[0]["day"], "text");
    let declared = tokio::task::spawn_blocking(move || {
        weir::emulator::query(&path, "SELECT name, type FROM pragma_table_info('Orders')")
    })
    .await
    .unwrap()
    .unwrap();
    let declared: Vec<(&str, &str)> = declared
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        declared,
        [
            ("id", "INTEGER"),
            ("amount", "FLOAT"),
            ("paid", "BOOLEAN"),
            ("day", "DATE"),
            ("at", "DATETIME"),
            ("name", "VARCHAR(20)")
        ]
    );
}

#[tokio::test]
async fn a_long_string_without_a_schema_is_cropped_to_80_characters_with_a_log_line() {
    let emulator = spawn_emulator(config()).await;
    let long: String = "ä".repeat(199) + "z";
    let csv = format!("id,Name\n1,{long}\n2,{long}\n3,short\n");
    let finished = emulator
        .push(&csv_job("People", "REPLACE", None), &[("upserted", &csv)])
        .await;
    assert_eq!(finished["status"], "DONE", "{finished}");
    let logs = finished["logs"].as_array().unwrap();
    assert!(
        logs.iter().any(|l| l
            .as_str()
            .unwrap()
            .contains("value cropped to 80 characters in column Name (2 values)")),
        "{finished}"
    );
    let table = emulator.table("people").await;
    assert_eq!(
        schema_of(&table)[1],
        ("Name".into(), "STRING".into(), json!(80))
    );
    assert_eq!(rows(&table)[0][1], json!("ä".repeat(80)));
    assert_eq!(rows(&table)[2][1], json!("short"));
    emulator.stop().await;
}

#[tokio::test]
async fn a_300_character_string_survives_in_a_string_column_of_length_400() {
    let emulator = spawn_emulator(config()).await;
    let long = "x".repeat(300);
    let job = typed_job(
        "Notes",
        "REPLACE",
        None,
        &[("text", "STRING", 400)],
        json!({}),
    );
    let finished = emulator
        .push(&job, &[("upserted", &format!("text\n{long}\n"))])
        .await;
    assert_eq!(finished["status"], "DONE", "{finished}");
    assert_eq!(finished["logs"].as_array().unwrap().len(), 1, "{finished}");
    assert_eq!(
        rows(&emulator.table("notes").await),
        vec![vec![json!(long)]]
    );
    emulator.stop().await;
}

#[tokio::test]
async fn a_value_that_does_not_parse_ends_the_job_in_error_naming_the_row_and_the_column() {
    let emulator = spawn_emulator(config()).await;
    let job = typed_job(
        "Sales",
        "REPLACE",
        None,
        &[("qty", "INTEGER", 0)],
        json!({}),
    );
    let finished = emulator
        .push(&job, &[("upserted", "id,qty\n1,3\n2,three\n")])
        .await;
    assert_eq!(finished["status"], "ERROR");
    let log = finished["logs"][0].as_str().unwrap();
    assert!(log.contains("chunk 1, row 2, column qty"), "{log}");
    assert!(log.contains("INTEGER"), "{log}");
    // Nothing of the failed job is applied.
    let response = emulator
        .client
        .get(emulator.url("/emulator/tables/sales"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    emulator.stop().await;
}

#[tokio::test]
async fn a_delta_job_whose_schema_contradicts_the_table_ends_in_error() {
    let emulator = spawn_emulator(config()).await;
    let first = typed_job(
        "Stock",
        "REPLACE",
        None,
        &[("qty", "INTEGER", 0)],
        json!({}),
    );
    assert_eq!(
        emulator.push(&first, &[("upserted", "qty\n1\n")]).await["status"],
        "DONE"
    );
    let later = typed_job("stock", "DELTA", None, &[("qty", "STRING", 80)], json!({}));
    let finished = emulator.push(&later, &[("upserted", "qty\n2\n")]).await;
    assert_eq!(finished["status"], "ERROR");
    let log = finished["logs"][0].as_str().unwrap();
    assert!(
        log.contains("column qty of table Stock is INTEGER"),
        "{log}"
    );
    // A DELTA job without a schema keeps the INTEGER type.
    let plain = emulator
        .push(
            &csv_job("stock", "DELTA", None),
            &[("upserted", "qty\n5\n")],
        )
        .await;
    assert_eq!(plain["status"], "DONE", "{plain}");
    assert_eq!(
        rows(&emulator.table("stock").await),
        vec![vec![json!(1)], vec![json!(5)]]
    );
    emulator.stop().await;
}

#[tokio::test]
async fn tables_are_identified_by_connection_and_case_insensitive_target_name() {
    let emulator = spawn_emulator(config()).await;
    let mut in_a = csv_job("Orders", "DELTA", None);
    in_a["connectionId"] = json!("conn-a");
    let mut in_a_upper = csv_job("ORDERS", "DELTA", None);
    in_a_upper["connectionId"] = json!("CONN-A");
    let mut in_b = csv_job("orders", "DELTA", None);
    in_b["connectionId"] = json!("conn-b");
    for (job, value) in [(&in_a, "a1"), (&in_a_upper, "a2"), (&in_b, "b1")] {
        let finished = emulator
            .push(job, &[("upserted", &format!("v\n{value}\n"))])
            .await;
        assert_eq!(finished["status"], "DONE", "{finished}");
    }
    let a: Value = emulator
        .table_in("conn-a", "orders")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rows(&a), strings(&[&["a1"], &["a2"]]));
    let b: Value = emulator
        .table_in("Conn-B", "ORDERS")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rows(&b), strings(&[&["b1"]]));
    // The pool's global schema has no such table.
    let global = emulator
        .client
        .get(emulator.url("/emulator/tables/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(global.status(), StatusCode::NOT_FOUND);
    emulator.stop().await;
}

#[tokio::test]
async fn a_delete_chunk_removes_the_rows_its_typed_keys_name() {
    let emulator = spawn_emulator(config()).await;
    let job = typed_job(
        "Cases",
        "DELTA",
        Some(&["id"]),
        &[("id", "INTEGER", 0)],
        json!({}),
    );
    emulator
        .push(&job, &[("upserted", "id,v\n1,a\n2,b\n3,c\n")])
        .await;
    // "01" is the INTEGER 1: typed keys match by value, not by text.
    let finished = emulator
        .push(
            &csv_job("cases", "DELTA", Some(&["id"])),
            &[("deleted", "id\n01\n3\n9\n")],
        )
        .await;
    assert_eq!(finished["status"], "DONE", "{finished}");
    assert!(
        finished["logs"][0]
            .as_str()
            .unwrap()
            .contains("2 rows deleted"),
        "{finished}"
    );
    assert_eq!(
        rows(&emulator.table("cases").await),
        vec![vec![json!(2), json!("b")]]
    );
    emulator.stop().await;
}

#[tokio::test]
async fn a_replace_job_with_a_delete_chunk_ends_in_error_with_delete_only_possible_for_delta() {
    let emulator = spawn_emulator(config()).await;
    let finished = emulator
        .push(
            &csv_job("t", "REPLACE", Some(&["id"])),
            &[("upserted", "id\n1\n"), ("deleted", "id\n1\n")],
        )
        .await;
    assert_eq!(finished["status"], "ERROR");
    assert!(
        finished["logs"][0]
            .as_str()
            .unwrap()
            .contains("DELETE_ONLY_POSSIBLE_FOR_DELTA"),
        "{finished}"
    );
    emulator.stop().await;
}

#[tokio::test]
async fn nullification_replaces_whole_rows_and_unchanged_metadata_merges_the_supplied_columns() {
    let emulator = spawn_emulator(config()).await;
    let base = "id,a,b\n1,x,y\n2,x,y\n";
    emulator
        .push(&csv_job("Merge", "REPLACE", None), &[("upserted", base)])
        .await;
    let mut nullify = csv_job("merge", "DELTA", Some(&["id"]));
    nullify["upsertStrategy"] = json!("UPSERT_WITH_NULLIFICATION");
    let mut merge = csv_job("merge", "DELTA", Some(&["id"]));
    merge["upsertStrategy"] = json!("UPSERT_WITH_UNCHANGED_METADATA");
    emulator
        .push(&nullify, &[("upserted", "id,a\n1,new\n")])
        .await;
    emulator
        .push(&merge, &[("upserted", "id,a\n2,new\n")])
        .await;
    // No strategy behaves as UNCHANGED_METADATA (the emulator's assumption).
    emulator
        .push(
            &csv_job("merge", "DELTA", Some(&["id"])),
            &[("upserted", "id,b\n2,z\n")],
        )
        .await;
    assert_eq!(
        rows(&emulator.table("merge").await),
        vec![
            vec![json!("1"), json!("new"), Value::Null],
            vec![json!("2"), json!("new"), json!("z")],
        ]
    );
    emulator.stop().await;
}

#[tokio::test]
async fn duplicate_removal_column_keeps_the_greatest_numeric_value_across_chunks_and_without_it_the_last_row_wins()
 {
    let emulator = spawn_emulator(config()).await;
    let job = typed_job(
        "Events",
        "DELTA",
        Some(&["id"]),
        &[("seq", "INTEGER", 0)],
        json!({}),
    );
    let finished = emulator
        .push_bytes(
            &job,
            vec![
                ("upserted", b"id,seq,v\n1,9,nine\n2,1,b\n".to_vec()),
                ("upserted", b"id,seq,v\n1,10,ten\n1,2,two\n".to_vec()),
            ],
            "?duplicateRemovalColumn=seq",
        )
        .await;
    assert_eq!(finished["status"], "DONE", "{finished}");
    assert_eq!(
        rows(&emulator.table("events").await),
        vec![
            vec![json!("1"), json!(10), json!("ten")],
            vec![json!("2"), json!(1), json!("b")]
        ]
    );
    let finished = emulator
        .push(
            &csv_job("events", "DELTA", Some(&["id"])),
            &[
                ("upserted", "id,seq,v\n3,5,first\n"),
                ("upserted", "id,seq,v\n3,1,last\n"),
            ],
        )
        .await;
    assert_eq!(finished["status"], "DONE", "{finished}");
    assert_eq!(
        rows(&emulator.table("events").await)[2],
        vec![json!("3"), json!(1), json!("last")]
    );
    emulator.stop().await;
}

/// A Parquet file as pyarrow writes it for pycelonis: snappy, INT96 timestamps.
fn parquet_file() -> Vec<u8> {
    use std::sync::Arc;

    use parquet::basic::Compression;
    use parquet::data_type::{
        BoolType, ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type, Int96, Int96Type,
    };
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let schema = Arc::new(
        parse_message_type(
            "message schema {
                REQUIRED INT64 id;
                REQUIRED DOUBLE amount;
                REQUIRED BOOLEAN paid;
                REQUIRED INT32 day (DATE);
                REQUIRED INT96 at;
                REQUIRED BYTE_ARRAY name (UTF8);
            }",
        )
        .unwrap(),
    );
    let properties = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    // 2024-03-01T11:45:00.250Z: Julian day 2460371, nanoseconds of the day.
    let nanos: u64 = (11 * 3600 + 45 * 60) * 1_000_000_000 + 250_000_000;
    let mut at = Int96::new();
    at.set_data(nanos as u32, (nanos >> 32) as u32, 2_460_371);
    let mut bytes = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut bytes, schema, properties).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut index = 0;
    while let Some(mut column) = group.next_column().unwrap() {
        match index {
            0 => column.typed::<Int64Type>().write_batch(&[7, 2], None, None),
            1 => column
                .typed::<DoubleType>()
                .write_batch(&[1234.5, 0.25], None, None),
            2 => column
                .typed::<BoolType>()
                .write_batch(&[true, false], None, None),
            3 => column
                .typed::<Int32Type>()
                .write_batch(&[19_783, 0], None, None),
            4 => column
                .typed::<Int96Type>()
                .write_batch(&[at, at], None, None),
            _ => column.typed::<ByteArrayType>().write_batch(
                &[ByteArray::from("Ann"), ByteArray::from("Bob")],
                None,
                None,
            ),
        }
        .unwrap();
        column.close().unwrap();
        index += 1;
    }
    group.close().unwrap();
    writer.close().unwrap();
    bytes
}

#[tokio::test]
async fn parquet_and_csv_of_the_same_rows_give_the_same_table() {
    let emulator = spawn_emulator(config()).await;
    let parquet_job = json!({"targetName": "FromParquet", "type": "REPLACE", "dataPoolId": POOL});
    let finished = emulator
        .push_bytes(&parquet_job, vec![("upserted", parquet_file())], "")
        .await;
    assert_eq!(finished["status"], "DONE", "{finished}");
    let csv = typed_job(
        "FromCsv",
        "REPLACE",
        None,
        &[
            ("id", "INTEGER", 0),
            ("amount", "FLOAT", 0),
            ("paid", "BOOLEAN", 0),
            ("day", "DATE", 0),
            ("at", "DATETIME", 0),
            ("name", "STRING", 80),
        ],
        json!({}),
    );
    let finished = emulator
        .push(
            &csv,
            &[(
                "upserted",
                "id,amount,paid,day,at,name\n7,1234.5,true,2024-03-01,2024-03-01T13:45:00.250+02:00,Ann\n2,0.25,false,1970-01-01,2024-03-01T11:45:00.250Z,Bob\n",
            )],
        )
        .await;
    assert_eq!(finished["status"], "DONE", "{finished}");
    let from_parquet = emulator.table("fromparquet").await;
    let from_csv = emulator.table("fromcsv").await;
    assert_eq!(from_parquet["schema"], from_csv["schema"]);
    assert_eq!(from_parquet["rows"], from_csv["rows"]);
    assert_eq!(
        rows(&from_parquet)[0],
        vec![
            json!(7),
            json!(1234.5),
            json!(true),
            json!("2024-03-01"),
            json!("2024-03-01T11:45:00.250Z"),
            json!("Ann")
        ]
    );
    emulator.stop().await;
}

#[tokio::test]
async fn a_database_written_before_typed_columns_keeps_its_rows_and_takes_new_jobs() {
    // The layout an older emulator wrote: one table per target, every column TEXT.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("emulator.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE \"Orders\" (\"id\" TEXT, \"note\" TEXT);
             INSERT INTO \"Orders\" VALUES ('1', 'kept');
             INSERT INTO \"Orders\" VALUES ('2', '{}');",
            "l".repeat(100)
        ))
        .unwrap();
    }
    let emulator = spawn_emulator(EmulatorConfig {
        database: Some(path),
        ..config()
    })
    .await;
    let finished = emulator
        .push(
            &csv_job("orders", "DELTA", Some(&["id"])),
            &[("upserted", "id,extra\n2,new\n")],
        )
        .await;
    assert_eq!(finished["status"], "DONE", "{finished}");
    let table = emulator.table("ORDERS").await;
    assert_eq!(
        schema_of(&table),
        vec![
            ("id".into(), "STRING".into(), Value::Null),
            ("note".into(), "STRING".into(), Value::Null),
            ("extra".into(), "STRING".into(), json!(80)),
        ]
    );
    assert_eq!(
        rows(&table),
        vec![
            vec![json!("1"), json!("kept"), Value::Null],
            vec![json!("2"), json!("l".repeat(100)), json!("new")],
        ]
    );
    emulator.stop().await;
}
