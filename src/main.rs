//! `soup`: the command-line front end of modelsoup. It parses arguments, turns them
//! into library calls, draws progress and prints results; all the work happens in
//! the `modelsoup` library.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    match cli::run(args) {
        Ok(code) => code.into(),
        Err(err) => {
            let code = cli::Exit::for_error(&err);
            // A closed stderr must not turn an error into a panic.
            let mut stderr = std::io::stderr().lock();
            if code.is_signal() {
                let signal = cli::signals::received().map_or("a signal", cli::signals::name);
                let _ = writeln!(
                    stderr,
                    "error: interrupted by {signal}; nothing partial was left at the output"
                );
            } else {
                let _ = writeln!(stderr, "error: {err:#}");
            }
            code.into()
        }
    }
}
