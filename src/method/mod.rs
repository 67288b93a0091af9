//! Merge methods: from a [`Recipe`] and its opened checkpoints to a [`Plan`] the
//! engine runs, with whatever statistics the method needs gathered first by
//! extra streaming passes.
//!
//! Every method ends in one of the engine's two per-chunk reducers:
//!
//! | method | statistics pass | reducer |
//! |---|---|---|
//! | linear | none | `Σ wᵢ·xᵢ` |
//! | task arithmetic | none | task vectors |
//! | SLERP | per-tensor norms and dot product of the two models | `Σ wᵢ·xᵢ` |
//! | Model Stock | per-tensor Gram matrix of the task vectors | `Σ wᵢ·xᵢ` |
//! | TIES | per-tensor radix selection of each task vector's top magnitudes (`method/topk.rs`) | task vectors |
//! | DARE (linear, TIES) | none: masks are a function of the seed ([`crate::engine::dropout`]) | task vectors |
//!
//! The passes stream chunk by chunk like the merge itself, so memory stays
//! bounded; `docs/METHODS.md` lists each method's passes and memory.

mod params;
mod topk;

use std::collections::HashMap;
use std::sync::Arc;

use crate::analysis::gram::{gram_pass, Gram};
use crate::engine::checkpoint::Checkpoint;
use crate::engine::dropout::DropMask;
use crate::engine::dtype::FloatDtype;
use crate::engine::execute::RunOptions;
use crate::engine::plan::{
    check_compatible, Mixing, NonFloatPolicy, OutputDtype, Plan, PlanOptions, TaskVectors, Weights,
    DEFAULT_MAX_SHARD_SIZE,
};
use crate::engine::task_vectors::{Keep, Sparsify, TaskParams};
use crate::error::{Error, Result};
use crate::recipe::{Method, Recipe};
use params::Resolved;

/// SLERP interpolates linearly when the two models' cosine is above this: the
/// spherical formula divides by `sin θ`, which vanishes (mergekit's value).
pub const SLERP_PARALLEL: f64 = 0.9995;

/// A recipe made ready to run: the engine's inputs (the ingredients, then the
/// base if there is one) and the plan over them.
#[derive(Debug)]
pub struct Prepared {
    /// The plan's inputs, in order.
    pub inputs: Vec<Checkpoint>,
    /// The plan.
    pub plan: Plan,
}

/// Plans `recipe` over its opened `ingredients` (in the recipe's order) and
/// `base`, running the method's statistics passes with `run`'s threads, progress
/// (bytes read) and cancel flag. The plan's metadata holds the recipe.
pub fn prepare(
    recipe: &Recipe,
    ingredients: &[Checkpoint],
    base: Option<&Checkpoint>,
    run: &RunOptions,
) -> Result<Prepared> {
    let method = recipe.method;
    let fail = |reason: String| Error::Method { method: method.name(), reason };
    if ingredients.len() != recipe.ingredients.len() {
        return Err(fail(format!(
            "{} checkpoints opened for {} ingredients",
            ingredients.len(),
            recipe.ingredients.len()
        )));
    }
    check_shape_of_inputs(recipe, ingredients.len(), base.is_some()).map_err(fail)?;
    let mut inputs = ingredients.to_vec();
    inputs.extend(base.cloned());
    let inputs = crate::engine::tied::reconcile(&inputs);
    check_compatible(&inputs)?;
    let first = inputs.first().ok_or(Error::NoIngredients)?;
    let resolved = params::resolve(recipe, first).map_err(fail)?;

    let k = ingredients.len();
    let mixing = match method {
        Method::Linear => linear(&resolved, k, base.is_some()).map_err(fail)?,
        Method::TaskArithmetic => task_arithmetic(&resolved, recipe, k),
        Method::Slerp => slerp(&resolved, &inputs, run)?,
        Method::ModelStock => model_stock(&resolved, &inputs[..k], &inputs[k], run)?,
        Method::Ties => ties(&resolved, &inputs, recipe, run)?,
        Method::DareLinear | Method::DareTies => dare(&resolved, recipe, k),
    };
    let dtype = match &recipe.output.dtype {
        Some(name) => OutputDtype::Force(
            name.parse::<FloatDtype>().map_err(|e| fail(format!("output dtype: {e}")))?,
        ),
        None => OutputDtype::Like(0),
    };
    let non_float = match recipe.output.non_float.as_deref() {
        None | Some("error") => NonFloatPolicy::RequireEqual,
        Some("first") => NonFloatPolicy::TakeFirst,
        Some(other) => {
            return Err(fail(format!("output non_float {other:?}: expected error or first")))
        }
    };
    let options = PlanOptions {
        mixing,
        dtype,
        max_shard_size: recipe.output.max_shard_size.unwrap_or(DEFAULT_MAX_SHARD_SIZE),
        non_float,
        metadata: recipe.to_metadata(),
    };
    let plan = Plan::new(&inputs, &options)?;
    Ok(Prepared { inputs, plan })
}

