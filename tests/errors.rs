//! Every kind of bad input gets its own clear error naming the file and tensor,
//! and a failed merge leaves nothing behind.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::{safetensors_bytes, soup_err, write_checkpoint, write_file, Fmt, RawTensor, Rng};
use modelsoup::{
    write_soup, Checkpoint, Destination, Difference, Error, NonFloatPolicy, Plan, PlanOptions,
    RunOptions, Weights,
};

fn tensors(rng: &mut Rng) -> Vec<RawTensor> {
    let v = |rng: &mut Rng, n: usize| (0..n).map(|_| rng.value()).collect::<Vec<_>>();
    vec![
        RawTensor::float("a", Fmt::F32, &[4, 3], &v(rng, 12)),
        RawTensor::float("b", Fmt::BF16, &[5], &v(rng, 5)),
        RawTensor::raw(
            "ids",
            "I64",
            &[2],
            [3i64, 4].iter().flat_map(|i| i.to_le_bytes()).collect(),
        ),
    ]
}

fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

fn open_err(path: &Path) -> Error {
    Checkpoint::open(path).expect_err("must be rejected")
}

fn plan(paths: &[&Path], non_float: NonFloatPolicy) -> Result<(Vec<Checkpoint>, Plan), Error> {
    let cks: Vec<Checkpoint> = paths.iter().map(|p| Checkpoint::open(p).unwrap()).collect();
    let opts = PlanOptions {
        mixing: Weights::uniform(cks.len()).into(),
        dtype: Default::default(),
        max_shard_size: u64::MAX,
        non_float,
        metadata: BTreeMap::new(),
    };
    let plan = Plan::new(&cks, &opts)?;
    Ok((cks, plan))
}

#[test]
fn truncated_file() {
    let dir = common::tempdir();
    let bytes = safetensors_bytes(&tensors(&mut Rng::new(1)), &BTreeMap::new(), true);
    let p = file_with(dir.path(), "cut.safetensors", &bytes[..bytes.len() - 3]);
    let err = open_err(&p);
    assert!(matches!(err, Error::Header { ref path, .. } if path == &p), "{err:?}");
    assert!(err.to_string().contains("cut.safetensors"), "{err}");
}

#[test]
fn header_length_beyond_file_and_tiny_files() {
    let dir = common::tempdir();
    let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let p = file_with(dir.path(), "long.safetensors", &bytes);
    assert!(matches!(open_err(&p), Error::Header { .. }));
    for len in [0, 7] {
        let p = file_with(dir.path(), &format!("tiny{len}.safetensors"), &vec![0u8; len]);
        assert!(matches!(open_err(&p), Error::Header { .. }), "{len} bytes");
    }
}

#[test]
fn header_not_json() {
    let dir = common::tempdir();
    let mut bytes = 8u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"not json");
    let p = file_with(dir.path(), "text.safetensors", &bytes);
    let err = open_err(&p);
    assert!(matches!(err, Error::Header { .. }), "{err:?}");
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert!(chain.contains("text.safetensors") && chain.contains("JSON"), "{chain}");
}

#[test]
fn offsets_overlapping_or_past_the_end() {
    let dir = common::tempdir();
    for (name, header) in [
        (
            "overlap",
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        ),
        ("past-end", r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#),
        ("wrong-size", r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#),
    ] {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0u8; 8]);
        let p = file_with(dir.path(), &format!("{name}.safetensors"), &bytes);
        assert!(matches!(open_err(&p), Error::Header { .. }), "{name}");
    }
}

#[test]
fn missing_shard_named_in_the_index() {
    let dir = common::tempdir();
    let ck = dir.path().join("ck");
    write_checkpoint(&ck, &tensors(&mut Rng::new(2)), &[1], true);
    fs::remove_file(ck.join("model-00002-of-00002.safetensors")).unwrap();
    let err = open_err(&ck);
    assert!(
        matches!(err, Error::MissingShard { ref shard, .. } if shard == "model-00002-of-00002.safetensors")
    );
    assert!(err.to_string().contains("model.safetensors.index.json"), "{err}");
}

