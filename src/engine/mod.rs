//! The streaming engine: open → plan → execute → commit.
//!
//! Everything that touches a model's bytes lives here: opening and validating
//! checkpoints ([`checkpoint`], over the one memory map in `mapped`), planning the
//! output from headers alone ([`plan`]), the chunked parallel skeleton every pass
//! over the weights shares (`stream`), the two per-chunk reducers — the linear
//! [`kernel`] and the [`task_vectors`] reducer with its seeded [`dropout`] masks —
//! the writer ([`execute`]), and the atomic commit ([`output`], [`merge`]) under a
//! [`lock`] per destination.
//!
//! The engine knows nothing of merge methods, recipes or searches: it takes a plan
//! whose per-tensor weights or task-vector parameters are already resolved. It
//! imports only [`crate::torch`] (a reader below it) and [`crate::error`]; a test
//! (`tests/layers.rs`) keeps it that way.

pub mod adapter;
pub mod checkpoint;
pub mod dropout;
pub mod dtype;
pub mod execute;
pub mod hub;
pub mod kernel;
pub mod layers;
pub mod lock;
pub(crate) mod mapped;
pub mod merge;
pub mod output;
pub mod plan;
pub mod rename;
pub(crate) mod storage_check;
pub(crate) mod stream;
pub(crate) mod strided_pages;
pub mod task_vectors;
pub mod tied;
pub mod writeback;
