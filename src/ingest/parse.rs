//! Turns a request body or query string into rows: JSON (object or array of objects), NDJSON,
//! form and query-string rows. Pure functions; every error names where the problem is.
//!
//! JSON values keep their exact text: numbers are not re-formatted (`1.50` stays `1.50`),
//! nested objects flatten to dotted names (`customer.name`), arrays stay JSON text.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::row::{BuildError, Kind, Row, RowBuilder};

/// The limits a body is parsed within. Each is checked as the parser goes, before the work
/// it bounds: the first field past a limit ends the parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_rows: usize,
    pub max_fields_per_row: usize,
    /// A field name after flattening (`customer.address.zip`), in bytes.
    pub max_field_name_bytes: usize,
    /// A row's names and values together, in bytes.
    pub max_row_bytes: usize,
    /// Nesting of objects and arrays; the row's own object is level 1.
    pub max_depth: usize,
}

impl Limits {
    /// The server defaults (`[server]` without limit keys, `max_body_bytes` = 1 MiB).
    pub const DEFAULT: Limits = Limits {
        max_rows: 10_000,
        max_fields_per_row: 1_000,
        max_field_name_bytes: 256,
        max_row_bytes: 1024 * 1024,
        max_depth: 32,
    };
}

/// A limit of [`Limits`] that a body went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Rows,
    FieldsPerRow,
    FieldNameBytes,
    RowBytes,
    Depth,
}

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
    Element { index: usize, problem: Problem },
    #[error("NDJSON line {line}: {problem}")]
    Line { line: usize, problem: Problem },
    #[error("{0}")]
    Field(Problem),
    #[error("{}", form_message(.what, .problem))]
    Form {
        what: &'static str,
        problem: Problem,
    },
    #[error("{what} is not valid UTF-8 after percent-decoding")]
    PercentUtf8 { what: &'static str },
    #[error("the request has more than {0} rows (server.max_rows_per_request)")]
    TooManyRows(usize),
}

impl ParseError {
    /// The limit this error reports, if it is one.
    pub fn limit(&self) -> Option<Limit> {
        match self {
            ParseError::TooManyRows(_) => Some(Limit::Rows),
            ParseError::Element { problem, .. }
            | ParseError::Line { problem, .. }
            | ParseError::Field(problem)
            | ParseError::Form { problem, .. } => problem.limit(),
            _ => None,
        }
    }
}

fn form_message(what: &str, p: &Problem) -> String {
    match p {
        Problem::Field(BuildError::EmptyName) => format!("{what} has a field with an empty name"),
        Problem::Field(BuildError::Duplicate(name)) => {
            format!("{what} has field \"{name}\" more than once")
        }
        other => format!("{what}: {other}"),
    }
}

/// A problem inside one row, before we know which element or line it was.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    Json(String),
    NotObject,
    Field(BuildError),
    TooDeep(usize),
    TooManyFields(usize),
    NameTooLong(usize),
    RowTooLarge(usize),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Json(e) => write!(f, "malformed JSON: {e}"),
            Problem::NotObject => f.write_str("is not a JSON object"),
            Problem::Field(BuildError::EmptyName) => f.write_str("a field name is empty"),
            Problem::Field(BuildError::Duplicate(n)) => write!(
                f,
                "field \"{n}\" appears more than once (after flattening nested objects)"
            ),
            Problem::TooDeep(max) => write!(
                f,
                "objects and arrays are nested deeper than {max} levels (server.max_depth)"
            ),
            Problem::TooManyFields(max) => write!(
                f,
                "a row has more than {max} fields (server.max_fields_per_row)"
            ),
            Problem::NameTooLong(max) => write!(
                f,
                "a field name is longer than {max} bytes after flattening (server.max_field_name_bytes)"
            ),
            Problem::RowTooLarge(max) => write!(
                f,
                "a row is larger than {max} bytes (server.max_body_bytes)"
            ),
        }
    }
}

impl Problem {
    fn limit(&self) -> Option<Limit> {
        match self {
            Problem::TooDeep(_) => Some(Limit::Depth),
            Problem::TooManyFields(_) => Some(Limit::FieldsPerRow),
            Problem::NameTooLong(_) => Some(Limit::FieldNameBytes),
            Problem::RowTooLarge(_) => Some(Limit::RowBytes),
            Problem::Json(_) | Problem::NotObject | Problem::Field(_) => None,
        }
    }
}

