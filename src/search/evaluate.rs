//! Running the user's evaluation command on a candidate soup and reading its score.
//!
//! The soup searches (`soup greedy`, `soup pruned`) choose between candidate soups by
//! a score only the user can compute — accuracy on their held-out set, with their own
//! code — so they run the user's command once per candidate. This module is the one
//! place that does it; the contract with that command is `docs/EVALUATOR.md`.
//!
//! A broken evaluation (non-zero exit, timeout, no score, NaN) is an ordinary
//! [`Outcome::Failed`], because a search must be able to go on past one candidate that
//! breaks the evaluator; an evaluation stopped by its cancel flag (Ctrl-C, or a
//! speculative evaluation made stale) is [`Outcome::Cancelled`]. Only what the caller
//! has to stop for is an [`EvalError`]: a bad template or candidate id, or a log
//! directory that cannot be written.
//!
//! Output goes straight to log files, never through pipes, so a chatty evaluator can
//! neither block on a full pipe nor grow our memory; the score is read back from the
//! last [`STDOUT_TAIL`] bytes of the stdout log.
//!
//! Each evaluation runs in a process group of its own and is stopped gracefully
//! (the stop signal, a grace period, then SIGKILL: [`crate::search::process`]);
//! whatever the command started in the background is stopped with it. Each holds
//! one of the search's [`Slots`] while it runs, which gives it `SOUP_SLOT` and, with
//! devices, `CUDA_VISIBLE_DEVICES`. A persistent evaluation server
//! ([`crate::search::server`]) answers the same [`Evaluate`] requests.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::{Map, Value};

use crate::search::process::{self, Stop};
use crate::search::score_file::{ScoreFile, OUT_PLACEHOLDER};
use crate::search::slots::{Slot, Slots};

/// The placeholder replaced by the candidate's directory, shell-quoted.
pub const PLACEHOLDER: &str = "{model}";

/// The placeholder replaced by the evaluation's slot number (`SOUP_SLOT`).
pub const SLOT_PLACEHOLDER: &str = "{slot}";

/// The placeholder replaced by the slot's devices, comma-separated (with
/// `--devices` only).
pub const DEVICES_PLACEHOLDER: &str = "{devices}";

/// The placeholder replaced by the path the gradient is to be written to,
/// shell-quoted (learned soups by gradient), or by `''` when none is wanted.
pub const GRAD_PLACEHOLDER: &str = "{grad}";

/// How many bytes at the end of a stderr log [`log_tail`] reads.
const LOG_TAIL: u64 = 4096;

/// How many bytes at the end of the stdout log are read back to find the score.
pub const STDOUT_TAIL: u64 = 64 * 1024;

/// The shell that runs the command template, as `/bin/sh -c TEMPLATE`.
const SHELL: &str = "/bin/sh";

/// Longest excerpt of an offending stdout line quoted in a failure, in characters.
const QUOTED_CHARS: usize = 200;

/// Longest candidate id, in bytes.
const MAX_CANDIDATE_LEN: usize = 100;

/// First and longest pause between two checks of a running evaluation: short
/// evaluations are noticed within a millisecond or two, and a cancel flag or deadline
/// within `POLL_MAX` of being reached.
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(20);

/// Extra metrics: the evaluator's JSON object without its `"score"`.
pub type Metrics = Map<String, Value>;

/// What the caller must stop for; a failed or cancelled evaluation is an [`Outcome`]
/// instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The command template is unusable.
    #[error("evaluation command {template:?}: {reason}")]
    Template {
        /// The template as given.
        template: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A candidate id is not a safe file-name stem (it names the log files).
    #[error(
        "candidate id {id:?} must be 1 to {MAX_CANDIDATE_LEN} characters among \
         A-Z a-z 0-9 _ -"
    )]
    CandidateId {
        /// The id as given.
        id: String,
    },

    /// The run directory, the logs directory or a log file could not be used.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being attempted ("create", "read", ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A request to an evaluation server could not be encoded (a non-finite
    /// weight).
    #[error("cannot encode the request for candidate {candidate}")]
    Request {
        /// The candidate.
        candidate: String,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },

    /// A candidate's path cannot be sent to an evaluation server: JSON carries
    /// only UTF-8.
    #[error("the candidate directory {} is not valid UTF-8, which an evaluation server request cannot carry", path.display())]
    NotUtf8 {
        /// The path.
        path: PathBuf,
    },

    /// The state of a running evaluation could not be queried.
    #[error("cannot wait for the evaluation of candidate {candidate}")]
    Wait {
        /// The candidate being evaluated.
        candidate: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

impl EvalError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| EvalError::Io { action, path, source }
    }
}

/// Why one evaluation produced no score.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Failure {
    /// The shell could not be started (the OS error, as text).
    Spawn(String),
    /// The command exited with this non-zero code (even if it printed a score).
    Exit(i32),
    /// The command was killed by this signal.
    Signal(i32),
    /// The command ran longer than the timeout and was killed.
    Timeout(Duration),
    /// The last non-empty line of stdout holds no score.
    NoScore {
        /// That line, truncated to 200 characters, control characters escaped
        /// (empty when stdout was empty).
        line: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The score is NaN or infinite.
    NotFinite {
        /// The line that held it, as in [`Failure::NoScore`].
        line: String,
    },
    /// An evaluation server ended before answering (how it ended, e.g. `exited
    /// with code 1`).
    ServerExited(String),
    /// An evaluation server answered with `"error"` (its message, cut and escaped
    /// as in [`Failure::NoScore`]).
    ServerError(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Spawn(e) => write!(f, "could not start {SHELL}: {e}"),
            Failure::Exit(code) => write!(f, "exited with code {code}{}", exit_hint(*code)),
            Failure::Signal(sig) => write!(f, "killed by signal {sig}{}", signal_name(*sig)),
            Failure::Timeout(limit) => write!(f, "timed out after {limit:?}"),
            Failure::NoScore { line, problem } if line.is_empty() => {
                write!(f, "no score: {problem}")
            }
            Failure::NoScore { line, problem } => write!(f, "no score: {problem}: `{line}`"),
            Failure::NotFinite { line } => write!(f, "score is not finite: `{line}`"),
            Failure::ServerExited(how) => write!(f, "the evaluation server {how}"),
            Failure::ServerError(message) => write!(f, "the evaluation server says: {message}"),
        }
    }
}

fn exit_hint(code: i32) -> &'static str {
    match code {
        126 => " (command not executable)",
        127 => " (command not found)",
        _ => "",
    }
}

