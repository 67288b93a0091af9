//! One streaming pass over a base model and k ingredients that accumulates every
//! pairwise dot product of the ingredients' deltas from the base (θᵢ − θ₀), or of
//! their raw weights when there is no base, plus the base's squared norm: the Gram
//! matrix from which angles and relative norms follow (see [`crate::analysis::angles`]).
//!
//! It reads every float tensor once, chunked and threaded like a merge
//! (`stream`): inputs are widened exactly to f64 a tile at a time, the
//! k(k+1)/2 products are summed in f64 (eight lanes per sum, so the loops
//! vectorise), and each chunk's partial sums are added to its group's totals in
//! chunk order, so the result is the same at any thread count (never a parallel
//! float `sum`). Consumed input pages are released as the merge releases them.

use crate::analysis::chunks::{Pass, PassTensor};
use crate::engine::checkpoint::Checkpoint;
use crate::engine::dtype::FloatDtype;
use crate::engine::execute::RunOptions;
use crate::engine::kernel::widen_into;
use crate::engine::plan::check_compatible;
use crate::engine::stream;
use crate::error::{Error, Result};

/// Elements widened per input at a time: k + 1 tiles of f64 (4 KiB each) stay in
/// the L1 cache for k up to about 8, and in L2 beyond.
pub(crate) const TILE: usize = 512;

/// Independent partial sums per dot product: enough for the compiler to fill the
/// vector registers without reassociating (which it never does for floats).
const LANES: usize = 8;

/// The Gram matrix of k vectors (deltas or raw weights) over some set of tensors,
/// and the squared norm of the base over the same tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Gram {
    k: usize,
    /// The upper triangle row by row, `(0,0), (0,1), …, (0,k-1), (1,1), …`, then
    /// the base's squared norm.
    sums: Vec<f64>,
    elements: u64,
    tensors: usize,
}

impl Gram {
    fn new(k: usize) -> Self {
        Gram { k, sums: vec![0.0; k * (k + 1) / 2 + 1], elements: 0, tensors: 0 }
    }

    /// The number of vectors.
    pub fn k(&self) -> usize {
        self.k
    }

    /// `⟨vᵢ, vⱼ⟩`.
    ///
    /// # Panics
    /// If `i` or `j` is not below [`Gram::k`].
    pub fn dot(&self, i: usize, j: usize) -> f64 {
        assert!(i < self.k && j < self.k, "vector index out of range");
        let (i, j) = (i.min(j), i.max(j));
        self.sums[pair_index(self.k, i, j)]
    }

    /// `‖θ₀‖²` of the base (0 without a base).
    pub fn base_norm_sq(&self) -> f64 {
        self.sums[self.sums.len() - 1]
    }

    /// Elements per vector that went into the sums.
    pub fn elements(&self) -> u64 {
        self.elements
    }

    /// Tensors that went into the sums.
    pub fn tensors(&self) -> usize {
        self.tensors
    }

    fn add(&mut self, partial: &[f64], elements: u64) {
        for (s, p) in self.sums.iter_mut().zip(partial) {
            *s += p;
        }
        self.elements += elements;
    }
}

/// Position of `(i, j)`, `i <= j`, in the packed upper triangle of a k × k matrix.
fn pair_index(k: usize, i: usize, j: usize) -> usize {
    // Rows before i hold k, k − 1, …, k − i + 1 entries.
    i * (2 * k + 1 - i) / 2 + (j - i)
}

/// The result of [`gram_pass`]: the whole model's Gram matrix and one per group.
#[derive(Debug, Clone, PartialEq)]
pub struct GramReport {
    /// Over every float tensor.
    pub total: Gram,
    /// Over the tensors of each group, in group order.
    pub groups: Vec<Gram>,
}

