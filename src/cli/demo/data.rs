//! The demo's learning problem, generated in code from a seed so that every
//! process (the trainer and each `soup demo-eval`) rebuilds exactly the same data
//! without downloading anything.
//!
//! An example is a *content* vector `c` and a *style* vector `s`, mixed into the
//! input by a fixed random rotation, `x = R [c; s]`; the label depends on the
//! content alone. Content is drawn around *concepts*, random points of the content
//! space. The *source* task (pretraining) is broad: many concepts, one class each,
//! plenty of examples, and styles drawn from a wide distribution, so a network
//! trained on it learns to tell concepts apart and to ignore style. The *target*
//! task asks for a few classes, each the union of several new concepts that lie
//! near source concepts: its classes are not convex, so learning them from its
//! small training set alone is hard, but easy from the source's features after
//! some adaptation. Target styles vary less than the source's (as photographs vary
//! less than all images do), and a share of the target's training labels is wrong.
//!
//! The shifted test sets keep the target's classes and change the inputs only
//! (covariate shifts, as ImageNet's sketches and renditions do): styles four times
//! heavier, every style moved by one offset, noise on every input, and content
//! pulled toward its mean.

use serde::{Deserialize, Serialize};

/// Everything needed to rebuild the data; stored in each checkpoint's config.json.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Seed of the concepts, the rotation and every split.
    pub seed: u64,
    /// Input dimension.
    pub inputs: usize,
    /// Of which content (the rest is style).
    pub content: usize,
    /// Concepts (and classes) of the source task.
    pub source_classes: usize,
    /// Classes of the target task.
    pub classes: usize,
    /// Concepts per target class.
    pub concepts_per_class: usize,
    /// Examples in the source task's training split.
    pub source_train: usize,
    /// Examples in the target task's training split.
    pub target_train: usize,
    /// Examples in the target task's validation split.
    pub val: usize,
    /// Examples in the target task's test split and in each shifted test set.
    pub test: usize,
}

/// Standard deviation of content around its concept.
const SPREAD: f32 = 0.5;
/// How far a target concept lies from its source concept: the share of its
/// variance that is new.
const NOVELTY: f32 = 0.25;
/// Standard deviation of style in the source task.
const SOURCE_STYLE: f32 = 1.0;
/// Standard deviation of style in the target task.
const TARGET_STYLE: f32 = 0.5;
/// Share of target training labels replaced by a random class.
const LABEL_NOISE: f64 = 0.2;
/// [`Shift::HeavyStyle`]: style scaled by this.
const HEAVY: f32 = 4.0;
/// [`Shift::StyleOffset`]: length of the offset added to every style.
const OFFSET: f32 = 3.0;
/// [`Shift::Noise`]: standard deviation of the noise added to every input.
const NOISE: f32 = 0.6;
/// [`Shift::Faint`]: content scaled by this.
const FAINT: f32 = 0.6;

/// A covariate shift of the target task's test inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shift {
    /// Styles four times heavier than in training.
    HeavyStyle,
    /// Every style moved by one fixed offset.
    StyleOffset,
    /// Gaussian noise on every input.
    Noise,
    /// Content pulled toward its mean.
    Faint,
}

impl Shift {
    /// Every shift, in table order.
    pub const ALL: [Shift; 4] = [Shift::HeavyStyle, Shift::StyleOffset, Shift::Noise, Shift::Faint];

    /// Its name in tables, JSON and `soup demo-eval --split`.
    pub fn name(self) -> &'static str {
        match self {
            Shift::HeavyStyle => "heavy-style",
            Shift::StyleOffset => "style-offset",
            Shift::Noise => "noise",
            Shift::Faint => "faint",
        }
    }
}

/// One split of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Pretraining data.
    SourceTrain,
    /// Fine-tuning data.
    TargetTrain,
    /// Where soups are chosen.
    Val,
    /// Where soups are reported, in distribution.
    Test,
    /// Where they are reported under a shift.
    Shifted(Shift),
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

    /// `n` standard normal draws.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// The hidden structure of both tasks, drawn from the spec's seed.
struct World {
    /// `inputs × inputs` rotation, row-major.
    mix: Vec<f32>,
    /// Source concepts, `source_classes × content`.
    source: Vec<f32>,
    /// Target concepts, `classes × concepts_per_class × content`; concept `j`
    /// belongs to class `j % classes`.
    target: Vec<f32>,
    /// The style offset of [`Shift::StyleOffset`], unit length.
    offset: Vec<f32>,
}

