//! `soup evaluate` end to end, and the searches' results files and report suites:
//! the built binary, suites of shell and Python evaluators, the journal between
//! runs, failing evaluators, results files with nested and escaped keys, and a
//! greedy search driven by a results file or reporting on a suite, each checked
//! against the same scores read another way (stdout, `soup merge` + the
//! evaluator run by hand).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::cli::*;
use common::{write_file, Fmt, RawTensor, Rng};
use serde_json::{json, Value};

const DISTANCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/evaluators/distance.py");
const DISTANCE_SERVER: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/evaluators/distance_server.py");
const PYTHON_PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python");

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn stdout_json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Model directories `m1`, `m2`, … in `dir`, each holding a file per split with
/// its score.
fn models(dir: &Path, scores: &[(&str, f64, f64)]) {
    for (name, val, test) in scores {
        fs::create_dir_all(dir.join(name)).unwrap();
        fs::write(dir.join(name).join("val"), format!("{val}\n")).unwrap();
        fs::write(dir.join(name).join("test"), format!("{test}\n")).unwrap();
    }
}

/// An evaluator that logs each call to `calls` and prints the model's `split` file.
fn counted(calls: &Path, split: &str) -> String {
    format!("echo {{model}} >> {}; cat {{model}}/{split}", sh_quote(&p(calls)))
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn a_suite_scores_every_model_and_a_rerun_only_evaluates_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    models(dir, &[("m1", 0.5, 0.25), ("m2", 0.75, 0.125), ("m3", 0.0625, 1.0)]);
    let calls = dir.join("calls");
    let suite = format!(
        "# the splits\nevaluators:\n  val: {{eval: {:?}}}\n  test:\n    eval: {:?}\n",
        counted(&calls, "val"),
        counted(&calls, "test")
    );
    fs::write(dir.join("suite.yaml"), suite).unwrap();

    let first = soup_ok_in(
        dir,
        &args(&["evaluate", "m1", "m2/", "--suite", "suite.yaml", "--json", "-j", "2"]),
    );
    assert_eq!(
        stdout_json(&first),
        json!({"evaluators": ["val", "test"], "models": ["m1", "m2/"],
               "scores": {"m1": {"val": 0.5, "test": 0.25}, "m2/": {"val": 0.75, "test": 0.125}},
               "failures": {}})
    );
    // The JSON keeps the suite's and the command line's order.
    let text = String::from_utf8(first.stdout).unwrap();
    assert!(
        text.find("\"m1\":{\"val\"").unwrap() < text.find("\"m2/\":{\"val\"").unwrap(),
        "{text}"
    );
    assert_eq!(lines(&calls).len(), 4);
    let records = journal(&dir.join("suite.run"));
    assert_eq!(records.len(), 4);
    assert!(records
        .iter()
        .any(|r| r["candidate"] == "test-0002" && r["members"] == json!(["m2/"])));
    assert!(dir.join("suite.run/val/logs/val-0001.stdout").is_file());

    // Again with one more model: only its two evaluations run; the table is
    // Markdown on stdout.
    let again = soup_ok_in(dir, &args(&["evaluate", "m1", "m2/", "m3", "--suite", "suite.yaml"]));
    let calls_now = lines(&calls);
    assert_eq!(calls_now.len(), 6, "{calls_now:?}");
    assert!(calls_now[4..].iter().all(|c| c.ends_with("/m3")), "{calls_now:?}");
    let md = String::from_utf8(again.stdout.clone()).unwrap();
    assert_eq!(
        md,
        "| model | val | test | average |\n|---|---:|---:|---:|\n| m1 | 0.5 | 0.25 | 0.375 |\n\
         | m2/ | 0.75 | 0.125 | 0.4375 |\n| m3 | 0.0625 | 1.0 | 0.53125 |\n"
    );
    assert!(stderr_of(&again).contains("2 evaluations to run, 4 in"), "{}", stderr_of(&again));

    // CSV to a file; nothing runs.
    soup_ok_in(
        dir,
        &args(&["evaluate", "m3", "m1", "--suite", "suite.yaml", "--csv", "-o", "t.csv", "-q"]),
    );
    assert_eq!(
        fs::read_to_string(dir.join("t.csv")).unwrap(),
        "model,val,test,average\nm3,0.0625,1.0,0.53125\nm1,0.5,0.25,0.375\n"
    );
    assert_eq!(lines(&calls).len(), 6);
    // Another run directory starts afresh.
    soup_ok_in(
        dir,
        &args(&["evaluate", "m1", "--suite", "suite.yaml", "--run-dir", "other", "-q"]),
    );
    assert_eq!(lines(&calls).len(), 8);
}

