//! The evaluation journal of a soup search. `soup greedy` and `soup pruned` run the
//! user's evaluation command on many candidate soups, and each run costs minutes of
//! GPU time; every evaluation is appended to `RUN_DIR/journal.jsonl` as soon as it
//! finishes, so a run that is killed (even by SIGKILL or a power cut) resumes without
//! paying for any evaluation twice.
//!
//! # File format
//!
//! `journal.jsonl` is UTF-8 text with one [`Record`] per line, each line ending in
//! `\n`:
//!
//! ```text
//! {"candidate":"greedy-2","members":["run-a/","run-c/"],"weights":[0.5,0.5],"evaluator":"python eval.py {soup}","score":0.8125,"metrics":{"loss":0.41},"materialise_seconds":1.5,"evaluate_seconds":93.25,"attempts":1,"timestamp":"2026-04-01T09:30:12Z","crc32":1045415119}
//! ```
//!
//! The fields are those of [`Record`], in that order, except that the outcome is
//! either `"score": <number>` or `"failure": "<reason>"`, and that `"gradient"`
//! (learned soups by gradient, [`Gradient`]) appears only in records that have one. The last member of every
//! line is `"crc32"`, and the rule is:
//!
//! - **Writing.** Let `B` be the record serialised as compact JSON without the
//!   `crc32` member (serde_json on [`Record`], whose field order is fixed; the
//!   `metrics` object's keys come out sorted). The line is `B` with its final `}`
//!   replaced by `,"crc32":N}`, where `N` is the CRC-32 (IEEE 802.3, as computed by
//!   zlib's `crc32` and the `crc32fast` crate) of the bytes of `B`, in decimal.
//! - **Reading.** Split the line (without its `\n`) at the *last* occurrence of
//!   `,"crc32":`. What follows must be decimal digits and a `}`: that is `N`.
//!   `B` is the part before, followed by `}`. The line is good when `crc32(B) == N`
//!   and `B` parses as a record; the record is then read from `B` as it stands.
//!   The last occurrence is the right one because a `"` inside a JSON string is
//!   always escaped, and `crc32` is the outer object's last member.
//!
//! The CRC is checked on the bytes as they were written, never on a
//! re-serialisation, so reading does not depend on how a JSON library formats
//! numbers. In Python:
//!
//! ```python
//! head, _, tail = line.rstrip("\n").rpartition(',"crc32":')
//! body = head + "}"
//! good = tail[:-1].isdigit() and tail[-1:] == "}" and zlib.crc32(body.encode()) == int(tail[:-1])
//! record = json.loads(body) if good else None
//! ```
//!
//! A line that fails the check, is not UTF-8, or is not a complete record (a line
//! torn by a crash, edited by hand, or garbage) is *damaged*: it is ignored and its
//! number reported in [`JournalStats`], so the caller can warn about it. Empty lines
//! are skipped silently.
//!
//! # Appending
//!
//! [`Journal::append`] writes the whole line with one `write_all` on a file opened
//! for appending, then `sync_data`, under a mutex so that evaluation threads can
//! append concurrently. A crash can therefore tear only the last line. When the file
//! does not end in `\n` (a torn line, or a failed write), the next line is written
//! with a `\n` in front of it, so the fragment stays a damaged line of its own and
//! never runs into a good record.
//!
//! JSON has no NaN or infinity (serde_json would write `null`, and the line would
//! then never read back), so a record with a non-finite number is refused with
//! [`JournalError::NonFinite`] and nothing is written. Every line is also decoded
//! again before it is written and must give back the same record, bit for bit; this
//! relies on serde_json's `float_roundtrip` feature, without which about one `f64`
//! in three (1/11, for one) is parsed back one ulp off.
//!
//! # Finding earlier evaluations
//!
//! [`Journal::find`] returns the latest record, in file order (not by timestamp), for
//! the same candidate soup under the same evaluator:
//!
//! - the evaluator command template is byte-identical;
//! - the members paired with their weights are the same multiset: the sorted lists of
//!   `(member, weight)` pairs are equal, so the order of the members does not matter
//!   but which weight goes with which member does;
//! - members are compared as strings, exactly as given (`run-a/` and `./run-a` are
//!   different members), and weights by their exact value (bit pattern, with `-0.0`
//!   equal to `0.0`). Nothing is normalised: the caller normalises weights, and drops
//!   zero-weight members if it wants them ignored, before building records and
//!   before looking them up.
//!
//! Failed evaluations are journaled and found like the others; whether to reuse a
//! failure or evaluate again is the caller's decision.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The journal's file name inside the run directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";

