//! The per-chunk reducer of the task-vector methods (task arithmetic, TIES,
//! DARE, Breadcrumbs, DELLA, SCE, NearSwap): from the base `b` and the inputs
//! `xᵢ`, the task vectors `δᵢ = xᵢ − b` are sparsified (largest magnitudes, a
//! band of magnitudes, a random mask, a magnitude-ranked random mask, the
//! entries of largest variance across the inputs), weighted, optionally reduced
//! to the entries that agree with an elected sign, summed, normalised, scaled by
//! λ and added back to the base:
//!
//! ```text
//! δ̃ᵢ = wᵢ · sparsify(xᵢ − b)
//! s   = sign(Σᵢ δ̃ᵢ)  (+ when the sum is 0)          — with sign election
//! mᵢ  = [sign(δ̃ᵢ) = s]                               — else mᵢ = 1
//! out = b + λ · (Σᵢ mᵢ·δ̃ᵢ) / D,   D = Σᵢ mᵢ·wᵢ (1 where that is 0)
//! ```
//!
//! (`/ D` only when normalising; without sign election `D = Σᵢ wᵢ`, 1 where
//! `|D| < 10⁻⁸`.) This is mergekit's generalised task arithmetic, so its TIES,
//! DARE, Breadcrumbs and DELLA configurations mean the same here. SCE elects the
//! sign of the unweighted sum and divides by `max(D, 10⁻⁶)`; NearSwap moves each
//! element of the base toward the one input by `w = clamp(t / |δ|, 0, 1)`,
//! `out = w·x + (1 − w)·b`.
//!
//! Everything is computed in f64 in a fixed order per element — inputs in input
//! order — and rounded once to the output format, so the result depends on
//! nothing but the inputs and the parameters. An element's fate in the
//! sparsification depends on its global index (and, for DELLA, on its row),
//! never on the chunk it falls in.
//!
//! The loops run over tiles of [`TILE`] elements, one step at a time over whole
//! tiles (widen, subtract, sparsify and weight one input; elect; sum; round), so
//! the compiler vectorises each; [`combine`] is compiled for AVX-512, AVX2 and
//! SSE4.2 and the best version is chosen at run time, as for the linear kernel.
//! Per element, the operations and their order are those of the definition
//! above, so every version gives the same bits.

use crate::engine::dropout::{threshold, DropMask};
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
    /// The entries kept by `Above { threshold, last_tie }` but not by `Above {
    /// threshold: drop_threshold, last_tie: drop_last_tie }`: ranks `j` to `k`
    /// of the magnitudes (Breadcrumbs: the largest `j` are outliers).
    Band {
        /// The bits of the smallest magnitude kept.
        threshold: u64,
        /// The last index at which an entry of magnitude `threshold` is kept.
        last_tie: u64,
        /// The bits of the smallest magnitude dropped as an outlier.
        drop_threshold: u64,
        /// The last index at which an entry of magnitude `drop_threshold` is
        /// dropped.
        drop_last_tie: u64,
    },
}

impl Keep {
    /// Whether an entry whose key (magnitude bits) is `key` at `index` is kept.
    #[inline(always)]
    pub fn keeps_key(self, key: u64, index: u64) -> bool {
        match self {
            Keep::All => true,
            Keep::Nothing => false,
            Keep::Above { threshold, last_tie } => above(key, index, threshold, last_tie),
            Keep::Band { threshold, last_tie, drop_threshold, drop_last_tie } => {
                above(key, index, threshold, last_tie)
                    && !above(key, index, drop_threshold, drop_last_tie)
            }
        }
    }
}

/// Whether `(key, index)` ranks among the entries down to `(threshold,
/// last_tie)`: larger keys first, equal keys by position. Branch-free, so
/// that loops over it vectorise.
#[inline(always)]
fn above(key: u64, index: u64, threshold: u64, last_tie: u64) -> bool {
    (key > threshold) | ((key == threshold) & (index <= last_tie))
}

