//! Planning a merge from headers alone: which tensors, from where, with which
//! weights, into which output shard at which offset, under which header bytes.
//!
//! Nothing here reads tensor data. A [`Plan`] is complete before the first byte
//! moves, so output files can be created at their final size and every chunk
//! written at its final offset, in any order, by any thread.

use std::collections::{BTreeMap, HashMap};

use safetensors::Dtype;
use serde::Serialize;

use crate::engine::checkpoint::{Checkpoint, TensorEntry};
use crate::engine::dtype::FloatDtype;
use crate::engine::task_vectors::TaskParams;
use crate::error::{Difference, Error, Result};

/// What to do with tensors that are not averaged (integers, bool, 8-bit floats)
/// when ingredients disagree on their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonFloatPolicy {
    /// Refuse to merge: such tensors (`position_ids`, masks) must be identical.
    #[default]
    RequireEqual,
    /// Copy the first ingredient's bytes without comparing.
    TakeFirst,
}

/// Chooses one coefficient per ingredient for a tensor, given its name.
pub type TensorWeightFn = Box<dyn Fn(&str) -> Vec<f64> + Send + Sync>;

/// The mixing weights of a merge: one coefficient per ingredient, possibly
/// different for every tensor (layer-wise soups).
pub enum Weights {
    /// The same coefficients for every tensor.
    Global(Vec<f64>),
    /// Coefficients chosen per tensor name.
    PerTensor(TensorWeightFn),
}

impl Weights {
    /// Equal weights `1/k` for `k` ingredients: the uniform soup.
    pub fn uniform(k: usize) -> Self {
        Weights::Global(vec![1.0 / k as f64; k])
    }

    fn for_tensor(&self, name: &str) -> Vec<f64> {
        match self {
            Weights::Global(w) => w.clone(),
            Weights::PerTensor(f) => f(name),
        }
    }
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Weights::Global(w) => f.debug_tuple("Global").field(w).finish(),
            Weights::PerTensor(_) => f.write_str("PerTensor(..)"),
        }
    }
}

/// How the float tensors of the inputs combine into the output's.
#[derive(Debug)]
pub enum Mixing {
    /// `Σ wᵢ·xᵢ`: every soup, task arithmetic, SLERP and Model Stock once their
    /// per-tensor coefficients are known.
    Linear(Weights),
    /// Sparsified task vectors with sign election (TIES, DARE).
    TaskVectors(TaskVectors),
}

impl From<Weights> for Mixing {
    fn from(weights: Weights) -> Self {
        Mixing::Linear(weights)
    }
}

/// Chooses the task-vector parameters of a tensor, given its name.
pub type TaskParamsFn = Box<dyn Fn(&str) -> TaskParams + Send + Sync>;

/// A merge of task vectors `xᵢ − x_base` (see [`crate::engine::task_vectors`]).
pub struct TaskVectors {
    /// Index of the base model among the inputs.
    pub base: usize,
    /// The parameters of each tensor.
    pub params: TaskParamsFn,
}

impl std::fmt::Debug for TaskVectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskVectors").field("base", &self.base).finish_non_exhaustive()
    }
}

/// The dtype of averaged tensors in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputDtype {
    /// Each tensor keeps its dtype in the ingredient at this index.
    Like(usize),
    /// Every averaged tensor is written in this format.
    Force(FloatDtype),
    /// f32 where every input is 16-bit, f64 where any is f32 or f64: wide enough
    /// that the sums kept by soup searches lose nothing the output would show.
    Wide,
}

impl Default for OutputDtype {
    /// Each tensor keeps its dtype in the first ingredient.
    fn default() -> Self {
        OutputDtype::Like(0)
    }
}

