//! The demo's results as the model-soups paper prints them (method | val | ID test
//! | each shift | avg shift | ingredients) for the fine-tuned and the from-scratch
//! sets, the story's checks measured on them, on the terminal, as JSON on stdout
//! (`--json`), and in `report.md` and `report.json` in the work directory.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::{json, Map, Value};

use super::evaluate::Scores;

/// One row of a table: a soup, or the best individual.
#[derive(Debug, Clone)]
pub struct Row {
    /// The method: `best individual`, `uniform`, `greedy`, …
    pub method: String,
    /// Its accuracies.
    pub scores: Scores,
    /// Ingredients in it.
    pub ingredients: usize,
}

/// One model with its accuracies (an ingredient, the pretrained model).
#[derive(Debug, Clone)]
pub struct Point {
    /// Its directory name.
    pub name: String,
    /// Its accuracies.
    pub scores: Scores,
}

/// Everything measured on one set of ingredients.
#[derive(Debug, Clone)]
pub struct SetResult {
    /// `fine-tuned` or `from-scratch`.
    pub name: String,
    /// Every ingredient.
    pub ingredients: Vec<Point>,
    /// The rows, best individual first.
    pub rows: Vec<Row>,
    /// The greedy soup after each ingredient it took.
    pub greedy_path: Vec<Scores>,
    /// Mean angle between ingredients (deltas from the base when there is one).
    pub mean_angle_deg: f64,
    /// Whether that angle is between deltas from the pretrained model.
    pub relative_to_base: bool,
    /// Whether the shared-init check flagged the ingredients.
    pub init_check_warns: bool,
    /// Warnings the commands printed, whole.
    pub warnings: Vec<String>,
}

impl SetResult {
    /// The row of `method`.
    pub fn row(&self, method: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.method == method)
    }

    /// The key of this set in the JSON output.
    fn key(&self) -> String {
        self.name.replace('-', "_")
    }
}

/// The whole demo's outcome.
#[derive(Debug)]
pub struct Summary {
    /// The seed of the run.
    pub seed: u64,
    /// Where everything was written.
    pub work_dir: String,
    /// Accuracy of guessing: one over the number of classes.
    pub chance: f64,
    /// Wall time of the demo.
    pub seconds: f64,
    /// The names of the shifted test sets, in [`Scores::shifts`] order.
    pub shifts: Vec<&'static str>,
    /// The pretrained model with its linear-probe head: where fine-tuning starts.
    pub pretrained: Scores,
    /// The fine-tuned set, then the from-scratch set.
    pub sets: Vec<SetResult>,
}

/// One claim of the story and whether the measured numbers bear it out.
#[derive(Debug, Clone)]
pub struct Check {
    /// What is claimed, with the numbers.
    pub claim: String,
    /// Whether it holds.
    pub holds: bool,
}

/// Tolerance of the comparisons with a margin (accuracies are ratios of counts,
/// averaged, so a margin met exactly must not fail on rounding).
const EPS: f64 = 1e-9;

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The story's claims, measured: those of the model-soups paper.
pub fn checks(summary: &Summary) -> Vec<Check> {
    let mut out = Vec::new();
    let [tuned, scratch] = summary.sets.as_slice() else { return out };
    if let (Some(best), Some(greedy)) = (tuned.row("best individual"), tuned.row("greedy")) {
        let (b, g) = (&best.scores, &greedy.scores);
        out.push(Check {
            claim: format!(
                "fine-tuned: greedy soup ≥ best individual on val ({} vs {}), and above it \
                 on ID test ({} vs {}) or on average shift ({} vs {})",
                pct(g.val),
                pct(b.val),
                pct(g.test),
                pct(b.test),
                pct(g.avg_shift()),
                pct(b.avg_shift())
            ),
            holds: g.val >= b.val && (g.test > b.test || g.avg_shift() > b.avg_shift()),
        });
        let soups = tuned.rows.iter().filter(|r| r.method != best.method);
        if let Some(top) =
            soups.max_by(|a, b| a.scores.avg_shift().total_cmp(&b.scores.avg_shift()))
        {
            let gain = top.scores.avg_shift() - b.avg_shift();
            out.push(Check {
                claim: format!(
                    "fine-tuned: a soup beats the best individual on average shift by at \
                     least 0.5 points (best: {}, {} vs {}, {:+.1} points)",
                    top.method,
                    pct(top.scores.avg_shift()),
                    pct(b.avg_shift()),
                    100.0 * gain
                ),
                holds: gain >= 0.005 - EPS,
            });
        }
    }
    if let (Some(best), Some(uniform)) = (scratch.row("best individual"), scratch.row("uniform")) {
        out.push(Check {
            claim: format!(
                "from scratch: uniform soup within 5 points of chance on ID test ({} vs \
                 chance {}; best individual {})",
                pct(uniform.scores.test),
                pct(summary.chance),
                pct(best.scores.test)
            ),
            holds: (uniform.scores.test - summary.chance).abs() <= 0.05 + EPS,
        });
    }
    out.push(Check {
        claim: "the shared-init check warns on the from-scratch set only".into(),
        holds: scratch.init_check_warns && !tuned.init_check_warns,
    });
    out
}