/// Sets `flags[j]` to whether `keep` keeps the entry at index `at + j` whose
/// key is the magnitude of `values[j]`: one branch-free loop per rule.
#[inline(always)]
pub(crate) fn keep_flags(keep: Keep, values: &[f64], at: u64, flags: &mut [bool]) {
    let flags = &mut flags[..values.len()];
    match keep {
        Keep::All => flags.fill(true),
        Keep::Nothing => flags.fill(false),
        Keep::Above { threshold, last_tie } => {
            for (j, (f, v)) in flags.iter_mut().zip(values).enumerate() {
                *f = above(v.abs().to_bits(), at + j as u64, threshold, last_tie);
            }
        }
        Keep::Band { threshold, last_tie, drop_threshold, drop_last_tie } => {
            for (j, (f, v)) in flags.iter_mut().zip(values).enumerate() {
                let (key, index) = (v.abs().to_bits(), at + j as u64);
                *f = above(key, index, threshold, last_tie)
                    & !above(key, index, drop_threshold, drop_last_tie);
            }
        }
    }
}

/// DELLA's drop of one input: keep probabilities from `density − epsilon` (the
/// smallest magnitude in a row) to `density + epsilon` (the largest).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// The input's random stream ([`DropMask::stream`]).
    pub mask: DropMask,
    /// The mean keep probability.
    pub density: f64,
    /// Half the spread of the keep probabilities.
    pub epsilon: f64,
}

/// How each input's task vector is sparsified.
#[derive(Debug, Clone, PartialEq)]
pub enum Sparsify {
    /// Not at all (task arithmetic).
    None,
    /// By magnitude, one rule per input (TIES, Breadcrumbs); the base's is
    /// ignored.
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
    /// By a random mask whose keep probability grows with the entry's
    /// magnitude rank in its row of `row` elements (DELLA); survivors are
    /// divided by their keep probability when `rescale`.
    Ranked {
        /// Elements per row (the last dimension; the whole tensor when it has
        /// fewer than two).
        row: usize,
        /// One drop per input (`None`: keep everything; the base's is ignored).
        inputs: Vec<Option<Ranked>>,
        /// Divide survivors by their keep probability.
        rescale: bool,
    },
    /// The entries where the inputs' task vectors vary most, the same for every
    /// input: the rule applies to the bits of their population variance (SCE).
    /// Implies SCE's sign election and divisor.
    Variance(Keep),
    /// NearSwap with step `t`: the one input other than the base is followed
    /// where it is within `t` of the base, and approached by `t` elsewhere.
    NearSwap {
        /// The largest step from the base.
        t: f64,
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
    /// contribute (non-zero weight, not sparsified away entirely), and every
    /// input for SCE, whose selection depends on all of them.
    pub fn reads(&self, i: usize, base: usize) -> bool {
        if i == base || matches!(self.sparsify, Sparsify::Variance(_)) {
            return true;
        }
        let kept = match &self.sparsify {
            Sparsify::Magnitude(keep) => keep[i] != Keep::Nothing,
            Sparsify::Random { densities, .. } => densities[i] > 0.0,
            Sparsify::Ranked { inputs, .. } => inputs[i].is_none_or(|r| r.density > 0.0),
            Sparsify::None | Sparsify::Variance(_) | Sparsify::NearSwap { .. } => true,
        };
        self.weights[i] != 0.0 && kept
    }

    /// Chunks of the tensor must be a multiple of this many elements (DELLA
    /// ranks entries within rows, so a chunk holds whole rows).
    pub fn chunk_multiple(&self) -> usize {
        match self.sparsify {
            Sparsify::Ranked { row, .. } => row.max(1),
            _ => 1,
        }
    }
}

/// A worker's reusable f64 tiles.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    base: Vec<f64>,
    deltas: Vec<Vec<f64>>,
    /// DELLA: each read input's keep probability for every element of the chunk.
    probabilities: Vec<Vec<f64>>,
    /// DELLA: one row's (magnitude bits, position), for ranking.
    order: Vec<(u64, u32)>,
    /// DELLA: one row's magnitude bits, with the position packed in.
    keys: Vec<u64>,
    /// A tile of random draws.
    draws: Vec<u64>,
    /// SCE: a tile of selection flags.
    selected: Vec<bool>,
}

