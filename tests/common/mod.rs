//! Test support: synthetic checkpoints written byte by byte (independently of the
//! library's writer), a seeded random source, an f64 reference for soups, and a
//! runner for the built `soup` binary.

#![allow(dead_code)] // each test target uses a different part of this module

pub mod cli;
pub mod mixture;
pub mod process;
pub mod torch_file;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use half::{bf16, f16};

/// SplitMix64: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A value of either sign with magnitudes spread over a few decades.
    pub fn value(&mut self) -> f64 {
        let sign = if self.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
        sign * self.unit() * 10f64.powf(self.unit() * 4.0 - 3.0)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The float formats under test, named as in safetensors headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    F64,
    F32,
    F16,
    BF16,
}

pub const FORMATS: [Fmt; 4] = [Fmt::F64, Fmt::F32, Fmt::F16, Fmt::BF16];

impl Fmt {
    pub fn name(self) -> &'static str {
        match self {
            Fmt::F64 => "F64",
            Fmt::F32 => "F32",
            Fmt::F16 => "F16",
            Fmt::BF16 => "BF16",
        }
    }
    pub fn cli(self) -> &'static str {
        match self {
            Fmt::F64 => "f64",
            Fmt::F32 => "f32",
            Fmt::F16 => "f16",
            Fmt::BF16 => "bf16",
        }
    }
    pub fn size(self) -> usize {
        match self {
            Fmt::F64 => 8,
            Fmt::F32 => 4,
            Fmt::F16 | Fmt::BF16 => 2,
        }
    }
    /// Encodes `x` (already representable or not: rounding here is the encoder's,
    /// which only decides the test's inputs).
    pub fn encode(self, x: f64) -> Vec<u8> {
        match self {
            Fmt::F64 => x.to_le_bytes().to_vec(),
            Fmt::F32 => (x as f32).to_le_bytes().to_vec(),
            Fmt::F16 => f16::from_f64(x).to_le_bytes().to_vec(),
            Fmt::BF16 => bf16::from_f64(x).to_le_bytes().to_vec(),
        }
    }
    /// Exact decoding of every element in `bytes`.
    pub fn decode(self, bytes: &[u8]) -> Vec<f64> {
        bytes
            .chunks_exact(self.size())
            .map(|b| match self {
                Fmt::F64 => f64::from_le_bytes(b.try_into().unwrap()),
                Fmt::F32 => f64::from(f32::from_le_bytes(b.try_into().unwrap())),
                Fmt::F16 => f16::from_le_bytes(b.try_into().unwrap()).to_f64(),
                Fmt::BF16 => bf16::from_le_bytes(b.try_into().unwrap()).to_f64(),
            })
            .collect()
    }
    /// Bit pattern of element `i` of `bytes`, as an integer that orders like the
    /// values (so that the difference of two is their distance in ulps).
    pub fn ordered(self, bytes: &[u8], i: usize) -> i128 {
        let s = self.size();
        let mut raw = [0u8; 8];
        raw[..s].copy_from_slice(&bytes[i * s..(i + 1) * s]);
        let bits = u64::from_le_bytes(raw);
        let sign = 1u64 << (8 * s - 1);
        if bits & sign != 0 {
            -((bits & !sign) as i128)
        } else {
            bits as i128
        }
    }
    /// `x` correctly rounded (to nearest, ties to even) to this format, found by
    /// comparing the neighbours of a first guess: independent of the library.
    pub fn round(self, x: f64) -> Vec<u8> {
        if self == Fmt::F64 || x.is_nan() {
            return self.encode(x);
        }
        if self == Fmt::F32 {
            return (x as f32).to_le_bytes().to_vec(); // Rust's `as` rounds to nearest even
        }
        let guess = self.encode(x);
        let g = u16::from_le_bytes([guess[0], guess[1]]);
        let mut best: Option<(f64, u16)> = None;
        for cand in [g.wrapping_sub(1), g, g.wrapping_add(1)] {
            let v = self.decode(&cand.to_le_bytes())[0];
            if v.is_nan() {
                continue;
            }
            // Infinity stands for the first value past the largest finite one.
            let v = if v.is_infinite() { v.signum() * self.overflow_edge() } else { v };
            let d = (v - x).abs();
            let better = match best {
                None => true,
                Some((bd, bc)) => d < bd || (d == bd && cand & 1 == 0 && bc & 1 == 1),
            };
            if better {
                best = Some((d, cand));
            }
        }
        best.unwrap().1.to_le_bytes().to_vec()
    }
    fn overflow_edge(self) -> f64 {
        match self {
            Fmt::F16 => 65536.0,
            Fmt::BF16 => 2f64.powi(128),
            _ => f64::INFINITY,
        }
    }
}

