//! The methods whose result is, per tensor, a linear combination of the inputs
//! with coefficients that depend on the inputs' norms and angles: SLERP,
//! NuSLERP, Multi-SLERP, the Karcher mean and Model Stock.
//!
//! Each takes a tensor as one vector. Everything they need of the data is its
//! Gram matrix (the inputs' squared norms and dot products, from one streaming
//! pass, `analysis::gram`): every quantity mergekit computes on the vectors —
//! normalised vectors, their weighted mean, tangent vectors, exponential maps —
//! stays in the span of the inputs, so it is computed here on coefficients, in
//! f64, and the merge is then the engine's linear kernel (or, over task vectors,
//! its task-vector reducer) with one coefficient per input.

use crate::analysis::gram::Gram;

/// SLERP interpolates linearly when the two models' cosine is above this: the
/// spherical formula divides by `sin θ`, which vanishes (mergekit's value).
pub const SLERP_PARALLEL: f64 = 0.9995;

/// The coefficients `(s₀, s₁)` of `slerp(t; a, b) = s₀·a + s₁·b` from `‖a‖²`,
/// `‖b‖²` and `⟨a, b⟩`: `sin((1−t)θ)/sin θ` and `sin(tθ)/sin θ`, or `1 − t` and
/// `t` when the vectors are (anti)parallel or either is zero.
pub fn slerp_coefficients(aa: f64, bb: f64, ab: f64, t: f64) -> Vec<f64> {
    let (na, nb) = (aa.sqrt(), bb.sqrt());
    if na == 0.0 || nb == 0.0 {
        return vec![1.0 - t, t];
    }
    let cos = (ab / (na * nb)).clamp(-1.0, 1.0);
    if cos.abs() > SLERP_PARALLEL {
        return vec![1.0 - t, t];
    }
    let theta = cos.acos();
    let sin = theta.sin();
    vec![((1.0 - t) * theta).sin() / sin, (t * theta).sin() / sin]
}

/// NuSLERP's coefficients on its two vectors (the models, or their task
/// vectors) from their Gram matrix and weights: `t = w₁ / (w₀ + w₁)` (½ when
/// the weights sum to less than 10⁻⁶ in magnitude); the norms are clamped to at
/// least 10⁻⁷; `1 − t` and `t` where the vectors are colinear (`1 − cos² ≤
/// 10⁻¹⁶`), else `sin((1−t)θ)/sin θ` and `sin(tθ)/sin θ`.
pub fn nuslerp_coefficients(g: &Gram, w0: f64, w1: f64) -> Vec<f64> {
    let total = w0 + w1;
    let t = if total.abs() < 1e-6 { 0.5 } else { w1 / total };
    let n0 = g.dot(0, 0).sqrt().max(1e-7);
    let n1 = g.dot(1, 1).sqrt().max(1e-7);
    let cos = (g.dot(0, 1) / (n0 * n1)).clamp(-1.0, 1.0);
    if 1.0 - cos * cos <= 1e-16 {
        return vec![1.0 - t, t];
    }
    let theta = cos.acos();
    let sin = theta.sin();
    vec![((1.0 - t) * theta).sin() / sin, (t * theta).sin() / sin]
}

/// `aᵀ·U·b` for coefficient vectors over vectors whose Gram matrix is `u`.
fn form(u: &[Vec<f64>], a: &[f64], b: &[f64]) -> f64 {
    let mut sum = 0.0;
    for (i, &ai) in a.iter().enumerate() {
        for (j, &bj) in b.iter().enumerate() {
            sum += ai * u[i][j] * bj;
        }
    }
    sum
}

/// `U·a`.
fn apply(u: &[Vec<f64>], a: &[f64]) -> Vec<f64> {
    u.iter().map(|row| row.iter().zip(a).map(|(x, y)| x * y).sum()).collect()
}

/// Multi-SLERP's coefficients on its vectors `vᵢ` (models, or task vectors)
/// from their Gram matrix and weights (normalised to sum 1 when `normalize`),
/// as mergekit computes on the vectors: `uᵢ = vᵢ / (‖vᵢ‖ + eps)`, the unit mean
/// `m ∝ Σ wᵢ·uᵢ`, the tangent `τ = Σ wᵢ·(uᵢ − ⟨uᵢ, m⟩·m)`, the exponential map
/// `m·cos‖τ‖' + τ·sin‖τ‖'/‖τ‖'` (`‖τ‖' = ‖τ‖ + eps`), times `Σ wᵢ·‖vᵢ‖`. One
/// vector is itself; when the weighted mean vanishes, two vectors are averaged
/// linearly, zero vectors give zero, and more are an error.
pub fn multislerp_coefficients(
    g: &Gram,
    weights: &[f64],
    normalize: bool,
    eps: f64,
) -> Result<Vec<f64>, String> {
    let k = g.k();
    if k == 1 {
        return Ok(vec![1.0]);
    }
    let w: Vec<f64> = if normalize {
        let sum: f64 = weights.iter().sum();
        weights.iter().map(|x| x / sum).collect()
    } else {
        weights.to_vec()
    };
    let norms: Vec<f64> = (0..k).map(|i| g.dot(i, i).sqrt()).collect();
    let d: Vec<f64> = norms.iter().map(|n| n + eps).collect();
    let u: Vec<Vec<f64>> =
        (0..k).map(|i| (0..k).map(|j| g.dot(i, j) / (d[i] * d[j])).collect()).collect();
    let mean_norm = form(&u, &w, &w).max(0.0).sqrt();
    if mean_norm < eps {
        if norms.iter().all(|&n| n == 0.0) {
            // Nothing to interpolate (an empty tensor, or no task vector at
            // all): the origin, where mergekit stops with an error.
            return Ok(vec![0.0; k]);
        }
        if k == 2 {
            return Ok(vec![w[0], w[1]]);
        }
        return Err("the weighted sum of the normalised inputs is zero (antipodal inputs \
                    whose weights balance out); choose other weights"
            .to_owned());
    }
    let mean: Vec<f64> = w.iter().map(|x| x / mean_norm).collect();
    let dots = apply(&u, &mean);
    let along: f64 = w.iter().zip(&dots).map(|(w, d)| w * d).sum();
    let tangent: Vec<f64> = w.iter().zip(&mean).map(|(w, m)| w - along * m).collect();
    let tangent_norm = form(&u, &tangent, &tangent).max(0.0).sqrt() + eps;
    let (cos, sin) = (tangent_norm.cos(), tangent_norm.sin() / tangent_norm);
    let average_norm: f64 = w.iter().zip(&norms).map(|(w, n)| w * n).sum();
    Ok((0..k).map(|i| (mean[i] * cos + tangent[i] * sin) * average_norm / d[i]).collect())
}

