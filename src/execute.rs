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

use crate::checkpoint::Checkpoint;
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
/// paths. Files are fully written and synced to disk on success.
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
    for (file, path) in files.iter().zip(&paths) {
        file.sync_all().map_err(Error::io("sync", path))?;
    }
    Ok(paths)
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
                let sources = self.ingredients.iter().zip(&t.sources).zip(inputs).zip(weights);
                let mut mixed = Vec::with_capacity(weights.len());
                let mut read = Vec::with_capacity(weights.len());
                for (((ck, &src), &input), &weight) in sources {
                    if weight == 0.0 {
                        continue;
                    }
                    let entry = &ck.tensors()[src];
                    let (start, len) = (chunk.start * input.size(), chunk.len * input.size());
                    mixed.push(Input { dtype: input, bytes: ck.bytes(entry, start, len), weight });
                    read.push((ck, entry, start, len));
                }
                acc.mix(chunk.len, &mixed, *dtype, bytes);
                for (ck, entry, start, len) in read {
                    ck.release(entry, start, len);
                }
                self.write(t, chunk.start * dtype.size(), bytes)
            }
            Produce::Copy { verify } => {
                let (first_ck, &first_src) = (&self.ingredients[0], &t.sources[0]);
                let first_entry = &first_ck.tensors()[first_src];
                let data = first_ck.bytes(first_entry, chunk.start, chunk.len);
                if *verify {
                    for (ck, &src) in self.ingredients.iter().zip(&t.sources).skip(1) {
                        let entry = &ck.tensors()[src];
                        if ck.bytes(entry, chunk.start, chunk.len) != data {
                            return Err(Error::NonFloatMismatch {
                                tensor: t.name.clone(),
                                dtype: format!("{:?}", t.dtype),
                                first: first_ck.path().to_path_buf(),
                                other: ck.path().to_path_buf(),
                            });
                        }
                        ck.release(entry, chunk.start, chunk.len);
                    }
                }
                let written = self.write(t, chunk.start, data);
                first_ck.release(first_entry, chunk.start, chunk.len);
                written
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
