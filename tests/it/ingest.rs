//! The intake: every input form, every error status, all-or-nothing, allowlists, schemas.

use serde_json::json;

use crate::helpers::{pipeline_config, spawn_app, status_and_json};

const SCHEMA: &str = r#"
[pipelines.schema]
on_mismatch = "MODE"
required = ["OrderId"]
allow_extra = false
fields = { OrderId = "string", DeliveryDate = "string", Quantity = "integer", Price = "number", Express = "boolean" }
"#;

fn with_schema(mode: &str) -> String {
    pipeline_config("127.0.0.1:0", &SCHEMA.replace("MODE", mode))
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn a_query_string_is_one_row_with_values_exactly_as_sent() {
    let app = spawn_app(&pipeline_config("127.0.0.1:0", "")).await;
    let resp = app
        .get("/hooks/orders?OrderId=0145632053&DeliveryDate=12.03.2021&Stadt=M%C3%BCnchen")
        .await;
    assert_eq!(
        status_and_json(resp).await,
        (202, json!({"accepted": 1, "ignored": 0}))
    );
    let resp = app
        .post("/hooks/orders?OrderId=0000001&Note=a+b", "", Vec::new())
        .await;
    assert_eq!(
        resp.status(),
        202,
        "POST with an empty body reads the query string too"
    );
    assert_eq!(
        app.queued_fields("orders").await,
        vec![
            pairs(&[
                ("OrderId", "0145632053"),
                ("DeliveryDate", "12.03.2021"),
                ("Stadt", "München")
            ]),
            pairs(&[("OrderId", "0000001"), ("Note", "a b")]),
        ]
    );
}

#[tokio::test]
async fn a_json_object_is_one_row_and_an_array_is_many() {
    let app = spawn_app(&pipeline_config("127.0.0.1:0", "")).await;
    let resp = app
        .post_json(
            "orders",
            r#"{"OrderId":"007","customer":{"name":"Zoë"},"lines":[1,2],"Price":1.50}"#,
        )
        .await;
    assert_eq!(
        status_and_json(resp).await,
        (202, json!({"accepted": 1, "ignored": 0}))
    );
    let resp = app
        .post_json("orders", r#"[{"OrderId":"1"},{"OrderId":"2"}]"#)
        .await;
    assert_eq!(
        status_and_json(resp).await,
        (202, json!({"accepted": 2, "ignored": 0}))
    );
    let rows = app.queued_fields("orders").await;
    assert_eq!(
        rows[0],
        pairs(&[
            ("OrderId", "007"),
            ("customer.name", "Zoë"),
            ("lines", "[1,2]"),
            ("Price", "1.50")
        ])
    );
    assert_eq!(rows[2], pairs(&[("OrderId", "2")]));
}

#[tokio::test]
async fn ndjson_and_form_bodies_are_read() {
    let app = spawn_app(&pipeline_config("127.0.0.1:0", "")).await;
    let resp = app
        .post(
            "/hooks/orders",
            "application/x-ndjson",
            "{\"a\":\"1\"}\n{\"a\":\"2\"}\n",
        )
        .await;
    assert_eq!(
        status_and_json(resp).await,
        (202, json!({"accepted": 2, "ignored": 0}))
    );
    let resp = app
        .post("/hooks/orders", "application/jsonl", "{\"a\":\"3\"}")
        .await;
    assert_eq!(resp.status(), 202);
    let resp = app
        .post(
            "/hooks/orders?token=ignored",
            "application/x-www-form-urlencoded; charset=utf-8",
            "a=4&b=%C3%A4",
        )
        .await;
    assert_eq!(
        status_and_json(resp).await,
        (202, json!({"accepted": 1, "ignored": 0}))
    );
    let rows = app.queued_fields("orders").await;
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[3],
        pairs(&[("a", "4"), ("b", "ä")]),
        "the query string of a request with a body is not a row"
    );
}

#[tokio::test]
async fn every_bad_request_gets_its_status_and_a_json_error_and_queues_nothing() {
    let app = spawn_app(&with_schema("reject")).await;
    let cases: Vec<(reqwest::Response, u16, &str, &str)> = vec![
        (
            app.post_json("nope", "{}").await,
            404,
            "unknown_pipeline",
            "\"nope\"",
        ),
        (
            app.post_json("orders", "{\"OrderId\":").await,
            400,
            "malformed_body",
            "malformed JSON",
        ),
        (
            app.post(
                "/hooks/orders",
                "application/x-ndjson",
                "{\"OrderId\":\"1\"}\n{oops}\n",
            )
            .await,
            400,
            "malformed_body",
            "line 2",
        ),
        (
            app.post_json("orders", "[{\"OrderId\":\"1\"}, 7]").await,
            400,
            "malformed_body",
            "element 1",
        ),
        (
            app.post("/hooks/orders", "text/csv", "a,b").await,
            415,
            "unsupported_media_type",
            "text/csv",
        ),
        (
            app.post_json(
                "orders",
                &format!("{{\"OrderId\":\"{}\"}}", "x".repeat(5000)),
            )
            .await,
            413,
            "body_too_large",
            "4096",
        ),
        (
            app.post_json(
                "orders",
                r#"[{"OrderId":"1"},{"OrderId":"2","Quantity":"many"}]"#,
            )
            .await,
            422,
            "schema_mismatch",
            "row 1: field \"Quantity\" is not an integer",
        ),
        (
            app.client
                .put(app.url("/hooks/orders"))
                .send()
                .await
                .unwrap(),
            405,
            "method_not_allowed",
            "PUT",
        ),
        (
            app.get("/hooks/orders").await,
            400,
            "no_rows",
            "neither a body nor a query string",
        ),
        (
            app.get("/hooks/orders?a=%FF").await,
            400,
            "malformed_query",
            "UTF-8",
        ),
    ];
    for (resp, status, code, needle) in cases {
        let (got, body) = status_and_json(resp).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"], code, "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
    assert!(app.queued("orders").await.is_empty());
}

#[tokio::test]
async fn a_request_that_does_not_fit_is_refused_whole_with_retry_after() {
    let app = spawn_app(&pipeline_config("127.0.0.1:0", "")).await;
    let eight: Vec<_> = (0..8).map(|i| json!({"n": i})).collect();
    assert_eq!(
        app.post_json("orders", &json!(eight).to_string())
            .await
            .status(),
        202
    );
    let three: Vec<_> = (8..11).map(|i| json!({"n": i})).collect();
    let resp = app.post_json("orders", &json!(three).to_string()).await;
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry_after));
    let (status, body) = status_and_json(resp).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("queue_full")));
    assert_eq!(
        app.queued("orders").await.len(),
        8,
        "none of the three rows was queued"
    );
    let two: Vec<_> = (8..10).map(|i| json!({"n": i})).collect();
    assert_eq!(
        app.post_json("orders", &json!(two).to_string())
            .await
            .status(),
        202
    );
    let offsets: Vec<u64> = app
        .queued("orders")
        .await
        .iter()
        .map(|e| e.offset)
        .collect();
    assert_eq!(
        offsets,
        (0..10).collect::<Vec<_>>(),
        "queue holds exactly its capacity, in order"
    );
}

