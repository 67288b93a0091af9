//! mergekit configurations read into [`Recipe`]s.
//!
//! A configuration is read only when soup can make the same merge from it: every
//! key is either translated or refused with an error that names it and where it
//! was (`models[2].parameters.gamma: not supported for ties`); none is skipped
//! silently. Key names, defaults and the placement of the base model follow
//! mergekit 0.1.5 (`config.py`, `plan.py`, `merge_methods/`).
//!
//! Read:
//!
//! - `merge_method`: `linear`, `task_arithmetic`, `ties`, `dare_linear`,
//!   `dare_ties`, `slerp`, `model_stock`;
//! - `models`: entries `{model: PATH, parameters: {...}}` (or a bare path);
//! - `base_model`: a path;
//! - `parameters`: the method's own (`weight`, `density`, `lambda`, `t`,
//!   `normalize`, `rescale`, `int8_mask`, `filter_wise`), each a number, a
//!   gradient or `{filter, value}` rules for numbers, a plain boolean for flags;
//! - `dtype`, `out_dtype`: the output dtype is `out_dtype`, else `dtype` (soup
//!   computes in f64 whatever `dtype` says).
//!
//! Refused: every other method; `slices`, `modules`, `tokenizer_source`,
//! `tokenizer`, `chat_template`; LoRA (`model+lora`) references, and revisions
//! (`model@rev`) of anything but a Hub id (`org/name@rev`, from the local cache);
//! parameters the method does not use, or uses only globally;
//! parameters given to a base model that the method ignores; `rescale: true` for
//! `ties` and `filter_wise: true` for `model_stock`, which soup does not compute.
//! A key whose value is null is absent, as in mergekit.
//!
//! Where soup's arithmetic differs from mergekit 0.1.5's (the recipe is still the
//! one the configuration describes; the numbers may differ):
//!
//! - soup computes every merge in f64 and rounds once to the output dtype, where
//!   mergekit computes in `dtype` (or in float32) — so `dtype` alone never makes a
//!   merge less exact here;
//! - DARE's surviving entries are rescaled by `1/density` (the paper), where
//!   mergekit rescales each task vector to keep its L1 norm; and DARE's drops are
//!   seeded (seed 0, mergekit's `torch.bernoulli` is unseeded), so no two tools'
//!   DARE soups agree entry by entry anyway;
//! - SLERP: both take each tensor as one vector, but mergekit computes the angle
//!   and the blend in float32 (measured in BENCHMARKS.md: 99.7 % identical);
//! - TIES keeps exactly `max(1, floor(density·n))` entries of each task vector,
//!   breaking ties in magnitude by index (mergekit keeps the same count, but its
//!   `argsort` breaks ties in no specified order);
//! - support files (tokenizer, config) come from the first ingredient; mergekit
//!   takes them from the base model. For the task-vector methods the base is not
//!   an ingredient, so the donor differs.

use serde_json::{Map, Value as Json};

use super::{Ingredient, Method, Recipe, Setting};
use crate::engine::hub::ModelId;

/// The mergekit methods soup reads, by mergekit's name.
const METHODS: [(&str, Method); 7] = [
    ("linear", Method::Linear),
    ("task_arithmetic", Method::TaskArithmetic),
    ("ties", Method::Ties),
    ("dare_linear", Method::DareLinear),
    ("dare_ties", Method::DareTies),
    ("slerp", Method::Slerp),
    ("model_stock", Method::ModelStock),
];

/// The top-level keys soup reads.
const READ_KEYS: [&str; 6] =
    ["merge_method", "models", "base_model", "parameters", "dtype", "out_dtype"];

/// mergekit's other top-level keys, all refused (unless null, which is absent).
const REFUSED_KEYS: [&str; 5] =
    ["slices", "modules", "tokenizer_source", "tokenizer", "chat_template"];

/// Translates a parsed mergekit configuration into a recipe, or says which key
/// cannot be honoured.
pub fn translate(config: &Json) -> Result<Recipe, String> {
    let top = config.as_object().ok_or("a mergekit configuration must be a map of keys")?;
    let method = method(top.get("merge_method"))?;
    check_top_level_keys(top)?;

    let globals = match present(top.get("parameters")) {
        None => Globals::default(),
        Some(Json::Object(parameters)) => Globals::read(method, parameters)?,
        Some(other) => return Err(format!("parameters: expected a map, found {other}")),
    };
    let models = match present(top.get("models")) {
        Some(Json::Array(entries)) if !entries.is_empty() => entries
            .iter()
            .enumerate()
            .map(|(i, entry)| Model::read(method, entry, i))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Json::Array(_)) => return Err("models: the list is empty".to_owned()),
        Some(other) => return Err(format!("models: expected a list of models, found {other}")),
        None => {
            return Err("models: missing (soup merges the whole models listed there)".to_owned())
        }
    };
    for (i, model) in models.iter().enumerate() {
        if let Some(first) = models[..i].iter().find(|m| m.path == model.path) {
            // mergekit refuses duplicate inputs too.
            return Err(format!(
                "{}: {:?} is listed twice (also {})",
                model.at, model.path, first.at
            ));
        }
    }
    let base = present(top.get("base_model")).map(|v| reference(v, "base_model")).transpose()?;

    let mut recipe = match method {
        Method::Linear => linear(models, base, &globals)?,
        Method::TaskArithmetic | Method::Ties | Method::DareLinear | Method::DareTies => {
            task_vectors(method, models, base, &globals)?
        }
        Method::Slerp => slerp(models, base, &globals)?,
        Method::ModelStock => model_stock(models, base, &globals)?,
    };
    recipe.output.dtype = output_dtype(top)?.map(str::to_owned);
    Ok(recipe)
}

