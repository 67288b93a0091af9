//! Properties of the untrusted-input parsers in `checkpoint`: `parse_header` reads
//! every valid file back exactly as written, never panics on a damaged one, names
//! the precise format error, and `parse_index` never lets a shard name leave the
//! checkpoint directory. The cargo-fuzz targets in `fuzz/` check the same
//! invariants on arbitrary bytes; these run with the normal test suite.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as _;
use std::path::Path;

use common::{safetensors_bytes, RawTensor};
use modelsoup::engine::checkpoint::{parse_header, parse_index};
use modelsoup::{Error, TensorEntry};
use proptest::prelude::*;
use proptest::sample::Index;
use safetensors::{Dtype, SafeTensorError};

/// An unusual path, so that the check that errors name it cannot pass by accident.
const PATH: &str = "ckpts/run ü 7/model-00001-of-00002.safetensors";
const INDEX_PATH: &str = "ckpts/run ü 7/model.safetensors.index.json";

/// The dtypes the generator writes: header name, parsed dtype, bytes per element.
const DTYPES: [(&str, Dtype, usize); 8] = [
    ("F64", Dtype::F64, 8),
    ("F32", Dtype::F32, 4),
    ("F16", Dtype::F16, 2),
    ("BF16", Dtype::BF16, 2),
    ("I64", Dtype::I64, 8),
    ("I32", Dtype::I32, 4),
    ("U8", Dtype::U8, 1),
    ("BOOL", Dtype::BOOL, 1),
];

/// A valid file's contents before encoding.
#[derive(Debug, Clone)]
struct Spec {
    /// In file order, with the parsed dtype alongside each.
    tensors: Vec<(RawTensor, Dtype)>,
    metadata: BTreeMap<String, String>,
    pad: bool,
}

impl Spec {
    fn bytes(&self) -> Vec<u8> {
        if self.tensors.is_empty() && !self.metadata.is_empty() {
            // `safetensors_bytes` writes `{"__metadata__":{..},}` here: a trailing
            // comma, which is not JSON. Encode this one case by hand.
            let mut header =
                format!("{{\"__metadata__\":{}}}", serde_json::to_string(&self.metadata).unwrap());
            while self.pad && header.len() % 8 != 0 {
                header.push(' ');
            }
            return file(&header, 0);
        }
        let raw: Vec<RawTensor> = self.tensors.iter().map(|(t, _)| t.clone()).collect();
        safetensors_bytes(&raw, &self.metadata, self.pad)
    }
}

/// Names that stress the JSON encoding: plain ones, quotes, backslashes, slashes,
/// multi-byte characters, control characters, and arbitrary unicode (including "").
fn name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9_.]{1,12}", "[\"\\\\/ é✓🦀\t\n\u{0}]{0,6}", any::<String>(),]
}

/// Shapes including a scalar, an empty tensor and odd dimensions, small enough
/// that a file stays a few KB.
fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![]),
        Just(vec![0]),
        prop::collection::vec(0usize..8, 1..4),
        prop::collection::vec(1usize..40, 1..2),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    let tensor = (0..DTYPES.len(), shape(), any::<u8>());
    let tensors = prop::collection::btree_map(name(), tensor, 0..7)
        // The one key that is not a tensor.
        .prop_filter("__metadata__ is reserved", |m| !m.contains_key("__metadata__"))
        .prop_map(|m| m.into_iter().collect::<Vec<_>>())
        // Any file order, not just sorted by name.
        .prop_shuffle()
        .prop_map(|list| {
            list.into_iter()
                .map(|(name, (d, shape, seed))| {
                    let (dtype, parsed, size) = DTYPES[d];
                    let len = shape.iter().product::<usize>() * size;
                    // Distinct contents per tensor, so a wrong offset shows in the data.
                    let data = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
                    (RawTensor::raw(&name, dtype, &shape, data), parsed)
                })
                .collect()
        });
    let metadata = prop::collection::btree_map(name(), name(), 0..4);
    (tensors, metadata, any::<bool>()).prop_map(|(tensors, metadata, pad)| Spec {
        tensors,
        metadata,
        pad,
    })
}