#[test]
fn a_failing_evaluator_leaves_null_and_its_reason_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    models(dir, &[("good", 0.5, 0.25), ("bad", 0.75, 0.125)]);
    let suite = r#"evaluators:
  val: {eval: "cat {model}/val"}
  flaky: {eval: "case {model} in */bad) echo Traceback: boom >&2; exit 3;; esac; cat {model}/test"}
  garbled: {eval: "echo 'accuracy: 0.9'"}
"#;
    fs::write(dir.join("s.yaml"), suite).unwrap();
    let a = args(&["evaluate", "good", "bad", "--suite", "s.yaml", "--json", "-o", "table.md"]);
    let out = soup_in(dir, &a);
    assert_eq!(out.status.code(), Some(1), "{}", show(&a, &out));
    let v = stdout_json(&out);
    assert_eq!(v["scores"]["good"], json!({"val": 0.5, "flaky": 0.25, "garbled": null}));
    assert_eq!(v["scores"]["bad"], json!({"val": 0.75, "flaky": null, "garbled": null}));
    assert_eq!(v["failures"]["bad"]["flaky"], "exited with code 3");
    assert!(v["failures"]["good"]["garbled"].as_str().unwrap().starts_with("no score"), "{v}");
    assert!(v["failures"]["good"].get("val").is_none());
    let stderr = stderr_of(&out);
    assert!(stderr.contains("| Traceback: boom"), "{stderr}");
    let md = fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(md.contains("| bad | 0.75 | failed | failed |  |"), "{md}");
    assert!(md.contains("- bad on flaky: exited with code 3"), "{md}");

    // A failure is reused like a score, unless retries are asked for.
    let run = dir.join("s.run");
    assert_eq!(journal(&run).len(), 6);
    let out = soup_in(dir, &args(&["evaluate", "good", "bad", "--suite", "s.yaml", "-q"]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(journal(&run).len(), 6);
    let out = soup_in(
        dir,
        &args(&["evaluate", "good", "bad", "--suite", "s.yaml", "-q", "--retries", "1"]),
    );
    assert_eq!(out.status.code(), Some(1));
    let records = journal(&run);
    let retried: Vec<&Value> = records[6..].iter().collect();
    assert_eq!(retried.len(), 3, "the three failures, run again: {retried:?}");
    let flaky =
        retried.iter().find(|r| r["members"] == json!(["bad"]) && r["candidate"] == "flaky-0003");
    assert_eq!(flaky.unwrap()["attempts"], 2);
}

#[test]
fn a_results_file_evaluator_reads_nested_and_escaped_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    models(dir, &[("m1", 0.625, 0.3125), ("m 2", 0.5, 0.125)]);
    // What lm-evaluation-harness writes: results per task, metric keys with
    // commas, a task name with a dot, NaN elsewhere in the file.
    let writer = r#"mkdir -p {out}/org__model && printf '{"results": {"arc.easy": {"acc,none": %s, "acc_stderr,none": NaN}, "hella": {"acc_norm,none": %s}}, "n-shot": {}}' "$(cat {model}/val)" "$(cat {model}/test)" > {out}/org__model/results_2024-01-01.json"#;
    let suite = format!(
        "evaluators:\n  harness:\n    eval: {writer:?}\n    score_file: \"{{out}}/**/results_*.json\"\n    score: ['results.arc\\.easy.acc,none', \"results.hella.acc_norm,none\"]\n  arc:\n    eval: {writer:?}\n    score_file: \"{{out}}/*/results_*.json\"\n    score: 'results.arc\\.easy.acc,none'\n"
    );
    fs::write(dir.join("suite.yaml"), &suite).unwrap();
    let out =
        soup_ok_in(dir, &args(&["evaluate", "m1", "m 2", "--suite", "suite.yaml", "--json", "-q"]));
    let v = stdout_json(&out);
    assert_eq!(v["scores"]["m1"], json!({"harness": (0.625 + 0.3125) / 2.0, "arc": 0.625}));
    assert_eq!(v["scores"]["m 2"], json!({"harness": (0.5 + 0.125) / 2.0, "arc": 0.5}));
    // Each path's value is kept as a metric; the key names what was read.
    let records = journal(&dir.join("suite.run"));
    let harness = records.iter().find(|r| r["candidate"] == "harness-0001").unwrap();
    assert_eq!(
        harness["metrics"],
        json!({"results.arc\\.easy.acc,none": 0.625, "results.hella.acc_norm,none": 0.3125})
    );
    assert!(harness["evaluator"].as_str().unwrap().ends_with(
        " --score-file {out}/**/results_*.json --score results.arc\\.easy.acc,none --score results.hella.acc_norm,none"
    ));
    // Every evaluation had its own {out}, kept beside the logs.
    assert!(dir.join("suite.run/harness/out/harness-0002/org__model").is_dir());

    // A path that misses names what the file has.
    fs::write(dir.join("bad.yaml"), suite.replace("hella.acc_norm", "hellaswag.acc_norm")).unwrap();
    let out = soup_in(dir, &args(&["evaluate", "m1", "--suite", "bad.yaml", "--json", "-q"]));
    assert_eq!(out.status.code(), Some(1));
    let reason = stdout_json(&out)["failures"]["m1"]["harness"].as_str().unwrap().to_owned();
    assert!(
        reason.contains(
            "results_2024-01-01.json: no key `hellaswag` in `results` (it has: arc\\.easy, hella)"
        ),
        "{reason}"
    );
}