#[test]
fn index_that_escapes_the_directory_or_lies() {
    let dir = common::tempdir();
    let ck = dir.path().join("ck");
    write_checkpoint(&ck, &tensors(&mut Rng::new(3)), &[1], true);
    let index = ck.join("model.safetensors.index.json");
    let original = fs::read_to_string(&index).unwrap();

    fs::write(&index, original.replace("model-00002-of-00002.safetensors", "../x.safetensors"))
        .unwrap();
    assert!(matches!(open_err(&ck), Error::UnsafeShardName { .. }));

    // "a" is in shard 1 but the index says shard 2.
    let lying = original.replace(
        r#""a":"model-00001-of-00002.safetensors""#,
        r#""a":"model-00002-of-00002.safetensors""#,
    );
    assert_ne!(lying, original);
    fs::write(&index, lying).unwrap();
    let err = open_err(&ck);
    assert!(matches!(err, Error::IndexMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("\"a\""), "{err}");

    fs::write(&index, "{\"weight_map\": 3}").unwrap();
    assert!(matches!(open_err(&ck), Error::IndexJson { .. }));
}

#[test]
fn duplicate_tensor_across_shards() {
    let dir = common::tempdir();
    let ck = dir.path().join("ck");
    let t = tensors(&mut Rng::new(4));
    write_checkpoint(&ck, &t, &[1], true);
    // Shard 2 also gets "a"; the index maps it once.
    write_file(
        &ck.join("model-00002-of-00002.safetensors"),
        &[t[1].clone(), t[2].clone(), t[0].clone()],
        true,
    );
    let err = open_err(&ck);
    assert!(matches!(err, Error::DuplicateTensor { ref tensor, .. } if tensor == "a"), "{err:?}");
}

#[test]
fn not_a_checkpoint() {
    let dir = common::tempdir();
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert!(matches!(open_err(&empty), Error::NotACheckpoint { .. }));
    let torch = dir.path().join("torch");
    fs::create_dir(&torch).unwrap();
    fs::write(torch.join("pytorch_model.bin"), b"x").unwrap();
    assert!(open_err(&torch).to_string().contains("pytorch_model.bin"));
    assert!(matches!(open_err(&dir.path().join("nope")), Error::Io { .. }));
}

#[test]
fn every_incompatibility_is_listed() {
    let dir = common::tempdir();
    let mut rng = Rng::new(5);
    let base = tensors(&mut rng);
    let a = dir.path().join("a.safetensors");
    write_file(&a, &base, true);
    // b: misses "b", has "a" with another shape, "ids" as a float, and an extra tensor.
    let b = dir.path().join("b.safetensors");
    write_file(
        &b,
        &[
            RawTensor::float("a", Fmt::F32, &[3, 4], &[0.5; 12]),
            RawTensor::float("ids", Fmt::F32, &[2], &[1.0, 2.0]),
            RawTensor::float("extra", Fmt::F32, &[1], &[1.0]),
        ],
        true,
    );
    let Err(Error::Incompatible(diffs)) = plan(&[&a, &b], NonFloatPolicy::RequireEqual) else {
        panic!("expected Incompatible")
    };
    assert!(diffs.iter().any(|d| matches!(d, Difference::Missing { tensor, missing_in, .. } if tensor == "b" && missing_in == std::slice::from_ref(&b))));
    assert!(diffs.iter().any(|d| matches!(d, Difference::Missing { tensor, missing_in, .. } if tensor == "extra" && missing_in == std::slice::from_ref(&a))));
    assert!(diffs.iter().any(|d| matches!(d, Difference::Shape { tensor, .. } if tensor == "a")));
    assert!(diffs.iter().any(|d| matches!(d, Difference::Dtype { tensor, .. } if tensor == "ids")));
    assert_eq!(diffs.len(), 4, "{diffs:?}");
    let message = Error::Incompatible(diffs).to_string();
    assert!(message.contains("shape [4, 3]") && message.contains("[3, 4]"), "{message}");
}

#[test]
fn integer_tensor_differing_is_an_error_unless_first_is_chosen() {
    let dir = common::tempdir();
    let mut rng = Rng::new(6);
    let a_t = tensors(&mut rng);
    let mut b_t = tensors(&mut rng);
    b_t[2] = RawTensor::raw(
        "ids",
        "I64",
        &[2],
        [3i64, 5].iter().flat_map(|i| i.to_le_bytes()).collect(),
    );
    let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
    write_file(&a, &a_t, true);
    write_file(&b, &b_t, true);
    let out = dir.path().join("out");
    let dest = Destination { path: &out, force: false, support_files_from: None, durable: true };

    let (cks, strict) = plan(&[&a, &b], NonFloatPolicy::RequireEqual).unwrap();
    let err = write_soup(&cks, &strict, &dest, &RunOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::NonFloatMismatch { ref tensor, .. } if tensor == "ids"),
        "{err:?}"
    );
    // Nothing left behind: no output, no staging directory.
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "{left:?}");

    let (cks, lenient) = plan(&[&a, &b], NonFloatPolicy::TakeFirst).unwrap();
    write_soup(&cks, &lenient, &dest, &RunOptions::default()).unwrap();
    assert_eq!(common::read_output(&out)["ids"].2, a_t[2].data);
}

