//! `soup learned`: layer groups, the evaluation budget and progress around the
//! library's CMA-ES search.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::bail;
use modelsoup::search::candidate::Mix;
use modelsoup::search::groups::Grouping;
use modelsoup::search::learned::{learn, Evaluated, Learn, Learned};
use modelsoup::search::report::format_score;
use modelsoup::search::scorer::EvalScorer;
use modelsoup::search::sequential::{greedy_order, Scored, Search};

/// The learned-soup options from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Evaluations in all, the baselines included.
    pub budget: usize,
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
}

/// What the search found.
pub struct Outcome {
    /// Every evaluation.
    pub result: Learned,
    /// The best coefficients.
    pub best: Mix,
    /// The uniform soup's score, when it has one.
    pub uniform: Option<f64>,
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
    if spent >= settings.budget {
        bail!(
            "--budget {} is used up by the {spent} evaluations before the search \
             (individual scores, uniform or greedy soup): raise it, or give --scores",
            settings.budget
        );
    }
    let config = Learn {
        budget: settings.budget - spent,
        jobs: search.policy.jobs,
        minimize: search.policy.minimize,
        seed: settings.seed,
        sigma: 0.5,
        start: rows(&start),
    };
    let total = settings.budget;
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
        let score = match &e.scored.score {
            Ok(s) => format_score(*s),
            Err(reason) => format!("failed: {reason}"),
        };
        say(format!(
            "[evaluation {}/{total}] {} (generation {}): {score}{} (best {})",
            progress.0,
            e.scored.candidate,
            e.generation,
            if e.scored.reused { " (journal)" } else { "" },
            progress.1.map_or("none".to_owned(), format_score)
        ));
    };
    let result = learn(scorer, &grouping, &config, search.interrupt, &on_eval)?;
    let Some(best) = result.best.map(|b| result.evaluations[b].mix.clone()) else {
        return Ok(None);
    };
    let uniform = if settings.init_greedy {
        uniform
    } else {
        result.evaluations.first().and_then(|e| e.scored.score.as_ref().ok().copied())
    };
    Ok(Some(Outcome { result, best, uniform }))
}
