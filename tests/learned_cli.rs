//! `soup learned` end to end, as a user runs it: the built binary and a real
//! evaluator process (tests/evaluators/distance.py, Python 3 stdlib only) that
//! scores a candidate by −‖soup − target‖, where the target is a known mix of the
//! ingredients (one mix per layer group when the target differs per group). The
//! optimum is then inside the simplex, at the target's coefficients, and the
//! search must get close to it within its budget. Also: the budget's accounting,
//! determinism (seeds, --jobs), SIGKILL and resume, --init greedy and --minimize.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::cli::*;
use common::mixture::Mixture;
use common::{read_output, read_safetensors, Fmt};
use serde_json::Value;

const EVALUATOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/evaluators/distance.py");

// ---------------------------------------------------------------------------
// The ingredients and a target that is a known mix of them (common::mixture),
// scored by their distance
// ---------------------------------------------------------------------------

impl Mixture {
    /// ‖soup − target‖ over the tensors in name order, accumulated element by
    /// element as the evaluator does (so that it gets the same bits).
    fn distance(&self, soup: &[Vec<f64>]) -> f64 {
        let target = self.mix(&self.target);
        let mut acc = 0.0;
        for (s, t) in soup.iter().flatten().zip(target.iter().flatten()) {
            let d = s - t;
            acc += d * d;
        }
        acc.sqrt()
    }

    /// The evaluator's distance for a mix (the soup rounded to f32, as written).
    fn distance_of(&self, coefficients: &BTreeMap<String, Vec<f64>>) -> f64 {
        let soup: Vec<Vec<f64>> = self
            .mix(coefficients)
            .iter()
            .map(|t| t.iter().map(|&x| f64::from(x as f32)).collect())
            .collect();
        self.distance(&soup)
    }

    /// Per-model coefficients `w` for every group.
    fn everywhere(&self, w: &[f64]) -> BTreeMap<String, Vec<f64>> {
        self.target.keys().map(|g| (g.clone(), w.to_vec())).collect()
    }

    /// The --eval template: the evaluator on `{model}` with this target, plus
    /// `extra` (already quoted where needed).
    fn eval(&self, extra: &str) -> String {
        self.command(EVALUATOR, extra)
    }

    /// `soup learned` over every ingredient into `out`, plus `extra`.
    fn args(&self, out: &Path, eval: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["learned".to_owned()];
        args.extend(self.labels());
        args.extend(["-o".into(), p(out), "--eval".into(), eval.into(), "-t".into(), "1".into()]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// Checks the soup in `out` against the mix of the ingredients by
    /// `coefficients` (every element within one f32 ulp of Σ wᵢ·θᵢ), and returns
    /// the evaluator's score of it, recomputed here.
    fn check_soup(&self, out: &Path, coefficients: &BTreeMap<String, Vec<f64>>) -> f64 {
        let tensors = read_output(out);
        let want = self.mix(coefficients);
        let mut soup = Vec::new();
        for ((name, shape, _), want) in self.tensors.iter().zip(&want) {
            let (dtype, got_shape, bytes) = &tensors[name];
            assert_eq!((dtype.as_str(), got_shape), ("F32", shape), "{name}");
            let got = Fmt::F32.decode(bytes);
            for (e, (&g, &w)) in got.iter().zip(want).enumerate() {
                let ulp = f64::from(f32::from_bits((w as f32).abs().to_bits() + 1))
                    - f64::from((w as f32).abs());
                assert!((g - w).abs() <= ulp, "{name}[{e}]: {g} vs Σ wᵢθᵢ = {w}");
            }
            soup.push(got);
        }
        assert_eq!(tensors["step"].2, 1234i64.to_le_bytes(), "the non-float tensor is kept");
        -self.distance(&soup)
    }
}

/// The largest difference between two coefficient tables with the same groups.
fn max_error(got: &BTreeMap<String, Vec<f64>>, want: &BTreeMap<String, Vec<f64>>) -> f64 {
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    got.iter()
        .flat_map(|(g, w)| w.iter().zip(&want[g]).map(|(a, b)| (a - b).abs()))
        .fold(0.0, f64::max)
}

/// report.json's `coefficients`, checked to be on the simplex.
fn coefficients(report: &Value) -> BTreeMap<String, Vec<f64>> {
    let table: BTreeMap<String, Vec<f64>> = report["coefficients"]
        .as_object()
        .expect("report.json has coefficients")
        .iter()
        .map(|(g, w)| (g.clone(), floats(w)))
        .collect();
    for (g, w) in &table {
        assert!(w.iter().all(|&x| x >= 0.0), "{g}: {w:?}");
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{g}: {w:?} does not sum to 1");
    }
    table
}

/// The score of every step of a report, in order.
fn step_scores(report: &Value) -> Vec<f64> {
    report["steps"].as_array().unwrap().iter().map(|s| s["score"].as_f64().unwrap()).collect()
}

/// The coefficients of every step of a report, from the journal (keyed by
/// candidate id).
fn step_weights(report: &Value, run_dir: &Path) -> Vec<Vec<f64>> {
    let records = journal(run_dir);
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let id = s["candidate"].as_str().unwrap();
            let record = records
                .iter()
                .find(|r| r["candidate"] == id)
                .unwrap_or_else(|| panic!("{id} is not journaled"));
            floats(&record["weights"])
        })
        .collect()
}

