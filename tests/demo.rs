//! `soup demo --small --json` end to end: the built binary trains its models, builds
//! the soups through the real commands and evaluator processes, prints its tables as
//! JSON in the documented shape, and the numbers tell the parts of the model-soups
//! story that hold even at this reduced size, without any of them hard-coded. (The
//! full story's checks are measured over five seeds at full size: docs/BENCHMARKS.md.)

use std::process::Command;

use serde_json::Value;

const METHODS: [&str; 8] = [
    "best individual",
    "uniform",
    "greedy",
    "greedy (random order)",
    "pruned",
    "pruned (random order)",
    "learned",
    "learned (gradient)",
];
const SHIFTS: [&str; 4] = ["heavy-style", "style-offset", "noise", "faint"];

fn row<'a>(set: &'a Value, method: &str) -> &'a Value {
    set["rows"].as_array().unwrap().iter().find(|r| r["method"] == method).unwrap()
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    keys
}

/// Checks one set's table against the documented shape; returns its chance level.
fn check_shape(set: &Value, ingredients: usize) -> f64 {
    assert_eq!(keys(set), ["chance", "rows"]);
    let rows = set["rows"].as_array().unwrap();
    let methods: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods, METHODS);
    for row in rows {
        assert_eq!(keys(row), ["avg_shift", "ingredients", "method", "shifts", "test", "val"]);
        let mut names = keys(&row["shifts"]);
        names.sort();
        let mut expected = SHIFTS.to_vec();
        expected.sort();
        assert_eq!(names, expected);
        let shifts: Vec<f64> = SHIFTS.iter().map(|s| row["shifts"][s].as_f64().unwrap()).collect();
        for v in
            shifts.iter().chain([&row["val"].as_f64().unwrap(), &row["test"].as_f64().unwrap()])
        {
            assert!((0.0..=1.0).contains(v), "{row}");
        }
        let mean = shifts.iter().sum::<f64>() / 4.0;
        assert!((row["avg_shift"].as_f64().unwrap() - mean).abs() < 1e-12, "{row}");
        let count = row["ingredients"].as_u64().unwrap() as usize;
        assert!((1..=ingredients).contains(&count), "{row}");
    }
    assert_eq!(row(set, "best individual")["ingredients"], 1);
    assert_eq!(row(set, "uniform")["ingredients"], ingredients);
    set["chance"].as_f64().unwrap()
}

