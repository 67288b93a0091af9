//! Cross-check of `soup merge` against the official Python `safetensors` library
//! and numpy: tests/python/crosscheck.py reads every output file with
//! `safe_open`, checks the index and the recipe, and compares each tensor with
//! numpy's weighted average of the ingredients (see the script's docstring).
//!
//! The Python packages are pinned in tests/python/requirements.txt and installed
//! by this test into a venv at `<target>/pyenv`, so a plain `cargo test` works on
//! a machine with only Python 3 and network access to PyPI. Without them the test
//! fails; it never skips, as CI must not pass without the cross-check.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{s, soup_ok, tempdir, write_checkpoint, write_file, Fmt, RawTensor, Rng};

const REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/requirements.txt");
const CROSSCHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/crosscheck.py");

// ---------------------------------------------------------------------------
// The Python environment
// ---------------------------------------------------------------------------

/// The venv's interpreter, provisioned once per test process: tests running in
/// parallel wait for the first to finish, and if provisioning fails they all fail
/// with its message (without retrying a slow failing install four times).
fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(provision) {
        Ok(python) => python,
        Err(e) => panic!(
            "cannot provision the Python cross-check environment; this test needs Python 3 \
             (python3, or $PYTHON) and PyPI, and must not be skipped.\n{e}"
        ),
    }
}

/// `<target>/pyenv`: `CARGO_TARGET_TMPDIR` is `<target>/tmp`.
fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("pyenv")
}

fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

/// Makes sure `<target>/pyenv` has exactly the pinned packages and returns its
/// interpreter. An existing venv is reused when it already satisfies the pins
/// (the common case: no network, a fraction of a second). Otherwise a new one is
/// built in a staging directory and renamed into place, so a concurrent
/// `cargo test` never sees a half-installed venv.
fn provision() -> Result<PathBuf, String> {
    let venv = venv_dir();
    let python = venv_python(&venv);
    if satisfies_pins(&python) {
        return Ok(python);
    }

    let staging =
        RemoveOnDrop(venv.with_file_name(format!("pyenv.staging-{}", std::process::id())));
    let _ = fs::remove_dir_all(&staging.0);
    eprintln!("python_crosscheck: installing {REQUIREMENTS} into {}", venv.display());
    let base = base_python();
    run(
        Command::new(&base).args(["-m", "venv"]).arg(&staging.0),
        &format!("`{base} -m venv` failed (set PYTHON to a Python 3 that has the venv module)"),
    )?;
    run(
        Command::new(venv_python(&staging.0))
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input"])
            // Wheels only: never try to compile numpy from source on a machine
            // without a wheel for it; fail fast instead.
            .args(["--only-binary", ":all:", "-r", REQUIREMENTS]),
        "pip could not install the cross-check's packages from PyPI (network? proxy?)",
    )?;
    if !satisfies_pins(&venv_python(&staging.0)) {
        return Err(format!("the new venv does not import the pinned packages of {REQUIREMENTS}"));
    }

    // Move it into place, replacing an outdated venv, unless a concurrent
    // `cargo test` has just put a good one there. The venv still works after the
    // move: we only ever run its interpreter, never its scripts (whose shebang
    // lines name the staging path).
    if !satisfies_pins(&python) {
        let _ = fs::remove_dir_all(&venv);
        let _ = fs::rename(&staging.0, &venv);
    }
    if !satisfies_pins(&python) {
        return Err(format!("no usable venv at {} after installing", venv.display()));
    }
    Ok(python)
}

/// Removes a directory when dropped: the staging venv, whether or not
/// provisioning succeeds.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The interpreter that creates the venv: `$PYTHON` if set, else `python3`
/// (`python` on Windows).
fn base_python() -> String {
    std::env::var("PYTHON")
        .unwrap_or_else(|_| if cfg!(windows) { "python" } else { "python3" }.to_owned())
}

/// Whether `python` runs, imports the packages, and has exactly the versions
/// pinned in requirements.txt (so editing a pin re-provisions the venv).
fn satisfies_pins(python: &Path) -> bool {
    const CHECK: &str = "\
import sys, importlib.metadata as md
import safetensors, numpy, ml_dtypes
for line in open(sys.argv[1], encoding='utf-8'):
    line = line.split('#')[0].strip()
    if line:
        name, version = line.split('==')
        if md.version(name.strip()) != version.strip():
            sys.exit(1)
";
    python.exists()
        && Command::new(python)
            .args(["-c", CHECK, REQUIREMENTS])
            .output()
            .is_ok_and(|out| out.status.success())
}

/// Runs `cmd`; on failure, `what` plus the command and its output.
fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}\ncannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what}\n{cmd:?} exited with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

// ---------------------------------------------------------------------------
// Ingredients
// ---------------------------------------------------------------------------

/// The model: odd sizes, a scalar, an empty tensor, one tensor spanning several
/// work chunks of 64 Ki elements, a 3-D one; plus the non-float tensors below.
const FLOAT_TENSORS: &[(&str, &[usize])] = &[
    ("model.embed_tokens.weight", &[37, 129]),
    ("model.layers.0.self_attn.q_proj.weight", &[300, 513]),
    ("model.layers.0.input_layernorm.weight", &[5]),
    ("model.layers.0.mlp.up_proj.weight", &[3, 7, 11]),
    ("model.logit_scale", &[]),
    ("model.empty", &[0]),
    ("model.norm.weight", &[129]),
    ("lm_head.weight", &[129, 37]),
];

