//! Applying an executed job's chunks to SQLite tables: REPLACE, DELTA upsert by keys, DELTA append, delete by keys.
//!
//! One SQLite table per target; its identity is the lowercase target name (SQLite itself only
//! folds ASCII case), and it keeps the case it was created with. Every column is TEXT and comes
//! from a CSV header; a column a later chunk brings is added. Row order is rowid order, and an
//! upsert updates the existing row in place so it keeps its position.

use std::collections::HashMap;

use rusqlite::{Connection, Transaction, params_from_iter, types::ValueRef};

use super::chunk::{CsvError, CsvTable, parse_csv};
use super::model::{FileType, JobSpec, JobType, UpsertStrategy};

/// Which endpoint a chunk arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    Upsert,
    Delete,
}

impl ChunkKind {
    /// The `DataPushChunk.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkKind::Upsert => "UPSERT",
            ChunkKind::Delete => "DELETE",
        }
    }
}

/// Why a job ends in ERROR; the display text becomes the job's log line.
#[derive(Debug, thiserror::Error)]
pub enum JobFailure {
    #[error("only CSV is supported by the emulator; this job has fileType {0}")]
    UnsupportedFileType(&'static str),
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
    #[error("chunk {chunk}: key column {column} is missing")]
    MissingKeyColumn { chunk: usize, column: String },
    #[error("chunk {chunk}: duplicateRemovalColumn {column} is missing")]
    MissingDuplicateRemovalColumn { chunk: usize, column: String },
    #[error("chunk {chunk}: column {column} appears twice (DUPLICATE_COLUMN_DETECTED)")]
    DuplicateColumn { chunk: usize, column: String },
    #[error("chunk {chunk}: a column has an empty name")]
    EmptyColumnName { chunk: usize },
    #[error("the emulator database failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// What an applied job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The table's name as stored.
    pub table: String,
    pub rows_upserted: usize,
    pub rows_deleted: usize,
}

/// A table read back for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDump {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// Quotes an SQL identifier; names come from users.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn same_name(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// The stored name of the table whose identity is `name`, if it exists.
pub fn find_table(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
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

fn table_columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let stmt = conn.prepare(&format!("SELECT * FROM {} LIMIT 0", quote_ident(table)))?;
    Ok(stmt.column_names().into_iter().map(str::to_owned).collect())
}

/// Reads a table in rowid order.
pub fn read_table(conn: &Connection, name: &str) -> rusqlite::Result<Option<TableDump>> {
    let Some(stored) = find_table(conn, name)? else {
        return Ok(None);
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT * FROM {} ORDER BY rowid",
        quote_ident(&stored)
    ))?;
    let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
    let width = columns.len();
    let rows = stmt
        .query_map([], |row| {
            (0..width)
                .map(|i| Ok(value_text(row.get_ref(i)?)))
                .collect::<rusqlite::Result<Vec<_>>>()
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(TableDump {
        name: stored,
        columns,
        rows,
    }))
}

/// A stored value as text; columns are TEXT, so anything else only comes from hand edits.
pub fn value_text(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

/// Applies a job's chunks, in upload order, in one transaction: either all of it or none.
pub fn apply_job(
    conn: &mut Connection,
    spec: &JobSpec,
    chunks: &[(ChunkKind, &[u8])],
) -> Result<Applied, JobFailure> {
    match spec.file_type {
        Some(FileType::Csv) => {}
        Some(FileType::Parquet) => return Err(JobFailure::UnsupportedFileType("PARQUET")),
        None => {
            return Err(JobFailure::UnsupportedFileType(
                "null (the server default, PARQUET)",
            ));
        }
    }
    let has_deletes = chunks.iter().any(|(kind, _)| *kind == ChunkKind::Delete);
    if has_deletes && spec.job_type == JobType::Replace {
        return Err(JobFailure::DeleteOnReplace);
    }
    let keyed = spec.job_type == JobType::Delta && !spec.keys.is_empty();
    if has_deletes && !keyed {
        return Err(JobFailure::DeleteWithoutKeys);
    }

    let mut parsed = Vec::with_capacity(chunks.len());
    for (index, (kind, bytes)) in chunks.iter().enumerate() {
        let chunk = index + 1;
        let table =
            parse_csv(bytes, &spec.csv).map_err(|source| JobFailure::Csv { chunk, source })?;
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
        let mut table = table;
        if let (true, ChunkKind::Upsert, Some(column)) =
            (keyed, kind, &spec.duplicate_removal_column)
        {
            let order = position(&table.headers, column).ok_or_else(|| {
                JobFailure::MissingDuplicateRemovalColumn {
                    chunk,
                    column: column.clone(),
                }
            })?;
            let keys: Vec<usize> = spec
                .keys
                .iter()
                .filter_map(|key| position(&table.headers, key))
                .collect();
            remove_duplicates(&mut table, &keys, order);
        }
        parsed.push((*kind, table));
    }

    let tx = conn.transaction()?;
    let existing = find_table(&tx, &spec.target_name)?;
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
        if parsed.iter().any(|(kind, _)| *kind == ChunkKind::Upsert) {
            columns.clear();
        }
    }
    for (kind, chunk) in &parsed {
        if *kind == ChunkKind::Upsert {
            for header in &chunk.headers {
                if !columns.iter().any(|c| same_name(c, header)) {
                    columns.push(header.clone());
                    if let Some(stored) = &table {
                        tx.execute_batch(&format!(
                            "ALTER TABLE {} ADD COLUMN {} TEXT",
                            quote_ident(stored),
                            quote_ident(header)
                        ))?;
                    }
                }
            }
        }
    }
    if table.is_none() && !columns.is_empty() {
        let definition: Vec<String> = columns
            .iter()
            .map(|c| format!("{} TEXT", quote_ident(c)))
            .collect();
        tx.execute_batch(&format!(
            "CREATE TABLE {} ({})",
            quote_ident(&spec.target_name),
            definition.join(", ")
        ))?;
        table = Some(spec.target_name.clone());
    }

    let mut applied = Applied {
        table: table.clone().unwrap_or_else(|| spec.target_name.clone()),
        rows_upserted: 0,
        rows_deleted: 0,
    };
    let Some(table) = table else {
        tx.commit()?;
        return Ok(applied);
    };
    let key_columns: Vec<String> = spec
        .keys
        .iter()
        .map(|key| stored_column(&columns, key))
        .collect();
    if keyed {
        // Deletes may name keys the table lacks: add them so the statement is valid.
        for key in &key_columns {
            if !columns.iter().any(|c| c == key) {
                tx.execute_batch(&format!(
                    "ALTER TABLE {} ADD COLUMN {} TEXT",
                    quote_ident(&table),
                    quote_ident(key)
                ))?;
                columns.push(key.clone());
            }
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

    for (kind, chunk) in &parsed {
        let chunk_columns: Vec<String> = chunk
            .headers
            .iter()
            .map(|h| stored_column(&columns, h))
            .collect();
        let key_positions: Vec<usize> = key_columns
            .iter()
            .filter_map(|key| chunk_columns.iter().position(|c| c == key))
            .collect();
        match kind {
            ChunkKind::Delete => {
                applied.rows_deleted +=
                    delete_rows(&tx, &table, &key_columns, &key_positions, chunk)?;
            }
            ChunkKind::Upsert if keyed => {
                let strategy = spec
                    .upsert_strategy
                    .unwrap_or(UpsertStrategy::UnchangedMetadata);
                applied.rows_upserted += upsert_rows(
                    &tx,
                    &table,
                    &columns,
                    &chunk_columns,
                    &key_columns,
                    &key_positions,
                    strategy,
                    chunk,
                )?;
            }
            ChunkKind::Upsert => {
                applied.rows_upserted += insert_rows(&tx, &table, &chunk_columns, chunk)?;
            }
        }
    }
    tx.commit()?;
    Ok(applied)
}

fn position(headers: &[String], name: &str) -> Option<usize> {
    headers.iter().position(|h| same_name(h, name))
}

/// Keeps, per key, the row with the greatest `order` value (numeric when both parse), at the first row's place.
fn remove_duplicates(table: &mut CsvTable, keys: &[usize], order: usize) {
    let mut kept: Vec<Vec<String>> = Vec::with_capacity(table.rows.len());
    let mut by_key: HashMap<Vec<String>, usize> = HashMap::new();
    for row in std::mem::take(&mut table.rows) {
        let key: Vec<String> = keys.iter().map(|&k| row[k].clone()).collect();
        match by_key.get(&key) {
            Some(&at) => {
                if greater(&row[order], &kept[at][order]) {
                    kept[at] = row;
                }
            }
            None => {
                by_key.insert(key, kept.len());
                kept.push(row);
            }
        }
    }
    table.rows = kept;
}

fn greater(a: &str, b: &str) -> bool {
    match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        (Ok(a), Ok(b)) => a > b,
        _ => a > b,
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
fn stored_column(columns: &[String], name: &str) -> String {
    columns
        .iter()
        .find(|c| same_name(c, name))
        .cloned()
        .unwrap_or_else(|| name.to_owned())
}

fn where_keys(key_columns: &[String], first_param: usize) -> String {
    key_columns
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} = ?{}", quote_ident(k), first_param + i))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn insert_rows(
    tx: &Transaction<'_>,
    table: &str,
    chunk_columns: &[String],
    chunk: &CsvTable,
) -> rusqlite::Result<usize> {
    let names: Vec<String> = chunk_columns.iter().map(|c| quote_ident(c)).collect();
    let params: Vec<String> = (1..=chunk_columns.len()).map(|i| format!("?{i}")).collect();
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

#[allow(clippy::too_many_arguments)]
fn upsert_rows(
    tx: &Transaction<'_>,
    table: &str,
    columns: &[String],
    chunk_columns: &[String],
    key_columns: &[String],
    key_positions: &[usize],
    strategy: UpsertStrategy,
    chunk: &CsvTable,
) -> rusqlite::Result<usize> {
    // SET every chunk column from its parameter; with nullification, every other column to NULL.
    let mut assignments: Vec<String> = chunk_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ?{}", quote_ident(c), i + 1))
        .collect();
    if strategy == UpsertStrategy::Nullification {
        for column in columns {
            if !chunk_columns.contains(column) {
                assignments.push(format!("{} = NULL", quote_ident(column)));
            }
        }
    }
    let width = chunk_columns.len();
    let mut update = tx.prepare(&format!(
        "UPDATE {} SET {} WHERE {}",
        quote_ident(table),
        assignments.join(", "),
        where_keys(key_columns, width + 1)
    ))?;
    let names: Vec<String> = chunk_columns.iter().map(|c| quote_ident(c)).collect();
    let params: Vec<String> = (1..=width).map(|i| format!("?{i}")).collect();
    let mut insert = tx.prepare(&format!(
        "INSERT INTO {} ({}) VALUES ({})",
        quote_ident(table),
        names.join(", "),
        params.join(", ")
    ))?;
    for row in &chunk.rows {
        let values = row.iter().chain(key_positions.iter().map(|&p| &row[p]));
        if update.execute(params_from_iter(values))? == 0 {
            insert.execute(params_from_iter(row.iter()))?;
        }
    }
    Ok(chunk.rows.len())
}

fn delete_rows(
    tx: &Transaction<'_>,
    table: &str,
    key_columns: &[String],
    key_positions: &[usize],
    chunk: &CsvTable,
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
            job_type,
            file_type: Some(FileType::Csv),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            upsert_strategy: None,
            csv: CsvOptions::default(),
            duplicate_removal_column: None,
        }
    }

    fn run(conn: &mut Connection, spec: &JobSpec, chunks: &[(ChunkKind, &str)]) -> Applied {
        let chunks: Vec<(ChunkKind, &[u8])> =
            chunks.iter().map(|(k, c)| (*k, c.as_bytes())).collect();
        apply_job(conn, spec, &chunks).unwrap()
    }

    fn rows(conn: &Connection, name: &str) -> Vec<Vec<Option<String>>> {
        read_table(conn, name).unwrap().unwrap().rows
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
        assert_eq!(dump.columns, vec!["c"]);
        assert_eq!(dump.rows, vec![row(&["3"])]);
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
        assert_eq!(dump.columns, vec!["id", "v", "w"]);
        assert_eq!(dump.rows, vec![row(&["1", "a", "x"])]);
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
    fn parquet_and_unset_file_types_fail_saying_only_csv_is_supported() {
        let mut conn = Connection::open_in_memory().unwrap();
        let mut parquet = spec(JobType::Delta, &[]);
        parquet.file_type = Some(FileType::Parquet);
        let err = apply_job(&mut conn, &parquet, &[]).unwrap_err();
        assert!(err.to_string().contains("only CSV is supported"));
        parquet.file_type = None;
        assert!(matches!(
            apply_job(&mut conn, &parquet, &[]),
            Err(JobFailure::UnsupportedFileType(_))
        ));
    }

    #[test]
    fn hostile_names_are_quoted_not_executed() {
        let mut conn = Connection::open_in_memory().unwrap();
        let mut hostile = spec(JobType::Delta, &[]);
        hostile.target_name = "x\"; DROP TABLE y; --".into();
        run(&mut conn, &hostile, &[(Upsert, "\"a\"\"b\",c d\n1,2\n")]);
        let dump = read_table(&conn, &hostile.target_name).unwrap().unwrap();
        assert_eq!(dump.columns, vec!["a\"b", "c d"]);
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