/// Checks the number of models and the base against what the method takes.
fn check_shape_of_inputs(recipe: &Recipe, k: usize, has_base: bool) -> Result<(), String> {
    let method = recipe.method;
    if recipe.base.is_some() != has_base {
        return Err("the base in the recipe and the base opened differ".to_owned());
    }
    if k == 0 {
        return Err("no ingredients".to_owned());
    }
    if method.needs_base() && !has_base {
        return Err("needs a base model (--base) to compute task vectors from".to_owned());
    }
    match method {
        Method::Slerp if k != 2 || has_base => Err(format!(
            "interpolates between exactly two models and takes no base ({k} ingredient{}{})",
            if k == 1 { "" } else { "s" },
            if has_base { " and a base" } else { "" }
        )),
        Method::ModelStock if k < 2 => {
            Err("needs at least two fine-tuned models to measure their angle".to_owned())
        }
        _ => Ok(()),
    }
}

/// Per-tensor weights looked up by name (every float tensor has an entry).
fn per_tensor(map: HashMap<String, Vec<f64>>, inputs: usize) -> Mixing {
    let zeros = vec![0.0; inputs];
    Mixing::Linear(Weights::PerTensor(Box::new(move |name| {
        map.get(name).cloned().unwrap_or_else(|| zeros.clone())
    })))
}

/// `Σ wᵢ·xᵢ` (+ `w_b·base`), divided by the weights' sum when normalising.
fn linear(resolved: &Resolved, k: usize, has_base: bool) -> Result<Mixing, String> {
    let mut map = HashMap::new();
    for (name, t) in &resolved.tensors {
        let mut w = t.weights.clone();
        if has_base {
            w.push(t.base_weight);
        }
        if resolved.normalize.unwrap_or(true) {
            // Scaled first, so that weights whose sum overflows (1e308, 1e308)
            // still normalise to what they mean instead of to zeros.
            rescale(&mut w);
            let sum: f64 = w.iter().sum();
            if sum == 0.0 || !sum.is_finite() {
                return Err(format!(
                    "the weights of tensor {name:?} sum to {sum}: cannot normalise"
                ));
            }
            w.iter_mut().for_each(|x| *x /= sum);
        }
        map.insert(name.clone(), w);
    }
    // One vector for all tensors (the usual case) needs no table by name.
    let mut vectors = map.values();
    if let Some(first) = vectors.next() {
        if vectors.all(|w| w == first) {
            return Ok(Mixing::Linear(Weights::Global(first.clone())));
        }
    }
    Ok(per_tensor(map, k + usize::from(has_base)))
}

/// `b + λ·Σ wᵢ(xᵢ − b) / D` (`D = Σ wᵢ` when normalising, else 1), by the
/// task-vector reducer: rewritten as one linear combination, the base's
/// coefficient `1 − λ·Σ wᵢ/D` would cancel and cost f64 outputs a few ulps.
fn task_arithmetic(resolved: &Resolved, recipe: &Recipe, k: usize) -> Mixing {
    let mut map = HashMap::new();
    for (name, t) in &resolved.tensors {
        let normalize = recipe.parameters.normalize.unwrap_or(false);
        map.insert(name.clone(), task_params(t, normalize, false, Sparsify::None));
    }
    task_vector_mixing(map, k)
}

