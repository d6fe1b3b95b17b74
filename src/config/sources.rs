//! Validation of `[[sources]]`: `kind = "poll"`, a dequeue/ack API (Dynamics 365 FinOps
//! recurring integrations) polled on a schedule into a pipeline's queue; and of
//! `[pipelines.fetch]`, business events whose rows name a file to download.

use std::time::Duration;

use reqwest::Url;

use super::raw::{RawFetch, RawSource, RawText};
use super::{HttpAuth, PipelineConfig, Proxy, Schedule, Text, Validator};
use crate::expr::Expr;

/// The most bytes a package may have, downloaded or unpacked, unless `max_bytes` says.
pub(super) const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// How a package's entries are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageFormat {
    Csv,
    Json,
    Ndjson,
    /// By each entry's extension: `.csv`, `.json`, `.ndjson` / `.jsonl`; other entries are
    /// skipped.
    Auto,
}

/// One `[[sources]]` entry with `kind = "poll"`.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The pipeline whose queue the rows go to.
    pub pipeline: String,
    pub schedule: Schedule,
    pub dequeue_url: Url,
    /// Literal, or CEL over `response` (the dequeue answer).
    pub ack_url: Text,
    /// The field of the dequeue answer that holds the package's URL.
    pub download_url_field: String,
    pub format: PackageFormat,
    /// Globs over entry names; empty: every data entry.
    pub entries: Vec<String>,
    /// Caps the bytes downloaded and, separately, the bytes unpacked.
    pub max_bytes: u64,
    pub timeout: Duration,
    pub auth: HttpAuth,
    /// Its own `proxy`, else `[proxy]`.
    pub proxy: Option<Proxy>,
}

const ACK_VARS: &[&str] = &["response"];

/// How a downloaded file's CSV is read: `csv = { separator = ";", quote = "'" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvInput {
    pub separator: u8,
    pub quote: u8,
}

impl Default for CsvInput {
    fn default() -> Self {
        CsvInput {
            separator: b',',
            quote: b'"',
        }
    }
}

/// How many times a failed download is tried again unless `retries` says.
const DEFAULT_FETCH_RETRIES: u32 = 3;

/// When a business event's 202 is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchMode {
    /// After the file's rows are queued; a failed download is 502.
    Inline,
    /// At once, with the download recorded as a pending task a worker runs promptly.
    Deferred,
}

/// `[pipelines.fetch]`: each event row (that `when` accepts) names, in `url_field`, a file
/// whose rows are queued in the event's place.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    pub url_field: String,
    /// CEL over `row`: which event rows name a file; the others are ignored.
    pub when: Option<Expr>,
    pub mode: FetchMode,
    pub format: PackageFormat,
    /// Globs over entry names; empty: every data entry.
    pub entries: Vec<String>,
    /// How CSV entries are read.
    pub csv: CsvInput,
    /// Caps the bytes downloaded and, separately, the bytes unpacked.
    pub max_bytes: u64,
    pub timeout: Duration,
    /// Tries after the first, for a transport error or a 5xx / 429.
    pub retries: u32,
    /// Fields of the event row added to each fetched row (when the event has them).
    pub event_fields: Vec<String>,
    pub auth: HttpAuth,
    /// Its own `proxy`, else `[proxy]`.
    pub proxy: Option<Proxy>,
}

