//! `soup demo --small` end to end: the built binary trains its models, builds the
//! soups through the real commands and evaluator processes, and the numbers tell
//! the model-soups story without any of them being hard-coded.

use std::process::Command;

use serde_json::Value;

fn row<'a>(set: &'a Value, method: &str) -> &'a Value {
    set["rows"].as_array().unwrap().iter().find(|r| r["method"] == method).unwrap()
}

#[test]
fn the_small_demo_tells_the_story() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let output = Command::new(env!("CARGO_BIN_EXE_soup"))
        .args(["demo", "--small", "--quiet", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("| greedy soup "), "{stdout}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let chance = report["chance"].as_f64().unwrap();
    let [tuned, scratch] = report["sets"].as_array().unwrap().as_slice() else { panic!() };
    assert_eq!(tuned["name"], "fine-tuned");
    assert_eq!(scratch["name"], "from-scratch");

    // Fine-tuned: greedy never loses to the best single model on val, and the
    // uniform soup stays close to it.
    let val = |set: &Value, method: &str| row(set, method)["val"].as_f64().unwrap();
    let best = val(tuned, "best individual (on val)");
    assert!(val(tuned, "greedy soup") >= best);
    assert!(val(tuned, "greedy soup (random order)") > chance);
    assert!(val(tuned, "uniform soup") > best - 0.05, "{tuned}");
    assert_eq!(tuned["init_check_warns"], false);

    // From scratch: the uniform soup collapses toward chance, and the check warns,
    // both in `angles` and in the commands' own warnings.
    let scratch_best = val(scratch, "best individual (on val)");
    assert!(val(scratch, "uniform soup") < (scratch_best + chance) / 2.0, "{scratch}");
    assert_eq!(scratch["init_check_warns"], true);
    assert!(scratch["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("do not look fine-tuned from one pretrained model")));

    for file in ["report.md", "accuracy.svg", "fine-tuned/angles.svg", "from-scratch/angles.svg"] {
        assert!(dir.join(file).is_file(), "{file}");
    }
    // The evaluator speaks the protocol on its own too.
    let eval = Command::new(env!("CARGO_BIN_EXE_soup"))
        .args(["demo-eval", "--split", "test"])
        .arg(dir.join("fine-tuned/soups/greedy"))
        .output()
        .unwrap();
    let line: Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(line["score"].as_f64(), row(tuned, "greedy soup")["test"].as_f64());
}
