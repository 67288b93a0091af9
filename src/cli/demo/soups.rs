//! Building the demo's soups with the real commands: this executable's `merge`,
//! `greedy`, `pruned`, `learned` and `angles` run as child processes in the work
//! directory, and the searches score candidates with `soup demo-eval` through
//! `--eval`, so every choice goes through the evaluator protocol a user's script
//! speaks.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context};
use serde_json::Value;

use super::check;

/// A soup that was built: its table row, where it is, how many ingredients count.
#[derive(Debug, Clone)]
pub struct Built {
    /// The method, as the tables name it.
    pub method: &'static str,
    /// Its directory, relative to the work directory.
    pub dir: PathBuf,
    /// Ingredients in it (for a learned soup, those weighing more than 0.001).
    pub ingredients: usize,
}

/// Everything built and measured on one set of ingredients, before scoring.
#[derive(Debug, Clone)]
pub struct SetBuild {
    /// The soups, in table order after the best individual.
    pub soups: Vec<Built>,
    /// The greedy soup after each ingredient it took: its first member alone,
    /// then every accepted candidate, the last one being the greedy soup.
    pub greedy_path: Vec<PathBuf>,
    /// Mean angle between ingredients (deltas from the base when there is one).
    pub mean_angle_deg: f64,
    /// Whether the shared-init check flagged the ingredients.
    pub init_check_warns: bool,
    /// Warnings the commands printed, whole, each once.
    pub warnings: Vec<String>,
}

/// Runs the commands for the demo.
pub struct Runner<'a> {
    exe: PathBuf,
    dir: PathBuf,
    learned_evaluations: usize,
    seed: u64,
    interrupted: &'a AtomicBool,
}

/// The searches, after the uniform soup: method, output directory, command,
/// extra arguments (`{seed}` is the demo's seed). The learned soups by CMA-ES
/// and by gradient get the same budget.
const SEARCHES: [(&str, &str, &str, &[&str]); 6] = [
    ("greedy", "greedy", "greedy", &[]),
    (
        "greedy (random order)",
        "greedy-random",
        "greedy",
        &["--order", "random", "--seed", "{seed}"],
    ),
    ("pruned", "pruned", "pruned", &["--passes", "2"]),
    (
        "pruned (random order)",
        "pruned-random",
        "pruned",
        &["--passes", "2", "--order", "random", "--seed", "{seed}"],
    ),
    ("learned", "learned", "learned", &[]),
    ("learned (gradient)", "learned-gradient", "learned", &["--gradient"]),
];

impl<'a> Runner<'a> {
    /// A runner working in `dir`, with this executable.
    pub fn new(
        exe: &Path,
        dir: &Path,
        learned_evaluations: usize,
        seed: u64,
        interrupted: &'a AtomicBool,
    ) -> Self {
        Runner { exe: exe.to_owned(), dir: dir.to_owned(), learned_evaluations, seed, interrupted }
    }

    /// Builds every soup of the set `name` from `ingredients` (relative to the
    /// work directory), measuring angles from `base` when given.
    pub fn run_set(
        &self,
        name: &str,
        ingredients: &[PathBuf],
        base: Option<&Path>,
        say: &dyn Fn(String),
    ) -> anyhow::Result<SetBuild> {
        let root = PathBuf::from(name);
        let soups = root.join("soups");
        let run_dir = root.join("run");
        let inputs: Vec<OsString> =
            ingredients.iter().map(|i| i.clone().into_os_string()).collect();
        let mut warnings = Vec::new();
        let mut built = Vec::new();

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
        self.merge(&uniform, &inputs, &mut warnings)?;
        built.push(Built { method: "uniform", dir: uniform, ingredients: ingredients.len() });

        let template =
            format!("{} demo-eval {{model}} --split val", quote(&self.exe.to_string_lossy()));
        // By gradient, the score is the loss, and steps write its gradient.
        let loss_template = format!("{template} --loss --grad {{grad}}");
        let mut greedy_path = Vec::new();
        for (method, slug, command, extra) in SEARCHES {
            check(self.interrupted)?;
            say(format!("{name}: {method} soup"));
            let out = soups.join(slug);
            let mut args: Vec<OsString> = vec![command.into(), "--quiet".into(), "--json".into()];
            args.extend(["--jobs", "2", "--eval"].map(OsString::from));
            let by_gradient = extra.contains(&"--gradient");
            args.push(if by_gradient { &loss_template } else { &template }.into());
            args.extend([
                OsString::from("-o"),
                out.clone().into(),
                "--run-dir".into(),
                run_dir.clone().into(),
            ]);
            let seed = self.seed.to_string();
            args.extend(extra.iter().map(|a| OsString::from(a.replace("{seed}", &seed))));
            if command == "learned" {
                let budget = ingredients.len() + 1 + self.learned_evaluations;
                args.extend(["--budget".into(), budget.to_string().into()]);
            }
            args.extend(inputs.iter().cloned());
            let report: Value = serde_json::from_str(&self.soup(&args, &mut warnings)?)
                .with_context(|| format!("soup {command} did not print a report"))?;
            std::fs::write(
                self.dir.join(&soups).join(format!("{slug}.report.json")),
                report.to_string(),
            )?;
            let used = match report["weights"].as_array() {
                Some(w) if command == "learned" => {
                    w.iter().filter(|w| w.as_f64() > Some(1e-3)).count()
                }
                _ => report["members"].as_array().map_or(0, Vec::len),
            };
            if slug == "greedy" {
                greedy_path = self.greedy_path(&report, &out, &soups, &mut warnings)?;
            }
            built.push(Built { method, dir: out, ingredients: used });
        }

        let init_check_warns =
            angles["init_check"]["independent"].as_array().is_some_and(|p| !p.is_empty());
        warnings.sort();
        warnings.dedup();
        Ok(SetBuild {
            soups: built,
            greedy_path,
            mean_angle_deg: mean_off_diagonal(&angles["angles_deg"]),
            init_check_warns,
            warnings,
        })
    }

