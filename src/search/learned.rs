//! Learned soups: mixing coefficients searched with CMA-ES against the user's
//! evaluator.
//!
//! The paper learns coefficients by gradient descent, which needs every model in
//! memory and a differentiable evaluator. Ours is an external command, so the
//! coefficients are searched without derivatives, as evolutionary model merging
//! does. Each layer group's coefficients are the softmax of free parameters, so
//! every candidate lies on the simplex (non-negative, summing to 1) while CMA-ES
//! moves freely in ℝⁿ. A generation's candidates are evaluated in parallel, up to
//! `jobs` at a time; the search stops at a hard budget of evaluations, and the best
//! candidate seen is the result. Given the same seed and the same scores, the same
//! candidates are proposed, so a resumed run replays its journal and continues.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::search::candidate::Mix;
use crate::search::cmaes::{self, CmaEs};
use crate::search::groups::Grouping;
use crate::search::sequential::{score_in_parallel, Scored};
use crate::search::Result;

/// Scores learned-soup candidates (the real one materialises and runs the
/// evaluator; tests use an in-process function).
pub trait MixScorer: Sync {
    /// Scores the soup mixed by `mix`; stops promptly once `cancel` is set.
    fn score_mix(&self, mix: &Mix, cancel: &AtomicBool) -> Result<Scored>;
}

impl MixScorer for crate::search::scorer::EvalScorer<'_> {
    fn score_mix(&self, mix: &Mix, cancel: &AtomicBool) -> Result<Scored> {
        crate::search::scorer::EvalScorer::score_mix(self, mix, cancel)
    }
}

/// Settings of a learned search.
#[derive(Debug, Clone)]
pub struct Learn {
    /// Evaluations CMA-ES may spend.
    pub budget: usize,
    /// Evaluations at once.
    pub jobs: usize,
    /// Lower scores are better.
    pub minimize: bool,
    /// Seed of CMA-ES's sampling.
    pub seed: u64,
    /// Initial step size in softmax-parameter space. `soup learned` uses 0.5: on
    /// 12-dimensional synthetic problems (4 groups × 3 ingredients, budget 300, 10
    /// seeds) it left a median coefficient error of 0.041 against 0.105 for 1.0.
    pub sigma: f64,
    /// The starting coefficients, one row per group (uniform or the greedy soup's).
    pub start: Vec<Vec<f64>>,
}

/// One evaluated candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluated {
    /// Its coefficients.
    pub mix: Mix,
    /// Its score.
    pub scored: Scored,
    /// The CMA-ES generation it came from; 0 is the starting point.
    pub generation: usize,
}

/// What a learned search found.
#[derive(Debug, Clone)]
pub struct Learned {
    /// Every evaluation, in order.
    pub evaluations: Vec<Evaluated>,
    /// Index into `evaluations` of the best-scoring candidate, if any scored.
    pub best: Option<usize>,
}

/// The smallest starting weight: zero weights (ingredients the greedy soup left
/// out) start at this, since the softmax cannot reach 0 exactly.
const FLOOR: f64 = 1e-3;

/// Runs CMA-ES over the softmax parameters of `grouping`'s coefficient rows.
/// `on_eval` is called as each evaluation ends, in the order they end (a
/// generation's are scored `jobs` at a time); the result lists them in proposal
/// order, which is what the search learns from.
pub fn learn(
    scorer: &dyn MixScorer,
    grouping: &Arc<Grouping>,
    config: &Learn,
    interrupt: &AtomicBool,
    on_eval: &(dyn Fn(&Evaluated) + Sync),
) -> Result<Learned> {
    let k = config.start.first().map_or(0, Vec::len);
    if k == 0 || config.start.len() != grouping.names.len() {
        return Err(crate::Error::NoIngredients.into());
    }
    let mean: Vec<f64> = config.start.iter().flatten().map(|w| cmaes::ln(w.max(FLOOR))).collect();
    let mut cma = CmaEs::new(mean, config.sigma, config.seed);
    let mut out = Learned { evaluations: Vec::new(), best: None };
    // Generation 0 is the starting point itself, so the result is never worse
    // than where the search began.
    let start = Mix { grouping: Arc::clone(grouping), weights: config.start.clone() };
    let mut generation = 0;
    while out.evaluations.len() < config.budget {
        let (mixes, points) = if generation == 0 {
            (vec![start.clone()], None)
        } else {
            let points = cma.ask();
            let take = points.len().min(config.budget - out.evaluations.len());
            (points[..take].iter().map(|p| to_mix(grouping, p, k)).collect(), Some(points))
        };
        let score = |mix: &Mix| scorer.score_mix(mix, interrupt);
        let done = |i: usize, scored: &Scored| {
            on_eval(&Evaluated { mix: mixes[i].clone(), scored: scored.clone(), generation });
        };
        let scored = score_in_parallel(&mixes, config.jobs, interrupt, score, &done)?;
        let evaluated = mixes.len();
        for (mix, scored) in mixes.into_iter().zip(scored) {
            out.record(Evaluated { mix, scored, generation }, config.minimize);
        }
        generation += 1;
        let Some(points) = points else { continue };
        if evaluated < points.len() {
            break; // budget spent mid-generation: nothing left to learn from it
        }
        let first = out.evaluations.len() - evaluated;
        let fitness: Vec<f64> = out.evaluations[first..]
            .iter()
            .map(|e| match e.scored.score {
                Ok(s) if config.minimize => s,
                Ok(s) => -s,
                Err(_) => f64::NAN, // ranked worst
            })
            .collect();
        cma.tell(&points, &fitness);
    }
    Ok(out)
}

impl Learned {
    /// Appends an evaluation, making it the best if it scores better.
    fn record(&mut self, e: Evaluated, minimize: bool) {
        let improves = e.scored.score.as_ref().is_ok_and(|&s| {
            self.best.is_none_or(|b| better(minimize, s, score_of(&self.evaluations[b])))
        });
        self.evaluations.push(e);
        if improves {
            self.best = Some(self.evaluations.len() - 1);
        }
    }
}

fn score_of(e: &Evaluated) -> f64 {
    e.scored.score.as_ref().copied().unwrap_or(f64::NAN)
}

fn better(minimize: bool, a: f64, b: f64) -> bool {
    if minimize {
        a < b
    } else {
        a > b
    }
}

/// Softmax per group of a flat parameter vector.
pub fn to_mix(grouping: &Arc<Grouping>, params: &[f64], k: usize) -> Mix {
    let weights = params.chunks(k).map(softmax).collect();
    Mix { grouping: Arc::clone(grouping), weights }
}

fn softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // The search's own exp, so that every platform computes the same weights (they
    // are journal keys).
    let e: Vec<f64> = x.iter().map(|v| cmaes::exp(v - max)).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}
