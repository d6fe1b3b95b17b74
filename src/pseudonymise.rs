//! Pseudonymisation of personal fields at ingest, before a row is queued: the clear value
//! never reaches the spool, the dead-letter file, the logs, a dry run or the sink.
//!
//! `hmac-sha256` (the default) maps a value to the hex HMAC-SHA256 of it under a secret key:
//! the same value gives the same token in every run and pipeline with that key, so joins and
//! keys still work, and nobody without the key can test a guess. `sha256` hashes the value
//! after a salt; `mask` writes `*****`; `drop` removes the field.

use std::collections::HashMap;

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::config::Secret;
use crate::row::{Kind, Row};

/// What a masked value becomes, as Celonis' own connector writes it.
pub const MASK: &str = "*****";
/// The length of an `hmac-sha256` or `sha256` token: 64 hex digits.
pub const TOKEN_LENGTH: u32 = 64;

/// How one field is pseudonymised.
#[derive(Clone)]
pub enum Method {
    HmacSha256(Secret),
    Sha256 { salt: Secret },
    Mask,
    Drop,
}

impl Method {
    /// The name written in the config.
    pub fn name(&self) -> &'static str {
        match self {
            Method::HmacSha256(_) => "hmac-sha256",
            Method::Sha256 { .. } => "sha256",
            Method::Mask => "mask",
            Method::Drop => "drop",
        }
    }

    /// The longest value the method writes, in characters (`None`: it writes none).
    pub fn output_length(&self) -> Option<u32> {
        match self {
            Method::HmacSha256(_) | Method::Sha256 { .. } => Some(TOKEN_LENGTH),
            Method::Mask => Some(MASK.len() as u32),
            Method::Drop => None,
        }
    }

    fn apply(&self, value: &str) -> String {
        match self {
            Method::HmacSha256(key) => {
                let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
                    .expect("HMAC takes a key of any length");
                mac.update(value.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
            Method::Sha256 { salt } => {
                let mut h = Sha256::new();
                h.update(salt.expose().as_bytes());
                h.update(value.as_bytes());
                hex::encode(h.finalize())
            }
            Method::Mask => MASK.to_owned(),
            Method::Drop => String::new(),
        }
    }
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A pipeline's pseudonymised fields (dotted names, as rows hold them after flattening).
#[derive(Debug, Clone, Default)]
pub struct Pseudonymiser {
    fields: HashMap<String, Method>,
}

impl Pseudonymiser {
    /// Fails with the field's name if a field is given twice.
    pub fn new(rules: impl IntoIterator<Item = (String, Method)>) -> Result<Pseudonymiser, String> {
        let mut fields = HashMap::new();
        for (field, method) in rules {
            if fields.insert(field.clone(), method).is_some() {
                return Err(field);
            }
        }
        Ok(Pseudonymiser { fields })
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The method of a field, if it is pseudonymised.
    pub fn method(&self, field: &str) -> Option<&Method> {
        self.fields.get(field)
    }

    /// Every pseudonymised field and its method, sorted by field.
    pub fn fields(&self) -> Vec<(&str, &Method)> {
        let mut out: Vec<_> = self.fields.iter().map(|(f, m)| (f.as_str(), m)).collect();
        out.sort_by_key(|(f, _)| *f);
        out
    }

    /// The row with its pseudonymised fields replaced (or removed), the others untouched
    /// and in order. A null or empty value stays as it is: it carries nothing to hide.
    /// Returns the row itself, without copying, when no field applies.
    pub fn apply(&self, row: Row) -> Row {
        if self.fields.is_empty()
            || !row
                .fields()
                .any(|f| self.fields.contains_key(f.name) && !f.text.is_empty())
        {
            return row;
        }
        let mut b = Row::builder();
        for f in row.fields() {
            let Some(method) = self.fields.get(f.name) else {
                b.push(f.name, f.kind, f.text)
                    .expect("copied from a valid row");
                continue;
            };
            if f.kind == Kind::Null || f.text.is_empty() {
                if !matches!(method, Method::Drop) {
                    b.push(f.name, f.kind, f.text)
                        .expect("copied from a valid row");
                }
                continue;
            }
            if matches!(method, Method::Drop) {
                continue;
            }
            b.push(f.name, Kind::String, &method.apply(f.text))
                .expect("a token is a valid value");
        }
        b.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Pseudonymiser {
        Pseudonymiser::new([
            (
                "customer.email".to_owned(),
                Method::HmacSha256(Secret::new("k1")),
            ),
            (
                "EmployeeId".to_owned(),
                Method::Sha256 {
                    salt: Secret::new("s"),
                },
            ),
            ("Name".to_owned(), Method::Mask),
            ("Phone".to_owned(), Method::Drop),
        ])
        .unwrap()
    }

    #[test]
    fn each_method_replaces_its_field_and_leaves_the_rest_in_order() {
        let mut b = Row::builder();
        b.push("OrderId", Kind::String, "0145632053").unwrap();
        b.push("customer.email", Kind::String, "alice@example.com")
            .unwrap();
        b.push("EmployeeId", Kind::Number, "4711").unwrap();
        b.push("Name", Kind::String, "Alice").unwrap();
        b.push("Phone", Kind::String, "+49 30 1234").unwrap();
        let out = rules().apply(b.finish());
        let fields: Vec<(String, Kind, String)> = out
            .fields()
            .map(|f| (f.name.to_owned(), f.kind, f.text.to_owned()))
            .collect();
        let expected_hmac = {
            let mut mac = hmac::Hmac::<Sha256>::new_from_slice(b"k1").unwrap();
            mac.update(b"alice@example.com");
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(
            fields,
            vec![
                ("OrderId".into(), Kind::String, "0145632053".into()),
                ("customer.email".into(), Kind::String, expected_hmac),
                (
                    "EmployeeId".into(),
                    Kind::String,
                    hex::encode(Sha256::digest(b"s4711"))
                ),
                ("Name".into(), Kind::String, MASK.into()),
            ]
        );
    }

    #[test]
    fn hmac_tokens_are_stable_per_key_and_differ_between_keys() {
        let with = |key: &str| {
            let p = Pseudonymiser::new([("e".to_owned(), Method::HmacSha256(Secret::new(key)))])
                .unwrap();
            let row = Row::from_pairs([("e", "bob@example.com")]).unwrap();
            p.apply(row).get("e").unwrap().text.to_owned()
        };
        assert_eq!(with("key-a"), with("key-a"));
        assert_ne!(with("key-a"), with("key-b"));
        assert_eq!(with("key-a").len(), TOKEN_LENGTH as usize);
        // Known answer: HMAC-SHA256(key="key", "The quick brown fox jumps over the lazy dog").
        let p =
            Pseudonymiser::new([("m".to_owned(), Method::HmacSha256(Secret::new("key")))]).unwrap();
        let row = Row::from_pairs([("m", "The quick brown fox jumps over the lazy dog")]).unwrap();
        assert_eq!(
            p.apply(row).get("m").unwrap().text,
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn null_and_empty_values_stay_and_a_row_without_the_fields_is_not_copied() {
        let mut b = Row::builder();
        b.push("customer.email", Kind::Null, "").unwrap();
        b.push("Name", Kind::String, "").unwrap();
        let row = b.finish();
        let out = rules().apply(row.clone());
        assert_eq!(out, row);
        let other = Row::from_pairs([("OrderId", "1")]).unwrap();
        assert_eq!(rules().apply(other.clone()), other);
    }

    #[test]
    fn a_field_given_twice_is_named() {
        let e = Pseudonymiser::new([
            ("a".to_owned(), Method::Mask),
            ("a".to_owned(), Method::Drop),
        ])
        .unwrap_err();
        assert_eq!(e, "a");
    }
}
