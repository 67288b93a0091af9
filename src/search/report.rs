//! `report.json` and `report.md`: every step of a search and how the final soup
//! compares with the best single ingredient and the uniform soup.

use std::fmt::Write as _;
use std::path::Path;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::search::learned::Learned;
use crate::search::sequential::{Finish, Scored};
use crate::search::{Error, Result};

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
    /// Evaluations run in this invocation, taken from the journal or a scores
    /// file, and failed.
    pub evaluations: Counts,
    /// Learned soups: the best coefficients, layer group → one weight per
    /// ingredient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coefficients: Option<BTreeMap<String, Vec<f64>>>,
    /// Learned soups: the score of every evaluation and the best so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curve: Option<Vec<CurvePoint>>,
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

/// How many evaluations a search ran, reused and saw fail.
#[derive(Debug, Serialize, Default, Clone, Copy)]
pub struct Counts {
    /// Run in this invocation.
    pub run: usize,
    /// Taken from the journal or a scores file.
    pub reused: usize,
    /// Failed (run or reused).
    pub failed: usize,
}

impl Report {
    /// Builds the report of a finished search.
    pub fn new(
        method: &str,
        evaluator: &str,
        minimize: bool,
        labels: &[String],
        individual: &[Scored],
        uniform: Option<&Scored>,
        finish: &Finish,
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
            .map(|(i, score)| Summary { members: vec![labels[i].clone()], score })
            .unwrap_or(Summary { members: Vec::new(), score: f64::NAN });
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
        let evaluations = Counts::of(
            individual.iter().chain(uniform).chain(finish.steps.iter().map(|s| &s.scored)),
        );
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
            uniform: uniform
                .and_then(|u| u.score.as_ref().ok())
                .map(|&score| Summary { members: labels.to_vec(), score }),
            steps,
            evaluations,
            coefficients: None,
            curve: None,
        }
    }

    /// Builds the report of a learned search. `before` are the evaluations made
    /// before CMA-ES started (a greedy start, the uniform soup). `weights` is the
    /// per-ingredient mean of the best coefficients over the layer groups (the
    /// coefficients themselves when there is one group).
    pub fn learned(
        evaluator: &str,
        minimize: bool,
        labels: &[String],
        individual: &[Scored],
        uniform: Option<f64>,
        before: &[Scored],
        learned: &Learned,
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
        let all =
            individual.iter().chain(before).chain(learned.evaluations.iter().map(|e| &e.scored));
        Report {
            method: "learned".to_owned(),
            evaluator: evaluator.to_owned(),
            minimize,
            members: labels.to_vec(),
            weights,
            score: best_so_far.unwrap_or(f64::NAN),
            individual_scores: individual_scores(labels, individual),
            best_individual,
            uniform: uniform.map(|score| Summary { members: labels.to_vec(), score }),
            steps,
            evaluations: Counts::of(all),
            coefficients,
            curve: Some(curve),
        }
    }

    /// Writes `report.json` and `report.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = dir.join("report.json");
        let text = serde_json::to_string_pretty(self).map_err(Error::Report)?;
        std::fs::write(&json, text + "\n").map_err(Error::io("write", &json))?;
        let md = dir.join("report.md");
        std::fs::write(&md, self.markdown()).map_err(Error::io("write", &md))
    }

    /// The human report: summary rows, then every step.
    pub fn markdown(&self) -> String {
        let mut md = format!("# {} soup\n\nEvaluator: `{}`", self.method, self.evaluator);
        md += if self.minimize { " (lower is better)\n\n" } else { " (higher is better)\n\n" };
        md += "| soup | score | ingredients |\n|---|---|---|\n";
        let mut row = |name: &str, s: &Summary| {
            let _ = writeln!(md, "| {name} | {} | {} |", fmt_score(s.score), s.members.len());
        };
        row("best individual", &self.best_individual);
        if let Some(u) = &self.uniform {
            row("uniform", u);
        }
        row(&self.method, &Summary { members: self.members.clone(), score: self.score });
        let _ = write!(
            md,
            "\nFinal soup: {}\n\nEvaluations: {} run, {} reused from the journal, {} failed.\n\n",
            self.members.join(", "),
            self.evaluations.run,
            self.evaluations.reused,
            self.evaluations.failed
        );
        if let Some(coefficients) = &self.coefficients {
            md += "Learned coefficients (one column per ingredient, in the order given):\n\n";
            md += "| group | weights |\n|---|---|\n";
            for (group, row) in coefficients {
                let cells: Vec<String> = row.iter().map(|w| format!("{w:.4}")).collect();
                let _ = writeln!(md, "| {group} | {} |", cells.join(", "));
            }
            md += "\n";
        }
        md += "| step | candidate | proposal | score | accepted | size |\n|---|---|---|---|---|---|\n";
        for (i, s) in self.steps.iter().enumerate() {
            let score = match (&s.score, &s.error) {
                (Some(v), _) => fmt_score(*v),
                (None, Some(e)) => format!("failed: {}", e.replace('|', "\\|")),
                (None, None) => String::new(),
            };
            let reused = if s.reused { " (journal)" } else { "" };
            let accepted = if s.accepted { "yes" } else { "no" };
            let _ = writeln!(
                md,
                "| {} | {}{reused} | {} | {score} | {accepted} | {} |",
                i + 1,
                s.candidate,
                s.proposal,
                s.members.len()
            );
        }
        md
    }
}

impl Counts {
    fn of<'a>(scored: impl Iterator<Item = &'a Scored>) -> Counts {
        let mut counts = Counts::default();
        for s in scored {
            if s.reused {
                counts.reused += 1;
            } else {
                counts.run += 1;
            }
            counts.failed += usize::from(s.score.is_err());
        }
        counts
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
        .map(|(i, score)| Summary { members: vec![labels[i].clone()], score })
        .unwrap_or(Summary { members: Vec::new(), score: f64::NAN })
}

fn better(minimize: bool, a: f64, b: f64) -> bool {
    if minimize {
        a < b
    } else {
        a > b
    }
}

fn fmt_score(v: f64) -> String {
    format!("{v:.6}")
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