/// The summary checks every learned report must pass: the score is the best of
/// the steps and beats both baselines, the curve follows the steps, and the final
/// soup's recipe holds the report's coefficients.
fn check_report(world: &Mixture, report: &Value, out: &Path, budget: usize, before: usize) {
    assert_eq!(report["method"], "learned");
    assert_eq!(strings(&report["members"]), world.labels());
    let score = report["score"].as_f64().unwrap();
    let steps = step_scores(report);
    let best = steps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let minimize = report["minimize"] == true;
    let best = if minimize { steps.iter().copied().fold(f64::INFINITY, f64::min) } else { best };
    assert_eq!(score, best, "the score is the best step's");
    let better = |a: f64, b: f64| if minimize { a < b } else { a > b };
    let uniform = report["uniform"]["score"].as_f64().unwrap();
    let individual = report["best_individual"]["score"].as_f64().unwrap();
    assert!(better(score, uniform), "score {score} vs uniform {uniform}");
    assert!(better(score, individual), "score {score} vs best individual {individual}");
    let scores: Vec<f64> = report["individual_scores"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), world.k());
    assert!(scores.iter().all(|&s| !better(s, individual)), "best individual of {scores:?}");
    // Every evaluation counts towards the budget: the individual ones, those before
    // CMA-ES (`before`: greedy steps, the uniform soup) and the search's own.
    assert_eq!(steps.len(), budget - world.k() - before, "learned evaluations");
    let curve = report["curve"].as_array().unwrap();
    assert_eq!(curve.len(), steps.len());
    for (i, (point, s)) in curve.iter().zip(&steps).enumerate() {
        assert_eq!(point["evaluation"], i + 1);
        assert_eq!(point["score"].as_f64(), Some(*s));
    }
    assert_eq!(curve.last().unwrap()["best"].as_f64(), Some(score));
    let counts = &report["evaluations"];
    let total = counts["finished"].as_u64().unwrap() + counts["reused"].as_u64().unwrap();
    assert_eq!(total, budget as u64, "evaluations in the report: {counts}");
    assert_eq!(counts["failed"], 0);

    // The soup written is the best candidate, mixed by the reported coefficients.
    let table = coefficients(report);
    let (metadata, _) = read_safetensors(&out.join("model.safetensors"));
    let recipe: Value = serde_json::from_str(&metadata["modelsoup.recipe"]).unwrap();
    assert_eq!(recipe["search"], "learned");
    assert_eq!(recipe_paths(&recipe), world.labels());
    assert_recipe_replays(out);
    let rescored = world.check_soup(out, &table);
    let sign = if minimize { -1.0 } else { 1.0 };
    assert_eq!(sign * rescored, score, "the soup written is the one that scored best");
}

// ---------------------------------------------------------------------------
// 1. Per-model coefficients reach a known optimum
// ---------------------------------------------------------------------------

