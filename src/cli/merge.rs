//! `soup merge`: one merge, from options or from a recipe.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use modelsoup::engine::checkpoint::OpenOptions;
use modelsoup::method::{self, Prepared};
use modelsoup::recipe::{Ingredient, Method, Recipe};
use modelsoup::{write_soup, Checkpoint, Destination, MergeReport, RunOptions};

use super::args::{MergeArgs, MethodArg, NonFloat, WriteArgs};
use super::Exit;
use super::{init_check, progress};

/// Runs `soup merge`.
pub fn run(args: &MergeArgs, interrupted: &AtomicBool) -> anyhow::Result<Exit> {
    let recipe = match &args.recipe {
        Some(path) => {
            let mut recipe = Recipe::load(path)?;
            apply_write_options(&mut recipe, &args.write);
            recipe
        }
        None => recipe_from_args(args)?,
    };
    let output = Output {
        path: &args.output,
        write: &args.write,
        json: args.json,
        quiet: args.quiet,
        chunk_elements: args.chunk_elements,
    };
    write_recipe(&recipe, &output, interrupted)
}

/// Where and how a command writes its one merge.
pub struct Output<'a> {
    /// The output directory.
    pub path: &'a Path,
    /// The shared writing options (threads, force, support files, checks).
    pub write: &'a WriteArgs,
    /// Print the JSON summary on stdout.
    pub json: bool,
    /// No progress bar or summary.
    pub quiet: bool,
    /// Elements per work chunk.
    pub chunk_elements: usize,
}

/// Opens a recipe's checkpoints, runs its statistics passes and writes its soup,
/// with progress bars and the summary.
pub fn write_recipe(
    recipe: &Recipe,
    out: &Output,
    interrupted: &AtomicBool,
) -> anyhow::Result<Exit> {
    // A second soup on this output fails here, before any work.
    let _lock = super::guard::output(out.path, out.quiet)?;
    let paths: Vec<&str> = recipe.ingredients.iter().map(|i| i.path.as_str()).collect();
    let options = open_options(out.write);
    let ingredients = open_all(&paths, &options)?;
    modelsoup::engine::output::check_destination(out.path, out.write.force, &ingredients)?;
    let base = match &recipe.base {
        Some(b) => Some(Checkpoint::open_with(&b.path, &options).context("base model")?),
        None => None,
    };
    let labels: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
    init_check::warn_if_independent(&ingredients, &labels, out.write.no_init_check);

    let threads = out.write.threads.unwrap_or(0);
    let started = Instant::now();
    let statistics_read = AtomicU64::new(0);
    let prepared = {
        // Statistics passes report the bytes they read: one pass for SLERP and Model
        // Stock, as many as the selection needs for TIES, none for the others.
        let total: u64 = ingredients.iter().chain(&base).map(Checkpoint::float_bytes).sum();
        let bar = match recipe.method {
            Method::Slerp | Method::ModelStock => {
                progress::bytes_bar(total, out.quiet, "analysing")
            }
            Method::Ties => progress::bytes_counter(out.quiet, "selecting"),
            _ => progress::bytes_counter(true, ""),
        };
        let on_read = |bytes: u64| {
            statistics_read.fetch_add(bytes, Ordering::Relaxed);
            bar.inc(bytes);
        };
        let run = RunOptions {
            threads,
            chunk_elements: out.chunk_elements,
            progress: Some(&on_read),
            cancel: Some(interrupted),
        };
        let prepared = method::prepare(recipe, &ingredients, base.as_ref(), &run);
        bar.finish_and_clear();
        prepared?
    };
    let Prepared { inputs, plan } = prepared;
    let statistics = Statistics {
        bytes_read: statistics_read.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    };

    let bar = progress::bytes_bar(plan.output_bytes(), out.quiet, "writing");
    let on_chunk = |bytes: u64| bar.inc(bytes);
    let run = RunOptions {
        threads,
        chunk_elements: out.chunk_elements,
        progress: Some(&on_chunk),
        cancel: Some(interrupted),
    };
    let dest = Destination {
        path: out.path,
        force: out.write.force,
        support_files_from: out.write.copy_files_from.as_deref(),
        durable: true,
    };
    // Library errors name the file, tensor and output path themselves.
    let report = write_soup(&inputs, &plan, &dest, &run);
    bar.finish_and_clear();
    let report = report?;
    super::guard::say(&report.housekeeping, out.quiet);
    if report.non_finite > 0 {
        errln!(
            "warning: the soup holds {} NaN or infinite value(s), the first in tensor {}",
            report.non_finite,
            report.first_non_finite.as_deref().unwrap_or("?")
        );
    }

    if out.json {
        let json = summary_json(&report, &statistics, out.path, recipe);
        outln!("{}", serde_json::to_string(&json)?);
    } else if !out.quiet {
        errln!("{}", summary_line(&report, &statistics, recipe, out.path));
    }
    Ok(Exit::Success)
}