/// One way of damaging a file.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    FlipBit(Index, u8),
    Overwrite(Index, u8),
    Delete(Index),
    Insert(Index, u8),
    SetLengthPrefix(u64),
    NudgeLengthPrefix(i8),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // JSON punctuation and digits reach deeper than random bytes: they keep the
    // header parseable while changing offsets, shapes and structure.
    let byte = prop_oneof![any::<u8>(), prop::sample::select(b"0123456789,[]{}\":-.e ".to_vec())];
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        any::<Index>().prop_map(Mutation::Delete),
        (any::<Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        prop_oneof![any::<u64>(), 0u64..4096].prop_map(Mutation::SetLengthPrefix),
        any::<i8>().prop_map(Mutation::NudgeLengthPrefix),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match *m {
        Mutation::Truncate(i) => bytes.truncate(i.index(n + 1)),
        Mutation::FlipBit(i, b) if n > 0 => bytes[i.index(n)] ^= 1 << b,
        Mutation::Overwrite(i, v) if n > 0 => bytes[i.index(n)] = v,
        Mutation::Delete(i) if n > 0 => {
            bytes.remove(i.index(n));
        }
        Mutation::Insert(i, v) => bytes.insert(i.index(n + 1), v),
        Mutation::SetLengthPrefix(v) if n >= 8 => bytes[..8].copy_from_slice(&v.to_le_bytes()),
        Mutation::NudgeLengthPrefix(d) if n >= 8 => {
            let v = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            bytes[..8].copy_from_slice(&v.wrapping_add_signed(d.into()).to_le_bytes());
        }
        Mutation::Append(ref tail) => bytes.extend_from_slice(tail),
        _ => {} // a byte-level mutation of a file too short for it
    }
}

/// What every accepted file must satisfy, whatever its bytes (the same checks as
/// `fuzz/fuzz_targets/header.rs`): the merge slices the mapped file with these
/// ranges, so one outside it would be an out-of-bounds read.
fn check_invariants(bytes: &[u8], entries: &[TensorEntry]) {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data_start = 8 + header_len;
    let mut next = data_start;
    let mut last_offset = data_start;
    for e in entries {
        let end = e.offset.checked_add(e.len).expect("offset + len overflows");
        assert!(end <= bytes.len(), "{:?} ends at {end}, past the file's {}", e.name, bytes.len());
        assert!(e.offset >= last_offset, "{:?} is out of offset order", e.name);
        last_offset = e.offset;
        // Contiguous: each tensor with data starts where the previous one ended. An
        // empty tensor shares its offset with a neighbour and parse_header orders
        // ties by name, so it may come after a tensor that starts at the same place.
        if e.len > 0 {
            assert_eq!(e.offset, next, "{:?} does not start where the previous one ended", e.name);
            next = end;
        } else {
            assert!(e.offset <= next, "empty {:?} lies in a gap", e.name);
        }
        assert_eq!(e.shard, 0);
        let bits = e.shape.iter().try_fold(e.dtype.bitsize(), |acc, &d| acc.checked_mul(d));
        assert_eq!(
            bits,
            Some(e.len * 8),
            "{:?}: {} bytes for {:?} {:?}",
            e.name,
            e.len,
            e.dtype,
            e.shape
        );
    }
    assert_eq!(next, bytes.len(), "data does not end at the end of the file");
    let names: BTreeSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.len(), entries.len(), "duplicate tensor names");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A valid file parses to exactly what was written.
    #[test]
    fn valid_files_round_trip(spec in spec()) {
        let bytes = spec.bytes();
        let (entries, metadata) = parse_header(&bytes, Path::new(PATH)).unwrap();
        check_invariants(&bytes, &entries);
        prop_assert_eq!(&metadata, &spec.metadata);

        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let total: usize = spec.tensors.iter().map(|(t, _)| t.data.len()).sum();
        prop_assert_eq!(8 + header_len + total, bytes.len());
        if spec.pad {
            prop_assert_eq!(header_len % 8, 0);
        }
        let mut offset = 8 + header_len;
        let mut expected: Vec<TensorEntry> = Vec::new();
        for (t, dtype) in &spec.tensors {
            expected.push(TensorEntry {
                name: t.name.clone(),
                dtype: *dtype,
                shape: t.shape.clone(),
                shard: 0,
                offset,
                len: t.data.len(),
                strided: None,
                computed: None,
            });
            offset += t.data.len();
        }
        // At a shared offset empty tensors come first, then by name.
        expected.sort_by(|a, b| (a.offset, a.len, &a.name).cmp(&(b.offset, b.len, &b.name)));
        prop_assert_eq!(&entries, &expected);
        for (t, _) in &spec.tensors {
            let e = entries.iter().find(|e| e.name == t.name).unwrap();
            prop_assert_eq!(&bytes[e.offset..e.offset + e.len], &t.data[..]);
        }
    }

}

