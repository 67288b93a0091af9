//! Recipes: everything a merge needs besides the weights themselves — method,
//! ingredients, base, parameters (which may vary by tensor), output format — as
//! one serialisable record.
//!
//! The same record is the recipe file a user writes (YAML, see `docs/METHODS.md`;
//! JSON is YAML too) and the `modelsoup.recipe` entry in every output file's
//! `__metadata__`. Replaying a soup's recorded recipe with `soup merge --recipe`
//! (same build, from any working directory: recorded paths are absolute) writes
//! the same bytes.
//! [`mergekit`] reads mergekit configurations into the same record; [`files`]
//! makes the tokenizer, chat template and config a recipe asks for, [`card`]
//! the model card.

pub mod card;
pub mod files;
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
    /// Keep each task vector's entries ranked between its largest-magnitude
    /// outliers (`gamma`) and its smallest, `density` of them; add them up
    /// (Davari and Belilovsky, 2024).
    Breadcrumbs,
    /// Breadcrumbs' trim, then TIES's sign election.
    BreadcrumbsTies,
    /// Drop each entry with a probability that falls with its magnitude rank in
    /// its row, rescale the survivors, elect a sign (Deep et al., 2024).
    Della,
    /// DELLA's drop and rescale, then add the task vectors up.
    DellaLinear,
    /// Select the entries where the task vectors vary most, weight each task
    /// vector by its mean square, elect a sign (Wan et al., 2024).
    Sce,
    /// SLERP of two models (or task vectors) with the ratio of their weights as
    /// `t` (mergekit's NuSLERP).
    Nuslerp,
    /// Weighted spherical barycentre of any number of models (or task vectors).
    Multislerp,
    /// Weighted Karcher mean of the models on the unit sphere, rescaled by their
    /// mean norm.
    Karcher,
    /// Per element, move from the base toward the other model only as far as `t`
    /// (the whole way where they differ by at most `t`).
    Nearswap,
    /// One model's tensors as they are (optionally scaled); with slices, layers
    /// stacked from several models.
    Passthrough,
}

impl Method {
    /// Every method, in the order the documentation lists them.
    pub const ALL: [Method; 17] = [
        Method::Linear,
        Method::TaskArithmetic,
        Method::Ties,
        Method::DareLinear,
        Method::DareTies,
        Method::Slerp,
        Method::ModelStock,
        Method::Breadcrumbs,
        Method::BreadcrumbsTies,
        Method::Della,
        Method::DellaLinear,
        Method::Sce,
        Method::Nuslerp,
        Method::Multislerp,
        Method::Karcher,
        Method::Nearswap,
        Method::Passthrough,
    ];

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
            Method::Breadcrumbs => "breadcrumbs",
            Method::BreadcrumbsTies => "breadcrumbs-ties",
            Method::Della => "della",
            Method::DellaLinear => "della-linear",
            Method::Sce => "sce",
            Method::Nuslerp => "nuslerp",
            Method::Multislerp => "multislerp",
            Method::Karcher => "karcher",
            Method::Nearswap => "nearswap",
            Method::Passthrough => "passthrough",
        }
    }

    /// Whether the method works on task vectors and so needs a base model.
    pub fn needs_base(self) -> bool {
        !matches!(
            self,
            Method::Linear
                | Method::Slerp
                | Method::Nuslerp
                | Method::Multislerp
                | Method::Karcher
                | Method::Passthrough
        )
    }

    /// Whether the method may take a base model at all (those that do not need
    /// one use it as the origin of task vectors when given; linear and Karcher
    /// merge it as one more model).
    pub fn takes_base(self) -> bool {
        !matches!(self, Method::Slerp | Method::Passthrough)
    }
}

