//! Recipes: everything a merge needs besides the weights themselves — method,
//! ingredients, base, parameters (which may vary by tensor), output format — as
//! one serialisable record.
//!
//! The same record is the recipe file a user writes (YAML, see `docs/METHODS.md`;
//! JSON is YAML too) and the `modelsoup.recipe` entry in every output file's
//! `__metadata__`. Replaying a soup's recorded recipe with `soup merge --recipe`
//! (same build, from any working directory: recorded paths are absolute) writes
//! the same bytes.
//! [`mergekit`] reads mergekit configurations into the same record.

pub mod mergekit;
pub mod setting;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use setting::{layer_positions, Rule, Setting, Value};

use crate::engine::adapter::is_adapter;
use crate::engine::checkpoint::{Checkpoint, OpenOptions};
use crate::engine::hub::ModelId;
use crate::engine::rename::Rename;
use crate::error::{Error, Result};

/// The `__metadata__` key under which the recipe's JSON is stored.
pub const METADATA_KEY: &str = "modelsoup.recipe";

/// Largest recipe file read; real ones are a few KiB.
const MAX_RECIPE_BYTES: u64 = 4 << 20;

/// A merge method (definitions and citations in `docs/METHODS.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// `Σ wᵢ·θᵢ` (the base, if any, takes part with its own weight): uniform
    /// and weighted soups, WiSE-FT interpolation.
    Linear,
    /// `θ₀ + λ·Σ wᵢ·(θᵢ − θ₀)` (Ilharco et al., 2023).
    TaskArithmetic,
    /// Trim each task vector to its largest-magnitude `density`, elect a sign per
    /// element, average the agreeing entries (Yadav et al., 2023).
    Ties,
    /// Drop each task-vector entry with probability `1 − density`, rescale the
    /// rest by `1/density`, add them up (Yu et al., 2024).
    DareLinear,
    /// DARE's drop and rescale, then TIES's sign election and disjoint mean.
    DareTies,
    /// Spherical interpolation between two models, per tensor.
    Slerp,
    /// Per-tensor interpolation from the average toward the base by the angle
    /// between the task vectors (Jang et al., 2024).
    ModelStock,
}

impl Method {
    /// The name used on the command line and in recipes.
    pub fn name(self) -> &'static str {
        match self {
            Method::Linear => "linear",
            Method::TaskArithmetic => "task-arithmetic",
            Method::Ties => "ties",
            Method::DareLinear => "dare-linear",
            Method::DareTies => "dare-ties",
            Method::Slerp => "slerp",
            Method::ModelStock => "model-stock",
        }
    }

    /// Whether the method works on task vectors and so needs a base model.
    pub fn needs_base(self) -> bool {
        !matches!(self, Method::Linear | Method::Slerp)
    }
}

/// One model of a recipe, with its own parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ingredient {
    /// The checkpoint's path. Recipes that `soup` records hold absolute paths;
    /// relative ones in a recipe file are resolved by [`Recipe::load`].
    pub path: String,
    /// Its weight, overriding `parameters.weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Setting>,
    /// Its density (TIES, DARE), overriding `parameters.density`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub density: Option<Setting>,
    /// The dotted key of the state dict inside a PyTorch training checkpoint
    /// (`state_dict`, `model`); ignored by files that are a state dict already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `s/PATTERN/REPLACEMENT/` rules applied in order to its tensor names (see
    /// [`crate::engine::rename`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rename: Vec<String>,
    /// For a LoRA adapter directory: the model it is applied to, when not the
    /// recipe's `base` (absent both: the adapter config's base model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_base: Option<String>,
    /// For PyTorch files: views whose elements overlap in storage (`expand()`)
    /// are accepted up to this many bytes each, written out densely; absent,
    /// they are refused (see [`OpenOptions::max_expanded_view`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expand_views: Option<u64>,
}

/// An ingredient written as a map.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngredientMap {
    path: String,
    #[serde(default)]
    weight: Option<Setting>,
    #[serde(default)]
    density: Option<Setting>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    rename: Vec<String>,
    #[serde(default)]
    adapter_base: Option<String>,
    #[serde(default)]
    expand_views: Option<u64>,
}

