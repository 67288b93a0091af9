//! The PyTorch zip reader against files written by real `torch.save`
//! (`tests/fixtures/torch/make_fixtures.py`): every element of every tensor, views,
//! tied storages, every refused file's error, corruption, truncation, and hostile
//! pickles built byte by byte.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use modelsoup::torch::{
    looks_like_torch_zip, parse_pickle, read_state_dict, EntryProblem, PickleErrorKind, StateDict,
    TorchError,
};
use proptest::prelude::*;
use safetensors::SafeTensors;
use serde::Deserialize;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch").join(name)
}

fn read(name: &str) -> (Vec<u8>, Result<StateDict, TorchError>) {
    let path = fixture(name);
    let bytes = fs::read(&path).unwrap();
    let result = read_state_dict(&bytes, &path);
    (bytes, result)
}

fn open(name: &str) -> (Vec<u8>, StateDict) {
    let (bytes, result) = read(name);
    (bytes, result.unwrap_or_else(|e| panic!("{name}: {}", chain(&e))))
}

/// The error and all its sources, as `error: {:#}` prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[derive(Deserialize)]
struct Layout {
    dtype: String,
    shape: Vec<usize>,
    stride: Vec<usize>,
    storage_offset: usize,
    storage_group: usize,
    contiguous: bool,
}

fn torch_dtype_name(dtype: safetensors::Dtype) -> &'static str {
    use safetensors::Dtype::*;
    match dtype {
        F32 => "float32",
        F16 => "float16",
        BF16 => "bfloat16",
        F64 => "float64",
        I64 => "int64",
        I32 => "int32",
        I16 => "int16",
        I8 => "int8",
        U8 => "uint8",
        BOOL => "bool",
        other => panic!("unexpected dtype {other:?}"),
    }
}

/// Checks every tensor of `dicts` (with their files) against the expectation
/// `<expected>.expected.{safetensors,json}`: names, dtype, shape, strides, offset,
/// contiguity, shared storages, and every byte of the values (whole, in chunks, and
/// through the zero-copy range when contiguous).
fn check_against_expected(dicts: &[(&[u8], &StateDict)], expected: &str) {
    let values_bytes = fs::read(fixture(&format!("{expected}.expected.safetensors"))).unwrap();
    let values = SafeTensors::deserialize(&values_bytes).unwrap();
    let layout: BTreeMap<String, Layout> = serde_json::from_str(
        &fs::read_to_string(fixture(&format!("{expected}.expected.json"))).unwrap(),
    )
    .unwrap();

    let mut found = 0;
    // storage group in torch -> (dict, storage index) here, and back.
    let mut group_to_storage: HashMap<usize, (usize, usize)> = HashMap::new();
    let mut storage_to_group: HashMap<(usize, usize), usize> = HashMap::new();
    for (d, (file, sd)) in dicts.iter().enumerate() {
        for t in sd.tensors() {
            found += 1;
            let name = t.name();
            let want = layout.get(name).unwrap_or_else(|| panic!("unexpected tensor {name:?}"));
            let view = values.tensor(name).unwrap();
            assert_eq!(torch_dtype_name(t.dtype()), want.dtype, "{name}");
            assert_eq!(t.dtype(), view.dtype(), "{name}");
            assert_eq!(t.shape(), want.shape, "{name}");
            assert_eq!(t.shape(), view.shape(), "{name}");
            assert_eq!(t.strides(), want.stride, "{name}");
            assert_eq!(t.storage_offset(), want.storage_offset, "{name}");
            assert_eq!(t.is_contiguous(), want.contiguous, "{name}");
            assert_eq!(sd.storage_of(t).dtype(), t.dtype(), "{name}");

            let key = (d, t.storage());
            let group = *group_to_storage.entry(want.storage_group).or_insert(key);
            assert_eq!(group, key, "{name}: torch shares its storage, the reader does not");
            let back = *storage_to_group.entry(key).or_insert(want.storage_group);
            assert_eq!(
                back, want.storage_group,
                "{name}: the reader shares a storage torch does not"
            );

            // Every element, in one piece.
            let n = t.numel();
            assert_eq!(sd.gather(t, file, 0, n), view.data(), "{name}: values");
            // In chunks of 7 elements, so chunks start and end inside rows.
            let mut chunked = Vec::new();
            for start in (0..n).step_by(7) {
                chunked.extend(sd.gather(t, file, start, 7.min(n - start)));
            }
            assert_eq!(chunked, view.data(), "{name}: chunked values");
            // Zero-copy when contiguous.
            match sd.byte_range(t) {
                Some(range) => {
                    assert!(t.is_contiguous());
                    assert_eq!(&file[range], view.data(), "{name}: byte range");
                }
                None => assert!(!t.is_contiguous()),
            }
        }
        // Storages are distinct entries.
        let mut entries: Vec<&str> = sd.storages().iter().map(|s| s.entry()).collect();
        entries.sort_unstable();
        entries.dedup();
        assert_eq!(entries.len(), sd.storages().len());
    }
    assert_eq!(found, layout.len(), "tensor count");
}

