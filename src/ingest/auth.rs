//! Sender checks: a token, basic auth, or an HMAC signature over the body, as configured in
//! `[pipelines.auth]`. Pure: the request parts and the clock come in, a verdict goes out.
//!
//! Every comparison of a secret-derived value runs in constant time (`subtle`). The reason
//! for a failure is for the log and the counters only; the sender gets a generic 401.

use std::time::Duration;

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::{Choice, ConstantTimeEq};

use crate::auth_failure::Failure;
use crate::config::{
    AuthConfig, AuthMethod, HmacAlgorithm, HmacConfig, HmacPreset, SecretKey, SignatureEncoding,
};

/// What a check looks at.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    /// The bodies a signature may cover: the decoded body first, then the bytes as sent
    /// when they were compressed.
    pub bodies: &'a [&'a [u8]],
    /// Seconds since the Unix epoch.
    pub now: i64,
}

/// Checks one request against a pipeline's auth config.
pub fn check(auth: &AuthConfig, req: &Request) -> Result<(), Failure> {
    match &auth.method {
        AuthMethod::Bearer => {
            let value = header_str(req.headers, header::AUTHORIZATION.as_str())?;
            let token = strip_scheme(value, "Bearer").ok_or(Failure::Malformed)?;
            token_matches(&auth.keys, token.trim().as_bytes())
        }
        AuthMethod::Header(name) => {
            token_matches(&auth.keys, header_str(req.headers, name)?.trim().as_bytes())
        }
        AuthMethod::Query(name) => {
            let token = query_param(req.query.unwrap_or(""), name).ok_or(Failure::Missing)?;
            token_matches(&auth.keys, &token)
        }
        AuthMethod::Basic { user } => {
            let value = header_str(req.headers, header::AUTHORIZATION.as_str())?;
            let encoded = strip_scheme(value, "Basic").ok_or(Failure::Malformed)?;
            let decoded = STANDARD
                .decode(encoded.trim())
                .map_err(|_| Failure::Malformed)?;
            let at = decoded
                .iter()
                .position(|&c| c == b':')
                .ok_or(Failure::Malformed)?;
            let (given_user, password) = (&decoded[..at], &decoded[at + 1..]);
            let user_ok = digest_eq(given_user, user.as_bytes());
            let password_ok = token_matches(&auth.keys, password).is_ok();
            if bool::from(user_ok) && password_ok {
                Ok(())
            } else {
                Err(Failure::Mismatch)
            }
        }
        AuthMethod::Hmac(h) => check_hmac(h, &auth.keys, req),
    }
}

fn check_hmac(h: &HmacConfig, keys: &[SecretKey], req: &Request) -> Result<(), Failure> {
    match h.preset {
        HmacPreset::StandardWebhooks => {
            // Svix sends the same scheme under svix-* names.
            let either = |name: &str| {
                header_str(req.headers, &format!("webhook-{name}"))
                    .or_else(|_| header_str(req.headers, &format!("svix-{name}")))
            };
            let id = either("id")?;
            let timestamp = either("timestamp")?;
            let signatures: Vec<Vec<u8>> = either("signature")?
                .split(' ')
                .filter_map(|s| s.strip_prefix("v1,"))
                .filter_map(|s| STANDARD.decode(s).ok())
                .collect();
            timestamped(
                h,
                keys,
                req,
                timestamp,
                &format!("{id}.{timestamp}."),
                &signatures,
            )
        }
        HmacPreset::Stripe => {
            let value = header_str(req.headers, &h.header)?;
            let mut timestamp = None;
            let mut signatures = Vec::new();
            for item in value.split(',') {
                match item.trim().split_once('=') {
                    Some(("t", t)) => timestamp = Some(t),
                    Some(("v1", s)) => signatures.extend(hex::decode(s).ok()),
                    _ => {}
                }
            }
            let timestamp = timestamp.ok_or(Failure::Malformed)?;
            timestamped(
                h,
                keys,
                req,
                timestamp,
                &format!("{timestamp}."),
                &signatures,
            )
        }
        HmacPreset::Github | HmacPreset::Shopify | HmacPreset::Custom => {
            let value = header_str(req.headers, &h.header)?.trim();
            let encoded = value.strip_prefix(&h.prefix).ok_or(Failure::Malformed)?;
            let signature = match h.encoding {
                SignatureEncoding::Hex => hex::decode(encoded).map_err(|_| Failure::Malformed)?,
                SignatureEncoding::Base64 => {
                    STANDARD.decode(encoded).map_err(|_| Failure::Malformed)?
                }
            };
            match &h.timestamp_header {
                None => verify_any(h.algorithm, keys, b"", req.bodies, &[signature]),
                Some(name) => {
                    let timestamp = header_str(req.headers, name)?.trim();
                    let ts = parse_timestamp(timestamp)?;
                    let prefix = format!("{timestamp}.");
                    verify_any(
                        h.algorithm,
                        keys,
                        prefix.as_bytes(),
                        req.bodies,
                        &[signature],
                    )?;
                    fresh(ts, req.now, h.tolerance)
                }
            }
        }
    }
}

