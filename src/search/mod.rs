//! Soup searches: greedy, pruned and learned soups scored by the user's evaluator.
//!
//! The search layer stands on the engine, the methods and the recipes; nothing
//! below it imports it. It owns what only searches need: running the user's
//! evaluator command ([`evaluate`]), the resumable journal ([`journal`]), and its
//! own [`Error`], which wraps the engine's.

pub mod bench;
pub mod candidate;
pub mod cmaes;
pub mod descent;
mod error;
pub mod evaluate;
pub mod groups;
pub mod journal;
pub mod learned;
pub mod process;
pub mod report;
pub mod score_file;
pub mod scorer;
pub mod sequential;
pub mod server;
pub mod slots;
pub mod suite;
pub mod table;

pub use error::{Error, Result};
