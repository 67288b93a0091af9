//! `soup evaluate`: every model on every benchmark of a suite, printed as a
//! table; and the same run for a search's `--report-suite`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use modelsoup::search::bench::{Bench, Model};
use modelsoup::search::evaluate::Options;
use modelsoup::search::journal::Journal;
use modelsoup::search::process::{Stop, StopSignal};
use modelsoup::search::scorer::{Counts, Event};
use modelsoup::search::slots::{parse_devices, Slots};
use modelsoup::search::suite::Suite;
use modelsoup::search::table::Table;

use super::args::EvaluateArgs;
use super::status::Status;
use super::text::plural;
use super::Exit;

/// How evaluations run: the flags `soup evaluate` and the searches share.
pub struct Running<'a> {
    /// `--jobs`.
    pub jobs: usize,
    /// `--devices`, which sets the jobs.
    pub devices: Option<&'a str>,
    /// `--timeout`.
    pub timeout: Option<Duration>,
    /// `--retries`.
    pub retries: u32,
    /// `--stop-signal`.
    pub stop_signal: StopSignal,
    /// `--kill-grace`.
    pub kill_grace: Duration,
}

impl Running<'_> {
    /// The library's evaluator options, with fresh slots.
    pub fn options(&self) -> anyhow::Result<Options> {
        let slots = match self.devices {
            Some(list) => Slots::with_devices(parse_devices(list)?),
            None => Slots::new(self.jobs),
        };
        Ok(Options {
            timeout: self.timeout,
            retries: self.retries,
            stop: Stop { signal: self.stop_signal, grace: self.kill_grace },
            slots: Arc::new(slots),
        })
    }
}

/// Runs `soup evaluate`.
pub fn run(args: &EvaluateArgs, interrupted: &AtomicBool) -> anyhow::Result<Exit> {
    let suite = Suite::load(&args.suite)?;
    for (i, model) in args.models.iter().enumerate() {
        if !model.exists() {
            bail!("{}: no such file or directory", model.display());
        }
        if args.models[..i].contains(model) {
            bail!("{} is given twice", model.display());
        }
    }
    let run_dir = args.run_dir.clone().unwrap_or_else(|| beside(&args.suite));
    let running = Running {
        jobs: args.jobs,
        devices: args.devices.as_deref(),
        timeout: args.timeout,
        retries: args.retries,
        stop_signal: args.stop_signal,
        kill_grace: args.kill_grace,
    };
    let models: Vec<Model> = args.models.iter().map(|p| Model::at(p)).collect();
    let (table, _) = score(&suite, &run_dir, &running, &models, args.quiet, interrupted)?;
    let text = if args.csv { table.csv() } else { table.markdown() };
    match &args.output {
        Some(path) => write_replacing(path, &text)?,
        None if !args.json => print!("{text}"),
        None => {}
    }
    if args.json {
        println!("{}", serde_json::to_string(&table)?);
    }
    let failed = table.failures().len();
    if failed > 0 {
        eprintln!("{} failed; the logs are in {}", plural(failed, "evaluation"), run_dir.display());
        return Ok(Exit::NoSoup);
    }
    Ok(Exit::Success)
}

/// Scores `models` on every benchmark of `suite`, journaled in `run_dir`, with
/// progress on stderr unless `quiet`; returns the table and what happened to the
/// evaluations.
pub fn score(
    suite: &Suite,
    run_dir: &Path,
    running: &Running<'_>,
    models: &[Model<'_>],
    quiet: bool,
    interrupted: &AtomicBool,
) -> anyhow::Result<(Table, Counts)> {
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let (journal, stats) = Journal::open(run_dir)?;
    let options = running.options()?;
    let status = Status::new(quiet, false, options.slots.len());
    if stats.damaged() > 0 {
        let lines = plural(stats.damaged(), "damaged line");
        status.say(&format!("warning: ignored {lines} in {}", journal.path().display()));
    }
    let mut bench = Bench::new(suite, run_dir, &options, &journal)?;
    bench.retry_failures = running.retries > 0;
    let observer = |event: Event<'_>| status.event(event);
    bench.observer = Some(&observer);
    let pending = bench.pending(models);
    let pairs = models.len() * suite.benchmarks.len();
    status.say(&format!(
        "scoring {} on {}: {} to run, {} in {}",
        plural(models.len(), "model"),
        plural(suite.benchmarks.len(), "benchmark"),
        plural(pending, "evaluation"),
        pairs - pending.min(pairs),
        journal.path().display()
    ));
    status.expect(Some(pending));
    let table = bench.run(models, interrupted)?;
    status.finish();
    Ok((table, bench.counts()))
}

/// `dir/suite.yaml` → `dir/suite.run`: the default run directory of a suite.
fn beside(suite: &Path) -> PathBuf {
    let stem = suite.file_stem().map(|s| s.to_string_lossy().into_owned());
    suite.with_file_name(format!("{}.run", stem.unwrap_or_else(|| "suite".into())))
}

/// Writes `text` to `path` through a temporary file beside it, so that `path`
/// never holds half a table.
fn write_replacing(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}", path.display())
    })
}
