//! The figure of a search, `search.svg` beside `report.md`: the score of every
//! candidate against its step (evaluation number for learned soups), accepted
//! ones filled, rejected ones hollow, failed ones as a cross on the bottom axis,
//! with the best individual ingredient, the uniform soup and the final soup as
//! horizontal reference lines, and for learned soups the best score so far.
//! Every mark has a tooltip (`<title>`) naming the candidate.

use std::fmt::Write;

use modelsoup::search::report::{format_score, Report};

use super::svg::escape;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 50.0;

const ACCEPTED: &str = "#2a9d3f";
const REJECTED: &str = "#6b6b6b";
const FAILED: &str = "#c0392b";
const INDIVIDUAL: &str = "#1f5fbf";
const UNIFORM: &str = "#d9822b";

/// Draws one legend mark at a given height.
type Mark = Box<dyn Fn(f64) -> String>;

/// The figure of `report` as an SVG document.
pub fn plot(report: &Report) -> String {
    let learned = report.curve.is_some();
    let n = report.steps.len().max(1);
    let mut values: Vec<f64> = report.steps.iter().filter_map(|s| s.score).collect();
    values.extend([report.score, report.best_individual.score]);
    values.extend(report.uniform.as_ref().map(|u| u.score));
    values.retain(|v| v.is_finite());
    let (lo, hi) = range(&values);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |step: usize| LEFT + plot_w * (step as f64 - 0.5) / n as f64;
    let y = |v: f64| TOP + plot_h * (1.0 - (v - lo) / (hi - lo));

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let direction = if report.minimize { "lower is better" } else { "higher is better" };
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{} soup: score of every candidate ({direction})</text>"#,
        escape(&report.method)
    );
    // Axes, y ticks and grid.
    let (bottom, right) = (TOP + plot_h, LEFT + plot_w);
    let _ = writeln!(
        svg,
        r##"<path d="M{LEFT},{TOP} V{bottom} H{right}" fill="none" stroke="#333"/>"##
    );
    for tick in ticks(lo, hi) {
        let ty = y(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{ty:.1}" x2="{right}" y2="{ty:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{ty:.1}" text-anchor="end" dominant-baseline="middle">{}</text>"##,
            LEFT - 6.0,
            escape(&tick_label(tick, lo, hi))
        );
    }
    let every = n.div_ceil(20).max(1);
    for step in (1..=n).filter(|s| s % every == 0 || *s == 1) {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{step}</text>"#,
            x(step),
            bottom + 16.0
        );
    }
    let axis = if learned { "evaluation" } else { "step" };
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{axis}</text><text transform="translate(20,{:.1}) rotate(-90)" text-anchor="middle">score</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0,
        TOP + plot_h / 2.0
    );

    // Reference lines, labelled in the legend on the right.
    let mut legend: Vec<(String, String, &str)> = Vec::new();
    let mut reference = |value: f64, colour: &'static str, dash: &str, name: String| {
        if !value.is_finite() {
            return;
        }
        let ry = y(value);
        let _ = writeln!(
            svg,
            r#"<line class="reference" x1="{LEFT}" y1="{ry:.1}" x2="{right}" y2="{ry:.1}" stroke="{colour}" stroke-width="1.5" stroke-dasharray="{dash}"><title>{}</title></line>"#,
            escape(&format!("{name}: {}", format_score(value)))
        );
        legend.push((name, dash.to_owned(), colour));
    };
    reference(report.best_individual.score, INDIVIDUAL, "6,4", "best individual".into());
    if let Some(u) = &report.uniform {
        reference(u.score, UNIFORM, "2,3", "uniform soup".into());
    }
    reference(report.score, ACCEPTED, "none", format!("{} soup", report.method));

    // Best so far (learned): a step line.
    if let Some(curve) = &report.curve {
        let mut d = String::new();
        for p in curve {
            if let Some(best) = p.best {
                let (px, py) = (x(p.evaluation), y(best));
                let _ = if d.is_empty() {
                    write!(d, "M{px:.1},{py:.1}")
                } else {
                    write!(d, " H{px:.1} V{py:.1}")
                };
            }
        }
        if !d.is_empty() {
            let _ = writeln!(
                svg,
                r#"<path class="best-so-far" d="{d}" fill="none" stroke="{ACCEPTED}" stroke-opacity="0.5"/>"#
            );
        }
    }

    // One mark per candidate.
    for (i, step) in report.steps.iter().enumerate() {
        let px = x(i + 1);
        let what = format!("{} {}", step.candidate, step.proposal);
        match step.score {
            Some(v) => {
                let (class, fill, stroke) = if step.accepted {
                    ("accepted", ACCEPTED, ACCEPTED)
                } else {
                    ("rejected", "white", REJECTED)
                };
                let _ = writeln!(
                    svg,
                    r#"<circle class="{class}" cx="{px:.1}" cy="{:.1}" r="4.5" fill="{fill}" stroke="{stroke}" stroke-width="1.5"><title>{}</title></circle>"#,
                    y(v),
                    escape(&format!("{what}: {}", format_score(v)))
                );
            }
            None => {
                let by = bottom - 6.0;
                let reason = step.error.as_deref().unwrap_or("no score");
                let _ = writeln!(
                    svg,
                    r#"<path class="failed" d="M{:.1},{:.1} l8,8 m0,-8 l-8,8" stroke="{FAILED}" stroke-width="2"><title>{}</title></path>"#,
                    px - 4.0,
                    by - 4.0,
                    escape(&format!("{what}: failed: {reason}"))
                );
            }
        }
    }

    // Legend: one mark and its name per row.
    let lx = right + 16.0;
    let accepted = if learned { "new best" } else { "accepted" };
    let rejected = if learned { "evaluated" } else { "rejected" };
    let mut rows: Vec<(Mark, String)> = vec![
        (
            Box::new(move |ly| {
                format!(r#"<circle cx="{:.1}" cy="{ly:.1}" r="4.5" fill="{ACCEPTED}"/>"#, lx + 10.0)
            }),
            accepted.to_owned(),
        ),
        (
            Box::new(move |ly| {
                format!(
                    r#"<circle cx="{:.1}" cy="{ly:.1}" r="4.5" fill="white" stroke="{REJECTED}" stroke-width="1.5"/>"#,
                    lx + 10.0
                )
            }),
            rejected.to_owned(),
        ),
        (
            Box::new(move |ly| {
                format!(
                    r#"<path d="M{:.1},{:.1} l8,8 m0,-8 l-8,8" stroke="{FAILED}" stroke-width="2"/>"#,
                    lx + 6.0,
                    ly - 4.0
                )
            }),
            "failed".to_owned(),
        ),
    ];
    for (name, dash, colour) in legend {
        rows.push((
            Box::new(move |ly| {
                format!(
                    r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="1.5" stroke-dasharray="{dash}"/>"#,
                    lx + 20.0
                )
            }),
            name,
        ));
    }
    for (row, (mark, text)) in rows.iter().enumerate() {
        let ly = TOP + 8.0 + 20.0 * row as f64;
        let _ = writeln!(
            svg,
            r#"{}<text x="{:.1}" y="{ly:.1}" dominant-baseline="middle">{}</text>"#,
            mark(ly),
            lx + 26.0,
            escape(text)
        );
    }
    svg += "</svg>\n";
    svg
}