/// A bare path, or a map whose unknown keys are errors that name them.
impl<'de> Deserialize<'de> for Ingredient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(path) => Ok(Ingredient::path(path)),
            other => {
                let IngredientMap {
                    path,
                    weight,
                    density,
                    key,
                    rename,
                    adapter_base,
                    expand_views,
                } = IngredientMap::deserialize(other).map_err(serde::de::Error::custom)?;
                Ok(Ingredient { path, weight, density, key, rename, adapter_base, expand_views })
            }
        }
    }
}

impl Ingredient {
    /// An ingredient with no parameters of its own.
    pub fn path(path: impl Into<String>) -> Self {
        Ingredient { path: path.into(), ..Ingredient::default() }
    }

    /// An ingredient with a constant weight.
    pub fn weighted(path: impl Into<String>, weight: f64) -> Self {
        Ingredient { path: path.into(), weight: Some(weight.into()), ..Ingredient::default() }
    }

    /// Opens it: the state dict at its `key`, names mapped by its `rename` rules,
    /// and, for a LoRA adapter directory, applied to `base` (its own
    /// `adapter_base` when it has one, opened here, else the recipe's base, else
    /// the one its config names).
    pub fn open(&self, base: Option<&Checkpoint>) -> Result<Checkpoint> {
        let adapter_base = match &self.adapter_base {
            Some(path) if is_adapter(Path::new(&self.path)) => Some(self.open_base(path)?),
            _ => None,
        };
        self.open_over(adapter_base.as_ref().or(base))
    }

    /// Opens an adapter's base, naming the adapter when it fails.
    fn open_base(&self, base: &str) -> Result<Checkpoint> {
        Checkpoint::open(base).map_err(|e| Error::Adapter {
            path: self.path.clone().into(),
            reason: format!("its base model {base:?}: {e}"),
        })
    }

    /// [`Ingredient::open`] with the adapter's base given (ignored by a model
    /// that is not an adapter).
    fn open_over(&self, base: Option<&Checkpoint>) -> Result<Checkpoint> {
        let rename =
            self.rename.iter().map(|r| Rename::parse(r)).collect::<Result<Vec<Rename>>>()?;
        let base = base.filter(|_| is_adapter(Path::new(&self.path))).cloned();
        let options = OpenOptions {
            key: self.key.clone(),
            rename,
            base,
            max_expanded_view: self.expand_views.unwrap_or(0),
        };
        Checkpoint::open_with(&self.path, &options)
    }
}

/// Opens every ingredient ([`Ingredient::open`]), each distinct `adapter_base`
/// once; `base` is the recipe's base. On failure, the index of the ingredient
/// that failed and why.
pub fn open_ingredients(
    ingredients: &[Ingredient],
    base: Option<&Checkpoint>,
) -> std::result::Result<Vec<Checkpoint>, Box<(usize, Error)>> {
    let mut bases: BTreeMap<&str, Checkpoint> = BTreeMap::new();
    let mut opened = Vec::with_capacity(ingredients.len());
    for (i, ingredient) in ingredients.iter().enumerate() {
        let own = match ingredient.adapter_base.as_deref() {
            Some(path) if is_adapter(Path::new(&ingredient.path)) => {
                if !bases.contains_key(path) {
                    let base = ingredient.open_base(path).map_err(|e| Box::new((i, e)))?;
                    bases.insert(path, base);
                }
                bases.get(path)
            }
            _ => None,
        };
        opened.push(ingredient.open_over(own.or(base)).map_err(|e| Box::new((i, e)))?);
    }
    Ok(opened)
}

/// Method parameters shared by every ingredient (each may vary by tensor).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameters {
    /// Default weight of ingredients without their own (1 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Setting>,
    /// Default density of ingredients without their own (TIES, DARE; 1 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub density: Option<Setting>,
    /// Scale of the merged task vector (task arithmetic, TIES, DARE; 1 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<Setting>,
    /// SLERP's interpolation factor: 0 is the first model, 1 the second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<Setting>,
    /// Seed of DARE's drop masks (0 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Divide by the sum of the weights (linear: default true; TIES: of the
    /// agreeing weights, default true; task arithmetic and DARE: default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// Rescale DARE's surviving entries by `1/density` (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescale: Option<bool>,
}

