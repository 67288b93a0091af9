//! Training checkpoints as ingredients: the state dict inside a plain PyTorch
//! training checkpoint, a DDP checkpoint, a real PyTorch Lightning checkpoint and
//! OpenCLIP training checkpoints (fp16, `logit_scale`), selected by `--key` and
//! renamed by `--rename`; everything else in them (optimizer state, callbacks,
//! hyper-parameter objects, a call of `os.system`) left unbuilt. The fixtures are
//! made by the real libraries (tests/fixtures/training/make_fixtures.py), and
//! each comes with its bare state dict in safetensors to compare every element
//! with; soups are compared with an f64 mean of those.

mod common;

use std::path::{Path, PathBuf};

use common::cli::assert_recipe_replays;
use common::{read_output, read_safetensors, s, soup_err, soup_ok, tempdir, Fmt, TensorMap};
use modelsoup::engine::checkpoint::OpenOptions;
use modelsoup::engine::rename::Rename;
use modelsoup::torch::PickleErrorKind;
use modelsoup::{Checkpoint, Error};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/training").join(name)
}

fn expected(name: &str) -> TensorMap {
    read_safetensors(&fixture(&format!("{name}.expected.safetensors"))).1
}

fn options(key: &str, rename: &[&str]) -> OpenOptions {
    OpenOptions {
        key: Some(key.to_owned()),
        rename: rename.iter().map(|r| Rename::parse(r).unwrap()).collect(),
        ..OpenOptions::default()
    }
}

/// An error and its sources, as the CLI prints them.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(&format!(": {e}"));
        source = e.source();
    }
    out
}

/// Every tensor of `ck` equals the expected state dict's, element for element,
/// and there are no others.
fn assert_same_values(ck: &Checkpoint, expected: &TensorMap) {
    assert_eq!(ck.tensors().len(), expected.len(), "{}", ck.path().display());
    for t in ck.tensors() {
        let (dtype, shape, bytes) = expected.get(&t.name).unwrap_or_else(|| panic!("{}", t.name));
        assert_eq!(&format!("{:?}", t.dtype), dtype, "{}", t.name);
        assert_eq!(&t.shape, shape, "{}", t.name);
        let stored = std::fs::read(ck.shards()[t.shard].path()).unwrap();
        assert_eq!(&stored[t.offset..t.offset + t.len], &bytes[..], "{}", t.name);
    }
}

#[test]
fn each_layout_opens_at_its_key_with_its_names_mapped() {
    let cases: [(&str, &str, &[&str], &str); 5] = [
        ("plain.pt", "state_dict", &[], "plain"),
        ("ddp.pt", "model", &[r"s/^module\.//"], "ddp"),
        ("lightning.ckpt", "state_dict", &[r"s/^model\.//"], "lightning"),
        ("openclip_a.pt", "state_dict", &[r"s/^module\.//"], "openclip_a"),
        ("openclip_b.pt", "state_dict", &[r"s/^module\.//"], "openclip_b"),
    ];
    for (file, key, rename, name) in cases {
        let ck = Checkpoint::open_with(fixture(file), &options(key, rename)).unwrap();
        assert_same_values(&ck, &expected(name));
    }
    // Without the rename the names keep their prefix.
    let ck = Checkpoint::open_with(fixture("ddp.pt"), &options("model", &[])).unwrap();
    assert!(ck.tensors().iter().all(|t| t.name.starts_with("module.")));
    // OpenCLIP: fp16 matrices, the scalar logit_scale kept in f32.
    let ck = Checkpoint::open_with(fixture("openclip_a.pt"), &options("state_dict", &[])).unwrap();
    let scale = ck.get("module.logit_scale").unwrap();
    assert!(scale.shape.is_empty(), "{:?}", scale.shape);
    assert_eq!(ck.get("module.visual.conv1.weight").unwrap().dtype, safetensors::Dtype::F16);
}

#[test]
fn a_training_checkpoint_without_a_key_lists_its_state_dicts() {
    let err = Checkpoint::open(fixture("lightning.ckpt")).unwrap_err();
    let Error::Torch(modelsoup::torch::TorchError::Pickle { source, .. }) = &err else {
        panic!("{err:?}")
    };
    let PickleErrorKind::NestedDict { key: None, keys, candidates } = source.kind() else {
        panic!("{source:?}")
    };
    for k in ["state_dict", "optimizer_states", "callbacks", "loops", "lr_schedulers"] {
        assert!(keys.iter().any(|x| x == k), "{k} in {keys:?}");
    }
    // The model's state dict first; callbacks that hold a tensor beside other
    // values (early stopping's best score) are not dicts of tensors.
    assert_eq!(candidates[0], ("state_dict".to_owned(), 10));
    assert!(candidates.iter().all(|(k, _)| !k.starts_with("callbacks.EarlyStopping")));
    let message = chain(&err);
    assert!(
        message.contains("lightning.ckpt") && message.contains("--key state_dict"),
        "{message}"
    );

    let message = chain(&Checkpoint::open(fixture("ddp.pt")).unwrap_err());
    assert!(message.contains("\"model\" (10 tensors)"), "{message}");
}

