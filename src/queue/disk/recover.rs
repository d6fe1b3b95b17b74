//! Recovery on open: reading every segment from the cursor on, truncating a torn tail and
//! quarantining corrupt records (see the parent module for the rules).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::SystemTime;

use tracing::{info, warn};

use super::files::{
    FileOps, encode_cursor, parse_segment_name, read_cursor, read_in_flight, segment_path,
};
use super::format::{Item, SegmentReader, encode_record};
use super::{
    CURSOR_FILE, DiskSpoolConfig, IN_FLIGHT_FILE, LOCK_FILE, Pos, QUARANTINE_FILE, RecoveryReport,
    SegmentInfo, SpoolError, State,
};
use crate::queue::{Offset, now_ms};
pub(super) struct Recovered {
    pub(super) state: State,
    pub(super) active: File,
    pub(super) report: RecoveryReport,
    /// Held open while the spool is: the exclusive lock on `dir/lock`.
    pub(super) lock: File,
}

/// Takes the exclusive lock on `dir/lock`, so one process at a time opens the spool. The
/// lock is an `flock`: it goes when the file is closed or the process dies.
fn lock_spool(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| SpoolError::Io {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SpoolError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(SpoolError::Io { path, source }),
    }
}

/// A damaged stretch of a segment.
struct Bad {
    pos: u64,
    len: u64,
    /// Exact when the header was intact.
    offset: Option<Offset>,
    /// For a damaged header: the offsets it may have held (first, last if known).
    guess: Option<(Offset, Option<Offset>)>,
    reason: &'static str,
    raw: Vec<u8>,
}

#[derive(Default)]
struct Scan {
    len: u64,
    /// End of the last good record that ends its push: a torn tail is cut back to here, so a
    /// push whose last records never reached the disk is dropped whole.
    push_end: u64,
    /// End of the last good record before the cursor.
    committed_end: u64,
    last_offset: Option<Offset>,
    bad: Vec<Bad>,
    queued_rows: u64,
    queued_bytes: u64,
    first_queued: Option<(u64, u64)>,
}

fn scan_segment(path: &Path, cursor: Offset, min_offset: Offset) -> io::Result<Scan> {
    let len = std::fs::metadata(path)?.len();
    let mut reader = SegmentReader::open(path, 0, len)?;
    let mut s = Scan {
        len,
        ..Scan::default()
    };
    let mut next_min = min_offset;
    let mut open_guesses = Vec::new();
    loop {
        let pos = reader.pos();
        let Some(item) = reader.next_item()? else {
            break;
        };
        match item {
            Item::Record {
                offset,
                received_ms,
                rest,
                len,
                ..
            } if offset >= next_min => {
                for i in open_guesses.drain(..) {
                    if let Some(Bad {
                        guess: Some((_, hi)),
                        ..
                    }) = s.bad.get_mut(i)
                    {
                        *hi = offset.checked_sub(1);
                    }
                }
                next_min = offset + 1;
                s.last_offset = Some(offset);
                if rest == 0 {
                    s.push_end = pos + len;
                }
                if offset < cursor {
                    s.committed_end = pos + len;
                } else {
                    s.queued_rows += 1;
                    s.queued_bytes += len;
                    s.first_queued.get_or_insert((pos, received_ms));
                }
            }
            Item::Record {
                offset,
                received_ms,
                rest,
                row,
                len,
            } => {
                let mut raw = Vec::new();
                encode_record(&mut raw, offset, received_ms, rest, row.as_bytes());
                s.bad.push(Bad {
                    pos,
                    len,
                    offset: Some(offset),
                    guess: None,
                    reason: "offset out of order",
                    raw,
                });
            }
            Item::Corrupt {
                offset,
                len,
                reason,
                raw,
            } => {
                let guess = match offset {
                    Some(_) => None,
                    None => {
                        open_guesses.push(s.bad.len());
                        Some((next_min, None))
                    }
                };
                s.bad.push(Bad {
                    pos,
                    len,
                    offset,
                    guess,
                    reason,
                    raw,
                });
            }
        }
    }
    Ok(s)
}

