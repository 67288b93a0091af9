//! Kernel throughput against a plain memory copy, measured side by side.
//!
//! For k = 2, 3, 4, 8 inputs of `SOUP_BENCH_MIB` MiB each (default 64, far beyond the
//! caches) in format `SOUP_BENCH_DTYPE` (default bf16; f16, f32 and f64 too), the
//! kernel computes the uniform soup `(Σ xᵢ)/k` into that format over the whole
//! buffer in engine-sized chunks (for k = 3 with the division the engine uses when
//! `1/k` is not exact), on 1 thread and on all threads. Two floors run beside it on the same
//! threads: `memcpy` (one buffer copied to another: the machine's raw bandwidth) and
//! `gather` (the kernel's exact data movement, k input chunks read and one output
//! chunk written, with no arithmetic). Throughput counts bytes read + bytes written;
//! rounds interleave the variants so that machine noise hits them alike, and medians
//! are reported.
//!
//! Run: `cargo bench --bench kernel` (add `RUSTFLAGS="-C target-cpu=native"` for
//! the native build).

mod support;

use modelsoup::engine::kernel::{Accumulator, Input};
use modelsoup::engine::plan::as_fractions;
use modelsoup::{FloatDtype, DEFAULT_CHUNK_ELEMENTS};
use rayon::prelude::*;
use support::{copy, median, time_gbps};

const ROUNDS: usize = 11;

fn main() {
    let mib: usize =
        std::env::var("SOUP_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let dtype: FloatDtype = std::env::var("SOUP_BENCH_DTYPE")
        .map(|v| v.parse().expect("SOUP_BENCH_DTYPE: f64, f32, f16 or bf16"))
        .unwrap_or(FloatDtype::BF16);
    let elements = (mib << 20) / dtype.size();
    let inputs: Vec<Vec<u8>> = (0..8).map(|i| random(dtype, elements, i as u64 + 1)).collect();
    let mut out = vec![0u8; elements * dtype.size()];
    let threads = rayon::current_num_threads();
    println!(
        "# {mib} MiB per input, {dtype} → {dtype}, chunks of {DEFAULT_CHUNK_ELEMENTS} elements"
    );
    println!("# GB/s count bytes read + written; medians of {ROUNDS} interleaved rounds");
    println!(
        "| threads | k | memcpy GB/s | gather GB/s | kernel GB/s | kernel/memcpy | kernel/gather |"
    );
    println!("|---|---|---|---|---|---|---|");
    for t in [1, threads] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("thread pool");
        for k in [2usize, 3, 4, 8] {
            let bytes = (k + 1) * elements * dtype.size();
            let (mut memcpy, mut gathered, mut kernel) = (Vec::new(), Vec::new(), Vec::new());
            let chunk = DEFAULT_CHUNK_ELEMENTS * dtype.size();
            for _ in 0..ROUNDS {
                pool.install(|| {
                    memcpy.push(time_gbps(2 * out.len(), || copy(&inputs[0], &mut out, chunk)));
                    gathered.push(time_gbps(bytes, || gather(&inputs[..k], &mut out, chunk)));
                    kernel.push(time_gbps(bytes, || soup(&inputs[..k], &mut out, dtype)));
                });
            }
            let (m, g, s) = (median(&mut memcpy), median(&mut gathered), median(&mut kernel));
            println!("| {t} | {k} | {m:.1} | {g:.1} | {s:.1} | {:.2} | {:.2} |", s / m, s / g);
        }
    }
    std::hint::black_box(&out);
}

/// The same data movement as the kernel without the arithmetic: each input's chunk
/// is copied into a cache-resident buffer, which is then copied to the output.
fn gather(inputs: &[Vec<u8>], out: &mut [u8], chunk: usize) {
    out.par_chunks_mut(chunk).enumerate().for_each_init(Vec::new, |buf, (i, dst)| {
        buf.resize(dst.len(), 0);
        for input in inputs {
            buf.copy_from_slice(&input[i * chunk..i * chunk + dst.len()]);
        }
        dst.copy_from_slice(buf);
    });
}

/// The uniform soup as the engine runs it: weights `1/k` become `1` with a divisor
/// `k` when `k` is not a power of two (`plan::as_fractions`).
fn soup(inputs: &[Vec<u8>], out: &mut [u8], dtype: FloatDtype) {
    let chunk = DEFAULT_CHUNK_ELEMENTS * dtype.size();
    let uniform = vec![1.0 / inputs.len() as f64; inputs.len()];
    let (weights, divisor) = as_fractions(&uniform).unwrap_or((uniform, 1.0));
    out.par_chunks_mut(chunk).enumerate().for_each_init(
        || (Accumulator::default(), Vec::new()),
        |(acc, bytes), (i, dst)| {
            let range = i * chunk..i * chunk + dst.len();
            let mixed: Vec<Input> = inputs
                .iter()
                .zip(&weights)
                .map(|(x, &weight)| Input { dtype, bytes: &x[range.clone()], weight })
                .collect();
            acc.mix(dst.len() / dtype.size(), &mixed, divisor, dtype, bytes);
            dst.copy_from_slice(bytes);
        },
    );
}

/// Deterministic values of moderate magnitude in `dtype` (xorshift; no NaN or inf).
fn random(dtype: FloatDtype, n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n * dtype.size());
    for _ in 0..n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let x = ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * 0.02;
        match dtype {
            FloatDtype::F64 => out.extend_from_slice(&x.to_le_bytes()),
            FloatDtype::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
            FloatDtype::F16 => out.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
            FloatDtype::BF16 => {
                out.extend_from_slice(&modelsoup::engine::kernel::bf16_bits(x).to_le_bytes())
            }
        }
    }
    out
}
