//! Turns a request body or query string into rows: JSON (object or array of objects), NDJSON,
//! form and query-string rows. Pure functions; every error names where the problem is.
//!
//! JSON values keep their exact text: numbers are not re-formatted (`1.50` stays `1.50`),
//! nested objects flatten to dotted names (`customer.name`), arrays stay JSON text.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::row::{BuildError, Kind, Row, RowBuilder};

/// Nested objects deeper than this are refused.
pub const MAX_DEPTH: usize = 32;

/// Why a body could not be read as rows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("body is not valid UTF-8")]
    NotUtf8,
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("JSON body must be an object or an array of objects")]
    NotObjectOrArray,
    #[error("array element {0} is not an object")]
    ElementNotObject(usize),
    #[error("array element {index}: {problem}")]
    Element { index: usize, problem: String },
    #[error("NDJSON line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("{0}")]
    Field(String),
    #[error("{what} is not valid UTF-8 after percent-decoding")]
    PercentUtf8 { what: &'static str },
}

/// Parses `application/json`: one object is one row, an array of objects is many.
pub fn json(body: &[u8]) -> Result<Vec<Row>, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::NotUtf8)?;
    match text.trim_start().as_bytes().first() {
        Some(b'{') => Ok(vec![object_row(text).map_err(ParseError::from_problem)?]),
        Some(b'[') => {
            let items: Vec<&RawValue> =
                serde_json::from_str(text).map_err(|e| ParseError::Json(e.to_string()))?;
            items
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    if !item.get().starts_with('{') {
                        return Err(ParseError::ElementNotObject(index));
                    }
                    object_row(item.get()).map_err(|p| ParseError::Element {
                        index,
                        problem: p.message(),
                    })
                })
                .collect()
        }
        _ => {
            // Let serde_json describe what is wrong when it is not JSON at all.
            serde_json::from_str::<&RawValue>(text).map_err(|e| ParseError::Json(e.to_string()))?;
            Err(ParseError::NotObjectOrArray)
        }
    }
}

/// Parses `application/x-ndjson`: one object per line; blank lines are skipped.
pub fn ndjson(body: &[u8]) -> Result<Vec<Row>, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::NotUtf8)?;
    let mut rows = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fail = |problem: String| ParseError::Line {
            line: i + 1,
            problem,
        };
        if !line.starts_with('{') {
            serde_json::from_str::<&RawValue>(line).map_err(|e| fail(e.to_string()))?;
            return Err(fail("is not a JSON object".into()));
        }
        rows.push(object_row(line).map_err(|p| fail(p.message()))?);
    }
    Ok(rows)
}

