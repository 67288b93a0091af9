//! mergekit configurations through `soup merge --recipe`, end to end: each
//! fixture in `tests/fixtures/mergekit/` runs on real checkpoints (a base and
//! three fine-tunes with transformer tensor names), and its output must equal,
//! byte for byte, the same merge written as our own recipe by hand — whose
//! methods `tests/methods.rs` checks against an f64 reference. Unsupported keys
//! stop the run with an error that names them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{write_checkpoint, Fmt, RawTensor, Rng};
use modelsoup::method::prepare;
use modelsoup::recipe::{Ingredient, Method, Recipe, Rule, Setting, Value};
use modelsoup::{write_soup, Checkpoint, Destination, RunOptions};

const SHAPES: [(&str, &[usize]); 7] = [
    ("model.embed_tokens.weight", &[16, 8]),
    ("model.layers.0.self_attn.q_proj.weight", &[8, 8]),
    ("model.layers.0.mlp.up_proj.weight", &[12, 8]),
    ("model.layers.1.self_attn.q_proj.weight", &[8, 8]),
    ("model.layers.1.mlp.up_proj.weight", &[12, 8]),
    ("model.norm.weight", &[8]),
    ("lm_head.weight", &[16, 8]),
];

/// `base`, `a`, `b`, `c` in `root`: the base random, the others base + noise.
fn models(root: &Path) {
    let mut rng = Rng::new(31);
    let base: Vec<Vec<f64>> = SHAPES
        .iter()
        .map(|(_, s)| (0..s.iter().product::<usize>()).map(|_| rng.value()).collect())
        .collect();
    for name in ["base", "a", "b", "c"] {
        let tensors: Vec<RawTensor> = SHAPES
            .iter()
            .zip(&base)
            .map(|((t, shape), values)| {
                let v: Vec<f64> = if name == "base" {
                    values.clone()
                } else {
                    values.iter().map(|x| x + 0.2 * rng.value()).collect()
                };
                RawTensor::float(t, Fmt::F32, shape, &v)
            })
            .collect();
        write_checkpoint(&root.join(name), &tensors, &[], true);
    }
}

/// Runs `soup` in `cwd` (the fixtures name models by relative paths).
fn soup_in(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_soup")).current_dir(cwd).args(args).output().unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mergekit").join(name)
}

/// Writes `recipe` through the library into `root/name`, in `root`.
fn native(root: &Path, recipe: &Recipe, name: &str) -> PathBuf {
    let open = |p: &str| Checkpoint::open(root.join(p)).unwrap();
    let ingredients: Vec<Checkpoint> = recipe.ingredients.iter().map(|i| open(&i.path)).collect();
    let base = recipe.base.as_ref().map(|b| open(&b.path));
    let prepared = prepare(recipe, &ingredients, base.as_ref(), &RunOptions::default()).unwrap();
    let out = root.join(name);
    let dest = Destination { path: &out, force: true, support_files_from: None, durable: false };
    write_soup(&prepared.inputs, &prepared.plan, &dest, &RunOptions::default()).unwrap();
    out
}

fn weighted(path: &str, weight: f64, density: Option<f64>) -> Ingredient {
    Ingredient {
        path: path.to_owned(),
        weight: Some(weight.into()),
        density: density.map(Into::into),
        ..Ingredient::default()
    }
}

fn tensors(dir: &Path) -> common::TensorMap {
    common::read_output(dir)
}

/// Each fixture and the recipe it means, written independently of the reader.
fn cases() -> Vec<(&'static str, Recipe)> {
    let with = |method: Method, ingredients: Vec<Ingredient>, base: bool| {
        let mut r = Recipe::new(method, ingredients);
        r.base = base.then(|| Ingredient::path("base"));
        r.output.dtype = Some("f32".to_owned());
        r
    };
    let mut linear = with(
        Method::Linear,
        vec![weighted("a", 0.5, None), weighted("b", 0.3, None), weighted("c", 0.2, None)],
        false,
    );
    linear.parameters.normalize = Some(true);
    let mut task = with(
        Method::TaskArithmetic,
        vec![weighted("a", 1.0, None), weighted("b", 0.5, None)],
        true,
    );
    task.parameters.lambda = Some(0.8.into());
    task.parameters.normalize = Some(false);
    let mut ties = with(
        Method::Ties,
        vec![
            weighted("a", 0.5, Some(0.5)),
            weighted("b", 0.3, Some(0.5)),
            weighted("c", 0.2, Some(0.7)),
        ],
        true,
    );
    ties.parameters.normalize = Some(true);
    let mut dare_linear =
        with(Method::DareLinear, vec![weighted("a", 0.6, None), weighted("b", 0.4, None)], true);
    dare_linear.parameters.density = Some(0.6.into());
    dare_linear.parameters.normalize = Some(true);
    dare_linear.parameters.rescale = Some(true);
    let mut dare_ties = with(
        Method::DareTies,
        vec![
            weighted("a", 0.4, Some(0.53)),
            weighted("b", 0.3, Some(0.53)),
            weighted("c", 0.3, Some(0.53)),
        ],
        true,
    );
    dare_ties.parameters.normalize = Some(false);
    dare_ties.parameters.rescale = Some(true);
    let mut slerp =
        with(Method::Slerp, vec![Ingredient::path("base"), Ingredient::path("a")], false);
    let rule = |filter: Option<&str>, value: Value| Rule {
        filter: filter.map(str::to_owned),
        layers: None,
        value,
    };
    slerp.parameters.t = Some(Setting::Rules(vec![
        rule(Some("self_attn"), Value::Gradient(vec![0.0, 0.5, 0.3, 0.7, 1.0])),
        rule(Some("mlp"), Value::Gradient(vec![1.0, 0.5, 0.7, 0.3, 0.0])),
        rule(None, Value::Number(0.5)),
    ]));
    let stock = with(
        Method::ModelStock,
        vec![Ingredient::path("a"), Ingredient::path("b"), Ingredient::path("c")],
        true,
    );
    vec![
        ("linear.yaml", linear),
        ("task_arithmetic.yaml", task),
        ("ties.yaml", ties),
        ("dare_linear.yaml", dare_linear),
        ("dare_ties.yaml", dare_ties),
        ("slerp.yaml", slerp),
        ("model_stock.yaml", stock),
    ]
}

