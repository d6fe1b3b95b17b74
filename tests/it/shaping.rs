//! Payload shaping: a pipeline's `rows` expression turns a body that is not neat rows (an
//! OData wrapper, Celonis event subscriptions' JSON-in-a-string signals) into rows.

use crate::helpers::{pipeline_config, spawn_app, status_and_json};

fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn an_odata_wrapper_gives_the_rows_of_its_value_array() {
    let app = spawn_app(&pipeline_config("127.0.0.1:0", r#"rows = "body.value""#)).await;
    let body = r#"{"@odata.context": "https://erp.example/$metadata#Orders",
                   "value": [{"OrderId": "0145632053", "Qty": 3, "Customer": {"Name": "ACME"}},
                             {"OrderId": "0145632054", "Qty": 1, "Customer": {"Name": "Initech"}}]}"#;
    let (status, answer) = status_and_json(app.post_json("orders", body).await).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 2);
    assert_eq!(
        app.queued_fields("orders").await,
        vec![
            pairs(&[
                ("Customer.Name", "ACME"),
                ("OrderId", "0145632053"),
                ("Qty", "3")
            ]),
            pairs(&[
                ("Customer.Name", "Initech"),
                ("OrderId", "0145632054"),
                ("Qty", "1")
            ]),
        ],
        "nested objects flatten as in any JSON body; fields come in name order"
    );
    app.shutdown().await;
}

/// Seed 001: a page of Knowledge Model events, each `signal` JSON inside a string with an
/// `attributes` list; one row per event, one column per attribute.
const EVENT_PAGE: &str = r#"{
    "pageSize": 2,
    "total": 0,
    "content": [
        {
            "subscriptionId": "XXX-YYY-ZZZZ",
            "triggerId": "97185b79-d6e9-4425-bbee-225627533149",
            "signal": "{\"id\":\"a8ffef1d-aba0-4520-ae1a-02cecc7b7e4e\",\"recordIdentifier\":\"800A3000531000\",\"typedRecordIdentifier\":\"800A3000531000\",\"attributes\":[{\"attributeId\":\"ATTRIBUTE_1\",\"signalId\":\"a8ffef1d-aba0-4520-ae1a-02cecc7b7e4e\",\"value\":null,\"columnType\":\"STRING\"},{\"attributeId\":\"NET_VALUE\",\"signalId\":\"a8ffef1d-aba0-4520-ae1a-02cecc7b7e4e\",\"value\":\"125.50\",\"columnType\":\"FLOAT\"}],\"creationDate\":1699010395821}"
        },
        {
            "subscriptionId": "XXX-YYY-ZZZZ",
            "triggerId": "97185b79-d6e9-4425-bbee-225627533149",
            "signal": "{\"id\":\"8cf03551-471c-41f0-a85c-e88646eef354\",\"recordIdentifier\":\"80000000130071000\",\"typedRecordIdentifier\":\"80000000130071000\",\"attributes\":[{\"attributeId\":\"ATTRIBUTE_1\",\"signalId\":\"8cf03551-471c-41f0-a85c-e88646eef354\",\"value\":\"D1\",\"columnType\":\"STRING\"},{\"attributeId\":\"NET_VALUE\",\"signalId\":\"8cf03551-471c-41f0-a85c-e88646eef354\",\"value\":\"99.00\",\"columnType\":\"FLOAT\"}],\"creationDate\":1699010395821}"
        }
    ]
}"#;

/// The README's expression for seed 001's events.
const SIGNALS: &str = "body.content.map(e, parseJson(e.signal)).map(s, merge({'signalId': s.id, 'recordIdentifier': s.recordIdentifier, 'creationDate': s.creationDate, 'triggerId': ''}, toMap(s.attributes, 'attributeId', 'value')))";

