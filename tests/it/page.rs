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