proptest! {
    // Cheap cases (tiny files, no I/O), and the likelier way to find a panic.
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// A damaged file is rejected or, if it still happens to be valid, obeys the
    /// invariants; it never panics.
    #[test]
    fn mutated_files_never_panic(
        spec in spec(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = spec.bytes();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        match parse_header(&bytes, Path::new(PATH)) {
            Ok((entries, _)) => check_invariants(&bytes, &entries),
            Err(Error::Header { path, .. }) => prop_assert_eq!(path, Path::new(PATH)),
            Err(other) => prop_assert!(false, "unexpected error kind: {other:?}"),
        }
    }
}

/// A file from a literal header and `data` bytes of zeros.
fn file(header: &str, data: usize) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + data, 0);
    bytes
}

/// The format error for `bytes`, after checking that the error names the file.
fn header_error(bytes: &[u8]) -> SafeTensorError {
    match parse_header(bytes, Path::new(PATH)) {
        Err(err @ Error::Header { .. }) => {
            assert!(err.to_string().contains(PATH), "{err} does not name the file");
            let Error::Header { path, source } = err else { unreachable!() };
            assert_eq!(path, Path::new(PATH));
            source
        }
        Err(other) => panic!("expected a header error, got {other:?}"),
        Ok((entries, _)) => panic!("accepted: {entries:?}"),
    }
}

#[test]
fn too_short_for_the_length_prefix() {
    assert!(matches!(header_error(b""), SafeTensorError::HeaderTooSmall));
    assert!(matches!(header_error(&[2, 0, 0, 0, 0, 0, 0]), SafeTensorError::HeaderTooSmall));
}

#[test]
fn length_prefix_past_the_end_or_absurd() {
    let mut bytes = file("{}", 0);
    bytes[0] = 3; // one byte more than there is
    assert!(matches!(header_error(&bytes), SafeTensorError::InvalidHeaderLength));
    bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
    assert!(matches!(header_error(&bytes), SafeTensorError::InvalidHeaderLength));
    // Over the 100 MB cap: refused before any allocation or read.
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(header_error(&bytes), SafeTensorError::HeaderTooLarge));
}

#[test]
fn header_not_utf8_or_not_json() {
    let mut bytes = file("{\"a\":1}", 0);
    bytes[9] = 0xff;
    assert!(matches!(header_error(&bytes), SafeTensorError::InvalidHeader(_)));
    for header in [
        "not json",
        "",
        "[]",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}",
        "{\"a\":{\"dtype\":\"F7\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}",
        "{\"__metadata__\":{\"k\":1}}",
    ] {
        assert!(
            matches!(
                header_error(&file(header, 4)),
                SafeTensorError::InvalidHeaderDeserialization(_)
            ),
            "{header:?}"
        );
    }
}

#[test]
fn offsets_that_overlap_leave_gaps_or_run_backwards() {
    let overlap = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\
                    \"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}";
    assert!(
        matches!(header_error(&file(overlap, 6)), SafeTensorError::InvalidOffset(n) if n == "b")
    );
    let gap = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\
                \"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}";
    assert!(matches!(header_error(&file(gap, 12)), SafeTensorError::InvalidOffset(n) if n == "b"));
    let late_start = "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}";
    assert!(
        matches!(header_error(&file(late_start, 8)), SafeTensorError::InvalidOffset(n) if n == "a")
    );
    let backwards = "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},\
                      \"b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}";
    assert!(matches!(header_error(&file(backwards, 4)), SafeTensorError::InvalidOffset(_)));
}

#[test]
fn data_shorter_or_longer_than_the_header_says() {
    let header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    assert!(file(header, 8).len() > 8 && parse_header(&file(header, 8), Path::new(PATH)).is_ok());
    assert!(matches!(header_error(&file(header, 7)), SafeTensorError::MetadataIncompleteBuffer));
    assert!(matches!(header_error(&file(header, 0)), SafeTensorError::MetadataIncompleteBuffer));
    assert!(matches!(header_error(&file(header, 9)), SafeTensorError::MetadataIncompleteBuffer));
    // No tensors and a stray data byte.
    assert!(matches!(header_error(&file("{}", 1)), SafeTensorError::MetadataIncompleteBuffer));
}

#[test]
fn byte_length_must_match_shape_and_dtype() {
    let short = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}";
    assert!(matches!(header_error(&file(short, 4)), SafeTensorError::TensorInvalidInfo));
    let scalar = "{\"a\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,0]}}";
    assert!(matches!(header_error(&file(scalar, 0)), SafeTensorError::TensorInvalidInfo));
    let empty = "{\"a\":{\"dtype\":\"BF16\",\"shape\":[3,0],\"data_offsets\":[0,2]}}";
    assert!(matches!(header_error(&file(empty, 2)), SafeTensorError::TensorInvalidInfo));
    // Half a byte of 4-bit floats cannot be sliced.
    let nibble = "{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}";
    assert!(matches!(header_error(&file(nibble, 2)), SafeTensorError::MisalignedSlice));
    // 2^40 × 2^40 elements: the element count itself overflows.
    let huge =
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,1]}}";
    assert!(matches!(header_error(&file(huge, 1)), SafeTensorError::ValidationOverflow));
}

