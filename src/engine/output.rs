//! Putting a finished soup in place without ever exposing a partial one, keeping
//! two processes off one destination, and cleaning up after runs that were killed.
//!
//! An [`OutputLock`] (a `flock`ed file beside the destination, see
//! [`crate::engine::lock`]) is held while a destination is written: a second soup
//! on the same destination fails at once with "… is in use by soup (pid N)".
//! Whoever takes the lock first removes what killed runs left beside the
//! destination: staging directories, and a previous output that a run killed
//! between its two renames had moved aside, which is put back if the destination is
//! missing. Those can only be leftovers: their creator held the lock, and nobody
//! does now; for names of older versions, which did not lock, the process id in
//! the name must also be gone.
//!
//! A [`StagedDir`] is a fresh directory beside the destination. Everything is
//! written there, synced, and moved over the destination: an existing destination
//! is swapped with it in one step (`renameat2(RENAME_EXCHANGE)`), so the
//! destination path is never absent, or — where the filesystem cannot exchange —
//! moved aside first and the staging directory renamed into place. If anything
//! fails first (or the value is dropped), the staging directory is removed and the
//! destination is untouched.
//!
//! Names beside the destination are short and fixed in length —
//! `.soup-<hash of the name>.lock` and `.soup-<hash>-t<pid>-<n>` — so any
//! destination name the filesystem accepts can be written.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::engine::checkpoint::Checkpoint;
use crate::engine::lock::{process_alive, Lock};
use crate::error::{Error, Result};

/// Something found beside a destination and dealt with, or left, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Housekeeping {
    /// A staging directory (or a replaced soup) left by a killed run was removed.
    Removed {
        /// The directory removed.
        path: PathBuf,
        /// The process that made it.
        pid: u32,
        /// Bytes of the files it held.
        bytes: u64,
    },
    /// A previous output that a killed run had moved aside was put back in place of
    /// the missing destination.
    Restored {
        /// Where it was.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
    },
    /// A leftover-looking directory of a process that still runs was left alone.
    Busy {
        /// The directory.
        path: PathBuf,
        /// Its process.
        pid: u32,
    },
    /// A leftover, or the soup just replaced, could not be removed.
    NotRemoved {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: String,
    },
}

impl std::fmt::Display for Housekeeping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Housekeeping::Removed { path, pid, bytes } => write!(
                f,
                "removed {} ({bytes} bytes) left by soup process {pid}, which is gone",
                path.display()
            ),
            Housekeeping::Restored { from, to } => write!(
                f,
                "restored {} from {}, where a killed soup had moved it",
                to.display(),
                from.display()
            ),
            Housekeeping::Busy { path, pid } => {
                write!(f, "left {} alone: process {pid} still runs", path.display())
            }
            Housekeeping::NotRemoved { path, error } => {
                write!(f, "could not remove {}: {error}; remove it by hand", path.display())
            }
        }
    }
}

/// Destinations whose lock this process holds: writing one of them again (a
/// search's final soup, under the lock it took at the start) goes ahead under
/// that lock.
static HELD: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The lock of one destination, held while it is written, and what taking it
/// cleaned up.
#[derive(Debug)]
pub struct OutputLock {
    lock: Option<Lock>,
    key: PathBuf,
    /// What was found and dealt with beside the destination.
    pub housekeeping: Vec<Housekeeping>,
}

impl OutputLock {
    /// Locks `dest` against other soup processes (failing at once with
    /// [`Error::InUse`]) and cleans up after killed runs beside it. If this
    /// process already holds the lock, returns a guard that borrows it.
    pub fn acquire(dest: &Path) -> Result<OutputLock> {
        let key = absolute(dest).unwrap_or_else(|| dest.to_path_buf());
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if held.contains(&key) {
            return Ok(OutputLock { lock: None, key, housekeeping: Vec::new() });
        }
        let parent = parent_of(dest);
        fs::create_dir_all(&parent).map_err(Error::io("create", &parent))?;
        let lock = Lock::acquire(&parent.join(format!(".soup-{}.lock", tag(dest))), dest)?;
        held.push(key.clone());
        drop(held);
        let mut guard = OutputLock { lock: Some(lock), key, housekeeping: Vec::new() };
        guard.housekeeping = clean_leftovers(dest);
        Ok(guard)
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        if self.lock.take().is_some() {
            let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
            held.retain(|k| *k != self.key);
        }
    }
}

