//! Writes a batch of rows as CSV: a header row, then one record per row, every value as the
//! text it was received with. Large batches are split into several chunks, each with its own
//! header, as Data Push clients do.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::batch::{ColumnsError, KnownColumns};

use crate::config::{
    Column, ColumnDecl, ColumnSource, ColumnType, CsvOptions, FieldType, LineEnding,
    PipelineConfig, Schema, TableSpec, Typing,
};
use crate::expr::{self, Expr};
use crate::queue::Entry;
use crate::values;

/// The CSV columns of a batch: header names and the row field each is read from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    pub headers: Vec<String>,
    /// The row field of each column; empty (no field has an empty name) for expression columns.
    pub sources: Vec<String>,
    /// Expression columns: (column index, expression over `row` and `pipeline`).
    pub exprs: Vec<(usize, Expr)>,
    /// The pipeline's name, for the expressions' `pipeline` variable.
    pub pipeline: String,
    /// The column that holds each row's queue offset (`dedupe = "server"`).
    pub seq: Option<usize>,
    /// Each column's configured typing and its schema field's type (what `tableSchema`
    /// declares, with the sink's fallback length).
    pub typings: Vec<(Typing, Option<FieldType>)>,
}

impl Layout {
    /// The typed table of this layout: every STRING column without its own `length` gets
    /// `fallback` characters.
    pub fn table(&self, fallback: u32) -> TableSpec {
        TableSpec {
            columns: self
                .headers
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let (typing, field) = self.typings.get(i).copied().unwrap_or_default();
                    ColumnDecl::new(name, typing, field, fallback)
                })
                .collect(),
        }
    }
}

impl Layout {
    /// `[[pipelines.columns]]` in order; without them, the schema's fields in config order;
    /// without either, the union of the batch's field names in first-seen order.
    pub fn for_batch(columns: &[Column], schema: Option<&Schema>, entries: &[Entry]) -> Layout {
        if !columns.is_empty() {
            let mut exprs = Vec::new();
            let sources = columns
                .iter()
                .enumerate()
                .map(|(i, c)| match &c.source {
                    ColumnSource::Field(f) => f.clone(),
                    ColumnSource::Expr(e) => {
                        exprs.push((i, e.clone()));
                        String::new()
                    }
                })
                .collect();
            let typings = columns
                .iter()
                .map(|c| {
                    let field = match (&c.source, schema) {
                        (ColumnSource::Field(f), Some(s)) => s.field_type(f),
                        _ => None,
                    };
                    (c.typing, field)
                })
                .collect();
            return Layout {
                headers: columns.iter().map(|c| c.name.clone()).collect(),
                sources,
                exprs,
                pipeline: String::new(),
                seq: None,
                typings,
            };
        }
        if let Some(schema) = schema.filter(|s| !s.fields.is_empty()) {
            let names: Vec<String> = schema.fields.iter().map(|(n, _)| n.clone()).collect();
            return Layout {
                headers: names.clone(),
                sources: names,
                typings: schema
                    .fields
                    .iter()
                    .map(|(_, t)| (Typing::default(), Some(*t)))
                    .collect(),
                ..Layout::default()
            };
        }
        let mut union = NameUnion::default();
        for e in entries {
            union.add(&e.row);
        }
        let names: Vec<String> = union.names.iter().map(|n| (*n).to_owned()).collect();
        Layout {
            headers: names.clone(),
            sources: names,
            ..Layout::default()
        }
    }

    /// Names the pipeline for expression columns.
    pub fn named(mut self, pipeline: &str) -> Layout {
        pipeline.clone_into(&mut self.pipeline);
        self
    }

    /// Adds the column `name` holding each row's queue offset, last.
    pub fn with_seq(mut self, name: &str) -> Layout {
        self.seq = Some(self.headers.len());
        self.typings
            .resize(self.headers.len(), (Typing::default(), None));
        self.typings.push((
            Typing {
                ty: Some(crate::config::ColumnType::Integer),
                ..Typing::default()
            },
            None,
        ));
        self.headers.push(name.to_owned());
        self.sources.push(String::new());
        self
    }

