//! # modelsoup
//!
//! Model soups: average the weights of several fine-tuned checkpoints of one
//! pretrained model into a single model (Wortsman et al., 2022), streaming the
//! weights from memory-mapped safetensors (or PyTorch `.bin`, see [`torch`]) files
//! so that no model is ever held in memory whole.
//!
//! The engine is three steps, each its own module:
//!
//! 1. [`Checkpoint::open`] maps every shard of an ingredient and validates its
//!    headers (and index) before any tensor data is touched.
//! 2. [`Plan::new`] checks that the ingredients agree, resolves each tensor's
//!    weights, and lays out the output files (offsets and header bytes) from the
//!    headers alone.
//! 3. [`write_soup`] creates the output files at their final size in a staging
//!    directory, computes every chunk `Σ wᵢ·xᵢ` in parallel, writes it at its final
//!    offset, and renames the finished directory into place.
//!
//! The other merge methods (task arithmetic, TIES, DARE, SLERP, Model Stock) and
//! recipe files go through [`method::prepare`], which turns a [`Recipe`] into a
//! plan for the same engine, running any statistics pass the method needs first.
//!
//! Before souping, [`analysis::angles::angles`] measures in one streaming pass the angles
//! between the ingredients' deltas from their base (Wortsman et al.'s φ), per
//! layer group if asked.
//!
//! ```no_run
//! use modelsoup::{Checkpoint, Destination, Plan, PlanOptions, RunOptions, Weights, write_soup};
//!
//! let ingredients = ["run-a/", "run-b/", "run-c/"]
//!     .iter()
//!     .map(Checkpoint::open)
//!     .collect::<Result<Vec<_>, _>>()?;
//! let options = PlanOptions {
//!     mixing: Weights::uniform(ingredients.len()).into(),
//!     dtype: Default::default(),
//!     max_shard_size: modelsoup::DEFAULT_MAX_SHARD_SIZE,
//!     non_float: Default::default(),
//!     metadata: Default::default(),
//! };
//! let plan = Plan::new(&ingredients, &options)?;
//! let dest = Destination { path: "soup/".as_ref(), force: false, support_files_from: None, durable: true };
//! let report = write_soup(&ingredients, &plan, &dest, &RunOptions::default())?;
//! println!("{} tensors in {:.1} s", report.tensors, report.seconds);
//! # Ok::<(), modelsoup::Error>(())
//! ```

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(target_endian = "big")]
compile_error!("safetensors data is little-endian; modelsoup supports little-endian targets only");

pub mod analysis;
pub mod engine;
pub mod error;
pub mod method;
pub mod recipe;
pub mod search;
pub mod torch;

pub use engine::checkpoint::{Checkpoint, TensorEntry};
pub use engine::dtype::FloatDtype;
pub use engine::execute::{RunOptions, DEFAULT_CHUNK_ELEMENTS};
pub use engine::merge::{write_soup, Destination, MergeReport};
pub use engine::plan::{
    Mixing, NonFloatPolicy, OutputDtype, Plan, PlanOptions, Weights, DEFAULT_MAX_SHARD_SIZE,
};
pub use error::{Difference, Error, Result};
pub use recipe::Recipe;
