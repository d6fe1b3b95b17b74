//! Typed columns against the real emulator: the create body's `tableSchema`, types reaching
//! the table, strings longer than Celonis' 80 characters kept whole, and values that do not
//! fit their column refused at ingest.

use serde_json::json;
use weir::emulator::EmulatorConfig;
use weir::schedule::Outcome;

use crate::helpers::{delivery_config, spawn_app, spawn_emulator};

fn emulator() -> EmulatorConfig {
    EmulatorConfig {
        app_keys: vec!["test-key".into()],
        ..EmulatorConfig::default()
    }
}

const ORDERS: &str = r#"
[pipelines.schema]
fields = { OrderId = "string", Quantity = "integer", Price = "number", Express = "boolean", Note = "string" }
[[pipelines.columns]]
name = "OrderId"
from = "OrderId"
length = 10
[[pipelines.columns]]
name = "Quantity"
from = "Quantity"
[[pipelines.columns]]
name = "Price"
from = "Price"
decimals = 2
[[pipelines.columns]]
name = "Express"
from = "Express"
[[pipelines.columns]]
name = "Note"
from = "Note"
length = 400
"#;

#[tokio::test]
async fn integer_float_and_boolean_types_and_a_long_string_reach_the_table() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(&emu.base, ORDERS, "")).await;
    let note = "n".repeat(300);
    let body = json!([{"OrderId": "0145632053", "Quantity": 12, "Price": 19.5, "Express": true, "Note": note}]);
    assert_eq!(
        app.post_json("orders", &body.to_string()).await.status(),
        202
    );
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");

    let jobs = emu.jobs().await;
    assert_eq!(
        jobs[0]["request"].to_string(),
        concat!(
            r#"{"type":"DELTA","fileType":"CSV","targetName":"orders","#,
            r#""dataPoolId":"8f2c1f9e-0000-4000-8000-000000000001","#,
            r#""csvParsingOptions":{"separatorSequence":",","quoteSequence":"\"","escapeSequence":"\"","lineEnding":"\n","charSet":"UTF-8","decimalSeparator":"."},"#,
            r#""tableSchema":{"tableName":"orders","columns":["#,
            r#"{"columnName":"OrderId","columnType":"STRING","fieldLength":10,"decimals":0,"pkField":false},"#,
            r#"{"columnName":"Quantity","columnType":"INTEGER","fieldLength":0,"decimals":0,"pkField":false},"#,
            r#"{"columnName":"Price","columnType":"FLOAT","fieldLength":0,"decimals":2,"pkField":false},"#,
            r#"{"columnName":"Express","columnType":"BOOLEAN","fieldLength":0,"decimals":0,"pkField":false},"#,
            r#"{"columnName":"Note","columnType":"STRING","fieldLength":400,"decimals":0,"pkField":false}]},"#,
            r#""fallbackVarcharLength":255}"#,
        )
    );
    let table = emu.table("orders").await;
    assert_eq!(table.len(), 1);
    assert_eq!(table[0]["OrderId"], "0145632053", "leading zeros kept");
    assert_eq!(table[0]["Quantity"], 12);
    assert_eq!(table[0]["Price"], 19.5);
    assert_eq!(table[0]["Express"], true);
    assert_eq!(
        table[0]["Note"].as_str().unwrap().len(),
        300,
        "not cropped to 80"
    );
}

#[tokio::test]
async fn a_200_character_string_without_column_config_is_kept_whole() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(&emu.base, "", "")).await;
    let long = "a".repeat(200);
    let body = json!([{"Street": long}]);
    assert_eq!(
        app.post_json("orders", &body.to_string()).await.status(),
        202
    );
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");
    let jobs = emu.jobs().await;
    assert_eq!(
        jobs[0]["request"]["tableSchema"],
        json!({"tableName": "orders", "columns": [
            {"columnName": "Street", "columnType": "STRING", "fieldLength": 255, "decimals": 0, "pkField": false}
        ]})
    );
    assert_eq!(emu.column("orders", "Street").await, [long]);
}

#[tokio::test]
async fn a_too_long_or_unparsable_value_is_refused_at_ingest_with_row_and_column() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(&emu.base, ORDERS, "")).await;
    let body = json!([{"OrderId": "1"}, {"OrderId": "01234567890"}]);
    let resp = app.post_json("orders", &body.to_string()).await;
    assert_eq!(resp.status(), 422);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains(
            r#"row 1: field \"OrderId\" is 11 characters, longer than its column's length 10"#
        ),
        "{text}"
    );
    let resp = app.get("/hooks/orders?OrderId=1&Quantity=twelve").await;
    assert_eq!(resp.status(), 422);
    let text = resp.text().await.unwrap();
    assert!(text.contains("Quantity"), "{text}");
    let long = "x".repeat(256);
    let app = spawn_app(&delivery_config(&emu.base, "", "")).await;
    let resp = app
        .post_json("orders", &json!([{"a": long}]).to_string())
        .await;
    assert_eq!(resp.status(), 422, "longer than fallback_varchar_length");
    assert!(app.queued("orders").await.is_empty(), "nothing queued");
}

#[tokio::test]
async fn a_too_long_value_is_dropped_with_on_mismatch_ignore() {
    let emu = spawn_emulator(emulator()).await;
    let config = ORDERS.replace(
        "[pipelines.schema]\n",
        "[pipelines.schema]\non_mismatch = \"ignore\"\n",
    );
    let app = spawn_app(&delivery_config(&emu.base, &config, "")).await;
    let body = json!([{"OrderId": "1"}, {"OrderId": "01234567890"}]);
    assert_eq!(
        app.post_json("orders", &body.to_string()).await.status(),
        202
    );
    let queued = app.queued_fields("orders").await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0][0], ("OrderId".to_owned(), "1".to_owned()));
}