#[test]
fn a_glob_matching_no_file_or_several_is_a_clear_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    models(dir, &[("m", 0.5, 0.5)]);
    let suite = r#"evaluators:
  none: {eval: "true", score_file: "{out}/**/results_*.json", score: [a]}
  two:
    eval: "mkdir {out}/x {out}/y && echo '{\"a\": 1}' > {out}/x/results_1.json && echo '{\"a\": 2}' > {out}/y/results_2.json"
    score_file: "{out}/**/results_*.json"
    score: [a]
  one: {eval: "echo '{\"a\": 0.5}' > {out}/results_1.json", score_file: "{out}/results_*.json", score: [a]}
"#;
    fs::write(dir.join("suite.yaml"), suite).unwrap();
    let out = soup_in(dir, &args(&["evaluate", "m", "--suite", "suite.yaml", "--json", "-q"]));
    assert_eq!(out.status.code(), Some(1));
    let v = stdout_json(&out);
    assert_eq!(v["scores"]["m"], json!({"none": null, "two": null, "one": 0.5}));
    let run = fs::canonicalize(dir).unwrap().join("suite.run");
    let none = v["failures"]["m"]["none"].as_str().unwrap();
    assert_eq!(
        none,
        format!(
            "no score: score file `{}/none/out/none-0001/**/results_*.json` matched no file",
            run.display()
        )
    );
    let two = v["failures"]["m"]["two"].as_str().unwrap();
    assert!(two.contains("matched 2 files, not one: "), "{two}");
    assert!(
        two.contains("/two-0001/x/results_1.json") && two.contains("/two-0001/y/results_2.json"),
        "{two}"
    );
}

#[test]
fn bad_suites_and_models_are_errors_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    models(dir, &[("m", 0.5, 0.5)]);
    let cases = [
        (
            "evaluators:\n  val: {eval: \"cat {model}/val\", timeout: 5}\n",
            "unknown field `timeout`",
        ),
        ("evaluators:\n  val: {eval: x, score: [a]}\n", "`score` needs `score_file`"),
        ("evaluators:\n  val: {eval: x, score_file: r.json, score: [\"a..b\"]}\n", "empty key"),
        ("evaluators:\n  val: {eval: \"x '{model}'\"}\n", "must not be quoted"),
    ];
    for (suite, expected) in cases {
        fs::write(dir.join("s.yaml"), suite).unwrap();
        let a = args(&["evaluate", "m", "--suite", "s.yaml"]);
        let out = soup_in(dir, &a);
        assert_eq!(out.status.code(), Some(2), "{}", show(&a, &out));
        let stderr = stderr_of(&out);
        assert!(stderr.starts_with("error: ") && stderr.contains(expected), "{suite}: {stderr}");
        assert!(
            !dir.join("s.run/journal.jsonl").exists() || journal(&dir.join("s.run")).is_empty()
        );
    }
    fs::write(dir.join("s.yaml"), "evaluators:\n  val: {eval: \"cat {model}/val\"}\n").unwrap();
    for (models, expected) in
        [(vec!["m", "missing"], "missing: no such file"), (vec!["m", "m"], "given twice")]
    {
        let mut a = args(&["evaluate", "--suite", "s.yaml"]);
        a.extend(models.iter().map(|m| (*m).to_owned()));
        let out = soup_in(dir, &a);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr_of(&out).contains(expected), "{}", stderr_of(&out));
    }
}

