//! A package: a file behind a download URL (a zip of entities, or one data file), downloaded
//! streamed under a byte cap and read into rows entry by entry, the way `weir push` reads a
//! file. Shared by every source that downloads files.

use std::io::{Cursor, Read};
use std::path::Path;

use reqwest::Url;

use crate::config::{CsvInput, PackageFormat};
use crate::ingest::parse::Limits;
use crate::ingest::screen::Source;
use crate::push::{Format, Item, Records};
use crate::row::Row;

/// FinOps package files that describe the package rather than hold data.
const METADATA: &[&str] = &["manifest.xml", "packageheader.xml"];

/// Why a package yields no rows. Never holds a URL's query string (it can carry a signature).
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("download from {host} failed: {detail}")]
    Transport { host: String, detail: String },
    #[error("download from {host} answered HTTP {status}")]
    Status { host: String, status: u16 },
    #[error("the package from {host} is over max_bytes ({max_bytes} bytes) {stage}")]
    TooLarge {
        host: String,
        max_bytes: u64,
        stage: &'static str,
    },
    #[error("the package is not a readable zip: {0}")]
    BadZip(String),
    #[error("entry {entry}: {detail}")]
    Entry { entry: String, detail: String },
}

/// The rows of one entry.
pub struct Entry {
    pub name: String,
    pub records: Vec<(Row, Source)>,
    /// Records that are not rows (wrong field count, malformed line): why, the first few.
    pub bad: Vec<String>,
}

/// What a package held.
pub struct Package {
    pub entries: Vec<Entry>,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Bytes unpacked (the data entries read).
    pub unpacked: u64,
}

/// The host of a URL, as errors and logs name it.
pub fn host(url: &Url) -> String {
    url.host_str().unwrap_or("?").to_owned()
}

/// GETs `url` and reads its body, refusing it as soon as it passes `max_bytes`.
pub async fn download(
    request: reqwest::RequestBuilder,
    url: &Url,
    max_bytes: u64,
) -> Result<Vec<u8>, PackageError> {
    let host = host(url);
    let transport = |e: reqwest::Error| PackageError::Transport {
        host: host.clone(),
        detail: e.without_url().to_string(),
    };
    let mut response = request.send().await.map_err(transport)?;
    let status = response.status();
    if !status.is_success() {
        return Err(PackageError::Status {
            host,
            status: status.as_u16(),
        });
    }
    let too_large = || PackageError::TooLarge {
        host: host.clone(),
        max_bytes,
        stage: "downloaded",
    };
    if response.content_length().is_some_and(|n| n > max_bytes) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() as u64 + chunk.len() as u64 > max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How a package is read: its format, which entries, the cap on bytes unpacked, and how
/// CSV is read.
pub struct Reading<'a> {
    pub format: PackageFormat,
    pub entries: &'a [String],
    pub max_bytes: u64,
    pub csv: CsvInput,
}

/// [`read_with`] with CSV read as RFC 4180 (`,` and `"`).
pub fn read(
    body: &[u8],
    name: &str,
    host: &str,
    format: PackageFormat,
    entries: &[String],
    max_bytes: u64,
    limits: &Limits,
) -> Result<Package, PackageError> {
    let reading = Reading {
        format,
        entries,
        max_bytes,
        csv: CsvInput::default(),
    };
    read_with(body, name, host, &reading, limits)
}

/// Reads a downloaded package: a zip's data entries (those matching `entries`, when given;
/// never `Manifest.xml` or `PackageHeader.xml`), or the file itself when it is not a zip
/// (`name` is its URL's last path segment). At most `max_bytes` are unpacked in all, counted
/// as read, whatever the zip's headers claim.
pub fn read_with(
    body: &[u8],
    name: &str,
    host: &str,
    reading: &Reading<'_>,
    limits: &Limits,
) -> Result<Package, PackageError> {
    let Reading {
        format,
        entries,
        max_bytes,
        csv,
    } = *reading;
    let mut out = Package {
        entries: Vec::new(),
        bytes: body.len() as u64,
        unpacked: 0,
    };
    if !body.starts_with(b"PK\x03\x04") {
        if let Some(f) = entry_format(name, format) {
            out.unpacked = body.len() as u64;
            out.entries
                .push(read_entry(name, body.to_vec(), f, limits, csv)?);
        }
        return Ok(out);
    }
    let mut zip =
        zip::ZipArchive::new(Cursor::new(body)).map_err(|e| PackageError::BadZip(e.to_string()))?;
    for i in 0..zip.len() {
        let entry = zip
            .by_index(i)
            .map_err(|e| PackageError::BadZip(e.to_string()))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry
            .name()
            .map_err(|e| PackageError::BadZip(e.to_string()))?
            .into_owned();
        let base = name.rsplit('/').next().unwrap_or(&name).to_owned();
        if METADATA.contains(&base.to_ascii_lowercase().as_str()) {
            continue;
        }
        if !entries.is_empty() && !entries.iter().any(|g| glob(g, &base) || glob(g, &name)) {
            continue;
        }
        let Some(f) = entry_format(&base, format) else {
            continue;
        };
        let left = max_bytes - out.unpacked;
        let mut data = Vec::new();
        // One byte over what is left tells an entry that is too large from one that fits.
        entry
            .take(left + 1)
            .read_to_end(&mut data)
            .map_err(|e| PackageError::BadZip(format!("entry {name}: {e}")))?;
        if data.len() as u64 > left {
            return Err(PackageError::TooLarge {
                host: host.to_owned(),
                max_bytes,
                stage: "unpacked",
            });
        }
        out.unpacked += data.len() as u64;
        out.entries.push(read_entry(&name, data, f, limits, csv)?);
    }
    Ok(out)
}

