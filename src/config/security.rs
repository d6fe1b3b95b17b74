//! The inbound-security part of the config: `[pipelines.auth]`, `rate_limit`, and the
//! server's limits, trusted proxies and TLS. Validated into domain types like the rest.

use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use ipnet::IpNet;

use super::Validator;
use super::raw::{RawSenderAuth, RawServer};

/// Key material for a sender check: a token, a password or an HMAC key. Its Debug never
/// shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Vec<u8>);

impl SecretKey {
    pub fn new(bytes: impl Into<Vec<u8>>) -> SecretKey {
        SecretKey(bytes.into())
    }

    /// The bytes themselves, for the sender check only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

/// How a pipeline checks its sender, and the keys currently accepted (more than one while a
/// secret is being rotated).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub method: AuthMethod,
    pub keys: Vec<SecretKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The token in this header (lowercase name).
    Header(String),
    /// The token in this query parameter; it is removed before the query becomes a row.
    Query(String),
    /// `Authorization: Basic`, with this user name and a key as the password.
    Basic { user: String },
    /// A signature over the body.
    Hmac(HmacConfig),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacPreset {
    StandardWebhooks,
    Github,
    Shopify,
    Stripe,
    Custom,
}

impl HmacPreset {
    pub fn name(self) -> &'static str {
        match self {
            HmacPreset::StandardWebhooks => "standard-webhooks",
            HmacPreset::Github => "github",
            HmacPreset::Shopify => "shopify",
            HmacPreset::Stripe => "stripe",
            HmacPreset::Custom => "custom",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

/// A signature scheme. The presets fill every field; `custom` takes them from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacConfig {
    pub preset: HmacPreset,
    /// The signature header (lowercase name).
    pub header: String,
    pub algorithm: HmacAlgorithm,
    pub encoding: SignatureEncoding,
    /// Text before the signature in the header, e.g. `sha256=`.
    pub prefix: String,
    /// `custom` only: a header with a Unix timestamp; the signed text is then
    /// `{timestamp}.{body}` and the timestamp must be within `tolerance`.
    pub timestamp_header: Option<String>,
    pub tolerance: Duration,
}

/// `rate_limit = "100/s"`: at most `count` requests per `per`, in bursts of up to `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: NonZeroU32,
    pub per: Duration,
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// `server.tls`: PEM files for the certificate chain and the private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The public listener's defences; defaults are the `DEFAULT_*` constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Peers whose X-Forwarded-For / Forwarded headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The request line and headers together, at least 8 KiB (hyper's minimum buffer).
    pub max_header_bytes: usize,
    /// Time a client has to send its request line and headers.
    pub header_read_timeout: Duration,
    /// Time a client has, after its headers, to send the whole body.
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub max_rows_per_request: usize,
    pub max_fields_per_row: usize,
    /// A field name after flattening nested objects, in bytes.
    pub max_field_name_bytes: usize,
    /// Nesting of JSON objects and arrays.
    pub max_depth: usize,
    /// Request body bytes being read, parsed or queued at once, over all connections.
    pub max_body_bytes_in_flight: usize,
    /// The header a trusted proxy reports the client in.
    pub forwarded_header: ForwardedHeader,
    pub tls: Option<TlsFiles>,
}

/// The header trusted proxies report the client address in (`server.forwarded_header`).
/// It is a choice, not a guess from which header a request has: a proxy that appends to one
/// header passes the other through from the client unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For`, as nginx, HAProxy, AWS ALB and most ingresses write it.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…`.
    Forwarded,
}

impl ForwardedHeader {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }
}

pub(super) const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
pub(super) const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
pub(super) const DEFAULT_BODY_READ_TIMEOUT_SECS: u64 = 30;
pub(super) const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
pub(super) const DEFAULT_MAX_ROWS_PER_REQUEST: u64 = 10_000;
pub(super) const DEFAULT_MAX_FIELDS_PER_ROW: u64 = 1_000;
pub(super) const DEFAULT_MAX_FIELD_NAME_BYTES: u64 = 256;
pub(super) const DEFAULT_MAX_DEPTH: u64 = 32;
pub(super) const DEFAULT_MAX_BODY_BYTES_IN_FLIGHT: u64 = 256 * 1024 * 1024;
pub(super) const DEFAULT_TOLERANCE_SECS: u64 = 300;
/// hyper refuses read buffers below this.
const MIN_HEADER_BYTES: u64 = 8192;