/// The tables and the story's checks, for the terminal and report.md.
pub fn text(summary: &Summary) -> String {
    let mut out = String::new();
    for set in &summary.sets {
        let how = if set.relative_to_base {
            "fine-tuned from one pretrained model"
        } else {
            "trained from scratch, each from its own initialisation"
        };
        let _ = writeln!(
            out,
            "\n{}: {} ingredients {how}; chance {}",
            set.name,
            set.ingredients.len(),
            pct(summary.chance)
        );
        let mut header = vec!["method", "val", "ID test"];
        header.extend(summary.shifts.iter().copied());
        header.extend(["avg shift", "ingredients"]);
        let rows: Vec<Vec<String>> = set
            .rows
            .iter()
            .map(|row| {
                let s = &row.scores;
                let mut cells = vec![row.method.clone(), pct(s.val), pct(s.test)];
                cells.extend(s.shifts.iter().map(|&v| pct(v)));
                cells.extend([pct(s.avg_shift()), row.ingredients.to_string()]);
                cells
            })
            .collect();
        out.push_str(&markdown_table(&header, &rows));
        if set.relative_to_base {
            let p = &summary.pretrained;
            let _ = writeln!(
                out,
                "\npretrained model with a linear-probe head (where fine-tuning starts): \
                 ID test {}, avg shift {}",
                pct(p.test),
                pct(p.avg_shift())
            );
        }
        let kind =
            if set.relative_to_base { "between fine-tuned deltas" } else { "between raw weights" };
        let _ = writeln!(out, "mean angle {kind}: {:.1}°", set.mean_angle_deg);
        let check =
            if set.init_check_warns { "WARNS: not fine-tuned from one model" } else { "ok" };
        let _ = writeln!(out, "shared-init check: {check}");
        for warning in &set.warnings {
            for line in warning.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    let _ = writeln!(out, "\nThe story, as measured (seed {}):", summary.seed);
    for check in checks(summary) {
        let _ = writeln!(out, "  [{}] {}", if check.holds { "yes" } else { "no " }, check.claim);
    }
    out
}

/// A Markdown table with aligned columns, the first left-aligned, the rest right.
fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            let cells = rows.iter().map(|r| r[c].chars().count());
            cells.chain([header[c].chars().count()]).max().unwrap_or(0)
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let cells: Vec<String> = cells
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, &w))| if c == 0 { format!("{s:<w$}") } else { format!("{s:>w$}") })
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = line(&mut header.iter().map(|h| h.to_string()));
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(c, &w)| if c == 0 { "-".repeat(w + 2) } else { format!("{}:", "-".repeat(w + 1)) })
        .collect();
    out += &format!("|{}|\n", rule.join("|"));
    for row in rows {
        out += &line(&mut row.iter().cloned());
    }
    out
}

