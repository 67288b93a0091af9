//! Learned soups by gradient descent, as the model-soups paper defines them: the
//! mixing coefficients (and optionally a logit temperature β) that minimise the
//! loss of the soup on held-out data, found with Adam, with no model held in
//! memory.
//!
//! Each layer group's weights are the softmax of free parameters, `w = softmax(z)`,
//! as in the CMA-ES search ([`crate::search::learned`]), so every point lies on the
//! simplex; β is `exp(s)`, so it stays positive. At each step the user's
//! evaluator scores the soup (the score is the loss) and writes `∇θL`; the scorer
//! turns it into `dᵢ = ⟨∇θL, θᵢ⟩` per group by one streaming pass
//! ([`crate::analysis::gradient`]). A candidate is `θ = λ·Σᵢ wᵢθᵢ + (1 − λ)·θ₀`
//! (λ = 1 without a base), so `∂L/∂wᵢ = λ·dᵢ`, and through the softmax
//!
//! ```text
//! ∂L/∂zⱼ = wⱼ·(λdⱼ − Σᵢ wᵢ·λdᵢ),        ∂L/∂s = β·∂L/∂β.
//! ```
//!
//! Adam then moves `(z, s)`: `m ← β₁m + (1 − β₁)g`, `v ← β₂v + (1 − β₂)g²`,
//! `x ← x − lr·m̂/(√v̂ + ε)` with bias-corrected `m̂`, `v̂`, β₁ = 0.5, β₂ = 0.9,
//! ε = 10⁻⁸, and the learning rate halved after every step whose loss is higher
//! than the step before it. The short memories suit the few dozen steps an
//! evaluation budget allows: on quadratic losses in the coefficients (k = 3 and
//! 12 ingredients, targets drawn from a Dirichlet, 20 draws each, 20 steps,
//! learning rate 0.2) they left a median largest coefficient error of
//! 0.002–0.005, against 0.021–0.026 for the usual β₁ = 0.9, β₂ = 0.999, whose
//! momentum overshoots the optimum and returns slowly. Near the optimum Adam's
//! steps keep a length of about the learning rate, so without the halving the
//! last steps circle it (final error 0.006–0.009 at 40 steps, 0.000–0.001 with
//! it). The rule depends only on the losses seen, never on the number of steps
//! planned (as a cosine decay would), so a longer rerun reuses a shorter run's
//! journal.
//!
//! The result is the step with the lowest loss. Everything is computed in f64
//! with `+ − × ÷ √` and the search's own `exp` and `ln`, so the same journal gives
//! the same points: each step's gradient is journaled with its score, and a
//! resumed search replays the steps it finds and continues.
//!
//! `check`: after the first step, the directional derivative along a random
//! unit direction `u` of `(z, s)` computed from the gradient is compared with the
//! central difference `(L(x + εu) − L(x − εu)) / 2ε` of two extra evaluations.

use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::Serialize;

use crate::search::candidate::Mix;
use crate::search::cmaes::{self, NormalRng};
use crate::search::groups::Grouping;
use crate::search::journal::Gradient;
use crate::search::learned::{to_mix, Evaluated, Learned};
use crate::search::report::{cell, format_score, Report};
use crate::search::scorer::{Ask, Counts, EvalScorer};
use crate::search::sequential::{score_in_parallel, Scored};
use crate::search::Result;

/// Adam's decay of the mean of the gradients.
pub const BETA1: f64 = 0.5;
/// Adam's decay of the mean of their squares.
pub const BETA2: f64 = 0.9;
/// Adam's guard against dividing by zero.
const EPSILON: f64 = 1e-8;
/// The step of the gradient check's central difference, in parameter space.
pub const CHECK_STEP: f64 = 1e-2;
/// The smallest starting weight (as in the CMA-ES search): the softmax cannot
/// reach 0.
const FLOOR: f64 = 1e-3;

