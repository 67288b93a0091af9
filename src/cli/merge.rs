//! `soup merge`: one merge, from options or from a recipe.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use modelsoup::method::{self, Prepared};
use modelsoup::recipe::{Ingredient, Method, Recipe};
use modelsoup::{write_soup, Checkpoint, Destination, MergeReport, RunOptions};

use modelsoup::engine::adapter;

use super::args::{IngredientArgs, MergeArgs, MethodArg, NonFloat, WriteArgs};
use super::text::{human_bytes, human_count, plural};
use super::Exit;
use super::{init_check, progress};

/// Runs `soup merge`.
pub fn run(args: &MergeArgs, interrupted: &AtomicBool) -> anyhow::Result<Exit> {
    let recipe = match &args.recipe {
        Some(path) => {
            let mut recipe = Recipe::load(path)?;
            apply_write_options(&mut recipe, &args.write);
            if let Some(bound) = args.read.expand_views {
                for ingredient in recipe.ingredients.iter_mut().chain(recipe.base.as_mut()) {
                    ingredient.expand_views = Some(bound);
                }
            }
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
    let written = write_recipe(&recipe, &output, interrupted)?;
    if !args.json && !args.quiet {
        errln!("{}", summary_line(&written, &recipe, &args.output));
    }
    Ok(Exit::Success)
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

/// What one merge did: the engine's report and the statistics passes before it.
pub struct Written {
    /// The merge pass.
    pub report: MergeReport,
    /// The statistics passes.
    pub statistics: Statistics,
}

/// Opens a recipe's checkpoints, runs its statistics passes and writes its soup,
/// with progress bars, and the JSON summary on stdout with `--json`; the caller
/// prints its own summary line.
pub fn write_recipe(
    recipe: &Recipe,
    out: &Output,
    interrupted: &AtomicBool,
) -> anyhow::Result<Written> {
    // A second soup on this output fails here, before any work.
    let _lock = super::guard::output(out.path, out.quiet)?;
    let (ingredients, base) = open_recipe(recipe)?;
    modelsoup::engine::output::check_destination(out.path, out.write.file.force, &ingredients)?;
    let labels: Vec<String> = recipe.ingredients.iter().map(|i| i.path.clone()).collect();
    warn_repeated(&ingredients, &labels);
    init_check::warn_if_independent(&ingredients, &labels, out.write.no_init_check);

    let threads = out.write.file.threads.unwrap_or(0);
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
    // Methods built on a base take its config and tokenizer, as mergekit does.
    let base_files =
        base.as_ref().filter(|_| recipe.method.needs_base()).and_then(|b| b.directory());
    let dest = Destination {
        path: out.path,
        force: out.write.file.force,
        support_files_from: out.write.support_files_from.as_deref().or(base_files),
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
    }
    Ok(Written { report, statistics })
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
    let has_base = args.base.is_some();
    let mut ingredients: Vec<Ingredient> = args
        .ingredients
        .iter()
        .map(|p| ingredient_from(p, &args.read, has_base, None))
        .collect::<anyhow::Result<_>>()?;
    let mut base =
        args.base.as_ref().map(|p| ingredient_from(p, &args.read, false, None)).transpose()?;
    let k = ingredients.len();
    // A linear merge with a base mixes the base in directly only when --weights
    // gives it a weight of its own; otherwise --base means what it means in the
    // searches: base + lambda x (soup - base), task arithmetic over the
    // normalised weights.
    let base_weighted = method == Method::Linear
        && base.is_some()
        && args.weights.as_ref().is_some_and(|w| w.len() == k + 1);
    let method = if method == Method::Linear && base.is_some() && !base_weighted {
        Method::TaskArithmetic
    } else {
        method
    };
    let as_soup_of_task_vectors =
        args.method == MethodArg::Linear && method == Method::TaskArithmetic;
    if let Some(weights) = &args.weights {
        let plausible = if args.method == MethodArg::Linear && base.is_some() {
            weights.len() == k || weights.len() == k + 1
        } else {
            weights.len() == k
        };
        if !plausible {
            let base_note = if args.method == MethodArg::Linear && base.is_some() {
                " (or one more, for the base)"
            } else {
                ""
            };
            bail!(
                "--weights has {} but there {}{base_note}",
                plural(weights.len(), "value"),
                if k == 1 { "is 1 ingredient".to_owned() } else { format!("are {k} ingredients") },
            );
        }
        if let Some(bad) = weights.iter().find(|x| !x.is_finite()) {
            bail!("--weights must be finite, got {bad}");
        }
        if args.method == MethodArg::Linear {
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
        if let (Some(b), true) = (base.as_mut(), base_weighted) {
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
    p.normalize = args.normalize.or(as_soup_of_task_vectors.then_some(true));
    p.rescale = args.no_rescale.then_some(false);
    apply_write_options(&mut recipe, &args.write);
    Ok(recipe)
}

/// Output options given on the command line, over the recipe's own.
pub fn apply_write_options(recipe: &mut Recipe, write: &WriteArgs) {
    if let Some(dtype) = write.file.dtype {
        recipe.output.dtype = Some(dtype.name().to_owned());
    }
    if let Some(size) = write.file.max_shard_size {
        recipe.output.max_shard_size = Some(size);
    }
    if write.non_float == NonFloat::First {
        recipe.output.non_float = Some("first".to_owned());
    }
}

/// A model path as a recipe records it: absolute, so that the soup's recipe
/// replays from any working directory (symbolic links are kept, not resolved); a
/// Hub id from the local cache as `org/name@COMMIT`, the snapshot it used.
pub fn recorded_path(path: &Path) -> String {
    match modelsoup::engine::hub::locate(path) {
        Ok(Some((id, snapshot))) => id.pinned(&snapshot),
        // An id that is not cached: kept as given, for opening it to say so.
        Err(_) => path.display().to_string(),
        Ok(None) => {
            std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
        }
    }
}

/// The recipe entry of a model named on the command line: its recorded path,
/// how it is read (`--key`, `--rename`), and for a LoRA adapter the base it is
/// applied to: `adapter_base` when given, none when the recipe's base serves
/// (`recipe_base`), else the one the adapter's config names, recorded like a
/// path (absolute, or a Hub id pinned to its commit).
pub fn ingredient_from(
    path: &Path,
    read: &IngredientArgs,
    recipe_base: bool,
    adapter_base: Option<&Path>,
) -> anyhow::Result<Ingredient> {
    for rule in &read.rename {
        modelsoup::engine::rename::Rename::parse(rule)?;
    }
    let mut ingredient = Ingredient::path(recorded_path(path));
    ingredient.key = read.key.clone();
    ingredient.rename = read.rename.clone();
    ingredient.expand_views = read.expand_views;
    if adapter::is_adapter(path) {
        ingredient.adapter_base = match adapter_base {
            Some(base) => Some(recorded_path(base)),
            None if recipe_base => None,
            None => adapter::configured_base(path)?.map(|b| recorded_path(Path::new(&b))),
        };
    }
    Ok(ingredient)
}

/// Opens a recipe's ingredients and base, naming the one that failed.
pub fn open_recipe(recipe: &Recipe) -> anyhow::Result<(Vec<Checkpoint>, Option<Checkpoint>)> {
    let base = match &recipe.base {
        Some(b) => Some(b.open(None).context("base model")?),
        None => None,
    };
    let ingredients = modelsoup::recipe::open_ingredients(&recipe.ingredients, base.as_ref())
        .map_err(|b| {
            let (i, e) = *b;
            anyhow::Error::new(e).context(format!("ingredient {}", i + 1))
        })?;
    Ok((ingredients, base))
}

/// Opens models named on the command line with `--key` and `--rename` (an
/// adapter over `base`, or the base its config names), naming the one that
/// failed.
pub fn open_all(
    paths: &[impl AsRef<Path>],
    read: &IngredientArgs,
    base: Option<&Checkpoint>,
) -> anyhow::Result<Vec<Checkpoint>> {
    let ingredients: Vec<Ingredient> = paths
        .iter()
        .map(|p| ingredient_from(p.as_ref(), read, base.is_some(), None))
        .collect::<anyhow::Result<_>>()?;
    modelsoup::recipe::open_ingredients(&ingredients, base).map_err(|b| {
        let (i, e) = *b;
        anyhow::Error::new(e).context(format!("ingredient {}", i + 1))
    })
}

/// Warns when one checkpoint is given twice (the same first shard file, by any
/// path): it is then averaged in twice, which is rarely what was meant.
pub fn warn_repeated(ingredients: &[Checkpoint], labels: &[String]) {
    let mut seen: Vec<(std::path::PathBuf, usize)> = Vec::new();
    for (i, ck) in ingredients.iter().enumerate() {
        let Some(file) = ck.shards().first().and_then(|s| s.path().canonicalize().ok()) else {
            continue;
        };
        match seen.iter().find(|(f, _)| *f == file) {
            Some(&(_, first)) => errln!(
                "warning: ingredient {} ({}) is the same checkpoint as ingredient {} ({}): \
                 it counts twice",
                i + 1,
                labels[i],
                first + 1,
                labels[first]
            ),
            None => seen.push((file, i)),
        }
    }
}

/// What the statistics passes before the merge cost.
pub struct Statistics {
    /// Bytes they read.
    bytes_read: u64,
    /// Seconds from the start of planning to the start of the merge.
    seconds: f64,
}

fn summary_line(written: &Written, recipe: &Recipe, output: &Path) -> String {
    let Written { report: r, statistics: st } = written;
    let k = recipe.ingredients.len();
    let passes = if st.bytes_read > 0 {
        format!("; statistics passes read {} in {:.2} s", human_bytes(st.bytes_read), st.seconds)
    } else {
        String::new()
    };
    format!(
        "merged {} ({}{}) into {}: {}, {} parameters, read {}, wrote {} in {:.2} s ({}/s)",
        plural(k, "ingredient"),
        recipe.method.name(),
        if recipe.base.is_some() { ", with a base" } else { "" },
        output.display(),
        plural(r.tensors, "tensor"),
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
