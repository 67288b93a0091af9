//! Ingredients with a known optimum: θᵢ = base + δᵢ, and a target that mixes
//! them with known coefficients per layer group. The learned-soup tests score
//! candidates against it (by distance, or by a quadratic loss and its gradient).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::cli::{p, sh_quote};
use super::{write_file, Fmt, RawTensor, Rng};
use modelsoup::engine::plan::as_fractions;

/// Ingredients θᵢ = base + δᵢ (as if fine-tuned from one model, with deltas of
/// half the base's size, independent and so linearly independent) and a target
/// that mixes them with known coefficients, per layer group.
pub struct Mixture {
    /// Float tensors (name, shape, group), sorted by name: the order in which the
    /// evaluator concatenates them.
    pub tensors: Vec<(String, Vec<usize>, String)>,
    /// `values[i][t]`: ingredient i's tensor t.
    pub values: Vec<Vec<Vec<f32>>>,
    /// The target coefficients, group → one weight per ingredient.
    pub target: BTreeMap<String, Vec<f64>>,
    pub paths: Vec<PathBuf>,
    pub target_file: PathBuf,
}

impl Mixture {
    /// `k` ingredients of the float tensors `tensors` (name, shape, group) and a
    /// target mixing them by `target` (group → weights).
    pub fn new(
        seed: u64,
        k: usize,
        tensors: &[(&str, &[usize], &str)],
        target: &[(&str, &[f64])],
    ) -> Mixture {
        let mut tensors: Vec<(String, Vec<usize>, String)> =
            tensors.iter().map(|(n, s, g)| ((*n).into(), s.to_vec(), (*g).into())).collect();
        tensors.sort();
        let mut rng = Rng::new(seed);
        let len = |t: &(String, Vec<usize>, String)| t.1.iter().product::<usize>();
        let base: Vec<Vec<f64>> =
            tensors.iter().map(|t| (0..len(t)).map(|_| rng.unit() * 2.0 - 1.0).collect()).collect();
        let values = (0..k)
            .map(|_| {
                base.iter()
                    .map(|b| {
                        b.iter().map(|x| (x + 0.5 * (rng.unit() * 2.0 - 1.0)) as f32).collect()
                    })
                    .collect()
            })
            .collect();
        let target: BTreeMap<String, Vec<f64>> =
            target.iter().map(|(g, w)| ((*g).to_owned(), w.to_vec())).collect();
        for (_, _, g) in &tensors {
            assert_eq!(target[g].len(), k, "target of group {g}");
        }
        Mixture { tensors, values, target, paths: Vec::new(), target_file: PathBuf::new() }
    }

    /// `target.len()` ingredients of `a.weight` [16, 16] and `b.bias` [44], and one
    /// target mix for both.
    pub fn flat(seed: u64, target: &[f64]) -> Mixture {
        Mixture::new(
            seed,
            target.len(),
            &[("a.weight", &[16, 16], "all"), ("b.bias", &[44], "all")],
            &[("all", target)],
        )
    }

    pub fn k(&self) -> usize {
        self.values.len()
    }

    /// Every tensor mixed by `coefficients` (group → weights) as the tool writes
    /// it, up to rounding: Σ wᵢ·θᵢ in f64 (not rounded yet).
    pub fn mix(&self, coefficients: &BTreeMap<String, Vec<f64>>) -> Vec<Vec<f64>> {
        self.tensors
            .iter()
            .enumerate()
            .map(|(t, (_, _, group))| {
                // Weights that are integers over a common count (1/3 each) are
                // computed as soup computes them: (Σ kᵢ·xᵢ)/d.
                let w = &coefficients[group];
                let (w, d) = as_fractions(w).unwrap_or((w.clone(), 1.0));
                (0..self.values[0][t].len())
                    .map(|e| {
                        let sum: f64 =
                            (0..self.k()).map(|i| w[i] * f64::from(self.values[i][t][e])).sum();
                        sum / d
                    })
                    .collect()
            })
            .collect()
    }

    /// Writes the ingredients `in0.safetensors`, … (each with a non-float `step`
    /// tensor too) and the target into `dir`.
    pub fn write(&mut self, dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        self.paths.clear();
        for (i, tensors) in self.values.iter().enumerate() {
            let mut raw: Vec<RawTensor> = self
                .tensors
                .iter()
                .zip(tensors)
                .map(|((name, shape, _), v)| {
                    let v: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
                    RawTensor::float(name, Fmt::F32, shape, &v)
                })
                .collect();
            raw.insert(1, RawTensor::raw("step", "I64", &[1], 1234i64.to_le_bytes().to_vec()));
            let path = dir.join(format!("in{i}.safetensors"));
            write_file(&path, &raw, true);
            self.paths.push(path);
        }
        self.target_file = dir.join("target.f64");
        let target = self.mix(&self.target);
        let bytes: Vec<u8> = target.iter().flatten().flat_map(|t| t.to_le_bytes()).collect();
        fs::write(&self.target_file, bytes).unwrap();
    }

    pub fn labels(&self) -> Vec<String> {
        self.paths.iter().map(|x| p(x)).collect()
    }

    /// `python3 -S EVALUATOR {model} TARGET EXTRA`: a test evaluator on this
    /// target (`extra` already quoted where needed).
    pub fn command(&self, evaluator: &str, extra: &str) -> String {
        format!(
            "python3 -S {} {{model}} {} {extra}",
            sh_quote(evaluator),
            sh_quote(&p(&self.target_file))
        )
    }
}
