//! `soup angles` and the statistics pass behind it: angles against an f64
//! reference, exact 0°/90°/180° constructions, layer groups, determinism across
//! threads and chunk sizes, and the CLI's table, CSV, JSON and SVG.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use modelsoup::analysis::angles::{angles, Angles};
use modelsoup::{Checkpoint, RunOptions};

/// Writes one checkpoint of named tensors with the given values and formats.
fn write(dir: &Path, name: &str, tensors: &[(&str, Fmt, Vec<usize>, Vec<f64>)]) -> PathBuf {
    let raw: Vec<RawTensor> =
        tensors.iter().map(|(n, f, shape, v)| RawTensor::float(n, *f, shape, v)).collect();
    let path = dir.join(name);
    write_checkpoint(&path, &raw, &[], true);
    path
}

fn open(paths: &[PathBuf]) -> Vec<Checkpoint> {
    paths.iter().map(|p| Checkpoint::open(p).unwrap()).collect()
}

fn run_angles(
    base: Option<&Path>,
    ingredients: &[PathBuf],
    per_layer: bool,
    threads: usize,
    chunk: usize,
) -> Angles {
    let base = base.map(|b| Checkpoint::open(b).unwrap());
    let run = RunOptions { threads, chunk_elements: chunk, ..RunOptions::default() };
    angles(base.as_ref(), &open(ingredients), per_layer, &run).unwrap()
}

/// The values a checkpoint holds after encoding, decoded exactly, concatenated in
/// tensor order (as the reference reads them).
fn decoded(tensors: &[(&str, Fmt, Vec<usize>, Vec<f64>)]) -> Vec<f64> {
    tensors.iter().flat_map(|(_, f, _, v)| v.iter().flat_map(|&x| f.decode(&f.encode(x)))).collect()
}

fn reference_angle(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    (dot / (na * nb)).clamp(-1.0, 1.0).acos().to_degrees()
}

#[test]
fn angles_match_an_f64_reference_on_random_data_in_every_format() {
    let dir = tempdir();
    let mut rng = Rng::new(7);
    let shapes: [(&str, Vec<usize>); 3] =
        [("a.weight", vec![37, 29]), ("b.weight", vec![1000]), ("c.bias", vec![3])];
    let base_values: Vec<Vec<f64>> = shapes
        .iter()
        .map(|(_, s)| (0..s.iter().product()).map(|_| rng.value()).collect())
        .collect();
    let mut models = Vec::new();
    for (m, fmt) in [Fmt::F32, Fmt::BF16, Fmt::F16, Fmt::F64, Fmt::F32].iter().enumerate() {
        let tensors: Vec<(&str, Fmt, Vec<usize>, Vec<f64>)> = shapes
            .iter()
            .zip(&base_values)
            .map(|((n, s), base)| {
                let values = if m == 0 {
                    base.clone()
                } else {
                    base.iter().map(|&x| x + 0.1 * rng.value()).collect()
                };
                (*n, *fmt, s.clone(), values)
            })
            .collect();
        models.push(tensors);
    }
    let paths: Vec<PathBuf> =
        models.iter().enumerate().map(|(m, t)| write(dir.path(), &format!("m{m}"), t)).collect();
    let values: Vec<Vec<f64>> = models.iter().map(|t| decoded(t)).collect();
    let deltas: Vec<Vec<f64>> = values[1..]
        .iter()
        .map(|v| v.iter().zip(&values[0]).map(|(x, b)| x - b).collect())
        .collect();
    let base_norm: f64 = values[0].iter().map(|x| x * x).sum::<f64>().sqrt();

    let with_base = run_angles(Some(&paths[0]), &paths[1..], false, 2, 100);
    assert!(with_base.relative_to_base);
    let m = &with_base.overall;
    for i in 0..4 {
        let norm: f64 = deltas[i].iter().map(|x| x * x).sum::<f64>().sqrt();
        let rel = m.delta_norms.as_ref().unwrap()[i];
        assert!((rel - norm / base_norm).abs() <= 1e-12 * rel, "delta norm {i}");
        for j in 0..4 {
            let want = if i == j { 0.0 } else { reference_angle(&deltas[i], &deltas[j]) };
            assert!(
                (m.angles_deg[i][j] - want).abs() < 1e-9,
                "({i},{j}): {} vs {want}",
                m.angles_deg[i][j]
            );
        }
    }
    assert_eq!(m.parameters, 37 * 29 + 1000 + 3);

    let raw = run_angles(None, &paths, false, 1, 64);
    assert!(!raw.relative_to_base);
    assert!(raw.overall.delta_norms.is_none());
    for i in 0..5 {
        for j in 0..5 {
            let want = if i == j { 0.0 } else { reference_angle(&values[i], &values[j]) };
            assert!((raw.overall.angles_deg[i][j] - want).abs() < 1e-9, "raw ({i},{j})");
        }
    }
}

