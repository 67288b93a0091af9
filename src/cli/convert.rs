//! `soup convert`: one checkpoint rewritten as safetensors (from PyTorch `.bin`,
//! or re-sharded or re-typed), through the normal output path.

use std::sync::atomic::AtomicBool;

use modelsoup::recipe::{Ingredient, Method, Recipe};

use super::args::{ConvertArgs, NonFloat, WriteArgs};
use super::merge::{apply_write_options, recorded_path, write_recipe, Output, Written};
use super::text::{human_bytes, human_count, plural};
use super::Exit;

/// Runs `soup convert`: the linear "soup" of one ingredient with weight 1, which
/// reproduces every value exactly (or rounds it once, with `--dtype`).
pub fn run(args: &ConvertArgs, interrupted: &AtomicBool) -> anyhow::Result<Exit> {
    let mut recipe =
        Recipe::new(Method::Linear, vec![Ingredient::path(recorded_path(&args.input))]);
    // One input: nothing to check across ingredients, nothing to choose between.
    let write = WriteArgs {
        file: args.file.clone(),
        copy_files_from: None,
        non_float: NonFloat::Error,
        no_init_check: true,
    };
    apply_write_options(&mut recipe, &write);
    let output = Output {
        path: &args.output,
        write: &write,
        json: args.json,
        quiet: args.quiet,
        chunk_elements: modelsoup::DEFAULT_CHUNK_ELEMENTS,
        card: false,
        mergekit_source: None,
        durable: true,
    };
    let Written { report, statistics: _ } = write_recipe(&recipe, &output, interrupted)?;
    if !args.json && !args.quiet {
        eprintln!(
            "converted {} into {}: {}, {} parameters{}, {} written in {:.2} s",
            args.input.display(),
            args.output.display(),
            plural(report.tensors, "tensor"),
            human_count(report.parameters),
            args.file.dtype.map(|d| format!(" as {}", d.name())).unwrap_or_default(),
            human_bytes(report.bytes_written),
            report.seconds,
        );
    }
    Ok(Exit::Success)
}