/// The member that ends every line, before the CRC's digits.
const CRC_KEY: &[u8] = b",\"crc32\":";

/// What can go wrong while opening or appending to a journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The run directory or the journal file could not be created, read, written or
    /// synced.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being attempted ("read", "append to", ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A record has a different number of members and weights.
    #[error(
        "journal record for candidate {candidate:?} has {members} members but {weights} weights"
    )]
    LengthMismatch {
        /// The record's candidate id.
        candidate: String,
        /// Number of members.
        members: usize,
        /// Number of weights.
        weights: usize,
    },

    /// A record holds a NaN or infinite number, which JSON cannot represent.
    #[error("journal record for candidate {candidate:?}: {field} is {value}, not a finite number")]
    NonFinite {
        /// The record's candidate id.
        candidate: String,
        /// The field, e.g. `score` or `weights[2]`.
        field: String,
        /// The value.
        value: f64,
    },

    /// A record could not be serialised.
    #[error("cannot encode the journal record for candidate {candidate:?}")]
    Encode {
        /// The record's candidate id.
        candidate: String,
        /// The serialiser's error.
        #[source]
        source: serde_json::Error,
    },

    /// A record's line does not decode back to the same record, so it would not be
    /// found on resume (serde_json built without `float_roundtrip`).
    #[error(
        "journal record for candidate {candidate:?} does not read back unchanged; not written"
    )]
    RoundTrip {
        /// The record's candidate id.
        candidate: String,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.to_owned();
    move |source| JournalError::Io { action, path, source }
}

/// One evaluation of one candidate soup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The search's id for the candidate, e.g. `greedy-3`.
    pub candidate: String,
    /// The ingredients' paths, as given on the command line.
    pub members: Vec<String>,
    /// One weight per member, as applied.
    pub weights: Vec<f64>,
    /// The evaluator command template, before substitution.
    pub evaluator: String,
    /// The score, or why the evaluation failed.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Further metrics the evaluator reported. (`serde_json::Value` cannot hold NaN
    /// or infinity: converting one gives `null`.)
    pub metrics: Map<String, Value>,
    /// Learned soups by gradient: the loss's gradient with respect to the
    /// candidate's coefficients, so that a resumed search replays its steps.
    /// Absent from other records (and from lines written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient: Option<Gradient>,
    /// Seconds spent writing the candidate soup.
    pub materialise_seconds: f64,
    /// Seconds spent in the evaluation command.
    pub evaluate_seconds: f64,
    /// Evaluation attempts made for this record, the last one included.
    pub attempts: u32,
    /// When the evaluation finished, e.g. from [`utc_timestamp`].
    pub timestamp: String,
}

/// The gradient a record of a learned search by gradient keeps: what the next
/// step is computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gradient {
    /// `⟨∇θL, θᵢ⟩` for every coefficient, in the order of the record's members
    /// (layer group by layer group, ingredients in the order given; the base and
    /// the temperature, which are members too, have none): the derivative of the
    /// loss with respect to each member's weight as journaled.
    pub dots: Vec<f64>,
    /// `‖∇θL‖`, the norm of the gradient the evaluator wrote.
    pub norm: f64,
    /// `∂L/∂β`, when the search learns the temperature β.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

/// The result of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The evaluator's score (always finite).
    Score(f64),
    /// Why the evaluation failed: exit status, unparsable output, timeout, ...
    Failure(String),
}

impl Outcome {
    /// The score, if the evaluation succeeded.
    pub fn score(&self) -> Option<f64> {
        match self {
            Outcome::Score(score) => Some(*score),
            Outcome::Failure(_) => None,
        }
    }
}

/// What [`Journal::open`] found in an existing journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Good records loaded.
    pub records: usize,
    /// The 1-based numbers of the lines ignored as damaged.
    pub damaged_lines: Vec<usize>,
}

impl JournalStats {
    /// How many lines were ignored as damaged.
    pub fn damaged(&self) -> usize {
        self.damaged_lines.len()
    }
}

/// An open journal: the good records read from the file, and the file, to which
/// new records are appended. Shared by reference between evaluation threads.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    file: File,
    records: Vec<Record>,
    /// The index in `records` of the latest record for each key.
    latest: HashMap<Key, usize>,
    /// The file may not end in `\n`; the next append starts with one.
    needs_newline: bool,
}

