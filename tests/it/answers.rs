//! What a sender is answered: a pipeline's own success response, dry runs, and answers that
//! wait for delivery.

use hmac::{KeyInit, Mac};
use serde_json::json;

use crate::helpers::{pipeline_config, spawn_app, status_and_json};

fn github_signature(key: &[u8], body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn a_pipeline_with_response_204_answers_no_content_and_errors_keep_their_json() {
    let app = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        "response = { status = 204 }",
    ))
    .await;
    let resp = app.post_json("orders", r#"{"OrderId":"1"}"#).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.text().await.unwrap(), "", "204 has no body");
    assert_eq!(app.queued("orders").await.len(), 1, "the row is queued");

    let resp = app.post("/hooks/orders", "text/csv", "OrderId\n1\n").await;
    assert_eq!(
        status_and_json(resp).await.1["error"],
        "unsupported_media_type",
        "errors keep the JSON error shape"
    );
}

#[tokio::test]
async fn a_fixed_body_is_sent_with_its_status_and_content_type() {
    let app = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        r#"response = { status = 200, body = '{"ok": true}' }"#,
    ))
    .await;
    let resp = app
        .post_json("orders", r#"[{"OrderId":"1"},{"OrderId":"2"}]"#)
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.unwrap(), r#"{"ok": true}"#);
    assert_eq!(app.queued("orders").await.len(), 2);

    let plain = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        r#"response = { status = 201, body = "thanks", content_type = "text/plain; charset=utf-8" }"#,
    ))
    .await;
    let resp = plain.get("/hooks/orders?OrderId=1").await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(resp.text().await.unwrap(), "thanks");

    let counts = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        "response = { status = 200 }",
    ))
    .await;
    let resp = counts.get("/hooks/orders?OrderId=1").await;
    assert_eq!(
        status_and_json(resp).await,
        (200, json!({"accepted": 1, "ignored": 0})),
        "a status alone keeps the counts"
    );
}

#[tokio::test]
async fn a_replayed_delivery_is_answered_with_the_same_custom_response() {
    let app = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        r#"response = { status = 200, body = "received" }

[pipelines.auth]
kind = "hmac"
preset = "github"
secret = "gh""#,
    ))
    .await;
    let body = r#"{"OrderId":"1"}"#;
    for _ in 0..2 {
        let resp = app
            .client
            .post(app.url("/hooks/orders"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", github_signature(b"gh", body))
            .header("x-github-delivery", "d-1")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "received");
    }
    assert_eq!(app.queued("orders").await.len(), 1, "queued once");
}
