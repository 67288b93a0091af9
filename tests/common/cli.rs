//! Running `soup` searches end to end: the binary in a working directory, its
//! outputs, the journal, and the test evaluator's invocation log
//! (tests/evaluators/distance.py --log).

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `s` quoted for `sh`, to build --eval templates around paths.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub fn p(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// Runs `soup` in `cwd` with `args`.
pub fn soup_in(cwd: &Path, args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_soup"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run soup")
}

pub fn show(args: &[String], out: &Output) -> String {
    format!(
        "soup {args:?} exited with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn soup_ok_in(cwd: &Path, args: &[String]) -> Output {
    let out = soup_in(cwd, args);
    assert_eq!(out.status.code(), Some(0), "{}", show(args, &out));
    out
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The records of a journal, in file order: the lines that parse as JSON with a
/// `crc32` (a torn line does not).
pub fn journal(run_dir: &Path) -> Vec<Value> {
    let bytes = fs::read(run_dir.join("journal.jsonl")).unwrap_or_default();
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
        .filter(|v| v.get("crc32").is_some())
        .collect()
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
}

/// The ingredient paths of a recipe's JSON.
pub fn recipe_paths(recipe: &Value) -> Vec<String> {
    let ingredients = recipe["ingredients"].as_array().unwrap();
    ingredients.iter().map(|i| i["path"].as_str().unwrap().to_owned()).collect()
}

/// Replays the recipe recorded in the soup `out` with `soup merge --recipe` into
/// a sibling directory and asserts that every weight file is identical.
pub fn assert_recipe_replays(out: &Path) {
    let again = out.with_extension("replayed");
    super::soup_ok(&["merge", "--recipe", super::s(out), "-o", super::s(&again), "--force"]);
    for entry in std::fs::read_dir(out).unwrap() {
        let name = entry.unwrap().file_name();
        if name.to_string_lossy().ends_with(".safetensors") {
            let a = std::fs::read(out.join(&name)).unwrap();
            let b = std::fs::read(again.join(&name)).unwrap();
            assert!(a == b, "{name:?} differs when rebuilt from its recipe");
        }
    }
    std::fs::remove_dir_all(&again).unwrap();
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// One line of the evaluator's invocation log.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// `start` or `end`.
    pub event: String,
    /// `SOUP_CANDIDATE`.
    pub candidate: String,
    /// The evaluator's process id.
    pub pid: u32,
    /// The candidate's members, from its recipe.
    pub members: Vec<String>,
}

pub fn calls(log: &Path) -> Vec<Call> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 4, "bad log line {line:?}");
            Call {
                event: f[0].to_owned(),
                candidate: f[1].to_owned(),
                pid: f[2].parse().unwrap(),
                members: f[3].split(',').map(str::to_owned).collect(),
            }
        })
        .collect()
}

/// How many evaluations finished, by the invocation log.
pub fn ends(log: &Path) -> usize {
    calls(log).iter().filter(|c| c.event == "end").count()
}

/// Whether `pid` is dead (gone, or a zombie nobody has reaped yet), waiting up to
/// `patience` for it to die.
pub fn dies(pid: u32, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) => {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                if state.starts_with(['Z', 'X']) {
                    return true;
                }
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the evaluators in the invocation log `log` that outlived a killed
/// `soup` to end, including one that was spawned but had not logged its start
/// yet; fails if one still runs after 20 s.
pub fn outlived(log: &Path) {
    loop {
        let seen = calls(log).len();
        for call in calls(log).iter().filter(|c| c.event == "start") {
            assert!(dies(call.pid, Duration::from_secs(20)), "evaluator {} still runs", call.pid);
        }
        std::thread::sleep(Duration::from_secs(1));
        if calls(log).len() == seen {
            break;
        }
    }
}

/// Starts `soup args` in `cwd` and kills it with SIGKILL once `run_dir`'s journal
/// holds at least `records` good lines (within a minute, and before the search
/// ends by itself).
pub fn kill_after_journaled(cwd: &Path, args: &[String], run_dir: &Path, records: usize) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_soup"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while journal(run_dir).len() < records {
        assert!(Instant::now() < deadline, "the search made no progress");
        assert!(child.try_wait().unwrap().is_none(), "the search ended before it was killed");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}
