//! Bench input files: safetensors files of fine-tune-like weights, and the
//! read floor (every byte of them mapped afresh and read).

use std::path::{Path, PathBuf};

use modelsoup::{FloatDtype, DEFAULT_CHUNK_ELEMENTS};
use rayon::prelude::*;

/// The size of each input from the environment: `SOUP_BENCH_MIB` MiB (default
/// 64) of `SOUP_BENCH_DTYPE` (default bf16); returns MiB, dtype and elements.
pub fn input_size() -> (usize, FloatDtype, usize) {
    let mib: usize =
        std::env::var("SOUP_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let dtype: FloatDtype = std::env::var("SOUP_BENCH_DTYPE")
        .map(|v| v.parse().expect("SOUP_BENCH_DTYPE: f64, f32, f16 or bf16"))
        .unwrap_or(FloatDtype::BF16);
    (mib, dtype, (mib << 20) / dtype.size())
}

/// Maps every file afresh and reads all its bytes, chunk by chunk, in parallel.
pub fn read_files(paths: &[PathBuf]) {
    let maps: Vec<memmap2::Mmap> = paths
        .iter()
        .map(|p| {
            let file = std::fs::File::open(p).expect("open");
            // SAFETY: a private temporary file nothing else writes while mapped.
            unsafe { memmap2::Mmap::map(&file) }.expect("map")
        })
        .collect();
    let chunk = DEFAULT_CHUNK_ELEMENTS * 2;
    let total: u64 = maps
        .par_iter()
        .flat_map(|m| m.par_chunks(chunk))
        .map(|c| {
            c.chunks_exact(8)
                .fold(0u64, |s, w| s ^ u64::from_le_bytes(w.try_into().unwrap_or_default()))
        })
        .reduce(|| 0, |a, b| a ^ b);
    std::hint::black_box(total);
}

/// A safetensors file with one tensor `w` of `n` values: a shared base pattern
/// plus a per-file perturbation (as fine-tunes of one model look).
pub fn write_file(path: &Path, dtype: FloatDtype, n: usize, seed: u64) {
    let header = format!(
        "{{\"w\":{{\"dtype\":\"{}\",\"shape\":[{n}],\"data_offsets\":[0,{}]}}}}",
        match dtype {
            FloatDtype::F64 => "F64",
            FloatDtype::F32 => "F32",
            FloatDtype::F16 => "F16",
            FloatDtype::BF16 => "BF16",
        },
        n * dtype.size()
    );
    let mut header = header.into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    let (mut base, mut own) =
        (0x2545_F491_4F6C_DD1Du64, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let next = |s: &mut u64| {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    for _ in 0..n {
        let x = 0.02 * next(&mut base) + if seed == 1 { 0.0 } else { 0.001 * next(&mut own) };
        match dtype {
            FloatDtype::F64 => bytes.extend_from_slice(&x.to_le_bytes()),
            FloatDtype::F32 => bytes.extend_from_slice(&(x as f32).to_le_bytes()),
            FloatDtype::F16 => bytes.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
            FloatDtype::BF16 => {
                bytes.extend_from_slice(&modelsoup::engine::kernel::bf16_bits(x).to_le_bytes())
            }
        }
    }
    std::fs::write(path, bytes).expect("write bench file");
}