/// The method named by `merge_method`, if soup reads it.
fn method(value: Option<&Json>) -> Result<Method, String> {
    let supported = || METHODS.map(|(n, _)| n).join(", ");
    let name = match value {
        Some(Json::String(name)) => name,
        Some(other) => {
            return Err(format!(
                "merge_method: expected a method name ({}), found {other}",
                supported()
            ))
        }
        None => return Err(format!("merge_method: missing (one of {})", supported())),
    };
    METHODS
        .iter()
        .find(|(n, _)| n == name)
        .map(|&(_, m)| m)
        .ok_or_else(|| format!("merge_method: {name} is not supported; soup reads {}", supported()))
}

/// mergekit's name for one of our methods, for messages.
fn mergekit_name(method: Method) -> &'static str {
    METHODS.iter().find(|(_, m)| *m == method).map_or("?", |(n, _)| n)
}

/// Refuses the top-level keys soup does not read, naming each.
fn check_top_level_keys(top: &Map<String, Json>) -> Result<(), String> {
    for (key, value) in top {
        let key = key.as_str();
        if READ_KEYS.contains(&key) || (REFUSED_KEYS.contains(&key) && value.is_null()) {
            continue;
        }
        let why = match key {
            "slices" => {
                "not supported: soup merges whole models; list them under `models` (a \
                 slice that spans every layer of each model is the same merge)"
            }
            "modules" => "not supported: soup merges whole models; list them under `models`",
            "tokenizer_source" | "tokenizer" | "chat_template" => {
                "not supported: soup copies the tokenizer, chat template and other support \
                 files unchanged from the first ingredient; remove the key"
            }
            _ => {
                "unknown key (soup reads merge_method, models, base_model, parameters, dtype \
                 and out_dtype)"
            }
        };
        return Err(format!("{key}: {why}"));
    }
    Ok(())
}

/// `None` for an absent key or a null value (mergekit reads null as absent).
fn present(value: Option<&Json>) -> Option<&Json> {
    value.filter(|v| !v.is_null())
}

/// A model reference: a local path or Hub id as given (`org/name@revision`
/// included: ids are read from the local Hugging Face cache). LoRA
/// (`model+lora`) references are refused, as are references written as maps.
fn reference(value: &Json, at: &str) -> Result<String, String> {
    let path = match value {
        Json::String(path) => path,
        Json::Object(_) => {
            return Err(format!(
                "{at}: expected a path; models written as maps (revision, lora, \
                 override_architecture) are not supported"
            ))
        }
        other => return Err(format!("{at}: expected a path, found {other}")),
    };
    if path.is_empty() {
        return Err(format!("{at}: the path is empty"));
    }
    if path.contains('+') {
        return Err(format!(
            "{at}: {path:?} names a LoRA adapter (model+lora), which is not supported; \
             merge the adapter into its model first"
        ));
    }
    if path.contains('@') && ModelId::parse(path).is_none() {
        return Err(format!(
            "{at}: {path:?} names a revision (model@revision) of something that is not a \
             Hub id (org/name@revision, read from the local Hugging Face cache); give the \
             path of a local checkpoint"
        ));
    }
    Ok(path.clone())
}

/// What a parameter is to a method.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A number setting, global or per model (`weight`, `density`).
    PerModel,
    /// A number setting, global only (`lambda`, `t`).
    Global,
    /// A plain boolean, global only.
    Flag,
    /// A key mergekit accepts for the method but that changes nothing in its
    /// result; refused, with the reason, so that nobody believes it did something.
    NoEffect(&'static str),
}

/// The role of parameter `key` in `method`, `None` if the method has no such
/// parameter. Taken from the methods' parameter specs in mergekit 0.1.5.
fn role(method: Method, key: &str) -> Option<Role> {
    use Method::*;
    let task_vectors = matches!(method, TaskArithmetic | Ties | DareLinear | DareTies);
    let sparsifies = matches!(method, Ties | DareLinear | DareTies);
    let no_sparsify = "has no effect in mergekit's task_arithmetic, which does not sparsify; \
                       remove it (ties, dare_linear and dare_ties use it)";
    match key {
        "weight" if method == Linear || task_vectors => Some(Role::PerModel),
        "density" if sparsifies => Some(Role::PerModel),
        "density" | "rescale" if method == TaskArithmetic => Some(Role::NoEffect(no_sparsify)),
        "lambda" if task_vectors => Some(Role::Global),
        "t" if method == Slerp => Some(Role::Global),
        "normalize" if method == Linear || task_vectors => Some(Role::Flag),
        "rescale" if sparsifies => Some(Role::Flag),
        // int8_mask only chooses the dtype of mergekit's sign mask (int8 or the
        // base's dtype); the mask's values, and so the merge, are the same either
        // way. Accepted for every method that takes it, and dropped.
        "int8_mask" if task_vectors => Some(Role::Flag),
        "filter_wise" if method == ModelStock => Some(Role::Flag),
        _ => None,
    }
}

/// The global `parameters`, read and checked.
#[derive(Default)]
struct Globals {
    weight: Option<Setting>,
    density: Option<Setting>,
    lambda: Option<Setting>,
    t: Option<Setting>,
    normalize: Option<bool>,
    rescale: Option<bool>,
    filter_wise: Option<bool>,
}

impl Globals {
    fn read(method: Method, parameters: &Map<String, Json>) -> Result<Self, String> {
        let mut g = Globals::default();
        for (key, value) in parameters {
            let at = format!("parameters.{key}");
            match role(method, key) {
                None => return Err(format!("{at}: not supported for {}", mergekit_name(method))),
                Some(Role::NoEffect(why)) => return Err(format!("{at}: {why}")),
                Some(Role::PerModel | Role::Global) => {
                    let setting = Some(number_setting(value, &at)?);
                    match key.as_str() {
                        "weight" => g.weight = setting,
                        "density" => g.density = setting,
                        "lambda" => g.lambda = setting,
                        _ => g.t = setting,
                    }
                }
                Some(Role::Flag) => {
                    let flag = Some(flag(value, &at)?);
                    match key.as_str() {
                        "normalize" => g.normalize = flag,
                        "rescale" => g.rescale = flag,
                        "filter_wise" => g.filter_wise = flag,
                        _ => {} // int8_mask, see `role`
                    }
                }
            }
        }
        Ok(g)
    }
}

