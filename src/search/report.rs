//! `report.json` and `report.md`: every step of a search and how the final soup
//! compares with the best single ingredient and the uniform soup.
//!
//! A run directory keeps the history of its searches: writing a report moves the
//! previous one (and its figure) aside as `report.N.md`, `report.N.json`,
//! `search.N.svg`, so the counts of a first run survive a rerun that finds
//! everything in the journal.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Serialize, Serializer};

use crate::search::learned::Learned;
use crate::search::scorer::Counts;
use crate::search::sequential::{Finish, Scored};
use crate::search::table::Table;
use crate::search::{Error, Result};

/// The file name of the search's figure beside `report.md`.
pub const FIGURE: &str = "search.svg";

/// A search's outcome in the form written to `report.json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `greedy` or `pruned`.
    pub method: String,
    /// The evaluator command template.
    pub evaluator: String,
    /// Whether lower scores were better.
    pub minimize: bool,
    /// The final soup's ingredients, as given on the command line.
    pub members: Vec<String>,
    /// Their weights (uniform).
    pub weights: Vec<f64>,
    /// The final soup's score.
    pub score: f64,
    /// Every ingredient's own score (`null` when its evaluation failed).
    pub individual_scores: serde_json::Map<String, serde_json::Value>,
    /// The best single ingredient.
    pub best_individual: Summary,
    /// The uniform soup of every ingredient, when it was scored.
    pub uniform: Option<Summary>,
    /// Every proposal in order.
    pub steps: Vec<StepReport>,
    /// What happened to the evaluations of this invocation.
    pub evaluations: Counts,
    /// Learned soups: the best coefficients, layer group → one weight per
    /// ingredient, groups in model order (a JSON object written in that order).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ordered_map")]
    pub coefficients: Option<Vec<(String, Vec<f64>)>>,
    /// Learned soups: the score of every evaluation and the best so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curve: Option<Vec<CurvePoint>>,
    /// Learned soups by gradient: Adam's settings, every step's loss, gradient
    /// norms and coefficients, the temperature and the gradient check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gradient: Option<crate::search::descent::DescentReport>,
    /// The figure's file name beside `report.md`, once written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub figure: Option<String>,
    /// With `--report-suite`: the final soup, the best individual and the
    /// uniform soup scored on a benchmark suite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suite: Option<SuiteReport>,
}

/// A benchmark suite's table in a search's report.
#[derive(Debug, Serialize)]
pub struct SuiteReport {
    /// The suite file, as given.
    pub file: String,
    /// The scores (its fields appear at this level in `report.json`).
    #[serde(flatten)]
    pub table: Table,
    /// What happened to the suite's evaluations.
    pub evaluations: Counts,
}

/// One evaluation of a learned search.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct CurvePoint {
    /// 1-based evaluation number.
    pub evaluation: usize,
    /// Its score (`null` when it failed).
    pub score: Option<f64>,
    /// The best score up to here.
    pub best: Option<f64>,
}

/// One row of the summary table.
#[derive(Debug, Serialize, Clone)]
pub struct Summary {
    /// The ingredients.
    pub members: Vec<String>,
    /// The score.
    pub score: f64,
    /// Whether the score came from the journal rather than this run.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reused: bool,
}

impl Summary {
    fn of(members: Vec<String>, score: f64) -> Summary {
        Summary { members, score, reused: false }
    }
}

