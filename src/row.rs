//! A row: one flat record of field name → value, kept as a single compact byte buffer.
//!
//! Rows are what every other part of weir passes around: ingest builds them, queues hold them
//! (the disk spool writes their bytes as they are), sinks read them. One allocation per row
//! keeps the memory queue close to the size of the raw payload, and reading a field is a
//! slice, not a parse.
//!
//! Layout, repeated per field: `varint(name_len) name kind varint(text_len) text`, where
//! `kind` is one [`Kind`] byte and `text` is the value exactly as the sender wrote it (the
//! unescaped string, or the JSON text of a number or array).

use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

/// What kind of value a field holds. The text of every kind is kept verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text: a JSON string, or any value from a query string or form.
    String,
    /// A JSON number, as written (`0.50` stays `0.50`).
    Number,
    /// A JSON `true` or `false`.
    Bool,
    /// A JSON `null`; its text is empty.
    Null,
    /// A JSON array, kept as its JSON text.
    Json,
}

impl Kind {
    fn to_byte(self) -> u8 {
        match self {
            Kind::String => 0,
            Kind::Number => 1,
            Kind::Bool => 2,
            Kind::Null => 3,
            Kind::Json => 4,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::String,
            1 => Kind::Number,
            2 => Kind::Bool,
            3 => Kind::Null,
            4 => Kind::Json,
            _ => return None,
        })
    }
}

/// One field of a row, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a str,
    pub kind: Kind,
    /// The value as text, as it goes into a CSV cell.
    pub text: &'a str,
}

/// An immutable row. Cloning is cheap (a reference count).
#[derive(Clone, PartialEq, Eq)]
pub struct Row(Arc<[u8]>);

/// Why bytes could not be read as a row (a corrupt spool record, say).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid row encoding at byte {at}: {what}")]
pub struct DecodeError {
    pub at: usize,
    pub what: &'static str,
}

/// Why a field could not be added to a row.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("field name is empty")]
    EmptyName,
    #[error("field \"{0}\" appears twice")]
    Duplicate(String),
}

impl Row {
    /// Starts an empty row.
    pub fn builder() -> RowBuilder {
        RowBuilder::default()
    }

    /// A row of text fields, in the order given (handy for query strings and tests).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Row, BuildError> {
        let mut b = Row::builder();
        for (name, value) in pairs {
            b.push(name, Kind::String, value)?;
        }
        Ok(b.finish())
    }

    /// Reads a row back from the bytes [`Row::as_bytes`] gave, checking every length,
    /// kind byte and UTF-8 sequence.
    pub fn from_bytes(bytes: &[u8]) -> Result<Row, DecodeError> {
        let mut at = 0;
        while at < bytes.len() {
            let name = read_str(bytes, &mut at)?;
            if name.is_empty() {
                return Err(DecodeError {
                    at,
                    what: "empty field name",
                });
            }
            let kind = *bytes.get(at).ok_or(DecodeError {
                at,
                what: "missing kind",
            })?;
            Kind::from_byte(kind).ok_or(DecodeError {
                at,
                what: "unknown kind",
            })?;
            at += 1;
            read_str(bytes, &mut at)?;
        }
        Ok(Row(Arc::from(bytes)))
    }

    /// The encoded bytes; what the disk spool stores.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Size of the encoded row in bytes.
    pub fn encoded_len(&self) -> usize {
        self.0.len()
    }

    /// The fields in the order they were received.
    pub fn fields(&self) -> Fields<'_> {
        Fields {
            buf: &self.0,
            at: 0,
        }
    }

    /// The fields in order as bytes, for loops that only copy them (the CSV writer): the
    /// same fields as [`Row::fields`] without checking their UTF-8 again (every row was
    /// checked when it was built or decoded).
    pub fn byte_fields(&self) -> ByteFields<'_> {
        ByteFields {
            buf: &self.0,
            at: 0,
        }
    }

    /// The field with this name, if the row has it.
    pub fn get(&self, name: &str) -> Option<Field<'_>> {
        self.fields().find(|f| f.name == name)
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields().count()
    }

    /// True when the row has no field.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.fields().map(|fl| (fl.name, fl.text)))
            .finish()
    }
}

/// Serializes as a JSON object with the values' original JSON types (numbers and arrays are
/// written from their original text).
impl Serialize for Row {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for f in self.fields() {
            match f.kind {
                Kind::String => map.serialize_entry(f.name, f.text)?,
                Kind::Bool => map.serialize_entry(f.name, &(f.text == "true"))?,
                Kind::Null => map.serialize_entry(f.name, &())?,
                Kind::Number | Kind::Json => match RawValue::from_string(f.text.to_owned()) {
                    Ok(raw) => map.serialize_entry(f.name, &raw)?,
                    // Only reachable for rows decoded from foreign bytes: keep the text.
                    Err(_) => map.serialize_entry(f.name, f.text)?,
                },
            }
        }
        map.end()
    }
}

