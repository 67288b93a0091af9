//! The real [`Scorer`]: a candidate is looked up in the journal, or materialised in
//! the scratch directory, scored by the user's evaluator, journaled and deleted.
//!
//! It also keeps the search's honest accounting ([`Counts`]): every evaluation it
//! starts ends either finished (and then journaled) or cancelled, whether or not
//! the search ends up using its result; results taken from the journal are
//! counted apart. And it tells an observer when each evaluation starts and ends,
//! for live progress.

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::analysis::gradient::gradient_dots;
use crate::engine::execute::RunOptions;
use crate::engine::merge::Destination;
use crate::recipe::Recipe;
use crate::search::candidate::{Change, Kitchen, Mix, Soup};
use crate::search::evaluate::{self, Evaluate, Evaluation, Request};
use crate::search::groups::Grouping;
use crate::search::journal::{self, Gradient, Journal, Record};
use crate::search::sequential::{Scored, Scorer};
use crate::search::Result;

/// What happened to the evaluations of one invocation of a search.
#[derive(Debug, Serialize, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Evaluations started (an evaluator process run, or a request sent to a
    /// server), speculative ones included.
    pub started: usize,
    /// Of those, the ones that ran to a result (a score or a failure).
    pub finished: usize,
    /// Results appended to the journal (every finished evaluation is).
    pub journaled: usize,
    /// Started but stopped before a result: made stale by an accepted proposal,
    /// or interrupted. Never journaled.
    pub cancelled: usize,
    /// Results taken from the journal instead of evaluating.
    pub reused: usize,
    /// Individual scores given with `--scores`, not evaluated.
    pub given: usize,
    /// Results that are failures (finished or reused).
    pub failed: usize,
    /// Times an evaluation server was started again (after it died, timed out or
    /// was stopped).
    pub server_restarts: usize,
}

/// Live progress of one evaluation, for an observer.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// An evaluation starts (after its candidate was written).
    Started {
        /// The candidate's id.
        candidate: &'a str,
        /// What it is: `add run-b/`, `uniform`, `coefficients`, …
        proposal: &'a str,
    },
    /// An evaluation ran to a result (journaled already).
    Finished {
        /// What was scored.
        scored: &'a Scored,
        /// What it is, as in `Started`.
        proposal: &'a str,
        /// Seconds spent writing and evaluating it.
        seconds: f64,
    },
    /// A result was taken from the journal instead of evaluating.
    Reused {
        /// What was found.
        scored: &'a Scored,
    },
    /// An evaluation was stopped before its result.
    Cancelled {
        /// The candidate's id.
        candidate: &'a str,
    },
}

/// Receives [`Event`]s, from any evaluation thread.
pub type Observer<'a> = &'a (dyn Fn(Event<'_>) + Sync);

/// The counts behind [`Counts`], and the bookkeeping every evaluation shares,
/// whether a search or a benchmark suite ([`crate::search::bench`]) runs it.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    started: AtomicUsize,
    finished: AtomicUsize,
    journaled: AtomicUsize,
    cancelled: AtomicUsize,
    reused: AtomicUsize,
    failed: AtomicUsize,
}

/// One evaluation to run on a written candidate.
pub(crate) struct Job<'a> {
    /// The candidate: id, directory, members and weights as the evaluator sees
    /// them.
    pub request: Request<'a>,
    /// The journal key's members and weights: the request's, with the
    /// temperature as one more member when there is one.
    pub key_members: &'a [String],
    /// One weight per key member.
    pub key_weights: &'a [f64],
    /// What scores it.
    pub evaluator: &'a dyn Evaluate,
    /// The journal key of its evaluator.
    pub key: &'a str,
    /// What it is, for the observer.
    pub proposal: &'a str,
    /// Seconds spent writing the candidate.
    pub materialise_seconds: f64,
}