/// Streams every float tensor of `base` (if any) and `ingredients` once and
/// returns the Gram matrices of the deltas `θᵢ − θ₀` (or of the raw weights `θᵢ`
/// without a base), for the whole model and for each of `groups` groups, where
/// `group_of` puts a tensor (by name) in one group or none. Tensors that are not
/// floats (integers, bool) are skipped. `run.progress` is told the bytes read per
/// chunk.
pub fn gram_pass(
    base: Option<&Checkpoint>,
    ingredients: &[Checkpoint],
    groups: usize,
    group_of: &dyn Fn(&str) -> Option<usize>,
    run: &RunOptions,
) -> Result<GramReport> {
    let first = ingredients.first().ok_or(Error::NoIngredients)?;
    let inputs: Vec<&Checkpoint> = base.into_iter().chain(ingredients).collect();
    let all: Vec<Checkpoint> = inputs.iter().map(|c| (*c).clone()).collect();
    check_compatible(&all)?;
    let k = ingredients.len();
    let mut tensors = Vec::new();
    for entry in first.tensors() {
        if FloatDtype::from_safetensors(entry.dtype).is_none() {
            continue;
        }
        // check_compatible proved every input has the tensor, as a float.
        let sources = inputs
            .iter()
            .filter_map(|ck| {
                let i = ck.position(&entry.name)?;
                Some((FloatDtype::from_safetensors(ck.tensors()[i].dtype)?, i))
            })
            .collect::<Vec<_>>();
        debug_assert_eq!(sources.len(), inputs.len());
        let group = group_of(&entry.name).filter(|&g| g < groups);
        let name = entry.name.clone();
        tensors.push(PassTensor { name, numel: entry.numel(), group, sources });
    }
    let pass = Pass::new(inputs, tensors, run.chunk_elements);
    let mut report = GramReport { total: Gram::new(k), groups: vec![Gram::new(k); groups] };
    for t in &pass.tensors {
        report.total.tensors += 1;
        if let Some(g) = t.group {
            report.groups[g].tensors += 1;
        }
    }
    let has_base = base.is_some();
    let in_order = |i: usize, partial: Vec<f64>| {
        let chunk = pass.chunks[i];
        report.total.add(&partial, chunk.len as u64);
        if let Some(g) = pass.tensors[chunk.tensor].group {
            report.groups[g].add(&partial, chunk.len as u64);
        }
    };
    stream::run(
        run.threads,
        pass.chunks.len(),
        run.cancel,
        pass.watched(),
        || vec![vec![0.0; TILE]; pass.inputs()],
        |i, tiles| {
            let read = pass.read(i);
            let bytes: Vec<(FloatDtype, &[u8])> = read.iter().map(|(d, b)| (*d, &**b)).collect();
            let mut partial = vec![0.0; k * (k + 1) / 2 + 1];
            chunk_sums(&bytes, has_base, tiles, &mut partial);
            if let Some(progress) = run.progress {
                progress(bytes.iter().map(|(_, b)| b.len() as u64).sum());
            }
            Ok(partial)
        },
        in_order,
        |range| pass.release(range),
    )?;
    Ok(report)
}

/// The sums of one chunk, compiled once per instruction set.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
    "x86_64+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
    "x86_64+sse4.2+popcnt",
))]
fn chunk_sums(
    inputs: &[(FloatDtype, &[u8])],
    has_base: bool,
    tiles: &mut [Vec<f64>],
    partial: &mut [f64],
) {
    sums(inputs, has_base, tiles, partial);
}

/// The body of [`chunk_sums`]: tile by tile, widen every input, subtract the base
/// from the ingredients, and add the tile's dot products to `partial`.
#[inline(always)]
fn sums(
    inputs: &[(FloatDtype, &[u8])],
    has_base: bool,
    tiles: &mut [Vec<f64>],
    partial: &mut [f64],
) {
    let len = inputs.first().map_or(0, |(d, b)| b.len() / d.size());
    let Some((base_sq, pairs)) = partial.split_last_mut() else { return };
    for start in (0..len).step_by(TILE) {
        let n = TILE.min(len - start);
        for ((dtype, bytes), tile) in inputs.iter().zip(tiles.iter_mut()) {
            let size = dtype.size();
            widen_into(*dtype, &bytes[start * size..(start + n) * size], &mut tile[..n]);
        }
        let vectors: &mut [Vec<f64>] = if has_base {
            let (base, rest) = tiles.split_at_mut(1);
            let base = &base[0][..n];
            *base_sq += dot(base, base);
            for v in rest.iter_mut() {
                for (x, b) in v[..n].iter_mut().zip(base) {
                    *x -= b;
                }
            }
            rest
        } else {
            tiles
        };
        let mut p = 0;
        for i in 0..vectors.len() {
            for j in i..vectors.len() {
                pairs[p] += dot(&vectors[i][..n], &vectors[j][..n]);
                p += 1;
            }
        }
    }
}

/// `Σ aᵢ·bᵢ` in f64 with [`LANES`] running sums, added up in a fixed order (also
/// the gradient pass's, `crate::analysis::gradient`).
#[inline(always)]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0.0; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_packed_row_by_row() {
        let k = 4;
        let mut expected = 0;
        for i in 0..k {
            for j in i..k {
                assert_eq!(pair_index(k, i, j), expected, "({i}, {j})");
                expected += 1;
            }
        }
    }

    #[test]
    fn dot_matches_a_plain_sum() {
        let a: Vec<f64> = (0..37).map(|i| i as f64 * 0.5).collect();
        let b: Vec<f64> = (0..37).map(|i| 3.0 - i as f64).collect();
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(dot(&a, &b), plain); // integers and halves: exact either way
    }
}