/// Eight maximal U8 tensors whose declared data adds up to 2^64 − 8 bytes: each is
/// valid on its own, and `read_metadata` then computes `end + 8 + header_len`,
/// which overflows inside safetensors 0.8.0 (a panic where overflow checks are on).
/// `parse_header` rejects such files before calling it.
#[test]
fn declared_data_near_2_pow_64_is_rejected_not_a_panic() {
    let big = (1u64 << 61) - 1;
    let tensors: Vec<String> = (0..8)
        .map(|i| {
            format!(
                "\"t{i}\":{{\"dtype\":\"U8\",\"shape\":[{big}],\"data_offsets\":[{},{}]}}",
                i * big,
                (i + 1) * big
            )
        })
        .collect();
    let bytes = file(&format!("{{{}}}", tensors.join(",")), 0);
    assert!(matches!(header_error(&bytes), SafeTensorError::MetadataIncompleteBuffer));
}

/// Shard names that would leave the checkpoint directory, or name no file in it.
const HOSTILE: [&str; 11] = [
    "../x",
    "/abs",
    "a/b",
    "",
    ".",
    "..",
    "./x",
    "a/../b",
    "/",
    "../../etc/passwd",
    "sub/m.safetensors",
];

/// Plain file names, including ones that only look odd ("..x", "-", unicode).
fn shard_name() -> impl Strategy<Value = String> {
    prop_oneof![
        (1usize..5, 5usize..9).prop_map(|(i, n)| format!("model-{i:05}-of-{n:05}.safetensors")),
        "[A-Za-z0-9_.\\- ü\\\\:]{1,16}".prop_filter("not . or ..", |s| s != "." && s != ".."),
    ]
}

fn index_json(weight_map: &BTreeMap<String, String>) -> String {
    serde_json::json!({"metadata": {"total_size": 12345}, "weight_map": weight_map}).to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn index_lists_sorted_distinct_shards(
        map in prop::collection::btree_map(name(), shard_name(), 0..12),
    ) {
        let (weight_map, names) = parse_index(&index_json(&map), Path::new(INDEX_PATH)).unwrap();
        prop_assert_eq!(&weight_map, &map);
        let expected: Vec<String> =
            map.values().cloned().collect::<BTreeSet<_>>().into_iter().collect();
        prop_assert_eq!(names, expected);
    }

    #[test]
    fn index_rejects_unsafe_shard_names(
        mut map in prop::collection::btree_map(name(), shard_name(), 0..8),
        tensor in name(),
        bad in prop::sample::select(HOSTILE.to_vec()),
    ) {
        map.insert(tensor, bad.to_owned());
        match parse_index(&index_json(&map), Path::new(INDEX_PATH)) {
            Err(Error::UnsafeShardName { index, shard }) => {
                prop_assert_eq!(index, Path::new(INDEX_PATH));
                prop_assert_eq!(shard, bad);
            }
            other => prop_assert!(false, "{bad:?} not rejected: {other:?}"),
        }
    }
}

#[test]
fn index_that_is_not_an_index() {
    for text in [
        "",
        "not json",
        "[]",
        "{}",
        "{\"weight_map\": []}",
        "{\"weight_map\": {\"a\": 1}}",
        "{\"weight_map\": {\"a\": null}}",
    ] {
        match parse_index(text, Path::new(INDEX_PATH)) {
            Err(err @ Error::IndexJson { .. }) => {
                assert!(err.to_string().contains(INDEX_PATH), "{err}");
                assert!(err.source().is_some());
            }
            other => panic!("{text:?}: expected IndexJson, got {other:?}"),
        }
    }
    // An empty map is a valid (if useless) index: Checkpoint::open then finds no
    // shards to open.
    assert_eq!(parse_index("{\"weight_map\": {}}", Path::new(INDEX_PATH)).unwrap().1.len(), 0);
}

/// A trailing separator or `/.` leaves a single normal component ("x/" is just
/// `x`), so the name passes `is_plain_file_name` though it is not a file name:
/// harmless (the join stays in the directory), but the index is malformed and
/// says so.
#[test]
fn index_rejects_names_with_trailing_separators() {
    for bad in ["model.safetensors/", "model.safetensors/.", "model.safetensors//"] {
        let map = BTreeMap::from([("a".to_owned(), bad.to_owned())]);
        assert!(
            matches!(
                parse_index(&index_json(&map), Path::new(INDEX_PATH)),
                Err(Error::UnsafeShardName { .. })
            ),
            "{bad:?} accepted"
        );
    }
}