/// What makes two evaluations the same: see the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Key {
    evaluator: String,
    pairs: Vec<(String, u64)>,
}

impl Key {
    fn new(members: &[String], weights: &[f64], evaluator: &str) -> Option<Key> {
        if members.len() != weights.len() {
            return None;
        }
        // Adding 0.0 turns -0.0 into 0.0 and leaves every other value as it is.
        let mut pairs: Vec<_> =
            members.iter().zip(weights).map(|(m, w)| (m.clone(), (w + 0.0).to_bits())).collect();
        pairs.sort_unstable();
        Some(Key { evaluator: evaluator.to_owned(), pairs })
    }

    fn of(record: &Record) -> Option<Key> {
        Key::new(&record.members, &record.weights, &record.evaluator)
    }
}

impl State {
    fn insert(&mut self, record: Record) {
        if let Some(key) = Key::of(&record) {
            self.latest.insert(key, self.records.len());
        }
        self.records.push(record);
    }
}

impl Journal {
    /// Opens `run_dir/journal.jsonl`, creating the directory and the file if they
    /// do not exist, and loads its good records.
    pub fn open(run_dir: impl AsRef<Path>) -> Result<(Journal, JournalStats), JournalError> {
        let run_dir = run_dir.as_ref();
        fs::create_dir_all(run_dir).map_err(io_error("create", run_dir))?;
        let path = run_dir.join(JOURNAL_FILE);
        let mut file = open_or_create(&path, run_dir)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_error("read", &path))?;
        let (records, damaged_lines) = parse(&bytes);
        let stats = JournalStats { records: records.len(), damaged_lines };
        let needs_newline = bytes.last().is_some_and(|&b| b != b'\n');
        let mut state = State { file, records: Vec::new(), latest: HashMap::new(), needs_newline };
        records.into_iter().for_each(|record| state.insert(record));
        Ok((Journal { path, state: Mutex::new(state) }, stats))
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` to the file and syncs it to disk; once this returns `Ok`,
    /// the record survives any crash and [`Journal::find`] returns it. On error the
    /// record is not in memory (and at most a damaged fragment is in the file).
    pub fn append(&self, record: Record) -> Result<(), JournalError> {
        check(&record)?;
        let line = encode_line(&record)?;
        if decode_line(line.strip_suffix(b"\n").unwrap_or(&line)).as_ref() != Some(&record) {
            return Err(JournalError::RoundTrip { candidate: record.candidate });
        }
        let mut state = self.lock();
        let mut bytes = Vec::with_capacity(line.len() + 1);
        if state.needs_newline {
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(&line);
        // Until the whole line is known to be written, assume a fragment may be.
        state.needs_newline = true;
        state.file.write_all(&bytes).map_err(io_error("append to", &self.path))?;
        state.needs_newline = false;
        state.file.sync_data().map_err(io_error("sync", &self.path))?;
        state.insert(record);
        Ok(())
    }

    /// The latest record of an evaluation of the soup `members` × `weights` with
    /// the command template `evaluator`, successful or not (see the module docs for
    /// what counts as the same soup).
    pub fn find(&self, members: &[String], weights: &[f64], evaluator: &str) -> Option<Record> {
        let key = Key::new(members, weights, evaluator)?;
        let state = self.lock();
        state.latest.get(&key).map(|&i| state.records[i].clone())
    }

    /// Every good record, in file order.
    pub fn records(&self) -> Vec<Record> {
        self.lock().records.clone()
    }

    /// The number of good records.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether there are no good records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state stays consistent if a thread panicked while holding the lock:
    /// `needs_newline` is raised before writing, and records are added only after.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Opens the journal for reading and appending; a newly created file's directory
/// entry is synced so that the file survives a power cut.
fn open_or_create(path: &Path, run_dir: &Path) -> Result<File, JournalError> {
    let mut options = OpenOptions::new();
    options.read(true).append(true);
    match options.clone().create_new(true).open(path) {
        Ok(file) => {
            File::open(run_dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io_error("sync", run_dir))?;
            Ok(file)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            options.open(path).map_err(io_error("open", path))
        }
        Err(e) => Err(io_error("create", path)(e)),
    }
}

/// The good records of a journal's contents, and the numbers of its damaged lines.
fn parse(bytes: &[u8]) -> (Vec<Record>, Vec<usize>) {
    let mut records = Vec::new();
    let mut damaged = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match decode_line(line) {
            Some(record) => records.push(record),
            None => damaged.push(i + 1),
        }
    }
    (records, damaged)
}

/// The record a line (without its `\n`) holds, if the line is good.
fn decode_line(line: &[u8]) -> Option<Record> {
    let at = line.windows(CRC_KEY.len()).rposition(|w| w == CRC_KEY)?;
    let digits = line[at + CRC_KEY.len()..].strip_suffix(b"}")?;
    let crc = parse_decimal(digits)?;
    let mut body = Vec::with_capacity(at + 1);
    body.extend_from_slice(&line[..at]);
    body.push(b'}');
    if crc32fast::hash(&body) != crc {
        return None;
    }
    let record: Record = serde_json::from_slice(&body).ok()?;
    check(&record).ok()?;
    Some(record)
}

/// A `u32` written as plain decimal digits (no sign, no spaces).
fn parse_decimal(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The line for a record, `\n` included.
fn encode_line(record: &Record) -> Result<Vec<u8>, JournalError> {
    let mut line = serde_json::to_vec(record)
        .map_err(|source| JournalError::Encode { candidate: record.candidate.clone(), source })?;
    let crc = crc32fast::hash(&line);
    // The record is a JSON object: drop its closing brace and put the CRC before it.
    // (`append` decodes the line again, which would catch anything else.)
    line.pop();
    line.extend_from_slice(format!(",\"crc32\":{crc}}}\n").as_bytes());
    Ok(line)
}

/// Refuses what JSON cannot carry and what `find` could not match.
fn check(record: &Record) -> Result<(), JournalError> {
    let candidate = || record.candidate.clone();
    if record.members.len() != record.weights.len() {
        return Err(JournalError::LengthMismatch {
            candidate: candidate(),
            members: record.members.len(),
            weights: record.weights.len(),
        });
    }
    let weights = record.weights.iter().enumerate().map(|(i, &w)| (format!("weights[{i}]"), w));
    let score = record.outcome.score().map(|s| ("score".to_owned(), s));
    let seconds = [
        ("materialise_seconds".to_owned(), record.materialise_seconds),
        ("evaluate_seconds".to_owned(), record.evaluate_seconds),
    ];
    let gradient = record.gradient.iter().flat_map(|g| {
        let dots = g.dots.iter().enumerate().map(|(i, &d)| (format!("gradient.dots[{i}]"), d));
        let temperature = g.temperature.map(|t| ("gradient.temperature".to_owned(), t));
        dots.chain([("gradient.norm".to_owned(), g.norm)]).chain(temperature)
    });
    let mut numbers = weights.chain(score).chain(seconds).chain(gradient);
    match numbers.find(|(_, value)| !value.is_finite()) {
        Some((field, value)) => {
            Err(JournalError::NonFinite { candidate: candidate(), field, value })
        }
        None => Ok(()),
    }
}

/// The current time as an RFC 3339 UTC timestamp to the second,
/// e.g. `2026-04-01T09:30:12Z`.
pub fn utc_timestamp() -> String {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format_utc(seconds)
}

fn format_utc(unix_seconds: u64) -> String {
    let (year, month, day) = civil_from_days(unix_seconds / 86_400);
    let s = unix_seconds % 86_400;
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (era * 400 + yoe + u64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soup(pairs: &[(&str, f64)]) -> (Vec<String>, Vec<f64>) {
        pairs.iter().map(|&(m, w)| (m.to_owned(), w)).unzip()
    }

    fn record(candidate: &str, pairs: &[(&str, f64)], outcome: Outcome) -> Record {
        let (members, weights) = soup(pairs);
        Record {
            candidate: candidate.to_owned(),
            members,
            weights,
            evaluator: "python eval.py {soup}".to_owned(),
            outcome,
            metrics: Map::new(),
            gradient: None,
            materialise_seconds: 1.5,
            evaluate_seconds: 93.25,
            attempts: 1,
            timestamp: "2026-04-01T09:30:12Z".to_owned(),
        }
    }

    fn scored(candidate: &str, score: f64) -> Record {
        record(candidate, &[("run-a/", 0.5), ("run-b/", 0.5)], Outcome::Score(score))
    }

    fn lines(journal: &Journal) -> Vec<String> {
        let text = fs::read_to_string(journal.path()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    fn reopen(dir: &Path) -> (Journal, JournalStats) {
        Journal::open(dir).unwrap()
    }

    #[test]
    fn line_format_is_as_documented() {
        let mut r = record("greedy-2", &[("run-a/", 0.5), ("run-c/", 0.5)], Outcome::Score(0.8125));
        r.metrics.insert("loss".to_owned(), 0.41.into());
        let line = encode_line(&r).unwrap();
        // The CRC was computed independently with Python's zlib.crc32.
        let expected = concat!(
            r#"{"candidate":"greedy-2","members":["run-a/","run-c/"],"weights":[0.5,0.5],"#,
            r#""evaluator":"python eval.py {soup}","score":0.8125,"metrics":{"loss":0.41},"#,
            r#""materialise_seconds":1.5,"evaluate_seconds":93.25,"attempts":1,"#,
            r#""timestamp":"2026-04-01T09:30:12Z","crc32":1045415119}"#,
            "\n"
        );
        assert_eq!(String::from_utf8(line).unwrap(), expected);
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926, "CRC-32/IEEE, as zlib");
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("runs/one");
        let (journal, stats) = Journal::open(&run).unwrap();
        assert_eq!(stats, JournalStats::default());
        assert!(journal.is_empty());
        let mut with_metrics = scored("c1", 0.8125);
        with_metrics.metrics.insert("loss".to_owned(), 0.41.into());
        with_metrics
            .metrics
            .insert("per_task".to_owned(), serde_json::json!({"b": [1, 2], "a": null}));
        let written = vec![
            with_metrics,
            record(
                "c2",
                &[("run-c.safetensors", 1.0)],
                Outcome::Failure("exit status 3:\n\"OOM\"".into()),
            ),
            record(
                "c3",
                &[("ünïcødé/ путь", 1.0 / 3.0), ("b", 2.0 / 3.0)],
                Outcome::Score(-1e-300),
            ),
        ];
        let mut written = written;
        written[2].gradient =
            Some(Gradient { dots: vec![1.0 / 3.0, -2e-310], norm: 0.1, temperature: Some(-7.5) });
        for r in &written {
            journal.append(r.clone()).unwrap();
        }
        assert_eq!(journal.records(), written);
        assert_eq!(lines(&journal).len(), 3);
        // A record without a gradient is written as before the field existed.
        assert!(!lines(&journal)[0].contains("gradient"));
        let (journal, stats) = reopen(&run);
        assert_eq!(stats, JournalStats { records: 3, damaged_lines: vec![] });
        assert_eq!(journal.records(), written);
        assert_eq!(journal.len(), 3);
    }

    #[test]
    fn torn_last_line_is_ignored_and_the_next_append_starts_a_fresh_line() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = reopen(dir.path());
        journal.append(scored("c1", 0.1)).unwrap();
        journal.append(scored("c2", 0.2)).unwrap();
        let len = fs::metadata(journal.path()).unwrap().len();
        let file = OpenOptions::new().write(true).open(journal.path()).unwrap();
        file.set_len(len - 20).unwrap();
        drop(journal);

        let (journal, stats) = reopen(dir.path());
        assert_eq!(stats, JournalStats { records: 1, damaged_lines: vec![2] });
        assert_eq!(stats.damaged(), 1);
        assert_eq!(journal.records(), vec![scored("c1", 0.1)]);
        journal.append(scored("c3", 0.3)).unwrap();
        assert!(fs::read(journal.path()).unwrap().ends_with(b"}\n"));
        drop(journal);

        let (journal, stats) = reopen(dir.path());
        assert_eq!(stats, JournalStats { records: 2, damaged_lines: vec![2] });
        assert_eq!(journal.records(), vec![scored("c1", 0.1), scored("c3", 0.3)]);
    }

    #[test]
    fn a_line_missing_only_its_newline_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = reopen(dir.path());
        journal.append(scored("c1", 0.1)).unwrap();
        let len = fs::metadata(journal.path()).unwrap().len();
        OpenOptions::new().write(true).open(journal.path()).unwrap().set_len(len - 1).unwrap();
        drop(journal);

        let (journal, stats) = reopen(dir.path());
        assert_eq!(stats, JournalStats { records: 1, damaged_lines: vec![] });
        journal.append(scored("c2", 0.2)).unwrap();
        let (journal, stats) = reopen(dir.path());
        assert_eq!(stats.damaged(), 0);
        assert_eq!(journal.records(), vec![scored("c1", 0.1), scored("c2", 0.2)]);
    }

    #[test]
    fn an_edited_or_flipped_byte_fails_the_crc() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = reopen(dir.path());
        for i in 0..3 {
            journal.append(scored(&format!("c{i}"), 0.5)).unwrap();
        }
        let mut text = lines(&journal);
        // Still valid JSON and still a record, but not what was written.
        text[0] = text[0].replace("\"score\":0.5", "\"score\":0.9");
        assert!(serde_json::from_str::<Value>(&text[0]).is_ok());
        // One bit flipped in the middle.
        let mut bytes = text[2].clone().into_bytes();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x04;
        let mut file = text[..2].join("\n").into_bytes();
        file.push(b'\n');
        file.extend_from_slice(&bytes);
        file.push(b'\n');
        fs::write(journal.path(), file).unwrap();
        drop(journal);

        let (journal, stats) = reopen(dir.path());
        assert_eq!(stats, JournalStats { records: 1, damaged_lines: vec![1, 3] });
        assert_eq!(journal.records(), vec![scored("c1", 0.5)]);
    }

    #[test]
    fn garbage_lines_are_counted_and_empty_lines_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = reopen(dir.path());
        journal.append(scored("c1", 0.1)).unwrap();
        let good = fs::read(journal.path()).unwrap();
        let body = serde_json::to_vec(&serde_json::json!({"candidate": "x"})).unwrap();
        let mut fake = body[..body.len() - 1].to_vec();
        fake.extend_from_slice(format!(",\"crc32\":{}}}", crc32fast::hash(&body)).as_bytes());
        let mut bad_lengths = encode_line(&scored("c9", 0.9)).unwrap();
        bad_lengths = String::from_utf8(bad_lengths).unwrap().replace("[0.5,0.5]", "[1.0]").into();
        let mut file = Vec::new();
        file.extend_from_slice(b"not json at all\n\n"); // lines 1 and 2
        file.extend_from_slice(b"\xff\xfe\x00 binary\n"); // 3
        file.extend_from_slice(b"{\"crc32\":0}\n"); // 4: no record before the CRC
        file.extend_from_slice(&fake); // 5: a good CRC over something that is not a record
        file.push(b'\n');
        file.extend_from_slice(&good); // 6
        file.extend_from_slice(b"\n\n"); // 7 and 8: empty
        file.extend_from_slice(b"{\"x\":1,\"crc32\":12ab}\n"); // 9
        file.extend_from_slice(&bad_lengths); // 10: CRC fails (and lengths disagree)
        fs::write(journal.path(), file).unwrap();
        drop(journal);

        let (journal, stats) = reopen(dir.path());
        assert_eq!(stats, JournalStats { records: 1, damaged_lines: vec![1, 3, 4, 5, 9, 10] });
        assert_eq!(journal.records(), vec![scored("c1", 0.1)]);
    }

    #[test]
    fn a_record_whose_lengths_disagree_is_damaged_even_with_a_good_crc() {
        let mut r = scored("c1", 0.1);
        r.weights.pop();
        let body = serde_json::to_vec(&r).unwrap();
        let mut line = body[..body.len() - 1].to_vec();
        line.extend_from_slice(format!(",\"crc32\":{}}}", crc32fast::hash(&body)).as_bytes());
        assert_eq!(decode_line(&line), None);
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = reopen(dir.path());
        let err = journal.append(r).unwrap_err();
        assert!(
            matches!(err, JournalError::LengthMismatch { members: 2, weights: 1, .. }),
            "{err}"
        );
        assert_eq!(fs::read(journal.path()).unwrap(), b"");
    }

    #[test]
    fn the_crc_marker_inside_strings_and_metrics_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = reopen(dir.path());
        let mut r = scored("c1,\"crc32\":1}", 0.1);
        r.evaluator = "eval --tag ',\"crc32\":7}' {soup}".to_owned();
        r.metrics.insert("crc32".to_owned(), 5.into());
        r.metrics.insert("zzz".to_owned(), serde_json::json!({"crc32": 6}));
        journal.append(r.clone()).unwrap();
        let (journal, stats) = reopen(dir.path());
        assert_eq!(stats.damaged(), 0);
        assert_eq!(journal.records(), vec![r]);
    }

    #[test]
    fn concurrent_appends_give_intact_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = reopen(dir.path());
        let per_thread = 50;
        std::thread::scope(|s| {
            for t in 0..4 {
                let journal = &journal;
                s.spawn(move || {
                    for i in 0..per_thread {
                        let members = [(&*format!("t{t}/run-{i}"), 1.0)];
                        let mut r = record(&format!("t{t}-{i}"), &members, Outcome::Score(0.5));
                        r.metrics.insert("padding".into(), "x".repeat(4096 * (i % 3)).into());
                        journal.append(r).unwrap();
                    }
                });
            }
        });
        assert_eq!(journal.len(), 4 * per_thread);
        let text = lines(&journal);
        assert_eq!(text.len(), 4 * per_thread);
        assert!(text.iter().all(|line| decode_line(line.as_bytes()).is_some()));
        let (journal, stats) = reopen(dir.path());
        assert_eq!(stats, JournalStats { records: 4 * per_thread, damaged_lines: vec![] });
        for t in 0..4 {
            for i in 0..per_thread {
                let (members, weights) = soup(&[(&format!("t{t}/run-{i}"), 1.0)]);
                let found = journal.find(&members, &weights, "python eval.py {soup}").unwrap();
                assert_eq!(found.candidate, format!("t{t}-{i}"));
            }
        }
    }

    #[test]
    fn journal_is_shareable_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Journal>();
    }

    #[test]
    fn find_matches_members_with_their_weights_and_the_evaluator() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = reopen(dir.path());
        let eval = "python eval.py {soup}";
        let ab = &[("a", 0.25), ("b", 0.75)];
        journal.append(record("first", ab, Outcome::Failure("timeout".into()))).unwrap();
        journal.append(record("other", &[("a", 0.5), ("b", 0.5)], Outcome::Score(0.7))).unwrap();
        journal.append(record("second", ab, Outcome::Score(0.9))).unwrap();
        let mut other_eval = record("third", ab, Outcome::Score(0.1));
        other_eval.evaluator = "python eval.py --fast {soup}".into();
        journal.append(other_eval).unwrap();

        let check = |journal: &Journal| {
            let find = |pairs: &[(&str, f64)], evaluator: &str| {
                let (members, weights) = soup(pairs);
                journal.find(&members, &weights, evaluator).map(|r| r.candidate)
            };
            assert_eq!(find(ab, eval).as_deref(), Some("second"), "the latest one");
            assert_eq!(find(&[("b", 0.75), ("a", 0.25)], eval).as_deref(), Some("second"));
            assert_eq!(find(&[("a", 0.75), ("b", 0.25)], eval), None, "weights stay paired");
            assert_eq!(find(&[("a", 0.5), ("b", 0.5)], eval).as_deref(), Some("other"));
            assert_eq!(find(ab, "python eval.py --fast {soup}").as_deref(), Some("third"));
            assert_eq!(find(ab, "python eval.py  {soup}"), None);
            assert_eq!(find(&[("a", 0.25), ("b", 0.75), ("c", 0.0)], eval), None);
            assert_eq!(find(&[("a", 0.25)], eval), None);
            assert_eq!(find(&[("./a", 0.25), ("b", 0.75)], eval), None, "paths as given");
            assert_eq!(find(&[("a", 0.25), ("b", 0.75 + f64::EPSILON)], eval), None, "exact");
            let (members, _) = soup(ab);
            assert_eq!(journal.find(&members, &[0.25], eval), None, "lengths differ");
        };
        check(&journal);
        drop(journal);
        let (journal, _) = reopen(dir.path());
        check(&journal);
    }

    #[test]
    fn failures_are_found_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = reopen(dir.path());
        let mut r = record("c", &[("a", 1.0)], Outcome::Failure("exit status 1".into()));
        r.attempts = 3;
        journal.append(r.clone()).unwrap();
        let (journal, _) = reopen(dir.path());
        let found = journal.find(&["a".to_owned()], &[1.0], &r.evaluator).unwrap();
        assert_eq!(found.outcome, Outcome::Failure("exit status 1".into()));
        assert_eq!(found.outcome.score(), None);
        assert_eq!(found.attempts, 3);
    }

    #[test]
    fn negative_zero_weight_equals_zero() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = reopen(dir.path());
        journal.append(record("c", &[("a", 1.0), ("b", -0.0)], Outcome::Score(0.5))).unwrap();
        let (journal, _) = reopen(dir.path());
        let (members, _) = soup(&[("a", 1.0), ("b", 0.0)]);
        let evaluator = "python eval.py {soup}";
        assert_eq!(journal.find(&members, &[1.0, 0.0], evaluator).unwrap().candidate, "c");
        assert_eq!(journal.find(&members, &[1.0, -0.0], evaluator).unwrap().candidate, "c");
    }

    #[test]
    fn every_weight_reads_back_bit_for_bit() {
        // Default serde_json parsing gets 1/11 and about a third of random f64 one ulp
        // off; resuming depends on the `float_roundtrip` feature.
        let mut weights = vec![1.0 / 11.0, 0.1 + 0.2, 1.0 / 3.0, 5e-324, 2.2250738585072014e-308];
        weights.extend((1..40).flat_map(|n| (1..=n).map(move |k| f64::from(k) / f64::from(n))));
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while weights.len() < 3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let w = f64::from_bits(x);
            if w.is_finite() {
                weights.push(w);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = reopen(dir.path());
        for chunk in weights.chunks(3) {
            let members: Vec<String> = (0..chunk.len()).map(|i| format!("m{i}")).collect();
            let pairs: Vec<_> =
                members.iter().map(String::as_str).zip(chunk.iter().copied()).collect();
            journal.append(record("c", &pairs, Outcome::Score(chunk[0]))).unwrap();
        }
        let (journal, stats) = reopen(dir.path());
        assert_eq!(stats.damaged(), 0);
        for (chunk, r) in weights.chunks(3).zip(journal.records()) {
            let bits = |v: &[f64]| v.iter().map(|w| w.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&r.weights), bits(chunk));
            assert_eq!(r.outcome.score().map(f64::to_bits), Some(chunk[0].to_bits()));
            assert!(journal.find(&r.members, chunk, &r.evaluator).is_some());
        }
    }

    #[test]
    fn non_finite_numbers_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = reopen(dir.path());
        let mut nan_score = scored("c1", f64::NAN);
        let mut inf_weight = scored("c2", 0.5);
        inf_weight.weights[1] = f64::INFINITY;
        let mut nan_seconds = scored("c3", 0.5);
        nan_seconds.evaluate_seconds = f64::NAN;
        let gradient = |dots: Vec<f64>, temperature| Gradient { dots, norm: 1.0, temperature };
        let mut nan_dot = scored("c5", 0.5);
        nan_dot.gradient = Some(gradient(vec![0.5, f64::NAN], None));
        let mut inf_temperature = scored("c6", 0.5);
        inf_temperature.gradient = Some(gradient(vec![0.5, 1.5], Some(f64::NEG_INFINITY)));
        for (r, field) in [
            (&mut nan_score, "score"),
            (&mut inf_weight, "weights[1]"),
            (&mut nan_seconds, "evaluate_seconds"),
            (&mut nan_dot, "gradient.dots[1]"),
            (&mut inf_temperature, "gradient.temperature"),
        ] {
            match journal.append(r.clone()) {
                Err(JournalError::NonFinite { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        // A NaN metric cannot even be built: serde_json turns it into null.
        assert_eq!(Value::from(f64::NAN), Value::Null);
        assert_eq!(fs::read(journal.path()).unwrap(), b"");
        assert!(journal.is_empty());
        journal.append(scored("c4", 0.5)).unwrap();
        assert_eq!(reopen(dir.path()).1, JournalStats { records: 1, damaged_lines: vec![] });
    }

    #[test]
    fn a_failed_write_is_followed_by_a_fresh_line() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = reopen(dir.path());
        journal.append(scored("c1", 0.1)).unwrap();
        // Simulate a write that failed half-way: a fragment without its newline.
        let mut file = OpenOptions::new().append(true).open(journal.path()).unwrap();
        file.write_all(b"{\"candidate\":\"c2\",\"mem").unwrap();
        journal.lock().needs_newline = true;
        journal.append(scored("c3", 0.3)).unwrap();
        let (journal, stats) = reopen(dir.path());
        assert_eq!(stats, JournalStats { records: 2, damaged_lines: vec![2] });
        assert_eq!(journal.records(), vec![scored("c1", 0.1), scored("c3", 0.3)]);
    }

    #[test]
    fn opening_fails_cleanly_when_the_run_dir_is_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        fs::write(&not_a_dir, b"x").unwrap();
        let err = Journal::open(&not_a_dir).unwrap_err();
        assert!(matches!(err, JournalError::Io { .. }), "{err}");
        assert!(err.to_string().starts_with("cannot create"), "{err}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(format_utc(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(format_utc(1_775_035_812), "2026-04-01T09:30:12Z");
        let now = utc_timestamp();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.as_str() > "2025");
    }
}
