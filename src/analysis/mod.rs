//! Measurements over checkpoints that build nothing: the Gram pass and the angles
//! between fine-tuned deltas, the shared-init check, non-finite value counts, and
//! the dot products of a loss's gradient with the ingredients (learned soups by
//! gradient).
//!
//! Each is a streaming pass over the engine's skeleton (or a few sampled windows),
//! so it runs in bounded memory at any model size. Analysis stands on the engine
//! and nothing above it; merge methods use its Gram pass (SLERP, Model Stock).

pub mod angles;
mod chunks;
pub mod gradient;
pub mod gram;
pub mod init_check;
pub mod values;