fn signal_name(sig: i32) -> &'static str {
    match Signal::from_named_raw(sig) {
        Some(Signal::KILL) => " (SIGKILL; out of memory?)",
        Some(Signal::SEGV) => " (SIGSEGV)",
        Some(Signal::ABORT) => " (SIGABRT)",
        Some(Signal::BUS) => " (SIGBUS)",
        Some(Signal::TERM) => " (SIGTERM)",
        Some(Signal::INT) => " (SIGINT)",
        Some(Signal::PIPE) => " (SIGPIPE)",
        _ => "",
    }
}

/// The result of one evaluation, after any retries.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The command succeeded and printed a finite score.
    Score {
        /// The score; higher is better.
        score: f64,
        /// The other keys of a JSON result line (empty for a bare number).
        metrics: Metrics,
    },
    /// The last attempt failed.
    Failed {
        /// Why.
        reason: Failure,
    },
    /// The cancel flag was raised: the running command was killed (or the next
    /// attempt not started). Not a verdict on the candidate.
    Cancelled,
}

impl Outcome {
    /// The score, if there is one.
    pub fn score(&self) -> Option<f64> {
        match self {
            Outcome::Score { score, .. } => Some(*score),
            Outcome::Failed { .. } | Outcome::Cancelled => None,
        }
    }
}

/// One candidate's evaluation: its outcome and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The last attempt's outcome.
    pub outcome: Outcome,
    /// Wall time of all attempts together, in seconds.
    pub seconds: f64,
    /// Attempts started (1 + retries used); 0 when the evaluation was cancelled
    /// before its command started.
    pub attempts: u32,
    /// The last attempt's stdout log.
    pub stdout_log: PathBuf,
    /// The last attempt's stderr log.
    pub stderr_log: PathBuf,
}

/// What an evaluator is asked to score: one candidate soup.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The candidate's id: a file-name stem unique within the run, e.g.
    /// `greedy-0007` (letters, digits, `_`, `-`).
    pub candidate: &'a str,
    /// The directory the candidate was written to.
    pub model_dir: &'a Path,
    /// Its members as journaled (ingredient paths as given).
    pub members: &'a [String],
    /// One weight per member.
    pub weights: &'a [f64],
    /// Where the evaluator writes the gradient of its loss (learned soups by
    /// gradient: `SOUP_GRAD`, `{grad}`, `"grad"`); `None` when none is wanted.
    pub gradient: Option<&'a Path>,
    /// The logit temperature β to score the candidate at (`SOUP_TEMPERATURE`,
    /// `"temperature"`), when the search learns one.
    pub temperature: Option<f64>,
}

/// Something that scores candidates: a command run per candidate
/// ([`Evaluator`]) or a persistent server ([`crate::search::server::Server`]).
/// Called from any number of threads at once.
pub trait Evaluate: Sync {
    /// Scores one candidate, retrying failures. Blocks until done; raising
    /// `cancel` stops the evaluation (gracefully: [`Stop`]) and gives
    /// [`Outcome::Cancelled`].
    fn evaluate(
        &self,
        request: &Request<'_>,
        cancel: Option<&AtomicBool>,
    ) -> Result<Evaluation, EvalError>;

    /// What the journal records as the evaluator of every result (see
    /// EVALUATOR.md, "The journal's key").
    fn journal_key(&self) -> String;

    /// How many times a server had to be started again after it died, timed out
    /// or was stopped (0 for per-candidate commands).
    fn restarts(&self) -> usize {
        0
    }
}

/// How evaluations run, for both kinds of evaluator.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bounds each attempt.
    pub timeout: Option<Duration>,
    /// A failed attempt is run again up to this many more times.
    pub retries: u32,
    /// How an evaluation is stopped (timeout, cancel, Ctrl-C).
    pub stop: Stop,
    /// The places evaluations run in: `--jobs` of them, with devices or not.
    pub slots: Arc<Slots>,
}

impl Default for Options {
    fn default() -> Self {
        Options { timeout: None, retries: 0, stop: Stop::default(), slots: Arc::new(Slots::new(1)) }
    }
}

/// The user's evaluation command, ready to run on candidates from any number of
/// threads at once.
#[derive(Debug, Clone)]
pub struct Evaluator {
    template: String,
    run_dir: PathBuf,
    logs_dir: PathBuf,
    options: Options,
    score_file: Option<ScoreFile>,
}

impl Evaluator {
    /// Checks `template` and creates `RUN_DIR/logs/`.
    ///
    /// The template need not contain `{model}`: the path is also in `SOUP_MODEL`.
    /// It must not put `{model}` in quotes of its own (`'{model}'`, `"{model}"`),
    /// since the substituted path is already quoted, and may use `{devices}` only
    /// when the slots have devices.
    pub fn new(template: &str, run_dir: &Path, options: Options) -> Result<Self, EvalError> {
        check_template(template, &options.slots)?;
        let (run_dir, logs_dir) = logs_dir(run_dir)?;
        Ok(Evaluator {
            template: template.to_owned(),
            run_dir,
            logs_dir,
            options,
            score_file: None,
        })
    }

    /// Reads every score from `score_file` instead of stdout (the journal key
    /// says so: [`ScoreFile::describe`]).
    pub fn with_score_file(mut self, score_file: ScoreFile) -> Self {
        self.score_file = Some(score_file);
        self
    }

    /// `RUN_DIR/out/ID/`, the candidate's `{out}`, when the template or the
    /// score file uses one.
    fn out_dir(&self, candidate: &str) -> Option<PathBuf> {
        let used = self.template.contains(OUT_PLACEHOLDER)
            || self.score_file.as_ref().is_some_and(ScoreFile::uses_out);
        used.then(|| self.run_dir.join("out").join(candidate))
    }

    /// The absolute run directory (`SOUP_RUN_DIR`).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The directory holding every evaluation's logs.
    pub fn logs_dir(&self) -> &Path {
        &self.logs_dir
    }

    /// The shell command run for `model_dir` in slot `slot` with `devices`: the
    /// template with every `{model}` replaced by the absolute path, shell-quoted,
    /// `{slot}` by the slot number, `{devices}` by the devices, `{grad}` by the
    /// gradient's path, shell-quoted (`''` without one), and `{out}` by the output
    /// directory `out`, shell-quoted. The template is read once, left to right, so
    /// nothing substituted is ever read again.
    pub fn command_line(
        &self,
        model_dir: &Path,
        slot: usize,
        devices: &str,
        gradient: Option<&Path>,
        out: Option<&Path>,
    ) -> OsString {
        let quoted = quote_bytes(model_dir.as_os_str().as_bytes());
        let grad = quote_bytes(gradient.map_or(&[][..], |g| g.as_os_str().as_bytes()));
        let out = out.map(|o| quote_bytes(o.as_os_str().as_bytes())).unwrap_or_default();
        let slot = slot.to_string();
        OsString::from_vec(substitute(
            &self.template,
            &[
                (PLACEHOLDER, quoted.as_slice()),
                (SLOT_PLACEHOLDER, slot.as_bytes()),
                (DEVICES_PLACEHOLDER, devices.as_bytes()),
                (GRAD_PLACEHOLDER, grad.as_slice()),
                (OUT_PLACEHOLDER, out.as_slice()),
            ],
        ))
    }

