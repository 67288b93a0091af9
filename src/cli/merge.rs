//! `soup merge`: uniform and weighted soups.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context};
use modelsoup::{
    write_soup, Checkpoint, Destination, MergeReport, NonFloatPolicy, OutputDtype, Plan,
    PlanOptions, Recipe, RunOptions, Weights,
};

use super::args::{MergeArgs, NonFloat};
use super::Exit;
use super::{init_check, progress};

/// Runs `soup merge`.
pub fn run(args: &MergeArgs, interrupted: &AtomicBool) -> anyhow::Result<Exit> {
    let weights = normalised_weights(args.weights.as_deref(), args.ingredients.len())?;
    let ingredients = open_all(&args.ingredients)?;
    let labels: Vec<String> = args.ingredients.iter().map(|p| p.display().to_string()).collect();
    init_check::warn_if_independent(&ingredients, &labels, args.write.no_init_check);
    let mut recipe = Recipe::linear(&labels, &weights);
    recipe.output.dtype = args.write.dtype.map(|d| d.name().to_owned());
    let options = PlanOptions {
        weights: Weights::Global(weights),
        dtype: args.write.dtype.map_or(OutputDtype::default(), OutputDtype::Force),
        max_shard_size: args.write.max_shard_size,
        non_float: match args.write.non_float {
            NonFloat::Error => NonFloatPolicy::RequireEqual,
            NonFloat::First => NonFloatPolicy::TakeFirst,
        },
        metadata: recipe.to_metadata(),
    };
    let plan = Plan::new(&ingredients, &options)?;

    let bar = progress::bytes_bar(plan.output_bytes(), args.quiet, "merging");
    let on_chunk = |bytes: u64| bar.inc(bytes);
    let run = RunOptions {
        threads: args.write.threads.unwrap_or(0),
        chunk_elements: args.chunk_elements,
        progress: Some(&on_chunk),
        cancel: Some(interrupted),
    };
    let dest = Destination {
        path: &args.output,
        force: args.write.force,
        support_files_from: args.write.copy_files_from.as_deref(),
        durable: true,
    };
    // Library errors name the file, tensor and output path themselves.
    let report = write_soup(&ingredients, &plan, &dest, &run);
    bar.finish_and_clear();
    let report = report?;

    if args.json {
        println!("{}", serde_json::to_string(&summary_json(&report, &args.output, &recipe))?);
    } else if !args.quiet {
        eprintln!("{}", summary_line(&report, ingredients.len(), &args.output));
    }
    Ok(Exit::Success)
}

/// Opens every ingredient, naming the one that failed.
pub fn open_all(paths: &[impl AsRef<Path>]) -> anyhow::Result<Vec<Checkpoint>> {
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| Checkpoint::open(p).with_context(|| format!("ingredient {}", i + 1)))
        .collect()
}

/// Checks user weights (one per ingredient, finite, non-negative, not all zero)
/// and scales them to sum to 1; `None` gives the uniform soup.
fn normalised_weights(weights: Option<&[f64]>, k: usize) -> anyhow::Result<Vec<f64>> {
    let Some(w) = weights else {
        return Ok(vec![1.0 / k as f64; k]);
    };
    if w.len() != k {
        bail!("--weights has {} values but there are {k} ingredients", w.len());
    }
    if let Some(bad) = w.iter().find(|x| !x.is_finite() || **x < 0.0) {
        bail!("--weights must be finite and non-negative, got {bad}");
    }
    let sum: f64 = w.iter().sum();
    if sum <= 0.0 {
        bail!("--weights must not all be zero");
    }
    Ok(w.iter().map(|x| x / sum).collect())
}

fn summary_line(r: &MergeReport, k: usize, output: &Path) -> String {
    format!(
        "merged {} ingredients into {}: {} tensors, {} parameters, read {}, wrote {} in {:.2} s ({}/s)",
        k,
        output.display(),
        r.tensors,
        human_count(r.parameters),
        human_bytes(r.bytes_read),
        human_bytes(r.bytes_written),
        r.seconds,
        human_bytes((r.bytes_read as f64 / r.seconds.max(1e-9)) as u64),
    )
}

fn summary_json(r: &MergeReport, output: &Path, recipe: &Recipe) -> serde_json::Value {
    let mut extra = BTreeMap::new();
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

#[cfg(test)]
mod tests {
    use super::normalised_weights;

    #[test]
    fn weights_are_checked_and_normalised() {
        assert_eq!(normalised_weights(None, 4).unwrap(), vec![0.25; 4]);
        assert_eq!(normalised_weights(Some(&[2.0, 6.0]), 2).unwrap(), vec![0.25, 0.75]);
        assert!(normalised_weights(Some(&[1.0]), 2).is_err());
        assert!(normalised_weights(Some(&[1.0, -1.0]), 2).is_err());
        assert!(normalised_weights(Some(&[0.0, 0.0]), 2).is_err());
        assert!(normalised_weights(Some(&[f64::NAN, 1.0]), 2).is_err());
    }
}
