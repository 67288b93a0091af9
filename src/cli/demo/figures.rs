//! The demo's pictures, drawn as plain SVG: `figure1.svg` in the manner of the
//! model-soups paper's Figure 1 (in-distribution test accuracy against the average
//! over the shifted test sets, one point per fine-tuned ingredient, the pretrained
//! starting point and every soup marked), and `greedy.svg`, the greedy soup's
//! accuracy as it takes one ingredient after another.

use std::fmt::Write as _;

use super::evaluate::Scores;
use super::report::SetResult;

/// The plotting area of a chart and the data ranges it shows (in percent).
struct Frame {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn px(&self, v: f64) -> f64 {
        self.left + self.width * (v - self.x.0) / (self.x.1 - self.x.0)
    }

    fn py(&self, v: f64) -> f64 {
        self.top + self.height * (1.0 - (v - self.y.0) / (self.y.1 - self.y.0))
    }

    /// The box, tick marks with their values, grid lines and axis titles.
    fn axes(&self, svg: &mut String, x_title: &str, y_title: &str, x_step: f64, y_step: f64) {
        let (right, bottom) = (self.left + self.width, self.top + self.height);
        for v in ticks(self.x, x_step) {
            let x = self.px(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#e6e6e6"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                self.top,
                bottom + 16.0,
                label(v, x_step)
            );
        }
        for v in ticks(self.y, y_step) {
            let y = self.py(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#e6e6e6"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                self.left,
                self.left - 6.0,
                y + 4.0,
                label(v, y_step)
            );
        }
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"#,
            self.left, self.top, self.width, self.height
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x_title}</text>"#,
            self.left + self.width / 2.0,
            bottom + 38.0
        );
        let (cx, cy) = (self.left - 48.0, self.top + self.height / 2.0);
        let _ = writeln!(
            svg,
            r#"<text x="{cx:.1}" y="{cy:.1}" text-anchor="middle" transform="rotate(-90 {cx:.1} {cy:.1})">{y_title}</text>"#
        );
    }
}