/// The Karcher mean's coefficients on its inputs from their Gram matrix, with
/// equal weights, as mergekit computes it: the inputs' unit vectors (those with
/// a norm above `tol` take part), their normalised mean as the start, then up to
/// `max_iter` steps along the mean of the logarithmic maps `θᵢ/sin θᵢ · (uᵢ −
/// cos θᵢ · m)` (inputs within `tol` radians of the mean are skipped), stopping
/// when the step is below `tol`; the unit mean times the inputs' mean norm.
pub fn karcher_coefficients(g: &Gram, max_iter: u32, tol: f64) -> Vec<f64> {
    let k = g.k();
    if k == 1 {
        return vec![1.0];
    }
    let norms: Vec<f64> = (0..k).map(|i| g.dot(i, i).sqrt()).collect();
    let unit = |i: usize, j: usize| {
        if norms[i] == 0.0 || norms[j] == 0.0 {
            0.0
        } else {
            g.dot(i, j) / (norms[i] * norms[j])
        }
    };
    let u: Vec<Vec<f64>> = (0..k).map(|i| (0..k).map(|j| unit(i, j)).collect()).collect();
    let valid: Vec<usize> = (0..k).filter(|&i| norms[i] > tol).collect();
    let Some(&first) = valid.first() else { return vec![0.0; k] };
    let alpha = 1.0 / valid.len() as f64;
    let mut mean = vec![0.0; k];
    for &i in &valid {
        mean[i] = alpha;
    }
    let mean_norm = form(&u, &mean, &mean).max(0.0).sqrt();
    if mean_norm < tol {
        mean = vec![0.0; k];
        mean[first] = 1.0;
    } else {
        mean.iter_mut().for_each(|m| *m /= mean_norm);
    }
    for _ in 0..max_iter {
        let dots = apply(&u, &mean);
        let mut tangent = vec![0.0; k];
        for &i in &valid {
            let dot = dots[i].clamp(-1.0, 1.0);
            let theta = dot.acos();
            if theta < tol {
                continue;
            }
            let scale = alpha * (theta / theta.sin());
            tangent[i] += scale;
            for (t, m) in tangent.iter_mut().zip(&mean) {
                *t -= scale * dot * m;
            }
        }
        let tangent_norm = form(&u, &tangent, &tangent).max(0.0).sqrt();
        if tangent_norm < tol {
            break;
        }
        let (cos, sin) = (tangent_norm.cos(), tangent_norm.sin() / tangent_norm);
        for (m, t) in mean.iter_mut().zip(&tangent) {
            *m = cos * *m + sin * t;
        }
        let unit_norm = form(&u, &mean, &mean).max(0.0).sqrt();
        if unit_norm > tol {
            mean.iter_mut().for_each(|m| *m /= unit_norm);
        }
    }
    let scale: f64 = norms.iter().map(|n| n / k as f64).sum();
    (0..k).map(|i| if norms[i] == 0.0 { 0.0 } else { scale * mean[i] / norms[i] }).collect()
}

/// Model Stock's interpolation ratio from a Gram matrix of task vectors (pairs
/// with a zero vector count as orthogonal; 0 where the formula is singular).
pub fn model_stock_ratio(g: &Gram) -> f64 {
    let k = g.k();
    let mut sum = 0.0;
    let mut pairs = 0usize;
    for i in 0..k {
        for j in i + 1..k {
            let norms = (g.dot(i, i).sqrt() * g.dot(j, j).sqrt()).max(1e-6);
            sum += (g.dot(i, j) / norms).clamp(-1.0, 1.0);
            pairs += 1;
        }
    }
    let cos = sum / pairs.max(1) as f64;
    let denominator = 1.0 + (k as f64 - 1.0) * cos;
    if denominator.abs() < 1e-6 {
        0.0
    } else {
        k as f64 * cos / denominator
    }
}