/// The plotted score range: the values' span plus a margin, never empty.
fn range(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if span > 0.0 { span * 0.08 } else { lo.abs().max(1e-12) * 0.05 };
    (lo - pad, hi + pad)
}

/// Up to about six round values between `lo` and `hi`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let step = tick_step(lo, hi);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// 1, 2 or 5 times a power of ten, giving 3 to 6 ticks over the range.
fn tick_step(lo: f64, hi: f64) -> f64 {
    let raw = (hi - lo) / 5.0;
    let power = 10f64.powf(raw.log10().floor());
    let fraction = raw / power;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

/// A tick value with as many decimals as the tick spacing needs.
fn tick_label(v: f64, lo: f64, hi: f64) -> String {
    let step = tick_step(lo, hi);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    if step < 1e-4 || v.abs() >= 1e6 {
        return format!("{v:.2e}");
    }
    format!("{v:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(ticks(0.0, 1.0), [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        let t = ticks(0.8312, 0.8347);
        assert!(t.len() >= 3 && t.iter().all(|&v| (0.8312..=0.8347).contains(&v)), "{t:?}");
        assert_eq!(tick_label(0.834, 0.8312, 0.8347), "0.834");
        assert_eq!(tick_label(-2e-9, -9e-9, 1e-9), "-2.00e-9");
        assert_eq!(range(&[]), (0.0, 1.0));
        let (lo, hi) = range(&[-9e-9, -9e-9]);
        assert!(lo < -9e-9 && hi > -9e-9);
    }
}
