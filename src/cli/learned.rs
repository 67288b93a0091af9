//! `soup learned`: layer groups, the evaluation budget and progress around the
//! library's searches of mixing coefficients, CMA-ES or, with `--gradient`, Adam
//! on the gradient the evaluator writes.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::bail;
use modelsoup::search::candidate::Mix;
use modelsoup::search::descent::{descend, Descended, Descent, Progress};
use modelsoup::search::groups::Grouping;
use modelsoup::search::learned::{learn, Evaluated, Learn, Learned};
use modelsoup::search::report::{format_score, Report};
use modelsoup::search::scorer::{Counts, EvalScorer};
use modelsoup::search::sequential::{greedy_order, Scored, Search};

use super::args::{Init, LearnedArgs};

/// CMA-ES's budget when `--budget` is not given.
const DEFAULT_BUDGET: usize = 100;

/// Adam's steps when neither `--steps` nor `--budget` is given.
const DEFAULT_STEPS: usize = 40;

/// The learned-soup options from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Evaluations in all, the baselines included (`--budget`).
    pub budget: Option<usize>,
    /// One coefficient vector per layer group instead of one per model.
    pub by_layer: bool,
    /// Ranges the transformer blocks are split into.
    pub groups: usize,
    /// Start from the greedy soup instead of the uniform one.
    pub init_greedy: bool,
    /// Seed of the search.
    pub seed: u64,
    /// Individual scores that came from a scores file (not evaluated).
    pub given: usize,
    /// Learn by gradient, with these settings, instead of CMA-ES.
    pub gradient: Option<Gradient>,
}

/// The settings of a learned search by gradient.
#[derive(Debug, Clone, Copy)]
pub struct Gradient {
    /// Adam steps (`--steps`), when given.
    pub steps: Option<usize>,
    /// Adam's learning rate.
    pub lr: f64,
    /// The starting temperature, when β is learned.
    pub temperature: Option<f64>,
    /// Check the first gradient against a central difference.
    pub check: bool,
}

impl Settings {
    /// The settings `args` ask for, checked.
    pub fn from_args(args: &LearnedArgs) -> anyhow::Result<Settings> {
        let gradient = if args.gradient {
            if !(args.lr.is_finite() && args.lr > 0.0) {
                bail!("--lr must be a positive number, got {}", args.lr);
            }
            if let Some(t) = args.temperature.filter(|t| !(t.is_finite() && *t > 0.0)) {
                bail!("--temperature must be a positive number, got {t}");
            }
            if args.steps == Some(0) {
                bail!("--steps must be at least 1");
            }
            Some(Gradient {
                steps: args.steps,
                lr: args.lr,
                temperature: args.temperature,
                check: args.check_gradient,
            })
        } else {
            None
        };
        Ok(Settings {
            budget: args.budget,
            by_layer: args.by_layer,
            groups: args.groups,
            init_greedy: args.init == Init::Greedy,
            seed: args.search.seed,
            given: 0,
            gradient,
        })
    }

    /// The budget the search must fit in, when there is one (CMA-ES always has
    /// one; a gradient search only with `--budget`).
    pub fn budget(&self) -> Option<usize> {
        match self.gradient {
            None => Some(self.budget.unwrap_or(DEFAULT_BUDGET)),
            Some(_) => self.budget,
        }
    }

    /// Evaluations the search makes after the individual scores, for the ETA.
    pub fn expected(&self, individual: usize) -> usize {
        let check = |g: &Gradient| if g.check { 2 } else { 0 };
        match (self.budget(), self.gradient) {
            (Some(budget), _) => budget.saturating_sub(individual),
            (None, Some(g)) => g.steps.unwrap_or(DEFAULT_STEPS) + check(&g),
            (None, None) => 0,
        }
    }
}

/// What the search found.
pub struct Outcome {
    /// Every evaluation, CMA-ES's or Adam's.
    pub result: Found,
    /// The best coefficients.
    pub best: Mix,
    /// The uniform soup's score, when it has one.
    pub uniform: Option<f64>,
}

/// Every evaluation of the search, by the method that made them.
pub enum Found {
    /// CMA-ES.
    Evolved(Learned),
    /// Adam, with its settings.
    Descended(Box<(Descended, Descent)>),
}

