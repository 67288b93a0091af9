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
use modelsoup::method::prepare_models;
use modelsoup::recipe::{Ingredient, Method, Recipe, Rule, Setting, Slice, Value};
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
    let models: Vec<Checkpoint> = recipe.models().iter().map(|p| open(p)).collect();
    let prepared = prepare_models(recipe, &models, &RunOptions::default()).unwrap();
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
    let own = |path: &str, weight: f64, density: f64, extra: fn(&mut Ingredient)| {
        let mut i = weighted(path, weight, Some(density));
        extra(&mut i);
        i
    };
    let mut crumbs = with(
        Method::BreadcrumbsTies,
        vec![own("a", 0.6, 0.6, |i| i.gamma = Some(0.05.into())), own("b", 0.4, 0.6, |_| {})],
        true,
    );
    crumbs.parameters.gamma = Some(0.1.into());
    crumbs.parameters.lambda = Some(0.9.into());
    crumbs.parameters.normalize = Some(false);
    let mut della = with(
        Method::Della,
        vec![own("a", 1.0, 0.5, |i| i.epsilon = Some(0.2.into())), own("b", 0.5, 0.6, |_| {})],
        true,
    );
    della.parameters.epsilon = Some(0.1.into());
    della.parameters.lambda = Some(1.0.into());
    della.parameters.normalize = Some(true);
    della.parameters.rescale = Some(true);
    let mut sce = with(
        Method::Sce,
        vec![Ingredient::path("a"), Ingredient::path("b"), Ingredient::path("c")],
        true,
    );
    sce.parameters.select_topk = Some(0.4.into());
    let nuslerp =
        with(Method::Nuslerp, vec![weighted("a", 0.3, None), weighted("b", 0.7, None)], true);
    let mut multislerp = with(
        Method::Multislerp,
        vec![weighted("a", 1.0, None), weighted("b", 2.0, None), weighted("c", 1.0, None)],
        false,
    );
    multislerp.parameters.normalize = Some(true);
    let mut karcher =
        with(Method::Karcher, ["a", "b", "c", "base"].map(Ingredient::path).to_vec(), false);
    karcher.parameters.max_iter = Some(20);
    karcher.parameters.tol = Some(1e-7);
    let mut nearswap = with(Method::Nearswap, vec![Ingredient::path("a")], true);
    nearswap.parameters.t = Some(0.05.into());
    let layers = |path: &str, start: usize, end: usize| Ingredient {
        layers: Some([start, end]),
        ..Ingredient::path(path)
    };
    let mut franken = with(Method::Passthrough, Vec::new(), false);
    franken.slices = [layers("a", 0, 2), layers("b", 1, 2), layers("c", 0, 2)]
        .into_iter()
        .map(|i| Slice { ingredients: vec![i], ..Slice::default() })
        .collect();
    vec![
        ("linear.yaml", linear),
        ("task_arithmetic.yaml", task),
        ("ties.yaml", ties),
        ("dare_linear.yaml", dare_linear),
        ("dare_ties.yaml", dare_ties),
        ("slerp_slices.yaml", slerp.clone()),
        ("slerp.yaml", slerp),
        ("model_stock.yaml", stock),
        ("breadcrumbs_ties.yaml", crumbs),
        ("della.yaml", della),
        ("sce.yaml", sce),
        ("nuslerp.yaml", nuslerp),
        ("multislerp.yaml", multislerp),
        ("karcher.yaml", karcher),
        ("nearswap.yaml", nearswap),
        ("passthrough_slices.yaml", franken),
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
        let blocks = if file == "passthrough_slices.yaml" { 5 } else { 2 };
        assert_eq!(got.len(), SHAPES.len() + 2 * (blocks - 2), "{file}");
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

/// The names in `dir`, sorted, hidden ones included.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn several_documents_merge_their_intermediates_first_and_clean_them_up() {
    let dir = common::tempdir();
    let root = dir.path();
    models(root);
    let before = listing(root);
    let run = soup_in(
        root,
        &["merge", "--recipe", fixture("multi.yaml").to_str().unwrap(), "-o", "soup"],
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // Nothing left beside the soup but the soup.
    let mut after = before.clone();
    after.push("soup".to_owned());
    after.sort();
    assert_eq!(listing(root), after);
    // The same as the two merges made one after the other.
    let mut ab =
        Recipe::new(Method::Linear, vec![weighted("a", 1.0, None), weighted("b", 1.0, None)]);
    ab.parameters.normalize = Some(true);
    ab.output.dtype = Some("f32".to_owned());
    native(root, &ab, "ab");
    let mut ties = Recipe::new(
        Method::Ties,
        vec![weighted("ab", 1.0, Some(0.5)), weighted("c", 1.0, Some(0.5))],
    );
    ties.base = Some(Ingredient::path("base"));
    ties.parameters.normalize = Some(true);
    ties.output.dtype = Some("f32".to_owned());
    let expected = native(root, &ties, "expected");
    assert_eq!(tensors(&root.join("soup")), tensors(&expected));
    // The soup records the intermediate, so its recipe replays it.
    let again = soup_in(root, &["merge", "--recipe", "soup", "-o", "again", "--quiet"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(tensors(&root.join("soup")), tensors(&root.join("again")));
    // A failing final merge removes the intermediates too.
    std::fs::write(
        root.join("bad.yaml"),
        "name: ab\nmerge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\n---\n\
         merge_method: ties\nbase_model: base\nmodels: [{model: ab, parameters: {weight: 1, \
         density: 0.5}}, {model: missing, parameters: {weight: 1}}]\n",
    )
    .unwrap();
    let run = soup_in(root, &["merge", "--recipe", "bad.yaml", "-o", "bad"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("missing"));
    // (Intermediates are written into `.soup-<hash>-i<pid>-<n>` beside the output;
    // its lock, `.soup-<hash>.lock`, may stay.)
    let left = listing(root);
    assert!(!left.iter().any(|n| n.starts_with(".soup-") && !n.ends_with(".lock") || n == "bad"));
}

#[test]
fn slices_write_the_outputs_layer_count_into_its_config() {
    let dir = common::tempdir();
    let root = dir.path();
    models(root);
    for name in ["a", "b", "c"] {
        let config = r#"{"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2}"#;
        std::fs::write(root.join(name).join("config.json"), config).unwrap();
    }
    let config = fixture("passthrough_slices.yaml");
    let run = soup_in(root, &["merge", "--recipe", config.to_str().unwrap(), "-o", "franken"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("franken/config.json")).unwrap()).unwrap();
    assert_eq!(written["num_hidden_layers"], 5);
    assert_eq!(written["architectures"][0], "LlamaForCausalLM");
    let got = tensors(&root.join("franken"));
    assert!(got.contains_key("model.layers.4.mlp.up_proj.weight"), "{:?}", got.keys());
    // Block 1 of b is output block 2.
    let b = tensors(&root.join("b"));
    assert_eq!(
        got["model.layers.2.self_attn.q_proj.weight"],
        b["model.layers.1.self_attn.q_proj.weight"]
    );
}

#[test]
fn tokenizer_source_chat_template_and_the_model_card() {
    let dir = common::tempdir();
    let root = dir.path();
    models(root);
    let write = |model: &str, file: &str, text: &str| {
        std::fs::write(root.join(model).join(file), text).unwrap();
    };
    write("base", "tokenizer.json", "base tokenizer");
    write("base", "tokenizer_config.json", r#"{"model_max_length": 8, "chat_template": "A"}"#);
    write("base", "tokenizer.model", "base sentencepiece");
    write("base", "README.md", "card of base");
    for (model, template) in [("a", "B"), ("b", "B"), ("c", "C")] {
        write(model, "tokenizer.json", &format!("{model} tokenizer"));
        write(model, "tokenizer_config.json", &format!(r#"{{"chat_template": "{template}"}}"#));
        write(model, "README.md", &format!("card of {model}"));
    }
    let config = "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n    parameters: \
                  {weight: 1, density: 0.5}\n  - model: b\n    parameters: {weight: 1}\n\
                  tokenizer_source: base\nchat_template: chatml\n";
    write(".", "tok.yaml", config);
    let run = soup_in(root, &["merge", "--recipe", "tok.yaml", "-o", "soup"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out = root.join("soup");
    assert_eq!(std::fs::read_to_string(out.join("tokenizer.json")).unwrap(), "base tokenizer");
    let tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tok["model_max_length"], 8);
    assert!(tok["chat_template"].as_str().unwrap().contains("<|im_start|>"), "{tok}");
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    for says in [
        "# soup",
        "[TIES](https://arxiv.org/abs/2306.01708)",
        "/base` as the base",
        "density: 0.5",
        "## mergekit configuration",
        "tokenizer_source: base",
    ] {
        assert!(card.contains(says), "the card says {says:?}:\n{card}");
    }
    assert_eq!(std::fs::read_to_string(out.join("mergekit_config.yml")).unwrap(), config);
    // The support files come from the base (TIES is built on one), but another
    // tokenizer source replaces its tokenizer whole: none of the base's
    // tokenizer files stays beside it.
    write(".", "tok_a.yaml", &config.replace("tokenizer_source: base", "tokenizer_source: a"));
    let run = soup_in(root, &["merge", "--recipe", "tok_a.yaml", "-o", "tok_a"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out = root.join("tok_a");
    assert_eq!(std::fs::read_to_string(out.join("tokenizer.json")).unwrap(), "a tokenizer");
    assert!(!out.join("tokenizer.model").exists());
    assert!(root.join("soup/tokenizer.model").exists());
    let tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert!(tok["chat_template"].as_str().unwrap().contains("<|im_start|>"), "{tok}");
    assert!(tok.get("model_max_length").is_none(), "{tok}");
    // `auto`: the template most of the models have; --no-card keeps the
    // support files' own README (the base's).
    write(
        ".",
        "auto.yaml",
        &config.replace("chatml", "auto").replace("tokenizer_source: base\n", ""),
    );
    let run = soup_in(root, &["merge", "--recipe", "auto.yaml", "-o", "auto", "--no-card"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("auto/tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(tok["chat_template"], "B");
    assert_eq!(std::fs::read_to_string(root.join("auto/README.md")).unwrap(), "card of base");
    assert!(!root.join("auto/mergekit_config.yml").exists());
    // A tokenizer source without tokenizer files is named.
    write(
        ".",
        "none.yaml",
        &config.replace("tokenizer_source: base", "tokenizer_source: c/model.safetensors"),
    );
    std::fs::remove_file(root.join("c/tokenizer.json")).unwrap();
    std::fs::remove_file(root.join("c/tokenizer_config.json")).unwrap();
    let run = soup_in(root, &["merge", "--recipe", "none.yaml", "-o", "none"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("has no tokenizer files"), "{stderr}");
}