impl Tally {
    /// The counts so far (`given` is the caller's to fill).
    pub(crate) fn counts(&self, server_restarts: usize) -> Counts {
        let get = |n: &AtomicUsize| n.load(Ordering::SeqCst);
        Counts {
            started: get(&self.started),
            finished: get(&self.finished),
            journaled: get(&self.journaled),
            cancelled: get(&self.cancelled),
            reused: get(&self.reused),
            given: 0,
            failed: get(&self.failed),
            server_restarts,
        }
    }

    /// Counts a result taken from the journal and returns it as a score, with
    /// its gradient.
    pub(crate) fn reuse(&self, record: Record) -> (Scored, Option<Gradient>) {
        self.reused.fetch_add(1, Ordering::SeqCst);
        self.failed.fetch_add(usize::from(record.outcome.score().is_none()), Ordering::SeqCst);
        reused(record)
    }

    /// Runs `job`, then `after` (to delete the candidate, say), counts the
    /// evaluation, journals its result and tells `observe` when it starts and
    /// ends: what every evaluation goes through once its candidate is written, in
    /// a search or a suite. A cancelled one is counted (when its command had
    /// started) but never journaled, and comes back with [`Scored::cancelled`].
    /// `take` is called on the metrics of a scored evaluation, before it is
    /// journaled, to take what else the evaluation gave (a learned search's
    /// gradient): its gradient is journaled with the score, and its error, after
    /// the score is journaled, is the result.
    pub(crate) fn run(
        &self,
        journal: &Journal,
        job: Job<'_>,
        cancel: &AtomicBool,
        after: impl FnOnce(),
        take: impl FnOnce(&mut evaluate::Metrics, &Evaluation) -> Option<Result<Gradient>>,
        observe: &dyn Fn(Event<'_>),
    ) -> Result<(Scored, Option<Gradient>)> {
        let id = job.request.candidate;
        observe(Event::Started { candidate: id, proposal: job.proposal });
        let evaluation = job.evaluator.evaluate(&job.request, Some(cancel));
        after();
        let evaluation = match evaluation {
            Ok(evaluation) => evaluation,
            Err(e) => {
                observe(Event::Cancelled { candidate: id });
                return Err(e.into());
            }
        };
        let seconds = job.materialise_seconds + evaluation.seconds;
        let (scored, gradient) = self.settle(journal, &job, evaluation, take)?;
        if scored.cancelled {
            observe(Event::Cancelled { candidate: id });
        } else {
            observe(Event::Finished { scored: &scored, proposal: job.proposal, seconds });
        }
        Ok((scored, gradient))
    }

    /// Counts an evaluation that ran and journals its result (unless cancelled).
    fn settle(
        &self,
        journal: &Journal,
        job: &Job<'_>,
        evaluation: Evaluation,
        take: impl FnOnce(&mut evaluate::Metrics, &Evaluation) -> Option<Result<Gradient>>,
    ) -> Result<(Scored, Option<Gradient>)> {
        let id = job.request.candidate.to_owned();
        // Counted only when the evaluator did start: a cancel can come first.
        if evaluation.attempts > 0 {
            self.started.fetch_add(1, Ordering::SeqCst);
        }
        let mut log = None;
        let (outcome, mut metrics) = match &evaluation.outcome {
            evaluate::Outcome::Score { score, metrics } => {
                (journal::Outcome::Score(*score), metrics.clone())
            }
            evaluate::Outcome::Failed { reason } => {
                log = Some(evaluation.stderr_log.clone());
                (journal::Outcome::Failure(reason.to_string()), Default::default())
            }
            evaluate::Outcome::Cancelled => {
                if evaluation.attempts > 0 {
                    self.cancelled.fetch_add(1, Ordering::SeqCst);
                }
                let scored = Scored {
                    candidate: id,
                    score: Err("cancelled".into()),
                    reused: false,
                    cancelled: true,
                    metrics: Default::default(),
                    log: None,
                };
                return Ok((scored, None));
            }
        };
        let gradient = match outcome.score() {
            Some(_) => take(&mut metrics, &evaluation),
            None => None,
        };
        self.finished.fetch_add(1, Ordering::SeqCst);
        self.failed.fetch_add(usize::from(outcome.score().is_none()), Ordering::SeqCst);
        let record = Record {
            candidate: id.clone(),
            members: job.key_members.to_vec(),
            weights: job.key_weights.to_vec(),
            evaluator: job.key.to_owned(),
            outcome: outcome.clone(),
            metrics: metrics.clone(),
            gradient: gradient.as_ref().and_then(|g| g.as_ref().ok().cloned()),
            materialise_seconds: job.materialise_seconds,
            evaluate_seconds: evaluation.seconds,
            attempts: evaluation.attempts,
            timestamp: journal::utc_timestamp(),
        };
        journal.append(record)?;
        self.journaled.fetch_add(1, Ordering::SeqCst);
        let gradient = gradient.transpose()?;
        let scored = Scored {
            candidate: id,
            score: outcome.score().ok_or_else(|| failure_reason(&outcome)),
            reused: false,
            cancelled: false,
            metrics,
            log,
        };
        Ok((scored, gradient))
    }
}

/// Scores candidates with an external evaluator, journaling every evaluation.
pub struct EvalScorer<'a> {
    /// Writes the candidates.
    pub kitchen: &'a Kitchen,
    /// Runs the user's command or server.
    pub evaluator: &'a dyn Evaluate,
    /// Records and recalls evaluations.
    pub journal: &'a Journal,
    /// What the journal records as the evaluator: results journaled under the
    /// same key are reused (EVALUATOR.md, "The journal's key").
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
    /// Told when evaluations start and end.
    pub observer: Option<Observer<'a>>,
    /// The logit temperature every candidate is scored at, when the search learns
    /// one (a learned search by gradient gives each of its own); it is part of
    /// every journal key.
    pub temperature: Option<f64>,
    next_id: AtomicUsize,
    tally: Tally,
}

