//! Learned soups by gradient, in the library: the streaming pass that turns a
//! gradient file into `⟨∇θL, θᵢ⟩` per group (against an f64 reference computed
//! here, bit-identical at any thread count and chunk size, and every kind of bad
//! gradient file refused with a clear error), and Adam through the softmax
//! parametrisation against in-process losses with known optima.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use common::{write_file, Fmt, RawTensor, Rng};
use modelsoup::analysis::gradient::{gradient_dots, GradientDots};
use modelsoup::search::candidate::Mix;
use modelsoup::search::descent::{chain, descend, Descended, Descent, GradientScorer, Progress};
use modelsoup::search::groups::Grouping;
use modelsoup::search::journal::Gradient;
use modelsoup::search::scorer::Ask;
use modelsoup::search::sequential::Scored;
use modelsoup::{Checkpoint, Error, RunOptions};

// ---------------------------------------------------------------------------
// The dot-product pass
// ---------------------------------------------------------------------------

/// Tensors of odd sizes (a scalar, an empty one, one longer than several chunks),
/// their groups, and a non-float tensor the pass must skip.
const TENSORS: [(&str, &[usize], usize); 5] = [
    ("embed.weight", &[37, 11], 0),
    ("layers.0.w", &[3001], 1),
    ("layers.0.scale", &[], 1),
    ("layers.1.empty", &[0, 4], 2),
    ("head.weight", &[5, 129], 2),
];

/// k ingredients, each tensor in its own format (varying per ingredient), with
/// an `I64` tensor; returns the paths and the values as stored (decoded).
fn ingredients(dir: &Path, k: usize, seed: u64) -> (Vec<PathBuf>, Vec<Vec<Vec<f64>>>) {
    let mut rng = Rng::new(seed);
    let formats = [Fmt::BF16, Fmt::F32, Fmt::F16, Fmt::F64];
    let mut paths = Vec::new();
    let mut all = Vec::new();
    for i in 0..k {
        let mut raw = Vec::new();
        let mut values = Vec::new();
        for (t, (name, shape, _)) in TENSORS.iter().enumerate() {
            let fmt = formats[(i + t) % formats.len()];
            let n: usize = shape.iter().product();
            let v: Vec<f64> = (0..n).map(|_| rng.value()).collect();
            let t = RawTensor::float(name, fmt, shape, &v);
            values.push(fmt.decode(&t.data));
            raw.push(t);
        }
        raw.insert(2, RawTensor::raw("step", "I64", &[1], 7i64.to_le_bytes().to_vec()));
        let path = dir.join(format!("in{i}.safetensors"));
        write_file(&path, &raw, i % 2 == 0);
        paths.push(path);
        all.push(values);
    }
    (paths, all)
}

/// A gradient file of `fmt` for the tensors whose index is in `present`; returns
/// its values (decoded, 0 for the tensors left out).
fn gradient_file(path: &Path, fmt: Fmt, present: &[usize], seed: u64) -> Vec<Vec<f64>> {
    let mut rng = Rng::new(seed);
    let mut raw = Vec::new();
    let mut values = Vec::new();
    for (t, (name, shape, _)) in TENSORS.iter().enumerate() {
        let n: usize = shape.iter().product();
        if present.contains(&t) {
            let v: Vec<f64> = (0..n).map(|_| rng.value()).collect();
            let tensor = RawTensor::float(name, fmt, shape, &v);
            values.push(fmt.decode(&tensor.data));
            raw.push(tensor);
        } else {
            values.push(vec![0.0; n]);
        }
    }
    raw.reverse(); // the file's order is not the model's
    write_file(path, &raw, false);
    values
}

fn open_all(paths: &[PathBuf]) -> Vec<Checkpoint> {
    paths.iter().map(|p| Checkpoint::open(p).unwrap()).collect()
}

fn group_of(name: &str) -> Option<usize> {
    TENSORS.iter().find(|t| t.0 == name).map(|t| t.2)
}

fn pass(path: &Path, ingredients: &[Checkpoint], threads: usize, chunk: usize) -> GradientDots {
    let run = RunOptions { threads, chunk_elements: chunk, ..RunOptions::default() };
    gradient_dots(path, ingredients, 3, &group_of, &run).unwrap()
}