/// Each float tensor's Gram matrix, by one streaming pass (deltas from `base`
/// when given, else raw weights).
fn gram_per_tensor(
    resolved: &Resolved,
    base: Option<&Checkpoint>,
    models: &[Checkpoint],
    run: &RunOptions,
) -> Result<HashMap<String, Gram>> {
    let names: Vec<&String> = resolved.tensors.iter().map(|(name, _)| name).collect();
    let index: HashMap<&str, usize> =
        names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let report = gram_pass(base, models, names.len(), &|n| index.get(n).copied(), run)?;
    Ok(names.into_iter().cloned().zip(report.groups).collect())
}

/// SLERP's coefficients per tensor from the angle between the two models.
fn slerp(resolved: &Resolved, inputs: &[Checkpoint], run: &RunOptions) -> Result<Mixing> {
    let grams = gram_per_tensor(resolved, None, inputs, run)?;
    let mut map = HashMap::new();
    for (name, t) in &resolved.tensors {
        let g = &grams[name];
        map.insert(name.clone(), slerp_coefficients(g.dot(0, 0), g.dot(1, 1), g.dot(0, 1), t.t));
    }
    Ok(per_tensor(map, 2))
}

/// The coefficients `(s₀, s₁)` of `slerp(t; a, b) = s₀·a + s₁·b` from `‖a‖²`,
/// `‖b‖²` and `⟨a, b⟩`: `sin((1−t)θ)/sin θ` and `sin(tθ)/sin θ`, or `1 − t` and
/// `t` when the vectors are (anti)parallel or either is zero.
pub fn slerp_coefficients(aa: f64, bb: f64, ab: f64, t: f64) -> Vec<f64> {
    let (na, nb) = (aa.sqrt(), bb.sqrt());
    if na == 0.0 || nb == 0.0 {
        return vec![1.0 - t, t];
    }
    let cos = (ab / (na * nb)).clamp(-1.0, 1.0);
    if cos.abs() > SLERP_PARALLEL {
        return vec![1.0 - t, t];
    }
    let theta = cos.acos();
    let sin = theta.sin();
    vec![((1.0 - t) * theta).sin() / sin, (t * theta).sin() / sin]
}

/// Model Stock's ratio per tensor: `t = k·cos / (1 + (k−1)·cos)` from the mean
/// pairwise cosine of the task vectors; the result is `t·mean(xᵢ) + (1−t)·b`.
fn model_stock(
    resolved: &Resolved,
    models: &[Checkpoint],
    base: &Checkpoint,
    run: &RunOptions,
) -> Result<Mixing> {
    let grams = gram_per_tensor(resolved, Some(base), models, run)?;
    let k = models.len();
    let mut map = HashMap::new();
    for (name, _) in &resolved.tensors {
        let t = model_stock_ratio(&grams[name]);
        let mut w = vec![t / k as f64; k];
        w.push(1.0 - t);
        map.insert(name.clone(), w);
    }
    Ok(per_tensor(map, k + 1))
}

/// Model Stock's interpolation ratio from a Gram matrix of task vectors (pairs
/// with a zero vector count as orthogonal; 0 where the formula is singular).
pub fn model_stock_ratio(g: &Gram) -> f64 {
    let k = g.k();
    let mut sum = 0.0;
    let mut pairs = 0usize;
    for i in 0..k {
        for j in i + 1..k {
            let norms = (g.dot(i, i).sqrt() * g.dot(j, j).sqrt()).max(1e-6);
            sum += (g.dot(i, j) / norms).clamp(-1.0, 1.0);
            pairs += 1;
        }
    }
    let cos = sum / pairs.max(1) as f64;
    let denominator = 1.0 + (k as f64 - 1.0) * cos;
    if denominator.abs() < 1e-6 {
        0.0
    } else {
        k as f64 * cos / denominator
    }
}

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

