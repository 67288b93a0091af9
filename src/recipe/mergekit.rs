//! mergekit configurations read into [`Recipe`]s.
//!
//! A configuration is read only when soup can make the same merge from it: every
//! key is either translated or refused with an error that names it and where it
//! was (`models[2].parameters.gamma: not supported for ties`); none is skipped
//! silently. Key names, defaults and the placement of the base model follow
//! mergekit 0.1.5 (`config.py`, `plan.py`, `merge.py`, `merge_methods/`,
//! `scripts/multimerge.py`).
//!
//! Read:
//!
//! - `merge_method`: every method of mergekit 0.1.5 but `arcee_fusion`, `ram`
//!   and `ramplus_tl` ([`METHODS`]);
//! - `models`: entries `{model: PATH, parameters: {...}}` (or a bare path), or
//!   `slices`: entries `{sources: [{model, layer_range, parameters}],
//!   base_model, parameters}` — the output built from ranges of blocks, merged
//!   slice by slice (`passthrough` stacks them);
//! - `base_model`: a path;
//! - `parameters`: the method's own ([`role`]), each a number, a gradient or
//!   `{filter, value}` rules for numbers, a plain boolean for flags, a plain
//!   number for iteration settings;
//! - `dtype`, `out_dtype`: the output dtype is `out_dtype`, else `dtype` (soup
//!   computes in f64 whatever `dtype` says);
//! - `tokenizer_source` (or `tokenizer: {source}`): `base` or a model, whose
//!   tokenizer files are copied into the soup; `chat_template`: a template's
//!   text, `auto`, or `chatml` / `llama3`;
//! - several documents, as `mergekit-multi` reads them ([`translate_documents`]).
//!
//! Refused: the other methods; `modules`; `tokenizer_source: union` and
//! `tokenizer` settings beyond `source`; LoRA (`model+lora`) references, and
//! revisions (`model@rev`) of anything but a Hub id (`org/name@rev`, from the
//! local cache); parameters the method does not use, or uses only globally;
//! parameters given to a base model that the method ignores; values soup does
//! not compute (`rescale: true` for `ties` and the Breadcrumbs methods,
//! `filter_wise: true` for `model_stock`, `nuslerp_row_wise: true` and
//! `nuslerp_flatten: false`), and `residual_weight`, which mergekit 0.1.5 reads
//! but never uses. A key whose value is null is absent, as in mergekit.
//!
//! Where soup's arithmetic differs from mergekit 0.1.5's (the recipe is still the
//! one the configuration describes; the numbers may differ; measured in
//! BENCHMARKS.md and listed in METHODS.md):
//!
//! - soup computes every merge in f64 and rounds once to the output dtype, where
//!   mergekit computes in `dtype` (or in float32) — so `dtype` alone never makes a
//!   merge less exact here;
//! - DARE's surviving entries are rescaled by `1/density` and DELLA's by one over
//!   their keep probability (the papers), where mergekit rescales each task
//!   vector to keep its L1 norm; and the drops are seeded (seed 0; mergekit's
//!   `torch.bernoulli` is unseeded), so no two tools' random masks agree entry
//!   by entry anyway;
//! - ties in magnitude (TIES, Breadcrumbs, DELLA's ranks, SCE's variances) are
//!   broken by position, where mergekit's sorts break them in no specified order.

use serde_json::{Map, Value as Json};

use super::{Ingredient, Intermediate, Method, Parameters, Recipe, Setting, Slice};
use crate::engine::hub::ModelId;

/// How a mergekit method takes a base model.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BasePolicy {
    /// The task vectors' origin; required.
    Required,
    /// The task vectors' origin when given (NuSLERP, Multi-SLERP).
    Optional,
    /// Merged as one more model (mergekit adds it to the inputs): linear, Karcher.
    Merged,
    /// SLERP: required, and the interpolation's start (`t = 0`).
    Start,
    /// Passthrough: none; each output tensor has one source.
    None,
}

/// The mergekit methods soup reads: mergekit's name, ours, the base.
pub const METHODS: [(&str, Method); 17] = [
    ("linear", Method::Linear),
    ("task_arithmetic", Method::TaskArithmetic),
    ("ties", Method::Ties),
    ("dare_linear", Method::DareLinear),
    ("dare_ties", Method::DareTies),
    ("slerp", Method::Slerp),
    ("model_stock", Method::ModelStock),
    ("breadcrumbs", Method::Breadcrumbs),
    ("breadcrumbs_ties", Method::BreadcrumbsTies),
    ("della", Method::Della),
    ("della_linear", Method::DellaLinear),
    ("sce", Method::Sce),
    ("nuslerp", Method::Nuslerp),
    ("multislerp", Method::Multislerp),
    ("karcher", Method::Karcher),
    ("nearswap", Method::Nearswap),
    ("passthrough", Method::Passthrough),
];

/// mergekit 0.1.5's methods soup does not read, and why.
const REFUSED_METHODS: [(&str, &str); 3] = [
    (
        "arcee_fusion",
        "its importance threshold comes from approximate quantiles of a sample of each \
         tensor (mergekit's own estimate), which soup does not reproduce",
    ),
    ("ram", "Reinforced Agent Merging is not implemented"),
    ("ramplus_tl", "Reinforced Agent Merging Plus is not implemented"),
];

fn base_policy(method: Method) -> BasePolicy {
    match method {
        Method::Linear | Method::Karcher => BasePolicy::Merged,
        Method::Nuslerp | Method::Multislerp => BasePolicy::Optional,
        Method::Slerp => BasePolicy::Start,
        Method::Passthrough => BasePolicy::None,
        _ => BasePolicy::Required,
    }
}

/// The top-level keys soup reads.
const READ_KEYS: [&str; 10] = [
    "merge_method",
    "models",
    "slices",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
];

/// The chat templates soup writes by name (mergekit ships these and others).
pub const CHAT_TEMPLATES: [&str; 2] = ["chatml", "llama3"];

