//! The shared-init check on generated models that resemble the two cases: fine-tunes
//! of one pretrained model (base + small deltas) and models initialised
//! independently (same architecture, same distributions, different draws). Also the
//! warning in `soup merge`, `--no-init-check`, and the measurements behind the
//! threshold (`cargo test --test init_check -- --nocapture measurements`).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use modelsoup::analysis::init_check::{check_shared_init, THRESHOLD};
use modelsoup::Checkpoint;

/// A small transformer-like layout: name, shape, and how it is initialised.
fn layout(hidden: usize, blocks: usize) -> Vec<(String, Vec<usize>, Init)> {
    let mut t =
        vec![("model.embed_tokens.weight".to_owned(), vec![4 * hidden, hidden], Init::Normal)];
    for b in 0..blocks {
        let p = format!("model.layers.{b}");
        for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            t.push((format!("{p}.self_attn.{m}.weight"), vec![hidden, hidden], Init::Normal));
        }
        t.push((format!("{p}.mlp.up_proj.weight"), vec![4 * hidden, hidden], Init::Normal));
        t.push((format!("{p}.mlp.down_proj.weight"), vec![hidden, 4 * hidden], Init::Normal));
        t.push((format!("{p}.input_layernorm.weight"), vec![hidden], Init::Ones));
        t.push((format!("{p}.mlp.down_proj.bias"), vec![hidden], Init::Zeros));
    }
    t.push(("model.norm.weight".to_owned(), vec![hidden], Init::Ones));
    t
}

#[derive(Clone, Copy)]
enum Init {
    Normal,
    Ones,
    Zeros,
}

/// Roughly normal, mean 0, standard deviation 1 (Irwin–Hall of 4 uniforms).
fn normal(rng: &mut Rng) -> f64 {
    ((0..4).map(|_| rng.unit()).sum::<f64>() - 2.0) * 3f64.sqrt()
}

type Model = Vec<(String, Vec<usize>, Vec<f64>)>;

/// A "pretrained" model: matrices N(0, 0.02²) plus a little structure, gains near
/// 1, biases near 0.
fn init(layout: &[(String, Vec<usize>, Init)], rng: &mut Rng) -> Model {
    layout
        .iter()
        .map(|(name, shape, how)| {
            let n: usize = shape.iter().product();
            let values = (0..n)
                .map(|_| match how {
                    Init::Normal => 0.02 * normal(rng),
                    Init::Ones => 1.0 + 0.01 * normal(rng),
                    Init::Zeros => 0.001 * normal(rng),
                })
                .collect();
            (name.clone(), shape.clone(), values)
        })
        .collect()
}

/// A fine-tune: every tensor moved by a random delta of `relative` × its norm.
fn fine_tune(base: &Model, relative: f64, rng: &mut Rng) -> Model {
    base.iter()
        .map(|(name, shape, values)| {
            let rms = (values.iter().map(|x| x * x).sum::<f64>() / values.len() as f64).sqrt();
            let moved = values.iter().map(|x| x + relative * rms * normal(rng)).collect();
            (name.clone(), shape.clone(), moved)
        })
        .collect()
}

fn save(dir: &Path, name: &str, model: &Model) -> PathBuf {
    let raw: Vec<RawTensor> =
        model.iter().map(|(n, s, v)| RawTensor::float(n, Fmt::BF16, s, v)).collect();
    let path = dir.join(name);
    write_checkpoint(&path, &raw, &[], true);
    path
}

fn open(paths: &[PathBuf]) -> Vec<Checkpoint> {
    paths.iter().map(|p| Checkpoint::open(p).unwrap()).collect()
}

#[test]
fn fine_tunes_of_one_base_pass_and_independent_inits_fail() {
    let dir = tempdir();
    let mut rng = Rng::new(1);
    let shape = layout(64, 2);
    let base = init(&shape, &mut rng);
    let tunes: Vec<PathBuf> = (0..3)
        .map(|i| save(dir.path(), &format!("tune{i}"), &fine_tune(&base, 0.1, &mut rng)))
        .collect();
    let check = check_shared_init(&open(&tunes));
    assert!(!check.looks_independent(), "{check:?}");
    assert!(check.lowest().unwrap() > 0.95, "{check:?}");
    assert_eq!(check.matrices, 13, "embeddings and 6 matrices per block; no 1-D tensors");

    let scratch: Vec<PathBuf> =
        (0..3).map(|i| save(dir.path(), &format!("scratch{i}"), &init(&shape, &mut rng))).collect();
    let check = check_shared_init(&open(&scratch));
    assert!(check.looks_independent());
    assert_eq!(check.independent.len(), 3, "every pair");
    assert!(check.lowest().unwrap().abs() < 0.05, "{check:?}");

    // One ingredient from scratch among fine-tunes: exactly its pairs are flagged.
    let mixed = [tunes[0].clone(), scratch[0].clone(), tunes[1].clone()];
    let check = check_shared_init(&open(&mixed));
    let pairs: Vec<(usize, usize)> = check.independent.iter().map(|p| (p.a, p.b)).collect();
    assert_eq!(pairs.len(), 2);
    assert!(pairs.iter().all(|&(a, b)| a == 1 || b == 1), "{pairs:?}");
}

