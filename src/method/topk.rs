//! TIES's trim, exactly and in bounded memory: for each input, which entries of
//! its task vector `δ = x − b` are the `k` largest in magnitude — without holding
//! the tensor.
//!
//! A magnitude `|δ|` is non-negative, so the bits of the f64 order like the
//! numbers: the `k`-th largest is found digit by digit (radix selection), 12 bits
//! per streaming pass over the tensor. Each pass counts the entries that match
//! the bits found so far in 4096 buckets of the next 12, and also notes each
//! bucket's smallest and largest key; walking the buckets from the top finds the
//! one that holds the `k`-th largest. The search stops as soon as
//!
//! - that bucket holds exactly the entries still needed (keep everything from its
//!   lower bound up), or
//! - all its entries are equal: the threshold `T` is known, and one more pass
//!   finds the position of the last tie to keep (ties are broken by position,
//!   first come first kept, so exactly `k` survive).
//!
//! Deltas of 16-bit weights resolve in two or three passes. Memory is 96 KiB of
//! buckets per input and chunk in flight, whatever the tensor's size.

use std::ops::Range;

use crate::engine::checkpoint::Checkpoint;
use crate::engine::dtype::FloatDtype;
use crate::engine::execute::RunOptions;
use crate::engine::kernel::widen_into;
use crate::engine::stream::{self, Read};
use crate::engine::task_vectors::{keep_flags, variance_into, Keep};
use crate::error::Result;

/// Bits resolved per pass.
const DIGIT: u32 = 12;
/// Buckets per pass.
const BUCKETS: usize = 1 << DIGIT;
/// Significant bits of a magnitude's key (the sign bit is always 0).
const KEY_BITS: u32 = 63;
/// Elements widened at a time.
const TILE: usize = 512;

/// One input of a tensor: its checkpoint, tensor index and format.
#[derive(Clone, Copy)]
pub(crate) struct Source<'a> {
    pub checkpoint: &'a Checkpoint,
    pub tensor: usize,
    pub dtype: FloatDtype,
}

impl Source<'_> {
    pub(super) fn bytes(&self, start: usize, len: usize) -> std::borrow::Cow<'_, [u8]> {
        let entry = &self.checkpoint.tensors()[self.tensor];
        let size = self.dtype.size();
        self.checkpoint.bytes(entry, start * size, len * size)
    }

    pub(super) fn read(&self, input: usize, start: usize, len: usize) -> Read<'_> {
        let entry = &self.checkpoint.tensors()[self.tensor];
        let size = self.dtype.size();
        Read::of(input, self.checkpoint, entry, start * size, len * size)
    }
}

/// What is ranked: one input's task-vector magnitudes `|x − b|`, or the
/// population variance of all the inputs' task vectors (SCE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    /// `|x − b|` of the input at this index of the sources.
    Delta(usize),
    /// The variance across every source (`task_vectors::variance_into`).
    Variance,
}

/// How many of the largest keys are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Count {
    /// Exactly this many (between 1 and the tensor's size − 1).
    Exactly(u64),
    /// `⌊f · n⌋` of the `n` non-zero keys (SCE's `select_topk`).
    OfNonZero(f64),
}

/// One selection: a key and how many of its largest values are kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub key: Key,
    pub count: Count,
}

/// One tensor of the selection: the base, the inputs, the targets, the size.
#[derive(Clone, Copy)]
pub(super) struct Tensor<'a> {
    pub base: Source<'a>,
    pub inputs: &'a [Source<'a>],
    pub targets: &'a [Target],
    pub numel: usize,
}

/// Where one target's selection stands.
#[derive(Debug, Clone, Copy)]
pub(super) enum State {
    /// The count is a fraction of the non-zero keys, known after one pass.
    Counting(f64),
    /// The `need` largest keys among those whose top `known` bits equal `prefix`
    /// are still to be found.
    Digits {
        known: u32,
        prefix: u64,
        need: u64,
    },
    /// The threshold is `key`; the `need`-th entry equal to it is the last kept.
    Ties {
        key: u64,
        need: u64,
    },
    /// The `need` largest keys in the bucket of their top bits `bucket` are
    /// still to be found (`method/fine.rs`).
    Boundary {
        bucket: u64,
        need: u64,
    },
    Done(Keep),
}

impl State {
    fn digits(self) -> Option<(u32, u64)> {
        match self {
            State::Counting(_) => Some((0, 0)),
            State::Digits { known, prefix, .. } => Some((known, prefix)),
            _ => None,
        }
    }
}