/// Everything that decides the output besides the ingredients themselves.
#[derive(Debug)]
pub struct PlanOptions {
    /// How float tensors combine; linear weights are used as given (normalising
    /// is the caller's choice).
    pub mixing: Mixing,
    /// Output dtype of averaged tensors.
    pub dtype: OutputDtype,
    /// Largest output shard in bytes before the output is split (a tensor larger
    /// than this gets a shard of its own).
    pub max_shard_size: u64,
    /// Handling of tensors that are copied rather than averaged.
    pub non_float: NonFloatPolicy,
    /// Extra `__metadata__` entries for every output file; `"format": "pt"` is
    /// always added.
    pub metadata: BTreeMap<String, String>,
}

/// Default `max_shard_size`: 5 GB, as `transformers` uses.
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;

/// How an output tensor is produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Produce {
    /// `(Σ wᵢ·xᵢ) / divisor`, narrowed to `dtype`. Ingredients with weight 0 are
    /// not read.
    Average {
        /// Output format.
        dtype: FloatDtype,
        /// Each ingredient's format for this tensor.
        inputs: Vec<FloatDtype>,
        /// One weight per ingredient: the weights asked for, or, when those are
        /// exactly integers over a common count `kᵢ/d`, the integers `kᵢ`.
        weights: Vec<f64>,
        /// 1, or the common count `d` (see [`as_fractions`]).
        divisor: f64,
    },
    /// `x_base + λ·merge(sparsified task vectors)`, narrowed to `dtype`.
    TaskVectors {
        /// Output format.
        dtype: FloatDtype,
        /// Each input's format for this tensor.
        inputs: Vec<FloatDtype>,
        /// Index of the base among the inputs.
        base: usize,
        /// The tensor's parameters.
        params: TaskParams,
    },
    /// The first ingredient's bytes, verified equal in the others when `verify`.
    Copy {
        /// Compare every ingredient's bytes with the first's.
        verify: bool,
    },
}

/// One output tensor.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// Name.
    pub name: String,
    /// Output safetensors dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Element count.
    pub numel: usize,
    /// How it is computed.
    pub produce: Produce,
    /// Output shard index in [`Plan::shards`].
    pub shard: usize,
    /// Absolute byte offset in the output shard file.
    pub offset: u64,
    /// Byte length in the output.
    pub len: u64,
    /// For each ingredient it draws from, the index of this tensor in its
    /// [`Checkpoint::tensors`].
    pub sources: Vec<usize>,
    /// The index among the plan's inputs of the first ingredient it draws from:
    /// it reads inputs `first_input..first_input + sources.len()`, and the
    /// per-input vectors of `produce` count from there (0 but in plans made of
    /// parts, [`Plan::from_parts`]).
    pub first_input: usize,
}

/// One output file.
#[derive(Debug, Clone)]
pub struct PlannedShard {
    /// File name inside the output directory.
    pub file_name: String,
    /// The complete header: 8-byte length, JSON, space padding to 8 bytes.
    pub header: Vec<u8>,
    /// Final file size.
    pub size: u64,
    /// Range of tensor indices (in [`Plan::tensors`]) stored here.
    pub tensors: std::ops::Range<usize>,
}

/// A complete merge plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Output tensors in output order.
    pub tensors: Vec<PlannedTensor>,
    /// Output files.
    pub shards: Vec<PlannedShard>,
}

impl Plan {
    /// Checks that the ingredients can be merged and lays out the output.
    pub fn new(ingredients: &[Checkpoint], options: &PlanOptions) -> Result<Plan> {
        let first = ingredients.first().ok_or(Error::NoIngredients)?;
        check_compatible(ingredients)?;
        let mut tensors = Vec::with_capacity(first.tensors().len());
        for entry in first.tensors() {
            tensors.push(plan_tensor(entry, ingredients, options)?);
        }
        let shards = assign_shards(&mut tensors, options)?;
        Ok(Plan { tensors, shards })
    }

