//! `soup merge` as a user runs it: output layout, JSON summary, recipe metadata,
//! support files, overwrite rules and help text.

mod common;

use std::fs;

use common::{
    read_output, read_safetensors, s, soup, soup_ok, write_checkpoint, Fmt, RawTensor, Rng,
};

fn checkpoint(
    dir: &std::path::Path,
    name: &str,
    seed: u64,
    splits: &[usize],
) -> std::path::PathBuf {
    let mut rng = Rng::new(seed);
    let v = |rng: &mut Rng, n: usize| (0..n).map(|_| rng.value()).collect::<Vec<_>>();
    let tensors = vec![
        RawTensor::float("embed.weight", Fmt::BF16, &[11, 8], &v(&mut rng, 88)),
        RawTensor::float("layers.0.weight", Fmt::BF16, &[8, 8], &v(&mut rng, 64)),
        RawTensor::float("norm.weight", Fmt::F32, &[8], &v(&mut rng, 8)),
    ];
    let path = dir.join(name);
    write_checkpoint(&path, &tensors, splits, true);
    fs::write(path.join("tokenizer.json"), format!("{{\"from\": \"{name}\"}}")).unwrap();
    fs::write(path.join("training_args.bin"), b"weights-like").unwrap();
    path
}

#[test]
fn uniform_merge_writes_a_loadable_directory_with_the_recipe() {
    let dir = common::tempdir();
    let a = checkpoint(dir.path(), "a", 1, &[]);
    let b = checkpoint(dir.path(), "b", 2, &[1]);
    let out = dir.path().join("soup");
    let run = soup_ok(&["merge", s(&a), s(&b), "-o", s(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("merged 2 ingredients (linear)") && stderr.contains("3 tensors"),
        "{stderr}"
    );
    assert!(run.stdout.is_empty(), "stdout stays clean without --json");

    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["README.md", "config.json", "model.safetensors", "tokenizer.json"]);
    assert_eq!(fs::read_to_string(out.join("tokenizer.json")).unwrap(), "{\"from\": \"a\"}");
    let card = fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("# soup") && card.contains("method: linear"), "{card}");

    let (metadata, tensors) = read_safetensors(&out.join("model.safetensors"));
    assert_eq!(metadata["format"], "pt");
    let recipe: serde_json::Value = serde_json::from_str(&metadata["modelsoup.recipe"]).unwrap();
    assert_eq!(recipe["method"], "linear");
    // No weights given: equal weights, normalised (the defaults, so not written).
    assert_eq!(recipe["ingredients"], serde_json::json!([{"path": s(&a)}, {"path": s(&b)}]));
    assert!(recipe["tool"].as_str().unwrap().starts_with("modelsoup "));
    assert_eq!(tensors["embed.weight"].0, "BF16");
    assert_eq!(tensors["norm.weight"].0, "F32");
    // No staging directories left beside the output.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn json_summary_weights_dtype_and_sharding() {
    let dir = common::tempdir();
    let a = checkpoint(dir.path(), "a", 3, &[2]);
    let b = checkpoint(dir.path(), "b", 4, &[]);
    let c = checkpoint(dir.path(), "c", 5, &[1, 2]);
    let out = dir.path().join("soup");
    let run = soup_ok(&[
        "merge",
        s(&a),
        s(&b),
        s(&c),
        "-o",
        s(&out),
        "--weights",
        "2,1,1",
        "--dtype",
        "f32",
        "--max-shard-size",
        "300",
        "--threads",
        "2",
        "--json",
        "--copy-files-from",
        s(&c),
    ]);
    let summary: serde_json::Value =
        serde_json::from_slice(&run.stdout).expect("stdout is one JSON object");
    assert_eq!(summary["tensors"], 3);
    assert_eq!(summary["parameters"], 88 + 64 + 8);
    assert_eq!(summary["method"], "linear");
    let weights: Vec<f64> = summary["recipe"]["ingredients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["weight"].as_f64().unwrap())
        .collect();
    assert_eq!(weights, [2.0, 1.0, 1.0], "as given; linear normalises them");
    assert_eq!(summary["recipe"]["output"]["dtype"], "f32");
    assert!(summary["seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(summary["statistics_bytes_read"], 0, "a linear merge has no statistics pass");
    assert!(summary["total_seconds"].as_f64() >= summary["seconds"].as_f64());
    let files: Vec<&str> =
        summary["output_files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert!(
        files.len() >= 3 && files.iter().all(|f| std::path::Path::new(f).exists()),
        "{files:?}"
    );
    let written: u64 = files
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .map(|f| fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(summary["bytes_written"].as_u64().unwrap(), written);

    let index: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(index["metadata"]["total_size"], (88 + 64 + 8) * 4);
    assert_eq!(index["weight_map"].as_object().unwrap().len(), 3);
    assert!(read_output(&out).values().all(|(dtype, _, _)| dtype == "F32"));
    assert_eq!(fs::read_to_string(out.join("tokenizer.json")).unwrap(), "{\"from\": \"c\"}");
}

#[test]
fn existing_output_needs_force_and_is_replaced_whole() {
    let dir = common::tempdir();
    let a = checkpoint(dir.path(), "a", 6, &[]);
    let out = dir.path().join("soup");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("old.txt"), "old").unwrap();
    let refused = soup(&["merge", s(&a), "-o", s(&out), "--quiet"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    assert!(out.join("old.txt").exists());
    let run = soup_ok(&["merge", s(&a), "-o", s(&out), "--force", "--quiet"]);
    assert!(run.stderr.is_empty(), "--quiet prints nothing on success");
    assert!(!out.join("old.txt").exists() && out.join("model.safetensors").exists());
}

#[test]
fn help_teaches_the_command() {
    let top = soup_ok(&["--help"]);
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(text.contains("merge") && text.contains("Exit status"), "{text}");
    let merge = soup_ok(&["merge", "--help"]);
    let text = String::from_utf8_lossy(&merge.stdout);
    for needle in [
        "--weights",
        "--dtype",
        "--max-shard-size",
        "--force",
        "Examples:",
        "model.safetensors.index.json",
    ] {
        assert!(text.contains(needle), "merge --help lacks {needle}:\n{text}");
    }
    assert!(!text.contains("--chunk-elements"), "tuning flags stay hidden");
}

#[test]
fn readme_quick_start_example_merges() {
    let dir = common::tempdir();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny");
    let runs: Vec<String> =
        ["run-a", "run-b", "run-c"].iter().map(|r| s(&root.join(r)).to_owned()).collect();
    let out = dir.path().join("tiny-soup");
    let mut args = vec!["merge"];
    args.extend(runs.iter().map(String::as_str));
    args.extend(["-o", s(&out), "--force"]);
    soup_ok(&args);
    let tensors = read_output(&out);
    assert_eq!(tensors.len(), 7);
    assert_eq!(tensors["embeddings.position_ids"].0, "I64");
    assert!(out.join("config.json").exists() && out.join("tokenizer_config.json").exists());
}
