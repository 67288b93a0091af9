//! Measuring helpers shared by the benches: the memory-copy floor, timing, medians.

use std::time::Instant;

use rayon::prelude::*;

/// Copies `src` into `dst` in parallel chunks of `chunk` bytes: the memcpy floor.
pub fn copy(src: &[u8], dst: &mut [u8], chunk: usize) {
    dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
}

/// Runs `f` once and returns `bytes` per second of its wall time, in GB/s.
pub fn time_gbps(bytes: usize, f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    bytes as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
