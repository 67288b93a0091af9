//! Scoring the demo's models on every split, each score from its own evaluator
//! process: `soup demo-eval MODEL --split NAME`, one run per model and split, as a
//! suite of benchmarks is run (validation, the in-distribution test set, and one
//! evaluator per shifted test set). The searches choose on `val`; the tables
//! report every split from these same processes, so no number in them is computed
//! in the demo's own process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context};
use rayon::prelude::*;
use serde_json::Value;

use super::check;
use super::data::Shift;

/// A model's accuracy on every split.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Validation: where soups are chosen.
    pub val: f64,
    /// The in-distribution test set.
    pub test: f64,
    /// Each shifted test set, in [`Shift::ALL`] order.
    pub shifts: Vec<f64>,
}

impl Scores {
    /// The mean over the shifted test sets.
    pub fn avg_shift(&self) -> f64 {
        self.shifts.iter().sum::<f64>() / self.shifts.len().max(1) as f64
    }
}

/// The splits, in the order of [`Scores`]: `val`, `test`, then every shift.
pub fn splits() -> Vec<&'static str> {
    ["val", "test"].into_iter().chain(Shift::ALL.map(Shift::name)).collect()
}

/// Scores every model in `models` (paths relative to `work_dir`, where the
/// evaluators run) on every split.
pub fn score_all(
    exe: &Path,
    work_dir: &Path,
    models: &[PathBuf],
    interrupted: &AtomicBool,
) -> anyhow::Result<HashMap<PathBuf, Scores>> {
    let splits = splits();
    let pairs: Vec<(&PathBuf, &str)> =
        models.iter().flat_map(|m| splits.iter().map(move |&s| (m, s))).collect();
    let scores = pairs
        .par_iter()
        .map(|&(model, split)| {
            check(interrupted)?;
            evaluate(exe, work_dir, model, split)
        })
        .collect::<anyhow::Result<Vec<f64>>>()?;
    Ok(models
        .iter()
        .zip(scores.chunks_exact(splits.len()))
        .map(|(model, s)| {
            let scores = Scores { val: s[0], test: s[1], shifts: s[2..].to_vec() };
            (model.clone(), scores)
        })
        .collect())
}

/// Runs one evaluation and reads the score it prints.
fn evaluate(exe: &Path, work_dir: &Path, model: &Path, split: &str) -> anyhow::Result<f64> {
    let output = Command::new(exe)
        .current_dir(work_dir)
        .arg("demo-eval")
        .arg(model)
        .args(["--split", split])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let what = || format!("soup demo-eval {} --split {split}", model.display());
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("{} failed ({}): {}", what(), output.status, stderr.trim());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("{} printed {:?}, not a score", what(), stdout.trim()))?;
    line["score"].as_f64().with_context(|| format!("{} printed no score", what()))
}