#[test]
fn results_are_identical_at_any_thread_count() {
    let dir = tempdir();
    let mut rng = Rng::new(11);
    let paths: Vec<PathBuf> = (0..4)
        .map(|m| {
            let v: Vec<f64> = (0..50_000).map(|_| rng.value()).collect();
            write(dir.path(), &format!("m{m}"), &[("w", Fmt::BF16, vec![50_000], v)])
        })
        .collect();
    let one = run_angles(Some(&paths[0]), &paths[1..], false, 1, 4096);
    for threads in [2, 3, 8] {
        let many = run_angles(Some(&paths[0]), &paths[1..], false, threads, 4096);
        assert_eq!(one, many, "threads {threads}");
    }
}

#[test]
fn constructed_parallel_orthogonal_and_opposite_deltas() {
    let dir = tempdir();
    let mut rng = Rng::new(3);
    let n = 4096;
    // Small integers: every value and difference is exact in f32.
    let base: Vec<f64> = (0..n).map(|_| (rng.below(200) as f64) - 100.0).collect();
    let u: Vec<f64> =
        (0..n).map(|i| if i < n / 2 { (rng.below(9) as f64) - 4.0 } else { 0.0 }).collect();
    let v: Vec<f64> =
        (0..n).map(|i| if i >= n / 2 { (rng.below(9) as f64) - 4.0 } else { 0.0 }).collect();
    let model = |name: &str, delta: &dyn Fn(usize) -> f64| {
        let values: Vec<f64> = (0..n).map(|i| base[i] + delta(i)).collect();
        write(dir.path(), name, &[("w", Fmt::F32, vec![64, 64], values)])
    };
    let paths = [
        model("base", &|_| 0.0),
        model("u", &|i| u[i]),
        model("two-u", &|i| 2.0 * u[i]),
        model("v", &|i| v[i]),
        model("minus-u", &|i| -u[i]),
    ];
    let result = run_angles(Some(&paths[0]), &paths[1..], false, 2, 1000);
    let a = &result.overall.angles_deg;
    let close = |x: f64, want: f64| (x - want).abs() < 1e-5;
    assert!(close(a[0][1], 0.0), "parallel: {}", a[0][1]);
    assert!(close(a[0][2], 90.0), "orthogonal: {}", a[0][2]);
    assert!(close(a[1][2], 90.0), "orthogonal: {}", a[1][2]);
    assert!(close(a[0][3], 180.0), "opposite: {}", a[0][3]);
    let norms = result.overall.delta_norms.as_ref().unwrap();
    assert!((norms[1] / norms[0] - 2.0).abs() < 1e-12);
}

#[test]
fn per_layer_groups_follow_the_tensor_names() {
    let dir = tempdir();
    let mut rng = Rng::new(5);
    let names = [
        "model.embed_tokens.weight",
        "model.layers.0.w",
        "model.layers.1.w",
        "model.layers.10.w",
        "lm_head.weight",
    ];
    let base: Vec<Vec<f64>> =
        names.iter().map(|_| (0..256).map(|_| rng.value()).collect()).collect();
    let noise: Vec<Vec<f64>> =
        names.iter().map(|_| (0..256).map(|_| rng.value()).collect()).collect();
    // Ingredient a moves every tensor by `noise`; b moves layer 1 by the same noise
    // (0° there) and the other tensors by its negation (180°).
    let make = |name: &str, sign: &dyn Fn(usize) -> f64| {
        let tensors: Vec<(&str, Fmt, Vec<usize>, Vec<f64>)> = names
            .iter()
            .enumerate()
            .map(|(t, n)| {
                let values = base[t].iter().zip(&noise[t]).map(|(b, d)| b + sign(t) * d).collect();
                (*n, Fmt::F64, vec![16, 16], values)
            })
            .collect();
        write(dir.path(), name, &tensors)
    };
    let paths = [
        make("base", &|_| 0.0),
        make("a", &|_| 1.0),
        make("b", &|t| if t == 2 { 1.0 } else { -1.0 }),
    ];
    let result = run_angles(Some(&paths[0]), &paths[1..], true, 2, 100);
    let labels: Vec<&str> = result.layers.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(
        labels,
        ["embeddings", "model.layers.0", "model.layers.1", "model.layers.10", "rest"]
    );
    for layer in &result.layers {
        let want = if layer.label == "model.layers.1" { 0.0 } else { 180.0 };
        assert!(
            (layer.angles_deg[0][1] - want).abs() < 1e-5,
            "{}: {}",
            layer.label,
            layer.angles_deg[0][1]
        );
        assert_eq!(layer.tensors, 1);
        assert_eq!(layer.parameters, 256);
    }
}

