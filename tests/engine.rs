//! The engine against an independent f64 reference, through the library API:
//! every input/output dtype pair, weights, odd sizes, scalar and empty tensors,
//! misaligned data, ingredients sharded differently, output sharding, and
//! byte-identical results at any thread count and chunk size.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{read_output, write_checkpoint, write_file, Fmt, RawTensor, Rng, FORMATS};
use modelsoup::{
    write_soup, Checkpoint, Destination, FloatDtype, NonFloatPolicy, OutputDtype, Plan,
    PlanOptions, RunOptions, Weights,
};

/// Float tensor shapes: odd sizes that straddle chunk and tile boundaries, a
/// scalar, an empty tensor.
const SHAPES: [(&str, &[usize]); 5] = [
    ("layers.0.weight", &[37, 129]),
    ("layers.0.bias", &[5]),
    ("scale", &[]),
    ("empty", &[0]),
    ("head.weight", &[3, 2050]),
];

/// One ingredient's tensors: float tensors in `fmt` (or per-tensor formats), plus an
/// I64 tensor that is the same in every ingredient.
fn ingredient(rng: &mut Rng, fmts: &[Fmt]) -> Vec<RawTensor> {
    let mut tensors: Vec<RawTensor> = SHAPES
        .iter()
        .zip(fmts.iter().cycle())
        .map(|((name, shape), &fmt)| {
            let n: usize = shape.iter().product();
            let values: Vec<f64> = (0..n).map(|_| rng.value()).collect();
            RawTensor::float(name, fmt, shape, &values)
        })
        .collect();
    let ids: Vec<u8> = (0..7i64).flat_map(|i| i.to_le_bytes()).collect();
    tensors.insert(1, RawTensor::raw("position_ids", "I64", &[7], ids));
    tensors
}

fn options(weights: Weights, dtype: Option<FloatDtype>, max_shard_size: u64) -> PlanOptions {
    PlanOptions {
        mixing: weights.into(),
        dtype: dtype.map_or(OutputDtype::default(), OutputDtype::Force),
        max_shard_size,
        non_float: NonFloatPolicy::RequireEqual,
        metadata: BTreeMap::new(),
    }
}

fn merge(paths: &[PathBuf], opts: &PlanOptions, out: &Path, threads: usize, chunk: usize) {
    let ingredients: Vec<Checkpoint> = paths.iter().map(|p| Checkpoint::open(p).unwrap()).collect();
    let plan = Plan::new(&ingredients, opts).unwrap();
    let dest = Destination { path: out, force: true, support_files_from: None, durable: true };
    let run = RunOptions { threads, chunk_elements: chunk, ..RunOptions::default() };
    write_soup(&ingredients, &plan, &dest, &run).unwrap();
}

/// Compares every output tensor with `(Σ kᵢ·xᵢ) / d` computed in f64 from the
/// ingredients' raw bytes and correctly rounded: no element more than one ulp off,
/// and at least 99.9 % exact. The weights are `kᵢ/d`: weights that are integers
/// over a common count (0.2, 0.45, 0.35 are 4, 9 and 7 twentieths) are computed
/// that way, as documented ("What exact means" in ARCHITECTURE.md); `d` is 1 for
/// others.
fn check_against_reference(
    out: &Path,
    inputs: &[Vec<RawTensor>],
    (weights, divisor): (&[f64], f64),
    dtype: Option<Fmt>,
) {
    let written = read_output(out);
    assert_eq!(written.len(), inputs[0].len(), "tensor count");
    let (mut exact, mut total) = (0usize, 0usize);
    for (i, t) in inputs[0].iter().enumerate() {
        let (out_dtype, shape, bytes) = &written[&t.name];
        assert_eq!(shape, &t.shape, "{}: shape", t.name);
        let Some(in_fmt) = fmt_of(&t.dtype) else {
            assert_eq!(out_dtype, &t.dtype, "{}: copied dtype", t.name);
            assert_eq!(bytes, &t.data, "{}: copied bytes", t.name);
            continue;
        };
        let fmt = dtype.unwrap_or(in_fmt);
        assert_eq!(out_dtype, fmt.name(), "{}: dtype", t.name);
        let decoded: Vec<Vec<f64>> =
            inputs.iter().map(|ing| fmt_of(&ing[i].dtype).unwrap().decode(&ing[i].data)).collect();
        let n: usize = t.shape.iter().product();
        assert_eq!(bytes.len(), n * fmt.size(), "{}: byte length", t.name);
        for e in 0..n {
            let mut sum = 0.0f64;
            for (x, w) in decoded.iter().zip(weights) {
                sum += w * x[e];
            }
            sum /= divisor;
            let want = fmt.round(sum);
            let ulps = (fmt.ordered(bytes, e) - fmt.ordered(&want, 0)).abs();
            assert!(ulps <= 1, "{}[{e}]: {ulps} ulps from the reference {sum}", t.name);
            exact += usize::from(ulps == 0);
            total += 1;
        }
    }
    assert!(exact as f64 >= 0.999 * total as f64, "only {exact} of {total} elements exact");
}

