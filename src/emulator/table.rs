//! Applying an executed job's chunks to typed SQLite tables: REPLACE, DELTA upsert by keys, DELTA append, delete by keys.
//!
//! A table's identity is (`connectionId`, `targetName`) compared case-insensitively, as
//! pycelonis looks tables up with `casefold()` (reference §6.1). Tables of the pool's global
//! schema (no `connectionId`) are stored under their target name, tables of a data connection
//! as `{connectionId}/{targetName}`, so databases written before connections counted keep
//! working. A table keeps the case it was created with.
//!
//! Column types come from the job's `tableSchema`; columns it does not list are STRING of the
//! job's `fallbackVarcharLength` (80 by default) for CSV, and take the type the Parquet schema
//! implies for Parquet. Once created, a table's types stay for later jobs; a DELTA job whose
//! schema contradicts them fails. Row order is rowid order, and an upsert updates the existing
//! row in place so it keeps its position.

use std::collections::HashMap;

use axum::body::Bytes;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, Transaction, params_from_iter};

use super::chunk::{CsvError, parse_csv};
use super::model::{FileType, JobSpec, JobType, UpsertStrategy};
use super::parquet::read_parquet;
use super::types::{Cell, ColumnDef, ColumnType, Converted, convert};

/// Which endpoint a chunk arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkKind {
    Upsert,
    Delete,
}

impl ChunkKind {
    /// The `DataPushChunk.type` value.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ChunkKind::Upsert => "UPSERT",
            ChunkKind::Delete => "DELETE",
        }
    }
}

/// Why a job ends in ERROR; the display text becomes the job's log line.
#[derive(Debug, thiserror::Error)]
pub(super) enum JobFailure {
    #[error("delete chunks are only possible for DELTA jobs (DELETE_ONLY_POSSIBLE_FOR_DELTA)")]
    DeleteOnReplace,
    #[error("delete chunks need keys on the job")]
    DeleteWithoutKeys,
    #[error("chunk {chunk}: {source}")]
    Csv {
        chunk: usize,
        #[source]
        source: CsvError,
    },
    #[error("chunk {chunk}: {message}")]
    Parquet { chunk: usize, message: String },
    #[error("chunk {chunk}: key column {column} is missing")]
    MissingKeyColumn { chunk: usize, column: String },
    #[error("chunk {chunk}: duplicateRemovalColumn {column} is missing")]
    MissingDuplicateRemovalColumn { chunk: usize, column: String },
    #[error("chunk {chunk}: column {column} appears twice (DUPLICATE_COLUMN_DETECTED)")]
    DuplicateColumn { chunk: usize, column: String },
    #[error("chunk {chunk}: a column has an empty name")]
    EmptyColumnName { chunk: usize },
    #[error("chunk {chunk}, row {row}, column {column}: the value {reason} (column type {kind})")]
    BadValue {
        chunk: usize,
        row: usize,
        column: String,
        kind: String,
        reason: String,
    },
    #[error(
        "column {column} of table {table} is {existing}, the job's tableSchema says {requested}"
    )]
    TypeConflict {
        table: String,
        column: String,
        existing: String,
        requested: String,
    },
    #[error("the emulator database failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// What an applied job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Applied {
    /// The table's name as stored.
    pub table: String,
    pub rows_upserted: usize,
    pub rows_deleted: usize,
    /// Log lines for a job that still ends DONE, e.g. cropped values.
    pub warnings: Vec<String>,
}

/// A table read back for inspection.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TableDump {
    pub name: String,
    pub columns: Vec<ColumnDef>,
    pub rows: Vec<Vec<SqlValue>>,
}

/// Quotes an SQL identifier; names come from users.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn same_name(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// The SQLite name of a target in a connection (`None`: the pool's global schema).
pub(super) fn storage_name(connection_id: Option<&str>, target_name: &str) -> String {
    match connection_id {
        Some(connection) => format!("{connection}/{target_name}"),
        None => target_name.to_owned(),
    }
}

/// The stored name of the table whose identity is `name`, if it exists.
pub(super) fn find_table(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )?;
    let names = stmt.query_map([], |row| row.get::<_, String>(0))?;
    for stored in names {
        let stored = stored?;
        if same_name(&stored, name) {
            return Ok(Some(stored));
        }
    }
    Ok(None)
}

/// A table's columns with their types, from their SQLite declared types.
fn table_columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<ColumnDef>> {
    let mut stmt = conn.prepare("SELECT name, type FROM pragma_table_info(?1) ORDER BY cid")?;
    stmt.query_map([table], |row| {
        Ok(ColumnDef::from_declared(
            &row.get::<_, String>(0)?,
            &row.get::<_, String>(1)?,
        ))
    })?
    .collect()
}

