//! The spool's small files (cursor, in-flight record, segment names) and [`FileOps`], the one
//! seam every write of the spool goes through, so tests can make the disk fail on purpose.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::format::{u32_at, u64_at};
use super::{CURSOR_FILE, CURSOR_MAGIC, IN_FLIGHT_FILE};
use crate::queue::{InFlight, Offset};

/// The file operations that change a spool on disk. [`RealFiles`] does them; tests put a
/// fault-injecting implementation in its place.
pub trait FileOps: Send + Sync + 'static {
    /// Creates (or empties) a segment file, open for reading and writing.
    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    /// Writes all of `buf` at byte `at`.
    fn write_at(&self, file: &File, buf: &[u8], at: u64) -> io::Result<()> {
        file.write_all_at(buf, at)
    }

    /// `fdatasync`.
    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    /// Cuts or extends the file to `len` bytes.
    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    /// fsyncs a directory, so that creates, renames and removals in it are durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    /// Replaces `dir/name` with `bytes`: write a temp file, fsync, rename, fsync the directory.
    fn replace(&self, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = dir.join(format!("{name}.tmp"));
        {
            let file = File::create(&tmp)?;
            file.write_all_at(bytes, 0)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, dir.join(name))?;
        self.sync_dir(dir)
    }

    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
}

/// The file system itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFiles;

impl FileOps for RealFiles {}

pub(super) fn segment_path(dir: &Path, first: Offset) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

pub(super) fn parse_segment_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn encode_cursor(cursor: Offset) -> [u8; 16] {
    let mut b = [0; 16];
    b[0..4].copy_from_slice(&CURSOR_MAGIC);
    b[8..16].copy_from_slice(&cursor.to_le_bytes());
    let crc = crc32c::crc32c(&b[8..16]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The cursor, or `None` when the file is missing or damaged.
pub(super) fn read_cursor(dir: &Path) -> io::Result<Option<Offset>> {
    let b = match fs::read(dir.join(CURSOR_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if b.len() == 16 && b[0..4] == CURSOR_MAGIC && u32_at(&b, 4) == crc32c::crc32c(&b[8..16]) {
        Ok(Some(u64_at(&b, 8)))
    } else {
        warn!(dir = %dir.display(), "spool cursor file is damaged");
        Ok(None)
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct InFlightFile {
    pub(super) first: Offset,
    pub(super) last: Offset,
    pub(super) job_id: Option<String>,
}

pub(super) fn read_in_flight(dir: &Path) -> io::Result<Option<InFlight>> {
    let b = match fs::read(dir.join(IN_FLIGHT_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match serde_json::from_slice::<InFlightFile>(&b) {
        Ok(f) => Ok(Some(InFlight {
            first: f.first,
            last: f.last,
            job_id: f.job_id,
        })),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "spool in-flight file is damaged");
            Ok(None)
        }
    }
}
