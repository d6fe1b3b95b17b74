//! The `DataPushJob` create body: validation as the reference describes it, and the parts execution needs.
//!
//! The emulator keeps the body it received for inspection, echoes every known field the client
//! sent, and reads only what it models (target, type, file type, keys, upsert strategy, CSV
//! options) into a [`JobSpec`]. `null`, `0` and missing are accepted everywhere; unknown fields
//! are ignored.

use serde_json::{Map, Value};

use super::types::{ColumnDef, ColumnType, TextFormat};

/// Fields of the `DataPushJob` model (new and old `/integration` variants); only these are echoed.
pub(super) const KNOWN_FIELDS: &[&str] = &[
    "id",
    "targetName",
    "dataPoolId",
    "connectionId",
    "type",
    "fileType",
    "keys",
    "upsertStrategy",
    "fallbackVarcharLength",
    "tableSchema",
    "csvParsingOptions",
    "allowDuplicate",
    "mirrorTargetNames",
    "targetSchema",
    "postExecutionQuery",
    "foreignKeys",
    "status",
    "logs",
    "lastModified",
    "lastPing",
    "changeDate",
    "tenantId",
    "optionalTenantId",
    "sanitizedPostExecutionQuery",
];

/// `REPLACE` or `DELTA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JobType {
    Replace,
    Delta,
}

/// `CSV` or `PARQUET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileType {
    Csv,
    Parquet,
}

/// What a keyed upsert does with columns a chunk does not carry (semantics assumed, reference §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UpsertStrategy {
    /// Columns missing from the chunk keep their old values.
    UnchangedMetadata,
    /// Columns missing from the chunk become NULL.
    Nullification,
}

/// The `csvParsingOptions` the emulator honours; `None` means "use the default".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct CsvOptions {
    pub separator: Option<String>,
    pub quote: Option<String>,
    pub escape: Option<String>,
    pub line_ending: Option<String>,
    /// `dateFormat`, `decimalSeparator` and `thousandSeparator` for every column.
    pub values: TextFormat,
    /// `additionalColumnOptions`: per column, over `values`.
    pub columns: Vec<(String, TextFormat)>,
}

impl CsvOptions {
    /// How the values of `column` are read.
    pub(super) fn format_of(&self, column: &str) -> TextFormat {
        let mut format = self.values.clone();
        if let Some((_, own)) = self
            .columns
            .iter()
            .find(|(name, _)| name.to_lowercase() == column.to_lowercase())
        {
            if own.date_format.is_some() {
                format.date_format.clone_from(&own.date_format);
            }
            if own.decimal_separator.is_some() {
                format.decimal_separator.clone_from(&own.decimal_separator);
            }
            if own.thousand_separator.is_some() {
                format
                    .thousand_separator
                    .clone_from(&own.thousand_separator);
            }
        }
        format
    }
}

/// STRING length for columns without a schema when the job sends no `fallbackVarcharLength`, as Celonis.
pub(super) const DEFAULT_VARCHAR_LENGTH: usize = 80;

/// What execution needs to know about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JobSpec {
    pub target_name: String,
    /// The data connection (schema); `None` is the pool's global schema.
    pub connection_id: Option<String>,
    pub job_type: JobType,
    /// `None` when the client sent none: the server default, Parquet.
    pub file_type: Option<FileType>,
    /// Key columns for a DELTA upsert or delete; empty means append.
    pub keys: Vec<String>,
    pub upsert_strategy: Option<UpsertStrategy>,
    pub csv: CsvOptions,
    /// STRING length of columns the `tableSchema` does not list.
    pub fallback_varchar_length: usize,
    /// The `tableSchema` columns, empty when the job sent none.
    pub table_schema: Vec<ColumnDef>,
    /// The execute call's `duplicateRemovalColumn`: among a chunk's rows with one key, the greatest value wins.
    pub duplicate_removal_column: Option<String>,
    /// A continuous upload's order column also decides against the rows already stored: a
    /// row whose key is stored with a greater value is not applied.
    pub order_against_stored: bool,
}

/// A create body the real service would reject with 400 `FrontendHandledBackendError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{info}")]
pub(super) struct Invalid {
    /// The `frontendErrorKey`.
    pub key: &'static str,
    /// The `errorInformation`.
    pub info: String,
}

impl Invalid {
    fn new(key: &'static str, info: impl Into<String>) -> Invalid {
        Invalid {
            key,
            info: info.into(),
        }
    }
}

/// An accepted create body.
#[derive(Debug, Clone)]
pub(super) struct CreateRequest {
    /// The known fields the client sent, to echo back.
    pub echo: Map<String, Value>,
    pub spec: JobSpec,
}