#[tokio::test]
async fn an_event_page_with_two_signals_becomes_two_rows_with_a_column_per_attribute() {
    let app = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        &format!("rows = \"{SIGNALS}\""),
    ))
    .await;
    let (status, answer) = status_and_json(app.post_json("orders", EVENT_PAGE).await).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 2);
    assert_eq!(
        app.queued_fields("orders").await,
        vec![
            pairs(&[
                ("ATTRIBUTE_1", ""),
                ("NET_VALUE", "125.50"),
                ("creationDate", "1699010395821"),
                ("recordIdentifier", "800A3000531000"),
                ("signalId", "a8ffef1d-aba0-4520-ae1a-02cecc7b7e4e"),
                ("triggerId", ""),
            ]),
            pairs(&[
                ("ATTRIBUTE_1", "D1"),
                ("NET_VALUE", "99.00"),
                ("creationDate", "1699010395821"),
                ("recordIdentifier", "80000000130071000"),
                ("signalId", "8cf03551-471c-41f0-a85c-e88646eef354"),
                ("triggerId", ""),
            ]),
        ]
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_body_the_expression_fails_on_is_400_with_the_cel_error_and_queues_nothing() {
    let app = spawn_app(&pipeline_config(
        "127.0.0.1:0",
        &format!("rows = \"{SIGNALS}\""),
    ))
    .await;
    for (body, needle) in [
        (r#"{"content": [{"signal": "not json"}]}"#, "parseJson"),
        (r#"{"value": []}"#, "content"),
        (
            r#"{"content": [{"signal": "{\"id\": 1, \"attributes\": [3]}"}]}"#,
            "toMap",
        ),
    ] {
        let (status, e) = status_and_json(app.post_json("orders", body).await).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert_eq!(e["error"], "rows_expression_failed");
        let message = e["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
        assert!(
            message.contains("body.content.map"),
            "names the expression: {message}"
        );
    }
    // A result that is not a list of maps.
    let app2 = spawn_app(&pipeline_config("127.0.0.1:0", r#"rows = "body.value""#)).await;
    let (status, e) = status_and_json(app2.post_json("orders", r#"{"value": [1, 2]}"#).await).await;
    assert_eq!(status, 400);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("element 0 of the list is int, not a map"),
        "{e}"
    );
    // The same body without the wrapper is an error too, not a row.
    let (status, _) = status_and_json(app2.post_json("orders", r#"{"OrderId": "1"}"#).await).await;
    assert_eq!(status, 400);
    assert!(app.queued("orders").await.is_empty() && app2.queued("orders").await.is_empty());
    app.shutdown().await;
    app2.shutdown().await;
}

/// Seed 003: FinOps business events for two entities posted to one URL, each entity to its
/// own table.
fn finops(extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"

[[pipelines]]
name = "customer_groups"
hook = "finops"
schedule = "1h"
filter = "row.EntityName == 'Customer groups'"
{extra}
[pipelines.sink]
kind = "celonis"
url = "http://127.0.0.1:9"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "customer_groups"
app_key = "k"

[[pipelines]]
name = "vendors"
hook = "finops"
schedule = "1h"
filter = "row.EntityName == 'Vendors'"
{extra}
[pipelines.schema]
required = ["VendorAccount"]
on_mismatch = "ignore"
[pipelines.sink]
kind = "celonis"
url = "http://127.0.0.1:9"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "vendors"
app_key = "k"
"#
    )
}

const EVENTS: &str = r#"[
  {"BusinessEventId": "1", "EntityName": "Customer groups", "CustomerGroupId": "10"},
  {"BusinessEventId": "2", "EntityName": "Vendors", "VendorAccount": "V-001"},
  {"BusinessEventId": "3", "EntityName": "Vendors"},
  {"BusinessEventId": "4", "EntityName": "Released products", "ItemNumber": "A-1"}
]"#;

#[tokio::test]
async fn one_finops_url_feeds_two_tables_by_entity_name_with_counts_per_pipeline() {
    let app = spawn_app(&finops("")).await;
    let (status, answer) = status_and_json(app.post_json("finops", EVENTS).await).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer,
        serde_json::json!({
            "accepted": 2,
            "ignored": 2,
            "unrouted": 2,
            "pipelines": {
                "customer_groups": {"accepted": 1, "ignored": 3},
                "vendors": {"accepted": 1, "ignored": 3}
            }
        }),
        "event 3 fails the vendors' schema, event 4 matches no filter"
    );
    assert_eq!(app.queued("customer_groups").await.len(), 1);
    let vendors = app.queued_fields("vendors").await;
    assert_eq!(vendors.len(), 1);
    assert!(vendors[0].contains(&("VendorAccount".to_owned(), "V-001".to_owned())));
    // A pipeline that shares a hook is not reachable under its own name.
    assert_eq!(app.post_json("vendors", EVENTS).await.status(), 404);
    // A dry run routes the same way and queues nothing.
    let dry = app
        .post(
            "/hooks/finops?dry_run=true",
            "application/json",
            EVENTS.to_owned(),
        )
        .await;
    let (status, dry) = status_and_json(dry).await;
    assert_eq!(status, 200);
    assert_eq!(dry["pipelines"]["vendors"]["accepted"], 1);
    assert_eq!(
        dry["pipelines"]["vendors"]["sink"]["table"], "vendors",
        "{dry}"
    );
    assert_eq!(app.queued("vendors").await.len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn with_unrouted_reject_a_request_with_a_row_for_no_table_queues_nothing() {
    let app = spawn_app(&finops("unrouted = \"reject\"")).await;
    let (status, e) = status_and_json(app.post_json("finops", EVENTS).await).await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["error"], "unrouted");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("2 of 4 rows (the first is row 2)"),
        "{e}"
    );
    assert!(app.queued("customer_groups").await.is_empty());
    assert!(
        app.queued("vendors").await.is_empty(),
        "all or nothing across pipelines"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_of_one_pipeline_refuses_the_request_for_every_pipeline() {
    let app = spawn_app(&finops("queue_capacity = 1")).await;
    let one_each = r#"[{"EntityName": "Customer groups", "CustomerGroupId": "10"},
                       {"EntityName": "Vendors", "VendorAccount": "V-001"}]"#;
    assert_eq!(app.post_json("finops", one_each).await.status(), 202);
    let only_vendor = r#"[{"EntityName": "Vendors", "VendorAccount": "V-002"}]"#;
    let both = format!(
        "[{}, {}]",
        r#"{"EntityName": "Customer groups", "CustomerGroupId": "11"}"#,
        &only_vendor[1..only_vendor.len() - 1]
    );
    let (status, e) = status_and_json(app.post_json("finops", &both).await).await;
    assert_eq!(status, 503, "{e}");
    assert_eq!(e["error"], "queue_full");
    assert_eq!(
        app.queued("customer_groups").await.len(),
        1,
        "nothing of it queued"
    );
    assert_eq!(app.queued("vendors").await.len(), 1);
    app.shutdown().await;
}