#[tokio::test]
async fn concurrent_senders_never_overfill_the_queue_and_every_202_is_kept() {
    let app = spawn_app(&pipeline_config("127.0.0.1:0", "")).await;
    let mut senders = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (client, url) = (app.client.clone(), app.url("/hooks/orders"));
        senders.spawn(async move {
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .body(format!("{{\"n\":\"{i}\"}}"))
                .send()
                .await
                .unwrap();
            (i.to_string(), resp.status().as_u16())
        });
    }
    let results = senders.join_all().await;
    assert!(
        results.iter().all(|(_, s)| *s == 202 || *s == 503),
        "{results:?}"
    );
    let mut accepted: Vec<String> = results
        .into_iter()
        .filter(|(_, s)| *s == 202)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(accepted.len(), 10);
    let mut queued: Vec<String> = app
        .queued_fields("orders")
        .await
        .into_iter()
        .map(|r| r[0].1.clone())
        .collect();
    queued.sort();
    accepted.sort();
    assert_eq!(queued, accepted);
}

#[tokio::test]
async fn the_allowlist_admits_listed_ipv4_and_refuses_others() {
    let allowed = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        r#"allow_ips = ["127.0.0.0/8"]"#,
    ))
    .await;
    assert_eq!(allowed.get("/hooks/orders?a=1").await.status(), 202);
    let refused = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        r#"allow_ips = ["10.0.0.0/8", "::1/128"]"#,
    ))
    .await;
    let (status, body) = status_and_json(refused.get("/hooks/orders?a=1").await).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "forbidden");
    assert!(body["message"].as_str().unwrap().contains("127.0.0.1"));
    assert!(refused.queued("orders").await.is_empty());
}