/// Translates a parsed mergekit configuration into a recipe, or says which key
/// cannot be honoured.
pub fn translate(config: &Json) -> Result<Recipe, String> {
    let top = config.as_object().ok_or("a mergekit configuration must be a map of keys")?;
    let method = method(top.get("merge_method"))?;
    check_top_level_keys(top)?;

    let globals = match present(top.get("parameters")) {
        None => Parameters::default(),
        Some(Json::Object(parameters)) => read_parameters(method, parameters, "parameters")?,
        Some(other) => return Err(format!("parameters: expected a map, found {other}")),
    };
    let base = present(top.get("base_model")).map(|v| reference(v, "base_model")).transpose()?;
    let mut recipe = match (present(top.get("models")), present(top.get("slices"))) {
        (Some(_), Some(_)) => {
            return Err("slices: give either models or slices, not both (as mergekit)".to_owned())
        }
        (Some(models), None) => {
            let models = read_models(method, models)?;
            whole_models(method, models, base.clone(), &globals)?
        }
        (None, Some(slices)) => sliced(method, slices, base.clone(), &globals)?,
        (None, None) => {
            return Err("models: missing (list the models to merge, or give slices)".to_owned())
        }
    };
    recipe.parameters = globals;
    write_out_defaults(method, &mut recipe.parameters);
    recipe.output.dtype = output_dtype(top)?.map(str::to_owned);
    recipe.output.tokenizer = tokenizer(top, base.as_deref())?;
    recipe.output.chat_template = chat_template(top.get("chat_template"))?;
    Ok(recipe)
}

/// Several mergekit configurations, one per YAML document, as `mergekit-multi`
/// reads them: each may have a `name`, which later documents use as a model;
/// the soup written is the unnamed document's merge (or, when every document
/// is named, the one no other uses). The others become the recipe's
/// intermediates, in an order where each comes after those it uses; a
/// document the final merge does not use is an error, as is a cycle.
pub fn translate_documents(documents: &[Json]) -> Result<Recipe, String> {
    let mut named: Vec<(Option<String>, Recipe, Vec<String>)> = Vec::new();
    for (d, doc) in documents.iter().enumerate() {
        let at = format!("document {}", d + 1);
        let mut doc = doc.as_object().cloned().ok_or(format!("{at}: expected a map of keys"))?;
        if !doc.contains_key("merge_method") {
            return Err(format!(
                "{at}: not a mergekit configuration (no merge_method); several documents are \
                 read as mergekit-multi reads them"
            ));
        }
        let name = match doc.remove("name") {
            None | Some(Json::Null) => None,
            Some(Json::String(n)) if is_plain_name(&n) => Some(n),
            Some(other) => {
                return Err(format!("{at}: name: expected a plain name (no '/'), found {other}"))
            }
        };
        let refs = references(&doc);
        let recipe = translate(&Json::Object(doc)).map_err(|e| match &name {
            Some(n) => format!("{at} ({n:?}): {e}"),
            None => format!("{at}: {e}"),
        })?;
        if let Some(other) = named.iter().position(|(m, _, _)| *m == name) {
            return Err(match &name {
                Some(n) => format!("{at}: the name {n:?} is also document {}'s", other + 1),
                None => format!(
                    "{at}: a second unnamed document (document {} is unnamed too); only the \
                     final merge may be unnamed",
                    other + 1
                ),
            });
        }
        named.push((name, recipe, refs));
    }
    let names: Vec<String> = named.iter().filter_map(|(n, _, _)| n.clone()).collect();
    let uses = |i: usize| -> Vec<usize> {
        let refs = &named[i].2;
        (0..named.len())
            .filter(|&j| named[j].0.as_ref().is_some_and(|n| refs.contains(n)))
            .collect()
    };
    let final_doc = match named.iter().position(|(n, _, _)| n.is_none()) {
        Some(i) => i,
        None => {
            let unused: Vec<usize> = (0..named.len())
                .filter(|&i| (0..named.len()).all(|j| !uses(j).contains(&i)))
                .collect();
            match unused.as_slice() {
                [one] => *one,
                _ => {
                    return Err("every document is named and more than one is used by no other: \
                                leave the name out of the final merge"
                        .to_owned())
                }
            }
        }
    };
    // Depth-first from the final merge: each intermediate after those it uses.
    let mut order: Vec<usize> = Vec::new();
    let mut visiting: Vec<usize> = Vec::new();
    fn visit(
        i: usize,
        uses: &dyn Fn(usize) -> Vec<usize>,
        order: &mut Vec<usize>,
        visiting: &mut Vec<usize>,
        names: &[String],
    ) -> Result<(), String> {
        if order.contains(&i) {
            return Ok(());
        }
        if visiting.contains(&i) {
            return Err(format!("the documents use each other in a cycle ({})", names.join(", ")));
        }
        visiting.push(i);
        for j in uses(i) {
            visit(j, uses, order, visiting, names)?;
        }
        visiting.pop();
        order.push(i);
        Ok(())
    }
    visit(final_doc, &uses, &mut order, &mut visiting, &names)?;
    if let Some(unused) = (0..named.len()).find(|i| !order.contains(i)) {
        return Err(format!(
            "document {} ({:?}) is not used by the final merge (document {}); soup writes one \
             soup: remove it",
            unused + 1,
            named[unused].0.as_deref().unwrap_or("unnamed"),
            final_doc + 1
        ));
    }
    let mut recipe = named[final_doc].1.clone();
    recipe.intermediates = order[..order.len() - 1]
        .iter()
        .map(|&i| Intermediate {
            name: named[i].0.clone().unwrap_or_default(),
            recipe: named[i].1.clone(),
        })
        .collect();
    Ok(recipe)
}

/// A name an intermediate may have: used as a model path, so one plain word.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

/// Every string in a configuration's model references (`model`, `base_model`,
/// `tokenizer_source`, `tokenizer.source`), for finding the documents it uses.
fn references(doc: &Map<String, Json>) -> Vec<String> {
    let mut found = Vec::new();
    fn walk(value: &Json, key: Option<&str>, found: &mut Vec<String>) {
        match value {
            Json::String(s)
                if matches!(key, Some("model" | "base_model" | "tokenizer_source" | "source")) =>
            {
                found.push(s.clone());
            }
            // A bare path in a list of models.
            Json::String(s) if key == Some("models") => found.push(s.clone()),
            Json::Array(items) => items.iter().for_each(|v| walk(v, key, found)),
            Json::Object(map) => map.iter().for_each(|(k, v)| walk(v, Some(k), found)),
            _ => {}
        }
    }
    for (k, v) in doc {
        walk(v, Some(k), &mut found);
    }
    found
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
    if let Some((_, why)) = REFUSED_METHODS.iter().find(|(n, _)| n == name) {
        return Err(format!(
            "merge_method: {name} is not supported: {why}; soup reads {}",
            supported()
        ));
    }
    METHODS
        .iter()
        .find(|(n, _)| n == name)
        .map(|&(_, m)| m)
        .ok_or_else(|| format!("merge_method: {name} is not supported; soup reads {}", supported()))
}

/// mergekit's name for one of our methods, for messages.
pub fn mergekit_name(method: Method) -> &'static str {
    METHODS.iter().find(|(_, m)| *m == method).map_or("?", |(n, _)| n)
}

