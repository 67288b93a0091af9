//! Exact top-k selections of every tensor of a model at once, in two streaming
//! passes in the common case (`method/topk.rs` does the rare rest).
//!
//! A key (a magnitude `|δ|`, or a variance) is a non-negative f64, so its bits
//! order like the numbers. The first pass counts, for every tensor and target,
//! the keys in 2¹⁸ buckets of their top bits — the exponent and seven bits of
//! the mantissa, enough to give each distinct magnitude of a difference of two
//! 16-bit weights of one binade its own bucket. Walking the buckets from the
//! top finds the one that holds the `k`-th largest key: when it holds exactly
//! the entries still needed, the selection is done. Otherwise the second pass
//! collects only that bucket's keys, with their positions, and the `need`-th
//! largest of them, ties broken by position (the earlier first), is the exact
//! threshold and last tie. A boundary bucket of more than
//! [`MAX_COLLECTED_CHUNKS`] chunks' worth of entries (a tensor of millions of
//! equal magnitudes) falls back to radix selection on the next bits.
//!
//! Both passes stream every tensor of the model one after the other on the
//! engine's workers, as the merge does: a worker counts into histograms of its
//! own (integer counts add up in any order, so the result does not depend on
//! the threads) and hands them over when it moves to the next tensor; a
//! tensor's histograms are reduced to its boundary as soon as its last chunk is
//! counted, so memory holds the histograms of the few tensors in flight, not of
//! the model. Keys are computed a tile at a time with the reducer's exact
//! arithmetic (the merge tests the same bits against the same thresholds).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

use super::topk::{initial, resolve, Key, Source, State, Target, Tensor};
use crate::engine::checkpoint::Checkpoint;
use crate::engine::dtype::FloatDtype;
use crate::engine::execute::RunOptions;
use crate::engine::kernel::widen_into;
use crate::engine::stream;
use crate::engine::task_vectors::{variance_into, Keep};
use crate::error::Result;

/// Top bits of a key that name its bucket.
const BITS: u32 = 18;
/// Buckets per histogram.
const BUCKETS: usize = 1 << BITS;
/// The shift from a 63-bit key to its bucket.
const SHIFT: u32 = 63 - BITS;
/// Elements widened at a time.
const TILE: usize = 512;
/// Most entries of one boundary bucket collected in the second pass (16 bytes
/// each), in chunks' worth of elements (64 MiB at the default chunk size);
/// larger buckets are resolved by radix passes instead.
const MAX_COLLECTED_CHUNKS: u64 = 64;
/// No bucket touched yet: a range that every bucket widens.
#[allow(clippy::reversed_empty_ranges)]
const UNTOUCHED: Range<usize> = BUCKETS..0;

/// One tensor's selections: its base, inputs and targets.
pub(crate) struct Job<'a> {
    /// The base.
    pub base: Source<'a>,
    /// The inputs the keys are taken from.
    pub inputs: Vec<Source<'a>>,
    /// The selections.
    pub targets: Vec<Target>,
    /// The tensor's size.
    pub numel: usize,
}

