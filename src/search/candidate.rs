//! Candidate soups at the cost of one or two model reads each, whatever the soup's
//! size.
//!
//! A search keeps the *running sum* of the current soup's members: nothing for a
//! one-member soup (the member itself is the sum), else a checkpoint in the scratch
//! directory written by the engine (f32 for bf16/f16 tensors, f64 for f32/f64 ones,
//! so that the sum holds the members exactly in practice and a candidate is within
//! one output ulp of its members' mean). A candidate that adds or removes one
//! ingredient is then `(sum ± θᵢ) / n'`: the sum and one ingredient are read, never
//! the whole soup. Accepting a candidate writes the new sum the same way.
//! Every candidate, and the final soup, is produced by this one formula, so the
//! soup written at the end has exactly the bytes that were scored.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::engine::checkpoint::Checkpoint;
use crate::engine::dtype::FloatDtype;
use crate::engine::execute::RunOptions;
use crate::engine::merge::{write_soup, Destination, MergeReport};
use crate::engine::plan::{NonFloatPolicy, OutputDtype, Plan, PlanOptions, Weights};
use crate::error::{Error, Result};
use crate::recipe::{Ingredient, Method, Recipe, Rule, Setting, Value};
use crate::search::groups::Grouping;

/// The ingredients of a search and how its candidates are written.
#[derive(Debug)]
pub struct Kitchen {
    ingredients: Vec<Checkpoint>,
    scratch: PathBuf,
    /// Output dtype of averaged tensors in every candidate and the final soup;
    /// `None` keeps each tensor's dtype in the first ingredient.
    pub dtype: Option<FloatDtype>,
    /// Output shard size.
    pub max_shard_size: u64,
    /// Non-float tensor policy.
    pub non_float: NonFloatPolicy,
    /// Where config and tokenizer files are copied from.
    pub support_files_from: Option<PathBuf>,
    /// The pretrained model, for soups of task vectors: with it, every candidate
    /// and the final soup are `θ₀ + λ·(soup − θ₀)`.
    pub base: Option<Base>,
    /// Engine threads and chunking for each materialisation.
    pub threads: usize,
    /// Elements per engine chunk.
    pub chunk_elements: usize,
    counter: AtomicU64,
}

/// The base of a search over task vectors.
#[derive(Debug, Clone)]
pub struct Base {
    /// The pretrained model.
    pub checkpoint: Checkpoint,
    /// Its path as given, for recipes and journal keys.
    pub label: String,
    /// The scale of the soup's task vector: 1 gives the plain soup, less moves it
    /// toward the base (WiSE-FT), more extrapolates.
    pub lambda: f64,
}

/// How a candidate differs from the soup it was proposed against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A soup of one ingredient, on its own.
    Alone(usize),
    /// The current soup plus this ingredient.
    Add(usize),
    /// The current soup without this ingredient.
    Remove(usize),
    /// The current soup itself.
    Same,
}

/// Mixing coefficients of a learned soup: for each layer group, one weight per
/// ingredient.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    /// Which group each tensor belongs to.
    pub grouping: Arc<Grouping>,
    /// `weights[g][i]`: ingredient `i`'s weight in group `g`.
    pub weights: Vec<Vec<f64>>,
}

impl Mix {
    /// Ingredient `i`'s weights as a recipe setting: a number with one group, else
    /// one rule per group listing the layer groups (see [`crate::engine::layers`]) it holds.
    pub fn setting(&self, i: usize) -> Setting {
        if let [only] = self.weights.as_slice() {
            return Setting::from(only[i]);
        }
        let mut layers: Vec<Vec<String>> = vec![Vec::new(); self.weights.len()];
        for (tensor, &g) in &self.grouping.of_tensor {
            let label = crate::engine::layers::LayerGroup::of(tensor).label();
            if !layers[g].contains(&label) {
                layers[g].push(label);
            }
        }
        let rules = layers
            .into_iter()
            .zip(&self.weights)
            .filter(|(labels, _)| !labels.is_empty())
            .map(|(labels, w)| Rule {
                filter: None,
                layers: Some(labels),
                value: Value::Number(w[i]),
            })
            .collect();
        Setting::Rules(rules)
    }
}

/// The members of a soup and the running sum its candidates are computed from.
/// Scratch files are removed when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Soup {
    members: Vec<usize>,
    sum: Arc<Sum>,
}