/// One tensor of a synthetic file.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    pub fn float(name: &str, fmt: Fmt, shape: &[usize], values: &[f64]) -> Self {
        let data = values.iter().flat_map(|&v| fmt.encode(v)).collect();
        RawTensor { name: name.into(), dtype: fmt.name().into(), shape: shape.to_vec(), data }
    }
    pub fn raw(name: &str, dtype: &str, shape: &[usize], data: Vec<u8>) -> Self {
        RawTensor { name: name.into(), dtype: dtype.into(), shape: shape.to_vec(), data }
    }
}

/// The bytes of a safetensors file holding `tensors` back to back in the given
/// order. With `pad` false the header is not padded to 8 bytes, so tensor data can
/// start at odd offsets.
pub fn safetensors_bytes(
    tensors: &[RawTensor],
    metadata: &BTreeMap<String, String>,
    pad: bool,
) -> Vec<u8> {
    let mut entries = Vec::new();
    if !metadata.is_empty() {
        entries.push(format!("\"__metadata__\":{}", serde_json::to_string(metadata).unwrap()));
    }
    let mut offset = 0;
    for t in tensors {
        entries.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{},{}]}}",
            serde_json::to_string(&t.name).unwrap(),
            t.dtype,
            t.shape,
            offset,
            offset + t.data.len()
        ));
        offset += t.data.len();
    }
    let mut header = format!("{{{}}}", entries.join(","));
    if pad {
        while header.len() % 8 != 0 {
            header.push(' ');
        }
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for t in tensors {
        bytes.extend_from_slice(&t.data);
    }
    bytes
}

pub fn write_file(path: &Path, tensors: &[RawTensor], pad: bool) {
    fs::write(path, safetensors_bytes(tensors, &BTreeMap::new(), pad)).unwrap();
}

/// Writes a Hugging Face checkpoint directory: one `model.safetensors` when
/// `splits` is empty, else shards cut before the tensor indices in `splits`, plus
/// the index, plus a `config.json`.
pub fn write_checkpoint(dir: &Path, tensors: &[RawTensor], splits: &[usize], pad: bool) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("config.json"), "{\"model_type\": \"test\"}").unwrap();
    if splits.is_empty() {
        write_file(&dir.join("model.safetensors"), tensors, pad);
        return;
    }
    let mut bounds = vec![0];
    bounds.extend_from_slice(splits);
    bounds.push(tensors.len());
    let n = bounds.len() - 1;
    let mut weight_map = BTreeMap::new();
    for s in 0..n {
        let name = format!("model-{:05}-of-{:05}.safetensors", s + 1, n);
        let part = &tensors[bounds[s]..bounds[s + 1]];
        for t in part {
            weight_map.insert(t.name.clone(), name.clone());
        }
        write_file(&dir.join(&name), part, pad);
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

/// Every tensor of an output directory (single file or shards): name → (dtype,
/// shape, bytes), read back with a minimal independent parser.
pub fn read_output(dir: &Path) -> TensorMap {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            for (name, t) in read_safetensors(&path).1 {
                assert!(out.insert(name.clone(), t).is_none(), "{name} in two shards");
            }
        }
    }
    out
}

/// Tensors by name: (dtype, shape, bytes).
pub type TensorMap = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

/// Metadata and tensors of one file.
pub fn read_safetensors(path: &Path) -> (BTreeMap<String, String>, TensorMap) {
    let bytes = fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut metadata = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for (name, v) in header.as_object().unwrap() {
        if name == "__metadata__" {
            for (k, val) in v.as_object().unwrap() {
                metadata.insert(k.clone(), val.as_str().unwrap().to_owned());
            }
            continue;
        }
        let offs: Vec<usize> = v["data_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let shape =
            v["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        let dtype = v["dtype"].as_str().unwrap().to_owned();
        tensors.insert(name.clone(), (dtype, shape, data[offs[0]..offs[1]].to_vec()));
    }
    (metadata, tensors)
}

/// A fresh temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("soup-test-").tempdir().unwrap()
}

/// Runs the built `soup` binary with `args`.
pub fn soup(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_soup")).args(args).output().expect("run soup")
}

/// Like [`soup`], asserting success and printing the streams on failure.
pub fn soup_ok(args: &[&str]) -> Output {
    let out = soup(args);
    assert!(
        out.status.success(),
        "soup {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `soup` expected to fail with exit status 2 and an `error:` message; returns
/// stderr.
pub fn soup_err(args: &[&str]) -> String {
    let out = soup(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "soup {args:?} should fail; stderr:\n{stderr}");
    assert!(stderr.starts_with("error:"), "stderr must start with error:\n{stderr}");
    stderr
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn path_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
