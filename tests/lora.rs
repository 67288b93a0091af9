//! LoRA adapters as ingredients, against adapters written by the real `peft`
//! (tests/fixtures/lora/make_fixtures.py) and its own `merge_and_unload()` computed
//! in float64, and against an f64 reference computed here for a synthetic adapter
//! on a bf16 base whose matrices span several tiles and chunks.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::cli::assert_recipe_replays;
use common::{
    read_output, read_safetensors, s, soup_err, soup_ok, tempdir, Fmt, RawTensor, Rng, TensorMap,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora").join(name)
}

fn merged(name: &str) -> TensorMap {
    read_safetensors(&fixture(&format!("{name}.merged.safetensors"))).1
}

/// `values` (F64 bytes) rounded to `fmt`.
fn rounded(fmt: Fmt, bytes: &[u8]) -> Vec<u8> {
    Fmt::F64.decode(bytes).into_iter().flat_map(|x| fmt.round(x)).collect()
}

#[test]
fn an_adapter_materialises_exactly_as_peft_merges_it_in_f64() {
    let dir = tempdir();
    for (adapter, base) in
        [("bert_a", "bert_base"), ("bert_b", "bert_base"), ("gpt2_fifo", "gpt2_base")]
    {
        let want = merged(adapter);
        let out = dir.path().join(adapter);
        soup_ok(&[
            "convert",
            s(&fixture(adapter)),
            "--base",
            s(&fixture(base)),
            "--dtype",
            "f64",
            "-o",
            s(&out),
        ]);
        let got = read_output(&out);
        // GPT-2's tied head is left out, as its base saved it.
        for (name, (dtype, shape, bytes)) in &got {
            let (_, wshape, wbytes) = &want[name];
            assert_eq!((dtype.as_str(), shape), ("F64", wshape), "{adapter} {name}");
            assert!(bytes == wbytes, "{adapter}: {name} differs from peft's merge");
        }
        assert_eq!(got.len() + usize::from(adapter == "gpt2_fifo"), want.len(), "{adapter}");
        // By default each tensor is written in its base's dtype, rounded once.
        let out = dir.path().join(format!("{adapter}-f32"));
        soup_ok(&["convert", s(&fixture(adapter)), "--base", s(&fixture(base)), "-o", s(&out)]);
        for (name, (dtype, _, bytes)) in read_output(&out) {
            assert_eq!(dtype, "F32", "{name}");
            assert!(bytes == rounded(Fmt::F32, &want[&name].2), "{adapter}: {name}");
        }
        // The base's config and files come along, naming the dtype written.
        let config = fs::read_to_string(out.join("config.json")).unwrap();
        assert!(config.contains("\"float32\""), "{config}");
        assert_recipe_replays(&out);
    }
}

#[test]
fn a_soup_of_adapters_is_the_mean_of_their_merged_models() {
    let dir = tempdir();
    let out = dir.path().join("soup");
    let base = fixture("bert_base");
    soup_ok(&[
        "merge",
        s(&fixture("bert_a")),
        s(&fixture("bert_b")),
        "--base",
        s(&base),
        "-o",
        s(&out),
    ]);
    assert_mean_of_merged(&out);
    assert_recipe_replays(&out);
}

/// The soup in `out` is the f32 mean of peft's merges of `bert_a` and `bert_b`:
/// ½x + ½y is exact in f64, so the soup is the correctly rounded mean.
fn assert_mean_of_merged(out: &Path) {
    let (a, b) = (merged("bert_a"), merged("bert_b"));
    for (name, (_, _, bytes)) in read_output(out) {
        let mean: Vec<u8> = Fmt::F64
            .decode(&a[&name].2)
            .iter()
            .zip(Fmt::F64.decode(&b[&name].2))
            .flat_map(|(x, y)| Fmt::F32.round(0.5 * x + 0.5 * y))
            .collect();
        assert!(bytes == mean, "{name}");
    }
}

