//! The spool's record format: encoding, parsing, resync after damage, and reading a byte
//! range of a segment in chunks. See the parent module for the layout.

use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::files::segment_path;
use super::{Pos, READ_CHUNK, Span};
use crate::queue::Offset;
use crate::row::Row;

/// Version 1 records (written before pushes were framed): 32-byte header, no push framing.
pub(super) const MAGIC_V1: [u8; 4] = *b"WSPL";
/// Version 2 records: a 36-byte header that ends with how many records of the same push follow.
pub(super) const MAGIC_V2: [u8; 4] = *b"WSP2";
/// The shortest header (version 1).
pub(super) const HEADER_LEN: usize = 32;
const HEADER_LEN_V2: usize = 36;

/// The bytes a row takes on disk in the current format.
pub(super) fn record_len(row: &Row) -> usize {
    HEADER_LEN_V2 + row.encoded_len()
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// CRC of magic, length and offset (and, in version 2, the records still to come);
/// `rec` holds at least the header of its version.
fn header_crc(rec: &[u8], len: usize) -> u32 {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[0..8]), &rec[16..24]);
    if len == HEADER_LEN_V2 {
        crc32c::crc32c_append(crc, &rec[32..36])
    } else {
        crc
    }
}

/// Appends one version 2 record. `rest`: how many records of the same push follow it; the
/// last record of a push has 0, so recovery can tell a whole push from a torn one.
pub(super) fn encode_record(
    buf: &mut Vec<u8>,
    offset: Offset,
    received_ms: u64,
    rest: u32,
    row: &[u8],
) {
    let start = buf.len();
    buf.extend_from_slice(&MAGIC_V2);
    // Rows longer than u32::MAX are refused by `push`.
    buf.extend_from_slice(&(row.len() as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 8]);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&received_ms.to_le_bytes());
    buf.extend_from_slice(&rest.to_le_bytes());
    buf.extend_from_slice(row);
    let rec = &mut buf[start..];
    let hcrc = header_crc(rec, HEADER_LEN_V2);
    let crc = crc32c::crc32c(&rec[16..]);
    rec[8..12].copy_from_slice(&hcrc.to_le_bytes());
    rec[12..16].copy_from_slice(&crc.to_le_bytes());
}

pub(super) struct Header {
    /// The header's own length (by version).
    pub(super) len: usize,
    pub(super) total: usize,
    pub(super) offset: Offset,
    pub(super) received_ms: u64,
    /// Records of the same push after this one; always 0 for version 1.
    pub(super) rest: u32,
}

pub(super) fn parse_header(b: &[u8]) -> Option<Header> {
    let len = match b.get(0..4)? {
        m if m == MAGIC_V2 => HEADER_LEN_V2,
        m if m == MAGIC_V1 => HEADER_LEN,
        _ => return None,
    };
    if b.len() < len || u32_at(b, 8) != header_crc(b, len) {
        return None;
    }
    Some(Header {
        len,
        total: len + u32_at(b, 4) as usize,
        offset: u64_at(b, 16),
        received_ms: u64_at(b, 24),
        rest: if len == HEADER_LEN_V2 {
            u32_at(b, 32)
        } else {
            0
        },
    })
}

/// `rec` is exactly one record.
pub(super) fn body_ok(rec: &[u8]) -> bool {
    u32_at(rec, 12) == crc32c::crc32c(&rec[16..])
}

/// What a reader finds at a position.
#[derive(Debug)]
pub(super) enum Item {
    Record {
        offset: Offset,
        received_ms: u64,
        /// Records of the same push after this one (0: the push ends here).
        rest: u32,
        row: Row,
        len: u64,
    },
    /// Bytes that are not a good record. `offset` is known when the header was intact.
    Corrupt {
        offset: Option<Offset>,
        len: u64,
        reason: &'static str,
        raw: Vec<u8>,
    },
}

impl Item {
    pub(super) fn len(&self) -> u64 {
        match self {
            Item::Record { len, .. } | Item::Corrupt { len, .. } => *len,
        }
    }

    pub(super) fn offset(&self) -> Option<Offset> {
        match self {
            Item::Record { offset, .. } => Some(*offset),
            Item::Corrupt { offset, .. } => *offset,
        }
    }

    pub(super) fn received_ms(&self) -> Option<u64> {
        match self {
            Item::Record { received_ms, .. } => Some(*received_ms),
            Item::Corrupt { .. } => None,
        }
    }
}

pub(super) enum Parsed {
    Item(Item),
    NeedMore,
}

