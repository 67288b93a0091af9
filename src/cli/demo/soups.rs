//! Building the demo's soups with the real commands: this executable's `merge`,
//! `greedy`, `pruned`, `learned` and `angles` run as child processes, and the
//! searches score candidates with `soup demo-eval` through `--eval`, so every
//! number goes through the evaluator protocol a user's script speaks.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;

use super::{check, Ingredient};

/// One row of the table: a soup (or the best single model) and its accuracy.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was built.
    pub method: String,
    /// Validation accuracy (where soups are chosen).
    pub val: f64,
    /// Test accuracy.
    pub test: f64,
    /// Ingredients in it.
    pub ingredients: usize,
}

/// Everything measured on one set of ingredients.
#[derive(Debug, Clone, Serialize)]
pub struct SetResult {
    /// `fine-tuned` or `from-scratch`.
    pub name: String,
    /// Number of ingredients.
    pub ingredients: usize,
    /// The rows, best individual first.
    pub rows: Vec<Row>,
    /// Mean angle between ingredients (deltas from the base when there is one).
    pub mean_angle_deg: f64,
    /// Whether that angle is between deltas from the pretrained model.
    pub relative_to_base: bool,
    /// Whether the shared-init check flagged the ingredients.
    pub init_check_warns: bool,
    /// Warnings the commands printed.
    pub warnings: Vec<String>,
}

/// Runs the commands for the demo.
pub struct Runner<'a> {
    exe: PathBuf,
    dir: PathBuf,
    learned_evaluations: usize,
    interrupted: &'a AtomicBool,
}

/// The soups built on each set, after the best individual and the uniform soup:
/// row label, output directory, command, extra arguments.
const SEARCHES: [(&str, &str, &str, &[&str]); 5] = [
    ("greedy soup", "greedy", "greedy", &[]),
    (
        "greedy soup (random order)",
        "greedy-random",
        "greedy",
        &["--order", "random", "--seed", "1"],
    ),
    ("pruned soup", "pruned", "pruned", &["--passes", "2"]),
    (
        "pruned soup (random order)",
        "pruned-random",
        "pruned",
        &["--passes", "2", "--order", "random", "--seed", "1"],
    ),
    ("learned soup", "learned", "learned", &[]),
];

impl<'a> Runner<'a> {
    /// A runner writing under `dir`.
    pub fn new(
        dir: &Path,
        learned_evaluations: usize,
        interrupted: &'a AtomicBool,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the soup executable")?;
        Ok(Runner { exe, dir: dir.to_owned(), learned_evaluations, interrupted })
    }