// ---------------------------------------------------------------------------
// Searches: a results file instead of stdout, and a report suite
// ---------------------------------------------------------------------------

/// Four F32 ingredients around a hidden target (written as `target.f64`), noisy
/// enough that averaging some of them helps.
fn ingredients(dir: &Path) -> (Vec<String>, PathBuf) {
    let mut rng = Rng::new(7);
    let target: Vec<f64> = (0..22).map(|_| rng.unit() * 2.0 - 1.0).collect();
    let mut paths = Vec::new();
    for i in 0..4 {
        let scale = 0.1 * f64::from(i + 1);
        let v: Vec<f64> = target.iter().map(|t| t + scale * (rng.unit() * 2.0 - 1.0)).collect();
        let path = dir.join(format!("in{i}.safetensors"));
        let tensors = [
            RawTensor::float("a.weight", Fmt::F32, &[4, 4], &v[..16]),
            RawTensor::float("b.bias", Fmt::F32, &[6], &v[16..]),
        ];
        write_file(&path, &tensors, true);
        paths.push(p(&path));
    }
    let target_file = dir.join("target.f64");
    fs::write(&target_file, target.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>())
        .unwrap();
    (paths, target_file)
}

#[test]
fn a_search_driven_by_a_results_file_decides_as_one_driven_by_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (paths, target) = ingredients(dir);
    let eval =
        format!("python3 {} {{model}} {} --metrics", sh_quote(DISTANCE), sh_quote(&p(&target)));
    // The same score, written into {out} under an escaped key.
    let to_file = format!(
        "{eval} | python3 -c 'import json,sys; d=json.loads(sys.stdin.read().splitlines()[-1]); \
         json.dump({{\"results\": {{\"dist.v1\": {{\"score,none\": d[\"score\"]}}}}}}, \
         open(sys.argv[1] + \"/results_x.json\", \"w\"))' {{out}}"
    );
    let mut reports = Vec::new();
    for (name, extra) in [
        ("stdout", vec!["--eval".to_owned(), eval.clone()]),
        (
            "file",
            vec![
                "--eval".to_owned(),
                to_file.clone(),
                "--score-file".into(),
                "{out}/results_*.json".into(),
                "--score".into(),
                "results.dist\\.v1.score,none".into(),
            ],
        ),
    ] {
        let mut a = args(&["greedy", "--json", "-q", "-j", "2", "-o"]);
        a.push(p(&dir.join(name)));
        a.extend(paths.iter().cloned());
        a.extend(extra);
        reports.push(stdout_json(&soup_ok_in(dir, &a)));
    }
    let (stdout, file) = (&reports[0], &reports[1]);
    assert!(stdout["members"].as_array().unwrap().len() > 1, "{stdout}");
    for key in ["members", "score", "individual_scores", "best_individual"] {
        assert_eq!(stdout[key], file[key], "{key}");
    }
    let scores = |r: &Value| {
        r["steps"].as_array().unwrap().iter().map(|s| s["score"].clone()).collect::<Vec<_>>()
    };
    assert_eq!(scores(stdout), scores(file));
    assert!(file["evaluator"]
        .as_str()
        .unwrap()
        .ends_with(" --score-file {out}/results_*.json --score results.dist\\.v1.score,none"));
    // A pattern without --score is refused by the command line.
    let mut a = args(&["greedy", "-o", "x", "--eval", "true", "--score-file", "r.json"]);
    a.extend(paths.iter().cloned());
    let out = soup_in(dir, &a);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("--score"), "{}", stderr_of(&out));
}