impl<'a> EvalScorer<'a> {
    /// A scorer whose candidate ids continue after the highest one in the journal
    /// (cancelled speculative evaluations leave gaps, so the count would not do).
    /// The journal key is the evaluator's own ([`Evaluate::journal_key`]).
    pub fn new(
        kitchen: &'a Kitchen,
        evaluator: &'a dyn Evaluate,
        journal: &'a Journal,
        labels: Vec<String>,
        method: &str,
    ) -> Self {
        EvalScorer {
            kitchen,
            evaluator,
            journal,
            template: evaluator.journal_key(),
            labels,
            method: method.to_owned(),
            keep_candidates: false,
            retry_failures: false,
            observer: None,
            temperature: None,
            next_id: AtomicUsize::new(next_free_id(journal, method)),
            tally: Tally::default(),
        }
    }

    /// The evaluations of this scorer so far (`given` is the caller's to fill).
    pub fn counts(&self) -> Counts {
        self.tally.counts(self.evaluator.restarts())
    }

    /// Looks up the journal for the soup `members` × `weights` under this
    /// scorer's key, without evaluating (the uniform soup for a report, say).
    pub fn journaled(&self, members: &[usize]) -> Option<Scored> {
        let labels: Vec<String> = members.iter().map(|&i| self.labels[i].clone()).collect();
        let weights = vec![1.0 / labels.len() as f64; labels.len()];
        let (labels, weights) = self.kitchen.key(labels, weights);
        let (labels, weights) = with_temperature(labels, weights, self.temperature);
        self.journal.find(&labels, &weights, &self.template).map(|r| reused(r).0)
    }

