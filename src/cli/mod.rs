//! Dispatch from parsed arguments to commands, and the process exit codes.

/// `println!` for data on stdout that ignores a closed or failing stdout: a reader
/// that has gone (`soup inspect … | head -1`) must not stop a command, let alone
/// panic it.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` that ignores a closed or failing stdout, like [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, $($arg)*);
        let _ = stdout.flush();
    }};
}

/// `eprintln!` that ignores a closed or failing stderr: a search whose log reader
/// has gone (`soup greedy … 2>&1 | head -1`) goes on; its journal and report are
/// its record.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod angles;
pub mod args;
mod convert;
mod demo;
mod duration;
mod evaluate;
mod guard;
mod init_check;
mod inspect;
mod learned;
mod merge;
mod progress;
mod search;
mod search_svg;
pub mod signals;
mod size;
mod status;
mod svg;
mod text;

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use args::{Cli, Command};

/// Set by SIGINT, SIGTERM or SIGHUP (`signals`); long-running library calls poll
/// it and stop cleanly.
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
    /// Stopped by SIGINT (Ctrl-C); nothing partial was left behind.
    Interrupted = 130,
    /// Stopped by SIGTERM (`kill`, `timeout`, systemd, `docker stop`, Slurm).
    Terminated = 143,
    /// Stopped by SIGHUP (the terminal or session went away).
    HungUp = 129,
}

impl Exit {
    /// The exit code for a failed command.
    pub fn for_error(err: &anyhow::Error) -> Exit {
        let cancelled = match err.downcast_ref::<modelsoup::search::Error>() {
            Some(search) => search.is_cancelled(),
            None => matches!(err.downcast_ref(), Some(modelsoup::Error::Cancelled)),
        };
        if !cancelled {
            return Exit::Error;
        }
        match signals::received() {
            Some(libc::SIGTERM) => Exit::Terminated,
            Some(libc::SIGHUP) => Exit::HungUp,
            _ => Exit::Interrupted,
        }
    }

    /// Whether the command was stopped by a signal.
    pub fn is_signal(self) -> bool {
        matches!(self, Exit::Interrupted | Exit::Terminated | Exit::HungUp)
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    signals::install();
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
        Command::Learned(mut args) => {
            let settings = learned::Settings::from_args(&args)?;
            // A learned soup by gradient minimises the loss.
            args.search.minimize |= args.gradient;
            search::run(&args.search, search::Method::Learned(settings), &INTERRUPTED)
        }
    }
}
