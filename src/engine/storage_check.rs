//! PyTorch storages checked against their CRC-32 when a pass first reads them, not
//! when the file is opened.
//!
//! Checked at open, a whole `.bin` file would be read before a merge began and
//! again while it ran: a cold file larger than the page cache would come from the
//! disk twice. Instead the first read of any byte of a storage (a tensor's bytes
//! live in one storage) checks that whole storage first, a 4 MiB window at a time with
//! each window's pages dropped after it, so the reads that follow find it in the
//! page cache and the disk delivers each storage once. A worker that reads a
//! storage another is checking waits for that check (a [`OnceLock`]).
//!
//! A storage whose bytes do not match is an input that cannot be trusted, like a
//! truncated one: its check moves the counter every pass's workers watch after each
//! chunk (`mapped::note_damage`), and [`StorageChecks::failure`] turns it into the
//! pass's error, so no result built from it is ever committed. Reads that only
//! inform a warning (the shared-init check's samples) skip the check.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::engine::mapped::{self, Mapping};
use crate::error::Error;
use crate::torch::{StateDict, TorchError};

/// Which storages of one PyTorch file have been checked, and what was found.
#[derive(Debug)]
pub(crate) struct StorageChecks {
    /// Each storage's first byte in the file, with its index, in file order.
    starts: Vec<(usize, usize)>,
    /// Per storage, once checked: `None` if it matched, else the CRC-32 found.
    found: Box<[OnceLock<Option<u32>>]>,
    /// Whether some storage failed its check.
    failed: AtomicBool,
}

impl StorageChecks {
    /// Nothing checked yet, for the storages of `state`.
    pub(crate) fn new(state: &StateDict) -> Self {
        let mut starts: Vec<(usize, usize)> =
            state.storages().iter().enumerate().map(|(i, s)| (s.offset(), i)).collect();
        starts.sort_unstable();
        let found = state.storages().iter().map(|_| OnceLock::new()).collect();
        StorageChecks { starts, found, failed: AtomicBool::new(false) }
    }

    /// Checks the storage that holds byte `at` of the file (`map`, read as
    /// `state`), unless it has been checked already.
    pub(crate) fn ensure(&self, state: &StateDict, map: &Mapping, at: usize) {
        // The last storage starting at or before `at`: storages are disjoint
        // entries of the archive, and every tensor's bytes lie inside its own.
        let Some(&(_, index)) = self.starts[..self.starts.partition_point(|s| s.0 <= at)].last()
        else {
            return;
        };
        self.check(state, map, index);
    }

    /// Checks every storage not checked yet.
    pub(crate) fn ensure_all(&self, state: &StateDict, map: &Mapping) {
        for index in 0..self.found.len() {
            self.check(state, map, index);
        }
    }

    fn check(&self, state: &StateDict, map: &Mapping, index: usize) {
        self.found[index].get_or_init(|| {
            let mut release = |r: std::ops::Range<usize>| mapped::release(map, r.start, r.end);
            let actual = state.storage_crc32(index, map, &mut release);
            (actual != state.storages()[index].crc32()).then(|| {
                self.failed.store(true, Ordering::Release);
                mapped::note_damage();
                actual
            })
        });
    }

    /// The error for the first storage (in file order) found not to match its
    /// CRC-32, if any.
    pub(crate) fn failure(&self, state: &StateDict, path: &Path) -> Option<Error> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.starts.iter().find_map(|&(_, index)| {
            let actual = (*self.found[index].get()?)?;
            let storage = &state.storages()[index];
            Some(Error::Torch(TorchError::Crc {
                path: path.to_path_buf(),
                entry: storage.entry().to_owned(),
                expected: storage.crc32(),
                actual,
            }))
        })
    }
}