/// Scores a point and, when asked, takes the gradient of its loss (the real one
/// runs the evaluator; tests use an in-process loss).
pub trait GradientScorer: Sync {
    /// Scores `mix` at `ask.temperature`, with the coefficient gradient per group
    /// of `ask.gradient` when that is set; stops promptly once `cancel` is set.
    fn score_point(
        &self,
        mix: &Mix,
        ask: Ask<'_>,
        cancel: &AtomicBool,
    ) -> Result<(Scored, Option<Gradient>)>;
}

impl GradientScorer for EvalScorer<'_> {
    fn score_point(
        &self,
        mix: &Mix,
        ask: Ask<'_>,
        cancel: &AtomicBool,
    ) -> Result<(Scored, Option<Gradient>)> {
        EvalScorer::score_point(self, mix, ask, cancel)
    }
}

/// Settings of a learned search by gradient.
#[derive(Debug, Clone)]
pub struct Descent {
    /// Evaluations with a gradient (the last one's gradient is not used).
    pub steps: usize,
    /// Adam's learning rate, in softmax-parameter space.
    pub lr: f64,
    /// The starting coefficients, one row per group.
    pub start: Vec<Vec<f64>>,
    /// The starting temperature β, when it is learned too.
    pub temperature: Option<f64>,
    /// λ: candidates are `λ·Σ wᵢθᵢ + (1 − λ)·θ₀` (1 without a base).
    pub scale: f64,
    /// Check the first gradient against a central difference along a direction
    /// drawn with this seed.
    pub check: Option<u64>,
    /// Evaluations at once (the check's two run together).
    pub jobs: usize,
}

/// One step: a point, its loss and its gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The coefficients.
    pub mix: Mix,
    /// The temperature β, when it is learned.
    pub temperature: Option<f64>,
    /// The loss.
    pub scored: Scored,
    /// The gradient as journaled, when the evaluation gave one.
    pub gradient: Option<Gradient>,
    /// `‖∂L/∂(z, s)‖`, the gradient Adam follows.
    pub norm: Option<f64>,
    /// The learning rate of the update after this step (halved when the loss
    /// went up).
    pub lr: f64,
}

/// The gradient check's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// ε, the half-width of the central difference.
    pub epsilon: f64,
    /// The directional derivative from the gradient.
    pub directional: f64,
    /// The central difference of the two evaluations, when both scored.
    pub difference: Option<f64>,
    /// `|difference − directional| / max(|difference|, |directional|)`, when both are
    /// known (0 when both are 0).
    pub relative_error: Option<f64>,
    /// The evaluations at `x + εu` and `x − εu`.
    pub evaluations: Vec<Scored>,
}

/// What a learned search by gradient found.
#[derive(Debug, Clone)]
pub struct Descended {
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// Index into `steps` of the lowest loss, if any step scored.
    pub best: Option<usize>,
    /// The gradient check, when asked for and reached.
    pub check: Option<Check>,
    /// Why the search stopped before its last step: an evaluation failed, so
    /// there was no gradient to follow.
    pub stopped: Option<String>,
}