/// Ok when some key signs `prefix + body` (for some body) to one of `signatures`.
fn verify_any(
    algorithm: HmacAlgorithm,
    keys: &[SecretKey],
    prefix: &[u8],
    bodies: &[&[u8]],
    signatures: &[Vec<u8>],
) -> Result<(), Failure> {
    let mut ok = Choice::from(0);
    for key in keys {
        for body in bodies {
            let mac = sign(algorithm, key.expose(), &[prefix, body]);
            for s in signatures {
                ok |= mac.as_slice().ct_eq(s.as_slice());
            }
        }
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(Failure::Mismatch)
    }
}

/// The HMAC of the concatenated `parts` under `key`.
pub fn sign(algorithm: HmacAlgorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match algorithm {
        HmacAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
        HmacAlgorithm::Sha256 => run::<Hmac<Sha256>>(key, parts),
        HmacAlgorithm::Sha512 => run::<Hmac<Sha512>>(key, parts),
    }
}

/// Ok when `given` equals one of the keys. Both sides are hashed first so that neither the
/// content nor the length of a key leaks through timing.
fn token_matches(keys: &[SecretKey], given: &[u8]) -> Result<(), Failure> {
    let ok = keys
        .iter()
        .fold(Choice::from(0), |acc, k| acc | digest_eq(k.expose(), given));
    if bool::from(ok) {
        Ok(())
    } else {
        Err(Failure::Mismatch)
    }
}

fn digest_eq(a: &[u8], b: &[u8]) -> Choice {
    Sha256::digest(a)
        .as_slice()
        .ct_eq(Sha256::digest(b).as_slice())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Failure> {
    let value = headers.get(name).ok_or(Failure::Missing)?;
    value.to_str().map_err(|_| Failure::Malformed)
}

/// `Bearer abc` → `abc`; the scheme name is case-insensitive.
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (name, rest) = value.trim().split_once(' ')?;
    name.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// The timestamped schemes (Standard Webhooks, Stripe): one of `signatures` must sign
/// `{prefix}{body}`, and the timestamp must be within the tolerance.
fn timestamped(
    h: &HmacConfig,
    keys: &[SecretKey],
    req: &Request,
    timestamp: &str,
    prefix: &str,
    signatures: &[Vec<u8>],
) -> Result<(), Failure> {
    if signatures.is_empty() {
        return Err(Failure::Malformed);
    }
    let ts = parse_timestamp(timestamp)?;
    verify_any(h.algorithm, keys, prefix.as_bytes(), req.bodies, signatures)?;
    fresh(ts, req.now, h.tolerance)
}

fn parse_timestamp(text: &str) -> Result<i64, Failure> {
    text.trim().parse().map_err(|_| Failure::Malformed)
}

fn fresh(ts: i64, now: i64, tolerance: Duration) -> Result<(), Failure> {
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.saturating_sub(ts).saturating_abs() > tolerance {
        Err(Failure::Stale)
    } else {
        Ok(())
    }
}

/// The decoded value of the first `name=` pair in a query string.
fn query_param(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name.as_bytes()).then(|| decode(v))
    })
}

