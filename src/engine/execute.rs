//! Running a [`Plan`]: output files created at their final size, then every chunk of
//! every tensor produced by the kernel and written at its final offset, by a fixed
//! number of worker threads.
//!
//! Workers (`stream`) take chunks in output order from a shared counter, so
//! the ingredients are read front to back as one stream (good for readahead) however
//! many threads run.
//! Each chunk's bytes depend only on the inputs and weights, never on which thread
//! computed it, so the output is byte-identical at any thread count.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::engine::checkpoint::{Checkpoint, TensorEntry};
use crate::engine::dtype::FloatDtype;
use crate::engine::kernel::{Accumulator, Input};
use crate::engine::plan::{Plan, PlannedTensor, Produce};
use crate::engine::stream;
use crate::engine::task_vectors::{self, Scratch};
use crate::engine::writeback::Writeback;
use crate::error::{Error, Result};

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

/// What [`write_shards`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The shard files, in plan order.
    pub files: Vec<PathBuf>,
    /// Output values that are NaN or infinite.
    pub non_finite: u64,
    /// The first tensor (an index into [`Plan::tensors`], in output order) holding
    /// one.
    pub first_non_finite: Option<usize>,
}

/// Writes the plan's shard files into `dir` (which must exist). Syncing them to
/// disk is the caller's choice (see [`crate::engine::output`]); with `writeback`,
/// writing them to disk starts behind the workers ([`crate::engine::writeback`]),
/// so that a final sync has little left.
pub fn write_shards(
    plan: &Plan,
    ingredients: &[Checkpoint],
    dir: &Path,
    run: &RunOptions,
    writeback: bool,
) -> Result<Written> {
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
    let out = Output { plan, ingredients, files: &files, paths: &paths };
    let watched: Vec<&Checkpoint> = ingredients.iter().collect();
    let (mut total, mut first) = (0u64, None);
    let headers: Vec<u64> = plan.shards.iter().map(|s| s.header.len() as u64).collect();
    let mut behind = writeback.then(|| Writeback::new(&files, &headers));
    stream::run(
        run.threads,
        chunks.len(),
        run.cancel,
        &watched,
        || (Accumulator::default(), Scratch::default(), Vec::new()),
        |i, (acc, scratch, bytes)| {
            let (written, non_finite) = out.produce(chunks[i], acc, scratch, bytes)?;
            if let Some(progress) = run.progress {
                progress(written);
            }
            Ok(non_finite)
        },
        |i, non_finite| {
            if non_finite > 0 {
                total += non_finite as u64;
                first.get_or_insert(chunks[i].tensor);
            }
            if let Some(behind) = behind.as_mut() {
                let (shard, end) = out.end_of(chunks[i]);
                behind.finished(shard, end);
            }
        },
        |range| out.release(range, &chunks),
    )?;
    Ok(Written { files: paths, non_finite: total, first_non_finite: first })
}

/// Cuts every tensor into chunks, in output order (shard by shard, offset by offset).
fn chunk_plan(plan: &Plan, chunk_elements: usize) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for (tensor, t) in plan.tensors.iter().enumerate() {
        let (total, step) = match &t.produce {
            Produce::Average { .. } => (t.numel, chunk_elements),
            Produce::TaskVectors { params, .. } => {
                // Whole rows when the reducer works row by row (DELLA).
                let rows = params.chunk_multiple();
                (t.numel, (chunk_elements / rows).max(1) * rows)
            }
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
    /// bytes written and of non-finite values among them.
    fn produce(
        &self,
        chunk: Chunk,
        acc: &mut Accumulator,
        scratch: &mut Scratch,
        bytes: &mut Vec<u8>,
    ) -> Result<(u64, usize)> {
        let t = &self.plan.tensors[chunk.tensor];
        match &t.produce {
            Produce::Average { dtype, inputs, weights, divisor } => {
                let read: Vec<(usize, Cow<[u8]>)> = self
                    .reads(chunk)
                    .map(|(i, ck, entry, start, len)| (i, ck.bytes(entry, start, len)))
                    .collect();
                let mixed: Vec<Input> = read
                    .iter()
                    .map(|(i, bytes)| Input { dtype: inputs[*i], bytes, weight: weights[*i] })
                    .collect();
                let non_finite = acc.mix(chunk.len, &mixed, *divisor, *dtype, bytes);
                Ok((self.write(t, chunk.start * dtype.size(), bytes)?, non_finite))
            }
            Produce::TaskVectors { dtype, inputs, base, params } => {
                let mut owned: Vec<Option<Cow<[u8]>>> = vec![None; inputs.len()];
                for (i, ck, entry, start, len) in self.reads(chunk) {
                    owned[i] = Some(ck.bytes(entry, start, len));
                }
                let read: Vec<Option<(FloatDtype, &[u8])>> = owned
                    .iter()
                    .zip(inputs)
                    .map(|(bytes, &dtype)| bytes.as_deref().map(|b| (dtype, b)))
                    .collect();
                let first = chunk.start as u64;
                let non_finite = task_vectors::combine(
                    (first, chunk.len),
                    &read,
                    *base,
                    params,
                    *dtype,
                    scratch,
                    bytes,
                );
                Ok((self.write(t, chunk.start * dtype.size(), bytes)?, non_finite))
            }
            Produce::Copy { .. } => {
                let mut reads = self.reads(chunk);
                let Some((_, first_ck, first, start, len)) = reads.next() else {
                    return Ok((0, 0));
                };
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
                Ok((self.write(t, chunk.start, &data)?, 0))
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
        let drawn = self.ingredients.get(t.first_input..).unwrap_or_default();
        drawn.iter().zip(&t.sources).enumerate().filter_map(move |(i, (ck, &src))| {
            let entry = &ck.tensors()[src];
            match &t.produce {
                Produce::Average { inputs, weights, .. } => (weights[i] != 0.0).then(|| {
                    let size = inputs[i].size();
                    (i, ck, entry, chunk.start * size, chunk.len * size)
                }),
                Produce::TaskVectors { inputs, base, params, .. } => {
                    params.reads(i, *base).then(|| {
                        let size = inputs[i].size();
                        (i, ck, entry, chunk.start * size, chunk.len * size)
                    })
                }
                Produce::Copy { verify } => {
                    (i == 0 || *verify).then_some((i, ck, entry, chunk.start, chunk.len))
                }
            }
        })
    }

    /// Unmaps the input pages of chunks `range`.
    fn release(&self, range: std::ops::Range<usize>, chunks: &[Chunk]) {
        let reads = chunks[range].iter().flat_map(|&chunk| {
            let first = self.plan.tensors[chunk.tensor].first_input;
            self.reads(chunk).map(move |(input, checkpoint, entry, start, len)| {
                stream::Read::of(first + input, checkpoint, entry, start, len)
            })
        });
        stream::release(self.ingredients.len(), reads);
    }

    /// The shard a chunk is written to and the offset just past it.
    fn end_of(&self, chunk: Chunk) -> (usize, u64) {
        let t = &self.plan.tensors[chunk.tensor];
        let size = match &t.produce {
            Produce::Average { dtype, .. } | Produce::TaskVectors { dtype, .. } => dtype.size(),
            Produce::Copy { .. } => 1,
        };
        (t.shard, t.offset + ((chunk.start + chunk.len) * size) as u64)
    }

    fn write(&self, t: &PlannedTensor, byte_start: usize, data: &[u8]) -> Result<u64> {
        let path = &self.paths[t.shard];
        self.files[t.shard]
            .write_all_at(data, t.offset + byte_start as u64)
            .map_err(Error::io("write", path))?;
        Ok(data.len() as u64)
    }
}
