//! `soup merge`: one merge, from options or from a recipe.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use modelsoup::engine::merge::write_soup_with_files;
use modelsoup::method::{self, Prepared};
use modelsoup::recipe::{Ingredient, Method, Recipe};
use modelsoup::{Checkpoint, Destination, MergeReport, RunOptions};

use modelsoup::engine::adapter;

use super::args::{IngredientArgs, MergeArgs, MethodArg, NonFloat, WriteArgs};
use super::text::{human_bytes, human_count, plural};
use super::Exit;
use super::{init_check, progress};

/// Runs `soup merge`.
pub fn run(args: &MergeArgs, interrupted: &AtomicBool) -> anyhow::Result<Exit> {
    let (recipe, source) = match &args.recipe {
        Some(path) => {
            let (mut recipe, source) = Recipe::load_with_source(path)?;
            apply_write_options(&mut recipe, &args.write);
            if let Some(bound) = args.read.expand_views {
                for ingredient in recipe.ingredients.iter_mut().chain(recipe.base.as_mut()) {
                    ingredient.expand_views = Some(bound);
                }
            }
            (recipe, source)
        }
        None => (recipe_from_args(args)?, None),
    };
    let output = Output {
        path: &args.output,
        write: &args.write,
        json: args.json,
        quiet: args.quiet,
        chunk_elements: args.chunk_elements,
        card: !args.no_card,
        mergekit_source: source.as_deref(),
        durable: true,
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
    /// Write a model card (README.md).
    pub card: bool,
    /// The mergekit configuration the recipe was read from, for the card (which
    /// shows it) and `mergekit_config.yml` (which mergekit writes too).
    pub mergekit_source: Option<&'a str>,
    /// Sync the output to disk before it is renamed into place.
    pub durable: bool,
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
/// prints its own summary line. A recipe with intermediates (a multi-document
/// mergekit configuration) writes them first, into a hidden directory beside
/// the output that is removed afterwards, whatever happens.
pub fn write_recipe(
    recipe: &Recipe,
    out: &Output,
    interrupted: &AtomicBool,
) -> anyhow::Result<Written> {
    // A second soup on this output fails here, before any work; so does an
    // output that may not be written, before any intermediate is merged.
    let _lock = super::guard::output(out.path, out.quiet)?;
    modelsoup::engine::output::check_destination(out.path, out.write.file.force, &[])?;
    let area = Intermediates::new(out.path, recipe)?;
    for (i, intermediate) in recipe.intermediates.iter().enumerate() {
        let dir = area.dir_of(&intermediate.name).unwrap_or_default();
        if !out.quiet {
            eprintln!(
                "intermediate {}/{}: {} ({})",
                i + 1,
                recipe.intermediates.len(),
                intermediate.name,
                intermediate.recipe.method.name()
            );
        }
        let stage = Output {
            path: &dir,
            json: false,
            card: false,
            mergekit_source: None,
            durable: false,
            ..*out
        };
        write_one(&intermediate.recipe, &stage, &area, interrupted)
            .with_context(|| format!("intermediate merge {:?}", intermediate.name))?;
    }
    write_one(recipe, out, &area, interrupted)
}

/// The hidden directory that holds a recipe's intermediate soups while the
/// final one is written (beside the output, named so that a later run on the
/// output removes it if this process is killed), removed when dropped.
struct Intermediates {
    dir: Option<std::path::PathBuf>,
    names: Vec<String>,
}

impl Intermediates {
    fn new(output: &Path, recipe: &Recipe) -> anyhow::Result<Self> {
        let names: Vec<String> = recipe.intermediates.iter().map(|i| i.name.clone()).collect();
        if names.is_empty() {
            return Ok(Intermediates { dir: None, names });
        }
        let dir = modelsoup::engine::output::intermediates_dir(output);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Intermediates { dir: Some(dir), names })
    }

    /// Where the intermediate named `name` is written, if it is one.
    fn dir_of(&self, name: &str) -> Option<std::path::PathBuf> {
        let dir = self.dir.as_ref()?;
        self.names.iter().any(|n| n == name).then(|| dir.join(name))
    }

    /// The path a recipe's model path is opened from.
    fn open_path(&self, path: &str) -> std::path::PathBuf {
        self.dir_of(path).unwrap_or_else(|| path.into())
    }

    /// `recipe` with the names of intermediates (as models and as adapter bases)
    /// replaced by the directories they are written to, for opening its models.
    fn localise(&self, recipe: &Recipe) -> Recipe {
        let mut local = recipe.clone();
        let ingredients = local.ingredients.iter_mut().chain(local.base.as_mut()).chain(
            local.slices.iter_mut().flat_map(|s| s.ingredients.iter_mut().chain(s.base.as_mut())),
        );
        for ingredient in ingredients {
            if let Some(dir) = self.dir_of(&ingredient.path) {
                ingredient.path = dir.display().to_string();
            }
            if let Some(base) = ingredient.adapter_base.as_mut() {
                if let Some(dir) = self.dir_of(base) {
                    *base = dir.display().to_string();
                }
            }
        }
        local
    }
}

impl Drop for Intermediates {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The directory of a model path: an intermediate's, a Hub snapshot, the path
/// itself, or the directory of a weight file.
fn model_dir(area: &Intermediates, path: &str) -> modelsoup::Result<std::path::PathBuf> {
    let path = area.open_path(path);
    if let Some((_, snapshot)) = modelsoup::engine::hub::locate(&path)? {
        return Ok(snapshot.dir);
    }
    if path.is_dir() {
        return Ok(path);
    }
    Ok(path.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// Writes one soup (no intermediates of its own), its models opened through
/// `area`.
fn write_one(
    recipe: &Recipe,
    out: &Output,
    area: &Intermediates,
    interrupted: &AtomicBool,
) -> anyhow::Result<Written> {
    let local = area.localise(recipe);
    // A recipe of ingredients and a base opens them as `soup merge` names them
    // (adapters over the base); one of slices opens each of its models once.
    let (models, base) = if recipe.slices.is_empty() {
        let (ingredients, base) = open_recipe(&local)?;
        modelsoup::engine::output::check_destination(out.path, out.write.file.force, &ingredients)?;
        let labels: Vec<String> = recipe.ingredients.iter().map(|i| i.path.clone()).collect();
        warn_repeated(&ingredients, &labels);
        init_check::warn_if_independent(&ingredients, &labels, out.write.no_init_check);
        (ingredients, base)
    } else {
        let models = open_models(&local)?;
        modelsoup::engine::output::check_destination(out.path, out.write.file.force, &models)?;
        let base = local.base.as_ref().and_then(|b| {
            local.models().iter().position(|p| *p == b.path).map(|j| models[j].clone())
        });
        (models, base)
    };

    let threads = out.write.file.threads.unwrap_or(0);
    let started = Instant::now();
    let statistics_read = AtomicU64::new(0);
    let prepared = {
        // Statistics passes report the bytes they read: one pass for the methods
        // that need angles, as many as the selection needs for those that select
        // by rank, none for the others.
        let total: u64 = models.iter().chain(&base).map(Checkpoint::float_bytes).sum();
        let bar = match recipe.method {
            Method::Slerp
            | Method::ModelStock
            | Method::Nuslerp
            | Method::Multislerp
            | Method::Karcher => progress::bytes_bar(total, out.quiet, "analysing"),
            Method::Ties | Method::Breadcrumbs | Method::BreadcrumbsTies | Method::Sce => {
                progress::bytes_counter(out.quiet, "selecting")
            }
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
        let prepared = if recipe.slices.is_empty() {
            method::prepare(recipe, &models, base.as_ref(), &run)
        } else {
            method::prepare_models(recipe, &models, &run)
        };
        bar.finish_and_clear();
        prepared?
    };
    let Prepared { inputs, plan, blocks } = prepared;
    let statistics = Statistics {
        bytes_read: statistics_read.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    };

    // The config and tokenizer are copied from --support-files-from, else the
    // base for methods built on one (as mergekit does), else the first input;
    // the recipe then makes its own files over them: the tokenizer of its
    // tokenizer_source (which wins), a chat template, the config of a sliced
    // model, the model card.
    let base_files =
        base.as_ref().filter(|_| recipe.method.needs_base()).and_then(|b| b.directory());
    let support = out
        .write
        .support_files_from
        .as_deref()
        .or(base_files)
        .or_else(|| inputs.first().and_then(Checkpoint::directory))
        .map(Path::to_path_buf);
    let mut files =
        modelsoup::recipe::files::support_files(recipe, support.as_deref(), blocks, &|p| {
            model_dir(area, p)
        })?;
    if out.card {
        let name =
            out.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let card = modelsoup::recipe::card::card(recipe, &name, out.mergekit_source);
        files.push(("README.md".to_owned(), Some(card.into_bytes())));
        if let Some(source) = out.mergekit_source {
            files.push(("mergekit_config.yml".to_owned(), Some(source.as_bytes().to_vec())));
        }
    }

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
        force: out.write.file.force,
        support_files_from: support.as_deref(),
        durable: out.durable,
    };
    // Library errors name the file, tensor and output path themselves.
    let report = write_soup_with_files(&inputs, &plan, &dest, &files, &run);
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

/// Opens every model of a recipe with slices (as [`Recipe::models`] lists
/// them), each as its first entry says (`key`, `rename`, an adapter's base),
/// naming the one that failed by its role.
fn open_models(recipe: &Recipe) -> anyhow::Result<Vec<Checkpoint>> {
    let entries: Vec<(String, &Ingredient)> = recipe
        .slices
        .iter()
        .enumerate()
        .flat_map(|(s, slice)| {
            let models = slice
                .ingredients
                .iter()
                .enumerate()
                .map(move |(i, m)| (format!("slice {} model {}", s + 1, i + 1), m));
            models.chain(slice.base.iter().map(move |b| (format!("slice {} base", s + 1), b)))
        })
        .chain(
            recipe
                .ingredients
                .iter()
                .enumerate()
                .map(|(i, m)| (format!("ingredient {}", i + 1), m)),
        )
        .chain(recipe.base.iter().map(|b| ("base model".to_owned(), b)))
        .collect();
    recipe
        .models()
        .iter()
        .map(|path| {
            let Some((role, entry)) = entries.iter().find(|(_, m)| m.path == *path) else {
                bail!("model {path:?} is in no slice");
            };
            entry.open(None).with_context(|| role.clone())
        })
        .collect()
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
    let k = recipe.models().len();
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
