//! Writes a batch of rows as typed Parquet chunks (`file_type = "parquet"`): one row group per
//! chunk, one optional column per table column, with the Parquet type of its Celonis type.
//!
//! Values arrive in the canonical text forms ingest converted them to ([`crate::values`]), so
//! each is parsed once here: STRING → UTF8 byte array, INTEGER → INT64, FLOAT → DOUBLE,
//! BOOLEAN, DATE → INT32 days, DATETIME → INT64 milliseconds since 1970 UTC, TIME → INT32
//! milliseconds since midnight. An empty cell is a null, as it is in the CSV.

use std::sync::Arc;

use ::parquet::basic::{Compression, LogicalType, Repetition, TimeUnit, Type as PhysicalType};
use ::parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use ::parquet::errors::ParquetError;
use ::parquet::file::properties::WriterProperties;
use ::parquet::file::writer::SerializedFileWriter;
use ::parquet::schema::types::Type;
use chrono::{DateTime, NaiveDate, NaiveTime, Timelike};

use super::csv::{Layout, Records};
use crate::config::{ColumnType, TableSpec};
use crate::queue::Entry;

/// Why a chunk could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ParquetChunkError {
    /// A queued value does not parse as its column's type (its column's type changed after
    /// it was accepted): the row, not the service, is at fault.
    #[error("row at offset {offset}: column {column:?} {problem}")]
    Value {
        offset: u64,
        column: String,
        problem: String,
    },
    #[error("{0}")]
    Parquet(#[from] ParquetError),
}

/// One column's values and definition levels (0 for a null, 1 for a value).
enum Values {
    Text(Vec<ByteArray>),
    Int64(Vec<i64>),
    Double(Vec<f64>),
    Bool(Vec<bool>),
    Int32(Vec<i32>),
}

struct ColumnData {
    ty: ColumnType,
    values: Values,
    defs: Vec<i16>,
}

impl ColumnData {
    fn new(ty: ColumnType) -> ColumnData {
        let values = match ty {
            ColumnType::String => Values::Text(Vec::new()),
            ColumnType::Integer | ColumnType::DateTime => Values::Int64(Vec::new()),
            ColumnType::Float => Values::Double(Vec::new()),
            ColumnType::Boolean => Values::Bool(Vec::new()),
            ColumnType::Date | ColumnType::Time => Values::Int32(Vec::new()),
        };
        ColumnData {
            ty,
            values,
            defs: Vec::new(),
        }
    }

    /// Adds one cell; the error says why it does not parse.
    fn push(&mut self, cell: &[u8]) -> Result<(), String> {
        if cell.is_empty() {
            self.defs.push(0);
            return Ok(());
        }
        match &mut self.values {
            Values::Text(v) => v.push(ByteArray::from(cell.to_vec())),
            values => {
                let text = std::str::from_utf8(cell).map_err(|_| "is not UTF-8 text")?;
                match values {
                    Values::Int64(v) => v.push(match self.ty {
                        ColumnType::DateTime => datetime_millis(text)?,
                        _ => text.parse().map_err(|_| "is not a whole number")?,
                    }),
                    Values::Double(v) => v.push(
                        text.parse::<f64>()
                            .ok()
                            .filter(|f| f.is_finite())
                            .ok_or("is not a number")?,
                    ),
                    Values::Bool(v) => v.push(if text.eq_ignore_ascii_case("true") {
                        true
                    } else if text.eq_ignore_ascii_case("false") {
                        false
                    } else {
                        return Err("is not true or false".into());
                    }),
                    Values::Int32(v) => v.push(match self.ty {
                        ColumnType::Date => date_days(text)?,
                        _ => time_millis(text)?,
                    }),
                    Values::Text(_) => unreachable!("handled above"),
                }
            }
        }
        self.defs.push(1);
        Ok(())
    }

    fn clear(&mut self) {
        self.defs.clear();
        match &mut self.values {
            Values::Text(v) => v.clear(),
            Values::Int64(v) => v.clear(),
            Values::Double(v) => v.clear(),
            Values::Bool(v) => v.clear(),
            Values::Int32(v) => v.clear(),
        }
    }
}

/// Days since 1970-01-01 of a canonical DATE (`yyyy-MM-dd`).
fn date_days(text: &str) -> Result<i32, String> {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("1970-01-01 is a date");
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| "is not a date (yyyy-MM-dd)".to_owned())?;
    i32::try_from((date - epoch).num_days()).map_err(|_| "is out of range".into())
}

/// Milliseconds since 1970 UTC of a canonical DATETIME (ISO-8601 with an offset).
fn datetime_millis(text: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| "is not a datetime (yyyy-MM-ddTHH:mm:ss.SSSXXX)".into())
}

