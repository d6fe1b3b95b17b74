//! The status page: served without a token from the admin listener, with its strict
//! Content-Security-Policy, and the script and stylesheet it loads from the same listener.

use reqwest::Method;

use crate::helpers::{ADMIN, delivery_config, spawn_app};

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

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
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
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("chromedriver not found ({e}): install Debian's chromium and chromium-driver")
        });
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

#[tokio::test]
async fn signing_in_shows_the_pipeline_and_pause_shows_paused_in_a_real_browser() {
    use fantoccini::{ClientBuilder, Locator};
    let app = spawn_app(&format!(
        "{ADMIN}\n{}",
        delivery_config("http://127.0.0.1:9", "", "")
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
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    c.goto(&app.admin_url("/")).await.unwrap();
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(crate::helpers::WRITE_TOKEN)
        .await
        .unwrap();
    c.find(Locator::Id("sign-in-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let state = c
        .wait()
        .for_element(Locator::Css("[data-pipeline=orders] [data-field=state]"))
        .await
        .unwrap();
    assert_eq!(state.text().await.unwrap(), "ACTIVE");
    c.find(Locator::Css("[data-pipeline=orders] [data-action=pause]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .for_element(Locator::XPath(
            "//*[@data-pipeline='orders']//*[@data-field='state' and text()='PAUSED']",
        ))
        .await
        .unwrap();
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/docs/status-page.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    c.close().await.unwrap();
    app.shutdown().await;
}
