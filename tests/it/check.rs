//! `weir check` and the CLI, run as the real binary.

use std::process::Command;

fn weir() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.env_remove("WEIR_CONFIG").env_remove("RUST_LOG");
    c
}

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_prints_resolved_settings_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        &(crate::helpers::pipeline_config("127.0.0.1:8080", "allow_ips = [\"10.0.0.0/8\"]")
            .replace("\"test-key\"", "\"${APP_KEY}\"")
            + "\n[admin]\n[[admin.tokens]]\nname = \"ops\"\ntoken = \"admin-secret-0123456789\"\nscope = \"write\"\n"),
    );
    let out = weir()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .env("APP_KEY", "very-secret-value")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("pipeline orders:"), "{stdout}");
    assert!(stdout.contains("allow_ips: 10.0.0.0/8"), "{stdout}");
    assert!(stdout.contains("AppKey ***"), "{stdout}");
    assert!(
        stdout.contains("admin: listen 127.0.0.1:9090, tokens: ops (Write) ***"),
        "{stdout}"
    );
    assert!(!stdout.contains("admin-secret-0123456789"), "{stdout}");
    assert!(!stdout.contains("very-secret-value"), "{stdout}");
}

#[test]
fn check_names_the_key_path_and_value_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let text = crate::helpers::pipeline_config("127.0.0.1:8080", "")
        + "\n[[pipelines]]\nname = \"b\"\nallow_ips = [\"10.0.0.0/33\"]\n[pipelines.sink]\nkind = \"celonis\"\nurl = \"http://x\"\ndata_pool_id = \"p\"\ntarget_name = \"t\"\napp_key = \"${MISSING_KEY}\"\n";
    let path = write(&dir, &text);
    let out = weir()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pipelines[1].allow_ips[0]: \"10.0.0.0/33\" is not a CIDR"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pipelines[1].sink.app_key: environment variable MISSING_KEY is not set"),
        "{stderr}"
    );
}

#[test]
fn check_reports_unknown_keys_and_syntax_errors_with_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[server]\nlisten = \"127.0.0.1:1\"\nmax_body = 5\n");
    let out = weir().args(["check", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown field `max_body`") && stderr.contains("line 3"),
        "{stderr}"
    );
}

#[test]
fn check_reads_weir_config_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, &crate::helpers::pipeline_config("127.0.0.1:8080", ""));
    let out = weir()
        .arg("check")
        .env("WEIR_CONFIG", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_shipped_config_is_valid_with_no_environment() {
    let out = weir()
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/weir.toml"),
        ])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_verb_has_help_and_there_is_a_version() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["check", "--help"],
        &["--version"],
    ] {
        let out = weir().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn check_reports_a_bad_cel_expression_at_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        &crate::helpers::pipeline_config(
            "127.0.0.1:8080",
            "filter = \"row.EntityName == \"\n[[pipelines.columns]]\nname = \"A\"\nexpr = \"row.a.upperAscii(\"",
        ),
    );
    let out = weir().args(["check", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pipelines[0].filter: not a CEL expression"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pipelines[0].columns[0].expr: not a CEL expression"),
        "{stderr}"
    );
}

#[test]
fn logs_to_a_file_or_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    // The emulator starts (and logs), then binding the taken ingest port fails: weir exits.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = format!(
        "[server]\nlisten = \"{}\"\n[emulator]\nlisten = \"127.0.0.1:0\"\n",
        taken.local_addr().unwrap()
    );
    let path = write(&dir, &text);
    let out = weir()
        .arg("serve")
        .arg("-c")
        .arg(&path)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("data push emulator started"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

#[tokio::test]
async fn check_with_a_sample_prints_the_same_json_as_a_dry_run_request() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "data_dir = \"{}\"\n{}",
        dir.path().join("data").display(),
        crate::helpers::pipeline_config(
            "127.0.0.1:0",
            "[pipelines.schema]\non_mismatch = \"ignore\"\nfields = { OrderId = \"string\", Quantity = \"integer\" }",
        )
    );
    let path = write(&dir, &config);
    let body = r#"[{"OrderId":"007","Quantity":2},{"OrderId":"008","Quantity":"x"}]"#;
    let sample = dir.path().join("payload.json");
    std::fs::write(&sample, body).unwrap();
    let out = weir()
        .args(["check", "-c"])
        .arg(&path)
        .arg("--sample")
        .arg(&sample)
        .args(["-p", "orders"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\n  \"rows\": ["), "pretty JSON: {stdout}");
    let offline: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        offline["csv"],
        serde_json::json!(["OrderId,Quantity\n007,2\n"])
    );

    let app = crate::helpers::spawn_app(&config).await;
    let resp = app
        .post("/hooks/orders?dry_run=true", "application/json", body)
        .await;
    let (status, online) = crate::helpers::status_and_json(resp).await;
    assert_eq!(status, 200);
    assert_eq!(offline, online);

    let out = weir()
        .args(["check", "-c"])
        .arg(&path)
        .arg("--sample")
        .arg(&sample)
        .args(["-p", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no pipeline is named \"nope\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