#[derive(Debug)]
enum Sum {
    /// One member: its own weights are the sum.
    Single(usize),
    /// A checkpoint holding Σ θ over the members: f32 for 16-bit tensors, f64 for
    /// wider ones (see `OutputDtype::Wide`).
    File { checkpoint: Checkpoint, dir: PathBuf },
}

impl Drop for Kitchen {
    /// Removes this process's scratch directory if nothing was kept in it.
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.scratch);
    }
}

/// Removes `scratch/PID/` directories whose process is gone. Only where `/proc`
/// tells which processes exist; elsewhere they stay for the user to delete.
fn remove_dead_processes_scratch(scratch: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(scratch) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for Sum {
    fn drop(&mut self) {
        if let Sum::File { dir, .. } = self {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

impl Soup {
    /// The members, as indices into the kitchen's ingredients, ascending.
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    /// The members after `change`.
    pub fn members_after(&self, change: Change) -> Vec<usize> {
        let mut members = match change {
            Change::Alone(i) => vec![i],
            Change::Add(i) => self.members.iter().copied().chain([i]).collect(),
            Change::Remove(i) => self.members.iter().copied().filter(|&m| m != i).collect(),
            Change::Same => self.members.clone(),
        };
        members.sort_unstable();
        members.dedup();
        members
    }
}

impl Kitchen {
    /// A kitchen for `ingredients` writing its scratch files under
    /// `scratch/PID/` (created if missing). Directories left there by processes
    /// that no longer exist (a search killed with SIGKILL) are removed first.
    pub fn new(ingredients: Vec<Checkpoint>, scratch: &Path) -> Result<Self> {
        if ingredients.is_empty() {
            return Err(Error::NoIngredients);
        }
        fs::create_dir_all(scratch).map_err(Error::io("create", scratch))?;
        remove_dead_processes_scratch(scratch);
        let own = scratch.join(std::process::id().to_string());
        fs::create_dir_all(&own).map_err(Error::io("create", &own))?;
        Ok(Kitchen {
            ingredients,
            scratch: own,
            dtype: None,
            max_shard_size: crate::engine::plan::DEFAULT_MAX_SHARD_SIZE,
            non_float: NonFloatPolicy::RequireEqual,
            support_files_from: None,
            base: None,
            threads: 0,
            chunk_elements: crate::engine::execute::DEFAULT_CHUNK_ELEMENTS,
            counter: AtomicU64::new(0),
        })
    }

    /// The ingredients, in the order given.
    pub fn ingredients(&self) -> &[Checkpoint] {
        &self.ingredients
    }

    /// This process's scratch directory (`SCRATCH/PID`).
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// A soup of the single ingredient `i`.
    pub fn single(&self, i: usize) -> Soup {
        Soup { members: vec![i], sum: Arc::new(Sum::Single(i)) }
    }

    /// A soup of all `members` (ascending, distinct), summing them once: the start
    /// of a pruned search. Costs one read of every member.
    pub fn soup_of(&self, members: &[usize]) -> Result<Soup> {
        match members {
            [] => Err(Error::NoIngredients),
            [i] => Ok(self.single(*i)),
            _ => {
                let inputs: Vec<(usize, f64)> = members.iter().map(|&m| (m, 1.0)).collect();
                self.write_sum(None, &inputs, members.to_vec())
            }
        }
    }

    /// The soup after accepting `change` (one read of the old sum and one
    /// ingredient).
    pub fn accept(&self, soup: &Soup, change: Change) -> Result<Soup> {
        let members = soup.members_after(change);
        match (change, members.as_slice()) {
            (Change::Same, _) => Ok(soup.clone()),
            (_, [only]) => Ok(self.single(*only)),
            (Change::Alone(i), _) => Ok(self.single(i)),
            (Change::Add(i), _) => self.write_sum(Some(soup), &[(i, 1.0)], members),
            (Change::Remove(i), _) => self.write_sum(Some(soup), &[(i, -1.0)], members),
        }
    }

    /// Writes the candidate `soup ⊕ change` (uniform weights over its members) to
    /// `dest.path` (its `support_files_from` is ignored: the kitchen's is used), with `metadata` in every
    /// file. Returns the merge report.
    pub fn materialise(
        &self,
        soup: &Soup,
        change: Change,
        dest: &Destination,
        metadata: std::collections::BTreeMap<String, String>,
    ) -> Result<MergeReport> {
        let n = soup.members_after(change).len() as f64;
        let dtype = self.dtype.map_or(OutputDtype::Like(0), OutputDtype::Force);
        let w = self.lambda() / n;
        let (sum, extra) = match change {
            Change::Alone(i) => (None, vec![(i, self.lambda())]),
            Change::Add(i) => (Some((soup, w)), vec![(i, w)]),
            Change::Remove(i) => (Some((soup, w)), vec![(i, -w)]),
            Change::Same => (Some((soup, w)), Vec::new()),
        };
        self.merge(sum, &extra, true, dest, metadata, dtype)
    }

    fn write_sum(
        &self,
        base: Option<&Soup>,
        inputs: &[(usize, f64)],
        members: Vec<usize>,
    ) -> Result<Soup> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = self.scratch.join(format!("sum-{n}"));
        let base = base.map(|soup| (soup, 1.0));
        let dest =
            Destination { path: &dir, force: true, support_files_from: None, durable: false };
        self.merge(base, inputs, false, &dest, Default::default(), OutputDtype::Wide)?;
        let checkpoint = Checkpoint::open(&dir)?;
        Ok(Soup { members, sum: Arc::new(Sum::File { checkpoint, dir }) })
    }

    /// `base_weight · sum(base) + Σ wᵢ·θᵢ` (`+ (1 − λ)·θ₀` when `pretrained` and
    /// the kitchen has a base) into `dest` (with the kitchen's support files). The
    /// first ingredient is
    /// always input 0 (with weight 0, so it is not read): every candidate then has
    /// its tensor order, its dtypes under `OutputDtype::Like(0)`, and its copy of
    /// non-float tensors, whatever the members.
    fn merge(
        &self,
        base: Option<(&Soup, f64)>,
        inputs: &[(usize, f64)],
        pretrained: bool,
        dest: &Destination,
        metadata: std::collections::BTreeMap<String, String>,
        dtype: OutputDtype,
    ) -> Result<MergeReport> {
        let mut checkpoints = vec![self.ingredients[0].clone()];
        let mut weights = vec![0.0];
        let mut add = |ck: &Checkpoint, w: f64| {
            checkpoints.push(ck.clone());
            weights.push(w);
        };
        if let Some((soup, w)) = base {
            match &*soup.sum {
                Sum::Single(i) => add(&self.ingredients[*i], w),
                Sum::File { checkpoint, .. } => add(checkpoint, w),
            }
        }
        for &(i, w) in inputs {
            add(&self.ingredients[i], w);
        }
        if let (Some(b), true) = (&self.base, pretrained) {
            add(&b.checkpoint, 1.0 - b.lambda);
        }
        self.write(&checkpoints, Weights::Global(weights), dest, metadata, dtype)
    }

    /// Writes the soup of every ingredient mixed by `mix` (one weight vector per
    /// layer group) to `dest`: a learned soup. Reads every ingredient with a
    /// non-zero weight.
    pub fn materialise_mix(
        &self,
        mix: &Mix,
        dest: &Destination,
        metadata: std::collections::BTreeMap<String, String>,
    ) -> Result<MergeReport> {
        let (grouping, weights) = (Arc::clone(&mix.grouping), mix.weights.clone());
        let lambda = self.lambda();
        let mut checkpoints = self.ingredients.clone();
        checkpoints.extend(self.base.as_ref().map(|b| b.checkpoint.clone()));
        let with_base = self.base.is_some();
        let per_tensor = move |name: &str| {
            let mut w: Vec<f64> =
                weights[grouping.group(name)].iter().map(|w| lambda * w).collect();
            if with_base {
                w.push(1.0 - lambda);
            }
            w
        };
        let dtype = self.dtype.map_or(OutputDtype::Like(0), OutputDtype::Force);
        self.write(&checkpoints, Weights::PerTensor(Box::new(per_tensor)), dest, metadata, dtype)
    }

    /// λ, the scale of every candidate's task vector (1 without a base).
    fn lambda(&self) -> f64 {
        self.base.as_ref().map_or(1.0, |b| b.lambda)
    }

    /// A candidate's journal key: its members and weights, plus the base with
    /// weight `1 − λ` when it takes part (a soup of deltas at λ = 1 is the plain
    /// soup, and shares its key).
    pub fn key(&self, mut members: Vec<String>, weights: Vec<f64>) -> (Vec<String>, Vec<f64>) {
        let mut weights: Vec<f64> = weights.iter().map(|w| w * self.lambda()).collect();
        if let Some(b) = self.base.as_ref().filter(|b| b.lambda != 1.0) {
            members.push(format!("base:{}", b.label));
            weights.push(1.0 - b.lambda);
        }
        (members, weights)
    }

    /// The recipe of a soup of the kitchen's ingredients `members` (named
    /// `labels[m]` in it), each weighted by its `weights` setting (`None`: equal
    /// weights, normalised), with the kitchen's output settings and `search` as
    /// its provenance: linear, or task arithmetic over the base with λ when the
    /// kitchen has one.
    pub fn recipe(
        &self,
        search: &str,
        labels: &[String],
        members: &[usize],
        weights: Option<Vec<Setting>>,
    ) -> Recipe {
        let mut ingredients: Vec<Ingredient> =
            members.iter().map(|&m| Ingredient::path(labels[m].clone())).collect();
        let normalize = weights.is_some().then_some(false);
        for (ingredient, w) in ingredients.iter_mut().zip(weights.into_iter().flatten()) {
            ingredient.weight = Some(w);
        }
        let mut recipe = match &self.base {
            None => Recipe::new(Method::Linear, ingredients),
            Some(b) => {
                let mut r = Recipe::new(Method::TaskArithmetic, ingredients);
                r.base = Some(Ingredient::path(b.label.clone()));
                r.parameters.lambda = Some(b.lambda.into());
                r
            }
        };
        recipe.search = Some(search.to_owned());
        recipe.parameters.normalize = normalize.or(self.base.as_ref().map(|_| true));
        recipe.output.dtype = self.dtype.map(|d| d.name().to_owned());
        recipe.output.max_shard_size = (self.max_shard_size
            != crate::engine::plan::DEFAULT_MAX_SHARD_SIZE)
            .then_some(self.max_shard_size);
        recipe.output.non_float =
            (self.non_float == NonFloatPolicy::TakeFirst).then(|| "first".to_owned());
        recipe
    }

    /// Writes the soup `recipe` describes over the kitchen's ingredients `members`
    /// (the recipe's ingredients, in order) through the engine, as `soup merge
    /// --recipe` does, so the recipe recorded in its metadata rebuilds it byte for
    /// byte. A final soup may therefore differ from the candidate that was scored
    /// (computed from the running sum) in the last bit of rare elements.
    pub fn write_recipe(
        &self,
        recipe: &Recipe,
        members: &[usize],
        dest: &Destination,
    ) -> Result<MergeReport> {
        let checkpoints: Vec<Checkpoint> =
            members.iter().map(|&m| self.ingredients[m].clone()).collect();
        let run = RunOptions {
            threads: self.threads,
            chunk_elements: self.chunk_elements,
            ..RunOptions::default()
        };
        let base = self.base.as_ref().map(|b| &b.checkpoint);
        let prepared = crate::method::prepare(recipe, &checkpoints, base, &run)?;
        let support =
            self.support_files_from.as_deref().or_else(|| self.ingredients[0].directory());
        let destination = Destination { support_files_from: support, ..dest.clone() };
        write_soup(&prepared.inputs, &prepared.plan, &destination, &run)
    }

    /// Plans and writes one merge of `checkpoints` into `dest`, with the kitchen's
    /// support files, shard size and engine settings.
    fn write(
        &self,
        checkpoints: &[Checkpoint],
        weights: Weights,
        dest: &Destination,
        metadata: std::collections::BTreeMap<String, String>,
        dtype: OutputDtype,
    ) -> Result<MergeReport> {
        let options = PlanOptions {
            mixing: weights.into(),
            dtype,
            max_shard_size: self.max_shard_size,
            non_float: self.non_float,
            metadata,
        };
        let plan = Plan::new(checkpoints, &options)?;
        let support =
            self.support_files_from.as_deref().or_else(|| self.ingredients[0].directory());
        let destination = Destination { support_files_from: support, ..dest.clone() };
        let run = RunOptions {
            threads: self.threads,
            chunk_elements: self.chunk_elements,
            ..RunOptions::default()
        };
        write_soup(checkpoints, &plan, &destination, &run)
    }
}