/// Writes each ingredient as `dir/inN.safetensors`, header padded when `pad(N)`.
fn write_inputs(
    dir: &Path,
    inputs: &[Vec<RawTensor>],
    pad: impl Fn(usize) -> bool,
) -> Vec<PathBuf> {
    let mut paths = Vec::with_capacity(inputs.len());
    for (i, tensors) in inputs.iter().enumerate() {
        let p = dir.join(format!("in{i}.safetensors"));
        write_file(&p, tensors, pad(i));
        paths.push(p);
    }
    paths
}

fn fmt_of(dtype: &str) -> Option<Fmt> {
    FORMATS.into_iter().find(|f| f.name() == dtype)
}

fn to_dtype(fmt: Fmt) -> FloatDtype {
    fmt.cli().parse().unwrap()
}

#[test]
fn every_dtype_pair_matches_the_f64_reference() {
    let mut rng = Rng::new(1);
    for in_fmt in FORMATS {
        for out_fmt in FORMATS {
            let dir = common::tempdir();
            let inputs: Vec<Vec<RawTensor>> =
                (0..3).map(|_| ingredient(&mut rng, &[in_fmt])).collect();
            let paths = write_inputs(dir.path(), &inputs, |_| true);
            let weights = vec![0.2, 0.45, 0.35];
            let out = dir.path().join("out");
            let opts = options(Weights::Global(weights.clone()), Some(to_dtype(out_fmt)), u64::MAX);
            merge(&paths, &opts, &out, 2, 1000);
            check_against_reference(&out, &inputs, (&[4.0, 9.0, 7.0], 20.0), Some(out_fmt));
        }
    }
}

#[test]
fn uniform_soup_of_mixed_dtypes_keeps_the_first_ingredients_dtypes() {
    let mut rng = Rng::new(2);
    let dir = common::tempdir();
    let fmts =
        [[Fmt::F32, Fmt::BF16], [Fmt::BF16, Fmt::F16], [Fmt::F16, Fmt::F64], [Fmt::F64, Fmt::F32]];
    let inputs: Vec<Vec<RawTensor>> = fmts.iter().map(|f| ingredient(&mut rng, f)).collect();
    let paths = write_inputs(dir.path(), &inputs, |_| true);
    let out = dir.path().join("out");
    merge(&paths, &options(Weights::uniform(4), None, u64::MAX), &out, 2, 777);
    check_against_reference(&out, &inputs, (&[0.25; 4], 1.0), None);
}

#[test]
fn misaligned_data_is_read_correctly() {
    let mut rng = Rng::new(3);
    let dir = common::tempdir();
    let mut inputs = Vec::new();
    let mut paths = Vec::new();
    for i in 0..2 {
        // An odd-length U8 tensor first and no header padding: every float tensor
        // after it starts at an odd file offset.
        let mut tensors = vec![RawTensor::raw("mask", "U8", &[3], vec![1, 0, 1])];
        tensors.extend(ingredient(&mut rng, &[Fmt::BF16, Fmt::F32, Fmt::F16, Fmt::F64]));
        let p = dir.path().join(format!("in{i}.safetensors"));
        write_file(&p, &tensors, false);
        let first = Checkpoint::open(&p).unwrap();
        assert!(first.tensors().iter().any(|t| t.offset % 2 == 1), "test data must be misaligned");
        inputs.push(tensors);
        paths.push(p);
    }
    let out = dir.path().join("out");
    merge(&paths, &options(Weights::Global(vec![0.7, 0.3]), None, u64::MAX), &out, 2, 1000);
    check_against_reference(&out, &inputs, (&[7.0, 3.0], 10.0), None);
}

