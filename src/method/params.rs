//! A recipe's parameters resolved to numbers for every float tensor: each
//! ingredient's weight, density, gamma and epsilon, λ, t and SCE's selected
//! fraction, with filters and gradients applied and every value checked before
//! any data is read.
//!
//! An ingredient's own setting wins over the shared ones; a setting whose rules
//! match no rule for a tensor falls through to the next (own → the slice's →
//! the recipe's → default), as mergekit resolves them. An ingredient's own
//! settings and the shared ones *as they apply to it* are matched against its
//! own name for the tensor (in a slice, the name of the block it is taken from),
//! the settings of the merge as a whole (λ, t) against the output's name. `t`
//! has no default.

use std::collections::BTreeMap;

use crate::engine::checkpoint::Checkpoint;
use crate::engine::dtype::FloatDtype;
use crate::recipe::{layer_positions, Ingredient, Method, Parameters, Setting};

/// One float tensor's numbers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorParams {
    /// Element count.
    pub numel: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// One weight per ingredient.
    pub weights: Vec<f64>,
    /// The base's weight (linear merges only).
    pub base_weight: f64,
    /// One density per ingredient.
    pub densities: Vec<f64>,
    /// One outlier fraction per ingredient (Breadcrumbs).
    pub gammas: Vec<f64>,
    /// One probability spread per ingredient (DELLA).
    pub epsilons: Vec<f64>,
    /// λ.
    pub lambda: f64,
    /// SLERP's and NearSwap's t.
    pub t: f64,
    /// SCE's selected fraction.
    pub select_topk: f64,
}

/// Every float tensor's numbers, and the switches that do not vary.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// Float tensor names with their numbers, in the first input's order (a list,
    /// not a map, so that each name is held once: a header may list many).
    pub tensors: Vec<(String, TensorParams)>,
    /// The first `normalize` set, if any.
    pub normalize: Option<bool>,
    /// The first `rescale` set, if any.
    pub rescale: Option<bool>,
    /// The first `seed` set, if any.
    pub seed: Option<u64>,
    /// The first `eps` set, if any.
    pub eps: Option<f64>,
    /// The first `max_iter` set, if any.
    pub max_iter: Option<u32>,
    /// The first `tol` set, if any.
    pub tol: Option<f64>,
}

/// Ingredient `i`'s own name for an output tensor.
pub(crate) type SourceName<'a> = &'a dyn Fn(usize, &str) -> String;

/// What to resolve: a method over its ingredients, with the shared settings in
/// order of precedence.
pub(crate) struct Spec<'a> {
    /// The method.
    pub method: Method,
    /// The ingredients, with their own settings.
    pub ingredients: &'a [Ingredient],
    /// The base, with its own settings (linear uses its weight).
    pub base: Option<&'a Ingredient>,
    /// Shared settings, the most specific first (a slice's, then the recipe's).
    pub shared: Vec<&'a Parameters>,
    /// Positions of the tensors for gradients, by name; `None`: the blocks of
    /// the first input ([`layer_positions`]).
    pub positions: Option<&'a BTreeMap<String, f64>>,
    /// Ingredient `i`'s own name for output tensor `name` (`None`: the same).
    pub source_name: Option<SourceName<'a>>,
}

/// The parameters each method reads; any other is an error, not ignored.
fn accepted(method: Method) -> &'static [&'static str] {
    match method {
        Method::Linear => &["weight", "normalize"],
        Method::TaskArithmetic => &["weight", "lambda", "normalize"],
        Method::Ties => &["weight", "density", "lambda", "normalize"],
        Method::DareLinear | Method::DareTies => {
            &["weight", "density", "lambda", "normalize", "rescale", "seed"]
        }
        Method::Breadcrumbs | Method::BreadcrumbsTies => {
            &["weight", "density", "gamma", "lambda", "normalize"]
        }
        Method::Della | Method::DellaLinear => {
            &["weight", "density", "epsilon", "lambda", "normalize", "rescale", "seed"]
        }
        Method::Sce => &["select_topk"],
        Method::Slerp | Method::Nearswap => &["t"],
        Method::Nuslerp | Method::Passthrough => &["weight"],
        Method::Multislerp => &["weight", "normalize", "eps"],
        Method::Karcher => &["max_iter", "tol"],
        Method::ModelStock => &[],
    }
}