    /// Only the columns named in `names`, in that order (a deleted chunk's key columns).
    pub fn only(&self, names: &[String]) -> Layout {
        let mut out = Layout {
            pipeline: self.pipeline.clone(),
            ..Layout::default()
        };
        for name in names {
            let i = self.headers.iter().position(|h| h == name);
            out.headers.push(name.clone());
            out.sources
                .push(i.map_or_else(|| name.clone(), |i| self.sources[i].clone()));
            out.typings.push(
                i.and_then(|i| self.typings.get(i).copied())
                    .unwrap_or_default(),
            );
            if let Some((_, x)) = i.and_then(|i| self.exprs.iter().find(|(j, _)| *j == i)) {
                out.exprs.push((out.headers.len() - 1, x.clone()));
            }
        }
        out
    }
}

/// Where a pipeline's CSV columns come from, owned by its sink: `columns`, else `schema`,
/// else the union of the batch's field names (then at most `max_columns` of them).
#[derive(Debug, Clone)]
pub struct ColumnSpec {
    pub columns: Vec<Column>,
    pub schema: Option<Schema>,
    pub pipeline: String,
    pub max_columns: usize,
    /// Without `columns` and schema, the columns sent so far (Celonis sink only).
    pub known: Option<Arc<KnownColumns>>,
}

impl ColumnSpec {
    pub fn of(config: &PipelineConfig) -> ColumnSpec {
        ColumnSpec {
            columns: config.columns.clone(),
            schema: config.schema.clone(),
            pipeline: config.name.clone(),
            max_columns: config.max_columns,
            known: None,
        }
    }

    /// Whether `columns` or a schema fix the layout.
    fn fixed(&self) -> bool {
        !self.columns.is_empty() || self.schema.as_ref().is_some_and(|s| !s.fields.is_empty())
    }

    /// The layout of a batch. Without `columns` and schema but with known columns, the
    /// header is every column sent so far then the batch's new names (the state is written
    /// before this returns), so the table keeps its columns and their order. When that
    /// union is wider than `max_columns`, the header is only the union's columns the batch
    /// has, still in the union's order.
    pub fn layout_known(&self, entries: &[Entry]) -> Result<Layout, ColumnsError> {
        self.with_known(self.layout(entries))
    }

    /// [`ColumnSpec::fitting_rows`] and [`ColumnSpec::layout_known`] of those rows, in one
    /// pass over the batch's field names instead of two.
    pub fn fit_layout_known(&self, entries: &[Entry]) -> (usize, Result<Layout, ColumnsError>) {
        if self.fixed() {
            return (entries.len(), self.layout_known(entries));
        }
        let mut union = NameUnion::default();
        let mut fit = entries.len();
        for (i, e) in entries.iter().enumerate() {
            let before = union.names.len();
            union.add(&e.row);
            if union.names.len() > self.max_columns {
                // The rows before this one, or this one alone when it is the first.
                if i > 0 {
                    union.names.truncate(before);
                }
                fit = i.max(1);
                break;
            }
        }
        let names: Vec<String> = union.names.iter().map(|n| (*n).to_owned()).collect();
        let layout = Layout {
            headers: names.clone(),
            sources: names,
            ..Layout::default()
        }
        .named(&self.pipeline);
        (fit, self.with_known(layout))
    }

    /// `layout` with the table's known columns, as [`ColumnSpec::layout_known`] gives it.
    fn with_known(&self, layout: Layout) -> Result<Layout, ColumnsError> {
        match &self.known {
            Some(known) if !self.fixed() => {
                let mut names = known.extend(&layout.headers)?;
                if names.len() > self.max_columns {
                    names.retain(|n| layout.headers.contains(n));
                }
                Ok(Layout {
                    headers: names.clone(),
                    sources: names,
                    ..layout
                })
            }
            _ => Ok(layout),
        }
    }

    /// The layout [`ColumnSpec::layout_known`] would give the batch, without writing the
    /// known columns (a dry run).
    pub fn layout_preview(&self, entries: &[Entry]) -> Layout {
        let layout = self.layout(entries);
        match &self.known {
            Some(known) if !self.fixed() => {
                let mut names = known.snapshot();
                for h in &layout.headers {
                    if !names.contains(h) {
                        names.push(h.clone());
                    }
                }
                if names.len() > self.max_columns {
                    names.retain(|n| layout.headers.contains(n));
                }
                Layout {
                    headers: names.clone(),
                    sources: names,
                    ..layout
                }
            }
            _ => layout,
        }
    }

