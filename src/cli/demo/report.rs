//! The demo's results as the model-soups papers print them (method, val and test
//! accuracy, ingredients) for each set, on the terminal, in `report.md` and
//! `report.json`, and as a bar chart in `accuracy.svg`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::soups::SetResult;

/// The whole demo's outcome.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Where everything was written.
    pub work_dir: String,
    /// Accuracy of guessing: one over the number of classes.
    pub chance: f64,
    /// Wall time of the demo.
    pub seconds: f64,
    /// The fine-tuned set, then the from-scratch set.
    pub sets: Vec<SetResult>,
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The tables and the story's checks, for the terminal and report.md.
pub fn text(summary: &Summary) -> String {
    let mut out = String::new();
    for set in &summary.sets {
        let _ = writeln!(
            out,
            "\n{} ingredients ({}), chance {}",
            set.name,
            set.ingredients,
            pct(summary.chance)
        );
        let _ = writeln!(
            out,
            "| {:<28} | {:>8} | {:>8} | {:>11} |",
            "method", "val acc", "test acc", "ingredients"
        );
        let _ = writeln!(out, "|{:-<30}|{:->10}|{:->10}|{:->13}|", "", ":", ":", ":");
        for row in &set.rows {
            let _ = writeln!(
                out,
                "| {:<28} | {:>8} | {:>8} | {:>11} |",
                row.method,
                pct(row.val),
                pct(row.test),
                row.ingredients
            );
        }
        let kind =
            if set.relative_to_base { "between fine-tuned deltas" } else { "between raw weights" };
        let _ = writeln!(out, "\nmean angle {kind}: {:.1}°", set.mean_angle_deg);
        let check =
            if set.init_check_warns { "WARNS: not fine-tuned from one model" } else { "ok" };
        let _ = writeln!(out, "shared-init check: {check}");
        for warning in &set.warnings {
            let _ = writeln!(out, "  {warning}");
        }
    }
    let _ = writeln!(out, "\n{}", story(summary));
    out
}

/// What the numbers say, measured: the claims of the model-soups paper.
fn story(summary: &Summary) -> String {
    let row = |set: &SetResult, method: &str| set.rows.iter().find(|r| r.method == method).cloned();
    let mut out = String::from("The story, as measured:\n");
    let mut claim = |ok: bool, text: String| {
        let _ = writeln!(out, "  [{}] {text}", if ok { "yes" } else { "no " });
    };
    if let [tuned, scratch] = summary.sets.as_slice() {
        if let (Some(best), Some(greedy), Some(uniform)) = (
            row(tuned, "best individual (on val)"),
            row(tuned, "greedy soup"),
            row(tuned, "uniform soup"),
        ) {
            claim(
                greedy.val >= best.val,
                format!(
                    "fine-tuned: greedy soup {} ≥ best individual {} on val",
                    pct(greedy.val),
                    pct(best.val)
                ),
            );
            claim(
                uniform.test >= best.test - 0.02,
                format!(
                    "fine-tuned: uniform soup {} close to or above best individual {} on test",
                    pct(uniform.test),
                    pct(best.test)
                ),
            );
        }
        if let (Some(best), Some(uniform)) =
            (row(scratch, "best individual (on val)"), row(scratch, "uniform soup"))
        {
            claim(
                uniform.test < (best.test + summary.chance) / 2.0,
                format!(
                    "from scratch: uniform soup {} collapses toward chance {} (best individual {})",
                    pct(uniform.test),
                    pct(summary.chance),
                    pct(best.test)
                ),
            );
        }
        claim(
            scratch.init_check_warns && !tuned.init_check_warns,
            "the shared-init check warns on the from-scratch set only".into(),
        );
    }
    out
}

/// Writes report.md, report.json and accuracy.svg into `dir`.
pub fn write(summary: &Summary, dir: &Path) -> anyhow::Result<()> {
    let md = format!(
        "# soup demo\n\nAccuracy of soups chosen on val, reported on test ({:.0} s).\n\
         Angle heatmaps: `fine-tuned/angles.svg`, `from-scratch/angles.svg`; chart: `accuracy.svg`.\n{}",
        summary.seconds,
        text(summary)
    );
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).with_context(|| format!("cannot write {name}"))
    };
    write("report.md", md)?;
    write("report.json", serde_json::to_string_pretty(summary)? + "\n")?;
    write("accuracy.svg", chart(summary))
}

/// A grouped bar chart: per set, val and test accuracy of every method.
fn chart(summary: &Summary) -> String {
    let (bar, gap, label_w, plot_w) = (9usize, 8usize, 230usize, 400.0);
    let rows: usize = summary.sets.iter().map(|s| s.rows.len() + 1).sum();
    let height = 60 + rows * (2 * bar + gap) + 20;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="{w}" height="{height}" fill="white"/>
<text x="10" y="20" font-size="14" font-weight="bold">soup demo: accuracy (blue val, orange test)</text>
"#,
        w = label_w + 480
    );
    let mut y = 40;
    let x_of = |v: f64| label_w as f64 + plot_w * v.clamp(0.0, 1.0);
    for set in &summary.sets {
        let _ =
            writeln!(svg, r#"<text x="10" y="{}" font-weight="bold">{}</text>"#, y + 12, set.name);
        y += 2 * bar + gap;
        for row in &set.rows {
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                label_w - 6,
                y + bar + 4,
                row.method
            );
            for (k, (value, colour)) in
                [(row.val, "#3b528b"), (row.test, "#f28e2b")].into_iter().enumerate()
            {
                let top = y + k * bar;
                let _ = writeln!(
                    svg,
                    r#"<rect x="{label_w}" y="{top}" width="{:.1}" height="{bar}" fill="{colour}"/><text x="{:.1}" y="{}" font-size="9">{}</text>"#,
                    x_of(value) - label_w as f64,
                    x_of(value) + 3.0,
                    top + bar - 1,
                    pct(value)
                );
            }
            y += 2 * bar + gap;
        }
    }
    let chance = x_of(summary.chance);
    let _ = writeln!(
        svg,
        r#"<line x1="{chance:.1}" y1="35" x2="{chance:.1}" y2="{y}" stroke="grey" stroke-dasharray="4 3"/><text x="{chance:.1}" y="{}" font-size="10">chance</text>"#,
        y + 12
    );
    svg.push_str("</svg>\n");
    svg
}
