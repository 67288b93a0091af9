//! Read-only memory maps of input files: the one place the engine maps a file, and
//! the one place that deals with a mapped file changing underneath.
//!
//! Mapping instead of reading keeps anonymous memory independent of the model: the
//! pages belong to the page cache, are shared between runs and processes, and can be
//! dropped from this process as soon as a chunk has been consumed ([`release`]).
//!
//! The price of mapping is what happens when another process truncates a file
//! while it is mapped: a load from a page past the new end of the file raises
//! `SIGBUS`, whose default action kills the process on the spot (exit 135, no
//! message, the staging directory left behind). So every mapping is registered in a
//! fixed table that a `SIGBUS` handler can read without locks; when the faulting
//! address lies inside one of them, the handler maps a page of zeros over the
//! faulting page (`mmap(MAP_FIXED | MAP_ANONYMOUS)`, a plain system call), marks
//! the mapping as damaged and returns, so the load is retried and reads zeros.
//! Workers look at a global fault counter after every chunk (one atomic load) and,
//! when it moved, fail with [`Error::InputChanged`] naming the file; every pass
//! also compares each input's size and modification time with those it had when
//! opened ([`Mapping::check`]) before its result is used, which catches a file that
//! was rewritten or truncated and grown back without a fault. Nothing read from a
//! damaged mapping is ever committed.
//!
//! Why not jump out of the handler: unwinding or `longjmp` across Rust frames is
//! undefined behaviour, while returning from the handler after making the page
//! readable is exactly what the kernel supports. A fault outside our mappings is
//! handed to the previous handler (Rust's stack-overflow handler, or the default
//! action), so nothing else changes.

use std::ffi::c_void;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::SystemTime;

pub(crate) use memmap2::Advice;
use memmap2::{Mmap, UncheckedAdvice};

use crate::error::{Error, Result};

/// Mappings the handler can watch at once. A search keeps every ingredient mapped
/// (each shard is one mapping); beyond this many, further mappings are made
/// without protection (a truncation then kills the process, as it did before).
const SLOTS: usize = 8192;

/// One watched mapping: its address range and whether a fault hit it. `end == 0`
/// marks a free slot.
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    faulted: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // used once, as an array initialiser
const FREE: Slot =
    Slot { start: AtomicUsize::new(0), end: AtomicUsize::new(0), faulted: AtomicBool::new(false) };

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];
/// Slots at or past this index have never been used, so the handler stops there.
static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);
/// Faults handled so far, over all mappings: workers compare it per chunk.
static FAULTS: AtomicUsize = AtomicUsize::new(0);
/// Which slots are taken (only touched outside the handler).
static TAKEN: Mutex<Vec<bool>> = Mutex::new(Vec::new());
/// The `SIGBUS` disposition before ours, for faults that are not ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALL: Once = Once::new();
/// Whether the handler is in place (mappings are registered only then).
static INSTALLED: AtomicBool = AtomicBool::new(false);
static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// A read-only mapping of a whole input file, watched for faults while it lives.
/// It dereferences to the file's bytes.
#[derive(Debug)]
pub(crate) struct Mapping {
    map: Mmap,
    /// Kept open so that [`Mapping::check`] can `fstat` the very file mapped.
    file: File,
    path: PathBuf,
    opened: Identity,
    slot: Option<usize>,
}

/// What must not change while a file is read: its size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    len: u64,
    modified: Option<SystemTime>,
}

impl Identity {
    fn of(file: &File, path: &Path) -> Result<Identity> {
        let meta = file.metadata().map_err(Error::io("stat", path))?;
        Ok(Identity { len: meta.len(), modified: meta.modified().ok() })
    }
}

impl Deref for Mapping {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            // Unwatch before the mapping goes (the `Mmap` is dropped after this).
            TABLE[slot].end.store(0, Ordering::Release);
            TABLE[slot].start.store(0, Ordering::Release);
            let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
            taken[slot] = false;
        }
    }
}

impl Mapping {
    /// Whether a fault has hit this mapping (cheap: one atomic load).
    fn faulted(&self) -> bool {
        self.slot.is_some_and(|s| TABLE[s].faulted.load(Ordering::Acquire))
    }

    /// Fails with [`Error::InputChanged`] when the file was truncated while mapped
    /// (a fault hit it), or now has a different size or modification time than
    /// when it was opened.
    pub(crate) fn check(&self) -> Result<()> {
        let now = Identity::of(&self.file, &self.path)?;
        let (change, detail) = if now.len != self.opened.len {
            let sizes = format!(" ({} bytes when opened, now {})", self.opened.len, now.len);
            ("changed size", sizes)
        } else if now.modified != self.opened.modified {
            ("was modified", String::new())
        } else if self.faulted() {
            ("could not be read", " (the disk failed to deliver a mapped page)".to_owned())
        } else {
            return Ok(());
        };
        Err(Error::InputChanged { path: self.path.clone(), change, detail })
    }