pub(super) fn corrupt(offset: Option<Offset>, bytes: &[u8], reason: &'static str) -> Parsed {
    Parsed::Item(Item::Corrupt {
        offset,
        len: bytes.len() as u64,
        reason,
        raw: bytes.to_vec(),
    })
}

/// Reads the item at the start of `b` (non-empty). `at_eof`: `b` runs to the end of the data.
pub(super) fn parse_one(b: &[u8], at_eof: bool) -> Parsed {
    match parse_header(b) {
        Some(h) if b.len() >= h.total => {
            let rec = &b[..h.total];
            if !body_ok(rec) {
                return corrupt(Some(h.offset), rec, "checksum mismatch");
            }
            match Row::from_bytes(&rec[h.len..]) {
                Ok(row) => Parsed::Item(Item::Record {
                    offset: h.offset,
                    received_ms: h.received_ms,
                    rest: h.rest,
                    row,
                    len: h.total as u64,
                }),
                Err(_) => corrupt(Some(h.offset), rec, "row does not decode"),
            }
        }
        Some(h) if at_eof => corrupt(Some(h.offset), b, "truncated record"),
        Some(_) => Parsed::NeedMore,
        None => {
            let reason = if b.len() < HEADER_LEN {
                "truncated header"
            } else {
                "bad header"
            };
            match resync(b) {
                Some(q) => corrupt(None, &b[..q], reason),
                None if at_eof => corrupt(None, b, reason),
                None => Parsed::NeedMore,
            }
        }
    }
}

/// The first position after 0 where a whole, intact record starts.
pub(super) fn resync(b: &[u8]) -> Option<usize> {
    (1..b.len())
        .filter(|&q| b[q..].starts_with(&MAGIC_V2) || b[q..].starts_with(&MAGIC_V1))
        .find(|&q| {
            parse_header(&b[q..])
                .is_some_and(|h| b.len() - q >= h.total && body_ok(&b[q..q + h.total]))
        })
}

/// Reads items from a byte range of a segment file in chunks.
pub(super) struct SegmentReader {
    file: File,
    end: u64,
    buf: Vec<u8>,
    buf_pos: u64,
    at: usize,
}

impl SegmentReader {
    pub(super) fn open(path: &Path, start: u64, end: u64) -> io::Result<SegmentReader> {
        Ok(SegmentReader {
            file: File::open(path)?,
            end,
            buf: Vec::new(),
            buf_pos: start,
            at: 0,
        })
    }

    pub(super) fn pos(&self) -> u64 {
        self.buf_pos + self.at as u64
    }

    pub(super) fn next_item(&mut self) -> io::Result<Option<Item>> {
        loop {
            let loaded_end = self.buf_pos + self.buf.len() as u64;
            let at_eof = loaded_end >= self.end;
            let avail = &self.buf[self.at..];
            if avail.is_empty() {
                if at_eof {
                    return Ok(None);
                }
            } else {
                match parse_one(avail, at_eof) {
                    Parsed::Item(item) => {
                        self.at += item.len() as usize;
                        return Ok(Some(item));
                    }
                    // Cannot happen at the end of the data; stop rather than spin.
                    Parsed::NeedMore if at_eof => return Ok(None),
                    Parsed::NeedMore => {}
                }
            }
            self.buf.drain(..self.at);
            self.buf_pos += self.at as u64;
            self.at = 0;
            let start = self.buf_pos + self.buf.len() as u64;
            let want = READ_CHUNK.max(self.buf.len()) as u64;
            let n = (self.end - start).min(want) as usize;
            let old = self.buf.len();
            self.buf.resize(old + n, 0);
            self.file.read_exact_at(&mut self.buf[old..], start)?;
        }
    }
}

/// Reads the spans in order, handing each item and its position to `visit` until it breaks.
/// Returns where it broke. Segments deleted meanwhile are skipped.
pub(super) fn walk(
    dir: &Path,
    spans: &[Span],
    mut visit: impl FnMut(Pos, Item) -> ControlFlow<()>,
) -> io::Result<Option<Pos>> {
    for span in spans {
        if span.start >= span.end {
            continue;
        }
        let path = segment_path(dir, span.first);
        let mut reader = match SegmentReader::open(&path, span.start, span.end) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        loop {
            let pos = Pos {
                seg: span.first,
                at: reader.pos(),
            };
            let Some(item) = reader.next_item()? else {
                break;
            };
            if visit(pos, item).is_break() {
                return Ok(Some(pos));
            }
        }
    }
    Ok(None)
}