    /// Evaluates the soup in `model_dir` as candidate `candidate` (a file-name stem
    /// unique within the run, e.g. `c0007`), retrying failures. Blocks until done;
    /// raising `cancel` stops the running command (the stop signal to its group,
    /// then SIGKILL after the grace period) and gives [`Outcome::Cancelled`].
    pub fn evaluate(
        &self,
        candidate: &str,
        model_dir: &Path,
        cancel: Option<&AtomicBool>,
    ) -> Result<Evaluation, EvalError> {
        let request = Request {
            candidate,
            model_dir,
            members: &[],
            weights: &[],
            gradient: None,
            temperature: None,
        };
        self.evaluate_request(&request, cancel)
    }

    /// [`Evaluator::evaluate`] with everything a request carries: the gradient's
    /// path and the temperature as well.
    fn evaluate_request(
        &self,
        request: &Request<'_>,
        cancel: Option<&AtomicBool>,
    ) -> Result<Evaluation, EvalError> {
        let (candidate, model_dir) = (request.candidate, request.model_dir);
        check_candidate(candidate)?;
        let model_dir =
            std::path::absolute(model_dir).map_err(EvalError::io("resolve", model_dir))?;
        let started = Instant::now();
        let Some(slot) = self.options.slots.acquire(cancel) else {
            let (stdout_log, stderr_log) = self.log_paths(candidate, 1);
            let outcome = Outcome::Cancelled;
            return Ok(Evaluation { outcome, seconds: 0.0, attempts: 0, stdout_log, stderr_log });
        };
        let devices = slot.devices();
        let out_dir = self.out_dir(candidate);
        let devices = devices.as_deref().unwrap_or("");
        let command = self.command_line(
            &model_dir,
            slot.index(),
            devices,
            request.gradient,
            out_dir.as_deref(),
        );
        let mut attempts = 0u32;
        loop {
            if is_raised(cancel) {
                // Not started (again): the last attempt's logs, if any, stay.
                let (stdout_log, stderr_log) = self.log_paths(candidate, attempts.max(1));
                let seconds = started.elapsed().as_secs_f64();
                let outcome = Outcome::Cancelled;
                return Ok(Evaluation { outcome, seconds, attempts, stdout_log, stderr_log });
            }
            attempts = attempts.saturating_add(1);
            let (stdout_log, stderr_log) = self.log_paths(candidate, attempts);
            let attempt = Attempt {
                candidate,
                number: attempts,
                model_dir: &model_dir,
                out_dir: out_dir.as_deref(),
                command: &command,
                slot: &slot,
                request,
                stdout_log,
                stderr_log,
            };
            let outcome = self.run(&attempt, cancel)?;
            if !matches!(outcome, Outcome::Failed { .. }) || attempts > self.options.retries {
                let seconds = started.elapsed().as_secs_f64();
                let Attempt { stdout_log, stderr_log, .. } = attempt;
                return Ok(Evaluation { outcome, seconds, attempts, stdout_log, stderr_log });
            }
        }
    }

    /// `logs/ID.stdout` for the first attempt, `logs/ID.N.stdout` for attempt N ≥ 2.
    fn log_paths(&self, candidate: &str, attempt: u32) -> (PathBuf, PathBuf) {
        let stem = match attempt {
            1 => candidate.to_owned(),
            n => format!("{candidate}.{n}"),
        };
        (self.logs_dir.join(format!("{stem}.stdout")), self.logs_dir.join(format!("{stem}.stderr")))
    }

    /// One run of the command, from spawn to score.
    fn run(&self, attempt: &Attempt, cancel: Option<&AtomicBool>) -> Result<Outcome, EvalError> {
        let (stdout_log, stderr_log) = (&attempt.stdout_log, &attempt.stderr_log);
        let mut shell = Command::new(SHELL);
        if let Some(out) = attempt.out_dir {
            // Fresh for every attempt: nothing an earlier one left can be read.
            match fs::remove_dir_all(out) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(EvalError::io("empty", out)(e))
                }
                _ => fs::create_dir_all(out).map_err(EvalError::io("create", out))?,
            }
            shell.env("SOUP_OUT", out);
        }
        let stdout = File::create(stdout_log).map_err(EvalError::io("create", stdout_log))?;
        let stderr = File::create(stderr_log).map_err(EvalError::io("create", stderr_log))?;
        shell
            .arg("-c")
            .arg(attempt.command)
            .env("SOUP_MODEL", attempt.model_dir)
            .env("SOUP_CANDIDATE", attempt.candidate)
            .env("SOUP_ATTEMPT", attempt.number.to_string())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        slot_environment(&mut shell, &self.run_dir, attempt.slot);
        gradient_environment(&mut shell, attempt.request);
        process::isolate(&mut shell);
        let mut child = match shell.spawn() {
            Ok(child) => child,
            Err(e) => return Ok(failed(Failure::Spawn(e.to_string()))),
        };
        let deadline = self.options.timeout.and_then(|t| Instant::now().checked_add(t));
        let status = match supervise(&mut child, deadline, cancel, &self.options.stop) {
            Ok(Ended::Exited(status)) => status,
            Ok(Ended::TimedOut) => {
                return Ok(failed(Failure::Timeout(self.options.timeout.unwrap_or_default())))
            }
            Ok(Ended::Cancelled) => return Ok(Outcome::Cancelled),
            Err(source) => {
                return Err(EvalError::Wait { candidate: attempt.candidate.to_owned(), source })
            }
        };
        if let Some(failure) = exit_failure(status) {
            return Ok(failed(failure));
        }
        if let Some(score_file) = &self.score_file {
            return Ok(match score_file.read(attempt.out_dir, attempt.model_dir) {
                Ok((score, metrics)) => Outcome::Score { score, metrics },
                Err(reason) => failed(reason),
            });
        }
        let tail = read_tail(stdout_log).map_err(EvalError::io("read", stdout_log))?;
        Ok(match parse_score(&tail) {
            Ok((score, metrics)) => Outcome::Score { score, metrics },
            Err(reason) => failed(reason),
        })
    }
}

impl Evaluate for Evaluator {
    fn evaluate(
        &self,
        request: &Request<'_>,
        cancel: Option<&AtomicBool>,
    ) -> Result<Evaluation, EvalError> {
        self.evaluate_request(request, cancel)
    }

