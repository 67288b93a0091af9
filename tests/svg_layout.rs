//! The SVG pictures `soup` draws, laid out by a real browser: headless Chromium
//! renders each one and reports every text, square and line's box, and the test
//! fails when anything reaches outside the picture (a clipped title or label) or
//! when a band of the picture is left empty.
//!
//! Needs Chromium (Debian's `chromium` package): `.ci/run` installs it and runs
//! these tests with `--ignored`; without it they fail, they never skip.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{s, soup_ok, write_checkpoint, Fmt, RawTensor, Rng};

/// The script run in the page: the picture's size, every drawn element that
/// reaches outside it, and the tallest horizontal band with nothing drawn in it.
const PROBE: &str = r#"
const svg = document.querySelector('svg');
const box = svg.getBoundingClientRect();
const outside = [];
const spans = [];
for (const el of svg.querySelectorAll('text, rect, line')) {
  const r = el.getBoundingClientRect();
  if (r.width === 0 && r.height === 0) continue;
  const at = {left: r.left - box.left, top: r.top - box.top,
              right: r.right - box.left, bottom: r.bottom - box.top};
  if (at.left < -0.5 || at.top < -0.5 || at.right > box.width + 0.5 || at.bottom > box.height + 0.5) {
    outside.push({tag: el.tagName, text: el.textContent.slice(0, 80), ...at});
  }
  if (!(at.top <= 0.5 && at.bottom >= box.height - 0.5)) spans.push([at.top, at.bottom]);
}
spans.sort((a, b) => a[0] - b[0]);
let reached = 0, gap = 0, gapAt = 0;
for (const [top, bottom] of spans) { if (top - reached > gap) { gap = top - reached; gapAt = reached; } reached = Math.max(reached, bottom); }
if (box.height - reached > gap) { gap = box.height - reached; gapAt = reached; }
const pre = document.createElement('pre');
pre.id = 'probe';
pre.textContent = JSON.stringify({width: box.width, height: box.height, outside, gap, gapAt});
document.body.appendChild(pre);
"#;

struct Layout {
    outside: Vec<serde_json::Value>,
    /// The tallest empty band, and the y at which it starts.
    gap: f64,
    gap_at: f64,
    height: f64,
}

fn chromium() -> String {
    std::env::var("SOUP_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

/// Renders `svg` in headless Chromium and reads the probe's answer.
fn layout(svg: &Path, scratch: &Path) -> Layout {
    let page = scratch.join(format!("{}.html", svg.file_stem().unwrap().to_string_lossy()));
    let html = format!(
        "<!doctype html><html><body style=\"margin:0\">{}<script>{PROBE}</script></body></html>",
        fs::read_to_string(svg).unwrap()
    );
    fs::write(&page, html).unwrap();
    let profile = scratch.join("chromium-profile");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| panic!("cannot start {} (Debian package chromium): {e}", chromium()));
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom.find("<pre id=\"probe\">").unwrap_or_else(|| {
        panic!(
            "Chromium gave no layout for {}:\n{}",
            svg.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let json = &dom[start + "<pre id=\"probe\">".len()..];
    let json = &json[..json.find("</pre>").unwrap()];
    let json = json
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    Layout {
        outside: v["outside"].as_array().unwrap().clone(),
        gap: v["gap"].as_f64().unwrap(),
        gap_at: v["gapAt"].as_f64().unwrap(),
        height: v["height"].as_f64().unwrap(),
    }
}

fn model(dir: &Path, name: &str, base: &[f64], seed: u64) -> PathBuf {
    let mut rng = Rng::new(seed);
    let values: Vec<f64> = base.iter().map(|b| b + 0.3 * rng.value()).collect();
    let path = dir.join(name);
    write_checkpoint(
        &path,
        &[
            RawTensor::float("model.layers.0.weight", Fmt::F32, &[32, 40], &values[..1280]),
            RawTensor::float("model.layers.1.weight", Fmt::F32, &[32, 40], &values[1280..]),
        ],
        &[],
        true,
    );
    path
}

fn assert_fits(svg: &Path, scratch: &Path) {
    let l = layout(svg, scratch);
    assert!(l.outside.is_empty(), "{} draws outside its box: {:#?}", svg.display(), l.outside);
    assert!(
        l.gap < 48.0,
        "{} leaves an empty band {:.0} px tall at y = {:.0} (of {:.0})",
        svg.display(),
        l.gap,
        l.gap_at,
        l.height
    );
}

#[test]
#[ignore = "needs Chromium: .ci/run installs it and runs this with --ignored"]
fn angle_heatmaps_fit_their_picture_at_every_size() {
    let dir = common::tempdir();
    let mut rng = Rng::new(11);
    let base: Vec<f64> = (0..2560).map(|_| rng.value()).collect();
    let pre =
        model(dir.path(), "pretrained-base-model-with-a-rather-long-directory-name", &base, 0);
    let names = [
        "a",
        "fine-tune-lr3e-5",
        "runs/sweep-2024-06-01/lr=0.00003,wd=0.1,warmup=500,seed=1234/checkpoint-best",
    ];
    let mut paths = Vec::new();
    for i in 0..12 {
        let name = match names.get(i) {
            Some(name) => name.replace('/', "-"),
            None => format!("ft-seed{i}-{}", "x".repeat(i * 3)),
        };
        paths.push(model(dir.path(), &name, &base, i as u64 + 1));
    }
    for k in [1, 2, 3, 12] {
        for with_base in [false, true] {
            let svg = dir.path().join(format!("angles-{k}-{with_base}.svg"));
            let mut args: Vec<&str> = vec!["angles"];
            args.extend(paths[..k].iter().map(|p| s(p)));
            if with_base {
                args.extend(["--base", s(&pre)]);
            }
            args.extend(["--svg", s(&svg), "--quiet"]);
            soup_ok(&args);
            assert_fits(&svg, dir.path());
        }
    }
}

#[test]
#[ignore = "needs Chromium: .ci/run installs it and runs this with --ignored"]
fn the_probe_sees_a_clipped_label() {
    // The check itself: a picture whose text runs off its right edge, and one
    // with an empty band, are caught.
    let dir = common::tempdir();
    let clipped = dir.path().join("clipped.svg");
    fs::write(
        &clipped,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="100" height="60" viewBox="0 0 100 60"><text x="60" y="30">far too long a label</text></svg>"#,
    )
    .unwrap();
    let l = layout(&clipped, dir.path());
    assert_eq!(l.outside.len(), 1, "{:?}", l.outside);
    let banded = dir.path().join("banded.svg");
    fs::write(
        &banded,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="100" height="300" viewBox="0 0 100 300"><text x="5" y="20">top</text><text x="5" y="290">bottom</text></svg>"#,
    )
    .unwrap();
    assert!(layout(&banded, dir.path()).gap > 200.0);
}
