//! Running a benchmark suite: every model on every evaluator of a [`Suite`],
//! through the same evaluator runner, journal and accounting as the searches.
//!
//! Each evaluator is an [`Evaluator`] (with its score file, if any) or a
//! [`Server`] whose run directory is `RUN_DIR/NAME/` (its `logs/`, and `out/` for
//! `{out}`), so benchmarks never share a log name; all of them draw on one set of
//! slots, so `--jobs` (or `--devices`) bounds the evaluations running at once,
//! whichever benchmark they belong to. Every result goes to one journal
//! (`RUN_DIR/journal.jsonl`) under the evaluator's key, with the model as its one
//! member (or, for a soup of a search, its members and weights, as the search
//! journals them), so a rerun only evaluates what is missing. A model is known
//! by that key, not by its bytes: a model rewritten in place needs a fresh run
//! directory.
//!
//! Pairs run benchmark by benchmark (all models on the first, then the second…),
//! `jobs` at a time, and a benchmark's servers are shut down as soon as its last
//! pair is done, so a suite of servers holds few of them at once. A model that
//! must be written first (a soup materialised on demand) is written once, before
//! its first evaluation that is not in the journal, and removed at the end.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::Instant;

use crate::search::evaluate::{Evaluate, Evaluator, Options, Request};
use crate::search::journal::Journal;
use crate::search::scorer::{next_free_id, Counts, Event, Job, Observer, Tally};
use crate::search::sequential::Scored;
use crate::search::server::Server;
use crate::search::suite::{Command, Suite};
use crate::search::table::Table;
use crate::search::Result;

/// Writes a model's directory before its first evaluation.
pub type Write<'a> = &'a (dyn Fn(&Path) -> Result<()> + Sync);

/// One model to score on the suite.
pub struct Model<'a> {
    /// Its row in the table: the path as given, or a name (`uniform soup`).
    pub label: String,
    /// The directory (or file) the evaluators get as `{model}`.
    pub dir: PathBuf,
    /// Its journal key's members; with [`Model::weights`], what identifies it.
    pub members: Vec<String>,
    /// One weight per member.
    pub weights: Vec<f64>,
    /// Writes `dir` when an evaluation needs it, if it is not there already;
    /// `dir` is then removed at the end.
    pub write: Option<Write<'a>>,
}

impl Model<'_> {
    /// A model on disk, known by its path as given.
    pub fn at(path: &Path) -> Model<'static> {
        let label = path.display().to_string();
        Model {
            label: label.clone(),
            dir: path.to_owned(),
            members: vec![label],
            weights: vec![1.0],
            write: None,
        }
    }

    fn same_as(&self, other: &Model<'_>) -> bool {
        let pairs = |m: &Model<'_>| {
            let mut p: Vec<(String, u64)> = m
                .members
                .iter()
                .zip(&m.weights)
                .map(|(s, w)| (s.clone(), (w + 0.0).to_bits()))
                .collect();
            p.sort_unstable();
            p
        };
        pairs(self) == pairs(other)
    }
}

/// One evaluator of the suite, ready to run.
struct Runner {
    name: String,
    key: String,
    kind: Kind,
    next_id: AtomicUsize,
    /// Pairs of this run not done yet; its servers stop at zero.
    remaining: AtomicUsize,
}

enum Kind {
    Command(Evaluator),
    Server(Server),
}

impl Runner {
    fn evaluator(&self) -> &dyn Evaluate {
        match &self.kind {
            Kind::Command(e) => e,
            Kind::Server(s) => s,
        }
    }
}

/// A suite's evaluators over one journal.
pub struct Bench<'a> {
    runners: Vec<Runner>,
    journal: &'a Journal,
    jobs: usize,
    tally: Tally,
    /// Evaluate again pairs whose journaled evaluation failed (retries were
    /// asked for), instead of reusing the failure.
    pub retry_failures: bool,
    /// Told when evaluations start and end.
    pub observer: Option<Observer<'a>>,
}

impl<'a> Bench<'a> {
    /// Checks every evaluator of `suite` and creates its directory under
    /// `run_dir`; nothing runs yet. `options` (timeout, retries, stop, slots)
    /// apply to every evaluator, and its slots are shared by all of them.
    pub fn new(
        suite: &Suite,
        run_dir: &Path,
        options: &Options,
        journal: &'a Journal,
    ) -> Result<Self> {
        let mut runners = Vec::with_capacity(suite.benchmarks.len());
        for b in &suite.benchmarks {
            let dir = run_dir.join(&b.name);
            let kind = match &b.command {
                Command::Eval(template) => {
                    let mut evaluator = Evaluator::new(template, &dir, options.clone())?;
                    if let Some(file) = &b.score_file {
                        evaluator = evaluator.with_score_file(file.clone());
                    }
                    Kind::Command(evaluator)
                }
                Command::Server(template) => {
                    Kind::Server(Server::new(template, &dir, options.clone())?)
                }
            };
            let mut runner = Runner {
                name: b.name.clone(),
                key: String::new(),
                kind,
                next_id: AtomicUsize::new(next_free_id(journal, &b.name)),
                remaining: AtomicUsize::new(0),
            };
            runner.key = b.journal_key.clone().unwrap_or_else(|| runner.evaluator().journal_key());
            runners.push(runner);
        }
        Ok(Bench {
            runners,
            journal,
            jobs: options.slots.len(),
            tally: Tally::default(),
            retry_failures: false,
            observer: None,
        })
    }