/// Reads a table in rowid order.
pub(super) fn read_table(conn: &Connection, name: &str) -> rusqlite::Result<Option<TableDump>> {
    let Some(stored) = find_table(conn, name)? else {
        return Ok(None);
    };
    let columns = table_columns(conn, &stored)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT * FROM {} ORDER BY rowid",
        quote_ident(&stored)
    ))?;
    let width = columns.len();
    let rows = stmt
        .query_map([], |row| {
            (0..width)
                .map(|i| row.get::<_, SqlValue>(i))
                .collect::<rusqlite::Result<Vec<_>>>()
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(TableDump {
        name: stored,
        columns,
        rows,
    }))
}

/// A table as JSON: its name, its columns as Celonis would show them, and typed rows
/// (BOOLEAN as `true`/`false`, numbers as numbers, dates and strings as text).
pub(super) fn dump_json(dump: TableDump) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let schema: Vec<Value> = dump
        .columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.kind.as_str(), "length": c.length, "decimals": c.decimals})
        })
        .collect();
    let rows: Vec<Value> = dump
        .rows
        .into_iter()
        .map(|row| {
            let object: Map<String, Value> = dump
                .columns
                .iter()
                .zip(row)
                .map(|(column, value)| {
                    let value = match value {
                        SqlValue::Null => Value::Null,
                        SqlValue::Integer(i) if column.kind == ColumnType::Boolean => {
                            Value::Bool(i != 0)
                        }
                        SqlValue::Integer(i) => Value::from(i),
                        SqlValue::Real(f) => Value::from(f),
                        SqlValue::Text(t) => Value::String(t),
                        SqlValue::Blob(b) => {
                            Value::String(String::from_utf8_lossy(&b).into_owned())
                        }
                    };
                    (column.name.clone(), value)
                })
                .collect();
            Value::Object(object)
        })
        .collect();
    let names: Vec<&str> = dump.columns.iter().map(|c| c.name.as_str()).collect();
    json!({"table": dump.name, "columns": names, "schema": schema, "rows": rows})
}