#[test]
fn per_model_coefficients_reach_a_known_mix() {
    let dir = common::tempdir();
    let target = [0.5, 0.3, 0.2];
    let mut world = Mixture::flat(1, &target);
    world.write(dir.path());
    let log = dir.path().join("calls.log");
    let eval = world.eval(&format!("--log {}", sh_quote(&p(&log))));
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    let budget = 100;
    let args =
        world.args(&out, &eval, &["--budget", "100", "--seed", "1", "--jobs", "2", "--json"]);
    let run = soup_ok_in(dir.path(), &args);
    let stderr = stderr_of(&run);
    assert!(stderr.contains("layer groups: all ("), "{stderr}");
    let report = read_json(&run_dir.join("report.json"));
    let stdout: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(stdout, report, "--json prints the report");
    check_report(&world, &report, &out, budget, 0);

    let found = coefficients(&report);
    let error = max_error(&found, &world.target);
    eprintln!("found {found:?} for {target:?}: error {error:.2e}");
    assert!(error < 0.05, "found {found:?}, optimum {target:?}");
    assert_eq!(floats(&report["weights"]), found["all"], "weights are the one group's");
    // The start (evaluation 1) is the uniform soup, and is the report's uniform.
    let uniform = world.everywhere(&[1.0 / 3.0; 3]);
    assert_eq!(step_weights(&report, &run_dir)[0], uniform["all"]);
    assert_eq!(report["uniform"]["score"], report["steps"][0]["score"]);
    assert_eq!(report["uniform"]["score"].as_f64(), Some(-world.distance_of(&uniform)));
    // Exactly `budget` evaluator calls, one journal record each.
    assert_eq!(ends(&log), budget);
    assert_eq!(journal(&run_dir).len(), budget);
    assert_eq!(report["evaluations"]["finished"], budget);
    let md = fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(md.contains("Learned coefficients") && md.contains("| all |"), "{md}");
}

// ---------------------------------------------------------------------------
// 2. Layer-wise coefficients reach a different mix per group
// ---------------------------------------------------------------------------

/// Transformer-like tensor names: embeddings, four blocks and the head, with each
/// tensor's group under `--groups 1`.
const TRANSFORMER: [(&str, &[usize], &str); 6] = [
    ("model.embed_tokens.weight", &[8, 8], "embeddings"),
    ("model.layers.0.mlp.weight", &[4, 8], "model.layers.0-3"),
    ("model.layers.1.mlp.weight", &[4, 8], "model.layers.0-3"),
    ("model.layers.2.mlp.weight", &[4, 8], "model.layers.0-3"),
    ("model.layers.3.mlp.weight", &[4, 8], "model.layers.0-3"),
    ("lm_head.weight", &[8, 8], "head"),
];

