//! The angle matrix drawn as a labelled SVG heatmap: one square per pair coloured
//! by its angle, the ingredients' names on both axes, a colour scale, and the
//! values written in the squares while they are large enough to read.

use std::fmt::Write;

/// Colour stops of the scale (viridis, dark at 0° to yellow at the top).
const STOPS: [(u8, u8, u8); 5] =
    [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)];

/// Up to this many ingredients the squares carry their values.
const MAX_LABELLED: usize = 12;

/// Font sizes of labels and titles, in px.
const LABEL_PX: f64 = 12.0;
const TITLE_PX: f64 = 14.0;

/// The title's band at the top.
const TITLE_HEIGHT: usize = 30;

/// The colour bar, its ticks and their labels ("180°").
const LEGEND_WIDTH: usize = 64;

/// Advance widths of the printable ASCII characters in DejaVu Sans, the
/// `sans-serif` of most Linux systems and wider than Helvetica or Arial, in
/// thousandths of the font size (from the space, 32, to the tilde, 126).
const ADVANCE: [u16; 95] = [
    318, 401, 460, 838, 636, 950, 780, 275, 390, 390, 500, 838, 318, 361, 318, 337, // ' '../
    636, 636, 636, 636, 636, 636, 636, 636, 636, 636, 337, 337, 838, 838, 838, 531, // 0..?
    1000, 684, 686, 698, 770, 632, 575, 775, 752, 295, 295, 656, 557, 863, 748, 787, // @..O
    603, 787, 695, 635, 611, 732, 684, 989, 685, 611, 685, 390, 337, 390, 838, 500, // P.._
    500, 613, 635, 550, 635, 615, 352, 635, 634, 278, 278, 579, 278, 974, 634, 612, // `..o
    635, 635, 411, 521, 392, 634, 592, 818, 592, 592, 525, 636, 337, 636, 838, // p..~
];

/// The width in px of `text` set in `size` px sans-serif (bold: 10% wider), as
/// DejaVu Sans sets it; other fonts are narrower, so the layout never clips
/// (checked in a real browser by tests/svg_layout.rs).
pub fn text_width(text: &str, size: f64, bold: bool) -> usize {
    let thousandths: u32 = text
        .chars()
        .map(|c| match c {
            ' '..='~' => u32::from(ADVANCE[c as usize - 32]),
            _ => 700,
        })
        .sum();
    let scale = if bold { 1.1 } else { 1.0 };
    (f64::from(thousandths) * size * scale / 1000.0).ceil() as usize
}

/// An SVG document showing `angles` (k × k, degrees; NaN where undefined) for
/// ingredients `names`, titled `title`.
pub fn heatmap(title: &str, names: &[String], angles: &[Vec<f64>]) -> String {
    let k = names.len();
    let cell = (640 / k.max(1)).clamp(14, 64);
    let labels: Vec<String> = names.iter().map(|n| escape(&shorten(n))).collect();
    // Room for the longest label: beside the rows, and above the columns, where
    // the labels are turned 45° and so reach up and right by length / √2.
    let label_width =
        names.iter().map(|n| text_width(&shorten(n), LABEL_PX, false)).max().unwrap_or(0);
    let slant = (label_width as f64 * std::f64::consts::FRAC_1_SQRT_2).ceil() as usize;
    let (left, top) = (label_width + 16, TITLE_HEIGHT + slant + 12);
    let grid = cell * k;
    let legend_x = left + grid + 30;
    let right = [
        legend_x + LEGEND_WIDTH,
        left + grid.saturating_sub(cell / 2) + slant + 12,
        text_width(title, TITLE_PX, true) + 20,
    ];
    let width = right.into_iter().max().unwrap_or(0);
    let height = top + grid.max(200) + 20;
    let top_angle = angles
        .iter()
        .flatten()
        .filter(|a| a.is_finite())
        .fold(90.0_f64, |m, &a| m.max(a))
        .min(180.0);
    let scale_max = (top_angle / 10.0).ceil() * 10.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for (i, short) in labels.iter().enumerate() {
        let y = top + i * cell + cell / 2;
        let x = left + i * cell + cell / 2;
        let _ = writeln!(
            svg,
            r#"<text class="row-label" x="{}" y="{y}" text-anchor="end" dominant-baseline="middle">{short}</text>"#,
            left - 6
        );
        let _ = writeln!(
            svg,
            r#"<text class="col-label" transform="translate({x},{}) rotate(-45)" text-anchor="start">{short}</text>"#,
            top - 6
        );
    }
    for (i, row) in angles.iter().enumerate() {
        for (j, &a) in row.iter().enumerate() {
            let (x, y) = (left + j * cell, top + i * cell);
            let fill = if a.is_finite() { colour(a / scale_max) } else { "#cccccc".to_owned() };
            let value = if a.is_finite() { format!("{a:.1}°") } else { "undefined".to_owned() };
            let _ = writeln!(
                svg,
                r#"<rect class="cell" data-i="{i}" data-j="{j}" x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="white"><title>{} vs {}: {value}</title></rect>"#,
                escape(&names[i]),
                escape(&names[j])
            );
            if k <= MAX_LABELLED && cell >= 28 && a.is_finite() {
                let ink = if a / scale_max > 0.6 { "black" } else { "white" };
                let _ = writeln!(
                    svg,
                    r#"<text x="{}" y="{}" text-anchor="middle" dominant-baseline="middle" fill="{ink}" font-size="{}">{a:.1}</text>"#,
                    x + cell / 2,
                    y + cell / 2,
                    (cell / 4).clamp(8, 13)
                );
            }
        }
    }
    legend(&mut svg, legend_x, top, grid.max(200), scale_max);
    svg.push_str("</svg>\n");
    svg
}

