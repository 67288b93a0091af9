//! Scores read from a results file the evaluator writes, instead of its stdout.
//!
//! Benchmark tools (lm-evaluation-harness, a cluster job's summary) write their
//! numbers to a JSON file and print a report for people. With a [`ScoreFile`], such
//! a tool is an evaluator as it is: after the command succeeds, the file matching
//! a glob pattern (usually under `{out}`, a fresh directory per evaluation) is read
//! and the score is the mean of the values at one or more [`ScorePath`]s in it.
//!
//! **Paths.** A path is a list of keys separated by `.`; `\.` is a dot inside a
//! key and `\\` a backslash; any other character, commas and spaces included,
//! stands for itself. So lm-evaluation-harness's `results → arc_easy → acc,none`
//! is `results.arc_easy.acc,none`, and a key `v1.2` is written `v1\.2`. A key made
//! of digits indexes an array. Paths never need commas as separators: several
//! paths are a YAML list or a repeated `--score`.
//!
//! Everything that can go wrong with the file (no match, several matches, not
//! JSON, a missing key, a value that is not a number) fails that evaluation with a
//! [`Failure::NoScore`] saying exactly what, like an unreadable stdout line.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::search::evaluate::{excerpt, substitute, Failure, Metrics, PLACEHOLDER};

/// The placeholder for the evaluation's own output directory, in a command
/// template or a score-file pattern.
pub const OUT_PLACEHOLDER: &str = "{out}";

/// The largest score file read, in bytes.
pub const MAX_SCORE_FILE: u64 = 64 << 20;

/// How many matching files, or keys of an object, a failure lists.
const LISTED: usize = 8;

/// Why a score file or path given by the user is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScoreFileError {
    /// A dotted path breaks the escaping rule or has an empty key.
    #[error("score path {path:?}: {reason}")]
    Path {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The file pattern is not a valid glob.
    #[error("score file pattern {pattern:?} is not a valid glob: {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// The glob parser's complaint.
        reason: String,
    },
    /// A score file was given without any path to read in it.
    #[error("a score file needs at least one score path (score: [...], --score)")]
    NoPaths,
}

/// A dotted path to a number in a JSON document (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScorePath {
    text: String,
    keys: Vec<String>,
}

impl ScorePath {
    /// Parses `text`: keys separated by `.`, with `\.` and `\\` escaped.
    pub fn parse(text: &str) -> Result<ScorePath, ScoreFileError> {
        let bad = |reason| ScoreFileError::Path { path: text.to_owned(), reason };
        let mut keys = vec![String::new()];
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '.' => keys.push(String::new()),
                '\\' => match chars.next() {
                    Some(e @ ('.' | '\\')) => keys.last_mut().into_iter().for_each(|k| k.push(e)),
                    Some(_) => return Err(bad("`\\` escapes only `.` and `\\`")),
                    None => return Err(bad("ends in a lone `\\`")),
                },
                c => keys.last_mut().into_iter().for_each(|k| k.push(c)),
            }
        }
        if keys.iter().any(String::is_empty) {
            return Err(bad("has an empty key (two dots in a row, or a dot at an end)"));
        }
        Ok(ScorePath { text: text.to_owned(), keys })
    }

    /// The path as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The keys, unescaped.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The number at this path in `doc`, or what stands in the way.
    pub fn lookup(&self, doc: &Value) -> Result<f64, String> {
        let mut value = doc;
        for (depth, key) in self.keys.iter().enumerate() {
            let here = || match depth {
                0 => "the top level".to_owned(),
                _ => format!("`{}`", escaped(&self.keys[..depth])),
            };
            value = match value {
                Value::Object(map) => map.get(key).ok_or_else(|| {
                    let mut names: Vec<String> =
                        map.keys().take(LISTED).map(|k| escape_key(k)).collect();
                    if map.len() > LISTED {
                        names.push("…".into());
                    }
                    format!("no key `{key}` in {} (it has: {})", here(), names.join(", "))
                })?,
                Value::Array(items) => {
                    key.parse::<usize>().ok().and_then(|i| items.get(i)).ok_or_else(|| {
                        format!(
                            "{} is a list of {}, `{key}` is not an index in it",
                            here(),
                            items.len()
                        )
                    })?
                }
                other => return Err(format!("{} is {}, not an object", here(), kind(other))),
            };
        }
        match value {
            Value::Number(n) => n.as_f64().ok_or_else(|| format!("`{}` is not a float", self.text)),
            Value::String(s) if NON_FINITE.contains(&s.as_str()) => {
                Err(format!("`{}` is {s}, not a finite number", self.text))
            }
            other => Err(format!("`{}` is {}, not a number", self.text, kind(other))),
        }
    }
}