/// Builds a row field by field.
pub struct RowBuilder {
    buf: Vec<u8>,
    names: Vec<(usize, usize)>,
    /// Hashes of the names so far, once the row has [`LINEAR_NAMES`] of them: a duplicate
    /// check costs one hash per field instead of a scan of every earlier name.
    seen: Option<(RandomState, HashSet<u64>)>,
}

/// Up to this many names, a scan is cheaper than hashing.
const LINEAR_NAMES: usize = 16;

impl Default for RowBuilder {
    /// Starts with room for a typical webhook row, so building one costs one allocation
    /// instead of a realloc per doubling (`finish` copies the row to its exact size anyway).
    fn default() -> RowBuilder {
        RowBuilder {
            buf: Vec::with_capacity(256),
            names: Vec::with_capacity(16),
            seen: None,
        }
    }
}

impl RowBuilder {
    /// Appends a field. Names must be non-empty and unique within the row.
    pub fn push(&mut self, name: &str, kind: Kind, text: &str) -> Result<(), BuildError> {
        if name.is_empty() {
            return Err(BuildError::EmptyName);
        }
        if self.is_duplicate(name.as_bytes()) {
            return Err(BuildError::Duplicate(name.to_owned()));
        }
        write_varint(&mut self.buf, name.len());
        self.names.push((self.buf.len(), name.len()));
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(kind.to_byte());
        write_varint(&mut self.buf, text.len());
        self.buf.extend_from_slice(text.as_bytes());
        Ok(())
    }

    /// True when an earlier field has this name. A hash hit is confirmed by a scan, which
    /// happens at most once per row: a true duplicate ends it.
    fn is_duplicate(&mut self, name: &[u8]) -> bool {
        let scan = |buf: &[u8], names: &[(usize, usize)]| {
            names
                .iter()
                .any(|&(start, len)| &buf[start..start + len] == name)
        };
        if self.names.len() < LINEAR_NAMES {
            return scan(&self.buf, &self.names);
        }
        let (buf, names) = (&self.buf, &self.names);
        let (state, seen) = self.seen.get_or_insert_with(|| {
            let state = RandomState::new();
            let seen = names
                .iter()
                .map(|&(start, len)| state.hash_one(&buf[start..start + len]))
                .collect();
            (state, seen)
        });
        !seen.insert(state.hash_one(name)) && scan(buf, names)
    }

    /// Bytes the row has so far.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// True when no field was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Number of fields pushed so far.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn finish(self) -> Row {
        Row(Arc::from(self.buf))
    }
}

/// Iterator over a row's fields.
pub struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Field<'a>> {
        if self.at >= self.buf.len() {
            return None;
        }
        // Rows are only built by RowBuilder or checked by Row::from_bytes, so the encoding
        // is valid and these reads cannot fail.
        let name = read_str(self.buf, &mut self.at).expect("row encoding checked at build");
        let kind = Kind::from_byte(self.buf[self.at]).expect("row encoding checked at build");
        self.at += 1;
        let text = read_str(self.buf, &mut self.at).expect("row encoding checked at build");
        Some(Field { name, kind, text })
    }
}

/// One field of a row as bytes, borrowed from it; see [`Row::byte_fields`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteField<'a> {
    pub name: &'a [u8],
    pub kind: Kind,
    pub text: &'a [u8],
}

/// Iterator over a row's fields as bytes.
pub struct ByteFields<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for ByteFields<'a> {
    type Item = ByteField<'a>;

    #[inline]
    fn next(&mut self) -> Option<ByteField<'a>> {
        if self.at >= self.buf.len() {
            return None;
        }
        // As in `Fields::next`: the encoding was checked when the row was made.
        let name = take(self.buf, &mut self.at);
        let kind = Kind::from_byte(self.buf[self.at]).expect("row encoding checked at build");
        self.at += 1;
        let text = take(self.buf, &mut self.at);
        Some(ByteField { name, kind, text })
    }
}

/// Reads one length-prefixed slice of a row checked at build: lengths under 128 (almost all)
/// are one byte, so that case skips the general varint loop. This is CSV writing's hot loop.
#[inline]
fn take<'a>(buf: &'a [u8], at: &mut usize) -> &'a [u8] {
    let first = buf[*at];
    let len = if first < 0x80 {
        *at += 1;
        first as usize
    } else {
        read_varint(buf, at).expect("row encoding checked at build")
    };
    let bytes = &buf[*at..*at + len];
    *at += len;
    bytes
}

