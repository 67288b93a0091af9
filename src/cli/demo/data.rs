//! The demo's learning problem, generated in code from a seed so that every
//! process (the trainer and each `soup demo-eval`) rebuilds exactly the same data
//! without downloading anything.
//!
//! A random teacher network labels Gaussian inputs: shared features, then one
//! linear head per task. The *source* task (pretraining) and the *target* task
//! (fine-tuning, validation, test) share the features and have related heads, as a
//! pretrained model and a downstream task do. The target's training labels are
//! partly noisy, so fine-tunes differ and overfit in different ways.

use serde::{Deserialize, Serialize};

/// Everything needed to rebuild the data; stored in each checkpoint's config.json.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Seed of the teacher and of every split.
    pub seed: u64,
    /// Input dimension.
    pub inputs: usize,
    /// Number of classes.
    pub classes: usize,
    /// Examples in the source task's training split.
    pub source_train: usize,
    /// Examples in the target task's training split.
    pub target_train: usize,
    /// Examples in the target task's validation split.
    pub val: usize,
    /// Examples in the target task's test split.
    pub test: usize,
}

/// Width of the teacher's feature layer.
const TEACHER_FEATURES: usize = 24;
/// Share of target training labels replaced by a random class.
const LABEL_NOISE: f64 = 0.1;
/// How much of the target head is new (the rest is the source head).
const TARGET_SHIFT: f32 = 0.35;

/// One split of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Pretraining data.
    SourceTrain,
    /// Fine-tuning data.
    TargetTrain,
    /// Where soups are chosen.
    Val,
    /// Where soups are reported.
    Test,
}

/// Examples: `x` row-major, `inputs` values per example, and their labels.
#[derive(Debug, Clone)]
pub struct Data {
    /// Inputs, one row per example.
    pub x: Vec<f32>,
    /// Labels in `0..classes`.
    pub y: Vec<usize>,
    /// Values per example.
    pub inputs: usize,
}

impl Data {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Example `i`'s inputs.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.inputs..(i + 1) * self.inputs]
    }
}

/// SplitMix64 with Gaussian draws: small, seeded, the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A standard normal draw (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// The teacher: features `tanh(W x)`, then a head per task.
struct Teacher {
    features: Vec<f32>,
    source_head: Vec<f32>,
    target_head: Vec<f32>,
}

impl Teacher {
    fn new(spec: &Spec) -> Teacher {
        let mut rng = Rng::new(spec.seed ^ 0x7EAC_4E55);
        let mut draw = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f32>>();
        let features = draw(TEACHER_FEATURES * spec.inputs);
        let source_head = draw(spec.classes * TEACHER_FEATURES);
        let fresh = draw(spec.classes * TEACHER_FEATURES);
        let keep = (1.0 - TARGET_SHIFT * TARGET_SHIFT).sqrt();
        let target_head =
            source_head.iter().zip(&fresh).map(|(s, f)| keep * s + TARGET_SHIFT * f).collect();
        Teacher { features, source_head, target_head }
    }

    fn label(&self, x: &[f32], source: bool) -> usize {
        let scale = 1.0 / (x.len() as f32).sqrt();
        let h: Vec<f32> = self
            .features
            .chunks_exact(x.len())
            .map(|w| (scale * w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>()).tanh())
            .collect();
        let head = if source { &self.source_head } else { &self.target_head };
        let scores = head.chunks_exact(h.len()).map(|w| w.iter().zip(&h).map(|(a, b)| a * b).sum());
        argmax(scores)
    }
}

/// The index of the largest value (the first among equals).
pub fn argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Builds `split` of `spec`'s tasks.
pub fn generate(spec: &Spec, split: Split) -> Data {
    let (n, salt, source, noisy) = match split {
        Split::SourceTrain => (spec.source_train, 1, true, false),
        Split::TargetTrain => (spec.target_train, 2, false, true),
        Split::Val => (spec.val, 3, false, false),
        Split::Test => (spec.test, 4, false, false),
    };
    let teacher = Teacher::new(spec);
    let mut rng = Rng::new(spec.seed.wrapping_mul(31).wrapping_add(salt));
    let mut x = Vec::with_capacity(n * spec.inputs);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let row: Vec<f32> = (0..spec.inputs).map(|_| rng.normal()).collect();
        let mut label = teacher.label(&row, source);
        if noisy && rng.unit() < LABEL_NOISE {
            label = rng.below(spec.classes);
        }
        x.extend_from_slice(&row);
        y.push(label);
    }
    Data { x, y, inputs: spec.inputs }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_spec_gives_the_same_data_and_every_class_occurs() {
        let spec = Spec {
            seed: 7,
            inputs: 8,
            classes: 4,
            source_train: 10,
            target_train: 10,
            val: 400,
            test: 10,
        };
        let (a, b) = (generate(&spec, Split::Val), generate(&spec, Split::Val));
        assert_eq!(a.x, b.x);
        assert_eq!(a.y, b.y);
        assert_ne!(generate(&spec, Split::Test).x[..8], a.x[..8]);
        assert!((0..4).all(|c| a.y.contains(&c)));
    }
}
