//! The disk spool through the real app: a full spool answers 503 and keeps what it has; a
//! corrupt record never stops weir from starting, and every other row is still delivered.

use serde_json::json;
use weir::emulator::EmulatorConfig;
use weir::schedule::Outcome;

use crate::helpers::{delivery_config, spawn_app, spawn_emulator, status_and_json, wait_until};

fn spool_config(emu_base: &str, dir: &std::path::Path, queue_extra: &str) -> String {
    delivery_config(
        emu_base,
        &format!(
            "queue = {{ kind = \"disk\", dir = \"{}\"{queue_extra} }}",
            dir.display()
        ),
        "keys = [\"id\"]",
    )
}

#[tokio::test]
async fn a_full_spool_answers_503_and_keeps_every_accepted_row() {
    let emu = spawn_emulator(EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(&spool_config(
        &emu.base,
        dir.path(),
        ", max_bytes = \"4KiB\", segment_bytes = \"1KiB\"",
    ))
    .await;
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let id = format!("{i:04}");
        let resp = app
            .post_json(
                "orders",
                &json!({"id": id, "pad": "x".repeat(40)}).to_string(),
            )
            .await;
        if resp.status() == 202 {
            accepted.push(id);
        } else {
            refused = Some(resp);
            break;
        }
    }
    let resp = refused.expect("the 4 KiB spool filled up");
    assert!(resp.headers().contains_key("retry-after"));
    let (status, body) = status_and_json(resp).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("queue_full")),
        "{body}"
    );
    assert!(accepted.len() > 10, "{} rows fit", accepted.len());
    let run = app.app().flush("orders").await.unwrap();
    assert_eq!(run.outcome, Outcome::Delivered);
    assert_eq!(
        emu.column("orders", "id").await,
        accepted,
        "every accepted row, in order"
    );
    assert_eq!(
        app.post_json("orders", r#"{"id":"after"}"#).await.status(),
        202,
        "room again after delivery"
    );
}

#[tokio::test]
async fn a_corrupt_record_is_quarantined_and_weir_starts_and_delivers_the_rest() {
    let emu = spawn_emulator(EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = spool_config(&emu.base, dir.path(), "");
    let app = spawn_app(&config).await;
    let rows: Vec<_> = (0..20)
        .map(|i| json!({"id": format!("{i:02}"), "payload": "y".repeat(50)}))
        .collect();
    assert_eq!(
        app.post_json("orders", &json!(rows).to_string())
            .await
            .status(),
        202
    );
    app.shutdown().await;

    // Flip one byte in the middle of the segment: one record's body is now corrupt.
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment file");
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();

    let app = spawn_app(&config).await;
    let queued = app.queued("orders").await.len();
    assert_eq!(
        queued, 19,
        "exactly the corrupt record is gone from the queue"
    );
    let quarantine =
        std::fs::read_to_string(dir.path().join("quarantine.log")).expect("quarantine.log written");
    assert!(quarantine.contains("offset="), "{quarantine}");
    assert_eq!(
        app.app().flush("orders").await.unwrap().outcome,
        Outcome::Delivered
    );
    let ids = emu.column("orders", "id").await;
    assert_eq!(ids.len(), 19);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "the rest in order: {ids:?}"
    );
}

#[tokio::test]
async fn a_second_weir_on_the_same_spool_fails_at_start_naming_the_directory() {
    let emu = spawn_emulator(EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let config = spool_config(&emu.base, &spool, "");
    let app = spawn_app(&config).await;
    assert_eq!(app.post_json("orders", r#"{"id":"1"}"#).await.status(), 202);
    let segments_before = std::fs::read_dir(&spool).unwrap().count();

    let path = dir.path().join("weir.toml");
    std::fs::write(&path, &config).unwrap();
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "-c"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weir starts");
    let mut status = None;
    wait_until(20, "the second weir to exit", || {
        status = second.try_wait().expect("child state readable");
        std::future::ready(status.is_some())
    })
    .await;
    let status = status.expect("exited");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&spool.display().to_string()), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");

    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), segments_before);
    assert_eq!(
        app.queued("orders").await.len(),
        1,
        "the live spool is untouched"
    );
    assert_eq!(
        app.app().flush("orders").await.unwrap().outcome,
        Outcome::Delivered
    );
    assert_eq!(emu.column("orders", "id").await, ["1"]);
}