/// Truncates a torn tail and quarantines corrupt records. Returns whether it changed the
/// segment (so it must be scanned again).
fn fix_segment(
    fs: &dyn FileOps,
    dir: &Path,
    path: &Path,
    scan: &Scan,
    cursor: Offset,
    is_last: bool,
    report: &mut RecoveryReport,
) -> io::Result<bool> {
    let tail_from = if is_last { scan.push_end } else { scan.len };
    let quarantine: Vec<&Bad> = scan
        .bad
        .iter()
        .filter(|b| b.pos < tail_from)
        .filter(|b| match b.offset {
            Some(o) => o >= cursor,
            None => b.pos >= scan.committed_end,
        })
        .collect();
    let truncate = is_last && scan.len > scan.push_end;
    if quarantine.is_empty() && !truncate {
        return Ok(false);
    }
    if truncate {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(scan.push_end)?;
        file.sync_all()?;
        let bytes = scan.len - scan.push_end;
        report.truncated_bytes += bytes;
        warn!(segment = %path.display(), bytes, "spool torn tail truncated");
    }
    if !quarantine.is_empty() {
        append_quarantine(dir, path, &quarantine)?;
        rewrite_without(path, &quarantine)?;
        fs.sync_dir(dir)?;
        for b in &quarantine {
            warn!(segment = %path.display(), position = b.pos, offset = ?b.offset, reason = b.reason, "spool record quarantined");
        }
        report.quarantined += quarantine.len() as u64;
    }
    Ok(true)
}

fn append_quarantine(dir: &Path, segment: &Path, bad: &[&Bad]) -> io::Result<()> {
    let name = segment
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut text = String::new();
    for b in bad {
        let offset = match (b.offset, b.guess) {
            (Some(o), _) => o.to_string(),
            (None, Some((lo, Some(hi)))) if hi >= lo => format!("unknown({lo}-{hi})"),
            _ => "unknown".to_owned(),
        };
        let _ = write!(
            text,
            "time_ms={} segment={name} position={} offset={offset} reason=\"{}\" len={} hex=",
            now_ms(),
            b.pos,
            b.reason,
            b.len
        );
        for byte in &b.raw {
            let _ = write!(text, "{byte:02x}");
        }
        text.push('\n');
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(QUARANTINE_FILE))?;
    io::Write::write_all(&mut file, text.as_bytes())?;
    file.sync_all()
}