/// The recipe the command-line options describe.
fn recipe_from_args(args: &MergeArgs) -> anyhow::Result<Recipe> {
    let method = match args.method {
        MethodArg::Linear => Method::Linear,
        MethodArg::TaskArithmetic => Method::TaskArithmetic,
        MethodArg::Ties => Method::Ties,
        MethodArg::DareLinear => Method::DareLinear,
        MethodArg::DareTies => Method::DareTies,
        MethodArg::Slerp => Method::Slerp,
        MethodArg::ModelStock => Method::ModelStock,
    };
    let mut ingredients: Vec<Ingredient> =
        args.ingredients.iter().map(|p| Ingredient::path(p.display().to_string())).collect();
    let mut base = args.base.as_ref().map(|p| Ingredient::path(p.display().to_string()));
    if let Some(weights) = &args.weights {
        let k = ingredients.len();
        let with_base = method == Method::Linear && base.is_some();
        let expected = k + usize::from(with_base);
        if weights.len() != expected {
            let base_note = if with_base { " plus one for the base" } else { "" };
            bail!(
                "--weights has {} values but there are {k} ingredients{base_note}",
                weights.len()
            );
        }
        if let Some(bad) = weights.iter().find(|x| !x.is_finite()) {
            bail!("--weights must be finite, got {bad}");
        }
        if method == Method::Linear {
            if let Some(bad) = weights.iter().find(|x| **x < 0.0) {
                bail!("--weights of a linear merge must be non-negative, got {bad}");
            }
            if weights.iter().sum::<f64>() <= 0.0 {
                bail!("--weights must not all be zero");
            }
        }
        for (ingredient, &w) in ingredients.iter_mut().zip(weights) {
            ingredient.weight = Some(w.into());
        }
        if let (Some(b), true) = (base.as_mut(), with_base) {
            b.weight = weights.last().map(|&w| w.into());
        }
    }
    let mut recipe = Recipe::new(method, ingredients);
    recipe.base = base;
    let p = &mut recipe.parameters;
    p.lambda = args.lambda.map(Into::into);
    p.density = args.density.map(Into::into);
    p.t = args.t.map(Into::into);
    p.seed = args.seed;
    p.normalize = args.normalize;
    p.rescale = args.no_rescale.then_some(false);
    apply_write_options(&mut recipe, &args.write);
    Ok(recipe)
}

/// Output options given on the command line, over the recipe's own.
pub fn apply_write_options(recipe: &mut Recipe, write: &WriteArgs) {
    if let Some(dtype) = write.dtype {
        recipe.output.dtype = Some(dtype.name().to_owned());
    }
    if let Some(size) = write.max_shard_size {
        recipe.output.max_shard_size = Some(size);
    }
    if write.non_float == NonFloat::First {
        recipe.output.non_float = Some("first".to_owned());
    }
}

/// Opens every ingredient, naming the one that failed.
pub fn open_all(
    paths: &[impl AsRef<Path>],
    options: &OpenOptions,
) -> anyhow::Result<Vec<Checkpoint>> {
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Checkpoint::open_with(p, options).with_context(|| format!("ingredient {}", i + 1))
        })
        .collect()
}

/// What the writing options allow when opening checkpoints.
pub fn open_options(write: &WriteArgs) -> OpenOptions {
    OpenOptions { max_expanded_view: write.expand_views.unwrap_or(0) }
}

/// What the statistics passes before the merge cost.
struct Statistics {
    /// Bytes they read.
    bytes_read: u64,
    /// Seconds from the start of planning to the start of the merge.
    seconds: f64,
}

fn summary_line(r: &MergeReport, st: &Statistics, recipe: &Recipe, output: &Path) -> String {
    let k = recipe.ingredients.len();
    let passes = if st.bytes_read > 0 {
        format!("; statistics passes read {} in {:.2} s", human_bytes(st.bytes_read), st.seconds)
    } else {
        String::new()
    };
    format!(
        "{} {} ingredient(s) ({}{}) into {}: {} tensors, {} parameters, read {}, wrote {} in {:.2} s ({}/s)",
        if k == 1 && recipe.base.is_none() { "wrote" } else { "merged" },
        k,
        recipe.method.name(),
        if recipe.base.is_some() { ", with a base" } else { "" },
        output.display(),
        r.tensors,
        human_count(r.parameters),
        human_bytes(r.bytes_read),
        human_bytes(r.bytes_written),
        r.seconds,
        human_bytes((r.bytes_read as f64 / r.seconds.max(1e-9)) as u64),
    ) + &passes
}

/// The merge report plus the output, the recipe, the throughput of the merge pass,
/// and the statistics passes (`statistics_bytes_read`, `statistics_seconds`;
/// `total_seconds` covers both).
fn summary_json(
    r: &MergeReport,
    st: &Statistics,
    output: &Path,
    recipe: &Recipe,
) -> serde_json::Value {
    let mut extra = BTreeMap::new();
    extra.insert("statistics_bytes_read", serde_json::json!(st.bytes_read));
    extra.insert("statistics_seconds", serde_json::json!(st.seconds));
    extra.insert("total_seconds", serde_json::json!(st.seconds + r.seconds));
    extra.insert("output", serde_json::json!(output));
    extra.insert("method", serde_json::json!(recipe.method));
    extra.insert("recipe", serde_json::json!(recipe));
    extra.insert(
        "read_gb_per_s",
        serde_json::json!(r.bytes_read as f64 / 1e9 / r.seconds.max(1e-9)),
    );
    let mut value = serde_json::to_value(r).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        for (k, v) in extra {
            map.insert(k.to_owned(), v);
        }
    }
    value
}

fn human_bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        _ if n >= 1e9 => format!("{:.2} GB", n / 1e9),
        _ if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        _ if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        _ => format!("{n} B"),
    }
}

fn human_count(n: u64) -> String {
    let f = n as f64;
    match f {
        _ if f >= 1e9 => format!("{:.2} B", f / 1e9),
        _ if f >= 1e6 => format!("{:.1} M", f / 1e6),
        _ if f >= 1e3 => format!("{:.1} k", f / 1e3),
        _ => n.to_string(),
    }
}