/// A staging directory that becomes the destination on [`StagedDir::commit`].
#[derive(Debug)]
pub struct StagedDir {
    staging: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Checks that `dest` may be written (absent, an empty directory, or with
    /// `force` a non-empty one) and creates the staging directory beside it. The
    /// caller holds the destination's [`OutputLock`].
    pub fn new(dest: &Path, force: bool) -> Result<Self> {
        check_state(dest, force)?;
        let parent = parent_of(dest);
        fs::create_dir_all(&parent).map_err(Error::io("create", &parent))?;
        let staging = sibling(dest, 't');
        fs::create_dir(&staging).map_err(Error::io("create", &staging))?;
        Ok(StagedDir { staging, dest: dest.to_path_buf(), committed: false })
    }

    /// Where to write the files.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// The final destination.
    pub fn destination(&self) -> &Path {
        &self.dest
    }

    /// Moves the staging directory to the destination, replacing what was there.
    /// With `durable`, every file and both directories are synced to disk first
    /// and after, so the soup survives a power loss once this returns; scratch
    /// outputs that are deleted minutes later skip that. Once the new soup is in
    /// place this succeeds; a replaced soup that cannot be removed is reported in
    /// the returned list instead.
    pub fn commit(mut self, durable: bool) -> Result<Vec<Housekeeping>> {
        if durable {
            for entry in fs::read_dir(&self.staging).map_err(Error::io("read", &self.staging))? {
                let path = entry.map_err(Error::io("read", &self.staging))?.path();
                sync(&path)?;
            }
            sync(&self.staging)?;
        }
        let replaced = if self.dest.exists() { self.replace()? } else { self.rename()? };
        self.committed = true;
        let mut notes = Vec::new();
        if let Some(old) = replaced {
            if let Err(e) = fs::remove_dir_all(&old) {
                notes.push(Housekeeping::NotRemoved { path: old, error: e.to_string() });
            }
        }
        if durable {
            sync(&parent_of(&self.dest))?;
        }
        Ok(notes)
    }

    /// The staging directory renamed to the absent destination.
    fn rename(&self) -> Result<Option<PathBuf>> {
        fs::rename(&self.staging, &self.dest).map_err(Error::io("rename into", &self.dest))?;
        Ok(None)
    }

    /// The staging directory put in place of the existing destination; returns
    /// where the old one now is. Swapped in one step where the filesystem can
    /// (the destination path then always names a whole soup), else moved aside
    /// first.
    fn replace(&self) -> Result<Option<PathBuf>> {
        let exchanged = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &self.staging,
            rustix::fs::CWD,
            &self.dest,
            rustix::fs::RenameFlags::EXCHANGE,
        );
        match exchanged {
            Ok(()) => return Ok(Some(self.staging.clone())),
            // Not supported by this kernel or filesystem: fall back below.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {}
            Err(rustix::io::Errno::OPNOTSUPP) => {}
            Err(e) => return Err(Error::io("swap into", &self.dest)(e.into())),
        }
        let old = sibling(&self.dest, 'o');
        fs::rename(&self.dest, &old).map_err(Error::io("move aside", &self.dest))?;
        if let Err(e) = fs::rename(&self.staging, &self.dest) {
            let _ = fs::rename(&old, &self.dest);
            return Err(Error::io("rename into", &self.dest)(e));
        }
        Ok(Some(old))
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// Checks, before any work, that `dest` may be written: absent, an empty
/// directory, or (with `force`) a non-empty one; not an ingredient, inside one,
/// or holding one; and with a name the filesystem accepts. Searches call it
/// before hours of evaluations; [`crate::write_soup`] calls it again.
pub fn check_destination(dest: &Path, force: bool, ingredients: &[Checkpoint]) -> Result<()> {
    check_state(dest, force)?;
    refuse_overlap(dest, ingredients)?;
    check_name_length(dest)
}

fn check_state(dest: &Path, force: bool) -> Result<()> {
    let refuse =
        |reason: &str| Error::Output { path: dest.to_path_buf(), reason: reason.to_owned() };
    match fs::symlink_metadata(dest) {
        Ok(meta) if !meta.is_dir() => Err(refuse("exists and is not a directory")),
        Ok(_) if !force && !is_empty_dir(dest)? => {
            Err(refuse("exists and is not empty (pass --force to replace it)"))
        }
        _ => Ok(()),
    }
}

/// Refuses an output that is an ingredient, lies inside one, or contains one:
/// replacing it would destroy the user's checkpoint.
pub(crate) fn refuse_overlap(dest: &Path, ingredients: &[Checkpoint]) -> Result<()> {
    let Some(dest_abs) = absolute(dest) else {
        return Ok(());
    };
    for ck in ingredients {
        // An adapter's shards include its base's files.
        let files = ck.shards().iter().map(|s| s.path());
        for path in std::iter::once(ck.path()).chain(files) {
            let Ok(source) = path.canonicalize() else {
                continue;
            };
            if source.starts_with(&dest_abs) || dest_abs.starts_with(&source) {
                return Err(Error::Output {
                    path: dest.to_path_buf(),
                    reason: format!("overlaps the ingredient {}", path.display()),
                });
            }
        }
    }
    Ok(())
}

/// Refuses a name longer than the filesystem allows, before any work is done.
fn check_name_length(dest: &Path) -> Result<()> {
    let Some(name) = dest.file_name() else { return Ok(()) };
    let mut existing = parent_of(dest);
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p.to_path_buf(),
            _ => existing = PathBuf::from("."),
        }
        if existing == Path::new(".") {
            break;
        }
    }
    let limit = rustix::fs::statvfs(&existing).map_or(255, |s| s.f_namemax);
    let len = name.as_encoded_bytes().len() as u64;
    if len > limit {
        return Err(Error::Output {
            path: dest.to_path_buf(),
            reason: format!("its name is {len} bytes, longer than the filesystem allows ({limit})"),
        });
    }
    Ok(())
}