    /// The template itself, so that journals written before servers existed keep
    /// their meaning; with a score file, followed by what it reads.
    fn journal_key(&self) -> String {
        match &self.score_file {
            Some(file) => format!("{} {}", self.template, file.describe()),
            None => self.template.clone(),
        }
    }
}

/// The absolute run directory and its `logs/`, created.
pub(crate) fn logs_dir(run_dir: &Path) -> Result<(PathBuf, PathBuf), EvalError> {
    let run_dir = std::path::absolute(run_dir).map_err(EvalError::io("resolve", run_dir))?;
    let logs_dir = run_dir.join("logs");
    fs::create_dir_all(&logs_dir).map_err(EvalError::io("create", &logs_dir))?;
    Ok((run_dir, logs_dir))
}

/// `SOUP_RUN_DIR`, `SOUP_SLOT` and, with devices, `CUDA_VISIBLE_DEVICES`.
pub(crate) fn slot_environment(command: &mut Command, run_dir: &Path, slot: &Slot<'_>) {
    command.env("SOUP_RUN_DIR", run_dir).env("SOUP_SLOT", slot.index().to_string());
    if let Some(devices) = slot.devices() {
        command.env("CUDA_VISIBLE_DEVICES", devices);
    }
}

/// `SOUP_GRAD` and `SOUP_TEMPERATURE` when the request carries them; removed
/// otherwise, so that none is inherited from `soup`'s own environment.
fn gradient_environment(command: &mut Command, request: &Request<'_>) {
    match request.gradient {
        Some(path) => command.env("SOUP_GRAD", path),
        None => command.env_remove("SOUP_GRAD"),
    };
    match request.temperature {
        Some(beta) => command.env("SOUP_TEMPERATURE", format_float(beta)),
        None => command.env_remove("SOUP_TEMPERATURE"),
    };
}

/// A float as the shortest text that reads back as the same `f64` (`0.5`, `2`,
/// `1e-7`): what `SOUP_TEMPERATURE` carries.
pub(crate) fn format_float(x: f64) -> String {
    serde_json::to_string(&x).unwrap_or_else(|_| x.to_string())
}

/// `template` with each placeholder replaced by its value, in one left-to-right
/// pass.
pub(crate) fn substitute(template: &str, values: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(template.len());
    let mut rest = template;
    'scan: while !rest.is_empty() {
        for (placeholder, value) in values {
            if let Some(after) = rest.strip_prefix(placeholder) {
                out.extend_from_slice(value);
                rest = after;
                continue 'scan;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
        rest = chars.as_str();
    }
    out
}

/// The last `lines` non-empty lines of a log (its last 4 KiB at most), each cut at
/// 200 characters with control characters escaped; empty when the log cannot be
/// read. For showing why an evaluation failed.
pub fn log_tail(path: &Path, lines: usize) -> Vec<String> {
    let Ok(mut file) = File::open(path) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL))).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.take(LOG_TAIL).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut tail: Vec<String> = text
        .split(['\n', '\r'])
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(lines)
        .map(excerpt)
        .collect();
    tail.reverse();
    tail
}

/// One run of the command: who and what it evaluates, and where its output goes.
struct Attempt<'a> {
    candidate: &'a str,
    /// 1 for the first run, 2 for the first retry, ...
    number: u32,
    model_dir: &'a Path,
    /// The fresh `{out}` directory, when the evaluator uses one.
    out_dir: Option<&'a Path>,
    command: &'a OsStr,
    slot: &'a Slot<'a>,
    request: &'a Request<'a>,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
}

fn failed(reason: Failure) -> Outcome {
    Outcome::Failed { reason }
}

fn is_raised(flag: Option<&AtomicBool>) -> bool {
    flag.is_some_and(|f| f.load(Ordering::Relaxed))
}

fn check_template(template: &str, slots: &Slots) -> Result<(), EvalError> {
    check_command(template)?;
    if template.contains(DEVICES_PLACEHOLDER) && !slots.has_devices() {
        let reason = "uses {devices}, but no devices were given (--devices)";
        return Err(EvalError::Template { template: template.to_owned(), reason });
    }
    if ["'{out}'", "\"{out}\""].iter().any(|q| template.contains(q)) {
        let reason = "{out} must not be quoted: soup quotes the path itself";
        return Err(EvalError::Template { template: template.to_owned(), reason });
    }
    Ok(())
}

/// What any command template must satisfy: not empty, no NUL, `{model}` and
/// `{grad}` unquoted.
pub(crate) fn check_command(template: &str) -> Result<(), EvalError> {
    let reason = if template.trim().is_empty() {
        "is empty"
    } else if template.contains('\0') {
        "contains a NUL byte"
    } else if ["'{model}'", "\"{model}\""].iter().any(|q| template.contains(q)) {
        "{model} must not be quoted: soup quotes the path itself (write {model} bare, \
         or use \"$SOUP_MODEL\" inside quotes)"
    } else if ["'{grad}'", "\"{grad}\""].iter().any(|q| template.contains(q)) {
        "{grad} must not be quoted: soup quotes the path itself (write {grad} bare, \
         or use \"$SOUP_GRAD\" inside quotes)"
    } else {
        return Ok(());
    };
    Err(EvalError::Template { template: template.to_owned(), reason })
}

pub(crate) fn check_candidate(id: &str) -> Result<(), EvalError> {
    let safe = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if id.is_empty() || id.len() > MAX_CANDIDATE_LEN || !id.bytes().all(safe) {
        return Err(EvalError::CandidateId { id: id.to_owned() });
    }
    Ok(())
}

/// Quotes `s` for a POSIX shell: one word that the shell turns back into exactly
/// `s`, whatever it contains (spaces, quotes, `$`, backticks, `;`, newlines).
pub fn shell_quote(s: &str) -> String {
    // The input is UTF-8 and quoting only adds ASCII, so nothing is lossy here.
    String::from_utf8_lossy(&quote_bytes(s.as_bytes())).into_owned()
}