    /// The greedy soup after each ingredient it took, read from its report; the
    /// soups between the first ingredient and the final soup are merged anew.
    fn greedy_path(
        &self,
        report: &Value,
        greedy: &Path,
        soups: &Path,
        warnings: &mut Vec<String>,
    ) -> anyhow::Result<Vec<PathBuf>> {
        let names = |v: &Value| -> Option<Vec<OsString>> {
            v.as_array()?.iter().map(|m| m.as_str().map(OsString::from)).collect()
        };
        let first = names(&report["best_individual"]["members"])
            .filter(|m| m.len() == 1)
            .context("the greedy report names no best individual")?;
        let mut path = vec![PathBuf::from(&first[0])];
        let accepted =
            report["steps"].as_array().into_iter().flatten().filter(|s| s["accepted"] == true);
        let steps: Vec<Vec<OsString>> = accepted.filter_map(|s| names(&s["members"])).collect();
        for (k, members) in steps.iter().enumerate() {
            if k + 1 == steps.len() {
                path.push(greedy.to_owned());
            } else {
                let out = soups.join("greedy-path").join(format!("{:02}", members.len()));
                self.merge(&out, members, warnings)?;
                path.push(out);
            }
        }
        Ok(path)
    }

    /// `soup merge` of `inputs` into `out`.
    fn merge(
        &self,
        out: &Path,
        inputs: &[OsString],
        warnings: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let mut args: Vec<OsString> =
            vec!["merge".into(), "--quiet".into(), "-o".into(), out.into()];
        args.extend(inputs.iter().cloned());
        self.soup(&args, warnings).map(drop)
    }

    /// This executable.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// Runs `soup ARGS` in the work directory; returns its stdout and collects the
    /// warnings it printed, each whole (its first line and the indented or
    /// continued lines after it).
    pub fn soup(&self, args: &[OsString], warnings: &mut Vec<String>) -> anyhow::Result<String> {
        let output = Command::new(&self.exe)
            .current_dir(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", self.exe.display()))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        warnings.extend(warning_blocks(&stderr));
        if !output.status.success() {
            let command = args.first().map(|a| a.to_string_lossy()).unwrap_or_default();
            bail!("soup {command} failed ({}): {}", output.status, stderr.trim());
        }
        Ok(String::from_utf8(output.stdout)?)
    }
}

/// The warnings in a command's stderr: each from its `warning:` line up to the
/// next line that starts another message (`warning:` or `error:`).
fn warning_blocks(stderr: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    let mut open = false;
    for line in stderr.lines() {
        if line.starts_with("warning:") {
            blocks.push(line.to_owned());
            open = true;
        } else if line.starts_with("error:") {
            open = false;
        } else if let (true, Some(block)) = (open, blocks.last_mut()) {
            block.push('\n');
            block.push_str(line);
        }
    }
    blocks
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_is_kept_whole_and_ends_where_the_next_message_starts() {
        let stderr = "warning: these ingredients do not look fine-tuned:\n  a vs b: 0.010\n\
                      Fine-tunes of one model measure near 1.\nwarning: second\n  detail\n\
                      error: stop\nnot part of a warning\n";
        assert_eq!(
            warning_blocks(stderr),
            vec![
                "warning: these ingredients do not look fine-tuned:\n  a vs b: 0.010\n\
                 Fine-tunes of one model measure near 1."
                    .to_owned(),
                "warning: second\n  detail".to_owned(),
            ]
        );
        assert!(warning_blocks("").is_empty());
    }
}