#[test]
fn ingredients_sharded_differently_and_output_sharded() {
    let mut rng = Rng::new(4);
    let dir = common::tempdir();
    let inputs: Vec<Vec<RawTensor>> = (0..3).map(|_| ingredient(&mut rng, &[Fmt::BF16])).collect();
    // One file, three shards, two shards split elsewhere, in tensor order.
    let splits: [&[usize]; 3] = [&[], &[1, 4], &[3]];
    let paths: Vec<PathBuf> = inputs
        .iter()
        .zip(splits)
        .enumerate()
        .map(|(i, (t, split))| {
            let p = dir.path().join(format!("ck{i}"));
            write_checkpoint(&p, t, split, true);
            p
        })
        .collect();
    for (max_shard, files) in [(u64::MAX, 1), (5000, 3)] {
        let out = dir.path().join(format!("out-{files}"));
        merge(&paths, &options(Weights::uniform(3), None, max_shard), &out, 2, 1000);
        check_against_reference(&out, &inputs, (&[1.0; 3], 3.0), None);
        let shards: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        assert_eq!(shards.len(), files, "{shards:?}");
        assert_eq!(out.join("model.safetensors.index.json").exists(), files > 1);
        // The output opens as an ingredient again: index and headers agree.
        let reopened = Checkpoint::open(&out).unwrap();
        assert_eq!(reopened.tensors().len(), inputs[0].len());
        assert!(reopened
            .tensors()
            .iter()
            .all(|t| t.offset % t.dtype.bitsize().div_ceil(8).max(1) == 0));
    }
}

#[test]
fn output_is_byte_identical_at_any_thread_count_and_chunk_size() {
    let mut rng = Rng::new(5);
    let dir = common::tempdir();
    let inputs: Vec<Vec<RawTensor>> =
        (0..5).map(|_| ingredient(&mut rng, &[Fmt::BF16, Fmt::F32])).collect();
    let paths = write_inputs(dir.path(), &inputs, |i| i % 2 == 0);
    let opts = options(Weights::Global(vec![0.1, 0.2, 0.3, 0.15, 0.25]), None, 20_000);
    let mut outputs = Vec::new();
    for (threads, chunk) in [(1, 1 << 16), (2, 1000), (3, 1), (2, 4097)] {
        let out = dir.path().join(format!("out-{threads}-{chunk}"));
        merge(&paths, &opts, &out, threads, chunk);
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
            })
            .collect();
        files.sort();
        outputs.push(files);
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]), "outputs differ between thread counts");
}

#[test]
fn weights_can_depend_on_the_tensor() {
    let mut rng = Rng::new(6);
    let dir = common::tempdir();
    let inputs: Vec<Vec<RawTensor>> = (0..2).map(|_| ingredient(&mut rng, &[Fmt::F32])).collect();
    let paths = write_inputs(dir.path(), &inputs, |_| true);
    let per_tensor =
        |name: &str| if name.starts_with("layers.") { vec![1.0, 0.0] } else { vec![0.0, 1.0] };
    let out = dir.path().join("out");
    merge(
        &paths,
        &options(Weights::PerTensor(Box::new(per_tensor)), None, u64::MAX),
        &out,
        2,
        1000,
    );
    let written = read_output(&out);
    for (i, t) in inputs[0].iter().enumerate() {
        let source = if t.name.starts_with("layers.") { &inputs[0][i] } else { &inputs[1][i] };
        assert_eq!(written[&t.name].2, source.data, "{}", t.name);
    }
}

#[test]
fn ingredients_with_zero_weight_are_not_read() {
    let mut rng = Rng::new(7);
    let dir = common::tempdir();
    let good = ingredient(&mut rng, &[Fmt::F32]);
    // NaN everywhere: if it were read, 0 · NaN would poison the soup.
    let poisoned: Vec<RawTensor> = good
        .iter()
        .map(|t| match fmt_of(&t.dtype) {
            Some(f) => {
                let n: usize = t.shape.iter().product();
                RawTensor::float(&t.name, f, &t.shape, &vec![f64::NAN; n])
            }
            None => t.clone(),
        })
        .collect();
    let paths = [dir.path().join("good.safetensors"), dir.path().join("nan.safetensors")];
    write_file(&paths[0], &good, true);
    write_file(&paths[1], &poisoned, true);
    let out = dir.path().join("out");
    merge(&paths, &options(Weights::Global(vec![1.0, 0.0]), None, u64::MAX), &out, 2, 1000);
    let written = read_output(&out);
    for t in &good {
        assert_eq!(written[&t.name].2, t.data, "{}", t.name);
    }
}
