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
//! `tokenizer`, `chat_template`; LoRA (`model+lora`) and revision (`model@rev`)
//! references; parameters the method does not use, or uses only globally;
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
//! - SLERP interpolates each tensor as one vector, where mergekit takes the angle
//!   of each output row separately;
//! - TIES keeps exactly `max(1, floor(density·n))` entries of each task vector,
//!   breaking ties in magnitude by index (mergekit keeps the same count, but its
//!   `argsort` breaks ties in no specified order);
//! - support files (tokenizer, config) come from the first ingredient; mergekit
//!   takes them from the base model. For the task-vector methods the base is not
//!   an ingredient, so the donor differs.

use serde_json::{Map, Value as Json};

use super::{Ingredient, Method, Recipe, Setting};

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

/// A model reference: a local path or hub name as given. LoRA (`model+lora`)
/// and revision (`model@revision`) references are refused, as are references
/// written as maps.
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
    if path.contains('@') {
        return Err(format!(
            "{at}: {path:?} names a revision (model@revision), which is not supported; \
             give the path of a local checkpoint"
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
        Ingredient { path: self.path, weight: self.weight, density: self.density }
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