#[test]
fn by_layer_coefficients_reach_a_different_mix_per_group() {
    let dir = common::tempdir();
    let (embed, blocks, head) = ([0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.3, 0.4, 0.3]);
    let target = [("embeddings", &embed[..]), ("model.layers.0-3", &blocks), ("head", &head)];
    let mut world = Mixture::new(2, 3, &TRANSFORMER, &target);
    world.write(dir.path());
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    let budget = 300;
    let extra = ["--budget", "300", "--seed", "3", "--jobs", "4", "--by-layer", "--groups", "1"];
    let run = soup_ok_in(dir.path(), &world.args(&out, &world.eval(""), &extra));
    let stderr = stderr_of(&run);
    let groups =
        "layer groups: embeddings (1 tensors), model.layers.0-3 (4 tensors), head (2 tensors)";
    assert!(stderr.contains(groups), "{stderr}");
    let first = stderr.lines().position(|l| l.starts_with("layer groups:")).unwrap();
    let evaluation = stderr.lines().position(|l| l.starts_with("[evaluation")).unwrap();
    assert!(first < evaluation, "the groups are printed before the search starts:\n{stderr}");
    let report = read_json(&run_dir.join("report.json"));
    check_report(&world, &report, &out, budget, 0);

    let found = coefficients(&report);
    let keys: Vec<&String> = found.keys().collect();
    assert_eq!(keys, ["embeddings", "head", "model.layers.0-3"]);
    for (group, want) in &world.target {
        let error = found[group].iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        eprintln!("{group}: found {:?} for {want:?}: error {error:.3}", found[group]);
        assert!(error < 0.05, "{group}: found {:?}, optimum {want:?}", found[group]);
    }
    // The groups' mixes differ where their targets do.
    let apart = |a: &str, b: &str| {
        found[a].iter().zip(&found[b]).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    };
    assert!(apart("embeddings", "model.layers.0-3") > 0.3, "{found:?}");
    assert!(apart("embeddings", "head") > 0.2, "{found:?}");
    assert!(apart("model.layers.0-3", "head") > 0.1, "{found:?}");
    // No per-model soup comes close: the best single mix (by a grid search over
    // the simplex in steps of 0.01) is more than five times as far from the target.
    let mut single = f64::INFINITY;
    for a in 0..=100 {
        for b in 0..=100 - a {
            let w = [f64::from(a) / 100.0, f64::from(b) / 100.0, f64::from(100 - a - b) / 100.0];
            single = single.min(world.distance(&world.mix(&world.everywhere(&w))));
        }
    }
    let learned = -report["score"].as_f64().unwrap();
    eprintln!("distance {learned}, best per-model mix {single}");
    assert!(learned < single / 5.0, "learned {learned} vs best per-model mix {single}");
    let mean: Vec<f64> = (0..world.k())
        .map(|i| found.values().map(|row| row[i]).sum::<f64>() / found.len() as f64)
        .collect();
    // `weights`: each ingredient's mean over the groups.
    let weights = floats(&report["weights"]);
    for (w, m) in weights.iter().zip(&mean) {
        assert!((w - m).abs() < 1e-12, "weights {weights:?} vs {found:?}");
    }
    // The journal names every group's member as `GROUP|INGREDIENT`.
    let record = &journal(&run_dir)[world.k()];
    let members = strings(&record["members"]);
    assert_eq!(members.len(), 3 * world.k());
    assert_eq!(members[0], format!("embeddings|{}", world.labels()[0]), "{members:?}");
}

#[test]
fn groups_split_the_blocks_into_ranges() {
    let dir = common::tempdir();
    let blocks = [0.1, 0.3, 0.6];
    let mut world = Mixture::new(
        7,
        3,
        &TRANSFORMER,
        &[("embeddings", &blocks), ("model.layers.0-3", &blocks), ("head", &blocks)],
    );
    world.write(dir.path());
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    for (groups, printed) in [
        ("2", "embeddings (1 tensors), model.layers.0-1 (2 tensors), model.layers.2-3 (2 tensors), head (2 tensors)"),
        ("4", "embeddings (1 tensors), model.layers.0 (1 tensors), model.layers.1 (1 tensors), model.layers.2 (1 tensors), model.layers.3 (1 tensors), head (2 tensors)"),
        ("9", "embeddings (1 tensors), model.layers.0 (1 tensors), model.layers.1 (1 tensors), model.layers.2 (1 tensors), model.layers.3 (1 tensors), head (2 tensors)"),
    ] {
        // The baselines and the start alone: 3 + 1 evaluations.
        let extra = ["--budget", "4", "--by-layer", "--groups", groups, "--force"];
        let run = soup_ok_in(dir.path(), &world.args(&out, &world.eval(""), &extra));
        let stderr = stderr_of(&run);
        assert!(stderr.contains(&format!("layer groups: {printed}\n")), "--groups {groups}: {stderr}");
        let report = read_json(&run_dir.join("report.json"));
        let found = coefficients(&report);
        let mut want: Vec<String> = printed
            .split(", ")
            .map(|g| g.split(" (").next().unwrap().to_owned())
            .collect();
        want.sort();
        assert_eq!(found.keys().cloned().collect::<Vec<_>>(), want, "--groups {groups}");
        assert!(found.values().all(|w| w == &[1.0 / 3.0; 3]), "the start is uniform: {found:?}");
    }
}

