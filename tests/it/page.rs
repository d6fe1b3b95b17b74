//! The status page: served without a token from the admin listener, with its strict
//! Content-Security-Policy, and the script and stylesheet it loads from the same listener; and
//! the page driven in a real browser (chromium through chromedriver).

use reqwest::Method;

use weir::emulator::EmulatorConfig;

use crate::helpers::{ADMIN, READ_TOKEN, WRITE_TOKEN, delivery_config, spawn_app, spawn_emulator};

#[tokio::test]
async fn the_status_page_is_served_without_a_token_under_a_strict_content_security_policy() {
    let app = spawn_app(&format!(
        "{ADMIN}\n{}",
        delivery_config("http://127.0.0.1:9", "", "")
    ))
    .await;
    for (path, kind, needle) in [
        ("/", "text/html", "/page.js"),
        ("/pipelines/orders", "text/html", "/page.css"),
        ("/page.js", "text/javascript", "Authorization"),
        ("/page.css", "text/css", ".state"),
    ] {
        let resp = app.admin(Method::GET, path, None).await;
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers().clone();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        let body = resp.text().await.unwrap();
        assert!(body.contains(needle), "{path} lacks {needle}");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
    }
    let html = app
        .admin(Method::GET, "/", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(!html.contains("<script>"), "no inline script");
    let js = app
        .admin(Method::GET, "/page.js", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(js.contains("sessionStorage") && !js.contains("document.cookie"));
    app.shutdown().await;
}

/// chromedriver on a free loopback port, killed when dropped; chromium's profile and
/// temporary files go to a directory removed with it.
struct Driver {
    child: std::process::Child,
    url: String,
    _tmp: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("chromedriver not found ({e}): install Debian's chromium and chromium-driver")
        });
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _tmp: tmp,
    }
}

/// Waits (bounded by fantoccini's 30 s default) for an element matching the XPath.
async fn until(c: &fantoccini::Client, xpath: &str) -> fantoccini::elements::Element {
    c.wait()
        .for_element(fantoccini::Locator::XPath(xpath))
        .await
        .unwrap_or_else(|e| panic!("the page never showed {xpath}: {e}"))
}

