//! Reading one Parquet chunk into a header, the column types its schema implies, and rows of cells.
//!
//! Only flat files of primitive columns are accepted, as Celonis (and pycelonis, which refuses
//! dicts and lists) expects. Types map as reference §6.2 suggests: INT32/INT64 → INTEGER,
//! FLOAT/DOUBLE/DECIMAL → FLOAT, BOOLEAN, UTF8 → STRING, DATE, TIME, and TIMESTAMP in millis,
//! micros or nanos as well as the INT96 timestamps pyarrow writes for pycelonis → DATETIME.

use ::parquet::basic::{ConvertedType, LogicalType, TimeUnit, Type as PhysicalType};
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::record::Field;
use axum::body::Bytes;

use super::types::{Cell, ColumnType};

/// A parsed Parquet chunk: names, the type each column's Parquet schema implies, and the rows.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ParquetChunk {
    pub headers: Vec<String>,
    pub types: Vec<ColumnType>,
    pub rows: Vec<Vec<Cell>>,
}

/// Reads a whole Parquet file; the error text becomes the job's log line.
pub(super) fn read_parquet(bytes: Bytes) -> Result<ParquetChunk, String> {
    let reader = SerializedFileReader::new(bytes)
        .map_err(|e| format!("the chunk is not a valid Parquet file: {e}"))?;
    let schema = reader.metadata().file_metadata().schema_descr();
    if !schema
        .root_schema()
        .get_fields()
        .iter()
        .all(|f| f.is_primitive())
        || schema.columns().iter().any(|c| c.max_rep_level() > 0)
    {
        return Err(
            "the Parquet file has nested columns; only primitive types are supported".into(),
        );
    }
    let mut headers = Vec::new();
    let mut types = Vec::new();
    // Divisor from a column's INT64 unit to milliseconds (1 for anything else).
    let mut divisors = Vec::new();
    for column in schema.columns() {
        let logical = column.logical_type_ref();
        let (kind, divisor) = match (column.physical_type(), logical, column.converted_type()) {
            (PhysicalType::BOOLEAN, _, _) => (ColumnType::Boolean, 1),
            (PhysicalType::INT96, _, _) => (ColumnType::DateTime, 1),
            (_, Some(LogicalType::Timestamp(timestamp)), _) => {
                (ColumnType::DateTime, unit_divisor(&timestamp.unit))
            }
            (_, Some(LogicalType::Time(time)), _) => (ColumnType::Time, unit_divisor(&time.unit)),
            (_, Some(LogicalType::Date), _) | (_, _, ConvertedType::DATE) => (ColumnType::Date, 1),
            (_, _, ConvertedType::TIMESTAMP_MILLIS | ConvertedType::TIMESTAMP_MICROS) => {
                (ColumnType::DateTime, 1)
            }
            (_, _, ConvertedType::TIME_MILLIS | ConvertedType::TIME_MICROS) => {
                (ColumnType::Time, 1)
            }
            (_, Some(LogicalType::Decimal { .. }), _) | (_, _, ConvertedType::DECIMAL) => {
                (ColumnType::Float, 1)
            }
            (PhysicalType::INT32 | PhysicalType::INT64, _, _) => (ColumnType::Integer, 1),
            (PhysicalType::FLOAT | PhysicalType::DOUBLE, _, _) => (ColumnType::Float, 1),
            (PhysicalType::BYTE_ARRAY, Some(LogicalType::String | LogicalType::Enum), _)
            | (PhysicalType::BYTE_ARRAY, _, ConvertedType::UTF8 | ConvertedType::ENUM) => {
                (ColumnType::String, 1)
            }
            (physical, _, _) => {
                return Err(format!(
                    "column {} has Parquet type {physical} without a supported logical type",
                    column.name()
                ));
            }
        };
        headers.push(column.name().to_owned());
        types.push(kind);
        divisors.push(divisor);
    }

    let mut rows = Vec::new();
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| format!("the Parquet file cannot be read: {e}"))?;
    for (index, row) in iter.enumerate() {
        let row =
            row.map_err(|e| format!("row {}: the Parquet file cannot be read: {e}", index + 1))?;
        let mut cells = Vec::with_capacity(headers.len());
        for (position, (name, field)) in row.get_column_iter().enumerate() {
            let cell = cell(field, types[position], divisors[position]).ok_or_else(|| {
                format!(
                    "row {}, column {name}: the Parquet value is not a primitive type",
                    index + 1
                )
            })?;
            cells.push(cell);
        }
        rows.push(cells);
    }
    Ok(ParquetChunk {
        headers,
        types,
        rows,
    })
}

fn unit_divisor(unit: &TimeUnit) -> i64 {
    match unit {
        TimeUnit::MILLIS => 1,
        TimeUnit::MICROS => 1_000,
        TimeUnit::NANOS => 1_000_000,
    }
}

