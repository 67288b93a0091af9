//! The per-chunk reducer of the task-vector methods (TIES, DARE): from the base
//! `b` and the inputs `xᵢ`, the task vectors `δᵢ = xᵢ − b` are sparsified
//! (largest magnitudes, or a random mask), weighted, optionally reduced to the
//! entries that agree with an elected sign, summed, normalised, scaled by λ and
//! added back to the base:
//!
//! ```text
//! δ̃ᵢ = wᵢ · sparsify(xᵢ − b)
//! s   = sign(Σᵢ δ̃ᵢ)  (+ when the sum is 0)          — with sign election
//! mᵢ  = [sign(δ̃ᵢ) = s]                               — else mᵢ = 1
//! out = b + λ · (Σᵢ mᵢ·δ̃ᵢ) / D,   D = Σᵢ mᵢ·wᵢ (1 where that is 0)
//! ```
//!
//! (`/ D` only when normalising; without sign election `D = Σᵢ wᵢ`, 1 where
//! `|D| < 10⁻⁸`.) This is mergekit's generalised task arithmetic, so its TIES and
//! DARE configurations mean the same here. Everything is computed in f64 in a
//! fixed order per element — inputs in input order — and rounded once to the
//! output format, so the result depends on nothing but the inputs and the
//! parameters. An element's fate in the sparsification depends on its global
//! index, never on the chunk it falls in.

use crate::engine::dropout::DropMask;
use crate::engine::dtype::FloatDtype;
use crate::engine::kernel::{narrow_into, widen_into};

/// Elements widened per input at a time.
const TILE: usize = 512;

/// Which entries of one input's task vector survive sparsification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Every entry.
    All,
    /// No entry: the input is not read.
    Nothing,
    /// Entries whose magnitude `|δ|`, as the bits of an f64, is above
    /// `threshold`, and those equal to it up to index `last_tie` (row-major):
    /// exactly the `k` largest magnitudes, ties broken by position.
    Above {
        /// The bits of the smallest magnitude kept.
        threshold: u64,
        /// The last index at which an entry of magnitude `threshold` is kept.
        last_tie: u64,
    },
}

impl Keep {
    #[inline(always)]
    fn keeps(self, delta: f64, index: u64) -> bool {
        match self {
            Keep::All => true,
            Keep::Nothing => false,
            Keep::Above { threshold, last_tie } => {
                let key = delta.abs().to_bits();
                key > threshold || (key == threshold && index <= last_tie)
            }
        }
    }
}

/// How each input's task vector is sparsified.
#[derive(Debug, Clone, PartialEq)]
pub enum Sparsify {
    /// Not at all (task arithmetic).
    None,
    /// By magnitude, one rule per input (TIES); the base's is ignored.
    Magnitude(Vec<Keep>),
    /// By a random mask per input (DARE); the base's is ignored. Survivors are
    /// divided by their input's density when `rescale`.
    Random {
        /// One mask per input (`None`: keep everything).
        masks: Vec<Option<DropMask>>,
        /// Each input's density.
        densities: Vec<f64>,
        /// Divide survivors by the density.
        rescale: bool,
    },
}

/// The parameters of one tensor of a task-vector merge.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskParams {
    /// One weight per input (the base's is ignored).
    pub weights: Vec<f64>,
    /// Scale of the merged task vector.
    pub lambda: f64,
    /// Divide by the sum of the (agreeing) weights.
    pub normalize: bool,
    /// Keep only the entries whose sign agrees with the sign of their sum.
    pub elect_sign: bool,
    /// Sparsification of each task vector.
    pub sparsify: Sparsify,
}

impl TaskParams {
    /// Whether input `i` must be read: the base always; another input when it can
    /// contribute (non-zero weight, not sparsified away entirely).
    pub fn reads(&self, i: usize, base: usize) -> bool {
        if i == base {
            return true;
        }
        let kept = match &self.sparsify {
            Sparsify::Magnitude(keep) => keep[i] != Keep::Nothing,
            Sparsify::Random { densities, .. } => densities[i] > 0.0,
            Sparsify::None => true,
        };
        self.weights[i] != 0.0 && kept
    }
}

/// A worker's reusable f64 tiles.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    base: Vec<f64>,
    deltas: Vec<Vec<f64>>,
}