/// Multiples of `step` within `range`.
fn ticks(range: (f64, f64), step: f64) -> Vec<f64> {
    let first = (range.0 / step).ceil() as i64;
    let last = (range.1 / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

fn label(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A step of 1, 2 or 5 times a power of ten giving about five ticks over `span`.
fn nice_step(span: f64) -> f64 {
    let raw = (span / 5.0).max(1e-6);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * power).find(|&s| s >= raw * 0.999).unwrap_or(raw)
}

/// `(low, high)` around `values`, padded, at least `min_span` wide.
fn range(values: impl Iterator<Item = f64>, min_span: f64) -> (f64, f64) {
    let (low, high) =
        values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    if !low.is_finite() {
        return (0.0, 100.0);
    }
    let pad = ((high - low) * 0.08).max(0.5);
    let (low, high) = (low - pad, high + pad);
    let mid = (low + high) / 2.0;
    if high - low < min_span {
        (mid - min_span / 2.0, mid + min_span / 2.0)
    } else {
        (low, high)
    }
}

/// A marker of `shape` centred on (x, y).
fn marker(shape: Shape, x: f64, y: f64, fill: &str, title: &str) -> String {
    let body = match shape {
        Shape::Circle => format!(r#"<circle cx="{x:.1}" cy="{y:.1}" r="5""#),
        Shape::Square => {
            format!(r#"<rect x="{:.1}" y="{:.1}" width="10" height="10""#, x - 5.0, y - 5.0)
        }
        Shape::Diamond => {
            format!(
                r#"<polygon points="{x:.1},{:.1} {:.1},{y:.1} {x:.1},{:.1} {:.1},{y:.1}""#,
                y - 7.0,
                x + 7.0,
                y + 7.0,
                x - 7.0
            )
        }
        Shape::Triangle => {
            format!(
                r#"<polygon points="{x:.1},{:.1} {:.1},{:.1} {:.1},{:.1}""#,
                y - 7.0,
                x + 6.5,
                y + 5.0,
                x - 6.5,
                y + 5.0
            )
        }
        Shape::Star => {
            let points: Vec<String> = (0..10)
                .map(|k| {
                    let r = if k % 2 == 0 { 10.0 } else { 4.2 };
                    let a = std::f64::consts::PI * (k as f64 / 5.0 - 0.5);
                    format!("{:.1},{:.1}", x + r * a.cos(), y + r * a.sin())
                })
                .collect();
            format!(r#"<polygon points="{}""#, points.join(" "))
        }
    };
    format!(
        r#"{body} fill="{fill}" stroke="black" stroke-width="0.8"><title>{title}</title></{}>"#,
        shape.tag()
    )
}

#[derive(Clone, Copy)]
enum Shape {
    Circle,
    Square,
    Diamond,
    Triangle,
    Star,
}

impl Shape {
    fn tag(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "rect",
            _ => "polygon",
        }
    }
}

/// How each row of the table is drawn in figure 1.
fn style(method: &str) -> (Shape, &'static str) {
    match method {
        "best individual" => (Shape::Circle, "#e15759"),
        "uniform" => (Shape::Diamond, "#f28e2b"),
        "greedy" => (Shape::Star, "#d62728"),
        "greedy (random order)" => (Shape::Star, "#ff9da7"),
        "pruned" => (Shape::Triangle, "#59a14f"),
        "pruned (random order)" => (Shape::Triangle, "#a0cbe8"),
        _ => (Shape::Diamond, "#b07aa1"),
    }
}

fn header(svg: &mut String, width: f64, height: f64, title: &str) {
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    let _ =
        writeln!(svg, r#"<text x="10" y="22" font-size="14" font-weight="bold">{title}</text>"#);
}

/// Figure 1: ID test accuracy (x) against average accuracy over the shifts (y).
pub fn id_vs_shift(seed: u64, set: &SetResult, pretrained: &Scores) -> String {
    let pct = |s: &Scores| (100.0 * s.test, 100.0 * s.avg_shift());
    let all: Vec<(f64, f64)> = set
        .ingredients
        .iter()
        .map(|p| pct(&p.scores))
        .chain(set.rows.iter().map(|r| pct(&r.scores)))
        .chain([pct(pretrained)])
        .collect();
    let frame = Frame {
        left: 70.0,
        top: 40.0,
        width: 480.0,
        height: 360.0,
        x: range(all.iter().map(|p| p.0), 4.0),
        y: range(all.iter().map(|p| p.1), 4.0),
    };
    let mut svg = String::new();
    header(
        &mut svg,
        780.0,
        460.0,
        &format!("soup demo (seed {seed}): fine-tuned ingredients and their soups"),
    );
    frame.axes(
        &mut svg,
        "ID test accuracy (%)",
        "average accuracy over the shifted test sets (%)",
        nice_step(frame.x.1 - frame.x.0),
        nice_step(frame.y.1 - frame.y.0),
    );
    let place = |s: &Scores| (frame.px(100.0 * s.test), frame.py(100.0 * s.avg_shift()));
    for point in &set.ingredients {
        let (x, y) = place(&point.scores);
        let _ = writeln!(svg, "{}", marker(Shape::Circle, x, y, "#9ecae1", &point.name));
    }
    let (x, y) = place(pretrained);
    let _ =
        writeln!(svg, "{}", marker(Shape::Square, x, y, "#555555", "pretrained + linear probe"));
    for row in &set.rows {
        let (shape, fill) = style(&row.method);
        let (x, y) = place(&row.scores);
        let _ = writeln!(svg, "{}", marker(shape, x, y, fill, &row.method));
    }
    let legend_x = frame.left + frame.width + 30.0;
    let mut entries: Vec<(Shape, &str, String)> = vec![
        (Shape::Circle, "#9ecae1", "fine-tuned ingredient".to_owned()),
        (Shape::Square, "#555555", "pretrained + linear probe".to_owned()),
    ];
    for row in &set.rows {
        let (shape, fill) = style(&row.method);
        let name = if row.method == "best individual" {
            "best individual (on val)".to_owned()
        } else {
            format!("{} soup", row.method)
        };
        entries.push((shape, fill, name));
    }
    for (k, (shape, fill, name)) in entries.iter().enumerate() {
        let y = frame.top + 12.0 + 24.0 * k as f64;
        let _ = writeln!(svg, "{}", marker(*shape, legend_x, y, fill, name));
        let _ =
            writeln!(svg, r#"<text x="{:.1}" y="{:.1}">{name}</text>"#, legend_x + 16.0, y + 4.0);
    }
    svg.push_str("</svg>\n");
    svg
}

/// A line of the greedy chart: its name, colour, and the accuracy it shows.
type Series = (&'static str, &'static str, fn(&Scores) -> f64);

/// The greedy soup as it grows: val, ID test and average-shift accuracy against
/// the number of ingredients it holds, the uniform soup's as dashed lines.
pub fn greedy_growth(seed: u64, set: &SetResult) -> String {
    let series: [Series; 3] = [
        ("val", "#4e79a7", |s| s.val),
        ("ID test", "#f28e2b", |s| s.test),
        ("avg shift", "#59a14f", Scores::avg_shift),
    ];
    let uniform = set.row("uniform").map(|r| r.scores.clone());
    let n = set.greedy_path.len().max(1);
    let values = set
        .greedy_path
        .iter()
        .chain(uniform.iter())
        .flat_map(|s| series.iter().map(move |(_, _, f)| 100.0 * f(s)));
    let frame = Frame {
        left: 70.0,
        top: 40.0,
        width: 480.0,
        height: 320.0,
        x: (0.5, n as f64 + 0.5),
        y: range(values, 4.0),
    };
    let mut svg = String::new();
    let title = format!(
        "soup demo (seed {seed}): the greedy soup, one ingredient at a time ({} of {} taken)",
        set.greedy_path.len(),
        set.ingredients.len()
    );
    header(&mut svg, 720.0, 420.0, &title);
    frame.axes(
        &mut svg,
        "ingredients in the greedy soup",
        "accuracy (%)",
        nice_step(n as f64).max(1.0),
        nice_step(frame.y.1 - frame.y.0),
    );
    for (k, (name, colour, value)) in series.iter().enumerate() {
        let points: Vec<String> = set
            .greedy_path
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!("{:.1},{:.1}", frame.px(i as f64 + 1.0), frame.py(100.0 * value(s)))
            })
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            points.join(" ")
        );
        for (i, s) in set.greedy_path.iter().enumerate() {
            let (x, y) = (frame.px(i as f64 + 1.0), frame.py(100.0 * value(s)));
            let _ = writeln!(
                svg,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{colour}"><title>{name}, {} ingredient(s): {:.1}%</title></circle>"#,
                i + 1,
                100.0 * value(s)
            );
        }
        if let Some(u) = &uniform {
            let y = frame.py(100.0 * value(u));
            let _ = writeln!(
                svg,
                r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-dasharray="5 4"/>"#,
                frame.left,
                frame.left + frame.width
            );
        }
        let ly = frame.top + 12.0 + 22.0 * k as f64;
        let lx = frame.left + frame.width + 20.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0
        );
    }
    let ly = frame.top + 12.0 + 22.0 * series.len() as f64;
    let lx = frame.left + frame.width + 20.0;
    let _ = writeln!(
        svg,
        r##"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="#555555" stroke-dasharray="5 4"/><text x="{:.1}" y="{:.1}">uniform soup</text>"##,
        lx + 22.0,
        lx + 28.0,
        ly + 4.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        assert_eq!(nice_step(12.0), 5.0);
        assert_eq!(nice_step(4.0), 1.0);
        assert_eq!(nice_step(10.0), 2.0);
        assert_eq!(nice_step(0.9), 0.2);
        assert_eq!(ticks((61.3, 72.8), 5.0), vec![65.0, 70.0]);
        let (low, high) = range([70.0, 70.2].into_iter(), 4.0);
        assert!((high - low - 4.0).abs() < 1e-9 && low < 70.0 && high > 70.2);
    }
}