/// `'…'`, with every embedded `'` written `'\''` (close, escaped quote, reopen).
fn quote_bytes(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'\'');
    for &b in s {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// How a supervised command ended.
enum Ended {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
}

/// Waits for `child` to exit, the deadline to pass or the cancel flag to be raised;
/// then stops whatever still runs in the child's process group (gracefully, see
/// [`process::stop_group`]) and reaps the child.
fn supervise(
    child: &mut Child,
    deadline: Option<Instant>,
    cancel: Option<&AtomicBool>,
    stop: &Stop,
) -> io::Result<Ended> {
    let watched = watch(child, deadline, cancel);
    let status = process::stop_group(child, stop);
    match (watched?, status?) {
        (Some(end), _) => Ok(end),
        (None, status) => Ok(Ended::Exited(status)),
    }
}

/// Polls until the child exits (`None`) or the deadline or cancel flag ends the wait.
fn watch(
    child: &Child,
    deadline: Option<Instant>,
    cancel: Option<&AtomicBool>,
) -> io::Result<Option<Ended>> {
    let mut pause = POLL_MIN;
    loop {
        if process::has_exited(child)? {
            return Ok(None);
        }
        if is_raised(cancel) {
            return Ok(Some(Ended::Cancelled));
        }
        let now = Instant::now();
        let left = deadline.map(|d| d.saturating_duration_since(now));
        if left == Some(Duration::ZERO) {
            return Ok(Some(Ended::TimedOut));
        }
        thread::sleep(left.map_or(pause, |left| left.min(pause)));
        pause = (pause * 2).min(POLL_MAX);
    }
}

pub(crate) fn exit_failure(status: ExitStatus) -> Option<Failure> {
    if status.success() {
        return None;
    }
    Some(match (status.code(), status.signal()) {
        (Some(code), _) => Failure::Exit(code),
        (None, Some(sig)) => Failure::Signal(sig),
        (None, None) => Failure::Exit(-1),
    })
}

/// The last [`STDOUT_TAIL`] bytes of a log, invalid UTF-8 replaced.
fn read_tail(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(STDOUT_TAIL)))?;
    let mut bytes = Vec::new();
    file.take(STDOUT_TAIL).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Finds the score in the tail of an evaluator's stdout: the last non-empty line
/// (lines end at `\n` or `\r`; surrounding whitespace is ignored) must be a number
/// or a JSON object with a numeric `"score"`, whose other keys are returned as
/// metrics. The score must be finite.
pub fn parse_score(stdout_tail: &str) -> Result<(f64, Metrics), Failure> {
    let last = stdout_tail.split(['\n', '\r']).map(str::trim).rev().find(|l| !l.is_empty());
    let Some(line) = last else {
        return Err(no_score("", "stdout is empty"));
    };
    let (score, metrics) = if line.starts_with('{') {
        parse_json(line)?
    } else {
        (parse_number(line)?, Metrics::new())
    };
    if !score.is_finite() {
        return Err(Failure::NotFinite { line: excerpt(line) });
    }
    Ok((score, metrics))
}

fn parse_number(line: &str) -> Result<f64, Failure> {
    line.parse::<f64>().map_err(|_| {
        no_score(line, "the last non-empty line of stdout is neither a number nor a JSON object")
    })
}

fn parse_json(line: &str) -> Result<(f64, Metrics), Failure> {
    let mut metrics: Metrics = serde_json::from_str(line).map_err(|e| {
        let hint = if line.contains("NaN") || line.contains("Infinity") {
            " (NaN and Infinity are not JSON)"
        } else {
            ""
        };
        no_score(line, &format!("the last non-empty line of stdout is not valid JSON{hint}: {e}"))
    })?;
    match metrics.remove("score") {
        Some(Value::Number(n)) => match n.as_f64() {
            Some(score) => Ok((score, metrics)),
            None => Err(no_score(line, "\"score\" is not representable as a float")),
        },
        Some(_) => Err(no_score(line, "\"score\" is not a number")),
        None => Err(no_score(line, "the JSON object has no \"score\"")),
    }
}

fn no_score(line: &str, problem: &str) -> Failure {
    Failure::NoScore { line: excerpt(line), problem: problem.to_owned() }
}

