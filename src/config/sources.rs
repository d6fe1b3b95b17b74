//! Validation of `[[sources]]`: `kind = "poll"`, a dequeue/ack API (Dynamics 365 FinOps
//! recurring integrations) polled on a schedule into a pipeline's queue.

use std::time::Duration;

use reqwest::Url;

use super::raw::{RawSource, RawText};
use super::{HttpAuth, PipelineConfig, Proxy, Schedule, Text, Validator};

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
            let format = match s.format.as_deref() {
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
            };
            let mut entries = Vec::new();
            for (j, e) in s.entries.unwrap_or_default().into_iter().enumerate() {
                if e.trim().is_empty() {
                    self.error(
                        format!("{path}.entries[{j}]"),
                        "must be a glob like \"*.csv\"",
                    );
                } else {
                    entries.push(e);
                }
            }
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
}