impl World {
    fn new(spec: &Spec) -> World {
        let mut rng = Rng::new(spec.seed ^ 0x7EAC_4E55);
        let mix = orthonormal(rng.normals(spec.inputs * spec.inputs), spec.inputs);
        let source = rng.normals(spec.source_classes * spec.content);
        let (keep, new) = ((1.0 - NOVELTY).sqrt(), NOVELTY.sqrt());
        let mut target = Vec::with_capacity(spec.classes * spec.concepts_per_class * spec.content);
        for _ in 0..spec.classes * spec.concepts_per_class {
            let near = rng.below(spec.source_classes);
            let fresh = rng.normals(spec.content);
            let concept = &source[near * spec.content..(near + 1) * spec.content];
            target.extend(concept.iter().zip(&fresh).map(|(c, f)| keep * c + new * f));
        }
        let mut offset = rng.normals(spec.inputs - spec.content);
        let norm = offset.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
        offset.iter_mut().for_each(|v| *v /= norm);
        World { mix, source, target, offset }
    }
}

/// Gram–Schmidt on the rows of an `n × n` matrix.
fn orthonormal(mut m: Vec<f32>, n: usize) -> Vec<f32> {
    for i in 0..n {
        for j in 0..i {
            let dot: f32 = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum();
            for k in 0..n {
                m[i * n + k] -= dot * m[j * n + k];
            }
        }
        let norm = (0..n).map(|k| m[i * n + k] * m[i * n + k]).sum::<f32>().sqrt().max(1e-6);
        (0..n).for_each(|k| m[i * n + k] /= norm);
    }
    m
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

/// Builds `split` of `spec`'s tasks. Example `i` is of class `i % classes`, so
/// every split holds each class equally often (up to one) and chance accuracy is
/// one over the number of classes.
pub fn generate(spec: &Spec, split: Split) -> Data {
    let (n, salt) = match split {
        Split::SourceTrain => (spec.source_train, 1),
        Split::TargetTrain => (spec.target_train, 2),
        Split::Val => (spec.val, 3),
        Split::Test => (spec.test, 4),
        Split::Shifted(shift) => (spec.test, 5 + shift as u64),
    };
    let source = split == Split::SourceTrain;
    let world = World::new(spec);
    let mut rng = Rng::new(spec.seed.wrapping_mul(31).wrapping_add(salt));
    let (classes, per_class, concepts, style_scale) = if source {
        (spec.source_classes, 1, &world.source, SOURCE_STYLE)
    } else {
        (spec.classes, spec.concepts_per_class, &world.target, TARGET_STYLE)
    };
    let mut x = Vec::with_capacity(n * spec.inputs);
    let mut y = Vec::with_capacity(n);
    let mut latent = vec![0.0f32; spec.inputs];
    for i in 0..n {
        let label = i % classes;
        let concept = label + classes * rng.below(per_class);
        let centre = &concepts[concept * spec.content..(concept + 1) * spec.content];
        let (content, style) = latent.split_at_mut(spec.content);
        content.iter_mut().zip(centre).for_each(|(v, c)| *v = c + SPREAD * rng.normal());
        style.iter_mut().for_each(|v| *v = style_scale * rng.normal());
        match split {
            Split::Shifted(Shift::HeavyStyle) => style.iter_mut().for_each(|v| *v *= HEAVY),
            Split::Shifted(Shift::StyleOffset) => {
                style.iter_mut().zip(&world.offset).for_each(|(v, o)| *v += OFFSET * o)
            }
            Split::Shifted(Shift::Faint) => content.iter_mut().for_each(|v| *v *= FAINT),
            _ => {}
        }
        let start = x.len();
        x.extend(
            world
                .mix
                .chunks_exact(spec.inputs)
                .map(|r| r.iter().zip(&latent).map(|(a, b)| a * b).sum::<f32>()),
        );
        if split == Split::Shifted(Shift::Noise) {
            x[start..].iter_mut().for_each(|v| *v += NOISE * rng.normal());
        }
        let noisy = split == Split::TargetTrain && rng.unit() < LABEL_NOISE;
        y.push(if noisy { rng.below(classes) } else { label });
    }
    Data { x, y, inputs: spec.inputs }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            seed: 7,
            inputs: 8,
            content: 4,
            source_classes: 6,
            classes: 4,
            concepts_per_class: 3,
            source_train: 12,
            target_train: 2000,
            val: 400,
            test: 4000,
        }
    }

    #[test]
    fn the_same_spec_gives_the_same_data_and_classes_are_balanced() {
        let spec = spec();
        let (a, b) = (generate(&spec, Split::Val), generate(&spec, Split::Val));
        assert_eq!((&a.x, &a.y), (&b.x, &b.y));
        assert_eq!(a.x.len(), 400 * 8);
        assert_ne!(generate(&spec, Split::Test).x[..8], a.x[..8]);
        assert!((0..4).all(|c| a.y.iter().filter(|&&y| y == c).count() == 100));
        let source = generate(&spec, Split::SourceTrain);
        assert!((0..6).all(|c| source.y.iter().filter(|&&y| y == c).count() == 2));
    }

    /// The latent `[c; s]` of every example: the rotation's transpose undoes it.
    fn latents(data: &Data, world: &World) -> Vec<Vec<f64>> {
        let n = data.inputs;
        (0..data.len())
            .map(|i| {
                let x = data.row(i);
                (0..n)
                    .map(|j| (0..n).map(|k| f64::from(world.mix[k * n + j] * x[k])).sum())
                    .collect()
            })
            .collect()
    }

    /// Mean and standard deviation of latent coordinates `range` over all examples.
    fn moments(latents: &[Vec<f64>], range: std::ops::Range<usize>) -> (f64, f64) {
        let values: Vec<f64> = latents.iter().flat_map(|l| l[range.clone()].to_vec()).collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / values.len() as f64;
        (mean, var.sqrt())
    }

    #[test]
    fn the_rotation_is_orthonormal_and_the_shifts_change_what_they_say() {
        let spec = spec();
        let world = World::new(&spec);
        let n = spec.inputs;
        for i in 0..n {
            for j in 0..n {
                let dot: f32 = (0..n).map(|k| world.mix[i * n + k] * world.mix[j * n + k]).sum();
                assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-5, "{i} {j}: {dot}");
            }
        }
        let latent = |split| latents(&generate(&spec, split), &world);
        let (content, style) = (0..spec.content, spec.content..n);
        let test = latent(Split::Test);
        let (_, test_style) = moments(&test, style.clone());
        assert!((test_style - f64::from(TARGET_STYLE)).abs() < 0.02, "{test_style}");
        let (_, heavy) = moments(&latent(Split::Shifted(Shift::HeavyStyle)), style.clone());
        assert!((heavy / test_style - f64::from(HEAVY)).abs() < 0.15, "{heavy}");
        // The offset moves every style by OFFSET along one unit direction.
        let offset = latent(Split::Shifted(Shift::StyleOffset));
        let along = |l: &Vec<f64>| -> f64 {
            l[style.clone()].iter().zip(&world.offset).map(|(v, o)| v * f64::from(*o)).sum()
        };
        let moved = offset.iter().map(along).sum::<f64>() / offset.len() as f64
            - test.iter().map(along).sum::<f64>() / test.len() as f64;
        assert!((moved - f64::from(OFFSET)).abs() < 0.05, "{moved}");
        let (_, test_content) = moments(&test, content.clone());
        let (_, faint) = moments(&latent(Split::Shifted(Shift::Faint)), content.clone());
        assert!((faint / test_content - f64::from(FAINT)).abs() < 0.05, "{faint}");
        let (_, noisy) = moments(&latent(Split::Shifted(Shift::Noise)), style);
        let expected = (test_style * test_style + f64::from(NOISE * NOISE)).sqrt();
        assert!((noisy - expected).abs() < 0.03, "{noisy} vs {expected}");
    }

    #[test]
    fn only_the_target_training_split_has_wrong_labels() {
        let spec = spec();
        let clean = |split| {
            let data = generate(&spec, split);
            (0..data.len()).filter(|&i| data.y[i] == i % spec.classes).count() as f64
                / data.len() as f64
        };
        assert_eq!(clean(Split::Test), 1.0);
        assert_eq!(clean(Split::Shifted(Shift::Noise)), 1.0);
        // A wrong label is a random class, right by chance a quarter of the time.
        let expected = 1.0 - LABEL_NOISE * 0.75;
        assert!(
            (clean(Split::TargetTrain) - expected).abs() < 0.03,
            "{}",
            clean(Split::TargetTrain)
        );
    }
}