/// Combines the `len` elements starting at element `first` of a tensor (`span`
/// is `(first, len)`). `inputs[i]`
/// holds input `i`'s bytes for the chunk, or `None` when [`TaskParams::reads`]
/// says it is not read; the base must be present. The result, rounded to `dtype`,
/// replaces `out`; returns how many of its values are NaN or infinite.
///
/// # Panics
/// If the base is missing or an input's byte length is not `len` elements, or,
/// for DELLA, if `len` is not whole rows.
pub(crate) fn combine(
    (first, len): (u64, usize),
    inputs: &[Option<(FloatDtype, &[u8])>],
    base: usize,
    params: &TaskParams,
    dtype: FloatDtype,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> usize {
    let read: Vec<usize> =
        (0..inputs.len()).filter(|&i| i != base && inputs[i].is_some()).collect();
    out.resize(len * dtype.size(), 0);
    scratch.base.resize(TILE, 0.0);
    scratch.deltas.resize_with(read.len(), Vec::new);
    for d in &mut scratch.deltas {
        d.resize(TILE, 0.0);
    }
    scratch.draws.resize(TILE, 0);
    scratch.selected.resize(TILE, false);
    if let Sparsify::Ranked { row, inputs: ranked, .. } = &params.sparsify {
        ranked_probabilities((first, len), inputs, base, &read, *row, ranked, scratch);
    }
    combine_tiles((first, len), inputs, base, &read, params, dtype, scratch, out)
}

/// The tile loop of [`combine`], compiled once per instruction set.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
    "x86_64+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
    "x86_64+sse4.2+popcnt",
))]
#[allow(clippy::too_many_arguments)]
fn combine_tiles(
    (first, len): (u64, usize),
    inputs: &[Option<(FloatDtype, &[u8])>],
    base: usize,
    read: &[usize],
    params: &TaskParams,
    dtype: FloatDtype,
    scratch: &mut Scratch,
    out: &mut [u8],
) -> usize {
    tiles((first, len), inputs, base, read, params, dtype, scratch, out)
}

/// The body of [`combine_tiles`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tiles(
    (first, len): (u64, usize),
    inputs: &[Option<(FloatDtype, &[u8])>],
    base: usize,
    read: &[usize],
    params: &TaskParams,
    dtype: FloatDtype,
    scratch: &mut Scratch,
    out: &mut [u8],
) -> usize {
    let (base_dtype, base_bytes) = inputs[base].expect("the base is always read");
    // Σ wᵢ over every input but the base, in input order.
    let total_weight =
        params.weights.iter().enumerate().filter(|&(i, _)| i != base).fold(0.0, |s, (_, &w)| s + w);
    let mut result = [0.0f64; TILE];
    let mut non_finite = 0;
    let Scratch { base: b, deltas, probabilities, draws, selected, .. } = scratch;
    for start in (0..len).step_by(TILE) {
        let n = TILE.min(len - start);
        let at = first + start as u64;
        let size = base_dtype.size();
        let b = &mut b[..n];
        widen_into(base_dtype, &base_bytes[start * size..(start + n) * size], b);
        for (slot, &i) in read.iter().enumerate() {
            let (dt, bytes) = inputs[i].expect("listed inputs are read");
            let d = &mut deltas[slot][..n];
            widen_into(dt, &bytes[start * dt.size()..(start + n) * dt.size()], d);
            let p = match params.sparsify {
                Sparsify::Ranked { .. } => probabilities.get(slot).map(|p| &p[start..start + n]),
                _ => None,
            };
            sparsify_weighted(d, b, i, at, p, params, &mut draws[..n]);
        }
        let result = &mut result[..n];
        match &params.sparsify {
            Sparsify::NearSwap { t } => near_swap(result, b, &deltas[..read.len()], *t),
            Sparsify::Variance(keep) => {
                select_by_variance(&mut deltas[..read.len()], n, at, *keep, &mut selected[..n]);
                elect(result, b, &mut deltas[..read.len()], read, params, Election::Unweighted);
            }
            _ if params.elect_sign => {
                elect(result, b, &mut deltas[..read.len()], read, params, Election::Weighted)
            }
            _ => sum(result, b, &deltas[..read.len()], total_weight, params),
        }
        let o = dtype.size();
        non_finite += narrow_into(dtype, result, &mut out[start * o..(start + n) * o]);
    }
    non_finite
}