/// Milliseconds since midnight of a canonical TIME (`HH:mm:ss.SSS`).
fn time_millis(text: &str) -> Result<i32, String> {
    let t = NaiveTime::parse_from_str(text, "%H:%M:%S%.f")
        .map_err(|_| "is not a time (HH:mm:ss.SSS)".to_owned())?;
    // At most 86 400 000: fits an i32.
    Ok((t.num_seconds_from_midnight() * 1000 + t.nanosecond() / 1_000_000) as i32)
}

/// The Parquet schema of a table: one optional column per table column, in order.
fn schema(table: &TableSpec) -> Result<Type, ParquetError> {
    let fields = table
        .columns
        .iter()
        .map(|c| {
            let (physical, logical) = match c.ty {
                ColumnType::String => (PhysicalType::BYTE_ARRAY, Some(LogicalType::String)),
                ColumnType::Integer => (PhysicalType::INT64, None),
                ColumnType::Float => (PhysicalType::DOUBLE, None),
                ColumnType::Boolean => (PhysicalType::BOOLEAN, None),
                ColumnType::Date => (PhysicalType::INT32, Some(LogicalType::Date)),
                ColumnType::DateTime => (
                    PhysicalType::INT64,
                    Some(LogicalType::timestamp(true, TimeUnit::MILLIS)),
                ),
                ColumnType::Time => (
                    PhysicalType::INT32,
                    Some(LogicalType::time(true, TimeUnit::MILLIS)),
                ),
            };
            Type::primitive_type_builder(&c.name, physical)
                .with_repetition(Repetition::OPTIONAL)
                .with_logical_type(logical)
                .build()
                .map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Type::group_type_builder("schema")
        .with_fields(fields)
        .build()
}

/// The batch's Parquet chunks of at most `rows_per_chunk` rows each, written one at a time
/// as they are asked for (an empty batch still gives one chunk, with no rows).
pub struct ParquetChunks<'a> {
    entries: &'a [Entry],
    rows_per_chunk: usize,
    records: Records<'a>,
    headers: &'a [String],
    schema: Arc<Type>,
    properties: Arc<WriterProperties>,
    columns: Vec<ColumnData>,
    next: usize,
    emitted: bool,
    /// Set when the table's schema cannot be built: the one item the iterator gives.
    broken: Option<ParquetError>,
}

impl<'a> ParquetChunks<'a> {
    pub fn new(
        layout: &'a Layout,
        table: &TableSpec,
        entries: &'a [Entry],
        rows_per_chunk: usize,
    ) -> ParquetChunks<'a> {
        let (schema, broken) = match schema(table) {
            Ok(s) => (s, None),
            Err(e) => (
                Type::group_type_builder("schema")
                    .build()
                    .expect("an empty group is a valid schema"),
                Some(e),
            ),
        };
        ParquetChunks {
            entries,
            rows_per_chunk: rows_per_chunk.max(1),
            records: Records::new(layout),
            headers: &layout.headers,
            schema: Arc::new(schema),
            properties: Arc::new(
                WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_created_by(concat!("weir ", env!("CARGO_PKG_VERSION")).into())
                    .build(),
            ),
            columns: table
                .columns
                .iter()
                .map(|c| ColumnData::new(c.ty))
                .collect(),
            next: 0,
            emitted: false,
            broken,
        }
    }

    fn chunk(&mut self) -> Result<Vec<u8>, ParquetChunkError> {
        if let Some(e) = self.broken.take() {
            return Err(e.into());
        }
        for c in &mut self.columns {
            c.clear();
        }
        let mut cells: Vec<&[u8]> = vec![b""; self.columns.len()];
        let end = self
            .next
            .saturating_add(self.rows_per_chunk)
            .min(self.entries.len());
        for e in &self.entries[self.next..end] {
            let computed = self.records.read(e, &mut cells);
            for (i, (column, cell)) in self.columns.iter_mut().zip(&cells).enumerate() {
                let cell = match computed.iter().find(|(j, _)| *j == i) {
                    Some((_, text)) => text.as_bytes(),
                    None => cell,
                };
                column
                    .push(cell)
                    .map_err(|problem| ParquetChunkError::Value {
                        offset: e.offset,
                        column: self.headers[i].clone(),
                        problem,
                    })?;
            }
        }
        self.next = end;
        let mut writer =
            SerializedFileWriter::new(Vec::new(), self.schema.clone(), self.properties.clone())?;
        let mut group = writer.next_row_group()?;
        let mut data = self.columns.iter();
        while let Some(mut column) = group.next_column()? {
            let Some(data) = data.next() else {
                return Err(ParquetError::General("more columns than the table".into()).into());
            };
            let defs = Some(data.defs.as_slice());
            match &data.values {
                Values::Text(v) => column.typed::<ByteArrayType>().write_batch(v, defs, None),
                Values::Int64(v) => column.typed::<Int64Type>().write_batch(v, defs, None),
                Values::Double(v) => column.typed::<DoubleType>().write_batch(v, defs, None),
                Values::Bool(v) => column.typed::<BoolType>().write_batch(v, defs, None),
                Values::Int32(v) => column.typed::<Int32Type>().write_batch(v, defs, None),
            }?;
            column.close()?;
        }
        group.close()?;
        Ok(writer.into_inner()?)
    }
}

