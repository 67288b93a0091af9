//! Persistent evaluators (`--eval-server CMD`): one process per slot, kept for the
//! whole search, asked to score one candidate after another over a line-based JSON
//! protocol (docs/EVALUATOR.md, "Evaluation servers").
//!
//! A per-candidate command pays for its start every time: a Python interpreter,
//! `import torch`, the model built and loaded. A server pays once and then only
//! loads each candidate's weights. The protocol is deliberately the smallest that
//! works with a plain loop over `sys.stdin`: soup writes one request per line,
//!
//! ```text
//! {"candidate":"greedy-0007","model":"/abs/dir","attempt":1,"members":["a/","b/"],"weights":[0.5,0.5]}
//! ```
//!
//! and the first stdout line that is a JSON object with the same `"candidate"` and
//! a numeric `"score"` (its other keys are metrics) or an `"error"` answers it.
//! Every other stdout line, and all of stderr, only goes to the server's logs.
//!
//! Failures are those of a per-candidate command plus the server's own: it exits
//! (the evaluation fails, and the next request starts it again) or answers with an
//! error. A timeout or a cancel stops it (gracefully, like any evaluation: its
//! process group gets the stop signal, then SIGKILL after the grace period), since
//! the protocol has no way to abandon one request; the next request starts a new
//! server. Each start after a slot's first is counted as a restart.
//!
//! Servers are started from one thread that lives as long as the [`Server`], because
//! the kernel sends a child its parent-death signal when the *thread* that forked
//! it ends (see [`crate::search::process`]). Writes to a server's stdin and reads
//! from its stdout happen on threads of their own, so a server that stops reading
//! or writing can never block the search past its timeout.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::search::evaluate::{
    self, check_command, excerpt, exit_failure, slot_environment, substitute, EvalError, Evaluate,
    Evaluation, Failure, Metrics, Options, Outcome, Request, DEVICES_PLACEHOLDER, GRAD_PLACEHOLDER,
    PLACEHOLDER, SLOT_PLACEHOLDER,
};
use crate::search::process;
use crate::search::slots::Slot;

/// The longest stdout line read as a possible reply; longer lines are logged only.
const MAX_LINE: usize = 1 << 20;

/// How often a wait for a reply looks at the cancel flag, the deadline and the
/// process.
const POLL: Duration = Duration::from_millis(20);

/// How long, after a server exited, its stdout is still read for a last reply
/// (a background process may hold it open).
const DRAIN: Duration = Duration::from_secs(1);

/// The shell that runs the server command, as `/bin/sh -c COMMAND`.
const SHELL: &str = "/bin/sh";

/// Persistent evaluation servers, one per slot, started on first use.
pub struct Server {
    template: String,
    run_dir: PathBuf,
    logs_dir: PathBuf,
    options: Options,
    instances: Vec<Mutex<Instance>>,
    restarts: AtomicUsize,
    spawner: Spawner,
}

/// The server of one slot.
#[derive(Default)]
struct Instance {
    running: Option<Running>,
    /// How many times this slot's server was started.
    starts: u32,
    /// Its latest logs.
    logs: Option<(PathBuf, PathBuf)>,
}

/// A started server process and its pipes.
struct Running {
    child: Child,
    /// Lines to write to its stdin; dropping it closes stdin.
    stdin: Option<Sender<Vec<u8>>>,
    /// Its stdout lines that look like JSON objects.
    replies: Receiver<String>,
}

/// One request line, fields in protocol order.
#[derive(Serialize)]
struct RequestLine<'a> {
    candidate: &'a str,
    model: &'a str,
    attempt: u32,
    members: &'a [String],
    weights: &'a [f64],
    /// Where to write the gradient (learned soups by gradient), when wanted.
    #[serde(skip_serializing_if = "Option::is_none")]
    grad: Option<&'a str>,
    /// The logit temperature β, when the search learns one.
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
}

impl Server {
    /// Checks `template` (no `{model}`: one server serves every candidate; `{slot}`
    /// and, with devices, `{devices}` are allowed) and creates `RUN_DIR/logs/`.
    /// Nothing is started until the first request.
    pub fn new(template: &str, run_dir: &Path, options: Options) -> Result<Server, EvalError> {
        check_command(template)?;
        let reason = if template.contains(PLACEHOLDER) || template.contains(GRAD_PLACEHOLDER) {
            Some(
                "an evaluation server serves every candidate, so it cannot take {model} or \
                  {grad}: each request names the candidate's directory and gradient file",
            )
        } else if template.contains(DEVICES_PLACEHOLDER) && !options.slots.has_devices() {
            Some("uses {devices}, but no devices were given (--devices)")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(EvalError::Template { template: template.to_owned(), reason });
        }
        let (run_dir, logs_dir) = evaluate::logs_dir(run_dir)?;
        let instances = (0..options.slots.len()).map(|_| Mutex::default()).collect();
        Ok(Server {
            template: template.to_owned(),
            run_dir,
            logs_dir,
            options,
            instances,
            restarts: AtomicUsize::new(0),
            spawner: Spawner::new(),
        })
    }