/// Three fine-tunes of one base, as directories.
fn three_fine_tunes(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let mut rng = Rng::new(9);
    let names = ["embeddings.word.weight", "encoder.layer.0.w", "encoder.layer.1.w", "head.weight"];
    let base: Vec<Vec<f64>> =
        names.iter().map(|_| (0..1024).map(|_| rng.value()).collect()).collect();
    let model = |name: &str, rng: &mut Rng, scale: f64| {
        let tensors: Vec<(&str, Fmt, Vec<usize>, Vec<f64>)> = names
            .iter()
            .zip(&base)
            .map(|(n, b)| {
                (*n, Fmt::BF16, vec![32, 32], b.iter().map(|x| x + scale * rng.value()).collect())
            })
            .collect();
        write(dir, name, &tensors)
    };
    let base_path = model("base", &mut rng, 0.0);
    let runs = ["run,a", "run-b", "run-c"].iter().map(|n| model(n, &mut rng, 0.05)).collect();
    (base_path, runs)
}

#[test]
fn cli_json_has_names_angles_norms_and_layers() {
    let dir = tempdir();
    let (base, runs) = three_fine_tunes(dir.path());
    let mut args = vec!["angles", "--base", s(&base), "--per-layer", "--format", "json"];
    args.extend(runs.iter().map(|p| s(p)));
    let out = soup_ok(&args);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["measure"], "delta_angle");
    assert_eq!(doc["names"].as_array().unwrap().len(), 3);
    let angles = doc["angles_deg"].as_array().unwrap();
    assert_eq!(angles.len(), 3);
    assert!(angles.iter().all(|row| row.as_array().unwrap().len() == 3));
    assert_eq!(doc["delta_norms"].as_array().unwrap().len(), 3);
    let layers = doc["layers"].as_array().unwrap();
    let labels: Vec<&str> = layers.iter().map(|l| l["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["embeddings", "encoder.layer.0", "encoder.layer.1", "rest"]);
    assert!(layers.iter().all(|l| l["angles_deg"].as_array().unwrap().len() == 3));
    // Independent noise of one size: the deltas are nearly orthogonal.
    let a01 = angles[0][1].as_f64().unwrap();
    assert!((80.0..100.0).contains(&a01), "{a01}");
}

#[test]
fn cli_table_and_csv() {
    let dir = tempdir();
    let (base, runs) = three_fine_tunes(dir.path());
    let mut args = vec!["angles", "--base", s(&base)];
    args.extend(runs.iter().map(|p| s(p)));
    let table = String::from_utf8(soup_ok(&args).stdout).unwrap();
    assert!(table.contains("Angles between fine-tuned deltas"), "{table}");
    assert!(table.contains("‖θi−θ0‖/‖θ0‖"), "{table}");

    args.extend(["--per-layer", "--format", "csv"]);
    let csv = String::from_utf8(soup_ok(&args).stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("group,ingredient,\""),
        "names with commas are quoted: {}",
        lines[0]
    );
    assert!(lines[0].ends_with(",delta_norm"));
    assert_eq!(lines.len(), 1 + 3 * 5, "header + 3 rows for all and each of 4 groups");
    assert!(lines[1].starts_with("all,\""));
}

#[test]
fn cli_without_base_is_labelled_raw_weight_similarity() {
    let dir = tempdir();
    let (_, runs) = three_fine_tunes(dir.path());
    let mut args = vec!["angles", "--format", "json"];
    args.extend(runs.iter().map(|p| s(p)));
    let doc: serde_json::Value = serde_json::from_slice(&soup_ok(&args).stdout).unwrap();
    assert_eq!(doc["measure"], "raw_weight_angle");
    assert!(doc["delta_norms"].is_null());
    args.truncate(1);
    args.extend(runs.iter().map(|p| s(p)));
    let table = String::from_utf8(soup_ok(&args).stdout).unwrap();
    assert!(table.starts_with("Raw-weight angles"), "{table}");
}

#[test]
fn cli_svg_is_well_formed_xml_with_one_cell_per_pair() {
    let dir = tempdir();
    let (base, runs) = three_fine_tunes(dir.path());
    let svg_path = dir.path().join("angles.svg");
    let mut args = vec!["angles", "--base", s(&base), "--svg", s(&svg_path)];
    args.extend(runs.iter().map(|p| s(p)));
    soup_ok(&args);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let elements = xml::parse(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
    assert_eq!(elements[0].0, "svg");
    let cells: Vec<&(String, Vec<(String, String)>)> = elements
        .iter()
        .filter(|(tag, attrs)| {
            tag == "rect" && attrs.iter().any(|(k, v)| k == "class" && v == "cell")
        })
        .collect();
    assert_eq!(cells.len(), 9);
    let mut pairs: Vec<(String, String)> = cells
        .iter()
        .map(|(_, a)| {
            let get = |k: &str| a.iter().find(|(n, _)| n == k).unwrap().1.clone();
            (get("data-i"), get("data-j"))
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), 9, "one cell per (i, j)");
    assert!(svg.contains("run,a"), "labels name the ingredients");
    assert!(elements.iter().any(|(tag, _)| tag == "linearGradient"), "a colour scale");
}

/// A small XML well-formedness check: tags nest, attributes are quoted, text has
/// no raw `<` or stray `&`. Returns every element's tag and attributes in order.
mod xml {
    type Element = (String, Vec<(String, String)>);

    pub fn parse(text: &str) -> Result<Vec<Element>, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut elements = Vec::new();
        let mut rest = text.trim_start();
        let mut roots = 0;
        while !rest.is_empty() {
            if let Some(tail) = rest.strip_prefix('<') {
                let end = tail.find('>').ok_or("unterminated tag")?;
                let tag = &tail[..end];
                rest = &tail[end + 1..];
                if let Some(name) = tag.strip_prefix('/') {
                    let open = stack.pop().ok_or("close without open")?;
                    if open != name.trim() {
                        return Err(format!("</{name}> closes <{open}>"));
                    }
                    continue;
                }
                let self_closing = tag.ends_with('/');
                let body = tag.trim_end_matches('/');
                let (name, attrs) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
                if name.is_empty()
                    || !name.chars().all(|c| c.is_alphanumeric() || c == '-' || c == ':')
                {
                    return Err(format!("bad tag name {name:?}"));
                }
                if stack.is_empty() {
                    roots += 1;
                }
                elements.push((name.to_owned(), attributes(attrs)?));
                if !self_closing {
                    stack.push(name.to_owned());
                }
            } else {
                let end = rest.find('<').unwrap_or(rest.len());
                text_ok(&rest[..end])?;
                if stack.is_empty() && !rest[..end].trim().is_empty() {
                    return Err("text outside the root".into());
                }
                rest = &rest[end..];
            }
        }
        if !stack.is_empty() || roots != 1 {
            return Err(format!("unclosed {stack:?} or {roots} roots"));
        }
        Ok(elements)
    }

    fn attributes(mut s: &str) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        loop {
            s = s.trim_start();
            if s.is_empty() {
                return Ok(out);
            }
            let eq = s.find('=').ok_or_else(|| format!("attribute without value: {s:?}"))?;
            let name = s[..eq].trim();
            let after = &s[eq + 1..];
            let quote = after
                .chars()
                .next()
                .filter(|c| *c == '"' || *c == '\'')
                .ok_or("unquoted attribute")?;
            let close = after[1..].find(quote).ok_or("unterminated attribute")?;
            let value = &after[1..1 + close];
            if value.contains('<') {
                return Err(format!("raw < in attribute {name}"));
            }
            text_ok(value)?;
            if out.iter().any(|(n, _)| n == name) {
                return Err(format!("duplicate attribute {name}"));
            }
            out.push((name.to_owned(), value.to_owned()));
            s = &after[close + 2..];
        }
    }

    fn text_ok(text: &str) -> Result<(), String> {
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
            if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity) {
                return Err(format!("stray & in {text:?}"));
            }
        }
        Ok(())
    }
}