#[test]
fn bad_weights() {
    let dir = common::tempdir();
    let a = dir.path().join("a.safetensors");
    write_file(&a, &tensors(&mut Rng::new(7)), true);
    let cks = vec![Checkpoint::open(&a).unwrap()];
    let with = |weights: Weights| PlanOptions {
        mixing: weights.into(),
        dtype: Default::default(),
        max_shard_size: u64::MAX,
        non_float: NonFloatPolicy::RequireEqual,
        metadata: BTreeMap::new(),
    };
    assert!(matches!(
        Plan::new(&cks, &with(Weights::Global(vec![0.5, 0.5]))),
        Err(Error::WeightCount { expected: 1, got: 2 })
    ));
    assert!(matches!(
        Plan::new(&cks, &with(Weights::Global(vec![f64::NAN]))),
        Err(Error::NonFiniteWeight { .. })
    ));
    assert!(matches!(Plan::new(&[], &with(Weights::Global(vec![]))), Err(Error::NoIngredients)));
}

#[test]
fn output_is_protected() {
    let dir = common::tempdir();
    let ck = dir.path().join("ck");
    write_checkpoint(&ck, &tensors(&mut Rng::new(8)), &[], true);
    let (cks, p) = plan(&[&ck], NonFloatPolicy::RequireEqual).unwrap();
    let run = RunOptions::default();

    // Replacing an ingredient (or writing inside one) is refused even with force.
    for target in [ck.clone(), ck.join("sub"), dir.path().to_path_buf()] {
        let dest =
            Destination { path: &target, force: true, support_files_from: None, durable: true };
        assert!(
            matches!(write_soup(&cks, &p, &dest, &run), Err(Error::Output { .. })),
            "{target:?}"
        );
    }
    // A non-empty directory needs force; a file is never replaced.
    let busy = dir.path().join("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("keep.txt"), "precious").unwrap();
    let dest = Destination { path: &busy, force: false, support_files_from: None, durable: true };
    assert!(matches!(write_soup(&cks, &p, &dest, &run), Err(Error::Output { .. })));
    assert_eq!(fs::read_to_string(busy.join("keep.txt")).unwrap(), "precious");
    let file = dir.path().join("file");
    fs::write(&file, "x").unwrap();
    let dest = Destination { path: &file, force: true, support_files_from: None, durable: true };
    assert!(matches!(write_soup(&cks, &p, &dest, &run), Err(Error::Output { .. })));
    // With force the directory is replaced whole.
    let dest = Destination { path: &busy, force: true, support_files_from: None, durable: true };
    write_soup(&cks, &p, &dest, &run).unwrap();
    assert!(!busy.join("keep.txt").exists() && busy.join("model.safetensors").exists());
}

#[test]
fn cli_errors_name_the_problem() {
    let dir = common::tempdir();
    let a = dir.path().join("a.safetensors");
    write_file(&a, &tensors(&mut Rng::new(9)), true);
    let cut = file_with(dir.path(), "cut.safetensors", &fs::read(&a).unwrap()[..40]);
    let out = dir.path().join("out");
    let (a_s, cut_s, out_s) = (common::s(&a), common::s(&cut), common::s(&out));

    let e = soup_err(&["merge", a_s, cut_s, "-o", out_s]);
    assert!(e.contains("ingredient 2: ") && e.contains("cut.safetensors"), "{e}");
    let e = soup_err(&["merge", a_s, a_s, "-o", out_s, "--weights", "1,2,3"]);
    assert!(e.contains("3 values") && e.contains("2 ingredients"), "{e}");
    let e = soup_err(&["merge", a_s, a_s, "-o", out_s, "--weights", "1,-2"]);
    assert!(e.contains("non-negative"), "{e}");
    let e = soup_err(&["merge", a_s, "-o", out_s, "--max-shard-size", "5XB"]);
    assert!(e.contains("5XB"), "{e}");
    let e = soup_err(&["merge", a_s, "-o", out_s, "--dtype", "int8"]);
    assert!(e.contains("int8"), "{e}");
    assert!(!out.exists());
}
