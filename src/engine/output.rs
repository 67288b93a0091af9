//! Putting a finished soup in place without ever exposing a partial one.
//!
//! A [`StagedDir`] is a fresh directory beside the destination. Everything is
//! written there, synced, and renamed over the destination in one step; if anything
//! fails first (or the value is dropped), the staging directory is removed and the
//! destination is untouched.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// A staging directory that becomes the destination on [`StagedDir::commit`].
#[derive(Debug)]
pub struct StagedDir {
    staging: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Checks that `dest` may be written (absent, an empty directory, or with
    /// `force` a non-empty one) and creates the staging directory beside it.
    pub fn new(dest: &Path, force: bool) -> Result<Self> {
        let refuse =
            |reason: &str| Error::Output { path: dest.to_path_buf(), reason: reason.to_owned() };
        match fs::symlink_metadata(dest) {
            Ok(meta) if !meta.is_dir() => return Err(refuse("exists and is not a directory")),
            Ok(_) if !force && !is_empty_dir(dest)? => {
                return Err(refuse("exists and is not empty (pass --force to replace it)"))
            }
            _ => {}
        }
        let parent = parent_of(dest);
        fs::create_dir_all(&parent).map_err(Error::io("create", &parent))?;
        let staging = sibling(dest, "tmp");
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
    /// outputs that are deleted minutes later skip that.
    pub fn commit(mut self, durable: bool) -> Result<()> {
        if durable {
            for entry in fs::read_dir(&self.staging).map_err(Error::io("read", &self.staging))? {
                let path = entry.map_err(Error::io("read", &self.staging))?.path();
                sync(&path)?;
            }
            sync(&self.staging)?;
        }
        let old = if self.dest.exists() {
            let old = sibling(&self.dest, "old");
            fs::rename(&self.dest, &old).map_err(Error::io("move aside", &self.dest))?;
            Some(old)
        } else {
            None
        };
        if let Err(e) = fs::rename(&self.staging, &self.dest) {
            if let Some(old) = &old {
                let _ = fs::rename(old, &self.dest);
            }
            return Err(Error::io("rename into", &self.dest)(e));
        }
        self.committed = true;
        if let Some(old) = old {
            fs::remove_dir_all(&old).map_err(Error::io("remove", &old))?;
        }
        if durable {
            sync(&parent_of(&self.dest))?;
        }
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// Checks that `dest` may be written: absent, an empty directory, or (with
/// `force`) a non-empty one. Searches call it before hours of evaluations.
pub fn check_destination(dest: &Path, force: bool) -> Result<()> {
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

/// A hidden, unique name beside `path`: `.NAME.soup-KIND-PID-N`.
fn sibling(path: &Path, kind: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "soup".to_owned());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    parent_of(path).join(format!(".{name}.soup-{kind}-{}-{n}", std::process::id()))
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