impl Outcome {
    /// The search's report.
    pub fn report(
        &self,
        evaluator: &str,
        minimize: bool,
        labels: &[String],
        individual: &[Scored],
        counts: Counts,
    ) -> Report {
        match &self.result {
            Found::Evolved(learned) => Report::learned(
                evaluator,
                minimize,
                labels,
                individual,
                self.uniform,
                learned,
                counts,
            ),
            Found::Descended(found) => {
                let (descended, config) = &**found;
                descended.report(config, evaluator, labels, individual, self.uniform, counts)
            }
        }
    }
}

/// Runs the learned search after the individual scores are known; `None` when no
/// candidate could be scored.
pub fn run(
    settings: &Settings,
    search: &Search,
    scorer: &EvalScorer,
    individual: &[Scored],
    order: &[usize],
    greedy_start: Option<usize>,
    say: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Option<Outcome>> {
    let kitchen = search.kitchen;
    let k = kitchen.ingredients().len();
    let names = kitchen.ingredients()[0].tensors().iter().map(|t| t.name.as_str());
    let grouping = Arc::new(if settings.by_layer {
        Grouping::by_layer(names, settings.groups)
    } else {
        Grouping::single(names)
    });
    let described: Vec<String> = grouping
        .names
        .iter()
        .zip(grouping.sizes())
        .map(|(n, c)| format!("{n} ({c} tensors)"))
        .collect();
    say(format!("layer groups: {}", described.join(", ")));

    let uniform_row = vec![1.0 / k as f64; k];
    let rows = |row: &[f64]| vec![row.to_vec(); grouping.names.len()];
    let mut spent = k - settings.given;
    let (start, uniform) = match (settings.init_greedy, greedy_start) {
        (true, Some(first)) => {
            let first_score = individual[order[first]].score.clone().unwrap_or(f64::NAN);
            let finish = search.greedy(&greedy_order(order, first), first_score)?;
            spent += finish.steps.len();
            let members = finish.soup.members();
            let row: Vec<f64> = (0..k)
                .map(|i| if members.contains(&i) { 1.0 / members.len() as f64 } else { 0.0 })
                .collect();
            let soup = if members.len() == 1 { "ingredient" } else { "ingredients" };
            say(format!(
                "starting from the greedy soup of {} {soup}, score {}",
                members.len(),
                format_score(finish.score)
            ));
            let uniform_mix = Mix { grouping: Arc::clone(&grouping), weights: rows(&uniform_row) };
            let scored = scorer.score_mix(&uniform_mix, search.interrupt)?;
            spent += 1;
            let uniform = scored.score.as_ref().ok().copied();
            (row, uniform)
        }
        (true, None) => {
            say("warning: no ingredient scored on its own, so there is no greedy soup: starting from uniform".into());
            (uniform_row.clone(), None)
        }
        (false, _) => (uniform_row.clone(), None),
    };
    let left = settings.budget().map(|budget| budget.saturating_sub(spent));
    if left == Some(0) {
        bail!(
            "--budget {} is used up by the {spent} evaluations before the search \
             (individual scores, uniform or greedy soup): raise it, or give --scores",
            settings.budget().unwrap_or_default()
        );
    }
    let start = rows(&start);
    let (result, best) = match settings.gradient {
        Some(gradient) => {
            let check = if gradient.check { 2 } else { 0 };
            let steps = match (gradient.steps, left) {
                (Some(steps), _) => steps,
                (None, Some(left)) if left > check => left - check,
                (None, Some(_)) => bail!(
                    "--budget {} leaves no evaluation for a step after the {spent} before the \
                     search and the gradient check's {check}: raise it",
                    settings.budget().unwrap_or_default()
                ),
                (None, None) => DEFAULT_STEPS,
            };
            let config = Descent {
                steps,
                lr: gradient.lr,
                start,
                temperature: gradient.temperature,
                scale: kitchen.base.as_ref().map_or(1.0, |b| b.lambda),
                check: gradient.check.then_some(settings.seed),
                jobs: search.policy.jobs,
            };
            let descended = by_gradient(&config, search, scorer, &grouping, spent, say)?;
            let Some(best) = descended.best.map(|b| descended.steps[b].mix.clone()) else {
                return Ok(None);
            };
            (Found::Descended(Box::new((descended, config))), best)
        }
        None => {
            let learned = by_cma_es(
                settings,
                left.unwrap_or_default(),
                start,
                search,
                scorer,
                &grouping,
                spent,
                say,
            )?;
            let Some(best) = learned.best.map(|b| learned.evaluations[b].mix.clone()) else {
                return Ok(None);
            };
            (Found::Evolved(learned), best)
        }
    };
    let uniform = match (&result, settings.init_greedy) {
        (_, true) => uniform,
        (Found::Evolved(learned), false) => {
            learned.evaluations.first().and_then(|e| e.scored.score.as_ref().ok().copied())
        }
        (Found::Descended(found), false) => {
            found.0.steps.first().and_then(|s| s.scored.score.as_ref().ok().copied())
        }
    };
    Ok(Some(Outcome { result, best, uniform }))
}

/// CMA-ES with `budget` evaluations from `start`, printing each as it ends.
#[allow(clippy::too_many_arguments)]
fn by_cma_es(
    settings: &Settings,
    budget: usize,
    start: Vec<Vec<f64>>,
    search: &Search,
    scorer: &EvalScorer,
    grouping: &Arc<Grouping>,
    spent: usize,
    say: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Learned> {
    let config = Learn {
        budget,
        jobs: search.policy.jobs,
        minimize: search.policy.minimize,
        seed: settings.seed,
        sigma: 0.5,
        start,
    };
    let total = spent + budget;
    // Printed as each evaluation ends (a generation runs --jobs at a time), with
    // the best score seen so far.
    let progress = Mutex::new((spent, None::<f64>));
    let on_eval = |e: &Evaluated| {
        let mut progress = progress.lock().unwrap_or_else(PoisonError::into_inner);
        progress.0 += 1;
        if let Ok(s) = e.scored.score {
            let better = |b: f64| if search.policy.minimize { s < b } else { s > b };
            if progress.1.is_none_or(better) {
                progress.1 = Some(s);
            }
        }
        say(format!(
            "[evaluation {}/{total}] {} (generation {}): {}{} (best {})",
            progress.0,
            e.scored.candidate,
            e.generation,
            describe(&e.scored),
            if e.scored.reused { " (journal)" } else { "" },
            progress.1.map_or("none".to_owned(), format_score)
        ));
    };
    Ok(learn(scorer, grouping, &config, search.interrupt, &on_eval)?)
}

/// Adam with `config`, printing each step and the gradient check.
fn by_gradient(
    config: &Descent,
    search: &Search,
    scorer: &EvalScorer,
    grouping: &Arc<Grouping>,
    spent: usize,
    say: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Descended> {
    let total = config.steps;
    let best = Mutex::new((0, None::<f64>));
    let on_progress = |p: Progress<'_>| match p {
        Progress::Step(step) => {
            let mut best = best.lock().unwrap_or_else(PoisonError::into_inner);
            best.0 += 1;
            if let Ok(loss) = step.scored.score {
                if best.1.is_none_or(|b| loss < b) {
                    best.1 = Some(loss);
                }
            }
            let beta = step.temperature.map_or(String::new(), |b| format!(", β {b:.4}"));
            let norm = step.norm.map_or(String::new(), |n| format!(", |∂L/∂z| {n:.3e}"));
            say(format!(
                "[step {}/{total}] {}: loss {}{}{norm}{beta} (best {})",
                best.0,
                step.scored.candidate,
                describe(&step.scored),
                if step.scored.reused { " (journal)" } else { "" },
                best.1.map_or("none".to_owned(), format_score)
            ));
        }
        Progress::Check(check) => say(match (check.difference, check.relative_error) {
            (Some(d), Some(e)) => format!(
                "gradient check: directional derivative {} from the gradient, {} by central \
                 difference (ε = {}): relative error {e:.2e}",
                format_score(check.directional),
                format_score(d),
                check.epsilon
            ),
            _ => "gradient check: an evaluation failed, no central difference".to_owned(),
        }),
    };
    say(format!(
        "Adam on the loss: {} step{} from evaluation {} on, learning rate {}",
        total,
        if total == 1 { "" } else { "s" },
        spent + 1,
        config.lr
    ));
    let descended = descend(scorer, grouping, config, search.interrupt, &on_progress)?;
    if let Some(why) = &descended.stopped {
        say(format!(
            "warning: stopped after step {}: {why} (no gradient to follow); the best step is kept",
            descended.steps.len()
        ));
    }
    Ok(descended)
}

fn describe(scored: &Scored) -> String {
    match &scored.score {
        Ok(s) => format_score(*s),
        Err(reason) => format!("failed: {reason}"),
    }
}
