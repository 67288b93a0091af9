//! Running a [`Plan`]: output files created at their final size, then every chunk of
//! every tensor produced by the kernel and written at its final offset, by a fixed
//! number of worker threads.
//!
//! Workers take chunks in output order from a shared counter, so the ingredients are
//! read front to back as one stream (good for readahead) however many threads run.
//! Each chunk's bytes depend only on the inputs and weights, never on which thread
//! computed it, so the output is byte-identical at any thread count.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::checkpoint::{Checkpoint, TensorEntry};
use crate::error::{Error, Result};
use crate::kernel::{Accumulator, Input};
use crate::plan::{Plan, PlannedTensor, Produce};

/// Default chunk length in elements: 64 Ki elements keeps a worker's buffers
/// (f64 accumulator, f32 scratch, output bytes) around 1 MiB, inside L2.
pub const DEFAULT_CHUNK_ELEMENTS: usize = 64 * 1024;

/// How to run a plan: threads, chunking, progress and cancellation.
#[derive(Clone, Copy)]
pub struct RunOptions<'a> {
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
    /// Elements per chunk (bytes ×4 for copied tensors).
    pub chunk_elements: usize,
    /// Called after each chunk with the number of output bytes it wrote.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// When set to true, workers stop at the next chunk and the run fails with
    /// [`Error::Cancelled`].
    pub cancel: Option<&'a AtomicBool>,
}

impl Default for RunOptions<'_> {
    fn default() -> Self {
        RunOptions {
            threads: 0,
            chunk_elements: DEFAULT_CHUNK_ELEMENTS,
            progress: None,
            cancel: None,
        }
    }
}

impl std::fmt::Debug for RunOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("threads", &self.threads)
            .field("chunk_elements", &self.chunk_elements)
            .finish_non_exhaustive()
    }
}

/// A piece of one output tensor: elements `start..start + len` of an averaged
/// tensor, or bytes `start..start + len` of a copied one.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    tensor: usize,
    start: usize,
    len: usize,
}