/// Parses `application/json` within the default limits.
pub fn json(body: &[u8]) -> Result<Vec<Row>, ParseError> {
    json_within(body, &Limits::DEFAULT)
}

/// Parses `application/json`: one object is one row, an array of objects is many.
pub fn json_within(body: &[u8], limits: &Limits) -> Result<Vec<Row>, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::NotUtf8)?;
    match text.trim_start().as_bytes().first() {
        Some(b'{') => Ok(vec![object_row(text, limits).map_err(|p| match p {
            Problem::Json(e) => ParseError::Json(e),
            other => ParseError::Field(other),
        })?]),
        Some(b'[') => {
            let mut stop = None;
            let mut de = serde_json::Deserializer::from_str(text);
            let parsed = de
                .deserialize_seq(Elements {
                    limits,
                    stop: &mut stop,
                })
                .and_then(|rows| de.end().map(|()| rows));
            match (parsed, stop) {
                (_, Some(e)) => Err(e),
                (Ok(rows), None) => Ok(rows),
                (Err(e), None) => Err(ParseError::Json(e.to_string())),
            }
        }
        _ => {
            // Let serde_json describe what is wrong when it is not JSON at all.
            serde_json::from_str::<&RawValue>(text).map_err(|e| ParseError::Json(e.to_string()))?;
            Err(ParseError::NotObjectOrArray)
        }
    }
}

/// The rows of a JSON array, each built as soon as its element is read, so the first
/// element past a limit ends the parse.
struct Elements<'a> {
    limits: &'a Limits,
    /// Why the parse stopped, when it was not malformed JSON.
    stop: &'a mut Option<ParseError>,
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = Vec<Row>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Row>, A::Error> {
        let mut rows = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            let index = rows.len();
            let row = if index >= self.limits.max_rows {
                Err(ParseError::TooManyRows(self.limits.max_rows))
            } else if !item.get().starts_with('{') {
                Err(ParseError::ElementNotObject(index))
            } else {
                object_row(item.get(), self.limits)
                    .map_err(|problem| ParseError::Element { index, problem })
            };
            match row {
                Ok(row) => rows.push(row),
                Err(e) => {
                    *self.stop = Some(e);
                    return Err(de::Error::custom("stopped"));
                }
            }
        }
        Ok(rows)
    }
}

/// Parses `application/x-ndjson` within the default limits.
pub fn ndjson(body: &[u8]) -> Result<Vec<Row>, ParseError> {
    ndjson_within(body, &Limits::DEFAULT)
}

/// Parses `application/x-ndjson`: one object per line; blank lines are skipped.
pub fn ndjson_within(body: &[u8], limits: &Limits) -> Result<Vec<Row>, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::NotUtf8)?;
    let mut rows = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if rows.len() >= limits.max_rows {
            return Err(ParseError::TooManyRows(limits.max_rows));
        }
        let fail = |problem: Problem| ParseError::Line {
            line: i + 1,
            problem,
        };
        if !line.starts_with('{') {
            serde_json::from_str::<&RawValue>(line)
                .map_err(|e| fail(Problem::Json(e.to_string())))?;
            return Err(fail(Problem::NotObject));
        }
        rows.push(object_row(line, limits).map_err(fail)?);
    }
    Ok(rows)
}

/// Parses a query string or form body as one row within the default limits.
pub fn form(text: &[u8], what: &'static str) -> Result<Row, ParseError> {
    form_within(text, what, &Limits::DEFAULT)
}

/// Parses a query string or an `application/x-www-form-urlencoded` body as one row. Values
/// stay text exactly as sent: `+` is a space, `%XX` is decoded as UTF-8.
pub fn form_within(text: &[u8], what: &'static str, limits: &Limits) -> Result<Row, ParseError> {
    let mut b = Row::builder();
    let fail = |problem| ParseError::Form { what, problem };
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
        check_field(&b, &name, &value, limits).map_err(fail)?;
        b.push(&name, Kind::String, &value)
            .map_err(|e| fail(Problem::Field(e)))?;
    }
    Ok(b.finish())
}