impl<'a> Job<'a> {
    fn tensor(&'a self) -> Tensor<'a> {
        Tensor { base: self.base, inputs: &self.inputs, targets: &self.targets, numel: self.numel }
    }

    /// The inputs the targets `which` read, in order.
    fn reads(&self, which: &[usize]) -> Vec<usize> {
        let mut read: Vec<usize> = Vec::new();
        for &t in which {
            match self.targets[t].key {
                Key::Delta(i) => read.push(i),
                Key::Variance => read.extend(0..self.inputs.len()),
            }
        }
        read.sort_unstable();
        read.dedup();
        read
    }
}

/// Every job's rule per target, in order.
pub(crate) fn select_all(jobs: &[Job], run: &RunOptions) -> Result<Vec<Vec<Keep>>> {
    let mut states: Vec<Vec<State>> =
        jobs.iter().map(|j| j.targets.iter().map(|t| initial(t, j.numel)).collect()).collect();
    let counting = |s: &State| matches!(s, State::Counting(_) | State::Digits { known: 0, .. });
    let first: Vec<(usize, Vec<usize>)> = active(&states, counting);
    if !first.is_empty() {
        let found = histogram_pass(jobs, &first, &states, run)?;
        for ((job, which), boundaries) in first.iter().zip(found) {
            for (&t, state) in which.iter().zip(boundaries) {
                states[*job][t] = state;
            }
        }
    }
    let boundary = |s: &State| matches!(s, State::Boundary { .. });
    let second = active(&states, boundary);
    if !second.is_empty() {
        let found = boundary_pass(jobs, &second, &states, run)?;
        for ((job, which), done) in second.iter().zip(found) {
            for (&t, state) in which.iter().zip(done) {
                states[*job][t] = state;
            }
        }
    }
    jobs.iter().zip(states).map(|(job, states)| resolve(job.tensor(), states, run)).collect()
}

/// The jobs with targets in a state that `pick` selects, and those targets.
fn active(states: &[Vec<State>], pick: impl Fn(&State) -> bool) -> Vec<(usize, Vec<usize>)> {
    states
        .iter()
        .enumerate()
        .filter_map(|(j, s)| {
            let which: Vec<usize> = (0..s.len()).filter(|&t| pick(&s[t])).collect();
            (!which.is_empty()).then_some((j, which))
        })
        .collect()
}

/// A chunk of a job: elements `range` of job `job` (an index into the pass's
/// list).
#[derive(Clone)]
struct Chunk {
    job: usize,
    range: Range<usize>,
}

/// The chunks of the jobs in `list`, in order.
fn chunks(jobs: &[Job], list: &[(usize, Vec<usize>)], run: &RunOptions) -> Vec<Chunk> {
    let step = run.chunk_elements.max(1);
    let mut out = Vec::new();
    for (j, (job, _)) in list.iter().enumerate() {
        let numel = jobs[*job].numel;
        out.extend(
            (0..numel).step_by(step).map(|s| Chunk { job: j, range: s..numel.min(s + step) }),
        );
    }
    out
}

/// A worker's tiles.
struct Tiles {
    base: Vec<f64>,
    deltas: Vec<Vec<f64>>,
    var: Vec<f64>,
}

impl Tiles {
    fn new() -> Self {
        Tiles { base: vec![0.0; TILE], deltas: Vec::new(), var: vec![0.0; TILE] }
    }

    /// Widens the base and the inputs `read` of `job` at elements `start..start
    /// + n` and turns the inputs into task vectors.
    fn load(&mut self, job: &Job, read: &[usize], start: usize, n: usize) {
        widen(job.base.dtype, &job.base.bytes(start, n), &mut self.base[..n]);
        self.deltas.resize_with(read.len(), || vec![0.0; TILE]);
        for (d, &i) in self.deltas.iter_mut().zip(read) {
            let source = job.inputs[i];
            deltas(source.dtype, &source.bytes(start, n), &self.base[..n], &mut d[..n]);
        }
    }

    /// The values ranked by `key` for the loaded tile (`read` as given to
    /// `load`); their keys are the bits of their magnitudes.
    fn values(&mut self, key: Key, read: &[usize], n: usize) -> &[f64] {
        match key {
            Key::Delta(i) => {
                let slot = read.iter().position(|&r| r == i).unwrap_or_default();
                &self.deltas[slot][..n]
            }
            Key::Variance => {
                variance_into(&self.deltas, n, &mut self.var[..n]);
                &self.var[..n]
            }
        }
    }
}

/// The vectorised steps of the passes, compiled for AVX-512, AVX2 and SSE4.2
/// and chosen at run time, as the kernel's are.
macro_rules! vectorised {
    ($($item:item)*) => {$(
        #[multiversion::multiversion(targets(
            "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
            "x86_64+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
            "x86_64+sse4.2+popcnt",
        ))]
        $item
    )*};
}

vectorised! {
    /// `out = widen(bytes)`.
    fn widen(dtype: FloatDtype, bytes: &[u8], out: &mut [f64]) {
        widen_into(dtype, bytes, out);
    }

    /// `out = widen(bytes) − base`.
    fn deltas(dtype: FloatDtype, bytes: &[u8], base: &[f64], out: &mut [f64]) {
        widen_into(dtype, bytes, out);
        for (x, &b) in out.iter_mut().zip(base) {
            *x -= b;
        }
    }

    /// Appends `(key, index)` of the values whose key lies in `bucket` (the
    /// first value's index is `first`): a vectorised bit mask per 64 values
    /// first, then only the few set bits visited.
    fn collect(values: &[f64], bucket: u64, first: u64, found: &mut Vec<(u64, u64)>) {
        for (block, vs) in values.chunks(64).enumerate() {
            let mut hits = 0u64;
            for (e, v) in vs.iter().enumerate() {
                hits |= u64::from(v.abs().to_bits() >> SHIFT == bucket) << e;
            }
            while hits != 0 {
                let e = hits.trailing_zeros() as usize;
                hits &= hits - 1;
                let at = block * 64 + e;
                found.push((values[at].abs().to_bits(), first + at as u64));
            }
        }
    }

    /// Adds the values' keys to the histogram `counts` (buckets of their top
    /// bits; `buckets` is scratch), widening `touched` to the buckets used, and
    /// returns how many keys are zero.
    fn count(values: &[f64], buckets: &mut [u32], counts: &mut [u32], touched: &mut Range<usize>) -> u64 {
        let mut zeros = 0u64;
        let (mut low, mut high) = (u32::MAX, 0u32);
        for (b, v) in buckets.iter_mut().zip(values) {
            let key = v.abs().to_bits();
            *b = (key >> SHIFT) as u32;
            zeros += u64::from(key == 0);
            low = low.min(*b);
            high = high.max(*b);
        }
        for &b in buckets.iter() {
            counts[b as usize] += 1;
        }
        if !values.is_empty() {
            touched.start = touched.start.min(low as usize);
            touched.end = touched.end.max(high as usize + 1);
        }
        zeros
    }
}

