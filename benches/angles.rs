//! Throughput of the statistics pass behind `soup angles` (one streaming pass over
//! a base and k ingredients accumulating k(k+1)/2 dot products of deltas in f64),
//! against memory-copy floors measured side by side.
//!
//! For k = 2, 4, 8 ingredients plus a base, each `SOUP_BENCH_MIB` MiB (default 64)
//! of `SOUP_BENCH_DTYPE` (default bf16) in a safetensors file in a temporary
//! directory (so in the page cache, as after a first read), the pass runs on 1
//! thread and on all threads. Beside it, on the same threads: `memcpy` (one buffer
//! copied to another in memory: the machine's raw bandwidth) and `read` (the same
//! files mapped afresh and every byte read in engine-sized chunks: the pass's data
//! movement, page faults included, with no arithmetic; the pass drops its pages as
//! it goes, so it faults them back each round as well). Throughput counts bytes
//! read (memcpy: read + written); rounds interleave the variants and medians are
//! reported.
//!
//! Run: `cargo bench --bench angles`.

#[path = "support/files.rs"]
mod files;
mod support;

use std::path::PathBuf;

use files::{input_size, read_files, write_file};
use modelsoup::analysis::angles::angles;
use modelsoup::{Checkpoint, RunOptions, DEFAULT_CHUNK_ELEMENTS};
use support::{copy, median, time_gbps};

const ROUNDS: usize = 7;

fn main() {
    let (mib, dtype, elements) = input_size();
    let dir = tempfile::Builder::new().prefix("soup-bench-").tempdir().expect("temp dir");
    let paths: Vec<PathBuf> = (0..9)
        .map(|i| {
            let path = dir.path().join(format!("m{i}.safetensors"));
            write_file(&path, dtype, elements, i as u64 + 1);
            path
        })
        .collect();
    let checkpoints: Vec<Checkpoint> =
        paths.iter().map(|p| Checkpoint::open(p).expect("open")).collect();
    let src = vec![1u8; elements * dtype.size()];
    let mut dst = vec![0u8; src.len()];
    let threads = rayon::current_num_threads();
    println!("# {mib} MiB per input ({dtype}), base + k ingredients, chunks of {DEFAULT_CHUNK_ELEMENTS} elements");
    println!(
        "# GB/s count bytes read (memcpy: read + written); medians of {ROUNDS} interleaved rounds"
    );
    println!(
        "| threads | k | memcpy GB/s | read GB/s | angles GB/s | angles/memcpy | angles/read |"
    );
    println!("|---|---|---|---|---|---|---|");
    for t in [1, threads] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("thread pool");
        for k in [2usize, 4, 8] {
            let bytes = (k + 1) * src.len();
            let (mut memcpy, mut read, mut pass) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                pool.install(|| {
                    memcpy.push(time_gbps(2 * src.len(), || {
                        copy(&src, &mut dst, DEFAULT_CHUNK_ELEMENTS * 2)
                    }));
                    read.push(time_gbps(bytes, || read_files(&paths[..=k])));
                });
                let run = RunOptions { threads: t, ..RunOptions::default() };
                pass.push(time_gbps(bytes, || {
                    let result = angles(Some(&checkpoints[0]), &checkpoints[1..=k], false, &run);
                    std::hint::black_box(result.expect("angles"));
                }));
            }
            let (m, r, a) = (median(&mut memcpy), median(&mut read), median(&mut pass));
            println!("| {t} | {k} | {m:.1} | {r:.1} | {a:.1} | {:.2} | {:.2} |", a / m, a / r);
        }
    }
    std::hint::black_box(&dst);
}