/// One proposal in `report.json`.
#[derive(Debug, Serialize)]
pub struct StepReport {
    /// Candidate id (its journal entry and log files).
    pub candidate: String,
    /// What was proposed: `add` or `remove` and the ingredient.
    pub proposal: String,
    /// The candidate's ingredients.
    pub members: Vec<String>,
    /// Its score, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Why it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the soup took it.
    pub accepted: bool,
    /// Whether the score came from the journal instead of a new evaluation.
    pub reused: bool,
    /// Further metrics the evaluator reported.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// Builds the report of a finished search. `uniform` is the uniform soup's
    /// evaluation, when it was evaluated (by this search or, from the journal, by
    /// an earlier one); `counts` what happened to this invocation's evaluations.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        method: &str,
        evaluator: &str,
        minimize: bool,
        labels: &[String],
        individual: &[Scored],
        uniform: Option<&Scored>,
        finish: &Finish,
        counts: Counts,
    ) -> Report {
        let names =
            |members: &[usize]| members.iter().map(|&i| labels[i].clone()).collect::<Vec<_>>();
        let individual_scores = labels
            .iter()
            .zip(individual)
            .map(|(l, s)| {
                (l.clone(), s.score.as_ref().map_or(serde_json::Value::Null, |&v| v.into()))
            })
            .collect();
        let best_individual = individual
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.score.as_ref().ok().map(|&v| (i, v)))
            .reduce(|a, b| if better(minimize, b.1, a.1) { b } else { a })
            .map(|(i, score)| Summary::of(vec![labels[i].clone()], score))
            .unwrap_or(Summary::of(Vec::new(), f64::NAN));
        let steps: Vec<StepReport> = finish
            .steps
            .iter()
            .map(|s| StepReport {
                candidate: s.scored.candidate.clone(),
                proposal: proposal(s.change, labels),
                members: names(&s.members),
                score: s.scored.score.as_ref().ok().copied(),
                error: s.scored.score.as_ref().err().cloned(),
                accepted: s.accepted,
                reused: s.scored.reused,
                metrics: s.scored.metrics.clone(),
            })
            .collect();
        let members = names(finish.soup.members());
        let weights = vec![1.0 / members.len() as f64; members.len()];
        Report {
            method: method.to_owned(),
            evaluator: evaluator.to_owned(),
            minimize,
            members,
            weights,
            score: finish.score,
            individual_scores,
            best_individual,
            uniform: uniform.and_then(|u| {
                let score = *u.score.as_ref().ok()?;
                Some(Summary { members: labels.to_vec(), score, reused: u.reused })
            }),
            steps,
            evaluations: counts,
            coefficients: None,
            curve: None,
            gradient: None,
            figure: None,
            suite: None,
        }
    }

    /// Builds the report of a learned search. `weights` is the
    /// per-ingredient mean of the best coefficients over the layer groups (the
    /// coefficients themselves when there is one group).
    #[allow(clippy::too_many_arguments)]
    pub fn learned(
        evaluator: &str,
        minimize: bool,
        labels: &[String],
        individual: &[Scored],
        uniform: Option<f64>,
        learned: &Learned,
        counts: Counts,
    ) -> Report {
        let best_individual = best_individual(minimize, labels, individual);
        let best = learned.best.map(|b| &learned.evaluations[b]);
        let coefficients = best.map(|e| {
            e.mix.grouping.names.iter().cloned().zip(e.mix.weights.iter().cloned()).collect()
        });
        let weights = best.map_or_else(Vec::new, |e| {
            let groups = e.mix.weights.len() as f64;
            (0..labels.len())
                .map(|i| e.mix.weights.iter().map(|row| row[i]).sum::<f64>() / groups)
                .collect()
        });
        let mut best_so_far: Option<f64> = None;
        let mut curve = Vec::with_capacity(learned.evaluations.len());
        let mut steps = Vec::with_capacity(learned.evaluations.len());
        for (i, e) in learned.evaluations.iter().enumerate() {
            let score = e.scored.score.as_ref().ok().copied();
            let improved =
                score.is_some_and(|s| best_so_far.is_none_or(|b| better(minimize, s, b)));
            if improved {
                best_so_far = score;
            }
            curve.push(CurvePoint { evaluation: i + 1, score, best: best_so_far });
            steps.push(StepReport {
                candidate: e.scored.candidate.clone(),
                proposal: format!("generation {}", e.generation),
                members: labels.to_vec(),
                score,
                error: e.scored.score.as_ref().err().cloned(),
                accepted: improved,
                reused: e.scored.reused,
                metrics: e.scored.metrics.clone(),
            });
        }
        Report {
            method: "learned".to_owned(),
            evaluator: evaluator.to_owned(),
            minimize,
            members: labels.to_vec(),
            weights,
            score: best_so_far.unwrap_or(f64::NAN),
            individual_scores: individual_scores(labels, individual),
            best_individual,
            uniform: uniform.map(|score| Summary::of(labels.to_vec(), score)),
            steps,
            evaluations: counts,
            coefficients,
            curve: Some(curve),
            gradient: None,
            figure: None,
            suite: None,
        }
    }

    /// Writes `report.json`, `report.md` and, when given, the figure
    /// ([`FIGURE`], linked from `report.md`) into `dir`, after moving the previous
    /// report and figure aside as `report.N.*` and `search.N.svg`.
    pub fn write(&mut self, dir: &Path, figure: Option<&str>) -> Result<()> {
        let earlier = keep_previous(dir)?;
        self.figure = figure.map(|_| FIGURE.to_owned());
        if let Some(svg) = figure {
            let path = dir.join(FIGURE);
            std::fs::write(&path, svg).map_err(Error::io("write", &path))?;
        }
        let json = dir.join("report.json");
        let text = serde_json::to_string_pretty(self).map_err(Error::Report)?;
        std::fs::write(&json, text + "\n").map_err(Error::io("write", &json))?;
        let md = dir.join("report.md");
        let mut markdown = self.markdown();
        if earlier > 0 {
            let list: Vec<String> = (1..=earlier).map(|n| format!("report.{n}.md")).collect();
            let _ = write!(markdown, "\nEarlier runs in this directory: {}.\n", list.join(", "));
        }
        std::fs::write(&md, markdown).map_err(Error::io("write", &md))
    }

    /// The human report: summary rows, counts, the figure, then every step.
    pub fn markdown(&self) -> String {
        let mut md = format!("# {} soup\n\nEvaluator: `{}`", self.method, self.evaluator);
        md += if self.minimize { " (lower is better)\n\n" } else { " (higher is better)\n\n" };
        md += "| soup | score | ingredients |\n|---|---|---|\n";
        let mut row = |name: &str, s: &Summary| {
            let journal = if s.reused { " (journal)" } else { "" };
            let score = format_score(s.score);
            let _ = writeln!(md, "| {name} | {score}{journal} | {} |", s.members.len());
        };
        row("best individual", &self.best_individual);
        if let Some(u) = &self.uniform {
            row("uniform", u);
        }
        row(&self.method, &Summary::of(self.members.clone(), self.score));
        let _ = write!(
            md,
            "\nFinal soup: {}\n\nEvaluations in this run: {}.\n\n",
            self.members.join(", "),
            self.evaluations.describe()
        );
        if let Some(figure) = &self.figure {
            let _ = write!(md, "![score of every candidate]({figure})\n\n");
        }
        if let Some(coefficients) = &self.coefficients {
            md += "Learned coefficients (one column per ingredient, in the order given):\n\n";
            md += "| group | weights |\n|---|---|\n";
            for (group, row) in coefficients {
                let cells: Vec<String> = row.iter().map(|w| format!("{w:.4}")).collect();
                let _ = writeln!(md, "| {} | {} |", cell(group), cells.join(", "));
            }
            md += "\n";
        }
        if let Some(gradient) = &self.gradient {
            md += &gradient.markdown();
        }
        if let Some(suite) = &self.suite {
            let _ = write!(
                md,
                "## Benchmark suite\n\nThe soups scored on every evaluator of `{}` \
                 (evaluations: {}):\n\n{}\n",
                suite.file,
                suite.evaluations.describe(),
                suite.table.markdown()
            );
        }
        let metrics: BTreeSet<&String> = self.steps.iter().flat_map(|s| s.metrics.keys()).collect();
        md += "| step | candidate | proposal | score | accepted | size |";
        for name in &metrics {
            let _ = write!(md, " {} |", cell(name));
        }
        md += "\n|---|---|---|---|---|---|";
        md += &"---|".repeat(metrics.len());
        md += "\n";
        for (i, s) in self.steps.iter().enumerate() {
            let score = match (&s.score, &s.error) {
                (Some(v), _) => format_score(*v),
                (None, Some(e)) => format!("failed: {}", cell(e)),
                (None, None) => String::new(),
            };
            let reused = if s.reused { " (journal)" } else { "" };
            let accepted = if s.accepted { "yes" } else { "no" };
            let _ = write!(
                md,
                "| {} | {}{reused} | {} | {score} | {accepted} | {} |",
                i + 1,
                s.candidate,
                cell(&s.proposal),
                s.members.len()
            );
            for name in &metrics {
                let value = match s.metrics.get(*name) {
                    Some(serde_json::Value::Number(n)) => {
                        n.as_f64().map_or(n.to_string(), format_score)
                    }
                    Some(serde_json::Value::String(text)) => cell(text),
                    Some(other) => cell(&other.to_string()),
                    None => String::new(),
                };
                let _ = write!(md, " {value} |");
            }
            md += "\n";
        }
        md
    }
}