// ---------------------------------------------------------------------------
// 3. Determinism: seeds and --jobs
// ---------------------------------------------------------------------------

#[test]
fn the_same_seed_gives_the_same_search_whatever_the_jobs() {
    let dir = common::tempdir();
    let mut world = Mixture::flat(3, &[0.6, 0.25, 0.15]);
    world.write(dir.path());
    let eval = world.eval("");
    let run = |name: &str, seed: &str, jobs: &str| {
        let out = dir.path().join(name);
        let args = world.args(&out, &eval, &["--budget", "24", "--seed", seed, "--jobs", jobs]);
        soup_ok_in(dir.path(), &args);
        let run_dir = dir.path().join(format!("{name}.run"));
        let report = read_json(&run_dir.join("report.json"));
        assert_eq!(report["evaluations"]["reused"], 0, "{name} is a fresh run");
        let weights = step_weights(&report, &run_dir);
        (report, weights, read_output(&out))
    };
    let (a, a_weights, a_soup) = run("a", "5", "4");
    let (again, again_weights, again_soup) = run("again", "5", "4");
    let (serial, serial_weights, serial_soup) = run("serial", "5", "1");
    let (other, other_weights, _) = run("other", "6", "4");
    for (name, r, weights, soup) in [
        ("the same command", &again, &again_weights, &again_soup),
        ("--jobs 1", &serial, &serial_weights, &serial_soup),
    ] {
        assert_eq!(step_scores(r), step_scores(&a), "{name}: scores");
        assert_eq!(weights, &a_weights, "{name}: candidates");
        for key in ["coefficients", "weights", "score", "curve", "uniform", "individual_scores"] {
            assert_eq!(r[key], a[key], "{name}: {key}");
        }
        assert_eq!(soup, &a_soup, "{name}: the soup, byte for byte");
    }
    // Another seed: the same start (the uniform soup), then other candidates.
    assert_eq!(other_weights[0], a_weights[0]);
    assert_eq!(other_weights.len(), a_weights.len());
    for (i, (x, y)) in other_weights.iter().zip(&a_weights).enumerate().skip(1) {
        assert_ne!(x, y, "candidate {i} is the same under another seed");
    }
    assert_ne!(step_scores(&other), step_scores(&a));
    assert_ne!(other["coefficients"], a["coefficients"]);
}

// ---------------------------------------------------------------------------
// 4. SIGKILL and resume
// ---------------------------------------------------------------------------