fn cell(field: &Field, kind: ColumnType, divisor: i64) -> Option<Cell> {
    Some(match field {
        Field::Null => Cell::Null,
        Field::Bool(b) => Cell::Bool(*b),
        Field::Byte(v) => Cell::Int(i64::from(*v)),
        Field::Short(v) => Cell::Int(i64::from(*v)),
        Field::Int(v) => Cell::Int(i64::from(*v)),
        Field::UByte(v) => Cell::Int(i64::from(*v)),
        Field::UShort(v) => Cell::Int(i64::from(*v)),
        Field::UInt(v) => Cell::Int(i64::from(*v)),
        Field::ULong(v) => Cell::Int(i64::try_from(*v).ok()?),
        // Nanosecond timestamps and times arrive as plain longs: the column's unit says what they are.
        Field::Long(v) => match kind {
            ColumnType::DateTime => Cell::Timestamp(v.div_euclid(divisor)),
            ColumnType::Time => Cell::TimeOfDay(v.div_euclid(divisor)),
            _ => Cell::Int(*v),
        },
        Field::Float(f) => Cell::Real(f64::from(*f)),
        Field::Double(f) => Cell::Real(*f),
        Field::Decimal(_) => Cell::Real(field.to_string().parse().ok()?),
        Field::Str(s) => Cell::Text(s.clone()),
        Field::Date(days) => Cell::Date(*days),
        Field::TimeMillis(ms) => Cell::TimeOfDay(i64::from(*ms)),
        Field::TimeMicros(us) => Cell::TimeOfDay(us.div_euclid(1_000)),
        Field::TimestampMillis(ms) => Cell::Timestamp(*ms),
        Field::TimestampMicros(us) => Cell::Timestamp(us.div_euclid(1_000)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ::parquet::data_type::{Int32Type, Int64Type};
    use ::parquet::file::properties::WriterProperties;
    use ::parquet::file::writer::SerializedFileWriter;
    use ::parquet::schema::parser::parse_message_type;

    use super::*;

    /// Writes one row group of INT64 columns (and one INT32 column) under `schema`.
    fn file(schema: &str, longs: &[i64], int: Option<i32>) -> Bytes {
        let schema = Arc::new(parse_message_type(schema).unwrap());
        let mut bytes = Vec::new();
        let mut writer = SerializedFileWriter::new(
            &mut bytes,
            schema,
            Arc::new(WriterProperties::builder().build()),
        )
        .unwrap();
        let mut group = writer.next_row_group().unwrap();
        let mut longs = longs.iter();
        while let Some(mut column) = group.next_column().unwrap() {
            match column.untyped() {
                ::parquet::column::writer::ColumnWriter::Int32ColumnWriter(_) => column
                    .typed::<Int32Type>()
                    .write_batch(&[int.unwrap()], None, None),
                _ => column
                    .typed::<Int64Type>()
                    .write_batch(&[*longs.next().unwrap()], None, None),
            }
            .unwrap();
            column.close().unwrap();
        }
        group.close().unwrap();
        writer.close().unwrap();
        Bytes::from(bytes)
    }

    #[test]
    fn timestamps_in_millis_micros_and_nanos_all_become_milliseconds() {
        let ms = 1_709_293_500_250i64;
        let chunk = read_parquet(file(
            "message m {
                REQUIRED INT64 a (TIMESTAMP(MILLIS, true));
                REQUIRED INT64 b (TIMESTAMP(MICROS, true));
                REQUIRED INT64 c (TIMESTAMP(NANOS, false));
                REQUIRED INT64 n;
                REQUIRED INT32 d (DATE);
            }",
            &[ms, ms * 1_000, ms * 1_000_000, 42],
            Some(19_783),
        ))
        .unwrap();
        assert_eq!(chunk.headers, ["a", "b", "c", "n", "d"]);
        assert_eq!(
            chunk.types,
            [
                ColumnType::DateTime,
                ColumnType::DateTime,
                ColumnType::DateTime,
                ColumnType::Integer,
                ColumnType::Date
            ]
        );
        assert_eq!(
            chunk.rows,
            vec![vec![
                Cell::Timestamp(ms),
                Cell::Timestamp(ms),
                Cell::Timestamp(ms),
                Cell::Int(42),
                Cell::Date(19_783)
            ]]
        );
    }

    #[test]
    fn nested_columns_and_garbage_are_refused_with_a_reason() {
        let nested = read_parquet(file(
            "message m { REQUIRED group g { REQUIRED INT64 x; } }",
            &[1],
            None,
        ))
        .unwrap_err();
        assert!(nested.contains("only primitive types"), "{nested}");
        let garbage = read_parquet(Bytes::from_static(b"id\n1\n")).unwrap_err();
        assert!(garbage.contains("not a valid Parquet file"), "{garbage}");
    }
}