impl Validator<'_> {
    pub(super) fn sources(
        &mut self,
        raw: Vec<RawSource>,
        pipelines: &[PipelineConfig],
        global_proxy: Option<&Proxy>,
    ) -> Vec<SourceConfig> {
        let mut out = Vec::new();
        for (i, s) in raw.into_iter().enumerate() {
            let path = format!("sources[{i}]");
            if s.kind != "poll" {
                self.error(
                    format!("{path}.kind"),
                    format!("\"{}\" is not a source kind: use \"poll\"", s.kind),
                );
                continue;
            }
            if !pipelines.iter().any(|p| p.name == s.pipeline) {
                self.error(
                    format!("{path}.pipeline"),
                    format!("no pipeline is named \"{}\"", s.pipeline),
                );
            }
            let schedule = self.schedule(&format!("{path}.schedule"), s.schedule.as_deref());
            let schedule = if schedule == Schedule::Continuous {
                self.error(
                    format!("{path}.schedule"),
                    "\"continuous\" applies to pipelines only: use an interval or a cron expression",
                );
                Schedule::Every(Duration::from_secs(300))
            } else {
                schedule
            };
            let dequeue_url = match s.dequeue_url {
                Some(u) => self.url(&format!("{path}.dequeue_url"), &u),
                None => {
                    self.error(format!("{path}.dequeue_url"), "is required");
                    super::placeholder_url()
                }
            };
            let ack_url = match s.ack_url {
                None => {
                    self.error(format!("{path}.ack_url"), "is required");
                    Text::Literal(String::new())
                }
                Some(RawText::Literal(u)) => {
                    self.url(&format!("{path}.ack_url"), &u);
                    Text::Literal(u)
                }
                Some(t) => self.text(&format!("{path}.ack_url"), t, ACK_VARS),
            };
            let download_url_field = match s.download_url_field {
                Some(f) if !f.trim().is_empty() => f,
                Some(_) => {
                    self.error(
                        format!("{path}.download_url_field"),
                        "must name a field of the dequeue answer",
                    );
                    String::new()
                }
                None => "DownloadLocation".to_owned(),
            };
            let format = self.package_format(&path, s.format.as_deref());
            let entries = self.entries(&path, s.entries);
            let max_bytes = self.size(
                &format!("{path}.max_bytes"),
                s.max_bytes.as_ref(),
                DEFAULT_MAX_BYTES,
            );
            let timeout = self.duration(&format!("{path}.timeout"), s.timeout.as_deref(), 60);
            if timeout.is_zero() {
                self.error(format!("{path}.timeout"), "must be longer than 0s");
            }
            let auth = self.http_auth(&format!("{path}.auth"), s.auth);
            let proxy = match s.proxy {
                Some(p) => self.proxy(&format!("{path}.proxy"), p),
                None => global_proxy.cloned(),
            };
            out.push(SourceConfig {
                pipeline: s.pipeline,
                schedule,
                dequeue_url,
                ack_url,
                download_url_field,
                format,
                entries,
                max_bytes,
                timeout,
                auth,
                proxy,
            });
        }
        out
    }

    fn package_format(&mut self, path: &str, format: Option<&str>) -> PackageFormat {
        match format {
            None | Some("auto") => PackageFormat::Auto,
            Some("csv") => PackageFormat::Csv,
            Some("json") => PackageFormat::Json,
            Some("ndjson") => PackageFormat::Ndjson,
            Some(other) => {
                self.error(
                    format!("{path}.format"),
                    format!("\"{other}\" is not \"csv\", \"json\", \"ndjson\" or \"auto\""),
                );
                PackageFormat::Auto
            }
        }
    }

    fn csv_char(&mut self, path: &str, key: &str, value: Option<String>, default: u8) -> u8 {
        match value {
            None => default,
            Some(s) if s.len() == 1 && s.is_ascii() && s != "\n" && s != "\r" => s.as_bytes()[0],
            Some(s) => {
                self.error(
                    format!("{path}.{key}"),
                    format!(
                        "\"{}\" must be a single ASCII character other than a line break",
                        s.escape_default()
                    ),
                );
                default
            }
        }
    }

    fn entries(&mut self, path: &str, raw: Option<Vec<String>>) -> Vec<String> {
        let mut entries = Vec::new();
        for (j, e) in raw.unwrap_or_default().into_iter().enumerate() {
            if e.trim().is_empty() {
                self.error(
                    format!("{path}.entries[{j}]"),
                    "must be a glob like \"*.csv\"",
                );
            } else {
                entries.push(e);
            }
        }
        entries
    }

    /// `[pipelines.fetch]` at `path`; `[proxy]` is filled in later.
    pub(super) fn fetch(&mut self, path: &str, f: RawFetch) -> FetchConfig {
        let url_field = match f.url_field {
            Some(u) if !u.trim().is_empty() => u,
            Some(_) => {
                self.error(
                    format!("{path}.url_field"),
                    "must name the event field that holds the download URL",
                );
                String::new()
            }
            None => "DownloadURL".to_owned(),
        };
        let when = f
            .when
            .and_then(|w| self.expr(&format!("{path}.when"), &w, &["row"]));
        let mode = match f.mode.as_deref() {
            None | Some("deferred") => FetchMode::Deferred,
            Some("inline") => FetchMode::Inline,
            Some(other) => {
                self.error(
                    format!("{path}.mode"),
                    format!("\"{other}\" is not a mode: use \"inline\" or \"deferred\""),
                );
                FetchMode::Deferred
            }
        };
        let format = self.package_format(path, f.format.as_deref());
        let entries = self.entries(path, f.entries);
        let mut csv = CsvInput::default();
        if let Some(c) = f.csv {
            let cpath = format!("{path}.csv");
            csv.separator = self.csv_char(&cpath, "separator", c.separator, b',');
            csv.quote = self.csv_char(&cpath, "quote", c.quote, b'"');
        }
        let max_bytes = self.size(
            &format!("{path}.max_bytes"),
            f.max_bytes.as_ref(),
            DEFAULT_MAX_BYTES,
        );
        let timeout = self.duration(&format!("{path}.timeout"), f.timeout.as_deref(), 60);
        if timeout.is_zero() {
            self.error(format!("{path}.timeout"), "must be longer than 0s");
        }
        let retries = match f.retries {
            None => DEFAULT_FETCH_RETRIES,
            Some(n @ 0..=20) => n as u32,
            Some(n) => {
                self.error(
                    format!("{path}.retries"),
                    format!("{n} is not between 0 and 20"),
                );
                DEFAULT_FETCH_RETRIES
            }
        };
        let mut event_fields = Vec::new();
        for (j, e) in f.event_fields.unwrap_or_default().into_iter().enumerate() {
            if e.trim().is_empty() {
                self.error(
                    format!("{path}.event_fields[{j}]"),
                    "must name a field of the event row",
                );
            } else if e == url_field {
                self.error(
                    format!("{path}.event_fields[{j}]"),
                    format!("\"{e}\" is the url_field: its signed URL is never copied into rows"),
                );
            } else {
                event_fields.push(e);
            }
        }
        let auth = self.http_auth(&format!("{path}.auth"), f.auth);
        let proxy = f
            .proxy
            .and_then(|p| self.proxy(&format!("{path}.proxy"), p));
        FetchConfig {
            url_field,
            when,
            mode,
            format,
            entries,
            csv,
            max_bytes,
            timeout,
            retries,
            event_fields,
            auth,
            proxy,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::{Config, ConfigErrors};
    use super::*;

    fn config(source: &str) -> String {
        format!(
            r#"
[[pipelines]]
name = "groups"
[pipelines.sink]
kind = "celonis"
url = "https://t.eu-1.celonis.cloud"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "groups"
app_key = "k"

[[sources]]
{source}
"#
        )
    }

    fn errors_of(source: &str) -> Vec<String> {
        match Config::load(&config(source), &HashMap::new()) {
            Ok(_) => panic!("config should not load"),
            Err(ConfigErrors(errs)) => errs.iter().map(|e| e.to_string()).collect(),
        }
    }

    const GOOD: &str = r#"kind = "poll"
pipeline = "groups"
schedule = "30s"
dequeue_url = "https://erp.example/api/connector/dequeue/A1"
ack_url = { expr = "'https://erp.example/api/connector/ack/A1?c=' + response.CorrelationId" }
entries = ["*.csv"]
max_bytes = "1MiB"
auth = { kind = "bearer", token = "t" }
"#;

    #[test]
    fn a_poll_source_loads_with_its_defaults() {
        let c = Config::load(&config(GOOD), &HashMap::new()).unwrap();
        let s = &c.sources[0];
        assert_eq!(s.pipeline, "groups");
        assert_eq!(s.schedule, Schedule::Every(Duration::from_secs(30)));
        assert_eq!(s.download_url_field, "DownloadLocation");
        assert_eq!(s.format, PackageFormat::Auto);
        assert_eq!(s.entries, ["*.csv"]);
        assert_eq!(s.max_bytes, 1 << 20);
        assert_eq!(s.timeout, Duration::from_secs(60));
        assert!(matches!(s.ack_url, Text::Expr(_)));
        assert!(matches!(s.auth, HttpAuth::Bearer(_)));
    }

    #[test]
    fn each_mistake_in_a_source_names_its_key() {
        let e = errors_of(
            r#"kind = "poll"
pipeline = "x"
schedule = "continuous"
dequeue_url = "ftp://erp"
ack_url = { expr = "request.id" }
download_url_field = " "
format = "xml"
entries = [""]
max_bytes = 0
timeout = "soon"
auth = { kind = "magic" }
"#,
        );
        for expected in [
            "sources[0].pipeline: no pipeline is named \"x\"",
            "sources[0].schedule: \"continuous\" applies to pipelines only",
            "sources[0].dequeue_url: \"ftp://erp\" is not an http(s) URL",
            "sources[0].ack_url.expr: uses \"request\"",
            "sources[0].download_url_field: must name a field",
            "sources[0].format: \"xml\" is not",
            "sources[0].entries[0]: must be a glob",
            "sources[0].max_bytes: 0 is not a positive size",
            "sources[0].timeout: \"soon\" is not a duration",
            "sources[0].auth.kind: \"magic\" is not an auth kind",
        ] {
            assert!(
                e.iter().any(|m| m.starts_with(expected)),
                "missing {expected:?} in {e:#?}"
            );
        }
    }

    #[test]
    fn emulator_finops_serves_one_sample_package_unless_told_how_many() {
        let load = |t: &str| Config::load(&format!("{}\n{t}", config(GOOD)), &HashMap::new());
        let c = load("[emulator]\n[emulator.finops]").unwrap();
        assert_eq!(c.emulator.unwrap().finops, Some(1));
        let c = load("[emulator]\n[emulator.finops]\npackages = 4").unwrap();
        assert_eq!(c.emulator.unwrap().finops, Some(4));
        let c = load("[emulator]").unwrap();
        assert_eq!(c.emulator.unwrap().finops, None);
        assert!(
            load("[emulator.finops]\nqueue = 1").is_err(),
            "unknown keys are errors"
        );
    }

    #[test]
    fn a_source_needs_its_urls_and_a_known_kind() {
        let e = errors_of("kind = \"poll\"\npipeline = \"groups\"");
        assert!(
            e.iter()
                .any(|m| m.starts_with("sources[0].dequeue_url: is required")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("sources[0].ack_url: is required")),
            "{e:?}"
        );
        let e = errors_of("kind = \"push\"\npipeline = \"groups\"");
        assert!(
            e.iter()
                .any(|m| m.starts_with("sources[0].kind: \"push\" is not a source kind")),
            "{e:?}"
        );
    }

    fn pipeline_with_fetch(fetch: &str) -> String {
        format!(
            r#"
[[pipelines]]
name = "events"
[pipelines.sink]
kind = "celonis"
url = "https://t.eu-1.celonis.cloud"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "groups"
app_key = "k"
[pipelines.fetch]
{fetch}
"#
        )
    }

    #[test]
    fn a_fetch_loads_with_its_defaults() {
        let c = Config::load(&pipeline_with_fetch(""), &HashMap::new()).unwrap();
        let f = c.pipelines[0].fetch.as_ref().unwrap();
        assert_eq!(f.url_field, "DownloadURL");
        assert_eq!(f.mode, FetchMode::Deferred);
        assert_eq!(f.format, PackageFormat::Auto);
        assert_eq!(f.max_bytes, DEFAULT_MAX_BYTES);
        assert_eq!(f.timeout, Duration::from_secs(60));
        assert_eq!(f.retries, DEFAULT_FETCH_RETRIES);
        assert!(f.when.is_none() && f.event_fields.is_empty());
        assert!(matches!(f.auth, HttpAuth::None));
        let c = Config::load(
            &pipeline_with_fetch(
                "mode = \"inline\"\nwhen = \"row.EntityName == 'x'\"\nevent_fields = [\"EntityName\"]\nentries = [\"*.csv\"]\nretries = 0\nauth = { kind = \"bearer\", token = \"t\" }",
            ),
            &HashMap::new(),
        )
        .unwrap();
        let f = c.pipelines[0].fetch.as_ref().unwrap();
        assert_eq!(f.mode, FetchMode::Inline);
        assert_eq!(f.csv, CsvInput::default());
        assert_eq!((f.retries, f.entries.len()), (0, 1));
        assert!(f.when.is_some() && matches!(f.auth, HttpAuth::Bearer(_)));
    }

    #[test]
    fn each_mistake_in_a_fetch_names_its_key() {
        let text = pipeline_with_fetch(
            r#"url_field = ""
when = "body.x"
mode = "later"
format = "xml"
entries = [""]
csv = { separator = ";;", quote = "\n" }
max_bytes = 0
timeout = "0s"
retries = 99
event_fields = ["DownloadURL2", ""]
auth = { kind = "magic" }"#,
        );
        let Err(ConfigErrors(errs)) = Config::load(&text, &HashMap::new()) else {
            panic!("config should not load");
        };
        let e: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        for expected in [
            "pipelines[0].fetch.url_field: must name the event field",
            "pipelines[0].fetch.when: uses \"body\"",
            "pipelines[0].fetch.mode: \"later\" is not a mode",
            "pipelines[0].fetch.format: \"xml\" is not",
            "pipelines[0].fetch.entries[0]: must be a glob",
            "pipelines[0].fetch.csv.separator: \";;\" must be a single ASCII character",
            "pipelines[0].fetch.csv.quote: \"\\n\" must be a single ASCII character",
            "pipelines[0].fetch.max_bytes: 0 is not a positive size",
            "pipelines[0].fetch.timeout: must be longer than 0s",
            "pipelines[0].fetch.retries: 99 is not between 0 and 20",
            "pipelines[0].fetch.event_fields[1]: must name a field",
            "pipelines[0].fetch.auth.kind: \"magic\" is not an auth kind",
        ] {
            assert!(
                e.iter().any(|m| m.starts_with(expected)),
                "missing {expected:?} in {e:#?}"
            );
        }
        let Err(ConfigErrors(errs)) = Config::load(
            &pipeline_with_fetch("event_fields = [\"DownloadURL\"]\nfetch_url = 1"),
            &HashMap::new(),
        ) else {
            panic!("unknown keys are errors");
        };
        assert!(!errs.is_empty());
        let Err(ConfigErrors(errs)) = Config::load(
            &pipeline_with_fetch("event_fields = [\"DownloadURL\"]"),
            &HashMap::new(),
        ) else {
            panic!("the url_field is never copied");
        };
        assert!(
            errs.iter().any(|e| e
                .to_string()
                .starts_with("pipelines[0].fetch.event_fields[0]")),
            "{errs:?}"
        );
    }

    #[test]
    fn a_fetch_needs_a_hook_of_its_own() {
        let text = format!(
            "{}\n{}",
            pipeline_with_fetch("")
                .replace("name = \"events\"", "name = \"events\"\nhook = \"finops\""),
            pipeline_with_fetch("")
                .replace("name = \"events\"", "name = \"other\"\nhook = \"finops\"")
                .replace("[pipelines.fetch]\n", "")
        );
        let Err(ConfigErrors(errs)) = Config::load(&text, &HashMap::new()) else {
            panic!("config should not load");
        };
        assert!(
            errs.iter().any(|e| e
                .to_string()
                .starts_with("pipelines[0].fetch: pipeline events shares hook \"finops\"")),
            "{errs:?}"
        );
    }
}
