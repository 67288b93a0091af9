//! Recipes built slice by slice (mergekit's `slices:`), planned as parts.
//!
//! A model's tensors fall into its embeddings, its numbered blocks
//! (`model.layers.N…`, [`LayerGroup`]) and the rest (final norm, head). A slice
//! takes the blocks `start..end` of each of its models and merges them into
//! the next blocks of the output: block `start + i` of every model becomes
//! output block `offset + i`, where `offset` counts the blocks of the slices
//! before it, and each of its tensors is renamed accordingly
//! (`model.layers.{start + i}.x` → `model.layers.{offset + i}.x`), as mergekit
//! maps them. The embeddings are merged from the first slice's models (with its
//! parameters), the rest from the last slice's, as mergekit's planner does.
//!
//! Each part is an ordinary merge over *views* of the models: the same mapped
//! files, with the part's tensors under their output names. So every method and
//! its statistics passes work unchanged, and the engine writes the parts into
//! one output ([`crate::engine::plan::Plan::from_parts`]). Gradients run over a
//! slice's blocks (block `i` of a slice of `n` at `i / (n − 1)`, 1 for a slice
//! of one), the embeddings and the rest at 0, as in mergekit.

use std::collections::{BTreeMap, HashMap};

use crate::engine::checkpoint::{Checkpoint, TensorEntry};
use crate::engine::layers::LayerGroup;
use crate::recipe::{Ingredient, Parameters, Recipe, Slice};

/// One part of a sliced merge.
pub(super) struct Part {
    /// What it is, for errors: `slice 2`, `the embeddings`.
    pub label: String,
    /// Its ingredients with their own settings.
    pub ingredients: Vec<Ingredient>,
    /// Its base.
    pub base: Option<Ingredient>,
    /// Shared settings: the slice's, then the recipe's.
    pub shared: Vec<Parameters>,
    /// The views: one per ingredient, then the base's.
    pub inputs: Vec<Checkpoint>,
    /// Each output tensor's position for gradients.
    pub positions: BTreeMap<String, f64>,
    /// For each ingredient (and the base, last), its own name of each output
    /// tensor.
    pub source_names: Vec<HashMap<String, String>>,
}

/// The parts of a sliced recipe (embeddings, each slice, the rest; empty parts
/// left out) over the opened models, and the output's number of blocks.
pub(super) fn parts(
    recipe: &Recipe,
    models: &HashMap<&str, &Checkpoint>,
) -> Result<(Vec<Part>, usize), String> {
    if !recipe.ingredients.is_empty() || recipe.base.is_some() {
        return Err("a recipe with slices lists its models in the slices, not as ingredients \
                    or a base"
            .to_owned());
    }
    let (first, last) = match (recipe.slices.first(), recipe.slices.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => return Err("slices: none given".to_owned()),
    };
    for (s, slice) in recipe.slices.iter().enumerate() {
        check_slice(slice, s)?;
    }
    let head = models[first.ingredients[0].path.as_str()];
    let prefix = block_prefix(head)?;
    let mut parts = Vec::new();
    // The embeddings from the first slice's models.
    let embeddings = |t: &TensorEntry| LayerGroup::of(&t.name) == LayerGroup::Embeddings;
    parts.push(whole_part(recipe, first, models, "the embeddings", &embeddings));
    let mut offset = 0;
    for (s, slice) in recipe.slices.iter().enumerate() {
        let part = slice_part(recipe, slice, s, models, &prefix, offset)?;
        offset += length(slice);
        parts.push(part);
    }
    let rest = |t: &TensorEntry| LayerGroup::of(&t.name) == LayerGroup::Rest;
    parts.push(whole_part(recipe, last, models, "the final layers", &rest));
    // Parts with no tensors (a slice of no blocks) write nothing.
    parts.retain(|p| p.inputs.first().is_some_and(|ck| !ck.tensors().is_empty()));
    Ok((parts, offset))
}

/// A slice's number of blocks.
fn length(slice: &Slice) -> usize {
    slice.ingredients[0].layers.map_or(0, |[a, b]| b.saturating_sub(a))
}