/// Validates a create body sent to the pool `pool`.
pub(super) fn parse_create(body: &[u8], pool: &str) -> Result<CreateRequest, Invalid> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Invalid::new("INVALID_JSON", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(Invalid::new(
            "INVALID_JSON",
            "the body must be a DataPushJob JSON object",
        ));
    };

    let target_name = match string_field(&object, "targetName")? {
        Some(name) if !name.trim().is_empty() => name.to_owned(),
        _ => {
            return Err(Invalid::new(
                "TARGET_NAME_MISSING",
                "targetName is required",
            ));
        }
    };
    let job_type = match string_field(&object, "type")? {
        Some("REPLACE") => JobType::Replace,
        Some("DELTA") => JobType::Delta,
        Some(other) => {
            return Err(Invalid::new(
                "INVALID_TYPE",
                format!("type must be REPLACE or DELTA, got {other:?}"),
            ));
        }
        None => return Err(Invalid::new("TYPE_MISSING", "type is required")),
    };
    let file_type = match string_field(&object, "fileType")? {
        Some("CSV") => Some(FileType::Csv),
        Some("PARQUET") => Some(FileType::Parquet),
        Some(other) => {
            return Err(Invalid::new(
                "INVALID_FILE_TYPE",
                format!("fileType must be CSV or PARQUET, got {other:?}"),
            ));
        }
        None => None,
    };
    let upsert_strategy = match string_field(&object, "upsertStrategy")? {
        Some("UPSERT_WITH_UNCHANGED_METADATA") => Some(UpsertStrategy::UnchangedMetadata),
        Some("UPSERT_WITH_NULLIFICATION") => Some(UpsertStrategy::Nullification),
        Some(other) => {
            return Err(Invalid::new(
                "INVALID_UPSERT_STRATEGY",
                format!(
                    "upsertStrategy must be UPSERT_WITH_UNCHANGED_METADATA or UPSERT_WITH_NULLIFICATION, got {other:?}"
                ),
            ));
        }
        None => None,
    };
    if let Some(body_pool) = string_field(&object, "dataPoolId")?
        && !body_pool.eq_ignore_ascii_case(pool)
    {
        return Err(Invalid::new(
            "DATA_POOL_ID_MISMATCH",
            format!("dataPoolId {body_pool:?} differs from the pool in the path {pool:?}"),
        ));
    }
    let keys = keys_field(&object)?;
    let csv = csv_options(&object)?;
    let connection_id = string_field(&object, "connectionId")?
        .filter(|c| !c.is_empty())
        .map(str::to_lowercase);
    let fallback_varchar_length = match object.get("fallbackVarcharLength") {
        None | Some(Value::Null) => DEFAULT_VARCHAR_LENGTH,
        Some(value) => match value.as_u64() {
            // 0 is what Java clients send for "unset".
            Some(0) => DEFAULT_VARCHAR_LENGTH,
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => {
                return Err(Invalid::new(
                    "INVALID_FIELD",
                    "fallbackVarcharLength must be a positive integer",
                ));
            }
        },
    };
    let table_schema = table_schema(&object, fallback_varchar_length)?;

    let echo = object
        .into_iter()
        .filter(|(name, _)| KNOWN_FIELDS.contains(&name.as_str()))
        .collect();
    Ok(CreateRequest {
        echo,
        spec: JobSpec {
            target_name,
            connection_id,
            job_type,
            file_type,
            keys,
            upsert_strategy,
            csv,
            fallback_varchar_length,
            table_schema,
            duplicate_removal_column: None,
            order_against_stored: false,
        },
    })
}

/// A string field: missing or `null` is `None`, anything but a string is invalid.
fn string_field<'a>(
    object: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, Invalid> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Invalid::new(
            "INVALID_FIELD",
            format!("{name} must be a string"),
        )),
    }
}

fn keys_field(object: &Map<String, Value>) -> Result<Vec<String>, Invalid> {
    let invalid = || Invalid::new("INVALID_KEYS", "keys must be an array of column names");
    match object.get("keys") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(invalid()),
            })
            .collect(),
        Some(_) => Err(invalid()),
    }
}

