//! `soup inspect`: the tensor table and totals (text and JSON), shards and metadata
//! with a soup's recipe, the compatibility report and its exit status, and
//! `--check-values` finding planted NaN and inf.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn model(dir: &Path, name: &str, extra: Option<RawTensor>) -> PathBuf {
    let mut rng = Rng::new(1);
    let mut tensors = vec![
        RawTensor::float(
            "embed.weight",
            Fmt::BF16,
            &[32, 8],
            &(0..256).map(|_| rng.value()).collect::<Vec<_>>(),
        ),
        RawTensor::float(
            "layers.0.w",
            Fmt::F32,
            &[8, 8],
            &(0..64).map(|_| rng.value()).collect::<Vec<_>>(),
        ),
        RawTensor::raw("position_ids", "I64", &[4], (0..4i64).flat_map(i64::to_le_bytes).collect()),
    ];
    tensors.extend(extra);
    let path = dir.join(name);
    write_checkpoint(&path, &tensors, &[1], true);
    path
}

fn json(args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = soup(args);
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), doc)
}

#[test]
fn json_lists_tensors_totals_shards_and_metadata() {
    let dir = tempdir();
    let a = model(dir.path(), "a", None);
    let (code, doc) = json(&["inspect", s(&a), "--json"]);
    assert_eq!(code, Some(0));
    let ck = &doc["checkpoints"][0];
    assert_eq!(ck["path"], s(&a));
    assert_eq!(ck["shards"].as_array().unwrap().len(), 2);
    let tensors = ck["tensors"].as_array().unwrap();
    let names: Vec<&str> = tensors.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["embed.weight", "layers.0.w", "position_ids"]);
    assert_eq!(tensors[0]["dtype"], "BF16");
    assert_eq!(tensors[0]["shape"], serde_json::json!([32, 8]));
    assert_eq!(tensors[0]["parameters"], 256);
    assert_eq!(tensors[0]["bytes"], 512);
    assert!(tensors[0].get("nan").is_none(), "values are only counted when asked");
    assert_eq!(
        ck["totals_by_dtype"]["F32"],
        serde_json::json!({"tensors": 1, "parameters": 64, "bytes": 256})
    );
    assert_eq!(ck["parameters"], 256 + 64 + 4);
    assert_eq!(ck["bytes"], 512 + 256 + 32);
    assert!(doc["compatible"].is_null(), "one checkpoint: no compatibility report");
}

#[test]
fn a_soups_recipe_shows_in_its_metadata() {
    let dir = tempdir();
    let a = model(dir.path(), "a", None);
    let b = model(dir.path(), "b", None);
    let out = dir.path().join("soup");
    soup_ok(&["merge", s(&a), s(&b), "-o", s(&out)]);
    let (_, doc) = json(&["inspect", s(&out), "--json"]);
    let ck = &doc["checkpoints"][0];
    assert_eq!(ck["metadata"]["format"], "pt");
    assert_eq!(ck["recipe"]["method"], "linear");
    assert_eq!(ck["recipe"]["ingredients"][1]["path"], s(&b));
    let text = String::from_utf8(soup_ok(&["inspect", s(&out)]).stdout).unwrap();
    assert!(text.contains("metadata modelsoup.recipe (soup recipe): {"), "{text}");
    assert!(text.contains("total BF16: 1 tensor, 256 parameters, 512 bytes"), "{text}");
}

#[test]
fn compatible_checkpoints_exit_0_and_incompatible_ones_exit_1_with_every_difference() {
    let dir = tempdir();
    let a = model(dir.path(), "a", None);
    let b = model(dir.path(), "b", None);
    let out = soup_ok(&["inspect", s(&a), s(&b)]);
    let text = String::from_utf8(out.stdout).unwrap();
    // The verdict comes first; tensor tables only with --tables.
    assert!(text.starts_with("compatible: the 2 checkpoints can be souped together\n"), "{text}");
    assert!(text.contains("shared-init check"), "{text}");
    assert!(!text.contains("position_ids"), "no tables without --tables: {text}");
    let tables = String::from_utf8(soup_ok(&["inspect", s(&a), s(&b), "--tables"]).stdout).unwrap();
    assert!(tables.starts_with("compatible: "), "{tables}");
    assert_eq!(tables.matches("position_ids").count(), 2, "{tables}");
    // One checkpoint: its table, always.
    let one = String::from_utf8(soup_ok(&["inspect", s(&a)]).stdout).unwrap();
    assert!(one.contains("position_ids") && !one.contains("compatible"), "{one}");

    let extra = RawTensor::float("head.weight", Fmt::F32, &[2], &[1.0, 2.0]);
    let c = model(dir.path(), "c", Some(extra));
    let (code, doc) = json(&["inspect", s(&a), s(&c), "--json"]);
    assert_eq!(code, Some(1));
    assert_eq!(doc["compatible"], false);
    let differences = doc["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 1);
    assert!(differences[0].as_str().unwrap().contains("head.weight"));

    let out = soup(&["inspect", s(&a), s(&c)]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(
            "incompatible: 1 difference stops a merge:\n  - tensor \"head.weight\" is missing in"
        ),
        "{text}"
    );
}

#[test]
fn check_values_finds_planted_nan_and_inf() {
    let dir = tempdir();
    let clean = model(dir.path(), "clean", None);
    let out = soup_ok(&["inspect", s(&clean), "--check-values"]);
    assert!(String::from_utf8(out.stdout).unwrap().contains("no NaN or inf in any float tensor"));

    // A tensor spanning several chunks, with NaN and inf in different chunks.
    let n = 200_000;
    let mut values = vec![0.5; n];
    for i in [3, 70_000, 199_999] {
        values[i] = f64::NAN;
    }
    values[100_000] = f64::INFINITY;
    values[150_000] = f64::NEG_INFINITY;
    let big = RawTensor::float("big.weight", Fmt::BF16, &[n], &values);
    let bad = model(dir.path(), "bad", Some(big));
    let (code, doc) = json(&["inspect", s(&bad), "--check-values", "--json", "-t", "3"]);
    assert_eq!(code, Some(1));
    let tensors = doc["checkpoints"][0]["tensors"].as_array().unwrap();
    let big = tensors.iter().find(|t| t["name"] == "big.weight").unwrap();
    assert_eq!((big["nan"].as_u64(), big["inf"].as_u64()), (Some(3), Some(2)));
    let embed = tensors.iter().find(|t| t["name"] == "embed.weight").unwrap();
    assert_eq!(embed["nan"], 0);
    let ids = tensors.iter().find(|t| t["name"] == "position_ids").unwrap();
    assert!(ids.get("nan").is_none(), "integer tensors are not checked");
    assert_eq!(doc["checkpoints"][0]["non_finite_tensors"], 1);

    let out = soup(&["inspect", s(&bad), "--check-values"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("values: big.weight has 3 NaN and 2 inf"));
}

#[test]
fn unreadable_checkpoints_are_errors() {
    let dir = tempdir();
    let stderr = soup_err(&["inspect", s(&dir.path().join("missing"))]);
    assert!(stderr.contains("missing"), "{stderr}");
}
