//! Typed columns against the real emulator: the create body's `tableSchema`, types reaching
//! the table, strings longer than Celonis' 80 characters kept whole, and values that do not
//! fit their column refused at ingest; dates, datetimes, times and decimal commas as senders
//! write them, reaching the table as what they meant.

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
            r#""csvParsingOptions":{"separatorSequence":",","quoteSequence":"\"","escapeSequence":"\"","lineEnding":"\n","charSet":"UTF-8","decimalSeparator":".","dateFormat":"yyyy-MM-dd'T'HH:mm:ss.SSSXXX"},"#,
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

/// Seed 000's orders as an ERP sends them: German dates and decimal commas, a timestamp with
/// an offset, a time of day and an epoch.
const SEED_ORDERS: &str = r#"
[pipelines.schema]
fields = { OrderId = "string", OrderDate = "string", ChangedAt = "string", Slot = "string", Amount = "string", SyncedMs = "integer" }
[[pipelines.columns]]
name = "OrderId"
from = "OrderId"
[[pipelines.columns]]
name = "OrderDate"
from = "OrderDate"
type = "DATE"
format = "dd.MM.yyyy"
[[pipelines.columns]]
name = "ChangedAt"
from = "ChangedAt"
type = "DATETIME"
format = "yyyy-MM-dd'T'HH:mm:ssXXX"
[[pipelines.columns]]
name = "Slot"
from = "Slot"
type = "TIME"
[[pipelines.columns]]
name = "Amount"
from = "Amount"
type = "FLOAT"
decimals = 2
decimal_separator = ","
thousands_separator = "."
[[pipelines.columns]]
name = "SyncedAt"
from = "SyncedMs"
type = "DATETIME"
format = "epoch_ms"
"#;

#[tokio::test]
async fn dates_times_and_decimal_commas_reach_the_table_as_the_sender_meant() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(&emu.base, SEED_ORDERS, "")).await;
    let body = json!([
        {"OrderId": "1", "OrderDate": "12.03.2021", "ChangedAt": "2021-03-12T08:30:00+01:00",
         "Slot": "14:05", "Amount": "1.234,50", "SyncedMs": 1615537800250_i64},
        {"OrderId": "2", "OrderDate": "01.01.2000", "ChangedAt": "1999-12-31T23:59:59-02:00",
         "Slot": "00:00:01.5", "Amount": "-0,5", "SyncedMs": 0}
    ]);
    let resp = app.post_json("orders", &body.to_string()).await;
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    let report = app.app().flush("orders").await.unwrap();
    assert_eq!(report.outcome, Outcome::Delivered, "{report:?}");

    let jobs = emu.jobs().await;
    assert_eq!(
        jobs[0]["request"]["csvParsingOptions"].to_string(),
        concat!(
            r#"{"separatorSequence":",","quoteSequence":"\"","escapeSequence":"\"","lineEnding":"\n","#,
            r#""charSet":"UTF-8","decimalSeparator":".","dateFormat":"yyyy-MM-dd'T'HH:mm:ss.SSSXXX","#,
            r#""additionalColumnOptions":[{"columnName":"OrderDate","dateFormat":"yyyy-MM-dd"},"#,
            r#"{"columnName":"Slot","dateFormat":"HH:mm:ss.SSS"}]}"#,
        )
    );
    let types: Vec<String> = jobs[0]["request"]["tableSchema"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["columnType"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        ["STRING", "DATE", "DATETIME", "TIME", "FLOAT", "DATETIME"]
    );
    let table = emu.table("orders").await;
    assert_eq!(table.len(), 2, "{table:?}");
    let row = |id: &str| table.iter().find(|r| r["OrderId"] == id).unwrap().clone();
    let first = row("1");
    assert_eq!(first["OrderDate"], "2021-03-12");
    assert_eq!(first["ChangedAt"], "2021-03-12T07:30:00.000Z");
    assert_eq!(first["Slot"], "14:05:00.000");
    assert_eq!(first["Amount"], 1234.5);
    assert_eq!(first["SyncedAt"], "2021-03-12T08:30:00.250Z");
    let second = row("2");
    assert_eq!(second["OrderDate"], "2000-01-01");
    assert_eq!(second["ChangedAt"], "2000-01-01T01:59:59.000Z");
    assert_eq!(second["Slot"], "00:00:01.500");
    assert_eq!(second["Amount"], -0.5);
    assert_eq!(second["SyncedAt"], "1970-01-01T00:00:00.000Z");
}

#[tokio::test]
async fn a_date_that_does_not_match_its_format_is_refused_at_ingest() {
    let emu = spawn_emulator(emulator()).await;
    let app = spawn_app(&delivery_config(&emu.base, SEED_ORDERS, "")).await;
    let body = json!([
        {"OrderId": "1", "OrderDate": "12.03.2021"},
        {"OrderId": "2", "OrderDate": "2021-03-12"}
    ]);
    let resp = app.post_json("orders", &body.to_string()).await;
    assert_eq!(resp.status(), 422);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains(r#"row 1: field \"OrderDate\" does not parse as its column's type DATE (does not match the format \"dd.MM.yyyy\""#),
        "{text}"
    );
    let resp = app.get("/hooks/orders?OrderId=3&Amount=12%2C5x").await;
    assert_eq!(resp.status(), 422);
    let text = resp.text().await.unwrap();
    assert!(text.contains("Amount") && text.contains("FLOAT"), "{text}");
    assert!(app.queued("orders").await.is_empty(), "nothing queued");
}