#[test]
fn layer_norm_gains_do_not_make_independent_models_look_related() {
    // Gains of 1 carry most of the norm here: a whole-model cosine would be high
    // (about 0.9), the per-matrix median is not.
    let dir = tempdir();
    let mut rng = Rng::new(2);
    let mut shape = layout(32, 1);
    shape.extend((0..40).map(|i| (format!("norm{i}.weight"), vec![4096], Init::Ones)));
    let paths: Vec<PathBuf> =
        (0..2).map(|i| save(dir.path(), &format!("m{i}"), &init(&shape, &mut rng))).collect();
    let raw: Vec<Vec<f64>> = paths
        .iter()
        .map(|p| {
            read_output(p).values().flat_map(|(_, _, bytes)| Fmt::BF16.decode(bytes)).collect()
        })
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let global = dot(&raw[0], &raw[1]) / (dot(&raw[0], &raw[0]) * dot(&raw[1], &raw[1])).sqrt();
    assert!(global > 0.8, "the whole-model cosine is inflated: {global}");
    let check = check_shared_init(&open(&paths));
    assert!(check.looks_independent(), "{check:?}");
}

#[test]
fn merge_warns_before_souping_independent_inits_and_not_fine_tunes() {
    let dir = tempdir();
    let mut rng = Rng::new(3);
    let shape = layout(32, 1);
    let base = init(&shape, &mut rng);
    let a = save(dir.path(), "a", &fine_tune(&base, 0.05, &mut rng));
    let b = save(dir.path(), "b", &fine_tune(&base, 0.05, &mut rng));
    let c = save(dir.path(), "c", &init(&shape, &mut rng));
    let out = dir.path().join("out");

    let quiet = soup_ok(&["merge", s(&a), s(&b), "-o", s(&out)]);
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(!stderr.contains("warning"), "{stderr}");

    let warned = soup_ok(&["merge", s(&a), s(&c), "-o", s(&out), "--force"]);
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(stderr.starts_with("warning: these ingredients do not look fine-tuned"), "{stderr}");
    assert!(stderr.contains(&format!("{} vs {}: ", s(&a), s(&c))), "{stderr}");
    assert!(stderr.contains("--no-init-check"), "{stderr}");
    let warning_at = stderr.find("warning").unwrap();
    let merged_at = stderr.find("merged").unwrap();
    assert!(warning_at < merged_at, "the warning comes before the work");

    let skipped = soup_ok(&["merge", s(&a), s(&c), "-o", s(&out), "--force", "--no-init-check"]);
    assert!(!String::from_utf8_lossy(&skipped.stderr).contains("warning"));

    // The searches warn before scoring anything.
    for method in ["greedy", "pruned"] {
        let searched = dir.path().join(method);
        let run = soup_ok(&[method, s(&a), s(&c), "-o", s(&searched), "--eval", "echo 1"]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.starts_with("warning: these ingredients"), "{method}: {stderr}");
        let run = soup_ok(&[
            method,
            s(&a),
            s(&c),
            "-o",
            s(&searched),
            "--eval",
            "echo 1",
            "--force",
            "--no-init-check",
        ]);
        assert!(!String::from_utf8_lossy(&run.stderr).contains("do not look fine-tuned"));
    }
}

#[test]
fn angles_reports_the_check_in_its_table_and_json() {
    let dir = tempdir();
    let mut rng = Rng::new(4);
    let shape = layout(32, 1);
    let base_model = init(&shape, &mut rng);
    let base = save(dir.path(), "base", &base_model);
    let a = save(dir.path(), "a", &fine_tune(&base_model, 0.05, &mut rng));
    let c = save(dir.path(), "c", &init(&shape, &mut rng));
    let table = String::from_utf8(soup_ok(&["angles", "--base", s(&base), s(&a)]).stdout).unwrap();
    assert!(table.contains("looks fine-tuned from one model"), "{table}");
    let out = soup_ok(&["angles", "--base", s(&base), s(&a), s(&c), "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = &doc["init_check"];
    assert_eq!(check["names"].as_array().unwrap().len(), 3);
    let flagged = check["independent"].as_array().unwrap();
    assert_eq!(flagged.len(), 2, "c against the base and against a: {check}");
}

/// The numbers behind the threshold: median per-matrix cosines of fine-tunes at
/// growing delta sizes, and of independent inits, on matrices of several sizes.
#[test]
fn measurements() {
    let dir = tempdir();
    let mut rng = Rng::new(5);
    println!("| hidden | pair | median cosine |");
    println!("|---|---|---|");
    for hidden in [32, 128] {
        let shape = layout(hidden, 2);
        let base = init(&shape, &mut rng);
        let b = save(dir.path(), &format!("base{hidden}"), &base);
        for relative in [0.01, 0.1, 0.3, 0.5, 1.0, 2.0] {
            let t = save(
                dir.path(),
                &format!("t{hidden}-{relative}"),
                &fine_tune(&base, relative, &mut rng),
            );
            let u = save(
                dir.path(),
                &format!("u{hidden}-{relative}"),
                &fine_tune(&base, relative, &mut rng),
            );
            let check = check_shared_init(&open(&[t, u]));
            let c = check.median_cosine[0][1];
            println!("| {hidden} | two fine-tunes, ‖δ‖/‖θ‖ = {relative} | {c:.4} |");
            let expected = 1.0 / (1.0 + relative * relative);
            assert!((c - expected).abs() < 0.05, "{relative}: {c} vs {expected}");
            // 1 / (1 + r²) crosses the threshold at r = 1: deltas as large as the
            // weights themselves.
            if relative <= 0.5 {
                assert!(c > THRESHOLD);
            } else if relative >= 2.0 {
                assert!(c < THRESHOLD);
            }
        }
        let s2 = save(dir.path(), &format!("s{hidden}"), &init(&shape, &mut rng));
        let check = check_shared_init(&open(&[b, s2]));
        let c = check.median_cosine[0][1];
        println!("| {hidden} | independent inits | {c:.4} |");
        assert!(c.abs() < 0.05);
    }
}
