//! Read-only memory maps of input shards: the one place the engine maps a file.
//!
//! Mapping instead of reading keeps anonymous memory independent of the model: the
//! pages belong to the page cache, are shared between runs and processes, and can be
//! dropped from this process as soon as a chunk has been consumed ([`release`]).

use std::fs::File;
use std::path::Path;

use memmap2::{Advice, Mmap, UncheckedAdvice};

use crate::error::{Error, Result};

/// Maps `path` read-only and hints the kernel that it will be read front to back.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(Error::io("open", path))?;
    // SAFETY: the mapping is shared and read-only (PROT_READ, MAP_SHARED); the
    // engine never hands out a mutable reference into it. The one risk that Rust
    // cannot rule out is another process truncating or rewriting the file while it
    // is mapped (reads would then see new bytes or fault with SIGBUS). That risk is
    // accepted here, once, as every mmap-based safetensors reader accepts it:
    // checkpoints are inputs the user promises not to modify during a merge, and the
    // engine re-validates nothing after this point except through bounds-checked
    // slicing of the mapping.
    let map = unsafe { Mmap::map(&file) }.map_err(Error::io("map", path))?;
    // Readahead is only a hint; a kernel that refuses it changes nothing.
    let _ = map.advise(Advice::Sequential);
    Ok(map)
}

/// Tells the kernel this process no longer needs the pages wholly inside
/// `map[start..end]`, so resident memory does not grow with the model. The page
/// cache keeps them (clean and reclaimable), so a later run still finds them warm.
pub(crate) fn release(map: &Mmap, start: usize, end: usize) {
    let page = page_size();
    let first = start.div_ceil(page) * page;
    let last = end.min(map.len()) / page * page;
    if last <= first {
        return;
    }
    // SAFETY: `MADV_DONTNEED` on a shared, read-only file mapping only drops this
    // process's page-table entries; the next access faults the same file bytes back
    // in from the page cache. No Rust reference can observe different contents, so
    // slices borrowed from the mapping (even by other threads, even overlapping this
    // range) stay valid. The range is page-aligned and inside the mapping.
    let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, first, last - first) };
}

fn page_size() -> usize {
    // The x86-64 page. Where the kernel's page is larger (some arm64 kernels use
    // 64 KiB) it rejects starts that are not aligned to it, the hint is skipped, and
    // only the memory saving is lost.
    4096
}