    /// The layout of a batch.
    pub fn layout(&self, entries: &[Entry]) -> Layout {
        Layout::for_batch(&self.columns, self.schema.as_ref(), entries).named(&self.pipeline)
    }

    /// How many of the batch's first rows fit in one CSV: all of them with `columns` or a
    /// schema; without, the longest prefix whose union of field names has at most
    /// `max_columns` names (at least one row: ingest bounds the fields of a row).
    pub fn fitting_rows(&self, entries: &[Entry]) -> usize {
        if self.fixed() {
            return entries.len();
        }
        let mut union = NameUnion::default();
        for (i, e) in entries.iter().enumerate() {
            union.add(&e.row);
            if union.names.len() > self.max_columns {
                return i.max(1);
            }
        }
        entries.len()
    }
}

/// The union of a batch's field names, in order of first appearance. Rows of a batch mostly
/// carry the names of the row before them in the same order (one sender, one shape): such a
/// row is recognised by comparing its names with that row's, so only a row of another shape
/// costs a hash per name. This is the per-batch layout cache of a delivery's hot loop.
#[derive(Default)]
struct NameUnion<'e> {
    seen: HashSet<&'e str>,
    names: Vec<&'e str>,
    /// The names of the last row that was not recognised, in its order.
    shape: Vec<&'e str>,
}

impl<'e> NameUnion<'e> {
    fn add(&mut self, row: &'e crate::row::Row) {
        let mut n = 0;
        let same = row.byte_fields().all(|f| {
            let known = self.shape.get(n).is_some_and(|s| s.as_bytes() == f.name);
            n += 1;
            known
        });
        if same && n == self.shape.len() {
            return;
        }
        self.shape.clear();
        for f in row.fields() {
            self.shape.push(f.name);
            if self.seen.insert(f.name) {
                self.names.push(f.name);
            }
        }
    }
}

/// Writes records straight into the chunk, as the csv crate's own fast path
/// (`Writer::write_byte_record`) does: a field that needs no quotes is copied as it is, one
/// that does is quoted by `csv_core::quote`, and the quoting decision is `csv_core`'s, so the
/// bytes are the csv crate's (tested against it). Without the csv crate's intermediate buffer
/// and per-field state machine, a record costs one copy per field.
struct RecordWriter {
    core: csv_core::Writer,
    delimiter: u8,
    quote: u8,
    escape: u8,
    double_quote: bool,
    terminator: &'static [u8],
}

impl RecordWriter {
    fn new(opts: &CsvOptions) -> RecordWriter {
        let (terminator, core_terminator): (&'static [u8], _) = match opts.line_ending {
            LineEnding::CrLf => (b"\r\n", csv_core::Terminator::CRLF),
            LineEnding::Lf => (b"\n", csv_core::Terminator::Any(b'\n')),
            LineEnding::Cr => (b"\r", csv_core::Terminator::Any(b'\r')),
        };
        let double_quote = opts.escape == opts.quote;
        RecordWriter {
            core: csv_core::WriterBuilder::new()
                .delimiter(opts.separator)
                .quote(opts.quote)
                .escape(opts.escape)
                .double_quote(double_quote)
                .terminator(core_terminator)
                .quote_style(csv_core::QuoteStyle::Necessary)
                .build(),
            delimiter: opts.separator,
            quote: opts.quote,
            escape: opts.escape,
            double_quote,
            terminator,
        }
    }