impl Iterator for ParquetChunks<'_> {
    type Item = Result<Vec<u8>, ParquetChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.emitted && self.next >= self.entries.len() {
            return None;
        }
        self.emitted = true;
        let chunk = self.chunk();
        if chunk.is_err() {
            // A write error ends the batch.
            self.next = self.entries.len();
        }
        Some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use ::parquet::file::reader::{FileReader, SerializedFileReader};
    use ::parquet::record::Field;

    use super::*;
    use crate::config::{ColumnDecl, Typing};
    use crate::row::Row;

    fn entry(offset: u64, fields: &[(&str, &str)]) -> Entry {
        Entry {
            offset,
            received_ms: 0,
            row: Row::from_pairs(fields.iter().copied()).unwrap(),
        }
    }

    fn typed(columns: &[(&str, ColumnType)]) -> (Layout, TableSpec) {
        let names: Vec<String> = columns.iter().map(|(n, _)| n.to_string()).collect();
        let layout = Layout {
            headers: names.clone(),
            sources: names,
            typings: columns
                .iter()
                .map(|(_, t)| {
                    (
                        Typing {
                            ty: Some(*t),
                            ..Typing::default()
                        },
                        None,
                    )
                })
                .collect(),
            ..Layout::default()
        };
        let table = TableSpec {
            columns: columns
                .iter()
                .map(|(n, t)| {
                    ColumnDecl::new(
                        n,
                        Typing {
                            ty: Some(*t),
                            ..Typing::default()
                        },
                        None,
                        255,
                    )
                })
                .collect(),
        };
        (layout, table)
    }

    fn read(bytes: Vec<u8>) -> Vec<Vec<Field>> {
        let reader = SerializedFileReader::new(axum::body::Bytes::from(bytes)).unwrap();
        reader
            .get_row_iter(None)
            .unwrap()
            .map(|r| {
                r.unwrap()
                    .get_column_iter()
                    .map(|(_, f)| f.clone())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_type_is_written_as_its_parquet_type() {
        let (layout, table) = typed(&[
            ("s", ColumnType::String),
            ("i", ColumnType::Integer),
            ("f", ColumnType::Float),
            ("b", ColumnType::Boolean),
            ("d", ColumnType::Date),
            ("dt", ColumnType::DateTime),
            ("t", ColumnType::Time),
        ]);
        let entries = [
            entry(
                0,
                &[
                    ("s", "Grüße"),
                    ("i", "-42"),
                    ("f", "1234.5"),
                    ("b", "TRUE"),
                    ("d", "2021-03-12"),
                    ("dt", "2021-03-12T07:30:00.250Z"),
                    ("t", "08:30:01.500"),
                ],
            ),
            entry(1, &[("s", "only a string")]),
        ];
        let chunks: Vec<_> = ParquetChunks::new(&layout, &table, &entries, 10)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(chunks.len(), 1);
        let rows = read(chunks.into_iter().next().unwrap());
        assert_eq!(
            rows[0],
            [
                Field::Str("Grüße".into()),
                Field::Long(-42),
                Field::Double(1234.5),
                Field::Bool(true),
                Field::Date(18_698),
                Field::TimestampMillis(1_615_534_200_250),
                Field::TimeMillis(30_601_500),
            ]
        );
        assert_eq!(rows[1][0], Field::Str("only a string".into()));
        assert!(rows[1][1..].iter().all(|f| *f == Field::Null), "{rows:?}");
    }

    #[test]
    fn a_batch_is_split_into_chunks_of_rows_per_chunk_rows() {
        let (layout, table) = typed(&[("i", ColumnType::Integer)]);
        let entries: Vec<Entry> = (0..25)
            .map(|n| entry(n, &[("i", &n.to_string())]))
            .collect();
        let chunks: Vec<Vec<u8>> = ParquetChunks::new(&layout, &table, &entries, 10)
            .collect::<Result<_, _>>()
            .unwrap();
        let counts: Vec<usize> = chunks.into_iter().map(|c| read(c).len()).collect();
        assert_eq!(counts, [10, 10, 5]);
        // An empty batch is one chunk with no rows (a deleted-only job's upserted side).
        let none: Vec<_> = ParquetChunks::new(&layout, &table, &[], 10).collect();
        assert_eq!(none.len(), 1);
    }

    #[test]
    fn a_value_that_does_not_parse_names_its_row_and_column() {
        let (layout, table) = typed(&[("s", ColumnType::String), ("qty", ColumnType::Integer)]);
        let entries = [
            entry(7, &[("s", "a"), ("qty", "3")]),
            entry(8, &[("s", "b"), ("qty", "three")]),
        ];
        let err = ParquetChunks::new(&layout, &table, &entries, 10)
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "row at offset 8: column \"qty\" is not a whole number"
        );
    }
}