impl Counts {
    /// One sentence: `12 started, 11 finished (11 journaled), 1 cancelled, …`.
    pub fn describe(&self) -> String {
        let mut parts = vec![
            format!("{} started", self.started),
            format!("{} finished ({} journaled)", self.finished, self.journaled),
            format!("{} cancelled", self.cancelled),
            format!("{} reused from the journal", self.reused),
        ];
        if self.given > 0 {
            parts.push(format!("{} given with --scores", self.given));
        }
        parts.push(format!("{} failed", self.failed));
        if self.server_restarts > 0 {
            let times = if self.server_restarts == 1 { "time" } else { "times" };
            parts.push(format!("evaluation servers restarted {} {times}", self.server_restarts));
        }
        parts.join(", ")
    }
}

/// A score as the shortest decimal that reads back as the same `f64` (`0.8312`,
/// `-9e-9`, `1234.5`): never rounded, so two different scores never print alike.
pub fn format_score(v: f64) -> String {
    if v.is_nan() {
        return "none".to_owned();
    }
    format!("{v:?}")
}

/// `text` made safe for one Markdown table cell.
pub(crate) fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Moves `report.md`, `report.json` and the figure aside under the first free
/// number; returns how many earlier reports the directory now keeps.
fn keep_previous(dir: &Path) -> Result<usize> {
    let mut n = 1;
    while dir.join(format!("report.{n}.json")).exists()
        || dir.join(format!("report.{n}.md")).exists()
    {
        n += 1;
    }
    let mut moved = false;
    for (name, numbered) in [
        ("report.json", format!("report.{n}.json")),
        ("report.md", format!("report.{n}.md")),
        (FIGURE, format!("search.{n}.svg")),
    ] {
        let from = dir.join(name);
        if from.exists() {
            std::fs::rename(&from, dir.join(numbered)).map_err(Error::io("move aside", &from))?;
            moved = true;
        }
    }
    Ok(if moved { n } else { n - 1 })
}