/// The names of the parameters set anywhere in `spec`.
fn present(spec: &Spec) -> Vec<&'static str> {
    let mut names = Vec::new();
    let own = spec.ingredients.iter().chain(spec.base);
    let shared = &spec.shared;
    let any = |f: &dyn Fn(&Parameters) -> bool| shared.iter().any(|p| f(p));
    let per_model = [
        ("weight", any(&|p| p.weight.is_some()) || own.clone().any(|i| i.weight.is_some())),
        ("density", any(&|p| p.density.is_some()) || own.clone().any(|i| i.density.is_some())),
        ("gamma", any(&|p| p.gamma.is_some()) || own.clone().any(|i| i.gamma.is_some())),
        ("epsilon", any(&|p| p.epsilon.is_some()) || own.clone().any(|i| i.epsilon.is_some())),
        ("lambda", any(&|p| p.lambda.is_some())),
        ("t", any(&|p| p.t.is_some())),
        ("seed", any(&|p| p.seed.is_some())),
        ("normalize", any(&|p| p.normalize.is_some())),
        ("rescale", any(&|p| p.rescale.is_some())),
        ("select_topk", any(&|p| p.select_topk.is_some())),
        ("eps", any(&|p| p.eps.is_some())),
        ("max_iter", any(&|p| p.max_iter.is_some())),
        ("tol", any(&|p| p.tol.is_some())),
    ];
    for (name, set) in per_model {
        if set {
            names.push(name);
        }
    }
    names
}

