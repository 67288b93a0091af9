//! The mapped pages of strided PyTorch views (a transposed weight), dropped a
//! view at a time.
//!
//! The stream drops the pages of each chunk's byte range once the chunk is done,
//! which covers a contiguous tensor. A chunk of a transposed matrix is a few of its
//! rows, which read a few elements from every column of its storage: its pages
//! are all over the storage, and dropping them after each chunk would fault the
//! whole storage back in for the next one. So they stay mapped while the view is
//! read and are dropped when its last element has been gathered, or when a chunk
//! of another view of the same file is (chunks come in order, so a view whose
//! last chunk ran on another worker is over by then). Memory: the storages of the
//! one or two views being read, not the model.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::engine::mapped::{self, Mapping};
use crate::torch::StateDict;

/// No view read yet.
const NONE: usize = usize::MAX;

/// The strided view of one file read last.
#[derive(Debug)]
pub(crate) struct StridedPages {
    last: AtomicUsize,
}

impl Default for StridedPages {
    fn default() -> Self {
        StridedPages { last: AtomicUsize::new(NONE) }
    }
}

impl StridedPages {
    /// Elements `first..first + count` (row-major) of view `view` of `state`,
    /// whose file is mapped as `file` ([`StateDict::gather`]), dropping the
    /// pages of views that are done.
    pub(crate) fn gather(
        &self,
        state: &StateDict,
        view: usize,
        file: &Mapping,
        first: usize,
        count: usize,
    ) -> Vec<u8> {
        let previous = self.last.swap(view, Ordering::AcqRel);
        if previous != view && previous != NONE {
            release(state, previous, file);
        }
        let tensor = &state.tensors()[view];
        let bytes = state.gather(tensor, file, first, count);
        if first + count == tensor.numel() {
            release(state, view, file);
        }
        bytes
    }
}

/// Drops the mapped pages of view `view`'s storage.
fn release(state: &StateDict, view: usize, file: &Mapping) {
    let storage = state.storage_of(&state.tensors()[view]).range();
    mapped::release(file, storage.start, storage.end);
}