    /// Appends one record and its terminator to `out`.
    fn write<C: AsRef<[u8]>>(&self, out: &mut Vec<u8>, cells: &[C]) {
        // A record of one empty field is written as two quotes, not as an empty line.
        if let [only] = cells
            && only.as_ref().is_empty()
        {
            out.extend_from_slice(&[self.quote, self.quote]);
            out.extend_from_slice(self.terminator);
            return;
        }
        for (i, cell) in cells.iter().enumerate() {
            let cell = cell.as_ref();
            if i > 0 {
                out.push(self.delimiter);
            }
            if !self.core.should_quote(cell) {
                out.extend_from_slice(cell);
                continue;
            }
            out.push(self.quote);
            // Quoting at most doubles the field.
            let start = out.len();
            out.resize(start + 2 * cell.len(), 0);
            let (_, _, written) = csv_core::quote(
                cell,
                &mut out[start..],
                self.quote,
                self.escape,
                self.double_quote,
            );
            out.truncate(start + written);
            out.push(self.quote);
        }
        out.extend_from_slice(self.terminator);
    }
}

/// Room a chunk reserves beyond `chunk_bytes` (or the rows' bytes), for the header and the
/// record that crosses the limit.
const CHUNK_SLACK: u64 = 64 * 1024;

/// Writes the batch as one or more CSV chunks of at most about `chunk_bytes` each (a chunk
/// always holds at least one record), each starting with the header row.
pub fn write_chunks(
    layout: &Layout,
    entries: &[Entry],
    opts: &CsvOptions,
    chunk_bytes: u64,
) -> Result<Vec<Vec<u8>>, csv::Error> {
    Chunks::new(layout, entries, opts, chunk_bytes).collect()
}

/// The batch's CSV chunks, written one at a time as they are asked for, so a sink holds
/// only the chunk it is uploading.
pub struct Chunks<'a> {
    layout: &'a Layout,
    entries: &'a [Entry],
    chunk_bytes: u64,
    records: Records<'a>,
    writer: RecordWriter,
    /// The next entry to write.
    next: usize,
    /// Whether a chunk was returned (an empty batch still gives one, the header row).
    emitted: bool,
}

impl<'a> Chunks<'a> {
    pub fn new(
        layout: &'a Layout,
        entries: &'a [Entry],
        opts: &'a CsvOptions,
        chunk_bytes: u64,
    ) -> Chunks<'a> {
        Chunks {
            layout,
            entries,
            chunk_bytes,
            records: Records::new(layout),
            writer: RecordWriter::new(opts),
            next: 0,
            emitted: false,
        }
    }

    fn chunk(&mut self) -> Result<Vec<u8>, csv::Error> {
        let layout = self.layout;
        // Sized once for the whole chunk: a record's CSV is shorter than the row as it is
        // held (names are in the header only), so the rows' own bytes bound it, and growing
        // by doubling would copy the chunk and touch twice its pages. Reserved pages that
        // are never written cost no memory.
        let mut rows_bytes = 0u64;
        for e in self.entries.get(self.next..).unwrap_or_default() {
            rows_bytes += e.row.encoded_len() as u64;
            if rows_bytes >= self.chunk_bytes {
                break;
            }
        }
        let mut out = Vec::with_capacity((rows_bytes.min(self.chunk_bytes) + CHUNK_SLACK) as usize);
        self.writer.write(&mut out, &layout.headers);
        // One cell buffer for the chunk. Cells are bytes: the rows' text is valid UTF-8
        // already and the csv crate writes bytes, so the hot loop does not check UTF-8 again
        // (`Row::byte_fields`).
        let mut cells: Vec<&[u8]> = vec![b""; layout.sources.len()];
        while let Some(e) = self.entries.get(self.next) {
            self.next += 1;
            let computed = self.records.read(e, &mut cells);
            if computed.is_empty() {
                self.writer.write(&mut out, &cells);
            } else {
                let mut with_computed = cells.clone();
                for (i, text) in &computed {
                    with_computed[*i] = text.as_bytes();
                }
                self.writer.write(&mut out, &with_computed);
            }
            if out.len() as u64 >= self.chunk_bytes {
                break;
            }
        }
        Ok(out)
    }
}

impl Iterator for Chunks<'_> {
    type Item = Result<Vec<u8>, csv::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.emitted && self.next >= self.entries.len() {
            return None;
        }
        self.emitted = true;
        let chunk = self.chunk();
        if chunk.is_err() {
            // A write error ends the batch.
            self.next = self.entries.len();
        }
        Some(chunk)
    }
}

