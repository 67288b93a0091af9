//! Throughput of the pass behind `soup learned --gradient` (one streaming pass
//! over a gradient file and k ingredients taking ⟨∇θL, θᵢ⟩ and ‖∇θL‖² in f64),
//! against memory-copy floors measured side by side.
//!
//! For k = 2, 4, 8 ingredients of `SOUP_BENCH_MIB` MiB each (default 64) of
//! `SOUP_BENCH_DTYPE` (default bf16) and a gradient of the same elements in f32
//! (what an evaluator usually writes), each in a safetensors file in a temporary
//! directory (so in the page cache, as after a first read), the pass runs on 1
//! thread and on all threads. Beside it, on the same threads: `memcpy` (one
//! buffer copied to another in memory: the machine's raw bandwidth) and `read`
//! (the same files mapped afresh and every byte read in engine-sized chunks: the
//! pass's data movement, page faults included, with no arithmetic). Throughput
//! counts bytes read (memcpy: read + written); rounds interleave the variants and
//! medians are reported.
//!
//! Run: `cargo bench --bench gradient`.

#[path = "support/files.rs"]
mod files;
mod support;

use std::path::PathBuf;

use files::{input_size, read_files, write_file};
use modelsoup::analysis::gradient::gradient_dots;
use modelsoup::{Checkpoint, FloatDtype, RunOptions, DEFAULT_CHUNK_ELEMENTS};
use support::{copy, median, time_gbps};

const ROUNDS: usize = 7;

fn main() {
    let (mib, dtype, elements) = input_size();
    let dir = tempfile::Builder::new().prefix("soup-bench-").tempdir().expect("temp dir");
    let gradient = dir.path().join("grad.safetensors");
    write_file(&gradient, FloatDtype::F32, elements, 100);
    let paths: Vec<PathBuf> = (0..8)
        .map(|i| {
            let path = dir.path().join(format!("m{i}.safetensors"));
            write_file(&path, dtype, elements, i as u64 + 2);
            path
        })
        .collect();
    let checkpoints: Vec<Checkpoint> =
        paths.iter().map(|p| Checkpoint::open(p).expect("open")).collect();
    let ingredient_bytes = elements * dtype.size();
    let src = vec![1u8; ingredient_bytes];
    let mut dst = vec![0u8; src.len()];
    let threads = rayon::current_num_threads();
    println!(
        "# {mib} MiB per ingredient ({dtype}), gradient in f32, chunks of {DEFAULT_CHUNK_ELEMENTS} elements"
    );
    println!(
        "# GB/s count bytes read (memcpy: read + written); medians of {ROUNDS} interleaved rounds"
    );
    println!(
        "| threads | k | memcpy GB/s | read GB/s | gradient GB/s | gradient/memcpy | gradient/read |"
    );
    println!("|---|---|---|---|---|---|---|");
    for t in [1, threads] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("thread pool");
        for k in [2usize, 4, 8] {
            let bytes = k * ingredient_bytes + elements * 4;
            let mut inputs = vec![gradient.clone()];
            inputs.extend(paths[..k].iter().cloned());
            let (mut memcpy, mut read, mut pass) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                pool.install(|| {
                    memcpy.push(time_gbps(2 * src.len(), || {
                        copy(&src, &mut dst, DEFAULT_CHUNK_ELEMENTS * 2)
                    }));
                    read.push(time_gbps(bytes, || read_files(&inputs)));
                });
                let run = RunOptions { threads: t, ..RunOptions::default() };
                pass.push(time_gbps(bytes, || {
                    let found = gradient_dots(&gradient, &checkpoints[..k], 1, &|_| Some(0), &run);
                    std::hint::black_box(found.expect("gradient pass"));
                }));
            }
            let (m, r, g) = (median(&mut memcpy), median(&mut read), median(&mut pass));
            println!("| {t} | {k} | {m:.1} | {r:.1} | {g:.1} | {:.2} | {:.2} |", g / m, g / r);
        }
    }
    std::hint::black_box(&dst);
}