/// What [`descend`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A step was scored (its gradient taken).
    Step(&'a Step),
    /// The gradient check's two evaluations are done.
    Check(&'a Check),
}

/// Runs Adam from `config.start` over the softmax parameters of `grouping`'s
/// coefficient rows (and `ln β`); `on_progress` is told of each step and of the
/// check.
pub fn descend(
    scorer: &dyn GradientScorer,
    grouping: &Arc<Grouping>,
    config: &Descent,
    interrupt: &AtomicBool,
    on_progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<Descended> {
    let k = config.start.first().map_or(0, Vec::len);
    if k == 0 || config.start.len() != grouping.names.len() {
        return Err(crate::Error::NoIngredients.into());
    }
    let mut x: Vec<f64> = config.start.iter().flatten().map(|w| cmaes::ln(w.max(FLOOR))).collect();
    if let Some(beta) = config.temperature {
        x.push(cmaes::ln(beta));
    }
    let (mut m, mut v) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let mut out = Descended { steps: Vec::new(), best: None, check: None, stopped: None };
    let mut lr = config.lr;
    for t in 0..config.steps {
        let (mix, temperature) = point(grouping, &x, k, config.temperature.is_some());
        let ask = Ask { gradient: Some(grouping), temperature };
        let (scored, gradient) = scorer.score_point(&mix, ask, interrupt)?;
        if scored.cancelled {
            return Err(crate::Error::Cancelled.into());
        }
        let g = gradient.as_ref().and_then(|grad| chain(&mix, temperature, grad, config.scale));
        let norm = g.as_ref().map(|g| g.iter().map(|v| v * v).sum::<f64>().sqrt());
        let loss = |s: &Step| s.scored.score.as_ref().ok().copied();
        let previous = out.steps.last().and_then(loss);
        if let (Some(before), Ok(now)) = (previous, &scored.score) {
            if *now > before {
                lr *= 0.5;
            }
        }
        let step = Step { mix, temperature, scored, gradient, norm, lr };
        on_progress(Progress::Step(&step));
        let failure = step.scored.score.as_ref().err().cloned();
        out.record(step);
        let Some(g) = g else {
            out.stopped = Some(failure.unwrap_or_else(|| "no gradient".to_owned()));
            break;
        };
        if let (0, Some(seed)) = (t, config.check) {
            let checked = check(scorer, grouping, config, &x, &g, seed, interrupt)?;
            on_progress(Progress::Check(&checked));
            out.check = Some(checked);
        }
        if t + 1 == config.steps {
            break;
        }
        let n = (t + 1) as i32;
        let (c1, c2) = (1.0 - BETA1.powi(n), 1.0 - BETA2.powi(n));
        for (((xi, mi), vi), gi) in x.iter_mut().zip(&mut m).zip(&mut v).zip(&g) {
            *mi = BETA1 * *mi + (1.0 - BETA1) * gi;
            *vi = BETA2 * *vi + (1.0 - BETA2) * gi * gi;
            *xi -= lr * (*mi / c1) / ((*vi / c2).sqrt() + EPSILON);
        }
    }
    Ok(out)
}

impl Descended {
    /// Appends a step, making it the best if its loss is lower.
    fn record(&mut self, step: Step) {
        let loss = |s: &Step| s.scored.score.as_ref().ok().copied();
        let improves = loss(&step)
            .is_some_and(|l| self.best.is_none_or(|b| loss(&self.steps[b]).is_none_or(|b| l < b)));
        self.steps.push(step);
        if improves {
            self.best = Some(self.steps.len() - 1);
        }
    }
}

/// The coefficients and temperature at parameters `x` (`k` per group, then
/// `ln β` when `learned`).
fn point(grouping: &Arc<Grouping>, x: &[f64], k: usize, learned: bool) -> (Mix, Option<f64>) {
    let rows = grouping.names.len() * k;
    let mix = to_mix(grouping, &x[..rows], k);
    (mix, learned.then(|| cmaes::exp(x[rows])))
}

/// `∂L/∂(z, s)` from a journaled gradient, or `None` when it does not fit the
/// point (a dot product per coefficient, `∂L/∂β` when β is learned).
pub fn chain(
    mix: &Mix,
    temperature: Option<f64>,
    gradient: &Gradient,
    scale: f64,
) -> Option<Vec<f64>> {
    let k = mix.weights.first().map_or(0, Vec::len);
    if gradient.dots.len() != k * mix.weights.len() {
        return None;
    }
    let mut g = Vec::with_capacity(gradient.dots.len() + 1);
    for (w, dots) in mix.weights.iter().zip(gradient.dots.chunks(k)) {
        let mean: f64 = w.iter().zip(dots).map(|(w, d)| w * scale * d).sum();
        g.extend(w.iter().zip(dots).map(|(w, d)| w * (scale * d - mean)));
    }
    match (temperature, gradient.temperature) {
        (Some(beta), Some(d)) => g.push(beta * d),
        (Some(_), None) => return None,
        (None, _) => {}
    }
    Some(g)
}

/// The gradient check at parameters `x` with gradient `g`: two evaluations at
/// `x ± εu` for a random unit `u`.
#[allow(clippy::too_many_arguments)]
fn check(
    scorer: &dyn GradientScorer,
    grouping: &Arc<Grouping>,
    config: &Descent,
    x: &[f64],
    g: &[f64],
    seed: u64,
    interrupt: &AtomicBool,
) -> Result<Check> {
    let mut rng = NormalRng::new(seed);
    let mut u: Vec<f64> = (0..x.len()).map(|_| rng.normal()).collect();
    let length = u.iter().map(|v| v * v).sum::<f64>().sqrt();
    u.iter_mut().for_each(|v| *v /= length);
    let k = config.start[0].len();
    let learned = config.temperature.is_some();
    let points: Vec<(Mix, Option<f64>)> = [1.0, -1.0]
        .iter()
        .map(|sign| {
            let moved: Vec<f64> =
                x.iter().zip(&u).map(|(x, u)| x + sign * CHECK_STEP * u).collect();
            point(grouping, &moved, k, learned)
        })
        .collect();
    let score = |(mix, temperature): &(Mix, Option<f64>)| {
        let ask = Ask { gradient: None, temperature: *temperature };
        scorer.score_point(mix, ask, interrupt).map(|(scored, _)| scored)
    };
    let evaluations = score_in_parallel(&points, config.jobs, interrupt, score, &|_, _| {})?;
    let directional: f64 = g.iter().zip(&u).map(|(g, u)| g * u).sum();
    let difference = match (&evaluations[0].score, &evaluations[1].score) {
        (Ok(plus), Ok(minus)) => Some((plus - minus) / (2.0 * CHECK_STEP)),
        _ => None,
    };
    let relative_error = difference.map(|d| {
        let scale = d.abs().max(directional.abs());
        if scale == 0.0 {
            0.0
        } else {
            (d - directional).abs() / scale
        }
    });
    Ok(Check { epsilon: CHECK_STEP, directional, difference, relative_error, evaluations })
}

/// The gradient part of `report.json` (its `"gradient"` object) and of
/// `report.md`.
#[derive(Debug, Clone, Serialize)]
pub struct DescentReport {
    /// `adam`.
    pub optimizer: &'static str,
    /// The learning rate.
    pub lr: f64,
    /// Adam's β₁.
    pub beta1: f64,
    /// Adam's β₂.
    pub beta2: f64,
    /// The layer groups, in the order of every step's coefficient rows.
    pub groups: Vec<String>,
    /// Every step.
    pub steps: Vec<StepReport>,
    /// The temperature β of the best step, when it is learned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// The gradient check, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckReport>,
    /// Why the search stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// One step in the report.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// 1-based step number.
    pub step: usize,
    /// The candidate's id.
    pub candidate: String,
    /// The loss (`null` when the evaluation failed).
    pub loss: Option<f64>,
    /// `‖∂L/∂(z, s)‖`, the gradient Adam followed.
    pub gradient_norm: Option<f64>,
    /// `‖∇θL‖`, the norm of the gradient the evaluator wrote.
    pub weights_gradient_norm: Option<f64>,
    /// The learning rate of the update after this step.
    pub lr: f64,
    /// One row of coefficients per group (see `groups`).
    pub coefficients: Vec<Vec<f64>>,
    /// β, when it is learned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// `∂L/∂β`, when β is learned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_temperature: Option<f64>,
    /// Whether the result came from the journal.
    pub reused: bool,
}

/// The gradient check in the report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// ε.
    pub epsilon: f64,
    /// The directional derivative from the gradient.
    pub directional: f64,
    /// The central difference (`null` when an evaluation failed).
    pub difference: Option<f64>,
    /// Their relative error.
    pub relative_error: Option<f64>,
    /// The two evaluations' candidate ids.
    pub candidates: Vec<String>,
}

impl Descended {
    /// The search's report: that of a learned search (curve, coefficients, the
    /// best step's score), its steps named `step N`, with the gradient part.
    pub fn report(
        &self,
        config: &Descent,
        evaluator: &str,
        labels: &[String],
        individual: &[Scored],
        uniform: Option<f64>,
        counts: Counts,
    ) -> Report {
        let evaluations = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| Evaluated { mix: s.mix.clone(), scored: s.scored.clone(), generation: i })
            .collect();
        let learned = Learned { evaluations, best: self.best };
        let mut report =
            Report::learned(evaluator, true, labels, individual, uniform, &learned, counts);
        for (i, step) in report.steps.iter_mut().enumerate() {
            step.proposal = format!("step {}", i + 1);
        }
        let groups = self.steps.first().map_or_else(Vec::new, |s| s.mix.grouping.names.clone());
        let steps = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepReport {
                step: i + 1,
                candidate: s.scored.candidate.clone(),
                loss: s.scored.score.as_ref().ok().copied(),
                gradient_norm: s.norm,
                weights_gradient_norm: s.gradient.as_ref().map(|g| g.norm),
                lr: s.lr,
                coefficients: s.mix.weights.clone(),
                temperature: s.temperature,
                grad_temperature: s.gradient.as_ref().and_then(|g| g.temperature),
                reused: s.scored.reused,
            })
            .collect();
        let check = self.check.as_ref().map(|c| CheckReport {
            epsilon: c.epsilon,
            directional: c.directional,
            difference: c.difference,
            relative_error: c.relative_error,
            candidates: c.evaluations.iter().map(|e| e.candidate.clone()).collect(),
        });
        report.gradient = Some(DescentReport {
            optimizer: "adam",
            lr: config.lr,
            beta1: BETA1,
            beta2: BETA2,
            groups,
            steps,
            temperature: self.best.and_then(|b| self.steps[b].temperature),
            check,
            stopped: self.stopped.clone(),
        });
        report
    }
}