#[test]
fn dot_products_match_an_f64_reference_and_every_thread_count() {
    let dir = common::tempdir();
    let k = 4;
    let (paths, thetas) = ingredients(dir.path(), k, 1);
    let ingredients = open_all(&paths);
    for (fmt, present) in [
        (Fmt::F32, vec![0, 1, 2, 3, 4]),
        (Fmt::BF16, vec![1, 4]),
        (Fmt::F16, vec![0, 2]),
        (Fmt::F64, vec![]),
    ] {
        let path = dir.path().join(format!("grad-{}.safetensors", fmt.name()));
        let grads = gradient_file(&path, fmt, &present, 2);
        // The reference: plain f64 sums, tensor by tensor, element by element.
        let mut want = vec![vec![0.0f64; k]; 3];
        let mut norm_sq = 0.0;
        for (t, (_, _, group)) in TENSORS.iter().enumerate() {
            for (e, g) in grads[t].iter().enumerate() {
                norm_sq += g * g;
                for (i, theta) in thetas.iter().enumerate() {
                    want[*group][i] += g * theta[t][e];
                }
            }
        }
        let reference = pass(&path, &ingredients, 1, 1 << 16);
        assert_eq!(reference.tensors, present.len());
        for (g, row) in want.iter().enumerate() {
            for (i, w) in row.iter().enumerate() {
                let got = reference.dots[g][i];
                assert!(
                    (got - w).abs() <= 1e-12 * w.abs().max(1e-300),
                    "{fmt:?} [{g}][{i}]: {got} vs {w}"
                );
                if !present.iter().any(|&t| TENSORS[t].2 == g) {
                    assert_eq!(got, 0.0, "a group without gradient tensors has zero dots");
                }
            }
        }
        assert!((reference.norm_sq - norm_sq).abs() <= 1e-12 * norm_sq);
        // The same bits at any thread count (chunks combined in order).
        for threads in [2, 3, 8] {
            assert_eq!(pass(&path, &ingredients, threads, 1 << 16), reference, "{threads} threads");
        }
        // Other chunk sizes change the order of the sums, but each is stable
        // across thread counts.
        for chunk in [1, 7, 1000] {
            let one = pass(&path, &ingredients, 1, chunk);
            assert_eq!(pass(&path, &ingredients, 3, chunk), one, "chunk {chunk}");
            for (a, b) in one.dots.iter().flatten().zip(reference.dots.iter().flatten()) {
                assert!((a - b).abs() <= 1e-12 * b.abs().max(1e-300));
            }
        }
    }
}

/// The error of the pass over a gradient file made of `tensors`.
fn error_for(dir: &Path, ingredients: &[Checkpoint], name: &str, tensors: &[RawTensor]) -> String {
    let path = dir.join(name);
    write_file(&path, tensors, true);
    let run = RunOptions::default();
    let err = gradient_dots(&path, ingredients, 3, &group_of, &run).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text} names the file");
    text
}

#[test]
fn bad_gradient_files_are_refused_naming_the_file_and_the_tensor() {
    let dir = common::tempdir();
    let (paths, _) = ingredients(dir.path(), 2, 3);
    let ingredients = open_all(&paths);
    let f32s = |name: &str, shape: &[usize], v: f64| {
        let n: usize = shape.iter().product();
        RawTensor::float(name, Fmt::F32, shape, &vec![v; n])
    };
    let d = dir.path();
    let e = error_for(d, &ingredients, "a", &[f32s("nope.weight", &[2], 1.0)]);
    assert!(e.contains("tensor \"nope.weight\" is not a tensor of the soup"), "{e}");
    let e = error_for(d, &ingredients, "b", &[f32s("head.weight", &[129, 5], 1.0)]);
    assert!(e.contains("\"head.weight\" has shape [129, 5], but the soup's is [5, 129]"), "{e}");
    let e = error_for(
        d,
        &ingredients,
        "c",
        &[RawTensor::raw("layers.0.scale", "I32", &[], vec![0; 4])],
    );
    assert!(
        e.contains("\"layers.0.scale\" is I32; a gradient must be F32, BF16, F16 or F64"),
        "{e}"
    );
    let e = error_for(d, &ingredients, "d", &[RawTensor::raw("step", "I64", &[1], vec![0; 8])]);
    assert!(e.contains("\"step\" is I64 in the soup, which is copied, not mixed"), "{e}");
    let mut nan = vec![0.5; 3001];
    nan[2999] = f64::NAN;
    let e = error_for(
        d,
        &ingredients,
        "e",
        &[RawTensor::float("layers.0.w", Fmt::BF16, &[3001], &nan)],
    );
    assert!(e.contains("\"layers.0.w\" holds NaN at element 2999"), "{e}");
    let e = error_for(d, &ingredients, "f", &[f32s("embed.weight", &[37, 11], f64::INFINITY)]);
    assert!(e.contains("\"embed.weight\" holds inf at element 0"), "{e}");
    // Headers that lie, and files that are not there.
    let run = RunOptions::default();
    let err = |path: &Path| gradient_dots(path, &ingredients, 3, &group_of, &run).unwrap_err();
    let good =
        common::safetensors_bytes(&[f32s("head.weight", &[5, 129], 1.0)], &BTreeMap::new(), true);
    let truncated = d.join("truncated");
    std::fs::write(&truncated, &good[..good.len() - 4]).unwrap();
    assert!(matches!(err(&truncated), Error::Header { .. }), "{}", err(&truncated));
    let garbage = d.join("garbage");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    assert!(matches!(err(&garbage), Error::Header { .. }), "{}", err(&garbage));
    let missing = err(&d.join("missing"));
    assert!(missing.to_string().contains("the evaluator wrote no gradient"), "{missing}");
    let not_file = err(d);
    assert!(not_file.to_string().contains("not a regular file"), "{not_file}");
    // An empty file (no tensors) is a zero gradient.
    let empty = d.join("empty");
    write_file(&empty, &[], true);
    let zero = gradient_dots(&empty, &ingredients, 3, &group_of, &run).unwrap();
    assert_eq!((zero.dots, zero.norm_sq, zero.tensors), (vec![vec![0.0; 2]; 3], 0.0, 0));
}