/// Turns input `i`'s widened values `d` into its weighted, sparsified task vector
/// in place; `at` is the global index of `d[0]`, `p` (DELLA) the tile's keep
/// probabilities. SCE's selection needs every input first, so its task vectors
/// are left unweighted here.
#[inline(always)]
fn sparsify_weighted(
    d: &mut [f64],
    b: &[f64],
    i: usize,
    at: u64,
    p: Option<&[f64]>,
    params: &TaskParams,
    draws: &mut [u64],
) {
    let w = params.weights[i];
    match &params.sparsify {
        Sparsify::None => {
            for (x, &base) in d.iter_mut().zip(b) {
                *x = w * (*x - base);
            }
        }
        Sparsify::Magnitude(keep) => match keep[i] {
            Keep::All => {
                for (x, &base) in d.iter_mut().zip(b) {
                    *x = w * (*x - base);
                }
            }
            Keep::Above { threshold, last_tie } => {
                for (j, (x, &base)) in d.iter_mut().zip(b).enumerate() {
                    let delta = *x - base;
                    let kept = above(delta.abs().to_bits(), at + j as u64, threshold, last_tie);
                    *x = w * if kept { delta } else { 0.0 };
                }
            }
            Keep::Band { threshold, last_tie, drop_threshold, drop_last_tie } => {
                for (j, (x, &base)) in d.iter_mut().zip(b).enumerate() {
                    let delta = *x - base;
                    let (key, index) = (delta.abs().to_bits(), at + j as u64);
                    let kept = above(key, index, threshold, last_tie)
                        & !above(key, index, drop_threshold, drop_last_tie);
                    *x = w * if kept { delta } else { 0.0 };
                }
            }
            Keep::Nothing => {
                for x in d.iter_mut() {
                    *x = w * 0.0;
                }
            }
        },
        Sparsify::Random { masks, densities, rescale } => match masks[i] {
            None => {
                for (x, &base) in d.iter_mut().zip(b) {
                    *x = w * (*x - base);
                }
            }
            Some(mask) => {
                fill_draws(mask, at, draws);
                let below = mask.below();
                // Dividing by 1 is exact: one branch-free loop either way.
                let density = if *rescale { densities[i] } else { 1.0 };
                for ((x, &base), &draw) in d.iter_mut().zip(b).zip(draws.iter()) {
                    let scaled = (*x - base) / density;
                    *x = w * if draw < below { scaled } else { 0.0 };
                }
            }
        },
        Sparsify::Ranked { inputs, rescale, .. } => match (inputs[i], p) {
            (Some(ranked), Some(p)) => {
                fill_draws(ranked.mask, at, draws);
                for (((x, &base), &draw), &p) in d.iter_mut().zip(b).zip(draws.iter()).zip(p) {
                    let scaled = (*x - base) / if *rescale { p } else { 1.0 };
                    *x = w * if draw < threshold(p) { scaled } else { 0.0 };
                }
            }
            _ => {
                for (x, &base) in d.iter_mut().zip(b) {
                    *x = w * (*x - base);
                }
            }
        },
        Sparsify::Variance(_) => {
            for (x, &base) in d.iter_mut().zip(b) {
                *x -= base;
            }
        }
        // NearSwap reads the input itself.
        Sparsify::NearSwap { .. } => {}
    }
}

/// The draws of elements `at..at + draws.len()` of `mask`'s stream.
#[inline(always)]
fn fill_draws(mask: DropMask, at: u64, draws: &mut [u64]) {
    for (j, draw) in draws.iter_mut().enumerate() {
        *draw = mask.draw(at + j as u64);
    }
}

/// How the sign of an element is elected.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Election {
    /// By the sign of the sum of the weighted task vectors; the divisor is the
    /// agreeing weights' sum, 1 where that is 0 (TIES).
    Weighted,
    /// By the sign of the sum of the unweighted task vectors, which are weighted
    /// after; the divisor is the agreeing weights' sum, at least 10⁻⁶ (SCE).
    Unweighted,
}

