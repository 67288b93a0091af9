//! Measurements over checkpoints that build nothing: the Gram pass and the angles
//! between fine-tuned deltas, the shared-init check, and non-finite value counts.
//!
//! Each is a streaming pass over the engine's skeleton (or a few sampled windows),
//! so it runs in bounded memory at any model size. Analysis stands on the engine
//! and nothing above it; merge methods use its Gram pass (SLERP, Model Stock).

pub mod angles;
pub mod gram;
pub mod init_check;
pub mod values;
