//! `soup inspect`: what is in a checkpoint (tensors, dtypes, shapes, sizes, shards,
//! metadata, optionally NaN/inf counts), and whether several can be souped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::AtomicBool;

use modelsoup::analysis::init_check::check_shared_init;
use modelsoup::analysis::values::{count_non_finite, NonFinite};
use modelsoup::engine::plan;
use modelsoup::recipe::{Recipe, METADATA_KEY};
use modelsoup::{Checkpoint, Error, FloatDtype, RunOptions};
use serde_json::json;

use super::args::InspectArgs;
use super::merge::{ingredient_from, open_all};
use super::text::plural;
use super::{init_check, progress, Exit};

/// Runs `soup inspect`.
pub fn run(args: &InspectArgs, interrupted: &AtomicBool) -> anyhow::Result<Exit> {
    let names: Vec<String> = args.checkpoints.iter().map(|p| p.display().to_string()).collect();
    // Listing tensors writes nothing, so views whose elements overlap in storage
    // are shown as they are; counting their values reads every element, so then
    // they are refused as a merge refuses them (unless --expand-views allows them).
    let mut read = args.read.clone();
    if !args.check_values {
        read.expand_views = Some(u64::MAX);
    }
    let base = match &args.base {
        Some(path) => Some(ingredient_from(path, &read, false, None)?.open(None)?),
        None => None,
    };
    let checkpoints = open_all(&args.checkpoints, &read, base.as_ref())?;
    if !args.check_values {
        // Counting values checks each PyTorch storage as it reads it; without
        // that, check them here, so a corrupt file is never vouched for.
        for ck in &checkpoints {
            ck.verify()?;
        }
    }
    let mut non_finite: Vec<Option<Vec<NonFinite>>> = vec![None; checkpoints.len()];
    if args.check_values {
        let total: u64 = checkpoints.iter().map(Checkpoint::float_bytes).sum();
        let bar = progress::bytes_bar(total, args.quiet || args.json, "checking values");
        let on_chunk = |bytes: u64| bar.inc(bytes);
        let run = RunOptions {
            threads: args.threads.unwrap_or(0),
            progress: Some(&on_chunk),
            cancel: Some(interrupted),
            ..RunOptions::default()
        };
        for (slot, ck) in non_finite.iter_mut().zip(&checkpoints) {
            *slot = Some(count_non_finite(ck, &run).inspect_err(|_| bar.finish_and_clear())?);
        }
        bar.finish_and_clear();
    }
    let differences = if checkpoints.len() > 1 {
        match plan::check_compatible(&checkpoints) {
            Ok(()) => Some(Vec::new()),
            Err(Error::Incompatible(d)) => Some(d.iter().map(ToString::to_string).collect()),
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let check = (checkpoints.len() > 1).then(|| check_shared_init(&checkpoints));
    let bad_values = non_finite.iter().flatten().any(|f| !f.is_empty());
    let incompatible = differences.as_ref().is_some_and(|d| !d.is_empty());

    if args.json {
        let doc = json!({
            "checkpoints": checkpoints.iter().zip(&names).zip(&non_finite)
                .map(|((ck, name), nf)| checkpoint_json(ck, name, nf.as_deref()))
                .collect::<Vec<_>>(),
            "compatible": differences.as_ref().map(Vec::is_empty),
            "differences": differences,
            "init_check": check.as_ref().map(|c| serde_json::to_value(c).unwrap_or_default()),
        });
        outln!("{doc}");
    } else {
        let mut out = String::new();
        // Several checkpoints: the verdict first, then a line per checkpoint, and
        // the tensor tables (a real model's is ~1000 lines) only with --tables.
        if let Some(d) = &differences {
            if d.is_empty() {
                let _ = writeln!(
                    out,
                    "compatible: the {} checkpoints can be souped together",
                    names.len()
                );
            } else {
                let _ = writeln!(
                    out,
                    "incompatible: {} {} a merge:",
                    plural(d.len(), "difference"),
                    if d.len() == 1 { "stops" } else { "stop" }
                );
                for line in d {
                    let _ = writeln!(out, "  - {line}");
                }
            }
            if let Some(check) = &check {
                let _ = writeln!(out, "{}", init_check::summary(check, &names));
            }
            out.push('\n');
        }
        let tables = args.tables || checkpoints.len() == 1;
        for ((ck, name), nf) in checkpoints.iter().zip(&names).zip(&non_finite) {
            checkpoint_text(&mut out, ck, name, nf.as_deref(), tables);
        }
        if !tables {
            let _ = writeln!(out, "(--tables lists every tensor of each checkpoint)");
        }
        out!("{out}");
    }
    Ok(if incompatible || bad_values { Exit::NoSoup } else { Exit::Success })
}

/// Tensors, parameters and bytes per dtype.
fn totals(ck: &Checkpoint) -> BTreeMap<String, (usize, u64, u64)> {
    let mut totals: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    for t in ck.tensors() {
        // A LoRA-adapted matrix as it is stored: its base's dtype and size.
        let e = totals.entry(format!("{:?}", ck.declared_dtype(t))).or_default();
        *e = (e.0 + 1, e.1 + t.numel() as u64, e.2 + ck.declared_len(t) as u64);
    }
    totals
}

fn checkpoint_json(
    ck: &Checkpoint,
    name: &str,
    non_finite: Option<&[NonFinite]>,
) -> serde_json::Value {
    let found: BTreeMap<usize, &NonFinite> =
        non_finite.unwrap_or_default().iter().map(|f| (f.tensor, f)).collect();
    let tensors: Vec<serde_json::Value> = ck
        .tensors()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut v = json!({
                "name": t.name,
                "dtype": format!("{:?}", ck.declared_dtype(t)),
                "shape": t.shape,
                "parameters": t.numel(),
                "bytes": ck.declared_len(t),
                "shard": ck.shards()[t.shard].path().file_name().map(|n| n.to_string_lossy()),
            });
            if non_finite.is_some() && FloatDtype::from_safetensors(t.dtype).is_some() {
                let f = found.get(&i);
                v["nan"] = json!(f.map_or(0, |f| f.nan));
                v["inf"] = json!(f.map_or(0, |f| f.inf));
            }
            v
        })
        .collect();
    let by_dtype: BTreeMap<String, serde_json::Value> = totals(ck)
        .into_iter()
        .map(|(d, (n, p, b))| (d, json!({"tensors": n, "parameters": p, "bytes": b})))
        .collect();
    let metadata = metadata(ck);
    json!({
        "path": name,
        "shards": ck.shards().iter().map(|s| json!({"file": s.path(), "bytes": s.len()})).collect::<Vec<_>>(),
        "tensors": tensors,
        "parameters": ck.tensors().iter().map(|t| t.numel() as u64).sum::<u64>(),
        "bytes": ck.tensors().iter().map(|t| ck.declared_len(t) as u64).sum::<u64>(),
        "totals_by_dtype": by_dtype,
        "metadata": metadata,
        "recipe": Recipe::from_metadata(&metadata),
        "non_finite_tensors": non_finite.map(<[NonFinite]>::len),
    })
}