    /// A plan made of several merges over different inputs, their tensors in
    /// the order of the parts (each part's in its first input's order): the
    /// output of a merge built slice by slice, where each slice merges its own
    /// views of the models. Each part's inputs must be compatible among
    /// themselves and mixed by its own `mixing`; `options.mixing` is not used.
    /// Returns the plan's inputs, every part's in turn, and the plan. A tensor
    /// name given by two parts is an error.
    pub fn from_parts(
        parts: Vec<(Vec<Checkpoint>, Mixing)>,
        options: &PlanOptions,
    ) -> Result<(Vec<Checkpoint>, Plan)> {
        let mut inputs: Vec<Checkpoint> = Vec::new();
        let mut tensors: Vec<PlannedTensor> = Vec::new();
        let mut seen: HashMap<String, ()> = HashMap::new();
        for (part_inputs, mixing) in parts {
            let first = part_inputs.first().ok_or(Error::NoIngredients)?;
            check_compatible(&part_inputs)?;
            let part_options = PlanOptions {
                mixing,
                dtype: options.dtype,
                max_shard_size: options.max_shard_size,
                non_float: options.non_float,
                metadata: BTreeMap::new(),
            };
            for entry in first.tensors() {
                if seen.insert(entry.name.clone(), ()).is_some() {
                    return Err(Error::DuplicateTensor {
                        tensor: entry.name.clone(),
                        first: first.path().to_path_buf(),
                        second: first.path().to_path_buf(),
                    });
                }
                let mut t = plan_tensor(entry, &part_inputs, &part_options)?;
                t.first_input = inputs.len();
                tensors.push(t);
            }
            inputs.extend(part_inputs);
        }
        let shards = assign_shards(&mut tensors, options)?;
        Ok((inputs, Plan { tensors, shards }))
    }

    /// Total bytes of tensor data in the output.
    pub fn output_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.len).sum()
    }

    /// Total number of parameters (elements) in the output.
    pub fn parameters(&self) -> u64 {
        self.tensors.iter().map(|t| t.numel as u64).sum()
    }

    /// Total bytes that will be read from the ingredients.
    pub fn input_bytes(&self, ingredients: &[Checkpoint]) -> u64 {
        let mut total = 0;
        for t in &self.tensors {
            let drawn = ingredients.get(t.first_input..).unwrap_or_default();
            for (i, (ck, &src)) in drawn.iter().zip(&t.sources).enumerate() {
                let read = match &t.produce {
                    Produce::Average { weights, .. } => weights[i] != 0.0,
                    Produce::TaskVectors { base, params, .. } => params.reads(i, *base),
                    Produce::Copy { verify } => i == 0 || *verify,
                };
                if read {
                    let entry = &ck.tensors()[src];
                    total += ck.span(entry, 0, entry.len).1.len() as u64;
                }
            }
        }
        total
    }
}

/// Lists every way the ingredients differ in names, shapes and kinds of dtype.
pub fn check_compatible(ingredients: &[Checkpoint]) -> Result<()> {
    let mut differences = Vec::new();
    // Union of names in first-seen order, so the report follows the model's layout.
    let mut order: Vec<&str> = Vec::new();
    let mut seen: HashMap<&str, ()> = HashMap::new();
    for ck in ingredients {
        for t in ck.tensors() {
            if seen.insert(&t.name, ()).is_none() {
                order.push(&t.name);
            }
        }
    }
    for name in order {
        let found: Vec<(&Checkpoint, &TensorEntry)> =
            ingredients.iter().filter_map(|ck| ck.get(name).map(|t| (ck, t))).collect();
        let (ref_ck, ref_t) = found[0];
        if found.len() < ingredients.len() {
            differences.push(Difference::Missing {
                tensor: name.to_owned(),
                missing_in: ingredients
                    .iter()
                    .filter(|ck| ck.get(name).is_none())
                    .map(|ck| ck.path().to_path_buf())
                    .collect(),
                present_in: ref_ck.path().to_path_buf(),
            });
        }
        if let Some((ck, t)) = found.iter().find(|(_, t)| t.shape != ref_t.shape) {
            differences.push(Difference::Shape {
                tensor: name.to_owned(),
                first: (ref_ck.path().to_path_buf(), ref_t.shape.clone()),
                other: (ck.path().to_path_buf(), t.shape.clone()),
            });
        }
        if let Some((ck, t)) = found.iter().find(|(_, t)| !same_kind(t.dtype, ref_t.dtype)) {
            differences.push(Difference::Dtype {
                tensor: name.to_owned(),
                first: (ref_ck.path().to_path_buf(), format!("{:?}", ref_t.dtype)),
                other: (ck.path().to_path_buf(), format!("{:?}", t.dtype)),
            });
        }
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(Error::Incompatible(differences))
    }
}

