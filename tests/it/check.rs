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
fn the_shipped_configs_are_valid_with_no_environment() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs = vec![root.join("config/weir.toml")];
    for entry in std::fs::read_dir(root.join("config/examples")).unwrap() {
        configs.push(entry.unwrap().path());
    }
    assert!(configs.len() >= 3, "{configs:?}");
    for config in configs {
        let out = weir()
            .args(["check", "-c"])
            .arg(&config)
            .env_clear()
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
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

/// The pool `delivery_config` pushes to.
const POOL: &str = "8f2c1f9e-0000-4000-8000-000000000001";

/// An emulator that knows one application key and one pool.
async fn emulator_with_one_pool() -> crate::helpers::TestEmulator {
    crate::helpers::spawn_emulator(weir::emulator::EmulatorConfig {
        app_keys: vec!["test-key".into()],
        pools: Some(vec![POOL.into()]),
        ..Default::default()
    })
    .await
}

/// Runs `weir check --online` on config text, off the runtime's thread (the emulator serves
/// on it) and within a deadline: the exit code and stdout.
async fn check_online(config: String) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, &config);
    let run = tokio::task::spawn_blocking(move || {
        weir()
            .args(["check", "--online", "-c"])
            .arg(&path)
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("weir check --online ends within its probe timeout")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("test-key") && !stderr.contains("test-key"));
    (out.status.code(), format!("{stdout}{stderr}"))
}

#[tokio::test]
async fn check_online_lists_the_pools_jobs_with_the_key_and_says_ok() {
    let emu = emulator_with_one_pool().await;
    let config = crate::helpers::delivery_config(&emu.base, "", "")
        + "\n[[pipelines]]\nname = \"audit\"\n[pipelines.sink]\nkind = \"http\"\nbase_url = \"http://127.0.0.1:9/audit\"\n";
    let (code, out) = check_online(config).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "online orders: ok: GET {}/integration/api/v1/data-push/{POOL}/jobs/ listed 0 jobs",
            emu.base
        )),
        "{out}"
    );
    assert!(
        out.contains("online audit: skipped: not a Celonis sink"),
        "{out}"
    );
    assert!(out.trim_end().ends_with(": ok"), "{out}");
}

#[tokio::test]
async fn check_online_says_a_refused_key_is_wrong_or_expired_and_exits_1() {
    let emu = emulator_with_one_pool().await;
    let config = crate::helpers::delivery_config(&emu.base, "", "")
        .replace("app_key = \"test-key\"", "app_key = \"wrong-key-0123\"");
    let (code, out) = check_online(config).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("online orders: FAILED: GET http://127.0.0.1:")
            && out.contains(
                "HTTP 401: the application key (app_key) was refused: it is wrong or expired"
            ),
        "{out}"
    );
    assert!(
        out.contains("1 of 1 pipelines failed the online check"),
        "{out}"
    );
    assert!(
        !out.contains("wrong-key-0123"),
        "the key is never printed: {out}"
    );
}

#[tokio::test]
async fn check_online_says_an_unknown_pool_does_not_exist_and_exits_1() {
    let emu = emulator_with_one_pool().await;
    let other = "8f2c1f9e-0000-4000-8000-00000000ffff";
    let config = crate::helpers::delivery_config(&emu.base, "", "").replace(POOL, other);
    let (code, out) = check_online(config).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "HTTP 404: data pool {other} does not exist in this team"
        )) && out.contains("check data_pool_id"),
        "{out}"
    );
}

#[tokio::test]
async fn check_online_says_a_token_without_the_data_push_scope_lacks_the_permission() {
    let emu = crate::helpers::spawn_emulator(weir::emulator::EmulatorConfig {
        oauth_clients: vec![("weir-client".into(), "s3cret-value".into())],
        pools: Some(vec![POOL.into()]),
        ..Default::default()
    })
    .await;
    let config = crate::helpers::delivery_config(&emu.base, "", "").replace(
        "app_key = \"test-key\"",
        "auth = { kind = \"oauth2\", client_id = \"weir-client\", client_secret = \"s3cret-value\", scopes = [\"studio\"] }",
    );
    let (code, out) = check_online(config).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "HTTP 403: the OAuth access token has no Data Push permission on data pool {POOL}"
        )) && out.contains("tick the Data Push API permission"),
        "{out}"
    );
    assert!(!out.contains("s3cret-value"), "{out}");
}

#[tokio::test]
async fn check_online_says_when_nothing_listens_and_when_tls_fails() {
    let emu = emulator_with_one_pool().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let https = emu.base.replace("http://", "https://");
    let config = crate::helpers::delivery_config(&format!("http://{closed}"), "", "")
        + &format!(
            "\n[[pipelines]]\nname = \"tls\"\n[pipelines.sink]\nkind = \"celonis\"\nurl = \"{https}\"\ndata_pool_id = \"{POOL}\"\ntarget_name = \"orders\"\napp_key = \"test-key\"\n"
        );
    let (code, out) = check_online(config).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "online orders: FAILED: GET http://{closed}/integration/api/v1/data-push/{POOL}/jobs/: connection refused: nothing listens at that address"
        )),
        "{out}"
    );
    assert!(out.contains("online tls: FAILED: GET https://"), "{out}");
    assert!(out.contains(": TLS failed: "), "{out}");
    assert!(
        out.contains("2 of 2 pipelines failed the online check"),
        "{out}"
    );
}