#[test]
fn module_state_dicts_in_every_float_dtype() {
    for dtype in ["f32", "f16", "bf16", "f64"] {
        let name = format!("module_{dtype}");
        let (bytes, sd) = open(&format!("{name}.bin"));
        check_against_expected(&[(&bytes, &sd)], &name);
        let names: Vec<&str> = sd.tensors().iter().map(|t| t.name()).collect();
        assert_eq!(
            names,
            [
                "embed.weight",
                "fc.weight",
                "fc.bias",
                "norm.weight",
                "norm.bias",
                "norm.running_mean",
                "norm.running_var",
                "norm.num_batches_tracked",
                "head.weight"
            ],
            "the state dict's order"
        );
        let counter = sd.get("norm.num_batches_tracked").unwrap();
        assert_eq!(counter.dtype(), safetensors::Dtype::I64);
        assert_eq!(counter.shape(), &[] as &[usize]);
        assert_eq!(sd.gather(counter, &bytes, 0, 1), 17i64.to_le_bytes());
        assert!(looks_like_torch_zip(&bytes));
    }
}

#[test]
fn every_dtype_scalars_and_empty_tensors() {
    let (bytes, sd) = open("dtypes.bin");
    check_against_expected(&[(&bytes, &sd)], "dtypes");
    let empty = sd.get("empty").unwrap();
    assert_eq!(empty.shape(), [0, 3]);
    assert_eq!(sd.byte_range(empty).map(|r| r.len()), Some(0));
    assert_eq!(sd.get("scalar_f32").map(|t| t.numel()), Some(1));
}

#[test]
fn views_read_their_values_and_tied_weights_share_a_storage() {
    let (bytes, sd) = open("views.bin");
    check_against_expected(&[(&bytes, &sd)], "views");
    let embed = sd.get("embed.weight").unwrap();
    let head = sd.get("lm_head.weight").unwrap();
    assert_eq!(embed.storage(), head.storage());
    let w = sd.get("w").unwrap();
    for name in ["w_t", "w_cols", "w_rows", "w_step", "w_empty_slice"] {
        assert_eq!(sd.get(name).unwrap().storage(), w.storage(), "{name} views w");
    }
    assert!(!sd.get("w_t").unwrap().is_contiguous());
    assert!(sd.get("w_rows").unwrap().is_contiguous());
    assert_eq!(sd.get("w_rows").unwrap().storage_offset(), 10);
    // A saved slice keeps the whole parameter's storage, at an offset.
    let slice = sd.get("slice_of_big").unwrap();
    assert_eq!(slice.storage_offset(), 2 * 7 + 1);
    assert_eq!(sd.storage_of(slice).len(), 6 * 7 * 4);
    // w, its views, big's two views and the tied pair: one storage each.
    let storages: Vec<usize> = sd.tensors().iter().map(|t| t.storage()).collect();
    let mut distinct = storages.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), sd.storages().len());
    assert!(sd.storages().len() < sd.tensors().len());
}