/// The query string without any `name=` pair: the token must not become a row field.
pub fn strip_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            decode(k) != name.as_bytes()
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn decode(component: &str) -> Vec<u8> {
    let spaced = component.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn hmac(
        preset: HmacPreset,
        header: &str,
        encoding: SignatureEncoding,
        prefix: &str,
    ) -> HmacConfig {
        HmacConfig {
            preset,
            header: header.into(),
            algorithm: HmacAlgorithm::Sha256,
            encoding,
            prefix: prefix.into(),
            timestamp_header: None,
            tolerance: Duration::from_secs(300),
        }
    }

    fn run(auth: &AuthConfig, h: &HeaderMap, body: &[u8], now: i64) -> Result<(), Failure> {
        check(
            auth,
            &Request {
                headers: h,
                query: None,
                bodies: &[body],
                now,
            },
        )
    }

    #[test]
    fn githubs_documented_example_signature_verifies() {
        let auth = AuthConfig {
            method: AuthMethod::Hmac(hmac(
                HmacPreset::Github,
                "x-hub-signature-256",
                SignatureEncoding::Hex,
                "sha256=",
            )),
            keys: vec![SecretKey::new(*b"It's a Secret to Everybody")],
        };
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(run(&auth, &h, b"Hello, World!", 0), Ok(()));
        assert_eq!(run(&auth, &h, b"Hello, World?", 0), Err(Failure::Mismatch));
    }

    #[test]
    fn the_standard_webhooks_spec_example_verifies_within_tolerance_only() {
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let auth = AuthConfig {
            method: AuthMethod::Hmac(hmac(
                HmacPreset::StandardWebhooks,
                "webhook-signature",
                SignatureEncoding::Base64,
                "v1,",
            )),
            keys: vec![SecretKey::new(key)],
        };
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(run(&auth, &h, body, 1614265330 + 299), Ok(()));
        assert_eq!(run(&auth, &h, body, 1614265330 + 301), Err(Failure::Stale));
        assert_eq!(run(&auth, &h, body, 1614265330 - 301), Err(Failure::Stale));
        assert_eq!(
            run(&auth, &h, br#"{"test": 2432232315}"#, 1614265330),
            Err(Failure::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed_credentials_are_told_apart() {
        let auth = AuthConfig {
            method: AuthMethod::Basic { user: "u".into() },
            keys: vec![SecretKey::new(*b"p")],
        };
        assert_eq!(run(&auth, &headers(&[]), b"", 0), Err(Failure::Missing));
        assert_eq!(
            run(&auth, &headers(&[("authorization", "Basic !!!")]), b"", 0),
            Err(Failure::Malformed)
        );
        assert_eq!(
            run(&auth, &headers(&[("authorization", "basic dTpw")]), b"", 0),
            Ok(())
        );
        assert_eq!(
            run(&auth, &headers(&[("authorization", "Basic dTpx")]), b"", 0),
            Err(Failure::Mismatch)
        );
    }

    #[test]
    fn the_token_query_parameter_is_found_decoded_and_stripped() {
        assert_eq!(
            query_param("a=1&token=x%2By&b=2", "token"),
            Some(b"x+y".to_vec())
        );
        assert_eq!(query_param("a=1", "token"), None);
        assert_eq!(strip_query_param("a=1&token=x&b=2", "token"), "a=1&b=2");
        assert_eq!(strip_query_param("tok%65n=x", "token"), "");
    }
}