/// Parses a query string or an `application/x-www-form-urlencoded` body as one row. Values
/// stay text exactly as sent: `+` is a space, `%XX` is decoded as UTF-8.
pub fn form(text: &[u8], what: &'static str) -> Result<Row, ParseError> {
    let mut b = Row::builder();
    for pair in text.split(|&c| c == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match pair.iter().position(|&c| c == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        let name = decode_component(name, what)?;
        let value = decode_component(value, what)?;
        b.push(&name, Kind::String, &value)
            .map_err(|e| ParseError::Field(field_error(e, what)))?;
    }
    Ok(b.finish())
}

fn decode_component(raw: &[u8], what: &'static str) -> Result<String, ParseError> {
    let plus_as_space: Cow<[u8]> = if raw.contains(&b'+') {
        Cow::Owned(
            raw.iter()
                .map(|&c| if c == b'+' { b' ' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(raw)
    };
    let bytes: Cow<[u8]> = percent_encoding::percent_decode(&plus_as_space).into();
    String::from_utf8(bytes.into_owned()).map_err(|_| ParseError::PercentUtf8 { what })
}

fn field_error(e: BuildError, what: &str) -> String {
    match e {
        BuildError::EmptyName => format!("{what} has a field with an empty name"),
        BuildError::Duplicate(name) => format!("{what} has field \"{name}\" more than once"),
    }
}

/// A problem inside one object, before we know which element or line it was.
#[derive(Debug)]
enum Problem {
    Json(String),
    Field(BuildError),
    TooDeep,
}

impl Problem {
    fn message(self) -> String {
        match self {
            Problem::Json(e) => format!("malformed JSON: {e}"),
            Problem::Field(BuildError::EmptyName) => "a field name is empty".into(),
            Problem::Field(BuildError::Duplicate(n)) => {
                format!("field \"{n}\" appears more than once (after flattening nested objects)")
            }
            Problem::TooDeep => format!("objects are nested deeper than {MAX_DEPTH} levels"),
        }
    }
}

impl ParseError {
    fn from_problem(p: Problem) -> ParseError {
        match p {
            Problem::Json(e) => ParseError::Json(e),
            other => ParseError::Field(other.message()),
        }
    }
}

fn object_row(json: &str) -> Result<Row, Problem> {
    let mut b = Row::builder();
    flatten(json, "", &mut b, 0)?;
    Ok(b.finish())
}

fn flatten(json: &str, prefix: &str, b: &mut RowBuilder, depth: usize) -> Result<(), Problem> {
    if depth >= MAX_DEPTH {
        return Err(Problem::TooDeep);
    }
    let entries: Entries = serde_json::from_str(json).map_err(|e| Problem::Json(e.to_string()))?;
    for (key, value) in entries.0 {
        let name: Cow<str> = if prefix.is_empty() {
            key
        } else {
            Cow::Owned(format!("{prefix}.{key}"))
        };
        let raw = value.get().trim_start();
        match raw.as_bytes().first() {
            Some(b'{') => flatten(raw, &name, b, depth + 1)?,
            Some(b'"') => {
                let s: CowStr =
                    serde_json::from_str(raw).map_err(|e| Problem::Json(e.to_string()))?;
                b.push(&name, Kind::String, &s.0).map_err(Problem::Field)?;
            }
            Some(b't') => b.push(&name, Kind::Bool, "true").map_err(Problem::Field)?,
            Some(b'f') => b.push(&name, Kind::Bool, "false").map_err(Problem::Field)?,
            Some(b'n') => b.push(&name, Kind::Null, "").map_err(Problem::Field)?,
            Some(b'[') => b
                .push(&name, Kind::Json, &minify(raw))
                .map_err(Problem::Field)?,
            _ => b
                .push(&name, Kind::Number, raw.trim_end())
                .map_err(Problem::Field)?,
        }
    }
    Ok(())
}

/// Removes insignificant whitespace from valid JSON text, leaving every token as written.
fn minify(json: &str) -> Cow<'_, str> {
    if !json.contains(|c: char| c.is_ascii_whitespace()) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// An object's entries in document order, values left as raw JSON.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<CowStr<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    out.push((key.0, value));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON string, borrowed from the input when it has no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(row: &Row) -> Vec<(String, Kind, String)> {
        row.fields()
            .map(|f| (f.name.into(), f.kind, f.text.into()))
            .collect()
    }

    #[test]
    fn a_json_object_is_one_row_with_exact_value_text() {
        let rows = json(br#"{"OrderId":"0145632053","Price":1.50,"Qty":-3e2,"Express":true,"Note":null,"Stadt":"M\u00fcnchen"}"#).unwrap();
        assert_eq!(
            fields(&rows[0]),
            vec![
                ("OrderId".into(), Kind::String, "0145632053".into()),
                ("Price".into(), Kind::Number, "1.50".into()),
                ("Qty".into(), Kind::Number, "-3e2".into()),
                ("Express".into(), Kind::Bool, "true".into()),
                ("Note".into(), Kind::Null, "".into()),
                ("Stadt".into(), Kind::String, "München".into()),
            ]
        );
    }

    #[test]
    fn nested_objects_flatten_and_arrays_stay_json_text() {
        let rows = json(br#"{"customer": {"name": "Ann", "address": {"zip": "01067"}}, "tags": [ 1, "a b", [2] ]}"#).unwrap();
        assert_eq!(
            fields(&rows[0]),
            vec![
                ("customer.name".into(), Kind::String, "Ann".into()),
                ("customer.address.zip".into(), Kind::String, "01067".into()),
                ("tags".into(), Kind::Json, r#"[1,"a b",[2]]"#.into()),
            ]
        );
    }

    #[test]
    fn an_array_of_objects_is_many_rows_and_other_elements_are_named() {
        assert_eq!(json(br#"[{"a":1},{"a":2}]"#).unwrap().len(), 2);
        assert_eq!(json(b"[]").unwrap().len(), 0);
        assert_eq!(
            json(br#"[{"a":1}, 5]"#),
            Err(ParseError::ElementNotObject(1))
        );
        assert_eq!(json(b"5"), Err(ParseError::NotObjectOrArray));
        assert!(matches!(json(b"{\"a\":"), Err(ParseError::Json(_))));
    }

    #[test]
    fn colliding_names_after_flattening_are_refused() {
        let err = json(br#"{"a.b": 1, "a": {"b": 2}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field \"a.b\" appears more than once (after flattening nested objects)"
        );
        let err = json(br#"[{"x":1},{"x":1,"x":2}]"#).unwrap_err();
        assert!(
            err.to_string().starts_with("array element 1: field \"x\""),
            "{err}"
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{}1{}", "{\"a\":".repeat(40), "}".repeat(40));
        assert!(
            json(deep.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("nested deeper")
        );
    }

    #[test]
    fn ndjson_errors_name_the_line() {
        let rows = ndjson(b"{\"a\":1}\n\n{\"a\":2}\r\n").unwrap();
        assert_eq!(rows.len(), 2);
        let err = ndjson(b"{\"a\":1}\n{\"a\":\n").unwrap_err();
        assert!(err.to_string().starts_with("NDJSON line 2: "), "{err}");
        assert_eq!(
            ndjson(b"{\"a\":1}\n[1]").unwrap_err().to_string(),
            "NDJSON line 2: is not a JSON object"
        );
    }

    #[test]
    fn query_strings_keep_leading_zeros_dots_and_umlauts() {
        let row = form(
            b"OrderId=0145632053&DeliveryDate=12.03.2021&Stadt=M%C3%BCnchen&Note=a+b%2Bc&empty",
            "query string",
        )
        .unwrap();
        assert_eq!(
            fields(&row),
            vec![
                ("OrderId".into(), Kind::String, "0145632053".into()),
                ("DeliveryDate".into(), Kind::String, "12.03.2021".into()),
                ("Stadt".into(), Kind::String, "München".into()),
                ("Note".into(), Kind::String, "a b+c".into()),
                ("empty".into(), Kind::String, "".into()),
            ]
        );
    }

    #[test]
    fn bad_query_strings_are_explained() {
        assert_eq!(
            form(b"a=%FF", "query string").unwrap_err().to_string(),
            "query string is not valid UTF-8 after percent-decoding"
        );
        assert_eq!(
            form(b"a=1&a=2", "form body").unwrap_err().to_string(),
            "form body has field \"a\" more than once"
        );
        assert_eq!(
            form(b"=1", "form body").unwrap_err().to_string(),
            "form body has a field with an empty name"
        );
    }
}