/// A stored value as text.
pub(super) fn value_text(value: rusqlite::types::ValueRef<'_>) -> Option<String> {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

/// A chunk as it was uploaded: its header and its rows of cells, before the table's types.
struct Decoded {
    kind: ChunkKind,
    headers: Vec<String>,
    /// The types a Parquet schema implies; `None` for CSV.
    implied: Option<Vec<ColumnType>>,
    rows: Vec<Vec<Cell>>,
}

fn decode(
    index: usize,
    kind: ChunkKind,
    bytes: &[u8],
    spec: &JobSpec,
) -> Result<Decoded, JobFailure> {
    let chunk = index + 1;
    // The API's default file type is Parquet (reference §3.1).
    match spec.file_type.unwrap_or(FileType::Parquet) {
        FileType::Csv => {
            let table =
                parse_csv(bytes, &spec.csv).map_err(|source| JobFailure::Csv { chunk, source })?;
            Ok(Decoded {
                kind,
                headers: table.headers,
                implied: None,
                rows: table
                    .rows
                    .into_iter()
                    .map(|row| row.into_iter().map(Cell::Text).collect())
                    .collect(),
            })
        }
        FileType::Parquet => {
            let table = read_parquet(Bytes::copy_from_slice(bytes))
                .map_err(|message| JobFailure::Parquet { chunk, message })?;
            Ok(Decoded {
                kind,
                headers: table.headers,
                implied: Some(table.types),
                rows: table.rows,
            })
        }
    }
}

/// A chunk with its values converted to the table's types.
struct Typed {
    kind: ChunkKind,
    /// Stored column names, in the chunk's order.
    columns: Vec<String>,
    rows: Vec<Vec<SqlValue>>,
}

/// Applies a job's chunks, in upload order, in one transaction: either all of it or none.
pub(super) fn apply_job(
    conn: &mut Connection,
    spec: &JobSpec,
    chunks: &[(ChunkKind, &[u8])],
) -> Result<Applied, JobFailure> {
    let has_deletes = chunks.iter().any(|(kind, _)| *kind == ChunkKind::Delete);
    if has_deletes && spec.job_type == JobType::Replace {
        return Err(JobFailure::DeleteOnReplace);
    }
    let keyed = spec.job_type == JobType::Delta && !spec.keys.is_empty();
    if has_deletes && !keyed {
        return Err(JobFailure::DeleteWithoutKeys);
    }

    let mut decoded = Vec::with_capacity(chunks.len());
    for (index, (kind, bytes)) in chunks.iter().enumerate() {
        let chunk = index + 1;
        let table = decode(index, *kind, bytes, spec)?;
        check_headers(chunk, &table.headers)?;
        if keyed {
            for key in &spec.keys {
                if !table.headers.iter().any(|h| same_name(h, key)) {
                    return Err(JobFailure::MissingKeyColumn {
                        chunk,
                        column: key.clone(),
                    });
                }
            }
        }
        if let (true, ChunkKind::Upsert, Some(column)) =
            (keyed, kind, &spec.duplicate_removal_column)
            && position(&table.headers, column).is_none()
        {
            return Err(JobFailure::MissingDuplicateRemovalColumn {
                chunk,
                column: column.clone(),
            });
        }
        decoded.push(table);
    }

    let target = storage_name(spec.connection_id.as_deref(), &spec.target_name);
    let tx = conn.transaction()?;
    let existing = find_table(&tx, &target)?;
    let mut columns = match &existing {
        Some(stored) => table_columns(&tx, stored)?,
        None => Vec::new(),
    };
    let mut table = existing.clone();
    if spec.job_type == JobType::Replace {
        if let Some(stored) = &existing {
            tx.execute_batch(&format!("DROP TABLE {}", quote_ident(stored)))?;
        }
        table = None;
        if decoded.iter().any(|d| d.kind == ChunkKind::Upsert) {
            columns.clear();
        }
    }
    // A later job keeps the table's types: a schema that says otherwise is an error, not a change.
    for wanted in &spec.table_schema {
        if let Some(have) = columns.iter().find(|c| same_name(&c.name, &wanted.name))
            && !have.same_type(wanted)
            // A column of a database written before types existed takes any type.
            && !(have.kind == ColumnType::String && have.length.is_none())
        {
            return Err(JobFailure::TypeConflict {
                table: table.clone().unwrap_or_else(|| target.clone()),
                column: have.name.clone(),
                existing: have.describe(),
                requested: wanted.describe(),
            });
        }
    }
    let new_column = |name: &str, implied: Option<ColumnType>| -> ColumnDef {
        if let Some(def) = spec.table_schema.iter().find(|d| same_name(&d.name, name)) {
            let mut def = def.clone();
            def.name = name.to_owned();
            return def;
        }
        match implied {
            Some(ColumnType::String) | None => {
                ColumnDef::string(name, spec.fallback_varchar_length)
            }
            Some(kind) => ColumnDef::of(name, kind),
        }
    };
    let mut added = Vec::new();
    for chunk in &decoded {
        // Upserts bring their columns; deletes only need the key columns to exist.
        for (i, header) in chunk.headers.iter().enumerate() {
            let is_key = spec.keys.iter().any(|k| same_name(k, header));
            if (chunk.kind == ChunkKind::Upsert || is_key)
                && !columns.iter().any(|c| same_name(&c.name, header))
            {
                let def = new_column(header, chunk.implied.as_ref().map(|t| t[i]));
                columns.push(def.clone());
                added.push(def);
            }
        }
    }
    if table.is_none() && !columns.is_empty() {
        // Columns the schema lists but no chunk carries are part of the table too.
        for def in &spec.table_schema {
            if !columns.iter().any(|c| same_name(&c.name, &def.name)) {
                columns.push(def.clone());
            }
        }
        let definition: Vec<String> = columns
            .iter()
            .map(|c| format!("{} {}", quote_ident(&c.name), c.declared()))
            .collect();
        tx.execute_batch(&format!(
            "CREATE TABLE {} ({})",
            quote_ident(&target),
            definition.join(", ")
        ))?;
        table = Some(target.clone());
    } else if let Some(stored) = &table {
        for def in &added {
            tx.execute_batch(&format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                quote_ident(stored),
                quote_ident(&def.name),
                def.declared()
            ))?;
        }
    }

    let mut applied = Applied {
        table: table.clone().unwrap_or_else(|| target.clone()),
        rows_upserted: 0,
        rows_deleted: 0,
        warnings: Vec::new(),
    };
    let Some(table) = table else {
        tx.commit()?;
        return Ok(applied);
    };

    let mut cropped: Vec<(String, usize, usize)> = Vec::new();
    let mut typed = Vec::with_capacity(decoded.len());
    for (index, chunk) in decoded.into_iter().enumerate() {
        typed.push(convert_chunk(
            index + 1,
            chunk,
            &columns,
            spec,
            &mut cropped,
        )?);
    }
    for (column, length, count) in cropped {
        applied.warnings.push(format!(
            "value cropped to {length} characters in column {column} ({count} values)"
        ));
    }
    let key_columns: Vec<String> = spec
        .keys
        .iter()
        .map(|key| stored_column(&columns, key))
        .collect();
    if keyed {
        if let Some(column) = &spec.duplicate_removal_column {
            let order = stored_column(&columns, column);
            let numeric = columns
                .iter()
                .find(|c| c.name == order)
                .is_some_and(|c| matches!(c.kind, ColumnType::Integer | ColumnType::Float));
            remove_duplicates(&mut typed, &key_columns, &order, numeric);
        }
        let index_name = format!(
            "emulator_keys_{}_{}",
            table.to_lowercase(),
            key_columns.join("_").to_lowercase()
        );
        let index_columns: Vec<String> = key_columns.iter().map(|k| quote_ident(k)).collect();
        tx.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
            quote_ident(&index_name),
            quote_ident(&table),
            index_columns.join(", ")
        ))?;
    }

    let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    // The order column and whether it is numeric, when it decides against stored rows too.
    let stored_order = match (&spec.duplicate_removal_column, spec.order_against_stored) {
        (Some(column), true) if keyed => {
            let order = stored_column(&columns, column);
            let numeric = columns
                .iter()
                .find(|c| c.name == order)
                .is_some_and(|c| matches!(c.kind, ColumnType::Integer | ColumnType::Float));
            Some((order, numeric))
        }
        _ => None,
    };
    for chunk in &typed {
        let key_positions: Vec<usize> = key_columns
            .iter()
            .filter_map(|key| chunk.columns.iter().position(|c| c == key))
            .collect();
        match chunk.kind {
            ChunkKind::Delete => {
                applied.rows_deleted +=
                    delete_rows(&tx, &table, &key_columns, &key_positions, chunk)?;
            }
            ChunkKind::Upsert if keyed => {
                // Assumption (reference §6.3): without a strategy, supplied columns are merged.
                let strategy = spec
                    .upsert_strategy
                    .unwrap_or(UpsertStrategy::UnchangedMetadata);
                applied.rows_upserted += upsert_rows(
                    &tx,
                    &table,
                    &names,
                    &key_columns,
                    &key_positions,
                    strategy,
                    stored_order.as_ref().map(|(o, n)| (o.as_str(), *n)),
                    chunk,
                )?;
            }
            ChunkKind::Upsert => {
                applied.rows_upserted += insert_rows(&tx, &table, chunk)?;
            }
        }
    }
    tx.commit()?;
    Ok(applied)
}