// ---------------------------------------------------------------------------
// Adam through the softmax, in process
// ---------------------------------------------------------------------------

/// k ingredients as random vectors per group and a loss
/// `Σ_g ‖Σᵢ w_gi·θ_gi − θ*_g‖² (+ (β − β*)²)`, with its exact gradient.
struct Quadratic {
    /// `vectors[g][i]`: ingredient i's parameters in group g.
    vectors: Vec<Vec<Vec<f64>>>,
    /// The optimum's coefficients per group.
    target: Vec<Vec<f64>>,
    /// The optimal temperature, when it is learned.
    beta: Option<f64>,
    /// Evaluations made, with and without a gradient.
    calls: Mutex<(usize, usize)>,
}

impl Quadratic {
    fn new(k: usize, target: Vec<Vec<f64>>, beta: Option<f64>, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let vectors = target
            .iter()
            .map(|_| {
                let base: Vec<f64> = (0..60).map(|_| rng.unit() * 2.0 - 1.0).collect();
                (0..k)
                    .map(|_| base.iter().map(|b| b + 0.5 * (rng.unit() * 2.0 - 1.0)).collect())
                    .collect()
            })
            .collect();
        Quadratic { vectors, target, beta, calls: Mutex::new((0, 0)) }
    }

    fn mixed(&self, g: usize, w: &[f64]) -> Vec<f64> {
        let v = &self.vectors[g];
        (0..v[0].len()).map(|j| v.iter().zip(w).map(|(x, w)| w * x[j]).sum()).collect()
    }

    /// The loss at `w` and β, and its gradient: `⟨2(θ − θ*), θᵢ⟩` per group, ∂L/∂β.
    fn loss(&self, weights: &[Vec<f64>], beta: Option<f64>) -> (f64, Vec<f64>, Option<f64>) {
        let mut loss = 0.0;
        let mut dots = Vec::new();
        for (g, w) in weights.iter().enumerate() {
            let residual: Vec<f64> = self
                .mixed(g, w)
                .iter()
                .zip(self.mixed(g, &self.target[g]))
                .map(|(a, b)| a - b)
                .collect();
            loss += residual.iter().map(|r| r * r).sum::<f64>();
            for theta in &self.vectors[g] {
                dots.push(residual.iter().zip(theta).map(|(r, t)| 2.0 * r * t).sum());
            }
        }
        let grad_beta = match (beta, self.beta) {
            (Some(b), Some(target)) => {
                loss += (b - target) * (b - target);
                Some(2.0 * (b - target))
            }
            _ => None,
        };
        (loss, dots, grad_beta)
    }
}

fn scored(loss: f64) -> Scored {
    Scored {
        candidate: "quadratic".into(),
        score: Ok(loss),
        reused: false,
        cancelled: false,
        metrics: Default::default(),
        log: None,
    }
}

impl GradientScorer for Quadratic {
    fn score_point(
        &self,
        mix: &Mix,
        ask: Ask<'_>,
        _cancel: &AtomicBool,
    ) -> modelsoup::search::Result<(Scored, Option<Gradient>)> {
        let (loss, dots, temperature) = self.loss(&mix.weights, ask.temperature);
        let mut calls = self.calls.lock().unwrap();
        if ask.gradient.is_some() {
            calls.0 += 1;
            Ok((scored(loss), Some(Gradient { dots, norm: 1.0, temperature })))
        } else {
            calls.1 += 1;
            Ok((scored(loss), None))
        }
    }
}

