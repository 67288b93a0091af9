//! `soup convert`: one checkpoint rewritten as safetensors (from PyTorch `.bin`,
//! or re-sharded or re-typed), through the normal output path.

use std::sync::atomic::AtomicBool;

use modelsoup::recipe::{Method, Recipe};

use super::args::{ConvertArgs, NonFloat, WriteArgs};
use super::merge::{apply_write_options, ingredient_from, write_recipe, Output, Written};
use super::text::{human_bytes, human_count, plural};
use super::Exit;

/// Runs `soup convert`: the linear "soup" of one ingredient with weight 1, which
/// reproduces every value exactly (or rounds it once, with `--dtype`).
pub fn run(args: &ConvertArgs, interrupted: &AtomicBool) -> anyhow::Result<Exit> {
    if args.base.is_some() && !modelsoup::engine::adapter::is_adapter(&args.input) {
        anyhow::bail!(
            "--base applies to LoRA adapter directories (adapter_config.json), and {} is not one",
            args.input.display()
        );
    }
    let ingredient = ingredient_from(&args.input, &args.read, false, args.base.as_deref())?;
    let mut recipe = Recipe::new(Method::Linear, vec![ingredient]);
    // One input: nothing to check across ingredients, nothing to choose between.
    let write = WriteArgs {
        file: args.file.clone(),
        support_files_from: None,
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
        errln!(
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