/// Floats of any averaged width mix freely; anything else must match exactly.
fn same_kind(a: Dtype, b: Dtype) -> bool {
    match (FloatDtype::from_safetensors(a), FloatDtype::from_safetensors(b)) {
        (Some(_), Some(_)) => true,
        (None, None) => a == b,
        _ => false,
    }
}

fn plan_tensor(
    entry: &TensorEntry,
    ingredients: &[Checkpoint],
    options: &PlanOptions,
) -> Result<PlannedTensor> {
    // check_compatible proved that every ingredient has the tensor.
    let sources: Vec<usize> =
        ingredients.iter().filter_map(|ck| ck.position(&entry.name)).collect();
    debug_assert_eq!(sources.len(), ingredients.len());
    let numel = entry.numel();
    let (dtype, produce, len) = match FloatDtype::from_safetensors(entry.dtype) {
        Some(own) => {
            // check_compatible proved the tensor is a float in every ingredient.
            let inputs = ingredients
                .iter()
                .zip(&sources)
                .filter_map(|(ck, &i)| FloatDtype::from_safetensors(ck.tensors()[i].dtype))
                .collect::<Vec<_>>();
            let out = match options.dtype {
                OutputDtype::Force(d) => d,
                // A computed tensor (a LoRA-adapted matrix) is read as F64 but
                // written, by default, as the matrix it starts from is stored.
                OutputDtype::Like(i) => ingredients
                    .get(i)
                    .zip(sources.get(i))
                    .and_then(|(ck, &s)| {
                        FloatDtype::from_safetensors(ck.declared_dtype(&ck.tensors()[s]))
                    })
                    .unwrap_or(own),
                OutputDtype::Wide if inputs.iter().all(|d| d.size() <= 2) => FloatDtype::F32,
                OutputDtype::Wide => FloatDtype::F64,
            };
            let len = numel
                .checked_mul(out.size())
                .ok_or_else(|| Error::SizeOverflow { tensor: entry.name.clone() })?;
            let produce = match &options.mixing {
                Mixing::Linear(weights) => {
                    let weights = weights.for_tensor(&entry.name);
                    check_weights(&weights, ingredients.len(), &entry.name)?;
                    let (weights, divisor) = as_fractions(&weights).unwrap_or((weights, 1.0));
                    Produce::Average { dtype: out, inputs, weights, divisor }
                }
                Mixing::TaskVectors(tv) => {
                    let params = (tv.params)(&entry.name);
                    check_weights(&params.weights, ingredients.len(), &entry.name)?;
                    Produce::TaskVectors { dtype: out, inputs, base: tv.base, params }
                }
            };
            (out.to_safetensors(), produce, len)
        }
        None => {
            let verify = options.non_float == NonFloatPolicy::RequireEqual;
            (entry.dtype, Produce::Copy { verify }, entry.len)
        }
    };
    let len = u64::try_from(len).map_err(|_| Error::SizeOverflow { tensor: entry.name.clone() })?;
    Ok(PlannedTensor {
        name: entry.name.clone(),
        dtype,
        shape: entry.shape.clone(),
        numel,
        produce,
        shard: 0,
        offset: 0,
        len,
        sources,
        first_input: 0,
    })
}

/// Checks that there is one finite weight per input.
fn check_weights(weights: &[f64], inputs: usize, tensor: &str) -> Result<()> {
    if weights.len() != inputs {
        return Err(Error::WeightCount { expected: inputs, got: weights.len() });
    }
    if let Some((i, &w)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite()) {
        return Err(Error::NonFiniteWeight { tensor: tensor.to_owned(), ingredient: i, value: w });
    }
    Ok(())
}

