//! The whole of one merge, as the CLI and the soup searches use it: a plan written
//! into a staging directory beside the destination, with the index and the support
//! files, then committed in place, all under the destination's lock.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::engine::checkpoint::{Checkpoint, INDEX_FILE};
use crate::engine::dtype::FloatDtype;
use crate::engine::execute::{self, RunOptions};
use crate::engine::output::{self, Housekeeping, OutputLock, StagedDir};
use crate::engine::plan::{Plan, Produce};
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
    /// Output values that are NaN or infinite (from the inputs, or from arithmetic
    /// that overflowed the output format).
    pub non_finite: u64,
    /// The first tensor, in output order, holding such a value.
    pub first_non_finite: Option<String>,
    /// Leftovers of killed runs dealt with beside the destination, and a replaced
    /// soup that could not be removed.
    pub housekeeping: Vec<Housekeeping>,
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
/// config or tokenizer files made for this soup; a name without contents
/// removes the support file of that name. Names must be plain file names.
pub fn write_soup_with_files(
    ingredients: &[Checkpoint],
    plan: &Plan,
    dest: &Destination,
    files: &[(String, Option<Vec<u8>>)],
    run: &RunOptions,
) -> Result<MergeReport> {
    let started = Instant::now();
    let lock = OutputLock::acquire(dest.path)?;
    output::check_destination(dest.path, dest.force, ingredients)?;
    let staged = StagedDir::new(dest.path, dest.force)?;
    let written = execute::write_shards(plan, ingredients, staged.path(), run, dest.durable)?;
    let mut output_files: Vec<PathBuf> =
        written.files.iter().filter_map(|p| p.file_name()).map(|n| dest.path.join(n)).collect();
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
        match contents {
            Some(bytes) => {
                std::fs::write(&path, bytes).map_err(Error::io("write", &path))?;
                if !support_files.contains(name) {
                    support_files.push(name.clone());
                }
            }
            None if path.is_file() => {
                std::fs::remove_file(&path).map_err(Error::io("remove", &path))?;
                support_files.retain(|n| n != name);
            }
            None => {}
        }
    }
    support_files.sort();
    if let Some(dtype) = main_float_dtype(plan) {
        output::set_config_dtype(staged.path(), dtype)?;
    }
    // The inputs once more, just before the soup goes in place.
    for ck in ingredients {
        ck.check_unchanged()?;
    }
    let mut housekeeping = lock.housekeeping.clone();
    housekeeping.extend(staged.commit(dest.durable)?);
    Ok(MergeReport {
        tensors: plan.tensors.len(),
        parameters: plan.parameters(),
        bytes_read: plan.input_bytes(ingredients),
        bytes_written: plan.shards.iter().map(|s| s.size).sum(),
        output_files,
        support_files,
        seconds: started.elapsed().as_secs_f64(),
        non_finite: written.non_finite,
        first_non_finite: written.first_non_finite.map(|t| plan.tensors[t].name.clone()),
        housekeeping,
    })
}

/// The float dtype most of the soup's merged elements are written in, for
/// `config.json` to say (`None` without float tensors).
fn main_float_dtype(plan: &Plan) -> Option<FloatDtype> {
    let mut elements: Vec<(FloatDtype, u64)> = Vec::new();
    for t in &plan.tensors {
        let dtype = match &t.produce {
            Produce::Average { dtype, .. } | Produce::TaskVectors { dtype, .. } => *dtype,
            Produce::Copy { .. } => continue,
        };
        match elements.iter_mut().find(|(d, _)| *d == dtype) {
            Some((_, n)) => *n += t.numel as u64,
            None => elements.push((dtype, t.numel as u64)),
        }
    }
    elements.into_iter().max_by_key(|&(_, n)| n).map(|(d, _)| d)
}
