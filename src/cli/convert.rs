//! `soup convert`: one checkpoint rewritten as safetensors (from PyTorch `.bin`,
//! or re-sharded or re-typed), through the normal output path.

use std::sync::atomic::AtomicBool;

use modelsoup::recipe::{Ingredient, Method, Recipe};

use super::args::ConvertArgs;
use super::merge::{apply_write_options, write_recipe, Output};
use super::Exit;

/// Runs `soup convert`: the linear "soup" of one ingredient with weight 1, which
/// reproduces every value exactly (or rounds it once, with `--dtype`).
pub fn run(args: &ConvertArgs, interrupted: &AtomicBool) -> anyhow::Result<Exit> {
    let mut recipe =
        Recipe::new(Method::Linear, vec![Ingredient::path(args.input.display().to_string())]);
    apply_write_options(&mut recipe, &args.write);
    let output = Output {
        path: &args.output,
        write: &args.write,
        json: args.json,
        quiet: args.quiet,
        chunk_elements: modelsoup::DEFAULT_CHUNK_ELEMENTS,
    };
    write_recipe(&recipe, &output, interrupted)
}