/// At most [`QUOTED_CHARS`] characters of `line`, control characters escaped, with
/// `…` when cut.
pub(crate) fn excerpt(line: &str) -> String {
    let mut out = String::new();
    for (i, c) in line.chars().enumerate() {
        if i == QUOTED_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tempfile::TempDir;

    /// A run directory, a model directory inside it, and an evaluator for `template`.
    fn setup(template: &str, timeout: Option<Duration>, retries: u32) -> (TempDir, Evaluator) {
        let tmp = TempDir::new().expect("tempdir");
        let options = Options { timeout, retries, ..Options::default() };
        let eval = Evaluator::new(template, &tmp.path().join("run"), options).expect("evaluator");
        (tmp, eval)
    }

    fn timeout(seconds: u64) -> Options {
        Options { timeout: Some(Duration::from_secs(seconds)), ..Options::default() }
    }

    fn model_dir(tmp: &TempDir) -> PathBuf {
        let dir = tmp.path().join("model");
        fs::create_dir_all(&dir).expect("model dir");
        dir
    }

    /// Evaluates `template` once; the directory (logs included) lives as long as
    /// the returned `TempDir`.
    fn eval_once(template: &str) -> (TempDir, Evaluation) {
        let (tmp, eval) = setup(template, Some(Duration::from_secs(10)), 0);
        let evaluation = eval.evaluate("c0001", &model_dir(&tmp), None).expect("evaluate");
        (tmp, evaluation)
    }

    fn failure(evaluation: &Evaluation) -> &Failure {
        match &evaluation.outcome {
            Outcome::Failed { reason } => reason,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    /// Whether `pid` is dead (gone, or a zombie waiting for init), waiting up to 2 s
    /// for the kernel to finish killing it.
    #[cfg(target_os = "linux")]
    fn dies(pid: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                Ok(stat) => {
                    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                    if state.starts_with(['Z', 'X']) {
                        return true;
                    }
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn read_pid(path: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let pid = fs::read_to_string(path).unwrap_or_default().trim().to_owned();
            if !pid.is_empty() || Instant::now() > deadline {
                return pid;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn evaluator_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Evaluator>();
        check::<Evaluation>();
    }

    #[test]
    fn number_score() {
        let (_tmp, e) = eval_once("echo 0.75");
        assert_eq!(e.outcome, Outcome::Score { score: 0.75, metrics: Metrics::new() });
        assert_eq!(e.attempts, 1);
        assert_eq!(fs::read_to_string(&e.stdout_log).unwrap(), "0.75\n");
    }

    #[test]
    fn json_score_with_metrics() {
        let (_tmp, e) = eval_once(r#"echo '{"loss": 1.5, "score": 0.8, "task": "qa"}'"#);
        let Outcome::Score { score, metrics } = e.outcome else { panic!("{e:?}") };
        assert_eq!(score, 0.8);
        assert_eq!(metrics.len(), 2);
        assert_eq!(metrics["loss"], 1.5);
        assert_eq!(metrics["task"], "qa");
    }

    #[test]
    fn last_non_empty_line_wins() {
        let (_tmp, e) = eval_once(r#"echo 0.1; echo '{"score": 0.2}'; echo 0.3; echo; echo '   '"#);
        assert_eq!(e.outcome.score(), Some(0.3));
        // stderr does not count, and a huge stdout is fine: only its tail is read.
        let (_tmp, e) =
            eval_once("echo 0.4 >&2; yes progress | head -c 3000000; echo; printf '0.5\\r\\n'");
        assert_eq!(e.outcome.score(), Some(0.5));
    }

    #[test]
    fn garbage_is_a_failure_quoting_the_line() {
        let (_tmp, e) = eval_once("echo 0.9; echo 'accuracy: 0.9'");
        let reason = failure(&e);
        assert!(matches!(reason, Failure::NoScore { line, .. } if line == "accuracy: 0.9"));
        assert!(reason.to_string().contains("`accuracy: 0.9`"), "{reason}");

        let (_tmp, e) = eval_once("printf 'x%.0s' $(seq 1 500); echo");
        let Failure::NoScore { line, .. } = failure(&e) else { panic!("{e:?}") };
        assert_eq!(line.chars().count(), QUOTED_CHARS + 1);
        assert!(line.ends_with('…'));

        let (_tmp, e) = eval_once("true");
        assert_eq!(failure(&e).to_string(), "no score: stdout is empty");
    }

    #[test]
    fn non_finite_scores_fail() {
        for output in ["nan", "NaN", "inf", "-inf", "infinity"] {
            let (_tmp, e) = eval_once(&format!("echo {output}"));
            assert_eq!(failure(&e), &Failure::NotFinite { line: output.to_owned() });
        }
    }

    #[test]
    fn parse_score_cases() {
        assert_eq!(parse_score("1e-3\n").unwrap().0, 1e-3);
        assert_eq!(parse_score("-2\r\n\n").unwrap().0, -2.0);
        assert_eq!(parse_score("10%\r 50%\r0.25").unwrap().0, 0.25);
        assert_eq!(parse_score(r#"{"score": 7}"#).unwrap().0, 7.0);
        let problem = |tail: &str| match parse_score(tail) {
            Err(Failure::NoScore { problem, .. }) => problem,
            other => panic!("{other:?}"),
        };
        assert!(problem(r#"{"acc": 0.5}"#).contains("no \"score\""));
        assert!(problem(r#"{"score": "0.5"}"#).contains("not a number"));
        assert!(problem(r#"{"score": NaN}"#).contains("NaN and Infinity are not JSON"));
        assert!(problem("{oops").contains("not valid JSON"));
        assert!(problem("[0.5]").contains("neither a number"));
        assert!(
            matches!(parse_score("a\u{1b}[0mb"), Err(Failure::NoScore { line, .. }) if line == "a\\u{1b}[0mb")
        );
    }

    #[test]
    fn non_zero_exit_fails_with_the_code() {
        let (_tmp, e) = eval_once("echo 0.5; exit 3");
        assert_eq!(failure(&e), &Failure::Exit(3));
        assert_eq!(failure(&e).to_string(), "exited with code 3");
        let (_tmp, e) = eval_once("no-such-evaluator-command-xyz");
        assert_eq!(failure(&e), &Failure::Exit(127));
        assert!(fs::read_to_string(&e.stderr_log).unwrap().contains("no-such-evaluator"));
        let (_tmp, e) = eval_once("kill -9 $$");
        assert_eq!(failure(&e), &Failure::Signal(9));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn timeout_kills_the_whole_group() {
        let timeout = Duration::from_millis(300);
        let (tmp, eval) = setup(
            r#"sleep 30 & echo $! > "$SOUP_RUN_DIR/grandchild.pid"; sleep 30; echo 1"#,
            Some(timeout),
            0,
        );
        let started = Instant::now();
        let e = eval.evaluate("c0001", &model_dir(&tmp), None).unwrap();
        let elapsed = started.elapsed();
        assert_eq!(failure(&e), &Failure::Timeout(timeout));
        assert!(
            elapsed >= timeout && elapsed < timeout + Duration::from_millis(500),
            "{elapsed:?}"
        );
        let pid = read_pid(&eval.run_dir().join("grandchild.pid"));
        assert!(!pid.is_empty());
        assert!(dies(&pid), "grandchild {pid} survived the timeout");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn background_processes_die_with_a_finished_evaluation() {
        let (tmp, eval) =
            setup(r#"sleep 30 & echo $! > "$SOUP_RUN_DIR/bg.pid"; echo 0.5"#, None, 0);
        let e = eval.evaluate("c0001", &model_dir(&tmp), None).unwrap();
        assert_eq!(e.outcome.score(), Some(0.5));
        assert!(dies(&read_pid(&eval.run_dir().join("bg.pid"))));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn cancel_kills_promptly() {
        let (tmp, eval) = setup(
            r#"sleep 30 & echo $! > "$SOUP_RUN_DIR/grandchild.pid"; sleep 30"#,
            Some(Duration::from_secs(20)),
            3,
        );
        let cancel = Arc::new(AtomicBool::new(false));
        let raiser = {
            let cancel = Arc::clone(&cancel);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(200));
                cancel.store(true, Ordering::Relaxed);
            })
        };
        let started = Instant::now();
        let e = eval.evaluate("c0001", &model_dir(&tmp), Some(&cancel)).unwrap();
        let elapsed = started.elapsed();
        raiser.join().unwrap();
        assert_eq!((&e.outcome, e.attempts), (&Outcome::Cancelled, 1), "not retried");
        assert!(elapsed < Duration::from_millis(700), "{elapsed:?}");
        assert!(dies(&read_pid(&eval.run_dir().join("grandchild.pid"))));
        // A raised flag stops the next evaluation before it starts.
        let e = eval.evaluate("c0002", &model_dir(&tmp), Some(&cancel)).unwrap();
        assert_eq!(e.outcome, Outcome::Cancelled);
        assert!(!eval.logs_dir().join("c0002.stdout").exists());
    }

    #[test]
    fn retries_rerun_failures_and_keep_each_attempts_logs() {
        let counter = r#"n=$(cat "$SOUP_RUN_DIR/count" 2>/dev/null || echo 0); n=$((n+1));
            echo $n > "$SOUP_RUN_DIR/count"; echo "attempt $SOUP_ATTEMPT";
            if [ $n -ge 3 ]; then echo 0.9; else exit 1; fi"#;
        let (tmp, eval) = setup(counter, None, 5);
        let e = eval.evaluate("c0001", &model_dir(&tmp), None).unwrap();
        assert_eq!((e.outcome.score(), e.attempts), (Some(0.9), 3));
        assert_eq!(e.stdout_log, eval.logs_dir().join("c0001.3.stdout"));
        let log = |name: &str| fs::read_to_string(eval.logs_dir().join(name)).unwrap();
        assert_eq!(log("c0001.stdout"), "attempt 1\n");
        assert_eq!(log("c0001.2.stdout"), "attempt 2\n");
        assert_eq!(log("c0001.3.stdout"), "attempt 3\n0.9\n");

        let (tmp, eval) = setup(counter, None, 1);
        let e = eval.evaluate("c0001", &model_dir(&tmp), None).unwrap();
        assert_eq!((failure(&e), e.attempts), (&Failure::Exit(1), 2));
        assert_eq!(fs::read_to_string(eval.run_dir().join("count")).unwrap(), "2\n");
    }

    #[test]
    fn hostile_paths_arrive_intact_and_inject_nothing() {
        let tmp = TempDir::new().unwrap();
        let run = tmp.path().join("run");
        let name = "a b'c\"d $HOME ;x; `touch \"$SOUP_RUN_DIR/tick\"` \
                    $(touch \"$SOUP_RUN_DIR/dollar\") '; touch \"$SOUP_RUN_DIR/semi\"; '\nz";
        let model = tmp.path().join(name).join("x'; touch \"$SOUP_RUN_DIR/nested\"; echo '");
        fs::create_dir_all(&model).unwrap();
        let template = r#"printf '[%s]' {model} > "$SOUP_RUN_DIR/argv";
            printf '[%s]' "$SOUP_MODEL" > "$SOUP_RUN_DIR/env"; cd {model} && echo 1"#;
        let eval = Evaluator::new(template, &run, Options::default()).unwrap();
        let e = eval.evaluate("c0001", &model, None).unwrap();
        assert_eq!(e.outcome.score(), Some(1.0), "{e:?}");
        let expected = format!("[{}]", model.to_str().unwrap());
        assert_eq!(fs::read_to_string(run.join("argv")).unwrap(), expected);
        assert_eq!(fs::read_to_string(run.join("env")).unwrap(), expected);
        for injected in ["tick", "dollar", "semi", "nested"] {
            assert!(!run.join(injected).exists(), "{injected} was created");
        }
    }

    #[test]
    fn shell_quote_round_trips() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        let tricky = "x'\"$HOME`id`;\\\n'";
        let out = Command::new(SHELL)
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(tricky)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), tricky);
    }

    #[test]
    fn environment_and_stdin() {
        let tmp = TempDir::new().unwrap();
        let run = tmp.path().join("run");
        let template = r#"read line; echo "read=$?"; printf '%s\n' "$SOUP_CANDIDATE" "$SOUP_RUN_DIR" "$SOUP_ATTEMPT"; echo 2"#;
        let eval = Evaluator::new(template, &run, timeout(5)).unwrap();
        assert!(!template.contains(PLACEHOLDER));
        let e = eval.evaluate("cand_7-b", &model_dir(&tmp), None).unwrap();
        assert_eq!(e.outcome.score(), Some(2.0));
        let expected = format!("read=1\ncand_7-b\n{}\n1\n2\n", run.display());
        assert_eq!(fs::read_to_string(run.join("logs/cand_7-b.stdout")).unwrap(), expected);
    }

    #[test]
    fn a_request_for_a_gradient_gives_its_path_and_the_temperature() {
        let tmp = TempDir::new().unwrap();
        let run = tmp.path().join("run");
        let template = r#"printf '%s|%s|%s|%s\n' {grad} "${SOUP_GRAD-unset}" "${SOUP_TEMPERATURE-unset}" "$SOUP_CANDIDATE"; echo 1"#;
        let eval = Evaluator::new(template, &run, Options::default()).unwrap();
        let grad = tmp.path().join("it's.grad.safetensors");
        let request = Request {
            candidate: "c1",
            model_dir: &model_dir(&tmp),
            members: &[],
            weights: &[],
            gradient: Some(&grad),
            temperature: Some(0.1),
        };
        let e = Evaluate::evaluate(&eval, &request, None).unwrap();
        let g = grad.display();
        assert_eq!(fs::read_to_string(&e.stdout_log).unwrap(), format!("{g}|{g}|0.1|c1\n1\n"));
        // Without them, {grad} is an empty word and neither variable is set,
        // even when soup's own environment has one.
        let request = Request { candidate: "c2", gradient: None, temperature: None, ..request };
        let e = Evaluate::evaluate(&eval, &request, None).unwrap();
        assert_eq!(fs::read_to_string(&e.stdout_log).unwrap(), "|unset|unset|c2\n1\n");
        assert_eq!(format_float(2.0), "2.0");
        assert_eq!(format_float(1e-7).parse::<f64>().unwrap(), 1e-7);
    }

    #[test]
    fn concurrent_evaluations_keep_their_logs_apart() {
        let template = r#"i=0; while [ $i -lt 300 ]; do echo "$SOUP_CANDIDATE $i"; echo "$SOUP_CANDIDATE err" >&2; i=$((i+1)); done; cat {model}/score"#;
        let (tmp, eval) = setup(template, Some(Duration::from_secs(10)), 0);
        let results: Vec<Evaluation> = thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    let dir = tmp.path().join(format!("m{i}"));
                    fs::create_dir_all(&dir).unwrap();
                    fs::write(dir.join("score"), format!("{i}.5\n")).unwrap();
                    let eval = &eval;
                    scope.spawn(move || eval.evaluate(&format!("c{i}"), &dir, None).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, e) in results.iter().enumerate() {
            assert_eq!(e.outcome.score(), Some(i as f64 + 0.5));
            let out = fs::read_to_string(&e.stdout_log).unwrap();
            let err = fs::read_to_string(&e.stderr_log).unwrap();
            assert_eq!(out.lines().count(), 301);
            assert!(out.lines().take(300).all(|l| l.starts_with(&format!("c{i} "))));
            assert!(err.lines().all(|l| l == format!("c{i} err")) && err.lines().count() == 300);
        }
    }

    #[test]
    fn setup_problems_are_errors() {
        let tmp = TempDir::new().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        let err = Evaluator::new("echo 1", &file, Options::default()).unwrap_err();
        assert!(matches!(err, EvalError::Io { action: "create", .. }), "{err}");
        for bad in ["", "  ", "eval '{model}'", "eval \"{model}\"", "a\0b", "e \"{grad}\""] {
            let err = Evaluator::new(bad, tmp.path(), Options::default()).unwrap_err();
            assert!(matches!(err, EvalError::Template { .. }), "{bad:?}");
        }
        let eval = Evaluator::new("echo 1", tmp.path(), Options::default()).unwrap();
        for bad in ["", "../x", "a.b", "a/b", "c 1", &"x".repeat(101)] {
            let err = eval.evaluate(bad, tmp.path(), None).unwrap_err();
            assert!(matches!(err, EvalError::CandidateId { .. }), "{bad:?}");
        }
    }

    #[test]
    fn command_line_quotes_every_placeholder() {
        let (_tmp, eval) = setup("run {model} --also {model}/x", None, 0);
        let line = eval.command_line(Path::new("/m o'd"), 0, "", None, None);
        assert_eq!(line, OsString::from(r"run '/m o'\''d' --also '/m o'\''d'/x"));
        let (_tmp, eval) = setup("run {model} --grad {grad}", None, 0);
        let line = eval.command_line(Path::new("/m"), 0, "", Some(Path::new("/g $x'.st")), None);
        assert_eq!(line, OsString::from(r"run '/m' --grad '/g $x'\''.st'"));
        assert_eq!(eval.command_line(Path::new("/m"), 0, "", None, None), "run '/m' --grad ''");
    }

    /// An evaluation of `template` stopped with `stop` by cancelling it once the
    /// command has written `$SOUP_RUN_DIR/ready` (after setting its traps: a
    /// timeout could fire before a slow shell has set them); returns how long
    /// stopping it took, from the cancel on. The
    /// timeout, the cancel flag and a signal to soup all stop a command alike
    /// (`supervise`).
    fn stopped(template: &str, stop: Stop) -> (TempDir, Evaluator, Duration) {
        let tmp = TempDir::new().unwrap();
        let options = Options { stop, ..Options::default() };
        let eval = Evaluator::new(template, &tmp.path().join("run"), options).unwrap();
        let ready = eval.run_dir().join("ready");
        let cancel = AtomicBool::new(false);
        let cancelled_at = std::sync::Mutex::new(None);
        let e = thread::scope(|s| {
            s.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !ready.exists() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(5));
                }
                *cancelled_at.lock().unwrap() = Some(Instant::now());
                cancel.store(true, Ordering::SeqCst);
            });
            eval.evaluate("c0001", &model_dir(&tmp), Some(&cancel)).unwrap()
        });
        assert!(ready.exists(), "the command never got ready");
        let elapsed = cancelled_at.lock().unwrap().expect("cancelled").elapsed();
        assert!(matches!(e.outcome, Outcome::Cancelled), "{:?}", e.outcome);
        (tmp, eval, elapsed)
    }

    #[test]
    fn a_stopped_command_gets_the_grace_period_to_clean_up() {
        let template = r#"trap 'sleep 0.3; echo done > "$SOUP_RUN_DIR/cleaned"; exit 0' TERM;
            : > "$SOUP_RUN_DIR/ready"; sleep 30 & wait"#;
        let stop = Stop { signal: process::StopSignal::Term, grace: Duration::from_secs(20) };
        let (_tmp, eval, _) = stopped(template, stop);
        let cleaned = fs::read_to_string(eval.run_dir().join("cleaned")).unwrap_or_default();
        assert_eq!(cleaned, "done\n", "the TERM trap did not finish");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_command_ignoring_the_stop_signal_is_killed_after_the_grace_period() {
        let template = r#"trap '' TERM; sleep 30 & echo $! > "$SOUP_RUN_DIR/bg.pid";
            : > "$SOUP_RUN_DIR/ready"; sleep 30"#;
        let grace = Duration::from_millis(400);
        let stop = Stop { signal: process::StopSignal::Term, grace };
        let (_tmp, eval, elapsed) = stopped(template, stop);
        assert!(elapsed >= grace, "no grace given: {elapsed:?}");
        assert!(dies(&read_pid(&eval.run_dir().join("bg.pid"))));
    }

    #[test]
    fn the_stop_signal_can_be_sigint() {
        // Even when soup was started with SIGINT ignored, as a shell's `&` starts
        // things: the evaluator gets it back at its default, so it can trap it.
        // (Left ignored in this test process, whose other evaluators reset it too.)
        // SAFETY: SIG_IGN installs no handler; no code of ours runs on a signal.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
        let template = r#"trap 'echo int > "$SOUP_RUN_DIR/got"; exit 0' INT;
            trap 'echo term > "$SOUP_RUN_DIR/got"; exit 0' TERM;
            : > "$SOUP_RUN_DIR/ready"; while :; do sleep 0.1; done"#;
        let stop = Stop { signal: process::StopSignal::Int, grace: Duration::from_secs(20) };
        let (_tmp, eval, _) = stopped(template, stop);
        assert_eq!(fs::read_to_string(eval.run_dir().join("got")).unwrap(), "int\n");
    }

    #[test]
    fn slots_give_each_evaluation_its_number_and_devices() {
        let tmp = TempDir::new().unwrap();
        let devices = crate::search::slots::parse_devices("3:5,6").unwrap();
        let slots = Arc::new(Slots::with_devices(devices));
        let options = Options { slots: Arc::clone(&slots), ..Options::default() };
        let template = r#"echo "{slot} {devices} $SOUP_SLOT $CUDA_VISIBLE_DEVICES"; echo 1"#;
        let eval = Evaluator::new(template, &tmp.path().join("run"), options).unwrap();
        let e = eval.evaluate("c0001", &model_dir(&tmp), None).unwrap();
        assert_eq!(fs::read_to_string(&e.stdout_log).unwrap(), "0 3 0 3\n1\n");
        let held = slots.acquire(None).unwrap();
        let e = eval.evaluate("c0002", &model_dir(&tmp), None).unwrap();
        assert_eq!(fs::read_to_string(&e.stdout_log).unwrap(), "1 5,6 1 5,6\n1\n");
        drop(held);

        // Without devices: SOUP_SLOT only, and {devices} is refused.
        let (_kept, e) =
            eval_once(r#"echo "$SOUP_SLOT ${CUDA_VISIBLE_DEVICES-unset} {slot}"; echo 1"#);
        let inherited = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or("unset".into());
        assert_eq!(fs::read_to_string(&e.stdout_log).unwrap(), format!("0 {inherited} 0\n1\n"));
        let err = Evaluator::new("run {devices}", tmp.path(), Options::default()).unwrap_err();
        assert!(err.to_string().contains("--devices"), "{err}");
    }

    #[test]
    fn substitution_never_rereads_what_it_substituted() {
        let tmp = TempDir::new().unwrap();
        let slots = Arc::new(Slots::with_devices(vec![vec!["0".into()]]));
        let options = Options { slots, ..Options::default() };
        let eval =
            Evaluator::new("x {model} {slot} {devices} {other}", tmp.path(), options).unwrap();
        let line = eval.command_line(Path::new("/a/{slot}/{devices}"), 3, "{model}", None, None);
        assert_eq!(line, OsString::from("x '/a/{slot}/{devices}' 3 {model} {other}"));
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let tmp = TempDir::new().unwrap();
        let log = tmp.path().join("err");
        let text: String = (0..2000).map(|i| format!("line {i}\n\n")).collect();
        fs::write(&log, text + "Trace\u{1b}back\r\n").unwrap();
        assert_eq!(log_tail(&log, 3), ["line 1998", "line 1999", "Trace\\u{1b}back"]);
        assert!(log_tail(&tmp.path().join("missing"), 3).is_empty());
    }
}