    /// Closes every server's stdin, gives them the grace period to exit, then
    /// stops what still runs. Also done when the `Server` is dropped.
    pub fn shutdown(&self) {
        let mut running: Vec<Running> =
            self.instances.iter().filter_map(|i| lock(i).running.take()).collect();
        for r in &mut running {
            r.stdin = None;
        }
        let deadline = Instant::now().checked_add(self.options.stop.grace);
        for mut r in running {
            while !process::has_exited(&r.child).unwrap_or(true)
                && deadline.is_none_or(|d| Instant::now() < d)
            {
                thread::sleep(POLL);
            }
            let _ = process::stop_group(&mut r.child, &self.options.stop);
        }
    }

    /// One attempt at scoring `request` on the server of `slot`.
    fn attempt(
        &self,
        instance: &mut Instance,
        slot: &Slot<'_>,
        request: &Request<'_>,
        (model, grad): (&str, Option<&str>),
        attempt: u32,
        cancel: Option<&AtomicBool>,
    ) -> Result<Outcome, EvalError> {
        if instance.running.is_none() {
            if let Err(e) = self.start(instance, slot) {
                return Ok(Outcome::Failed { reason: Failure::Spawn(e.to_string()) });
            }
        }
        let deadline = self.options.timeout.and_then(|t| Instant::now().checked_add(t));
        let line = RequestLine {
            candidate: request.candidate,
            model,
            attempt,
            members: request.members,
            weights: request.weights,
            grad,
            temperature: request.temperature,
        };
        let mut bytes = serde_json::to_vec(&line).map_err(|source| EvalError::Request {
            candidate: request.candidate.to_owned(),
            source,
        })?;
        bytes.push(b'\n');
        let Some(running) = instance.running.as_mut() else {
            return Ok(Outcome::Failed { reason: Failure::ServerExited("did not start".into()) });
        };
        // A closed channel means the writer met a dead pipe: the server is gone,
        // which the wait below finds out.
        if let Some(stdin) = &running.stdin {
            let _ = stdin.send(bytes);
        }
        let ended =
            wait_for_reply(running, request.candidate, deadline, cancel).map_err(|source| {
                EvalError::Wait { candidate: request.candidate.to_owned(), source }
            })?;
        Ok(match ended {
            Waited::Reply(outcome) => outcome,
            Waited::Exited => {
                let status = self.stop(instance);
                let how = status.map_or_else(
                    || "ended".to_owned(),
                    |s| exit_failure(s).map_or("exited with code 0".into(), |f| f.to_string()),
                );
                Outcome::Failed { reason: Failure::ServerExited(how) }
            }
            Waited::TimedOut => {
                self.stop(instance);
                Outcome::Failed {
                    reason: Failure::Timeout(self.options.timeout.unwrap_or_default()),
                }
            }
            Waited::Cancelled => {
                self.stop(instance);
                Outcome::Cancelled
            }
        })
    }

