//! The spool's writer thread: group commit. It takes every push waiting in its channel,
//! appends them all to the active segment, syncs once and then answers every waiter.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::SystemTime;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn};

use super::files::segment_path;
use super::format::encode_record;
use super::{SegmentInfo, Shared};
use crate::queue::{Offset, PushError};
use crate::row::Row;

pub(super) enum Request {
    Push(PushRequest),
    Sync(oneshot::Sender<io::Result<()>>),
}

/// Where a push's outcome goes.
pub(super) type Reply = oneshot::Sender<Result<(), PushError>>;

pub(super) struct PushRequest {
    pub(super) rows: Vec<Row>,
    pub(super) received_ms: u64,
    pub(super) bytes: u64,
    pub(super) reply: Reply,
}

/// Pushes encoded into one buffer, written and synced together.
struct Group {
    buf: Vec<u8>,
    waiters: Vec<(Reply, u64, u64)>,
    rows: u64,
    bytes: u64,
    first_ms: Option<u64>,
    start_next: Offset,
}

impl Group {
    fn new(start_next: Offset) -> Group {
        Group {
            buf: Vec::new(),
            waiters: Vec::new(),
            rows: 0,
            bytes: 0,
            first_ms: None,
            start_next,
        }
    }
}

pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) file: File,
    pub(super) seg_first: Offset,
    /// Durable length of the active segment.
    pub(super) len: u64,
    /// Offset of the next record to encode.
    pub(super) next: Offset,
    /// A failed write could not be truncated away; nothing is written until it is.
    pub(super) dirty: bool,
}