#[test]
fn a_killed_learned_search_resumes_without_paying_twice() {
    let dir = common::tempdir();
    let mut world = Mixture::flat(4, &[0.2, 0.5, 0.3]);
    world.write(dir.path());
    let log = dir.path().join("calls.log");
    let eval = world.eval(&format!("--sleep 0.15 --log {}", sh_quote(&p(&log))));
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    let budget = 30;
    let args = world.args(&out, &eval, &["--budget", "30", "--seed", "9", "--jobs", "2"]);

    // Kill it once the individual scores and a generation or so are journaled.
    kill_after_journaled(dir.path(), &args, &run_dir, world.k() + 8);
    // The evaluators running at the kill outlive soup; let them finish first,
    // including one that was spawned but had not logged its start yet.
    assert!(evaluators_end(&run_dir, Duration::from_secs(60)), "evaluators still run");
    let before = journal(&run_dir);
    assert!(before.len() >= world.k() + 8 && before.len() < budget - 4, "{}", before.len());
    assert!(!out.exists(), "no soup yet");
    let calls_before = calls(&log).len();

    let mut resume = args.clone();
    resume.push("--force".into());
    let run = soup_ok_in(dir.path(), &resume);
    let stderr = stderr_of(&run);
    assert!(stderr.contains(&format!("resuming: {} evaluations", before.len())), "{stderr}");

    // Only what the journal lacked was evaluated: the budget's remainder.
    let new: Vec<Call> = calls(&log)[calls_before..].to_vec();
    let new_ends = new.iter().filter(|c| c.event == "end").count();
    assert_eq!(new_ends, budget - before.len(), "evaluations after the resume: {new:?}");
    let records = journal(&run_dir);
    assert_eq!(records.len(), budget);
    assert_eq!(records[..before.len()], before[..], "the journal was only appended to");
    let keys: BTreeSet<String> =
        records.iter().map(|r| format!("{} {}", r["members"], r["weights"])).collect();
    assert_eq!(keys.len(), records.len(), "a candidate journaled twice");
    let report = read_json(&run_dir.join("report.json"));
    check_report(&world, &report, &out, budget, 0);
    assert_eq!(report["evaluations"]["reused"], before.len());
    assert_eq!(report["evaluations"]["finished"], budget - before.len());
    let old: BTreeSet<&str> = before.iter().map(|r| r["candidate"].as_str().unwrap()).collect();
    for step in report["steps"].as_array().unwrap() {
        let journaled = old.contains(step["candidate"].as_str().unwrap());
        assert_eq!(step["reused"], journaled, "{step}");
    }

    // The same result as an uninterrupted run.
    let clean_out = dir.path().join("clean");
    let clean_args =
        world.args(&clean_out, &world.eval(""), &["--budget", "30", "--seed", "9", "--jobs", "2"]);
    soup_ok_in(dir.path(), &clean_args);
    let clean_dir = dir.path().join("clean.run");
    let clean = read_json(&clean_dir.join("report.json"));
    for key in ["coefficients", "weights", "score", "curve", "uniform", "individual_scores"] {
        assert_eq!(report[key], clean[key], "{key}");
    }
    assert_eq!(step_scores(&report), step_scores(&clean));
    assert_eq!(step_weights(&report, &run_dir), step_weights(&clean, &clean_dir));
    assert_eq!(read_output(&out), read_output(&clean_out), "the same soup, byte for byte");
}

// ---------------------------------------------------------------------------
// 5. --init greedy and the budget
// ---------------------------------------------------------------------------

/// A world of four ingredients where the target mixes the first three and the
/// fourth is best left out: the greedy soup is {in0, in1, in2}.
fn greedy_world(dir: &Path) -> Mixture {
    let mut world = Mixture::flat(5, &[0.5, 0.3, 0.2, 0.0]);
    world.write(dir);
    world
}

/// The greedy soup by brute force (ingredients by individual score, best first;
/// a proposal is kept when it does not lower the score), scored as mixes in f64:
/// the decisions are far from ties, so rounding cannot change them.
fn greedy_members(world: &Mixture) -> Vec<usize> {
    let k = world.k();
    let score = |members: &[usize]| {
        let w: Vec<f64> = (0..k)
            .map(|i| if members.contains(&i) { 1.0 / members.len() as f64 } else { 0.0 })
            .collect();
        -world.distance(&world.mix(&world.everywhere(&w)))
    };
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| score(&[b]).total_cmp(&score(&[a])));
    let mut soup = vec![order[0]];
    for &i in &order[1..] {
        let mut candidate = soup.clone();
        candidate.push(i);
        candidate.sort_unstable();
        if score(&candidate) >= score(&soup) {
            soup = candidate;
        }
    }
    soup
}