#[test]
fn every_method_sees_an_adapter_as_its_merged_model() {
    let dir = tempdir();
    let base = fixture("bert_base");
    let adapters = [fixture("bert_a"), fixture("bert_b")];
    let full = [fixture("bert_a.merged.safetensors"), fixture("bert_b.merged.safetensors")];
    // Linear with the base weighted 0 (one weight more than the ingredients)
    // keeps the plain weighted mean; every other method takes the base.
    let methods: [&[&str]; 5] = [
        &["--method", "linear", "--weights", "0.3,0.7,0"],
        &["--method", "task-arithmetic", "--lambda", "0.8"],
        &["--method", "ties", "--density", "0.4"],
        &["--method", "dare-ties", "--density", "0.5", "--seed", "3"],
        &["--method", "model-stock"],
    ];
    for (m, method) in methods.iter().enumerate() {
        let run = |inputs: &[PathBuf; 2], name: &str| {
            let out = dir.path().join(format!("{m}-{name}"));
            let mut args = vec!["merge", s(&inputs[0]), s(&inputs[1]), "--base", s(&base)];
            args.extend(*method);
            args.extend(["--dtype", "f32", "--no-init-check", "-o", s(&out)]);
            soup_ok(&args);
            if name == "adapters" {
                assert_recipe_replays(&out);
            }
            read_output(&out)
        };
        // The adapters' computed values equal peft's f64 merge, so the bytes match.
        assert_eq!(run(&adapters, "adapters"), run(&full, "full"), "{method:?}");
    }
}

#[test]
fn a_recipe_gives_each_adapter_its_base_for_methods_without_one() {
    let dir = tempdir();
    let base = fixture("bert_base");
    let full = [fixture("bert_a.merged.safetensors"), fixture("bert_b.merged.safetensors")];
    let recipe = dir.path().join("slerp.yaml");
    fs::write(
        &recipe,
        format!(
            "method: slerp\nparameters: {{t: 0.3}}\noutput: {{dtype: f32}}\ningredients:\n\
             - {{path: {}, adapter_base: {}}}\n- {{path: {}, adapter_base: {}}}\n",
            s(&fixture("bert_a")),
            s(&base),
            s(&fixture("bert_b")),
            s(&base),
        ),
    )
    .unwrap();
    let out = dir.path().join("slerp");
    soup_ok(&["merge", "--recipe", s(&recipe), "-o", s(&out), "--no-init-check"]);
    let plain = dir.path().join("slerp-full");
    soup_ok(&[
        "merge",
        s(&full[0]),
        s(&full[1]),
        "--method",
        "slerp",
        "--t",
        "0.3",
        "--dtype",
        "f32",
        "--no-init-check",
        "-o",
        s(&plain),
    ]);
    assert_eq!(read_output(&out), read_output(&plain));
    assert_recipe_replays(&out);
    // DARE (linear) too, with the recipe's base serving the adapters.
    let out = dir.path().join("dare");
    let run = |a: &Path, b: &Path, out: &Path| {
        soup_ok(&[
            "merge",
            s(a),
            s(b),
            "--base",
            s(&base),
            "--method",
            "dare-linear",
            "--density",
            "0.6",
            "--seed",
            "9",
            "--dtype",
            "f32",
            "--no-init-check",
            "-o",
            s(out),
        ]);
        read_output(out)
    };
    let full_out = dir.path().join("dare-full");
    assert_eq!(
        run(&fixture("bert_a"), &fixture("bert_b"), &out),
        run(&full[0], &full[1], &full_out)
    );
}

/// A fake Hugging Face cache holding `bert_base` as `tiny-org/bert-base`.
fn hub_cache(root: &Path) -> (PathBuf, String) {
    let commit = "0123456789abcdef0123456789abcdef01234567".to_owned();
    let model = root.join("models--tiny-org--bert-base");
    let snapshot = model.join("snapshots").join(&commit);
    fs::create_dir_all(&snapshot).unwrap();
    fs::create_dir_all(model.join("refs")).unwrap();
    fs::write(model.join("refs/main"), &commit).unwrap();
    for f in ["config.json", "model.safetensors"] {
        fs::copy(fixture("bert_base").join(f), snapshot.join(f)).unwrap();
    }
    (root.to_path_buf(), commit)
}