fn grouping(groups: usize) -> Arc<Grouping> {
    let names: Vec<String> = (0..groups).map(|g| format!("g{g}")).collect();
    let of_tensor: BTreeMap<String, usize> =
        names.iter().cloned().enumerate().map(|(i, n)| (n, i)).collect();
    Arc::new(Grouping { names, of_tensor })
}

fn config(groups: usize, k: usize, steps: usize) -> Descent {
    Descent {
        steps,
        lr: 0.2,
        start: vec![vec![1.0 / k as f64; k]; groups],
        temperature: None,
        scale: 1.0,
        check: None,
        jobs: 1,
    }
}

fn run(scorer: &Quadratic, config: &Descent) -> Descended {
    let groups = grouping(config.start.len());
    descend(scorer, &groups, config, &AtomicBool::new(false), &|_| {}).unwrap()
}

fn max_error(found: &Mix, target: &[Vec<f64>]) -> f64 {
    found
        .weights
        .iter()
        .flatten()
        .zip(target.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

#[test]
fn adam_recovers_known_coefficients_per_model_and_per_group() {
    let flat = Quadratic::new(3, vec![vec![0.6, 0.3, 0.1]], None, 1);
    let found = run(&flat, &config(1, 3, 40));
    let best = &found.steps[found.best.unwrap()];
    assert!(max_error(&best.mix, &flat.target) < 0.01, "{:?}", best.mix.weights);
    assert_eq!(found.steps.len(), 40);
    assert_eq!(*flat.calls.lock().unwrap(), (40, 0));
    // Every point is on the simplex.
    for step in &found.steps {
        assert!((step.mix.weights[0].iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    let target = vec![vec![0.6, 0.3, 0.1], vec![0.1, 0.2, 0.7], vec![0.3, 0.4, 0.3]];
    let layered = Quadratic::new(3, target.clone(), None, 2);
    let found = run(&layered, &config(3, 3, 60));
    let best = &found.steps[found.best.unwrap()];
    assert!(max_error(&best.mix, &target) < 0.01, "{:?}", best.mix.weights);
    // The loss went down by orders of magnitude, and the learning rate was
    // halved where it rose.
    let losses: Vec<f64> = found.steps.iter().map(|s| *s.scored.score.as_ref().unwrap()).collect();
    assert!(losses[found.best.unwrap()] < 1e-3 * losses[0], "{losses:?}");
    for (pair, step) in losses.windows(2).zip(&found.steps[1..]) {
        let before = found.steps.iter().find(|s| s.scored.score.as_ref().ok() == Some(&pair[0]));
        if pair[1] > pair[0] {
            assert_eq!(step.lr, before.unwrap().lr / 2.0);
        }
    }
}

#[test]
fn the_temperature_is_learned_with_the_coefficients() {
    let quadratic = Quadratic::new(3, vec![vec![0.5, 0.2, 0.3]], Some(2.5), 3);
    let mut config = config(1, 3, 60);
    config.temperature = Some(1.0);
    let found = run(&quadratic, &config);
    let best = &found.steps[found.best.unwrap()];
    assert!(max_error(&best.mix, &quadratic.target) < 0.01, "{:?}", best.mix.weights);
    let beta = best.temperature.unwrap();
    assert!((beta - 2.5).abs() < 0.02, "β = {beta}");
    assert_eq!(found.steps[0].temperature, Some(1.0));
}

/// `∂L/∂(z, s)` from [`chain`] against central differences of the composed
/// function `(z, s) → L(softmax(z), exp(s))`, with a base scale λ.
#[test]
fn the_chain_rule_through_the_softmax_matches_finite_differences() {
    let quadratic = Quadratic::new(4, vec![vec![0.1, 0.2, 0.3, 0.4]; 2], Some(0.7), 4);
    let groups = grouping(2);
    let lambda = 0.8;
    // λ scales the soup: L(λ·Σ wθ) is the quadratic at weights λw.
    let at = |x: &[f64]| {
        let mix = modelsoup::search::learned::to_mix(&groups, &x[..8], 4);
        let beta = x[8].exp();
        let scaled: Vec<Vec<f64>> =
            mix.weights.iter().map(|w| w.iter().map(|v| lambda * v).collect()).collect();
        (mix, beta, quadratic.loss(&scaled, Some(beta)))
    };
    let x = [0.3, -0.2, 0.5, 0.1, -1.0, 0.4, 0.0, 0.2, 0.1];
    let (mix, beta, (_, dots, grad_beta)) = at(&x);
    let gradient = Gradient { dots, norm: 1.0, temperature: grad_beta };
    let analytic = chain(&mix, Some(beta), &gradient, lambda).unwrap();
    assert_eq!(analytic.len(), x.len());
    let h = 1e-6;
    for j in 0..x.len() {
        let mut plus = x;
        let mut minus = x;
        plus[j] += h;
        minus[j] -= h;
        let numeric = (at(&plus).2 .0 - at(&minus).2 .0) / (2.0 * h);
        assert!(
            (numeric - analytic[j]).abs() <= 1e-6 * numeric.abs().max(1.0),
            "parameter {j}: {numeric} vs {}",
            analytic[j]
        );
    }
    // A gradient that does not fit the point is refused.
    let short = Gradient { dots: vec![1.0; 7], norm: 1.0, temperature: grad_beta };
    assert!(chain(&mix, Some(beta), &short, lambda).is_none());
    let no_beta = Gradient { temperature: None, ..gradient };
    assert!(chain(&mix, Some(beta), &no_beta, lambda).is_none());
}

#[test]
fn the_gradient_check_agrees_and_the_same_scores_give_the_same_path() {
    let quadratic = Quadratic::new(3, vec![vec![0.6, 0.3, 0.1]; 2], Some(1.5), 5);
    let mut config = config(2, 3, 12);
    config.temperature = Some(1.0);
    config.check = Some(7);
    let seen = Mutex::new(Vec::new());
    let on_progress = |p: Progress<'_>| {
        seen.lock().unwrap().push(match p {
            Progress::Step(_) => "step",
            Progress::Check(_) => "check",
        })
    };
    let groups = grouping(2);
    let found =
        descend(&quadratic, &groups, &config, &AtomicBool::new(false), &on_progress).unwrap();
    let check = found.check.as_ref().unwrap();
    let error = check.relative_error.unwrap();
    assert!(error < 1e-3, "relative error {error}: {check:?}");
    assert!(check.directional.abs() > 0.1, "a direction with a real slope: {check:?}");
    assert_eq!(check.evaluations.len(), 2);
    assert_eq!(*quadratic.calls.lock().unwrap(), (12, 2), "two extra evaluations");
    let order = seen.lock().unwrap().clone();
    assert_eq!(order[..3], ["step", "check", "step"]);
    // Determinism: the same losses and gradients give the same points, bit for
    // bit, which is what lets a resumed search replay its journal.
    let again = descend(&quadratic, &groups, &config, &AtomicBool::new(false), &|_| {}).unwrap();
    assert_eq!(again.steps, found.steps);
    // A wrong gradient is caught by the check.
    struct Wrong(Quadratic);
    impl GradientScorer for Wrong {
        fn score_point(
            &self,
            mix: &Mix,
            ask: Ask<'_>,
            cancel: &AtomicBool,
        ) -> modelsoup::search::Result<(Scored, Option<Gradient>)> {
            let (scored, gradient) = self.0.score_point(mix, ask, cancel)?;
            let gradient = gradient.map(|mut g| {
                g.dots.iter_mut().step_by(2).for_each(|d| *d *= 1.5);
                g
            });
            Ok((scored, gradient))
        }
    }
    let wrong = Wrong(Quadratic::new(3, vec![vec![0.6, 0.3, 0.1]; 2], Some(1.5), 5));
    let found = descend(&wrong, &groups, &config, &AtomicBool::new(false), &|_| {}).unwrap();
    let error = found.check.unwrap().relative_error.unwrap();
    assert!(error > 0.05, "relative error {error} for a wrong gradient");
}

#[test]
fn a_failed_step_stops_the_search_and_the_best_step_is_kept() {
    struct FailsAt(Quadratic, usize);
    impl GradientScorer for FailsAt {
        fn score_point(
            &self,
            mix: &Mix,
            ask: Ask<'_>,
            cancel: &AtomicBool,
        ) -> modelsoup::search::Result<(Scored, Option<Gradient>)> {
            let done = self.0.calls.lock().unwrap().0;
            if done == self.1 {
                let mut failed = scored(0.0);
                failed.score = Err("exited with code 1".into());
                return Ok((failed, None));
            }
            self.0.score_point(mix, ask, cancel)
        }
    }
    let scorer = FailsAt(Quadratic::new(3, vec![vec![0.6, 0.3, 0.1]], None, 6), 5);
    let groups = grouping(1);
    let found =
        descend(&scorer, &groups, &config(1, 3, 20), &AtomicBool::new(false), &|_| {}).unwrap();
    assert_eq!(found.steps.len(), 6);
    assert_eq!(found.stopped.as_deref(), Some("exited with code 1"));
    assert_eq!(found.best, Some(4), "the last step that scored is the best so far");
}