#[test]
fn parameters_and_pickle_protocol_4() {
    for name in ["params", "proto4"] {
        let (bytes, sd) = open(&format!("{name}.bin"));
        check_against_expected(&[(&bytes, &sd)], name);
    }
}

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

#[test]
fn sharded_checkpoint() {
    let index: Index = serde_json::from_str(
        &fs::read_to_string(fixture("sharded/pytorch_model.bin.index.json")).unwrap(),
    )
    .unwrap();
    let mut shards: Vec<&String> = index.weight_map.values().collect();
    shards.sort_unstable();
    shards.dedup();
    assert_eq!(shards.len(), 2);
    let opened: Vec<(Vec<u8>, StateDict)> =
        shards.iter().map(|s| open(&format!("sharded/{s}"))).collect();
    for (shard, (_, sd)) in shards.iter().zip(&opened) {
        for t in sd.tensors() {
            assert_eq!(&index.weight_map[t.name()], *shard);
        }
    }
    let dicts: Vec<(&[u8], &StateDict)> = opened.iter().map(|(b, s)| (b.as_slice(), s)).collect();
    check_against_expected(&dicts, "sharded/all");
}

/// The inner error of a refused pickle.
fn pickle_error(name: &str) -> (PickleErrorKind, String) {
    let (_, result) = read(name);
    match result {
        Err(e @ TorchError::Pickle { .. }) => {
            let message = chain(&e);
            assert!(message.contains(name), "{message}");
            let TorchError::Pickle { source, entry, .. } = e else { unreachable!() };
            assert!(entry.ends_with("/data.pkl"), "{entry}");
            (source.kind().clone(), message)
        }
        other => panic!("{name}: expected a pickle error, got {other:?}"),
    }
}

fn assert_forbidden(name: &str, module: &str, global: &str, advice: &str) {
    let (kind, message) = pickle_error(name);
    assert_eq!(
        kind,
        PickleErrorKind::ForbiddenGlobal { module: module.into(), name: global.into() },
        "{name}"
    );
    assert!(message.contains(&format!("{module}.{global}")), "{message}");
    assert!(message.contains(advice), "{message}");
}

#[test]
fn hostile_pickles_are_refused_and_nothing_runs() {
    let marker = Path::new("/tmp/modelsoup-torch-fixture-pwned");
    // A leftover from elsewhere would hide a run; make sure there is none.
    let _ = fs::remove_file(marker);
    assert_forbidden("hostile_system.bin", "posix", "system", "nothing was run");
    // Protocol 2 names Python 3's builtins by their Python 2 module.
    assert_forbidden("hostile_eval.bin", "__builtin__", "eval", "nothing was run");
    assert!(!marker.exists(), "the payload ran");
}

#[test]
fn other_objects_are_refused_with_advice() {
    assert_forbidden("unknown_global.bin", "datetime", "date", "a state dict holds only tensors");
    assert_forbidden(
        "full_model.bin",
        "torch.nn.modules.container",
        "Sequential",
        "torch.save(model.state_dict(), path)",
    );
    assert_forbidden("uint16.bin", "torch._utils", "_rebuild_tensor_v3", "float32, float16");

    let (kind, message) = pickle_error("nested.bin");
    assert_eq!(
        kind,
        PickleErrorKind::NestedDict {
            key: None,
            keys: vec!["state_dict".into(), "epoch".into()],
            candidates: vec![("state_dict".into(), 9)],
        }
    );
    assert!(message.contains("\"state_dict\", \"epoch\""), "{message}");
    assert!(message.contains("\"state_dict\" (9 tensors)"), "{message}");
    assert!(message.contains("--key state_dict"), "{message}");

    let (kind, message) = pickle_error("neg_view.bin");
    assert_eq!(kind, PickleErrorKind::LazyTensorBits);
    assert!(message.contains("resolve_neg"), "{message}");
}