/// One entry of `models`.
struct Model {
    /// Where it was: `models[i]`.
    at: String,
    path: String,
    weight: Option<Setting>,
    density: Option<Setting>,
    /// The keys of its `parameters`, for refusing them on a base model.
    keys: Vec<String>,
}

impl Model {
    fn read(method: Method, entry: &Json, i: usize) -> Result<Self, String> {
        let at = format!("models[{i}]");
        let mut model =
            Model { path: String::new(), weight: None, density: None, keys: Vec::new(), at };
        let map = match entry {
            Json::String(_) => {
                model.path = reference(entry, &model.at)?;
                return Ok(model);
            }
            Json::Object(map) => map,
            other => {
                return Err(format!("{}: expected {{model, parameters}}, found {other}", model.at))
            }
        };
        for key in map.keys() {
            if key != "model" && key != "parameters" {
                return Err(format!(
                    "{}.{key}: unknown key (a model entry has model and parameters)",
                    model.at
                ));
            }
        }
        model.path = match map.get("model") {
            Some(value) => reference(value, &format!("{}.model", model.at))?,
            None => return Err(format!("{}.model: missing", model.at)),
        };
        let parameters = match present(map.get("parameters")) {
            None => return Ok(model),
            Some(Json::Object(parameters)) => parameters,
            Some(other) => {
                return Err(format!("{}.parameters: expected a map, found {other}", model.at))
            }
        };
        for (key, value) in parameters {
            let at = format!("{}.parameters.{key}", model.at);
            let name = mergekit_name(method);
            match role(method, key) {
                None => return Err(format!("{at}: not supported for {name}")),
                Some(Role::NoEffect(why)) => return Err(format!("{at}: {why}")),
                Some(Role::Global | Role::Flag) => {
                    return Err(format!(
                        "{at}: a global parameter of {name} (mergekit ignores it per model); \
                         put it under the top-level parameters"
                    ))
                }
                Some(Role::PerModel) => {
                    let setting = Some(number_setting(value, &at)?);
                    if key == "weight" {
                        model.weight = setting;
                    } else {
                        model.density = setting;
                    }
                    model.keys.push(key.clone());
                }
            }
        }
        Ok(model)
    }

    fn ingredient(self) -> Ingredient {
        Ingredient {
            path: self.path,
            weight: self.weight,
            density: self.density,
            ..Default::default()
        }
    }
}

/// `linear`: `Σ wᵢ·θᵢ`, divided by `Σ wᵢ` unless `normalize: false` (mergekit's
/// default is true, so it is always written out).
///
/// mergekit's linear ignores which input is the base (its base policy is
/// "ignored"), but its planner adds `base_model` to the inputs when it is not
/// listed in `models` ("Base model specified but not in input models - adding"),
/// where it takes the global weight. So a `base_model` is one more ingredient:
/// where it is listed, or appended last, as mergekit does.
fn linear(models: Vec<Model>, base: Option<String>, g: &Globals) -> Result<Recipe, String> {
    for model in &models {
        require_weight(model.weight.is_some(), g, &model.at, &model.path, Method::Linear)?;
    }
    let listed = base.as_ref().is_none_or(|b| models.iter().any(|m| &m.path == b));
    let mut ingredients: Vec<Ingredient> = models.into_iter().map(Model::ingredient).collect();
    if let (Some(base), false) = (base, listed) {
        if g.weight.is_none() {
            return Err(format!(
                "base_model: linear merges the base model too (mergekit adds it to the \
                 models), but {base:?} has no weight: set parameters.weight, or list it \
                 under models with a weight"
            ));
        }
        ingredients.push(Ingredient::path(base));
    }
    let mut recipe = Recipe::new(Method::Linear, ingredients);
    recipe.parameters.weight = g.weight.clone();
    recipe.parameters.normalize = Some(g.normalize.unwrap_or(true));
    Ok(recipe)
}

/// `task_arithmetic`, `ties`, `dare_linear`, `dare_ties`: the base's task
/// vectors, with mergekit's defaults written out (normalize: true for ties, false
/// for the others; rescale: true for DARE).
fn task_vectors(
    method: Method,
    models: Vec<Model>,
    base: Option<String>,
    g: &Globals,
) -> Result<Recipe, String> {
    let name = mergekit_name(method);
    let base = base.ok_or_else(|| format!("base_model: missing; {name} needs a base model"))?;
    let others = without_base(models, &base, method)?;
    for model in &others {
        require_weight(model.weight.is_some(), g, &model.at, &model.path, method)?;
    }
    if method == Method::Ties && g.rescale == Some(true) {
        return Err("parameters.rescale: true is not supported for ties (mergekit would \
                    rescale each trimmed task vector to its L1 norm; soup's TIES does not \
                    rescale)"
            .to_owned());
    }
    let mut recipe = Recipe::new(method, others.into_iter().map(Model::ingredient).collect());
    recipe.base = Some(Ingredient::path(base));
    recipe.parameters.weight = g.weight.clone();
    recipe.parameters.density = g.density.clone();
    recipe.parameters.lambda = g.lambda.clone();
    recipe.parameters.normalize = Some(g.normalize.unwrap_or(method == Method::Ties));
    if matches!(method, Method::DareLinear | Method::DareTies) {
        recipe.parameters.rescale = Some(g.rescale.unwrap_or(true));
    }
    Ok(recipe)
}