    /// [`Mapping::check`], but only when a fault hit this mapping: what workers
    /// call between chunks once [`faults`] has moved.
    pub(crate) fn check_faulted(&self) -> Result<()> {
        if self.faulted() {
            self.check()
        } else {
            Ok(())
        }
    }
}

/// Faults handled so far in this process. A pass remembers the value when it
/// starts; when it moves, the pass checks its own inputs with
/// [`Mapping::check_faulted`].
pub(crate) fn faults() -> usize {
    FAULTS.load(Ordering::Acquire)
}

/// Moves the counter [`faults`] without a fault: an input found damaged some
/// other way (a PyTorch storage that fails its CRC-32 on first read) makes every
/// running pass check its inputs after its next chunk.
pub(crate) fn note_damage() {
    FAULTS.fetch_add(1, Ordering::AcqRel);
}

/// Maps `path` read-only, hints the kernel that it will be read front to back,
/// and watches the mapping for faults.
pub(crate) fn map_file(path: &Path) -> Result<Mapping> {
    install_handler();
    let file = File::open(path).map_err(Error::io("open", path))?;
    let opened = Identity::of(&file, path)?;
    // SAFETY: the mapping is shared and read-only (PROT_READ, MAP_SHARED); the
    // engine never hands out a mutable reference into it. What Rust cannot rule out
    // is another process changing the file while it is mapped. Bytes rewritten in
    // place are still initialised `u8`s (any bit pattern is a valid `u8`), so slices
    // stay sound and only the values are wrong, which `Mapping::check` reports
    // before a result is used. A truncation would fault the reader with SIGBUS;
    // the handler below turns the faulting page into zeros (again valid `u8`s) and
    // records the fault, which the workers turn into an error. The mapping's
    // address range is registered before any byte of it is read.
    let map = unsafe { Mmap::map(&file) }.map_err(Error::io("map", path))?;
    // Readahead is only a hint; a kernel that refuses it changes nothing.
    let _ = map.advise(Advice::Sequential);
    let slot = register(map.as_ptr() as usize, map.len());
    Ok(Mapping { map, file, path: path.to_path_buf(), opened, slot })
}

/// Tells the kernel how `map` will be read next: front to back
/// ([`Advice::Sequential`], what [`map_file`] starts with, reading well ahead), or
/// a page here and there ([`Advice::Random`], no readahead). Only a hint.
pub(crate) fn advise(map: &Mapping, advice: Advice) {
    let _ = map.map.advise(advice);
}

/// Tells the kernel this process no longer needs the pages wholly inside
/// `map[start..end]`, so resident memory does not grow with the model. The page
/// cache keeps them (clean and reclaimable), so a later run still finds them warm.
pub(crate) fn release(map: &Mapping, start: usize, end: usize) {
    let page = PAGE.load(Ordering::Relaxed);
    let first = start.div_ceil(page) * page;
    let last = end.min(map.len()) / page * page;
    if last <= first {
        return;
    }
    // SAFETY: `MADV_DONTNEED` on a shared, read-only file mapping only drops this
    // process's page-table entries; the next access faults the same file bytes back
    // in from the page cache (or, for a page the fault handler replaced, zeros
    // again). No Rust reference can observe different contents, so slices borrowed
    // from the mapping (even by other threads, even overlapping this range) stay
    // valid. The range is page-aligned and inside the mapping.
    let _ =
        unsafe { map.map.unchecked_advise_range(UncheckedAdvice::DontNeed, first, last - first) };
}

/// Takes a free slot for `start..start + len` and publishes it to the handler.
fn register(start: usize, len: usize) -> Option<usize> {
    if !INSTALLED.load(Ordering::Acquire) || len == 0 {
        return None;
    }
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    if taken.is_empty() {
        taken.resize(SLOTS, false);
    }
    let slot = taken.iter().position(|t| !t)?;
    taken[slot] = true;
    let entry = &TABLE[slot];
    entry.faulted.store(false, Ordering::Release);
    entry.start.store(start, Ordering::Release);
    entry.end.store(start + len, Ordering::Release);
    HIGH_WATER.fetch_max(slot + 1, Ordering::AcqRel);
    Some(slot)
}

