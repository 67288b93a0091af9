//! The methods that sparsify task vectors before adding them up: TIES,
//! Breadcrumbs (by magnitude rank), DARE, DELLA (at random) and SCE (by
//! variance across the task vectors). Each chooses, per tensor, the
//! [`Sparsify`] rule and the weights of the engine's task-vector reducer,
//! running the selections that need a whole tensor first (`method/topk.rs`).

use std::collections::HashMap;

use super::fine::{self, Job};
use super::params::{Resolved, TensorParams};
use super::topk::{self, Count, Key, Source, Target};
use crate::engine::checkpoint::Checkpoint;
use crate::engine::dropout::DropMask;
use crate::engine::dtype::FloatDtype;
use crate::engine::execute::RunOptions;
use crate::engine::task_vectors::{Keep, Ranked, Sparsify, TaskParams};
use crate::error::{Error, Result};
use crate::recipe::Method;

/// How many entries TIES keeps of a tensor of `numel` at `density`: at least
/// one of a non-empty tensor when the density is positive (mergekit's rule).
pub fn ties_keep_count(density: f64, numel: usize) -> Option<u64> {
    if density >= 1.0 {
        None
    } else if density <= 0.0 || numel == 0 {
        Some(0)
    } else {
        Some(((density * numel as f64) as u64).max(1))
    }
}

/// Breadcrumbs' ranks kept, counted from the largest magnitude: `(dropped,
/// kept)`, the `dropped` largest are outliers and the next `kept` survive;
/// `None` keeps everything (density ≥ 1). mergekit's rule: `kept = ⌊density·n⌋`,
/// `dropped = ⌊gamma·n⌋`, fewer when the two would not fit.
pub fn breadcrumbs_counts(density: f64, gamma: f64, numel: usize) -> Option<(u64, u64)> {
    if density >= 1.0 {
        return None;
    }
    let n = numel as u64;
    let kept = ((density * numel as f64) as u64).min(n);
    let top = (gamma * numel as f64) as u64;
    Some((top.min(n - kept), kept))
}

/// One input of tensor `name` (`i` indexes `inputs`) as a selection source.
fn source<'a>(inputs: &'a [Checkpoint], i: usize, name: &str) -> Source<'a> {
    let ck = &inputs[i];
    let tensor = ck.position(name).unwrap_or_default();
    let dtype = FloatDtype::from_safetensors(ck.tensors()[tensor].dtype).unwrap_or(FloatDtype::F32);
    Source { checkpoint: ck, tensor, dtype }
}

/// One tensor's task-vector parameters over the `k` models and the base, whose
/// slot (index `k`, weight 0) is appended.
pub(super) fn task_params(
    t: &TensorParams,
    normalize: bool,
    elect_sign: bool,
    sparsify: Sparsify,
) -> TaskParams {
    let mut weights = t.weights.clone();
    if normalize {
        // The reducer divides by Σ wᵢ, which must not overflow.
        super::rescale(&mut weights);
    }
    weights.push(0.0);
    TaskParams { weights, lambda: t.lambda, normalize, elect_sign, sparsify }
}

/// TIES: each tensor's magnitude thresholds, selected for the whole model at
/// once (`method/fine.rs`), then the task-vector reducer with sign election.
pub(super) fn ties(
    resolved: &Resolved,
    inputs: &[Checkpoint],
    run: &RunOptions,
) -> Result<HashMap<String, TaskParams>> {
    let k = inputs.len() - 1;
    let mut keeps_of: Vec<Vec<Keep>> = Vec::new();
    let mut jobs = Vec::new();
    // Per tensor: the job that selects for it, and which input each target is.
    let mut chosen: Vec<Option<(usize, Vec<usize>)>> = Vec::new();
    for (name, t) in &resolved.tensors {
        let numel = t.numel;
        let mut keeps = vec![Keep::All; k + 1];
        let mut select = Vec::new();
        for (i, keep) in keeps.iter_mut().enumerate().take(k) {
            match ties_keep_count(t.densities[i], numel) {
                None => {}
                Some(0) => *keep = Keep::Nothing,
                Some(n) if n >= numel as u64 => {}
                Some(n) if t.weights[i] != 0.0 => select.push((i, n)),
                Some(_) => *keep = Keep::Nothing,
            }
        }
        keeps_of.push(keeps);
        if select.is_empty() {
            chosen.push(None);
            continue;
        }
        let targets = select
            .iter()
            .enumerate()
            .map(|(slot, &(_, n))| Target { key: Key::Delta(slot), count: Count::Exactly(n) })
            .collect();
        let sources = select.iter().map(|&(i, _)| source(inputs, i, name)).collect();
        jobs.push(Job { base: source(inputs, k, name), inputs: sources, targets, numel });
        chosen.push(Some((jobs.len() - 1, select.iter().map(|&(i, _)| i).collect())));
    }
    let found = fine::select_all(&jobs, run)?;
    let normalize = resolved.normalize.unwrap_or(true);
    let mut map = HashMap::new();
    for (((name, t), mut keeps), chosen) in resolved.tensors.iter().zip(keeps_of).zip(chosen) {
        if let Some((job, which)) = chosen {
            for (&i, &keep) in which.iter().zip(&found[job]) {
                keeps[i] = keep;
            }
        }
        map.insert(name.clone(), task_params(t, normalize, true, Sparsify::Magnitude(keeps)));
    }
    Ok(map)
}