/// Writes the plan's shard files into `dir` (which must exist) and returns their
/// paths. Syncing them to disk is the caller's choice (see [`crate::output`]).
pub fn write_shards(
    plan: &Plan,
    ingredients: &[Checkpoint],
    dir: &Path,
    run: &RunOptions,
) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::with_capacity(plan.shards.len());
    let mut files = Vec::with_capacity(plan.shards.len());
    for shard in &plan.shards {
        let path = dir.join(&shard.file_name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(Error::io("create", &path))?;
        file.set_len(shard.size).map_err(Error::io("size", &path))?;
        file.write_all_at(&shard.header, 0).map_err(Error::io("write", &path))?;
        paths.push(path);
        files.push(file);
    }

    let chunks = chunk_plan(plan, run.chunk_elements.max(1));
    let threads = if run.threads == 0 { rayon::current_num_threads() } else { run.threads };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    // The error of the earliest failing chunk, so the report is the same at any
    // thread count.
    let first_error: Mutex<Option<(usize, Error)>> = Mutex::new(None);
    let out = Output { plan, ingredients, files: &files, paths: &paths };
    let finished = Mutex::new(Finished { done: vec![false; chunks.len()], prefix: 0, released: 0 });
    pool.scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|_| {
                let mut acc = Accumulator::default();
                let mut bytes = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= chunks.len() || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let cancelled = run.cancel.is_some_and(|c| c.load(Ordering::Relaxed));
                    let result = if cancelled {
                        Err(Error::Cancelled)
                    } else {
                        out.produce(chunks[i], &mut acc, &mut bytes)
                    };
                    match result {
                        Ok(written) => {
                            if let Some(progress) = run.progress {
                                progress(written);
                            }
                            let done = finished.lock().unwrap_or_else(|p| p.into_inner()).finish(i);
                            if let Some(range) = done {
                                out.release(range, &chunks);
                            }
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                            if slot.as_ref().is_none_or(|(j, _)| i < *j) {
                                *slot = Some((i, e));
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some((_, e)) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(paths)
}

/// Chunks whose input pages are unmapped together: enough to make the system call
/// (and the TLB shootdown it costs every thread) rare, few enough that the mapped
/// inputs stay at a few MiB.
const RELEASE_BATCH: usize = 32;

/// Which chunks are done, and up to where their input pages have been released.
struct Finished {
    done: Vec<bool>,
    /// Every chunk before this one is done.
    prefix: usize,
    /// Input pages of every chunk before this one have been released.
    released: usize,
}

impl Finished {
    /// Marks chunk `i` done; returns the chunks whose pages are now due for release.
    fn finish(&mut self, i: usize) -> Option<std::ops::Range<usize>> {
        self.done[i] = true;
        while self.done.get(self.prefix).copied().unwrap_or(false) {
            self.prefix += 1;
        }
        let due = self.prefix - self.released >= RELEASE_BATCH || self.prefix == self.done.len();
        (due && self.prefix > self.released).then(|| {
            let range = self.released..self.prefix;
            self.released = self.prefix;
            range
        })
    }
}

/// Cuts every tensor into chunks, in output order (shard by shard, offset by offset).
fn chunk_plan(plan: &Plan, chunk_elements: usize) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for (tensor, t) in plan.tensors.iter().enumerate() {
        let (total, step) = match t.produce {
            Produce::Average { .. } => (t.numel, chunk_elements),
            // Copied tensors are cut by bytes; their element may be smaller than one.
            Produce::Copy { .. } => (t.len as usize, chunk_elements.saturating_mul(4)),
        };
        let mut start = 0;
        while start < total {
            let len = step.min(total - start);
            chunks.push(Chunk { tensor, start, len });
            start += len;
        }
    }
    chunks
}

/// What a worker needs to produce any chunk.
struct Output<'a> {
    plan: &'a Plan,
    ingredients: &'a [Checkpoint],
    files: &'a [File],
    paths: &'a [PathBuf],
}

impl Output<'_> {
    /// Computes one chunk, writes it at its final offset and returns the number of
    /// bytes written.
    fn produce(&self, chunk: Chunk, acc: &mut Accumulator, bytes: &mut Vec<u8>) -> Result<u64> {
        let t = &self.plan.tensors[chunk.tensor];
        match &t.produce {
            Produce::Average { dtype, inputs, weights } => {
                let mixed: Vec<Input> = self
                    .reads(chunk)
                    .map(|(i, ck, entry, start, len)| Input {
                        dtype: inputs[i],
                        bytes: ck.bytes(entry, start, len),
                        weight: weights[i],
                    })
                    .collect();
                acc.mix(chunk.len, &mixed, *dtype, bytes);
                self.write(t, chunk.start * dtype.size(), bytes)
            }
            Produce::Copy { .. } => {
                let mut reads = self.reads(chunk);
                let Some((_, first_ck, first, start, len)) = reads.next() else { return Ok(0) };
                let data = first_ck.bytes(first, start, len);
                for (_, ck, entry, start, len) in reads {
                    if ck.bytes(entry, start, len) != data {
                        return Err(Error::NonFloatMismatch {
                            tensor: t.name.clone(),
                            dtype: format!("{:?}", t.dtype),
                            first: first_ck.path().to_path_buf(),
                            other: ck.path().to_path_buf(),
                        });
                    }
                }
                self.write(t, chunk.start, data)
            }
        }
    }

    /// The input byte ranges a chunk reads: `(ingredient, checkpoint, tensor, byte
    /// offset in the tensor, byte length)` for every ingredient with a non-zero
    /// weight (averaged tensors), or for the first ingredient and, when verifying,
    /// the others (copied tensors).
    fn reads(
        &self,
        chunk: Chunk,
    ) -> impl Iterator<Item = (usize, &Checkpoint, &TensorEntry, usize, usize)> {
        let t = &self.plan.tensors[chunk.tensor];
        self.ingredients.iter().zip(&t.sources).enumerate().filter_map(move |(i, (ck, &src))| {
            let entry = &ck.tensors()[src];
            match &t.produce {
                Produce::Average { inputs, weights, .. } => (weights[i] != 0.0).then(|| {
                    let size = inputs[i].size();
                    (i, ck, entry, chunk.start * size, chunk.len * size)
                }),
                Produce::Copy { verify } => {
                    (i == 0 || *verify).then_some((i, ck, entry, chunk.start, chunk.len))
                }
            }
        })
    }

    /// Unmaps the input pages of chunks `range`, merging ranges that touch so that
    /// each contiguous stretch of a shard costs one system call.
    fn release(&self, range: std::ops::Range<usize>, chunks: &[Chunk]) {
        let mut pending: Vec<Option<(usize, usize, usize)>> = vec![None; self.ingredients.len()];
        for &chunk in &chunks[range] {
            for (i, ck, entry, start, len) in self.reads(chunk) {
                let (from, to) = (entry.offset + start, entry.offset + start + len);
                match &mut pending[i] {
                    Some((shard, _, end)) if *shard == entry.shard && *end == from => *end = to,
                    slot => {
                        if let Some((shard, a, b)) = slot.replace((entry.shard, from, to)) {
                            ck.release(shard, a, b);
                        }
                    }
                }
            }
        }
        for (ck, slot) in self.ingredients.iter().zip(pending) {
            if let Some((shard, a, b)) = slot {
                ck.release(shard, a, b);
            }
        }
    }

    fn write(&self, t: &PlannedTensor, byte_start: usize, data: &[u8]) -> Result<u64> {
        let path = &self.paths[t.shard];
        self.files[t.shard]
            .write_all_at(data, t.offset + byte_start as u64)
            .map_err(Error::io("write", path))?;
        Ok(data.len() as u64)
    }
}
