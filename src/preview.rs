//! `Preview`: what a pipeline's sink would send for some rows, as a dry run shows it. The
//! sink implements it and `app.rs` hands it to ingest, so ingest never names the sink.

use serde::Serialize;

use crate::row::Row;

/// What one run would send for `rows`, without sending anything or changing any state.
pub trait Preview: Send + Sync {
    fn preview(&self, rows: &[Row]) -> SinkPreview;
}

/// The table a job would declare and the exact chunks it would upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct SinkPreview {
    /// `celonis` or `http`.
    pub sink: &'static str,
    /// The Celonis table (`targetName`); none for the HTTP sink.
    pub table: Option<String>,
    /// The columns and Celonis types the job's `tableSchema` would declare, in CSV order.
    pub columns: Vec<PreviewColumn>,
    /// The CSV chunks of upserted rows, each with its header, as they would be uploaded
    /// (for the HTTP sink: the body with `body = "csv"`).
    pub csv: Vec<String>,
    /// The deleted chunk's CSV (keys whose latest row matches `delete_when`).
    pub deleted_csv: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreviewColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// STRING: the length in characters; 0 otherwise.
    pub length: u32,
    /// FLOAT: the decimals; 0 otherwise.
    pub decimals: u32,
    /// One of the sink's `keys` (`pkField`).
    pub key: bool,
}
