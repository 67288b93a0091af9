//! Which config and tokenizer files a soup gets, and that its config.json names
//! the dtype written.

mod common;

use std::fs;
use std::path::Path;

use common::{s, soup_ok, tempdir, write_checkpoint, Fmt, RawTensor};

/// A checkpoint whose config says `dtype` and whose tokenizer file says `who`.
fn model(dir: &Path, who: &str, shift: f64, dtype: &str) {
    let values: Vec<f64> = (0..12).map(|i| i as f64 * 0.25 + shift).collect();
    write_checkpoint(
        dir,
        &[RawTensor::float("layer.weight", Fmt::BF16, &[3, 4], &values)],
        &[],
        true,
    );
    let config = format!("{{\n  \"model_type\": \"test\",\n  \"torch_dtype\": \"{dtype}\",\n  \"text_config\": {{\"dtype\": \"{dtype}\"}}\n}}\n");
    fs::write(dir.join("config.json"), config).unwrap();
    fs::write(dir.join("tokenizer.json"), who).unwrap();
}

#[test]
fn base_using_methods_take_the_base_files_unless_told_otherwise() {
    let dir = tempdir();
    let (a, b, base) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("base"));
    model(&a, "a", 0.5, "bfloat16");
    model(&b, "b", 1.0, "bfloat16");
    model(&base, "base", 0.0, "bfloat16");
    let tokenizer = |out: &Path| fs::read_to_string(out.join("tokenizer.json")).unwrap();
    let out = dir.path().join("linear");
    soup_ok(&["merge", s(&a), s(&b), "-o", s(&out)]);
    assert_eq!(tokenizer(&out), "a");
    for method in ["task-arithmetic", "ties", "dare-linear", "model-stock"] {
        let out = dir.path().join(method);
        soup_ok(&["merge", s(&a), s(&b), "--base", s(&base), "--method", method, "-o", s(&out)]);
        assert_eq!(tokenizer(&out), "base", "{method}");
    }
    for flag in ["--support-files-from", "--copy-files-from"] {
        let out = dir.path().join(flag.trim_start_matches('-'));
        soup_ok(&[
            "merge",
            s(&a),
            s(&b),
            "--base",
            s(&base),
            "--method",
            "ties",
            flag,
            s(&b),
            "-o",
            s(&out),
        ]);
        assert_eq!(tokenizer(&out), "b", "{flag}");
    }
}

#[test]
fn config_json_names_the_dtype_written_and_keeps_the_rest() {
    let dir = tempdir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    model(&a, "a", 0.5, "bfloat16");
    model(&b, "b", 1.0, "bfloat16");
    let out = dir.path().join("f32");
    soup_ok(&["merge", s(&a), s(&b), "--dtype", "f32", "-o", s(&out)]);
    let config = fs::read_to_string(out.join("config.json")).unwrap();
    let before = fs::read_to_string(a.join("config.json")).unwrap();
    assert_eq!(config, before.replace("bfloat16", "float32"));
    // Without --dtype the soup keeps bf16, and the config is copied unchanged.
    let out = dir.path().join("same");
    soup_ok(&["merge", s(&a), s(&b), "-o", s(&out)]);
    assert_eq!(fs::read_to_string(out.join("config.json")).unwrap(), before);
}