#[test]
fn legacy_files_say_how_to_resave() {
    let (bytes, result) = read("legacy.bin");
    assert!(!looks_like_torch_zip(&bytes));
    let e = result.unwrap_err();
    assert!(matches!(e, TorchError::Legacy { .. }), "{e:?}");
    let message = chain(&e);
    assert!(message.contains("legacy.bin"), "{message}");
    assert!(message.contains("_use_new_zipfile_serialization=False"), "{message}");
    assert!(message.contains("torch.save(torch.load(path, weights_only=True), new_path)"));
}

#[test]
fn unrecognised_files_say_what_they_are() {
    let cases: [(&[u8], &str); 4] = [
        (b"", "an empty file"),
        (&fs::read(fixture("views.expected.safetensors")).unwrap(), "a safetensors file"),
        (b"\x80\x04\x95\x00", "a bare pickle (protocol 4)"),
        (b"GIF89a\x01\x02", "47 49 46 38 39 61 01 02"),
    ];
    for (bytes, what) in cases {
        let e = read_state_dict(bytes, Path::new("x.bin")).unwrap_err();
        assert!(matches!(e, TorchError::Unrecognised { .. }), "{e:?}");
        assert!(chain(&e).contains(what), "{}", chain(&e));
    }
}

#[test]
fn big_endian_and_compressed_archives_are_refused() {
    let (_, result) = read("big_endian.bin");
    match result {
        Err(TorchError::ByteOrder { found, .. }) => assert_eq!(found, "big"),
        other => panic!("{other:?}"),
    }
    let (_, result) = read("compressed.bin");
    match result {
        Err(e @ TorchError::Entry { .. }) => {
            let message = chain(&e);
            let TorchError::Entry { entry, problem, .. } = e else { unreachable!() };
            assert_eq!(entry, "module_f32/data/0");
            assert_eq!(problem, EntryProblem::Compressed { method: 8 });
            assert!(message.contains("deflate"), "{message}");
            assert!(message.contains("compressed.bin"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// Copies a fixture into a temporary directory with one byte changed.
fn corrupted(name: &str, at: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = fs::read(fixture(name)).unwrap();
    bytes[at] ^= 0x01;
    let path = dir.path().join(name);
    fs::write(&path, &bytes).unwrap();
    (dir, path, bytes)
}

#[test]
fn a_flipped_byte_in_a_storage_or_the_pickle_fails_the_crc() {
    let (_, sd) = open("module_f32.bin");
    let storage = &sd.storages()[1];
    let (_dir, path, bytes) = corrupted("module_f32.bin", storage.offset() + storage.len() / 2);
    let e = read_state_dict(&bytes, &path).unwrap_err();
    match &e {
        TorchError::Crc { entry, .. } => assert_eq!(entry, storage.entry()),
        other => panic!("{other:?}"),
    }
    let message = chain(&e);
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(storage.entry()), "{message}");
    assert!(message.contains("corrupt"), "{message}");

    // The pickle is the first entry; its data follows a local header of 30 bytes
    // plus the name and the extra field.
    let bytes = fs::read(fixture("module_f32.bin")).unwrap();
    let name_len = u16::from_le_bytes([bytes[26], bytes[27]]) as usize;
    let extra_len = u16::from_le_bytes([bytes[28], bytes[29]]) as usize;
    let (_dir, path, bytes) = corrupted("module_f32.bin", 30 + name_len + extra_len + 5);
    match read_state_dict(&bytes, &path) {
        Err(TorchError::Crc { entry, .. }) => assert_eq!(entry, "module_f32/data.pkl"),
        other => panic!("{other:?}"),
    }
}

/// Reads every tensor of a state dict that opened, as a user would.
fn read_everything(bytes: &[u8], sd: &StateDict) {
    for t in sd.tensors() {
        let data = sd.gather(t, bytes, 0, t.numel());
        assert_eq!(data.len(), t.byte_len());
        if let Some(range) = sd.byte_range(t) {
            assert_eq!(&bytes[range], data.as_slice());
        }
    }
    for s in sd.storages() {
        assert!(s.range().end <= bytes.len());
    }
}

#[test]
fn every_truncation_and_every_flipped_byte_is_handled() {
    for name in ["views.bin", "proto4.bin"] {
        let bytes = fs::read(fixture(name)).unwrap();
        let path = Path::new(name);
        for len in 0..bytes.len() {
            let result = read_state_dict(&bytes[..len], path);
            assert!(result.is_err(), "{name} truncated to {len} bytes opened");
        }
        for at in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut copy = bytes.clone();
                copy[at] ^= flip;
                if let Ok(sd) = read_state_dict(&copy, path) {
                    read_everything(&copy, &sd);
                }
            }
        }
    }
}

// Hand-made pickles.

const PROTO2: &[u8] = b"\x80\x02";

fn pickle(body: &[u8]) -> Vec<u8> {
    let mut p = PROTO2.to_vec();
    p.extend_from_slice(body);
    p
}

fn kind(bytes: &[u8]) -> PickleErrorKind {
    parse_pickle(bytes).unwrap_err().kind().clone()
}

/// `_rebuild_tensor_v2` of an f32 storage with key `key` (one character) and
/// the given numel, offset, size and stride (all < 256).
fn tensor(key: u8, numel: u8, offset: u8, size: &[u8], stride: &[u8]) -> Vec<u8> {
    let mut p = b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00".to_vec();
    p.push(key);
    p.extend_from_slice(b"X\x03\x00\x00\x00cpuK");
    p.push(numel);
    p.extend_from_slice(b"tQK");
    p.push(offset);
    for dims in [size, stride] {
        p.push(b'(');
        for &d in dims {
            p.extend_from_slice(&[b'K', d]);
        }
        p.push(b't');
    }
    p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
    p
}

/// A state dict of one f32 tensor named "w" (storage key "0").
fn one_tensor(numel: u8, offset: u8, size: &[u8], stride: &[u8]) -> Vec<u8> {
    let mut p = pickle(b"}(X\x01\x00\x00\x00w");
    p.extend(tensor(b'0', numel, offset, size, stride));
    p.extend_from_slice(b"u.");
    p
}

#[test]
fn hand_made_state_dicts() {
    let sd = parse_pickle(&one_tensor(12, 1, &[3, 2], &[4, 1])).unwrap();
    assert_eq!(sd.tensors.len(), 1);
    assert_eq!(sd.tensors[0].shape(), [3, 2]);
    assert_eq!(sd.storages[0].numel, 12);
    // Reaches element 1 + 2·4 + 1·1 = 10 < 12.
    assert!(parse_pickle(&one_tensor(10, 1, &[3, 2], &[4, 1])).is_err());
    assert!(matches!(
        kind(&one_tensor(10, 1, &[3, 2], &[4, 1])),
        PickleErrorKind::ViewOutOfStorage { numel: 10, .. }
    ));
    // Empty tensors fit anywhere; size and stride must have the same length.
    assert!(parse_pickle(&one_tensor(0, 9, &[0, 3], &[3, 1])).is_ok());
    assert!(matches!(
        kind(&one_tensor(12, 0, &[3], &[4, 1])),
        PickleErrorKind::BadArguments { .. }
    ));
    // A storage referenced only from dropped BUILD state is not among the storages.
    let mut p = pickle(b"}(X\x01\x00\x00\x00w");
    p.extend(tensor(b'0', 4, 0, &[4], &[1]));
    p.extend_from_slice(b"u}X\x01\x00\x00\x00x");
    p.extend(tensor(b'9', 8, 0, &[8], &[1]));
    p.extend_from_slice(b"sb.");
    let sd = parse_pickle(&p).unwrap();
    assert_eq!(sd.storages.len(), 1);
    assert_eq!(sd.storages[0].key, "0");
    // An empty dict is an empty state dict.
    assert!(parse_pickle(&pickle(b"}.")).unwrap().tensors.is_empty());
}

/// What a hand-made pickle's error must match.
type Expect = fn(&PickleErrorKind) -> bool;

#[test]
fn hand_made_hostile_pickles() {
    use PickleErrorKind as K;
    let cases: Vec<(Vec<u8>, Expect)> = vec![
        (pickle(b"cos\nsystem\n(X\x02\x00\x00\x00idtR."), |k| {
            matches!(k, K::ForbiddenGlobal { module, name } if module == "os" && name == "system")
        }),
        // STACK_GLOBAL is checked against the same list.
        (pickle(b"X\x08\x00\x00\x00builtinsX\x04\x00\x00\x00eval\x93."), |k| {
            matches!(k, K::ForbiddenGlobal { name, .. } if name == "eval")
        }),
        // Calling a storage type, or a string.
        (pickle(b"ctorch\nFloatStorage\n)R."), |k| matches!(k, K::NotCallable { .. })),
        (pickle(b"X\x01\x00\x00\x00x)R."), |k| matches!(k, K::NotCallable { .. })),
        // Opcodes that build arbitrary objects.
        (pickle(b"ccollections\nOrderedDict\n)\x81."), |k| {
            matches!(k, K::UnsupportedOpcode { name: Some("NEWOBJ"), .. })
        }),
        (pickle(b"(ios\nsystem\n."), |k| matches!(k, K::UnsupportedOpcode { name: Some("INST"), .. })),
        (pickle(b"\xff"), |k| matches!(k, K::UnsupportedOpcode { name: None, opcode: 0xff })),
        // Persistent ids of other forms.
        (pickle(b"X\x01\x00\x00\x00xQ."), |k| matches!(k, K::PersistentId(_))),
        (pickle(b"(X\x07\x00\x00\x00storageccollections\nOrderedDict\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ."), |k| {
            matches!(k, K::PersistentId(_))
        }),
        // Structure.
        (pickle(b""), |k| *k == K::Truncated),
        (pickle(b"}"), |k| *k == K::Truncated),
        (pickle(b"X\xff\xff\xff\x7fabc."), |k| matches!(k, K::TooLarge { .. })),
        (pickle(b"X\xff\xff\x00\x00abc."), |k| *k == K::Truncated),
        (pickle(b"X\x02\x00\x00\x00\xff\xfe."), |k| *k == K::InvalidUtf8),
        (pickle(b"h\x05."), |k| *k == K::MemoMissing(5)),
        (pickle(b"s."), |k| matches!(k, K::StackUnderflow { .. })),
        // A mark fences the values below it.
        (pickle(b"}(."), |k| matches!(k, K::StackUnderflow { op: "STOP" })),
        (pickle(b"K\x00K\x01K\x02s."), |k| matches!(k, K::WrongType { op: "SETITEM", .. })),
        (pickle(b"\x8a\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09."), |k| *k == K::IntegerTooLarge),
        (b"\x80\x06}.".to_vec(), |k| *k == K::UnsupportedProtocol(6)),
        // A long GLOBAL line is cut off, not read to the end.
        (pickle(&[b'c'; 100_000]), |k| matches!(k, K::TooLarge { .. })),
        // Not state dicts.
        (pickle(b"]."), |k| matches!(k, K::NotADict { found: "a list" })),
        (pickle(b"}X\x01\x00\x00\x00aK\x01s."), |k| {
            matches!(k, K::NonTensorValue { key, found: "an int" } if key == "a")
        }),
        (pickle(b"}K\x01}s."), |k| matches!(k, K::NestedDict { .. })),
        (pickle(b"}K\x01K\x01s."), |k| matches!(k, K::NonStringKey { found: "an int" })),
    ];
    for (i, (bytes, expected)) in cases.iter().enumerate() {
        let k = kind(bytes);
        assert!(expected(&k), "case {i}: {k:?}");
    }
}

#[test]
fn duplicate_names_and_conflicting_storages_are_refused() {
    // {"w": t, "w": t} in one SETITEMS: memoize the tensor, then push "w" and it again.
    let p = one_tensor(12, 0, &[3], &[1]);
    let mut dup = p[..p.len() - 2].to_vec();
    dup.extend_from_slice(b"q\x00X\x01\x00\x00\x00wh\x00u.");
    assert_eq!(kind(&dup), PickleErrorKind::DuplicateName("w".into()));

    // The same storage key as FloatStorage of 12 and of 13 elements.
    let a = one_tensor(12, 0, &[3], &[1]);
    let b = one_tensor(13, 0, &[3], &[1]);
    // {"w": a} then SETITEMS of "v": b's tensor into the same dict.
    let mut both = a[..a.len() - 2].to_vec();
    both.extend_from_slice(b"(X\x01\x00\x00\x00v");
    let tensor_b_start = b.windows(5).position(|w| w == b"ctorc").unwrap();
    both.extend_from_slice(&b[tensor_b_start..b.len() - 2]);
    both.extend_from_slice(b"u.");
    let k = kind(&both);
    assert!(matches!(&k, PickleErrorKind::StorageConflict { key, .. } if key == "0"), "{k:?}");
}

#[test]
fn cycles_and_deep_nesting_cost_nothing_special() {
    // A list that contains itself, returned inside a dict value: refused, no hang.
    let cyclic = pickle(b"}X\x01\x00\x00\x00a]q\x00h\x00as.");
    assert!(matches!(kind(&cyclic), PickleErrorKind::NonTensorValue { found: "a list", .. }));
    // A million nested one-element tuples: no recursion when built or dropped.
    let mut deep = pickle(b")");
    deep.extend(std::iter::repeat_n(0x85u8, 1_000_000));
    deep.push(b'.');
    assert!(matches!(kind(&deep), PickleErrorKind::NotADict { found: "a tuple" }));
    // A million marks are refused long before.
    let mut marks = pickle(b"");
    marks.extend(std::iter::repeat_n(b'(', 1_000_000));
    assert!(matches!(kind(&marks), PickleErrorKind::TooLarge { .. }));
    // Pushing the same memo slot over and over hits the stack bound.
    let mut pushes = pickle(b"}q\x00");
    for _ in 0..1_100_000 {
        pushes.extend_from_slice(b"h\x00");
    }
    assert!(matches!(kind(&pushes), PickleErrorKind::TooLarge { what: "values on the stack", .. }));
}

/// The invariants a successful parse promises (the fuzz target checks the same).
fn check_invariants(sd: &modelsoup::torch::PickledStateDict) {
    let mut names: Vec<&str> = sd.tensors.iter().map(|t| t.name()).collect();
    names.sort_unstable();
    assert!(names.windows(2).all(|w| w[0] != w[1]));
    let mut keys: Vec<&str> = sd.storages.iter().map(|s| s.key.as_str()).collect();
    keys.sort_unstable();
    assert!(keys.windows(2).all(|w| w[0] != w[1]));
    for t in &sd.tensors {
        let storage = &sd.storages[t.storage()];
        assert_eq!(t.dtype(), storage.dtype);
        assert_eq!(t.shape().len(), t.strides().len());
        if t.numel() > 0 {
            let last = t
                .shape()
                .iter()
                .zip(t.strides())
                .fold(t.storage_offset(), |acc, (s, st)| acc + (s - 1) * st);
            assert!(last < storage.numel);
        }
    }
}

fn data_pkl(name: &str) -> Vec<u8> {
    let (bytes, _) = read(name);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes.as_slice())).unwrap();
    let index = (0..zip.len()).find(|&i| zip.name_for_index(i).unwrap().ends_with("/data.pkl"));
    let entry = zip.by_index_raw(index.unwrap()).unwrap();
    let start = entry.data_start().unwrap() as usize;
    bytes[start..start + entry.size() as usize].to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_pickles_never_panic(
        which in 0usize..3,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut p = data_pkl(["views.bin", "module_f32.bin", "proto4.bin"][which]);
        for (at, byte) in edits {
            let i = at.index(p.len());
            p[i] = byte;
        }
        if truncate {
            p.truncate(cut.index(p.len()));
        }
        if let Ok(sd) = parse_pickle(&p) {
            check_invariants(&sd);
        }
    }
}

