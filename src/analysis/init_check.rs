//! The shared-init check: do the ingredients look fine-tuned from one pretrained
//! model? Soups of models trained from scratch collapse to chance accuracy
//! (Wortsman et al., 2022: ResNet on CIFAR-100, best single 65.8%, uniform soup
//! 1.1%), so a user should hear about it before any evaluation is paid for.
//!
//! The measure is the cosine between two ingredients' raw weights, *per weight
//! matrix* (tensors of two or more dimensions with at least [`MIN_ELEMENTS`]
//! elements), summarised by the median over matrices. A whole-model cosine would
//! be inflated by LayerNorm gains (all near 1 in any model, fine-tuned or not) and
//! dominated by the largest tensors; the median over matrices counts every matrix
//! once and ignores a few odd ones. Fine-tunes of one model measure near 1 (two
//! deltas of relative size r give about 1 / (1 + r²)); independent inits near 0,
//! within about 1/√n for n sampled elements. The threshold, [`THRESHOLD`], sits
//! between the two; `docs/ARCHITECTURE.md` gives the measurements behind it.
//!
//! It is cheap: of each matrix it reads [`WINDOWS`] windows of [`WINDOW`]
//! consecutive elements spread evenly over the tensor (the whole tensor when it
//! is smaller), a few pages per matrix, and compares every pair of ingredients, so
//! an odd one out shows as a row of low values whichever ingredient it is.

use serde::Serialize;

use crate::engine::checkpoint::Checkpoint;
use crate::engine::dtype::FloatDtype;
use crate::engine::kernel::widen_into;

/// Below this median cosine, two ingredients do not look fine-tuned from one
/// model. Fine-tunes fall this low only when their deltas are as large as the
/// weights themselves; independent inits would need half their direction in common.
pub const THRESHOLD: f64 = 0.5;

/// Smallest tensor that counts as a weight matrix: with fewer elements the cosine
/// of independent weights spreads by more than 1/√1024 ≈ 0.03.
pub const MIN_ELEMENTS: usize = 1024;

/// Windows sampled per matrix.
pub const WINDOWS: usize = 4;

/// Elements per window.
pub const WINDOW: usize = 1024;

/// One pair of ingredients that looks independently initialised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pair {
    /// Index of the first ingredient.
    pub a: usize,
    /// Index of the second.
    pub b: usize,
    /// Their median per-matrix cosine.
    pub median_cosine: f64,
}

/// The result of [`check_shared_init`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InitCheck {
    /// Weight matrices compared (present with the same shape, as floats, in every
    /// ingredient).
    pub matrices: usize,
    /// Elements read per ingredient.
    pub sampled_elements: u64,
    /// k × k median per-matrix cosines of raw weights (1 on the diagonal; NaN,
    /// `null` in JSON, when no matrix could be compared).
    pub median_cosine: Vec<Vec<f64>>,
    /// The threshold applied.
    pub threshold: f64,
    /// Pairs below the threshold, lowest first.
    pub independent: Vec<Pair>,
}

impl InitCheck {
    /// True when some pair of ingredients looks independently initialised.
    pub fn looks_independent(&self) -> bool {
        !self.independent.is_empty()
    }

    /// The lowest median cosine between two different ingredients, if any pair was
    /// compared.
    pub fn lowest(&self) -> Option<f64> {
        let k = self.median_cosine.len();
        (0..k)
            .flat_map(|i| (i + 1..k).map(move |j| (i, j)))
            .map(|(i, j)| self.median_cosine[i][j])
            .filter(|c| c.is_finite())
            .min_by(f64::total_cmp)
    }
}

/// Samples every weight matrix of the ingredients and returns the median cosine of
/// each pair (see the module documentation). Tensors that differ in shape or are
/// not floats somewhere are skipped, so this runs before (and whatever) the
/// compatibility check says.
pub fn check_shared_init(ingredients: &[Checkpoint]) -> InitCheck {
    let k = ingredients.len();
    let mut cosines: Vec<Vec<f64>> = vec![Vec::new(); k * k];
    let mut matrices = 0;
    let mut sampled = 0u64;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); k];
    let Some(first) = ingredients.first() else {
        return summarise(k, cosines, 0, 0);
    };
    // A few windows per matrix: without readahead, which would bring megabytes
    // around each from a cold disk, most of the model, ahead of the pass.
    ingredients.iter().for_each(|ck| ck.expect_samples(true));
    for entry in first.tensors() {
        let numel = entry.numel();
        if entry.shape.len() < 2 || numel < MIN_ELEMENTS {
            continue;
        }
        let sources: Option<Vec<_>> = ingredients
            .iter()
            .map(|ck| {
                let t = ck.get(&entry.name).filter(|t| t.shape == entry.shape)?;
                Some((ck, t, FloatDtype::from_safetensors(t.dtype)?))
            })
            .collect();
        let Some(sources) = sources else { continue };
        let windows = windows(numel);
        for ((ck, t, dtype), sample) in sources.iter().zip(samples.iter_mut()) {
            sample.clear();
            for &(start, len) in &windows {
                let at = sample.len();
                sample.resize(at + len, 0.0);
                let bytes = ck.sample(t, start * dtype.size(), len * dtype.size());
                widen_into(*dtype, &bytes, &mut sample[at..]);
            }
            // The kernel maps whole readahead windows around each sample; drop them,
            // or a few windows per matrix add up to hundreds of MB of RSS.
            let (shard, span) = ck.span(t, 0, t.len);
            ck.release(shard, span.start, span.end);
        }
        matrices += 1;
        sampled += samples[0].len() as u64;
        let norms: Vec<f64> = samples.iter().map(|s| dot(s, s).sqrt()).collect();
        for i in 0..k {
            for j in i + 1..k {
                let denominator = norms[i] * norms[j];
                if denominator > 0.0 && denominator.is_finite() {
                    cosines[i * k + j].push(dot(&samples[i], &samples[j]) / denominator);
                }
            }
        }
    }
    ingredients.iter().for_each(|ck| ck.expect_samples(false));
    summarise(k, cosines, matrices, sampled)
}

/// The (start, length) of the windows sampled from a tensor of `numel` elements.
fn windows(numel: usize) -> Vec<(usize, usize)> {
    if numel <= WINDOWS * WINDOW {
        return vec![(0, numel)];
    }
    (0..WINDOWS).map(|w| (w * (numel - WINDOW) / (WINDOWS - 1), WINDOW)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn summarise(k: usize, mut cosines: Vec<Vec<f64>>, matrices: usize, sampled: u64) -> InitCheck {
    let mut median_cosine = vec![vec![f64::NAN; k]; k];
    let mut independent = Vec::new();
    for i in 0..k {
        median_cosine[i][i] = 1.0;
        for j in i + 1..k {
            let m = median(&mut cosines[i * k + j]);
            median_cosine[i][j] = m;
            median_cosine[j][i] = m;
            if m < THRESHOLD {
                independent.push(Pair { a: i, b: j, median_cosine: m });
            }
        }
    }
    independent.sort_by(|x, y| x.median_cosine.total_cmp(&y.median_cosine));
    InitCheck {
        matrices,
        sampled_elements: sampled,
        median_cosine,
        threshold: THRESHOLD,
        independent,
    }
}

/// The median (mean of the middle two for an even count); NaN when empty.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_spread_over_the_tensor_or_take_it_whole() {
        assert_eq!(windows(4096), vec![(0, 4096)]);
        assert_eq!(windows(10_000), vec![(0, 1024), (2992, 1024), (5984, 1024), (8976, 1024)]);
    }

    #[test]
    fn medians() {
        assert!(median(&mut []).is_nan());
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
