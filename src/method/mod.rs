//! Merge methods: from a [`Recipe`] and its opened checkpoints to a [`Plan`] the
//! engine runs, with whatever statistics the method needs gathered first by
//! extra streaming passes.
//!
//! Every method ends in one of the engine's two per-chunk reducers:
//!
//! | method | statistics pass | reducer |
//! |---|---|---|
//! | linear, passthrough | none | `Σ wᵢ·xᵢ` |
//! | task arithmetic | none | task vectors |
//! | SLERP, NuSLERP, Multi-SLERP, Karcher | per-tensor Gram matrix of the models (or task vectors) | `Σ wᵢ·xᵢ` (task vectors with a base) |
//! | Model Stock | per-tensor Gram matrix of the task vectors | `Σ wᵢ·xᵢ` |
//! | TIES, Breadcrumbs | per-tensor radix selection of each task vector's top magnitudes (`method/topk.rs`) | task vectors |
//! | DARE, DELLA | none: masks are a function of the seed ([`crate::engine::dropout`]) | task vectors |
//! | SCE | selection of the entries of largest variance, then each task vector's mean square | task vectors |
//! | NearSwap | none | task vectors |
//!
//! A recipe with slices (`method/slices.rs`) is planned part by part — the
//! embeddings, each slice, the rest — each part a merge of views of the models
//! whose blocks are renamed to their place in the output.
//!
//! The passes stream chunk by chunk like the merge itself, so memory stays
//! bounded; `docs/METHODS.md` lists each method's passes and memory.

mod fine;
mod params;
mod slices;
mod sparse;
mod sphere;
mod topk;

use std::collections::HashMap;
use std::sync::Arc;

pub use sparse::{breadcrumbs_counts, ties_keep_count};
pub use sphere::{
    karcher_coefficients, model_stock_ratio, multislerp_coefficients, nuslerp_coefficients,
    slerp_coefficients, SLERP_PARALLEL,
};

use crate::analysis::gram::{gram_pass, Gram};
use crate::engine::checkpoint::Checkpoint;
use crate::engine::dtype::FloatDtype;
use crate::engine::execute::RunOptions;
use crate::engine::plan::{
    check_compatible, Mixing, NonFloatPolicy, OutputDtype, Plan, PlanOptions, TaskVectors, Weights,
    DEFAULT_MAX_SHARD_SIZE,
};
use crate::engine::task_vectors::{Sparsify, TaskParams};
use crate::error::{Error, Result};
use crate::recipe::{Method, Recipe};
use params::{Resolved, Spec};
use sparse::task_params;

/// A recipe made ready to run: the engine's inputs (the ingredients, then the
/// base if there is one; for slices, every part's views in turn) and the plan
/// over them.
#[derive(Debug)]
pub struct Prepared {
    /// The plan's inputs, in order.
    pub inputs: Vec<Checkpoint>,
    /// The plan.
    pub plan: Plan,
    /// For a recipe with slices, the number of blocks of the output (for its
    /// config); `None` when the blocks are those of the models.
    pub blocks: Option<usize>,
}

/// Plans `recipe` over its opened `ingredients` (in the recipe's order) and
/// `base`, running the method's statistics passes with `run`'s threads, progress
/// (bytes read) and cancel flag. The plan's metadata holds the recipe. For a
/// recipe with slices, see [`prepare_models`].
pub fn prepare(
    recipe: &Recipe,
    ingredients: &[Checkpoint],
    base: Option<&Checkpoint>,
    run: &RunOptions,
) -> Result<Prepared> {
    let method = recipe.method;
    let fail = sparse::refuse(method);
    if !recipe.slices.is_empty() {
        return Err(fail(
            "a recipe with slices is planned from its models (prepare_models)".into(),
        ));
    }
    if ingredients.len() != recipe.ingredients.len() {
        return Err(fail(format!(
            "{} checkpoints opened for {} ingredients",
            ingredients.len(),
            recipe.ingredients.len()
        )));
    }
    if recipe.base.is_some() != base.is_some() {
        return Err(fail("the base in the recipe and the base opened differ".to_owned()));
    }
    check_shape_of_inputs(method, ingredients.len(), base.is_some()).map_err(&fail)?;
    let mut inputs = ingredients.to_vec();
    inputs.extend(base.cloned());
    let inputs = crate::engine::tied::reconcile(&inputs);
    check_compatible(&inputs)?;
    let first = inputs.first().ok_or(Error::NoIngredients)?;
    let spec = Spec {
        method,
        ingredients: &recipe.ingredients,
        base: recipe.base.as_ref(),
        shared: vec![&recipe.parameters],
        positions: None,
        source_name: None,
    };
    let resolved = params::resolve(&spec, first).map_err(&fail)?;
    let mixing = mixing(method, &resolved, &inputs, ingredients.len(), base.is_some(), run)?;
    let mut options = plan_options(recipe)?;
    options.mixing = mixing;
    let plan = Plan::new(&inputs, &options)?;
    Ok(Prepared { inputs, plan, blocks: None })
}

