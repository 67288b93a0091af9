//! `soup angles`: the angle matrix between fine-tuned deltas (or raw weights), as a
//! table, CSV or JSON on stdout, and optionally an SVG heatmap.

use std::fmt::Write;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use modelsoup::analysis::angles::{angles, AngleMatrix, Angles};
use modelsoup::analysis::init_check::check_shared_init;
use modelsoup::{Checkpoint, RunOptions};

use super::args::{AnglesArgs, Format};
use super::merge::{ingredient_from, open_all};
use super::text::plural;
use super::{init_check, progress, svg, Exit};

/// Runs `soup angles`.
pub fn run(args: &AnglesArgs, interrupted: &AtomicBool) -> anyhow::Result<Exit> {
    let names: Vec<String> = args.ingredients.iter().map(|p| p.display().to_string()).collect();
    let base = match &args.base {
        Some(path) => {
            let base = ingredient_from(path, &args.read, false, None)?;
            Some(base.open(None).context("base")?)
        }
        None => None,
    };
    let ingredients = open_all(&args.ingredients, &args.read, base.as_ref())?;
    let total: u64 = base.iter().chain(&ingredients).map(Checkpoint::float_bytes).sum();
    let bar = progress::bytes_bar(total, args.quiet, "reading");
    let on_chunk = |bytes: u64| bar.inc(bytes);
    let run = RunOptions {
        threads: args.threads.unwrap_or(0),
        progress: Some(&on_chunk),
        cancel: Some(interrupted),
        ..RunOptions::default()
    };
    let result = angles(base.as_ref(), &ingredients, args.per_layer, &run);
    bar.finish_and_clear();
    let result = result?;
    let base_name = args.base.as_deref().map(|p| p.display().to_string());
    // The base takes part in the shared-init check: an ingredient fine-tuned from
    // another model shows against it too.
    let checked: Vec<Checkpoint> = base.iter().chain(&ingredients).cloned().collect();
    let checked_names: Vec<String> = base_name.iter().chain(&names).cloned().collect();
    let check = check_shared_init(&checked);

    let format = if args.json { Format::Json } else { args.format };
    let text = match format {
        Format::Table => {
            let summary = init_check::summary(&check, &checked_names);
            format!("{}\n{summary}\n", table(&result, &names, base_name.as_deref()))
        }
        Format::Csv => {
            if check.looks_independent() {
                eprintln!("{}", init_check::warning(&check, &checked_names));
            }
            csv(&result, &names)
        }
        Format::Json => {
            let mut doc = json(&result, &names, base_name.as_deref());
            if let Some(map) = doc.as_object_mut() {
                let mut value = serde_json::to_value(&check)?;
                if let Some(v) = value.as_object_mut() {
                    v.insert("names".to_owned(), serde_json::json!(checked_names));
                }
                map.insert("init_check".to_owned(), value);
            }
            format!("{doc}\n")
        }
    };
    print!("{text}");
    if let Some(file) = &args.svg {
        let svg =
            svg::heatmap(&title(&result, base_name.as_deref()), &names, &result.overall.angles_deg);
        std::fs::write(file, svg).with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(Exit::Success)
}

/// Bytes of float tensors in a checkpoint: what the pass reads from it.
fn title(result: &Angles, base: Option<&str>) -> String {
    match base {
        Some(base) if result.relative_to_base => {
            format!("Angles between fine-tuned deltas θi − θ0 (degrees), base {base}")
        }
        _ => "Raw-weight angles (degrees), no base: similarity only, not delta angles".to_owned(),
    }
}

/// The aligned table: the whole model, then each layer group.
fn table(result: &Angles, names: &[String], base: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", title(result, base));
    for (n, name) in names.iter().enumerate() {
        let _ = writeln!(out, "  #{} {name}", n + 1);
    }
    for m in std::iter::once(&result.overall).chain(&result.layers) {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{} ({}, {} parameters)",
            m.label,
            plural(m.tensors, "tensor"),
            m.parameters
        );
        matrix_table(&mut out, m);
    }
    out
}

fn matrix_table(out: &mut String, m: &AngleMatrix) {
    let k = m.angles_deg.len();
    let width = 8;
    let _ = write!(out, "{:>5}", "");
    for j in 0..k {
        let _ = write!(out, "{:>width$}", format!("#{}", j + 1));
    }
    let norm_heading =
        if m.delta_norms.is_some() { "‖θi−θ0‖/‖θ0‖" } else { "‖θi‖" };
    let _ = writeln!(out, "  {norm_heading}");
    for (i, row) in m.angles_deg.iter().enumerate() {
        let _ = write!(out, "{:>5}", format!("#{}", i + 1));
        for a in row {
            let cell = if a.is_finite() { format!("{a:.2}") } else { "-".to_owned() };
            let _ = write!(out, "{cell:>width$}");
        }
        let norm = m.delta_norms.as_ref().map_or(m.norms[i], |d| d[i]);
        let _ = writeln!(out, "  {norm:.6}");
    }
}

/// CSV: one row per group and ingredient, angles in degrees, then the norm.
fn csv(result: &Angles, names: &[String]) -> String {
    let mut out = String::new();
    let norm = if result.relative_to_base { "delta_norm" } else { "norm" };
    let _ = write!(out, "group,ingredient");
    for name in names {
        let _ = write!(out, ",{}", csv_field(name));
    }
    let _ = writeln!(out, ",{norm}");
    for m in std::iter::once(&result.overall).chain(&result.layers) {
        for (i, row) in m.angles_deg.iter().enumerate() {
            let _ = write!(out, "{},{}", csv_field(&m.label), csv_field(&names[i]));
            for a in row {
                if a.is_finite() {
                    let _ = write!(out, ",{a}");
                } else {
                    out.push(',');
                }
            }
            let value = m.delta_norms.as_ref().map_or(m.norms[i], |d| d[i]);
            let _ = writeln!(out, ",{value}");
        }
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// The JSON document: `names`, `measure`, the whole model's matrix at the top
/// level, and `layers` with `--per-layer`.
fn json(result: &Angles, names: &[String], base: Option<&str>) -> serde_json::Value {
    let measure = if result.relative_to_base { "delta_angle" } else { "raw_weight_angle" };
    let mut doc = serde_json::json!({
        "measure": measure,
        "base": base,
        "names": names,
    });
    if let (Some(map), Ok(serde_json::Value::Object(m))) =
        (doc.as_object_mut(), serde_json::to_value(&result.overall))
    {
        map.extend(m.into_iter().filter(|(key, _)| key != "label"));
        if !result.layers.is_empty() {
            let layers = serde_json::to_value(&result.layers).unwrap_or_default();
            map.insert("layers".to_owned(), layers);
        }
    }
    doc
}