/// Serialises a list of pairs as a JSON object, in list order.
fn ordered_map<S: Serializer>(
    pairs: &Option<Vec<(String, Vec<f64>)>>,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    match pairs {
        Some(pairs) => serializer.collect_map(pairs.iter().map(|(k, v)| (k, v))),
        None => serializer.serialize_none(),
    }
}

fn individual_scores(
    labels: &[String],
    individual: &[Scored],
) -> serde_json::Map<String, serde_json::Value> {
    labels
        .iter()
        .zip(individual)
        .map(|(l, s)| (l.clone(), s.score.as_ref().map_or(serde_json::Value::Null, |&v| v.into())))
        .collect()
}

fn best_individual(minimize: bool, labels: &[String], individual: &[Scored]) -> Summary {
    individual
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.score.as_ref().ok().map(|&v| (i, v)))
        .reduce(|a, b| if better(minimize, b.1, a.1) { b } else { a })
        .map(|(i, score)| Summary::of(vec![labels[i].clone()], score))
        .unwrap_or(Summary::of(Vec::new(), f64::NAN))
}

fn better(minimize: bool, a: f64, b: f64) -> bool {
    if minimize {
        a < b
    } else {
        a > b
    }
}

fn proposal(change: crate::search::candidate::Change, labels: &[String]) -> String {
    use crate::search::candidate::Change;
    match change {
        Change::Alone(i) => format!("alone {}", labels[i]),
        Change::Add(i) => format!("add {}", labels[i]),
        Change::Remove(i) => format!("remove {}", labels[i]),
        Change::Same => "uniform".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(candidate: &str, score: Option<f64>, metrics: serde_json::Value) -> StepReport {
        StepReport {
            candidate: candidate.into(),
            proposal: format!("add {candidate}|x"),
            members: vec!["a".into(), "b".into()],
            score,
            error: score.is_none().then(|| "exited with code 1".into()),
            accepted: score.is_some(),
            reused: false,
            metrics: metrics.as_object().cloned().unwrap_or_default(),
        }
    }

    fn report() -> Report {
        let members = vec!["a".to_owned(), "b".to_owned()];
        Report {
            method: "learned".into(),
            evaluator: "eval {model}".into(),
            minimize: false,
            members: members.clone(),
            weights: vec![0.5, 0.5],
            score: -9e-9,
            individual_scores: Default::default(),
            best_individual: Summary::of(vec!["a".into()], -1.2345678912e-8),
            uniform: Some(Summary { members, score: 0.8312, reused: true }),
            steps: vec![
                step("c1", Some(-9e-9), serde_json::json!({"loss": 0.25, "task": "q|a"})),
                step("c2", None, serde_json::json!({})),
            ],
            evaluations: Counts {
                started: 3,
                finished: 2,
                journaled: 2,
                cancelled: 1,
                ..Counts::default()
            },
            coefficients: Some(vec![
                ("embeddings".into(), vec![0.5, 0.5]),
                ("layers.2-9".into(), vec![0.25, 0.75]),
                ("layers.10-17".into(), vec![0.75, 0.25]),
                ("head".into(), vec![1.0, 0.0]),
            ]),
            curve: None,
            gradient: None,
            figure: Some(FIGURE.into()),
            suite: None,
        }
    }

    #[test]
    fn scores_keep_every_digit_they_need() {
        assert_eq!(format_score(-9e-9), "-9e-9");
        assert_eq!(format_score(0.8312), "0.8312");
        assert_eq!(format_score(1.0 / 3.0), "0.3333333333333333");
        assert_eq!(format_score(1234.5), "1234.5");
        assert_eq!(format_score(f64::NAN), "none");
        let md = report().markdown();
        assert!(md.contains("| learned | -9e-9 | 2 |"), "{md}");
        assert!(md.contains("| best individual | -1.2345678912e-8 | 1 |"), "{md}");
        assert!(!md.contains("0.000000"), "{md}");
    }

    #[test]
    fn markdown_has_the_uniform_row_metrics_counts_figure_and_model_order() {
        let md = report().markdown();
        assert!(md.contains("| uniform | 0.8312 (journal) | 2 |"), "{md}");
        assert!(
            md.contains("| step | candidate | proposal | score | accepted | size | loss | task |")
        );
        assert!(md.contains("| 1 | c1 | add c1\\|x | -9e-9 | yes | 2 | 0.25 | q\\|a |"), "{md}");
        assert!(md.contains("| 2 | c2 | add c2\\|x | failed: exited with code 1 | no | 2 |  |  |"));
        assert!(md.contains("3 started, 2 finished (2 journaled), 1 cancelled, 0 reused"), "{md}");
        assert!(md.contains("![score of every candidate](search.svg)"), "{md}");
        let at = |group: &str| md.find(&format!("| {group} |")).unwrap();
        assert!(at("embeddings") < at("layers.2-9"));
        assert!(at("layers.2-9") < at("layers.10-17") && at("layers.10-17") < at("head"));
        // report.json keeps that order too.
        let json = serde_json::to_string(&report()).unwrap();
        let pos = |k: &str| json.find(&format!("\"{k}\":[")).unwrap();
        assert!(pos("layers.2-9") < pos("layers.10-17"), "{json}");
    }

    #[test]
    fn writing_keeps_earlier_reports() {
        let dir = tempfile::TempDir::new().unwrap();
        for run in 0..3 {
            let mut r = report();
            r.score = f64::from(run);
            r.write(dir.path(), Some("<svg/>")).unwrap();
        }
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(read("report.1.json").contains("\"score\": 0.0"));
        assert!(read("report.2.json").contains("\"score\": 1.0"));
        assert!(read("report.json").contains("\"score\": 2.0"));
        assert_eq!(read("search.2.svg"), "<svg/>");
        assert!(
            read("report.md").contains("Earlier runs in this directory: report.1.md, report.2.md.")
        );
    }
}