/// Breadcrumbs: each task vector keeps the entries ranked below its `gamma`
/// outliers and above its smallest, by two selections per input in the same
/// passes; sign election for Breadcrumbs-TIES.
pub(super) fn breadcrumbs(
    resolved: &Resolved,
    inputs: &[Checkpoint],
    method: Method,
    run: &RunOptions,
) -> Result<HashMap<String, TaskParams>> {
    let k = inputs.len() - 1;
    let mut jobs = Vec::new();
    // Per tensor: its rules so far, its job, and per selected input the targets
    // of its kept ranks and of its outliers.
    type Chosen = Vec<(usize, Option<usize>, Option<usize>)>;
    let mut pending: Vec<(Vec<Keep>, Option<usize>, Chosen)> = Vec::new();
    for (name, t) in &resolved.tensors {
        let numel = t.numel as u64;
        let mut keeps = vec![Keep::All; k + 1];
        let mut sources = Vec::new();
        let mut targets = Vec::new();
        let mut chosen: Chosen = Vec::new();
        for (i, keep) in keeps.iter_mut().enumerate().take(k) {
            let Some((dropped, kept)) = breadcrumbs_counts(t.densities[i], t.gammas[i], t.numel)
            else {
                continue;
            };
            if kept == 0 || t.weights[i] == 0.0 {
                *keep = Keep::Nothing;
                continue;
            }
            let slot = sources.len();
            sources.push(source(inputs, i, name));
            let mut target = |count: u64| {
                (count > 0 && count < numel).then(|| {
                    targets.push(Target { key: Key::Delta(slot), count: Count::Exactly(count) });
                    targets.len() - 1
                })
            };
            let upper = target(dropped + kept);
            let lower = target(dropped);
            chosen.push((i, upper, lower));
        }
        let job = (!targets.is_empty()).then(|| {
            let base = source(inputs, k, name);
            jobs.push(Job { base, inputs: sources, targets, numel: t.numel });
            jobs.len() - 1
        });
        pending.push((keeps, job, chosen));
    }
    let found = fine::select_all(&jobs, run)?;
    let normalize = resolved.normalize.unwrap_or(false);
    let elect = method == Method::BreadcrumbsTies;
    let mut map = HashMap::new();
    for ((name, t), (mut keeps, job, chosen)) in resolved.tensors.iter().zip(pending) {
        let found: &[Keep] = job.map_or(&[], |j| &found[j]);
        let bounds = |target: Option<usize>, all: bool| match target.map(|j| found[j]) {
            Some(Keep::Above { threshold, last_tie }) => (threshold, last_tie),
            // A selection that resolved to everything, or a count of n.
            Some(Keep::All) | None if all => (0, u64::MAX),
            // No outliers: a bound above every key.
            _ => (u64::MAX, 0),
        };
        for (i, upper, lower) in chosen {
            let (threshold, last_tie) = bounds(upper, true);
            let (drop_threshold, drop_last_tie) = bounds(lower, false);
            keeps[i] = Keep::Band { threshold, last_tie, drop_threshold, drop_last_tie };
        }
        map.insert(name.clone(), task_params(t, normalize, elect, Sparsify::Magnitude(keeps)));
    }
    Ok(map)
}

/// DARE: random masks from the seed, then the task-vector reducer, with sign
/// election for DARE-TIES.
pub(super) fn dare(resolved: &Resolved, method: Method) -> HashMap<String, TaskParams> {
    let seed = resolved.seed.unwrap_or(0);
    let mut map = HashMap::new();
    for (name, t) in &resolved.tensors {
        let mut masks: Vec<Option<DropMask>> = t
            .densities
            .iter()
            .enumerate()
            .map(|(i, &d)| (d < 1.0).then(|| DropMask::new(seed, i, name, d)))
            .collect();
        masks.push(None);
        let mut densities = t.densities.clone();
        densities.push(1.0);
        let rescale = resolved.rescale.unwrap_or(true);
        let sparsify = Sparsify::Random { masks, densities, rescale };
        let normalize = resolved.normalize.unwrap_or(false);
        let elect = method == Method::DareTies;
        map.insert(name.clone(), task_params(t, normalize, elect, sparsify));
    }
    map
}

