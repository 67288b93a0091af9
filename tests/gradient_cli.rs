//! `soup learned --gradient` end to end, as a user runs it: the built binary and
//! a real evaluator process (tests/evaluators/quadratic.py, Python 3 stdlib
//! only) that prints `‖θ − θ*‖²` and writes `2(θ − θ*)` as the gradient, where
//! the target `θ* = Σ αᵢ*θᵢ` is a known mix of the ingredients (one mix per
//! layer group when the target differs per group). The search must recover α*.
//! Also: gradient files in every accepted dtype, tensors left out, the
//! temperature, the gradient check, the budget, the evaluation-server protocol,
//! every broken gradient file, and SIGKILL and resume.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::cli::*;
use common::mixture::Mixture;
use common::{read_output, Fmt};
use serde_json::Value;

const EVALUATOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/evaluators/quadratic.py");

/// The ingredients and target of `tensors` (name, shape, group) and `target`
/// (group → coefficients), written into `dir`.
fn world(
    dir: &Path,
    seed: u64,
    tensors: &[(&str, &[usize], &str)],
    target: &[(&str, &[f64])],
) -> Mixture {
    let k = target[0].1.len();
    let mut world = Mixture::new(seed, k, tensors, target);
    world.write(dir);
    world
}

/// Two tensors in one group and a target mix of three ingredients, in `dir`.
fn flat(dir: &Path, seed: u64, target: &[f64]) -> Mixture {
    let mut world = Mixture::flat(seed, target);
    world.write(dir);
    world
}

impl Mixture {
    /// The --eval template: the evaluator on `{model}` with this target, plus
    /// `extra` (already quoted where needed).
    fn eval(&self, extra: &str) -> String {
        self.command(EVALUATOR, extra)
    }

