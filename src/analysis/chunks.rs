//! The float tensors a statistics pass reads, cut into chunks: which bytes of
//! which input each chunk reads, and the release of their pages once read. The
//! Gram pass and the gradient pass share it, so both read their inputs alike, on
//! the engine's streaming skeleton (`crate::engine::stream`).

use std::borrow::Cow;
use std::ops::Range;

use crate::engine::checkpoint::Checkpoint;
use crate::engine::dtype::FloatDtype;
use crate::engine::stream::{self, Read};

/// One float tensor of a pass: its name, size and group, and each input's format
/// and index in its [`Checkpoint::tensors`].
pub(crate) struct PassTensor {
    pub(crate) name: String,
    pub(crate) numel: usize,
    pub(crate) group: Option<usize>,
    pub(crate) sources: Vec<(FloatDtype, usize)>,
}

/// Elements `start..start + len` of tensor `tensor`.
#[derive(Clone, Copy)]
pub(crate) struct Chunk {
    pub(crate) tensor: usize,
    pub(crate) start: usize,
    pub(crate) len: usize,
}

/// The inputs, tensors and chunks of one pass.
pub(crate) struct Pass<'a> {
    inputs: Vec<&'a Checkpoint>,
    pub(crate) tensors: Vec<PassTensor>,
    pub(crate) chunks: Vec<Chunk>,
}

impl<'a> Pass<'a> {
    /// `tensors` of `inputs` (each tensor's sources in input order) in chunks of
    /// `chunk_elements`.
    pub(crate) fn new(
        inputs: Vec<&'a Checkpoint>,
        tensors: Vec<PassTensor>,
        chunk_elements: usize,
    ) -> Self {
        let step = chunk_elements.max(1);
        let mut chunks = Vec::new();
        for (tensor, t) in tensors.iter().enumerate() {
            for start in (0..t.numel).step_by(step) {
                chunks.push(Chunk { tensor, start, len: step.min(t.numel - start) });
            }
        }
        Pass { inputs, tensors, chunks }
    }

    /// How many inputs every chunk reads.
    pub(crate) fn inputs(&self) -> usize {
        self.inputs.len()
    }

    /// The inputs, for the stream to watch for changes while they are read.
    pub(crate) fn watched(&self) -> &[&'a Checkpoint] {
        &self.inputs
    }

    /// The bytes of chunk `i` in every input, with their format.
    pub(crate) fn read(&self, i: usize) -> Vec<(FloatDtype, Cow<'a, [u8]>)> {
        let chunk = self.chunks[i];
        let t = &self.tensors[chunk.tensor];
        self.inputs
            .iter()
            .zip(&t.sources)
            .map(|(ck, &(dtype, src))| {
                let entry = &ck.tensors()[src];
                let size = dtype.size();
                (dtype, ck.bytes(entry, chunk.start * size, chunk.len * size))
            })
            .collect()
    }

    /// Drops the input pages the chunks of `range` read.
    pub(crate) fn release(&self, range: Range<usize>) {
        let reads = self.chunks[range].iter().flat_map(|&chunk| {
            let t = &self.tensors[chunk.tensor];
            self.inputs.iter().zip(&t.sources).enumerate().map(move |(input, (ck, &(dtype, i)))| {
                let entry = &ck.tensors()[i];
                Read::of(input, ck, entry, chunk.start * dtype.size(), chunk.len * dtype.size())
            })
        });
        stream::release(self.inputs.len(), reads);
    }
}