/// A model's accuracies as JSON: `val`, `test`, `shifts` by name, `avg_shift`.
fn scores_json(scores: &Scores, shifts: &[&str]) -> Map<String, Value> {
    let named: Map<String, Value> =
        shifts.iter().zip(&scores.shifts).map(|(n, &v)| (n.to_string(), v.into())).collect();
    let mut out = Map::new();
    out.insert("val".into(), scores.val.into());
    out.insert("test".into(), scores.test.into());
    out.insert("shifts".into(), named.into());
    out.insert("avg_shift".into(), scores.avg_shift().into());
    out
}

/// The tables as `soup demo --json` prints them: `{"seed", "sets": {"fine_tuned":
/// {"chance", "rows": [{"method", "val", "test", "shifts", "avg_shift",
/// "ingredients"}]}, "from_scratch": …}}`, accuracies as fractions.
pub fn tables_json(summary: &Summary) -> Value {
    let sets: Map<String, Value> = summary
        .sets
        .iter()
        .map(|set| {
            let rows: Vec<Value> = set
                .rows
                .iter()
                .map(|row| {
                    let mut object = Map::new();
                    object.insert("method".into(), row.method.clone().into());
                    object.extend(scores_json(&row.scores, &summary.shifts));
                    object.insert("ingredients".into(), row.ingredients.into());
                    Value::Object(object)
                })
                .collect();
            (set.key(), json!({ "chance": summary.chance, "rows": rows }))
        })
        .collect();
    json!({ "seed": summary.seed, "sets": sets })
}

/// `report.json`: the tables of [`tables_json`], plus the checks, the shifts in
/// table order, every ingredient's and the pretrained model's accuracies, the
/// greedy soup's path, angles and warnings.
fn report_json(summary: &Summary) -> Value {
    let mut report = tables_json(summary);
    let points = |points: &[Point]| -> Vec<Value> {
        let with_name = |p: &Point| {
            let mut object = Map::new();
            object.insert("name".into(), p.name.clone().into());
            object.extend(scores_json(&p.scores, &summary.shifts));
            Value::Object(object)
        };
        points.iter().map(with_name).collect()
    };
    for set in &summary.sets {
        let path: Vec<Value> =
            set.greedy_path.iter().map(|s| scores_json(s, &summary.shifts).into()).collect();
        let extra = json!({
            "ingredient_scores": points(&set.ingredients),
            "greedy_path": path,
            "mean_angle_deg": set.mean_angle_deg,
            "angles_between": if set.relative_to_base { "fine-tuned deltas" } else { "raw weights" },
            "init_check_warns": set.init_check_warns,
            "warnings": set.warnings,
        });
        if let (Some(Value::Object(target)), Value::Object(extra)) =
            (report["sets"].get_mut(set.key()), extra)
        {
            target.extend(extra);
        }
    }
    let checks: Vec<Value> = checks(summary)
        .into_iter()
        .map(|c| json!({ "claim": c.claim, "holds": c.holds }))
        .collect();
    let extra = json!({
        "work_dir": summary.work_dir,
        "seconds": summary.seconds,
        "shifts": summary.shifts,
        "pretrained": scores_json(&summary.pretrained, &summary.shifts),
        "checks": checks,
    });
    if let (Value::Object(target), Value::Object(extra)) = (&mut report, extra) {
        target.extend(extra);
    }
    report
}

/// Writes report.md and report.json into `dir`.
pub fn write(summary: &Summary, dir: &Path) -> anyhow::Result<()> {
    let md = format!(
        "# soup demo (seed {})\n\nAccuracy of soups chosen on val, reported on the \
         in-distribution test set and on {} shifted test sets ({:.0} s).\n\
         Pictures: `figure1.svg` (ID test vs average shift, every ingredient and soup), \
         `greedy.svg` (the greedy soup as it grows), `fine-tuned/angles.svg`, \
         `from-scratch/angles.svg`.\n{}",
        summary.seed,
        summary.shifts.len(),
        summary.seconds,
        text(summary)
    );
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).with_context(|| format!("cannot write {name}"))
    };
    write("report.md", md)?;
    write("report.json", serde_json::to_string_pretty(&report_json(summary))? + "\n")
}