/// Reads rows into cells in a layout's column order.
pub(super) struct Records<'a> {
    layout: &'a Layout,
    index: HashMap<&'a [u8], usize>,
    pipeline: cel::Value,
}

impl<'a> Records<'a> {
    pub(super) fn new(layout: &'a Layout) -> Records<'a> {
        Records {
            layout,
            index: layout
                .sources
                .iter()
                .enumerate()
                .map(|(i, s)| (s.as_bytes(), i))
                .collect(),
            pipeline: expr::pipeline_value(&layout.pipeline),
        }
    }

    /// Fills `cells` (one per column) with the row's field texts, empty where the row has
    /// no such field, and returns the computed cells (expression columns and `weir_seq`)
    /// that take the place of theirs.
    pub(super) fn read<'e>(&self, e: &'e Entry, cells: &mut [&'e [u8]]) -> Vec<(usize, String)> {
        let layout = self.layout;
        cells.fill(b"");
        for (pos, f) in e.row.byte_fields().enumerate() {
            // Rows usually list their fields in column order: try that slot first.
            let slot = match layout.sources.get(pos) {
                Some(s) if s.as_bytes() == f.name => Some(pos),
                _ => self.index.get(f.name).copied(),
            };
            if let Some(i) = slot.filter(|&i| !layout.sources[i].is_empty()) {
                cells[i] = f.text;
            }
        }
        if layout.exprs.is_empty() && layout.seq.is_none() {
            return Vec::new();
        }
        let mut computed = computed_cells(layout, &self.pipeline, e);
        if let Some(i) = layout.seq {
            computed.push((i, e.offset.to_string()));
        }
        computed
    }
}

/// The expression columns' values for one row. An expression that fails on a row (a field
/// it reads is missing, say) gives an empty cell, as a missing field does.
fn computed_cells(layout: &Layout, pipeline: &cel::Value, e: &Entry) -> Vec<(usize, String)> {
    if layout.exprs.is_empty() {
        return Vec::new();
    }
    let row = expr::row_value(&e.row);
    layout
        .exprs
        .iter()
        .map(|(i, x)| {
            let text = x
                .eval_text(&[("row", &row), ("pipeline", pipeline)])
                .unwrap_or_else(|err| {
                    tracing::debug!(column = %layout.headers[*i], offset = e.offset, error = %err, "expression column failed on a row");
                    String::new()
                });
            (*i, text)
        })
        .collect()
}

/// The job's `csvParsingOptions`, telling Celonis how the file was written: numbers with a
/// `.`, DATETIME values in the job-wide `dateFormat`, DATE and TIME columns each with their
/// own (the canonical forms of [`crate::values`]).
pub fn parsing_options(opts: &CsvOptions, table: &TableSpec) -> serde_json::Value {
    let mut o = serde_json::json!({
        "separatorSequence": (opts.separator as char).to_string(),
        "quoteSequence": (opts.quote as char).to_string(),
        "escapeSequence": (opts.escape as char).to_string(),
        "lineEnding": opts.line_ending.as_str(),
        "charSet": "UTF-8",
        "decimalSeparator": ".",
        "dateFormat": values::DATETIME_PATTERN,
    });
    let own: Vec<serde_json::Value> = table
        .columns
        .iter()
        .filter_map(|c| {
            let pattern = match c.ty {
                ColumnType::Date => values::DATE_PATTERN,
                ColumnType::Time => values::TIME_PATTERN,
                _ => return None,
            };
            Some(serde_json::json!({ "columnName": c.name, "dateFormat": pattern }))
        })
        .collect();
    if !own.is_empty() {
        o["additionalColumnOptions"] = own.into();
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::{Kind, Row};

    fn entry(fields: &[(&str, &str)]) -> Entry {
        Entry {
            offset: 0,
            received_ms: 0,
            row: Row::from_pairs(fields.iter().copied()).unwrap(),
        }
    }

    fn text(chunks: &[Vec<u8>]) -> Vec<String> {
        chunks
            .iter()
            .map(|c| String::from_utf8(c.clone()).unwrap())
            .collect()
    }

    #[test]
    fn configured_columns_pick_and_rename_fields_and_missing_ones_are_empty() {
        let columns = vec![
            Column {
                name: "Order ID".into(),
                source: ColumnSource::Field("OrderId".into()),
                typing: Typing::default(),
                input: Default::default(),
            },
            Column {
                name: "Date".into(),
                source: ColumnSource::Field("DeliveryDate".into()),
                typing: Typing::default(),
                input: Default::default(),
            },
        ];
        let entries = vec![
            entry(&[
                ("OrderId", "0145632053"),
                ("DeliveryDate", "12.03.2021"),
                ("Extra", "x"),
            ]),
            entry(&[("DeliveryDate", "01.01.2022"), ("OrderId", "007")]),
            entry(&[("OrderId", "8")]),
        ];
        let layout = Layout::for_batch(&columns, None, &entries);
        let chunks = write_chunks(&layout, &entries, &CsvOptions::default(), 1 << 20).unwrap();
        assert_eq!(
            text(&chunks),
            ["Order ID,Date\n0145632053,12.03.2021\n007,01.01.2022\n8,\n"]
        );
    }

    #[test]
    fn expression_columns_compute_their_cells_and_fail_to_an_empty_cell() {
        let columns = vec![
            Column {
                name: "id".into(),
                source: ColumnSource::Field("OrderId".into()),
                typing: Typing::default(),
                input: Default::default(),
            },
            Column {
                name: "Date".into(),
                source: ColumnSource::Expr(
                    Expr::compile(
                        "row.d.split('.')[2] + '-' + row.d.split('.')[1] + '-' + row.d.split('.')[0]",
                        &["row", "pipeline"],
                    )
                    .unwrap(),
                ),
                typing: Typing::default(),
                input: Default::default(),
            },
            Column {
                name: "Tag".into(),
                source: ColumnSource::Expr(
                    Expr::compile("pipeline.name + ':' + row.OrderId.upperAscii()", &["row", "pipeline"])
                        .unwrap(),
                ),
                typing: Typing::default(),
                input: Default::default(),
            },
        ];
        let entries = vec![
            entry(&[("OrderId", "ab1"), ("d", "12.03.2021")]),
            entry(&[("OrderId", "x")]),
        ];
        let layout = Layout::for_batch(&columns, None, &entries).named("orders");
        let chunks = write_chunks(&layout, &entries, &CsvOptions::default(), 1 << 20).unwrap();
        assert_eq!(
            text(&chunks),
            ["id,Date,Tag\nab1,2021-03-12,orders:AB1\nx,,orders:X\n"]
        );
    }

    #[test]
    fn without_columns_or_schema_the_header_is_the_union_in_first_seen_order() {
        let entries = vec![
            entry(&[("b", "1"), ("a", "2")]),
            entry(&[("c", "3"), ("a", "4")]),
        ];
        let layout = Layout::for_batch(&[], None, &entries);
        assert_eq!(layout.headers, ["b", "a", "c"]);
        let chunks = write_chunks(&layout, &entries, &CsvOptions::default(), 1 << 20).unwrap();
        assert_eq!(text(&chunks), ["b,a,c\n1,2,\n,4,3\n"]);
    }

    #[test]
    fn quotes_separators_and_line_breaks_are_quoted() {
        let mut b = Row::builder();
        b.push("a", Kind::String, "say \"hi\"").unwrap();
        b.push("b", Kind::String, "x,y").unwrap();
        b.push("c", Kind::String, "line\r\nbreak").unwrap();
        b.push("d", Kind::Number, "1.50").unwrap();
        let entries = vec![Entry {
            offset: 0,
            received_ms: 0,
            row: b.finish(),
        }];
        let layout = Layout::for_batch(&[], None, &entries);
        let chunks = write_chunks(&layout, &entries, &CsvOptions::default(), 1 << 20).unwrap();
        assert_eq!(
            text(&chunks),
            ["a,b,c,d\n\"say \"\"hi\"\"\",\"x,y\",\"line\r\nbreak\",1.50\n"]
        );
    }

    #[test]
    fn separator_escape_and_line_ending_follow_the_options() {
        let opts = CsvOptions {
            separator: b';',
            escape: b'\\',
            line_ending: LineEnding::CrLf,
            ..CsvOptions::default()
        };
        let entries = vec![entry(&[("a", "1;2"), ("b", "q\"q")])];
        let layout = Layout::for_batch(&[], None, &entries);
        let chunks = write_chunks(&layout, &entries, &opts, 1 << 20).unwrap();
        assert_eq!(text(&chunks), ["a;b\r\n\"1;2\";\"q\\\"q\"\r\n"]);
        let o = parsing_options(&opts, &TableSpec::default());
        assert_eq!(o["separatorSequence"], ";");
        assert_eq!(o["escapeSequence"], "\\");
        assert_eq!(o["lineEnding"], "\r\n");
    }

    #[test]
    fn big_batches_split_into_chunks_that_each_have_the_header() {
        let entries: Vec<Entry> = (0..10)
            .map(|i| entry(&[("n", &format!("{i:04}"))]))
            .collect();
        let layout = Layout::for_batch(&[], None, &entries);
        let chunks = write_chunks(&layout, &entries, &CsvOptions::default(), 12).unwrap();
        let chunks = text(&chunks);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.starts_with("n\n")));
        let all: Vec<&str> = chunks.iter().flat_map(|c| c.lines().skip(1)).collect();
        assert_eq!(all, (0..10).map(|i| format!("{i:04}")).collect::<Vec<_>>());
    }

