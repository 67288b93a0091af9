//! A recipe's parameters resolved to numbers for every float tensor: each
//! ingredient's weight and density, λ and t, with filters and gradients applied
//! and every value checked before any data is read.
//!
//! An ingredient's own setting wins over the shared one; a setting whose rules
//! match no rule for a tensor falls through to the next (own → shared →
//! default). `t` has no default.

use crate::engine::checkpoint::Checkpoint;
use crate::engine::dtype::FloatDtype;
use crate::recipe::{layer_positions, Method, Parameters, Recipe, Setting};

/// One float tensor's numbers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorParams {
    /// Element count.
    pub numel: usize,
    /// One weight per ingredient.
    pub weights: Vec<f64>,
    /// The base's weight (linear merges only).
    pub base_weight: f64,
    /// One density per ingredient.
    pub densities: Vec<f64>,
    /// λ.
    pub lambda: f64,
    /// SLERP's t.
    pub t: f64,
}

/// Every float tensor's numbers, and the switches that do not vary.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// Float tensor names with their numbers, in the first input's order (a list,
    /// not a map, so that each name is held once: a header may list many).
    pub tensors: Vec<(String, TensorParams)>,
    /// The recipe's `normalize`, if set.
    pub normalize: Option<bool>,
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
        Method::Slerp => &["t"],
        Method::ModelStock => &[],
    }
}

/// The names of the parameters a recipe sets, anywhere.
fn present(recipe: &Recipe) -> Vec<&'static str> {
    let Parameters { weight, density, lambda, t, seed, normalize, rescale } = &recipe.parameters;
    let mut names = Vec::new();
    let own = recipe.ingredients.iter().chain(&recipe.base);
    if weight.is_some() || own.clone().any(|i| i.weight.is_some()) {
        names.push("weight");
    }
    if density.is_some() || own.clone().any(|i| i.density.is_some()) {
        names.push("density");
    }
    for (set, name) in [
        (lambda.is_some(), "lambda"),
        (t.is_some(), "t"),
        (seed.is_some(), "seed"),
        (normalize.is_some(), "normalize"),
        (rescale.is_some(), "rescale"),
    ] {
        if set {
            names.push(name);
        }
    }
    names
}

/// Checks every setting's numbers, then evaluates them for each float tensor of
/// `first`. The error names the parameter (and the tensor where it varies).
pub(crate) fn resolve(recipe: &Recipe, first: &Checkpoint) -> Result<Resolved, String> {
    let method = recipe.method;
    for name in present(recipe) {
        if !accepted(method).contains(&name) {
            return Err(format!("parameter {name} does not apply to {}", method.name()));
        }
    }
    let p = &recipe.parameters;
    let any = f64::MIN..=f64::MAX;
    let check = |name: &str, s: &Option<Setting>, range: std::ops::RangeInclusive<f64>| {
        s.as_ref().map_or(Ok(()), |s| s.validate(range).map_err(|e| format!("{name} {e}")))
    };
    check("weight", &p.weight, any.clone())?;
    check("density", &p.density, 0.0..=1.0)?;
    check("lambda", &p.lambda, any.clone())?;
    check("t", &p.t, 0.0..=1.0)?;
    for (i, ing) in recipe.ingredients.iter().chain(&recipe.base).enumerate() {
        check(&format!("ingredient {} ({}) weight", i + 1, ing.path), &ing.weight, any.clone())?;
        check(&format!("ingredient {} ({}) density", i + 1, ing.path), &ing.density, 0.0..=1.0)?;
    }
    if method == Method::Slerp && p.t.is_none() {
        return Err("needs t, the interpolation factor from the first model (0) to the second (1)"
            .to_owned());
    }

    let floats: Vec<&crate::TensorEntry> = first
        .tensors()
        .iter()
        .filter(|t| FloatDtype::from_safetensors(t.dtype).is_some())
        .collect();
    let positions = layer_positions(floats.iter().map(|t| t.name.as_str()));
    let mut tensors = Vec::with_capacity(floats.len());
    for entry in &floats {
        let name = entry.name.as_str();
        let at = positions.get(name).copied().unwrap_or(0.0);
        let eval = |own: &Option<Setting>, shared: &Option<Setting>, default: f64| {
            own.as_ref()
                .and_then(|s| s.at(name, at))
                .or_else(|| shared.as_ref().and_then(|s| s.at(name, at)))
                .unwrap_or(default)
        };
        let weights = recipe.ingredients.iter().map(|i| eval(&i.weight, &p.weight, 1.0)).collect();
        let densities =
            recipe.ingredients.iter().map(|i| eval(&i.density, &p.density, 1.0)).collect();
        let base_weight = recipe.base.as_ref().map_or(0.0, |b| eval(&b.weight, &p.weight, 1.0));
        let t = match &p.t {
            Some(s) if method == Method::Slerp => {
                s.at(name, at).ok_or_else(|| format!("t: no rule matches tensor {name:?}"))?
            }
            _ => 0.0,
        };
        let params = TensorParams {
            numel: entry.numel(),
            weights,
            base_weight,
            densities,
            lambda: eval(&None, &p.lambda, 1.0),
            t,
        };
        tensors.push((name.to_owned(), params));
    }
    Ok(Resolved { tensors, normalize: p.normalize })
}