/// `slerp`: mergekit interpolates from the base (`t = 0`) to the one other model
/// (`t = 1`). Soup's SLERP has no base, and goes from its first ingredient to its
/// second: so the ingredients are `[base, other]`, and `t` is as given.
fn slerp(models: Vec<Model>, base: Option<String>, g: &Globals) -> Result<Recipe, String> {
    let base = base.ok_or(
        "base_model: missing; slerp interpolates from the base model (t = 0) to the \
         other model (t = 1)",
    )?;
    let mut others = without_base(models, &base, Method::Slerp)?;
    if others.len() != 1 {
        return Err(format!(
            "models: slerp takes two models, the base and one other; found {} besides {base:?}",
            others.len()
        ));
    }
    let t = g.t.clone().ok_or("parameters.t: missing; slerp requires it")?;
    let other = others.remove(0).ingredient();
    let mut recipe = Recipe::new(Method::Slerp, vec![Ingredient::path(base), other]);
    recipe.parameters.t = Some(t);
    Ok(recipe)
}

/// `model_stock`: the base and at least two other models, each tensor taken as
/// one vector (`filter_wise: false`, mergekit's default).
fn model_stock(models: Vec<Model>, base: Option<String>, g: &Globals) -> Result<Recipe, String> {
    let base = base.ok_or("base_model: missing; model_stock needs a base model")?;
    if g.filter_wise == Some(true) {
        return Err("parameters.filter_wise: true is not supported (soup's Model Stock takes \
                    each tensor as one vector, mergekit's filter_wise: false)"
            .to_owned());
    }
    let others = without_base(models, &base, Method::ModelStock)?;
    if others.len() < 2 {
        return Err(format!(
            "models: model_stock needs at least two models besides the base model {base:?}; \
             found {}",
            others.len()
        ));
    }
    let mut recipe =
        Recipe::new(Method::ModelStock, others.into_iter().map(Model::ingredient).collect());
    recipe.base = Some(Ingredient::path(base));
    Ok(recipe)
}

/// The models other than the base. mergekit configurations often list the base
/// among the models too (without parameters); it is then the base, not an
/// ingredient. Parameters on it are refused: mergekit ignores them.
fn without_base(models: Vec<Model>, base: &str, method: Method) -> Result<Vec<Model>, String> {
    let mut others = Vec::with_capacity(models.len());
    for model in models {
        if model.path != base {
            others.push(model);
        } else if let Some(key) = model.keys.first() {
            return Err(format!(
                "{}.parameters.{key}: {:?} is the base model, and {} does not use a base \
                 model's {key} (mergekit ignores it); remove it",
                model.at,
                model.path,
                mergekit_name(method)
            ));
        }
    }
    if others.is_empty() {
        return Err(format!("models: no model besides the base model {base:?}"));
    }
    Ok(others)
}

/// mergekit requires a weight for every model of a linear or task-vector merge
/// (its `weight` parameter has no default), where soup's default is 1: a model
/// with no weight of its own and no global one is refused, as mergekit does.
fn require_weight(
    own: bool,
    g: &Globals,
    at: &str,
    path: &str,
    method: Method,
) -> Result<(), String> {
    if own || g.weight.is_some() {
        return Ok(());
    }
    Err(format!(
        "{at} ({path:?}): no weight, here or in the top-level parameters; mergekit requires a \
         weight for every model in {}",
        mergekit_name(method)
    ))
}

/// The output dtype: `out_dtype` if given, else `dtype`. mergekit's `dtype` is
/// the dtype it loads and computes in, and the output's when `out_dtype` is
/// absent; soup always computes in f64, so only the output's dtype remains. Both
/// keys are checked.
fn output_dtype(top: &Map<String, Json>) -> Result<Option<&'static str>, String> {
    let read = |key: &str| present(top.get(key)).map(|v| dtype(v, key)).transpose();
    let dtype = read("dtype")?;
    let out_dtype = read("out_dtype")?;
    Ok(out_dtype.or(dtype))
}

/// One of mergekit's float dtype names (with or without `torch.`) or their short
/// forms, as our dtype name.
fn dtype(value: &Json, key: &str) -> Result<&'static str, String> {
    let expected = "bfloat16, float16, float32 or float64";
    let Json::String(name) = value else {
        return Err(format!("{key}: expected a dtype name ({expected}), found {value}"));
    };
    match name.strip_prefix("torch.").unwrap_or(name) {
        "bfloat16" | "bf16" => Ok("bf16"),
        "float16" | "fp16" | "half" => Ok("f16"),
        "float32" | "fp32" | "float" => Ok("f32"),
        "float64" => Ok("f64"),
        _ => Err(format!("{key}: {name} is not supported; soup writes {expected}")),
    }
}

/// A boolean parameter: `true` or `false`, nothing else (mergekit would also
/// take gradients and filters of booleans; soup's flags are global).
fn flag(value: &Json, at: &str) -> Result<bool, String> {
    let expected = "true or false (a plain boolean, not a gradient or filters)";
    value.as_bool().ok_or_else(|| format!("{at}: expected {expected}, found {value}"))
}

/// A number parameter in one of mergekit's forms: a number, a gradient (a list
/// of numbers), a `{filter, value}` map, or a list of such maps, whose value is
/// a number or a gradient. A missing filter and `filter: "*"` match every tensor,
/// in mergekit and in [`Setting`] alike. Checked here, key by key, so that
/// soup's own rule key `layers`, which mergekit does not have, is refused.
fn number_setting(value: &Json, at: &str) -> Result<Setting, String> {
    let expected = "a number, a list of numbers (a gradient), or {filter, value} rules";
    match value {
        Json::Number(_) => {}
        Json::Array(items) if items.is_empty() => return Err(format!("{at}: the list is empty")),
        Json::Array(items) if items.iter().all(Json::is_number) => {}
        Json::Array(items) if items.iter().all(Json::is_object) => {
            for (j, item) in items.iter().filter_map(Json::as_object).enumerate() {
                rule(item, &format!("{at}[{j}]"))?;
            }
        }
        Json::Array(_) => {
            return Err(format!(
                "{at}: expected {expected}; a list must be all numbers or all rules"
            ))
        }
        Json::Object(map) => rule(map, at)?,
        other => return Err(format!("{at}: expected {expected}, found {other}")),
    }
    serde_json::from_value(value.clone()).map_err(|e| format!("{at}: {e}"))
}