/// Plans any recipe, with or without slices, over its opened `models`, one per
/// path of [`Recipe::models`] in that order.
pub fn prepare_models(
    recipe: &Recipe,
    models: &[Checkpoint],
    run: &RunOptions,
) -> Result<Prepared> {
    let method = recipe.method;
    let fail = sparse::refuse(method);
    let paths = recipe.models();
    if paths.len() != models.len() {
        return Err(fail(format!(
            "{} checkpoints opened for {} models",
            models.len(),
            paths.len()
        )));
    }
    let by_path: HashMap<&str, &Checkpoint> = paths.iter().copied().zip(models).collect();
    if recipe.slices.is_empty() {
        let ingredients: Vec<Checkpoint> =
            recipe.ingredients.iter().map(|i| by_path[i.path.as_str()].clone()).collect();
        let base = recipe.base.as_ref().map(|b| by_path[b.path.as_str()].clone());
        return prepare(recipe, &ingredients, base.as_ref(), run);
    }
    let (parts, blocks) = slices::parts(recipe, &by_path).map_err(&fail)?;
    let mut planned = Vec::with_capacity(parts.len());
    for part in parts {
        let k = part.ingredients.len();
        let has_base = part.base.is_some();
        check_shape_of_inputs(method, k, has_base)
            .map_err(|e| fail(format!("{}: {e}", part.label)))?;
        let inputs = crate::engine::tied::reconcile(&part.inputs);
        check_compatible(&inputs)?;
        let first = inputs.first().ok_or(Error::NoIngredients)?;
        let source_name =
            |i: usize, name: &str| part.source_names[i].get(name).cloned().unwrap_or(name.into());
        let spec = Spec {
            method,
            ingredients: &part.ingredients,
            base: part.base.as_ref(),
            shared: part.shared.iter().collect(),
            positions: Some(&part.positions),
            source_name: Some(&source_name),
        };
        let resolved =
            params::resolve(&spec, first).map_err(|e| fail(format!("{}: {e}", part.label)))?;
        let mixing = mixing(method, &resolved, &inputs, k, has_base, run)?;
        planned.push((inputs, mixing));
    }
    let options = plan_options(recipe)?;
    let (inputs, plan) = Plan::from_parts(planned, &options)?;
    Ok(Prepared { inputs, plan, blocks: Some(blocks) })
}

/// The plan options a recipe's output settings give (the mixing is set by the
/// caller).
fn plan_options(recipe: &Recipe) -> Result<PlanOptions> {
    let fail = sparse::refuse(recipe.method);
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
    Ok(PlanOptions {
        mixing: Mixing::Linear(Weights::Global(Vec::new())),
        dtype,
        max_shard_size: recipe.output.max_shard_size.unwrap_or(DEFAULT_MAX_SHARD_SIZE),
        non_float,
        metadata: recipe.to_metadata(),
    })
}

/// The mixing of `method` over `inputs` (`k` models, then the base when
/// `has_base`), with its statistics passes.
fn mixing(
    method: Method,
    resolved: &Resolved,
    inputs: &[Checkpoint],
    k: usize,
    has_base: bool,
    run: &RunOptions,
) -> Result<Mixing> {
    let fail = sparse::refuse(method);
    let base = has_base.then(|| &inputs[k]);
    Ok(match method {
        Method::Linear => linear(resolved, k, has_base).map_err(&fail)?,
        Method::Passthrough => {
            let map =
                resolved.tensors.iter().map(|(n, t)| (n.clone(), t.weights.clone())).collect();
            per_tensor(map, k)
        }
        Method::TaskArithmetic => {
            let normalize = resolved.normalize.unwrap_or(false);
            let map = resolved
                .tensors
                .iter()
                .map(|(n, t)| (n.clone(), task_params(t, normalize, false, Sparsify::None)))
                .collect();
            task_vector_mixing(map, k)
        }
        Method::Slerp => slerp(resolved, inputs, run)?,
        Method::ModelStock => model_stock(resolved, &inputs[..k], &inputs[k], run)?,
        Method::Ties => task_vector_mixing(sparse::ties(resolved, inputs, run)?, k),
        Method::DareLinear | Method::DareTies => {
            task_vector_mixing(sparse::dare(resolved, method), k)
        }
        Method::Breadcrumbs | Method::BreadcrumbsTies => {
            task_vector_mixing(sparse::breadcrumbs(resolved, inputs, method, run)?, k)
        }
        Method::Della | Method::DellaLinear => {
            task_vector_mixing(sparse::della(resolved, method).map_err(&fail)?, k)
        }
        Method::Sce => task_vector_mixing(sparse::sce(resolved, inputs, run)?, k),
        Method::Nearswap => {
            let map = resolved
                .tensors
                .iter()
                .map(|(n, t)| {
                    let params = TaskParams {
                        weights: vec![1.0, 0.0],
                        lambda: 1.0,
                        normalize: false,
                        elect_sign: false,
                        sparsify: Sparsify::NearSwap { t: t.t },
                    };
                    (n.clone(), params)
                })
                .collect();
            task_vector_mixing(map, k)
        }
        Method::Nuslerp | Method::Multislerp | Method::Karcher => {
            spherical(method, resolved, &inputs[..k], base, run)?
        }
    })
}

