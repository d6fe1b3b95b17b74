//! Inbound security over real HTTP: every auth kind and preset, trusted proxies, every limit,
//! gzip, TLS, and secrets kept out of logs and `weir check`.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Sha256, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, spawn_app, status_and_json};

/// One pipeline "orders"; `server` goes in `[server]`, `pipeline` in the pipeline table.
fn config(server: &str, pipeline: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 4096
shutdown_grace = "5s"
{server}

[[pipelines]]
name = "orders"
queue_capacity = 100
schedule = "1h"
{pipeline}

[pipelines.sink]
kind = "celonis"
url = "http://127.0.0.1:9"
data_pool_id = "pool-1"
target_name = "orders"
app_key = "test-key"
"#
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn hmac_sha512(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

const BODY: &str = r#"{"OrderId":"0042","Qty":3}"#;

impl TestApp {
    /// POSTs JSON `body` with extra headers; returns the status.
    async fn post_with(&self, path: &str, headers: &[(&str, String)], body: &str) -> u16 {
        let mut req = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        req.send().await.expect("request sent").status().as_u16()
    }

    fn auth_failures(&self, reason: weir::auth_failure::Failure) -> u64 {
        let p = self.app().pipeline("orders").unwrap();
        p.counters.auth_failures.get(reason)
    }
}

use weir::auth_failure::Failure;

#[tokio::test]
async fn a_token_header_admits_current_and_rotated_secrets_only() {
    let app = spawn_app(&config(
        "",
        r#"
[pipelines.auth]
kind = "token"
header = "X-Api-Key"
secrets = ["old-token", "new-token"]
"#,
    ))
    .await;
    let post = |token: Option<&str>| {
        let headers: Vec<(&str, String)> = token
            .map(|t| ("x-api-key", t.to_owned()))
            .into_iter()
            .collect();
        let app = &app;
        async move { app.post_with("/hooks/orders", &headers, BODY).await }
    };
    assert_eq!(post(Some("new-token")).await, 202);
    assert_eq!(
        post(Some("old-token")).await,
        202,
        "rotation keeps the old secret"
    );
    assert_eq!(post(Some("new-tokem")).await, 401);
    assert_eq!(post(None).await, 401);
    assert_eq!(app.auth_failures(Failure::Mismatch), 1);
    assert_eq!(app.auth_failures(Failure::Missing), 1);
    assert_eq!(app.queued("orders").await.len(), 2);
    let resp = app
        .client
        .post(app.url("/hooks/orders"))
        .header("x-api-key", "wrong")
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(resp).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    assert!(
        !body.to_string().contains("token"),
        "the answer names no secret or reason: {body}"
    );
}

#[tokio::test]
async fn a_query_token_is_checked_and_never_becomes_a_field() {
    let app = spawn_app(&config(
        "",
        "[pipelines.auth]\nkind = \"token\"\nquery = \"token\"\nsecret = \"s3cr%t\"\n",
    ))
    .await;
    assert_eq!(
        app.get("/hooks/orders?OrderId=1&token=s3cr%25t")
            .await
            .status(),
        202
    );
    assert_eq!(
        app.get("/hooks/orders?OrderId=2&token=nope").await.status(),
        401
    );
    assert_eq!(app.get("/hooks/orders?OrderId=3").await.status(), 401);
    assert_eq!(
        app.queued_fields("orders").await,
        vec![vec![("OrderId".to_owned(), "1".to_owned())]]
    );
}

#[tokio::test]
async fn bearer_and_basic_auth_check_their_header() {
    let bearer = spawn_app(&config(
        "",
        "[pipelines.auth]\nkind = \"token\"\nsecret = \"tok\"\n",
    ))
    .await;
    let auth = |v: &str| vec![("authorization", v.to_owned())];
    assert_eq!(
        bearer
            .post_with("/hooks/orders", &auth("Bearer tok"), BODY)
            .await,
        202
    );
    assert_eq!(
        bearer
            .post_with("/hooks/orders", &auth("Bearer tok2"), BODY)
            .await,
        401
    );
    assert_eq!(
        bearer
            .post_with("/hooks/orders", &auth("Basic tok"), BODY)
            .await,
        401
    );

    let basic = spawn_app(&config(
        "",
        "[pipelines.auth]\nkind = \"basic\"\nuser = \"shop\"\npassword = \"pa:ss\"\n",
    ))
    .await;
    let creds = |u: &str, p: &str| auth(&format!("Basic {}", STANDARD.encode(format!("{u}:{p}"))));
    assert_eq!(
        basic
            .post_with("/hooks/orders", &creds("shop", "pa:ss"), BODY)
            .await,
        202
    );
    assert_eq!(
        basic
            .post_with("/hooks/orders", &creds("shop", "pa:sx"), BODY)
            .await,
        401
    );
    assert_eq!(
        basic
            .post_with("/hooks/orders", &creds("shoq", "pa:ss"), BODY)
            .await,
        401
    );
    let resp = basic
        .client
        .post(basic.url("/hooks/orders"))
        .basic_auth("shop", Some("pa:ss"))
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "reqwest's own basic auth is accepted");
}

fn hmac_config(preset: &str, secrets: &[&str], extra: &str) -> String {
    let list: Vec<String> = secrets.iter().map(|s| format!("\"{s}\"")).collect();
    config(
        "",
        &format!(
            "[pipelines.auth]\nkind = \"hmac\"\npreset = \"{preset}\"\nsecrets = [{}]\n{extra}",
            list.join(", ")
        ),
    )
}

#[tokio::test]
async fn github_signatures_are_checked_over_the_raw_body() {
    let app = spawn_app(&hmac_config(
        "github",
        &["old", "It's a Secret to Everybody"],
        "",
    ))
    .await;
    // GitHub: X-Hub-Signature-256 = "sha256=" + hex(HMAC-SHA256(secret, body)).
    let sign = |key: &str, body: &str| {
        vec![(
            "x-hub-signature-256",
            format!(
                "sha256={}",
                hex::encode(hmac_sha256(key.as_bytes(), body.as_bytes()))
            ),
        )]
    };
    let body = r#"{"OrderId": "1",  "spaced":true}"#;
    let good = sign("It's a Secret to Everybody", body);
    assert_eq!(app.post_with("/hooks/orders", &good, body).await, 202);
    assert_eq!(
        app.post_with("/hooks/orders", &sign("old", body), body)
            .await,
        202,
        "rotated"
    );
    assert_eq!(
        app.post_with("/hooks/orders", &sign("wrong", body), body)
            .await,
        401
    );
    let tampered = body.replace('1', "2");
    assert_eq!(app.post_with("/hooks/orders", &good, &tampered).await, 401);
    assert_eq!(app.post_with("/hooks/orders", &[], body).await, 401);
    let unprefixed = vec![("x-hub-signature-256", good[0].1.replace("sha256=", ""))];
    assert_eq!(app.post_with("/hooks/orders", &unprefixed, body).await, 401);
    assert_eq!(app.auth_failures(Failure::Mismatch), 2);
    assert_eq!(app.auth_failures(Failure::Missing), 1);
    assert_eq!(app.auth_failures(Failure::Malformed), 1);
    assert_eq!(app.queued("orders").await.len(), 2);
}

#[tokio::test]
async fn shopify_signatures_are_base64_over_the_body() {
    let app = spawn_app(&hmac_config("shopify", &["shpss_1", "shpss_2"], "")).await;
    // Shopify: X-Shopify-Hmac-Sha256 = base64(HMAC-SHA256(client secret, raw body)).
    let sign = |key: &str, body: &str| {
        vec![(
            "x-shopify-hmac-sha256",
            STANDARD.encode(hmac_sha256(key.as_bytes(), body.as_bytes())),
        )]
    };
    assert_eq!(
        app.post_with("/hooks/orders", &sign("shpss_2", BODY), BODY)
            .await,
        202
    );
    assert_eq!(
        app.post_with("/hooks/orders", &sign("shpss_1", BODY), BODY)
            .await,
        202
    );
    assert_eq!(
        app.post_with("/hooks/orders", &sign("shpss_3", BODY), BODY)
            .await,
        401
    );
    let tampered = BODY.replace("0042", "0043");
    assert_eq!(
        app.post_with("/hooks/orders", &sign("shpss_2", BODY), &tampered)
            .await,
        401
    );
}

#[tokio::test]
async fn stripe_signatures_cover_the_timestamp_and_stale_ones_are_refused() {
    let app = spawn_app(&hmac_config(
        "stripe",
        &["whsec_old", "whsec_new"],
        "tolerance = \"60s\"",
    ))
    .await;
    // Stripe: Stripe-Signature "t=<unix>,v1=<hex(HMAC-SHA256(secret, "<t>.<body>"))>";
    // during rotation Stripe sends one v1 per active secret.
    let sign = |keys: &[&str], t: i64, body: &str| {
        let mut header = format!("t={t}");
        for k in keys {
            let mac = hmac_sha256(k.as_bytes(), format!("{t}.{body}").as_bytes());
            header.push_str(&format!(",v1={}", hex::encode(mac)));
        }
        vec![("stripe-signature", header)]
    };
    let t = now();
    assert_eq!(
        app.post_with("/hooks/orders", &sign(&["whsec_new"], t, BODY), BODY)
            .await,
        202
    );
    assert_eq!(
        app.post_with(
            "/hooks/orders",
            &sign(&["whsec_x", "whsec_old"], t, BODY),
            BODY
        )
        .await,
        202,
        "one matching v1 among several is enough"
    );
    assert_eq!(
        app.post_with("/hooks/orders", &sign(&["whsec_x"], t, BODY), BODY)
            .await,
        401
    );
    assert_eq!(
        app.post_with(
            "/hooks/orders",
            &sign(&["whsec_new"], t, BODY),
            "{\"OrderId\":\"9\"}"
        )
        .await,
        401
    );
    assert_eq!(
        app.post_with("/hooks/orders", &sign(&["whsec_new"], t - 120, BODY), BODY)
            .await,
        401
    );
    assert_eq!(app.auth_failures(Failure::Stale), 1);
    assert_eq!(app.auth_failures(Failure::Mismatch), 2);
}

#[tokio::test]
async fn standard_webhooks_signatures_verify_with_whsec_secrets() {
    let key_a = [7u8; 24];
    let key_b = *b"another key of 32 bytes........!";
    let secret_a = format!("whsec_{}", STANDARD.encode(key_a));
    let secret_b = format!("whsec_{}", STANDARD.encode(key_b));
    let app = spawn_app(&hmac_config(
        "standard-webhooks",
        &[&secret_a, &secret_b],
        "",
    ))
    .await;
    // Standard Webhooks: webhook-signature = "v1," + base64(HMAC-SHA256(base64-decoded
    // secret, "<webhook-id>.<webhook-timestamp>.<body>")), space-separated when several.
    let sign = |key: &[u8], id: &str, t: i64, body: &str| {
        let mac = hmac_sha256(key, format!("{id}.{t}.{body}").as_bytes());
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", t.to_string()),
            (
                "webhook-signature",
                format!("v1a,xyz v1,{}", STANDARD.encode(mac)),
            ),
        ]
    };
    let t = now();
    assert_eq!(
        app.post_with("/hooks/orders", &sign(&key_a, "msg_1", t, BODY), BODY)
            .await,
        202
    );
    assert_eq!(
        app.post_with("/hooks/orders", &sign(&key_b, "msg_2", t, BODY), BODY)
            .await,
        202
    );
    assert_eq!(
        app.post_with("/hooks/orders", &sign(&[1; 24], "msg_3", t, BODY), BODY)
            .await,
        401
    );
    let mut other_id = sign(&key_a, "msg_4", t, BODY);
    other_id[0].1 = "msg_5".into();
    assert_eq!(app.post_with("/hooks/orders", &other_id, BODY).await, 401);
    assert_eq!(
        app.post_with(
            "/hooks/orders",
            &sign(&key_a, "msg_6", t, BODY),
            "{\"OrderId\":\"1\"}"
        )
        .await,
        401
    );
    assert_eq!(
        app.post_with("/hooks/orders", &sign(&key_a, "msg_7", t - 301, BODY), BODY)
            .await,
        401,
        "older than the default 5 minute tolerance"
    );
    assert_eq!(app.auth_failures(Failure::Stale), 1);
    // Svix sends the same scheme under svix-* header names.
    let svix: Vec<(&str, String)> = sign(&key_a, "msg_8", t, BODY)
        .into_iter()
        .map(|(k, v)| {
            (
                match k {
                    "webhook-id" => "svix-id",
                    "webhook-timestamp" => "svix-timestamp",
                    _ => "svix-signature",
                },
                v,
            )
        })
        .collect();
    assert_eq!(app.post_with("/hooks/orders", &svix, BODY).await, 202);
}

