//! PyTorch storages are checked against their CRC-32 when a pass first reads
//! them, not when the file is opened: a cold file comes from the disk once, and a
//! corrupt storage still fails every command that uses it, before anything is
//! written or evaluated.

mod common;

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::Path;

use common::torch_file::torch_file;
use common::{s, soup_err, soup_ok, tempdir};
use modelsoup::Checkpoint;

/// Fraction of the file's pages that are in the page cache.
fn resident(path: &Path) -> f64 {
    let file = File::open(path).unwrap();
    // SAFETY: a read-only shared mapping of a file this test wrote and nobody
    // changes while it is mapped; its bytes are never read here, only asked about.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let page = 4096;
    let mut pages = vec![0u8; map.len().div_ceil(page)];
    // SAFETY: the range is the whole mapping, starting at its page-aligned start,
    // and `pages` holds one byte per page of it, as mincore(2) writes.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), pages.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    pages.iter().filter(|&&p| p & 1 == 1).count() as f64 / pages.len() as f64
}

/// Drops the file's pages from the page cache (written back first: only clean
/// pages can be dropped).
fn evict(path: &Path) {
    let file = File::open(path).unwrap();
    file.sync_all().unwrap();
    // SAFETY: advice on an open descriptor; no memory is involved.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

/// A 64 MiB `pytorch_model.bin`: one f32 storage viewed as a 4096 × 4096 matrix.
fn big_file(path: &Path) {
    fs::write(path, torch_file(&["w"], 1 << 24, &[4096, 4096], &[4096, 1])).unwrap();
}

#[test]
fn opening_a_pytorch_file_reads_its_directory_and_pickle_not_its_storages() {
    let dir = tempdir();
    let path = dir.path().join("pytorch_model.bin");
    big_file(&path);
    evict(&path);
    let cold = resident(&path);
    assert!(cold < 0.05, "the file could not be dropped from the page cache ({cold:.2} left)");
    let checkpoint = Checkpoint::open(&path).unwrap();
    let opened = resident(&path);
    assert!(opened < 0.25, "opening read {:.0} % of the file", opened * 100.0);
    // Checking it whole reads all of it (and so would the first pass over it).
    checkpoint.verify().unwrap();
    let verified = resident(&path);
    assert!(verified > 0.95, "verify read only {:.0} % of the file", verified * 100.0);
}

#[test]
fn a_corrupt_storage_fails_every_command_that_reads_it_with_nothing_written() {
    let dir = tempdir();
    let (good, bad) = (dir.path().join("good"), dir.path().join("bad"));
    fs::create_dir(&good).unwrap();
    fs::create_dir(&bad).unwrap();
    let bytes = torch_file(&["w"], 3 * 1024, &[3, 1024], &[1024, 1]);
    fs::write(good.join("pytorch_model.bin"), &bytes).unwrap();
    // Element 1000 of the storage (the value 1000.0) loses a bit.
    let value = 1000f32.to_le_bytes();
    let at = bytes.windows(4).position(|w| w == value).expect("stored uncompressed");
    let mut corrupt = bytes.clone();
    corrupt[at + 2] ^= 0x01;
    fs::write(bad.join("pytorch_model.bin"), &corrupt).unwrap();
    // Opening does not read the storage, so the file opens; every pass that
    // reads it fails.
    Checkpoint::open(&bad).unwrap();

    let said = |err: &str| {
        err.contains("bad/pytorch_model.bin")
            && err.contains("entry archive/data/0 is corrupt")
            && err.contains("CRC-32")
    };
    let out = dir.path().join("out");
    for args in [
        vec!["merge", s(&good), s(&bad), "-o", s(&out)],
        vec!["merge", s(&bad), s(&good), "-o", s(&out), "--threads", "1"],
        vec!["convert", s(&bad), "-o", s(&out)],
        vec!["angles", s(&good), s(&bad), s(&good)],
        vec!["inspect", s(&bad)],
        vec!["inspect", s(&bad), "--check-values"],
    ] {
        let err = soup_err(&args);
        assert!(said(&err), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote an output");
    }
    let leftovers: Vec<_> =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "staging left behind: {leftovers:?}");

    // A search checks its ingredients before the first evaluation.
    let marker = dir.path().join("evaluated");
    let eval = format!("touch {}; echo 1", s(&marker));
    let run_dir = dir.path().join("run");
    let args = ["greedy", s(&good), s(&bad), "-o", s(&out), "--run-dir", s(&run_dir), "--eval"];
    let err = soup_err(&[&args[..], &[eval.as_str()]].concat());
    assert!(said(&err), "{err}");
    assert!(!marker.exists(), "an evaluation ran before the corrupt file was found");

    // The intact file still merges.
    soup_ok(&["merge", s(&good), s(&good), "-o", s(&out), "--quiet"]);
}