/// Every model of a slice has a range of blocks, all of one length.
fn check_slice(slice: &Slice, s: usize) -> Result<(), String> {
    let at = format!("slice {}", s + 1);
    if slice.ingredients.is_empty() {
        return Err(format!("{at}: no ingredients"));
    }
    let mut length = None;
    for m in slice.ingredients.iter().chain(&slice.base) {
        let Some([start, end]) = m.layers else {
            return Err(format!("{at}: {:?} has no range of layers", m.path));
        };
        if end < start {
            return Err(format!(
                "{at}: {:?} has the range {start}..{end}, which ends first",
                m.path
            ));
        }
        match length {
            None => length = Some(end - start),
            Some(n) if n != end - start => {
                return Err(format!(
                    "{at}: every model must give the same number of layers ({:?} gives {}, \
                     another {n})",
                    m.path,
                    end - start
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The one block prefix of a model (`model.layers`): slices renumber one stack
/// of blocks.
fn block_prefix(ck: &Checkpoint) -> Result<String, String> {
    let mut prefixes: Vec<String> = Vec::new();
    for t in ck.tensors() {
        if let LayerGroup::Block { prefix, .. } = LayerGroup::of(&t.name) {
            if !prefixes.contains(&prefix) {
                prefixes.push(prefix);
            }
        }
    }
    match prefixes.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "slices take ranges of numbered blocks (model.layers.N, ...), and {} has none",
            ck.path().display()
        )),
        several => Err(format!(
            "slices take ranges of one stack of blocks, and {} has several ({}); merge whole \
             models instead",
            ck.path().display(),
            several.join(", ")
        )),
    }
}

/// The number of blocks of `ck` under `prefix`.
fn blocks(ck: &Checkpoint, prefix: &str) -> usize {
    ck.tensors()
        .iter()
        .filter_map(|t| match LayerGroup::of(&t.name) {
            LayerGroup::Block { prefix: p, number } if p == prefix => Some(number + 1),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// The part of tensors outside the blocks that `keep` selects, merged from the
/// models of `slice` (with its parameters) under their own names.
fn whole_part(
    recipe: &Recipe,
    slice: &Slice,
    models: &HashMap<&str, &Checkpoint>,
    label: &str,
    keep: &dyn Fn(&TensorEntry) -> bool,
) -> Part {
    let view = |m: &Ingredient| {
        let ck = models[m.path.as_str()];
        ck.with_tensors(ck.tensors().iter().filter(|t| keep(t)).cloned().collect())
    };
    let inputs: Vec<Checkpoint> = slice.ingredients.iter().chain(&slice.base).map(view).collect();
    let names: HashMap<String, String> =
        inputs[0].tensors().iter().map(|t| (t.name.clone(), t.name.clone())).collect();
    let positions = names.keys().map(|n| (n.clone(), 0.0)).collect();
    Part {
        label: label.to_owned(),
        ingredients: slice.ingredients.clone(),
        base: slice.base.clone(),
        shared: vec![slice.parameters.clone(), recipe.parameters.clone()],
        source_names: vec![names; inputs.len()],
        inputs,
        positions,
    }
}

/// Slice `s`: each model's blocks renamed to the output's, from block `offset`.
fn slice_part(
    recipe: &Recipe,
    slice: &Slice,
    s: usize,
    models: &HashMap<&str, &Checkpoint>,
    prefix: &str,
    offset: usize,
) -> Result<Part, String> {
    let n = length(slice);
    let mut inputs = Vec::new();
    let mut source_names = Vec::new();
    for m in slice.ingredients.iter().chain(&slice.base) {
        let ck = models[m.path.as_str()];
        let [start, end] = m.layers.unwrap_or_default();
        let have = blocks(ck, prefix);
        if end > have {
            return Err(format!(
                "slice {}: {:?} has {have} blocks under {prefix}, and the range {start}..{end} \
                 goes past them",
                s + 1,
                m.path
            ));
        }
        let mut entries = Vec::new();
        let mut names = HashMap::new();
        for i in 0..n {
            let from = format!("{prefix}.{}.", start + i);
            let to = format!("{prefix}.{}.", offset + i);
            for t in ck.tensors() {
                if let Some(rest) = t.name.strip_prefix(&from) {
                    let name = format!("{to}{rest}");
                    names.insert(name.clone(), t.name.clone());
                    entries.push(TensorEntry { name, ..t.clone() });
                }
            }
        }
        inputs.push(ck.with_tensors(entries));
        source_names.push(names);
    }
    let mut positions = BTreeMap::new();
    for t in inputs[0].tensors() {
        if let LayerGroup::Block { number, .. } = LayerGroup::of(&t.name) {
            let i = number - offset;
            let at = if n > 1 { i as f64 / (n - 1) as f64 } else { 1.0 };
            positions.insert(t.name.clone(), at);
        }
    }
    Ok(Part {
        label: format!("slice {}", s + 1),
        ingredients: slice.ingredients.clone(),
        base: slice.base.clone(),
        shared: vec![slice.parameters.clone(), recipe.parameters.clone()],
        inputs,
        positions,
        source_names,
    })
}