/// Sign election and the disjoint mean over the (weighted) task vectors
/// `deltas` of the inputs `read`.
#[inline(always)]
fn elect(
    result: &mut [f64],
    b: &[f64],
    deltas: &mut [Vec<f64>],
    read: &[usize],
    params: &TaskParams,
    election: Election,
) {
    let n = result.len();
    // The elected sign's sum, in input order (from +0, as each element would).
    let total = &mut result[..];
    total.fill(0.0);
    for d in deltas.iter() {
        for (t, &x) in total.iter_mut().zip(&d[..n]) {
            *t += x;
        }
    }
    let mut positive = [false; TILE];
    for (p, &t) in positive.iter_mut().zip(total.iter()) {
        *p = t >= 0.0;
    }
    if election == Election::Unweighted {
        for (d, &i) in deltas.iter_mut().zip(read) {
            let w = params.weights[i];
            for x in &mut d[..n] {
                *x *= w;
            }
        }
    }
    let mut divisor = [0.0f64; TILE];
    let mixed = result;
    mixed.fill(0.0);
    for (d, &i) in deltas.iter().zip(read) {
        let w = params.weights[i];
        for (((m, div), &x), &p) in
            mixed.iter_mut().zip(divisor.iter_mut()).zip(&d[..n]).zip(&positive)
        {
            let agree = if p { x > 0.0 } else { x < 0.0 };
            *m += if agree { x } else { 0.0 };
            *div += if agree { w } else { 0.0 };
        }
    }
    let (normalize, lambda) = match election {
        Election::Weighted => (params.normalize, params.lambda),
        Election::Unweighted => (true, 1.0),
    };
    for ((m, &div), &base) in mixed.iter_mut().zip(&divisor).zip(b) {
        let div = match election {
            Election::Weighted if div == 0.0 => 1.0,
            Election::Unweighted if div < 1e-6 => 1e-6,
            _ => div,
        };
        let mut x = *m;
        if normalize {
            x /= div;
        }
        if lambda != 1.0 {
            x *= lambda;
        }
        *m = base + x;
    }
}

/// The plain sum of the weighted task vectors, divided by the weights' sum when
/// normalising, scaled and added to the base.
#[inline(always)]
fn sum(result: &mut [f64], b: &[f64], deltas: &[Vec<f64>], total_weight: f64, params: &TaskParams) {
    let n = result.len();
    result.fill(0.0);
    for d in deltas {
        for (m, &x) in result.iter_mut().zip(&d[..n]) {
            *m += x;
        }
    }
    let divisor = if total_weight.abs() < 1e-8 { 1.0 } else { total_weight };
    for (m, &base) in result.iter_mut().zip(b) {
        let mut x = *m;
        if params.normalize {
            x /= divisor;
        }
        if params.lambda != 1.0 {
            x *= params.lambda;
        }
        *m = base + x;
    }
}

/// SCE's selection: keeps the task vectors' entries whose population variance
/// across the inputs is selected by `keep`, zeroes the others.
#[inline(always)]
fn select_by_variance(
    deltas: &mut [Vec<f64>],
    n: usize,
    at: u64,
    keep: Keep,
    selected: &mut [bool],
) {
    if keep == Keep::All {
        return;
    }
    let mut var = [0.0f64; TILE];
    variance_into(deltas, n, &mut var[..n]);
    keep_flags(keep, &var[..n], at, selected);
    for d in deltas.iter_mut() {
        for (x, &s) in d[..n].iter_mut().zip(selected.iter()) {
            *x = if s { *x } else { 0.0 };
        }
    }
}

/// The population variance across `deltas` of each of the first `n` elements:
/// `Σ (δᵢ − m)² / k` with `m = Σ δᵢ / k`, sums in input order from +0. SCE's
/// selection key; its statistics pass computes it with this same function.
#[inline(always)]
pub(crate) fn variance_into(deltas: &[Vec<f64>], n: usize, var: &mut [f64]) {
    let k = deltas.len() as f64;
    let mut mean = [0.0f64; TILE];
    let mean = &mut mean[..n];
    for d in deltas {
        for (m, &x) in mean.iter_mut().zip(&d[..n]) {
            *m += x;
        }
    }
    for m in mean.iter_mut() {
        *m /= k;
    }
    var.fill(0.0);
    for d in deltas {
        for ((v, &m), &x) in var.iter_mut().zip(mean.iter()).zip(&d[..n]) {
            let e = x - m;
            *v += e * e;
        }
    }
    for v in var.iter_mut() {
        *v /= k;
    }
}

