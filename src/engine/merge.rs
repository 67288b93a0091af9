//! The whole of one merge, as the CLI and the soup searches use it: a plan written
//! into a staging directory beside the destination, with the index and the support
//! files, then committed in place.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::engine::checkpoint::{Checkpoint, INDEX_FILE};
use crate::engine::execute::{self, RunOptions};
use crate::engine::output::{self, StagedDir};
use crate::engine::plan::Plan;
use crate::error::{Error, Result};

/// Where and how to write a soup.
#[derive(Debug, Clone)]
pub struct Destination<'a> {
    /// The output directory.
    pub path: &'a Path,
    /// Replace a non-empty existing directory.
    pub force: bool,
    /// The directory whose config, tokenizer and other non-weight files are copied;
    /// `None` uses the first ingredient's directory (nothing is copied when the
    /// first ingredient is a bare file).
    pub support_files_from: Option<&'a Path>,
    /// Sync everything to disk before and after the final rename (the default for
    /// results; scratch candidates skip it).
    pub durable: bool,
}

/// What a merge produced.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    /// Tensors written.
    pub tensors: usize,
    /// Elements written.
    pub parameters: u64,
    /// Bytes of tensor data read from the ingredients.
    pub bytes_read: u64,
    /// Bytes written to the output's weight files, headers included.
    pub bytes_written: u64,
    /// The weight files (and index), at their final paths.
    pub output_files: Vec<PathBuf>,
    /// Non-weight files copied beside them.
    pub support_files: Vec<String>,
    /// Wall time of the merge in seconds.
    pub seconds: f64,
}

/// Writes the soup described by `plan` to `dest`. On any error the destination is
/// left as it was.
pub fn write_soup(
    ingredients: &[Checkpoint],
    plan: &Plan,
    dest: &Destination,
    run: &RunOptions,
) -> Result<MergeReport> {
    write_soup_with_files(ingredients, plan, dest, &[], run)
}

/// [`write_soup`], then `files` (name, contents) written beside the weights
/// after the support files, replacing any of the same name: a model card, a
/// config or tokenizer files made for this soup. Names must be plain file
/// names.
pub fn write_soup_with_files(
    ingredients: &[Checkpoint],
    plan: &Plan,
    dest: &Destination,
    files: &[(String, Vec<u8>)],
    run: &RunOptions,
) -> Result<MergeReport> {
    let started = Instant::now();
    refuse_overlap(dest.path, ingredients)?;
    let staged = StagedDir::new(dest.path, dest.force)?;
    let written = execute::write_shards(plan, ingredients, staged.path(), run, dest.durable)?;
    let mut output_files: Vec<PathBuf> =
        written.iter().filter_map(|p| p.file_name()).map(|n| dest.path.join(n)).collect();
    if let Some(index) = plan.index() {
        let path = staged.path().join(INDEX_FILE);
        let json = serde_json::to_vec_pretty(&index).map_err(Error::Json)?;
        std::fs::write(&path, json).map_err(Error::io("write", &path))?;
        output_files.push(dest.path.join(INDEX_FILE));
    }
    let support_from =
        dest.support_files_from.or_else(|| ingredients.first().and_then(Checkpoint::directory));
    let mut support_files = match support_from {
        Some(dir) => output::copy_support_files(dir, staged.path())?,
        None => Vec::new(),
    };
    for (name, contents) in files {
        let path = staged.path().join(name);
        if std::path::Path::new(name).file_name() != Some(std::ffi::OsStr::new(name)) {
            return Err(Error::Output {
                path: dest.path.to_path_buf(),
                reason: format!("{name:?} is not a plain file name"),
            });
        }
        std::fs::write(&path, contents).map_err(Error::io("write", &path))?;
        if !support_files.contains(name) {
            support_files.push(name.clone());
        }
    }
    support_files.sort();
    staged.commit(dest.durable)?;
    Ok(MergeReport {
        tensors: plan.tensors.len(),
        parameters: plan.parameters(),
        bytes_read: plan.input_bytes(ingredients),
        bytes_written: plan.shards.iter().map(|s| s.size).sum(),
        output_files,
        support_files,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Refuses an output that is an ingredient, lies inside one, or contains one:
/// replacing it would destroy the user's checkpoint.
fn refuse_overlap(dest: &Path, ingredients: &[Checkpoint]) -> Result<()> {
    let Some(dest_abs) = absolute(dest) else {
        return Ok(());
    };
    for ck in ingredients {
        let Ok(source) = ck.path().canonicalize() else {
            continue;
        };
        if source.starts_with(&dest_abs) || dest_abs.starts_with(&source) {
            return Err(Error::Output {
                path: dest.to_path_buf(),
                reason: format!("overlaps the ingredient {}", ck.path().display()),
            });
        }
    }
    Ok(())
}

/// `path` made absolute with symlinks resolved, for a path that may not exist yet.
fn absolute(path: &Path) -> Option<PathBuf> {
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
