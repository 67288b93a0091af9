//! PyTorch checkpoints as ingredients, through the built binary: `soup convert`
//! writes exactly the values torch saved (stored beside each fixture as
//! safetensors by `tests/fixtures/torch/make_fixtures.py`), strided views
//! included; `.bin` and safetensors ingredients mix in one merge; `soup inspect`
//! reads `.bin` files; hostile and corrupted files stop with a named error and
//! nothing is run or written.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{read_output, read_safetensors, s, soup, soup_err, soup_ok};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch").join(name)
}

/// The expected tensors of a fixture: `NAME.expected.safetensors`.
fn expected(stem: &str) -> common::TensorMap {
    read_safetensors(&fixture(&format!("{stem}.expected.safetensors"))).1
}

#[test]
fn convert_writes_every_value_torch_saved_views_included() {
    let dir = common::tempdir();
    for stem in
        ["module_f32", "module_f16", "module_bf16", "module_f64", "dtypes", "views", "params"]
    {
        let out = dir.path().join(stem);
        // `views` holds an expand()ed tensor, refused unless allowed.
        let bin = fixture(&format!("{stem}.bin"));
        soup_ok(&["convert", s(&bin), "-o", s(&out), "--quiet", "--expand-views", "1kB"]);
        let got = read_output(&out);
        let want = expected(stem);
        assert_eq!(got.len(), want.len(), "{stem}: tensor count");
        for (name, t) in &want {
            assert!(got.get(name) == Some(t), "{stem}: {name} differs from what torch saved");
        }
    }
}

#[test]
fn a_sharded_pytorch_directory_converts_and_keeps_its_support_files() {
    let dir = common::tempdir();
    let src = dir.path().join("run");
    fs::create_dir(&src).unwrap();
    for entry in fs::read_dir(fixture("sharded")).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, src.join(path.file_name().unwrap())).unwrap();
    }
    fs::write(src.join("config.json"), "{\"model_type\": \"test\"}").unwrap();
    let out = dir.path().join("out");
    soup_ok(&["convert", s(&src), "-o", s(&out), "--max-shard-size", "200"]);
    let want = read_safetensors(&src.join("all.expected.safetensors")).1;
    assert_eq!(read_output(&out), want);
    assert!(out.join("model.safetensors.index.json").is_file(), "sharded like Hugging Face");
    assert!(out.join("config.json").is_file());
    assert!(!out.join("pytorch_model.bin.index.json").exists(), "no weights copied");
}

#[test]
fn bin_and_safetensors_ingredients_merge_together() {
    let dir = common::tempdir();
    let st = dir.path().join("same.safetensors");
    fs::copy(fixture("module_f32.expected.safetensors"), &st).unwrap();
    let out = dir.path().join("soup");
    soup_ok(&["merge", s(&fixture("module_f32.bin")), s(&st), "-o", s(&out)]);
    // The mean of a model and itself is the model.
    assert_eq!(read_output(&out), expected("module_f32"));

    // Strided views gathered a few elements at a time, next to their contiguous
    // copies: chunks of 3 elements (12 bytes for copied tensors) cut every view.
    let views = dir.path().join("views.safetensors");
    fs::copy(fixture("views.expected.safetensors"), &views).unwrap();
    let out = dir.path().join("views-soup");
    let bin = fixture("views.bin");
    soup_ok(&[
        "merge",
        s(&bin),
        s(&views),
        "-o",
        s(&out),
        "--chunk-elements",
        "3",
        "-t",
        "3",
        "--expand-views",
        "1kB",
    ]);
    assert_eq!(read_output(&out), expected("views"));
}

#[test]
fn inspect_reads_a_bin_file() {
    let run = soup_ok(&["inspect", s(&fixture("views.bin")), "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let tensors = doc["checkpoints"][0]["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), expected("views").len());
}

