//! One voice across the commands: the same flag means the same thing everywhere,
//! `--json` works wherever results are printed, hints name flags that exist, and
//! recipes replay from any working directory.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::cli::{p, soup_in, soup_ok_in};
use common::{read_output, s, soup, soup_err, soup_ok, write_checkpoint, Fmt, RawTensor, Rng};

/// A small checkpoint of fine-tune-like weights: `base + scale · noise`.
fn model(dir: &Path, name: &str, base: &[f64], scale: f64, seed: u64) -> PathBuf {
    let mut rng = Rng::new(seed);
    let values: Vec<f64> = base.iter().map(|b| b + scale * rng.value()).collect();
    let path = dir.join(name);
    write_checkpoint(
        &path,
        &[
            RawTensor::float("layers.0.weight", Fmt::F32, &[32, 41], &values[..1312]),
            RawTensor::float("norm.weight", Fmt::F32, &[5], &values[1312..1317]),
        ],
        &[],
        true,
    );
    path
}

fn base_values(seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..1317).map(|_| rng.value()).collect()
}

fn f32s(dir: &Path, tensor: &str) -> Vec<f32> {
    let (_, _, bytes) = &read_output(dir)[tensor];
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn stdout_json(args: &[&str]) -> serde_json::Value {
    let out = soup_ok(args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON: {e}"))
}

#[test]
fn every_command_that_prints_results_takes_json() {
    for command in ["merge", "convert", "inspect", "angles", "greedy", "pruned", "learned"] {
        let help = String::from_utf8(soup_ok(&[command, "--help"]).stdout).unwrap();
        assert!(help.contains("--json"), "soup {command} has no --json:\n{help}");
    }
    // angles: --json is --format json.
    let dir = common::tempdir();
    let base = base_values(1);
    let a = model(dir.path(), "a", &base, 0.05, 2);
    let b = model(dir.path(), "b", &base, 0.05, 3);
    let by_flag = stdout_json(&["angles", s(&a), s(&b), "--json"]);
    let by_format = stdout_json(&["angles", s(&a), s(&b), "--format", "json"]);
    assert_eq!(by_flag, by_format);
    assert_eq!(by_flag["angles_deg"].as_array().unwrap().len(), 2);
    let err = soup_err(&["angles", s(&a), s(&b), "--json", "--format", "csv"]);
    assert!(err.contains("--format"), "{err}");
}

#[test]
fn hints_name_only_flags_the_command_has() {
    let dir = common::tempdir();
    // Two unrelated models: the shared-init check speaks up everywhere.
    let a = model(dir.path(), "a", &base_values(1), 0.05, 2);
    let b = model(dir.path(), "b", &base_values(9), 0.05, 3);
    for args in [vec!["inspect", s(&a), s(&b)], vec!["angles", s(&a), s(&b)]] {
        let out = soup(&args);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(all.contains("do not look fine-tuned from one pretrained model"), "{all}");
        assert!(!all.contains("--no-init-check"), "{args:?} names a flag it lacks: {all}");
        let help = String::from_utf8(soup_ok(&[args[0], "--help"]).stdout).unwrap();
        assert!(!help.contains("--no-init-check"), "{help}");
    }
    let out = dir.path().join("soup");
    let merged = soup_ok(&["merge", s(&a), s(&b), "-o", s(&out)]);
    let stderr = String::from_utf8_lossy(&merged.stderr);
    assert!(stderr.contains("--no-init-check skips this check"), "{stderr}");
}

#[test]
fn merge_base_means_what_it_means_in_the_searches() {
    let dir = common::tempdir();
    let base_v = base_values(4);
    let pre = model(dir.path(), "pre", &base_v, 0.0, 0);
    let a = model(dir.path(), "a", &base_v, 0.05, 5);
    let b = model(dir.path(), "b", &base_v, 0.05, 6);
    let read = |p: &Path| f32s(p, "layers.0.weight");
    let (va, v0) = (read(&a), read(&pre));

    // A bare --base with linear: base + lambda x (soup - base) = the plain soup at
    // lambda 1, recorded as normalised task arithmetic.
    let plain = dir.path().join("plain");
    let with_base = dir.path().join("with-base");
    soup_ok(&["merge", s(&a), s(&b), "-o", s(&plain)]);
    soup_ok(&["merge", s(&a), s(&b), "--base", s(&pre), "-o", s(&with_base)]);
    let (got, soup) = (read(&with_base), read(&plain));
    for i in 0..got.len() {
        let ulp = f32::EPSILON * soup[i].abs().max(f32::MIN_POSITIVE);
        assert!((got[i] - soup[i]).abs() <= ulp, "element {i}: {} vs {}", got[i], soup[i]);
    }
    let recipe =
        stdout_json(&["inspect", s(&with_base), "--json"])["checkpoints"][0]["recipe"].clone();
    assert_eq!(recipe["method"], "task-arithmetic");
    assert_eq!(recipe["parameters"]["normalize"], true);

    // WiSE-FT: --lambda 0.7 is 0.7 of the way from the base, as the searches'
    // --lambda; one more weight mixes the base in directly, to the same soup.
    let by_lambda = dir.path().join("wise-lambda");
    let by_weights = dir.path().join("wise-weights");
    soup_ok(&["merge", s(&a), "--base", s(&pre), "--lambda", "0.7", "-o", s(&by_lambda)]);
    soup_ok(&["merge", s(&a), "--base", s(&pre), "--weights", "0.7,0.3", "-o", s(&by_weights)]);
    for (out, name) in [(&by_lambda, "lambda"), (&by_weights, "weights")] {
        let got = read(out);
        for i in 0..got.len() {
            let exact = 0.7 * f64::from(va[i]) + 0.3 * f64::from(v0[i]);
            let ulp = f64::from(f32::EPSILON) * exact.abs().max(1e-30);
            assert!((f64::from(got[i]) - exact).abs() <= ulp, "{name} {i}: {} vs {exact}", got[i]);
        }
    }
    let help = String::from_utf8(soup_ok(&["merge", "--help"]).stdout).unwrap();
    assert!(help.contains("base + lambda x (soup - base)"), "{help}");
    let err = soup_err(&["merge", s(&a), s(&b), "--base", s(&pre), "--weights", "1", "-o", "x"]);
    assert!(err.contains("--weights has 1 value but there are 2 ingredients"), "{err}");
}

#[test]
fn negative_weights_are_values_not_flags() {
    let dir = common::tempdir();
    let base_v = base_values(7);
    let pre = model(dir.path(), "pre", &base_v, 0.0, 0);
    let a = model(dir.path(), "a", &base_v, 0.05, 8);
    let b = model(dir.path(), "b", &base_v, 0.05, 9);
    let out = dir.path().join("negated");
    let args = [
        "merge",
        s(&a),
        s(&b),
        "--base",
        s(&pre),
        "--method",
        "task-arithmetic",
        "--weights",
        "-1,2",
        "-o",
        s(&out),
    ];
    soup_ok(&args);
    let (va, vb, v0) =
        (f32s(&a, "norm.weight"), f32s(&b, "norm.weight"), f32s(&pre, "norm.weight"));
    let got = f32s(&out, "norm.weight");
    for i in 0..got.len() {
        let exact = f64::from(v0[i]) - (f64::from(va[i]) - f64::from(v0[i]))
            + 2.0 * (f64::from(vb[i]) - f64::from(v0[i]));
        assert_eq!(got[i], exact as f32, "element {i}");
    }
    let err = soup_err(&["merge", s(&a), s(&b), "-w", "-1,2", "-o", s(&out), "--force"]);
    assert!(err.contains("must be non-negative, got -1"), "{err}");
    assert!(!err.contains("'-- -1'"), "{err}");
}

#[test]
fn zero_jobs_and_threads_are_refused_and_a_repeated_ingredient_is_named() {
    let dir = common::tempdir();
    let a = model(dir.path(), "a", &base_values(1), 0.05, 2);
    let out = dir.path().join("soup");
    let err = soup_err(&["merge", s(&a), "-o", s(&out), "--threads", "0"]);
    assert!(err.contains("--threads") && err.contains("at least 1"), "{err}");
    let err = soup_err(&["greedy", s(&a), "-o", s(&out), "--eval", "echo 1", "-j", "0"]);
    assert!(err.contains("--jobs") && err.contains("at least 1"), "{err}");
    // -j is --jobs in every search, -t the engine's threads everywhere.
    for command in ["greedy", "pruned", "learned"] {
        let help = String::from_utf8(soup_ok(&[command, "--help"]).stdout).unwrap();
        assert!(help.contains("-j, --jobs <N>"), "{command}: {help}");
        assert!(help.contains("-t, --threads <N>"), "{command}: {help}");
    }
    for command in ["merge", "convert", "inspect", "angles"] {
        let help = String::from_utf8(soup_ok(&[command, "--help"]).stdout).unwrap();
        assert!(help.contains("-t, --threads <N>"), "{command}: {help}");
        assert!(!help.contains("-j,"), "{command}: {help}");
    }
    let twice = soup_ok(&["merge", s(&a), &format!("{}/", s(&a)), "-o", s(&out)]);
    let stderr = String::from_utf8_lossy(&twice.stderr);
    assert!(stderr.contains("ingredient 2") && stderr.contains("same checkpoint as ingredient 1"));
    assert!(stderr.contains("merged 2 ingredients (linear)"), "{stderr}");
    let once = soup_ok(&["merge", s(&a), "-o", s(&out), "--force"]);
    assert!(String::from_utf8_lossy(&once.stderr).contains("merged 1 ingredient (linear)"));
}

#[test]
fn convert_speaks_for_itself() {
    let dir = common::tempdir();
    let a = model(dir.path(), "a", &base_values(1), 0.05, 2);
    let help = String::from_utf8(soup_ok(&["convert", "--help"]).stdout).unwrap();
    for foreign in
        ["--no-init-check", "--non-float", "--copy-files-from", "--support-files-from", "--weights"]
    {
        assert!(!help.contains(foreign), "convert --help offers {foreign}:\n{help}");
    }
    for line in help.lines() {
        assert!(line.chars().count() <= 100, "a help line wider than the terminal: {line:?}");
    }
    let out = dir.path().join("converted");
    let run = soup_ok(&["convert", s(&a), "-o", s(&out), "--dtype", "bf16"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.starts_with(&format!("converted {} into {}: 2 tensors", s(&a), s(&out))));
    assert!(stderr.contains("as bf16"), "{stderr}");
    assert!(!stderr.contains("ingredient"), "{stderr}");
}

#[test]
fn recipes_replay_from_any_directory() {
    let dir = common::tempdir();
    let work = dir.path().join("work");
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir_all(&work).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    let base_v = base_values(3);
    model(&work, "a", &base_v, 0.05, 1);
    model(&work, "b", &base_v, 0.05, 2);
    let args = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // Relative paths on the command line; the soup records where they are.
    soup_ok_in(&work, &args(&["merge", "a", "b", "-o", "soup"]));
    let soup_dir = work.join("soup");
    soup_ok_in(&elsewhere, &args(&["merge", "--recipe", &p(&soup_dir), "-o", "again"]));
    assert_eq!(
        fs::read(soup_dir.join("model.safetensors")).unwrap(),
        fs::read(elsewhere.join("again/model.safetensors")).unwrap()
    );

    // A recipe file's relative paths are found beside the file.
    let recipe = work.join("recipe.yaml");
    fs::write(&recipe, "method: linear\ningredients: [a, b]\n").unwrap();
    soup_ok_in(&elsewhere, &args(&["merge", "--recipe", &p(&recipe), "-o", "from-file"]));
    assert_eq!(
        fs::read(soup_dir.join("model.safetensors")).unwrap(),
        fs::read(elsewhere.join("from-file/model.safetensors")).unwrap()
    );
    // A path found nowhere: the error names the recipe and where it looked.
    fs::write(&recipe, "method: linear\ningredients: [a, missing]\n").unwrap();
    let out = soup_in(&elsewhere, &args(&["merge", "--recipe", &p(&recipe), "-o", "x"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&p(&recipe))
            && stderr.contains("ingredient 2")
            && stderr.contains("\"missing\"")
            && stderr.contains("beside the recipe"),
        "{stderr}"
    );
}