    /// Builds every soup of one set and measures it; `evaluate` gives a
    /// checkpoint's (val, test) accuracy.
    pub fn run_set(
        &self,
        name: &str,
        set: &[Ingredient],
        base: Option<&Path>,
        evaluate: &dyn Fn(&Path) -> anyhow::Result<(f64, f64)>,
        say: &dyn Fn(String),
    ) -> anyhow::Result<SetResult> {
        let root = self.dir.join(name);
        let soups = root.join("soups");
        let run_dir = root.join("run");
        let inputs: Vec<OsString> = set.iter().map(|i| i.dir.clone().into_os_string()).collect();
        let mut warnings = Vec::new();
        let mut rows = Vec::new();

        let best = set.iter().max_by(|a, b| a.val.total_cmp(&b.val)).context("no ingredients")?;
        rows.push(Row {
            method: "best individual (on val)".into(),
            val: best.val,
            test: best.test,
            ingredients: 1,
        });

        say(format!("{name}: angles and the shared-init check"));
        let mut args = vec!["angles".into(), "--format".into(), "json".into(), "--quiet".into()];
        args.extend([OsString::from("--svg"), root.join("angles.svg").into()]);
        if let Some(base) = base {
            args.extend([OsString::from("--base"), base.into()]);
        }
        args.extend(inputs.iter().cloned());
        let angles: Value = serde_json::from_str(&self.soup(&args, &mut warnings)?)?;

        say(format!("{name}: uniform soup"));
        let uniform = soups.join("uniform");
        let mut args: Vec<OsString> =
            vec!["merge".into(), "--quiet".into(), "-o".into(), uniform.clone().into()];
        args.extend(inputs.iter().cloned());
        self.soup(&args, &mut warnings)?;
        let (val, test) = evaluate(&uniform)?;
        rows.push(Row { method: "uniform soup".into(), val, test, ingredients: set.len() });

        let template =
            format!("{} demo-eval {{model}} --split val", quote(&self.exe.to_string_lossy()));
        for (label, slug, command, extra) in SEARCHES {
            check(self.interrupted)?;
            say(format!("{name}: {label}"));
            let out = soups.join(slug);
            let mut args: Vec<OsString> = vec![command.into(), "--quiet".into(), "--json".into()];
            args.extend(["--jobs", "2", "--eval"].map(OsString::from));
            args.push(template.clone().into());
            args.extend([
                OsString::from("-o"),
                out.clone().into(),
                "--run-dir".into(),
                run_dir.clone().into(),
            ]);
            args.extend(extra.iter().map(OsString::from));
            if command == "learned" {
                let budget = set.len() + 1 + self.learned_evaluations;
                args.extend(["--budget".into(), budget.to_string().into()]);
            }
            args.extend(inputs.iter().cloned());
            let report: Value = serde_json::from_str(&self.soup(&args, &mut warnings)?)
                .with_context(|| format!("soup {command} did not print a report"))?;
            std::fs::write(soups.join(format!("{slug}.report.json")), report.to_string())?;
            let members = report["members"].as_array().map_or(0, Vec::len);
            let used = match report["weights"].as_array() {
                Some(w) if command == "learned" => {
                    w.iter().filter(|w| w.as_f64() > Some(1e-3)).count()
                }
                _ => members,
            };
            let (val, test) = evaluate(&out)?;
            rows.push(Row { method: label.into(), val, test, ingredients: used });
        }

        let init_check_warns =
            angles["init_check"]["independent"].as_array().is_some_and(|p| !p.is_empty());
        warnings.sort();
        warnings.dedup();
        Ok(SetResult {
            name: name.to_owned(),
            ingredients: set.len(),
            rows,
            mean_angle_deg: mean_off_diagonal(&angles["angles_deg"]),
            relative_to_base: base.is_some(),
            init_check_warns,
            warnings,
        })
    }

    /// Runs `soup ARGS`; returns its stdout, collects the warnings it printed.
    fn soup(&self, args: &[OsString], warnings: &mut Vec<String>) -> anyhow::Result<String> {
        let output = Command::new(&self.exe)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", self.exe.display()))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        for block in stderr.split("\nwarning: ").skip(1).chain(stderr.strip_prefix("warning: ")) {
            let first = block.lines().next().unwrap_or_default();
            warnings.push(format!("warning: {first}"));
        }
        if !output.status.success() {
            let command = args.first().map(|a| a.to_string_lossy()).unwrap_or_default();
            bail!("soup {command} failed ({}): {}", output.status, stderr.trim());
        }
        Ok(String::from_utf8(output.stdout)?)
    }
}

/// `s` quoted for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The mean of the off-diagonal entries of a square matrix in JSON.
fn mean_off_diagonal(matrix: &Value) -> f64 {
    let rows = matrix.as_array().map(Vec::as_slice).unwrap_or_default();
    let values: Vec<f64> = rows
        .iter()
        .enumerate()
        .flat_map(|(i, row)| {
            let row = row.as_array().map(Vec::as_slice).unwrap_or_default();
            row.iter().enumerate().filter(move |(j, _)| *j != i).filter_map(|(_, v)| v.as_f64())
        })
        .collect();
    values.iter().sum::<f64>() / values.len().max(1) as f64
}
