//! A small multilayer perceptron (ReLU hidden layers, softmax cross-entropy) and
//! SGD with momentum, written out by hand: the demo needs a real network trained
//! for real, not a machine-learning framework.

use super::data::{argmax, Data, Rng};

/// One fully connected layer: `w` is `outputs × inputs`, row-major.
#[derive(Debug, Clone)]
pub struct Dense {
    /// Weights, one row per output.
    pub w: Vec<f32>,
    /// Biases.
    pub b: Vec<f32>,
    /// Inputs per example.
    pub inputs: usize,
}

impl Dense {
    fn outputs(&self) -> usize {
        self.b.len()
    }
}

/// The network: ReLU after every layer but the last, which gives the logits.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// The layers, input first.
    pub layers: Vec<Dense>,
}

/// How one model is trained.
#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    /// Peak learning rate (cosine-decayed to zero).
    pub lr: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Passes over the training data.
    pub epochs: usize,
    /// Standard deviation of Gaussian noise added to the inputs (augmentation).
    pub noise: f32,
    /// Seed of the example order and the noise.
    pub seed: u64,
}

/// Examples per SGD step.
const BATCH: usize = 32;
/// SGD momentum.
const MOMENTUM: f32 = 0.9;

/// A gradient (or velocity) of one layer: weights, biases.
type Grad = (Vec<f32>, Vec<f32>);

impl Mlp {
    /// A network with layer widths `sizes` (input first), He-initialised from `seed`.
    pub fn new(sizes: &[usize], seed: u64) -> Mlp {
        let mut rng = Rng::new(seed);
        let layers = sizes
            .windows(2)
            .map(|pair| {
                let scale = (2.0 / pair[0] as f32).sqrt();
                Dense {
                    w: (0..pair[0] * pair[1]).map(|_| scale * rng.normal()).collect(),
                    b: vec![0.0; pair[1]],
                    inputs: pair[0],
                }
            })
            .collect();
        Mlp { layers }
    }

    /// Layer widths, input first.
    pub fn sizes(&self) -> Vec<usize> {
        let first = self.layers.first().map(|l| l.inputs);
        first.into_iter().chain(self.layers.iter().map(Dense::outputs)).collect()
    }

    /// Runs `x` through the network; `acts[0]` is `x`, the last entry the logits.
    fn forward(&self, x: &[f32], acts: &mut Vec<Vec<f32>>) {
        acts.resize(self.layers.len() + 1, Vec::new());
        acts[0].clear();
        acts[0].extend_from_slice(x);
        for (l, layer) in self.layers.iter().enumerate() {
            let last = l + 1 == self.layers.len();
            let (done, rest) = acts.split_at_mut(l + 1);
            let (input, out) = (&done[l], &mut rest[0]);
            out.clear();
            for (row, bias) in layer.w.chunks_exact(layer.inputs).zip(&layer.b) {
                let z = bias + row.iter().zip(input).map(|(w, v)| w * v).sum::<f32>();
                out.push(if last { z } else { z.max(0.0) });
            }
        }
    }

    /// Share of `data` classified correctly.
    pub fn accuracy(&self, data: &Data) -> f64 {
        let mut acts = Vec::new();
        let correct = (0..data.len())
            .filter(|&i| {
                self.forward(data.row(i), &mut acts);
                acts.last().map(|l| argmax(l.iter().copied())) == Some(data.y[i])
            })
            .count();
        correct as f64 / data.len().max(1) as f64
    }

    /// Trains on `data` with `recipe`.
    pub fn train(&mut self, data: &Data, recipe: &Recipe) {
        let mut rng = Rng::new(recipe.seed);
        let zeros = |m: &Mlp| -> Vec<Grad> {
            m.layers.iter().map(|l| (vec![0.0; l.w.len()], vec![0.0; l.b.len()])).collect()
        };
        let (mut grad, mut velocity) = (zeros(self), zeros(self));
        let mut order: Vec<usize> = (0..data.len()).collect();
        let steps = (recipe.epochs * data.len().div_ceil(BATCH)).max(1);
        let (mut step, mut acts, mut input) = (0, Vec::new(), Vec::new());
        for _ in 0..recipe.epochs {
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            for batch in order.chunks(BATCH) {
                for g in grad.iter_mut() {
                    g.0.fill(0.0);
                    g.1.fill(0.0);
                }
                for &i in batch {
                    input.clear();
                    input.extend(data.row(i).iter().map(|v| v + recipe.noise * rng.normal()));
                    self.forward(&input, &mut acts);
                    self.backward(&acts, data.y[i], &mut grad);
                }
                let progress = step as f32 / steps as f32;
                let lr = recipe.lr * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos());
                let scale = 1.0 / batch.len() as f32;
                self.apply(&grad, &mut velocity, lr, scale, recipe.weight_decay);
                step += 1;
            }
        }
    }

    /// Adds the cross-entropy gradient of one example to `grad`.
    fn backward(&self, acts: &[Vec<f32>], label: usize, grad: &mut [Grad]) {
        let logits = &acts[self.layers.len()];
        let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|z| (z - top).exp()).collect();
        let total: f32 = exp.iter().sum();
        let mut delta: Vec<f32> = exp.iter().map(|e| e / total).collect();
        delta[label] -= 1.0;
        for (l, layer) in self.layers.iter().enumerate().rev() {
            let input = &acts[l];
            let (gw, gb) = &mut grad[l];
            for ((row, gb), d) in gw.chunks_exact_mut(layer.inputs).zip(gb.iter_mut()).zip(&delta) {
                *gb += d;
                row.iter_mut().zip(input).for_each(|(g, v)| *g += d * v);
            }
            if l > 0 {
                let mut back = vec![0.0; layer.inputs];
                for (row, d) in layer.w.chunks_exact(layer.inputs).zip(&delta) {
                    back.iter_mut().zip(row).for_each(|(b, w)| *b += d * w);
                }
                back.iter_mut().zip(input).filter(|(_, v)| **v <= 0.0).for_each(|(b, _)| *b = 0.0);
                delta = back;
            }
        }
    }

    /// One momentum step: the summed gradient times `scale`, plus weight decay.
    fn apply(&mut self, grad: &[Grad], vel: &mut [Grad], lr: f32, scale: f32, wd: f32) {
        for ((layer, (gw, gb)), (vw, vb)) in self.layers.iter_mut().zip(grad).zip(vel) {
            for ((w, g), v) in layer.w.iter_mut().zip(gw).zip(vw.iter_mut()) {
                *v = MOMENTUM * *v + lr * (scale * g + wd * *w);
                *w -= *v;
            }
            for ((b, g), v) in layer.b.iter_mut().zip(gb).zip(vb.iter_mut()) {
                *v = MOMENTUM * *v + lr * scale * g;
                *b -= *v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::demo::data::{generate, Spec, Split};

    #[test]
    fn training_beats_chance() {
        let spec = Spec {
            seed: 3,
            inputs: 8,
            classes: 3,
            source_train: 600,
            target_train: 10,
            val: 300,
            test: 10,
        };
        let mut model = Mlp::new(&[8, 16, 3], 1);
        let recipe = Recipe { lr: 0.05, weight_decay: 0.0, epochs: 20, noise: 0.0, seed: 2 };
        model.train(&generate(&spec, Split::SourceTrain), &recipe);
        assert_eq!(model.sizes(), vec![8, 16, 3]);
        let val = generate(&spec, Split::Val);
        // The source task's labels differ from the target's; the shared features
        // still put a trained model well above chance on the target.
        assert!(model.accuracy(&val) > 0.5, "{}", model.accuracy(&val));
    }
}
