//! The demo's models, trained as the model-soups paper trains its own: one model
//! pretrained on the broad source task, given a head for the target classes by a
//! linear probe (its body frozen), then fine-tuned end to end many times by a
//! random hyperparameter sweep; and, as the control, models trained on the target
//! task from scratch, each from its own random initialisation.

use super::data::{Data, Rng};
use super::mlp::{Mlp, Recipe};

/// How many models, how big, how long.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Seed of the sweep and of every initialisation.
    pub seed: u64,
    /// Layer widths of the pretrained network, input first (the last is the
    /// number of source classes).
    pub pretrain_sizes: [usize; 4],
    /// Target classes.
    pub classes: usize,
    /// Passes over the source data.
    pub pretrain_epochs: usize,
    /// Passes of the linear probe over the target data.
    pub probe_epochs: usize,
    /// Fine-tuned ingredients.
    pub fine_tunes: usize,
    /// Models trained from scratch.
    pub scratch: usize,
    /// Their passes over the target data.
    pub scratch_epochs: usize,
}

/// The pretrained network with a linear-probe head for the target classes: the
/// initialisation every fine-tune starts from.
pub fn pretrain(plan: &Plan, source: &Data, target: &Data) -> Mlp {
    let mut model = Mlp::new(&plan.pretrain_sizes, plan.seed);
    model.train(
        source,
        &Recipe {
            lr: 0.05,
            weight_decay: 1e-4,
            epochs: plan.pretrain_epochs,
            noise: 0.0,
            seed: plan.seed,
            label_smoothing: 0.0,
            frozen: 0,
        },
    );
    let mut probed = model.with_head(plan.classes, plan.seed.wrapping_add(7));
    let frozen = probed.layers.len() - 1;
    probed.train(
        target,
        &Recipe {
            lr: 0.05,
            weight_decay: 0.0,
            epochs: plan.probe_epochs,
            noise: 0.0,
            seed: plan.seed,
            label_smoothing: 0.0,
            frozen,
        },
    );
    probed
}

/// The fine-tuning sweep: learning rate log-uniform in [0.015, 0.04], weight decay,
/// epochs, input noise (the demo's data augmentation), label smoothing and the
/// seed of example order and noise drawn at random, as the paper's random search
/// draws them. Each recipe comes with a directory name that spells it out.
pub fn sweep(plan: &Plan) -> Vec<(String, Recipe)> {
    let mut rng = Rng::new(plan.seed.wrapping_mul(1000).wrapping_add(17));
    let (low, high) = (0.015f64.ln(), 0.04f64.ln());
    (0..plan.fine_tunes)
        .map(|k| {
            let recipe = Recipe {
                lr: (low + (high - low) * rng.unit()).exp() as f32,
                weight_decay: [0.0, 1e-4, 1e-3][rng.below(3)],
                epochs: [12, 16, 20][rng.below(3)],
                noise: [0.1, 0.2, 0.3][rng.below(3)],
                seed: plan.seed.wrapping_mul(100).wrapping_add(k as u64),
                label_smoothing: [0.0, 0.1][rng.below(2)],
                frozen: 0,
            };
            let name = format!(
                "ft-{k:02}-lr{:.4}-wd{}-ep{}-noise{}-ls{}",
                recipe.lr, recipe.weight_decay, recipe.epochs, recipe.noise, recipe.label_smoothing
            );
            (name, recipe)
        })
        .collect()
}

/// Model `k` of the control: a fresh initialisation of the fine-tunes' shape,
/// trained on the target data alone, with its directory name.
pub fn from_scratch(plan: &Plan, k: usize, target: &Data) -> (String, Mlp) {
    let seed = plan.seed.wrapping_mul(100).wrapping_add(50 + k as u64);
    let [inputs, hidden, hidden2, _] = plan.pretrain_sizes;
    let mut model = Mlp::new(&[inputs, hidden, hidden2, plan.classes], seed);
    model.train(
        target,
        &Recipe {
            lr: 0.1,
            weight_decay: 1e-4,
            epochs: plan.scratch_epochs,
            noise: 0.1,
            seed,
            label_smoothing: 0.0,
            frozen: 0,
        },
    );
    (format!("scratch-{k:02}-init{seed}"), model)
}