#[test]
fn init_greedy_starts_from_the_greedy_soup() {
    let dir = common::tempdir();
    let world = greedy_world(dir.path());
    assert_eq!(greedy_members(&world), [0, 1, 2], "precondition: greedy leaves in3 out");
    let log = dir.path().join("calls.log");
    let eval = world.eval(&format!("--log {}", sh_quote(&p(&log))));
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    // 4 individual scores, 3 greedy steps and the uniform soup: 8 before CMA-ES.
    let budget = 40;
    let args = world.args(&out, &eval, &["--budget", "40", "--seed", "2", "--init", "greedy"]);
    let run = soup_ok_in(dir.path(), &args);
    let stderr = stderr_of(&run);
    assert!(stderr.contains("starting from the greedy soup of 3 ingredients, score"), "{stderr}");
    let report = read_json(&run_dir.join("report.json"));
    check_report(&world, &report, &out, budget, 4);
    // Greedy's last proposal (adding in3) is the uniform soup of all four: the
    // uniform baseline after it comes from the journal, and costs no call.
    assert_eq!(report["evaluations"]["reused"], 1);
    assert_eq!(ends(&log), budget - 1, "every other evaluation is one evaluator call");

    // Evaluation 1 (generation 0) is the greedy soup: its members' uniform weights.
    let start = world.everywhere(&[1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0]);
    assert_eq!(step_weights(&report, &run_dir)[0], start["all"]);
    let first = &report["steps"][0];
    let line = format!(
        "[evaluation 9/{budget}] {} (generation 0): {}",
        first["candidate"].as_str().unwrap(),
        first["score"]
    );
    assert!(stderr.contains(&line), "{line:?} not in\n{stderr}");
    assert_eq!(report["curve"][0]["evaluation"], 1);
    assert_eq!(first["score"].as_f64(), Some(-world.distance_of(&start)));
    // The greedy steps were journaled as such, before the uniform soup and CMA-ES.
    let records = journal(&run_dir);
    let labels = world.labels();
    let greedy_soup = records
        .iter()
        .find(|r| strings(&r["members"]) == labels[..3])
        .expect("the greedy soup {in0, in1, in2} was evaluated");
    let greedy_score = greedy_soup["score"].as_f64().unwrap();
    let start_score = first["score"].as_f64().unwrap();
    assert!((greedy_score - start_score).abs() <= 1e-6, "{greedy_score} vs {start_score}");
    let uniform = world.everywhere(&[0.25; 4]);
    assert_eq!(report["uniform"]["score"].as_f64(), Some(-world.distance_of(&uniform)));
    assert!(report["score"].as_f64().unwrap() > start_score, "CMA-ES improved on greedy");
}

#[test]
fn the_budget_counts_the_baselines() {
    let dir = common::tempdir();
    let world = greedy_world(dir.path());
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    let eval = world.eval("");
    // All runs share a run directory: the baselines are journaled once, but they
    // still count towards every run's budget.
    for (init, budget, before) in [("uniform", 4, 4), ("greedy", 8, 8)] {
        let budget = budget.to_string();
        let args = world.args(&out, &eval, &["--budget", &budget, "--init", init]);
        let run = soup_in(dir.path(), &args);
        assert_eq!(run.status.code(), Some(2), "{}", show(&args, &run));
        let stderr = stderr_of(&run);
        let message = format!("error: --budget {budget} is used up by the {before} evaluations");
        assert!(stderr.contains(&message), "{}", show(&args, &run));
        assert!(!out.exists(), "no soup is written");
    }
    // One more evaluation than the baselines: the start alone.
    for (init, budget, before) in [("uniform", 5, 0), ("greedy", 9, 4)] {
        let args = world.args(&out, &eval, &["--budget", &budget.to_string(), "--init", init]);
        soup_ok_in(dir.path(), &[args, vec!["--force".into()]].concat());
        let report = read_json(&run_dir.join("report.json"));
        assert_eq!(report["steps"].as_array().unwrap().len(), 1, "{init}: {report}");
        let counts = &report["evaluations"];
        let total = counts["finished"].as_u64().unwrap() + counts["reused"].as_u64().unwrap();
        assert_eq!(total, budget as u64, "{init}: {counts}");
        assert_eq!(report["curve"].as_array().unwrap().len(), budget - world.k() - before);
    }
}

// ---------------------------------------------------------------------------
// 6. --minimize
// ---------------------------------------------------------------------------