impl Writer {
    pub(super) fn run(mut self, requests: mpsc::Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            let mut batch = vec![first];
            batch.extend(requests.try_iter());
            let mut group = Group::new(self.next);
            for request in batch {
                match request {
                    Request::Push(push) => self.add(&mut group, push),
                    Request::Sync(reply) => {
                        self.flush(&mut group);
                        let result = self
                            .timed_sync()
                            .and_then(|()| self.shared.fs.sync_dir(&self.shared.dir));
                        let _ = reply.send(result);
                    }
                }
            }
            self.flush(&mut group);
        }
    }

    fn add(&mut self, group: &mut Group, push: PushRequest) {
        if self.dirty {
            self.flush(group);
            if let Err(e) = self.repair() {
                return self.refuse(push, PushError::Unavailable(e.to_string()));
            }
        }
        let pending = self.len + group.buf.len() as u64;
        if pending > 0 && pending + push.bytes > self.shared.segment_bytes {
            self.flush(group);
            if self.len > 0
                && let Err(e) = self.roll()
            {
                self.shared.warn_unavailable(&e);
                return self.refuse(push, PushError::Unavailable(e.to_string()));
            }
        }
        if !self.fits(group.buf.len() as u64 + push.bytes) {
            self.flush(group);
            if !self.make_room(push.bytes) {
                let queued = self.shared.lock().queued_bytes;
                let err = PushError::FullBytes {
                    queued,
                    capacity: self.shared.max_bytes,
                    incoming: push.bytes,
                };
                return self.refuse(push, err);
            }
        }
        // `push` refuses more than u32::MAX rows' worth of bytes long before this count.
        let count = push.rows.len() as u32;
        for (i, row) in push.rows.iter().enumerate() {
            let rest = count - 1 - i as u32;
            encode_record(
                &mut group.buf,
                self.next,
                push.received_ms,
                rest,
                row.as_bytes(),
            );
            self.next += 1;
        }
        let rows = push.rows.len() as u64;
        group.rows += rows;
        group.bytes += push.bytes;
        group.first_ms.get_or_insert(push.received_ms);
        group.waiters.push((push.reply, rows, push.bytes));
    }

    fn refuse(&self, push: PushRequest, err: PushError) {
        self.shared.release(push.rows.len() as u64, push.bytes);
        let _ = push.reply.send(Err(err));
    }

    fn fits(&self, bytes: u64) -> bool {
        self.shared.lock().disk_bytes + bytes <= self.shared.max_bytes
    }

    /// Deletes committed segments early to fit `bytes`; rolls a fully committed active
    /// segment first if that is what it takes.
    fn make_room(&mut self, bytes: u64) -> bool {
        self.shared.drop_old_segments(Some(bytes));
        if self.fits(bytes) {
            return true;
        }
        let all_committed = self.shared.lock().cursor >= self.next;
        if all_committed && self.len > 0 {
            match self.roll() {
                Ok(()) => self.shared.drop_old_segments(Some(bytes)),
                Err(e) => self.shared.warn_unavailable(&e),
            }
        }
        self.fits(bytes)
    }

    /// Writes and syncs the group, then answers its waiters.
    fn flush(&mut self, group: &mut Group) {
        if group.waiters.is_empty() {
            return;
        }
        let g = std::mem::replace(group, Group::new(self.next));
        match self.write_and_sync(&g.buf) {
            Ok(()) => {
                self.len += g.buf.len() as u64;
                {
                    let mut st = self.shared.lock();
                    if let Some(seg) = st.segments.back_mut() {
                        seg.len = self.len;
                        seg.modified = SystemTime::now();
                    }
                    st.disk_bytes += g.buf.len() as u64;
                    st.next_offset = self.next;
                    st.queued_rows += g.rows;
                    st.queued_bytes += g.bytes;
                    st.reserved_rows = st.reserved_rows.saturating_sub(g.rows);
                    st.reserved_bytes = st.reserved_bytes.saturating_sub(g.bytes);
                    if st.oldest_ms.is_none() {
                        st.oldest_ms = g.first_ms;
                    }
                }
                for (reply, _, _) in g.waiters {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                self.shared.warn_unavailable(&e);
                self.next = g.start_next;
                if let Err(e) = self.repair() {
                    self.dirty = true;
                    self.shared.warn_unavailable(&e);
                }
                for (reply, rows, bytes) in g.waiters {
                    self.shared.release(rows, bytes);
                    let _ = reply.send(Err(PushError::Unavailable(e.to_string())));
                }
            }
        }
        *group = Group::new(self.next);
    }

    fn write_and_sync(&mut self, buf: &[u8]) -> io::Result<()> {
        self.shared.fs.write_at(&self.file, buf, self.len)?;
        self.timed_sync()
    }

    fn timed_sync(&self) -> io::Result<()> {
        let started = Instant::now();
        self.shared.fs.sync_data(&self.file)?;
        let us = started.elapsed().as_micros() as u64;
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.shared.fsync_last_us.store(us, Ordering::Relaxed);
        self.shared.fsync_total_us.fetch_add(us, Ordering::Relaxed);
        Ok(())
    }

    /// Cuts the active segment back to its last good record, so a failed write never shows.
    fn repair(&mut self) -> io::Result<()> {
        self.shared.fs.set_len(&self.file, self.len)?;
        self.shared.fs.sync_data(&self.file)?;
        self.dirty = false;
        Ok(())
    }

    /// Starts a new segment at the next offset.
    fn roll(&mut self) -> io::Result<()> {
        let first = self.next;
        let path = segment_path(&self.shared.dir, first);
        // No record at or after `first` exists anywhere, so a leftover file of that name
        // (from a roll whose directory sync failed) holds nothing and may be emptied.
        let file = self.shared.fs.create(&path)?;
        if let Err(e) = self.shared.fs.sync_dir(&self.shared.dir) {
            // Writing goes on in the old segment, so an empty segment named after an offset it
            // is about to hold must not stay behind (recovery also deletes empty segments).
            drop(file);
            if let Err(remove) = self.shared.fs.remove(&path) {
                warn!(segment = first, error = %remove, "spool segment removal after a failed roll failed");
            }
            return Err(e);
        }
        {
            let now = SystemTime::now();
            let mut st = self.shared.lock();
            if let Some(last) = st.segments.back_mut() {
                last.modified = now;
            }
            st.segments.push_back(SegmentInfo {
                first,
                len: 0,
                modified: now,
            });
        }
        self.file = file;
        self.seg_first = first;
        self.len = 0;
        info!(segment = self.seg_first, "spool segment started");
        self.shared.drop_old_segments(None);
        Ok(())
    }
}