/// Checks the limits a new field would pass, before it is added.
fn check_field(b: &RowBuilder, name: &str, text: &str, limits: &Limits) -> Result<(), Problem> {
    if b.len() >= limits.max_fields_per_row {
        return Err(Problem::TooManyFields(limits.max_fields_per_row));
    }
    if name.len() > limits.max_field_name_bytes {
        return Err(Problem::NameTooLong(limits.max_field_name_bytes));
    }
    if b.encoded_len() + name.len() + text.len() > limits.max_row_bytes {
        return Err(Problem::RowTooLarge(limits.max_row_bytes));
    }
    Ok(())
}

/// One name or value of a query string or form: borrowed as it is when it has nothing to
/// decode (the common case: no allocation), else with `+` and `%XX` decoded.
fn decode_component<'a>(raw: &'a [u8], what: &'static str) -> Result<Cow<'a, str>, ParseError> {
    if !raw.iter().any(|&c| c == b'+' || c == b'%') {
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| ParseError::PercentUtf8 { what });
    }
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
    String::from_utf8(bytes.into_owned())
        .map(Cow::Owned)
        .map_err(|_| ParseError::PercentUtf8 { what })
}

fn object_row(json: &str, limits: &Limits) -> Result<Row, Problem> {
    let mut f = Flattener {
        b: Row::builder(),
        name: String::new(),
        limits,
    };
    f.object(json, 1)?;
    Ok(f.b.finish())
}

/// Flattens one object into a row. Every name is built in one reused buffer: a nested
/// key costs its own bytes, not a copy of its whole prefix.
struct Flattener<'l> {
    b: RowBuilder,
    name: String,
    limits: &'l Limits,
}

impl Flattener<'_> {
    /// Adds the fields of the object `json` at nesting `level` under the current name.
    fn object(&mut self, json: &str, level: usize) -> Result<(), Problem> {
        if level > self.limits.max_depth {
            return Err(Problem::TooDeep(self.limits.max_depth));
        }
        let mut problem = None;
        let mut de = serde_json::Deserializer::from_str(json);
        let parsed = de
            .deserialize_map(Fields {
                f: self,
                level,
                problem: &mut problem,
            })
            .and_then(|()| de.end());
        match (parsed, problem) {
            (_, Some(p)) => Err(p),
            (Ok(()), None) => Ok(()),
            (Err(e), None) => Err(Problem::Json(e.to_string())),
        }
    }

    fn field(&mut self, key: &str, value: &str, level: usize) -> Result<(), Problem> {
        if key.is_empty() {
            return Err(Problem::Field(BuildError::EmptyName));
        }
        let prefix = self.name.len();
        let dot = usize::from(prefix > 0);
        if prefix + dot + key.len() > self.limits.max_field_name_bytes {
            return Err(Problem::NameTooLong(self.limits.max_field_name_bytes));
        }
        if dot == 1 {
            self.name.push('.');
        }
        self.name.push_str(key);
        let done = self.value(value.trim_start(), level);
        self.name.truncate(prefix);
        done
    }

    fn value(&mut self, raw: &str, level: usize) -> Result<(), Problem> {
        let (kind, text): (Kind, Cow<str>) = match raw.as_bytes().first() {
            Some(b'{') => return self.object(raw, level + 1),
            Some(b'"') => {
                let s: CowStr =
                    serde_json::from_str(raw).map_err(|e| Problem::Json(e.to_string()))?;
                (Kind::String, s.0)
            }
            Some(b't') => (Kind::Bool, Cow::Borrowed("true")),
            Some(b'f') => (Kind::Bool, Cow::Borrowed("false")),
            Some(b'n') => (Kind::Null, Cow::Borrowed("")),
            Some(b'[') => {
                let room = self.limits.max_depth.saturating_sub(level);
                (Kind::Json, array_text(raw, room, self.limits.max_depth)?)
            }
            _ => (Kind::Number, Cow::Borrowed(raw.trim_end())),
        };
        check_field(&self.b, &self.name, &text, self.limits)?;
        self.b.push(&self.name, kind, &text).map_err(Problem::Field)
    }
}

/// The fields of one object, each added to the row as soon as it is read.
struct Fields<'a, 'l> {
    f: &'a mut Flattener<'l>,
    level: usize,
    problem: &'a mut Option<Problem>,
}

