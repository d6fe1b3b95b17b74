//! Checks a row against a pipeline's schema: required fields, field types, extra fields.

use crate::config::{FieldType, Schema};
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
    fn extra_fields_mismatch_only_when_not_allowed() {
        let r = Row::from_pairs([("OrderId", "1"), ("Color", "red")]).unwrap();
        assert_eq!(check(&schema(true), &r, Source::Text), Ok(()));
        assert_eq!(
            check(&schema(false), &r, Source::Text).unwrap_err().problem,
            "is not in the schema"
        );
    }
}
