//! Counting NaN and infinite values per tensor (`soup inspect --check-values`): a
//! streaming pass over every float tensor of one checkpoint, chunked and threaded
//! like a merge, so a model of any size is checked in bounded memory.

use serde::Serialize;

use crate::engine::checkpoint::Checkpoint;
use crate::engine::dtype::FloatDtype;
use crate::engine::execute::RunOptions;
use crate::engine::kernel::widen_into;
use crate::engine::stream::{self, Read};
use crate::error::Result;

/// Elements widened at a time.
const TILE: usize = 2048;

/// Non-finite values found in one tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NonFinite {
    /// Position of the tensor in [`Checkpoint::tensors`].
    pub tensor: usize,
    /// NaN values.
    pub nan: u64,
    /// Infinite values (either sign).
    pub inf: u64,
}

#[derive(Clone, Copy)]
struct Chunk {
    tensor: usize,
    dtype: FloatDtype,
    start: usize,
    len: usize,
}

/// Reads every float tensor of `checkpoint` once and returns the tensors holding
/// NaN or infinite values, in tensor order. `run.progress` is told the bytes read
/// per chunk.
pub fn count_non_finite(checkpoint: &Checkpoint, run: &RunOptions) -> Result<Vec<NonFinite>> {
    let step = run.chunk_elements.max(1);
    let mut chunks = Vec::new();
    for (tensor, entry) in checkpoint.tensors().iter().enumerate() {
        let Some(dtype) = FloatDtype::from_safetensors(entry.dtype) else { continue };
        let numel = entry.numel();
        for start in (0..numel).step_by(step) {
            chunks.push(Chunk { tensor, dtype, start, len: step.min(numel - start) });
        }
    }
    let read = |c: Chunk| {
        let entry = &checkpoint.tensors()[c.tensor];
        Read::of(0, checkpoint, entry, c.start * c.dtype.size(), c.len * c.dtype.size())
    };
    let mut found: Vec<NonFinite> = Vec::new();
    stream::run(
        run.threads,
        chunks.len(),
        run.cancel,
        || vec![0.0; TILE],
        |i, tile| {
            let c = chunks[i];
            let size = c.dtype.size();
            let bytes =
                checkpoint.bytes(&checkpoint.tensors()[c.tensor], c.start * size, c.len * size);
            let (mut nan, mut inf) = (0, 0);
            for part in bytes.chunks(TILE * size) {
                let values = &mut tile[..part.len() / size];
                widen_into(c.dtype, part, values);
                nan += values.iter().filter(|x| x.is_nan()).count() as u64;
                inf += values.iter().filter(|x| x.is_infinite()).count() as u64;
            }
            if let Some(progress) = run.progress {
                progress(bytes.len() as u64);
            }
            Ok((nan, inf))
        },
        |i, (nan, inf)| {
            if nan + inf == 0 {
                return;
            }
            let tensor = chunks[i].tensor;
            match found.last_mut() {
                Some(last) if last.tensor == tensor => {
                    last.nan += nan;
                    last.inf += inf;
                }
                _ => found.push(NonFinite { tensor, nan, inf }),
            }
        },
        |range| stream::release(1, chunks[range].iter().map(|&c| read(c))),
    )?;
    Ok(found)
}