impl Parameters {
    fn is_empty(&self) -> bool {
        *self == Parameters::default()
    }
}

/// How a recipe's soup is written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Output dtype of merged tensors (`bf16`, `f16`, `f32`, `f64`); absent: each
    /// tensor's dtype in the first ingredient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// Largest output shard in bytes (5 GB if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shard_size: Option<u64>,
    /// Tensors that are not merged (integers, bool) and differ: `error` (the
    /// default) or `first`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_float: Option<String>,
}

impl Output {
    fn is_empty(&self) -> bool {
        *self == Output::default()
    }
}

/// How a soup is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The tool that wrote it, `modelsoup` and its version (informative).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tool: String,
    /// The merge method.
    pub method: Method,
    /// The search that chose the weights (`greedy`, `pruned`, `learned`), if one did
    /// (informative: the recipe replays the chosen soup, not the search).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
    /// The models merged, in order.
    pub ingredients: Vec<Ingredient>,
    /// The pretrained model the task vectors start from (required by the task-vector
    /// methods; in a linear merge it takes part with its own weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Ingredient>,
    /// Parameters shared by all ingredients.
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
    /// How the output is written.
    #[serde(default, skip_serializing_if = "Output::is_empty")]
    pub output: Output,
}

impl Recipe {
    /// A recipe for `method` over `ingredients`, stamped with this build's version.
    pub fn new(method: Method, ingredients: Vec<Ingredient>) -> Self {
        Recipe {
            tool: tool(),
            method,
            search: None,
            ingredients,
            base: None,
            parameters: Parameters::default(),
            output: Output::default(),
        }
    }

    /// The linear soup of `paths` with constant `weights` applied as given.
    pub fn linear(paths: &[String], weights: &[f64]) -> Self {
        let ingredients =
            paths.iter().zip(weights).map(|(p, &w)| Ingredient::weighted(p.clone(), w)).collect();
        let mut recipe = Recipe::new(Method::Linear, ingredients);
        recipe.parameters.normalize = Some(false);
        recipe
    }