#[test]
fn the_small_demo_prints_its_tables_as_json_and_tells_the_robust_part_of_the_story() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let output = Command::new(env!("CARGO_BIN_EXE_soup"))
        .args(["demo", "--small", "--quiet", "--json", "--seed", "1", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));

    // stdout is exactly the documented JSON document.
    let tables: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(keys(&tables), ["seed", "sets"]);
    assert_eq!(tables["seed"], 1);
    assert_eq!(keys(&tables["sets"]), ["fine_tuned", "from_scratch"]);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let (tuned, scratch) = (&tables["sets"]["fine_tuned"], &tables["sets"]["from_scratch"]);
    let count = |set: &str| report["sets"][set]["ingredient_scores"].as_array().unwrap().len();
    let chance = check_shape(tuned, count("fine_tuned"));
    assert_eq!(chance, check_shape(scratch, count("from_scratch")));
    assert_eq!(chance, 0.125);

    // The story's parts that hold at this size. A greedy soup starts from the best
    // individual and only takes what does not lower val.
    let get = |set: &Value, method: &str, key: &str| row(set, method)[key].as_f64().unwrap();
    assert!(get(tuned, "greedy", "val") >= get(tuned, "best individual", "val"), "{tuned}");
    // Averaging models trained from scratch destroys them; fine-tunes of one model
    // do not.
    let scratch_best = get(scratch, "best individual", "test");
    assert!(get(scratch, "uniform", "test") < (scratch_best + chance) / 2.0, "{scratch}");
    assert!(get(tuned, "uniform", "test") > (get(tuned, "best individual", "test") + chance) / 2.0);
    // The shared-init check warns on the from-scratch set only, and the report
    // keeps the warning whole, down to its advice.
    assert_eq!(report["sets"]["fine_tuned"]["init_check_warns"], false);
    assert_eq!(report["sets"]["from_scratch"]["init_check_warns"], true);
    let warnings = report["sets"]["from_scratch"]["warnings"].as_array().unwrap();
    let warning =
        warnings.iter().map(|w| w.as_str().unwrap()).find(|w| w.contains("do not look fine-tuned"));
    assert!(warning.unwrap().contains("--no-init-check skips this check."), "{warnings:?}");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("--no-init-check skips this check."), "{md}");
    assert!(md.contains("| method ") && md.contains("| avg shift | ingredients |"), "{md}");

    // The story's checks are in the report, measured, whatever they found.
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 4);
    assert!(checks.iter().all(|c| c["claim"].is_string() && c["holds"].is_boolean()));
    // The greedy soup's path ends at the greedy soup.
    let path = report["sets"]["fine_tuned"]["greedy_path"].as_array().unwrap();
    assert_eq!(path.len() as u64, row(tuned, "greedy")["ingredients"].as_u64().unwrap());
    assert_eq!(path.last().unwrap()["test"], row(tuned, "greedy")["test"]);

    for file in ["figure1.svg", "greedy.svg", "fine-tuned/angles.svg", "from-scratch/angles.svg"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"), "{file}");
    }
    // The learned soup by gradient had the CMA-ES one's budget, minimised the
    // val loss from the uniform soup, and deleted its gradient files.
    let report_of = |slug: &str| -> Value {
        let path = dir.join(format!("fine-tuned/soups/{slug}.report.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let (cma, adam) = (report_of("learned"), report_of("learned-gradient"));
    let total = |r: &Value| {
        let counts = &r["evaluations"];
        counts["finished"].as_u64().unwrap() + counts["reused"].as_u64().unwrap()
    };
    assert_eq!(total(&cma), total(&adam), "the same number of evaluations");
    assert_eq!(adam["minimize"], true);
    assert!(adam["score"].as_f64().unwrap() < adam["uniform"]["score"].as_f64().unwrap(), "{adam}");
    let steps = adam["gradient"]["steps"].as_array().unwrap();
    assert_eq!(steps.len() as u64 + count("fine_tuned") as u64, total(&adam));
    let scratch_files = std::fs::read_dir(dir.join("fine-tuned/run/scratch")).into_iter().flatten();
    for entry in scratch_files.flatten() {
        assert!(!entry.path().to_string_lossy().ends_with(".grad.safetensors"), "{entry:?}");
    }

    // The ID and shift columns come from `soup evaluate` on the demo's suite (one
    // evaluator per split), whose journal holds every score of the tables.
    let suite = std::fs::read_to_string(dir.join("suite.yaml")).unwrap();
    assert!(
        suite.contains("heavy-style: {eval:") && suite.contains("demo-eval {model} --split test")
    );
    let journal = std::fs::read_to_string(dir.join("suite.run/journal.jsonl")).unwrap();
    let records: Vec<Value> = journal.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len() % 6, 0);
    let greedy_test = records
        .iter()
        .find(|r| {
            r["members"] == serde_json::json!(["fine-tuned/soups/greedy"])
                && r["candidate"].as_str().unwrap().starts_with("test-")
        })
        .unwrap();
    assert_eq!(greedy_test["score"], row(tuned, "greedy")["test"]);

    // The evaluator speaks the protocol on its own too, on a shifted split.
    let eval = Command::new(env!("CARGO_BIN_EXE_soup"))
        .args(["demo-eval", "--split", "heavy-style"])
        .arg(dir.join("fine-tuned/soups/greedy"))
        .output()
        .unwrap();
    let line: Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(line["score"], row(tuned, "greedy")["shifts"]["heavy-style"]);
    // And in its gradient mode: the loss, the accuracy beside it, ∂loss/∂β with
    // a temperature, and the gradient under the checkpoint's tensor names.
    let grad = tmp.path().join("grad.safetensors");
    let eval = Command::new(env!("CARGO_BIN_EXE_soup"))
        .args(["demo-eval", "--split", "heavy-style", "--temperature", "2", "--grad"])
        .arg(&grad)
        .arg(dir.join("fine-tuned/soups/greedy"))
        .output()
        .unwrap();
    let line: Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(line["accuracy"], row(tuned, "greedy")["shifts"]["heavy-style"]);
    assert!(
        line["score"].as_f64().unwrap() > 0.0 && line["grad_temperature"].is_number(),
        "{line}"
    );
    let bytes = std::fs::read(&grad).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let names: Vec<&str> = header.as_object().unwrap().keys().map(String::as_str).collect();
    assert!(names.contains(&"fc0.weight") && names.contains(&"fc2.bias"), "{names:?}");
}