#[test]
fn a_report_suite_scores_the_final_soup_the_best_individual_and_the_uniform_soup() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (paths, target) = ingredients(dir);
    let target = sh_quote(&p(&target));
    let eval = format!("python3 {} {{model}} {target}", sh_quote(DISTANCE));
    let suite = format!(
        "evaluators:\n  dist: {{eval: {eval:?}}}\n  served:\n    eval_server: {:?}\n  flipped: {{eval: {:?}}}\n",
        format!("PYTHONPATH={} exec python3 {} {target}", sh_quote(PYTHON_PACKAGE), sh_quote(DISTANCE_SERVER)),
        format!("{eval} --sign 1")
    );
    fs::write(dir.join("suite.yaml"), suite).unwrap();
    let mut a =
        args(&["greedy", "--json", "-q", "-j", "2", "--report-suite", "suite.yaml", "--eval"]);
    a.push(eval.clone());
    a.extend(["-o".into(), "soup".into()]);
    a.extend(paths.iter().cloned());
    let report = stdout_json(&soup_ok_in(dir, &a));
    let suite = &report["suite"];
    let best = report["best_individual"]["members"][0].as_str().unwrap();
    let labels =
        ["greedy soup".to_owned(), format!("best individual ({best})"), "uniform soup".into()];
    assert_eq!(suite["models"], json!(labels));
    assert_eq!(suite["evaluators"], json!(["dist", "served", "flipped"]));
    assert_eq!(suite["failures"], json!({}));
    assert_eq!(suite["file"], "suite.yaml");
    let score = |model: &str, e: &str| suite["scores"][model][e].as_f64().unwrap();
    // The best individual is scored as the search scored it; the final soup as
    // it was written (from its recipe: within rounding of its candidate).
    assert_eq!(score(&labels[1], "dist"), report["best_individual"]["score"].as_f64().unwrap());
    assert!((score(&labels[0], "dist") - report["score"].as_f64().unwrap()).abs() < 1e-6);
    // The uniform soup as `soup merge` writes it, scored by hand.
    soup_ok_in(
        dir,
        &[vec!["merge".to_owned(), "-q".into(), "-o".into(), "uniform".into()], paths.clone()]
            .concat(),
    );
    let by_hand = std::process::Command::new("sh")
        .arg("-c")
        .arg(eval.replace("{model}", "uniform"))
        .current_dir(dir)
        .output()
        .unwrap();
    let by_hand: f64 = String::from_utf8_lossy(&by_hand.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&by_hand.stderr)));
    assert!((score(&labels[2], "dist") - by_hand).abs() < 1e-6, "{suite}");
    for model in &labels {
        assert_eq!(score(model, "served"), score(model, "dist"), "{model}");
        assert_eq!(score(model, "flipped"), -score(model, "dist"), "{model}");
    }
    assert_eq!(suite["evaluations"]["finished"], 9);
    let md = fs::read_to_string(dir.join("soup.run/report.md")).unwrap();
    assert!(
        md.contains("## Benchmark suite")
            && md.contains("| model | dist | served | flipped | average |"),
        "{md}"
    );
    assert!(journal(&dir.join("soup.run/suite")).len() == 9);
    // Nothing written for the suite is left in scratch.
    let scratch = dir.join("soup.run/scratch");
    assert!(fs::read_dir(&scratch).map_or(true, |mut d| d.next().is_none()), "{scratch:?}");

    // A rerun finds the soup and every suite evaluation in the journals.
    let again = stdout_json(&soup_ok_in(dir, &[a.clone(), vec!["--force".into()]].concat()));
    assert_eq!(again["suite"]["scores"], report["suite"]["scores"]);
    assert_eq!(again["suite"]["evaluations"]["reused"], 9);
    assert_eq!(again["suite"]["evaluations"]["started"], 0);
}

#[test]
fn a_learned_search_reports_its_soup_on_the_suite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (paths, target) = ingredients(dir);
    let eval = format!("python3 {} {{model}} {}", sh_quote(DISTANCE), sh_quote(&p(&target)));
    fs::write(dir.join("suite.yaml"), format!("evaluators:\n  dist: {{eval: {eval:?}}}\n"))
        .unwrap();
    let mut a =
        args(&["learned", "--json", "-q", "--budget", "10", "--report-suite", "suite.yaml"]);
    a.extend(["--eval".into(), eval, "-o".into(), "soup".into()]);
    a.extend(paths.iter().cloned());
    let report = stdout_json(&soup_ok_in(dir, &a));
    let suite = &report["suite"];
    assert_eq!(suite["models"][0], "learned soup");
    assert_eq!(suite["models"][2], "uniform soup");
    let learned = suite["scores"]["learned soup"]["dist"].as_f64().unwrap();
    assert!((learned - report["score"].as_f64().unwrap()).abs() < 1e-6, "{report}");
    // The uniform soup was evaluation 0 of the search: the same score.
    let uniform = suite["scores"]["uniform soup"]["dist"].as_f64().unwrap();
    assert_eq!(uniform, report["uniform"]["score"].as_f64().unwrap());
}
