//! `soup`: the command-line front end of modelsoup. It parses arguments, turns them
//! into library calls, draws progress and prints results; all the work happens in
//! the `modelsoup` library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    match cli::run(args) {
        Ok(code) => code.into(),
        Err(err) => {
            let code = cli::Exit::for_error(&err);
            if code == cli::Exit::Interrupted {
                eprintln!("error: interrupted; nothing partial was left at the output");
            } else {
                eprintln!("error: {err:#}");
            }
            code.into()
        }
    }
}
