//! Benchmark suites: one YAML file naming several evaluators, so that models are
//! scored on every benchmark at once (`soup evaluate`, a search's
//! `--report-suite`), as the paper reports soups: chosen on val, compared on the
//! test set and every shift.
//!
//! ```yaml
//! evaluators:
//!   val:     {eval: "python eval.py {model} --split val"}
//!   sketch:  {eval_server: "exec python serve.py --split sketch"}
//!   harness:
//!     eval: "lm_eval --model hf --model_args pretrained={model} --tasks arc_easy --output_path {out}"
//!     score_file: "{out}/**/results_*.json"
//!     score: ["results.arc_easy.acc,none"]
//! ```
//!
//! Each evaluator takes exactly one of `eval` (a command per model, as `--eval`)
//! and `eval_server` (as `--eval-server`); `score_file` with `score` reads the
//! score from a results file ([`crate::search::score_file`]); `journal_key` is
//! `--journal-key`. Evaluators keep the file's order. Anything else — an unknown
//! key, a name that cannot name files, a score path without a file — is an error
//! naming the suite, the evaluator and the key, before anything runs.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::search::score_file::{ScoreFile, ScoreFileError};

/// The longest evaluator name, in bytes.
const MAX_NAME: usize = 40;

/// A suite that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SuiteError {
    /// The file could not be read.
    #[error("cannot read the suite {}", path.display())]
    Read {
        /// The suite file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML, or not a suite (an unknown key, a value of
    /// the wrong type).
    #[error("suite {}: {message}", path.display())]
    Format {
        /// The suite file.
        path: PathBuf,
        /// The parser's message, which names the key.
        message: String,
    },
    /// An evaluator's entry is inconsistent.
    #[error("suite {}: evaluator {name:?}: {problem}", path.display())]
    Evaluator {
        /// The suite file.
        path: PathBuf,
        /// The evaluator.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// An evaluator's score file or score paths are unusable.
    #[error("suite {}: evaluator {name:?}", path.display())]
    ScoreFile {
        /// The suite file.
        path: PathBuf,
        /// The evaluator.
        name: String,
        /// What is wrong.
        #[source]
        source: ScoreFileError,
    },
}

/// How one benchmark is scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A command template run per model (`eval`).
    Eval(String),
    /// A persistent server (`eval_server`).
    Server(String),
}

/// One evaluator of a suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Benchmark {
    /// Its name: a column of the table, the prefix of its candidate ids, its
    /// directory in the run directory.
    pub name: String,
    /// What runs.
    pub command: Command,
    /// Where the score is read from, when not from stdout.
    pub score_file: Option<ScoreFile>,
    /// The journal key, when declared (`journal_key`).
    pub journal_key: Option<String>,
}

/// A parsed suite: its evaluators in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suite {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    /// The evaluators, in the file's order.
    pub benchmarks: Vec<Benchmark>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    evaluators: Entries,
}

/// The `evaluators` mapping, in file order.
struct Entries(Vec<(String, Entry)>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    eval: Option<String>,
    eval_server: Option<String>,
    score_file: Option<String>,
    score: Option<OneOrMany>,
    journal_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of evaluator names to evaluators")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries: Vec<(String, Entry)> = Vec::new();
                while let Some((name, entry)) = map.next_entry::<String, Entry>()? {
                    if entries.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!("evaluator {name:?} appears twice")));
                    }
                    entries.push((name, entry));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Ordered)
    }
}

impl Suite {
    /// Reads and checks the suite at `path`.
    pub fn load(path: &Path) -> Result<Suite, SuiteError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SuiteError::Read { path: path.to_owned(), source })?;
        Suite::parse(&text, path)
    }

    /// Parses and checks a suite's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Suite, SuiteError> {
        let file: SuiteFile = serde_saphyr::from_str(text)
            .map_err(|e| SuiteError::Format { path: path.to_owned(), message: e.to_string() })?;
        if file.evaluators.0.is_empty() {
            let message = "`evaluators` names no evaluator".to_owned();
            return Err(SuiteError::Format { path: path.to_owned(), message });
        }
        let benchmarks = file
            .evaluators
            .0
            .into_iter()
            .map(|(name, entry)| benchmark(path, name, entry))
            .collect::<Result<_, _>>()?;
        Ok(Suite { path: path.to_owned(), benchmarks })
    }

    /// The evaluators' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.benchmarks.iter().map(|b| b.name.clone()).collect()
    }
}