impl fmt::Display for ScorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where an evaluation's score is read from when it is not its stdout: the one
/// file matching a pattern, and the mean of the values at some paths in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreFile {
    pattern: String,
    paths: Vec<ScorePath>,
}

impl ScoreFile {
    /// A score file from its glob `pattern` (which may use `{out}` and `{model}`)
    /// and the dotted `paths` of the values to average.
    pub fn new(pattern: &str, paths: &[String]) -> Result<ScoreFile, ScoreFileError> {
        if paths.is_empty() {
            return Err(ScoreFileError::NoPaths);
        }
        let plain = pattern.replace(OUT_PLACEHOLDER, "out").replace(PLACEHOLDER, "model");
        if plain.trim().is_empty() {
            let reason = "it is empty".to_owned();
            return Err(ScoreFileError::Pattern { pattern: pattern.to_owned(), reason });
        }
        glob::Pattern::new(&plain).map_err(|e| ScoreFileError::Pattern {
            pattern: pattern.to_owned(),
            reason: e.msg.to_owned(),
        })?;
        let paths = paths.iter().map(|p| ScorePath::parse(p)).collect::<Result<_, _>>()?;
        Ok(ScoreFile { pattern: pattern.to_owned(), paths })
    }

    /// The pattern as given.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The paths whose values are averaged.
    pub fn paths(&self) -> &[ScorePath] {
        &self.paths
    }

    /// Whether the pattern uses the evaluation's output directory.
    pub fn uses_out(&self) -> bool {
        self.pattern.contains(OUT_PLACEHOLDER)
    }

    /// What distinguishes its scores in a journal key: `--score-file PATTERN
    /// --score PATH …`, as on the command line.
    pub fn describe(&self) -> String {
        let mut text = format!("--score-file {}", self.pattern);
        for path in &self.paths {
            text += &format!(" --score {path}");
        }
        text
    }

    /// The pattern with `{out}` and `{model}` replaced by those directories, their
    /// glob characters escaped (a path is never a pattern).
    pub fn resolve(&self, out: Option<&Path>, model: &Path) -> String {
        let escape = |p: &Path| glob::Pattern::escape(&p.to_string_lossy());
        let out = out.map(escape).unwrap_or_else(|| OUT_PLACEHOLDER.to_owned());
        let model = escape(model);
        let values = [(OUT_PLACEHOLDER, out.as_bytes()), (PLACEHOLDER, model.as_bytes())];
        String::from_utf8_lossy(&substitute(&self.pattern, &values)).into_owned()
    }

    /// Reads the score after a successful run: the one file the pattern matches,
    /// parsed as JSON, the mean of the values at every path. With several paths,
    /// each value is also returned as a metric named by its path.
    pub fn read(&self, out: Option<&Path>, model: &Path) -> Result<(f64, Metrics), Failure> {
        let pattern = self.resolve(out, model);
        let file = single_match(&pattern)?;
        let doc = read_json(&file)?;
        let mut metrics = Metrics::new();
        let mut sum = 0.0;
        for path in &self.paths {
            let value = path.lookup(&doc).map_err(|problem| no_score(&file, &problem))?;
            if self.paths.len() > 1 {
                metrics.insert(path.as_str().to_owned(), value.into());
            }
            sum += value;
        }
        let score = sum / self.paths.len() as f64;
        if !score.is_finite() {
            return Err(Failure::NotFinite { line: excerpt(&score.to_string()) });
        }
        Ok((score, metrics))
    }
}