#[test]
fn a_key_that_leads_nowhere_says_where_it_stops() {
    for (key, says) in [
        ("model", "the top level has no key \"model\""),
        ("state_dict.fc", "\"state_dict\" has no key \"fc\""),
        ("epoch", "\"epoch\" is an int, not a dict"),
    ] {
        let err = Checkpoint::open_with(fixture("plain.pt"), &options(key, &[])).unwrap_err();
        let message = chain(&err);
        assert!(message.contains(says), "{key}: {message}");
        assert!(message.contains("\"state_dict\" (10 tensors)"), "{key}: {message}");
    }
    // An object in the way says what it is, and that it was not built.
    let err = Checkpoint::open_with(fixture("plain.pt"), &options("args", &[])).unwrap_err();
    let message = chain(&err);
    assert!(message.contains("refusing global argparse.Namespace"), "{message}");
}

#[test]
fn keys_pass_through_dotted_names_and_ignore_plain_state_dicts() {
    // A callback's key holds dots itself: the longest matching key is taken.
    let key = "callbacks.ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', \
               'every_n_train_steps': 0, 'every_n_epochs': 1, 'train_time_interval': None}\
               .best_k_models";
    let ck = Checkpoint::open_with(fixture("lightning.ckpt"), &options(key, &[])).unwrap();
    assert_eq!(ck.tensors().len(), 1);
    // A file that is a state dict already is read as it is.
    let plain = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch/module_f32.bin");
    let a = Checkpoint::open(&plain).unwrap();
    let b = Checkpoint::open_with(&plain, &options("state_dict", &[])).unwrap();
    assert_eq!(a.tensors(), b.tensors());
}

#[test]
fn objects_beside_the_state_dict_are_never_built_or_called() {
    let marker = Path::new("/tmp/modelsoup-training-fixture-pwned");
    let _ = std::fs::remove_file(marker);
    let ck = Checkpoint::open_with(fixture("hostile_outside.pt"), &options("state_dict", &[]));
    assert_eq!(ck.unwrap().tensors().len(), 10);
    // Selecting the object itself names what it would have run.
    let err = chain(
        &Checkpoint::open_with(fixture("hostile_outside.pt"), &options("payload", &[]))
            .unwrap_err(),
    );
    assert!(
        err.contains("refusing global posix.system") && err.contains("nothing was run"),
        "{err}"
    );
    // Inside the state dict it is an error, with where in the pickle it is.
    let err = Checkpoint::open_with(fixture("hostile_inside.pt"), &options("state_dict", &[]))
        .unwrap_err();
    let Error::Torch(modelsoup::torch::TorchError::Pickle { source, .. }) = &err else {
        panic!("{err:?}")
    };
    assert!(source.offset().is_some(), "{source:?}");
    assert_eq!(
        source.kind(),
        &PickleErrorKind::ForbiddenGlobal { module: "posix".into(), name: "system".into() }
    );
    assert!(!marker.exists(), "the payload ran");
}