/// The initial state of a target in a tensor of `numel` elements.
pub(super) fn initial(target: &Target, numel: usize) -> State {
    match target.count {
        Count::Exactly(0) => State::Done(Keep::Nothing),
        Count::Exactly(k) if k >= numel as u64 => State::Done(Keep::All),
        Count::Exactly(k) => State::Digits { known: 0, prefix: 0, need: k },
        Count::OfNonZero(f) => State::Counting(f),
    }
}

/// Radix selection from `states` on, until every target is done.
pub(super) fn resolve(
    tensor: Tensor,
    mut states: Vec<State>,
    run: &RunOptions,
) -> Result<Vec<Keep>> {
    let numel = tensor.numel;
    loop {
        let active: Vec<usize> =
            (0..states.len()).filter(|&i| states[i].digits().is_some()).collect();
        if !active.is_empty() {
            let hists = histogram_pass(tensor, &states, &active, run)?;
            for (&i, hist) in active.iter().zip(hists) {
                states[i] = next_state(states[i], &hist, numel);
            }
            continue;
        }
        let ties: Vec<usize> =
            (0..states.len()).filter(|&i| matches!(states[i], State::Ties { .. })).collect();
        if !ties.is_empty() {
            let lasts = tie_pass(tensor, &states, &ties, run)?;
            for (&i, last) in ties.iter().zip(lasts) {
                if let State::Ties { key, .. } = states[i] {
                    states[i] = State::Done(Keep::Above { threshold: key, last_tie: last });
                }
            }
        }
        return Ok(states
            .into_iter()
            .map(|s| match s {
                State::Done(keep) => keep,
                // Unreachable: every other state leads to another pass.
                _ => Keep::All,
            })
            .collect());
    }
}

/// Counts per bucket of the next digit, with each bucket's smallest and largest
/// key.
#[derive(Debug, Clone)]
struct Histogram {
    count: Vec<u64>,
    min: Vec<u64>,
    max: Vec<u64>,
    /// Keys that are exactly zero.
    zeros: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            count: vec![0; BUCKETS],
            min: vec![u64::MAX; BUCKETS],
            max: vec![0; BUCKETS],
            zeros: 0,
        }
    }

    fn add(&mut self, other: &Histogram) {
        self.zeros += other.zeros;
        for b in 0..BUCKETS {
            self.count[b] += other.count[b];
            self.min[b] = self.min[b].min(other.min[b]);
            self.max[b] = self.max[b].max(other.max[b]);
        }
    }
}

/// The digit layout after `known` bits: its width and the shift that brings it
/// down.
fn digit(known: u32) -> (u32, u32) {
    let width = DIGIT.min(KEY_BITS - known);
    (width, KEY_BITS - known - width)
}

/// The selection after one pass's histogram.
fn next_state(state: State, hist: &Histogram, numel: usize) -> State {
    let (known, prefix, need) = match state {
        State::Digits { known, prefix, need } => (known, prefix, need),
        State::Counting(f) => {
            let nonzero = numel as u64 - hist.zeros;
            match (f * nonzero as f64) as u64 {
                0 => return State::Done(Keep::Nothing),
                k if k >= numel as u64 => return State::Done(Keep::All),
                k => (0, 0, k),
            }
        }
        _ => return state,
    };
    let (width, shift) = digit(known);
    let mut above = 0u64;
    for bucket in (0..1usize << width).rev() {
        let count = hist.count[bucket];
        if above + count < need {
            above += count;
            continue;
        }
        let need = need - above;
        let prefix = prefix << width | bucket as u64;
        return if count == need {
            State::Done(Keep::Above { threshold: prefix << shift, last_tie: u64::MAX })
        } else if hist.min[bucket] == hist.max[bucket] {
            State::Ties { key: hist.min[bucket], need }
        } else {
            State::Digits { known: known + width, prefix, need }
        };
    }
    // Fewer matching entries than needed: the counts contradict the previous
    // pass, which read the same bytes. Keeping everything is the safe answer.
    State::Done(Keep::All)
}

/// Splits `numel` elements into the engine's chunks.
fn chunks(numel: usize, run: &RunOptions) -> Vec<Range<usize>> {
    let step = run.chunk_elements.max(1);
    (0..numel).step_by(step).map(|s| s..numel.min(s + step)).collect()
}