fn write_varint(buf: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        buf.push((n as u8) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

fn read_varint(buf: &[u8], at: &mut usize) -> Result<usize, DecodeError> {
    let mut n: usize = 0;
    let mut shift = 0;
    loop {
        let b = *buf.get(*at).ok_or(DecodeError {
            at: *at,
            what: "truncated length",
        })?;
        *at += 1;
        if shift >= 35 {
            return Err(DecodeError {
                at: *at,
                what: "length too long",
            });
        }
        n |= ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
        shift += 7;
    }
}

fn read_bytes<'a>(buf: &'a [u8], at: &mut usize) -> Result<&'a [u8], DecodeError> {
    let len = read_varint(buf, at)?;
    let end = at
        .checked_add(len)
        .filter(|&end| end <= buf.len())
        .ok_or(DecodeError {
            at: *at,
            what: "length past the end",
        })?;
    let bytes = &buf[*at..end];
    *at = end;
    Ok(bytes)
}

fn read_str<'a>(buf: &'a [u8], at: &mut usize) -> Result<&'a str, DecodeError> {
    let bytes = read_bytes(buf, at)?;
    std::str::from_utf8(bytes).map_err(|_| DecodeError {
        at: *at - bytes.len(),
        what: "invalid UTF-8",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_come_back_in_order_with_their_text() {
        let mut b = Row::builder();
        b.push("OrderId", Kind::String, "0145632053").unwrap();
        b.push("Price", Kind::Number, "1.50").unwrap();
        b.push("Express", Kind::Bool, "true").unwrap();
        let row = b.finish();
        let got: Vec<_> = row.fields().map(|f| (f.name, f.kind, f.text)).collect();
        assert_eq!(
            got,
            vec![
                ("OrderId", Kind::String, "0145632053"),
                ("Price", Kind::Number, "1.50"),
                ("Express", Kind::Bool, "true")
            ]
        );
        assert_eq!(row.get("Price").unwrap().text, "1.50");
        assert!(row.get("Nope").is_none());
    }

    #[test]
    fn byte_fields_are_the_fields_as_bytes() {
        let mut b = Row::builder();
        b.push("Straße", Kind::String, "Müller, \"A\"").unwrap();
        b.push("n", Kind::Number, "1.50").unwrap();
        b.push("z", Kind::Null, "").unwrap();
        let row = b.finish();
        let bytes: Vec<_> = row
            .byte_fields()
            .map(|f| (f.name, f.kind, f.text))
            .collect();
        let text: Vec<_> = row
            .fields()
            .map(|f| (f.name.as_bytes(), f.kind, f.text.as_bytes()))
            .collect();
        assert_eq!(bytes, text);
        assert_eq!(bytes.len(), 3);
    }

    #[test]
    fn duplicate_and_empty_names_are_refused() {
        let mut b = Row::builder();
        b.push("a", Kind::String, "1").unwrap();
        assert_eq!(
            b.push("a", Kind::String, "2"),
            Err(BuildError::Duplicate("a".into()))
        );
        assert_eq!(b.push("", Kind::String, "2"), Err(BuildError::EmptyName));
    }

    #[test]
    fn duplicates_are_found_in_rows_past_the_linear_scan_size() {
        let mut b = Row::builder();
        let names: Vec<String> = (0..200).map(|i| format!("f{i}")).collect();
        for n in &names {
            b.push(n, Kind::Number, "1").unwrap();
        }
        for n in [&names[0], &names[15], &names[16], &names[199]] {
            assert_eq!(
                b.push(n, Kind::String, "x"),
                Err(BuildError::Duplicate(n.clone()))
            );
        }
        b.push("f200", Kind::Number, "2").unwrap();
        assert_eq!(b.finish().len(), 201);
    }

    #[test]
    fn serializes_to_json_with_original_types() {
        let mut b = Row::builder();
        b.push("s", Kind::String, "0012").unwrap();
        b.push("n", Kind::Number, "1.50").unwrap();
        b.push("b", Kind::Bool, "false").unwrap();
        b.push("z", Kind::Null, "").unwrap();
        b.push("a", Kind::Json, "[1,\"x\"]").unwrap();
        let json = serde_json::to_string(&b.finish()).unwrap();
        assert_eq!(
            json,
            r#"{"s":"0012","n":1.50,"b":false,"z":null,"a":[1,"x"]}"#
        );
    }

    #[test]
    fn corrupt_bytes_are_reported_not_panicked_on() {
        assert!(Row::from_bytes(&[5, b'a']).is_err());
        assert!(Row::from_bytes(&[1, b'a', 9, 0]).is_err());
        assert!(Row::from_bytes(&[1, 0xff, 0, 0]).is_err());
        assert!(Row::from_bytes(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    proptest! {
        #[test]
        fn encoding_round_trips(fields in proptest::collection::btree_map("[a-zA-Zä.]{1,8}", ".{0,40}", 0..12)) {
            let row = Row::from_pairs(fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
            let back = Row::from_bytes(row.as_bytes()).unwrap();
            let got: Vec<_> = back.fields().map(|f| (f.name.to_owned(), f.text.to_owned())).collect();
            let want: Vec<_> = fields.into_iter().collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(row) = Row::from_bytes(&bytes) {
                let _ = row.fields().count();
            }
        }
    }
}