fn benchmark(path: &Path, name: String, entry: Entry) -> Result<Benchmark, SuiteError> {
    let problem = |problem: &str| SuiteError::Evaluator {
        path: path.to_owned(),
        name: name.clone(),
        problem: problem.to_owned(),
    };
    let safe = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if name.is_empty() || name.len() > MAX_NAME || !name.bytes().all(safe) {
        return Err(problem(&format!(
            "a name must be 1 to {MAX_NAME} characters among A-Z a-z 0-9 _ - (it names \
             columns, log files and a directory)"
        )));
    }
    let command = match (entry.eval, entry.eval_server) {
        (Some(eval), None) => Command::Eval(eval),
        (None, Some(server)) => Command::Server(server),
        (None, None) => return Err(problem("needs `eval` (a command) or `eval_server`")),
        (Some(_), Some(_)) => {
            return Err(problem("give one of `eval` and `eval_server`, not both"))
        }
    };
    let paths = match entry.score {
        None => None,
        Some(OneOrMany::One(path)) => Some(vec![path]),
        Some(OneOrMany::Many(paths)) => Some(paths),
    };
    let score_file = match (entry.score_file, paths) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(problem("`score_file` needs `score`: the dotted paths of the values in it"))
        }
        (None, Some(_)) => {
            return Err(problem("`score` needs `score_file`: the file the paths point into"))
        }
        (Some(_), Some(_)) if matches!(command, Command::Server(_)) => {
            return Err(problem("`score_file` works with `eval`: a server replies with its score"))
        }
        (Some(pattern), Some(paths)) => {
            Some(ScoreFile::new(&pattern, &paths).map_err(|source| SuiteError::ScoreFile {
                path: path.to_owned(),
                name: name.clone(),
                source,
            })?)
        }
    };
    Ok(Benchmark { name, command, score_file, journal_key: entry.journal_key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Suite, SuiteError> {
        Suite::parse(text, Path::new("suite.yaml"))
    }

    #[test]
    fn the_documented_suite_parses_in_file_order() {
        let text = r#"
evaluators:
  val:    {eval: "python eval.py {model} --split val"}
  test:   {eval: "python eval.py {model} --split test"}
  sketch: {eval_server: "exec python serve.py --split sketch", journal_key: sk-v1}
  harness:                    # a tool that writes its results to a file
    eval: "lm_eval --model hf --model_args pretrained={model} --tasks arc_easy,hellaswag --output_path {out}"
    score_file: "{out}/**/results_*.json"
    score: ["results.arc_easy.acc,none", 'results.hellaswag.acc_norm\.x,none']
  single: {eval: "x {out}", score_file: "{out}/r.json", score: a.b}
"#;
        let suite = parse(text).unwrap();
        assert_eq!(suite.names(), ["val", "test", "sketch", "harness", "single"]);
        assert_eq!(
            suite.benchmarks[0].command,
            Command::Eval("python eval.py {model} --split val".into())
        );
        assert_eq!(
            suite.benchmarks[2].command,
            Command::Server("exec python serve.py --split sketch".into())
        );
        assert_eq!(suite.benchmarks[2].journal_key.as_deref(), Some("sk-v1"));
        let harness = suite.benchmarks[3].score_file.as_ref().unwrap();
        assert_eq!(harness.pattern(), "{out}/**/results_*.json");
        let keys: Vec<&[String]> = harness.paths().iter().map(|p| p.keys()).collect();
        assert_eq!(keys[0], ["results", "arc_easy", "acc,none"]);
        assert_eq!(keys[1], ["results", "hellaswag", "acc_norm.x,none"]);
        assert_eq!(suite.benchmarks[4].score_file.as_ref().unwrap().paths().len(), 1);
    }

    fn message(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_keys_and_bad_entries_are_errors_naming_them() {
        let unknown = message("evaluators:\n  val: {eval: x, timeout: 5}\n");
        assert!(unknown.contains("suite.yaml") && unknown.contains("timeout"), "{unknown}");
        let top = message("evaluator:\n  val: {eval: x}\n");
        assert!(top.contains("evaluator"), "{top}");
        let cases = [
            ("evaluators:\n  val: {}\n", "needs `eval`"),
            ("evaluators:\n  val: {eval: x, eval_server: y}\n", "not both"),
            ("evaluators:\n  val: {eval: x, score_file: r.json}\n", "`score_file` needs `score`"),
            ("evaluators:\n  val: {eval: x, score: [a]}\n", "`score` needs `score_file`"),
            ("evaluators:\n  v: {eval_server: x, score_file: r, score: a}\n", "works with `eval`"),
            ("evaluators:\n  \"a b\": {eval: x}\n", "a name must be"),
            ("evaluators: {}\n", "names no evaluator"),
        ];
        for (text, expected) in cases {
            let m = message(text);
            assert!(m.contains(expected) && m.contains("suite.yaml"), "{text:?}: {m}");
        }
        let err =
            parse("evaluators:\n  v: {eval: x, score_file: r, score: [\"a..b\"]}\n").unwrap_err();
        assert!(matches!(&err, SuiteError::ScoreFile { name, .. } if name == "v"), "{err}");
        let twice = message("evaluators:\n  v: {eval: x}\n  v: {eval: y}\n");
        assert!(twice.contains("\"v\"") || twice.contains("duplicate"), "{twice}");
    }
}