/// Types `token` into the sign-in form (emptied first) and submits it.
async fn sign_in(c: &fantoccini::Client, token: &str) {
    let field = c.find(fantoccini::Locator::Id("token")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(token).await.unwrap();
    c.find(fantoccini::Locator::Id("sign-in-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test]
async fn the_status_page_signs_in_counts_pauses_flushes_and_charts_in_a_real_browser() {
    use fantoccini::{ClientBuilder, Locator};
    let emu = spawn_emulator(EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..EmulatorConfig::default()
    })
    .await;
    let schema = "[pipelines.schema]\nrequired = [\"OrderId\"]\non_mismatch = \"ignore\"";
    let app = spawn_app(&format!(
        "{ADMIN}\n{}",
        delivery_config(&emu.base, schema, "")
    ))
    .await;
    let driver = start_driver();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"]}),
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let c = loop {
        match ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps.clone())
            .connect(&driver.url)
            .await
        {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("chromedriver at {} did not answer: {e}", driver.url)
            }
            // chromedriver is still starting: poll it, within the deadline.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };

    // A wrong token is told, not silently shown an empty page.
    c.goto(&app.admin_url("/")).await.unwrap();
    sign_in(&c, "not-a-token").await;
    until(&c, "//*[contains(text(), 'was not accepted')]").await;

    // The write token: the pipeline, ACTIVE, with its buttons.
    sign_in(&c, WRITE_TOKEN).await;
    until(
        &c,
        "//*[@data-pipeline='orders']//*[@data-field='state' and text()='ACTIVE']",
    )
    .await;

    // Rows posted by a sender show in the accepted counter without a reload.
    let resp = app
        .post_json(
            "orders",
            r#"[{"OrderId":"1"},{"OrderId":"2"},{"OrderId":"3"}]"#,
        )
        .await;
    assert_eq!(resp.status(), 202);
    until(
        &c,
        "//*[@data-pipeline='orders']//*[@data-counter='accepted' and normalize-space(text())='3']",
    )
    .await;

    // Pause, then resume.
    for (action, state) in [("pause", "PAUSED"), ("resume", "ACTIVE")] {
        c.find(Locator::Css(&format!(
            "[data-pipeline=orders] [data-action={action}]"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
        until(
            &c,
            &format!("//*[@data-pipeline='orders']//*[@data-field='state' and text()='{state}']"),
        )
        .await;
    }

    // Flush: the run's job id shows in the last runs, and it is the emulator's job.
    c.find(Locator::Css("[data-pipeline=orders] [data-action=flush]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let cell = until(
        &c,
        "//*[@data-pipeline='orders']//td[contains(@class, 'job') and text()!='—']",
    )
    .await;
    let jobs = emu.jobs().await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        cell.text().await.unwrap(),
        jobs[0]["id"].as_str().unwrap(),
        "the last run's job id"
    );
    until(
        &c,
        "//*[@data-pipeline='orders']//*[@data-counter='delivered' and normalize-space(text())='3']",
    )
    .await;

    // The chart's accepted line rises above the axis for the minute the rows came in.
    let line = until(
        &c,
        "//*[@data-pipeline='orders']//*[local-name()='polyline' and contains(@class, 'accepted')]",
    )
    .await;
    let points = line.attr("points").await.unwrap().unwrap_or_default();
    let ys: std::collections::BTreeSet<&str> = points
        .split_whitespace()
        .filter_map(|p| p.split(',').nth(1))
        .collect();
    assert!(ys.len() >= 2, "a flat accepted line: {points:?}");

    // Try a payload: each row's verdict and the exact CSV, with nothing queued.
    c.find(Locator::Css("[data-pipeline=orders] details.try summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css(
        "[data-pipeline=orders] [data-field=try_payload]",
    ))
    .await
    .unwrap()
    .send_keys(r#"[{"OrderId": "0145632053", "Quantity": "3"}, {"Quantity": "1"}]"#)
    .await
    .unwrap();
    c.find(Locator::Css("[data-pipeline=orders] [data-action=try]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let summary = until(
        &c,
        "//*[@data-pipeline='orders']//*[@data-field='try_summary']",
    )
    .await;
    assert_eq!(
        summary.text().await.unwrap(),
        "A real request would be answered 202: 1 accepted, 1 ignored."
    );
    until(
        &c,
        "//*[@data-pipeline='orders']//tr[@data-verdict='schema_mismatch']//td[contains(text(), 'OrderId')]",
    )
    .await;
    let csv = until(&c, "//*[@data-pipeline='orders']//*[@data-field='try_csv']").await;
    assert_eq!(csv.text().await.unwrap(), "OrderId,Quantity\n0145632053,3");
    let view = app.pipeline_view("orders").await;
    assert_eq!(
        view["counters"]["accepted"], 3,
        "the dry run queued nothing"
    );

    // Saved on every run; `WEIR_UPDATE_SCREENSHOT=1` also updates the README's copy.
    let png = c.screenshot().await.unwrap();
    std::fs::write(std::env::temp_dir().join("weir-status-page.png"), &png).unwrap();
    if std::env::var_os("WEIR_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/docs/status-page.png"),
            &png,
        )
        .unwrap();
    }

    // A read token sees the pipeline and its counters, and no buttons.
    c.find(Locator::Id("sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&c, "//input[@id='token']").await;
    sign_in(&c, READ_TOKEN).await;
    until(
        &c,
        "//*[@data-pipeline='orders']//*[@data-counter='delivered' and normalize-space(text())='3']",
    )
    .await;
    assert_eq!(
        c.find(Locator::Id("who-scope"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "read"
    );
    for action in ["pause", "resume", "flush", "download", "requeue"] {
        let button = c
            .find(Locator::Css(&format!(
                "[data-pipeline=orders] [data-action={action}]"
            )))
            .await
            .unwrap();
        assert!(
            !button.is_displayed().await.unwrap(),
            "{action} is shown to a read token"
        );
    }
    c.close().await.unwrap();
    app.shutdown().await;
}