/// The largest common count [`as_fractions`] looks for. Weights over larger
/// counts are used as given; `Σ kᵢ·xᵢ` stays exact in f64 for f32 inputs only
/// while `kᵢ` is small.
const MAX_DENOMINATOR: u64 = 1 << 12;

/// `(kᵢ, d)` with integers `kᵢ` and a count `d` (3 ≤ d ≤ 4096, the least one)
/// such that every weight is the double nearest to `kᵢ/d`, when there are such:
/// equal weights `1/n` (a uniform soup) give `(1, …, 1; n)`, `0.4, 0.2, 0.4` give
/// `(2, 1, 2; 5)`. The kernel then computes `(Σ kᵢ·xᵢ) / d`, whose one division
/// makes a uniform soup the correctly rounded mean, where `Σ fl(1/n)·xᵢ` is off
/// at ties. `None` for weights that are not such fractions, and where `d` is a
/// power of two (1 included): such weights are exact doubles already.
pub fn as_fractions(weights: &[f64]) -> Option<(Vec<f64>, f64)> {
    let mut d = 1u64;
    for &w in weights {
        let q = denominator(w)?;
        d = d / gcd(d, q) * q;
        if d > MAX_DENOMINATOR {
            return None;
        }
    }
    // Over a power of two the weights are exact doubles already, and `Σ wᵢ·xᵢ` is
    // the same sum scaled exactly: no division needed.
    if d.is_power_of_two() {
        return None;
    }
    let df = d as f64;
    let k: Vec<f64> = weights.iter().map(|w| (w * df).round()).collect();
    k.iter()
        .zip(weights)
        .all(|(k, &w)| k / df == w && k.abs() <= df * 2f64.powi(20))
        .then_some((k, df))
}

/// The least `q ≤ MAX_DENOMINATOR` with `w` the double nearest to some `p/q`, found
/// among the continued-fraction convergents of `w` (which include every best
/// approximation).
fn denominator(w: f64) -> Option<u64> {
    if w == w.trunc() {
        return Some(1);
    }
    let (mut h0, mut h1, mut k0, mut k1) = (0f64, 1f64, 1u64, 0u64);
    let mut x = w.abs();
    for _ in 0..64 {
        let a = x.floor();
        let (h, k) = (a * h1 + h0, (a as u64).checked_mul(k1)?.checked_add(k0)?);
        if k > MAX_DENOMINATOR {
            return None;
        }
        if h / k as f64 == w.abs() {
            return Some(k);
        }
        (h0, h1, k0, k1) = (h1, h, k1, k);
        let frac = x - a;
        if frac == 0.0 {
            return None;
        }
        x = 1.0 / frac;
    }
    None
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Splits the tensors into output shards of at most `max_shard_size` data bytes,
/// orders each shard's tensors so every tensor is aligned to its element size, and
/// writes each shard's header.
fn assign_shards(
    tensors: &mut Vec<PlannedTensor>,
    options: &PlanOptions,
) -> Result<Vec<PlannedShard>> {
    // Greedy packing in model order, as transformers does.
    let mut groups: Vec<Vec<PlannedTensor>> = Vec::new();
    let mut current: Vec<PlannedTensor> = Vec::new();
    let mut current_bytes = 0u64;
    for t in tensors.drain(..) {
        if !current.is_empty() && current_bytes.saturating_add(t.len) > options.max_shard_size {
            groups.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes = current_bytes.saturating_add(t.len);
        current.push(t);
    }
    if !current.is_empty() || groups.is_empty() {
        groups.push(current);
    }

    let n = groups.len();
    let mut shards = Vec::with_capacity(n);
    for (shard_no, mut group) in groups.into_iter().enumerate() {
        // Widest elements first: each dtype group's byte length is a multiple of its
        // element size, so every tensor starts aligned (readers can view in place).
        group.sort_by_key(|t| std::cmp::Reverse(t.dtype.bitsize()));
        let file_name = if n == 1 {
            crate::engine::checkpoint::SINGLE_FILE.to_owned()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", shard_no + 1, n)
        };
        let header = encode_header(&group, &options.metadata)?;
        let mut offset = header.len() as u64;
        let first = tensors.len();
        for mut t in group {
            t.shard = shard_no;
            t.offset = offset;
            offset = offset
                .checked_add(t.len)
                .ok_or_else(|| Error::SizeOverflow { tensor: t.name.clone() })?;
            tensors.push(t);
        }
        shards.push(PlannedShard {
            file_name,
            header,
            size: offset,
            tensors: first..tensors.len(),
        });
    }
    Ok(shards)
}

#[derive(Serialize)]
struct HeaderTensor<'a> {
    // Fields in sorted order, as a JSON map of them would have them.
    data_offsets: (u64, u64),
    dtype: Dtype,
    shape: &'a [usize],
}

/// One entry of a header: the metadata, or a tensor.
enum HeaderEntry<'a> {
    Metadata(&'a BTreeMap<String, String>),
    Tensor(HeaderTensor<'a>),
}

impl Serialize for HeaderEntry<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            HeaderEntry::Metadata(m) => m.serialize(s),
            HeaderEntry::Tensor(t) => t.serialize(s),
        }
    }
}