#[test]
fn minimizing_distance_is_maximizing_its_negative() {
    let dir = common::tempdir();
    let mut world = Mixture::flat(6, &[0.15, 0.35, 0.5]);
    world.write(dir.path());
    let common_args = ["--budget", "30", "--seed", "4", "--jobs", "2"];
    let max_out = dir.path().join("max");
    soup_ok_in(dir.path(), &world.args(&max_out, &world.eval(""), &common_args));
    let min_out = dir.path().join("min");
    let min_args = [&common_args[..], &["--minimize"]].concat();
    // The evaluator prints +distance: lower is better.
    soup_ok_in(dir.path(), &world.args(&min_out, &world.eval("--sign 1"), &min_args));
    let max = read_json(&dir.path().join("max.run/report.json"));
    let min = read_json(&dir.path().join("min.run/report.json"));
    assert_eq!(min["minimize"], true);
    check_report(&world, &max, &max_out, 30, 0);
    check_report(&world, &min, &min_out, 30, 0);
    let negated: Vec<f64> = step_scores(&max).iter().map(|s| -s).collect();
    assert_eq!(step_scores(&min), negated);
    assert_eq!(
        step_weights(&min, &dir.path().join("min.run")),
        step_weights(&max, &dir.path().join("max.run"))
    );
    for key in ["coefficients", "weights", "members"] {
        assert_eq!(min[key], max[key], "{key}");
    }
    for key in ["score", "uniform/score", "best_individual/score"] {
        let pointer = format!("/{key}");
        let (a, b) = (min.pointer(&pointer).unwrap(), max.pointer(&pointer).unwrap());
        assert_eq!(a.as_f64().unwrap(), -b.as_f64().unwrap(), "{key}");
    }
    assert_eq!(min["best_individual"]["members"], max["best_individual"]["members"]);
    assert_eq!(read_output(&min_out), read_output(&max_out), "the same soup, byte for byte");
}

// ---------------------------------------------------------------------------
// Regression tests for bugs these tests found (all fixed)
// ---------------------------------------------------------------------------

/// The start is generation 0 (`Evaluated::generation`: "0 is the starting
/// point"), and stderr says so: `[evaluation 4/11] learned-0004 (generation 0)`.
/// Regression: before the fix, report.json and report.md call the same candidate `generation 1`
/// (`Report::learned` writes `e.generation + 1`), so every step's generation is
/// one more in the report than in the progress lines.
#[test]
fn the_report_numbers_generations_as_stderr_does() {
    let dir = common::tempdir();
    let mut world = Mixture::flat(8, &[0.5, 0.3, 0.2]);
    world.write(dir.path());
    let out = dir.path().join("soup");
    // 3 individual scores, the start and one generation of 7.
    let run = soup_ok_in(dir.path(), &world.args(&out, &world.eval(""), &["--budget", "11"]));
    let stderr = stderr_of(&run);
    let mut printed = BTreeMap::new();
    for line in stderr.lines().filter(|l| l.starts_with("[evaluation ")) {
        let (_, rest) = line.split_once("] ").unwrap();
        let (candidate, rest) = rest.split_once(" (").unwrap();
        let generation = rest.split_once(')').unwrap().0.to_owned();
        printed.insert(candidate.to_owned(), generation);
    }
    let report = read_json(&dir.path().join("soup.run/report.json"));
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(printed.len(), steps.len(), "{stderr}");
    let got: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| (s["proposal"].as_str().unwrap(), &printed[s["candidate"].as_str().unwrap()][..]))
        .collect();
    assert!(got.iter().all(|(report, stderr)| report == stderr), "report vs stderr: {got:?}");
    assert_eq!(steps[0]["proposal"], "generation 0", "the start");
}

/// A --budget that the baselines use up is an error, and the user should hear it
/// before paying for any evaluation: with the uniform start, the k individual
/// scores are known to be needed before the first one runs. Regression: before the fix, the
/// check comes after the individual evaluations (hours each, with a real
/// evaluator), which run and are journaled only to end in the error.
#[test]
fn a_budget_the_baselines_use_up_fails_before_any_evaluation() {
    let dir = common::tempdir();
    let mut world = Mixture::flat(8, &[0.5, 0.3, 0.2]);
    world.write(dir.path());
    let log = dir.path().join("calls.log");
    let eval = world.eval(&format!("--log {}", sh_quote(&p(&log))));
    let args = world.args(&dir.path().join("soup"), &eval, &["--budget", "3"]);
    let run = soup_in(dir.path(), &args);
    assert_eq!(run.status.code(), Some(2), "{}", show(&args, &run));
    assert!(stderr_of(&run).contains("--budget 3 is used up"), "{}", show(&args, &run));
    assert_eq!(ends(&log), 0, "evaluations run before the budget error: {:?}", calls(&log));
}