/// Combines the `len` elements starting at element `first` of a tensor (`span`
/// is `(first, len)`). `inputs[i]`
/// holds input `i`'s bytes for the chunk, or `None` when [`TaskParams::reads`]
/// says it is not read; the base must be present. The result, rounded to `dtype`,
/// replaces `out`; returns how many of its values are NaN or infinite.
///
/// # Panics
/// If the base is missing or an input's byte length is not `len` elements.
pub(crate) fn combine(
    (first, len): (u64, usize),
    inputs: &[Option<(FloatDtype, &[u8])>],
    base: usize,
    params: &TaskParams,
    dtype: FloatDtype,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> usize {
    let (base_dtype, base_bytes) = inputs[base].expect("the base is always read");
    let read: Vec<usize> =
        (0..inputs.len()).filter(|&i| i != base && inputs[i].is_some()).collect();
    scratch.base.resize(TILE, 0.0);
    scratch.deltas.resize_with(read.len(), Vec::new);
    out.resize(len * dtype.size(), 0);
    let mut result = [0.0f64; TILE];
    let mut non_finite = 0;
    // Σ wᵢ over every input but the base, in input order.
    let total_weight =
        params.weights.iter().enumerate().filter(|&(i, _)| i != base).fold(0.0, |s, (_, &w)| s + w);
    for start in (0..len).step_by(TILE) {
        let n = TILE.min(len - start);
        let size = base_dtype.size();
        let b = &mut scratch.base[..n];
        widen_into(base_dtype, &base_bytes[start * size..(start + n) * size], b);
        for (&i, d) in read.iter().zip(scratch.deltas.iter_mut()) {
            let (dt, bytes) = inputs[i].expect("listed inputs are read");
            d.resize(TILE, 0.0);
            let d = &mut d[..n];
            widen_into(dt, &bytes[start * dt.size()..(start + n) * dt.size()], d);
            let at = first + start as u64;
            sparsify_weighted(d, b, i, at, params);
        }
        for j in 0..n {
            result[j] = element(j, b[j], &read, &scratch.deltas, total_weight, params);
        }
        let o = dtype.size();
        non_finite += narrow_into(dtype, &result[..n], &mut out[start * o..(start + n) * o]);
    }
    non_finite
}

/// Turns input `i`'s widened values `d` into its weighted, sparsified task vector
/// in place; `at` is the global index of `d[0]`.
#[inline(always)]
fn sparsify_weighted(d: &mut [f64], b: &[f64], i: usize, at: u64, params: &TaskParams) {
    let w = params.weights[i];
    for (j, (x, &base)) in d.iter_mut().zip(b).enumerate() {
        let delta = *x - base;
        let index = at + j as u64;
        let kept = match &params.sparsify {
            Sparsify::None => delta,
            Sparsify::Magnitude(keep) => {
                if keep[i].keeps(delta, index) {
                    delta
                } else {
                    0.0
                }
            }
            Sparsify::Random { masks, densities, rescale } => match masks[i] {
                Some(mask) if !mask.keeps(index) => 0.0,
                Some(_) if *rescale => delta / densities[i],
                _ => delta,
            },
        };
        *x = w * kept;
    }
}

/// One output element from the base value and the weighted task vectors.
#[inline(always)]
fn element(
    j: usize,
    base: f64,
    read: &[usize],
    deltas: &[Vec<f64>],
    total_weight: f64,
    params: &TaskParams,
) -> f64 {
    let (mut mixed, mut divisor) = (0.0f64, 0.0f64);
    if params.elect_sign {
        let total: f64 = deltas.iter().fold(0.0, |s, d| s + d[j]);
        let elected = if total >= 0.0 { 1.0 } else { -1.0 };
        for (&i, d) in read.iter().zip(deltas) {
            let x = d[j];
            let sign = if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            };
            if sign == elected {
                mixed += x;
                divisor += params.weights[i];
            }
        }
        if divisor == 0.0 {
            divisor = 1.0;
        }
    } else {
        for d in deltas {
            mixed += d[j];
        }
        divisor = total_weight;
        if divisor.abs() < 1e-8 {
            divisor = 1.0;
        }
    }
    if params.normalize {
        mixed /= divisor;
    }
    if params.lambda != 1.0 {
        mixed *= params.lambda;
    }
    base + mixed
}
