//! The angle between fine-tuned deltas, φ(θᵢ, θⱼ) = ∠(θᵢ − θ₀, θⱼ − θ₀), which
//! Wortsman et al. (2022) found to predict how much averaging two models gains, and
//! the size of each delta relative to the base. Without a base, the same
//! quantities of the raw weights θᵢ: a plain similarity, not the paper's angle.
//!
//! Everything follows from the Gram matrices of one streaming pass
//! ([`crate::analysis::gram`]): `cos φ = Gᵢⱼ / √(Gᵢᵢ Gⱼⱼ)`.

use serde::Serialize;

use crate::analysis::gram::{gram_pass, Gram};
use crate::engine::checkpoint::Checkpoint;
use crate::engine::execute::RunOptions;
use crate::engine::layers::{group_names, LayerGroup};
use crate::error::{Error, Result};

/// Angles and norms over one set of tensors (the whole model or a layer group).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AngleMatrix {
    /// `all`, or the layer group's label.
    pub label: String,
    /// Float tensors in the set.
    pub tensors: usize,
    /// Elements per ingredient in the set.
    pub parameters: u64,
    /// k × k angles in degrees (0 on the diagonal); NaN (`null` in JSON) where a
    /// vector is zero and the angle is undefined.
    pub angles_deg: Vec<Vec<f64>>,
    /// k × k cosines.
    pub cosines: Vec<Vec<f64>>,
    /// With a base: `‖θᵢ − θ₀‖ / ‖θ₀‖`. Without one: `None`.
    pub delta_norms: Option<Vec<f64>>,
    /// `‖θᵢ − θ₀‖` with a base, `‖θᵢ‖` without.
    pub norms: Vec<f64>,
    /// `‖θ₀‖`, with a base.
    pub base_norm: Option<f64>,
}

impl AngleMatrix {
    /// Angles, cosines and norms from a Gram matrix.
    pub fn from_gram(label: String, gram: &Gram, with_base: bool) -> Self {
        let k = gram.k();
        let norms: Vec<f64> = (0..k).map(|i| gram.dot(i, i).sqrt()).collect();
        let mut cosines = vec![vec![f64::NAN; k]; k];
        let mut angles_deg = vec![vec![f64::NAN; k]; k];
        for i in 0..k {
            for j in 0..k {
                let denominator = norms[i] * norms[j];
                if denominator > 0.0 {
                    let c =
                        if i == j { 1.0 } else { (gram.dot(i, j) / denominator).clamp(-1.0, 1.0) };
                    cosines[i][j] = c;
                    angles_deg[i][j] = c.acos().to_degrees();
                }
            }
        }
        let base_norm = with_base.then(|| gram.base_norm_sq().sqrt());
        let delta_norms = base_norm.map(|b| norms.iter().map(|n| n / b).collect());
        AngleMatrix {
            label,
            tensors: gram.tensors(),
            parameters: gram.elements(),
            angles_deg,
            cosines,
            delta_norms,
            norms,
            base_norm,
        }
    }
}

/// The result of [`angles`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Angles {
    /// True when the angles are between deltas from a base; false for the
    /// similarity of raw weights.
    pub relative_to_base: bool,
    /// Over every float tensor.
    pub overall: AngleMatrix,
    /// Per layer group, in group order, when asked for.
    pub layers: Vec<AngleMatrix>,
}

/// Computes the angle matrix of `ingredients` (deltas from `base`, or raw weights
/// without one) in one streaming pass, and per layer group when `per_layer`.
pub fn angles(
    base: Option<&Checkpoint>,
    ingredients: &[Checkpoint],
    per_layer: bool,
    run: &RunOptions,
) -> Result<Angles> {
    let first = ingredients.first().ok_or(Error::NoIngredients)?;
    let (groups, index) = if per_layer {
        group_names(first.tensors().iter().map(|t| t.name.as_str()))
    } else {
        (Vec::new(), Default::default())
    };
    let group_of = |name: &str| index.get(name).copied();
    let report = gram_pass(base, ingredients, groups.len(), &group_of, run)?;
    let with_base = base.is_some();
    let layers = groups
        .iter()
        .zip(&report.groups)
        .filter(|(_, g)| g.tensors() > 0)
        .map(|(group, gram): (&LayerGroup, &Gram)| {
            AngleMatrix::from_gram(group.label(), gram, with_base)
        })
        .collect();
    Ok(Angles {
        relative_to_base: with_base,
        overall: AngleMatrix::from_gram("all".to_owned(), &report.total, with_base),
        layers,
    })
}
