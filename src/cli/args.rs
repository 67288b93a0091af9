//! The command line, declared with clap. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use modelsoup::FloatDtype;

/// Build model soups: average fine-tuned checkpoints of one pretrained model into a
/// single model that is as good as or better than the best of them.
///
/// Weights are streamed from memory-mapped safetensors files, so soups of
/// multi-gigabyte models need no more than a few megabytes of RAM per thread.
#[derive(Debug, Parser)]
#[command(name = "soup", version, propagate_version = true, max_term_width = 100)]
#[command(after_help = "Exit status: 0 success, 2 error (message on stderr), 130 interrupted.")]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Average checkpoints into one (uniform or weighted soup).
    #[command(after_long_help = MERGE_EXAMPLES)]
    Merge(MergeArgs),
}

const MERGE_EXAMPLES: &str = "\
Examples:
  soup merge run-a/ run-b/ run-c.safetensors -o soup/          uniform soup
  soup merge a/ b/ c/ -o soup/ --weights 0.5,0.3,0.2            weighted (normalised to sum 1)
  soup merge a/ b/ -o soup/ --dtype bf16 --max-shard-size 2GB   convert and re-shard
  soup merge a/ b/ -o soup/ --json                              summary as JSON on stdout

An ingredient is a .safetensors file or a Hugging Face checkpoint directory
(model.safetensors, or shards listed in model.safetensors.index.json). Ingredients
may be sharded differently and mix F32, F16 and BF16. Float tensors are averaged
in f64 and rounded once (to nearest even) to the output dtype; integer and bool
tensors must be identical and are copied. The output directory holds
model.safetensors (or shards and an index), the recipe in each file's metadata,
and the first ingredient's config and tokenizer files. It is written beside the
destination and renamed into place only when complete.";

/// Arguments of `soup merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Checkpoints to average: .safetensors files or checkpoint directories.
    #[arg(required = true, value_name = "INGREDIENT")]
    pub ingredients: Vec<PathBuf>,

    /// Output directory (must not exist or be empty, unless --force).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,

    /// One non-negative weight per ingredient, comma-separated; normalised to sum
    /// to 1. Default: equal weights (the uniform soup).
    #[arg(
        short,
        long,
        value_name = "W,W,...",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    pub weights: Option<Vec<f64>>,

    /// Output dtype of averaged tensors [default: each tensor's dtype in the first
    /// ingredient].
    #[arg(long, value_name = "DTYPE", value_parser = parse_dtype)]
    pub dtype: Option<FloatDtype>,

    /// Split the output into shards of at most this size (e.g. 2GB, 500MB, 4GiB).
    #[arg(long, value_name = "SIZE", default_value = "5GB", value_parser = super::size::parse_size)]
    pub max_shard_size: u64,

    /// Worker threads [default: one per core].
    #[arg(short = 'j', long, value_name = "N")]
    pub threads: Option<usize>,

    /// Replace the output directory if it exists and is not empty.
    #[arg(short, long)]
    pub force: bool,

    /// Copy config.json, tokenizer and other non-weight files from this directory
    /// instead of the first ingredient's.
    #[arg(long, value_name = "DIR")]
    pub copy_files_from: Option<PathBuf>,

    /// What to do when a tensor that is not averaged (integers, bool) differs
    /// between ingredients.
    #[arg(long, value_enum, default_value_t = NonFloat::Error, value_name = "POLICY")]
    pub non_float: NonFloat,

    /// Print a JSON summary on stdout instead of the human one on stderr.
    #[arg(long)]
    pub json: bool,

    /// No progress bar and no summary line (errors are still printed).
    #[arg(short, long)]
    pub quiet: bool,

    /// Elements per work chunk (tuning; the default suits most CPUs).
    #[arg(long, value_name = "N", default_value_t = modelsoup::DEFAULT_CHUNK_ELEMENTS, hide = true)]
    pub chunk_elements: usize,
}

/// Handling of non-averaged tensors that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NonFloat {
    /// Stop with an error naming the tensor and the ingredients.
    Error,
    /// Keep the first ingredient's copy.
    First,
}

fn parse_dtype(s: &str) -> Result<FloatDtype, String> {
    s.parse().map_err(|e: modelsoup::dtype::UnknownDtype| e.to_string())
}