/// Checks every setting's numbers, then evaluates them for each float tensor of
/// `first`. The error names the parameter (and the tensor where it varies).
pub(crate) fn resolve(spec: &Spec, first: &Checkpoint) -> Result<Resolved, String> {
    let method = spec.method;
    for name in present(spec) {
        if !accepted(method).contains(&name) {
            return Err(format!("parameter {name} does not apply to {}", method.name()));
        }
    }
    let any = f64::MIN..=f64::MAX;
    let check = |name: &str, s: &Option<Setting>, range: std::ops::RangeInclusive<f64>| {
        s.as_ref().map_or(Ok(()), |s| s.validate(range).map_err(|e| format!("{name} {e}")))
    };
    let t_range = if method == Method::Slerp { 0.0..=1.0 } else { any.clone() };
    for p in &spec.shared {
        check("weight", &p.weight, any.clone())?;
        check("density", &p.density, 0.0..=1.0)?;
        check("gamma", &p.gamma, 0.0..=1.0)?;
        check("epsilon", &p.epsilon, 0.0..=1.0)?;
        check("lambda", &p.lambda, any.clone())?;
        check("t", &p.t, t_range.clone())?;
        check("select_topk", &p.select_topk, 0.0..=1.0)?;
        for (name, value) in [("eps", p.eps), ("tol", p.tol)] {
            if value.is_some_and(|x| !x.is_finite() || x < 0.0) {
                return Err(format!("{name} must be a finite number ≥ 0"));
            }
        }
    }
    for (i, ing) in spec.ingredients.iter().chain(spec.base).enumerate() {
        let at = |name: &str| format!("ingredient {} ({}) {name}", i + 1, ing.path);
        check(&at("weight"), &ing.weight, any.clone())?;
        check(&at("density"), &ing.density, 0.0..=1.0)?;
        check(&at("gamma"), &ing.gamma, 0.0..=1.0)?;
        check(&at("epsilon"), &ing.epsilon, 0.0..=1.0)?;
    }
    let needs_t = matches!(method, Method::Slerp | Method::Nearswap);
    if needs_t && spec.shared.iter().all(|p| p.t.is_none()) {
        return Err(match method {
            Method::Slerp => {
                "needs t, the interpolation factor from the first model (0) to the second (1)"
            }
            _ => "needs t, the largest step from the base toward the other model",
        }
        .to_owned());
    }

    let floats: Vec<&crate::TensorEntry> = first
        .tensors()
        .iter()
        .filter(|t| FloatDtype::from_safetensors(t.dtype).is_some())
        .collect();
    let own_positions;
    let positions = match spec.positions {
        Some(p) => p,
        None => {
            own_positions = layer_positions(floats.iter().map(|t| t.name.as_str()));
            &own_positions
        }
    };
    let mut tensors = Vec::with_capacity(floats.len());
    for entry in &floats {
        let name = entry.name.as_str();
        let at = positions.get(name).copied().unwrap_or(0.0);
        // A shared setting for the merge as a whole, by the output's name.
        let shared = |get: &dyn Fn(&Parameters) -> &Option<Setting>| {
            spec.shared.iter().find_map(|p| get(p).as_ref().and_then(|s| s.at(name, at)))
        };
        // A per-model setting of ingredient `i`, by its own name for the tensor.
        let own = |i: usize,
                   ing: &Ingredient,
                   mine: &dyn Fn(&Ingredient) -> &Option<Setting>,
                   get: &dyn Fn(&Parameters) -> &Option<Setting>,
                   default: f64| {
            let source = spec.source_name.map(|f| f(i, name));
            let name = source.as_deref().unwrap_or(name);
            mine(ing)
                .as_ref()
                .and_then(|s| s.at(name, at))
                .or_else(|| {
                    spec.shared.iter().find_map(|p| get(p).as_ref().and_then(|s| s.at(name, at)))
                })
                .unwrap_or(default)
        };
        let each = |mine: &dyn Fn(&Ingredient) -> &Option<Setting>,
                    get: &dyn Fn(&Parameters) -> &Option<Setting>,
                    default: f64|
         -> Vec<f64> {
            spec.ingredients
                .iter()
                .enumerate()
                .map(|(i, g)| own(i, g, mine, get, default))
                .collect()
        };
        let weights = each(&|i| &i.weight, &|p| &p.weight, 1.0);
        let densities = each(&|i| &i.density, &|p| &p.density, 1.0);
        let gammas = each(&|i| &i.gamma, &|p| &p.gamma, 0.01);
        let epsilons = each(&|i| &i.epsilon, &|p| &p.epsilon, 0.15);
        let base_weight = spec
            .base
            .map_or(0.0, |b| own(spec.ingredients.len(), b, &|i| &i.weight, &|p| &p.weight, 1.0));
        let t = if needs_t {
            shared(&|p| &p.t).ok_or_else(|| format!("t: no rule matches tensor {name:?}"))?
        } else {
            0.0
        };
        let params = TensorParams {
            numel: entry.numel(),
            shape: entry.shape.clone(),
            weights,
            base_weight,
            densities,
            gammas,
            epsilons,
            lambda: shared(&|p| &p.lambda).unwrap_or(1.0),
            t,
            select_topk: shared(&|p| &p.select_topk).unwrap_or(1.0),
        };
        tensors.push((name.to_owned(), params));
    }
    let first_set =
        |get: &dyn Fn(&Parameters) -> Option<f64>| spec.shared.iter().find_map(|p| get(p));
    Ok(Resolved {
        tensors,
        normalize: spec.shared.iter().find_map(|p| p.normalize),
        rescale: spec.shared.iter().find_map(|p| p.rescale),
        seed: spec.shared.iter().find_map(|p| p.seed),
        eps: first_set(&|p| p.eps),
        max_iter: spec.shared.iter().find_map(|p| p.max_iter),
        tol: first_set(&|p| p.tol),
    })
}