/// One model of a recipe, with its own parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ingredient {
    /// The checkpoint's path. Recipes that `soup` records hold absolute paths;
    /// relative ones in a recipe file are resolved by [`Recipe::load`]. In a
    /// recipe with intermediates, the name of one of them.
    pub path: String,
    /// Its weight, overriding `parameters.weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Setting>,
    /// Its density (TIES, DARE, Breadcrumbs, DELLA), overriding
    /// `parameters.density`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub density: Option<Setting>,
    /// Its outlier fraction (Breadcrumbs), overriding `parameters.gamma`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma: Option<Setting>,
    /// Its probability spread (DELLA), overriding `parameters.epsilon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<Setting>,
    /// In a slice: the model's blocks `start..end` that the slice takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<[usize; 2]>,
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
    gamma: Option<Setting>,
    #[serde(default)]
    epsilon: Option<Setting>,
    #[serde(default)]
    layers: Option<[usize; 2]>,
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
                    gamma,
                    epsilon,
                    layers,
                    key,
                    rename,
                    adapter_base,
                    expand_views,
                } = IngredientMap::deserialize(other).map_err(serde::de::Error::custom)?;
                Ok(Ingredient {
                    path,
                    weight,
                    density,
                    gamma,
                    epsilon,
                    layers,
                    key,
                    rename,
                    adapter_base,
                    expand_views,
                })
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
    /// Default density of ingredients without their own (TIES, DARE,
    /// Breadcrumbs, DELLA; 1 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub density: Option<Setting>,
    /// Scale of the merged task vector (task arithmetic, TIES, DARE, Breadcrumbs,
    /// DELLA; 1 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<Setting>,
    /// SLERP's interpolation factor (0 is the first model, 1 the second); NearSwap's
    /// largest step from the base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<Setting>,
    /// Seed of DARE's and DELLA's drop masks (0 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Divide by the sum of the weights (linear: default true; TIES: of the
    /// agreeing weights, default true; task arithmetic and DARE: default false;
    /// Multi-SLERP: normalise the weights to sum 1, default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// Rescale DARE's surviving entries by `1/density`, DELLA's by one over their
    /// keep probability (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescale: Option<bool>,
    /// Breadcrumbs: the fraction of largest-magnitude entries dropped as outliers
    /// (0.01 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma: Option<Setting>,
    /// DELLA: keep probabilities run from `density − epsilon` (smallest magnitude
    /// in a row) to `density + epsilon` (largest) (0.15 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<Setting>,
    /// SCE: the fraction of the entries with non-zero variance across the task
    /// vectors that is kept, those of largest variance (1 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_topk: Option<Setting>,
    /// Multi-SLERP: added to norms before dividing by them (1e-8 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// Karcher: most iterations (10 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_iter: Option<u32>,
    /// Karcher: the step size (and norm) below which the iteration stops (1e-5 if
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tol: Option<f64>,
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
    /// The model whose tokenizer files are copied into the soup, over those of
    /// the support files (a path, like an ingredient's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// A chat template written into the soup's `tokenizer_config.json`: the
    /// template's text, or the name of one of the templates mergekit ships
    /// (`chatml`, `llama3`, ...; see `docs/METHODS.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
}

impl Output {
    fn is_empty(&self) -> bool {
        *self == Output::default()
    }
}

/// One slice of a recipe built slice by slice: the blocks of its ingredients
/// that are merged into consecutive blocks of the output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slice {
    /// The models merged, each with the range of its blocks (`layers`) taken;
    /// every range has the same length.
    pub ingredients: Vec<Ingredient>,
    /// The slice's base, with its range of blocks (required by the task-vector
    /// methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Ingredient>,
    /// Parameters of this slice, over the recipe's.
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
}