#[tokio::test]
async fn the_allowlist_admits_listed_ipv6_and_refuses_others() {
    let allowed = spawn_app(&pipeline_config("[::1]:0", r#"allow_ips = ["::1/128"]"#)).await;
    assert_eq!(allowed.get("/hooks/orders?a=1").await.status(), 202);
    let refused = spawn_app(&pipeline_config(
        "[::1]:0",
        r#"allow_ips = ["127.0.0.0/8", "fd00::/8"]"#,
    ))
    .await;
    let (status, body) = status_and_json(refused.get("/hooks/orders?a=1").await).await;
    assert_eq!(status, 403);
    assert!(body["message"].as_str().unwrap().contains("::1"));
}

#[tokio::test]
async fn schema_ignore_mode_drops_and_counts_mismatching_rows() {
    let app = spawn_app(&with_schema("ignore")).await;
    let body = r#"[{"OrderId":"1","Quantity":2},{"Quantity":3},{"OrderId":"3","Color":"red"},{"OrderId":"4","Express":true,"Price":9.99}]"#;
    let resp = app.post_json("orders", body).await;
    assert_eq!(
        status_and_json(resp).await,
        (202, json!({"accepted": 2, "ignored": 2}))
    );
    let ids: Vec<String> = app
        .queued_fields("orders")
        .await
        .into_iter()
        .map(|r| r[0].1.clone())
        .collect();
    assert_eq!(ids, ["1", "4"]);
    let resp = app.get("/hooks/orders?OrderId=5&Quantity=x").await;
    assert_eq!(
        status_and_json(resp).await,
        (202, json!({"accepted": 0, "ignored": 1}))
    );
    let counters = &app.app().pipeline("orders").unwrap().counters;
    assert_eq!(weir::pipeline::Counters::get(&counters.ignored), 3);
    assert_eq!(weir::pipeline::Counters::get(&counters.accepted), 2);
}

#[tokio::test]
async fn schema_reject_mode_refuses_the_request_and_names_row_and_field() {
    let app = spawn_app(&with_schema("reject")).await;
    let resp = app
        .get("/hooks/orders?OrderId=0012&Quantity=12&Price=1.5&Express=true")
        .await;
    assert_eq!(
        resp.status(),
        202,
        "text values match when they parse as the type"
    );
    let resp = app
        .post_json(
            "orders",
            r#"[{"OrderId":"1"},{"Quantity":1},{"OrderId":"2","Express":"yes"}]"#,
        )
        .await;
    let (status, body) = status_and_json(resp).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["message"],
        "row 1: field \"OrderId\" is required; row 2: field \"Express\" is not a boolean (got \"yes\")"
    );
    assert_eq!(app.queued("orders").await.len(), 1);
}

#[tokio::test]
async fn healthz_answers_ok() {
    let app = spawn_app(&pipeline_config("127.0.0.1:0", "")).await;
    let resp = app.get("/healthz").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
}
