//! Writing a durable soup back to disk while it is computed, so that the final
//! `fsync` has little left to do: a merge then costs about the larger of its
//! computing and its disk writing, not their sum.
//!
//! The workers finish chunks in output order, shard by shard (the plan lays
//! each shard's tensors out back to back), so the finished part of the output
//! is a prefix of the shard being written. Every [`STEP`] bytes of that prefix,
//! writeback of the new part is started (`sync_file_range(2)` with
//! `SYNC_FILE_RANGE_WRITE`, which returns at once); once more than [`BOUND`]
//! bytes are being written back, the oldest are waited for (`WAIT_BEFORE |
//! WRITE | WAIT_AFTER`), which holds the workers back to the disk's pace and
//! keeps the dirty pages of the output below `BOUND`. This only orders work
//! that the final `fsync` would do anyway; it changes no byte.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Bytes of finished output per writeback request.
pub const STEP: u64 = 8 << 20;

/// Most bytes of output whose writeback is started but not waited for.
pub const BOUND: u64 = 64 << 20;

/// Writeback progress of one shard file.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// Every byte before this offset is written by the workers.
    done: u64,
    /// Writeback was started for every byte before this offset.
    started: u64,
    /// Writeback was waited for before this offset.
    waited: u64,
}

/// Starts and bounds the writeback of the shard files as their prefixes are
/// finished.
#[derive(Debug)]
pub struct Writeback<'a> {
    files: &'a [File],
    shards: Vec<Progress>,
}

impl<'a> Writeback<'a> {
    /// Writeback of `files`, each written from its start (after `headers[i]`
    /// bytes, which are already written).
    pub fn new(files: &'a [File], headers: &[u64]) -> Self {
        let shards = headers.iter().map(|&h| Progress { done: h, started: 0, waited: 0 }).collect();
        Writeback { files, shards }
    }

    /// Records that shard `shard` is finished up to byte `end`, and starts or
    /// waits for writeback as the module describes. Errors are ignored: the
    /// final `fsync` reports any failure to write.
    pub fn finished(&mut self, shard: usize, end: u64) {
        let (Some(p), Some(file)) = (self.shards.get_mut(shard), self.files.get(shard)) else {
            return;
        };
        p.done = p.done.max(end);
        if p.done - p.started < STEP {
            return;
        }
        sync_range(file, p.started, p.done - p.started, libc::SYNC_FILE_RANGE_WRITE);
        p.started = p.done;
        if p.started - p.waited > BOUND {
            let until = p.started - BOUND / 2;
            let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            sync_range(file, p.waited, until - p.waited, wait);
            p.waited = until;
        }
    }
}

/// `sync_file_range(2)` on `len` bytes of `file` from `start`.
fn sync_range(file: &File, start: u64, len: u64, flags: libc::c_uint) {
    let (Ok(start), Ok(len)) = (i64::try_from(start), i64::try_from(len)) else { return };
    // SAFETY: the call takes a file descriptor, two integers and flags, and
    // touches no memory of ours; `file` owns the descriptor for the duration.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), start, len, flags) };
}