/// Streams the base and the inputs that the targets `which` rank, calling
/// `each(j, index, key)` for element `index` of the chunk with the key of target
/// `which[j]`, and returns the per-chunk results of `init`'s accumulators in
/// chunk order to `in_order`.
fn pass<T: Send>(
    tensor: Tensor,
    which: &[usize],
    run: &RunOptions,
    init: impl Fn() -> T + Sync,
    each: impl Fn(&mut T, usize, u64, u64) + Sync,
    mut in_order: impl FnMut(Range<usize>, T) + Send,
) -> Result<()> {
    let Tensor { base, inputs, targets, numel } = tensor;
    let mut read: Vec<usize> = Vec::new();
    for &t in which {
        match targets[t].key {
            Key::Delta(i) => read.push(i),
            Key::Variance => read.extend(0..inputs.len()),
        }
    }
    read.sort_unstable();
    read.dedup();
    let slot = |i: usize| read.iter().position(|&r| r == i).unwrap_or_default();
    let chunks = chunks(numel, run);
    let reads = |c: &Range<usize>| {
        let (start, len) = (c.start, c.len());
        std::iter::once(base.read(0, start, len))
            .chain(read.iter().enumerate().map(move |(j, &i)| inputs[i].read(j + 1, start, len)))
    };
    let watched: Vec<&Checkpoint> = std::iter::once(base.checkpoint)
        .chain(read.iter().map(|&i| inputs[i].checkpoint))
        .collect();
    stream::run(
        run.threads,
        chunks.len(),
        run.cancel,
        &watched,
        || (vec![0.0; TILE], vec![vec![0.0; TILE]; read.len()], vec![0.0; TILE]),
        |c, (b, deltas, var)| {
            let chunk = chunks[c].clone();
            let mut acc = init();
            for start in (chunk.start..chunk.end).step_by(TILE) {
                let n = TILE.min(chunk.end - start);
                widen_into(base.dtype, &base.bytes(start, n), &mut b[..n]);
                for (d, &i) in deltas.iter_mut().zip(&read) {
                    let source = inputs[i];
                    widen_into(source.dtype, &source.bytes(start, n), &mut d[..n]);
                    for (x, &b) in d[..n].iter_mut().zip(&b[..n]) {
                        *x -= b;
                    }
                }
                for (j, &t) in which.iter().enumerate() {
                    let keys = match targets[t].key {
                        Key::Delta(i) => &deltas[slot(i)][..n],
                        Key::Variance => {
                            variance_into(deltas, n, &mut var[..n]);
                            &var[..n]
                        }
                    };
                    for (e, x) in keys.iter().enumerate() {
                        each(&mut acc, j, (start + e) as u64, x.abs().to_bits());
                    }
                }
            }
            if let Some(progress) = run.progress {
                let bytes = (read.len() + 1) * chunk.len() * base.dtype.size();
                progress(bytes as u64);
            }
            Ok(acc)
        },
        |c, value| in_order(chunks[c].clone(), value),
        |range| stream::release(read.len() + 1, chunks[range].iter().flat_map(reads)),
    )
}

/// One radix pass for the inputs `active`.
fn histogram_pass(
    tensor: Tensor,
    states: &[State],
    active: &[usize],
    run: &RunOptions,
) -> Result<Vec<Histogram>> {
    let layout: Vec<(u32, u64, u32, u32)> = active
        .iter()
        .map(|&i| match states[i].digits() {
            Some((known, prefix)) => {
                let (width, shift) = digit(known);
                (known, prefix, width, shift)
            }
            None => (KEY_BITS, 0, 0, 0),
        })
        .collect();
    let mut totals = vec![Histogram::new(); active.len()];
    pass(
        tensor,
        active,
        run,
        || vec![Histogram::new(); active.len()],
        |hists, j, _, key| {
            let (known, prefix, width, shift) = layout[j];
            if known > 0 && key >> (KEY_BITS - known) != prefix {
                return;
            }
            let bucket = ((key >> shift) & ((1 << width) - 1)) as usize;
            let h = &mut hists[j];
            h.zeros += u64::from(key == 0);
            h.count[bucket] += 1;
            h.min[bucket] = h.min[bucket].min(key);
            h.max[bucket] = h.max[bucket].max(key);
        },
        |_, hists: Vec<Histogram>| {
            for (total, h) in totals.iter_mut().zip(&hists) {
                total.add(h);
            }
        },
    )?;
    Ok(totals)
}

/// The index of the `need`-th entry equal to the threshold, for each input in
/// `ties`.
fn tie_pass(
    tensor: Tensor,
    states: &[State],
    ties: &[usize],
    run: &RunOptions,
) -> Result<Vec<u64>> {
    let wanted: Vec<(u64, u64)> = ties
        .iter()
        .map(|&i| match states[i] {
            State::Ties { key, need } => (key, need),
            _ => (u64::MAX, 0),
        })
        .collect();
    let mut seen = vec![0u64; ties.len()];
    let mut last = vec![u64::MAX; ties.len()];
    pass(
        tensor,
        ties,
        run,
        || vec![Vec::<u64>::new(); ties.len()],
        |positions, j, index, key| {
            if key == wanted[j].0 {
                positions[j].push(index);
            }
        },
        |_, positions: Vec<Vec<u64>>| {
            for (j, found) in positions.iter().enumerate() {
                let need = wanted[j].1;
                if seen[j] < need && seen[j] + found.len() as u64 >= need {
                    last[j] = found[(need - seen[j] - 1) as usize];
                }
                seen[j] += found.len() as u64;
            }
        },
    )?;
    Ok(last)
}