/// A merge whose soup an ingredient of a later one names: recipes with
/// intermediates are mergekit's multi-document configurations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intermediate {
    /// The name later recipes use as a model path.
    pub name: String,
    /// How it is made (it may name earlier intermediates).
    pub recipe: Recipe,
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
    /// Merges made first, in order, whose soups ingredients may name (and that
    /// are deleted once this one is written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intermediates: Vec<Intermediate>,
    /// The models merged, in order (empty when the recipe has slices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingredients: Vec<Ingredient>,
    /// The pretrained model the task vectors start from (required by the task-vector
    /// methods; in a linear merge it takes part with its own weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Ingredient>,
    /// The output built slice by slice from ranges of blocks of the models
    /// (instead of `ingredients` and `base`): each slice's blocks follow the
    /// previous slice's in the output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<Slice>,
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
            intermediates: Vec::new(),
            ingredients,
            base: None,
            slices: Vec::new(),
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
    /// (recognised by its `merge_method` key), or several mergekit
    /// configurations as YAML documents, as `mergekit-multi` reads them (see
    /// [`mergekit::translate_documents`]). `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let invalid = |reason: String| Error::Recipe { path: path.to_path_buf(), reason };
        let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(text)
            .map_err(|e| invalid(format!("not valid YAML: {}", yaml_error(&e.to_string()))))?;
        let documents: Vec<serde_json::Value> =
            documents.into_iter().filter(|d| !d.is_null()).collect();
        match documents.as_slice() {
            [] => Err(invalid("the file holds no recipe".to_owned())),
            [value] if value.get("merge_method").is_some() => {
                mergekit::translate(value).map_err(invalid)
            }
            [value] => serde_json::from_value(value.clone()).map_err(|e| invalid(e.to_string())),
            several => mergekit::translate_documents(several).map_err(invalid),
        }
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
        Recipe::load_with_source(path).map(|(recipe, _)| recipe)
    }

    /// [`Recipe::load`], and the file's text when it is a mergekit
    /// configuration (for the model card, which shows it as mergekit does).
    pub fn load_with_source(path: &Path) -> Result<(Self, Option<String>)> {
        let soup = path.is_dir() || path.extension().is_some_and(|e| e == "safetensors");
        let mut source = None;
        let mut recipe = if soup {
            let checkpoint = Checkpoint::open(path)?;
            let metadata = checkpoint.shards().first().map(|s| s.metadata().clone());
            metadata.as_ref().and_then(Recipe::from_metadata).ok_or_else(|| Error::Recipe {
                path: path.to_path_buf(),
                reason: format!("the soup's metadata has no {METADATA_KEY:?} entry"),
            })?
        } else {
            let text = crate::engine::checkpoint::read_bounded(path, MAX_RECIPE_BYTES)?;
            let recipe = Recipe::parse(&text, path)?;
            // Not our format: a mergekit configuration (one or several).
            let ours = serde_saphyr::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| serde_json::from_value::<Recipe>(v).ok());
            if ours.is_none() {
                source = Some(text);
            }
            recipe
        };
        let beside = (!soup).then(|| path.parent().unwrap_or(Path::new(""))).filter(|d| {
            // The working directory is looked in anyway.
            !d.as_os_str().is_empty()
        });
        recipe.resolve_paths(path, beside)?;
        Ok((recipe, source))
    }

    /// Every distinct model path the recipe reads itself (not those of its
    /// intermediates), in first-use order: ingredients and base, or the slices'.
    pub fn models(&self) -> Vec<&str> {
        let mut paths: Vec<&str> = Vec::new();
        let listed = self
            .ingredients
            .iter()
            .chain(&self.base)
            .chain(self.slices.iter().flat_map(|s| s.ingredients.iter().chain(&s.base)));
        for model in listed {
            if !paths.contains(&model.path.as_str()) {
                paths.push(&model.path);
            }
        }
        paths
    }

    /// Makes every model path absolute (the recipe's, its slices', its
    /// tokenizer's and its intermediates'): relative ones are looked up in
    /// `beside` (when given), then in the working directory. Names of
    /// intermediates are kept as they are.
    fn resolve_paths(&mut self, recipe: &Path, beside: Option<&Path>) -> Result<()> {
        let names: Vec<String> = self.intermediates.iter().map(|i| i.name.clone()).collect();
        for intermediate in &mut self.intermediates {
            let role = format!("intermediate {:?}", intermediate.name);
            intermediate.recipe.resolve_all(recipe, beside, &names, &role)?;
        }
        self.resolve_all(recipe, beside, &names, "")
    }

    /// [`Recipe::resolve_paths`] for this recipe's own paths; `within` prefixes
    /// the roles in errors.
    fn resolve_all(
        &mut self,
        recipe: &Path,
        beside: Option<&Path>,
        names: &[String],
        within: &str,
    ) -> Result<()> {
        let prefix = if within.is_empty() { String::new() } else { format!("{within}: ") };
        let mut models: Vec<(String, &mut String)> = Vec::new();
        for (i, m) in self.ingredients.iter_mut().enumerate() {
            models.push((format!("{prefix}ingredient {}", i + 1), &mut m.path));
            if let Some(p) = m.adapter_base.as_mut() {
                models.push((format!("{prefix}the adapter base of ingredient {}", i + 1), p));
            }
        }
        if let Some(b) = self.base.as_mut() {
            models.push((format!("{prefix}base"), &mut b.path));
        }
        for (s, slice) in self.slices.iter_mut().enumerate() {
            for (i, m) in slice.ingredients.iter_mut().enumerate() {
                let role = format!("{prefix}slice {} ingredient {}", s + 1, i + 1);
                if let Some(p) = m.adapter_base.as_mut() {
                    models.push((format!("the adapter base of {role}"), p));
                }
                models.push((role, &mut m.path));
            }
            if let Some(b) = slice.base.as_mut() {
                models.push((format!("{prefix}slice {} base", s + 1), &mut b.path));
            }
        }
        if let Some(t) = self.output.tokenizer.as_mut() {
            models.push((format!("{prefix}tokenizer"), t));
        }
        for (role, path) in models {
            if !names.contains(path) {
                *path = resolve_path(path, &role, recipe, beside)?;
            }
        }
        Ok(())
    }
}

/// One model path made absolute, or pinned when it is a Hub id (see
/// [`Recipe::resolve_paths`]).
fn resolve_path(path: &str, role: &str, recipe: &Path, beside: Option<&Path>) -> Result<String> {
    let given = Path::new(path);
    if given.is_absolute() {
        return Ok(path.to_owned());
    }
    let places: Vec<std::path::PathBuf> =
        beside.map(|d| d.join(given)).into_iter().chain([given.to_path_buf()]).collect();
    let local = places.iter().find(|p| p.exists());
    if let (None, Some(id)) = (local, ModelId::parse(path)) {
        // A Hub id: pinned to the cached commit, so the soup's recipe names
        // exactly the weights it used.
        let snapshot = id.resolve().map_err(|e| Error::Recipe {
            path: recipe.to_path_buf(),
            reason: format!("{role}: {e}"),
        })?;
        return Ok(id.pinned(&snapshot));
    }
    let found = local.ok_or_else(|| Error::Recipe {
        path: recipe.to_path_buf(),
        reason: format!(
            "{role}, {path:?}, is not found {}",
            match beside {
                Some(d) =>
                    format!("beside the recipe (in {}) or in the working directory", d.display()),
                None => "in the working directory".to_owned(),
            }
        ),
    })?;
    let absolute = std::path::absolute(found).map_err(Error::io("resolve", found.clone()))?;
    Ok(absolute.display().to_string())
}

/// The YAML parser's message without its source excerpt or its advice on
/// calling the library: `line 2 column 9: unclosed bracket '['`.
fn yaml_error(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = first.split("; use ").next().unwrap_or(first);
    first.trim().to_owned()
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