    /// `soup learned --gradient` over every ingredient into `out`, plus `extra`.
    fn args(&self, out: &Path, eval: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["learned".to_owned()];
        args.extend(self.labels());
        args.extend(["-o".into(), p(out), "--eval".into(), eval.into(), "--gradient".into()]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// The loss the evaluator computes for the soup in `out` (f64, in its order).
    fn loss_of(&self, out: &Path) -> f64 {
        let tensors = read_output(out);
        let target = self.mix(&self.target);
        let mut loss = 0.0;
        for ((name, _, _), want) in self.tensors.iter().zip(&target) {
            let got = Fmt::F32.decode(&tensors[name].2);
            for (g, w) in got.iter().zip(want) {
                loss += (g - w) * (g - w);
            }
        }
        loss
    }
}

/// report.json's coefficients.
fn coefficients(report: &Value) -> BTreeMap<String, Vec<f64>> {
    report["coefficients"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(g, w)| (g.clone(), floats(w)))
        .collect()
}

fn max_error(got: &BTreeMap<String, Vec<f64>>, want: &BTreeMap<String, Vec<f64>>) -> f64 {
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    got.iter()
        .flat_map(|(g, w)| w.iter().zip(&want[g]).map(|(a, b)| (a - b).abs()))
        .fold(0.0, f64::max)
}

/// The checks every report of a learned search by gradient must pass: the
/// steps, losses, curve and counts agree; the soup written is the best step's.
fn check_report(world: &Mixture, report: &Value, out: &Path, steps: usize, extra: usize) {
    assert_eq!(report["method"], "learned");
    assert_eq!(report["minimize"], true, "--gradient implies --minimize");
    let gradient = &report["gradient"];
    assert_eq!(gradient["optimizer"], "adam");
    let rows = gradient["steps"].as_array().unwrap();
    assert_eq!(rows.len(), steps);
    let losses: Vec<f64> = rows.iter().map(|r| r["loss"].as_f64().unwrap()).collect();
    let best = losses.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(report["score"].as_f64(), Some(best), "the score is the lowest loss");
    let report_steps = report["steps"].as_array().unwrap();
    assert_eq!(report_steps.len(), steps);
    for (i, (row, step)) in rows.iter().zip(report_steps).enumerate() {
        assert_eq!(row["step"], i + 1);
        assert_eq!(step["proposal"], format!("step {}", i + 1));
        assert_eq!(row["candidate"], step["candidate"]);
        assert_eq!(row["loss"], step["score"]);
        assert!(row["gradient_norm"].as_f64().unwrap() >= 0.0);
        assert!(row["weights_gradient_norm"].as_f64().unwrap() >= 0.0);
        for w in row["coefficients"].as_array().unwrap() {
            let w = floats(w);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{w:?}");
        }
    }
    let curve = report["curve"].as_array().unwrap();
    assert_eq!(curve.len(), steps);
    assert!(best < report["uniform"]["score"].as_f64().unwrap());
    assert!(best < report["best_individual"]["score"].as_f64().unwrap());
    // Every evaluation counted: the ingredients, the steps, `extra` (the check's).
    let counts = &report["evaluations"];
    let total = counts["finished"].as_u64().unwrap() + counts["reused"].as_u64().unwrap();
    assert_eq!(total as usize, world.k() + steps + extra, "{counts}");
    // The soup written is the best step's, mixed by the reported coefficients
    // (its loss recomputed here from the file).
    let recomputed = world.loss_of(out);
    assert!((recomputed - best).abs() <= 1e-9 * best.max(1e-12), "{recomputed} vs {best}");
    let (metadata, _) = common::read_safetensors(&out.join("model.safetensors"));
    let recipe: Value = serde_json::from_str(&metadata["modelsoup.recipe"]).unwrap();
    assert_eq!(recipe["search"], "learned");
    assert_recipe_replays(out);
    assert_eq!(read_output(out)["step"].2, 1234i64.to_le_bytes(), "the non-float tensor is kept");
}

/// No gradient file is left in the run directory.
fn assert_no_gradient_files(run_dir: &Path) {
    let mut stack = vec![run_dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            assert!(!p(&path).ends_with(".grad.safetensors"), "{} was left", path.display());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 1. The quadratic with a known answer
// ---------------------------------------------------------------------------

#[test]
fn a_quadratic_loss_gives_back_the_mix_it_was_made_of() {
    let dir = common::tempdir();
    let world = flat(dir.path(), 1, &[0.6, 0.3, 0.1]);
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    let log = dir.path().join("calls.log");
    let eval = world.eval(&format!("--grad {{grad}} --log {}", sh_quote(&p(&log))));
    let args = world.args(&out, &eval, &["--steps", "40", "--json", "-t", "2"]);
    let run = soup_ok_in(dir.path(), &args);
    let stderr = stderr_of(&run);
    assert!(stderr.contains("Adam on the loss: 40 steps"), "{stderr}");
    assert!(stderr.contains("[step 40/40]"), "{stderr}");
    let report = read_json(&run_dir.join("report.json"));
    assert_eq!(serde_json::from_slice::<Value>(&run.stdout).unwrap(), report);
    check_report(&world, &report, &out, 40, 0);
    let found = coefficients(&report);
    let error = max_error(&found, &world.target);
    eprintln!("found {found:?}: error {error:.2e}");
    assert!(error < 0.01, "found {found:?}, optimum {:?}", world.target);

    // Individual evaluations get no gradient to write ({grad} is ''), steps do.
    let calls = calls(&log);
    let with: Vec<&str> =
        calls.iter().filter(|c| c.event == "end").map(|c| c.members[0].as_str()).collect();
    assert_eq!(with.iter().filter(|m| **m == "-").count(), 3);
    assert_eq!(with.iter().filter(|m| **m == "grad").count(), 40);
    // Each step's journal record holds its gradient: one dot product per
    // ingredient, and ‖∇θL‖.
    let records = journal(&run_dir);
    let steps: Vec<&Value> = records.iter().filter(|r| r["gradient"].is_object()).collect();
    assert_eq!(steps.len(), 40);
    for r in &steps {
        assert_eq!(r["gradient"]["dots"].as_array().unwrap().len(), 3);
        assert!(r["gradient"]["norm"].as_f64().unwrap() > 0.0);
    }
    assert_no_gradient_files(&run_dir);
    let md = fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(md.contains("Gradient descent: adam, learning rate 0.2"), "{md}");
    assert!(md.contains("| 40 | "), "{md}");
}

#[test]
fn per_group_mixes_are_recovered_from_bf16_and_f16_gradients() {
    let tensors: [(&str, &[usize], &str); 5] = [
        ("model.embed_tokens.weight", &[12, 8], "embeddings"),
        ("model.layers.0.mlp.weight", &[8, 8], "model.layers.0"),
        ("model.layers.1.mlp.weight", &[8, 8], "model.layers.1"),
        ("model.layers.1.norm.weight", &[8], "model.layers.1"),
        ("lm_head.weight", &[6, 8], "head"),
    ];
    let target: [(&str, &[f64]); 4] = [
        ("embeddings", &[0.6, 0.3, 0.1]),
        ("model.layers.0", &[0.1, 0.2, 0.7]),
        ("model.layers.1", &[0.3, 0.5, 0.2]),
        ("head", &[0.25, 0.25, 0.5]),
    ];
    for (dtype, seed) in [("BF16", 2), ("F16", 3)] {
        let dir = common::tempdir();
        let world = world(dir.path(), seed, &tensors, &target);
        let out = dir.path().join("soup");
        let eval = world.eval(&format!("--dtype {dtype}"));
        let args = world.args(&out, &eval, &["--by-layer", "--groups", "2", "--steps", "40"]);
        let run = soup_ok_in(dir.path(), &args);
        assert!(stderr_of(&run).contains("layer groups: embeddings (1 tensors), model.layers.0"));
        let report = read_json(&dir.path().join("soup.run/report.json"));
        check_report(&world, &report, &out, 40, 0);
        let found = coefficients(&report);
        let error = max_error(&found, &world.target);
        eprintln!("{dtype}: found {found:?}: error {error:.2e}");
        assert!(error < 0.01, "{dtype}: found {found:?}, optimum {:?}", world.target);
        let groups: Vec<String> = strings(&report["gradient"]["groups"]);
        assert_eq!(groups, ["embeddings", "model.layers.0", "model.layers.1", "head"]);
    }

    // A tensor left out of every gradient file has a zero gradient: the head,
    // its only tensor, keeps its starting coefficients exactly.
    let dir = common::tempdir();
    let world = world(dir.path(), 4, &tensors, &target);
    let out = dir.path().join("soup");
    let eval = world.eval("--leave-out lm_head.weight");
    soup_ok_in(dir.path(), &world.args(&out, &eval, &["--by-layer", "--steps", "30"]));
    let report = read_json(&dir.path().join("soup.run/report.json"));
    assert_eq!(coefficients(&report)["head"], vec![1.0 / 3.0; 3]);
    let found = coefficients(&report)["model.layers.0"].clone();
    assert!(found[2] > 0.5, "the other groups still learn: {found:?}");
}

// ---------------------------------------------------------------------------
// 2. Temperature, gradient check, budget, servers
// ---------------------------------------------------------------------------

#[test]
fn the_temperature_is_sent_learned_and_journaled() {
    let dir = common::tempdir();
    let world = flat(dir.path(), 5, &[0.2, 0.5, 0.3]);
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    let eval = world.eval("--beta-target 2.5");
    let args = world.args(&out, &eval, &["--steps", "50", "--temperature", "1"]);
    soup_ok_in(dir.path(), &args);
    let report = read_json(&run_dir.join("report.json"));
    let beta = report["gradient"]["temperature"].as_f64().unwrap();
    assert!((beta - 2.5).abs() < 0.05, "β = {beta}");
    assert!(max_error(&coefficients(&report), &world.target) < 0.01);
    // Every candidate was scored at its β, which is in its journal key; the
    // individual ones at the starting β.
    for record in journal(&run_dir) {
        let members = strings(&record["members"]);
        assert_eq!(members.last().unwrap(), "temperature:", "{record}");
        let beta = floats(&record["weights"]).last().copied().unwrap();
        assert_eq!(record["metrics"]["beta"].as_f64(), Some(beta), "{record}");
        if members.len() == 2 {
            assert_eq!(beta, 1.0);
        }
        if let Some(g) = record["gradient"].as_object() {
            assert_eq!(g["temperature"].as_f64(), Some(2.0 * (beta - 2.5)));
        }
    }
    let first = &report["gradient"]["steps"][0];
    assert_eq!(
        (first["temperature"].as_f64(), first["grad_temperature"].as_f64()),
        (Some(1.0), Some(-3.0))
    );

    // Without "grad_temperature" the search stops with a clear error.
    let out = dir.path().join("broken");
    let eval = world.eval("--beta-target 2.5 --fault no-grad-temperature");
    let fail =
        soup_in(dir.path(), &world.args(&out, &eval, &["--steps", "5", "--temperature", "1"]));
    assert_eq!(fail.status.code(), Some(2));
    let stderr = stderr_of(&fail);
    assert!(stderr.contains("the result has no \"grad_temperature\""), "{stderr}");
    assert!(stderr.contains("--temperature"), "{stderr}");
}

#[test]
fn the_gradient_check_and_the_budget() {
    let dir = common::tempdir();
    let world = flat(dir.path(), 6, &[0.6, 0.3, 0.1]);
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    let args =
        world.args(&out, &world.eval(""), &["--budget", "15", "--check-gradient", "--jobs", "2"]);
    let run = soup_ok_in(dir.path(), &args);
    let stderr = stderr_of(&run);
    assert!(stderr.contains("gradient check: directional derivative"), "{stderr}");
    let report = read_json(&run_dir.join("report.json"));
    // 15 = 3 individual + 10 steps + the check's 2.
    check_report(&world, &report, &out, 10, 2);
    let check = &report["gradient"]["check"];
    let error = check["relative_error"].as_f64().unwrap();
    assert!(error < 1e-3, "relative error {error}: {check}");
    assert_eq!(check["candidates"].as_array().unwrap().len(), 2);
    assert!(fs::read_to_string(run_dir.join("report.md"))
        .unwrap()
        .contains("Gradient check (ε = 0.01)"));

    // A budget the baselines use up is refused before anything runs.
    let err = soup_in(
        dir.path(),
        &world.args(&dir.path().join("x"), &world.eval(""), &["--budget", "3"]),
    );
    assert_eq!(err.status.code(), Some(2));
    assert!(stderr_of(&err).contains("--budget 3 is used up"), "{}", stderr_of(&err));
    // --steps and --budget exclude each other; the options need --gradient.
    let mut both = world.args(&out, &world.eval(""), &["--budget", "9", "--steps", "3"]);
    let out_both = soup_in(dir.path(), &both);
    assert_eq!(out_both.status.code(), Some(2));
    both.retain(|a| a != "--gradient" && a != "--budget" && a != "9");
    let stderr = stderr_of(&soup_in(dir.path(), &both));
    assert!(stderr.contains("--gradient"), "{stderr}");
    for (flag, value, says) in
        [("--lr", "0", "--lr must be"), ("--temperature", "0", "--temperature must be")]
    {
        let args = world.args(&out, &world.eval(""), &[flag, value]);
        let fail = soup_in(dir.path(), &args);
        assert_eq!(fail.status.code(), Some(2));
        assert!(stderr_of(&fail).contains(says), "{}", stderr_of(&fail));
    }
    // {grad} belongs to --gradient only.
    let greedy: Vec<String> = ["greedy".to_owned()]
        .into_iter()
        .chain(world.labels())
        .chain([
            "-o".into(),
            p(&dir.path().join("g")),
            "--eval".into(),
            world.eval("--grad {grad}"),
        ])
        .collect();
    let fail = soup_in(dir.path(), &greedy);
    assert_eq!(fail.status.code(), Some(2));
    assert!(stderr_of(&fail).contains("{grad}"), "{}", stderr_of(&fail));
}

#[test]
fn an_evaluation_server_gets_the_gradient_path_and_temperature_in_its_requests() {
    let dir = common::tempdir();
    let world = flat(dir.path(), 7, &[0.3, 0.3, 0.4]);
    let server = format!(
        "exec python3 -S {} --serve {} --beta-target 0.5",
        sh_quote(EVALUATOR),
        sh_quote(&p(&world.target_file))
    );
    let mut args =
        world.args(&dir.path().join("a"), "unused", &["--steps", "12", "--temperature", "2"]);
    let at = args.iter().position(|a| a == "--eval").unwrap();
    args[at] = "--eval-server".into();
    args[at + 1] = server;
    soup_ok_in(dir.path(), &args);
    let by_server = read_json(&dir.path().join("a.run/report.json"));
    // The same search with a per-candidate command: the same steps, bit for bit.
    let eval = world.eval("--beta-target 0.5");
    soup_ok_in(
        dir.path(),
        &world.args(&dir.path().join("b"), &eval, &["--steps", "12", "--temperature", "2"]),
    );
    let by_command = read_json(&dir.path().join("b.run/report.json"));
    let steps = |r: &Value| {
        let rows = r["gradient"]["steps"].as_array().unwrap().clone();
        rows.into_iter()
            .map(|mut s| {
                s.as_object_mut().unwrap().remove("candidate");
                s
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(steps(&by_server), steps(&by_command));
    assert_no_gradient_files(&dir.path().join("a.run"));
    // A server cannot take {grad} in its command.
    args[at + 1] = "python3 serve.py {grad}".into();
    let at = args.iter().position(|a| a == "-o").unwrap();
    args[at + 1] = p(&dir.path().join("c"));
    let fail = soup_in(dir.path(), &args);
    assert!(stderr_of(&fail).contains("cannot take {model} or {grad}"), "{}", stderr_of(&fail));
}

// ---------------------------------------------------------------------------
// 3. Broken gradient files
// ---------------------------------------------------------------------------

#[test]
fn broken_gradient_files_stop_the_search_with_a_clear_error() {
    let dir = common::tempdir();
    let world = flat(dir.path(), 8, &[0.6, 0.3, 0.1]);
    for (fault, says) in [
        ("missing", "the evaluator wrote no gradient (it must write one to $SOUP_GRAD"),
        ("unknown-name", "tensor \"nope.weight\" is not a tensor of the soup"),
        ("shape", "tensor \"a.weight\" has shape [256], but the soup's is [16, 16]"),
        ("dtype", "tensor \"a.weight\" is I32; a gradient must be F32, BF16, F16 or F64"),
        ("nan", "tensor \"b.bias\" holds NaN at element 22"),
        ("truncated", "invalid safetensors file"),
        ("garbage", "invalid safetensors file"),
        ("directory", "not a regular file"),
    ] {
        let out = dir.path().join(fault);
        let run_dir = dir.path().join(format!("{fault}.run"));
        // The third gradient is broken: two steps go well first.
        let eval = world.eval(&format!("--fault {fault} --fault-from 3"));
        let fail = soup_in(dir.path(), &world.args(&out, &eval, &["--steps", "6"]));
        let stderr = stderr_of(&fail);
        assert_eq!(fail.status.code(), Some(2), "{fault}: {stderr}");
        assert!(stderr.contains("error: "), "{fault}: {stderr}");
        assert!(stderr.contains(says), "{fault}: {stderr}");
        assert!(
            stderr.contains("learned-0006.grad.safetensors"),
            "{fault} names the file: {stderr}"
        );
        assert!(!out.exists(), "{fault}: no soup");
        // The broken step's loss is journaled without a gradient, so a rerun
        // evaluates it again; the good steps keep theirs.
        let records = journal(&run_dir);
        assert_eq!(records.len(), 6, "{fault}");
        assert_eq!(records.iter().filter(|r| r["gradient"].is_object()).count(), 2, "{fault}");
        if fault != "directory" {
            assert_no_gradient_files(&run_dir);
        }
    }
}

// ---------------------------------------------------------------------------
// 4. SIGKILL and resume
// ---------------------------------------------------------------------------

#[test]
fn a_killed_gradient_search_resumes_where_it_stopped() {
    let dir = common::tempdir();
    let world = flat(dir.path(), 9, &[0.5, 0.1, 0.4]);
    let log = dir.path().join("calls.log");
    let eval = world.eval(&format!("--sleep 0.15 --log {}", sh_quote(&p(&log))));
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    let steps = 20;
    let args = world.args(&out, &eval, &["--steps", "20", "--check-gradient", "--jobs", "2"]);

    kill_after_journaled(dir.path(), &args, &run_dir, world.k() + 6);
    // The evaluators running at the kill outlive soup; let them finish first,
    // including one that was spawned but had not logged its start yet.
    assert!(evaluators_end(&run_dir, Duration::from_secs(60)), "evaluators still run");
    let before = journal(&run_dir);
    let total = world.k() + steps + 2;
    assert!(before.len() >= world.k() + 6 && before.len() < total - 4, "{}", before.len());
    assert!(!out.exists(), "no soup yet");
    let calls_before = calls(&log).len();

    let mut resume = args.clone();
    resume.push("--force".into());
    let run = soup_ok_in(dir.path(), &resume);
    assert!(stderr_of(&run).contains(&format!("resuming: {} evaluations", before.len())));
    // Only what the journal lacked was evaluated.
    let new_ends = calls(&log)[calls_before..].iter().filter(|c| c.event == "end").count();
    assert_eq!(new_ends, total - before.len());
    let records = journal(&run_dir);
    assert_eq!(records.len(), total);
    assert_eq!(records[..before.len()], before[..], "the journal was only appended to");
    let keys: BTreeSet<String> =
        records.iter().map(|r| format!("{} {}", r["members"], r["weights"])).collect();
    assert_eq!(keys.len(), records.len(), "a candidate journaled twice");
    let report = read_json(&run_dir.join("report.json"));
    check_report(&world, &report, &out, steps, 2);
    assert_eq!(report["evaluations"]["reused"], before.len());

    // The same result as an uninterrupted run.
    let clean_out = dir.path().join("clean");
    let clean_args =
        world.args(&clean_out, &world.eval(""), &["--steps", "20", "--check-gradient"]);
    soup_ok_in(dir.path(), &clean_args);
    let clean = read_json(&dir.path().join("clean.run/report.json"));
    for key in ["coefficients", "weights", "score", "uniform", "individual_scores"] {
        assert_eq!(report[key], clean[key], "{key}");
    }
    let rows = |r: &Value| {
        let rows = r["gradient"]["steps"].as_array().unwrap().clone();
        rows.into_iter()
            .map(|mut s| {
                let s = s.as_object_mut().unwrap();
                s.remove("candidate");
                s.remove("reused");
                Value::Object(s.clone())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(rows(&report), rows(&clean));
    assert_eq!(
        report["gradient"]["check"]["relative_error"],
        clean["gradient"]["check"]["relative_error"]
    );
    assert_eq!(read_output(&out), read_output(&clean_out), "the same soup, byte for byte");
}

// ---------------------------------------------------------------------------
// 5. The Hugging Face example's gradient evaluator
// ---------------------------------------------------------------------------

/// `examples/hf-text-classifier/eval_grad.py` needs torch, transformers and a
/// dataset, which CI does not have: it is compiled here, and its choice of names
/// for the gradient tensors (the names the candidate's files use, tied weights
/// under their stored alias, parameters the files lack left out) runs with
/// stand-in tensors. (Run end to end by hand: docs/EVALUATOR.md, "Gradients".)
#[test]
fn the_hf_example_compiles_and_names_its_gradients_as_the_checkpoint_does() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hf-text-classifier/eval_grad.py");
    let script = r#"
import importlib.util, sys
sys.dont_write_bytecode = True  # nothing written beside the example
path = sys.argv[1]
compile(open(path).read(), path, "exec")
spec = importlib.util.spec_from_file_location("eval_grad", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)

class T:
    def __init__(self, ptr): self.ptr = ptr
    def data_ptr(self): return self.ptr

emb, head, dense, extra = T(1), T(1), T(2), T(3)
# named_parameters() lists the tied embedding/head once, under the head's name;
# the file stores it as the embedding. `extra` is not in the file at all.
parameters = [("lm_head.weight", head), ("dense.weight", dense), ("extra.bias", extra)]
state = [("embed.weight", emb), ("lm_head.weight", head), ("dense.weight", dense),
         ("extra.bias", extra), ("position_ids", T(9))]
chosen = module.select_gradients(parameters, state, {"embed.weight", "dense.weight"})
assert chosen == {"embed.weight": head, "dense.weight": dense}, chosen
print("ok")
"#;
    let out = std::process::Command::new("python3")
        .args(["-S", "-c", script, example])
        .output()
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    assert!(stderr.contains("extra.bias is not in the candidate's files"), "{stderr}");
}