/// `path` made absolute with symlinks resolved, for a path that may not exist yet
/// (its nearest existing ancestor resolved, the rest appended).
pub fn absolute(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let name = path.file_name()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    absolute(parent).map(|p| p.join(name))
}

fn sync(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(Error::io("sync", path))
}

fn is_empty_dir(path: &Path) -> Result<bool> {
    Ok(fs::read_dir(path).map_err(Error::io("read", path))?.next().is_none())
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A short tag for a destination's name: FNV-1a, 64 bits, in hex. Stable across
/// versions and platforms, so a later run finds an earlier run's leftovers.
fn tag(dest: &Path) -> String {
    let name = dest.file_name().map_or(&b"soup"[..], |n| n.as_encoded_bytes());
    let hash = name
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

/// A hidden, unique name beside `dest`: `.soup-<tag>-<kind><pid>-<n>`, where kind
/// is `t` (staging), `o` (an old destination moved aside) or `i` (intermediate
/// soups of a multi-document recipe).
fn sibling(dest: &Path, kind: char) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    parent_of(dest).join(format!(".soup-{}-{kind}{}-{n}", tag(dest), std::process::id()))
}

/// A hidden directory beside `dest` for the intermediate soups of a recipe that
/// writes `dest`: removed by a later run on `dest` once this process is gone,
/// like a staging directory.
pub fn intermediates_dir(dest: &Path) -> PathBuf {
    sibling(dest, 'i')
}

/// A leftover beside a destination: what it was, and which process made it.
struct Leftover {
    path: PathBuf,
    old: bool,
    pid: u32,
}

/// Recognises the names [`sibling`] makes for `dest`, and those of versions
/// before locking (`.NAME.soup-tmp-PID-N`, `.NAME.soup-old-PID-N`).
fn leftover(dest: &Path, parent: &Path, entry: &str) -> Option<Leftover> {
    let path = parent.join(entry);
    if let Some(rest) = entry.strip_prefix(&format!(".soup-{}-", tag(dest))) {
        let old = rest.starts_with('o');
        let pid = rest.get(1..)?.split('-').next()?.parse().ok()?;
        return (rest.starts_with(['t', 'o', 'i'])).then_some(Leftover { path, old, pid });
    }
    let name = dest.file_name()?.to_str()?;
    let rest = entry.strip_prefix(&format!(".{name}.soup-"))?;
    let (old, rest) = match (rest.strip_prefix("tmp-"), rest.strip_prefix("old-")) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => return None,
    };
    let pid = rest.split('-').next()?.parse().ok()?;
    Some(Leftover { path, old, pid })
}

