//! The Continuous Batch Processing upload, `POST /continuous-batch-processing/api/v1/{pool}/items`:
//! its query, the job-less spec a file is applied with, and the item JSON it is answered with.
//!
//! Celonis loads such files asynchronously; the emulator applies each file at once, in one
//! transaction, as a DELTA upsert by `primaryKeys` (the `duplicateRemovalOrderColumn`
//! deciding between a key's rows in the file and against the rows already stored: the
//! highest wins), or an append without keys. `flushStatus` is always `"PENDING"`: the real
//! values are not documented (an assumption of the emulator).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::model::{CsvOptions, DEFAULT_VARCHAR_LENGTH, FileType, JobSpec, JobType};
use super::parquet::ParquetChunk;
use super::types::Cell;

/// The upload's query parameters (reference: "The upload call").
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ItemsQuery {
    target_name: Option<String>,
    connection_id: Option<String>,
    client_id: Option<String>,
    fallback_varchar_length: Option<String>,
    primary_keys: Option<String>,
    duplicate_removal_order_column: Option<String>,
}

/// What the upload asks for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Upload {
    pub spec: JobSpec,
    pub client_id: Option<String>,
    /// The `fallbackVarcharLength` sent, echoed in the item.
    pub fallback_varchar_length: Option<usize>,
}

/// Validates the query; the error is the plain-text body of the 400 Celonis would send.
pub(super) fn parse_query(q: ItemsQuery) -> Result<Upload, String> {
    let target_name = q
        .target_name
        .filter(|t| !t.trim().is_empty())
        .ok_or("the query parameter targetName is required")?;
    let fallback = match q.fallback_varchar_length.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    format!("fallbackVarcharLength {text:?} is not a positive integer")
                })?,
        ),
    };
    let keys: Vec<String> = q
        .primary_keys
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    let order = q.duplicate_removal_order_column.filter(|c| !c.is_empty());
    if order.is_some() && keys.is_empty() {
        return Err("duplicateRemovalOrderColumn needs primaryKeys".into());
    }
    Ok(Upload {
        spec: JobSpec {
            target_name,
            connection_id: q.connection_id.filter(|c| !c.is_empty()),
            job_type: JobType::Delta,
            file_type: Some(FileType::Parquet),
            keys,
            upsert_strategy: None,
            csv: CsvOptions::default(),
            fallback_varchar_length: fallback.unwrap_or(DEFAULT_VARCHAR_LENGTH),
            table_schema: Vec::new(),
            duplicate_removal_column: order,
            order_against_stored: true,
        },
        client_id: q.client_id.filter(|c| !c.is_empty()),
        fallback_varchar_length: fallback,
    })
}

/// The data error of the first text value of the file that is one of `bad_values`.
pub(super) fn injected_bad_value(file: &ParquetChunk, bad_values: &[String]) -> Option<String> {
    for (r, row) in file.rows.iter().enumerate() {
        for (cell, column) in row.iter().zip(&file.headers) {
            if let Cell::Text(value) = cell
                && bad_values.contains(value)
            {
                return Some(format!(
                    "row {}, column {column}: the value {value:?} could not be parsed (injected fault)",
                    r + 1
                ));
            }
        }
    }
    None
}

/// The most items `/emulator/items` keeps (the oldest go first).
const KEPT_ITEMS: usize = 10_000;

/// The uploads the emulator applied: each table's bucket, and the items answered, for
/// `GET /emulator/items`.
#[derive(Debug, Default)]
pub(super) struct Items {
    buckets: HashMap<String, Uuid>,
    log: Vec<Value>,
}

impl Items {
    /// Makes the item of an applied file (one bucket per table, named on first use) and
    /// keeps it with the pool and the table it went to.
    pub(super) fn add(
        &mut self,
        upload: &Upload,
        file_name: &str,
        pool: &str,
        table: &str,
        rows: usize,
    ) -> Value {
        let bucket = *self
            .buckets
            .entry(format!("{pool}/{}", table.to_lowercase()))
            .or_insert_with(Uuid::new_v4);
        let item = item_json(upload, file_name, bucket);
        if self.log.len() == KEPT_ITEMS {
            self.log.remove(0);
        }
        let mut record = item.clone();
        record["dataPoolId"] = pool.into();
        record["table"] = table.into();
        record["rows"] = rows.into();
        self.log.push(record);
        item
    }

    pub(super) fn log(&self) -> &[Value] {
        &self.log
    }
}

/// The 200 answer: the item made of the file.
fn item_json(upload: &Upload, file_name: &str, bucket: Uuid) -> Value {
    json!({
        "id": Uuid::new_v4().to_string(),
        "fileName": file_name,
        "bucketId": bucket.to_string(),
        "flushStatus": "PENDING",
        "clientId": upload.client_id,
        "fallbackVarcharLength": upload.fallback_varchar_length,
        "upsertStrategy": Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_the_table_keys_and_order_column() {
        let upload = parse_query(ItemsQuery {
            target_name: Some("Orders".into()),
            client_id: Some("weir-1".into()),
            fallback_varchar_length: Some("255".into()),
            primary_keys: Some("a, b".into()),
            duplicate_removal_order_column: Some("seq".into()),
            ..ItemsQuery::default()
        })
        .unwrap();
        assert_eq!(upload.spec.keys, ["a", "b"]);
        assert_eq!(upload.spec.duplicate_removal_column.as_deref(), Some("seq"));
        assert!(upload.spec.order_against_stored);
        assert_eq!(upload.spec.fallback_varchar_length, 255);
        for (q, why) in [
            (ItemsQuery::default(), "targetName"),
            (
                ItemsQuery {
                    target_name: Some("t".into()),
                    fallback_varchar_length: Some("x".into()),
                    ..ItemsQuery::default()
                },
                "fallbackVarcharLength",
            ),
            (
                ItemsQuery {
                    target_name: Some("t".into()),
                    duplicate_removal_order_column: Some("seq".into()),
                    ..ItemsQuery::default()
                },
                "needs primaryKeys",
            ),
        ] {
            let err = parse_query(q).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
