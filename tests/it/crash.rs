//! The disk spool's promise, tested on the real binary: every row that got a 202 survives a
//! SIGKILL and is delivered exactly once per key, in order.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir::emulator::EmulatorConfig;

use crate::helpers::{TestEmulator, spawn_emulator, wait_until};

/// The real `weir serve`, with the addresses it bound read from its JSON log.
pub(crate) struct Weir {
    child: Child,
    pub base: String,
    /// The admin listener, when the config has one.
    pub admin: Option<String>,
    /// Every log line it wrote, in order.
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Weir {
    pub fn start(config: &std::path::Path) -> Weir {
        Weir::start_logging(config, "info")
    }

    /// `weir serve` with `RUST_LOG` set to `level`.
    pub fn start_logging(config: &std::path::Path, level: &str) -> Weir {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["--log-format", "json", "serve", "-c"])
            .arg(config)
            .env("RUST_LOG", level)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("weir starts");
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let lines = logs.clone();
        let reader = std::thread::spawn(move || {
            let mut admin = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let listen = v["fields"]["listen"].as_str().unwrap_or_default();
                    if v["fields"]["message"] == "admin api started" {
                        admin = Some(listen.to_owned());
                    }
                    if v["fields"]["message"] == "weir started" {
                        let _ = tx.send((listen.to_owned(), admin.clone()));
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (listen, admin) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addresses) => addresses,
            Err(e) => {
                // Once the process is gone the reader has every line it wrote.
                let _ = child.kill();
                let _ = child.wait();
                let _ = reader.join();
                let logs = logs.lock().unwrap();
                let tail = &logs[logs.len().saturating_sub(10)..];
                panic!(
                    "weir did not log its address ({e}); its last lines:\n{}",
                    tail.join("\n")
                );
            }
        };
        Weir {
            child,
            base: format!("http://{listen}"),
            admin: admin.map(|a| format!("http://{a}")),
            logs,
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        self.child.wait().unwrap()
    }

    /// SIGKILL, then waits for the process to be gone.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL sent");
        self.child.wait().unwrap();
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &std::path::Path, emu: &TestEmulator) -> std::path::PathBuf {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[pipelines]]
name = "orders"
queue_capacity = 100000
queue = {{ kind = "disk", dir = "{spool}", segment_bytes = "64KiB" }}
schedule = "1s"
max_rows_per_run = 200
retry_initial = "100ms"
retry_max_interval = "500ms"

[pipelines.sink]
kind = "celonis"
url = "{url}"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "orders"
keys = ["id"]
app_key = "test-key"
"#,
        spool = dir.join("spool").display(),
        url = emu.base,
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Posts rows `s{sender}-{n}` one at a time until a request gets no answer or `max` is
/// reached; returns the ids that got a 202, in the order they were sent.
async fn sender(base: String, sender: usize, max: usize, acked: Arc<Mutex<Vec<String>>>) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for n in 0..max {
        let id = format!("s{sender}-{n:05}");
        let sent = client
            .post(format!("{base}/hooks/orders"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"id":"{id}","sender":"{sender}"}}"#))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == 202 => acked.lock().unwrap().push(id),
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_that_got_a_202_survives_sigkill_and_is_delivered_once_in_order() {
    let emu = spawn_emulator(EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &emu);
    let acked = Arc::new(Mutex::new(Vec::new()));

    for round in 0..2 {
        let weir = Weir::start(&config);
        let senders: Vec<_> = (0..4)
            .map(|s| {
                tokio::spawn(sender(
                    weir.base.clone(),
                    round * 4 + s,
                    5_000,
                    acked.clone(),
                ))
            })
            .collect();
        let target = (round + 1) * 400;
        wait_until(30, "rows to be acknowledged", || async {
            acked.lock().unwrap().len() >= target
        })
        .await;
        weir.kill();
        for s in senders {
            s.await.unwrap();
        }
    }

    let weir = Weir::start(&config);
    let acked: Vec<String> = acked.lock().unwrap().clone();
    wait_until(60, "every acknowledged row in the table", || async {
        let ids = emu.column("orders", "id").await;
        let present: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        acked.iter().all(|id| present.contains(id.as_str()))
    })
    .await;
    drop(weir);

    let ids = emu.column("orders", "id").await;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *count.entry(id).or_default() += 1;
    }
    assert!(
        count.values().all(|&n| n == 1),
        "no key is in the table twice"
    );
    // Each sender's rows reached the table in the order it sent them.
    for s in 0..8 {
        let prefix = format!("s{s}-");
        let mine: Vec<&String> = ids.iter().filter(|id| id.starts_with(&prefix)).collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "sender {s} out of order: {mine:?}"
        );
    }
}

#[tokio::test]
async fn sigterm_stops_weir_gracefully_with_exit_0_and_no_row_is_lost() {
    let emu = spawn_emulator(EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &emu);
    let weir = Weir::start(&config);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = client
        .post(format!("{}/hooks/orders", weir.base))
        .header("content-type", "application/json")
        .body(r#"[{"id":"a"},{"id":"b"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let status = weir.terminate();
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    // The rows were on disk: the next start delivers them.
    let _weir = Weir::start(&config);
    wait_until(15, "the rows after the restart", || async {
        emu.column("orders", "id").await == ["a", "b"]
    })
    .await;
}