#[test]
fn hostile_legacy_and_full_model_files_are_refused_without_running_anything() {
    let dir = common::tempdir();
    let _ = fs::remove_file("/tmp/modelsoup-torch-fixture-pwned");
    for (file, named) in [
        ("hostile_system.bin", "posix.system"),
        ("hostile_eval.bin", "eval"),
        ("unknown_global.bin", "datetime"),
        ("full_model.bin", "state_dict"),
        ("legacy.bin", "legacy"),
        ("nested.bin", "state_dict"),
    ] {
        let out = dir.path().join("out");
        let err = soup_err(&["convert", s(&fixture(file)), "-o", s(&out)]);
        assert!(err.contains(file) && err.contains(named), "{file}: {err}");
        assert!(!out.exists(), "{file}: nothing written");
    }
    // make_fixtures.py's hostile pickle would create this marker if it ran.
    assert!(!Path::new("/tmp/modelsoup-torch-fixture-pwned").exists());
}

#[test]
fn a_corrupted_entry_fails_its_crc_check() {
    let dir = common::tempdir();
    let run_dir = dir.path().join("run");
    fs::create_dir(&run_dir).unwrap();
    let bad = run_dir.join("pytorch_model.bin");
    let mut bytes = fs::read(fixture("module_f32.bin")).unwrap();
    // Flip a bit inside a tensor's stored bytes, found by its values.
    let (_, _, data) = expected("module_f32").into_values().find(|t| t.2.len() >= 16).unwrap();
    let at = bytes.windows(16).position(|w| w == &data[..16]).expect("stored uncompressed");
    bytes[at + 3] ^= 0x40;
    fs::write(&bad, bytes).unwrap();
    let run = soup(&["convert", s(&run_dir), "-o", s(&dir.path().join("out"))]);
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("pytorch_model.bin") && err.to_lowercase().contains("crc"), "{err}");
    assert!(!dir.path().join("out").exists());
}

#[test]
fn a_tied_head_stored_on_the_embedding_is_written_once_when_the_config_ties() {
    let dir = common::tempdir();
    for (tie, head_written) in [(true, false), (false, true)] {
        let src = dir.path().join(format!("tie-{tie}"));
        fs::create_dir(&src).unwrap();
        fs::copy(fixture("views.bin"), src.join("pytorch_model.bin")).unwrap();
        fs::write(src.join("config.json"), format!("{{\"tie_word_embeddings\": {tie}}}")).unwrap();
        let out = dir.path().join(format!("out-{tie}"));
        soup_ok(&["convert", s(&src), "-o", s(&out), "--quiet", "--expand-views", "1kB"]);
        let got = read_output(&out);
        assert_eq!(got.contains_key("lm_head.weight"), head_written, "tie_word_embeddings {tie}");
        assert_eq!(got["embed.weight"], expected("views")["embed.weight"]);
    }
}

#[test]
fn a_transposed_view_over_several_row_blocks_is_read_as_its_values_at_any_chunking() {
    // A 1000 × 600 f32 matrix stored transposed (strides (1, 1000)): 2.4 MB, so
    // the gather's row blocks (1 MiB each) split it in three, and chunks of most
    // sizes straddle their edges.
    let (rows, cols) = (1000u32, 600u32);
    let dir = common::tempdir();
    let bin = dir.path().join("pytorch_model.bin");
    let file = common::torch_file::torch_file(&["w"], rows * cols, &[rows, cols], &[1, rows]);
    fs::write(&bin, file).unwrap();
    let expected: Vec<u8> = (0..rows)
        .flat_map(|r| (0..cols).map(move |c| (c * rows + r) as f32))
        .flat_map(f32::to_le_bytes)
        .collect();
    for (chunk, threads) in [("7", "3"), ("4096", "2"), ("65536", "1"), ("1000000", "2")] {
        let out = dir.path().join(format!("out-{chunk}"));
        // The mean of a model and itself is the model, read twice in the same chunks.
        let args = ["merge", s(&bin), s(&bin), "-o", s(&out), "--quiet", "--chunk-elements", chunk];
        soup_ok(&[&args[..], &["-t", threads]].concat());
        let (_, shape, bytes) = &read_output(&out)["w"];
        assert_eq!(shape, &vec![rows as usize, cols as usize]);
        assert!(bytes == &expected, "chunks of {chunk} on {threads} threads");
    }
}
