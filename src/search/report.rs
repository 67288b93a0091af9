//! `report.json` and `report.md`: every step of a search and how the final soup
//! compares with the best single ingredient and the uniform soup.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::search::sequential::{Finish, Scored};

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
        uniform: Option<f64>,
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
            })
            .collect();
        let all = individual.iter().chain(finish.steps.iter().map(|s| &s.scored));
        let mut evaluations = Counts::default();
        for s in all {
            if s.reused {
                evaluations.reused += 1;
            } else {
                evaluations.run += 1;
            }
            evaluations.failed += usize::from(s.score.is_err());
        }
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
            uniform: uniform.map(|score| Summary { members: labels.to_vec(), score }),
            steps,
            evaluations,
        }
    }

    /// Writes `report.json` and `report.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = dir.join("report.json");
        let text = serde_json::to_string_pretty(self).map_err(Error::Json)?;
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