#[test]
fn renaming_two_tensors_onto_one_name_is_an_error() {
    let err = Checkpoint::open_with(
        fixture("plain.pt"),
        &options("state_dict", &[r"s/\.(weight|bias)$//"]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("the same name") && err.contains("plain.pt"), "{err}");
}

/// The f64 mean of the expected state dicts, rounded to each tensor's dtype;
/// non-float tensors must agree and are copied.
fn reference_mean(names: &[&str]) -> TensorMap {
    let maps: Vec<TensorMap> = names.iter().map(|n| expected(n)).collect();
    let mut out = TensorMap::new();
    for (name, (dtype, shape, bytes)) in &maps[0] {
        let fmt = match dtype.as_str() {
            "F32" => Fmt::F32,
            "F16" => Fmt::F16,
            "BF16" => Fmt::BF16,
            "F64" => Fmt::F64,
            _ => {
                out.insert(name.clone(), (dtype.clone(), shape.clone(), bytes.clone()));
                continue;
            }
        };
        let values: Vec<Vec<f64>> = maps.iter().map(|m| fmt.decode(&m[name].2)).collect();
        let k = values.len() as f64;
        let mean: Vec<u8> = (0..values[0].len())
            .flat_map(|i| fmt.round(values.iter().map(|v| v[i] / k).sum::<f64>()))
            .collect();
        out.insert(name.clone(), (dtype.clone(), shape.clone(), mean));
    }
    out
}

/// Asserts every tensor is within `ulps` of the reference (0: identical).
fn assert_close(got: &TensorMap, want: &TensorMap, ulps: i128) {
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (name, (dtype, shape, bytes)) in want {
        let (gd, gs, gb) = &got[name];
        assert_eq!((gd, gs), (dtype, shape), "{name}");
        let fmt = match dtype.as_str() {
            "F32" => Fmt::F32,
            "F16" => Fmt::F16,
            _ => {
                assert_eq!(gb, bytes, "{name}");
                continue;
            }
        };
        for i in 0..bytes.len() / fmt.size() {
            let d = (fmt.ordered(gb, i) - fmt.ordered(bytes, i)).abs();
            assert!(d <= ulps, "{name}[{i}] is {d} ulps off");
        }
    }
}

#[test]
fn a_soup_of_three_training_layouts_from_a_recipe_equals_the_f64_mean() {
    let dir = tempdir();
    let recipe = dir.path().join("recipe.yaml");
    std::fs::write(
        &recipe,
        format!(
            "method: linear\ningredients:\n\
             - {{path: {}, key: model, rename: ['s/^module\\.//']}}\n\
             - {{path: {}, key: state_dict, rename: ['s/^model\\.//']}}\n\
             - {{path: {}, key: state_dict}}\n",
            s(&fixture("ddp.pt")),
            s(&fixture("lightning.ckpt")),
            s(&fixture("plain.pt")),
        ),
    )
    .unwrap();
    let out = dir.path().join("soup");
    soup_ok(&["merge", "--recipe", s(&recipe), "-o", s(&out)]);
    // Three f32 inputs: the f64 sum of thirds is not always the exact mean, so
    // allow one ulp where the correctly rounded result could differ.
    assert_close(&read_output(&out), &reference_mean(&["ddp", "lightning", "plain"]), 1);
    assert_recipe_replays(&out);
}

#[test]
fn openclip_fp16_checkpoints_soup_from_the_command_line_and_replay() {
    let dir = tempdir();
    let out = dir.path().join("clip");
    let a = fixture("openclip_a.pt");
    let b = fixture("openclip_b.pt");
    let json = soup_ok(&[
        "merge",
        s(&a),
        s(&b),
        "--key",
        "state_dict",
        "--rename",
        r"s/^module\.//",
        "-o",
        s(&out),
        "--json",
    ]);
    let got = read_output(&out);
    // Two inputs: x/2 + y/2 is exact in f64, so the result is correctly rounded.
    assert_close(&got, &reference_mean(&["openclip_a", "openclip_b"]), 0);
    assert_eq!(got["logit_scale"].0, "F32");
    assert!(got["logit_scale"].1.is_empty());
    assert_eq!(got["visual.conv1.weight"].0, "F16");
    // The recipe records how each ingredient was read.
    let summary: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    for ingredient in summary["recipe"]["ingredients"].as_array().unwrap() {
        assert_eq!(ingredient["key"], "state_dict");
        assert_eq!(ingredient["rename"], serde_json::json!([r"s/^module\.//"]));
    }
    assert_recipe_replays(&out);
}

#[test]
fn bad_rename_rules_and_missing_keys_fail_on_the_command_line() {
    let dir = tempdir();
    let out = dir.path().join("x");
    let plain = fixture("plain.pt");
    let err = soup_err(&["merge", s(&plain), s(&plain), "--rename", "module.", "-o", s(&out)]);
    assert!(
        err.contains("rename rule \"module.\"") && err.contains("s/PATTERN/REPLACEMENT/"),
        "{err}"
    );
    let err = soup_err(&["inspect", s(&plain)]);
    assert!(err.contains("--key state_dict"), "{err}");
    let ok = soup_ok(&["inspect", s(&plain), "--key", "state_dict"]);
    assert!(String::from_utf8_lossy(&ok.stdout).contains("embed.weight"));
}

#[test]
fn the_recipe_methods_read_training_checkpoints_as_their_state_dicts() {
    let dir = tempdir();
    // Each method over two training layouts and a third as the base, against the
    // same method over the state dicts they hold, saved as safetensors.
    let read = [
        (fixture("ddp.pt"), "model", r"['s/^module\.//']"),
        (fixture("lightning.ckpt"), "state_dict", r"['s/^model\.//']"),
        (fixture("plain.pt"), "state_dict", "[]"),
    ];
    let plain =
        ["ddp", "lightning", "plain"].map(|n| fixture(&format!("{n}.expected.safetensors")));
    let methods = [
        ("breadcrumbs-ties", "{density: 0.5, gamma: 0.1}"),
        ("della", "{density: 0.5, epsilon: 0.2, seed: 1}"),
        ("sce", "{select_topk: 0.6}"),
        ("nuslerp", "{weight: 0.5}"),
        ("karcher", "{}"),
    ];
    for (method, parameters) in methods {
        let run = |name: &str| {
            let model = |i: usize| match name {
                "training" => {
                    let (path, key, rename) = &read[i];
                    format!("{{path: {}, key: {key}, rename: {rename}}}", s(path))
                }
                _ => format!("{{path: {}}}", s(&plain[i])),
            };
            let text = format!(
                "method: {method}\nparameters: {parameters}\ningredients: [{}, {}]\nbase: {}\n",
                model(0),
                model(1),
                model(2),
            );
            let recipe = dir.path().join(format!("{method}-{name}.yaml"));
            std::fs::write(&recipe, text).unwrap();
            let out = dir.path().join(format!("{method}-{name}"));
            soup_ok(&["merge", "--recipe", s(&recipe), "--no-init-check", "-o", s(&out)]);
            if name == "training" {
                assert_recipe_replays(&out);
            }
            read_output(&out)
        };
        assert_eq!(run("training"), run("plain"), "{method}");
    }
}