/// A header's JSON object, written straight from the plan: keys in sorted order
/// (the order a JSON map gives, so the bytes are those of earlier versions)
/// without building a JSON value per tensor.
struct HeaderJson<'a> {
    /// Keys in sorted order, each with its entry's index (`None`: the metadata).
    keys: Vec<(&'a str, Option<usize>)>,
    tensors: &'a [PlannedTensor],
    starts: Vec<u64>,
    metadata: &'a BTreeMap<String, String>,
}

impl Serialize for HeaderJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.keys.iter().map(|&(key, entry)| {
            let value = match entry {
                None => HeaderEntry::Metadata(self.metadata),
                Some(i) => {
                    let t = &self.tensors[i];
                    let start = self.starts[i];
                    HeaderEntry::Tensor(HeaderTensor {
                        dtype: t.dtype,
                        shape: &t.shape,
                        data_offsets: (start, start + t.len),
                    })
                }
            };
            (key, value)
        }))
    }
}

/// The safetensors header for tensors laid out back to back in the given order:
/// little-endian length, JSON, spaces up to a multiple of 8 bytes.
fn encode_header(tensors: &[PlannedTensor], extra: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut metadata = extra.clone();
    metadata.insert("format".to_owned(), "pt".to_owned());
    let mut starts = Vec::with_capacity(tensors.len());
    let mut start = 0u64;
    for t in tensors {
        starts.push(start);
        start += t.len;
    }
    let mut keys: Vec<(&str, Option<usize>)> =
        tensors.iter().enumerate().map(|(i, t)| (t.name.as_str(), Some(i))).collect();
    keys.push(("__metadata__", None));
    keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let json = HeaderJson { keys, tensors, starts, metadata: &metadata };
    // The length prefix is filled in once the JSON is written after it.
    let mut header = vec![0u8; 8];
    serde_json::to_writer(&mut header, &json).map_err(Error::Json)?;
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let len = (header.len() - 8) as u64;
    header[..8].copy_from_slice(&len.to_le_bytes());
    Ok(header)
}

/// The names of the tensors that go to each file, for `model.safetensors.index.json`.
#[derive(Debug, Serialize)]
pub struct IndexJson {
    /// `total_size`: bytes of tensor data across all shards.
    pub metadata: BTreeMap<String, u64>,
    /// Tensor name → shard file name.
    pub weight_map: BTreeMap<String, String>,
}

impl Plan {
    /// The shard index, when the output has more than one file.
    pub fn index(&self) -> Option<IndexJson> {
        if self.shards.len() < 2 {
            return None;
        }
        let weight_map = self
            .tensors
            .iter()
            .map(|t| (t.name.clone(), self.shards[t.shard].file_name.clone()))
            .collect();
        let metadata = BTreeMap::from([("total_size".to_owned(), self.output_bytes())]);
        Some(IndexJson { metadata, weight_map })
    }
}