/// Checks the number of models and the base against what the method takes.
fn check_shape_of_inputs(method: Method, k: usize, has_base: bool) -> Result<(), String> {
    if k == 0 {
        return Err("no ingredients".to_owned());
    }
    if method.needs_base() && !has_base {
        return Err("needs a base model (--base) to compute task vectors from".to_owned());
    }
    match method {
        Method::Slerp if k != 2 || has_base => Err(format!(
            "interpolates between exactly two models and takes no base ({k} ingredient{}{})",
            plural(k),
            if has_base { " and a base" } else { "" }
        )),
        _ if has_base && !method.takes_base() => {
            Err(format!("takes no base ({k} ingredient{} and a base)", plural(k)))
        }
        Method::Nuslerp if k != 2 => Err(format!(
            "interpolates between exactly two models (or their task vectors from a base); \
             found {k}"
        )),
        Method::Nearswap if k != 1 => {
            Err(format!("moves the base toward exactly one other model; found {k}"))
        }
        Method::Passthrough if k != 1 => Err(format!(
            "takes exactly one model (or one per slice); found {k} (to stack layers of \
             several models, use slices)"
        )),
        Method::ModelStock if k < 2 => {
            Err("needs at least two fine-tuned models to measure their angle".to_owned())
        }
        _ => Ok(()),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
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

/// NuSLERP, Multi-SLERP and the Karcher mean: coefficients per tensor from the
/// Gram matrix of the models (of their task vectors with a base, except for
/// Karcher, which merges the base as one more model), then the linear kernel, or
/// the task-vector reducer with a base.
fn spherical(
    method: Method,
    resolved: &Resolved,
    models: &[Checkpoint],
    base: Option<&Checkpoint>,
    run: &RunOptions,
) -> Result<Mixing> {
    let fail = sparse::refuse(method);
    let k = models.len();
    let karcher_inputs: Vec<Checkpoint>;
    let (vectors, origin) = match (method, base) {
        (Method::Karcher, Some(b)) => {
            karcher_inputs = models.iter().chain([b]).cloned().collect();
            (karcher_inputs.as_slice(), None)
        }
        _ => (models, base),
    };
    let grams = gram_per_tensor(resolved, origin, vectors, run)?;
    let mut map = HashMap::new();
    for (name, t) in &resolved.tensors {
        let g = &grams[name];
        let coefficients = match method {
            Method::Nuslerp => nuslerp_coefficients(g, t.weights[0], t.weights[1]),
            Method::Multislerp => {
                let normalize = resolved.normalize.unwrap_or(true);
                let eps = resolved.eps.unwrap_or(1e-8);
                multislerp_coefficients(g, &t.weights, normalize, eps)
                    .map_err(|e| fail(format!("tensor {name:?}: {e}")))?
            }
            _ => karcher_coefficients(
                g,
                resolved.max_iter.unwrap_or(10),
                resolved.tol.unwrap_or(1e-5),
            ),
        };
        map.insert(name.clone(), coefficients);
    }
    if method == Method::Karcher || base.is_none() {
        return Ok(per_tensor(map, vectors.len()));
    }
    if k == 1 {
        // One Multi-SLERP input is itself, not the base plus its task vector.
        let map = map.into_keys().map(|name| (name, vec![1.0, 0.0])).collect();
        return Ok(per_tensor(map, 2));
    }
    // Over task vectors: base + Σ cᵢ·(xᵢ − base), by the task-vector reducer
    // (as one linear combination the base's coefficient would cancel).
    let map = map
        .into_iter()
        .map(|(name, mut weights)| {
            weights.push(0.0);
            let params = TaskParams {
                weights,
                lambda: 1.0,
                normalize: false,
                elect_sign: false,
                sparsify: Sparsify::None,
            };
            (name, params)
        })
        .collect();
    Ok(task_vector_mixing(map, k))
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

/// Multiplies the weights by the power of two that brings the largest magnitude
/// into `[1, 2)`: exact, so their ratios (all that normalising keeps) are
/// unchanged bit for bit, and their sum can no longer overflow. Weights all zero
/// (or not finite, which the plan refuses) are left alone.
pub(super) fn rescale(weights: &mut [f64]) {
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
