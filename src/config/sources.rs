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