/// DELLA: per row, keep probabilities by magnitude rank (the reducer ranks
/// each row of a chunk), survivors rescaled by one over their probability;
/// sign election for DELLA (not DELLA-linear). Tensors of more than two
/// dimensions are refused: which axis to rank along is not defined for them.
pub(super) fn della(
    resolved: &Resolved,
    method: Method,
) -> std::result::Result<HashMap<String, TaskParams>, String> {
    let seed = resolved.seed.unwrap_or(0);
    let mut map = HashMap::new();
    for (name, t) in &resolved.tensors {
        let row = match t.shape.as_slice() {
            [] => 1,
            [n] => *n,
            [_, n] => *n,
            more => {
                return Err(format!(
                    "tensor {name:?} has {} dimensions; DELLA ranks entries within the rows \
                     of matrices and vectors only",
                    more.len()
                ))
            }
        };
        let mut ranked = Vec::with_capacity(t.densities.len() + 1);
        for (i, (&density, &epsilon)) in t.densities.iter().zip(&t.epsilons).enumerate() {
            if density >= 1.0 {
                ranked.push(None);
                continue;
            }
            if density > 0.0 && (density + epsilon >= 1.0 || density - epsilon <= 0.0) {
                return Err(format!(
                    "ingredient {}, tensor {name:?}: density ± epsilon ({density} ± {epsilon}) \
                     must lie strictly between 0 and 1",
                    i + 1
                ));
            }
            let mask = DropMask::stream(seed, i, name);
            ranked.push(Some(Ranked { mask, density, epsilon }));
        }
        ranked.push(None);
        let rescale = resolved.rescale.unwrap_or(true);
        let sparsify = Sparsify::Ranked { row, inputs: ranked, rescale };
        let normalize = resolved.normalize.unwrap_or(method == Method::Della);
        let elect = method == Method::Della;
        map.insert(name.clone(), task_params(t, normalize, elect, sparsify));
    }
    Ok(map)
}

/// SCE: the entries of largest variance across the task vectors (a selection
/// over the variance, when `select_topk` < 1), each task vector weighted by its
/// selected entries' mean square over the sum of those (equal weights where that
/// sum is below 10⁻⁶), sign election on the unweighted sum.
pub(super) fn sce(
    resolved: &Resolved,
    inputs: &[Checkpoint],
    run: &RunOptions,
) -> Result<HashMap<String, TaskParams>> {
    let k = inputs.len() - 1;
    let mut jobs = Vec::new();
    let mut keeps: Vec<Result<Keep, usize>> = Vec::new();
    for (name, t) in &resolved.tensors {
        keeps.push(if t.select_topk >= 1.0 || t.numel == 0 {
            Ok(Keep::All)
        } else if t.select_topk <= 0.0 {
            Ok(Keep::Nothing)
        } else {
            let target = Target { key: Key::Variance, count: Count::OfNonZero(t.select_topk) };
            let sources = (0..k).map(|i| source(inputs, i, name)).collect();
            let base = source(inputs, k, name);
            jobs.push(Job { base, inputs: sources, targets: vec![target], numel: t.numel });
            Err(jobs.len() - 1)
        });
    }
    let found = fine::select_all(&jobs, run)?;
    let mut map = HashMap::new();
    for ((name, t), keep) in resolved.tensors.iter().zip(keeps) {
        let sources: Vec<Source> = (0..k).map(|i| source(inputs, i, name)).collect();
        let base = source(inputs, k, name);
        let keep = keep.unwrap_or_else(|job| found[job][0]);
        let squares = if keep == Keep::Nothing {
            vec![0.0; k]
        } else {
            topk::selected_squares(base, &sources, keep, t.numel, run)?
        };
        let means: Vec<f64> = squares.iter().map(|s| s / t.numel.max(1) as f64).collect();
        let sum = means.iter().fold(0.0, |s, m| s + m);
        let mut weights: Vec<f64> = if sum.abs() < 1e-6 {
            vec![1.0 / k as f64; k]
        } else {
            means.iter().map(|m| m / sum).collect()
        };
        weights.push(0.0);
        let sparsify = Sparsify::Variance(keep);
        map.insert(
            name.clone(),
            TaskParams { weights, lambda: 1.0, normalize: true, elect_sign: true, sparsify },
        );
    }
    Ok(map)
}

/// Wraps a method's refusal of its inputs as the method's error.
pub(super) fn refuse(method: Method) -> impl Fn(String) -> Error {
    move |reason| Error::Method { method: method.name(), reason }
}