/// TIES: each tensor's magnitude thresholds by radix selection, then the
/// task-vector reducer with sign election.
fn ties(
    resolved: &Resolved,
    inputs: &[Checkpoint],
    recipe: &Recipe,
    run: &RunOptions,
) -> Result<Mixing> {
    let k = inputs.len() - 1;
    let mut map = HashMap::new();
    for (name, t) in &resolved.tensors {
        let source = |i: usize| -> topk::Source {
            let ck = &inputs[i];
            let tensor = ck.position(name).unwrap_or_default();
            let dtype =
                FloatDtype::from_safetensors(ck.tensors()[tensor].dtype).unwrap_or(FloatDtype::F32);
            topk::Source { checkpoint: ck, tensor, dtype }
        };
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
        if !select.is_empty() {
            let sources: Vec<(topk::Source, u64)> =
                select.iter().map(|&(i, n)| (source(i), n)).collect();
            let found = topk::largest(source(k), &sources, numel, run)?;
            for (&(i, _), keep) in select.iter().zip(found) {
                keeps[i] = keep;
            }
        }
        let normalize = recipe.parameters.normalize.unwrap_or(true);
        map.insert(name.clone(), task_params(t, normalize, true, Sparsify::Magnitude(keeps)));
    }
    Ok(task_vector_mixing(map, k))
}

/// DARE: random masks from the seed, then the task-vector reducer, with sign
/// election for DARE-TIES.
fn dare(resolved: &Resolved, recipe: &Recipe, k: usize) -> Mixing {
    let seed = recipe.parameters.seed.unwrap_or(0);
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
        let rescale = recipe.parameters.rescale.unwrap_or(true);
        let sparsify = Sparsify::Random { masks, densities, rescale };
        let normalize = recipe.parameters.normalize.unwrap_or(false);
        let elect = recipe.method == Method::DareTies;
        map.insert(name.clone(), task_params(t, normalize, elect, sparsify));
    }
    task_vector_mixing(map, k)
}

/// One tensor's task-vector parameters over the `k` models and the base, whose
/// slot (index `k`, weight 0) is appended.
fn task_params(
    t: &params::TensorParams,
    normalize: bool,
    elect_sign: bool,
    sparsify: Sparsify,
) -> TaskParams {
    let mut weights = t.weights.clone();
    if normalize {
        // The reducer divides by Σ wᵢ, which must not overflow.
        rescale(&mut weights);
    }
    weights.push(0.0);
    TaskParams { weights, lambda: t.lambda, normalize, elect_sign, sparsify }
}

/// Multiplies the weights by the power of two that brings the largest magnitude
/// into `[1, 2)`: exact, so their ratios (all that normalising keeps) are
/// unchanged bit for bit, and their sum can no longer overflow. Weights all zero
/// (or not finite, which the plan refuses) are left alone.
fn rescale(weights: &mut [f64]) {
    let max = weights.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    if max == 0.0 || !max.is_finite() {
        return;
    }
    let e = max.log2().floor() as i32;
    // In two steps, so that neither factor overflows (2^1074 would).
    let (a, b) = (-e / 2, -e - (-e / 2));
    let (fa, fb) = (2f64.powi(a), 2f64.powi(b));
    weights.iter_mut().for_each(|w| *w = *w * fa * fb);
}

/// The task-vector mixing over `k` models and the base at index `k`.
fn task_vector_mixing(map: HashMap<String, TaskParams>, k: usize) -> Mixing {
    let map = Arc::new(map);
    let fallback = TaskParams {
        weights: vec![0.0; k + 1],
        lambda: 1.0,
        normalize: false,
        elect_sign: false,
        sparsify: Sparsify::None,
    };
    Mixing::TaskVectors(TaskVectors {
        base: k,
        params: Box::new(move |name| map.get(name).cloned().unwrap_or_else(|| fallback.clone())),
    })
}
