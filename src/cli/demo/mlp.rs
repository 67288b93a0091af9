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
    /// Share of the target's probability spread over the other classes.
    pub label_smoothing: f32,
    /// Leading layers kept fixed (a linear probe trains the last layer only).
    pub frozen: usize,
}

/// Examples per SGD step.
const BATCH: usize = 32;
/// SGD momentum.
const MOMENTUM: f32 = 0.9;

/// A gradient (or velocity) of one layer: weights, biases.
pub type Grad = (Vec<f32>, Vec<f32>);

/// A network's mean cross-entropy loss on a data set, with its gradient.
#[derive(Debug, Clone)]
pub struct LossGradient {
    /// The mean cross-entropy of the logits times the temperature β.
    pub loss: f64,
    /// Share of the data classified correctly.
    pub accuracy: f64,
    /// ∂loss/∂(weights, biases) of every layer, input first.
    pub gradient: Vec<Grad>,
    /// ∂loss/∂β.
    pub grad_temperature: f64,
}

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

    /// This network with its last layer replaced by a fresh one of `classes`
    /// outputs, He-initialised from `seed`.
    pub fn with_head(&self, classes: usize, seed: u64) -> Mlp {
        let mut layers = self.layers.clone();
        let inputs = layers.last().map_or(0, |l| l.inputs);
        let fresh = Mlp::new(&[inputs, classes], seed);
        layers.pop();
        layers.extend(fresh.layers);
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
                let z = bias + dot(row, input);
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

    /// The mean cross-entropy of `beta` times the logits on `data`, and its
    /// gradient with respect to every weight and bias and to `beta` (the loss a
    /// learned soup by gradient minimises). Sums in f64, per example in order.
    pub fn loss_gradient(&self, data: &Data, beta: f64) -> LossGradient {
        let mut gradient = self.zeros();
        let (mut loss, mut grad_temperature, mut correct) = (0.0, 0.0, 0);
        let mut acts = Vec::new();
        for i in 0..data.len() {
            self.forward(data.row(i), &mut acts);
            let logits = &acts[self.layers.len()];
            let z: Vec<f64> = logits.iter().map(|&v| beta * f64::from(v)).collect();
            let top = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = z.iter().map(|v| (v - top).exp()).sum();
            let label = data.y[i];
            loss += total.ln() + top - z[label];
            correct += usize::from(argmax(logits.iter().copied()) == label);
            // ∂loss/∂(βz) = softmax(βz) − onehot; ∂/∂z is β times that.
            let mut delta: Vec<f64> = z.iter().map(|v| (v - top).exp() / total).collect();
            delta[label] -= 1.0;
            grad_temperature +=
                delta.iter().zip(logits).map(|(d, &v)| d * f64::from(v)).sum::<f64>();
            let delta: Vec<f32> = delta.iter().map(|d| (beta * d) as f32).collect();
            self.backprop(&acts, delta, 0, &mut gradient);
        }
        let n = data.len().max(1) as f64;
        for (gw, gb) in &mut gradient {
            gw.iter_mut().chain(gb.iter_mut()).for_each(|g| *g = (f64::from(*g) / n) as f32);
        }
        LossGradient {
            loss: loss / n,
            accuracy: correct as f64 / n,
            gradient,
            grad_temperature: grad_temperature / n,
        }
    }

    /// A zero gradient of this network's shape.
    fn zeros(&self) -> Vec<Grad> {
        self.layers.iter().map(|l| (vec![0.0; l.w.len()], vec![0.0; l.b.len()])).collect()
    }

    /// Trains on `data` with `recipe`.
    pub fn train(&mut self, data: &Data, recipe: &Recipe) {
        let mut rng = Rng::new(recipe.seed);
        let (mut grad, mut velocity) = (self.zeros(), self.zeros());
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
                    self.backward(&acts, data.y[i], recipe, &mut grad);
                }
                let progress = step as f32 / steps as f32;
                let lr = recipe.lr * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos());
                let scale = 1.0 / batch.len() as f32;
                self.apply(&grad, &mut velocity, lr, scale, recipe);
                step += 1;
            }
        }
    }

    /// Adds the cross-entropy gradient of one example to `grad`.
    fn backward(&self, acts: &[Vec<f32>], label: usize, recipe: &Recipe, grad: &mut [Grad]) {
        let logits = &acts[self.layers.len()];
        let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|z| (z - top).exp()).collect();
        let total: f32 = exp.iter().sum();
        let spread = recipe.label_smoothing / exp.len() as f32;
        let mut delta: Vec<f32> = exp.iter().map(|e| e / total - spread).collect();
        delta[label] -= 1.0 - recipe.label_smoothing;
        self.backprop(acts, delta, recipe.frozen, grad);
    }

    /// Adds to `grad` the gradient of a loss whose derivative with respect to the
    /// logits is `delta`, down to layer `frozen` (layers before it get none).
    fn backprop(&self, acts: &[Vec<f32>], mut delta: Vec<f32>, frozen: usize, grad: &mut [Grad]) {
        for (l, layer) in self.layers.iter().enumerate().rev() {
            if l < frozen {
                break;
            }
            let input = &acts[l];
            let (gw, gb) = &mut grad[l];
            for ((row, gb), &d) in gw.chunks_exact_mut(layer.inputs).zip(gb.iter_mut()).zip(&delta)
            {
                *gb += d;
                axpy(row, d, input);
            }
            if l > frozen {
                let mut back = vec![0.0; layer.inputs];
                for (row, &d) in layer.w.chunks_exact(layer.inputs).zip(&delta) {
                    axpy(&mut back, d, row);
                }
                back.iter_mut().zip(input).filter(|(_, v)| **v <= 0.0).for_each(|(b, _)| *b = 0.0);
                delta = back;
            }
        }
    }

    /// One momentum step: the summed gradient times `scale`, plus weight decay.
    fn apply(&mut self, grad: &[Grad], vel: &mut [Grad], lr: f32, scale: f32, recipe: &Recipe) {
        let wd = recipe.weight_decay;
        let layers = self.layers.iter_mut().zip(grad).zip(vel).skip(recipe.frozen);
        for ((layer, (gw, gb)), (vw, vb)) in layers {
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

/// `Σ a[k]·b[k]`, in index order. The hot loops are plain `for` loops over zipped
/// slices rather than adaptor chains: as fast when optimised, and about twice as
/// fast in the unoptimised build the test suite runs the demo with.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sum = 0.0;
    for (x, y) in a.iter().zip(b) {
        sum += x * y;
    }
    sum
}

/// `y += alpha · x`.
fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::demo::data::{generate, Data, Spec, Split};

    fn spec() -> Spec {
        Spec {
            seed: 3,
            inputs: 8,
            content: 4,
            source_classes: 6,
            classes: 3,
            concepts_per_class: 2,
            source_train: 1200,
            target_train: 300,
            val: 300,
            test: 10,
        }
    }

    fn recipe(epochs: usize, frozen: usize) -> Recipe {
        let (lr, weight_decay, noise, seed, label_smoothing) = (0.05, 0.0, 0.0, 2, 0.0);
        Recipe { lr, weight_decay, epochs, noise, seed, label_smoothing, frozen }
    }

    #[test]
    fn pretraining_then_a_linear_probe_beats_chance_and_keeps_the_body() {
        let spec = spec();
        let mut model = Mlp::new(&[8, 16, 16, 6], 1);
        model.train(&generate(&spec, Split::SourceTrain), &recipe(20, 0));
        let mut probe = model.with_head(3, 5);
        assert_eq!(probe.sizes(), vec![8, 16, 16, 3]);
        probe.train(&generate(&spec, Split::TargetTrain), &recipe(20, 2));
        for (a, b) in model.layers.iter().zip(&probe.layers).take(2) {
            assert_eq!((&a.w, &a.b), (&b.w, &b.b));
        }
        let val = generate(&spec, Split::Val);
        assert!(probe.accuracy(&val) > 0.6, "{}", probe.accuracy(&val));
    }

    /// The smoothed cross-entropy of one example, in f64.
    fn loss(model: &Mlp, x: &[f32], label: usize, smoothing: f64) -> f64 {
        let mut acts = Vec::new();
        model.forward(x, &mut acts);
        let z: Vec<f64> = acts[model.layers.len()].iter().map(|&v| f64::from(v)).collect();
        let top = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_total = z.iter().map(|v| (v - top).exp()).sum::<f64>().ln() + top;
        let k = z.len() as f64;
        z.iter()
            .enumerate()
            .map(|(c, v)| {
                let q = smoothing / k + if c == label { 1.0 - smoothing } else { 0.0 };
                -q * (v - log_total)
            })
            .sum()
    }

    /// The mean cross-entropy of β·logits over `data`, in f64.
    fn mean_loss(model: &Mlp, data: &Data, beta: f64) -> f64 {
        let total: f64 = (0..data.len())
            .map(|i| {
                let mut acts = Vec::new();
                model.forward(data.row(i), &mut acts);
                let z: Vec<f64> =
                    acts[model.layers.len()].iter().map(|&v| beta * f64::from(v)).collect();
                let top = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                z.iter().map(|v| (v - top).exp()).sum::<f64>().ln() + top - z[data.y[i]]
            })
            .sum();
        total / data.len() as f64
    }

    #[test]
    fn the_evaluation_gradient_matches_finite_differences() {
        let spec = spec();
        let data = generate(&spec, Split::Val);
        let mut model = Mlp::new(&[8, 6, 5, 3], 11);
        let mut rng = Rng::new(5);
        model.layers.iter_mut().for_each(|l| l.b.iter_mut().for_each(|b| *b = 0.3 * rng.normal()));
        let beta = 1.7;
        let found = model.loss_gradient(&data, beta);
        assert!((found.loss - mean_loss(&model, &data, beta)).abs() < 1e-9);
        assert_eq!(found.accuracy, model.accuracy(&data));
        // ∂loss/∂β.
        let h = 1e-4;
        let numeric =
            (mean_loss(&model, &data, beta + h) - mean_loss(&model, &data, beta - h)) / (2.0 * h);
        assert!(
            (numeric - found.grad_temperature).abs() < 1e-6,
            "{numeric} vs {}",
            found.grad_temperature
        );
        // ∂loss/∂θ for a sample of parameters of every layer. ReLU's kinks make
        // larger steps cross units' thresholds (at 1e-2 the difference is 5 %
        // off); the forward pass is f32, so the tolerance is not tiny either.
        let h = 1e-4f32;
        for (l, (gw, gb)) in found.gradient.iter().enumerate() {
            for (bias, k) in
                [(false, 0), (false, gw.len() / 2), (false, gw.len() - 1), (true, gb.len() - 1)]
            {
                let nudged = |delta: f32| {
                    let mut m = model.clone();
                    let layer = &mut m.layers[l];
                    *(if bias { &mut layer.b[k] } else { &mut layer.w[k] }) += delta;
                    mean_loss(&m, &data, beta)
                };
                let numeric = (nudged(h) - nudged(-h)) / (2.0 * f64::from(h));
                let analytic = f64::from(if bias { gb[k] } else { gw[k] });
                assert!(
                    (numeric - analytic).abs() < 2e-2 * analytic.abs().max(0.01),
                    "layer {l} bias {bias} {k}: {numeric} vs {analytic}"
                );
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut model = Mlp::new(&[5, 7, 6, 4], 9);
        let mut rng = Rng::new(4);
        model.layers.iter_mut().for_each(|l| l.b.iter_mut().for_each(|b| *b = 0.3 * rng.normal()));
        let x: Vec<f32> = rng.normals(5);
        let (label, smoothing) = (2, 0.1);
        let mut recipe = recipe(1, 0);
        recipe.label_smoothing = smoothing;
        let mut acts = Vec::new();
        model.forward(&x, &mut acts);
        let mut grad: Vec<Grad> =
            model.layers.iter().map(|l| (vec![0.0; l.w.len()], vec![0.0; l.b.len()])).collect();
        model.backward(&acts, label, &recipe, &mut grad);
        let (h, s) = (1e-3, f64::from(smoothing));
        // Every parameter as (layer, is a bias, index), with its analytic gradient.
        let params = grad.iter().enumerate().flat_map(|(l, (gw, gb))| {
            let weights = gw.iter().enumerate().map(move |(k, g)| (l, false, k, *g));
            weights.chain(gb.iter().enumerate().map(move |(k, g)| (l, true, k, *g)))
        });
        for (l, bias, k, analytic) in params {
            let nudged = |delta: f32| {
                let mut m = model.clone();
                let layer = &mut m.layers[l];
                *(if bias { &mut layer.b[k] } else { &mut layer.w[k] }) += delta;
                loss(&m, &x, label, s)
            };
            let numeric = (nudged(h) - nudged(-h)) / (2.0 * f64::from(h));
            let analytic = f64::from(analytic);
            assert!(
                (numeric - analytic).abs() < 2e-3,
                "layer {l} bias {bias} {k}: {numeric} vs {analytic}"
            );
        }
    }
}