/// Removes (or, for a destination moved aside while the destination is missing,
/// restores) what killed runs left beside `dest`. The caller holds its lock.
fn clean_leftovers(dest: &Path) -> Vec<Housekeeping> {
    let parent = parent_of(dest);
    let Ok(entries) = fs::read_dir(&parent) else { return Vec::new() };
    let mut found: Vec<Leftover> = entries
        .flatten()
        .filter_map(|e| leftover(dest, &parent, e.file_name().to_str()?))
        .collect();
    // Old destinations first, so one can be restored before the others go.
    found.sort_by_key(|l| (!l.old, l.path.clone()));
    let me = std::process::id();
    let mut notes = Vec::new();
    for l in found {
        if l.pid == me {
            continue;
        }
        // The lock proves that no soup is writing this destination; a live process
        // with the name's id is then a reused id, or (for names without a lock) an
        // older soup still at work. Either way, leave it for a later run.
        if process_alive(l.pid) {
            notes.push(Housekeeping::Busy { path: l.path, pid: l.pid });
            continue;
        }
        if l.old && fs::symlink_metadata(dest).is_err() {
            match fs::rename(&l.path, dest) {
                Ok(()) => notes.push(Housekeeping::Restored { from: l.path, to: dest.into() }),
                Err(e) => {
                    notes.push(Housekeeping::NotRemoved { path: l.path, error: e.to_string() })
                }
            }
            continue;
        }
        let bytes = dir_bytes(&l.path);
        match fs::remove_dir_all(&l.path) {
            Ok(()) => notes.push(Housekeeping::Removed { path: l.path, pid: l.pid, bytes }),
            Err(e) => notes.push(Housekeeping::NotRemoved { path: l.path, error: e.to_string() }),
        }
    }
    notes
}

/// Bytes of the files inside `dir`, at any depth (an intermediates directory
/// holds a directory per soup); symlinks are not followed.
fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.path(), e.file_type().ok()?, e.metadata().ok()?)))
        .map(|(path, kind, meta)| if kind.is_dir() { dir_bytes(&path) } else { meta.len() })
        .sum()
}

/// Largest `config.json` rewritten; real ones are a few KiB.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Makes the `config.json` in `dir` (if there is one) name the dtype the weights
/// are written in: every `"torch_dtype"` or `"dtype"` entry (nested configs
/// included, as CLIP's text and vision configs) whose value is a float dtype is
/// set to `dtype`, so `from_pretrained(..., torch_dtype="auto")` loads what was
/// written. The rest of the file is kept byte for byte.
pub fn set_config_dtype(dir: &Path, dtype: crate::engine::dtype::FloatDtype) -> Result<()> {
    use crate::engine::dtype::FloatDtype;
    let path = dir.join("config.json");
    if !path.is_file() {
        return Ok(());
    }
    let text = crate::engine::checkpoint::read_bounded(&path, MAX_CONFIG_BYTES)?;
    let name = match dtype {
        FloatDtype::F64 => "float64",
        FloatDtype::F32 => "float32",
        FloatDtype::F16 => "float16",
        FloatDtype::BF16 => "bfloat16",
    };
    let Ok(entry) = regex::Regex::new(
        r#""(torch_dtype|dtype)"(\s*:\s*)"(float16|float32|float64|bfloat16|half|float|double)""#,
    ) else {
        return Ok(()); // a constant pattern: never reached
    };
    let replaced = entry.replace_all(&text, format!(r#""$1"$2"{name}""#));
    if replaced != text {
        fs::write(&path, replaced.as_bytes()).map_err(Error::io("write", &path))?;
    }
    Ok(())
}

/// Files that hold weights and are never copied next to a soup.
fn is_weight_file(name: &str) -> bool {
    const WEIGHT_SUFFIXES: [&str; 11] = [
        ".safetensors",
        ".safetensors.index.json",
        ".bin",
        ".bin.index.json",
        ".pt",
        ".pth",
        ".ckpt",
        ".h5",
        ".msgpack",
        ".gguf",
        ".onnx",
    ];
    WEIGHT_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Copies the non-weight files at the top of `from` (config, generation config,
/// tokenizer, README...) into `to`, and returns their names, sorted. Hidden files,
/// subdirectories and weight files are skipped.
pub fn copy_support_files(from: &Path, to: &Path) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    for entry in fs::read_dir(from).map_err(Error::io("read", from))? {
        let entry = entry.map_err(Error::io("read", from))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let file_type = entry.file_type().map_err(Error::io("read", entry.path()))?;
        if name.starts_with('.')
            || is_weight_file(&name)
            || !(file_type.is_file() || file_type.is_symlink())
        {
            continue;
        }
        let source = entry.path();
        if !source.is_file() {
            continue;
        }
        fs::copy(&source, to.join(&name)).map_err(Error::io("copy", &source))?;
        copied.push(name);
    }
    copied.sort();
    Ok(copied)
}