/// Every shard's `__metadata__`, merged (shards of one checkpoint carry the same).
fn metadata(ck: &Checkpoint) -> BTreeMap<String, String> {
    ck.shards().iter().flat_map(|s| s.metadata().clone()).collect()
}

fn checkpoint_text(
    out: &mut String,
    ck: &Checkpoint,
    name: &str,
    non_finite: Option<&[NonFinite]>,
    table: bool,
) {
    let parameters: u64 = ck.tensors().iter().map(|t| t.numel() as u64).sum();
    let bytes: u64 = ck.tensors().iter().map(|t| ck.declared_len(t) as u64).sum();
    let _ = writeln!(
        out,
        "{name}: {}, {parameters} parameters, {bytes} bytes of tensor data in {}",
        plural(ck.tensors().len(), "tensor"),
        plural(ck.shards().len(), "shard")
    );
    for s in ck.shards() {
        let _ = writeln!(out, "  shard {} ({} bytes)", s.path().display(), s.len());
    }
    if table {
        tensor_table(out, ck);
    }
    for (dtype, (n, p, b)) in totals(ck) {
        let _ =
            writeln!(out, "  total {dtype}: {}, {p} parameters, {b} bytes", plural(n, "tensor"));
    }
    for (key, value) in metadata(ck) {
        let label = if key == METADATA_KEY { " (soup recipe)" } else { "" };
        let _ = writeln!(out, "  metadata {key}{label}: {value}");
    }
    match non_finite {
        None => {}
        Some([]) => {
            let _ = writeln!(out, "  values: no NaN or inf in any float tensor");
        }
        Some(found) => {
            for f in found {
                let _ = writeln!(
                    out,
                    "  values: {} has {} NaN and {} inf",
                    ck.tensors()[f.tensor].name,
                    f.nan,
                    f.inf
                );
            }
        }
    }
    out.push('\n');
}

/// One row per tensor: name, dtype, shape, parameters, bytes.
fn tensor_table(out: &mut String, ck: &Checkpoint) {
    // Two passes over the tensors (widths, then rows), with no row kept: a header
    // may list half a million tensors.
    let cells = |t: &modelsoup::TensorEntry| {
        [
            t.name.clone(),
            format!("{:?}", ck.declared_dtype(t)),
            format!("{:?}", t.shape),
            t.numel().to_string(),
            ck.declared_len(t).to_string(),
        ]
    };
    let heading = ["name", "dtype", "shape", "parameters", "bytes"].map(str::to_owned);
    let mut widths: Vec<usize> = heading.iter().map(|h| h.chars().count()).collect();
    for t in ck.tensors() {
        for (w, cell) in widths.iter_mut().zip(cells(t)) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rows = std::iter::once(heading).chain(ck.tensors().iter().map(cells));
    for row in rows {
        let _ = writeln!(
            out,
            "  {:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4]
        );
        if out.len() > 1 << 20 {
            // Printed as it goes, so the text of a huge header is never held whole.
            out!("{out}");
            out.clear();
        }
    }
}
