//! Pseudonymisation: a personal field's clear value is in no byte weir writes (spool
//! segments, the dead-letter file, its logs at trace level) and in no request it sends;
//! the sink gets the stable HMAC token instead, and a dry run shows only the token.

use hmac::{KeyInit, Mac};
use weir::emulator::EmulatorConfig;

use crate::crash::Weir;
use crate::helpers::{spawn_emulator, wait_until};

const EMAIL: &str = "alice.liddell@wonderland.example";
const NAME: &str = "Alice Pleasance Liddell";
const KEY: &str = "a-pseudonymisation-key-of-32-chars";

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn a_pseudonymised_value_is_in_no_byte_weir_writes_or_sends() {
    let dir = tempfile::tempdir().unwrap();
    let emulator_dir = dir.path().join("emulator");
    std::fs::create_dir_all(&emulator_dir).unwrap();
    let emu = spawn_emulator(EmulatorConfig {
        database: Some(emulator_dir.join("tables.db")),
        ..EmulatorConfig::default()
    })
    .await;
    // Row 2's Status makes its job fail for its data: isolation moves it to the
    // dead-letter file, with its email.
    emu.fault(serde_json::json!({"bad_value": "BROKEN"})).await;
    let data = dir.path().join("data");
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "{data}"

[server]
listen = "127.0.0.1:0"

[[pipelines]]
name = "orders"
queue = {{ kind = "disk" }}
schedule = "1h"
retry_initial = "50ms"
retry_max_interval = "100ms"

[admin]
listen = "127.0.0.1:0"
[[admin.tokens]]
token = "write-token-0123456789"
scope = "write"

[[pipelines.pseudonymise]]
fields = ["customer.email"]
key = "{KEY}"
[[pipelines.pseudonymise]]
fields = ["customer.name"]
method = "mask"

[pipelines.sink]
kind = "celonis"
url = "{url}"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "orders"
keys = ["customer.email"]
app_key = "test-key"
"#,
            data = data.display(),
            url = emu.base,
        ),
    )
    .unwrap();
    let weir = Weir::start_logging(&config, "trace");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let row = |status: &str| {
        format!(
            r#"{{"OrderId":"0145632053","Status":"{status}","customer":{{"email":"{EMAIL}","name":"{NAME}"}}}}"#
        )
    };

    // The dry run shows the token, never the clear value.
    let dry = client
        .post(format!("{}/hooks/orders?dry_run=true", weir.base))
        .header("content-type", "application/json")
        .body(row("new"))
        .send()
        .await
        .unwrap();
    assert_eq!(dry.status(), 200);
    let dry = dry.text().await.unwrap();
    assert!(!dry.contains(EMAIL) && !dry.contains(NAME), "{dry}");

    for status in ["new", "BROKEN"] {
        let resp = client
            .post(format!("{}/hooks/orders", weir.base))
            .header("content-type", "application/json")
            .body(row(status))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        // Separate runs: the second row is refused alone and dead-lettered.
        let flush = client
            .post(format!(
                "{}/admin/pipelines/orders/flush",
                weir.admin.as_ref().unwrap()
            ))
            .bearer_auth("write-token-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(flush.status(), 200);
    }
    let dead_letter = data.join("orders/dead-letter.csv");
    wait_until(20, "the refused row in the dead-letter file", || {
        let path = dead_letter.clone();
        async move { path.exists() }
    })
    .await;

    // The sink got the HMAC-SHA256 token of the email and the mask of the name.
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(EMAIL.as_bytes());
    let token = hex::encode(mac.finalize().into_bytes());
    let table = emu.table("orders").await;
    assert_eq!(table.len(), 1, "{table:?}");
    assert_eq!(table[0]["customer.email"], token.as_str());
    assert_eq!(table[0]["customer.name"], "*****");
    let dead = std::fs::read_to_string(&dead_letter).unwrap();
    assert!(
        dead.contains(&token),
        "the dead letter holds the token: {dead}"
    );

    let log_lines = weir.logs.clone();
    assert!(weir.terminate().success());
    let logs = log_lines.lock().unwrap().join("\n");
    assert!(
        logs.lines().count() > 50,
        "trace logging was on: {} lines",
        logs.lines().count()
    );
    for secret in [EMAIL, NAME] {
        assert!(!contains(logs.as_bytes(), secret), "the logs hold {secret}");
        let mut written = files(&data);
        written.extend(files(&emulator_dir));
        assert!(
            written
                .iter()
                .any(|p| p.to_string_lossy().contains("segment")
                    || p.extension().is_some_and(|e| e == "seg")),
            "the spool wrote segments: {written:?}"
        );
        for path in written {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !contains(&bytes, secret),
                "{} holds {secret}",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn a_schema_mismatch_of_a_pseudonymised_field_does_not_quote_its_value() {
    let app = crate::helpers::spawn_app(&crate::helpers::pipeline_config(
        "127.0.0.1:0",
        &format!(
            r#"
[pipelines.schema]
fields = {{ "customer.email" = "string" }}
[pipelines.pseudonymise]
fields = ["customer.email"]
key = "{KEY}"
"#
        ),
    ))
    .await;
    let body = r#"{"customer": {"email": 4711.0815}}"#;
    let resp = app.post_json("orders", body).await;
    assert_eq!(resp.status(), 422);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("field \\\"customer.email\\\" is not a string (the value is not shown: the field is pseudonymised)"),
        "{text}"
    );
    assert!(!text.contains("4711.0815"), "{text}");
    let dry = app
        .post(
            "/hooks/orders?dry_run=true",
            "application/json",
            body.to_owned(),
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(!dry.contains("4711.0815"), "{dry}");
    app.shutdown().await;
}