    /// The evaluators' names, in the suite's order.
    pub fn names(&self) -> Vec<String> {
        self.runners.iter().map(|r| r.name.clone()).collect()
    }

    /// What happened to the evaluations so far.
    pub fn counts(&self) -> Counts {
        self.tally.counts(self.runners.iter().map(|r| r.evaluator().restarts()).sum())
    }

    /// How many evaluations `models` need: the pairs the journal cannot answer
    /// (a model given twice, under one key, counts once).
    pub fn pending(&self, models: &[Model<'_>]) -> usize {
        let firsts = firsts(models);
        self.runners
            .iter()
            .map(|r| {
                let todo = |&(m, &first): &(usize, &usize)| {
                    m == first && self.journaled(r, &models[m]).is_none()
                };
                firsts.iter().enumerate().filter(todo).count()
            })
            .sum()
    }

    /// Scores every model on every evaluator (journaled results are reused) and
    /// returns the table. Raising `cancel` stops the running evaluations
    /// (gracefully) and gives [`crate::Error::Cancelled`]; an error that stops
    /// a search (a log or the journal cannot be written, a soup cannot be
    /// written) stops the suite too.
    pub fn run(&self, models: &[Model<'_>], cancel: &AtomicBool) -> Result<Table> {
        let firsts = firsts(models);
        let mut cells: Vec<Vec<Option<Result<f64, String>>>> =
            models.iter().map(|_| vec![None; self.runners.len()]).collect();
        let mut pending = Vec::new();
        for (e, runner) in self.runners.iter().enumerate() {
            for (m, model) in models.iter().enumerate().filter(|&(m, _)| firsts[m] == m) {
                match self.journaled(runner, model) {
                    Some(record) => {
                        let (scored, _) = self.tally.reuse(record);
                        self.observe(Event::Reused { scored: &scored });
                        cells[m][e] = Some(scored.score);
                    }
                    None => pending.push((e, m)),
                }
            }
        }
        for runner in &self.runners {
            runner.remaining.store(0, Ordering::SeqCst);
        }
        for &(e, _) in &pending {
            self.runners[e].remaining.fetch_add(1, Ordering::SeqCst);
        }
        for runner in self.runners.iter().filter(|r| r.remaining.load(Ordering::SeqCst) == 0) {
            runner.shutdown();
        }
        let written: Vec<Mutex<Option<f64>>> = models.iter().map(|_| Mutex::new(None)).collect();
        let results: Mutex<Vec<(usize, usize, Result<Scored>)>> = Mutex::new(Vec::new());
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        thread::scope(|scope| {
            for _ in 0..self.jobs.clamp(1, pending.len().max(1)) {
                scope.spawn(|| loop {
                    if stop.load(Ordering::SeqCst) || cancel.load(Ordering::SeqCst) {
                        break;
                    }
                    let Some(&(e, m)) = pending.get(next.fetch_add(1, Ordering::SeqCst)) else {
                        break;
                    };
                    let result = self.evaluate(&self.runners[e], &models[m], &written[m], cancel);
                    if result.is_err() {
                        stop.store(true, Ordering::SeqCst);
                    }
                    if self.runners[e].remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
                        self.runners[e].shutdown();
                    }
                    results.lock().unwrap_or_else(PoisonError::into_inner).push((e, m, result));
                });
            }
        });
        for runner in &self.runners {
            runner.shutdown();
        }
        for (model, written) in models.iter().zip(&written) {
            let done = written.lock().unwrap_or_else(PoisonError::into_inner).is_some();
            if done && model.write.is_some() {
                let _ = std::fs::remove_dir_all(&model.dir);
            }
        }
        for (e, m, result) in results.into_inner().unwrap_or_else(PoisonError::into_inner) {
            let scored = result?;
            if !scored.cancelled {
                cells[m][e] = Some(scored.score);
            }
        }
        let cells = (0..models.len())
            .map(|m| cells[firsts[m]].iter().cloned().collect::<Option<Vec<_>>>())
            .collect::<Option<Vec<_>>>()
            .ok_or(crate::Error::Cancelled)?;
        Ok(Table {
            evaluators: self.names(),
            models: models.iter().map(|m| m.label.clone()).collect(),
            cells,
        })
    }

    /// The journaled result of `model` on `runner` that this run would reuse.
    fn journaled(
        &self,
        runner: &Runner,
        model: &Model<'_>,
    ) -> Option<crate::search::journal::Record> {
        self.journal
            .find(&model.members, &model.weights, &runner.key)
            .filter(|r| r.outcome.score().is_some() || !self.retry_failures)
    }

    /// One evaluation: the model written if it must be, run, counted, journaled.
    fn evaluate(
        &self,
        runner: &Runner,
        model: &Model<'_>,
        written: &Mutex<Option<f64>>,
        cancel: &AtomicBool,
    ) -> Result<Scored> {
        let materialise_seconds = match model.write {
            Some(write) => {
                let mut seconds = written.lock().unwrap_or_else(PoisonError::into_inner);
                match *seconds {
                    Some(_) => 0.0,
                    None => {
                        let started = Instant::now();
                        write(&model.dir)?;
                        let spent = started.elapsed().as_secs_f64();
                        *seconds = Some(spent);
                        spent
                    }
                }
            }
            None => 0.0,
        };
        let id = format!("{}-{:04}", runner.name, runner.next_id.fetch_add(1, Ordering::SeqCst));
        let proposal = format!("{} on {}", model.label, runner.name);
        let request = Request {
            candidate: &id,
            model_dir: &model.dir,
            members: &model.members,
            weights: &model.weights,
            gradient: None,
            temperature: None,
        };
        let job = Job {
            request,
            key_members: &model.members,
            key_weights: &model.weights,
            evaluator: runner.evaluator(),
            key: &runner.key,
            proposal: &proposal,
            materialise_seconds,
        };
        let observe = |event: Event<'_>| self.observe(event);
        let run = self.tally.run(self.journal, job, cancel, || {}, |_, _| None, &observe);
        run.map(|(scored, _)| scored)
    }

    fn observe(&self, event: Event<'_>) {
        if let Some(observer) = self.observer {
            observer(event);
        }
    }
}

impl Runner {
    fn shutdown(&self) {
        if let Kind::Server(server) = &self.kind {
            server.shutdown();
        }
    }
}

/// For every model, the first model with the same key (itself, usually): a
/// model given twice is evaluated once.
fn firsts(models: &[Model<'_>]) -> Vec<usize> {
    (0..models.len())
        .map(|m| (0..m).find(|&k| models[k].same_as(&models[m])).unwrap_or(m))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::evaluate::Options;
    use crate::search::slots::Slots;
    use std::sync::Arc;

    fn suite(text: &str) -> Suite {
        Suite::parse(text, Path::new("suite.yaml")).unwrap()
    }

    #[test]
    fn a_model_written_on_demand_is_written_once_a_twin_evaluated_once_and_both_cleaned_up() {
        let tmp = tempfile::TempDir::new().unwrap();
        let (journal, _) = Journal::open(tmp.path()).unwrap();
        let suite = suite(
            "evaluators:\n  a: {eval: \"cat {model}/x\"}\n  b: {eval: \"cat {model}/x; echo 1\"}\n",
        );
        let options = Options { slots: Arc::new(Slots::new(3)), ..Options::default() };
        let bench = Bench::new(&suite, tmp.path(), &options, &journal).unwrap();
        let writes = AtomicUsize::new(0);
        let soup = tmp.path().join("soup");
        let write = |dir: &Path| {
            writes.fetch_add(1, Ordering::SeqCst);
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("x"), "0.25\n").unwrap();
            Ok(())
        };
        let model = |label: &str, weights: Vec<f64>| Model {
            label: label.into(),
            dir: soup.clone(),
            members: vec!["p".into(), "q".into()],
            weights,
            write: Some(&write),
        };
        let models = [model("soup", vec![0.5, 0.5]), model("twin", vec![0.5, 0.5])];
        assert_eq!(bench.pending(&models), 2);
        let table = bench.run(&models, &AtomicBool::new(false)).unwrap();
        assert_eq!(table.cells, vec![vec![Ok(0.25), Ok(1.0)]; 2]);
        assert_eq!(writes.load(Ordering::SeqCst), 1);
        assert!(!soup.exists());
        let counts = bench.counts();
        assert_eq!((counts.started, counts.journaled, counts.reused), (2, 2, 0));
        // Another weight is another model; the journal answers the first.
        let other = [model("soup", vec![0.5, 0.5]), model("other", vec![0.25, 0.75])];
        assert_eq!(bench.pending(&other), 2);
        bench.run(&other, &AtomicBool::new(false)).unwrap();
        assert_eq!(writes.load(Ordering::SeqCst), 2);
        assert_eq!(bench.counts().reused, 2);
    }

    #[test]
    fn a_raised_cancel_flag_gives_cancelled_and_journals_nothing() {
        let tmp = tempfile::TempDir::new().unwrap();
        let (journal, _) = Journal::open(tmp.path()).unwrap();
        let bench = Bench::new(
            &suite("evaluators:\n  a: {eval: \"echo 1\"}\n"),
            tmp.path(),
            &Options::default(),
            &journal,
        )
        .unwrap();
        let err = bench.run(&[Model::at(tmp.path())], &AtomicBool::new(true)).unwrap_err();
        assert!(err.is_cancelled(), "{err}");
        assert!(journal.is_empty());
    }
}
