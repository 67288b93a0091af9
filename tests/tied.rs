//! Tied word embeddings: ingredients that leave out the output head (because their
//! config ties it to the input embedding) are merged with those that store it,
//! without inventing a head the first ingredient does not have.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{read_output, s, soup_err, soup_ok, write_checkpoint, Fmt, RawTensor, Rng};

const EMBED: &str = "model.embed_tokens.weight";
const HEAD: &str = "lm_head.weight";

/// A checkpoint with an embedding, a norm and, with `head`, the head (a copy of the
/// embedding, as a tied model saves it); `tie` goes into its config.
fn model(root: &Path, name: &str, seed: u64, head: bool, tie: bool) -> (PathBuf, Vec<f64>) {
    let mut rng = Rng::new(seed);
    let embed: Vec<f64> = (0..40).map(|_| rng.value()).collect();
    let norm: Vec<f64> = (0..4).map(|_| rng.value()).collect();
    let mut tensors = vec![
        RawTensor::float(EMBED, Fmt::F32, &[10, 4], &embed),
        RawTensor::float("model.norm.weight", Fmt::F32, &[4], &norm),
    ];
    if head {
        tensors.push(RawTensor::float(HEAD, Fmt::F32, &[10, 4], &embed));
    }
    let dir = root.join(name);
    write_checkpoint(&dir, &tensors, &[], true);
    fs::write(dir.join("config.json"), format!("{{\"tie_word_embeddings\": {tie}}}")).unwrap();
    (dir, embed)
}

fn values(dir: &Path, name: &str) -> Vec<f64> {
    Fmt::F32.decode(&read_output(dir)[name].2)
}

#[test]
fn a_missing_tied_head_is_read_from_the_input_embedding() {
    let dir = common::tempdir();
    let (a, ea) = model(dir.path(), "a", 1, true, true);
    let (b, eb) = model(dir.path(), "b", 2, false, true);
    let out = dir.path().join("soup");
    soup_ok(&["merge", s(&a), s(&b), "-o", s(&out)]);
    let head = values(&out, HEAD);
    // The stored f32 values, averaged in f64 and rounded once to f32.
    let stored = |x: f64| f64::from(x as f32);
    let want: Vec<f64> = ea
        .iter()
        .zip(&eb)
        .map(|(&x, &y)| f64::from((0.5 * stored(x) + 0.5 * stored(y)) as f32))
        .collect();
    assert_eq!(head, want);
    assert_eq!(values(&out, EMBED), want);
}

#[test]
fn a_head_the_first_ingredient_leaves_out_is_not_invented() {
    let dir = common::tempdir();
    let (a, _) = model(dir.path(), "a", 1, false, true);
    let (b, _) = model(dir.path(), "b", 2, true, true);
    let out = dir.path().join("soup");
    soup_ok(&["merge", s(&a), s(&b), "-o", s(&out)]);
    let tensors = read_output(&out);
    assert!(!tensors.contains_key(HEAD), "no head invented");
    assert!(tensors.contains_key(EMBED));
}

#[test]
fn both_present_are_both_merged_and_untied_models_must_agree() {
    let dir = common::tempdir();
    let (a, _) = model(dir.path(), "a", 1, true, true);
    let (b, _) = model(dir.path(), "b", 2, true, true);
    let out = dir.path().join("soup");
    soup_ok(&["merge", s(&a), s(&b), "-o", s(&out)]);
    assert_eq!(read_output(&out).len(), 3);

    let (c, _) = model(dir.path(), "c", 3, true, false);
    let (d, _) = model(dir.path(), "d", 4, false, false);
    let err = soup_err(&["merge", s(&c), s(&d), "-o", s(&dir.path().join("untied"))]);
    assert!(err.contains(HEAD) && err.contains("incompatible"), "{err}");
}