/// The strings that stand for Python's non-standard JSON numbers once read.
const NON_FINITE: [&str; 3] = ["NaN", "Infinity", "-Infinity"];

/// The one file `pattern` matches.
fn single_match(pattern: &str) -> Result<PathBuf, Failure> {
    let fail = |problem: String| Failure::NoScore { line: String::new(), problem };
    let entries = glob::glob(pattern).map_err(|e| fail(format!("bad pattern `{pattern}`: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| fail(format!("score file `{pattern}`: {e}")))?;
        if path.is_file() {
            files.push(path);
        }
    }
    match files.len() {
        1 => Ok(files.remove(0)),
        0 => Err(fail(format!("score file `{}` matched no file", excerpt(pattern)))),
        n => {
            let mut names: Vec<String> =
                files.iter().take(LISTED).map(|f| f.display().to_string()).collect();
            if n > LISTED {
                names.push("…".into());
            }
            Err(fail(format!(
                "score file `{}` matched {n} files, not one: {}",
                excerpt(pattern),
                names.join(", ")
            )))
        }
    }
}

/// A score file's JSON, with Python's `NaN`, `Infinity` and `-Infinity` (which
/// `json.dump` writes) read as strings, so that one elsewhere in the file does not
/// spoil it.
fn read_json(file: &Path) -> Result<Value, Failure> {
    let mut bytes = Vec::new();
    File::open(file)
        .and_then(|f| f.take(MAX_SCORE_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| no_score(file, &format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_SCORE_FILE {
        return Err(no_score(file, &format!("it is larger than {} MiB", MAX_SCORE_FILE >> 20)));
    }
    let text = String::from_utf8(bytes).map_err(|_| no_score(file, "it is not UTF-8"))?;
    serde_json::from_str(&quote_non_finite(&text))
        .map_err(|e| no_score(file, &format!("it is not valid JSON: {e}")))
}

/// `text` with every `NaN`, `Infinity` and `-Infinity` outside strings quoted.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if !in_string {
            if let Some(word) = NON_FINITE.iter().rev().find(|w| rest.starts_with(**w)) {
                out.push('"');
                out.push_str(word);
                out.push('"');
                rest = &rest[word.len()..];
                continue;
            }
        }
        match c {
            '"' => in_string = !in_string,
            '\\' if in_string => {
                out.push(c);
                rest = &rest[1..];
                if let Some(next) = rest.chars().next() {
                    out.push(next);
                    rest = &rest[next.len_utf8()..];
                }
                continue;
            }
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn no_score(file: &Path, problem: &str) -> Failure {
    Failure::NoScore { line: String::new(), problem: format!("{}: {problem}", file.display()) }
}

/// A key as it would be written in a path.
fn escape_key(key: &str) -> String {
    key.replace('\\', "\\\\").replace('.', "\\.")
}

fn escaped(keys: &[String]) -> String {
    keys.iter().map(|k| escape_key(k)).collect::<Vec<_>>().join(".")
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;

    fn keys(text: &str) -> Vec<String> {
        ScorePath::parse(text).unwrap().keys().to_vec()
    }

    #[test]
    fn paths_split_at_dots_unless_escaped() {
        assert_eq!(keys("results.arc_easy.acc,none"), ["results", "arc_easy", "acc,none"]);
        assert_eq!(keys(r"a\.b.c"), ["a.b", "c"]);
        assert_eq!(keys(r"a\\.b"), [r"a\", "b"]);
        assert_eq!(keys(r"a\\\.b"), [r"a\.b"]);
        assert_eq!(keys("x y, z"), ["x y, z"]);
        for bad in ["", ".a", "a.", "a..b", r"a\b", "a\\"] {
            assert!(matches!(ScorePath::parse(bad), Err(ScoreFileError::Path { .. })), "{bad:?}");
        }
        // Every key survives escaping and parsing back, whatever it holds.
        for key in [r"a.b\c", "..", r"\\.", "acc,none", "é.ü"] {
            let path = format!("{}.x", escape_key(key));
            assert_eq!(keys(&path), [key, "x"], "{path}");
        }
    }

    #[test]
    fn lookup_finds_nested_keys_and_indices_and_says_what_is_missing() {
        let doc = json!({"results": {"arc_easy": {"acc,none": 0.75, "alias": "arc"},
                         "v1.2": {"x": 2}}, "runs": [{"f1": 0.5}], "flag": true});
        let get = |p: &str| ScorePath::parse(p).unwrap().lookup(&doc);
        assert_eq!(get("results.arc_easy.acc,none"), Ok(0.75));
        assert_eq!(get(r"results.v1\.2.x"), Ok(2.0));
        assert_eq!(get("runs.0.f1"), Ok(0.5));
        let err = get("results.hellaswag.acc").unwrap_err();
        assert_eq!(err, r"no key `hellaswag` in `results` (it has: arc_easy, v1\.2)");
        assert!(get("results.arc_easy.alias").unwrap_err().contains("is a string, not a number"));
        assert!(get("flag.x").unwrap_err().contains("`flag` is a boolean, not an object"));
        assert!(get("runs.3.f1").unwrap_err().contains("`runs` is a list of 1"));
        assert!(get("nope").unwrap_err().contains("in the top level"));
    }

    fn score_file(pattern: &str, paths: &[&str]) -> ScoreFile {
        let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
        ScoreFile::new(pattern, &paths).unwrap()
    }

    fn problem(result: Result<(f64, Metrics), Failure>) -> String {
        match result {
            Err(Failure::NoScore { problem, .. }) => problem,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_one_matching_file_gives_the_mean_and_each_value() {
        let tmp = tempfile::TempDir::new().unwrap();
        let out = tmp.path().join("out [1]*");
        fs::create_dir_all(out.join("org__model")).unwrap();
        let text = r#"{"results": {"a": {"acc,none": 0.5, "stderr": NaN}, "b": {"acc,none": 0.25}},
                       "note": "NaN \"Infinity\" stays"}"#;
        fs::write(out.join("org__model/results_2024.json"), text).unwrap();
        let file =
            score_file("{out}/**/results_*.json", &["results.a.acc,none", "results.b.acc,none"]);
        let (score, metrics) = file.read(Some(&out), tmp.path()).unwrap();
        assert_eq!(score, 0.375);
        assert_eq!(metrics["results.a.acc,none"], 0.5);
        assert_eq!(metrics["results.b.acc,none"], 0.25);
        let one = score_file("{out}/*/results_*.json", &["results.a.acc,none"]);
        let (score, metrics) = one.read(Some(&out), tmp.path()).unwrap();
        assert_eq!((score, metrics.len()), (0.5, 0));
        let nan = score_file("{out}/**/*.json", &["results.a.stderr"]);
        assert!(problem(nan.read(Some(&out), tmp.path())).contains("is NaN, not a finite number"));
        // {model} too, and a relative pattern is the working directory's.
        fs::write(tmp.path().join("scores.json"), r#"{"f1": 0.125}"#).unwrap();
        let in_model = score_file("{model}/scores.json", &["f1"]);
        assert_eq!(in_model.read(None, tmp.path()).unwrap().0, 0.125);
    }

    #[test]
    fn no_match_several_matches_and_bad_files_fail_clearly() {
        let tmp = tempfile::TempDir::new().unwrap();
        let out = tmp.path();
        let file = score_file("{out}/**/results_*.json", &["x"]);
        let none = problem(file.read(Some(out), out));
        assert!(none.contains("matched no file"), "{none}");
        assert!(none.contains(&format!("{}/**/results_*.json", out.display())), "{none}");
        fs::create_dir_all(out.join("a")).unwrap();
        fs::write(out.join("a/results_1.json"), r#"{"x": 1}"#).unwrap();
        fs::write(out.join("results_2.json"), r#"{"x": 2}"#).unwrap();
        fs::create_dir_all(out.join("results_dir.json")).unwrap(); // a directory never counts
        let several = problem(file.read(Some(out), out));
        assert!(several.contains("matched 2 files, not one"), "{several}");
        assert!(several.contains("results_1.json") && several.contains("results_2.json"));
        fs::remove_file(out.join("results_2.json")).unwrap();
        assert_eq!(file.read(Some(out), out).unwrap().0, 1.0);
        fs::write(out.join("a/results_1.json"), "{oops").unwrap();
        assert!(problem(file.read(Some(out), out)).contains("results_1.json: it is not valid JSON"));
    }

    #[test]
    fn bad_patterns_and_missing_paths_are_errors_up_front() {
        assert_eq!(ScoreFile::new("{out}/r.json", &[]), Err(ScoreFileError::NoPaths));
        assert!(matches!(
            ScoreFile::new("{out}/[x", &["a".into()]),
            Err(ScoreFileError::Pattern { .. })
        ));
        assert!(matches!(ScoreFile::new(" ", &["a".into()]), Err(ScoreFileError::Pattern { .. })));
        assert!(matches!(
            ScoreFile::new("r.json", &["a..b".into()]),
            Err(ScoreFileError::Path { .. })
        ));
        let file = score_file("{out}/r.json", &["a", r"b\.c"]);
        assert_eq!(file.describe(), r"--score-file {out}/r.json --score a --score b\.c");
        assert!(file.uses_out());
    }

    #[test]
    fn an_evaluator_reads_its_score_from_a_fresh_out_directory_per_attempt() {
        use crate::search::evaluate::{Evaluate, Evaluator, Options, Outcome};
        let tmp = tempfile::TempDir::new().unwrap();
        let model = tmp.path().join("model");
        fs::create_dir_all(&model).unwrap();
        // Attempt 1 leaves a file and fails; attempt 2 must not see it.
        let template = r#"[ -e {out}/left ] && exit 9; touch {out}/left;
            [ "$SOUP_OUT" = {out} ] || exit 8;
            echo '{"r": {"acc,none": 0.5}}' > {out}/r.json; [ "$SOUP_ATTEMPT" = 2 ]"#;
        let options = Options { retries: 1, ..Options::default() };
        let file = score_file("{out}/r.json", &["r.acc,none"]);
        let eval = Evaluator::new(template, &tmp.path().join("run"), options)
            .unwrap()
            .with_score_file(file.clone());
        assert_eq!(eval.journal_key(), format!("{template} {}", file.describe()));
        let e = eval.evaluate("c-1", &model, None).unwrap();
        assert_eq!(e.outcome, Outcome::Score { score: 0.5, metrics: Metrics::new() }, "{e:?}");
        assert_eq!(e.attempts, 2);
        assert!(eval.run_dir().join("out/c-1/r.json").is_file());
        // Without the file, the evaluation fails and says where it looked.
        let eval = Evaluator::new("true", &tmp.path().join("run"), Options::default())
            .unwrap()
            .with_score_file(file);
        let e = eval.evaluate("c-2", &model, None).unwrap();
        let Outcome::Failed { reason } = e.outcome else { panic!("{e:?}") };
        let expected = format!("{}/out/c-2/r.json` matched no file", eval.run_dir().display());
        assert!(reason.to_string().contains(&expected), "{reason}");
    }

    #[test]
    fn non_finite_words_are_quoted_outside_strings_only() {
        assert_eq!(
            quote_non_finite(
                r#"{"a": NaN, "b": -Infinity, "c": "NaN \" Infinity", "d": [Infinity]}"#
            ),
            r#"{"a": "NaN", "b": "-Infinity", "c": "NaN \" Infinity", "d": ["Infinity"]}"#
        );
    }
}