/// Standard Webhooks headers for `body` signed with `key` under `id` at `t`.
fn standard_webhook(key: &[u8], id: &str, t: i64, body: &str) -> Vec<(&'static str, String)> {
    let mac = hmac_sha256(key, format!("{id}.{t}.{body}").as_bytes());
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", t.to_string()),
        ("webhook-signature", format!("v1,{}", STANDARD.encode(mac))),
    ]
}

impl TestApp {
    async fn post_signed(
        &self,
        headers: &[(&str, String)],
        body: &str,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .client
            .post(self.url("/hooks/orders"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        status_and_json(req.send().await.expect("request sent")).await
    }

    fn duplicate_rows(&self) -> u64 {
        let p = self.app().pipeline("orders").unwrap();
        p.counters
            .duplicate
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[tokio::test]
async fn a_replayed_standard_webhook_is_answered_again_but_queued_once() {
    let key = [7u8; 24];
    let secret = format!("whsec_{}", STANDARD.encode(key));
    let app = spawn_app(&hmac_config("standard-webhooks", &[&secret], "")).await;
    let two_rows = r#"[{"OrderId":"1"},{"OrderId":"2"}]"#;
    let first = standard_webhook(&key, "msg_1", now(), two_rows);
    let answer = serde_json::json!({"accepted": 2, "ignored": 0});
    assert_eq!(
        app.post_signed(&first, two_rows).await,
        (202, answer.clone())
    );
    assert_eq!(
        app.post_signed(&first, two_rows).await,
        (202, answer.clone())
    );
    // A retry signed anew (a later timestamp) is the same delivery too.
    let resent = standard_webhook(&key, "msg_1", now() + 1, two_rows);
    assert_eq!(app.post_signed(&resent, two_rows).await, (202, answer));
    assert_eq!(app.queued("orders").await.len(), 2);
    assert_eq!(app.duplicate_rows(), 4);
    let other = standard_webhook(&key, "msg_2", now(), BODY);
    assert_eq!(app.post_signed(&other, BODY).await.0, 202);
    assert_eq!(app.queued("orders").await.len(), 3);
    let metrics = app.app().metrics().render();
    assert!(
        metrics.contains(r#"weir_ingest_rows_total{pipeline="orders",outcome="duplicate"} 4"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_delivery_whose_push_failed_is_taken_when_the_sender_retries() {
    let key = [9u8; 24];
    let secret = format!("whsec_{}", STANDARD.encode(key));
    let app = spawn_app(
        &hmac_config("standard-webhooks", &[&secret], "")
            .replace("queue_capacity = 100", "queue_capacity = 1"),
    )
    .await;
    let first = standard_webhook(&key, "msg_1", now(), BODY);
    assert_eq!(app.post_signed(&first, BODY).await.0, 202);
    let second = standard_webhook(&key, "msg_2", now(), BODY);
    let (status, json) = app.post_signed(&second, BODY).await;
    assert_eq!((status, json["error"].as_str()), (503, Some("queue_full")));
    let queue = &app.app().pipeline("orders").unwrap().queue();
    let queued = queue.peek(10, u64::MAX).await.unwrap();
    queue.commit(queued[0].offset).await.unwrap();
    assert_eq!(
        app.post_signed(&second, BODY).await,
        (202, serde_json::json!({"accepted": 1, "ignored": 0}))
    );
    assert_eq!(app.queued("orders").await.len(), 1);
    assert_eq!(app.duplicate_rows(), 0);
}

#[tokio::test]
async fn stripe_events_github_and_shopify_deliveries_are_deduplicated_by_their_ids() {
    let stripe = spawn_app(&hmac_config("stripe", &["whsec_s"], "")).await;
    let event = r#"{"id":"evt_1","type":"invoice.paid","amount":5}"#;
    let stripe_sig = |t: i64| {
        let mac = hmac_sha256(b"whsec_s", format!("{t}.{event}").as_bytes());
        vec![("stripe-signature", format!("t={t},v1={}", hex::encode(mac)))]
    };
    // Stripe signs each retry anew; the event id in the body is what repeats.
    assert_eq!(stripe.post_signed(&stripe_sig(now()), event).await.0, 202);
    assert_eq!(
        stripe.post_signed(&stripe_sig(now() - 5), event).await.0,
        202
    );
    assert_eq!(stripe.queued("orders").await.len(), 1);

    let github = spawn_app(&hmac_config("github", &["gh"], "")).await;
    let gh = |delivery: &str| {
        vec![
            (
                "x-hub-signature-256",
                format!(
                    "sha256={}",
                    hex::encode(hmac_sha256(b"gh", BODY.as_bytes()))
                ),
            ),
            ("x-github-delivery", delivery.to_owned()),
        ]
    };
    for delivery in ["d-1", "d-1", "d-2"] {
        assert_eq!(github.post_signed(&gh(delivery), BODY).await.0, 202);
    }
    assert_eq!(github.queued("orders").await.len(), 2);

    let shopify = spawn_app(&hmac_config("shopify", &["sh"], "")).await;
    let sh = |id: &str| {
        vec![
            (
                "x-shopify-hmac-sha256",
                STANDARD.encode(hmac_sha256(b"sh", BODY.as_bytes())),
            ),
            ("x-shopify-webhook-id", id.to_owned()),
        ]
    };
    for id in ["w-1", "w-1"] {
        assert_eq!(shopify.post_signed(&sh(id), BODY).await.0, 202);
    }
    assert_eq!(shopify.queued("orders").await.len(), 1);
}

#[tokio::test]
async fn a_custom_scheme_takes_header_algorithm_encoding_prefix_and_timestamp() {
    let app = spawn_app(&hmac_config(
        "custom",
        &["k1"],
        r#"header = "X-Signature"
algorithm = "sha512"
encoding = "base64"
prefix = "sig="
timestamp_header = "X-Timestamp"
tolerance = "30s""#,
    ))
    .await;
    let sign = |key: &str, t: i64, body: &str| {
        let mac = hmac_sha512(key.as_bytes(), format!("{t}.{body}").as_bytes());
        vec![
            ("x-signature", format!("sig={}", STANDARD.encode(mac))),
            ("x-timestamp", t.to_string()),
        ]
    };
    let t = now();
    assert_eq!(
        app.post_with("/hooks/orders", &sign("k1", t, BODY), BODY)
            .await,
        202
    );
    assert_eq!(
        app.post_with("/hooks/orders", &sign("k2", t, BODY), BODY)
            .await,
        401
    );
    assert_eq!(
        app.post_with("/hooks/orders", &sign("k1", t, "{}"), BODY)
            .await,
        401
    );
    assert_eq!(
        app.post_with("/hooks/orders", &sign("k1", t - 60, BODY), BODY)
            .await,
        401
    );
    assert_eq!(app.auth_failures(Failure::Stale), 1);
}

#[tokio::test]
async fn secrets_can_come_from_a_file_with_one_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.secret");
    std::fs::write(&path, "first\n\nsecond\n").unwrap();
    let app = spawn_app(&config(
        "",
        &format!(
            "[pipelines.auth]\nkind = \"token\"\nheader = \"X-Token\"\nsecret_file = \"{}\"\n",
            path.display()
        ),
    ))
    .await;
    let h = |t: &str| vec![("x-token", t.to_owned())];
    assert_eq!(app.post_with("/hooks/orders", &h("first"), BODY).await, 202);
    assert_eq!(
        app.post_with("/hooks/orders", &h("second"), BODY).await,
        202
    );
    assert_eq!(
        app.post_with("/hooks/orders", &h("firstsecond"), BODY)
            .await,
        401
    );
}

#[tokio::test]
async fn a_signature_over_the_json_verifies_when_the_body_arrives_gzipped() {
    let app = spawn_app(&hmac_config("github", &["gz"], "")).await;
    let signature = format!(
        "sha256={}",
        hex::encode(hmac_sha256(b"gz", BODY.as_bytes()))
    );
    let resp = app
        .client
        .post(app.url("/hooks/orders"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("x-hub-signature-256", signature)
        .body(gzip(BODY.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn behind_a_trusted_proxy_allow_ips_checks_the_forwarded_client() {
    let app = spawn_app(&config(
        r#"trusted_proxies = ["127.0.0.0/8"]"#,
        r#"allow_ips = ["198.51.100.7"]"#,
    ))
    .await;
    let xff = |v: &str| vec![("x-forwarded-for", v.to_owned())];
    assert_eq!(
        app.post_with("/hooks/orders", &xff("198.51.100.7"), BODY)
            .await,
        202
    );
    assert_eq!(
        app.post_with("/hooks/orders", &xff("198.51.100.7, 127.0.0.5"), BODY)
            .await,
        202,
        "trusted hops are skipped"
    );
    assert_eq!(
        app.post_with("/hooks/orders", &xff("198.51.100.7, 203.0.113.1"), BODY)
            .await,
        403,
        "the nearest untrusted hop is the client, whatever it claims to its left"
    );
    assert_eq!(app.post_with("/hooks/orders", &[], BODY).await, 403);
}

#[tokio::test]
async fn the_forwarded_header_is_believed_only_when_configured_never_by_its_presence() {
    // Behind nginx, HAProxy or an ALB, which append to X-Forwarded-For and pass Forwarded
    // through: a client's own Forwarded must not pick its address.
    let xff_app = spawn_app(&config(
        r#"trusted_proxies = ["127.0.0.0/8"]"#,
        r#"allow_ips = ["198.51.100.7"]"#,
    ))
    .await;
    let forwarded = |v: &str| vec![("forwarded", v.to_owned())];
    let xff = |v: &str| vec![("x-forwarded-for", v.to_owned())];
    let mut both = forwarded("for=198.51.100.7");
    both.extend(xff("203.0.113.1"));
    assert_eq!(
        xff_app
            .post_with("/hooks/orders", &forwarded("for=198.51.100.7"), BODY)
            .await,
        403
    );
    assert_eq!(xff_app.post_with("/hooks/orders", &both, BODY).await, 403);
    let rfc_app = spawn_app(&config(
        "trusted_proxies = [\"127.0.0.0/8\"]\nforwarded_header = \"forwarded\"",
        r#"allow_ips = ["198.51.100.7"]"#,
    ))
    .await;
    assert_eq!(
        rfc_app
            .post_with(
                "/hooks/orders",
                &forwarded("for=198.51.100.7;proto=https"),
                BODY
            )
            .await,
        202
    );
    assert_eq!(
        rfc_app
            .post_with("/hooks/orders", &xff("198.51.100.7"), BODY)
            .await,
        403
    );
}

#[tokio::test]
async fn an_unknown_or_obfuscated_forwarded_client_is_refused_not_replaced_by_the_proxy() {
    let app = spawn_app(&config(
        "trusted_proxies = [\"127.0.0.0/8\"]\nforwarded_header = \"forwarded\"",
        r#"allow_ips = ["198.51.100.7", "127.0.0.1"]"#,
    ))
    .await;
    for hop in ["for=unknown", "for=_hidden", "for=\"_gazonk\""] {
        let resp = app
            .client
            .post(app.url("/hooks/orders"))
            .header("content-type", "application/json")
            .header("forwarded", hop)
            .body(BODY)
            .send()
            .await
            .unwrap();
        let (status, json) = status_and_json(resp).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (403, Some("unknown_client")),
            "{hop}"
        );
    }
    let xff_app = spawn_app(&config(
        r#"trusted_proxies = ["127.0.0.0/8"]"#,
        r#"allow_ips = ["127.0.0.1"]"#,
    ))
    .await;
    let unknown = vec![("x-forwarded-for", "unknown".to_owned())];
    assert_eq!(
        xff_app.post_with("/hooks/orders", &unknown, BODY).await,
        403
    );
    // Without an allowlist too: the address is logged and counted, so it is never guessed.
    let open_app = spawn_app(&config(r#"trusted_proxies = ["127.0.0.0/8"]"#, "")).await;
    assert_eq!(
        open_app.post_with("/hooks/orders", &unknown, BODY).await,
        403
    );
    assert!(app.queued("orders").await.is_empty());
    assert!(xff_app.queued("orders").await.is_empty());
    assert!(open_app.queued("orders").await.is_empty());
}

#[tokio::test]
async fn the_method_and_the_address_are_checked_before_the_sender() {
    let app = spawn_app(&config(
        "",
        "allow_ips = [\"198.51.100.7\"]\n[pipelines.auth]\nkind = \"token\"\nsecret = \"t\"",
    ))
    .await;
    let resp = app
        .client
        .put(app.url("/hooks/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(app.post_with("/hooks/orders", &[], BODY).await, 403);
    assert_eq!(app.post_with("/hooks/nope", &[], BODY).await, 404);
    assert_eq!(app.auth_failures(Failure::Missing), 0);
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let app = spawn_app(&config("", r#"allow_ips = ["198.51.100.7"]"#)).await;
    let spoof = vec![("x-forwarded-for", "198.51.100.7".to_owned())];
    assert_eq!(app.post_with("/hooks/orders", &spoof, BODY).await, 403);
    let proxied = spawn_app(&config(
        r#"trusted_proxies = ["10.0.0.0/8"]"#,
        r#"allow_ips = ["127.0.0.1"]"#,
    ))
    .await;
    let spoof = vec![("x-forwarded-for", "203.0.113.9".to_owned())];
    assert_eq!(proxied.post_with("/hooks/orders", &spoof, BODY).await, 202);
}

#[tokio::test]
async fn rows_per_request_and_fields_per_row_are_limited() {
    let app = spawn_app(&config(
        "max_rows_per_request = 2\nmax_fields_per_row = 2",
        "",
    ))
    .await;
    let (status, body) = status_and_json(
        app.post_json("orders", r#"[{"a":1},{"a":2},{"a":3}]"#)
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("too_many_rows"))
    );
    let (status, body) = status_and_json(
        app.post_json("orders", r#"{"a":1,"b":{"c":2,"d":3}}"#)
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("too_many_fields"))
    );
    assert_eq!(app.get("/hooks/orders?a=1&b=2&c=3").await.status(), 400);
    assert_eq!(
        app.post_json("orders", r#"[{"a":1,"b":2},{"a":2}]"#)
            .await
            .status(),
        202
    );
    assert_eq!(app.queued("orders").await.len(), 2);
}

#[tokio::test]
async fn deep_empty_and_colliding_field_names_are_refused() {
    let app = spawn_app(&config("", "")).await;
    let deep = format!("{}1{}", "{\"a\":".repeat(40), "}".repeat(40));
    for body in [
        deep.as_str(),
        r#"{"":1}"#,
        r#"{"a.b":1,"a":{"b":2}}"#,
        r#"{"x":1,"x":2}"#,
    ] {
        let (status, json) = status_and_json(app.post_json("orders", body).await).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (400, Some("malformed_body")),
            "{body}"
        );
    }
    assert!(app.queued("orders").await.is_empty());
}

/// A JSON body of `fields` fields `a0`, `a1`, … (all `0`), nested under `key` if given.
fn wide_object(key: Option<&str>, fields: usize) -> String {
    let mut inner = String::from("{");
    for i in 0..fields {
        if i > 0 {
            inner.push(',');
        }
        inner.push_str(&format!("\"a{i}\":0"));
    }
    inner.push('}');
    match key {
        Some(k) => format!("{{\"{k}\":{inner}}}"),
        None => inner,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costly_bodies_get_400_early_while_other_requests_are_still_served() {
    let app =
        spawn_app(&config("", "").replace("max_body_bytes = 4096", "max_body_bytes = \"2MiB\""))
            .await;
    let long_key = "k".repeat(100 * 1024);
    let deep_array = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let hostile = [
        (wide_object(Some(&long_key), 9_000), "field_name_too_long"),
        (wide_object(Some("k"), 90_000), "too_many_fields"),
        (wide_object(None, 90_000), "too_many_fields"),
        (deep_array, "malformed_body"),
    ];
    let mut tasks = Vec::new();
    for (body, code) in hostile {
        assert!(body.len() > 100_000 && body.len() < 2 * 1024 * 1024);
        let (client, url) = (app.client.clone(), app.url("/hooks/orders"));
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("hostile request answered");
            (status_and_json(resp).await, code)
        }));
    }
    let normal = tokio::time::timeout(
        Duration::from_secs(8),
        app.post_json("orders", r#"{"OrderId":"1"}"#),
    )
    .await
    .expect("a normal request is served while costly bodies are in progress");
    assert_eq!(normal.status(), 202);
    for task in tasks {
        let ((status, json), code) = tokio::time::timeout(Duration::from_secs(8), task)
            .await
            .expect("a costly body is refused within the deadline")
            .unwrap();
        assert_eq!(
            (status, json["error"].as_str()),
            (400, Some(code)),
            "{json}"
        );
    }
    assert_eq!(app.queued("orders").await.len(), 1);
}

#[tokio::test]
async fn nesting_past_max_depth_is_refused_inside_arrays_too_and_nested_names_must_not_be_empty() {
    let app = spawn_app(&config("max_depth = 3", "")).await;
    for body in [
        r#"{"a":{"b":{"c":{"d":1}}}}"#,
        r#"{"a":[[[1]]]}"#,
        r#"{"a":{"b":[{"c":1}]}}"#,
        r#"{"a":{"":1}}"#,
        r#"[{"a":{"b":{"":1}}}]"#,
    ] {
        let (status, json) = status_and_json(app.post_json("orders", body).await).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (400, Some("malformed_body")),
            "{body}"
        );
    }
    assert_eq!(
        app.post_json("orders", r#"{"a":{"b":{"c":1}},"d":[[1]]}"#)
            .await
            .status(),
        202
    );
    let default_depth = spawn_app(&config("", "")).await;
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(2_000), "]".repeat(2_000));
    let (status, json) = status_and_json(default_depth.post_json("orders", &deep).await).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (400, Some("malformed_body"))
    );
    assert!(
        json["message"].as_str().unwrap().contains("max_depth"),
        "{json}"
    );
}

#[tokio::test]
async fn bodies_beyond_the_bytes_in_flight_budget_get_503_until_the_budget_frees_up() {
    // OrderId values of thousands of characters fit a column of that length.
    let long_ids = "[[pipelines.columns]]\nname = \"OrderId\"\nfrom = \"OrderId\"\nlength = 32000";
    let app = spawn_app(&config("max_body_bytes_in_flight = 6000", long_ids)).await;
    let addr = app.app().ingest_addr();
    // A sender that declares 4000 bytes and sends only the first few holds them.
    let body = format!("{{\"OrderId\":\"{}\"}}", "x".repeat(4000 - 14));
    assert_eq!(body.len(), 4000);
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /hooks/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body.as_bytes()[..10]).await.unwrap();
    let big = format!("{{\"OrderId\":\"{}\"}}", "y".repeat(3000 - 14));
    // Broken JSON of the same size: 400 when its bytes fit, so waiting queues nothing.
    let broken = format!("{}{{", &big[..2999]);
    let post_big = |body: &String| {
        app.client
            .post(app.url("/hooks/orders"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    crate::helpers::wait_until(5, "the slow body to hold its bytes", || async {
        post_big(&broken).await.unwrap().status() == 503
    })
    .await;
    let resp = post_big(&big).await.unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    let (status, json) = status_and_json(resp).await;
    assert_eq!((status, json["error"].as_str()), (503, Some("busy")));
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("max_body_bytes_in_flight")
    );
    // What is left of the budget still takes a smaller body, and a request without a body
    // costs nothing of it.
    assert_eq!(app.post_json("orders", BODY).await.status(), 202);
    assert_eq!(app.get("/hooks/orders?OrderId=9").await.status(), 202);
    slow.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut answer))
        .await
        .expect("the slow body is answered")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 202"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert_eq!(post_big(&big).await.unwrap().status(), 202);
    assert_eq!(app.queued("orders").await.len(), 4);
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let app = spawn_app(&config("max_header_bytes = 8192", "")).await;
    let big = vec![("x-big", "a".repeat(10_000))];
    assert_eq!(app.post_with("/hooks/orders", &big, BODY).await, 431);
    let fits = vec![("x-big", "a".repeat(4_000))];
    assert_eq!(app.post_with("/hooks/orders", &fits, BODY).await, 202);
}

/// Writes `head` then dribbles `dribble` one byte per 50 ms; returns what the server
/// answered and how long it took to close the connection. Panics after 5 s.
async fn dribble(addr: std::net::SocketAddr, head: &str, dribble: &str) -> (String, Duration) {
    let started = tokio::time::Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let bytes = dribble.as_bytes().to_vec();
    let writer_task = tokio::spawn(async move {
        for b in bytes.iter().cycle() {
            if writer.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut answer)).await;
    writer_task.abort();
    assert!(read.is_ok(), "the slow client was not cut off within 5 s");
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn slow_senders_are_cut_off() {
    let app = spawn_app(&config(
        "header_read_timeout = \"400ms\"\nbody_read_timeout = \"400ms\"",
        "",
    ))
    .await;
    let addr = app.app().ingest_addr();
    // Headers that never end.
    let (_, took) = dribble(
        addr,
        "POST /hooks/orders HTTP/1.1\r\nHost: x\r\n",
        "X-Slow: 1\r\n",
    )
    .await;
    assert!(took >= Duration::from_millis(400), "{took:?}");
    // A connection that sends nothing at all.
    let (answer, _) = dribble(addr, "", "").await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // A kept-alive connection that goes quiet after a request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "an idle kept-alive connection was not closed within 5 s"
    );
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    // A body that never arrives.
    let head = "POST /hooks/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
    let (answer, took) = dribble(addr, head, "{\"a\":1").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(took >= Duration::from_millis(400), "{took:?}");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_until_one_frees_up() {
    let app = spawn_app(&config(
        "max_connections = 2\nheader_read_timeout = \"30s\"",
        "",
    ))
    .await;
    let addr = app.app().ingest_addr();
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the third connection is closed: {read:?}"
    );
    drop(first);
    crate::helpers::wait_until(5, "a connection slot to free up", || async {
        let resp = app
            .client
            .post(app.url("/hooks/orders"))
            .header("content-type", "application/json")
            .body(BODY)
            .send()
            .await;
        resp.is_ok_and(|r| r.status() == 202)
    })
    .await;
}

#[tokio::test]
async fn a_rate_limited_pipeline_answers_429_with_retry_after() {
    let app = spawn_app(&config("", "rate_limit = \"2/m\"")).await;
    assert_eq!(app.post_json("orders", BODY).await.status(), 202);
    assert_eq!(app.post_json("orders", BODY).await.status(), 202);
    let resp = app.post_json("orders", BODY).await;
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    let (status, body) = status_and_json(resp).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited"))
    );
    let p = app.app().pipeline("orders").unwrap();
    assert_eq!(weir::pipeline::Counters::get(&p.counters.rate_limited), 1);
    assert_eq!(app.queued("orders").await.len(), 2);
}

async fn post_encoded(app: &TestApp, encoding: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let resp = app
        .client
        .post(app.url("/hooks/orders"))
        .header("content-type", "application/json")
        .header("content-encoding", encoding)
        .body(body)
        .send()
        .await
        .unwrap();
    status_and_json(resp).await
}

#[tokio::test]
async fn gzip_bodies_are_accepted_and_a_gzip_bomb_gets_413() {
    let app = spawn_app(&config("", "")).await;
    let (status, _) = post_encoded(&app, "gzip", gzip(BODY.as_bytes())).await;
    assert_eq!(status, 202);
    assert_eq!(app.queued_fields("orders").await[0][0].1, "0042");
    // 2 MiB of JSON in about 2 KiB on the wire; the limit is 4096 bytes decompressed.
    let bomb = gzip(format!("{{\"a\":\"{}\"}}", "a".repeat(2 << 20)).as_bytes());
    assert!(bomb.len() < 4096, "{}", bomb.len());
    let (status, body) = post_encoded(&app, "gzip", bomb).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("body_too_large"))
    );
    let (status, _) = post_encoded(&app, "gzip", b"not gzip".to_vec()).await;
    assert_eq!(status, 400);
    let (status, body) = post_encoded(&app, "br", BODY.as_bytes().to_vec()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (415, Some("unsupported_encoding"))
    );
    assert_eq!(app.queued("orders").await.len(), 1);
}

#[tokio::test]
async fn tls_serves_hooks_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let app = spawn_app(&config(
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            cert_path.display(),
            key_path.display()
        ),
        "",
    ))
    .await;
    let addr = app.app().ingest_addr();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", addr)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let resp = client
        .post(format!("https://localhost:{}/hooks/orders", addr.port()))
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(app.queued("orders").await.len(), 1);
    let plain = app
        .client
        .post(app.url("/hooks/orders"))
        .body(BODY)
        .send()
        .await;
    assert!(
        plain.is_err() || plain.unwrap().status() != 202,
        "plain HTTP is not served"
    );
}

const TOKEN: &str = "tok-SECRET-4711";
const HMAC_SECRET: &str = "hmac-SECRET-0815";
const WRONG_TOKEN: &str = "tok-WRONG-1234";

/// Two pipelines: "orders" with a token from `${ORDERS_TOKEN}`, "github" with an HMAC
/// secret from a file.
fn secret_config(dir: &std::path::Path) -> std::path::PathBuf {
    let secret_file = dir.join("github.secret");
    std::fs::write(&secret_file, format!("{HMAC_SECRET}\n")).unwrap();
    let text = config(
        "",
        "[pipelines.auth]\nkind = \"token\"\nheader = \"X-Api-Key\"\nsecret = \"${ORDERS_TOKEN}\"\n",
    ) + &format!(
        r#"
[[pipelines]]
name = "github"
schedule = "1h"

[pipelines.auth]
kind = "hmac"
preset = "github"
secret_file = "{}"

[pipelines.sink]
kind = "celonis"
url = "http://127.0.0.1:9"
data_pool_id = "pool-1"
target_name = "github"
app_key = "test-key"
"#,
        secret_file.display()
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn weir_check_masks_every_sender_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = secret_config(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["check", "-c"])
        .arg(&path)
        .env("ORDERS_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(
        stdout.contains("auth: token in header x-api-key, 1 secret ***"),
        "{stdout}"
    );
    assert!(
        stdout.contains("auth: hmac github, 1 secret ***"),
        "{stdout}"
    );
    for secret in [TOKEN, HMAC_SECRET] {
        assert!(!all.contains(secret), "{secret} leaked into:\n{all}");
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs_even_at_trace_level() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = secret_config(dir.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "-c"])
        .arg(&path)
        .env("ORDERS_TOKEN", TOKEN)
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut log = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let listen = loop {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .expect("weir logs that it started");
        log.push(line.clone());
        if line.contains("weir started")
            && let Some(at) = line.find("listen=")
        {
            break line[at + 7..].split_whitespace().next().unwrap().to_owned();
        }
    };
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let post = |pipeline: &str, headers: Vec<(&'static str, String)>| {
        let mut req = client
            .post(format!("http://{listen}/hooks/{pipeline}"))
            .header("content-type", "application/json")
            .body(BODY);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        post("orders", vec![("x-api-key", TOKEN.to_owned())]).await,
        202
    );
    assert_eq!(
        post("orders", vec![("x-api-key", WRONG_TOKEN.to_owned())]).await,
        401
    );
    assert_eq!(
        post(
            "github",
            vec![(
                "x-hub-signature-256",
                format!(
                    "sha256={}",
                    hex::encode(hmac_sha256(HMAC_SECRET.as_bytes(), b"other"))
                )
            )]
        )
        .await,
        401
    );
    let good = format!(
        "sha256={}",
        hex::encode(hmac_sha256(HMAC_SECRET.as_bytes(), BODY.as_bytes()))
    );
    assert_eq!(
        post("github", vec![("x-hub-signature-256", good.clone())]).await,
        202
    );
    child.kill().unwrap();
    child.wait().unwrap();
    log.extend(lines_rx.iter());
    let log = log.join("\n");
    assert!(
        log.contains("sender check failed") && log.contains("bad_credentials"),
        "the failures are logged with their reason:\n{log}"
    );
    for secret in [TOKEN, HMAC_SECRET, WRONG_TOKEN, good.as_str()] {
        assert!(
            !log.contains(secret),
            "{secret} leaked into the log:\n{log}"
        );
    }
}