/// One job's histograms being filled.
struct Partial {
    /// Per target, the count of keys in each bucket.
    counts: Vec<Vec<u64>>,
    /// Per target, the keys that are exactly zero.
    zeros: Vec<u64>,
    /// Chunks counted so far.
    chunks: usize,
}

/// What the histogram pass shares between workers.
struct Shared<'a> {
    jobs: &'a [Job<'a>],
    list: &'a [(usize, Vec<usize>)],
    states: &'a [Vec<State>],
    /// Chunks per job of the list.
    totals: Vec<usize>,
    /// The largest boundary bucket collected.
    max_collected: u64,
    partial: Mutex<HashMap<usize, Partial>>,
    /// Per job of the list, its targets' states after the pass.
    found: Mutex<Vec<Option<Vec<State>>>>,
}

impl Shared<'_> {
    /// Adds a worker's counts for job `j` of the list (`chunks` chunks of it) and
    /// finishes the job once all its chunks are counted.
    fn add(
        &self,
        j: usize,
        counts: &mut [Vec<u32>],
        touched: &mut [Range<usize>],
        zeros: &mut [u64],
        chunks: usize,
    ) {
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        let p = partial.entry(j).or_insert_with(|| Partial {
            counts: vec![vec![0; BUCKETS]; counts.len()],
            zeros: vec![0; counts.len()],
            chunks: 0,
        });
        for (t, (mine, range)) in counts.iter_mut().zip(touched.iter_mut()).enumerate() {
            for b in range.clone() {
                p.counts[t][b] += u64::from(mine[b]);
                mine[b] = 0;
            }
            *range = UNTOUCHED;
            p.zeros[t] += zeros[t];
            zeros[t] = 0;
        }
        p.chunks += chunks;
        if p.chunks < self.totals[j] {
            return;
        }
        let Some(done) = partial.remove(&j) else { return };
        drop(partial);
        let (job, which) = &self.list[j];
        let numel = self.jobs[*job].numel;
        let states = which
            .iter()
            .enumerate()
            .map(|(t, &target)| {
                let state = self.states[*job][target];
                boundary(state, &done.counts[t], done.zeros[t], numel, self.max_collected)
            })
            .collect();
        self.found.lock().unwrap_or_else(|p| p.into_inner())[j] = Some(states);
    }
}

/// A worker's histograms of its current job, handed over when it moves on (and
/// when the worker ends, by `Drop`).
struct Counter<'s, 'a> {
    shared: &'s Shared<'a>,
    job: Option<usize>,
    chunks: usize,
    /// Elements counted since the last hand-over (the counts are 32-bit).
    elements: usize,
    counts: Vec<Vec<u32>>,
    touched: Vec<Range<usize>>,
    zeros: Vec<u64>,
    tiles: Tiles,
    /// A tile of bucket numbers.
    buckets: Vec<u32>,
}

impl Counter<'_, '_> {
    fn flush(&mut self) {
        if let Some(j) = self.job.take() {
            self.shared.add(j, &mut self.counts, &mut self.touched, &mut self.zeros, self.chunks);
            self.chunks = 0;
            self.elements = 0;
        }
    }