/// The format of an entry named `name`, or `None` when `auto` does not read it.
fn entry_format(name: &str, format: PackageFormat) -> Option<Format> {
    match format {
        PackageFormat::Csv => Some(Format::Csv),
        PackageFormat::Json => Some(Format::Json),
        PackageFormat::Ndjson => Some(Format::JsonLines),
        PackageFormat::Auto => Format::of(Path::new(name)).ok(),
    }
}

fn read_entry(
    name: &str,
    mut data: Vec<u8>,
    format: Format,
    limits: &Limits,
    csv: CsvInput,
) -> Result<Entry, PackageError> {
    if data.starts_with(b"\xEF\xBB\xBF") {
        data.drain(..3);
    }
    let failed = |detail: String| PackageError::Entry {
        entry: name.to_owned(),
        detail,
    };
    let bytes = data.len() as u64;
    let mut records = Records::from_reader(
        Box::new(Cursor::new(data)),
        Path::new(name),
        format,
        bytes,
        limits,
        csv,
    )
    .map_err(|e| failed(e.to_string()))?;
    let mut entry = Entry {
        name: name.to_owned(),
        records: Vec::new(),
        bad: Vec::new(),
    };
    while let Some((item, _)) = records.next().map_err(failed)? {
        match item {
            Item::Row(row, source) => entry.records.push((row, source)),
            Item::Bad(reason) => entry.bad.push(reason),
        }
    }
    Ok(entry)
}

/// `*` any run of characters, `?` one character, anything else itself.
fn glob(pattern: &str, name: &str) -> bool {
    fn matches(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| matches(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && matches(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && matches(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    matches(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn limits() -> Limits {
        Limits::DEFAULT
    }

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in files {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn a_package_yields_its_csv_entries_without_the_metadata_or_the_bom() {
        let body = zip_of(&[
            ("Manifest.xml", b"<Manifest/>"),
            ("PackageHeader.xml", b"<Header/>"),
            ("Customer groups.csv", b"\xEF\xBB\xBFID,Name\n1,a\n2,b\n"),
            ("Vendors.csv", b"ID,Name\n3,c\n"),
        ]);
        let p = read(
            &body,
            "p.zip",
            "h",
            PackageFormat::Auto,
            &[],
            1 << 20,
            &limits(),
        )
        .unwrap();
        let names: Vec<&str> = p.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["Customer groups.csv", "Vendors.csv"]);
        assert_eq!(p.entries[0].records.len(), 2);
        let first = &p.entries[0].records[0].0;
        assert!(format!("{first:?}").contains("\"ID\""), "{first:?}");
    }

    #[test]
    fn entries_globs_pick_the_entries_read() {
        let body = zip_of(&[("a.csv", b"x\n1\n"), ("b.csv", b"x\n2\n")]);
        let only = ["b*".to_owned()];
        let p = read(
            &body,
            "p.zip",
            "h",
            PackageFormat::Auto,
            &only,
            1 << 20,
            &limits(),
        )
        .unwrap();
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].name, "b.csv");
    }

    #[test]
    fn a_zip_bomb_is_refused_by_the_bytes_read_not_the_headers() {
        let big = vec![b'a'; 4 << 20];
        let body = zip_of(&[("big.csv", &big)]);
        assert!(body.len() < 64 << 10, "{}", body.len());
        let e = read(
            &body,
            "p.zip",
            "h",
            PackageFormat::Auto,
            &[],
            1 << 20,
            &limits(),
        )
        .err()
        .expect("refused");
        assert!(
            matches!(
                e,
                PackageError::TooLarge {
                    stage: "unpacked",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_body_that_is_not_a_zip_is_read_as_the_file_its_name_says() {
        let p = read(
            b"{\"a\":1}\n{\"a\":2}\n",
            "rows.ndjson",
            "h",
            PackageFormat::Auto,
            &[],
            1 << 20,
            &limits(),
        )
        .unwrap();
        assert_eq!(p.entries[0].records.len(), 2);
    }

    #[test]
    fn csv_entries_are_read_with_the_separator_and_quote_given() {
        let body = zip_of(&[("a.csv", b"ID;Name\n1;'a;b'\n")]);
        let reading = Reading {
            format: PackageFormat::Auto,
            entries: &[],
            max_bytes: 1 << 20,
            csv: CsvInput {
                separator: b';',
                quote: b'\'',
            },
        };
        let p = read_with(&body, "p.zip", "h", &reading, &limits()).unwrap();
        let row = &p.entries[0].records[0].0;
        assert_eq!(row.get("Name").unwrap().text, "a;b");
    }

    #[test]
    fn globs_match_stars_and_question_marks() {
        assert!(glob("*.csv", "Customer groups.csv"));
        assert!(!glob("*.csv", "Manifest.xml"));
        assert!(glob("a?c", "abc"));
    }
}