/// Converts a chunk's cells to the table's column types; a value that does not fit fails the job.
fn convert_chunk(
    chunk: usize,
    decoded: Decoded,
    columns: &[ColumnDef],
    spec: &JobSpec,
    cropped: &mut Vec<(String, usize, usize)>,
) -> Result<Typed, JobFailure> {
    // Deletes carry only what identifies rows: their key columns.
    let wanted: Vec<usize> = (0..decoded.headers.len())
        .filter(|&i| {
            decoded.kind == ChunkKind::Upsert
                || spec.keys.iter().any(|k| same_name(k, &decoded.headers[i]))
        })
        .collect();
    let defs: Vec<&ColumnDef> = wanted
        .iter()
        .map(|&i| {
            columns
                .iter()
                .find(|c| same_name(&c.name, &decoded.headers[i]))
                // Every header was added to the table's columns before conversion.
                .expect("chunk column is a table column")
        })
        .collect();
    let formats: Vec<_> = wanted
        .iter()
        .map(|&i| spec.csv.format_of(&decoded.headers[i]))
        .collect();
    let mut rows = Vec::with_capacity(decoded.rows.len());
    for (row_index, row) in decoded.rows.into_iter().enumerate() {
        let mut cells: Vec<Option<Cell>> = row.into_iter().map(Some).collect();
        let mut values = Vec::with_capacity(wanted.len());
        for (slot, &i) in wanted.iter().enumerate() {
            let def = defs[slot];
            let cell = cells[i].take().unwrap_or(Cell::Null);
            match convert(def, cell, &formats[slot]) {
                Ok(Converted::Value(value)) => values.push(value),
                Ok(Converted::Cropped(value)) => {
                    values.push(value);
                    let length = def.length.unwrap_or_default();
                    match cropped.iter_mut().find(|(name, _, _)| *name == def.name) {
                        Some((_, _, count)) => *count += 1,
                        None => cropped.push((def.name.clone(), length, 1)),
                    }
                }
                Err(reason) => {
                    return Err(JobFailure::BadValue {
                        chunk,
                        row: row_index + 1,
                        column: def.name.clone(),
                        kind: def.describe(),
                        reason,
                    });
                }
            }
        }
        rows.push(values);
    }
    Ok(Typed {
        kind: decoded.kind,
        columns: defs.iter().map(|d| d.name.clone()).collect(),
        rows,
    })
}

fn position(headers: &[String], name: &str) -> Option<usize> {
    headers.iter().position(|h| same_name(h, name))
}