fn csv_options(object: &Map<String, Value>) -> Result<CsvOptions, Invalid> {
    let options = match object.get("csvParsingOptions") {
        None | Some(Value::Null) => return Ok(CsvOptions::default()),
        Some(Value::Object(options)) => options,
        Some(_) => {
            return Err(Invalid::new(
                "INVALID_CSV_PARSING_OPTIONS",
                "csvParsingOptions must be an object",
            ));
        }
    };
    let field = |name: &str| -> Result<Option<String>, Invalid> {
        Ok(string_field(options, name)?
            .filter(|s| !s.is_empty())
            .map(str::to_owned))
    };
    let values = TextFormat {
        date_format: field("dateFormat")?,
        decimal_separator: field("decimalSeparator")?,
        thousand_separator: field("thousandSeparator")?,
    };
    let invalid = || {
        Invalid::new(
            "INVALID_CSV_PARSING_OPTIONS",
            "additionalColumnOptions must be an array of objects with a columnName",
        )
    };
    let mut columns = Vec::new();
    match options.get("additionalColumnOptions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                let Value::Object(item) = item else {
                    return Err(invalid());
                };
                let own = |name: &str| -> Result<Option<String>, Invalid> {
                    Ok(string_field(item, name)?
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned))
                };
                let name = own("columnName")?.ok_or_else(invalid)?;
                columns.push((
                    name,
                    TextFormat {
                        date_format: own("dateFormat")?,
                        decimal_separator: own("decimalSeparator")?,
                        // Plural here, singular in csvParsingOptions (reference §3.3).
                        thousand_separator: own("thousandsSeparator")?,
                    },
                ));
            }
        }
        Some(_) => return Err(invalid()),
    }
    Ok(CsvOptions {
        separator: field("separatorSequence")?,
        quote: field("quoteSequence")?,
        escape: field("escapeSequence")?,
        line_ending: field("lineEnding")?,
        values,
        columns,
    })
}