/// Rewrites the segment without the given (sorted, disjoint) stretches.
fn rewrite_without(path: &Path, bad: &[&Bad]) -> io::Result<()> {
    let tmp = path.with_extension("seg.tmp");
    let mut src = File::open(path)?;
    let len = src.metadata()?.len();
    let mut dst = File::create(&tmp)?;
    let mut at = 0;
    let mut copy = |src: &mut File, from: u64, to: u64| -> io::Result<()> {
        if to > from {
            src.seek(SeekFrom::Start(from))?;
            io::copy(&mut Read::take(&mut *src, to - from), &mut dst)?;
        }
        Ok(())
    };
    for b in bad {
        copy(&mut src, at, b.pos)?;
        at = b.pos + b.len;
    }
    copy(&mut src, at, len)?;
    dst.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub(super) fn recover(cfg: &DiskSpoolConfig, fs: &dyn FileOps) -> Result<Recovered, SpoolError> {
    let dir = cfg.dir.as_path();
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SpoolError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(at(dir))?;
    let lock = lock_spool(dir)?;
    let mut firsts = Vec::new();
    let mut removed_empty = false;
    for entry in std::fs::read_dir(dir).map_err(at(dir))? {
        let entry = entry.map_err(at(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.ends_with(".tmp") {
            std::fs::remove_file(entry.path()).map_err(at(&entry.path()))?;
        } else if let Some(first) = parse_segment_name(name) {
            let path = entry.path();
            if std::fs::metadata(&path).map_err(at(&path))?.len() == 0 {
                // Holds no record, so it bounds nothing: a roll whose directory sync failed
                // can leave one named after an offset the previous segment went on to hold.
                fs.remove(&path).map_err(at(&path))?;
                removed_empty = true;
            } else {
                firsts.push(first);
            }
        }
    }
    if removed_empty {
        fs.sync_dir(dir).map_err(at(dir))?;
    }
    firsts.sort_unstable();

    let mut report = RecoveryReport::default();
    let cursor_file = read_cursor(dir).map_err(at(&dir.join(CURSOR_FILE)))?;
    let cursor = match cursor_file {
        Some(c) => c,
        None => {
            let oldest = firsts.first().copied().unwrap_or(0);
            if !firsts.is_empty() {
                report.cursor_missing = true;
                warn!(dir = %dir.display(), from = oldest, "spool cursor missing, delivering from the oldest retained row");
            }
            oldest
        }
    };

    let mut segments = VecDeque::new();
    for &first in &firsts {
        let path = segment_path(dir, first);
        let meta = std::fs::metadata(&path).map_err(at(&path))?;
        segments.push_back(SegmentInfo {
            first,
            len: meta.len(),
            modified: meta.modified().unwrap_or_else(|_| SystemTime::now()),
        });
    }

    let start = firsts.iter().rposition(|&f| f <= cursor).unwrap_or(0);
    let mut read_pos = None;
    let (mut queued_rows, mut queued_bytes, mut oldest_ms) = (0, 0, None);
    let mut min_next = firsts.get(start).copied().unwrap_or(0);
    let count = segments.len();
    for (i, segment) in segments.iter_mut().enumerate().skip(start) {
        let first = segment.first;
        let path = segment_path(dir, first);
        let is_last = i + 1 == count;
        let mut scan = scan_segment(&path, cursor, min_next.max(first)).map_err(at(&path))?;
        for _ in 0..3 {
            if !fix_segment(fs, dir, &path, &scan, cursor, is_last, &mut report)
                .map_err(at(&path))?
            {
                break;
            }
            scan = scan_segment(&path, cursor, min_next.max(first)).map_err(at(&path))?;
        }
        segment.len = scan.len;
        if let Some(o) = scan.last_offset {
            min_next = o + 1;
        }
        queued_rows += scan.queued_rows;
        queued_bytes += scan.queued_bytes;
        if read_pos.is_none()
            && let Some((at, ms)) = scan.first_queued
        {
            read_pos = Some(Pos { seg: first, at });
            oldest_ms = Some(ms);
        }
    }
    let last_first = segments.back().map_or(0, |s| s.first);
    let next_offset = cursor.max(min_next).max(last_first);

    if segments.is_empty() {
        let path = segment_path(dir, next_offset);
        File::create(&path).map_err(at(&path))?;
        fs.sync_dir(dir).map_err(at(dir))?;
        segments.push_back(SegmentInfo {
            first: next_offset,
            len: 0,
            modified: SystemTime::now(),
        });
    }
    if cursor_file != Some(cursor) {
        fs.replace(dir, CURSOR_FILE, &encode_cursor(cursor))
            .map_err(at(dir))?;
    }
    let in_flight = read_in_flight(dir).map_err(at(&dir.join(IN_FLIGHT_FILE)))?;
    let active_path = segment_path(dir, segments.back().map_or(next_offset, |s| s.first));
    let active = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&active_path)
        .map_err(at(&active_path))?;

    let mut state = State {
        disk_bytes: segments.iter().map(|s| s.len).sum(),
        segments,
        cursor,
        persisted_cursor: cursor,
        read_pos: Pos { seg: 0, at: 0 },
        next_offset,
        queued_rows,
        queued_bytes,
        reserved_rows: 0,
        reserved_bytes: 0,
        oldest_ms,
        in_flight,
        pin: None,
    };
    state.read_pos = read_pos.unwrap_or_else(|| state.end_pos());
    report.segments = state.segments.len();
    report.queued_rows = queued_rows;
    report.cursor = cursor;
    report.next_offset = next_offset;
    info!(
        dir = %dir.display(),
        segments = report.segments,
        queued = queued_rows,
        quarantined = report.quarantined,
        truncated_bytes = report.truncated_bytes,
        "spool opened"
    );
    Ok(Recovered {
        state,
        active,
        report,
        lock,
    })
}