/// Among every upsert row of the job with one key, keeps the one with the greatest `order`
/// value, at the place of the key's first row; on a tie the later row wins.
fn remove_duplicates(chunks: &mut [Typed], keys: &[String], order: &str, numeric: bool) {
    // (chunk, row) of the first row per key, and (chunk, row) of the best one.
    type Place = (usize, usize);
    let mut first: HashMap<String, (Place, Place)> = HashMap::new();
    for (c, chunk) in chunks.iter().enumerate() {
        if chunk.kind != ChunkKind::Upsert {
            continue;
        }
        let key_positions: Vec<usize> = keys
            .iter()
            .filter_map(|k| chunk.columns.iter().position(|c| c == k))
            .collect();
        let Some(order_at) = chunk.columns.iter().position(|c| c == order) else {
            continue;
        };
        for (r, row) in chunk.rows.iter().enumerate() {
            let key = format!(
                "{:?}",
                key_positions.iter().map(|&p| &row[p]).collect::<Vec<_>>()
            );
            match first.get_mut(&key) {
                None => {
                    first.insert(key, ((c, r), (c, r)));
                }
                Some((_, best)) => {
                    let best_chunk = &chunks[best.0];
                    let best_order = best_chunk
                        .columns
                        .iter()
                        .position(|c| c == order)
                        .map(|p| &best_chunk.rows[best.1][p]);
                    if best_order.is_none_or(|b| !greater(b, &row[order_at], numeric)) {
                        *best = (c, r);
                    }
                }
            }
        }
    }
    // The best row takes the first row's place when both chunks have the same columns.
    let mut keep: HashMap<(usize, usize), Option<(usize, usize)>> = HashMap::new();
    for (place, best) in first.into_values() {
        if best == place || chunks[best.0].columns == chunks[place.0].columns {
            keep.insert(place, Some(best));
        } else {
            keep.insert(best, None);
        }
    }
    let mut moved: HashMap<(usize, usize), Vec<SqlValue>> = HashMap::new();
    for (&place, best) in &keep {
        if let Some(best) = best
            && *best != place
        {
            moved.insert(place, chunks[best.0].rows[best.1].clone());
        }
    }
    for (c, chunk) in chunks.iter_mut().enumerate() {
        if chunk.kind != ChunkKind::Upsert || !chunk.columns.iter().any(|x| x == order) {
            continue;
        }
        let rows = std::mem::take(&mut chunk.rows);
        chunk.rows = rows
            .into_iter()
            .enumerate()
            .filter_map(|(r, row)| {
                if !keep.contains_key(&(c, r)) {
                    return None;
                }
                Some(moved.remove(&(c, r)).unwrap_or(row))
            })
            .collect();
    }
}

/// `a > b`: numerically for numeric columns (and text that reads as numbers), else as text.
fn greater(a: &SqlValue, b: &SqlValue, numeric: bool) -> bool {
    let number = |v: &SqlValue| match v {
        SqlValue::Integer(i) => Some(*i as f64),
        SqlValue::Real(f) => Some(*f),
        SqlValue::Text(t) => t.trim().parse::<f64>().ok(),
        _ => None,
    };
    match (number(a), number(b)) {
        (Some(a), Some(b)) => a > b,
        _ if numeric => number(a).is_some(),
        _ => match (a, b) {
            (SqlValue::Text(a), SqlValue::Text(b)) => a > b,
            (SqlValue::Null, _) => false,
            (_, SqlValue::Null) => true,
            _ => false,
        },
    }
}

fn check_headers(chunk: usize, headers: &[String]) -> Result<(), JobFailure> {
    for (i, header) in headers.iter().enumerate() {
        if header.is_empty() {
            return Err(JobFailure::EmptyColumnName { chunk });
        }
        if headers[..i]
            .iter()
            .any(|earlier| same_name(earlier, header))
        {
            return Err(JobFailure::DuplicateColumn {
                chunk,
                column: header.clone(),
            });
        }
    }
    Ok(())
}

/// The stored spelling of a column, or the given one when the table lacks it.
fn stored_column(columns: &[ColumnDef], name: &str) -> String {
    columns
        .iter()
        .find(|c| same_name(&c.name, name))
        .map_or_else(|| name.to_owned(), |c| c.name.clone())
}

fn where_keys(key_columns: &[String], first_param: usize) -> String {
    key_columns
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} = ?{}", quote_ident(k), first_param + i))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn insert_rows(tx: &Transaction<'_>, table: &str, chunk: &Typed) -> rusqlite::Result<usize> {
    let names: Vec<String> = chunk.columns.iter().map(|c| quote_ident(c)).collect();
    let params: Vec<String> = (1..=chunk.columns.len()).map(|i| format!("?{i}")).collect();
    let mut insert = tx.prepare(&format!(
        "INSERT INTO {} ({}) VALUES ({})",
        quote_ident(table),
        names.join(", "),
        params.join(", ")
    ))?;
    for row in &chunk.rows {
        insert.execute(params_from_iter(row.iter()))?;
    }
    Ok(chunk.rows.len())
}