/// Refuses the top-level keys soup does not read, naming each.
fn check_top_level_keys(top: &Map<String, Json>) -> Result<(), String> {
    for (key, value) in top {
        let key = key.as_str();
        if READ_KEYS.contains(&key) || (matches!(key, "modules" | "name") && value.is_null()) {
            continue;
        }
        let why = match key {
            "modules" => {
                "not supported: soup merges models with one stack of blocks; list them under \
                 `models` or `slices`"
            }
            "name" => {
                "only in a file of several documents (mergekit-multi), where later documents \
                 use it as a model"
            }
            _ => {
                "unknown key (soup reads merge_method, models, slices, base_model, parameters, \
                 dtype, out_dtype, tokenizer_source, tokenizer and chat_template)"
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
    /// A number setting, global or per model (`weight`, `density`, `gamma`,
    /// `epsilon`), stored under this name of ours.
    PerModel(&'static str),
    /// A number setting, global only (`lambda`, `t`, `select_topk`).
    Global,
    /// A plain boolean, global only, stored under this name of ours (or
    /// dropped, for `None`).
    Flag(Option<&'static str>),
    /// A plain boolean soup computes only at one value; the other is refused
    /// with the reason.
    Only(bool, &'static str),
    /// A plain number, global only (`eps`, `max_iter`, `tol`).
    Scalar,
    /// A key mergekit accepts for the method but that changes nothing in its
    /// result; refused, with the reason, so that nobody believes it did something.
    NoEffect(&'static str),
}

/// The role of parameter `key` in `method`, `None` if the method has no such
/// parameter. Taken from the methods' parameter specs in mergekit 0.1.5.
fn role(method: Method, key: &str) -> Option<Role> {
    use Method::*;
    let generalized = matches!(
        method,
        TaskArithmetic
            | Ties
            | DareLinear
            | DareTies
            | Breadcrumbs
            | BreadcrumbsTies
            | Della
            | DellaLinear
    );
    let sparsifies = generalized && method != TaskArithmetic;
    let no_sparsify = "has no effect in mergekit's task_arithmetic, which does not sparsify; \
                       remove it (ties, dare_linear and dare_ties use it)";
    let no_l1 = "true is not supported for ties and the Breadcrumbs methods (mergekit would rescale each trimmed task vector to its \
                 L1 norm; soup's magnitude trims do not rescale)";
    match key {
        "weight" if generalized || matches!(method, Linear | Nuslerp | Multislerp) => {
            Some(Role::PerModel("weight"))
        }
        "scale" if method == Passthrough => Some(Role::PerModel("weight")),
        "density" if sparsifies => Some(Role::PerModel("density")),
        "density" | "rescale" if method == TaskArithmetic => Some(Role::NoEffect(no_sparsify)),
        "gamma" if matches!(method, Breadcrumbs | BreadcrumbsTies) => Some(Role::PerModel("gamma")),
        "epsilon" if matches!(method, Della | DellaLinear) => Some(Role::PerModel("epsilon")),
        "lambda" if generalized => Some(Role::Global),
        "t" if matches!(method, Slerp | Nearswap) => Some(Role::Global),
        "select_topk" if method == Sce => Some(Role::Global),
        "normalize" if method == Linear || generalized => Some(Role::Flag(Some("normalize"))),
        "normalize_weights" if method == Multislerp => Some(Role::Flag(Some("normalize"))),
        "rescale" if matches!(method, Ties | Breadcrumbs | BreadcrumbsTies) => {
            Some(Role::Only(false, no_l1))
        }
        "rescale" if sparsifies => Some(Role::Flag(Some("rescale"))),
        // int8_mask only chooses the dtype of mergekit's sign mask (int8 or the
        // base's dtype); the mask's values, and so the merge, are the same either
        // way. Accepted for every method that takes it, and dropped.
        "int8_mask" if generalized || method == Sce => Some(Role::Flag(None)),
        "filter_wise" if method == ModelStock => Some(Role::Only(
            false,
            "true is not supported (soup's Model Stock takes each tensor as one vector, \
             mergekit's filter_wise: false)",
        )),
        "nuslerp_flatten" if method == Nuslerp => Some(Role::Only(
            true,
            "false is not supported (soup's NuSLERP takes each tensor as one vector, \
             mergekit's default nuslerp_flatten: true)",
        )),
        "nuslerp_row_wise" if method == Nuslerp => Some(Role::Only(
            false,
            "true is not supported (soup's NuSLERP takes each tensor as one vector)",
        )),
        "eps" if method == Multislerp => Some(Role::Scalar),
        "max_iter" | "tol" if method == Karcher => Some(Role::Scalar),
        _ => None,
    }
}

/// Reads a `parameters` map (the top level's or a slice's) into ours; `at`
/// names it in errors.
fn read_parameters(
    method: Method,
    parameters: &Map<String, Json>,
    at: &str,
) -> Result<Parameters, String> {
    let mut p = Parameters::default();
    for (key, value) in parameters {
        let at = format!("{at}.{key}");
        if value.is_null() {
            continue;
        }
        match role(method, key) {
            None => return Err(format!("{at}: not supported for {}", mergekit_name(method))),
            Some(Role::NoEffect(why)) => return Err(format!("{at}: {why}")),
            Some(Role::PerModel(ours)) => {
                let setting = Some(number_setting(value, &at)?);
                match ours {
                    "weight" => p.weight = setting,
                    "density" => p.density = setting,
                    "gamma" => p.gamma = setting,
                    _ => p.epsilon = setting,
                }
            }
            Some(Role::Global) => {
                let setting = Some(number_setting(value, &at)?);
                match key.as_str() {
                    "lambda" => p.lambda = setting,
                    "t" => p.t = setting,
                    _ => p.select_topk = setting,
                }
            }
            Some(Role::Flag(ours)) => {
                let flag = Some(flag(value, &at)?);
                match ours {
                    Some("normalize") => p.normalize = flag,
                    Some(_) => p.rescale = flag,
                    None => {} // int8_mask, see `role`
                }
            }
            Some(Role::Only(allowed, why)) => {
                if flag(value, &at)? != allowed {
                    return Err(format!("{at}: {why}"));
                }
            }
            Some(Role::Scalar) => {
                let x = value
                    .as_f64()
                    .ok_or_else(|| format!("{at}: expected a number, found {value}"))?;
                match key.as_str() {
                    "eps" => p.eps = Some(x),
                    "tol" => p.tol = Some(x),
                    _ => {
                        let n = value.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(
                            || format!("{at}: expected a whole number, found {value}"),
                        )?;
                        p.max_iter = Some(n);
                    }
                }
            }
        }
    }
    Ok(p)
}

/// mergekit's defaults of the flags soup reads, written out so that the
/// recipe says what was computed.
fn write_out_defaults(method: Method, p: &mut Parameters) {
    use Method::*;
    let normalize = match method {
        Linear | Ties | Della | Multislerp => Some(true),
        TaskArithmetic | DareLinear | DareTies | Breadcrumbs | BreadcrumbsTies | DellaLinear => {
            Some(false)
        }
        _ => None,
    };
    if p.normalize.is_none() {
        p.normalize = normalize;
    }
    if matches!(method, DareLinear | DareTies | Della | DellaLinear) && p.rescale.is_none() {
        p.rescale = Some(true);
    }
}

/// One model of `models` or of a slice's `sources`.
struct Model {
    /// Where it was: `models[i]`, `slices[s].sources[i]`.
    at: String,
    path: String,
    /// Its own settings (weight, density, gamma, epsilon).
    own: Parameters,
    /// In a slice: its blocks.
    layers: Option<[usize; 2]>,
    /// The keys of its `parameters`, for refusing them on a base model.
    keys: Vec<String>,
}

impl Model {
    fn read(method: Method, entry: &Json, at: String, slice: bool) -> Result<Self, String> {
        let mut model = Model {
            path: String::new(),
            own: Parameters::default(),
            layers: None,
            keys: Vec::new(),
            at,
        };
        let map = match entry {
            Json::String(_) if !slice => {
                model.path = reference(entry, &model.at)?;
                return Ok(model);
            }
            Json::Object(map) => map,
            other => {
                let keys =
                    if slice { "model, layer_range, parameters" } else { "model, parameters" };
                return Err(format!("{}: expected {{{keys}}}, found {other}", model.at));
            }
        };
        for key in map.keys() {
            let known = key == "model" || key == "parameters" || (slice && key == "layer_range");
            if !known {
                let keys = if slice {
                    "model, layer_range and parameters"
                } else {
                    "model and parameters"
                };
                return Err(format!("{}.{key}: unknown key (a model entry has {keys})", model.at));
            }
        }
        model.path = match map.get("model") {
            Some(value) => reference(value, &format!("{}.model", model.at))?,
            None => return Err(format!("{}.model: missing", model.at)),
        };
        if slice {
            model.layers = Some(layer_range(map.get("layer_range"), &model.at)?);
        }
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
            if value.is_null() {
                continue;
            }
            match role(method, key) {
                None => return Err(format!("{at}: not supported for {name}")),
                Some(Role::NoEffect(why)) => return Err(format!("{at}: {why}")),
                Some(Role::PerModel(ours)) => {
                    let setting = Some(number_setting(value, &at)?);
                    match ours {
                        "weight" => model.own.weight = setting,
                        "density" => model.own.density = setting,
                        "gamma" => model.own.gamma = setting,
                        _ => model.own.epsilon = setting,
                    }
                    model.keys.push(key.clone());
                }
                Some(_) => {
                    return Err(format!(
                        "{at}: a global parameter of {name} (mergekit ignores it per model); \
                         put it under the top-level parameters"
                    ))
                }
            }
        }
        Ok(model)
    }

    fn ingredient(self) -> Ingredient {
        Ingredient {
            path: self.path,
            weight: self.own.weight,
            density: self.own.density,
            gamma: self.own.gamma,
            epsilon: self.own.epsilon,
            layers: self.layers,
            ..Default::default()
        }
    }
}

/// A slice source's `layer_range: [start, end]`.
fn layer_range(value: Option<&Json>, at: &str) -> Result<[usize; 2], String> {
    let at = format!("{at}.layer_range");
    let Some(value) = present(value) else { return Err(format!("{at}: missing")) };
    let pair = value
        .as_array()
        .filter(|a| a.len() == 2)
        .and_then(|a| Some([a[0].as_u64()?, a[1].as_u64()?]))
        .ok_or_else(|| format!("{at}: expected [start, end], two whole numbers, found {value}"))?;
    let [start, end] = pair.map(|x| x as usize);
    if end < start {
        return Err(format!("{at}: [{start}, {end}] ends before it starts"));
    }
    Ok([start, end])
}

/// The entries of `models`, checked.
fn read_models(method: Method, models: &Json) -> Result<Vec<Model>, String> {
    let entries = match models {
        Json::Array(entries) if !entries.is_empty() => entries,
        Json::Array(_) => return Err("models: the list is empty".to_owned()),
        other => return Err(format!("models: expected a list of models, found {other}")),
    };
    let models = entries
        .iter()
        .enumerate()
        .map(|(i, entry)| Model::read(method, entry, format!("models[{i}]"), false))
        .collect::<Result<Vec<_>, _>>()?;
    refuse_duplicates(&models, "")?;
    Ok(models)
}

/// mergekit refuses the same model twice among one merge's inputs.
fn refuse_duplicates(models: &[Model], within: &str) -> Result<(), String> {
    for (i, model) in models.iter().enumerate() {
        if let Some(first) = models[..i].iter().find(|m| m.path == model.path) {
            return Err(format!(
                "{}: {:?} is listed twice{within} (also {})",
                model.at, model.path, first.at
            ));
        }
    }
    Ok(())
}

/// A `models:` configuration: the method's inputs placed as mergekit's
/// planner places them.
fn whole_models(
    method: Method,
    models: Vec<Model>,
    base: Option<String>,
    g: &Parameters,
) -> Result<Recipe, String> {
    let name = mergekit_name(method);
    let mut recipe = Recipe::new(method, Vec::new());
    match base_policy(method) {
        BasePolicy::Merged => {
            // mergekit's planner adds `base_model` to the inputs when it is not
            // listed ("Base model specified but not in input models - adding"),
            // where it takes the global settings; the method ignores which one
            // is the base. So it is one more ingredient, listed or appended last.
            let listed = base.as_ref().is_none_or(|b| models.iter().any(|m| &m.path == b));
            for model in &models {
                require_weight(method, model.own.weight.is_some(), g, &model.at, &model.path)?;
            }
            recipe.ingredients = models.into_iter().map(Model::ingredient).collect();
            if let (Some(base), false) = (base, listed) {
                if method == Method::Linear && g.weight.is_none() {
                    return Err(format!(
                        "base_model: linear merges the base model too (mergekit adds it to the \
                         models), but {base:?} has no weight: set parameters.weight, or list it \
                         under models with a weight"
                    ));
                }
                recipe.ingredients.push(Ingredient::path(base));
            }
        }
        BasePolicy::None => {
            if let Some(base) = base.filter(|b| models.iter().all(|m| &m.path != b)) {
                return Err(format!(
                    "base_model: passthrough copies one model, and mergekit adds the base model \
                     {base:?} to the models as a second one; remove base_model"
                ));
            }
            if models.len() != 1 {
                return Err(format!(
                    "models: passthrough copies exactly one model, found {}; to stack layers \
                     of several, use slices",
                    models.len()
                ));
            }
            recipe.ingredients = models.into_iter().map(Model::ingredient).collect();
        }
        BasePolicy::Optional if base.is_none() => {
            for model in &models {
                require_weight(method, model.own.weight.is_some(), g, &model.at, &model.path)?;
            }
            recipe.ingredients = models.into_iter().map(Model::ingredient).collect();
        }
        policy => {
            let base = base.ok_or_else(|| match policy {
                BasePolicy::Start => "base_model: missing; slerp interpolates from the base model \
                                      (t = 0) to the other model (t = 1)"
                    .to_owned(),
                _ => format!("base_model: missing; {name} needs a base model"),
            })?;
            let others = without_base(models, &base, method)?;
            for model in &others {
                require_weight(method, model.own.weight.is_some(), g, &model.at, &model.path)?;
            }
            check_count(method, others.len(), &base)?;
            let others: Vec<Ingredient> = others.into_iter().map(Model::ingredient).collect();
            if policy == BasePolicy::Start {
                // Soup's SLERP has no base, and goes from its first ingredient to
                // its second: so the ingredients are [base, other].
                recipe.ingredients = [Ingredient::path(base)].into_iter().chain(others).collect();
            } else {
                recipe.ingredients = others;
                recipe.base = Some(Ingredient::path(base));
            }
        }
    }
    check_method_parameters(method, g)?;
    Ok(recipe)
}

/// The number of models besides the base that `method` takes.
fn check_count(method: Method, others: usize, base: &str) -> Result<(), String> {
    let name = mergekit_name(method);
    let expected = match method {
        Method::Slerp => Some((1, "slerp takes two models, the base and one other")),
        Method::Nearswap => Some((1, "nearswap takes two models, the base and one other")),
        Method::Nuslerp => Some((2, "nuslerp takes two models besides the base")),
        _ => None,
    };
    match expected {
        Some((n, says)) if others != n => {
            Err(format!("models: {says}; found {others} besides {base:?}"))
        }
        _ if method == Method::ModelStock && others < 2 => Err(format!(
            "models: {name} needs at least two models besides the base model {base:?}; found \
             {others}"
        )),
        _ => Ok(()),
    }
}

/// Method-wide requirements on the global parameters.
fn check_method_parameters(method: Method, g: &Parameters) -> Result<(), String> {
    if matches!(method, Method::Slerp | Method::Nearswap) && g.t.is_none() {
        return Err(format!("parameters.t: missing; {} requires it", mergekit_name(method)));
    }
    Ok(())
}

/// A `slices:` configuration: each slice's sources, its base found among them
/// as mergekit requires.
fn sliced(
    method: Method,
    slices: &Json,
    base: Option<String>,
    g: &Parameters,
) -> Result<Recipe, String> {
    let entries = match slices {
        Json::Array(entries) if !entries.is_empty() => entries,
        Json::Array(_) => return Err("slices: the list is empty".to_owned()),
        other => return Err(format!("slices: expected a list of slices, found {other}")),
    };
    let mut recipe = Recipe::new(method, Vec::new());
    for (s, entry) in entries.iter().enumerate() {
        let at = format!("slices[{s}]");
        let map = entry.as_object().ok_or_else(|| format!("{at}: expected {{sources, ...}}"))?;
        for (key, value) in map {
            match key.as_str() {
                "sources" | "base_model" | "parameters" => {}
                "residual_weight" if value.is_null() => {}
                "residual_weight" => {
                    return Err(format!(
                        "{at}.residual_weight: mergekit 0.1.5 reads it but never uses it; \
                         remove it"
                    ))
                }
                _ => {
                    return Err(format!(
                        "{at}.{key}: unknown key (a slice has sources, base_model and \
                         parameters)"
                    ))
                }
            }
        }
        let sources = match present(map.get("sources")) {
            Some(Json::Array(list)) if !list.is_empty() => list,
            Some(Json::Array(_)) => return Err(format!("{at}.sources: the list is empty")),
            Some(other) => return Err(format!("{at}.sources: expected a list, found {other}")),
            None => return Err(format!("{at}.sources: missing")),
        };
        let models = sources
            .iter()
            .enumerate()
            .map(|(i, e)| Model::read(method, e, format!("{at}.sources[{i}]"), true))
            .collect::<Result<Vec<_>, _>>()?;
        refuse_duplicates(&models, " in one slice")?;
        let lengths: Vec<usize> =
            models.iter().filter_map(|m| m.layers).map(|[a, b]| b - a).collect();
        if lengths.iter().any(|&n| n != lengths[0]) {
            return Err(format!(
                "{at}.sources: every source must give the same number of layers (mergekit: \
                 \"All inputs to a slice must contain the same number of layers\"), found {:?}",
                lengths
            ));
        }
        let slice_base = match present(map.get("base_model")) {
            Some(v) => Some(reference(v, &format!("{at}.base_model"))?),
            None => base.clone(),
        };
        let parameters = match present(map.get("parameters")) {
            None => Parameters::default(),
            Some(Json::Object(p)) => read_parameters(method, p, &format!("{at}.parameters"))?,
            Some(other) => return Err(format!("{at}.parameters: expected a map, found {other}")),
        };
        let weighted = |m: &Model| m.own.weight.is_some() || parameters.weight.is_some();
        let mut slice = Slice { parameters: parameters.clone(), ..Slice::default() };
        match base_policy(method) {
            BasePolicy::Merged | BasePolicy::None => {
                if base_policy(method) == BasePolicy::None && models.len() != 1 {
                    return Err(format!(
                        "{at}.sources: passthrough takes exactly one source per slice, found {}",
                        models.len()
                    ));
                }
                for m in &models {
                    require_weight(method, weighted(m), g, &m.at, &m.path)?;
                }
                slice.ingredients = models.into_iter().map(Model::ingredient).collect();
            }
            policy => {
                let found =
                    slice_base.as_ref().and_then(|b| models.iter().position(|m| &m.path == b));
                let required = policy != BasePolicy::Optional;
                let (base_model, others): (Option<Model>, Vec<Model>) = match (found, &slice_base) {
                    (Some(i), _) => {
                        let mut others = models;
                        let b = others.remove(i);
                        if let Some(key) = b.keys.first().filter(|_| method != Method::Slerp) {
                            return Err(format!(
                                "{}.parameters.{key}: {:?} is the base model, and {} does not \
                                 use a base model's {key} (mergekit ignores it); remove it",
                                b.at,
                                b.path,
                                mergekit_name(method)
                            ));
                        }
                        (Some(b), others)
                    }
                    (None, Some(b)) => {
                        return Err(format!(
                            "{at}.sources: the base model {b:?} is not among the slice's \
                             sources; mergekit takes the base's layers from its source"
                        ))
                    }
                    (None, None) if required => {
                        return Err(format!(
                            "base_model: missing; {} needs a base model",
                            mergekit_name(method)
                        ))
                    }
                    (None, None) => (None, models),
                };
                for m in &others {
                    require_weight(method, weighted(m), g, &m.at, &m.path)?;
                }
                let base_path = base_model.as_ref().map_or("", |b| b.path.as_str()).to_owned();
                check_count(method, others.len(), &base_path)
                    .map_err(|e| format!("{at}.sources{}", e.trim_start_matches("models")))?;
                let others: Vec<Ingredient> = others.into_iter().map(Model::ingredient).collect();
                if policy == BasePolicy::Start {
                    let b = base_model.map(Model::ingredient);
                    slice.ingredients = b.into_iter().chain(others).collect();
                } else {
                    slice.ingredients = others;
                    slice.base = base_model
                        .map(|b| Ingredient { layers: b.layers, ..Ingredient::path(b.path) });
                }
            }
        }
        recipe.slices.push(slice);
    }
    check_method_parameters(method, g)?;
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

/// mergekit requires a weight for every model of the methods whose `weight`
/// parameter has no default (linear, the task-vector methods, NuSLERP,
/// Multi-SLERP), where soup's default is 1: a model with no weight of its own
/// and no shared one is refused, as mergekit does.
fn require_weight(
    method: Method,
    own: bool,
    g: &Parameters,
    at: &str,
    path: &str,
) -> Result<(), String> {
    if own || g.weight.is_some() || role(method, "weight").is_none() {
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

/// The model whose tokenizer files are copied: `tokenizer_source` (or
/// `tokenizer: {source}`), `base` being the base model.
fn tokenizer(top: &Map<String, Json>, base: Option<&str>) -> Result<Option<String>, String> {
    let (source, at) = match (present(top.get("tokenizer_source")), present(top.get("tokenizer"))) {
        (Some(_), Some(_)) => {
            return Err("tokenizer: give either tokenizer_source or tokenizer, not both (as \
                        mergekit)"
                .to_owned())
        }
        (Some(source), None) => (source, "tokenizer_source".to_owned()),
        (None, Some(Json::Object(map))) => {
            for (key, value) in map {
                match key.as_str() {
                    "source" => {}
                    "tokens" | "pad_to_multiple_of" if value.is_null() => {}
                    "tokens" | "pad_to_multiple_of" => {
                        return Err(format!(
                            "tokenizer.{key}: not supported: soup copies a tokenizer unchanged \
                             and merges the embeddings row by row, so it cannot add or move \
                             tokens"
                        ))
                    }
                    _ => return Err(format!("tokenizer.{key}: unknown key")),
                }
            }
            match present(map.get("source")) {
                Some(source) => (source, "tokenizer.source".to_owned()),
                // mergekit's default source is `union`.
                None => (&Json::Null, "tokenizer.source".to_owned()),
            }
        }
        (None, Some(other)) => return Err(format!("tokenizer: expected a map, found {other}")),
        (None, None) => return Ok(None),
    };
    match source {
        Json::String(s) if s == "base" => base
            .map(|b| Some(b.to_owned()))
            .ok_or_else(|| format!("{at}: base, but there is no base_model")),
        Json::String(s) if s == "union" => Err(union(&at)),
        Json::Null => Err(union(&at)),
        other => reference(other, &at).map(Some),
    }
}

/// Why `union` is refused.
fn union(at: &str) -> String {
    format!(
        "{at}: union is not supported: soup does not build a vocabulary from several \
         tokenizers (nor permute embedding rows to it); use base or the model whose tokenizer \
         the merged embeddings match"
    )
}

/// `chat_template`: a template's text (at least 20 characters with a `{`, as
/// mergekit tells them from names), `auto`, or a name soup knows.
fn chat_template(value: Option<&Json>) -> Result<Option<String>, String> {
    let Some(value) = present(value) else { return Ok(None) };
    let Json::String(text) = value else {
        return Err(format!("chat_template: expected a template or its name, found {value}"));
    };
    let literal = text.len() >= 20 && text.contains('{');
    if literal || text == "auto" || CHAT_TEMPLATES.contains(&text.as_str()) {
        return Ok(Some(text.clone()));
    }
    Err(format!(
        "chat_template: {text:?} is not a template soup knows by name ({}, or auto: the most \
         common among the models); give the template's text instead",
        CHAT_TEMPLATES.join(", ")
    ))
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
            ..Ingredient::default()
        }
    }

    /// The fixtures, by file name, for the parse test and the end-to-end tests.
    const FIXTURES: [(&str, &str); 18] = [
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
        (
            "breadcrumbs_ties.yaml",
            include_str!("../../tests/fixtures/mergekit/breadcrumbs_ties.yaml"),
        ),
        ("della.yaml", include_str!("../../tests/fixtures/mergekit/della.yaml")),
        ("sce.yaml", include_str!("../../tests/fixtures/mergekit/sce.yaml")),
        ("nuslerp.yaml", include_str!("../../tests/fixtures/mergekit/nuslerp.yaml")),
        ("multislerp.yaml", include_str!("../../tests/fixtures/mergekit/multislerp.yaml")),
        ("karcher.yaml", include_str!("../../tests/fixtures/mergekit/karcher.yaml")),
        ("nearswap.yaml", include_str!("../../tests/fixtures/mergekit/nearswap.yaml")),
        ("slerp_slices.yaml", include_str!("../../tests/fixtures/mergekit/slerp_slices.yaml")),
        (
            "passthrough_slices.yaml",
            include_str!("../../tests/fixtures/mergekit/passthrough_slices.yaml"),
        ),
        ("multi.yaml", include_str!("../../tests/fixtures/mergekit/multi.yaml")),
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
                    ..Ingredient::default()
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
            for path in recipe.models() {
                assert!(["base", "a", "b", "c", "ab"].contains(&path), "{name}: {path}");
            }
        }
    }

    #[test]
    fn unsupported_methods_are_named_with_the_supported_ones() {
        for method in ["arcee_fusion", "ram", "ramplus_tl", "linear_cheese"] {
            let err = error(&format!("merge_method: {method}\nmodels: [a, b]\n"));
            assert!(err.contains(method) && err.contains("dare_ties, slerp, model_stock"), "{err}");
        }
        assert!(error("merge_method: ram\nmodels: [a]\n").contains("not implemented"));
        assert!(error("merge_method: 3\nmodels: [a]\n").starts_with("merge_method:"));
    }

    #[test]
    fn every_mergekit_method_but_three_is_read() {
        assert_eq!(METHODS.len() + REFUSED_METHODS.len(), 20);
        for (name, method) in METHODS {
            assert_eq!(mergekit_name(method), name);
        }
        assert!(Method::ALL.iter().all(|m| METHODS.iter().any(|(_, n)| n == m)));
    }

    #[test]
    fn unsupported_top_level_keys_are_named() {
        let ties = "merge_method: ties\nbase_model: base\n\
                    models: [{model: a, parameters: {weight: 1}}]\n";
        for (key, value, says) in [
            ("slices", "[]", "either models or slices"),
            ("modules", "{}", "one stack of blocks"),
            ("tokenizer_source", "union", "union is not supported"),
            ("tokenizer", "{source: union}", "union is not supported"),
            ("tokenizer", "{tokens: {x: {source: a}}}", "cannot add or move tokens"),
            ("chat_template", "alpaca", "not a template soup knows"),
            ("name", "my-merge", "several documents"),
            ("seed", "7", "unknown key"),
            ("lambda", "0.5", "unknown key"),
        ] {
            let err = error(&format!("{ties}{key}: {value}\n"));
            assert!(err.starts_with(key) && err.contains(says), "{err}");
        }
        // Null is absent, as in mergekit.
        assert!(translate_yaml(&format!("{ties}tokenizer_source: null\ndtype: null\n")).is_ok());
    }

    #[test]
    fn tokenizer_sources_and_chat_templates_are_read() {
        let ties = "merge_method: ties\nbase_model: base\n\
                    models: [{model: a, parameters: {weight: 1}}]\n";
        let out = |extra: &str| translate_yaml(&format!("{ties}{extra}")).unwrap().output;
        assert_eq!(out("tokenizer_source: base\n").tokenizer.as_deref(), Some("base"));
        assert_eq!(out("tokenizer_source: a\n").tokenizer.as_deref(), Some("a"));
        assert_eq!(out("tokenizer: {source: a}\n").tokenizer.as_deref(), Some("a"));
        assert_eq!(out("chat_template: chatml\n").chat_template.as_deref(), Some("chatml"));
        assert_eq!(out("chat_template: auto\n").chat_template.as_deref(), Some("auto"));
        let literal = "chat_template: \"{% for m in messages %}{{ m }}{% endfor %}\"\n";
        assert!(out(literal).chat_template.unwrap().starts_with("{% for"));
        let err = error(
            "merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\n\
                         tokenizer_source: base\n",
        );
        assert!(err.starts_with("tokenizer_source: base, but there is no base_model"), "{err}");
    }

    #[test]
    fn the_new_methods_read_their_parameters_and_defaults() {
        let r = translate_yaml(
            "merge_method: breadcrumbs_ties\nbase_model: base\n\
             models: [{model: a, parameters: {weight: 1, density: 0.9, gamma: 0.02}}]\n\
             parameters: {lambda: 0.5}\n",
        )
        .unwrap();
        assert_eq!(r.method, Method::BreadcrumbsTies);
        assert_eq!(r.ingredients[0].gamma, Some(Setting::from(0.02)));
        assert_eq!(r.parameters.normalize, Some(false));
        let r = translate_yaml(
            "merge_method: della\nbase_model: base\n\
             models: [{model: a, parameters: {weight: 1, density: 0.5, epsilon: 0.1}}]\n",
        )
        .unwrap();
        assert_eq!((r.parameters.normalize, r.parameters.rescale), (Some(true), Some(true)));
        assert_eq!(r.ingredients[0].epsilon, Some(Setting::from(0.1)));
        let r = translate_yaml(
            "merge_method: sce\nbase_model: base\nmodels: [a, b]\n\
             parameters: {select_topk: 0.3, int8_mask: true}\n",
        )
        .unwrap();
        assert_eq!(r.parameters.select_topk, Some(Setting::from(0.3)));
        assert_eq!(r.ingredients.len(), 2);
        // NuSLERP and Multi-SLERP: the base is optional.
        let r = translate_yaml(
            "merge_method: nuslerp\nmodels: [{model: a, parameters: {weight: 1}}, \
             {model: b, parameters: {weight: 3}}]\n",
        )
        .unwrap();
        assert_eq!((r.base, r.ingredients.len()), (None, 2));
        let r = translate_yaml(
            "merge_method: multislerp\nbase_model: base\nmodels: [base, a, b]\n\
             parameters: {weight: 1, normalize_weights: false, eps: 1.0e-7}\n",
        )
        .unwrap();
        assert_eq!(r.base, Some(Ingredient::path("base")));
        assert_eq!((r.parameters.normalize, r.parameters.eps), (Some(false), Some(1e-7)));
        // Karcher merges the base as one more model.
        let r = translate_yaml(
            "merge_method: karcher\nbase_model: base\nmodels: [a, b]\n\
             parameters: {max_iter: 20, tol: 1.0e-6}\n",
        )
        .unwrap();
        assert_eq!(r.ingredients.len(), 3);
        assert_eq!((r.parameters.max_iter, r.parameters.tol), (Some(20), Some(1e-6)));
        let r = translate_yaml(
            "merge_method: nearswap\nbase_model: base\nmodels: [base, a]\nparameters: {t: 0.001}\n",
        )
        .unwrap();
        assert_eq!((r.base, r.ingredients.len()), (Some(Ingredient::path("base")), 1));
        let r = translate_yaml(
            "merge_method: passthrough\nmodels: [{model: a, parameters: {scale: 0.5}}]\n",
        )
        .unwrap();
        assert_eq!(r.ingredients[0].weight, Some(Setting::from(0.5)));
        for (config, says) in [
            (
                "merge_method: nuslerp\nmodels: [{model: a, parameters: {weight: 1}}, {model: b, \
              parameters: {weight: 1}}]\nparameters: {nuslerp_flatten: false}",
                "parameters.nuslerp_flatten: false is not supported",
            ),
            ("merge_method: nuslerp\nmodels: [a, b]", "models[0] (\"a\"): no weight"),
            ("merge_method: nearswap\nbase_model: base\nmodels: [a]", "parameters.t: missing"),
            (
                "merge_method: nearswap\nbase_model: base\nmodels: [a, b]\nparameters: {t: 1}",
                "models: nearswap takes two models",
            ),
            ("merge_method: passthrough\nmodels: [a, b]", "models: passthrough copies exactly one"),
            (
                "merge_method: breadcrumbs\nbase_model: base\nmodels: [a]\n\
              parameters: {weight: 1, rescale: true}",
                "parameters.rescale: true is not supported for ties and the Breadcrumbs",
            ),
            (
                "merge_method: sce\nbase_model: base\nmodels: [a]\nparameters: {weight: 1}",
                "parameters.weight: not supported for sce",
            ),
            (
                "merge_method: karcher\nmodels: [a]\nparameters: {max_iter: 2.5}",
                "parameters.max_iter: expected a whole number",
            ),
        ] {
            let err = error(config);
            assert!(err.starts_with(says), "{config}:\n  {err}\n  expected {says}");
        }
    }

    #[test]
    fn slices_keep_each_sources_layers_and_find_the_base_among_them() {
        // mergekit's own gradient-SLERP example form.
        let gradient = "slices:\n  - sources:\n      - model: a\n        layer_range: [0, 32]\n\
                        \x20     - model: b\n        layer_range: [0, 32]\n\
                        merge_method: slerp\nbase_model: a\n\
                        parameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n\
                        \x20   - value: 0.5\ndtype: bfloat16\n";
        let r = translate_yaml(gradient).unwrap();
        assert!(r.ingredients.is_empty() && r.base.is_none());
        assert_eq!(r.slices.len(), 1);
        let paths: Vec<(&str, Option<[usize; 2]>)> =
            r.slices[0].ingredients.iter().map(|i| (i.path.as_str(), i.layers)).collect();
        assert_eq!(paths, [("a", Some([0, 32])), ("b", Some([0, 32]))]);
        assert!(r.parameters.t.is_some());
        // A frankenmerge: passthrough of one source per slice.
        let franken = "slices:\n  - sources: [{model: a, layer_range: [0, 24]}]\n\
                       \x20 - sources: [{model: b, layer_range: [8, 32]}]\nmerge_method: passthrough\n";
        let r = translate_yaml(franken).unwrap();
        assert_eq!(r.slices.len(), 2);
        assert_eq!(r.slices[1].ingredients[0].layers, Some([8, 32]));
        // TIES over slices: the base is the source that names it.
        let ties = "merge_method: ties\nbase_model: base\nparameters: {weight: 1, density: 0.5}\n\
                    slices:\n  - sources: [{model: base, layer_range: [0, 4]}, \
                    {model: a, layer_range: [4, 8], parameters: {density: 0.2}}]\n    \
                    parameters: {lambda: 0.5}\n";
        let r = translate_yaml(ties).unwrap();
        let slice = &r.slices[0];
        assert_eq!(
            slice.base.as_ref().map(|b| (b.path.as_str(), b.layers)),
            Some(("base", Some([0, 4])))
        );
        assert_eq!(slice.ingredients[0].density, Some(Setting::from(0.2)));
        assert_eq!(slice.parameters.lambda, Some(Setting::from(0.5)));
        for (config, says) in [
            ("merge_method: ties\nbase_model: c\nparameters: {weight: 1}\n\
              slices: [{sources: [{model: a, layer_range: [0, 4]}]}]",
             "slices[0].sources: the base model \"c\" is not among"),
            ("merge_method: linear\nparameters: {weight: 1}\n\
              slices: [{sources: [{model: a, layer_range: [0, 4]}, {model: b, layer_range: [0, 3]}]}]",
             "slices[0].sources: every source must give the same number of layers"),
            ("merge_method: linear\nparameters: {weight: 1}\nslices: [{sources: [{model: a}]}]",
             "slices[0].sources[0].layer_range: missing"),
            ("merge_method: passthrough\n\
              slices: [{sources: [{model: a, layer_range: [0, 4]}, {model: b, layer_range: [0, 4]}]}]",
             "slices[0].sources: passthrough takes exactly one source"),
            ("merge_method: linear\nparameters: {weight: 1}\n\
              slices: [{sources: [{model: a, layer_range: [0, 4]}], residual_weight: 0.5}]",
             "slices[0].residual_weight: mergekit 0.1.5 reads it but never uses it"),
        ] {
            let err = error(config);
            assert!(err.starts_with(says), "{config}:\n  {err}\n  expected {says}");
        }
    }

    #[test]
    fn several_documents_make_intermediates_in_dependency_order() {
        let text =
            "name: second\nmerge_method: linear\nmodels: [first, c]\nparameters: {weight: 1}\n\
                    ---\nmerge_method: slerp\nbase_model: second\nmodels: [second, d]\n\
                    parameters: {t: 0.5}\n---\nname: first\nmerge_method: linear\n\
                    models: [a, b]\nparameters: {weight: 1}\n";
        let r = Recipe::parse(text, Path::new("multi.yaml")).unwrap();
        assert_eq!(r.method, Method::Slerp);
        let names: Vec<&str> = r.intermediates.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["first", "second"]);
        assert_eq!(r.intermediates[1].recipe.ingredients[0].path, "first");
        let unused = "name: x\nmerge_method: linear\nmodels: [a]\nparameters: {weight: 1}\n---\n\
                      merge_method: linear\nmodels: [b]\nparameters: {weight: 1}\n";
        let err = Recipe::parse(unused, Path::new("m.yaml")).unwrap_err().to_string();
        assert!(err.contains("document 1 (\"x\") is not used by the final merge"), "{err}");
        let cycle = "name: xa\nmerge_method: linear\nmodels: [ya]\nparameters: {weight: 1}\n---\n\
                     name: ya\nmerge_method: linear\nmodels: [xa]\nparameters: {weight: 1}\n---\n\
                     merge_method: linear\nmodels: [xa]\nparameters: {weight: 1}\n";
        let err = Recipe::parse(cycle, Path::new("m.yaml")).unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");
        let twice = "merge_method: linear\nmodels: [a]\nparameters: {weight: 1}\n---\n\
                     merge_method: linear\nmodels: [b]\nparameters: {weight: 1}\n";
        let err = Recipe::parse(twice, Path::new("m.yaml")).unwrap_err().to_string();
        assert!(err.contains("a second unnamed document"), "{err}");
    }

    #[test]
    fn yaml_errors_say_where_without_the_parsers_advice() {
        for text in ["merge_method: ties\nmodels: [a, b\n", "a: 1\n  b: 2\n", "x: \"open\n"] {
            let err = Recipe::parse(text, Path::new("bad.yaml")).unwrap_err().to_string();
            assert!(err.starts_with("recipe bad.yaml: not valid YAML: line "), "{err}");
            assert!(
                !err.contains('\n') && !err.contains("-->") && !err.contains("from_str"),
                "{err}"
            );
        }
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
        let err = Recipe::parse("merge_method: ram\nmodels: [a]\n", Path::new("m.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("recipe m.yaml: merge_method: ram is not supported"), "{err}");
    }
}
