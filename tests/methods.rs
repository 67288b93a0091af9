//! Every merge method against a float64 reference written here, independently of
//! the library, from the published definitions (and mergekit's conventions where
//! the papers leave a choice): random data in every float format, odd sizes, a
//! scalar and an empty tensor, several chunk sizes (so the statistics passes and
//! TIES's tie positions cross chunk boundaries), one output ulp at most.

mod common;

use std::path::{Path, PathBuf};

use common::{read_output, write_checkpoint, Fmt, RawTensor, Rng, FORMATS};
use modelsoup::engine::dropout::DropMask;
use modelsoup::method::prepare;
use modelsoup::recipe::{Ingredient, Method, Recipe, Setting};
use modelsoup::{write_soup, Checkpoint, Destination, RunOptions};

/// Tensor names and shapes: odd sizes across chunk boundaries, a scalar, an empty
/// tensor, and transformer-style names for filters and gradients.
const SHAPES: [(&str, &[usize]); 6] = [
    ("model.embed_tokens.weight", &[11, 37]),
    ("model.layers.0.self_attn.q_proj.weight", &[29, 13]),
    ("model.layers.1.mlp.up_proj.weight", &[7, 61]),
    ("model.layers.2.mlp.up_proj.bias", &[5]),
    ("model.norm.scale", &[]),
    ("lm_head.empty", &[0]),
];

/// A base and `k` fine-tunes of it, each tensor `base + noise`. With `few`, the
/// deltas take few distinct values, so magnitudes tie often.
struct Models {
    base: Vec<Vec<f64>>,
    tuned: Vec<Vec<Vec<f64>>>,
}