impl<'de> Visitor<'de> for Fields<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            if let Err(p) = self.f.field(&key.0, value.get(), self.level) {
                *self.problem = Some(p);
                return Err(de::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

/// An array value as compact JSON text: insignificant whitespace removed, every token as
/// written. Refused when its nesting goes past `room` more levels.
fn array_text(json: &str, room: usize, max_depth: usize) -> Result<Cow<'_, str>, Problem> {
    let mut depth = 0usize;
    let (mut in_string, mut escaped, mut spaces) = (false, false, false);
    for &c in json.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > room {
                    return Err(Problem::TooDeep(max_depth));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            c if c.is_ascii_whitespace() => spaces = true,
            _ => {}
        }
    }
    Ok(if spaces {
        Cow::Owned(minify(json))
    } else {
        Cow::Borrowed(json)
    })
}

/// Removes insignificant whitespace from valid JSON text, leaving every token as written.
fn minify(json: &str) -> String {
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
    out
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

    fn small() -> Limits {
        Limits {
            max_rows: 2,
            max_fields_per_row: 3,
            max_field_name_bytes: 8,
            max_row_bytes: 64,
            max_depth: 4,
        }
    }

    #[test]
    fn each_limit_is_reported_with_its_kind_and_key() {
        let cases: [(&[u8], Limit); 7] = [
            (br#"[{"a":1},{"a":2},{"a":3}]"#, Limit::Rows),
            (br#"{"a":1,"b":2,"c":3,"d":4}"#, Limit::FieldsPerRow),
            (br#"{"a":{"b":1,"c":2},"d":{"e":3,"f":4}}"#, Limit::FieldsPerRow),
            (br#"{"abcdefghi":1}"#, Limit::FieldNameBytes),
            (br#"{"abcd":{"efgh":1}}"#, Limit::FieldNameBytes),
            (br#"{"a":"01234567890123456789012345678901234567890123456789012345678901234567890"}"#, Limit::RowBytes),
            (br#"{"a":{"b":{"c":{"d":{"e":1}}}}}"#, Limit::Depth),
        ];
        for (body, limit) in cases {
            let err = json_within(body, &small()).unwrap_err();
            assert_eq!(
                err.limit(),
                Some(limit),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
            assert!(err.to_string().contains("(server."), "{err}");
        }
        assert_eq!(
            ndjson_within(b"{\"a\":1}\n{\"a\":1}\n{\"a\":1}", &small()).unwrap_err(),
            ParseError::TooManyRows(2)
        );
        let err = form_within(b"a=1&b=2&c=3&d=4", "form body", &small()).unwrap_err();
        assert_eq!(err.limit(), Some(Limit::FieldsPerRow));
        assert_eq!(
            err.to_string(),
            "form body: a row has more than 3 fields (server.max_fields_per_row)"
        );
        assert!(json_within(br#"[{"a":{"b":{"c":[1]}}}]"#, &small()).is_ok());
    }

    #[test]
    fn the_first_field_past_a_limit_ends_the_parse_before_the_rest_is_read() {
        // The broken JSON after the fourth field is never reached.
        let err = json_within(br#"{"a":1,"b":2,"c":3,"d":4,"e":"#, &small()).unwrap_err();
        assert_eq!(err.limit(), Some(Limit::FieldsPerRow));
        let err = json_within(br#"[{"a":1},{"a":2},{"a":3},"#, &small()).unwrap_err();
        assert_eq!(err, ParseError::TooManyRows(2));
    }

    #[test]
    fn arrays_count_towards_the_nesting_limit() {
        let limits = small();
        assert!(json_within(br#"{"a":[[[1]]]}"#, &limits).is_ok());
        for body in [
            &br#"{"a":[[[[1]]]]}"#[..],
            br#"{"a":{"b":[[[1]]]}}"#,
            br#"{"a":[{"b":[[{}]]}]}"#,
        ] {
            let err = json_within(body, &limits).unwrap_err();
            assert_eq!(
                err.limit(),
                Some(Limit::Depth),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Brackets inside strings are text.
        assert!(json_within(br#"{"a":["[[[[[[\"]]"]}"#, &limits).is_ok());
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            json(deep.as_bytes()).unwrap_err().limit(),
            Some(Limit::Depth)
        );
    }

    #[test]
    fn an_empty_name_is_refused_at_every_level() {
        for body in [
            &br#"{"a":{"":1}}"#[..],
            br#"{"a":{"b":{"":1}}}"#,
            br#"{"":{"a":1}}"#,
        ] {
            assert_eq!(
                json(body).unwrap_err().to_string(),
                "a field name is empty",
                "{}",
                String::from_utf8_lossy(body)
            );
        }
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