    fn observe(&self, event: Event<'_>) {
        if let Some(observer) = self.observer {
            observer(event);
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
        let ask = Ask { gradient: None, temperature: self.temperature };
        self.score_point(mix, ask, cancel).map(|(scored, _)| scored)
    }

    /// Scores the learned soup `mix` at `ask.temperature` and, when `ask` has a
    /// grouping, takes the gradient of its loss with respect to the coefficients:
    /// the evaluator writes `∇θL` to a file beside the candidate, one streaming
    /// pass takes its dot products with the ingredients per group of `mix`
    /// ([`gradient_dots`]), and the file is deleted (kept with
    /// `keep_candidates`). The gradient is journaled with the score, so a
    /// journaled result is reused only when it has one. A gradient file that
    /// cannot be used, or a missing `"grad_temperature"`, is an error: the score
    /// is journaled (without a gradient) and the search stops.
    pub fn score_point(
        &self,
        mix: &Mix,
        ask: Ask<'_>,
        cancel: &AtomicBool,
    ) -> Result<(Scored, Option<Gradient>)> {
        let (members, weights) = self.mix_key(mix);
        self.evaluate(members, weights, "coefficients", ask, cancel, |dest, metadata| {
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
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        members: Vec<String>,
        weights: Vec<f64>,
        proposal: &str,
        ask: Ask<'_>,
        cancel: &AtomicBool,
        write: impl FnOnce(&Destination, BTreeMap<String, String>) -> crate::Result<()>,
    ) -> Result<(Scored, Option<Gradient>)> {
        let (members, weights) = self.kitchen.key(members, weights);
        let (key_members, key_weights) =
            with_temperature(members.clone(), weights.clone(), ask.temperature);
        let journaled = self.journal.find(&key_members, &key_weights, &self.template);
        // A journaled failure is run again only when retries were asked for; a
        // score, only when it lacks the gradient asked for.
        let usable = |r: &Record| match r.outcome.score() {
            Some(_) => ask.gradient.is_none() || r.gradient.is_some(),
            None => !self.retry_failures,
        };
        if let Some(record) = journaled.filter(usable) {
            let (scored, gradient) = self.tally.reuse(record);
            self.observe(Event::Reused { scored: &scored });
            return Ok((scored, gradient.filter(|_| ask.gradient.is_some())));
        }
        let id = format!("{}-{:04}", self.method, self.next_id.fetch_add(1, Ordering::SeqCst));
        let dir = self.kitchen.scratch().join(&id);
        let grad_file =
            ask.gradient.map(|_| self.kitchen.scratch().join(format!("{id}.grad.safetensors")));
        let started = Instant::now();
        let dest =
            Destination { path: &dir, force: true, support_files_from: None, durable: false };
        write(&dest, self.recipe(&members, &weights))?;
        let materialise_seconds = started.elapsed().as_secs_f64();
        let request = Request {
            candidate: &id,
            model_dir: &dir,
            members: &members,
            weights: &weights,
            gradient: grad_file.as_deref(),
            temperature: ask.temperature,
        };
        let job = Job {
            request,
            key_members: &key_members,
            key_weights: &key_weights,
            evaluator: self.evaluator,
            key: &self.template,
            proposal,
            materialise_seconds,
        };
        let after = || {
            if !self.keep_candidates {
                let _ = fs::remove_dir_all(&dir);
            }
        };
        // The gradient, when one was asked for and the evaluation gave a score.
        let take = |metrics: &mut evaluate::Metrics, evaluation: &Evaluation| {
            let (grouping, file) = (ask.gradient?, grad_file.as_deref()?);
            let taken = self.take_gradient(file, grouping, metrics, ask, cancel);
            Some(taken.map_err(|problem| match problem {
                Taken::File(e) => e.into(),
                Taken::Temperature(problem) => crate::search::Error::GradTemperature {
                    candidate: id.clone(),
                    problem,
                    log: evaluation.stdout_log.clone(),
                },
            }))
        };
        let observe = |event: Event<'_>| self.observe(event);
        let result = self.tally.run(self.journal, job, cancel, after, take, &observe);
        self.drop_gradient_file(grad_file.as_deref());
        result
    }

    /// The dot products of the gradient in `file` with the ingredients, per group
    /// of `grouping`, and `"grad_temperature"` (taken out of `metrics`) when the
    /// temperature is learned.
    fn take_gradient(
        &self,
        file: &std::path::Path,
        grouping: &Grouping,
        metrics: &mut evaluate::Metrics,
        ask: Ask<'_>,
        cancel: &AtomicBool,
    ) -> std::result::Result<Gradient, Taken> {
        let temperature = match ask.temperature {
            None => None,
            Some(_) => match metrics.remove("grad_temperature") {
                Some(serde_json::Value::Number(n)) => match n.as_f64() {
                    Some(g) if g.is_finite() => Some(g),
                    _ => return Err(Taken::Temperature(format!("\"grad_temperature\" is {n}"))),
                },
                Some(other) => {
                    let problem = format!("\"grad_temperature\" is {other}, not a number");
                    return Err(Taken::Temperature(problem));
                }
                None => {
                    let problem = "the result has no \"grad_temperature\"".to_owned();
                    return Err(Taken::Temperature(problem));
                }
            },
        };
        let run = RunOptions {
            threads: self.kitchen.threads,
            chunk_elements: self.kitchen.chunk_elements,
            progress: None,
            cancel: Some(cancel),
        };
        let groups = grouping.names.len();
        let group_of = |name: &str| Some(grouping.group(name));
        let found = gradient_dots(file, self.kitchen.ingredients(), groups, &group_of, &run)
            .map_err(Taken::File)?;
        Ok(Gradient {
            dots: found.dots.into_iter().flatten().collect(),
            norm: found.norm_sq.sqrt(),
            temperature,
        })
    }

    /// Deletes a gradient file once used (unless candidates are kept).
    fn drop_gradient_file(&self, file: Option<&std::path::Path>) {
        if let (Some(file), false) = (file, self.keep_candidates) {
            let _ = fs::remove_file(file);
        }
    }
}

/// What a learned search by gradient asks of an evaluation beyond its score.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask<'a> {
    /// Take the gradient with respect to the coefficients of these groups.
    pub gradient: Option<&'a Grouping>,
    /// Score the candidate at this logit temperature.
    pub temperature: Option<f64>,
}

/// Why a gradient could not be taken.
enum Taken {
    /// The gradient file (or the pass over it) failed.
    File(crate::Error),
    /// `"grad_temperature"` is missing or not a finite number.
    Temperature(String),
}

/// A journal key with the temperature as one more member (`temperature:`, with
/// β as its weight), when there is one.
fn with_temperature(
    mut members: Vec<String>,
    mut weights: Vec<f64>,
    temperature: Option<f64>,
) -> (Vec<String>, Vec<f64>) {
    if let Some(beta) = temperature {
        members.push(TEMPERATURE_MEMBER.to_owned());
        weights.push(beta);
    }
    (members, weights)
}

/// The journal member that records the temperature a candidate was scored at.
pub const TEMPERATURE_MEMBER: &str = "temperature:";

impl Scorer for EvalScorer<'_> {
    fn score(&self, soup: &Soup, change: Change, cancel: &AtomicBool) -> Result<Scored> {
        let members: Vec<String> =
            soup.members_after(change).iter().map(|&i| self.labels[i].clone()).collect();
        let weights = vec![1.0 / members.len() as f64; members.len()];
        let proposal = match change {
            Change::Alone(i) => self.labels[i].clone(),
            Change::Add(i) => format!("add {}", self.labels[i]),
            Change::Remove(i) => format!("remove {}", self.labels[i]),
            Change::Same => format!("soup of {}", members.len()),
        };
        let ask = Ask { gradient: None, temperature: self.temperature };
        let evaluated =
            self.evaluate(members, weights, &proposal, ask, cancel, |dest, metadata| {
                self.kitchen.materialise(soup, change, dest, metadata).map(|_| ())
            });
        evaluated.map(|(scored, _)| scored)
    }
}

/// A journaled result, as a score taken from the journal, and its gradient.
fn reused(record: Record) -> (Scored, Option<Gradient>) {
    let scored = Scored {
        candidate: record.candidate,
        score: record.outcome.score().ok_or_else(|| failure_reason(&record.outcome)),
        reused: true,
        cancelled: false,
        metrics: record.metrics,
        log: None,
    };
    (scored, record.gradient)
}

/// One more than the highest `METHOD-NNNN` id in the journal.
pub(crate) fn next_free_id(journal: &Journal, method: &str) -> usize {
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
