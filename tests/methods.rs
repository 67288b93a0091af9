//! Every merge method against a float64 reference written here, independently of
//! the library, from the published definitions (and mergekit's conventions where
//! the papers leave a choice): random data in every float format, odd sizes, a
//! scalar and an empty tensor, several chunk sizes (so the statistics passes and
//! TIES's tie positions cross chunk boundaries), one output ulp at most.

mod common;

use std::path::{Path, PathBuf};

use common::{read_output, write_checkpoint, Fmt, RawTensor, Rng, FORMATS};
use modelsoup::engine::dropout::{threshold, DropMask};
use modelsoup::method::{prepare, prepare_models};
use modelsoup::recipe::{Ingredient, Method, Recipe, Setting, Slice};
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
        Method::BreadcrumbsTies,
        Method::Della,
        Method::Sce,
        Method::Nuslerp,
        Method::Multislerp,
        Method::Karcher,
        Method::Nearswap,
        Method::Passthrough,
    ] {
        let with_base = method.needs_base() || method == Method::Multislerp;
        let mut r = recipe(method, &d, with_base);
        match method {
            Method::Ties | Method::DareTies | Method::BreadcrumbsTies | Method::Della => {
                r.parameters.density = Some(0.4.into())
            }
            Method::Slerp => r.parameters.t = Some(0.25.into()),
            Method::Nearswap => {
                r.parameters.t = Some(0.05.into());
                r.ingredients.truncate(1);
            }
            Method::Sce => r.parameters.select_topk = Some(0.5.into()),
            Method::Passthrough => r.ingredients.truncate(1),
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

/// Runs `recipe` (with or without slices) through [`prepare_models`] and
/// returns the output directory.
fn run_models(recipe: &Recipe, d: &OnDisk, threads: usize, chunk: usize, name: &str) -> PathBuf {
    let models: Vec<Checkpoint> =
        recipe.models().iter().map(|p| Checkpoint::open(p).unwrap()).collect();
    let options = RunOptions { threads, chunk_elements: chunk, ..RunOptions::default() };
    let prepared = prepare_models(recipe, &models, &options).unwrap();
    let out = d.root.path().join(name);
    let dest = Destination { path: &out, force: true, support_files_from: None, durable: false };
    write_soup(&prepared.inputs, &prepared.plan, &dest, &options).unwrap();
    out
}

/// The same bytes at one thread and one chunk as at several threads and small
/// chunks (which cut rows and selections across chunk boundaries).
fn same_at_any_threads(recipe: &Recipe, d: &OnDisk, method: &str) -> PathBuf {
    let one = run_models(recipe, d, 1, 64 * 1024, &format!("{method}-one"));
    let many = run_models(recipe, d, 3, 7, &format!("{method}-many"));
    assert_eq!(read_output(&one), read_output(&many), "{method}: threads or chunks changed bytes");
    one
}

/// Indices of `d` from the largest magnitude down, equal magnitudes by position
/// (the earlier first).
fn by_magnitude(d: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..d.len()).collect();
    order.sort_by(|&i, &j| d[j].abs().total_cmp(&d[i].abs()).then(i.cmp(&j)));
    order
}

/// Breadcrumbs' trim (mergekit's counts): in ascending order of magnitude, keep
/// ranks `n_bot..n_bot + ⌊density·n⌋`, `n_bot = max(0, n − ⌊density·n⌋ − ⌊gamma·n⌋)`.
fn breadcrumb(d: &[f64], density: f64, gamma: f64) -> Vec<f64> {
    if density >= 1.0 {
        return d.to_vec();
    }
    let n = d.len();
    let target = (density * n as f64) as usize;
    let top = (gamma * n as f64) as usize;
    let bot = n.saturating_sub(target + top);
    let mut ascending = by_magnitude(d);
    ascending.reverse();
    let mut out = vec![0.0; n];
    for &i in &ascending[bot..bot + target] {
        out[i] = d[i];
    }
    out
}

#[test]
fn breadcrumbs_match_the_reference_with_and_without_ties_in_magnitude() {
    let mut rng = Rng::new(21);
    for (method, fmt, few) in [
        (Method::Breadcrumbs, Fmt::F32, false),
        (Method::BreadcrumbsTies, Fmt::BF16, true),
        (Method::BreadcrumbsTies, Fmt::F64, false),
    ] {
        let m = models(&mut rng, 3, few);
        let d = on_disk(&m, &[fmt]);
        let (densities, gammas) = ([0.5, 0.3, 1.0], [0.1, 0.4, 0.2]);
        let mut r = recipe(method, &d, true);
        for (i, ing) in r.ingredients.iter_mut().enumerate() {
            ing.density = Some(densities[i].into());
            ing.gamma = Some(gammas[i].into());
        }
        r.parameters.lambda = Some(1.3.into());
        r.ingredients[1].weight = Some(0.5.into());
        let weights = [1.0, 0.5, 1.0];
        let elect = method == Method::BreadcrumbsTies;
        let want: Vec<Vec<f64>> = (0..SHAPES.len())
            .map(|t| {
                let base = &d.base_values[t];
                let sparse: Vec<Vec<f64>> = (0..3)
                    .map(|i| {
                        breadcrumb(&delta(&d.tuned_values[i][t], base), densities[i], gammas[i])
                    })
                    .collect();
                merge_deltas(base, &sparse, &weights, 1.3, false, elect)
            })
            .collect();
        let out = same_at_any_threads(&r, &d, method.name());
        check(&out, &want, fmt);
    }
}

#[test]
fn della_matches_the_reference_row_by_row() {
    let mut rng = Rng::new(22);
    for (method, fmt) in [(Method::Della, Fmt::F32), (Method::DellaLinear, Fmt::BF16)] {
        let m = models(&mut rng, 3, true);
        let d = on_disk(&m, &[fmt]);
        let (densities, epsilons) = ([0.5, 0.7, 1.0], [0.2, 0.1, 0.1]);
        let mut r = recipe(method, &d, true);
        for (i, ing) in r.ingredients.iter_mut().enumerate() {
            ing.density = Some(densities[i].into());
            ing.epsilon = Some(epsilons[i].into());
        }
        r.parameters.seed = Some(5);
        let elect = method == Method::Della;
        let want: Vec<Vec<f64>> = (0..SHAPES.len())
            .map(|t| {
                let (name, shape) = SHAPES[t];
                let row = if shape.len() == 2 { shape[1] } else { shape.iter().product() };
                let base = &d.base_values[t];
                let sparse: Vec<Vec<f64>> = (0..3)
                    .map(|i| {
                        let delta = delta(&d.tuned_values[i][t], base);
                        if densities[i] >= 1.0 {
                            return delta;
                        }
                        let mask = DropMask::stream(5, i, name);
                        let mut out = vec![0.0; delta.len()];
                        for start in (0..delta.len()).step_by(row.max(1)) {
                            let r = &delta[start..start + row];
                            // Rank 0 is the smallest magnitude.
                            let mut order = by_magnitude(r);
                            order.reverse();
                            for (rank, &j) in order.iter().enumerate() {
                                let norm =
                                    if row > 1 { rank as f64 / (row - 1) as f64 } else { 0.0 };
                                let p = (densities[i] - epsilons[i]) + norm * 2.0 * epsilons[i];
                                let e = start + j;
                                if mask.draw(e as u64) < threshold(p) {
                                    out[e] = delta[e] / p;
                                }
                            }
                        }
                        out
                    })
                    .collect();
                merge_deltas(base, &sparse, &[1.0; 3], 1.0, elect, elect)
            })
            .collect();
        let out = same_at_any_threads(&r, &d, method.name());
        check(&out, &want, fmt);
    }
}

#[test]
fn sce_matches_the_reference() {
    let mut rng = Rng::new(23);
    for (fmt, select, few) in
        [(Fmt::F32, 0.4, false), (Fmt::BF16, 1.0, true), (Fmt::F16, 0.7, true)]
    {
        let m = models(&mut rng, 3, few);
        let d = on_disk(&m, &[fmt]);
        let mut r = recipe(Method::Sce, &d, true);
        r.parameters.select_topk = Some(select.into());
        let want: Vec<Vec<f64>> = (0..SHAPES.len())
            .map(|t| {
                let base = &d.base_values[t];
                let n = base.len();
                let mut tv: Vec<Vec<f64>> =
                    (0..3).map(|i| delta(&d.tuned_values[i][t], base)).collect();
                if select < 1.0 {
                    let var: Vec<f64> = (0..n)
                        .map(|e| {
                            let mean = (tv[0][e] + tv[1][e] + tv[2][e]) / 3.0;
                            tv.iter().map(|v| (v[e] - mean) * (v[e] - mean)).sum::<f64>() / 3.0
                        })
                        .collect();
                    let nonzero = var.iter().filter(|&&v| v != 0.0).count();
                    let k = (nonzero as f64 * select) as usize;
                    let keep = &by_magnitude(&var)[..k];
                    for v in tv.iter_mut() {
                        for (e, x) in v.iter_mut().enumerate() {
                            if !keep.contains(&e) {
                                *x = 0.0;
                            }
                        }
                    }
                }
                let means: Vec<f64> = tv
                    .iter()
                    .map(|v| v.iter().map(|x| x * x).sum::<f64>() / n.max(1) as f64)
                    .collect();
                let sum: f64 = means.iter().sum();
                let w: Vec<f64> = if sum.abs() < 1e-6 {
                    vec![1.0 / 3.0; 3]
                } else {
                    means.iter().map(|m| m / sum).collect()
                };
                (0..n)
                    .map(|e| {
                        let total: f64 = tv.iter().map(|v| v[e]).sum();
                        let sign = if total >= 0.0 { 1.0 } else { -1.0 };
                        let (mut mixed, mut div) = (0.0, 0.0);
                        for (v, w) in tv.iter().zip(&w) {
                            if v[e] * sign > 0.0 {
                                mixed += w * v[e];
                                div += w;
                            }
                        }
                        base[e] + mixed / f64::max(div, 1e-6)
                    })
                    .collect()
            })
            .collect();
        let out = same_at_any_threads(&r, &d, &format!("sce-{select}"));
        check(&out, &want, fmt);
    }
}

/// `Σ wᵢ·vᵢ` of vectors.
fn combination(vectors: &[Vec<f64>], c: &[f64]) -> Vec<f64> {
    (0..vectors[0].len()).map(|e| vectors.iter().zip(c).map(|(v, c)| c * v[e]).sum()).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// NuSLERP of two vectors, on the vectors (mergekit's `nuslerp`, flattened).
fn nuslerp_ref(v0: &[f64], v1: &[f64], t: f64) -> Vec<f64> {
    let (n0, n1) = (norm(v0).max(1e-7), norm(v1).max(1e-7));
    let cos = (dot(v0, v1) / (n0 * n1)).clamp(-1.0, 1.0);
    if 1.0 - cos * cos <= 1e-16 {
        return combination(&[v0.to_vec(), v1.to_vec()], &[1.0 - t, t]);
    }
    let th = cos.acos();
    combination(
        &[v0.to_vec(), v1.to_vec()],
        &[((1.0 - t) * th).sin() / th.sin(), (t * th).sin() / th.sin()],
    )
}

/// Multi-SLERP on the vectors, as mergekit computes it.
fn multislerp_ref(vs: &[Vec<f64>], weights: &[f64], eps: f64) -> Vec<f64> {
    let sum: f64 = weights.iter().sum();
    let w: Vec<f64> = weights.iter().map(|x| x / sum).collect();
    let norms: Vec<f64> = vs.iter().map(|v| norm(v)).collect();
    let units: Vec<Vec<f64>> =
        vs.iter().zip(&norms).map(|(v, n)| v.iter().map(|x| x / (n + eps)).collect()).collect();
    let mean = combination(&units, &w);
    let mn = norm(&mean);
    let mean: Vec<f64> = mean.iter().map(|x| x / mn).collect();
    let tangents: Vec<Vec<f64>> = units
        .iter()
        .map(|u| {
            let d = dot(u, &mean);
            u.iter().zip(&mean).map(|(u, m)| u - d * m).collect()
        })
        .collect();
    let tangent = combination(&tangents, &w);
    let tn = norm(&tangent) + eps;
    let avg: f64 = w.iter().zip(&norms).map(|(w, n)| w * n).sum();
    mean.iter().zip(&tangent).map(|(m, t)| (m * tn.cos() + t * tn.sin() / tn) * avg).collect()
}

/// The Karcher mean on the vectors, as mergekit computes it.
fn karcher_ref(vs: &[Vec<f64>], max_iter: usize, tol: f64) -> Vec<f64> {
    let k = vs.len();
    let norms: Vec<f64> = vs.iter().map(|v| norm(v)).collect();
    let units: Vec<Vec<f64>> = vs
        .iter()
        .zip(&norms)
        .map(|(v, &n)| v.iter().map(|x| if n == 0.0 { 0.0 } else { x / n }).collect())
        .collect();
    let valid: Vec<usize> = (0..k).filter(|&i| norms[i] > tol).collect();
    if valid.is_empty() {
        return vec![0.0; vs[0].len()];
    }
    let a = 1.0 / valid.len() as f64;
    let mut mean = vec![0.0; vs[0].len()];
    for &i in &valid {
        for (m, u) in mean.iter_mut().zip(&units[i]) {
            *m += a * u;
        }
    }
    let mn = norm(&mean);
    mean = if mn < tol { units[valid[0]].clone() } else { mean.iter().map(|x| x / mn).collect() };
    for _ in 0..max_iter {
        let mut tangent = vec![0.0; mean.len()];
        for &i in &valid {
            let d = dot(&mean, &units[i]).clamp(-1.0, 1.0);
            let th = d.acos();
            if th < tol {
                continue;
            }
            for ((t, u), m) in tangent.iter_mut().zip(&units[i]).zip(&mean) {
                *t += a * (th / th.sin()) * (u - d * m);
            }
        }
        let tn = norm(&tangent);
        if tn < tol {
            break;
        }
        mean = mean.iter().zip(&tangent).map(|(m, t)| tn.cos() * m + tn.sin() * (t / tn)).collect();
        let un = norm(&mean);
        if un > tol {
            mean.iter_mut().for_each(|m| *m /= un);
        }
    }
    let scale: f64 = norms.iter().map(|n| n / k as f64).sum();
    mean.iter().map(|m| scale * m).collect()
}

#[test]
fn nuslerp_multislerp_and_karcher_match_the_reference() {
    let mut rng = Rng::new(24);
    for fmt in [Fmt::F32, Fmt::BF16] {
        let m = models(&mut rng, 3, false);
        let d = on_disk(&m, &[fmt]);
        let tensor = |i: usize, t: usize| d.tuned_values[i][t].clone();
        // NuSLERP of two models, then of their task vectors from the base.
        for with_base in [false, true] {
            let mut r = recipe(Method::Nuslerp, &d, with_base);
            r.ingredients.truncate(2);
            r.ingredients[0].weight = Some(1.0.into());
            r.ingredients[1].weight = Some(3.0.into());
            let want: Vec<Vec<f64>> = (0..SHAPES.len())
                .map(|t| {
                    let b = &d.base_values[t];
                    if with_base {
                        let v =
                            nuslerp_ref(&delta(&tensor(0, t), b), &delta(&tensor(1, t), b), 0.75);
                        b.iter().zip(v).map(|(b, v)| b + v).collect()
                    } else {
                        nuslerp_ref(&tensor(0, t), &tensor(1, t), 0.75)
                    }
                })
                .collect();
            check(&same_at_any_threads(&r, &d, &format!("nuslerp-{with_base}")), &want, fmt);
        }
        // Multi-SLERP of three task vectors.
        let mut r = recipe(Method::Multislerp, &d, true);
        let weights = [1.0, 2.0, 0.5];
        for (ing, &w) in r.ingredients.iter_mut().zip(&weights) {
            ing.weight = Some(w.into());
        }
        let want: Vec<Vec<f64>> = (0..SHAPES.len())
            .map(|t| {
                let b = &d.base_values[t];
                let vs: Vec<Vec<f64>> = (0..3).map(|i| delta(&tensor(i, t), b)).collect();
                if b.is_empty() {
                    return Vec::new();
                }
                let v = multislerp_ref(&vs, &weights, 1e-8);
                b.iter().zip(v).map(|(b, v)| b + v).collect()
            })
            .collect();
        check(&same_at_any_threads(&r, &d, "multislerp"), &want, fmt);
        // The Karcher mean of the three models and the base.
        let mut r = recipe(Method::Karcher, &d, false);
        r.ingredients.push(Ingredient::path(d.base.display().to_string()));
        r.parameters.max_iter = Some(20);
        let want: Vec<Vec<f64>> = (0..SHAPES.len())
            .map(|t| {
                let vs: Vec<Vec<f64>> =
                    (0..3).map(|i| tensor(i, t)).chain([d.base_values[t].clone()]).collect();
                karcher_ref(&vs, 20, 1e-5)
            })
            .collect();
        check(&same_at_any_threads(&r, &d, "karcher"), &want, fmt);
    }
}

#[test]
fn nearswap_and_passthrough_match_the_reference() {
    let mut rng = Rng::new(25);
    for fmt in [Fmt::F32, Fmt::BF16, Fmt::F64] {
        let m = models(&mut rng, 1, false);
        let d = on_disk(&m, &[fmt]);
        let mut r = recipe(Method::Nearswap, &d, true);
        r.parameters.t = Some(0.1.into());
        let want: Vec<Vec<f64>> = (0..SHAPES.len())
            .map(|t| {
                let (b, x) = (&d.base_values[t], &d.tuned_values[0][t]);
                b.iter()
                    .zip(x)
                    .map(|(&b, &x)| {
                        let w = (0.1 / (b - x).abs().max(1e-6)).clamp(0.0, 1.0);
                        w * x + (1.0 - w) * b
                    })
                    .collect()
            })
            .collect();
        check(&same_at_any_threads(&r, &d, "nearswap"), &want, fmt);
        let mut r = recipe(Method::Passthrough, &d, false);
        r.ingredients[0].weight = Some(0.5.into());
        let want: Vec<Vec<f64>> =
            d.tuned_values[0].iter().map(|t| t.iter().map(|x| 0.5 * x).collect()).collect();
        check(&same_at_any_threads(&r, &d, "passthrough"), &want, fmt);
    }
}

/// A slice of `path`'s blocks `start..end`.
fn source(path: &Path, start: usize, end: usize) -> Ingredient {
    Ingredient { layers: Some([start, end]), ..Ingredient::path(path.display().to_string()) }
}

#[test]
fn passthrough_slices_stack_renumbered_blocks_from_several_models() {
    let mut rng = Rng::new(26);
    let m = models(&mut rng, 2, false);
    let d = on_disk(&m, &[Fmt::BF16]);
    // Blocks 0..2 of the first model, then 1..3 of the second: four blocks.
    let mut r = Recipe::new(Method::Passthrough, Vec::new());
    r.slices = vec![
        Slice { ingredients: vec![source(&d.tuned[0], 0, 2)], ..Slice::default() },
        Slice { ingredients: vec![source(&d.tuned[1], 1, 3)], ..Slice::default() },
    ];
    let models: Vec<Checkpoint> = r.models().iter().map(|p| Checkpoint::open(p).unwrap()).collect();
    let prepared = prepare_models(&r, &models, &RunOptions::default()).unwrap();
    assert_eq!(prepared.blocks, Some(4));
    let out = same_at_any_threads(&r, &d, "franken");
    let written = read_output(&out);
    let value = |model: usize, name: &str| {
        let t = SHAPES.iter().position(|(n, _)| *n == name).unwrap();
        d.tuned_values[model][t].clone()
    };
    // (output name, model, source name): embeddings from the first slice's
    // model, the rest from the last's, blocks renumbered in order.
    let expected = [
        ("model.embed_tokens.weight", 0, "model.embed_tokens.weight"),
        ("model.layers.0.self_attn.q_proj.weight", 0, "model.layers.0.self_attn.q_proj.weight"),
        ("model.layers.1.mlp.up_proj.weight", 0, "model.layers.1.mlp.up_proj.weight"),
        ("model.layers.2.mlp.up_proj.weight", 1, "model.layers.1.mlp.up_proj.weight"),
        ("model.layers.3.mlp.up_proj.bias", 1, "model.layers.2.mlp.up_proj.bias"),
        ("model.norm.scale", 1, "model.norm.scale"),
        ("lm_head.empty", 1, "lm_head.empty"),
    ];
    assert_eq!(written.len(), expected.len(), "{:?}", written.keys().collect::<Vec<_>>());
    for (name, model, from) in expected {
        let (_, _, bytes) = &written[name];
        let want: Vec<u8> = value(model, from).iter().flat_map(|&x| Fmt::BF16.round(x)).collect();
        assert_eq!(bytes, &want, "{name} is {from} of model {model}");
    }
    // The recorded recipe (slices and all) replays the same bytes.
    let (metadata, _) = common::read_safetensors(&out.join("model.safetensors"));
    let recorded = Recipe::from_metadata(&metadata).unwrap();
    assert_eq!(recorded.slices, r.slices);
    let again = run_models(&recorded, &d, 2, 50, "franken-again");
    assert_eq!(read_output(&out), read_output(&again));
}

#[test]
fn a_slice_over_every_block_is_the_whole_merge_and_gradients_run_over_each_slice() {
    let mut rng = Rng::new(27);
    let m = models(&mut rng, 2, false);
    let d = on_disk(&m, &[Fmt::F32]);
    let t: Setting =
        serde_json::from_str(r#"[{"filter": "mlp", "value": [0.0, 1.0]}, {"value": 0.3}]"#)
            .unwrap();
    // mergekit's gradient-SLERP form: one slice of every block of both models.
    let mut whole = recipe(Method::Slerp, &d, false);
    whole.parameters.t = Some(t.clone());
    let mut sliced = Recipe::new(Method::Slerp, Vec::new());
    sliced.parameters.t = Some(t.clone());
    sliced.slices = vec![Slice {
        ingredients: vec![source(&d.tuned[0], 0, 3), source(&d.tuned[1], 0, 3)],
        ..Slice::default()
    }];
    let a = run(&whole, &d, 2, 40, "whole");
    let b = run_models(&sliced, &d, 2, 40, "sliced");
    assert_eq!(read_output(&a), read_output(&b));
    // Two slices of TIES: the second slice's blocks sit at 0 and 1 of its own
    // gradient, and its own parameters win over the recipe's.
    let mut ties = Recipe::new(Method::Ties, Vec::new());
    ties.parameters.density = Some(0.5.into());
    let slice = |start: usize, end: usize, density: Option<f64>| Slice {
        ingredients: vec![source(&d.tuned[0], start, end), source(&d.tuned[1], start, end)],
        base: Some(source(&d.base, start, end)),
        parameters: modelsoup::recipe::Parameters {
            density: density.map(Into::into),
            ..Default::default()
        },
    };
    ties.slices = vec![slice(0, 1, None), slice(1, 3, Some(0.2))];
    let out = same_at_any_threads(&ties, &d, "ties-slices");
    let want: Vec<Vec<f64>> = (0..SHAPES.len())
        .map(|t| {
            let (name, _) = SHAPES[t];
            let density =
                if name.contains("layers.1") || name.contains("layers.2") { 0.2 } else { 0.5 };
            let base = &d.base_values[t];
            let sparse: Vec<Vec<f64>> =
                (0..2).map(|i| trim(&delta(&d.tuned_values[i][t], base), density)).collect();
            merge_deltas(base, &sparse, &[1.0; 2], 1.0, true, true)
        })
        .collect();
    check(&out, &want, Fmt::F32);
}