/// A vertical colour bar from 0° (top) to `scale_max` (bottom) with ticks.
fn legend(svg: &mut String, x: usize, top: usize, height: usize, scale_max: f64) {
    let _ = writeln!(svg, r#"<defs><linearGradient id="scale" x1="0" y1="0" x2="0" y2="1">"#);
    for (n, _) in STOPS.iter().enumerate() {
        let t = n as f64 / (STOPS.len() - 1) as f64;
        let _ = writeln!(svg, r#"<stop offset="{t}" stop-color="{}"/>"#, colour(t));
    }
    let _ = writeln!(svg, "</linearGradient></defs>");
    let _ = writeln!(
        svg,
        r#"<rect class="legend" x="{x}" y="{top}" width="16" height="{height}" fill="url(#scale)" stroke="black" stroke-width="0.5"/>"#
    );
    let ticks = (scale_max / 30.0).round().max(1.0) as usize;
    for n in 0..=ticks {
        let value = scale_max * n as f64 / ticks as f64;
        let y = top as f64 + height as f64 * n as f64 / ticks as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="black"/><text x="{}" y="{y:.1}" dominant-baseline="middle">{value:.0}°</text>"#,
            x + 16,
            x + 20,
            x + 24
        );
    }
}

/// The colour at `t` in 0..=1 along [`STOPS`], as `#rrggbb`.
fn colour(t: f64) -> String {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let scaled = t * (STOPS.len() - 1) as f64;
    let n = (scaled.floor() as usize).min(STOPS.len() - 2);
    let f = scaled - n as f64;
    let (a, b) = (STOPS[n], STOPS[n + 1]);
    let mix = |x: u8, y: u8| (f64::from(x) + (f64::from(y) - f64::from(x)) * f).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Long names keep their end, where the run's distinguishing part usually is.
fn shorten(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= 40 {
        name.to_owned()
    } else {
        format!("…{}", chars[chars.len() - 39..].iter().collect::<String>())
    }
}

/// Text and attribute values with the XML special characters escaped.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_run_from_the_first_stop_to_the_last() {
        assert_eq!(colour(0.0), "#440154");
        assert_eq!(colour(1.0), "#fde725");
        assert_eq!(colour(2.0), "#fde725");
        assert_eq!(colour(f64::NAN), "#440154");
    }

    #[test]
    fn names_are_escaped() {
        let svg = heatmap("t", &["a<&>\"b".to_owned()], &[vec![0.0]]);
        assert!(svg.contains("a&lt;&amp;&gt;&quot;b"));
        assert_eq!(svg.matches(r#"class="cell""#).count(), 1);
    }
}