    /// Counts the keys of one chunk.
    fn count(&mut self, chunk: &Chunk) {
        if self.job != Some(chunk.job) {
            self.flush();
            let targets = self.shared.list[chunk.job].1.len();
            self.counts.resize_with(targets.max(self.counts.len()), || vec![0; BUCKETS]);
            self.touched.resize(targets.max(self.touched.len()), UNTOUCHED);
            self.zeros.resize(targets.max(self.zeros.len()), 0);
            self.job = Some(chunk.job);
        }
        let (job_index, which) = &self.shared.list[chunk.job];
        let job = &self.shared.jobs[*job_index];
        let read = job.reads(which);
        for start in chunk.range.clone().step_by(TILE) {
            let n = TILE.min(chunk.range.end - start);
            self.tiles.load(job, &read, start, n);
            for (t, &target) in which.iter().enumerate() {
                let mut buckets = std::mem::take(&mut self.buckets);
                let values = self.tiles.values(job.targets[target].key, &read, n);
                let (counts, touched) = (&mut self.counts[t], &mut self.touched[t]);
                self.zeros[t] += count(values, &mut buckets[..n], counts, touched);
                self.buckets = buckets;
            }
        }
        self.chunks += 1;
        self.elements += chunk.range.len();
        if self.elements > 1 << 31 {
            self.flush();
        }
    }
}

impl Drop for Counter<'_, '_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The checkpoints the jobs read, each once: the inputs a pass watches for
/// changes.
fn watched<'a>(jobs: &[Job<'a>]) -> Vec<&'a Checkpoint> {
    let mut all: Vec<&'a Checkpoint> = Vec::new();
    for job in jobs {
        for source in std::iter::once(&job.base).chain(&job.inputs) {
            if !all.iter().any(|c| std::ptr::eq(*c, source.checkpoint)) {
                all.push(source.checkpoint);
            }
        }
    }
    all
}

/// The first pass: each target's boundary bucket (or its selection, when the
/// counts settle it).
fn histogram_pass(
    jobs: &[Job],
    list: &[(usize, Vec<usize>)],
    states: &[Vec<State>],
    run: &RunOptions,
) -> Result<Vec<Vec<State>>> {
    let chunks = chunks(jobs, list, run);
    let mut totals = vec![0; list.len()];
    for c in &chunks {
        totals[c.job] += 1;
    }
    let shared = Shared {
        jobs,
        list,
        states,
        totals,
        max_collected: MAX_COLLECTED_CHUNKS * run.chunk_elements.max(1) as u64,
        partial: Mutex::new(HashMap::new()),
        found: Mutex::new(vec![None; list.len()]),
    };
    let watched = watched(jobs);
    stream::run(
        run.threads,
        chunks.len(),
        run.cancel,
        &watched,
        || Counter {
            shared: &shared,
            job: None,
            chunks: 0,
            elements: 0,
            counts: Vec::new(),
            touched: Vec::new(),
            zeros: Vec::new(),
            tiles: Tiles::new(),
            buckets: vec![0; TILE],
        },
        |i, counter| {
            counter.count(&chunks[i]);
            progress(jobs, list, &chunks[i], run);
            Ok(())
        },
        |_, ()| {},
        |range| release(jobs, list, &chunks[range]),
    )?;
    let found = shared.found.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(found
        .into_iter()
        .zip(list)
        .map(|(f, (job, which))| {
            f.unwrap_or_else(|| which.iter().map(|&t| states[*job][t]).collect())
        })
        .collect())
}

/// The state after the first pass: done when the boundary bucket holds
/// exactly the keys still needed, else the bucket to collect.
fn boundary(state: State, counts: &[u64], zeros: u64, numel: usize, max_collected: u64) -> State {
    let need = match state {
        State::Digits { need, .. } => need,
        State::Counting(f) => match (f * (numel as u64 - zeros) as f64) as u64 {
            0 => return State::Done(Keep::Nothing),
            k if k >= numel as u64 => return State::Done(Keep::All),
            k => k,
        },
        other => return other,
    };
    let mut above = 0u64;
    for bucket in (0..BUCKETS).rev() {
        let count = counts[bucket];
        if above + count < need {
            above += count;
            continue;
        }
        let rest = need - above;
        let low = (bucket as u64) << SHIFT;
        return if count == rest {
            State::Done(Keep::Above { threshold: low, last_tie: u64::MAX })
        } else if count > max_collected {
            State::Digits { known: BITS, prefix: bucket as u64, need: rest }
        } else {
            State::Boundary { bucket: bucket as u64, need: rest }
        };
    }
    // Fewer keys than needed cannot happen (the counts cover every element).
    State::Done(Keep::All)
}