    /// Starts the server of `slot`, with fresh log files.
    fn start(&self, instance: &mut Instance, slot: &Slot<'_>) -> Result<(), EvalError> {
        instance.starts += 1;
        if instance.starts > 1 {
            self.restarts.fetch_add(1, Ordering::Relaxed);
        }
        let stem = format!("server-{}.{}", slot.index(), instance.starts);
        let stdout_log = self.logs_dir.join(format!("{stem}.stdout"));
        let stderr_log = self.logs_dir.join(format!("{stem}.stderr"));
        let stderr = File::create(&stderr_log).map_err(EvalError::io("create", &stderr_log))?;
        let stdout_file =
            File::create(&stdout_log).map_err(EvalError::io("create", &stdout_log))?;
        instance.logs = Some((stdout_log, stderr_log.clone()));
        let devices = slot.devices();
        let slot_number = slot.index().to_string();
        let command = substitute(
            &self.template,
            &[
                (SLOT_PLACEHOLDER, slot_number.as_bytes()),
                (DEVICES_PLACEHOLDER, devices.as_deref().unwrap_or("").as_bytes()),
            ],
        );
        let mut shell = Command::new(SHELL);
        shell
            .arg("-c")
            .arg(std::ffi::OsString::from(String::from_utf8_lossy(&command).into_owned()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        slot_environment(&mut shell, &self.run_dir, slot);
        process::isolate(&mut shell);
        let mut child = self.spawner.spawn(shell).map_err(|source| EvalError::Io {
            action: "start",
            path: SHELL.into(),
            source,
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = process::stop_group(&mut child, &self.options.stop);
            return Err(EvalError::Io {
                action: "connect to",
                path: SHELL.into(),
                source: io::Error::other("the server's pipes are missing"),
            });
        };
        let (line_tx, replies) = mpsc::channel();
        let (stdin_tx, stdin_rx) = mpsc::channel();
        thread::spawn(move || read_stdout(stdout, stdout_file, &line_tx));
        thread::spawn(move || write_stdin(stdin, &stdin_rx));
        instance.running = Some(Running { child, stdin: Some(stdin_tx), replies });
        Ok(())
    }

    /// Stops the slot's server, if it runs; its exit status when it was reaped.
    fn stop(&self, instance: &mut Instance) -> Option<std::process::ExitStatus> {
        let mut running = instance.running.take()?;
        running.stdin = None;
        process::stop_group(&mut running.child, &self.options.stop).ok()
    }
}

impl Evaluate for Server {
    fn evaluate(
        &self,
        request: &Request<'_>,
        cancel: Option<&AtomicBool>,
    ) -> Result<Evaluation, EvalError> {
        let id = request.candidate;
        evaluate::check_candidate(id)?;
        let model_dir = std::path::absolute(request.model_dir)
            .map_err(EvalError::io("resolve", request.model_dir))?;
        let Some(model) = model_dir.to_str() else {
            return Err(EvalError::NotUtf8 { path: model_dir });
        };
        let grad = match request.gradient {
            Some(path) => Some(std::path::absolute(path).map_err(EvalError::io("resolve", path))?),
            None => None,
        };
        let grad = match &grad {
            Some(path) => Some(path.to_str().ok_or(EvalError::NotUtf8 { path: path.clone() })?),
            None => None,
        };
        let started = Instant::now();
        let (mut outcome, mut attempts) = (Outcome::Cancelled, 0u32);
        let mut logs = None;
        if let Some(slot) = self.options.slots.acquire(cancel) {
            let mut instance = lock(&self.instances[slot.index()]);
            loop {
                if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                    outcome = Outcome::Cancelled;
                    break;
                }
                attempts = attempts.saturating_add(1);
                let paths = (model, grad);
                outcome = self.attempt(&mut instance, &slot, request, paths, attempts, cancel)?;
                logs.clone_from(&instance.logs);
                if !matches!(outcome, Outcome::Failed { .. }) || attempts > self.options.retries {
                    break;
                }
            }
        }
        let (stdout_log, stderr_log) = logs.unwrap_or_else(|| {
            (self.logs_dir.join("server.stdout"), self.logs_dir.join("server.stderr"))
        });
        let seconds = started.elapsed().as_secs_f64();
        Ok(Evaluation { outcome, seconds, attempts, stdout_log, stderr_log })
    }

    fn journal_key(&self) -> String {
        format!("--eval-server {}", self.template)
    }

    fn restarts(&self) -> usize {
        self.restarts.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a wait for a reply ended.
enum Waited {
    Reply(Outcome),
    Exited,
    TimedOut,
    Cancelled,
}

/// Waits for the reply to `candidate`, the server's exit, the deadline or the
/// cancel flag.
fn wait_for_reply(
    running: &mut Running,
    candidate: &str,
    deadline: Option<Instant>,
    cancel: Option<&AtomicBool>,
) -> io::Result<Waited> {
    let mut exited_at: Option<Instant> = None;
    loop {
        match running.replies.recv_timeout(POLL) {
            Ok(line) => {
                if let Some(outcome) = parse_reply(&line, candidate) {
                    return Ok(Waited::Reply(outcome));
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(Waited::Exited),
            Err(RecvTimeoutError::Timeout) => {}
        }
        if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            return Ok(Waited::Cancelled);
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(Waited::TimedOut);
        }
        match exited_at {
            Some(at) if now.duration_since(at) >= DRAIN => return Ok(Waited::Exited),
            Some(_) => {}
            None if process::has_exited(&running.child)? => exited_at = Some(now),
            None => {}
        }
    }
}

/// The outcome a stdout line gives `candidate`, if it is a reply to it: a JSON
/// object whose `"candidate"` is `candidate`, with a numeric `"score"` or an
/// `"error"`. A line that is not valid JSON but names the candidate is taken as a
/// broken reply rather than ignored (Python's `json.dumps` writes `NaN`).
pub fn parse_reply(line: &str, candidate: &str) -> Option<Outcome> {
    let line = line.trim();
    let no_score = |problem: String| Outcome::Failed {
        reason: Failure::NoScore { line: excerpt(line), problem },
    };
    let mut object: Metrics = match serde_json::from_str(line) {
        Ok(object) => object,
        Err(e) => {
            let quoted = serde_json::to_string(candidate).unwrap_or_default();
            if line.contains("\"candidate\"") && line.contains(&quoted) {
                let hint = if line.contains("NaN") || line.contains("Infinity") {
                    " (NaN and Infinity are not JSON)"
                } else {
                    ""
                };
                return Some(no_score(format!("the reply is not valid JSON{hint}: {e}")));
            }
            return None;
        }
    };
    if object.get("candidate").and_then(Value::as_str) != Some(candidate) {
        return None;
    }
    object.remove("candidate");
    if let Some(error) = object.remove("error") {
        let message = match error {
            Value::String(s) => s,
            other => other.to_string(),
        };
        return Some(Outcome::Failed { reason: Failure::ServerError(excerpt(&message)) });
    }
    Some(match object.remove("score") {
        Some(Value::Number(n)) => match n.as_f64() {
            Some(score) if score.is_finite() => Outcome::Score { score, metrics: object },
            _ => Outcome::Failed { reason: Failure::NotFinite { line: excerpt(line) } },
        },
        Some(_) => no_score("\"score\" is not a number".into()),
        None => no_score("the reply has neither a \"score\" nor an \"error\"".into()),
    })
}

/// Copies a server's stdout to its log, line by line, and passes on the lines that
/// may be replies (those starting with `{`, at most [`MAX_LINE`] bytes). Ends at
/// end of file, which closes the channel.
fn read_stdout(stdout: ChildStdout, mut log: File, replies: &Sender<String>) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    let mut continuation = false;
    loop {
        line.clear();
        match reader.by_ref().take(MAX_LINE as u64).read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        let _ = log.write_all(&line);
        let complete = line.ends_with(b"\n");
        if !continuation && line.trim_ascii_start().starts_with(b"{") && complete {
            let _ = replies.send(String::from_utf8_lossy(&line).into_owned());
        }
        // The rest of an overlong line is logged, never taken for a reply.
        continuation = !complete;
    }
}

/// Writes request lines to a server's stdin until the channel closes (stdin is
/// then closed) or the pipe breaks.
fn write_stdin(mut stdin: ChildStdin, lines: &Receiver<Vec<u8>>) {
    for line in lines {
        if stdin.write_all(&line).and_then(|()| stdin.flush()).is_err() {
            return;
        }
    }
}

/// A thread that starts every server of a search, so that their parent-death
/// signal fires when the search ends rather than when an evaluation thread does.
struct Spawner {
    requests: Option<Sender<(Command, Sender<io::Result<Child>>)>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    fn new() -> Spawner {
        let (requests, incoming) = mpsc::channel::<(Command, Sender<io::Result<Child>>)>();
        let thread = thread::spawn(move || {
            for (mut command, reply) in incoming {
                let _ = reply.send(command.spawn());
            }
        });
        Spawner { requests: Some(requests), thread: Some(thread) }
    }

    fn spawn(&self, command: Command) -> io::Result<Child> {
        let gone = || io::Error::other("the server-starting thread has ended");
        let (reply, answer) = mpsc::channel();
        self.requests.as_ref().ok_or_else(gone)?.send((command, reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_matched_by_candidate() {
        let score = |line: &str| parse_reply(line, "g-1");
        let Some(Outcome::Score { score: s, metrics }) =
            score(r#"{"candidate": "g-1", "score": 0.5, "loss": 2}"#)
        else {
            panic!()
        };
        assert_eq!((s, metrics.len(), &metrics["loss"]), (0.5, 1, &Value::from(2)));
        assert_eq!(score(r#"{"candidate": "g-2", "score": 0.5}"#), None);
        assert_eq!(score(r#"{"score": 0.5}"#), None);
        assert_eq!(score("progress 50%"), None);
        assert_eq!(score("{not json"), None);
        let failed = |line: &str| match score(line) {
            Some(Outcome::Failed { reason }) => reason.to_string(),
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(
            failed(r#"{"candidate": "g-1", "error": "CUDA out of memory"}"#),
            "the evaluation server says: CUDA out of memory"
        );
        assert!(failed(r#"{"candidate": "g-1", "score": NaN}"#).contains("NaN and Infinity"));
        assert!(failed(r#"{"candidate": "g-1", "score": "0.5"}"#).contains("not a number"));
        assert!(failed(r#"{"candidate": "g-1"}"#).contains("neither"));
    }
}