impl Validator<'_> {
    pub(super) fn server_limits(&mut self, s: &RawServer) -> ServerLimits {
        let trusted_proxies = s
            .trusted_proxies
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(j, text)| {
                let net = super::parse_net(text);
                if net.is_none() {
                    self.error(
                        format!("server.trusted_proxies[{j}]"),
                        format!("\"{text}\" is not a CIDR"),
                    );
                }
                net
            })
            .collect();
        let mut max_header_bytes = self.size(
            "server.max_header_bytes",
            s.max_header_bytes.as_ref(),
            DEFAULT_MAX_HEADER_BYTES,
        );
        if max_header_bytes < MIN_HEADER_BYTES {
            self.error(
                "server.max_header_bytes",
                format!("{max_header_bytes} is below the minimum of {MIN_HEADER_BYTES}"),
            );
            max_header_bytes = MIN_HEADER_BYTES;
        }
        let header_read_timeout = self.duration(
            "server.header_read_timeout",
            s.header_read_timeout.as_deref(),
            DEFAULT_HEADER_READ_TIMEOUT_SECS,
        );
        let body_read_timeout = self.duration(
            "server.body_read_timeout",
            s.body_read_timeout.as_deref(),
            DEFAULT_BODY_READ_TIMEOUT_SECS,
        );
        for (key, d) in [
            ("header_read_timeout", header_read_timeout),
            ("body_read_timeout", body_read_timeout),
        ] {
            if d.is_zero() {
                self.error(format!("server.{key}"), "must be longer than 0s");
            }
        }
        let forwarded_header = match s.forwarded_header.as_deref() {
            None | Some("x-forwarded-for") => ForwardedHeader::XForwardedFor,
            Some("forwarded") => ForwardedHeader::Forwarded,
            Some(other) => {
                self.error(
                    "server.forwarded_header",
                    format!("\"{other}\" is not \"x-forwarded-for\" or \"forwarded\""),
                );
                ForwardedHeader::XForwardedFor
            }
        };
        let max_body_bytes_in_flight = self.size(
            "server.max_body_bytes_in_flight",
            s.max_body_bytes_in_flight.as_ref(),
            DEFAULT_MAX_BODY_BYTES_IN_FLIGHT,
        );
        let count = |v: &mut Validator, key: &str, value: Option<i64>, default: u64| {
            usize::try_from(v.positive(&format!("server.{key}"), value, default))
                .unwrap_or(usize::MAX)
        };
        ServerLimits {
            trusted_proxies,
            max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
            header_read_timeout,
            body_read_timeout,
            max_connections: count(
                self,
                "max_connections",
                s.max_connections,
                DEFAULT_MAX_CONNECTIONS,
            ),
            max_rows_per_request: count(
                self,
                "max_rows_per_request",
                s.max_rows_per_request,
                DEFAULT_MAX_ROWS_PER_REQUEST,
            ),
            max_fields_per_row: count(
                self,
                "max_fields_per_row",
                s.max_fields_per_row,
                DEFAULT_MAX_FIELDS_PER_ROW,
            ),
            max_field_name_bytes: count(
                self,
                "max_field_name_bytes",
                s.max_field_name_bytes,
                DEFAULT_MAX_FIELD_NAME_BYTES,
            ),
            max_depth: count(self, "max_depth", s.max_depth, DEFAULT_MAX_DEPTH),
            max_body_bytes_in_flight: usize::try_from(max_body_bytes_in_flight)
                .unwrap_or(usize::MAX),
            forwarded_header,
            tls: s.tls.as_ref().map(|t| {
                for (key, file) in [("cert", &t.cert), ("key", &t.key)] {
                    if !std::path::Path::new(file).is_file() {
                        self.error(format!("server.tls.{key}"), format!("{file} is not a file"));
                    }
                }
                TlsFiles {
                    cert: PathBuf::from(&t.cert),
                    key: PathBuf::from(&t.key),
                }
            }),
        }
    }

    pub(super) fn rate_limit(&mut self, path: &str, text: &str) -> Option<RateLimit> {
        let parsed = text.split_once('/').and_then(|(n, unit)| {
            let count = n.trim().parse::<NonZeroU32>().ok()?;
            let per = match unit.trim() {
                "s" | "sec" | "second" => 1,
                "m" | "min" | "minute" => 60,
                "h" | "hour" => 3600,
                _ => return None,
            };
            Some(RateLimit {
                count,
                per: Duration::from_secs(per),
            })
        });
        if parsed.is_none() {
            self.error(
                path,
                format!("\"{text}\" is not a rate like \"100/s\", \"600/m\" or \"5000/h\""),
            );
        }
        parsed
    }

    pub(super) fn auth(&mut self, path: &str, a: RawSenderAuth) -> Option<AuthConfig> {
        let not_for = |v: &mut Validator, what: &str, keys: &[(&str, bool)]| {
            for (key, set) in keys {
                if *set {
                    v.error(format!("{path}.{key}"), format!("does not apply to {what}"));
                }
            }
        };
        let hmac_keys = [
            ("preset", a.preset.is_some()),
            ("algorithm", a.algorithm.is_some()),
            ("encoding", a.encoding.is_some()),
            ("prefix", a.prefix.is_some()),
            ("timestamp_header", a.timestamp_header.is_some()),
            ("tolerance", a.tolerance.is_some()),
        ];
        let method = match a.kind.as_str() {
            "token" => {
                not_for(self, "kind = \"token\"", &hmac_keys);
                not_for(
                    self,
                    "kind = \"token\"",
                    &[
                        ("user", a.user.is_some()),
                        ("password", a.password.is_some()),
                    ],
                );
                match (&a.header, &a.query) {
                    (None, None) => AuthMethod::Bearer,
                    (Some(h), None) => AuthMethod::Header(self.header_name(path, "header", h)),
                    (None, Some(q)) if !q.is_empty() => AuthMethod::Query(q.clone()),
                    (None, Some(_)) => {
                        self.error(format!("{path}.query"), "must not be empty");
                        AuthMethod::Bearer
                    }
                    (Some(_), Some(_)) => {
                        self.error(path, "set header or query, not both");
                        AuthMethod::Bearer
                    }
                }
            }
            "basic" => {
                not_for(self, "kind = \"basic\"", &hmac_keys);
                not_for(
                    self,
                    "kind = \"basic\"",
                    &[("header", a.header.is_some()), ("query", a.query.is_some())],
                );
                let user = a.user.clone().unwrap_or_else(|| {
                    self.error(format!("{path}.user"), "is required for kind = \"basic\"");
                    String::new()
                });
                if user.contains(':') {
                    self.error(format!("{path}.user"), "must not contain ':'");
                }
                AuthMethod::Basic { user }
            }
            "hmac" => {
                not_for(
                    self,
                    "kind = \"hmac\"",
                    &[
                        ("query", a.query.is_some()),
                        ("user", a.user.is_some()),
                        ("password", a.password.is_some()),
                    ],
                );
                AuthMethod::Hmac(self.hmac(path, &a)?)
            }
            other => {
                self.error(
                    format!("{path}.kind"),
                    format!(
                        "\"{other}\" is not an auth kind: use \"token\", \"basic\" or \"hmac\""
                    ),
                );
                return None;
            }
        };
        let keys = self.keys(path, &a, &method);
        Some(AuthConfig { method, keys })
    }

    fn header_name(&mut self, path: &str, key: &str, name: &str) -> String {
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.error(
                format!("{path}.{key}"),
                format!("\"{name}\" is not a header name"),
            );
        }
        name.to_ascii_lowercase()
    }

    fn hmac(&mut self, path: &str, a: &RawSenderAuth) -> Option<HmacConfig> {
        let Some(preset_name) = a.preset.as_deref() else {
            self.error(
                format!("{path}.preset"),
                "is required for kind = \"hmac\": \"standard-webhooks\", \"github\", \"shopify\", \"stripe\" or \"custom\"",
            );
            return None;
        };
        let tolerance = self.duration(
            &format!("{path}.tolerance"),
            a.tolerance.as_deref(),
            DEFAULT_TOLERANCE_SECS,
        );
        let fixed = |header: &str, algorithm, encoding, prefix: &str| HmacConfig {
            preset: HmacPreset::Custom,
            header: header.to_owned(),
            algorithm,
            encoding,
            prefix: prefix.to_owned(),
            timestamp_header: None,
            tolerance,
        };
        use HmacAlgorithm::Sha256;
        use SignatureEncoding::{Base64, Hex};
        let (preset, config) = match preset_name {
            "standard-webhooks" => (
                HmacPreset::StandardWebhooks,
                fixed("webhook-signature", Sha256, Base64, "v1,"),
            ),
            "github" => (
                HmacPreset::Github,
                fixed("x-hub-signature-256", Sha256, Hex, "sha256="),
            ),
            "shopify" => (
                HmacPreset::Shopify,
                fixed("x-shopify-hmac-sha256", Sha256, Base64, ""),
            ),
            "stripe" => (
                HmacPreset::Stripe,
                fixed("stripe-signature", Sha256, Hex, "v1="),
            ),
            "custom" => {
                let header = match &a.header {
                    Some(h) => self.header_name(path, "header", h),
                    None => {
                        self.error(
                            format!("{path}.header"),
                            "is required for preset = \"custom\"",
                        );
                        String::new()
                    }
                };
                let algorithm = match a.algorithm.as_deref() {
                    None | Some("sha256") => Sha256,
                    Some("sha1") => HmacAlgorithm::Sha1,
                    Some("sha512") => HmacAlgorithm::Sha512,
                    Some(other) => {
                        self.error(
                            format!("{path}.algorithm"),
                            format!("\"{other}\" is not \"sha256\", \"sha1\" or \"sha512\""),
                        );
                        Sha256
                    }
                };
                let encoding = match a.encoding.as_deref() {
                    None | Some("hex") => Hex,
                    Some("base64") => Base64,
                    Some(other) => {
                        self.error(
                            format!("{path}.encoding"),
                            format!("\"{other}\" is not \"hex\" or \"base64\""),
                        );
                        Hex
                    }
                };
                let timestamp_header = a
                    .timestamp_header
                    .as_ref()
                    .map(|h| self.header_name(path, "timestamp_header", h));
                if a.tolerance.is_some() && timestamp_header.is_none() {
                    self.error(
                        format!("{path}.tolerance"),
                        "only applies with a timestamp_header",
                    );
                }
                let config = HmacConfig {
                    timestamp_header,
                    prefix: a.prefix.clone().unwrap_or_default(),
                    ..fixed(&header, algorithm, encoding, "")
                };
                (HmacPreset::Custom, config)
            }
            other => {
                self.error(
                    format!("{path}.preset"),
                    format!(
                        "\"{other}\" is not a preset: use \"standard-webhooks\", \"github\", \"shopify\", \"stripe\" or \"custom\""
                    ),
                );
                return None;
            }
        };
        if preset != HmacPreset::Custom {
            for (key, set) in [
                ("header", a.header.is_some()),
                ("algorithm", a.algorithm.is_some()),
                ("encoding", a.encoding.is_some()),
                ("prefix", a.prefix.is_some()),
                ("timestamp_header", a.timestamp_header.is_some()),
            ] {
                if set {
                    self.error(
                        format!("{path}.{key}"),
                        format!("is fixed by preset = \"{preset_name}\""),
                    );
                }
            }
            let timestamped = matches!(preset, HmacPreset::StandardWebhooks | HmacPreset::Stripe);
            if a.tolerance.is_some() && !timestamped {
                self.error(
                    format!("{path}.tolerance"),
                    format!("preset \"{preset_name}\" sends no timestamp"),
                );
            }
        }
        if tolerance.is_zero() {
            self.error(format!("{path}.tolerance"), "must be longer than 0s");
        }
        Some(HmacConfig { preset, ..config })
    }

    /// Collects the accepted keys from `secret`, `secrets`, `secret_file` (one per line) and,
    /// for basic auth, `password`. Messages name key paths, never values.
    fn keys(&mut self, path: &str, a: &RawSenderAuth, method: &AuthMethod) -> Vec<SecretKey> {
        let mut texts: Vec<(String, String)> = Vec::new();
        if let Some(s) = &a.secret {
            texts.push((format!("{path}.secret"), s.clone()));
        }
        if let Some(p) = &a.password {
            texts.push((format!("{path}.password"), p.clone()));
        }
        for (j, s) in a.secrets.iter().flatten().enumerate() {
            texts.push((format!("{path}.secrets[{j}]"), s.clone()));
        }
        if let Some(file) = &a.secret_file {
            match std::fs::read_to_string(file) {
                Ok(content) => {
                    let before = texts.len();
                    for (n, line) in content.lines().enumerate() {
                        let line = line.trim();
                        if !line.is_empty() {
                            texts.push((format!("{path}.secret_file line {}", n + 1), line.into()));
                        }
                    }
                    if texts.len() == before {
                        self.error(format!("{path}.secret_file"), format!("{file} is empty"));
                    }
                }
                Err(e) => self.error(
                    format!("{path}.secret_file"),
                    format!("cannot read {file}: {e}"),
                ),
            }
        }
        if texts.is_empty() && a.secret_file.is_none() {
            let keys = if matches!(method, AuthMethod::Basic { .. }) {
                "password, secrets or secret_file"
            } else {
                "secret, secrets or secret_file"
            };
            self.error(path, format!("set {keys}"));
        }
        let standard =
            matches!(method, AuthMethod::Hmac(h) if h.preset == HmacPreset::StandardWebhooks);
        let mut keys = Vec::new();
        for (at, text) in texts {
            if text.is_empty() {
                self.error(at, "must not be empty");
                continue;
            }
            if standard {
                let encoded = text.strip_prefix("whsec_").unwrap_or(&text);
                match base64::engine::general_purpose::STANDARD.decode(encoded) {
                    Ok(bytes) if !bytes.is_empty() => keys.push(SecretKey::new(bytes)),
                    _ => self.error(
                        at,
                        "is not a Standard Webhooks secret (\"whsec_\" followed by base64)",
                    ),
                }
            } else {
                keys.push(SecretKey::new(text.into_bytes()));
            }
        }
        keys
    }
}