fn models(rng: &mut Rng, k: usize, few: bool) -> Models {
    let base: Vec<Vec<f64>> = SHAPES
        .iter()
        .map(|(_, s)| (0..s.iter().product::<usize>()).map(|_| rng.value()).collect())
        .collect();
    let tuned = (0..k)
        .map(|_| {
            base.iter()
                .map(|t| {
                    t.iter()
                        .map(|&b| {
                            let noise = if few {
                                (rng.below(7) as f64 - 3.0) * 0.125
                            } else {
                                rng.value() * 0.3
                            };
                            b + noise
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    Models { base, tuned }
}

/// Writes one model in `fmt` and returns the values as the file holds them.
fn write_model(dir: &Path, values: &[Vec<f64>], fmt: Fmt, split: bool) -> Vec<Vec<f64>> {
    let tensors: Vec<RawTensor> = SHAPES
        .iter()
        .zip(values)
        .map(|((name, shape), v)| RawTensor::float(name, fmt, shape, v))
        .collect();
    let splits: &[usize] = if split { &[2, 4] } else { &[] };
    write_checkpoint(dir, &tensors, splits, split);
    tensors.iter().map(|t| fmt.decode(&t.data)).collect()
}

/// The models on disk, each in its format, and their stored values.
struct OnDisk {
    root: tempfile::TempDir,
    base: PathBuf,
    tuned: Vec<PathBuf>,
    base_values: Vec<Vec<f64>>,
    tuned_values: Vec<Vec<Vec<f64>>>,
}

fn on_disk(m: &Models, fmts: &[Fmt]) -> OnDisk {
    let root = common::tempdir();
    let base = root.path().join("base");
    let base_values = write_model(&base, &m.base, fmts[0], false);
    let mut tuned = Vec::new();
    let mut tuned_values = Vec::new();
    for (i, t) in m.tuned.iter().enumerate() {
        let dir = root.path().join(format!("ft{i}"));
        tuned_values.push(write_model(&dir, t, fmts[(i + 1) % fmts.len()], i % 2 == 1));
        tuned.push(dir);
    }
    OnDisk { root, base, tuned, base_values, tuned_values }
}

fn recipe(method: Method, d: &OnDisk, with_base: bool) -> Recipe {
    let ingredients = d.tuned.iter().map(|p| Ingredient::path(p.display().to_string())).collect();
    let mut r = Recipe::new(method, ingredients);
    if with_base {
        r.base = Some(Ingredient::path(d.base.display().to_string()));
    }
    r
}

/// Runs `recipe` through the library with `threads` and `chunk` and returns the
/// output directory.
fn run(recipe: &Recipe, d: &OnDisk, threads: usize, chunk: usize, name: &str) -> PathBuf {
    let open = |p: &str| Checkpoint::open(p).unwrap();
    let ingredients: Vec<Checkpoint> = recipe.ingredients.iter().map(|i| open(&i.path)).collect();
    let base = recipe.base.as_ref().map(|b| open(&b.path));
    let options = RunOptions { threads, chunk_elements: chunk, ..RunOptions::default() };
    let prepared = prepare(recipe, &ingredients, base.as_ref(), &options).unwrap();
    let out = d.root.path().join(name);
    let dest = Destination { path: &out, force: true, support_files_from: None, durable: false };
    write_soup(&prepared.inputs, &prepared.plan, &dest, &options).unwrap();
    out
}

/// Every tensor of the output within one ulp of `want` rounded to `fmt`.
fn check(out: &Path, want: &[Vec<f64>], fmt: Fmt) {
    let written = read_output(out);
    for ((name, shape), w) in SHAPES.iter().zip(want) {
        let (dtype, got_shape, bytes) = &written[*name];
        assert_eq!(dtype, fmt.name(), "{name}: dtype");
        assert_eq!(got_shape.as_slice(), *shape, "{name}: shape");
        assert_eq!(bytes.len(), w.len() * fmt.size(), "{name}: length");
        for (e, &x) in w.iter().enumerate() {
            let expected = fmt.round(x);
            let ulps = (fmt.ordered(bytes, e) - fmt.ordered(&expected, 0)).abs();
            assert!(ulps <= 1, "{name}[{e}]: {ulps} ulps from the reference {x}");
        }
    }
}

/// `x − b`, elementwise.
fn delta(x: &[f64], b: &[f64]) -> Vec<f64> {
    x.iter().zip(b).map(|(x, b)| x - b).collect()
}

/// TIES's trim: the `k = max(1, ⌊density·n⌋)` largest magnitudes, ties to the
/// earlier index (by sorting the indices).
fn trim(d: &[f64], density: f64) -> Vec<f64> {
    if density >= 1.0 {
        return d.to_vec();
    }
    let n = d.len();
    if density <= 0.0 || n == 0 {
        return vec![0.0; n];
    }
    let k = ((density * n as f64) as usize).max(1);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[j].abs().total_cmp(&d[i].abs()).then(i.cmp(&j)));
    let mut out = vec![0.0; n];
    for &i in &order[..k] {
        out[i] = d[i];
    }
    out
}

/// The merge of sparsified task vectors: weight, elect a sign (sum ≥ 0 is +),
/// keep agreeing entries, divide by the agreeing (or all) weights, scale, add.
fn merge_deltas(
    base: &[f64],
    sparse: &[Vec<f64>],
    weights: &[f64],
    lambda: f64,
    normalize: bool,
    elect: bool,
) -> Vec<f64> {
    (0..base.len())
        .map(|e| {
            let wd: Vec<f64> = sparse.iter().zip(weights).map(|(d, w)| w * d[e]).collect();
            let (mut mixed, mut divisor) = (0.0, 0.0);
            if elect {
                let sum: f64 = wd.iter().fold(0.0, |s, x| s + x);
                let sign = if sum >= 0.0 { 1.0 } else { -1.0 };
                for (x, w) in wd.iter().zip(weights) {
                    if (*x > 0.0 && sign > 0.0) || (*x < 0.0 && sign < 0.0) {
                        mixed += x;
                        divisor += w;
                    }
                }
                if divisor == 0.0 {
                    divisor = 1.0;
                }
            } else {
                mixed = wd.iter().fold(0.0, |s, x| s + x);
                divisor = weights.iter().fold(0.0, |s, x| s + x);
                if f64::abs(divisor) < 1e-8 {
                    divisor = 1.0;
                }
            }
            if normalize {
                mixed /= divisor;
            }
            base[e] + lambda * mixed
        })
        .collect()
}

#[test]
fn task_arithmetic_matches_the_reference() {
    let mut rng = Rng::new(11);
    for fmt in FORMATS {
        let m = models(&mut rng, 3, false);
        let d = on_disk(&m, &[fmt]);
        let mut r = recipe(Method::TaskArithmetic, &d, true);
        r.parameters.lambda = Some(0.8.into());
        r.ingredients[1].weight = Some((-0.5).into());
        let weights = [1.0, -0.5, 1.0];
        let out = run(&r, &d, 2, 100, "out");
        let want: Vec<Vec<f64>> = (0..SHAPES.len())
            .map(|t| {
                let base = &d.base_values[t];
                (0..base.len())
                    .map(|e| {
                        let sum: f64 =
                            (0..3).map(|i| weights[i] * (d.tuned_values[i][t][e] - base[e])).sum();
                        base[e] + 0.8 * sum
                    })
                    .collect()
            })
            .collect();
        check(&out, &want, fmt);
    }
}

#[test]
fn ties_matches_the_reference_with_and_without_ties_in_magnitude() {
    let mut rng = Rng::new(12);
    for (fmt, few) in [(Fmt::BF16, true), (Fmt::F32, false), (Fmt::F16, true), (Fmt::F64, false)] {
        let m = models(&mut rng, 3, few);
        let d = on_disk(&m, &[fmt]);
        let densities = [0.2, 0.5, 1.0];
        let mut r = recipe(Method::Ties, &d, true);
        for (ing, &den) in r.ingredients.iter_mut().zip(&densities) {
            ing.density = Some(den.into());
        }
        r.ingredients[2].weight = Some(0.5.into());
        r.parameters.lambda = Some(1.5.into());
        let weights = [1.0, 1.0, 0.5];
        let want: Vec<Vec<f64>> = (0..SHAPES.len())
            .map(|t| {
                let base = &d.base_values[t];
                let sparse: Vec<Vec<f64>> = (0..3)
                    .map(|i| trim(&delta(&d.tuned_values[i][t], base), densities[i]))
                    .collect();
                merge_deltas(base, &sparse, &weights, 1.5, true, true)
            })
            .collect();
        for (threads, chunk) in [(1, 64 * 1024), (2, 50), (3, 7)] {
            let out = run(&r, &d, threads, chunk, &format!("out-{threads}-{chunk}"));
            check(&out, &want, fmt);
        }
    }
}

#[test]
fn dare_matches_the_reference_and_its_masks_do_not_depend_on_threads() {
    let mut rng = Rng::new(13);
    for (method, fmt) in [(Method::DareLinear, Fmt::F32), (Method::DareTies, Fmt::BF16)] {
        let m = models(&mut rng, 3, false);
        let d = on_disk(&m, &[fmt, Fmt::F16]);
        let mut r = recipe(method, &d, true);
        r.parameters.density = Some(0.3.into());
        r.parameters.seed = Some(7);
        let seed = 7;
        let elect = method == Method::DareTies;
        let want: Vec<Vec<f64>> = (0..SHAPES.len())
            .map(|t| {
                let (name, _) = SHAPES[t];
                let base = &d.base_values[t];
                let sparse: Vec<Vec<f64>> = (0..3)
                    .map(|i| {
                        let mask = DropMask::new(seed, i, name, 0.3);
                        delta(&d.tuned_values[i][t], base)
                            .iter()
                            .enumerate()
                            .map(|(e, x)| if mask.keeps(e as u64) { x / 0.3 } else { 0.0 })
                            .collect()
                    })
                    .collect();
                merge_deltas(base, &sparse, &[1.0; 3], 1.0, false, elect)
            })
            .collect();
        let one = run(&r, &d, 1, 64 * 1024, "one");
        let four = run(&r, &d, 4, 33, "four");
        // The output takes the first ingredient's format.
        check(&one, &want, Fmt::F16);
        assert_eq!(read_output(&one), read_output(&four), "{method:?}: threads changed the bytes");
        let mut other = r.clone();
        other.parameters.seed = Some(8);
        let reseeded = run(&other, &d, 2, 100, "reseeded");
        assert_ne!(read_output(&one), read_output(&reseeded), "the seed changes the masks");
    }
}

/// `‖a‖²`, `‖b‖²`, `⟨a, b⟩` by a plain loop.
fn dots(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    a.iter()
        .zip(b)
        .fold((0.0, 0.0, 0.0), |(aa, bb, ab), (x, y)| (aa + x * x, bb + y * y, ab + x * y))
}

#[test]
fn slerp_matches_the_reference_with_a_per_layer_gradient() {
    let mut rng = Rng::new(14);
    for fmt in [Fmt::BF16, Fmt::F32] {
        let m = models(&mut rng, 2, false);
        let d = on_disk(&m, &[fmt]);
        let mut r = recipe(Method::Slerp, &d, false);
        let t: Setting =
            serde_json::from_str(r#"[{"filter": "mlp", "value": [0.0, 1.0]}, {"value": 0.3}]"#)
                .unwrap();
        r.parameters.t = Some(t);
        let out = run(&r, &d, 2, 40, "out");
        let want: Vec<Vec<f64>> = (0..SHAPES.len())
            .map(|i| {
                let (name, _) = SHAPES[i];
                // Blocks 0..=2 sit at 0, 0.5, 1; only mlp tensors follow the gradient.
                let t = match name {
                    n if n.contains("layers.1.mlp") => 0.5,
                    n if n.contains("layers.2.mlp") => 1.0,
                    _ => 0.3,
                };
                let (a, b) = (&d.tuned_values[0][i], &d.tuned_values[1][i]);
                let (aa, bb, ab) = dots(a, b);
                let (s0, s1) = if aa == 0.0 || bb == 0.0 {
                    (1.0 - t, t)
                } else {
                    let cos = (ab / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0);
                    if cos.abs() > 0.9995 {
                        (1.0 - t, t)
                    } else {
                        let th = cos.acos();
                        (((1.0 - t) * th).sin() / th.sin(), (t * th).sin() / th.sin())
                    }
                };
                a.iter().zip(b).map(|(x, y)| s0 * x + s1 * y).collect()
            })
            .collect();
        check(&out, &want, fmt);
    }
}

#[test]
fn model_stock_matches_the_reference() {
    let mut rng = Rng::new(15);
    for fmt in [Fmt::F32, Fmt::BF16] {
        let m = models(&mut rng, 3, false);
        let d = on_disk(&m, &[fmt]);
        let r = recipe(Method::ModelStock, &d, true);
        let out = run(&r, &d, 2, 64, "out");
        let want: Vec<Vec<f64>> = (0..SHAPES.len())
            .map(|t| {
                let base = &d.base_values[t];
                let deltas: Vec<Vec<f64>> =
                    (0..3).map(|i| delta(&d.tuned_values[i][t], base)).collect();
                let mut cos = 0.0;
                for i in 0..3 {
                    for j in i + 1..3 {
                        let (ii, jj, ij) = dots(&deltas[i], &deltas[j]);
                        cos += (ij / (ii.sqrt() * jj.sqrt()).max(1e-6)).clamp(-1.0, 1.0);
                    }
                }
                cos /= 3.0;
                let den = 1.0 + 2.0 * cos;
                let ratio = if den.abs() < 1e-6 { 0.0 } else { 3.0 * cos / den };
                (0..base.len())
                    .map(|e| {
                        let mean = (0..3).map(|i| d.tuned_values[i][t][e]).sum::<f64>() / 3.0;
                        ratio * mean + (1.0 - ratio) * base[e]
                    })
                    .collect()
            })
            .collect();
        check(&out, &want, fmt);
    }
}

#[test]
fn linear_with_a_base_is_wise_ft_interpolation() {
    let mut rng = Rng::new(16);
    let m = models(&mut rng, 1, false);
    let d = on_disk(&m, &[Fmt::F32]);
    let mut r = recipe(Method::Linear, &d, true);
    r.ingredients[0].weight = Some(0.7.into());
    r.base.as_mut().unwrap().weight = Some(0.3.into());
    let out = run(&r, &d, 2, 100, "out");
    let want: Vec<Vec<f64>> = (0..SHAPES.len())
        .map(|t| {
            let (x, b) = (&d.tuned_values[0][t], &d.base_values[t]);
            x.iter().zip(b).map(|(x, b)| 0.7 * x + 0.3 * b).collect()
        })
        .collect();
    check(&out, &want, Fmt::F32);
}

#[test]
fn per_tensor_filters_and_gradients_reach_each_tensor() {
    // Task arithmetic with λ as a gradient over the blocks and a weight filter.
    let mut rng = Rng::new(17);
    let m = models(&mut rng, 2, false);
    let d = on_disk(&m, &[Fmt::F64]);
    let mut r = recipe(Method::TaskArithmetic, &d, true);
    r.parameters.lambda = Some(Setting::Value(modelsoup::recipe::Value::Gradient(vec![1.0, 3.0])));
    r.ingredients[0].weight = Some(
        serde_json::from_str(r#"[{"layers": ["embeddings"], "value": 0}, {"value": 2}]"#).unwrap(),
    );
    let out = run(&r, &d, 2, 100, "out");
    let want: Vec<Vec<f64>> = (0..SHAPES.len())
        .map(|t| {
            let (name, _) = SHAPES[t];
            let lambda = match name {
                n if n.contains("layers.0") => 1.0,
                n if n.contains("layers.1") => 2.0,
                n if n.contains("layers.2") => 3.0,
                _ => 1.0,
            };
            let w0 = if name.contains("embed") { 0.0 } else { 2.0 };
            let base = &d.base_values[t];
            (0..base.len())
                .map(|e| {
                    let s = w0 * (d.tuned_values[0][t][e] - base[e])
                        + (d.tuned_values[1][t][e] - base[e]);
                    base[e] + lambda * s
                })
                .collect()
        })
        .collect();
    check(&out, &want, Fmt::F64);
}

#[test]
fn bad_parameters_are_refused_before_any_data_is_read() {
    let mut rng = Rng::new(18);
    let m = models(&mut rng, 2, false);
    let d = on_disk(&m, &[Fmt::F32]);
    let open = |p: &Path| Checkpoint::open(p).unwrap();
    let cks: Vec<Checkpoint> = d.tuned.iter().map(|p| open(p)).collect();
    let base = open(&d.base);
    let err = |r: &Recipe, base: Option<&Checkpoint>| {
        prepare(r, &cks, base, &RunOptions::default()).unwrap_err().to_string()
    };
    let mut r = recipe(Method::Ties, &d, true);
    r.parameters.density = Some(1.5.into());
    assert!(err(&r, Some(&base)).contains("density"), "{}", err(&r, Some(&base)));
    let r = recipe(Method::Ties, &d, false);
    assert!(err(&r, None).contains("needs a base"));
    let mut r = recipe(Method::Linear, &d, false);
    r.parameters.lambda = Some(2.0.into());
    assert!(err(&r, None).contains("lambda does not apply to linear"));
    let r = recipe(Method::Slerp, &d, false);
    assert!(err(&r, None).contains("needs t"));
    let mut r = recipe(Method::Slerp, &d, false);
    r.parameters.t = Some(serde_json::from_str(r#"[{"filter": "mlp", "value": 0.5}]"#).unwrap());
    assert!(err(&r, None).contains("no rule matches tensor"), "{}", err(&r, None));
}

/// The recipe a soup records rebuilds it byte for byte, for every method.
#[test]
fn recorded_recipes_replay_byte_for_byte() {
    let mut rng = Rng::new(19);
    let m = models(&mut rng, 2, true);
    let d = on_disk(&m, &[Fmt::BF16]);
    for method in [
        Method::Linear,
        Method::TaskArithmetic,
        Method::Ties,
        Method::DareTies,
        Method::Slerp,
        Method::ModelStock,
    ] {
        let mut r = recipe(method, &d, method != Method::Slerp);
        match method {
            Method::Ties | Method::DareTies => r.parameters.density = Some(0.4.into()),
            Method::Slerp => r.parameters.t = Some(0.25.into()),
            _ => {}
        }
        let out = run(&r, &d, 2, 50, "first");
        let (metadata, _) = common::read_safetensors(&out.join("model.safetensors"));
        let recorded = Recipe::from_metadata(&metadata).expect("the soup records its recipe");
        let again = run(&recorded, &d, 1, 1000, "again");
        let bytes = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
        assert_eq!(bytes(&out), bytes(&again), "{method:?}: replay differs");
        assert_eq!(recorded.method, method);
    }
}