/// NearSwap: `w·x + (1 − w)·b` with `w = clamp(t / max(|b − x|, 10⁻⁶), 0, 1)`
/// (NaN stays NaN) from the one input's values `x` in `values` (the base
/// alone when it is not read).
#[inline(always)]
fn near_swap(result: &mut [f64], b: &[f64], values: &[Vec<f64>], t: f64) {
    let Some(x) = values.first() else {
        result.copy_from_slice(b);
        return;
    };
    let n = result.len();
    for ((r, &base), &x) in result.iter_mut().zip(b).zip(&x[..n]) {
        let diff = (base - x).abs();
        let diff = if diff < 1e-6 { 1e-6 } else { diff };
        let w = (t / diff).clamp(0.0, 1.0);
        *r = w * x + (1.0 - w) * base;
    }
}

/// DELLA: for every read input, the keep probability of each element of the
/// chunk, from its magnitude's rank in its row: `(density − ε) + r·2·ε` with
/// `r = (rank − 1)/(m − 1)` for rank 1 (smallest) to `m` (largest) of a row of
/// `m`, and `r = 0` in a row of one. Equal magnitudes rank by position, the
/// earlier higher.
fn ranked_probabilities(
    (first, len): (u64, usize),
    inputs: &[Option<(FloatDtype, &[u8])>],
    base: usize,
    read: &[usize],
    row: usize,
    ranked: &[Option<Ranked>],
    scratch: &mut Scratch,
) {
    let row = row.max(1);
    assert!(first % row as u64 == 0 && len % row == 0, "DELLA chunks hold whole rows");
    let (base_dtype, base_bytes) = inputs[base].expect("the base is always read");
    scratch.probabilities.resize_with(read.len(), Vec::new);
    let mut b = vec![0.0; row];
    let mut x = vec![0.0; row];
    // The low bits that hold a position in the row.
    let bits = u64::BITS - (row as u64 - 1).leading_zeros();
    let position_mask = u64::MAX.checked_shr(u64::BITS - bits).unwrap_or(0);
    for (slot, &i) in read.iter().enumerate() {
        let p = &mut scratch.probabilities[slot];
        p.resize(len, 1.0);
        let Some(r) = ranked[i] else {
            p.fill(1.0);
            continue;
        };
        let (dt, bytes) = inputs[i].expect("listed inputs are read");
        for start in (0..len).step_by(row) {
            widen_into(
                base_dtype,
                &base_bytes[start * base_dtype.size()..][..row * base_dtype.size()],
                &mut b,
            );
            widen_into(dt, &bytes[start * dt.size()..][..row * dt.size()], &mut x);
            // Ascending magnitude; of equal magnitudes the later position first.
            let keys = &mut scratch.keys;
            keys.clear();
            keys.extend(x.iter().zip(&b).map(|(x, b)| (x - b).abs().to_bits()));
            let mut set = |rank0: usize, j: usize| {
                let norm = if row > 1 { rank0 as f64 / (row - 1) as f64 } else { 0.0 };
                p[start + j] = (r.density - r.epsilon) + norm * 2.0 * r.epsilon;
            };
            if keys.iter().fold(0, |low, k| low | k) & position_mask == 0 {
                // The keys' low bits are free (magnitudes of 16-bit weights'
                // differences use few of an f64's): each key and its reversed
                // position in one u64 sort in the order wanted, much faster
                // than pairs.
                for (j, k) in keys.iter_mut().enumerate() {
                    *k |= (row - 1 - j) as u64;
                }
                keys.sort_unstable();
                for (rank0, &k) in keys.iter().enumerate() {
                    set(rank0, row - 1 - (k & position_mask) as usize);
                }
            } else {
                let order = &mut scratch.order;
                order.clear();
                order.extend(keys.iter().enumerate().map(|(j, &k)| (k, j as u32)));
                order.sort_unstable_by(|a, c| a.0.cmp(&c.0).then(c.1.cmp(&a.1)));
                for (rank0, &(_, j)) in order.iter().enumerate() {
                    set(rank0, j as usize);
                }
            }
        }
    }
}