#[test]
fn real_pickles_parse_and_keep_their_invariants() {
    for name in ["views.bin", "module_f32.bin", "proto4.bin", "dtypes.bin", "params.bin"] {
        let sd = parse_pickle(&data_pkl(name)).unwrap();
        check_invariants(&sd);
    }
}

#[test]
fn results_cross_threads() {
    // The integrator shares the state dict with worker threads and returns errors
    // through anyhow.
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<StateDict>();
    send_sync::<TorchError>();
    send_sync::<modelsoup::Error>();
    let safetensors = fs::read(fixture("views.expected.safetensors")).unwrap();
    assert!(!looks_like_torch_zip(&safetensors));
}

#[test]
fn what_lies_beside_the_selected_state_dict_is_never_built() {
    use modelsoup::torch::parse_pickle_at;
    // {"sd": {"w": tensor}, "x": <value>, "w2": <tensor of a storage used only here>}
    let with_beside = |beside: &[u8]| {
        let mut p = pickle(b"}(X\x02\x00\x00\x00sd}(X\x01\x00\x00\x00w");
        p.extend(tensor(b'0', 6, 0, &[6], &[1]));
        p.extend_from_slice(b"uX\x01\x00\x00\x00x");
        p.extend_from_slice(beside);
        p.extend_from_slice(b"X\x02\x00\x00\x00w2");
        p.extend(tensor(b'1', 4, 0, &[4], &[1]));
        p.extend_from_slice(b"u.");
        p
    };
    let besides: [&[u8]; 9] = [
        b"cos\nsystem\n(X\x02\x00\x00\x00idtR", // a call of a forbidden global
        b"cargparse\nNamespace\n)\x81}b",       // NEWOBJ + BUILD of an object
        b"\x8a\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09", // an integer of 9 bytes
        b"\x8b\x0a\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a", // LONG4
        b"C\x03abc",                            // bytes
        b"\x8f(K\x01K\x02\x90",                 // a set
        b"ctorch\nFloatStorage\n)R",            // calling a storage type
        b"ctorch._utils\n_rebuild_tensor_v2\n(K\x01tR", // bad tensor arguments
        b"X\x01\x00\x00\x00yQ",                 // a persistent id of another form
    ];
    for (i, beside) in besides.iter().enumerate() {
        let p = with_beside(beside);
        let sd = parse_pickle_at(&p, Some("sd")).unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(sd.tensors.len(), 1, "case {i}");
        // Only the storage of the selected tensor is bound.
        assert_eq!(sd.storages.len(), 1, "case {i}");
        assert_eq!(sd.storages[0].key, "0", "case {i}");
        // Selecting the value itself reports why it cannot be built.
        assert!(parse_pickle_at(&p, Some("x")).is_err(), "case {i}");
    }
    // Without a key the file is a dict of dicts: one candidate, "sd".
    let p = with_beside(b"N");
    let e = parse_pickle(&p).unwrap_err();
    assert!(
        matches!(e.kind(), PickleErrorKind::NestedDict { candidates, .. } if candidates == &[("sd".to_owned(), 1)]),
        "{e:?}"
    );
}
