//! Dispatch from parsed arguments to commands, and the process exit codes.

mod angles;
pub mod args;
mod convert;
mod demo;
mod duration;
mod evaluate;
mod init_check;
mod inspect;
mod learned;
mod merge;
mod progress;
mod search;
mod search_svg;
mod size;
mod status;
mod svg;
mod text;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use args::{Cli, Command};

/// Set by Ctrl-C; long-running library calls poll it and stop cleanly.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The exit codes `soup` uses (documented in `soup --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what was asked.
    Success = 0,
    /// A search finished without a soup to keep (nothing could be scored),
    /// `inspect` found checkpoints that cannot be souped or hold NaN/inf, or
    /// `evaluate` had failed evaluations.
    NoSoup = 1,
    /// Bad input, bad arguments or an I/O failure.
    Error = 2,
    /// Stopped by Ctrl-C; nothing partial was left behind.
    Interrupted = 130,
}

impl Exit {
    /// The exit code for a failed command.
    pub fn for_error(err: &anyhow::Error) -> Exit {
        let cancelled = match err.downcast_ref::<modelsoup::search::Error>() {
            Some(search) => search.is_cancelled(),
            None => matches!(err.downcast_ref(), Some(modelsoup::Error::Cancelled)),
        };
        if cancelled {
            Exit::Interrupted
        } else {
            Exit::Error
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    // Without a handler Ctrl-C kills the process at once, which is safe too (only a
    // hidden staging directory is left), so a failure to install one is not fatal.
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    match cli.command {
        Command::Merge(args) => merge::run(&args, &INTERRUPTED),
        Command::Convert(args) => convert::run(&args, &INTERRUPTED),
        Command::Greedy(args) => search::run(&args.search, search::Method::Greedy, &INTERRUPTED),
        Command::Pruned(args) => {
            search::run(&args.search, search::Method::Pruned { passes: args.passes }, &INTERRUPTED)
        }
        Command::Angles(args) => angles::run(&args, &INTERRUPTED),
        Command::Inspect(args) => inspect::run(&args, &INTERRUPTED),
        Command::Demo(args) => demo::run(&args, &INTERRUPTED),
        Command::DemoEval(args) => demo::eval(&args),
        Command::Evaluate(args) => evaluate::run(&args, &INTERRUPTED),
        Command::Learned(args) => {
            let settings = learned::Settings {
                budget: args.budget,
                by_layer: args.by_layer,
                groups: args.groups,
                init_greedy: args.init == args::Init::Greedy,
                seed: args.search.seed,
                given: 0,
            };
            search::run(&args.search, search::Method::Learned(settings), &INTERRUPTED)
        }
    }
}