    /// The `__metadata__` entries that carry this recipe, stamped with this build.
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let stamped = Recipe { tool: tool(), ..self.clone() };
        // Serialising strings, finite floats and plain enums cannot fail.
        let json = serde_json::to_string(&stamped).unwrap_or_default();
        BTreeMap::from([(METADATA_KEY.to_owned(), json)])
    }

    /// Reads a recipe back from a file's `__metadata__`, if it has one.
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Option<Self> {
        serde_json::from_str(metadata.get(METADATA_KEY)?).ok()
    }

    /// Parses a recipe file's text: our format, or a mergekit configuration
    /// (recognised by its `merge_method` key). `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let invalid = |reason: String| Error::Recipe { path: path.to_path_buf(), reason };
        let value: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|e| invalid(format!("not valid YAML: {e}")))?;
        if value.get("merge_method").is_some() {
            return mergekit::translate(&value).map_err(invalid);
        }
        serde_json::from_value(value).map_err(|e| invalid(e.to_string()))
    }

    /// Reads a recipe from `path`: a recipe file (YAML or JSON, ours or
    /// mergekit's), or a soup — a `.safetensors` file or a directory — whose
    /// metadata holds the recipe that made it.
    ///
    /// Every relative model path is made absolute, so the recipe can be used from
    /// any working directory: a recipe file's paths are looked up beside the file
    /// first, then in the working directory (as mergekit configurations are
    /// usually written); a soup records absolute paths, and the relative ones of
    /// older soups are looked up in the working directory. A path found in neither
    /// place is an error naming the recipe and every place looked in.
    pub fn load(path: &Path) -> Result<Self> {
        let soup = path.is_dir() || path.extension().is_some_and(|e| e == "safetensors");
        let mut recipe = if soup {
            let checkpoint = Checkpoint::open(path)?;
            let metadata = checkpoint.shards().first().map(|s| s.metadata().clone());
            metadata.as_ref().and_then(Recipe::from_metadata).ok_or_else(|| Error::Recipe {
                path: path.to_path_buf(),
                reason: format!("the soup's metadata has no {METADATA_KEY:?} entry"),
            })?
        } else {
            let text = crate::engine::checkpoint::read_bounded(path, MAX_RECIPE_BYTES)?;
            Recipe::parse(&text, path)?
        };
        let beside = (!soup).then(|| path.parent().unwrap_or(Path::new(""))).filter(|d| {
            // The working directory is looked in anyway.
            !d.as_os_str().is_empty()
        });
        recipe.resolve_paths(path, beside)?;
        Ok(recipe)
    }

    /// Makes every model path absolute: relative ones are looked up in `beside`
    /// (when given), then in the working directory.
    fn resolve_paths(&mut self, recipe: &Path, beside: Option<&Path>) -> Result<()> {
        let mut models: Vec<(String, &mut String)> = Vec::new();
        for (i, m) in self.ingredients.iter_mut().enumerate() {
            models.push((format!("ingredient {}", i + 1), &mut m.path));
            if let Some(p) = m.adapter_base.as_mut() {
                models.push((format!("the adapter base of ingredient {}", i + 1), p));
            }
        }
        if let Some(b) = self.base.as_mut() {
            models.push(("base".to_owned(), &mut b.path));
        }
        for (role, model_path) in models {
            let given = Path::new(model_path.as_str());
            if given.is_absolute() {
                continue;
            }
            let places: Vec<std::path::PathBuf> =
                beside.map(|d| d.join(given)).into_iter().chain([given.to_path_buf()]).collect();
            let local = places.iter().find(|p| p.exists());
            if let (None, Some(id)) = (local, ModelId::parse(model_path)) {
                // A Hub id: pinned to the cached commit, so the soup's recipe names
                // exactly the weights it used.
                let snapshot = id.resolve().map_err(|e| Error::Recipe {
                    path: recipe.to_path_buf(),
                    reason: format!("{role}: {e}"),
                })?;
                *model_path = id.pinned(&snapshot);
                continue;
            }
            let found = local.ok_or_else(|| Error::Recipe {
                path: recipe.to_path_buf(),
                reason: format!(
                    "{role}, {:?}, is not found {}",
                    model_path,
                    match beside {
                        Some(d) => format!(
                            "beside the recipe (in {}) or in the working directory",
                            d.display()
                        ),
                        None => "in the working directory".to_owned(),
                    }
                ),
            })?;
            let absolute =
                std::path::absolute(found).map_err(Error::io("resolve", found.clone()))?;
            *model_path = absolute.display().to_string();
        }
        Ok(())
    }
}

/// `modelsoup` and this build's version.
fn tool() -> String {
    format!("modelsoup {}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_files_accept_bare_paths_and_per_ingredient_parameters() {
        let text = "method: ties\n\
                    base: pre/\n\
                    ingredients:\n  - a/\n  - path: b/\n    weight: 0.5\n    density: [0.1, 0.9]\n\
                    parameters:\n  density: 0.2\n  lambda: 1.0\n  seed: 7\n";
        let r = Recipe::parse(text, Path::new("r.yaml")).unwrap();
        assert_eq!(r.method, Method::Ties);
        assert_eq!(r.base, Some(Ingredient::path("pre/")));
        assert_eq!(r.ingredients[0], Ingredient::path("a/"));
        assert_eq!(r.ingredients[1].weight, Some(Setting::from(0.5)));
        assert_eq!(r.parameters.seed, Some(7));
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let text = "method: linear\ningredients: [a/]\nparameters:\n  lamda: 1\n";
        let err = Recipe::parse(text, Path::new("r.yaml")).unwrap_err().to_string();
        assert!(err.contains("lamda") && err.contains("r.yaml"), "{err}");
    }

    #[test]
    fn the_metadata_record_round_trips_exactly() {
        let mut r = Recipe::linear(&["a/".to_owned(), "b/".to_owned()], &[0.1, 0.2]);
        r.output.dtype = Some("bf16".to_owned());
        let back = Recipe::from_metadata(&r.to_metadata()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.to_metadata(), r.to_metadata());
    }
}