/// The `tableSchema.columns`; a STRING with no (or 0) `fieldLength` gets the fallback length.
fn table_schema(
    object: &Map<String, Value>,
    fallback_length: usize,
) -> Result<Vec<ColumnDef>, Invalid> {
    let invalid = |info: String| Invalid::new("INVALID_TABLE_SCHEMA", info);
    let columns = match object.get("tableSchema") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(schema)) => match schema.get("columns") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(columns)) => columns,
            Some(_) => return Err(invalid("tableSchema.columns must be an array".into())),
        },
        Some(_) => return Err(invalid("tableSchema must be an object".into())),
    };
    let mut defs: Vec<ColumnDef> = Vec::with_capacity(columns.len());
    for (i, column) in columns.iter().enumerate() {
        let Value::Object(column) = column else {
            return Err(invalid(format!(
                "tableSchema.columns[{i}] must be an object"
            )));
        };
        let name = match string_field(column, "columnName")? {
            Some(name) if !name.is_empty() => name,
            _ => {
                return Err(invalid(format!(
                    "tableSchema.columns[{i}].columnName is required"
                )));
            }
        };
        let kind = match string_field(column, "columnType")? {
            Some(kind) => ColumnType::parse(kind).ok_or_else(|| {
                invalid(format!(
                    "tableSchema.columns[{i}].columnType must be one of INTEGER, DATE, TIME, DATETIME, FLOAT, BOOLEAN, STRING, got {kind:?}"
                ))
            })?,
            None => {
                return Err(invalid(format!(
                    "tableSchema.columns[{i}].columnType is required"
                )));
            }
        };
        let number = |field: &str| -> Result<Option<u64>, Invalid> {
            match column.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                    invalid(format!(
                        "tableSchema.columns[{i}].{field} must be a non-negative integer"
                    ))
                }),
            }
        };
        let mut def = ColumnDef::of(name, kind);
        if kind == ColumnType::String {
            let length = number("fieldLength")?.filter(|&n| n > 0);
            def.length = Some(length.map_or(fallback_length, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }));
        }
        if kind == ColumnType::Float {
            def.decimals = number("decimals")?
                .filter(|&n| n > 0)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        }
        def.pk = matches!(column.get("pkField"), Some(Value::Bool(true)));
        if defs
            .iter()
            .any(|d| d.name.to_lowercase() == def.name.to_lowercase())
        {
            return Err(invalid(format!("tableSchema lists column {name} twice")));
        }
        defs.push(def);
    }
    Ok(defs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "a41a7264-75e5-4320-810a-04ba56b4c189";

    fn parse(body: &str) -> Result<CreateRequest, Invalid> {
        parse_create(body.as_bytes(), POOL)
    }

    #[test]
    fn a_minimal_body_is_accepted_with_parquet_as_the_unset_file_type() {
        let request = parse(r#"{"targetName":"Orders","type":"DELTA"}"#).unwrap();
        assert_eq!(request.spec.target_name, "Orders");
        assert_eq!(request.spec.job_type, JobType::Delta);
        assert_eq!(request.spec.file_type, None);
        assert!(request.spec.keys.is_empty());
    }

    #[test]
    fn nulls_zeros_and_unknown_fields_are_accepted_and_only_known_fields_echoed() {
        let request = parse(
            r#"{"id":null,"status":null,"logs":null,"targetName":"t","type":"REPLACE",
                "fileType":"CSV","fallbackVarcharLength":0,"keys":null,"csvParsingOptions":null,
                "somethingNew":1,"dataPoolId":"A41A7264-75E5-4320-810A-04BA56B4C189"}"#,
        )
        .unwrap();
        assert!(request.echo.contains_key("fallbackVarcharLength"));
        assert!(request.echo.contains_key("id"));
        assert!(!request.echo.contains_key("somethingNew"));
        assert_eq!(request.spec.file_type, Some(FileType::Csv));
    }

    #[test]
    fn missing_target_name_or_type_is_rejected() {
        assert_eq!(
            parse(r#"{"type":"DELTA"}"#).unwrap_err().key,
            "TARGET_NAME_MISSING"
        );
        assert_eq!(
            parse(r#"{"targetName":"t","type":null}"#).unwrap_err().key,
            "TYPE_MISSING"
        );
    }

    #[test]
    fn bad_enum_values_are_rejected() {
        assert_eq!(
            parse(r#"{"targetName":"t","type":"UPSERT"}"#)
                .unwrap_err()
                .key,
            "INVALID_TYPE"
        );
        assert_eq!(
            parse(r#"{"targetName":"t","type":"DELTA","fileType":"XLS"}"#)
                .unwrap_err()
                .key,
            "INVALID_FILE_TYPE"
        );
    }

    #[test]
    fn a_data_pool_id_other_than_the_path_pool_is_rejected() {
        let err = parse(r#"{"targetName":"t","type":"DELTA","dataPoolId":"other"}"#).unwrap_err();
        assert_eq!(err.key, "DATA_POOL_ID_MISMATCH");
    }

    #[test]
    fn csv_options_are_read_and_empty_strings_mean_default() {
        let request = parse(
            r#"{"targetName":"t","type":"DELTA","keys":["id"],
                "csvParsingOptions":{"separatorSequence":";","quoteSequence":"","lineEnding":"\n"}}"#,
        )
        .unwrap();
        assert_eq!(request.spec.keys, vec!["id".to_owned()]);
        assert_eq!(
            request.spec.csv,
            CsvOptions {
                separator: Some(";".into()),
                quote: None,
                escape: None,
                line_ending: Some("\n".into()),
                ..CsvOptions::default()
            }
        );
    }

    #[test]
    fn a_table_schema_and_value_formats_are_read() {
        let request = parse(
            r#"{"targetName":"t","type":"DELTA","connectionId":"Conn-1","fallbackVarcharLength":0,
                "tableSchema":{"tableName":"t","columns":[
                    {"columnName":"id","columnType":"INTEGER","pkField":true},
                    {"columnName":"name","columnType":"STRING","fieldLength":400},
                    {"columnName":"note","columnType":"STRING","fieldLength":0},
                    {"columnName":"amount","columnType":"FLOAT","decimals":2}]},
                "csvParsingOptions":{"dateFormat":"dd.MM.yyyy","decimalSeparator":",",
                    "additionalColumnOptions":[{"columnName":"At","dateFormat":"yyyy","thousandsSeparator":"."}]}}"#,
        )
        .unwrap();
        let spec = request.spec;
        assert_eq!(spec.connection_id.as_deref(), Some("conn-1"));
        assert_eq!(spec.fallback_varchar_length, 80);
        let described: Vec<String> = spec.table_schema.iter().map(ColumnDef::describe).collect();
        assert_eq!(
            described,
            ["INTEGER", "STRING(400)", "STRING(80)", "FLOAT(2)"]
        );
        assert!(spec.table_schema[0].pk);
        let at = spec.csv.format_of("at");
        assert_eq!(at.date_format.as_deref(), Some("yyyy"));
        assert_eq!(at.decimal_separator.as_deref(), Some(","));
        assert_eq!(at.thousand_separator.as_deref(), Some("."));
        assert_eq!(
            spec.csv.format_of("other").date_format.as_deref(),
            Some("dd.MM.yyyy")
        );
    }

    #[test]
    fn a_bad_table_schema_is_rejected_naming_the_column() {
        let err = parse(
            r#"{"targetName":"t","type":"DELTA","tableSchema":{"columns":[{"columnName":"x","columnType":"MONEY"}]}}"#,
        )
        .unwrap_err();
        assert_eq!(err.key, "INVALID_TABLE_SCHEMA");
        assert!(err.info.contains("columns[0].columnType"), "{}", err.info);
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_rejected() {
        assert!(parse("[]").is_err());
        assert!(parse("targetName=t").is_err());
    }
}