/// One line for `weir check`: the method and how many keys, never the keys.
pub fn describe_auth(a: &AuthConfig) -> String {
    let method = match &a.method {
        AuthMethod::Bearer => "token in Authorization: Bearer".to_owned(),
        AuthMethod::Header(h) => format!("token in header {h}"),
        AuthMethod::Query(q) => format!("token in query parameter {q}"),
        AuthMethod::Basic { user } => format!("basic, user {user}"),
        AuthMethod::Hmac(h) if h.preset == HmacPreset::Custom => format!(
            "hmac custom, header {}, {:?}/{:?}, prefix \"{}\"{}",
            h.header,
            h.algorithm,
            h.encoding,
            h.prefix,
            h.timestamp_header
                .as_ref()
                .map_or(String::new(), |t| format!(
                    ", timestamp header {t}, tolerance {}",
                    humantime::format_duration(h.tolerance)
                ))
        ),
        AuthMethod::Hmac(h) => format!("hmac {}", h.preset.name()),
    };
    let n = a.keys.len();
    format!("{method}, {n} secret{} ***", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::{Config, ConfigErrors};
    use super::*;

    fn with(server: &str, pipeline: &str) -> String {
        format!(
            r#"
[server]
{server}

[[pipelines]]
name = "orders"
{pipeline}

[pipelines.sink]
kind = "celonis"
url = "http://127.0.0.1:9"
data_pool_id = "pool-1"
target_name = "orders"
app_key = "k"
"#
        )
    }

    fn errors_of(text: &str) -> Vec<String> {
        match Config::load(text, &HashMap::new()) {
            Ok(_) => panic!("config should not load"),
            Err(ConfigErrors(errs)) => errs.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn defaults_hold_when_nothing_is_set() {
        let c = Config::load(&with("", ""), &HashMap::new()).unwrap();
        let l = &c.server.limits;
        assert!(l.trusted_proxies.is_empty() && l.tls.is_none());
        assert_eq!(l.max_header_bytes, 64 * 1024);
        assert_eq!(l.header_read_timeout, Duration::from_secs(10));
        assert_eq!(l.body_read_timeout, Duration::from_secs(30));
        assert_eq!(
            (
                l.max_connections,
                l.max_rows_per_request,
                l.max_fields_per_row
            ),
            (1024, 10_000, 1_000)
        );
        assert_eq!(
            (
                l.max_field_name_bytes,
                l.max_depth,
                l.max_body_bytes_in_flight
            ),
            (256, 32, 256 * 1024 * 1024)
        );
        assert_eq!(l.forwarded_header, ForwardedHeader::XForwardedFor);
        assert!(c.pipelines[0].auth.is_none() && c.pipelines[0].rate_limit.is_none());
    }

    #[test]
    fn presets_fill_the_scheme_and_rates_parse() {
        let c = Config::load(
            &with(
                "",
                "rate_limit = \"600/m\"\n[pipelines.auth]\nkind = \"hmac\"\npreset = \"stripe\"\nsecret = \"whsec_x\"\ntolerance = \"1m\"",
            ),
            &HashMap::new(),
        )
        .unwrap();
        let p = &c.pipelines[0];
        assert_eq!(p.rate_limit.unwrap().to_string(), "600/m");
        let auth = p.auth.as_ref().unwrap();
        let AuthMethod::Hmac(h) = &auth.method else {
            panic!("{auth:?}")
        };
        assert_eq!(h.header, "stripe-signature");
        assert_eq!(h.tolerance, Duration::from_secs(60));
        assert_eq!(auth.keys, vec![SecretKey::new(*b"whsec_x")]);
        assert_eq!(format!("{auth:?}").matches("***").count(), 1);
    }

    #[test]
    fn every_auth_mistake_is_reported_with_its_key_path_and_no_secret() {
        let errs = errors_of(&with(
            "max_header_bytes = 100\ntrusted_proxies = [\"10.0.0.0/33\"]\nforwarded_header = \"x-real-ip\"\nmax_depth = 0\nmax_body_bytes_in_flight = 0",
            r#"rate_limit = "100 per second"
[pipelines.auth]
kind = "hmac"
preset = "github"
header = "X-Other"
tolerance = "1m"
secrets = ["whsec_!!notbase64", ""]"#,
        ));
        assert_eq!(
            errs,
            vec![
                "server.trusted_proxies[0]: \"10.0.0.0/33\" is not a CIDR",
                "server.max_header_bytes: 100 is below the minimum of 8192",
                "server.forwarded_header: \"x-real-ip\" is not \"x-forwarded-for\" or \"forwarded\"",
                "server.max_body_bytes_in_flight: 0 is not a positive size like 1048576 or \"64MiB\"",
                "server.max_depth: 0 must be greater than 0",
                "pipelines[0].auth.header: is fixed by preset = \"github\"",
                "pipelines[0].auth.tolerance: preset \"github\" sends no timestamp",
                "pipelines[0].auth.secrets[1]: must not be empty",
                "pipelines[0].rate_limit: \"100 per second\" is not a rate like \"100/s\", \"600/m\" or \"5000/h\"",
            ]
        );
        let errs = errors_of(&with(
            "",
            "[pipelines.auth]\nkind = \"hmac\"\npreset = \"standard-webhooks\"\nsecret = \"whsec_!!notbase64\"",
        ));
        assert_eq!(
            errs,
            vec![
                "pipelines[0].auth.secret: is not a Standard Webhooks secret (\"whsec_\" followed by base64)"
            ]
        );
        let errs = errors_of(&with(
            "",
            "[pipelines.auth]\nkind = \"token\"\nheader = \"X-A\"\nquery = \"t\"\nuser = \"u\"",
        ));
        assert_eq!(
            errs,
            vec![
                "pipelines[0].auth.user: does not apply to kind = \"token\"",
                "pipelines[0].auth: set header or query, not both",
                "pipelines[0].auth: set secret, secrets or secret_file",
            ]
        );
        let errs = errors_of(&with(
            "tls = { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }",
            "",
        ));
        assert_eq!(
            errs,
            vec![
                "server.tls.cert: /nonexistent/c.pem is not a file",
                "server.tls.key: /nonexistent/k.pem is not a file",
            ]
        );
        let errs = errors_of(&with(
            "",
            "[pipelines.auth]\nkind = \"basic\"\nsecret_file = \"/nonexistent/weir-secret\"",
        ));
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("pipelines[0].auth.user: is required"));
        assert!(
            errs[1]
                .starts_with("pipelines[0].auth.secret_file: cannot read /nonexistent/weir-secret")
        );
    }
}