/// Upserts a chunk's rows by key. With `stored_order` (the order column and whether it is
/// numeric), a row whose key is stored with a greater order value is skipped; the count is
/// of the rows applied.
#[allow(clippy::too_many_arguments)]
fn upsert_rows(
    tx: &Transaction<'_>,
    table: &str,
    columns: &[String],
    key_columns: &[String],
    key_positions: &[usize],
    strategy: UpsertStrategy,
    stored_order: Option<(&str, bool)>,
    chunk: &Typed,
) -> rusqlite::Result<usize> {
    // SET every chunk column from its parameter; with nullification, every other column to NULL.
    let mut assignments: Vec<String> = chunk
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ?{}", quote_ident(c), i + 1))
        .collect();
    if strategy == UpsertStrategy::Nullification {
        for column in columns {
            if !chunk.columns.contains(column) {
                assignments.push(format!("{} = NULL", quote_ident(column)));
            }
        }
    }
    let width = chunk.columns.len();
    let mut update = tx.prepare(&format!(
        "UPDATE {} SET {} WHERE {}",
        quote_ident(table),
        assignments.join(", "),
        where_keys(key_columns, width + 1)
    ))?;
    let names: Vec<String> = chunk.columns.iter().map(|c| quote_ident(c)).collect();
    let params: Vec<String> = (1..=width).map(|i| format!("?{i}")).collect();
    let mut insert = tx.prepare(&format!(
        "INSERT INTO {} ({}) VALUES ({})",
        quote_ident(table),
        names.join(", "),
        params.join(", ")
    ))?;
    let mut stored = match stored_order {
        Some((order, numeric)) => Some((
            tx.prepare(&format!(
                "SELECT {} FROM {} WHERE {}",
                quote_ident(order),
                quote_ident(table),
                where_keys(key_columns, 1)
            ))?,
            chunk.columns.iter().position(|c| c == order),
            numeric,
        )),
        None => None,
    };
    let mut applied = 0;
    for row in &chunk.rows {
        if let Some((select, Some(at), numeric)) = &mut stored {
            let keys = key_positions.iter().map(|&p| &row[p]);
            let newer = select
                .query_map(params_from_iter(keys), |r| r.get::<_, SqlValue>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .iter()
                .any(|have| greater(have, &row[*at], *numeric));
            if newer {
                continue;
            }
        }
        let values = row.iter().chain(key_positions.iter().map(|&p| &row[p]));
        if update.execute(params_from_iter(values))? == 0 {
            insert.execute(params_from_iter(row.iter()))?;
        }
        applied += 1;
    }
    Ok(applied)
}

fn delete_rows(
    tx: &Transaction<'_>,
    table: &str,
    key_columns: &[String],
    key_positions: &[usize],
    chunk: &Typed,
) -> rusqlite::Result<usize> {
    let mut delete = tx.prepare(&format!(
        "DELETE FROM {} WHERE {}",
        quote_ident(table),
        where_keys(key_columns, 1)
    ))?;
    let mut deleted = 0;
    for row in &chunk.rows {
        deleted += delete.execute(params_from_iter(key_positions.iter().map(|&p| &row[p])))?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::model::CsvOptions;

    fn spec(job_type: JobType, keys: &[&str]) -> JobSpec {
        JobSpec {
            target_name: "Orders".into(),
            connection_id: None,
            job_type,
            file_type: Some(FileType::Csv),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            upsert_strategy: None,
            csv: CsvOptions::default(),
            fallback_varchar_length: 80,
            table_schema: Vec::new(),
            duplicate_removal_column: None,
            order_against_stored: false,
        }
    }

    fn run(conn: &mut Connection, spec: &JobSpec, chunks: &[(ChunkKind, &str)]) -> Applied {
        let chunks: Vec<(ChunkKind, &[u8])> =
            chunks.iter().map(|(k, c)| (*k, c.as_bytes())).collect();
        apply_job(conn, spec, &chunks).unwrap()
    }

    fn rows(conn: &Connection, name: &str) -> Vec<Vec<Option<String>>> {
        text_rows(&read_table(conn, name).unwrap().unwrap())
    }

    fn text_rows(dump: &TableDump) -> Vec<Vec<Option<String>>> {
        dump.rows
            .iter()
            .map(|row| {
                row.iter()
                    .map(|v| value_text(rusqlite::types::ValueRef::from(v)))
                    .collect()
            })
            .collect()
    }

    fn names(dump: &TableDump) -> Vec<&str> {
        dump.columns.iter().map(|c| c.name.as_str()).collect()
    }

    fn row(values: &[&str]) -> Vec<Option<String>> {
        values.iter().map(|v| Some((*v).to_owned())).collect()
    }

    use ChunkKind::{Delete, Upsert};

    #[test]
    fn replace_drops_the_old_rows_and_columns() {
        let mut conn = Connection::open_in_memory().unwrap();
        run(
            &mut conn,
            &spec(JobType::Replace, &[]),
            &[(Upsert, "a,b\n1,2\n")],
        );
        run(
            &mut conn,
            &spec(JobType::Replace, &[]),
            &[(Upsert, "c\n3\n")],
        );
        let dump = read_table(&conn, "orders").unwrap().unwrap();
        assert_eq!(names(&dump), vec!["c"]);
        assert_eq!(text_rows(&dump), vec![row(&["3"])]);
    }

    #[test]
    fn delta_with_keys_updates_in_place_and_appends_new_keys() {
        let mut conn = Connection::open_in_memory().unwrap();
        let delta = spec(JobType::Delta, &["id"]);
        run(&mut conn, &delta, &[(Upsert, "id,v\n1,a\n2,b\n")]);
        let applied = run(&mut conn, &delta, &[(Upsert, "id,v\n1,A\n3,c\n")]);
        assert_eq!(applied.rows_upserted, 2);
        assert_eq!(
            rows(&conn, "Orders"),
            vec![row(&["1", "A"]), row(&["2", "b"]), row(&["3", "c"])]
        );
    }

    #[test]
    fn delta_without_keys_appends_duplicates() {
        let mut conn = Connection::open_in_memory().unwrap();
        let delta = spec(JobType::Delta, &[]);
        run(&mut conn, &delta, &[(Upsert, "id\n1\n")]);
        run(&mut conn, &delta, &[(Upsert, "id\n1\n")]);
        assert_eq!(rows(&conn, "orders"), vec![row(&["1"]), row(&["1"])]);
    }

    #[test]
    fn delete_chunks_remove_rows_by_key() {
        let mut conn = Connection::open_in_memory().unwrap();
        let delta = spec(JobType::Delta, &["id"]);
        run(&mut conn, &delta, &[(Upsert, "id,v\n1,a\n2,b\n")]);
        let applied = run(&mut conn, &delta, &[(Delete, "id\n1\n9\n")]);
        assert_eq!(applied.rows_deleted, 1);
        assert_eq!(rows(&conn, "orders"), vec![row(&["2", "b"])]);
    }

    #[test]
    fn a_new_column_in_a_later_job_is_added() {
        let mut conn = Connection::open_in_memory().unwrap();
        let delta = spec(JobType::Delta, &["ID"]);
        run(&mut conn, &delta, &[(Upsert, "id,v\n1,a\n")]);
        run(&mut conn, &delta, &[(Upsert, "Id,w\n1,x\n")]);
        let dump = read_table(&conn, "ORDERS").unwrap().unwrap();
        assert_eq!(dump.name, "Orders");
        assert_eq!(names(&dump), vec!["id", "v", "w"]);
        assert_eq!(text_rows(&dump), vec![row(&["1", "a", "x"])]);
    }

    #[test]
    fn nullification_clears_columns_the_chunk_lacks() {
        let mut conn = Connection::open_in_memory().unwrap();
        let mut delta = spec(JobType::Delta, &["id"]);
        run(&mut conn, &delta, &[(Upsert, "id,v,w\n1,a,b\n")]);
        delta.upsert_strategy = Some(UpsertStrategy::Nullification);
        run(&mut conn, &delta, &[(Upsert, "id,v\n1,c\n")]);
        assert_eq!(
            rows(&conn, "orders"),
            vec![vec![Some("1".into()), Some("c".into()), None]]
        );
    }

    #[test]
    fn a_missing_key_column_fails_naming_it_and_changes_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        let err = apply_job(
            &mut conn,
            &spec(JobType::Delta, &["order_id"]),
            &[(Upsert, b"id,v\n1,a\n")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("order_id"), "{err}");
        assert!(read_table(&conn, "orders").unwrap().is_none());
    }

    #[test]
    fn delete_chunks_on_a_replace_job_fail() {
        let mut conn = Connection::open_in_memory().unwrap();
        let err = apply_job(
            &mut conn,
            &spec(JobType::Replace, &["id"]),
            &[(Delete, b"id\n1\n")],
        )
        .unwrap_err();
        assert!(matches!(err, JobFailure::DeleteOnReplace));
    }

    #[test]
    fn an_unset_file_type_is_read_as_parquet() {
        let mut conn = Connection::open_in_memory().unwrap();
        let mut unset = spec(JobType::Delta, &[]);
        unset.file_type = None;
        let err = apply_job(&mut conn, &unset, &[(Upsert, b"id\n1\n")]).unwrap_err();
        assert!(
            err.to_string().contains("not a valid Parquet file"),
            "{err}"
        );
    }

    #[test]
    fn typed_columns_keep_their_types_for_later_jobs_and_a_contradicting_schema_fails() {
        let mut conn = Connection::open_in_memory().unwrap();
        let mut typed = spec(JobType::Delta, &["id"]);
        typed.table_schema = vec![ColumnDef::of("id", ColumnType::Integer)];
        run(&mut conn, &typed, &[(Upsert, "id,v\n1,a\n")]);
        // A later job without a schema still parses id as INTEGER.
        let plain = spec(JobType::Delta, &["id"]);
        let err = apply_job(&mut conn, &plain, &[(Upsert, b"id\nx\n")]).unwrap_err();
        assert!(err.to_string().contains("row 1, column id"), "{err}");
        typed.table_schema = vec![ColumnDef::string("id", 80)];
        let err = apply_job(&mut conn, &typed, &[(Upsert, b"id\n2\n")]).unwrap_err();
        assert!(matches!(err, JobFailure::TypeConflict { .. }), "{err}");
        let dump = read_table(&conn, "orders").unwrap().unwrap();
        assert_eq!(dump.rows[0][0], SqlValue::Integer(1));
    }

    #[test]
    fn duplicate_removal_works_across_the_chunks_of_a_job() {
        let mut conn = Connection::open_in_memory().unwrap();
        let mut delta = spec(JobType::Delta, &["id"]);
        delta.duplicate_removal_column = Some("seq".into());
        run(
            &mut conn,
            &delta,
            &[
                (Upsert, "id,seq,v\n1,5,mid\n"),
                (Upsert, "id,seq,v\n1,7,best\n1,2,old\n"),
            ],
        );
        assert_eq!(rows(&conn, "orders"), vec![row(&["1", "7", "best"])]);
    }

    #[test]
    fn the_order_column_also_decides_against_stored_rows_when_asked() {
        let mut conn = Connection::open_in_memory().unwrap();
        let mut upload = spec(JobType::Delta, &["id"]);
        upload.duplicate_removal_column = Some("seq".into());
        upload.order_against_stored = true;
        run(
            &mut conn,
            &upload,
            &[(Upsert, "id,seq,v\n1,7,new\n2,1,a\n")],
        );
        // A file loaded later with an older row of key 1 leaves the stored one.
        run(
            &mut conn,
            &upload,
            &[(Upsert, "id,seq,v\n1,5,old\n2,2,b\n")],
        );
        assert_eq!(
            rows(&conn, "orders"),
            vec![row(&["1", "7", "new"]), row(&["2", "2", "b"])]
        );
        // A data push job's duplicate removal stays within the job.
        upload.order_against_stored = false;
        run(&mut conn, &upload, &[(Upsert, "id,seq,v\n1,3,older\n")]);
        assert_eq!(rows(&conn, "orders")[0], row(&["1", "3", "older"]));
    }

    #[test]
    fn hostile_names_are_quoted_not_executed() {
        let mut conn = Connection::open_in_memory().unwrap();
        let mut hostile = spec(JobType::Delta, &[]);
        hostile.target_name = "x\"; DROP TABLE y; --".into();
        run(&mut conn, &hostile, &[(Upsert, "\"a\"\"b\",c d\n1,2\n")]);
        let dump = read_table(&conn, &hostile.target_name).unwrap().unwrap();
        assert_eq!(names(&dump), vec!["a\"b", "c d"]);
    }

    #[test]
    fn duplicate_removal_keeps_the_row_with_the_greatest_order_value() {
        let mut conn = Connection::open_in_memory().unwrap();
        let mut delta = spec(JobType::Delta, &["id"]);
        delta.duplicate_removal_column = Some("seq".into());
        run(
            &mut conn,
            &delta,
            &[(Upsert, "id,seq,v\n1,9,new\n2,1,b\n1,10,newest\n1,2,old\n")],
        );
        assert_eq!(
            rows(&conn, "orders"),
            vec![row(&["1", "10", "newest"]), row(&["2", "1", "b"])]
        );
        delta.duplicate_removal_column = Some("missing".into());
        let chunk: &[u8] = b"id,seq\n1,1\n";
        let err = apply_job(&mut conn, &delta, &[(Upsert, chunk)]).unwrap_err();
        assert!(err.to_string().contains("missing"));
    }

    #[test]
    fn values_are_stored_exactly_as_text() {
        let mut conn = Connection::open_in_memory().unwrap();
        run(
            &mut conn,
            &spec(JobType::Delta, &[]),
            &[(Upsert, "v\n007\n\"a \"\"q\"\"\r\nb\"\nÄö\n\n")],
        );
        assert_eq!(
            rows(&conn, "orders"),
            vec![row(&["007"]), row(&["a \"q\"\r\nb"]), row(&["Äö"])]
        );
    }
}
