//! The real [`Scorer`]: a candidate is looked up in the journal, or materialised in
//! the scratch directory, scored by the user's evaluator, journaled and deleted.

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use crate::engine::merge::Destination;
use crate::recipe::Recipe;
use crate::search::candidate::{Change, Kitchen, Mix, Soup};
use crate::search::evaluate::{self, Evaluator};
use crate::search::journal::{self, Journal, Record};
use crate::search::sequential::{Scored, Scorer};
use crate::search::Result;

/// Scores candidates with an external evaluator, journaling every evaluation.
pub struct EvalScorer<'a> {
    /// Writes the candidates.
    pub kitchen: &'a Kitchen,
    /// Runs the user's command.
    pub evaluator: &'a Evaluator,
    /// Records and recalls evaluations.
    pub journal: &'a Journal,
    /// The evaluator command template (the journal's key).
    pub template: String,
    /// The ingredients as given on the command line.
    pub labels: Vec<String>,
    /// `greedy` or `pruned`: names candidates and goes into their recipe.
    pub method: String,
    /// Keep candidate directories after scoring.
    pub keep_candidates: bool,
    /// Evaluate again candidates whose journaled evaluation failed (the search
    /// was given retries), instead of reusing the failure.
    pub retry_failures: bool,
    next_id: AtomicUsize,
}

impl<'a> EvalScorer<'a> {
    /// A scorer whose candidate ids continue after the highest one in the journal
    /// (cancelled speculative evaluations leave gaps, so the count would not do).
    pub fn new(
        kitchen: &'a Kitchen,
        evaluator: &'a Evaluator,
        journal: &'a Journal,
        template: &str,
        labels: Vec<String>,
        method: &str,
    ) -> Self {
        EvalScorer {
            kitchen,
            evaluator,
            journal,
            template: template.to_owned(),
            labels,
            method: method.to_owned(),
            keep_candidates: false,
            retry_failures: false,
            next_id: AtomicUsize::new(next_free_id(journal, method)),
        }
    }

    fn recipe(&self, members: &[String], weights: &[f64]) -> BTreeMap<String, String> {
        let mut recipe = Recipe::linear(members, weights);
        recipe.search = Some(self.method.clone());
        recipe.to_metadata()
    }
}

impl EvalScorer<'_> {
    /// Scores the learned soup `mix`. Its journal key lists every ingredient with
    /// its weight; with several layer groups, each member is `GROUP|INGREDIENT`.
    pub fn score_mix(&self, mix: &Mix, cancel: &AtomicBool) -> Result<Scored> {
        let (members, weights) = self.mix_key(mix);
        self.evaluate(members, weights, cancel, |dest, metadata| {
            self.kitchen.materialise_mix(mix, dest, metadata).map(|_| ())
        })
    }

    /// The journal's members and weights for a mix.
    pub fn mix_key(&self, mix: &Mix) -> (Vec<String>, Vec<f64>) {
        let mut members = Vec::new();
        let mut weights = Vec::new();
        for (group, row) in mix.grouping.names.iter().zip(&mix.weights) {
            for (label, &w) in self.labels.iter().zip(row) {
                members.push(if mix.grouping.names.len() == 1 {
                    label.clone()
                } else {
                    format!("{group}|{label}")
                });
                weights.push(w);
            }
        }
        (members, weights)
    }

    /// The result journaled for these members, weights and command, or else a new
    /// evaluation: `write` materialises the candidate into scratch, the evaluator
    /// scores it, the journal records it, and the candidate is deleted.
    fn evaluate(
        &self,
        members: Vec<String>,
        weights: Vec<f64>,
        cancel: &AtomicBool,
        write: impl FnOnce(&Destination, BTreeMap<String, String>) -> crate::Result<()>,
    ) -> Result<Scored> {
        let (members, weights) = self.kitchen.key(members, weights);
        let journaled = self.journal.find(&members, &weights, &self.template);
        // A journaled failure is run again only when retries were asked for.
        if let Some(record) =
            journaled.filter(|r| r.outcome.score().is_some() || !self.retry_failures)
        {
            return Ok(Scored {
                candidate: record.candidate,
                score: record.outcome.score().ok_or_else(|| failure_reason(&record.outcome)),
                reused: true,
                cancelled: false,
                metrics: record.metrics,
            });
        }
        let id = format!("{}-{:04}", self.method, self.next_id.fetch_add(1, Ordering::SeqCst));
        let dir = self.kitchen.scratch().join(&id);
        let started = Instant::now();
        let dest =
            Destination { path: &dir, force: true, support_files_from: None, durable: false };
        write(&dest, self.recipe(&members, &weights))?;
        let materialise_seconds = started.elapsed().as_secs_f64();
        let evaluation = self.evaluator.evaluate(&id, &dir, Some(cancel));
        if !self.keep_candidates {
            let _ = fs::remove_dir_all(&dir);
        }
        let evaluation = evaluation?;
        let (outcome, metrics) = match evaluation.outcome {
            evaluate::Outcome::Score { score, metrics } => {
                (journal::Outcome::Score(score), metrics)
            }
            evaluate::Outcome::Failed { reason } => {
                (journal::Outcome::Failure(reason.to_string()), Default::default())
            }
            evaluate::Outcome::Cancelled => {
                return Ok(Scored {
                    candidate: id,
                    score: Err("cancelled".into()),
                    reused: false,
                    cancelled: true,
                    metrics: Default::default(),
                });
            }
        };
        let record = Record {
            candidate: id.clone(),
            members,
            weights,
            evaluator: self.template.clone(),
            outcome: outcome.clone(),
            metrics: metrics.clone(),
            materialise_seconds,
            evaluate_seconds: evaluation.seconds,
            attempts: evaluation.attempts,
            timestamp: journal::utc_timestamp(),
        };
        self.journal.append(record)?;
        Ok(Scored {
            candidate: id,
            score: outcome.score().ok_or_else(|| failure_reason(&outcome)),
            reused: false,
            cancelled: false,
            metrics,
        })
    }
}

impl Scorer for EvalScorer<'_> {
    fn score(&self, soup: &Soup, change: Change, cancel: &AtomicBool) -> Result<Scored> {
        let members: Vec<String> =
            soup.members_after(change).iter().map(|&i| self.labels[i].clone()).collect();
        let weights = vec![1.0 / members.len() as f64; members.len()];
        self.evaluate(members, weights, cancel, |dest, metadata| {
            self.kitchen.materialise(soup, change, dest, metadata).map(|_| ())
        })
    }
}

/// One more than the highest `METHOD-NNNN` id in the journal.
fn next_free_id(journal: &Journal, method: &str) -> usize {
    let prefix = format!("{method}-");
    journal
        .records()
        .iter()
        .filter_map(|r| r.candidate.strip_prefix(&prefix)?.parse::<usize>().ok())
        .max()
        .map_or(1, |highest| highest + 1)
}

fn failure_reason(outcome: &journal::Outcome) -> String {
    match outcome {
        journal::Outcome::Failure(reason) => reason.clone(),
        journal::Outcome::Score(_) => String::new(),
    }
}