/// Float formats cycled over the tensors, each ingredient starting elsewhere, so
/// every tensor is read as F32, F16 and BF16 across the three ingredients and
/// the default output dtype (the first ingredient's) varies by tensor.
const INPUT_FORMATS: [Fmt; 3] = [Fmt::F32, Fmt::BF16, Fmt::F16];

/// The tensors of ingredient `k` of 3: fine-tunes of one shared base (base value
/// plus a small per-ingredient perturbation), in model order.
fn ingredient_tensors(k: usize) -> Vec<RawTensor> {
    let mut base = Rng::new(0x50_0B);
    let mut noise = Rng::new(1000 + k as u64);
    let mut tensors: Vec<RawTensor> = FLOAT_TENSORS
        .iter()
        .enumerate()
        .map(|(i, &(name, shape))| {
            let n: usize = shape.iter().product();
            let values: Vec<f64> = (0..n).map(|_| base.value() + 0.05 * noise.value()).collect();
            RawTensor::float(name, INPUT_FORMATS[(i + k) % 3], shape, &values)
        })
        .collect();
    // Identical in every ingredient, so copied rather than averaged.
    let positions: Vec<u8> = (0..77i64).flat_map(i64::to_le_bytes).collect();
    tensors.insert(2, RawTensor::raw("position_ids", "I64", &[1, 77], positions));
    let mask: Vec<u8> = (0..15u8).map(|i| u8::from(i % 3 != 0)).collect();
    tensors.push(RawTensor::raw("model.attention_mask", "BOOL", &[3, 5], mask));
    tensors
}

/// Three ingredients laid out differently; returns their paths as given to soup.
///
/// - `run-a/`: a checkpoint directory with one padded `model.safetensors`;
/// - `run-b/`: tensors in reverse order, in three shards cut before the 3rd
///   and 6th, with unpadded headers (tensor data at odd offsets);
/// - `run-c.safetensors`: a bare file, unpadded, tensors shuffled.
fn write_ingredients(dir: &Path) -> Vec<String> {
    let a = dir.join("run-a");
    write_checkpoint(&a, &ingredient_tensors(0), &[], true);

    let b = dir.join("run-b");
    let mut tensors = ingredient_tensors(1);
    tensors.reverse();
    write_checkpoint(&b, &tensors, &[2, 5], false);

    let c = dir.join("run-c.safetensors");
    let mut tensors = ingredient_tensors(2);
    let mut rng = Rng::new(7);
    for i in (1..tensors.len()).rev() {
        tensors.swap(i, rng.below(i + 1));
    }
    write_file(&c, &tensors, false);

    [a, b, c].iter().map(|p| s(p).to_owned()).collect()
}

// ---------------------------------------------------------------------------
// The cross-check
// ---------------------------------------------------------------------------

/// Merges fresh ingredients with `soup merge ... extra`, runs crosscheck.py on
/// the output (with `weights`, and `--dtype` if one is in `extra`), and returns
/// the number of output weight files.
fn merge_and_crosscheck(extra: &[&str], weights: &str) -> usize {
    let python = python();
    let tmp = tempdir();
    let ingredients = write_ingredients(tmp.path());
    let out = tmp.path().join("soup");

    let mut args = vec!["merge"];
    args.extend(ingredients.iter().map(String::as_str));
    args.extend(["-o", s(&out), "--quiet"]);
    args.extend_from_slice(extra);
    soup_ok(&args);

    let mut cmd = Command::new(python);
    cmd.arg(CROSSCHECK).args(["--out", s(&out), "--weights", weights]);
    if let Some(i) = extra.iter().position(|a| *a == "--dtype") {
        cmd.args(["--dtype", extra[i + 1]]);
    }
    cmd.args(&ingredients);
    let result = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "cross-check of `soup {}` failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        args.join(" "),
        result.status.code()
    );
    // The summary line, visible with --nocapture.
    println!("{}", stdout.trim_end());
    // Guard against a cross-check that passes by checking nothing.
    let checked =
        format!("{} tensors ({} averaged, 2 copied)", FLOAT_TENSORS.len() + 2, FLOAT_TENSORS.len());
    assert!(stdout.contains(&checked), "cross-check did not check every tensor:\n{stdout}");

    fs::read_dir(&out)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".safetensors"))
        .count()
}

#[test]
fn uniform_soup_in_each_tensors_first_dtype() {
    assert_eq!(merge_and_crosscheck(&[], "1,1,1"), 1);
}

#[test]
fn weighted_soup_to_bf16() {
    assert_eq!(merge_and_crosscheck(&["--weights", "1,2,3", "--dtype", "bf16"], "1,2,3"), 1);
}

#[test]
fn uniform_soup_to_f16() {
    assert_eq!(merge_and_crosscheck(&["--dtype", "f16"], "1,1,1"), 1);
}

#[test]
fn f32_soup_in_several_shards() {
    // About 650 kB of F32 output: the big tensor gets a shard of its own and the
    // others are packed into ~20 kB shards.
    let shards = merge_and_crosscheck(&["--dtype", "f32", "--max-shard-size", "20KB"], "1,1,1");
    assert!(shards >= 3, "expected several shards, got {shards}");
}