    #[test]
    fn chunks_are_written_one_at_a_time_as_they_are_asked_for() {
        let entries: Vec<Entry> = (0..10)
            .map(|i| entry(&[("n", &format!("{i:04}"))]))
            .collect();
        let layout = Layout::for_batch(&[], None, &entries);
        let opts = CsvOptions::default();
        let mut chunks = Chunks::new(&layout, &entries, &opts, 12);
        let first = chunks.next().unwrap().unwrap();
        assert_eq!(String::from_utf8(first).unwrap(), "n\n0000\n0001\n");
        assert_eq!(
            chunks.next, 2,
            "only the rows of the first chunk were written"
        );
        assert_eq!(chunks.count(), 4, "the other chunks follow on demand");
    }

    #[test]
    fn without_columns_a_batch_is_cut_to_the_longest_prefix_within_max_columns() {
        let spec = |max_columns| ColumnSpec {
            columns: vec![],
            schema: None,
            pipeline: "orders".into(),
            max_columns,
            known: None,
        };
        let entries = vec![
            entry(&[("a", "1"), ("b", "2")]),
            entry(&[("c", "3"), ("a", "4")]),
            entry(&[("d", "5"), ("e", "6")]),
            entry(&[("f", "7")]),
        ];
        assert_eq!(spec(3).fitting_rows(&entries), 2);
        assert_eq!(spec(6).fitting_rows(&entries), 4);
        assert_eq!(
            spec(1).fitting_rows(&entries),
            1,
            "at least one row per run"
        );
        let fixed = ColumnSpec {
            columns: vec![Column {
                name: "A".into(),
                source: ColumnSource::Field("a".into()),
                typing: Typing::default(),
                input: Default::default(),
            }],
            ..spec(1)
        };
        assert_eq!(fixed.fitting_rows(&entries), 4, "columns fix the layout");
    }

