//! Scoring the demo's models on every split with `soup evaluate`: a benchmark
//! suite with one evaluator per split (validation, the in-distribution test set,
//! and each shifted test set), each `soup demo-eval MODEL --split NAME`, one
//! process per model and split. The searches choose on `val`; the tables report
//! every split from these same processes, so no number in them is computed in the
//! demo's own process.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use modelsoup::search::evaluate::shell_quote;
use serde_json::Value;

use super::check;
use super::data::Shift;
use super::soups::Runner;

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

/// Scores every model in `models` (paths relative to `work_dir`) on every split
/// with `soup evaluate`, one evaluator per split in the suite `work_dir/suite.yaml`
/// (journaled in `work_dir/suite.run/`), as many at once as there are cores.
pub fn score_all(
    runner: &Runner,
    work_dir: &Path,
    models: &[PathBuf],
    interrupted: &AtomicBool,
) -> anyhow::Result<HashMap<PathBuf, Scores>> {
    check(interrupted)?;
    let exe = shell_quote(&runner.exe().to_string_lossy());
    let mut suite = String::from("evaluators:\n");
    for split in splits() {
        let command = format!("{exe} demo-eval {{model}} --split {split}");
        suite += &format!("  {split}: {{eval: {}}}\n", serde_json::to_string(&command)?);
    }
    std::fs::write(work_dir.join("suite.yaml"), suite).context("cannot write suite.yaml")?;
    let jobs = std::thread::available_parallelism().map_or(2, usize::from);
    let mut args: Vec<OsString> =
        ["evaluate", "--suite", "suite.yaml", "--json", "--quiet"].map(OsString::from).to_vec();
    args.extend([OsString::from("--jobs"), jobs.to_string().into()]);
    args.extend(models.iter().map(|m| m.clone().into_os_string()));
    let output = runner.soup(&args, &mut Vec::new());
    check(interrupted)?;
    let table: Value = serde_json::from_str(&output?).context("soup evaluate printed no table")?;
    models
        .iter()
        .map(|model| {
            let label = model.display().to_string();
            let score = |split: &str| {
                table["scores"][&label][split].as_f64().with_context(|| {
                    let reason = &table["failures"][&label][split];
                    format!("{label} was not scored on {split}: {reason}")
                })
            };
            let shifts =
                Shift::ALL.map(|s| score(s.name())).into_iter().collect::<Result<_, _>>()?;
            Ok((model.clone(), Scores { val: score("val")?, test: score("test")?, shifts }))
        })
        .collect()
}