/// Installs the `SIGBUS` handler once per process. If that fails, mappings are
/// simply not watched.
fn install_handler() {
    INSTALL.call_once(|| {
        PAGE.store(rustix::param::page_size(), Ordering::Relaxed);
        // SAFETY: plain FFI on zero-initialised `sigaction` structs (all-zero is a
        // valid value of this C struct). The handler only does async-signal-safe
        // things: atomic loads and stores, `mmap`, `sigaction`, and calling the
        // previous handler (see `on_sigbus`).
        unsafe {
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                return;
            }
            let _ = PREVIOUS.set(previous);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) == 0 {
                INSTALLED.store(true, Ordering::Release);
            }
        }
    });
}

/// The index of the watched mapping holding `addr`, if any. Lock-free: only
/// atomic loads, so it may run in a signal handler.
fn slot_of(addr: usize) -> Option<usize> {
    let used = HIGH_WATER.load(Ordering::Acquire);
    (0..used.min(SLOTS)).find(|&i| {
        let end = TABLE[i].end.load(Ordering::Acquire);
        let start = TABLE[i].start.load(Ordering::Acquire);
        end != 0 && (start..end).contains(&addr)
    })
}

/// The `SIGBUS` handler. For a fault inside a watched mapping it maps a page of
/// zeros over the faulting page and returns, so the interrupted load is retried
/// and reads zeros; the fault is recorded for the workers. Any other fault goes to
/// the previous disposition.
extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an SA_SIGINFO handler, and
    // for SIGBUS `si_addr` is the faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some(slot) = slot_of(addr) {
        let page = PAGE.load(Ordering::Relaxed);
        let first = addr & !(page - 1);
        // SAFETY: the page lies inside a live, registered, read-only mapping of
        // ours (registration ends before the mapping is unmapped), so replacing it
        // with an anonymous read-only page of zeros changes no memory that Rust
        // considers mutable or owned by anything else, and `munmap` of the whole
        // mapping later removes this page too. `mmap` is a single system call
        // (rustix issues it directly), safe to make in a signal handler.
        let zeros = unsafe {
            rustix::mm::mmap_anonymous(
                first as *mut c_void,
                page,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::FIXED,
            )
        };
        if zeros.is_ok() {
            TABLE[slot].faulted.store(true, Ordering::Release);
            FAULTS.fetch_add(1, Ordering::AcqRel);
            return;
        }
    }
    // Not ours (or the page could not be replaced): what would have happened
    // without us.
    let Some(previous) = PREVIOUS.get() else { return };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: `sigaction` is async-signal-safe. With the old disposition back,
        // returning retries the load, which faults again and takes the default
        // action (the process dies of SIGBUS, as it would have without us).
        unsafe { libc::sigaction(libc::SIGBUS, previous, std::ptr::null_mut()) };
    } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed for SIGBUS with SA_SIGINFO,
        // so this is its signature; it gets the arguments the kernel gave us.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(handler) };
        f(signal, info, context);
    } else {
        // SAFETY: as above, for a handler installed without SA_SIGINFO.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_truncated_mapping_reads_zeros_and_reports_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input.bin");
        let page = rustix::param::page_size();
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![7u8; 4 * page]).unwrap();
        drop(f);
        let map = map_file(&path).unwrap();
        assert!(map.check().is_ok());
        let before = faults();
        File::options().write(true).open(&path).unwrap().set_len(page as u64).unwrap();
        // Past the new end: without the handler this load kills the process.
        let byte = std::hint::black_box(&map[3 * page + 5]);
        assert_eq!(*byte, 0);
        assert_eq!(map[page - 1], 7);
        assert!(faults() > before);
        let err = map.check_faulted().unwrap_err().to_string();
        assert!(err.contains("input.bin changed size while it was being read"), "{err}");
        assert!(err.contains(&format!("{} bytes when opened, now {page}", 4 * page)), "{err}");
    }

    #[test]
    fn a_rewritten_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input.bin");
        std::fs::write(&path, [1u8; 100]).unwrap();
        let map = map_file(&path).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        let f = File::options().write(true).open(&path).unwrap();
        f.set_modified(later).unwrap();
        let err = map.check().unwrap_err().to_string();
        assert!(err.contains("input.bin was modified while it was being read"), "{err}");
    }

    #[test]
    fn slots_are_freed_with_their_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input.bin");
        std::fs::write(&path, [1u8; 10]).unwrap();
        let map = map_file(&path).unwrap();
        let addr = map.as_ptr() as usize;
        assert!(slot_of(addr).is_some());
        drop(map);
        assert!(slot_of(addr).is_none());
    }
}
