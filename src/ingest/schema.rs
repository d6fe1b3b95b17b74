//! Checks a row against a pipeline's schema: required fields, field types, extra fields.

use crate::config::{Column, ColumnSource, ColumnType, FieldType, Schema};
use crate::row::{Field, Kind, Row};

/// Why a row does not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub field: String,
    pub problem: String,
}

/// Where a row came from decides how strictly types are read: query-string and form values
/// are all text, so they match a type when they parse as it; JSON values must have the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Text,
    Json,
}

/// Checks one row; returns the first mismatch.
pub fn check(schema: &Schema, row: &Row, source: Source) -> Result<(), Mismatch> {
    for name in &schema.required {
        match row.get(name) {
            Some(f) if f.kind != Kind::Null => {}
            _ => {
                return Err(Mismatch {
                    field: name.clone(),
                    problem: "is required".into(),
                });
            }
        }
    }
    for field in row.fields() {
        match schema.field_type(field.name) {
            None if !schema.allow_extra => {
                return Err(Mismatch {
                    field: field.name.into(),
                    problem: "is not in the schema".into(),
                });
            }
            None => {}
            Some(ty) if !matches(ty, field, source) => {
                let article = if ty == FieldType::Integer { "an" } else { "a" };
                return Err(Mismatch {
                    field: field.name.into(),
                    problem: format!("is not {article} {} (got {})", ty.name(), shown(field)),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Checks a row's values against the columns the Celonis sink declares and converts them to
/// the form the sink writes: each value must parse as its column's type (a date in its
/// column's `format`, a number in its separators), and a STRING value must fit its column's
/// length (its own `length`, else `fallback`), so Celonis never crops or refuses it. Without
/// `columns`, every field is a column, typed by the schema or STRING. Returns the converted
/// row when a value changed (dates to ISO-8601, numbers to a `.` decimal); allocates nothing
/// otherwise.
pub fn check_columns(
    columns: &[Column],
    schema: Option<&Schema>,
    fallback: u32,
    row: &Row,
) -> Result<Option<Row>, Mismatch> {
    let mut converted: Vec<Option<(Kind, String)>> = Vec::new();
    for (i, field) in row.fields().enumerate() {
        if field.kind == Kind::Null {
            continue;
        }
        let (ty, length, input) = if columns.is_empty() {
            let ty = schema
                .and_then(|s| s.field_type(field.name))
                .map_or(ColumnType::String, ColumnType::of_field);
            (ty, fallback, None)
        } else {
            let Some(c) = columns
                .iter()
                .find(|c| matches!(&c.source, ColumnSource::Field(f) if f == field.name))
            else {
                continue;
            };
            let ty = c.typing.ty.unwrap_or_else(|| {
                schema
                    .and_then(|s| s.field_type(field.name))
                    .map_or(ColumnType::String, ColumnType::of_field)
            });
            (ty, c.typing.length.unwrap_or(fallback), Some(&c.input))
        };
        let mismatch = |problem: String| Mismatch {
            field: field.name.into(),
            problem: format!(
                "does not parse as its column's type {} ({problem}; got {})",
                ty.as_str(),
                shown(field)
            ),
        };
        let mut text = std::borrow::Cow::Borrowed(field.text);
        let mut kind = field.kind;
        if let Some(input) = input
            && field.kind == Kind::String
            && matches!(ty, ColumnType::Integer | ColumnType::Float)
            && !input.number.is_canonical()
        {
            text = input.number.canonical(field.text).into();
            kind = Kind::Number;
        }
        let ok = match ty {
            ColumnType::Integer => text.parse::<i64>().is_ok(),
            ColumnType::Float => text.parse::<f64>().is_ok_and(f64::is_finite),
            ColumnType::Boolean => {
                text.eq_ignore_ascii_case("true") || text.eq_ignore_ascii_case("false")
            }
            ColumnType::Date | ColumnType::DateTime | ColumnType::Time => {
                let (Some(moment), Some(format)) =
                    (ty.moment(), input.and_then(|i| i.date.as_ref()))
                else {
                    // A date type comes only from a column, which always has a format.
                    return Err(mismatch("no format".into()));
                };
                if field.kind == Kind::Number && !format.is_epoch() {
                    return Err(mismatch(format!(
                        "a number is not a date in the format {}",
                        format.describe()
                    )));
                }
                text = format
                    .canonical(field.text, moment)
                    .map_err(&mismatch)?
                    .into();
                kind = Kind::String;
                true
            }
            ColumnType::String => true,
        };
        if !ok {
            let reason = match ty {
                ColumnType::Integer => "not a whole number",
                ColumnType::Float => "not a number",
                _ => "not true or false",
            };
            return Err(mismatch(reason.into()));
        }
        // A text of at most `length` bytes has at most `length` characters: count only
        // longer ones.
        if ty == ColumnType::String && text.len() > length as usize {
            let chars = text.chars().count();
            if chars > length as usize {
                return Err(Mismatch {
                    field: field.name.into(),
                    problem: format!(
                        "is {chars} characters, longer than its column's length {length}"
                    ),
                });
            }
        }
        if text != field.text || kind != field.kind {
            if converted.is_empty() {
                converted.resize(row.len(), None);
            }
            converted[i] = Some((kind, text.into_owned()));
        }
    }
    if converted.is_empty() {
        return Ok(None);
    }
    let mut builder = Row::builder();
    for (field, new) in row.fields().zip(&converted) {
        let (kind, text) = match new {
            Some((kind, text)) => (*kind, text.as_str()),
            None => (field.kind, field.text),
        };
        builder.push(field.name, kind, text).map_err(|e| Mismatch {
            field: field.name.into(),
            problem: format!("cannot be converted: {e}"),
        })?;
    }
    Ok(Some(builder.finish()))
}

fn matches(ty: FieldType, f: Field<'_>, source: Source) -> bool {
    // A null is an absent value: only `required` refuses it.
    if f.kind == Kind::Null {
        return true;
    }
    let text_ok = source == Source::Text && f.kind == Kind::String;
    match ty {
        FieldType::String => f.kind == Kind::String,
        FieldType::Integer => (f.kind == Kind::Number || text_ok) && f.text.parse::<i64>().is_ok(),
        FieldType::Number => {
            f.kind == Kind::Number || (text_ok && f.text.parse::<f64>().is_ok_and(f64::is_finite))
        }
        FieldType::Boolean => {
            f.kind == Kind::Bool
                || (text_ok
                    && (f.text.eq_ignore_ascii_case("true")
                        || f.text.eq_ignore_ascii_case("false")))
        }
    }
}

fn shown(f: Field<'_>) -> String {
    let mut text: String = f.text.chars().take(40).collect();
    if text.len() < f.text.len() {
        text.push('…');
    }
    match f.kind {
        Kind::String => format!("\"{text}\""),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnMismatch;
    use crate::row::Kind;

    fn schema(allow_extra: bool) -> Schema {
        Schema {
            on_mismatch: OnMismatch::Reject,
            required: vec!["OrderId".into()],
            allow_extra,
            fields: vec![
                ("OrderId".into(), FieldType::String),
                ("Quantity".into(), FieldType::Integer),
                ("Price".into(), FieldType::Number),
                ("Express".into(), FieldType::Boolean),
            ],
        }
    }

    fn row(fields: &[(&str, Kind, &str)]) -> Row {
        let mut b = Row::builder();
        for (n, k, t) in fields {
            b.push(n, *k, t).unwrap();
        }
        b.finish()
    }

    #[test]
    fn text_values_match_when_they_parse_as_the_type() {
        let r = Row::from_pairs([
            ("OrderId", "007"),
            ("Quantity", "12"),
            ("Price", "1.5"),
            ("Express", "TRUE"),
        ])
        .unwrap();
        assert_eq!(check(&schema(false), &r, Source::Text), Ok(()));
        let r = Row::from_pairs([("OrderId", "007"), ("Quantity", "1.5")]).unwrap();
        assert_eq!(
            check(&schema(false), &r, Source::Text).unwrap_err().problem,
            "is not an integer (got \"1.5\")"
        );
    }

    #[test]
    fn json_values_must_have_the_type() {
        let r = row(&[
            ("OrderId", Kind::String, "1"),
            ("Quantity", Kind::String, "12"),
        ]);
        assert_eq!(
            check(&schema(true), &r, Source::Json).unwrap_err().field,
            "Quantity"
        );
        let r = row(&[("OrderId", Kind::Number, "1")]);
        assert_eq!(
            check(&schema(true), &r, Source::Json).unwrap_err().problem,
            "is not a string (got 1)"
        );
        let r = row(&[
            ("OrderId", Kind::String, "1"),
            ("Quantity", Kind::Number, "12"),
            ("Express", Kind::Bool, "false"),
        ]);
        assert_eq!(check(&schema(true), &r, Source::Json), Ok(()));
    }

    #[test]
    fn required_fields_must_be_present_and_not_null() {
        let r = row(&[("Quantity", Kind::Number, "1")]);
        assert_eq!(
            check(&schema(true), &r, Source::Json).unwrap_err().problem,
            "is required"
        );
        let r = row(&[("OrderId", Kind::Null, "")]);
        assert_eq!(
            check(&schema(true), &r, Source::Json).unwrap_err().problem,
            "is required"
        );
    }

    #[test]
    fn a_string_longer_than_its_columns_length_is_a_mismatch_and_one_within_is_not() {
        let columns = vec![Column {
            name: "Description".into(),
            source: ColumnSource::Field("d".into()),
            typing: crate::config::Typing {
                length: Some(400),
                ..Default::default()
            },
            input: Default::default(),
        }];
        let ok = Row::from_pairs([("d", "é".repeat(300).as_str())]).unwrap();
        assert_eq!(check_columns(&columns, None, 255, &ok), Ok(None));
        let long = Row::from_pairs([("d", "x".repeat(401).as_str())]).unwrap();
        assert_eq!(
            check_columns(&columns, None, 255, &long)
                .unwrap_err()
                .problem,
            "is 401 characters, longer than its column's length 400"
        );
        let r = Row::from_pairs([("other", "x".repeat(300).as_str())]).unwrap();
        assert_eq!(
            check_columns(&[], None, 255, &r).unwrap_err().field,
            "other"
        );
        assert_eq!(check_columns(&[], None, 300, &r), Ok(None));
    }

    #[test]
    fn a_value_that_does_not_parse_as_its_columns_type_is_a_mismatch() {
        let columns = vec![Column {
            name: "Quantity".into(),
            source: ColumnSource::Field("q".into()),
            typing: crate::config::Typing {
                ty: Some(ColumnType::Integer),
                ..Default::default()
            },
            input: Default::default(),
        }];
        let r = Row::from_pairs([("q", "12")]).unwrap();
        assert_eq!(check_columns(&columns, None, 255, &r), Ok(None));
        let r = Row::from_pairs([("q", "twelve")]).unwrap();
        assert_eq!(
            check_columns(&columns, None, 255, &r).unwrap_err().problem,
            "does not parse as its column's type INTEGER (not a whole number; got \"twelve\")"
        );
    }

    #[test]
    fn extra_fields_mismatch_only_when_not_allowed() {
        let r = Row::from_pairs([("OrderId", "1"), ("Color", "red")]).unwrap();
        assert_eq!(check(&schema(true), &r, Source::Text), Ok(()));
        assert_eq!(
            check(&schema(false), &r, Source::Text).unwrap_err().problem,
            "is not in the schema"
        );
    }
}