    #[test]
    fn known_columns_lead_the_header_and_past_max_columns_only_the_batchs_are_sent() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownColumns::load(dir.path()).unwrap();
        known.extend(&["a".to_owned(), "b".to_owned()]).unwrap();
        let spec = |max_columns| ColumnSpec {
            columns: vec![],
            schema: None,
            pipeline: "orders".into(),
            max_columns,
            known: Some(Arc::new(KnownColumns::load(dir.path()).unwrap())),
        };
        let entries = vec![entry(&[("c", "1"), ("a", "2")])];
        assert_eq!(
            spec(3).layout_known(&entries).unwrap().headers,
            ["a", "b", "c"]
        );
        let entries = vec![entry(&[("d", "1"), ("b", "2")])];
        assert_eq!(
            spec(3).layout_known(&entries).unwrap().headers,
            ["b", "d"],
            "the union a, b, c, d is past max_columns: the batch's columns in union order"
        );
        assert_eq!(spec(3).fitting_rows(&entries), 1);
    }

    #[test]
    fn an_empty_batch_is_just_a_header() {
        let layout = Layout {
            headers: vec!["a".into()],
            sources: vec!["a".into()],
            ..Layout::default()
        };
        assert_eq!(
            text(&write_chunks(&layout, &[], &CsvOptions::default(), 10).unwrap()),
            ["a\n"]
        );
    }

    #[test]
    fn one_pass_gives_the_fit_and_the_layout_the_two_calls_give() {
        let entries = vec![
            entry(&[("a", "1"), ("b", "2")]),
            entry(&[("a", "1"), ("b", "2")]),
            entry(&[("c", "3")]),
            entry(&[("d", "4"), ("e", "5")]),
            entry(&[("a", "1")]),
        ];
        for max in 1..7 {
            let spec = ColumnSpec {
                columns: vec![],
                schema: None,
                pipeline: "orders".into(),
                max_columns: max,
                known: None,
            };
            let (fit, layout) = spec.fit_layout_known(&entries);
            assert_eq!(fit, spec.fitting_rows(&entries), "max_columns {max}");
            assert_eq!(
                layout.unwrap().headers,
                spec.layout_known(&entries[..fit]).unwrap().headers,
                "max_columns {max}"
            );
        }
    }

    #[test]
    fn the_union_of_names_keeps_first_seen_order_across_row_shapes() {
        let rows = [
            entry(&[("a", "1"), ("b", "2")]),
            entry(&[("a", "1"), ("b", "2")]),
            entry(&[("b", "2"), ("c", "3")]),
            entry(&[("a", "1")]),
            entry(&[("a", "1"), ("b", "2"), ("d", "4")]),
            entry(&[("a", "1"), ("b", "2")]),
        ];
        let mut union = NameUnion::default();
        for e in &rows {
            union.add(&e.row);
        }
        assert_eq!(union.names, ["a", "b", "c", "d"]);
        let layout = Layout::for_batch(&[], None, &rows);
        assert_eq!(layout.headers, ["a", "b", "c", "d"]);
    }

    /// What the csv crate writes for `records` with `opts`.
    fn csv_crate(opts: &CsvOptions, records: &[Vec<Vec<u8>>]) -> Vec<u8> {
        let terminator = match opts.line_ending {
            LineEnding::CrLf => csv::Terminator::CRLF,
            LineEnding::Lf => csv::Terminator::Any(b'\n'),
            LineEnding::Cr => csv::Terminator::Any(b'\r'),
        };
        let mut w = csv::WriterBuilder::new()
            .delimiter(opts.separator)
            .quote(opts.quote)
            .escape(opts.escape)
            .double_quote(opts.escape == opts.quote)
            .terminator(terminator)
            .quote_style(csv::QuoteStyle::Necessary)
            .flexible(true)
            .from_writer(Vec::new());
        for r in records {
            w.write_record(r).unwrap();
        }
        w.into_inner().unwrap()
    }

    proptest::proptest! {
        #[test]
        fn records_are_written_byte_for_byte_as_the_csv_crate_writes_them(
            records in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::collection::vec(
                        proptest::sample::select(vec![b'a', b'1', b' ', b',', b';', b'"', b'\'', b'\\', b'\r', b'\n', b'#', 0xc3, 0xa9]),
                        0..6,
                    ),
                    1..4,
                ),
                1..6,
            ),
            separator in proptest::sample::select(vec![b',', b';', b'\t']),
            quote in proptest::sample::select(vec![b'"', b'\'']),
            escape_is_quote in proptest::bool::ANY,
            line_ending in proptest::sample::select(vec![LineEnding::Lf, LineEnding::CrLf, LineEnding::Cr]),
        ) {
            let opts = CsvOptions {
                separator,
                quote,
                escape: if escape_is_quote { quote } else { b'\\' },
                line_ending,
            };
            let writer = RecordWriter::new(&opts);
            let mut ours = Vec::new();
            for r in &records {
                writer.write(&mut ours, r);
            }
            proptest::prop_assert_eq!(ours, csv_crate(&opts, &records));
        }
    }
}