/// The second pass: the keys of each boundary bucket with their positions,
/// and from them the exact threshold and last tie.
fn boundary_pass(
    jobs: &[Job],
    list: &[(usize, Vec<usize>)],
    states: &[Vec<State>],
    run: &RunOptions,
) -> Result<Vec<Vec<State>>> {
    let chunks = chunks(jobs, list, run);
    let mut collected: Vec<Vec<Vec<(u64, u64)>>> =
        list.iter().map(|(_, which)| vec![Vec::new(); which.len()]).collect();
    let mut settled: Vec<Option<Vec<State>>> = vec![None; list.len()];
    let wanted: Vec<Vec<u64>> = list
        .iter()
        .map(|(job, which)| {
            which
                .iter()
                .map(|&t| match states[*job][t] {
                    State::Boundary { bucket, .. } => bucket,
                    _ => u64::MAX,
                })
                .collect()
        })
        .collect();
    let watched = watched(jobs);
    stream::run(
        run.threads,
        chunks.len(),
        run.cancel,
        &watched,
        Tiles::new,
        |i, tiles| {
            let chunk = &chunks[i];
            let (job_index, which) = &list[chunk.job];
            let job = &jobs[*job_index];
            let read = job.reads(which);
            let mut found: Vec<Vec<(u64, u64)>> = vec![Vec::new(); which.len()];
            for start in chunk.range.clone().step_by(TILE) {
                let n = TILE.min(chunk.range.end - start);
                tiles.load(job, &read, start, n);
                for (t, &target) in which.iter().enumerate() {
                    let bucket = wanted[chunk.job][t];
                    let values = tiles.values(job.targets[target].key, &read, n);
                    collect(values, bucket, start as u64, &mut found[t]);
                }
            }
            progress(jobs, list, chunk, run);
            Ok(found)
        },
        |i, found| {
            let j = chunks[i].job;
            for (all, mine) in collected[j].iter_mut().zip(found) {
                all.extend(mine);
            }
            // A job's chunks come in order, one after the other: after its last,
            // its keys are settled and freed, so memory holds the boundary
            // buckets of the tensors in flight, not of the model.
            if chunks.get(i + 1).is_none_or(|next| next.job != j) {
                settled[j] = Some(settle(&list[j], states, std::mem::take(&mut collected[j])));
            }
        },
        |range| release(jobs, list, &chunks[range]),
    )?;
    // Jobs without chunks (empty tensors) have nothing collected.
    Ok(settled
        .into_iter()
        .zip(list)
        .zip(collected)
        .map(|((done, entry), found)| done.unwrap_or_else(|| settle(entry, states, found)))
        .collect())
}

/// The states of one job's targets `which` from the keys collected of their
/// boundary buckets: the `need`-th largest key is the threshold and its position
/// the last tie.
fn settle(
    (job, which): &(usize, Vec<usize>),
    states: &[Vec<State>],
    found: Vec<Vec<(u64, u64)>>,
) -> Vec<State> {
    which
        .iter()
        .zip(found)
        .map(|(&t, mut keys)| match states[*job][t] {
            State::Boundary { need, .. } => {
                // Largest first; positions ascend within a key (the entries
                // arrived in order and the sort is stable).
                keys.sort_by_key(|k| std::cmp::Reverse(k.0));
                match keys.get(need as usize - 1) {
                    Some(&(threshold, last_tie)) => {
                        State::Done(Keep::Above { threshold, last_tie })
                    }
                    None => State::Done(Keep::All),
                }
            }
            other => other,
        })
        .collect()
}

/// Reports the bytes a chunk read.
fn progress(jobs: &[Job], list: &[(usize, Vec<usize>)], chunk: &Chunk, run: &RunOptions) {
    if let Some(progress) = run.progress {
        let (job, which) = &list[chunk.job];
        let job = &jobs[*job];
        let mut bytes = job.base.dtype.size() * chunk.range.len();
        for i in job.reads(which) {
            bytes += job.inputs[i].dtype.size() * chunk.range.len();
        }
        progress(bytes as u64);
    }
}

/// Releases the input pages of finished chunks.
fn release(jobs: &[Job], list: &[(usize, Vec<usize>)], chunks: &[Chunk]) {
    // Inputs are numbered per job: the base 0, its inputs from 1. Two jobs'
    // inputs of one number may be different checkpoints, whose ranges are then
    // not merged unless they touch in one shard number; releasing is advice
    // (the pages stay in the page cache), so a merged range costs nothing.
    let most = jobs.iter().map(|j| j.inputs.len() + 1).max().unwrap_or(1);
    let reads = chunks.iter().flat_map(|c| {
        let (job, which) = &list[c.job];
        let job = &jobs[*job];
        let (start, len) = (c.range.start, c.range.len());
        std::iter::once(job.base.read(0, start, len))
            .chain(job.reads(which).into_iter().map(move |i| job.inputs[i].read(i + 1, start, len)))
    });
    stream::release(most, reads);
}