impl DescentReport {
    /// The report.md section: Adam's settings, the check, a row per step.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "Gradient descent: {}, learning rate {} (β₁ {}, β₂ {}; halved after a step \
             whose loss went up); the score is the loss.\n\n",
            self.optimizer, self.lr, self.beta1, self.beta2
        );
        if let Some(c) = &self.check {
            let _ = match (c.difference, c.relative_error) {
                (Some(d), Some(e)) => writeln!(
                    md,
                    "Gradient check (ε = {}): directional derivative {} from the gradient, {} \
                     by central difference ({}): relative error {e:.2e}.\n",
                    c.epsilon,
                    format_score(c.directional),
                    format_score(d),
                    c.candidates.join(", ")
                ),
                _ => writeln!(
                    md,
                    "Gradient check: not measured, an evaluation failed ({}).\n",
                    c.candidates.join(", ")
                ),
            };
        }
        if let Some(beta) = self.temperature {
            let _ = writeln!(md, "Learned temperature β = {}.\n", format_score(beta));
        }
        if let Some(why) = &self.stopped {
            let _ = writeln!(md, "Stopped early: {}.\n", cell(why));
        }
        md += "| step | candidate | loss | ‖∂L/∂z‖ | ‖∇θL‖ | lr |";
        let beta = self.steps.iter().any(|s| s.temperature.is_some());
        if beta {
            md += " β | ∂L/∂β |";
        }
        md += " coefficients |\n|---|---|---|---|---|---|";
        md += if beta { "---|---|---|\n" } else { "---|\n" };
        let number = |v: Option<f64>| v.map_or(String::new(), format_score);
        for s in &self.steps {
            let coefficients: Vec<String> = self
                .groups
                .iter()
                .zip(&s.coefficients)
                .map(|(g, row)| {
                    let row: Vec<String> = row.iter().map(|w| format!("{w:.4}")).collect();
                    if self.groups.len() == 1 {
                        row.join(", ")
                    } else {
                        format!("{}: {}", cell(g), row.join(", "))
                    }
                })
                .collect();
            let _ = write!(
                md,
                "| {} | {}{} | {} | {} | {} | {} |",
                s.step,
                s.candidate,
                if s.reused { " (journal)" } else { "" },
                number(s.loss),
                number(s.gradient_norm),
                number(s.weights_gradient_norm),
                s.lr
            );
            if beta {
                let _ = write!(md, " {} | {} |", number(s.temperature), number(s.grad_temperature));
            }
            let _ = writeln!(md, " {} |", coefficients.join("; "));
        }
        md + "\n"
    }
}