#[test]
fn an_adapter_finds_its_base_in_the_hub_cache_and_the_recipe_pins_it() {
    let dir = tempdir();
    let (cache, commit) = hub_cache(&dir.path().join("hub"));
    let out = dir.path().join("a");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_soup"))
        .env("HF_HUB_CACHE", &cache)
        .args(["convert", s(&fixture("bert_a")), "-o", s(&out), "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ingredient = &summary["recipe"]["ingredients"][0];
    assert_eq!(ingredient["adapter_base"], format!("tiny-org/bert-base@{commit}"));
    for (name, (_, _, bytes)) in read_output(&out) {
        assert!(bytes == rounded(Fmt::F32, &merged("bert_a")[&name].2), "{name}");
    }
    // Not cached: the error names the adapter and the command that fetches its base.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_soup"))
        .env("HF_HUB_CACHE", dir.path().join("empty"))
        .args(["convert", s(&fixture("bert_a")), "-o", s(&dir.path().join("c"))])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("bert_a") && err.contains("hf download tiny-org/bert-base"), "{err}");
    // With no base named, the error says to give --base.
    let err = soup_err(&["convert", s(&fixture("bert_b")), "-o", s(&dir.path().join("b"))]);
    assert!(err.contains("names no base model") && err.contains("--base"), "{err}");
}

#[test]
fn searches_and_angles_take_adapters() {
    let dir = tempdir();
    let base = fixture("bert_base");
    let out = dir.path().join("greedy");
    soup_ok(&[
        "greedy",
        s(&fixture("bert_a")),
        s(&fixture("bert_b")),
        "--base",
        s(&base),
        "--eval",
        "echo 1",
        "--order",
        "given",
        "-q",
        "-o",
        s(&out),
    ]);
    // Equal scores keep both: the soup of the two adapters.
    assert_mean_of_merged(&out);
    assert_recipe_replays(&out);

    // Pruned and learned searches take them too, and their soups replay.
    let (fa, fb) = (fixture("bert_a"), fixture("bert_b"));
    for (search, extra) in [("pruned", &[][..]), ("learned", &["--budget", "4"][..])] {
        let out = dir.path().join(search);
        let mut args = vec![search, s(&fa), s(&fb), "--base", s(&base)];
        args.extend(["--eval", "echo 1", "-q", "-o", s(&out)]);
        args.extend(extra);
        soup_ok(&args);
        assert_recipe_replays(&out);
    }

    // The angle of two adapters is the angle of their merged deltas.
    let angles = |inputs: [PathBuf; 2]| -> serde_json::Value {
        let o = soup_ok(&["angles", "--base", s(&base), s(&inputs[0]), s(&inputs[1]), "--json"]);
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let lora = angles([fixture("bert_a"), fixture("bert_b")]);
    let full = angles([fixture("bert_a.merged.safetensors"), fixture("bert_b.merged.safetensors")]);
    assert_eq!(lora["cosines"], full["cosines"]);
    assert_eq!(lora["delta_norms"], full["delta_norms"]);
}

#[test]
fn other_peft_methods_and_mismatched_bases_are_refused_by_name() {
    let dir = tempdir();
    let out = dir.path().join("x");
    let base = fixture("bert_base");
    for (adapter, says) in [("bert_dora", "DoRA (use_dora)"), ("bert_ia3", "peft_type IA3")] {
        let err = soup_err(&["convert", s(&fixture(adapter)), "--base", s(&base), "-o", s(&out)]);
        assert!(err.contains(says) && err.contains(adapter), "{err}");
    }
    // inspect shows an adapter as stored: the base's dtypes and sizes.
    let o = soup_ok(&["inspect", s(&fixture("bert_b")), "--base", s(&base), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let text = report.to_string();
    assert!(!text.contains("F64") && text.contains("\"bytes\":21324"), "{text}");
    let err = soup_err(&[
        "convert",
        s(&fixture("bert_a")),
        "--base",
        s(&fixture("gpt2_base")),
        "-o",
        s(&out),
    ]);
    assert!(err.contains("has no tensor") && err.contains("bert_a"), "{err}");
}

/// A synthetic adapter: bf16 base matrix `w` (rows × cols), `lora_A` bf16
/// (r × cols), `lora_B` f32 (rows × r), alpha, written as peft lays it out.
fn synthetic(
    dir: &Path,
    rows: usize,
    cols: usize,
    r: usize,
    alpha: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut rng = Rng::new(7);
    let mut values = |n: usize, fmt: Fmt| -> Vec<f64> {
        (0..n).map(|_| fmt.decode(&fmt.encode(rng.value()))[0]).collect()
    };
    let (w, a, b) =
        (values(rows * cols, Fmt::BF16), values(r * cols, Fmt::BF16), values(rows * r, Fmt::F32));
    let bias = values(rows, Fmt::BF16);
    let base = dir.join("base");
    common::write_checkpoint(
        &base,
        &[
            RawTensor::float("layer.proj.weight", Fmt::BF16, &[rows, cols], &w),
            RawTensor::float("layer.proj.bias", Fmt::BF16, &[rows], &bias),
        ],
        &[],
        true,
    );
    let adapter = dir.join("adapter");
    fs::create_dir_all(&adapter).unwrap();
    common::write_file(
        &adapter.join("adapter_model.safetensors"),
        &[
            RawTensor::float(
                "base_model.model.layer.proj.lora_A.weight",
                Fmt::BF16,
                &[r, cols],
                &a,
            ),
            RawTensor::float("base_model.model.layer.proj.lora_B.weight", Fmt::F32, &[rows, r], &b),
        ],
        true,
    );
    let config = serde_json::json!({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["proj"],
        "fan_in_fan_out": false, "use_rslora": false, "base_model_name_or_path": s(&base),
    });
    fs::write(adapter.join("adapter_config.json"), config.to_string()).unwrap();
    (w, a, b)
}

#[test]
fn chunks_and_tiles_agree_with_an_f64_reference() {
    let dir = tempdir();
    // 3000 columns at r = 5: tiles of 409 columns, so rows cross tiles; chunks of
    // 1000 elements cross rows.
    let (rows, cols, r, alpha) = (7, 3000, 5, 3.0);
    let (w, a, b) = synthetic(dir.path(), rows, cols, r, alpha);
    let scale = alpha / r as f64;
    let want: Vec<f64> = (0..rows * cols)
        .map(|e| {
            let (i, j) = (e / cols, e % cols);
            let mut sum = 0.0;
            for k in 0..r {
                sum += b[i * r + k] * a[k * cols + j];
            }
            w[e] + scale * sum
        })
        .collect();
    for (chunk, threads) in [("1000", "3"), ("65536", "1"), ("7", "2")] {
        let out = dir.path().join(format!("out-{chunk}"));
        soup_ok(&[
            "merge",
            s(&dir.path().join("adapter")),
            "--dtype",
            "f64",
            "--chunk-elements",
            chunk,
            "-t",
            threads,
            "-o",
            s(&out),
        ]);
        let got = Fmt::F64.decode(&read_output(&out)["layer.proj.weight"].2);
        assert_eq!(got, want, "chunks of {chunk}");
    }
    // Written in the base's bf16 by default, rounded once from the f64 value.
    let out = dir.path().join("bf16");
    soup_ok(&["convert", s(&dir.path().join("adapter")), "-o", s(&out)]);
    let got = read_output(&out);
    let (dtype, _, bytes) = &got["layer.proj.weight"];
    assert_eq!(dtype, "BF16");
    let expected: Vec<u8> = want.iter().flat_map(|&x| Fmt::BF16.round(x)).collect();
    assert!(*bytes == expected);
}

/// The recipe-only methods, each as `(method, parameters, models, uses a base)`:
/// two models, or one for NearSwap.
const RECIPE_METHODS: [(&str, &str, usize, bool); 9] = [
    ("breadcrumbs", "{density: 0.6, gamma: 0.1}", 2, true),
    ("breadcrumbs-ties", "{density: 0.6, gamma: 0.1}", 2, true),
    ("della", "{density: 0.6, epsilon: 0.1, seed: 3}", 2, true),
    ("della-linear", "{density: 0.6, epsilon: 0.1, seed: 3}", 2, true),
    ("sce", "{select_topk: 0.5}", 2, true),
    ("nearswap", "{t: 0.01}", 1, true),
    ("nuslerp", "{weight: 0.4}", 2, false),
    ("multislerp", "{weight: 0.5}", 2, false),
    ("karcher", "{}", 2, false),
];

#[test]
fn the_recipe_methods_see_an_adapter_as_its_merged_model() {
    let dir = tempdir();
    let base = fixture("bert_base");
    let adapters = [fixture("bert_a"), fixture("bert_b")];
    let full = [fixture("bert_a.merged.safetensors"), fixture("bert_b.merged.safetensors")];
    for (method, parameters, k, with_base) in RECIPE_METHODS {
        let run = |models: &[PathBuf; 2], name: &str| {
            // With a base, it serves the adapters; without one, each adapter
            // names its own.
            let own_base = if with_base || name == "full" {
                String::new()
            } else {
                format!(", adapter_base: {}", s(&base))
            };
            let mut text = format!(
                "method: {method}\nparameters: {parameters}\noutput: {{dtype: f32}}\ningredients:\n"
            );
            for m in &models[..k] {
                text += &format!("- {{path: {}{own_base}}}\n", s(m));
            }
            if with_base {
                text += &format!("base: {}\n", s(&base));
            }
            let recipe = dir.path().join(format!("{method}-{name}.yaml"));
            fs::write(&recipe, text).unwrap();
            let out = dir.path().join(format!("{method}-{name}"));
            soup_ok(&["merge", "--recipe", s(&recipe), "--no-init-check", "-o", s(&out)]);
            if name == "adapters" {
                assert_recipe_replays(&out);
            }
            read_output(&out)
        };
        assert_eq!(run(&adapters, "adapters"), run(&full, "full"), "{method}");
    }
}

#[test]
fn slices_of_adapters_are_slices_of_their_merged_models() {
    let dir = tempdir();
    let base = fixture("bert_base");
    let run = |models: [PathBuf; 2], name: &str| {
        let own_base = if name == "adapters" {
            format!(", adapter_base: {}", s(&base))
        } else {
            String::new()
        };
        // A frankenmerge: block 0 of one model, then blocks 0 and 1 of the other.
        let text = format!(
            "method: passthrough\noutput: {{dtype: f32}}\nslices:\n\
             - ingredients: [{{path: {}, layers: [0, 1]{own_base}}}]\n\
             - ingredients: [{{path: {}, layers: [0, 2]{own_base}}}]\n",
            s(&models[0]),
            s(&models[1]),
        );
        let recipe = dir.path().join(format!("{name}.yaml"));
        fs::write(&recipe, text).unwrap();
        let out = dir.path().join(name);
        soup_ok(&["merge", "--recipe", s(&recipe), "--no-init-check", "-o", s(&out)]);
        if name == "adapters" {
            assert_recipe_replays(&out);
        }
        read_output(&out)
    };
    let got = run([fixture("bert_a"), fixture("bert_b")], "adapters");
    let want =
        run([fixture("bert_a.merged.safetensors"), fixture("bert_b.merged.safetensors")], "full");
    assert_eq!(got, want);
    // Three blocks: the stacked one is renumbered after the first.
    assert!(got.keys().any(|n| n.contains("layer.2.")), "{:?}", got.keys());
}