/// Checks one `{filter, value}` rule.
fn rule(map: &Map<String, Json>, at: &str) -> Result<(), String> {
    for (key, v) in map {
        match key.as_str() {
            "filter" if v.is_string() || v.is_null() => {}
            "filter" => return Err(format!("{at}.filter: expected text, found {v}")),
            "value" => match v {
                Json::Number(_) => {}
                Json::Array(g) if !g.is_empty() && g.iter().all(Json::is_number) => {}
                _ => {
                    return Err(format!(
                        "{at}.value: expected a number or a list of numbers, found {v}"
                    ))
                }
            },
            _ => {
                return Err(format!(
                    "{at}.{key}: unknown key (a mergekit rule has filter and value)"
                ))
            }
        }
    }
    if !map.contains_key("value") {
        return Err(format!("{at}.value: missing"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::recipe::{Rule, Value};

    fn translate_yaml(text: &str) -> Result<Recipe, String> {
        let value: Json = serde_saphyr::from_str(text).expect("valid YAML");
        translate(&value)
    }

    fn error(text: &str) -> String {
        translate_yaml(text).expect_err("refused")
    }

    fn gradient(values: &[f64]) -> Setting {
        Setting::Value(Value::Gradient(values.to_vec()))
    }

    fn rule(filter: Option<&str>, value: Value) -> Rule {
        Rule { filter: filter.map(str::to_owned), layers: None, value }
    }

    fn ingredient(path: &str, weight: Option<f64>, density: Option<f64>) -> Ingredient {
        Ingredient {
            path: path.to_owned(),
            weight: weight.map(Setting::from),
            density: density.map(Setting::from),
            ..Default::default()
        }
    }

    /// The fixtures, by file name, for the parse test and the end-to-end tests.
    const FIXTURES: [(&str, &str); 8] = [
        ("linear.yaml", include_str!("../../tests/fixtures/mergekit/linear.yaml")),
        (
            "task_arithmetic.yaml",
            include_str!("../../tests/fixtures/mergekit/task_arithmetic.yaml"),
        ),
        ("ties.yaml", include_str!("../../tests/fixtures/mergekit/ties.yaml")),
        ("dare_linear.yaml", include_str!("../../tests/fixtures/mergekit/dare_linear.yaml")),
        ("dare_ties.yaml", include_str!("../../tests/fixtures/mergekit/dare_ties.yaml")),
        ("slerp.yaml", include_str!("../../tests/fixtures/mergekit/slerp.yaml")),
        ("model_stock.yaml", include_str!("../../tests/fixtures/mergekit/model_stock.yaml")),
        ("ties_gradient.yaml", include_str!("../../tests/fixtures/mergekit/ties_gradient.yaml")),
    ];

    fn fixture(name: &str) -> Recipe {
        let (_, text) = FIXTURES.iter().find(|(n, _)| *n == name).expect("a fixture");
        let path = Path::new("tests/fixtures/mergekit").join(name);
        Recipe::parse(text, &path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn linear_with_weights_normalises_by_default() {
        let mut expected = Recipe::new(
            Method::Linear,
            vec![
                ingredient("a", Some(0.5), None),
                ingredient("b", Some(0.3), None),
                ingredient("c", Some(0.2), None),
            ],
        );
        expected.parameters.normalize = Some(true);
        expected.output.dtype = Some("f32".to_owned());
        assert_eq!(fixture("linear.yaml"), expected);

        let plain = "merge_method: linear\nmodels: [{model: a}, b]\n\
                     parameters: {weight: 1.0, normalize: false}\n";
        let mut expected =
            Recipe::new(Method::Linear, vec![Ingredient::path("a"), Ingredient::path("b")]);
        expected.parameters.weight = Some(Setting::from(1.0));
        expected.parameters.normalize = Some(false);
        assert_eq!(translate_yaml(plain).unwrap(), expected);
    }

    #[test]
    fn linear_merges_a_base_model_too_as_mergekit_adds_it_to_the_inputs() {
        let listed = "merge_method: linear\nbase_model: base\nmodels:\n\
                      - {model: base, parameters: {weight: 0.2}}\n\
                      - {model: a, parameters: {weight: 0.8}}\n";
        let mut expected = Recipe::new(
            Method::Linear,
            vec![ingredient("base", Some(0.2), None), ingredient("a", Some(0.8), None)],
        );
        expected.parameters.normalize = Some(true);
        assert_eq!(translate_yaml(listed).unwrap(), expected);

        let appended = "merge_method: linear\nbase_model: base\nmodels: [{model: a}]\n\
                        parameters: {weight: 1}\n";
        let mut expected =
            Recipe::new(Method::Linear, vec![Ingredient::path("a"), Ingredient::path("base")]);
        expected.parameters.weight = Some(Setting::from(1.0));
        expected.parameters.normalize = Some(true);
        assert_eq!(translate_yaml(appended).unwrap(), expected);

        let unweighted = "merge_method: linear\nbase_model: base\n\
                          models: [{model: a, parameters: {weight: 1}}]\n";
        let err = error(unweighted);
        assert!(err.starts_with("base_model:") && err.contains("no weight"), "{err}");
    }

    #[test]
    fn task_arithmetic_keeps_lambda_and_writes_out_normalize_false() {
        let mut expected = Recipe::new(
            Method::TaskArithmetic,
            vec![ingredient("a", Some(1.0), None), ingredient("b", Some(0.5), None)],
        );
        expected.base = Some(Ingredient::path("base"));
        expected.parameters.lambda = Some(Setting::from(0.8));
        expected.parameters.normalize = Some(false);
        expected.output.dtype = Some("f32".to_owned());
        assert_eq!(fixture("task_arithmetic.yaml"), expected);
    }

    #[test]
    fn ties_drops_the_listed_base_and_keeps_per_model_density_and_weight() {
        let mut expected = Recipe::new(
            Method::Ties,
            vec![
                ingredient("a", Some(0.5), Some(0.5)),
                ingredient("b", Some(0.3), Some(0.5)),
                ingredient("c", Some(0.2), Some(0.7)),
            ],
        );
        expected.base = Some(Ingredient::path("base"));
        expected.parameters.normalize = Some(true);
        expected.output.dtype = Some("f32".to_owned());
        assert_eq!(fixture("ties.yaml"), expected);
    }

    #[test]
    fn dare_writes_out_rescale_and_mergekits_normalize_default() {
        let mut expected = Recipe::new(
            Method::DareLinear,
            vec![ingredient("a", Some(0.6), None), ingredient("b", Some(0.4), None)],
        );
        expected.base = Some(Ingredient::path("base"));
        expected.parameters.density = Some(Setting::from(0.6));
        expected.parameters.normalize = Some(true);
        expected.parameters.rescale = Some(true);
        expected.output.dtype = Some("f32".to_owned());
        assert_eq!(fixture("dare_linear.yaml"), expected);

        let mut expected = Recipe::new(
            Method::DareTies,
            vec![
                ingredient("a", Some(0.4), Some(0.53)),
                ingredient("b", Some(0.3), Some(0.53)),
                ingredient("c", Some(0.3), Some(0.53)),
            ],
        );
        expected.base = Some(Ingredient::path("base"));
        expected.parameters.normalize = Some(false);
        expected.parameters.rescale = Some(true);
        // out_dtype wins over dtype.
        expected.output.dtype = Some("f32".to_owned());
        assert_eq!(fixture("dare_ties.yaml"), expected);

        let no_rescale = "merge_method: dare_ties\nbase_model: base\n\
                          models: [{model: a, parameters: {weight: 1, density: 0.5}}]\n\
                          parameters: {rescale: false}\n";
        assert_eq!(translate_yaml(no_rescale).unwrap().parameters.rescale, Some(false));
    }

    #[test]
    fn slerp_puts_the_base_first_and_keeps_filtered_gradients() {
        let mut expected =
            Recipe::new(Method::Slerp, vec![Ingredient::path("base"), Ingredient::path("a")]);
        expected.parameters.t = Some(Setting::Rules(vec![
            rule(Some("self_attn"), Value::Gradient(vec![0.0, 0.5, 0.3, 0.7, 1.0])),
            rule(Some("mlp"), Value::Gradient(vec![1.0, 0.5, 0.7, 0.3, 0.0])),
            rule(None, Value::Number(0.5)),
        ]));
        expected.output.dtype = Some("f32".to_owned());
        assert_eq!(fixture("slerp.yaml"), expected);

        // The base need not be listed, and may come second: it is still first here.
        let unlisted = "merge_method: slerp\nbase_model: base\nmodels: [{model: a}]\n\
                        parameters: {t: 0.25}\n";
        let reordered = "merge_method: slerp\nbase_model: base\n\
                         models: [{model: a}, {model: base}]\nparameters: {t: 0.25}\n";
        let mut expected =
            Recipe::new(Method::Slerp, vec![Ingredient::path("base"), Ingredient::path("a")]);
        expected.parameters.t = Some(Setting::from(0.25));
        assert_eq!(translate_yaml(unlisted).unwrap(), expected);
        assert_eq!(translate_yaml(reordered).unwrap(), expected);
    }

    #[test]
    fn model_stock_has_a_base_and_the_other_models() {
        let mut expected = Recipe::new(
            Method::ModelStock,
            vec![Ingredient::path("a"), Ingredient::path("b"), Ingredient::path("c")],
        );
        expected.base = Some(Ingredient::path("base"));
        expected.output.dtype = Some("f32".to_owned());
        assert_eq!(fixture("model_stock.yaml"), expected);

        let filter_wise_false = "merge_method: model_stock\nbase_model: base\n\
                                 models: [{model: base}, {model: a}, {model: b}]\n\
                                 parameters: {filter_wise: false}\n";
        let mut expected =
            Recipe::new(Method::ModelStock, vec![Ingredient::path("a"), Ingredient::path("b")]);
        expected.base = Some(Ingredient::path("base"));
        assert_eq!(translate_yaml(filter_wise_false).unwrap(), expected);
    }

    #[test]
    fn gradients_and_filters_translate_per_model_and_globally() {
        let mut expected = Recipe::new(
            Method::Ties,
            vec![
                Ingredient {
                    path: "a".to_owned(),
                    weight: Some(Setting::Rules(vec![
                        rule(Some("mlp"), Value::Number(0.7)),
                        rule(None, Value::Number(0.4)),
                    ])),
                    density: Some(gradient(&[0.2, 0.5, 0.8])),
                    ..Default::default()
                },
                ingredient("b", None, Some(0.5)),
            ],
        );
        expected.base = Some(Ingredient::path("base"));
        expected.parameters.weight = Some(Setting::from(0.5));
        expected.parameters.lambda = Some(gradient(&[1.0, 0.8]));
        expected.parameters.normalize = Some(false);
        expected.output.dtype = Some("bf16".to_owned());
        assert_eq!(fixture("ties_gradient.yaml"), expected);

        // A single {filter, value} map is one rule; "*" is kept and matches all.
        let single = "merge_method: task_arithmetic\nbase_model: base\nmodels: [a]\n\
                      parameters: {weight: {filter: '*', value: [0, 1]}}\n";
        let weight = translate_yaml(single).unwrap().parameters.weight.unwrap();
        assert_eq!(weight, Setting::Rules(vec![rule(Some("*"), Value::Gradient(vec![0.0, 1.0]))]));
        assert_eq!(weight.at("lm_head.weight", 0.5), Some(0.5));
    }

    #[test]
    fn every_fixture_parses_as_a_recipe_with_base_a_b_c_paths() {
        for (name, _) in FIXTURES {
            let recipe = fixture(name);
            let paths = recipe.ingredients.iter().chain(&recipe.base).map(|i| i.path.as_str());
            for path in paths {
                assert!(["base", "a", "b", "c"].contains(&path), "{name}: {path}");
            }
        }
    }

    #[test]
    fn unsupported_methods_are_named_with_the_supported_ones() {
        for method in [
            "passthrough",
            "breadcrumbs",
            "breadcrumbs_ties",
            "della",
            "della_linear",
            "sce",
            "karcher",
            "nuslerp",
            "multislerp",
            "arcee_fusion",
            "nearswap",
        ] {
            let err = error(&format!("merge_method: {method}\nmodels: [a, b]\n"));
            assert!(err.contains(method) && err.contains("dare_ties, slerp, model_stock"), "{err}");
        }
        assert!(error("merge_method: 3\nmodels: [a]\n").starts_with("merge_method:"));
    }

    #[test]
    fn unsupported_top_level_keys_are_named() {
        let ties = "merge_method: ties\nbase_model: base\n\
                    models: [{model: a, parameters: {weight: 1}}]\n";
        for (key, value, says) in [
            ("slices", "[]", "whole models"),
            ("modules", "{}", "whole models"),
            ("tokenizer_source", "base", "first ingredient"),
            ("tokenizer_source", "union", "first ingredient"),
            ("tokenizer", "{source: base}", "first ingredient"),
            ("chat_template", "chatml", "first ingredient"),
            ("name", "my-merge", "unknown key"),
            ("seed", "7", "unknown key"),
            ("lambda", "0.5", "unknown key"),
        ] {
            let err = error(&format!("{ties}{key}: {value}\n"));
            assert!(err.starts_with(&format!("{key}: ")) && err.contains(says), "{err}");
        }
        // Null is absent, as in mergekit.
        assert!(translate_yaml(&format!("{ties}tokenizer_source: null\ndtype: null\n")).is_ok());
    }

    #[test]
    fn unsupported_parameters_are_named_with_where_they_were() {
        let base = "base_model: base\n";
        let cases = [
            // Unknown to the method, per model and globally.
            (
                "ties",
                "models: [{model: a, parameters: {weight: 1, gamma: 0.01}}]",
                "models[0].parameters.gamma: not supported for ties",
            ),
            (
                "ties",
                "models: [{model: b, parameters: {weight: 1}}, {model: c, \
                 parameters: {weight: 1}}, {model: a, parameters: {epsilon: 0.1}}]",
                "models[2].parameters.epsilon: not supported for ties",
            ),
            (
                "ties",
                "models: [a]\nparameters: {weight: 1, t: 0.5}",
                "parameters.t: not supported for ties",
            ),
            (
                "slerp",
                "models: [a]\nparameters: {t: 0.5, weight: 1}",
                "parameters.weight: not supported for slerp",
            ),
            (
                "model_stock",
                "models: [a, b]\nparameters: {density: 0.5}",
                "parameters.density: not supported for model_stock",
            ),
            (
                "linear",
                "models: [{model: a, parameters: {weight: 1, density: 0.5}}]",
                "models[0].parameters.density: not supported for linear",
            ),
            (
                "linear",
                "models: [a]\nparameters: {weight: 1, lambda: 2}",
                "parameters.lambda: not supported for linear",
            ),
            (
                "linear",
                "models: [a]\nparameters: {weight: 1, int8_mask: true}",
                "parameters.int8_mask: not supported for linear",
            ),
            // Global parameters given per model.
            (
                "ties",
                "models: [{model: a, parameters: {weight: 1, lambda: 0.5}}]",
                "models[0].parameters.lambda: a global parameter of ties",
            ),
            (
                "slerp",
                "models: [{model: a, parameters: {t: 0.5}}]\nparameters: {t: 0.5}",
                "models[0].parameters.t: a global parameter of slerp",
            ),
            // Accepted by mergekit, but without effect.
            (
                "task_arithmetic",
                "models: [a]\nparameters: {weight: 1, density: 0.5}",
                "parameters.density: has no effect",
            ),
            (
                "task_arithmetic",
                "models: [{model: a, parameters: {weight: 1, rescale: true}}]",
                "models[0].parameters.rescale: has no effect",
            ),
            // Ignored by mergekit on the base model.
            (
                "ties",
                "models: [{model: base, parameters: {weight: 0.5}}, {model: a, \
                 parameters: {weight: 1}}]",
                "models[0].parameters.weight: \"base\" is the base model",
            ),
            // Values soup does not compute.
            (
                "ties",
                "models: [a]\nparameters: {weight: 1, rescale: true}",
                "parameters.rescale: true is not supported for ties",
            ),
            (
                "model_stock",
                "models: [a, b]\nparameters: {filter_wise: true}",
                "parameters.filter_wise: true is not supported",
            ),
            // Unknown keys of a model entry or a rule.
            ("ties", "models: [{model: a, weight: 1}]", "models[0].weight: unknown key"),
            (
                "ties",
                "models: [{model: a, parameters: {weight: [{filter: mlp, value: 1}, \
                 {layers: [rest], value: 0}]}}]",
                "models[0].parameters.weight[1].layers: unknown key",
            ),
            (
                "ties",
                "models: [a]\nparameters: {weight: {filter: mlp, value: 1, gamma: 2}}",
                "parameters.weight.gamma: unknown key",
            ),
            ("ties", "models: [{parameters: {weight: 1}}]", "models[0].model: missing"),
        ];
        for (method, rest, says) in cases {
            let err = error(&format!("merge_method: {method}\n{base}{rest}\n"));
            assert!(err.starts_with(says), "{method} {rest}:\n  {err}\n  expected {says}");
        }
    }

    #[test]
    fn flags_are_plain_booleans_and_numbers_are_numbers() {
        let ties = "merge_method: ties\nbase_model: base\nmodels: [a]\nparameters:\n  weight: 1\n";
        for (key, value) in [
            ("normalize", "[true, false]"),
            ("normalize", "{filter: mlp, value: true}"),
            ("int8_mask", "1"),
            ("rescale", "'false'"),
        ] {
            let err = error(&format!("{ties}  {key}: {value}\n"));
            assert!(err.starts_with(&format!("parameters.{key}: expected true or false")), "{err}");
        }
        for (value, says) in [
            ("'0.5'", "expected a number"),
            ("true", "expected a number"),
            ("[]", "the list is empty"),
            ("[0.5, {value: 1}]", "all numbers or all rules"),
            ("{filter: mlp}", "parameters.density.value: missing"),
            ("{filter: mlp, value: []}", "parameters.density.value: expected a number"),
            ("[{filter: 3, value: 1}]", "parameters.density[0].filter: expected text"),
        ] {
            let err = error(&format!("{ties}  density: {value}\n"));
            assert!(err.starts_with("parameters.density") && err.contains(says), "{err}");
        }
    }

    #[test]
    fn models_and_base_models_are_local_paths_only() {
        let cases = [
            (
                "linear",
                "models: [{model: a+lora, parameters: {weight: 1}}]",
                "models[0].model: \"a+lora\" names a LoRA adapter",
            ),
            (
                "linear",
                "models: ['a@main']\nparameters: {weight: 1}",
                "models[0]: \"a@main\" names a revision",
            ),
            (
                "ties",
                "base_model: base+lora\nmodels: [{model: a, parameters: {weight: 1}}]",
                "base_model: \"base+lora\" names a LoRA adapter",
            ),
            (
                "linear",
                "models: [{model: {model: {path: a}}}]\nparameters: {weight: 1}",
                "models[0].model: expected a path",
            ),
            (
                "linear",
                "models: [a, b, a]\nparameters: {weight: 1}",
                "models[2]: \"a\" is listed twice (also models[0])",
            ),
            ("linear", "models: []", "models: the list is empty"),
            ("linear", "slices: null", "models: missing"),
        ];
        for (method, rest, says) in cases {
            let err = error(&format!("merge_method: {method}\n{rest}\n"));
            assert!(err.starts_with(says), "{rest}:\n  {err}\n  expected {says}");
        }
    }

    #[test]
    fn structural_requirements_follow_mergekit() {
        let cases = [
            ("ties", "models: [{model: a, parameters: {weight: 1}}]", "base_model: missing"),
            (
                "ties",
                "base_model: base\nmodels: [base]",
                "models: no model besides the base model \"base\"",
            ),
            (
                "ties",
                "base_model: base\nmodels: [{model: a, parameters: {weight: 1}}, {model: b, \
                 parameters: {density: 0.5}}]",
                "models[1] (\"b\"): no weight",
            ),
            (
                "linear",
                "models: [a, {model: b, parameters: {weight: 1}}]",
                "models[0] (\"a\"): no weight",
            ),
            ("slerp", "models: [a, b]\nparameters: {t: 0.5}", "base_model: missing"),
            (
                "slerp",
                "base_model: base\nmodels: [a, b]\nparameters: {t: 0.5}",
                "models: slerp takes two models",
            ),
            ("slerp", "base_model: base\nmodels: [a]", "parameters.t: missing"),
            (
                "model_stock",
                "base_model: base\nmodels: [base, a]",
                "models: model_stock needs at least two models",
            ),
        ];
        for (method, rest, says) in cases {
            let err = error(&format!("merge_method: {method}\n{rest}\n"));
            assert!(err.starts_with(says), "{method} {rest}:\n  {err}\n  expected {says}");
        }
    }

    #[test]
    fn dtypes_map_to_ours_and_others_are_named() {
        let linear = "merge_method: linear\nmodels: [a]\nparameters: {weight: 1}\n";
        for (name, ours) in [
            ("bfloat16", "bf16"),
            ("bf16", "bf16"),
            ("torch.bfloat16", "bf16"),
            ("float16", "f16"),
            ("fp16", "f16"),
            ("half", "f16"),
            ("float32", "f32"),
            ("fp32", "f32"),
            ("float", "f32"),
            ("float64", "f64"),
        ] {
            let recipe = translate_yaml(&format!("{linear}dtype: {name}\n")).unwrap();
            assert_eq!(recipe.output.dtype.as_deref(), Some(ours), "{name}");
        }
        let both =
            translate_yaml(&format!("{linear}dtype: float32\nout_dtype: bfloat16\n")).unwrap();
        assert_eq!(both.output.dtype.as_deref(), Some("bf16"));
        assert_eq!(translate_yaml(linear).unwrap().output.dtype, None);
        for (key, value) in [("dtype", "int64"), ("out_dtype", "float8_e4m3fn"), ("dtype", "f32")] {
            let err = error(&format!("{linear}{key}: {value}\n"));
            assert!(err.starts_with(&format!("{key}: {value} is not supported")), "{err}");
        }
        // A bad compute dtype is refused even when out_dtype decides the output.
        let err = error(&format!("{linear}dtype: int8\nout_dtype: float32\n"));
        assert!(err.starts_with("dtype: int8"), "{err}");
    }

    #[test]
    fn parse_wraps_errors_with_the_file() {
        let err = Recipe::parse("merge_method: della\nmodels: [a]\n", Path::new("m.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("recipe m.yaml: merge_method: della is not supported"), "{err}");
    }
}