#[test]
fn every_supported_method_runs_from_its_mergekit_config_as_its_recipe_does() {
    let dir = common::tempdir();
    let root = dir.path();
    models(root);
    for (file, recipe) in cases() {
        let out = root.join(format!("mk-{file}"));
        let run = soup_in(
            root,
            &["merge", "--recipe", fixture(file).to_str().unwrap(), "-o"]
                .into_iter()
                .chain([out.to_str().unwrap(), "--quiet"])
                .collect::<Vec<_>>(),
        );
        assert!(run.status.success(), "{file}: {}", String::from_utf8_lossy(&run.stderr));
        if file == "ties.yaml" {
            let config = fixture(file);
            let again = root.join("ties-json");
            let args = ["merge", "--recipe", config.to_str().unwrap(), "--json", "-o"];
            let args: Vec<&str> = args.into_iter().chain([again.to_str().unwrap()]).collect();
            let summary: serde_json::Value =
                serde_json::from_slice(&soup_in(root, &args).stdout).unwrap();
            let statistics = summary["statistics_bytes_read"].as_u64().unwrap();
            assert!(statistics > 0, "TIES's selection passes are counted: {summary}");
        }
        let expected = native(root, &recipe, &format!("native-{file}"));
        let (got, want) = (tensors(&out), tensors(&expected));
        assert_eq!(got.len(), SHAPES.len(), "{file}");
        for (name, t) in &want {
            assert!(got[name] == *t, "{file}: tensor {name} differs from the native recipe");
        }
    }
}

#[test]
fn gradients_and_filters_from_a_mergekit_config_reach_the_soup() {
    let dir = common::tempdir();
    let root = dir.path();
    models(root);
    let out = root.join("soup");
    let file = fixture("ties_gradient.yaml");
    let run = soup_in(root, &["merge", "--recipe", file.to_str().unwrap(), "-o", "soup"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // The per-tensor values must change the result: the same merge with the
    // gradients replaced by constants differs on the mlp and layer-1 tensors.
    let recipe = Recipe::from_metadata(&common::read_safetensors(&out.join("model.safetensors")).0)
        .expect("recipe recorded");
    let mut flat = recipe.clone();
    flat.ingredients[0].weight = Some(0.4.into());
    flat.ingredients[0].density = Some(0.5.into());
    flat.parameters.lambda = Some(1.0.into());
    let flat_out = native(root, &flat, "flat");
    let (got, other) = (tensors(&out), tensors(&flat_out));
    assert_eq!(got["model.layers.0.self_attn.q_proj.weight"].1, vec![8, 8]);
    assert_ne!(
        got["model.layers.1.mlp.up_proj.weight"],
        other["model.layers.1.mlp.up_proj.weight"]
    );
    assert_eq!(got["model.layers.0.mlp.up_proj.weight"].0, "BF16", "out_dtype");
    // And the soup's recorded recipe (ours now) replays it byte for byte.
    let again = soup_in(root, &["merge", "--recipe", "soup", "-o", "again"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(tensors(&out), tensors(&root.join("again")));
}

#[test]
fn unsupported_mergekit_keys_are_named_in_the_error() {
    let dir = common::tempdir();
    let root = dir.path();
    models(root);
    for (yaml, named) in [
        ("merge_method: ram\nmodels: [a]\n", "ram"),
        (
            "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n\
             tokenizer_source: union\n",
            "tokenizer_source",
        ),
        (
            "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      \
             weight: 1\n      density: 0.5\n      gamma: 0.01\n",
            "gamma",
        ),
    ] {
        let file = root.join("config.yaml");
        std::fs::write(&file, yaml).unwrap();
        let run = soup_in(root, &["merge", "--recipe", "config.yaml", "-o", "out"]);
        assert_eq!(run.status.code(), Some(2), "{yaml}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(named) && stderr.contains("config.yaml"), "{stderr}");
        assert!(!root.join("out").exists(), "nothing written");
    }
}