/// SCE's weights' statistic: for each input, `Σ δ²` over the entries that
/// `keep` selects by the variance of all the inputs' task vectors (every entry
/// for [`Keep::All`]). Sums run in element order within a chunk and chunk by
/// chunk in order, so the result does not depend on the threads.
pub(crate) fn selected_squares(
    base: Source,
    inputs: &[Source],
    keep: Keep,
    numel: usize,
    run: &RunOptions,
) -> Result<Vec<f64>> {
    let k = inputs.len();
    let chunks = chunks(numel, run);
    let reads = |c: &Range<usize>| {
        let (start, len) = (c.start, c.len());
        std::iter::once(base.read(0, start, len))
            .chain(inputs.iter().enumerate().map(move |(j, s)| s.read(j + 1, start, len)))
    };
    let mut totals = vec![0.0; k];
    let watched: Vec<&Checkpoint> =
        std::iter::once(base.checkpoint).chain(inputs.iter().map(|s| s.checkpoint)).collect();
    stream::run(
        run.threads,
        chunks.len(),
        run.cancel,
        &watched,
        || SquareTiles {
            base: vec![0.0; TILE],
            deltas: vec![vec![0.0; TILE]; k],
            var: vec![0.0; TILE],
            flags: vec![true; TILE],
        },
        |c, tiles| {
            let chunk = chunks[c].clone();
            let mut sums = vec![0.0; k];
            for start in (chunk.start..chunk.end).step_by(TILE) {
                let n = TILE.min(chunk.end - start);
                let bytes = base.bytes(start, n);
                let sources = inputs.iter().map(|s| (s.dtype, s.bytes(start, n)));
                let inputs: Vec<(FloatDtype, std::borrow::Cow<[u8]>)> = sources.collect();
                let at = start as u64;
                squares_tile(base.dtype, &bytes, n, &inputs, tiles, keep, at, &mut sums);
            }
            if let Some(progress) = run.progress {
                progress(((k + 1) * chunk.len() * base.dtype.size()) as u64);
            }
            Ok(sums)
        },
        |_, sums: Vec<f64>| {
            for (total, s) in totals.iter_mut().zip(sums) {
                *total += s;
            }
        },
        |range| stream::release(k + 1, chunks[range].iter().flat_map(reads)),
    )?;
    Ok(totals)
}

/// A worker's tiles in [`selected_squares`].
struct SquareTiles {
    base: Vec<f64>,
    deltas: Vec<Vec<f64>>,
    var: Vec<f64>,
    flags: Vec<bool>,
}

/// Adds to `sums[i]` the squares of input `i`'s task-vector entries of one
/// tile that `keep` selects by their variance (element by element in order,
/// adding +0 for those not selected, which leaves each sum's bits as if they
/// were skipped: the squares are never negative). Compiled for AVX-512, AVX2
/// and SSE4.2, chosen at run time.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
    "x86_64+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
    "x86_64+sse4.2+popcnt",
))]
#[allow(clippy::too_many_arguments)]
fn squares_tile(
    base_dtype: FloatDtype,
    base_bytes: &[u8],
    n: usize,
    inputs: &[(FloatDtype, std::borrow::Cow<[u8]>)],
    tiles: &mut SquareTiles,
    keep: Keep,
    at: u64,
    sums: &mut [f64],
) {
    let b = &mut tiles.base[..n];
    widen_into(base_dtype, base_bytes, b);
    for (d, (dtype, bytes)) in tiles.deltas.iter_mut().zip(inputs) {
        widen_into(*dtype, bytes, &mut d[..n]);
        for (x, &b) in d[..n].iter_mut().zip(&*b) {
            *x -= b;
        }
    }
    let flags = &mut tiles.flags[..n];
    if keep == Keep::All {
        flags.fill(true);
    } else {
        variance_into(&tiles.deltas, n, &mut tiles.var[..n]);
        keep_flags(keep, &tiles.var[..n], at, flags);
    }
    for (sum, d) in sums.iter_mut().zip(&tiles.deltas) {
        for (&x, &f) in d[..n].iter().zip(&*flags) {
            *sum += if f { x * x } else { 0.0 };
        }
    }
}
